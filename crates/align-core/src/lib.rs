#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
//! # align-core
//!
//! The foundation of `align`, a library for post-training (aligning) diffusion and
//! flow-matching models toward a reward or human preferences. It treats sampling as a
//! Markov decision process — each denoising step is an action drawn from a Gaussian policy —
//! and provides the pieces every alignment algorithm shares: the [`Trajectory`] record, exact
//! Gaussian log-densities and KL divergences ([`gaussian_log_prob`], [`gaussian_kl`]),
//! advantage estimators ([`batch_advantages`], [`StatTracker`], [`group_advantages`]), the
//! PPO-clip surrogate ([`ppo_clip_loss`]), discounted returns, global-norm gradient clipping
//! ([`clip_grad_norm`]), host-side counter-keyed noise ([`NoiseKey`], [`noise_tensor`]), the
//! [`Denoiser`] trait that models implement, run-time device selection ([`select_device`]) and
//! data parallelism over several devices ([`data_parallel`]: replicas, sharding by global
//! sample id, one `step_multi` step over the devices' gradients). A program built on these crates gets the `align` binaries' CPU speed by
//! calling [`tune_allocator`] first thing in `main` (it keeps freed tensor memory in the
//! process instead of page-faulting it back every step).
//!
//! Conventions (see `docs/architecture.md`): flow time `t ∈ [0, 1]` with `t = 0` data and
//! `t = 1` noise; DDPM in Ho et al. notation; trajectories in generation order; log-probs
//! reduced by [`LogProbReduction::Mean`] unless stated; CFG scale `s` with `s = 1` meaning
//! none; all sampling noise drawn on the host.
//!
//! ## Example
//!
//! Score a Gaussian policy step and turn group rewards into GRPO advantages:
//!
//! ```
//! use align_core::{gaussian_log_prob, group_advantages, GroupStd, LogProbReduction, NoiseKey,
//!                  noise_tensor, select_device};
//!
//! let device = select_device(Some("flex")).unwrap();
//! let mean = noise_tensor(&[NoiseKey::initial(0, 0), NoiseKey::initial(0, 1)], [1, 4, 4], &device).unwrap();
//! let x = mean.clone() + noise_tensor(&[NoiseKey::transition(0, 0, 0), NoiseKey::transition(0, 1, 0)], [1, 4, 4], &device).unwrap().mul_scalar(0.5);
//! let log_prob = gaussian_log_prob(x, mean, 0.5, LogProbReduction::Mean); // shape [2]
//! assert_eq!(log_prob.dims(), [2]);
//!
//! let adv = group_advantages(&[0.0, 1.0, 1.0, 1.0], &[7, 7, 8, 8], GroupStd::Group, 1e-4).unwrap();
//! assert!(adv[0] < 0.0 && adv[1] > 0.0 && adv[2] == 0.0);
//! ```
//!
//! ## Feature flags
//!
//! - `flex`: burn's pure-Rust CPU backend with SIMD and rayon (the default of the CLI).
//! - `ndarray`: the older CPU backend, for cross-checks.
//! - `wgpu`: wgpu (any GPU, or Mesa lavapipe on a CPU) with fusion and autotune.
//! - `cuda`: NVIDIA GPUs (its build downloads LLVM; not buildable offline).
//!
//! Library crates never enable a backend; binaries and tests do.

pub mod advantages;
pub mod allocator;
pub mod clip;
pub mod data_parallel;
pub mod denoiser;
pub mod device;
pub mod ema;
pub mod error;
pub mod gaussian;
pub mod noise;
pub mod ppo;
pub mod run_lock;
pub mod runner;
pub mod trajectory;

pub use advantages::{
    GroupStd, PromptStatTracker, StatTracker, StepPromptStatTracker, batch_advantages,
    clip_advantages, discounted_returns, group_advantages,
};
pub use allocator::{AllocatorTuning, tune_allocator};
pub use clip::{clip_grad_norm, clip_grad_norm_parts, global_grad_norm, scale_gradients};
pub use data_parallel::{Gradients, Replicas};
pub use denoiser::{Condition, Denoiser, Parameterization};
pub use device::{
    Backend, DEVICE_ENV, compiled_backends, device_for, is_host_array_device, resolve_backend,
    select_device,
};
pub use ema::{Ema, EmaConfig};
pub use error::{CoreError, Result};
pub use gaussian::{
    LogProbReduction, gaussian_kl, gaussian_kl_diag, gaussian_log_prob, gaussian_log_prob_diag,
    k3_kl,
};
pub use noise::{NoiseKey, noise_tensor, standard_normal};
pub use ppo::{PpoClipOutput, ppo_clip_loss};
pub use run_lock::{LOCK_FILE, LockHolder, RunLock};
pub use runner::{
    Control, Job, Metrics, RunOutcome, Runner, RunnerConfig, burnpack_digest, path_param_ids,
    trainable_paths,
};
pub use trajectory::Trajectory;

/// The device tests run on: `BURN_DEVICE` if set (so `cargo xtask test --backend ndarray`
/// reruns the same tests on another backend), else `flex`.
///
/// # Panics
/// If `BURN_DEVICE` names a backend that is not compiled in — in a test that is the right
/// outcome.
#[doc(hidden)]
pub fn test_device() -> burn::tensor::Device {
    match select_device(None) {
        Ok(device) => device,
        Err(e) => panic!("test device: {e}"),
    }
}
