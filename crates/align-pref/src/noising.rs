//! The forward process at a given noise level, and per-sample denoising errors — what every
//! diffusion preference loss is built from.
//!
//! `x_t = signal · x₀ + noise · ε`, with `(signal, noise) = (√ᾱ_t, √(1 − ᾱ_t))` for DDPM models
//! and `(1 − t, t)` for flow models. The regression target depends on the model's
//! parameterization: ε, `v = signal·ε − noise·x₀` (v-prediction), `x₀`, or the flow velocity
//! `ε − x₀`.

use align_core::{Condition, CoreError, Denoiser, Parameterization};
use align_samplers::NoiseSchedule;
use burn::tensor::{Tensor, TensorData};

use crate::error::{PrefError, Result};

/// Per-sample noise levels of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseLevels {
    /// The time the model is called with (DDPM timestep, or flow `t`).
    pub model_times: Vec<f64>,
    /// Coefficient of `x₀`.
    pub signal: Vec<f64>,
    /// Coefficient of `ε`.
    pub noise: Vec<f64>,
}

impl NoiseLevels {
    /// DDPM timesteps `t` (0-based) of a schedule.
    ///
    /// # Errors
    /// A timestep beyond the schedule.
    pub fn ddpm(schedule: &NoiseSchedule, timesteps: &[usize]) -> Result<Self> {
        let n = schedule.num_train_timesteps();
        if let Some(&bad) = timesteps.iter().find(|&&t| t >= n) {
            return Err(PrefError::config(
                "timestep",
                format!("{bad} is beyond the schedule's {n} steps"),
            ));
        }
        let ab: Vec<f64> = timesteps.iter().map(|&t| schedule.alpha_bar(t)).collect();
        Ok(Self {
            model_times: timesteps.iter().map(|&t| t as f64).collect(),
            signal: ab.iter().map(|a| a.sqrt()).collect(),
            noise: ab.iter().map(|a| (1.0 - a).sqrt()).collect(),
        })
    }

    /// Flow times `t ∈ [0, 1]` (`x_t = (1 − t) x₀ + t ε`).
    ///
    /// # Errors
    /// A time outside `[0, 1]`.
    pub fn flow(times: &[f64]) -> Result<Self> {
        if let Some(bad) = times.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return Err(PrefError::config(
                "flow time",
                format!("{bad} is outside [0, 1]"),
            ));
        }
        Ok(Self {
            model_times: times.to_vec(),
            signal: times.iter().map(|t| 1.0 - t).collect(),
            noise: times.to_vec(),
        })
    }

    fn len(&self) -> usize {
        self.model_times.len()
    }
}

fn column(v: &[f64], device: &burn::tensor::Device) -> Tensor<4> {
    Tensor::<1>::from_data(
        TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), [v.len()]),
        device,
    )
    .reshape([v.len(), 1, 1, 1])
}

/// Per-sample denoising errors `mean_{C,H,W} (target − model(x_t, t))²`, `[B]`.
///
/// # Shapes
/// - `x0`, `noise`: `[B, C, H, W]`; `levels` and `condition` of batch `B`; output `[B]`.
///
/// # Errors
/// Mismatched batch sizes.
pub fn denoising_errors<M: Denoiser + ?Sized>(
    model: &M,
    x0: Tensor<4>,
    noise: Tensor<4>,
    levels: &NoiseLevels,
    condition: &Condition,
) -> Result<Tensor<1>> {
    Ok(per_sample_mean_square(denoising_residuals(
        model, x0, noise, levels, condition,
    )?))
}

/// `mean_{C,H,W} r²` per sample: `[B, C, H, W]` → `[B]`.
pub(crate) fn per_sample_mean_square(r: Tensor<4>) -> Tensor<1> {
    let [b, c, h, w] = r.dims();
    r.powf_scalar(2.0)
        .reshape([b, c * h * w])
        .mean_dim(1)
        .reshape([b])
}

/// Denoising residuals `model(x_t, t) − target` at `x_t = signal·x₀ + noise·ε`, with the
/// model's own target (ε, v, x₀ or the flow velocity `ε − x₀`).
///
/// # Shapes
/// - `x0`, `noise`: `[B, C, H, W]`; `levels` and `condition` of batch `B`; output
///   `[B, C, H, W]`.
///
/// # Errors
/// Mismatched batch sizes.
pub fn denoising_residuals<M: Denoiser + ?Sized>(
    model: &M,
    x0: Tensor<4>,
    noise: Tensor<4>,
    levels: &NoiseLevels,
    condition: &Condition,
) -> Result<Tensor<4>> {
    let [b, c, h, w] = x0.dims();
    if noise.dims() != [b, c, h, w] {
        return Err(CoreError::shape(
            "noise",
            format!("{:?}", x0.dims()),
            format!("{:?}", noise.dims()),
        )
        .into());
    }
    if levels.len() != b {
        return Err(CoreError::shape("noise levels", b, levels.len()).into());
    }
    if condition.batch_size() != b {
        return Err(CoreError::shape("condition batch", b, condition.batch_size()).into());
    }
    let device = x0.device();
    let sa = column(&levels.signal, &device);
    let sb = column(&levels.noise, &device);
    let x_t = x0.clone() * sa.clone() + noise.clone() * sb.clone();
    let target = match model.parameterization() {
        Parameterization::Epsilon => noise,
        Parameterization::VPrediction => noise * sa - x0 * sb,
        Parameterization::Sample => x0,
        Parameterization::FlowVelocity => noise - x0,
    };
    let t = Tensor::<1>::from_data(
        TensorData::new(
            levels
                .model_times
                .iter()
                .map(|&t| t as f32)
                .collect::<Vec<_>>(),
            [b],
        ),
        &device,
    );
    Ok(model.predict(x_t, t, condition) - target)
}
