//! Convolutional building blocks shared by the Stable Diffusion UNet and VAE, laid out as
//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D` (same parameter names).
//!
//! ```text
//! ResnetBlock2D:  h   = Conv3×3(SiLU(GN₁(x)))
//!                 h   = h + Linear(SiLU(temb))        (UNet only; broadcast over H, W)
//!                 h   = Conv3×3(SiLU(GN₂(h)))
//!                 out = (shortcut(x) + h) / output_scale_factor
//!                       shortcut = 1×1 conv when the channel count changes, else identity
//! Downsample2D:   out = Conv3×3_stride2(x)            padding 1 (UNet), or an explicit
//!                                                     (right, bottom) = 1 zero pad (VAE)
//! Upsample2D:     out = Conv3×3(nearest×2(x))
//! ```

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::silu;

/// A `k×k` convolution with "same" zero padding `(k − 1) / 2` (`k` odd).
pub(crate) fn conv_same(i: usize, o: usize, k: usize, device: &Device) -> Conv2d {
    let p = (k - 1) / 2;
    Conv2dConfig::new([i, o], [k, k])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .init(device)
}

/// A GroupNorm with `groups` groups over `channels` channels and the given ε.
pub(crate) fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// Configuration of [`ResnetBlock2D`].
#[derive(Config, Debug)]
pub struct ResnetBlock2DConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Width of the timestep embedding; `None` for the VAE's unconditioned blocks.
    pub temb_channels: Option<usize>,
    /// GroupNorm groups (must divide both channel counts).
    #[config(default = 32)]
    pub groups: usize,
    /// GroupNorm ε (1e-5 in the UNet, 1e-6 in the VAE).
    #[config(default = 1e-6)]
    pub eps: f64,
    /// The sum is divided by this (1 in every SD 1.x / 2.x block).
    #[config(default = 1.0)]
    pub output_scale_factor: f64,
}

/// diffusers' `ResnetBlock2D` (`resnet_time_scale_shift = "default"`).
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    /// First normalisation (over the input channels).
    pub norm1: GroupNorm,
    /// First 3×3 convolution.
    pub conv1: Conv2d,
    /// Timestep projection `[temb_channels → out_channels]`.
    pub time_emb_proj: Option<Linear>,
    /// Second normalisation.
    pub norm2: GroupNorm,
    /// Second 3×3 convolution.
    pub conv2: Conv2d,
    /// 1×1 projection of the input when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2DConfig {
    /// Initialises the module.
    pub fn init(&self, device: &Device) -> ResnetBlock2D {
        let (i, o) = (self.in_channels, self.out_channels);
        ResnetBlock2D {
            norm1: group_norm(self.groups, i, self.eps, device),
            conv1: conv_same(i, o, 3, device),
            time_emb_proj: self
                .temb_channels
                .map(|t| LinearConfig::new(t, o).init(device)),
            norm2: group_norm(self.groups, o, self.eps, device),
            conv2: conv_same(o, o, 3, device),
            conv_shortcut: (i != o).then(|| Conv2dConfig::new([i, o], [1, 1]).init(device)),
            output_scale_factor: self.output_scale_factor,
        }
    }
}

impl ResnetBlock2D {
    /// # Shapes
    /// - `x`: `[B, C_in, H, W]`, `temb`: `[B, temb_channels]` (ignored by a block without
    ///   `time_emb_proj`); output `[B, C_out, H, W]`.
    pub fn forward(&self, x: Tensor<4>, temb: Option<Tensor<2>>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let [b, c, _, _] = h.dims();
                h + proj.forward(silu(temb)).reshape([b, c, 1, 1])
            }
            _ => h,
        };
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = shortcut + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out.div_scalar(self.output_scale_factor)
        }
    }
}

/// Configuration of [`Downsample2D`].
#[derive(Config, Debug)]
pub struct Downsample2DConfig {
    /// Channels (in = out).
    pub channels: usize,
    /// Symmetric padding of the stride-2 convolution; 0 means diffusers' explicit
    /// (right, bottom) one-pixel zero pad, as in the VAE encoder.
    #[config(default = 1)]
    pub padding: usize,
}

/// diffusers' `Downsample2D` with `use_conv = True`: a stride-2 3×3 convolution.
#[derive(Module, Debug)]
pub struct Downsample2D {
    /// The stride-2 convolution.
    pub conv: Conv2d,
}

impl Downsample2DConfig {
    /// Initialises the module.
    pub fn init(&self, device: &Device) -> Downsample2D {
        let p = self.padding;
        let padding = if p == 0 {
            // F.pad(x, (0, 1, 0, 1)): nothing on top/left, one zero row/column bottom/right.
            PaddingConfig2d::Explicit(0, 0, 1, 1)
        } else {
            PaddingConfig2d::Explicit(p, p, p, p)
        };
        Downsample2D {
            conv: Conv2dConfig::new([self.channels, self.channels], [3, 3])
                .with_stride([2, 2])
                .with_padding(padding)
                .init(device),
        }
    }
}

impl Downsample2D {
    /// # Shapes
    /// - `x`: `[B, C, H, W]`; output `[B, C, ⌈H/2⌉, ⌈W/2⌉]` (exactly `H/2 × W/2` for even sizes).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x)
    }
}

/// Configuration of [`Upsample2D`].
#[derive(Config, Debug)]
pub struct Upsample2DConfig {
    /// Channels (in = out).
    pub channels: usize,
}

/// diffusers' `Upsample2D` with `use_conv = True`: nearest-neighbour ×2, then a 3×3 conv.
#[derive(Module, Debug)]
pub struct Upsample2D {
    /// The convolution after upsampling.
    pub conv: Conv2d,
}

impl Upsample2DConfig {
    /// Initialises the module.
    pub fn init(&self, device: &Device) -> Upsample2D {
        Upsample2D {
            conv: conv_same(self.channels, self.channels, 3, device),
        }
    }
}

/// Nearest-neighbour ×2 upsampling (`F.interpolate(x, scale_factor=2, mode="nearest")`),
/// written as a broadcast so that it is exact and differentiable on every backend.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`; output `[B, C, 2H, 2W]`.
pub fn upsample_nearest_2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

impl Upsample2D {
    /// # Shapes
    /// - `x`: `[B, C, H, W]`; output `[B, C, 2H, 2W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(upsample_nearest_2x(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_shapes() {
        let device = align_core::test_device();
        let x = Tensor::<4>::ones([2, 4, 6, 6], &device);
        let res = ResnetBlock2DConfig::new(4, 8)
            .with_temb_channels(Some(16))
            .with_groups(2)
            .init(&device);
        assert!(res.conv_shortcut.is_some());
        let h = res.forward(x.clone(), Some(Tensor::zeros([2, 16], &device)));
        assert_eq!(h.dims(), [2, 8, 6, 6]);
        let down = Downsample2DConfig::new(8).init(&device).forward(h.clone());
        assert_eq!(down.dims(), [2, 8, 3, 3]);
        let down0 = Downsample2DConfig::new(8)
            .with_padding(0)
            .init(&device)
            .forward(h);
        assert_eq!(down0.dims(), [2, 8, 3, 3]);
        let up = Upsample2DConfig::new(4).init(&device).forward(x);
        assert_eq!(up.dims(), [2, 4, 12, 12]);
    }

    #[test]
    fn nearest_upsampling_repeats_pixels() {
        let device = align_core::test_device();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]),
            &device,
        );
        let y: Vec<f32> = upsample_nearest_2x(x)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        let expect = [
            1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0,
        ];
        assert_eq!(y, expect);
    }
}
