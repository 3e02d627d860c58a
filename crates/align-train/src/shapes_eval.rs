//! Sampling and exact ShapeEval evaluation of Shapes-world models: the fixed evaluation set,
//! per-image verdicts, accuracies and failure causes.

use std::path::Path;

use align_core::Denoiser;
use align_data::{EvalPrompt, EvalSet, Image, SceneSpec, ShapeEval, SplitName, Tokenizer};
use align_models::{ShapesModel, ShapesModelConfig, TextToImage};
use align_samplers::{Sampler, SamplerConfig};
use burn::module::{Module, ModuleDisplay};
use burn::tensor::{Device, Tensor};

use crate::error::{Result, TrainError};
use crate::images::{tensor_to_images, write_atomically, write_grid};

/// The tokens of one prompt, or an error naming it.
///
/// # Errors
/// A word the tokenizer does not know, or a prompt too long.
pub fn encode_prompt(tok: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
    tok.encode(prompt).map_err(|e| TrainError::Prompt {
        prompt: prompt.to_string(),
        reason: e.to_string(),
    })
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

/// The evaluation sampler of a Shapes model: flow Euler (default 40 steps) or DDIM η = 0
/// (default 50 steps); `steps` = 0 takes the default.
///
/// # Errors
/// An invalid step count.
pub fn sampler_for(
    config: &ShapesModelConfig,
    steps: usize,
) -> Result<Box<dyn Sampler + Send + Sync>> {
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
    Ok(s.build()?)
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

/// Samples one image per prompt (`sample_ids` key the noise together with `seed`), in chunks
/// of 64, with classifier-free guidance.
///
/// # Errors
/// An unknown prompt word, an invalid step count, model errors.
#[allow(clippy::too_many_arguments)]
pub fn generate<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    prompts: &[String],
    sample_ids: &[u64],
    seed: u64,
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<Image>> {
    let tok = Tokenizer::new();
    let sampler = sampler_for(config, options.steps)?;
    let mut out = Vec::with_capacity(prompts.len());
    for (chunk_p, chunk_i) in prompts.chunks(64).zip(sample_ids.chunks(64)) {
        let tokens: Vec<Vec<u32>> = chunk_p
            .iter()
            .map(|p| encode_prompt(&tok, p))
            .collect::<Result<_, _>>()?;
        let null = vec![tok.null_prompt(); tokens.len()];
        let request = align_models::SampleRequest {
            tokens: &tokens,
            null: &null,
            sample_ids: chunk_i,
            seed,
            guidance_scale: options.guidance,
        };
        let x = model.sample(sampler.as_ref(), &request, config.image_size, device)?;
        out.extend(tensor_to_images(x)?);
    }
    Ok(out)
}

/// Like [`generate`] (seed 0, the same noise keys), but every sampler step is moved up the
/// proxy reward's gradient with strength `scale` (`align_backprop::reward_guided_sample`). The
/// model and the proxy must be on the autodiff `device` with frozen parameters.
#[allow(clippy::too_many_arguments)]
pub fn generate_guided<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    prompts: &[String],
    sample_ids: &[u64],
    options: SampleOptions,
    proxy: &align_rewards::ProxyReward,
    scale: f64,
    device: &Device,
) -> Result<Vec<Image>> {
    use align_rewards::Reward;
    let tok = Tokenizer::new();
    let sampler = sampler_for(config, options.steps)?;
    let mut out = Vec::with_capacity(prompts.len());
    for (chunk_p, chunk_i) in prompts.chunks(32).zip(sample_ids.chunks(32)) {
        let tokens: Vec<Vec<u32>> = chunk_p
            .iter()
            .map(|p| encode_prompt(&tok, p))
            .collect::<Result<_, _>>()?;
        let null = vec![tok.null_prompt(); tokens.len()];
        let cond = model.encode(&tokens, device)?;
        let uncond = model.encode(&null, device)?;
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
        )?;
        out.extend(tensor_to_images(x.clamp(-1.0, 1.0))?);
    }
    Ok(out)
}

