//! The T5 v1.1 text encoder Stable Diffusion 3 uses as its third text tower
//! (transformers' `T5EncoderModel`, `google/t5-v1_1-xxl`), laid out so that burn's parameter
//! paths are the checkpoint's tensor names (`encoder.block.0.layer.0.SelfAttention.q.weight`).
//!
//! ```text
//! h = E[ids]                                              (no scaling)
//! block l:  h += O · Attn(RMS(h))      scores = Q Kᵀ + bias (no 1/√d), bias from layer 0's
//!                                      bucketed relative positions, shared by every layer
//!           h += W_o (gelu_tanh(W_i0 RMS(h)) ⊙ W_i1 RMS(h))
//! out = RMS(h)                                           RMS(x) = x / √(mean(x²) + ε) · w
//! ```
//!
//! Relative positions `m − q` are bucketed as T5 does for a bidirectional encoder: half the
//! buckets for each sign; within a half, distances below `B/4` get their own bucket and larger
//! ones share logarithmically spaced buckets up to `max_distance`.

use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use serde::{Deserialize, Serialize};

use super::mmdit::gelu_tanh;
use crate::error::Result;
use crate::sd::config::require;

fn d_eps() -> f64 {
    1e-6
}
fn d_gated() -> String {
    "gated-gelu".into()
}

/// transformers' `T5Config` (the fields the encoder reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub d_model: usize,
    /// Width of one head.
    pub d_kv: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Heads.
    pub num_heads: usize,
    /// Relative-position buckets.
    pub relative_attention_num_buckets: usize,
    /// Largest distance with its own logarithmic bucket range.
    pub relative_attention_max_distance: usize,
    /// RMS-norm ε.
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    /// Must be `gated-gelu` (T5 v1.1).
    #[serde(default = "d_gated")]
    pub feed_forward_proj: String,
}

impl T5Config {
    /// Checks what the encoder supports, naming the field.
    ///
    /// # Errors
    /// [`crate::ModelError::Config`] for zero sizes, fewer than 4 buckets, or a
    /// feed-forward other than `gated-gelu`.
    pub fn validate(&self) -> Result<()> {
        use crate::hf::{MAX_COUNT, MAX_TABLE, MAX_WIDTH};
        crate::hf::check_sizes(&[
            ("vocab_size", self.vocab_size, MAX_TABLE),
            ("d_model", self.d_model, MAX_WIDTH),
            ("d_kv", self.d_kv, MAX_WIDTH),
            ("d_ff", self.d_ff, MAX_WIDTH),
            ("num_layers", self.num_layers, MAX_COUNT),
            ("num_heads", self.num_heads, MAX_COUNT),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
                MAX_TABLE,
            ),
        ])?;
        for (v, f) in [
            (self.vocab_size, "vocab_size"),
            (self.d_model, "d_model"),
            (self.d_kv, "d_kv"),
            (self.d_ff, "d_ff"),
            (self.num_layers, "num_layers"),
            (self.num_heads, "num_heads"),
            (
                self.relative_attention_max_distance,
                "relative_attention_max_distance",
            ),
        ] {
            require(v > 0, f, || "must be positive".into())?;
        }
        require(
            self.relative_attention_num_buckets >= 4,
            "relative_attention_num_buckets",
            || "must be at least 4".into(),
        )?;
        require(
            self.feed_forward_proj == "gated-gelu",
            "feed_forward_proj",
            || {
                format!(
                    "`{}` is not supported (T5 v1.1's gated-gelu)",
                    self.feed_forward_proj
                )
            },
        )
    }

    /// Initialises the encoder.
    ///
    /// # Errors
    /// As [`T5Config::validate`].
    pub fn init(&self, device: &Device) -> Result<T5Encoder> {
        self.validate()?;
        let inner = self.num_heads * self.d_kv;
        let lin = |i: usize, o: usize| LinearConfig::new(i, o).with_bias(false).init(device);
        let norm = || T5Norm {
            weight: Initializer::Ones.init([self.d_model], device),
        };
        let block = (0..self.num_layers)
            .map(|i| T5Block {
                layer: (
                    T5AttentionLayer {
                        self_attention: T5Attention {
                            q: lin(self.d_model, inner),
                            k: lin(self.d_model, inner),
                            v: lin(self.d_model, inner),
                            o: lin(inner, self.d_model),
                            relative_attention_bias: (i == 0).then(|| {
                                EmbeddingConfig::new(
                                    self.relative_attention_num_buckets,
                                    self.num_heads,
                                )
                                .init(device)
                            }),
                        },
                        layer_norm: norm(),
                    },
                    T5FeedForwardLayer {
                        dense_relu_dense: T5GatedFeedForward {
                            wi_0: lin(self.d_model, self.d_ff),
                            wi_1: lin(self.d_model, self.d_ff),
                            wo: lin(self.d_ff, self.d_model),
                        },
                        layer_norm: norm(),
                    },
                ),
            })
            .collect();
        Ok(T5Encoder {
            shared: EmbeddingConfig::new(self.vocab_size, self.d_model).init(device),
            encoder: T5Stack {
                block,
                final_layer_norm: norm(),
            },
            config: self.clone(),
        })
    }
}

