//! Typed errors of the model crate.

use thiserror::Error;

/// Errors returned by `align-models`.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ModelError {
    /// A model configuration is inconsistent.
    #[error("invalid model configuration `{field}`: {reason}")]
    Config {
        /// The field.
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A checkpoint could not be written or read, or does not fit the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// An input does not fit the model.
    #[error("input `{what}`: expected {expected}, got {got}")]
    Input {
        /// Which input.
        what: String,
        /// What the model needs.
        expected: String,
        /// What it got.
        got: String,
    },
}

impl ModelError {
    /// Shorthand for [`ModelError::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias for `align-models`.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
