//! Typed errors of the samplers.

use align_core::{CoreError, Parameterization};
use thiserror::Error;

/// Errors returned by `align-samplers`.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SamplerError {
    /// An error from `align-core` (shapes, configuration, non-finite values).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A log-probability was requested for a deterministic transition (σ = 0).
    #[error(
        "{sampler} step {step} is deterministic (σ = 0), so its log-probability is undefined; \
         {hint}"
    )]
    Deterministic {
        /// The sampler's name.
        sampler: &'static str,
        /// The step index (generation order).
        step: usize,
        /// What to do instead.
        hint: &'static str,
    },
    /// The model's output type cannot drive this sampler.
    #[error("{sampler} cannot use a model that predicts {parameterization:?}")]
    UnsupportedParameterization {
        /// The sampler's name.
        sampler: &'static str,
        /// The model's parameterization.
        parameterization: Parameterization,
    },
    /// A step index beyond the schedule.
    #[error("step {step} is out of range for a {steps}-step {sampler} schedule")]
    StepOutOfRange {
        /// The sampler's name.
        sampler: &'static str,
        /// The requested step.
        step: usize,
        /// The number of steps.
        steps: usize,
    },
}

impl SamplerError {
    /// Shorthand for a configuration error.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SamplerError::Core(CoreError::config(field, reason))
    }
}

/// Result alias for `align-samplers`.
pub type Result<T, E = SamplerError> = std::result::Result<T, E>;
