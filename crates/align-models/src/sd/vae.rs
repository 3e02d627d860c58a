//! diffusers' `AutoencoderKL`, the Stable Diffusion VAE.
//!
//! ```text
//! Encoder:  h = conv_in(x)
//!           down block i: layers_per_block × ResnetBlock2D, then a stride-2 conv with a
//!                         (right, bottom) zero pad (not on the last block)
//!           mid block:    ResnetBlock2D → Attention (GN + single-head, residual) → ResnetBlock2D
//!           out = conv_out(SiLU(conv_norm_out(h)))            [B, 2·latent, h, w]
//! encode:   [μ, log σ²] = quant_conv(Encoder(x)) split on channels, log σ² clamped to [−30, 20]
//! Decoder:  h = conv_in(z), mid block, up blocks of (layers_per_block + 1) ResNets then
//!           nearest ×2 + conv (not on the last), out = conv_out(SiLU(conv_norm_out(h)))
//! decode:   x = Decoder(post_quant_conv(z))
//! ```
//!
//! All GroupNorms use ε = 1e-6. [`AutoencoderKl::decode`] takes the *unscaled* latent: a
//! pipeline divides its latents by [`AutoencoderKl::scaling_factor`] first, as diffusers does.
//!
//! Parameter paths equal diffusers' tensor names up to [`VAE_REMAP`], which also accepts the
//! attention names of older checkpoints (`query`, `key`, `value`, `proj_attn`).

use std::path::Path;

use burn::nn::GroupNorm;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;
use serde::{Deserialize, Serialize};

use super::blocks::{
    Downsample2D, Downsample2DConfig, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D,
    Upsample2DConfig, conv_same, group_norm,
};
use super::config::require;
use super::transformer::{Attention, AttentionConfig};
use crate::error::{ModelError, Result};

/// Remappings from diffusers' VAE tensor names (current and pre-0.14 attention names) to this
/// module's parameter paths, as passed to [`crate::hf::load_pytorch_safetensors`].
pub const VAE_REMAP: [(&str, &str); 5] = [
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.attentions\.(\d+)\.query\.", ".attentions.$1.to_q."),
    (r"\.attentions\.(\d+)\.key\.", ".attentions.$1.to_k."),
    (r"\.attentions\.(\d+)\.value\.", ".attentions.$1.to_v."),
    (
        r"\.attentions\.(\d+)\.proj_attn\.",
        ".attentions.$1.to_out.",
    ),
];

const VAE_EPS: f64 = 1e-6;

fn d_three() -> usize {
    3
}
fn d_down_types() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn d_up_types() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn d_block_out() -> Vec<usize> {
    vec![64]
}
fn d_one() -> usize {
    1
}
fn d_latent() -> usize {
    4
}
fn d_groups() -> usize {
    32
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_silu() -> String {
    "silu".into()
}
fn d_true() -> bool {
    true
}

/// Configuration of [`AutoencoderKl`]: diffusers' `vae/config.json` (defaults are diffusers'
/// defaults; unknown fields such as `force_upcast` are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKlConfig {
    /// Image channels.
    #[serde(default = "d_three")]
    pub in_channels: usize,
    /// Decoded image channels.
    #[serde(default = "d_three")]
    pub out_channels: usize,
    /// `DownEncoderBlock2D` per resolution.
    #[serde(default = "d_down_types")]
    pub down_block_types: Vec<String>,
    /// `UpDecoderBlock2D` per resolution.
    #[serde(default = "d_up_types")]
    pub up_block_types: Vec<String>,
    /// Channels per resolution, finest first.
    #[serde(default = "d_block_out")]
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder block (decoder blocks have one more).
    #[serde(default = "d_one")]
    pub layers_per_block: usize,
    /// Latent channels.
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    /// Image resolution the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
    /// Latents are multiplied by this before diffusion (0.18215 for SD 1.x / 2.x).
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    /// SD3 / Flux: latents are `(z − shift) · scaling` (null or absent for SD 1.x / 2.x).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Activation (must be `silu`).
    #[serde(default = "d_silu")]
    pub act_fn: String,
    /// Whether the mid blocks have their attention layer.
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    /// Whether `quant_conv` exists.
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
}

