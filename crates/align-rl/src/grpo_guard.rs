//! GRPO-Guard's ratio normalisation (Wang et al., "GRPO-Guard: Mitigating Implicit
//! Over-Optimization in Flow Matching via Regulated Clipping", arXiv 2510.22319; the authors'
//! code merged into the Flow-GRPO repository as `train_sd3_GRPO_Guard.py`).
//!
//! **The bias.** A stored SDE transition is `x' = μ_old + s ε` with `s = σ_t √|Δt|` the step's
//! standard deviation. With `Δμ = μ_θ − μ_old`, the per-step log-ratio of the Gaussian kernels is
//!
//! ```text
//! log ρ = log p_θ(x') − log p_old(x') = R(ε ⊙ Δμ) / s − b,     b = R(Δμ²) / (2 s²)
//! ```
//!
//! (`R` the log-prob reduction over `C·H·W`: mean by default). Its expectation over the rollout
//! noise is `E[log ρ] = −b < 0` as soon as the policy moves, and `b` grows like `1/s²`: on the
//! low-noise steps (Flow-GRPO's `σ_t² |Δt| ∝ t/(1 − t) · |Δt|` → 0 as `t → 0`) the ratio
//! drifts below 1, so positive-advantage samples rarely reach `1 + ε` and the clip works on
//! one side only — the implicit over-optimisation the paper names.
//!
//! **RatioNorm.** Shift the log-ratio by `b` and rescale it by `s`:
//!
//! ```text
//! log ρ̂ = (log p_θ − log p_old + b) · s = R(ε ⊙ Δμ)
//! ```
//!
//! so `E[log ρ̂] = 0` on every step and its scale no longer depends on the step's noise. `b`
//! is **not** detached (the public code keeps its gradient). The PPO-clip surrogate is applied
//! to `ρ̂` with a clip range on the new scale (the public recipes: 2e-6 for GenEval/OCR,
//! 4e-6 for PickScore), and each step's policy loss is divided by its `|Δt|` (the public code's
//! gradient reweighting; a constant on an even grid).
//!
//! At `θ = θ_old`, `Δμ = 0` and `log p_θ = log p_old` bit for bit (the re-scored step is the
//! rollout's), so `b = 0` and `ρ̂ = 1` exactly.

use align_core::{LogProbReduction, gaussian_kl};
use burn::tensor::Tensor;

/// `b = R((μ_θ − μ_old)²) / (2 s²)`: minus the expected log-ratio of a step (the bias) — the
/// per-step KL between the two kernels, which share their standard deviation.
///
/// # Shapes
/// - `mean`, `old_mean`: `[B, C, H, W]`; output `[B]`.
pub fn ratio_bias(
    mean: Tensor<4>,
    old_mean: Tensor<4>,
    std: f64,
    reduction: LogProbReduction,
) -> Tensor<1> {
    // The closed-form KL of two Gaussians with the same std is exactly R(Δμ²)/(2 s²).
    gaussian_kl(mean, std, old_mean, std, reduction)
}

