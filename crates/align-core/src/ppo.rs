//! The PPO-clip surrogate with per-step importance ratios.
//!
//! For each transition `i` with advantage `Â_i`, rollout log-prob `log p_old` and current
//! log-prob `log p_θ`:
//!
//! ```text
//! ρ_i  = exp(log p_θ − log p_old)
//! L    = mean_i max(−Â_i ρ_i, −Â_i clip(ρ_i, 1 − ε, 1 + ε))      (minimised)
//! clip fraction = mean_i 1[|ρ_i − 1| > ε]
//! approx KL     = ½ mean_i (log p_θ − log p_old)²
//! ```
//!
//! This is the pessimistic (element-wise max of the negated terms) form of the official DDPO
//! and Flow-GRPO code. The ratio is per step, never per trajectory, and `ε` is meaningful only
//! relative to the log-prob reduction: 1e-4 is the published value for mean-reduced log-probs.
//! At `θ = θ_old`, `ρ = 1`, the clip is inactive and `∇L = −mean(Â ∇ log p_θ)`: the REINFORCE
//! gradient.

use burn::tensor::Tensor;

/// The loss and diagnostics of one PPO-clip evaluation.
#[derive(Debug, Clone)]
pub struct PpoClipOutput {
    /// Scalar loss to minimise, shape `[1]`, differentiable through `log_prob`.
    pub loss: Tensor<1>,
    /// Per-transition ratio `ρ`, shape `[N]` (detached).
    pub ratio: Tensor<1>,
    /// Fraction of transitions whose ratio left `[1 − ε, 1 + ε]`, shape `[1]` (detached).
    pub clip_fraction: Tensor<1>,
    /// `½ mean (log p_θ − log p_old)²`, shape `[1]` (detached).
    pub approx_kl: Tensor<1>,
}

/// Evaluates the PPO-clip surrogate.
///
/// # Shapes
/// - `log_prob`, `old_log_prob`, `advantages`: `[N]`.
///
/// # Panics
/// If the three inputs differ in length (a programming error).
pub fn ppo_clip_loss(
    log_prob: Tensor<1>,
    old_log_prob: Tensor<1>,
    advantages: Tensor<1>,
    clip_range: f64,
) -> PpoClipOutput {
    assert_eq!(
        log_prob.dims(),
        old_log_prob.dims(),
        "ppo_clip_loss: log-prob lengths differ"
    );
    assert_eq!(
        log_prob.dims(),
        advantages.dims(),
        "ppo_clip_loss: advantage length differs"
    );
    let diff = log_prob - old_log_prob.detach();
    let ratio = diff.clone().exp();
    let unclipped = -advantages.clone() * ratio.clone();
    let clipped = -advantages * ratio.clone().clamp(1.0 - clip_range, 1.0 + clip_range);
    let loss = unclipped.max_pair(clipped).mean();
    let ratio_d = ratio.detach();
    let clip_fraction = ratio_d
        .clone()
        .sub_scalar(1.0)
        .abs()
        .greater_elem(clip_range)
        .float()
        .mean();
    let approx_kl = diff.detach().square().mean().mul_scalar(0.5);
    PpoClipOutput {
        loss,
        ratio: ratio_d,
        clip_fraction,
        approx_kl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use proptest::prelude::*;

    fn t(v: Vec<f32>, device: &burn::tensor::Device) -> Tensor<1> {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), device)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn at_ratio_one_the_surrogate_is_the_reinforce_term(
            lp in prop::collection::vec(-5.0f32..5.0, 1..16),
            adv_seed in prop::collection::vec(-3.0f32..3.0, 16),
            clip in 1e-5f64..0.3,
        ) {
            let device = crate::test_device().autodiff();
            let n = lp.len();
            let adv = adv_seed[..n].to_vec();
            let log_prob = t(lp.clone(), &device).require_grad();
            let out = ppo_clip_loss(log_prob.clone(), t(lp.clone(), &device), t(adv.clone(), &device), clip);
            let loss: f32 = out.loss.clone().into_scalar();
            let expect = -adv.iter().sum::<f32>() / n as f32;
            prop_assert!((loss - expect).abs() < 1e-5, "{loss} vs {expect}");
            let cf: f32 = out.clip_fraction.into_scalar();
            prop_assert_eq!(cf, 0.0);
            let kl: f32 = out.approx_kl.into_scalar();
            prop_assert_eq!(kl, 0.0);
            // Gradient equals the REINFORCE gradient −Â / N.
            let grads = out.loss.backward();
            let g = log_prob.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            for (g, a) in g.iter().zip(&adv) {
                prop_assert!((g + a / n as f32).abs() < 1e-6, "{g} vs {}", -a / n as f32);
            }
        }

        #[test]
        fn clipped_ratios_get_no_gradient_in_the_pessimistic_direction(
            delta in 0.01f32..1.0,
            adv in 0.1f32..3.0,
        ) {
            // Ratio above 1 + ε with positive advantage: the clipped branch is active, gradient 0.
            let device = crate::test_device().autodiff();
            let lp = t(vec![delta], &device).require_grad();
            let out = ppo_clip_loss(lp.clone(), t(vec![0.0], &device), t(vec![adv], &device), 1e-3);
            let cf: f32 = out.clip_fraction.clone().into_scalar();
            prop_assert_eq!(cf, 1.0);
            let loss: f32 = out.loss.clone().into_scalar();
            prop_assert!((loss + adv * (1.0 + 1e-3)).abs() < 1e-5);
            let g: f32 = lp.grad(&out.loss.backward()).unwrap().into_scalar();
            prop_assert_eq!(g, 0.0);
        }
    }

    #[test]
    fn hand_computed_mixed_batch() {
        let device = crate::test_device();
        // ratios e^{0.2}=1.2214, e^{-0.2}=0.8187, 1; ε = 0.1; advantages 1, 1, −2.
        let out = ppo_clip_loss(
            t(vec![0.2, -0.2, 0.0], &device),
            t(vec![0.0, 0.0, 0.0], &device),
            t(vec![1.0, 1.0, -2.0], &device),
            0.1,
        );
        // max(−1.2214, −1.1) = −1.1; max(−0.8187, −0.9) = −0.8187; max(2, 2) = 2.
        let expect = (-1.1 - (-0.2f64).exp() + 2.0) / 3.0;
        let loss: f32 = out.loss.into_scalar();
        assert!((loss as f64 - expect).abs() < 1e-5, "{loss} vs {expect}");
        let cf: f32 = out.clip_fraction.into_scalar();
        assert!((cf - 2.0 / 3.0).abs() < 1e-6);
        let kl: f32 = out.approx_kl.into_scalar();
        assert!((kl - 0.5 * 0.08 / 3.0).abs() < 1e-6);
    }
}
