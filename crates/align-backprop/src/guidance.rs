//! Inference-time reward guidance: steer sampling toward a differentiable reward without
//! changing any parameter — the training-free baseline of reward fine-tuning.
//!
//! At each step `k`, with `x̂₀(x_k)` the sampler's clean-sample prediction from the (CFG-guided)
//! model output, the gradient `g_k = ∇_{x_k} r(x̂₀(x_k))` is taken **through the model** (the
//! model runs on an autodiff device with its parameters frozen), and the step's output is
//! moved up the reward:
//!
//! ```text
//! x_{k+1} = step_k(x_k) + λ · g_k
//! ```
//!
//! For the flow Euler step this is the velocity `v − (λ / |Δt|) g_k` — the sign that *raises*
//! the reward when integrating `t: 1 → 0` (checklist §6 G3: with `Δt < 0`, adding `+λ∇r` to
//! the velocity would lower it). The same rule serves every sampler, DDPM/DDIM included. The
//! reward is evaluated on `x̂₀`, not on the noisy latent.
//!
//! Noise comes from the same host keys as [`align_samplers::rollout()`], so `λ = 0` reproduces
//! the plain samples bit for bit and any difference is the guidance's.

use align_core::{Denoiser, NoiseKey, noise_tensor};
use align_samplers::{RolloutBatch, RolloutConfig, Sampler, Transition, guided_predict};
use burn::tensor::{Tensor, TensorData};

use crate::error::{BackpropError, Result};

/// A differentiable reward of clean samples `[B, C, H, W] → [B]`.
pub type GuidanceReward<'a> = dyn Fn(Tensor<4>) -> std::result::Result<Tensor<1>, String> + 'a;

/// Samples `B` images with reward guidance of strength `scale` (`λ`, module docs); returns
/// the final samples `[B, C, H, W]` (detached).
///
/// The model must run on an autodiff device (gradients reach `x_k` through it); freeze its
/// parameters with `no_grad()`.
///
/// # Errors
/// A negative or non-finite `scale`, inconsistent batch sizes, a reward that fails, does not
/// depend on the sample or is not finite, or a non-finite latent.
pub fn reward_guided_sample<M: Denoiser + ?Sized, S: Sampler + ?Sized>(
    model: &M,
    sampler: &S,
    batch: &RolloutBatch<'_>,
    config: &RolloutConfig,
    reward: &GuidanceReward<'_>,
    scale: f64,
) -> Result<Tensor<4>> {
    if !(scale.is_finite() && scale >= 0.0) {
        return Err(BackpropError::config(
            "guidance scale",
            format!("{scale} must be finite and ≥ 0"),
        ));
    }
    let b = batch.sample_ids.len();
    if batch.condition.batch_size() != b {
        return Err(align_core::CoreError::shape(
            "condition batch",
            b,
            batch.condition.batch_size(),
        )
        .into());
    }
    let device = batch.condition.context.device();
    let keys: Vec<NoiseKey> = batch
        .sample_ids
        .iter()
        .map(|&s| NoiseKey::initial(config.seed, s))
        .collect();
    let mut x = noise_tensor(&keys, batch.sample_shape, &device)?;
    for k in 0..sampler.num_steps() {
        let t = Tensor::<1>::from_data(
            TensorData::new(vec![sampler.model_time(k) as f32; b], [b]),
            &device,
        );
        let transition = if sampler.step_std(k) > 0.0 {
            let keys: Vec<NoiseKey> = batch
                .sample_ids
                .iter()
                .map(|&s| NoiseKey::transition(config.seed, s, k))
                .collect();
            Transition::Sample(noise_tensor(&keys, batch.sample_shape, &device)?)
        } else {
            Transition::Mean
        };
        let x_in = x.clone().detach();
        let next = if scale > 0.0 {
            // The reward gradient at x_k, through the model and the x̂₀ prediction.
            let tracked = x_in.clone().autodiff().require_grad();
            let out = guided_predict(
                model,
                tracked.clone(),
                t.clone().autodiff(),
                batch.condition,
                batch.uncond,
                config.guidance_scale,
            )?;
            let step = sampler.step(
                k,
                tracked.clone(),
                out.clone(),
                model.parameterization(),
                Transition::Mean,
                config.reduction,
            )?;
            let r = reward(step.pred_x0).map_err(BackpropError::Reward)?.sum();
            if !r.is_tracked() {
                return Err(BackpropError::Untracked(
                    "the guidance reward does not depend on the sample: run the model on an \
                     autodiff device and use a differentiable reward"
                        .into(),
                ));
            }
            let mut grads = r.backward();
            let g = tracked
                .grad_remove(&mut grads)
                .ok_or_else(|| BackpropError::Untracked("no gradient reached x_k".into()))?;
            // The plain step from the same (detached) model output.
            let plain = sampler.step(
                k,
                x_in,
                out.detach().to_device(&device),
                model.parameterization(),
                transition,
                config.reduction,
            )?;
            plain.prev_sample.detach() + g.to_device(&device).mul_scalar(scale)
        } else {
            let out = guided_predict(
                model,
                x_in.clone(),
                t,
                batch.condition,
                batch.uncond,
                config.guidance_scale,
            )?;
            sampler
                .step(
                    k,
                    x_in,
                    out,
                    model.parameterization(),
                    transition,
                    config.reduction,
                )?
                .prev_sample
                .detach()
        };
        let peak: f32 = next
            .clone()
            .abs()
            .max()
            .try_into_scalar()
            .map_err(|e| BackpropError::Untracked(format!("reading the latent: {e:?}")))?;
        if !peak.is_finite() {
            return Err(BackpropError::NonFinite {
                what: format!("guided latent after step {k}"),
                value: f64::from(peak),
            });
        }
        x = next;
    }
    Ok(x)
}
