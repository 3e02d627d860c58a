//! Gradient truth of backpropagation through the sampler: the chained vector-Jacobian
//! products equal plain autodiff through the unrolled sampler and central finite differences;
//! truncation differentiates exactly the last K steps (K = T is full backprop, K = 0 gives a
//! zero gradient) while the sampler always runs all T steps.
#![allow(clippy::unwrap_used)]

use align_backprop::{
    AdjointInputs, ChainInputs, DraftConfig, DraftUpdate, ReflLoss, Truncation, chain_gradients,
    continuous_adjoint, draft_lv_gradients, draft_update, reference_penalty, refl_gradients,
    reward_cotangent,
};
use align_core::{Condition, Denoiser, Parameterization, Trajectory, test_device};
use align_samplers::{
    BetaSchedule, DdimSampler, FlowEulerSampler, FlowGrid, FlowSdeSampler, NoiseSchedule,
    RolloutBatch, RolloutConfig, Sampler, TimestepSpacing, pathwise_step, rollout,
    strided_timesteps,
};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// `prediction = tanh(w ⊙ x) + b + c·t`, per channel: nonlinear in x and θ, time-dependent.
#[derive(Module, Debug)]
struct Tiny {
    w: Param<Tensor<1>>,
    b: Param<Tensor<1>>,
    c: Param<Tensor<1>>,
    flow: bool,
}

impl Tiny {
    fn new(flow: bool, device: &Device) -> Self {
        Self {
            w: Param::from_tensor(Tensor::from_floats([0.8, -0.6], device)),
            b: Param::from_tensor(Tensor::from_floats([0.1, -0.2], device)),
            c: Param::from_tensor(Tensor::from_floats([0.3, 0.05], device)),
            flow,
        }
    }
}

impl Denoiser for Tiny {
    fn parameterization(&self) -> Parameterization {
        if self.flow {
            Parameterization::FlowVelocity
        } else {
            Parameterization::Epsilon
        }
    }
    fn predict(&self, x: Tensor<4>, t: Tensor<1>, _c: &Condition) -> Tensor<4> {
        let b = x.dims()[0];
        // DDPM timesteps are in 0..1000: scale them to O(1).
        let t = if self.flow { t } else { t.div_scalar(1000.0) };
        (x * self.w.val().reshape([1, 2, 1, 1])).tanh()
            + self.b.val().reshape([1, 2, 1, 1])
            + self.c.val().reshape([1, 2, 1, 1]) * t.reshape([b, 1, 1, 1])
    }
}

struct Flatten<'a>(&'a GradientsParams, Vec<f64>);
impl ModuleVisitor for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match self.0.get::<D>(param.id) {
            Some(g) => self.1.extend(
                g.into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(f64::from),
            ),
            None => self
                .1
                .extend(std::iter::repeat_n(0.0, param.val().shape().num_elements())),
        }
    }
}

fn flat(m: &Tiny, g: &GradientsParams) -> Vec<f64> {
    let mut v = Flatten(g, Vec::new());
    m.visit(&mut v);
    v.1
}

fn samplers() -> Vec<(Box<dyn Sampler>, bool)> {
    let schedule = NoiseSchedule::new(BetaSchedule::ddpm_linear(), 1000).unwrap();
    let ts = strided_timesteps(1000, 6, TimestepSpacing::Leading { offset: 1 }).unwrap();
    vec![
        // Deterministic DDIM (η = 0), ε-model.
        (
            Box::new(DdimSampler::new(schedule.clone(), ts.clone(), 0.0).unwrap()),
            false,
        ),
        // Stochastic DDIM (η = 1): the noise is fixed (reparameterised).
        (
            Box::new(DdimSampler::new(schedule, ts, 1.0).unwrap()),
            false,
        ),
        // The Flow-GRPO SDE on a flow model.
        (
            Box::new(FlowSdeSampler::new(FlowGrid::new(5, 1.0).unwrap(), 0.7).unwrap()),
            true,
        ),
    ]
}

