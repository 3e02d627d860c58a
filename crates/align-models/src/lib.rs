#![warn(missing_docs)]
//! # align-models
//!
//! The denoisers `align` post-trains, written for burn 0.22: a text-conditioned [`UNet`] for
//! ε- or v-prediction (ResBlocks with GroupNorm, self- and cross-attention, sinusoidal
//! timestep embeddings), a diffusion transformer [`DiT`] with adaLN-Zero blocks for flow
//! matching, and a small [`TextEncoder`] that turns token ids into the
//! [`align_core::Condition`] both models cross-attend to. Both models implement
//! [`align_core::Denoiser`], so every sampler and algorithm of the workspace drives them.
//!
//! Real checkpoints load from the files the Hugging Face libraries write ([`hf`]): [`sd`] holds
//! Stable Diffusion 1.x's `UNet2DConditionModel` and `AutoencoderKL`, [`clip`] the CLIP
//! tokenizer, text and vision towers and `CLIPModel`, and [`StableDiffusion`] bundles a
//! diffusers pipeline directory into a [`align_core::Denoiser`] on latents, so every algorithm
//! of the workspace runs on it (docs/real-models.md). [`sd3`] does the same for Stable
//! Diffusion 3 / 3.5: the MMDiT, the T5 encoder and its `tokenizer.json`, and
//! [`sd3::StableDiffusion3`], a flow-matching pipeline for Flow-GRPO and the other flow
//! algorithms.
//!
//! LoRA ([`apply_lora`], [`with_lora_scale`] for the adapters-off reference) goes to and from
//! the files other tools use through [`lora_file`]: [`save_lora`] writes a PEFT adapter
//! directory or diffusers' `pytorch_lora_weights.safetensors`, [`read_lora`] reads either
//! (and the older `lora.down`/`lora.up` names) and [`apply_lora_weights`] attaches the read
//! adapter to a model; [`sd::UNet2DCondition::save_weights`] writes merged weights in
//! diffusers' layout.
//!
//! Where burn leaves CPU speed on the table, the models use their own operations, each tested
//! against burn's: [`fused_attention`] (burn's fused `attention` op for the attention core),
//! [`group_norm`] (GroupNorm through the backend's layer-norm kernel) and [`activation`] (GELU
//! and SiLU as vectorised host code, with exact gradients under autodiff); docs/benchmarks.md
//! has the measurements.
//!
//! Configs follow burn's `XConfig` → `init(&device)` → `X::forward` pattern and have named
//! presets: `tiny()` for tests, `small()` for the shipped Shapes-world models.
//!
//! ## Example
//!
//! ```
//! use align_core::{Denoiser, Parameterization, select_device};
//! use align_models::{DiTConfig, TextEncoderConfig};
//! use burn::tensor::Tensor;
//!
//! let device = select_device(Some("flex")).unwrap();
//! let text = TextEncoderConfig::tiny(12, 6).init(&device).unwrap();
//! let dit = DiTConfig::tiny().init(&device).unwrap();
//! let cond = text.encode(&[vec![3, 5, 7, 0, 0, 0]], &device).unwrap();
//! let x = Tensor::<4>::ones([1, 3, 8, 8], &device);
//! let v = dit.predict(x, Tensor::from_floats([0.5], &device), &cond);
//! assert_eq!(v.dims(), [1, 3, 8, 8]);
//! assert_eq!(dit.parameterization(), Parameterization::FlowVelocity);
//! ```

pub mod activation;
pub mod attention;
pub mod checkpoint;
pub mod clip;
pub mod dit;
pub mod ema;
pub mod error;
pub mod fused_attention;
pub mod group_norm;
pub mod hf;
pub mod lora;
pub mod lora_file;
pub mod pipeline;
pub mod pretrain;
pub mod resblock;
pub mod sd;
pub mod sd3;
pub mod shapes;
pub mod stable_diffusion;
pub mod text_encoder;
pub mod timestep;
pub mod unet;

pub use attention::{
    CrossAttention, CrossAttentionConfig, SpatialTransformer, SpatialTransformerConfig,
};
pub use checkpoint::{load_safetensors, save_safetensors, warm_start_safetensors};
pub use dit::{DiT, DiTBlock, DiTConfig};
pub use ema::{Ema, EmaConfig};
pub use error::{ModelError, Result};
pub use lora::{
    LoraConfig, apply_lora, apply_lora_exact, lora_factor_count, lora_parameter_count,
    rescale_lora, with_lora_scale,
};
pub use lora_file::{
    BurnNaming, LoraFactors, LoraFormat, LoraNaming, LoraWeights, Sd3TransformerNaming,
    SdUnetNaming, WeightDtype, apply_lora_weights, lora_weights, read_lora, save_lora,
};
pub use pipeline::Pipeline;
pub use pretrain::{
    cfg_dropout, ddpm_loss, flow_matching_loss, min_snr_weight, weighted_ddpm_loss,
};
pub use resblock::{ResBlock, ResBlockConfig};
pub use shapes::{
    BatchDraws, DenoiserKind, Preset, SampleRequest, ShapesModel, ShapesModelConfig, TextToImage,
};
pub use stable_diffusion::{SchedulerConfig, StableDiffusion};
pub use text_encoder::{PAD_ID, TextEncoder, TextEncoderConfig};
pub use timestep::{TimestepMlp, TimestepMlpConfig, timestep_embedding};
pub use unet::{UNet, UNetBlock, UNetConfig, UNetLevel};
