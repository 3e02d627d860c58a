//! Stable Diffusion 3 / 3.5's multimodal diffusion transformer (MMDiT), laid out as diffusers'
//! `SD3Transformer2DModel`, so that its burn parameter paths are the `transformer/` checkpoint's
//! tensor names up to [`MMDIT_REMAP`] (`to_out.0 → to_out`, `net.0.proj → proj`, `net.2 → out`).
//!
//! ```text
//! patches:   x = Conv_p×p(latent) as tokens [B, N, D] + crop(pos_embed)     (PatchEmbed)
//! cond:      c = MLP(sinusoids₂₅₆(t)) + MLP(pooled text)                    (temb, [B, D])
//! context:   y = W_ctx · text tokens                                         ([B, L, D])
//! block i:   (m₁…m₆) = Linear(SiLU(c)) chunks: shift, scale, gate (attention), shift, scale,
//!            gate (MLP) — for the image stream, and the same for the context stream;
//!            x̂ = LN(x)(1 + scale) + shift, ŷ likewise;
//!            [a_x, a_y] = Attention over the concatenated tokens [x̂ W_qkv ; ŷ W'_qkv]
//!            (image tokens first), with RMS-normalised q and k per head when `qk_norm`;
//!            x += gate · W_out a_x;  y += gate' · W'_out a_y;
//!            (SD3.5 dual attention: x += gate₂ · SelfAttn(LN(x)(1 + scale₂) + shift₂), from
//!            the same normalised input and three more modulation chunks);
//!            x += gate · FF(LN(x)(1 + scale) + shift);  y likewise
//!            (the last block is "context pre-only": it updates x alone, from a continuous
//!            adaLN of y with (scale, shift) chunks);
//! out:       (scale, shift) = Linear(SiLU(c));  Linear(LN(x)(1 + scale) + shift) unpatched to
//!            [B, C, H, W]
//! ```
//!
//! LayerNorms have no affine parameters and ε = 1e-6; FF = Linear(D, 4D) → tanh-GELU →
//! Linear(4D, D).

use std::path::Path;

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::sd::config::require;
use crate::sd::get_timestep_embedding;

/// Regex remappings from a diffusers `transformer/` checkpoint's tensor names to the paths of
/// [`MmDit`].
pub const MMDIT_REMAP: [(&str, &str); 3] = [
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.net\.0\.proj\.", ".proj."),
    (r"\.net\.2\.", ".out."),
];

/// The inverse of [`MMDIT_REMAP`]: burn's names back to diffusers' on save.
pub const MMDIT_REMAP_SAVE: [(&str, &str); 3] = [
    (r"\.to_out\.(weight|bias)$", ".to_out.0.$1"),
    (
        r"\.(ff|ff_context)\.proj\.(weight|bias)$",
        ".$1.net.0.proj.$2",
    ),
    (r"\.(ff|ff_context)\.out\.(weight|bias)$", ".$1.net.2.$2"),
];

/// Layer-norm ε of every norm in the model.
const EPS: f64 = 1e-6;

fn d_patch() -> usize {
    2
}
fn d_channels() -> usize {
    16
}

/// diffusers' `transformer/config.json` of `SD3Transformer2DModel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmDitConfig {
    /// Latent side the model was trained at (informational).
    pub sample_size: usize,
    /// Patch side `p`.
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// Latent channels in.
    #[serde(default = "d_channels")]
    pub in_channels: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Width of one head.
    pub attention_head_dim: usize,
    /// Heads (model width `D` = heads × head width).
    pub num_attention_heads: usize,
    /// Width of the text tokens.
    pub joint_attention_dim: usize,
    /// Width the text tokens are projected to (must equal `D`).
    pub caption_projection_dim: usize,
    /// Width of the pooled text embedding.
    pub pooled_projection_dim: usize,
    /// Latent channels out.
    #[serde(default = "d_channels")]
    pub out_channels: usize,
    /// Side of the positional-embedding table (in patches).
    pub pos_embed_max_size: usize,
    /// Blocks with the SD3.5 second (self-)attention.
    #[serde(default)]
    pub dual_attention_layers: Vec<usize>,
    /// `"rms_norm"` (SD3.5) or `null`.
    #[serde(default)]
    pub qk_norm: Option<String>,
}

