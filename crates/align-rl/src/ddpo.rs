//! DDPO (Black et al., 2023): policy gradients over the denoising MDP.
//!
//! With per-prompt standardised advantages `Â_i = (R_i − μ_c) / (σ_c + ε)` (running
//! statistics of the prompt's last `buffer_size` rewards; batch statistics until a prompt has
//! `min_count` of them), clipped to `[−adv_clip_max, adv_clip_max]`:
//!
//! ```text
//! DDPO-SF:  L = −(1/|S|) Σ_k mean_i Â_i log p_θ(x_{k+1} | x_k, c_i)          (one update per batch)
//! DDPO-IS:  L =  (1/|S|) Σ_k mean_i max(−Â_i ρ_{i,k}, −Â_i clip(ρ_{i,k}, 1 − ε, 1 + ε)),
//!           ρ_{i,k} = p_θ(x_{k+1} | x_k) / p_θ_old(x_{k+1} | x_k)               (per-step ratio)
//! ```
//!
//! Defaults are ddpo-pytorch's: DDIM η = 1, buffer 16 / min count 16, ε_std = 1e-6,
//! `adv_clip_max` = 10, clip range ε = 1e-4 (mean-reduced log-probs). DDPO needs a stochastic
//! sampler (DDPM, or DDIM with η > 0): a deterministic step has no log-density.

use align_core::{PromptStatTracker, Trajectory, clip_advantages};

use crate::algorithm::OnlineAlgorithm;
use crate::error::{Result, RlError};
use crate::objective::{KlPenalty, Objective};

/// DDPO's two estimators.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DdpoVariant {
    /// Score function (REINFORCE), one update per rollout batch.
    Sf,
    /// Importance sampling with per-step PPO-clip ratios.
    Is,
}

/// DDPO hyper-parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DdpoConfig {
    /// SF or IS.
    pub variant: DdpoVariant,
    /// PPO clip range ε (IS only).
    pub clip_range: f64,
    /// Advantage clip.
    pub adv_clip_max: f64,
    /// Passes over each batch (IS; SF is always 1).
    pub inner_epochs: usize,
    /// Optimizer steps per pass.
    pub minibatches: usize,
    /// Per-prompt reward buffer length.
    pub buffer_size: usize,
    /// Rewards a prompt needs before its own statistics are used.
    pub min_count: usize,
}

impl Default for DdpoConfig {
    fn default() -> Self {
        Self {
            variant: DdpoVariant::Is,
            clip_range: 1e-4,
            adv_clip_max: 10.0,
            inner_epochs: 1,
            minibatches: 2,
            buffer_size: 16,
            min_count: 16,
        }
    }
}

/// DDPO with its per-prompt statistics.
#[derive(Debug, Clone)]
pub struct Ddpo {
    config: DdpoConfig,
    baseline: PromptBaseline,
}

/// DDPO's (and DPOK's) advantages: per-prompt running z-scores, clipped; the tracker is the
/// algorithm's checkpointed state.
#[derive(Debug, Clone)]
pub(crate) struct PromptBaseline {
    tracker: PromptStatTracker,
    prompts: Vec<String>,
    adv_clip_max: f64,
}

impl PromptBaseline {
    pub(crate) fn new(
        buffer_size: usize,
        min_count: usize,
        adv_clip_max: f64,
        prompts: Vec<String>,
    ) -> Result<Self> {
        if !(adv_clip_max.is_finite() && adv_clip_max > 0.0) {
            return Err(RlError::config("adv_clip_max", "must be positive"));
        }
        Ok(Self {
            tracker: PromptStatTracker::new(buffer_size, min_count, 1e-6)?,
            prompts,
            adv_clip_max,
        })
    }

    pub(crate) fn advantages(
        &mut self,
        trajectory: &Trajectory,
        rewards: &[f64],
    ) -> Result<Vec<f64>> {
        let keys = prompt_keys(&self.prompts, &trajectory.condition_ids)?;
        let mut adv = self.tracker.update(&keys, rewards)?;
        clip_advantages(&mut adv, self.adv_clip_max);
        Ok(adv)
    }

    pub(crate) fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.tracker).unwrap_or(serde_json::Value::Null)
    }

    pub(crate) fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        if state.is_null() {
            return Ok(());
        }
        self.tracker = serde_json::from_value(state.clone()).map_err(|e| {
            RlError::config("checkpoint state", format!("not a prompt tracker: {e}"))
        })?;
        Ok(())
    }
}

impl Ddpo {
    /// DDPO over a prompt table (`condition_ids` index it).
    ///
    /// # Errors
    /// Invalid tracker sizes, clip range or epoch counts.
    pub fn new(config: DdpoConfig, prompts: Vec<String>) -> Result<Self> {
        Objective::PpoClip {
            clip_range: config.clip_range,
        }
        .validate()?;
        if config.inner_epochs == 0 || config.minibatches == 0 {
            return Err(RlError::config("inner_epochs / minibatches", "must be ≥ 1"));
        }
        let baseline = PromptBaseline::new(
            config.buffer_size,
            config.min_count,
            config.adv_clip_max,
            prompts,
        )?;
        Ok(Self { config, baseline })
    }

    /// The per-prompt statistics (saved in checkpoints).
    pub fn tracker(&self) -> &PromptStatTracker {
        &self.baseline.tracker
    }

    /// Restores the per-prompt statistics from a checkpoint.
    pub fn set_tracker(&mut self, tracker: PromptStatTracker) {
        self.baseline.tracker = tracker;
    }
}

impl OnlineAlgorithm for Ddpo {
    fn name(&self) -> &'static str {
        match self.config.variant {
            DdpoVariant::Sf => "ddpo-sf",
            DdpoVariant::Is => "ddpo-is",
        }
    }

    fn objective(&self) -> Objective {
        match self.config.variant {
            DdpoVariant::Sf => Objective::Reinforce,
            DdpoVariant::Is => Objective::PpoClip {
                clip_range: self.config.clip_range,
            },
        }
    }

    fn kl(&self) -> Option<KlPenalty> {
        None
    }

    fn inner_epochs(&self) -> usize {
        match self.config.variant {
            DdpoVariant::Sf => 1,
            DdpoVariant::Is => self.config.inner_epochs,
        }
    }

    fn minibatches(&self) -> usize {
        match self.config.variant {
            DdpoVariant::Sf => 1,
            DdpoVariant::Is => self.config.minibatches,
        }
    }

    fn advantages(&mut self, trajectory: &Trajectory, rewards: &[f64]) -> Result<Vec<f64>> {
        self.baseline.advantages(trajectory, rewards)
    }
    fn state(&self) -> serde_json::Value {
        self.baseline.state()
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.baseline.restore(state)
    }
}

/// The prompts of a batch's condition ids.
pub(crate) fn prompt_keys(prompts: &[String], ids: &[usize]) -> Result<Vec<String>> {
    ids.iter()
        .map(|&i| {
            prompts.get(i).cloned().ok_or_else(|| {
                RlError::config(
                    "condition_ids",
                    format!("{i} is outside the prompt table of {}", prompts.len()),
                )
            })
        })
        .collect()
}
