//! DiffusionNFT (Zheng et al., "DiffusionNFT: Online Diffusion Reinforcement with Forward
//! Process", ICLR 2026, arXiv 2509.16117): online RL on the **forward** (noising) process of a
//! flow model — no likelihoods, no transition kernel, any sampler for the rollouts.
//!
//! **Rewards to optimality probabilities.** The batch's rewards become group-relative
//! advantages (mean per prompt group, std over the whole batch by default, as Flow-GRPO), and
//!
//! ```text
//! r_i = clamp( clip(Â_i, −C, C) / (2C) + ½, 0, 1 ),     C = adv_clip_max = 5
//! ```
//!
//! (the paper's `½ + ½ clip(A / Z, −1, 1)` with `Z = C · std`).
//!
//! **Implicit positive and negative policies.** Around the old policy `v_old` (the rollout
//! policy, no gradient) the trainable velocity `v_θ` defines
//!
//! ```text
//! v⁺ = (1 − β) v_old + β v_θ,        v⁻ = (1 + β) v_old − β v_θ
//! ```
//!
//! **Loss.** On each rollout's clean sample `x₀` (its final latent), at a time
//! `t` of the rollout's grid and fresh noise `ε`: `x_t = (1 − t) x₀ + t ε`, target `v = ε − x₀`,
//! clean-sample predictions `x̂± = x_t − t v±`, and
//!
//! ```text
//! L± = mean_{CHW} (x̂± − x₀)² / sg(w±),      w± = max(mean_{CHW} |x̂± − x₀|, 1e-5)
//! ℓ_i = (C / β) · ( r_i L⁺ + (1 − r_i) L⁻ )
//! L   = mean_i ℓ_i + λ · mean_i mean_{CHW} (v_θ − v_ref)²
//! ```
//!
//! with `sg` the stop-gradient (the public code's adaptive weighting; `adaptive_weighting =
//! false` uses `w± = 1`) and `v_ref` the frozen reference (adapters off), weight `λ =
//! reference_weight`. Since `x̂± − x₀ = t (v − v±)` the loss is flow matching in velocity, weighted
//! by `t²`. Positive samples pull `v⁺` toward them, negative ones push `v⁻` toward them — which
//! moves `v_θ` away.
//!
//! **The reduction at the old policy** (tested): at `v_θ = v_old` both branches equal `v_θ`, so
//! `w⁺ = w⁻ = w` and
//!
//! ```text
//! ∇_θ ℓ_i = C (2 r_i − 1) · ∇_θ [ t² mean_{CHW} (v_θ − v)² / sg(w) ] = clip(Â_i, −C, C) · ∇_θ L_FM,i
//! ```
//!
//! — advantage-weighted (`t²`- and `1/w`-weighted) flow matching on the samples, independent of
//! β, zero at `r = ½`, and `C (2r − 1)` times plain flow matching when every sample's
//! probability is `r`. The loss *value* at the old policy is `(C / β)` times that flow-matching loss.
//!
//! **Old policy.** `v_old` rolls out and anchors the branches. After every iteration
//! `θ_old ← d θ_old + (1 − d) θ` with `d` from [`OldPolicyDecay`] at the optimizer step count:
//! the public code's default `d = min(0.001 · step, 0.5)`; `"copy"` is `d = 0` (θ_old = θ at
//! every iteration, as PPO's θ_old).
//!
//! **Timesteps.** Each sample trains `⌊timestep_fraction · K⌋` (≥ 1) of its rollout's `K` step
//! times, a fresh permutation per sample and epoch (the public code: 0.99 of 10 → 9); one
//! backward pass per timestep index, the loss divided by their number.
//!
//! Defaults are the public code's (`config/nft.py`, SD3.5-M): β = 1, C = 5, λ = 1e-4, adaptive
//! weighting, the linear decay above, one inner epoch, one optimizer step per iteration. The
//! public recipe rolls out with a deterministic ODE without guidance; here the rollouts use the
//! job's sampler and guidance, and the loss's velocities the same guidance scale (`guidance =
//! 1` is the CFG-free recipe).

use std::collections::{HashMap, HashSet};

use align_core::{
    Denoiser, GroupStd, NoiseKey, Trajectory, clip_advantages, group_advantages, noise_tensor,
};
use align_samplers::guided_predict;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::{Result, RlError};
use crate::update::{Encode, scalar};

/// How the old policy follows the trained one after each iteration:
/// `θ_old ← d θ_old + (1 − d) θ`, `d` a function of the optimizer steps taken so far.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum OldPolicyDecay {
    /// `d = 0`: the old policy is the trained one at the start of every iteration.
    Copy,
    /// `d = min(rate · step, max)` (the public code's `decay_type = 1`: rate 0.001, max 0.5).
    Linear {
        /// Growth of `d` per optimizer step.
        rate: f64,
        /// Largest `d`.
        max: f64,
    },
    /// `d = 0` before `start` steps, then `min(rate · (step − start), max)` (the public
    /// code's `decay_type = 2`: start 75, rate 0.0075, max 0.999).
    Delayed {
        /// Steps with `d = 0`.
        start: u64,
        /// Growth of `d` per optimizer step after `start`.
        rate: f64,
        /// Largest `d`.
        max: f64,
    },
}

impl OldPolicyDecay {
    /// The decay `d` after `step` optimizer steps.
    pub fn decay(&self, step: u64) -> f64 {
        match *self {
            OldPolicyDecay::Copy => 0.0,
            OldPolicyDecay::Linear { rate, max } => (rate * step as f64).min(max),
            OldPolicyDecay::Delayed { start, rate, max } => {
                if step < start {
                    0.0
                } else {
                    (rate * (step - start) as f64).min(max)
                }
            }
        }
    }