impl MmDitConfig {
    /// Reads `config.json`.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] naming the file if it is missing or does not parse.
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::hf::read_config(path)
    }

    /// Model width `D`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Checks what the model supports, naming the field.
    ///
    /// # Errors
    /// [`ModelError::Config`] for zero sizes, a caption width other than `D`, an unknown
    /// `qk_norm`, or a dual-attention layer index out of range.
    pub fn validate(&self) -> Result<()> {
        use crate::hf::{MAX_COUNT, MAX_WIDTH};
        let deepest = self
            .dual_attention_layers
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        crate::hf::check_sizes(&[
            ("sample_size", self.sample_size, MAX_WIDTH),
            ("patch_size", self.patch_size, MAX_WIDTH),
            ("in_channels", self.in_channels, MAX_COUNT),
            ("out_channels", self.out_channels, MAX_COUNT),
            ("num_layers", self.num_layers, MAX_COUNT),
            ("attention_head_dim", self.attention_head_dim, MAX_WIDTH),
            ("num_attention_heads", self.num_attention_heads, MAX_COUNT),
            ("joint_attention_dim", self.joint_attention_dim, MAX_WIDTH),
            (
                "caption_projection_dim",
                self.caption_projection_dim,
                MAX_WIDTH,
            ),
            (
                "pooled_projection_dim",
                self.pooled_projection_dim,
                MAX_WIDTH,
            ),
            ("pos_embed_max_size", self.pos_embed_max_size, MAX_WIDTH),
            ("dual_attention_layers", deepest, MAX_COUNT),
        ])?;
        for (v, f) in [
            (self.patch_size, "patch_size"),
            (self.in_channels, "in_channels"),
            (self.num_layers, "num_layers"),
            (self.attention_head_dim, "attention_head_dim"),
            (self.num_attention_heads, "num_attention_heads"),
            (self.joint_attention_dim, "joint_attention_dim"),
            (self.pooled_projection_dim, "pooled_projection_dim"),
            (self.out_channels, "out_channels"),
            (self.pos_embed_max_size, "pos_embed_max_size"),
        ] {
            require(v > 0, f, || "must be positive".into())?;
        }
        require(
            self.caption_projection_dim == self.inner_dim(),
            "caption_projection_dim",
            || {
                format!(
                    "{} must equal num_attention_heads × attention_head_dim = {}",
                    self.caption_projection_dim,
                    self.inner_dim()
                )
            },
        )?;
        require(
            matches!(self.qk_norm.as_deref(), None | Some("rms_norm")),
            "qk_norm",
            || format!("{:?} is not supported (null or \"rms_norm\")", self.qk_norm),
        )?;
        require(
            self.dual_attention_layers
                .iter()
                .all(|&i| i < self.num_layers),
            "dual_attention_layers",
            || format!("indices must be < num_layers = {}", self.num_layers),
        )
    }

    /// Initialises the model.
    ///
    /// # Errors
    /// As [`MmDitConfig::validate`].
    pub fn init(&self, device: &Device) -> Result<MmDit> {
        self.validate()?;
        let d = self.inner_dim();
        let lin = |i: usize, o: usize| LinearConfig::new(i, o).init(device);
        let p = self.patch_size;
        let table = self.pos_embed_max_size * self.pos_embed_max_size;
        let qk = self.qk_norm.is_some();
        let heads = self.num_attention_heads;
        let hd = self.attention_head_dim;
        let blocks = (0..self.num_layers)
            .map(|i| {
                let last = i + 1 == self.num_layers;
                let dual = self.dual_attention_layers.contains(&i);
                JointBlock {
                    norm1: AdaNorm {
                        linear: lin(d, if dual { 9 } else { 6 } * d),
                    },
                    norm1_context: AdaNorm {
                        linear: lin(d, if last { 2 } else { 6 } * d),
                    },
                    attn: JointAttention::new(d, heads, hd, true, !last, qk, device),
                    attn2: dual
                        .then(|| JointAttention::new(d, heads, hd, false, false, qk, device)),
                    ff: TanhFeedForward {
                        proj: lin(d, 4 * d),
                        out: lin(4 * d, d),
                    },
                    ff_context: (!last).then(|| TanhFeedForward {
                        proj: lin(d, 4 * d),
                        out: lin(4 * d, d),
                    }),
                }
            })
            .collect();
        Ok(MmDit {
            pos_embed: PatchEmbed {
                proj: Conv2dConfig::new([self.in_channels, d], [p, p])
                    .with_stride([p, p])
                    .init(device),
                // Lazy, like every parameter: a full-size model can be built and counted
                // without allocating it.
                pos_embed: Initializer::Zeros
                    .init([1, table, d], device)
                    .set_require_grad(false),
            },
            time_text_embed: TimeTextEmbed {
                timestep_embedder: TwoLayer {
                    linear_1: lin(256, d),
                    linear_2: lin(d, d),
                },
                text_embedder: TwoLayer {
                    linear_1: lin(self.pooled_projection_dim, d),
                    linear_2: lin(d, d),
                },
            },
            context_embedder: lin(self.joint_attention_dim, self.caption_projection_dim),
            transformer_blocks: blocks,
            norm_out: AdaNorm {
                linear: lin(d, 2 * d),
            },
            proj_out: lin(d, p * p * self.out_channels),
            config: self.clone(),
        })
    }

    /// Initialises the model and loads a diffusers `transformer` safetensors file into it.
    ///
    /// # Errors
    /// As [`MmDitConfig::init`], and the file's missing, unknown or mis-shaped tensors.
    pub fn load_weights(&self, path: &Path, device: &Device) -> Result<MmDit> {
        let model = self.init(device)?;
        crate::hf::load_pytorch_safetensors(model, path, &MMDIT_REMAP, &[])
    }
}

