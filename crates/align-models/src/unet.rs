//! A text-conditioned UNet for ε- or v-prediction (the DDPM/DDIM family).
//!
//! Layout (DDPM / latent-diffusion style), for channel multipliers `m_0..m_{L−1}`:
//!
//! ```text
//! temb = TimestepMlp(t)                                     t = DDPM timestep (0..T)
//! h    = Conv3×3(x)                                         [B, c·m_0, H, W]
//! down level i: n × (ResBlock [+ SpatialTransformer]), then a stride-2 conv (not on the last)
//! middle:       ResBlock, SpatialTransformer, ResBlock
//! up level i:   (n + 1) × (concat skip → ResBlock [+ SpatialTransformer]), then ×2 nearest + conv
//! out  = Conv3×3(SiLU(GN(h)))                               [B, out_channels, H, W]
//! ```
//!
//! Every level with `attention[i] = true` cross-attends to the condition's text tokens, and
//! the middle block always does.
//!
//! With `parameterization = FlowVelocity` the same network is a flow-matching model (a
//! "flow UNet"): it predicts the velocity `v = ε − x₀` and takes flow times `t ∈ [0, 1]`,
//! which it embeds as `1000 t` (the DiT's convention), so the timestep embedding sees the same
//! range as a DDPM UNet's.

use crate::activation::silu;
use crate::group_norm::group_norm;
use align_core::{Condition, Denoiser, Parameterization};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::interpolate::{Interpolate2d, Interpolate2dConfig, InterpolateMode};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::prelude::*;

use crate::attention::{SpatialTransformer, SpatialTransformerConfig};
use crate::error::{ModelError, Result};
use crate::resblock::{ResBlock, ResBlockConfig};
use crate::timestep::{TimestepMlp, TimestepMlpConfig};

/// Configuration of [`UNet`].
#[derive(Config, Debug)]
pub struct UNetConfig {
    /// Image channels in.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Channels out (= in for ε/v prediction).
    #[config(default = 3)]
    pub out_channels: usize,
    /// Base width `c`.
    #[config(default = 32)]
    pub base_channels: usize,
    /// Width multiplier per resolution level.
    #[config(default = "vec![1, 2, 2]")]
    pub channel_mults: Vec<usize>,
    /// Residual blocks per level on the way down.
    #[config(default = 1)]
    pub num_res_blocks: usize,
    /// Whether each level has attention (same length as `channel_mults`).
    #[config(default = "vec![false, false, true]")]
    pub attention: Vec<bool>,
    /// Width of the condition's text tokens.
    #[config(default = 64)]
    pub context_dim: usize,
    /// Attention heads.
    #[config(default = 4)]
    pub num_heads: usize,
    /// GroupNorm groups.
    #[config(default = 8)]
    pub norm_groups: usize,
    /// What the network predicts (`Epsilon`, `VPrediction`, `Sample`, or `FlowVelocity` for a
    /// flow-matching UNet).
    #[config(default = "Parameterization::Epsilon")]
    pub parameterization: Parameterization,
}

impl UNetConfig {
    /// The preset used by tests: 2 levels, width 16 (a few thousand parameters per block).
    pub fn tiny() -> Self {
        Self::new()
            .with_base_channels(16)
            .with_channel_mults(vec![1, 2])
            .with_attention(vec![false, true])
            .with_context_dim(16)
            .with_num_heads(2)
            .with_norm_groups(4)
    }

    /// The preset of the shipped Shapes-world model (world v2, 16 × 16 images): width 16
    /// with multipliers 1, 2, 3 (16 channels at 16 × 16, 32 at 8 × 8, 48 at 4 × 4) and
    /// attention at 8 × 8 and 4 × 4 — about 51 MFLOP per image forward, text encoder
    /// excluded (docs/benchmarks.md).
    pub fn small() -> Self {
        Self::new()
            .with_base_channels(16)
            .with_channel_mults(vec![1, 2, 3])
            .with_attention(vec![false, true, true])
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the inconsistent field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Err(ModelError::config(field, reason));
        if self.channel_mults.is_empty() {
            return bad("channel_mults", "needs at least one level".into());
        }
        if self.attention.len() != self.channel_mults.len() {
            return bad(
                "attention",
                format!(
                    "has {} entries for {} levels",
                    self.attention.len(),
                    self.channel_mults.len()
                ),
            );
        }
        if self.base_channels == 0 || !self.base_channels.is_multiple_of(2) {
            return bad(
                "base_channels",
                format!("{} must be even and positive", self.base_channels),
            );
        }
        for &m in &self.channel_mults {
            let c = m * self.base_channels;
            if m == 0 || !c.is_multiple_of(self.norm_groups) {
                return bad(
                    "norm_groups",
                    format!("{} does not divide width {c}", self.norm_groups),
                );
            }
            if !c.is_multiple_of(self.num_heads) {
                return bad(
                    "num_heads",
                    format!("{} does not divide width {c}", self.num_heads),
                );
            }
        }
        Ok(())
    }

