//! `align pretrain`, `align sample` and `align eval` for the Shapes world.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use align_core::{Denoiser, clip_grad_norm};
use align_data::{
    EvalPrompt, EvalSet, Image, SceneSpec, ShapeEval, ShapesDataset, SplitName, SplitPart,
    Tokenizer, WorldConfig,
};
use align_models::{
    BatchDraws, DenoiserKind, EmaConfig, Preset, ShapesModel, ShapesModelConfig, TextToImage,
};
use align_samplers::{Sampler, SamplerConfig};
use burn::module::{Module, ModuleDisplay};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};

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
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
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

/// Sampling settings of the two families: 50 DDIM steps (η = 0) for the UNet, 40 Euler steps for
/// the flow model, both with classifier-free guidance.
#[derive(Debug, Clone, Copy)]
pub struct SampleOptions {
    /// Sampler steps (0 = the family's default: 50 DDIM or 40 Euler).
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f64,
}

pub(crate) fn sampler_for(
    config: &ShapesModelConfig,
    steps: usize,
) -> Result<Box<dyn Sampler + Send + Sync>, String> {
    let s = if config.is_flow() {
        SamplerConfig::FlowEuler {
            num_steps: if steps == 0 { 40 } else { steps },
            shift: 1.0,
        }
    } else {
        SamplerConfig::Ddim {
            num_train_timesteps: config.num_train_timesteps,
            beta_schedule: align_samplers::BetaSchedule::ddpm_linear(),
            num_steps: if steps == 0 { 50 } else { steps },
            spacing: align_samplers::TimestepSpacing::Leading { offset: 1 },
            eta: 0.0,
            final_alpha: align_samplers::FinalAlpha::One,
            clip_sample: Some(1.0),
        }
    };
    s.build().map_err(|e| e.to_string())
}

/// A progress bar of `len` steps with the CLI's style, or a hidden one.
pub(crate) fn progress_bar(len: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Images `[B, 3, H, W]` from host images of equal size.
pub(crate) fn images_to_tensor(images: &[&Image], device: &Device) -> Tensor<4> {
    let (w, h) = (images[0].width, images[0].height);
    let mut data = Vec::with_capacity(images.len() * 3 * w * h);
    for im in images {
        data.extend_from_slice(&im.data);
    }
    Tensor::from_data(TensorData::new(data, [images.len(), 3, h, w]), device)
}

pub(crate) fn tensor_to_images(t: Tensor<4>) -> Result<Vec<Image>, String> {
    let [b, c, h, w] = t.dims();
    let data = t
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("reading samples back: {e:?}"))?;
    let per = c * h * w;
    (0..b)
        .map(|i| {
            Image::from_chw(w, h, data[i * per..(i + 1) * per].to_vec()).map_err(|e| e.to_string())
        })
        .collect()
}

