//! GELU and SiLU, computed by vectorisable host code where the tensor lives in host memory.
//!
//! ```text
//! gelu(x) = x · Φ(x) = ½ x (1 + erf(x / √2))        (the exact, erf form)
//! silu(x) = x · σ(x) = x / (1 + e^(−x))
//! ```
//!
//! burn-flex evaluates both, and GELU's gradient, one element at a time through the scalar
//! `libm` `erff` / `expf` (at the DiT's MLP width, `[32, 64, 384]`, GELU takes 5.5 ms on flex
//! and 0.16 ms in PyTorch: `bench-table --ops`, `op_gelu_erf_*`). [`gelu`] and [`silu`] instead
//! compute on the host, in code the compiler vectorises, over rayon's threads, wherever the
//! tensor lives on a CPU backend (flex, ndarray):
//!
//! - **without autodiff** (every `valid()` model: sampling, evaluation, reward scoring) the
//!   buffer is moved out, mapped in place and moved back (flex does this without a copy);
//! - **under autodiff** the output is built as `h + s ⊙ (x − detach(x))`, where `h = f(x)` and
//!   the slope `s = f′(x)` are computed on the host and enter as constants. For finite `x` its
//!   value is `h` (`x − detach(x)` is exactly zero; a zero result may carry the other sign, and
//!   an infinite `x` gives NaN) and its gradient is `s ⊙ ∂L/∂y`, the exact
//!   derivative — with three cheap vectorised tensor operations in place of burn's scalar
//!   kernels, forward and backward. The expression is the same whether or not a graph is being
//!   recorded, so an RL rollout under `no_grad()` and the update's re-scoring compute the same
//!   bits and the PPO ratio at θ_old stays exactly 1 (the exactness tests). Second derivatives
//!   through it are zero (the slope is a constant); nothing in `align` differentiates twice.
//!
//! Other backends (wgpu, CUDA) and other dtypes use burn's own `gelu` / `silu`.
//!
//! The host formulas:
//! - `e^y` for `y ≤ 0`: `y = n ln 2 + r` with `n = round(y / ln 2)`, `|r| ≤ ln 2 / 2` (ln 2
//!   split in two parts, Cody and Waite), `e^r` by its Taylor series to `r⁷/7!` (relative
//!   error below 1.2e-8), times `2ⁿ` built in the exponent bits;
//! - `erf(z)` for `z ≥ 0`: Abramowitz and Stegun 7.1.26, `1 − (a₁t + a₂t² + a₃t³ + a₄t⁴ +
//!   a₅t⁵) e^(−z²)`, `t = 1/(1 + p z)` (absolute error ≤ 1.5e-7), odd in `z`;
//! - `σ(x) = 1/(1 + e^(−x))` for `x ≥ 0` and `e^x/(1 + e^x)` for `x < 0`, so the exponential
//!   never overflows.
//!
//! - the slopes: `gelu′(x) = Φ(x) + x φ(x)` with `φ(x) = e^(−x²/2)/√(2π)`, and
//!   `silu′(x) = σ(x) (1 + x (1 − σ(x)))`.
//!
//! They agree with the exact functions to a few units of f32 rounding (tested against `libm`
//! in f64 and against burn's kernels and gradients): GELU within 1.5e-7·|x| + 1e-7, SiLU
//! within 4 ulp of its magnitude, the slopes within 3e-7 + 2.5e-7·|f′|.
//!
//! # Example
//!
//! ```
//! use align_core::select_device;
//! use align_models::activation::gelu;
//! use burn::tensor::Tensor;
//!
//! let device = select_device(Some("flex")).unwrap();
//! let x = Tensor::<1>::from_floats([-2.0, -0.5, 0.0, 0.5, 2.0], &device);
//! let ours = gelu(x.clone());
//! let burns = burn::tensor::activation::gelu(x);
//! assert!((ours - burns).abs().max().into_scalar::<f32>() < 1e-6);
//! ```

use align_core::is_host_array_device;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// Elements per rayon task of the host kernels.
const CHUNK: usize = 1 << 14;

/// `½ x (1 + erf(x/√2))`; see the module docs for where it runs as host code.
///
/// # Shapes
/// - any; output the same shape.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    pointwise(
        x,
        gelu_value,
        gelu_value_and_slope,
        burn::tensor::activation::gelu,
    )
}

/// `x σ(x)`; see the module docs for where it runs as host code.
///
/// # Shapes
/// - any; output the same shape.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    pointwise(
        x,
        silu_value,
        silu_value_and_slope,
        burn::tensor::activation::silu,
    )
}

