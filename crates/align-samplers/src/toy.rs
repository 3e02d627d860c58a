//! Analytic denoisers with exact answers, for tests, demos and toy problems.

use align_core::{Condition, Denoiser, Parameterization};
use burn::tensor::{Device, Tensor, TensorData};

/// The exact flow-matching velocity of per-channel Gaussian data `x₀ ~ N(m_c, s_c²)`.
///
/// Under `x_t = (1−t) x₀ + t ε` the marginal is Gaussian with variance
/// `V = (1−t)² s² + t²`, and
///
/// ```text
/// E[x₀ | x_t] = m + (1−t) s² / V · (x_t − (1−t) m)
/// E[ε  | x_t] = t / V · (x_t − (1−t) m)
/// v(x_t, t)   = E[ε | x_t] − E[x₀ | x_t]
/// ```
///
/// Sampling it with any marginal-preserving sampler from `x_1 ~ N(0, I)` must reproduce the
/// data's moments — the check the Flow-GRPO SDE is tested against. The condition is ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianFlowField {
    /// Per-channel data mean `m_c`.
    pub mean: Vec<f32>,
    /// Per-channel data standard deviation `s_c`.
    pub std: Vec<f32>,
}

impl GaussianFlowField {
    /// Data with the given per-channel means and standard deviations.
    ///
    /// # Panics
    /// If the two vectors differ in length (a programming error).
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Self {
        assert_eq!(mean.len(), std.len(), "one std per channel mean");
        Self { mean, std }
    }

    fn channel(&self, v: &[f32], device: &Device) -> Tensor<4> {
        Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len(), 1, 1]), device)
    }
}

impl Denoiser for GaussianFlowField {
    fn parameterization(&self) -> Parameterization {
        Parameterization::FlowVelocity
    }

    /// # Shapes
    /// - `x`: `[B, C, H, W]` with `C` = the number of channels of the data.
    fn predict(&self, x: Tensor<4>, t: Tensor<1>, _condition: &Condition) -> Tensor<4> {
        let device = x.device();
        let b = x.dims()[0];
        let t = t.reshape([b, 1, 1, 1]);
        let one_minus = t.clone().neg().add_scalar(1.0);
        let m = self.channel(&self.mean, &device);
        let s2 = self.channel(&self.std, &device).square();
        let var = one_minus.clone().square() * s2.clone() + t.clone().square();
        let centred = x - one_minus.clone() * m.clone();
        let e_x0 = m + (one_minus * s2 / var.clone()) * centred.clone();
        let e_eps = t / var * centred;
        e_eps - e_x0
    }
}
