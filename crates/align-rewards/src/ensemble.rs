//! [`Ensemble`]: several rewards combined into one, with normalisation and hard penalties.
//!
//! For members `m = 1..M` with raw scores `r_{m,b}` and weights `w_m ≥ 0`, and penalties
//! `p = 1..P` with raw scores `q_{p,b}` and coefficients `λ_p ≥ 0`:
//!
//! 1. **Normalise** each member over the batch ([`Normalize`]):
//!    - `None`: `z_{m,b} = r_{m,b}`;
//!    - `BatchZ`: `z_{m,b} = (r_{m,b} − μ_m) / (σ_m + ε)` with the batch mean `μ_m` and the
//!      population standard deviation `σ_m`; a constant member gives `z = 0` exactly;
//!    - `Running`: as `BatchZ`, but `μ_m, σ_m` are running statistics (Welford / Chan's
//!      parallel update) over every batch seen so far, this one included.
//! 2. **Aggregate** over members with `w_m > 0` ([`Aggregate`]):
//!    - `WeightedMean`: `A_b = Σ_m w_m z_{m,b} / Σ_m w_m`;
//!    - `Min`: `A_b = min_m z_{m,b}` (weights only select members);
//!    - `MeanMinusKStd(k)`: `A_b = mean_w(z_{·,b}) − k · std_w(z_{·,b})` with the weighted
//!      mean and weighted population standard deviation across members (pessimistic
//!      ensembling against reward hacking).
//! 3. **Penalise** after aggregation: `R_b = A_b − Σ_p λ_p q_{p,b}`. Penalties are hard
//!    constraints: their raw scores are never normalised and never averaged with the members.
//!
//! The same steps are available as pure functions on `&[Vec<f64>]` (member × batch):
//! [`z_score`], [`RunningStats`], [`aggregate`], [`apply_penalties`].
//!
//! When every member and penalty is differentiable, so is the ensemble: the same formulas
//! in tensor ops, batch z-scores differentiating through the batch mean and std, running
//! statistics updated and then held constant, and the across-member std of `MeanMinusKStd`
//! masked to 0 where members agree exactly (so its gradient stays finite).
//!
//! Running statistics live behind a mutex inside the ensemble: every call of
//! [`Reward::score`] or [`Reward::score_differentiable`] with [`Normalize::Running`] adds its
//! batch to them ([`Ensemble::reset_running`] forgets them).

use std::sync::{Mutex, PoisonError};

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RewardError};
use crate::reward::{Reward, check_batch, check_finite, read_scores};

/// Default `ε` of the z-score denominators `σ + ε`.
pub const DEFAULT_EPS: f64 = 1e-8;

/// How member scores are standardised before aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Normalize {
    /// Raw scores.
    None,
    /// `(r − mean) / (std + eps)` over the batch (population std); constant → 0.
    BatchZ {
        /// `ε` added to the standard deviation.
        eps: f64,
    },
    /// `(r − mean) / (std + eps)` with running statistics over all batches seen.
    Running {
        /// `ε` added to the standard deviation.
        eps: f64,
    },
}

impl Normalize {
    /// [`Normalize::BatchZ`] with [`DEFAULT_EPS`].
    pub fn batch_z() -> Self {
        Self::BatchZ { eps: DEFAULT_EPS }
    }

    /// [`Normalize::Running`] with [`DEFAULT_EPS`].
    pub fn running() -> Self {
        Self::Running { eps: DEFAULT_EPS }
    }

    fn validate(self) -> Result<()> {
        match self {
            Self::None => Ok(()),
            Self::BatchZ { eps } | Self::Running { eps } => {
                if eps.is_finite() && eps >= 0.0 {
                    Ok(())
                } else {
                    Err(RewardError::config(
                        "normalize.eps",
                        format!("must be finite and ≥ 0, got {eps}"),
                    ))
                }
            }
        }
    }
}

/// How normalised member scores are combined into one score per sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Aggregate {
    /// `Σ w z / Σ w`.
    WeightedMean,
    /// The smallest member score (members with weight 0 are left out).
    Min,
    /// Weighted mean minus `k` (≥ 0) weighted population standard deviations across members.
    MeanMinusKStd(f64),
}

