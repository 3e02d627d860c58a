//! Backpropagation through the sampler by chained vector-Jacobian products.
//!
//! With the sampler's steps `x_{k+1} = F_k(x_k, θ)` (the reparameterised step: `μ_θ(x_k) +
//! σ_k ε_k` with the trajectory's own noise) and a loss `L(x_T)`, the adjoint recursion is
//!
//! ```text
//! λ_T = ∂L/∂x_T,     λ_k = λ_{k+1} · ∂F_k/∂x_k,     ∇_θ L = Σ_{k = s}^{T−1} λ_{k+1} · ∂F_k/∂θ
//! ```
//!
//! for the differentiated steps `s..T` (`x_s` is a stop-gradient: truncation). Each term is one
//! vector-Jacobian product: rebuild step `k`'s graph from the stored `x_k` (tracked), take the
//! gradient of `⟨λ_{k+1}, F_k(x_k)⟩`, read `λ_k` from `x_k` and accumulate the parameter part.
//! Only one step's graph exists at a time, so activation memory does not grow with the number
//! of differentiated steps; the price is one extra forward per step (the rollout's).
//!
//! The sampler runs all `T` steps once without a graph ([`align_samplers::rollout()`], with the
//! policy's `no_grad()` copy); its noise is re-derived from the trajectory's keys, so the
//! rebuilt steps are the rollout's steps.

use align_core::{Condition, Denoiser, Trajectory};
use align_samplers::{Sampler, pathwise_step};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

use crate::error::{BackpropError, Result};

/// Turns the policy into the batch's `(condition, unconditional)`.
pub type Encode<'a, M> =
    dyn Fn(&M) -> std::result::Result<(Condition, Option<Condition>), String> + 'a;

/// What a chained backward pass differentiates.
pub struct ChainInputs<'a, M, S: ?Sized> {
    /// The trainable policy (on an autodiff device).
    pub policy: &'a M,
    /// The sampler of the rollout.
    pub sampler: &'a S,
    /// The rollout (all `T` latents, noise keys, guidance scale).
    pub trajectory: &'a Trajectory,
    /// The batch's conditions and unconditional conditions (required when the rollout used
    /// guidance ≠ 1) from the policy; called once per step, so a trainable text encoder gets
    /// its gradient and no graph is shared between steps.
    pub encode: &'a Encode<'a, M>,
    /// First differentiated step `s`: steps `s..T` carry gradient (`s = T`: none).
    pub first_step: usize,
    /// `∂L/∂x_T`, `[B, C, H, W]` (e.g. from [`reward_cotangent`]).
    pub cotangent: Tensor<4>,
}

/// The result of a chained backward pass.
pub struct ChainOutput {
    /// `∇_θ L` accumulated over the differentiated steps.
    pub grads: GradientsParams,
    /// `∂L/∂x_s`, the cotangent at the first differentiated step (`x_T`'s if none).
    pub cotangent: Tensor<4>,
    /// Number of vector-Jacobian products taken (`T − s`).
    pub steps: usize,
}

fn check_finite(t: &Tensor<4>, what: &str) -> Result<()> {
    let peak: f32 = t
        .clone()
        .abs()
        .max()
        .try_into_scalar()
        .map_err(|e| BackpropError::Untracked(format!("reading {what}: {e:?}")))?;
    if peak.is_finite() {
        Ok(())
    } else {
        Err(BackpropError::NonFinite {
            what: what.to_string(),
            value: f64::from(peak),
        })
    }
}

