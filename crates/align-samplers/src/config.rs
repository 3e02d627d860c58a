//! [`SamplerConfig`]: a serialisable description of any sampler (for TOML run configs).

use crate::ddim::{DdimSampler, FinalAlpha};
use crate::ddpm::{DdpmSampler, DdpmVariance};
use crate::error::Result;
use crate::flow::{CpsSampler, FlowEulerSampler, FlowSdeSampler};
use crate::flow_grid::FlowGrid;
use crate::schedule::{BetaSchedule, NoiseSchedule, TimestepSpacing, strided_timesteps};
use crate::step::Sampler;

/// A sampler and its schedule, as written in a run configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SamplerConfig {
    /// DDPM ancestral sampling on `num_steps` strided timesteps.
    Ddpm {
        /// Training timesteps `T`.
        num_train_timesteps: usize,
        /// Beta schedule.
        beta_schedule: BetaSchedule,
        /// Sampling steps `K`.
        num_steps: usize,
        /// Timestep spacing.
        spacing: TimestepSpacing,
        /// Reverse variance.
        variance: DdpmVariance,
        /// Optional `x̂₀` clamp.
        clip_sample: Option<f64>,
    },
    /// DDIM with stochasticity η.
    Ddim {
        /// Training timesteps `T`.
        num_train_timesteps: usize,
        /// Beta schedule.
        beta_schedule: BetaSchedule,
        /// Sampling steps `K`.
        num_steps: usize,
        /// Timestep spacing.
        spacing: TimestepSpacing,
        /// η (0 deterministic, 1 = DDPM posterior variance).
        eta: f64,
        /// `ᾱ` after the last step.
        final_alpha: FinalAlpha,
        /// Optional `x̂₀` clamp.
        clip_sample: Option<f64>,
    },
    /// Deterministic flow Euler ODE.
    FlowEuler {
        /// Steps `K`.
        num_steps: usize,
        /// Time shift (1 = none).
        shift: f64,
    },
    /// Flow-GRPO marginal-preserving SDE.
    FlowSde {
        /// Steps `K`.
        num_steps: usize,
        /// Time shift (1 = none).
        shift: f64,
        /// `a` in `σ_t = a √(t/(1−t))`.
        noise_level: f64,
        /// Optional `[start, end)` of stochastic steps.
        window: Option<(usize, usize)>,
    },
    /// DanceGRPO's SDE: the Flow-GRPO step with a constant `σ_t = noise_level`.
    DanceSde {
        /// Steps `K`.
        num_steps: usize,
        /// Time shift (1 = none).
        shift: f64,
        /// η: the constant `σ_t` (0.3 in DanceGRPO's recipes).
        noise_level: f64,
        /// Optional `[start, end)` of stochastic steps.
        window: Option<(usize, usize)>,
    },
    /// Coefficient-preserving sampling.
    Cps {
        /// Steps `K`.
        num_steps: usize,
        /// Time shift (1 = none).
        shift: f64,
        /// Noise fraction in `[0, 1]`.
        noise_level: f64,
        /// Optional `[start, end)` of stochastic steps.
        window: Option<(usize, usize)>,
    },
}

impl SamplerConfig {
    /// DDIM as DDPO uses it: `T = 1000`, scaled-linear betas, leading spacing with offset 1,
    /// `ᾱ` after the last step `= ᾱ₀`, and the given η and step count.
    pub fn ddim(num_steps: usize, eta: f64) -> Self {
        SamplerConfig::Ddim {
            num_train_timesteps: 1000,
            beta_schedule: BetaSchedule::stable_diffusion(),
            num_steps,
            spacing: TimestepSpacing::Leading { offset: 1 },
            eta,
            final_alpha: FinalAlpha::First,
            clip_sample: None,
        }
    }

    /// The Flow-GRPO SDE with `noise_level` (0.7 in Flow-GRPO) and no shift.
    pub fn flow_sde(num_steps: usize, noise_level: f64) -> Self {
        SamplerConfig::FlowSde {
            num_steps,
            shift: 1.0,
            noise_level,
            window: None,
        }
    }

    /// Builds the sampler.
    ///
    /// # Errors
    /// Any invalid field, named in the error.
    ///
    /// # Example
    /// ```
    /// let s = align_samplers::SamplerConfig::ddim(50, 1.0).build().unwrap();
    /// assert_eq!((s.name(), s.num_steps()), ("ddim", 50));
    /// ```
    pub fn build(&self) -> Result<Box<dyn Sampler + Send + Sync>> {
        let window = |w: &Option<(usize, usize)>| w.map(|(a, b)| a..b);
        Ok(match self {
            SamplerConfig::Ddpm {
                num_train_timesteps,
                beta_schedule,
                num_steps,
                spacing,
                variance,
                clip_sample,
            } => {
                let schedule = NoiseSchedule::new(*beta_schedule, *num_train_timesteps)?;
                let steps = strided_timesteps(*num_train_timesteps, *num_steps, *spacing)?;
                Box::new(
                    DdpmSampler::new(schedule, steps, *variance)?.with_clip_sample(*clip_sample),
                )
            }
            SamplerConfig::Ddim {
                num_train_timesteps,
                beta_schedule,
                num_steps,
                spacing,
                eta,
                final_alpha,
                clip_sample,
            } => {
                let schedule = NoiseSchedule::new(*beta_schedule, *num_train_timesteps)?;
                let steps = strided_timesteps(*num_train_timesteps, *num_steps, *spacing)?;
                Box::new(
                    DdimSampler::new(schedule, steps, *eta)?
                        .with_final_alpha(*final_alpha)
                        .with_clip_sample(*clip_sample),
                )
            }
            SamplerConfig::FlowEuler { num_steps, shift } => {
                Box::new(FlowEulerSampler::new(FlowGrid::new(*num_steps, *shift)?))
            }
            SamplerConfig::FlowSde {
                num_steps,
                shift,
                noise_level,
                window: w,
            } => Box::new(
                FlowSdeSampler::new(FlowGrid::new(*num_steps, *shift)?, *noise_level)?
                    .with_window(window(w))?,
            ),
            SamplerConfig::DanceSde {
                num_steps,
                shift,
                noise_level,
                window: w,
            } => Box::new(
                FlowSdeSampler::new(FlowGrid::new(*num_steps, *shift)?, *noise_level)?
                    .with_constant_sigma()
                    .with_window(window(w))?,
            ),
            SamplerConfig::Cps {
                num_steps,
                shift,
                noise_level,
                window: w,
            } => Box::new(
                CpsSampler::new(FlowGrid::new(*num_steps, *shift)?, *noise_level)?
                    .with_window(window(w))?,
            ),
        })
    }
}
