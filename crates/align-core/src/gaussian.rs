//! Diagonal-Gaussian log-densities and closed-form KL divergences.
//!
//! Each sampler step of a stochastic diffusion or flow sampler is a Gaussian policy
//! `p_θ(x_{k+1} | x_k) = N(μ_θ, diag(σ²))`. For a sample `x ∈ R^d`:
//!
//! ```text
//! log N(x; μ, σ²) = Σ_i [ −(x_i − μ_i)² / (2σ_i²) − ln σ_i − ½ ln 2π ]
//! KL(N(μ_p, σ_p²) ‖ N(μ_q, σ_q²)) = Σ_i [ ln(σ_q,i/σ_p,i) + (σ_p,i² + (μ_p,i − μ_q,i)²)/(2σ_q,i²) − ½ ]
//! ```
//!
//! The sum over the `d` non-batch elements is replaced by a mean when the reduction is
//! [`LogProbReduction::Mean`] — the convention of the official DDPO, Flow-GRPO and SDPO code,
//! for which the published PPO clip range (1e-4) and KL weights were tuned. All math is `f32`
//! on the device; the batch is the first dimension and the result has shape `[B]`.

use burn::tensor::Tensor;

/// How per-element log-densities (and KLs) are reduced over the non-batch dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum LogProbReduction {
    /// Mean over the `C·H·W` elements (official DDPO / Flow-GRPO / SDPO; the default).
    #[default]
    Mean,
    /// Sum over the elements: the true log-density of the whole sample.
    Sum,
}

impl LogProbReduction {
    /// Reduces `[B, ...]` per-element values to `[B]`.
    pub fn reduce<const D: usize>(self, per_element: Tensor<D>) -> Tensor<1> {
        let batch = per_element.dims()[0];
        let flat: Tensor<2> = per_element.reshape([batch as i32, -1]);
        let reduced = match self {
            LogProbReduction::Mean => flat.mean_dim(1),
            LogProbReduction::Sum => flat.sum_dim(1),
        };
        reduced.reshape([batch])
    }

    /// The factor that turns a [`LogProbReduction::Mean`] value into this reduction's value for
    /// a sample of `elements` elements (1 for `Mean`, `elements` for `Sum`).
    pub fn scale(self, elements: usize) -> f64 {
        match self {
            LogProbReduction::Mean => 1.0,
            LogProbReduction::Sum => elements as f64,
        }
    }
}

const HALF_LN_TAU: f64 = 0.918_938_533_204_672_7; // ½ ln(2π)

/// Log-density of `x` under `N(mean, std²)` with one standard deviation for every element.
///
/// Gradients flow through `mean` (and through `x` if it is tracked; samplers detach it).
///
/// # Shapes
/// - `x`, `mean`: `[B, ...]`; output `[B]`.
///
/// # Panics
/// If the shapes of `x` and `mean` differ (a programming error, not user input).
pub fn gaussian_log_prob<const D: usize>(
    x: Tensor<D>,
    mean: Tensor<D>,
    std: f64,
    reduction: LogProbReduction,
) -> Tensor<1> {
    assert_eq!(
        x.dims(),
        mean.dims(),
        "gaussian_log_prob: x and mean differ"
    );
    let inv_two_var = 1.0 / (2.0 * std * std);
    let constant = -(std.ln() + HALF_LN_TAU);
    let per_element = (x - mean)
        .square()
        .mul_scalar(-inv_two_var)
        .add_scalar(constant);
    reduction.reduce(per_element)
}

/// Log-density of `x` under `N(mean, diag(std²))` with a per-element standard deviation.
///
/// # Shapes
/// - `x`, `mean`, `std`: `[B, ...]`; output `[B]`.
pub fn gaussian_log_prob_diag<const D: usize>(
    x: Tensor<D>,
    mean: Tensor<D>,
    std: Tensor<D>,
    reduction: LogProbReduction,
) -> Tensor<1> {
    let z = (x - mean) / std.clone();
    let per_element = z.square().mul_scalar(-0.5) - std.log() - HALF_LN_TAU;
    reduction.reduce(per_element)
}

