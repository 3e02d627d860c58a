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

use align_models::{DiTConfig, TextEncoderConfig, UNetConfig};

fn conv(c_in: usize, c_out: usize, k: usize, h_out: usize, w_out: usize) -> f64 {
    2.0 * (c_in * c_out * k * k * h_out * w_out) as f64
}

fn linear(d_in: usize, d_out: usize, tokens: usize) -> f64 {
    2.0 * (d_in * d_out * tokens) as f64
}

/// `softmax(QKᵀ)V` for `n` queries against `m` keys of total width `d` (all heads).
fn attention_products(n: usize, m: usize, d: usize) -> f64 {
    2.0 * 2.0 * (n * m * d) as f64
}

/// Multi-head attention with its four `d × d` projections: `n` queries, `m` keys/values.
fn mha(n: usize, m: usize, d: usize) -> f64 {
    linear(d, d, n) * 2.0 + linear(d, d, m) * 2.0 + attention_products(n, m, d)
}

fn timestep_mlp(frequency_dim: usize, dim: usize) -> f64 {
    linear(frequency_dim, dim, 1) + linear(dim, dim, 1)
}

/// One image's ResBlock at `h × w`.
fn resblock(c_in: usize, c_out: usize, temb: usize, h: usize, w: usize) -> f64 {
    let skip = if c_in != c_out {
        conv(c_in, c_out, 1, h, w)
    } else {
        0.0
    };
    conv(c_in, c_out, 3, h, w) + conv(c_out, c_out, 3, h, w) + linear(temb, c_out, 1) + skip
}

/// One image's spatial transformer at `h × w` with `ctx_len` text tokens of width
/// `context_dim`.
fn spatial_transformer(c: usize, context_dim: usize, ctx_len: usize, h: usize, w: usize) -> f64 {
    let n = h * w;
    linear(c, c, n)                       // proj_in
        + mha(n, n, c)                    // self-attention
        + linear(context_dim, c, ctx_len) // context projection
        + mha(n, ctx_len, c)              // cross-attention
        + linear(c, 4 * c, n)
        + linear(4 * c, c, n)             // feed-forward
        + linear(c, c, n) // proj_out
}

/// Forward FLOPs of the UNet for `batch` images of `image_size²` with `ctx_len` text tokens.
pub fn unet_forward(config: &UNetConfig, batch: usize, image_size: usize, ctx_len: usize) -> f64 {
    let c = config.base_channels;
    let temb = 4 * c;
    let levels = config.channel_mults.len();
    let mut s = image_size;
    let mut total = timestep_mlp(c, temb) + conv(config.in_channels, c, 3, s, s);
    let mut skips = vec![c];
    let mut ch = c;
    for (i, &m) in config.channel_mults.iter().enumerate() {
        let out = m * c;
        for _ in 0..config.num_res_blocks {
            total += resblock(ch, out, temb, s, s);
            if config.attention[i] {
                total += spatial_transformer(out, config.context_dim, ctx_len, s, s);
            }
            ch = out;
            skips.push(ch);
        }
        if i + 1 < levels {
            total += conv(ch, ch, 3, s / 2, s / 2);
            s /= 2;
            skips.push(ch);
        }
    }
    total += 2.0 * resblock(ch, ch, temb, s, s)
        + spatial_transformer(ch, config.context_dim, ctx_len, s, s);
    for (i, &m) in config.channel_mults.iter().enumerate().rev() {
        let out = m * c;
        for _ in 0..=config.num_res_blocks {
            let skip = skips.pop().unwrap_or(c);
            total += resblock(ch + skip, out, temb, s, s);
            if config.attention[i] {
                total += spatial_transformer(out, config.context_dim, ctx_len, s, s);
            }
            ch = out;
        }
        if i > 0 {
            s *= 2;
            total += conv(ch, ch, 3, s, s);
        }
    }
    total += conv(ch, config.out_channels, 3, s, s);
    total * batch as f64
}

/// Forward FLOPs of the DiT for `batch` images with `ctx_len` text tokens.
pub fn dit_forward(config: &DiTConfig, batch: usize, ctx_len: usize) -> f64 {
    let d = config.dim;
    let p = config.patch_size;
    let n = config.num_tokens();
    let g = config.image_size / p;
    let block = mha(n, n, d)
        + linear(config.context_dim, d, ctx_len)
        + mha(n, ctx_len, d)
        + linear(d, 4 * d, n)
        + linear(4 * d, d, n)
        + linear(d, 6 * d, 1);
    let per_image = conv(config.channels, d, p, g, g)
        + timestep_mlp(d, d)
        + linear(config.context_dim, d, 1)
        + block * config.depth as f64
        + linear(d, 2 * d, 1)
        + linear(d, p * p * config.channels, n);
    per_image * batch as f64
}

/// Forward FLOPs of the text encoder for `batch` prompts of `config.max_len` tokens.
pub fn text_forward(config: &TextEncoderConfig, batch: usize) -> f64 {
    let (d, l) = (config.dim, config.max_len);
    let layer = mha(l, l, d) + linear(d, 4 * d, l) + linear(4 * d, d, l);
    layer * config.layers as f64 * batch as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_convolution_counts_by_hand() {
        // 3→32 channels, 3×3, 32×32 output: 2·3·32·9·1024 = 1 769 472.
        assert_eq!(conv(3, 32, 3, 32, 32), 1_769_472.0);
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
}
