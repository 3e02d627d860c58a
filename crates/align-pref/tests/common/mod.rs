//! The tiny model and inputs the preference-loss tests share.
#![allow(dead_code, clippy::unwrap_used)]

use align_core::{Condition, Denoiser, NoiseKey, Parameterization, noise_tensor};
use align_pref::NoiseLevels;
use align_samplers::{BetaSchedule, NoiseSchedule};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

/// `prediction = tanh(w ⊙ x) + b + c·t`, per channel.
#[derive(Module, Debug)]
pub struct Tiny {
    pub w: Param<Tensor<1>>,
    pub b: Param<Tensor<1>>,
    pub c: Param<Tensor<1>>,
    pub flow: bool,
}

pub const INIT: [[f32; 2]; 3] = [[0.8, -0.6], [0.1, -0.2], [0.3, 0.05]];

impl Tiny {
    pub fn with(vals: [[f32; 2]; 3], flow: bool, device: &Device) -> Self {
        Self {
            w: Param::from_tensor(Tensor::from_floats(vals[0], device)),
            b: Param::from_tensor(Tensor::from_floats(vals[1], device)),
            c: Param::from_tensor(Tensor::from_floats(vals[2], device)),
            flow,
        }
    }
}

impl Denoiser for Tiny {
    fn parameterization(&self) -> Parameterization {
        if self.flow {
            Parameterization::FlowVelocity
        } else {
            Parameterization::Epsilon
        }
    }
    fn predict(&self, x: Tensor<4>, t: Tensor<1>, _c: &Condition) -> Tensor<4> {
        let b = x.dims()[0];
        let t = if self.flow { t } else { t.div_scalar(1000.0) };
        (x * self.w.val().reshape([1, 2, 1, 1])).tanh()
            + self.b.val().reshape([1, 2, 1, 1])
            + self.c.val().reshape([1, 2, 1, 1]) * t.reshape([b, 1, 1, 1])
    }
}

pub struct Flatten<'a>(pub &'a GradientsParams, pub Vec<f64>);
impl ModuleVisitor for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let g = self.0.get::<D>(param.id).unwrap();
        self.1.extend(
            g.into_data()
                .try_to_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from),
        );
    }
}

pub fn noise(salt: u64, b: usize, device: &Device) -> Tensor<4> {
    let keys: Vec<NoiseKey> = (0..b as u64).map(|i| NoiseKey::initial(salt, i)).collect();
    noise_tensor(&keys, [2, 3, 3], device).unwrap()
}

pub fn levels(flow: bool) -> NoiseLevels {
    if flow {
        NoiseLevels::flow(&[0.2, 0.55, 0.9]).unwrap()
    } else {
        let s = NoiseSchedule::new(BetaSchedule::ddpm_linear(), 1000).unwrap();
        NoiseLevels::ddpm(&s, &[10, 420, 900]).unwrap()
    }
}

pub fn host(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Central finite differences of `loss(θ)` against its autodiff gradient, over the 6
/// parameters of a [`Tiny`] policy at `start` (on an autodiff device).
pub fn check_gradient(
    flow: bool,
    start: [[f32; 2]; 3],
    loss_of: &dyn Fn(&Tiny) -> Tensor<1>,
    what: &str,
) {
    let device = align_core::test_device().autodiff();
    let make = |v: [[f32; 2]; 3]| Tiny::with(v, flow, &device);
    finite_differences(start, &make, loss_of, 1e-2, &format!("{what}, flow {flow}"));
}

/// Central finite differences (step 1e-2) of `loss(make(θ))` against its autodiff gradient,
/// for a model whose parameters are `N` rows of 2 values, visited in that order; `make` must
/// build on an autodiff device. Tolerance: 2 % of `max(|fd|, floor)`.
pub fn finite_differences<M: Module, const N: usize>(
    start: [[f32; 2]; N],
    make: &dyn Fn([[f32; 2]; N]) -> M,
    loss_of: &dyn Fn(&M) -> Tensor<1>,
    floor: f64,
    what: &str,
) {
    let policy = make(start);
    let grads = GradientsParams::from_grads(loss_of(&policy).backward(), &policy);
    let mut flat = Flatten(&grads, Vec::new());
    policy.visit(&mut flat);
    assert_eq!(flat.1.len(), 2 * N, "{what}: parameter count");
    let h = 1e-2_f32;
    for (i, &g) in flat.1.iter().enumerate() {
        let at = |d: f32| {
            let mut v = start;
            v[i / 2][i % 2] += d;
            let x: f32 = loss_of(&make(v)).into_scalar();
            f64::from(x)
        };
        let fd = (at(h) - at(-h)) / (2.0 * f64::from(h));
        assert!(
            (g - fd).abs() <= 2e-2 * fd.abs().max(floor),
            "{what}, parameter {i}: {g} vs finite differences {fd}"
        );
    }
}
