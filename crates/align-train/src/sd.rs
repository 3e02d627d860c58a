//! The online job on a Stable Diffusion 1.x directory: DDPO-SF, DDPO-IS and DPOK with
//! LoRA on the UNet attention, toward a CLIP-based reward (aesthetic predictor, CLIP score,
//! PickScore-style) or DDPO's JPEG (in)compressibility, on the user's prompts.
//!
//! The run directory is the same as for the Shapes models (checkpoints, `metrics.jsonl`,
//! `curves.png`, `report.json` / `report.md`, before/after grids); the evaluation is the mean
//! reward of deterministic DDIM samples (η = 0) of the evaluation prompts, before and after.

use std::path::{Path, PathBuf};
use std::time::Instant;

use align_backprop::{DraftConfig, DraftUpdate, draft_update, reward_cotangent};
use align_core::{Condition, CoreError, Job, Metrics};
use align_models::{LoraConfig, StableDiffusion, apply_lora, with_lora_scale};
use align_rewards::{AestheticPredictor, ClipScore, Jpeg, PickScore, Reward, VaeDecoded};
use align_rl::{Iteration, RlError, run_iteration};
use align_samplers::{DdimSampler, RolloutBatch, RolloutConfig, rollout};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::config::{AlgorithmName, RewardName, TrainConfig};
use crate::error::{Result, TrainError};
use crate::images::{tensor_to_images, write_atomically, write_grid};
use crate::observer::SharedObserver;
use crate::online::{
    Algorithm, backprop_err, build_algorithm, draft_metrics, iteration_metrics, open_runner, rl_err,
};
use crate::report::{EvalReward, Report, read_last_metrics, write_sd_report};

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
    let device = device.clone().autodiff();
    let clip = &config.reward_model;
    let named = |e: String| TrainError::config("reward_model", format!("{}: {e}", clip.display()));
    Ok(match config.reward {
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

/// The online-RL job on a Stable Diffusion pipeline.
struct SdRl {
    algorithm: Algorithm,
    sampler: DdimSampler,
    reference: StableDiffusion,
    prompts: Vec<String>,
    reward: Box<dyn Reward>,
    config: TrainConfig,
    shape: [usize; 3],
    observer: SharedObserver,
}

fn encode(
    prompts: &[String],
    m: &StableDiffusion,
    ids: &[usize],
) -> Result<(Condition, Option<Condition>), String> {
    let rows: Vec<String> = ids.iter().map(|&i| prompts[i].clone()).collect();
    let c = m.encode_prompts(&rows).map_err(|e| e.to_string())?;
    let u = m
        .encode_unconditional(ids.len())
        .map_err(|e| e.to_string())?;
    Ok((c, Some(u)))
}

impl SdRl {
    /// `prompts_per_iteration` prompts drawn with replacement, each `group_size` times.
    fn batch_prompts(&self, it: usize) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ 0x7364_7072_6f6d_7074);
        rng.set_stream(it as u64);
        let mut ids = Vec::new();
        for _ in 0..self.config.prompts_per_iteration {
            let p = (rng.next_u64() % self.prompts.len() as u64) as usize;
            ids.extend(std::iter::repeat_n(p, self.config.group_size));
        }
        ids
    }
}

impl SdRl {
    /// DRaFT / AlignProp: the reward's gradient at the VAE-decoded final latent, chained back
    /// through the last K sampler steps (K from the truncation, drawn per iteration for
    /// AlignProp), with the optional pull toward the adapters-off reference.
    #[allow(clippy::too_many_arguments)]
    fn backprop_iteration(
        &mut self,
        model: StableDiffusion,
        iteration: usize,
        ids: &[usize],
        prompts: &[String],
        traj: &align_core::Trajectory,
        section: DraftConfig,
        apply: &mut dyn FnMut(
            StableDiffusion,
            GradientsParams,
        ) -> align_core::Result<StableDiffusion>,
    ) -> align_core::Result<(StableDiffusion, Metrics)> {
        let job = |e: String| CoreError::Job(e);
        let (values, cotangent) = {
            let decoded = VaeDecoded {
                model: &model,
                reward: RewardRef(self.reward.as_ref()),
            };
            let score = |x: Tensor<4>| match decoded.score_differentiable(x, prompts) {
                Some(r) => r.map_err(|e| e.to_string()),
                None => Err(format!("{} is not differentiable", decoded.name())),
            };
            reward_cotangent(traj.final_sample(), section.reward_scale, &score)
                .map_err(|e| job(e.to_string()))?
        };
        let table = &self.prompts;
        let encode_batch = |m: &StableDiffusion| encode(table, m, ids);
        let (model, stats) = draft_update(DraftUpdate {
            model,
            reference: &self.reference,
            sampler: &self.sampler,
            trajectory: traj,
            config: &section,
            seed: self.config.seed,
            iteration,
            cotangent,
            encode: &encode_batch,
            apply,
        })
        .map_err(backprop_err)?;
        let m = draft_metrics(&values, &stats);
        self.observer.iteration(&format!(
            "reward {:.3}  K {}",
            m["reward_mean"], m["differentiated_steps"]
        ));
        Ok((model, m))
    }
}

