//! CLIP's text tower (transformers' `CLIPTextModel`): token ids → hidden states and a pooled
//! embedding.
//!
//! ```text
//! h = token_embedding(ids) + position_embedding[0..L]
//! h = Encoder(h, causal mask)                 pre-LN layers, see [`super::encoder`]
//! last_hidden_state = final_layer_norm(h)     [B, L, D]
//! pooler_output     = last_hidden_state[b, e_b]
//! ```
//!
//! `e_b` is the first position of `eos_token_id` in row `b` (position 0 if it has none), or —
//! for legacy configs whose `eos_token_id` is 2, such as Stable Diffusion 1.5's — the first
//! position of the row's largest id (the end-of-text token is the last of the vocabulary).
//! This is transformers' rule. As in transformers when no `attention_mask` is passed, padding
//! is *not* masked: padded positions are attended to causally like any other token.

use std::path::Path;

use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::encoder::{ClipActivation, ClipEncoder, ClipEncoderConfig};
use crate::error::{ModelError, Result};

/// Configuration of [`ClipTextModel`]: the fields of transformers' `CLIPTextConfig` that
/// change the computation (others in the JSON are ignored; missing ones take transformers'
/// defaults, those of `openai/clip-vit-base-patch32`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    /// Width `D`.
    #[serde(default = "defaults::text_hidden")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "defaults::text_intermediate")]
    pub intermediate_size: usize,
    /// Number of layers.
    #[serde(default = "defaults::layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "defaults::text_heads")]
    pub num_attention_heads: usize,
    /// Longest input (and number of learned positions).
    #[serde(default = "defaults::max_positions")]
    pub max_position_embeddings: usize,
    /// MLP activation (`"quick_gelu"`, `"gelu"`, `"gelu_new"`).
    #[serde(default)]
    pub hidden_act: ClipActivation,
    /// LayerNorm ε.
    #[serde(default = "defaults::eps")]
    pub layer_norm_eps: f64,
    /// The end-of-text id whose first position is pooled (2 selects the legacy argmax rule).
    #[serde(default = "defaults::eos")]
    pub eos_token_id: i64,
    /// Width of the projection of a `CLIPModel` (unused by the text model itself).
    #[serde(default = "defaults::projection")]
    pub projection_dim: usize,
}

pub(crate) mod defaults {
    pub fn vocab_size() -> usize {
        49408
    }
    pub fn text_hidden() -> usize {
        512
    }
    pub fn text_intermediate() -> usize {
        2048
    }
    pub fn layers() -> usize {
        12
    }
    pub fn text_heads() -> usize {
        8
    }
    pub fn max_positions() -> usize {
        77
    }
    pub fn eps() -> f64 {
        1e-5
    }
    pub fn eos() -> i64 {
        49407
    }
    pub fn projection() -> usize {
        512
    }
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: defaults::vocab_size(),
            hidden_size: defaults::text_hidden(),
            intermediate_size: defaults::text_intermediate(),
            num_hidden_layers: defaults::layers(),
            num_attention_heads: defaults::text_heads(),
            max_position_embeddings: defaults::max_positions(),
            hidden_act: ClipActivation::default(),
            layer_norm_eps: defaults::eps(),
            eos_token_id: defaults::eos(),
            projection_dim: defaults::projection(),
        }
    }
}

/// Token and position embeddings of the text tower.
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings {
    /// Token embeddings `[vocab, D]`.
    pub token_embedding: Embedding,
    /// Learned positions `[max_position_embeddings, D]`.
    pub position_embedding: Embedding,
}

/// CLIP's text transformer.
#[derive(Module, Debug)]
pub struct ClipTextModel {
    /// Token and position embeddings.
    pub embeddings: ClipTextEmbeddings,
    /// The causal transformer.
    pub encoder: ClipEncoder,
    /// Norm of the output tokens.
    pub final_layer_norm: LayerNorm,
    #[module(skip)]
    config: ClipTextConfig,
}