/// Prompts, sample ids (seeds) and scene specs of one part of the evaluation set, with at most
/// `seeds_per_prompt` seeds each.
pub fn eval_requests(
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

/// Train and held-out ShapeEval accuracy on the standard evaluation set.
///
/// # Errors
/// As [`generate`].
pub fn evaluate<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    seeds_per_prompt: usize,
    options: SampleOptions,
    device: &Device,
) -> Result<(Accuracy, Accuracy)> {
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
pub fn evaluate_detailed<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    seeds_per_prompt: usize,
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<Verdict>> {
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
pub fn evaluate_set<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    set: &EvalSet,
    seeds_per_prompt: usize,
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<Verdict>> {
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

/// The prompts of the before/after grids of a run (one-group and two-group scenes).
pub const GRID_PROMPTS: [&str; 8] = [
    "one red circle",
    "two blue squares",
    "three yellow squares",
    "one green triangle",
    "two red circles and one blue square",
    "one yellow square and two blue triangles",
    "one green triangle and one red square",
    "three blue circles",
];

/// A PNG grid of `n` samples of one prompt from a model directory (4 per row).
///
/// # Errors
/// A model directory that does not load, an unknown prompt word, or an unwritable output.
pub fn sample_grid(
    model_dir: &Path,
    prompt: &str,
    n: usize,
    out: &Path,
    options: SampleOptions,
    seed: u64,
    device: &Device,
) -> Result<()> {
    let (config, model) = ShapesModel::load(model_dir, device)?;
    sample_grid_of(&config, &model, prompt, n, out, options, seed, device)
}

/// [`sample_grid`] for a loaded model (a run's trained model, `align sample --run`).
///
/// # Errors
/// Sampling failures, an unwritable `out`.
#[allow(clippy::too_many_arguments)]
pub fn sample_grid_of(
    config: &ShapesModelConfig,
    model: &ShapesModel,
    prompt: &str,
    n: usize,
    out: &Path,
    options: SampleOptions,
    seed: u64,
    device: &Device,
) -> Result<()> {
    let config = config.clone();
    let prompts = vec![prompt.to_string(); n.max(1)];
    let ids: Vec<u64> = (0..prompts.len() as u64).collect();
    let images = match model {
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
) -> Result<(Vec<(Image, String, bool)>, Vec<(Image, String, bool)>)> {
    let (config, model) = ShapesModel::load(model_dir, device)?;
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

/// ShapeEval accuracy on the fixed evaluation set of a named split (train and held-out
/// parts): every image's verdict.
///
/// # Errors
/// A model directory that does not load.
pub fn eval(
    model_dir: &Path,
    split: SplitName,
    seeds_per_prompt: usize,
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<Verdict>> {
    eval_on(
        model_dir,
        &EvalSet::for_split(split),
        seeds_per_prompt,
        options,
        device,
    )
}

/// Every image's verdict on an evaluation set (for instance a user's own prompts,
/// [`EvalSet::from_prompts`]), generated by the model in `model_dir`.
///
/// # Errors
/// A model directory that does not load, sampling failures.
pub fn eval_on(
    model_dir: &Path,
    set: &EvalSet,
    seeds_per_prompt: usize,
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<Verdict>> {
    let (config, model) = ShapesModel::load(model_dir, device)?;
    eval_of(&config, &model, set, seeds_per_prompt, options, device)
}

/// [`eval_on`] for a loaded model (a run's trained model, `align eval --run`).
///
/// # Errors
/// Sampling failures.
pub fn eval_of(
    config: &ShapesModelConfig,
    model: &ShapesModel,
    set: &EvalSet,
    seeds_per_prompt: usize,
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<Verdict>> {
    match model {
        ShapesModel::Unet(m) => {
            evaluate_set(m.as_ref(), config, set, seeds_per_prompt, options, device)
        }
        ShapesModel::Dit(m) => {
            evaluate_set(m.as_ref(), config, set, seeds_per_prompt, options, device)
        }
    }
}

/// Writes one [`Verdict::to_json`] line per verdict to `path` (through a temporary file).
///
/// # Errors
/// The file cannot be written.
pub fn write_verdicts(path: &Path, verdicts: &[Verdict]) -> Result<()> {
    let mut text = String::new();
    for v in verdicts {
        text.push_str(&v.to_json().to_string());
        text.push('\n');
    }
    write_atomically(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_data::{WorldConfig, parse_prompt, render_seeded};

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

    /// A user's prompt list through the shipped flow model: one verdict per prompt and seed,
    /// filed by split part, with the prompts' own seeds.
    #[test]
    fn a_prompt_file_is_evaluated_by_part() {
        let device = align_core::test_device();
        let split = align_data::Split::standard();
        let held = split.specs(align_data::SplitPart::HeldOut, 2)[0].to_string();
        let prompts = vec!["one red circle".to_string(), held.clone()];
        let set = EvalSet::from_prompts(&split, &prompts, 2, 5).unwrap();
        let options = SampleOptions {
            steps: 2,
            guidance: 3.0,
        };
        let model = crate::test_model_dir("shapes-flow-unet");
        let verdicts = eval_on(&model, &set, 2, options, &device).unwrap();
        assert_eq!(verdicts.len(), 4);
        assert_eq!(
            verdicts
                .iter()
                .map(|v| (v.heldout, v.seed))
                .collect::<Vec<_>>(),
            vec![(false, 5), (false, 6), (true, 7), (true, 8)]
        );
        assert_eq!(verdicts[2].prompt, held);
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
