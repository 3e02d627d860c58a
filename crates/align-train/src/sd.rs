//! The online job on a Stable Diffusion 1.x directory: the shared job of [`crate::job`]
//! (DDPO-SF, DDPO-IS, DPOK, SDPO, DRaFT, AlignProp) with LoRA on the UNet attention, toward a
//! CLIP-based reward (aesthetic predictor, CLIP score, PickScore-style) or DDPO's JPEG
//! (in)compressibility, on the user's prompts.
//!
//! The run directory is the same as for the Shapes models (checkpoints, `metrics.jsonl`,
//! `curves.png`, `report.json` / `report.md`, grids); the evaluation
//! ([`crate::RewardEvaluator`]) is the mean reward of deterministic DDIM samples (η = 0) of the
//! evaluation prompts: before training, every `eval_every` iterations and after.

use std::path::{Path, PathBuf};

use align_models::{Pipeline, StableDiffusion};
use align_rewards::{AestheticPredictor, ClipScore, Jpeg, PickScore, Reward};
use burn::tensor::Device;

use crate::config::{AlgorithmName, RewardName, TrainConfig};
use crate::error::{Result, TrainError};
use crate::evaluator::{RewardEvaluator, SharedReward};
use crate::job::{OnlineTask, PIPELINE_PROMPT_SALT, train_pipeline};
use crate::observer::SharedObserver;
use crate::report::Report;

/// Whether `dir` looks like a diffusers Stable Diffusion directory (`unet/config.json`).
pub fn is_stable_diffusion_dir(dir: &Path) -> bool {
    dir.join("unet").join("config.json").is_file()
}

/// Reads a prompt file: one prompt per line, blank lines and `#` comments skipped.
///
/// # Errors
/// An unreadable file or one without prompts, naming the file.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if prompts.is_empty() {
        return Err(TrainError::File {
            path: path.to_path_buf(),
            reason: "no prompts (one per line)".into(),
        });
    }
    Ok(prompts)
}

/// The training reward on images in `[−1, 1]`, loaded on the autodiff device without
/// trainable parameters.
fn build_reward(config: &TrainConfig, device: &Device) -> Result<Box<dyn Reward>> {
    build_reward_spec(&config.reward, config, device)
}

/// `spec` built with the run's reward models.
pub(crate) fn build_reward_spec(
    spec: &crate::reward_spec::RewardSpec,
    config: &TrainConfig,
    device: &Device,
) -> Result<Box<dyn Reward>> {
    spec.build(&|name| build_named_reward(config, name, device))
}

/// A built-in reward on real images.
fn build_named_reward(
    config: &TrainConfig,
    name: RewardName,
    device: &Device,
) -> Result<Box<dyn Reward>> {
    // On the training device (same gradient-checkpointing strategy as the images it scores).
    let device = config.train_device(device);
    let clip = &config.reward_model;
    let named = |e: String| TrainError::config("reward_model", format!("{}: {e}", clip.display()));
    Ok(match name {
        RewardName::Aesthetic => {
            let head = config.aesthetic_head.clone().ok_or_else(|| {
                TrainError::config(
                    "aesthetic_head",
                    "reward = \"aesthetic\" needs `aesthetic_head` (the predictor's safetensors)",
                )
            })?;
            Box::new(
                AestheticPredictor::load(clip, &head, &device).map_err(|e| named(e.to_string()))?,
            )
        }
        RewardName::ClipScore => {
            Box::new(ClipScore::load(clip, &device).map_err(|e| named(e.to_string()))?)
        }
        RewardName::PickScore => {
            Box::new(PickScore::load(clip, &device).map_err(|e| named(e.to_string()))?)
        }
        RewardName::JpegCompressibility => Box::new(Jpeg::compressibility()),
        RewardName::JpegIncompressibility => Box::new(Jpeg::incompressibility()),
        other => {
            return Err(TrainError::config(
                "reward",
                format!(
                    "{other:?} judges Shapes-world prompts; for a Stable Diffusion model use \
                     aesthetic, clip-score, pick-score, jpeg-compressibility or jpeg-incompressibility"
                ),
            ));
        }
    })
}

