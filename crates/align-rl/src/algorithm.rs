//! The [`OnlineAlgorithm`] trait and the update loop all online-RL algorithms share.
//!
//! One iteration of every algorithm here is: roll out a batch with the current policy (θ_old),
//! score the final samples, turn rewards into advantages (the algorithm's choice), then for
//! `inner_epochs` passes over the batch, split into `minibatches` shuffled parts, compute the
//! step-by-step policy gradient ([`crate::policy_gradients`]) and hand it to the caller's
//! optimizer. The first minibatch of the first epoch is always evaluated at `θ = θ_old`.

use std::ops::Range;

use align_core::Trajectory;
use align_core::data_parallel::{Gradients, Replicas, split_minibatch};
use align_core::scale_gradients;
use align_samplers::Sampler;
use burn::module::Module;
use burn::optim::GradientsParams;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use align_core::Denoiser;

use crate::error::{Result, RlError};
use crate::objective::{KlPenalty, Objective};
use crate::update::{Advantages, Encode, PolicyGradientInputs, UpdateStats, policy_gradients};

/// An online policy-gradient algorithm: how it weighs samples and what it minimises.
pub trait OnlineAlgorithm {
    /// Short name (`"ddpo-sf"`, `"flow-grpo"`, …).
    fn name(&self) -> &'static str;
    /// The policy term.
    fn objective(&self) -> Objective;
    /// The KL penalty to the reference, if any.
    fn kl(&self) -> Option<KlPenalty>;
    /// Passes over each rollout batch (1 for on-policy REINFORCE).
    fn inner_epochs(&self) -> usize;
    /// Optimizer steps per pass.
    fn minibatches(&self) -> usize;
    /// Advantages of the batch's samples from their terminal rewards; may update internal
    /// statistics (per-prompt trackers), which are then part of a checkpoint.
    ///
    /// # Errors
    /// Non-finite rewards or mismatched lengths.
    fn advantages(&mut self, trajectory: &Trajectory, rewards: &[f64]) -> Result<Vec<f64>>;
    /// Whether the algorithm learns from dense per-step rewards ([`Iteration::dense_rewards`])
    /// instead of terminal ones (DenseGRPO).
    fn uses_dense_rewards(&self) -> bool {
        false
    }
    /// Per-sample, per-step advantages `Â[b][k]` from dense rewards `r[b][k]` (only the
    /// entries at `steps` are read); may update internal state (noise calibration).
    ///
    /// # Errors
    /// An algorithm without dense rewards, mismatched shapes, non-finite rewards.
    fn step_advantages(
        &mut self,
        _trajectory: &Trajectory,
        _dense: &[Vec<f64>],
        _steps: &[usize],
    ) -> Result<Vec<Vec<f64>>> {
        Err(RlError::config(
            "dense_rewards",
            format!("{} learns from terminal rewards only", self.name()),
        ))
    }
    /// β_r when the algorithm takes KL as a reward ([`crate::kl_reward`]): the job then
    /// supplies [`Iteration::dense_rewards`] = `r_i − β_r KL_{i,k}`. `None` = no KL reward.
    fn kl_reward(&self) -> Option<f64> {
        None
    }
    /// Per-step multipliers of the sampler's noise level the next rollout should use
    /// (DenseGRPO's calibrated exploration); `None` = the configured noise everywhere.
    fn noise_scales(&self) -> Option<Vec<f64>> {
        None
    }
    /// Whether samples whose advantage is exactly 0 are left out of the update (Flow-GRPO
    /// drops groups whose rewards are all equal).
    fn drop_zero_advantages(&self) -> bool {
        false
    }
    /// Resumable state (per-prompt statistics) for checkpoints.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores [`OnlineAlgorithm::state`].
    ///
    /// # Errors
    /// State of another algorithm.
    fn restore(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// The stochastic steps of a trajectory: the steps an algorithm can train.
pub fn trainable_steps(trajectory: &Trajectory) -> Vec<usize> {
    trajectory.stochastic_steps()
}

/// What one iteration updates and with what.
pub struct Iteration<'a, M, S: ?Sized> {
    /// The reference policy (no gradients), if the algorithm has a KL penalty.
    pub reference: Option<&'a M>,
    /// The sampler of the rollout.
    pub sampler: &'a S,
    /// The rollout (from the policy at the start of the iteration).
    pub trajectory: &'a Trajectory,
    /// Its terminal rewards.
    pub rewards: &'a [f64],
    /// Dense per-step rewards `r[b][k]` (`K` per sample) for algorithms that use them
    /// ([`OnlineAlgorithm::uses_dense_rewards`]); `None` otherwise.
    pub dense_rewards: Option<&'a [Vec<f64>]>,
    /// Steps to train (default: [`trainable_steps`]).
    pub steps: &'a [usize],
    /// Prompt encoder.
    pub encode: &'a Encode<'a, M>,
    /// Seed of the minibatch shuffles (combine the run seed and the iteration).
    pub shuffle_seed: u64,
    /// Samples per backward pass within a minibatch (`None`: the whole minibatch); see
    /// [`PolicyGradientInputs::micro_batch`].
    pub micro_batch: Option<usize>,
}

/// Diagnostics of one iteration.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IterationStats {
    /// Mean terminal reward of the batch.
    pub reward_mean: f64,
    /// Its population standard deviation.
    pub reward_std: f64,
    /// Fraction of samples dropped for a zero advantage.
    pub zero_advantage_fraction: f64,
    /// Optimizer steps taken.
    pub optimizer_steps: usize,
    /// Mean of the updates' statistics.
    pub update: UpdateStats,
}

