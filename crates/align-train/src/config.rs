//! The online job's configuration: `align train` TOML files.

use std::path::{Path, PathBuf};

use align_backprop::{DraftConfig, ReflLoss, Truncation};
use align_core::RunnerConfig;
use align_rewards::HackingMonitorConfig;
use align_rl::{
    DdpoConfig, DenseGrpoConfig, DiffusionNftConfig, DpokConfig, FlowGrpoConfig, G2rpoConfig,
    MixGrpoWindow, OpdConfig, SdpoConfig,
};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::{Result, TrainError};

/// Which online-RL algorithm a config runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlgorithmName {
    /// Flow-GRPO (flow model).
    FlowGrpo,
    /// DenseGRPO: Flow-GRPO with step-wise reward gains from ODE completions (flow model).
    DenseGrpo,
    /// DiffusionNFT: online RL on the forward process — rewards become optimality
    /// probabilities, and a flow-matching loss on the clean samples trains implicit positive
    /// and negative policies around the old (rollout) policy (`[diffusion_nft]`; flow model,
    /// any rollout sampler, `noise_level = 0` for ODE rollouts).
    DiffusionNft,
    /// G²RPO: singular stochastic sampling (each group shares its noise and ODE prefix and
    /// branches with one SDE step at a branch step, the only step trained) and
    /// multi-granularity advantages (ODE completions at several strides, group z-scores
    /// summed); one PPO step per branch step (`[g2rpo]`; flow model).
    G2rpo,
    /// On-policy distillation (OPD): the student (the model with its adapters, sampled with
    /// `train_steps` SDE steps) is pulled toward the teacher (the base model, adapters off,
    /// integrating each student step with `[opd] substeps` Euler steps) by the per-step
    /// closed-form Gaussian KL at the student's own states, summed over steps (flow model).
    Opd,
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
    /// ReFL: the reward of the one-step prediction `x̂₀` at a random late step, back-propagated
    /// through that step only (`[refl]`), either model.
    Refl,
    /// DRaFT-LV: DRaFT-1 averaged over `[draft_lv] copies` re-noisings of the final sample to
    /// the last step's input time (flow model).
    DraftLv,
    /// The reward's gradient through the whole deterministic flow rollout by the continuous
    /// adjoint (memory of one model call whatever the step count; flow model, `noise_level =
    /// 0`).
    Adjoint,
    /// Adjoint Matching: regress the control onto the lean adjoint of rollouts with the
    /// memoryless SDE (`noise_level = √2`), toward `p_base · exp(λ r)` (`[adjoint_matching]
    /// lambda`; flow model).
    AdjointMatching,
    /// D3PO: DPO on the denoising MDP from pairs of the policy's own rollouts (`group_size =
    /// 2`), the reward's verdict picking the preferred one (AI feedback), every trained step
    /// of the preferred trajectory preferred (`[d3po] beta`; either model).
    D3po,
    /// SPO: at every stochastic step, `[spo] candidates` next states from the shared state,
    /// ranked by the reward of each candidate's clean-sample prediction (the stand-in for the
    /// paper's step-aware preference model); DPO on the best vs the worst; a random candidate
    /// continues (either model).
    Spo,
}

impl AlgorithmName {
    /// Whether the algorithm back-propagates a differentiable reward through the sampler.
    pub fn is_backprop(self) -> bool {
        matches!(
            self,
            AlgorithmName::Draft
                | AlgorithmName::AlignProp
                | AlgorithmName::Refl
                | AlgorithmName::DraftLv
                | AlgorithmName::Adjoint
                | AlgorithmName::AdjointMatching
        )
    }

    /// Whether the algorithm needs a flow (velocity) model whatever the family of the others.
    pub fn needs_flow(self) -> bool {
        matches!(
            self,
            AlgorithmName::FlowGrpo
                | AlgorithmName::DenseGrpo
                | AlgorithmName::DiffusionNft
                | AlgorithmName::Opd
                | AlgorithmName::G2rpo
                | AlgorithmName::DraftLv
                | AlgorithmName::Adjoint
                | AlgorithmName::AdjointMatching
        )
    }

    /// Whether the algorithm trains on the rollout's stochastic steps through the shared
    /// PPO-style update (the algorithms `timestep_fraction` applies to).
    pub fn uses_step_update(self) -> bool {
        matches!(
            self,
            AlgorithmName::FlowGrpo
                | AlgorithmName::DenseGrpo
                | AlgorithmName::DdpoSf
                | AlgorithmName::DdpoIs
                | AlgorithmName::Dpok
                | AlgorithmName::D3po
        )
    }
}

/// Which sampler rolls out the training trajectories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutSampler {
    /// The family's default: the Flow-GRPO SDE on flow models, DDIM (η = `noise_level`) on ε
    /// models.
    #[default]
    Default,
    /// The Flow-GRPO marginal-preserving SDE, `σ_t = a √(t / (1 − t))` with `a = noise_level`
    /// (flow models).
    Sde,
    /// DanceGRPO's SDE (flow models): the Flow-GRPO step with a constant `σ_t = noise_level`
    /// (η; 0.3 in DanceGRPO's recipes).
    DanceSde,
    /// Coefficient-preserving sampling (flow models): `noise_level` is the noise fraction in
    /// `[0, 1]` (Flow-GRPO-Fast's public recipe: 0.8).
    Cps,
    /// DDIM with η = `noise_level` (ε models).
    Ddim,
    /// DDPM ancestral sampling with the posterior variance β̃ (ε models; `noise_level` unused).
    Ddpm,
}