/// `LayerNorm` without affine parameters over the last dimension.
fn layer_norm(x: Tensor<3>) -> Tensor<3> {
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let var = centred.clone().square().mean_dim(2);
    centred / var.add_scalar(EPS).sqrt()
}

/// `x · (1 + scale) + shift` with per-sample `[B, D]` modulations.
fn modulate(x: Tensor<3>, shift: &Tensor<2>, scale: &Tensor<2>) -> Tensor<3> {
    x * scale.clone().add_scalar(1.0).unsqueeze_dim(1) + shift.clone().unsqueeze_dim(1)
}

/// RMS normalisation with a learned scale (diffusers' `RMSNorm`, ε 1e-6).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Per-channel scale.
    pub weight: Param<Tensor<1>>,
}

impl RmsNorm {
    /// # Shapes
    /// - `x`: `[..., d]` (rank 4 here: `[B, heads, N, d]`); output the same.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let rms = x.clone().square().mean_dim(3).add_scalar(EPS).sqrt();
        (x / rms) * self.weight.val().unsqueeze::<4>()
    }
}

/// The adaLN projection of a block or of the output: `Linear(SiLU(c))`, chunked by the caller.
#[derive(Module, Debug)]
pub struct AdaNorm {
    /// `[D → k·D]`.
    pub linear: Linear,
}

impl AdaNorm {
    /// The `k` modulation vectors `[B, D]` of condition `c` `[B, D]`, in chunk order.
    pub fn chunks(&self, c: &Tensor<2>) -> Vec<Tensor<2>> {
        let m = self.linear.forward(silu(c.clone()));
        let d = c.dims()[1];
        let k = m.dims()[1] / d;
        (0..k).map(|i| m.clone().narrow(1, i * d, d)).collect()
    }
}

/// diffusers' `FeedForward(activation_fn = "gelu-approximate")`.
#[derive(Module, Debug)]
pub struct TanhFeedForward {
    /// `[D → 4D]` (diffusers' `net.0.proj`).
    pub proj: Linear,
    /// `[4D → D]` (diffusers' `net.2`).
    pub out: Linear,
}

/// GELU with the tanh approximation: `½x(1 + tanh(√(2/π)(x + 0.044715x³)))` (PyTorch's
/// `gelu(approximate="tanh")`, transformers' `gelu_new`).
pub(crate) fn gelu_tanh(x: Tensor<3>) -> Tensor<3> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
    x.clone().mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

impl TanhFeedForward {
    /// # Shapes
    /// - `x`: `[B, N, D]`; output `[B, N, D]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.out.forward(gelu_tanh(self.proj.forward(x)))
    }
}

