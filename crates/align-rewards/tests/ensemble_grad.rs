//! The differentiable path of `Ensemble`: values equal `score`, gradients match central
//! finite differences, and a non-differentiable part makes the ensemble non-differentiable.
#![allow(clippy::unwrap_used)]

use align_core::{NoiseKey, standard_normal};
use align_rewards::{
    Aggregate, Brightness, Contrast, Ensemble, Jpeg, Normalize, Reward, Saturation,
};
use burn::prelude::*;

const SHAPE: [usize; 4] = [4, 3, 4, 4];
const STEP: f32 = 1e-3;

fn host(seed: u64, stream: u64, squash: bool) -> Vec<f32> {
    let n: usize = SHAPE.iter().product();
    standard_normal(NoiseKey::initial(seed, stream), n)
        .into_iter()
        .map(|z| if squash { 0.9 * z.tanh() } else { z })
        .collect()
}

fn tensor(values: Vec<f32>, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, SHAPE), device)
}

fn prompts() -> Vec<String> {
    vec![String::new(); SHAPE[0]]
}

/// Loss weights `c_b`: with z-scoring, `Σ_b z_b = 0`, so an unweighted sum has no gradient.
const LOSS_W: [f64; 4] = [1.0, -0.5, 2.0, 0.25];

fn ensemble(normalize: Normalize, aggregate: Aggregate) -> Ensemble {
    Ensemble::new(normalize, aggregate)
        .unwrap()
        .member(Brightness, 1.0)
        .unwrap()
        .member(Contrast, 2.0)
        .unwrap()
        .penalty(Saturation, 0.5)
        .unwrap()
}

fn loss_host(e: &Ensemble, values: Vec<f32>) -> f64 {
    let s = e
        .score(&tensor(values, &align_core::test_device()), &prompts())
        .unwrap();
    s.iter().zip(LOSS_W).map(|(a, c)| a * c).sum()
}

fn check(normalize: Normalize, aggregate: Aggregate, seed: u64) {
    let x = host(seed, 0, true);
    let v = host(seed, 1, false);
    let device = align_core::test_device().autodiff();
    let xt = tensor(x.clone(), &device).require_grad();
    let e = ensemble(normalize, aggregate);
    let r = e
        .score_differentiable(xt.clone(), &prompts())
        .unwrap()
        .unwrap();
    let c = Tensor::<1>::from_data(
        TensorData::new(LOSS_W.map(|c| c as f32).to_vec(), [4]),
        &device,
    );
    let g = xt
        .grad(&(r * c).sum().backward())
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let terms: Vec<f64> = g
        .iter()
        .zip(&v)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .collect();
    let analytic: f64 = terms.iter().sum();
    let scale: f64 = terms.iter().map(|t| t.abs()).sum();
    let e_fd = ensemble(normalize, aggregate);
    let plus: Vec<f32> = x.iter().zip(&v).map(|(a, d)| a + STEP * d).collect();
    let minus: Vec<f32> = x.iter().zip(&v).map(|(a, d)| a - STEP * d).collect();
    let fd = (loss_host(&e_fd, plus) - loss_host(&e_fd, minus)) / (2.0 * f64::from(STEP));
    let rel = (fd - analytic).abs() / analytic.abs().max(0.1 * scale).max(1e-6);
    assert!(
        rel < 1e-2,
        "{normalize:?} {aggregate:?} seed {seed}: autodiff {analytic} vs fd {fd} (rel {rel})"
    );
}

#[test]
fn ensemble_gradients_match_finite_differences() {
    for normalize in [Normalize::None, Normalize::batch_z()] {
        for aggregate in [
            Aggregate::WeightedMean,
            Aggregate::Min,
            Aggregate::MeanMinusKStd(1.0),
        ] {
            for seed in 0..2 {
                check(normalize, aggregate, seed);
            }
        }
    }
}

#[test]
fn differentiable_values_equal_score() {
    for normalize in [Normalize::None, Normalize::batch_z(), Normalize::running()] {
        for aggregate in [
            Aggregate::WeightedMean,
            Aggregate::Min,
            Aggregate::MeanMinusKStd(0.5),
        ] {
            let x = tensor(host(5, 0, true), &align_core::test_device());
            let host_scores = ensemble(normalize, aggregate)
                .score(&x, &prompts())
                .unwrap();
            let dev = ensemble(normalize, aggregate)
                .score_differentiable(x, &prompts())
                .unwrap()
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            for (a, b) in host_scores.iter().zip(&dev) {
                assert!(
                    (a - f64::from(*b)).abs() < 1e-4 * (1.0 + a.abs()),
                    "{normalize:?} {aggregate:?}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn a_non_differentiable_part_makes_the_ensemble_non_differentiable() {
    let x = tensor(host(5, 0, true), &align_core::test_device());
    let with_jpeg_penalty = ensemble(Normalize::None, Aggregate::WeightedMean)
        .penalty(Jpeg::compressibility(), 1.0)
        .unwrap();
    assert!(
        with_jpeg_penalty
            .score_differentiable(x.clone(), &prompts())
            .is_none()
    );
    let with_jpeg_member = Ensemble::new(Normalize::None, Aggregate::WeightedMean)
        .unwrap()
        .member(Brightness, 1.0)
        .unwrap()
        .member(Jpeg::incompressibility(), 1.0)
        .unwrap();
    assert!(
        with_jpeg_member
            .score_differentiable(x, &prompts())
            .is_none()
    );
}

#[test]
fn a_constant_member_has_zero_gradient_under_batch_z() {
    // Identical images: every member is constant over the batch, z = 0 exactly.
    let device = align_core::test_device().autodiff();
    let x = Tensor::<4>::zeros(SHAPE, &device)
        .add_scalar(0.3)
        .require_grad();
    let e = Ensemble::new(Normalize::batch_z(), Aggregate::MeanMinusKStd(1.0))
        .unwrap()
        .member(Brightness, 1.0)
        .unwrap()
        .member(Contrast, 1.0)
        .unwrap();
    let r = e
        .score_differentiable(x.clone(), &prompts())
        .unwrap()
        .unwrap();
    let values = r.clone().into_data().try_to_vec::<f32>().unwrap();
    assert!(values.iter().all(|v| *v == 0.0), "{values:?}");
    let g = x
        .grad(&r.sum().backward())
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
}
