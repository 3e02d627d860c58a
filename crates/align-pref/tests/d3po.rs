//! D3PO on stored trajectories: ln 2 at θ = ref at every step, antisymmetry in winner and
//! loser, deterministic steps refused, and the gradient against finite differences.
#![allow(clippy::unwrap_used)]

use align_core::{Condition, Denoiser, Parameterization, Trajectory, test_device};
use align_pref::{D3poSide, d3po_step_loss};
use align_samplers::{FlowGrid, FlowSdeSampler, RolloutBatch, RolloutConfig, Sampler, rollout};
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

mod common;

#[derive(Module, Debug)]
struct Tiny {
    w: Param<Tensor<1>>,
    b: Param<Tensor<1>>,
}

const INIT: [[f32; 2]; 2] = [[0.8, -0.6], [0.1, -0.2]];

impl Tiny {
    fn with(v: [[f32; 2]; 2], device: &Device) -> Self {
        Self {
            w: Param::from_tensor(Tensor::from_floats(v[0], device)),
            b: Param::from_tensor(Tensor::from_floats(v[1], device)),
        }
    }
}

impl Denoiser for Tiny {
    fn parameterization(&self) -> Parameterization {
        Parameterization::FlowVelocity
    }
    fn predict(&self, x: Tensor<4>, _t: Tensor<1>, _c: &Condition) -> Tensor<4> {
        (x * self.w.val().reshape([1, 2, 1, 1])).tanh() + self.b.val().reshape([1, 2, 1, 1])
    }
}

fn roll(m: &Tiny, sampler: &dyn Sampler, cond: &Condition, salt: u64) -> Trajectory {
    rollout(
        &m.clone().no_grad(),
        sampler,
        &RolloutBatch {
            condition: cond,
            uncond: None,
            sample_ids: (0..3).map(|i| salt * 10 + i).collect(),
            condition_ids: vec![0; 3],
            group_ids: None,
            sample_shape: [2, 2, 2],
        },
        &RolloutConfig::default(),
    )
    .unwrap()
}

fn side<'a>(t: &'a Trajectory, c: &'a Condition) -> D3poSide<'a> {
    D3poSide {
        trajectory: t,
        condition: c,
        uncond: None,
        reference_condition: None,
    }
}

#[test]
fn ln2_at_init_antisymmetry_and_gradient() {
    let device = test_device().autodiff();
    let cond = Condition::new(Tensor::zeros([3, 1, 1], &device));
    let sampler = FlowSdeSampler::new(FlowGrid::new(5, 1.0).unwrap(), 0.7).unwrap();
    let reference = Tiny::with(INIT, &device).no_grad();
    let tw = roll(&reference, &sampler, &cond, 1);
    let tl = roll(&reference, &sampler, &cond, 2);
    for k in 0..5 {
        let (loss, inside) = d3po_step_loss(
            &reference,
            &reference,
            &sampler,
            side(&tw, &cond),
            side(&tl, &cond),
            k,
            1.0,
        )
        .unwrap();
        assert_eq!(
            inside.into_data().try_to_vec::<f32>().unwrap(),
            vec![0.0; 3]
        );
        let l: f32 = loss.into_scalar();
        assert!((l - std::f32::consts::LN_2).abs() < 1e-7);
    }
    let mut moved = INIT;
    moved[1][0] += 0.1;
    let policy = Tiny::with(moved, &device);
    let (_, a) = d3po_step_loss(
        &policy,
        &reference,
        &sampler,
        side(&tw, &cond),
        side(&tl, &cond),
        2,
        1.0,
    )
    .unwrap();
    let (_, b) = d3po_step_loss(
        &policy,
        &reference,
        &sampler,
        side(&tl, &cond),
        side(&tw, &cond),
        2,
        1.0,
    )
    .unwrap();
    let (a, b): (Vec<f32>, Vec<f32>) = (
        a.into_data().try_to_vec().unwrap(),
        b.into_data().try_to_vec().unwrap(),
    );
    assert!(a.iter().any(|v| v.abs() > 1e-4), "{a:?}");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(*x, -*y);
    }
    // Gradient at step 3 against central finite differences.
    let loss_of = |p: &Tiny| {
        d3po_step_loss(
            p,
            &reference,
            &sampler,
            side(&tw, &cond),
            side(&tl, &cond),
            3,
            1.0,
        )
        .unwrap()
        .0
    };
    let make = |v: [[f32; 2]; 2]| Tiny::with(v, &device);
    common::finite_differences(moved, &make, &loss_of, 1e-3, "D3PO step 3");
    assert!(
        d3po_step_loss(
            &policy,
            &reference,
            &sampler,
            side(&tw, &cond),
            side(&tl, &cond),
            2,
            0.0
        )
        .is_err()
    );
    // A deterministic step (noise level 0) has no log-prob: refused.
    let ode = FlowSdeSampler::new(FlowGrid::new(5, 1.0).unwrap(), 0.0).unwrap();
    let t0 = roll(&reference, &ode, &cond, 3);
    let e = d3po_step_loss(
        &policy,
        &reference,
        &ode,
        side(&t0, &cond),
        side(&t0, &cond),
        1,
        1.0,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("stochastic") || e.contains("deterministic"),
        "{e}"
    );
}
