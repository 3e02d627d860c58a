//! DDPO's JPEG (in)compressibility rewards.
#![allow(clippy::unwrap_used)]

use align_core::{NoiseKey, standard_normal};
use align_rewards::{Jpeg, Reward};
use burn::prelude::*;

const SIDE: usize = 64;

/// A flat mid-grey-ish image plus `level` times host noise, clamped to [-1, 1].
fn noisy(level: f32) -> Tensor<4> {
    let n = 3 * SIDE * SIDE;
    let noise = standard_normal(NoiseKey::initial(7, 0), n);
    let values: Vec<f32> = (0..n)
        .map(|i| (0.2 + level * noise[i]).clamp(-1.0, 1.0))
        .collect();
    Tensor::from_data(
        TensorData::new(values, [1, 3, SIDE, SIDE]),
        &align_core::test_device(),
    )
}

fn prompts(n: usize) -> Vec<String> {
    vec![String::new(); n]
}

#[test]
fn size_grows_strictly_with_noise() {
    let reward = Jpeg::incompressibility();
    let sizes: Vec<f64> = [0.0, 0.05, 0.2, 0.5]
        .iter()
        .map(|&l| reward.score(&noisy(l), &prompts(1)).unwrap()[0])
        .collect();
    for pair in sizes.windows(2) {
        assert!(
            pair[0] < pair[1],
            "sizes not strictly increasing: {sizes:?}"
        );
    }
    assert!(sizes[0] > 0.0);
}

#[test]
fn identical_images_score_identically() {
    let x = Tensor::cat(vec![noisy(0.3), noisy(0.3)], 0);
    let s = Jpeg::incompressibility().score(&x, &prompts(2)).unwrap();
    assert_eq!(s[0], s[1]);
    let again = Jpeg::incompressibility().score(&x, &prompts(2)).unwrap();
    assert_eq!(s, again);
}

#[test]
fn compressibility_is_negated_incompressibility() {
    let x = Tensor::cat(vec![noisy(0.0), noisy(0.1), noisy(0.4)], 0);
    let inc = Jpeg::incompressibility().score(&x, &prompts(3)).unwrap();
    let com = Jpeg::compressibility().score(&x, &prompts(3)).unwrap();
    for (a, b) in inc.iter().zip(&com) {
        assert_eq!(*a, -*b);
    }
    // Sizes are whole bytes in kB.
    for a in &inc {
        assert_eq!((a * 1000.0).round(), a * 1000.0);
    }
}

#[test]
fn nan_pixels_are_an_error() {
    let x = noisy(0.0).mul_scalar(f32::NAN);
    assert!(matches!(
        Jpeg::compressibility().score(&x, &prompts(1)),
        Err(align_rewards::RewardError::NonFinite { .. })
    ));
}
