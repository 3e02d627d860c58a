//! Properties of single sampler steps: exact log-probs, re-scoring, DDIM/DDPM equivalences,
//! parameterization consistency and refusals.
#![allow(clippy::unwrap_used)]

mod common;

use align_core::{LogProbReduction, NoiseKey, Parameterization, noise_tensor};
use align_samplers::{
    BetaSchedule, CpsSampler, DdimSampler, DdpmSampler, DdpmVariance, FinalAlpha, FlowEulerSampler,
    FlowGrid, FlowSdeSampler, NoiseSchedule, Sampler, SamplerError, TimestepSpacing, Transition,
    strided_timesteps,
};
use burn::tensor::Tensor;
use common::{assert_reproduced, host1, host4};
use proptest::prelude::*;

const SHAPE: [usize; 3] = [2, 3, 3];

fn noise(seed: u64, salt: u64, b: usize) -> Tensor<4> {
    let keys: Vec<NoiseKey> = (0..b as u64)
        .map(|i| NoiseKey::initial(seed, salt * 100 + i))
        .collect();
    noise_tensor(&keys, SHAPE, &align_core::test_device()).unwrap()
}

/// Builds one of the stochastic samplers from a selector and a continuous parameter.
fn stochastic_sampler(which: u8, param: f64, steps: usize) -> (Box<dyn Sampler>, Parameterization) {
    let schedule = NoiseSchedule::new(BetaSchedule::stable_diffusion(), 1000).unwrap();
    let timesteps = strided_timesteps(1000, steps, TimestepSpacing::Leading { offset: 1 }).unwrap();
    match which {
        0 => (
            Box::new(DdpmSampler::new(schedule, timesteps, DdpmVariance::FixedLarge).unwrap()),
            Parameterization::Epsilon,
        ),
        1 => (
            Box::new(DdimSampler::new(schedule, timesteps, 0.1 + param).unwrap()),
            Parameterization::VPrediction,
        ),
        2 => (
            Box::new(
                FlowSdeSampler::new(FlowGrid::new(steps, 1.0 + param).unwrap(), 0.1 + param)
                    .unwrap(),
            ),
            Parameterization::FlowVelocity,
        ),
        _ => (
            Box::new(
                CpsSampler::new(FlowGrid::new(steps, 1.0).unwrap(), 0.05 + 0.9 * param / 2.0)
                    .unwrap(),
            ),
            Parameterization::FlowVelocity,
        ),
    }
}

