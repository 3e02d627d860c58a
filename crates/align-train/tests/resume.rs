//! Bit-identical resume of jobs on freshly initialised models: pretraining a Shapes DiT, and
//! Flow-GRPO on a pipeline that is not a Shapes model.
//!
//! burn draws a fresh layer's weights from the device RNG, which is global to the process:
//! tests running in parallel threads would interleave their draws. These tests live in their
//! own binary and hold one lock, so nothing else draws while they run.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use align_core::{Condition, Denoiser, Parameterization};
use align_models::{ModelError, Pipeline, Preset, ShapesModel, TextToImage};
use align_rewards::Reward;
use align_samplers::{FlowEulerSampler, FlowGrid, FlowSdeSampler};
use align_train::observer::silent;
use align_train::{
    AlgorithmName, OnlineTask, PretrainOptions, Report, RewardEvaluator, TrainConfig, pretrain,
    train_pipeline,
};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let d = std::env::temp_dir().join(format!("align-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn err(options: &PretrainOptions, device: &Device) -> String {
    pretrain(options, &silent(), device)
        .unwrap_err()
        .to_string()
}

#[test]
fn a_resumed_run_is_bit_identical_and_saves_the_average() {
    let _serial = serial();
    let device = align_core::test_device();
    let (a, b) = (tempdir("full"), tempdir("halves"));
    let options = |out: PathBuf, steps: usize| PretrainOptions {
        steps,
        batch: 2,
        eval_every: 2,
        checkpoint_every: Some(1),
        ema_decay: 0.9,
        warmup_steps: Some(2),
        gap: 1,
        ..tiny(out)
    };
    let full = pretrain(&options(a.clone(), 4), &silent(), &device).unwrap();
    assert_eq!(full.steps, 4);
    assert!((0.0..=1.0).contains(&full.heldout_accuracy));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(a.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3]["iteration"], 4);
    assert!(
        rows[1]["eval_heldout_accuracy"].is_f64() && rows[2]["eval_heldout_accuracy"].is_null()
    );
    assert!(
        rows.iter()
            .all(|r| r["loss"].is_f64() && r["grad_norm"].is_f64())
    );
    for step in ["step-000002.png", "step-000004.png"] {
        assert!(a.join("samples").join(step).is_file(), "{step}");
    }
    // The saved model is the average the runner kept, not the raw weights.
    let bytes = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let ckpt = a.join("checkpoint-000004");
    assert!(ckpt.join("ema.bpk").is_file());
    // Interrupted after step 2 and resumed: the same checkpoint, model and metrics.
    pretrain(&options(b.clone(), 2), &silent(), &device).unwrap();
    let e = err(&options(b.clone(), 2), &device);
    assert!(e.contains("already holds a run"), "{e}");
    let e = err(
        &PretrainOptions {
            resume: true,
            ..options(b.clone(), 2)
        },
        &device,
    );
    assert!(e.contains("already at step 2"), "{e}");
    pretrain(
        &PretrainOptions {
            resume: true,
            ..options(b.clone(), 4)
        },
        &silent(),
        &device,
    )
    .unwrap();
    // The optimizer state through `digest.txt` (burn writes its moments in hash-map order;
    // the digest hashes them by name).
    for file in ["model.bpk", "digest.txt", "ema.bpk", "state.json"] {
        let same = bytes(ckpt.join(file)) == bytes(b.join("checkpoint-000004").join(file));
        assert!(same, "{file} differs after a resume");
    }
    for file in ["metrics.jsonl", "model.json"] {
        let same = bytes(a.join(file)) == bytes(b.join(file));
        assert!(same, "{file} differs after a resume");
    }
    // burn writes the safetensors metadata from a hash map: compare the parsed header and the
    // tensor bytes.
    let split = |raw: Vec<u8>| {
        let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).unwrap();
        (header, raw[8 + n..].to_vec())
    };
    let (ha, da) = split(bytes(a.join("model.safetensors")));
    let (hb, db) = split(bytes(b.join("model.safetensors")));
    assert!(
        ha == hb && da == db,
        "model.safetensors differs after a resume"
    );
    // Raw weights differ from the saved average (the average is what `model.safetensors`
    // holds): load the raw checkpoint into a model and compare one tensor.
    let (config, _) = ShapesModel::load(&a, &device).unwrap();
    let ShapesModel::Dit(saved) = ShapesModel::load(&a, &device).unwrap().1 else {
        panic!("a DiT");
    };
    let ShapesModel::Dit(raw) = config.init(&device).unwrap() else {
        panic!("a DiT");
    };
    let mut store =
        burn::store::BurnpackStore::from_file(ckpt.join("model.bpk")).auto_extension(false);
    let mut raw = *raw;
    burn::store::ModuleSnapshot::load_from(&mut raw, &mut store).unwrap();
    let w = |m: &TextToImage<align_models::DiT>| {
        m.denoiser
            .patch_embed
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    assert_ne!(w(&saved), w(&raw));
    // Resuming nothing, or a run of the older format, is one clear error.
    let c = tempdir("old");
    std::fs::create_dir_all(c.join("train-state")).unwrap();
    let e = err(
        &PretrainOptions {
            resume: true,
            ..options(c.clone(), 4)
        },
        &device,
    );
    assert!(e.contains("train-state") && e.contains("older"), "{e}");
    let e = err(
        &PretrainOptions {
            resume: true,
            ..options(tempdir("none"), 4)
        },
        &device,
    );
    assert!(e.contains("no checkpoint"), "{e}");
    for d in [a, b, c] {
        std::fs::remove_dir_all(&d).ok();
    }
}

