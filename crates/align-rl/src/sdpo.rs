//! SDPO (Zhang et al., "Stepwise Diffusion Policy Optimization"): dense per-step rewards from
//! the predicted clean samples, and a squared loss on pairs of trajectories.
//!
//! For one trajectory with predicted clean samples `x̂₀^(k)` at steps `k = 0..K−1` (generation
//! order, `k = 0` the noisiest), only three steps are scored by the reward: the first `f = 0`,
//! the last `l = K − 1`, and the **anchor** `a = argmin_{0<k<K−1} (s^f_k + s^l_k)` — the step
//! least similar to both ends — where `s^j_k = cos(x̂₀^(k), x̂₀^(j))`. The other steps get
//!
//! ```text
//! r_k = (R_f s^f_k + R_a s^a_k + R_l s^l_k) / (s^f_k + s^a_k + s^l_k),   r_j = R_j for j ∈ {f, a, l}
//! G_k = r_k + γ G_{k+1}                        (discounted return, γ = 0.99)
//! ```
//!
//! `G_k` is standardised per (prompt, step) with a running tracker (buffer 32, min count 16,
//! batch fallback; `align_core::StepPromptStatTracker`) and clipped to ±5, giving `Â_k`. For a
//! pair (1, 2) of trajectories of the same prompt, with per-step log-ratios
//! `δ^i_k = log π_θ(x^i_{k+1} | x^i_k) − log π_old(x^i_{k+1} | x^i_k)` and weights
//! `w_k = λ^k / log_scale` (λ = 0.99):
//!
//! ```text
//! ℓ_k = ( w_k (δ¹_k − δ²_k) − (Â¹_k − Â²_k) )²
//! ```
//!
//! — a squared regression of the log-ratio difference onto the advantage difference, not a
//! logistic (DPO) loss. The clipped variant also evaluates `ℓ_k` with each `log π_θ` clamped to
//! `log π_old ± ε` and takes the element-wise maximum. These formulas follow the official code
//! (the paper gives none in closed form); see `../shared/notes/seeds-checklist.md` §1.B.

use burn::tensor::Tensor;

use crate::error::{Result, RlError};

/// Cosine similarity of two flattened vectors (0 if either is zero).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// The anchor step: among the interior steps `1..K−1`, the one minimising `s^f_k + s^l_k`.
///
/// # Errors
/// Fewer than 3 steps (no interior step).
pub fn anchor_step(pred_x0: &[Vec<f32>]) -> Result<usize> {
    let k = pred_x0.len();
    if k < 3 {
        return Err(RlError::config(
            "sdpo",
            format!("needs at least 3 steps for an anchor, got {k}"),
        ));
    }
    let (first, last) = (&pred_x0[0], &pred_x0[k - 1]);
    let mut best = (1, f64::INFINITY);
    for (i, x) in pred_x0.iter().enumerate().take(k - 1).skip(1) {
        let s = cosine_similarity(x, first) + cosine_similarity(x, last);
        if s < best.1 {
            best = (i, s);
        }
    }
    Ok(best.0)
}

/// Dense per-step rewards from the rewards of the first, anchor and last steps (module docs).
///
/// # Errors
/// Fewer than 3 steps, an anchor outside the interior, or non-finite rewards.
pub fn dense_rewards(pred_x0: &[Vec<f32>], anchor: usize, rewards: [f64; 3]) -> Result<Vec<f64>> {
    let k = pred_x0.len();
    if k < 3 || anchor == 0 || anchor >= k - 1 {
        return Err(RlError::config(
            "sdpo anchor",
            format!("{anchor} is not an interior step of {k}"),
        ));
    }
    if let Some(bad) = rewards.iter().find(|r| !r.is_finite()) {
        return Err(RlError::NonFinite {
            what: "SDPO step reward".into(),
            value: *bad,
        });
    }
    let [rf, ra, rl] = rewards;
    let ends = [&pred_x0[0], &pred_x0[anchor], &pred_x0[k - 1]];
    Ok((0..k)
        .map(|i| {
            if i == 0 {
                return rf;
            }
            if i == anchor {
                return ra;
            }
            if i == k - 1 {
                return rl;
            }
            let s: Vec<f64> = ends
                .iter()
                .map(|e| cosine_similarity(&pred_x0[i], e))
                .collect();
            let total = s[0] + s[1] + s[2];
            if total.abs() < 1e-12 {
                (rf + ra + rl) / 3.0
            } else {
                (rf * s[0] + ra * s[1] + rl * s[2]) / total
            }
        })
        .collect())
}

