//! Typed errors for everything a caller of `align-data` can get wrong.

use std::path::PathBuf;

use thiserror::Error;

/// Errors returned by `align-data`.
///
/// Every variant names the offending input (a field, a word, a file) so that a command-line
/// front end can print one clear line and exit non-zero.
#[derive(Debug, Error)]
pub enum DataError {
    /// A configuration value is out of its valid range.
    #[error("invalid value for `{field}`: {reason}")]
    Config {
        /// The configuration field.
        field: String,
        /// Why the value is rejected.
        reason: String,
    },
    /// A scene specification breaks a rule of the Shapes world.
    #[error("invalid scene: {reason}")]
    InvalidScene {
        /// Which rule was broken.
        reason: String,
    },
    /// Rejection sampling could not place every object without touching.
    #[error("could not place {objects} objects in a {size}x{size} image after {attempts} attempts")]
    Placement {
        /// How many objects the scene has.
        objects: usize,
        /// The image side in pixels.
        size: usize,
        /// How many whole-scene attempts were made.
        attempts: usize,
    },
    /// A word is not in the Shapes vocabulary.
    #[error("unknown word `{word}` in prompt `{prompt}`")]
    UnknownWord {
        /// The offending word.
        word: String,
        /// The whole prompt.
        prompt: String,
    },
    /// A prompt is made of known words but does not follow the grammar.
    #[error("cannot parse prompt `{prompt}`: {reason}")]
    Grammar {
        /// The whole prompt.
        prompt: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A prompt has more tokens than the tokenizer's fixed length.
    #[error("prompt `{prompt}` has {len} tokens, more than the maximum of {max}")]
    TooLong {
        /// The whole prompt.
        prompt: String,
        /// Its number of tokens.
        len: usize,
        /// The tokenizer's maximum length.
        max: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of size {vocab_size}")]
    UnknownToken {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A buffer has the wrong length or dimensions.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    Shape {
        /// Which argument or field.
        what: String,
        /// What was expected.
        expected: String,
        /// What was found.
        got: String,
    },
    /// A file named by a caption file (or the caption file itself) does not exist.
    #[error("missing file `{}`", path.display())]
    MissingFile {
        /// The missing path.
        path: PathBuf,
    },
    /// An image in an image folder does not have the required size.
    #[error("image `{}` is {found_width}x{found_height}, expected {width}x{height}", path.display())]
    ImageSize {
        /// The offending image.
        path: PathBuf,
        /// Required width.
        width: u32,
        /// Required height.
        height: u32,
        /// Actual width.
        found_width: u32,
        /// Actual height.
        found_height: u32,
    },
    /// A line of a caption file is malformed.
    #[error("`{}` line {line}: {reason}", path.display())]
    CaptionLine {
        /// The caption file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A line of a JSONL file is malformed.
    #[error("`{}` line {line}: {reason}", path.display())]
    JsonLine {
        /// The JSONL file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// An image a line of a dataset file (preference JSONL, `captions.txt`) names cannot be
    /// used ([`DataError::MissingFile`], [`DataError::ImageSize`], [`DataError::Decode`],
    /// [`DataError::Io`] inside).
    #[error("`{}` line {line}: {source}", path.display())]
    Record {
        /// The JSONL file.
        path: PathBuf,
        /// 1-based line number of the record.
        line: usize,
        /// What is wrong with the image it names.
        #[source]
        source: Box<DataError>,
    },
    /// Writing a file failed.
    #[error("cannot write `{}`: {reason}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An image file could not be decoded.
    #[error("cannot decode image `{}`: {source}", path.display())]
    Decode {
        /// The offending image.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// An I/O error while reading a file.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An index is past the end of a finite dataset.
    #[error("index {index} out of range for a dataset of {len} items")]
    Index {
        /// The requested index.
        index: usize,
        /// The dataset length.
        len: usize,
    },
}

/// `Result` with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    pub(crate) fn config(field: &str, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn scene(reason: impl Into<String>) -> Self {
        Self::InvalidScene {
            reason: reason.into(),
        }
    }
}
