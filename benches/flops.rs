//! Analytic floating-point operation counts of the Shapes-world models, from their configs.
//!
//! Only the dense products are counted — convolutions, linear layers and the two matrix
//! products of attention — at 2 FLOPs per multiply-add: `2·C_in·C_out·k²·H_out·W_out` per
//! image for a convolution, `2·d_in·d_out` per token for a linear layer, and
//! `2·2·N·M·d` for `softmax(QKᵀ)V` with `N` queries, `M` keys and width `d`. Norms,
//! activations, softmax and element-wise arithmetic are left out (they are memory-bound, and
//! a few percent of the total here), so GFLOP/s figures derived from these counts are
//! "dense GFLOP/s", the quantity a matrix-product peak is comparable with.
//!
//! The counts walk the same shape flow as `UNetConfig::init` / `UNet::forward` and
//! `DiT::forward`; the PyTorch reference in `bench/reference` cross-checks them with
//! `torch.utils.flop_counter` on its port of the same architectures.

use align_models::{DenoiserKind, DiTConfig, ShapesModelConfig, TextEncoderConfig, UNetConfig};

/// Which pass is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The forward pass.
    Forward,
    /// The backward pass of a LoRA-adapted model whose base weights are frozen (the update
    /// workloads). A layer's input gradient is counted only where the input depends on a
    /// trainable parameter (autodiff skips untracked branches: the UNet's convolutions below
    /// its first attention block never run backward), and a weight gradient only for
    /// LoRA-adapted layers — burn's LoRA merges `W + (α/r)AB` before the product, so the
    /// gradient of the merged `d_in × d_out` weight is computed in full. Attention's two
    /// products differentiate both operands (2× their forward).
    LoraBackward,
}

/// Accumulates FLOPs of one pass.
struct Count {
    pass: Pass,
    total: f64,
}

impl Count {
    fn new(pass: Pass) -> Self {
        Self { pass, total: 0.0 }
    }

    /// A frozen convolution; returns whether its output is tracked.
    fn conv(
        &mut self,
        c_in: usize,
        c_out: usize,
        k: usize,
        hw: (usize, usize),
        tracked: bool,
    ) -> bool {
        let f = 2.0 * (c_in * c_out * k * k * hw.0 * hw.1) as f64;
        match self.pass {
            Pass::Forward => self.total += f,
            Pass::LoraBackward if tracked => self.total += f,
            Pass::LoraBackward => {}
        }
        tracked
    }

    /// A linear layer over `tokens` rows; returns whether its output is tracked.
    fn linear(
        &mut self,
        d_in: usize,
        d_out: usize,
        tokens: usize,
        lora: bool,
        tracked: bool,
    ) -> bool {
        let f = 2.0 * (d_in * d_out * tokens) as f64;
        match self.pass {
            Pass::Forward => self.total += f,
            Pass::LoraBackward => {
                if tracked {
                    self.total += f;
                }
                if lora {
                    self.total += f;
                }
            }
        }
        tracked || lora
    }

    /// `softmax(QKᵀ)V` for `n` queries against `m` keys of total width `d` (all heads).
    fn products(&mut self, n: usize, m: usize, d: usize, tracked: bool) {
        let f = 2.0 * 2.0 * (n * m * d) as f64;
        match self.pass {
            Pass::Forward => self.total += f,
            Pass::LoraBackward if tracked => self.total += 2.0 * f,
            Pass::LoraBackward => {}
        }
    }

    /// Multi-head attention with LoRA on its four `d × d` projections: `n` queries from a
    /// stream tracked or not, `m` keys/values likewise. Returns the output's tracking.
    fn mha(&mut self, n: usize, m: usize, d: usize, q_tracked: bool, kv_tracked: bool) -> bool {
        let q = self.linear(d, d, n, true, q_tracked);
        let k = self.linear(d, d, m, true, kv_tracked);
        self.linear(d, d, m, true, kv_tracked);
        self.products(n, m, d, q || k);
        self.linear(d, d, n, true, true)
    }

    /// The sinusoidal-time MLP (frozen, untracked input).
    fn timestep_mlp(&mut self, frequency_dim: usize, dim: usize) {
        self.linear(frequency_dim, dim, 1, false, false);
        self.linear(dim, dim, 1, false, false);
    }