/// diffusers' `Attention` with `JointAttnProcessor2_0`: image projections, optional context
/// projections (`add_*_proj`, `to_add_out`) and optional per-head RMS norms of q and k.
#[derive(Module, Debug)]
pub struct JointAttention {
    /// Image queries.
    pub to_q: Linear,
    /// Image keys.
    pub to_k: Linear,
    /// Image values.
    pub to_v: Linear,
    /// Image output (diffusers' `to_out.0`).
    pub to_out: Linear,
    /// Context queries.
    pub add_q_proj: Option<Linear>,
    /// Context keys.
    pub add_k_proj: Option<Linear>,
    /// Context values.
    pub add_v_proj: Option<Linear>,
    /// Context output (absent in the context-pre-only last block).
    pub to_add_out: Option<Linear>,
    /// RMS norm of the image queries.
    pub norm_q: Option<RmsNorm>,
    /// RMS norm of the image keys.
    pub norm_k: Option<RmsNorm>,
    /// RMS norm of the context queries.
    pub norm_added_q: Option<RmsNorm>,
    /// RMS norm of the context keys.
    pub norm_added_k: Option<RmsNorm>,
    heads: usize,
}

impl JointAttention {
    fn new(
        d: usize,
        heads: usize,
        head_dim: usize,
        context: bool,
        context_out: bool,
        qk_norm: bool,
        device: &Device,
    ) -> Self {
        let lin = || LinearConfig::new(d, heads * head_dim).init(device);
        let out = || LinearConfig::new(heads * head_dim, d).init(device);
        let norm = || {
            qk_norm.then(|| RmsNorm {
                weight: Initializer::Ones.init([head_dim], device),
            })
        };
        Self {
            to_q: lin(),
            to_k: lin(),
            to_v: lin(),
            to_out: out(),
            add_q_proj: context.then(lin),
            add_k_proj: context.then(lin),
            add_v_proj: context.then(lin),
            to_add_out: (context && context_out).then(out),
            norm_q: norm(),
            norm_k: norm(),
            norm_added_q: if context { norm() } else { None },
            norm_added_k: if context { norm() } else { None },
            heads,
        }
    }

    /// `[B, N, H·d]` → `[B, H, N, d]`.
    fn split(&self, t: Tensor<3>) -> Tensor<4> {
        let [b, n, inner] = t.dims();
        t.reshape([b, n, self.heads, inner / self.heads])
            .swap_dims(1, 2)
    }

    fn norm(norm: &Option<RmsNorm>, t: Tensor<4>) -> Tensor<4> {
        match norm {
            Some(n) => n.forward(t),
            None => t,
        }
    }

    /// Attention over the image tokens `x` and, when given, the context tokens `y` jointly
    /// (image tokens first). Returns the image output and the context output (`None` without
    /// context, or in the context-pre-only block, whose context output is discarded).
    ///
    /// # Shapes
    /// - `x`: `[B, N, D]`, `y`: `[B, L, D]`; outputs `[B, N, D]`, `[B, L, D]`.
    pub fn forward(&self, x: Tensor<3>, y: Option<Tensor<3>>) -> (Tensor<3>, Option<Tensor<3>>) {
        let [b, n, _] = x.dims();
        let mut q = Self::norm(&self.norm_q, self.split(self.to_q.forward(x.clone())));
        let mut k = Self::norm(&self.norm_k, self.split(self.to_k.forward(x.clone())));
        let mut v = self.split(self.to_v.forward(x));
        if let (Some(y), Some(aq), Some(ak), Some(av)) =
            (y, &self.add_q_proj, &self.add_k_proj, &self.add_v_proj)
        {
            let yq = Self::norm(&self.norm_added_q, self.split(aq.forward(y.clone())));
            let yk = Self::norm(&self.norm_added_k, self.split(ak.forward(y.clone())));
            let yv = self.split(av.forward(y));
            q = Tensor::cat(vec![q, yq], 2);
            k = Tensor::cat(vec![k, yk], 2);
            v = Tensor::cat(vec![v, yv], 2);
        }
        let [_, h, total, d] = q.dims();
        let out = crate::fused_attention::attention_core(q, k, v, None)
            .swap_dims(1, 2)
            .reshape([b, total, h * d]);
        let image = self.to_out.forward(out.clone().narrow(1, 0, n));
        let context = self
            .to_add_out
            .as_ref()
            .filter(|_| total > n)
            .map(|o| o.forward(out.narrow(1, n, total - n)));
        (image, context)
    }
}

