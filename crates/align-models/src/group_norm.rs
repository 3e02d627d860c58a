//! GroupNorm through the backend's fused layer-norm kernel.
//!
//! ```text
//! for each sample b and group g (the C/G channels × H × W values x_i of that group):
//!   μ = mean(x_i),  σ² = mean((x_i − μ)²)
//!   y_i = (x_i − μ) / √(σ² + ε) · γ_c + β_c        (c: the channel of x_i)
//! ```
//!
//! [`group_norm`] takes burn-nn's [`GroupNorm`] as it is (the same `gamma` / `beta`
//! parameters, so checkpoints are unchanged) and computes the same formula in fewer passes.
//! A group is a row of the `[B, G, (C/G)·H·W]` view, so the normalisation is a layer norm over
//! that row: burn's `layer_norm` op, which flex runs as one parallel kernel per row (a
//! numerically safe centred variance, in one sweep for the statistics and one for the
//! output), followed by the per-channel affine. burn-nn's GroupNorm instead runs seven
//! separate tensor operations, each a full pass with its own allocation, and reduces the
//! output of the subtraction `x − μ`, which flex does slowly (`bench-table --ops`:
//! `op_group_norm_*` and `op_variance_two_pass_*`). Backends without their own layer-norm
//! kernel, and autodiff, compute burn's decomposition of the same formula.
//!
//! # Example
//!
//! ```
//! use align_core::select_device;
//! use align_models::group_norm::group_norm;
//! use burn::nn::GroupNormConfig;
//! use burn::tensor::{Distribution, Tensor};
//!
//! let device = select_device(Some("flex")).unwrap();
//! let gn = GroupNormConfig::new(2, 4).init(&device);
//! let x = Tensor::<4>::random([2, 4, 3, 3], Distribution::Normal(5.0, 2.0), &device);
//! let diff: f32 = (group_norm(&gn, x.clone()) - gn.forward(x)).abs().max().into_scalar();
//! assert!(diff < 1e-5);
//! ```

use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use burn::tensor::module::layer_norm;

