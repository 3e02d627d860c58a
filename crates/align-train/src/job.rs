//! The online job, generic over the [`Pipeline`]: rollouts of the LoRA-adapted policy on the
//! run's prompts, rewards, one iteration of an `align-rl` algorithm (DDPO-SF/IS, DPOK,
//! Flow-GRPO and its Fast window, DenseGRPO, SDPO) or a reward-backprop update (DRaFT-K,
//! AlignProp), then the [`Evaluator`]'s periodic evaluation. The reference policy is the same
//! pipeline with its adapters off (`finetune = "full"`: a frozen copy of the base weights).
//!
//! [`train_pipeline`] runs it on the [`align_core::Runner`] for any pipeline: the Shapes models
//! ([`crate::train`] with a `model.json` directory), Stable Diffusion (a diffusers directory),
//! or a model of the user's own (see `examples/flow_grpo_own_model.rs`).

use std::path::Path;
use std::time::Instant;

use align_backprop::{
    AdjointInputs, AdjointMatchingInputs, DraftUpdate, adjoint_matching_gradients,
    continuous_adjoint, draft_lv_gradients, draft_update, late_step, refl_gradients,
    reward_cotangent,
};
use align_core::LogProbReduction;
use align_core::data_parallel::{Gradients, Replicas, policy_and_reference_replicas, shard_ranges};
use align_core::{Condition, CoreError, Job, Metrics};
use align_models::Pipeline;
use align_pref::{
    D3poSide, SpoState, d3po_step_loss, spo_candidates, spo_resample, spo_select, spo_step_loss,
};
use align_rewards::Reward;
use align_rl::{
    Iteration, Parallel, RlError, run_iteration, run_iteration_parallel, step_reward_gains,
    trajectory_dense_rewards,
};
use align_samplers::{
    CpsSampler, FlowGrid, FlowSdeSampler, RolloutBatch, RolloutConfig, Sampler, Transition,
    guided_predict, rollout,
};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::config::{AlgorithmName, RolloutSampler, TrainConfig};
use crate::error::{Result, TrainError};
use crate::evaluator::Evaluator;
use crate::observer::SharedObserver;
use crate::online::{
    Algorithm, backprop_err, build_algorithm, draft_metrics, iteration_metrics, mean_std,
    open_runner, rl_err,
};
use crate::report::{Report, read_last_metrics};
use crate::scores::{checked_differentiable, checked_scores};

/// Salt of the per-iteration prompt draw of Stable Diffusion and user pipelines.
pub const PIPELINE_PROMPT_SALT: u64 = 0x7364_7072_6f6d_7074;

/// What an online run trains: the pipeline, its prompts, its reward and its sampler.
pub struct OnlineTask<P: Pipeline> {
    /// The base pipeline on the autodiff device (the job adds the LoRA adapters).
    pub pipeline: P,
    /// The training prompts; each iteration draws `prompts_per_iteration` of them (with
    /// replacement), each `group_size` times.
    pub prompts: Vec<String>,
    /// The reward optimised (for reward backprop it must be differentiable).
    pub reward: Box<dyn Reward>,
    /// A second score logged beside a reward-backprop update as `gold_partial_credit`
    /// (the Shapes runs log ShapeEval's partial credit while optimising the proxy).
    pub gold: Option<Box<dyn Reward>>,
    /// The rollout sampler (stochastic: DDIM with η > 0, the flow SDE).
    pub sampler: Box<dyn Sampler + Send + Sync>,
    /// The shape `[C, h, w]` of one sample.
    pub sample_shape: [usize; 3],
    /// Names of the layers the adapters attach to (`None` = [`align_models::LoraConfig`]'s default targets:
    /// the attention and MLP projections `query`, `key`, `value`, `output`, `context_proj`,
    /// `ff_*`, `mlp_*`).
    pub lora_targets: Option<Vec<String>>,
    /// Mixed into the seed of the prompt draw ([`PIPELINE_PROMPT_SALT`] unless a family keeps
    /// its own sequence).
    pub prompt_salt: u64,
    /// The flow time grid of the rollouts, for the samplers the job rebuilds per iteration
    /// (Flow-GRPO-Fast's drawn SDE window, DenseGRPO's calibrated noise): `None` = `train_steps`
    /// even steps without shift (the Shapes models); SD3 passes its shifted sigmas.
    pub flow_grid: Option<FlowGrid>,
}

impl<P: Pipeline> OnlineTask<P> {
    /// A task with no gold score, the default LoRA targets and the default prompt salt.
    pub fn new(
        pipeline: P,
        prompts: Vec<String>,
        reward: Box<dyn Reward>,
        sampler: Box<dyn Sampler + Send + Sync>,
        sample_shape: [usize; 3],
    ) -> Self {
        Self {
            pipeline,
            prompts,
            reward,
            gold: None,
            sampler,
            sample_shape,
            lora_targets: None,
            prompt_salt: PIPELINE_PROMPT_SALT,
            flow_grid: None,
        }
    }
}

/// The online job as the runner drives it.
pub struct OnlineJob<P: Pipeline> {
    algorithm: Algorithm,
    sampler: Box<dyn Sampler + Send + Sync>,
    reference: P,
    prompts: Vec<String>,
    prompt_salt: u64,
    flow_grid: Option<FlowGrid>,
    reward: Box<dyn Reward>,
    gold: Option<Box<dyn Reward>>,
    config: TrainConfig,
    shape: [usize; 3],
    observer: SharedObserver,
    evaluator: Box<dyn Evaluator<P>>,
    /// The training devices of a data-parallel run (`devices`, ≥ 2; empty otherwise).
    devices: Vec<Device>,
    /// The policy's and the reference's replicas, one per device (built at the first
    /// iteration from the runner's model, whose parameter ids they share).
    replicas: Option<(Replicas<P>, Replicas<P>)>,
    /// DiffusionNFT's old (rollout) policy, built from the model at the first iteration.
    nft_old: Option<P>,
    /// The old policy's trainable values from a checkpoint, applied at the next iteration.
    nft_restored: Option<Vec<Vec<f32>>>,
    /// The ids of the policy's trainable parameters (the old policy's values are read by them
    /// for a checkpoint).
    nft_ids: Vec<burn::module::ParamId>,
    /// DiffusionNFT's optimizer steps so far (the old policy's decay schedule reads it).
    nft_steps: u64,
    /// LoRA-scale annealing: the scale the adapters were last rescaled to (1 before the first).
    anneal_applied: f64,
}

/// Conditions (and unconditional conditions) of prompt-table entries `ids`.
fn conditions<P: Pipeline>(
    table: &[String],
    m: &P,
    ids: &[usize],
) -> Result<(Condition, Option<Condition>), String> {
    let rows: Vec<String> = ids.iter().map(|&i| table[i].clone()).collect();
    let (c, u) = m.prompt_conditions(&rows).map_err(|e| e.to_string())?;
    Ok((c, Some(u)))
}

/// A flow sampler for one iteration: the SDE or CPS (`rollout_sampler`) on the training grid,
/// with the iteration's window ([`TrainConfig::iteration_window`]) and DenseGRPO's calibrated
/// per-step noise scales (SDE only).
fn flow_iteration_sampler(
    config: &TrainConfig,
    grid: Option<&FlowGrid>,
    iteration: usize,
    scales: Option<Vec<f64>>,
) -> std::result::Result<Box<dyn Sampler + Send + Sync>, align_samplers::SamplerError> {
    let grid = match grid {
        Some(g) => g.clone(),
        None => FlowGrid::new(config.train_steps, 1.0)?,
    };
    let window = config.iteration_window(iteration).map(|(a, b)| a..b);
    Ok(match config.rollout_sampler {
        RolloutSampler::Cps => {
            Box::new(CpsSampler::new(grid, config.noise_level)?.with_window(window)?)
        }
        _ => Box::new(
            flow_sde(config, grid)?
                .with_window(window)?
                .with_noise_scales(scales)?,
        ),
    })
}

/// The flow SDE of `rollout_sampler` on `grid`: DanceGRPO's constant σ for `"dance-sde"`,
/// Flow-GRPO's schedule otherwise.
fn flow_sde(
    config: &TrainConfig,
    grid: FlowGrid,
) -> std::result::Result<FlowSdeSampler, align_samplers::SamplerError> {
    let sde = FlowSdeSampler::new(grid, config.noise_level)?;
    Ok(if config.rollout_sampler == RolloutSampler::DanceSde {
        sde.with_constant_sigma()
    } else {
        sde
    })
}