/// A flow pipeline that is not a Shapes model: its own prompt encoding ("bright" → +1,
/// anything else → −1, unconditional 0) and a velocity linear in each pixel's colour
/// plus the prompt's pull.
#[derive(Module, Debug)]
struct TinyFlow {
    colour: Linear,
    prompt: Linear,
}

impl Denoiser for TinyFlow {
    fn parameterization(&self) -> Parameterization {
        Parameterization::FlowVelocity
    }
    fn predict(&self, x_t: Tensor<4>, _t: Tensor<1>, c: &Condition) -> Tensor<4> {
        let pull = self.prompt.forward(c.context.clone()).unsqueeze_dim::<4>(1);
        (self.colour.forward(x_t.swap_dims(1, 3)) + pull).swap_dims(1, 3)
    }
}

impl Pipeline for TinyFlow {
    fn prompt_conditions(&self, prompts: &[String]) -> Result<(Condition, Condition), ModelError> {
        let device = self.colour.weight.device();
        let sign: Vec<f32> = prompts
            .iter()
            .map(|p| if p == "bright" { 1.0 } else { -1.0 })
            .collect();
        let c = Tensor::<1>::from_floats(sign.as_slice(), &device).reshape([prompts.len(), 1, 1]);
        Ok((Condition::new(c.clone()), Condition::new(c.zeros_like())))
    }
    fn sample_images(&self, samples: Tensor<4>) -> Tensor<4> {
        samples.clamp(-1.0, 1.0)
    }
    fn sample_shape(&self, size: usize) -> Result<[usize; 3], ModelError> {
        Ok([3, size, size])
    }
}

/// Mean brightness for "bright", darkness otherwise.
fn brightness() -> Box<dyn Reward> {
    Box::new(align_rewards::reward_fn(
        "brightness",
        "[-1, 1]",
        |x: Tensor<4>, p: &[String]| {
            let b = p.len();
            let sign: Vec<f32> = p
                .iter()
                .map(|p| if p == "bright" { 1.0 } else { -1.0 })
                .collect();
            let mean = x.reshape([b as i32, -1]).mean_dim(1).reshape([b]);
            let device = mean.device();
            mean * Tensor::from_floats(sign.as_slice(), &device)
        },
    ))
}

/// Brightness, except that the `poison`-th call (0-based) scores its last sample NaN — a
/// reward that does not check its own output, as a user's or a server's may not.
struct Poisoned {
    inner: Box<dyn Reward>,
    calls: std::cell::Cell<usize>,
    poison: usize,
}

impl Reward for Poisoned {
    fn name(&self) -> &str {
        "poisoned"
    }
    fn scale(&self) -> &str {
        "[-1, 1]"
    }
    fn score(&self, images: &Tensor<4>, prompts: &[String]) -> align_rewards::Result<Vec<f64>> {
        let mut s = self.inner.score(images, prompts)?;
        if self.calls.replace(self.calls.get() + 1) == self.poison
            && let Some(last) = s.last_mut()
        {
            *last = f64::NAN;
        }
        Ok(s)
    }
}

fn run(out: &Path, iterations: usize, resume: bool) -> Report {
    try_run(out, iterations, resume, brightness()).unwrap()
}