impl AutoencoderKlConfig {
    /// Reads `config.json` of a diffusers VAE.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] if the file is missing or does not parse;
    /// [`ModelError::Config`] naming an unsupported field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = crate::hf::read_config(path)?;
        config.validate().map_err(|e| crate::hf::in_file(path, e))?;
        Ok(config)
    }

    /// Checks that the configuration describes a VAE this module implements.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the first unsupported or inconsistent field.
    pub fn validate(&self) -> Result<()> {
        use crate::hf::{MAX_COUNT, MAX_WIDTH};
        let widest = self.block_out_channels.iter().copied().max().unwrap_or(0);
        crate::hf::check_sizes(&[
            (
                "block_out_channels (blocks)",
                self.block_out_channels.len(),
                16,
            ),
            ("block_out_channels", widest, MAX_WIDTH),
            ("layers_per_block", self.layers_per_block, MAX_COUNT),
            ("in_channels", self.in_channels, MAX_COUNT),
            ("out_channels", self.out_channels, MAX_COUNT),
            ("latent_channels", self.latent_channels, MAX_COUNT),
            ("norm_num_groups", self.norm_num_groups, MAX_WIDTH),
        ])?;
        let n = self.block_out_channels.len();
        require(n > 0, "block_out_channels", || "is empty".into())?;
        for (types, field, want) in [
            (
                &self.down_block_types,
                "down_block_types",
                "DownEncoderBlock2D",
            ),
            (&self.up_block_types, "up_block_types", "UpDecoderBlock2D"),
        ] {
            require(types.len() == n, field, || {
                format!("has {} entries for {n} blocks", types.len())
            })?;
            if let Some(other) = types.iter().find(|t| *t != want) {
                return Err(ModelError::config(
                    field,
                    format!("`{other}` is not supported ({want})"),
                ));
            }
        }
        require(self.act_fn == "silu", "act_fn", || {
            format!("`{}` is not supported (silu)", self.act_fn)
        })?;
        require(
            self.shift_factor.is_none_or(f64::is_finite),
            "shift_factor",
            || format!("{:?} is not a finite number", self.shift_factor),
        )?;
        require(self.layers_per_block > 0, "layers_per_block", || {
            "must be positive".into()
        })?;
        let g = self.norm_num_groups;
        for &c in &self.block_out_channels {
            require(g > 0 && c.is_multiple_of(g), "norm_num_groups", || {
                format!("{g} does not divide block width {c}")
            })?;
        }
        require(
            self.scaling_factor.is_finite() && self.scaling_factor > 0.0,
            "scaling_factor",
            || format!("{} must be positive", self.scaling_factor),
        )?;
        Ok(())
    }

    /// Initialises the module with random weights (load real ones with
    /// [`AutoencoderKl::load`]).
    ///
    /// # Errors
    /// An invalid configuration (see [`AutoencoderKlConfig::validate`]).
    pub fn init(&self, device: &Device) -> Result<AutoencoderKl> {
        self.validate()?;
        let ch = &self.block_out_channels;
        let n = ch.len();
        let g = self.norm_num_groups;
        let resnet = |i: usize, o: usize| {
            ResnetBlock2DConfig::new(i, o)
                .with_groups(g)
                .with_eps(VAE_EPS)
                .init(device)
        };
        let mid = |c: usize| VaeMidBlock {
            resnets: vec![resnet(c, c), resnet(c, c)],
            attentions: if self.mid_block_add_attention {
                vec![
                    AttentionConfig::new(c, 1, c)
                        .with_bias(true)
                        .with_group_norm(Some((g, VAE_EPS)))
                        .init(device),
                ]
            } else {
                Vec::new()
            },
        };
        let conv1 = |i: usize, o: usize| Conv2dConfig::new([i, o], [1, 1]).init(device);
        let last = ch[n - 1];
        let l = self.latent_channels;

        let mut down_blocks = Vec::with_capacity(n);
        let mut out = ch[0];
        for (b, &c) in ch.iter().enumerate() {
            let input = out;
            out = c;
            down_blocks.push(VaeBlock {
                resnets: (0..self.layers_per_block)
                    .map(|j| resnet(if j == 0 { input } else { out }, out))
                    .collect(),
                downsamplers: if b + 1 < n {
                    vec![Downsample2DConfig::new(out).with_padding(0).init(device)]
                } else {
                    Vec::new()
                },
                upsamplers: Vec::new(),
            });
        }
        let encoder = Encoder {
            conv_in: conv_same(self.in_channels, ch[0], 3, device),
            down_blocks,
            mid_block: mid(last),
            conv_norm_out: group_norm(g, last, VAE_EPS, device),
            conv_out: conv_same(last, 2 * l, 3, device),
        };

        let mut up_blocks = Vec::with_capacity(n);
        let mut prev = last;
        for i in 0..n {
            let out = ch[n - 1 - i];
            up_blocks.push(VaeBlock {
                resnets: (0..=self.layers_per_block)
                    .map(|j| resnet(if j == 0 { prev } else { out }, out))
                    .collect(),
                downsamplers: Vec::new(),
                upsamplers: if i + 1 < n {
                    vec![Upsample2DConfig::new(out).init(device)]
                } else {
                    Vec::new()
                },
            });
            prev = out;
        }
        let decoder = Decoder {
            conv_in: conv_same(l, last, 3, device),
            mid_block: mid(last),
            up_blocks,
            conv_norm_out: group_norm(g, ch[0], VAE_EPS, device),
            conv_out: conv_same(ch[0], self.out_channels, 3, device),
        };
        Ok(AutoencoderKl {
            encoder,
            decoder,
            quant_conv: self.use_quant_conv.then(|| conv1(2 * l, 2 * l)),
            post_quant_conv: self.use_post_quant_conv.then(|| conv1(l, l)),
            config: self.clone(),
        })
    }

    /// Initialises the model and loads a diffusers VAE safetensors file into it.
    ///
    /// # Errors
    /// As [`AutoencoderKl::load`].
    pub fn load_weights(&self, path: &Path, device: &Device) -> Result<AutoencoderKl> {
        let model = self.init(device)?;
        crate::hf::load_pytorch_safetensors(model, path, &VAE_REMAP, &[])
    }
}

