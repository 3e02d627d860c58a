//! Errors of reward backpropagation.

use thiserror::Error;

/// Anything a pathwise gradient computation can fail on.
#[derive(Debug, Error)]
pub enum BackpropError {
    /// A configuration value is out of range.
    #[error("{field}: {reason}")]
    Config {
        /// The configuration field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A core computation failed (shapes, non-finite values).
    #[error(transparent)]
    Core(#[from] align_core::CoreError),
    /// A sampler step failed (out of range, shapes, parameterization).
    #[error(transparent)]
    Sampler(#[from] align_samplers::SamplerError),
    /// A reward, loss or cotangent became NaN or infinite.
    #[error("{what} became {value}")]
    NonFinite {
        /// What was being computed.
        what: String,
        /// The offending value.
        value: f64,
    },
    /// The caller's reward failed.
    #[error("reward: {0}")]
    Reward(String),
    /// The caller's prompt encoder failed.
    #[error("encoding prompts: {0}")]
    Encode(String),
    /// Nothing reaches the parameters or the input (untracked tensors).
    #[error("{0}")]
    Untracked(String),
}

impl BackpropError {
    /// A configuration error.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, BackpropError>;