/// SDPO's pair loss at one step (module docs), mean over the pairs.
///
/// # Shapes
/// - every input `[P]` (one entry per pair); output `[1]`.
///
/// `clip_range = None` gives the unclipped loss.
#[allow(clippy::too_many_arguments)]
pub fn sdpo_pair_loss(
    log_prob_1: Tensor<1>,
    old_log_prob_1: Tensor<1>,
    log_prob_2: Tensor<1>,
    old_log_prob_2: Tensor<1>,
    advantage_1: Tensor<1>,
    advantage_2: Tensor<1>,
    weight: f64,
    clip_range: Option<f64>,
) -> Tensor<1> {
    let target = advantage_1 - advantage_2;
    let old_1 = old_log_prob_1.detach();
    let old_2 = old_log_prob_2.detach();
    let loss = |lp1: Tensor<1>, lp2: Tensor<1>| {
        let diff = (lp1 - old_1.clone()) - (lp2 - old_2.clone());
        (diff.mul_scalar(weight) - target.clone()).square()
    };
    let unclipped = loss(log_prob_1.clone(), log_prob_2.clone());
    match clip_range {
        None => unclipped.mean(),
        Some(eps) => {
            let c1 = clamp_around(log_prob_1, old_1.clone(), eps);
            let c2 = clamp_around(log_prob_2, old_2.clone(), eps);
            unclipped.max_pair(loss(c1, c2)).mean()
        }
    }
}

/// `x` clamped to `[center − eps, center + eps]` element-wise, differentiable inside.
fn clamp_around(x: Tensor<1>, center: Tensor<1>, eps: f64) -> Tensor<1> {
    let low = center.clone().sub_scalar(eps);
    let high = center.add_scalar(eps);
    x.max_pair(low).min_pair(high)
}

