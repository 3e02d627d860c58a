//! The per-step objective every online-RL algorithm of this crate minimises.
//!
//! For a stored transition `x_k → x_{k+1}` of sample `i` with advantage `Â_i`, rollout
//! log-prob `log p_old` and the current policy's Gaussian `N(μ_θ, σ_k² I)`:
//!
//! ```text
//! REINFORCE (DDPO-SF, DPOK):  L_pg = −mean_i Â_i · log p_θ(x_{k+1} | x_k)
//! PPO-clip  (DDPO-IS, GRPO):  L_pg = mean_i max(−Â_i ρ_i, −Â_i clip(ρ_i, 1 − ε, 1 + ε)),
//!                             ρ_i = exp(log p_θ − log p_old)
//! KL (closed form):           KL_i = ‖μ_θ − μ_ref‖² / (2 σ_k²)   (mean over C·H·W)
//! KL (K3 estimator):          KL_i = e^δ − δ − 1,  δ = log p_ref(x_{k+1}) − log p_θ(x_{k+1})
//! L_k = L_pg + β · mean_i KL_i
//! ```
//!
//! GRPO-Guard ([`Objective::RatioNormClip`]) replaces `ρ` by the normalised ratio of
//! [`crate::grpo_guard`] and divides the step's policy term by its `|Δt|`.
//!
//! At `θ = θ_old` the two policy terms have the same gradient, `−mean_i Â_i ∇ log p_θ`.
//! The closed-form KL is the exact per-step Gaussian KL (with the step's standard deviation
//! σ_k, not the official Flow-GRPO code's σ_t without `√|Δt|`: that code's β is larger by
//! `1/|Δt|`). Summed over steps it bounds `KL(p_θ(x₀) ‖ p_ref(x₀))` from above for chains
//! started from the same noise (DPOK's bound). Log-probs and KL use the trajectory's reduction
//! (mean over dimensions by default), so ε = 1e-4 is the published clip range.

use align_core::{LogProbReduction, gaussian_kl, k3_kl, ppo_clip_loss};
use burn::tensor::Tensor;

use crate::error::{Result, RlError};
use crate::grpo_guard::normalized_log_ratio;

/// The policy-gradient term.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Score-function gradient `−Â log p_θ` (one update per rollout batch).
    Reinforce,
    /// PPO-clip with per-step ratios and clip range ε.
    PpoClip {
        /// ε (1e-4 for mean-reduced log-probs, as published).
        clip_range: f64,
    },
    /// GRPO-Guard: PPO-clip on the normalised ratio `ρ̂ = exp((log ρ + b) · s)`
    /// ([`crate::grpo_guard`]), each step's policy loss divided by its `|Δt|`; needs the
    /// rollout's means ([`StepInputs::old_mean`]) and step sizes ([`StepInputs::step_size`]).
    RatioNormClip {
        /// ε on the normalised scale (the public recipes: 2e-6, 4e-6 for PickScore).
        clip_range: f64,
    },
}

/// How the per-step KL to the reference policy is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// Exact Gaussian KL from the two means (lowest variance; the default).
    ClosedForm,
    /// The K3 sample estimator on the stored next latent.
    K3,
}

/// A KL penalty `β · KL(p_θ ‖ p_ref)` per step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KlPenalty {
    /// Weight β ≥ 0.
    pub beta: f64,
    /// Estimator.
    pub estimator: KlEstimator,
}

impl Objective {
    /// Checks the clip range.
    ///
    /// # Errors
    /// A clip range that is not a positive finite number.
    pub fn validate(&self) -> Result<()> {
        if let Objective::PpoClip { clip_range } | Objective::RatioNormClip { clip_range } = *self
            && !(clip_range.is_finite() && clip_range > 0.0)
        {
            return Err(RlError::config(
                "clip_range",
                format!("{clip_range} must be a positive number"),
            ));
        }
        Ok(())
    }
}

impl KlPenalty {
    /// Checks β.
    ///
    /// # Errors
    /// A negative or non-finite β.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(RlError::config(
                "beta",
                format!("{} must be a finite number ≥ 0", self.beta),
            ));
        }
        Ok(())
    }
}

/// The terms of one step's loss.
#[derive(Debug, Clone)]
pub struct StepLoss {
    /// `L_pg + β·KL`, shape `[1]`, differentiable.
    pub loss: Tensor<1>,
    /// The policy term alone, `[1]` (detached).
    pub policy: Tensor<1>,
    /// Per-sample KL `[B]` (detached); zeros without a penalty.
    pub kl: Tensor<1>,
    /// Per-sample ratio ρ `[B]` (detached).
    pub ratio: Tensor<1>,
    /// Fraction of clipped ratios, `[1]` (detached); 0 for REINFORCE.
    pub clip_fraction: Tensor<1>,
}

