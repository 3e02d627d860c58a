//! G²RPO, Granular GRPO (Zhou et al., "G²RPO: Granular GRPO for Precise Reward in Flow
//! Models", arXiv 2510.01982; public code bcmi/Granular-GRPO, `train_g2rpo_hps.py`).
//!
//! **Singular stochastic sampling.** For each branch step `k` of a range (the public recipe: the
//! first 8 of 16), every group of `G` samples of a prompt starts from **one** shared noise and
//! follows the deterministic ODE to `x_k`; there each sample takes **one** SDE step with its own
//! noise, and the rest is ODE again. The only stochastic — and the only trained — transition is
//! `x_k → x_{k+1}`, so the reward differences within the group are credited to that step alone.
//!
//! **Multi-granularity advantage integration.** After the branch, the completion is run at
//! several granularities `g` (the public recipe: 1 and 2): the ODE on the grid
//! `t_{k+1}, t_{k+2}, t_{k+2+g}, t_{k+2+2g}, …` (ending at `t = 0`). Each granularity's images are
//! scored, standardised within their group, and the advantages are **summed** over `g`:
//!
//! ```text
//! Â_i = clip( Σ_g (r_{i,g} − mean_{group} r_{·,g}) / (std_{group} r_{·,g} + 1e-8), ±adv_clip_max )
//! L_k = mean_i max(−Â_i ρ_{i,k}, −Â_i clip(ρ_{i,k}, 1 − ε, 1 + ε))
//! ```
//!
//! with `ρ` the ratio of the branch transition (the Flow-GRPO SDE kernel), one optimizer step
//! per branch step, the rollouts of every branch step drawn first with `θ_old`; no KL term (the
//! public recipe). The public code's std is unbiased; this one is the population std (the same
//! ranking, a scale of `√((G−1)/G)`).

use std::ops::Range;

use align_core::{GroupStd, clip_advantages, group_advantages};

use crate::error::{Result, RlError};

/// G²RPO hyper-parameters (the `[g2rpo]` table of `align train`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct G2rpoConfig {
    /// PPO clip range ε of the branch transition.
    pub clip_range: f64,
    /// Clip of the summed advantages.
    pub adv_clip_max: f64,
    /// Completion granularities `g` (strides of the ODE grid after the branch).
    pub granularities: Vec<usize>,
    /// Branch steps `[start, end)`; absent = the first half of the rollout's steps (the public
    /// recipe: 8 of 16).
    pub branch_steps: Option<(usize, usize)>,
}

impl Default for G2rpoConfig {
    fn default() -> Self {
        Self {
            clip_range: 1e-4,
            adv_clip_max: 5.0,
            granularities: vec![1, 2],
            branch_steps: None,
        }
    }
}

impl G2rpoConfig {
    /// The branch steps for a rollout of `num_steps` steps.
    pub fn branch_range(&self, num_steps: usize) -> Range<usize> {
        match self.branch_steps {
            Some((a, b)) => a..b,
            None => 0..(num_steps / 2).max(1),
        }
    }

    /// Checks the fields against a rollout of `num_steps` steps.
    ///
    /// # Errors
    /// [`RlError::Config`] naming the field.
    pub fn validate(&self, num_steps: usize) -> Result<()> {
        if !(self.clip_range.is_finite() && self.clip_range > 0.0) {
            return Err(RlError::config("clip_range", "must be > 0"));
        }
        if !(self.adv_clip_max.is_finite() && self.adv_clip_max > 0.0) {
            return Err(RlError::config("adv_clip_max", "must be > 0"));
        }
        if self.granularities.is_empty() || self.granularities.contains(&0) {
            return Err(RlError::config(
                "granularities",
                "list at least one stride, each ≥ 1",
            ));
        }
        let r = self.branch_range(num_steps);
        if r.is_empty() || r.end > num_steps {
            return Err(RlError::config(
                "branch_steps",
                format!(
                    "[{}, {}) must be a non-empty range inside 0..{num_steps}",
                    r.start, r.end
                ),
            ));
        }
        Ok(())
    }
}