    fn validate(&self) -> Result<()> {
        let (rate, max) = match *self {
            OldPolicyDecay::Copy => return Ok(()),
            OldPolicyDecay::Linear { rate, max } | OldPolicyDecay::Delayed { rate, max, .. } => {
                (rate, max)
            }
        };
        if !(rate.is_finite() && rate >= 0.0) {
            return Err(RlError::config(
                "old_decay.rate",
                format!("{rate} must be ≥ 0"),
            ));
        }
        if !(0.0..1.0).contains(&max) {
            return Err(RlError::config(
                "old_decay.max",
                format!("{max} must lie in [0, 1)"),
            ));
        }
        Ok(())
    }
}

/// DiffusionNFT hyper-parameters (the `[diffusion_nft]` table of `align train`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionNftConfig {
    /// β of the implicit policies `v± = v_old ± β (v_θ − v_old)` (public code 1.0; 0.1 for
    /// its OCR and multi-reward recipes).
    pub beta: f64,
    /// `C`: advantages are clipped to `[−C, C]` and mapped to `[0, 1]` by `/(2C) + ½`.
    pub adv_clip_max: f64,
    /// Standardise by the batch std (true) or each group's (false).
    pub global_std: bool,
    /// Divide each branch's squared error by its (stopped) mean absolute error.
    pub adaptive_weighting: bool,
    /// `λ` of the velocity MSE to the reference (adapters off); 0 = none.
    pub reference_weight: f64,
    /// Fraction of the rollout's step times each sample trains per epoch.
    pub timestep_fraction: f64,
    /// How the old (rollout) policy follows the trained one.
    pub old_decay: OldPolicyDecay,
    /// Passes over each batch.
    pub inner_epochs: usize,
    /// Optimizer steps per pass.
    pub minibatches: usize,
}

impl Default for DiffusionNftConfig {
    fn default() -> Self {
        Self {
            beta: 1.0,
            adv_clip_max: 5.0,
            global_std: true,
            adaptive_weighting: true,
            reference_weight: 1e-4,
            timestep_fraction: 0.99,
            old_decay: OldPolicyDecay::Linear {
                rate: 0.001,
                max: 0.5,
            },
            inner_epochs: 1,
            minibatches: 1,
        }
    }
}

impl DiffusionNftConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`RlError::Config`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(RlError::config(
                "beta",
                format!("{} must be > 0", self.beta),
            ));
        }
        if !(self.adv_clip_max.is_finite() && self.adv_clip_max > 0.0) {
            return Err(RlError::config(
                "adv_clip_max",
                format!("{} must be > 0", self.adv_clip_max),
            ));
        }
        if !(self.reference_weight.is_finite() && self.reference_weight >= 0.0) {
            return Err(RlError::config(
                "reference_weight",
                format!("{} must be ≥ 0", self.reference_weight),
            ));
        }
        if !(self.timestep_fraction > 0.0 && self.timestep_fraction <= 1.0) {
            return Err(RlError::config(
                "timestep_fraction",
                format!("{} must lie in (0, 1]", self.timestep_fraction),
            ));
        }
        if self.inner_epochs == 0 || self.minibatches == 0 {
            return Err(RlError::config("inner_epochs / minibatches", "must be ≥ 1"));
        }
        self.old_decay.validate()
    }
}

/// The optimality probabilities `r_i = clamp(clip(Â_i, −C, C)/(2C) + ½, 0, 1)` of a batch's
/// rewards, with `Â` group-relative (mean per group, std of the batch when `global_std`, of
/// the group otherwise; a group whose rewards are all equal gets `Â = 0`, so `r = ½`).
///
/// # Errors
/// Non-finite rewards, mismatched lengths, `adv_clip_max ≤ 0`.
pub fn optimality_probabilities(
    rewards: &[f64],
    group_ids: &[usize],
    global_std: bool,
    adv_clip_max: f64,
) -> Result<Vec<f64>> {
    if !(adv_clip_max.is_finite() && adv_clip_max > 0.0) {
        return Err(RlError::config("adv_clip_max", "must be > 0"));
    }
    let std = if global_std {
        GroupStd::Global
    } else {
        GroupStd::Group
    };
    let mut adv = group_advantages(rewards, group_ids, std, 1e-4)?;
    clip_advantages(&mut adv, adv_clip_max);
    Ok(adv
        .into_iter()
        .map(|a| (a / (2.0 * adv_clip_max) + 0.5).clamp(0.0, 1.0))
        .collect())
}

/// The tensors of one DiffusionNFT loss ([`nft_loss`]).
pub struct NftLossInputs {
    /// The trainable velocity `v_θ(x_t, t)`, `[B, C, H, W]` (tracked).
    pub v_theta: Tensor<4>,
    /// The old policy's velocity at the same point (detached inside).
    pub v_old: Tensor<4>,
    /// The reference's velocity, for the `reference_weight` term (detached inside).
    pub v_ref: Option<Tensor<4>>,
    /// The noised samples `x_t = (1 − t) x₀ + t ε`, `[B, C, H, W]`.
    pub x_t: Tensor<4>,
    /// The clean samples `x₀`, `[B, C, H, W]`.
    pub x0: Tensor<4>,
    /// Each sample's time `t`, `[B]`.
    pub t: Tensor<1>,
    /// Each sample's optimality probability `r ∈ [0, 1]`, `[B]`.
    pub r: Tensor<1>,
}

/// One DiffusionNFT loss and its parts.
pub struct NftLoss {
    /// `mean_i ℓ_i + λ · mean_i MSE(v_θ, v_ref)`, `[1]`.
    pub loss: Tensor<1>,
    /// `L⁺` per sample (detached), `[B]`.
    pub positive: Tensor<1>,
    /// `L⁻` per sample (detached), `[B]`.
    pub negative: Tensor<1>,
    /// `MSE(v_θ, v_ref)` per sample (detached; zeros without a reference), `[B]`.
    pub reference_mse: Tensor<1>,
}

