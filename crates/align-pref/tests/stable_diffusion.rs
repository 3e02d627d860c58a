//! Diffusion-DPO end to end on a real-model topology: the tiny random Stable Diffusion 1.x
//! fixture (`fixtures/sd-tiny`, diffusers layout) with LoRA on the UNet attention. The
//! preference pair is given as images and encoded by the VAE, as user-supplied preference data
//! is; the reference is the policy with its adapters off. At initialisation the loss is exactly
//! ln 2; one AdamW step moves the LoRA factors and leaves every base weight bit-identical. The
//! same for the flow-matching form on the tiny SD3.5 pipeline (below).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use align_core::Denoiser;
use align_core::{NoiseKey, noise_tensor, test_device};
use align_models::hf::fixtures_dir;
use align_models::sd3::{Sd3Options, StableDiffusion3};
use align_models::{LoraConfig, StableDiffusion, apply_lora, with_lora_scale};
use align_pref::{DIFFUSION_DPO_BETA, DpoBatch, NoiseLevels, diffusion_dpo_loss};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};

struct Snapshot(BTreeMap<ParamId, (bool, Vec<f32>)>);
impl ModuleVisitor for Snapshot {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let values = param.val().into_data().try_to_vec::<f32>().unwrap();
        self.0.insert(param.id, (param.is_require_grad(), values));
    }
}

fn snapshot<M: Module>(m: &M) -> BTreeMap<ParamId, (bool, Vec<f32>)> {
    let mut s = Snapshot(BTreeMap::new());
    m.visit(&mut s);
    s.0
}

/// One Diffusion-DPO step from `policy = reference` (adapters off): the loss is exactly ln 2,
/// one AdamW step moves at least half of the LoRA factors and no base weight, and afterwards
/// the loss is finite and no longer ln 2.
fn dpo_step_moves_lora_only<'a, M: Module + Denoiser>(
    policy: M,
    reference: &M,
    batch: &dyn Fn() -> DpoBatch<'a>,
) {
    let out = diffusion_dpo_loss(&policy, reference, batch(), DIFFUSION_DPO_BETA).unwrap();
    let loss: f32 = out.loss.clone().into_scalar();
    assert!(
        (loss - std::f32::consts::LN_2).abs() < 1e-6,
        "policy = reference gives ln 2, got {loss}"
    );
    let before = snapshot(&policy);
    let grads = GradientsParams::from_grads(out.loss.backward(), &policy);
    let mut optim = AdamWConfig::new().init();
    let updated = optim.step(1e-3, policy, grads);
    let after = snapshot(&updated);
    let (mut trainable, mut moved) = (0, 0);
    for (id, (grad, values)) in &before {
        let (_, new) = &after[id];
        if *grad {
            trainable += 1;
            moved += usize::from(values != new);
        } else {
            assert_eq!(values, new, "a frozen base weight changed");
        }
    }
    assert!(
        trainable > 0 && moved * 2 >= trainable,
        "{moved}/{trainable}"
    );
    // After the step the policy differs from the reference and the loss is finite, not ln 2.
    let out = diffusion_dpo_loss(&updated, reference, batch(), DIFFUSION_DPO_BETA).unwrap();
    let loss: f32 = out.loss.into_scalar();
    assert!(loss.is_finite());
    assert!((loss - std::f32::consts::LN_2).abs() > 1e-6, "{loss}");
}

/// Two images in [−1, 1]: a bright left half against a bright right half.
fn pair(device: &Device) -> (Tensor<4>, Tensor<4>) {
    let (mut w, mut l) = (Vec::new(), Vec::new());
    for _b in 0..2 {
        for c in 0..3 {
            for y in 0..16 {
                for x in 0..16 {
                    let left = if x < 8 { 0.8 } else { -0.6 };
                    w.push(left - 0.1 * c as f32 + 0.01 * y as f32);
                    l.push(-left + 0.05 * c as f32);
                }
            }
        }
    }
    (
        Tensor::from_data(TensorData::new(w, [2, 3, 16, 16]), device),
        Tensor::from_data(TensorData::new(l, [2, 3, 16, 16]), device),
    )
}

