//! Rollouts: bit-exact replay from host-keyed noise, bit-exact re-scoring at θ = θ_old, and
//! classifier-free guidance.
#![allow(clippy::unwrap_used)]

mod common;

use align_core::{Denoiser, LogProbReduction, NoiseKey, Parameterization, noise_tensor};
use align_samplers::{
    FlowGrid, FlowSdeSampler, RolloutBatch, RolloutConfig, Sampler, SamplerConfig, cfg_combine,
    guided_predict, replay, rescore, rollout,
};
use burn::tensor::{Tensor, TensorData};
use common::{GaussianFlow, TinyMlp, assert_reproduced, condition, host1, host4};

const SHAPE: [usize; 3] = [1, 3, 2];

fn bits4(t: &Tensor<4>) -> Vec<u32> {
    host4(t).iter().map(|v| v.to_bits()).collect()
}

fn bits1(t: &Tensor<1>) -> Vec<u32> {
    host1(t).iter().map(|v| v.to_bits()).collect()
}

fn samplers() -> Vec<(Box<dyn Sampler + Send + Sync>, Parameterization)> {
    vec![
        (
            SamplerConfig::ddim(8, 1.0).build().unwrap(),
            Parameterization::Epsilon,
        ),
        (
            SamplerConfig::Ddpm {
                num_train_timesteps: 1000,
                beta_schedule: align_samplers::BetaSchedule::ddpm_linear(),
                num_steps: 8,
                spacing: align_samplers::TimestepSpacing::Trailing,
                variance: align_samplers::DdpmVariance::FixedSmall,
                clip_sample: Some(1.0),
            }
            .build()
            .unwrap(),
            Parameterization::VPrediction,
        ),
        (
            SamplerConfig::flow_sde(8, 0.7).build().unwrap(),
            Parameterization::FlowVelocity,
        ),
        (
            SamplerConfig::Cps {
                num_steps: 8,
                shift: 3.0,
                noise_level: 0.8,
                window: Some((1, 4)),
            }
            .build()
            .unwrap(),
            Parameterization::FlowVelocity,
        ),
    ]
}

#[test]
fn replay_rederives_every_noise_and_sample_bit_exactly() {
    let device = align_core::test_device();
    device.seed(1);
    for (sampler, parameterization) in samplers() {
        let model = TinyMlp::new(6, 4, parameterization, &device);
        let cond = condition(3, 4, 0.5, &device);
        let uncond = condition(3, 4, 0.0, &device);
        let batch = RolloutBatch {
            condition: &cond,
            uncond: Some(&uncond),
            sample_ids: vec![40, 41, 42],
            condition_ids: vec![0, 1, 2],
            group_ids: None,
            sample_shape: SHAPE,
        };
        let config = RolloutConfig {
            seed: 99,
            guidance_scale: 4.5,
            reduction: LogProbReduction::Mean,
            keep_means: true,
            keep_pred_x0: true,
            group_initial_noise: false,
        };
        let traj = rollout(&model, sampler.as_ref(), &batch, &config).unwrap();
        traj.validate().unwrap();
        let again = replay(&model, sampler.as_ref(), &traj, &cond, Some(&uncond)).unwrap();
        assert_eq!(traj.num_steps(), 8);
        for k in 0..=traj.num_steps() {
            assert_reproduced(
                &host4(&traj.latents[k]),
                &host4(&again.latents[k]),
                &format!("{} latent {k}", sampler.name()),
            );
        }
        for k in 0..traj.num_steps() {
            match (&traj.log_probs[k], &again.log_probs[k]) {
                (Some(a), Some(b)) => assert_reproduced(&host1(a), &host1(b), "replayed log-prob"),
                (None, None) => {}
                _ => panic!("{} step {k}: stochasticity differs", sampler.name()),
            }
        }
        // The initial latent is exactly the keyed noise, and each stochastic step's injected
        // noise, (x_{k+1} − μ_k)/σ_k, is the keyed noise of that step (up to f32 rounding).
        let keys: Vec<NoiseKey> = (0..3).map(|b| traj.initial_key(b)).collect();
        assert_eq!(
            bits4(&traj.latents[0]),
            bits4(&noise_tensor(&keys, SHAPE, &device).unwrap())
        );
        for k in traj.stochastic_steps() {
            let keys: Vec<NoiseKey> = (0..3).map(|b| traj.transition_key(b, k)).collect();
            let z = host4(&noise_tensor(&keys, SHAPE, &device).unwrap());
            let implied = host4(
                &(traj.latents[k + 1].clone() - traj.means[k].clone()).div_scalar(traj.stds[k]),
            );
            for (a, b) in implied.iter().zip(&z) {
                assert!(
                    (a - b).abs() < 2e-3 * (1.0 + b.abs()),
                    "{} step {k}: {a} vs {b}",
                    sampler.name()
                );
            }
        }
    }
}

