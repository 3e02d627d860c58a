//! Preference Flow Matching (Kim et al., NeurIPS 2024): a black-box route — the base model is
//! never touched; a separate flow learns to move less-preferred samples toward preferred ones.
//!
//! With pairs `(y⁻, y⁺)` (loser, winner) under the same prompt and a time `τ ∈ [0, 1]` running
//! from the loser to the winner:
//!
//! ```text
//! x_τ = (1 − τ) y⁻ + τ y⁺,     L = mean ‖v_φ(x_τ, τ, c) − (y⁺ − y⁻)‖²
//! ```
//!
//! and at inference a base sample `y` is transported by the Euler ODE `dx/dτ = v_φ(x, τ, c)`
//! from `τ = 0` to `τ = 1` ([`pfm_transport`]). `τ` runs the other way from the sampling time
//! of this project's flow models (`t = 1` noise → `t = 0` data): PFM's flow starts at a
//! sample, not at noise. Any [`Denoiser`] can be `v_φ` (its output is read as the velocity).
//!
//! [`ResidualFlow`] builds `v_φ` from a trainable copy of a model and its frozen original,
//!
//! ```text
//! v_φ(x, τ, c) = D_φ(x, τ, c) − D_ref(x, τ, c_ref),
//! ```
//!
//! so that a LoRA copy whose adapters start at zero starts at `v_φ ≡ 0` (the transport is the
//! identity) and learns only the displacement; the base model's features are reused and the
//! base model itself is still never changed.

use align_core::{Condition, CoreError, Denoiser};
use burn::tensor::{Tensor, TensorData};

use crate::error::{PrefError, Result};

/// The PFM regression loss (module docs), shape `[1]`.
///
/// # Shapes
/// - `winners`, `losers`: `[B, C, H, W]`; `taus`: `B` values in `[0, 1]`; output `[1]`.
///
/// # Errors
/// Mismatched shapes or a `τ` outside `[0, 1]`.
pub fn pfm_loss<M: Denoiser + ?Sized>(
    flow: &M,
    winners: Tensor<4>,
    losers: Tensor<4>,
    taus: &[f64],
    condition: &Condition,
) -> Result<Tensor<1>> {
    let [b, ..] = winners.dims();
    if losers.dims() != winners.dims() {
        return Err(CoreError::shape(
            "losers",
            format!("{:?}", winners.dims()),
            format!("{:?}", losers.dims()),
        )
        .into());
    }
    if taus.len() != b {
        return Err(CoreError::shape("taus", b, taus.len()).into());
    }
    if let Some(bad) = taus.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(PrefError::config("tau", format!("{bad} is outside [0, 1]")));
    }
    let device = winners.device();
    let t = Tensor::<1>::from_data(
        TensorData::new(taus.iter().map(|&t| t as f32).collect::<Vec<_>>(), [b]),
        &device,
    );
    let t4 = t.clone().reshape([b, 1, 1, 1]);
    let x = losers.clone() * (t4.clone().neg().add_scalar(1.0)) + winners.clone() * t4;
    let target = winners - losers;
    Ok((flow.predict(x, t, condition) - target)
        .powf_scalar(2.0)
        .mean())
}

/// Moves samples `x` along the learned preference flow with `steps` Euler steps from `τ = 0`
/// to `τ = 1`.
///
/// # Errors
/// `steps = 0`.
pub fn pfm_transport<M: Denoiser + ?Sized>(
    flow: &M,
    x: Tensor<4>,
    steps: usize,
    condition: &Condition,
) -> Result<Tensor<4>> {
    if steps == 0 {
        return Err(PrefError::config("steps", "must be ≥ 1"));
    }
    let b = x.dims()[0];
    let device = x.device();
    let h = 1.0 / steps as f64;
    let mut x = x;
    for i in 0..steps {
        let t = Tensor::<1>::from_data(
            TensorData::new(vec![(i as f64 * h) as f32; b], [b]),
            &device,
        );
        x = x.clone() + flow.predict(x, t, condition).mul_scalar(h);
    }
    Ok(x)
}

/// `v_φ(x, τ, c) = D_φ(x, τ, c) − D_ref(x, τ, c_ref)` (module docs): the preference flow as the
/// difference of a trainable model and a frozen reference, so that it is exactly zero wherever
/// the two agree (a LoRA copy at initialisation). The reference output is detached: gradients
/// reach only the trainable model. The condition passed to [`Denoiser::predict`] is the trainable
/// model's; `reference_condition` (the same prompts encoded by the reference) is held here.
#[derive(Debug, Clone, Copy)]
pub struct ResidualFlow<'a, P: ?Sized, R: ?Sized> {
    /// The trainable model `D_φ`.
    pub trainable: &'a P,
    /// The frozen reference `D_ref`.
    pub reference: &'a R,
    /// The reference's condition `c_ref` (batch `B`).
    pub reference_condition: &'a Condition,
}

impl<P: Denoiser + ?Sized, R: Denoiser + ?Sized> Denoiser for ResidualFlow<'_, P, R> {
    fn parameterization(&self) -> align_core::Parameterization {
        align_core::Parameterization::FlowVelocity
    }

    fn predict(&self, x: Tensor<4>, t: Tensor<1>, condition: &Condition) -> Tensor<4> {
        let reference = self
            .reference
            .predict(x.clone(), t.clone(), self.reference_condition)
            .detach();
        self.trainable.predict(x, t, condition) - reference
    }
}
