//! DenseGRPO (Deng et al., 2026, arXiv 2601.20218): Flow-GRPO with dense, step-wise rewards.
//!
//! Flow-GRPO credits every step of a trajectory with its terminal reward. DenseGRPO credits
//! each step with the reward it *adds*: the latents before and after the step are completed to
//! clean images with the deterministic Euler ODE of the rollout policy (`θ_old`, the rollout's
//! CFG scale), and the reward model scores both. With `x_k` the latent at time `t_k`
//! (generation order, `x_K` the final sample):
//!
//! ```text
//! R_k     = r( ODE_{t_k → 0}(x_k) )                      k = 0..K   (R_K = r(x_K))
//! ΔR_k    = R_{k+1} − R_k                                the dense reward of step k
//! Â_{i,k} = (ΔR_{i,k} − mean_{j ∈ g(i)} ΔR_{j,k}) / (std_k + 1e-4),   clipped to ±adv_clip_max
//! L       = (1/|S|) Σ_{k ∈ S} mean_i [ max(−Â_{i,k} ρ_{i,k}, −Â_{i,k} clip(ρ_{i,k}, 1 ± ε))
//!                                      + β KL_{i,k} ]
//! ```
//!
//! The gains telescope: `Σ_k ΔR_k = R_K − R_0`, the terminal reward minus that of the ODE sample
//! from the same initial noise. `std_k` is over the batch at step `k` (`global_std`, as
//! Flow-GRPO) or over each group. The ratio, clip and KL are Flow-GRPO's, through the same
//! update path (so the ratio at `θ = θ_old` is exactly 1).
//!
//! **ODE completion** uses the rollout's own time grid from `t_k` to 0, sub-sampled to at most
//! `ode_steps` Euler steps ([`completion_times`]; `None` = every remaining grid point). The paper
//! reports that more completion steps give more accurate dense rewards; each step costs one
//! guided model call per latent, so the default caps it at 3 (about 3 calls per trained step).
//! With one step the completion is the one-step prediction `x̂₀ = x_t − t v`.
//!
//! **Exploration calibration** (`calibration`, off by default). The paper observes that a
//! uniform noise level gives an unsuitable exploration space at some timesteps and adjusts a
//! timestep-specific noise injection from the dense rewards. Only the paper's abstract was
//! available when this was written, so the rule here is our reading of it, not the paper's
//! formula: after each iteration, at each trained step `k`, let `n₊`, `n₋` be the numbers of
//! gains `ΔR_{i,k}` above `+tolerance` and below `−tolerance`, `N` the batch size. If
//! `(n₋ − n₊) / N > imbalance` the injected noise mostly destroys reward (too much
//! exploration) and the step's noise scale `s_k` shrinks by the factor `1 − rate`; otherwise
//! (balanced gains, or all ≈ 0: too little exploration) it grows by `1 + rate`; `s_k` stays
//! in `[min_scale, max_scale]`. The next rollout uses `σ_k = s_k · a · √(t/(1−t))`
//! ([`align_samplers::FlowSdeSampler::with_noise_scales`]); the scales are checkpointed.

use align_core::{Condition, Denoiser, GroupStd, Parameterization, Trajectory};
use align_core::{clip_advantages, group_advantages};
use align_samplers::guided_predict;
use burn::tensor::{Tensor, TensorData};

use crate::algorithm::OnlineAlgorithm;
use crate::error::{Result, RlError};
use crate::objective::{KlEstimator, KlPenalty, Objective};

/// The reward-aware exploration calibration (see the module docs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoiseCalibration {
    /// Relative change of a step's noise scale per iteration.
    pub rate: f64,
    /// Gains within `±tolerance` count as neither positive nor negative.
    pub tolerance: f64,
    /// Excess of negative over positive gains (fraction of the batch) that shrinks the noise.
    pub imbalance: f64,
    /// Lower bound of a scale.
    pub min_scale: f64,
    /// Upper bound of a scale.
    pub max_scale: f64,
}

impl Default for NoiseCalibration {
    fn default() -> Self {
        Self {
            rate: 0.05,
            tolerance: 1e-6,
            imbalance: 0.1,
            min_scale: 0.5,
            max_scale: 2.0,
        }
    }
}

