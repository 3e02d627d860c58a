//! DRaFT-K on a real-model topology: the tiny random Stable Diffusion 1.x fixture
//! (`fixtures/sd-tiny`) with LoRA on the UNet attention, a deterministic guided DDIM rollout,
//! and the CLIP aesthetic predictor of `fixtures/clip-tiny` on the **VAE-decoded** final latent
//! (`VaeDecoded`): the reward's gradient passes through the CLIP tower and the VAE decoder to
//! the latent, is chained back through the last K sampler steps, and reaches the LoRA factors
//! only; K = 0 gives no gradient, and the chained gradient equals plain autodiff through the
//! unrolled last K steps.
#![allow(clippy::unwrap_used)]

use align_backprop::{ChainInputs, chain_gradients, reward_cotangent};
use align_core::{Condition, Trajectory, test_device};
use align_models::hf::fixtures_dir;
use align_models::{LoraConfig, StableDiffusion, apply_lora};
use align_rewards::{AestheticPredictor, Reward, VaeDecoded};
use align_samplers::{
    DdimSampler, RolloutBatch, RolloutConfig, Sampler, Transition, guided_predict, rollout,
};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};

const PROMPTS: [&str; 2] = ["two red circles", "a photo of a cat"];
const GUIDANCE: f64 = 4.0;

fn policy(device: &Device) -> StableDiffusion {
    let sd = StableDiffusion::load(&fixtures_dir().join("sd-tiny"), device).unwrap();
    device.seed(7);
    let lora = LoraConfig::new()
        .with_rank(2)
        .with_targets(StableDiffusion::lora_targets());
    let p = apply_lora(sd, &lora).unwrap();
    // Move the B factors off zero so every LoRA factor has a gradient.
    let g = {
        let sampler = sampler(&p);
        let traj = roll(&p, &sampler);
        chained(&p, &sampler, &traj, 1).0
    };
    SgdConfig::new().init().step(50.0, p, g)
}

fn sampler(sd: &StableDiffusion) -> DdimSampler {
    sd.scheduler.ddim(3, 0.0).unwrap()
}

fn encode(m: &StableDiffusion, ids: &[usize]) -> Result<(Condition, Option<Condition>), String> {
    let prompts: Vec<String> = ids.iter().map(|&i| PROMPTS[i].to_string()).collect();
    let c = m.encode_prompts(&prompts).map_err(|e| e.to_string())?;
    let u = m
        .encode_unconditional(ids.len())
        .map_err(|e| e.to_string())?;
    Ok((c, Some(u)))
}

fn roll(p: &StableDiffusion, sampler: &DdimSampler) -> Trajectory {
    let frozen = p.clone().no_grad();
    let (c, u) = encode(&frozen, &[0, 1]).unwrap();
    rollout(
        &frozen,
        sampler,
        &RolloutBatch {
            condition: &c,
            uncond: u.as_ref(),
            sample_ids: vec![0, 1],
            condition_ids: vec![0, 1],
            group_ids: None,
            sample_shape: frozen.latent_shape(16, 16).unwrap(),
        },
        &RolloutConfig {
            seed: 3,
            guidance_scale: GUIDANCE,
            ..RolloutConfig::default()
        },
    )
    .unwrap()
}

fn reward(p: &StableDiffusion) -> AestheticPredictor {
    let clip = fixtures_dir().join("clip-tiny");
    let device = p.unet.devices()[0].clone();
    AestheticPredictor::load(&clip, &clip.join("aesthetic/model.safetensors"), &device).unwrap()
}

fn prompts() -> Vec<String> {
    PROMPTS.iter().map(|s| s.to_string()).collect()
}

