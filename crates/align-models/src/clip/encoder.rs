//! The transformer encoder shared by CLIP's text and vision towers.
//!
//! Each layer is pre-LayerNorm, with a residual around attention and around the MLP:
//!
//! ```text
//! h = h + out_proj(Attn(LN₁(h)))           Attn: multi-head, softmax(q·kᵀ/√d_head + M)·v
//! h = h + fc2(act(fc1(LN₂(h))))            act: quick_gelu(x) = x·σ(1.702x), or gelu
//! ```
//!
//! `M` is `0` everywhere (vision) or the causal mask (`−∞` above the diagonal, text). Field
//! names follow transformers' `CLIPEncoder` (`layers.N.self_attn.q_proj`, `layer_norm1`,
//! `mlp.fc1`, …), so that burn's parameter paths are the checkpoint's tensor names.

use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, gelu_approximate, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The activation of CLIP's MLPs (`hidden_act` in the configs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ClipActivation {
    /// `x·σ(1.702x)`: OpenAI's CLIP models (`"quick_gelu"`).
    #[default]
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The exact GELU `x·Φ(x)` (`"gelu"`, OpenCLIP conversions).
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

impl ClipActivation {
    /// Applies the activation elementwise.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::QuickGelu => x.clone() * sigmoid(x * 1.702),
            Self::Gelu => gelu(x),
            Self::GeluTanh => gelu_approximate(x),
        }
    }
}

/// Sizes of a [`ClipEncoder`] (taken from a text or vision config).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipEncoderConfig {
    /// Width `D` of the tokens.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Attention heads (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// LayerNorm ε.
    pub layer_norm_eps: f64,
}

/// Multi-head self-attention with transformers' projection names.
#[derive(Module, Debug)]
pub struct ClipAttention {
    /// Query projection `[D → D]`.
    pub q_proj: Linear,
    /// Key projection `[D → D]`.
    pub k_proj: Linear,
    /// Value projection `[D → D]`.
    pub v_proj: Linear,
    /// Output projection `[D → D]`.
    pub out_proj: Linear,
    num_heads: usize,
}

/// The two-layer MLP `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct ClipMlp {
    /// Expansion `[D → intermediate]`.
    pub fc1: Linear,
    /// Projection `[intermediate → D]`.
    pub fc2: Linear,
    #[module(skip)]
    act: ClipActivation,
}

/// One pre-LayerNorm transformer layer.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    /// Self-attention.
    pub self_attn: ClipAttention,
    /// Norm before attention.
    pub layer_norm1: LayerNorm,
    /// Feed-forward block.
    pub mlp: ClipMlp,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm,
}

/// A stack of [`ClipEncoderLayer`]s.
#[derive(Module, Debug)]
pub struct ClipEncoder {
    /// The layers, in order (`layers.0`, `layers.1`, …).
    pub layers: Vec<ClipEncoderLayer>,
}

impl ClipEncoderConfig {
    /// Checks the sizes.
    ///
    /// # Errors
    /// [`ModelError::Config`] for zero sizes or heads that do not divide the width.
    pub fn validate(&self) -> Result<()> {
        if self.hidden_size == 0
            || self.intermediate_size == 0
            || self.num_attention_heads == 0
            || self.num_hidden_layers == 0
        {
            return Err(ModelError::config(
                "clip encoder",
                format!("sizes must be positive: {self:?}"),
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::config(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(ModelError::config(
                "layer_norm_eps",
                format!("must be positive, got {}", self.layer_norm_eps),
            ));
        }
        Ok(())
    }

    /// Initialises the encoder (random weights; real ones come from a checkpoint).
    ///
    /// # Errors
    /// As [`ClipEncoderConfig::validate`].
    pub fn init(&self, device: &Device) -> Result<ClipEncoder> {
        self.validate()?;
        let d = self.hidden_size;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                self_attn: ClipAttention {
                    q_proj: LinearConfig::new(d, d).init(device),
                    k_proj: LinearConfig::new(d, d).init(device),
                    v_proj: LinearConfig::new(d, d).init(device),
                    out_proj: LinearConfig::new(d, d).init(device),
                    num_heads: self.num_attention_heads,
                },
                layer_norm1: norm(),
                mlp: ClipMlp {
                    fc1: LinearConfig::new(d, self.intermediate_size).init(device),
                    fc2: LinearConfig::new(self.intermediate_size, d).init(device),
                    act: self.hidden_act,
                },
                layer_norm2: norm(),
            })
            .collect();
        Ok(ClipEncoder { layers })
    }
}

impl ClipAttention {
    /// `out_proj(softmax(q·kᵀ/√d_head + M)·v)` over `H` heads; `M` is the causal mask when
    /// `causal` (token `i` attends to tokens `j ≤ i`), else zero.
    ///
    /// # Shapes
    /// - `x`: `[B, L, D]`; output `[B, L, D]`.
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let [b, l, d] = x.dims();
        let h = self.num_heads;
        let hd = d / h;
        let heads = |t: Tensor<3>| t.reshape([b, l, h, hd]).swap_dims(1, 2);
        let q = heads(self.q_proj.forward(x.clone()));
        let k = heads(self.k_proj.forward(x.clone()));
        let v = heads(self.v_proj.forward(x));
        // burn's fused attention op (see `crate::fused_attention`); scale 1/√d_head.
        let options = AttentionModuleOptions {
            is_causal: causal,
            ..Default::default()
        };
        let out = attention(q, k, v, None, None, options)
            .swap_dims(1, 2)
            .reshape([b, l, d]);
        self.out_proj.forward(out)
    }
}

impl ClipMlp {
    /// `fc2(act(fc1(x)))`.
    ///
    /// # Shapes
    /// - `x`: `[B, L, D]`; output `[B, L, D]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(self.act.apply(self.fc1.forward(x)))
    }
}

impl ClipEncoderLayer {
    /// `h + Attn(LN₁(h))`, then `h + MLP(LN₂(h))`.
    ///
    /// # Shapes
    /// - `x`: `[B, L, D]`; output `[B, L, D]`.
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), causal);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

impl ClipEncoder {
    /// Runs the layers in order.
    ///
    /// # Shapes
    /// - `x`: `[B, L, D]`; output `[B, L, D]`.
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        self.layers
            .iter()
            .fold(x, |h, layer| layer.forward(h, causal))
    }
}