/// Which parameters an online job trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finetune {
    /// LoRA adapters (the `[lora]` table) on the attention, text-context and feed-forward
    /// projections; everything else frozen. The reference policy is the model with its
    /// adapters off (no second copy of the weights).
    #[default]
    Lora,
    /// Every parameter of the pipeline (text encoder, denoiser, convolutions and norms
    /// included); `[lora]` is not read. The reference policy is a frozen copy of the base
    /// weights, so a run holds two copies of the model. On the small Shapes models this is
    /// what reaches the convolutions that draw the shapes, which LoRA leaves frozen.
    Full,
}

/// Which of the rollout's stochastic steps an iteration trains when `timestep_fraction < 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimestepOrder {
    /// A random subset, drawn per iteration from a generator keyed by the run seed and the
    /// iteration (shared by the batch). DDPO's code draws one permutation per sample.
    #[default]
    Random,
    /// The first steps of the rollout, as Flow-GRPO's code does (with 10 steps and 0.99 it
    /// skips the last step).
    First,
}

/// Which part of the evaluation set the reward-hacking monitor reads its gold from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorSplit {
    /// The held-out prompts (the default: the monitor as a diagnostic).
    #[default]
    HeldOut,
    /// The training prompts: what an early stop (`stop_on_hacking`) should read, so that the
    /// checkpoint a run ends on is never chosen by the held-out score.
    Train,
}

/// The `[refl]` table (ReFL).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReflSection {
    /// The late step is drawn uniformly `stop_min ..= stop_max` steps before the end (the
    /// official code: 1..=10 of 40 steps, the last quarter; default 1..=3 of 10).
    pub stop_min: usize,
    /// See `stop_min`.
    pub stop_max: usize,
    /// The map from reward to loss: `{ hinge = { margin = 2.0 } }` (official) or `"negative"`.
    pub loss: ReflLoss,
}

impl Default for ReflSection {
    fn default() -> Self {
        Self {
            stop_min: 1,
            stop_max: 3,
            loss: ReflLoss::Hinge { margin: 2.0 },
        }
    }
}

/// The `[draft_lv]` table (DRaFT-LV).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DraftLvSection {
    /// Re-noised copies of each final sample (the gradient is their mean).
    pub copies: usize,
}

impl Default for DraftLvSection {
    fn default() -> Self {
        Self { copies: 2 }
    }
}

/// The `[d3po]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct D3poSection {
    /// β of the DPO loss on per-step log-ratios (the official code's 0.1).
    pub beta: f64,
}

impl Default for D3poSection {
    fn default() -> Self {
        Self { beta: 0.1 }
    }
}

/// The `[spo]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoSection {
    /// β of the step-wise DPO loss (the checklist's code default 500, unverified against the
    /// paper).
    pub beta: f64,
    /// Candidates per step from the shared state (the public code's pool: 2; the SD 1.5
    /// paper config: 4).
    pub candidates: usize,
}

impl Default for SpoSection {
    fn default() -> Self {
        Self {
            beta: 500.0,
            candidates: 2,
        }
    }
}

/// The `[adjoint_matching]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdjointMatchingSection {
    /// The reward multiplier λ of the target `p_base · exp(λ r)` (the source documents give
    /// no default; 1 is ours).
    pub lambda: f64,
}

