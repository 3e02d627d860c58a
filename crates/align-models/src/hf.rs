//! Reading checkpoints in the layouts of the Hugging Face libraries (diffusers, transformers).
//!
//! Real models come as a directory per component: a `config.json` and a safetensors file whose
//! tensor names follow the PyTorch module tree (`down_blocks.0.resnets.1.conv1.weight`). The
//! modules of [`crate::sd`] and [`crate::clip`] are laid out so that their burn parameter paths
//! equal those names; what differs is handled here:
//!
//! - PyTorch stores `Linear` weights as `[d_out, d_in]`, burn as `[d_in, d_out]`, and calls the
//!   affine parameters of normalisation layers `weight`/`bias` instead of `gamma`/`beta`
//!   (burn-store's `PyTorchToBurnAdapter` converts both); f16 / bf16 files are cast to f32;
//! - a few module names cannot be burn field names (`to_out.0`, `ff.net.2`): each loader passes
//!   regex remappings from the file's names to ours;
//! - buffers that are not parameters (`position_ids`) are listed as ignorable.
//!
//! A file that does not fit is refused with every missing, unexpected and mis-shaped tensor
//! named, so that a user who points `align` at the wrong directory learns why.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::store::{
    FloatCastAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
use burn::tensor::DType;
use burn::tensor::TensorData;
use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};

fn checkpoint_error(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads and parses a JSON configuration file (`config.json`, `scheduler_config.json`, …).
///
/// Unknown fields are ignored (the Hugging Face files carry many that do not change the
/// computation); missing required fields and wrong types are errors naming the file.
///
/// # Errors
/// [`ModelError::Checkpoint`] naming the file if it is missing, unreadable or does not parse.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| checkpoint_error(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| checkpoint_error(path, format!("invalid JSON: {e}")))
}

/// Loads a PyTorch-layout safetensors file into `model`.
///
/// `remap` holds `(regex on the file's names, replacement)` pairs applied to the file's tensor
/// names before matching (e.g. `(r"\.to_out\.0\.", ".to_out.")`); file tensors whose (remapped)
/// name matches one of the `ignore` regexes may be absent from the model. Every parameter of the
/// model must be present with the right shape.
///
/// # Errors
/// [`ModelError::Checkpoint`] naming the file: missing or unreadable, or listing the model's
/// missing tensors, the file's unexpected tensors and the shape mismatches.
pub fn load_pytorch_safetensors<M: Module>(
    mut model: M,
    path: &Path,
    remap: &[(&str, &str)],
    ignore: &[&str],
) -> Result<M> {
    if !path.is_file() {
        return Err(checkpoint_error(path, "no such file"));
    }
    // Half-precision files (`*.fp16.safetensors`) are cast to f32 on load: every computation
    // in `align` is f32.
    let adapter = PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32));
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(adapter)
        .allow_partial(true)
        .validate(false);
    for (from, to) in remap {
        store = store.with_key_remapping(*from, *to);
    }
    let result = model
        .load_from(&mut store)
        .map_err(|e| checkpoint_error(path, format!("does not load: {e:?}")))?;
    let ignore: Vec<regex::Regex> = ignore
        .iter()
        .map(|p| regex::Regex::new(p))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| ModelError::config("ignore", e.to_string()))?;
    let mut problems = Vec::new();
    if !result.missing.is_empty() {
        let keys: Vec<&str> = result.missing.iter().map(|(k, _)| k.as_str()).collect();
        problems.push(format!(
            "{} tensors of the model are missing from the file: {keys:?}",
            keys.len()
        ));
    }
    let unused: Vec<&String> = result
        .unused
        .iter()
        .filter(|k| !ignore.iter().any(|r| r.is_match(k)))
        .collect();
    if !unused.is_empty() {
        problems.push(format!(
            "{} tensors of the file are unknown to the model: {unused:?}",
            unused.len()
        ));
    }
    if !result.errors.is_empty() {
        let errs: Vec<String> = result.errors.iter().map(|e| format!("{e}")).collect();
        problems.push(format!("mismatched tensors: {errs:?}"));
    }
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(checkpoint_error(
            path,
            format!("does not fit the configured model: {}", problems.join("; ")),
        ))
    }
}

