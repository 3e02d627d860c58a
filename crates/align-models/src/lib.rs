#![warn(missing_docs)]
//! # align-models
//!
//! The denoisers `align` post-trains: an ε-/v-prediction UNet (ResBlocks, GroupNorm, self-
//! and cross-attention, sinusoidal timestep embedding), a DiT with adaLN-Zero blocks for flow
//! matching, and a small text encoder for the Shapes world — each implementing
//! [`align_core::Denoiser`] — with LoRA through burn's `apply_lora` (the reference policy is
//! "adapters off"), pretraining losses and safetensors checkpoints.
//!
//! **Status:** not yet implemented (tracked by the "Shapes world and models" issue). This crate
//! holds only its documentation so that the workspace's dependency graph is final.
