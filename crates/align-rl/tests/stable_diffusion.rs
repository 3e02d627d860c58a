//! DDPO-IS end to end on a real-model topology: the tiny random Stable Diffusion 1.x fixture
//! (`fixtures/sd-tiny`, diffusers layout) with LoRA on the UNet attention, rolled out with
//! stochastic DDIM (η = 1) and CFG, decoded by its VAE, scored by the CLIP aesthetic predictor
//! of `fixtures/clip-tiny`, one PPO-clip update with AdamW: the loss is finite, the LoRA
//! factors move and every base weight (UNet, text encoder, VAE) stays bit-identical.

use std::collections::BTreeMap;

use align_core::{Condition, Trajectory, test_device};
use align_models::hf::fixtures_dir;
use align_models::{LoraConfig, StableDiffusion, apply_lora};
use align_rewards::{AestheticPredictor, Reward};
use align_rl::{Advantages, Objective, PolicyGradientInputs, policy_gradients};
use align_samplers::{RolloutBatch, RolloutConfig, rollout};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::AdamWConfig;
use burn::tensor::{Device, Tensor};

const PROMPTS: [&str; 2] = ["two red circles", "a photo of a cat"];

fn policy(device: &Device) -> StableDiffusion {
    let sd = StableDiffusion::load(&fixtures_dir().join("sd-tiny"), device).expect("sd-tiny");
    device.seed(3);
    let lora = LoraConfig::new()
        .with_rank(4)
        .with_targets(StableDiffusion::lora_targets());
    apply_lora(sd, &lora).expect("LoRA on the UNet attention")
}

fn encode(m: &StableDiffusion, ids: &[usize]) -> Result<(Condition, Option<Condition>), String> {
    let prompts: Vec<String> = ids.iter().map(|&i| PROMPTS[i].to_string()).collect();
    let c = m.encode_prompts(&prompts).map_err(|e| e.to_string())?;
    let u = m
        .encode_unconditional(ids.len())
        .map_err(|e| e.to_string())?;
    Ok((c, Some(u)))
}

/// Every parameter's values and whether it is trainable, by id.
struct Snapshot(BTreeMap<ParamId, (bool, Vec<f32>)>);
impl ModuleVisitor for Snapshot {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let values = param
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 parameter");
        self.0.insert(param.id, (param.is_require_grad(), values));
    }
}

fn snapshot(m: &StableDiffusion) -> BTreeMap<ParamId, (bool, Vec<f32>)> {
    let mut s = Snapshot(BTreeMap::new());
    m.visit(&mut s);
    s.0
}

#[test]
fn ddpo_is_update_on_the_tiny_sd_fixture_moves_lora_only() {
    let device = test_device().autodiff();
    let policy = policy(&device);
    let sampler = policy.scheduler.ddim(3, 1.0).expect("DDIM η = 1");
    let ids = vec![0, 1, 0, 1];
    let valid = policy.clone().no_grad();
    let (c, u) = encode(&valid, &ids).expect("encode");
    let trajectory: Trajectory = rollout(
        &valid,
        &sampler,
        &RolloutBatch {
            condition: &c,
            uncond: u.as_ref(),
            sample_ids: (0..ids.len() as u64).collect(),
            condition_ids: ids.clone(),
            group_ids: None,
            sample_shape: valid.latent_shape(16, 16).expect("latent shape"),
        },
        &RolloutConfig {
            seed: 1,
            guidance_scale: 5.0,
            ..RolloutConfig::default()
        },
    )
    .expect("rollout");
    assert_eq!(trajectory.num_steps(), 3);

    // Reward: the CLIP aesthetic predictor on the decoded images.
    let images = valid.decode(trajectory.latents[3].clone());
    assert_eq!(images.dims(), [4, 3, 16, 16]);
    let clip = fixtures_dir().join("clip-tiny");
    let reward =
        AestheticPredictor::load(&clip, &clip.join("aesthetic/model.safetensors"), &device)
            .expect("aesthetic predictor");
    let prompts: Vec<String> = ids.iter().map(|&i| PROMPTS[i].to_string()).collect();
    let scores = reward.score(&images, &prompts).expect("scores");
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / scores.len() as f64)
        .sqrt()
        .max(1e-8);
    let advantages: Vec<f64> = scores.iter().map(|s| (s - mean) / std).collect();
    assert!(advantages.iter().any(|a| a.abs() > 0.1), "{scores:?}");

    let before = snapshot(&policy);
    let steps: Vec<usize> = (0..3).collect();
    let (grads, stats) = policy_gradients(PolicyGradientInputs {
        policy: &policy,
        reference: None,
        sampler: &sampler,
        trajectory: &trajectory,
        advantages: Advantages::PerSample(&advantages),
        steps: &steps,
        encode: &encode,
        objective: Objective::PpoClip { clip_range: 1e-4 },
        kl: None,
    })
    .expect("DDPO-IS gradients");
    assert!(stats.loss.is_finite(), "{stats:?}");
    assert!(stats.max_ratio_deviation < 1e-4, "θ = θ_old: {stats:?}");
    let mut optim = AdamWConfig::new().init();
    let updated = optim.step(1e-3, policy, grads);
    let after = snapshot(&updated);

    assert_eq!(before.len(), after.len());
    let (mut trainable, mut moved, mut frozen) = (0, 0, 0);
    for (id, (grad, values)) in &before {
        let (_, new) = &after[id];
        if *grad {
            trainable += 1;
            if values != new {
                moved += 1;
            }
        } else {
            frozen += 1;
            assert_eq!(values, new, "a frozen base weight changed");
        }
    }
    assert!(
        trainable > 0 && frozen > trainable,
        "{trainable} trainable, {frozen} frozen"
    );
    // Fresh adapters have B = 0, so only the B factors get a gradient on the first step.
    assert!(
        moved * 2 >= trainable,
        "{moved} of {trainable} LoRA factors moved"
    );
}