/// A block of the VAE: diffusers' `DownEncoderBlock2D` (ResNets + `downsamplers`) or
/// `UpDecoderBlock2D` (ResNets + `upsamplers`).
#[derive(Module, Debug)]
pub struct VaeBlock {
    /// The ResNets (no timestep input).
    pub resnets: Vec<ResnetBlock2D>,
    /// The down-sampling convolution (encoder blocks except the last).
    pub downsamplers: Vec<Downsample2D>,
    /// The up-sampling (decoder blocks except the last).
    pub upsamplers: Vec<Upsample2D>,
}

impl VaeBlock {
    /// # Shapes
    /// - `x`: `[B, C_in, H, W]`; output `[B, C_out, H', W']` (`H' = H/2`, `H`, or `2H`).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = x;
        for r in &self.resnets {
            h = r.forward(h, None);
        }
        for d in &self.downsamplers {
            h = d.forward(h);
        }
        for u in &self.upsamplers {
            h = u.forward(h);
        }
        h
    }
}

/// diffusers' `UNetMidBlock2D` without timestep: ResNet → attention → ResNet.
#[derive(Module, Debug)]
pub struct VaeMidBlock {
    /// The two ResNets.
    pub resnets: Vec<ResnetBlock2D>,
    /// The spatial self-attention (absent if `mid_block_add_attention` is false).
    pub attentions: Vec<Attention>,
}

impl VaeMidBlock {
    /// # Shapes
    /// - `x`: `[B, C, H, W]`; output `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = x;
        for (j, r) in self.resnets.iter().enumerate() {
            if j > 0
                && let Some(a) = self.attentions.get(j - 1)
            {
                h = a.forward_image(h);
            }
            h = r.forward(h, None);
        }
        h
    }
}

/// The VAE encoder (diffusers' `Encoder` with `double_z`).
#[derive(Module, Debug)]
pub struct Encoder {
    /// Stem convolution.
    pub conv_in: Conv2d,
    /// Down blocks, finest first.
    pub down_blocks: Vec<VaeBlock>,
    /// Middle block.
    pub mid_block: VaeMidBlock,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm,
    /// Output convolution to `2 · latent_channels` moments.
    pub conv_out: Conv2d,
}

impl Encoder {
    /// # Shapes
    /// - `x`: `[B, in_channels, H, W]`; output `[B, 2·latent_channels, H/f, W/f]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.conv_in.forward(x);
        for b in &self.down_blocks {
            h = b.forward(h);
        }
        h = self.mid_block.forward(h);
        self.conv_out.forward(silu(self.conv_norm_out.forward(h)))
    }
}

/// The VAE decoder (diffusers' `Decoder`).
#[derive(Module, Debug)]
pub struct Decoder {
    /// Stem convolution from the latent.
    pub conv_in: Conv2d,
    /// Middle block.
    pub mid_block: VaeMidBlock,
    /// Up blocks, coarsest first.
    pub up_blocks: Vec<VaeBlock>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm,
    /// Output convolution to image channels.
    pub conv_out: Conv2d,
}

impl Decoder {
    /// # Shapes
    /// - `z`: `[B, latent_channels, h, w]`; output `[B, out_channels, h·f, w·f]`.
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut h = self.conv_in.forward(z);
        h = self.mid_block.forward(h);
        for b in &self.up_blocks {
            h = b.forward(h);
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(h)))
    }
}

/// The encoder's posterior `N(mean, exp(logvar))` (diffusers' `DiagonalGaussianDistribution`).
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// Mean `μ`.
    pub mean: Tensor<4>,
    /// Log-variance, clamped to `[−30, 20]`.
    pub logvar: Tensor<4>,
}

