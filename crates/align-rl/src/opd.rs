//! Flow on-policy distillation (OPD; the source documents' "Diffusion OPD", and Flow-OPD,
//! arXiv 2605.08063): a **student** — the weaker model, here the same network sampled with few
//! steps — rolls out with the flow SDE; at each of its states the **teacher** is evaluated, and
//! the student's transition kernel is pulled toward the teacher's by the closed-form Gaussian KL,
//! summed over the steps:
//!
//! ```text
//! L = E_{x_{0:K} ~ p_S} [ Σ_k KL( p_S(· | x_k) ‖ p_T(· | x_k) ) ]
//! KL_k = R(‖μ_S(x_k) − μ_T(x_k)‖²) / (2 s_k²)
//! ```
//!
//! with `s_k` the step's standard deviation (`σ_t √|Δt|`; both kernels share it) and `R` the
//! log-prob reduction (mean over `C·H·W` by default). The `1/(2 s_k²)` weighting is the KL's own
//! (the source's Eq. 97 has it; its Eq. 130 drops it); the expectation is over the **student's**
//! rollouts (on-policy: the states the student visits), and the KL is `KL(student ‖ teacher)`
//! (mode-seeking in the student).
//!
//! **The teacher's kernel on a coarse step.** The teacher takes `substeps` Euler steps of its own
//! (guided) velocity from `x_k` at `t_k` to `t_{k+1}`; its average velocity over the interval,
//! `v̄_T = (x_{t_{k+1}} − x_k) / Δt`, goes through the sampler's own step formula, so `μ_T` is the
//! mean the sampler would take with the teacher's many-step flow. With `substeps = 1` and the
//! student equal to the teacher, `KL = 0` exactly (tested). The gradient reaches the student
//! through `μ_S` only; the states are stored (no gradient through the rollout).
//!
//! Flow-OPD itself feeds the negative KL as a per-step reward to PPO; the loss here is the
//! source documents' form (Eq. 128–130) differentiated at the stored states: a pathwise
//! (fixed-state) estimator that leaves out the score-function term of the state distribution's
//! own dependence on the student — the usual choice of on-policy distillation, whose fixed
//! point (the student's kernel equal to the teacher's at every visited state) is the same.

use align_core::{Denoiser, Parameterization, Trajectory, gaussian_kl};
use align_samplers::{Sampler, Transition, guided_predict, rescore};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

use crate::error::{Result, RlError};
use crate::update::{Encode, scalar};

/// OPD hyper-parameters (the `[opd]` table of `align train`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpdConfig {
    /// The teacher's Euler steps inside each of the student's steps.
    pub substeps: usize,
    /// Optimizer steps per iteration (the batch split into this many minibatches).
    pub minibatches: usize,
}

impl Default for OpdConfig {
    fn default() -> Self {
        Self {
            substeps: 8,
            minibatches: 1,
        }
    }
}

impl OpdConfig {
    /// Checks the counts.
    ///
    /// # Errors
    /// A zero count, named.
    pub fn validate(&self) -> Result<()> {
        if self.substeps == 0 {
            return Err(RlError::config("substeps", "must be ≥ 1"));
        }
        if self.minibatches == 0 {
            return Err(RlError::config("minibatches", "must be ≥ 1"));
        }
        Ok(())
    }
}

