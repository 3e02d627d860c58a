#![warn(missing_docs)]
//! # align-train
//!
//! The training jobs of `align`, as a library: what the `align` command runs, callable from
//! Rust without the command line.
//!
//! - [`train_pipeline`]: the online job on any [`align_models::Pipeline`] — rollouts of the
//!   LoRA-adapted model, rewards, one iteration of an `align-rl` algorithm (DDPO-SF/IS, DPOK,
//!   Flow-GRPO and its Fast window, DenseGRPO, SDPO) or a reward-backprop update (DRaFT-K,
//!   AlignProp, ReFL, DRaFT-LV, the continuous adjoint, Adjoint Matching), periodic evaluations by an [`Evaluator`], checkpoints, and
//!   the report. Bring
//!   a model (a `Denoiser` in [`align_models::TextToImage`], or your own `Pipeline`), prompts,
//!   a reward ([`align_rewards::reward_fn`] turns a closure into one) and a sampler in an
//!   [`OnlineTask`]; [`RewardEvaluator`] measures the mean reward.
//! - [`train`]: that job from a [`TrainConfig`], for the Shapes models (`model.json`
//!   directories, the exact ShapeEval evaluation with the reward-hacking monitor; the whole
//!   training split or a prompt file, optionally measured on its own prompts) and Stable
//!   Diffusion 1.x directories; LoRA adapters or, with [`Finetune::Full`], every parameter.
//! - [`pretrain`](fn@pretrain): a Shapes model from scratch ([`PretrainOptions`]).
//! - [`pref_train`]: the preference job from a [`PrefConfig`] (Diffusion-DPO, MaPO,
//!   Diffusion-KTO, DSPO, RWR, PFM) and [`pref_data`], the AI-feedback dataset it trains on.
//! - [`shapes_eval`]: sampling and the exact ShapeEval evaluation of Shapes models;
//!   [`win_rate`]: the paired gold win rate with its bootstrap interval.
//! - [`trained`]: a finished run read back from its directory ([`load_run`]: the base model,
//!   the same adapters, a checkpoint's weights or their average) and exported for other tools
//!   ([`export_run`]: a PEFT adapter, diffusers' `pytorch_lora_weights.safetensors`, or merged
//!   weights); [`adapt`]: how a run builds its policy and reference (fresh adapters, an adapter
//!   file given as `lora_init`, or every parameter); [`reward_spec`]: the `reward` field (a
//!   built-in reward, an HTTP service, a program, an ensemble with penalties).
//! - [`Observer`]: how a front end follows a run (a progress bar, a log); [`Silent`] shows
//!   nothing, [`PrintLines`] prints the news lines.
//!
//! Every job runs on [`align_core::Runner`]: its run directory holds atomic checkpoints
//! (`checkpoint-NNNNNN/`, `LATEST`), `metrics.jsonl` and `metrics.csv` (one row per
//! iteration), its `config.toml`, `base.json`,
//! the grids and `report.json` / `report.md`; `resume` continues a run bit-identically. Errors
//! are [`TrainError`]s naming the file, the field or the model.
//!
//! ## Example
//!
//! Two iterations of Flow-GRPO on a freshly initialised tiny DiT toward ShapeEval's partial
//! credit (a real run starts from a pretrained model directory such as `models/shapes-flow-unet`):
//!
//! ```
//! use align_data::Tokenizer;
//! use align_models::{DenoiserKind, Preset, ShapesModelConfig};
//! use align_train::{TrainConfig, observer, train};
//!
//! let device = align_core::select_device(Some("flex")).unwrap();
//! let dir = std::env::temp_dir().join(format!("align-train-doc-{}", std::process::id()));
//! let tok = Tokenizer::new();
//! let model = ShapesModelConfig::preset(DenoiserKind::Dit, Preset::Tiny, tok.vocab_size(), tok.max_len());
//! model.init(&device).unwrap().save(&model, &dir.join("base")).unwrap();
//!
//! let mut config = TrainConfig {
//!     model: dir.join("base"),
//!     out: dir.join("run"),
//!     prompts_per_iteration: 2,
//!     group_size: 2,
//!     train_steps: 2,
//!     eval_steps: 2,
//!     ..TrainConfig::default()
//! };
//! config.runner.iterations = 2;
//! let report = train(&config, false, &observer::silent(), &device).unwrap();
//! assert_eq!(report.iterations, 2);
//! assert!((0.0..=1.0).contains(&report.final_.heldout_accuracy));
//! assert!(dir.join("run/report.json").is_file());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