    /// One image's ResBlock at `h × w`.
    fn resblock(
        &mut self,
        c_in: usize,
        c_out: usize,
        temb: usize,
        hw: (usize, usize),
        tracked: bool,
    ) -> bool {
        if c_in != c_out {
            self.conv(c_in, c_out, 1, hw, tracked);
        }
        self.conv(c_in, c_out, 3, hw, tracked);
        self.linear(temb, c_out, 1, false, false);
        self.conv(c_out, c_out, 3, hw, tracked)
    }

    /// One image's spatial transformer with `ctx_len` text tokens of width `context_dim`
    /// (the context is tracked: the text encoder carries adapters).
    fn spatial_transformer(
        &mut self,
        c: usize,
        context_dim: usize,
        ctx_len: usize,
        hw: (usize, usize),
        tracked: bool,
    ) -> bool {
        let n = hw.0 * hw.1;
        let t = self.linear(c, c, n, false, tracked); // proj_in
        let t = self.mha(n, n, c, t, t) || t;
        let ctx = self.linear(context_dim, c, ctx_len, true, true);
        let t = self.mha(n, ctx_len, c, t, ctx) || t;
        let f = self.linear(c, 4 * c, n, true, t);
        let t = self.linear(4 * c, c, n, true, f) || t;
        self.linear(c, c, n, false, t) // proj_out
    }
}

fn unet_count(pass: Pass, config: &UNetConfig, image_size: usize, ctx_len: usize) -> f64 {
    let mut k = Count::new(pass);
    let c = config.base_channels;
    let temb = 4 * c;
    let levels = config.channel_mults.len();
    let mut s = image_size;
    k.timestep_mlp(c, temb);
    let mut tr = k.conv(config.in_channels, c, 3, (s, s), false);
    let mut skips = vec![c];
    let mut ch = c;
    for (i, &m) in config.channel_mults.iter().enumerate() {
        let out = m * c;
        for _ in 0..config.num_res_blocks {
            tr = k.resblock(ch, out, temb, (s, s), tr);
            if config.attention[i] {
                tr = k.spatial_transformer(out, config.context_dim, ctx_len, (s, s), tr);
            }
            ch = out;
            skips.push(ch);
        }
        if i + 1 < levels {
            tr = k.conv(ch, ch, 3, (s / 2, s / 2), tr);
            s /= 2;
            skips.push(ch);
        }
    }
    tr = k.resblock(ch, ch, temb, (s, s), tr);
    tr = k.spatial_transformer(ch, config.context_dim, ctx_len, (s, s), tr);
    tr = k.resblock(ch, ch, temb, (s, s), tr);
    for (i, &m) in config.channel_mults.iter().enumerate().rev() {
        let out = m * c;
        for _ in 0..=config.num_res_blocks {
            let skip = skips.pop().unwrap_or(c);
            tr = k.resblock(ch + skip, out, temb, (s, s), tr);
            if config.attention[i] {
                tr = k.spatial_transformer(out, config.context_dim, ctx_len, (s, s), tr);
            }
            ch = out;
        }
        if i > 0 {
            s *= 2;
            tr = k.conv(ch, ch, 3, (s, s), tr);
        }
    }
    k.conv(ch, config.out_channels, 3, (s, s), tr);
    k.total
}

fn dit_count(pass: Pass, config: &DiTConfig, ctx_len: usize) -> f64 {
    let mut k = Count::new(pass);
    let d = config.dim;
    let p = config.patch_size;
    let n = config.num_tokens();
    let g = config.image_size / p;
    let mut tr = k.conv(config.channels, d, p, (g, g), false);
    k.timestep_mlp(d, d);
    // The pooled text is tracked (adapted text encoder), so the conditioning vector is.
    let cond = k.linear(config.context_dim, d, 1, false, true);
    for _ in 0..config.depth {
        let m = k.linear(d, 6 * d, 1, false, cond);
        tr = tr || m;
        tr = k.mha(n, n, d, tr, tr) || tr;
        let ctx = k.linear(config.context_dim, d, ctx_len, true, true);
        tr = k.mha(n, ctx_len, d, tr, ctx) || tr;
        let h = k.linear(d, 4 * d, n, true, tr);
        tr = k.linear(4 * d, d, n, true, h) || tr;
    }
    let m = k.linear(d, 2 * d, 1, false, cond);
    k.linear(d, p * p * config.channels, n, false, tr || m);
    k.total
}

