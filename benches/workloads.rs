//! The model-sized workloads of `cargo xtask bench`, shared by the criterion bench
//! (`benches/models.rs`) and the table runner (`bench-table`).
//!
//! Every workload runs on the shipped `small` models (`models/shapes-unet`,
//! `models/shapes-dit`) at the sizes of the quickstart:
//!
//! | workload | what one run does |
//! |---|---|
//! | `forward_unet`, `forward_dit` | one forward pass of 32 images (the quickstart's 4 prompts × 8), inference device, prompts encoded beforehand |
//! | `sampler_step_unet` | one CFG-guided DDIM (η = 1) step of 32 images with its log-prob (a 64-image forward) |
//! | `rollout_dit` | the quickstart's rollout: 10 flow-SDE steps of 32 images, CFG 3, prompts encoded, log-probs kept |
//! | `ddpo_is_update` | DDPO-IS on the UNet with LoRA: PPO-clip gradient of a 16-sample minibatch over 2 of its 10 DDIM steps (re-encoding the prompts per step, CFG 3), then one AdamW step |
//! | `flow_grpo_update` | Flow-GRPO on the DiT with LoRA: the same with the closed-form KL (β = 0.004) to the adapters-off reference |
//! | `diffusion_dpo_update` | Diffusion-DPO on the UNet with LoRA: 8 pairs, paired noise and timestep, β = 5000, then one AdamW step |
//! | `chained_vjp_step` | one vector-Jacobian step of reward backprop (`chain_gradients` over the last DDIM step) for 8 samples, CFG 3 |
//!
//! The LoRA factors `B` are moved off zero (and the rollouts taken with adapters off), so the
//! PPO ratios differ from 1 as in a second epoch, and the policy differs from its reference.

use std::path::{Path, PathBuf};

use align_backprop::{ChainInputs, chain_gradients};
use align_core::{Condition, Denoiser, LogProbReduction, NoiseKey, Trajectory, noise_tensor};
use align_data::Tokenizer;
use align_models::{
    DiT, LoraConfig, ShapesModel, ShapesModelConfig, TextToImage, UNet, apply_lora, with_lora_scale,
};
use align_pref::{DIFFUSION_DPO_BETA, DpoBatch, NoiseLevels, diffusion_dpo_loss};
use align_rl::{Advantages, KlEstimator, KlPenalty, Objective, PolicyGradientInputs};
use align_samplers::{
    BetaSchedule, DdimSampler, FinalAlpha, FlowGrid, FlowSdeSampler, NoiseSchedule, RolloutBatch,
    RolloutConfig, Sampler, TimestepSpacing, Transition, guided_predict, rollout,
    strided_timesteps,
};
use burn::module::{Module, ModuleDisplay, ModuleMapper, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

/// Images per forward pass and per rollout: the quickstart's 4 prompts × group of 8.
pub const IMAGES: usize = 32;
/// Image side of the Shapes world's models (the `small` presets' `image_size`).
pub const IMAGE_SIZE: usize = 16;
/// Samples of one update minibatch (the quickstart's 32 samples in 2 minibatches).
pub const UPDATE_SAMPLES: usize = 16;
/// Sampler steps of the training rollouts.
pub const TRAIN_STEPS: usize = 10;
/// The steps one benchmarked update trains (an update over all 10 costs ≈ 5×).
pub const UPDATE_STEPS: [usize; 2] = [3, 4];
/// Preference pairs of one Diffusion-DPO update.
pub const DPO_PAIRS: usize = 8;
/// Samples of the chained-VJP step.
pub const CHAIN_SAMPLES: usize = 8;
/// Classifier-free guidance scale of every guided workload.
pub const GUIDANCE: f64 = 3.0;
/// AdamW learning rate of the update workloads.
pub const LEARNING_RATE: f64 = 3e-4;
/// AdamW weight decay of the update workloads.
pub const WEIGHT_DECAY: f64 = 1e-4;
/// PPO clip range.
pub const CLIP_RANGE: f64 = 1e-4;
/// Flow-GRPO's KL weight.
pub const KL_BETA: f64 = 0.004;
/// Flow-GRPO's SDE noise level `a`.
pub const FLOW_NOISE_LEVEL: f64 = 0.7;

const PROMPTS: [&str; 4] = [
    "two red circles",
    "one blue square and three green triangles",
    "four yellow triangles",
    "one red square and two blue circles",
];

/// The text-to-image UNet.
pub type UnetModel = TextToImage<UNet>;
/// The text-to-image DiT.
pub type DitModel = TextToImage<DiT>;

/// Benchmark-setup failures (the shipped models missing, a backend refusing an op).
pub type SetupResult<T> = std::result::Result<T, String>;

/// The repository root (the shipped models live under `models/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Token ids of a batch of prompts, one row per prompt.
pub type TokenRows = Vec<Vec<u32>>;

/// Token rows of `n` prompts (cycling through four) and `n` null prompts.
pub fn prompt_tokens(n: usize) -> SetupResult<(TokenRows, TokenRows)> {
    let tok = Tokenizer::new();
    let rows = (0..n)
        .map(|i| tok.encode(PROMPTS[i % PROMPTS.len()]))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("tokenizing: {e}"))?;
    Ok((rows, vec![tok.null_prompt(); n]))
}

