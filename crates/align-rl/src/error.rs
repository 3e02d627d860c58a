//! Errors of the online-RL algorithms.

use thiserror::Error;

/// Anything an online-RL update can fail on.
#[derive(Debug, Error)]
pub enum RlError {
    /// A configuration value is out of range.
    #[error("{field}: {reason}")]
    Config {
        /// The configuration field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A core computation failed (shapes, non-finite values, advantages).
    #[error(transparent)]
    Core(#[from] align_core::CoreError),
    /// A sampler step failed (deterministic step, out of range, shapes).
    #[error(transparent)]
    Sampler(#[from] align_samplers::SamplerError),
    /// A loss or statistic became NaN or infinite.
    #[error("{what} became {value}")]
    NonFinite {
        /// What was being computed.
        what: String,
        /// The offending value.
        value: f64,
    },
    /// Encoding the prompts into conditions failed (the caller's encoder).
    #[error("encoding prompts: {0}")]
    Encode(String),
    /// A tensor could not be read back to the host.
    #[error("{0}")]
    Readback(String),
    /// The caller's reward failed (dense or step-wise rewards scored inside an update).
    #[error("reward: {0}")]
    Reward(String),
}

impl RlError {
    /// A configuration error.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, RlError>;