/// The teacher's mean for step `k` of `trajectory` (module docs): `substeps` Euler steps of the
/// teacher's guided velocity across `[t_k, t_{k+1}]`, their average velocity through the
/// sampler's step formula. No gradient.
///
/// # Shapes
/// - output `[B, C, H, W]`.
///
/// # Errors
/// A teacher that is not a flow-velocity model, a step out of range, a failing encoder.
#[allow(clippy::too_many_arguments)]
pub fn teacher_step_mean<M, S>(
    teacher: &M,
    sampler: &S,
    trajectory: &Trajectory,
    k: usize,
    condition: &align_core::Condition,
    uncond: Option<&align_core::Condition>,
    substeps: usize,
) -> Result<Tensor<4>>
where
    M: Denoiser,
    S: Sampler + ?Sized,
{
    if teacher.parameterization() != Parameterization::FlowVelocity {
        return Err(RlError::config(
            "teacher",
            "on-policy distillation of flows needs a flow-velocity teacher",
        ));
    }
    if k + 1 >= trajectory.times.len() || substeps == 0 {
        return Err(RlError::config(
            "step",
            format!(
                "step {k} of {} (substeps {substeps})",
                trajectory.num_steps()
            ),
        ));
    }
    let device = condition.context.device();
    let x_k = trajectory.latents[k].clone().to_device(&device);
    let (t0, t1) = (trajectory.times[k], trajectory.times[k + 1]);
    let b = x_k.dims()[0];
    let velocity = |x: Tensor<4>, t: f64| {
        guided_predict(
            teacher,
            x,
            Tensor::<1>::full([b], t, &device),
            condition,
            uncond,
            trajectory.guidance_scale,
        )
        .map(|v| v.detach())
    };
    let v_bar = if substeps == 1 {
        // v̄ = v_T(x_k, t_k) exactly (no round trip through x + Δt v).
        velocity(x_k.clone(), t0)?
    } else {
        let mut x = x_k.clone();
        for j in 0..substeps {
            let t = t0 + (t1 - t0) * j as f64 / substeps as f64;
            let t_next = t0 + (t1 - t0) * (j + 1) as f64 / substeps as f64;
            x = x.clone() + velocity(x, t)?.mul_scalar(t_next - t);
        }
        (x - x_k.clone()).div_scalar(t1 - t0)
    };
    let out = sampler.step(
        k,
        x_k,
        v_bar,
        Parameterization::FlowVelocity,
        Transition::Mean,
        trajectory.reduction,
    )?;
    Ok(out.mean.detach())
}

/// Diagnostics of an OPD gradient.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpdStats {
    /// `Σ_k mean_i KL_k` (the loss).
    pub kl_sum: f64,
    /// The per-step mean KLs, one per trained step, in the order given.
    pub step_kl: Vec<f64>,
}

/// The gradient of `Σ_k mean_i KL(p_S(·|x_k) ‖ p_T(·|x_k))` over `steps` of a student
/// rollout, one step's graph at a time.
///
/// # Errors
/// A deterministic step, a failing encoder or sampler, a non-finite KL, a student without
/// trainable parameters.
pub fn opd_gradients<M, S>(
    student: &M,
    teacher: &M,
    sampler: &S,
    trajectory: &Trajectory,
    steps: &[usize],
    encode: &Encode<'_, M>,
    substeps: usize,
) -> Result<(GradientsParams, OpdStats)>
where
    M: Module + Denoiser,
    S: Sampler + ?Sized,
{
    if steps.is_empty() {
        return Err(RlError::config("steps", "distil at least one step"));
    }
    let enc = |m: &M| (encode)(m, &trajectory.condition_ids).map_err(RlError::Encode);
    let (tc, tu) = enc(teacher)?;
    let mut acc = GradientsAccumulator::<M>::new();
    let mut stats = OpdStats::default();
    for &k in steps {
        let (c, u) = enc(student)?;
        let out = rescore(student, sampler, trajectory, k, &c, u.as_ref())?;
        if out.std <= 0.0 {
            return Err(RlError::config(
                "steps",
                format!("step {k} is deterministic: no Gaussian kernel to distil"),
            ));
        }
        let mu_t = teacher_step_mean(teacher, sampler, trajectory, k, &tc, tu.as_ref(), substeps)?;
        let kl = gaussian_kl(
            out.mean,
            out.std,
            mu_t.to_device(&c.context.device()),
            out.std,
            trajectory.reduction,
        )
        .mean();
        let value = scalar(kl.clone().detach(), &format!("the OPD KL at step {k}"))?;
        stats.kl_sum += value;
        stats.step_kl.push(value);
        if !kl.is_tracked() {
            return Err(RlError::config(
                "student",
                "no trainable parameter reaches the KL: put the student on an autodiff device",
            ));
        }
        acc.accumulate(student, GradientsParams::from_grads(kl.backward(), student));
    }
    Ok((acc.grads(), stats))
}
