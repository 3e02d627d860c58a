//! CLIP (Radford et al., 2021) as transformers implements it: the BPE tokenizer, the text
//! and vision transformers, the two-tower model with its projections and logit scale, and the
//! image preprocessing — loaded from Hugging Face directories.
//!
//! - [`ClipTokenizer`]: `vocab.json` + `merges.txt` → ids wrapped in `<|startoftext|>` …
//!   `<|endoftext|>`, padded to 77.
//! - [`ClipTextModel`]: Stable Diffusion 1.x's text encoder (`text_encoder/`), or the text
//!   tower of a `CLIPModel`: ids `[B, L]` → hidden states `[B, L, D]` + pooled `[B, D]`.
//! - [`ClipVisionModel`]: normalised pixels `[B, 3, S, S]` → patch tokens + pooled class token.
//! - [`ClipModel`]: both towers and the projections; PickScore, HPS and CLIP-score
//!   checkpoints are `CLIPModel`s.
//! - [`ClipImageProcessor`]: `[-1, 1]` images → the vision tower's input, differentiably.
//!
//! Every layer's parameter path equals the checkpoint's tensor name, so
//! [`crate::hf::load_pytorch_safetensors`] loads the files as they are; the outputs match
//! transformers' to ≤ 1e-4 relative error in f32 (tests against `fixtures/sd-tiny` and
//! `fixtures/clip-tiny`).
//!
//! ## Example
//!
//! ```
//! use align_models::clip::{ClipImageProcessor, ClipModel, ClipTokenizer};
//! use burn::prelude::*;
//!
//! let device = align_core::test_device();
//! let dir = align_models::hf::fixtures_dir().join("clip-tiny");
//! let tokenizer = ClipTokenizer::from_dir(&dir)?;
//! let model = ClipModel::load(&dir, &device)?;
//! let processor = ClipImageProcessor::from_dir(&dir)?;
//!
//! let ids = tokenizer.encode_padded("a photo of a cat", tokenizer.model_max_length());
//! let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
//! let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 77]), &device);
//! let images = Tensor::<4>::zeros([1, 3, 32, 32], &device); // [-1, 1]
//! let logits = model.logits_per_image(processor.preprocess(images), ids);
//! assert_eq!(logits.dims(), [1, 1]);
//! # Ok::<(), align_models::ModelError>(())
//! ```

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};

pub mod encoder;
pub mod model;
pub mod processor;
pub mod projected;
pub mod text;
pub mod tokenizer;
pub mod vision;

pub use encoder::{
    ClipActivation, ClipAttention, ClipEncoder, ClipEncoderConfig, ClipEncoderLayer, ClipMlp,
};
pub use model::{ClipConfig, ClipModel, l2_normalize};
pub use processor::{ClipImageProcessor, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};
pub use projected::{ClipProjectedOutput, ClipTextModelWithProjection};
pub use text::{ClipTextConfig, ClipTextEmbeddings, ClipTextModel, ClipTextOutput};
pub use tokenizer::{CLIP_MAX_LENGTH, CLIP_PATTERN, ClipTokenizer, bytes_to_unicode};
pub use vision::{ClipVisionConfig, ClipVisionEmbeddings, ClipVisionModel, ClipVisionOutput};

/// Reads a tower's config from `dir/config.json`: the object under `key` (`text_config`,
/// `vision_config`) of a `CLIPModel` config, or the whole file for a single tower.
fn tower_config<T: DeserializeOwned>(dir: &Path, key: &str) -> Result<T> {
    let path = dir.join("config.json");
    let json: serde_json::Value = crate::hf::read_config(&path)?;
    let section = match json.get(key) {
        Some(inner) if inner.is_object() => inner.clone(),
        _ => json,
    };
    serde_json::from_value(section).map_err(|e| ModelError::Checkpoint {
        path: path.display().to_string(),
        reason: format!("invalid {key}: {e}"),
    })
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Reference tensors of the fixtures, for the tests of this module.

    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use burn::prelude::*;

    use crate::hf::{fixtures_dir, max_relative_error, read_safetensors};

    /// `fixtures/<name>`.
    pub fn fixture(name: &str) -> PathBuf {
        fixtures_dir().join(name)
    }

    /// The reference tensors of `fixtures/<name>/reference.safetensors`.
    pub fn references(name: &str) -> BTreeMap<String, TensorData> {
        match read_safetensors(&fixture(name).join("reference.safetensors")) {
            Ok(r) => r,
            Err(e) => panic!("references of {name}: {e}"),
        }
    }

    /// A reference by name.
    pub fn get(refs: &BTreeMap<String, TensorData>, name: &str) -> TensorData {
        match refs.get(name) {
            Some(d) => d.clone(),
            None => panic!("no reference tensor `{name}`"),
        }
    }

    /// Integer ids from a reference (stored as f32 by `read_safetensors`).
    pub fn ids(data: &TensorData, device: &Device) -> Tensor<2, Int> {
        let shape = data.shape().to_vec();
        let values: Vec<i64> = data.iter::<f32>().map(|v| v.round() as i64).collect();
        Tensor::<2, Int>::from_data(TensorData::new(values, shape), device)
    }

    /// A float tensor from a reference.
    pub fn floats<const D: usize>(data: &TensorData, device: &Device) -> Tensor<D> {
        Tensor::<D>::from_data(data.clone(), device)
    }

    /// Asserts `max_relative_error(actual, expected) ≤ tol` and returns the error.
    pub fn assert_close<const D: usize>(
        what: &str,
        actual: Tensor<D>,
        expected: &TensorData,
        tol: f64,
    ) -> f64 {
        let err = match max_relative_error(&actual.into_data(), expected) {
            Ok(e) => e,
            Err(e) => panic!("{what}: {e}"),
        };
        println!("{what}: max relative error {err:.3e}");
        assert!(
            err <= tol,
            "{what}: max relative error {err:.3e} > {tol:.0e}"
        );
        err
    }
}
