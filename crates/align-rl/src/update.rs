//! One policy-gradient computation over stored transitions, step by step.
//!
//! The loss of an update is the mean of the per-step losses of [`crate::step_loss`] over the
//! trained steps `S`:
//!
//! ```text
//! L = (1/|S|) Σ_{k ∈ S} L_k
//! ```
//!
//! Each step's graph is built, back-propagated and dropped before the next step is rebuilt
//! (gradients accumulate in a [`GradientsAccumulator`]), so activation memory is that of one
//! step however many steps are trained. Conditions are re-encoded for every step through the
//! caller's `encode`, so a trainable text encoder gets its gradient too.

use align_core::{Condition, Denoiser, Trajectory};
use align_samplers::{Sampler, SamplerError, rescore};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Tensor, TensorData};

use crate::error::{Result, RlError};
use crate::objective::{KlPenalty, Objective, StepInputs, step_loss};

/// Turns a model and the trajectory's condition ids into `(condition, unconditional)`.
/// `Sync`, so that a data-parallel update can encode on every device at once.
pub type Encode<'a, M> =
    dyn Fn(&M, &[usize]) -> std::result::Result<(Condition, Option<Condition>), String> + Sync + 'a;

/// Diagnostics of one gradient computation (means over the trained steps).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateStats {
    /// Mean total loss.
    pub loss: f64,
    /// Mean policy term.
    pub policy_loss: f64,
    /// Mean per-step KL to the reference (0 without a reference).
    pub kl: f64,
    /// Mean clip fraction.
    pub clip_fraction: f64,
    /// Largest `|ρ − 1|` seen.
    pub max_ratio_deviation: f64,
    /// Mean of PPO's `approx_kl` = `mean((ρ − 1) − log ρ)` over samples and steps: the k3
    /// estimate of `KL(π_old ‖ π_θ)` (≥ 0, exactly 0 at `θ = θ_old`).
    pub approx_kl: f64,
    /// Number of trained steps.
    pub steps: usize,
    /// Number of samples.
    pub samples: usize,
}

/// The advantages of an update: one per sample (shared by its steps, the terminal-reward
/// algorithms) or one per sample and step (dense-reward algorithms: DenseGRPO).
#[derive(Debug, Clone, Copy)]
pub enum Advantages<'a> {
    /// `Â[b]`, the same for every step of sample `b`.
    PerSample(&'a [f64]),
    /// `Â[b][k]`: sample `b` at generation-order step `k` (`K` entries per sample).
    PerStep(&'a [Vec<f64>]),
}

impl Advantages<'_> {
    fn len(&self) -> usize {
        match self {
            Advantages::PerSample(a) => a.len(),
            Advantages::PerStep(a) => a.len(),
        }
    }

    /// The batch's advantages at step `k`.
    fn at_step(&self, k: usize) -> Result<Vec<f32>> {
        match self {
            Advantages::PerSample(a) => Ok(a.iter().map(|&v| v as f32).collect()),
            Advantages::PerStep(a) => a
                .iter()
                .map(|row| {
                    row.get(k).map(|&v| v as f32).ok_or_else(|| {
                        align_core::CoreError::shape("per-step advantages", k + 1, row.len()).into()
                    })
                })
                .collect(),
        }
    }
}

/// What one gradient computation trains on.
pub struct PolicyGradientInputs<'a, M, S: ?Sized> {
    /// The trainable policy (on an autodiff device).
    pub policy: &'a M,
    /// The reference policy (same type, no gradients — e.g. adapters off); required by a KL
    /// penalty.
    pub reference: Option<&'a M>,
    /// The sampler that produced the trajectory.
    pub sampler: &'a S,
    /// The stored transitions (a minibatch of them).
    pub trajectory: &'a Trajectory,
    /// Advantages of the samples of `trajectory` (per sample, or per sample and step).
    pub advantages: Advantages<'a>,
    /// The generation-order steps to train (each stochastic).
    pub steps: &'a [usize],
    /// Prompt encoder.
    pub encode: &'a Encode<'a, M>,
    /// Policy term.
    pub objective: Objective,
    /// Optional KL penalty.
    pub kl: Option<KlPenalty>,
    /// Samples per backward pass (`train_micro_batch`; `None` or ≥ the batch: all at once).
    /// The batch is cut into consecutive chunks whose losses, weighted by their share of the
    /// batch, are back-propagated one after the other and their gradients summed: the same
    /// gradient as the whole batch (to f32 rounding), with one chunk's activations in memory.
    pub micro_batch: Option<usize>,
}

/// The mean of `t` read back to the host, refused when not finite (`what` names it).
pub(crate) fn scalar(t: Tensor<1>, what: &str) -> Result<f64> {
    let v: f32 = t
        .mean()
        .try_into_scalar()
        .map_err(|e| RlError::Readback(format!("reading {what}: {e:?}")))?;
    if !v.is_finite() {
        return Err(RlError::NonFinite {
            what: what.to_string(),
            value: f64::from(v),
        });
    }
    Ok(f64::from(v))
}