/// What the current and reference policies say about one stored transition.
#[derive(Debug, Clone)]
pub struct StepInputs {
    /// `log p_θ(x_{k+1} | x_k)` `[B]`, differentiable.
    pub log_prob: Tensor<1>,
    /// The rollout log-prob `[B]`.
    pub old_log_prob: Tensor<1>,
    /// Advantages `[B]`.
    pub advantages: Tensor<1>,
    /// The current Gaussian mean `[B, C, H, W]`, differentiable.
    pub mean: Tensor<4>,
    /// The step's standard deviation σ_k.
    pub std: f64,
    /// The reference mean `[B, C, H, W]` (closed-form KL).
    pub ref_mean: Option<Tensor<4>>,
    /// `log p_ref(x_{k+1} | x_k)` `[B]` (K3).
    pub ref_log_prob: Option<Tensor<1>>,
    /// Reduction of the log-probs (and of the closed-form KL).
    pub reduction: LogProbReduction,
    /// The rollout's mean `μ_old` `[B, C, H, W]` (GRPO-Guard's ratio normalisation).
    pub old_mean: Option<Tensor<4>>,
    /// The step's `|Δt|` (GRPO-Guard's reweighting).
    pub step_size: Option<f64>,
}

/// Evaluates one step's loss.
///
/// # Errors
/// A KL penalty without the reference quantity its estimator needs.
pub fn step_loss(
    inputs: StepInputs,
    objective: Objective,
    kl: Option<KlPenalty>,
) -> Result<StepLoss> {
    let b = inputs.log_prob.dims()[0];
    let device = inputs.log_prob.device();
    let (policy, ratio, clip_fraction) = match objective {
        Objective::Reinforce => {
            let ratio = (inputs.log_prob.clone() - inputs.old_log_prob.clone())
                .exp()
                .detach();
            let loss = (inputs.advantages.clone() * inputs.log_prob.clone())
                .mean()
                .neg();
            (loss, ratio, Tensor::zeros([1], &device))
        }
        Objective::PpoClip { clip_range } => {
            let out = ppo_clip_loss(
                inputs.log_prob.clone(),
                inputs.old_log_prob.clone(),
                inputs.advantages.clone(),
                clip_range,
            );
            (out.loss, out.ratio, out.clip_fraction)
        }
        Objective::RatioNormClip { clip_range } => {
            let old_mean = inputs.old_mean.clone().ok_or_else(|| {
                RlError::config(
                    "ratio_norm",
                    "GRPO-Guard needs the rollout's means (roll out with keep_means)",
                )
            })?;
            let dt = inputs
                .step_size
                .filter(|d| d.is_finite() && *d > 0.0)
                .ok_or_else(|| {
                    RlError::config("ratio_norm", "GRPO-Guard needs the step's |Δt| > 0")
                })?;
            let log_ratio = normalized_log_ratio(
                inputs.log_prob.clone(),
                inputs.old_log_prob.clone().detach(),
                inputs.mean.clone(),
                old_mean.detach(),
                inputs.std,
                inputs.reduction,
            );
            let out = ppo_clip_loss(
                log_ratio,
                Tensor::zeros([b], &device),
                inputs.advantages.clone(),
                clip_range,
            );
            (out.loss.div_scalar(dt), out.ratio, out.clip_fraction)
        }
    };
    let (loss, kl_values) = match kl {
        Some(penalty) => {
            let per_sample = match penalty.estimator {
                KlEstimator::ClosedForm => {
                    let ref_mean = inputs.ref_mean.ok_or_else(|| {
                        RlError::config("kl", "closed-form KL needs the reference mean")
                    })?;
                    gaussian_kl(
                        inputs.mean,
                        inputs.std,
                        ref_mean.detach(),
                        inputs.std,
                        inputs.reduction,
                    )
                }
                KlEstimator::K3 => {
                    let ref_lp = inputs.ref_log_prob.ok_or_else(|| {
                        RlError::config("kl", "the K3 estimator needs the reference log-prob")
                    })?;
                    k3_kl(inputs.log_prob, ref_lp.detach())
                }
            };
            // β = 0 still measures the KL (for monitoring) but adds nothing to the graph.
            let loss = if penalty.beta > 0.0 {
                policy.clone() + per_sample.clone().mean().mul_scalar(penalty.beta)
            } else {
                policy.clone()
            };
            (loss, per_sample.detach())
        }
        None => (policy.clone(), Tensor::zeros([b], &device)),
    };
    Ok(StepLoss {
        loss,
        policy: policy.detach(),
        kl: kl_values,
        ratio,
        clip_fraction,
    })
}
