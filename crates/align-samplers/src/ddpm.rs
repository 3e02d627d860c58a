//! The DDPM ancestral sampler on a (possibly strided) timestep schedule, with log-probs.
//!
//! For a step from timestep `t` to the next scheduled timestep `t'` (ᾱ' = 1 after the last),
//! with `α'_t = ᾱ_t / ᾱ'` and `β'_t = 1 − α'_t` (the "strided" betas), the posterior
//! `q(x_{t'} | x_t, x̂₀)` gives the policy
//!
//! ```text
//! μ  = √ᾱ' β'_t / (1 − ᾱ_t) · x̂₀ + √α'_t (1 − ᾱ') / (1 − ᾱ_t) · x_t
//! σ² = (1 − ᾱ') / (1 − ᾱ_t) · β'_t      (FixedSmall, the posterior variance β̃)
//! σ² = β'_t                             (FixedLarge)
//! ```
//!
//! With every training timestep (no striding) these are Ho et al.'s formulas. `x̂₀` comes from
//! the model output (ε, v or x₀), optionally clipped. The last step has σ = 0 under
//! `FixedSmall` (ᾱ' = 1), so its log-prob is undefined; `FixedLarge` keeps it stochastic.

use align_core::{LogProbReduction, Parameterization};
use burn::tensor::Tensor;

use crate::error::{Result, SamplerError};
use crate::schedule::NoiseSchedule;
use crate::step::{Sampler, StepOutput, Transition, check_step, finish};

/// The DDPM reverse-process variance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DdpmVariance {
    /// The posterior variance `β̃_t` (diffusers `fixed_small`, the default).
    #[default]
    FixedSmall,
    /// `β_t` (diffusers `fixed_large`).
    FixedLarge,
}

/// `(x̂₀, ε̂)` from a DDPM-family model output at a timestep with cumulative alpha `ᾱ`.
///
/// With `clip = Some(c)`, `x̂₀` is clamped to `[−c, c]` and `ε̂` re-derived from it so that both
/// stay consistent (rollout and re-scoring must use the same setting).
pub(crate) fn ddpm_predictions(
    sampler: &'static str,
    x: Tensor<4>,
    output: Tensor<4>,
    parameterization: Parameterization,
    alpha_bar: f64,
    clip: Option<f64>,
) -> Result<(Tensor<4>, Tensor<4>)> {
    let (sa, sb) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
    let (x0, eps) = match parameterization {
        Parameterization::Epsilon => (
            (x.clone() - output.clone().mul_scalar(sb)).div_scalar(sa),
            output,
        ),
        Parameterization::VPrediction => (
            x.clone().mul_scalar(sa) - output.clone().mul_scalar(sb),
            output.mul_scalar(sa) + x.clone().mul_scalar(sb),
        ),
        Parameterization::Sample => {
            let eps = (x.clone() - output.clone().mul_scalar(sa)).div_scalar(sb);
            (output, eps)
        }
        Parameterization::FlowVelocity => {
            return Err(SamplerError::UnsupportedParameterization {
                sampler,
                parameterization,
            });
        }
    };
    match clip {
        None => Ok((x0, eps)),
        Some(c) => {
            let x0 = x0.clamp(-c, c);
            let eps = (x - x0.clone().mul_scalar(sa)).div_scalar(sb);
            Ok((x0, eps))
        }
    }
}

/// A DDPM training schedule restricted to descending sampling timesteps (shared by the DDPM
/// and DDIM samplers).
#[derive(Debug, Clone)]
pub(crate) struct StridedSchedule {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
}

impl StridedSchedule {
    pub(crate) fn new(schedule: NoiseSchedule, timesteps: Vec<usize>) -> Result<Self> {
        validate_timesteps(&schedule, &timesteps)?;
        Ok(Self {
            schedule,
            timesteps,
        })
    }

    pub(crate) fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    pub(crate) fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    pub(crate) fn model_time(&self, k: usize) -> f64 {
        self.timesteps[k] as f64
    }

    /// Timesteps of the latents, `−1` for the clean end.
    pub(crate) fn latent_times(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self.timesteps.iter().map(|&t| t as f64).collect();
        t.push(-1.0);
        t
    }

    /// `ᾱ` of training timestep 0.
    pub(crate) fn first_alpha_bar(&self) -> f64 {
        self.schedule.alpha_bar(0)
    }

