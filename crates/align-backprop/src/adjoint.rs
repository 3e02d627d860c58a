//! The continuous adjoint method for the flow ODE (Chen et al. 2018's neural-ODE adjoint),
//! with the signs corrected for generation from `t = 1` (noise) to `t = 0` (data).
//!
//! For `dx/dt = v_θ(x, t)` integrated from `x(1)` down to `x(0)` and a loss `L(x(0))`
//! (checklist §1.C and §6 G2 — the seed document's signs are wrong for this direction):
//!
//! ```text
//! a(0) = ∇_x L(x(0)),     da/dt = −(∂v/∂x)ᵀ a,     ∇_θ L = −∫₀¹ a(t)ᵀ ∂v/∂θ (x(t), t) dt
//! ```
//!
//! Only the final sample is needed: the state is re-integrated from `x(0)` toward `t = 1`
//! together with the adjoint (explicit Euler on an ascending grid), so memory is that of one
//! model call whatever the number of steps. The re-integrated state differs from the forward
//! pass by the discretisation error, so the result agrees with the discrete gradient
//! ([`crate::chain_gradients`] on the Euler sampler) only as the grid is refined — tested.

use align_core::{Condition, Denoiser, Parameterization};
use align_samplers::guided_predict;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Tensor, TensorData};

use crate::error::{BackpropError, Result};

/// What the adjoint solve needs.
pub struct AdjointInputs<'a, M> {
    /// The trainable policy (velocity model on an autodiff device).
    pub policy: &'a M,
    /// The generation grid `1 = t_0 > t_1 > … > t_K = 0` of the forward solve.
    pub times: &'a [f64],
    /// The final sample `x(0)`, `[B, C, H, W]`.
    pub sample: Tensor<4>,
    /// `∂L/∂x(0)`.
    pub cotangent: Tensor<4>,
    /// Conditions of the batch, from the policy (called once per step).
    pub encode: &'a crate::chain::Encode<'a, M>,
    /// Classifier-free guidance scale of the forward solve.
    pub guidance_scale: f64,
}

/// `∇_θ L` by the continuous adjoint (module docs), and `a(1) = ∂L/∂x(1)`.
///
/// # Errors
/// A non-velocity model, a grid that does not run from 1 down to 0, shape mismatches, a
/// failing encoder, non-finite values or no trainable parameters.
pub fn continuous_adjoint<M>(inputs: AdjointInputs<'_, M>) -> Result<(GradientsParams, Tensor<4>)>
where
    M: Module + Denoiser,
{
    if inputs.policy.parameterization() != Parameterization::FlowVelocity {
        return Err(BackpropError::config(
            "adjoint",
            "the continuous adjoint integrates a flow (velocity) model",
        ));
    }
    let times = inputs.times;
    let ok_grid = times.len() >= 2
        && times.windows(2).all(|w| w[1] < w[0])
        && times.first().is_some_and(|&t| t <= 1.0)
        && times.last() == Some(&0.0);
    if !ok_grid {
        return Err(BackpropError::config(
            "times",
            "need a strictly decreasing grid ending at t = 0",
        ));
    }
    if inputs.cotangent.dims() != inputs.sample.dims() {
        return Err(align_core::CoreError::shape(
            "cotangent",
            format!("{:?}", inputs.sample.dims()),
            format!("{:?}", inputs.cotangent.dims()),
        )
        .into());
    }
    let b = inputs.sample.dims()[0];
    let device = inputs.sample.device();
    let mut x = inputs.sample.detach();
    let mut a = inputs.cotangent.detach();
    let mut acc = GradientsAccumulator::<M>::new();
    // Ascending in t: from t_K = 0 back to t_0.
    for w in times.windows(2).rev() {
        let (t_hi, t_lo) = (w[0], w[1]);
        let h = t_hi - t_lo;
        let (cond, uncond): (Condition, Option<Condition>) =
            (inputs.encode)(inputs.policy).map_err(BackpropError::Encode)?;
        let xt = x.clone().require_grad();
        let t = Tensor::<1>::from_data(TensorData::new(vec![t_lo as f32; b], [b]), &device);
        let v = guided_predict(
            inputs.policy,
            xt.clone(),
            t,
            &cond,
            uncond.as_ref(),
            inputs.guidance_scale,
        )?;
        // loss = −h ⟨a, v⟩: its x-gradient is −h Jᵀa (the adjoint step), its θ-gradient
        // −h (∂v/∂θ)ᵀ a (the quadrature of −∫ aᵀ ∂v/∂θ dt).
        let vjp = (v.clone() * a.clone()).sum().mul_scalar(-h);
        if !vjp.is_tracked() {
            return Err(BackpropError::Untracked(
                "nothing reaches the adjoint: put the policy on an autodiff device".into(),
            ));
        }
        let mut grads = vjp.backward();
        let ga = xt
            .grad_remove(&mut grads)
            .ok_or_else(|| BackpropError::Untracked("no gradient reached x".into()))?
            .autodiff();
        acc.accumulate(
            inputs.policy,
            GradientsParams::from_grads(grads, inputs.policy),
        );
        x = (x + v.detach().mul_scalar(h)).detach();
        a = (a + ga).detach();
        let peak: f32 = a
            .clone()
            .abs()
            .max()
            .try_into_scalar()
            .map_err(|e| BackpropError::Untracked(format!("reading the adjoint: {e:?}")))?;
        if !peak.is_finite() {
            return Err(BackpropError::NonFinite {
                what: format!("the adjoint at t = {t_hi}"),
                value: f64::from(peak),
            });
        }
    }
    let grads = acc.grads();
    if grads.is_empty() {
        return Err(BackpropError::Untracked(
            "no trainable parameter reaches the adjoint".into(),
        ));
    }
    Ok((grads, a))
}
