//! The [`Sampler`] trait: one denoising step as an exact Gaussian transition.
//!
//! Every sampler step maps `(x_k, model output)` to a Gaussian `N(μ, σ² I)` over the next latent
//! `x_{k+1}` and either draws `x_{k+1} = μ + σ z` from supplied host noise `z`
//! ([`Transition::Sample`]) or takes a stored `x_{k+1}` ([`Transition::Rescore`]). In both
//! cases the log-prob is computed by the same function from `(x_{k+1}.detach(), μ, σ)`, so
//! re-scoring a stored transition with unchanged parameters reproduces the rollout log-prob
//! bit for bit, and the PPO ratio at `θ = θ_old` is exactly 1. Gradients reach the
//! parameters only through `μ`.

use align_core::{LogProbReduction, Parameterization, gaussian_log_prob};
use burn::tensor::Tensor;

use crate::error::{Result, SamplerError};

/// Where the next latent of a step comes from.
#[derive(Debug, Clone)]
pub enum Transition {
    /// Draw `x_{k+1} = μ + σ·noise` with standard-normal `noise` `[B, C, H, W]` (ignored when
    /// σ = 0). The sample stays differentiable through `μ` (pathwise methods use this); the
    /// log-prob treats it as data.
    Sample(Tensor<4>),
    /// Use this stored `x_{k+1}` `[B, C, H, W]` and only score it.
    Rescore(Tensor<4>),
    /// Deterministic step: `x_{k+1} = μ` (for σ = 0 samplers, or to take the mean).
    Mean,
}

/// The result of one sampler step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// `x_{k+1}`, `[B, C, H, W]`.
    pub prev_sample: Tensor<4>,
    /// `log p(x_{k+1} | x_k)`, `[B]`; `None` when σ = 0 (undefined) or for [`Transition::Mean`].
    pub log_prob: Option<Tensor<1>>,
    /// The Gaussian mean `μ`, `[B, C, H, W]` (differentiable w.r.t. the model output).
    pub mean: Tensor<4>,
    /// The Gaussian standard deviation σ (0 for a deterministic step).
    pub std: f64,
    /// The model's prediction of the clean sample `x̂₀`, `[B, C, H, W]`.
    pub pred_x0: Tensor<4>,
}

/// A sampler over a fixed schedule of `K` steps.
///
/// Implementations: [`crate::DdpmSampler`], [`crate::DdimSampler`],
/// [`crate::FlowEulerSampler`], [`crate::FlowSdeSampler`], [`crate::CpsSampler`].
pub trait Sampler {
    /// Short name for messages (`"ddim"`, `"flow-sde"`, …).
    fn name(&self) -> &'static str;

    /// Number of steps `K`.
    fn num_steps(&self) -> usize;

    /// The time passed to the model at step `k` (DDPM timestep, or flow `t`).
    fn model_time(&self, k: usize) -> f64;

    /// The `K + 1` times of the trajectory's latents (the last is the clean sample: flow
    /// `t = 0`, or `-1` for DDPM-family samplers, "before timestep 0").
    fn latent_times(&self) -> Vec<f64>;

    /// The standard deviation σ of step `k`'s transition (0 if deterministic).
    fn step_std(&self, k: usize) -> f64;

    /// One step from `x` (the latent at step `k`) given the model output at `x`.
    ///
    /// # Errors
    /// Step out of range, or a model parameterization the sampler cannot use.
    fn step(
        &self,
        k: usize,
        x: Tensor<4>,
        model_output: Tensor<4>,
        parameterization: Parameterization,
        transition: Transition,
        reduction: LogProbReduction,
    ) -> Result<StepOutput>;

    /// [`Sampler::step`] that insists on a log-prob: `(prev_sample, log_prob, mean, std)`.
    ///
    /// # Errors
    /// [`SamplerError::Deterministic`] if step `k` has σ = 0 (e.g. DDIM with η = 0, the flow
    /// Euler ODE) — policy-gradient methods need a stochastic sampler.
    #[allow(clippy::too_many_arguments)]
    fn step_with_logprob(
        &self,
        k: usize,
        x: Tensor<4>,
        model_output: Tensor<4>,
        parameterization: Parameterization,
        transition: Transition,
        reduction: LogProbReduction,
    ) -> Result<(Tensor<4>, Tensor<1>, Tensor<4>, f64)> {
        let deterministic = || SamplerError::Deterministic {
            sampler: self.name(),
            step: k,
            hint: "use DDPM, DDIM with η > 0, the flow SDE or CPS for policy gradients",
        };
        if self.step_std(k) <= 0.0 || matches!(transition, Transition::Mean) {
            return Err(deterministic());
        }
        let out = self.step(k, x, model_output, parameterization, transition, reduction)?;
        let log_prob = out.log_prob.ok_or_else(deterministic)?;
        Ok((out.prev_sample, log_prob, out.mean, out.std))
    }
}

pub(crate) fn check_step(name: &'static str, k: usize, steps: usize) -> Result<()> {
    if k >= steps {
        Err(SamplerError::StepOutOfRange {
            sampler: name,
            step: k,
            steps,
        })
    } else {
        Ok(())
    }
}

/// Completes a step from its Gaussian: draws or takes `x_{k+1}` and scores it.
pub(crate) fn finish(
    mean: Tensor<4>,
    std: f64,
    pred_x0: Tensor<4>,
    transition: Transition,
    reduction: LogProbReduction,
) -> Result<StepOutput> {
    let check = |what: &str, t: &Tensor<4>| -> Result<()> {
        if t.dims() != mean.dims() {
            return Err(align_core::CoreError::shape(
                what,
                format!("{:?}", mean.dims()),
                format!("{:?}", t.dims()),
            )
            .into());
        }
        Ok(())
    };
    let (prev_sample, scored) = match transition {
        Transition::Sample(noise) => {
            check("step noise", &noise)?;
            if std > 0.0 {
                (mean.clone() + noise.mul_scalar(std), true)
            } else {
                (mean.clone(), false)
            }
        }
        Transition::Rescore(prev) => {
            check("stored next latent", &prev)?;
            (prev, std > 0.0)
        }
        Transition::Mean => (mean.clone(), false),
    };
    let log_prob = if scored {
        Some(gaussian_log_prob(
            prev_sample.clone().detach(),
            mean.clone(),
            std,
            reduction,
        ))
    } else {
        None
    };
    Ok(StepOutput {
        prev_sample,
        log_prob,
        mean,
        std,
        pred_x0,
    })
}
