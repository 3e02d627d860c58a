//! The online job's configuration: `align train` TOML files.

use std::path::{Path, PathBuf};

use align_backprop::{DraftConfig, Truncation};
use align_core::RunnerConfig;
use align_rewards::HackingMonitorConfig;
use align_rl::{DdpoConfig, DenseGrpoConfig, DpokConfig, FlowGrpoConfig, SdpoConfig};

use crate::error::{Result, TrainError};

/// Which online-RL algorithm a config runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlgorithmName {
    /// Flow-GRPO (flow model).
    FlowGrpo,
    /// DenseGRPO: Flow-GRPO with step-wise reward gains from ODE completions (flow model).
    DenseGrpo,
    /// DDPO, score-function estimator (UNet).
    DdpoSf,
    /// DDPO, importance sampling with PPO-clip (UNet).
    DdpoIs,
    /// DPOK (UNet).
    Dpok,
    /// SDPO: dense x̂₀ rewards, squared pair loss (either model; `group_size` must be even).
    Sdpo,
    /// DRaFT / DRaFT-K: reward backprop through the last K sampler steps (`[backprop]
    /// truncation`), differentiable reward (`reward = "proxy"`), either model.
    Draft,
    /// AlignProp: DRaFT with a random truncation length per update (`truncation = { random_k =
    /// { min, max } }`), either model.
    AlignProp,
}

impl AlgorithmName {
    /// Whether the algorithm back-propagates a differentiable reward through the sampler.
    pub fn is_backprop(self) -> bool {
        matches!(self, AlgorithmName::Draft | AlgorithmName::AlignProp)
    }
}

/// Which gold reward to optimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardName {
    /// ShapeEval pass/fail.
    ShapeEval,
    /// ShapeEval partial credit (fraction of attributes right).
    ShapeEvalPartial,
    /// The learned proxy reward model (`reward_model`): differentiable, imperfect.
    Proxy,
    /// Stable Diffusion models: the LAION aesthetic predictor (`aesthetic_head`) on the CLIP
    /// model in `reward_model`.
    Aesthetic,
    /// Stable Diffusion models: CLIP score (`100 · max(cos, 0)`) with the CLIP model in
    /// `reward_model`.
    ClipScore,
    /// Stable Diffusion models: PickScore-style `exp(logit_scale) · cos` with the CLIP model in
    /// `reward_model` (e.g. a local PickScore_v1).
    PickScore,
    /// DDPO's JPEG compressibility (`−kB` at quality 95).
    JpegCompressibility,
    /// DDPO's JPEG incompressibility (`kB`).
    JpegIncompressibility,
}

impl RewardName {
    /// Whether the reward has a gradient to the pixels (the reward-backprop algorithms need
    /// one).
    pub fn is_differentiable(self) -> bool {
        matches!(
            self,
            RewardName::Proxy
                | RewardName::Aesthetic
                | RewardName::ClipScore
                | RewardName::PickScore
        )
    }

    /// Whether the reward judges Shapes-world prompts (ShapeEval, the proxy model).
    pub fn is_shapes_world(self) -> bool {
        matches!(
            self,
            RewardName::ShapeEval | RewardName::ShapeEvalPartial | RewardName::Proxy
        )
    }
}

/// The `[lora]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    /// Rank.
    pub rank: usize,
    /// α.
    pub alpha: f64,
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 8.0,
        }
    }
}

