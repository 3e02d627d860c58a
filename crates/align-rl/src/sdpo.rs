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
//! `G_k` is standardised per (prompt, step) with a running tracker (buffer 32, min count 16;
//! until a buffer fills, the batch statistics of the same step; `align_core::StepPromptStatTracker`) and clipped to ±5, giving `Â_k`. For a
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

use align_core::{
    Denoiser, StepPromptStatTracker, Trajectory, clip_advantages, discounted_returns,
};
use align_samplers::{Sampler, rescore};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::{Result, RlError};
use crate::objective::Objective;
use crate::update::{Encode, UpdateStats};

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

/// SDPO hyper-parameters (official defaults).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SdpoConfig {
    /// Discount γ of the dense returns.
    pub gamma: f64,
    /// Temporal weight base λ (`w_k = λ^k / log_scale`).
    pub lambda: f64,
    /// Temporal weight scale.
    pub log_scale: f64,
    /// Clip range ε of the clipped loss (`None` = unclipped).
    pub clip_range: Option<f64>,
    /// Advantage clip.
    pub adv_clip_max: f64,
    /// Per-(prompt, step) return buffer.
    pub buffer_size: usize,
    /// Returns a (prompt, step) needs before its own statistics are used.
    pub min_count: usize,
}

impl Default for SdpoConfig {
    fn default() -> Self {
        Self {
            gamma: 0.99,
            lambda: 0.99,
            log_scale: 1.0,
            clip_range: Some(1e-4),
            adv_clip_max: 5.0,
            buffer_size: 32,
            min_count: 16,
        }
    }
}

/// SDPO with its per-(prompt, step) statistics.
#[derive(Debug, Clone)]
pub struct Sdpo {
    config: SdpoConfig,
    tracker: StepPromptStatTracker,
    prompts: Vec<String>,
}

/// Dense rewards of every trajectory of a batch (rollouts kept `x̂₀`): per sample, the anchor
/// step is found from its `x̂₀` similarities, `score` is called three times (first, anchor and
/// last `x̂₀` of every sample, each a `[B, C, H, W]` batch) and the other steps interpolated.
///
/// # Errors
/// A trajectory without `x̂₀`, fewer than 3 steps, or a failing `score`.
pub fn trajectory_dense_rewards(
    trajectory: &Trajectory,
    score: &mut dyn FnMut(Tensor<4>) -> Result<Vec<f64>>,
) -> Result<Vec<Vec<f64>>> {
    let k = trajectory.pred_x0.len();
    if k != trajectory.num_steps() || k < 3 {
        return Err(RlError::config(
            "sdpo",
            "roll out with keep_pred_x0 and at least 3 steps",
        ));
    }
    let b = trajectory.batch_size();
    let host: Vec<Vec<f32>> = trajectory
        .pred_x0
        .iter()
        .map(|t| {
            t.clone()
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| RlError::Readback(format!("reading x̂₀: {e:?}")))
        })
        .collect::<Result<_>>()?;
    let per = host[0].len() / b;
    let sample = |step: usize, i: usize| host[step][i * per..(i + 1) * per].to_vec();
    let per_sample: Vec<Vec<Vec<f32>>> = (0..b)
        .map(|i| (0..k).map(|step| sample(step, i)).collect())
        .collect();
    let anchors: Vec<usize> = per_sample
        .iter()
        .map(|s| anchor_step(s))
        .collect::<Result<_>>()?;
    let dims = trajectory.pred_x0[0].dims();
    let device = trajectory.pred_x0[0].device();
    let gather = |steps: &[usize]| -> Tensor<4> {
        let data: Vec<f32> = steps
            .iter()
            .enumerate()
            .flat_map(|(i, &st)| sample(st, i))
            .collect();
        Tensor::from_data(burn::tensor::TensorData::new(data, dims), &device)
    };
    let r_first = score(gather(&vec![0; b]))?;
    let r_anchor = score(gather(&anchors))?;
    let r_last = score(gather(&vec![k - 1; b]))?;
    (0..b)
        .map(|i| {
            dense_rewards(
                &per_sample[i],
                anchors[i],
                [r_first[i], r_anchor[i], r_last[i]],
            )
        })
        .collect()
}

