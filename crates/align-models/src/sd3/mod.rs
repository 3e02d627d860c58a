//! Stable Diffusion 3 / 3.5 components in diffusers' layout: the multimodal diffusion
//! transformer [`MmDit`] (`SD3Transformer2DModel`), a flow-matching (velocity) denoiser on
//! 16-channel latents. Loaded from a diffusers `transformer/` directory; its parameter paths
//! are the checkpoint's tensor names up to [`MMDIT_REMAP`].
//!
//! Work in progress toward the SD3 pipeline (VAE, CLIP and T5 text encoders, scheduler):
//! the transformer alone is here so far.

pub mod mmdit;

pub use mmdit::{
    AdaNorm, JointAttention, JointBlock, MMDIT_REMAP, MmDit, MmDitConfig, PatchEmbed, RmsNorm,
    TanhFeedForward, TimeTextEmbed, TwoLayer,
};