fn text_count(pass: Pass, config: &TextEncoderConfig) -> f64 {
    let mut k = Count::new(pass);
    let (d, l) = (config.dim, config.max_len);
    let mut tr = false; // token embeddings are frozen
    for _ in 0..config.layers {
        tr = k.mha(l, l, d, tr, tr) || tr;
        let h = k.linear(d, 4 * d, l, false, tr);
        tr = k.linear(4 * d, d, l, false, h) || tr;
    }
    k.total
}

/// Forward FLOPs of the UNet for `batch` images of `image_size²` with `ctx_len` text tokens.
pub fn unet_forward(config: &UNetConfig, batch: usize, image_size: usize, ctx_len: usize) -> f64 {
    unet_count(Pass::Forward, config, image_size, ctx_len) * batch as f64
}

/// Forward FLOPs of the DiT for `batch` images with `ctx_len` text tokens.
pub fn dit_forward(config: &DiTConfig, batch: usize, ctx_len: usize) -> f64 {
    dit_count(Pass::Forward, config, ctx_len) * batch as f64
}

/// Forward FLOPs of the text encoder for `batch` prompts of `config.max_len` tokens.
pub fn text_forward(config: &TextEncoderConfig, batch: usize) -> f64 {
    text_count(Pass::Forward, config) * batch as f64
}

