//! `align`: post-train diffusion and flow-matching models toward a reward or preferences.
//!
//! Commands: `quickstart` (the main job), `train` (online RL and reward backprop from a TOML
//! config), `plot`, `pretrain`, `sample`, `eval`, `eval-guided`, `train-reward`, `eval-reward`,
//! `check` and `status` (what is implemented and which backends this binary has).

mod plot;
mod progress;
mod sd_cmd;

#[cfg(all(feature = "mimalloc", feature = "jemalloc"))]
compile_error!("features `mimalloc` and `jemalloc` both set a global allocator: choose one");
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use align_core::{Backend, Condition, compiled_backends, resolve_backend, select_device};
use align_samplers::toy::GaussianFlowField;
use align_samplers::{
    FlowGrid, FlowSdeSampler, RolloutBatch, RolloutConfig, replay, rescore, rollout,
};
use align_train::shapes_eval;
use burn::tensor::{Device, Tensor};
use clap::{Parser, Subcommand};

/// Post-train diffusion and flow-matching models toward a reward or human preferences.
#[derive(Parser, Debug)]
#[command(name = "align", version, about)]
struct Cli {
    /// Backend to run on: flex (default), ndarray, wgpu, wgpu-cpu, cuda or cuda:N.
    /// Overrides the BURN_DEVICE environment variable.
    #[arg(long, global = true)]
    device: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job: Flow-GRPO on the shipped flow model toward the gold ShapeEval reward, with
    /// before/after grids, metrics and report.json / report.md in the run directory.
    Quickstart {
        /// Run directory.
        #[arg(long, default_value = "runs/quickstart")]
        out: PathBuf,
        /// Iterations (default: the quickstart config's).
        #[arg(long)]
        iterations: Option<usize>,
        /// Training seed (prompt draws and rollout noise; the evaluation's seeds are fixed).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Evaluation seeds per prompt of the before/after evaluations (64 + 64 prompts).
        #[arg(long, default_value_t = 1)]
        eval_seeds: usize,
        /// Continue an interrupted run in `--out`.
        #[arg(long)]
        resume: bool,
    },
    /// Run an online-RL algorithm from a TOML config (see `configs/`).
    Train {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Override the config's run directory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the config's number of iterations.
        #[arg(long)]
        iterations: Option<usize>,
        /// Data parallelism: the devices that share each iteration, comma-separated
        /// (`cuda:0,cuda:1`; overrides the config's `devices`). The first holds the model.
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<String>>,
        /// Continue an interrupted run.
        #[arg(long)]
        resume: bool,
    },
    /// Build an AI-feedback preference dataset: a base model's samples on training-split
    /// prompts, labelled by the gold ShapeEval verifier (pairs: best vs worst candidate;
    /// labels: pass / fail).
    PrefData {
        /// Base model directory.
        #[arg(long)]
        model: PathBuf,
        /// Output directory (pairs.jsonl, labels.jsonl, PNGs).
        #[arg(long)]
        out: PathBuf,
        /// Training-split prompts.
        #[arg(long, default_value_t = 64)]
        prompts: usize,
        /// Samples per prompt.
        #[arg(long, default_value_t = 4)]
        candidates: usize,
        /// Noise seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Sampler steps (0 = the family's default).
        #[arg(long, default_value_t = 0)]
        steps: usize,
    },
    /// Preference optimisation (Diffusion-DPO, MaPO, KTO, DSPO, RWR) from a TOML config (see
    /// `configs/diffusion-dpo.toml`), with the held-out gold win rate against the base model.
    PrefTrain {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Data parallelism: the devices that share each step, comma-separated (overrides
        /// the config's `devices`). The first holds the model.
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<String>>,
        /// Continue an interrupted run.
        #[arg(long)]
        resume: bool,
    },
    /// Draw a run's reward and KL curves (`curves.png`) from its `metrics.jsonl`; with
    /// `--compare OUT.png` and several `--run`, the held-out ShapeEval accuracy of every run
    /// against the samples it generated, on one figure.
    Plot {
        /// Run directory (repeat with `--compare`).
        #[arg(long, required = true)]
        run: Vec<PathBuf>,
        /// Write the comparison of the runs' held-out accuracy to this PNG.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// The comparison's title.
        #[arg(
            long,
            default_value = "held-out ShapeEval accuracy against samples generated"
        )]
        title: String,
    },
    /// What is implemented, what is planned, and which backends this binary has.
    Status,
    /// Pretrain a Shapes-world text-to-image model (text encoder + UNet or DiT).
    Pretrain {
        /// Denoiser family: `unet` (DDPM, ε-prediction), `dit` (flow matching) or
        /// `flow-unet` (the UNet trained by flow matching, velocity prediction).
        #[arg(long, value_parser = ["unet", "dit", "flow-unet"])]
        model: String,
        /// Size preset: `small` (shipped models) or `tiny` (tests).
        #[arg(long, default_value = "small", value_parser = ["small", "tiny"])]
        preset: String,
        /// Optimizer steps.
        #[arg(long, default_value_t = 4000)]
        steps: usize,
        /// Images per step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// AdamW learning rate.
        #[arg(long, default_value_t = 5e-4)]
        lr: f64,
        /// Run seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Evaluate, write a sample grid and checkpoint every N steps (0 = at the end only).
        #[arg(long, default_value_t = 1000)]
        eval_every: usize,
        /// Checkpoint every N steps instead (default: at every evaluation).
        #[arg(long)]
        checkpoint_every: Option<usize>,
        /// Probability of training on the null prompt (classifier-free guidance).
        #[arg(long, default_value_t = 0.1)]
        cfg_dropout: f64,
        /// Largest decay of the weight average that is saved and sampled (0 = none).
        #[arg(long, default_value_t = 0.999)]
        ema: f64,
        /// Continue the run in `--out` from its last checkpoint up to `--steps` (weights,
        /// optimizer moments and the average are restored: the run ends as if uninterrupted).
        #[arg(long)]
        resume: bool,
        /// Steps of linear learning-rate warm-up (default: 5 % of `--steps`); give it to
        /// resume toward a larger `--steps` on the same schedule.
        #[arg(long)]
        warmup_steps: Option<usize>,
        /// A model configuration (`model.json` layout, e.g. a copy of
        /// `models/shapes-unet/model.json` with other widths or attention levels) to train
        /// instead of `--preset`.
        #[arg(long, conflicts_with = "preset")]
        model_config: Option<PathBuf>,
        /// Start from the weights of this model directory (e.g. `models/shapes-unet`) instead
        /// of a random initialisation; `--model-config` may add blocks that the directory's
        /// model lacks (they start as the identity), but every saved tensor must fit.
        #[arg(long, conflicts_with = "resume")]
        init_from: Option<PathBuf>,
        /// Smallest number of background pixels between two objects in the training scenes
        /// (the world's default is 2).
        #[arg(long, default_value_t = 2)]
        gap: usize,
        /// Weight the DDPM loss by min-SNR-γ with this γ (Hang et al. 2023; 5 is usual):
        /// `min(SNR, γ) / SNR` per sample for ε-prediction. Flow models ignore it.
        #[arg(long)]
        min_snr_gamma: Option<f64>,
        /// The split whose training part to train on: `combinations` (the standard split) or
        /// `unseen-pairs` (a model for the stress test; evaluate it with `align eval --split
        /// unseen-pairs`).
        #[arg(long, default_value = "combinations")]
        split: String,
        /// Output directory (model.json, model.safetensors, metrics.jsonl, samples/).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sample a PNG grid of one prompt from a model directory or a run's trained model.
    Sample {
        /// Shapes-world model directory (`model.json` + `model.safetensors`), e.g.
        /// `models/shapes-dit`.
        #[arg(long, required_unless_present_any = ["sd", "sd3", "run"], conflicts_with_all = ["sd", "sd3", "run"])]
        model: Option<PathBuf>,
        /// A run directory of `align train` / `align pref-train`: sample its trained model
        /// (the newest checkpoint, its weight average where the run kept one); a Stable
        /// Diffusion run's image size and guidance unless `--size` / `--guidance` are given.
        #[arg(long, conflicts_with_all = ["sd", "sd3"])]
        run: Option<PathBuf>,
        /// With `--run`: this checkpoint's iteration instead of the newest.
        #[arg(long, requires = "run")]
        checkpoint: Option<usize>,
        /// With `--run`: the last step's weights even where the run kept a weight average.
        #[arg(long, requires = "run")]
        no_ema: bool,
        /// A Stable Diffusion 1.x directory in the diffusers layout (`unet/`, `vae/`,
        /// `text_encoder/`, `tokenizer/`, `scheduler/`), e.g. a local copy of SD 1.5.
        #[arg(long, conflicts_with = "sd3")]
        sd: Option<PathBuf>,
        /// A Stable Diffusion 3 / 3.5 directory in the diffusers layout (`transformer/`,
        /// `vae/`, `text_encoder/`, `text_encoder_2/`, optional `text_encoder_3/`, their
        /// tokenizers, `scheduler/`): Euler on its flow-match sigmas (default 28 steps, CFG 7).
        #[arg(long)]
        sd3: Option<PathBuf>,
        /// With `--sd3`: leave the T5 text encoder out (zeros in its place, as diffusers does).
        #[arg(long, requires = "sd3")]
        no_t5: bool,
        /// Image side in pixels for `--sd` / `--sd3` (0 = the model's default, 512 for SD 1.5,
        /// 1024 for SD3).
        #[arg(long, default_value_t = 0)]
        size: usize,
        /// DDIM η for `--sd` (0 = deterministic DDIM).
        #[arg(long, default_value_t = 0.0)]
        eta: f64,
        /// Prompt, e.g. "two red circles".
        #[arg(long)]
        prompt: String,
        /// Number of samples.
        #[arg(long, default_value_t = 8)]
        n: usize,
        /// Sampler steps (0 = 50 DDIM steps for the UNet and `--sd`, 40 Euler steps for the
        /// flow model, 28 for `--sd3`).
        #[arg(long, default_value_t = 0)]
        steps: usize,
        /// Classifier-free guidance scale (default 3.0; 7.5 with `--sd`, 7.0 with `--sd3`).
        #[arg(long)]
        guidance: Option<f64>,
        /// Seed of the initial noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
    },
    /// ShapeEval accuracy of a model on the fixed evaluation set (train and held-out).
    Eval {
        /// Model directory.
        #[arg(long, required_unless_present = "run", conflicts_with = "run")]
        model: Option<PathBuf>,
        /// A run directory of `align train` / `align pref-train`: evaluate its trained model
        /// (the newest checkpoint, its weight average where the run kept one). A Shapes run
        /// gets ShapeEval with the options below; a Stable Diffusion run its own evaluation
        /// again (its reward, evaluation prompts, seeds, steps and guidance: the options below
        /// do not apply).
        #[arg(long)]
        run: Option<PathBuf>,
        /// With `--run`: this checkpoint's iteration instead of the newest.
        #[arg(long, requires = "run")]
        checkpoint: Option<usize>,
        /// With `--run`: the last step's weights even where the run kept a weight average.
        #[arg(long, requires = "run")]
        no_ema: bool,
        /// Seeds per prompt (the set has 4).
        #[arg(long, default_value_t = 4)]
        seeds: usize,
        /// Sampler steps (0 = the family's default).
        #[arg(long, default_value_t = 0)]
        steps: usize,
        /// Classifier-free guidance scale.
        #[arg(long, default_value_t = 3.0)]
        guidance: f64,
        /// Also write every image's verdict (groups found, detected objects, first failure
        /// reason) to this JSON-lines file.
        #[arg(long)]
        details: Option<PathBuf>,
        /// The split whose evaluation set to use: `combinations` (the standard split:
        /// held-out combinations of seen concepts) or `unseen-pairs` (the stress test).
        #[arg(long, default_value = "combinations")]
        split: String,
        /// Evaluate these prompts instead of the fixed set: a file with one Shapes prompt per
        /// line (`#` starts a comment), each filed under its part of `--split`.
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// With `--prompts`: the first noise seed (prompt k gets seeds seed + k·seeds + j).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Export a run's trained model for other tools: its LoRA adapter as a PEFT directory
    /// (`peft`) or diffusers' `pytorch_lora_weights.safetensors` (`diffusers`, Stable
    /// Diffusion 1.x and SD3 runs), or the full weights with the adapter merged (`merged`: a
    /// complete diffusers pipeline directory, or a Shapes model directory).
    Export {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// `peft`, `diffusers` or `merged`.
        #[arg(long, value_parser = ["peft", "diffusers", "merged"])]
        format: String,
        /// Precision of the written tensors: `f32`, `f16` or `bf16`.
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
        dtype: String,
        /// Output directory (new or empty).
        #[arg(long)]
        out: PathBuf,
        /// This checkpoint's iteration instead of the newest.
        #[arg(long)]
        checkpoint: Option<usize>,
        /// The last step's weights even where the run kept a weight average.
        #[arg(long)]
        no_ema: bool,
    },
    /// Train the learned proxy reward model of the Shapes world.
    TrainReward {
        /// Size preset: `small` (shipped) or `tiny` (tests).
        #[arg(long, default_value = "small", value_parser = ["small", "tiny"])]
        preset: String,
        /// Optimizer steps.
        #[arg(long, default_value_t = 3000)]
        steps: usize,
        /// Examples per step (half true prompts, half corrupted).
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// AdamW learning rate.
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Seed of data, augmentation and initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Largest Gaussian pixel-noise level of the augmentation.
        #[arg(long, default_value_t = 0.35)]
        noise_max: f64,
        /// Output directory (reward-model.json, reward-model.safetensors).
        #[arg(long)]
        out: PathBuf,
    },
    /// Agreement of a proxy reward model with ShapeEval on a base model's samples.
    EvalReward {
        /// Proxy reward model directory.
        #[arg(long)]
        reward_model: PathBuf,
        /// Base model directory whose samples are judged.
        #[arg(long)]
        model: PathBuf,
        /// Seeds per prompt (the set has 4).
        #[arg(long, default_value_t = 4)]
        seeds: usize,
        /// Sampler steps (0 = the family's default).
        #[arg(long, default_value_t = 0)]
        steps: usize,
        /// Classifier-free guidance scale.
        #[arg(long, default_value_t = 3.0)]
        guidance: f64,
    },
    /// ShapeEval and proxy scores of the evaluation set sampled with inference-time reward
    /// guidance toward the proxy reward model (`--scale 0`: plain sampling).
    EvalGuided {
        /// Proxy reward model directory.
        #[arg(long)]
        reward_model: PathBuf,
        /// Model directory.
        #[arg(long)]
        model: PathBuf,
        /// Guidance strength λ (x_{k+1} = step(x_k) + λ ∇r(x̂₀)).
        #[arg(long)]
        scale: f64,
        /// Seeds per prompt (the set has 4).
        #[arg(long, default_value_t = 1)]
        seeds: usize,
        /// Sampler steps (0 = the family's default).
        #[arg(long, default_value_t = 0)]
        steps: usize,
        /// Classifier-free guidance scale.
        #[arg(long, default_value_t = 3.0)]
        guidance: f64,
    },
    /// Sampler self-check: marginals, bit-exact replay and re-scoring on the device.
    Check {
        /// Number of samples.
        #[arg(long, default_value_t = 4096)]
        samples: usize,
        /// Sampler steps.
        #[arg(long, default_value_t = 40)]
        steps: usize,
    },
}

/// One row of the status table.
struct CrateStatus {
    name: &'static str,
    state: &'static str,
    what: &'static str,
}

const CRATES: &[CrateStatus] = &[
    CrateStatus {
        name: "align-core",
        state: "ready",
        what: "Trajectory, Gaussian log-prob/KL, advantages (batch, per-prompt, group, per-step), PPO-clip, global-norm clipping, keyed noise, Denoiser, devices",
    },
    CrateStatus {
        name: "align-samplers",
        state: "ready",
        what: "DDPM/scaled-linear/squared-cos schedules; DDPM, DDIM(eta), flow Euler, Flow-GRPO SDE, CPS with exact log-probs; CFG; rollout/rescore/replay",
    },
    CrateStatus {
        name: "align-data",
        state: "ready",
        what: "the Shapes world (v2: 16×16, at most three objects): scenes, prompts, tokenizer, held-out split of new combinations (and the unseen-pairs stress split), ShapeEval verifier, eval set, image folders",
    },
    CrateStatus {
        name: "align-models",
        state: "partial",
        what: "UNet (eps/v/flow), DiT (adaLN-Zero), text encoder, LoRA, weight EMA, pretraining (`align pretrain [--resume]|sample|eval`, min-SNR weighting); shipped world-v2 base models: ε UNet and flow UNet (docs/results.md)",
    },
    CrateStatus {
        name: "align-rewards",
        state: "partial",
        what: "Reward trait, ShapeEval, JPEG, aesthetic proxies, ensembles + penalties, external (command/HTTP), hacking monitor, learned proxy RM (`align train-reward|eval-reward`)",
    },
    CrateStatus {
        name: "align-rl",
        state: "ready",
        what: "DDPO-SF/IS, DPOK, Flow-GRPO (+Fast window, GRPO-Guard's RatioNorm, KL reward, MixGRPO's sliding window, DanceGRPO's SDE), DenseGRPO, G²RPO, SDPO on one exact update path; DiffusionNFT (forward-process RL) and on-policy distillation (OPD); runner in align-core (`align train|quickstart`)",
    },
    CrateStatus {
        name: "align-backprop",
        state: "partial",
        what: "chained-VJP backprop (DRaFT, DRaFT-K, AlignProp; `align train`), ReFL, DRaFT-LV, continuous adjoint, Adjoint Matching, reward guidance (`align eval-guided`); end-to-end runs measured, targets not yet met (issue #6)",
    },
    CrateStatus {
        name: "align-pref",
        state: "partial",
        what: "Diffusion-DPO, MaPO, Diffusion-KTO, RWR, D3PO, SPO, DSPO and PFM losses; AI-feedback preference data, `align pref-train`; end-to-end win-rate targets not yet met (issue #7)",
    },
];

fn print_status(backend: Backend) {
    println!(
        "align {} — post-training for diffusion and flow-matching models",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "device: {backend} (compiled in: {})",
        compiled_backends().join(", ")
    );
    println!();
    for c in CRATES {
        println!("  {:<15} {:<8} {}", c.name, c.state, c.what);
    }
    println!();
}

fn host<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>, String> {
    t.clone()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("reading a tensor back: {e:?}"))
}

