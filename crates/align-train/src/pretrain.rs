//! Pretraining a Shapes-world text-to-image model (text encoder + UNet or DiT) from scratch,
//! or from a model directory's weights, on the [`align_core::Runner`].
//!
//! Each iteration is one optimizer step on a batch of rendered training scenes: the DDPM loss
//! `E‖ε − ε_θ(x_t, t, c)‖²` (optionally min-SNR-γ weighted, `min(SNR, γ) / SNR` per sample)
//! for ε / v UNets, the flow-matching loss `E‖(ε − x₀) − v_θ(x_t, t, c)‖²` with
//! `x_t = (1 − t)·x₀ + t·ε` for flow models; the prompt is replaced by the null prompt with
//! probability `cfg_dropout` (classifier-free guidance). AdamW (no weight decay, ε = 1e-8),
//! global-norm clipping at 1, a linear learning-rate warm-up over the first 5 % of the steps
//! and an exponential moving average of the weights, all from the runner.
//!
//! The run directory is the runner's: `checkpoint-NNNNNN/` (raw weights, optimizer moments,
//! the average), `LATEST`, `metrics.jsonl` (`iteration`, `loss`, `grad_norm`,
//! `optimizer_steps`, and `eval_train_accuracy` / `eval_heldout_accuracy` at evaluation
//! points); besides it `pretrain-model.json` (the architecture, read again on resume), and at
//! every evaluation point `model.json` + `model.safetensors` (the averaged weights when an
//! average is kept — the model a user samples from) and `samples/step-NNNNNN.png`. A resumed
//! run restores the optimizer moments and the average, so it ends bit-identical to an
//! uninterrupted one.

use std::path::{Path, PathBuf};

use align_core::{Control, CoreError, Denoiser, Job, Metrics, Runner, RunnerConfig};
use align_data::{Image, ShapesDataset, SplitName, SplitPart, Tokenizer, WorldConfig};
use align_models::{BatchDraws, DenoiserKind, Preset, ShapesModel, ShapesModelConfig, TextToImage};
use burn::module::{Module, ModuleDisplay};
use burn::optim::GradientsParams;
use burn::prelude::*;

use crate::error::{Result, TrainError};
use crate::images::{images_to_tensor, write_grid};
use crate::observer::SharedObserver;
use crate::shapes_eval::{GRID_PROMPTS, SampleOptions, encode_prompt, evaluate, generate};

/// The file in the run directory that holds the architecture being trained.
pub const PRETRAIN_MODEL_FILE: &str = "pretrain-model.json";

/// What `align pretrain` trains and how.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainOptions {
    /// Denoiser family.
    pub kind: DenoiserKind,
    /// With `kind = Unet` and no `model_config`: the flow-matching UNet of the preset
    /// ([`ShapesModelConfig::flow_unet`]) instead of the ε-prediction one.
    pub flow: bool,
    /// Size preset.
    pub preset: Preset,
    /// Optimizer steps (a resumed run continues up to this number).
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// AdamW learning rate after the warm-up.
    pub lr: f64,
    /// Steps of linear learning-rate warm-up; `None` = 5 % of `steps` (at least 1). Give it
    /// explicitly to resume a run toward a larger `steps` on the same schedule.
    pub warmup_steps: Option<usize>,
    /// Run seed (scenes, noise, timesteps, prompt dropout).
    pub seed: u64,
    /// Run directory.
    pub out: PathBuf,
    /// Evaluate, write a sample grid, save the model and checkpoint every this many steps
    /// (0 = only at the end).
    pub eval_every: usize,
    /// Checkpoint (weights, optimizer moments, average) every this many steps instead; `None`
    /// = at every evaluation.
    pub checkpoint_every: Option<usize>,
    /// Probability of replacing a prompt by the null prompt.
    pub cfg_dropout: f64,
    /// Largest decay of the weight average that is saved and sampled (0 = no averaging).
    pub ema_decay: f64,
    /// Continue the run in `out` from its latest checkpoint.
    pub resume: bool,
    /// A `model.json` to train instead of `preset` (its `kind` must be `kind`).
    pub model_config: Option<PathBuf>,
    /// Initialise from this model directory's weights (new blocks of `model_config` keep
    /// their identity initialisation). Fresh runs only.
    pub init_from: Option<PathBuf>,
    /// Smallest gap in pixels between the objects of training scenes (world default 2).
    pub gap: usize,
    /// Weight the DDPM loss by min-SNR-γ with this `γ` (ε / v UNets; flow models ignore it);
    /// `None` = unweighted.
    pub min_snr_gamma: Option<f64>,
    /// The split whose training part the scenes come from.
    pub split: SplitName,
}