/// GRPO-Guard's normalised log-ratio `log ρ̂ = (log p_θ − log p_old + b) · s` (module docs).
///
/// # Shapes
/// - `log_prob`, `old_log_prob`: `[B]`; `mean`, `old_mean`: `[B, C, H, W]`; output `[B]`.
pub fn normalized_log_ratio(
    log_prob: Tensor<1>,
    old_log_prob: Tensor<1>,
    mean: Tensor<4>,
    old_mean: Tensor<4>,
    std: f64,
    reduction: LogProbReduction,
) -> Tensor<1> {
    let b = ratio_bias(mean, old_mean, std, reduction);
    (log_prob - old_log_prob + b).mul_scalar(std)
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_core::{NoiseKey, gaussian_log_prob, noise_tensor};
    use burn::tensor::TensorData;

    fn device() -> burn::tensor::Device {
        align_core::test_device()
    }

    fn host(t: Tensor<1>) -> Vec<f64> {
        t.into_data()
            .try_to_vec::<f32>()
            .expect("f32")
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// `(log ρ, log ρ̂)` per sample for a transition `x' = μ_old + s ε` and a policy whose mean is
    /// `μ_old + δ` (every element), computed through the Gaussian log-densities.
    fn log_ratios(eps: Tensor<4>, delta: f64, s: f64) -> (Vec<f64>, Vec<f64>) {
        let d = device();
        let shape = eps.dims();
        let old_mean = Tensor::<4>::from_data(
            TensorData::new(
                (0..shape.iter().product::<usize>())
                    .map(|i| (i % 7) as f32 * 0.1 - 0.3)
                    .collect::<Vec<f32>>(),
                shape,
            ),
            &d,
        );
        let x = old_mean.clone() + eps.mul_scalar(s);
        let mean = old_mean.clone().add_scalar(delta);
        let r = LogProbReduction::Mean;
        let lp = gaussian_log_prob(x.clone(), mean.clone(), s, r);
        let old = gaussian_log_prob(x, old_mean.clone(), s, r);
        let raw = host(lp.clone() - old.clone());
        let norm = host(normalized_log_ratio(lp, old, mean, old_mean, s, r));
        (raw, norm)
    }

    /// The known answer: with the rollout noise at 0 the sample is the old mean, so
    /// `log ρ = −δ² / (2 s²)` exactly — below 0, the more so the smaller the step's noise —
    /// and RatioNorm removes it: `log ρ̂ = 0`. With `ε = 1` everywhere, `log ρ̂ = δ` (= R(ε δ)).
    #[test]
    fn ratio_norm_removes_the_known_bias_of_a_noiseless_sample() {
        let d = device();
        let delta = 0.01;
        for s in [0.3, 0.05, 0.01] {
            let (raw, norm) = log_ratios(Tensor::zeros([2, 1, 2, 2], &d), delta, s);
            let want = -delta * delta / (2.0 * s * s);
            for (r, n) in raw.iter().zip(&norm) {
                assert!(
                    (r - want).abs() < 1e-4 * want.abs().max(1e-3),
                    "s {s}: {r} vs {want}"
                );
                assert!(n.abs() < 1e-6, "s {s}: {n}");
            }
            let (_, norm) = log_ratios(Tensor::ones([2, 1, 2, 2], &d), delta, s);
            for n in norm {
                assert!((n - delta).abs() < 1e-6, "s {s}: {n}");
            }
        }
    }

    /// Over many noise draws: the raw mean log-ratio is `−b` (the bias, growing as the step's
    /// noise shrinks) and the normalised one is 0, up to the Monte-Carlo error.
    #[test]
    fn the_expected_normalised_log_ratio_is_zero_on_every_step() {
        let d = device();
        let (n, delta) = (4096, 0.02);
        let keys: Vec<NoiseKey> = (0..n as u64).map(|i| NoiseKey::initial(11, i)).collect();
        let eps = noise_tensor(&keys, [1, 2, 2], &d).expect("noise");
        let mut previous_bias = 0.0;
        for s in [0.2, 0.1, 0.05] {
            let (raw, norm) = log_ratios(eps.clone(), delta, s);
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let sd = |v: &[f64]| {
                let m = mean(v);
                (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
            };
            let b = delta * delta / (2.0 * s * s);
            // Standard errors: raw log ρ = mean(ε) δ / s − b has sd δ / (2 s) (4 elements).
            let (raw_mean, norm_mean) = (mean(&raw), mean(&norm));
            assert!(
                (raw_mean + b).abs() < 4.0 * sd(&raw) / (n as f64).sqrt(),
                "s {s}: {raw_mean} vs −{b}"
            );
            assert!(
                norm_mean.abs() < 4.0 * sd(&norm) / (n as f64).sqrt() + 1e-7,
                "s {s}: {norm_mean}"
            );
            assert!(b > previous_bias, "the bias grows as the noise shrinks");
            previous_bias = b;
            // The clip's one-sidedness: the raw ratio's centre sits below 1 by b (in log).
            assert!(raw_mean < -0.9 * b);
        }
    }

    /// At θ_old (`μ_θ = μ_old`, `log p_θ = log p_old`), the normalised ratio is exactly 1.
    #[test]
    fn the_normalised_ratio_is_exactly_one_at_the_old_policy() {
        let d = device();
        let keys: Vec<NoiseKey> = (0..3u64).map(|i| NoiseKey::initial(5, i)).collect();
        let eps = noise_tensor(&keys, [2, 3, 3], &d).expect("noise");
        let mean = eps.clone().mul_scalar(0.7).add_scalar(0.1);
        let x = mean.clone() + eps.mul_scalar(0.04);
        for r in [LogProbReduction::Mean, LogProbReduction::Sum] {
            let lp = gaussian_log_prob(x.clone(), mean.clone(), 0.04, r);
            let ratio =
                normalized_log_ratio(lp.clone(), lp, mean.clone(), mean.clone(), 0.04, r).exp();
            assert_eq!(host(ratio), vec![1.0; 3]);
        }
    }
}