impl NoiseCalibration {
    fn validate(&self) -> Result<()> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !(ok(self.rate) && self.rate < 1.0) {
            return Err(RlError::config("calibration.rate", "must lie in [0, 1)"));
        }
        if !ok(self.tolerance) || !ok(self.imbalance) {
            return Err(RlError::config(
                "calibration.tolerance / imbalance",
                "must be finite and ≥ 0",
            ));
        }
        if !(ok(self.min_scale) && self.max_scale.is_finite() && self.min_scale <= self.max_scale) {
            return Err(RlError::config(
                "calibration.min_scale / max_scale",
                "need 0 ≤ min_scale ≤ max_scale < ∞",
            ));
        }
        Ok(())
    }

    /// The new scale of one step from its gains.
    pub fn update(&self, scale: f64, gains: &[f64]) -> f64 {
        if gains.is_empty() {
            return scale;
        }
        let pos = gains.iter().filter(|&&g| g > self.tolerance).count() as f64;
        let neg = gains.iter().filter(|&&g| g < -self.tolerance).count() as f64;
        let factor = if (neg - pos) / gains.len() as f64 > self.imbalance {
            1.0 - self.rate
        } else {
            1.0 + self.rate
        };
        (scale * factor).clamp(self.min_scale, self.max_scale)
    }
}

/// DenseGRPO hyper-parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DenseGrpoConfig {
    /// PPO clip range ε.
    pub clip_range: f64,
    /// Advantage clip.
    pub adv_clip_max: f64,
    /// KL weight β (exact per-step KL).
    pub beta: f64,
    /// KL estimator.
    pub kl_estimator: KlEstimator,
    /// Standardise each step's gains by the batch std (true) or each group's (false).
    pub global_std: bool,
    /// Passes over each batch.
    pub inner_epochs: usize,
    /// Optimizer steps per pass.
    pub minibatches: usize,
    /// Euler steps of each ODE completion (`None`: every remaining grid point).
    pub ode_steps: Option<usize>,
    /// Reward-aware per-step noise calibration (`None`: the configured noise everywhere).
    pub calibration: Option<NoiseCalibration>,
}

impl Default for DenseGrpoConfig {
    fn default() -> Self {
        Self {
            clip_range: 1e-4,
            adv_clip_max: 5.0,
            beta: 0.004,
            kl_estimator: KlEstimator::ClosedForm,
            global_std: true,
            inner_epochs: 1,
            minibatches: 2,
            ode_steps: Some(3),
            calibration: None,
        }
    }
}

/// DenseGRPO, with its per-step noise scales.
#[derive(Debug, Clone)]
pub struct DenseGrpo {
    config: DenseGrpoConfig,
    scales: Vec<f64>,
}