impl<P: Pipeline> OnlineJob<P> {
    /// The prompts of iteration `it`: `prompts_per_iteration` draws, each `group_size` times.
    fn batch_prompts(&self, it: usize) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ self.prompt_salt);
        rng.set_stream(it as u64);
        let mut ids = Vec::new();
        for _ in 0..self.config.prompts_per_iteration {
            let p = (rng.next_u64() % self.prompts.len() as u64) as usize;
            ids.extend(std::iter::repeat_n(p, self.config.group_size));
        }
        ids
    }

    /// DRaFT / AlignProp: the reward's gradient at the decoded final sample, chained back
    /// through the last K sampler steps (K from the truncation, drawn per iteration for
    /// AlignProp), with the optional pull toward the adapters-off reference.
    #[allow(clippy::too_many_arguments)]
    fn backprop_iteration(
        &mut self,
        model: P,
        iteration: usize,
        ids: &[usize],
        prompts: &[String],
        traj: &align_core::Trajectory,
        images: &Tensor<4>,
        apply: &mut dyn FnMut(P, GradientsParams) -> align_core::Result<P>,
    ) -> align_core::Result<(P, Metrics)> {
        let Algorithm::Backprop(section) = &self.algorithm else {
            return Err(CoreError::Job("not a reward-backprop run".into()));
        };
        let section = section.clone();
        let job = |e: String| CoreError::Job(e);
        let gold = match &self.gold {
            Some(g) => Some(checked_scores(g.as_ref(), images, prompts, iteration)?),
            None => None,
        };
        if matches!(
            self.config.algorithm,
            AlgorithmName::Refl
                | AlgorithmName::DraftLv
                | AlgorithmName::Adjoint
                | AlgorithmName::AdjointMatching
        ) {
            return self.one_step_backprop_iteration(
                model,
                iteration,
                ids,
                prompts,
                traj,
                gold,
                section.reward_scale,
                apply,
            );
        }
        let (values, cotangent) = {
            let reward = &self.reward;
            let score = |x: Tensor<4>| {
                checked_differentiable(reward.as_ref(), model.sample_images(x), prompts, iteration)
            };
            reward_cotangent(traj.final_sample(), section.reward_scale, &score)
                .map_err(|e| job(e.to_string()))?
        };
        let table = &self.prompts;
        let encode = |m: &P| conditions(table, m, ids);
        let (model, stats) = draft_update(DraftUpdate {
            model,
            reference: &self.reference,
            sampler: self.sampler.as_ref(),
            trajectory: traj,
            config: &section,
            seed: self.config.seed,
            iteration,
            cotangent,
            encode: &encode,
            apply,
        })
        .map_err(backprop_err)?;
        let mut m = draft_metrics(&values, &stats);
        m.insert("samples".into(), ((iteration + 1) * ids.len()) as f64);
        self.log_backprop(&mut m, gold);
        Ok((model, m))
    }

    /// DRaFT / AlignProp over several devices: the reward's cotangent of the whole batch on
    /// the home device, then each device chains its shard's rows back through the last K steps
    /// on its replica (plus its share of the reference pull); one `step_multi` step.
    #[allow(clippy::too_many_arguments)]
    fn parallel_draft_iteration(
        &mut self,
        model: P,
        iteration: usize,
        ids: &[usize],
        prompts: &[String],
        traj: &align_core::Trajectory,
        images: &Tensor<4>,
        shards: &[std::ops::Range<usize>],
        apply: &mut dyn FnMut(P, Gradients) -> align_core::Result<P>,
    ) -> align_core::Result<(P, Metrics)> {
        let job = |e: String| CoreError::Job(e);
        let Algorithm::Backprop(section) = &self.algorithm else {
            return Err(job("not a reward-backprop run".into()));
        };
        let section = section.clone();
        let gold = match &self.gold {
            Some(g) => Some(checked_scores(g.as_ref(), images, prompts, iteration)?),
            None => None,
        };
        let (values, cotangent) = {
            let reward = &self.reward;
            let score = |x: Tensor<4>| {
                checked_differentiable(reward.as_ref(), model.sample_images(x), prompts, iteration)
            };
            reward_cotangent(traj.final_sample(), section.reward_scale, &score)
                .map_err(|e| job(e.to_string()))?
        };
        let Some((policies, references)) = self.replicas.take() else {
            return Err(job("no replicas".into()));
        };
        let table = &self.prompts;
        let encoders: Vec<Box<align_backprop::Encode<'_, P>>> = shards
            .iter()
            .map(|r| {
                let ids = &ids[r.clone()];
                Box::new(move |m: &P| conditions(table, m, ids))
                    as Box<align_backprop::Encode<'_, P>>
            })
            .collect();
        let b = ids.len() as f64;
        let mut parts = Vec::new();
        for (d, range) in shards.iter().enumerate() {
            if range.is_empty() {
                continue;
            }
            let device = policies.devices()[d].clone();
            let idx: Vec<usize> = range.clone().collect();
            parts.push(align_backprop::DraftShard {
                policy: &policies.models()[d],
                reference: &references.models()[d],
                trajectory: traj
                    .select(&idx)
                    .map_err(|e| job(e.to_string()))?
                    .to_device(&device),
                cotangent: cotangent
                    .clone()
                    .narrow(0, range.start, range.len())
                    .to_device(&device),
                encode: encoders[d].as_ref(),
                share: range.len() as f64 / b,
            });
        }
        let computed = align_backprop::draft_shard_gradients(
            &section,
            self.sampler.as_ref(),
            self.config.seed,
            iteration,
            parts,
        );
        drop(encoders);
        let mut policies = policies;
        let stepped = computed.map_err(backprop_err).and_then(|(grads, stats)| {
            let model = if stats.differentiated_steps > 0 {
                apply(model, Gradients::PerDevice(grads))?
            } else {
                model
            };
            policies.sync(&model)?;
            Ok((model, stats))
        });
        self.replicas = Some((policies, references));
        let (model, stats) = stepped?;
        let mut m = draft_metrics(&values, &stats);
        m.insert("samples".into(), ((iteration + 1) * ids.len()) as f64);
        self.log_backprop(&mut m, gold);
        Ok((model, m))
    }

    /// The progress line (and gold partial credit) of a reward-backprop iteration.
    fn log_backprop(&self, m: &mut Metrics, gold: Option<Vec<f64>>) {
        match gold {
            Some(gold) => {
                m.insert(
                    "gold_partial_credit".into(),
                    gold.iter().sum::<f64>() / gold.len() as f64,
                );
                self.observer.iteration(&format!(
                    "proxy {:.3}  gold {:.3}  K {}",
                    m["reward_mean"], m["gold_partial_credit"], m["differentiated_steps"]
                ));
            }
            None => self.observer.iteration(&format!(
                "reward {:.3}  K {}",
                m["reward_mean"], m["differentiated_steps"]
            )),
        }
    }

    /// ReFL, DRaFT-LV, the continuous adjoint and Adjoint Matching: one gradient from the
    /// rollout's stored state, applied as one optimizer step. ReFL: `x̂₀` at a random late step
    /// `k` ([`late_step`], keyed by the run seed and the iteration); DRaFT-LV: the last step
    /// from `copies` re-noisings of the final sample; adjoint: the reward's gradient at the
    /// final sample carried back through the whole ODE by the continuous adjoint; Adjoint
    /// Matching: the regression of the control onto the lean adjoint (base = adapters off).
    #[allow(clippy::too_many_arguments)]
    fn one_step_backprop_iteration(
        &mut self,
        model: P,
        iteration: usize,
        ids: &[usize],
        prompts: &[String],
        traj: &align_core::Trajectory,
        gold: Option<Vec<f64>>,
        reward_scale: f64,
        apply: &mut dyn FnMut(P, GradientsParams) -> align_core::Result<P>,
    ) -> align_core::Result<(P, Metrics)> {
        let table = &self.prompts;
        let encode = |m: &P| conditions(table, m, ids);
        let mut extra: Vec<(&str, f64)> = Vec::new();
        let (grads, values, step, differentiated) = {
            let reward = &self.reward;
            let score = |x: Tensor<4>| -> std::result::Result<Tensor<1>, String> {
                checked_differentiable(reward.as_ref(), model.sample_images(x), prompts, iteration)
            };
            match self.config.algorithm {
                AlgorithmName::Refl => {
                    let r = &self.config.refl;
                    let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ REFL_STEP_SALT);
                    rng.set_stream(iteration as u64);
                    let k = late_step(traj.num_steps(), r.stop_min, r.stop_max, &mut rng)
                        .map_err(backprop_err)?;
                    let (g, v) = refl_gradients(
                        &model,
                        self.sampler.as_ref(),
                        traj,
                        k,
                        &encode,
                        &score,
                        r.loss,
                        reward_scale,
                    )
                    .map_err(backprop_err)?;
                    (g, v, k, 1)
                }
                AlgorithmName::Adjoint => {
                    let (v, cotangent) =
                        reward_cotangent(traj.final_sample(), reward_scale, &score)
                            .map_err(backprop_err)?;
                    let (g, _) = continuous_adjoint(AdjointInputs {
                        policy: &model,
                        times: &traj.times,
                        sample: traj.final_sample().clone(),
                        cotangent,
                        encode: &encode,
                        guidance_scale: self.config.guidance,
                    })
                    .map_err(backprop_err)?;
                    (g, v, 0, traj.num_steps())
                }
                AlgorithmName::AdjointMatching => {
                    // ∂(−mean r)/∂x = −∇r / B: the per-sample reward gradient is −B × that.
                    let (v, cotangent) =
                        reward_cotangent(traj.final_sample(), 1.0, &score).map_err(backprop_err)?;
                    let b = traj.batch_size() as f64;
                    let (g, loss) = adjoint_matching_gradients(AdjointMatchingInputs {
                        policy: &model,
                        base: &self.reference,
                        sampler: self.sampler.as_ref(),
                        trajectory: traj,
                        encode: &encode,
                        reward_gradient: cotangent.mul_scalar(-b),
                        lambda: self.config.adjoint_matching.lambda,
                    })
                    .map_err(backprop_err)?;
                    extra.push(("adjoint_matching_loss", loss));
                    (g, v, 0, traj.num_steps())
                }
                _ => {
                    let (g, v) = draft_lv_gradients(
                        &model,
                        self.sampler.as_ref(),
                        traj,
                        &encode,
                        &score,
                        self.config.draft_lv.copies,
                        self.config.seed,
                        reward_scale,
                    )
                    .map_err(backprop_err)?;
                    (g, v, traj.num_steps().saturating_sub(1), 1)
                }
            }
        };
        let model = apply(model, grads)?;
        let stats = align_backprop::DraftStats {
            differentiated_steps: differentiated,
            reference_penalty: 0.0,
        };
        let mut m = draft_metrics(&values, &stats);
        // The first differentiated step.
        m.insert("differentiated_step".into(), step as f64);
        for (k, v) in extra {
            m.insert(k.into(), v);
        }
        m.insert("samples".into(), ((iteration + 1) * ids.len()) as f64);
        self.log_backprop(&mut m, gold);
        Ok((model, m))
    }
}