fn try_run(
    out: &Path,
    iterations: usize,
    resume: bool,
    reward: Box<dyn Reward>,
) -> align_train::Result<Report> {
    let device = align_core::test_device().autodiff();
    // The same initial weights for every run: the runner replaces them on resume.
    device.seed(3);
    let model = TinyFlow {
        colour: LinearConfig::new(3, 3).init(&device),
        prompt: LinearConfig::new(1, 3).init(&device),
    };
    let mut config = TrainConfig {
        algorithm: AlgorithmName::FlowGrpo,
        out: out.to_path_buf(),
        prompts_per_iteration: 2,
        group_size: 4,
        train_steps: 4,
        guidance: 1.0,
        eval_every: Some(2),
        eval_seeds: 2,
        ..TrainConfig::default()
    };
    config.runner.iterations = iterations;
    config.runner.learning_rate = 3e-2;
    config.flow_grpo.clip_range = 0.2;
    let prompts = vec!["bright".to_string(), "dark".to_string()];
    let sde = FlowSdeSampler::new(FlowGrid::new(4, 1.0).unwrap(), 0.7).unwrap();
    let task = OnlineTask {
        lora_targets: Some(vec!["colour".into(), "prompt".into()]),
        ..OnlineTask::new(model, prompts.clone(), reward, Box::new(sde), [3, 4, 4])
    };
    let euler = Box::new(FlowEulerSampler::new(FlowGrid::new(4, 1.0).unwrap()));
    let eval = RewardEvaluator::for_config(brightness(), prompts, euler, [3, 4, 4], &config);
    train_pipeline(task, Box::new(eval), &config, resume, &silent())
}

/// A NaN score stops the iteration before any update with an error naming the iteration,
/// the sample and its prompt; the last checkpoint stays intact and a resumed run (the reward
/// repaired) ends identical to one that never met the NaN.
#[test]
fn a_nan_reward_stops_before_any_update_naming_the_sample_and_the_run_resumes_identically() {
    let _serial = serial();
    let dir = tempdir("nan-reward");
    let (a, b) = (dir.join("reference"), dir.join("poisoned"));
    run(&a, 4, false);
    let poisoned = Poisoned {
        inner: brightness(),
        calls: std::cell::Cell::new(0),
        poison: 2,
    };
    let err = try_run(&b, 4, false, Box::new(poisoned))
        .unwrap_err()
        .to_string();
    // Eight samples per iteration (2 prompts × 4), prompts in groups: the last is "dark".
    assert!(
        err.contains("iteration 3: reward `poisoned` scored sample 7 (prompt \"dark\") NaN")
            && err.contains("stopped before any update"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("LATEST")).unwrap().trim(),
        "checkpoint-000002"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    run(&b, 4, true);
    for f in ["checkpoint-000004/model.bpk", "metrics.jsonl"] {
        let same = std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap();
        assert!(same, "{f} differs after the NaN and the resume");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Flow-GRPO through the generic job on a flow pipeline of its own: the reward rises, the
/// periodic evaluation writes its grids and metric, and an interrupted run resumes to the
/// same checkpoint and metrics as an uninterrupted one.
#[test]
fn flow_grpo_trains_a_pipeline_that_is_not_a_shapes_model_and_resumes_bit_for_bit() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("align-job-tiny-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (a, b) = (dir.join("full"), dir.join("halves"));
    let report = run(&a, 6, false);
    assert_eq!(report.iterations, 6);
    let eval = report.eval_reward.clone().unwrap();
    assert!(eval.final_ > eval.base + 0.05, "{eval:?}");
    let text = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    for key in [
        "reward_mean",
        "kl",
        "approx_kl",
        "clip_fraction",
        "grad_norm",
    ] {
        assert!(rows.iter().all(|r| r[key].is_f64()), "{key}: {text}");
    }
    assert!(rows[1]["eval_reward_mean"].is_f64() && rows[0]["eval_reward_mean"].is_null());
    for f in [
        "grid-before.png",
        "grid-iteration-000002.png",
        "grid-iteration-000006.png",
        "grid-after.png",
        "report.md",
    ] {
        assert!(a.join(f).is_file(), "{f}");
    }
    run(&b, 3, false);
    let resumed = run(&b, 6, true);
    assert_eq!(resumed.eval_reward.unwrap().final_, eval.final_);
    // (The optimizer file is not compared byte for byte: burn writes its moments in hash-map
    // order. Equal weights and metrics after the resumed iterations show they were equal.)
    for f in ["checkpoint-000006/model.bpk", "metrics.jsonl"] {
        let same = std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap();
        assert!(same, "{f} differs after a resume");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
