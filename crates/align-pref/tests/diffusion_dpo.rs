//! Diffusion-DPO: ln 2 at initialisation, antisymmetry in winner/loser, the pairing of noise
//! and timestep (with its negative check), and the gradient against finite differences — for
//! an ε-model on a DDPM schedule and a flow-velocity model.
#![allow(clippy::unwrap_used)]

use align_core::{Condition, test_device};
use align_pref::{DpoBatch, NoiseLevels, diffusion_dpo_loss};
use align_samplers::{BetaSchedule, NoiseSchedule};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

mod common;
use common::{INIT, Tiny, check_gradient, host, levels, noise};

#[test]
fn initialisation_gives_ln2_and_swapping_negates_inside() {
    let device = test_device();
    let cond = Condition::new(Tensor::zeros([3, 1, 1], &device));
    for flow in [false, true] {
        let policy = Tiny::with(INIT, flow, &device);
        let lv = levels(flow);
        let (w, l, eps) = (
            noise(1, 3, &device),
            noise(2, 3, &device),
            noise(3, 3, &device),
        );
        let batch = |a: &Tensor<4>, b: &Tensor<4>| DpoBatch {
            winners: a.clone(),
            losers: b.clone(),
            noise: eps.clone(),
            levels: &lv,
            condition: &cond,
            reference_condition: None,
        };
        let init = diffusion_dpo_loss(&policy, &policy, batch(&w, &l), 5000.0).unwrap();
        assert_eq!(host(init.inside), vec![0.0; 3]);
        let loss: f32 = init.loss.into_scalar();
        assert!((loss - std::f32::consts::LN_2).abs() < 1e-7, "{loss}");
        assert_eq!(init.implicit_accuracy, 0.0);
        let mut moved = INIT;
        moved[1][0] += 0.05;
        let moved = Tiny::with(moved, flow, &device);
        let a = host(
            diffusion_dpo_loss(&moved, &policy, batch(&w, &l), 5000.0)
                .unwrap()
                .inside,
        );
        let b = host(
            diffusion_dpo_loss(&moved, &policy, batch(&l, &w), 5000.0)
                .unwrap()
                .inside,
        );
        assert!(a.iter().any(|v| v.abs() > 1e-3), "{a:?}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(*x, -*y);
        }
    }
}

