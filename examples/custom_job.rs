//! A new algorithm on `align_core::Runner`: reward-weighted regression (Peters & Schaal 2007)
//! of a Gaussian policy `N(μ, σ²)` toward the reward `r(x) = −(x − 3)²`.
//!
//! Each iteration draws 64 samples with run-keyed noise, weights them by
//! `w_i = softmax(r_i / β)` and takes one optimizer step on the weighted negative
//! log-likelihood `−Σ w_i log N(x_i; μ, σ²)`. The runner owns everything else: AdamW, clipping,
//! `metrics.jsonl`, atomic checkpoints and bit-identical resume, which the example checks by
//! stopping a run halfway and resuming it.
//!
//! Run: `cargo run --release -p align-examples --example custom_job`

use align_core::{CoreError, Job, Metrics, NoiseKey, Runner, RunnerConfig, noise_tensor};
use burn::module::Param;
use burn::optim::GradientsParams;
use burn::prelude::*;

/// The policy: a mean and a log standard deviation.
#[derive(Module, Debug)]
pub struct Gaussian {
    mean: Param<Tensor<1>>,
    log_std: Param<Tensor<1>>,
}

/// Reward-weighted regression with temperature `beta`.
pub struct Rwr {
    beta: f64,
}

impl Job<Gaussian> for Rwr {
    fn iteration(
        &mut self,
        model: Gaussian,
        iteration: usize,
        apply: &mut dyn FnMut(Gaussian, align_core::Gradients) -> align_core::Result<Gaussian>,
    ) -> align_core::Result<(Gaussian, Metrics)> {
        let device = model.mean.val().device();
        // Noise keyed by (seed, iteration): a resumed run draws exactly the same samples.
        let eps: Tensor<1> = noise_tensor(
            &[NoiseKey::initial(7, iteration as u64)],
            [1, 1, 64],
            &device,
        )?
        .reshape([64]);
        let (mean, std) = (model.mean.val(), model.log_std.val().exp());
        let x = (eps * std.clone().detach() + mean.clone().detach()).detach(); // the samples
        let reward = (x.clone() - 3.0).powi_scalar(2).neg();
        let weights = burn::tensor::activation::softmax(reward.clone().div_scalar(self.beta), 0);
        let log_p = ((x - mean) / std.clone()).powi_scalar(2).mul_scalar(-0.5) - std.log();
        let loss = (weights * log_p).sum().neg();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = apply(model, grads.into())?;
        let mean_reward = reward.mean().into_scalar::<f32>() as f64;
        Ok((
            model,
            Metrics::from([("reward_mean".to_string(), mean_reward)]),
        ))
    }
}

fn run(dir: &std::path::Path, iterations: usize, resume: bool) -> Result<Gaussian, CoreError> {
    let device = align_core::select_device(None)?.autodiff();
    let start = Gaussian {
        mean: Param::from_tensor(Tensor::from_floats([0.0], &device)),
        log_std: Param::from_tensor(Tensor::from_floats([0.0], &device)),
    };
    let config = RunnerConfig {
        iterations,
        learning_rate: 0.05,
        checkpoint_every: 10,
        ..RunnerConfig::default()
    };
    Ok(Runner::new(config, dir)?
        .run(start, &mut Rwr { beta: 1.0 }, resume)?
        .model)
}

/// Trains, checks the result and the resume, and prints both.
pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    align_core::tune_allocator();
    let tmp = std::env::temp_dir().join(format!("align-custom-job-{}", std::process::id()));
    let full = run(&tmp.join("full"), 120, false)?;
    run(&tmp.join("halves"), 60, false)?; // "interrupted" after 60 iterations …
    let resumed = run(&tmp.join("halves"), 120, true)?; // … and resumed
    let value = |p: &Param<Tensor<1>>| p.val().into_scalar::<f32>();
    let (mu, sigma) = (value(&full.mean), value(&full.log_std).exp());
    println!("after 120 iterations: mu = {mu:.3} (target 3), sigma = {sigma:.3}");
    assert!(
        (mu - 3.0).abs() < 0.3,
        "RWR should move the mean to the reward's peak"
    );
    assert_eq!(
        (value(&full.mean), value(&full.log_std)),
        (value(&resumed.mean), value(&resumed.log_std))
    );
    println!("a run stopped at 60 and resumed ends bit-identical to the uninterrupted one");
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}