fn cond(device: &Device, b: usize) -> Condition {
    Condition::new(Tensor::zeros([b, 1, 1], device))
}

fn roll(policy: &Tiny, sampler: &dyn Sampler, device: &Device) -> Trajectory {
    let c = cond(device, 3);
    rollout(
        &policy.clone().no_grad(),
        sampler,
        &RolloutBatch {
            condition: &c,
            uncond: None,
            sample_ids: vec![4, 5, 6],
            condition_ids: vec![0, 0, 0],
            group_ids: None,
            sample_shape: [2, 2, 2],
        },
        &RolloutConfig {
            seed: 9,
            ..RolloutConfig::default()
        },
    )
    .unwrap()
}

/// A fixed smooth "reward direction": L = Σ w ⊙ x_T with w ≠ const.
fn weights(device: &Device) -> Tensor<4> {
    let v: Vec<f32> = (0..24).map(|i| ((i as f32) * 0.37).sin()).collect();
    Tensor::<1>::from_floats(v.as_slice(), device).reshape([3, 2, 2, 2])
}

/// Plain autodiff through the unrolled sampler, with a stop-gradient at `x_s`.
fn unrolled(policy: &Tiny, sampler: &dyn Sampler, traj: &Trajectory, s: usize) -> Vec<f64> {
    let device = traj.latents[0].device();
    let c = cond(&device, 3);
    let mut x = traj.latents[s].clone().detach();
    for k in s..traj.num_steps() {
        x = pathwise_step(policy, sampler, traj, k, x, &c, None)
            .unwrap()
            .prev_sample;
    }
    let loss = (x * weights(&device)).sum();
    if !loss.is_tracked() {
        return vec![0.0; 6];
    }
    flat(
        policy,
        &GradientsParams::from_grads(loss.backward(), policy),
    )
}

fn chained(policy: &Tiny, sampler: &dyn Sampler, traj: &Trajectory, s: usize) -> (Vec<f64>, usize) {
    let device = traj.latents[0].device();
    let c = cond(&device, 3);
    let out = chain_gradients(ChainInputs {
        policy,
        sampler,
        trajectory: traj,
        encode: &|_: &Tiny| Ok((c.clone(), None)),
        first_step: s,
        cotangent: weights(&device),
    })
    .unwrap();
    (flat(policy, &out.grads), out.steps)
}

fn close(a: &[f64], b: &[f64], rel: f64) -> bool {
    let scale = b.iter().fold(0.0_f64, |m, v| m.max(v.abs())).max(1e-6);
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= rel * scale)
}

#[test]
fn chained_vjps_equal_unrolled_autodiff_for_every_truncation() {
    let device = test_device().autodiff();
    for (sampler, flow) in samplers() {
        let policy = Tiny::new(flow, &device);
        let traj = roll(&policy, sampler.as_ref(), &device);
        let t = sampler.num_steps();
        assert_eq!(traj.num_steps(), t, "the sampler always runs all T steps");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for truncation in [
            Truncation::Full,
            Truncation::LastK(1),
            Truncation::LastK(3),
            Truncation::LastK(t),
            Truncation::LastK(t + 4),
            Truncation::RandomK { min: 0, max: t },
        ] {
            let s = truncation.first_step(t, &mut rng).unwrap();
            let (g, steps) = chained(&policy, sampler.as_ref(), &traj, s);
            let reference = unrolled(&policy, sampler.as_ref(), &traj, s);
            assert_eq!(steps, t - s, "{} {truncation:?}", sampler.name());
            assert!(
                close(&g, &reference, 1e-4),
                "{} {truncation:?}: chained {g:?} vs unrolled {reference:?}",
                sampler.name()
            );
        }
        // K = T is full backprop; K = 0 differentiates nothing.
        let full = chained(&policy, sampler.as_ref(), &traj, 0).0;
        let last_t = chained(&policy, sampler.as_ref(), &traj, t).0;
        assert_eq!(last_t, vec![0.0; 6]);
        assert!(full.iter().any(|v| v.abs() > 1e-3), "{full:?}");
        let k_t = Truncation::LastK(t).first_step(t, &mut rng).unwrap();
        assert_eq!(chained(&policy, sampler.as_ref(), &traj, k_t).0, full);
    }
}