impl<P: Pipeline> OnlineJob<P> {
    /// D3PO on the iteration's rollouts: each prompt's two samples form a pair, the one the
    /// reward scores higher is preferred (ties are left out), and the DPO loss of every
    /// trained step's per-step log-ratios (policy vs the adapters-off reference, exact
    /// transition log-probs) is averaged over the steps into one optimizer step. One step's
    /// graph at a time.
    #[allow(clippy::too_many_arguments)]
    fn d3po_iteration(
        &mut self,
        model: P,
        iteration: usize,
        ids: &[usize],
        traj: &align_core::Trajectory,
        rewards: &[f64],
        steps: &[usize],
        beta: f64,
        apply: &mut dyn FnMut(P, GradientsParams) -> align_core::Result<P>,
    ) -> align_core::Result<(P, Metrics)> {
        let job = |e: String| CoreError::Job(e);
        let (mut winners, mut losers) = (Vec::new(), Vec::new());
        for pair in 0..ids.len() / 2 {
            let (a, b) = (2 * pair, 2 * pair + 1);
            if rewards[a] > rewards[b] {
                winners.push(a);
                losers.push(b);
            } else if rewards[b] > rewards[a] {
                winners.push(b);
                losers.push(a);
            }
        }
        let (mean, std) = mean_std(rewards);
        let mut m = Metrics::new();
        m.insert("reward_mean".into(), mean);
        m.insert("reward_std".into(), std);
        m.insert("d3po_pairs".into(), winners.len() as f64);
        m.insert("trained_steps".into(), steps.len() as f64);
        m.insert("samples".into(), ((iteration + 1) * ids.len()) as f64);
        if winners.is_empty() || steps.is_empty() {
            // Every pair tied: nothing to prefer.
            m.insert("loss".into(), 0.0);
            m.insert("optimizer_steps".into(), 0.0);
            self.observer
                .iteration(&format!("reward {mean:.3}  no untied pair"));
            return Ok((model, m));
        }
        let tw = traj.select(&winners)?;
        let tl = traj.select(&losers)?;
        let pair_ids: Vec<usize> = winners.iter().map(|&i| ids[i]).collect();
        let mut acc = GradientsAccumulator::<P>::new();
        let (mut loss_sum, mut inside_sum) = (0.0, 0.0);
        for &k in steps {
            let (c, u) = conditions(&self.prompts, &model, &pair_ids).map_err(job)?;
            let (rc, ru) = conditions(&self.prompts, &self.reference, &pair_ids).map_err(job)?;
            let side = |t| D3poSide {
                trajectory: t,
                condition: &c,
                uncond: u.as_ref(),
                reference_condition: Some((&rc, ru.as_ref())),
            };
            let (loss, inside) = d3po_step_loss(
                &model,
                &self.reference,
                self.sampler.as_ref(),
                side(&tw),
                side(&tl),
                k,
                beta,
            )
            .map_err(|e| job(e.to_string()))?;
            let loss = loss.div_scalar(steps.len() as f64);
            loss_sum += scalar(&loss)?;
            inside_sum += scalar(&inside.mean())? / steps.len() as f64;
            acc.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        let model = apply(model, acc.grads())?;
        m.insert("loss".into(), loss_sum);
        m.insert("d3po_inside_mean".into(), inside_sum);
        m.insert("optimizer_steps".into(), 1.0);
        self.observer.iteration(&format!(
            "reward {mean:.3}  loss {loss_sum:.4}  pairs {}",
            winners.len()
        ));
        Ok((model, m))
    }
}

impl<P: Pipeline> OnlineJob<P> {
    /// G²RPO: for every branch step `k`, a rollout of the frozen policy in which each group
    /// shares its initial noise (so its ODE prefix) and branches with one SDE step at `k`;
    /// each granularity's ODE completion scored; the summed group z-scores as advantages;
    /// then one PPO-clip step on transition `k` per branch step (all rollouts drawn first).
    fn g2rpo_iteration(
        &mut self,
        model: P,
        iteration: usize,
        ids: &[usize],
        config: &align_rl::G2rpoConfig,
        apply: &mut dyn FnMut(P, GradientsParams) -> align_core::Result<P>,
    ) -> align_core::Result<(P, Metrics)> {
        let job = |e: String| CoreError::Job(e);
        let b = ids.len();
        let k_total = self.config.train_steps;
        let frozen = model.clone().no_grad();
        let (cond, uncond) = conditions(&self.prompts, &frozen, ids).map_err(job)?;
        let grid = match &self.flow_grid {
            Some(g) => g.clone(),
            None => FlowGrid::new(k_total, 1.0).map_err(|e| job(e.to_string()))?,
        };
        let prompts: Vec<String> = ids.iter().map(|&i| self.prompts[i].clone()).collect();
        let branches: Vec<usize> = config.branch_range(k_total).collect();
        let n = branches.len();
        let guidance = self.config.guidance;
        let mut rolled = Vec::with_capacity(n);
        let mut first_rewards = Vec::new();
        for &k in &branches {
            let sampler = flow_sde(&self.config, grid.clone())
                .and_then(|s| s.with_window(Some(k..k + 1)))
                .map_err(|e| job(e.to_string()))?;
            let traj = rollout(
                &frozen,
                &sampler,
                &RolloutBatch {
                    condition: &cond,
                    uncond: uncond.as_ref(),
                    // The same ids for every branch step: one shared start (anchor) per group
                    // across the branch steps; each branch's noise is keyed by its own step.
                    sample_ids: (0..b).map(|i| (iteration * b + i) as u64).collect(),
                    condition_ids: ids.to_vec(),
                    group_ids: None,
                    sample_shape: self.shape,
                },
                &RolloutConfig {
                    seed: self.config.seed,
                    guidance_scale: guidance,
                    keep_means: true,
                    group_initial_noise: true,
                    ..RolloutConfig::default()
                },
            )
            .map_err(|e| job(e.to_string()))?;
            let mut per_g = Vec::with_capacity(config.granularities.len());
            for &g in &config.granularities {
                let x = if g == 1 {
                    traj.final_sample().clone()
                } else {
                    let times = align_rl::granular_times(&traj.times, k, g).map_err(rl_err)?;
                    align_rl::ode_complete(
                        &frozen,
                        traj.latents[k + 1].clone(),
                        &times,
                        &cond,
                        uncond.as_ref(),
                        guidance,
                    )
                    .map_err(rl_err)?
                };
                let images = frozen.sample_images(x).clamp(-1.0, 1.0);
                per_g.push(checked_scores(
                    self.reward.as_ref(),
                    &images,
                    &prompts,
                    iteration,
                )?);
            }
            // The logged reward: the full completion's (granularity 1) where scored.
            let shown = config
                .granularities
                .iter()
                .position(|&g| g == 1)
                .unwrap_or(0);
            first_rewards.extend(per_g[shown].iter().copied());
            let adv = align_rl::multi_granularity_advantages(
                &per_g,
                &traj.group_ids,
                config.adv_clip_max,
            )
            .map_err(rl_err)?;
            rolled.push((k, sampler, traj, adv));
        }
        let table = &self.prompts;
        let encode = |m: &P, ids: &[usize]| conditions(table, m, ids);
        let mut model = model;
        let (mut steps_taken, mut clip, mut ratio_dev, mut loss) = (0usize, 0.0, 0.0f64, 0.0);
        for (k, sampler, traj, adv) in &rolled {
            if adv.iter().all(|&a| a == 0.0) {
                continue; // every group tied at every granularity: nothing to learn here
            }
            let (grads, stats) = align_rl::policy_gradients(align_rl::PolicyGradientInputs {
                policy: &model,
                reference: None,
                sampler,
                trajectory: traj,
                advantages: align_rl::Advantages::PerSample(adv),
                steps: &[*k],
                encode: &encode,
                objective: align_rl::Objective::PpoClip {
                    clip_range: config.clip_range,
                },
                kl: None,
                micro_batch: (self.config.train_micro_batch > 0)
                    .then_some(self.config.train_micro_batch),
            })
            .map_err(rl_err)?;
            if steps_taken == 0 {
                // The first branch is re-scored at θ_old: its ratio is exactly 1.
                ratio_dev = stats.max_ratio_deviation;
            }
            clip += stats.clip_fraction;
            loss += stats.loss;
            steps_taken += 1;
            model = apply(model, grads)?;
        }
        let (mean, std) = mean_std(&first_rewards);
        let mut m = Metrics::new();
        m.insert("reward_mean".into(), mean);
        m.insert("reward_std".into(), std);
        m.insert("loss".into(), loss / steps_taken.max(1) as f64);
        m.insert("clip_fraction".into(), clip / steps_taken.max(1) as f64);
        m.insert("max_ratio_deviation".into(), ratio_dev);
        m.insert("optimizer_steps".into(), steps_taken as f64);
        m.insert("trained_steps".into(), n as f64);
        m.insert("samples".into(), ((iteration + 1) * n * b) as f64);
        self.observer.iteration(&format!(
            "reward {mean:.3}  {steps_taken} of {n} branch steps trained"
        ));
        Ok((model, m))
    }
}

impl<P: Pipeline> OnlineJob<P> {
    /// On-policy distillation: the student's rollout (the policy's, already drawn), split into
    /// `minibatches`, each an optimizer step on `Σ_k mean KL(student ‖ teacher)` with the
    /// reference (adapters off: the base) as the teacher.
    #[allow(clippy::too_many_arguments)]
    fn opd_iteration(
        &mut self,
        model: P,
        iteration: usize,
        traj: &align_core::Trajectory,
        rewards: &[f64],
        steps: &[usize],
        config: &align_rl::OpdConfig,
        apply: &mut dyn FnMut(P, GradientsParams) -> align_core::Result<P>,
    ) -> align_core::Result<(P, Metrics)> {
        let b = traj.batch_size();
        let table = &self.prompts;
        let encode = |m: &P, ids: &[usize]| conditions(table, m, ids);
        let mut model = model;
        let (mut kl_sum, mut parts) = (0.0, 0usize);
        let m = config.minibatches.clamp(1, b);
        for part in 0..m {
            // Exactly `minibatches` near-equal parts.
            let chunk: Vec<usize> = (part * b / m..(part + 1) * b / m).collect();
            let sub = traj.select(&chunk)?;
            let (grads, stats) = align_rl::opd_gradients(
                &model,
                &self.reference,
                self.sampler.as_ref(),
                &sub,
                steps,
                &encode,
                config.substeps,
            )
            .map_err(rl_err)?;
            kl_sum += stats.kl_sum;
            parts += 1;
            model = apply(model, grads)?;
        }
        let kl_sum = kl_sum / parts.max(1) as f64;
        let (mean, std) = mean_std(rewards);
        let mut m = Metrics::new();
        m.insert("reward_mean".into(), mean);
        m.insert("reward_std".into(), std);
        m.insert("opd_kl_sum".into(), kl_sum);
        // The student's mean per-step KL to its teacher (the reference) before the update.
        m.insert("kl".into(), kl_sum / steps.len().max(1) as f64);
        m.insert("loss".into(), kl_sum);
        m.insert("optimizer_steps".into(), parts as f64);
        m.insert("trained_steps".into(), steps.len() as f64);
        m.insert("samples".into(), ((iteration + 1) * b) as f64);
        self.observer.iteration(&format!(
            "reward {mean:.3}  Σ KL(student ‖ teacher) {kl_sum:.4}"
        ));
        Ok((model, m))
    }
}

impl<P: Pipeline> OnlineJob<P> {
    /// DiffusionNFT: the rollout (by the old policy) and its rewards turned into optimality
    /// probabilities, the forward-process loss's optimizer steps, then the old policy moved
    /// toward the trained one by the decay schedule.
    fn nft_iteration(
        &mut self,
        model: P,
        iteration: usize,
        traj: &align_core::Trajectory,
        rewards: &[f64],
        config: &align_rl::DiffusionNftConfig,
        apply: &mut dyn FnMut(P, GradientsParams) -> align_core::Result<P>,
    ) -> align_core::Result<(P, Metrics)> {
        let old = self
            .nft_old
            .take()
            .ok_or_else(|| CoreError::Job("DiffusionNFT has no old policy".into()))?;
        let table = &self.prompts;
        let encode = |m: &P, ids: &[usize]| conditions(table, m, ids);
        let mut apply_rl = |m, g: GradientsParams| apply(m, g).map_err(RlError::Core);
        let (model, stats) = align_rl::run_nft_iteration(
            config,
            model,
            align_rl::NftIteration {
                old: &old,
                reference: Some(&self.reference),
                trajectory: traj,
                rewards,
                encode: &encode,
                guidance: self.config.guidance,
                seed: self.config.seed.wrapping_add(iteration as u64),
                micro_batch: (self.config.train_micro_batch > 0)
                    .then_some(self.config.train_micro_batch),
            },
            &mut apply_rl,
        )
        .map_err(rl_err)?;
        self.nft_steps += stats.optimizer_steps as u64;
        let decay = config.old_decay.decay(self.nft_steps);
        let old = align_rl::update_old_policy(old, &model, decay).map_err(rl_err)?;
        if self.nft_ids.is_empty() {
            self.nft_ids = align_rl::trainable_ids(&model);
        }
        self.nft_old = Some(old);
        let (mean, std) = mean_std(rewards);
        let mut m = Metrics::new();
        m.insert("reward_mean".into(), mean);
        m.insert("reward_std".into(), std);
        m.insert("loss".into(), stats.loss);
        m.insert("nft_positive".into(), stats.positive);
        m.insert("nft_negative".into(), stats.negative);
        m.insert("nft_reference_mse".into(), stats.reference_mse);
        m.insert("nft_probability_mean".into(), stats.probability_mean);
        m.insert("nft_old_decay".into(), decay);
        m.insert("optimizer_steps".into(), stats.optimizer_steps as f64);
        m.insert("trained_steps".into(), stats.timesteps as f64);
        m.insert(
            "samples".into(),
            ((iteration + 1) * traj.batch_size()) as f64,
        );
        self.observer.iteration(&format!(
            "reward {mean:.3}  loss {:.4}  ref mse {:.2e}",
            stats.loss, stats.reference_mse
        ));
        Ok((model, m))
    }
}

impl<P: Pipeline> OnlineJob<P> {
    /// SPO: one chain per sample from its keyed initial noise. At every stochastic step the
    /// frozen policy draws `pool` candidates from the shared state, each is scored by the
    /// reward of its clean-sample prediction (the final sample itself at the last step), the
    /// best and the worst form the pair and the DPO loss of the transition is back-propagated
    /// (a sample whose candidates all tie takes its pair as (c, c): zero gradient, and the
    /// loss is rescaled to the mean over untied samples); a random candidate continues. The
    /// step losses are averaged into one optimizer step.
    #[allow(clippy::too_many_arguments)]
    fn spo_iteration(
        &mut self,
        model: P,
        iteration: usize,
        ids: &[usize],
        beta: f64,
        pool: usize,
        apply: &mut dyn FnMut(P, GradientsParams) -> align_core::Result<P>,
    ) -> align_core::Result<(P, Metrics)> {
        let job = |e: String| CoreError::Job(e);
        let b = ids.len();
        let frozen = model.clone().no_grad();
        let (cond, uncond) = conditions(&self.prompts, &frozen, ids).map_err(job)?;
        let prompts: Vec<String> = ids.iter().map(|&i| self.prompts[i].clone()).collect();
        let sample_ids: Vec<u64> = (0..b as u64).map(|i| (iteration * b) as u64 + i).collect();
        let seed = self.config.seed;
        let device = cond.context.device();
        let keys: Vec<align_core::NoiseKey> = sample_ids
            .iter()
            .map(|&s| align_core::NoiseKey::initial(seed, s))
            .collect();
        let mut x = align_core::noise_tensor(&keys, self.shape, &device)?;
        let sampler = self.sampler.as_ref();
        let g = self.config.guidance;
        let t_of = |k: usize| {
            Tensor::<1>::from_data(
                burn::tensor::TensorData::new(vec![sampler.model_time(k) as f32; b], [b]),
                &device,
            )
        };
        let param = frozen.parameterization();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ SPO_RESAMPLE_SALT);
        rng.set_stream(iteration as u64);
        let mut acc = GradientsAccumulator::<P>::new();
        let steps: Vec<usize> = (0..sampler.num_steps())
            .filter(|&k| sampler.step_std(k) > 0.0)
            .collect();
        let (mut loss_sum, mut untied_sum, mut loss_steps) = (0.0, 0.0, 0usize);
        let rl = |e: align_pref::PrefError| job(e.to_string());
        for k in 0..sampler.num_steps() {
            if sampler.step_std(k) <= 0.0 {
                let out = guided_predict(&frozen, x.clone(), t_of(k), &cond, uncond.as_ref(), g)
                    .map_err(|e| job(e.to_string()))?;
                x = sampler
                    .step(k, x, out, param, Transition::Mean, LogProbReduction::Mean)
                    .map_err(|e| job(e.to_string()))?
                    .prev_sample
                    .detach();
                continue;
            }
            let state = SpoState {
                k,
                x: x.clone(),
                condition: &cond,
                uncond: uncond.as_ref(),
                guidance_scale: g,
            };
            let candidates =
                spo_candidates(&frozen, sampler, &state, &sample_ids, seed, pool).map_err(rl)?;
            let mut scores = Vec::with_capacity(pool);
            for c in &candidates {
                let clean = if k + 1 < sampler.num_steps() {
                    let out =
                        guided_predict(&frozen, c.clone(), t_of(k + 1), &cond, uncond.as_ref(), g)
                            .map_err(|e| job(e.to_string()))?;
                    sampler
                        .step(
                            k + 1,
                            c.clone(),
                            out,
                            param,
                            Transition::Mean,
                            LogProbReduction::Mean,
                        )
                        .map_err(|e| job(e.to_string()))?
                        .pred_x0
                } else {
                    c.clone()
                };
                let images = frozen.sample_images(clean.detach()).clamp(-1.0, 1.0);
                scores.push(checked_scores(
                    self.reward.as_ref(),
                    &images,
                    &prompts,
                    iteration,
                )?);
            }
            let pairs = spo_select(&scores).map_err(rl)?;
            let untied = pairs.iter().filter(|p| p.is_some()).count();
            untied_sum += untied as f64 / b as f64;
            if untied > 0 {
                let pick = |which: fn((usize, usize)) -> usize| -> Tensor<4> {
                    let rows: Vec<Tensor<4>> = pairs
                        .iter()
                        .enumerate()
                        .map(|(j, p)| {
                            let i = p.map(which).unwrap_or(0);
                            candidates[i].clone().narrow(0, j, 1)
                        })
                        .collect();
                    Tensor::cat(rows, 0)
                };
                let (winner, loser) = (pick(|p| p.0), pick(|p| p.1));
                let (pc, pu) = conditions(&self.prompts, &model, ids).map_err(job)?;
                let (rc, ru) = conditions(&self.prompts, &self.reference, ids).map_err(job)?;
                let policy_state = SpoState {
                    k,
                    x: x.clone(),
                    condition: &pc,
                    uncond: pu.as_ref(),
                    guidance_scale: g,
                };
                let (loss, inside) = spo_step_loss(
                    &model,
                    &self.reference,
                    sampler,
                    &policy_state,
                    Some((&rc, ru.as_ref())),
                    winner,
                    loser,
                    beta,
                )
                .map_err(rl)?;
                // Tied samples add ln 2 and no gradient: the mean over the untied ones.
                let loss = loss.mul_scalar(b as f64 / (untied as f64 * steps.len() as f64));
                let inside: Vec<f32> = inside
                    .detach()
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| job(format!("reading SPO's inside: {e:?}")))?;
                // −log σ(z) = ln(1 + e^{−z}) over the untied samples.
                loss_sum += pairs
                    .iter()
                    .zip(&inside)
                    .filter(|(p, _)| p.is_some())
                    .map(|(_, &z)| (-f64::from(z)).exp().ln_1p())
                    .sum::<f64>()
                    / untied as f64;
                loss_steps += 1;
                acc.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            }
            x = spo_resample(&candidates, &mut rng).map_err(rl)?;
        }
        let images = frozen.sample_images(x).clamp(-1.0, 1.0);
        let rewards = checked_scores(self.reward.as_ref(), &images, &prompts, iteration)?;
        let (mean, std) = mean_std(&rewards);
        let grads = acc.grads();
        let stepped = !grads.is_empty();
        let model = if stepped { apply(model, grads)? } else { model };
        let mut m = Metrics::new();
        m.insert("reward_mean".into(), mean);
        m.insert("reward_std".into(), std);
        // The mean over the steps with an untied pair of the untied samples' mean loss.
        let loss = loss_sum / loss_steps.max(1) as f64;
        m.insert("loss".into(), loss);
        m.insert(
            "spo_untied_fraction".into(),
            untied_sum / steps.len().max(1) as f64,
        );
        m.insert("trained_steps".into(), steps.len() as f64);
        m.insert("optimizer_steps".into(), if stepped { 1.0 } else { 0.0 });
        m.insert("samples".into(), ((iteration + 1) * b) as f64);
        self.observer
            .iteration(&format!("reward {mean:.3}  loss {loss:.4}"));
        Ok((model, m))
    }
}