/// An `align train` configuration file (TOML). Every field has a default.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Algorithm.
    pub algorithm: AlgorithmName,
    /// Base model directory.
    pub model: PathBuf,
    /// Run directory.
    pub out: PathBuf,
    /// Run seed (prompts, noise, minibatch order).
    pub seed: u64,
    /// Reward.
    pub reward: RewardName,
    /// The proxy reward model's directory (`reward = "proxy"`).
    pub reward_model: PathBuf,
    /// Distinct prompts per iteration.
    pub prompts_per_iteration: usize,
    /// Samples per prompt (the GRPO group size).
    pub group_size: usize,
    /// Sampler steps of training rollouts.
    pub train_steps: usize,
    /// Flow SDE noise level `a` (flow models) or DDIM η (UNet).
    pub noise_level: f64,
    /// Classifier-free guidance scale of rollouts and re-scoring.
    pub guidance: f64,
    /// Flow models: train only SDE steps `[start, end)` of the rollout; the others are ODE
    /// steps ("Flow-GRPO-Fast"). `None` = every step stochastic.
    pub sde_window: Option<(usize, usize)>,
    /// Periodic evaluation — the reward-hacking monitor's readings — every N iterations;
    /// `0` turns it off (only before and after). Absent: on, four times per run (every
    /// `⌈iterations / 4⌉` iterations), with [`monitor_seeds`](Self::monitor_seeds) seeds.
    pub eval_every: Option<usize>,
    /// Evaluation seeds per prompt of the before/after evaluations.
    pub eval_seeds: usize,
    /// Seeds per prompt of the periodic evaluations (Shapes models; default 1, so that the
    /// monitor stays cheap: one image per evaluation prompt).
    pub monitor_seeds: usize,
    /// Sampler steps of evaluations and grids (0 = the family's default: 40 Euler / 50 DDIM).
    pub eval_steps: usize,
    /// LoRA adapters.
    pub lora: LoraSection,
    /// Optimizer, clipping, checkpoints, KL budget.
    pub runner: RunnerConfig,
    /// Reward-hacking monitor, consulted at each evaluation (`eval_every`); with
    /// `stop_on_hacking` a warning stops the run (after a checkpoint).
    pub monitor: HackingMonitorConfig,
    /// Flow-GRPO hyper-parameters.
    pub flow_grpo: FlowGrpoConfig,
    /// DenseGRPO hyper-parameters.
    pub dense_grpo: DenseGrpoConfig,
    /// DDPO hyper-parameters (`variant` is set by `algorithm`).
    pub ddpo: DdpoConfig,
    /// DPOK hyper-parameters.
    pub dpok: DpokConfig,
    /// SDPO hyper-parameters.
    pub sdpo: SdpoConfig,
    /// DRaFT / AlignProp hyper-parameters.
    pub backprop: DraftConfig,
    /// Stable Diffusion models: the training prompts, one per line (`#` starts a comment).
    pub prompts: Option<PathBuf>,
    /// Stable Diffusion models: the evaluation prompts (default: `prompts`).
    pub eval_prompts: Option<PathBuf>,
    /// Stable Diffusion models: image side in pixels (0 = the model's default, 512 for SD 1.5).
    pub image_size: usize,
    /// The aesthetic predictor's head (safetensors) for `reward = "aesthetic"`.
    pub aesthetic_head: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            algorithm: AlgorithmName::FlowGrpo,
            model: PathBuf::new(),
            out: PathBuf::new(),
            seed: 0,
            reward: RewardName::ShapeEvalPartial,
            reward_model: PathBuf::new(),
            prompts_per_iteration: 4,
            group_size: 8,
            train_steps: 10,
            noise_level: 0.7,
            guidance: 3.0,
            sde_window: None,
            eval_every: None,
            eval_seeds: 1,
            monitor_seeds: 1,
            eval_steps: 0,
            lora: LoraSection::default(),
            runner: RunnerConfig {
                iterations: 10,
                learning_rate: 3e-4,
                ..RunnerConfig::default()
            },
            monitor: HackingMonitorConfig::default(),
            flow_grpo: FlowGrpoConfig::default(),
            dense_grpo: DenseGrpoConfig::default(),
            ddpo: DdpoConfig::default(),
            dpok: DpokConfig::default(),
            sdpo: SdpoConfig::default(),
            backprop: DraftConfig::default(),
            prompts: None,
            eval_prompts: None,
            image_size: 0,
            aesthetic_head: None,
        }
    }
}

/// Reads a TOML configuration and checks it; errors name the file (and the field).
///
/// # Errors
/// [`TrainError::ConfigFile`]: an unreadable file, TOML syntax, an unknown field, or a value
/// `validate` refuses.
pub fn read_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    validate: impl Fn(&T) -> Result<()>,
) -> Result<T> {
    let file = |reason: String| TrainError::ConfigFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
    let config: T = toml::from_str(&text).map_err(|e| file(e.to_string().trim().to_string()))?;
    validate(&config).map_err(|e| file(e.to_string()))?;
    Ok(config)
}

impl TrainConfig {
    /// The periodic-evaluation interval in iterations (`0` = none): `eval_every` when the
    /// config sets it, else `⌈iterations / 4⌉` (the monitor on by default).
    pub fn eval_interval(&self) -> usize {
        self.eval_every
            .unwrap_or_else(|| self.runner.iterations.div_ceil(4).max(1))
    }