fn shuffled(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx
}

/// The devices of a data-parallel iteration ([`run_iteration_parallel`]).
pub struct Parallel<'a, M> {
    /// One replica of the policy per device; the update syncs their trainable parameters
    /// after every optimizer step.
    pub policies: &'a mut Replicas<M>,
    /// The reference policy on the same devices (required by a KL penalty).
    pub references: Option<&'a Replicas<M>>,
    /// The batch's shards ([`align_core::data_parallel::shard_ranges`]): device `d` rolled
    /// out samples `ranges[d]` of the trajectory and trains them.
    pub ranges: &'a [Range<usize>],
}

/// Runs one iteration: advantages, then `inner_epochs × minibatches` gradient steps, each
/// applied with `apply(policy, grads)` (the caller's clipping + optimizer).
///
/// # Errors
/// Bad rewards, a failing update or a failing `apply`; the policy passed to the last
/// successful `apply` is lost only if the caller drops it — on error nothing is returned, so
/// callers keep their last checkpoint.
pub fn run_iteration<A, M, S>(
    algorithm: &mut A,
    policy: M,
    it: Iteration<'_, M, S>,
    apply: &mut dyn FnMut(M, GradientsParams) -> Result<M>,
) -> Result<(M, IterationStats)>
where
    A: OnlineAlgorithm + ?Sized,
    M: Module + Denoiser,
    S: Sampler + ?Sized,
{
    let objective = algorithm.objective();
    let kl = algorithm.kl();
    let (reference, sampler, steps, encode, micro_batch) = (
        it.reference,
        it.sampler,
        it.steps,
        it.encode,
        it.micro_batch,
    );
    let full = it.trajectory;
    let mut step = |policy: M, chunk: &[usize], advantages: Advantages<'_>| {
        let sub = full.select(chunk)?;
        let (grads, s) = policy_gradients(PolicyGradientInputs {
            policy: &policy,
            reference,
            sampler,
            trajectory: &sub,
            advantages,
            steps,
            encode,
            objective,
            kl,
            micro_batch,
        })?;
        Ok((apply(policy, grads)?, s))
    };
    iterate(algorithm, policy, &it, &mut step)
}

