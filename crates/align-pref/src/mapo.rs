//! MaPO (Hong et al. 2024, "Margin-aware Preference Optimization for Aligning Diffusion Models
//! without Reference", arXiv 2406.06424): a **reference-free** preference loss — no frozen copy
//! of the model, one forward per image.
//!
//! With paired noise and timestep and the per-sample errors `e_w`, `e_l` of winner and loser
//! (the MSE as a likelihood proxy, [`crate::denoising_errors`]), the official training code
//! computes
//!
//! ```text
//! s(e)     = κ e / (exp(κ e) − 1)                  (κ = snr_value, 0.5)
//! log_odds = s(e_w) − s(e_l)
//! L        = mean(e_w) − β · mean log σ(T · log_odds)      (β = beta_mapo, 0.1; T = 1000)
//! ```
//!
//! — a likelihood term on the preferred image (it keeps both likelihoods from falling) plus a
//! margin term that pushes the winner's error below the loser's (`s` decreases in `e`). Taken
//! from the authors' released `train.py` (defaults of its `args.py`); the paper's derivation of
//! `s` as a log-odds is not restated here.

use align_core::Denoiser;
use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;

use crate::diffusion_dpo::DpoBatch;
use crate::error::{Result, check_loss, check_positive, positive_fraction};
use crate::noising::denoising_errors;

/// MaPO hyper-parameters (the official defaults; the `[mapo]` table of a preference run).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapoConfig {
    /// β: weight of the margin term (`beta_mapo`, 0.1).
    pub beta: f64,
    /// κ of the score `s(e) = κe / (exp(κe) − 1)` (`snr_value`, 0.5).
    pub snr: f64,
    /// T multiplying the log-odds (the number of training timesteps, 1000).
    pub horizon: f64,
}

impl Default for MapoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            snr: 0.5,
            horizon: 1000.0,
        }
    }
}

/// The loss and its diagnostics.
pub struct MapoOutput {
    /// The loss, shape `[1]`.
    pub loss: Tensor<1>,
    /// `s(e_w) − s(e_l)` per pair, `[B]`.
    pub log_odds: Tensor<1>,
    /// `mean(log_odds > 0)`: the fraction of pairs whose winner is denoised better.
    pub margin_accuracy: f64,
}

/// `s(e) = κe / (exp(κe) − 1)`, continuous at `e = 0` (value 1).
fn score(e: Tensor<1>, kappa: f64) -> Tensor<1> {
    let x = e.mul_scalar(kappa).clamp_min(1e-12);
    x.clone() / x.exp().sub_scalar(1.0)
}

/// The MaPO loss of `policy` on a batch of pairs (module docs). No reference model.
///
/// # Errors
/// Non-positive or non-finite hyper-parameters, mismatched shapes, a non-finite loss.
pub fn mapo_loss<M: Denoiser + ?Sized>(
    policy: &M,
    batch: DpoBatch<'_>,
    config: MapoConfig,
) -> Result<MapoOutput> {
    for (field, v) in [
        ("beta", config.beta),
        ("snr", config.snr),
        ("horizon", config.horizon),
    ] {
        check_positive(field, v)?;
    }
    let e_w = denoising_errors(
        policy,
        batch.winners,
        batch.noise.clone(),
        batch.levels,
        batch.condition,
    )?;
    let e_l = denoising_errors(
        policy,
        batch.losers,
        batch.noise,
        batch.levels,
        batch.condition,
    )?;
    let log_odds = score(e_w.clone(), config.snr) - score(e_l, config.snr);
    let ratio = log_sigmoid(log_odds.clone().mul_scalar(config.horizon));
    let loss = e_w.mean() - ratio.mean().mul_scalar(config.beta);
    check_loss(&loss, "the MaPO loss")?;
    let margin_accuracy = positive_fraction(&log_odds, "log odds")?;
    Ok(MapoOutput {
        loss,
        log_odds,
        margin_accuracy,
    })
}
