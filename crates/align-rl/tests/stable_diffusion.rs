//! DDPO-IS end to end on a real-model topology: the tiny random Stable Diffusion 1.x fixture
//! (`fixtures/sd-tiny`, diffusers layout) with LoRA on the UNet attention, rolled out with
//! stochastic DDIM (η = 1) and CFG, decoded by its VAE, scored by the CLIP aesthetic predictor
//! of `fixtures/clip-tiny`, one PPO-clip update with AdamW: the loss is finite, the LoRA
//! factors move and every base weight (UNet, text encoder, VAE) stays bit-identical. The same
//! for Flow-GRPO on the tiny SD3.5 pipeline (below).

use std::collections::BTreeMap;

use align_core::{Condition, Trajectory, test_device};
use align_models::hf::fixtures_dir;
use align_models::sd3::{Sd3Options, StableDiffusion3};
use align_models::{LoraConfig, StableDiffusion, apply_lora};
use align_rewards::{AestheticPredictor, Reward};
use align_rl::{Advantages, Objective, PolicyGradientInputs, policy_gradients};
use align_samplers::{FlowSdeSampler, RolloutBatch, RolloutConfig, rollout};
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

fn snapshot<M: Module>(m: &M) -> BTreeMap<ParamId, (bool, Vec<f32>)> {
    let mut s = Snapshot(BTreeMap::new());
    m.visit(&mut s);
    s.0
}

/// `(trainable, moved, frozen)` parameter counts between two snapshots; panics if a frozen
/// (base) weight changed.
fn lora_only_moved(
    before: &BTreeMap<ParamId, (bool, Vec<f32>)>,
    after: &BTreeMap<ParamId, (bool, Vec<f32>)>,
) -> (usize, usize, usize) {
    assert_eq!(before.len(), after.len());
    let (mut trainable, mut moved, mut frozen) = (0, 0, 0);
    for (id, (grad, values)) in before {
        let (_, new) = &after[id];
        if *grad {
            trainable += 1;
            moved += usize::from(values != new);
        } else {
            frozen += 1;
            assert_eq!(values, new, "a frozen base weight changed");
        }
    }
    (trainable, moved, frozen)
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
        micro_batch: None,
    })
    .expect("DDPO-IS gradients");
    assert!(stats.loss.is_finite(), "{stats:?}");
    assert!(stats.max_ratio_deviation < 1e-4, "θ = θ_old: {stats:?}");
    let mut optim = AdamWConfig::new().init();
    let updated = optim.step(1e-3, policy, grads);
    let after = snapshot(&updated);

    let (trainable, moved, frozen) = lora_only_moved(&before, &after);
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

/// Gradients of every trainable parameter, flattened in visiting order.
struct FlatGrads<'a>(&'a burn::optim::GradientsParams, Vec<f32>);
impl ModuleVisitor for FlatGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.0.get::<D>(param.id) {
            self.1
                .extend(g.into_data().try_to_vec::<f32>().expect("f32 gradient"));
        }
    }
}

/// `rollout_batch` and `train_micro_batch` (the memory knobs of one GPU): a DDPO-IS iteration
/// on the tiny SD fixture whose 4 samples are rolled out 2 at a time and differentiated 1 at a
/// time gets the trajectory and the gradient of the all-at-once iteration (to f32 rounding).
#[test]
fn rollout_and_train_micro_batches_give_the_whole_batch_gradient() {
    let device = test_device().autodiff();
    let policy = policy(&device);
    // Non-zero B factors, so that every factor (A too) gets a gradient.
    let mut weights = align_models::lora_weights(&policy, 4.0).expect("factors");
    for f in weights.factors.values_mut() {
        let dims: [usize; 2] = f.b.shape().dims();
        f.b = Tensor::<2>::random(dims, burn::tensor::Distribution::Normal(0.0, 0.2), &device)
            .into_data();
    }
    let base = StableDiffusion::load(&fixtures_dir().join("sd-tiny"), &device).expect("sd-tiny");
    let policy = align_models::apply_lora_weights(base, &weights).expect("adapter");
    let sampler = policy.scheduler.ddim(3, 1.0).expect("DDIM η = 1");
    let ids = [0, 1, 0, 1];
    let valid = policy.clone().no_grad();
    let shape = valid.latent_shape(16, 16).expect("latent shape");
    let roll = |range: std::ops::Range<usize>| {
        let chunk = &ids[range.clone()];
        let (c, u) = encode(&valid, chunk).expect("encode");
        rollout(
            &valid,
            &sampler,
            &RolloutBatch {
                condition: &c,
                uncond: u.as_ref(),
                sample_ids: range.map(|i| i as u64).collect(),
                condition_ids: chunk.to_vec(),
                group_ids: None,
                sample_shape: shape,
            },
            &RolloutConfig {
                seed: 1,
                guidance_scale: 5.0,
                ..RolloutConfig::default()
            },
        )
        .expect("rollout")
    };
    let whole = roll(0..4);
    let chunked = Trajectory::concat(&[roll(0..2), roll(2..4)]).expect("concat");
    assert_eq!(chunked.sample_ids, whole.sample_ids);
    let rel = |a: Vec<f32>, b: Vec<f32>| {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    };
    for k in 0..4 {
        let err = rel(
            chunked.latents[k]
                .clone()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            whole.latents[k]
                .clone()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
        );
        eprintln!("latents[{k}]: relative error {err:.2e}");
        assert!(err < 1e-5, "latents[{k}]: {err}");
    }
    let advantages = [1.0, -0.5, 0.25, -0.75];
    let steps: Vec<usize> = (0..3).collect();
    let grads = |trajectory: &Trajectory, micro_batch| {
        let (g, stats) = policy_gradients(PolicyGradientInputs {
            policy: &policy,
            reference: None,
            sampler: &sampler,
            trajectory,
            advantages: Advantages::PerSample(&advantages),
            steps: &steps,
            encode: &encode,
            objective: Objective::PpoClip { clip_range: 1e-4 },
            kl: None,
            micro_batch,
        })
        .expect("DDPO-IS gradients");
        let mut flat = FlatGrads(&g, Vec::new());
        policy.visit(&mut flat);
        (flat.1, stats)
    };
    let (reference, s_all) = grads(&whole, None);
    assert!(!reference.is_empty());
    for micro in [1, 3] {
        let (g, s) = grads(&chunked, Some(micro));
        let err = rel(g, reference.clone());
        eprintln!("micro {micro}: max relative gradient error {err:.2e}");
        // Bitwise-reproducible backends (flex, ndarray) sum in the same order whatever the
        // chunking, to 1e-5; wgpu's autotuned kernels pick their reductions by batch size
        // (measured 4.4e-5 on Mesa lavapipe).
        let tolerance = if bitwise() { 1e-5 } else { 1e-4 };
        assert!(
            err < tolerance,
            "micro {micro}: max relative gradient error {err}"
        );
        assert!((s.loss - s_all.loss).abs() < 1e-6 * (1.0 + s_all.loss.abs()));
    }
}

