//! The online job on Shapes-world models: rollouts of the LoRA-adapted model on training-split
//! prompts, rewards, one iteration of an `align-rl` algorithm (or a DRaFT / AlignProp update),
//! periodic evaluations with the reward-hacking monitor, checkpoints, and the final report.
//! The reference policy is the same model with adapters off.

use std::path::Path;
use std::time::Instant;

use align_backprop::{DraftConfig, DraftUpdate, draft_update, reward_cotangent};
use align_core::{Condition, CoreError, Denoiser, Job, Metrics, Runner};
use align_data::{Image, Split, SplitPart, Tokenizer};
use align_models::{
    LoraConfig, ShapesModel, ShapesModelConfig, TextToImage, apply_lora, with_lora_scale,
};
use align_rewards::{
    HackingMonitor, ProxyReward, Reading, Reward, ShapeEvalMode, ShapeEvalReward,
    same_prompt_diversity,
};
use align_rl::{
    Ddpo, DdpoConfig, DdpoVariant, DenseGrpo, Dpok, FlowGrpo, Iteration, OnlineAlgorithm, RlError,
    Sdpo, run_iteration, step_reward_gains, trajectory_dense_rewards,
};
use align_samplers::{
    FlowGrid, FlowSdeSampler, RolloutBatch, RolloutConfig, Sampler, SamplerConfig, rollout,
};
use burn::module::{Module, ModuleDisplay};
use burn::optim::GradientsParams;
use burn::tensor::Device;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::config::{AlgorithmName, RewardName, TrainConfig};
use crate::error::{Result, TrainError};
use crate::images::{images_to_tensor, write_grid};
use crate::observer::SharedObserver;
use crate::report::{Report, Snapshot, WinRate, read_last_metrics, write_report};
use crate::shapes_eval::{
    Accuracy, GRID_PROMPTS, SampleOptions, accuracies, encode_prompt, evaluate_detailed, generate,
};

/// The metrics of one online-RL iteration, reported to the observer.
pub(crate) fn iteration_metrics(
    stats: &align_rl::IterationStats,
    observer: &SharedObserver,
) -> Metrics {
    let mut m = Metrics::new();
    m.insert("reward_mean".into(), stats.reward_mean);
    m.insert("reward_std".into(), stats.reward_std);
    m.insert(
        "zero_advantage_fraction".into(),
        stats.zero_advantage_fraction,
    );
    m.insert("loss".into(), stats.update.loss);
    m.insert("policy_loss".into(), stats.update.policy_loss);
    m.insert("kl".into(), stats.update.kl);
    m.insert("clip_fraction".into(), stats.update.clip_fraction);
    m.insert("approx_kl".into(), stats.update.approx_kl);
    m.insert(
        "max_ratio_deviation".into(),
        stats.update.max_ratio_deviation,
    );
    observer.iteration(&format!(
        "reward {:.3}  kl {:.2e}",
        stats.reward_mean, stats.update.kl
    ));
    m
}

/// A runner for the run directory `out`, refusing to start over an existing run unless it is
/// resumed (checked before any expensive evaluation).
///
/// # Errors
/// An invalid runner configuration, an unreadable directory, or an existing run without
/// `resume`.
pub fn open_runner(config: align_core::RunnerConfig, out: &Path, resume: bool) -> Result<Runner> {
    let runner = Runner::new(config, out).map_err(crate::config::runner_field)?;
    if !resume && runner.latest_checkpoint()?.is_some() {
        return Err(TrainError::RunExists {
            dir: out.to_path_buf(),
        });
    }
    Ok(runner)
}

/// An RL error as the runner's error (the runner's own errors pass through unchanged).
pub(crate) fn rl_err(e: RlError) -> CoreError {
    match e {
        RlError::Core(c) => c,
        other => CoreError::Job(other.to_string()),
    }
}

/// A reward-backprop error as the runner's error (the runner's own errors pass through).
pub(crate) fn backprop_err(e: align_backprop::BackpropError) -> CoreError {
    match e {
        align_backprop::BackpropError::Core(c) => c,
        other => CoreError::Job(other.to_string()),
    }
}

/// The metrics of a DRaFT / AlignProp update: `reward_mean`, `reward_std`,
/// `differentiated_steps`, `reference_penalty` and `kl` (0).
pub(crate) fn draft_metrics(values: &[f64], stats: &align_backprop::DraftStats) -> Metrics {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    let mut m = Metrics::new();
    m.insert("reward_mean".into(), mean);
    m.insert("reward_std".into(), std);
    m.insert(
        "differentiated_steps".into(),
        stats.differentiated_steps as f64,
    );
    m.insert("reference_penalty".into(), stats.reference_penalty);
    m.insert("kl".into(), 0.0);
    m
}

/// The algorithm a job runs: one of the shared-update algorithms, or SDPO (pairs, per-step
/// advantages).
pub(crate) enum Algorithm {
    Online(Box<dyn OnlineAlgorithm>),
    Sdpo(Sdpo),
    Backprop(DraftConfig),
}

impl Algorithm {
    pub(crate) fn state(&self) -> serde_json::Value {
        match self {
            Algorithm::Online(a) => a.state(),
            Algorithm::Sdpo(s) => s.state(),
            Algorithm::Backprop(_) => serde_json::Value::Null,
        }
    }
    pub(crate) fn restore(&mut self, state: &serde_json::Value) -> Result<(), RlError> {
        match self {
            Algorithm::Online(a) => a.restore(state),
            Algorithm::Sdpo(s) => s.restore(state),
            Algorithm::Backprop(_) => Ok(()),
        }
    }
}

