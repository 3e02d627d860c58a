//! The attention side of Stable Diffusion, laid out as diffusers' `Attention`, `FeedForward`
//! (GEGLU), `BasicTransformerBlock` and `Transformer2DModel` (same parameter names, up to the
//! load-time remappings `to_out.0 → to_out`, `ff.net.0.proj → ff.proj`, `ff.net.2 → ff.out`).
//!
//! ```text
//! Attention(x, ctx):      q = x W_q, k = ctx W_k, v = ctx W_v       (ctx = x for self-attention)
//!                         per head: softmax(q kᵀ / √d_head) v, heads concatenated
//!                         out = · W_out + b_out
//! FeedForward (GEGLU):    [h, g] = x W_proj + b   (split in halves of width 4·dim)
//!                         out = (h ⊙ GELU(g)) W_out + b_out      (exact erf GELU)
//! BasicTransformerBlock:  h = x + Attn₁(LN₁(x))                  self-attention
//!                         h = h + Attn₂(LN₂(h), context)         cross-attention
//!                         out = h + FF(LN₃(h))                   (LayerNorm ε 1e-5)
//! Transformer2DModel:     t = proj_in(GN(x)) as tokens [B, H·W, C]   (GroupNorm ε 1e-6)
//!                         t = blocks(t, context)
//!                         out = x + proj_out(t) as [B, C, H, W]
//! ```
//!
//! `proj_in`/`proj_out` are 1×1 convolutions in SD 1.x (`use_linear_projection = false`) and
//! linear layers in SD 2.x; [`Projection`] holds either under the one parameter name.
//!
//! Every projection is a plain burn [`Linear`], so LoRA can target `to_q`, `to_k`, `to_v` and
//! `to_out`. Dropout is absent (0 in every SD checkpoint, and log-probs must be deterministic).

use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::blocks::group_norm;

/// Multi-head scaled dot-product attention on already projected queries, keys and values
/// (the core through [`crate::fused_attention::attention_core`]).
///
/// # Shapes
/// - `q`: `[B, N, heads·d]`, `k`, `v`: `[B, L, heads·d]`; output `[B, N, heads·d]`.
pub fn scaled_dot_product_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
) -> Tensor<3> {
    let [b, n, inner] = q.dims();
    let l = k.dims()[1];
    let d = inner / heads;
    let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, d]).swap_dims(1, 2);
    let (q, k, v) = (split(q, n), split(k, l), split(v, l));
    crate::fused_attention::attention_core(q, k, v, None)
        .swap_dims(1, 2)
        .reshape([b, n, inner])
}

/// Configuration of [`Attention`].
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Width of the queries (and of the output).
    pub query_dim: usize,
    /// Width of the context tokens; `None` for self-attention.
    pub cross_attention_dim: Option<usize>,
    /// Number of heads.
    pub heads: usize,
    /// Width of one head (inner width = `heads · dim_head`).
    pub dim_head: usize,
    /// Whether `to_q`, `to_k`, `to_v` have biases (no in the UNet, yes in the VAE).
    #[config(default = false)]
    pub bias: bool,
    /// A GroupNorm `(groups, ε)` applied to the input of [`Attention::forward_image`] (the
    /// VAE's mid-block attention).
    #[config(default = "None")]
    pub group_norm: Option<(usize, f64)>,
}

/// diffusers' `Attention` with the default processor (no `upcast`, no norm of the context).
#[derive(Module, Debug)]
pub struct Attention {
    /// Input normalisation of the VAE's spatial attention.
    pub group_norm: Option<GroupNorm>,
    /// Query projection `[query_dim → inner]`.
    pub to_q: Linear,
    /// Key projection `[context_dim → inner]`.
    pub to_k: Linear,
    /// Value projection `[context_dim → inner]`.
    pub to_v: Linear,
    /// Output projection `[inner → query_dim]` (diffusers' `to_out.0`).
    pub to_out: Linear,
    heads: usize,
}