/// Central finite differences of `L(θ) = Σ w ⊙ x_T(θ)` (full chain, fixed noise keys).
#[test]
fn chained_gradient_matches_finite_differences() {
    let device = test_device().autodiff();
    for (sampler, flow) in samplers() {
        let policy = Tiny::new(flow, &device);
        let traj = roll(&policy, sampler.as_ref(), &device);
        let (g, _) = chained(&policy, sampler.as_ref(), &traj, 0);
        let loss_at = |p: &Tiny| -> f64 {
            let tr = roll(p, sampler.as_ref(), &device);
            let v: f32 = (tr.final_sample().clone() * weights(&device))
                .sum()
                .into_scalar();
            f64::from(v)
        };
        let h = 1e-2_f32;
        // Perturb each of the 6 parameters in turn.
        for (i, &gi) in g.iter().enumerate() {
            let bump = |delta: f32| {
                let mut p = Tiny::new(flow, &device);
                let (which, ch) = (i / 2, i % 2);
                let mut vals = [[0.8, -0.6], [0.1, -0.2], [0.3, 0.05]];
                vals[which][ch] += delta;
                p.w = Param::from_tensor(Tensor::from_floats(vals[0], &device));
                p.b = Param::from_tensor(Tensor::from_floats(vals[1], &device));
                p.c = Param::from_tensor(Tensor::from_floats(vals[2], &device));
                p
            };
            let fd = (loss_at(&bump(h)) - loss_at(&bump(-h))) / (2.0 * f64::from(h));
            let tol = 2e-2 * fd.abs().max(0.1);
            assert!(
                (gi - fd).abs() <= tol,
                "{} parameter {i}: chained {gi} vs finite differences {fd}",
                sampler.name()
            );
        }
    }
}

#[test]
fn reward_cotangent_is_the_gradient_of_minus_the_scaled_mean_reward() {
    let device = test_device().autodiff();
    let x = weights(&device);
    // r_b = Σ x_b², so ∂(−s·mean r)/∂x = −2 s x / B.
    let (r, g) = reward_cotangent(&x, 0.5, &|x: Tensor<4>| {
        Ok(x.powf_scalar(2.0)
            .sum_dim(1)
            .sum_dim(2)
            .sum_dim(3)
            .reshape([3]))
    })
    .unwrap();
    assert_eq!(r.len(), 3);
    let got: Vec<f32> = g.into_data().try_to_vec::<f32>().unwrap();
    let want: Vec<f32> = (x.clone() * (-2.0 * 0.5 / 3.0))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-6);
    }
    // A reward that ignores the sample has no gradient: a clear error, not a zero update.
    let flat_reward = |x: Tensor<4>| Ok(Tensor::<1>::zeros([x.dims()[0]], &x.device()));
    assert!(reward_cotangent(&x, 1.0, &flat_reward).is_err());
    let nan = |x: Tensor<4>| Ok(x.sum_dim(1).sum_dim(2).sum_dim(3).reshape([3]) * f32::NAN);
    assert!(reward_cotangent(&x, 1.0, &nan).is_err());
    let failing = |_x: Tensor<4>| -> Result<Tensor<1>, String> { Err("no such prompt".into()) };
    let e = reward_cotangent(&x, 1.0, &failing).unwrap_err().to_string();
    assert!(e.contains("no such prompt"), "{e}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let device = test_device().autodiff();
    let (sampler, _) = samplers().remove(2);
    let policy = Tiny::new(true, &device);
    let traj = roll(&policy, sampler.as_ref(), &device);
    let c = cond(&device, 3);
    let run = |s: usize, cot: Tensor<4>, p: &Tiny| {
        chain_gradients(ChainInputs {
            policy: p,
            sampler: sampler.as_ref(),
            trajectory: &traj,
            encode: &|_: &Tiny| Ok((c.clone(), None)),
            first_step: s,
            cotangent: cot,
        })
        .err()
        .map(|e| e.to_string())
    };
    let e = run(9, weights(&device), &policy).unwrap();
    assert!(e.contains("beyond"), "{e}");
    let e = run(0, Tensor::zeros([3, 2, 2, 1], &device), &policy).unwrap();
    assert!(e.contains("cotangent"), "{e}");
    let e = run(0, weights(&device) * f32::NAN, &policy).unwrap();
    assert!(e.contains("NaN"), "{e}");
    let frozen = policy.clone().no_grad();
    let e = run(0, weights(&device), &frozen).unwrap();
    assert!(e.contains("autodiff"), "{e}");
}

