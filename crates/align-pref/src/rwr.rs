//! Reward-weighted regression (offline; Lee et al. 2023, DDPO's RWR baseline): a denoising loss
//! on generated samples, each weighted by a monotone function of its reward.
//!
//! ```text
//! L = Σ_b w_b e_θ(x_b) / Σ_b w_b,     w_b = exp(R_b / α)   (exponential)
//!                                      w_b = rank_b / B     (rank: 1/B … 1, ties averaged)
//! ```
//!
//! with `e_θ` the per-sample denoising error ([`crate::denoising_errors`]): the weighted
//! maximum-likelihood step toward high-reward samples. Exponential weights are computed as
//! `exp((R_b − max R)/α)` (the same normalised weights, no overflow).

use align_core::{Condition, Denoiser};
use burn::tensor::{Tensor, TensorData};

use crate::error::{PrefError, Result};
use crate::noising::{NoiseLevels, denoising_errors};

/// The map from rewards to weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RewardWeighting {
    /// `exp(R / α)`.
    Exponential {
        /// Temperature α.
        temperature: f64,
    },
    /// The reward's rank, from `1/B` (lowest) to 1 (highest); ties share their mean rank.
    Rank,
}

/// Normalised weights `w_b / Σ w` of rewards.
///
/// # Errors
/// Empty or non-finite rewards, a non-positive temperature.
pub fn rwr_weights(rewards: &[f64], weighting: RewardWeighting) -> Result<Vec<f64>> {
    if rewards.is_empty() {
        return Err(PrefError::config("rewards", "empty batch"));
    }
    if let Some(v) = rewards.iter().find(|v| !v.is_finite()) {
        return Err(PrefError::NonFinite {
            what: "a reward".into(),
            value: *v,
        });
    }
    let raw: Vec<f64> = match weighting {
        RewardWeighting::Exponential { temperature } => {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(PrefError::config("temperature", "must be positive"));
            }
            let max = rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            rewards
                .iter()
                .map(|r| ((r - max) / temperature).exp())
                .collect()
        }
        RewardWeighting::Rank => {
            let n = rewards.len();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| rewards[a].total_cmp(&rewards[b]));
            let mut ranks = vec![0.0; n];
            let mut i = 0;
            while i < n {
                let mut j = i;
                while j + 1 < n && rewards[order[j + 1]] == rewards[order[i]] {
                    j += 1;
                }
                let mean_rank = (i + j) as f64 / 2.0 + 1.0;
                for &k in &order[i..=j] {
                    ranks[k] = mean_rank / n as f64;
                }
                i = j + 1;
            }
            ranks
        }
    };
    let total: f64 = raw.iter().sum();
    Ok(raw.iter().map(|w| w / total).collect())
}

/// The reward-weighted denoising loss (module docs), shape `[1]`, and the weights used.
///
/// # Errors
/// As [`rwr_weights`], and mismatched shapes.
pub fn rwr_loss<M: Denoiser + ?Sized>(
    policy: &M,
    images: Tensor<4>,
    rewards: &[f64],
    weighting: RewardWeighting,
    noise: Tensor<4>,
    levels: &NoiseLevels,
    condition: &Condition,
) -> Result<(Tensor<1>, Vec<f64>)> {
    let b = images.dims()[0];
    if rewards.len() != b {
        return Err(align_core::CoreError::shape("rewards", b, rewards.len()).into());
    }
    let w = rwr_weights(rewards, weighting)?;
    let e = denoising_errors(policy, images, noise, levels, condition)?;
    let wt = Tensor::<1>::from_data(
        TensorData::new(w.iter().map(|&x| x as f32).collect::<Vec<_>>(), [b]),
        &e.device(),
    );
    Ok(((e * wt).sum(), w))
}