/// DRaFT's chained gradient of `mean r(D(x_T))` through the last `k` steps.
fn chained(
    p: &StableDiffusion,
    sampler: &DdimSampler,
    traj: &Trajectory,
    k: usize,
) -> (GradientsParams, usize, Vec<f64>) {
    let decoded = VaeDecoded {
        model: p,
        reward: reward(p),
    };
    let prompts = prompts();
    let score = |x: Tensor<4>| match decoded.score_differentiable(x, &prompts) {
        Some(r) => r.map_err(|e| e.to_string()),
        None => Err("not differentiable".into()),
    };
    let (values, cotangent) = reward_cotangent(traj.final_sample(), 1.0, &score).unwrap();
    let encode_batch = |m: &StableDiffusion| encode(m, &[0, 1]);
    let out = chain_gradients(ChainInputs {
        policy: p,
        sampler,
        trajectory: traj,
        encode: &encode_batch,
        first_step: sampler.num_steps() - k,
        cotangent,
    })
    .unwrap();
    (out.grads, out.steps, values)
}

/// The same gradient by plain autodiff through the unrolled last `k` steps.
fn unrolled(
    p: &StableDiffusion,
    sampler: &DdimSampler,
    traj: &Trajectory,
    k: usize,
) -> GradientsParams {
    let t = sampler.num_steps();
    let (c, u) = encode(p, &[0, 1]).unwrap();
    let mut x = traj.latents[t - k].clone().detach();
    for step in t - k..t {
        let time = Tensor::<1>::from_data(
            TensorData::new(vec![sampler.model_time(step) as f32; 2], [2]),
            &x.device(),
        );
        let out = guided_predict(p, x.clone(), time, &c, u.as_ref(), GUIDANCE).unwrap();
        x = sampler
            .step(
                step,
                x,
                out,
                align_core::Denoiser::parameterization(p),
                Transition::Mean,
                align_core::LogProbReduction::Mean,
            )
            .unwrap()
            .prev_sample;
    }
    let decoded = VaeDecoded {
        model: p,
        reward: reward(p),
    };
    // Loss −mean r, matching `reward_cotangent`'s sign convention.
    let r = decoded
        .score_differentiable(x, &prompts())
        .unwrap()
        .unwrap();
    let loss = r.mean().neg();
    GradientsParams::from_grads(loss.backward(), p)
}

/// Gradients of the trainable parameters, in visiting order (zeros where a parameter has
/// none), and the number of frozen parameters that received one.
struct Split<'a>(&'a GradientsParams, Vec<f32>, usize);
impl ModuleVisitor for Split<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match self.0.get::<D>(param.id) {
            Some(g) if param.is_require_grad() => {
                self.1.extend(g.into_data().try_to_vec::<f32>().unwrap())
            }
            Some(_) => self.2 += 1,
            None if param.is_require_grad() => {
                self.1.extend(vec![0.0; param.val().shape().num_elements()]);
            }
            None => {}
        }
    }
}

fn flat(p: &StableDiffusion, g: &GradientsParams) -> (Vec<f32>, usize) {
    let mut s = Split(g, Vec::new(), 0);
    p.visit(&mut s);
    (s.1, s.2)
}

#[test]
fn draft_k_through_the_vae_decoder_matches_unrolled_autodiff_and_reaches_lora_only() {
    let device = test_device().autodiff();
    let p = policy(&device);
    let sampler = sampler(&p);
    let traj = roll(&p, &sampler);
    let (g, steps, values) = chained(&p, &sampler, &traj, 2);
    assert_eq!(steps, 2);
    assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
    let (a, frozen_with_grad) = flat(&p, &g);
    assert_eq!(frozen_with_grad, 0, "no frozen weight may get a gradient");
    let norm = a.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(norm > 0.0 && norm.is_finite(), "‖g‖ = {norm}");
    let (b, _) = flat(&p, &unrolled(&p, &sampler, &traj, 2));
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt();
    assert!(
        diff <= 1e-4 * norm,
        "chained vs unrolled: ‖Δ‖ = {diff}, ‖g‖ = {norm}"
    );
    // K = 0: no step carries gradient.
    let (g0, steps0, _) = chained(&p, &sampler, &traj, 0);
    assert_eq!(steps0, 0);
    let (z, _) = flat(&p, &g0);
    assert!(z.iter().all(|v| *v == 0.0));
}