    /// `(ᾱ_t, ᾱ')` of step `k`, with `ᾱ' = final_alpha_bar` after the last step.
    pub(crate) fn alphas(&self, k: usize, final_alpha_bar: f64) -> (f64, f64) {
        let a = self.schedule.alpha_bar(self.timesteps[k]);
        let a_prev = self
            .timesteps
            .get(k + 1)
            .map_or(final_alpha_bar, |&t| self.schedule.alpha_bar(t));
        (a, a_prev)
    }
}

/// DDPM ancestral sampling with exact transition log-probs.
#[derive(Debug, Clone)]
pub struct DdpmSampler {
    steps: StridedSchedule,
    variance: DdpmVariance,
    clip_sample: Option<f64>,
}

impl DdpmSampler {
    /// A sampler over the descending `timesteps` (e.g. from [`crate::strided_timesteps`]).
    ///
    /// # Errors
    /// Empty or non-descending timesteps, or a timestep outside the schedule.
    pub fn new(
        schedule: NoiseSchedule,
        timesteps: Vec<usize>,
        variance: DdpmVariance,
    ) -> Result<Self> {
        Ok(Self {
            steps: StridedSchedule::new(schedule, timesteps)?,
            variance,
            clip_sample: None,
        })
    }

    /// Clamp `x̂₀` to `[−c, c]` (diffusers `clip_sample`).
    pub fn with_clip_sample(mut self, clip: Option<f64>) -> Self {
        self.clip_sample = clip;
        self
    }

    /// The descending timesteps.
    pub fn timesteps(&self) -> &[usize] {
        self.steps.timesteps()
    }

    /// `(ᾱ_t, ᾱ')` of step `k` (ᾱ' = 1 after the last step).
    fn alphas(&self, k: usize) -> (f64, f64) {
        self.steps.alphas(k, 1.0)
    }

    /// Mean coefficients `(c_x0, c_xt)` and σ of step `k`.
    fn coefficients(&self, k: usize) -> (f64, f64, f64) {
        let (a, a_prev) = self.alphas(k);
        let alpha_t = a / a_prev;
        let beta_t = 1.0 - alpha_t;
        let c_x0 = a_prev.sqrt() * beta_t / (1.0 - a);
        let c_xt = alpha_t.sqrt() * (1.0 - a_prev) / (1.0 - a);
        let var = match self.variance {
            DdpmVariance::FixedSmall => (1.0 - a_prev) / (1.0 - a) * beta_t,
            DdpmVariance::FixedLarge => beta_t,
        };
        (c_x0, c_xt, var.max(0.0).sqrt())
    }
}

pub(crate) fn validate_timesteps(schedule: &NoiseSchedule, timesteps: &[usize]) -> Result<()> {
    if timesteps.is_empty() {
        return Err(SamplerError::config("timesteps", "need at least one step"));
    }
    if timesteps.windows(2).any(|w| w[1] >= w[0]) {
        return Err(SamplerError::config(
            "timesteps",
            "must be strictly descending",
        ));
    }
    let t = schedule.num_train_timesteps();
    if timesteps[0] >= t {
        return Err(SamplerError::config(
            "timesteps",
            format!(
                "timestep {} is not below the {t} training timesteps",
                timesteps[0]
            ),
        ));
    }
    Ok(())
}

impl Sampler for DdpmSampler {
    fn name(&self) -> &'static str {
        "ddpm"
    }

    fn num_steps(&self) -> usize {
        self.steps.num_steps()
    }

    fn model_time(&self, k: usize) -> f64 {
        self.steps.model_time(k)
    }

    fn latent_times(&self) -> Vec<f64> {
        self.steps.latent_times()
    }

    fn step_std(&self, k: usize) -> f64 {
        self.coefficients(k).2
    }

    fn step(
        &self,
        k: usize,
        x: Tensor<4>,
        model_output: Tensor<4>,
        parameterization: Parameterization,
        transition: Transition,
        reduction: LogProbReduction,
    ) -> Result<StepOutput> {
        check_step(self.name(), k, self.num_steps())?;
        let (a, _) = self.alphas(k);
        let (x0, _) = ddpm_predictions(
            self.name(),
            x.clone(),
            model_output,
            parameterization,
            a,
            self.clip_sample,
        )?;
        let (c_x0, c_xt, std) = self.coefficients(k);
        let mean = x0.clone().mul_scalar(c_x0) + x.mul_scalar(c_xt);
        finish(mean, std, x0, transition, reduction)
    }
}