/// A borrowed reward, so that [`VaeDecoded`] can wrap the job's boxed one.
struct RewardRef<'a>(&'a dyn Reward);

impl Reward for RewardRef<'_> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn scale(&self) -> &str {
        self.0.scale()
    }
    fn score(&self, images: &Tensor<4>, prompts: &[String]) -> align_rewards::Result<Vec<f64>> {
        self.0.score(images, prompts)
    }
    fn score_differentiable(
        &self,
        images: Tensor<4>,
        prompts: &[String],
    ) -> Option<align_rewards::Result<Tensor<1>>> {
        self.0.score_differentiable(images, prompts)
    }
}

impl Job<StableDiffusion> for SdRl {
    fn iteration(
        &mut self,
        model: StableDiffusion,
        iteration: usize,
        apply: &mut dyn FnMut(
            StableDiffusion,
            GradientsParams,
        ) -> align_core::Result<StableDiffusion>,
    ) -> align_core::Result<(StableDiffusion, Metrics)> {
        let job = |e: String| CoreError::Job(e);
        let ids = self.batch_prompts(iteration);
        let b = ids.len();
        let frozen = model.clone().no_grad();
        let (cond, uncond) = encode(&self.prompts, &frozen, &ids).map_err(job)?;
        let traj = rollout(
            &frozen,
            &self.sampler,
            &RolloutBatch {
                condition: &cond,
                uncond: uncond.as_ref(),
                sample_ids: (0..b as u64).map(|i| (iteration * b) as u64 + i).collect(),
                condition_ids: ids.clone(),
                group_ids: None,
                sample_shape: self.shape,
            },
            &RolloutConfig {
                seed: self.config.seed,
                guidance_scale: self.config.guidance,
                keep_means: true,
                ..RolloutConfig::default()
            },
        )
        .map_err(|e| job(e.to_string()))?;
        let images = frozen.decode(traj.final_sample().clone()).clamp(-1.0, 1.0);
        let prompts: Vec<String> = ids.iter().map(|&i| self.prompts[i].clone()).collect();
        if let Algorithm::Backprop(section) = &self.algorithm {
            let section = section.clone();
            return self
                .backprop_iteration(model, iteration, &ids, &prompts, &traj, section, apply);
        }
        let rewards = self
            .reward
            .score(&images, &prompts)
            .map_err(|e| job(e.to_string()))?;
        let steps = traj.stochastic_steps();
        let table = &self.prompts;
        let encode = |m: &StableDiffusion, ids: &[usize]| encode(table, m, ids);
        let mut apply_rl = |m, g| apply(m, g).map_err(RlError::Core);
        let Algorithm::Online(algorithm) = &mut self.algorithm else {
            return Err(job("SDPO does not run on Stable Diffusion yet".into()));
        };
        let (model, stats) = run_iteration(
            algorithm.as_mut(),
            model,
            Iteration {
                reference: Some(&self.reference),
                sampler: &self.sampler,
                trajectory: &traj,
                rewards: &rewards,
                dense_rewards: None,
                steps: &steps,
                encode: &encode,
                shuffle_seed: self.config.seed.wrapping_add(iteration as u64),
            },
            &mut apply_rl,
        )
        .map_err(rl_err)?;
        Ok((model, iteration_metrics(&stats, &self.observer)))
    }

    fn state(&self) -> align_core::Result<serde_json::Value> {
        Ok(serde_json::json!({ "algorithm": self.algorithm.state() }))
    }

    fn restore(&mut self, state: &serde_json::Value) -> align_core::Result<()> {
        self.algorithm.restore(&state["algorithm"]).map_err(rl_err)
    }
}