impl DenseGrpo {
    /// DenseGRPO with a configuration.
    ///
    /// # Errors
    /// Invalid clip range, β, epoch counts, `ode_steps = 0` or calibration bounds.
    pub fn new(config: DenseGrpoConfig) -> Result<Self> {
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
        if config.ode_steps == Some(0) {
            return Err(RlError::config("ode_steps", "must be ≥ 1 (or absent: all)"));
        }
        if let Some(c) = &config.calibration {
            c.validate()?;
        }
        Ok(Self {
            config,
            scales: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DenseGrpoConfig {
        &self.config
    }
}

/// The times of an ODE completion from latent `k` of a grid `times` (`t_0 = 1 > … > t_K = 0`):
/// `t_k`, then at most `ode_steps` further points of the grid's tail, always ending at `t_K`.
/// The points are spread evenly over the tail's indices.
///
/// # Errors
/// `k` beyond the grid, or `ode_steps = Some(0)`.
pub fn completion_times(times: &[f64], k: usize, ode_steps: Option<usize>) -> Result<Vec<f64>> {
    let last = times
        .len()
        .checked_sub(1)
        .ok_or_else(|| RlError::config("times", "an empty time grid has no completion"))?;
    if k > last {
        return Err(align_core::CoreError::shape("latent index", format!("≤ {last}"), k).into());
    }
    let remaining = last - k;
    let m = match ode_steps {
        Some(0) => return Err(RlError::config("ode_steps", "must be ≥ 1")),
        Some(m) => m.min(remaining),
        None => remaining,
    };
    // Indices k = i_0 < i_1 < … < i_m = last, evenly spread (rounded), strictly increasing.
    Ok((0..=m)
        .map(|j| {
            let idx = if m == 0 {
                k
            } else {
                k + (j * remaining).div_ceil(m)
            };
            times[idx.min(last)]
        })
        .collect())
}

/// Per-step group-relative advantages `Â[i][k]` of dense per-step rewards `dense[i][k]` (only
/// the entries at `steps`; the others 0): for each step, the rewards' group advantages (mean
/// per group, std of the batch when `global_std`, of the group otherwise), clipped to
/// `±adv_clip_max`. DenseGRPO's reward gains and Flow-GRPO's KL-penalised rewards use it.
///
/// # Errors
/// A `dense` that is not `B × K`, a step beyond the trajectory, non-finite rewards.
pub fn step_group_advantages(
    trajectory: &Trajectory,
    dense: &[Vec<f64>],
    steps: &[usize],
    global_std: bool,
    adv_clip_max: f64,
) -> Result<Vec<Vec<f64>>> {
    let b = trajectory.batch_size();
    let k_total = trajectory.num_steps();
    if dense.len() != b || dense.iter().any(|d| d.len() != k_total) {
        return Err(align_core::CoreError::shape(
            "dense rewards",
            format!("{b} × {k_total}"),
            format!("{} rows", dense.len()),
        )
        .into());
    }
    let std = if global_std {
        GroupStd::Global
    } else {
        GroupStd::Group
    };
    let mut adv = vec![vec![0.0; k_total]; b];
    for &k in steps {
        if k >= k_total {
            return Err(align_core::CoreError::shape("step", format!("< {k_total}"), k).into());
        }
        let column: Vec<f64> = dense.iter().map(|d| d[k]).collect();
        let mut a = group_advantages(&column, &trajectory.group_ids, std, 1e-4)?;
        clip_advantages(&mut a, adv_clip_max);
        for (row, v) in adv.iter_mut().zip(a) {
            row[k] = v;
        }
    }
    Ok(adv)
}

/// Integrates the Euler ODE `dx/dt = v(x, t)` (guided with `scale`) through `times`, from
/// `x` at `times[0]`: the deterministic completion of a partially denoised latent.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`, conditions of batch `B`; output `[B, C, H, W]`.
///
/// # Errors
/// A model that does not predict a velocity, or a failing guided prediction.
pub fn ode_complete<M: Denoiser + ?Sized>(
    model: &M,
    x: Tensor<4>,
    times: &[f64],
    condition: &Condition,
    uncond: Option<&Condition>,
    scale: f64,
) -> Result<Tensor<4>> {
    if model.parameterization() != Parameterization::FlowVelocity {
        return Err(RlError::config(
            "dense-grpo",
            "ODE completion needs a flow (velocity) model",
        ));
    }
    let b = x.dims()[0];
    let device = x.device();
    let mut x = x;
    for w in times.windows(2) {
        let t = Tensor::<1>::from_data(TensorData::new(vec![w[0] as f32; b], [b]), &device);
        let v = guided_predict(model, x.clone(), t, condition, uncond, scale)?;
        x = x + v.mul_scalar(w[1] - w[0]);
    }
    Ok(x)
}

/// Step-wise reward gains `ΔR[b][k] = R_{k+1} − R_k` of a flow trajectory (module docs): the
/// latents around every trained step are ODE-completed with `model` (the rollout policy, no
/// gradients) and scored with `score` (one call per latent index, batch `B`). Entries at
/// steps not in `steps` are 0.
///
/// # Errors
/// Steps beyond the trajectory, a non-velocity model, a failing or non-finite `score`.
pub fn step_reward_gains<M: Denoiser + ?Sized>(
    model: &M,
    trajectory: &Trajectory,
    condition: &Condition,
    uncond: Option<&Condition>,
    steps: &[usize],
    ode_steps: Option<usize>,
    score: &mut dyn FnMut(Tensor<4>) -> Result<Vec<f64>>,
) -> Result<Vec<Vec<f64>>> {
    let k_total = trajectory.num_steps();
    let b = trajectory.batch_size();
    if let Some(&bad) = steps.iter().find(|&&k| k >= k_total) {
        return Err(align_core::CoreError::shape("step", format!("< {k_total}"), bad).into());
    }
    let mut needed: Vec<usize> = steps.iter().flat_map(|&k| [k, k + 1]).collect();
    needed.sort_unstable();
    needed.dedup();
    let mut values: Vec<Option<Vec<f64>>> = vec![None; k_total + 1];
    for &j in &needed {
        let times = completion_times(&trajectory.times, j, ode_steps)?;
        let clean = ode_complete(
            model,
            trajectory.latents[j].clone(),
            &times,
            condition,
            uncond,
            trajectory.guidance_scale,
        )?;
        let r = score(clean)?;
        if r.len() != b {
            return Err(align_core::CoreError::shape("scores", b, r.len()).into());
        }
        if let Some(v) = r.iter().find(|v| !v.is_finite()) {
            return Err(RlError::NonFinite {
                what: format!("reward of the completion of latent {j}"),
                value: *v,
            });
        }
        values[j] = Some(r);
    }
    let mut gains = vec![vec![0.0; k_total]; b];
    for &k in steps {
        if let (Some(before), Some(after)) = (&values[k], &values[k + 1]) {
            for (i, row) in gains.iter_mut().enumerate() {
                row[k] = after[i] - before[i];
            }
        }
    }
    Ok(gains)
}

impl OnlineAlgorithm for DenseGrpo {
    fn name(&self) -> &'static str {
        "dense-grpo"
    }
    fn objective(&self) -> Objective {
        Objective::PpoClip {
            clip_range: self.config.clip_range,
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
    fn advantages(&mut self, _trajectory: &Trajectory, _rewards: &[f64]) -> Result<Vec<f64>> {
        Err(RlError::config(
            "dense_rewards",
            "dense-grpo needs dense per-step rewards (see `step_reward_gains`)",
        ))
    }
    fn uses_dense_rewards(&self) -> bool {
        true
    }
    fn step_advantages(
        &mut self,
        trajectory: &Trajectory,
        dense: &[Vec<f64>],
        steps: &[usize],
    ) -> Result<Vec<Vec<f64>>> {
        let k_total = trajectory.num_steps();
        if self.config.calibration.is_some() && self.scales.len() != k_total {
            self.scales = vec![1.0; k_total];
        }
        let adv = step_group_advantages(
            trajectory,
            dense,
            steps,
            self.config.global_std,
            self.config.adv_clip_max,
        )?;
        if let Some(c) = &self.config.calibration {
            for &k in steps {
                let gains: Vec<f64> = dense.iter().map(|d| d[k]).collect();
                self.scales[k] = c.update(self.scales[k], &gains);
            }
        }
        Ok(adv)
    }
    fn noise_scales(&self) -> Option<Vec<f64>> {
        (self.config.calibration.is_some() && !self.scales.is_empty()).then(|| self.scales.clone())
    }
    fn drop_zero_advantages(&self) -> bool {
        true
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "noise_scales": self.scales })
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        if state.is_null() {
            return Ok(());
        }
        let scales: Vec<f64> = serde_json::from_value(state["noise_scales"].clone())
            .map_err(|e| RlError::config("checkpoint state", format!("not DenseGRPO's: {e}")))?;
        if scales.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
            return Err(RlError::config(
                "checkpoint state",
                "DenseGRPO noise scales must be finite and ≥ 0",
            ));
        }
        self.scales = scales;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use align_core::{LogProbReduction, test_device};
    use proptest::prelude::*;

    /// The exact velocity field of data concentrated at `m`: `v = (x − m) / t`. Euler steps
    /// of it are exact, so any completion lands on `m`.
    struct ToPoint(f32);
    impl Denoiser for ToPoint {
        fn parameterization(&self) -> Parameterization {
            Parameterization::FlowVelocity
        }
        fn predict(&self, x: Tensor<4>, t: Tensor<1>, _c: &Condition) -> Tensor<4> {
            let b = x.dims()[0];
            (x.sub_scalar(self.0)) / t.reshape([b, 1, 1, 1])
        }
    }

    fn grid(k: usize) -> Vec<f64> {
        (0..=k).map(|i| 1.0 - i as f64 / k as f64).collect()
    }

    proptest! {
        #[test]
        fn completion_times_run_from_t_k_to_zero_on_the_grid(
            k_total in 1usize..40, frac in 0.0f64..1.0, m in proptest::option::of(1usize..12),
        ) {
            let times = grid(k_total);
            let k = ((k_total as f64) * frac) as usize;
            let c = completion_times(&times, k, m).unwrap();
            prop_assert_eq!(c[0], times[k]);
            prop_assert_eq!(*c.last().unwrap(), 0.0);
            let remaining = k_total - k;
            let expected = m.map_or(remaining, |m| m.min(remaining));
            prop_assert_eq!(c.len(), expected + 1);
            prop_assert!(c.windows(2).all(|w| w[1] < w[0]));
            prop_assert!(c.iter().all(|t| times.contains(t)));
            if m.is_none_or(|m| m >= remaining) {
                prop_assert_eq!(&c[..], &times[k..]);
            }
        }

        #[test]
        fn gains_telescope_to_the_terminal_minus_the_initial_completion(
            values in proptest::collection::vec(-3.0f64..3.0, 2..12),
        ) {
            // One sample whose completions score `values[j]` at latent j.
            let k_total = values.len() - 1;
            let device = test_device();
            let traj = toy_trajectory(k_total, 1, &device);
            let cond = Condition::new(Tensor::zeros([1, 1, 1], &device));
            let mut j = 0;
            let mut score = |_x: Tensor<4>| {
                let v = values[j];
                j += 1;
                Ok(vec![v])
            };
            let steps: Vec<usize> = (0..k_total).collect();
            let g = step_reward_gains(&ToPoint(0.3), &traj, &cond, None, &steps, Some(2), &mut score)
                .unwrap();
            let total: f64 = g[0].iter().sum();
            prop_assert!((total - (values[k_total] - values[0])).abs() < 1e-9);
            for k in 0..k_total {
                prop_assert!((g[0][k] - (values[k + 1] - values[k])).abs() < 1e-12);
            }
        }
    }

    fn toy_trajectory(k_total: usize, b: usize, device: &burn::tensor::Device) -> Trajectory {
        let latents: Vec<Tensor<4>> = (0..=k_total)
            .map(|j| Tensor::ones([b, 1, 2, 2], device).mul_scalar(j as f32 + 1.0))
            .collect();
        Trajectory {
            latents,
            times: grid(k_total),
            log_probs: vec![Some(Tensor::zeros([b], device)); k_total],
            stds: vec![0.1; k_total],
            means: Vec::new(),
            pred_x0: Vec::new(),
            reduction: LogProbReduction::Mean,
            guidance_scale: 1.0,
            seed: 0,
            sample_ids: (0..b as u64).collect(),
            condition_ids: (0..b).map(|i| i % 2).collect(),
            group_ids: (0..b).map(|i| i % 2).collect(),
            rewards: None,
        }
    }

    #[test]
    fn ode_completion_of_an_exact_field_lands_on_the_data_point() {
        let device = test_device();
        let x = Tensor::<4>::from_floats([[[[2.0, -1.0], [0.5, 3.0]]]], &device);
        let cond = Condition::new(Tensor::zeros([1, 1, 1], &device));
        for times in [vec![0.8, 0.0], vec![0.8, 0.5, 0.2, 0.0], grid(7)] {
            let out = ode_complete(&ToPoint(0.25), x.clone(), &times, &cond, None, 1.0).unwrap();
            for v in out.into_data().try_to_vec::<f32>().unwrap() {
                assert!((v - 0.25).abs() < 1e-5, "{v}");
            }
        }
        // No steps: the latent itself (the final latent's completion is the sample).
        let same = ode_complete(&ToPoint(0.25), x.clone(), &[0.0], &cond, None, 1.0).unwrap();
        assert_eq!(
            same.into_data().try_to_vec::<f32>().unwrap(),
            x.into_data().try_to_vec::<f32>().unwrap()
        );
    }

    #[test]
    fn only_the_latents_around_trained_steps_are_scored() {
        let device = test_device();
        let traj = toy_trajectory(6, 2, &device);
        let cond = Condition::new(Tensor::zeros([2, 1, 1], &device));
        let mut calls = 0;
        let mut score = |_x: Tensor<4>| {
            calls += 1;
            Ok(vec![calls as f64, 0.0])
        };
        let g = step_reward_gains(
            &ToPoint(0.0),
            &traj,
            &cond,
            None,
            &[1, 2, 5],
            None,
            &mut score,
        )
        .unwrap();
        // Latents 1, 2, 3, 5, 6: five calls.
        assert_eq!(calls, 5);
        assert_eq!(g[0], vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
        assert!(
            step_reward_gains(&ToPoint(0.0), &traj, &cond, None, &[6], None, &mut |_| Ok(
                vec![0.0, 0.0]
            ))
            .is_err()
        );
        let mut nan = |_x: Tensor<4>| Ok(vec![f64::NAN, 0.0]);
        assert!(
            step_reward_gains(&ToPoint(0.0), &traj, &cond, None, &[0], None, &mut nan).is_err()
        );
    }

    #[test]
    fn step_advantages_are_group_relative_per_step_and_zero_for_equal_gains() {
        let device = test_device();
        let traj = toy_trajectory(3, 4, &device);
        let mut algo = DenseGrpo::new(DenseGrpoConfig::default()).unwrap();
        // Groups {0, 2} and {1, 3}. Step 0: group 0 differs, group 1 equal. Step 2: untrained.
        let dense = vec![
            vec![1.0, 5.0, 9.0],
            vec![2.0, 5.0, 9.0],
            vec![-1.0, 5.0, 9.0],
            vec![2.0, 7.0, 9.0],
        ];
        let adv = algo.step_advantages(&traj, &dense, &[0, 1]).unwrap();
        for k in [0, 1] {
            let g0 = adv[0][k] + adv[2][k];
            let g1 = adv[1][k] + adv[3][k];
            assert!(g0.abs() < 1e-12 && g1.abs() < 1e-12);
        }
        assert_eq!((adv[1][0], adv[3][0]), (0.0, 0.0));
        assert!(adv[0][0] > 0.0 && adv[2][0] < 0.0);
        assert_eq!((adv[0][1], adv[2][1]), (0.0, 0.0));
        assert!(adv[1][1] < 0.0 && adv[3][1] > 0.0);
        assert!(adv.iter().all(|r| r[2] == 0.0));
        // Global std at step 0: the batch std of the gains (1, 2, −1, 2) is 1.2247.
        let expected = (1.0 - 0.0) / (1.5f64.sqrt() + 1e-4);
        assert!((adv[0][0] - expected).abs() < 1e-9, "{}", adv[0][0]);
        assert!(algo.step_advantages(&traj, &dense[..3], &[0]).is_err());
        assert!(algo.step_advantages(&traj, &dense, &[3]).is_err());
        assert!(algo.advantages(&traj, &[0.0; 4]).is_err());
    }

    #[test]
    fn calibration_grows_noise_when_gains_are_balanced_or_flat_and_shrinks_it_when_noise_hurts() {
        let c = NoiseCalibration::default();
        assert!((c.update(1.0, &[0.0; 8]) - 1.05).abs() < 1e-12);
        assert!((c.update(1.0, &[0.1, -0.1, 0.2, -0.2]) - 1.05).abs() < 1e-12);
        assert!((c.update(1.0, &[-0.1, -0.1, -0.2, 0.2]) - 0.95).abs() < 1e-12);
        assert_eq!(c.update(2.0, &[0.0]), 2.0);
        assert_eq!(c.update(0.5, &[-1.0]), 0.5);
        assert_eq!(c.update(1.3, &[]), 1.3);
        let device = test_device();
        let traj = toy_trajectory(3, 4, &device);
        let mut algo = DenseGrpo::new(DenseGrpoConfig {
            calibration: Some(c),
            ..DenseGrpoConfig::default()
        })
        .unwrap();
        assert_eq!(algo.noise_scales(), None);
        let dense = vec![vec![-1.0, 0.0, 0.0]; 4];
        algo.step_advantages(&traj, &dense, &[0, 1]).unwrap();
        let s = algo.noise_scales().unwrap();
        assert!((s[0] - 0.95).abs() < 1e-12 && (s[1] - 1.05).abs() < 1e-12 && s[2] == 1.0);
        // Checkpointed.
        let mut other = DenseGrpo::new(algo.config().clone()).unwrap();
        other.restore(&algo.state()).unwrap();
        assert_eq!(other.noise_scales(), algo.noise_scales());
        assert!(
            other
                .restore(&serde_json::json!({ "noise_scales": [-1.0] }))
                .is_err()
        );
        assert!(
            DenseGrpo::new(DenseGrpoConfig {
                calibration: Some(NoiseCalibration {
                    min_scale: 3.0,
                    ..NoiseCalibration::default()
                }),
                ..DenseGrpoConfig::default()
            })
            .is_err()
        );
        assert!(
            DenseGrpo::new(DenseGrpoConfig {
                ode_steps: Some(0),
                ..DenseGrpoConfig::default()
            })
            .is_err()
        );
    }
}
