//! A diffusion transformer (DiT) with adaLN-Zero blocks, for flow matching (velocity
//! prediction).
//!
//! ```text
//! tokens = PatchEmbed(x) + P                       [B, N, d],  N = (H/p)(W/p)
//! c      = TimestepMlp(1000 t) + Linear(mean of unpadded context tokens)
//! block:  (s₁, a₁, g₁, s₂, a₂, g₂) = Linear_zero(SiLU(c))
//!         h = h + g₁ ⊙ SelfAttn((1 + a₁) ⊙ LN(h) + s₁)
//!         h = h + CrossAttn(LN(h), context)
//!         h = h + g₂ ⊙ MLP((1 + a₂) ⊙ LN(h) + s₂)
//! out    = Linear_zero((1 + a) ⊙ LN(h) + s) → unpatchify → [B, C, H, W]
//! ```
//!
//! The modulation and output projections start at zero ("adaLN-Zero"), so every block starts
//! as the identity and the untrained model outputs exactly zero.

use align_core::{Condition, Denoiser, Parameterization};
use burn::module::Param;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, silu};

use crate::attention::{CrossAttention, CrossAttentionConfig};
use crate::error::{ModelError, Result};
use crate::timestep::{TimestepMlp, TimestepMlpConfig};

/// Configuration of [`DiT`].
#[derive(Config, Debug)]
pub struct DiTConfig {
    /// Image channels (in and out).
    #[config(default = 3)]
    pub channels: usize,
    /// Image side (square images).
    #[config(default = 32)]
    pub image_size: usize,
    /// Patch side `p`.
    #[config(default = 4)]
    pub patch_size: usize,
    /// Token width `d`.
    #[config(default = 96)]
    pub dim: usize,
    /// Number of blocks.
    #[config(default = 4)]
    pub depth: usize,
    /// Attention heads.
    #[config(default = 4)]
    pub heads: usize,
    /// Width of the condition's text tokens.
    #[config(default = 64)]
    pub context_dim: usize,
}

impl DiTConfig {
    /// The preset used by tests.
    pub fn tiny() -> Self {
        Self::new()
            .with_image_size(8)
            .with_patch_size(2)
            .with_dim(16)
            .with_depth(1)
            .with_heads(2)
            .with_context_dim(16)
    }

    /// The preset of the shipped Shapes-world model: 2×2 patches (256 tokens for 32×32), so
    /// that 6–9 px shapes span several tokens and their edges need not follow patch borders.
    pub fn small() -> Self {
        Self::new().with_patch_size(2)
    }

    /// Number of tokens `N`.
    pub fn num_tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Initialises the module.
    ///
    /// # Errors
    /// A patch size that does not divide the image, or heads that do not divide the width.
    pub fn init(&self, device: &Device) -> Result<DiT> {
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(ModelError::config(
                "patch_size",
                format!(
                    "{} does not divide image_size {}",
                    self.patch_size, self.image_size
                ),
            ));
        }
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) || !self.dim.is_multiple_of(2) {
            return Err(ModelError::config(
                "heads",
                format!("{} must divide the even dim {}", self.heads, self.dim),
            ));
        }
        let d = self.dim;
        let zero = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        let blocks = (0..self.depth)
            .map(|_| DiTBlock {
                norm_1: LayerNormConfig::new(d).init(device),
                attn: MultiHeadAttentionConfig::new(d, self.heads)
                    .with_dropout(0.0)
                    .init(device),
                norm_cross: LayerNormConfig::new(d).init(device),
                cross: CrossAttentionConfig::new(d, self.context_dim, self.heads).init(device),
                norm_2: LayerNormConfig::new(d).init(device),
                mlp_in: LinearConfig::new(d, 4 * d).init(device),
                mlp_out: LinearConfig::new(4 * d, d).init(device),
                modulation: zero(d, 6 * d),
            })
            .collect();
        let p = self.patch_size;
        Ok(DiT {
            patch_embed: Conv2dConfig::new([self.channels, d], [p, p])
                .with_stride([p, p])
                .init(device),
            positions: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([self.num_tokens(), d], device),
            time: TimestepMlpConfig::new(d, d).init(device),
            text_pool: LinearConfig::new(self.context_dim, d).init(device),
            blocks,
            norm_out: LayerNormConfig::new(d).init(device),
            modulation_out: zero(d, 2 * d),
            proj_out: zero(d, p * p * self.channels),
            patch_size: p,
            channels: self.channels,
            image_size: self.image_size,
        })
    }
}