/// Largest `|a − b| / (1 + |a|)` between two runs of the same computation (0 = bit-identical).
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            if x.to_bits() == y.to_bits() {
                0.0
            } else {
                ((x - y).abs() / (1.0 + x.abs().max(y.abs()))) as f64
            }
        })
        .fold(0.0, f64::max)
}

fn describe(diff: f64) -> String {
    if diff == 0.0 {
        "bit-identical".into()
    } else {
        format!("agree to {diff:.1e} (|a − b| / (1 + |a|))")
    }
}

/// Samples a 1-D Gaussian through the Flow-GRPO SDE, then replays and re-scores it.
fn self_check(
    device: &Device,
    backend: Backend,
    samples: usize,
    steps: usize,
) -> Result<(), String> {
    if samples < 2 || steps < 1 {
        return Err("check: --samples must be ≥ 2 and --steps ≥ 1".into());
    }
    let start = Instant::now();
    let (m, s) = (0.5f32, 0.3f32);
    let model = GaussianFlowField::new(vec![m], vec![s]);
    let sampler = FlowSdeSampler::new(FlowGrid::new(steps, 1.0).map_err(|e| e.to_string())?, 0.7)
        .map_err(|e| e.to_string())?;
    let cond = Condition::new(Tensor::zeros([samples, 1, 1], device));
    let batch = RolloutBatch {
        condition: &cond,
        uncond: None,
        sample_ids: (0..samples as u64).collect(),
        condition_ids: vec![0; samples],
        group_ids: None,
        sample_shape: [1, 1, 1],
    };
    let config = RolloutConfig {
        seed: 2024,
        ..RolloutConfig::default()
    };
    let traj = rollout(&model, &sampler, &batch, &config).map_err(|e| e.to_string())?;
    let x = traj
        .final_sample()
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    println!("sampler self-check on {backend}:");
    println!(
        "  flow SDE (noise level 0.7, {steps} steps), {samples} samples of N({m}, {s}²): \
         mean {mean:.3}, std {std:.3}"
    );
    let again = replay(&model, &sampler, &traj, &cond, None).map_err(|e| e.to_string())?;
    let mut replay_diff: f64 = 0.0;
    for (a, b) in traj.latents.iter().zip(&again.latents) {
        replay_diff = replay_diff.max(max_rel_diff(&host(a)?, &host(b)?));
    }
    println!(
        "  replay from noise keys: {} ({} latents)",
        describe(replay_diff),
        traj.latents.len()
    );
    let mut rescore_diff: f64 = 0.0;
    for k in traj.stochastic_steps() {
        let lp = rescore(&model, &sampler, &traj, k, &cond, None)
            .map_err(|e| e.to_string())?
            .log_prob
            .ok_or("re-scored step lost its log-prob")?;
        let stored = traj.log_probs[k]
            .clone()
            .ok_or("stored step has no log-prob")?;
        rescore_diff = rescore_diff.max(max_rel_diff(&host(&lp)?, &host(&stored)?));
    }
    println!(
        "  re-scored log-probs at θ = θ_old: {}{}",
        describe(rescore_diff),
        if rescore_diff == 0.0 {
            " (PPO ratio exactly 1)"
        } else {
            ""
        }
    );
    println!("  took {:.2} s", start.elapsed().as_secs_f64());
    let moments_ok = (mean - m as f64).abs() < 0.05 && (std / s as f64 - 1.0).abs() < 0.1;
    // CPU backends reproduce exactly; autotuned GPU kernels may differ by a few ulps.
    let tolerance = if backend.is_bitwise_reproducible() {
        0.0
    } else {
        1e-6
    };
    let reproduced = replay_diff <= tolerance && rescore_diff <= tolerance;
    if reproduced && moments_ok {
        Ok(())
    } else {
        Err(format!(
            "self-check failed on {backend}: moments ok = {moments_ok}, replay difference \
             {replay_diff:.1e}, re-score difference {rescore_diff:.1e} (allowed {tolerance:.0e})"
        ))
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let backend = resolve_backend(cli.device.as_deref()).map_err(|e| e.to_string())?;
    let device = select_device(cli.device.as_deref()).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Status => {
            print_status(backend);
            Ok(())
        }
        Command::Check { samples, steps } => self_check(&device, backend, samples, steps),
        Command::Pretrain {
            model,
            preset,
            steps,
            batch,
            lr,
            seed,
            eval_every,
            checkpoint_every,
            cfg_dropout,
            ema,
            resume,
            warmup_steps,
            model_config,
            init_from,
            gap,
            min_snr_gamma,
            split,
            out,
        } => {
            let split: align_data::SplitName = split
                .parse()
                .map_err(|e: align_data::DataError| format!("pretrain --split: {e}"))?;
            let options = align_train::PretrainOptions {
                kind: if model == "dit" {
                    align_models::DenoiserKind::Dit
                } else {
                    align_models::DenoiserKind::Unet
                },
                flow: model == "flow-unet",
                preset: if preset == "tiny" {
                    align_models::Preset::Tiny
                } else {
                    align_models::Preset::Small
                },
                steps,
                batch,
                lr,
                seed,
                out,
                eval_every,
                checkpoint_every,
                cfg_dropout,
                ema_decay: ema,
                resume,
                warmup_steps,
                model_config,
                init_from,
                gap,
                min_snr_gamma,
                split,
            };
            let observer: align_train::SharedObserver = std::sync::Arc::new(progress::Bar::new());
            let done = align_train::pretrain(&options, &observer, &device)
                .map_err(|e| format!("pretrain: {e}"))?;
            println!(
                "pretrained {} steps: ShapeEval train {:.1}% held-out {:.1}% (1 seed per prompt); model in {}",
                done.steps,
                100.0 * done.train_accuracy,
                100.0 * done.heldout_accuracy,
                options.out.display()
            );
            Ok(())
        }
        Command::Sample {
            model,
            run,
            checkpoint,
            no_ema,
            sd,
            sd3,
            no_t5,
            size,
            eta,
            prompt,
            n,
            steps,
            guidance,
            seed,
            out,
        } => {
            let sd_options = sd_cmd::SdSampleOptions {
                n,
                steps: if steps == 0 { 50 } else { steps },
                guidance: guidance.unwrap_or(7.5),
                eta,
                size,
                seed,
            };
            let shapes_options = align_train::SampleOptions {
                steps,
                guidance: guidance.unwrap_or(3.0),
            };
            if let Some(run) = run {
                let weights = align_train::Weights { checkpoint, no_ema };
                let trained =
                    align_train::load_run(&run, weights, &device).map_err(|e| e.to_string())?;
                // A Stable Diffusion run's image size and guidance unless given.
                let mut sd_options = sd_options;
                if let align_train::RunConfig::Train(c) = &trained.config {
                    if size == 0 {
                        sd_options.size = c.image_size;
                    }
                    if guidance.is_none() {
                        sd_options.guidance = c.guidance;
                    }
                }
                match trained.merged() {
                    align_train::TrainedModel::Sd(sd) => {
                        sd_cmd::sample_from(*sd, &prompt, &out, &sd_options)?;
                    }
                    align_train::TrainedModel::Sd3(sd3) => {
                        let sd3_options = sd_cmd::SdSampleOptions {
                            steps: if steps == 0 { 28 } else { steps },
                            guidance: guidance.unwrap_or(sd_options.guidance),
                            ..sd_options
                        };
                        sd_cmd::sample_sd3_from(*sd3, &prompt, &out, &sd3_options)?;
                    }
                    align_train::TrainedModel::Shapes(config, model) => {
                        shapes_eval::sample_grid_of(
                            &config,
                            &model,
                            &prompt,
                            n,
                            &out,
                            shapes_options,
                            seed,
                            &device,
                        )
                        .map_err(|e| e.to_string())?;
                    }
                }
                println!("wrote {}", out.display());
                return Ok(());
            }
            if let Some(dir) = sd3 {
                let sd3_options = sd_cmd::SdSampleOptions {
                    steps: if steps == 0 { 28 } else { steps },
                    guidance: guidance.unwrap_or(7.0),
                    ..sd_options
                };
                sd_cmd::sample_sd3(&dir, &prompt, &out, &sd3_options, no_t5, &device)?;
                println!("wrote {}", out.display());
                return Ok(());
            }
            match (model, sd) {
                (_, Some(dir)) => {
                    sd_cmd::sample(&dir, &prompt, &out, &sd_options, &device)?;
                }
                (Some(model), None) => {
                    sample_shapes(&model, &prompt, n, &out, shapes_options, seed, &device)?;
                }
                (None, None) => return Err("give --model, --sd or --sd3".into()),
            }
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Eval {
            model,
            run,
            checkpoint,
            no_ema,
            seeds,
            steps,
            guidance,
            details,
            split,
            prompts,
            seed,
        } => {
            let options = align_train::SampleOptions { steps, guidance };
            let split: align_data::SplitName = split
                .parse()
                .map_err(|e: align_data::DataError| format!("eval --split: {e}"))?;
            let set = match &prompts {
                Some(file) => {
                    let list = align_train::read_prompts(file).map_err(|e| e.to_string())?;
                    align_data::EvalSet::from_prompts(&split.split(), &list, seeds, seed)
                        .map_err(|e| format!("{}: {e}", file.display()))?
                }
                None => align_data::EvalSet::for_split(split),
            };
            let (verdicts, model) = match (model, run) {
                (_, Some(run)) => {
                    let weights = align_train::Weights { checkpoint, no_ema };
                    let trained =
                        align_train::load_run(&run, weights, &device).map_err(|e| e.to_string())?;
                    let file = trained.weights_file.clone();
                    let align_train::TrainedRun {
                        config: run_config,
                        model: trained_model,
                        weights_file,
                    } = trained;
                    // A Stable Diffusion run is measured with its adapters as the run's report
                    // measured them (unmerged); a Shapes model is merged first.
                    let trained_model = match trained_model {
                        sd @ (align_train::TrainedModel::Sd(_)
                        | align_train::TrainedModel::Sd3(_)) => sd,
                        shapes => align_train::TrainedRun {
                            config: run_config.clone(),
                            model: shapes,
                            weights_file,
                        }
                        .merged(),
                    };
                    match trained_model {
                        align_train::TrainedModel::Shapes(config, m) => (
                            shapes_eval::eval_of(&config, &m, &set, seeds, options, &device)
                                .map_err(|e| e.to_string())?,
                            file,
                        ),
                        align_train::TrainedModel::Sd(sd) => {
                            let align_train::RunConfig::Train(config) = &run_config else {
                                return Err(
                                    "eval --run: a Stable Diffusion run of align train expected"
                                        .into(),
                                );
                            };
                            let (mean, images) = align_train::sd::evaluate_sd(config, &sd, &device)
                                .map_err(|e| format!("eval --run: {e}"))?;
                            println!(
                                "mean {} reward of {} ({}): {mean:.4} over {images} images \
                                 (deterministic DDIM, the run's evaluation prompts and seeds)",
                                config.reward,
                                run.display(),
                                file.display()
                            );
                            return Ok(());
                        }
                        align_train::TrainedModel::Sd3(sd3) => {
                            let align_train::RunConfig::Train(config) = &run_config else {
                                return Err("eval --run: an SD3 run of align train expected".into());
                            };
                            let (mean, images) =
                                align_train::sd3::evaluate_sd3(config, &sd3, &device)
                                    .map_err(|e| format!("eval --run: {e}"))?;
                            println!(
                                "mean {} reward of {} ({}): {mean:.4} over {images} images \
                                 (flow Euler, the run's evaluation prompts and seeds)",
                                config.reward,
                                run.display(),
                                file.display()
                            );
                            return Ok(());
                        }
                    }
                }
                (Some(model), None) => (
                    shapes_eval::eval_on(&model, &set, seeds, options, &device)
                        .map_err(|e| e.to_string())?,
                    model,
                ),
                (None, None) => return Err("give --model or --run".into()),
            };
            if let Some(path) = &details {
                shapes_eval::write_verdicts(path, &verdicts).map_err(|e| e.to_string())?;
            }
            for heldout in [false, true] {
                let part: Vec<_> = verdicts
                    .iter()
                    .filter(|v| v.heldout == heldout)
                    .cloned()
                    .collect();
                let counts = shapes_eval::failure_counts(&part)
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let name = if heldout { "held-out" } else { "train" };
                println!("{name} verdicts: {counts}");
            }
            let (train, held) = shapes_eval::accuracies(&verdicts);
            println!(
                "ShapeEval of {}: train {:.1}% ({}/{}), held-out {:.1}% ({}/{}); mean partial credit {:.3} / {:.3}",
                model.display(),
                100.0 * train.rate(),
                train.passed,
                train.total,
                100.0 * held.rate(),
                held.passed,
                held.total,
                train.partial,
                held.partial
            );
            Ok(())
        }
        Command::Export {
            run,
            format,
            dtype,
            out,
            checkpoint,
            no_ema,
        } => {
            let format: align_train::ExportFormat = format.parse()?;
            let dtype = match dtype.as_str() {
                "f16" => align_models::WeightDtype::F16,
                "bf16" => align_models::WeightDtype::Bf16,
                _ => align_models::WeightDtype::F32,
            };
            let weights = align_train::Weights { checkpoint, no_ema };
            let files = align_train::export_run(&run, weights, format, dtype, &out, &device)
                .map_err(|e| format!("export: {e}"))?;
            for f in files {
                println!("wrote {}", f.display());
            }
            Ok(())
        }
        Command::TrainReward {
            preset,
            steps,
            batch,
            lr,
            seed,
            noise_max,
            out,
        } => {
            let config = if preset == "tiny" {
                align_rewards::ProxyRewardConfig::tiny()
            } else {
                align_rewards::ProxyRewardConfig::small()
            };
            let options = align_rewards::ProxyTrainOptions {
                steps,
                batch,
                lr,
                seed,
                noise_max,
            };
            let observer: align_train::SharedObserver = std::sync::Arc::new(progress::Bar::new());
            let acc = align_train::reward_model::train_reward(
                &config, &options, &out, &observer, &device,
            )
            .map_err(|e| format!("train-reward: {e}"))?;
            println!(
                "wrote {}; accuracy on rendered held-out scenes (true vs corrupted prompts): {:.1}%",
                out.display(),
                100.0 * acc
            );
            Ok(())
        }
        Command::EvalGuided {
            reward_model,
            model,
            scale,
            seeds,
            steps,
            guidance,
        } => {
            let options = align_train::SampleOptions { steps, guidance };
            let (train, held) = align_train::reward_model::eval_guided(
                &reward_model,
                &model,
                seeds,
                options,
                scale,
                &device,
            )
            .map_err(|e| format!("eval-guided: {e}"))?;
            for (name, p) in [("train", train), ("held-out", held)] {
                println!(
                    "reward guidance λ = {scale} on {}, {name} prompts ({} images): ShapeEval {:.1}%, partial credit {:.3}, proxy {:.3}",
                    model.display(),
                    p.n,
                    100.0 * p.pass_rate,
                    p.partial,
                    p.proxy
                );
            }
            Ok(())
        }
        Command::EvalReward {
            reward_model,
            model,
            seeds,
            steps,
            guidance,
        } => {
            let options = align_train::SampleOptions { steps, guidance };
            let (train, held) = align_train::reward_model::eval_reward(
                &reward_model,
                &model,
                seeds,
                options,
                &device,
            )
            .map_err(|e| format!("eval-reward: {e}"))?;
            for (name, a) in [("train prompts", train), ("held-out prompts", held)] {
                println!(
                    "proxy vs ShapeEval on {} samples, {name}: agreement {:.1}% of {} (accepts {:.1}% of gold passes, rejects {:.1}% of gold failures)",
                    model.display(),
                    100.0 * a.accuracy,
                    a.n,
                    100.0 * a.true_positive_rate,
                    100.0 * a.true_negative_rate
                );
            }
            Ok(())
        }
        Command::Plot {
            run,
            compare: Some(out),
            title,
        } => {
            let series = run
                .iter()
                .map(|r| plot::AccuracySeries::read(r))
                .collect::<Result<Vec<_>, _>>()?;
            plot::write_comparison(&series, &title, &out)?;
            println!("{}", out.display());
            Ok(())
        }
        Command::Plot { run, .. } => match run.as_slice() {
            [one] => plot_run(one),
            _ => Err("plot: several --run need --compare OUT.png".into()),
        },
        Command::PrefData {
            model,
            out,
            prompts,
            candidates,
            seed,
            steps,
        } => {
            let s = align_train::pref_data(
                &align_train::PrefDataOptions {
                    model,
                    out: out.clone(),
                    prompts,
                    candidates,
                    seed,
                    sample: align_train::SampleOptions {
                        steps,
                        guidance: 3.0,
                    },
                },
                &device,
            )
            .map_err(|e| e.to_string())?;
            println!(
                "{}: {} pairs, {} labelled images ({} desirable)",
                out.display(),
                s.pairs,
                s.labels,
                s.desirable
            );
            Ok(())
        }
        Command::PrefTrain {
            config,
            devices,
            resume,
        } => {
            let mut config =
                align_train::PrefConfig::from_file(&config).map_err(|e| e.to_string())?;
            if let Some(devices) = devices {
                config.devices = devices;
            }
            let observer: align_train::SharedObserver = std::sync::Arc::new(progress::Bar::new());
            let r = align_train::pref_train(&config, resume, &observer, &device)
                .map_err(|e| e.to_string())?;
            println!(
                "{}: train ShapeEval {:.1}% → {:.1}%, held-out {:.1}% → {:.1}%, partial credit {:.3} → {:.3}, gold win rate vs base {:.1}% (95% CI {:.1}–{:.1}%), {:.0} s",
                r.algorithm,
                100.0 * r.base_train_accuracy,
                100.0 * r.final_train_accuracy,
                100.0 * r.base_heldout_accuracy,
                100.0 * r.final_heldout_accuracy,
                r.base_heldout_partial_credit,
                r.final_heldout_partial_credit,
                100.0 * r.heldout_win_rate,
                100.0 * r.heldout_win_rate_ci.0,
                100.0 * r.heldout_win_rate_ci.1,
                r.wall_seconds
            );
            Ok(())
        }
        Command::Quickstart {
            out,
            iterations,
            seed,
            eval_seeds,
            resume,
        } => {
            let mut config = quickstart_config(out);
            config.seed = seed;
            config.eval_seeds = eval_seeds;
            if let Some(n) = iterations {
                config.runner.iterations = n;
            }
            let report = run_train(&config, resume, &device)?;
            print_report(&config.out, &report);
            Ok(())
        }
        Command::Train {
            config,
            out,
            iterations,
            devices,
            resume,
        } => {
            let mut config =
                align_train::TrainConfig::from_file(&config).map_err(|e| e.to_string())?;
            if let Some(out) = out {
                config.out = out;
            }
            if let Some(devices) = devices {
                config.devices = devices;
            }
            if let Some(n) = iterations {
                config.runner.iterations = n;
            }
            let report = run_train(&config, resume, &device)?;
            print_report(&config.out, &report);
            Ok(())
        }
    }
}

/// `models/<name>` of the repository this binary was built from, or of the working directory.
pub(crate) fn default_model_dir(name: &str) -> std::path::PathBuf {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name);
    if built.is_dir() {
        built
    } else {
        std::path::PathBuf::from("models").join(name)
    }
}