/// FLOPs of `pass` for a whole text-to-image model (text encoder on `prompts` prompts,
/// denoiser on `batch` images).
pub fn model(pass: Pass, config: &ShapesModelConfig, batch: usize, prompts: usize) -> f64 {
    let ctx = config.text.max_len;
    let denoiser = match config.kind {
        DenoiserKind::Unet => unet_count(pass, &config.unet, config.image_size, ctx),
        DenoiserKind::Dit => dit_count(pass, &config.dit, ctx),
    };
    denoiser * batch as f64 + text_count(pass, &config.text) * prompts as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_convolution_counts_by_hand() {
        // 3→32 channels, 3×3, 32×32 output: 2·3·32·9·1024 = 1 769 472.
        let mut k = Count::new(Pass::Forward);
        k.conv(3, 32, 3, (32, 32), false);
        assert_eq!(k.total, 1_769_472.0);
    }

    #[test]
    fn counts_scale_linearly_with_the_batch() {
        let u = UNetConfig::small();
        assert_eq!(unet_forward(&u, 4, 32, 8), 4.0 * unet_forward(&u, 1, 32, 8));
        let d = DiTConfig::small();
        assert_eq!(dit_forward(&d, 3, 8), 3.0 * dit_forward(&d, 1, 8));
    }

    #[test]
    fn a_one_block_dit_counts_by_hand() {
        // dim 8, 1 block, 2 heads, 4×4 image, patch 2 → 4 tokens, 3 channels, context 8.
        let c = DiTConfig::new()
            .with_image_size(4)
            .with_patch_size(2)
            .with_dim(8)
            .with_depth(1)
            .with_heads(2)
            .with_context_dim(8);
        let (n, d, m) = (4.0, 8.0, 2.0);
        let self_attn = 4.0 * 2.0 * n * d * d + 4.0 * n * n * d;
        let cross =
            2.0 * m * d * d + 2.0 * 2.0 * n * d * d + 2.0 * 2.0 * m * d * d + 4.0 * n * m * d;
        let mlp = 2.0 * 2.0 * n * d * 4.0 * d;
        let modulation = 2.0 * d * 6.0 * d;
        let stem = 2.0 * 3.0 * d * 4.0 * n;
        let heads = 2.0 * d * d * 2.0 + 2.0 * d * d + 2.0 * d * 2.0 * d + 2.0 * d * 12.0 * n;
        let expected = self_attn + cross + mlp + modulation + stem + heads;
        assert_eq!(dit_forward(&c, 1, 2), expected);
    }

    fn shipped(kind: DenoiserKind) -> ShapesModelConfig {
        let t = TextEncoderConfig::new(18, 8);
        ShapesModelConfig::new(kind, t, UNetConfig::small(), DiTConfig::small())
    }

    /// The `small` presets of world v1 (32 × 32 images), whose counts were checked against
    /// PyTorch's counter: UNet width 32 × (1, 2, 2) with attention at 8 × 8, DiT with 2×2
    /// patches, width 96, depth 4.
    fn world_v1(kind: DenoiserKind) -> ShapesModelConfig {
        let t = TextEncoderConfig::new(18, 8);
        let unet = UNetConfig::new()
            .with_base_channels(32)
            .with_channel_mults(vec![1, 2, 2])
            .with_attention(vec![false, false, true]);
        let dit = DiTConfig::new()
            .with_image_size(32)
            .with_patch_size(2)
            .with_dim(96)
            .with_depth(4);
        ShapesModelConfig::new(kind, t, unet, dit).with_image_size(32)
    }

    /// The totals `torch.utils.flop_counter.FlopCounterMode` reported for the PyTorch port of
    /// the same models and updates (`python3 bench/reference/torch_bench.py`, 2026-11-30, on
    /// the world-v1 presets): forward of 32 images exactly; the LoRA updates within 0.2 %
    /// (torch also counts the `A·B` products of the adapters, which this count leaves out).
    /// The counting code is the same for any configuration; the world-v2 presets' totals are
    /// in `world_v2_presets_cost_40_to_60_mflop_per_image`.
    #[test]
    fn counts_agree_with_torchs_flop_counter() {
        let (u, d) = (world_v1(DenoiserKind::Unet), world_v1(DenoiserKind::Dit));
        assert_eq!(unet_forward(&u.unet, 32, 32, 8), 16_838_033_408.0);
        assert_eq!(dit_forward(&d.dit, 32, 8), 11_882_594_304.0);
        assert_eq!(text_forward(&u.text, 32), 51_380_224.0);
        // DDPO-IS update: 2 steps × (forward + LoRA backward) of 32 images and 32 prompts.
        let ddpo = 2.0 * (model(Pass::Forward, &u, 32, 32) + model(Pass::LoraBackward, &u, 32, 32));
        assert!((ddpo / 64.08e9 - 1.0).abs() < 2e-3, "{ddpo}");
        // Flow-GRPO update: the same on the DiT plus the reference's forward.
        let grpo =
            2.0 * (2.0 * model(Pass::Forward, &d, 32, 32) + model(Pass::LoraBackward, &d, 32, 32));
        assert!((grpo / 95.33e9 - 1.0).abs() < 2e-3, "{grpo}");
    }

    /// The sizing target of world v2 (issue: about 40–60 MFLOP per image forward). The exact
    /// figures were computed independently by a Python re-statement of these formulas
    /// (docs/benchmarks.md); the text encoder adds 1.61 MFLOP per prompt.
    #[test]
    fn world_v2_presets_cost_40_to_60_mflop_per_image() {
        let (u, d) = (shipped(DenoiserKind::Unet), shipped(DenoiserKind::Dit));
        assert_eq!(u.image_size, 16);
        assert_eq!(unet_forward(&u.unet, 1, u.image_size, 8), 50_776_064.0);
        assert_eq!(dit_forward(&d.dit, 1, 8), 56_745_984.0);
        assert_eq!(text_forward(&u.text, 1), 1_605_632.0);
        for c in [&u, &d] {
            let per_image = model(Pass::Forward, c, 1, 1) / 1e6;
            assert!((40.0..=60.0).contains(&per_image), "{per_image} MFLOP");
        }
    }

    #[test]
    fn frozen_layers_below_the_first_adapter_run_no_backward() {
        // The UNet's backward is cheaper than its forward plus attention: the convolutions of
        // the two attention-free levels above its first transformer (world-v1 preset) are
        // never differentiated.
        let u = world_v1(DenoiserKind::Unet);
        let fwd = model(Pass::Forward, &u, 1, 1);
        let bwd = model(Pass::LoraBackward, &u, 1, 1);
        assert!(bwd < fwd, "{bwd} vs {fwd}");
        // The DiT carries adapters in every block: weight and input gradients of its linears.
        let d = shipped(DenoiserKind::Dit);
        let ratio = model(Pass::LoraBackward, &d, 1, 1) / model(Pass::Forward, &d, 1, 1);
        assert!(ratio > 1.8 && ratio < 2.3, "{ratio}");
    }
}