/// `f(x)` by the host kernels — `value`, or under autodiff `both` (`f` and `f′` in one pass,
/// `f` computed by the same expression as `value`) — or by burn's `fallback` where they do not
/// apply (see the module docs).
fn pointwise<const D: usize>(
    x: Tensor<D>,
    value: impl Fn(f32) -> f32 + Sync,
    both: impl Fn(f32) -> (f32, f32) + Sync,
    fallback: fn(Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    let device = x.device();
    if x.dtype() != DType::F32 || !is_host_array_device(&device.clone().inner()) {
        return fallback(x);
    }
    if !device.is_autodiff() {
        let mut data = x.into_data();
        if let Ok(values) = data.as_mut_slice::<f32>() {
            values.par_chunks_mut(CHUNK).for_each(|chunk| {
                for v in chunk {
                    *v = value(*v);
                }
            });
            return Tensor::from_data(data, &device);
        }
        // Not reachable for an f32 tensor; rebuild it rather than fail.
        return fallback(Tensor::from_data(data, &device));
    }
    let data = x.clone().inner().into_data();
    let Ok(xs) = data.as_slice::<f32>() else {
        return fallback(x);
    };
    let (mut h, mut s) = (vec![0.0f32; xs.len()], vec![0.0f32; xs.len()]);
    xs.par_chunks(CHUNK)
        .zip(h.par_chunks_mut(CHUNK))
        .zip(s.par_chunks_mut(CHUNK))
        .for_each(|((xs, h), s)| {
            for ((x, h), s) in xs.iter().zip(h).zip(s) {
                (*h, *s) = both(*x);
            }
        });
    let shape = data.shape().clone();
    let h = Tensor::<D>::from_data(TensorData::new(h, shape.clone()), &device);
    let s = Tensor::<D>::from_data(TensorData::new(s, shape), &device);
    let zero = x.clone() - x.detach();
    h + s * zero
}

/// `e^y` for `y ≤ 0`; inputs below −87 are clamped to −87 (`e^−87` ≈ 1.6e-38, where f32
/// leaves its normal range); see the module docs.
#[inline(always)]
fn exp_nonpositive(y: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with its last 12 bits zero so that n·LN2_HI is exact.
    #[allow(clippy::excessive_precision)] // exactly representable: 0x3f31_7200
    const LN2_HI: f32 = 0.693_145_751_953_125;
    #[allow(clippy::excessive_precision)]
    const LN2_LO: f32 = 1.428_606_820_309_417_232e-6;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let y = y.max(-87.0);
    let n = (y * LOG2_E + ROUND) - ROUND;
    let r = (y - n * LN2_HI) - n * LN2_LO;
    // Taylor series of e^r to r⁷/7!, Horner form.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2ⁿ for n in [−126, 0]: the biased exponent n + 127 in the exponent bits.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// `erf(z)`, Abramowitz and Stegun 7.1.26, odd in `z`.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published constants, as printed
fn erf(z: f32) -> f32 {
    const P: f32 = 0.3275911;
    const A1: f32 = 0.254829592;
    const A2: f32 = -0.284496736;
    const A3: f32 = 1.421413741;
    const A4: f32 = -1.453152027;
    const A5: f32 = 1.061405429;
    let a = z.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
    let e = 1.0 - poly * exp_nonpositive(-a * a);
    e.copysign(z)
}

/// `gelu(x)`.
#[inline(always)]
fn gelu_value(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `(gelu(x), gelu′(x))`, sharing one `erf`; the value is [`gelu_value`]'s expression.
#[inline(always)]
fn gelu_value_and_slope(x: f32) -> (f32, f32) {
    // 1/√(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let e = erf(x * std::f32::consts::FRAC_1_SQRT_2);
    let pdf = INV_SQRT_2PI * exp_nonpositive(-0.5 * x * x);
    (0.5 * x * (1.0 + e), 0.5 * (1.0 + e) + x * pdf)
}

/// `silu(x) = x σ(x)`, σ without overflow: `1/(1 + e^(−|x|))` for x ≥ 0, `e^(−|x|)/(1 +
/// e^(−|x|))` for x < 0.
#[inline(always)]
fn silu_value(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    x * ((if x >= 0.0 { 1.0 } else { e }) / (1.0 + e))
}

/// `(silu(x), silu′(x))`, sharing one `exp`; the value is [`silu_value`]'s expression, and
/// `1 − σ(x) = σ(−x)` is computed directly, without cancellation.
#[inline(always)]
fn silu_value_and_slope(x: f32) -> (f32, f32) {
    let e = exp_nonpositive(-x.abs());
    let (num, num_minus) = if x >= 0.0 { (1.0, e) } else { (e, 1.0) };
    let d = 1.0 + e;
    let sigma = num / d;
    (x * sigma, sigma * (1.0 + x * (num_minus / d)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_core::select_device;
    use burn::tensor::TensorData;

    /// A dense grid over [−12, 12] plus the edges and special points.
    fn grid() -> Vec<f32> {
        let mut v: Vec<f32> = (-120_000..=120_000).map(|i| i as f32 * 1e-4).collect();
        v.extend([
            -90.0, -88.0, -87.5, -30.0, 30.0, 87.5, 88.0, 90.0, 1e-30, -1e-30, 0.0,
        ]);
        v
    }

    fn gelu_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
    }

    fn silu_f64(x: f64) -> f64 {
        x / (1.0 + (-x).exp())
    }

    #[test]
    fn exp_is_accurate_on_the_nonpositive_axis() {
        for y in (0..=87_000).map(|i| -(i as f32) * 1e-3) {
            let ours = exp_nonpositive(y) as f64;
            let exact = (y as f64).exp();
            assert!(
                (ours - exact).abs() <= 2e-7 * exact + 1e-38,
                "exp({y}) = {ours}, exact {exact}"
            );
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-200.0) < 1e-37);
    }

    /// Asserts `|f(x) − exact(x)| ≤ bound(x, exact(x))` on the grid.
    fn assert_on_grid(
        what: &str,
        f: impl Fn(f32) -> f32,
        exact: fn(f64) -> f64,
        bound: impl Fn(f64, f64) -> f64,
    ) {
        for x in grid() {
            let (y, e) = (f(x) as f64, exact(x as f64));
            assert!(
                (y - e).abs() <= bound(x as f64, e),
                "{what}({x}) = {y}, exact {e}"
            );
        }
    }

    #[test]
    fn gelu_agrees_with_the_exact_function() {
        let bound = |x: f64, e: f64| 1.5e-7 * x.abs() + 1e-7 + 1.2e-7 * e.abs() + 1e-30;
        assert_on_grid("gelu", gelu_value, gelu_f64, bound);
        assert_on_grid("gelu", |x| gelu_value_and_slope(x).0, gelu_f64, bound);
    }

    #[test]
    fn silu_agrees_with_the_exact_function() {
        // (+1e-30: below −87 the exponential's argument is clamped, see `exp_nonpositive`.)
        let bound = |_: f64, e: f64| 4.0 * f32::EPSILON as f64 * e.abs() + 1e-30;
        assert_on_grid("silu", silu_value, silu_f64, bound);
        assert_on_grid("silu", |x| silu_value_and_slope(x).0, silu_f64, bound);
    }

    fn gelu_slope_f64(x: f64) -> f64 {
        let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        cdf + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
    }

    fn silu_slope_f64(x: f64) -> f64 {
        let s = 1.0 / (1.0 + (-x).exp());
        s * (1.0 + x * (1.0 - s))
    }

    #[test]
    fn slopes_agree_with_the_exact_derivatives() {
        let bound = |_: f64, e: f64| 3e-7 + 2.5e-7 * e.abs();
        assert_on_grid(
            "gelu′",
            |x| gelu_value_and_slope(x).1,
            gelu_slope_f64,
            bound,
        );
        assert_on_grid(
            "silu′",
            |x| silu_value_and_slope(x).1,
            silu_slope_f64,
            bound,
        );
        // The pair's value is the value kernel's, bit for bit.
        for x in grid() {
            assert_eq!(gelu_value_and_slope(x).0.to_bits(), gelu_value(x).to_bits());
            assert_eq!(silu_value_and_slope(x).0.to_bits(), silu_value(x).to_bits());
        }
    }

    /// On the inner flex device the tensor functions take the host path and match burn's
    /// kernels. On the autodiff device their values are the same host values bit for bit,
    /// recorded or not (what keeps the PPO ratio exact), and their gradients match burn's.
    #[test]
    fn host_values_on_both_devices_and_burns_gradients() {
        let inner = select_device(Some("flex")).unwrap();
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 2.5e-3).collect();
        let n = xs.len();
        let on =
            |d: &burn::tensor::Device| Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), d);
        let max_abs = |a: Tensor<1>, b: Tensor<1>| (a - b).abs().max().into_scalar::<f32>();
        type Act = fn(Tensor<1>) -> Tensor<1>;
        let pairs: [(Act, Act); 2] = [
            (gelu, burn::tensor::activation::gelu),
            (silu, burn::tensor::activation::silu),
        ];
        let train = inner.clone().autodiff();
        for (ours, burns) in pairs {
            let x = on(&inner);
            let host = ours(x.clone());
            assert!(max_abs(host.clone(), burns(x.clone())) < 1e-6);
            // The host formulas are not burn's, so some last bits differ: the host path ran.
            assert_ne!(host.clone().into_data(), burns(x).into_data());

            // Autodiff, untracked (as under `no_grad()`) and tracked: the host values.
            let untracked = ours(on(&train));
            assert_eq!(untracked.inner().into_data(), host.clone().into_data());
            let x = on(&train).require_grad();
            let w = Tensor::<1>::from_data(
                TensorData::new(
                    (0..n)
                        .map(|i| ((i * 7919) % 13) as f32 - 6.0)
                        .collect::<Vec<_>>(),
                    [n],
                ),
                &train,
            );
            let y = ours(x.clone());
            assert_eq!(y.clone().inner().into_data(), host.into_data());
            let g_ours = x.grad(&(y * w.clone()).sum().backward()).unwrap();
            let g_burn = x.grad(&(burns(x.clone()) * w).sum().backward()).unwrap();
            // |w| ≤ 6, slopes within 6e-7 of exact (|slope| ≤ 1.13), burn's within rounding.
            assert!(max_abs(g_ours, g_burn) < 6.0 * 8e-7);
        }
    }
}