/// `align quickstart`'s configuration: the library's defaults (Flow-GRPO on the shipped flow
/// model toward ShapeEval's partial credit), with the shipped models found from anywhere.
fn quickstart_config(out: std::path::PathBuf) -> align_train::TrainConfig {
    align_train::TrainConfig {
        out,
        model: default_model_dir("shapes-flow-unet"),
        reward_model: default_model_dir("proxy-rm"),
        ..align_train::TrainConfig::default()
    }
}

/// Runs an online job with the progress bar, then draws `curves.png` from its metrics.
fn run_train(
    config: &align_train::TrainConfig,
    resume: bool,
    device: &burn::tensor::Device,
) -> Result<align_train::Report, String> {
    let observer: align_train::SharedObserver = std::sync::Arc::new(progress::Bar::new());
    let report =
        align_train::train(config, resume, &observer, device).map_err(|e| e.to_string())?;
    let metrics = config.out.join(align_core::runner::METRICS);
    let curves = plot::Curves::read(&metrics)?;
    plot::write_curves(&curves, &report.algorithm, &config.out.join("curves.png"))?;
    Ok(report)
}

/// `align sample` for a Shapes model directory.
fn sample_shapes(
    model: &std::path::Path,
    prompt: &str,
    n: usize,
    out: &std::path::Path,
    options: align_train::SampleOptions,
    seed: u64,
    device: &burn::tensor::Device,
) -> Result<(), String> {
    shapes_eval::sample_grid(model, prompt, n, out, options, seed, device)
        .map_err(|e| e.to_string())
}