/// The online-RL job on a Shapes model.
pub struct ShapesRl<D: Module + Denoiser> {
    algorithm: Algorithm,
    sampler: Box<dyn Sampler + Send + Sync>,
    reference: TextToImage<D>,
    prompts: Vec<String>,
    tokens: Vec<Vec<u32>>,
    null: Vec<u32>,
    reward: Box<dyn Reward>,
    gold: ShapeEvalReward,
    config: TrainConfig,
    model_config: ShapesModelConfig,
    image_size: usize,
    observer: SharedObserver,
    monitor: HackingMonitor,
}

/// Conditions (and null-prompt conditions) of prompt-table entries `ids`.
fn encode_prompts<D: Module + Denoiser>(
    tokens: &[Vec<u32>],
    null: &[u32],
    m: &TextToImage<D>,
    ids: &[usize],
) -> Result<(Condition, Option<Condition>), String> {
    let device = m.text.devices()[0].clone();
    let rows: Vec<Vec<u32>> = ids.iter().map(|&i| tokens[i].clone()).collect();
    let nulls = vec![null.to_vec(); ids.len()];
    let c = m.encode(&rows, &device).map_err(|e| e.to_string())?;
    let u = m.encode(&nulls, &device).map_err(|e| e.to_string())?;
    Ok((c, Some(u)))
}

impl<D: Module + Denoiser + ModuleDisplay> ShapesRl<D> {
    /// The prompts of iteration `it`: `prompts_per_iteration` training-split prompts, each
    /// `group_size` times.
    fn batch_prompts(&self, it: usize) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ 0x726c_7072_6f6d_7074);
        rng.set_stream(it as u64);
        let mut ids = Vec::new();
        for _ in 0..self.config.prompts_per_iteration {
            let p = (rng.next_u64() % self.prompts.len() as u64) as usize;
            ids.extend(std::iter::repeat_n(p, self.config.group_size));
        }
        ids
    }
}

/// One DRaFT / AlignProp update's inputs.
struct BackpropStep<'a, D: Module> {
    section: DraftConfig,
    model: TextToImage<D>,
    iteration: usize,
    ids: &'a [usize],
    prompts: &'a [String],
    traj: &'a align_core::Trajectory,
    images: &'a burn::tensor::Tensor<4>,
    apply: &'a mut dyn FnMut(TextToImage<D>, GradientsParams) -> align_core::Result<TextToImage<D>>,
}

impl<D: Module + Denoiser + ModuleDisplay> ShapesRl<D> {
    /// DRaFT / AlignProp: the proxy reward's gradient at the final sample, chained back through
    /// the last K steps (K from the truncation, drawn per iteration for AlignProp).
    fn backprop_iteration(
        &mut self,
        step: BackpropStep<'_, D>,
    ) -> align_core::Result<(TextToImage<D>, Metrics)> {
        let job = |e: String| CoreError::Job(e);
        let gold = self
            .gold
            .score(step.images, step.prompts)
            .map_err(|e| job(e.to_string()))?;
        let reward = &self.reward;
        let score = |x: burn::tensor::Tensor<4>| match reward
            .score_differentiable(x.clamp(-1.0, 1.0), step.prompts)
        {
            Some(r) => r.map_err(|e| e.to_string()),
            None => Err(format!("{} is not differentiable", reward.name())),
        };
        let (values, cotangent) =
            reward_cotangent(step.traj.final_sample(), step.section.reward_scale, &score)
                .map_err(|e| job(e.to_string()))?;
        let (tokens, null) = (&self.tokens, &self.null);
        let ids = step.ids;
        let encode = |m: &TextToImage<D>| encode_prompts(tokens, null, m, ids);
        let (model, stats) = draft_update(DraftUpdate {
            model: step.model,
            reference: &self.reference,
            sampler: self.sampler.as_ref(),
            trajectory: step.traj,
            config: &step.section,
            seed: self.config.seed,
            iteration: step.iteration,
            cotangent,
            encode: &encode,
            apply: step.apply,
        })
        .map_err(backprop_err)?;
        let mut m = draft_metrics(&values, &stats);
        m.insert(
            "gold_partial_credit".into(),
            gold.iter().sum::<f64>() / gold.len() as f64,
        );
        self.observer.iteration(&format!(
            "proxy {:.3}  gold {:.3}  K {}",
            m["reward_mean"], m["gold_partial_credit"], m["differentiated_steps"]
        ));
        Ok((model, m))
    }
}

