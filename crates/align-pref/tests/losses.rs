//! MaPO, Diffusion-KTO and reward-weighted regression: values by hand, gradients against
//! finite differences, the direction of their updates, and the properties their papers rely
//! on (MaPO needs no reference; KTO with only desirable labels raises the likelihood).
#![allow(clippy::unwrap_used)]

use align_core::{Condition, test_device};
use align_pref::{
    DpoBatch, KtoBatch, KtoConfig, MapoConfig, RewardWeighting, denoising_errors, kto_loss,
    mapo_loss, rwr_loss, rwr_weights,
};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

mod common;
use common::{INIT, Tiny, check_gradient, host, levels, noise};

fn score(e: f32, k: f32) -> f32 {
    k * e / ((k * e).exp() - 1.0)
}

/// MaPO builds and runs with the policy alone (no reference model in its signature).
#[test]
fn mapo_value_by_hand_antisymmetry_and_gradient() {
    let device = test_device().autodiff();
    let cond = Condition::new(Tensor::zeros([3, 1, 1], &device));
    for flow in [false, true] {
        let lv = levels(flow);
        let (w, l, eps) = (
            noise(1, 3, &device),
            noise(2, 3, &device),
            noise(3, 3, &device),
        );
        let policy = Tiny::with(INIT, flow, &device);
        let cfg = MapoConfig::default();
        let batch = |a: &Tensor<4>, b: &Tensor<4>| DpoBatch {
            winners: a.clone(),
            losers: b.clone(),
            noise: eps.clone(),
            levels: &lv,
            condition: &cond,
            reference_condition: None,
        };
        let out = mapo_loss(&policy, batch(&w, &l), cfg).unwrap();
        let ew = host(denoising_errors(&policy, w.clone(), eps.clone(), &lv, &cond).unwrap());
        let el = host(denoising_errors(&policy, l.clone(), eps.clone(), &lv, &cond).unwrap());
        let odds: Vec<f32> = ew
            .iter()
            .zip(&el)
            .map(|(a, b)| score(*a, 0.5) - score(*b, 0.5))
            .collect();
        let got = host(out.log_odds.clone());
        for (g, o) in got.iter().zip(&odds) {
            assert!((g - o).abs() < 1e-5, "{got:?} vs {odds:?}");
        }
        let log_sig = |x: f32| {
            if x >= 0.0 {
                -((-x).exp().ln_1p())
            } else {
                x - x.exp().ln_1p()
            }
        };
        let want = ew.iter().sum::<f32>() / 3.0
            - 0.1 * odds.iter().map(|o| log_sig(1000.0 * o)).sum::<f32>() / 3.0;
        let loss: f32 = out.loss.into_scalar();
        assert!(
            (loss - want).abs() < 1e-4 * want.abs().max(1.0),
            "{loss} vs {want}"
        );
        let swapped = host(mapo_loss(&policy, batch(&l, &w), cfg).unwrap().log_odds);
        for (a, b) in got.iter().zip(&swapped) {
            assert_eq!(*a, -*b);
        }
        // A small horizon keeps the sigmoid unsaturated for the finite differences.
        let soft = MapoConfig {
            horizon: 5.0,
            ..cfg
        };
        check_gradient(
            flow,
            INIT,
            &|p: &Tiny| mapo_loss(p, batch(&w, &l), soft).unwrap().loss,
            "MaPO",
        );
    }
    let p = Tiny::with(INIT, true, &device);
    let lv = levels(true);
    let bad = MapoConfig {
        beta: 0.0,
        ..MapoConfig::default()
    };
    assert!(
        mapo_loss(
            &p,
            DpoBatch {
                winners: noise(1, 3, &device),
                losers: noise(2, 3, &device),
                noise: noise(3, 3, &device),
                levels: &lv,
                condition: &cond,
                reference_condition: None,
            },
            bad
        )
        .is_err()
    );
}

