//! One DRaFT / DRaFT-K / AlignProp update: the reward's gradient at the final sample, chained
//! back through the last K sampler steps, with an optional pull toward the reference.
//!
//! With `L = −s · mean_i r(x_T^i)` (s = `reward_scale`), the update differentiates
//! `L + β · Σ_{t ≥ T−K} mean (μ_θ(x_t) − μ_ref(x_t))²` (β = `reference_weight`; the penalty of
//! [`crate::reference_penalty`]) through steps `T−K..T` of the rollout only ([`crate::chain_gradients`],
//! stop-gradient on `x_{T−K}`), where K comes from the [`Truncation`]: fixed for DRaFT-K, drawn
//! per iteration for AlignProp (from a generator keyed by the run seed and the iteration, so a
//! resumed run draws the same K).

use align_core::{Denoiser, Trajectory};
use align_samplers::Sampler;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::chain::{ChainInputs, Encode, chain_gradients};
use crate::error::{BackpropError, Result};
use crate::regularize::reference_penalty;
use crate::truncation::Truncation;

/// The `[backprop]` table of a training configuration (DRaFT, DRaFT-K, AlignProp).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DraftConfig {
    /// Which steps carry gradient: `"full"`, `{ last_k = K }`, `{ random_k = { min, max } }`.
    pub truncation: Truncation,
    /// The loss is `−reward_scale · mean r(x_T)`.
    pub reward_scale: f64,
    /// Weight β of the pull toward the reference (adapters off): β · mean (μ_θ − μ_ref)² of the
    /// step means at the differentiated steps ([`crate::reference_penalty`]); 0 = none.
    pub reference_weight: f64,
}

impl Default for DraftConfig {
    fn default() -> Self {
        Self {
            truncation: Truncation::LastK(1),
            reward_scale: 1.0,
            reference_weight: 0.0,
        }
    }
}

impl DraftConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// A truncation with `min > max`, a negative or non-finite `reference_weight`, a
    /// non-positive `reward_scale`.
    pub fn validate(&self) -> Result<()> {
        self.truncation.validate()?;
        if !(self.reference_weight.is_finite() && self.reference_weight >= 0.0) {
            return Err(BackpropError::config(
                "reference_weight",
                format!("{} must be ≥ 0", self.reference_weight),
            ));
        }
        if !(self.reward_scale.is_finite() && self.reward_scale > 0.0) {
            return Err(BackpropError::config(
                "reward_scale",
                format!("{} must be positive", self.reward_scale),
            ));
        }
        Ok(())
    }
}

/// The inputs of one update.
pub struct DraftUpdate<'a, M, S: ?Sized> {
    /// The trainable policy.
    pub model: M,
    /// The frozen reference (the pull's target).
    pub reference: &'a M,
    /// The rollout's sampler.
    pub sampler: &'a S,
    /// The rollout.
    pub trajectory: &'a Trajectory,
    /// Truncation, scale, pull.
    pub config: &'a DraftConfig,
    /// Run seed (AlignProp's draw of K).
    pub seed: u64,
    /// Iteration (AlignProp's draw of K).
    pub iteration: usize,
    /// `∂L/∂x_T` ([`crate::reward_cotangent`]).
    pub cotangent: Tensor<4>,
    /// The batch's conditions from the policy.
    pub encode: &'a Encode<'a, M>,
    /// Applies the gradients (the runner's optimizer step).
    pub apply: &'a mut dyn FnMut(M, GradientsParams) -> align_core::Result<M>,
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DraftStats {
    /// Steps that carried gradient (K).
    pub differentiated_steps: usize,
    /// Value of the reference pull (0 without one).
    pub reference_penalty: f64,
}