    /// Reads and checks a TOML file; errors name the file and the field. `out` may be left
    /// out (a front end can set it, as `align train --out` does); [`TrainConfig::validate`]
    /// (which [`crate::train`] calls) then requires it.
    ///
    /// # Errors
    /// Unreadable file, TOML errors, unknown fields, invalid values.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_toml(path, |c: &Self| {
            let mut named = c.clone();
            if named.out.as_os_str().is_empty() {
                named.out = PathBuf::from("out");
            }
            named.validate()
        })
    }

    /// Checks the values serde cannot.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming the first invalid field.
    pub fn validate(&self) -> Result<()> {
        if self.model.as_os_str().is_empty() {
            return Err(TrainError::config("model", "no model directory given"));
        }
        let needs_model = matches!(
            self.reward,
            RewardName::Proxy
                | RewardName::Aesthetic
                | RewardName::ClipScore
                | RewardName::PickScore
        );
        if needs_model && self.reward_model.as_os_str().is_empty() {
            return Err(TrainError::config(
                "reward_model",
                format!("reward {:?} needs the directory of its model", self.reward),
            ));
        }
        if self.algorithm.is_backprop() && !self.reward.is_differentiable() {
            return Err(TrainError::config(
                "reward",
                format!(
                    "{:?} back-propagates the reward: it needs a differentiable one (reward = \"proxy\" \
                     for Shapes models; aesthetic, clip-score or pick-score for Stable Diffusion)",
                    self.algorithm
                ),
            ));
        }
        self.validate_job()
    }

    /// Checks the fields a job on any pipeline uses (everything but `reward`, which names the
    /// reward of the command-line jobs: [`crate::train_pipeline`] takes the reward itself).
    ///
    /// # Errors
    /// [`TrainError::Config`] naming the first invalid field.
    pub fn validate_job(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Err(TrainError::config(field, reason));
        if self.out.as_os_str().is_empty() {
            return bad("out", "no run directory given".into());
        }
        if self.prompts_per_iteration == 0 || self.group_size == 0 {
            return bad(
                "prompts_per_iteration",
                "must be ≥ 1 (and so must group_size)".into(),
            );
        }
        if self.train_steps == 0 {
            return bad("train_steps", "must be ≥ 1".into());
        }
        let backprop = self.algorithm.is_backprop();
        if !(self.noise_level.is_finite()
            && (self.noise_level > 0.0 || backprop && self.noise_level == 0.0))
        {
            return bad(
                "noise_level",
                format!(
                    "{} must be positive (or 0 for draft / align-prop)",
                    self.noise_level
                ),
            );
        }
        if self.algorithm == AlgorithmName::AlignProp
            && !matches!(self.backprop.truncation, Truncation::RandomK { .. })
        {
            return bad(
                "backprop.truncation",
                "align-prop draws its truncation: set backprop.truncation = { random_k = { min = …, max = … } }"
                    .into(),
            );
        }
        self.backprop.validate().map_err(|e| match e {
            align_backprop::BackpropError::Config { field, reason } => {
                TrainError::config(format!("backprop.{field}"), reason)
            }
            other => TrainError::config("backprop", other.to_string()),
        })?;
        if !(self.guidance.is_finite() && self.guidance >= 1.0) {
            return bad("guidance", format!("{} must be ≥ 1", self.guidance));
        }
        if let Some((a, b)) = self.sde_window
            && !(a < b && b <= self.train_steps)
        {
            return bad(
                "sde_window",
                format!(
                    "[{a}, {b}) must be a non-empty range inside 0..{}",
                    self.train_steps
                ),
            );
        }
        if self.algorithm == AlgorithmName::Sdpo && !self.group_size.is_multiple_of(2) {
            return bad(
                "group_size",
                format!(
                    "{} must be even for SDPO (it trains on pairs)",
                    self.group_size
                ),
            );
        }
        if self.eval_seeds == 0 {
            return bad("eval_seeds", "must be ≥ 1".into());
        }
        if self.monitor_seeds == 0 {
            return bad("monitor_seeds", "must be ≥ 1".into());
        }
        self.runner.validate().map_err(runner_field)
    }
}

/// A runner-configuration error as the `[runner]` field it names.
pub(crate) fn runner_field(e: align_core::CoreError) -> TrainError {
    match e {
        align_core::CoreError::Config { field, reason } => {
            TrainError::config(format!("runner.{field}"), reason)
        }
        other => TrainError::config("runner", other.to_string()),
    }
}
