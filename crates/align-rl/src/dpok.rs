//! DPOK (Fan et al., 2023): policy gradient with a per-step KL to the pretrained model.
//!
//! ```text
//! L = (1/|S|) Σ_k mean_i [ −Â_i log p_θ(x_{k+1} | x_k, c_i)  +  β KL(p_θ(·|x_k) ‖ p_ref(·|x_k)) ]
//! KL(p_θ ‖ p_ref) = ‖μ_θ − μ_ref‖² / (2 σ_k²)       (shared, fixed σ_k; mean over C·H·W)
//! ```
//!
//! Summed over the steps of a chain started from the same noise, these per-step KLs bound
//! `KL(p_θ(x₀|c) ‖ p_ref(x₀|c))` from above (it is an upper bound, not an equality). The reward
//! term is a score-function gradient; the KL term is pathwise in `μ_θ`. The reference is the
//! base model — with LoRA, the same model with adapters off. Advantages are per-prompt
//! standardised as in DDPO.

use align_core::{PromptStatTracker, Trajectory, clip_advantages};

use crate::algorithm::OnlineAlgorithm;
use crate::ddpo::prompt_keys;
use crate::error::{Result, RlError};
use crate::objective::{KlEstimator, KlPenalty, Objective};

/// DPOK hyper-parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpokConfig {
    /// KL weight β.
    pub beta: f64,
    /// Advantage clip.
    pub adv_clip_max: f64,
    /// Per-prompt reward buffer length.
    pub buffer_size: usize,
    /// Rewards a prompt needs before its own statistics are used.
    pub min_count: usize,
}

impl Default for DpokConfig {
    fn default() -> Self {
        Self {
            beta: 0.01,
            adv_clip_max: 10.0,
            buffer_size: 16,
            min_count: 16,
        }
    }
}

/// DPOK with its per-prompt statistics.
#[derive(Debug, Clone)]
pub struct Dpok {
    config: DpokConfig,
    tracker: PromptStatTracker,
    prompts: Vec<String>,
}

impl Dpok {
    /// DPOK over a prompt table.
    ///
    /// # Errors
    /// A negative β or invalid tracker sizes.
    pub fn new(config: DpokConfig, prompts: Vec<String>) -> Result<Self> {
        KlPenalty {
            beta: config.beta,
            estimator: KlEstimator::ClosedForm,
        }
        .validate()?;
        if !(config.adv_clip_max.is_finite() && config.adv_clip_max > 0.0) {
            return Err(RlError::config("adv_clip_max", "must be positive"));
        }
        let tracker = PromptStatTracker::new(config.buffer_size, config.min_count, 1e-6)?;
        Ok(Self {
            config,
            tracker,
            prompts,
        })
    }
}

impl OnlineAlgorithm for Dpok {
    fn name(&self) -> &'static str {
        "dpok"
    }
    fn objective(&self) -> Objective {
        Objective::Reinforce
    }
    fn kl(&self) -> Option<KlPenalty> {
        Some(KlPenalty {
            beta: self.config.beta,
            estimator: KlEstimator::ClosedForm,
        })
    }
    fn inner_epochs(&self) -> usize {
        1
    }
    fn minibatches(&self) -> usize {
        1
    }
    fn advantages(&mut self, trajectory: &Trajectory, rewards: &[f64]) -> Result<Vec<f64>> {
        let keys = prompt_keys(&self.prompts, &trajectory.condition_ids)?;
        let mut adv = self.tracker.update(&keys, rewards)?;
        clip_advantages(&mut adv, self.config.adv_clip_max);
        Ok(adv)
    }
    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.tracker).unwrap_or(serde_json::Value::Null)
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        if state.is_null() {
            return Ok(());
        }
        self.tracker = serde_json::from_value(state.clone()).map_err(|e| {
            RlError::config("checkpoint state", format!("not a prompt tracker: {e}"))
        })?;
        Ok(())
    }
}