impl Aggregate {
    fn validate(self) -> Result<()> {
        match self {
            Self::MeanMinusKStd(k) if !(k.is_finite() && k >= 0.0) => Err(RewardError::config(
                "aggregate.k",
                format!("must be finite and ≥ 0, got {k}"),
            )),
            _ => Ok(()),
        }
    }
}

/// A hard penalty: `R −= coef · reward` after aggregation, on the raw score.
pub struct Penalty {
    /// The penalised quantity.
    pub reward: Box<dyn Reward>,
    /// Its coefficient `λ ≥ 0`.
    pub coef: f64,
}

impl Penalty {
    /// A penalty `λ · reward`.
    pub fn new(reward: impl Reward + 'static, coef: f64) -> Self {
        Self {
            reward: Box::new(reward),
            coef,
        }
    }
}

/// Running mean and population variance of a stream of scores (Chan et al.'s parallel form
/// of Welford's update, one batch at a time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningStats {
    count: u64,
    mean: f64,
    m2: f64,
    /// Smallest and largest value seen: when they are equal the stream is constant and
    /// standardising gives exact zeros (the rounding of `mean` cannot leak through).
    range: Option<(f64, f64)>,
}

impl RunningStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch: with `n_a, μ_a, M2_a` so far and `n_b, μ_b, M2_b` of the batch,
    /// `δ = μ_b − μ_a`, `n = n_a + n_b`, `μ = μ_a + δ n_b / n`, `M2 = M2_a + M2_b + δ² n_a n_b / n`.
    pub fn update(&mut self, values: &[f64]) {
        if values.is_empty() {
            return;
        }
        let nb = values.len() as f64;
        let (lo, hi) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        self.range = Some(match self.range {
            None => (lo, hi),
            Some((a, b)) => (a.min(lo), b.max(hi)),
        });
        // A constant batch has its value as exact mean (sum / n may round).
        let mean_b = if lo == hi {
            lo
        } else {
            values.iter().sum::<f64>() / nb
        };
        let m2_b = values.iter().map(|v| (v - mean_b).powi(2)).sum::<f64>();
        if self.count == 0 {
            self.count = values.len() as u64;
            self.mean = mean_b;
            self.m2 = m2_b;
            return;
        }
        let na = self.count as f64;
        let n = na + nb;
        let delta = mean_b - self.mean;
        self.mean += delta * nb / n;
        self.m2 += m2_b + delta * delta * na * nb / n;
        self.count += values.len() as u64;
    }

    /// Number of values seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Running mean (0 before any value).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Running population variance `M2 / n` (0 before any value).
    pub fn variance(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).max(0.0)
        }
    }

    /// `(v − μ) / (σ + ε)` with the running statistics; all zeros when every value seen so
    /// far is equal (or `σ = 0`, or nothing was seen).
    pub fn standardize(&self, values: &[f64], eps: f64) -> Vec<f64> {
        let std = self.variance().sqrt();
        let constant = self.range.is_none_or(|(lo, hi)| lo == hi);
        if constant || std == 0.0 {
            return vec![0.0; values.len()];
        }
        values
            .iter()
            .map(|v| (v - self.mean) / (std + eps))
            .collect()
    }
}