/// What the online jobs on real pipelines (Stable Diffusion 1.x, SD3) share: the prompts, the
/// reward (shared with the evaluation unless a normalised ensemble trains), and the run's
/// configuration with checkpoints of the trainable parameters only.
pub(crate) struct RealModelRun {
    /// The run's configuration (`checkpoint_trainable_only` set).
    pub config: TrainConfig,
    /// Training prompts.
    pub prompts: Vec<String>,
    /// Evaluation prompts (`eval_prompts`, else the training prompts).
    pub eval_prompts: Vec<String>,
    /// The training reward.
    pub reward: SharedReward,
    /// The evaluation reward.
    pub eval_reward: Box<dyn Reward>,
}

/// Checks the Shapes-only fields, reads the prompt files and builds the rewards.
///
/// # Errors
/// `prompt_eval_seeds` or a `[monitor]` table (Shapes-only, refused by name), a missing prompt
/// file or reward model.
pub(crate) fn real_model_run(config: &TrainConfig, device: &Device) -> Result<RealModelRun> {
    if config.prompt_eval_seeds > 0 {
        return Err(TrainError::config(
            "prompt_eval_seeds",
            "measures ShapeEval on a Shapes run's prompts; a Stable Diffusion run evaluates its \
             reward on `eval_prompts`",
        ));
    }
    if config.monitor != align_rewards::HackingMonitorConfig::default() {
        return Err(TrainError::config(
            "monitor",
            "the reward-hacking monitor compares the reward with ShapeEval's exact verdict, \
             which real images do not have: remove the [monitor] table",
        ));
    }
    if config.monitor_split != crate::config::MonitorSplit::HeldOut {
        return Err(TrainError::config(
            "monitor_split",
            "chooses the ShapeEval part the Shapes runs' monitor reads; a Stable Diffusion run \
             has no monitor: remove the field",
        ));
    }
    let prompt_file: PathBuf = config.prompts.clone().ok_or_else(|| {
        TrainError::config(
            "prompts",
            "a Stable Diffusion run needs `prompts` (a file with one prompt per line)",
        )
    })?;
    let prompts = read_prompts(&prompt_file)?;
    let eval_prompts = match &config.eval_prompts {
        Some(p) => read_prompts(p)?,
        None => prompts.clone(),
    };
    // The frozen pipeline (4.3 GB for SD 1.5) is not copied into every checkpoint: a resumed
    // run reloads it from `model`.
    let mut config = config.clone();
    config.runner.checkpoint_trainable_only = true;
    let reward = SharedReward::new(build_reward(&config, device)?);
    // One reward model serves training and evaluation, unless the training reward is a
    // normalised ensemble: evaluations then measure its raw combination.
    let eval_spec = config.reward.for_evaluation();
    let eval_reward: Box<dyn Reward> = if eval_spec == config.reward {
        Box::new(reward.clone())
    } else {
        build_reward_spec(&eval_spec, &config, device)?
    };
    Ok(RealModelRun {
        config,
        prompts,
        eval_prompts,
        reward,
        eval_reward,
    })
}

/// A real pipeline ready for the online job: the model, its samplers and sample shape.
pub(crate) struct RealPipeline<P: Pipeline> {
    /// The base pipeline on the training device.
    pub pipeline: P,
    /// The stochastic rollout sampler.
    pub sampler: Box<dyn align_samplers::Sampler + Send + Sync>,
    /// The deterministic sampler of evaluations and grids.
    pub eval_sampler: Box<dyn align_samplers::Sampler + Send + Sync>,
    /// The shape of one sample.
    pub shape: [usize; 3],
    /// The LoRA targets.
    pub lora_targets: Vec<String>,
    /// The flow grid of rebuilt rollout samplers (flow models).
    pub flow_grid: Option<align_samplers::FlowGrid>,
}