impl Default for PretrainOptions {
    /// A DiT of the small preset, 4000 steps of 64 images at 5e-4, evaluated every 1000
    /// steps, CFG dropout 0.1, EMA 0.999, world gap 2, the standard split; `out` is empty and
    /// must be set.
    fn default() -> Self {
        Self {
            kind: DenoiserKind::Dit,
            flow: false,
            preset: Preset::Small,
            steps: 4000,
            batch: 64,
            lr: 5e-4,
            warmup_steps: None,
            seed: 0,
            out: PathBuf::new(),
            eval_every: 1000,
            checkpoint_every: None,
            cfg_dropout: 0.1,
            ema_decay: 0.999,
            resume: false,
            model_config: None,
            init_from: None,
            gap: 2,
            min_snr_gamma: None,
            split: SplitName::Combinations,
        }
    }
}

impl PretrainOptions {
    /// Checks every option that does not need a file.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming the option.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(TrainError::config("steps", "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(TrainError::config("batch", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::config(
                "lr",
                format!("{} must be a positive number", self.lr),
            ));
        }
        if !(0.0..1.0).contains(&self.cfg_dropout) {
            return Err(TrainError::config(
                "cfg_dropout",
                format!("{} is not in [0, 1)", self.cfg_dropout),
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(TrainError::config(
                "ema_decay",
                format!("{} is not in [0, 1)", self.ema_decay),
            ));
        }
        WorldConfig {
            gap: self.gap,
            ..WorldConfig::default()
        }
        .validate()
        .map_err(|e| TrainError::config("gap", e.to_string()))?;
        if let Some(g) = self.min_snr_gamma
            && !(g.is_finite() && g > 0.0)
        {
            return Err(TrainError::config(
                "min_snr_gamma",
                format!("{g} must be a positive number"),
            ));
        }
        if self.flow && (self.kind != DenoiserKind::Unet || self.model_config.is_some()) {
            return Err(TrainError::config(
                "flow",
                "the flow UNet is the `flow-unet` preset of a UNet; it takes no model_config",
            ));
        }
        if self.out.as_os_str().is_empty() {
            return Err(TrainError::config("out", "no run directory given"));
        }
        if self.checkpoint_every == Some(0) {
            return Err(TrainError::config("checkpoint_every", "must be at least 1"));
        }
        Ok(())
    }

    /// The runner settings of this run.
    pub fn runner_config(&self) -> RunnerConfig {
        RunnerConfig {
            iterations: self.steps,
            learning_rate: self.lr,
            warmup_iterations: self
                .warmup_steps
                .unwrap_or(((self.steps as f64 * 0.05).round() as usize).max(1)),
            weight_decay: 0.0,
            adam_eps: 1e-8,
            max_grad_norm: Some(1.0),
            checkpoint_every: match (self.checkpoint_every, self.eval_every) {
                (Some(n), _) => n,
                (None, 0) => self.steps,
                (None, n) => n,
            },
            ema_decay: (self.ema_decay > 0.0).then_some(self.ema_decay),
            ..RunnerConfig::default()
        }
    }
}

/// How a pretraining run ended: the last in-run evaluation (EMA weights when averaging; one
/// seed per prompt, the sampler's default steps, CFG 3).
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainOutcome {
    /// Steps completed (including those before a resume).
    pub steps: usize,
    /// ShapeEval accuracy on the training prompts.
    pub train_accuracy: f64,
    /// ShapeEval accuracy on the held-out prompts.
    pub heldout_accuracy: f64,
}