impl AttentionConfig {
    /// Initialises the module.
    pub fn init(&self, device: &Device) -> Attention {
        let inner = self.heads * self.dim_head;
        let ctx = self.cross_attention_dim.unwrap_or(self.query_dim);
        let lin =
            |i: usize, o: usize, bias: bool| LinearConfig::new(i, o).with_bias(bias).init(device);
        Attention {
            group_norm: self
                .group_norm
                .map(|(g, eps)| group_norm(g, self.query_dim, eps, device)),
            to_q: lin(self.query_dim, inner, self.bias),
            to_k: lin(ctx, inner, self.bias),
            to_v: lin(ctx, inner, self.bias),
            to_out: lin(inner, self.query_dim, true),
            heads: self.heads,
        }
    }
}

impl Attention {
    /// Attention of the tokens `x` to `context` (to themselves when `None`).
    ///
    /// # Shapes
    /// - `x`: `[B, N, query_dim]`, `context`: `[B, L, cross_attention_dim]`; output
    ///   `[B, N, query_dim]`.
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let ctx = context.unwrap_or_else(|| x.clone());
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(ctx.clone());
        let v = self.to_v.forward(ctx);
        self.to_out
            .forward(scaled_dot_product_attention(q, k, v, self.heads))
    }

    /// Self-attention over the pixels of a feature map with a residual connection (the VAE's
    /// mid-block attention): `x + Attn(GN(x) as tokens)`.
    ///
    /// # Shapes
    /// - `x`: `[B, C, H, W]` with `C = query_dim`; output `[B, C, H, W]`.
    pub fn forward_image(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens: Tensor<3> = x.clone().reshape([b, c, h * w]);
        let tokens = match &self.group_norm {
            Some(norm) => norm.forward(tokens),
            None => tokens,
        };
        let out = self.forward(tokens.swap_dims(1, 2), None);
        x + out.swap_dims(1, 2).reshape([b, c, h, w])
    }
}

/// Configuration of [`FeedForward`].
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Model width.
    pub dim: usize,
    /// Hidden width (diffusers' default `4 · dim`).
    pub inner_dim: usize,
}

/// diffusers' `FeedForward` with `activation_fn = "geglu"`.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// GEGLU projection `[dim → 2 · inner]` (diffusers' `ff.net.0.proj`).
    pub proj: Linear,
    /// Output projection `[inner → dim]` (diffusers' `ff.net.2`).
    pub out: Linear,
}

impl FeedForwardConfig {
    /// Initialises the module.
    pub fn init(&self, device: &Device) -> FeedForward {
        FeedForward {
            proj: LinearConfig::new(self.dim, 2 * self.inner_dim).init(device),
            out: LinearConfig::new(self.inner_dim, self.dim).init(device),
        }
    }
}

impl FeedForward {
    /// # Shapes
    /// - `x`: `[B, N, dim]`; output `[B, N, dim]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.proj.forward(x);
        let inner = h.dims()[2] / 2;
        let hidden = h.clone().narrow(2, 0, inner);
        let gate = h.narrow(2, inner, inner);
        self.out.forward(hidden * gelu(gate))
    }
}

/// Configuration of [`BasicTransformerBlock`].
#[derive(Config, Debug)]
pub struct BasicTransformerBlockConfig {
    /// Model width.
    pub dim: usize,
    /// Heads.
    pub heads: usize,
    /// Width of one head.
    pub dim_head: usize,
    /// Width of the context tokens.
    pub cross_attention_dim: usize,
    /// LayerNorm ε.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
}

/// diffusers' `BasicTransformerBlock` (`norm_type = "layer_norm"`, GEGLU feed-forward).
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    /// Pre-norm of self-attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn1: Attention,
    /// Pre-norm of cross-attention.
    pub norm2: LayerNorm,
    /// Cross-attention to the context.
    pub attn2: Attention,
    /// Pre-norm of the feed-forward layer.
    pub norm3: LayerNorm,
    /// GEGLU feed-forward.
    pub ff: FeedForward,
}