impl Default for AdjointMatchingSection {
    fn default() -> Self {
        Self { lambda: 1.0 }
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
    pub reward: crate::reward_spec::RewardSpec,
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
    /// Flow models, Flow-GRPO-Fast as in its public code: a window of `sde_window_size` SDE
    /// steps whose start is drawn per iteration (keyed by the run seed and the iteration)
    /// inside `sde_window_range = [lo, hi)`; 0 = off (then `sde_window` applies).
    pub sde_window_size: usize,
    /// See `sde_window_size`; absent = `[0, train_steps / 2)` (the public code's first half).
    pub sde_window_range: Option<(usize, usize)>,
    /// Flow models, MixGRPO: the `[mix_grpo]` table — a window of SDE (and trained) steps that
    /// slides from the noisy end toward the clean end as training proceeds (progressive, or
    /// with a decaying shift interval); the other steps are ODE steps. Absent = off.
    pub mix_grpo: Option<MixGrpoWindow>,
    /// The rollout sampler (`"sde"`, `"dance-sde"` or `"cps"` on flow models, `"ddim"` or
    /// `"ddpm"` on ε models); absent = the family's default (SDE / DDIM).
    pub rollout_sampler: RolloutSampler,
    /// Fraction of the rollout's stochastic steps each iteration trains (DDPO, DPOK, Flow-GRPO,
    /// DenseGRPO): `max(1, ⌊fraction · steps⌋)` steps chosen by `timestep_order`. Official
    /// defaults: DDPO 1.0, Flow-GRPO 0.99 (with the first steps).
    pub timestep_fraction: f64,
    /// Which steps `timestep_fraction` keeps.
    pub timestep_order: TimestepOrder,
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
    /// What the update trains: `"lora"` (default, the `[lora]` adapters) or `"full"` (every
    /// parameter; the reference is a frozen copy of the base).
    pub finetune: Finetune,
    /// LoRA adapters (`finetune = "lora"`).
    pub lora: LoraSection,
    /// LoRA-scale annealing: the `[lora_anneal]` table (`start`, `end`) — before each
    /// iteration the adapters are rescaled by the ratio of consecutive scales of a schedule
    /// running linearly from `start` to `end` ([`crate::LoraAnneal`]); with
    /// `[monitor] stop_on_hacking` the reward-hacking mitigation the source documents name.
    /// Absent = off.
    pub lora_anneal: Option<crate::LoraAnneal>,
    /// Start from this LoRA adapter instead of fresh adapters: a PEFT adapter directory (or
    /// its `adapter_model.safetensors`) or a diffusers `pytorch_lora_weights.safetensors`, as
    /// `align export` writes and other tools publish. Its rank, α and modules replace
    /// `[lora]`'s; the reference policy is the model the run starts from (base + adapter,
    /// merged into a frozen copy).
    pub lora_init: Option<PathBuf>,
    /// Optimizer, clipping, checkpoints, KL budget.
    pub runner: RunnerConfig,
    /// Reward-hacking monitor, consulted at each evaluation (`eval_every`); with
    /// `stop_on_hacking` a warning stops the run (after a checkpoint).
    pub monitor: HackingMonitorConfig,
    /// Shapes models: the evaluation part the monitor's gold reading comes from (`"held-out"`,
    /// the default, or `"train"` — use it for an early stop).
    pub monitor_split: MonitorSplit,
    /// Flow-GRPO hyper-parameters.
    pub flow_grpo: FlowGrpoConfig,
    /// DenseGRPO hyper-parameters.
    pub dense_grpo: DenseGrpoConfig,
    /// DiffusionNFT hyper-parameters (`algorithm = "diffusion-nft"`).
    pub diffusion_nft: DiffusionNftConfig,
    /// On-policy distillation's teacher substeps and minibatches (`algorithm = "opd"`).
    pub opd: OpdConfig,
    /// G²RPO's branch steps, granularities and clip (`algorithm = "g2rpo"`).
    pub g2rpo: G2rpoConfig,
    /// DDPO hyper-parameters (`variant` is set by `algorithm`).
    pub ddpo: DdpoConfig,
    /// DPOK hyper-parameters.
    pub dpok: DpokConfig,
    /// SDPO hyper-parameters.
    pub sdpo: SdpoConfig,
    /// DRaFT / AlignProp hyper-parameters (`reward_scale` also scales ReFL's and DRaFT-LV's
    /// losses).
    pub backprop: DraftConfig,
    /// ReFL's late-step range and loss (`algorithm = "refl"`).
    pub refl: ReflSection,
    /// DRaFT-LV's copies (`algorithm = "draft-lv"`).
    pub draft_lv: DraftLvSection,
    /// Adjoint Matching's λ (`algorithm = "adjoint-matching"`).
    pub adjoint_matching: AdjointMatchingSection,
    /// D3PO's β (`algorithm = "d3po"`).
    pub d3po: D3poSection,
    /// SPO's β and pool (`algorithm = "spo"`).
    pub spo: SpoSection,
    /// The training prompts, one per line (`#` starts a comment). Stable Diffusion models need
    /// it; Shapes models default to every prompt of the world's training split, and with a
    /// file train on its prompts only (each must be a Shapes prompt the verifier can judge).
    pub prompts: Option<PathBuf>,
    /// Stable Diffusion models: the evaluation prompts (default: `prompts`).
    pub eval_prompts: Option<PathBuf>,
    /// Shapes models with `prompts`: images per prompt of an extra ShapeEval before and after
    /// training on the run's own prompts (pass rate, partial credit and the paired gold win
    /// rate against the base in the report); `0` = off.
    pub prompt_eval_seeds: usize,
    /// Stable Diffusion models: image side in pixels (0 = the model's default, 512 for SD 1.5).
    pub image_size: usize,
    /// Samples per rollout call (and per decode): the iteration's
    /// `prompts_per_iteration × group_size` samples are rolled out this many at a time
    /// (0 = all at once), and the evaluations' prompts as many per call. Noise is keyed by
    /// global sample id, so the trajectories do not depend on it; it bounds the memory of the
    /// rollout and of the VAE decode. Not bounded by it: SDPO's per-step decodes, DenseGRPO's
    /// ODE completions and the reward-backprop update, which take the whole batch.
    pub rollout_batch: usize,
    /// Samples per backward pass of the policy-gradient update (DDPO, DPOK, Flow-GRPO,
    /// DenseGRPO; 0 = the whole minibatch): each optimizer minibatch is differentiated in
    /// chunks whose gradients are accumulated, so the optimizer sees the same gradient with
    /// one chunk's activations in memory.
    pub train_micro_batch: usize,
    /// Recompute memory-bound activations (norms, activations, element-wise ops) during the
    /// backward pass instead of keeping them (burn's balanced gradient checkpointing): less
    /// activation memory for more compute; the gradient is the same.
    pub gradient_checkpointing: bool,
    /// The aesthetic predictor's head (safetensors) for `reward = "aesthetic"`.
    pub aesthetic_head: Option<PathBuf>,
    /// Stable Diffusion 3 models: load the T5 text tower (default `true` when the directory
    /// has one). `false` feeds zeros in its place, as diffusers does without it: 4.7 B
    /// parameters less on the device, slightly worse prompt following.
    pub text_encoder_3: bool,
    /// Stable Diffusion 3 models: T5 tokens per prompt (1..=512; diffusers' default 256,
    /// Flow-GRPO's SD3 recipes 128).
    pub max_sequence_length: usize,
    /// Data parallelism (`align train --devices flex,ndarray`): the devices that share each
    /// iteration, e.g. `["cuda:0", "cuda:1"]`. One replica of the model per device; the batch
    /// is sharded by global sample id, each device rolls out and differentiates its shard,
    /// and one optimizer step (burn's `step_multi`) combines the devices' gradients — the
    /// same update as one device to floating-point rounding. The first device holds the
    /// model, the EMA and the checkpoints (the optimizer keeps each parameter's moments on a
    /// device `step_multi` picks for it). Empty (the default) or one
    /// entry: one device. For ddpo-sf, ddpo-is, dpok, flow-grpo, dense-grpo, draft and alignprop.
    pub devices: Vec<String>,
}

/// An `align-rl` error of the `[section]` table, its field named `section.field` (a top-level
/// field the section's check refers to, `train_steps`, keeps its own name).
fn section_error(section: &'static str) -> impl Fn(align_rl::RlError) -> TrainError {
    move |e| match e {
        align_rl::RlError::Config { field, reason } if field == "train_steps" => {
            TrainError::config("train_steps", reason)
        }
        align_rl::RlError::Config { field, reason } => {
            TrainError::config(format!("{section}.{field}"), reason)
        }
        other => TrainError::config(section, other.to_string()),
    }
}

/// The devices of a `devices` list, in order, each mapped by `to`.
pub(crate) fn parse_devices(
    names: &[String],
    to: impl Fn(&burn::tensor::Device) -> burn::tensor::Device,
) -> Result<Vec<burn::tensor::Device>> {
    let devices = names
        .iter()
        .map(|n| {
            align_core::select_device(Some(n))
                .map(|d| to(&d))
                .map_err(|e| TrainError::config("devices", format!("`{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(devices)
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            algorithm: AlgorithmName::FlowGrpo,
            model: PathBuf::new(),
            out: PathBuf::new(),
            seed: 0,
            reward: RewardName::ShapeEvalPartial.into(),
            reward_model: PathBuf::new(),
            prompts_per_iteration: 4,
            group_size: 8,
            train_steps: 10,
            noise_level: 0.7,
            guidance: 3.0,
            sde_window: None,
            sde_window_size: 0,
            sde_window_range: None,
            mix_grpo: None,
            rollout_sampler: RolloutSampler::Default,
            timestep_fraction: 1.0,
            timestep_order: TimestepOrder::Random,
            eval_every: None,
            eval_seeds: 1,
            monitor_seeds: 1,
            eval_steps: 0,
            finetune: Finetune::Lora,
            lora_init: None,
            rollout_batch: 0,
            train_micro_batch: 0,
            gradient_checkpointing: false,
            lora: LoraSection::default(),
            lora_anneal: None,
            runner: RunnerConfig {
                iterations: 10,
                learning_rate: 3e-4,
                ..RunnerConfig::default()
            },
            monitor: HackingMonitorConfig::default(),
            monitor_split: MonitorSplit::HeldOut,
            flow_grpo: FlowGrpoConfig::default(),
            dense_grpo: DenseGrpoConfig::default(),
            diffusion_nft: DiffusionNftConfig::default(),
            opd: OpdConfig::default(),
            g2rpo: G2rpoConfig::default(),
            ddpo: DdpoConfig::default(),
            dpok: DpokConfig::default(),
            sdpo: SdpoConfig::default(),
            backprop: DraftConfig::default(),
            refl: ReflSection::default(),
            draft_lv: DraftLvSection::default(),
            adjoint_matching: AdjointMatchingSection::default(),
            d3po: D3poSection::default(),
            spo: SpoSection::default(),
            prompts: None,
            eval_prompts: None,
            prompt_eval_seeds: 0,
            image_size: 0,
            aesthetic_head: None,
            text_encoder_3: true,
            max_sequence_length: 256,
            devices: Vec::new(),
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
    /// The training devices of a data-parallel run ([`TrainConfig::devices`], each made an
    /// autodiff device by [`TrainConfig::train_device`]); empty for a one-device run.
    ///
    /// # Errors
    /// A device name that is unknown or not compiled into this binary, named in `devices`.
    pub fn parallel_devices(&self) -> Result<Vec<burn::tensor::Device>> {
        let devices = parse_devices(&self.devices, |d| self.train_device(d))?;
        Ok(if devices.len() > 1 {
            devices
        } else {
            Vec::new()
        })
    }

    /// The device the model is loaded on: the first of `devices` when the list is set, else
    /// `device` (the command line's `--device`).
    ///
    /// # Errors
    /// As [`TrainConfig::parallel_devices`].
    pub fn home_device(&self, device: &burn::tensor::Device) -> Result<burn::tensor::Device> {
        Ok(parse_devices(&self.devices, Clone::clone)?
            .into_iter()
            .next()
            .unwrap_or_else(|| device.clone()))
    }

    /// The device the trainable model lives on: `device` with autodiff, and gradient
    /// checkpointing when `gradient_checkpointing` is set.
    pub fn train_device(&self, device: &burn::tensor::Device) -> burn::tensor::Device {
        let d = device.clone().autodiff();
        if self.gradient_checkpointing {
            d.gradient_checkpointing()
        } else {
            d
        }
    }

    /// The configuration as a run records it in its `config.toml`: every file path absolute,
    /// so that `align export --run`, `align sample --run` and a rerun find the files from any
    /// directory.
    pub fn for_the_record(&self) -> Self {
        let abs = |p: &Path| {
            if p.as_os_str().is_empty() {
                p.to_path_buf()
            } else {
                crate::adapt::absolute(p)
            }
        };
        let mut c = self.clone();
        c.model = abs(&c.model);
        c.out = abs(&c.out);
        c.reward_model = abs(&c.reward_model);
        for p in [
            &mut c.prompts,
            &mut c.eval_prompts,
            &mut c.aesthetic_head,
            &mut c.lora_init,
        ]
        .into_iter()
        .flatten()
        {
            *p = abs(p);
        }
        c
    }

    /// The periodic-evaluation interval in iterations (`0` = none): `eval_every` when the
    /// config sets it, else `⌈iterations / 4⌉` (the monitor on by default).
    pub fn eval_interval(&self) -> usize {
        self.eval_every
            .unwrap_or_else(|| self.runner.iterations.div_ceil(4).max(1))
    }

    /// The range a drawn SDE window's start lies in (`sde_window_range`, or the first half of
    /// the rollout).
    pub fn window_range(&self) -> (usize, usize) {
        self.sde_window_range
            .unwrap_or((0, (self.train_steps / 2).max(1)))
    }

    /// The SDE window of iteration `iteration`: MixGRPO's ([`MixGrpoWindow::window`]) with
    /// `[mix_grpo]`; `sde_window` when fixed; with
    /// `sde_window_size = n > 0`, `[s, s + n)` with `s` uniform in `lo ..= hi − n`, drawn from a
    /// generator keyed by the run seed and the iteration (so a resumed run draws the same).
    pub fn iteration_window(&self, iteration: usize) -> Option<(usize, usize)> {
        if let Some(mix) = &self.mix_grpo {
            return Some(mix.window(iteration, self.train_steps));
        }
        if self.sde_window_size == 0 {
            return self.sde_window;
        }
        let (lo, hi) = self.window_range();
        let n = self.sde_window_size;
        let span = (hi.saturating_sub(n).saturating_sub(lo) + 1) as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7364_6577_696e_646f);
        rng.set_stream(iteration as u64);
        let s = lo + (rng.next_u64() % span) as usize;
        Some((s, s + n))
    }

    /// The stochastic steps iteration `iteration` trains: all of `steps` when
    /// `timestep_fraction = 1`, else `max(1, ⌊fraction · |steps|⌋)` of them by
    /// `timestep_order` (a random subset keyed by the run seed and the iteration, or the
    /// first ones), in rollout order.
    pub fn train_step_subset(&self, steps: &[usize], iteration: usize) -> Vec<usize> {
        if self.timestep_fraction >= 1.0 || steps.is_empty() {
            return steps.to_vec();
        }
        let keep =
            ((self.timestep_fraction * steps.len() as f64).floor() as usize).clamp(1, steps.len());
        match self.timestep_order {
            TimestepOrder::First => steps[..keep].to_vec(),
            TimestepOrder::Random => {
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7473_7465_7073_7562);
                rng.set_stream(iteration as u64);
                // A partial Fisher–Yates shuffle of the indices, then rollout order.
                let mut idx: Vec<usize> = (0..steps.len()).collect();
                for i in 0..keep {
                    let j = i + (rng.next_u64() % (idx.len() - i) as u64) as usize;
                    idx.swap(i, j);
                }
                let mut chosen: Vec<usize> = idx[..keep].to_vec();
                chosen.sort_unstable();
                chosen.into_iter().map(|i| steps[i]).collect()
            }
        }
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
        let needs_model = self.reward.any_named(&|n| {
            matches!(
                n,
                RewardName::Proxy
                    | RewardName::Aesthetic
                    | RewardName::ClipScore
                    | RewardName::PickScore
            )
        });
        if needs_model && self.reward_model.as_os_str().is_empty() {
            return Err(TrainError::config(
                "reward_model",
                format!("reward {} needs the directory of its model", self.reward),
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
        let policy_gradient = matches!(
            self.algorithm,
            AlgorithmName::DdpoSf
                | AlgorithmName::DdpoIs
                | AlgorithmName::Dpok
                | AlgorithmName::FlowGrpo
                | AlgorithmName::DenseGrpo
        );
        if self.rollout_batch > 0 && self.algorithm == AlgorithmName::G2rpo {
            return bad(
                "rollout_batch",
                "g2rpo rolls out each branch step's whole batch at once (its groups share their \
                 noise) and does not use it (remove the field)"
                    .into(),
            );
        }
        if self.rollout_batch > 0 && self.algorithm == AlgorithmName::Spo {
            return bad(
                "rollout_batch",
                "SPO samples its candidate steps from shared states itself and does not use it \
                 (remove the field)"
                    .into(),
            );
        }
        if self.train_micro_batch > 0
            && !policy_gradient
            && !matches!(
                self.algorithm,
                AlgorithmName::DiffusionNft | AlgorithmName::G2rpo
            )
        {
            return bad(
                "train_micro_batch",
                format!(
                    "accumulates the update of ddpo-sf, ddpo-is, dpok, flow-grpo, dense-grpo, \
                     g2rpo and diffusion-nft; {:?} does not use it (remove the field)",
                    self.algorithm
                ),
            );
        }
        let draft = matches!(
            self.algorithm,
            AlgorithmName::Draft | AlgorithmName::AlignProp
        );
        if self.devices.len() > 1 && !policy_gradient && !draft {
            return bad(
                "devices",
                format!(
                    "data parallelism shards the updates of ddpo-sf, ddpo-is, dpok, flow-grpo, \
                     dense-grpo, draft and alignprop; {:?} runs on one device (list one device)",
                    self.algorithm
                ),
            );
        }
        if self.devices.len() > 1
            && self.prompts_per_iteration * self.group_size < self.devices.len()
        {
            return bad(
                "devices",
                format!(
                    "{} devices for a batch of {} samples: every device needs at least one",
                    self.devices.len(),
                    self.prompts_per_iteration * self.group_size
                ),
            );
        }
        if self.prompt_eval_seeds > 0 && self.prompts.is_none() {
            return bad(
                "prompt_eval_seeds",
                "evaluates the run's own prompts: name them with `prompts`".into(),
            );
        }
        let ode_ok = self.algorithm.is_backprop() || self.algorithm == AlgorithmName::DiffusionNft;
        if !(self.noise_level.is_finite()
            && (self.noise_level > 0.0 || ode_ok && self.noise_level == 0.0))
        {
            return bad(
                "noise_level",
                format!(
                    "{} must be positive (or 0 for diffusion-nft and the reward-backprop \
                     algorithms)",
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
        if self.sde_window_size > 0 {
            if self.sde_window.is_some() {
                return bad(
                    "sde_window_size",
                    "a drawn window (sde_window_size) and a fixed one (sde_window) exclude each \
                     other: set one"
                        .into(),
                );
            }
            let (lo, hi) = self.window_range();
            if !(lo < hi && hi <= self.train_steps && self.sde_window_size <= hi - lo) {
                return bad(
                    "sde_window_range",
                    format!(
                        "[{lo}, {hi}) must lie inside 0..{} and hold sde_window_size = {} steps",
                        self.train_steps, self.sde_window_size
                    ),
                );
            }
        } else if self.sde_window_range.is_some() {
            return bad(
                "sde_window_range",
                "has no effect without sde_window_size ≥ 1".into(),
            );
        }
        if let Some(anneal) = &self.lora_anneal {
            anneal.validate()?;
            if self.finetune == Finetune::Full {
                return bad(
                    "lora_anneal",
                    "scales the LoRA adapters' deltas; finetune = \"full\" has none".into(),
                );
            }
            if self.algorithm == AlgorithmName::DiffusionNft {
                return bad(
                    "lora_anneal",
                    "diffusion-nft anchors its loss on an old policy that the rescale would not \
                     follow: remove the table"
                        .into(),
                );
            }
            if self.devices.len() > 1 {
                return bad(
                    "lora_anneal",
                    "rescales the adapters between steps on one device; list one device".into(),
                );
            }
        }
        if let Some(mix) = &self.mix_grpo {
            if self.sde_window.is_some() || self.sde_window_size > 0 {
                return bad(
                    "mix_grpo",
                    "MixGRPO's sliding window and sde_window / sde_window_size exclude each \
                     other: set one"
                        .into(),
                );
            }
            if self.algorithm != AlgorithmName::FlowGrpo {
                return bad(
                    "mix_grpo",
                    format!(
                        "slides the SDE window of flow-grpo's rollouts; {:?} does not use it",
                        self.algorithm
                    ),
                );
            }
            mix.validate(self.train_steps)
                .map_err(section_error("mix_grpo"))?;
        }
        if !(self.timestep_fraction.is_finite()
            && self.timestep_fraction > 0.0
            && self.timestep_fraction <= 1.0)
        {
            return bad(
                "timestep_fraction",
                format!("{} must be in (0, 1]", self.timestep_fraction),
            );
        }
        if self.timestep_fraction < 1.0 && !self.algorithm.uses_step_update() {
            return bad(
                "timestep_fraction",
                format!(
                    "applies to ddpo-sf, ddpo-is, dpok, flow-grpo and dense-grpo, not {:?}",
                    self.algorithm
                ),
            );
        }
        if self.rollout_sampler == RolloutSampler::Cps && self.noise_level > 1.0 {
            return bad(
                "noise_level",
                format!(
                    "{} must be ≤ 1 with rollout_sampler = \"cps\" (it is the noise fraction)",
                    self.noise_level
                ),
            );
        }
        if self.algorithm == AlgorithmName::DenseGrpo
            && !matches!(
                self.rollout_sampler,
                RolloutSampler::Default | RolloutSampler::Sde
            )
        {
            return bad(
                "rollout_sampler",
                "dense-grpo calibrates the SDE's per-step noise: use the SDE (\"sde\")".into(),
            );
        }
        if self.algorithm == AlgorithmName::Refl {
            let r = &self.refl;
            if !(1 <= r.stop_min && r.stop_min <= r.stop_max && r.stop_max <= self.train_steps) {
                return bad(
                    "refl.stop_min",
                    format!(
                        "need 1 ≤ stop_min ≤ stop_max ≤ train_steps = {}, got {}..={}",
                        self.train_steps, r.stop_min, r.stop_max
                    ),
                );
            }
            if let ReflLoss::Hinge { margin } = r.loss
                && !margin.is_finite()
            {
                return bad("refl.loss", format!("margin {margin} must be finite"));
            }
        }
        if self.algorithm == AlgorithmName::G2rpo {
            self.g2rpo
                .validate(self.train_steps)
                .map_err(section_error("g2rpo"))?;
            if self.sde_window.is_some() || self.sde_window_size > 0 || self.mix_grpo.is_some() {
                return bad(
                    "sde_window",
                    "g2rpo places its one SDE step itself (its branch steps): remove the window"
                        .into(),
                );
            }
            if !matches!(
                self.rollout_sampler,
                RolloutSampler::Default | RolloutSampler::Sde | RolloutSampler::DanceSde
            ) {
                return bad(
                    "rollout_sampler",
                    "g2rpo branches with the flow SDE: \"sde\" or \"dance-sde\"".into(),
                );
            }
        }
        if self.algorithm == AlgorithmName::Opd {
            self.opd.validate().map_err(section_error("opd"))?;
            if self.opd.minibatches > self.prompts_per_iteration * self.group_size {
                return bad(
                    "opd.minibatches",
                    "more minibatches than samples per iteration".into(),
                );
            }
        }
        if self.algorithm == AlgorithmName::DiffusionNft
            && self.diffusion_nft.minibatches > self.prompts_per_iteration * self.group_size
        {
            return bad(
                "diffusion_nft.minibatches",
                "more minibatches than samples per iteration".into(),
            );
        }
        if self.algorithm == AlgorithmName::DiffusionNft {
            self.diffusion_nft
                .validate()
                .map_err(section_error("diffusion_nft"))?;
        }
        if self.algorithm == AlgorithmName::DraftLv && self.draft_lv.copies == 0 {
            return bad("draft_lv.copies", "must be ≥ 1".into());
        }
        if self.algorithm == AlgorithmName::Adjoint && self.noise_level != 0.0 {
            return bad(
                "noise_level",
                format!(
                    "{} must be 0 for adjoint: the continuous adjoint re-integrates the \
                     deterministic flow ODE",
                    self.noise_level
                ),
            );
        }
        if self.algorithm == AlgorithmName::AdjointMatching {
            let a = align_backprop::MEMORYLESS_NOISE_LEVEL;
            if (self.noise_level - a).abs() > 1e-6 {
                return bad(
                    "noise_level",
                    format!(
                        "{} must be √2 = {a} for adjoint-matching (the memoryless SDE)",
                        self.noise_level
                    ),
                );
            }
            if self.sde_window.is_some() || self.sde_window_size > 0 {
                return bad(
                    "sde_window",
                    "adjoint-matching needs every step stochastic: remove the window".into(),
                );
            }
            let l = self.adjoint_matching.lambda;
            if !(l.is_finite() && l > 0.0) {
                return bad("adjoint_matching.lambda", format!("{l} must be positive"));
            }
        }
        if matches!(
            self.algorithm,
            AlgorithmName::Adjoint | AlgorithmName::AdjointMatching
        ) && !matches!(
            self.rollout_sampler,
            RolloutSampler::Default | RolloutSampler::Sde
        ) {
            return bad(
                "rollout_sampler",
                format!("{:?} rolls out with the flow SDE (\"sde\")", self.algorithm),
            );
        }
        if self.algorithm == AlgorithmName::D3po {
            if self.group_size != 2 {
                return bad(
                    "group_size",
                    format!(
                        "{} must be 2 for D3PO (it compares the two rollouts of a prompt)",
                        self.group_size
                    ),
                );
            }
            let b = self.d3po.beta;
            if !(b.is_finite() && b > 0.0) {
                return bad("d3po.beta", format!("{b} must be positive"));
            }
        }
        if self.algorithm == AlgorithmName::Spo {
            if self.spo.candidates < 2 {
                return bad("spo.candidates", "must be ≥ 2 (a pair needs two)".into());
            }
            let b = self.spo.beta;
            if !(b.is_finite() && b > 0.0) {
                return bad("spo.beta", format!("{b} must be positive"));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(fraction: f64, order: TimestepOrder, seed: u64) -> TrainConfig {
        TrainConfig {
            timestep_fraction: fraction,
            timestep_order: order,
            seed,
            ..TrainConfig::default()
        }
    }

    proptest! {
        /// `timestep_fraction` keeps `max(1, ⌊f · n⌋)` distinct steps of the rollout, in
        /// rollout order; "first" keeps a prefix; the draw is a function of (seed, iteration).
        #[test]
        fn the_trained_steps_are_a_subset_of_the_expected_size(
            n in 1usize..40,
            f in 0.01f64..=1.0,
            seed in any::<u64>(),
            it in 0usize..1000,
            offset in 0usize..5,
        ) {
            let steps: Vec<usize> = (offset..offset + n).collect();
            let expected = if f >= 1.0 { n } else { ((f * n as f64).floor() as usize).max(1) };
            for order in [TimestepOrder::Random, TimestepOrder::First] {
                let c = config(f, order, seed);
                let chosen = c.train_step_subset(&steps, it);
                prop_assert_eq!(chosen.len(), expected);
                prop_assert!(chosen.windows(2).all(|w| w[0] < w[1]), "{:?}", chosen);
                prop_assert!(chosen.iter().all(|s| steps.contains(s)));
                prop_assert_eq!(&chosen, &c.train_step_subset(&steps, it));
                if order == TimestepOrder::First {
                    prop_assert_eq!(&chosen[..], &steps[..expected]);
                }
            }
        }

        /// A drawn window has `sde_window_size` steps and lies inside its range.
        #[test]
        fn drawn_windows_lie_in_their_range(
            lo in 0usize..5,
            extra in 0usize..6,
            size in 1usize..5,
            seed in any::<u64>(),
            it in 0usize..1000,
        ) {
            let hi = lo + size + extra;
            let c = TrainConfig {
                train_steps: hi + 1,
                sde_window_size: size,
                sde_window_range: Some((lo, hi)),
                seed,
                ..TrainConfig::default()
            };
            let (a, b) = c.iteration_window(it).expect("a drawn window");
            prop_assert_eq!(b - a, size);
            prop_assert!(lo <= a && b <= hi, "[{}, {}) outside [{}, {})", a, b, lo, hi);
            prop_assert_eq!(c.iteration_window(it), Some((a, b)));
        }
    }

    /// Over many iterations the random subset reaches every step about equally often, and
    /// the drawn window takes every start of its range (the draws are not stuck).
    #[test]
    fn the_draws_cover_their_choices() {
        let c = config(0.3, TimestepOrder::Random, 7);
        let steps: Vec<usize> = (0..10).collect();
        let mut counts = [0usize; 10];
        for it in 0..3000 {
            for s in c.train_step_subset(&steps, it) {
                counts[s] += 1;
            }
        }
        // 3 of 10 per iteration: 900 expected per step; ±15 % is > 7 standard deviations.
        assert!(
            counts.iter().all(|&k| (765..=1035).contains(&k)),
            "{counts:?}"
        );
        let w = TrainConfig {
            train_steps: 10,
            sde_window_size: 2,
            ..TrainConfig::default()
        };
        // Default range: the first half, [0, 5): starts 0..=3.
        let starts: std::collections::BTreeSet<usize> = (0..200)
            .map(|it| w.iteration_window(it).unwrap().0)
            .collect();
        assert_eq!(starts.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        // Without a drawn window the fixed one applies to every iteration.
        let fixed = TrainConfig {
            sde_window: Some((2, 6)),
            ..TrainConfig::default()
        };
        assert_eq!(fixed.iteration_window(17), Some((2, 6)));
        assert_eq!(TrainConfig::default().iteration_window(3), None);
    }

    /// Every new field's bad values are refused by name.
    #[test]
    fn bad_new_fields_are_named() {
        let base = TrainConfig {
            out: "o".into(),
            train_steps: 10,
            ..TrainConfig::default()
        };
        let err = |c: TrainConfig| c.validate_job().unwrap_err().to_string();
        let mut c = base.clone();
        c.sde_window_size = 2;
        c.sde_window = Some((0, 2));
        assert!(err(c).starts_with("sde_window_size:"));
        let mut c = base.clone();
        c.sde_window_size = 4;
        c.sde_window_range = Some((0, 3));
        assert!(err(c).starts_with("sde_window_range:"));
        let mut c = base.clone();
        c.sde_window_range = Some((0, 3));
        assert!(err(c).starts_with("sde_window_range:"));
        for f in [0.0, -0.5, 1.5, f64::NAN] {
            let mut c = base.clone();
            c.timestep_fraction = f;
            assert!(err(c).starts_with("timestep_fraction:"), "{f}");
        }
        let mut c = base.clone();
        c.algorithm = AlgorithmName::Sdpo;
        c.group_size = 2;
        c.timestep_fraction = 0.5;
        assert!(err(c).starts_with("timestep_fraction:"));
        let mut c = base.clone();
        c.rollout_sampler = RolloutSampler::Cps;
        c.noise_level = 1.2;
        assert!(err(c).starts_with("noise_level:"));
        let mut c = base.clone();
        c.algorithm = AlgorithmName::DenseGrpo;
        c.rollout_sampler = RolloutSampler::Cps;
        assert!(err(c).starts_with("rollout_sampler:"));
        let mut c = base.clone();
        c.algorithm = AlgorithmName::Refl;
        c.refl.stop_max = 11;
        assert!(err(c).starts_with("refl.stop_min:"));
        let mut c = base.clone();
        c.algorithm = AlgorithmName::DraftLv;
        c.draft_lv.copies = 0;
        assert!(err(c).starts_with("draft_lv.copies:"));
        let mut c = base.clone();
        c.algorithm = AlgorithmName::Adjoint;
        assert!(err(c).starts_with("noise_level:"));
        let mut c = base.clone();
        c.algorithm = AlgorithmName::AdjointMatching;
        assert!(err(c.clone()).starts_with("noise_level:"));
        c.noise_level = align_backprop::MEMORYLESS_NOISE_LEVEL;
        c.adjoint_matching.lambda = 0.0;
        assert!(err(c.clone()).starts_with("adjoint_matching.lambda:"));
        c.adjoint_matching.lambda = 1.0;
        c.sde_window = Some((0, 2));
        assert!(err(c).starts_with("sde_window:"));
        // MixGRPO's window: exclusive with the other windows, flow-grpo only, sized to fit.
        let mix: TrainConfig = toml::from_str(
            "out = \"o\"\n[mix_grpo]\nsize = 3\nshift_every = 2\ndecay = { linear = { min = 1, max = 4 } }",
        )
        .unwrap();
        mix.validate_job().unwrap();
        assert_eq!(mix.iteration_window(0), Some((0, 3)));
        assert_eq!(mix.iteration_window(4), Some((1, 4)));
        let mut c = mix.clone();
        c.sde_window = Some((0, 2));
        assert!(err(c).starts_with("mix_grpo:"));
        let mut c = mix.clone();
        c.algorithm = AlgorithmName::DenseGrpo;
        assert!(err(c).starts_with("mix_grpo:"));
        let mut c = mix.clone();
        c.mix_grpo.as_mut().unwrap().size = 9;
        assert!(err(c).starts_with("mix_grpo.size:"));
        let mut c = mix.clone();
        c.train_steps = 2;
        assert!(err(c).starts_with("train_steps:"));
        // LoRA-scale annealing: positive scales, adapters, one device.
        let mut c = base.clone();
        c.lora_anneal = Some(crate::LoraAnneal {
            start: 1.0,
            end: 0.0,
        });
        assert!(err(c.clone()).starts_with("lora_anneal.end:"));
        c.lora_anneal = Some(crate::LoraAnneal::default());
        c.validate_job().unwrap();
        c.finetune = Finetune::Full;
        assert!(err(c.clone()).starts_with("lora_anneal:"));
        c.finetune = Finetune::Lora;
        c.devices = vec!["flex".into(), "flex".into()];
        assert!(err(c).starts_with("lora_anneal:"));
        // DiffusionNFT: its table's fields by name, and ODE rollouts allowed.
        let mut c = base.clone();
        c.algorithm = AlgorithmName::DiffusionNft;
        c.noise_level = 0.0;
        c.validate_job().unwrap();
        c.diffusion_nft.beta = 0.0;
        assert!(err(c.clone()).starts_with("diffusion_nft.beta:"));
        c.diffusion_nft.beta = 1.0;
        c.diffusion_nft.timestep_fraction = 1.5;
        assert!(err(c).starts_with("diffusion_nft.timestep_fraction:"));
        let mut c = base.clone();
        c.noise_level = 0.0;
        assert!(err(c).starts_with("noise_level:"), "Flow-GRPO needs noise");
        // The defaults are valid, and so is a drawn window of the public recipe (3 of the
        // first 5 of 10 steps) with CPS.
        base.validate_job().unwrap();
        let mut c = base.clone();
        c.sde_window_size = 3;
        c.rollout_sampler = RolloutSampler::Cps;
        c.noise_level = 0.8;
        c.validate_job().unwrap();
    }
}