/// burn-nn's [`GroupNorm`] forward (the formula in the module docs) through the backend's
/// layer-norm kernel.
///
/// # Shapes
/// - `x`: `[B, C, …]` with `C = gn.num_channels`; output the same shape.
///
/// # Panics
/// If `x`'s channel count is not `gn.num_channels` (as burn-nn's `forward` does).
pub fn group_norm<const D: usize>(gn: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    assert_eq!(
        dims[1], gn.num_channels,
        "group_norm: input has {} channels, the layer {}",
        dims[1], gn.num_channels
    );
    let b = dims[0];
    let row = x.shape().num_elements() / (b * gn.num_groups);
    let device = x.device();
    let ones = Tensor::<1>::ones([row], &device);
    let normalized =
        layer_norm(x.reshape([b, gn.num_groups, row]), ones, None, gn.epsilon).reshape(dims);
    match (&gn.gamma, &gn.beta) {
        (Some(gamma), Some(beta)) if gn.affine => {
            let mut affine = [1; D];
            affine[1] = gn.num_channels;
            normalized * gamma.val().reshape(affine) + beta.val().reshape(affine)
        }
        _ => normalized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_core::select_device;
    use burn::module::Module;
    use burn::nn::GroupNormConfig;
    use burn::tensor::{Device, TensorData};
    use proptest::prelude::*;

    fn values(n: usize, seed: u64, offset: f32, spread: f32) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                offset + spread * (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect()
    }

    fn tensor(shape: [usize; 4], seed: u64, offset: f32, spread: f32, d: &Device) -> Tensor<4> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(values(n, seed, offset, spread), shape), d)
    }

    fn max_abs<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// GroupNorm's formula evaluated in f64 on the host: an independent reference.
    fn reference(
        x: &[f32],
        shape: [usize; 4],
        groups: usize,
        gamma: &[f32],
        beta: &[f32],
    ) -> Vec<f64> {
        let [_, c, h, w] = shape;
        let per = c / groups * h * w;
        let mut out = vec![0.0; x.len()];
        for (i, chunk) in x.chunks(per).enumerate() {
            let mean = chunk.iter().map(|&v| v as f64).sum::<f64>() / per as f64;
            let var = chunk
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / per as f64;
            for (j, &v) in chunk.iter().enumerate() {
                let flat = i * per + j;
                let ch = (flat / (h * w)) % c;
                out[flat] =
                    (v as f64 - mean) / (var + 1e-5).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Agrees with burn-nn's GroupNorm and with an f64 host evaluation of the formula,
        /// on the inner and the autodiff device, including inputs whose mean is far larger
        /// than their spread (where a one-pass `E[x²] − E[x]²` would lose every digit); its
        /// gradients (input, γ, β) agree with burn-nn's.
        #[test]
        fn matches_burn_nn_and_the_formula(
            b in 1usize..3, groups in 1usize..4, per_group in 1usize..4, h in 2usize..5,
            // (burn-nn refuses inputs of ≤ 2 elements, so h, w ≥ 2.)
            w in 2usize..5, offset in prop::sample::select(vec![0.0f32, 3.0, 1000.0]),
            seed in any::<u64>(),
        ) {
            let inner = select_device(Some("flex")).unwrap();
            let train = inner.clone().autodiff();
            let c = groups * per_group;
            let shape = [b, c, h, w];
            let mut gn = GroupNormConfig::new(groups, c).init(&train);
            let gamma = values(c, seed ^ 5, 1.0, 0.5);
            let beta = values(c, seed ^ 6, 0.0, 0.5);
            gn.gamma = gn.gamma.map(|p| p.map(|_| Tensor::from_data(TensorData::new(gamma.clone(), [c]), &train).require_grad()));
            gn.beta = gn.beta.map(|p| p.map(|_| Tensor::from_data(TensorData::new(beta.clone(), [c]), &train).require_grad()));
            let spread = 1.0;
            let host = values(b * c * h * w, seed, offset, spread);
            let expected = reference(&host, shape, groups, &gamma, &beta);

            let valid = gn.valid();
            let x = tensor(shape, seed, offset, spread, &inner);
            let ours: Vec<f32> = group_norm(&valid, x.clone()).into_data().try_to_vec::<f32>().unwrap();
            let theirs = valid.forward(x);
            // Rounding of x itself (|x| up to 1001) bounds what f32 can reach.
            let tol = 2e-4 * (1.0 + offset as f64 / 100.0);
            let err = ours.iter().zip(&expected).map(|(a, e)| (*a as f64 - e).abs()).fold(0.0, f64::max);
            prop_assert!(err < tol, "vs f64 formula: {err}");
            let ours_t = Tensor::<4>::from_data(TensorData::new(ours, shape), &inner);
            prop_assert!(max_abs(ours_t, theirs) < tol as f32);

            let x = tensor(shape, seed, offset, spread, &train).require_grad();
            let weight = tensor(shape, seed ^ 9, 0.0, 1.0, &train);
            let g_ours = (group_norm(&gn, x.clone()) * weight.clone()).sum().backward();
            let g_theirs = (gn.forward(x.clone()) * weight).sum().backward();
            prop_assert!(max_abs(x.grad(&g_ours).unwrap(), x.grad(&g_theirs).unwrap()) < 1e-3);
            let gamma_grad = |g| gn.gamma.as_ref().unwrap().val().grad(g).unwrap();
            prop_assert!(max_abs(gamma_grad(&g_ours), gamma_grad(&g_theirs)) < 1e-3);
            let beta_grad = |g| gn.beta.as_ref().unwrap().val().grad(g).unwrap();
            prop_assert!(max_abs(beta_grad(&g_ours), beta_grad(&g_theirs)) < 1e-3);
        }
    }
}