/// Computes the gradient of the mean per-step loss, one step graph at a time.
///
/// # Errors
/// Mismatched advantages, an empty or deterministic step set, a failing encoder, a missing
/// reference for a KL penalty, or a non-finite loss (nothing is returned in that case, so the
/// caller's model stays untouched).
pub fn policy_gradients<M, S>(
    inputs: PolicyGradientInputs<'_, M, S>,
) -> Result<(GradientsParams, UpdateStats)>
where
    M: Module + Denoiser,
    S: Sampler + ?Sized,
{
    let traj = inputs.trajectory;
    let b = traj.batch_size();
    if inputs.advantages.len() != b {
        return Err(align_core::CoreError::shape("advantages", b, inputs.advantages.len()).into());
    }
    if inputs.steps.is_empty() {
        return Err(RlError::config("steps", "train at least one step"));
    }
    inputs.objective.validate()?;
    if let Some(kl) = inputs.kl {
        kl.validate()?;
        if inputs.reference.is_none() {
            return Err(RlError::config(
                "kl",
                "a KL penalty needs a reference policy",
            ));
        }
    }
    let n = inputs.steps.len() as f64;
    let mut acc = GradientsAccumulator::<M>::new();
    let mut stats = UpdateStats {
        steps: inputs.steps.len(),
        samples: b,
        ..UpdateStats::default()
    };
    let encode = |m: &M, ids: &[usize]| (inputs.encode)(m, ids).map_err(RlError::Encode);
    // Micro-batches: consecutive chunks of the batch, each weighted by its share.
    let size = inputs.micro_batch.filter(|&m| m > 0 && m < b).unwrap_or(b);
    let chunks: Vec<(std::ops::Range<usize>, Trajectory)> = if size == b {
        vec![(0..b, traj.clone())]
    } else {
        (0..b)
            .step_by(size)
            .map(|s| {
                let r = s..(s + size).min(b);
                let idx: Vec<usize> = r.clone().collect();
                traj.select(&idx).map(|t| (r, t))
            })
            .collect::<std::result::Result<_, _>>()?
    };
    for &k in inputs.steps {
        let all_advantages = inputs.advantages.at_step(k)?;
        for (range, traj) in &chunks {
            let weight = range.len() as f64 / b as f64;
            let mb = range.len();
            let old = traj.log_probs.get(k).and_then(|lp| lp.clone()).ok_or(
                SamplerError::Deterministic {
                    sampler: inputs.sampler.name(),
                    step: k,
                    hint: "train only the stochastic steps of the trajectory",
                },
            )?;
            let (cond, uncond) = encode(inputs.policy, &traj.condition_ids)?;
            let device = cond.context.device();
            let out = rescore(
                inputs.policy,
                inputs.sampler,
                traj,
                k,
                &cond,
                uncond.as_ref(),
            )?;
            let log_prob = out.log_prob.ok_or(SamplerError::Deterministic {
                sampler: inputs.sampler.name(),
                step: k,
                hint: "train only the stochastic steps of the trajectory",
            })?;
            let (ref_mean, ref_log_prob) = match (inputs.kl, inputs.reference) {
                (Some(_), Some(reference)) => {
                    let (rc, ru) = encode(reference, &traj.condition_ids)?;
                    let r = rescore(reference, inputs.sampler, traj, k, &rc, ru.as_ref())?;
                    (Some(r.mean.detach()), r.log_prob.map(|lp| lp.detach()))
                }
                _ => (None, None),
            };
            let adv = Tensor::<1>::from_data(
                TensorData::new(all_advantages[range.clone()].to_vec(), [mb]),
                &device,
            );
            let terms = step_loss(
                StepInputs {
                    log_prob,
                    old_log_prob: old.to_device(&device),
                    advantages: adv,
                    mean: out.mean,
                    std: out.std,
                    ref_mean,
                    ref_log_prob,
                    reduction: traj.reduction,
                    old_mean: traj.means.get(k).map(|m| m.clone().to_device(&device)),
                    step_size: traj
                        .times
                        .get(k + 1)
                        .map(|next| (traj.times[k] - next).abs()),
                },
                inputs.objective,
                inputs.kl,
            )?;
            let w = weight / n;
            stats.loss += scalar(terms.loss.clone().detach(), &format!("loss at step {k}"))? * w;
            stats.policy_loss += scalar(terms.policy, "policy loss")? * w;
            stats.kl += scalar(terms.kl, "KL to the reference")? * w;
            stats.clip_fraction += scalar(terms.clip_fraction, "clip fraction")? * w;
            let approx = terms.ratio.clone().sub_scalar(1.0) - terms.ratio.clone().log();
            stats.approx_kl += scalar(approx, "approx_kl")? * w;
            let dev: f32 = terms
                .ratio
                .sub_scalar(1.0)
                .abs()
                .max()
                .try_into_scalar()
                .map_err(|e| RlError::Readback(format!("reading the ratio: {e:?}")))?;
            stats.max_ratio_deviation = stats.max_ratio_deviation.max(f64::from(dev));
            let loss = if size == b {
                terms.loss.div_scalar(n)
            } else {
                terms.loss.mul_scalar(weight).div_scalar(n)
            };
            if !loss.is_tracked() {
                return Err(RlError::config(
                    "policy",
                    "no trainable parameter reaches the loss: put the model on an autodiff device \
                 (`device.autodiff()`) and leave its adapters trainable",
                ));
            }
            let grads = loss.backward();
            acc.accumulate(
                inputs.policy,
                GradientsParams::from_grads(grads, inputs.policy),
            );
        }
    }
    Ok((acc.grads(), stats))
}
