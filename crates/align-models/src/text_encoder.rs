//! A small transformer text encoder: token ids → context tokens for cross-attention.
//!
//! ```text
//! h = Embedding(ids) + P                      P: learned positions [max_len, d]
//! h = TransformerEncoder(h, padding mask)     pre-norm layers, GELU feed-forward, no dropout
//! context = LayerNorm(h)                      [B, L, d]
//! ```
//!
//! Token id [`PAD_ID`] (0) is padding: it is masked in self-attention and reported in the
//! returned [`Condition`]'s padding mask so that cross-attention ignores it too. The *null
//! prompt* of classifier-free guidance is `<null>` followed by padding, so it always keeps one
//! token to attend to.

use align_core::Condition;
use burn::module::Param;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig};
use burn::prelude::*;

use crate::error::{ModelError, Result};

/// The padding token id.
pub const PAD_ID: u32 = 0;

/// Configuration of [`TextEncoder`].
#[derive(Config, Debug)]
pub struct TextEncoderConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Maximum (and fixed) prompt length in tokens.
    pub max_len: usize,
    /// Width `d` of the context tokens.
    #[config(default = 64)]
    pub dim: usize,
    /// Transformer layers.
    #[config(default = 2)]
    pub layers: usize,
    /// Attention heads.
    #[config(default = 4)]
    pub heads: usize,
}

/// A transformer text encoder producing [`Condition`]s.
#[derive(Module, Debug)]
pub struct TextEncoder {
    /// Token embeddings `[vocab, d]`.
    pub tokens: Embedding,
    /// Learned positional embeddings `[max_len, d]`.
    pub positions: Param<Tensor<2>>,
    /// Transformer layers.
    pub encoder: TransformerEncoder,
    /// Final normalisation.
    pub norm: LayerNorm,
    vocab_size: usize,
    max_len: usize,
}

impl TextEncoderConfig {
    /// The preset used by tests.
    pub fn tiny(vocab_size: usize, max_len: usize) -> Self {
        Self::new(vocab_size, max_len)
            .with_dim(16)
            .with_layers(1)
            .with_heads(2)
    }

    /// Initialises the module.
    ///
    /// # Errors
    /// Zero sizes or heads that do not divide the width.
    pub fn init(&self, device: &Device) -> Result<TextEncoder> {
        if self.vocab_size < 2 || self.max_len == 0 || self.dim == 0 || self.heads == 0 {
            return Err(ModelError::config(
                "text encoder",
                "vocab ≥ 2, max_len, dim and heads > 0",
            ));
        }
        if !self.dim.is_multiple_of(self.heads) {
            return Err(ModelError::config(
                "heads",
                format!("{} does not divide dim {}", self.heads, self.dim),
            ));
        }
        Ok(TextEncoder {
            tokens: EmbeddingConfig::new(self.vocab_size, self.dim).init(device),
            positions: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([self.max_len, self.dim], device),
            encoder: TransformerEncoderConfig::new(self.dim, 4 * self.dim, self.heads, self.layers)
                .with_dropout(0.0)
                .with_norm_first(true)
                .init(device),
            norm: LayerNormConfig::new(self.dim).init(device),
            vocab_size: self.vocab_size,
            max_len: self.max_len,
        })
    }
}

impl TextEncoder {
    /// Encodes padded token ids.
    ///
    /// # Shapes
    /// - `ids`: `[B, max_len]`; output context `[B, max_len, dim]` and mask `[B, max_len]`.
    ///
    /// # Errors
    /// [`ModelError::Input`] if the length is not `max_len`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Result<Condition> {
        let [b, l] = ids.dims();
        if l != self.max_len {
            return Err(ModelError::Input {
                what: "token ids".into(),
                expected: format!("length {}", self.max_len),
                got: format!("length {l}"),
            });
        }
        let mask = ids.clone().equal_elem(PAD_ID as i64);
        let h =
            self.tokens.forward(ids) + self.positions.val().unsqueeze_dim::<3>(0).repeat_dim(0, b);
        let h = self
            .encoder
            .forward(TransformerEncoderInput::new(h).mask_pad(mask.clone()));
        let context = self.norm.forward(h);
        Condition::new(context)
            .with_padding_mask(mask)
            .map_err(|e| ModelError::Input {
                what: "padding mask".into(),
                expected: "[B, L]".into(),
                got: e.to_string(),
            })
    }

    /// Encodes host token id rows (each `max_len` long).
    ///
    /// # Errors
    /// Rows of the wrong length or ids outside the vocabulary.
    pub fn encode(&self, rows: &[Vec<u32>], device: &Device) -> Result<Condition> {
        let mut flat = Vec::with_capacity(rows.len() * self.max_len);
        for (i, row) in rows.iter().enumerate() {
            if row.len() != self.max_len {
                return Err(ModelError::Input {
                    what: format!("token row {i}"),
                    expected: format!("{} ids", self.max_len),
                    got: format!("{} ids", row.len()),
                });
            }
            if let Some(&bad) = row.iter().find(|&&id| id as usize >= self.vocab_size) {
                return Err(ModelError::Input {
                    what: format!("token row {i}"),
                    expected: format!("ids below {}", self.vocab_size),
                    got: format!("id {bad}"),
                });
            }
            flat.extend(row.iter().map(|&id| id as i64));
        }
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(flat, [rows.len(), self.max_len]), device);
        self.forward(ids)
    }
}
