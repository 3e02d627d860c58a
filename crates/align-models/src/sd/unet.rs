//! diffusers' `UNet2DConditionModel` as used by Stable Diffusion 1.x / 2.x.
//!
//! ```text
//! temb = linear_2(SiLU(linear_1(sinusoid(t))))          sinusoid width block_out_channels[0]
//! h    = conv_in(x)                                     skips = [h]
//! down block i: layers_per_block × (ResnetBlock2D(h, temb) [→ Transformer2DModel(h, ctx)]),
//!               each output pushed to skips; then a stride-2 conv (not on the last block),
//!               whose output is pushed too
//! mid block:    ResnetBlock2D → Transformer2DModel → ResnetBlock2D
//! up block i:   (layers_per_block + 1) × (h = cat[h, skips.pop()] on channels → ResnetBlock2D
//!               [→ Transformer2DModel]); then nearest ×2 + conv (not on the last block)
//! out  = conv_out(SiLU(conv_norm_out(h)))
//! ```
//!
//! `sinusoid(t)_j` is diffusers' `get_timestep_embedding`: with `half = width / 2` and
//! `ω_i = exp(−ln(10⁴) · i / (half − freq_shift))`, the halves `[sin(t ω), cos(t ω)]`, swapped
//! to `[cos, sin]` when `flip_sin_to_cos`.
//!
//! Cross-attention blocks have `heads` heads of width `channels / heads`, where `heads` is the
//! config's `num_attention_heads` or else — diffusers' naming quirk kept by every SD 1.x / 2.x
//! config — its `attention_head_dim`.
//!
//! Parameter paths equal diffusers' tensor names up to [`UNET_REMAP`], so
//! [`UNet2DCondition::load`] reads a `unet/` directory of a diffusers pipeline directly.

use std::path::Path;

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;
use serde::{Deserialize, Serialize};

use super::blocks::{
    Downsample2D, Downsample2DConfig, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D,
    Upsample2DConfig, conv_same, group_norm,
};
use super::config::{PerBlock, require, require_null};
use super::transformer::{Transformer2DModel, Transformer2DModelConfig};
use crate::error::{ModelError, Result};

/// Remappings from diffusers' UNet tensor names to this module's parameter paths (regex,
/// replacement), as passed to [`crate::hf::load_pytorch_safetensors`].
pub const UNET_REMAP: [(&str, &str); 3] = [
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.ff\.net\.0\.proj\.", ".ff.proj."),
    (r"\.ff\.net\.2\.", ".ff.out."),
];

/// The parameter-path substrings of the UNet's attention projections, the usual LoRA targets
/// (diffusers / PEFT's `to_q`, `to_k`, `to_v`, `to_out.0`), for
/// [`crate::LoraConfig::with_targets`].
pub const UNET_LORA_TARGETS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out"];

fn d_in_channels() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_layers() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn d_one_usize() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn d_downsample_padding() -> usize {
    1
}
fn d_one() -> f64 {
    1.0
}
fn d_silu() -> String {
    "silu".into()
}
fn d_groups() -> usize {
    32
}
fn d_norm_eps() -> f64 {
    1e-5
}
fn d_cross_dim() -> PerBlock<usize> {
    PerBlock::One(1280)
}
fn d_head_dim() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_kernel() -> usize {
    3
}
fn d_only_cross() -> PerBlock<bool> {
    PerBlock::One(false)
}
fn d_down_types() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up_types() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_block_out() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}