/// Salt of SPO's per-iteration resampling.
const SPO_RESAMPLE_SALT: u64 = 0x7370_6f72_6573_6d70;

/// The value of a one-element tensor.
fn scalar(t: &Tensor<1>) -> align_core::Result<f64> {
    let v = t
        .clone()
        .detach()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| CoreError::Job(format!("reading a loss: {e:?}")))?;
    v.first()
        .map(|&x| f64::from(x))
        .ok_or_else(|| CoreError::Job("an empty loss tensor".into()))
}

/// Salt of ReFL's per-iteration draw of the late step.
const REFL_STEP_SALT: u64 = 0x7265_666c_7374_6570;

impl<P: Pipeline> Job<P> for OnlineJob<P> {
    fn iteration(
        &mut self,
        model: P,
        iteration: usize,
        apply_any: &mut dyn FnMut(P, Gradients) -> align_core::Result<P>,
    ) -> align_core::Result<(P, Metrics)> {
        // LoRA-scale annealing: the adapters rescaled from the scale applied so far (kept in
        // the checkpoint state) to this iteration's.
        let anneal = self
            .config
            .lora_anneal
            .map(|a| a.scale(iteration, self.config.runner.iterations));
        let model = match anneal {
            Some(scale) => align_models::rescale_lora(model, scale / self.anneal_applied),
            None => model,
        };
        let (model, mut metrics) = self.iteration_inner(model, iteration, apply_any)?;
        if let Some(scale) = anneal {
            self.anneal_applied = scale;
            metrics.insert("lora_scale".into(), scale);
        }
        Ok((model, metrics))
    }

