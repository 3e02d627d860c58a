#![warn(missing_docs)]
//! # align-rl
//!
//! Online policy-gradient alignment of diffusion and flow-matching models: sampling is an MDP
//! whose actions are the sampler's Gaussian transitions, and these algorithms push the policy
//! toward a reward using rollouts of the policy itself. DDPO-SF (REINFORCE), DDPO-IS
//! (per-step PPO-clip), DPOK (policy gradient + per-step closed-form KL to the reference) and
//! Flow-GRPO (group-relative advantages on the marginal-preserving flow SDE, with the "Fast"
//! window), DenseGRPO (Flow-GRPO with step-wise reward gains from ODE completions,
//! [`DenseGrpo`]) — one file each, all through one update path — and SDPO's dense-reward and
//! pair-loss update ([`Sdpo`]):
//!
//! - [`step_loss`]: the per-step objective (formula in its module docs);
//! - [`policy_gradients`]: re-scores stored transitions step by step (one step's graph at a
//!   time) and accumulates the gradient; at `θ = θ_old` the re-scored log-prob equals the
//!   rollout's bit for bit on CPU backends, so the PPO ratio is exactly 1;
//! - [`run_iteration`]: advantages, inner epochs, minibatches, the caller's optimizer.
//!
//! **Roll out with `policy.clone().no_grad()`**, on the same autodiff device as training: no
//! graph is built, and the kernels are those the update re-scores with. A `valid()` copy runs
//! on the inner backend, whose kernels differ (the fused attention and layer-norm kernels of
//! `align_models`; before those, already in the last bit: |ρ − 1| = 1.2e-7
//! with the shipped DiT), which breaks the exact ratio.
//!
//! Rollouts, rewards, optimizers and checkpoints belong to the caller (the `align` CLI's
//! runner); the log-prob mathematics lives in `align-core` and `align-samplers`.
//!
//! ## Example
//!
//! One Flow-GRPO loss term at `θ = θ_old`: the ratio is 1 and nothing is clipped.
//!
//! ```
//! use align_core::{LogProbReduction, select_device};
//! use align_rl::{step_loss, KlEstimator, KlPenalty, Objective, StepInputs};
//! use burn::tensor::Tensor;
//!
//! let device = select_device(Some("flex")).unwrap();
//! let lp = Tensor::<1>::from_floats([-1.2, -0.7], &device);
//! let mean = Tensor::<4>::ones([2, 1, 2, 2], &device);
//! let out = step_loss(
//!     StepInputs {
//!         log_prob: lp.clone(),
//!         old_log_prob: lp,
//!         advantages: Tensor::from_floats([1.0, -1.0], &device),
//!         mean: mean.clone(),
//!         std: 0.3,
//!         ref_mean: Some(mean),
//!         ref_log_prob: None,
//!         reduction: LogProbReduction::Mean,
//!         old_mean: None,
//!         step_size: None,
//!     },
//!     Objective::PpoClip { clip_range: 1e-4 },
//!     Some(KlPenalty { beta: 0.004, estimator: KlEstimator::ClosedForm }),
//! )
//! .unwrap();
//! assert_eq!(out.ratio.into_data().to_vec::<f32>().unwrap(), vec![1.0, 1.0]);
//! assert_eq!(out.kl.into_data().to_vec::<f32>().unwrap(), vec![0.0, 0.0]);
//! ```

pub mod algorithm;
pub mod ddpo;
pub mod dense_grpo;
pub mod diffusion_nft;
pub mod dpok;
pub mod error;
pub mod flow_grpo;
pub mod g2rpo;
pub mod grpo_guard;
pub mod kl_reward;
pub mod mix_grpo;
pub mod objective;
pub mod opd;
pub mod sdpo;
pub mod update;

pub use algorithm::{
    Iteration, IterationStats, OnlineAlgorithm, Parallel, run_iteration, run_iteration_parallel,
    trainable_steps,
};
pub use ddpo::{Ddpo, DdpoConfig, DdpoVariant};
pub use dense_grpo::{
    DenseGrpo, DenseGrpoConfig, NoiseCalibration, completion_times, ode_complete,
    step_group_advantages, step_reward_gains,
};
pub use diffusion_nft::{
    DiffusionNftConfig, NftGradientInputs, NftIteration, NftLoss, NftLossInputs, NftStats,
    OldPolicyDecay, nft_gradients, nft_loss, nft_timesteps, old_policy_values,
    old_policy_values_of, optimality_probabilities, restore_old_policy, run_nft_iteration,
    trainable_ids, update_old_policy,
};
pub use dpok::{Dpok, DpokConfig};
pub use error::{Result, RlError};
pub use flow_grpo::{FlowGrpo, FlowGrpoConfig};
pub use g2rpo::{G2rpoConfig, granular_times, multi_granularity_advantages};
pub use grpo_guard::{normalized_log_ratio, ratio_bias};
pub use kl_reward::{kl_rewards, trajectory_step_kl};
pub use mix_grpo::{MixGrpoWindow, WindowDecay};
pub use objective::{KlEstimator, KlPenalty, Objective, StepInputs, StepLoss, step_loss};
pub use opd::{OpdConfig, OpdStats, opd_gradients, teacher_step_mean};
pub use sdpo::{
    Sdpo, SdpoConfig, anchor_step, cosine_similarity, dense_rewards, sdpo_pair_loss, step_weight,
    trajectory_dense_rewards,
};
pub use update::{Advantages, Encode, PolicyGradientInputs, UpdateStats, policy_gradients};
