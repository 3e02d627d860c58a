//! The two-tower CLIP model (transformers' `CLIPModel`): projected image and text embeddings
//! whose scaled cosine similarity scores how well an image fits a caption.
//!
//! ```text
//! image_embeds = visual_projection(vision_model(pixels).pooler_output)   [B, P], no bias
//! text_embeds  = text_projection(text_model(ids).pooler_output)          [B, P], no bias
//! logits_per_image = exp(logit_scale) · (î · t̂ᵀ)      î, t̂: the embeddings over their L2 norms
//! ```
//!
//! PickScore, HPS v2 and the CLIP score are all this computation on different checkpoints.
//!
//! `logit_scale` is a 0-d tensor (shape `[]`) in the checkpoint; burn has no rank-0 tensors and
//! burn-store does not load a `[]` tensor into a `[1]` parameter, so [`ClipModel::load`] loads
//! the towers and projections with [`crate::hf::load_pytorch_safetensors`] and reads the
//! scalar separately from the file (header and 4 bytes, not the whole file).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::text::{ClipTextConfig, ClipTextModel, defaults};
use super::vision::{ClipVisionConfig, ClipVisionModel};
use crate::error::{ModelError, Result};

/// Configuration of [`ClipModel`] (transformers' `CLIPConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// The text tower.
    #[serde(default)]
    pub text_config: ClipTextConfig,
    /// The vision tower.
    #[serde(default)]
    pub vision_config: ClipVisionConfig,
    /// Width `P` of the joint embedding space.
    #[serde(default = "defaults::projection")]
    pub projection_dim: usize,
    /// Initial value of `logit_scale` (log of the inverse temperature; CLIP's is ln(1/0.07)).
    #[serde(default = "default_logit_scale")]
    pub logit_scale_init_value: f64,
}

fn default_logit_scale() -> f64 {
    2.6592
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: defaults::projection(),
            logit_scale_init_value: default_logit_scale(),
        }
    }
}

/// The CLIP model: both towers, their projections and the logit scale.
#[derive(Module, Debug)]
pub struct ClipModel {
    /// The text tower.
    pub text_model: ClipTextModel,
    /// The vision tower.
    pub vision_model: ClipVisionModel,
    /// Vision pooled output → joint space, `[D_v → P]`, no bias.
    pub visual_projection: Linear,
    /// Text pooled output → joint space, `[D_t → P]`, no bias.
    pub text_projection: Linear,
    /// `ln` of the inverse temperature, `[1]`.
    pub logit_scale: Param<Tensor<1>>,
}

/// Everything of [`ClipModel`] but the logit scale: what [`crate::hf`] loads in one go (the
/// field names are the checkpoint's prefixes).
#[derive(Module, Debug)]
struct ClipTowers {
    text_model: ClipTextModel,
    vision_model: ClipVisionModel,
    visual_projection: Linear,
    text_projection: Linear,
}

impl ClipConfig {
    /// Initialises the model with random weights.
    ///
    /// # Errors
    /// [`ModelError::Config`] for an invalid tower config or a zero projection width.
    pub fn init(&self, device: &Device) -> Result<ClipModel> {
        let towers = self.init_towers(device)?;
        Ok(ClipModel {
            text_model: towers.text_model,
            vision_model: towers.vision_model,
            visual_projection: towers.visual_projection,
            text_projection: towers.text_projection,
            logit_scale: Param::from_tensor(Tensor::from_floats(
                [self.logit_scale_init_value as f32],
                device,
            )),
        })
    }

    fn init_towers(&self, device: &Device) -> Result<ClipTowers> {
        if self.projection_dim == 0 {
            return Err(ModelError::config("projection_dim", "must be positive"));
        }
        let projection = |d| {
            LinearConfig::new(d, self.projection_dim)
                .with_bias(false)
                .init(device)
        };
        Ok(ClipTowers {
            text_model: self.text_config.init(device)?,
            vision_model: self.vision_config.init(device)?,
            visual_projection: projection(self.vision_config.hidden_size),
            text_projection: projection(self.text_config.hidden_size),
        })
    }
}