    fn state(&self) -> align_core::Result<serde_json::Value> {
        OnlineJob::job_state(self)
    }

    fn restore(&mut self, state: &serde_json::Value) -> align_core::Result<()> {
        OnlineJob::job_restore(self, state)
    }

    fn notice(&mut self, message: &str) {
        self.observer.say(message);
    }

    fn after_iteration(
        &mut self,
        model: &P,
        _average: Option<&P>,
        iteration: usize,
        metrics: &mut Metrics,
    ) -> align_core::Result<align_core::Control> {
        self.evaluator
            .periodic(model, iteration, metrics, &self.observer)
            .map_err(TrainError::into_core)
    }
}

impl<P: Pipeline> OnlineJob<P> {
    /// One iteration of the job (after the LoRA-scale annealing's rescale).
    fn iteration_inner(
        &mut self,
        model: P,
        iteration: usize,
        apply_any: &mut dyn FnMut(P, Gradients) -> align_core::Result<P>,
    ) -> align_core::Result<(P, Metrics)> {
        let job = |e: String| CoreError::Job(e);
        let ids = self.batch_prompts(iteration);
        let b = ids.len();
        // DenseGRPO's calibrated per-step noise and Flow-GRPO-Fast's drawn window: this
        // iteration's (flow) sampler.
        let scales = match &self.algorithm {
            Algorithm::Online(a) => a.noise_scales(),
            _ => None,
        };
        if scales.is_some() || self.config.sde_window_size > 0 || self.config.mix_grpo.is_some() {
            self.sampler =
                flow_iteration_sampler(&self.config, self.flow_grid.as_ref(), iteration, scales)
                    .map_err(|e| job(e.to_string()))?;
        }
        if let Algorithm::G2rpo(config) = &self.algorithm {
            let config = config.clone();
            return self.g2rpo_iteration(model, iteration, &ids, &config, &mut |m, g| {
                apply_any(m, g.into())
            });
        }
        if let Algorithm::Spo(beta, pool) = self.algorithm {
            return self.spo_iteration(model, iteration, &ids, beta, pool, &mut |m, g| {
                apply_any(m, g.into())
            });
        }
        // DiffusionNFT rolls out with its old policy (from the checkpoint's values on resume,
        // else the model itself at the first iteration).
        if matches!(self.algorithm, Algorithm::Nft(_)) && self.nft_old.is_none() {
            self.nft_old = Some(match self.nft_restored.take() {
                Some(values) => align_rl::restore_old_policy(&model, &values).map_err(rl_err)?,
                None => model.clone().no_grad(),
            });
        }
        // Roll out on the training device without a graph: the update re-scores with the same
        // kernels, so the PPO ratio at θ_old is exactly 1.
        let frozen = match &self.nft_old {
            Some(old) => old.clone(),
            None => model.clone().no_grad(),
        };
        let (cond, uncond) = conditions(&self.prompts, &frozen, &ids).map_err(job)?;
        // Data parallelism: replicas in step with the model, and the batch's shards.
        if self.devices.len() > 1 {
            policy_and_reference_replicas(
                &mut self.replicas,
                &model,
                &self.reference,
                &self.devices,
            )?;
        }
        let shards = match &self.replicas {
            Some((r, _)) => shard_ranges(b, r.len()),
            None => shard_ranges(b, 1),
        };
        let home = cond.context.device();
        // `rollout_batch`: consecutive chunks of the batch, each rolled out and decoded on its
        // own (noise is keyed by global sample id: the trajectories do not change). Each shard
        // is rolled out by its device's replica, and its samples gathered on the home device.
        let chunk = match self.config.rollout_batch {
            0 => b,
            n => n.min(b),
        };
        // One device's shard: its chunks rolled out and decoded by `roller`.
        let (prompts_table, sampler, shape) = (&self.prompts, self.sampler.as_ref(), self.shape);
        let rollout_config = RolloutConfig {
            seed: self.config.seed,
            guidance_scale: self.config.guidance,
            keep_means: true,
            keep_pred_x0: matches!(self.algorithm, Algorithm::Sdpo(_)),
            ..RolloutConfig::default()
        };
        let (ids_ref, cond_ref, uncond_ref) = (&ids, &cond, &uncond);
        let roll = |roller: P, shard: std::ops::Range<usize>| {
            let mut out = Vec::new();
            for start in shard.clone().step_by(chunk.max(1)) {
                let range = start..(start + chunk).min(shard.end);
                let (cond, uncond) = if range.len() == b {
                    (cond_ref.clone(), uncond_ref.clone())
                } else {
                    conditions(prompts_table, &roller, &ids_ref[range.clone()])?
                };
                let part = rollout(
                    &roller,
                    sampler,
                    &RolloutBatch {
                        condition: &cond,
                        uncond: uncond.as_ref(),
                        sample_ids: range.clone().map(|i| (iteration * b + i) as u64).collect(),
                        condition_ids: ids_ref[range].to_vec(),
                        group_ids: None,
                        sample_shape: shape,
                    },
                    &rollout_config,
                )
                .map_err(|e| e.to_string())?;
                let images = roller
                    .sample_images(part.final_sample().clone())
                    .clamp(-1.0, 1.0);
                out.push((part, images));
            }
            Ok::<_, String>(out)
        };
        let rolled: Vec<Vec<(align_core::Trajectory, Tensor<4>)>> = match &self.replicas {
            None => vec![roll(frozen.clone(), 0..b).map_err(job)?],
            // Data parallelism: each shard rolled out by its device's replica, one thread per
            // device, and gathered on the home device in device order.
            Some((replicas, _)) => std::thread::scope(|scope| {
                let handles: Vec<_> = shards
                    .iter()
                    .zip(replicas.models())
                    .map(|(shard, replica)| {
                        let (replica, shard, roll, home) =
                            (replica.clone().no_grad(), shard.clone(), &roll, &home);
                        scope.spawn(move || {
                            roll(replica, shard).map(|parts| {
                                parts
                                    .into_iter()
                                    .map(|(t, x)| (t.to_device(home), x.to_device(home)))
                                    .collect::<Vec<_>>()
                            })
                        })
                    })
                    .collect();
                // Join every thread before looking at any result (a scope re-panics on a
                // panicked thread left unjoined).
                let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
                joined
                    .into_iter()
                    .map(|r| {
                        r.unwrap_or_else(|_| Err("a device's rollout thread panicked".into()))
                            .map_err(job)
                    })
                    .collect::<align_core::Result<Vec<_>>>()
            })?,
        };
        let (parts, decoded): (Vec<_>, Vec<_>) = rolled.into_iter().flatten().unzip();
        let traj = align_core::Trajectory::concat(&parts).map_err(|e| job(e.to_string()))?;
        drop(parts);
        let images = Tensor::cat(decoded, 0);
        let prompts: Vec<String> = ids.iter().map(|&i| self.prompts[i].clone()).collect();
        if matches!(self.algorithm, Algorithm::Backprop(_)) && self.replicas.is_some() {
            return self.parallel_draft_iteration(
                model, iteration, &ids, &prompts, &traj, &images, &shards, apply_any,
            );
        }
        if matches!(self.algorithm, Algorithm::Backprop(_)) {
            return self.backprop_iteration(
                model,
                iteration,
                &ids,
                &prompts,
                &traj,
                &images,
                &mut |m, g| apply_any(m, g.into()),
            );
        }
        let rewards = checked_scores(self.reward.as_ref(), &images, &prompts, iteration)?;
        // `timestep_fraction`: the steps this iteration trains.
        let steps = self
            .config
            .train_step_subset(&traj.stochastic_steps(), iteration);
        if let Algorithm::Opd(config) = &self.algorithm {
            let config = config.clone();
            return self.opd_iteration(
                model,
                iteration,
                &traj,
                &rewards,
                &steps,
                &config,
                &mut |m, g| apply_any(m, g.into()),
            );
        }
        if let Algorithm::Nft(config) = &self.algorithm {
            let config = config.clone();
            return self.nft_iteration(model, iteration, &traj, &rewards, &config, &mut |m, g| {
                apply_any(m, g.into())
            });
        }
        if let Algorithm::D3po(beta) = self.algorithm {
            return self.d3po_iteration(
                model,
                iteration,
                &ids,
                &traj,
                &rewards,
                &steps,
                beta,
                &mut |m, g| apply_any(m, g.into()),
            );
        }
        let reward = &self.reward;
        let mut score = |x: Tensor<4>| {
            checked_scores(
                reward.as_ref(),
                &frozen.sample_images(x).clamp(-1.0, 1.0),
                &prompts,
                iteration,
            )
            .map_err(|e| RlError::Reward(e.to_string()))
        };
        let table = &self.prompts;
        let encode = |m: &P, ids: &[usize]| conditions(table, m, ids);
        // KL as a reward: each trained step's reward is r − β_r KL(rollout policy ‖ reference)
        // at the rollout's state. DenseGRPO: step-wise reward gains from ODE completions with
        // the rollout policy.
        let mut step_kl_mean = None;
        let dense = match &self.algorithm {
            Algorithm::Online(a) if a.kl_reward().is_some() => {
                let beta = a.kl_reward().unwrap_or(0.0);
                // In chunks of `train_micro_batch` samples (the reference's forward passes
                // bounded like the update's).
                let size = match self.config.train_micro_batch {
                    0 => b,
                    n => n.min(b),
                };
                let mut kl = Vec::with_capacity(b);
                for start in (0..b).step_by(size) {
                    let idx: Vec<usize> = (start..(start + size).min(b)).collect();
                    let part = if idx.len() == b {
                        traj.clone()
                    } else {
                        traj.select(&idx)?
                    };
                    kl.extend(
                        align_rl::trajectory_step_kl(
                            &self.reference,
                            self.sampler.as_ref(),
                            &part,
                            &steps,
                            &encode,
                        )
                        .map_err(rl_err)?,
                    );
                }
                let n = (kl.len() * steps.len()).max(1) as f64;
                step_kl_mean = Some(
                    kl.iter()
                        .map(|row| steps.iter().map(|&k| row[k]).sum::<f64>())
                        .sum::<f64>()
                        / n,
                );
                Some(align_rl::kl_rewards(&rewards, &kl, beta).map_err(rl_err)?)
            }
            Algorithm::Online(a) if a.uses_dense_rewards() => Some(
                step_reward_gains(
                    &frozen,
                    &traj,
                    &cond,
                    uncond.as_ref(),
                    &steps,
                    self.config.dense_grpo.ode_steps,
                    &mut score,
                )
                .map_err(rl_err)?,
            ),
            _ => None,
        };
        let mut apply_rl = |m, g: GradientsParams| apply_any(m, g.into()).map_err(RlError::Core);
        let shuffle_seed = self.config.seed.wrapping_add(iteration as u64);
        let (model, stats) = match &mut self.algorithm {
            Algorithm::Online(algorithm) => {
                let it = Iteration {
                    reference: Some(&self.reference),
                    sampler: self.sampler.as_ref(),
                    trajectory: &traj,
                    rewards: &rewards,
                    dense_rewards: dense.as_deref(),
                    steps: &steps,
                    encode: &encode,
                    shuffle_seed,
                    micro_batch: (self.config.train_micro_batch > 0)
                        .then_some(self.config.train_micro_batch),
                };
                match &mut self.replicas {
                    Some((policies, references)) => run_iteration_parallel(
                        algorithm.as_mut(),
                        model,
                        it,
                        Parallel {
                            policies,
                            references: Some(references),
                            ranges: &shards,
                        },
                        &mut |m, g| apply_any(m, g).map_err(RlError::Core),
                    ),
                    None => run_iteration(algorithm.as_mut(), model, it, &mut apply_rl),
                }
                .map_err(rl_err)?
            }
            Algorithm::Backprop(_)
            | Algorithm::D3po(_)
            | Algorithm::Spo(..)
            | Algorithm::Nft(_)
            | Algorithm::Opd(_)
            | Algorithm::G2rpo(_) => {
                unreachable!("returned above")
            }
            Algorithm::Sdpo(sdpo) => {
                let dense = trajectory_dense_rewards(&traj, &mut score).map_err(rl_err)?;
                let (model, update) = sdpo
                    .run_iteration(
                        model,
                        self.sampler.as_ref(),
                        &traj,
                        &dense,
                        &encode,
                        shuffle_seed,
                        &mut apply_rl,
                    )
                    .map_err(rl_err)?;
                let (mean, std) = mean_std(&rewards);
                (
                    model,
                    align_rl::IterationStats {
                        reward_mean: mean,
                        reward_std: std,
                        zero_advantage_fraction: 0.0,
                        optimizer_steps: update.steps,
                        update,
                    },
                )
            }
        };
        let mut m = iteration_metrics(&stats, &self.observer);
        if let Some(kl) = step_kl_mean {
            // The rollout policy's mean per-step KL to the reference behind the KL reward.
            m.insert("kl_reward_step_kl".into(), kl);
        }
        if !matches!(self.algorithm, Algorithm::Sdpo(_)) {
            m.insert("trained_steps".into(), steps.len() as f64);
        }
        if let Some((a, b)) = self.config.iteration_window(iteration)
            && (self.config.sde_window_size > 0 || self.config.mix_grpo.is_some())
        {
            m.insert("sde_window_start".into(), a as f64);
            m.insert("sde_window_end".into(), b as f64);
        }
        // Samples generated so far (`iteration` counts from 0; every iteration rolls out `b`).
        m.insert("samples".into(), ((iteration + 1) * b) as f64);
        Ok((model, m))
    }