#[test]
fn pathwise_steps_from_stored_latents_reproduce_the_rollout() {
    let device = test_device().autodiff();
    for (sampler, flow) in samplers() {
        let policy = Tiny::new(flow, &device);
        let traj = roll(&policy, sampler.as_ref(), &device);
        let c = cond(&device, 3);
        for k in 0..traj.num_steps() {
            let out = pathwise_step(
                &policy,
                sampler.as_ref(),
                &traj,
                k,
                traj.latents[k].clone(),
                &c,
                None,
            )
            .unwrap();
            let a: Vec<f32> = out.prev_sample.into_data().try_to_vec().unwrap();
            let b: Vec<f32> = traj.latents[k + 1]
                .clone()
                .into_data()
                .try_to_vec()
                .unwrap();
            assert_eq!(a, b, "{} step {k}", sampler.name());
        }
    }
}

/// ReFL's one-step gradient against central finite differences of
/// `L(θ) = scale · mean φ(r(x̂₀(x_k; θ)))` with `x_k` fixed.
#[test]
fn refl_gradient_matches_finite_differences() {
    let device = test_device().autodiff();
    let (sampler, _) = samplers().remove(1);
    let policy = Tiny::new(false, &device);
    let traj = roll(&policy, sampler.as_ref(), &device);
    let c = cond(&device, 3);
    let k = 4;
    // r_b = Σ w ⊙ x̂₀ per sample; φ(r) = −r (a hinge's margin would only add a constant that
    // costs the f32 finite differences their precision).
    let reward = |x: Tensor<4>| -> Result<Tensor<1>, String> {
        Ok((x * weights(&test_device().autodiff()))
            .sum_dim(1)
            .sum_dim(2)
            .sum_dim(3)
            .reshape([3]))
    };
    let map = ReflLoss::Negative;
    let (g, r) = refl_gradients(
        &policy,
        sampler.as_ref(),
        &traj,
        k,
        &|_: &Tiny| Ok((c.clone(), None)),
        &reward,
        map,
        0.5,
    )
    .unwrap();
    assert_eq!(r.len(), 3);
    let g = flat(&policy, &g);
    let loss_at = |p: &Tiny| -> f64 {
        let out = pathwise_step(
            p,
            sampler.as_ref(),
            &traj,
            k,
            traj.latents[k].clone(),
            &c,
            None,
        )
        .unwrap();
        let l: f32 = map
            .apply(reward(out.pred_x0).unwrap())
            .mean()
            .mul_scalar(0.5)
            .into_scalar();
        f64::from(l)
    };
    let h = 1e-2_f32;
    for (i, &gi) in g.iter().enumerate() {
        let bump = |delta: f32| {
            let mut vals = [[0.8, -0.6], [0.1, -0.2], [0.3, 0.05]];
            vals[i / 2][i % 2] += delta;
            let mut p = Tiny::new(false, &device);
            p.w = Param::from_tensor(Tensor::from_floats(vals[0], &device));
            p.b = Param::from_tensor(Tensor::from_floats(vals[1], &device));
            p.c = Param::from_tensor(Tensor::from_floats(vals[2], &device));
            p
        };
        let fd = (loss_at(&bump(h)) - loss_at(&bump(-h))) / (2.0 * f64::from(h));
        assert!(
            (gi - fd).abs() <= 2e-2 * fd.abs().max(0.05),
            "parameter {i}: ReFL {gi} vs finite differences {fd}"
        );
    }
    // Above the margin the hinge is flat: no gradient at all.
    let (g0, _) = refl_gradients(
        &policy,
        sampler.as_ref(),
        &traj,
        k,
        &|_: &Tiny| Ok((c.clone(), None)),
        &reward,
        ReflLoss::Hinge { margin: -1000.0 },
        0.5,
    )
    .unwrap();
    assert!(flat(&policy, &g0).iter().all(|&v| v == 0.0));
}

