//! Advantage estimators: turn rewards into the weights of a policy gradient.
//!
//! All estimators standardise rewards, `Â = (r − μ) / (σ + ε)`, and differ only in which
//! rewards `μ` and `σ` are computed over:
//!
//! | estimator | statistics over | used by |
//! |---|---|---|
//! | [`batch_advantages`] | the whole batch | DDPO (simple form) |
//! | [`StatTracker`] keyed by prompt | a FIFO buffer of this prompt's recent rewards, batch stats until `min_count` | DDPO (`per_prompt_stat_tracking`) |
//! | [`group_advantages`] | the samples sharing a group (prompt) id; std optionally over the whole batch | GRPO, Flow-GRPO |
//! | [`StatTracker`] keyed by `(prompt, step)` | per prompt and denoising step | SDPO dense rewards |
//!
//! `σ` is the population standard deviation (divisor `n`). When every reward a statistic is
//! computed from is equal, `σ = 0` and the advantage is exactly 0 (never NaN, never a rounding
//! residue divided by `ε`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use crate::error::{CoreError, Result};

/// Mean and population standard deviation; the std is exactly 0 when all values are equal.
fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let all_equal = values.iter().all(|&v| v == values[0]);
    if all_equal {
        return (values[0], 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn standardise(r: f64, mean: f64, std: f64, eps: f64) -> f64 {
    if std == 0.0 {
        0.0
    } else {
        (r - mean) / (std + eps)
    }
}

fn check_finite(rewards: &[f64]) -> Result<()> {
    if rewards.is_empty() {
        return Err(CoreError::shape("rewards", "at least one reward", 0));
    }
    match rewards.iter().find(|r| !r.is_finite()) {
        Some(&bad) => Err(CoreError::NonFinite {
            what: "rewards".into(),
            value: bad,
        }),
        None => Ok(()),
    }
}

/// Batch z-score: `Â_i = (r_i − mean(r)) / (std(r) + eps)`.
///
/// # Errors
/// Empty input or a non-finite reward.
///
/// # Example
/// ```
/// let a = align_core::batch_advantages(&[1.0, 2.0, 3.0], 1e-6).unwrap();
/// assert!((a[0] + a[2]).abs() < 1e-12 && a[1] == 0.0);
/// ```
pub fn batch_advantages(rewards: &[f64], eps: f64) -> Result<Vec<f64>> {
    check_finite(rewards)?;
    let (mean, std) = mean_std(rewards);
    Ok(rewards
        .iter()
        .map(|&r| standardise(r, mean, std, eps))
        .collect())
}

/// Where the standard deviation of [`group_advantages`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum GroupStd {
    /// Std of the group itself (LLM GRPO).
    #[default]
    Group,
    /// Std of the whole batch, mean still per group (Flow-GRPO `global_std=True`).
    Global,
}

/// Group-relative (GRPO) advantages: `Â_i = (r_i − mean_{j∈g(i)} r_j) / (std + eps)`.
///
/// Every group has zero mean advantage; a group whose rewards are all equal gets 0.
///
/// # Errors
/// Length mismatch, empty input or a non-finite reward.
///
/// # Example
/// ```
/// use align_core::{group_advantages, GroupStd};
/// let a = group_advantages(&[1.0, 3.0, 5.0, 5.0], &[0, 0, 1, 1], GroupStd::Group, 1e-4).unwrap();
/// assert!(a[0] < 0.0 && a[1] > 0.0 && a[2] == 0.0 && a[3] == 0.0);
/// ```
pub fn group_advantages<G: Hash + Eq + Clone>(
    rewards: &[f64],
    groups: &[G],
    std_mode: GroupStd,
    eps: f64,
) -> Result<Vec<f64>> {
    check_finite(rewards)?;
    if groups.len() != rewards.len() {
        return Err(CoreError::shape("group ids", rewards.len(), groups.len()));
    }
    let mut members: HashMap<&G, Vec<usize>> = HashMap::new();
    for (i, g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    let (_, global_std) = mean_std(rewards);
    let mut out = vec![0.0; rewards.len()];
    for idx in members.values() {
        let values: Vec<f64> = idx.iter().map(|&i| rewards[i]).collect();
        let (mean, group_std) = mean_std(&values);
        let std = match std_mode {
            GroupStd::Group => group_std,
            GroupStd::Global => global_std,
        };
        for &i in idx {
            out[i] = if group_std == 0.0 {
                0.0
            } else {
                standardise(rewards[i], mean, std, eps)
            };
        }
    }
    Ok(out)
}

/// Clips advantages to `[−max, max]` (DDPO `adv_clip_max`, Flow-GRPO 5).
pub fn clip_advantages(advantages: &mut [f64], max: f64) {
    for a in advantages {
        *a = a.clamp(-max, max);
    }
}

/// Running per-key reward statistics (DDPO's per-prompt stat tracker, SDPO's per-step-prompt
/// tracker).
///
/// For each key the tracker keeps a FIFO buffer of the last `buffer_size` rewards. On
/// [`StatTracker::update`] the batch's rewards are first appended to their key's buffer; a key
/// whose buffer then holds fewer than `min_count` rewards is standardised with the statistics
/// of the **whole batch** instead of its buffer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StatTracker<K: Hash + Eq> {
    buffer_size: usize,
    min_count: usize,
    eps: f64,
    buffers: HashMap<K, VecDeque<f64>>,
}

/// A [`StatTracker`] keyed by prompt (DDPO).
pub type PromptStatTracker = StatTracker<String>;
/// A [`StatTracker`] keyed by `(prompt, step)` (SDPO's per-step-prompt normalisation).
pub type StepPromptStatTracker = StatTracker<(String, usize)>;

impl<K: Hash + Eq + Clone> StatTracker<K> {
    /// A tracker with DDPO's semantics. DDPO's defaults are `buffer_size = 16`,
    /// `min_count = 16`, `eps = 1e-6`; SDPO uses 32 / 16.
    ///
    /// # Errors
    /// `buffer_size == 0`, `min_count > buffer_size` (the buffer could never reach it) or a
    /// negative / non-finite `eps`.
    pub fn new(buffer_size: usize, min_count: usize, eps: f64) -> Result<Self> {
        if buffer_size == 0 {
            return Err(CoreError::config("buffer_size", "must be at least 1"));
        }
        if min_count > buffer_size {
            return Err(CoreError::config(
                "min_count",
                format!(
                    "{min_count} exceeds buffer_size {buffer_size}; buffer stats would never be used"
                ),
            ));
        }
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(CoreError::config(
                "eps",
                format!("{eps} is not a finite non-negative number"),
            ));
        }
        Ok(Self {
            buffer_size,
            min_count,
            eps,
            buffers: HashMap::new(),
        })
    }

    /// Appends the batch's rewards and returns their advantages; a key whose buffer holds
    /// fewer than `min_count` rewards is standardised by the whole batch's statistics.
    ///
    /// # Errors
    /// Length mismatch, empty input or a non-finite reward (the tracker is left unchanged).
    pub fn update(&mut self, keys: &[K], rewards: &[f64]) -> Result<Vec<f64>> {
        let everyone = vec![(); keys.len()];
        self.update_with_fallback(keys, rewards, &everyone)
    }

    /// Like [`StatTracker::update`], but a key whose buffer is still short falls back to the
    /// statistics of the batch's rewards that share its `fallback` group (SDPO: the rewards of
    /// the same denoising step, not those pooled over every step).
    ///
    /// # Errors
    /// Length mismatch, empty input or a non-finite reward (the tracker is left unchanged).
    pub fn update_with_fallback<G: Hash + Eq>(
        &mut self,
        keys: &[K],
        rewards: &[f64],
        fallback: &[G],
    ) -> Result<Vec<f64>> {
        check_finite(rewards)?;
        if keys.len() != rewards.len() {
            return Err(CoreError::shape("tracker keys", rewards.len(), keys.len()));
        }
        if fallback.len() != rewards.len() {
            return Err(CoreError::shape(
                "tracker fallback groups",
                rewards.len(),
                fallback.len(),
            ));
        }
        for (k, &r) in keys.iter().zip(rewards) {
            let buf = self.buffers.entry(k.clone()).or_default();
            buf.push_back(r);
            while buf.len() > self.buffer_size {
                buf.pop_front();
            }
        }
        let mut groups: HashMap<&G, Vec<f64>> = HashMap::new();
        for (g, &r) in fallback.iter().zip(rewards) {
            groups.entry(g).or_default().push(r);
        }
        let batch: HashMap<&G, (f64, f64)> =
            groups.iter().map(|(g, v)| (*g, mean_std(v))).collect();
        let mut stats: HashMap<&K, (f64, f64)> = HashMap::new();
        Ok(keys
            .iter()
            .zip(rewards)
            .zip(fallback)
            .map(|((k, &r), g)| {
                let buf = &self.buffers[k];
                let (mean, std) = if buf.len() < self.min_count {
                    batch[g]
                } else {
                    *stats
                        .entry(k)
                        .or_insert_with(|| mean_std(&buf.iter().copied().collect::<Vec<_>>()))
                };
                standardise(r, mean, std, self.eps)
            })
            .collect())
    }

    /// Number of rewards currently buffered for `key`.
    pub fn count(&self, key: &K) -> usize {
        self.buffers.get(key).map_or(0, VecDeque::len)
    }

    /// Forgets every buffer (DDPO clears per epoch when configured to).
    pub fn clear(&mut self) {
        self.buffers.clear();
    }
}