/// Configuration of [`UNet2DCondition`]: diffusers' `unet/config.json` (defaults are
/// diffusers' defaults; unknown fields are ignored).
///
/// Only the SD 1.x / 2.x feature set is implemented; [`UNet2DConditionConfig::validate`]
/// refuses every other value of the fields below with a [`ModelError::Config`] naming the
/// field (class / addition embeddings, other block types, `resnet_time_scale_shift`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNet2DConditionConfig {
    /// Latent resolution the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
    /// Input channels.
    #[serde(default = "d_in_channels")]
    pub in_channels: usize,
    /// Output channels.
    #[serde(default = "d_in_channels")]
    pub out_channels: usize,
    /// Whether the input is mapped to `2x − 1` (unsupported: must be false).
    #[serde(default)]
    pub center_input_sample: bool,
    /// `[cos, sin]` (true) or `[sin, cos]` order of the timestep sinusoids.
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    /// diffusers' `downscale_freq_shift` of the timestep sinusoids.
    #[serde(default)]
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per resolution, finest first.
    #[serde(default = "d_down_types")]
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn`.
    #[serde(default = "d_mid_block_type")]
    pub mid_block_type: Option<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D` per resolution, coarsest first.
    #[serde(default = "d_up_types")]
    pub up_block_types: Vec<String>,
    /// Cross-attention only, no self-attention (unsupported: must be false).
    #[serde(default = "d_only_cross")]
    pub only_cross_attention: PerBlock<bool>,
    /// Channels per resolution, finest first.
    #[serde(default = "d_block_out")]
    pub block_out_channels: Vec<usize>,
    /// ResNets per down block (up blocks have one more).
    #[serde(default = "d_layers")]
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the down-sampling convolutions.
    #[serde(default = "d_downsample_padding")]
    pub downsample_padding: usize,
    /// Output scale of the mid block's ResNets.
    #[serde(default = "d_one")]
    pub mid_block_scale_factor: f64,
    /// Dropout (ignored: always 0 here).
    #[serde(default)]
    pub dropout: f64,
    /// Activation (must be `silu`).
    #[serde(default = "d_silu")]
    pub act_fn: String,
    /// GroupNorm groups.
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    /// GroupNorm ε of the ResNets and the output norm.
    #[serde(default = "d_norm_eps")]
    pub norm_eps: f64,
    /// Width of the text tokens.
    #[serde(default = "d_cross_dim")]
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer blocks per attention (`Transformer2DModel`).
    #[serde(default = "d_one_usize")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Must be null.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Must be null.
    #[serde(default)]
    pub encoder_hid_dim: Option<serde_json::Value>,
    /// Must be null.
    #[serde(default)]
    pub encoder_hid_dim_type: Option<serde_json::Value>,
    /// In SD 1.x / 2.x configs: the NUMBER of heads per block (diffusers' naming quirk).
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: PerBlock<usize>,
    /// Number of heads per block; takes precedence over `attention_head_dim` when present.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Must be false.
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Linear (SD 2.x) rather than 1×1-conv (SD 1.x) `proj_in` / `proj_out`.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Must be null.
    #[serde(default)]
    pub class_embed_type: Option<serde_json::Value>,
    /// Must be null.
    #[serde(default)]
    pub addition_embed_type: Option<serde_json::Value>,
    /// Must be null.
    #[serde(default)]
    pub num_class_embeds: Option<serde_json::Value>,
    /// Ignored: attention is computed in f32.
    #[serde(default)]
    pub upcast_attention: bool,
    /// Must be `default`.
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// Must be false.
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    /// Output scale of the down / up blocks' ResNets.
    #[serde(default = "d_one")]
    pub resnet_out_scale_factor: f64,
    /// Must be `positional`.
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    /// Width of the time embedding (default `4 · block_out_channels[0]`).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Must be null.
    #[serde(default)]
    pub time_embedding_act_fn: Option<serde_json::Value>,
    /// Must be null.
    #[serde(default)]
    pub timestep_post_act: Option<serde_json::Value>,
    /// Must be null.
    #[serde(default)]
    pub time_cond_proj_dim: Option<serde_json::Value>,
    /// Kernel of `conv_in` (odd).
    #[serde(default = "d_kernel")]
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out` (odd).
    #[serde(default = "d_kernel")]
    pub conv_out_kernel: usize,
    /// Must be `default`.
    #[serde(default = "d_default")]
    pub attention_type: String,
    /// Must be false.
    #[serde(default)]
    pub class_embeddings_concat: bool,
    /// Must be null or false.
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    /// Must be null.
    #[serde(default)]
    pub cross_attention_norm: Option<serde_json::Value>,
}

/// The resolved per-block layout of a validated config.
struct Layout {
    heads: Vec<usize>,
    layers: Vec<usize>,
    transformer_layers: Vec<usize>,
    cross_dims: Vec<usize>,
    down_attn: Vec<bool>,
    up_attn: Vec<bool>,
    temb_dim: usize,
}

impl UNet2DConditionConfig {
    /// Reads `config.json` of a diffusers UNet.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] if the file is missing or does not parse;
    /// [`ModelError::Config`] naming an unsupported field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = crate::hf::read_config(path)?;
        config.validate().map_err(|e| crate::hf::in_file(path, e))?;
        Ok(config)
    }

    /// Checks that the configuration describes an SD 1.x / 2.x UNet this module implements.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the first unsupported or inconsistent field.
    pub fn validate(&self) -> Result<()> {
        self.layout().map(|_| ())
    }

    fn layout(&self) -> Result<Layout> {
        let n = self.block_out_channels.len();
        require(n > 0, "block_out_channels", || "is empty".into())?;
        // Generous bounds (SDXL's widest block is 1280 channels, its deepest 10 transformer
        // layers), so that a damaged or hostile config.json cannot make `init` build billions
        // of layers or overflow a product before the weights are read.
        const WIDTH: usize = 16_384;
        const COUNT: usize = 64;
        let within =
            |field: &str, values: &[usize], max: usize| match values.iter().find(|&&v| v > max) {
                Some(v) => Err(ModelError::config(field, format!("{v} is above {max}"))),
                None => Ok(()),
            };
        within("block_out_channels (blocks)", &[n], 8)?;
        within("block_out_channels", &self.block_out_channels, WIDTH)?;
        within("in_channels", &[self.in_channels], COUNT)?;
        within("out_channels", &[self.out_channels], COUNT)?;
        within("norm_num_groups", &[self.norm_num_groups], WIDTH)?;
        within(
            "layers_per_block",
            &self.layers_per_block.per_block(n, "layers_per_block")?,
            COUNT,
        )?;
        within(
            "transformer_layers_per_block",
            &self
                .transformer_layers_per_block
                .per_block(n, "transformer_layers_per_block")?,
            COUNT,
        )?;
        within(
            "cross_attention_dim",
            &self
                .cross_attention_dim
                .per_block(n, "cross_attention_dim")?,
            WIDTH,
        )?;
        within(
            "attention_head_dim",
            &self.attention_head_dim.per_block(n, "attention_head_dim")?,
            WIDTH,
        )?;
        if let Some(h) = &self.num_attention_heads {
            within(
                "num_attention_heads",
                &h.per_block(n, "num_attention_heads")?,
                WIDTH,
            )?;
        }
        require(self.down_block_types.len() == n, "down_block_types", || {
            format!("has {} entries for {n} blocks", self.down_block_types.len())
        })?;
        require(self.up_block_types.len() == n, "up_block_types", || {
            format!("has {} entries for {n} blocks", self.up_block_types.len())
        })?;
        let down_attn = self
            .down_block_types
            .iter()
            .map(|t| match t.as_str() {
                "CrossAttnDownBlock2D" => Ok(true),
                "DownBlock2D" => Ok(false),
                other => Err(ModelError::config(
                    "down_block_types",
                    format!("`{other}` is not supported (CrossAttnDownBlock2D, DownBlock2D)"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let up_attn = self
            .up_block_types
            .iter()
            .map(|t| match t.as_str() {
                "CrossAttnUpBlock2D" => Ok(true),
                "UpBlock2D" => Ok(false),
                other => Err(ModelError::config(
                    "up_block_types",
                    format!("`{other}` is not supported (CrossAttnUpBlock2D, UpBlock2D)"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        require(
            self.mid_block_type.as_deref() == Some("UNetMidBlock2DCrossAttn"),
            "mid_block_type",
            || {
                format!(
                    "{:?} is not supported (UNetMidBlock2DCrossAttn)",
                    self.mid_block_type
                )
            },
        )?;
        require(!self.center_input_sample, "center_input_sample", || {
            "true is not supported".into()
        })?;
        require(
            self.only_cross_attention
                .per_block(n, "only_cross_attention")?
                .iter()
                .all(|v| !v),
            "only_cross_attention",
            || "true is not supported".into(),
        )?;
        require(!self.dual_cross_attention, "dual_cross_attention", || {
            "true is not supported".into()
        })?;
        require(self.act_fn == "silu", "act_fn", || {
            format!("`{}` is not supported (silu)", self.act_fn)
        })?;
        require(
            self.resnet_time_scale_shift == "default",
            "resnet_time_scale_shift",
            || {
                format!(
                    "`{}` is not supported (default)",
                    self.resnet_time_scale_shift
                )
            },
        )?;
        require(!self.resnet_skip_time_act, "resnet_skip_time_act", || {
            "true is not supported".into()
        })?;
        require(
            self.time_embedding_type == "positional",
            "time_embedding_type",
            || {
                format!(
                    "`{}` is not supported (positional)",
                    self.time_embedding_type
                )
            },
        )?;
        require(self.attention_type == "default", "attention_type", || {
            format!("`{}` is not supported (default)", self.attention_type)
        })?;
        require(
            !self.class_embeddings_concat,
            "class_embeddings_concat",
            || "true is not supported".into(),
        )?;
        require(
            self.mid_block_only_cross_attention != Some(true),
            "mid_block_only_cross_attention",
            || "true is not supported".into(),
        )?;
        for (value, field) in [
            (&self.class_embed_type, "class_embed_type"),
            (&self.addition_embed_type, "addition_embed_type"),
            (&self.num_class_embeds, "num_class_embeds"),
            (&self.encoder_hid_dim, "encoder_hid_dim"),
            (&self.encoder_hid_dim_type, "encoder_hid_dim_type"),
            (&self.time_embedding_act_fn, "time_embedding_act_fn"),
            (&self.timestep_post_act, "timestep_post_act"),
            (&self.time_cond_proj_dim, "time_cond_proj_dim"),
            (&self.cross_attention_norm, "cross_attention_norm"),
            (
                &self.reverse_transformer_layers_per_block,
                "reverse_transformer_layers_per_block",
            ),
        ] {
            require_null(value, field)?;
        }
        for (k, field) in [
            (self.conv_in_kernel, "conv_in_kernel"),
            (self.conv_out_kernel, "conv_out_kernel"),
        ] {
            require(k % 2 == 1, field, || format!("{k} must be odd"))?;
        }
        let heads = match &self.num_attention_heads {
            Some(h) => h.per_block(n, "num_attention_heads")?,
            None => self.attention_head_dim.per_block(n, "attention_head_dim")?,
        };
        let heads_field = if self.num_attention_heads.is_some() {
            "num_attention_heads"
        } else {
            "attention_head_dim"
        };
        let g = self.norm_num_groups;
        for (&c, &h) in self.block_out_channels.iter().zip(&heads) {
            require(g > 0 && c.is_multiple_of(g), "norm_num_groups", || {
                format!("{g} does not divide block width {c}")
            })?;
            require(h > 0 && c.is_multiple_of(h), heads_field, || {
                format!("{h} heads do not divide block width {c}")
            })?;
        }
        let c0 = self.block_out_channels[0];
        require(
            c0 >= 2 && c0.is_multiple_of(2),
            "block_out_channels",
            || format!("the first width {c0} must be even (timestep sinusoid width)"),
        )?;
        let layers = self.layers_per_block.per_block(n, "layers_per_block")?;
        require(layers.iter().all(|&l| l > 0), "layers_per_block", || {
            "must be positive".into()
        })?;
        Ok(Layout {
            heads,
            layers,
            transformer_layers: self
                .transformer_layers_per_block
                .per_block(n, "transformer_layers_per_block")?,
            cross_dims: self
                .cross_attention_dim
                .per_block(n, "cross_attention_dim")?,
            down_attn,
            up_attn,
            temb_dim: self.time_embedding_dim.unwrap_or(4 * c0),
        })
    }

    /// Initialises the module with random weights (load real ones with
    /// [`UNet2DCondition::load`]).
    ///
    /// # Errors
    /// An invalid configuration (see [`UNet2DConditionConfig::validate`]).
    pub fn init(&self, device: &Device) -> Result<UNet2DCondition> {
        let l = self.layout()?;
        let n = self.block_out_channels.len();
        let ch = &self.block_out_channels;
        let groups = self.norm_num_groups;
        let resnet = |i: usize, o: usize, scale: f64| {
            ResnetBlock2DConfig::new(i, o)
                .with_temb_channels(Some(l.temb_dim))
                .with_groups(groups)
                .with_eps(self.norm_eps)
                .with_output_scale_factor(scale)
                .init(device)
        };
        let transformer = |c: usize, b: usize| {
            Transformer2DModelConfig::new(c, l.heads[b], l.cross_dims[b])
                .with_layers(l.transformer_layers[b])
                .with_norm_groups(groups)
                .with_use_linear_projection(self.use_linear_projection)
                .init(device)
        };
        let rs = self.resnet_out_scale_factor;

        let mut down_blocks = Vec::with_capacity(n);
        let mut out = ch[0];
        for (b, &c) in ch.iter().enumerate() {
            let input = out;
            out = c;
            let resnets = (0..l.layers[b])
                .map(|j| resnet(if j == 0 { input } else { out }, out, rs))
                .collect();
            let attentions = if l.down_attn[b] {
                (0..l.layers[b]).map(|_| transformer(out, b)).collect()
            } else {
                Vec::new()
            };
            let downsamplers = if b + 1 < n {
                vec![
                    Downsample2DConfig::new(out)
                        .with_padding(self.downsample_padding)
                        .init(device),
                ]
            } else {
                Vec::new()
            };
            down_blocks.push(SdBlock2D {
                resnets,
                attentions,
                downsamplers,
                upsamplers: Vec::new(),
            });
        }

        let last = ch[n - 1];
        let ms = self.mid_block_scale_factor;
        let mid_block = SdMidBlock2D {
            resnets: vec![resnet(last, last, ms), resnet(last, last, ms)],
            attentions: vec![transformer(last, n - 1)],
        };

        let mut up_blocks = Vec::with_capacity(n);
        let mut prev = last;
        for i in 0..n {
            let b = n - 1 - i; // the matching down block
            let out = ch[b];
            let input = ch[b.saturating_sub(1)];
            let layers = l.layers[b] + 1;
            let resnets = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { input } else { out };
                    let res_in = if j == 0 { prev } else { out };
                    resnet(res_in + skip, out, rs)
                })
                .collect();
            let attentions = if l.up_attn[i] {
                (0..layers).map(|_| transformer(out, b)).collect()
            } else {
                Vec::new()
            };
            let upsamplers = if i + 1 < n {
                vec![Upsample2DConfig::new(out).init(device)]
            } else {
                Vec::new()
            };
            up_blocks.push(SdBlock2D {
                resnets,
                attentions,
                downsamplers: Vec::new(),
                upsamplers,
            });
            prev = out;
        }

        Ok(UNet2DCondition {
            conv_in: conv_same(self.in_channels, ch[0], self.conv_in_kernel, device),
            time_embedding: TimestepEmbedding {
                linear_1: LinearConfig::new(ch[0], l.temb_dim).init(device),
                linear_2: LinearConfig::new(l.temb_dim, l.temb_dim).init(device),
            },
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(groups, ch[0], self.norm_eps, device),
            conv_out: conv_same(ch[0], self.out_channels, self.conv_out_kernel, device),
            config: self.clone(),
        })
    }
}

/// diffusers' `get_timestep_embedding` (`scale = 1`, `max_period = 10000`), with the
/// frequencies computed in f32 the way PyTorch does.
///
/// # Shapes
/// - `t`: `[B]`; output `[B, dim]` (an odd `dim` gets a trailing zero column).
pub fn get_timestep_embedding(
    t: Tensor<1>,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
) -> Tensor<2> {
    let half = dim / 2;
    let device = t.device();
    let ln = -(10000f64.ln() as f32);
    let denom = half as f32 - downscale_freq_shift as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((ln * i as f32) / denom).exp()).collect();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &device);
    let b = t.dims()[0];
    let args = t.reshape([b, 1]) * freqs.reshape([1, half]);
    let (sin, cos) = (args.clone().sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if dim % 2 == 1 {
        Tensor::cat(vec![emb, Tensor::zeros([b, 1], &device)], 1)
    } else {
        emb
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(SiLU(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// `[block_out_channels[0] → temb]`.
    pub linear_1: Linear,
    /// `[temb → temb]`.
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// # Shapes
    /// - `x`: `[B, d]` sinusoids; output `[B, temb]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// A down or up block of the UNet: diffusers' `CrossAttnDownBlock2D` / `DownBlock2D` /