/// diffusers' `JointTransformerBlock`.
#[derive(Module, Debug)]
pub struct JointBlock {
    /// Image adaLN-Zero (6 chunks, 9 with dual attention).
    pub norm1: AdaNorm,
    /// Context adaLN-Zero (6 chunks) or, in the last block, continuous adaLN (2 chunks).
    pub norm1_context: AdaNorm,
    /// Joint attention.
    pub attn: JointAttention,
    /// SD3.5's second self-attention of the image tokens.
    pub attn2: Option<JointAttention>,
    /// Image feed-forward.
    pub ff: TanhFeedForward,
    /// Context feed-forward (absent in the last block).
    pub ff_context: Option<TanhFeedForward>,
}

impl JointBlock {
    /// # Shapes
    /// - `x`: `[B, N, D]`, `y`: `[B, L, D]`, `c`: `[B, D]`; outputs `[B, N, D]` and, except in
    ///   the last block, `[B, L, D]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        y: Tensor<3>,
        c: &Tensor<2>,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        let m = self.norm1.chunks(c);
        let normed = layer_norm(x.clone());
        let x_hat = modulate(normed.clone(), &m[0], &m[1]);
        let cm = self.norm1_context.chunks(c);
        let pre_only = self.ff_context.is_none();
        let y_hat = if pre_only {
            // Continuous adaLN: (scale, shift).
            modulate(layer_norm(y.clone()), &cm[1], &cm[0])
        } else {
            modulate(layer_norm(y.clone()), &cm[0], &cm[1])
        };
        let (a_x, a_y) = self.attn.forward(x_hat, Some(y_hat));
        let gate = |g: &Tensor<2>| g.clone().unsqueeze_dim::<3>(1);
        let mut x = x + gate(&m[2]) * a_x;
        if let Some(attn2) = &self.attn2 {
            let x2 = modulate(normed, &m[6], &m[7]);
            let (a2, _) = attn2.forward(x2, None);
            x = x + gate(&m[8]) * a2;
        }
        let x = x.clone() + gate(&m[5]) * self.ff.forward(modulate(layer_norm(x), &m[3], &m[4]));
        let y = match (&self.ff_context, a_y) {
            (Some(ff), Some(a_y)) => {
                let y = y + gate(&cm[2]) * a_y;
                Some(y.clone() + gate(&cm[5]) * ff.forward(modulate(layer_norm(y), &cm[3], &cm[4])))
            }
            _ => None,
        };
        (x, y)
    }
}

/// diffusers' `PatchEmbed` with a cropped sinusoidal position table.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    /// `p×p` convolution with stride `p`: latent channels → `D`.
    pub proj: Conv2d,
    /// The position table `[1, max², D]` (a buffer in diffusers, saved in the checkpoint).
    pub pos_embed: Param<Tensor<3>>,
}

/// `MLP₂(x) = linear_2(SiLU(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TwoLayer {
    /// First layer.
    pub linear_1: Linear,
    /// Second layer.
    pub linear_2: Linear,
}

impl TwoLayer {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// diffusers' `CombinedTimestepTextProjEmbeddings`.
#[derive(Module, Debug)]
pub struct TimeTextEmbed {
    /// On 256 sinusoids of the timestep (cos first, shift 0).
    pub timestep_embedder: TwoLayer,
    /// On the pooled text embedding.
    pub text_embedder: TwoLayer,
}

/// The SD3 / SD3.5 MMDiT (diffusers' `SD3Transformer2DModel`).
#[derive(Module, Debug)]
pub struct MmDit {
    /// Patches and positions.
    pub pos_embed: PatchEmbed,
    /// Timestep and pooled-text conditioning.
    pub time_text_embed: TimeTextEmbed,
    /// Text-token projection.
    pub context_embedder: Linear,
    /// The joint blocks.
    pub transformer_blocks: Vec<JointBlock>,
    /// Output adaLN (continuous: scale, shift).
    pub norm_out: AdaNorm,
    /// Output projection `[D → p²·C]`.
    pub proj_out: Linear,
    #[module(skip)]
    config: MmDitConfig,
}

impl MmDit {
    /// Loads a diffusers `transformer/` directory (`config.json` +
    /// `diffusion_pytorch_model.safetensors`).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] naming the missing or unfitting file;
    /// [`ModelError::Config`] for unsupported settings.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join("config.json");
        let config = MmDitConfig::from_file(&path)?;
        config
            .load_weights(&dir.join("diffusion_pytorch_model.safetensors"), device)
            .map_err(|e| crate::hf::in_file(&path, e))
    }

