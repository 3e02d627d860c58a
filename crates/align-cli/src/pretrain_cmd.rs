//! `align pretrain`: a Shapes-world text-to-image model trained from scratch (or from a model
//! directory's weights).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use align_core::{Denoiser, clip_grad_norm};
use align_data::{Image, ShapesDataset, SplitName, SplitPart, Tokenizer, WorldConfig};
use align_models::{
    BatchDraws, DenoiserKind, EmaConfig, Preset, ShapesModel, ShapesModelConfig, TextToImage,
};
use align_train::images::{images_to_tensor, write_grid};
use align_train::shapes_eval::{GRID_PROMPTS, SampleOptions, evaluate, generate};
use burn::module::{Module, ModuleDisplay};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;

use crate::progress::progress_bar;

/// Options of `align pretrain`.
#[derive(Debug, Clone)]
pub struct PretrainOptions {
    /// Denoiser family.
    pub kind: DenoiserKind,
    /// With `kind = Unet` and no `model_config`: the flow-matching UNet of the preset
    /// ([`ShapesModelConfig::flow_unet`]) instead of the ε-prediction one.
    pub flow: bool,
    /// Size preset.
    pub preset: Preset,
    /// Optimizer steps.
    pub steps: usize,
    /// Batch size.
    pub batch: usize,
    /// Learning rate (AdamW).
    pub lr: f64,
    /// Run seed.
    pub seed: u64,
    /// Output directory.
    pub out: PathBuf,
    /// Evaluate, sample a grid and checkpoint every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Probability of replacing a prompt by the null prompt.
    pub cfg_dropout: f64,
    /// Largest decay of the weight EMA that is saved and sampled (0 = no averaging).
    pub ema_decay: f64,
    /// Continue the run in `out` from its last checkpoint (`train-state/`).
    pub resume: bool,
    /// A `model.json` to train instead of `preset` (its `kind` must be `kind`).
    pub model_config: Option<PathBuf>,
    /// Initialise from this model directory's weights (new blocks of `model_config` keep
    /// their identity initialisation).
    pub init_from: Option<PathBuf>,
    /// Smallest gap in pixels between the objects of training scenes (world default 2).
    pub gap: usize,
    /// Weight the DDPM loss by min-SNR-γ with this `γ` (ε / v UNets; ignored by flow
    /// models); `None` = unweighted.
    pub min_snr_gamma: Option<f64>,
    /// The split whose training part the scenes come from (the standard `combinations`, or
    /// `unseen-pairs` for a model of the stress test, evaluated with `align eval --split
    /// unseen-pairs`).
    pub split: SplitName,
    /// Whether to show a progress bar.
    pub progress: bool,
}

/// Where a run keeps what `--resume` needs: the raw (not averaged) weights and the step.
const TRAIN_STATE: &str = "train-state";

fn read_resume_step(out: &Path) -> Result<usize, String> {
    let path = out.join(TRAIN_STATE).join("step.txt");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|e| format!("{}: not a step number ({e})", path.display()))
}

fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    align_train::images::write_atomically(path, text).map_err(|e| e.to_string())
}

/// Reads a `model.json`-style configuration for `align pretrain --model-config` and checks
/// that it fits the run: the family asked for and the world's tokenizer.
fn read_model_config(
    path: &Path,
    kind: DenoiserKind,
    tok: &Tokenizer,
) -> Result<ShapesModelConfig, String> {
    let config = ShapesModelConfig::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if config.kind != kind {
        return Err(format!(
            "{}: field `kind` is {:?} but --model asks for {kind:?}",
            path.display(),
            config.kind
        ));
    }
    if config.text.vocab_size != tok.vocab_size() || config.text.max_len != tok.max_len() {
        return Err(format!(
            "{}: field `text` has vocab_size {} and max_len {}; the Shapes tokenizer needs {} and {}",
            path.display(),
            config.text.vocab_size,
            config.text.max_len,
            tok.vocab_size(),
            tok.max_len()
        ));
    }
    Ok(config)
}

fn append_metrics(path: &Path, line: &str) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))
}

