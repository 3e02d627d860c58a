//! Errors of the preference losses.

use thiserror::Error;

/// Anything a preference loss can fail on.
#[derive(Debug, Error)]
pub enum PrefError {
    /// A configuration value is out of range.
    #[error("{field}: {reason}")]
    Config {
        /// The configuration field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Shapes or values (from `align-core`).
    #[error(transparent)]
    Core(#[from] align_core::CoreError),
    /// A loss became NaN or infinite.
    #[error("{what} became {value}")]
    NonFinite {
        /// What was being computed.
        what: String,
        /// The offending value.
        value: f64,
    },
}

impl PrefError {
    /// A configuration error.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, PrefError>;