impl<D: Module + Denoiser + ModuleDisplay> Job<TextToImage<D>> for ShapesRl<D> {
    fn iteration(
        &mut self,
        model: TextToImage<D>,
        iteration: usize,
        apply: &mut dyn FnMut(
            TextToImage<D>,
            GradientsParams,
        ) -> align_core::Result<TextToImage<D>>,
    ) -> align_core::Result<(TextToImage<D>, Metrics)> {
        let ids = self.batch_prompts(iteration);
        let b = ids.len();
        // DenseGRPO's calibrated per-step noise: this iteration's sampler.
        if let Algorithm::Online(a) = &self.algorithm
            && let Some(scales) = a.noise_scales()
        {
            let sampler = FlowSdeSampler::new(
                FlowGrid::new(self.config.train_steps, 1.0)
                    .map_err(|e| CoreError::Job(e.to_string()))?,
                self.config.noise_level,
            )
            .and_then(|s| s.with_window(self.config.sde_window.map(|(a, b)| a..b)))
            .and_then(|s| s.with_noise_scales(Some(scales)))
            .map_err(|e| CoreError::Job(e.to_string()))?;
            self.sampler = Box::new(sampler);
        }
        // Roll out on the training device without a graph: the update re-scores with the same
        // kernels, so the PPO ratio at θ_old is exactly 1.
        let frozen = model.clone().no_grad();
        let (cond, uncond) =
            encode_prompts(&self.tokens, &self.null, &frozen, &ids).map_err(CoreError::Job)?;
        let traj = rollout(
            &frozen,
            self.sampler.as_ref(),
            &RolloutBatch {
                condition: &cond,
                uncond: uncond.as_ref(),
                sample_ids: (0..b as u64).map(|i| (iteration * b) as u64 + i).collect(),
                condition_ids: ids.clone(),
                group_ids: None,
                sample_shape: [3, self.image_size, self.image_size],
            },
            &RolloutConfig {
                seed: self.config.seed,
                guidance_scale: self.config.guidance,
                keep_means: true,
                keep_pred_x0: matches!(self.algorithm, Algorithm::Sdpo(_)),
                ..RolloutConfig::default()
            },
        )
        .map_err(|e| CoreError::Job(e.to_string()))?;
        let images = traj.final_sample().clone().clamp(-1.0, 1.0);
        let prompts: Vec<String> = ids.iter().map(|&i| self.prompts[i].clone()).collect();
        if let Algorithm::Backprop(section) = &self.algorithm {
            return self.backprop_iteration(BackpropStep {
                section: section.clone(),
                model,
                iteration,
                ids: &ids,
                prompts: &prompts,
                traj: &traj,
                images: &images,
                apply,
            });
        }
        let rewards = self
            .reward
            .score(&images, &prompts)
            .map_err(|e| CoreError::Job(e.to_string()))?;
        let steps = traj.stochastic_steps();
        // DenseGRPO: step-wise reward gains from ODE completions with the rollout policy.
        let dense = match &self.algorithm {
            Algorithm::Online(a) if a.uses_dense_rewards() => {
                let reward = &self.reward;
                let mut score = |x: burn::tensor::Tensor<4>| {
                    reward
                        .score(&x.clamp(-1.0, 1.0), &prompts)
                        .map_err(|e| RlError::Reward(e.to_string()))
                };
                Some(
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
                )
            }
            _ => None,
        };
        let (tokens, null) = (&self.tokens, &self.null);
        let encode = |m: &TextToImage<D>, ids: &[usize]| encode_prompts(tokens, null, m, ids);
        let mut apply_rl = |m, g| apply(m, g).map_err(RlError::Core);
        let shuffle_seed = self.config.seed.wrapping_add(iteration as u64);
        let (model, stats) = match &mut self.algorithm {
            Algorithm::Online(algorithm) => run_iteration(
                algorithm.as_mut(),
                model,
                Iteration {
                    reference: Some(&self.reference),
                    sampler: self.sampler.as_ref(),
                    trajectory: &traj,
                    rewards: &rewards,
                    dense_rewards: dense.as_deref(),
                    steps: &steps,
                    encode: &encode,
                    shuffle_seed,
                },
                &mut apply_rl,
            )
            .map_err(rl_err)?,
            Algorithm::Backprop(_) => unreachable!("returned above"),
            Algorithm::Sdpo(sdpo) => {
                let reward = &self.reward;
                let mut score = |x: burn::tensor::Tensor<4>| {
                    reward
                        .score(&x.clamp(-1.0, 1.0), &prompts)
                        .map_err(|e| RlError::Reward(e.to_string()))
                };
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
                let n = rewards.len() as f64;
                let mean = rewards.iter().sum::<f64>() / n;
                let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
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
        Ok((model, iteration_metrics(&stats, &self.observer)))
    }

    fn state(&self) -> align_core::Result<serde_json::Value> {
        let monitor = serde_json::to_value(&self.monitor)
            .map_err(|e| CoreError::Job(format!("saving the monitor: {e}")))?;
        Ok(serde_json::json!({ "algorithm": self.algorithm.state(), "monitor": monitor }))
    }

    fn restore(&mut self, state: &serde_json::Value) -> align_core::Result<()> {
        self.algorithm
            .restore(&state["algorithm"])
            .map_err(rl_err)?;
        if !state["monitor"].is_null() {
            self.monitor = serde_json::from_value(state["monitor"].clone())
                .map_err(|e| CoreError::Job(format!("checkpoint monitor state: {e}")))?;
        }
        Ok(())
    }

    fn after_iteration(
        &mut self,
        model: &TextToImage<D>,
        iteration: usize,
        metrics: &mut Metrics,
    ) -> align_core::Result<align_core::Control> {
        let every = self.config.eval_every;
        if every > 0 && (iteration + 1).is_multiple_of(every) {
            let valid = model.valid();
            let device = valid.text.devices()[0].clone();
            let (train, held, _) =
                evaluate_model(&valid, &self.model_config, &self.config, &device)
                    .map_err(TrainError::into_core)?;
            let (grid, diversity) = grid_and_diversity(
                &valid,
                &self.model_config,
                4,
                self.config.eval_steps,
                &device,
            )
            .map_err(TrainError::into_core)?;
            write_grid(
                &grid,
                GRID_PROMPTS.len(),
                &self
                    .config
                    .out
                    .join(format!("grid-iteration-{:06}.png", iteration + 1)),
            )
            .map_err(TrainError::into_core)?;
            metrics.insert("eval_train_accuracy".into(), train.rate());
            metrics.insert("eval_heldout_accuracy".into(), held.rate());
            metrics.insert("eval_diversity".into(), diversity);
            self.observer.say(&format!(
                "iteration {}: ShapeEval train {:.1}% held-out {:.1}%, diversity {diversity:.4}",
                iteration + 1,
                100.0 * train.rate(),
                100.0 * held.rate()
            ));
            let verdict = self
                .monitor
                .observe(monitor_reading(
                    iteration + 1,
                    self.config.reward,
                    metrics.get("reward_mean").copied().unwrap_or(0.0),
                    &held,
                    diversity,
                    metrics.get("kl").copied().unwrap_or(0.0),
                ))
                .map_err(|e| CoreError::Job(e.to_string()))?;
            metrics.insert("hacking_warnings".into(), verdict.warnings.len() as f64);
            for w in &verdict.warnings {
                self.observer.say(&format!("warning: {w}"));
            }
            if verdict.stop {
                let reasons: Vec<String> = verdict.warnings.iter().map(|w| w.to_string()).collect();
                return Ok(align_core::Control::Stop(format!(
                    "reward-hacking monitor: {}",
                    reasons.join("; ")
                )));
            }
        }
        Ok(align_core::Control::Continue)
    }
}

/// A monitor reading from a held-out evaluation: the optimized reward (proxy) against the gold
/// pass rate, with diversity and KL.
/// With the learned proxy as the reward, the proxy reading is the last training batch's mean
/// proxy score (held-out images are scored by the gold verifier only).
fn monitor_reading(
    step: usize,
    reward: RewardName,
    batch_reward: f64,
    held: &Accuracy,
    diversity: f64,
    kl: f64,
) -> Reading {
    Reading {
        step: step as u64,
        proxy: match reward {
            RewardName::ShapeEval => held.rate(),
            RewardName::ShapeEvalPartial => held.partial,
            _ => batch_reward,
        },
        gold: held.rate(),
        diversity,
        kl,
    }
}

/// ShapeEval on the evaluation set: train and held-out accuracy, and each held-out image's
/// partial credit in evaluation order (prompt-major, the same seeds for every model, so two
/// models' lists pair image for image).
fn evaluate_model<D: Module + Denoiser + ModuleDisplay>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    train: &TrainConfig,
    device: &Device,
) -> Result<(Accuracy, Accuracy, Vec<f64>)> {
    let verdicts = evaluate_detailed(
        model,
        config,
        train.eval_seeds,
        SampleOptions {
            steps: train.eval_steps,
            guidance: 3.0,
        },
        device,
    )?;
    let (train_acc, held_acc) = accuracies(&verdicts);
    let held_scores = verdicts
        .iter()
        .filter(|v| v.heldout)
        .map(|v| v.result.partial_credit)
        .collect();
    Ok((train_acc, held_acc, held_scores))
}

/// Grid prompts × `seeds` samples, and their same-prompt diversity.
fn grid_and_diversity<D: Module + Denoiser + ModuleDisplay>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    seeds: usize,
    steps: usize,
    device: &Device,
) -> Result<(Vec<Image>, f64)> {
    let mut prompts = Vec::new();
    let mut ids = Vec::new();
    let mut groups = Vec::new();
    for s in 0..seeds {
        for (g, p) in GRID_PROMPTS.iter().enumerate() {
            prompts.push(p.to_string());
            ids.push(10_000 + (g * seeds + s) as u64);
            groups.push(g as u64);
        }
    }
    let options = SampleOptions {
        steps,
        guidance: 3.0,
    };
    let images = generate(model, config, &prompts, &ids, 7, options, device)?;
    let refs: Vec<&Image> = images.iter().collect();
    let t = images_to_tensor(&refs, device)?;
    let diversity = same_prompt_diversity(&t, &groups)?;
    Ok((images, diversity))
}