    fn job_state(&self) -> align_core::Result<serde_json::Value> {
        let mut state = serde_json::json!({ "algorithm": self.algorithm.state() });
        if self.config.lora_anneal.is_some() {
            state["lora_scale_applied"] = serde_json::json!(self.anneal_applied);
        }
        if let Some(old) = &self.nft_old {
            // The old policy's trainable values, little-endian f32 bytes in base64 (exact), and
            // the step count of its decay schedule.
            use base64::Engine as _;
            let values = align_rl::old_policy_values_of(old, &self.nft_ids).map_err(rl_err)?;
            let encoded: Vec<String> = values
                .iter()
                .map(|v| {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                })
                .collect();
            state["nft"] = serde_json::json!({ "steps": self.nft_steps, "old_f32_le": encoded });
        }
        let evaluator = self.evaluator.state().map_err(TrainError::into_core)?;
        if !evaluator.is_null() {
            state["monitor"] = evaluator;
        }
        Ok(state)
    }

    fn job_restore(&mut self, state: &serde_json::Value) -> align_core::Result<()> {
        self.algorithm
            .restore(&state["algorithm"])
            .map_err(rl_err)?;
        if self.config.lora_anneal.is_some() {
            // A run resumed with another `iterations` continues from the scale it reached.
            self.anneal_applied = state["lora_scale_applied"].as_f64().unwrap_or(1.0);
        }
        if matches!(self.algorithm, Algorithm::Nft(_)) {
            let nft = &state["nft"];
            let bad = |what: &str| CoreError::Job(format!("DiffusionNFT checkpoint state: {what}"));
            self.nft_steps = nft["steps"].as_u64().ok_or_else(|| bad("no step count"))?;
            use base64::Engine as _;
            let encoded: Vec<String> = serde_json::from_value(nft["old_f32_le"].clone())
                .map_err(|e| bad(&format!("old policy: {e}")))?;
            let mut values = Vec::with_capacity(encoded.len());
            for e in &encoded {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(e)
                    .map_err(|e| bad(&format!("old policy: {e}")))?;
                if bytes.len() % 4 != 0 {
                    return Err(bad("old policy: a tensor of a partial f32"));
                }
                values.push(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<f32>>(),
                );
            }
            self.nft_restored = Some(values);
            self.nft_old = None;
        }
        if !state["monitor"].is_null() {
            self.evaluator
                .restore(&state["monitor"])
                .map_err(TrainError::into_core)?;
        }
        Ok(())
    }
}