impl BasicTransformerBlockConfig {
    /// Initialises the module.
    pub fn init(&self, device: &Device) -> BasicTransformerBlock {
        let ln = || {
            LayerNormConfig::new(self.dim)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        BasicTransformerBlock {
            norm1: ln(),
            attn1: AttentionConfig::new(self.dim, self.heads, self.dim_head).init(device),
            norm2: ln(),
            attn2: AttentionConfig::new(self.dim, self.heads, self.dim_head)
                .with_cross_attention_dim(Some(self.cross_attention_dim))
                .init(device),
            norm3: ln(),
            ff: FeedForwardConfig::new(self.dim, 4 * self.dim).init(device),
        }
    }
}

impl BasicTransformerBlock {
    /// # Shapes
    /// - `x`: `[B, N, dim]`, `context`: `[B, L, cross_attention_dim]`; output `[B, N, dim]`.
    pub fn forward(&self, x: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let h = x.clone() + self.attn1.forward(self.norm1.forward(x), None);
        let h = h.clone() + self.attn2.forward(self.norm2.forward(h), Some(context));
        h.clone() + self.ff.forward(self.norm3.forward(h))
    }
}

/// `proj_in` / `proj_out` of a [`Transformer2DModel`]: a 1×1 convolution (SD 1.x) or a linear
/// layer (SD 2.x, `use_linear_projection`).
///
/// The [`Module`] implementation is written by hand so that the variant adds no segment to the
/// parameter paths (`proj_in.weight`, as in diffusers, not `proj_in.Conv.weight`).
#[derive(Debug, Clone)]
pub enum Projection {
    /// 1×1 convolution on the feature map.
    Conv(Conv2d),
    /// Linear layer on the tokens.
    Linear(Linear),
}

impl Projection {
    fn new(linear: bool, i: usize, o: usize, device: &Device) -> Self {
        if linear {
            Self::Linear(LinearConfig::new(i, o).init(device))
        } else {
            Self::Conv(Conv2dConfig::new([i, o], [1, 1]).init(device))
        }
    }
}

macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            Projection::Conv($m) => $e,
            Projection::Linear($m) => $e,
        }
    };
    ($self:expr, $m:ident => wrap $e:expr) => {
        match $self {
            Projection::Conv($m) => Projection::Conv($e),
            Projection::Linear($m) => Projection::Linear($e),
        }
    };
}

impl Module for Projection {
    fn collect_devices(&self, devices: Devices) -> Devices {
        each!(self, m => m.collect_devices(devices))
    }
    fn fork(self, device: &Device) -> Self {
        each!(self, m => wrap m.fork(device))
    }
    fn to_device(self, device: &Device) -> Self {
        each!(self, m => wrap m.to_device(device))
    }
    fn train(self) -> Self {
        each!(self, m => wrap m.train())
    }
    fn valid(&self) -> Self {
        each!(self, m => wrap m.valid())
    }
    fn materialize(self) -> Self {
        each!(self, m => wrap m.materialize())
    }
    fn num_params(&self) -> usize {
        each!(self, m => Module::num_params(m))
    }
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        each!(self, m => m.visit(visitor))
    }
    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        each!(self, m => wrap m.map(mapper))
    }
}

impl core::fmt::Display for Projection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        each!(self, m => core::fmt::Display::fmt(m, f))
    }
}

impl ModuleDisplayDefault for Projection {
    fn content(&self, content: Content) -> Option<Content> {
        each!(self, m => m.content(content))
    }
    fn num_params(&self) -> usize {
        Module::num_params(self)
    }
}

impl ModuleDisplay for Projection {}