fn plot_run(run: &std::path::Path) -> Result<(), String> {
    let curves = plot::Curves::read(&run.join(align_core::runner::METRICS))?;
    let out = run.join("curves.png");
    plot::write_curves(&curves, &run.display().to_string(), &out)?;
    println!("{}", out.display());
    Ok(())
}

fn print_report(dir: &std::path::Path, r: &align_train::Report) {
    if let Some(e) = &r.eval_reward {
        println!(
            "{}: mean {} on the evaluation prompts {:.4} → {:.4}, KL {:.2e}, {:.0} s",
            r.algorithm, e.reward, e.base, e.final_, r.final_.kl, r.wall_seconds
        );
        println!("report: {}", dir.join("report.md").display());
        return;
    }
    println!(
        "{}: ShapeEval held-out {:.1}% → {:.1}%, train {:.1}% → {:.1}%, diversity ratio {:.2}, KL {:.2e}, {:.0} s",
        r.algorithm,
        100.0 * r.base.heldout_accuracy,
        100.0 * r.final_.heldout_accuracy,
        100.0 * r.base.train_accuracy,
        100.0 * r.final_.train_accuracy,
        r.final_.diversity_ratio,
        r.final_.kl,
        r.wall_seconds
    );
    println!("report: {}", dir.join("report.md").display());
}

