//! Stable Diffusion 1.x / 2.x components in diffusers' layout: the text-conditioned
//! [`UNet2DCondition`] denoiser and the [`AutoencoderKl`] VAE.
//!
//! Both load a component directory of a diffusers pipeline (`unet/`, `vae/`: `config.json` +
//! `diffusion_pytorch_model.safetensors`) and reproduce diffusers 0.42's forward passes in f32.
//! Their burn parameter paths are diffusers' tensor names, up to a few regex remappings
//! ([`UNET_REMAP`], [`VAE_REMAP`]) for names that cannot be Rust fields (`to_out.0`,
//! `ff.net.2`) and for the attention names of old VAE checkpoints (`query`, `proj_attn`, …).
//!
//! - [`blocks`]: `ResnetBlock2D`, `Downsample2D`, `Upsample2D`;
//! - [`transformer`]: `Attention`, the GEGLU `FeedForward`, `BasicTransformerBlock`,
//!   `Transformer2DModel`;
//! - [`unet`]: [`UNet2DConditionConfig`] (diffusers' `unet/config.json`) and the UNet;
//! - [`vae`]: [`AutoencoderKlConfig`] (`vae/config.json`), [`Encoder`], [`Decoder`],
//!   [`AutoencoderKl`] and the posterior [`DiagonalGaussian`].
//!
//! The UNet's attention projections are plain burn `Linear`s: LoRA targets them with
//! [`crate::LoraConfig`]`::new().with_targets(`[`UNET_LORA_TARGETS`]`)` (see
//! [`crate::apply_lora`]).

pub mod blocks;
pub mod config;
pub mod transformer;
pub mod unet;
pub mod vae;

#[cfg(test)]
mod tests;

pub use blocks::{ResnetBlock2D, ResnetBlock2DConfig};
pub use config::PerBlock;
pub use transformer::{
    Attention, AttentionConfig, BasicTransformerBlock, FeedForward, Projection, Transformer2DModel,
    Transformer2DModelConfig,
};
pub use unet::{
    UNET_LORA_TARGETS, UNET_REMAP, UNet2DCondition, UNet2DConditionConfig, get_timestep_embedding,
};
pub use vae::{AutoencoderKl, AutoencoderKlConfig, Decoder, DiagonalGaussian, Encoder, VAE_REMAP};