impl DiagonalGaussian {
    /// Splits `[μ, log σ²]` moments on the channel axis and clamps the log-variance.
    ///
    /// # Shapes
    /// - `moments`: `[B, 2C, h, w]`; mean and logvar `[B, C, h, w]`.
    pub fn from_moments(moments: Tensor<4>) -> Self {
        let c = moments.dims()[1] / 2;
        let mean = moments.clone().narrow(1, 0, c);
        let logvar = moments.narrow(1, c, c).clamp(-30.0, 20.0);
        Self { mean, logvar }
    }

    /// Standard deviation `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<4> {
        self.logvar.clone().mul_scalar(0.5).exp()
    }

    /// Variance `exp(logvar)`.
    pub fn var(&self) -> Tensor<4> {
        self.logvar.clone().exp()
    }

    /// A draw `μ + σ ⊙ noise` for standard-normal `noise` of the same shape.
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.std() * noise
    }

    /// The mode (= mean).
    pub fn mode(&self) -> Tensor<4> {
        self.mean.clone()
    }
}

/// diffusers' `AutoencoderKL`. See the [module documentation](self).
#[derive(Module, Debug)]
pub struct AutoencoderKl {
    /// Image → moments.
    pub encoder: Encoder,
    /// Latent → image.
    pub decoder: Decoder,
    /// 1×1 conv on the moments.
    pub quant_conv: Option<Conv2d>,
    /// 1×1 conv on the latent before decoding.
    pub post_quant_conv: Option<Conv2d>,
    #[module(skip)]
    config: AutoencoderKlConfig,
}

impl AutoencoderKl {
    /// Loads a diffusers VAE directory: `dir/config.json` and
    /// `dir/diffusion_pytorch_model.safetensors`.
    ///
    /// # Errors
    /// [`ModelError::Config`] for an unsupported config; [`ModelError::Checkpoint`] for a
    /// missing file or one whose tensors do not fit (every missing, unexpected and mis-shaped
    /// tensor listed).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join("config.json");
        let config = AutoencoderKlConfig::from_file(&path)?;
        config
            .load_weights(&dir.join("diffusion_pytorch_model.safetensors"), device)
            .map_err(|e| crate::hf::in_file(&path, e))
    }

    /// The configuration.
    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    /// The latent scale (diffusion runs on `scaling_factor · (z − shift_factor)`).
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// The latent shift of SD3 / Flux VAEs (0 for SD 1.x / 2.x): a pipeline decodes its
    /// latents `x` as `decode(x / scaling_factor + shift_factor)`.
    pub fn shift_factor(&self) -> f64 {
        self.config.shift_factor.unwrap_or(0.0)
    }

    /// Latent channels.
    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    /// Spatial down-sampling factor `2^(blocks − 1)` between image and latent.
    pub fn downsample_factor(&self) -> usize {
        1 << self.config.block_out_channels.len().saturating_sub(1)
    }

    /// The posterior of an image.
    ///
    /// # Shapes
    /// - `x`: `[B, in_channels, H, W]` in `[−1, 1]`, `H`, `W` multiples of
    ///   [`downsample_factor`](Self::downsample_factor); mean / logvar
    ///   `[B, latent_channels, H/f, W/f]`.
    pub fn encode(&self, x: Tensor<4>) -> DiagonalGaussian {
        let h = self.encoder.forward(x);
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(h),
            None => h,
        };
        DiagonalGaussian::from_moments(moments)
    }

    /// The image of an (unscaled) latent.
    ///
    /// # Shapes
    /// - `z`: `[B, latent_channels, h, w]`; output `[B, out_channels, h·f, w·f]` (≈ `[−1, 1]`).
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z,
        };
        self.decoder.forward(z)
    }

    /// The image of a diffusion latent `z`: `decode(z / scaling_factor + shift_factor)`
    /// (unclamped, differentiable), as diffusers' pipelines decode.
    ///
    /// # Shapes
    /// As [`AutoencoderKl::decode`].
    pub fn decode_latents(&self, z: Tensor<4>) -> Tensor<4> {
        self.decode(
            z.div_scalar(self.scaling_factor())
                .add_scalar(self.shift_factor()),
        )
    }

    /// The diffusion latent of an image in `[−1, 1]`: the posterior mean, then
    /// `(mean − shift_factor) · scaling_factor`.
    ///
    /// # Shapes
    /// As [`AutoencoderKl::encode`].
    pub fn encode_latents(&self, x: Tensor<4>) -> Tensor<4> {
        self.encode(x)
            .mean
            .sub_scalar(self.shift_factor())
            .mul_scalar(self.scaling_factor())
    }
}
