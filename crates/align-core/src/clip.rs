//! Global-norm gradient clipping over a module's [`GradientsParams`].
//!
//! burn's `GradientClippingConfig::Norm` clips each parameter tensor by its *own* norm. The
//! DDPO / Flow-GRPO / DRaFT recipes (`max_grad_norm = 1.0`) use PyTorch's `clip_grad_norm_`,
//! which scales **all** gradients by one factor:
//!
//! ```text
//! n = sqrt(Σ_p ‖g_p‖²);   g_p ← g_p · min(1, max_norm / n)
//! ```

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::error::{CoreError, Result};

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let sq = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(acc) => acc + sq,
                None => sq,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The global L2 norm of the gradients registered for `module`'s parameters.
///
/// Parameters without a gradient (frozen, or LoRA bases) contribute nothing.
///
/// # Errors
/// [`CoreError::Readback`] if the backend fails to return the value.
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> Result<f64> {
    let mut visitor = SquaredNorm { grads, total: None };
    module.visit(&mut visitor);
    match visitor.total {
        None => Ok(0.0),
        Some(total) => {
            let data = total.into_data();
            let v = data.try_to_vec::<f32>().map_err(|e| CoreError::Readback {
                what: "gradient norm".into(),
                reason: format!("{e:?}"),
            })?;
            Ok(f64::from(v[0]).sqrt())
        }
    }
}

/// Scales all of `module`'s gradients by one factor so that their global norm is at most
/// `max_norm`; returns the gradients and the norm **before** clipping (log it).
///
/// Gradients are untouched when the norm is already `≤ max_norm`.
///
/// # Errors
/// - [`CoreError::Config`] if `max_norm` is not finite and positive;
/// - [`CoreError::NonFinite`] if the gradient norm is NaN or infinite (the caller should stop
///   and keep its last good checkpoint rather than step).
pub fn clip_grad_norm<M: Module>(
    module: &M,
    mut grads: GradientsParams,
    max_norm: f64,
) -> Result<(GradientsParams, f64)> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(CoreError::config(
            "max_grad_norm",
            format!("{max_norm} is not a finite positive number"),
        ));
    }
    let norm = global_grad_norm(module, &grads)?;
    if !norm.is_finite() {
        return Err(CoreError::NonFinite {
            what: "global gradient norm".into(),
            value: norm,
        });
    }
    if norm > max_norm {
        let mut visitor = Scale {
            grads: &mut grads,
            factor: max_norm / norm,
        };
        module.visit(&mut visitor);
    }
    Ok((grads, norm))
}

struct SquaredNormOfSum<'a> {
    parts: &'a [(GradientsParams, Device)],
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNormOfSum<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(home) = self.parts.first().map(|(_, d)| d) else {
            return;
        };
        let mut sum: Option<Tensor<D>> = None;
        for (grads, _) in self.parts {
            if let Some(g) = grads.get::<D>(param.id) {
                let g = g.to_device(home);
                sum = Some(match sum.take() {
                    Some(acc) => acc + g,
                    None => g,
                });
            }
        }
        if let Some(sum) = sum {
            let sq = sum.square().sum();
            self.total = Some(match self.total.take() {
                Some(acc) => acc + sq,
                None => sq,
            });
        }
    }
}