/// The ODE completion grid after branch step `k` at granularity `g`: `t_{k+1}`, then
/// `t_{k+2}, t_{k+2+g}, …` of the rollout grid `times` (`t_0 = 1 > … > t_K = 0`), ending at
/// `t_K` (appended when the stride misses it).
///
/// # Errors
/// `g = 0`, or `k + 1` beyond the grid.
pub fn granular_times(times: &[f64], k: usize, g: usize) -> Result<Vec<f64>> {
    if g == 0 {
        return Err(RlError::config("granularities", "a stride must be ≥ 1"));
    }
    let last = times.len().saturating_sub(1);
    if k + 1 > last {
        return Err(align_core::CoreError::shape("branch step", format!("< {last}"), k).into());
    }
    let mut out = vec![times[k + 1]];
    let mut i = k + 2;
    while i <= last {
        out.push(times[i]);
        i += g;
    }
    if out.last() != times.last() {
        out.push(times[last]);
    }
    Ok(out)
}

/// The multi-granularity advantages: per granularity, rewards standardised within their group
/// (`rewards[g][i]`; a group whose rewards are all equal contributes 0), summed over the
/// granularities and clipped to `±adv_clip_max`.
///
/// # Errors
/// No granularity, mismatched lengths, non-finite rewards.
pub fn multi_granularity_advantages(
    rewards: &[Vec<f64>],
    group_ids: &[usize],
    adv_clip_max: f64,
) -> Result<Vec<f64>> {
    let first = rewards
        .first()
        .ok_or_else(|| RlError::config("granularities", "no granularity scored"))?;
    let mut sum = vec![0.0; first.len()];
    for r in rewards {
        let a = group_advantages(r, group_ids, GroupStd::Group, 1e-8)?;
        if a.len() != sum.len() {
            return Err(
                align_core::CoreError::shape("granularity rewards", sum.len(), a.len()).into(),
            );
        }
        for (s, v) in sum.iter_mut().zip(a) {
            *s += v;
        }
    }
    clip_advantages(&mut sum, adv_clip_max);
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_grids_keep_the_next_point_then_stride_to_zero() {
        let times: Vec<f64> = (0..=10).map(|i| 1.0 - i as f64 / 10.0).collect();
        let idx = |v: Vec<f64>| -> Vec<usize> {
            v.iter()
                .map(|t| ((1.0 - t) * 10.0).round() as usize)
                .collect()
        };
        assert_eq!(
            idx(granular_times(&times, 3, 1).unwrap()),
            vec![4, 5, 6, 7, 8, 9, 10]
        );
        assert_eq!(
            idx(granular_times(&times, 3, 2).unwrap()),
            vec![4, 5, 7, 9, 10]
        );
        assert_eq!(
            idx(granular_times(&times, 2, 2).unwrap()),
            vec![3, 4, 6, 8, 10]
        );
        assert_eq!(idx(granular_times(&times, 9, 3).unwrap()), vec![10]);
        assert!(granular_times(&times, 10, 1).is_err());
        assert!(granular_times(&times, 0, 0).is_err());
    }

    #[test]
    fn advantages_are_summed_group_z_scores() {
        // Two granularities, one group of 3 and one of 2.
        let g1 = vec![1.0, 2.0, 3.0, 5.0, 5.0];
        let g2 = vec![3.0, 2.0, 1.0, 0.0, 1.0];
        let a = multi_granularity_advantages(&[g1, g2], &[0, 0, 0, 1, 1], 5.0).unwrap();
        // Group 0: z(g1) = (−1, 0, 1)/√(2/3), z(g2) = (1, 0, −1)/√(2/3): they cancel.
        for v in &a[..3] {
            assert!(v.abs() < 1e-9, "{a:?}");
        }
        // Group 1: g1 ties (0), g2 = (0, 1) → (−1, 1).
        assert!(
            (a[3] + 1.0).abs() < 1e-6 && (a[4] - 1.0).abs() < 1e-6,
            "{a:?}"
        );
        let clipped = multi_granularity_advantages(&vec![vec![0.0, 1.0]; 4], &[0, 0], 2.5).unwrap();
        assert_eq!(clipped, vec![-2.5, 2.5]);
        assert!(multi_granularity_advantages(&[], &[], 1.0).is_err());
    }

    #[test]
    fn branch_ranges_default_to_the_first_half_and_are_checked() {
        let c = G2rpoConfig::default();
        assert_eq!(c.branch_range(16), 0..8);
        c.validate(10).unwrap();
        let bad = G2rpoConfig {
            branch_steps: Some((4, 12)),
            ..c.clone()
        };
        assert!(
            bad.validate(10)
                .unwrap_err()
                .to_string()
                .starts_with("branch_steps")
        );
        let bad = G2rpoConfig {
            granularities: vec![1, 0],
            ..c
        };
        assert!(
            bad.validate(10)
                .unwrap_err()
                .to_string()
                .starts_with("granularities")
        );
    }
}