/// SDPO's temporal weight `w_k = λ^k / log_scale`.
pub fn step_weight(k: usize, lambda: f64, log_scale: f64) -> f64 {
    lambda.powi(k as i32) / log_scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_core::discounted_returns;
    use proptest::prelude::*;

    fn unit(i: usize, n: usize) -> Vec<f32> {
        (0..n).map(|j| if j == i { 1.0 } else { 0.0 }).collect()
    }

    #[test]
    fn anchor_is_the_step_least_like_both_ends() {
        // Steps: e0, mix, e2 (orthogonal to both ends), mix, e1.
        let mix = vec![0.7f32, 0.7, 0.1];
        let steps = vec![unit(0, 3), mix.clone(), unit(2, 3), mix, unit(1, 3)];
        assert_eq!(anchor_step(&steps).unwrap(), 2);
        assert!(anchor_step(&steps[..2]).is_err());
    }

    #[test]
    fn dense_rewards_hit_the_scored_steps_exactly_and_interpolate_between() {
        let steps = vec![unit(0, 3), vec![1.0, 1.0, 0.0], unit(2, 3), unit(1, 3)];
        let r = dense_rewards(&steps, 2, [1.0, 5.0, 3.0]).unwrap();
        assert_eq!((r[0], r[2], r[3]), (1.0, 5.0, 3.0));
        // Step 1 is equally similar to the first and last steps and orthogonal to the anchor.
        assert!((r[1] - 2.0).abs() < 1e-12, "{r:?}");
        assert!(dense_rewards(&steps, 0, [1.0, 2.0, 3.0]).is_err());
        assert!(dense_rewards(&steps, 2, [f64::NAN, 2.0, 3.0]).is_err());
    }

    #[test]
    fn returns_follow_the_recursion() {
        let g = discounted_returns(&[1.0, 2.0, 3.0], 0.99);
        assert!((g[2] - 3.0).abs() < 1e-12);
        assert!((g[1] - (2.0 + 0.99 * 3.0)).abs() < 1e-12);
        assert!((g[0] - (1.0 + 0.99 * g[1])).abs() < 1e-12);
    }

    proptest! {
        /// Interpolated rewards are convex combinations when similarities are non-negative.
        #[test]
        fn interpolated_rewards_stay_within_the_scored_range(
            v in prop::collection::vec(prop::collection::vec(0.01f32..1.0, 4), 5),
            rf in -3.0f64..3.0, ra in -3.0f64..3.0, rl in -3.0f64..3.0,
        ) {
            let a = anchor_step(&v).unwrap();
            let r = dense_rewards(&v, a, [rf, ra, rl]).unwrap();
            let (lo, hi) = (rf.min(ra).min(rl), rf.max(ra).max(rl));
            for x in r {
                prop_assert!(x >= lo - 1e-9 && x <= hi + 1e-9);
            }
        }

        /// The loss equals the hand formula, and its gradient w.r.t. log π_θ¹ is
        /// 2 w (w (δ¹ − δ²) − (Â¹ − Â²)) / P (checked against central finite differences).
        #[test]
        fn pair_loss_value_and_gradient(
            d1 in -0.5f32..0.5, d2 in -0.5f32..0.5, a1 in -2.0f32..2.0, a2 in -2.0f32..2.0,
            w in 0.5f64..1.5,
        ) {
            let device = align_core::test_device();
            let ad = device.clone().autodiff();
            let t = |v: f32, d: &burn::tensor::Device| Tensor::<1>::from_floats([v], d);
            let lp1 = t(-1.0 + d1, &ad).require_grad();
            let loss = sdpo_pair_loss(lp1.clone(), t(-1.0, &ad), t(-2.0 + d2, &ad), t(-2.0, &ad), t(a1, &ad), t(a2, &ad), w, None);
            let value = f64::from(loss.clone().into_scalar::<f32>());
            let inner = w * f64::from(d1 - d2) - f64::from(a1 - a2);
            prop_assert!((value - inner * inner).abs() < 1e-4 * (1.0 + inner * inner));
            let grads = loss.backward();
            let g = f64::from(lp1.grad(&grads).unwrap().into_scalar::<f32>());
            let h = 1e-3f32;
            let f = |x: f32| {
                let l = sdpo_pair_loss(t(-1.0 + x, &device), t(-1.0, &device), t(-2.0 + d2, &device), t(-2.0, &device), t(a1, &device), t(a2, &device), w, None);
                f64::from(l.into_scalar::<f32>())
            };
            let fd = (f(d1 + h) - f(d1 - h)) / (2.0 * f64::from(h));
            prop_assert!((g - 2.0 * w * inner).abs() < 1e-3 * (1.0 + g.abs()), "{g} vs {}", 2.0 * w * inner);
            prop_assert!((g - fd).abs() < 2e-2 * (1.0 + g.abs()), "{g} vs fd {fd}");
        }
    }

    #[test]
    fn clipped_loss_is_never_below_the_unclipped_one_and_equal_at_theta_old() {
        let device = align_core::test_device();
        let t = |v: &[f32]| Tensor::<1>::from_floats(v, &device);
        let old1 = t(&[-1.0, -2.0]);
        let old2 = t(&[-1.5, -0.5]);
        let (a1, a2) = (t(&[1.0, -1.0]), t(&[0.0, 0.5]));
        let at_old = |clip| {
            sdpo_pair_loss(
                old1.clone(),
                old1.clone(),
                old2.clone(),
                old2.clone(),
                a1.clone(),
                a2.clone(),
                1.0,
                clip,
            )
            .into_scalar::<f32>()
        };
        assert_eq!(at_old(None), at_old(Some(1e-4)));
        let moved = |clip| {
            sdpo_pair_loss(
                t(&[-0.9, -2.2]),
                old1.clone(),
                t(&[-1.6, -0.4]),
                old2.clone(),
                a1.clone(),
                a2.clone(),
                0.99,
                clip,
            )
            .into_scalar::<f32>()
        };
        assert!(moved(Some(1e-4)) >= moved(None));
        assert!((step_weight(2, 0.99, 1.0) - 0.9801).abs() < 1e-12);
    }
}
