//! Flow-GRPO (Liu et al., 2025): GRPO on a flow-matching model through its
//! marginal-preserving SDE.
//!
//! `G` samples per prompt form a group; every step of trajectory `i` shares the advantage
//!
//! ```text
//! Â_i = (r_i − mean_{j ∈ g(i)} r_j) / (std + 1e-4),   clipped to [−adv_clip_max, adv_clip_max]
//! L   = (1/|S|) Σ_k mean_i [ max(−Â_i ρ_{i,k}, −Â_i clip(ρ_{i,k}, 1 − ε, 1 + ε)) + β KL_{i,k} ]
//! ```
//!
//! with `ρ` the per-step ratio of the SDE transition
//! `x_{t+Δt} ~ N(x_t + [v + σ_t²/(2t) (x_t + (1−t) v)] Δt, σ_t² |Δt|)`, `σ_t = a √(t/(1−t))`
//! (the sampler: `align_samplers::FlowSdeSampler`), and the KL to the reference (adapters off)
//! in closed form (default) or by K3. `std` is over the whole batch by default
//! (`global_std`, as the official code), the mean per group; groups whose rewards are all equal
//! get `Â = 0` and are dropped from the update. Train on fewer steps than evaluation (10 vs 40)
//! and, for "Flow-GRPO-Fast", on a window of SDE steps (`FlowSdeSampler::with_window`; the other
//! steps are ODE steps and are never trained). `ratio_norm = true` is GRPO-Guard: the clip
//! acts on the normalised ratio of [`crate::grpo_guard`].
//!
//! Defaults (official GenEval config): ε = 1e-4, `adv_clip_max` = 5, β = 0.04 on the official
//! code's KL scale `‖Δμ‖²/(2σ_t²)`, i.e. β = 0.004 on the exact per-step KL used here with 10
//! steps (`|Δt|` ≈ 0.1).

use align_core::{GroupStd, Trajectory, clip_advantages, group_advantages};

use crate::algorithm::OnlineAlgorithm;
use crate::error::{Result, RlError};
use crate::objective::{KlEstimator, KlPenalty, Objective};

/// Flow-GRPO hyper-parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowGrpoConfig {
    /// PPO clip range ε.
    pub clip_range: f64,
    /// Advantage clip.
    pub adv_clip_max: f64,
    /// KL weight β (exact per-step KL).
    pub beta: f64,
    /// KL estimator.
    pub kl_estimator: KlEstimator,
    /// Standardise by the batch std (true) or each group's (false).
    pub global_std: bool,
    /// Passes over each batch.
    pub inner_epochs: usize,
    /// Optimizer steps per pass.
    pub minibatches: usize,
    /// GRPO-Guard: PPO-clip on the normalised ratio `exp((log ρ + b) · s)` with each step's
    /// policy loss divided by its `|Δt|` ([`crate::grpo_guard`]); `clip_range` is then on the
    /// normalised scale (the public recipes: 2e-6).
    pub ratio_norm: bool,
    /// KL as a reward ([`crate::kl_reward`]): β_r of `R_{i,k} = r_i − β_r KL_{i,k}`, the
    /// advantages then per step; 0 = off (the KL in the loss, `beta`, is separate).
    pub kl_reward: f64,
}

impl Default for FlowGrpoConfig {
    fn default() -> Self {
        Self {
            clip_range: 1e-4,
            adv_clip_max: 5.0,
            beta: 0.004,
            kl_estimator: KlEstimator::ClosedForm,
            global_std: true,
            inner_epochs: 1,
            minibatches: 2,
            ratio_norm: false,
            kl_reward: 0.0,
        }
    }
}

/// Flow-GRPO.
#[derive(Debug, Clone)]
pub struct FlowGrpo {
    config: FlowGrpoConfig,
}

impl FlowGrpo {
    /// Flow-GRPO with a configuration.
    ///
    /// # Errors
    /// Invalid clip range, β, or epoch counts.
    pub fn new(config: FlowGrpoConfig) -> Result<Self> {
        Objective::PpoClip {
            clip_range: config.clip_range,
        }
        .validate()?;
        KlPenalty {
            beta: config.beta,
            estimator: config.kl_estimator,
        }
        .validate()?;
        if config.inner_epochs == 0 || config.minibatches == 0 {
            return Err(RlError::config("inner_epochs / minibatches", "must be ≥ 1"));
        }
        if !(config.adv_clip_max.is_finite() && config.adv_clip_max > 0.0) {
            return Err(RlError::config("adv_clip_max", "must be positive"));
        }
        if !(config.kl_reward.is_finite() && config.kl_reward >= 0.0) {
            return Err(RlError::config(
                "kl_reward",
                format!("{} must be a finite number ≥ 0", config.kl_reward),
            ));
        }
        Ok(Self { config })
    }
}

