//! Stable Diffusion 3 / 3.5 components in diffusers' layout: the multimodal diffusion
//! transformer [`MmDit`] (`SD3Transformer2DModel`), a flow-matching (velocity) denoiser on
//! 16-channel latents. Loaded from a diffusers `transformer/` directory; its parameter paths
//! are the checkpoint's tensor names up to [`MMDIT_REMAP`].
//!
//! The T5 v1.1 text encoder ([`T5Encoder`], transformers' `T5EncoderModel`) is SD3's third
//! text tower. The VAE is [`crate::sd::AutoencoderKl`] (16 latent channels, no quant
//! convolutions, `shift_factor`), the schedule `align_samplers::FlowGrid::flow_match_euler`.
//! [`StableDiffusion3`] loads a whole diffusers SD3 / SD3.5 directory (the two CLIP towers
//! with projections, T5 optional, their tokenizers — T5's through the `tokenizers` crate) and
//! is a flow-matching [`crate::Pipeline`], so the flow algorithms (Flow-GRPO, DenseGRPO,
//! reward backprop, the flow-matching preference losses) run on it through the training job.

pub mod mmdit;
pub mod pipeline;
pub mod prompt;
pub mod t5;
pub mod tokenizer;

pub use mmdit::{
    AdaNorm, JointAttention, JointBlock, MMDIT_REMAP, MMDIT_REMAP_SAVE, MmDit, MmDitConfig,
    PatchEmbed, RmsNorm, TanhFeedForward, TimeTextEmbed, TwoLayer,
};
pub use pipeline::{FlowMatchSchedulerConfig, Sd3Options, StableDiffusion3, is_sd3_dir};
pub use prompt::{T5Part, sd3_condition};
pub use t5::{T5Config, T5Encoder, relative_position_bucket};
pub use tokenizer::T5Tokenizer;