/// Reads a `model.json`-style configuration and checks that it fits the run: the family asked
/// for and the world's tokenizer.
fn read_model_config(
    path: &Path,
    kind: DenoiserKind,
    tok: &Tokenizer,
) -> Result<ShapesModelConfig> {
    let file = |reason: String| TrainError::File {
        path: path.to_path_buf(),
        reason,
    };
    let config: ShapesModelConfig =
        align_models::hf::read_config(path).map_err(|e| file(e.to_string()))?;
    if config.kind != kind {
        return Err(file(format!(
            "field `kind` is {:?} but the run asks for {kind:?}",
            config.kind
        )));
    }
    if config.text.vocab_size != tok.vocab_size() || config.text.max_len != tok.max_len() {
        return Err(file(format!(
            "field `text` has vocab_size {} and max_len {}; the Shapes tokenizer needs {} and {}",
            config.text.vocab_size,
            config.text.max_len,
            tok.vocab_size(),
            tok.max_len()
        )));
    }
    Ok(config)
}

/// The pretraining iteration and its evaluations, as a [`Job`] of the runner.
struct PretrainJob<D: Module> {
    options: PretrainOptions,
    config: ShapesModelConfig,
    data: ShapesDataset,
    schedule: align_samplers::NoiseSchedule,
    tok: Tokenizer,
    wrap: fn(TextToImage<D>) -> ShapesModel,
    observer: SharedObserver,
    /// Smoothed loss for the status line (resumable state).
    smooth_loss: Option<f64>,
    last_eval: Option<(f64, f64)>,
}