/// With identical winner and loser, paired noise and timestep make `inside` exactly 0 for any
/// policy; unpaired noise (or timestep) does not — the negative check that catches an
/// implementation drawing the loser's noise separately.
#[test]
fn noise_and_timestep_are_paired() {
    let device = test_device();
    let cond = Condition::new(Tensor::zeros([3, 1, 1], &device));
    let mut moved = INIT;
    moved[0][1] += 0.3;
    for flow in [false, true] {
        let policy = Tiny::with(moved, flow, &device);
        let reference = Tiny::with(INIT, flow, &device);
        let x = noise(5, 3, &device);
        let lv = levels(flow);
        let paired = diffusion_dpo_loss(
            &policy,
            &reference,
            DpoBatch {
                winners: x.clone(),
                losers: x.clone(),
                noise: noise(6, 3, &device),
                levels: &lv,
                condition: &cond,
                reference_condition: None,
            },
            5000.0,
        )
        .unwrap();
        assert_eq!(host(paired.inside), vec![0.0; 3]);
        // Negative check: the same pair with the loser noised by another ε.
        let err = |m: &Tiny, eps: Tensor<4>| {
            align_pref::denoising_errors(m, x.clone(), eps, &lv, &cond).unwrap()
        };
        let unpaired = ((err(&policy, noise(6, 3, &device)) - err(&policy, noise(7, 3, &device)))
            - (err(&reference, noise(6, 3, &device)) - err(&reference, noise(7, 3, &device))))
        .mul_scalar(-2500.0);
        assert!(host(unpaired).iter().any(|v| v.abs() > 1e-3));
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let device = test_device().autodiff();
    let cond = Condition::new(Tensor::zeros([3, 1, 1], &device));
    for flow in [false, true] {
        let reference = Tiny::with(INIT, flow, &device).no_grad();
        let mut start = INIT;
        start[1][1] += 0.02;
        let lv = levels(flow);
        let (w, l, eps) = (
            noise(1, 3, &device),
            noise(2, 3, &device),
            noise(3, 3, &device),
        );
        // A small β keeps the sigmoid away from saturation for the finite differences.
        let beta = 20.0;
        let loss_of = |p: &Tiny| {
            diffusion_dpo_loss(
                p,
                &reference,
                DpoBatch {
                    winners: w.clone(),
                    losers: l.clone(),
                    noise: eps.clone(),
                    levels: &lv,
                    condition: &cond,
                    reference_condition: None,
                },
                beta,
            )
            .unwrap()
            .loss
        };
        check_gradient(flow, start, &loss_of, "Diffusion-DPO");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let device = test_device();
    let cond = Condition::new(Tensor::zeros([3, 1, 1], &device));
    let p = Tiny::with(INIT, true, &device);
    let lv = levels(true);
    let batch = |noise: Tensor<4>| DpoBatch {
        winners: Tensor::zeros([3, 2, 3, 3], &device),
        losers: Tensor::zeros([3, 2, 3, 3], &device),
        noise,
        levels: &lv,
        condition: &cond,
        reference_condition: None,
    };
    assert!(diffusion_dpo_loss(&p, &p, batch(noise(1, 3, &device)), 0.0).is_err());
    assert!(diffusion_dpo_loss(&p, &p, batch(noise(1, 2, &device)), 10.0).is_err());
    assert!(NoiseLevels::flow(&[1.5]).is_err());
    let s = NoiseSchedule::new(BetaSchedule::ddpm_linear(), 1000).unwrap();
    assert!(NoiseLevels::ddpm(&s, &[1000]).is_err());
}

/// `inside` by hand from the four error vectors, and the direction of the update: a gradient
/// step lowers the policy's winner-minus-loser error relative to the reference's.
#[test]
fn inside_is_the_official_expression_and_descent_prefers_the_winner() {
    let device = test_device().autodiff();
    let cond = Condition::new(Tensor::zeros([3, 1, 1], &device));
    let reference = Tiny::with(INIT, true, &device).no_grad();
    let lv = levels(true);
    let (w, l, eps) = (
        noise(1, 3, &device),
        noise(2, 3, &device),
        noise(3, 3, &device),
    );
    let mut start = INIT;
    start[0][0] += 0.1;
    let policy = Tiny::with(start, true, &device);
    let e = |m: &Tiny, x: &Tensor<4>| {
        host(align_pref::denoising_errors(m, x.clone(), eps.clone(), &lv, &cond).unwrap())
    };
    let (pw, pl, rw, rl) = (
        e(&policy, &w),
        e(&policy, &l),
        e(&reference, &w),
        e(&reference, &l),
    );
    let out = diffusion_dpo_loss(
        &policy,
        &reference,
        DpoBatch {
            winners: w.clone(),
            losers: l.clone(),
            noise: eps.clone(),
            levels: &lv,
            condition: &cond,
            reference_condition: None,
        },
        50.0,
    )
    .unwrap();
    let inside = host(out.inside.clone());
    for i in 0..3 {
        let want = -0.5 * 50.0 * ((pw[i] - pl[i]) - (rw[i] - rl[i]));
        assert!(
            (inside[i] - want).abs() < 1e-4 * want.abs().max(1.0),
            "{inside:?}"
        );
    }
    let margin = |m: &Tiny| -> f32 {
        let (a, b) = (e(m, &w), e(m, &l));
        a.iter().zip(&b).map(|(x, y)| x - y).sum()
    };
    let before = margin(&policy);
    let grads = GradientsParams::from_grads(out.loss.backward(), &policy);
    use burn::optim::SgdConfig;
    let stepped = SgdConfig::new().init().step(1e-3, policy, grads);
    assert!(
        margin(&stepped) < before,
        "{} → {}",
        before,
        margin(&stepped)
    );
}
