//! CLIP's vision tower (transformers' `CLIPVisionModel`): normalised pixels → patch tokens and
//! a pooled embedding.
//!
//! ```text
//! p = patch_embedding(x)                       Conv2d(k = s = patch, no bias): [B, D, g, g]
//! h = [class_embedding; p as tokens] + position_embedding      [B, 1 + g², D]
//! h = Encoder(pre_layrnorm(h))                 no mask
//! last_hidden_state = h                        (not normalised, as in transformers)
//! pooler_output     = post_layernorm(h[:, 0])  the class token, [B, D]
//! ```
//!
//! The input is what [`super::ClipImageProcessor::preprocess`] returns: `[B, C, S, S]` at the
//! model's `image_size`, normalised with CLIP's mean and std.

use std::path::Path;

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::encoder::{ClipActivation, ClipEncoder, ClipEncoderConfig};
use super::text::defaults;
use crate::error::{ModelError, Result};

/// Configuration of [`ClipVisionModel`]: the fields of transformers' `CLIPVisionConfig` that
/// change the computation (missing ones take transformers' defaults, those of
/// `openai/clip-vit-base-patch32`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    /// Width `D`.
    #[serde(default = "vision_defaults::hidden")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "vision_defaults::intermediate")]
    pub intermediate_size: usize,
    /// Number of layers.
    #[serde(default = "defaults::layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "vision_defaults::heads")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "vision_defaults::channels")]
    pub num_channels: usize,
    /// Side `S` of the (square) input images.
    #[serde(default = "vision_defaults::image_size")]
    pub image_size: usize,
    /// Side of the square patches (must divide `image_size`).
    #[serde(default = "vision_defaults::patch_size")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default)]
    pub hidden_act: ClipActivation,
    /// LayerNorm ε.
    #[serde(default = "defaults::eps")]
    pub layer_norm_eps: f64,
    /// Width of the projection of a `CLIPModel` (unused by the vision model itself).
    #[serde(default = "defaults::projection")]
    pub projection_dim: usize,
}

mod vision_defaults {
    pub fn hidden() -> usize {
        768
    }
    pub fn intermediate() -> usize {
        3072
    }
    pub fn heads() -> usize {
        12
    }
    pub fn channels() -> usize {
        3
    }
    pub fn image_size() -> usize {
        224
    }
    pub fn patch_size() -> usize {
        32
    }
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: vision_defaults::hidden(),
            intermediate_size: vision_defaults::intermediate(),
            num_hidden_layers: defaults::layers(),
            num_attention_heads: vision_defaults::heads(),
            num_channels: vision_defaults::channels(),
            image_size: vision_defaults::image_size(),
            patch_size: vision_defaults::patch_size(),
            hidden_act: ClipActivation::default(),
            layer_norm_eps: defaults::eps(),
            projection_dim: defaults::projection(),
        }
    }
}

/// Patch, class-token and position embeddings of the vision tower.
#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings {
    /// The learned class token `[D]`.
    pub class_embedding: Param<Tensor<1>>,
    /// Patchifying convolution `[D, C, patch, patch]`, no bias.
    pub patch_embedding: Conv2d,
    /// Learned positions `[1 + (S/patch)², D]`.
    pub position_embedding: Embedding,
}

/// CLIP's vision transformer.
#[derive(Module, Debug)]
pub struct ClipVisionModel {
    /// Patch, class and position embeddings.
    pub embeddings: ClipVisionEmbeddings,
    /// Norm of the embedded tokens (transformers' spelling, `pre_layrnorm`).
    pub pre_layrnorm: LayerNorm,
    /// The transformer (no mask).
    pub encoder: ClipEncoder,
    /// Norm of the pooled class token.
    pub post_layernorm: LayerNorm,
    #[module(skip)]
    config: ClipVisionConfig,
}

/// What [`ClipVisionModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct ClipVisionOutput {
    /// Output tokens `[B, 1 + g², D]` (class token first).
    pub last_hidden_state: Tensor<3>,
    /// The normalised class token `[B, D]`.
    pub pooler_output: Tensor<2>,
}