impl RealModelRun {
    /// Runs the online job on `p`: the reward evaluation on the evaluation prompts before,
    /// every `eval_every` iterations and after training.
    ///
    /// # Errors
    /// Run errors.
    pub(crate) fn train<P: Pipeline>(
        self,
        p: RealPipeline<P>,
        resume: bool,
        observer: &SharedObserver,
    ) -> Result<Report> {
        let config = self.config;
        let evaluator = RewardEvaluator::new(
            self.eval_reward,
            config.reward.to_string(),
            self.eval_prompts,
            config.eval_seeds,
            p.eval_sampler,
            config.guidance,
            p.shape,
            config.eval_interval(),
            &config.out,
        )
        .with_batch(config.rollout_batch);
        let task = OnlineTask {
            pipeline: p.pipeline,
            prompts: self.prompts,
            reward: Box::new(self.reward),
            gold: None,
            sampler: p.sampler,
            sample_shape: p.shape,
            lora_targets: Some(p.lora_targets),
            prompt_salt: PIPELINE_PROMPT_SALT,
            flow_grid: p.flow_grid,
        };
        train_pipeline(task, Box::new(evaluator), &config, resume, observer)
    }
}

/// The online job on a Stable Diffusion directory ([`crate::train`] calls it for a diffusers
/// directory).
///
/// # Errors
/// A flow-matching algorithm (Flow-GRPO, DenseGRPO), `sde_window` or a `[monitor]` table
/// (refused by name), a missing prompt file or reward model, a directory that does not load,
/// run errors.
pub fn train_sd(
    config: &TrainConfig,
    resume: bool,
    observer: &SharedObserver,
    device: &Device,
) -> Result<Report> {
    if !matches!(
        config.algorithm,
        AlgorithmName::DdpoSf
            | AlgorithmName::DdpoIs
            | AlgorithmName::Dpok
            | AlgorithmName::Sdpo
            | AlgorithmName::Draft
            | AlgorithmName::AlignProp
            | AlgorithmName::Refl
            | AlgorithmName::D3po
            | AlgorithmName::Spo
    ) {
        return Err(TrainError::config(
            "algorithm",
            format!(
                "{:?} needs a flow-matching model; Stable Diffusion 1.x is a DDPM model: use \
                 ddpo-sf, ddpo-is, dpok, sdpo, d3po, spo, draft, align-prop or refl",
                config.algorithm
            ),
        ));
    }
    // Fields the Stable Diffusion job does not implement are refused by name rather than
    // silently ignored.
    if config.sde_window.is_some() || config.sde_window_size > 0 {
        return Err(TrainError::config(
            if config.sde_window.is_some() {
                "sde_window"
            } else {
                "sde_window_size"
            },
            "is a flow-model option; Stable Diffusion runs use DDIM",
        ));
    }
    if !matches!(
        config.rollout_sampler,
        crate::config::RolloutSampler::Default | crate::config::RolloutSampler::Ddim
    ) {
        return Err(TrainError::config(
            "rollout_sampler",
            "Stable Diffusion runs roll out with DDIM (η = noise_level): remove the field or \
             set \"ddim\"",
        ));
    }
    let run = real_model_run(config, device)?;
    let config = &run.config;
    let sd = StableDiffusion::load(&config.model, &config.train_device(device))?;
    let (shape, eval_sampler) = eval_settings(config, &sd)?;
    let sampler = sd
        .scheduler
        .ddim(config.train_steps, config.noise_level)
        .map_err(|e| TrainError::config("train_steps", e.to_string()))?;
    let pipeline = RealPipeline {
        pipeline: sd,
        sampler: Box::new(sampler),
        eval_sampler: Box::new(eval_sampler),
        shape,
        lora_targets: StableDiffusion::lora_targets(),
        flow_grid: None,
    };
    run.train(pipeline, resume, observer)
}

/// The latent shape of the run's images (`image_size`, 0 = the model's default) and the
/// deterministic DDIM sampler of its evaluations (`eval_steps`, 0 = 50).
fn eval_settings(
    config: &TrainConfig,
    sd: &StableDiffusion,
) -> Result<([usize; 3], align_samplers::DdimSampler)> {
    let size = if config.image_size == 0 {
        sd.default_image_size()
    } else {
        config.image_size
    };
    let shape = sd
        .sample_shape(size)
        .map_err(|e| TrainError::config("image_size", e.to_string()))?;
    let steps = if config.eval_steps == 0 {
        50
    } else {
        config.eval_steps
    };
    let sampler = sd
        .scheduler
        .ddim(steps, 0.0)
        .map_err(|e| TrainError::config("eval_steps", e.to_string()))?;
    Ok((shape, sampler))
}

