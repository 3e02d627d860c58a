//! Rollouts: drive any [`Denoiser`] over a [`Sampler`]'s schedule and record a
//! [`Trajectory`]; re-score stored transitions; replay a trajectory bit-exactly.
//!
//! Every random number comes from host-side [`NoiseKey`]s `(seed, sample id, step)`: sample
//! `b`'s initial noise is `NoiseKey::initial(seed, sample_ids[b])` and the noise of its
//! transition `k` is `NoiseKey::transition(seed, sample_ids[b], k)`. A trajectory is therefore a
//! pure function of the model, the sampler, the conditions and these keys.

use align_core::{
    Condition, CoreError, Denoiser, LogProbReduction, NoiseKey, Trajectory, noise_tensor,
};
use burn::tensor::{Tensor, TensorData};

use crate::cfg::guided_predict;
use crate::error::{Result, SamplerError};
use crate::step::{Sampler, StepOutput, Transition};

/// How to roll out.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RolloutConfig {
    /// Run seed of the noise keys.
    pub seed: u64,
    /// Classifier-free guidance scale `s` (1 = none).
    pub guidance_scale: f64,
    /// Log-prob reduction (Mean matches the published hyper-parameters).
    pub reduction: LogProbReduction,
    /// Keep each step's Gaussian mean (for closed-form KL to a reference).
    pub keep_means: bool,
    /// Keep each step's `x̂₀` (SDPO, ReFL, DenseGRPO).
    pub keep_pred_x0: bool,
    /// Every sample of a group starts from the group's initial noise (the noise of its first
    /// sample in the batch) instead of its own: the group shares its trajectory up to its first
    /// stochastic step (G²RPO's singular stochastic sampling). Transition noise stays per sample.
    /// The trajectory does not record it: [`replay`] and [`Trajectory::initial_key`] assume
    /// per-sample initial noise.
    ///
    /// [`Trajectory::initial_key`]: align_core::Trajectory::initial_key
    pub group_initial_noise: bool,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            guidance_scale: 1.0,
            reduction: LogProbReduction::Mean,
            keep_means: false,
            keep_pred_x0: false,
            group_initial_noise: false,
        }
    }
}

/// What to roll out: `B` samples, their conditions and identities.
#[derive(Debug, Clone)]
pub struct RolloutBatch<'a> {
    /// Conditions, batch `B`.
    pub condition: &'a Condition,
    /// Unconditional (null-prompt) conditions, batch `B`; required when guidance ≠ 1.
    pub uncond: Option<&'a Condition>,
    /// `B` global sample ids (the noise keys' `sample`).
    pub sample_ids: Vec<u64>,
    /// `B` condition (prompt) indices.
    pub condition_ids: Vec<usize>,
    /// `B` group ids; `None` = the condition ids.
    pub group_ids: Option<Vec<usize>>,
    /// Shape `[C, H, W]` of one latent.
    pub sample_shape: [usize; 3],
}

fn time_tensor(t: f64, batch: usize, device: &burn::tensor::Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(vec![t as f32; batch], [batch]), device)
}

/// One guided model call and one sampler step at step `k`.
#[allow(clippy::too_many_arguments)]
fn model_step<M: Denoiser + ?Sized, S: Sampler + ?Sized>(
    model: &M,
    sampler: &S,
    k: usize,
    x: Tensor<4>,
    condition: &Condition,
    uncond: Option<&Condition>,
    guidance_scale: f64,
    transition: Transition,
    reduction: LogProbReduction,
) -> Result<StepOutput> {
    let b = x.dims()[0];
    let t = time_tensor(sampler.model_time(k), b, &x.device());
    let out = guided_predict(model, x.clone(), t, condition, uncond, guidance_scale)?;
    sampler.step(k, x, out, model.parameterization(), transition, reduction)
}

