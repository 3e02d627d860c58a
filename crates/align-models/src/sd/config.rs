//! Helpers for the diffusers `config.json` files: values that may be one number or one per
//! block, and the check that a field holds its supported value.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// A config value that is either shared by every block or given per block (diffusers accepts
/// both for `attention_head_dim`, `layers_per_block`, `cross_attention_dim`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// One value for every block.
    One(T),
    /// One value per down block (finest first).
    Many(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value per block, for `blocks` blocks.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming `field` if a list has the wrong length.
    pub fn per_block(&self, blocks: usize, field: &str) -> Result<Vec<T>> {
        match self {
            Self::One(v) => Ok(vec![v.clone(); blocks]),
            Self::Many(v) if v.len() == blocks => Ok(v.clone()),
            Self::Many(v) => Err(ModelError::config(
                field,
                format!("has {} entries for {blocks} blocks", v.len()),
            )),
        }
    }
}

/// Errors naming `field` unless `ok`.
pub(crate) fn require(ok: bool, field: &str, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(ModelError::config(field, reason()))
    }
}

/// Errors naming `field` if a JSON value is present and not `null`.
pub(crate) fn require_null(value: &Option<serde_json::Value>, field: &str) -> Result<()> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(v) => Err(ModelError::config(
            field,
            format!("{v} is not supported (only null)"),
        )),
    }
}