/// The DiffusionNFT loss of one batch of noised samples (formula in the module docs).
///
/// # Shapes
/// - `v_theta`, `v_old`, `v_ref`, `x_t`, `x0`: `[B, C, H, W]`
/// - `t`, `r`: `[B]`
/// - `loss`: `[1]`; `positive`, `negative`, `reference_mse`: `[B]`
///
/// # Errors
/// Mismatched shapes, a configuration [`DiffusionNftConfig::validate`] refuses.
pub fn nft_loss(inputs: NftLossInputs, config: &DiffusionNftConfig) -> Result<NftLoss> {
    config.validate()?;
    let dims = inputs.v_theta.dims();
    let b = dims[0];
    for (what, d) in [
        ("v_old", inputs.v_old.dims()),
        ("x_t", inputs.x_t.dims()),
        ("x0", inputs.x0.dims()),
    ] {
        if d != dims {
            return Err(
                align_core::CoreError::shape(what, format!("{dims:?}"), format!("{d:?}")).into(),
            );
        }
    }
    if let Some(v) = &inputs.v_ref
        && v.dims() != dims
    {
        return Err(align_core::CoreError::shape(
            "v_ref",
            format!("{dims:?}"),
            format!("{:?}", v.dims()),
        )
        .into());
    }
    for (what, n) in [("t", inputs.t.dims()[0]), ("r", inputs.r.dims()[0])] {
        if n != b {
            return Err(align_core::CoreError::shape(what, b, n).into());
        }
    }
    let beta = config.beta;
    let v_old = inputs.v_old.detach();
    let v_theta = inputs.v_theta;
    let t4 = inputs.t.reshape([b, 1, 1, 1]);
    let positive = v_old.clone().mul_scalar(1.0 - beta) + v_theta.clone().mul_scalar(beta);
    let negative = v_old.mul_scalar(1.0 + beta) - v_theta.clone().mul_scalar(beta);
    let per_sample = |x: Tensor<4>| x.flatten::<2>(1, 3).mean_dim(1).reshape([b]);
    let branch = |v: Tensor<4>| {
        let err = inputs.x_t.clone() - v * t4.clone() - inputs.x0.clone();
        let sq = per_sample(err.clone().powi_scalar(2));
        if config.adaptive_weighting {
            let w = per_sample(err.abs()).detach().clamp_min(1e-5);
            sq / w
        } else {
            sq
        }
    };
    let l_pos = branch(positive);
    let l_neg = branch(negative);
    let r = inputs.r;
    let scale = config.adv_clip_max / beta;
    let per =
        (l_pos.clone() * r.clone() + l_neg.clone() * r.neg().add_scalar(1.0)).mul_scalar(scale);
    let mut loss = per.mean();
    let reference_mse = match inputs.v_ref {
        Some(v_ref) if config.reference_weight > 0.0 => {
            let mse = per_sample((v_theta - v_ref.detach()).powi_scalar(2));
            loss = loss + mse.clone().mean().mul_scalar(config.reference_weight);
            mse.detach()
        }
        _ => Tensor::zeros([b], &loss.device()),
    };
    Ok(NftLoss {
        loss,
        positive: l_pos.detach(),
        negative: l_neg.detach(),
        reference_mse,
    })
}

/// Each sample's training times for one epoch: the rollout's step start times `times[0..K]`
/// (`t = 1` noise first), a permutation per sample drawn from `seed`, the first
/// `max(1, ⌊fraction · K⌋)`. Indexed `[timestep index][sample]`.
///
/// # Errors
/// A grid with fewer than two times, `fraction` outside `(0, 1]`.
pub fn nft_timesteps(
    times: &[f64],
    samples: usize,
    fraction: f64,
    seed: u64,
) -> Result<Vec<Vec<f64>>> {
    if times.len() < 2 {
        return Err(RlError::config(
            "times",
            "a rollout grid has at least two times",
        ));
    }
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(RlError::config(
            "timestep_fraction",
            format!("{fraction} must lie in (0, 1]"),
        ));
    }
    let k = times.len() - 1;
    let keep = ((fraction * k as f64).floor() as usize).clamp(1, k);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let perms: Vec<Vec<usize>> = (0..samples)
        .map(|_| {
            let mut idx: Vec<usize> = (0..k).collect();
            for i in (1..k).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                idx.swap(i, j);
            }
            idx
        })
        .collect();
    Ok((0..keep)
        .map(|j| perms.iter().map(|p| times[p[j]]).collect())
        .collect())
}

/// What one DiffusionNFT gradient needs: a minibatch of rollouts and their probabilities.
pub struct NftGradientInputs<'a, M> {
    /// The trainable policy (autodiff device).
    pub policy: &'a M,
    /// The old (rollout) policy, same type, no gradients.
    pub old: &'a M,
    /// The reference policy for `reference_weight` (e.g. adapters off).
    pub reference: Option<&'a M>,
    /// The minibatch's rollouts: their final samples `x₀`, sample ids and condition ids.
    pub trajectory: &'a Trajectory,
    /// Optimality probabilities of the minibatch's samples.
    pub probabilities: &'a [f64],
    /// `[timestep index][sample]` times ([`nft_timesteps`]).
    pub times: &'a [Vec<f64>],
    /// Conditions from a model.
    pub encode: &'a Encode<'a, M>,
    /// Guidance scale of the velocities (the rollouts' scale; 1 = none).
    pub guidance: f64,
    /// Seed of the forward-process noise `ε` (keyed by sample id and `noise_step + j`).
    pub noise_seed: u64,
    /// Offset of the noise counter (distinct per epoch).
    pub noise_step: u32,
    /// Samples per backward pass (`None`: the whole minibatch).
    pub micro_batch: Option<usize>,
}

/// Diagnostics of DiffusionNFT updates (means over the timesteps and samples).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NftStats {
    /// Total loss.
    pub loss: f64,
    /// Mean `L⁺`.
    pub positive: f64,
    /// Mean `L⁻`.
    pub negative: f64,
    /// Mean velocity MSE to the reference.
    pub reference_mse: f64,
    /// Mean optimality probability of the trained samples.
    pub probability_mean: f64,
    /// Timesteps per sample per epoch.
    pub timesteps: usize,
    /// Optimizer steps taken.
    pub optimizer_steps: usize,
}