pub mod adapt;
pub mod config;
pub mod error;
pub mod evaluator;
pub mod images;
pub mod job;
pub mod lora_anneal;
pub mod observer;
pub mod online;
pub mod pref;
pub mod pretrain;
pub mod report;
pub mod reward_model;
pub mod reward_spec;
pub mod scores;
pub mod sd;
pub mod sd3;
pub mod shapes_eval;
pub mod trained;
pub mod win_rate;

pub use config::{
    AdjointMatchingSection, AlgorithmName, DraftLvSection, Finetune, LoraSection, MonitorSplit,
    ReflSection, RewardName, RolloutSampler, TimestepOrder, TrainConfig, read_toml,
};
pub use error::{Result, TrainError};
pub use evaluator::{Evaluator, RewardEvaluator, SharedReward};
pub use job::{OnlineJob, OnlineTask, train_pipeline};
pub use lora_anneal::LoraAnneal;
pub use observer::{Observer, PrintLines, SharedObserver, Silent};
pub use online::{open_runner, train};
pub use pref::{
    PrefAlgorithm, PrefConfig, PrefDataOptions, PrefDataSummary, PrefReport, pref_data, pref_train,
};
pub use pretrain::{PretrainOptions, PretrainOutcome, pretrain};
pub use report::{EvalReward, PromptsEval, Report, Snapshot};
pub use sd::{is_stable_diffusion_dir, read_prompts};
pub use shapes_eval::{Accuracy, SampleOptions, Verdict};
pub use trained::{
    ExportFormat, RunConfig, TrainedModel, TrainedRun, Weights, export_run, load_run,
    read_run_config,
};
pub use win_rate::WinRate;

/// `models/<name>` of this repository (tests only).
#[cfg(test)]
pub(crate) fn test_model_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name)
}

/// An empty directory `<temp>/<name>-<pid>` (removed first if a failed run left it; tests
/// only).
#[cfg(test)]
pub(crate) fn fresh_test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The float tensors of `run`'s first checkpoint (`checkpoint-000001/model.bpk`), by name
/// (tests only).
#[cfg(test)]
pub(crate) fn first_checkpoint_weights(
    run: &std::path::Path,
) -> std::collections::BTreeMap<String, Vec<f32>> {
    let path = run.join("checkpoint-000001").join("model.bpk");
    let reader = burn::store::burn_pack::Reader::from_file(&path).expect("burnpack");
    reader
        .tensor_names()
        .iter()
        .map(|n| {
            let bytes = reader.tensor_data(n).expect("tensor");
            let v = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n.to_string(), v)
        })
        .collect()
}

/// The largest absolute difference between two runs' weights, tensor by tensor (tests only).
#[cfg(test)]
pub(crate) fn max_weight_difference(
    a: &std::collections::BTreeMap<String, Vec<f32>>,
    b: &std::collections::BTreeMap<String, Vec<f32>>,
) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.values()
        .zip(b.values())
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// The f32 values of tensor `name` of a safetensors file (tests only).
#[cfg(test)]
pub(crate) fn safetensors_f32(path: &std::path::Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor(name).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    view.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The f32 values of the tensor of a burnpack checkpoint file whose path ends with `suffix`
/// (tests only).
#[cfg(test)]
pub(crate) fn burnpack_f32(path: &std::path::Path, suffix: &str) -> Vec<f32> {
    let reader = burn::store::burn_pack::Reader::from_file(path).unwrap();
    let name = reader
        .tensor_names()
        .iter()
        .map(|n| n.to_string())
        .find(|n| n.ends_with(suffix))
        .unwrap();
    reader
        .tensor_data(&name)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
