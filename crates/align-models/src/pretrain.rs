//! Pretraining objectives: DDPM's ε-MSE (or v-MSE) and conditional flow matching, with
//! classifier-free-guidance condition dropout.
//!
//! **DDPM** (Ho et al.), for clean `x₀`, noise `ε`, and per-sample `ᾱ_t`:
//!
//! ```text
//! x_t  = √ᾱ_t x₀ + √(1 − ᾱ_t) ε
//! L    = mean ‖target − f_θ(x_t, t, c)‖²,   target = ε (ε-prediction)
//!                                            or  v = √ᾱ_t ε − √(1 − ᾱ_t) x₀ (v-prediction)
//! ```
//!
//! **Conditional flow matching** (rectified flow, `t = 0` data, `t = 1` noise):
//!
//! ```text
//! x_t = (1 − t) x₀ + t ε,     L = mean ‖(ε − x₀) − v_θ(x_t, t, c)‖²
//! ```
//!
//! Means run over every element of the batch. **Min-SNR-γ weighting** (Hang et al. 2023,
//! "Efficient Diffusion Training via Min-SNR Weighting Strategy") optionally weights each
//! sample's DDPM loss by [`min_snr_weight`]: with `SNR_t = ᾱ_t / (1 − ᾱ_t)`, the weight is
//! `min(SNR_t, γ) / SNR_t` for ε-prediction, `min(SNR_t, γ) / (SNR_t + 1)` for v-prediction
//! and `min(SNR_t, γ)` for x₀-prediction — in every case the x₀-space weight `min(SNR_t, γ)`,
//! so that nearly noise-free steps stop dominating the gradient ([`weighted_ddpm_loss`]).
//! **CFG dropout** replaces the condition of a
//! chosen subset of samples by the null prompt's, so the same network learns `v(·, ∅)` too
//! (10 % is usual).

use align_core::{Condition, Denoiser, Parameterization};
use burn::prelude::*;

use crate::error::{ModelError, Result};

fn column(values: Vec<f32>, device: &Device) -> Tensor<4> {
    let b = values.len();
    Tensor::from_data(TensorData::new(values, [b, 1, 1, 1]), device)
}

fn check_batch(what: &str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(ModelError::Input {
            what: what.into(),
            expected: format!("{expected} entries (the batch size)"),
            got: format!("{got}"),
        })
    }
}

/// The min-SNR-γ loss weight of one sample with `ᾱ_t = alpha_bar` for a model of
/// `parameterization` (see the module docs).
///
/// # Errors
/// `γ` not positive and finite, `ᾱ` outside `(0, 1)`, or a flow-velocity model.
pub fn min_snr_weight(
    alpha_bar: f64,
    gamma: f64,
    parameterization: Parameterization,
) -> Result<f64> {
    if !(gamma.is_finite() && gamma > 0.0) {
        return Err(ModelError::config(
            "min_snr_gamma",
            format!("{gamma} must be positive and finite"),
        ));
    }
    if !(alpha_bar > 0.0 && alpha_bar < 1.0) {
        return Err(ModelError::config(
            "alpha_bar",
            format!("{alpha_bar} is outside (0, 1)"),
        ));
    }
    let snr = alpha_bar / (1.0 - alpha_bar);
    let clipped = snr.min(gamma);
    match parameterization {
        Parameterization::Epsilon => Ok(clipped / snr),
        Parameterization::VPrediction => Ok(clipped / (snr + 1.0)),
        Parameterization::Sample => Ok(clipped),
        Parameterization::FlowVelocity => Err(ModelError::config(
            "parameterization",
            "min-SNR weighting applies to DDPM (ε / v / x₀) models",
        )),
    }
}

/// The DDPM denoising loss for ε- or v-prediction models.
///
/// # Shapes
/// - `x0`, `noise`: `[B, C, H, W]`; `timesteps`, `alpha_bars`: `B` host values (the training
///   timestep fed to the model and its `ᾱ_t`); output `[1]`.
///
/// # Errors
/// Mismatched batch sizes, `ᾱ` outside `(0, 1)`, or a model that predicts flow velocity.
pub fn ddpm_loss<M: Denoiser + ?Sized>(
    model: &M,
    x0: Tensor<4>,
    noise: Tensor<4>,
    timesteps: &[usize],
    alpha_bars: &[f64],
    condition: &Condition,
) -> Result<Tensor<1>> {
    weighted_ddpm_loss(model, x0, noise, timesteps, alpha_bars, None, condition)
}