/// What [`ClipTextModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// Normalised hidden states `[B, L, D]` (what Stable Diffusion cross-attends to).
    pub last_hidden_state: Tensor<3>,
    /// The hidden state at the end-of-text token, `[B, D]`.
    pub pooler_output: Tensor<2>,
}

impl ClipTextConfig {
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

    /// Initialises the model with random weights.
    ///
    /// # Errors
    /// [`ModelError::Config`] for zero sizes or heads that do not divide the width.
    pub fn init(&self, device: &Device) -> Result<ClipTextModel> {
        use crate::hf::{MAX_COUNT, MAX_TABLE, MAX_WIDTH};
        crate::hf::check_sizes(&[
            ("text_config.vocab_size", self.vocab_size, MAX_TABLE),
            ("text_config.hidden_size", self.hidden_size, MAX_WIDTH),
            (
                "text_config.intermediate_size",
                self.intermediate_size,
                MAX_WIDTH,
            ),
            (
                "text_config.num_hidden_layers",
                self.num_hidden_layers,
                MAX_COUNT,
            ),
            (
                "text_config.num_attention_heads",
                self.num_attention_heads,
                MAX_COUNT,
            ),
            (
                "text_config.max_position_embeddings",
                self.max_position_embeddings,
                MAX_TABLE,
            ),
            ("text_config.projection_dim", self.projection_dim, MAX_WIDTH),
        ])?;
        if self.vocab_size == 0 || self.max_position_embeddings == 0 {
            return Err(ModelError::config(
                "clip text",
                "vocab_size and max_position_embeddings must be positive",
            ));
        }
        let d = self.hidden_size;
        Ok(ClipTextModel {
            encoder: self.encoder().init(device)?,
            embeddings: ClipTextEmbeddings {
                token_embedding: EmbeddingConfig::new(self.vocab_size, d).init(device),
                position_embedding: EmbeddingConfig::new(self.max_position_embeddings, d)
                    .init(device),
            },
            final_layer_norm: LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            config: self.clone(),
        })
    }
}

