//! Flow-GRPO end to end on a real flow-matching topology: the tiny random Stable Diffusion 3.5
//! pipeline (`fixtures/sd3-tiny-pipeline`, diffusers layout: MMDiT with RMS q/k norms and a
//! dual-attention block, two CLIP towers, T5, an SD3-style VAE) with LoRA on the joint
//! attention (Flow-GRPO's targets), rolled out with the Flow-GRPO SDE on SD3's shifted sigmas
//! and CFG, decoded by the VAE, scored by the CLIP aesthetic predictor, group-normalised
//! advantages, one PPO-clip update with AdamW: the ratio is exactly 1 at θ_old, the LoRA
//! factors move and every base weight (transformer, text towers, VAE) stays bit-identical.

use std::collections::BTreeMap;

use align_core::{Condition, Trajectory, test_device};
use align_models::hf::fixtures_dir;
use align_models::sd3::{Sd3Options, StableDiffusion3};
use align_models::{LoraConfig, apply_lora};
use align_rewards::{AestheticPredictor, Reward};
use align_rl::{Advantages, Objective, PolicyGradientInputs, policy_gradients};
use align_samplers::{FlowSdeSampler, RolloutBatch, RolloutConfig, rollout};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::AdamWConfig;
use burn::tensor::{Device, Tensor};

const PROMPTS: [&str; 2] = ["a photo of a cat", "a red car on the road at night"];

fn policy(device: &Device) -> StableDiffusion3 {
    let options = Sd3Options {
        text_encoder_3: true,
        max_sequence_length: 16,
    };
    let sd3 =
        StableDiffusion3::load_with(&fixtures_dir().join("sd3-tiny-pipeline"), &options, device)
            .expect("sd3-tiny-pipeline");
    device.seed(3);
    let lora = LoraConfig::new()
        .with_rank(4)
        .with_targets(StableDiffusion3::lora_targets());
    apply_lora(sd3, &lora).expect("LoRA on the joint attention")
}

fn encode(m: &StableDiffusion3, ids: &[usize]) -> Result<(Condition, Option<Condition>), String> {
    let prompts: Vec<String> = ids.iter().map(|&i| PROMPTS[i].to_string()).collect();
    let c = m.encode_prompts(&prompts).map_err(|e| e.to_string())?;
    let u = m
        .encode_unconditional(ids.len())
        .map_err(|e| e.to_string())?;
    Ok((c, Some(u)))
}

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

fn snapshot(m: &StableDiffusion3) -> BTreeMap<ParamId, (bool, Vec<f32>)> {
    let mut s = Snapshot(BTreeMap::new());
    m.visit(&mut s);
    s.0
}

#[test]
fn flow_grpo_update_on_the_tiny_sd3_fixture_moves_lora_only() {
    let device = test_device().autodiff();
    let policy = policy(&device);
    // Flow-GRPO: 3 SDE steps (noise level 0.7) on SD3's shift-3 sigmas, CFG 4.5, groups of 2.
    let grid = policy.scheduler.grid(3).expect("grid");
    let sampler = FlowSdeSampler::new(grid, 0.7).expect("flow SDE");
    let ids = vec![0, 0, 1, 1];
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
            group_ids: Some(vec![0, 0, 1, 1]),
            sample_shape: valid.latent_shape(16, 16).expect("latent shape"),
        },
        &RolloutConfig {
            seed: 1,
            guidance_scale: 4.5,
            ..RolloutConfig::default()
        },
    )
    .expect("rollout");
    assert_eq!(trajectory.num_steps(), 3);

    let images = valid.decode(trajectory.latents[3].clone());
    assert_eq!(images.dims(), [4, 3, 16, 16]);
    let clip = fixtures_dir().join("clip-tiny");
    let reward =
        AestheticPredictor::load(&clip, &clip.join("aesthetic/model.safetensors"), &device)
            .expect("aesthetic predictor");
    let prompts: Vec<String> = ids.iter().map(|&i| PROMPTS[i].to_string()).collect();
    let scores = reward.score(&images, &prompts).expect("scores");
    // GRPO: advantages normalised within each prompt's group of 2.
    let advantages: Vec<f64> = scores
        .chunks(2)
        .flat_map(|g| {
            let mean = (g[0] + g[1]) / 2.0;
            let std = ((g[0] - mean).powi(2) + (g[1] - mean).powi(2)).sqrt() / 2f64.sqrt();
            g.iter()
                .map(move |s| (s - mean) / std.max(1e-8))
                .collect::<Vec<_>>()
        })
        .collect();
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
        micro_batch: None,
    })
    .expect("Flow-GRPO gradients");
    assert!(stats.loss.is_finite(), "{stats:?}");
    assert_eq!(
        stats.max_ratio_deviation, 0.0,
        "the ratio is exactly 1 at θ = θ_old: {stats:?}"
    );
    let mut optim = AdamWConfig::new().init();
    let updated = optim.step(1e-3, policy, grads);
    let after = snapshot(&updated);

    assert_eq!(before.len(), after.len());
    let (mut trainable, mut moved, mut frozen) = (0, 0, 0);
    for (id, (grad, values)) in &before {
        let (_, new) = &after[id];
        if *grad {
            trainable += 1;
            moved += usize::from(values != new);
        } else {
            frozen += 1;
            assert_eq!(values, new, "a frozen base weight changed");
        }
    }
    // 3 blocks × 8 projections (the last block has no `to_add_out`) × 2 factors.
    assert_eq!(trainable, (3 * 8 - 1) * 2);
    assert!(frozen > trainable, "{trainable} trainable, {frozen} frozen");
    // Fresh adapters have B = 0, so only the B factors get a gradient on the first step.
    assert!(
        moved * 2 >= trainable,
        "{moved} of {trainable} LoRA factors moved"
    );
}