/// Loads a shipped model directory (`models/shapes-unet` or `models/shapes-dit`).
pub fn load(name: &str, device: &Device) -> SetupResult<(ShapesModelConfig, ShapesModel)> {
    let dir = repo_root().join("models").join(name);
    ShapesModel::load(&dir, device).map_err(|e| format!("loading {}: {e}", dir.display()))
}

/// The shipped UNet.
pub fn unet(device: &Device) -> SetupResult<(ShapesModelConfig, UnetModel)> {
    match load("shapes-unet", device)? {
        (c, ShapesModel::Unet(m)) => Ok((c, *m)),
        _ => Err("models/shapes-unet does not hold a UNet".into()),
    }
}

/// The shipped DiT.
pub fn dit(device: &Device) -> SetupResult<(ShapesModelConfig, DitModel)> {
    match load("shapes-dit", device)? {
        (c, ShapesModel::Dit(m)) => Ok((c, *m)),
        _ => Err("models/shapes-dit does not hold a DiT".into()),
    }
}

/// Moves every LoRA `B` factor off zero by `N(0, std²)` noise, keeping it trainable.
struct PerturbB {
    path: Vec<String>,
    std: f64,
}

impl ModuleMapper for PerturbB {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let n = self.path.len();
        if n >= 2 && self.path[n - 2] == "lora" && self.path[n - 1] == "b" {
            let std = self.std;
            param.map(|b| {
                let device = b.device();
                let trainable = b.is_require_grad();
                let noise = Tensor::random(b.shape(), Distribution::Normal(0.0, std), &device);
                let value = (b.detach() + noise).into_data();
                let fresh = Tensor::from_data(value, &device);
                if trainable {
                    fresh.require_grad()
                } else {
                    fresh
                }
            })
        } else {
            param
        }
    }
}

/// `model` with default LoRA adapters (rank 8) whose `B` factors are moved off zero
/// (seeded), so that adapters matter.
pub fn adapted<M: Module>(model: M, device: &Device, seed: u64) -> SetupResult<M> {
    device.seed(seed);
    let m = apply_lora(model, &LoraConfig::new()).map_err(|e| format!("LoRA: {e}"))?;
    Ok(m.map(&mut PerturbB {
        path: Vec::new(),
        std: 0.02,
    }))
}

/// A fresh AdamW with the workloads' settings.
pub fn adamw() -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(WEIGHT_DECAY as f32)
        .with_epsilon(1e-8)
        .init()
}

