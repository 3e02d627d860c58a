#![warn(missing_docs)]
//! # align-rewards
//!
//! Rewards for aligning diffusion and flow models. A [`Reward`] maps a batch of generated
//! images `x: [B, 3, H, W]` with values in **`[-1, 1]`** and their `B` prompts to `B` finite
//! scores `r(x_b, c_b)`; a differentiable reward can also return the scores as a `[B]` tensor
//! whose gradients reach the pixels (for direct reward backpropagation).
//!
//! Provided rewards:
//!
//! - [`ShapeEvalReward`]: the exact Shapes-world verifier as a gold reward (pass / fail, or
//!   partial credit over the prompt's attributes).
//! - [`Jpeg`]: DDPO's JPEG compressibility (`−kB`) and incompressibility (`kB`) at quality 95.
//! - [`Brightness`], [`Saturation`], [`Contrast`]: differentiable aesthetic proxies.
//! - [`ClipScore`], [`PickScore`], [`AestheticPredictor`]: learned, differentiable rewards
//!   from CLIP checkpoints in the transformers layout — the CLIP score `100·max(cos, 0)`, the
//!   PickScore/HPS-style `exp(logit_scale)·cos`, and LAION's aesthetic MLP head on the CLIP
//!   image embedding (see [`clip_rewards`]).
//! - [`Ensemble`]: members normalised ([`Normalize`]: none, batch z-score, running z-score),
//!   aggregated ([`Aggregate`]: weighted mean, min, mean − k·std), then hard [`Penalty`]s
//!   `R −= λ · q` subtracted on their raw scale. An ensemble is differentiable when all its
//!   members and penalties are.
//! - [`CommandReward`], [`HttpReward`]: scorers outside Rust, reached through a local program
//!   or an HTTP service (PNGs + prompts in, `{"scores": [...]}` out; this machine unless asked
//!   otherwise), with timeouts, batching and retries.
//!
//! [`HackingMonitor`] watches a run for reward hacking: proxy up while gold goes down, and
//! same-prompt diversity collapse ([`same_prompt_diversity`]).
//!
//! ## Example
//!
//! Score a batch with a differentiable proxy and with an ensemble:
//!
//! ```
//! use align_rewards::{Aggregate, Brightness, Contrast, Ensemble, Jpeg, Normalize, Reward};
//! use burn::prelude::*;
//!
//! let device = align_core::test_device();
//! // Two 8×8 images: one dark (−0.5 everywhere), one bright (0.5 everywhere).
//! let dark = Tensor::<4>::full([1, 3, 8, 8], -0.5, &device);
//! let bright = Tensor::<4>::full([1, 3, 8, 8], 0.5, &device);
//! let images = Tensor::cat(vec![dark, bright], 0);
//! let prompts = vec!["a dark image".to_string(), "a bright image".to_string()];
//!
//! let brightness = Brightness.score(&images, &prompts)?;
//! assert!((brightness[0] - 0.25).abs() < 1e-6 && (brightness[1] - 0.75).abs() < 1e-6);
//!
//! // z-scored brightness, minus a hard penalty of 0.1 per kB of JPEG.
//! let ensemble = Ensemble::new(Normalize::batch_z(), Aggregate::WeightedMean)?
//!     .member(Brightness, 1.0)?
//!     .member(Contrast, 0.0)? // weight 0: reported, but takes no part
//!     .penalty(Jpeg::incompressibility(), 0.1)?;
//! let scores = ensemble.score(&images, &prompts)?;
//! let kb = Jpeg::incompressibility().score(&images, &prompts)?;
//! assert!((scores[1] - (1.0 - 0.1 * kb[1])).abs() < 1e-6);
//! # Ok::<(), align_rewards::RewardError>(())
//! ```
//!
//! ## Modules
//!
//! - [`reward`]: the [`Reward`] trait and tensor ↔ [`align_data::Image`] helpers.
//! - [`shape_eval`], [`jpeg`], [`aesthetic`], [`clip_rewards`]: the rewards.
//! - [`ensemble`]: ensembles, and the pure aggregation functions behind them.
//! - [`external`]: command and HTTP rewards.
//! - [`monitor`]: the reward-hacking monitor.
//! - [`proxy`]: the learned proxy reward model and its training.
//! - [`error`]: the error type, [`RewardError`].
//!
//! [`ProxyReward`] is a learned, differentiable and deliberately imperfect proxy of the
//! verifier (a small CNN trained by [`train_proxy`], `align train-reward`).

pub mod aesthetic;
pub mod clip_rewards;
pub mod decoded;
pub mod ensemble;
pub mod error;
pub mod external;
pub mod fn_reward;
pub mod jpeg;
pub mod monitor;
pub mod proxy;
pub mod reward;
pub mod shape_eval;

pub use aesthetic::{Brightness, CONTRAST_EPS, Contrast, Saturation};
pub use clip_rewards::{AestheticPredictor, ClipScore, ClipScorer, PickScore};
pub use decoded::VaeDecoded;
pub use ensemble::{
    Aggregate, DEFAULT_EPS, Ensemble, Normalize, Penalty, RunningStats, aggregate, apply_penalties,
    z_score,
};
pub use error::{Result, RewardError};
pub use external::{CommandReward, HttpReward, parse_scores};
pub use fn_reward::{FnReward, reward_fn};
pub use jpeg::{JPEG_QUALITY, Jpeg};
pub use monitor::{
    HackingMonitor, HackingMonitorConfig, Reading, Verdict, Warning, same_prompt_diversity,
};
pub use proxy::{
    Agreement, ProxyBatch, ProxyReward, ProxyRewardConfig, ProxyTrainOptions, ProxyTrainReport,
    agreement, bce_with_logits, corrupt_prompt, proxy_batch, train_proxy,
};
pub use reward::{
    Reward, check_batch, check_finite, images_to_tensor, read_scores, tensor_to_images,
};
pub use shape_eval::{ShapeEvalMode, ShapeEvalReward};
