//! Typed errors for everything a caller of `align-rewards` can get wrong.
//!
//! A reward maps a batch `[B, 3, H, W]` and `B` prompts to `B` finite scores; every way that
//! contract can be broken (counts, channels, prompts, NaN, configuration) has a variant here.

use align_data::DataError;
use thiserror::Error;

/// Errors returned by `align-rewards`.
///
/// Every variant names the offending input so that a command-line front end can print one
/// clear line and exit non-zero.
#[derive(Debug, Error)]
pub enum RewardError {
    /// The number of prompts differs from the batch size.
    #[error("reward `{reward}`: {prompts} prompts for a batch of {batch} images")]
    PromptCount {
        /// The reward that was asked to score.
        reward: String,
        /// Batch size `B` of the images.
        batch: usize,
        /// Number of prompts given.
        prompts: usize,
    },
    /// A tensor or buffer has the wrong shape.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    Shape {
        /// Which argument or field.
        what: String,
        /// What was expected.
        expected: String,
        /// What was found.
        got: String,
    },
    /// A prompt could not be parsed by the reward that needs it.
    #[error("reward `{reward}`: prompt {index} `{prompt}` cannot be used: {source}")]
    Prompt {
        /// The reward that parsed the prompt.
        reward: String,
        /// Position of the prompt in the batch.
        index: usize,
        /// The prompt text.
        prompt: String,
        /// Why it was rejected (boxed: `DataError` is large).
        #[source]
        source: Box<DataError>,
    },
    /// A score (or an input pixel) is NaN or infinite.
    #[error("reward `{reward}`: non-finite {what} at batch index {index}: {value}")]
    NonFinite {
        /// The reward concerned.
        reward: String,
        /// What was non-finite ("score", "pixel", ...).
        what: String,
        /// Batch index of the offending sample.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// A configuration value is out of its valid range.
    #[error("invalid value for `{field}`: {reason}")]
    Config {
        /// The configuration field.
        field: String,
        /// Why the value is rejected.
        reason: String,
    },
    /// Reading a tensor back to the host failed.
    #[error("could not read tensor `{what}` back to the host: {reason}")]
    Readback {
        /// Which tensor.
        what: String,
        /// The backend's message.
        reason: String,
    },
    /// Encoding an image (e.g. to JPEG) failed.
    #[error("reward `{reward}`: could not encode image {index}: {reason}")]
    Encode {
        /// The reward concerned.
        reward: String,
        /// Batch index of the image.
        index: usize,
        /// The encoder's message.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file or directory.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// An external scorer (command or HTTP service) failed: it could not be started, timed
    /// out, exited with an error, or answered something other than one finite score per image.
    #[error("external reward `{reward}`: {reason}")]
    External {
        /// The reward's name.
        reward: String,
        /// What went wrong, with an excerpt of the scorer's output.
        reason: String,
    },
    /// An error from `align-data` (image construction, ShapeEval configuration); boxed
    /// because `DataError` is large.
    #[error(transparent)]
    Data(Box<DataError>),
}

impl From<DataError> for RewardError {
    fn from(e: DataError) -> Self {
        Self::Data(Box::new(e))
    }
}

impl RewardError {
    /// Shorthand for [`RewardError::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`RewardError::Shape`].
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

/// `Result` with [`RewardError`].
pub type Result<T> = std::result::Result<T, RewardError>;
