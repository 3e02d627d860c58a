//! Inference-time reward guidance on a flow whose velocity field is exact (data N(0, s²I)):
//! guidance raises the reward of the samples over plain sampling with the same noise and
//! steps, λ = 0 is plain sampling bit for bit, and the guidance pushes the right way for
//! `t: 1 → 0` (a reversed sign would lower the reward).
#![allow(clippy::unwrap_used)]

use align_backprop::reward_guided_sample;
use align_core::{Condition, Denoiser, Parameterization, test_device};
use align_samplers::{
    FlowEulerSampler, FlowGrid, FlowSdeSampler, RolloutBatch, RolloutConfig, Sampler, rollout,
};
use burn::tensor::Tensor;

const S2: f32 = 0.25;

/// The exact velocity of the linear path for data N(0, s² I):
/// `v = x_t (t − (1 − t) s²) / ((1 − t)² s² + t²)`.
struct GaussianFlow;
impl Denoiser for GaussianFlow {
    fn parameterization(&self) -> Parameterization {
        Parameterization::FlowVelocity
    }
    fn predict(&self, x: Tensor<4>, t: Tensor<1>, _c: &Condition) -> Tensor<4> {
        let b = x.dims()[0];
        let t = t.reshape([b, 1, 1, 1]);
        let one_minus = t.clone().neg().add_scalar(1.0);
        let num = t.clone() - one_minus.clone().mul_scalar(S2);
        let den = one_minus.powf_scalar(2.0).mul_scalar(S2) + t.powf_scalar(2.0);
        x * (num / den)
    }
}

/// Closeness of each 2-D sample to (1, 1).
fn reward(x: Tensor<4>) -> Tensor<1> {
    let b = x.dims()[0];
    (x.sub_scalar(1.0))
        .powf_scalar(2.0)
        .sum_dim(1)
        .reshape([b])
        .neg()
}

fn mean_reward(x: Tensor<4>) -> f64 {
    let v: f32 = reward(x).mean().into_scalar();
    f64::from(v)
}

#[test]
fn guidance_raises_the_reward_and_zero_guidance_is_plain_sampling() {
    let device = test_device().autodiff();
    let b = 256;
    let cond = Condition::new(Tensor::zeros([b, 1, 1], &device));
    let batch = RolloutBatch {
        condition: &cond,
        uncond: None,
        sample_ids: (0..b as u64).collect(),
        condition_ids: vec![0; b],
        group_ids: None,
        sample_shape: [2, 1, 1],
    };
    let config = RolloutConfig {
        seed: 3,
        ..RolloutConfig::default()
    };
    let samplers: Vec<Box<dyn Sampler>> = vec![
        Box::new(FlowEulerSampler::new(FlowGrid::new(20, 1.0).unwrap())),
        Box::new(FlowSdeSampler::new(FlowGrid::new(20, 1.0).unwrap(), 0.7).unwrap()),
    ];
    for sampler in samplers {
        let r = |x: Tensor<4>| Ok(reward(x));
        let plain = rollout(&GaussianFlow, sampler.as_ref(), &batch, &config).unwrap();
        let zero = reward_guided_sample(&GaussianFlow, sampler.as_ref(), &batch, &config, &r, 0.0)
            .unwrap();
        assert_eq!(
            zero.clone().into_data().try_to_vec::<f32>().unwrap(),
            plain
                .final_sample()
                .clone()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            "{}: λ = 0 must be plain sampling",
            sampler.name()
        );
        let base = mean_reward(plain.final_sample().clone());
        let guided =
            reward_guided_sample(&GaussianFlow, sampler.as_ref(), &batch, &config, &r, 0.05)
                .unwrap();
        let stronger =
            reward_guided_sample(&GaussianFlow, sampler.as_ref(), &batch, &config, &r, 0.15)
                .unwrap();
        let (g1, g2) = (mean_reward(guided), mean_reward(stronger));
        assert!(
            base < g1 && g1 < g2,
            "{}: reward {base:.3} plain, {g1:.3} at λ = 0.05, {g2:.3} at λ = 0.15",
            sampler.name()
        );
        // The reversed direction lowers it: descending the reward is the wrong sign.
        let wrong = |x: Tensor<4>| Ok(reward(x).neg());
        let lowered = reward_guided_sample(
            &GaussianFlow,
            sampler.as_ref(),
            &batch,
            &config,
            &wrong,
            0.05,
        )
        .unwrap();
        assert!(mean_reward(lowered) < base);
    }
    let r = |x: Tensor<4>| Ok(reward(x));
    let sampler: Box<dyn Sampler> = Box::new(FlowEulerSampler::new(FlowGrid::new(5, 1.0).unwrap()));
    assert!(
        reward_guided_sample(&GaussianFlow, sampler.as_ref(), &batch, &config, &r, -1.0).is_err()
    );
    let flat = |x: Tensor<4>| Ok(Tensor::<1>::zeros([x.dims()[0]], &x.device()));
    assert!(
        reward_guided_sample(&GaussianFlow, sampler.as_ref(), &batch, &config, &flat, 0.1).is_err()
    );
}
