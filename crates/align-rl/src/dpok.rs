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

use align_core::Trajectory;

use crate::algorithm::OnlineAlgorithm;
use crate::ddpo::PromptBaseline;
use crate::error::Result;
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
    baseline: PromptBaseline,
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
        let baseline = PromptBaseline::new(
            config.buffer_size,
            config.min_count,
            config.adv_clip_max,
            prompts,
        )?;
        Ok(Self { config, baseline })
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
        self.baseline.advantages(trajectory, rewards)
    }
    fn state(&self) -> serde_json::Value {
        self.baseline.state()
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.baseline.restore(state)
    }
}