#[test]
fn a_sample_does_not_depend_on_its_batch() {
    // Elementwise model: batch composition cannot change the arithmetic, so a sub-batch replays
    // to the very same bits (sample ids, not batch positions, key the noise).
    let device = align_core::test_device();
    let model = GaussianFlow::new(vec![0.2], vec![0.5]);
    let sampler = FlowSdeSampler::new(FlowGrid::new(6, 1.0).unwrap(), 0.7).unwrap();
    let cond = condition(4, 1, 0.0, &device);
    let batch = RolloutBatch {
        condition: &cond,
        uncond: None,
        sample_ids: vec![7, 8, 9, 10],
        condition_ids: vec![0, 0, 1, 1],
        group_ids: None,
        sample_shape: [1, 2, 2],
    };
    let full = rollout(&model, &sampler, &batch, &RolloutConfig::default()).unwrap();
    let sub = full.select(&[2, 0]).unwrap();
    let cond2 = condition(2, 1, 0.0, &device);
    let again = replay(&model, &sampler, &sub, &cond2, None).unwrap();
    for k in 0..=6 {
        assert_reproduced(
            &host4(&sub.latents[k]),
            &host4(&again.latents[k]),
            &format!("sub-batch latent {k}"),
        );
    }
}

#[test]
fn rescoring_at_theta_old_reproduces_rollout_log_probs_bit_exactly() {
    let device = align_core::test_device();
    device.seed(2);
    for (sampler, parameterization) in samplers() {
        let model = TinyMlp::new(6, 4, parameterization, &device);
        let cond = condition(2, 4, 1.0, &device);
        let uncond = condition(2, 4, 0.0, &device);
        let batch = RolloutBatch {
            condition: &cond,
            uncond: Some(&uncond),
            sample_ids: vec![0, 1],
            condition_ids: vec![0, 0],
            group_ids: None,
            sample_shape: SHAPE,
        };
        let config = RolloutConfig {
            seed: 5,
            guidance_scale: 3.0,
            ..RolloutConfig::default()
        };
        let traj = rollout(&model, sampler.as_ref(), &batch, &config).unwrap();
        assert!(!traj.stochastic_steps().is_empty());
        for k in traj.stochastic_steps() {
            let out = rescore(&model, sampler.as_ref(), &traj, k, &cond, Some(&uncond)).unwrap();
            let lp = out.log_prob.unwrap();
            let stored = traj.log_probs[k].clone().unwrap();
            assert_reproduced(
                &host1(&lp),
                &host1(&stored),
                &format!("{} step {k}", sampler.name()),
            );
            // Hence the PPO ratio is exactly 1 (to 1e-6 on autotuned GPU backends).
            let ratio = host1(&(lp - stored).exp());
            assert_reproduced(&ratio, &vec![1.0; ratio.len()], "PPO ratio at θ = θ_old");
        }
        // A different guidance scale in the recompute breaks the equality (why train.cfg matters).
        let mut wrong = traj.clone();
        wrong.guidance_scale = 1.0;
        let k = traj.stochastic_steps()[0];
        let lp = rescore(&model, sampler.as_ref(), &wrong, k, &cond, Some(&uncond))
            .unwrap()
            .log_prob
            .unwrap();
        assert_ne!(bits1(&lp), bits1(traj.log_probs[k].as_ref().unwrap()));
    }
}

#[test]
fn rescored_log_prob_is_differentiable_through_the_mean() {
    let device = align_core::test_device().autodiff();
    device.seed(3);
    let model = TinyMlp::new(6, 4, Parameterization::FlowVelocity, &device);
    let sampler = SamplerConfig::flow_sde(4, 0.7).build().unwrap();
    let cond = condition(2, 4, 1.0, &device);
    let batch = RolloutBatch {
        condition: &cond,
        uncond: None,
        sample_ids: vec![0, 1],
        condition_ids: vec![0, 1],
        group_ids: None,
        sample_shape: SHAPE,
    };
    let traj = rollout(&model, sampler.as_ref(), &batch, &RolloutConfig::default()).unwrap();
    let out = rescore(&model, sampler.as_ref(), &traj, 1, &cond, None).unwrap();
    let grads = out.log_prob.unwrap().sum().backward();
    let gp = burn::optim::GradientsParams::from_grads(grads, &model);
    assert_eq!(
        gp.len(),
        6,
        "every weight and bias of the MLP gets a gradient"
    );
}