/// [`clip_grad_norm`] for gradients that come in parts, one per device (data parallelism):
/// the norm is that of their **sum** `g_p = Σ_d g_{p,d}` — the gradient the optimizer
/// applies —, and every part is scaled by the same factor, so the clipped sum equals the
/// clipped single-device gradient:
///
/// ```text
/// n = sqrt(Σ_p ‖Σ_d g_{p,d}‖²);   g_{p,d} ← g_{p,d} · min(1, max_norm / n)
/// ```
///
/// The sums are formed on the first part's device. Returns the parts (in order) and the norm
/// before clipping.
///
/// # Errors
/// As [`clip_grad_norm`].
pub fn clip_grad_norm_parts<M: Module>(
    module: &M,
    mut parts: Vec<(GradientsParams, Device)>,
    max_norm: f64,
) -> Result<(Vec<(GradientsParams, Device)>, f64)> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(CoreError::config(
            "max_grad_norm",
            format!("{max_norm} is not a finite positive number"),
        ));
    }
    let mut visitor = SquaredNormOfSum {
        parts: &parts,
        total: None,
    };
    module.visit(&mut visitor);
    let norm = match visitor.total {
        None => 0.0,
        Some(total) => {
            let v = total
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| CoreError::Readback {
                    what: "gradient norm".into(),
                    reason: format!("{e:?}"),
                })?;
            f64::from(v[0]).sqrt()
        }
    };
    if !norm.is_finite() {
        return Err(CoreError::NonFinite {
            what: "global gradient norm".into(),
            value: norm,
        });
    }
    if norm > max_norm {
        for (grads, _) in &mut parts {
            let mut visitor = Scale {
                grads,
                factor: max_norm / norm,
            };
            module.visit(&mut visitor);
        }
    }
    Ok((parts, norm))
}

/// `module`'s gradients multiplied by `factor` (data parallelism weighs each device's
/// gradient by its share of the minibatch).
pub fn scale_gradients<M: Module>(
    module: &M,
    mut grads: GradientsParams,
    factor: f64,
) -> GradientsParams {
    let mut visitor = Scale {
        grads: &mut grads,
        factor,
    };
    module.visit(&mut visitor);
    grads
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};
    use proptest::prelude::*;

    #[derive(Module, Debug)]
    struct Two {
        a: Linear,
        b: Linear,
    }

    fn model_and_grads(scale: f32, device: &Device) -> (Two, GradientsParams, f64) {
        let m = Two {
            a: LinearConfig::new(3, 4).init(device),
            b: LinearConfig::new(4, 2).init(device),
        };
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![0.5f32, -1.0, 2.0, 1.0, 0.0, -0.5], [2, 3]),
            device,
        );
        let loss = m.b.forward(m.a.forward(x)).sum().mul_scalar(scale);
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let norm = global_grad_norm(&m, &grads).unwrap();
        (m, grads, norm)
    }

    fn flat(m: &Two, g: &GradientsParams) -> Vec<f32> {
        let mut out = Vec::new();
        for id in [m.a.weight.id, m.b.weight.id] {
            out.extend(
                g.get::<2>(id)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
            );
        }
        for bias in [&m.a.bias, &m.b.bias] {
            let id = bias.as_ref().unwrap().id;
            out.extend(
                g.get::<1>(id)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
            );
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn post_clip_norm_is_the_threshold_or_grads_are_unchanged(
            scale in 0.01f32..100.0,
            max_norm in 0.05f64..20.0,
        ) {
            let device = crate::test_device().autodiff();
            device.seed(0);
            let (m, grads, norm) = model_and_grads(scale, &device);
            let before = flat(&m, &grads);
            let hand = before.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            prop_assert!((norm - hand).abs() < 1e-4 * hand, "{norm} vs {hand}");
            let (clipped, reported) = clip_grad_norm(&m, grads, max_norm).unwrap();
            prop_assert_eq!(reported, norm);
            let after = flat(&m, &clipped);
            let new_norm = global_grad_norm(&m, &clipped).unwrap();
            if norm > max_norm {
                prop_assert!((new_norm - max_norm).abs() < 1e-4 * max_norm, "{new_norm} vs {max_norm}");
                // One common factor: direction preserved.
                let f = max_norm / norm;
                for (a, b) in after.iter().zip(&before) {
                    prop_assert!((*a as f64 - *b as f64 * f).abs() < 1e-5 * (1.0 + b.abs() as f64));
                }
            } else {
                prop_assert_eq!(after, before);
            }
        }
    }

    #[test]
    fn rejects_bad_threshold_and_nan() {
        let device = crate::test_device().autodiff();
        let (m, grads, _) = model_and_grads(1.0, &device);
        assert!(clip_grad_norm(&m, grads, 0.0).is_err());
        let (m, grads, _) = model_and_grads(f32::NAN, &device);
        assert!(matches!(
            clip_grad_norm(&m, grads, 1.0),
            Err(CoreError::NonFinite { .. })
        ));
    }
}