/// The training reward: ShapeEval (pass or partial credit) or the proxy reward model, loaded on
/// the autodiff device without trainable parameters (its gradient reaches the images only).
fn build_reward(config: &TrainConfig, device: &Device) -> Result<Box<dyn Reward>> {
    Ok(match config.reward {
        RewardName::ShapeEval => Box::new(ShapeEvalReward::new(ShapeEvalMode::Pass)),
        RewardName::ShapeEvalPartial => {
            Box::new(ShapeEvalReward::new(ShapeEvalMode::PartialCredit))
        }
        RewardName::Proxy => {
            let (_, proxy) = ProxyReward::load(&config.reward_model, &device.clone().autodiff())
                .map_err(|e| {
                    TrainError::config(
                        "reward_model",
                        format!("{}: {e}", config.reward_model.display()),
                    )
                })?;
            Box::new(proxy.no_grad())
        }
        other => {
            return Err(TrainError::config(
                "reward",
                format!(
                    "{other:?} judges real images: it needs a Stable Diffusion model \
                     directory in `model`, not a Shapes-world model"
                ),
            ));
        }
    })
}

pub(crate) fn build_algorithm(config: &TrainConfig, prompts: &[String]) -> Result<Algorithm> {
    if config.algorithm.is_backprop() {
        return Ok(Algorithm::Backprop(config.backprop.clone()));
    }
    if config.algorithm == AlgorithmName::Sdpo {
        return Ok(Algorithm::Sdpo(Sdpo::new(
            config.sdpo.clone(),
            prompts.to_vec(),
        )?));
    }
    Ok(Algorithm::Online(match config.algorithm {
        AlgorithmName::FlowGrpo => Box::new(FlowGrpo::new(config.flow_grpo.clone())?),
        AlgorithmName::DenseGrpo => Box::new(DenseGrpo::new(config.dense_grpo.clone())?),
        AlgorithmName::DdpoSf | AlgorithmName::DdpoIs => {
            let variant = if config.algorithm == AlgorithmName::DdpoSf {
                DdpoVariant::Sf
            } else {
                DdpoVariant::Is
            };
            Box::new(Ddpo::new(
                DdpoConfig {
                    variant,
                    ..config.ddpo.clone()
                },
                prompts.to_vec(),
            )?)
        }
        AlgorithmName::Dpok => Box::new(Dpok::new(config.dpok.clone(), prompts.to_vec())?),
        AlgorithmName::Sdpo | AlgorithmName::Draft | AlgorithmName::AlignProp => {
            unreachable!("handled above")
        }
    }))
}

