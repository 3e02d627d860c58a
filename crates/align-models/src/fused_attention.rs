//! Multi-head attention whose core runs through burn's fused `attention` op.
//!
//! ```text
//! Q = W_q x,  K = W_k c,  V = W_v c            (x: [B, N, d], c: [B, L, d], split into H heads)
//! O_h = softmax(Q_h K_hᵀ / √d_k + M) V_h        (M = −∞ where the context token is padding)
//! out = W_o · concat_h O_h
//! ```
//!
//! [`multi_head_attention`] takes burn-nn's [`MultiHeadAttention`] as it is — the same four
//! projections, parameter names and LoRA targets, so checkpoints and adapters are unchanged —
//! and replaces only its core, `softmax(QKᵀ/√d_k)·V`, by [`burn::tensor::module::attention`]:
//!
//! - on a device **without autodiff** (every `valid()` model: sampling, evaluation, reward
//!   scoring) the backend's own kernel runs it — on flex one pass per head that never writes
//!   the scores back as separate tensors (≈ 2× faster than the unfused core at the world-v1 DiT's
//!   shapes, `bench-table --ops`);
//! - **under autodiff** burn computes it by its unfused fallback (the same three steps as
//!   burn-nn), so gradients are those of the plain formula. RL rollouts run on the autodiff
//!   device with `no_grad()` and are re-scored there, through the same fallback, so the PPO
//!   ratio at `θ_old` stays exactly 1.
//!
//! Against burn-nn's forward, the results agree to f32 rounding (tested below, and every model
//! fixture test still passes). One difference by design: masked scores are `−∞`, not burn-nn's
//! `−10⁴`, so a padded key gets exactly zero weight, and a row with every key masked (the
//! context of an empty prompt, all `<pad>`) yields zeros instead of a uniform average over the
//! padding — the same on both devices (tested). The null prompt of classifier-free guidance
//! always keeps its `<null>` token unmasked.
//!
//! # Example
//!
//! ```
//! use align_core::select_device;
//! use align_models::fused_attention::multi_head_attention;
//! use burn::nn::attention::{MhaInput, MultiHeadAttentionConfig};
//! use burn::tensor::{Distribution, Tensor};
//!
//! let device = select_device(Some("flex")).unwrap();
//! let mha = MultiHeadAttentionConfig::new(8, 2).with_dropout(0.0).init(&device);
//! let x = Tensor::<3>::random([2, 5, 8], Distribution::Normal(0.0, 1.0), &device);
//! let fused = multi_head_attention(&mha, x.clone(), x.clone(), None);
//! let plain = mha.forward(MhaInput::self_attn(x)).context;
//! let diff: f32 = (fused - plain).abs().max().into_scalar();
//! assert!(diff < 1e-5);
//! ```

use burn::nn::Linear;
use burn::nn::attention::MultiHeadAttention;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

/// `softmax(Q Kᵀ / √d + M) V` per head through burn's fused `attention` op.
///
/// `mask_pad` marks padded *keys* with `true` (they get weight 0), as in burn-nn's
/// `MhaInput::mask_pad`.
///
/// # Shapes
/// - `q`: `[B, H, N, d]`, `k`: `[B, H, L, d]`, `v`: `[B, H, L, d_v]`, `mask_pad`: `[B, L]`;
///   output `[B, H, N, d_v]`.
pub fn attention_core(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask_pad: Option<Tensor<2, Bool>>,
) -> Tensor<4> {
    let [b, h, n, _] = q.dims();
    let l = k.dims()[2];
    let mask = mask_pad.map(|m| m.reshape([b, 1, 1, l]).expand([b, h, n, l]));
    attention(q, k, v, mask, None, AttentionModuleOptions::default())
}