/// The continuous adjoint (state re-integrated from the final sample) converges to the
/// discrete gradient of the Euler sampler as the grid is refined.
#[test]
fn continuous_adjoint_converges_to_the_discrete_gradient() {
    let device = test_device().autodiff();
    let policy = Tiny::new(true, &device);
    let c = cond(&device, 3);
    let rel_err = |k: usize| -> f64 {
        let grid = FlowGrid::new(k, 1.0).unwrap();
        let sampler = FlowEulerSampler::new(grid.clone());
        let traj = roll(&policy, &sampler, &device);
        let (discrete, _) = chained(&policy, &sampler, &traj, 0);
        let (g, a1) = continuous_adjoint(AdjointInputs {
            policy: &policy,
            times: grid.times(),
            sample: traj.final_sample().clone(),
            cotangent: weights(&device),
            encode: &|_: &Tiny| Ok((c.clone(), None)),
            guidance_scale: 1.0,
        })
        .unwrap();
        assert_eq!(a1.dims(), [3, 2, 2, 2]);
        let adjoint = flat(&policy, &g);
        let scale = discrete.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
        adjoint
            .iter()
            .zip(&discrete)
            .map(|(a, d)| (a - d).abs() / scale)
            .fold(0.0, f64::max)
    };
    let coarse = rel_err(10);
    let fine = rel_err(200);
    assert!(fine < 1e-2, "adjoint vs discrete on 200 steps: {fine}");
    assert!(
        fine < coarse / 5.0,
        "no convergence: {coarse} at 10 steps, {fine} at 200"
    );
}