/// The mean evaluation reward of `sd`'s samples, measured as a run with `config` measures it
/// before and after training (deterministic DDIM with `eval_steps`, `eval_seeds` seeds per
/// evaluation prompt, the run's reward and guidance): what `align eval --run` prints for a
/// Stable Diffusion run. Returns the mean and the number of images.
///
/// # Errors
/// A missing prompt file or reward model, sampling or scoring failures.
pub fn evaluate_sd(
    config: &TrainConfig,
    sd: &StableDiffusion,
    device: &Device,
) -> Result<(f64, usize)> {
    let (shape, sampler) = eval_settings(config, sd)?;
    evaluate_pipeline(config, sd, shape, Box::new(sampler), device)
}

/// The mean evaluation reward of `pipeline`'s samples (`shape`, `sampler`) on the run's
/// evaluation prompts with its reward, seeds and guidance, and the number of images.
///
/// # Errors
/// As [`evaluate_sd`].
pub(crate) fn evaluate_pipeline<P: Pipeline>(
    config: &TrainConfig,
    pipeline: &P,
    shape: [usize; 3],
    sampler: Box<dyn align_samplers::Sampler + Send + Sync>,
    device: &Device,
) -> Result<(f64, usize)> {
    let prompts = match (&config.eval_prompts, &config.prompts) {
        (Some(p), _) | (None, Some(p)) => read_prompts(p)?,
        (None, None) => {
            return Err(TrainError::config(
                "prompts",
                "a Stable Diffusion run needs `prompts` (a file with one prompt per line)",
            ));
        }
    };
    let evaluator = RewardEvaluator::new(
        build_reward_spec(&config.reward.for_evaluation(), config, device)?,
        config.reward.to_string(),
        prompts,
        config.eval_seeds,
        sampler,
        config.guidance,
        shape,
        0,
        &config.out,
    )
    .with_batch(config.rollout_batch);
    let (mean, images) = evaluator.measure(pipeline)?;
    Ok((mean, images.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> TrainConfig {
        TrainConfig {
            eval_steps: 3,
            ..super::tests_config(dir)
        }
    }

    /// DDPO-IS for two iterations on the tiny SD fixture toward the CLIP aesthetic predictor:
    /// the run directory is complete and the adapters moved the evaluation reward.
    #[test]
    fn ddpo_trains_the_tiny_sd_fixture_end_to_end() {
        let device = align_core::test_device();
        let dir = crate::fresh_test_dir("align-sd-train");
        let c = config(&dir);
        let report = crate::online::train(&c, false, &crate::observer::silent(), &device).unwrap();
        assert_eq!(report.iterations, 2);
        let eval = report.eval_reward.clone().unwrap();
        assert!(eval.base.is_finite() && eval.final_.is_finite(), "{eval:?}");
        assert_ne!(
            eval.base, eval.final_,
            "the adapters must change the samples"
        );
        for f in [
            "report.json",
            "report.md",
            "grid-before.png",
            "grid-after.png",
            "metrics.jsonl",
        ] {
            assert!(c.out.join(f).is_file(), "{f}");
        }
        // Checkpoints hold the LoRA factors only, not the frozen pipeline.
        let ckpt = c.out.join("checkpoint-000002/model.bpk");
        let reader = burn::store::burn_pack::Reader::from_file(&ckpt).unwrap();
        let names = reader.tensor_names();
        assert!(!names.is_empty());
        assert!(names.iter().all(|n| n.contains(".lora.")), "{names:?}");
        // A second start refuses the existing run instead of overwriting it; a resume to a
        // later iteration continues from the adapters-only checkpoint.
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already holds a run"), "{err}");
        let mut longer = c.clone();
        longer.runner.iterations = 3;
        let report =
            crate::online::train(&longer, true, &crate::observer::silent(), &device).unwrap();
        assert_eq!(report.iterations, 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// DRaFT-2 through the VAE decoder toward the aesthetic predictor: two iterations change
    /// the evaluation reward; a non-differentiable reward is refused by name.
    #[test]
    fn draft_trains_the_tiny_sd_fixture_through_the_vae() {
        let device = align_core::test_device();
        let dir = crate::fresh_test_dir("align-sd-draft");
        let mut c = config(&dir);
        c.algorithm = AlgorithmName::Draft;
        c.noise_level = 0.0;
        c.backprop.truncation = align_backprop::Truncation::LastK(2);
        c.runner.learning_rate = 1e-2;
        let report = crate::online::train(&c, false, &crate::observer::silent(), &device).unwrap();
        assert_eq!(report.iterations, 2);
        let eval = report.eval_reward.clone().unwrap();
        assert_ne!(eval.base, eval.final_, "{eval:?}");
        let metrics = std::fs::read_to_string(c.out.join("metrics.jsonl")).unwrap();
        assert!(
            metrics.contains("\"differentiated_steps\":2.0"),
            "{metrics}"
        );
        let mut c = config(&dir);
        c.algorithm = AlgorithmName::Draft;
        c.reward = RewardName::JpegCompressibility.into();
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("differentiable"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The shared job's periodic evaluation on Stable Diffusion: every `eval_every` iterations
    /// the mean reward of deterministic samples and their grid; and SDPO, which scores the
    /// VAE-decoded predictions of every step, runs on the pipeline too.
    #[test]
    fn sd_runs_evaluate_every_eval_every_and_train_with_sdpo() {
        let device = align_core::test_device();
        let dir = crate::fresh_test_dir("align-sd-eval");
        let mut c = config(&dir);
        c.eval_every = Some(1);
        let report = crate::online::train(&c, false, &crate::observer::silent(), &device).unwrap();
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(c.out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 2);
        for (i, row) in rows.iter().enumerate() {
            assert!(row["eval_reward_mean"].is_f64(), "{row}");
            let grid = c.out.join(format!("grid-iteration-{:06}.png", i + 1));
            assert!(grid.is_file(), "{}", grid.display());
        }
        // The last periodic evaluation measures the weights the final one measures.
        let eval = report.eval_reward.unwrap();
        assert_eq!(rows[1]["eval_reward_mean"].as_f64().unwrap(), eval.final_);
        let mut c = config(&dir);
        c.algorithm = AlgorithmName::Sdpo;
        c.out = dir.join("sdpo");
        c.runner.iterations = 1;
        let report = crate::online::train(&c, false, &crate::observer::silent(), &device).unwrap();
        assert_eq!(report.iterations, 1);
        let metrics = std::fs::read_to_string(c.out.join("metrics.jsonl")).unwrap();
        assert!(metrics.contains("\"policy_loss\""), "{metrics}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sd_runs_refuse_what_they_cannot_do_by_name() {
        let device = align_core::test_device();
        let dir = crate::fresh_test_dir("align-sd-refuse");
        let mut c = config(&dir);
        c.algorithm = AlgorithmName::FlowGrpo;
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ddpo-is"), "{err}");
        let mut c = config(&dir);
        c.sde_window = Some((0, 2));
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sde_window:"), "{err}");
        let mut c = config(&dir);
        c.prompt_eval_seeds = 2;
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("prompt_eval_seeds:"), "{err}");
        let mut c = config(&dir);
        c.monitor.stop_on_hacking = !c.monitor.stop_on_hacking;
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("monitor:"), "{err}");
        let mut c = config(&dir);
        c.prompts = None;
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("prompts"), "{err}");
        let mut c = config(&dir);
        c.reward = RewardName::ShapeEval.into();
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Shapes-world"), "{err}");
        let mut c = config(&dir);
        c.aesthetic_head = None;
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("aesthetic_head"), "{err}");
        // And the Shapes path refuses real-image rewards.
        let mut c = config(&dir);
        c.model = crate::test_model_dir("shapes-unet");
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Stable Diffusion"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod micro_batch_tests {
    use super::*;

    /// `rollout_batch` and `train_micro_batch` below the batch, and gradient checkpointing:
    /// the same rewards, loss and ratio statistics as the plain all-at-once iteration (the gradient itself is compared in
    /// `align-rl`'s `rollout_and_train_micro_batches_give_the_whole_batch_gradient`); a
    /// reward-backprop algorithm refuses `train_micro_batch` by name.
    #[test]
    fn micro_batched_iterations_match_the_whole_batch() {
        let device = align_core::test_device();
        let dir = crate::fresh_test_dir("align-sd-micro");
        // Fresh adapters draw their A factors from the device RNG, which the tests running in
        // parallel share: every run starts from one adapter file with fixed factors instead.
        let sd = StableDiffusion::load(&align_models::hf::fixtures_dir().join("sd-tiny"), &device)
            .unwrap();
        let lora = align_models::LoraConfig::new()
            .with_rank(4)
            .with_targets(StableDiffusion::lora_targets());
        let mut weights =
            align_models::lora_weights(&align_models::apply_lora(sd, &lora).unwrap(), 4.0).unwrap();
        for (i, f) in weights.factors.values_mut().enumerate() {
            for (j, t) in [&mut f.a, &mut f.b].into_iter().enumerate() {
                let shape = t.shape().to_vec();
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n)
                    .map(|k| (((i * 31 + j * 17 + k * 7) % 23) as f32 / 23.0 - 0.5) * 0.2)
                    .collect();
                *t = burn::tensor::TensorData::new(v, shape);
            }
        }
        let adapter = dir.join("adapter");
        align_models::save_lora(
            &weights,
            &align_models::SdUnetNaming,
            align_models::LoraFormat::Peft,
            align_models::WeightDtype::F32,
            &adapter,
        )
        .unwrap();
        let run = |name: &str, rollout_batch: usize, train_micro_batch: usize, checkpointing| {
            let mut c = super::tests_config(&dir);
            c.out = dir.join(name);
            c.runner.iterations = 1;
            c.lora_init = Some(adapter.clone());
            c.rollout_batch = rollout_batch;
            c.train_micro_batch = train_micro_batch;
            c.gradient_checkpointing = checkpointing;
            crate::online::train(&c, false, &crate::observer::silent(), &device).unwrap();
            let text = std::fs::read_to_string(c.out.join("metrics.jsonl")).unwrap();
            serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).unwrap()
        };
        let whole = run("whole", 0, 0, false);
        let micro = run("micro", 1, 1, false);
        let checkpointed = run("checkpointed", 0, 0, true);
        // The second minibatch runs on the policy after the first AdamW step, whose
        // normalised update amplifies gradient rounding: its ratio statistic agrees to 1e-3.
        for (key, tol) in [
            ("reward_mean", 1e-6),
            ("reward_std", 1e-6),
            ("loss", 1e-6),
            ("policy_loss", 1e-6),
            ("max_ratio_deviation", 1e-3),
        ] {
            let a = whole[key].as_f64().unwrap();
            for (name, other) in [("micro", &micro), ("checkpointed", &checkpointed)] {
                let b = other[key].as_f64().unwrap();
                assert!(
                    (a - b).abs() <= tol * (1.0 + a.abs()),
                    "{name} {key}: {a} vs {b}"
                );
            }
        }
        let mut c = super::tests_config(&dir);
        c.algorithm = AlgorithmName::Draft;
        c.noise_level = 0.0;
        c.train_micro_batch = 1;
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("train_micro_batch:"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The tiny-fixture configuration of the Stable Diffusion job's tests: DDPO-IS toward the
/// tiny aesthetic predictor, 2 prompts × 2 samples, 16×16 pixels, 3 DDIM steps, 2 iterations.
#[cfg(test)]
pub(crate) fn tests_config(dir: &Path) -> TrainConfig {
    let prompts = dir.join("prompts.txt");
    std::fs::write(
        &prompts,
        "# training prompts\ntwo red circles\n\na photo of a cat\n",
    )
    .unwrap();
    let clip = align_models::hf::fixtures_dir().join("clip-tiny");
    let mut c = TrainConfig {
        algorithm: AlgorithmName::DdpoIs,
        model: align_models::hf::fixtures_dir().join("sd-tiny"),
        out: dir.join("run"),
        reward: RewardName::Aesthetic.into(),
        reward_model: clip.clone(),
        aesthetic_head: Some(clip.join("aesthetic/model.safetensors")),
        prompts: Some(prompts),
        image_size: 16,
        prompts_per_iteration: 2,
        group_size: 2,
        train_steps: 3,
        noise_level: 1.0,
        guidance: 5.0,
        eval_steps: 2,
        ..TrainConfig::default()
    };
    c.runner.iterations = 2;
    c
}