/// Mean reward of deterministic DDIM samples (η = 0) of `prompts` × `seeds`, and the images.
fn evaluate(
    model: &StableDiffusion,
    reward: &dyn Reward,
    prompts: &[String],
    config: &TrainConfig,
    shape: [usize; 3],
) -> Result<(f64, Vec<align_data::Image>)> {
    let steps = if config.eval_steps == 0 {
        50
    } else {
        config.eval_steps
    };
    let sampler = model
        .scheduler
        .ddim(steps, 0.0)
        .map_err(|e| TrainError::config("eval_steps", e.to_string()))?;
    let mut all = Vec::new();
    let mut scores = Vec::new();
    for seed in 0..config.eval_seeds {
        let cond = model.encode_prompts(prompts)?;
        let uncond = model.encode_unconditional(prompts.len())?;
        let traj = rollout(
            model,
            &sampler,
            &RolloutBatch {
                condition: &cond,
                uncond: Some(&uncond),
                sample_ids: (0..prompts.len() as u64).collect(),
                condition_ids: (0..prompts.len()).collect(),
                group_ids: None,
                sample_shape: shape,
            },
            &RolloutConfig {
                seed: 0x6576_616c + seed as u64,
                guidance_scale: config.guidance,
                ..RolloutConfig::default()
            },
        )
        .map_err(|e| TrainError::config("eval_steps", format!("evaluation sampling: {e}")))?;
        let images = model.decode(traj.final_sample().clone()).clamp(-1.0, 1.0);
        scores.extend(reward.score(&images, prompts)?);
        all.extend(tensor_to_images(images)?);
    }
    Ok((scores.iter().sum::<f64>() / scores.len() as f64, all))
}

