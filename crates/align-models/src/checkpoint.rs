//! Safetensors checkpoints, written atomically.
//!
//! [`save_safetensors`] writes to a temporary file in the destination directory and renames it
//! over the target, so a crash mid-write never leaves a truncated checkpoint and the previous
//! one survives. [`load_safetensors`] refuses files whose tensors do not match the model,
//! listing the missing, unexpected and mis-shaped keys.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};

use crate::error::{ModelError, Result};

fn io_error(path: &Path, what: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Checkpoint {
        path: path.display().to_string(),
        reason: format!("{what}: {e}"),
    }
}

/// The temporary file beside `path` that an atomic write renames into place.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Saves `model`'s parameters to `path` (safetensors) atomically.
///
/// # Errors
/// [`ModelError::Checkpoint`] naming the file if it cannot be written or renamed.
pub fn save_safetensors<M: Module>(model: &M, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_error(path, "creating its directory", e))?;
    }
    let tmp = temp_path(path);
    let mut store = SafetensorsStore::from_file(&tmp).overwrite(true);
    if let Err(e) = model.save_into(&mut store) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(path, "writing", format!("{e:?}")));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_error(path, "renaming the temporary file", e)
    })
}

/// Loads parameters from `path` into `model`, requiring an exact match.
///
/// # Errors
/// [`ModelError::Checkpoint`] if the file is missing or unreadable, or lists the missing,
/// unexpected and mis-shaped tensors.
pub fn load_safetensors<M: Module>(model: M, path: &Path) -> Result<M> {
    load_checked(model, path, false).map(|(model, _)| model)
}

/// Warm-starts a *grown* model from a smaller one's weights: every tensor of `path` must fit a
/// parameter of `model` (same path, same shape); parameters the file lacks keep their
/// initialisation. Returns the model and the paths of those new parameters.
///
/// Use it to add blocks whose initialisation makes them the identity (the UNet's
/// attention blocks, whose output projection starts at zero) to a trained model, so that
/// training continues from the trained model's outputs.
///
/// # Errors
/// [`ModelError::Checkpoint`] if the file is missing or unreadable, holds a tensor the model
/// has no place for, or a tensor of the wrong shape.
pub fn warm_start_safetensors<M: Module>(model: M, path: &Path) -> Result<(M, Vec<String>)> {
    load_checked(model, path, true)
}

fn load_checked<M: Module>(
    mut model: M,
    path: &Path,
    allow_missing: bool,
) -> Result<(M, Vec<String>)> {
    if !path.is_file() {
        return Err(io_error(path, "reading", "no such file"));
    }
    let mut store = SafetensorsStore::from_file(path).allow_partial(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| io_error(path, "does not load into the model", format!("{e:?}")))?;
    let mut problems = Vec::new();
    let missing: Vec<String> = result.missing.iter().map(|(k, _)| k.clone()).collect();
    if !allow_missing && !missing.is_empty() {
        problems.push(format!("missing tensors {missing:?}"));
    }
    if !result.unused.is_empty() {
        problems.push(format!("unexpected tensors {:?}", result.unused));
    }
    if !result.errors.is_empty() {
        let errs: Vec<String> = result.errors.iter().map(|e| format!("{e:?}")).collect();
        problems.push(format!("mismatches {errs:?}"));
    }
    if problems.is_empty() {
        Ok((model, missing))
    } else {
        Err(io_error(
            path,
            "does not match the model",
            problems.join("; "),
        ))
    }
}
