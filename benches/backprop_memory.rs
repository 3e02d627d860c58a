//! Peak memory of one reward-backprop update versus the number of differentiated steps K, on
//! the shipped `small` UNet with LoRA (50 DDIM steps, batch 4, CFG 3): chained vector-Jacobian
//! products (`align_backprop::chain_gradients`) against plain autodiff through the unrolled
//! sampler.
//!
//! `cargo bench -p align-benches --bench backprop_memory` runs every (method, K) in a fresh
//! child process (so each peak is its own) and prints a Markdown table: peak resident memory
//! (VmHWM), the growth over the process's resident memory before the update, and the update's
//! wall time. Not a criterion benchmark: criterion measures time, this measures memory.

use std::process::Command;
use std::time::Instant;

use align_backprop::{ChainInputs, chain_gradients, reward_cotangent};
use align_core::{Condition, select_device};
use align_data::Tokenizer;
use align_models::{LoraConfig, ShapesModel, apply_lora};
use align_samplers::{
    BetaSchedule, FinalAlpha, RolloutBatch, RolloutConfig, SamplerConfig, TimestepSpacing,
    pathwise_step, rollout,
};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

const T: usize = 50;
const KS: [usize; 6] = [1, 2, 5, 10, 20, T];
const BATCH: usize = 4;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn child(method: &str, k: usize) {
    let device = select_device(None).expect("device").autodiff();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-unet");
    let (config, model) = ShapesModel::load(&dir, &device).expect("shipped UNet");
    let ShapesModel::Unet(model) = model else {
        panic!("models/shapes-unet is not a UNet")
    };
    device.seed(0);
    let policy = apply_lora(*model, &LoraConfig::new()).expect("lora");
    let tok = Tokenizer::new();
    let rows = vec![tok.encode("two red circles").expect("prompt"); BATCH];
    let nulls = vec![tok.null_prompt(); BATCH];
    let frozen = policy.clone().no_grad();
    let encode = |m: &align_models::TextToImage<align_models::UNet>| -> (Condition, Condition) {
        (
            m.encode(&rows, &device).expect("encode"),
            m.encode(&nulls, &device).expect("encode"),
        )
    };
    let sampler = SamplerConfig::Ddim {
        num_train_timesteps: config.num_train_timesteps,
        beta_schedule: BetaSchedule::ddpm_linear(),
        num_steps: T,
        spacing: TimestepSpacing::Leading { offset: 1 },
        eta: 0.0,
        final_alpha: FinalAlpha::One,
        clip_sample: Some(1.0),
    }
    .build()
    .expect("sampler");
    let (c, u) = encode(&frozen);
    let traj = rollout(
        &frozen,
        sampler.as_ref(),
        &RolloutBatch {
            condition: &c,
            uncond: Some(&u),
            sample_ids: (0..BATCH as u64).collect(),
            condition_ids: vec![0; BATCH],
            group_ids: None,
            sample_shape: [3, config.image_size, config.image_size],
        },
        &RolloutConfig {
            guidance_scale: 3.0,
            ..RolloutConfig::default()
        },
    )
    .expect("rollout");
    // A differentiable reward: mean brightness.
    let brightness = |x: Tensor<4>| Ok(x.mean_dim(1).mean_dim(2).mean_dim(3).reshape([BATCH]));
    let (_, cot) = reward_cotangent(traj.final_sample(), 1.0, &brightness).expect("reward");
    let before = status_kib("VmRSS:");
    let started = Instant::now();
    let first = T - k;
    let grads = match method {
        "chained" => {
            let enc = |m: &align_models::TextToImage<align_models::UNet>| {
                let (c, u) = encode(m);
                Ok((c, Some(u)))
            };
            chain_gradients(ChainInputs {
                policy: &policy,
                sampler: sampler.as_ref(),
                trajectory: &traj,
                encode: &enc,
                first_step: first,
                cotangent: cot,
            })
            .expect("chain")
            .grads
        }
        _ => {
            let (c, u) = encode(&policy);
            let mut x = traj.latents[first].clone().detach();
            for step in first..T {
                x = pathwise_step(&policy, sampler.as_ref(), &traj, step, x, &c, Some(&u))
                    .expect("step")
                    .prev_sample;
            }
            GradientsParams::from_grads((x * cot).sum().backward(), &policy)
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    assert!(!grads.is_empty());
    println!(
        "{method} {k} {} {} {seconds:.3}",
        status_kib("VmHWM:"),
        status_kib("VmHWM:").saturating_sub(before)
    );
    drop(policy.valid());
}

fn main() {
    if let Ok(spec) = std::env::var("ALIGN_BACKPROP_MEMORY_CHILD") {
        let (method, k) = spec.split_once(':').expect("method:k");
        child(method, k.parse().expect("k"));
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let exe = std::env::current_exe().expect("exe");
    println!("| method | K | peak RSS (MiB) | growth during the update (MiB) | update time (s) |");
    println!("|---|---|---|---|---|");
    let mut peaks = std::collections::BTreeMap::new();
    let mut times = std::collections::BTreeMap::new();
    for method in ["chained", "unrolled"] {
        for k in KS {
            let out = Command::new(&exe)
                .env("ALIGN_BACKPROP_MEMORY_CHILD", format!("{method}:{k}"))
                .output()
                .expect("child");
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(line) = text.lines().find(|l| l.starts_with(method)) else {
                println!(
                    "| {method} | {k} | failed: {} |||",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
                continue;
            };
            let f: Vec<&str> = line.split_whitespace().collect();
            let peak: f64 = f[2].parse::<f64>().unwrap_or(0.0) / 1024.0;
            let growth: f64 = f[3].parse::<f64>().unwrap_or(0.0) / 1024.0;
            let secs: f64 = f[4].parse().unwrap_or(0.0);
            peaks.insert((method, k), peak);
            times.insert((method, k), secs);
            println!("| {method} | {k} | {peak:.0} | {growth:.0} | {secs:.2} |");
        }
    }
    if let (Some(a), Some(b)) = (peaks.get(&("chained", T)), peaks.get(&("chained", 1))) {
        println!("\nchained: peak(K={T}) / peak(K=1) = {:.3}", a / b);
    }
    if let (Some(a), Some(b)) = (peaks.get(&("unrolled", T)), peaks.get(&("unrolled", 1))) {
        println!("unrolled: peak(K={T}) / peak(K=1) = {:.3}", a / b);
    }
    if let (Some(a), Some(b)) = (times.get(&("chained", T)), times.get(&("unrolled", T))) {
        println!("compute: chained / unrolled at K={T} = {:.2}", a / b);
    }
}
