//! Flow-matching samplers: the Euler ODE, the Flow-GRPO SDE and coefficient-preserving
//! sampling (CPS).
//!
//! Convention: `x_t = (1−t) x₀ + t ε`, velocity `v = ε − x₀`, generation `t: 1 → 0` on a
//! [`FlowGrid`], step `k` goes from `t = t_k` to `t' = t_{k+1}` with `Δt = t' − t < 0`.
//! From the velocity: `x̂₀ = x_t − t v` and `ε̂ = x_t + (1−t) v`.
//!
//! **Euler ODE** (deterministic, no log-prob): `x_{t'} = x_t + Δt · v`.
//!
//! **Flow-GRPO SDE.** The reverse-time SDE with the ODE's marginals is
//! `dx = [v + σ_t²/(2t) (x + (1−t) v)] dt + σ_t dw̄` (the score of the linear path is
//! `∇log p_t = −(x + (1−t) v)/t`). Its Euler–Maruyama step is Gaussian with
//!
//! ```text
//! μ   = x (1 + σ_t² Δt / (2t)) + v (1 + σ_t² (1−t) / (2t)) Δt
//! std = σ_t √(−Δt),   σ_t = a √(t / (1 − t))  (a = noise_level, 0.7 in Flow-GRPO)
//! ```
//!
//! At `t = 1` the `1 − t` under the root is replaced by `1 − t_1` (the next grid point), as in
//! the official code.
//!
//! **DanceGRPO's SDE** (Xue et al. 2025, `flux_step` of its public code) is the same step with
//! a constant `σ_t = η` ([`FlowSdeSampler::with_constant_sigma`]; η = 0.3 in its recipes):
//! `μ = x (1 + η² Δt / (2t)) + v (1 + η² (1−t) / (2t)) Δt`, `std = η √(−Δt)`. Any `σ_t` keeps
//! the ODE's marginals (the drift's score term compensates the noise); the constant one puts
//! relatively more noise on the late, low-noise steps than Flow-GRPO's, whose `σ_t → 0` as
//! `t → 0`. This is **not** the seed document's placeholder drift
//! `v + ½σ²(−v/σ)`, which does not preserve the marginals (a test keeps that check).
//!
//! **CPS** (Wang & Yu 2025, "coefficient-preserving sampling"): with `s = t' · sin(a π/2)`,
//!
//! ```text
//! μ = (1 − t') x̂₀ + √(t'² − s²) ε̂,     std = s
//! ```
//!
//! so the next latent keeps exactly the coefficients `(1 − t', t')` of a clean sample and unit
//! noise. The official code drops the constant terms of its log-prob; here the full Gaussian
//! log-density is returned (constants cancel in ratios and do not change gradients).
//! CPS's last step (t' = 0) is deterministic.
//!
//! The SDE and CPS samplers accept an optional **window** of steps `[start, end)` outside
//! which they take the Euler step (Flow-GRPO-Fast / MixGRPO: noise, and training, on a few
//! steps only).

use std::ops::Range;

use align_core::{LogProbReduction, Parameterization};
use burn::tensor::Tensor;

use crate::error::{Result, SamplerError};
use crate::flow_grid::FlowGrid;
use crate::step::{Sampler, StepOutput, Transition, check_step, finish};

fn require_velocity(sampler: &'static str, p: Parameterization) -> Result<()> {
    if p == Parameterization::FlowVelocity {
        Ok(())
    } else {
        Err(SamplerError::UnsupportedParameterization {
            sampler,
            parameterization: p,
        })
    }
}

fn pred_x0(x: Tensor<4>, v: Tensor<4>, t: f64) -> Tensor<4> {
    x - v.mul_scalar(t)
}

fn euler_mean(x: Tensor<4>, v: Tensor<4>, dt: f64) -> Tensor<4> {
    x + v.mul_scalar(dt)
}

/// A flow grid and the window of steps that inject noise (all steps when `None`).
#[derive(Debug, Clone)]
struct WindowedGrid {
    grid: FlowGrid,
    window: Option<Range<usize>>,
}

impl WindowedGrid {
    fn new(grid: FlowGrid) -> Self {
        Self { grid, window: None }
    }