impl OnlineAlgorithm for FlowGrpo {
    fn name(&self) -> &'static str {
        "flow-grpo"
    }
    fn objective(&self) -> Objective {
        if self.config.ratio_norm {
            Objective::RatioNormClip {
                clip_range: self.config.clip_range,
            }
        } else {
            Objective::PpoClip {
                clip_range: self.config.clip_range,
            }
        }
    }
    fn kl(&self) -> Option<KlPenalty> {
        Some(KlPenalty {
            beta: self.config.beta,
            estimator: self.config.kl_estimator,
        })
    }
    fn inner_epochs(&self) -> usize {
        self.config.inner_epochs
    }
    fn minibatches(&self) -> usize {
        self.config.minibatches
    }
    fn advantages(&mut self, trajectory: &Trajectory, rewards: &[f64]) -> Result<Vec<f64>> {
        let std = if self.config.global_std {
            GroupStd::Global
        } else {
            GroupStd::Group
        };
        let mut adv = group_advantages(rewards, &trajectory.group_ids, std, 1e-4)?;
        clip_advantages(&mut adv, self.config.adv_clip_max);
        Ok(adv)
    }
    fn uses_dense_rewards(&self) -> bool {
        self.config.kl_reward > 0.0
    }
    fn kl_reward(&self) -> Option<f64> {
        (self.config.kl_reward > 0.0).then_some(self.config.kl_reward)
    }
    /// With `kl_reward`: per step, the group-relative advantages of the KL-penalised step
    /// rewards `dense[i][k] = r_i − β_r KL_{i,k}` ([`crate::kl_rewards`]).
    fn step_advantages(
        &mut self,
        trajectory: &Trajectory,
        dense: &[Vec<f64>],
        steps: &[usize],
    ) -> Result<Vec<Vec<f64>>> {
        if !self.uses_dense_rewards() {
            return Err(RlError::config(
                "dense_rewards",
                "flow-grpo takes per-step rewards only with kl_reward > 0",
            ));
        }
        crate::dense_grpo::step_group_advantages(
            trajectory,
            dense,
            steps,
            self.config.global_std,
            self.config.adv_clip_max,
        )
    }
    fn drop_zero_advantages(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the KL reward, two samples of a group with the same terminal reward are ranked by
    /// their step KL: the one further from the reference gets the negative advantage, step by
    /// step; without it, they tie.
    #[test]
    fn the_kl_reward_ranks_equal_rewards_by_their_step_kl() {
        let device = align_core::test_device();
        let traj = Trajectory {
            latents: vec![burn::tensor::Tensor::zeros([2, 1, 1, 1], &device); 3],
            times: vec![1.0, 0.5, 0.0],
            log_probs: vec![None, None],
            stds: vec![0.1, 0.1],
            means: Vec::new(),
            pred_x0: Vec::new(),
            reduction: align_core::LogProbReduction::Mean,
            guidance_scale: 1.0,
            seed: 0,
            sample_ids: vec![0, 1],
            condition_ids: vec![0, 0],
            group_ids: vec![0, 0],
            rewards: None,
        };
        let mut algo = FlowGrpo::new(FlowGrpoConfig {
            kl_reward: 0.5,
            ..FlowGrpoConfig::default()
        })
        .unwrap();
        assert_eq!(algo.kl_reward(), Some(0.5));
        let dense = crate::kl_rewards(&[1.0, 1.0], &[vec![0.0, 0.4], vec![0.2, 0.0]], 0.5).unwrap();
        let adv = algo.step_advantages(&traj, &dense, &[0, 1]).unwrap();
        assert!(adv[0][0] > 0.0 && adv[1][0] < 0.0, "{adv:?}");
        assert!(adv[0][1] < 0.0 && adv[1][1] > 0.0, "{adv:?}");
        assert!((adv[0][0] + adv[1][0]).abs() < 1e-12);
        let mut plain = FlowGrpo::new(FlowGrpoConfig::default()).unwrap();
        assert!(!plain.uses_dense_rewards() && plain.kl_reward().is_none());
        assert_eq!(
            plain.advantages(&traj, &[1.0, 1.0]).unwrap(),
            vec![0.0, 0.0]
        );
        assert!(plain.step_advantages(&traj, &dense, &[0]).is_err());
        assert!(
            FlowGrpo::new(FlowGrpoConfig {
                kl_reward: -1.0,
                ..FlowGrpoConfig::default()
            })
            .is_err()
        );
    }
}