/// Writes images as a PNG grid (`cols` per row, 1-pixel grey gutters), atomically.
pub fn write_grid(images: &[Image], cols: usize, path: &Path) -> Result<(), String> {
    if images.is_empty() {
        return Err("no images to write".into());
    }
    let (w, h) = (images[0].width, images[0].height);
    let cols = cols.clamp(1, images.len());
    let rows = images.len().div_ceil(cols);
    let (gw, gh) = ((w + 1) * cols + 1, (h + 1) * rows + 1);
    let mut grid = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([96, 96, 96]));
    for (i, im) in images.iter().enumerate() {
        let (ox, oy) = (1 + (i % cols) * (w + 1), 1 + (i / cols) * (h + 1));
        let rgb = im.to_rgb8();
        for y in 0..h {
            for x in 0..w {
                let p = (y * w + x) * 3;
                grid.put_pixel(
                    (ox + x) as u32,
                    (oy + y) as u32,
                    image::Rgb([rgb[p], rgb[p + 1], rgb[p + 2]]),
                );
            }
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("png.tmp");
    grid.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// ShapeEval accuracy of one model on prompts × seeds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accuracy {
    /// Images that passed.
    pub passed: usize,
    /// Images scored.
    pub total: usize,
    /// Mean partial credit.
    pub partial: f64,
}

impl Accuracy {
    /// Fraction passed.
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.passed as f64 / self.total as f64
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn generate<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    prompts: &[String],
    sample_ids: &[u64],
    seed: u64,
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<Image>, String> {
    let tok = Tokenizer::new();
    let sampler = sampler_for(config, options.steps)?;
    let mut out = Vec::with_capacity(prompts.len());
    for (chunk_p, chunk_i) in prompts.chunks(64).zip(sample_ids.chunks(64)) {
        let tokens: Vec<Vec<u32>> = chunk_p
            .iter()
            .map(|p| tok.encode(p).map_err(|e| format!("prompt `{p}`: {e}")))
            .collect::<Result<_, _>>()?;
        let null = vec![tok.null_prompt(); tokens.len()];
        let request = align_models::SampleRequest {
            tokens: &tokens,
            null: &null,
            sample_ids: chunk_i,
            seed,
            guidance_scale: options.guidance,
        };
        let x = model
            .sample(sampler.as_ref(), &request, config.image_size, device)
            .map_err(|e| e.to_string())?;
        out.extend(tensor_to_images(x)?);
    }
    Ok(out)
}

/// Like [`generate`] (seed 0, the same noise keys), but every sampler step is moved up the
/// proxy reward's gradient with strength `scale` (`align_backprop::reward_guided_sample`). The
/// model and the proxy must be on the autodiff `device` with frozen parameters.
#[allow(clippy::too_many_arguments)]
pub(crate) fn generate_guided<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    prompts: &[String],
    sample_ids: &[u64],
    options: SampleOptions,
    proxy: &align_rewards::ProxyReward,
    scale: f64,
    device: &Device,
) -> Result<Vec<Image>, String> {
    use align_rewards::Reward;
    let tok = Tokenizer::new();
    let sampler = sampler_for(config, options.steps)?;
    let mut out = Vec::with_capacity(prompts.len());
    for (chunk_p, chunk_i) in prompts.chunks(32).zip(sample_ids.chunks(32)) {
        let tokens: Vec<Vec<u32>> = chunk_p
            .iter()
            .map(|p| tok.encode(p).map_err(|e| format!("prompt `{p}`: {e}")))
            .collect::<Result<_, _>>()?;
        let null = vec![tok.null_prompt(); tokens.len()];
        let cond = model.encode(&tokens, device).map_err(|e| e.to_string())?;
        let uncond = model.encode(&null, device).map_err(|e| e.to_string())?;
        let batch = align_samplers::RolloutBatch {
            condition: &cond,
            uncond: Some(&uncond),
            sample_ids: chunk_i.to_vec(),
            condition_ids: (0..tokens.len()).collect(),
            group_ids: None,
            sample_shape: [3, config.image_size, config.image_size],
        };
        let rollout = align_samplers::RolloutConfig {
            seed: 0,
            guidance_scale: options.guidance,
            ..align_samplers::RolloutConfig::default()
        };
        let reward = |x: Tensor<4>| match proxy.score_differentiable(x.clamp(-1.0, 1.0), chunk_p) {
            Some(r) => r.map_err(|e| e.to_string()),
            None => Err("the proxy is not differentiable".to_string()),
        };
        let x = align_backprop::reward_guided_sample(
            &model.denoiser,
            sampler.as_ref(),
            &batch,
            &rollout,
            &reward,
            scale,
        )
        .map_err(|e| e.to_string())?;
        out.extend(tensor_to_images(x.clamp(-1.0, 1.0))?);
    }
    Ok(out)
}

/// Prompts, sample ids (seeds) and scene specs of one part of the evaluation set, with at most
/// `seeds_per_prompt` seeds each.
pub(crate) fn eval_requests(
    part: &[EvalPrompt],
    seeds_per_prompt: usize,
) -> (Vec<String>, Vec<u64>, Vec<&SceneSpec>) {
    let mut prompts = Vec::new();
    let mut ids = Vec::new();
    let mut specs = Vec::new();
    for p in part {
        for &s in p.seeds.iter().take(seeds_per_prompt) {
            prompts.push(p.prompt.clone());
            ids.push(s);
            specs.push(&p.spec);
        }
    }
    (prompts, ids, specs)
}

pub(crate) fn evaluate<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    seeds_per_prompt: usize,
    options: SampleOptions,
    device: &Device,
) -> Result<(Accuracy, Accuracy), String> {
    let verdicts = evaluate_detailed(model, config, seeds_per_prompt, options, device)?;
    Ok(accuracies(&verdicts))
}