/// `∇_θ L` of a loss of the final sample through steps `first_step..T`, one step graph at a
/// time (module docs).
///
/// # Errors
/// `first_step > T`, a cotangent of the wrong shape or not finite, a sampler that does not fit
/// the trajectory, or a policy without trainable parameters on an autodiff device.
pub fn chain_gradients<M, S>(inputs: ChainInputs<'_, M, S>) -> Result<ChainOutput>
where
    M: Module + Denoiser,
    S: Sampler + ?Sized,
{
    let traj = inputs.trajectory;
    let t = traj.num_steps();
    if inputs.first_step > t {
        return Err(BackpropError::config(
            "first_step",
            format!("{} is beyond the trajectory's {t} steps", inputs.first_step),
        ));
    }
    let final_dims = traj.final_sample().dims();
    if inputs.cotangent.dims() != final_dims {
        return Err(align_core::CoreError::shape(
            "cotangent",
            format!("{final_dims:?}"),
            format!("{:?}", inputs.cotangent.dims()),
        )
        .into());
    }
    check_finite(&inputs.cotangent, "the cotangent of the final sample")?;
    let mut acc = GradientsAccumulator::<M>::new();
    let mut g = inputs.cotangent.detach();
    for k in (inputs.first_step..t).rev() {
        let device = g.device();
        let x = traj.latents[k]
            .clone()
            .to_device(&device)
            .detach()
            .require_grad();
        let (cond, uncond) = (inputs.encode)(inputs.policy).map_err(BackpropError::Encode)?;
        let out = pathwise_step(
            inputs.policy,
            inputs.sampler,
            traj,
            k,
            x.clone(),
            &cond,
            uncond.as_ref(),
        )?;
        let vjp = (out.prev_sample * g.clone()).sum();
        if !vjp.is_tracked() {
            return Err(BackpropError::Untracked(
                "nothing reaches the loss: put the policy on an autodiff device \
                 (`device.autodiff()`) with trainable parameters"
                    .into(),
            ));
        }
        let mut grads = vjp.backward();
        let next = x
            .grad_remove(&mut grads)
            .ok_or_else(|| BackpropError::Untracked(format!("no gradient reached x at step {k}")))?
            .autodiff();
        check_finite(&next, &format!("the cotangent at step {k}"))?;
        acc.accumulate(
            inputs.policy,
            GradientsParams::from_grads(grads, inputs.policy),
        );
        g = next;
    }
    let grads = acc.grads();
    if inputs.first_step < t && grads.is_empty() {
        return Err(BackpropError::Untracked(
            "no trainable parameter reaches the loss: put the policy on an autodiff device \
             (`device.autodiff()`) and leave its adapters trainable"
                .into(),
        ));
    }
    Ok(ChainOutput {
        grads,
        cotangent: g,
        steps: t - inputs.first_step,
    })
}

/// The reward and `∂L/∂x` for the loss `L = −scale · mean_b r(x_b)` of a differentiable reward
/// `r: [B, C, H, W] → [B]` (the reward model's own parameters get no update).
///
/// # Errors
/// A failing reward, one that does not depend on its input, or a non-finite reward or
/// gradient.
pub fn reward_cotangent(
    x: &Tensor<4>,
    scale: f64,
    reward: &dyn Fn(Tensor<4>) -> std::result::Result<Tensor<1>, String>,
) -> Result<(Vec<f64>, Tensor<4>)> {
    let x = x.clone().detach().autodiff().require_grad();
    let r = reward(x.clone()).map_err(BackpropError::Reward)?;
    let values: Vec<f64> = r
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| BackpropError::Untracked(format!("reading the reward: {e:?}")))?
        .into_iter()
        .map(f64::from)
        .collect();
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(BackpropError::NonFinite {
            what: "the reward".into(),
            value: *v,
        });
    }
    let loss = r.mean().mul_scalar(-scale);
    if !loss.is_tracked() {
        return Err(BackpropError::Untracked(
            "the reward does not depend on the sample (not differentiable)".into(),
        ));
    }
    let mut grads = loss.backward();
    let g = x
        .grad_remove(&mut grads)
        .ok_or_else(|| BackpropError::Untracked("no gradient reached the sample".into()))?
        .autodiff();
    check_finite(&g, "the reward gradient")?;
    Ok((values, g))
}