/// T5's RMS norm (no mean subtraction, no bias).
#[derive(Module, Debug)]
pub struct T5Norm {
    /// Per-channel scale.
    pub weight: Param<Tensor<1>>,
}

impl T5Norm {
    fn forward(&self, x: Tensor<3>, eps: f64) -> Tensor<3> {
        let rms = x.clone().square().mean_dim(2).add_scalar(eps).sqrt();
        (x / rms) * self.weight.val().unsqueeze::<3>()
    }
}

/// Self-attention with T5's relative position bias (in the first layer only).
#[derive(Module, Debug)]
pub struct T5Attention {
    /// Queries.
    pub q: Linear,
    /// Keys.
    pub k: Linear,
    /// Values.
    pub v: Linear,
    /// Output.
    pub o: Linear,
    /// `[buckets, heads]` bias table (layer 0).
    pub relative_attention_bias: Option<Embedding>,
}

/// `layer.0` of a block: norm + self-attention.
#[derive(Module, Debug)]
pub struct T5AttentionLayer {
    /// transformers' `SelfAttention`.
    pub self_attention: T5Attention,
    /// Pre-norm.
    pub layer_norm: T5Norm,
}

/// The gated-GELU feed-forward (transformers' `DenseReluDense`).
#[derive(Module, Debug)]
pub struct T5GatedFeedForward {
    /// Gate projection (through GELU).
    pub wi_0: Linear,
    /// Linear projection.
    pub wi_1: Linear,
    /// Output.
    pub wo: Linear,
}

/// `layer.1` of a block: norm + feed-forward.
#[derive(Module, Debug)]
pub struct T5FeedForwardLayer {
    /// transformers' `DenseReluDense`.
    pub dense_relu_dense: T5GatedFeedForward,
    /// Pre-norm.
    pub layer_norm: T5Norm,
}

/// One encoder block (`layer.0`, `layer.1`).
#[derive(Module, Debug)]
pub struct T5Block {
    /// The attention and feed-forward layers.
    pub layer: (T5AttentionLayer, T5FeedForwardLayer),
}

/// The encoder stack.
#[derive(Module, Debug)]
pub struct T5Stack {
    /// Blocks.
    pub block: Vec<T5Block>,
    /// Final norm.
    pub final_layer_norm: T5Norm,
}

/// transformers' `T5EncoderModel`.
#[derive(Module, Debug)]
pub struct T5Encoder {
    /// Token embedding (`shared`; `encoder.embed_tokens` in the file is the same table).
    pub shared: Embedding,
    /// The encoder.
    pub encoder: T5Stack,
    #[module(skip)]
    config: T5Config,
}

/// T5's bidirectional relative-position bucket of `relative = memory − query`.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.abs();
    let max_exact = half / 2;
    bucket += if n < max_exact {
        n
    } else {
        // float32 maths then truncation, as transformers computes it.
        // (transformers divides a float32 tensor by a Python float: the log of the distance
        // ratio is taken in f64 and rounded to f32.)
        let denom = (max_distance as f64 / max_exact as f64).ln() as f32;
        let ratio = ((n as f32 / max_exact as f32).ln() / denom * (half - max_exact) as f32) as i64;
        (max_exact + ratio).min(half - 1)
    };
    bucket as usize
}