/// Configuration of [`Transformer2DModel`].
#[derive(Config, Debug)]
pub struct Transformer2DModelConfig {
    /// Channels `C` (= heads · dim_head).
    pub channels: usize,
    /// Heads.
    pub heads: usize,
    /// Width of the context tokens.
    pub cross_attention_dim: usize,
    /// Transformer blocks.
    #[config(default = 1)]
    pub layers: usize,
    /// GroupNorm groups.
    #[config(default = 32)]
    pub norm_groups: usize,
    /// Linear (`true`, SD 2.x) or 1×1 conv (`false`, SD 1.x) `proj_in` / `proj_out`.
    #[config(default = false)]
    pub use_linear_projection: bool,
}

/// diffusers' `Transformer2DModel` for continuous inputs.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    /// Input GroupNorm (ε 1e-6).
    pub norm: GroupNorm,
    /// Input projection `[C → C]`.
    pub proj_in: Projection,
    /// The transformer blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// Output projection `[C → C]`.
    pub proj_out: Projection,
}

impl Transformer2DModelConfig {
    /// Initialises the module.
    pub fn init(&self, device: &Device) -> Transformer2DModel {
        let c = self.channels;
        let lin = self.use_linear_projection;
        Transformer2DModel {
            norm: group_norm(self.norm_groups, c, 1e-6, device),
            proj_in: Projection::new(lin, c, c, device),
            transformer_blocks: (0..self.layers)
                .map(|_| {
                    BasicTransformerBlockConfig::new(
                        c,
                        self.heads,
                        c / self.heads,
                        self.cross_attention_dim,
                    )
                    .init(device)
                })
                .collect(),
            proj_out: Projection::new(lin, c, c, device),
        }
    }
}

impl Transformer2DModel {
    /// # Shapes
    /// - `x`: `[B, C, H, W]`, `context`: `[B, L, cross_attention_dim]`; output `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>, context: Tensor<3>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let n = self.norm.forward(x.clone());
        let to_tokens = |t: Tensor<4>| -> Tensor<3> { t.reshape([b, c, h * w]).swap_dims(1, 2) };
        let to_image = |t: Tensor<3>| -> Tensor<4> { t.swap_dims(1, 2).reshape([b, c, h, w]) };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(n)),
            Projection::Linear(lin) => lin.forward(to_tokens(n)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context.clone());
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_image(tokens)),
            Projection::Linear(lin) => to_image(lin.forward(tokens)),
        };
        x + out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn paths<M: Module>(m: &M) -> Vec<String> {
        struct P(Vec<String>, Vec<String>);
        impl ModuleVisitor for P {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.0.push(name.into());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.0.pop();
            }
            fn visit_float<const D: usize>(&mut self, _: &burn::module::Param<Tensor<D>>) {
                self.1.push(self.0.join("."));
            }
        }
        let mut p = P(vec![], vec![]);
        m.visit(&mut p);
        p.1
    }

    #[test]
    fn projection_adds_no_path_segment_and_both_kinds_keep_shapes() {
        let device = align_core::test_device();
        for linear in [false, true] {
            let t = Transformer2DModelConfig::new(8, 2, 6)
                .with_norm_groups(4)
                .with_use_linear_projection(linear)
                .init(&device);
            let p = paths(&t);
            assert!(p.contains(&"proj_in.weight".to_string()), "{p:?}");
            assert!(p.contains(&"transformer_blocks.0.attn2.to_k.weight".to_string()));
            assert!(p.contains(&"transformer_blocks.0.ff.proj.weight".to_string()));
            let x = Tensor::<4>::random([2, 8, 3, 5], Distribution::Normal(0.0, 1.0), &device);
            let ctx = Tensor::<3>::random([2, 7, 6], Distribution::Normal(0.0, 1.0), &device);
            assert_eq!(t.forward(x, ctx).dims(), [2, 8, 3, 5]);
        }
    }

    #[test]
    fn image_attention_shapes() {
        let device = align_core::test_device();
        let a = AttentionConfig::new(8, 1, 8)
            .with_bias(true)
            .with_group_norm(Some((4, 1e-6)))
            .init(&device);
        let x = Tensor::<4>::random([1, 8, 3, 2], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(a.forward_image(x).dims(), [1, 8, 3, 2]);
    }
}
