//! Attention blocks: self- and cross-attention over image tokens, conditioned on text tokens.
//!
//! [`SpatialTransformer`] is the UNet's attention block (as in latent diffusion):
//!
//! ```text
//! h = W_in · GroupNorm(x), reshaped to tokens [B, H·W, C]
//! h = h + SelfAttn(LN(h))
//! h = h + CrossAttn(LN(h), W_c · context)        (keys/values from the text tokens)
//! h = h + FF(LN(h)),  FF = Linear(C, 4C) → GELU → Linear(4C, C)
//! out = x + W_out · h, reshaped back to [B, C, H, W]
//! ```
//!
//! `W_out` starts at zero, so a new block is the identity (latent diffusion's "zero module").
//!
//! The attention core of every block goes through [`crate::fused_attention`] (burn's fused
//! `attention` op where no gradient is recorded, its unfused fallback under autodiff).
//!
//! Dropout is fixed at 0: a policy's log-prob must be a deterministic function of its
//! parameters, or re-scoring a stored transition would not reproduce it.

use crate::activation::gelu;
use crate::fused_attention::multi_head_attention;
use crate::group_norm::group_norm;
use align_core::Condition;
use burn::nn::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::{
    GroupNorm, GroupNormConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::prelude::*;

/// Configuration of [`CrossAttention`].
#[derive(Config, Debug)]
pub struct CrossAttentionConfig {
    /// Width of the queries (image tokens).
    pub dim: usize,
    /// Width of the context tokens.
    pub context_dim: usize,
    /// Attention heads (must divide `dim`).
    pub num_heads: usize,
}

/// Multi-head attention from image tokens to (projected) text tokens, honouring padding.
#[derive(Module, Debug)]
pub struct CrossAttention {
    /// Projects context tokens to the query width.
    pub context_proj: Linear,
    /// The attention (query/key/value/output projections are LoRA targets).
    pub attn: MultiHeadAttention,
}

impl CrossAttentionConfig {
    /// Initialises the module.
    pub fn init(&self, device: &Device) -> CrossAttention {
        CrossAttention {
            context_proj: LinearConfig::new(self.context_dim, self.dim).init(device),
            attn: MultiHeadAttentionConfig::new(self.dim, self.num_heads)
                .with_dropout(0.0)
                .init(device),
        }
    }
}

impl CrossAttention {
    /// # Shapes
    /// - `x`: `[B, N, dim]`, condition context `[B, L, context_dim]`; output `[B, N, dim]`.
    pub fn forward(&self, x: Tensor<3>, condition: &Condition) -> Tensor<3> {
        let ctx = self.context_proj.forward(condition.context.clone());
        multi_head_attention(&self.attn, x, ctx, condition.padding_mask.clone())
    }
}

/// Configuration of [`SpatialTransformer`].
#[derive(Config, Debug)]
pub struct SpatialTransformerConfig {
    /// Channels `C`.
    pub channels: usize,
    /// Width of the text tokens.
    pub context_dim: usize,
    /// Attention heads (must divide `channels`).
    pub num_heads: usize,
    /// GroupNorm groups (must divide `channels`).
    #[config(default = 8)]
    pub norm_groups: usize,
}

/// Self-attention, cross-attention and a feed-forward layer over the pixels of a feature map.
#[derive(Module, Debug)]
pub struct SpatialTransformer {
    /// Input normalisation.
    pub norm: GroupNorm,
    /// Input projection `[C → C]`.
    pub proj_in: Linear,
    /// Pre-norm of self-attention.
    pub norm_self: LayerNorm,
    /// Self-attention.
    pub self_attn: MultiHeadAttention,
    /// Pre-norm of cross-attention.
    pub norm_cross: LayerNorm,
    /// Cross-attention to the text tokens.
    pub cross_attn: CrossAttention,
    /// Pre-norm of the feed-forward layer.
    pub norm_ff: LayerNorm,
    /// Feed-forward expansion `[C → 4C]`.
    pub ff_in: Linear,
    /// Feed-forward projection `[4C → C]`.
    pub ff_out: Linear,
    /// Output projection `[C → C]`, zero-initialised.
    pub proj_out: Linear,
}

impl SpatialTransformerConfig {
    /// Initialises the module.
    pub fn init(&self, device: &Device) -> SpatialTransformer {
        let c = self.channels;
        SpatialTransformer {
            norm: GroupNormConfig::new(self.norm_groups, c).init(device),
            proj_in: LinearConfig::new(c, c).init(device),
            norm_self: LayerNormConfig::new(c).init(device),
            self_attn: MultiHeadAttentionConfig::new(c, self.num_heads)
                .with_dropout(0.0)
                .init(device),
            norm_cross: LayerNormConfig::new(c).init(device),
            cross_attn: CrossAttentionConfig::new(c, self.context_dim, self.num_heads).init(device),
            norm_ff: LayerNormConfig::new(c).init(device),
            ff_in: LinearConfig::new(c, 4 * c).init(device),
            ff_out: LinearConfig::new(4 * c, c).init(device),
            proj_out: LinearConfig::new(c, c)
                .with_initializer(Initializer::Zeros)
                .init(device),
        }
    }
}

impl SpatialTransformer {
    /// # Shapes
    /// - `x`: `[B, C, H, W]`; output `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>, condition: &Condition) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens: Tensor<3> = group_norm(&self.norm, x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let tokens = self.proj_in.forward(tokens);
        let n = self.norm_self.forward(tokens.clone());
        let tokens = tokens + multi_head_attention(&self.self_attn, n.clone(), n, None);
        let n = self.norm_cross.forward(tokens.clone());
        let tokens = tokens + self.cross_attn.forward(n, condition);
        let n = self.norm_ff.forward(tokens.clone());
        let tokens = tokens + self.ff_out.forward(gelu(self.ff_in.forward(n)));
        x + self
            .proj_out
            .forward(tokens)
            .swap_dims(1, 2)
            .reshape([b, c, h, w])
    }
}