    /// The configuration.
    pub fn config(&self) -> &MmDitConfig {
        &self.config
    }

    /// Writes the weights as diffusers' `diffusion_pytorch_model.safetensors` (PyTorch layout
    /// and names, `dtype` precision), atomically; the file loads with
    /// `SD3Transformer2DModel.from_pretrained` beside the original `config.json`. LoRA
    /// adapters must be merged first ([`Module::materialize`]).
    ///
    /// # Errors
    /// [`ModelError::Config`] if the model still carries adapters; [`ModelError::Checkpoint`]
    /// if the file cannot be written.
    pub fn save_weights(&self, path: &Path, dtype: crate::WeightDtype) -> Result<()> {
        crate::hf::save_pytorch_safetensors(self, path, dtype, &MMDIT_REMAP_SAVE)
    }

    /// The velocity (flow-matching) prediction.
    ///
    /// # Shapes
    /// - `latent`: `[B, C, H, W]` with `H`, `W` multiples of `patch_size` and at most
    ///   `patch_size · pos_embed_max_size`;
    /// - `timestep`: `[B]` (diffusers' scale: `1000 · t`);
    /// - `context`: `[B, L, joint_attention_dim]`, `pooled`: `[B, pooled_projection_dim]`;
    /// - output `[B, out_channels, H, W]`.
    ///
    /// # Errors
    /// [`ModelError::Input`] for a latent the patch grid or the position table cannot hold.
    pub fn forward(
        &self,
        latent: Tensor<4>,
        timestep: Tensor<1>,
        context: Tensor<3>,
        pooled: Tensor<2>,
    ) -> Result<Tensor<4>> {
        let cfg = &self.config;
        let p = cfg.patch_size;
        let [b, _, hh, ww] = latent.dims();
        let (h, w) = (hh / p, ww / p);
        let max = cfg.pos_embed_max_size;
        if hh % p != 0 || ww % p != 0 || h > max || w > max {
            return Err(ModelError::Input {
                what: "latent".into(),
                expected: format!("sides that are multiples of {p} and at most {}", p * max),
                got: format!("{hh}×{ww}"),
            });
        }
        let d = cfg.inner_dim();
        // Patches as tokens, row-major, plus the centre crop of the position table.
        let x: Tensor<3> = self
            .pos_embed
            .proj
            .forward(latent)
            .reshape([b, d, h * w])
            .swap_dims(1, 2);
        let (top, left) = ((max - h) / 2, (max - w) / 2);
        let pos = self
            .pos_embed
            .pos_embed
            .val()
            .reshape([max, max, d])
            .slice([top..top + h, left..left + w])
            .reshape([1, h * w, d]);
        let mut x = x + pos;
        let t = get_timestep_embedding(timestep, 256, true, 0.0);
        let c = self.time_text_embed.timestep_embedder.forward(t)
            + self.time_text_embed.text_embedder.forward(pooled);
        let mut y = self.context_embedder.forward(context);
        for block in &self.transformer_blocks {
            let (nx, ny) = block.forward(x, y.clone(), &c);
            x = nx;
            if let Some(ny) = ny {
                y = ny;
            }
        }
        let m = self.norm_out.chunks(&c);
        let x = self.proj_out.forward(modulate(layer_norm(x), &m[1], &m[0]));
        let c_out = cfg.out_channels;
        // [B, h·w, p·p·C] as (h, w, p, q, C) → [B, C, h·p, w·q].
        Ok(x.reshape([b, h, w, p, p, c_out])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, c_out, h * p, w * p]))
    }
}