/// `CrossAttnUpBlock2D` / `UpBlock2D` (the plain ones have no `attentions`).
#[derive(Module, Debug)]
pub struct SdBlock2D {
    /// The ResNets.
    pub resnets: Vec<ResnetBlock2D>,
    /// One transformer after each ResNet (cross-attention blocks) or none.
    pub attentions: Vec<Transformer2DModel>,
    /// The down-sampling convolution (down blocks except the last).
    pub downsamplers: Vec<Downsample2D>,
    /// The up-sampling (up blocks except the last).
    pub upsamplers: Vec<Upsample2D>,
}

impl SdBlock2D {
    fn layer(&self, j: usize, h: Tensor<4>, temb: &Tensor<2>, ctx: &Tensor<3>) -> Tensor<4> {
        let mut h = h;
        if let Some(r) = self.resnets.get(j) {
            h = r.forward(h, Some(temb.clone()));
        }
        if let Some(a) = self.attentions.get(j) {
            h = a.forward(h, ctx.clone());
        }
        h
    }
}

/// diffusers' `UNetMidBlock2DCrossAttn`: ResNet → transformer → ResNet.
#[derive(Module, Debug)]
pub struct SdMidBlock2D {
    /// The two ResNets.
    pub resnets: Vec<ResnetBlock2D>,
    /// The transformer between them.
    pub attentions: Vec<Transformer2DModel>,
}