impl ClipTextModel {
    /// Loads a text tower from a directory holding `config.json` and `model.safetensors`:
    /// a `CLIPTextModel` (Stable Diffusion's `text_encoder/`) or a whole `CLIPModel`, whose
    /// `text_config` and `text_model.*` tensors are used (the rest is ignored).
    ///
    /// Tensor names may carry the `text_model.` prefix (older transformers) or not.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] for a missing or invalid file, listing missing, unknown and
    /// mis-shaped tensors; [`ModelError::Config`] for an invalid config.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config: ClipTextConfig = super::tower_config(dir, "text_config")?;
        let model = config.init(device)?;
        crate::hf::load_pytorch_safetensors(
            model,
            &dir.join("model.safetensors"),
            &[(r"^text_model\.", "")],
            &[
                r"position_ids$",
                r"^vision_model\.",
                r"^visual_projection\.",
                r"^text_projection\.",
                r"^logit_scale$",
            ],
        )
    }

    /// The configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Width `D` of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Longest accepted input (77 for CLIP).
    pub fn max_position_embeddings(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Encodes token ids (as produced by [`super::ClipTokenizer::encode_padded`]).
    ///
    /// # Shapes
    /// - `input_ids`: `[B, L]` with `L ≤ max_position_embeddings`;
    /// - output: `last_hidden_state` `[B, L, D]`, `pooler_output` `[B, D]`.
    ///
    /// # Panics
    /// If `L` exceeds `max_position_embeddings` (burn's slice check), or (depending on the
    /// backend) for ids outside the vocabulary.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> ClipTextOutput {
        self.forward_with_hidden_states(input_ids).0
    }

    /// [`ClipTextModel::forward`] with every hidden state, as transformers'
    /// `output_hidden_states=True` returns them: the embeddings, then the output of each
    /// encoder layer (before the final layer norm), `num_hidden_layers + 1` tensors
    /// `[B, L, D]`. Stable Diffusion 3 conditions on the penultimate one (`[-2]`).
    ///
    /// # Panics
    /// As [`ClipTextModel::forward`].
    pub fn forward_with_hidden_states(
        &self,
        input_ids: Tensor<2, Int>,
    ) -> (ClipTextOutput, Vec<Tensor<3>>) {
        let [b, l] = input_ids.dims();
        let d = self.config.hidden_size;
        let positions = self
            .embeddings
            .position_embedding
            .weight
            .val()
            .narrow(0, 0, l)
            .unsqueeze::<3>()
            .expand([b, l, d]);
        let mut h = self.embeddings.token_embedding.forward(input_ids.clone()) + positions;
        let mut hidden_states = vec![h.clone()];
        for layer in &self.encoder.layers {
            h = layer.forward(h, true);
            hidden_states.push(h.clone());
        }
        let last_hidden_state = self.final_layer_norm.forward(h);
        let index = self.pooled_positions(input_ids);
        let pooler_output = last_hidden_state
            .clone()
            .gather(1, index.unsqueeze_dim::<3>(2).expand([b, 1, d]))
            .reshape([b, d]);
        (
            ClipTextOutput {
                last_hidden_state,
                pooler_output,
            },
            hidden_states,
        )
    }

    /// The position `e_b` pooled in each row, `[B, 1]` (see the module docs).
    fn pooled_positions(&self, input_ids: Tensor<2, Int>) -> Tensor<2, Int> {
        let [b, l] = input_ids.dims();
        let device = input_ids.device();
        let target = if self.config.eos_token_id == 2 {
            input_ids.clone().max_dim(1)
        } else {
            Tensor::<2, Int>::full([b, 1], self.config.eos_token_id, &device)
        };
        let hit = input_ids.equal(target.expand([b, l]));
        let none = l as i64;
        let first = Tensor::<1, Int>::arange(0..none, &device)
            .unsqueeze::<2>()
            .expand([b, l])
            .mask_fill(hit.bool_not(), none)
            .min_dim(1);
        first.clone().mask_fill(first.equal_elem(none), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::test_util::{assert_close, fixture, get, ids, references};

    fn check(model_dir: &Path, fixture_name: &str, prefix: &str) {
        let device = align_core::test_device();
        let model = ClipTextModel::load(model_dir, &device).unwrap_or_else(|e| panic!("{e}"));
        let refs = references(fixture_name);
        let input = ids(&get(&refs, &format!("{prefix}input_ids")), &device);
        let out = model.forward(input);
        assert_close(
            &format!("{fixture_name} text last_hidden_state"),
            out.last_hidden_state,
            &get(&refs, "text.last_hidden_state"),
            1e-4,
        );
        assert_close(
            &format!("{fixture_name} text pooler_output"),
            out.pooler_output,
            &get(&refs, "text.pooler_output"),
            1e-4,
        );
    }

    #[test]
    fn sd_text_encoder_matches_transformers() {
        check(&fixture("sd-tiny").join("text_encoder"), "sd-tiny", "text.");
    }

    #[test]
    fn clip_text_tower_matches_transformers() {
        check(&fixture("clip-tiny"), "clip-tiny", "");
    }

    #[test]
    fn pooling_rules() {
        let device = align_core::test_device();
        let config = ClipTextConfig {
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            max_position_embeddings: 6,
            eos_token_id: 9,
            ..ClipTextConfig::default()
        };
        let model = config.init(&device).unwrap_or_else(|e| panic!("{e}"));
        let input = Tensor::<2, Int>::from_data(
            TensorData::new(vec![8i64, 3, 9, 9, 9, 9, 8, 1, 2, 3, 4, 5], [2, 6]),
            &device,
        );
        let pos = model.pooled_positions(input.clone());
        assert_eq!(
            pos.into_data().iter::<i64>().collect::<Vec<_>>(),
            vec![2, 0]
        );
        // Legacy configs (eos_token_id = 2) pool at the first largest id.
        let legacy = ClipTextConfig {
            eos_token_id: 2,
            ..config
        }
        .init(&device)
        .unwrap_or_else(|e| panic!("{e}"));
        let pos = legacy.pooled_positions(input);
        assert_eq!(
            pos.into_data().iter::<i64>().collect::<Vec<_>>(),
            vec![2, 0]
        );
    }
}
