#![warn(missing_docs)]
//! # align-samplers
//!
//! Diffusion and flow-matching samplers whose every step is an exact Gaussian policy: each
//! [`Sampler::step`] returns the next latent, its **log-probability**, the Gaussian's mean and
//! standard deviation, and the predicted clean sample — the quantities DDPO, DPOK,
//! Flow-GRPO, SDPO and the preference methods differentiate. Included: DDPM schedules
//! (linear, scaled-linear, squared-cos — computed in floating point) and strided timestep
//! spacings; flow time grids with the SD3 shift; [`DdpmSampler`], [`DdimSampler`] (η),
//! [`FlowEulerSampler`], the marginal-preserving Flow-GRPO SDE ([`FlowSdeSampler`]) and
//! coefficient-preserving sampling ([`CpsSampler`]); classifier-free guidance
//! ([`guided_predict`]); and [`rollout()`] / [`rescore`] / [`replay`] over any
//! [`align_core::Denoiser`], with all noise drawn from host-side keys so that a trajectory
//! replays bit-exactly.
//!
//! Deterministic steps (DDIM with η = 0, the Euler ODE) have no log-density;
//! [`Sampler::step_with_logprob`] refuses them with [`SamplerError::Deterministic`].
//!
//! ## Example
//!
//! One DDIM(η = 1) step from a stored latent, and re-scoring the transition it produced:
//!
//! ```
//! use align_core::{LogProbReduction, NoiseKey, Parameterization, noise_tensor, select_device};
//! use align_samplers::{Sampler, SamplerConfig, Transition};
//!
//! let device = select_device(Some("flex")).unwrap();
//! let sampler = SamplerConfig::ddim(20, 1.0).build().unwrap();
//! let x = noise_tensor(&[NoiseKey::initial(0, 0)], [4, 8, 8], &device).unwrap();
//! let eps = noise_tensor(&[NoiseKey::initial(0, 1)], [4, 8, 8], &device).unwrap(); // a model's ε̂
//! let z = noise_tensor(&[NoiseKey::transition(0, 0, 0)], [4, 8, 8], &device).unwrap();
//! let (next, log_prob, _mean, std) = sampler
//!     .step_with_logprob(0, x.clone(), eps.clone(), Parameterization::Epsilon,
//!                        Transition::Sample(z), LogProbReduction::Mean)
//!     .unwrap();
//! assert!(std > 0.0);
//! let (_, again, _, _) = sampler
//!     .step_with_logprob(0, x, eps, Parameterization::Epsilon,
//!                        Transition::Rescore(next), LogProbReduction::Mean)
//!     .unwrap();
//! assert_eq!(log_prob.into_data(), again.into_data()); // bit-identical
//! ```

pub mod cfg;
pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod error;
pub mod flow;
pub mod flow_grid;
pub mod rollout;
pub mod schedule;
pub mod step;
pub mod toy;

pub use cfg::{cfg_combine, guided_predict};
pub use config::SamplerConfig;
pub use ddim::{DdimSampler, FinalAlpha};
pub use ddpm::{DdpmSampler, DdpmVariance};
pub use error::{Result, SamplerError};
pub use flow::{CpsSampler, FlowEulerSampler, FlowSdeSampler, SigmaSchedule};
pub use flow_grid::{FlowGrid, shift_time};
pub use rollout::{RolloutBatch, RolloutConfig, pathwise_step, replay, rescore, rollout};
pub use schedule::{
    BetaSchedule, NoiseSchedule, TimestepSpacing, squared_cos_alpha_bar, strided_timesteps,
};
pub use step::{Sampler, StepOutput, Transition};
