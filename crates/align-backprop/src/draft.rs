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