/// Batch z-score `(r − mean) / (std + eps)` with the population std. A constant input
/// (every value equal) gives exactly zeros, never NaN.
pub fn z_score(values: &[f64], eps: f64) -> Vec<f64> {
    let Some(&first) = values.first() else {
        return Vec::new();
    };
    if values.iter().all(|&v| v == first) {
        return vec![0.0; values.len()];
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    values.iter().map(|v| (v - mean) / (std + eps)).collect()
}

/// Checks that `rows` is a non-empty rectangle and returns its row length.
fn batch_len(what: &str, rows: &[Vec<f64>]) -> Result<usize> {
    let n = rows.first().map_or(0, Vec::len);
    for (i, row) in rows.iter().enumerate() {
        if row.len() != n {
            return Err(RewardError::shape(
                format!("{what} row {i}"),
                format!("{n} scores"),
                row.len(),
            ));
        }
    }
    Ok(n)
}

/// Aggregates member scores (`members[m][b]`, member × batch) into one score per sample.
///
/// Members with weight 0 take no part. See the module docs for the formulas.
///
/// # Errors
/// [`RewardError::Shape`] if `members` is empty, ragged, or `weights.len()` differs;
/// [`RewardError::Config`] if a weight is negative or non-finite, no weight is positive, or
/// `k` is negative or non-finite.
pub fn aggregate(members: &[Vec<f64>], weights: &[f64], how: Aggregate) -> Result<Vec<f64>> {
    if members.is_empty() {
        return Err(RewardError::shape("ensemble members", "at least one", 0));
    }
    if weights.len() != members.len() {
        return Err(RewardError::shape(
            "ensemble weights",
            format!("{} weights (one per member)", members.len()),
            weights.len(),
        ));
    }
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(RewardError::config(
            "ensemble weight",
            format!("must be finite and ≥ 0, got {w}"),
        ));
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return Err(RewardError::config(
            "ensemble weights",
            "at least one weight must be positive",
        ));
    }
    how.validate()?;
    let n = batch_len("ensemble members", members)?;
    let active: Vec<(&Vec<f64>, f64)> = members
        .iter()
        .zip(weights)
        .filter(|(_, w)| **w > 0.0)
        .map(|(m, w)| (m, *w))
        .collect();
    let weighted_mean = |b: usize| active.iter().map(|(m, w)| w * m[b]).sum::<f64>() / total;
    let out = (0..n)
        .map(|b| match how {
            Aggregate::WeightedMean => weighted_mean(b),
            Aggregate::Min => active
                .iter()
                .map(|(m, _)| m[b])
                .fold(f64::INFINITY, f64::min),
            Aggregate::MeanMinusKStd(k) => {
                let mean = weighted_mean(b);
                let var = active
                    .iter()
                    .map(|(m, w)| w * (m[b] - mean).powi(2))
                    .sum::<f64>()
                    / total;
                mean - k * var.max(0.0).sqrt()
            }
        })
        .collect();
    Ok(out)
}

/// `R_b = A_b − Σ_p coefs[p] · penalties[p][b]` on raw penalty scores.
///
/// # Errors
/// [`RewardError::Shape`] if `coefs.len() != penalties.len()` or a penalty row's length
/// differs from `aggregated.len()`.
pub fn apply_penalties(
    aggregated: &[f64],
    penalties: &[Vec<f64>],
    coefs: &[f64],
) -> Result<Vec<f64>> {
    if coefs.len() != penalties.len() {
        return Err(RewardError::shape(
            "penalty coefficients",
            format!("{} (one per penalty)", penalties.len()),
            coefs.len(),
        ));
    }
    let mut out = aggregated.to_vec();
    for (p, (row, coef)) in penalties.iter().zip(coefs).enumerate() {
        if row.len() != out.len() {
            return Err(RewardError::shape(
                format!("penalty {p} scores"),
                out.len(),
                row.len(),
            ));
        }
        for (r, q) in out.iter_mut().zip(row) {
            *r -= coef * q;
        }
    }
    Ok(out)
}

/// Several rewards combined: normalise members, aggregate, then subtract hard penalties.
pub struct Ensemble {
    members: Vec<(Box<dyn Reward>, f64)>,
    penalties: Vec<Penalty>,
    normalize: Normalize,
    aggregate: Aggregate,
    running: Mutex<Vec<RunningStats>>,
    name: String,
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ensemble")
            .field("name", &self.name)
            .field(
                "weights",
                &self.members.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
            )
            .field(
                "penalty_coefs",
                &self.penalties.iter().map(|p| p.coef).collect::<Vec<_>>(),
            )
            .field("normalize", &self.normalize)
            .field("aggregate", &self.aggregate)
            .finish()
    }
}

fn check_weight(field: &str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(RewardError::config(
            field,
            format!("must be finite and ≥ 0, got {value}"),
        ))
    }
}

impl Ensemble {
    /// An ensemble with no members yet; add them with [`Ensemble::member`].
    ///
    /// # Errors
    /// [`RewardError::Config`] for a negative or non-finite `eps` or `k`.
    pub fn new(normalize: Normalize, aggregate: Aggregate) -> Result<Self> {
        normalize.validate()?;
        aggregate.validate()?;
        let mut ensemble = Self {
            members: Vec::new(),
            penalties: Vec::new(),
            normalize,
            aggregate,
            running: Mutex::new(Vec::new()),
            name: String::new(),
        };
        ensemble.rename();
        Ok(ensemble)
    }

