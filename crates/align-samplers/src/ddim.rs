//! DDIM with stochasticity η, with log-probs (the DDPO policy).
//!
//! From timestep `t` to the next scheduled timestep `t'` (after the last step, ᾱ' is the
//! final alpha: ᾱ₀ as in Stable Diffusion, or 1):
//!
//! ```text
//! x̂₀ = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t
//! σ  = η · √((1 − ᾱ') / (1 − ᾱ_t)) · √(1 − ᾱ_t / ᾱ')
//! μ  = √ᾱ' x̂₀ + √(1 − ᾱ' − σ²) ε̂
//! ```
//!
//! `η = 1` gives the DDPM posterior variance on the strided schedule; `η = 0` is the
//! deterministic DDIM ODE step (σ = 0) whose log-prob is undefined — policy-gradient methods
//! must refuse it, and [`Sampler::step_with_logprob`] does.

use align_core::{LogProbReduction, Parameterization};
use burn::tensor::Tensor;

use crate::ddpm::{StridedSchedule, ddpm_predictions};
use crate::error::{Result, SamplerError};
use crate::schedule::NoiseSchedule;
use crate::step::{Sampler, StepOutput, Transition, check_step, finish};

/// What `ᾱ'` is after the last scheduled timestep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum FinalAlpha {
    /// `ᾱ_0` (diffusers `set_alpha_to_one = False`, Stable Diffusion's setting; the default).
    #[default]
    First,
    /// 1 (diffusers `set_alpha_to_one = True`).
    One,
}

/// DDIM(η) with exact transition log-probs.
#[derive(Debug, Clone)]
pub struct DdimSampler {
    steps: StridedSchedule,
    eta: f64,
    final_alpha: FinalAlpha,
    clip_sample: Option<f64>,
}

impl DdimSampler {
    /// A DDIM sampler over descending `timesteps` with stochasticity `eta` (DDPO uses 1.0).
    ///
    /// # Errors
    /// Bad timesteps, or `eta` negative or not finite.
    pub fn new(schedule: NoiseSchedule, timesteps: Vec<usize>, eta: f64) -> Result<Self> {
        let steps = StridedSchedule::new(schedule, timesteps)?;
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(SamplerError::config(
                "eta",
                format!("{eta} must be finite and ≥ 0"),
            ));
        }
        Ok(Self {
            steps,
            eta,
            final_alpha: FinalAlpha::First,
            clip_sample: None,
        })
    }

    /// Sets what `ᾱ'` is after the last step.
    pub fn with_final_alpha(mut self, final_alpha: FinalAlpha) -> Self {
        self.final_alpha = final_alpha;
        self
    }

    /// Clamp `x̂₀` to `[−c, c]` and re-derive `ε̂` from it.
    pub fn with_clip_sample(mut self, clip: Option<f64>) -> Self {
        self.clip_sample = clip;
        self
    }

    /// η.
    pub fn eta(&self) -> f64 {
        self.eta
    }

    /// The descending timesteps.
    pub fn timesteps(&self) -> &[usize] {
        self.steps.timesteps()
    }

    /// `(ᾱ_t, ᾱ')` of step `k`.
    pub fn alphas(&self, k: usize) -> (f64, f64) {
        let last = match self.final_alpha {
            FinalAlpha::First => self.steps.first_alpha_bar(),
            FinalAlpha::One => 1.0,
        };
        self.steps.alphas(k, last)
    }
}

impl Sampler for DdimSampler {
    fn name(&self) -> &'static str {
        "ddim"
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
        let (a, a_prev) = self.alphas(k);
        let var = (1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev);
        self.eta * var.max(0.0).sqrt()
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
        let (a, a_prev) = self.alphas(k);
        let (x0, eps) = ddpm_predictions(
            self.name(),
            x,
            model_output,
            parameterization,
            a,
            self.clip_sample,
        )?;
        let std = self.step_std(k);
        let dir = (1.0 - a_prev - std * std).max(0.0).sqrt();
        let mean = x0.clone().mul_scalar(a_prev.sqrt()) + eps.mul_scalar(dir);
        finish(mean, std, x0, transition, reduction)
    }
}
