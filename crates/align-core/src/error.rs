//! Typed errors for everything a caller of `align-core` can get wrong.

use thiserror::Error;

/// Errors returned by `align-core`.
///
/// Every variant names the offending input so that a command-line front end can print one
/// clear line and exit non-zero.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// A backend was asked for by name but is unknown, or not compiled into this binary.
    #[error("device `{requested}`: {reason}")]
    Device {
        /// What was asked for (flag value or `BURN_DEVICE`).
        requested: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Two inputs that must agree in length or shape do not.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    Shape {
        /// Which argument or field.
        what: String,
        /// What was expected.
        expected: String,
        /// What was found.
        got: String,
    },
    /// A configuration value is out of its valid range.
    #[error("invalid value for `{field}`: {reason}")]
    Config {
        /// The configuration field.
        field: String,
        /// Why the value is rejected.
        reason: String,
    },
    /// A NaN or infinity was found where a finite number is required.
    #[error("non-finite value in {what}: {value}")]
    NonFinite {
        /// Where the value was found.
        what: String,
        /// The offending value.
        value: f64,
    },
    /// An error reported by a training job (an algorithm, a reward, a model).
    #[error("{0}")]
    Job(String),
    /// A run directory or checkpoint could not be read or written.
    #[error("{path}: {reason}")]
    Checkpoint {
        /// The file or directory.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A training run stopped on a non-finite loss, reward or statistic.
    #[error(
        "{metric} became {value} at iteration {iteration}; the last good checkpoint in {dir} is intact"
    )]
    Diverged {
        /// The metric.
        metric: String,
        /// Its value.
        value: f64,
        /// The iteration.
        iteration: usize,
        /// The run directory.
        dir: String,
    },
    /// Another process is writing into the run directory.
    #[error(
        "{dir} is in use by {holder} (lock file {lock}); wait for that run to end, stop it, or choose another directory"
    )]
    RunInUse {
        /// The run directory.
        dir: String,
        /// The holder the lock file names (`pid N on HOST`).
        holder: String,
        /// The lock file.
        lock: String,
    },
    /// Reading a tensor back to the host failed.
    #[error("could not read tensor `{what}` back to the host: {reason}")]
    Readback {
        /// Which tensor.
        what: String,
        /// The backend's message.
        reason: String,
    },
}

impl CoreError {
    /// Shorthand for [`CoreError::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`CoreError::Shape`].
    pub fn shape(
        what: impl Into<String>,
        expected: impl std::fmt::Display,
        got: impl std::fmt::Display,
    ) -> Self {
        Self::Shape {
            what: what.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}

/// Result alias for `align-core`.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
