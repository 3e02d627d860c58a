//! Appendix A.6: the Flow-GRPO SDE keeps the probability-flow ODE's marginals.
//!
//! Data `x₀ ~ N(m, s²)` per channel (2-D: two channels with different moments) has an exact
//! velocity field (see `common::GaussianFlow`). Sampling it with the SDE from `x_1 ~ N(0, I)`
//! must reproduce the data's mean and variance for every noise level. The seed document's
//! placeholder drift `v + ½σ²(−v/σ)` must not — that negative check stays.
#![allow(clippy::unwrap_used)]

mod common;

use align_core::{Condition, Denoiser, NoiseKey, noise_tensor};
use align_samplers::{FlowGrid, FlowSdeSampler, RolloutBatch, RolloutConfig, Sampler, rollout};
use burn::tensor::{Tensor, TensorData};
use common::{GaussianFlow, host4};

const N: usize = 20_000;
const STEPS: usize = 100;

fn data() -> GaussianFlow {
    GaussianFlow::new(vec![0.5, -1.0], vec![0.3, 0.8])
}

/// Per-channel mean and variance of `[N, 2, 1, 1]` samples.
fn moments(x: &Tensor<4>) -> [(f64, f64); 2] {
    let v = host4(x);
    let mut out = [(0.0, 0.0); 2];
    for (c, slot) in out.iter_mut().enumerate() {
        let xs: Vec<f64> = v.iter().skip(c).step_by(2).map(|&x| x as f64).collect();
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        *slot = (mean, var);
    }
    out
}

fn unconditioned() -> Condition {
    Condition::new(Tensor::zeros([N, 1, 1], &align_core::test_device()))
}

/// Worst relative error of the final moments against the data's.
fn moment_error(final_sample: &Tensor<4>) -> f64 {
    let d = data();
    let mut worst: f64 = 0.0;
    for (c, (mean, var)) in moments(final_sample).iter().enumerate() {
        let (m, s2) = (d.mean[c] as f64, (d.std[c] as f64).powi(2));
        worst = worst
            .max((mean - m).abs() / d.std[c] as f64)
            .max((var / s2 - 1.0).abs());
    }
    worst
}

#[test]
fn sde_samples_reproduce_the_data_moments_for_several_noise_levels() {
    let model = data();
    for noise_level in [0.3, 0.7, 1.0] {
        let sampler = FlowSdeSampler::new(FlowGrid::new(STEPS, 1.0).unwrap(), noise_level).unwrap();
        check_moments(
            &model,
            &sampler,
            &format!("flow SDE, noise level {noise_level}"),
        );
        // DanceGRPO's constant σ_t = η keeps the marginals too.
        let dance = FlowSdeSampler::new(FlowGrid::new(STEPS, 1.0).unwrap(), noise_level)
            .unwrap()
            .with_constant_sigma();
        check_moments(&model, &dance, &format!("DanceGRPO SDE, η {noise_level}"));
    }
}

/// Rolls out `N` samples of the Gaussian data with `sampler` and checks their moments.
fn check_moments(model: &GaussianFlow, sampler: &FlowSdeSampler, what: &str) {
    let cond = unconditioned();
    let batch = RolloutBatch {
        condition: &cond,
        uncond: None,
        sample_ids: (0..N as u64).collect(),
        condition_ids: vec![0; N],
        group_ids: None,
        sample_shape: [2, 1, 1],
    };
    let config = RolloutConfig {
        seed: 17,
        ..RolloutConfig::default()
    };
    let traj = rollout(model, sampler, &batch, &config).unwrap();
    let err = moment_error(traj.final_sample());
    eprintln!("{what}: moment error {err:.4}");
    // Sampling error ≈ 1–2 %, Euler–Maruyama bias with 100 steps a few %.
    assert!(err < 0.06, "{what}: moment error {err:.4}");
}

/// A wrong drift of the seed documents, same σ schedule, same noise.
#[derive(Clone, Copy, Debug)]
enum WrongDrift {
    /// Seed 000 §6.5: `drift = v + ½σ²(−v/(σ + 1e-6))`.
    Placeholder,
    /// Seed 000 §5.2: the forward-time sign `v + ½σ²∇log p` integrated with `dt < 0`.
    ForwardSign,
}