/// The MMDiT as a flow-matching [`align_core::Denoiser`]: flow time `t ∈ [0, 1]` is SD3's
/// sigma (`x_t = (1 − t) x₀ + t ε`, velocity `ε − x₀`), passed to the model as the timestep
/// `1000 · t`; the condition's tokens are the text embeddings and its `pooled` embedding the
/// pooled projections (zeros when absent).
///
/// `predict` panics on a latent the patch grid or position table cannot hold: pipelines check
/// the sample shape once, before sampling.
impl align_core::Denoiser for MmDit {
    fn parameterization(&self) -> align_core::Parameterization {
        align_core::Parameterization::FlowVelocity
    }

    fn predict(
        &self,
        x_t: Tensor<4>,
        t: Tensor<1>,
        condition: &align_core::Condition,
    ) -> Tensor<4> {
        let b = x_t.dims()[0];
        let pooled = condition.pooled.clone().unwrap_or_else(|| {
            Tensor::zeros([b, self.config.pooled_projection_dim], &x_t.device())
        });
        match self.forward(x_t, t.mul_scalar(1000.0), condition.context.clone(), pooled) {
            Ok(v) => v,
            Err(e) => panic!("MmDit::predict: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::{fixtures_dir, max_relative_error, read_safetensors};

    /// The tiny MMDiTs of `fixtures/sd3-tiny` (SD3.5 options: RMS q/k norms and a dual
    /// attention block; and plain SD3) against diffusers' `SD3Transformer2DModel` on square and
    /// wide latents.
    #[test]
    fn tiny_mmdits_match_diffusers() {
        let device = align_core::test_device();
        let dir = fixtures_dir().join("sd3-tiny");
        let r = read_safetensors(&dir.join("reference.safetensors")).unwrap();
        for (sub, prefix) in [("transformer", "mmdit"), ("transformer-sd3", "mmdit_sd3")] {
            let model = MmDit::load(&dir.join(sub), &device).unwrap();
            for case in [prefix.to_string(), format!("{prefix}.wide")] {
                let t = |name: &str| r[&format!("{case}.{name}")].clone();
                let out = model
                    .forward(
                        Tensor::from_data(t("hidden_states"), &device),
                        Tensor::from_data(t("timestep"), &device),
                        Tensor::from_data(t("encoder_hidden_states"), &device),
                        Tensor::from_data(t("pooled_projections"), &device),
                    )
                    .unwrap();
                let err = max_relative_error(&out.into_data(), &t("out")).unwrap();
                eprintln!("{case}: relative error {err:.2e}");
                assert!(err < 1e-5, "{case}: {err}");
            }
            // Latents the patch grid or the position table (16 patches a side) cannot hold.
            for (h, w) in [(7, 8), (8, 34)] {
                let err = model
                    .forward(
                        Tensor::zeros([1, 4, h, w], &device),
                        Tensor::zeros([1], &device),
                        Tensor::zeros([1, 5, 16], &device),
                        Tensor::zeros([1, 12], &device),
                    )
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(&format!("{h}×{w}")), "{err}");
            }
        }
    }

    /// SD3-Medium's, SD3.5-Medium's and SD3.5-Large's published transformer configs parse,
    /// validate and build exactly the parameter counts diffusers builds (plus the stored
    /// position table), without allocating the weights.
    #[test]
    fn published_configs_build_the_published_parameter_counts() {
        let device = align_core::test_device();
        let dir = fixtures_dir().join("sd3-configs");
        let counts: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("param_counts.json")).unwrap())
                .unwrap();
        for name in ["sd3-medium", "sd3.5-medium", "sd3.5-large"] {
            let config =
                MmDitConfig::from_file(&dir.join(name).join("transformer/config.json")).unwrap();
            let model = config.init(&device).unwrap();
            let expected = counts[name]["parameters"].as_u64().unwrap()
                + counts[name]["pos_embed"].as_u64().unwrap();
            assert_eq!(model.num_params() as u64, expected, "{name}");
        }
        // Unsupported settings are refused by name.
        let mut c =
            MmDitConfig::from_file(&dir.join("sd3-medium/transformer/config.json")).unwrap();
        c.qk_norm = Some("layer_norm".into());
        assert!(c.validate().unwrap_err().to_string().contains("qk_norm"));
        c.qk_norm = None;
        c.caption_projection_dim = 7;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("caption_projection_dim")
        );
        c.caption_projection_dim = 1536;
        c.dual_attention_layers = vec![24];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("dual_attention_layers")
        );
    }
}