/// The gradient of the mean DiffusionNFT loss over a minibatch's timesteps, one timestep's
/// graph at a time.
///
/// # Errors
/// Mismatched lengths, a failing encoder, a non-finite loss, a policy without trainable
/// parameters.
pub fn nft_gradients<M>(
    config: &DiffusionNftConfig,
    inputs: NftGradientInputs<'_, M>,
) -> Result<(GradientsParams, NftStats)>
where
    M: Module + Denoiser,
{
    config.validate()?;
    let traj = inputs.trajectory;
    let b = traj.batch_size();
    if inputs.probabilities.len() != b {
        return Err(
            align_core::CoreError::shape("probabilities", b, inputs.probabilities.len()).into(),
        );
    }
    if inputs.times.is_empty() || inputs.times.iter().any(|t| t.len() != b) {
        return Err(RlError::config(
            "times",
            format!("one time per sample ({b}) for at least one timestep index"),
        ));
    }
    let encode = |m: &M, ids: &[usize]| (inputs.encode)(m, ids).map_err(RlError::Encode);
    let n = inputs.times.len() as f64;
    let size = inputs.micro_batch.filter(|&m| m > 0 && m < b).unwrap_or(b);
    let x0_all = traj.final_sample().clone();
    let [_, c, h, w] = x0_all.dims();
    let mut acc = GradientsAccumulator::<M>::new();
    let mut stats = NftStats {
        timesteps: inputs.times.len(),
        probability_mean: inputs.probabilities.iter().sum::<f64>() / b.max(1) as f64,
        ..NftStats::default()
    };
    for start in (0..b).step_by(size) {
        let range = start..(start + size).min(b);
        let mb = range.len();
        let weight = mb as f64 / b as f64;
        let ids = &traj.condition_ids[range.clone()];
        let (oc, ou) = encode(inputs.old, ids)?;
        let reference = match inputs.reference {
            Some(r) if config.reference_weight > 0.0 => Some((r, encode(r, ids)?)),
            _ => None,
        };
        let device = oc.context.device();
        let x0 = x0_all
            .clone()
            .slice([range.clone(), 0..c, 0..h, 0..w])
            .to_device(&device);
        let r = Tensor::<1>::from_data(
            TensorData::new(
                inputs.probabilities[range.clone()]
                    .iter()
                    .map(|&p| p as f32)
                    .collect(),
                [mb],
            ),
            &device,
        );
        for (j, times) in inputs.times.iter().enumerate() {
            let keys: Vec<NoiseKey> = range
                .clone()
                .map(|i| NoiseKey {
                    seed: inputs.noise_seed,
                    sample: traj.sample_ids[i],
                    step: inputs.noise_step.saturating_add(j as u32),
                })
                .collect();
            let eps = noise_tensor(&keys, [c, h, w], &device)?;
            // Encoded per backward pass: a trainable text path's graph is consumed by each.
            let (cond, uncond) = encode(inputs.policy, ids)?;
            let t_host: Vec<f32> = times[range.clone()].iter().map(|&t| t as f32).collect();
            let t = Tensor::<1>::from_data(TensorData::new(t_host, [mb]), &device);
            let t4 = t.clone().reshape([mb, 1, 1, 1]);
            let x_t = x0.clone() * t4.clone().neg().add_scalar(1.0) + eps * t4;
            let v_theta = guided_predict(
                inputs.policy,
                x_t.clone(),
                t.clone(),
                &cond,
                uncond.as_ref(),
                inputs.guidance,
            )?;
            let v_old = guided_predict(
                inputs.old,
                x_t.clone(),
                t.clone(),
                &oc,
                ou.as_ref(),
                inputs.guidance,
            )?
            .detach();
            let v_ref = match &reference {
                Some((m, (rc, ru))) => Some(
                    guided_predict(*m, x_t.clone(), t.clone(), rc, ru.as_ref(), inputs.guidance)?
                        .detach(),
                ),
                None => None,
            };
            let out = nft_loss(
                NftLossInputs {
                    v_theta,
                    v_old,
                    v_ref,
                    x_t,
                    x0: x0.clone(),
                    t,
                    r: r.clone(),
                },
                config,
            )?;
            let share = weight / n;
            stats.loss += scalar(out.loss.clone().detach(), "the DiffusionNFT loss")? * share;
            stats.positive += scalar(out.positive, "L⁺")? * share;
            stats.negative += scalar(out.negative, "L⁻")? * share;
            stats.reference_mse += scalar(out.reference_mse, "the reference MSE")? * share;
            let loss = out.loss.mul_scalar(share);
            if !loss.is_tracked() {
                return Err(RlError::config(
                    "policy",
                    "no trainable parameter reaches the loss: put the model on an autodiff device \
                     and leave its adapters trainable",
                ));
            }
            acc.accumulate(
                inputs.policy,
                GradientsParams::from_grads(loss.backward(), inputs.policy),
            );
        }
    }
    Ok((acc.grads(), stats))
}

/// One DiffusionNFT iteration's data ([`run_nft_iteration`]).
pub struct NftIteration<'a, M> {
    /// The old (rollout) policy.
    pub old: &'a M,
    /// The reference policy (for `reference_weight`).
    pub reference: Option<&'a M>,
    /// The rollout (by the old policy).
    pub trajectory: &'a Trajectory,
    /// Its terminal rewards.
    pub rewards: &'a [f64],
    /// Conditions from a model.
    pub encode: &'a Encode<'a, M>,
    /// Guidance scale of the velocities.
    pub guidance: f64,
    /// Seed of the minibatch shuffles, the timestep draws and the forward noise (combine the
    /// run seed and the iteration).
    pub seed: u64,
    /// Samples per backward pass (`None`: the whole minibatch).
    pub micro_batch: Option<usize>,
}

/// Salt of the forward-process noise (kept apart from the rollouts' noise streams).
const NFT_NOISE_SALT: u64 = 0x6e66_745f_6e6f_6973;