    fn with_window(mut self, window: Option<Range<usize>>) -> Result<Self> {
        let steps = self.grid.num_steps();
        if let Some(w) = &window
            && (w.start >= w.end || w.end > steps)
        {
            return Err(SamplerError::config(
                "sde_window",
                format!(
                    "{}..{} is not a non-empty range within 0..{steps}",
                    w.start, w.end
                ),
            ));
        }
        self.window = window;
        Ok(self)
    }

    fn is_stochastic(&self, k: usize) -> bool {
        self.window.as_ref().is_none_or(|w| w.contains(&k))
    }

    fn num_steps(&self) -> usize {
        self.grid.num_steps()
    }

    fn model_time(&self, k: usize) -> f64 {
        self.grid.times()[k]
    }

    fn latent_times(&self) -> Vec<f64> {
        self.grid.times().to_vec()
    }
}

/// The deterministic flow Euler ODE sampler.
#[derive(Debug, Clone)]
pub struct FlowEulerSampler {
    steps: WindowedGrid,
}

impl FlowEulerSampler {
    /// An Euler sampler on `grid`.
    pub fn new(grid: FlowGrid) -> Self {
        Self {
            steps: WindowedGrid::new(grid),
        }
    }

    /// The time grid.
    pub fn grid(&self) -> &FlowGrid {
        &self.steps.grid
    }
}

impl Sampler for FlowEulerSampler {
    fn name(&self) -> &'static str {
        "flow-euler"
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

    fn step_std(&self, _k: usize) -> f64 {
        0.0
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
        require_velocity(self.name(), parameterization)?;
        let (t, t_next) = self.steps.grid.interval(k);
        let x0 = pred_x0(x.clone(), model_output.clone(), t);
        let mean = euler_mean(x, model_output, t_next - t);
        finish(mean, 0.0, x0, transition, reduction)
    }
}

/// How the flow SDE's `σ_t` depends on `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigmaSchedule {
    /// Flow-GRPO: `σ_t = a √(t / (1 − t))`.
    #[default]
    FlowGrpo,
    /// DanceGRPO: `σ_t = η`, constant.
    Constant,
}

/// The Flow-GRPO marginal-preserving SDE sampler (or DanceGRPO's, with a constant `σ_t`).
#[derive(Debug, Clone)]
pub struct FlowSdeSampler {
    steps: WindowedGrid,
    noise_level: f64,
    noise_scales: Option<Vec<f64>>,
    schedule: SigmaSchedule,
}

impl FlowSdeSampler {
    /// An SDE sampler with `σ_t = noise_level · √(t/(1−t))` (Flow-GRPO: 0.7).
    ///
    /// # Errors
    /// `noise_level` negative or not finite.
    pub fn new(grid: FlowGrid, noise_level: f64) -> Result<Self> {
        if !(noise_level.is_finite() && noise_level >= 0.0) {
            return Err(SamplerError::config(
                "noise_level",
                format!("{noise_level} must be finite and ≥ 0"),
            ));
        }
        Ok(Self {
            steps: WindowedGrid::new(grid),
            noise_level,
            noise_scales: None,
            schedule: SigmaSchedule::FlowGrpo,
        })
    }

    /// DanceGRPO's schedule: `σ_t = noise_level` at every step (η = 0.3 in its recipes).
    pub fn with_constant_sigma(mut self) -> Self {
        self.schedule = SigmaSchedule::Constant;
        self
    }

    /// The `σ_t` schedule.
    pub fn schedule(&self) -> SigmaSchedule {
        self.schedule
    }

    /// Inject noise only on steps in `window`; Euler steps elsewhere.
    ///
    /// # Errors
    /// An empty window or one beyond the grid.
    pub fn with_window(mut self, window: Option<Range<usize>>) -> Result<Self> {
        self.steps = self.steps.with_window(window)?;
        Ok(self)
    }