#[cfg(test)]
mod pipeline_tests {
    use super::*;
    use crate::hf::{fixtures_dir, max_relative_error, read_safetensors};
    use align_core::{Condition, Denoiser};
    use align_samplers::{FlowEulerSampler, FlowGrid, Sampler, Transition, guided_predict};

    /// diffusers' `FlowMatchEulerDiscreteScheduler` grid for SD3 (shift 3, 4 steps, the shift
    /// applied twice to the last sigma) and a whole guided sampling run of
    /// `StableDiffusion3Pipeline` (CFG 7, given prompt embeddings and initial latents) on the
    /// tiny SD3.5-style MMDiT, then the SD3 VAE's decode `decode(x / scaling + shift)`.
    #[test]
    fn four_guided_flow_steps_match_the_sd3_pipeline() {
        let device = align_core::test_device();
        let dir = fixtures_dir().join("sd3-tiny");
        let r = read_safetensors(&dir.join("reference.safetensors")).unwrap();
        let grid = FlowGrid::flow_match_euler(4, 3.0, 1000).unwrap();
        let sigmas = r["sd3pipe.sigmas"].clone().try_to_vec::<f32>().unwrap();
        assert_eq!(grid.times().len(), sigmas.len());
        for (a, b) in grid.times().iter().zip(&sigmas) {
            assert!(
                (a - f64::from(*b)).abs() < 1e-6,
                "{:?} vs {sigmas:?}",
                grid.times()
            );
        }
        let model = MmDit::load(&dir.join("transformer"), &device).unwrap();
        let t = |name: &str| r[&format!("sd3pipe.{name}")].clone();
        let cond = Condition::new(Tensor::from_data(t("prompt_embeds"), &device))
            .with_pooled(Tensor::from_data(t("pooled_prompt_embeds"), &device))
            .unwrap();
        let uncond = Condition::new(Tensor::from_data(t("negative_prompt_embeds"), &device))
            .with_pooled(Tensor::from_data(
                t("negative_pooled_prompt_embeds"),
                &device,
            ))
            .unwrap();
        let sampler = FlowEulerSampler::new(grid);
        let mut x: Tensor<4> = Tensor::from_data(t("init_latents"), &device);
        let b = x.dims()[0];
        for k in 0..sampler.num_steps() {
            let time = Tensor::<1>::full([b], sampler.model_time(k) as f32, &device);
            let v = guided_predict(&model, x.clone(), time, &cond, Some(&uncond), 7.0).unwrap();
            x = sampler
                .step(
                    k,
                    x,
                    v,
                    model.parameterization(),
                    Transition::Mean,
                    align_core::LogProbReduction::Mean,
                )
                .unwrap()
                .prev_sample;
        }
        let err = max_relative_error(&x.clone().into_data(), &t("latents")).unwrap();
        assert!(err < 1e-5, "latents: {err}");
        let vae = crate::sd::AutoencoderKl::load(&dir.join("vae"), &device).unwrap();
        assert_eq!((vae.scaling_factor(), vae.shift_factor()), (1.5305, 0.0609));
        let images = vae.decode(
            Tensor::from_data(t("latents"), &device)
                .div_scalar(vae.scaling_factor())
                .add_scalar(vae.shift_factor()),
        );
        let err = max_relative_error(&images.into_data(), &t("images")).unwrap();
        assert!(err < 1e-5, "images: {err}");
        // The VAE alone: decode and the posterior (no quant convolutions).
        let decoded = vae.decode(Tensor::from_data(r["vae3.latents"].clone(), &device));
        assert!(max_relative_error(&decoded.into_data(), &r["vae3.decoded"]).unwrap() < 1e-5);
        let post = vae.encode(Tensor::from_data(r["vae3.image"].clone(), &device));
        assert!(
            max_relative_error(&post.mean.clone().into_data(), &r["vae3.posterior_mean"]).unwrap()
                < 1e-5
        );
        assert!(
            max_relative_error(&post.std().into_data(), &r["vae3.posterior_std"]).unwrap() < 1e-5
        );
    }
}
