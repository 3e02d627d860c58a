//! DSPO: the loss at initialisation, its value against a host computation in f64 (a property
//! test over β and the policy's parameters), its gradient against finite differences, and its
//! errors.
#![allow(clippy::unwrap_used)]

use align_core::{Condition, test_device};
use align_pref::{
    DSPO_BETA, DpoBatch, NoiseLevels, PrefError, denoising_errors, denoising_residuals, dspo_loss,
};
use burn::tensor::{Device, Tensor};
use proptest::prelude::*;

mod common;
use common::{INIT, Tiny, check_gradient, host, levels, noise};

fn host4(t: Tensor<4>) -> Vec<f64> {
    t.into_data()
        .try_to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

struct Inputs {
    w: Tensor<4>,
    l: Tensor<4>,
    eps: Tensor<4>,
    lv: NoiseLevels,
    cond: Condition,
}

fn inputs(flow: bool, device: &Device) -> Inputs {
    Inputs {
        w: noise(1, 3, device),
        l: noise(2, 3, device),
        eps: noise(3, 3, device),
        lv: levels(flow),
        cond: Condition::new(Tensor::zeros([3, 1, 1], device)),
    }
}

fn batch(i: &Inputs) -> DpoBatch<'_> {
    DpoBatch {
        winners: i.w.clone(),
        losers: i.l.clone(),
        noise: i.eps.clone(),
        levels: &i.lv,
        condition: &i.cond,
        reference_condition: None,
    }
}

/// The loss computed on the host in f64 from the models' residuals.
fn by_hand(policy: &Tiny, reference: &Tiny, i: &Inputs, beta: f64) -> f64 {
    let r = |m: &Tiny, x: &Tensor<4>| {
        host4(denoising_residuals(m, x.clone(), i.eps.clone(), &i.lv, &i.cond).unwrap())
    };
    let (pw, pl, rw, rl) = (
        r(policy, &i.w),
        r(policy, &i.l),
        r(reference, &i.w),
        r(reference, &i.l),
    );
    let per = pw.len() / 3;
    let mean_sq = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
    let mut total = 0.0;
    for b in 0..3 {
        let s = b * per..(b + 1) * per;
        let inside = -0.5
            * beta
            * ((mean_sq(&pw[s.clone()]) - mean_sq(&pl[s.clone()]))
                - (mean_sq(&rw[s.clone()]) - mean_sq(&rl[s.clone()])));
        let g = beta * (1.0 - 1.0 / (1.0 + (-inside).exp()));
        for k in s {
            let moved = pw[k] - g * (pw[k] - rw[k]);
            total += moved * moved;
        }
    }
    total / pw.len() as f64
}

#[test]
fn at_initialisation_dspo_is_the_winners_denoising_loss() {
    let device = test_device();
    for flow in [false, true] {
        let i = inputs(flow, &device);
        let model = Tiny::with(INIT, flow, &device);
        let plain: f32 = denoising_errors(&model, i.w.clone(), i.eps.clone(), &i.lv, &i.cond)
            .unwrap()
            .mean()
            .into_scalar();
        for beta in [DSPO_BETA, 1.0, 50.0] {
            let out = dspo_loss(&model, &model, batch(&i), beta).unwrap();
            let loss: f32 = out.loss.into_scalar();
            assert!(
                (loss - plain).abs() <= 1e-6 * plain,
                "β {beta}: {loss} vs {plain}"
            );
            assert_eq!(host(out.inside), vec![0.0; 3]);
            for g in host(out.shift) {
                assert!((f64::from(g) - beta / 2.0).abs() < 1e-6 * beta, "{g}");
            }
            assert_eq!(out.implicit_accuracy, 0.0);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn dspo_matches_a_host_computation(
        beta in prop_oneof![Just(DSPO_BETA), 0.01f64..100.0],
        d in proptest::array::uniform6(-0.5f32..0.5),
        flow in any::<bool>(),
    ) {
        let device = test_device();
        let i = inputs(flow, &device);
        let mut v = INIT;
        for (k, dk) in d.iter().enumerate() {
            v[k / 2][k % 2] += dk;
        }
        let policy = Tiny::with(v, flow, &device);
        let reference = Tiny::with(INIT, flow, &device);
        let out = dspo_loss(&policy, &reference, batch(&i), beta).unwrap();
        let loss = f64::from(out.loss.into_scalar::<f32>());
        let want = by_hand(&policy, &reference, &i, beta);
        // The loss is computed in f32 from differences of log-likelihood terms scaled by β, so
        // its rounding error grows with β as well as with the loss (β = 92.5 gave 6.3e-4 on
        // 53.7, 1.2e-5 relative); a formula error is of order one.
        let tol = 1e-5 * want.abs().max(1e-3) + 1e-5 * beta;
        prop_assert!((loss - want).abs() <= tol, "{} vs {}", loss, want);
        // Swapping winner and loser negates `inside` (the loser's role is only there).
        let mut swapped = batch(&i);
        std::mem::swap(&mut swapped.winners, &mut swapped.losers);
        let back = host(dspo_loss(&policy, &reference, swapped, beta).unwrap().inside);
        for (a, b) in host(out.inside).iter().zip(&back) {
            prop_assert!((a + b).abs() <= 1e-5 * a.abs().max(1e-6), "{} vs {}", a, b);
        }
    }
}

/// Central finite differences over the policy's 6 parameters, with a β large enough that the
/// shift `g` and `inside` both carry gradient.
#[test]
fn dspo_gradient_matches_finite_differences() {
    let device = test_device().autodiff();
    let start = [[0.9, -0.4], [0.2, -0.3], [0.25, 0.1]];
    for flow in [false, true] {
        let i = inputs(flow, &device);
        let reference = Tiny::with(INIT, flow, &device);
        for beta in [0.5, 20.0] {
            check_gradient(
                flow,
                start,
                &|p: &Tiny| dspo_loss(p, &reference, batch(&i), beta).unwrap().loss,
                &format!("DSPO, β {beta}"),
            );
        }
    }
}

#[test]
fn dspo_refuses_bad_beta_and_shapes() {
    let device = test_device();
    let i = inputs(false, &device);
    let model = Tiny::with(INIT, false, &device);
    for beta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        match dspo_loss(&model, &model, batch(&i), beta) {
            Err(PrefError::Config { field, .. }) => assert_eq!(field, "beta"),
            Err(e) => panic!("β {beta}: {e}"),
            Ok(_) => panic!("β {beta} accepted"),
        }
    }
    let mut bad = batch(&i);
    bad.noise = noise(3, 2, &device);
    assert!(dspo_loss(&model, &model, bad, DSPO_BETA).is_err());
}
