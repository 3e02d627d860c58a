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
        let path = dir.join("config.json");
        let config: ClipConfig = crate::hf::read_config(&path)?;
        let weights = dir.join("model.safetensors");
        let towers = crate::hf::load_pytorch_safetensors(
            config
                .init_towers(device)
                .map_err(|e| crate::hf::in_file(&path, e))?,
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
    pub fn logits_per_image(
        &self,
        pixel_values: Tensor<4>,
        input_ids: Tensor<2, Int>,
    ) -> Tensor<2> {
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
        return Err(fail(format!(
            "not a safetensors file: header of {len} bytes"
        )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::test_util::{assert_close, fixture, floats, get, ids, references};

    fn load(device: &Device) -> ClipModel {
        ClipModel::load(&fixture("clip-tiny"), device).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn embeddings_and_logits_match_transformers() {
        let device = align_core::test_device();
        let model = load(&device);
        assert_eq!(model.image_size(), 32);
        assert_eq!(model.projection_dim(), 16);
        let scale: Vec<f32> = model.logit_scale().into_data().iter::<f32>().collect();
        assert!((scale[0] - 100f32.ln()).abs() < 1e-5, "{scale:?}");
        let refs = references("clip-tiny");
        let pixels: Tensor<4> = floats(&get(&refs, "pixel_values"), &device);
        let input = ids(&get(&refs, "input_ids"), &device);
        assert_close(
            "image_embeds",
            model.image_embeds(pixels.clone()),
            &get(&refs, "image_embeds"),
            1e-4,
        );
        assert_close(
            "text_embeds",
            model.text_embeds(input.clone()),
            &get(&refs, "text_embeds"),
            1e-4,
        );
        assert_close(
            "logits_per_image",
            model.logits_per_image(pixels, input),
            &get(&refs, "logits_per_image"),
            1e-4,
        );
    }

    fn temp_copy(tag: &str) -> std::path::PathBuf {
        let tmp = std::env::temp_dir().join(format!("align-clip-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(
            fixture("clip-tiny").join("config.json"),
            tmp.join("config.json"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        tmp
    }

    /// Writes `fixtures/clip-tiny/model.safetensors` to `dir` with `edit` applied to the
    /// name → tensor map.
    fn write_modified(
        dir: &Path,
        edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
    ) {
        let bytes = std::fs::read(fixture("clip-tiny").join("model.safetensors"))
            .unwrap_or_else(|e| panic!("{e}"));
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{e}"));
        let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        edit(&mut tensors);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b)
                        .unwrap_or_else(|e| panic!("{e}")),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn loading_errors_name_missing_and_unknown_tensors() {
        let device = align_core::test_device();
        let dir = temp_copy("missing");
        write_modified(&dir, |t| {
            t.retain(|(n, ..)| n != "text_model.final_layer_norm.bias");
            t.push((
                "vision_model.extra.weight".into(),
                safetensors::Dtype::F32,
                vec![1],
                vec![0; 4],
            ));
        });
        let err = ClipModel::load(&dir, &device)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("text_model.final_layer_norm"), "{err}");
        assert!(err.contains("vision_model.extra.weight"), "{err}");
        assert!(err.contains("missing") && err.contains("unknown"), "{err}");

        write_modified(&dir, |t| t.retain(|(n, ..)| n != "logit_scale"));
        let err = ClipModel::load(&dir, &device)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("logit_scale") && err.contains("missing"),
            "{err}"
        );

        let err = ClipTextModel::load(&dir.join("nowhere"), &device)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn f16_logit_scale_is_read() {
        let dir = temp_copy("f16");
        write_modified(&dir, |t| {
            for (n, d, _, b) in t.iter_mut() {
                if n == "logit_scale" {
                    *d = safetensors::Dtype::F16;
                    *b = half::f16::from_f32(4.5).to_le_bytes().to_vec();
                }
            }
        });
        let v = read_scalar(&dir.join("model.safetensors"), "logit_scale")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v, 4.5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