/// Closed-form `KL(N(mean_p, std_p²) ‖ N(mean_q, std_q²))` with scalar standard deviations.
///
/// With `std_p == std_q = σ` this is `‖μ_p − μ_q‖² / (2σ²)` (per element, then reduced), the
/// DPOK / Flow-GRPO per-step KL.
///
/// # Shapes
/// - `mean_p`, `mean_q`: `[B, ...]`; output `[B]`.
pub fn gaussian_kl<const D: usize>(
    mean_p: Tensor<D>,
    std_p: f64,
    mean_q: Tensor<D>,
    std_q: f64,
    reduction: LogProbReduction,
) -> Tensor<1> {
    let var_q = std_q * std_q;
    let constant = (std_q / std_p).ln() + (std_p * std_p) / (2.0 * var_q) - 0.5;
    let per_element = (mean_p - mean_q)
        .square()
        .mul_scalar(1.0 / (2.0 * var_q))
        .add_scalar(constant);
    reduction.reduce(per_element)
}

/// Closed-form KL between two diagonal Gaussians with per-element standard deviations.
///
/// # Shapes
/// - all inputs `[B, ...]`; output `[B]`.
pub fn gaussian_kl_diag<const D: usize>(
    mean_p: Tensor<D>,
    std_p: Tensor<D>,
    mean_q: Tensor<D>,
    std_q: Tensor<D>,
    reduction: LogProbReduction,
) -> Tensor<1> {
    let var_p = std_p.clone().square();
    let var_q = std_q.clone().square();
    let per_element = (std_q.log() - std_p.log())
        + (var_p + (mean_p - mean_q).square()) / var_q.mul_scalar(2.0)
        - 0.5;
    reduction.reduce(per_element)
}