/// One adaLN-Zero transformer block with cross-attention to text.
#[derive(Module, Debug)]
pub struct DiTBlock {
    /// Pre-norm of self-attention.
    pub norm_1: LayerNorm,
    /// Self-attention over image tokens.
    pub attn: MultiHeadAttention,
    /// Pre-norm of cross-attention.
    pub norm_cross: LayerNorm,
    /// Cross-attention to text tokens.
    pub cross: CrossAttention,
    /// Pre-norm of the MLP.
    pub norm_2: LayerNorm,
    /// MLP expansion `[d → 4d]`.
    pub mlp_in: Linear,
    /// MLP projection `[4d → d]`.
    pub mlp_out: Linear,
    /// adaLN modulation `[d → 6d]`, zero-initialised.
    pub modulation: Linear,
}

/// `(1 + scale) ⊙ x + shift` with `[B, d]` modulation broadcast over tokens.
fn modulate(x: Tensor<3>, shift: Tensor<2>, scale: Tensor<2>) -> Tensor<3> {
    x * (scale.unsqueeze_dim::<3>(1) + 1.0) + shift.unsqueeze_dim::<3>(1)
}

impl DiTBlock {
    fn forward(&self, h: Tensor<3>, c: Tensor<2>, condition: &Condition) -> Tensor<3> {
        let m = self.modulation.forward(silu(c)).chunk(6, 1);
        let x = modulate(self.norm_1.forward(h.clone()), m[0].clone(), m[1].clone());
        let h = h + self.attn.forward(MhaInput::self_attn(x)).context
            * m[2].clone().unsqueeze_dim::<3>(1);
        let h = h.clone() + self.cross.forward(self.norm_cross.forward(h), condition);
        let x = modulate(self.norm_2.forward(h.clone()), m[3].clone(), m[4].clone());
        h + self.mlp_out.forward(gelu(self.mlp_in.forward(x))) * m[5].clone().unsqueeze_dim::<3>(1)
    }
}

/// A diffusion transformer denoiser predicting flow velocity.
#[derive(Module, Debug)]
pub struct DiT {
    /// Patch embedding (a `p×p` stride-`p` convolution).
    pub patch_embed: Conv2d,
    /// Learned positional embeddings `[N, d]`.
    pub positions: Param<Tensor<2>>,
    /// Timestep embedding.
    pub time: TimestepMlp,
    /// Projection of the pooled text tokens into the conditioning vector.
    pub text_pool: Linear,
    /// Transformer blocks.
    pub blocks: Vec<DiTBlock>,
    /// Final normalisation.
    pub norm_out: LayerNorm,
    /// Final adaLN modulation `[d → 2d]`, zero-initialised.
    pub modulation_out: Linear,
    /// Output projection `[d → p²C]`, zero-initialised.
    pub proj_out: Linear,
    patch_size: usize,
    channels: usize,
    image_size: usize,
}

impl DiT {
    /// Mean of the unpadded context tokens.
    fn pooled_text(&self, condition: &Condition) -> Tensor<2> {
        let ctx = condition.context.clone();
        match &condition.padding_mask {
            None => ctx.mean_dim(1).squeeze_dim::<2>(1),
            Some(mask) => {
                let keep = mask.clone().bool_not().float().unsqueeze_dim::<3>(2);
                let count = keep.clone().sum_dim(1).clamp_min(1.0);
                (ctx * keep).sum_dim(1).div(count).squeeze_dim::<2>(1)
            }
        }
    }

    /// The predicted velocity.
    ///
    /// # Shapes
    /// - `x`: `[B, C, S, S]` with `S = image_size`; `t`: `[B]` flow times in `[0, 1]`;
    /// - output `[B, C, S, S]`.
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, condition: &Condition) -> Tensor<4> {
        let [b, _, _, _] = x.dims();
        let (p, c, s) = (self.patch_size, self.channels, self.image_size);
        let g = s / p;
        let tokens: Tensor<3> = self
            .patch_embed
            .forward(x)
            .flatten::<3>(2, 3)
            .swap_dims(1, 2);
        let mut h = tokens + self.positions.val().unsqueeze_dim::<3>(0);
        let cond = self.time.forward(t.mul_scalar(1000.0))
            + self.text_pool.forward(self.pooled_text(condition));
        for block in &self.blocks {
            h = block.forward(h, cond.clone(), condition);
        }
        let m = self.modulation_out.forward(silu(cond)).chunk(2, 1);
        let h = modulate(self.norm_out.forward(h), m[0].clone(), m[1].clone());
        let out = self.proj_out.forward(h); // [B, N, p·p·C]
        out.reshape([b, g, g, p, p, c])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, c, s, s])
    }
}

impl Denoiser for DiT {
    fn parameterization(&self) -> Parameterization {
        Parameterization::FlowVelocity
    }

    fn predict(&self, x_t: Tensor<4>, t: Tensor<1>, condition: &Condition) -> Tensor<4> {
        self.forward(x_t, t, condition)
    }
}