#[test]
fn diffusion_dpo_update_on_the_tiny_sd_fixture_moves_lora_only() {
    let device = test_device().autodiff();
    let sd = StableDiffusion::load(&fixtures_dir().join("sd-tiny"), &device).unwrap();
    device.seed(5);
    let lora = LoraConfig::new()
        .with_rank(4)
        .with_targets(StableDiffusion::lora_targets());
    let policy = apply_lora(sd, &lora).unwrap();
    let reference = with_lora_scale(policy.clone(), 0.0).no_grad();

    let (winners, losers) = pair(&device);
    let winners = policy.encode_images(winners).detach();
    let losers = policy.encode_images(losers).detach();
    assert_eq!(winners.dims(), [2, 4, 8, 8]);
    let keys: Vec<NoiseKey> = (0..2).map(|s| NoiseKey::initial(9, s)).collect();
    let noise = noise_tensor(&keys, [4, 8, 8], &device).unwrap();
    let schedule = policy.scheduler.noise_schedule().unwrap();
    let levels = NoiseLevels::ddpm(&schedule, &[250, 700]).unwrap();
    let prompts = vec![
        "two red circles".to_string(),
        "a photo of a cat".to_string(),
    ];
    let condition = policy.encode_prompts(&prompts).unwrap();

    let batch = || DpoBatch {
        winners: winners.clone(),
        losers: losers.clone(),
        noise: noise.clone(),
        levels: &levels,
        condition: &condition,
        reference_condition: None,
    };
    dpo_step_moves_lora_only(policy, &reference, &batch);
}

// Diffusion-DPO in its flow-matching form on the tiny random Stable Diffusion 3.5 pipeline
// (`fixtures/sd3-tiny-pipeline`, diffusers layout) with LoRA on the MMDiT's joint attention
// (Flow-GRPO's targets): the pair is given as images and encoded by the SD3 VAE (shift and
// scale), noised on SD3's shifted sigmas, and the losses are the velocity errors. The
// reference is the policy with its adapters off: the loss is exactly ln 2 at initialisation;
// one AdamW step moves the LoRA factors and leaves every base weight bit-identical.
#[test]
fn flow_diffusion_dpo_update_on_the_tiny_sd3_fixture_moves_lora_only() {
    let device = test_device().autodiff();
    let options = Sd3Options {
        text_encoder_3: true,
        max_sequence_length: 16,
    };
    let sd =
        StableDiffusion3::load_with(&fixtures_dir().join("sd3-tiny-pipeline"), &options, &device)
            .unwrap();
    device.seed(5);
    let lora = LoraConfig::new()
        .with_rank(4)
        .with_targets(StableDiffusion3::lora_targets());
    let policy = apply_lora(sd, &lora).unwrap();
    let reference = with_lora_scale(policy.clone(), 0.0).no_grad();

    let (winners, losers) = pair(&device);
    let winners = policy.encode_images(winners).detach();
    let losers = policy.encode_images(losers).detach();
    assert_eq!(winners.dims(), [2, 4, 8, 8]);
    let keys: Vec<NoiseKey> = (0..2).map(|s| NoiseKey::initial(9, s)).collect();
    let noise = noise_tensor(&keys, [4, 8, 8], &device).unwrap();
    // The flow-matching form: x_t = (1 − t) x₀ + t ε at SD3's shifted sigmas, velocity
    // target ε − x₀.
    let sigmas = policy.scheduler.grid(4).unwrap();
    let levels = NoiseLevels::flow(&[sigmas.times()[1], sigmas.times()[3]]).unwrap();
    let prompts = vec![
        "a red car on the road at night".to_string(),
        "a photo of a cat".to_string(),
    ];
    let condition = policy.encode_prompts(&prompts).unwrap();

    let batch = || DpoBatch {
        winners: winners.clone(),
        losers: losers.clone(),
        noise: noise.clone(),
        levels: &levels,
        condition: &condition,
        reference_condition: None,
    };
    dpo_step_moves_lora_only(policy, &reference, &batch);
}
