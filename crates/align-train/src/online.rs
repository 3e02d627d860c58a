//! The online job on Shapes-world models: the shared job of [`crate::job`] on a
//! [`TextToImage`] pipeline with the training split's prompts, ShapeEval or the proxy reward,
//! and the exact ShapeEval evaluator (accuracies, win rate, diversity, the reward-hacking
//! monitor); and [`train`], which runs a configuration on a Shapes model or a Stable Diffusion
//! directory.

use std::path::Path;

use align_backprop::DraftConfig;
use align_core::{Control, CoreError, Denoiser, Metrics, Runner};
use align_data::{EvalSet, Image, Split, SplitPart, Tokenizer};
use align_models::{ShapesModel, ShapesModelConfig, TextToImage};
use align_rewards::{
    HackingMonitor, ProxyReward, Reading, Reward, ShapeEvalMode, ShapeEvalReward,
    same_prompt_diversity,
};
use align_rl::{
    Ddpo, DdpoConfig, DdpoVariant, DenseGrpo, Dpok, FlowGrpo, OnlineAlgorithm, RlError, Sdpo,
};
use align_samplers::{Sampler, SamplerConfig};
use burn::module::{Module, ModuleDisplay};
use burn::tensor::Device;

use crate::config::{AlgorithmName, RewardName, TrainConfig};
use crate::error::{Result, TrainError};
use crate::evaluator::Evaluator;
use crate::images::{images_to_tensor, write_grid};
use crate::job::{OnlineTask, train_pipeline};
use crate::observer::SharedObserver;
use crate::report::{PromptsEval, Report, Snapshot, WinRate, write_report};
use crate::shapes_eval::{
    Accuracy, GRID_PROMPTS, SampleOptions, accuracies, encode_prompt, evaluate_detailed,
    evaluate_set, generate,
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

/// A runner for the run directory `out`, holding its lock (a second process writing there is
/// refused) and refusing to start over an existing run unless it is resumed (both checked
/// before any expensive evaluation).
///
/// # Errors
/// An invalid runner configuration, an unreadable directory, a directory in use by another
/// process ([`align_core::CoreError::RunInUse`]), or an existing run without `resume`.
pub fn open_runner(config: align_core::RunnerConfig, out: &Path, resume: bool) -> Result<Runner> {
    let runner = Runner::new(config, out)
        .map_err(crate::config::runner_field)?
        .lock()?;
    if !resume && runner.holds_run() {
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
/// Mean and population standard deviation of `v` (0 and 0 when empty).
pub(crate) fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    (mean, std)
}

pub(crate) fn draft_metrics(values: &[f64], stats: &align_backprop::DraftStats) -> Metrics {
    let (mean, std) = mean_std(values);
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
    /// D3PO with its β.
    D3po(f64),
    /// SPO with its β and pool size.
    Spo(f64, usize),
    /// DiffusionNFT (its old policy lives in the job).
    Nft(align_rl::DiffusionNftConfig),
    /// On-policy distillation toward the reference (the teacher).
    Opd(align_rl::OpdConfig),
    /// G²RPO.
    G2rpo(align_rl::G2rpoConfig),
}

impl Algorithm {
    pub(crate) fn state(&self) -> serde_json::Value {
        match self {
            Algorithm::Online(a) => a.state(),
            Algorithm::Sdpo(s) => s.state(),
            Algorithm::Backprop(_)
            | Algorithm::D3po(_)
            | Algorithm::Spo(..)
            | Algorithm::Nft(_)
            | Algorithm::Opd(_)
            | Algorithm::G2rpo(_) => serde_json::Value::Null,
        }
    }
    pub(crate) fn restore(&mut self, state: &serde_json::Value) -> Result<(), RlError> {
        match self {
            Algorithm::Online(a) => a.restore(state),
            Algorithm::Sdpo(s) => s.restore(state),
            Algorithm::Backprop(_)
            | Algorithm::D3po(_)
            | Algorithm::Spo(..)
            | Algorithm::Nft(_)
            | Algorithm::Opd(_)
            | Algorithm::G2rpo(_) => Ok(()),
        }
    }
}

/// The exact ShapeEval evaluation of a Shapes run: train and held-out accuracy on
/// `eval_seeds` seeds per prompt, the held-out partial credits (paired for the win rate), the
/// same-prompt diversity of a grid, and the reward-hacking monitor at every periodic
/// evaluation.
struct ShapesEvaluator {
    model_config: ShapesModelConfig,
    config: TrainConfig,
    device: Device,
    monitor: HackingMonitor,
    base: Snapshot,
    /// The run's own prompts × `prompt_eval_seeds` (`None` = not measured).
    prompt_set: Option<EvalSet>,
}

impl ShapesEvaluator {
    /// Each image's (partial credit, pass) on the run's own prompts; empty when not measured.
    fn prompt_verdicts<D: Module + Denoiser + ModuleDisplay>(
        &self,
        model: &TextToImage<D>,
    ) -> Result<Vec<(f64, bool)>> {
        let Some(set) = &self.prompt_set else {
            return Ok(Vec::new());
        };
        let options = SampleOptions {
            steps: self.config.eval_steps,
            guidance: 3.0,
        };
        Ok(evaluate_set(
            model,
            &self.model_config,
            set,
            self.config.prompt_eval_seeds,
            options,
            &self.device,
        )?
        .iter()
        .map(|v| (v.result.partial_credit, v.result.pass))
        .collect())
    }
}

/// Pass rate and mean partial credit of `(partial credit, pass)` verdicts.
fn pass_and_partial(verdicts: &[(f64, bool)]) -> (f64, f64) {
    let n = verdicts.len().max(1) as f64;
    (
        verdicts.iter().filter(|v| v.1).count() as f64 / n,
        verdicts.iter().map(|v| v.0).sum::<f64>() / n,
    )
}

/// Grid seeds per prompt of the Shapes grids.
const GRID_SEEDS: usize = 4;

impl<D: Module + Denoiser + ModuleDisplay> Evaluator<TextToImage<D>> for ShapesEvaluator {
    fn base(
        &mut self,
        base: &TextToImage<D>,
        out: &Path,
        resume: bool,
        observer: &SharedObserver,
    ) -> Result<()> {
        // Base measurements, made once per run directory (a resumed run reuses `base.json`).
        let base_path = out.join("base.json");
        let saved: Option<Snapshot> = if resume {
            std::fs::read_to_string(&base_path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
        } else {
            None
        };
        let (mc, config, device) = (&self.model_config, &self.config, &self.device);
        self.base = match saved {
            Some(b) => b,
            None => {
                let inner = base.valid();
                let (train, held, scores) =
                    evaluate_model(&inner, mc, config, config.eval_seeds, device)?;
                let (grid, div) =
                    grid_and_diversity(&inner, mc, GRID_SEEDS, config.eval_steps, device)?;
                write_grid(&grid, GRID_PROMPTS.len(), &out.join("grid-before.png"))?;
                let b = Snapshot {
                    train_accuracy: train.rate(),
                    heldout_accuracy: held.rate(),
                    heldout_partial_credit: held.partial,
                    diversity: div,
                    diversity_ratio: 1.0,
                    heldout_scores: scores,
                    prompt_verdicts: self.prompt_verdicts(&inner)?,
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
        observer.say(&format!(
            "base: ShapeEval train {:.1}% held-out {:.1}%, diversity {:.4}",
            100.0 * self.base.train_accuracy,
            100.0 * self.base.heldout_accuracy,
            self.base.diversity
        ));
        if !self.base.prompt_verdicts.is_empty() {
            let (pass, partial) = pass_and_partial(&self.base.prompt_verdicts);
            observer.say(&format!(
                "base: ShapeEval on the run's prompts {:.1}% ({} images), partial credit {partial:.3}",
                100.0 * pass,
                self.base.prompt_verdicts.len()
            ));
        }
        if !resume && config.reward.named() != Some(RewardName::Proxy) {
            // The base model is the monitor's baseline (with the proxy reward, the first
            // evaluation is: the base model's proxy score on held-out prompts is not measured).
            self.monitor
                .observe(Reading {
                    step: 0,
                    proxy: match config.reward.named() {
                        Some(RewardName::ShapeEval) => self.base.heldout_accuracy,
                        _ => self.base.heldout_partial_credit,
                    },
                    gold: self.base.heldout_accuracy,
                    diversity: self.base.diversity,
                    kl: 0.0,
                })
                .map_err(|e| TrainError::config("monitor", e.to_string()))?;
        }
        Ok(())
    }

    fn periodic(
        &mut self,
        model: &TextToImage<D>,
        iteration: usize,
        metrics: &mut Metrics,
        observer: &SharedObserver,
    ) -> Result<Control> {
        let every = self.config.eval_interval();
        if every == 0 || !(iteration + 1).is_multiple_of(every) {
            return Ok(Control::Continue);
        }
        let valid = model.valid();
        let device = valid.text.devices()[0].clone();
        let (mc, config) = (&self.model_config, &self.config);
        let (train, held, _) = evaluate_model(&valid, mc, config, config.monitor_seeds, &device)?;
        let (grid, diversity) =
            grid_and_diversity(&valid, mc, GRID_SEEDS, config.eval_steps, &device)?;
        write_grid(
            &grid,
            GRID_PROMPTS.len(),
            &config
                .out
                .join(format!("grid-iteration-{:06}.png", iteration + 1)),
        )?;
        metrics.insert("eval_train_accuracy".into(), train.rate());
        metrics.insert("eval_heldout_accuracy".into(), held.rate());
        metrics.insert("eval_diversity".into(), diversity);
        observer.say(&format!(
            "iteration {}: ShapeEval train {:.1}% held-out {:.1}%, diversity {diversity:.4}",
            iteration + 1,
            100.0 * train.rate(),
            100.0 * held.rate()
        ));
        let verdict = self
            .monitor
            .observe(monitor_reading(
                iteration + 1,
                config.reward.named(),
                metrics.get("reward_mean").copied().unwrap_or(0.0),
                match config.monitor_split {
                    crate::config::MonitorSplit::HeldOut => &held,
                    crate::config::MonitorSplit::Train => &train,
                },
                diversity,
                metrics.get("kl").copied().unwrap_or(0.0),
            ))
            .map_err(|e| TrainError::config("monitor", e.to_string()))?;
        metrics.insert("hacking_warnings".into(), verdict.warnings.len() as f64);
        for w in &verdict.warnings {
            observer.say(&format!("warning: {w}"));
        }
        if verdict.stop {
            let reasons: Vec<String> = verdict.warnings.iter().map(|w| w.to_string()).collect();
            return Ok(Control::Stop(format!(
                "reward-hacking monitor: {}",
                reasons.join("; ")
            )));
        }
        Ok(Control::Continue)
    }

    fn finish(&mut self, trained: &TextToImage<D>, report: &mut Report, out: &Path) -> Result<()> {
        let (mc, config, device) = (&self.model_config, &self.config, &self.device);
        let (train, held, scores) = evaluate_model(trained, mc, config, config.eval_seeds, device)?;
        report.heldout_win_rate = WinRate::paired(&scores, &self.base.heldout_scores);
        let (grid, div) = grid_and_diversity(trained, mc, GRID_SEEDS, config.eval_steps, device)?;
        write_grid(&grid, GRID_PROMPTS.len(), &out.join("grid-after.png"))?;
        let base_div = self.base.diversity;
        report.base = self.base.clone();
        report.final_ = Snapshot {
            train_accuracy: train.rate(),
            heldout_accuracy: held.rate(),
            heldout_partial_credit: held.partial,
            diversity: div,
            diversity_ratio: if base_div > 0.0 { div / base_div } else { 0.0 },
            kl: report.final_.kl,
            reward_mean: report.final_.reward_mean,
            heldout_scores: scores,
            prompt_verdicts: self.prompt_verdicts(trained)?,
        };
        let (before, after) = (&self.base.prompt_verdicts, &report.final_.prompt_verdicts);
        let paired = |v: &[(f64, bool)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
        if let Some(win_rate) = WinRate::paired(&paired(after), &paired(before)) {
            let (base_accuracy, base_partial_credit) = pass_and_partial(before);
            let (final_accuracy, final_partial_credit) = pass_and_partial(after);
            report.run_prompts = Some(PromptsEval {
                images: after.len(),
                base_accuracy,
                final_accuracy,
                base_partial_credit,
                final_partial_credit,
                win_rate,
            });
        }
        Ok(())
    }

    fn write_report(&self, report: &Report, out: &Path) -> Result<()> {
        write_report(out, report)
    }

    fn state(&self) -> Result<serde_json::Value> {
        serde_json::to_value(&self.monitor)
            .map_err(|e| TrainError::config("monitor", format!("saving the monitor: {e}")))
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.monitor = serde_json::from_value(state.clone())
            .map_err(|e| TrainError::config("monitor", format!("checkpoint monitor state: {e}")))?;
        Ok(())
    }
}
/// A monitor reading from an evaluation (held-out or training part, `monitor_split`): the
/// optimized reward (proxy) against the gold pass rate, with diversity and KL.
/// With the learned proxy as the reward, the proxy reading is the last training batch's mean
/// proxy score (held-out images are scored by the gold verifier only).
fn monitor_reading(
    step: usize,
    reward: Option<RewardName>,
    batch_reward: f64,
    gold: &Accuracy,
    diversity: f64,
    kl: f64,
) -> Reading {
    let held = gold;
    Reading {
        step: step as u64,
        proxy: match reward {
            Some(RewardName::ShapeEval) => held.rate(),
            Some(RewardName::ShapeEvalPartial) => held.partial,
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
    seeds: usize,
    device: &Device,
) -> Result<(Accuracy, Accuracy, Vec<f64>)> {
    let verdicts = evaluate_detailed(
        model,
        config,
        seeds,
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
    config
        .reward
        .build(&|name| build_named_reward(config, name, device))
}

/// A built-in reward of the Shapes world.
fn build_named_reward(
    config: &TrainConfig,
    name: RewardName,
    device: &Device,
) -> Result<Box<dyn Reward>> {
    Ok(match name {
        RewardName::ShapeEval => Box::new(ShapeEvalReward::new(ShapeEvalMode::Pass)),
        RewardName::ShapeEvalPartial => {
            Box::new(ShapeEvalReward::new(ShapeEvalMode::PartialCredit))
        }
        RewardName::Proxy => {
            let (_, proxy) = ProxyReward::load(&config.reward_model, &config.train_device(device))
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
    if config.algorithm == AlgorithmName::D3po {
        return Ok(Algorithm::D3po(config.d3po.beta));
    }
    if config.algorithm == AlgorithmName::Spo {
        return Ok(Algorithm::Spo(config.spo.beta, config.spo.candidates));
    }
    if config.algorithm == AlgorithmName::DiffusionNft {
        config.diffusion_nft.validate()?;
        return Ok(Algorithm::Nft(config.diffusion_nft.clone()));
    }
    if config.algorithm == AlgorithmName::Opd {
        config.opd.validate()?;
        return Ok(Algorithm::Opd(config.opd.clone()));
    }
    if config.algorithm == AlgorithmName::G2rpo {
        config.g2rpo.validate(config.train_steps)?;
        return Ok(Algorithm::G2rpo(config.g2rpo.clone()));
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
        AlgorithmName::Sdpo
        | AlgorithmName::Draft
        | AlgorithmName::AlignProp
        | AlgorithmName::Refl
        | AlgorithmName::DraftLv
        | AlgorithmName::Adjoint
        | AlgorithmName::AdjointMatching
        | AlgorithmName::D3po
        | AlgorithmName::Spo
        | AlgorithmName::DiffusionNft
        | AlgorithmName::Opd
        | AlgorithmName::G2rpo => {
            unreachable!("handled above")
        }
    }))
}

/// The rollout sampler of a Shapes run (`rollout_sampler`, the family's default when absent),
/// with the fixed `sde_window` or, for a drawn window, iteration 0's (the job redraws it per
/// iteration: [`TrainConfig::iteration_window`]).
///
/// # Errors
/// A sampler or window of the other family (named by field), invalid sampler values.
pub(crate) fn train_sampler(
    config: &TrainConfig,
    model: &ShapesModelConfig,
) -> Result<Box<dyn Sampler + Send + Sync>> {
    use crate::config::RolloutSampler as R;
    let flow = model.is_flow();
    if !flow
        && (config.sde_window.is_some() || config.sde_window_size > 0 || config.mix_grpo.is_some())
    {
        return Err(TrainError::config(
            if config.sde_window.is_some() {
                "sde_window"
            } else if config.mix_grpo.is_some() {
                "mix_grpo"
            } else {
                "sde_window_size"
            },
            "is a flow-model option; this model is an ε (DDPM) UNet",
        ));
    }
    if config.algorithm.needs_flow() && !flow {
        return Err(TrainError::config(
            "algorithm",
            format!(
                "{:?} integrates or re-noises along the flow's path: it needs a flow model \
                 (DiT or flow UNet)",
                config.algorithm
            ),
        ));
    }
    let family_error = |name: &str| {
        Err(TrainError::config(
            "rollout_sampler",
            format!(
                "\"{name}\" is for {} models; this model is a {} model",
                if flow { "ε (DDPM)" } else { "flow" },
                if flow { "flow" } else { "ε (DDPM)" }
            ),
        ))
    };
    let window = config.iteration_window(0);
    let ddpm_schedule = || align_samplers::BetaSchedule::ddpm_linear();
    let s = match (config.rollout_sampler, flow) {
        (R::Default | R::Sde, true) => SamplerConfig::FlowSde {
            num_steps: config.train_steps,
            shift: 1.0,
            noise_level: config.noise_level,
            window,
        },
        (R::DanceSde, true) => SamplerConfig::DanceSde {
            num_steps: config.train_steps,
            shift: 1.0,
            noise_level: config.noise_level,
            window,
        },
        (R::Cps, true) => SamplerConfig::Cps {
            num_steps: config.train_steps,
            shift: 1.0,
            noise_level: config.noise_level,
            window,
        },
        (R::Default | R::Ddim, false) => SamplerConfig::Ddim {
            num_train_timesteps: model.num_train_timesteps,
            beta_schedule: ddpm_schedule(),
            num_steps: config.train_steps,
            spacing: align_samplers::TimestepSpacing::Leading { offset: 1 },
            eta: config.noise_level,
            final_alpha: align_samplers::FinalAlpha::One,
            clip_sample: Some(1.0),
        },
        (R::Ddpm, false) => SamplerConfig::Ddpm {
            num_train_timesteps: model.num_train_timesteps,
            beta_schedule: ddpm_schedule(),
            num_steps: config.train_steps,
            spacing: align_samplers::TimestepSpacing::Leading { offset: 1 },
            variance: align_samplers::DdpmVariance::FixedSmall,
            clip_sample: Some(1.0),
        },
        (R::Sde, false) => return family_error("sde"),
        (R::Cps, false) => return family_error("cps"),
        (R::DanceSde, false) => return family_error("dance-sde"),
        (R::Ddim, true) => return family_error("ddim"),
        (R::Ddpm, true) => return family_error("ddpm"),
    };
    s.build()
        .map_err(|e| TrainError::config("rollout_sampler", e.to_string()))
}

/// Salt of the Shapes runs' per-iteration prompt draw.
const SHAPES_PROMPT_SALT: u64 = 0x726c_7072_6f6d_7074;

fn train_model<D: Module + Denoiser + ModuleDisplay>(
    base: TextToImage<D>,
    model_config: &ShapesModelConfig,
    config: &TrainConfig,
    resume: bool,
    observer: &SharedObserver,
    device: &Device,
) -> Result<Report> {
    let tok = Tokenizer::new();
    let prompts: Vec<String> = match &config.prompts {
        Some(file) => {
            let list = crate::read_prompts(file)?;
            for p in &list {
                align_data::parse_prompt(p).map_err(|e| {
                    TrainError::config(
                        "prompts",
                        format!("{}: `{p}` is not a Shapes prompt: {e}", file.display()),
                    )
                })?;
            }
            list
        }
        None => Split::standard()
            .all_specs(SplitPart::Train)
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    for p in &prompts {
        encode_prompt(&tok, p)?;
    }
    let evaluator = ShapesEvaluator {
        model_config: model_config.clone(),
        config: config.clone(),
        device: device.clone(),
        monitor: config
            .monitor
            .init()
            .map_err(|e| TrainError::config("monitor", e.to_string()))?,
        base: Snapshot::default(),
        prompt_set: match config.prompt_eval_seeds {
            0 => None,
            seeds => Some(
                EvalSet::from_prompts(&Split::standard(), &prompts, seeds, 0)
                    .map_err(|e| TrainError::config("prompts", e.to_string()))?,
            ),
        },
    };
    let task = OnlineTask {
        pipeline: base,
        prompts,
        // Loaded before the base evaluation, so that a missing reward model fails fast.
        reward: build_reward(config, device)?,
        gold: Some(Box::new(ShapeEvalReward::new(ShapeEvalMode::PartialCredit))),
        sampler: train_sampler(config, model_config)?,
        sample_shape: [3, model_config.image_size, model_config.image_size],
        lora_targets: None,
        prompt_salt: SHAPES_PROMPT_SALT,
        flow_grid: None,
    };
    train_pipeline(task, Box::new(evaluator), config, resume, observer)
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
    // Data parallelism: the model lives on the first of `devices`.
    let home = config.home_device(device)?;
    let device = &home;
    if crate::sd3::is_sd3_dir(&config.model) {
        return crate::sd3::train_sd3(config, resume, observer, device);
    }
    let defaults = TrainConfig::default();
    for (field, set) in [
        (
            "text_encoder_3",
            config.text_encoder_3 != defaults.text_encoder_3,
        ),
        (
            "max_sequence_length",
            config.max_sequence_length != defaults.max_sequence_length,
        ),
    ] {
        if set {
            return Err(TrainError::config(
                field,
                "is a Stable Diffusion 3 option; `model` is not an SD3 directory",
            ));
        }
    }
    if crate::sd::is_stable_diffusion_dir(&config.model) {
        return crate::sd::train_sd(config, resume, observer, device);
    }
    if !config.reward.fits_shapes_models() {
        return Err(TrainError::Incompatible {
            model: config.model.clone(),
            reason: format!(
                "reward {} judges real images: `model` must be a Stable Diffusion directory \
                 (diffusers layout)",
                config.reward
            ),
        });
    }
    // Loaded on the autodiff device: its LoRA factors are the trainable parameters.
    let (model_config, model) = ShapesModel::load(&config.model, &config.train_device(device))?;
    let wants_flow = matches!(
        config.algorithm,
        AlgorithmName::FlowGrpo
            | AlgorithmName::DenseGrpo
            | AlgorithmName::DiffusionNft
            | AlgorithmName::Opd
            | AlgorithmName::G2rpo
    );
    let either = matches!(
        config.algorithm,
        AlgorithmName::Sdpo | AlgorithmName::D3po | AlgorithmName::Spo
    ) || config.algorithm.is_backprop();
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
    use crate::config::{Finetune, RolloutSampler};
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
        // No defaults point into this repository: the model and the run directory are named.
        std::fs::write(&bad, "algorithm = \"ddpo-is\"\n").unwrap();
        let err = TrainConfig::from_file(&bad).unwrap_err().to_string();
        assert!(err.contains("model:"), "{err}");
        // `out` may come from the command line, but a job needs it.
        std::fs::write(&bad, "model = \"m\"\nalgorithm = \"ddpo-is\"\n").unwrap();
        let c = TrainConfig::from_file(&bad).unwrap();
        assert!(c.validate().unwrap_err().to_string().starts_with("out:"));
        std::fs::write(&bad, "model = \"m\"\nout = \"o\"\nreward = \"proxy\"\n").unwrap();
        let err = TrainConfig::from_file(&bad).unwrap_err().to_string();
        assert!(err.contains("reward_model:"), "{err}");
        std::fs::write(
            &bad,
            "model = \"m\"\nout = \"o\"\n[runner]\nlearning_rate = -1.0\n",
        )
        .unwrap();
        let err = TrainConfig::from_file(&bad).unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
        // The memory settings are refused where the algorithm does not use them.
        for (text, field) in [
            ("algorithm = \"spo\"\nrollout_batch = 2\n", "rollout_batch:"),
            (
                "algorithm = \"draft\"\nnoise_level = 0.0\nreward = \"proxy\"\nreward_model = \"r\"\ntrain_micro_batch = 1\n",
                "train_micro_batch:",
            ),
            (
                "algorithm = \"sdpo\"\ntrain_micro_batch = 2\n",
                "train_micro_batch:",
            ),
        ] {
            std::fs::write(&bad, format!("model = \"m\"\nout = \"o\"\n{text}")).unwrap();
            let err = TrainConfig::from_file(&bad).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "model = \"m\"\nout = \"o\"\nalgorithm = \"ddpo-is\"\n[ddpo]\ninner_epochs = 2\n",
        )
        .unwrap();
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

    /// `finetune = "full"` trains every parameter — the first convolution's kernel, which LoRA
    /// leaves frozen, moves away from the base — and measures the KL against a frozen copy of the
    /// base (positive once the policy has moved); with LoRA the same kernel stays bit for bit the
    /// base's. The kernel is read from the checkpoint file and the base model's safetensors, not
    /// through the job.
    #[test]
    fn full_finetuning_trains_the_convolutions_that_lora_leaves_frozen() {
        let device = align_core::test_device();
        let model = crate::test_model_dir("shapes-flow-unet");
        let base =
            crate::safetensors_f32(&model.join("model.safetensors"), "denoiser.conv_in.weight");
        for (finetune, moves) in [(Finetune::Full, true), (Finetune::Lora, false)] {
            let dir = std::env::temp_dir().join(format!(
                "align-train-full-{finetune:?}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let mut config = TrainConfig {
                model: model.clone(),
                out: dir.clone(),
                prompts_per_iteration: 2,
                group_size: 3,
                train_steps: 3,
                eval_steps: 2,
                eval_every: Some(0),
                finetune,
                ..TrainConfig::default()
            };
            config.runner.iterations = 1;
            config.runner.learning_rate = 1e-3;
            config.runner.checkpoint_every = 1;
            train(&config, false, &crate::observer::silent(), &device).unwrap();
            let trained =
                crate::burnpack_f32(&dir.join("checkpoint-000001/model.bpk"), "conv_in.weight");
            assert_eq!(trained.len(), base.len());
            let changed = trained.iter().zip(&base).any(|(a, b)| a != b);
            assert_eq!(changed, moves, "{finetune:?}: conv_in changed = {changed}");
            let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
            let row: serde_json::Value =
                serde_json::from_str(text.lines().next().unwrap()).unwrap();
            assert!(row["kl"].as_f64().unwrap() > 0.0, "{finetune:?}: {text}");
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The rows of a run's `metrics.jsonl`.
    fn metric_rows(out: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `prompts = FILE` on a Shapes model trains on the file's prompts only: two runs with the
    /// same seed and different one-prompt files see different rewards (the default draws from
    /// the training split, which would make them equal); a line that is not a Shapes prompt is
    /// refused, naming the field, the file and the line.
    #[test]
    fn a_prompt_file_replaces_the_training_split() {
        let device = align_core::test_device();
        let dir = crate::fresh_test_dir("align-train-prompts");
        let mut first_rewards = Vec::new();
        for (name, prompt) in [
            ("a", "one red circle"),
            ("b", "two blue triangles and one yellow square"),
        ] {
            let file = dir.join(format!("{name}.txt"));
            std::fs::write(&file, format!("# one prompt\n{prompt}\n")).unwrap();
            let mut config = TrainConfig {
                model: crate::test_model_dir("shapes-flow-unet"),
                out: dir.join(name),
                prompts: Some(file),
                prompts_per_iteration: 2,
                group_size: 2,
                train_steps: 3,
                eval_steps: 2,
                eval_every: Some(0),
                ..TrainConfig::default()
            };
            config.runner.iterations = 1;
            // The first run also measures ShapeEval on its own prompt (1 prompt × 2 seeds).
            if name == "a" {
                config.prompt_eval_seeds = 2;
            }
            let report = train(&config, false, &crate::observer::silent(), &device).unwrap();
            first_rewards.push(metric_rows(&config.out)[0]["reward_mean"].as_f64().unwrap());
            match (name, &report.run_prompts) {
                ("a", Some(r)) => {
                    assert_eq!(r.images, 2);
                    for x in [
                        r.base_accuracy,
                        r.final_accuracy,
                        r.win_rate.low,
                        r.win_rate.high,
                    ] {
                        assert!((0.0..=1.0).contains(&x), "{r:?}");
                    }
                    assert!(
                        r.win_rate.low <= r.win_rate.rate && r.win_rate.rate <= r.win_rate.high
                    );
                    let md = std::fs::read_to_string(config.out.join("report.md")).unwrap();
                    assert!(md.contains("the run's own prompts (2 images)"), "{md}");
                }
                ("b", None) => {}
                (_, other) => panic!("run {name}: {other:?}"),
            }
        }
        assert_ne!(first_rewards[0], first_rewards[1], "{first_rewards:?}");
        // Measuring the run's prompts needs them named.
        let config = TrainConfig {
            model: crate::test_model_dir("shapes-flow-unet"),
            out: dir.join("none"),
            prompt_eval_seeds: 2,
            ..TrainConfig::default()
        };
        let err = train(&config, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("prompt_eval_seeds:"), "{err}");
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "one red circle\nfour purple hexagons\n").unwrap();
        let config = TrainConfig {
            model: crate::test_model_dir("shapes-flow-unet"),
            out: dir.join("bad"),
            prompts: Some(bad),
            ..TrainConfig::default()
        };
        let err = train(&config, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("prompts:")
                && err.contains("bad.txt")
                && err.contains("four purple hexagons"),
            "{err}"
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
        config.reward = RewardName::Proxy.into();
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

    /// ReFL, DRaFT-LV, the continuous adjoint and Adjoint Matching through `align train` on
    /// the shipped flow UNet and the proxy reward model: one step carries gradient for ReFL (a
    /// late step inside its stop range) and DRaFT-LV (the last), every step for the adjoint;
    /// the adapters move, the proxy stays a probability; DRaFT-LV on an ε model is refused by
    /// name.
    #[test]
    fn refl_draft_lv_and_the_adjoints_backpropagate_the_proxy() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-train-refl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = TrainConfig {
            algorithm: AlgorithmName::Refl,
            model: crate::test_model_dir("shapes-flow-unet"),
            out: dir.join("refl"),
            reward: RewardName::Proxy.into(),
            reward_model: crate::test_model_dir("proxy-rm"),
            prompts_per_iteration: 2,
            group_size: 1,
            train_steps: 4,
            noise_level: 0.0,
            eval_steps: 2,
            eval_every: Some(0),
            ..TrainConfig::default()
        };
        config.refl.stop_min = 1;
        config.refl.stop_max = 2;
        config.runner.iterations = 4;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        let rows = |out: &Path| -> Vec<serde_json::Value> {
            std::fs::read_to_string(out.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        for row in rows(&config.out) {
            let k = row["differentiated_step"].as_f64().unwrap();
            // stop 1..=2 steps before the end of 4: steps 2 or 3.
            assert!(k == 2.0 || k == 3.0, "{row}");
            assert_eq!(row["differentiated_steps"].as_f64(), Some(1.0));
            assert!(row["grad_norm"].as_f64().unwrap() > 0.0, "{row}");
            assert!((0.0..=1.0).contains(&row["reward_mean"].as_f64().unwrap()));
        }
        config.algorithm = AlgorithmName::DraftLv;
        config.out = dir.join("draft-lv");
        config.runner.iterations = 2;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        for row in rows(&config.out) {
            assert_eq!(row["differentiated_step"].as_f64(), Some(3.0), "{row}");
            assert!(row["grad_norm"].as_f64().unwrap() > 0.0, "{row}");
        }
        // The continuous adjoint: every step of the ODE rollout carries gradient.
        config.algorithm = AlgorithmName::Adjoint;
        config.out = dir.join("adjoint");
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        for row in rows(&config.out) {
            assert_eq!(row["differentiated_steps"].as_f64(), Some(4.0), "{row}");
            assert!(row["grad_norm"].as_f64().unwrap() > 0.0, "{row}");
        }
        // Adjoint Matching on memoryless-SDE rollouts: a finite regression loss, a gradient.
        config.algorithm = AlgorithmName::AdjointMatching;
        config.noise_level = align_backprop::MEMORYLESS_NOISE_LEVEL;
        config.out = dir.join("adjoint-matching");
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        for row in rows(&config.out) {
            let loss = row["adjoint_matching_loss"].as_f64().unwrap();
            assert!(loss.is_finite() && loss > 0.0, "{row}");
            assert!(row["grad_norm"].as_f64().unwrap() > 0.0, "{row}");
        }
        config.algorithm = AlgorithmName::DraftLv;
        config.noise_level = 0.0;
        config.model = crate::test_model_dir("shapes-unet");
        config.out = dir.join("draft-lv-eps");
        let err = train(&config, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DraftLv integrates or re-noises"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The rollout sampler, `timestep_fraction` and a drawn SDE window reach the update: on a
    /// tiny DiT, half the stochastic steps are trained; with CPS and a window of 2 drawn in
    /// [0, 3) the window's steps are the stochastic ones; DDPM rolls out the ε UNet; a sampler
    /// of the other family is refused by name.
    #[test]
    fn rollout_samplers_fractions_and_drawn_windows_reach_the_update() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-train-steps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tok = Tokenizer::new();
        let mc = ShapesModelConfig::preset(
            align_models::DenoiserKind::Dit,
            align_models::Preset::Tiny,
            tok.vocab_size(),
            tok.max_len(),
        );
        device.seed(5);
        let model = mc.init(&device).unwrap();
        let model_dir = dir.join("base");
        model.save(&mc, &model_dir).unwrap();
        let rows = |out: &Path| -> Vec<serde_json::Value> {
            std::fs::read_to_string(out.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let trained = |out: &Path| -> Vec<f64> {
            rows(out)
                .iter()
                .map(|r| r["trained_steps"].as_f64().unwrap())
                .collect()
        };
        let mut config = TrainConfig {
            model: model_dir,
            out: dir.join("all"),
            prompts_per_iteration: 2,
            group_size: 2,
            train_steps: 4,
            eval_steps: 2,
            eval_every: Some(0),
            ..TrainConfig::default()
        };
        config.runner.iterations = 2;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        let all = trained(&config.out);
        assert!(all.iter().all(|&n| n == all[0] && n >= 2.0), "{all:?}");
        config.out = dir.join("half");
        config.timestep_fraction = 0.5;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        let half = trained(&config.out);
        assert!(
            half.iter().all(|&n| n == (all[0] * 0.5).floor()),
            "{half:?} of {all:?}"
        );
        config.out = dir.join("cps-window");
        config.timestep_fraction = 1.0;
        config.rollout_sampler = RolloutSampler::Cps;
        config.sde_window_size = 2;
        config.sde_window_range = Some((0, 3));
        config.runner.iterations = 3;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        for row in rows(&config.out) {
            let a = row["sde_window_start"].as_f64().unwrap();
            assert!(a == 0.0 || a == 1.0, "{row}");
            assert_eq!(row["sde_window_end"].as_f64(), Some(a + 2.0), "{row}");
            assert_eq!(row["trained_steps"].as_f64(), Some(2.0), "{row}");
            assert!(row["loss"].as_f64().unwrap().is_finite(), "{row}");
        }
        // MixGRPO's sliding window with DanceGRPO's constant-σ SDE and the KL reward: K = 4,
        // L = 2, a window of 2 moving every iteration: [0, 2), [1, 2), then rolled back to
        // [0, 2); the step KL behind the reward is logged.
        config.out = dir.join("mix-dance");
        config.rollout_sampler = RolloutSampler::DanceSde;
        config.noise_level = 0.3;
        config.sde_window_size = 0;
        config.sde_window_range = None;
        config.mix_grpo = Some(align_rl::MixGrpoWindow {
            size: 2,
            shift_every: 1,
            stride: 1,
            decay: align_rl::WindowDecay::Constant,
        });
        config.flow_grpo.kl_reward = 0.1;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        let step_kl: Vec<f64> = rows(&config.out)
            .iter()
            .map(|r| r["kl_reward_step_kl"].as_f64().unwrap())
            .collect();
        // (The tiny random DiT's adaLN-Zero output keeps its adapters from moving: the value
        // of a moved policy's step KL is checked in align-rl's exactness tests.)
        assert!(step_kl.iter().all(|&v| v == 0.0), "{step_kl:?}");
        let windows: Vec<(f64, f64, f64)> = rows(&config.out)
            .iter()
            .map(|r| {
                assert!(r["loss"].as_f64().unwrap().is_finite(), "{r}");
                (
                    r["sde_window_start"].as_f64().unwrap(),
                    r["sde_window_end"].as_f64().unwrap(),
                    r["trained_steps"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            windows,
            vec![(0.0, 2.0, 2.0), (1.0, 2.0, 1.0), (0.0, 2.0, 2.0)]
        );
        let mut eps = TrainConfig {
            algorithm: AlgorithmName::DdpoIs,
            model: crate::test_model_dir("shapes-unet"),
            out: dir.join("ddpm"),
            prompts_per_iteration: 1,
            group_size: 2,
            train_steps: 3,
            noise_level: 1.0,
            eval_steps: 2,
            eval_every: Some(0),
            rollout_sampler: RolloutSampler::Ddpm,
            ..TrainConfig::default()
        };
        eps.runner.iterations = 1;
        train(&eps, false, &crate::observer::silent(), &device).unwrap();
        let row = &rows(&eps.out)[0];
        assert!(row["trained_steps"].as_f64().unwrap() >= 1.0, "{row}");
        assert!(row["loss"].as_f64().unwrap().is_finite(), "{row}");
        eps.out = dir.join("cps-eps");
        eps.rollout_sampler = RolloutSampler::Cps;
        let err = train(&eps, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("rollout_sampler:"), "{err}");
        eps.out = dir.join("dance-eps");
        eps.rollout_sampler = RolloutSampler::DanceSde;
        let err = train(&eps, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("rollout_sampler:"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// D3PO through `align train` on the shipped ε UNet: pairs of each prompt's two rollouts,
    /// the DPO loss is ln 2 at the first iteration (policy = reference, checked against the
    /// closed form), one optimizer step per iteration with an untied pair; a group size other
    /// than 2 is refused by name.
    #[test]
    fn d3po_trains_on_pairs_of_its_own_rollouts() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-train-d3po-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = TrainConfig {
            algorithm: AlgorithmName::D3po,
            model: crate::test_model_dir("shapes-unet"),
            out: dir.clone(),
            prompts_per_iteration: 4,
            group_size: 3,
            train_steps: 3,
            noise_level: 1.0,
            eval_steps: 2,
            eval_every: Some(0),
            ..TrainConfig::default()
        };
        config.runner.iterations = 2;
        config.runner.learning_rate = 1e-2;
        let err = train(&config, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("group_size: 3 must be 2"), "{err}");
        config.group_size = 2;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let first = &rows[0];
        let pairs = first["d3po_pairs"].as_f64().unwrap();
        assert!((0.0..=4.0).contains(&pairs), "{first}");
        assert!(pairs >= 1.0, "every pair tied at this seed: {first}");
        let loss = first["loss"].as_f64().unwrap();
        assert!((loss - std::f64::consts::LN_2).abs() < 1e-5, "{first}");
        assert_eq!(first["optimizer_steps"].as_f64(), Some(1.0));
        assert!(first["grad_norm"].as_f64().unwrap() > 0.0, "{first}");
        assert!(rows.iter().all(|r| r["loss"].as_f64().unwrap().is_finite()));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// SPO through `align train` on the shipped ε UNet: at θ = ref the untied pairs' mean
    /// DPO loss is ln 2 (the closed form), an untied step moves the adapters; a pool of one
    /// candidate is refused by name.
    #[test]
    fn spo_prefers_candidate_steps_from_a_shared_state() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-train-spo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = TrainConfig {
            algorithm: AlgorithmName::Spo,
            model: crate::test_model_dir("shapes-unet"),
            out: dir.clone(),
            prompts_per_iteration: 4,
            group_size: 1,
            train_steps: 3,
            noise_level: 1.0,
            eval_steps: 2,
            eval_every: Some(0),
            ..TrainConfig::default()
        };
        config.spo.candidates = 1;
        config.runner.iterations = 2;
        let err = train(&config, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("spo.candidates"), "{err}");
        config.spo.candidates = 3;
        train(&config, false, &crate::observer::silent(), &device).unwrap();
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let first = &rows[0];
        assert!(
            first["spo_untied_fraction"].as_f64().unwrap() > 0.0,
            "every candidate tied at this seed: {first}"
        );
        let loss = first["loss"].as_f64().unwrap();
        assert!((loss - std::f64::consts::LN_2).abs() < 1e-5, "{first}");
        assert_eq!(first["optimizer_steps"].as_f64(), Some(1.0));
        assert!(first["grad_norm"].as_f64().unwrap() > 0.0, "{first}");
        assert!(rows.iter().all(|r| r["loss"].as_f64().unwrap().is_finite()));
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
                // A preference config is one whose algorithm names a preference loss (no
                // hand-kept list that a new loss could miss).
                let is_pref = value["algorithm"]
                    .clone()
                    .try_into::<crate::pref::PrefAlgorithm>()
                    .is_ok();
                if is_pref {
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
        config.eval_every = Some(2);
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