/// ShapeEval's verdict on one generated evaluation image.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `true` for the held-out part of the evaluation set.
    pub heldout: bool,
    /// The prompt.
    pub prompt: String,
    /// The image's seed.
    pub seed: u64,
    /// The verifier's result.
    pub result: align_data::ShapeEvalResult,
}

impl Verdict {
    /// The first reason the image fails, by precedence, or `"pass"`: `"missing-colour"` (a
    /// prompt colour has no component), `"extra-colour"` (a component has a colour the prompt
    /// does not name), `"unshaped"` (a component of a prompt colour fits no shape: merged or
    /// ragged objects), `"wrong-shape"` (a component has a prompt colour but the other
    /// shape), `"count"` (only the counts are wrong).
    pub fn failure(&self) -> &'static str {
        let r = &self.result;
        if r.pass {
            "pass"
        } else if r.groups.iter().any(|g| !g.colour_present) {
            "missing-colour"
        } else if !r.colours_correct {
            "extra-colour"
        } else if r.objects.iter().any(|o| o.shape.is_none()) {
            "unshaped"
        } else if r.extra_objects > 0 {
            "wrong-shape"
        } else {
            "count"
        }
    }

    /// One JSON object: part, prompt, seed, pass, partial credit, failure, groups (expected
    /// and found) and every detected object.
    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.result;
        serde_json::json!({
            "part": if self.heldout { "heldout" } else { "train" },
            "prompt": self.prompt,
            "seed": self.seed,
            "pass": r.pass,
            "partial_credit": r.partial_credit,
            "failure": self.failure(),
            "groups": r.groups.iter().map(|g| serde_json::json!({
                "colour": g.group.colour.name(),
                "shape": g.group.shape.singular(),
                "expected": g.expected,
                "found": g.found,
            })).collect::<Vec<_>>(),
            "objects": r.objects.iter().map(|o| serde_json::json!({
                "colour": o.colour.name(),
                "shape": o.shape.map(|s| s.singular()),
                "area": o.area,
                "box": [o.x, o.y, o.width, o.height],
                "fill": o.fill,
                "upper_fraction": o.upper_fraction,
                "iou": o.iou,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Train and held-out accuracies of a list of verdicts.
pub fn accuracies(verdicts: &[Verdict]) -> (Accuracy, Accuracy) {
    let mut result = (Accuracy::default(), Accuracy::default());
    for v in verdicts {
        let acc = if v.heldout {
            &mut result.1
        } else {
            &mut result.0
        };
        acc.total += 1;
        acc.passed += usize::from(v.result.pass);
        acc.partial += v.result.partial_credit;
    }
    for acc in [&mut result.0, &mut result.1] {
        if acc.total > 0 {
            acc.partial /= acc.total as f64;
        }
    }
    result
}

/// Counts of [`Verdict::failure`] over `verdicts`, in a fixed order (zero counts included).
pub fn failure_counts(verdicts: &[Verdict]) -> Vec<(&'static str, usize)> {
    let kinds = [
        "pass",
        "missing-colour",
        "extra-colour",
        "unshaped",
        "wrong-shape",
        "count",
    ];
    kinds
        .iter()
        .map(|&k| (k, verdicts.iter().filter(|v| v.failure() == k).count()))
        .collect()
}

/// Every evaluation image of the standard set (train part first), generated and scored.
pub(crate) fn evaluate_detailed<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    seeds_per_prompt: usize,
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<Verdict>, String> {
    evaluate_set(
        model,
        config,
        &EvalSet::standard(),
        seeds_per_prompt,
        options,
        device,
    )
}

/// Every image of an evaluation set (train part first), generated and scored.
fn evaluate_set<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    set: &EvalSet,
    seeds_per_prompt: usize,
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<Verdict>, String> {
    let verifier = ShapeEval::default();
    let mut out = Vec::new();
    for (part, heldout) in [(&set.train, false), (&set.heldout, true)] {
        let (prompts, ids, specs) = eval_requests(part, seeds_per_prompt);
        let images = generate(model, config, &prompts, &ids, 0, options, device)?;
        for (((im, spec), prompt), seed) in images.iter().zip(specs).zip(prompts).zip(ids) {
            out.push(Verdict {
                heldout,
                prompt,
                seed,
                result: verifier.score(im, spec),
            });
        }
    }
    Ok(out)
}

pub(crate) const GRID_PROMPTS: [&str; 8] = [
    "one red circle",
    "two blue squares",
    "three yellow squares",
    "one green triangle",
    "two red circles and one blue square",
    "one yellow square and two blue triangles",
    "one green triangle and one red square",
    "three blue circles",
];

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
        let x0 = images_to_tensor(&images, device);
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
            let (train, held) = evaluate(&valid, config, 1, quick, &inner)?;
            let grid_prompts: Vec<String> = GRID_PROMPTS.iter().map(|s| s.to_string()).collect();
            let ids: Vec<u64> = (0..GRID_PROMPTS.len() as u64).collect();
            let grid = generate(&valid, config, &grid_prompts, &ids, 7, quick, &inner)?;
            write_grid(
                &grid,
                4,
                &options
                    .out
                    .join("samples")
                    .join(format!("step-{:06}.png", step + 1)),
            )?;
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

/// `align sample`: a grid of `n` samples of one prompt.
///
/// # Errors
/// A model directory that does not load, an unknown prompt word, or an unwritable output.
pub fn sample(
    model_dir: &Path,
    prompt: &str,
    n: usize,
    out: &Path,
    options: SampleOptions,
    seed: u64,
    device: &Device,
) -> Result<(), String> {
    let (config, model) = ShapesModel::load(model_dir, device).map_err(|e| e.to_string())?;
    let prompts = vec![prompt.to_string(); n.max(1)];
    let ids: Vec<u64> = (0..prompts.len() as u64).collect();
    let images = match &model {
        ShapesModel::Unet(m) => {
            generate(m.as_ref(), &config, &prompts, &ids, seed, options, device)?
        }
        ShapesModel::Dit(m) => {
            generate(m.as_ref(), &config, &prompts, &ids, seed, options, device)?
        }
    };
    write_grid(&images, 4, out)
}

/// Images of a model on the fixed evaluation set with their prompts and gold verdicts:
/// `(train part, held-out part)`, each a list of `(image, prompt, ShapeEval pass)`.
///
/// # Errors
/// A model directory that does not load.
#[allow(clippy::type_complexity)]
pub fn eval_images(
    model_dir: &Path,
    seeds_per_prompt: usize,
    options: SampleOptions,
    device: &Device,
) -> Result<(Vec<(Image, String, bool)>, Vec<(Image, String, bool)>), String> {
    let (config, model) = ShapesModel::load(model_dir, device).map_err(|e| e.to_string())?;
    let set = EvalSet::standard();
    let verifier = ShapeEval::default();
    let mut parts = Vec::new();
    for part in [&set.train, &set.heldout] {
        let (prompts, ids, specs) = eval_requests(part, seeds_per_prompt);
        let images = match &model {
            ShapesModel::Unet(m) => {
                generate(m.as_ref(), &config, &prompts, &ids, 0, options, device)?
            }
            ShapesModel::Dit(m) => {
                generate(m.as_ref(), &config, &prompts, &ids, 0, options, device)?
            }
        };
        parts.push(
            images
                .into_iter()
                .zip(prompts)
                .zip(specs)
                .map(|((im, p), spec)| {
                    let pass = verifier.score(&im, spec).pass;
                    (im, p, pass)
                })
                .collect::<Vec<_>>(),
        );
    }
    let heldout = parts.pop().unwrap_or_default();
    let train = parts.pop().unwrap_or_default();
    Ok((train, heldout))
}

/// `align eval`: ShapeEval accuracy on the fixed evaluation set of a named split (train and
/// held-out parts).
///
/// # Errors
/// A model directory that does not load.
pub fn eval(
    model_dir: &Path,
    split: SplitName,
    seeds_per_prompt: usize,
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<Verdict>, String> {
    let (config, model) = ShapesModel::load(model_dir, device).map_err(|e| e.to_string())?;
    let set = EvalSet::for_split(split);
    match &model {
        ShapesModel::Unet(m) => {
            evaluate_set(m.as_ref(), &config, &set, seeds_per_prompt, options, device)
        }
        ShapesModel::Dit(m) => {
            evaluate_set(m.as_ref(), &config, &set, seeds_per_prompt, options, device)
        }
    }
}

/// Writes one [`Verdict::to_json`] line per verdict to `path` (through a temporary file).
///
/// # Errors
/// The file cannot be written.
pub fn write_verdicts(path: &Path, verdicts: &[Verdict]) -> Result<(), String> {
    let mut text = String::new();
    for v in verdicts {
        text.push_str(&v.to_json().to_string());
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_data::{parse_prompt, render_seeded};

    fn verdict(image: &Image, prompt: &str) -> Verdict {
        let spec = parse_prompt(prompt).unwrap();
        Verdict {
            heldout: false,
            prompt: prompt.into(),
            seed: 3,
            result: ShapeEval::default().score(image, &spec),
        }
    }

    fn rendered(prompt: &str) -> Image {
        render_seeded(&parse_prompt(prompt).unwrap(), &WorldConfig::default(), 5)
            .unwrap()
            .image
    }

    fn square(image: &mut Image, x: usize, y: usize, w: usize, h: usize, rgb: [u8; 3]) {
        for j in y..y + h {
            for i in x..x + w {
                image.set_pixel_rgb8(i, j, rgb);
            }
        }
    }

    #[test]
    fn verdicts_name_the_first_failure() {
        let red = [255, 0, 0];
        assert_eq!(
            verdict(&rendered("one red circle"), "one red circle").failure(),
            "pass"
        );
        let black = Image::filled(32, 32, [0, 0, 0]);
        assert_eq!(
            verdict(&black, "one red circle").failure(),
            "missing-colour"
        );
        assert_eq!(
            verdict(
                &rendered("one red circle and one blue square"),
                "one red circle"
            )
            .failure(),
            "extra-colour"
        );
        // Two touching squares merge into one 16 × 8 component that is no shape.
        let mut merged = Image::filled(32, 32, [0, 0, 0]);
        square(&mut merged, 2, 2, 8, 8, red);
        square(&mut merged, 10, 2, 8, 8, red);
        assert_eq!(verdict(&merged, "two red squares").failure(), "unshaped");
        assert_eq!(
            verdict(&rendered("one red square"), "one red circle").failure(),
            "wrong-shape"
        );
        assert_eq!(
            verdict(&rendered("two red circles"), "one red circle").failure(),
            "count"
        );
    }

    #[test]
    fn verdict_json_and_accuracies() {
        let v = [
            verdict(&rendered("two red circles"), "two red circles"),
            Verdict {
                heldout: true,
                ..verdict(&rendered("two red circles"), "one red circle")
            },
        ];
        let json = v[1].to_json();
        assert_eq!(json["part"], "heldout");
        assert_eq!(json["failure"], "count");
        assert_eq!(json["groups"][0]["expected"], 1);
        assert_eq!(json["groups"][0]["found"], 2);
        assert_eq!(json["objects"].as_array().unwrap().len(), 2);
        assert_eq!(json["objects"][0]["shape"], "circle");
        let (train, held) = accuracies(&v);
        assert_eq!((train.passed, train.total), (1, 1));
        assert_eq!((held.passed, held.total), (0, 1));
        assert!((train.partial - 1.0).abs() < 1e-12 && held.partial < 1.0);
        let counts = failure_counts(&v);
        assert_eq!(counts[0], ("pass", 1));
        assert!(counts.contains(&("count", 1)));
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<usize>(), 2);
        let dir = std::env::temp_dir().join(format!("align-verdicts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("details.jsonl");
        write_verdicts(&path, &v).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, vec![v[0].to_json(), v[1].to_json()]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
