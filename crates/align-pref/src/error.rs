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

/// Checks that a hyper-parameter is finite and positive; `field` names it in the error.
pub(crate) fn check_positive(field: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(PrefError::config(field, format!("{v} must be positive")))
    }
}

/// Checks that a scalar loss `[1]` is finite; `what` names it in the error.
pub(crate) fn check_loss(loss: &burn::tensor::Tensor<1>, what: impl Into<String>) -> Result<()> {
    let value: f32 = loss
        .clone()
        .detach()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| PrefError::config("loss", format!("unreadable: {e:?}")))?[0];
    if value.is_finite() {
        Ok(())
    } else {
        Err(PrefError::NonFinite {
            what: what.into(),
            value: f64::from(value),
        })
    }
}

/// The fraction of entries `> 0` (a strict inequality, as the official implicit accuracy).
pub(crate) fn positive_fraction(t: &burn::tensor::Tensor<1>, what: &str) -> Result<f64> {
    let v: Vec<f32> = t
        .clone()
        .detach()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| PrefError::config(what, format!("unreadable: {e:?}")))?;
    Ok(v.iter().filter(|&&x| x > 0.0).count() as f64 / v.len().max(1) as f64)
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, PrefError>;