/// diffusers' `UNet2DConditionModel` (SD 1.x / 2.x), the ε- or v-predicting denoiser of
/// Stable Diffusion. See the [module documentation](self) for the computation.
#[derive(Module, Debug)]
pub struct UNet2DCondition {
    /// Stem convolution.
    pub conv_in: Conv2d,
    /// Timestep MLP.
    pub time_embedding: TimestepEmbedding,
    /// Down path, finest first.
    pub down_blocks: Vec<SdBlock2D>,
    /// Middle block.
    pub mid_block: SdMidBlock2D,
    /// Up path, coarsest first.
    pub up_blocks: Vec<SdBlock2D>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm,
    /// Output convolution.
    pub conv_out: Conv2d,
    #[module(skip)]
    config: UNet2DConditionConfig,
}

impl UNet2DCondition {
    /// Loads a diffusers UNet directory: `dir/config.json` and
    /// `dir/diffusion_pytorch_model.safetensors`.
    ///
    /// # Errors
    /// [`ModelError::Config`] for an unsupported config; [`ModelError::Checkpoint`] for a
    /// missing file or one whose tensors do not fit (every missing, unexpected and mis-shaped
    /// tensor listed).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join("config.json");
        let config = UNet2DConditionConfig::from_file(&path)?;
        config
            .load_weights(&dir.join("diffusion_pytorch_model.safetensors"), device)
            .map_err(|e| crate::hf::in_file(&path, e))
    }

    /// The configuration.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// Input (latent) channels.
    pub fn in_channels(&self) -> usize {
        self.config.in_channels
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.config.out_channels
    }

    /// Width of the context tokens (of the first cross-attention block).
    pub fn cross_attention_dim(&self) -> usize {
        match &self.config.cross_attention_dim {
            PerBlock::One(d) => *d,
            PerBlock::Many(v) => v.first().copied().unwrap_or(0),
        }
    }

    /// Total down-sampling factor `2^(blocks − 1)`: `h`, `w` must be multiples of it.
    pub fn downsample_factor(&self) -> usize {
        1 << self.config.block_out_channels.len().saturating_sub(1)
    }

    /// The model output (ε or v, as trained).
    ///
    /// # Shapes
    /// - `sample`: `[B, in_channels, h, w]`, `h`, `w` multiples of
    ///   [`downsample_factor`](Self::downsample_factor);
    /// - `timesteps`: `[B]` float DDPM timesteps (0..1000);
    /// - `encoder_hidden_states`: `[B, L, cross_attention_dim]`;
    /// - output: `[B, out_channels, h, w]`.
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timesteps: Tensor<1>,
        encoder_hidden_states: Tensor<3>,
    ) -> Tensor<4> {
        let c = &self.config;
        let t_emb = get_timestep_embedding(
            timesteps,
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift,
        );
        let temb = self.time_embedding.forward(t_emb);
        let ctx = encoder_hidden_states;

        let mut h = self.conv_in.forward(sample);
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            for j in 0..block.resnets.len() {
                h = block.layer(j, h, &temb, &ctx);
                skips.push(h.clone());
            }
            for down in &block.downsamplers {
                h = down.forward(h);
                skips.push(h.clone());
            }
        }

        for (j, resnet) in self.mid_block.resnets.iter().enumerate() {
            if j > 0
                && let Some(attn) = self.mid_block.attentions.get(j - 1)
            {
                h = attn.forward(h, ctx.clone());
            }
            h = resnet.forward(h, Some(temb.clone()));
        }

        for block in &self.up_blocks {
            for j in 0..block.resnets.len() {
                // One skip per up ResNet by construction, so the list cannot run dry.
                if let Some(skip) = skips.pop() {
                    h = Tensor::cat(vec![h, skip], 1);
                }
                h = block.layer(j, h, &temb, &ctx);
            }
            for up in &block.upsamplers {
                h = up.forward(h);
            }
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(h)))
    }
}