/// [`run_iteration`] over several devices: each minibatch is split by owner
/// ([`align_core::data_parallel::split_minibatch`]), each device computes the gradient of
/// its samples' mean loss on its replica (the samples moved to the device that rolled them
/// out, so the ratio at `θ_old` stays exactly 1), weighted by its share of the minibatch, and
/// `apply` receives the parts as [`Gradients::PerDevice`] (the runner sums, clips and steps
/// them with `step_multi`); the replicas are then synced. The result equals the
/// single-device iteration up to floating-point summation order (and to the backends'
/// arithmetic when they differ). Statistics are the share-weighted means of the devices'.
///
/// Each device computes its part on its own thread (the devices work at the same time; the
/// parts are combined in device order, so the result does not depend on the timing).
///
/// # Errors
/// As [`run_iteration`]; shards that do not cover the batch; a KL penalty without
/// reference replicas.
pub fn run_iteration_parallel<A, M, S>(
    algorithm: &mut A,
    policy: M,
    it: Iteration<'_, M, S>,
    parallel: Parallel<'_, M>,
    apply: &mut dyn FnMut(M, Gradients) -> Result<M>,
) -> Result<(M, IterationStats)>
where
    A: OnlineAlgorithm + ?Sized,
    M: Module + Denoiser,
    S: Sampler + Sync + ?Sized,
{
    let b = it.trajectory.batch_size();
    let covered: usize = parallel.ranges.iter().map(|r| r.len()).sum();
    if parallel.ranges.len() != parallel.policies.len()
        || covered != b
        || parallel.ranges.iter().map(|r| r.end).max() != Some(b)
    {
        return Err(RlError::config(
            "devices",
            format!(
                "{} shards covering {covered} samples for {} devices and a batch of {b}",
                parallel.ranges.len(),
                parallel.policies.len()
            ),
        ));
    }
    let objective = algorithm.objective();
    let kl = algorithm.kl();
    if kl.is_some() && parallel.references.is_none() {
        return Err(RlError::config(
            "kl",
            "a KL penalty needs the reference on every device",
        ));
    }
    let (sampler, steps, encode, micro_batch) = (it.sampler, it.steps, it.encode, it.micro_batch);
    let ranges = parallel.ranges;
    let policies = parallel.policies;
    let references = parallel.references;
    let full = it.trajectory;
    let mut step = |policy: M, chunk: &[usize], advantages: Advantages<'_>| {
        let position: std::collections::HashMap<usize, usize> =
            chunk.iter().enumerate().map(|(j, &i)| (i, j)).collect();
        // Each device's share of the minibatch, prepared here: its replica (a clone shares the
        // tensors), its samples moved to it, their advantages.
        let mut work = Vec::new();
        for (d, (mine, share)) in split_minibatch(chunk, ranges).into_iter().enumerate() {
            if mine.is_empty() {
                continue;
            }
            let device = policies.devices()[d].clone();
            let rows: Vec<usize> = mine.iter().map(|i| position[i]).collect();
            let advantages = match advantages {
                Advantages::PerSample(a) => Owned::PerSample(rows.iter().map(|&j| a[j]).collect()),
                Advantages::PerStep(a) => {
                    Owned::PerStep(rows.iter().map(|&j| a[j].clone()).collect())
                }
            };
            work.push(Shard {
                index: d,
                policy: policies.models()[d].clone(),
                reference: references.map(|r| r.models()[d].clone()),
                trajectory: full.select(&mine)?.to_device(&device),
                advantages,
                share,
                device,
            });
        }
        let gradients = |w: Shard<M>| -> Result<(GradientsParams, UpdateStats, Shard<M>)> {
            let (grads, s) = policy_gradients(PolicyGradientInputs {
                policy: &w.policy,
                reference: w.reference.as_ref(),
                sampler,
                trajectory: &w.trajectory,
                advantages: w.advantages.view(),
                steps,
                encode,
                objective,
                kl,
                micro_batch,
            })?;
            Ok((scale_gradients(&w.policy, grads, w.share), s, w))
        };
        // One thread per device, so that devices work at the same time; results in device
        // order whatever the timing.
        let results: Vec<Result<(GradientsParams, UpdateStats, Shard<M>)>> = if work.len() == 1 {
            work.into_iter().map(gradients).collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = work
                    .into_iter()
                    .map(|w| scope.spawn(|| gradients(w)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(RlError::config(
                                "devices",
                                "a device's update thread panicked",
                            ))
                        })
                    })
                    .collect()
            })
        };
        // Every device has its part, in device order: an empty one for a device that holds
        // none of the minibatch's samples.
        let mut parts: Vec<(GradientsParams, burn::tensor::Device)> = policies
            .devices()
            .iter()
            .map(|d| (GradientsParams::new(), d.clone()))
            .collect();
        let mut stats = UpdateStats::default();
        for r in results {
            let (grads, s, w) = r?;
            let share = w.share;
            parts[w.index] = (grads, w.device);
            stats.loss += s.loss * share;
            stats.policy_loss += s.policy_loss * share;
            stats.kl += s.kl * share;
            stats.clip_fraction += s.clip_fraction * share;
            stats.approx_kl += s.approx_kl * share;
            stats.max_ratio_deviation = stats.max_ratio_deviation.max(s.max_ratio_deviation);
            stats.steps = s.steps;
            stats.samples += s.samples;
        }
        let policy = apply(policy, Gradients::PerDevice(parts))?;
        policies.sync(&policy)?;
        Ok((policy, stats))
    };
    iterate(algorithm, policy, &it, &mut step)
}

/// Advantages owned by one device's share of a minibatch.
enum Owned {
    PerSample(Vec<f64>),
    PerStep(Vec<Vec<f64>>),
}

impl Owned {
    fn view(&self) -> Advantages<'_> {
        match self {
            Owned::PerSample(a) => Advantages::PerSample(a),
            Owned::PerStep(a) => Advantages::PerStep(a),
        }
    }
}

/// One device's share of a minibatch: what its thread needs.
struct Shard<M> {
    /// The device's index (its shard).
    index: usize,
    policy: M,
    reference: Option<M>,
    trajectory: Trajectory,
    advantages: Owned,
    share: f64,
    device: burn::tensor::Device,
}

