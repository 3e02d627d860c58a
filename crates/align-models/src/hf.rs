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

/// The largest width (channels, hidden size, feed-forward size, embedding or attention
/// dimension) a configuration may declare: far above any published diffusion or text model
/// (T5-XXL's feed-forward is 10 240 wide).
pub const MAX_WIDTH: usize = 1 << 16;
/// The largest count (layers, blocks, heads) a configuration may declare.
pub const MAX_COUNT: usize = 1024;
/// The largest vocabulary or table a configuration may declare.
pub const MAX_TABLE: usize = 1 << 21;

/// Checks `(field, value, largest allowed)` triples: a damaged or hostile configuration must
/// not make a model's `init` build billions of layers or overflow a size product before the
/// weights are read (the layers' tensors are created lazily, their structures are not).
///
/// # Errors
/// [`ModelError::Config`] naming the first field above its bound.
pub fn check_sizes(fields: &[(&str, usize, usize)]) -> Result<()> {
    match fields.iter().find(|(_, v, max)| v > max) {
        Some((field, v, max)) => Err(ModelError::config(
            *field,
            format!("{v} is above the largest supported, {max}"),
        )),
        None => Ok(()),
    }
}

/// `e` with the configuration file it came from: a [`ModelError::Config`] (a field the file
/// sets to a value the model does not support) gets ` (in PATH)` appended to its reason;
/// other errors name their file already and pass unchanged.
pub fn in_file(path: &Path, e: ModelError) -> ModelError {
    match e {
        ModelError::Config { field, reason } => ModelError::Config {
            field,
            reason: format!("{reason} (in {})", path.display()),
        },
        other => other,
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
/// A checkpoint saved in shards (the Hugging Face libraries shard large models: SD3's T5-XXL is
/// `model-00001-of-00002.safetensors`, …) is read when `path` is absent and
/// `<path>.index.json` lists the shards in its `weight_map`: every shard is loaded in turn,
/// and a parameter counts as missing only if no shard holds it.
///
/// # Errors
/// [`ModelError::Checkpoint`] naming the file: missing or unreadable (a shard the index names
/// included), or listing the model's missing tensors, the file's unexpected tensors and the
/// shape mismatches.
pub fn load_pytorch_safetensors<M: Module>(
    mut model: M,
    path: &Path,
    remap: &[(&str, &str)],
    ignore: &[&str],
) -> Result<M> {
    let shards = checkpoint_files(path)?;
    let ignore: Vec<regex::Regex> = ignore
        .iter()
        .map(|p| regex::Regex::new(p))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| ModelError::config("ignore", e.to_string()))?;
    let mut missing: Option<std::collections::BTreeSet<String>> = None;
    let mut unused: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for shard in &shards {
        if !shard.is_file() {
            return Err(checkpoint_error(shard, "no such file"));
        }
        // Half-precision files (`*.fp16.safetensors`) are cast to f32 on load: every
        // computation in `align` is f32.
        let adapter = PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32));
        let mut store = SafetensorsStore::from_file(shard)
            .with_from_adapter(adapter)
            .allow_partial(true)
            .validate(false);
        for (from, to) in remap {
            store = store.with_key_remapping(*from, *to);
        }
        let result = model
            .load_from(&mut store)
            .map_err(|e| checkpoint_error(shard, format!("does not load: {e:?}")))?;
        let here: std::collections::BTreeSet<String> =
            result.missing.iter().map(|(k, _)| k.clone()).collect();
        missing = Some(match missing {
            None => here,
            Some(before) => before.intersection(&here).cloned().collect(),
        });
        unused.extend(
            result
                .unused
                .iter()
                .filter(|k| !ignore.iter().any(|r| r.is_match(k)))
                .cloned(),
        );
        errors.extend(result.errors.iter().map(|e| format!("{e}")));
    }
    let mut problems = Vec::new();
    let missing: Vec<String> = missing.unwrap_or_default().into_iter().collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} tensors of the model are missing from the file: {missing:?}",
            missing.len()
        ));
    }
    if !unused.is_empty() {
        problems.push(format!(
            "{} tensors of the file are unknown to the model: {unused:?}",
            unused.len()
        ));
    }
    if !errors.is_empty() {
        problems.push(format!("mismatched tensors: {errors:?}"));
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

/// The index of a sharded checkpoint: `<path>.index.json`.
pub fn shard_index(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".index.json");
    std::path::PathBuf::from(name)
}

/// The files of a checkpoint: `path` itself, or the shards its `.index.json` lists (sorted,
/// each once), beside it.
///
/// # Errors
/// [`ModelError::Checkpoint`]: neither exists, or the index is not JSON with a `weight_map`
/// of file names in the same directory.
pub fn checkpoint_files(path: &Path) -> Result<Vec<std::path::PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let index = shard_index(path);
    if !index.is_file() {
        return Err(checkpoint_error(
            path,
            format!("no such file (nor a shard index {})", index.display()),
        ));
    }
    let json: serde_json::Value = read_config(&index)?;
    let map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| checkpoint_error(&index, "no `weight_map` object"))?;
    let mut files = std::collections::BTreeSet::new();
    for (tensor, file) in map {
        let name = file
            .as_str()
            .filter(|f| !f.is_empty() && !f.contains('/') && !f.contains('\\') && *f != "..")
            .ok_or_else(|| {
                checkpoint_error(
                    &index,
                    format!("`weight_map.{tensor}` is not a file name beside the index"),
                )
            })?;
        files.insert(name.to_string());
    }
    if files.is_empty() {
        return Err(checkpoint_error(&index, "`weight_map` lists no shard"));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
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
