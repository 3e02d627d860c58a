//! Test models shared by the sampler tests.
#![allow(dead_code, clippy::unwrap_used)]

use align_core::{Condition, Denoiser, Parameterization};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

#[allow(unused_imports)]
pub use align_samplers::toy::GaussianFlowField as GaussianFlow;

/// A small MLP denoiser on flattened latents with a time input and the mean context token.
#[derive(Module, Debug)]
pub struct TinyMlp {
    input: Linear,
    hidden: Linear,
    output: Linear,
    #[module(skip)]
    parameterization_id: usize,
}

impl TinyMlp {
    pub fn new(
        elements: usize,
        context: usize,
        parameterization: Parameterization,
        device: &Device,
    ) -> Self {
        let id = match parameterization {
            Parameterization::Epsilon => 0,
            Parameterization::VPrediction => 1,
            Parameterization::Sample => 2,
            Parameterization::FlowVelocity => 3,
        };
        Self {
            input: LinearConfig::new(elements + 1 + context, 32).init(device),
            hidden: LinearConfig::new(32, 32).init(device),
            output: LinearConfig::new(32, elements).init(device),
            parameterization_id: id,
        }
    }
}

impl Denoiser for TinyMlp {
    fn parameterization(&self) -> Parameterization {
        [
            Parameterization::Epsilon,
            Parameterization::VPrediction,
            Parameterization::Sample,
            Parameterization::FlowVelocity,
        ][self.parameterization_id]
    }

    fn predict(&self, x: Tensor<4>, t: Tensor<1>, c: &Condition) -> Tensor<4> {
        let dims = x.dims();
        let b = dims[0];
        let flat: Tensor<2> = x.reshape([b as i32, -1]);
        let scale = if self.parameterization_id == 3 {
            1.0
        } else {
            1.0 / 1000.0
        };
        let t = t.reshape([b, 1]).mul_scalar(scale);
        let ctx: Tensor<2> = c.context.clone().mean_dim(1).reshape([b as i32, -1]);
        let h = silu(self.input.forward(Tensor::cat(vec![flat, t, ctx], 1)));
        let h = silu(self.hidden.forward(h));
        self.output.forward(h).reshape(dims)
    }
}

/// A condition of `b` rows of one token with `d` features, row `i` filled with `value + i`.
pub fn condition(b: usize, d: usize, value: f32, device: &Device) -> Condition {
    let v: Vec<f32> = (0..b).flat_map(|i| vec![value + i as f32; d]).collect();
    Condition::new(Tensor::from_data(TensorData::new(v, [b, 1, d]), device))
}

pub fn host4(t: &Tensor<4>) -> Vec<f32> {
    t.clone().into_data().try_to_vec::<f32>().unwrap()
}

pub fn host1(t: &Tensor<1>) -> Vec<f32> {
    t.clone().into_data().try_to_vec::<f32>().unwrap()
}

/// Asserts two `f32` vectors are equal: bit for bit on backends that reproduce computations
/// exactly (flex, ndarray); to `|a − b| ≤ 1e-5 (1 + |a|)` on autotuned GPU backends, whose
/// kernels may differ between calls (see `Backend::is_bitwise_reproducible`). A log-prob
/// difference there is about `ε_f32 · |μ| / σ`: largest on late, low-noise steps.
pub fn assert_reproduced(a: &[f32], b: &[f32], what: &str) {
    let backend = align_core::resolve_backend(None).unwrap();
    if backend.is_bitwise_reproducible() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "{what}: not bit-identical on {backend}");
    } else {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + x.abs().max(y.abs())),
                "{what} on {backend}: {x} vs {y}"
            );
        }
    }
}
