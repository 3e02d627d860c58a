#![warn(missing_docs)]
//! # align-backprop
//!
//! Reward backpropagation through the sampler — DRaFT, DRaFT-K and AlignProp's randomised
//! truncation — with activation memory that does not grow with the number of differentiated
//! steps. The sampler runs once without a graph; the backward pass then walks the stored
//! latents newest first and takes one vector-Jacobian product per step ([`chain_gradients`]),
//! so only one step's graph is alive at a time. A [`Truncation`] chooses how many of the last
//! steps carry gradient; [`reward_cotangent`] turns a differentiable reward into the starting
//! cotangent `∂L/∂x_T` of the loss `L = −scale · mean r`.
//!
//! [`reference_penalty`] pulls the policy's step means toward the reference's (adapters off)
//! at the differentiated steps, against over-optimisation.
//!
//! [`reward_guided_sample`] is the training-free baseline: inference-time reward guidance
//! (`x_{k+1} = step_k(x_k) + λ ∇_{x_k} r(x̂₀(x_k))`, the gradient taken through the model).
//!
//! [`refl_gradients`] is ReFL: the reward of the one-step prediction `x̂₀` at a random late step
//! ([`late_step`]), through that step only, with the official hinge map ([`ReflLoss`]).
//!
//! [`continuous_adjoint`] is the neural-ODE adjoint for the flow ODE with the signs corrected
//! for generation `t: 1 → 0`; it re-integrates the state from the final sample and agrees with
//! the discrete gradient as the grid is refined.
//!
//! [`draft_lv_gradients`] is DRaFT-LV: the last step re-run from several re-noised copies of
//! the final sample.
//!
//! [`adjoint_matching_gradients`] is Adjoint Matching: on memoryless-SDE rollouts, regress the
//! control onto the lean adjoint propagated with the base model's Jacobian, toward
//! `p_base · exp(λ r)`.
//!
//! ## Example
//!
//! The gradient of `L = Σ x_T` through a 3-step Euler ODE of the velocity field `v = θ`
//! (so `x_T = x_0 − θ`, and `∂L/∂θ = −(number of elements)` per channel):
//!
//! ```
//! use align_backprop::{chain_gradients, ChainInputs, Truncation};
//! use align_core::{select_device, Condition, Denoiser, Parameterization};
//! use align_samplers::{rollout, FlowEulerSampler, FlowGrid, RolloutBatch, RolloutConfig, Sampler};
//! use burn::module::{Module, Param};
//! use burn::tensor::{Device, Tensor};
//! use rand_chacha::ChaCha8Rng;
//! use rand_core::SeedableRng;
//!
//! #[derive(Module, Debug)]
//! struct Drift { theta: Param<Tensor<1>> }
//! impl Denoiser for Drift {
//!     fn parameterization(&self) -> Parameterization { Parameterization::FlowVelocity }
//!     fn predict(&self, x: Tensor<4>, _t: Tensor<1>, _c: &Condition) -> Tensor<4> {
//!         x.zeros_like() + self.theta.val().reshape([1, 1, 1, 1])
//!     }
//! }
//!
//! let device = select_device(Some("flex")).unwrap().autodiff();
//! let policy = Drift { theta: Param::from_tensor(Tensor::from_floats([0.5], &device)) };
//! let sampler = FlowEulerSampler::new(FlowGrid::new(3, 1.0).unwrap());
//! let cond = Condition::new(Tensor::zeros([2, 1, 1], &device));
//! let traj = rollout(&policy.clone().no_grad(), &sampler, &RolloutBatch {
//!     condition: &cond, uncond: None, sample_ids: vec![0, 1], condition_ids: vec![0, 0],
//!     group_ids: None, sample_shape: [1, 2, 2],
//! }, &RolloutConfig::default()).unwrap();
//! let first_step = Truncation::Full.first_step(3, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
//! let out = chain_gradients(ChainInputs {
//!     policy: &policy, sampler: &sampler, trajectory: &traj,
//!     encode: &|_: &Drift| Ok((cond.clone(), None)),
//!     first_step, cotangent: Tensor::ones([2, 1, 2, 2], &device),
//! }).unwrap();
//! let g = out.grads.get::<1>(policy.theta.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
//! assert!((g[0] + 8.0).abs() < 1e-5);
//! assert_eq!(out.steps, 3);
//! ```

pub mod adjoint;
pub mod adjoint_matching;
pub mod chain;
pub mod draft;
pub mod draft_lv;
pub mod error;
pub mod guidance;
pub mod refl;
pub mod regularize;
pub mod truncation;

pub use adjoint::{AdjointInputs, continuous_adjoint};
pub use adjoint_matching::{
    AdjointMatchingInputs, MEMORYLESS_NOISE_LEVEL, adjoint_matching_gradients,
};
pub use chain::{ChainInputs, ChainOutput, Encode, chain_gradients, reward_cotangent};
pub use draft::{
    DraftConfig, DraftShard, DraftStats, DraftUpdate, draft_shard_gradients, draft_update,
};
pub use draft_lv::draft_lv_gradients;
pub use error::{BackpropError, Result};
pub use guidance::{GuidanceReward, reward_guided_sample};
pub use refl::{ReflLoss, late_step, refl_gradients};
pub use regularize::reference_penalty;
pub use truncation::Truncation;