/// Every tensor of a safetensors file as `f32` [`TensorData`] (integer tensors converted), by
/// name. For reference outputs and small files; model weights go through
/// [`load_pytorch_safetensors`].
///
/// # Errors
/// [`ModelError::Checkpoint`] naming the file if it is missing, not safetensors, or holds a
/// dtype other than f32, f16, bf16, i64 or i32.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, TensorData>> {
    let bytes = std::fs::read(path).map_err(|e| checkpoint_error(path, e.to_string()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| checkpoint_error(path, format!("not a safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::I64 => data
                .chunks_exact(8)
                .map(|c| {
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            safetensors::Dtype::I32 => data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
            other => {
                return Err(checkpoint_error(
                    path,
                    format!(
                        "tensor `{name}` has dtype {other:?}; expected f32, f16, bf16, i64 or i32"
                    ),
                ));
            }
        };
        out.insert(name, TensorData::new(values, view.shape().to_vec()));
    }
    Ok(out)
}

/// The largest relative error `max|a − b| / max|b|` between two tensors of equal shape: the
/// measure the reference-output tests bound by 1e-4.
///
/// # Errors
/// [`ModelError::Input`] if the shapes differ.
pub fn max_relative_error(actual: &TensorData, expected: &TensorData) -> Result<f64> {
    if actual.shape() != expected.shape() {
        return Err(ModelError::Input {
            what: "actual".into(),
            expected: format!("{:?}", expected.shape()),
            got: format!("{:?}", actual.shape()),
        });
    }
    let a: Vec<f32> = actual.try_to_vec::<f32>().map_err(|e| ModelError::Input {
        what: "actual".into(),
        expected: "f32 data".into(),
        got: format!("{e:?}"),
    })?;
    let b: Vec<f32> = expected
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Input {
            what: "expected".into(),
            expected: "f32 data".into(),
            got: format!("{e:?}"),
        })?;
    let scale = b.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// The fixtures directory of the repository (`fixtures/`), for tests and examples.
pub fn fixtures_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Writes `module`'s weights as a PyTorch-layout safetensors file (`Linear` weights transposed
/// back to `[d_out, d_in]`, `dtype` precision, `format = "pt"` in the header), with the burn →
/// PyTorch name `remaps` (regex, replacement) applied, atomically (temporary file, then
/// rename). LoRA adapters must be merged first ([`Module::materialize`]).
///
/// # Errors
/// [`ModelError::Config`] if the module still carries adapters; [`ModelError::Checkpoint`]
/// if the file cannot be written.
pub fn save_pytorch_safetensors<M: Module>(
    module: &M,
    path: &Path,
    dtype: crate::WeightDtype,
    remaps: &[(&str, &str)],
) -> Result<()> {
    if crate::lora_factor_count(module) > 0 {
        return Err(ModelError::config(
            "lora",
            "merge the adapters (materialize) before saving full weights",
        ));
    }
    use burn::store::{
        BurnToPyTorchAdapter, FloatCastAdapter, ModuleAdapter, ModuleSnapshot, SafetensorsStore,
    };
    let fail = |reason: String| ModelError::Checkpoint {
        path: path.display().to_string(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let tmp = crate::checkpoint::temp_path(path);
    let mut store = SafetensorsStore::from_file(&tmp)
        .overwrite(true)
        .metadata("format", "pt")
        .with_to_adapter(BurnToPyTorchAdapter.chain(FloatCastAdapter::to(dtype.dtype())));
    for &(from, to) in remaps {
        store = store.with_key_remapping(from, to);
    }
    if let Err(e) = module.save_into(&mut store) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(format!("writing: {e:?}")));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(format!("renaming the temporary file: {e}"))
    })
}