/// One minibatch update: `(policy, its sample indices in the batch, its advantages) →
/// (updated policy, statistics)`.
type MinibatchStep<'s, M> = dyn FnMut(M, &[usize], Advantages<'_>) -> Result<(M, UpdateStats)> + 's;

/// The iteration both entry points share: advantages, zero-advantage filtering, the epochs'
/// shuffled minibatches, and the statistics; `step` computes and applies each update.
fn iterate<A, M, S>(
    algorithm: &mut A,
    mut policy: M,
    it: &Iteration<'_, M, S>,
    step: &mut MinibatchStep<'_, M>,
) -> Result<(M, IterationStats)>
where
    A: OnlineAlgorithm + ?Sized,
    M: Module + Denoiser,
    S: Sampler + ?Sized,
{
    let b = it.trajectory.batch_size();
    if it.rewards.len() != b {
        return Err(align_core::CoreError::shape("rewards", b, it.rewards.len()).into());
    }
    let epochs = algorithm.inner_epochs();
    let parts = algorithm.minibatches();
    if epochs == 0 || parts == 0 || parts > b {
        return Err(RlError::config(
            "inner_epochs / minibatches",
            format!("need ≥ 1 epoch and 1..={b} minibatches, got {epochs} and {parts}"),
        ));
    }
    // Per-sample advantages, or per-sample-and-step ones from dense rewards.
    let per_step: Vec<Vec<f64>> = match (algorithm.uses_dense_rewards(), it.dense_rewards) {
        (true, Some(dense)) => algorithm.step_advantages(it.trajectory, dense, it.steps)?,
        (true, None) => {
            return Err(RlError::config(
                "dense_rewards",
                format!("{} needs dense per-step rewards", algorithm.name()),
            ));
        }
        (false, Some(_)) => {
            return Err(RlError::config(
                "dense_rewards",
                format!("{} learns from terminal rewards only", algorithm.name()),
            ));
        }
        (false, None) => {
            let a = algorithm.advantages(it.trajectory, it.rewards)?;
            a.into_iter().map(|v| vec![v]).collect()
        }
    };
    let dense = algorithm.uses_dense_rewards();
    if per_step.len() != b {
        return Err(align_core::CoreError::shape("advantages", b, per_step.len()).into());
    }
    let is_zero = |i: usize| {
        if dense {
            it.steps
                .iter()
                .all(|&k| per_step[i].get(k).is_none_or(|&a| a == 0.0))
        } else {
            per_step[i][0] == 0.0
        }
    };
    let kept: Vec<usize> = if algorithm.drop_zero_advantages() {
        (0..b).filter(|&i| !is_zero(i)).collect()
    } else {
        (0..b).collect()
    };
    let n = b as f64;
    let mean = it.rewards.iter().sum::<f64>() / n;
    let mut stats = IterationStats {
        reward_mean: mean,
        reward_std: (it.rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt(),
        zero_advantage_fraction: 1.0 - kept.len() as f64 / n,
        ..IterationStats::default()
    };
    if kept.is_empty() {
        return Ok((policy, stats));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(it.shuffle_seed);
    let mut count = 0.0;
    for _ in 0..epochs {
        let order: Vec<usize> = shuffled(kept.len(), &mut rng)
            .into_iter()
            .map(|i| kept[i])
            .collect();
        let size = order.len().div_ceil(parts);
        for chunk in order.chunks(size.max(1)) {
            let rows: Vec<Vec<f64>> = chunk.iter().map(|&i| per_step[i].clone()).collect();
            let flat: Vec<f64> = if dense {
                Vec::new()
            } else {
                rows.iter().map(|r| r[0]).collect()
            };
            let advantages = if dense {
                Advantages::PerStep(&rows)
            } else {
                Advantages::PerSample(&flat)
            };
            let (next, s) = step(policy, chunk, advantages)?;
            policy = next;
            stats.optimizer_steps += 1;
            count += 1.0;
            let u = &mut stats.update;
            u.loss += s.loss;
            u.policy_loss += s.policy_loss;
            u.kl += s.kl;
            u.clip_fraction += s.clip_fraction;
            u.max_ratio_deviation = u.max_ratio_deviation.max(s.max_ratio_deviation);
            u.approx_kl += s.approx_kl;
            u.steps = s.steps;
            u.samples += s.samples;
        }
    }
    let u = &mut stats.update;
    u.loss /= count;
    u.policy_loss /= count;
    u.kl /= count;
    u.clip_fraction /= count;
    u.approx_kl /= count;
    Ok((policy, stats))
}