fn wrong_rollout(noise_level: f64, variant: WrongDrift) -> Tensor<4> {
    let device = align_core::test_device();
    let model = data();
    let cond = unconditioned();
    let sampler = FlowSdeSampler::new(FlowGrid::new(STEPS, 1.0).unwrap(), noise_level).unwrap();
    let grid = FlowGrid::new(STEPS, 1.0).unwrap();
    let ids: Vec<u64> = (0..N as u64).collect();
    let keys: Vec<NoiseKey> = ids.iter().map(|&s| NoiseKey::initial(17, s)).collect();
    let mut x = noise_tensor(&keys, [2, 1, 1], &device).unwrap();
    for k in 0..STEPS {
        let (t, t_next) = grid.interval(k);
        let dt = t_next - t;
        let tt = Tensor::from_data(TensorData::new(vec![t as f32; N], [N]), &device);
        let v = model.predict(x.clone(), tt, &cond);
        let sigma = sampler.sigma(k);
        let drift = match variant {
            WrongDrift::Placeholder => {
                v.clone() + v.mul_scalar(-0.5 * sigma * sigma / (sigma + 1e-6))
            }
            WrongDrift::ForwardSign => {
                // ∇log p_t = −(x + (1−t) v)/t, added with the forward-time sign.
                let score = (x.clone() + v.clone().mul_scalar(1.0 - t)).mul_scalar(-1.0 / t);
                v + score.mul_scalar(0.5 * sigma * sigma)
            }
        };
        let keys: Vec<NoiseKey> = ids
            .iter()
            .map(|&s| NoiseKey::transition(17, s, k))
            .collect();
        let z = noise_tensor(&keys, [2, 1, 1], &device).unwrap();
        x = x + drift.mul_scalar(dt) + z.mul_scalar(sigma * (-dt).sqrt());
    }
    x
}

#[test]
fn the_wrong_drifts_of_the_seed_documents_fail_the_same_check() {
    for variant in [WrongDrift::Placeholder, WrongDrift::ForwardSign] {
        for noise_level in [0.3, 0.7, 1.0] {
            let err = moment_error(&wrong_rollout(noise_level, variant));
            eprintln!("{variant:?} drift, noise level {noise_level}: moment error {err:.4}");
            assert!(
                err > 0.25,
                "{variant:?}, noise level {noise_level}: unexpectedly matched ({err:.4})"
            );
        }
    }
}

#[test]
fn the_ode_velocity_field_itself_is_exact() {
    // Sanity check of the test's field: 400 Euler steps land on the data moments.
    let model = data();
    let cond = unconditioned();
    let sampler = align_samplers::FlowEulerSampler::new(FlowGrid::new(400, 1.0).unwrap());
    let batch = RolloutBatch {
        condition: &cond,
        uncond: None,
        sample_ids: (0..N as u64).collect(),
        condition_ids: vec![0; N],
        group_ids: None,
        sample_shape: [2, 1, 1],
    };
    let traj = rollout(&model, &sampler, &batch, &RolloutConfig::default()).unwrap();
    assert!(traj.stochastic_steps().is_empty());
    assert!(moment_error(traj.final_sample()) < 0.03);
    assert_eq!(sampler.num_steps(), 400);
}

/// Appendix A.7: the score recovered from the velocity, `−(x + (1−t) v)/t`, equals the
/// analytic score of the Gaussian marginal, `−(x − (1−t) m)/((1−t)² s² + t²)`.
#[test]
fn score_from_velocity_matches_the_analytic_score() {
    let device = align_core::test_device();
    let model = data();
    let n = 64;
    let x = noise_tensor(
        &(0..n as u64)
            .map(|i| NoiseKey::initial(3, i))
            .collect::<Vec<_>>(),
        [2, 1, 1],
        &device,
    )
    .unwrap();
    let cond = Condition::new(Tensor::zeros([n, 1, 1], &device));
    for t in [0.05f64, 0.3, 0.5, 0.9, 0.99] {
        let tt = Tensor::from_data(TensorData::new(vec![t as f32; n], [n]), &device);
        let v = model.predict(x.clone(), tt, &cond);
        let score = host4(&(x.clone() + v.mul_scalar(1.0 - t)).mul_scalar(-1.0 / t));
        let xs = host4(&x);
        for i in 0..xs.len() {
            let c = i % 2;
            let (m, s) = (model.mean[c] as f64, model.std[c] as f64);
            let var = (1.0 - t).powi(2) * s * s + t * t;
            let expect = -(xs[i] as f64 - (1.0 - t) * m) / var;
            assert!(
                (score[i] as f64 - expect).abs() < 1e-4 * (1.0 + expect.abs()),
                "t={t}: {} vs {expect}",
                score[i]
            );
        }
    }
}