/// Samples `B` trajectories.
///
/// The model should be on a device without autodiff (e.g. `model.valid()`) so no graph is
/// built; every stored tensor is detached either way.
///
/// # Errors
/// Inconsistent batch sizes, a missing unconditional condition under guidance, a model the
/// sampler cannot use, or a non-finite latent (reported with its step).
///
/// # Example
/// ```
/// use align_core::{Condition, Denoiser, Parameterization};
/// use align_samplers::{rollout, FlowGrid, FlowSdeSampler, RolloutBatch, RolloutConfig};
/// use burn::tensor::Tensor;
///
/// /// The exact velocity field of data concentrated at 0: v = x / t.
/// struct ToZero;
/// impl Denoiser for ToZero {
///     fn parameterization(&self) -> Parameterization { Parameterization::FlowVelocity }
///     fn predict(&self, x: Tensor<4>, t: Tensor<1>, _c: &Condition) -> Tensor<4> {
///         let b = x.dims()[0];
///         x / t.reshape([b, 1, 1, 1])
///     }
/// }
///
/// let device = align_core::select_device(Some("flex")).unwrap();
/// let cond = Condition::new(Tensor::zeros([2, 1, 1], &device));
/// let sampler = FlowSdeSampler::new(FlowGrid::new(10, 1.0).unwrap(), 0.7).unwrap();
/// let batch = RolloutBatch {
///     condition: &cond, uncond: None, sample_ids: vec![0, 1], condition_ids: vec![0, 0],
///     group_ids: None, sample_shape: [1, 2, 2],
/// };
/// let traj = rollout(&ToZero, &sampler, &batch, &RolloutConfig::default()).unwrap();
/// assert_eq!(traj.num_steps(), 10);
/// assert_eq!(traj.stochastic_steps().len(), 10);
/// ```
pub fn rollout<M: Denoiser + ?Sized, S: Sampler + ?Sized>(
    model: &M,
    sampler: &S,
    batch: &RolloutBatch<'_>,
    config: &RolloutConfig,
) -> Result<Trajectory> {
    let b = batch.sample_ids.len();
    if b == 0 {
        return Err(CoreError::shape("rollout batch", "at least one sample", 0).into());
    }
    if batch.condition_ids.len() != b {
        return Err(CoreError::shape("condition_ids", b, batch.condition_ids.len()).into());
    }
    let group_ids = batch
        .group_ids
        .clone()
        .unwrap_or_else(|| batch.condition_ids.clone());
    if group_ids.len() != b {
        return Err(CoreError::shape("group_ids", b, group_ids.len()).into());
    }
    if batch.condition.batch_size() != b {
        return Err(CoreError::shape("condition batch", b, batch.condition.batch_size()).into());
    }
    let device = batch.condition.context.device();
    let keys: Vec<NoiseKey> = (0..b)
        .map(|i| {
            let owner = if config.group_initial_noise {
                group_ids
                    .iter()
                    .position(|g| *g == group_ids[i])
                    .unwrap_or(i)
            } else {
                i
            };
            NoiseKey::initial(config.seed, batch.sample_ids[owner])
        })
        .collect();
    let mut x = noise_tensor(&keys, batch.sample_shape, &device)?;
    let k_steps = sampler.num_steps();
    let mut latents = Vec::with_capacity(k_steps + 1);
    let mut log_probs = Vec::with_capacity(k_steps);
    let mut stds = Vec::with_capacity(k_steps);
    let mut means = Vec::new();
    let mut pred_x0 = Vec::new();
    latents.push(x.clone());
    for k in 0..k_steps {
        let std = sampler.step_std(k);
        let transition = if std > 0.0 {
            let keys: Vec<NoiseKey> = batch
                .sample_ids
                .iter()
                .map(|&s| NoiseKey::transition(config.seed, s, k))
                .collect();
            Transition::Sample(noise_tensor(&keys, batch.sample_shape, &device)?)
        } else {
            Transition::Mean
        };
        let out = model_step(
            model,
            sampler,
            k,
            x,
            batch.condition,
            batch.uncond,
            config.guidance_scale,
            transition,
            config.reduction,
        )?;
        x = out.prev_sample.detach();
        let peak: f32 =
            x.clone()
                .abs()
                .max()
                .try_into_scalar()
                .map_err(|e| CoreError::Readback {
                    what: format!("{} latent after step {k}", sampler.name()),
                    reason: format!("{e:?}"),
                })?;
        if !peak.is_finite() {
            return Err(CoreError::NonFinite {
                what: format!("{} latent after step {k}", sampler.name()),
                value: f64::from(peak),
            }
            .into());
        }
        latents.push(x.clone());
        log_probs.push(out.log_prob.map(|lp| lp.detach()));
        stds.push(out.std);
        if config.keep_means {
            means.push(out.mean.detach());
        }
        if config.keep_pred_x0 {
            pred_x0.push(out.pred_x0.detach());
        }
    }
    Ok(Trajectory {
        latents,
        times: sampler.latent_times(),
        log_probs,
        stds,
        means,
        pred_x0,
        reduction: config.reduction,
        guidance_scale: config.guidance_scale,
        seed: config.seed,
        sample_ids: batch.sample_ids.clone(),
        condition_ids: batch.condition_ids.clone(),
        group_ids,
        rewards: None,
    })
}