// Flow-GRPO end to end on a real flow-matching topology: the tiny random Stable Diffusion 3.5
// pipeline (`fixtures/sd3-tiny-pipeline`, diffusers layout: MMDiT with RMS q/k norms and a
// dual-attention block, two CLIP towers, T5, an SD3-style VAE) with LoRA on the joint
// attention (Flow-GRPO's targets), rolled out with the Flow-GRPO SDE on SD3's shifted sigmas
// and CFG, decoded by the VAE, scored by the CLIP aesthetic predictor, group-normalised
// advantages, one PPO-clip update with AdamW: the ratio is exactly 1 at θ_old, the LoRA
// factors move and every base weight (transformer, text towers, VAE) stays bit-identical.

const SD3_PROMPTS: [&str; 2] = ["a photo of a cat", "a red car on the road at night"];

fn sd3_policy(device: &Device) -> StableDiffusion3 {
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

fn sd3_encode(
    m: &StableDiffusion3,
    ids: &[usize],
) -> Result<(Condition, Option<Condition>), String> {
    let prompts: Vec<String> = ids.iter().map(|&i| SD3_PROMPTS[i].to_string()).collect();
    let c = m.encode_prompts(&prompts).map_err(|e| e.to_string())?;
    let u = m
        .encode_unconditional(ids.len())
        .map_err(|e| e.to_string())?;
    Ok((c, Some(u)))
}

#[test]
fn flow_grpo_update_on_the_tiny_sd3_fixture_moves_lora_only() {
    let device = test_device().autodiff();
    let policy = sd3_policy(&device);
    // Flow-GRPO: 3 SDE steps (noise level 0.7) on SD3's shift-3 sigmas, CFG 4.5, groups of 2.
    let grid = policy.scheduler.grid(3).expect("grid");
    let sampler = FlowSdeSampler::new(grid, 0.7).expect("flow SDE");
    let ids = vec![0, 0, 1, 1];
    let valid = policy.clone().no_grad();
    let (c, u) = sd3_encode(&valid, &ids).expect("encode");
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
    let prompts: Vec<String> = ids.iter().map(|&i| SD3_PROMPTS[i].to_string()).collect();
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
        encode: &sd3_encode,
        objective: Objective::PpoClip { clip_range: 1e-4 },
        kl: None,
        micro_batch: None,
    })
    .expect("Flow-GRPO gradients");
    assert!(stats.loss.is_finite(), "{stats:?}");
    if bitwise() {
        assert_eq!(
            stats.max_ratio_deviation, 0.0,
            "the ratio is exactly 1 at θ = θ_old: {stats:?}"
        );
    } else {
        // `Backend::is_bitwise_reproducible`: 1 ± 1e-5 on wgpu and CUDA (measured 9.5e-7).
        assert!(stats.max_ratio_deviation < 1e-5, "{stats:?}");
    }
    let mut optim = AdamWConfig::new().init();
    let updated = optim.step(1e-3, policy, grads);
    let after = snapshot(&updated);

    let (trainable, moved, frozen) = lora_only_moved(&before, &after);
    // 3 blocks × 8 projections (the last block has no `to_add_out`) × 2 factors.
    assert_eq!(trainable, (3 * 8 - 1) * 2);
    assert!(frozen > trainable, "{trainable} trainable, {frozen} frozen");
    // Fresh adapters have B = 0, so only the B factors get a gradient on the first step.
    assert!(
        moved * 2 >= trainable,
        "{moved} of {trainable} LoRA factors moved"
    );
}

/// Whether the test backend (`BURN_DEVICE`) computes bit for bit the same in rollout and
/// re-scoring (flex, ndarray) — see `align_core::Backend::is_bitwise_reproducible`.
fn bitwise() -> bool {
    align_core::resolve_backend(None)
        .expect("backend")
        .is_bitwise_reproducible()
}
