//! Classifier-free guidance.
//!
//! `ε̃ = ε_∅ + s (ε_c − ε_∅)` (the same for velocities), with `guidance_scale s`; `s = 1` is no
//! guidance and needs no unconditional pass. The unconditional and conditional passes are
//! batched into one model call (`[uncond; cond]`) when the two conditions have the same token
//! shape. Rollouts and log-prob re-computation must use the same scale and the same
//! unconditional condition, or the PPO ratio is no longer 1 at `θ = θ_old`.

use align_core::{Condition, CoreError, Denoiser};
use burn::tensor::Tensor;

use crate::error::{Result, SamplerError};

/// `uncond + scale · (cond − uncond)`.
///
/// # Shapes
/// - `uncond`, `cond`: `[B, C, H, W]`; output the same.
pub fn cfg_combine(uncond: Tensor<4>, cond: Tensor<4>, scale: f64) -> Tensor<4> {
    uncond.clone() + (cond - uncond).mul_scalar(scale)
}

/// The (guided) model output at `x_t`.
///
/// With `scale == 1` or no `uncond`, this is one plain call. Otherwise both passes run, in one
/// batch when possible.
///
/// # Shapes
/// - `x_t`: `[B, C, H, W]`, `t`: `[B]`, conditions of batch `B`; output `[B, C, H, W]`.
///
/// # Errors
/// A non-finite scale, `scale != 1` without an unconditional condition, or batch mismatch.
pub fn guided_predict<M: Denoiser + ?Sized>(
    model: &M,
    x_t: Tensor<4>,
    t: Tensor<1>,
    condition: &Condition,
    uncond: Option<&Condition>,
    scale: f64,
) -> Result<Tensor<4>> {
    if !scale.is_finite() {
        return Err(SamplerError::config(
            "guidance_scale",
            format!("{scale} is not finite"),
        ));
    }
    let b = x_t.dims()[0];
    if condition.batch_size() != b {
        return Err(CoreError::shape("condition batch", b, condition.batch_size()).into());
    }
    if scale == 1.0 {
        return Ok(model.predict(x_t, t, condition));
    }
    let uncond = uncond.ok_or_else(|| {
        SamplerError::config(
            "guidance_scale",
            format!("{scale} needs an unconditional (null-prompt) condition"),
        )
    })?;
    if uncond.batch_size() != b {
        return Err(
            CoreError::shape("unconditional condition batch", b, uncond.batch_size()).into(),
        );
    }
    if uncond.is_stackable_with(condition) {
        let both = Condition::cat(vec![uncond.clone(), condition.clone()])?;
        let out = model.predict(
            Tensor::cat(vec![x_t.clone(), x_t], 0),
            Tensor::cat(vec![t.clone(), t], 0),
            &both,
        );
        let mut halves = out.chunk(2, 0);
        let cond_out = halves
            .pop()
            .ok_or_else(|| CoreError::shape("cfg output", 2, 0))?;
        let uncond_out = halves
            .pop()
            .ok_or_else(|| CoreError::shape("cfg output", 2, 1))?;
        Ok(cfg_combine(uncond_out, cond_out, scale))
    } else {
        let uncond_out = model.predict(x_t.clone(), t.clone(), uncond);
        let cond_out = model.predict(x_t, t, condition);
        Ok(cfg_combine(uncond_out, cond_out, scale))
    }
}
