#![warn(missing_docs)]
//! # align-rl
//!
//! Online policy-gradient alignment over sampler trajectories: DDPO-SF, DDPO-IS (per-step
//! PPO-clip), DPOK (per-step closed-form KL to the reference), Flow-GRPO (group-relative
//! advantages on the marginal-preserving SDE, with the "Fast" window), DenseGRPO and SDPO —
//! one file per algorithm, driven by the shared runner.
//!
//! The mathematics these algorithms share already lives in `align-core`
//! (advantages, PPO-clip, Gaussian KL) and `align-samplers` (exact step log-probs).
//!
//! **Status:** not yet implemented (tracked by the "Online RL" issue).