/// DRaFT-LV's gradient against finite differences of its own objective (the same re-noised
/// copies), and the copies' noise is reproducible.
#[test]
fn draft_lv_gradient_matches_finite_differences() {
    use align_core::{NoiseKey, noise_tensor};
    let device = test_device().autodiff();
    let (sampler, _) = samplers().remove(2);
    let policy = Tiny::new(true, &device);
    let traj = roll(&policy, sampler.as_ref(), &device);
    let c = cond(&device, 3);
    let reward = |x: Tensor<4>| -> Result<Tensor<1>, String> {
        Ok((x * weights(&test_device().autodiff()))
            .sum_dim(1)
            .sum_dim(2)
            .sum_dim(3)
            .reshape([3]))
    };
    let (copies, seed, scale) = (3, 17, 0.5);
    let run = |p: &Tiny| {
        draft_lv_gradients(
            p,
            sampler.as_ref(),
            &traj,
            &|_: &Tiny| Ok((c.clone(), None)),
            &reward,
            copies,
            seed,
            scale,
        )
        .unwrap()
    };
    let (g, means) = run(&policy);
    assert_eq!(means.len(), copies);
    assert_eq!(run(&policy).1, means, "reproducible copies");
    let g = flat(&policy, &g);
    let k = traj.num_steps() - 1;
    let t = traj.times[k];
    let loss_at = |p: &Tiny| -> f64 {
        let mut total = 0.0;
        for copy in 0..copies {
            let keys: Vec<NoiseKey> = traj
                .sample_ids
                .iter()
                .map(|&s| NoiseKey::transition(seed, s, 1_000_000 + copy))
                .collect();
            let eps = noise_tensor(&keys, [2, 2, 2], &device).unwrap();
            let xt = traj.final_sample().clone().mul_scalar(1.0 - t) + eps.mul_scalar(t);
            let out = pathwise_step(p, sampler.as_ref(), &traj, k, xt, &c, None).unwrap();
            let m: f32 = reward(out.prev_sample).unwrap().mean().into_scalar();
            total += -scale * f64::from(m) / copies as f64;
        }
        total
    };
    let h = 1e-2_f32;
    for (i, &gi) in g.iter().enumerate() {
        let bump = |delta: f32| {
            let mut vals = [[0.8, -0.6], [0.1, -0.2], [0.3, 0.05]];
            vals[i / 2][i % 2] += delta;
            let mut p = Tiny::new(true, &device);
            p.w = Param::from_tensor(Tensor::from_floats(vals[0], &device));
            p.b = Param::from_tensor(Tensor::from_floats(vals[1], &device));
            p.c = Param::from_tensor(Tensor::from_floats(vals[2], &device));
            p
        };
        let fd = (loss_at(&bump(h)) - loss_at(&bump(-h))) / (2.0 * f64::from(h));
        assert!(
            (gi - fd).abs() <= 2e-2 * fd.abs().max(0.05),
            "parameter {i}: DRaFT-LV {gi} vs finite differences {fd}"
        );
    }
    assert!(
        draft_lv_gradients(
            &policy,
            sampler.as_ref(),
            &traj,
            &|_: &Tiny| Ok((c.clone(), None)),
            &reward,
            0,
            seed,
            scale
        )
        .is_err()
    );
}

/// The reference penalty: zero (value and gradient) at the reference, its value by hand at a
/// moved policy, and its gradient against finite differences.
#[test]
fn reference_penalty_value_and_gradient() {
    let device = test_device().autodiff();
    let (sampler, _) = samplers().remove(2);
    let reference = Tiny::new(true, &device).no_grad();
    let policy = Tiny::new(true, &device);
    let traj = roll(&policy, sampler.as_ref(), &device);
    let c = cond(&device, 3);
    let enc = |_: &Tiny| Ok((c.clone(), None));
    let steps = [1, 3];
    let (g, v) = reference_penalty(
        &policy,
        &reference,
        sampler.as_ref(),
        &traj,
        &steps,
        &enc,
        0.7,
    )
    .unwrap();
    assert_eq!(v, 0.0);
    assert!(flat(&policy, &g).iter().all(|&x| x == 0.0));
    // Shift b by δ: on the flow SDE, μ moves by δ (1 + σ²(1−t)/(2t)) Δt per element.
    let mut moved = Tiny::new(true, &device);
    moved.b = Param::from_tensor(Tensor::from_floats([0.1 + 0.2, -0.2 + 0.2], &device));
    let (g, v) = reference_penalty(
        &moved,
        &reference,
        sampler.as_ref(),
        &traj,
        &steps,
        &enc,
        0.7,
    )
    .unwrap();
    let times = sampler.latent_times();
    let mut want = 0.0;
    for &k in &steps {
        let (t, dt) = (times[k], times[k + 1] - times[k]);
        let std = sampler.step_std(k);
        let s2 = std * std / dt.abs();
        let shift = 0.2 * (1.0 + s2 * (1.0 - t) / (2.0 * t)) * dt;
        want += 0.7 * shift * shift / steps.len() as f64;
    }
    assert!((v - want).abs() < 1e-6 * want.max(1e-3), "{v} vs {want}");
    let g = flat(&moved, &g);
    let value_at = |p: &Tiny| {
        reference_penalty(p, &reference, sampler.as_ref(), &traj, &steps, &enc, 0.7)
            .unwrap()
            .1
    };
    let h = 1e-2_f32;
    for (i, &gi) in g.iter().enumerate() {
        let bump = |delta: f32| {
            let mut vals = [[0.8, -0.6], [0.3, 0.0], [0.3, 0.05]];
            vals[i / 2][i % 2] += delta;
            let mut p = Tiny::new(true, &device);
            p.w = Param::from_tensor(Tensor::from_floats(vals[0], &device));
            p.b = Param::from_tensor(Tensor::from_floats(vals[1], &device));
            p.c = Param::from_tensor(Tensor::from_floats(vals[2], &device));
            p
        };
        let fd = (value_at(&bump(h)) - value_at(&bump(-h))) / (2.0 * f64::from(h));
        assert!(
            (gi - fd).abs() <= 2e-2 * fd.abs().max(1e-3),
            "parameter {i}: {gi} vs finite differences {fd}"
        );
    }
    assert!(
        reference_penalty(
            &moved,
            &reference,
            sampler.as_ref(),
            &traj,
            &steps,
            &enc,
            -1.0
        )
        .is_err()
    );
}