/// KTO at initialisation: every term λ/2 and z₀ = 0; with only desirable labels, descent
/// lowers the policy's denoising error on the images (raises their likelihood), and with only
/// undesirable labels it raises it.
#[test]
fn kto_at_init_gradient_and_direction() {
    let device = test_device().autodiff();
    let cond = Condition::new(Tensor::zeros([3, 1, 1], &device));
    for flow in [false, true] {
        let lv = levels(flow);
        let (x, eps) = (noise(1, 3, &device), noise(3, 3, &device));
        let reference = Tiny::with(INIT, flow, &device).no_grad();
        let batch = |labels: &'static [bool]| KtoBatch {
            images: x.clone(),
            desirable: labels,
            noise: eps.clone(),
            levels: &lv,
            condition: &cond,
            reference_condition: None,
        };
        let cfg = KtoConfig {
            beta: 50.0,
            desirable_weight: 1.0,
            undesirable_weight: 2.0,
            ..KtoConfig::default()
        };
        let init = kto_loss(
            &Tiny::with(INIT, flow, &device),
            &reference,
            batch(&[true, false, true]),
            cfg,
        )
        .unwrap();
        assert_eq!(init.z0, 0.0);
        let loss: f32 = init.loss.into_scalar();
        assert!((loss - (0.5 + 1.0 + 0.5) / 3.0).abs() < 1e-6, "{loss}");
        let mut start = INIT;
        start[1][0] += 0.05;
        check_gradient(
            flow,
            start,
            &|p: &Tiny| {
                kto_loss(p, &reference, batch(&[true, false, true]), cfg)
                    .unwrap()
                    .loss
            },
            "KTO",
        );
        let error_sum = |m: &Tiny| -> f32 {
            host(denoising_errors(m, x.clone(), eps.clone(), &lv, &cond).unwrap())
                .iter()
                .sum()
        };
        for lower in [true, false] {
            let policy = Tiny::with(start, flow, &device);
            let out = kto_loss(
                &policy,
                &reference,
                KtoBatch {
                    images: x.clone(),
                    desirable: if lower {
                        &[true, true, true]
                    } else {
                        &[false, false, false]
                    },
                    noise: eps.clone(),
                    levels: &lv,
                    condition: &cond,
                    reference_condition: None,
                },
                KtoConfig {
                    reference_point: align_pref::ReferencePoint::Fixed(0.0),
                    ..cfg
                },
            )
            .unwrap();
            let before = error_sum(&policy);
            let grads = GradientsParams::from_grads(out.loss.backward(), &policy);
            use burn::optim::SgdConfig;
            let after = error_sum(&SgdConfig::new().init().step(1e-2, policy, grads));
            if lower {
                assert!(after < before, "desirable only: error {before} → {after}");
            } else {
                assert!(after > before, "undesirable only: error {before} → {after}");
            }
        }
    }
}

#[test]
fn rwr_weights_and_loss() {
    let w = rwr_weights(
        &[0.0, 1.0, 2.0],
        RewardWeighting::Exponential { temperature: 1.0 },
    )
    .unwrap();
    let z: f64 = [0.0f64, 1.0, 2.0].iter().map(|r| r.exp()).sum();
    for (i, r) in [0.0f64, 1.0, 2.0].iter().enumerate() {
        assert!((w[i] - r.exp() / z).abs() < 1e-12);
    }
    // Huge rewards do not overflow.
    let big = rwr_weights(
        &[1e4, 1e4 + 1.0],
        RewardWeighting::Exponential { temperature: 0.5 },
    )
    .unwrap();
    assert!((big[1] / big[0] - 2f64.exp()).abs() < 1e-9);
    let r = rwr_weights(&[3.0, 1.0, 3.0, 2.0], RewardWeighting::Rank).unwrap();
    // Ranks 3.5, 1, 3.5, 2 of 4 → /4, normalised by their sum 10/4.
    let want = [3.5 / 10.0, 1.0 / 10.0, 3.5 / 10.0, 2.0 / 10.0];
    for (a, b) in r.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{r:?}");
    }
    assert!(rwr_weights(&[], RewardWeighting::Rank).is_err());
    assert!(rwr_weights(&[f64::NAN], RewardWeighting::Rank).is_err());
    assert!(rwr_weights(&[1.0], RewardWeighting::Exponential { temperature: 0.0 }).is_err());
    // Equal rewards: the plain mean denoising loss.
    let device = test_device().autodiff();
    let cond = Condition::new(Tensor::zeros([3, 1, 1], &device));
    let lv = levels(true);
    let (x, eps) = (noise(1, 3, &device), noise(3, 3, &device));
    let p = Tiny::with(INIT, true, &device);
    let (loss, _) = rwr_loss(
        &p,
        x.clone(),
        &[0.7; 3],
        RewardWeighting::Rank,
        eps.clone(),
        &lv,
        &cond,
    )
    .unwrap();
    let mean: f32 = denoising_errors(&p, x.clone(), eps.clone(), &lv, &cond)
        .unwrap()
        .mean()
        .into_scalar();
    let l: f32 = loss.into_scalar();
    assert!((l - mean).abs() < 1e-6);
    check_gradient(
        true,
        INIT,
        &|p: &Tiny| {
            rwr_loss(
                p,
                x.clone(),
                &[0.1, 0.9, 0.4],
                RewardWeighting::Exponential { temperature: 0.3 },
                eps.clone(),
                &lv,
                &cond,
            )
            .unwrap()
            .0
        },
        "RWR",
    );
}
