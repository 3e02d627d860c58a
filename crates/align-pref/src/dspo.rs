//! DSPO, Direct Score Preference Optimization (Zhu et al., ICLR 2025): preference pairs turned
//! into a *score-matching* loss on the winner instead of a log-sigmoid of likelihood
//! differences.
//!
//! **Source of the formula.** The DSPO paper itself was not available to this project (nor is
//! it in the seed documents, checklist §6 G1), so its equation numbers cannot be cited. The
//! loss below is the SD 1.5 form of DSPO in the public Diffusion-SDPO code (Fu et al. 2025,
//! arXiv 2511.03317; `train.py`, `train_method = "dspo"`, run there with β = 0.001), re-derived
//! and written here in this crate's notation.
//!
//! Winner and loser share the noise `ε` and the noise level, as in Diffusion-DPO. With the
//! residuals `r_m(x) = m(x_t, t) − target` (ε-, v- or flow-velocity target,
//! [`crate::denoising_residuals`]) and the per-sample errors `e_m(x) = mean_{C,H,W} r_m(x)²`:
//!
//! ```text
//! inside = −½ β [ (e_θ(x^w) − e_θ(x^l)) − (e_ref(x^w) − e_ref(x^l)) ]      (Diffusion-DPO's)
//! g      = β (1 − σ(inside))
//! L      = mean_{B,C,H,W} ( r_θ(x^w) − g · (r_θ(x^w) − r_ref(x^w)) )²
//! ```
//!
//! `r_θ(x^w) − r_ref(x^w) = θ(x_t^w) − ref(x_t^w)`: the policy's prediction on the winner is
//! regressed onto its denoising target shifted by `g` times the policy–reference difference;
//! the loser enters only through `inside`, i.e. through how much the pair is already ranked
//! right (`g → 0` as `inside → +∞`). Gradients flow through all three appearances of θ (in
//! `r_θ`, in the difference and in `inside`), as in the public code; the reference gets none.
//!
//! Checked properties (tests): at initialisation (policy = reference) `L` equals the plain
//! denoising loss of the winners, `mean_B e_θ(x^w)`, for every β; the value matches a
//! hand computation; the gradient matches finite differences.

use align_core::{Condition, Denoiser};
use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

use crate::diffusion_dpo::DpoBatch;
use crate::error::{Result, check_loss, check_positive, positive_fraction};
use crate::noising::{denoising_residuals, per_sample_mean_square};

/// β of the public SD 1.5 DSPO run (Diffusion-SDPO's `sd15_dspo.sh`).
pub const DSPO_BETA: f64 = 0.001;

/// The DSPO loss and its diagnostics.
pub struct DspoOutput {
    /// `L`, shape `[1]`.
    pub loss: Tensor<1>,
    /// Diffusion-DPO's `inside` per pair, `[B]`.
    pub inside: Tensor<1>,
    /// The per-pair target shift `g = β (1 − σ(inside))`, `[B]`.
    pub shift: Tensor<1>,
    /// `mean(inside > 0)`.
    pub implicit_accuracy: f64,
}

/// The DSPO loss (module docs) of `policy` against `reference` on a batch of pairs with shared
/// noise and noise levels.
///
/// # Shapes
/// - `batch.winners`, `batch.losers`, `batch.noise`: `[B, C, H, W]`; outputs `[1]` and `[B]`.
///
/// # Errors
/// A non-positive or non-finite β, mismatched shapes, a non-finite loss.
pub fn dspo_loss<M: Denoiser + ?Sized>(
    policy: &M,
    reference: &M,
    batch: DpoBatch<'_>,
    beta: f64,
) -> Result<DspoOutput> {
    check_positive("beta", beta)?;
    let ref_cond = batch.reference_condition.unwrap_or(batch.condition);
    let res = |m: &M, x: Tensor<4>, c: &Condition| {
        denoising_residuals(m, x, batch.noise.clone(), batch.levels, c)
    };
    let pol_w = res(policy, batch.winners.clone(), batch.condition)?;
    let pol_l = res(policy, batch.losers.clone(), batch.condition)?;
    let ref_w = res(reference, batch.winners, ref_cond)?.detach();
    let ref_l = res(reference, batch.losers, ref_cond)?.detach();
    let b = pol_w.dims()[0];
    let err = per_sample_mean_square;
    let inside = ((err(pol_w.clone()) - err(pol_l)) - (err(ref_w.clone()) - err(ref_l)))
        .mul_scalar(-0.5 * beta);
    let shift = sigmoid(inside.clone())
        .neg()
        .add_scalar(1.0)
        .mul_scalar(beta);
    let moved = pol_w.clone() - (pol_w - ref_w) * shift.clone().reshape([b, 1, 1, 1]);
    let loss = moved.powf_scalar(2.0).mean().reshape([1]);
    check_loss(&loss, "the DSPO loss")?;
    let implicit_accuracy = positive_fraction(&inside, "inside")?;
    Ok(DspoOutput {
        loss,
        inside,
        shift,
        implicit_accuracy,
    })
}