/// One DRaFT update hands the optimizer exactly the chained reward gradient of the last K
/// steps plus the reference pull's gradient at those steps (both computed independently
/// here); with K = 0 the optimizer is not called and the model is unchanged.
#[test]
fn draft_update_applies_the_chained_gradient_plus_the_reference_pull() {
    let device = test_device().autodiff();
    let (sampler, _) = samplers().remove(2);
    let t = sampler.num_steps();
    let reference = Tiny::new(true, &device).no_grad();
    let mut policy = Tiny::new(true, &device);
    policy.b = Param::from_tensor(Tensor::from_floats([0.3, 0.0], &device));
    let traj = roll(&policy, sampler.as_ref(), &device);
    let c = cond(&device, 3);
    let enc = |_: &Tiny| Ok((c.clone(), None));
    let config = DraftConfig {
        truncation: Truncation::LastK(2),
        reward_scale: 1.0,
        reference_weight: 0.5,
    };
    let mut applied = Vec::new();
    let mut apply = |m: Tiny, g: GradientsParams| {
        applied.push(flat(&m, &g));
        Ok(m)
    };
    let (_, stats) = draft_update(DraftUpdate {
        model: policy.clone(),
        reference: &reference,
        sampler: sampler.as_ref(),
        trajectory: &traj,
        config: &config,
        seed: 1,
        iteration: 0,
        cotangent: weights(&device),
        encode: &enc,
        apply: &mut apply,
    })
    .unwrap();
    assert_eq!(stats.differentiated_steps, 2);
    assert_eq!(applied.len(), 1);
    let (chain, steps) = chained(&policy, sampler.as_ref(), &traj, t - 2);
    assert_eq!(steps, 2);
    let (pen, value) = reference_penalty(
        &policy,
        &reference,
        sampler.as_ref(),
        &traj,
        &[t - 2, t - 1],
        &enc,
        0.5,
    )
    .unwrap();
    assert!(value > 0.0 && (stats.reference_penalty - value).abs() < 1e-12);
    let want: Vec<f64> = chain
        .iter()
        .zip(flat(&policy, &pen))
        .map(|(a, b)| a + b)
        .collect();
    assert!(
        close(&applied[0], &want, 1e-5),
        "{:?} vs {want:?}",
        applied[0]
    );
    let none = DraftConfig {
        truncation: Truncation::LastK(0),
        ..config.clone()
    };
    let mut calls = 0;
    let mut count = |m: Tiny, _g: GradientsParams| {
        calls += 1;
        Ok(m)
    };
    let (_, stats) = draft_update(DraftUpdate {
        model: policy.clone(),
        reference: &reference,
        sampler: sampler.as_ref(),
        trajectory: &traj,
        config: &none,
        seed: 1,
        iteration: 0,
        cotangent: weights(&device),
        encode: &enc,
        apply: &mut count,
    })
    .unwrap();
    assert_eq!((stats.differentiated_steps, calls), (0, 0));
    let bad = DraftConfig {
        reference_weight: -1.0,
        ..config
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("reference_weight")
    );
}