/// Discounted returns `G_t = r_t + γ G_{t+1}` (`G_{T} = r_T`) for one trajectory's per-step
/// rewards in generation order (SDPO uses `γ = 0.99`).
///
/// # Example
/// ```
/// let g = align_core::discounted_returns(&[1.0, 0.0, 2.0], 0.5);
/// assert_eq!(g, vec![1.5, 1.0, 2.0]);
/// ```
pub fn discounted_returns(rewards: &[f64], gamma: f64) -> Vec<f64> {
    let mut out = vec![0.0; rewards.len()];
    let mut acc = 0.0;
    for (i, &r) in rewards.iter().enumerate().rev() {
        acc = r + gamma * acc;
        out[i] = acc;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rewards_strategy() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(-100.0f64..100.0, 1..40)
    }

    proptest! {
        /// With short buffers, each fallback group is standardised by its own batch
        /// statistics (computed here by hand); one group for everyone is `update`.
        #[test]
        fn short_buffers_fall_back_to_their_group_statistics(
            rewards in rewards_strategy(),
            n_groups in 1usize..4,
        ) {
            let keys: Vec<(String, usize)> =
                (0..rewards.len()).map(|i| ("p".to_string(), i % n_groups)).collect();
            let groups: Vec<usize> = (0..rewards.len()).map(|i| i % n_groups).collect();
            let mut t = StepPromptStatTracker::new(64, 64, 1e-6).unwrap();
            let adv = t.update_with_fallback(&keys, &rewards, &groups).unwrap();
            for g in 0..n_groups {
                let members: Vec<f64> = rewards
                    .iter()
                    .zip(&groups)
                    .filter(|(_, gg)| **gg == g)
                    .map(|(r, _)| *r)
                    .collect();
                let n = members.len() as f64;
                let mean = members.iter().sum::<f64>() / n;
                let std = (members.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
                for (i, &r) in rewards.iter().enumerate() {
                    if groups[i] == g {
                        let want = if std < 1e-12 { 0.0 } else { (r - mean) / (std + 1e-6) };
                        prop_assert!((adv[i] - want).abs() < 1e-6 * want.abs().max(1.0));
                    }
                }
            }
            let mut a = StepPromptStatTracker::new(64, 64, 1e-6).unwrap();
            let mut b = StepPromptStatTracker::new(64, 64, 1e-6).unwrap();
            let one = vec![0u8; rewards.len()];
            prop_assert_eq!(
                a.update(&keys, &rewards).unwrap(),
                b.update_with_fallback(&keys, &rewards, &one).unwrap()
            );
            prop_assert!(b.update_with_fallback(&keys, &rewards, &one[1..]).is_err());
        }

        #[test]
        fn group_advantages_have_zero_mean_per_group(
            rewards in rewards_strategy(),
            n_groups in 1usize..5,
            global in any::<bool>(),
        ) {
            let groups: Vec<usize> = (0..rewards.len()).map(|i| i % n_groups).collect();
            let mode = if global { GroupStd::Global } else { GroupStd::Group };
            let adv = group_advantages(&rewards, &groups, mode, 1e-4).unwrap();
            for g in 0..n_groups {
                let members: Vec<f64> = adv.iter().zip(&groups).filter(|(_, gg)| **gg == g).map(|(a, _)| *a).collect();
                if members.is_empty() { continue; }
                let mean = members.iter().sum::<f64>() / members.len() as f64;
                prop_assert!(mean.abs() < 1e-9, "group {g} mean {mean}");
                prop_assert!(members.iter().all(|a| a.is_finite()));
            }
        }

        #[test]
        fn equal_rewards_give_exactly_zero(value in -1e3f64..1e3, n in 1usize..30) {
            let rewards = vec![value; n];
            let groups = vec![0u8; n];
            for mode in [GroupStd::Group, GroupStd::Global] {
                let adv = group_advantages(&rewards, &groups, mode, 1e-4).unwrap();
                prop_assert!(adv.iter().all(|&a| a == 0.0), "{adv:?}");
            }
            let adv = batch_advantages(&rewards, 1e-6).unwrap();
            prop_assert!(adv.iter().all(|&a| a == 0.0));
        }

        #[test]
        fn batch_advantages_are_standardised(rewards in prop::collection::vec(-10.0f64..10.0, 2..50)) {
            let adv = batch_advantages(&rewards, 0.0).unwrap();
            let n = adv.len() as f64;
            let mean = adv.iter().sum::<f64>() / n;
            let var = adv.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n;
            prop_assert!(mean.abs() < 1e-9);
            let all_equal = rewards.iter().all(|&r| r == rewards[0]);
            let ok = if all_equal { var == 0.0 } else { (var - 1.0).abs() < 1e-9 };
            prop_assert!(ok, "variance {}", var);
        }

        #[test]
        fn tracker_uses_batch_stats_until_min_count(
            rewards in prop::collection::vec(-10.0f64..10.0, 6),
            later in prop::collection::vec(-10.0f64..10.0, 6),
        ) {
            // Two prompts, three rewards each per batch; min_count 4 is reached on the 2nd batch.
            let keys: Vec<String> = (0..6).map(|i| format!("p{}", i % 2)).collect();
            let mut tracker = PromptStatTracker::new(5, 4, 1e-6).unwrap();
            let first = tracker.update(&keys, &rewards).unwrap();
            prop_assert_eq!(first, batch_advantages(&rewards, 1e-6).unwrap());
            let second = tracker.update(&keys, &later).unwrap();
            for p in 0..2 {
                // Buffer is FIFO of size 5: the last 2 of the first batch + 3 of the second.
                let mut buf: Vec<f64> = rewards.iter().skip(p).step_by(2).copied().collect();
                buf.extend(later.iter().skip(p).step_by(2));
                let buf = &buf[1..];
                prop_assert_eq!(tracker.count(&format!("p{p}")), 5);
                let (m, s) = mean_std(buf);
                for (i, &r) in later.iter().enumerate().skip(p).step_by(2) {
                    let expect = if s == 0.0 { 0.0 } else { (r - m) / (s + 1e-6) };
                    prop_assert!((second[i] - expect).abs() < 1e-9, "{} vs {}", second[i], expect);
                }
            }
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert!(batch_advantages(&[], 1e-6).is_err());
        assert!(matches!(
            batch_advantages(&[1.0, f64::NAN], 1e-6),
            Err(CoreError::NonFinite { .. })
        ));
        assert!(group_advantages(&[1.0, 2.0], &[0], GroupStd::Group, 1e-4).is_err());
        assert!(PromptStatTracker::new(0, 0, 1e-6).is_err());
        assert!(PromptStatTracker::new(4, 5, 1e-6).is_err());
        let mut t = PromptStatTracker::new(4, 2, 1e-6).unwrap();
        assert!(t.update(&["a".to_string()], &[f64::INFINITY]).is_err());
        assert_eq!(
            t.count(&"a".to_string()),
            0,
            "a rejected batch leaves the tracker unchanged"
        );
    }

    #[test]
    fn per_step_prompt_tracker_keys_by_step() {
        let mut t = StepPromptStatTracker::new(32, 1, 1e-6).unwrap();
        let keys = vec![
            ("a".to_string(), 0),
            ("a".to_string(), 0),
            ("a".to_string(), 1),
            ("a".to_string(), 1),
        ];
        let adv = t.update(&keys, &[1.0, 3.0, 10.0, 10.0]).unwrap();
        assert!((adv[0] + 1.0).abs() < 1e-5 && (adv[1] - 1.0).abs() < 1e-5);
        assert_eq!(&adv[2..], &[0.0, 0.0]);
    }

    #[test]
    fn clipping_and_returns() {
        let mut a = vec![-20.0, 0.5, 7.0];
        clip_advantages(&mut a, 5.0);
        assert_eq!(a, vec![-5.0, 0.5, 5.0]);
        let g = discounted_returns(&[0.0, 0.0, 1.0], 0.99);
        assert!((g[0] - 0.9801).abs() < 1e-12 && (g[1] - 0.99).abs() < 1e-12 && g[2] == 1.0);
        assert!(discounted_returns(&[], 0.9).is_empty());
    }
}
