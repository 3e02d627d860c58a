//! Sinusoidal timestep embeddings and the MLP that lifts them.
//!
//! For a time `t` and an even width `d`, with `h = d/2` and frequencies
//! `ω_i = max_period^(−i/h)` (`i = 0..h`):
//!
//! ```text
//! emb(t) = [cos(t ω_0), …, cos(t ω_{h−1}), sin(t ω_0), …, sin(t ω_{h−1})]
//! ```
//!
//! (the DDPM / diffusers `flip_sin_to_cos = True` layout). DDPM models receive the training
//! timestep (0..1000); flow models scale their `t ∈ [0, 1]` by 1000 first so both see the same
//! frequency range.

use crate::activation::silu;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

/// Sinusoidal embedding of a batch of times.
///
/// # Shapes
/// - `t`: `[B]`; output `[B, dim]`.
///
/// # Panics
/// If `dim` is odd or zero (a configuration error caught by the model configs).
pub fn timestep_embedding(t: Tensor<1>, dim: usize, max_period: f64) -> Tensor<2> {
    assert!(
        dim >= 2 && dim.is_multiple_of(2),
        "timestep embedding width must be even, got {dim}"
    );
    let half = dim / 2;
    let device = t.device();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(max_period.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &device);
    let b = t.dims()[0];
    let args = t.reshape([b, 1]) * freqs.reshape([1, half]);
    Tensor::cat(vec![args.clone().cos(), args.sin()], 1)
}

/// Configuration of [`TimestepMlp`].
#[derive(Config, Debug)]
pub struct TimestepMlpConfig {
    /// Width of the sinusoidal embedding.
    pub frequency_dim: usize,
    /// Output width.
    pub dim: usize,
    /// Longest period of the sinusoids.
    #[config(default = 10000.0)]
    pub max_period: f64,
}

/// `Linear → SiLU → Linear` on a sinusoidal timestep embedding.
#[derive(Module, Debug)]
pub struct TimestepMlp {
    /// First projection `[frequency_dim → dim]`.
    pub linear_1: Linear,
    /// Second projection `[dim → dim]`.
    pub linear_2: Linear,
    frequency_dim: usize,
    max_period: f64,
}

impl TimestepMlpConfig {
    /// Initialises the module.
    pub fn init(&self, device: &Device) -> TimestepMlp {
        TimestepMlp {
            linear_1: LinearConfig::new(self.frequency_dim, self.dim).init(device),
            linear_2: LinearConfig::new(self.dim, self.dim).init(device),
            frequency_dim: self.frequency_dim,
            max_period: self.max_period,
        }
    }
}

impl TimestepMlp {
    /// # Shapes
    /// - `t`: `[B]`; output `[B, dim]`.
    pub fn forward(&self, t: Tensor<1>) -> Tensor<2> {
        let emb = timestep_embedding(t, self.frequency_dim, self.max_period);
        self.linear_2.forward(silu(self.linear_1.forward(emb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_is_cos_then_sin_of_geometric_frequencies() {
        let device = align_core::test_device();
        let t = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 2.0], [2]), &device);
        let e = timestep_embedding(t, 4, 10000.0)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // t = 0: cos = 1, sin = 0. t = 2: frequencies 1 and 10000^(-1/2) = 0.01.
        let expect = [
            1.0,
            1.0,
            0.0,
            0.0,
            2f32.cos(),
            0.02f32.cos(),
            2f32.sin(),
            0.02f32.sin(),
        ];
        for (a, b) in e.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn mlp_shapes() {
        let device = align_core::test_device();
        let mlp = TimestepMlpConfig::new(8, 16).init(&device);
        let out = mlp.forward(Tensor::zeros([3], &device));
        assert_eq!(out.dims(), [3, 16]);
    }
}
