//! Adjoint Matching (Domingo-Enrich et al. 2024, arXiv 2409.08861) for flow models: reward
//! fine-tuning as stochastic optimal control, toward the tilted distribution
//! `p*(x) ∝ p_base(x) · exp(λ r(x))`.
//!
//! **Memoryless noise.** The paper samples with the noise schedule under which the final sample
//! is independent of the initial noise; for the linear path it is `σ(t) = √(2t/(1−t))` in this
//! project's time (`t = 1` noise, `t = 0` data) — the Flow-GRPO SDE with `a = √2`
//! ([`MEMORYLESS_NOISE_LEVEL`] for [`align_samplers::FlowSdeSampler`]).
//!
//! **Lean adjoint.** On a trajectory of the current model (stored, no graph), the lean adjoint
//! is propagated backward with the *base* model's Jacobian only (the control's terms drop out):
//!
//! ```text
//! ã_K = −λ ∇_x r(x_K),     ã_k = ã_{k+1} · ∂μ_base(x_k)/∂x_k
//! ```
//!
//! with `μ_base` the base model's SDE step mean (the step's noise does not depend on `x_k`).
//!
//! **Loss.** With the control `u_θ = (b_θ − b_base)/σ` read off the step means
//! (`μ_θ − μ_base = |Δt| σ_k u_θ`), the regression
//!
//! ```text
//! L = Σ_k mean_b ‖ u_θ(x_k) + σ_k ã_k ‖²,     u_θ(x_k) = (μ_θ(x_k) − μ_base(x_k)) / (|Δt_k| σ_k)
//! ```
//!
//! whose minimiser is the optimal control `u* = −σ a` (paper, Prop. on the lean adjoint). The
//! target `−σ_k ã_k` is a constant; each step's graph is built and dropped in turn (memory of
//! one step). Equations used: the paper's Algorithm 1 as summarised in the project's checklist
//! §1.C, converted to this time direction; per-step weights and the paper's loss clipping are
//! not implemented.

use align_core::{Denoiser, Parameterization, Trajectory};
use align_samplers::{Sampler, pathwise_step};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

use crate::chain::Encode;
use crate::error::{BackpropError, Result};

/// The flow SDE noise level `a` of the memoryless schedule `σ(t) = a √(t/(1−t))`, `a = √2`.
pub const MEMORYLESS_NOISE_LEVEL: f64 = std::f64::consts::SQRT_2;

/// What one Adjoint Matching gradient needs.
pub struct AdjointMatchingInputs<'a, M, S: ?Sized> {
    /// The fine-tuned policy (trainable, autodiff device).
    pub policy: &'a M,
    /// The base model (frozen, same device).
    pub base: &'a M,
    /// The memoryless SDE sampler of the rollout.
    pub sampler: &'a S,
    /// A rollout of the policy with that sampler.
    pub trajectory: &'a Trajectory,
    /// Conditions from a model (called for the policy and for the base, once per step).
    pub encode: &'a Encode<'a, M>,
    /// `∇_x r(x_K)` per sample (not averaged over the batch), `[B, C, H, W]`.
    pub reward_gradient: Tensor<4>,
    /// The reward multiplier λ of the tilt `exp(λ r)`.
    pub lambda: f64,
}

/// `∇_θ L` of the Adjoint Matching loss (module docs) and the loss value.
///
/// # Errors
/// A non-velocity model, a deterministic step, shape mismatches, non-finite values, a failing
/// encoder or no trainable parameters.
pub fn adjoint_matching_gradients<M, S>(
    inputs: AdjointMatchingInputs<'_, M, S>,
) -> Result<(GradientsParams, f64)>
where
    M: Module + Denoiser,
    S: Sampler + ?Sized,
{
    if inputs.policy.parameterization() != Parameterization::FlowVelocity {
        return Err(BackpropError::config(
            "adjoint matching",
            "needs a flow (velocity) model",
        ));
    }
    if !(inputs.lambda.is_finite() && inputs.lambda > 0.0) {
        return Err(BackpropError::config("lambda", "must be positive"));
    }
    let traj = inputs.trajectory;
    if inputs.reward_gradient.dims() != traj.final_sample().dims() {
        return Err(align_core::CoreError::shape(
            "reward gradient",
            format!("{:?}", traj.final_sample().dims()),
            format!("{:?}", inputs.reward_gradient.dims()),
        )
        .into());
    }
    let k_total = traj.num_steps();
    let b = traj.batch_size() as f64;
    let mut a = inputs.reward_gradient.mul_scalar(-inputs.lambda).detach();
    let mut acc = GradientsAccumulator::<M>::new();
    let mut total = 0.0;
    for k in (0..k_total).rev() {
        let std = inputs.sampler.step_std(k);
        let dt = (traj.times[k] - traj.times[k + 1]).abs();
        if std <= 0.0 || dt <= 0.0 {
            return Err(BackpropError::config(
                "sampler",
                format!("step {k} is deterministic: adjoint matching needs the memoryless SDE"),
            ));
        }
        // σ_k from the step's std: std = σ_k √|Δt|.
        let sigma = std / dt.sqrt();
        let device = a.device();
        // Lean adjoint: ã_k = ã_{k+1} ∂μ_base/∂x_k (base model, x_k tracked).
        let (bc, bu) = (inputs.encode)(inputs.base).map_err(BackpropError::Encode)?;
        let x = traj.latents[k]
            .clone()
            .to_device(&device)
            .detach()
            .require_grad();
        let base_out = pathwise_step(
            inputs.base,
            inputs.sampler,
            traj,
            k,
            x.clone(),
            &bc,
            bu.as_ref(),
        )?;
        let base_mean = base_out.mean.clone().detach();
        let mut grads = (base_out.mean * a.clone()).sum().backward();
        let a_k = x
            .grad_remove(&mut grads)
            .ok_or_else(|| BackpropError::Untracked("no gradient reached x_k".into()))?
            .autodiff()
            .detach();
        drop(grads);
        // Regression of the control onto −σ ã_k at the stored x_k.
        let (pc, pu) = (inputs.encode)(inputs.policy).map_err(BackpropError::Encode)?;
        let xd = traj.latents[k].clone().to_device(&device).detach();
        let out = pathwise_step(inputs.policy, inputs.sampler, traj, k, xd, &pc, pu.as_ref())?;
        let u = (out.mean - base_mean).div_scalar(dt * sigma);
        let residual = u + a_k.clone().mul_scalar(sigma);
        let loss = residual.powf_scalar(2.0).sum().div_scalar(b);
        let value: f32 = loss
            .clone()
            .detach()
            .try_into_scalar()
            .map_err(|e| BackpropError::Untracked(format!("reading the loss: {e:?}")))?;
        if !value.is_finite() {
            return Err(BackpropError::NonFinite {
                what: format!("the adjoint matching loss at step {k}"),
                value: f64::from(value),
            });
        }
        total += f64::from(value);
        if !loss.is_tracked() {
            return Err(BackpropError::Untracked(
                "no trainable parameter reaches the adjoint matching loss".into(),
            ));
        }
        acc.accumulate(
            inputs.policy,
            GradientsParams::from_grads(loss.backward(), inputs.policy),
        );
        a = a_k;
    }
    Ok((acc.grads(), total))
}