    /// An ensemble from boxed members `(reward, weight)` and penalties.
    ///
    /// # Errors
    /// As [`Ensemble::new`], and [`RewardError::Config`] for a negative or non-finite weight
    /// or coefficient.
    pub fn from_parts(
        members: Vec<(Box<dyn Reward>, f64)>,
        penalties: Vec<Penalty>,
        normalize: Normalize,
        aggregate: Aggregate,
    ) -> Result<Self> {
        let mut ensemble = Self::new(normalize, aggregate)?;
        for (_, w) in &members {
            check_weight("ensemble weight", *w)?;
        }
        for p in &penalties {
            check_weight("penalty coef", p.coef)?;
        }
        ensemble.members = members;
        ensemble.penalties = penalties;
        ensemble.reset_running();
        ensemble.rename();
        Ok(ensemble)
    }

    /// Adds a member with weight `w ≥ 0`.
    ///
    /// # Errors
    /// [`RewardError::Config`] for a negative or non-finite weight.
    pub fn member(mut self, reward: impl Reward + 'static, weight: f64) -> Result<Self> {
        check_weight("ensemble weight", weight)?;
        self.members.push((Box::new(reward), weight));
        self.reset_running();
        self.rename();
        Ok(self)
    }

    /// Adds a hard penalty `R −= coef · reward` (raw score, after aggregation).
    ///
    /// # Errors
    /// [`RewardError::Config`] for a negative or non-finite coefficient.
    pub fn penalty(mut self, reward: impl Reward + 'static, coef: f64) -> Result<Self> {
        check_weight("penalty coef", coef)?;
        self.penalties.push(Penalty::new(reward, coef));
        self.rename();
        Ok(self)
    }

    /// The normalisation.
    pub fn normalize(&self) -> Normalize {
        self.normalize
    }

    /// The aggregation.
    pub fn aggregate(&self) -> Aggregate {
        self.aggregate
    }

    /// Member weights, in order.
    pub fn weights(&self) -> Vec<f64> {
        self.members.iter().map(|(_, w)| *w).collect()
    }

    /// Penalty coefficients, in order.
    pub fn penalty_coefs(&self) -> Vec<f64> {
        self.penalties.iter().map(|p| p.coef).collect()
    }

    /// Running statistics per member (meaningful for [`Normalize::Running`]).
    pub fn running_stats(&self) -> Vec<RunningStats> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the running statistics.
    pub fn reset_running(&self) {
        let mut stats = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        *stats = vec![RunningStats::new(); self.members.len()];
    }

    fn rename(&mut self) {
        let names: Vec<&str> = self.members.iter().map(|(r, _)| r.name()).collect();
        let mut name = format!("ensemble({})", names.join(", "));
        for p in &self.penalties {
            name.push_str(&format!(" - {}·{}", p.coef, p.reward.name()));
        }
        self.name = name;
    }

    /// Combines precomputed raw scores: `member_scores[m][b]` (one row per member) and
    /// `penalty_scores[p][b]` (one row per penalty). With [`Normalize::Running`] this updates
    /// the running statistics (only once every input has been validated).
    ///
    /// # Errors
    /// [`RewardError::Shape`] if the row counts differ from the members / penalties or rows
    /// are ragged; [`RewardError::Config`] if there is no member or no positive weight;
    /// [`RewardError::NonFinite`] for a non-finite input or result.
    pub fn combine(
        &self,
        member_scores: &[Vec<f64>],
        penalty_scores: &[Vec<f64>],
    ) -> Result<Vec<f64>> {
        if member_scores.len() != self.members.len() {
            return Err(RewardError::shape(
                "member scores",
                format!("{} rows (one per member)", self.members.len()),
                member_scores.len(),
            ));
        }
        if penalty_scores.len() != self.penalties.len() {
            return Err(RewardError::shape(
                "penalty scores",
                format!("{} rows (one per penalty)", self.penalties.len()),
                penalty_scores.len(),
            ));
        }
        let n = batch_len("member scores", member_scores)?;
        for row in member_scores.iter().chain(penalty_scores) {
            check_finite(&self.name, row)?;
        }
        if let Some(row) = penalty_scores.iter().find(|r| r.len() != n) {
            return Err(RewardError::shape("penalty scores", n, row.len()));
        }
        let weights = self.weights();
        if weights.iter().all(|w| *w <= 0.0) {
            return Err(RewardError::config(
                "ensemble weights",
                "needs at least one member with a positive weight",
            ));
        }
        let normalised: Vec<Vec<f64>> = match self.normalize {
            Normalize::None => member_scores.to_vec(),
            Normalize::BatchZ { eps } => member_scores.iter().map(|r| z_score(r, eps)).collect(),
            Normalize::Running { eps } => {
                let mut stats = self.running.lock().unwrap_or_else(PoisonError::into_inner);
                stats.resize(self.members.len(), RunningStats::new());
                member_scores
                    .iter()
                    .zip(stats.iter_mut())
                    .map(|(r, s)| {
                        s.update(r);
                        s.standardize(r, eps)
                    })
                    .collect()
            }
        };
        let aggregated = aggregate(&normalised, &weights, self.aggregate)?;
        let out = apply_penalties(&aggregated, penalty_scores, &self.penalty_coefs())?;
        check_finite(&self.name, &out)?;
        Ok(out)
    }
}