impl<D: Module + ModuleDisplay + Denoiser> Job<TextToImage<D>> for PretrainJob<D> {
    fn iteration(
        &mut self,
        model: TextToImage<D>,
        iteration: usize,
        apply: &mut dyn FnMut(
            TextToImage<D>,
            align_core::Gradients,
        ) -> align_core::Result<TextToImage<D>>,
    ) -> align_core::Result<(TextToImage<D>, Metrics)> {
        let fail = |e: TrainError| e.into_core();
        let device = model.text.devices()[0].clone();
        let o = &self.options;
        let samples = self
            .data
            .batch((iteration * o.batch) as u64, o.batch)
            .map_err(|e| fail(e.into()))?;
        let images: Vec<&Image> = samples.iter().map(|s| &s.image).collect();
        let x0 = images_to_tensor(&images, &device).map_err(fail)?;
        let tokens: Vec<Vec<u32>> = samples
            .iter()
            .map(|s| encode_prompt(&self.tok, &s.prompt))
            .collect::<Result<_>>()
            .map_err(fail)?;
        let null = vec![self.tok.null_prompt(); tokens.len()];
        let draws = BatchDraws::new(
            o.seed,
            iteration as u64,
            o.batch,
            self.config.num_train_timesteps,
            o.cfg_dropout,
        );
        let loss = model
            .loss_weighted(x0, &tokens, &null, &draws, &self.schedule, o.min_snr_gamma)
            .map_err(|e| fail(e.into()))?;
        let value = f64::from(
            loss.clone()
                .try_into_scalar::<f32>()
                .map_err(|e| CoreError::Job(format!("reading the pretraining loss: {e:?}")))?,
        );
        let mut metrics = Metrics::new();
        metrics.insert("loss".into(), value);
        if !value.is_finite() {
            // The runner stops on the non-finite metric before writing anything.
            return Ok((model, metrics));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = apply(model, grads.into())?;
        self.smooth_loss = Some(match self.smooth_loss {
            None => value,
            Some(s) => 0.98 * s + 0.02 * value,
        });
        Ok((model, metrics))
    }

    fn state(&self) -> align_core::Result<serde_json::Value> {
        Ok(serde_json::json!({ "smooth_loss": self.smooth_loss }))
    }

    fn restore(&mut self, state: &serde_json::Value) -> align_core::Result<()> {
        self.smooth_loss = state["smooth_loss"].as_f64();
        Ok(())
    }

    fn notice(&mut self, message: &str) {
        self.observer.say(message);
    }

    fn after_iteration(
        &mut self,
        model: &TextToImage<D>,
        average: Option<&TextToImage<D>>,
        iteration: usize,
        metrics: &mut Metrics,
    ) -> align_core::Result<Control> {
        let fail = |e: TrainError| e.into_core();
        let step = iteration + 1;
        let smooth = self.smooth_loss.unwrap_or(f64::NAN);
        self.observer.iteration(&format!("loss {smooth:.4}"));
        let o = &self.options;
        let due = step == o.steps || (o.eval_every > 0 && step.is_multiple_of(o.eval_every));
        if !due || !metrics.get("loss").is_some_and(|l| l.is_finite()) {
            return Ok(Control::Continue);
        }
        let valid = match average {
            Some(a) => a.clone(),
            None => model.valid(),
        };
        let device = valid.text.devices()[0].clone();
        let quick = SampleOptions {
            steps: 0,
            guidance: 3.0,
        };
        let (train, held) = evaluate(&valid, &self.config, 1, quick, &device).map_err(fail)?;
        let prompts: Vec<String> = GRID_PROMPTS.iter().map(|s| s.to_string()).collect();
        let ids: Vec<u64> = (0..GRID_PROMPTS.len() as u64).collect();
        let grid =
            generate(&valid, &self.config, &prompts, &ids, 7, quick, &device).map_err(fail)?;
        write_grid(
            &grid,
            4,
            &o.out.join("samples").join(format!("step-{step:06}.png")),
        )
        .map_err(fail)?;
        (self.wrap)(valid)
            .save(&self.config, &o.out)
            .map_err(|e| fail(e.into()))?;
        metrics.insert("eval_train_accuracy".into(), train.rate());
        metrics.insert("eval_heldout_accuracy".into(), held.rate());
        self.last_eval = Some((train.rate(), held.rate()));
        self.observer.say(&format!(
            "step {step}: loss {smooth:.4}, ShapeEval train {:.1}% held-out {:.1}% (1 seed per prompt)",
            100.0 * train.rate(),
            100.0 * held.rate()
        ));
        Ok(Control::Continue)
    }
}

/// The model of a fresh run: the preset or `model_config`, optionally warm-started.
fn fresh_model(
    options: &PretrainOptions,
    config: &ShapesModelConfig,
    observer: &SharedObserver,
    device: &Device,
) -> Result<ShapesModel> {
    let model = config.init(device)?;
    let Some(dir) = &options.init_from else {
        return Ok(model);
    };
    let weights = dir.join("model.safetensors");
    let refuse = |e: align_models::ModelError| TrainError::File {
        path: weights.clone(),
        reason: format!("init_from: {e}"),
    };
    let (model, new) = match model {
        ShapesModel::Unet(m) => {
            let (m, new) = align_models::warm_start_safetensors(*m, &weights).map_err(refuse)?;
            (ShapesModel::Unet(Box::new(m)), new)
        }
        ShapesModel::Dit(m) => {
            let (m, new) = align_models::warm_start_safetensors(*m, &weights).map_err(refuse)?;
            (ShapesModel::Dit(Box::new(m)), new)
        }
    };
    observer.say(&format!(
        "initialised from {} ({} new tensors keep their initialisation)",
        weights.display(),
        new.len()
    ));
    Ok(model)
}

/// Runs the pretraining job on `model` (saved through `wrap`). The lazily initialised weights
/// are drawn first, right after the caller seeded the RNG.
fn run_job<D: Module + ModuleDisplay + Denoiser>(
    runner: &Runner,
    model: TextToImage<D>,
    wrap: fn(TextToImage<D>) -> ShapesModel,
    options: &PretrainOptions,
    config: ShapesModelConfig,
    data: ShapesDataset,
    observer: &SharedObserver,
) -> Result<PretrainOutcome> {
    align_core::runner::materialize(&model);
    let mut job = PretrainJob {
        options: options.clone(),
        schedule: config.noise_schedule()?,
        config,
        data,
        tok: Tokenizer::new(),
        wrap,
        observer: observer.clone(),
        smooth_loss: None,
        last_eval: None,
    };
    let outcome = runner.run(model, &mut job, options.resume)?;
    let (train_accuracy, heldout_accuracy) = job.last_eval.unwrap_or((f64::NAN, f64::NAN));
    Ok(PretrainOutcome {
        steps: outcome.iterations,
        train_accuracy,
        heldout_accuracy,
    })
}

/// Pretrains a Shapes model as `options` say, reporting progress to `observer`.
///
/// # Errors
/// Bad options (naming the option), a model file of another family or tokenizer, weights of
/// another architecture for `init_from`, a run directory that already holds a run (without
/// `resume`) or none (with it), one written by an older `align pretrain` (`train-state/`),
/// I/O errors, or a non-finite loss (the last checkpoint stays intact).
pub fn pretrain(
    options: &PretrainOptions,
    observer: &SharedObserver,
    device: &Device,
) -> Result<PretrainOutcome> {
    options.validate()?;
    let tok = Tokenizer::new();
    let out = &options.out;
    // Held from here: a second `align pretrain` into `out` is refused before it writes.
    let runner = Runner::new(options.runner_config(), out)?.lock()?;
    let done = runner.latest_iteration()?;
    if done.is_none() && out.join("train-state").is_dir() {
        return Err(TrainError::File {
            path: out.join("train-state"),
            reason: "written by an older `align pretrain` whose checkpoints cannot be resumed; \
                     start a new run (`init_from` this directory keeps its weights)"
                .into(),
        });
    }
    let config = if options.resume {
        let Some(step) = done else {
            return Err(TrainError::File {
                path: out.clone(),
                reason: "cannot resume: it holds no checkpoint".into(),
            });
        };
        if step >= options.steps {
            return Err(TrainError::config(
                "steps",
                format!(
                    "{} is already at step {step}; ask for more steps",
                    out.display()
                ),
            ));
        }
        // The architecture is the one the run started with (preset, `flow` and `model_config`
        // are not read again); only the family must match.
        read_model_config(&out.join(PRETRAIN_MODEL_FILE), options.kind, &tok)?
    } else {
        if done.is_some() {
            return Err(TrainError::RunExists { dir: out.clone() });
        }
        let config = match &options.model_config {
            None if options.flow => {
                ShapesModelConfig::flow_unet(options.preset, tok.vocab_size(), tok.max_len())
            }
            None => ShapesModelConfig::preset(
                options.kind,
                options.preset,
                tok.vocab_size(),
                tok.max_len(),
            ),
            Some(path) => read_model_config(path, options.kind, &tok)?,
        };
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        config
            .save(out.join(PRETRAIN_MODEL_FILE))
            .map_err(|e| TrainError::File {
                path: out.join(PRETRAIN_MODEL_FILE),
                reason: e.to_string(),
            })?;
        config
    };
    let world = WorldConfig {
        size: config.image_size,
        gap: options.gap,
        ..WorldConfig::default()
    };
    let data =
        ShapesDataset::with_split(world, options.split.split(), SplitPart::Train, options.seed)?;
    let ad = device.clone().autodiff();
    ad.seed(options.seed);
    let model = if options.resume {
        config.init(&ad)?
    } else {
        fresh_model(options, &config, observer, &ad)?
    };
    observer.start(options.steps, done.unwrap_or(0));
    let outcome = match model {
        ShapesModel::Unet(m) => run_job(
            &runner,
            *m,
            |m| ShapesModel::Unet(Box::new(m)),
            options,
            config,
            data,
            observer,
        ),
        ShapesModel::Dit(m) => run_job(
            &runner,
            *m,
            |m| ShapesModel::Dit(Box::new(m)),
            options,
            config,
            data,
            observer,
        ),
    };
    observer.finish();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::silent;

    fn tiny(out: PathBuf) -> PretrainOptions {
        PretrainOptions {
            preset: Preset::Tiny,
            steps: 2,
            batch: 2,
            lr: 1e-3,
            eval_every: 0,
            ema_decay: 0.0,
            out,
            ..PretrainOptions::default()
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("align-pretrain-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn err(options: &PretrainOptions, device: &Device) -> String {
        pretrain(options, &silent(), device)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn model_config_init_from_gap_split_and_the_flow_unet() {
        let device = align_core::test_device();
        let dir = tempdir("warm");
        let base = tiny(dir.join("first"));
        pretrain(&base, &silent(), &device).unwrap();
        // A second run (another seed) from the first one's configuration file and weights
        // starts from those weights, not from a fresh initialisation.
        let second = PretrainOptions {
            steps: 1,
            seed: 7,
            out: dir.join("second"),
            model_config: Some(dir.join("first").join("model.json")),
            init_from: Some(dir.join("first")),
            ..base.clone()
        };
        pretrain(&second, &silent(), &device).unwrap();
        let (_, a) = ShapesModel::load(&dir.join("first"), &device).unwrap();
        let (_, b) = ShapesModel::load(&dir.join("second"), &device).unwrap();
        let (ShapesModel::Dit(a), ShapesModel::Dit(b)) = (a, b) else {
            panic!("both runs train a DiT");
        };
        // One AdamW step moves each weight by at most about the learning rate (1e-3).
        let w = |m: &TextToImage<align_models::DiT>| {
            m.denoiser
                .patch_embed
                .weight
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let max_step = w(&a)
            .iter()
            .zip(&w(&b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max_step > 0.0 && max_step < 2e-3, "{max_step}");
        // A configuration of the other family is refused, naming the file and the field.
        let e = err(
            &PretrainOptions {
                kind: DenoiserKind::Unet,
                out: dir.join("third"),
                ..second.clone()
            },
            &device,
        );
        assert!(e.contains("model.json") && e.contains("`kind`"), "{e}");
        // Weights of another architecture are refused, naming the file.
        let e = err(
            &PretrainOptions {
                model_config: None,
                preset: Preset::Small,
                out: dir.join("fourth"),
                ..second.clone()
            },
            &device,
        );
        assert!(
            e.contains("init_from") && e.contains("model.safetensors"),
            "{e}"
        );
        // A zero gap would let objects merge; other bad options name themselves.
        for (bad, field) in [
            (
                PretrainOptions {
                    checkpoint_every: Some(0),
                    ..base.clone()
                },
                "checkpoint_every",
            ),
            (
                PretrainOptions {
                    gap: 0,
                    ..base.clone()
                },
                "gap",
            ),
            (
                PretrainOptions {
                    steps: 0,
                    ..base.clone()
                },
                "steps",
            ),
            (
                PretrainOptions {
                    batch: 0,
                    ..base.clone()
                },
                "batch",
            ),
            (
                PretrainOptions {
                    lr: -1.0,
                    ..base.clone()
                },
                "lr",
            ),
            (
                PretrainOptions {
                    ema_decay: 1.0,
                    ..base.clone()
                },
                "ema_decay",
            ),
            (
                PretrainOptions {
                    cfg_dropout: 1.5,
                    ..base.clone()
                },
                "cfg_dropout",
            ),
            (
                PretrainOptions {
                    min_snr_gamma: Some(0.0),
                    ..base.clone()
                },
                "min_snr_gamma",
            ),
            (
                PretrainOptions {
                    out: PathBuf::new(),
                    ..base.clone()
                },
                "out",
            ),
        ] {
            let e = err(&bad, &device);
            assert!(e.starts_with(field), "{field}: {e}");
        }
        // A model of the stress test trains on the unseen-pairs split's training part.
        pretrain(
            &PretrainOptions {
                split: SplitName::UnseenPairs,
                out: dir.join("stress"),
                ..base.clone()
            },
            &silent(),
            &device,
        )
        .unwrap();
        assert!(dir.join("stress").join("model.safetensors").is_file());
        // The flow UNet: a UNet trained by flow matching, saved as such; `flow` with a model
        // file or a DiT is refused.
        let flow = PretrainOptions {
            kind: DenoiserKind::Unet,
            flow: true,
            out: dir.join("flow-unet"),
            ..base.clone()
        };
        pretrain(&flow, &silent(), &device).unwrap();
        let (config, _) = ShapesModel::load(&dir.join("flow-unet"), &device).unwrap();
        assert!(config.is_flow() && config.kind == DenoiserKind::Unet);
        for bad in [
            PretrainOptions {
                kind: DenoiserKind::Dit,
                ..flow.clone()
            },
            PretrainOptions {
                flow: true,
                out: dir.join("flow-unet-2"),
                ..second.clone()
            },
        ] {
            let e = err(&bad, &device);
            assert!(e.starts_with("flow") && e.contains("flow-unet"), "{e}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