#[test]
fn guidance_combines_batched_or_not_and_checks_its_inputs() {
    let device = align_core::test_device();
    device.seed(4);
    let model = TinyMlp::new(6, 4, Parameterization::Epsilon, &device);
    let x = noise_tensor(
        &[NoiseKey::initial(0, 0), NoiseKey::initial(0, 1)],
        SHAPE,
        &device,
    )
    .unwrap();
    let t = Tensor::<1>::from_data(TensorData::new(vec![500.0f32, 500.0], [2]), &device);
    let cond = condition(2, 4, 1.0, &device);
    let uncond = condition(2, 4, 0.0, &device);
    let plain = model.predict(x.clone(), t.clone(), &cond);
    let s1 = guided_predict(&model, x.clone(), t.clone(), &cond, None, 1.0).unwrap();
    assert_reproduced(&host4(&plain), &host4(&s1), "guidance scale 1");
    let guided = guided_predict(&model, x.clone(), t.clone(), &cond, Some(&uncond), 5.0).unwrap();
    let by_hand = cfg_combine(
        model.predict(x.clone(), t.clone(), &uncond),
        plain.clone(),
        5.0,
    );
    for (a, b) in host4(&guided).iter().zip(host4(&by_hand).iter()) {
        assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
    // Hand value of the combination: u + s(c − u).
    let u = Tensor::<4>::from_data(TensorData::new(vec![1.0f32], [1, 1, 1, 1]), &device);
    let c = Tensor::<4>::from_data(TensorData::new(vec![3.0f32], [1, 1, 1, 1]), &device);
    assert_eq!(host4(&cfg_combine(u, c, 4.5)), vec![10.0]);
    assert!(guided_predict(&model, x.clone(), t.clone(), &cond, None, 2.0).is_err());
    assert!(
        guided_predict(
            &model,
            x.clone(),
            t.clone(),
            &condition(3, 4, 0.0, &device),
            None,
            1.0
        )
        .is_err()
    );
    assert!(guided_predict(&model, x, t, &cond, Some(&uncond), f64::NAN).is_err());
}

#[test]
fn rollout_reports_bad_batches_and_non_finite_latents() {
    let device = align_core::test_device();
    let sampler = SamplerConfig::flow_sde(3, 0.7).build().unwrap();
    let model = GaussianFlow::new(vec![0.0], vec![f32::NAN]);
    let cond = condition(1, 1, 0.0, &device);
    let mut batch = RolloutBatch {
        condition: &cond,
        uncond: None,
        sample_ids: vec![0],
        condition_ids: vec![0],
        group_ids: None,
        sample_shape: [1, 1, 1],
    };
    let err = rollout(&model, sampler.as_ref(), &batch, &RolloutConfig::default()).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
    batch.condition_ids = vec![0, 1];
    assert!(rollout(&model, sampler.as_ref(), &batch, &RolloutConfig::default()).is_err());
}

/// G²RPO's shared start: with `group_initial_noise` the samples of a group start from the same
/// noise and stay identical through the ODE steps before the window, then differ after the
/// window's one SDE step; other groups start elsewhere.
#[test]
fn group_initial_noise_shares_the_prefix_until_the_stochastic_step() {
    use align_core::Denoiser;
    struct Linear;
    impl Denoiser for Linear {
        fn parameterization(&self) -> align_core::Parameterization {
            align_core::Parameterization::FlowVelocity
        }
        fn predict(
            &self,
            x: burn::tensor::Tensor<4>,
            _t: burn::tensor::Tensor<1>,
            _c: &align_core::Condition,
        ) -> burn::tensor::Tensor<4> {
            x.mul_scalar(0.5)
        }
    }
    let device = align_core::test_device();
    let cond = align_core::Condition::new(burn::tensor::Tensor::zeros([4, 1, 1], &device));
    let sampler = FlowSdeSampler::new(FlowGrid::new(4, 1.0).unwrap(), 0.7)
        .unwrap()
        .with_window(Some(2..3))
        .unwrap();
    let traj = rollout(
        &Linear,
        &sampler,
        &RolloutBatch {
            condition: &cond,
            uncond: None,
            sample_ids: vec![10, 11, 12, 13],
            condition_ids: vec![0, 0, 1, 1],
            group_ids: None,
            sample_shape: [1, 2, 2],
        },
        &RolloutConfig {
            group_initial_noise: true,
            ..RolloutConfig::default()
        },
    )
    .unwrap();
    let rows = |k: usize| -> Vec<Vec<f32>> {
        let v = traj.latents[k]
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        v.chunks(4).map(|c| c.to_vec()).collect()
    };
    for k in 0..=2 {
        let r = rows(k);
        assert_eq!(r[0], r[1], "group 0 shares latent {k}");
        assert_eq!(r[2], r[3], "group 1 shares latent {k}");
        assert_ne!(r[0], r[2], "groups differ");
    }
    let after = rows(3);
    assert_ne!(after[0], after[1], "the SDE step branches the group");
    // The first sample of each group keeps its own noise: as without sharing.
    let own = rollout(
        &Linear,
        &sampler,
        &RolloutBatch {
            condition: &cond,
            uncond: None,
            sample_ids: vec![10, 11, 12, 13],
            condition_ids: vec![0, 0, 1, 1],
            group_ids: None,
            sample_shape: [1, 2, 2],
        },
        &RolloutConfig::default(),
    )
    .unwrap();
    let own0: Vec<f32> = own.latents[0]
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(rows(0)[0], own0[..4].to_vec());
    assert_eq!(rows(0)[2], own0[8..12].to_vec());
}