/// Reference log-density of each row in f64.
fn reference(x: &[f32], mean: &[f32], std: f64, b: usize, reduction: LogProbReduction) -> Vec<f64> {
    let d = x.len() / b;
    (0..b)
        .map(|i| {
            let s: f64 = (0..d)
                .map(|j| {
                    let z = (x[i * d + j] as f64 - mean[i * d + j] as f64) / std;
                    -0.5 * z * z - std.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
                })
                .sum();
            match reduction {
                LogProbReduction::Sum => s,
                LogProbReduction::Mean => s / d as f64,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Appendix A.1: the returned log-prob is the Gaussian log-density of the returned sample
    /// (Mean and Sum), and re-scoring the returned sample gives the same value bit for bit.
    #[test]
    fn log_prob_is_the_density_of_the_returned_sample(
        which in 0u8..4,
        param in 0.0f64..2.0,
        steps in 2usize..30,
        k_frac in 0.0f64..1.0,
        seed in 0u64..10_000,
        sum in any::<bool>(),
    ) {
        let (sampler, parameterization) = stochastic_sampler(which, param, steps);
        // CPS's last step is deterministic; pick among stochastic steps.
        let stochastic: Vec<usize> = (0..steps).filter(|&k| sampler.step_std(k) > 0.0).collect();
        let k = stochastic[((k_frac * stochastic.len() as f64) as usize).min(stochastic.len() - 1)];
        let reduction = if sum { LogProbReduction::Sum } else { LogProbReduction::Mean };
        let b = 3;
        let x = noise(seed, 1, b);
        let out = noise(seed, 2, b);
        let z = noise(seed, 3, b);
        let (prev, lp, mean, std) = sampler
            .step_with_logprob(k, x.clone(), out.clone(), parameterization, Transition::Sample(z.clone()), reduction)
            .unwrap();
        prop_assert!(std > 0.0);
        prop_assert!((std - sampler.step_std(k)).abs() < 1e-15);
        let (p, m, zz) = (host4(&prev), host4(&mean), host4(&z));
        // The sample is μ + σ z.
        for i in 0..p.len() {
            prop_assert!((p[i] as f64 - (m[i] as f64 + std * zz[i] as f64)).abs() < 1e-5 * (1.0 + p[i].abs() as f64));
        }
        let expect = reference(&p, &m, std, b, reduction);
        let got = host1(&lp);
        for (g, e) in got.iter().zip(&expect) {
            prop_assert!((*g as f64 - e).abs() < 2e-4 * e.abs().max(1.0), "{} vs {}", g, e);
        }
        let (_, again, _, _) = sampler
            .step_with_logprob(k, x, out, parameterization, Transition::Rescore(prev), reduction)
            .unwrap();
        assert_reproduced(&host1(&again), &got, "re-scored log-prob");
    }

    /// Appendix A.2: DDIM with η = 1 has the DDPM posterior variance on the strided schedule,
    /// and (with x̂₀ unclipped) the same mean; η = 0 gives σ = 0.
    #[test]
    fn ddim_eta_one_is_the_strided_ddpm_posterior(
        steps in 1usize..100,
        spacing in 0u8..3,
        beta in 0u8..3,
        seed in 0u64..1000,
    ) {
        let schedule = NoiseSchedule::new(
            [BetaSchedule::ddpm_linear(), BetaSchedule::stable_diffusion(), BetaSchedule::squared_cos()][beta as usize],
            1000,
        ).unwrap();
        let spacing = [TimestepSpacing::Leading { offset: 1 }, TimestepSpacing::Trailing, TimestepSpacing::Linspace][spacing as usize];
        let timesteps = strided_timesteps(1000, steps, spacing).unwrap();
        let ddim = DdimSampler::new(schedule.clone(), timesteps.clone(), 1.0).unwrap().with_final_alpha(FinalAlpha::One);
        let ddim0 = DdimSampler::new(schedule.clone(), timesteps.clone(), 0.0).unwrap();
        let ddpm = DdpmSampler::new(schedule, timesteps, DdpmVariance::FixedSmall).unwrap();
        let x = noise(seed, 1, 2);
        let eps = noise(seed, 2, 2).mul_scalar(0.5);
        for k in 0..steps {
            let (a, b) = (ddim.step_std(k), ddpm.step_std(k));
            prop_assert!((a - b).abs() <= 1e-12 * b.max(1e-300) + 1e-15, "k={k}: {a} vs {b}");
            prop_assert_eq!(ddim0.step_std(k), 0.0);
        }
        // Compare means at a mid step (the first step's x̂₀ is far from typical data, fine too).
        let k = steps / 2;
        let m1 = ddim.step(k, x.clone(), eps.clone(), Parameterization::Epsilon, Transition::Mean, LogProbReduction::Mean).unwrap().mean;
        let m2 = ddpm.step(k, x, eps, Parameterization::Epsilon, Transition::Mean, LogProbReduction::Mean).unwrap().mean;
        let (m1, m2) = (host4(&m1), host4(&m2));
        for (a, b) in m1.iter().zip(&m2) {
            prop_assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// ε-, v- and x₀-prediction of the same (x₀, ε) drive a DDIM step to the same mean.
    #[test]
    fn parameterizations_agree(steps in 2usize..50, k_frac in 0.0f64..1.0, seed in 0u64..1000, eta in 0.0f64..1.0) {
        let schedule = NoiseSchedule::new(BetaSchedule::stable_diffusion(), 1000).unwrap();
        let timesteps = strided_timesteps(1000, steps, TimestepSpacing::Leading { offset: 1 }).unwrap();
        let k = ((k_frac * steps as f64) as usize).min(steps - 1);
        let a = schedule.alpha_bar(timesteps[k]);
        let ddim = DdimSampler::new(schedule, timesteps, eta).unwrap();
        let x0 = noise(seed, 1, 2).mul_scalar(0.5);
        let eps = noise(seed, 2, 2);
        let xt = x0.clone().mul_scalar(a.sqrt()) + eps.clone().mul_scalar((1.0 - a).sqrt());
        let v = eps.clone().mul_scalar(a.sqrt()) - x0.clone().mul_scalar((1.0 - a).sqrt());
        let mean = |out: Tensor<4>, p| host4(&ddim.step(k, xt.clone(), out, p, Transition::Mean, LogProbReduction::Mean).unwrap().mean);
        let me = mean(eps, Parameterization::Epsilon);
        let mv = mean(v, Parameterization::VPrediction);
        let mx = mean(x0, Parameterization::Sample);
        for i in 0..me.len() {
            prop_assert!((me[i] - mv[i]).abs() < 2e-3 * (1.0 + me[i].abs()), "{} vs {}", me[i], mv[i]);
            prop_assert!((me[i] - mx[i]).abs() < 2e-3 * (1.0 + me[i].abs()), "{} vs {}", me[i], mx[i]);
        }
    }

    /// With no noise the SDE and CPS collapse to the Euler ODE step.
    #[test]
    fn zero_noise_flow_steps_are_euler_steps(steps in 2usize..40, k_frac in 0.0f64..1.0, seed in 0u64..1000, shift in 0.5f64..4.0) {
        let grid = FlowGrid::new(steps, shift).unwrap();
        let k = ((k_frac * steps as f64) as usize).min(steps - 1);
        let x = noise(seed, 1, 2);
        let v = noise(seed, 2, 2);
        let run = |s: &dyn Sampler| {
            let out = s.step(k, x.clone(), v.clone(), Parameterization::FlowVelocity, Transition::Mean, LogProbReduction::Mean).unwrap();
            (host4(&out.mean), out.std)
        };
        let (euler, _) = run(&FlowEulerSampler::new(grid.clone()));
        let (sde, s1) = run(&FlowSdeSampler::new(grid.clone(), 0.0).unwrap());
        let (cps, s2) = run(&CpsSampler::new(grid, 0.0).unwrap());
        prop_assert_eq!(s1, 0.0);
        prop_assert_eq!(s2, 0.0);
        for i in 0..euler.len() {
            prop_assert!((euler[i] - sde[i]).abs() < 1e-5 * (1.0 + euler[i].abs()));
            prop_assert!((euler[i] - cps[i]).abs() < 1e-5 * (1.0 + euler[i].abs()));
        }
    }
}

#[test]
fn flow_sde_sigma_follows_the_flow_grpo_schedule() {
    let grid = FlowGrid::new(10, 1.0).unwrap();
    let s = FlowSdeSampler::new(grid, 0.7).unwrap();
    // t = 1 is clamped with t_1 = 0.9: σ = 0.7 √(1 / 0.1).
    assert!((s.sigma(0) - 0.7 * 10f64.sqrt()).abs() < 1e-12);
    // t = 0.5: σ = 0.7; std = σ √0.1.
    assert!((s.sigma(5) - 0.7).abs() < 1e-12);
    assert!((s.step_std(5) - 0.7 * 0.1f64.sqrt()).abs() < 1e-12);
    // CPS: std = t_{k+1} sin(a π/2).
    let c = CpsSampler::new(FlowGrid::new(10, 1.0).unwrap(), 0.8).unwrap();
    assert!((c.step_std(4) - 0.5 * (0.4 * std::f64::consts::PI).sin()).abs() < 1e-12);
    assert_eq!(c.step_std(9), 0.0);
}

#[test]
fn deterministic_steps_refuse_log_probs() {
    let x = noise(0, 1, 1);
    let schedule = NoiseSchedule::new(BetaSchedule::stable_diffusion(), 1000).unwrap();
    let ts = strided_timesteps(1000, 10, TimestepSpacing::Leading { offset: 1 }).unwrap();
    let ddim0 = DdimSampler::new(schedule.clone(), ts.clone(), 0.0).unwrap();
    let err = ddim0
        .step_with_logprob(
            3,
            x.clone(),
            x.clone(),
            Parameterization::Epsilon,
            Transition::Sample(x.clone()),
            LogProbReduction::Mean,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        SamplerError::Deterministic {
            sampler: "ddim",
            step: 3,
            ..
        }
    ));
    assert!(err.to_string().contains("η > 0"), "{err}");
    let euler = FlowEulerSampler::new(FlowGrid::new(5, 1.0).unwrap());
    assert!(matches!(
        euler.step_with_logprob(
            0,
            x.clone(),
            x.clone(),
            Parameterization::FlowVelocity,
            Transition::Sample(x.clone()),
            LogProbReduction::Mean
        ),
        Err(SamplerError::Deterministic { .. })
    ));
    // DDPM's fixed-small variance is 0 on the last step.
    let ddpm = DdpmSampler::new(schedule, ts, DdpmVariance::FixedSmall).unwrap();
    assert_eq!(ddpm.step_std(9), 0.0);
    let out = ddpm
        .step(
            9,
            x.clone(),
            x.clone(),
            Parameterization::Epsilon,
            Transition::Sample(x.clone()),
            LogProbReduction::Mean,
        )
        .unwrap();
    assert!(out.log_prob.is_none());
}

#[test]
fn wrong_parameterization_and_range_are_errors() {
    let x = noise(0, 1, 1);
    let sde = FlowSdeSampler::new(FlowGrid::new(5, 1.0).unwrap(), 0.7).unwrap();
    let err = sde
        .step(
            0,
            x.clone(),
            x.clone(),
            Parameterization::Epsilon,
            Transition::Mean,
            LogProbReduction::Mean,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            SamplerError::UnsupportedParameterization {
                sampler: "flow-sde",
                ..
            }
        ),
        "{err}"
    );
    let ddim = DdimSampler::new(
        NoiseSchedule::new(BetaSchedule::ddpm_linear(), 100).unwrap(),
        vec![90, 50, 10],
        1.0,
    )
    .unwrap();
    assert!(
        ddim.step(
            0,
            x.clone(),
            x.clone(),
            Parameterization::FlowVelocity,
            Transition::Mean,
            LogProbReduction::Mean
        )
        .is_err()
    );
    assert!(matches!(
        ddim.step(
            3,
            x.clone(),
            x.clone(),
            Parameterization::Epsilon,
            Transition::Mean,
            LogProbReduction::Mean
        ),
        Err(SamplerError::StepOutOfRange {
            step: 3,
            steps: 3,
            ..
        })
    ));
    let wrong = noise(0, 2, 2);
    assert!(
        ddim.step(
            0,
            x.clone(),
            x.clone(),
            Parameterization::Epsilon,
            Transition::Sample(wrong),
            LogProbReduction::Mean
        )
        .is_err()
    );
    assert!(
        DdimSampler::new(
            NoiseSchedule::new(BetaSchedule::ddpm_linear(), 100).unwrap(),
            vec![10, 50],
            1.0
        )
        .is_err()
    );
    assert!(
        DdimSampler::new(
            NoiseSchedule::new(BetaSchedule::ddpm_linear(), 100).unwrap(),
            vec![50],
            -1.0
        )
        .is_err()
    );
    assert!(CpsSampler::new(FlowGrid::new(5, 1.0).unwrap(), 1.5).is_err());
    assert!(
        FlowSdeSampler::new(FlowGrid::new(5, 1.0).unwrap(), 0.7)
            .unwrap()
            .with_window(Some(3..9))
            .is_err()
    );
}

#[test]
fn per_step_noise_scales_multiply_sigma_and_one_is_the_unscaled_step() {
    let grid = FlowGrid::new(10, 1.0).unwrap();
    let plain = FlowSdeSampler::new(grid.clone(), 0.7).unwrap();
    let mut scales = vec![1.0; 10];
    scales[5] = 1.5;
    scales[7] = 0.0;
    let scaled = FlowSdeSampler::new(grid, 0.7)
        .unwrap()
        .with_noise_scales(Some(scales))
        .unwrap();
    assert!((scaled.sigma(5) - 1.5 * 0.7).abs() < 1e-12);
    assert_eq!(scaled.step_std(7), 0.0);
    // Scale exactly 1: the same step, bit for bit (mean, std and log-prob).
    let x = noise(1, 1, 3);
    let v = noise(1, 2, 3);
    let next = noise(1, 3, 3);
    for k in [0, 2, 9] {
        let run = |s: &FlowSdeSampler| {
            s.step(
                k,
                x.clone(),
                v.clone(),
                Parameterization::FlowVelocity,
                Transition::Rescore(next.clone()),
                LogProbReduction::Mean,
            )
            .unwrap()
        };
        let (a, b) = (run(&plain), run(&scaled));
        assert_eq!(a.std, b.std);
        assert_eq!(host4(&a.mean), host4(&b.mean));
        assert_eq!(
            host1(a.log_prob.as_ref().unwrap()),
            host1(b.log_prob.as_ref().unwrap())
        );
    }
    let base = || FlowSdeSampler::new(FlowGrid::new(4, 1.0).unwrap(), 0.7).unwrap();
    assert!(base().with_noise_scales(Some(vec![1.0; 3])).is_err());
    assert!(
        base()
            .with_noise_scales(Some(vec![1.0, -0.1, 1.0, 1.0]))
            .is_err()
    );
    assert!(
        base()
            .with_noise_scales(Some(vec![1.0, f64::NAN, 1.0, 1.0]))
            .is_err()
    );
}

#[test]
fn windowed_sde_is_stochastic_only_inside_the_window() {
    let s = FlowSdeSampler::new(FlowGrid::new(10, 1.0).unwrap(), 0.7)
        .unwrap()
        .with_window(Some(2..4))
        .unwrap();
    let stochastic: Vec<usize> = (0..10).filter(|&k| s.step_std(k) > 0.0).collect();
    assert_eq!(stochastic, vec![2, 3]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// On the full schedule (every training timestep) DDPM is Ho et al.'s sampler:
    /// `μ = (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t` and `σ² = β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) β_t`.
    #[test]
    fn full_schedule_ddpm_is_ho_et_al(t in 1usize..1000, seed in 0u64..1000, cosine in any::<bool>()) {
        let beta = if cosine { BetaSchedule::squared_cos() } else { BetaSchedule::ddpm_linear() };
        let schedule = NoiseSchedule::new(beta, 1000).unwrap();
        let timesteps: Vec<usize> = (0..1000).rev().collect();
        let k = 999 - t;
        let ddpm = DdpmSampler::new(schedule.clone(), timesteps.clone(), DdpmVariance::FixedSmall).unwrap();
        let large = DdpmSampler::new(schedule.clone(), timesteps, DdpmVariance::FixedLarge).unwrap();
        let (b, a, a_prev) = (schedule.beta(t), schedule.alpha_bar(t), schedule.alpha_bar(t - 1));
        let tilde = (1.0 - a_prev) / (1.0 - a) * b;
        prop_assert!((ddpm.step_std(k).powi(2) - tilde).abs() < 1e-12 * tilde.max(1e-12));
        prop_assert!((large.step_std(k).powi(2) - b).abs() < 1e-12 * b);
        let x = noise(seed, 1, 1);
        let eps = noise(seed, 2, 1);
        let mean = ddpm.step(k, x.clone(), eps.clone(), Parameterization::Epsilon, Transition::Mean, LogProbReduction::Mean).unwrap().mean;
        let (xs, es, ms) = (host4(&x), host4(&eps), host4(&mean));
        for i in 0..xs.len() {
            let ho = (xs[i] as f64 - b / (1.0 - a).sqrt() * es[i] as f64) / (1.0 - b).sqrt();
            prop_assert!((ms[i] as f64 - ho).abs() < 1e-3 * (1.0 + ho.abs()), "{} vs {ho}", ms[i]);
        }
    }
}

#[test]
fn ddim_step_hand_computed() {
    // Two training steps, β = (0.1, 0.2): ᾱ = (0.9, 0.72). One DDIM step from t = 1 to t' = 0
    // with η = 1, x_t = 1, ε̂ = 0.5:
    //   x̂₀ = (1 − √0.28·0.5)/√0.72,  σ = √(0.1/0.28)·√(1 − 0.72/0.9) = √(0.1/0.28 · 0.2),
    //   μ  = √0.9 x̂₀ + √(0.1 − σ²)·0.5.
    let device = align_core::test_device();
    let schedule = NoiseSchedule::new(
        BetaSchedule::Linear {
            beta_start: 0.1,
            beta_end: 0.2,
        },
        2,
    )
    .unwrap();
    let ddim = DdimSampler::new(schedule, vec![1, 0], 1.0).unwrap();
    let x = Tensor::<4>::ones([1, 1, 1, 1], &device);
    let eps = Tensor::<4>::ones([1, 1, 1, 1], &device).mul_scalar(0.5);
    let out = ddim
        .step(
            0,
            x,
            eps,
            Parameterization::Epsilon,
            Transition::Mean,
            LogProbReduction::Sum,
        )
        .unwrap();
    let x0 = (1.0 - 0.28f64.sqrt() * 0.5) / 0.72f64.sqrt();
    let var: f64 = 0.1 / 0.28 * 0.2;
    let mu = 0.9f64.sqrt() * x0 + (0.1 - var).sqrt() * 0.5;
    assert!((out.std - var.sqrt()).abs() < 1e-12);
    assert!(
        (host4(&out.mean)[0] as f64 - mu).abs() < 1e-6,
        "{:?} vs {mu}",
        host4(&out.mean)
    );
    assert!((host4(&out.pred_x0)[0] as f64 - x0).abs() < 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// DanceGRPO's SDE step against its formula computed by hand in f64: constant `σ_t = η`,
    /// `μ = x (1 + η² Δt / (2t)) + v (1 + η² (1−t) / (2t)) Δt`, `std = η √(−Δt)`, and the
    /// log-prob of a re-scored next latent is the Gaussian log-density (mean over elements).
    #[test]
    fn dance_sde_step_matches_its_formula_and_log_density(
        eta in 0.05f64..1.0, k in 0usize..6, seed in 0u64..1000,
    ) {
        let grid = FlowGrid::new(6, 1.0).unwrap();
        let s = FlowSdeSampler::new(grid.clone(), eta).unwrap().with_constant_sigma();
        prop_assert_eq!(s.name(), "dance-sde");
        let (t, t_next) = grid.interval(k);
        let dt = t_next - t;
        prop_assert!((s.sigma(k) - eta).abs() < 1e-15);
        prop_assert!((s.step_std(k) - eta * (-dt).sqrt()).abs() < 1e-12);
        let (x, v, next) = (noise(seed, 1, 2), noise(seed, 2, 2), noise(seed, 3, 2));
        let out = s
            .step(k, x.clone(), v.clone(), Parameterization::FlowVelocity, Transition::Rescore(next.clone()), LogProbReduction::Mean)
            .unwrap();
        let (hx, hv, hn) = (host4(&x), host4(&v), host4(&next));
        let std = eta * (-dt).sqrt();
        let n = SHAPE.iter().product::<usize>();
        let mean: Vec<f64> = hx
            .iter()
            .zip(&hv)
            .map(|(&x, &v)| {
                f64::from(x) * (1.0 + eta * eta * dt / (2.0 * t))
                    + f64::from(v) * (1.0 + eta * eta * (1.0 - t) / (2.0 * t)) * dt
            })
            .collect();
        for (a, b) in host4(&out.mean).iter().zip(&mean) {
            prop_assert!((f64::from(*a) - b).abs() < 1e-5 * (1.0 + b.abs()), "{} vs {}", a, b);
        }
        let lp = host1(out.log_prob.as_ref().unwrap());
        for (i, got) in lp.iter().enumerate() {
            let want = (i * n..(i + 1) * n)
                .map(|e| {
                    let z = (f64::from(hn[e]) - mean[e]) / std;
                    -0.5 * z * z - std.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
                })
                .sum::<f64>()
                / n as f64;
            prop_assert!((f64::from(*got) - want).abs() < 1e-3 * (1.0 + want.abs()), "{} vs {}", got, want);
        }
    }
}

/// The constant σ puts more noise than Flow-GRPO's on the late steps and less on the early ones
/// (η = a: equal at t = ½).
#[test]
fn dance_sde_noise_is_constant_where_flow_grpo_noise_decays() {
    let grid = FlowGrid::new(10, 1.0).unwrap();
    let dance = FlowSdeSampler::new(grid.clone(), 0.7)
        .unwrap()
        .with_constant_sigma();
    let flow = FlowSdeSampler::new(grid, 0.7).unwrap();
    assert!((dance.sigma(5) - flow.sigma(5)).abs() < 1e-12);
    assert!(dance.sigma(9) > flow.sigma(9));
    assert!(dance.sigma(1) < flow.sigma(1));
    assert!((0..10).all(|k| dance.sigma(k) == 0.7));
}