    /// Initialises the module.
    ///
    /// # Errors
    /// An invalid configuration (see [`UNetConfig::validate`]).
    pub fn init(&self, device: &Device) -> Result<UNet> {
        self.validate()?;
        let c = self.base_channels;
        let temb_dim = 4 * c;
        let res = |i: usize, o: usize| {
            ResBlockConfig::new(i, o, temb_dim)
                .with_norm_groups(self.norm_groups)
                .init(device)
        };
        let attn = |ch: usize| {
            SpatialTransformerConfig::new(ch, self.context_dim, self.num_heads)
                .with_norm_groups(self.norm_groups)
                .init(device)
        };
        let conv3 = |i: usize, o: usize, stride: usize| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let levels = self.channel_mults.len();
        let mut down = Vec::new();
        let mut skips = vec![c];
        let mut ch = c;
        for (i, &m) in self.channel_mults.iter().enumerate() {
            let out = m * c;
            let mut blocks = Vec::new();
            for _ in 0..self.num_res_blocks {
                blocks.push(UNetBlock {
                    res: res(ch, out),
                    attn: self.attention[i].then(|| attn(out)),
                });
                ch = out;
                skips.push(ch);
            }
            let resample = (i + 1 < levels).then(|| conv3(ch, ch, 2));
            if resample.is_some() {
                skips.push(ch);
            }
            down.push(UNetLevel { blocks, resample });
        }
        let mid_1 = res(ch, ch);
        let mid_attn = attn(ch);
        let mid_2 = res(ch, ch);
        let mut up = Vec::new();
        for (i, &m) in self.channel_mults.iter().enumerate().rev() {
            let out = m * c;
            let mut blocks = Vec::new();
            for _ in 0..=self.num_res_blocks {
                let skip = skips.pop().unwrap_or(c);
                blocks.push(UNetBlock {
                    res: res(ch + skip, out),
                    attn: self.attention[i].then(|| attn(out)),
                });
                ch = out;
            }
            let resample = (i > 0).then(|| conv3(ch, ch, 1));
            up.push(UNetLevel { blocks, resample });
        }
        Ok(UNet {
            time: TimestepMlpConfig::new(c, temb_dim).init(device),
            conv_in: conv3(self.in_channels, c, 1),
            down,
            mid_1,
            mid_attn,
            mid_2,
            up,
            norm_out: GroupNormConfig::new(self.norm_groups, ch).init(device),
            conv_out: conv3(ch, self.out_channels, 1),
            upsample: Interpolate2dConfig::new()
                .with_scale_factor(Some([2.0, 2.0]))
                .with_mode(InterpolateMode::Nearest)
                .init(),
            parameterization: self.parameterization,
        })
    }
}

/// A residual block with optional attention.
#[derive(Module, Debug)]
pub struct UNetBlock {
    /// Residual block.
    pub res: ResBlock,
    /// Attention after the residual block.
    pub attn: Option<SpatialTransformer>,
}

impl UNetBlock {
    fn forward(&self, x: Tensor<4>, temb: Tensor<2>, condition: &Condition) -> Tensor<4> {
        let h = self.res.forward(x, temb);
        match &self.attn {
            Some(attn) => attn.forward(h, condition),
            None => h,
        }
    }
}

/// One resolution level: its blocks and the resampling convolution that ends it.
#[derive(Module, Debug)]
pub struct UNetLevel {
    /// Blocks of the level.
    pub blocks: Vec<UNetBlock>,
    /// Stride-2 convolution (down path) or the convolution after ×2 upsampling (up path);
    /// `None` at the coarsest level going down and the finest going up.
    pub resample: Option<Conv2d>,
}

/// A text-conditioned UNet denoiser.
#[derive(Module, Debug)]
pub struct UNet {
    /// Timestep embedding.
    pub time: TimestepMlp,
    /// Stem convolution.
    pub conv_in: Conv2d,
    /// Down path, finest level first.
    pub down: Vec<UNetLevel>,
    /// Middle residual block 1.
    pub mid_1: ResBlock,
    /// Middle attention.
    pub mid_attn: SpatialTransformer,
    /// Middle residual block 2.
    pub mid_2: ResBlock,
    /// Up path, coarsest level first.
    pub up: Vec<UNetLevel>,
    /// Output normalisation.
    pub norm_out: GroupNorm,
    /// Output convolution.
    pub conv_out: Conv2d,
    upsample: Interpolate2d,
    #[module(skip)]
    parameterization: Parameterization,
}

impl UNet {
    /// The network output.
    ///
    /// # Shapes
    /// - `x`: `[B, in_channels, H, W]` with `H`, `W` divisible by `2^(levels−1)`;
    /// - `t`: `[B]` DDPM timesteps, or flow times in `[0, 1]` for a `FlowVelocity` UNet;
    ///   condition of batch `B`;
    /// - output: `[B, out_channels, H, W]`.
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, condition: &Condition) -> Tensor<4> {
        let t = if self.parameterization == Parameterization::FlowVelocity {
            t.mul_scalar(1000.0)
        } else {
            t
        };
        let temb = self.time.forward(t);
        let mut h = self.conv_in.forward(x);
        let mut skips = vec![h.clone()];
        for level in &self.down {
            for block in &level.blocks {
                h = block.forward(h, temb.clone(), condition);
                skips.push(h.clone());
            }
            if let Some(conv) = &level.resample {
                h = conv.forward(h);
                skips.push(h.clone());
            }
        }
        h = self.mid_1.forward(h, temb.clone());
        h = self.mid_attn.forward(h, condition);
        h = self.mid_2.forward(h, temb.clone());
        for level in &self.up {
            for block in &level.blocks {
                // The skip list is built with one entry per up block, so it cannot run dry.
                let skip = skips.pop().unwrap_or_else(|| h.clone());
                h = block.forward(Tensor::cat(vec![h, skip], 1), temb.clone(), condition);
            }
            if let Some(conv) = &level.resample {
                h = conv.forward(self.upsample.forward(h));
            }
        }
        self.conv_out.forward(silu(group_norm(&self.norm_out, h)))
    }
}

impl Denoiser for UNet {
    fn parameterization(&self) -> Parameterization {
        self.parameterization
    }

    fn predict(&self, x_t: Tensor<4>, t: Tensor<1>, condition: &Condition) -> Tensor<4> {
        self.forward(x_t, t, condition)
    }
}
