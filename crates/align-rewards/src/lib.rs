#![warn(missing_docs)]
//! # align-rewards
//!
//! Rewards for alignment: a `Reward` trait (images + prompts → scores, with an optional
//! differentiable path), the gold ShapeEval reward, DDPO's JPEG (in)compressibility, a learned
//! proxy reward model, aesthetic proxies, external rewards over a local command or HTTP,
//! ensembles with z-scoring and hard penalties, and the reward-hacking monitor.
//!
//! **Status:** not yet implemented (tracked by the "Rewards" issue).