/// The DDPM denoising loss with per-sample weights `w_i` (e.g. [`min_snr_weight`]):
/// `L = (1/B) Σ_i w_i · mean ‖target_i − f_θ(x_t,i, t_i, c_i)‖²`; `None` is [`ddpm_loss`]
/// (all weights 1, computed as one mean).
///
/// # Shapes
/// - as [`ddpm_loss`]; `weights`: `B` host values.
///
/// # Errors
/// As [`ddpm_loss`], and a weight list of the wrong length or with a negative or non-finite
/// weight.
pub fn weighted_ddpm_loss<M: Denoiser + ?Sized>(
    model: &M,
    x0: Tensor<4>,
    noise: Tensor<4>,
    timesteps: &[usize],
    alpha_bars: &[f64],
    weights: Option<&[f64]>,
    condition: &Condition,
) -> Result<Tensor<1>> {
    let b = x0.dims()[0];
    check_batch("timesteps", b, timesteps.len())?;
    check_batch("alpha_bars", b, alpha_bars.len())?;
    if let Some(w) = weights {
        check_batch("weights", b, w.len())?;
        if let Some(bad) = w.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err(ModelError::config(
                "loss weight",
                format!("{bad} is not a finite non-negative number"),
            ));
        }
    }
    check_batch("condition", b, condition.batch_size())?;
    if let Some(bad) = alpha_bars.iter().find(|a| !(**a > 0.0 && **a < 1.0)) {
        return Err(ModelError::config(
            "alpha_bar",
            format!("{bad} is outside (0, 1)"),
        ));
    }
    let device = x0.device();
    let sa = column(
        alpha_bars.iter().map(|a| a.sqrt() as f32).collect(),
        &device,
    );
    let sb = column(
        alpha_bars.iter().map(|a| (1.0 - a).sqrt() as f32).collect(),
        &device,
    );
    let x_t = x0.clone() * sa.clone() + noise.clone() * sb.clone();
    let target = match model.parameterization() {
        Parameterization::Epsilon => noise,
        Parameterization::VPrediction => noise * sa - x0 * sb,
        Parameterization::Sample => x0,
        Parameterization::FlowVelocity => {
            return Err(ModelError::config(
                "parameterization",
                "a flow-velocity model is trained with flow_matching_loss",
            ));
        }
    };
    let t = Tensor::<1>::from_data(
        TensorData::new(timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), [b]),
        &device,
    );
    let out = model.predict(x_t, t, condition);
    let squared = (out - target).square();
    match weights {
        None => Ok(squared.mean()),
        Some(w) => {
            let w = Tensor::<1>::from_data(
                TensorData::new(w.iter().map(|&v| v as f32).collect::<Vec<_>>(), [b]),
                &device,
            );
            let per_sample = squared.flatten::<2>(1, 3).mean_dim(1).reshape([b]);
            Ok((per_sample * w).mean())
        }
    }
}

/// The conditional flow-matching loss for velocity models.
///
/// # Shapes
/// - `x0`, `noise`: `[B, C, H, W]`; `times`: `B` host values in `[0, 1]`; output `[1]`.
///
/// # Errors
/// Mismatched batch sizes, times outside `[0, 1]`, or a model that is not a velocity model.
pub fn flow_matching_loss<M: Denoiser + ?Sized>(
    model: &M,
    x0: Tensor<4>,
    noise: Tensor<4>,
    times: &[f64],
    condition: &Condition,
) -> Result<Tensor<1>> {
    let b = x0.dims()[0];
    check_batch("times", b, times.len())?;
    check_batch("condition", b, condition.batch_size())?;
    if model.parameterization() != Parameterization::FlowVelocity {
        return Err(ModelError::config(
            "parameterization",
            "flow matching trains a flow-velocity model; use ddpm_loss for ε/v/x₀ models",
        ));
    }
    if let Some(bad) = times.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(ModelError::config(
            "flow time",
            format!("{bad} is outside [0, 1]"),
        ));
    }
    let device = x0.device();
    let t4 = column(times.iter().map(|&t| t as f32).collect(), &device);
    let x_t = x0.clone() * (t4.clone().neg() + 1.0) + noise.clone() * t4;
    let t = Tensor::<1>::from_data(
        TensorData::new(times.iter().map(|&t| t as f32).collect::<Vec<_>>(), [b]),
        &device,
    );
    let out = model.predict(x_t, t, condition);
    Ok((out - (noise - x0)).square().mean())
}

