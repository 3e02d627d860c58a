//! The UNet residual block with timestep conditioning.
//!
//! ```text
//! h   = Conv3×3(SiLU(GN(x)))
//! h   = h + Linear(SiLU(temb))          (broadcast over H, W)
//! h   = Conv3×3(SiLU(GN(h)))
//! out = skip(x) + h,   skip = 1×1 conv when the channel count changes, else identity
//! ```

use crate::activation::silu;
use crate::group_norm::group_norm;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

/// Configuration of [`ResBlock`].
#[derive(Config, Debug)]
pub struct ResBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Width of the timestep embedding.
    pub temb_dim: usize,
    /// GroupNorm groups (must divide both channel counts).
    #[config(default = 8)]
    pub norm_groups: usize,
}

/// A residual block with timestep conditioning.
#[derive(Module, Debug)]
pub struct ResBlock {
    /// First normalisation.
    pub norm_1: GroupNorm,
    /// First 3×3 convolution.
    pub conv_1: Conv2d,
    /// Timestep projection `[temb_dim → out_channels]`.
    pub temb_proj: Linear,
    /// Second normalisation.
    pub norm_2: GroupNorm,
    /// Second 3×3 convolution.
    pub conv_2: Conv2d,
    /// 1×1 projection of the input when the channel count changes.
    pub skip: Option<Conv2d>,
}

fn conv3(i: usize, o: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

impl ResBlockConfig {
    /// Initialises the module.
    pub fn init(&self, device: &Device) -> ResBlock {
        let (i, o) = (self.in_channels, self.out_channels);
        ResBlock {
            norm_1: GroupNormConfig::new(self.norm_groups, i).init(device),
            conv_1: conv3(i, o, device),
            temb_proj: LinearConfig::new(self.temb_dim, o).init(device),
            norm_2: GroupNormConfig::new(self.norm_groups, o).init(device),
            conv_2: conv3(o, o, device),
            skip: (i != o).then(|| Conv2dConfig::new([i, o], [1, 1]).init(device)),
        }
    }
}

impl ResBlock {
    /// # Shapes
    /// - `x`: `[B, C_in, H, W]`, `temb`: `[B, temb_dim]`; output `[B, C_out, H, W]`.
    pub fn forward(&self, x: Tensor<4>, temb: Tensor<2>) -> Tensor<4> {
        let h = self
            .conv_1
            .forward(silu(group_norm(&self.norm_1, x.clone())));
        let [b, c, _, _] = h.dims();
        let h = h + self.temb_proj.forward(silu(temb)).reshape([b, c, 1, 1]);
        let h = self.conv_2.forward(silu(group_norm(&self.norm_2, h)));
        let skip = match &self.skip {
            Some(conv) => conv.forward(x),
            None => x,
        };
        skip + h
    }
}