/// The DDPO sampler: DDIM η = 1 over 10 "leading" steps of the DDPM linear schedule, `ᾱ` = 1
/// after the last step, `x̂₀` clipped to [−1, 1] — what `align train` builds for the UNet.
pub fn ddim_sampler(eta: f64) -> SetupResult<DdimSampler> {
    let schedule =
        NoiseSchedule::new(BetaSchedule::ddpm_linear(), 1000).map_err(|e| e.to_string())?;
    let steps = strided_timesteps(1000, TRAIN_STEPS, TimestepSpacing::Leading { offset: 1 })
        .map_err(|e| e.to_string())?;
    Ok(DdimSampler::new(schedule, steps, eta)
        .map_err(|e| e.to_string())?
        .with_final_alpha(FinalAlpha::One)
        .with_clip_sample(Some(1.0)))
}

/// The Flow-GRPO sampler: the marginal-preserving SDE over 10 uniform steps, `a = 0.7`.
pub fn flow_sampler() -> SetupResult<FlowSdeSampler> {
    FlowSdeSampler::new(
        FlowGrid::new(TRAIN_STEPS, 1.0).map_err(|e| e.to_string())?,
        FLOW_NOISE_LEVEL,
    )
    .map_err(|e| e.to_string())
}

/// `(condition, unconditional)` of `n` prompts under `model`.
pub fn encode<D: Module + Denoiser>(
    model: &TextToImage<D>,
    n: usize,
    device: &Device,
) -> SetupResult<(Condition, Condition)> {
    let (rows, nulls) = prompt_tokens(n)?;
    Ok((
        model.encode(&rows, device).map_err(|e| e.to_string())?,
        model.encode(&nulls, device).map_err(|e| e.to_string())?,
    ))
}

/// Rolls out `n` samples (CFG 3, seed 0) with `model` (use a `no_grad` view).
pub fn roll<D, S>(
    model: &TextToImage<D>,
    sampler: &S,
    n: usize,
    device: &Device,
) -> SetupResult<Trajectory>
where
    D: Module + Denoiser,
    S: Sampler + ?Sized,
{
    let (c, u) = encode(model, n, device)?;
    rollout(
        model,
        sampler,
        &RolloutBatch {
            condition: &c,
            uncond: Some(&u),
            sample_ids: (0..n as u64).collect(),
            condition_ids: (0..n).collect(),
            group_ids: None,
            sample_shape: [3, IMAGE_SIZE, IMAGE_SIZE],
        },
        &RolloutConfig {
            seed: 0,
            guidance_scale: GUIDANCE,
            keep_means: true,
            ..RolloutConfig::default()
        },
    )
    .map_err(err("rollout"))
}

/// Deterministic standard-normal images `[n, 3, IMAGE_SIZE, IMAGE_SIZE]` (stream `seed`).
pub fn images(n: usize, seed: u64, device: &Device) -> SetupResult<Tensor<4>> {
    let keys: Vec<NoiseKey> = (0..n as u64).map(|i| NoiseKey::initial(seed, i)).collect();
    noise_tensor(&keys, [3, IMAGE_SIZE, IMAGE_SIZE], device).map_err(|e| e.to_string())
}

/// Advantages of the update workloads: a fixed, zero-mean pattern.
pub fn advantages(n: usize) -> Vec<f64> {
    (0..n).map(|i| ((i % 4) as f64 - 1.5) / 1.2).collect()
}

/// Everything one policy-gradient update needs.
pub struct RlUpdate<D: Module> {
    /// The trainable policy (LoRA, autodiff device).
    pub policy: TextToImage<D>,
    /// Its stored rollout (taken with adapters off).
    pub trajectory: Trajectory,
    /// Per-sample advantages.
    pub advantages: Vec<f64>,
    device: Device,
}