/// Runs one [`DraftUpdate`]: the updated model (unchanged when K = 0) and what it did.
///
/// # Errors
/// An invalid truncation, failing chain or penalty computations, the optimizer step.
pub fn draft_update<M: Module + Denoiser, S: Sampler + ?Sized>(
    u: DraftUpdate<'_, M, S>,
) -> Result<(M, DraftStats)> {
    let t = u.sampler.num_steps();
    let mut rng = ChaCha8Rng::seed_from_u64(u.seed ^ 0x6472_6166_7400);
    rng.set_stream(u.iteration as u64);
    let first_step = u.config.truncation.first_step(t, &mut rng)?;
    let out = chain_gradients(ChainInputs {
        policy: &u.model,
        sampler: u.sampler,
        trajectory: u.trajectory,
        encode: u.encode,
        first_step,
        cotangent: u.cotangent,
    })?;
    let differentiated = out.steps;
    let weight = u.config.reference_weight;
    let (grads, penalty) = if weight > 0.0 && differentiated > 0 {
        let steps: Vec<usize> = (first_step..t).collect();
        let (pen, value) = reference_penalty(
            &u.model,
            u.reference,
            u.sampler,
            u.trajectory,
            &steps,
            u.encode,
            weight,
        )?;
        let mut acc = GradientsAccumulator::<M>::new();
        acc.accumulate(&u.model, out.grads);
        acc.accumulate(&u.model, pen);
        (acc.grads(), value)
    } else {
        (out.grads, 0.0)
    };
    let model = if differentiated > 0 {
        (u.apply)(u.model, grads)?
    } else {
        u.model
    };
    Ok((
        model,
        DraftStats {
            differentiated_steps: differentiated,
            reference_penalty: penalty,
        },
    ))
}

/// One device's part of a data-parallel DRaFT / AlignProp update ([`draft_shard_gradients`]).
pub struct DraftShard<'a, M> {
    /// The device's replica of the policy.
    pub policy: &'a M,
    /// The device's replica of the reference.
    pub reference: &'a M,
    /// The device's samples of the rollout, on the device.
    pub trajectory: Trajectory,
    /// Their rows of `∂L/∂x_T` ([`crate::reward_cotangent`] of the **whole** batch: its
    /// `1/B` already weighs each sample), on the device.
    pub cotangent: Tensor<4>,
    /// Their conditions.
    pub encode: &'a Encode<'a, M>,
    /// Their share `n_d / B` of the batch (weighs the reference pull, a mean over samples).
    pub share: f64,
}

/// The gradients of a DRaFT / AlignProp update split over devices: for each shard, the chained
/// reward gradient of its samples (whose cotangent rows already carry the batch mean's `1/B`)
/// plus its share of the reference pull, on the shard's replica — so the parts sum to the
/// gradient [`draft_update`] applies on one device. K is drawn as [`draft_update`] draws it.
/// The shards are computed one after the other. Returns the parts (in shard order, with the
/// device of each) and the statistics (the pull summed over the shards).
///
/// # Errors
/// As [`draft_update`]; no shards.
pub fn draft_shard_gradients<M: Module + Denoiser, S: Sampler + ?Sized>(
    config: &DraftConfig,
    sampler: &S,
    seed: u64,
    iteration: usize,
    shards: Vec<DraftShard<'_, M>>,
) -> Result<(Vec<(GradientsParams, burn::tensor::Device)>, DraftStats)> {
    if shards.is_empty() {
        return Err(BackpropError::config(
            "devices",
            "no shard to differentiate",
        ));
    }
    let t = sampler.num_steps();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6472_6166_7400);
    rng.set_stream(iteration as u64);
    let first_step = config.truncation.first_step(t, &mut rng)?;
    let mut parts = Vec::new();
    let mut stats = DraftStats {
        differentiated_steps: 0,
        reference_penalty: 0.0,
    };
    for shard in shards {
        let device = shard.cotangent.device();
        let out = chain_gradients(ChainInputs {
            policy: shard.policy,
            sampler,
            trajectory: &shard.trajectory,
            encode: shard.encode,
            first_step,
            cotangent: shard.cotangent,
        })?;
        stats.differentiated_steps = out.steps;
        let weight = config.reference_weight * shard.share;
        let grads = if weight > 0.0 && out.steps > 0 {
            let steps: Vec<usize> = (first_step..t).collect();
            let (pen, value) = reference_penalty(
                shard.policy,
                shard.reference,
                sampler,
                &shard.trajectory,
                &steps,
                shard.encode,
                weight,
            )?;
            stats.reference_penalty += value;
            let mut acc = GradientsAccumulator::<M>::new();
            acc.accumulate(shard.policy, out.grads);
            acc.accumulate(shard.policy, pen);
            acc.grads()
        } else {
            out.grads
        };
        parts.push((grads, device));
    }
    Ok((parts, stats))
}
