//! Gradients of the differentiable rewards against central finite differences.
#![allow(clippy::unwrap_used)]

use align_core::{NoiseKey, standard_normal};
use align_rewards::{Brightness, Contrast, Reward, Saturation};
use burn::prelude::*;

const SHAPE: [usize; 4] = [2, 3, 4, 4];
const STEP: f32 = 1e-3;

fn host_image(seed: u64) -> Vec<f32> {
    let n: usize = SHAPE.iter().product();
    standard_normal(NoiseKey::initial(seed, 0), n)
        .into_iter()
        .map(|z| 0.9 * z.tanh())
        .collect()
}

fn direction(seed: u64) -> Vec<f32> {
    let n: usize = SHAPE.iter().product();
    standard_normal(NoiseKey::initial(seed, 1), n)
}

fn tensor(values: Vec<f32>, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, SHAPE), device)
}

/// `Σ_b r_b` evaluated through `score` (f32 on the device, summed in f64).
fn total(reward: &dyn Reward, values: Vec<f32>) -> f64 {
    let prompts = vec![String::new(); SHAPE[0]];
    let device = align_core::test_device();
    reward
        .score(&tensor(values, &device), &prompts)
        .unwrap()
        .iter()
        .sum()
}

/// Compares `⟨∇ Σ_b r_b, v⟩` from autodiff with the central difference along `v`.
fn check(reward: &dyn Reward, seed: u64) {
    let x = host_image(seed);
    let v = direction(seed);
    let prompts = vec![String::new(); SHAPE[0]];

    let device = align_core::test_device().autodiff();
    let xt = tensor(x.clone(), &device).require_grad();
    let scores = reward
        .score_differentiable(xt.clone(), &prompts)
        .unwrap()
        .unwrap();
    assert_eq!(scores.dims(), [SHAPE[0]]);
    let grads = scores.sum().backward();
    let g = xt
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let analytic: f64 = g
        .iter()
        .zip(&v)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();

    let plus: Vec<f32> = x.iter().zip(&v).map(|(a, d)| a + STEP * d).collect();
    let minus: Vec<f32> = x.iter().zip(&v).map(|(a, d)| a - STEP * d).collect();
    let fd = (total(reward, plus) - total(reward, minus)) / (2.0 * f64::from(STEP));
    // f32 rounding of `Σ_b r_b` (≈ 1e-7 absolute) divided by 2h leaves ≈ 1e-4 absolute error
    // in the difference quotient; measure it against the size of the terms of ⟨g, v⟩ too,
    // so a direction where they cancel does not turn rounding into a failure.
    let terms: f64 = g
        .iter()
        .zip(&v)
        .map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs())
        .sum();
    let rel = (fd - analytic).abs() / analytic.abs().max(0.1 * terms).max(1e-6);
    assert!(
        rel < 1e-2,
        "{} seed {seed}: autodiff {analytic} vs finite difference {fd} (rel {rel})",
        reward.name()
    );
}

#[test]
fn brightness_gradient_matches_finite_differences() {
    for seed in 0..3 {
        check(&Brightness, seed);
    }
}

#[test]
fn saturation_gradient_matches_finite_differences() {
    for seed in 0..3 {
        check(&Saturation, seed);
    }
}

#[test]
fn contrast_gradient_matches_finite_differences() {
    for seed in 0..3 {
        check(&Contrast, seed);
    }
}

#[test]
fn differentiable_scores_equal_the_host_scores() {
    let device = align_core::test_device();
    let prompts = vec![String::new(); SHAPE[0]];
    let x = tensor(host_image(11), &device);
    for reward in [&Brightness as &dyn Reward, &Saturation, &Contrast] {
        let host = reward.score(&x, &prompts).unwrap();
        let dev = reward
            .score_differentiable(x.clone(), &prompts)
            .unwrap()
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (a, b) in host.iter().zip(&dev) {
            assert_eq!(*a, f64::from(*b));
        }
    }
}

#[test]
fn proxies_on_known_images() {
    let device = align_core::test_device();
    let prompts = vec![String::new()];
    // Pure red: p = (1, 0, 0) everywhere.
    let red = Tensor::cat(
        vec![
            Tensor::<4>::ones([1, 1, 2, 2], &device),
            Tensor::<4>::ones([1, 2, 2, 2], &device).neg(),
        ],
        1,
    );
    let b = Brightness.score(&red, &prompts).unwrap()[0];
    let s = Saturation.score(&red, &prompts).unwrap()[0];
    let c = Contrast.score(&red, &prompts).unwrap()[0];
    assert!((b - 1.0 / 3.0).abs() < 1e-6, "{b}");
    assert!((s - 1.0).abs() < 1e-6, "{s}");
    assert!(c.abs() < 1e-5, "flat image has no contrast: {c}");
    // A flat image still has a finite contrast gradient.
    let ad = align_core::test_device().autodiff();
    let x = Tensor::<4>::zeros([1, 3, 2, 2], &ad).require_grad();
    let y = Contrast
        .score_differentiable(x.clone(), &prompts)
        .unwrap()
        .unwrap();
    let g = x
        .grad(&y.sum().backward())
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(g.iter().all(|v| v.is_finite()));
}