/// DRaFT-K with a reference pull split over flex and ndarray (samples 0..2 and 2..3): the
/// shards' gradients sum to the gradient `draft_update` applies on one device (to 1e-5
/// relative: the backends' arithmetic and the summation order), and the pull's value is the
/// one-device value.
#[test]
fn draft_shards_sum_to_the_one_device_update() {
    use align_backprop::{DraftShard, draft_shard_gradients};
    let flex = align_core::select_device(Some("flex")).unwrap().autodiff();
    let ndarray = align_core::select_device(Some("ndarray"))
        .unwrap()
        .autodiff();
    let (sampler, _) = samplers().remove(2);
    let reference = Tiny::new(true, &flex).no_grad();
    let mut policy = Tiny::new(true, &flex);
    policy.b = Param::from_tensor(Tensor::from_floats([0.3, 0.0], &flex));
    let traj = roll(&policy, sampler.as_ref(), &flex);
    let config = DraftConfig {
        truncation: Truncation::LastK(2),
        reward_scale: 1.0,
        reference_weight: 0.5,
    };
    let c = cond(&flex, 3);
    let enc = |_: &Tiny| Ok((c.clone(), None));
    let mut applied = Vec::new();
    let (_, one) = draft_update(DraftUpdate {
        model: policy.clone(),
        reference: &reference,
        sampler: sampler.as_ref(),
        trajectory: &traj,
        config: &config,
        seed: 1,
        iteration: 0,
        cotangent: weights(&flex),
        encode: &enc,
        apply: &mut |m: Tiny, g: GradientsParams| {
            applied.push(flat(&m, &g));
            Ok(m)
        },
    })
    .unwrap();
    let replicas = [
        (policy.clone().fork(&flex), reference.clone().fork(&flex)),
        (
            policy.clone().fork(&ndarray),
            reference.clone().fork(&ndarray),
        ),
    ];
    let conds = [cond(&flex, 2), cond(&ndarray, 1)];
    let encs: Vec<Box<align_backprop::Encode<'_, Tiny>>> = conds
        .iter()
        .map(|c| {
            let c = c.clone();
            Box::new(move |_: &Tiny| Ok((c.clone(), None))) as Box<_>
        })
        .collect();
    let shards: Vec<DraftShard<'_, Tiny>> = [(0..2, &flex), (2..3, &ndarray)]
        .into_iter()
        .enumerate()
        .map(|(d, (range, device))| {
            let idx: Vec<usize> = range.clone().collect();
            DraftShard {
                policy: &replicas[d].0,
                reference: &replicas[d].1,
                trajectory: traj.select(&idx).unwrap().to_device(device),
                cotangent: weights(&flex)
                    .narrow(0, range.start, range.len())
                    .to_device(device),
                encode: encs[d].as_ref(),
                share: range.len() as f64 / 3.0,
            }
        })
        .collect();
    let (parts, stats) = draft_shard_gradients(&config, sampler.as_ref(), 1, 0, shards).unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!((parts[0].1.clone(), parts[1].1.clone()), (flex, ndarray));
    assert_eq!(stats.differentiated_steps, one.differentiated_steps);
    assert!((stats.reference_penalty - one.reference_penalty).abs() < 1e-6);
    let summed: Vec<f64> = flat(&policy, &parts[0].0)
        .iter()
        .zip(flat(&replicas[1].0, &parts[1].0))
        .map(|(a, b)| a + b)
        .collect();
    assert!(
        close(&summed, &applied[0], 1e-5),
        "{summed:?} vs {:?}",
        applied[0]
    );
}