#[allow(clippy::too_many_arguments)]
fn pretrain_loop<D: Module + ModuleDisplay + Denoiser>(
    mut model: TextToImage<D>,
    ema_start: TextToImage<D>,
    first_step: usize,
    config: &ShapesModelConfig,
    options: &PretrainOptions,
    wrap: impl Fn(TextToImage<D>) -> ShapesModel,
    device: &Device,
) -> Result<(), String> {
    let tok = Tokenizer::new();
    let world = WorldConfig {
        size: config.image_size,
        gap: options.gap,
        ..WorldConfig::default()
    };
    let data =
        ShapesDataset::with_split(world, options.split.split(), SplitPart::Train, options.seed)
            .map_err(|e| e.to_string())?;
    let schedule = config.noise_schedule().map_err(|e| e.to_string())?;
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init();
    let metrics = options.out.join("metrics.jsonl");
    std::fs::create_dir_all(&options.out).map_err(|e| format!("{}: {e}", options.out.display()))?;
    let bar = progress_bar(options.steps, options.progress);
    bar.set_position(first_step as u64);
    let mut ema = EmaConfig::new()
        .with_decay(options.ema_decay)
        .init(ema_start)
        .map_err(|e| e.to_string())?;
    // A resumed run starts with fresh optimizer moments: warm up again.
    let warmup = if first_step == 0 {
        (options.steps as f64 * 0.05).max(1.0)
    } else {
        (options.steps as f64 * 0.01).clamp(1.0, 100.0)
    };
    let start = Instant::now();
    let mut ema_loss = f64::NAN;
    for step in first_step..options.steps {
        let samples = data
            .batch((step * options.batch) as u64, options.batch)
            .map_err(|e| e.to_string())?;
        let images: Vec<&Image> = samples.iter().map(|s| &s.image).collect();
        let x0 = images_to_tensor(&images, device).map_err(|e| e.to_string())?;
        let tokens: Vec<Vec<u32>> = samples
            .iter()
            .map(|s| tok.encode(&s.prompt).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let null = vec![tok.null_prompt(); tokens.len()];
        let draws = BatchDraws::new(
            options.seed,
            step as u64,
            options.batch,
            config.num_train_timesteps,
            options.cfg_dropout,
        );
        let loss = model
            .loss_weighted(x0, &tokens, &null, &draws, &schedule, options.min_snr_gamma)
            .map_err(|e| e.to_string())?;
        let value: f32 = loss
            .clone()
            .try_into_scalar()
            .map_err(|e| format!("reading the loss: {e:?}"))?;
        if !value.is_finite() {
            return Err(format!(
                "loss became {value} at step {step}; the last checkpoint in {} is intact",
                options.out.display()
            ));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (grads, norm) = clip_grad_norm(&model, grads, 1.0).map_err(|e| e.to_string())?;
        // Linear warm-up over the first 5 % of steps (1 %, at most 100, after a resume).
        let warm = ((step + 1 - first_step) as f64 / warmup).min(1.0);
        model = optim.step(options.lr * warm, model, grads);
        ema.update(&model.valid()).map_err(|e| e.to_string())?;
        ema_loss = if ema_loss.is_nan() {
            value as f64
        } else {
            0.98 * ema_loss + 0.02 * value as f64
        };
        bar.set_message(format!("loss {ema_loss:.4}"));
        bar.inc(1);
        let last = step + 1 == options.steps;
        let mut line = format!(
            "{{\"step\":{},\"loss\":{value},\"grad_norm\":{norm:.5},\"seconds\":{:.2}",
            step + 1,
            start.elapsed().as_secs_f64()
        );
        if last || (options.eval_every > 0 && (step + 1) % options.eval_every == 0) {
            let valid = ema.average().clone();
            let inner = device.clone().inner();
            let quick = SampleOptions {
                steps: 0,
                guidance: 3.0,
            };
            let (train, held) =
                evaluate(&valid, config, 1, quick, &inner).map_err(|e| e.to_string())?;
            let grid_prompts: Vec<String> = GRID_PROMPTS.iter().map(|s| s.to_string()).collect();
            let ids: Vec<u64> = (0..GRID_PROMPTS.len() as u64).collect();
            let grid = generate(&valid, config, &grid_prompts, &ids, 7, quick, &inner)
                .map_err(|e| e.to_string())?;
            write_grid(
                &grid,
                4,
                &options
                    .out
                    .join("samples")
                    .join(format!("step-{:06}.png", step + 1)),
            )
            .map_err(|e| e.to_string())?;
            // Raw weights first, then the step, then the averaged model: an interrupted write
            // leaves the previous checkpoint (or a consistent older step) in place.
            let state = options.out.join(TRAIN_STATE);
            wrap(model.valid())
                .save(config, &state)
                .map_err(|e| e.to_string())?;
            write_atomically(&state.join("step.txt"), &format!("{}\n", step + 1))?;
            wrap(valid)
                .save(config, &options.out)
                .map_err(|e| e.to_string())?;
            line.push_str(&format!(
                ",\"eval_train_accuracy\":{:.4},\"eval_heldout_accuracy\":{:.4}",
                train.rate(),
                held.rate()
            ));
            let report = format!(
                "step {}: loss {ema_loss:.4}, ShapeEval train {:.1}% held-out {:.1}% (1 seed per prompt)",
                step + 1,
                100.0 * train.rate(),
                100.0 * held.rate()
            );
            if bar.is_hidden() {
                println!("{report}");
            } else {
                bar.println(report);
            }
        }
        line.push('}');
        append_metrics(&metrics, &line)?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// `align pretrain`.
///
/// # Errors
/// Bad options, data or I/O errors, or a non-finite loss (the last checkpoint stays intact).
pub fn pretrain(options: &PretrainOptions, device: &Device) -> Result<(), String> {
    if options.steps == 0 || options.batch == 0 {
        return Err("pretrain: --steps and --batch must be positive".into());
    }
    if !(options.lr.is_finite() && options.lr > 0.0) {
        return Err(format!(
            "pretrain: --lr {} must be a positive number",
            options.lr
        ));
    }
    let tok = Tokenizer::new();
    WorldConfig {
        gap: options.gap,
        ..WorldConfig::default()
    }
    .validate()
    .map_err(|e| format!("pretrain --gap: {e}"))?;
    if let Some(g) = options.min_snr_gamma
        && !(g.is_finite() && g > 0.0)
    {
        return Err(format!(
            "pretrain: --min-snr-gamma {g} must be a positive number"
        ));
    }
    if options.flow && (options.kind != DenoiserKind::Unet || options.model_config.is_some()) {
        return Err(
            "pretrain: the flow UNet is the `flow-unet` preset; it takes no --model-config".into(),
        );
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
    let ad = device.clone().autodiff();
    ad.seed(options.seed);
    std::fs::create_dir_all(&options.out).map_err(|e| format!("{}: {e}", options.out.display()))?;
    let (config, first_step, model) = if options.resume {
        let step = read_resume_step(&options.out)?;
        let (config, model) =
            ShapesModel::load(&options.out.join(TRAIN_STATE), &ad).map_err(|e| e.to_string())?;
        if config.kind != options.kind {
            return Err(format!(
                "pretrain --resume: {} holds a {:?} model, not {:?}",
                options.out.display(),
                config.kind,
                options.kind
            ));
        }
        if step >= options.steps {
            return Err(format!(
                "pretrain --resume: {} is already at step {step}; ask for more --steps",
                options.out.display()
            ));
        }
        (config, step, model)
    } else {
        config
            .save(options.out.join("pretrain-model.json"))
            .map_err(|e| format!("{}: {e}", options.out.display()))?;
        let mut model = config.init(&ad).map_err(|e| e.to_string())?;
        if let Some(dir) = &options.init_from {
            let weights = dir.join("model.safetensors");
            let (warm, new) = match model {
                ShapesModel::Unet(m) => {
                    let (m, new) = align_models::warm_start_safetensors(*m, &weights)
                        .map_err(|e| format!("pretrain --init-from: {e}"))?;
                    (ShapesModel::Unet(Box::new(m)), new)
                }
                ShapesModel::Dit(m) => {
                    let (m, new) = align_models::warm_start_safetensors(*m, &weights)
                        .map_err(|e| format!("pretrain --init-from: {e}"))?;
                    (ShapesModel::Dit(Box::new(m)), new)
                }
            };
            if options.progress {
                eprintln!(
                    "initialised from {} ({} new tensors keep their initialisation)",
                    weights.display(),
                    new.len()
                );
            }
            model = warm;
        }
        (config, 0, model)
    };
    // The average restarts from the saved average (same parameter ids as the raw weights).
    let inner = device.clone().inner();
    let saved_average = if options.resume {
        Some(
            ShapesModel::load(&options.out, &inner)
                .map_err(|e| e.to_string())?
                .1,
        )
    } else {
        None
    };
    match model {
        ShapesModel::Unet(m) => {
            let start = match saved_average {
                Some(ShapesModel::Unet(a)) => copy_weights(m.valid(), &a),
                _ => m.valid(),
            };
            pretrain_loop(
                *m,
                start,
                first_step,
                &config,
                options,
                |m| ShapesModel::Unet(Box::new(m)),
                &ad,
            )
        }
        ShapesModel::Dit(m) => {
            let start = match saved_average {
                Some(ShapesModel::Dit(a)) => copy_weights(m.valid(), &a),
                _ => m.valid(),
            };
            pretrain_loop(
                *m,
                start,
                first_step,
                &config,
                options,
                |m| ShapesModel::Dit(Box::new(m)),
                &ad,
            )
        }
    }
}

/// `target` (keeping its parameter ids) with the values of `source`, a module of the same
/// architecture: the saved average re-attached to the ids of the resumed raw weights.
fn copy_weights<M: Module>(target: M, source: &M) -> M {
    let mut values = Vec::new();
    source.visit(&mut CollectValues(&mut values));
    target.map(&mut ReplaceValues(values.into_iter()))
}

struct CollectValues<'a>(&'a mut Vec<burn::tensor::TensorData>);

impl burn::module::ModuleVisitor for CollectValues<'_> {
    fn visit_float<const R: usize>(&mut self, param: &burn::module::Param<Tensor<R>>) {
        self.0.push(param.val().into_data());
    }
}

struct ReplaceValues<I>(I);

impl<I: Iterator<Item = burn::tensor::TensorData>> burn::module::ModuleMapper for ReplaceValues<I> {
    fn map_float<const R: usize>(
        &mut self,
        param: burn::module::Param<Tensor<R>>,
    ) -> burn::module::Param<Tensor<R>> {
        match self.0.next() {
            Some(data) => param.map(|t| Tensor::from_data(data, &t.device())),
            None => param,
        }
    }
}
