//! Typed errors of the training jobs.

use std::path::PathBuf;

use thiserror::Error;

/// Anything a training job can fail on. Every variant names the offending file, field or
/// model so that a front end can print one clear line.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A configuration value is out of range, missing, or does not fit the model.
    #[error("{field}: {reason}")]
    Config {
        /// The configuration field (`lora.rank`, `sde_window`, …).
        field: String,
        /// Why the value is rejected.
        reason: String,
    },
    /// A configuration file could not be read or parsed.
    #[error("{}: {reason}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What went wrong (I/O, TOML syntax, unknown field, invalid value).
        reason: String,
    },
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file was read but its content is unusable (no prompts, bad JSON, bad image).
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The run directory already holds a run and `resume` was not asked for.
    #[error(
        "{}: already holds a run: resume it (--resume) or choose another directory",
        dir.display()
    )]
    RunExists {
        /// The run directory.
        dir: PathBuf,
    },
    /// The model does not fit the algorithm or the reward.
    #[error("{}: {reason}", model.display())]
    Incompatible {
        /// The model directory.
        model: PathBuf,
        /// What the algorithm or reward needs.
        reason: String,
    },
    /// A prompt the tokenizer or text encoder refuses.
    #[error("prompt `{prompt}`: {reason}")]
    Prompt {
        /// The prompt.
        prompt: String,
        /// Why it is refused.
        reason: String,
    },
    /// A model failed to load or to run.
    #[error(transparent)]
    Model(#[from] align_models::ModelError),
    /// The runner (checkpoints, optimizer, divergence) failed.
    #[error(transparent)]
    Core(#[from] align_core::CoreError),
    /// An online-RL update failed.
    #[error(transparent)]
    Rl(#[from] align_rl::RlError),
    /// A reward failed to load or to score.
    #[error(transparent)]
    Reward(#[from] align_rewards::RewardError),
    /// World data (splits, datasets, preference files) failed.
    #[error(transparent)]
    Data(#[from] align_data::DataError),
    /// A sampler could not be built or stepped.
    #[error(transparent)]
    Sampler(#[from] align_samplers::SamplerError),
    /// A reward-backprop computation failed.
    #[error(transparent)]
    Backprop(#[from] align_backprop::BackpropError),
    /// A preference loss failed.
    #[error(transparent)]
    Pref(#[from] align_pref::PrefError),
    /// A tensor could not be read back to the host.
    #[error("reading {what} back to the host: {reason}")]
    Readback {
        /// Which tensor.
        what: String,
        /// The backend's message.
        reason: String,
    },
}

impl TrainError {
    /// Shorthand for [`TrainError::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`TrainError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// This error as the runner's job error (inside a [`align_core::Job`]).
    pub fn into_core(self) -> align_core::CoreError {
        match self {
            TrainError::Core(e) => e,
            other => align_core::CoreError::Job(other.to_string()),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
