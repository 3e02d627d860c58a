//! A pull toward the reference policy for reward backprop: pathwise methods over-optimise fast
//! (AlignProp reports mode collapse within two epochs of full backprop), and a penalty on the
//! distance to the reference (adapters off) counters it.
//!
//! At each differentiated step `k`, at the stored state `x_k` (a stop-gradient):
//!
//! ```text
//! R = β · (1/|S|) Σ_{k ∈ S} mean_{b, pixels} (μ_θ(x_k) − μ_ref(x_k))²
//! ```
//!
//! with `μ` the sampler's step mean (the model output mapped through the step). For a
//! stochastic step of std `σ_k` this is `2σ_k² β` times the per-element KL between the policy's
//! and the reference's transition (the closed form of `align_core::gaussian`); it stays defined
//! for deterministic samplers (DDIM η = 0, the Euler ODE), which is why it is used here instead
//! of the KL. The gradient reaches the parameters only (the states are stored).

use align_core::{Denoiser, Trajectory};
use align_samplers::{Sampler, pathwise_step};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};

use crate::chain::Encode;
use crate::error::{BackpropError, Result};

/// `(∇_θ R, R)` of the reference penalty over `steps` (module docs), one step graph at a time.
///
/// # Errors
/// A negative or non-finite `weight`, steps beyond the trajectory, a failing encoder, a
/// non-finite penalty, or no trainable parameter reaching it.
#[allow(clippy::too_many_arguments)]
pub fn reference_penalty<M, S>(
    policy: &M,
    reference: &M,
    sampler: &S,
    trajectory: &Trajectory,
    steps: &[usize],
    encode: &Encode<'_, M>,
    weight: f64,
) -> Result<(GradientsParams, f64)>
where
    M: Module + Denoiser,
    S: Sampler + ?Sized,
{
    if !(weight.is_finite() && weight >= 0.0) {
        return Err(BackpropError::config(
            "reference weight",
            format!("{weight} must be finite and ≥ 0"),
        ));
    }
    let mut acc = GradientsAccumulator::<M>::new();
    if steps.is_empty() || weight == 0.0 {
        return Ok((acc.grads(), 0.0));
    }
    let n = steps.len() as f64;
    let mut total = 0.0;
    for &k in steps {
        let x = trajectory
            .latents
            .get(k)
            .ok_or_else(|| BackpropError::config("steps", format!("{k} is beyond the trajectory")))?
            .clone()
            .detach();
        let (rc, ru) = encode(reference).map_err(BackpropError::Encode)?;
        let r = pathwise_step(
            reference,
            sampler,
            trajectory,
            k,
            x.clone(),
            &rc,
            ru.as_ref(),
        )?;
        let (pc, pu) = encode(policy).map_err(BackpropError::Encode)?;
        let p = pathwise_step(policy, sampler, trajectory, k, x, &pc, pu.as_ref())?;
        let term = (p.mean - r.mean.detach())
            .powf_scalar(2.0)
            .mean()
            .mul_scalar(weight / n);
        let value: f32 = term
            .clone()
            .detach()
            .try_into_scalar()
            .map_err(|e| BackpropError::Untracked(format!("reading the penalty: {e:?}")))?;
        if !value.is_finite() {
            return Err(BackpropError::NonFinite {
                what: format!("the reference penalty at step {k}"),
                value: f64::from(value),
            });
        }
        total += f64::from(value);
        if term.is_tracked() {
            acc.accumulate(policy, GradientsParams::from_grads(term.backward(), policy));
        } else {
            return Err(BackpropError::Untracked(
                "no trainable parameter reaches the reference penalty".into(),
            ));
        }
    }
    Ok((acc.grads(), total))
}