impl<D: Module + Denoiser + ModuleDisplay> RlUpdate<D> {
    /// A policy with perturbed adapters and a 16-sample trajectory of its adapters-off view.
    pub fn new<S: Sampler + ?Sized>(
        base: TextToImage<D>,
        sampler: &S,
        device: &Device,
    ) -> SetupResult<Self> {
        let policy = adapted(base, device, 7)?;
        let frozen = with_lora_scale(policy.clone(), 0.0).no_grad();
        let trajectory = roll(&frozen, sampler, UPDATE_SAMPLES, device)?;
        Ok(Self {
            policy,
            trajectory,
            advantages: advantages(UPDATE_SAMPLES),
            device: device.clone(),
        })
    }

    /// The gradient of one update (PPO-clip over [`UPDATE_STEPS`], with Flow-GRPO's KL when
    /// `kl`) and its mean loss.
    pub fn gradients<S: Sampler + ?Sized>(
        &self,
        sampler: &S,
        kl: bool,
    ) -> SetupResult<(GradientsParams, align_rl::UpdateStats)> {
        let (rows, nulls) = prompt_tokens(UPDATE_SAMPLES)?;
        let device = self.device.clone();
        let encode = move |m: &TextToImage<D>, ids: &[usize]| {
            let c: Vec<Vec<u32>> = ids.iter().map(|&i| rows[i].clone()).collect();
            let u: Vec<Vec<u32>> = ids.iter().map(|&i| nulls[i].clone()).collect();
            let c = m.encode(&c, &device).map_err(|e| e.to_string())?;
            let u = m.encode(&u, &device).map_err(|e| e.to_string())?;
            Ok((c, Some(u)))
        };
        let reference = kl.then(|| with_lora_scale(self.policy.clone(), 0.0).no_grad());
        align_rl::policy_gradients(PolicyGradientInputs {
            policy: &self.policy,
            reference: reference.as_ref(),
            sampler,
            trajectory: &self.trajectory,
            advantages: Advantages::PerSample(&self.advantages),
            steps: &UPDATE_STEPS,
            encode: &encode,
            objective: Objective::PpoClip {
                clip_range: CLIP_RANGE,
            },
            kl: kl.then_some(KlPenalty {
                beta: KL_BETA,
                estimator: KlEstimator::ClosedForm,
            }),
            micro_batch: None,
        })
        .map_err(err("update"))
    }

    /// One whole update: gradient and AdamW step; returns the loss.
    pub fn step<S: Sampler + ?Sized>(
        &mut self,
        sampler: &S,
        kl: bool,
        optim: &mut ModuleOptimizer,
    ) -> SetupResult<f64> {
        let (grads, stats) = self.gradients(sampler, kl)?;
        let policy = self.policy.clone();
        self.policy = optim.step(LEARNING_RATE, policy, grads);
        Ok(stats.loss)
    }
}

/// A Diffusion-DPO update on the UNet with LoRA.
pub struct DpoUpdate {
    /// The trainable policy.
    pub policy: UnetModel,
    winners: Tensor<4>,
    losers: Tensor<4>,
    noise: Tensor<4>,
    levels: NoiseLevels,
    device: Device,
}

impl DpoUpdate {
    /// Fixed winners, losers, shared noise and timesteps.
    pub fn new(base: UnetModel, device: &Device) -> SetupResult<Self> {
        let policy = adapted(base, device, 9)?;
        let schedule =
            NoiseSchedule::new(BetaSchedule::ddpm_linear(), 1000).map_err(|e| e.to_string())?;
        let timesteps: Vec<usize> = (0..DPO_PAIRS).map(|i| 50 + 113 * i).collect();
        Ok(Self {
            policy,
            winners: images(DPO_PAIRS, 21, device)?.clamp(-1.0, 1.0),
            losers: images(DPO_PAIRS, 22, device)?.clamp(-1.0, 1.0),
            noise: images(DPO_PAIRS, 23, device)?,
            levels: NoiseLevels::ddpm(&schedule, &timesteps).map_err(|e| e.to_string())?,
            device: device.clone(),
        })
    }