/// The online job on a Stable Diffusion directory ([`crate::train`] calls it for a diffusers
/// directory).
///
/// # Errors
/// An algorithm that does not run on SD (flow models, SDPO, reward backprop), a missing
/// prompt file or reward model, a directory that does not load, run errors.
pub fn train_sd(
    config: &TrainConfig,
    resume: bool,
    observer: &SharedObserver,
    device: &Device,
) -> Result<Report> {
    let started = Instant::now();
    if !matches!(
        config.algorithm,
        AlgorithmName::DdpoSf
            | AlgorithmName::DdpoIs
            | AlgorithmName::Dpok
            | AlgorithmName::Draft
            | AlgorithmName::AlignProp
    ) {
        return Err(TrainError::config(
            "algorithm",
            format!(
                "{:?} does not run on Stable Diffusion directories yet: use ddpo-sf, \
                 ddpo-is, dpok, draft or align-prop",
                config.algorithm
            ),
        ));
    }
    // Fields the Stable Diffusion job does not implement yet are refused by name rather than
    // silently ignored.
    if config.eval_every != 0 {
        return Err(TrainError::config(
            "eval_every",
            "Stable Diffusion runs evaluate only before and after training for now: set 0",
        ));
    }
    if config.sde_window.is_some() {
        return Err(TrainError::config(
            "sde_window",
            "is a flow-model option; Stable Diffusion runs use DDIM",
        ));
    }
    if config.monitor != align_rewards::HackingMonitorConfig::default() {
        return Err(TrainError::config(
            "monitor",
            "the reward-hacking monitor needs periodic evaluations, which Stable Diffusion \
             runs do not have yet: remove the [monitor] table",
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
    let train_device = device.clone().autodiff();
    let sd = StableDiffusion::load(&config.model, &train_device)?;
    let size = if config.image_size == 0 {
        sd.default_image_size()
    } else {
        config.image_size
    };
    let shape = sd
        .latent_shape(size, size)
        .map_err(|e| TrainError::config("image_size", e.to_string()))?;
    let sampler = sd
        .scheduler
        .ddim(config.train_steps, config.noise_level)
        .map_err(|e| TrainError::config("train_steps", e.to_string()))?;
    std::fs::create_dir_all(&config.out).map_err(|e| TrainError::io(&config.out, e))?;
    // The frozen pipeline (4.3 GB for SD 1.5) is not copied into every checkpoint: a resumed
    // run reloads it from `model`.
    let runner_config = align_core::RunnerConfig {
        checkpoint_trainable_only: true,
        ..config.runner.clone()
    };
    let runner = open_runner(runner_config, &config.out, resume)?;
    let reward = build_reward(config, device)?;
    train_device.seed(config.seed);
    let lora = LoraConfig::new()
        .with_rank(config.lora.rank)
        .with_alpha(config.lora.alpha)
        .with_targets(StableDiffusion::lora_targets());
    let base_eval = sd.clone().no_grad();
    let policy = apply_lora(sd, &lora).map_err(|e| TrainError::config("lora", e.to_string()))?;
    let reference = with_lora_scale(policy.clone(), 0.0).no_grad();
    let base_path = config.out.join("base.json");
    let saved: Option<f64> = if resume {
        std::fs::read_to_string(&base_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    } else {
        None
    };
    let base = match saved {
        Some(b) => b,
        None => {
            let (b, images) = evaluate(&base_eval, reward.as_ref(), &eval_prompts, config, shape)?;
            write_grid(
                &images,
                eval_prompts.len(),
                &config.out.join("grid-before.png"),
            )?;
            write_atomically(&base_path, &b.to_string())?;
            b
        }
    };
    drop(base_eval);
    observer.say(&format!("base: mean {:?} reward {base:.4}", config.reward));
    let mut job = SdRl {
        algorithm: build_algorithm(config, &prompts)?,
        sampler,
        reference,
        prompts,
        reward,
        config: config.clone(),
        shape,
        observer: observer.clone(),
    };
    observer.start(config.runner.iterations, 0);
    let outcome = runner.run(policy, &mut job, resume)?;
    observer.finish();
    let (trained, evaluated) = match outcome.ema {
        Some(average) => (average, "ema"),
        None => (outcome.model.valid(), "final"),
    };
    let (final_reward, images) =
        evaluate(&trained, job.reward.as_ref(), &eval_prompts, config, shape)?;
    write_grid(
        &images,
        eval_prompts.len(),
        &config.out.join("grid-after.png"),
    )?;
    let last = read_last_metrics(&config.out.join(align_core::runner::METRICS));
    let eval = EvalReward {
        reward: format!("{:?}", config.reward),
        base,
        final_: final_reward,
    };
    let mut report = Report {
        algorithm: format!("{:?}", config.algorithm),
        model: std::fs::canonicalize(&config.model)
            .unwrap_or_else(|_| config.model.clone())
            .display()
            .to_string(),
        iterations: outcome.iterations,
        stopped: outcome.stopped,
        evaluated_weights: evaluated.to_string(),
        eval_reward: Some(eval.clone()),
        ..Report::default()
    };
    report.final_.kl = last.get("kl").copied().unwrap_or(0.0);
    report.final_.reward_mean = last.get("reward_mean").copied().unwrap_or(0.0);
    report.wall_seconds = started.elapsed().as_secs_f64();
    write_sd_report(&config.out, &report, &eval)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_models::hf::fixtures_dir;

    fn config(dir: &Path) -> TrainConfig {
        let prompts = dir.join("prompts.txt");
        std::fs::write(
            &prompts,
            "# training prompts\ntwo red circles\n\na photo of a cat\n",
        )
        .unwrap();
        let clip = fixtures_dir().join("clip-tiny");
        let mut c = TrainConfig {
            algorithm: AlgorithmName::DdpoIs,
            model: fixtures_dir().join("sd-tiny"),
            out: dir.join("run"),
            reward: RewardName::Aesthetic,
            reward_model: clip.clone(),
            aesthetic_head: Some(clip.join("aesthetic/model.safetensors")),
            prompts: Some(prompts),
            image_size: 16,
            prompts_per_iteration: 2,
            group_size: 2,
            train_steps: 3,
            noise_level: 1.0,
            guidance: 5.0,
            eval_steps: 3,
            ..TrainConfig::default()
        };
        c.runner.iterations = 2;
        c
    }

    /// DDPO-IS for two iterations on the tiny SD fixture toward the CLIP aesthetic predictor:
    /// the run directory is complete and the adapters moved the evaluation reward.
    #[test]
    fn ddpo_trains_the_tiny_sd_fixture_end_to_end() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-sd-train-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
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
        let dir = std::env::temp_dir().join(format!("align-sd-draft-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
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
        c.reward = RewardName::JpegCompressibility;
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("differentiable"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sd_runs_refuse_what_they_cannot_do_by_name() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-sd-refuse-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = config(&dir);
        c.algorithm = AlgorithmName::FlowGrpo;
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ddpo-is"), "{err}");
        let mut c = config(&dir);
        c.eval_every = 1;
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("eval_every:"), "{err}");
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
        c.reward = RewardName::ShapeEval;
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