impl UNet2DConditionConfig {
    /// Initialises the model and loads a diffusers UNet safetensors file into it.
    ///
    /// # Errors
    /// As [`UNet2DCondition::load`].
    pub fn load_weights(&self, path: &Path, device: &Device) -> Result<UNet2DCondition> {
        let model = self.init(device)?;
        crate::hf::load_pytorch_safetensors(model, path, &UNET_REMAP, &[])
    }
}

/// The inverse of [`UNET_REMAP`]: burn's names back to diffusers' on save.
pub const UNET_REMAP_SAVE: [(&str, &str); 3] = [
    (r"\.to_out\.(weight|bias)$", ".to_out.0.$1"),
    (r"\.ff\.proj\.(weight|bias)$", ".ff.net.0.proj.$1"),
    (r"\.ff\.out\.(weight|bias)$", ".ff.net.2.$1"),
];

impl UNet2DCondition {
    /// Writes the weights as diffusers' `diffusion_pytorch_model.safetensors` (PyTorch layout
    /// and names, `dtype` precision), atomically. LoRA adapters must be merged first
    /// ([`Module::materialize`]); the file then loads with `UNet2DConditionModel.from_pretrained`
    /// beside the original `config.json`.
    ///
    /// # Errors
    /// [`ModelError::Config`] if the model still carries adapters;
    /// [`crate::ModelError::Checkpoint`] if the file cannot be written.
    pub fn save_weights(&self, path: &Path, dtype: crate::WeightDtype) -> Result<()> {
        crate::hf::save_pytorch_safetensors(self, path, dtype, &UNET_REMAP_SAVE)
    }
}