    /// Loss, backward and one AdamW step; returns the loss.
    pub fn step(&mut self, optim: &mut ModuleOptimizer) -> SetupResult<f64> {
        let (rows, _) = prompt_tokens(DPO_PAIRS)?;
        let reference = with_lora_scale(self.policy.clone(), 0.0).no_grad();
        let cond = self
            .policy
            .encode(&rows, &self.device)
            .map_err(|e| e.to_string())?;
        let ref_cond = reference
            .encode(&rows, &self.device)
            .map_err(|e| e.to_string())?;
        let out = diffusion_dpo_loss(
            &self.policy,
            &reference,
            DpoBatch {
                winners: self.winners.clone(),
                losers: self.losers.clone(),
                noise: self.noise.clone(),
                levels: &self.levels,
                condition: &cond,
                reference_condition: Some(&ref_cond),
            },
            DIFFUSION_DPO_BETA,
        )
        .map_err(err("Diffusion-DPO"))?;
        let loss: f32 = out.loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(out.loss.backward(), &self.policy);
        let policy = self.policy.clone();
        self.policy = optim.step(LEARNING_RATE, policy, grads);
        Ok(f64::from(loss))
    }
}

/// One chained vector-Jacobian step of reward backprop on the UNet with LoRA.
pub struct ChainStep {
    policy: UnetModel,
    sampler: DdimSampler,
    trajectory: Trajectory,
    device: Device,
}

impl ChainStep {
    /// A deterministic (η = 0) 10-step rollout of 8 samples.
    pub fn new(base: UnetModel, device: &Device) -> SetupResult<Self> {
        let policy = adapted(base, device, 5)?;
        let sampler = ddim_sampler(0.0)?;
        let trajectory = roll(&policy.clone().no_grad(), &sampler, CHAIN_SAMPLES, device)?;
        Ok(Self {
            policy,
            sampler,
            trajectory,
            device: device.clone(),
        })
    }

    /// The gradient through the last step of the mean brightness of the samples.
    pub fn run(&self) -> SetupResult<GradientsParams> {
        let device = self.device.clone();
        let encode = move |m: &UnetModel| {
            let (c, u) = encode(m, CHAIN_SAMPLES, &device)?;
            Ok((c, Some(u)))
        };
        let cotangent = Tensor::<4>::ones([CHAIN_SAMPLES, 3, IMAGE_SIZE, IMAGE_SIZE], &self.device)
            .div_scalar((CHAIN_SAMPLES * 3 * IMAGE_SIZE * IMAGE_SIZE) as f64);
        chain_gradients(ChainInputs {
            policy: &self.policy,
            sampler: &self.sampler,
            trajectory: &self.trajectory,
            encode: &encode,
            first_step: TRAIN_STEPS - 1,
            cotangent,
        })
        .map(|o| o.grads)
        .map_err(err("chain_gradients"))
    }
}

/// One CFG-guided DDIM (η = 1) step of [`IMAGES`] images with its log-prob.
pub fn sampler_step(
    model: &UnetModel,
    sampler: &DdimSampler,
    x: Tensor<4>,
    next: Tensor<4>,
    cond: &Condition,
    uncond: &Condition,
) -> SetupResult<Tensor<1>> {
    let k = 3;
    let t = Tensor::<1>::from_data(
        TensorData::new(vec![sampler.model_time(k) as f32; IMAGES], [IMAGES]),
        &x.device(),
    );
    let out = guided_predict(model, x.clone(), t, cond, Some(uncond), GUIDANCE)
        .map_err(err("guided_predict"))?;
    let step = sampler
        .step(
            k,
            x,
            out,
            model.parameterization(),
            Transition::Rescore(next),
            LogProbReduction::Mean,
        )
        .map_err(err("DDIM step"))?;
    step.log_prob
        .ok_or_else(|| "DDIM η = 1 step has no log-prob".to_string())
}