impl Ensemble {
    /// Normalises one member's differentiable scores `[B]` (see [`Normalize`]).
    fn normalize_tensor(&self, m: usize, r: Tensor<1>) -> Result<Tensor<1>> {
        match self.normalize {
            Normalize::None => Ok(r),
            Normalize::BatchZ { eps } => {
                let host = read_scores(&self.name, r.clone())?;
                let constant = host.windows(2).all(|w| w[0] == w[1]);
                if constant {
                    return Ok(r.mul_scalar(0.0));
                }
                let [n] = r.dims();
                let (var, mean) = r.clone().reshape([1, n]).var_mean_bias(1);
                let std = var.sqrt().add_scalar(eps).reshape([1]);
                Ok((r - mean.reshape([1])) / std)
            }
            Normalize::Running { eps } => {
                let host = read_scores(&self.name, r.clone())?;
                let mut stats = self.running.lock().unwrap_or_else(PoisonError::into_inner);
                stats.resize(self.members.len(), RunningStats::new());
                let s = &mut stats[m];
                s.update(&host);
                let std = s.variance().sqrt();
                if std == 0.0 || s.range.is_none_or(|(lo, hi)| lo == hi) {
                    return Ok(r.mul_scalar(0.0));
                }
                Ok(r.sub_scalar(s.mean()).div_scalar(std + eps))
            }
        }
    }

    /// The differentiable path of [`Reward::score_differentiable`], once every member and
    /// penalty has returned its tensor.
    fn combine_tensors(
        &self,
        members: Vec<Tensor<1>>,
        penalties: Vec<Tensor<1>>,
    ) -> Result<Tensor<1>> {
        let weights = self.weights();
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return Err(RewardError::config(
                "ensemble weights",
                "needs at least one member with a positive weight",
            ));
        }
        let mut active = Vec::new();
        let mut active_w = Vec::new();
        for (m, (r, w)) in members.into_iter().zip(&weights).enumerate() {
            let z = self.normalize_tensor(m, r)?;
            if *w > 0.0 {
                active.push(z);
                // Weights are user configuration in f64; the device works in f32.
                active_w.push(*w as f32);
            }
        }
        let device = active[0].device();
        let [n] = active[0].dims();
        let k = active.len();
        let z: Tensor<2> = Tensor::stack(active, 0); // [M, B]
        let w: Tensor<2> =
            Tensor::<1>::from_data(TensorData::new(active_w, [k]), &device).reshape([k, 1]);
        let weighted_mean = |z: Tensor<2>| (z * w.clone()).sum_dim(0).div_scalar(total);
        let aggregated: Tensor<2> = match self.aggregate {
            Aggregate::WeightedMean => weighted_mean(z),
            Aggregate::Min => z.min_dim(0),
            Aggregate::MeanMinusKStd(kk) => {
                let mean = weighted_mean(z.clone());
                let var = ((z - mean.clone()).square() * w.clone())
                    .sum_dim(0)
                    .div_scalar(total);
                // sqrt has an infinite derivative at 0: take it of 1 where the members
                // agree exactly and mask the result back to 0 (value exact, gradient finite).
                let agree = var.clone().equal_elem(0.0);
                let std = var
                    .mask_fill(agree.clone(), 1.0)
                    .sqrt()
                    .mask_fill(agree, 0.0);
                mean - std.mul_scalar(kk)
            }
        };
        let mut out: Tensor<1> = aggregated.reshape([n]);
        for (q, p) in penalties.into_iter().zip(&self.penalties) {
            out = out - q.mul_scalar(p.coef);
        }
        Ok(out)
    }
}