/// Re-scores transition `k` of a stored trajectory under the model's current parameters:
/// the stored `x_{k+1}` is kept and its log-prob, the Gaussian mean and `x̂₀` are recomputed
/// (with the trajectory's guidance scale and reduction). Run the model on an autodiff device
/// to differentiate the returned log-prob.
///
/// # Errors
/// Step out of range, batch mismatch, or a model the sampler cannot use.
pub fn rescore<M: Denoiser + ?Sized, S: Sampler + ?Sized>(
    model: &M,
    sampler: &S,
    trajectory: &Trajectory,
    k: usize,
    condition: &Condition,
    uncond: Option<&Condition>,
) -> Result<StepOutput> {
    if k >= trajectory.num_steps() || trajectory.num_steps() != sampler.num_steps() {
        return Err(SamplerError::StepOutOfRange {
            sampler: sampler.name(),
            step: k,
            steps: trajectory.num_steps().min(sampler.num_steps()),
        });
    }
    let device = condition.context.device();
    let x = trajectory.latents[k].clone().to_device(&device);
    let next = trajectory.latents[k + 1].clone().to_device(&device);
    model_step(
        model,
        sampler,
        k,
        x,
        condition,
        uncond,
        trajectory.guidance_scale,
        Transition::Rescore(next),
        trajectory.reduction,
    )
}

/// Re-runs transition `k` of a stored trajectory from a given `x_k` with the trajectory's own
/// noise (re-derived from its keys): `x_{k+1} = μ_θ(x_k) + σ_k ε_k`, the reparameterised step.
/// With `x_k` tracked (`require_grad`) and the model on an autodiff device, the output is
/// differentiable with respect to `x_k` and the parameters through `μ` — the building block of
/// reward backpropagation through the sampler (chained vector-Jacobian products). With the
/// stored `x_k` and unchanged parameters it reproduces the stored `x_{k+1}`.
///
/// # Errors
/// Step out of range, batch mismatch, or a model the sampler cannot use.
pub fn pathwise_step<M: Denoiser + ?Sized, S: Sampler + ?Sized>(
    model: &M,
    sampler: &S,
    trajectory: &Trajectory,
    k: usize,
    x: Tensor<4>,
    condition: &Condition,
    uncond: Option<&Condition>,
) -> Result<StepOutput> {
    if k >= trajectory.num_steps() || trajectory.num_steps() != sampler.num_steps() {
        return Err(SamplerError::StepOutOfRange {
            sampler: sampler.name(),
            step: k,
            steps: trajectory.num_steps().min(sampler.num_steps()),
        });
    }
    let device = x.device();
    let transition = if sampler.step_std(k) > 0.0 {
        let keys: Vec<NoiseKey> = (0..trajectory.batch_size())
            .map(|b| trajectory.transition_key(b, k))
            .collect();
        let dims = x.dims();
        Transition::Sample(noise_tensor(&keys, [dims[1], dims[2], dims[3]], &device)?)
    } else {
        Transition::Mean
    };
    model_step(
        model,
        sampler,
        k,
        x,
        condition,
        uncond,
        trajectory.guidance_scale,
        transition,
        trajectory.reduction,
    )
}

/// Re-runs a trajectory from its stored noise keys (seed, sample ids, guidance, reduction):
/// with the same model and sampler the result is bit-identical on a deterministic backend.
///
/// # Errors
/// As [`rollout`].
pub fn replay<M: Denoiser + ?Sized, S: Sampler + ?Sized>(
    model: &M,
    sampler: &S,
    trajectory: &Trajectory,
    condition: &Condition,
    uncond: Option<&Condition>,
) -> Result<Trajectory> {
    let dims = trajectory.initial_noise().dims();
    let batch = RolloutBatch {
        condition,
        uncond,
        sample_ids: trajectory.sample_ids.clone(),
        condition_ids: trajectory.condition_ids.clone(),
        group_ids: Some(trajectory.group_ids.clone()),
        sample_shape: [dims[1], dims[2], dims[3]],
    };
    let config = RolloutConfig {
        seed: trajectory.seed,
        guidance_scale: trajectory.guidance_scale,
        reduction: trajectory.reduction,
        keep_means: !trajectory.means.is_empty(),
        keep_pred_x0: !trajectory.pred_x0.is_empty(),
        group_initial_noise: false,
    };
    rollout(model, sampler, &batch, &config)
}