/// Runs the online job of `config` on `task` in `config.out`, measured by `evaluator`:
/// LoRA adapters (rank and α from `config.lora`) on the pipeline and the adapters-off
/// reference — or, with `finetune = "full"`, every parameter and a frozen copy of the base as
/// the reference —, the base evaluation (once per run directory), the runner's iterations with
/// periodic evaluations, the final evaluation of the trained weights (the weight average
/// when `runner.ema_decay` is set) and the report. `resume` continues the run from its last
/// checkpoint, bit-identically.
///
/// `config.model` names the model in the report only, and `config.reward` is not read: the
/// task carries the reward.
///
/// # Errors
/// An invalid `config` ([`TrainConfig::validate_job`]), no prompts, an algorithm that cannot
/// be built from `config`, an existing run without `resume`, bad LoRA targets, run and
/// evaluation errors.
pub fn train_pipeline<P: Pipeline>(
    task: OnlineTask<P>,
    mut evaluator: Box<dyn Evaluator<P>>,
    config: &TrainConfig,
    resume: bool,
    observer: &SharedObserver,
) -> Result<Report> {
    let started = Instant::now();
    config.validate_job()?;
    if task.prompts.is_empty() {
        return Err(TrainError::config(
            "prompts",
            "the run has no training prompts",
        ));
    }
    let out: &Path = &config.out;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    // Refuse to overwrite a run before spending minutes on the base evaluation.
    let runner = open_runner(config.runner.clone(), out, resume)?;
    // The run keeps its own copy of a `lora_init` adapter, and records it.
    let mut config = config.clone();
    config.lora_init =
        crate::adapt::run_adapter(config.lora_init.as_deref(), &config.model, out, resume)?;
    let config = &config;
    crate::adapt::write_run_config(&config.for_the_record(), "align train", out, resume)?;
    // LoRA's A factors are drawn from the device RNG: seed it so a run is reproducible.
    let device = task
        .pipeline
        .devices()
        .into_iter()
        .next()
        .ok_or_else(|| TrainError::config("model", "the pipeline has no parameters"))?;
    // Freshly initialised weights are lazy: drawn from the device RNG when first read. Draw
    // them now, before the run seeds the RNG, so that every clone (the reference, the base
    // evaluation) and a resumed run see the same values.
    align_core::runner::materialize(&task.pipeline);
    device.seed(config.seed);
    let base = task.pipeline.clone();
    // With `finetune = "full"` the optimizer replaces the policy's tensors and the frozen
    // copy keeps the old ones.
    let (policy, reference) = crate::adapt::policy_and_reference(
        task.pipeline,
        &crate::adapt::Adapters {
            finetune: config.finetune,
            lora: &config.lora,
            targets: task.lora_targets,
            init: config.lora_init.as_deref(),
            model_dir: &config.model,
        },
        true,
    )?;
    evaluator.base(&base, out, resume, observer)?;
    drop(base);
    let devices = config.parallel_devices()?;
    if let Some(first) = devices.first()
        && *first != device.clone()
    {
        return Err(TrainError::config(
            "devices",
            format!("the first device must hold the model, which is on {device:?}, not {first:?}"),
        ));
    }
    let mut job = OnlineJob {
        algorithm: build_algorithm(config, &task.prompts)?,
        sampler: task.sampler,
        reference,
        prompts: task.prompts,
        prompt_salt: task.prompt_salt,
        flow_grid: task.flow_grid,
        reward: task.reward,
        gold: task.gold,
        config: config.clone(),
        shape: task.sample_shape,
        observer: observer.clone(),
        evaluator,
        devices,
        replicas: None,
        nft_old: None,
        nft_restored: None,
        nft_ids: Vec::new(),
        nft_steps: 0,
        anneal_applied: 1.0,
    };
    observer.start(config.runner.iterations, 0);
    let outcome = runner.run(policy, &mut job, resume)?;
    observer.finish();
    let (trained, evaluated) = match outcome.ema {
        Some(average) => (average, "ema"),
        None => (outcome.model.valid(), "final"),
    };
    let last = read_last_metrics(&out.join(align_core::runner::METRICS));
    let mut report = Report {
        algorithm: format!("{:?}", config.algorithm),
        model: std::fs::canonicalize(&config.model)
            .unwrap_or_else(|_| config.model.clone())
            .display()
            .to_string(),
        iterations: outcome.iterations,
        stopped: outcome.stopped,
        evaluated_weights: evaluated.to_string(),
        ..Report::default()
    };
    report.final_.kl = last.get("kl").copied().unwrap_or(0.0);
    report.final_.reward_mean = last.get("reward_mean").copied().unwrap_or(0.0);
    job.evaluator.finish(&trained, &mut report, out)?;
    report.wall_seconds = started.elapsed().as_secs_f64();
    job.evaluator.write_report(&report, out)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    //! Data parallelism end to end: the online job on one device against the same job on two.

    use std::sync::{Arc, Mutex};

    use align_core::Control;
    use align_models::{ShapesModel, TextToImage};
    use align_rewards::{ShapeEvalMode, ShapeEvalReward};
    use burn::module::{ModuleVisitor, Param};

    use super::*;
    use crate::config::TrainConfig;
    use crate::observer::silent;
    use crate::report::Report;

    /// The run's images as the reward saw them, per call: `(values, shape)`.
    type Seen = Arc<Mutex<Vec<(Vec<f32>, Vec<usize>)>>>;

    /// ShapeEval's partial credit, recording every batch it scores.
    struct Recording(ShapeEvalReward, Seen);

    impl Reward for Recording {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn scale(&self) -> &str {
            self.0.scale()
        }
        fn score(&self, images: &Tensor<4>, prompts: &[String]) -> align_rewards::Result<Vec<f64>> {
            let data = images.clone().into_data();
            self.1.lock().expect("lock").push((
                data.try_to_vec::<f32>().expect("f32"),
                data.shape().to_vec(),
            ));
            self.0.score(images, prompts)
        }
    }

    /// Keeps the trained weights (every float parameter, flattened, in visit order).
    struct Keep(Arc<Mutex<Vec<Vec<f32>>>>);

    struct Flatten(Vec<Vec<f32>>);
    impl ModuleVisitor for Flatten {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0
                .push(param.val().into_data().try_to_vec::<f32>().expect("f32"));
        }
    }

    impl<P: Pipeline> Evaluator<P> for Keep {
        fn base(&mut self, _: &P, _: &Path, _: bool, _: &SharedObserver) -> Result<()> {
            Ok(())
        }
        fn periodic(
            &mut self,
            _: &P,
            _: usize,
            _: &mut Metrics,
            _: &SharedObserver,
        ) -> Result<Control> {
            Ok(Control::Continue)
        }
        fn finish(&mut self, trained: &P, _: &mut Report, _: &Path) -> Result<()> {
            let mut v = Flatten(Vec::new());
            trained.visit(&mut v);
            *self.0.lock().expect("lock") = v.0;
            Ok(())
        }
        fn write_report(&self, _: &Report, _: &Path) -> Result<()> {
            Ok(())
        }
    }

    struct Outcome {
        images: Vec<(Vec<f32>, Vec<usize>)>,
        weights: Vec<Vec<f32>>,
        metrics: Vec<serde_json::Value>,
    }

    /// Flow-GRPO on a tiny DiT, `iterations` iterations on `devices` (empty: one device),
    /// in `out` (resumed when `resume`).
    fn flow_grpo(
        base: &Path,
        out: &Path,
        devices: &[&str],
        iterations: usize,
        resume: bool,
    ) -> Outcome {
        run_job(base, out, devices, iterations, resume, &|_| {})
    }

    /// [`flow_grpo`]'s job with the configuration changed by `configure` first.
    fn run_job(
        base: &Path,
        out: &Path,
        devices: &[&str],
        iterations: usize,
        resume: bool,
        configure: &dyn Fn(&mut TrainConfig),
    ) -> Outcome {
        let mut config = TrainConfig {
            model: base.to_path_buf(),
            out: out.to_path_buf(),
            prompts_per_iteration: 2,
            group_size: 4,
            train_steps: 4,
            devices: devices.iter().map(|d| d.to_string()).collect(),
            ..TrainConfig::default()
        };
        config.flow_grpo.minibatches = 2;
        config.runner.iterations = iterations;
        config.runner.learning_rate = 3e-3;
        config.runner.max_grad_norm = Some(0.05);
        // AdamW's update `m / (√v + ε)` is ±lr for any gradient entry ≫ ε, whatever its size:
        // with the default ε (1e-8) an entry whose gradient is rounding noise (≈ 1e-9..1e-7,
        // differing between backends in sign) moves by ±lr in either run. A larger ε makes
        // the update a smooth function of the gradient, so that the weights compare the
        // gradients the devices computed, which is what data parallelism must preserve.
        config.runner.adam_eps = 1e-3;
        config.runner.checkpoint_every = 1;
        configure(&mut config);
        let home = config
            .home_device(&align_core::select_device(Some("flex")).expect("flex"))
            .expect("devices");
        let (mc, model) = ShapesModel::load(base, &config.train_device(&home)).expect("model");
        let ShapesModel::Dit(model) = model else {
            panic!("a DiT")
        };
        let model: TextToImage<_> = *model;
        let seen: Seen = Arc::default();
        let kept = Arc::new(Mutex::new(Vec::new()));
        let prompts = align_data::Split::standard()
            .all_specs(align_data::SplitPart::Train)
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut task = OnlineTask::new(
            model,
            prompts,
            Box::new(Recording(
                ShapeEvalReward::new(ShapeEvalMode::PartialCredit),
                seen.clone(),
            )),
            crate::online::train_sampler(&config, &mc).expect("sampler"),
            [3, mc.image_size, mc.image_size],
        );
        task.prompt_salt = 7;
        train_pipeline(
            task,
            Box::new(Keep(kept.clone())),
            &config,
            resume,
            &silent(),
        )
        .expect("run");
        let metrics = std::fs::read_to_string(out.join(align_core::runner::METRICS))
            .expect("metrics")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let images = seen.lock().expect("lock").clone();
        let weights = kept.lock().expect("lock").clone();
        Outcome {
            images,
            weights,
            metrics,
        }
    }

    fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| {
                assert_eq!(x.len(), y.len());
                x.iter().zip(y).map(|(p, q)| (p - q).abs())
            })
            .fold(0.0, f32::max)
    }

    /// Two Flow-GRPO iterations of the shipped DiT with `devices = [flex, ndarray]` (and
    /// `[flex, flex]`) against one flex device: the trained weights agree to 1e-5 (f32 rounding of the summation
    /// order and of the two backends' arithmetic), the first iteration's samples that flex
    /// draws are bit-identical and ndarray's agree to 1e-5, the PPO ratio is exactly 1 at
    /// θ_old on both devices; a two-device run resumed after one iteration ends
    /// bit-identical to the uninterrupted two-device run.
    #[test]
    fn two_devices_train_flow_grpo_like_one_and_resume_bit_for_bit() {
        let dir = std::env::temp_dir().join(format!("align-dp-grpo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The shipped DiT: a freshly initialised one outputs zeros (adaLN-Zero), so its
        // adapters would receive no gradient.
        let base = crate::test_model_dir("shapes-dit");
        let one = flow_grpo(&base, &dir.join("one"), &[], 2, false);
        let mixed = flow_grpo(&base, &dir.join("mixed"), &["flex", "ndarray"], 2, false);
        let same = flow_grpo(&base, &dir.join("same"), &["flex", "flex"], 2, false);
        // The update really happened, in both iterations, on every run.
        for run in [&one, &mixed, &same] {
            assert_eq!(run.metrics.len(), 2);
            for row in &run.metrics {
                assert!(
                    row["optimizer_steps"].as_f64().expect("steps") >= 1.0,
                    "{row}"
                );
                // The first minibatch of each iteration is evaluated at θ_old on every device.
                assert!(row["kl"].as_f64().expect("kl").is_finite(), "{row}");
            }
        }
        // Iteration 0: the same θ everywhere. Flex's shard (samples 0..4) bit for bit; the
        // ndarray shard (samples 4..8) to f32 tolerance; [flex, flex] bit for bit throughout.
        let (first, shape) = &one.images[0];
        let per_sample = shape[1..].iter().product::<usize>();
        assert_eq!(&mixed.images[0].1, shape);
        let (flex_half, nd_half) = mixed.images[0].0.split_at(4 * per_sample);
        assert_eq!(flex_half, &first[..4 * per_sample]);
        let nd_diff = nd_half
            .iter()
            .zip(&first[4 * per_sample..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // Four sampler steps of the DiT on another backend: 3e-5 measured.
        assert!(nd_diff < 1e-4, "ndarray's samples differ by {nd_diff}");
        assert_eq!(&same.images[0].0, first);
        // The policy moved away from the reference in the first update.
        assert!(one.metrics[1]["kl"].as_f64().expect("kl") > 0.0);
        // The trained weights: one device and two agree to f32 tolerance.
        // Measured: 6.1e-7 (flex+ndarray), 5.8e-8 (flex+flex) in weights of order 0.01–1.
        for (name, run, tolerance) in [("flex+ndarray", &mixed, 1e-5), ("flex+flex", &same, 1e-6)] {
            let d = max_abs_diff(&run.weights, &one.weights);
            assert!(d < tolerance, "{name}: trained weights differ by {d}");
            for (a, b) in run.metrics.iter().zip(&one.metrics) {
                let (ga, gb) = (a["grad_norm"].as_f64(), b["grad_norm"].as_f64());
                let (ga, gb) = (ga.expect("grad_norm"), gb.expect("grad_norm"));
                assert!(
                    (ga - gb).abs() <= 1e-4 * gb.max(1e-3),
                    "{name}: {ga} vs {gb}"
                );
            }
            assert_eq!(run.metrics[0]["reward_mean"], one.metrics[0]["reward_mean"]);
        }
        // Resume: one iteration, then resumed to two, equals the uninterrupted mixed run.
        let resumed_dir = dir.join("resumed");
        flow_grpo(&base, &resumed_dir, &["flex", "ndarray"], 1, false);
        let resumed = flow_grpo(&base, &resumed_dir, &["flex", "ndarray"], 2, true);
        assert_eq!(resumed.weights, mixed.weights);
        assert_eq!(resumed.metrics, mixed.metrics);
        // The checkpoints: model bytes, state, and the optimizer's content (burn writes its
        // state in hash-map order; `burnpack_digest` is order-independent).
        let at = |d: &Path, f: &str| d.join("checkpoint-000002").join(f);
        for f in ["model.bpk", "state.json"] {
            let read = |d: &Path| std::fs::read(at(d, f)).expect("checkpoint file");
            assert!(read(&resumed_dir) == read(&dir.join("mixed")), "{f}");
        }
        let digest = |d: &Path| align_core::burnpack_digest(&at(d, "optimizer.bpk")).expect("bpk");
        assert_eq!(digest(&resumed_dir), digest(&dir.join("mixed")));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// DiffusionNFT on the shipped DiT with ODE rollouts and an old policy that lags (decay
    /// 0.1 per step): the update moves the weights, the old policy's decay is logged, and a run
    /// stopped after one iteration and resumed ends bit-identical to the uninterrupted one —
    /// weights, metrics and checkpoint state (the old policy is part of it).
    #[test]
    fn diffusion_nft_trains_and_resumes_bit_for_bit() {
        let dir = std::env::temp_dir().join(format!("align-nft-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let base = crate::test_model_dir("shapes-dit");
        let nft = |c: &mut TrainConfig| {
            c.algorithm = crate::config::AlgorithmName::DiffusionNft;
            c.noise_level = 0.0;
            c.diffusion_nft.old_decay = align_rl::OldPolicyDecay::Linear {
                rate: 0.1,
                max: 0.5,
            };
        };
        let whole = run_job(&base, &dir.join("whole"), &[], 3, false, &nft);
        assert_eq!(whole.metrics.len(), 3);
        for (i, row) in whole.metrics.iter().enumerate() {
            assert_eq!(row["optimizer_steps"].as_f64(), Some(1.0), "{row}");
            assert_eq!(
                row["trained_steps"].as_f64(),
                Some(3.0),
                "⌊0.99 · 4⌋: {row}"
            );
            let d = row["nft_old_decay"].as_f64().expect("decay");
            assert!((d - 0.1 * (i + 1) as f64).abs() < 1e-12, "{row}");
            assert!(row["loss"].as_f64().expect("loss").is_finite(), "{row}");
        }
        // The old policy (which rolls out) lags the trained one: with `copy` (d = 0) the second
        // iteration's rollouts come from the trained weights, with the decay from a blend.
        let copy = run_job(
            &base,
            &dir.join("copy"),
            &[],
            2,
            false,
            &|c: &mut TrainConfig| {
                nft(c);
                c.diffusion_nft.old_decay = align_rl::OldPolicyDecay::Copy;
            },
        );
        assert_eq!(copy.images[0], whole.images[0], "the same first rollout");
        assert_ne!(
            copy.images[1], whole.images[1],
            "the lagging old policy rolls out"
        );
        let resumed_dir = dir.join("resumed");
        run_job(&base, &resumed_dir, &[], 1, false, &nft);
        let resumed = run_job(&base, &resumed_dir, &[], 3, true, &nft);
        assert_eq!(resumed.weights, whole.weights);
        assert_eq!(resumed.metrics, whole.metrics);
        assert_eq!(resumed.images, whole.images[1..].to_vec());
        let state = |d: &Path| {
            std::fs::read(d.join("checkpoint-000003").join("state.json")).expect("state")
        };
        assert!(state(&resumed_dir) == state(&dir.join("whole")));
        let text = String::from_utf8(state(&resumed_dir)).expect("utf-8");
        assert!(
            text.contains("old_f32_le"),
            "the old policy is checkpointed"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// On-policy distillation through the job on the shipped DiT: a fresh student (adapters
    /// zero) against its own base with one teacher substep has KL exactly 0; with 4 substeps
    /// the teacher's many-step flow differs, the KL is positive, and each minibatch takes an
    /// optimizer step.
    #[test]
    fn opd_distils_the_base_into_the_few_step_student() {
        let dir = std::env::temp_dir().join(format!("align-opd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let base = crate::test_model_dir("shapes-dit");
        let opd = |substeps: usize| {
            move |c: &mut TrainConfig| {
                c.algorithm = crate::config::AlgorithmName::Opd;
                c.opd.substeps = substeps;
                c.opd.minibatches = 2;
            }
        };
        let same = run_job(&base, &dir.join("one"), &[], 1, false, &opd(1));
        assert_eq!(same.metrics[0]["opd_kl_sum"].as_f64(), Some(0.0));
        let run = run_job(&base, &dir.join("four"), &[], 2, false, &opd(4));
        for row in &run.metrics {
            let kl = row["opd_kl_sum"].as_f64().expect("kl");
            assert!(kl.is_finite() && kl > 0.0, "{row}");
            assert_eq!(row["optimizer_steps"].as_f64(), Some(2.0), "{row}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// G²RPO through the job on the shipped DiT (4 steps, branch steps 0 and 1, granularities
    /// 1 and 2): one PPO step per branch step with untied rewards, the first re-scored at θ_old
    /// with a ratio of exactly 1 (flex is bitwise reproducible), the rollouts counted per
    /// branch step.
    #[test]
    fn g2rpo_trains_one_step_per_branch() {
        let dir = std::env::temp_dir().join(format!("align-g2rpo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let base = crate::test_model_dir("shapes-dit");
        let run = run_job(
            &base,
            &dir.join("run"),
            &[],
            2,
            false,
            &|c: &mut TrainConfig| {
                c.algorithm = crate::config::AlgorithmName::G2rpo;
            },
        );
        for (i, row) in run.metrics.iter().enumerate() {
            let steps = row["optimizer_steps"].as_f64().expect("steps");
            assert!((1.0..=2.0).contains(&steps), "{row}");
            assert_eq!(row["trained_steps"].as_f64(), Some(2.0), "{row}");
            assert_eq!(
                row["samples"].as_f64(),
                Some(((i + 1) * 2 * 8) as f64),
                "{row}"
            );
            assert_eq!(row["max_ratio_deviation"].as_f64(), Some(0.0), "{row}");
            assert!(row["loss"].as_f64().expect("loss").is_finite(), "{row}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// KL as a reward on the shipped DiT: the step KL behind the reward is 0 at the first
    /// iteration (fresh adapters) and positive once the adapters have moved.
    #[test]
    fn the_kl_reward_reads_the_step_kl_of_the_moved_policy() {
        let dir = std::env::temp_dir().join(format!("align-klr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let base = crate::test_model_dir("shapes-dit");
        let run = run_job(
            &base,
            &dir.join("run"),
            &[],
            2,
            false,
            &|c: &mut TrainConfig| {
                c.flow_grpo.kl_reward = 10.0;
                c.flow_grpo.beta = 0.0;
            },
        );
        let kl: Vec<f64> = run
            .metrics
            .iter()
            .map(|r| r["kl_reward_step_kl"].as_f64().expect("step kl"))
            .collect();
        assert_eq!(kl[0], 0.0);
        assert!(kl[1] > 0.0, "{kl:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// LoRA-scale annealing on Flow-GRPO: the logged scale runs from `start` to `end`, the
    /// adapters' B factors are rescaled between iterations (the weights differ from the run
    /// without it), and a resumed run applies the same rescalings (bit-identical weights).
    #[test]
    fn lora_annealing_rescales_the_adapters_and_resumes_bit_for_bit() {
        let dir = std::env::temp_dir().join(format!("align-anneal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let base = crate::test_model_dir("shapes-dit");
        let anneal = |c: &mut TrainConfig| {
            c.lora_anneal = Some(crate::LoraAnneal {
                start: 1.0,
                end: 0.25,
            });
        };
        let whole = run_job(&base, &dir.join("whole"), &[], 3, false, &anneal);
        let scales: Vec<f64> = whole
            .metrics
            .iter()
            .map(|r| r["lora_scale"].as_f64().expect("lora_scale"))
            .collect();
        assert_eq!(scales, vec![1.0, 0.625, 0.25]);
        let plain = run_job(&base, &dir.join("plain"), &[], 3, false, &|_| {});
        assert!(max_abs_diff(&whole.weights, &plain.weights) > 0.0);
        let resumed_dir = dir.join("resumed");
        run_job(&base, &resumed_dir, &[], 1, false, &anneal);
        let resumed = run_job(&base, &resumed_dir, &[], 3, true, &anneal);
        assert_eq!(resumed.weights, whole.weights);
        assert_eq!(resumed.metrics, whole.metrics);
        let state =
            std::fs::read_to_string(resumed_dir.join("checkpoint-000003").join("state.json"))
                .expect("state");
        assert!(state.contains("lora_scale_applied"), "{state}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// DRaFT-K (K = 2, with the reference pull) through the proxy reward on `[flex, ndarray]`
    /// against one flex device: the step's gradient norm, reward and pull agree to 1e-5
    /// relative and the trained weights to 1e-5 (AdamW ε = 1e-3, as above).
    #[test]
    fn draft_on_two_devices_takes_the_one_device_step() {
        let dir = std::env::temp_dir().join(format!("align-dp-draft-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let run = |name: &str, devices: &[&str]| {
            let mut config = TrainConfig {
                algorithm: crate::config::AlgorithmName::Draft,
                model: crate::test_model_dir("shapes-unet"),
                out: dir.join(name),
                prompts_per_iteration: 3,
                group_size: 1,
                train_steps: 4,
                noise_level: 0.0,
                eval_steps: 2,
                reward: crate::config::RewardName::Proxy.into(),
                reward_model: crate::test_model_dir("proxy-rm"),
                devices: devices.iter().map(|d| d.to_string()).collect(),
                ..TrainConfig::default()
            };
            config.backprop.truncation = align_backprop::Truncation::LastK(2);
            config.backprop.reference_weight = 0.1;
            config.runner.iterations = 1;
            config.runner.learning_rate = 1e-3;
            config.runner.adam_eps = 1e-3;
            let flex = align_core::select_device(Some("flex")).expect("flex");
            crate::train(&config, false, &silent(), &flex).expect("draft");
            let row: serde_json::Value = serde_json::from_str(
                std::fs::read_to_string(config.out.join(align_core::runner::METRICS))
                    .expect("metrics")
                    .trim(),
            )
            .expect("json");
            (row, crate::first_checkpoint_weights(&config.out))
        };
        let (one, w1) = run("one", &[]);
        assert_eq!(one["differentiated_steps"].as_f64(), Some(2.0));
        assert!(one["grad_norm"].as_f64().expect("grad_norm") > 0.0);
        let (two, w2) = run("two", &["flex", "ndarray"]);
        for key in [
            "grad_norm",
            "reward_mean",
            "reference_penalty",
            "differentiated_steps",
        ] {
            let (a, b) = (two[key].as_f64().expect(key), one[key].as_f64().expect(key));
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                "{key}: {a} vs {b}"
            );
        }
        let d = crate::max_weight_difference(&w2, &w1);
        // Measured: 3.6e-7.
        assert!(d < 1e-5, "weights differ by {d}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn data_parallelism_refuses_what_it_cannot_split() {
        let mut config = TrainConfig {
            out: "x".into(),
            algorithm: crate::config::AlgorithmName::Spo,
            devices: vec!["flex".into(), "flex".into()],
            ..TrainConfig::default()
        };
        let err = config.validate_job().unwrap_err().to_string();
        assert!(err.contains("devices"), "{err}");
        config.algorithm = crate::config::AlgorithmName::FlowGrpo;
        config.prompts_per_iteration = 1;
        config.group_size = 1;
        let err = config.validate_job().unwrap_err().to_string();
        assert!(err.contains("at least one"), "{err}");
        config.devices = vec!["flex".into(), "tpu".into()];
        let err = config.parallel_devices().unwrap_err().to_string();
        assert!(err.contains("devices") && err.contains("tpu"), "{err}");
    }
}