/// burn-nn's [`MultiHeadAttention`] (its projections and head split) with the core through
/// [`attention_core`]; see the module docs for the formula. Dropout is not applied, nor are
/// the module's `quiet_softmax` and `min_float` settings (every attention of this crate is
/// built with dropout 0 and the plain softmax); masked keys get `−∞`.
///
/// # Shapes
/// - `query`: `[B, N, d_model]`, `key_value`: `[B, L, d_model]`, `mask_pad`: `[B, L]`;
///   output `[B, N, d_model]`.
pub fn multi_head_attention(
    attn: &MultiHeadAttention,
    query: Tensor<3>,
    key_value: Tensor<3>,
    mask_pad: Option<Tensor<2, Bool>>,
) -> Tensor<3> {
    let [b, n, d_model] = query.dims();
    let split = |x: Tensor<3>, linear: &Linear| {
        let [b, len, _] = x.dims();
        linear
            .forward(x)
            .reshape([b, len, attn.n_heads, attn.d_k])
            .swap_dims(1, 2)
    };
    let q = split(query, &attn.query);
    let k = split(key_value.clone(), &attn.key);
    let v = split(key_value, &attn.value);
    let context = attention_core(q, k, v, mask_pad)
        .swap_dims(1, 2)
        .reshape([b, n, d_model]);
    attn.output.forward(context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_core::select_device;
    use burn::module::Module;
    use burn::nn::attention::{MhaInput, MultiHeadAttentionConfig};
    use burn::tensor::{Device, TensorData};
    use proptest::prelude::*;

    fn randn(shape: [usize; 3], seed: u64, device: &Device) -> Tensor<3> {
        // A small deterministic generator (no device RNG state involved).
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// A `[B, L]` padding mask with the first key of every row kept (as a BOS token is).
    fn mask(b: usize, l: usize, bits: u64, device: &Device) -> Tensor<2, Bool> {
        let values: Vec<bool> = (0..b * l)
            .map(|i| i % l != 0 && (bits >> (i % 63)) & 1 == 1)
            .collect();
        Tensor::from_data(TensorData::new(values, [b, l]), device)
    }

    fn max_abs<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The fused path agrees with burn-nn's `MultiHeadAttention::forward` (an independent
        /// implementation of the same formula) on the inner and on the autodiff device, with
        /// and without a padding mask, and its gradients agree too.
        #[test]
        fn matches_burn_nn_attention_and_its_gradients(
            b in 1usize..3, n in 1usize..7, l in 1usize..7, heads in 1usize..4,
            d_k in 1usize..5, masked in any::<bool>(), bits in any::<u64>(), seed in any::<u64>(),
        ) {
            let inner = select_device(Some("flex")).unwrap();
            let train = inner.clone().autodiff();
            let d = heads * d_k;
            inner.seed(seed);
            let mha = MultiHeadAttentionConfig::new(d, heads).with_dropout(0.0).init(&train);
            let x = randn([b, n, d], seed, &train);
            let c = randn([b, l, d], seed ^ 1, &train);
            let m = masked.then(|| mask(b, l, bits, &train));
            let plain_input = |x: Tensor<3>, c: Tensor<3>, m: Option<Tensor<2, Bool>>| {
                let input = MhaInput::new(x, c.clone(), c);
                match m { Some(m) => input.mask_pad(m), None => input }
            };

            // Inference device: the backend's fused kernel.
            let valid = mha.valid();
            let (xv, cv) = (x.clone().inner(), c.clone().inner());
            let mv = masked.then(|| mask(b, l, bits, &inner));
            let fused = multi_head_attention(&valid, xv.clone(), cv.clone(), mv.clone());
            let plain = valid.forward(plain_input(xv, cv, mv)).context;
            prop_assert!(max_abs(fused, plain) < 2e-5);

            // Autodiff device: burn's fallback; outputs and gradients.
            let x = x.require_grad();
            let c = c.require_grad();
            let w = randn([b, n, d], seed ^ 2, &train);
            let fused = multi_head_attention(&mha, x.clone(), c.clone(), m.clone());
            let plain = mha.forward(plain_input(x.clone(), c.clone(), m)).context;
            prop_assert!(max_abs(fused.clone(), plain.clone()) < 2e-5);
            let g_fused = (fused * w.clone()).sum().backward();
            let g_plain = (plain * w).sum().backward();
            let grad = |g: &burn::tensor::Gradients, t: &Tensor<3>| t.grad(g).unwrap();
            prop_assert!(max_abs(grad(&g_fused, &x), grad(&g_plain, &x)) < 1e-4);
            prop_assert!(max_abs(grad(&g_fused, &c), grad(&g_plain, &c)) < 1e-4);
            let wq = |g: &burn::tensor::Gradients| mha.query.weight.val().grad(g).unwrap();
            prop_assert!(max_abs(wq(&g_fused), wq(&g_plain)) < 1e-4);
        }
    }

    /// A row whose keys are all masked (an empty prompt's context) gives zeros, on the
    /// inference device (the backend's kernel) and under autodiff (burn's fallback), with a
    /// finite gradient.
    #[test]
    fn fully_masked_rows_give_zeros_on_both_devices() {
        let inner = select_device(Some("flex")).unwrap();
        let train = inner.clone().autodiff();
        let heads = |d: &Device, seed| randn([1, 6, 4], seed, d).reshape([1, 2, 3, 4]);
        let all = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; 3], [1, 3]), &inner);
        let out = attention_core(
            heads(&inner, 1),
            heads(&inner, 2),
            heads(&inner, 3),
            Some(all),
        );
        assert_eq!(out.abs().max().into_scalar::<f32>(), 0.0);
        let q = heads(&train, 1).require_grad();
        let all = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; 3], [1, 3]), &train);
        let out = attention_core(q.clone(), heads(&train, 2), heads(&train, 3), Some(all));
        assert_eq!(out.clone().abs().max().into_scalar::<f32>(), 0.0);
        let g = q.grad(&out.sum().backward()).unwrap();
        assert!(g.into_data().iter::<f32>().all(f32::is_finite));
    }

    /// A padded key gets exactly zero weight: changing its value changes nothing.
    #[test]
    fn padded_keys_have_no_influence() {
        let device = select_device(Some("flex")).unwrap();
        let mha = MultiHeadAttentionConfig::new(6, 2)
            .with_dropout(0.0)
            .init(&device);
        let x = randn([1, 3, 6], 7, &device);
        let c = randn([1, 4, 6], 8, &device);
        let m = Tensor::<2, Bool>::from_data(
            TensorData::new(vec![false, false, true, true], [1, 4]),
            &device,
        );
        let c2 = c.clone().slice_assign(
            [0..1, 2..4, 0..6],
            Tensor::<3>::full([1, 2, 6], 100.0, &device),
        );
        let a = multi_head_attention(&mha, x.clone(), c, Some(m.clone()));
        let b = multi_head_attention(&mha, x, c2, Some(m));
        assert_eq!(a.into_data(), b.into_data());
    }
}
