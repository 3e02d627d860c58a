//! Preference Flow Matching on a toy: winners are the losers shifted by `m`; a flow with a
//! learnable constant velocity must learn `v = m` (the loss's minimiser) and transport a base
//! sample by `m`. Also the loss value by hand and its gradient.
#![allow(clippy::unwrap_used)]

use align_core::{Condition, Denoiser, NoiseKey, Parameterization, noise_tensor, test_device};
use align_pref::{pfm_loss, pfm_transport};
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