/// One DiffusionNFT iteration: optimality probabilities from the rewards, then `inner_epochs
/// × minibatches` optimizer steps, each applied with `apply(policy, grads)`. The caller
/// updates the old policy afterwards ([`update_old_policy`]).
///
/// # Errors
/// Bad rewards, a failing update or `apply`.
pub fn run_nft_iteration<M>(
    config: &DiffusionNftConfig,
    mut policy: M,
    it: NftIteration<'_, M>,
    apply: &mut dyn FnMut(M, GradientsParams) -> Result<M>,
) -> Result<(M, NftStats)>
where
    M: Module + Denoiser,
{
    config.validate()?;
    let traj = it.trajectory;
    let b = traj.batch_size();
    if it.rewards.len() != b {
        return Err(align_core::CoreError::shape("rewards", b, it.rewards.len()).into());
    }
    let probabilities = optimality_probabilities(
        it.rewards,
        &traj.group_ids,
        config.global_std,
        config.adv_clip_max,
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(it.seed);
    let mut total = NftStats::default();
    let mut updates = 0usize;
    for epoch in 0..config.inner_epochs {
        let mut order: Vec<usize> = (0..b).collect();
        if epoch > 0 || config.minibatches > 1 {
            for i in (1..b).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        if config.minibatches > b {
            return Err(RlError::config(
                "minibatches",
                format!("{} minibatches for a batch of {b}", config.minibatches),
            ));
        }
        // Exactly `minibatches` near-equal parts.
        let m = config.minibatches;
        for part in 0..m {
            let chunk = &order[part * b / m..(part + 1) * b / m];
            let sub = traj.select(chunk)?;
            let probs: Vec<f64> = chunk.iter().map(|&i| probabilities[i]).collect();
            let times = nft_timesteps(
                &traj.times,
                chunk.len(),
                config.timestep_fraction,
                rng.next_u64(),
            )?;
            let (grads, s) = nft_gradients(
                config,
                NftGradientInputs {
                    policy: &policy,
                    old: it.old,
                    reference: it.reference,
                    trajectory: &sub,
                    probabilities: &probs,
                    times: &times,
                    encode: it.encode,
                    guidance: it.guidance,
                    noise_seed: it.seed ^ NFT_NOISE_SALT,
                    noise_step: (epoch * times.len()) as u32,
                    micro_batch: it.micro_batch,
                },
            )?;
            policy = apply(policy, grads)?;
            updates += 1;
            total.loss += s.loss;
            total.positive += s.positive;
            total.negative += s.negative;
            total.reference_mse += s.reference_mse;
            total.timesteps = s.timesteps;
        }
    }
    let u = updates.max(1) as f64;
    total.loss /= u;
    total.positive /= u;
    total.negative /= u;
    total.reference_mse /= u;
    total.probability_mean = probabilities.iter().sum::<f64>() / b.max(1) as f64;
    total.optimizer_steps = updates;
    Ok((policy, total))
}

/// The trainable parameters of `policy` (those that require a gradient), by id, in visiting
/// order.
pub fn trainable_ids<M: Module>(policy: &M) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0.push(param.id);
            }
        }
    }
    let mut ids = Ids(Vec::new());
    policy.visit(&mut ids);
    ids.0
}

/// `θ_old ← d θ_old + (1 − d) θ` on the parameters that are trainable in `policy` (the others
/// are left bit for bit); `old` and `policy` are the same module (parameter ids shared, e.g.
/// `old = policy.clone().no_grad()` earlier). `d = 0` copies the policy's values exactly.
///
/// # Errors
/// `d` outside `[0, 1)`; a trainable parameter of `policy` that `old` lacks.
pub fn update_old_policy<M: Module>(old: M, policy: &M, d: f64) -> Result<M> {
    if !(0.0..1.0).contains(&d) {
        return Err(RlError::config(
            "old_decay",
            format!("{d} is not in [0, 1)"),
        ));
    }
    struct Collect(HashMap<ParamId, Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0
                    .insert(param.id, param.val().detach().flatten(0, D - 1));
            }
        }
    }
    struct Blend<'a>(&'a HashMap<ParamId, Tensor<1>>, f64, HashSet<ParamId>);
    impl ModuleMapper for Blend<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match self.0.get(&param.id) {
                Some(cur) => {
                    self.2.insert(param.id);
                    let (d, cur) = (self.1, cur.clone());
                    param.map(|old| {
                        let shape = old.shape();
                        let cur = cur.reshape(shape);
                        if d == 0.0 {
                            cur
                        } else {
                            old.detach().mul_scalar(d) + cur.mul_scalar(1.0 - d)
                        }
                    })
                }
                None => param,
            }
        }
    }
    let mut collect = Collect(HashMap::new());
    policy.visit(&mut collect);
    let mut blend = Blend(&collect.0, d, HashSet::new());
    let old = old.map(&mut blend).no_grad();
    if blend.2.len() != collect.0.len() {
        return Err(RlError::config(
            "old policy",
            format!(
                "{} trainable parameters of the policy are not in the old policy",
                collect.0.len() - blend.2.len()
            ),
        ));
    }
    Ok(old)
}

/// The values of `old`'s parameters that are trainable in `policy`, in `policy`'s visiting
/// order (for checkpoints: [`restore_old_policy`] rebuilds the old policy from them).
///
/// # Errors
/// A tensor that cannot be read back; a trainable parameter `old` lacks.
pub fn old_policy_values<M: Module>(old: &M, policy: &M) -> Result<Vec<Vec<f32>>> {
    old_policy_values_of(old, &trainable_ids(policy))
}

/// The values of `old`'s parameters `ids` (as [`trainable_ids`] lists them), in that order.
///
/// # Errors
/// A tensor that cannot be read back; an id `old` lacks.
pub fn old_policy_values_of<M: Module>(old: &M, ids: &[ParamId]) -> Result<Vec<Vec<f32>>> {
    struct Read(HashMap<ParamId, Tensor<1>>);
    impl ModuleVisitor for Read {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0
                .insert(param.id, param.val().detach().flatten(0, D - 1));
        }
    }
    let mut read = Read(HashMap::new());
    old.visit(&mut read);
    ids.iter()
        .map(|id| {
            let t = read
                .0
                .get(id)
                .ok_or_else(|| RlError::config("old policy", "a trainable parameter is missing"))?;
            t.clone()
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| RlError::Readback(format!("reading the old policy: {e:?}")))
        })
        .collect()
}