/// The "K3" sample estimator of `KL(p ‖ q)` from log-densities of a sample drawn from `p`:
/// `exp(δ) − δ − 1` with `δ = log q(x) − log p(x)`. Unbiased and never negative.
///
/// # Shapes
/// - `log_p`, `log_q`: `[B]`; output `[B]`.
pub fn k3_kl(log_p: Tensor<1>, log_q: Tensor<1>) -> Tensor<1> {
    let delta = log_q - log_p;
    delta.clone().exp() - delta - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{NoiseKey, standard_normal};
    use burn::tensor::{Device, TensorData};
    use proptest::prelude::*;

    fn tensor(values: Vec<f32>, b: usize, device: &Device) -> Tensor<2> {
        let d = values.len() / b;
        Tensor::from_data(TensorData::new(values, [b, d]), device)
    }

    fn host(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Reference log-density in f64 on the host.
    fn reference_log_prob(x: &[f32], mean: &[f32], std: &[f64]) -> f64 {
        x.iter()
            .zip(mean)
            .zip(std)
            .map(|((&x, &m), &s)| {
                let z = (x as f64 - m as f64) / s;
                -0.5 * z * z - s.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
            })
            .sum()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn log_prob_matches_the_closed_form(
            seed in 0u64..1000,
            d in 1usize..40,
            std in 0.01f64..5.0,
            shift in -3.0f32..3.0,
        ) {
            let device = crate::test_device();
            let b = 3;
            let x = standard_normal(NoiseKey::initial(seed, 0), b * d);
            let mean: Vec<f32> = standard_normal(NoiseKey::initial(seed, 1), b * d)
                .into_iter().map(|v| v + shift).collect();
            let sum = host(gaussian_log_prob(tensor(x.clone(), b, &device), tensor(mean.clone(), b, &device), std, LogProbReduction::Sum));
            let mean_red = host(gaussian_log_prob(tensor(x.clone(), b, &device), tensor(mean.clone(), b, &device), std, LogProbReduction::Mean));
            let stds = vec![std; d];
            for i in 0..b {
                let r = reference_log_prob(&x[i * d..(i + 1) * d], &mean[i * d..(i + 1) * d], &stds);
                let tol = 1e-4 * r.abs().max(1.0);
                prop_assert!((sum[i] as f64 - r).abs() < tol, "sum {} vs {}", sum[i], r);
                prop_assert!((mean_red[i] as f64 - r / d as f64).abs() < tol / d as f64 + 1e-5);
            }
        }

        #[test]
        fn diag_log_prob_matches_the_closed_form(seed in 0u64..1000, d in 1usize..20) {
            let device = crate::test_device();
            let x = standard_normal(NoiseKey::initial(seed, 0), d);
            let mean = standard_normal(NoiseKey::initial(seed, 1), d);
            let std: Vec<f32> = standard_normal(NoiseKey::initial(seed, 2), d)
                .into_iter().map(|v| 0.1 + v.abs()).collect();
            let got = host(gaussian_log_prob_diag(
                tensor(x.clone(), 1, &device), tensor(mean.clone(), 1, &device),
                tensor(std.clone(), 1, &device), LogProbReduction::Sum))[0] as f64;
            let stds: Vec<f64> = std.iter().map(|&s| s as f64).collect();
            let r = reference_log_prob(&x, &mean, &stds);
            prop_assert!((got - r).abs() < 1e-4 * r.abs().max(1.0), "{got} vs {r}");
        }

        #[test]
        fn kl_is_zero_for_identical_and_positive_otherwise(
            seed in 0u64..1000,
            d in 1usize..30,
            std in 0.05f64..3.0,
            ratio in 0.3f64..3.0,
            shift in 0.05f32..2.0,
        ) {
            let device = crate::test_device();
            let m = standard_normal(NoiseKey::initial(seed, 0), 2 * d);
            let same = host(gaussian_kl(tensor(m.clone(), 2, &device), std, tensor(m.clone(), 2, &device), std, LogProbReduction::Sum));
            prop_assert!(same.iter().all(|&v| v.abs() < 1e-6), "{same:?}");
            let shifted: Vec<f32> = m.iter().map(|v| v + shift).collect();
            let kl_mean = host(gaussian_kl(tensor(m.clone(), 2, &device), std, tensor(shifted, 2, &device), std, LogProbReduction::Mean));
            let expect = (shift as f64).powi(2) / (2.0 * std * std);
            for v in kl_mean {
                prop_assert!(v > 0.0);
                prop_assert!((v as f64 - expect).abs() < 1e-3 * expect.max(1e-3), "{v} vs {expect}");
            }
            if (ratio - 1.0).abs() > 0.01 {
                let kl_std = host(gaussian_kl(tensor(m.clone(), 2, &device), std, tensor(m.clone(), 2, &device), std * ratio, LogProbReduction::Mean));
                let expect = ratio.ln() + 1.0 / (2.0 * ratio * ratio) - 0.5;
                for v in kl_std {
                    prop_assert!(v > 0.0);
                    prop_assert!((v as f64 - expect).abs() < 1e-4 * expect.max(1e-2));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// ∂/∂μ log N(x; μ, σ²) = (x − μ)/σ² (÷ d for Mean), ∂/∂σ_i = z_i²/σ_i − 1/σ_i, and
        /// ∂/∂μ_p KL = (μ_p − μ_q)/σ_q²: autodiff against the closed-form gradients.
        #[test]
        fn gradients_match_their_closed_forms(seed in 0u64..1000, d in 1usize..12, std in 0.1f64..3.0, mean_red in any::<bool>()) {
            let device = crate::test_device().autodiff();
            let reduction = if mean_red { LogProbReduction::Mean } else { LogProbReduction::Sum };
            let div = if mean_red { d as f64 } else { 1.0 };
            let x = standard_normal(NoiseKey::initial(seed, 0), d);
            let mu = standard_normal(NoiseKey::initial(seed, 1), d);
            let mu_t = tensor(mu.clone(), 1, &device).require_grad();
            let lp = gaussian_log_prob(tensor(x.clone(), 1, &device), mu_t.clone(), std, reduction);
            let g = mu_t.grad(&lp.sum().backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
            for i in 0..d {
                let expect = (x[i] as f64 - mu[i] as f64) / (std * std) / div;
                prop_assert!((g[i] as f64 - expect).abs() < 1e-4 * (1.0 + expect.abs()), "dμ {} vs {}", g[i], expect);
            }
            let s: Vec<f32> = standard_normal(NoiseKey::initial(seed, 2), d).into_iter().map(|v| 0.2 + v.abs()).collect();
            let s_t = tensor(s.clone(), 1, &device).require_grad();
            let lp = gaussian_log_prob_diag(tensor(x.clone(), 1, &device), tensor(mu.clone(), 1, &device), s_t.clone(), reduction);
            let g = s_t.grad(&lp.sum().backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
            for i in 0..d {
                let z = (x[i] as f64 - mu[i] as f64) / s[i] as f64;
                let expect = (z * z - 1.0) / s[i] as f64 / div;
                prop_assert!((g[i] as f64 - expect).abs() < 1e-3 * (1.0 + expect.abs()), "dσ {} vs {}", g[i], expect);
            }
            let mp_t = tensor(x.clone(), 1, &device).require_grad();
            let kl = gaussian_kl(mp_t.clone(), std, tensor(mu.clone(), 1, &device), std * 1.3, reduction);
            let g = mp_t.grad(&kl.sum().backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
            for i in 0..d {
                let expect = (x[i] as f64 - mu[i] as f64) / (1.69 * std * std) / div;
                prop_assert!((g[i] as f64 - expect).abs() < 1e-4 * (1.0 + expect.abs()), "dKL {} vs {}", g[i], expect);
            }
        }
    }

    #[test]
    fn kl_matches_a_monte_carlo_estimate() {
        // KL(p‖q) = E_p[log p − log q]. Estimate it from 40 000 host-drawn samples of p.
        let device = crate::test_device();
        let d = 4;
        let n = 40_000;
        let mu_p = [0.3f32, -0.2, 1.0, 0.0];
        let mu_q = [0.0f32, 0.1, 0.5, -0.4];
        // q narrower than p keeps q/p bounded, so the K3 estimator has finite variance.
        let (s_p, s_q) = (1.1f64, 0.9f64);
        let z = standard_normal(NoiseKey::initial(11, 0), n * d);
        let xs: Vec<f32> = z
            .iter()
            .enumerate()
            .map(|(i, &z)| mu_p[i % d] + (s_p as f32) * z)
            .collect();
        let rep = |mu: &[f32; 4]| -> Vec<f32> { (0..n * d).map(|i| mu[i % d]).collect() };
        let lp = gaussian_log_prob(
            tensor(xs.clone(), n, &device),
            tensor(rep(&mu_p), n, &device),
            s_p,
            LogProbReduction::Sum,
        );
        let lq = gaussian_log_prob(
            tensor(xs, n, &device),
            tensor(rep(&mu_q), n, &device),
            s_q,
            LogProbReduction::Sum,
        );
        let mc = host((lp.clone() - lq.clone()).mean())[0] as f64;
        let k3 = host(k3_kl(lp, lq).mean())[0] as f64;
        let closed = host(gaussian_kl(
            tensor(mu_p.to_vec(), 1, &device),
            s_p,
            tensor(mu_q.to_vec(), 1, &device),
            s_q,
            LogProbReduction::Sum,
        ))[0] as f64;
        // Hand-computed: Σ ln(0.9/1.1) + (1.21 + Δμ²)/(2·0.81) − ½ over the 4 elements.
        let dm2 = 0.09 + 0.09 + 0.25 + 0.16;
        let hand = 4.0 * ((0.9f64 / 1.1).ln() + 1.21 / 1.62 - 0.5) + dm2 / 1.62;
        assert!((closed - hand).abs() < 1e-5, "closed {closed} hand {hand}");
        assert!(
            (mc - closed).abs() < 0.03,
            "monte carlo {mc} vs closed form {closed}"
        );
        assert!(
            (k3 - closed).abs() < 0.03,
            "k3 {k3} vs closed form {closed}"
        );
    }

    #[test]
    fn kl_diag_agrees_with_scalar_kl() {
        let device = crate::test_device();
        let mp = tensor(vec![0.1, 0.2, -0.3, 0.4], 2, &device);
        let mq = tensor(vec![0.0, 0.5, -0.1, 0.2], 2, &device);
        let a = host(gaussian_kl(
            mp.clone(),
            0.7,
            mq.clone(),
            0.9,
            LogProbReduction::Mean,
        ));
        let b = host(gaussian_kl_diag(
            mp.clone(),
            mp.ones_like().mul_scalar(0.7),
            mq.clone(),
            mq.ones_like().mul_scalar(0.9),
            LogProbReduction::Mean,
        ));
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