impl Reward for Ensemble {
    fn name(&self) -> &str {
        &self.name
    }

    fn scale(&self) -> &str {
        match self.normalize {
            Normalize::None => "weighted aggregate of raw member scores, minus penalties",
            Normalize::BatchZ { .. } | Normalize::Running { .. } => {
                "aggregate of z-scored members (≈ unit scale), minus raw penalties"
            }
        }
    }

    fn score(&self, images: &Tensor<4>, prompts: &[String]) -> Result<Vec<f64>> {
        let [b, ..] = check_batch(&self.name, images, prompts)?;
        let score_all = |rewards: Vec<&dyn Reward>| -> Result<Vec<Vec<f64>>> {
            rewards
                .into_iter()
                .map(|r| {
                    let s = r.score(images, prompts)?;
                    if s.len() == b {
                        Ok(s)
                    } else {
                        Err(RewardError::shape(
                            format!("scores of member `{}`", r.name()),
                            b,
                            s.len(),
                        ))
                    }
                })
                .collect()
        };
        let members = score_all(self.members.iter().map(|(r, _)| r.as_ref()).collect())?;
        let penalties = score_all(self.penalties.iter().map(|p| p.reward.as_ref()).collect())?;
        self.combine(&members, &penalties)
    }

    /// Differentiable when every member and every penalty is; the same formulas as
    /// [`Ensemble::combine`] in tensor ops (batch z-scores differentiate through the batch
    /// mean and std; running statistics are updated and then act as constants;
    /// the across-member std is masked to 0 where the members agree exactly, so its gradient
    /// stays finite). `None` if any part is not differentiable.
    fn score_differentiable(
        &self,
        images: Tensor<4>,
        prompts: &[String],
    ) -> Option<Result<Tensor<1>>> {
        let b = match check_batch(&self.name, &images, prompts) {
            Ok([b, ..]) => b,
            Err(e) => return Some(Err(e)),
        };
        if self.members.is_empty() {
            return Some(Err(RewardError::config(
                "ensemble members",
                "needs at least one member",
            )));
        }
        let parts: Vec<&dyn Reward> = self
            .members
            .iter()
            .map(|(r, _)| r.as_ref())
            .chain(self.penalties.iter().map(|p| p.reward.as_ref()))
            .collect();
        let mut tensors = Vec::with_capacity(parts.len());
        for r in parts {
            match r.score_differentiable(images.clone(), prompts)? {
                Ok(t) if t.dims() == [b] => tensors.push(t),
                Ok(t) => {
                    return Some(Err(RewardError::shape(
                        format!("differentiable scores of `{}`", r.name()),
                        format!("[{b}]"),
                        format!("{:?}", t.dims()),
                    )));
                }
                Err(e) => return Some(Err(e)),
            }
        }
        let penalties = tensors.split_off(self.members.len());
        Some(self.combine_tensors(tensors, penalties))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_stats_match_the_concatenation() {
        let mut s = RunningStats::new();
        s.update(&[1.0, 2.0]);
        s.update(&[3.0]);
        s.update(&[]);
        s.update(&[4.0, 5.0, 6.0]);
        assert_eq!(s.count(), 6);
        assert!((s.mean() - 3.5).abs() < 1e-12);
        assert!((s.variance() - 35.0 / 12.0).abs() < 1e-12);
    }

    #[test]
    fn invalid_configuration_is_rejected() {
        assert!(Ensemble::new(Normalize::None, Aggregate::MeanMinusKStd(-1.0)).is_err());
        assert!(Ensemble::new(Normalize::BatchZ { eps: f64::NAN }, Aggregate::Min).is_err());
        assert!(aggregate(&[vec![1.0]], &[0.0], Aggregate::WeightedMean).is_err());
        assert!(aggregate(&[vec![1.0], vec![1.0, 2.0]], &[1.0, 1.0], Aggregate::Min).is_err());
        assert!(aggregate(&[], &[], Aggregate::Min).is_err());
    }

    #[test]
    fn zero_weight_members_are_left_out() {
        let m = vec![vec![1.0, 5.0], vec![-10.0, -10.0]];
        assert_eq!(
            aggregate(&m, &[1.0, 0.0], Aggregate::Min).unwrap(),
            vec![1.0, 5.0]
        );
    }
}
