//! DRaFT-LV (Clark et al. 2023): a lower-variance DRaFT-1 gradient for flow models.
//!
//! After sampling `x₀`, re-noise it `n` times to the input time `t` of the last sampler step
//! with the forward process and re-run that step from each copy; the gradient is the mean of
//! the `n` one-step reward gradients:
//!
//! ```text
//! x_t^{(i)} = (1 − t) x₀ + t ε_i,   ε_i ~ N(0, I)  (i = 1..n, host-keyed)
//! ∇_θ L = (1/n) Σ_i ∇_θ [ −scale · mean_b r( step_{K−1}(x_t^{(i)}; θ) ) ]
//! ```
//!
//! The copies' noise is keyed by `(seed, sample id, copy)` ([`align_core::NoiseKey`]), so the
//! estimator is reproducible. The source documents do not give `n`; the default of 2 is ours
//! (check the paper before relying on it). Flow (velocity) models only: the re-noising uses
//! the linear path `x_t = (1 − t) x₀ + t ε`.

use align_core::{Denoiser, NoiseKey, Parameterization, Trajectory, noise_tensor};
use align_samplers::{Sampler, pathwise_step};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

use crate::chain::Encode;
use crate::error::{BackpropError, Result};

/// DRaFT-LV's gradient over `copies` re-noised copies of the trajectory's final sample
/// (module docs): `(∇_θ L, mean reward of each copy)`.
///
/// # Errors
/// `copies = 0`, a non-velocity model, a failing reward or encoder, non-finite rewards, or no
/// trainable parameter reaching the loss.
#[allow(clippy::too_many_arguments)]
pub fn draft_lv_gradients<M, S>(
    policy: &M,
    sampler: &S,
    trajectory: &Trajectory,
    encode: &Encode<'_, M>,
    reward: &dyn Fn(Tensor<4>) -> std::result::Result<Tensor<1>, String>,
    copies: usize,
    seed: u64,
    scale: f64,
) -> Result<(GradientsParams, Vec<f64>)>
where
    M: Module + Denoiser,
    S: Sampler + ?Sized,
{
    if copies == 0 {
        return Err(BackpropError::config("copies", "must be ≥ 1"));
    }
    if policy.parameterization() != Parameterization::FlowVelocity {
        return Err(BackpropError::config(
            "draft-lv",
            "re-noising along the linear path needs a flow (velocity) model",
        ));
    }
    let k = trajectory
        .num_steps()
        .checked_sub(1)
        .ok_or_else(|| BackpropError::config("trajectory", "has no steps"))?;
    let t = trajectory.times[k];
    let x0 = trajectory.final_sample().clone().detach();
    let dims = x0.dims();
    let device = x0.device();
    let mut acc = GradientsAccumulator::<M>::new();
    let mut means = Vec::with_capacity(copies);
    for copy in 0..copies {
        let keys: Vec<NoiseKey> = trajectory
            .sample_ids
            .iter()
            .map(|&s| NoiseKey::transition(seed, s, 1_000_000 + copy))
            .collect();
        let eps = noise_tensor(&keys, [dims[1], dims[2], dims[3]], &device)?;
        let xt = x0.clone().mul_scalar(1.0 - t) + eps.mul_scalar(t);
        let (cond, uncond) = encode(policy).map_err(BackpropError::Encode)?;
        let out = pathwise_step(policy, sampler, trajectory, k, xt, &cond, uncond.as_ref())?;
        let r = reward(out.prev_sample).map_err(BackpropError::Reward)?;
        let mean: f32 = r
            .clone()
            .mean()
            .try_into_scalar()
            .map_err(|e| BackpropError::Untracked(format!("reading the reward: {e:?}")))?;
        if !mean.is_finite() {
            return Err(BackpropError::NonFinite {
                what: format!("the DRaFT-LV reward of copy {copy}"),
                value: f64::from(mean),
            });
        }
        means.push(f64::from(mean));
        let loss = r.mean().mul_scalar(-scale / copies as f64);
        if !loss.is_tracked() {
            return Err(BackpropError::Untracked(
                "no trainable parameter reaches the DRaFT-LV loss".into(),
            ));
        }
        acc.accumulate(policy, GradientsParams::from_grads(loss.backward(), policy));
    }
    Ok((acc.grads(), means))
}