fn main() -> ExitCode {
    // Keep freed tensor memory in the process (docs/benchmarks.md, "The allocator").
    align_core::tune_allocator();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_check_passes_on_the_test_device() {
        let device = align_core::test_device();
        self_check(&device, Backend::Flex, 2000, 20).unwrap();
    }

    #[test]
    fn bad_device_is_one_clear_error() {
        let cli = Cli::parse_from(["align", "--device", "tpu", "status"]);
        let err = run(cli).unwrap_err();
        assert!(err.contains("tpu") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn devices_are_a_comma_separated_list_and_a_bad_one_is_named() {
        let cli = Cli::parse_from([
            "align",
            "train",
            "--config",
            "x.toml",
            "--devices",
            "flex,ndarray",
        ]);
        let Command::Train { devices, .. } = &cli.command else {
            panic!("train")
        };
        assert_eq!(
            devices.as_deref(),
            Some(&["flex".to_string(), "ndarray".to_string()][..])
        );
        // A device this binary cannot build is one line naming the field and the device.
        let dir = std::env::temp_dir().join(format!("align-cli-devices-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("c.toml");
        std::fs::write(
            &config,
            format!(
                "model = \"{}\"\nout = \"{}\"\n",
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../models/shapes-dit")
                    .display(),
                dir.join("run").display()
            ),
        )
        .unwrap();
        let cli = Cli::parse_from([
            "align",
            "train",
            "--config",
            config.to_str().unwrap(),
            "--devices",
            "flex,tpu",
        ]);
        let err = run(cli).unwrap_err();
        assert!(
            err.contains("devices") && err.contains("tpu") && !err.contains('\n'),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn pretrain_then_sample_writes_a_png_grid() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-cli-pretrain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cli = Cli::parse_from(
            [
                "align",
                "pretrain",
                "--model",
                "dit",
                "--preset",
                "tiny",
                "--steps",
                "2",
                "--batch",
                "2",
                "--eval-every",
                "0",
                "--ema",
                "0.9",
                "--out",
            ]
            .map(String::from)
            .into_iter()
            .chain([dir.display().to_string()]),
        );
        run(cli).unwrap();
        let out = dir.join("grid.png");
        let sample = align_train::SampleOptions {
            steps: 4,
            guidance: 2.0,
        };
        sample_shapes(&dir, "two red circles", 6, &out, sample, 0, &device).unwrap();
        let png = image::open(&out).unwrap();
        // 4 columns × 2 rows of 16×16 tiles with 1-pixel gutters.
        assert_eq!((png.width(), png.height()), (4 * 17 + 1, 2 * 17 + 1));
        let err =
            sample_shapes(&dir, "two purple circles", 1, &out, sample, 0, &device).unwrap_err();
        assert!(err.contains("purple"), "{err}");
        let err = sample_shapes(
            &dir.join("missing"),
            "one red circle",
            1,
            &out,
            sample,
            0,
            &device,
        )
        .unwrap_err();
        assert!(err.contains("model.json"), "{err}");
        // A bad option is one line naming it.
        let cli = Cli::parse_from([
            "align", "pretrain", "--model", "dit", "--batch", "0", "--out", "x",
        ]);
        let err = run(cli).unwrap_err();
        assert!(err.contains("batch") && !err.contains('\n'), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The acceptance check of the shipped base models: they load from the repository and
    /// `align sample` writes a grid (few sampler steps here, to stay quick).
    #[test]
    fn shipped_models_sample_from_the_repository() {
        let device = align_core::test_device();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        for name in ["shapes-unet", "shapes-flow-unet", "shapes-dit"] {
            let out = std::env::temp_dir()
                .join(format!("align-shipped-{name}-{}.png", std::process::id()));
            let options = align_train::SampleOptions {
                steps: 4,
                guidance: 3.0,
            };
            sample_shapes(
                &root.join(name),
                "two red circles",
                4,
                &out,
                options,
                0,
                &device,
            )
            .unwrap();
            let png = image::open(&out).unwrap();
            assert_eq!((png.width(), png.height()), (4 * 17 + 1, 17 + 1), "{name}");
            std::fs::remove_file(&out).ok();
        }
        let rm = root.join("proxy-rm");
        let (_, proxy) = align_rewards::ProxyReward::load(&rm, &device).unwrap();
        // A rendered "two red circles" scene: its own prompt scores above a wrong one.
        let spec: align_data::SceneSpec = "two red circles".parse().unwrap();
        let scene =
            align_data::render_seeded(&spec, &align_data::WorldConfig::default(), 5).unwrap();
        let pixels = scene.image.data.clone();
        let images = Tensor::<4>::from_data(
            burn::tensor::TensorData::new([pixels.clone(), pixels].concat(), [2, 3, 16, 16]),
            &device,
        );
        let prompts = [
            "two red circles".to_string(),
            "two blue squares".to_string(),
        ];
        let s = align_rewards::Reward::score(&proxy, &images, &prompts).unwrap();
        assert!(s[0] > s[1], "{s:?}");
    }

    #[test]
    fn bad_check_arguments_are_errors() {
        let device = align_core::test_device();
        assert!(self_check(&device, Backend::Flex, 1, 10).is_err());
    }
}