impl T5Encoder {
    /// Loads a transformers `T5EncoderModel` directory (`config.json` + `model.safetensors`).
    ///
    /// # Errors
    /// [`crate::ModelError::Checkpoint`] naming a missing or unfitting file;
    /// [`crate::ModelError::Config`] for unsupported settings.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join("config.json");
        let config: T5Config = crate::hf::read_config(&path)?;
        let model = config
            .init(device)
            .map_err(|e| crate::hf::in_file(&path, e))?;
        crate::hf::load_pytorch_safetensors(
            model,
            &dir.join("model.safetensors"),
            &[
                (r"\.layer\.0\.SelfAttention\.", ".layer.0.self_attention."),
                (
                    r"\.layer\.1\.DenseReluDense\.",
                    ".layer.1.dense_relu_dense.",
                ),
            ],
            &[r"^encoder\.embed_tokens\.weight$"],
        )
    }

    /// The configuration.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// The bias `[1, heads, n, n]` of layer 0's table for `n` tokens.
    fn position_bias(&self, table: &Embedding, n: usize, device: &Device) -> Tensor<4> {
        let c = &self.config;
        let buckets: Vec<i64> = (0..n)
            .flat_map(|q| {
                (0..n).map(move |m| {
                    relative_position_bucket(
                        m as i64 - q as i64,
                        c.relative_attention_num_buckets,
                        c.relative_attention_max_distance,
                    ) as i64
                })
            })
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(buckets, [n, n]), device);
        // [1, n·n] → [1, n·n, heads] → [1, heads, n, n]
        table
            .forward(ids.reshape([1, n * n]))
            .reshape([1, n, n, c.num_heads])
            .permute([0, 3, 1, 2])
    }

    /// The last hidden states.
    ///
    /// # Shapes
    /// - `ids`: `[B, L]`; output `[B, L, d_model]`. No attention mask, as SD3's pipeline
    ///   encodes its padded T5 prompt.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let c = &self.config;
        let [b, n] = ids.dims();
        let device = ids.device();
        let mut h = self.shared.forward(ids);
        let eps = c.layer_norm_epsilon;
        let mut bias: Option<Tensor<4>> = None;
        for block in &self.encoder.block {
            let (att, ff) = &block.layer;
            let a = &att.self_attention;
            if bias.is_none()
                && let Some(table) = &a.relative_attention_bias
            {
                bias = Some(self.position_bias(table, n, &device));
            }
            let x = att.layer_norm.forward(h.clone(), eps);
            let split = |t: Tensor<3>| t.reshape([b, n, c.num_heads, c.d_kv]).swap_dims(1, 2);
            let q = split(a.q.forward(x.clone()));
            let k = split(a.k.forward(x.clone()));
            let v = split(a.v.forward(x));
            // softmax(q·kᵀ + bias)·v, unscaled as in T5, through burn's fused attention op
            // (see `crate::fused_attention`).
            let options = AttentionModuleOptions {
                scale: Some(1.0),
                ..Default::default()
            };
            let full_bias = bias.clone().map(|t| t.expand([b, c.num_heads, n, n]));
            let out = attention(q, k, v, None, full_bias, options)
                .swap_dims(1, 2)
                .reshape([b, n, c.num_heads * c.d_kv]);
            h = h + a.o.forward(out);
            let x = ff.layer_norm.forward(h.clone(), eps);
            let f = &ff.dense_relu_dense;
            let gated = gelu_tanh(f.wi_0.forward(x.clone())) * f.wi_1.forward(x);
            h = h + f.wo.forward(gated);
        }
        self.encoder.final_layer_norm.forward(h, eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::{fixtures_dir, max_relative_error, read_safetensors};

    /// The same checkpoint saved in two shards with a `model.safetensors.index.json` (as the
    /// Hugging Face libraries save T5-XXL) loads into the same model; a missing shard and an
    /// index pointing outside its directory are named.
    #[test]
    fn sharded_checkpoints_load_like_single_files() {
        let device = align_core::test_device();
        let src = fixtures_dir().join("sd3-tiny/text_encoder_3");
        let single = T5Encoder::load(&src, &device).unwrap();
        let dir = std::env::temp_dir().join(format!("align-t5-shards-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        let tensors = read_safetensors(&src.join("model.safetensors")).unwrap();
        let mut shards: [Vec<(&str, burn::tensor::TensorData)>; 2] = [Vec::new(), Vec::new()];
        let mut map = serde_json::Map::new();
        for (i, (name, data)) in tensors.iter().enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
            shards[i % 2].push((name.as_str(), data.clone()));
            map.insert(name.clone(), serde_json::Value::String(file));
        }
        for (i, shard) in shards.iter().enumerate() {
            let file = dir.join(format!("model-0000{}-of-00002.safetensors", i + 1));
            crate::lora_file::save_tensors(&file, shard).unwrap();
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map}).to_string();
        std::fs::write(dir.join("model.safetensors.index.json"), &index).unwrap();
        let sharded = T5Encoder::load(&dir, &device).unwrap();
        let ids = Tensor::<2, Int>::from_ints([[3, 7, 1, 0], [5, 2, 9, 1]], &device);
        assert_eq!(
            sharded.forward(ids.clone()).into_data(),
            single.forward(ids).into_data()
        );
        std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
        let err = T5Encoder::load(&dir, &device).unwrap_err().to_string();
        assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
        let outside = index.replace("model-00001-of-00002.safetensors", "../x.safetensors");
        std::fs::write(dir.join("model.safetensors.index.json"), outside).unwrap();
        let err = T5Encoder::load(&dir, &device).unwrap_err().to_string();
        assert!(
            err.contains("index.json") && err.contains("weight_map"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A tiny T5 v1.1 encoder built by transformers (`scripts/make-sd3-fixtures.py`): its last
    /// hidden states on a padded batch (no mask, as SD3 encodes) and on a 45-token sequence,
    /// long enough for the logarithmic buckets; and the bucket table itself.
    #[test]
    fn tiny_t5_matches_transformers() {
        let device = align_core::test_device();
        let dir = fixtures_dir().join("sd3-tiny");
        let r = read_safetensors(&dir.join("reference.safetensors")).unwrap();
        let t5 = T5Encoder::load(&dir.join("text_encoder_3"), &device).unwrap();
        for case in ["t5", "t5.long"] {
            let ids: Vec<i64> = r[&format!("{case}.input_ids")]
                .clone()
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|&v| v as i64)
                .collect();
            let shape = r[&format!("{case}.input_ids")].shape().to_vec();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, shape), &device);
            let out = t5.forward(ids).into_data();
            let err = max_relative_error(&out, &r[&format!("{case}.last_hidden_state")]).unwrap();
            assert!(err < 1e-5, "{case}: {err}");
        }
        let table = r["t5.long.position_bucket"]
            .clone()
            .try_to_vec::<f32>()
            .unwrap();
        let c = t5.config();
        for q in 0..45 {
            for m in 0..45 {
                let b = relative_position_bucket(
                    m as i64 - q as i64,
                    c.relative_attention_num_buckets,
                    c.relative_attention_max_distance,
                );
                assert_eq!(b as f32, table[q * 45 + m], "q {q}, m {m}");
            }
        }
    }

    /// SD3's own bucket settings (32 buckets, max distance 128) at the boundaries transformers
    /// gives (16 → 26, 32 → 28, 64 → 30, ≥ 128 → 31 for positive distances; negative ones in
    /// the lower half).
    #[test]
    fn buckets_at_sd3_settings() {
        for (rel, bucket) in [
            (0, 0),
            (1, 17),
            (7, 23),
            (16, 26),
            (32, 28),
            (64, 30),
            (128, 31),
            (1000, 31),
            (-1, 1),
            (-16, 10),
            (-1000, 15),
        ] {
            assert_eq!(relative_position_bucket(rel, 32, 128), bucket, "{rel}");
        }
    }
}
