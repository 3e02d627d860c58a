#![warn(missing_docs)]
//! # align-pref
//!
//! Preference optimisation for diffusion and flow models from offline data, for ε-, v- and
//! flow-velocity models alike: Diffusion-DPO with paired noise and timestep
//! ([`diffusion_dpo_loss`]), the reference-free MaPO ([`mapo_loss`]), Diffusion-KTO from
//! unpaired binary feedback ([`kto_loss`]) and reward-weighted regression ([`rwr_loss`]) —
//! built on the forward process at given noise levels and per-sample denoising errors
//! ([`NoiseLevels`], [`denoising_errors`]) — and D3PO on stored trajectories, step by step,
//! with the samplers' exact transition log-probs ([`d3po_step_loss`]); and the black-box
//! route, Preference Flow Matching ([`pfm_loss`], [`pfm_transport`]), which leaves the base
//! model untouched. Preference datasets are in `align_data::preference`; `align pref-data` and
//! `align pref-train` drive these losses.
//!
//! SPO compares candidate steps from a shared state and resamples the chain
//! ([`spo_candidates`], [`spo_select`], [`spo_step_loss`], [`spo_resample`]); DSPO turns pairs
//! into a score-matching loss on the winner ([`dspo_loss`]; see its module for the source of
//! the formula).
//!
//! ## Example
//!
//! At initialisation (policy = reference) the loss is exactly `ln 2`.
//!
//! ```
//! use align_core::{select_device, Condition, Denoiser, Parameterization};
//! use align_pref::{diffusion_dpo_loss, DpoBatch, NoiseLevels, DIFFUSION_DPO_BETA};
//! use burn::tensor::Tensor;
//!
//! struct Half;
//! impl Denoiser for Half {
//!     fn parameterization(&self) -> Parameterization { Parameterization::FlowVelocity }
//!     fn predict(&self, x: Tensor<4>, _t: Tensor<1>, _c: &Condition) -> Tensor<4> { x * 0.5 }
//! }
//!
//! let device = select_device(Some("flex")).unwrap();
//! let levels = NoiseLevels::flow(&[0.3, 0.8]).unwrap();
//! let cond = Condition::new(Tensor::zeros([2, 1, 1], &device));
//! let out = diffusion_dpo_loss(&Half, &Half, DpoBatch {
//!     winners: Tensor::ones([2, 3, 4, 4], &device),
//!     losers: Tensor::zeros([2, 3, 4, 4], &device),
//!     noise: Tensor::ones([2, 3, 4, 4], &device) * 0.1,
//!     levels: &levels,
//!     condition: &cond,
//!     reference_condition: None,
//! }, DIFFUSION_DPO_BETA).unwrap();
//! let loss: f32 = out.loss.into_scalar();
//! assert!((loss - std::f32::consts::LN_2).abs() < 1e-7);
//! assert_eq!(out.implicit_accuracy, 0.0);
//! ```

pub mod d3po;
pub mod diffusion_dpo;
pub mod dspo;
pub mod error;
pub mod kto;
pub mod mapo;
pub mod noising;
pub mod pfm;
pub mod rwr;
pub mod spo;

pub use d3po::{D3poSide, d3po_step_loss};
pub use diffusion_dpo::{DIFFUSION_DPO_BETA, DpoBatch, DpoOutput, diffusion_dpo_loss};
pub use dspo::{DSPO_BETA, DspoOutput, dspo_loss};
pub use error::{PrefError, Result};
pub use kto::{KtoBatch, KtoConfig, KtoOutput, ReferencePoint, kto_loss};
pub use mapo::{MapoConfig, MapoOutput, mapo_loss};
pub use noising::{NoiseLevels, denoising_errors, denoising_residuals};
pub use pfm::{ResidualFlow, pfm_loss, pfm_transport};
pub use rwr::{RewardWeighting, rwr_loss, rwr_weights};
pub use spo::{SpoState, spo_candidates, spo_resample, spo_select, spo_step_loss};
