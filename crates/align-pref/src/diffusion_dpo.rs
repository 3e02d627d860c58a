//! Diffusion-DPO (Wallace et al. 2024): DPO on the diffusion ELBO, offline pairs
//! `(c, x₀^w, x₀^l)` and a frozen reference.
//!
//! Winner and loser are noised with the **same** `ε` and the **same** timestep (the official
//! code repeats the first half of both); with `e(m, x) = mean_{C,H,W} ‖target − m(x_t, t)‖²`
//! (ε-, v- or flow-velocity target, [`crate::denoising_errors`]):
//!
//! ```text
//! inside = −½ β [ (e(θ, x^w) − e(θ, x^l)) − (e(ref, x^w) − e(ref, x^l)) ]
//! L      = −mean log σ(inside)
//! ```
//!
//! The official scaling: β = 5000 on the mean-reduced MSE (SD 1.5 and SDXL; the factor ½ and
//! the per-pixel mean are part of that scale — checklist §1.D). At initialisation (policy =
//! reference) `inside = 0` exactly and `L = ln 2`; the implicit accuracy `mean(inside > 0)` is
//! then 0 (a strict inequality, as in the official code). Swapping winner and loser negates
//! `inside`.

use align_core::{Condition, Denoiser};
use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;

use crate::error::{Result, check_loss, check_positive, positive_fraction};
use crate::noising::{NoiseLevels, denoising_errors};

/// The official β on mean-reduced errors (SD 1.5, SDXL).
pub const DIFFUSION_DPO_BETA: f64 = 5000.0;

/// One Diffusion-DPO batch: `B` pairs with their shared noise and noise levels.
pub struct DpoBatch<'a> {
    /// Preferred samples `[B, C, H, W]`.
    pub winners: Tensor<4>,
    /// Dispreferred samples `[B, C, H, W]`.
    pub losers: Tensor<4>,
    /// The noise `ε`, shared by winner and loser of a pair, `[B, C, H, W]`.
    pub noise: Tensor<4>,
    /// The noise levels, shared by winner and loser of a pair.
    pub levels: &'a NoiseLevels,
    /// The prompts' conditions from the policy, batch `B`.
    pub condition: &'a Condition,
    /// The reference's own conditions when its text encoder differs from the policy's (LoRA
    /// on the text encoder); `None` = `condition`.
    pub reference_condition: Option<&'a Condition>,
}

/// The loss and its diagnostics.
pub struct DpoOutput {
    /// `−mean log σ(inside)`, shape `[1]`.
    pub loss: Tensor<1>,
    /// `inside` per pair, `[B]`.
    pub inside: Tensor<1>,
    /// `mean(inside > 0)`.
    pub implicit_accuracy: f64,
}

/// The Diffusion-DPO loss (module docs) of `policy` against `reference` (no gradient reaches
/// the reference).
///
/// # Errors
/// A non-positive or non-finite β, mismatched shapes, a non-finite loss.
pub fn diffusion_dpo_loss<M: Denoiser + ?Sized>(
    policy: &M,
    reference: &M,
    batch: DpoBatch<'_>,
    beta: f64,
) -> Result<DpoOutput> {
    check_positive("beta", beta)?;
    let ref_cond = batch.reference_condition.unwrap_or(batch.condition);
    let err = |m: &M, x: Tensor<4>, c: &Condition| {
        denoising_errors(m, x, batch.noise.clone(), batch.levels, c)
    };
    let pol_w = err(policy, batch.winners.clone(), batch.condition)?;
    let pol_l = err(policy, batch.losers.clone(), batch.condition)?;
    let ref_w = err(reference, batch.winners, ref_cond)?.detach();
    let ref_l = err(reference, batch.losers, ref_cond)?.detach();
    let inside = ((pol_w - pol_l) - (ref_w - ref_l)).mul_scalar(-0.5 * beta);
    let loss = log_sigmoid(inside.clone()).mean().neg();
    check_loss(&loss, "the Diffusion-DPO loss")?;
    let implicit_accuracy = positive_fraction(&inside, "inside")?;
    Ok(DpoOutput {
        loss,
        inside,
        implicit_accuracy,
    })
}