impl Sdpo {
    /// SDPO over a prompt table (`condition_ids` index it).
    ///
    /// # Errors
    /// Invalid tracker sizes or weights.
    pub fn new(config: SdpoConfig, prompts: Vec<String>) -> Result<Self> {
        let unit = |v: f64| v.is_finite() && v > 0.0 && v <= 1.0;
        if !unit(config.gamma) || !unit(config.lambda) {
            return Err(RlError::config("gamma / lambda", "must lie in (0, 1]"));
        }
        if !(config.log_scale.is_finite() && config.log_scale > 0.0) {
            return Err(RlError::config("log_scale", "must be positive"));
        }
        if let Some(eps) = config.clip_range {
            Objective::PpoClip { clip_range: eps }.validate()?;
        }
        let tracker = StepPromptStatTracker::new(config.buffer_size, config.min_count, 1e-6)?;
        Ok(Self {
            config,
            tracker,
            prompts,
        })
    }

    /// The per-(prompt, step) statistics, for checkpoints.
    pub fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.tracker).unwrap_or(serde_json::Value::Null)
    }

    /// Restores [`Sdpo::state`].
    ///
    /// # Errors
    /// State that is not an SDPO tracker.
    pub fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        if state.is_null() {
            return Ok(());
        }
        self.tracker = serde_json::from_value(state.clone()).map_err(|e| {
            RlError::config("checkpoint state", format!("not an SDPO tracker: {e}"))
        })?;
        Ok(())
    }

    /// Per-sample, per-step advantages `Â[b][k]` from dense rewards: discounted returns,
    /// standardised per (prompt, step), clipped.
    ///
    /// # Errors
    /// Mismatched shapes, unknown condition ids, non-finite rewards.
    pub fn step_advantages(
        &mut self,
        trajectory: &Trajectory,
        dense: &[Vec<f64>],
    ) -> Result<Vec<Vec<f64>>> {
        let b = trajectory.batch_size();
        let k = trajectory.num_steps();
        if dense.len() != b || dense.iter().any(|d| d.len() != k) {
            return Err(align_core::CoreError::shape(
                "dense rewards",
                format!("{b} × {k}"),
                dense.len(),
            )
            .into());
        }
        let prompts = crate::ddpo::prompt_keys(&self.prompts, &trajectory.condition_ids)?;
        let returns: Vec<Vec<f64>> = dense
            .iter()
            .map(|r| discounted_returns(r, self.config.gamma))
            .collect();
        let mut keys = Vec::with_capacity(b * k);
        let mut values = Vec::with_capacity(b * k);
        let mut steps = Vec::with_capacity(b * k);
        for (i, g) in returns.iter().enumerate() {
            for (step, &v) in g.iter().enumerate() {
                keys.push((prompts[i].clone(), step));
                values.push(v);
                steps.push(step);
            }
        }
        // A (prompt, step) with a short buffer falls back to the batch statistics of its step,
        // as the official code does (returns at different steps have different scales).
        let mut adv = self.tracker.update_with_fallback(&keys, &values, &steps)?;
        clip_advantages(&mut adv, self.config.adv_clip_max);
        Ok(adv.chunks(k).map(<[f64]>::to_vec).collect())
    }

    /// One SDPO iteration on a batch of pairs (samples `2i` and `2i + 1` share a prompt):
    /// dense advantages, then one optimizer step per trained step, visiting the steps in a
    /// shuffled order (the official code shuffles per sample; here one permutation per
    /// iteration is shared by the batch, so each update re-scores one step).
    ///
    /// # Errors
    /// An odd batch, pairs with different prompts, or any error of the update.
    #[allow(clippy::too_many_arguments)]
    pub fn run_iteration<M, S>(
        &mut self,
        mut policy: M,
        sampler: &S,
        trajectory: &Trajectory,
        dense: &[Vec<f64>],
        encode: &Encode<'_, M>,
        shuffle_seed: u64,
        apply: &mut dyn FnMut(M, GradientsParams) -> Result<M>,
    ) -> Result<(M, UpdateStats)>
    where
        M: Module + Denoiser,
        S: Sampler + ?Sized,
    {
        let b = trajectory.batch_size();
        if !b.is_multiple_of(2) || b == 0 {
            return Err(RlError::config(
                "sdpo",
                format!("needs pairs; batch of {b}"),
            ));
        }
        let ids = &trajectory.condition_ids;
        if (0..b / 2).any(|i| ids[2 * i] != ids[2 * i + 1]) {
            return Err(RlError::config(
                "sdpo",
                "samples 2i and 2i+1 must share a prompt",
            ));
        }
        let adv = self.step_advantages(trajectory, dense)?;
        let mut steps = trajectory.stochastic_steps();
        let mut rng = ChaCha8Rng::seed_from_u64(shuffle_seed);
        for i in (1..steps.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            steps.swap(i, j);
        }
        let mut stats = UpdateStats {
            steps: steps.len(),
            samples: b,
            ..UpdateStats::default()
        };
        let device_of = |c: &align_core::Condition| c.context.device();
        for &k in &steps {
            let (cond, uncond) = encode(&policy, ids).map_err(RlError::Encode)?;
            let device = device_of(&cond);
            let out = rescore(&policy, sampler, trajectory, k, &cond, uncond.as_ref())?;
            let lp = out
                .log_prob
                .ok_or(align_samplers::SamplerError::Deterministic {
                    sampler: sampler.name(),
                    step: k,
                    hint: "SDPO needs a stochastic sampler (DDIM η > 0, the flow SDE)",
                })?;
            let old = trajectory.log_probs[k]
                .clone()
                .ok_or(align_samplers::SamplerError::Deterministic {
                    sampler: sampler.name(),
                    step: k,
                    hint: "SDPO needs a stochastic sampler",
                })?
                .to_device(&device);
            let pick = |t: Tensor<1>, parity: usize| {
                let idx: Vec<i64> = (0..b / 2).map(|i| (2 * i + parity) as i64).collect();
                t.select(
                    0,
                    Tensor::<1, burn::tensor::Int>::from_ints(idx.as_slice(), &device),
                )
            };
            let a = |parity: usize| {
                let v: Vec<f32> = (0..b / 2).map(|i| adv[2 * i + parity][k] as f32).collect();
                Tensor::<1>::from_floats(v.as_slice(), &device)
            };
            let loss = sdpo_pair_loss(
                pick(lp.clone(), 0),
                pick(old.clone(), 0),
                pick(lp, 1),
                pick(old, 1),
                a(0),
                a(1),
                step_weight(k, self.config.lambda, self.config.log_scale),
                self.config.clip_range,
            );
            let value: f32 = loss
                .clone()
                .detach()
                .try_into_scalar()
                .map_err(|e| RlError::Readback(format!("reading the loss: {e:?}")))?;
            if !value.is_finite() {
                return Err(RlError::NonFinite {
                    what: format!("SDPO loss at step {k}"),
                    value: f64::from(value),
                });
            }
            if !loss.is_tracked() {
                return Err(RlError::config(
                    "policy",
                    "no trainable parameter reaches the loss",
                ));
            }
            stats.loss += f64::from(value) / steps.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &policy);
            policy = apply(policy, grads)?;
        }
        stats.policy_loss = stats.loss;
        Ok((policy, stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unit(i: usize, n: usize) -> Vec<f32> {
        (0..n).map(|j| if j == i { 1.0 } else { 0.0 }).collect()
    }

    /// Until a (prompt, step) buffer reaches `min_count`, returns are standardised by the
    /// batch statistics of *their step*. With γ = 1 the returns are {100, 106} at step 0 and
    /// {100, 104} at step 1, so both steps give advantages ∓1; statistics pooled over the steps
    /// (mean 102.5, std ≈ 2.6) would give −0.96 / +1.35 at step 0 and −0.96 / +0.58 at step 1.
    #[test]
    fn short_buffers_fall_back_to_the_statistics_of_the_same_step() {
        let device = align_core::test_device();
        let (b, k) = (4, 2);
        let traj = Trajectory {
            latents: (0..=k)
                .map(|_| Tensor::zeros([b, 1, 2, 2], &device))
                .collect(),
            times: vec![1.0, 0.5, 0.0],
            log_probs: vec![Some(Tensor::zeros([b], &device)); k],
            stds: vec![0.1; k],
            means: Vec::new(),
            pred_x0: Vec::new(),
            reduction: align_core::LogProbReduction::Mean,
            guidance_scale: 1.0,
            seed: 0,
            sample_ids: (0..b as u64).collect(),
            condition_ids: vec![0; b],
            group_ids: vec![0; b],
            rewards: None,
        };
        let config = SdpoConfig {
            gamma: 1.0,
            ..SdpoConfig::default()
        };
        let mut sdpo = Sdpo::new(config, vec!["one red circle".into()]).unwrap();
        let dense = vec![
            vec![0.0, 100.0],
            vec![2.0, 104.0],
            vec![0.0, 100.0],
            vec![2.0, 104.0],
        ];
        let adv = sdpo.step_advantages(&traj, &dense).unwrap();
        for (i, row) in adv.iter().enumerate() {
            let sign = if i % 2 == 0 { -1.0 } else { 1.0 };
            for (step, &a) in row.iter().enumerate() {
                assert!((a - sign).abs() < 1e-5, "sample {i} step {step}: {a}");
            }
        }
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