/// Classifier-free-guidance dropout: the rows of `condition` with `drop[i] = true` are
/// replaced by the corresponding rows of `null` (the encoded null prompt, batch `B`).
///
/// # Errors
/// Mismatched batch sizes or token shapes.
pub fn cfg_dropout(condition: &Condition, null: &Condition, drop: &[bool]) -> Result<Condition> {
    let b = condition.batch_size();
    check_batch("dropout flags", b, drop.len())?;
    check_batch("null condition", b, null.batch_size())?;
    if !condition.is_stackable_with(null) {
        return Err(ModelError::Input {
            what: "null condition".into(),
            expected: format!("{:?} tokens like the prompts", condition.context.dims()),
            got: format!("{:?}", null.context.dims()),
        });
    }
    let device = condition.context.device();
    let mask: Vec<f32> = drop.iter().map(|&d| if d { 1.0 } else { 0.0 }).collect();
    let m3 = Tensor::<1>::from_data(TensorData::new(mask, [b]), &device).reshape([b, 1, 1]);
    let context = condition.context.clone() * (m3.clone().neg() + 1.0) + null.context.clone() * m3;
    let padding_mask = match (&condition.padding_mask, &null.padding_mask) {
        (Some(c), Some(n)) => {
            let pick = Tensor::<1, Bool>::from_data(TensorData::new(drop.to_vec(), [b]), &device)
                .reshape([b, 1])
                .expand(c.dims());
            Some(c.clone().mask_where(pick, n.clone()))
        }
        _ => None,
    };
    Ok(Condition {
        context,
        padding_mask,
        pooled: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_core::{NoiseKey, noise_tensor};

    /// Exact predictor for data concentrated at `c`: ε = (x_t − √ᾱ c)/√(1−ᾱ), v = (x_t − c)/t.
    struct Oracle {
        c: f32,
        alpha_bars: Vec<f64>,
        parameterization: Parameterization,
    }

    impl Denoiser for Oracle {
        fn parameterization(&self) -> Parameterization {
            self.parameterization
        }

        fn predict(&self, x: Tensor<4>, t: Tensor<1>, _c: &Condition) -> Tensor<4> {
            let device = x.device();
            let ts = t.into_data().try_to_vec::<f32>().unwrap();
            match self.parameterization {
                Parameterization::FlowVelocity => {
                    let tt = column(ts, &device);
                    (x.sub_scalar(self.c)) / tt
                }
                _ => {
                    let a: Vec<f64> = ts.iter().map(|&t| self.alpha_bars[t as usize]).collect();
                    let sa = column(a.iter().map(|a| a.sqrt() as f32).collect(), &device);
                    let sb = column(a.iter().map(|a| (1.0 - a).sqrt() as f32).collect(), &device);
                    let eps = (x - sa.clone().mul_scalar(self.c)) / sb.clone();
                    if self.parameterization == Parameterization::VPrediction {
                        eps * sa - sb.mul_scalar(self.c)
                    } else {
                        eps
                    }
                }
            }
        }
    }

    fn setup(b: usize) -> (Device, Tensor<4>, Tensor<4>, Condition) {
        let device = align_core::test_device();
        let x0 = Tensor::<4>::ones([b, 2, 3, 3], &device).mul_scalar(0.7);
        let keys: Vec<NoiseKey> = (0..b as u64).map(|i| NoiseKey::initial(1, i)).collect();
        let noise = noise_tensor(&keys, [2, 3, 3], &device).unwrap();
        let cond = Condition::new(Tensor::zeros([b, 1, 4], &device));
        (device, x0, noise, cond)
    }

    #[test]
    fn an_exact_model_has_zero_loss() {
        let (_, x0, noise, cond) = setup(4);
        let alpha_bars: Vec<f64> = (0..10).map(|i| 0.95 - 0.09 * i as f64).collect();
        for p in [Parameterization::Epsilon, Parameterization::VPrediction] {
            let oracle = Oracle {
                c: 0.7,
                alpha_bars: alpha_bars.clone(),
                parameterization: p,
            };
            let ts = [0, 3, 6, 9];
            let ab: Vec<f64> = ts.iter().map(|&t| alpha_bars[t]).collect();
            let loss: f32 = ddpm_loss(&oracle, x0.clone(), noise.clone(), &ts, &ab, &cond)
                .unwrap()
                .into_scalar();
            assert!(loss < 1e-10, "{p:?}: {loss}");
        }
        let oracle = Oracle {
            c: 0.7,
            alpha_bars: vec![],
            parameterization: Parameterization::FlowVelocity,
        };
        let loss: f32 = flow_matching_loss(&oracle, x0, noise, &[0.1, 0.4, 0.7, 0.95], &cond)
            .unwrap()
            .into_scalar();
        assert!(loss < 1e-10, "{loss}");
    }

    struct Zero(Parameterization);

    impl Denoiser for Zero {
        fn parameterization(&self) -> Parameterization {
            self.0
        }
        fn predict(&self, x: Tensor<4>, _t: Tensor<1>, _c: &Condition) -> Tensor<4> {
            x.zeros_like()
        }
    }

    #[test]
    fn a_zero_model_scores_the_target_energy() {
        let (_, x0, noise, cond) = setup(3);
        let n = noise.clone().into_data().try_to_vec::<f32>().unwrap();
        let e2 = n.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n.len() as f64;
        let loss: f32 = ddpm_loss(
            &Zero(Parameterization::Epsilon),
            x0.clone(),
            noise.clone(),
            &[1, 2, 3],
            &[0.5, 0.5, 0.5],
            &cond,
        )
        .unwrap()
        .into_scalar();
        assert!((loss as f64 - e2).abs() < 1e-5, "{loss} vs {e2}");
        let v2 = n.iter().map(|v| (*v as f64 - 0.7).powi(2)).sum::<f64>() / n.len() as f64;
        let loss: f32 = flow_matching_loss(
            &Zero(Parameterization::FlowVelocity),
            x0,
            noise,
            &[0.2, 0.5, 0.9],
            &cond,
        )
        .unwrap()
        .into_scalar();
        assert!((loss as f64 - v2).abs() < 1e-5, "{loss} vs {v2}");
    }

    #[test]
    fn inputs_are_checked() {
        let (_, x0, noise, cond) = setup(2);
        let eps = Zero(Parameterization::Epsilon);
        let flow = Zero(Parameterization::FlowVelocity);
        assert!(ddpm_loss(&eps, x0.clone(), noise.clone(), &[1], &[0.5, 0.5], &cond).is_err());
        assert!(ddpm_loss(&eps, x0.clone(), noise.clone(), &[1, 2], &[0.5, 1.0], &cond).is_err());
        assert!(
            ddpm_loss(
                &flow,
                x0.clone(),
                noise.clone(),
                &[1, 2],
                &[0.5, 0.5],
                &cond
            )
            .is_err()
        );
        assert!(flow_matching_loss(&eps, x0.clone(), noise.clone(), &[0.1, 0.2], &cond).is_err());
        assert!(flow_matching_loss(&flow, x0, noise, &[0.1, 1.5], &cond).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// The weighted loss of a zero model equals `(1/B) Σ w_i · mean(ε_i²)` computed on
        /// the host from the noise, and with all weights 1 it equals the unweighted loss.
        #[test]
        fn the_weighted_loss_is_the_weighted_mean_of_per_sample_losses(
            w in proptest::collection::vec(0.0f64..4.0, 3),
        ) {
            let (_, x0, noise, cond) = setup(3);
            let n = noise.clone().into_data().try_to_vec::<f32>().unwrap();
            let per = n.len() / 3;
            let want: f64 = (0..3)
                .map(|i| {
                    w[i] * n[i * per..(i + 1) * per]
                        .iter()
                        .map(|v| (*v as f64).powi(2))
                        .sum::<f64>()
                        / per as f64
                })
                .sum::<f64>()
                / 3.0;
            let eps = Zero(Parameterization::Epsilon);
            let ts = [1, 2, 3];
            let ab = [0.5, 0.3, 0.9];
            let got: f32 = weighted_ddpm_loss(&eps, x0.clone(), noise.clone(), &ts, &ab, Some(&w), &cond)
                .unwrap()
                .into_scalar();
            proptest::prop_assert!((got as f64 - want).abs() < 1e-5 * (1.0 + want), "{got} vs {want}");
            let ones: f32 = weighted_ddpm_loss(&eps, x0.clone(), noise.clone(), &ts, &ab, Some(&[1.0; 3]), &cond)
                .unwrap()
                .into_scalar();
            let plain: f32 = ddpm_loss(&eps, x0, noise, &ts, &ab, &cond).unwrap().into_scalar();
            proptest::prop_assert!((ones - plain).abs() < 1e-6 * (1.0 + plain.abs()));
        }

        /// Min-SNR-γ against its definition: in x₀ space every parameterisation gets the
        /// weight `min(SNR, γ)` (ε-loss = SNR · x₀-loss, v-loss = (SNR + 1) · x₀-loss).
        #[test]
        fn min_snr_weights_are_min_snr_gamma_in_x0_space(
            alpha_bar in 1e-4f64..0.9999,
            gamma in 0.1f64..20.0,
        ) {
            let snr = alpha_bar / (1.0 - alpha_bar);
            let x0_weight = if snr < gamma { snr } else { gamma };
            let eps = min_snr_weight(alpha_bar, gamma, Parameterization::Epsilon).unwrap();
            let v = min_snr_weight(alpha_bar, gamma, Parameterization::VPrediction).unwrap();
            let x = min_snr_weight(alpha_bar, gamma, Parameterization::Sample).unwrap();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs());
            proptest::prop_assert!(close(eps * snr, x0_weight));
            proptest::prop_assert!(close(v * (snr + 1.0), x0_weight));
            proptest::prop_assert!(close(x, x0_weight));
            // Below γ the ε weight is exactly 1: noisy steps keep the plain ε-loss.
            if snr <= gamma {
                proptest::prop_assert!(close(eps, 1.0));
            }
        }
    }

    #[test]
    fn min_snr_inputs_are_checked() {
        for (a, g) in [
            (0.5, 0.0),
            (0.5, f64::NAN),
            (0.5, f64::INFINITY),
            (1.0, 5.0),
            (0.0, 5.0),
        ] {
            assert!(
                min_snr_weight(a, g, Parameterization::Epsilon).is_err(),
                "{a} {g}"
            );
        }
        assert!(min_snr_weight(0.5, 5.0, Parameterization::FlowVelocity).is_err());
        let (_, x0, noise, cond) = setup(2);
        let eps = Zero(Parameterization::Epsilon);
        let ab = [0.5, 0.5];
        for w in [&[1.0][..], &[1.0, -1.0], &[1.0, f64::NAN]] {
            assert!(
                weighted_ddpm_loss(
                    &eps,
                    x0.clone(),
                    noise.clone(),
                    &[1, 2],
                    &ab,
                    Some(w),
                    &cond
                )
                .is_err()
            );
        }
    }

    #[test]
    fn cfg_dropout_swaps_exactly_the_dropped_rows() {
        let device = align_core::test_device();
        let cond = Condition::new(Tensor::ones([3, 2, 2], &device))
            .with_padding_mask(Tensor::<2>::zeros([3, 2], &device).equal_elem(1.0))
            .unwrap();
        let null = Condition::new(Tensor::zeros([3, 2, 2], &device).sub_scalar(1.0))
            .with_padding_mask(Tensor::<2>::ones([3, 2], &device).equal_elem(1.0))
            .unwrap();
        let out = cfg_dropout(&cond, &null, &[false, true, false]).unwrap();
        let ctx = out.context.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(&ctx[..4], &[1.0; 4]);
        assert_eq!(&ctx[4..8], &[-1.0; 4]);
        assert_eq!(&ctx[8..], &[1.0; 4]);
        let mask = out
            .padding_mask
            .unwrap()
            .into_data()
            .try_to_vec::<bool>()
            .unwrap();
        assert_eq!(mask, vec![false, false, true, true, false, false]);
        assert!(cfg_dropout(&cond, &null, &[true]).is_err());
    }
}