    /// Timestep-specific noise: step `k` uses `σ_k = scales[k] · noise_level · √(t/(1−t))`
    /// (DenseGRPO's calibrated exploration). `None` = 1 everywhere; a scale of exactly 1 gives
    /// bit for bit the unscaled step.
    ///
    /// # Errors
    /// Not one scale per step, or a negative / non-finite scale.
    pub fn with_noise_scales(mut self, scales: Option<Vec<f64>>) -> Result<Self> {
        if let Some(s) = &scales {
            if s.len() != self.steps.num_steps() {
                return Err(SamplerError::config(
                    "noise_scales",
                    format!("{} scales for {} steps", s.len(), self.steps.num_steps()),
                ));
            }
            if let Some(bad) = s.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
                return Err(SamplerError::config(
                    "noise_scales",
                    format!("{bad} must be finite and ≥ 0"),
                ));
            }
        }
        self.noise_scales = scales;
        Ok(self)
    }

    /// The per-step noise scales, if set.
    pub fn noise_scales(&self) -> Option<&[f64]> {
        self.noise_scales.as_deref()
    }

    /// The time grid.
    pub fn grid(&self) -> &FlowGrid {
        &self.steps.grid
    }

    /// `σ_t` at step `k` (with the `t = 1` clamp of Flow-GRPO's schedule).
    pub fn sigma(&self, k: usize) -> f64 {
        let sigma = match self.schedule {
            SigmaSchedule::FlowGrpo => {
                let times = self.steps.grid.times();
                let t = times[k];
                let denom_t = if t >= 1.0 { times[1] } else { t };
                self.noise_level * (t / (1.0 - denom_t)).sqrt()
            }
            SigmaSchedule::Constant => self.noise_level,
        };
        match &self.noise_scales {
            Some(s) if s[k] != 1.0 => s[k] * sigma,
            _ => sigma,
        }
    }
}

impl Sampler for FlowSdeSampler {
    fn name(&self) -> &'static str {
        match self.schedule {
            SigmaSchedule::FlowGrpo => "flow-sde",
            SigmaSchedule::Constant => "dance-sde",
        }
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
        if !self.steps.is_stochastic(k) {
            return 0.0;
        }
        let (t, t_next) = self.steps.grid.interval(k);
        self.sigma(k) * (t - t_next).sqrt()
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
        require_velocity(self.name(), parameterization)?;
        let (t, t_next) = self.steps.grid.interval(k);
        let dt = t_next - t;
        let x0 = pred_x0(x.clone(), model_output.clone(), t);
        if !self.steps.is_stochastic(k) {
            let mean = euler_mean(x, model_output, dt);
            return finish(mean, 0.0, x0, transition, reduction);
        }
        let s2 = self.sigma(k).powi(2);
        let mean = x.mul_scalar(1.0 + s2 * dt / (2.0 * t))
            + model_output.mul_scalar((1.0 + s2 * (1.0 - t) / (2.0 * t)) * dt);
        finish(mean, self.step_std(k), x0, transition, reduction)
    }
}

/// Coefficient-preserving sampling (CPS).
#[derive(Debug, Clone)]
pub struct CpsSampler {
    steps: WindowedGrid,
    noise_level: f64,
}

impl CpsSampler {
    /// A CPS sampler with noise fraction `noise_level ∈ [0, 1]` (Flow-GRPO-Fast: 0.8).
    ///
    /// # Errors
    /// `noise_level` outside `[0, 1]`.
    pub fn new(grid: FlowGrid, noise_level: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&noise_level) {
            return Err(SamplerError::config(
                "noise_level",
                format!("{noise_level} must lie in [0, 1] for CPS"),
            ));
        }
        Ok(Self {
            steps: WindowedGrid::new(grid),
            noise_level,
        })
    }

    /// Inject noise only on steps in `window`; Euler steps elsewhere.
    ///
    /// # Errors
    /// An empty window or one beyond the grid.
    pub fn with_window(mut self, window: Option<Range<usize>>) -> Result<Self> {
        self.steps = self.steps.with_window(window)?;
        Ok(self)
    }
}

impl Sampler for CpsSampler {
    fn name(&self) -> &'static str {
        "cps"
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
        if !self.steps.is_stochastic(k) {
            return 0.0;
        }
        let (_, t_next) = self.steps.grid.interval(k);
        t_next * (self.noise_level * std::f64::consts::FRAC_PI_2).sin()
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
        require_velocity(self.name(), parameterization)?;
        let (t, t_next) = self.steps.grid.interval(k);
        let x0 = pred_x0(x.clone(), model_output.clone(), t);
        if !self.steps.is_stochastic(k) {
            let mean = euler_mean(x, model_output, t_next - t);
            return finish(mean, 0.0, x0, transition, reduction);
        }
        let std = self.step_std(k);
        let eps = x + model_output.mul_scalar(1.0 - t);
        let mean = x0.clone().mul_scalar(1.0 - t_next)
            + eps.mul_scalar((t_next * t_next - std * std).max(0.0).sqrt());
        finish(mean, std, x0, transition, reduction)
    }
}
