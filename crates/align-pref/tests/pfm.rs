//! Preference Flow Matching on a toy: winners are the losers shifted by `m`; a flow with a
//! learnable constant velocity must learn `v = m` (the loss's minimiser) and transport a base
//! sample by `m`. Also the loss value by hand and its gradient.
#![allow(clippy::unwrap_used)]

use align_core::{Condition, Denoiser, NoiseKey, Parameterization, noise_tensor, test_device};
use align_pref::{ResidualFlow, pfm_loss, pfm_transport};
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};

/// `v = b` per channel (plus `0·x` so the output has x's shape).
#[derive(Module, Debug)]
struct Shift {
    b: Param<Tensor<1>>,
}

impl Denoiser for Shift {
    fn parameterization(&self) -> Parameterization {
        Parameterization::FlowVelocity
    }
    fn predict(&self, x: Tensor<4>, _t: Tensor<1>, _c: &Condition) -> Tensor<4> {
        x.zeros_like() + self.b.val().reshape([1, 2, 1, 1])
    }
}

fn noise(salt: u64, b: usize, device: &Device) -> Tensor<4> {
    let keys: Vec<NoiseKey> = (0..b as u64).map(|i| NoiseKey::initial(salt, i)).collect();
    noise_tensor(&keys, [2, 1, 1], device).unwrap()
}

#[test]
fn pfm_learns_the_shift_and_transports_by_it() {
    let device = test_device().autodiff();
    let b = 64;
    let cond = Condition::new(Tensor::zeros([b, 1, 1], &device));
    let shift = Tensor::<1>::from_floats([0.7, -0.4], &device).reshape([1, 2, 1, 1]);
    let mut flow = Shift {
        b: Param::from_tensor(Tensor::zeros([2], &device)),
    };
    // Value by hand at b = 0: mean ‖0 − m‖² over 2 channels = (0.49 + 0.16) / 2.
    let losers = noise(1, b, &device);
    let winners = losers.clone() + shift.clone();
    let taus: Vec<f64> = (0..b).map(|i| i as f64 / (b - 1) as f64).collect();
    let l: f32 = pfm_loss(&flow, winners.clone(), losers.clone(), &taus, &cond)
        .unwrap()
        .into_scalar();
    assert!((l - 0.325).abs() < 1e-6, "{l}");
    let mut adam = AdamConfig::new().init();
    for it in 0..200u64 {
        let losers = noise(100 + it, b, &device);
        let winners = losers.clone() + shift.clone();
        let loss = pfm_loss(&flow, winners, losers, &taus, &cond).unwrap();
        let g = GradientsParams::from_grads(loss.backward(), &flow);
        flow = adam.step(0.05, flow, g);
    }
    let learned: Vec<f32> = flow.b.val().into_data().try_to_vec().unwrap();
    assert!(
        (learned[0] - 0.7).abs() < 0.02 && (learned[1] + 0.4).abs() < 0.02,
        "{learned:?}"
    );
    let y = noise(7, b, &device);
    let moved = pfm_transport(&flow.clone().no_grad(), y.clone(), 10, &cond).unwrap();
    let d: Vec<f32> = (moved - y).mean_dim(0).into_data().try_to_vec().unwrap();
    assert!(
        (d[0] - 0.7).abs() < 0.02 && (d[1] + 0.4).abs() < 0.02,
        "{d:?}"
    );
    assert!(pfm_transport(&flow, noise(1, b, &device), 0, &cond).is_err());
    assert!(
        pfm_loss(
            &flow,
            noise(1, b, &device),
            noise(2, b, &device),
            &[1.5; 64],
            &cond
        )
        .is_err()
    );
}

fn shift(values: [f32; 2], device: &Device) -> Shift {
    Shift {
        b: Param::from_tensor(Tensor::from_floats(values, device)),
    }
}

/// `ResidualFlow` predicts `D_φ − D_ref` (here `b_φ − b_ref` per channel, computed by hand),
/// transports by exactly nothing when the two models agree, and sends gradients to the
/// trainable model only: the loss gradient on `b_φ` is the closed form `2 (b_φ − b_ref − m)`
/// averaged over channels, the reference gets none.
#[test]
fn residual_flow_is_the_difference_and_trains_only_the_copy() {
    let device = test_device().autodiff();
    let b = 8;
    let cond = Condition::new(Tensor::zeros([b, 1, 1], &device));
    let trainable = shift([0.5, 0.25], &device);
    let reference = shift([0.2, -0.5], &device);
    let flow = ResidualFlow {
        trainable: &trainable,
        reference: &reference,
        reference_condition: &cond,
    };
    let x = noise(3, b, &device);
    let t = Tensor::<1>::zeros([b], &device);
    let v: Vec<f32> = flow
        .predict(x.clone(), t, &cond)
        .mean_dim(0)
        .into_data()
        .try_to_vec()
        .unwrap();
    assert!(
        (v[0] - 0.3).abs() < 1e-6 && (v[1] - 0.75).abs() < 1e-6,
        "{v:?}"
    );

    // Equal models: the flow is zero and the transport the identity, bit for bit.
    let same = ResidualFlow {
        trainable: &reference,
        reference: &reference,
        reference_condition: &cond,
    };
    let moved = pfm_transport(&same, x.clone(), 5, &cond).unwrap();
    assert_eq!(
        moved.into_data().try_to_vec::<f32>().unwrap(),
        x.clone().into_data().try_to_vec::<f32>().unwrap()
    );

    // Gradient: L = mean over (B, 2 channels) of (b_φ − b_ref − m)², m = (0.1, 0.2) for every
    // pair, so dL/db_φ[c] = 2 (b_φ[c] − b_ref[c] − m[c]) / 2.
    let m = Tensor::<1>::from_floats([0.1, 0.2], &device).reshape([1, 2, 1, 1]);
    let losers = noise(4, b, &device);
    let winners = losers.clone() + m;
    let taus: Vec<f64> = (0..b).map(|i| i as f64 / b as f64).collect();
    let loss = pfm_loss(&flow, winners, losers, &taus, &cond).unwrap();
    let grads = loss.backward();
    let g: Vec<f32> = trainable
        .b
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_to_vec()
        .unwrap();
    let expected = [0.3 - 0.1, 0.75 - 0.2];
    for (got, want) in g.iter().zip(expected) {
        assert!((got - want).abs() < 1e-5, "{g:?} vs {expected:?}");
    }
    assert!(reference.b.grad(&grads).is_none());
}