impl ClipModel {
    /// Loads a transformers `CLIPModel` directory: `config.json` (with `text_config`,
    /// `vision_config`, `projection_dim`) and `model.safetensors` (`text_model.*`,
    /// `vision_model.*`, `visual_projection.weight`, `text_projection.weight`, `logit_scale`).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] for a missing or invalid file, listing missing, unknown and
    /// mis-shaped tensors, or a missing `logit_scale`; [`ModelError::Config`] for an invalid
    /// config.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config: ClipConfig = crate::hf::read_config(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        let towers = crate::hf::load_pytorch_safetensors(
            config.init_towers(device)?,
            &weights,
            &[],
            &[r"position_ids$", r"^logit_scale$"],
        )?;
        let logit_scale = read_scalar(&weights, "logit_scale")?;
        Ok(Self {
            text_model: towers.text_model,
            vision_model: towers.vision_model,
            visual_projection: towers.visual_projection,
            text_projection: towers.text_projection,
            logit_scale: Param::from_tensor(Tensor::from_floats([logit_scale], device)),
        })
    }

    /// The text tower.
    pub fn text_model(&self) -> &ClipTextModel {
        &self.text_model
    }

    /// The vision tower.
    pub fn vision_model(&self) -> &ClipVisionModel {
        &self.vision_model
    }

    /// Side of the square images the vision tower takes.
    pub fn image_size(&self) -> usize {
        self.vision_model.image_size()
    }

    /// Width `P` of the joint embedding space.
    pub fn projection_dim(&self) -> usize {
        self.visual_projection.weight.dims()[1]
    }

    /// Projected image embeddings (not normalised).
    ///
    /// # Shapes
    /// - `pixel_values`: `[B, C, S, S]`, normalised (see [`super::ClipImageProcessor`]);
    ///   output `[B, P]`.
    pub fn image_embeds(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        self.visual_projection
            .forward(self.vision_model.forward(pixel_values).pooler_output)
    }

    /// Projected text embeddings (not normalised).
    ///
    /// # Shapes
    /// - `input_ids`: `[B, L]`; output `[B, P]`.
    pub fn text_embeds(&self, input_ids: Tensor<2, Int>) -> Tensor<2> {
        self.text_projection
            .forward(self.text_model.forward(input_ids).pooler_output)
    }

    /// The raw logit-scale parameter `[1]` (`exp` of it multiplies the cosine similarities).
    pub fn logit_scale(&self) -> Tensor<1> {
        self.logit_scale.val()
    }

    /// `exp(logit_scale) · cos(image_i, text_j)`, transformers' `logits_per_image`.
    ///
    /// # Shapes
    /// - `pixel_values`: `[B_i, C, S, S]`, `input_ids`: `[B_t, L]`; output `[B_i, B_t]`.
    pub fn logits_per_image(&self, pixel_values: Tensor<4>, input_ids: Tensor<2, Int>) -> Tensor<2> {
        let image = l2_normalize(self.image_embeds(pixel_values));
        let text = l2_normalize(self.text_embeds(input_ids));
        let [bi, _] = image.dims();
        let [bt, _] = text.dims();
        image.matmul(text.transpose()) * self.logit_scale().exp().reshape([1, 1]).expand([bi, bt])
    }
}

/// `x / ‖x‖₂` along the last axis (rows of a `[B, P]` embedding matrix), as transformers
/// normalises CLIP embeddings (no ε: a zero row gives NaN, as there).
///
/// # Shapes
/// - `x`: `[B, P]`; output `[B, P]`.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let [b, p] = x.dims();
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt();
    x / norm.expand([b, p])
}

/// Reads one scalar (any shape with one element; f32, f16 or bf16) from a safetensors file
/// without reading the rest of it.
fn read_scalar(path: &Path, name: &str) -> Result<f32> {
    let fail = |reason: String| ModelError::Checkpoint {
        path: path.display().to_string(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(fail(format!("not a safetensors file: header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
    let entry = header
        .get(name)
        .ok_or_else(|| fail(format!("tensor `{name}` is missing")))?;
    let dtype = entry.get("dtype").and_then(|v| v.as_str()).unwrap_or("");
    let offsets: Vec<u64> = entry
        .get("data_offsets")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    let width = match dtype {
        "F32" => 4,
        "F16" | "BF16" => 2,
        other => {
            return Err(fail(format!(
                "tensor `{name}` has dtype `{other}`; expected F32, F16 or BF16"
            )));
        }
    };
    let [start, end] = offsets[..] else {
        return Err(fail(format!("tensor `{name}` has no valid data_offsets")));
    };
    if end.checked_sub(start) != Some(width) {
        return Err(fail(format!(
            "tensor `{name}` must hold one value, holds {} bytes",
            end.saturating_sub(start)
        )));
    }
    file.seek(SeekFrom::Start(8 + len + start))
        .map_err(|e| fail(e.to_string()))?;
    let mut bytes = [0u8; 4];
    file.read_exact(&mut bytes[..width as usize])
        .map_err(|e| fail(format!("tensor `{name}`: {e}")))?;
    Ok(match dtype {
        "F32" => f32::from_le_bytes(bytes),
        "F16" => half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
        _ => half::bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
    })
}