fn train_sampler(
    config: &TrainConfig,
    model: &ShapesModelConfig,
) -> Result<Box<dyn Sampler + Send + Sync>> {
    let s = if model.is_flow() {
        SamplerConfig::FlowSde {
            num_steps: config.train_steps,
            shift: 1.0,
            noise_level: config.noise_level,
            window: config.sde_window,
        }
    } else {
        SamplerConfig::Ddim {
            num_train_timesteps: model.num_train_timesteps,
            beta_schedule: align_samplers::BetaSchedule::ddpm_linear(),
            num_steps: config.train_steps,
            spacing: align_samplers::TimestepSpacing::Leading { offset: 1 },
            eta: config.noise_level,
            final_alpha: align_samplers::FinalAlpha::One,
            clip_sample: Some(1.0),
        }
    };
    Ok(s.build()?)
}

#[allow(clippy::too_many_arguments)]
fn train_model<D: Module + Denoiser + ModuleDisplay>(
    base: TextToImage<D>,
    model_config: &ShapesModelConfig,
    config: &TrainConfig,
    resume: bool,
    observer: &SharedObserver,
    device: &Device,
) -> Result<Report> {
    let started = Instant::now();
    let inner_model = base.valid();
    // LoRA's A factors are drawn from the device RNG: seed it so a run is reproducible.
    device.clone().autodiff().seed(config.seed);
    let policy = apply_lora(
        base,
        &LoraConfig::new()
            .with_rank(config.lora.rank)
            .with_alpha(config.lora.alpha),
    )
    .map_err(|e| TrainError::config("lora", e.to_string()))?;
    let reference = with_lora_scale(policy.clone(), 0.0).no_grad();
    let tok = Tokenizer::new();
    let split = Split::standard();
    let prompts: Vec<String> = split
        .all_specs(SplitPart::Train)
        .iter()
        .map(|s| s.to_string())
        .collect();
    let tokens = prompts
        .iter()
        .map(|p| encode_prompt(&tok, p))
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(&config.out).map_err(|e| TrainError::io(&config.out, e))?;
    // Refuse to overwrite a run before spending minutes on the base evaluation.
    let runner = open_runner(config.runner.clone(), &config.out, resume)?;
    // Load the reward before spending minutes on the base evaluation.
    let reward = build_reward(config, device)?;
    let seeds = 4;
    let mut report = Report {
        algorithm: format!("{:?}", config.algorithm),
        model: std::fs::canonicalize(&config.model)
            .unwrap_or_else(|_| config.model.clone())
            .display()
            .to_string(),
        ..Report::default()
    };
    // Base measurements, made once per run directory (a resumed run reuses `base.json`).
    let base_path = config.out.join("base.json");
    let saved: Option<Snapshot> = if resume {
        std::fs::read_to_string(&base_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    } else {
        None
    };
    report.base = match saved {
        Some(b) => b,
        None => {
            let (base_train, base_held, base_scores) =
                evaluate_model(&inner_model, model_config, config, device)?;
            let (grid, base_div) =
                grid_and_diversity(&inner_model, model_config, seeds, config.eval_steps, device)?;
            write_grid(
                &grid,
                GRID_PROMPTS.len(),
                &config.out.join("grid-before.png"),
            )?;
            let b = Snapshot {
                train_accuracy: base_train.rate(),
                heldout_accuracy: base_held.rate(),
                heldout_partial_credit: base_held.partial,
                diversity: base_div,
                diversity_ratio: 1.0,
                heldout_scores: base_scores,
                ..Snapshot::default()
            };
            let json = serde_json::to_string_pretty(&b).map_err(|e| TrainError::File {
                path: base_path.clone(),
                reason: e.to_string(),
            })?;
            crate::images::write_atomically(&base_path, &json)?;
            b
        }
    };
    let base_div = report.base.diversity;
    let msg = format!(
        "base: ShapeEval train {:.1}% held-out {:.1}%, diversity {base_div:.4}",
        100.0 * report.base.train_accuracy,
        100.0 * report.base.heldout_accuracy
    );
    observer.say(&msg);
    let mut monitor = config
        .monitor
        .init()
        .map_err(|e| TrainError::config("monitor", e.to_string()))?;
    if !resume && config.reward != RewardName::Proxy {
        // The base model is the monitor's baseline (with the proxy reward, the first
        // evaluation is: the base model's proxy score on held-out prompts is not measured).
        monitor
            .observe(Reading {
                step: 0,
                proxy: match config.reward {
                    RewardName::ShapeEval => report.base.heldout_accuracy,
                    _ => report.base.heldout_partial_credit,
                },
                gold: report.base.heldout_accuracy,
                diversity: report.base.diversity,
                kl: 0.0,
            })
            .map_err(|e| TrainError::config("monitor", e.to_string()))?;
    }
    let mut job = ShapesRl {
        algorithm: build_algorithm(config, &prompts)?,
        sampler: train_sampler(config, model_config)?,
        reference,
        prompts,
        tokens,
        null: tok.null_prompt(),
        reward,
        gold: ShapeEvalReward::new(ShapeEvalMode::PartialCredit),
        config: config.clone(),
        model_config: model_config.clone(),
        image_size: model_config.image_size,
        observer: observer.clone(),
        monitor,
    };
    observer.start(config.runner.iterations, 0);
    let outcome = runner.run(policy, &mut job, resume)?;
    observer.finish();
    let (trained, evaluated) = match outcome.ema {
        Some(average) => (average, "ema"),
        None => (outcome.model.valid(), "final"),
    };
    report.evaluated_weights = evaluated.to_string();
    let (train, held, scores) = evaluate_model(&trained, model_config, config, device)?;
    report.heldout_win_rate = WinRate::paired(&scores, &report.base.heldout_scores);
    let (grid, div) = grid_and_diversity(&trained, model_config, seeds, config.eval_steps, device)?;
    write_grid(
        &grid,
        GRID_PROMPTS.len(),
        &config.out.join("grid-after.png"),
    )?;
    let last = read_last_metrics(&config.out.join(align_core::runner::METRICS));
    report.final_ = Snapshot {
        train_accuracy: train.rate(),
        heldout_accuracy: held.rate(),
        heldout_partial_credit: held.partial,
        diversity: div,
        diversity_ratio: if base_div > 0.0 { div / base_div } else { 0.0 },
        kl: last.get("kl").copied().unwrap_or(0.0),
        reward_mean: last.get("reward_mean").copied().unwrap_or(0.0),
        heldout_scores: scores,
    };
    report.iterations = outcome.iterations;
    report.stopped = outcome.stopped;
    report.wall_seconds = started.elapsed().as_secs_f64();
    write_report(&config.out, &report)?;
    Ok(report)
}

/// Runs an online job from a configuration: Shapes models (`model.json`) or Stable Diffusion
/// directories (diffusers layout). Writes checkpoints, `metrics.jsonl`, `base.json`, the
/// before/after grids and `report.json` / `report.md` into `config.out`; `resume` continues
/// the run there from its last checkpoint (bit-identically).
///
/// # Errors
/// Bad configuration, a model that does not load or does not fit the algorithm, an existing
/// run without `resume`, run errors.
pub fn train(
    config: &TrainConfig,
    resume: bool,
    observer: &SharedObserver,
    device: &Device,
) -> Result<Report> {
    config.validate()?;
    if crate::sd::is_stable_diffusion_dir(&config.model) {
        return crate::sd::train_sd(config, resume, observer, device);
    }
    if !config.reward.is_shapes_world() {
        return Err(TrainError::Incompatible {
            model: config.model.clone(),
            reason: format!(
                "reward {:?} judges real images: `model` must be a Stable Diffusion directory \
                 (diffusers layout)",
                config.reward
            ),
        });
    }
    // Loaded on the autodiff device: its LoRA factors are the trainable parameters.
    let (model_config, model) = ShapesModel::load(&config.model, &device.clone().autodiff())?;
    let wants_flow = matches!(
        config.algorithm,
        AlgorithmName::FlowGrpo | AlgorithmName::DenseGrpo
    );
    let either = config.algorithm == AlgorithmName::Sdpo || config.algorithm.is_backprop();
    match model {
        ShapesModel::Dit(m) if wants_flow || either => {
            train_model(*m, &model_config, config, resume, observer, device)
        }
        ShapesModel::Unet(m) if wants_flow == model_config.is_flow() || either => {
            train_model(*m, &model_config, config, resume, observer, device)
        }
        _ => Err(TrainError::Incompatible {
            model: config.model.clone(),
            reason: format!(
                "{:?} needs a {} model",
                config.algorithm,
                if wants_flow {
                    "flow (DiT or flow UNet)"
                } else {
                    "DDPM (ε UNet)"
                }
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_backprop::Truncation;

    #[test]
    fn configs_reject_unknown_fields_and_bad_values_by_name() {
        let dir = std::env::temp_dir().join(format!("align-train-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "algorithm = \"flow-grpo\"\ngroup_sise = 4\n").unwrap();
        let err = TrainConfig::from_file(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml") && err.contains("group_sise"),
            "{err}"
        );
        std::fs::write(&bad, "[runner]\nlearning_rate = -1.0\n").unwrap();
        let err = TrainConfig::from_file(&bad).unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
        let good = dir.join("good.toml");
        std::fs::write(&good, "algorithm = \"ddpo-is\"\n[ddpo]\ninner_epochs = 2\n").unwrap();
        let c = TrainConfig::from_file(&good).unwrap();
        assert_eq!(c.algorithm, AlgorithmName::DdpoIs);
        assert_eq!(c.ddpo.inner_epochs, 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Flow-GRPO on the shipped flow UNet for two iterations: the adapters receive gradients (the
    /// optimizer steps), the KL to the adapters-off reference becomes positive, the run stays
    /// finite.
    #[test]
    fn flow_grpo_updates_the_shipped_flow_unet() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-train-dit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = TrainConfig {
            model: crate::test_model_dir("shapes-flow-unet"),
            out: dir.clone(),
            prompts_per_iteration: 2,
            group_size: 3,
            train_steps: 3,
            eval_steps: 2,
            ..TrainConfig::default()
        };
        config.runner.iterations = 2;
        config.runner.learning_rate = 1e-2;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let steps: f64 = rows
            .iter()
            .map(|r| r["optimizer_steps"].as_f64().unwrap())
            .sum();
        assert!(steps >= 1.0, "{text}");
        assert!(
            rows.iter().any(|r| r["kl"].as_f64().unwrap() > 0.0),
            "{text}"
        );
        assert!(
            rows.iter().all(|r| r["loss"].as_f64().unwrap().is_finite()),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// SDPO through `align train` on the shipped UNet: pairs, dense rewards, one optimizer
    /// step per trained step; an odd group size is refused by name.
    #[test]
    fn sdpo_trains_the_shipped_unet() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-train-sdpo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = TrainConfig {
            algorithm: AlgorithmName::Sdpo,
            model: crate::test_model_dir("shapes-unet"),
            out: dir.clone(),
            prompts_per_iteration: 1,
            group_size: 3,
            train_steps: 3,
            noise_level: 1.0,
            eval_steps: 2,
            ..TrainConfig::default()
        };
        config.runner.iterations = 1;
        let err = train(&config, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("group_size: 3 must be even"), "{err}");
        config.group_size = 2;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let row: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        // One optimizer step per stochastic step (DDIM's last step is deterministic here).
        assert_eq!(row["optimizer_steps"].as_f64(), Some(2.0), "{text}");
        assert!(row["loss"].as_f64().unwrap().is_finite());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// DenseGRPO through `align train` on a tiny DiT with noise calibration: dense gains
    /// drive the update, the calibrated scales are checkpointed and survive a resume, and a
    /// DDPM model is refused by name.
    #[test]
    fn dense_grpo_runs_checkpoints_its_noise_scales_and_resumes() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-train-dense-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tok = Tokenizer::new();
        let mc = ShapesModelConfig::preset(
            align_models::DenoiserKind::Dit,
            align_models::Preset::Tiny,
            tok.vocab_size(),
            tok.max_len(),
        );
        device.seed(3);
        let model = mc.init(&device).unwrap();
        let model_dir = dir.join("base");
        model.save(&mc, &model_dir).unwrap();
        let mut config = TrainConfig {
            algorithm: AlgorithmName::DenseGrpo,
            model: crate::test_model_dir("shapes-unet"),
            out: dir.join("run"),
            prompts_per_iteration: 2,
            group_size: 2,
            train_steps: 3,
            eval_steps: 2,
            ..TrainConfig::default()
        };
        config.dense_grpo.calibration = Some(align_rl::NoiseCalibration::default());
        config.dense_grpo.ode_steps = Some(1);
        config.runner.iterations = 2;
        let err = train(&config, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs a flow (DiT or flow UNet) model"),
            "{err}"
        );
        config.model = model_dir;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        let latest = std::fs::read_to_string(config.out.join("LATEST")).unwrap();
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(config.out.join(latest.trim()).join("state.json")).unwrap(),
        )
        .unwrap();
        let scales = state["job"]["algorithm"]["noise_scales"]
            .as_array()
            .unwrap_or_else(|| panic!("no noise scales in {state}"));
        assert_eq!(scales.len(), 3);
        config.runner.iterations = 3;
        let report = train(&config, true, &crate::observer::silent(), &device).unwrap();
        assert_eq!(report.iterations, 3);
        let text = std::fs::read_to_string(config.out.join("metrics.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 3);
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(row["loss"].as_f64().unwrap().is_finite(), "{line}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// DRaFT-K and AlignProp through `align train` on the shipped UNet and proxy reward
    /// model: exactly K steps are differentiated, the adapters move, the proxy and gold rewards
    /// are logged; a non-differentiable reward and an AlignProp without a random truncation are
    /// refused by name.
    #[test]
    fn draft_and_alignprop_backpropagate_the_proxy_reward() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-train-draft-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = TrainConfig {
            algorithm: AlgorithmName::Draft,
            model: crate::test_model_dir("shapes-unet"),
            out: dir.join("draft"),
            prompts_per_iteration: 2,
            group_size: 1,
            train_steps: 4,
            noise_level: 0.0,
            eval_steps: 2,
            ..TrainConfig::default()
        };
        config.backprop.truncation = Truncation::LastK(2);
        config.runner.iterations = 2;
        let err = train(&config, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("reward = \"proxy\""), "{err}");
        config.reward = RewardName::Proxy;
        config.reward_model = crate::test_model_dir("proxy-rm");
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        let text = std::fs::read_to_string(config.out.join("metrics.jsonl")).unwrap();
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(row["differentiated_steps"].as_f64(), Some(2.0), "{line}");
            assert!(row["grad_norm"].as_f64().unwrap() > 0.0, "{line}");
            let proxy = row["reward_mean"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&proxy), "{line}");
            assert!(row["gold_partial_credit"].as_f64().unwrap().is_finite());
        }
        config.algorithm = AlgorithmName::AlignProp;
        config.out = dir.join("alignprop");
        let err = train(&config, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("random_k"), "{err}");
        config.backprop.truncation = Truncation::RandomK { min: 0, max: 4 };
        config.backprop.reference_weight = 0.1;
        config.runner.iterations = 3;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        let text = std::fs::read_to_string(config.out.join("metrics.jsonl")).unwrap();
        let ks: Vec<f64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["differentiated_steps"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ks.len(), 3);
        assert!(ks.iter().all(|&k| (0.0..=4.0).contains(&k)), "{ks:?}");
        for l in text.lines() {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            let p = row["reference_penalty"].as_f64().unwrap();
            assert!(p.is_finite() && p >= 0.0, "{l}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let value: toml::Value = toml::from_str(&text).unwrap();
                let algorithm = value["algorithm"].as_str().unwrap().to_string();
                if ["diffusion-dpo", "mapo", "kto", "dspo"].contains(&algorithm.as_str()) {
                    crate::pref::PrefConfig::from_file(&path).unwrap();
                } else {
                    TrainConfig::from_file(&path).unwrap();
                }
                n += 1;
            }
        }
        assert!(n >= 11, "one config per algorithm in configs/, found {n}");
    }

    #[test]
    fn win_rate_pairs_only_lists_of_equal_length() {
        assert_eq!(WinRate::paired(&[], &[]), None);
        assert_eq!(WinRate::paired(&[0.5, 1.0], &[0.5]), None);
        let w = WinRate::paired(&[0.5, 1.0, 0.0, 0.7], &[0.5, 0.5, 0.5, 0.7]).unwrap();
        // Wins: tie ½, win 1, loss 0, tie ½.
        assert!((w.rate - 0.5).abs() < 1e-12);
        assert!(w.low <= w.rate && w.rate <= w.high);
        let all = WinRate::paired(&[1.0; 8], &[0.0; 8]).unwrap();
        assert_eq!((all.rate, all.low, all.high), (1.0, 1.0, 1.0));
    }

    /// A whole Flow-GRPO run on a tiny model for two iterations: report fields, grids,
    /// metrics and a checkpoint appear; resuming to three iterations continues the run.
    #[test]
    fn a_tiny_flow_grpo_run_writes_its_run_directory_and_resumes() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-train-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tok = Tokenizer::new();
        let mc = ShapesModelConfig::preset(
            align_models::DenoiserKind::Dit,
            align_models::Preset::Tiny,
            tok.vocab_size(),
            tok.max_len(),
        );
        device.seed(2);
        let model = mc.init(&device).unwrap();
        let model_dir = dir.join("base");
        model.save(&mc, &model_dir).unwrap();
        let mut config = TrainConfig {
            model: model_dir,
            out: dir.join("run"),
            prompts_per_iteration: 2,
            group_size: 2,
            train_steps: 2,
            ..TrainConfig::default()
        };
        config.runner.iterations = 2;
        config.runner.ema_decay = Some(0.9);
        config.eval_every = 2;
        config.eval_steps = 2;
        let report = train(&config, false, &crate::observer::silent(), &device).unwrap();
        assert_eq!(report.iterations, 2);
        assert_eq!(report.evaluated_weights, "ema");
        assert!(config.out.join("grid-iteration-000002.png").is_file());
        for f in [
            "report.json",
            "report.md",
            "grid-before.png",
            "grid-after.png",
            "metrics.jsonl",
            "LATEST",
        ] {
            assert!(config.out.join(f).is_file(), "{f}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(config.out.join("report.json")).unwrap())
                .unwrap();
        for field in ["algorithm", "wall_seconds"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        for field in ["heldout_accuracy", "train_accuracy"] {
            assert!(json["base"][field].is_number(), "base.{field}");
            assert!(json["final"][field].is_number(), "final.{field}");
        }
        assert!(json["final"]["diversity_ratio"].is_number());
        assert!(json["final"]["kl"].is_number());
        // Per-image held-out scores pair base and final image for image; their means are the
        // reported partial credits, and the win rate is computed from them.
        let heldout_images = align_data::EvalSet::standard().heldout.len() * config.eval_seeds;
        for snap in [&report.base, &report.final_] {
            assert_eq!(snap.heldout_scores.len(), heldout_images);
            let mean = snap.heldout_scores.iter().sum::<f64>() / heldout_images as f64;
            assert!((mean - snap.heldout_partial_credit).abs() < 1e-12);
        }
        let win = report
            .heldout_win_rate
            .expect("a fresh run reports its win rate");
        let (rate, low, high) =
            crate::win_rate::win_rate(&report.final_.heldout_scores, &report.base.heldout_scores);
        assert_eq!((win.rate, win.low, win.high), (rate, low, high));
        assert!(low <= rate && rate <= high);
        assert!(json["heldout_win_rate"]["rate"].is_number());
        let md = std::fs::read_to_string(config.out.join("report.md")).unwrap();
        assert!(md.contains("held-out gold win rate vs base"), "{md}");
        // A finished run is never overwritten: refused before any evaluation.
        let err = train(&config, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already holds a run"), "{err}");
        config.runner.iterations = 3;
        let report = train(&config, true, &crate::observer::silent(), &device).unwrap();
        assert_eq!(report.iterations, 3);
        let lines = std::fs::read_to_string(config.out.join("metrics.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 3);
        // The resumed run pairs its final images with the saved base scores.
        assert!(report.heldout_win_rate.is_some());
        let _ = std::fs::remove_dir_all(dir);
    }
}