/// The old policy from [`old_policy_values`]: a no-gradient copy of `policy` whose trainable
/// parameters take the stored values.
///
/// # Errors
/// A count or length that does not match `policy`'s trainable parameters.
pub fn restore_old_policy<M: Module>(policy: &M, values: &[Vec<f32>]) -> Result<M> {
    let ids = trainable_ids(policy);
    if ids.len() != values.len() {
        return Err(RlError::config(
            "old policy",
            format!(
                "the checkpoint holds {} trainable tensors, the policy has {}",
                values.len(),
                ids.len()
            ),
        ));
    }
    let map: HashMap<ParamId, &Vec<f32>> = ids.into_iter().zip(values).collect();
    struct Set<'a>(&'a HashMap<ParamId, &'a Vec<f32>>, Option<String>);
    impl ModuleMapper for Set<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some(v) = self.0.get(&param.id) else {
                return param;
            };
            let v = (*v).clone();
            let mut err = None;
            let param = param.map(|t| {
                let shape = t.shape();
                if shape.num_elements() != v.len() {
                    err = Some(format!(
                        "a tensor of {} values for a parameter of {}",
                        v.len(),
                        shape.num_elements()
                    ));
                    return t;
                }
                Tensor::from_data(TensorData::new(v, shape), &t.device())
            });
            if self.1.is_none() {
                self.1 = err;
            }
            param
        }
    }
    let mut set = Set(&map, None);
    let old = policy.clone().map(&mut set).no_grad();
    match set.1 {
        Some(e) => Err(RlError::config("old policy", e)),
        None => Ok(old),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t4(v: &[f64], dims: [usize; 4], d: &burn::tensor::Device) -> Tensor<4> {
        Tensor::from_data(
            TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), dims),
            d,
        )
    }
    fn t1(v: &[f64], d: &burn::tensor::Device) -> Tensor<1> {
        Tensor::from_data(
            TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), [v.len()]),
            d,
        )
    }
    fn host(t: Tensor<4>) -> Vec<f64> {
        t.into_data()
            .try_to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// The loss of the module docs in f64, with the branch weights `w±` given (frozen) or
    /// computed from the inputs: `(loss, w⁺, w⁻)`. An implementation independent of the tensor
    /// code: plain loops over samples and elements.
    #[allow(clippy::too_many_arguments)]
    fn reference_loss(
        vt: &[f64],
        vo: &[f64],
        vr: Option<&[f64]>,
        x0: &[f64],
        eps: &[f64],
        t: &[f64],
        r: &[f64],
        cfg: &DiffusionNftConfig,
        frozen: Option<(&[f64], &[f64])>,
    ) -> (f64, Vec<f64>, Vec<f64>) {
        let b = t.len();
        let d = vt.len() / b;
        let (beta, c) = (cfg.beta, cfg.adv_clip_max);
        let (mut total, mut wp, mut wn) = (0.0, vec![], vec![]);
        for i in 0..b {
            let (mut sp, mut sn, mut ap, mut an, mut mr) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for e in i * d..(i + 1) * d {
                let xt = (1.0 - t[i]) * x0[e] + t[i] * eps[e];
                let vp = (1.0 - beta) * vo[e] + beta * vt[e];
                let vn = (1.0 + beta) * vo[e] - beta * vt[e];
                let ep = xt - t[i] * vp - x0[e];
                let en = xt - t[i] * vn - x0[e];
                sp += ep * ep / d as f64;
                sn += en * en / d as f64;
                ap += ep.abs() / d as f64;
                an += en.abs() / d as f64;
                if let Some(vr) = vr {
                    mr += (vt[e] - vr[e]).powi(2) / d as f64;
                }
            }
            let (w_p, w_n) = match (frozen, cfg.adaptive_weighting) {
                (Some((p, n)), _) => (p[i], n[i]),
                (None, true) => (ap.max(1e-5), an.max(1e-5)),
                (None, false) => (1.0, 1.0),
            };
            wp.push(w_p);
            wn.push(w_n);
            total += (c / beta) * (r[i] * sp / w_p + (1.0 - r[i]) * sn / w_n) / b as f64
                + cfg.reference_weight * mr / b as f64;
        }
        (total, wp, wn)
    }

    #[derive(Debug, Clone)]
    struct Case {
        vt: Vec<f64>,
        vo: Vec<f64>,
        vr: Vec<f64>,
        x0: Vec<f64>,
        eps: Vec<f64>,
        t: Vec<f64>,
        r: Vec<f64>,
    }

    const DIMS: [usize; 4] = [2, 1, 2, 2];

    /// `(loss, ∂loss/∂v_θ)` from [`nft_loss`] on the autodiff device.
    fn autodiff(case: &Case, cfg: &DiffusionNftConfig) -> (f64, Vec<f64>) {
        let ad = align_core::test_device().autodiff();
        let vt = t4(&case.vt, DIMS, &ad).require_grad();
        let x0 = t4(&case.x0, DIMS, &ad);
        let tt = t1(&case.t, &ad);
        let x_t = x0.clone() * tt.clone().reshape([2, 1, 1, 1]).neg().add_scalar(1.0)
            + t4(&case.eps, DIMS, &ad) * tt.clone().reshape([2, 1, 1, 1]);
        let out = nft_loss(
            NftLossInputs {
                v_theta: vt.clone(),
                v_old: t4(&case.vo, DIMS, &ad),
                v_ref: Some(t4(&case.vr, DIMS, &ad)),
                x_t,
                x0,
                t: tt,
                r: t1(&case.r, &ad),
            },
            cfg,
        )
        .unwrap();
        let value = f64::from(out.loss.clone().into_scalar::<f32>());
        let grads = out.loss.backward();
        (value, host(vt.grad(&grads).unwrap()))
    }

    fn case() -> impl Strategy<Value = Case> {
        let v = || prop::collection::vec(-1.5f64..1.5, 8);
        (
            v(),
            v(),
            v(),
            v(),
            v(),
            prop::collection::vec(0.05f64..1.0, 2),
            prop::collection::vec(0.0f64..1.0, 2),
        )
            .prop_map(|(vt, vo, vr, x0, eps, t, r)| Case {
                vt,
                vo,
                vr,
                x0,
                eps,
                t,
                r,
            })
    }

    /// A hand computation: one element per sample, β = 1 (so `v⁺ = v_θ`, `v⁻ = 2 v_old − v_θ`),
    /// no adaptive weighting.
    #[test]
    fn loss_matches_a_hand_computation() {
        let d = align_core::test_device();
        let cfg = DiffusionNftConfig {
            adaptive_weighting: false,
            reference_weight: 0.5,
            ..DiffusionNftConfig::default()
        };
        // Sample 0: x0 = 1, ε = 0, t = 0.5 → x_t = 0.5, v = −1; v_θ = 0, v_old = 1, v_ref = 1.
        //   x̂⁺ − x0 = 0.5 − 0.5·0 − 1 = −0.5 → L⁺ = 0.25; v⁻ = 2 → x̂⁻ − x0 = 0.5 − 1 − 1 = −1.5
        //   → L⁻ = 2.25; r = 0.8: ℓ = 5 (0.8·0.25 + 0.2·2.25) = 3.25; MSE to ref = 1.
        // Sample 1: x0 = 0, ε = 2, t = 0.25 → x_t = 0.5, v = 2; v_θ = 2, v_old = 2, v_ref = 0.
        //   both branches: x̂ − x0 = 0.5 − 0.5 = 0 → ℓ = 0; MSE to ref = 4.
        // L = (3.25 + 0)/2 + 0.5 · (1 + 4)/2 = 1.625 + 1.25 = 2.875.
        let out = nft_loss(
            NftLossInputs {
                v_theta: t4(&[0.0, 2.0], [2, 1, 1, 1], &d),
                v_old: t4(&[1.0, 2.0], [2, 1, 1, 1], &d),
                v_ref: Some(t4(&[1.0, 0.0], [2, 1, 1, 1], &d)),
                x_t: t4(&[0.5, 0.5], [2, 1, 1, 1], &d),
                x0: t4(&[1.0, 0.0], [2, 1, 1, 1], &d),
                t: t1(&[0.5, 0.25], &d),
                r: t1(&[0.8, 0.3], &d),
            },
            &cfg,
        )
        .unwrap();
        let v = f64::from(out.loss.into_scalar::<f32>());
        assert!((v - 2.875).abs() < 1e-6, "{v}");
        let pos: Vec<f32> = out.positive.into_data().try_to_vec::<f32>().unwrap();
        let neg: Vec<f32> = out.negative.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(pos, vec![0.25, 0.0]);
        assert_eq!(neg, vec![2.25, 0.0]);
    }

    #[test]
    fn probabilities_map_clipped_advantages_to_zero_one() {
        // Group 0: rewards 1, 3 (mean 2); group 1: all equal. Global std of [1, 3, 2, 2] =
        // √0.5; Â = ∓1/√0.5 ≈ ∓1.414 → r = ½ ∓ 1.414/10.
        let r = optimality_probabilities(&[1.0, 3.0, 2.0, 2.0], &[0, 0, 1, 1], true, 5.0).unwrap();
        let a = 1.0 / (0.5f64.sqrt() + 1e-4);
        let want = [0.5 - a / 10.0, 0.5 + a / 10.0, 0.5, 0.5];
        for (x, y) in r.iter().zip(want) {
            assert!((x - y).abs() < 1e-12, "{r:?}");
        }
        // Clipping: a large advantage saturates at r = 1 (C = 1: Â = ±1.414 → ±1).
        let r = optimality_probabilities(&[1.0, 3.0, 2.0, 2.0], &[0, 0, 1, 1], true, 1.0).unwrap();
        assert_eq!(r, vec![0.0, 1.0, 0.5, 0.5]);
        assert!(optimality_probabilities(&[f64::NAN], &[0], true, 5.0).is_err());
        assert!(optimality_probabilities(&[1.0], &[0], true, 0.0).is_err());
    }

    #[test]
    fn old_decay_schedules() {
        let lin = OldPolicyDecay::Linear {
            rate: 0.001,
            max: 0.5,
        };
        assert_eq!(lin.decay(0), 0.0);
        assert!((lin.decay(40) - 0.04).abs() < 1e-15);
        assert_eq!(lin.decay(10_000), 0.5);
        let del = OldPolicyDecay::Delayed {
            start: 75,
            rate: 0.0075,
            max: 0.999,
        };
        assert_eq!(del.decay(74), 0.0);
        assert!((del.decay(175) - 0.75).abs() < 1e-12);
        assert_eq!(del.decay(100_000), 0.999);
        assert_eq!(OldPolicyDecay::Copy.decay(7), 0.0);
        let bad = DiffusionNftConfig {
            old_decay: OldPolicyDecay::Linear {
                rate: 0.1,
                max: 1.0,
            },
            ..DiffusionNftConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("old_decay.max")
        );
        let cfg: DiffusionNftConfig =
            toml::from_str("old_decay = { linear = { rate = 0.002, max = 0.3 } }").unwrap();
        assert_eq!(
            cfg.old_decay,
            OldPolicyDecay::Linear {
                rate: 0.002,
                max: 0.3
            }
        );
        let cfg: DiffusionNftConfig = toml::from_str("old_decay = \"copy\"").unwrap();
        assert_eq!(cfg.old_decay, OldPolicyDecay::Copy);
    }

    #[test]
    fn timesteps_are_per_sample_permutations_of_the_grid() {
        let times = [1.0, 0.75, 0.5, 0.25, 0.0];
        let ts = nft_timesteps(&times, 3, 0.99, 7).unwrap();
        assert_eq!(ts.len(), 3); // ⌊0.99 · 4⌋
        for i in 0..3 {
            let mut seen: Vec<f64> = ts.iter().map(|row| row[i]).collect();
            seen.sort_by(f64::total_cmp);
            seen.dedup();
            assert_eq!(seen.len(), 3, "distinct times per sample");
            assert!(seen.iter().all(|t| *t > 0.0 && *t <= 1.0));
        }
        assert_eq!(nft_timesteps(&times, 3, 0.99, 7).unwrap(), ts);
        assert_eq!(nft_timesteps(&times, 2, 0.01, 7).unwrap().len(), 1);
        assert!(nft_timesteps(&[1.0], 1, 1.0, 0).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The loss equals the independent f64 computation, and its gradient w.r.t. `v_θ`
        /// equals central finite differences of that computation with the branch weights
        /// frozen at their values (the weights are stop-gradients).
        #[test]
        fn loss_and_gradient_match_finite_differences(
            case in case(), beta in 0.1f64..2.0, adaptive in any::<bool>(),
        ) {
            let cfg = DiffusionNftConfig {
                beta,
                adaptive_weighting: adaptive,
                reference_weight: 0.3,
                ..DiffusionNftConfig::default()
            };
            let (value, grad) = autodiff(&case, &cfg);
            let f = |vt: &[f64], frozen: Option<(&[f64], &[f64])>| {
                reference_loss(vt, &case.vo, Some(&case.vr), &case.x0, &case.eps, &case.t, &case.r, &cfg, frozen)
            };
            let (want, wp, wn) = f(&case.vt, None);
            prop_assert!((value - want).abs() < 1e-4 * (1.0 + want.abs()), "{value} vs {want}");
            let h = 1e-5;
            for e in 0..case.vt.len() {
                let mut up = case.vt.clone();
                let mut down = case.vt.clone();
                up[e] += h;
                down[e] -= h;
                let fd = (f(&up, Some((&wp, &wn))).0 - f(&down, Some((&wp, &wn))).0) / (2.0 * h);
                prop_assert!((grad[e] - fd).abs() < 2e-3 * (1.0 + fd.abs()), "element {e}: {} vs fd {fd}", grad[e]);
            }
        }

        /// At the old policy (`v_θ = v_old`) with every probability equal to `r`, the gradient
        /// is `C (2r − 1)` times the gradient of flow matching
        /// `mean_i t_i² mean (v_θ − v)² / w_i` (`w_i` the stopped mean |t (v_θ − v)|; 1 without
        /// adaptive weighting), whatever β — computed here from the flow-matching target alone.
        #[test]
        fn at_the_old_policy_the_gradient_is_weighted_flow_matching(
            case in case(), r in 0.0f64..1.0, beta in 0.1f64..2.0, adaptive in any::<bool>(),
        ) {
            let cfg = DiffusionNftConfig {
                beta,
                adaptive_weighting: adaptive,
                reference_weight: 0.0,
                ..DiffusionNftConfig::default()
            };
            let at_old = Case { vo: case.vt.clone(), r: vec![r, r], ..case };
            let (_, grad) = autodiff(&at_old, &cfg);
            let d = 4;
            for i in 0..2 {
                let t = at_old.t[i];
                let target: Vec<f64> = (i * d..(i + 1) * d).map(|e| at_old.eps[e] - at_old.x0[e]).collect();
                let w = if adaptive {
                    ((0..d).map(|k| (t * (at_old.vt[i * d + k] - target[k])).abs()).sum::<f64>() / d as f64).max(1e-5)
                } else {
                    1.0
                };
                for (k, v) in target.iter().enumerate() {
                    let e = i * d + k;
                    // ∂/∂v_θ of (1/B) t² (1/D) Σ (v_θ − v)² / w, B = 2.
                    let fm = t * t * 2.0 * (at_old.vt[e] - v) / (d as f64 * w * 2.0);
                    let want = cfg.adv_clip_max * (2.0 * r - 1.0) * fm;
                    prop_assert!((grad[e] - want).abs() < 2e-3 * (1.0 + want.abs()), "{} vs {want}", grad[e]);
                }
            }
        }
    }

    /// A module with one trainable and one frozen parameter, for the old-policy helpers.
    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<1>>,
        b: Param<Tensor<1>>,
    }

    fn two(a: [f32; 2], b: [f32; 2], d: &burn::tensor::Device) -> Two {
        Two {
            a: Param::from_tensor(Tensor::from_floats(a, d)),
            b: Param::from_tensor(Tensor::from_floats(b, d)).set_require_grad(false),
        }
    }

    fn values(t: &Param<Tensor<1>>) -> Vec<f32> {
        t.val().into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn the_old_policy_follows_the_trainable_parameters() {
        let ad = align_core::test_device().autodiff();
        let policy = two([1.0, -2.0], [5.0, 6.0], &ad);
        let old = two([3.0, 4.0], [7.0, 8.0], &ad).no_grad();
        // Same ids: the old policy is the policy's clone.
        let old = Two {
            a: Param::initialized(policy.a.id, old.a.val()),
            b: Param::initialized(policy.b.id, old.b.val()),
        };
        let copied = update_old_policy(old.clone(), &policy, 0.0).unwrap();
        assert_eq!(values(&copied.a), vec![1.0, -2.0]);
        assert_eq!(
            values(&copied.b),
            vec![7.0, 8.0],
            "frozen parameters untouched"
        );
        assert!(!copied.a.is_require_grad());
        let blended = update_old_policy(old, &policy, 0.25).unwrap();
        assert_eq!(
            values(&blended.a),
            vec![0.25 * 3.0 + 0.75 * 1.0, 0.25 * 4.0 - 0.75 * 2.0]
        );
        // Checkpoint round trip.
        let stored = old_policy_values(&blended, &policy).unwrap();
        assert_eq!(stored, vec![values(&blended.a)]);
        let restored = restore_old_policy(&policy, &stored).unwrap();
        assert_eq!(values(&restored.a), values(&blended.a));
        assert_eq!(values(&restored.b), vec![5.0, 6.0]);
        assert!(restore_old_policy(&policy, &[]).is_err());
        assert!(restore_old_policy(&policy, &[vec![1.0]]).is_err());
        assert!(update_old_policy(blended, &policy, 1.0).is_err());
    }
}