impl ClipVisionConfig {
    /// The encoder sizes of this config.
    pub fn encoder(&self) -> ClipEncoderConfig {
        ClipEncoderConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
        }
    }

    /// Number of patches per side, `S / patch`.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    /// Initialises the model with random weights.
    ///
    /// # Errors
    /// [`ModelError::Config`] for zero sizes, a patch size that does not divide the image
    /// size, or heads that do not divide the width.
    pub fn init(&self, device: &Device) -> Result<ClipVisionModel> {
        use crate::hf::{MAX_COUNT, MAX_WIDTH};
        crate::hf::check_sizes(&[
            ("vision_config.hidden_size", self.hidden_size, MAX_WIDTH),
            (
                "vision_config.intermediate_size",
                self.intermediate_size,
                MAX_WIDTH,
            ),
            (
                "vision_config.num_hidden_layers",
                self.num_hidden_layers,
                MAX_COUNT,
            ),
            (
                "vision_config.num_attention_heads",
                self.num_attention_heads,
                MAX_COUNT,
            ),
            ("vision_config.num_channels", self.num_channels, MAX_COUNT),
            ("vision_config.image_size", self.image_size, MAX_WIDTH),
            ("vision_config.patch_size", self.patch_size, MAX_WIDTH),
            (
                "vision_config.projection_dim",
                self.projection_dim,
                MAX_WIDTH,
            ),
        ])?;
        if self.num_channels == 0 || self.patch_size == 0 || self.image_size == 0 {
            return Err(ModelError::config(
                "clip vision",
                "num_channels, patch_size and image_size must be positive",
            ));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(ModelError::config(
                "patch_size",
                format!(
                    "{} does not divide image_size {}",
                    self.patch_size, self.image_size
                ),
            ));
        }
        let d = self.hidden_size;
        let p = self.patch_size;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        Ok(ClipVisionModel {
            encoder: self.encoder().init(device)?,
            embeddings: ClipVisionEmbeddings {
                class_embedding: Initializer::Normal {
                    mean: 0.0,
                    std: (d as f64).powf(-0.5),
                }
                .init([d], device),
                patch_embedding: Conv2dConfig::new([self.num_channels, d], [p, p])
                    .with_stride([p, p])
                    .with_bias(false)
                    .init(device),
                position_embedding: EmbeddingConfig::new(self.grid() * self.grid() + 1, d)
                    .init(device),
            },
            pre_layrnorm: norm(),
            post_layernorm: norm(),
            config: self.clone(),
        })
    }
}

impl ClipVisionModel {
    /// Loads a vision tower from a directory holding `config.json` and `model.safetensors`:
    /// a `CLIPVisionModel`, or a whole `CLIPModel`, whose `vision_config` and
    /// `vision_model.*` tensors are used (the rest is ignored).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] for a missing or invalid file, listing missing, unknown and
    /// mis-shaped tensors; [`ModelError::Config`] for an invalid config.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config: ClipVisionConfig = super::tower_config(dir, "vision_config")?;
        let model = config.init(device)?;
        crate::hf::load_pytorch_safetensors(
            model,
            &dir.join("model.safetensors"),
            &[(r"^vision_model\.", "")],
            &[
                r"position_ids$",
                r"^text_model\.",
                r"^visual_projection\.",
                r"^text_projection\.",
                r"^logit_scale$",
            ],
        )
    }

    /// The configuration.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// Side `S` of the square input images.
    pub fn image_size(&self) -> usize {
        self.config.image_size
    }

    /// Width `D` of the tokens.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Encodes normalised pixels.
    ///
    /// # Shapes
    /// - `pixel_values`: `[B, C, S, S]` with `S = image_size`;
    /// - output: `last_hidden_state` `[B, 1 + (S/patch)², D]`, `pooler_output` `[B, D]`.
    ///
    /// # Panics
    /// If the image is not `image_size × image_size` with `num_channels` channels (the
    /// position embeddings do not fit).
    pub fn forward(&self, pixel_values: Tensor<4>) -> ClipVisionOutput {
        let b = pixel_values.dims()[0];
        let d = self.config.hidden_size;
        let patches = self.embeddings.patch_embedding.forward(pixel_values);
        let [_, _, gh, gw] = patches.dims();
        let n = gh * gw;
        let patches: Tensor<3> = patches.reshape([b, d, n]).swap_dims(1, 2);
        let class = self
            .embeddings
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([b, 1, d]);
        let positions = self
            .embeddings
            .position_embedding
            .weight
            .val()
            .unsqueeze::<3>()
            .expand([b, n + 1, d]);
        let h = Tensor::cat(vec![class, patches], 1) + positions;
        let h = self.encoder.forward(self.pre_layrnorm.forward(h), false);
        let pooler_output = self
            .post_layernorm
            .forward(h.clone().slice([0..b, 0..1]).reshape([b, d]));
        ClipVisionOutput {
            last_hidden_state: h,
            pooler_output,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::test_util::{assert_close, fixture, floats, get, references};

    #[test]
    fn clip_vision_tower_matches_transformers() {
        let device = align_core::test_device();
        let model =
            ClipVisionModel::load(&fixture("clip-tiny"), &device).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(model.image_size(), 32);
        let refs = references("clip-tiny");
        let out = model.forward(floats(&get(&refs, "pixel_values"), &device));
        assert_close(
            "vision last_hidden_state",
            out.last_hidden_state,
            &get(&refs, "vision.last_hidden_state"),
            1e-4,
        );
        assert_close(
            "vision pooler_output",
            out.pooler_output,
            &get(&refs, "vision.pooler_output"),
            1e-4,
        );
    }
}
