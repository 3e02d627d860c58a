//! A diffusion transformer (DiT) with adaLN-Zero blocks, for flow matching (velocity
//! prediction).
//!
//! ```text
//! tokens = PatchEmbed(x) + P                       [B, N, d],  N = (H/p)(W/p), P 2-D sin-cos
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

use crate::activation::{gelu, silu};
use crate::fused_attention::multi_head_attention;
use align_core::{Condition, Denoiser, Parameterization};
use burn::module::Param;
use burn::nn::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

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
    #[config(default = 16)]
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

    /// The preset of the shipped Shapes-world model (world v2, 16 × 16 images): 2×2 patches
    /// (64 tokens), so that 6–7 px shapes span several tokens and their edges need not follow
    /// patch borders; width 96, depth 3 — about 57 MFLOP per image forward, text encoder
    /// excluded (docs/benchmarks.md).
    pub fn small() -> Self {
        Self::new().with_patch_size(2).with_depth(3)
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
        if self.dim == 0 || !self.dim.is_multiple_of(4) {
            return Err(ModelError::config(
                "dim",
                format!(
                    "{} must be a positive multiple of 4 (2-D sin-cos positions)",
                    self.dim
                ),
            ));
        }
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return Err(ModelError::config(
                "heads",
                format!("{} must divide dim {}", self.heads, self.dim),
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
            positions: Param::from_tensor(Tensor::from_data(
                TensorData::new(
                    sincos_positions(self.image_size / p, d),
                    [self.num_tokens(), d],
                ),
                device,
            ))
            .set_require_grad(false),
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

/// Fixed 2-D sine–cosine positional embeddings of a `g × g` token grid, row-major, `[g², d]`
/// flattened.
///
/// The first `d/2` features encode the token's row `r`, the last `d/2` its column `c`; within
/// each half, with `k = d/4` frequencies `ω_i = 10000^(−i/k)`,
///
/// ```text
/// e(r)[i] = sin(r ω_i),   e(r)[k + i] = cos(r ω_i),   i = 0..k
/// ```
///
/// (as in the DiT and MAE papers). Unlike small random learned embeddings, they tell every
/// block from the first step where a token lies and which tokens are neighbours.
///
/// `d` must be a multiple of 4 (checked by [`DiTConfig::init`]).
pub fn sincos_positions(g: usize, d: usize) -> Vec<f32> {
    let k = d / 4;
    let mut out = Vec::with_capacity(g * g * d);
    let axis = |pos: usize, out: &mut Vec<f32>| {
        for i in 0..k {
            let w = 10000f64.powf(-(i as f64) / k as f64);
            out.push((pos as f64 * w).sin() as f32);
        }
        for i in 0..k {
            let w = 10000f64.powf(-(i as f64) / k as f64);
            out.push((pos as f64 * w).cos() as f32);
        }
    };
    for r in 0..g {
        for c in 0..g {
            axis(r, &mut out);
            axis(c, &mut out);
        }
    }
    out
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
        let h = h + multi_head_attention(&self.attn, x.clone(), x, None)
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
    /// Positional embeddings `[N, d]`: fixed 2-D sine–cosine ([`sincos_positions`]), not
    /// trained.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_positions_hand_computed() {
        // g = 2, d = 4: one frequency (ω = 1) per axis; token 1 is row 0, column 1.
        let p = sincos_positions(2, 4);
        assert_eq!(p.len(), 16);
        let want = [0.0, 1.0, 1f64.sin() as f32, 1f64.cos() as f32];
        for (a, b) in p[4..8].iter().zip(want) {
            assert!((a - b).abs() < 1e-7, "{a} vs {b}");
        }
        // Token 2 is row 1, column 0: the halves swap.
        assert_eq!(&p[8..10], &p[6..8]);
        assert_eq!(&p[10..12], &p[4..6]);
        // Every token's embedding is distinct.
        let p = sincos_positions(16, 96);
        let rows: Vec<&[f32]> = p.chunks(96).collect();
        for i in 0..rows.len() {
            for j in 0..i {
                assert!(rows[i] != rows[j], "tokens {i} and {j} coincide");
            }
        }
    }

    #[test]
    fn positions_are_fixed_sincos_and_dim_is_checked() {
        let device = align_core::test_device();
        let dit = DiTConfig::tiny().init(&device).unwrap();
        let got = dit.positions.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got, sincos_positions(4, 16));
        assert!(!dit.positions.is_require_grad());
        let err = DiTConfig::tiny()
            .with_dim(18)
            .with_heads(2)
            .init(&device)
            .unwrap_err();
        assert!(err.to_string().contains("dim"), "{err}");
    }
}
