//! Diffusion-KTO (Li et al. 2024, "Aligning Diffusion Models by Optimizing Human Utility"):
//! preference learning from **unpaired binary feedback** (each image liked or disliked) with a
//! prospect-theory utility around a reference point.
//!
//! With the per-sample errors of the policy and the frozen reference on the same noise and
//! timestep ([`crate::denoising_errors`]), the implicit reward of an image is how much better
//! the policy denoises it than the reference:
//!
//! ```text
//! ρ   = β (e_ref − e_θ)
//! z₀  = max(0, mean_batch ρ)        (detached; the reference point — or a fixed value)
//! L_b = λ_D (1 − σ(ρ_b − z₀))       for a desirable image
//!     = λ_U (1 − σ(z₀ − ρ_b))       for an undesirable one
//! L   = mean_b L_b
//! ```
//!
//! This is the KTO objective of checklist §1.D (S000's Diffusion-KTO form, with `v = 1 − σ`)
//! and the LLM KTO paper's batch estimate of the reference point; the Diffusion-KTO paper's
//! exact choice of `z₀` and of β was not available here — β defaults to Diffusion-DPO's scale
//! for mean-reduced errors. At initialisation (policy = reference) `ρ = 0`, `z₀ = 0` and every
//! term is `λ/2`.

use align_core::{Condition, Denoiser};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Tensor, TensorData};

use crate::error::{PrefError, Result, check_loss};
use crate::noising::{NoiseLevels, denoising_errors};

/// Where the utility's reference point comes from (TOML: `reference_point = "batch-mean"` or
/// `reference_point = { fixed = 0.0 }`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReferencePoint {
    /// `max(0, mean_batch ρ)`, detached.
    BatchMean,
    /// A constant.
    Fixed(f64),
}

/// Diffusion-KTO hyper-parameters (the `[kto]` table of a preference run).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KtoConfig {
    /// β scaling the implicit reward (mean-reduced errors: thousands, as Diffusion-DPO).
    pub beta: f64,
    /// λ_D, weight of desirable images.
    pub desirable_weight: f64,
    /// λ_U, weight of undesirable images.
    pub undesirable_weight: f64,
    /// The reference point.
    pub reference_point: ReferencePoint,
}

impl Default for KtoConfig {
    fn default() -> Self {
        Self {
            beta: 5000.0,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            reference_point: ReferencePoint::BatchMean,
        }
    }
}

/// A batch of images with binary labels.
pub struct KtoBatch<'a> {
    /// Images `[B, C, H, W]`.
    pub images: Tensor<4>,
    /// `true` = desirable.
    pub desirable: &'a [bool],
    /// Noise `[B, C, H, W]`, the same for policy and reference.
    pub noise: Tensor<4>,
    /// Noise levels.
    pub levels: &'a NoiseLevels,
    /// Conditions from the policy, batch `B`.
    pub condition: &'a Condition,
    /// The reference's own conditions (LoRA on the text encoder); `None` = `condition`.
    pub reference_condition: Option<&'a Condition>,
}

/// The loss and its diagnostics.
pub struct KtoOutput {
    /// The loss, shape `[1]`.
    pub loss: Tensor<1>,
    /// Implicit rewards ρ, `[B]`.
    pub rewards: Tensor<1>,
    /// The reference point used.
    pub z0: f64,
}

/// The Diffusion-KTO loss (module docs).
///
/// # Errors
/// Invalid hyper-parameters, labels of the wrong length, mismatched shapes, a non-finite loss.
pub fn kto_loss<M: Denoiser + ?Sized>(
    policy: &M,
    reference: &M,
    batch: KtoBatch<'_>,
    config: KtoConfig,
) -> Result<KtoOutput> {
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(config.beta) {
        return Err(PrefError::config("beta", "must be positive"));
    }
    if !(config.desirable_weight.is_finite()
        && config.desirable_weight >= 0.0
        && config.undesirable_weight.is_finite()
        && config.undesirable_weight >= 0.0)
    {
        return Err(PrefError::config("weights", "λ_D and λ_U must be ≥ 0"));
    }
    let b = batch.images.dims()[0];
    if batch.desirable.len() != b {
        return Err(align_core::CoreError::shape("labels", b, batch.desirable.len()).into());
    }
    let e_pol = denoising_errors(
        policy,
        batch.images.clone(),
        batch.noise.clone(),
        batch.levels,
        batch.condition,
    )?;
    let ref_cond = batch.reference_condition.unwrap_or(batch.condition);
    let e_ref =
        denoising_errors(reference, batch.images, batch.noise, batch.levels, ref_cond)?.detach();
    let rho = (e_ref - e_pol).mul_scalar(config.beta);
    let z0 = match config.reference_point {
        ReferencePoint::Fixed(v) => v,
        ReferencePoint::BatchMean => {
            let m: Vec<f32> = rho
                .clone()
                .detach()
                .mean()
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| PrefError::config("rewards", format!("unreadable: {e:?}")))?;
            f64::from(m[0]).max(0.0)
        }
    };
    let device = rho.device();
    // sign = +1 desirable, −1 undesirable; weight λ per sample.
    let sign: Vec<f32> = batch
        .desirable
        .iter()
        .map(|&d| if d { 1.0 } else { -1.0 })
        .collect();
    let weight: Vec<f32> = batch
        .desirable
        .iter()
        .map(|&d| {
            if d {
                config.desirable_weight as f32
            } else {
                config.undesirable_weight as f32
            }
        })
        .collect();
    let sign = Tensor::<1>::from_data(TensorData::new(sign, [b]), &device);
    let weight = Tensor::<1>::from_data(TensorData::new(weight, [b]), &device);
    let utility = sigmoid((rho.clone().sub_scalar(z0)) * sign);
    let loss = (utility.neg().add_scalar(1.0) * weight).mean();
    check_loss(&loss, "the KTO loss")?;
    Ok(KtoOutput {
        loss,
        rewards: rho,
        z0,
    })
}
