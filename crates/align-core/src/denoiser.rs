//! The [`Denoiser`] trait: what every model (UNet, DiT, a real SD checkpoint, a toy analytic
//! field in a test) offers to the samplers.

use burn::tensor::{Bool, Tensor};

use crate::error::{CoreError, Result};

/// What a denoiser's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Parameterization {
    /// DDPM ε-prediction: the noise `ε` in `x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε`.
    Epsilon,
    /// DDPM v-prediction: `v = √ᾱ_t ε − √(1−ᾱ_t) x₀`.
    VPrediction,
    /// Direct prediction of the clean sample `x₀`.
    Sample,
    /// Flow-matching velocity `v = ε − x₀` for `x_t = (1−t) x₀ + t ε` (t = 0 data, t = 1 noise).
    FlowVelocity,
}

/// The conditioning a denoiser receives: text-encoder hidden states and an optional padding
/// mask. Samplers treat it as opaque except for batching it with the unconditional
/// condition under classifier-free guidance.
#[derive(Debug, Clone)]
pub struct Condition {
    /// Context tokens, `[B, L, D]` (cross-attention keys/values or DiT text tokens).
    pub context: Tensor<3>,
    /// `[B, L]`, `true` where a token is padding and must be ignored; `None` = no padding.
    pub padding_mask: Option<Tensor<2, Bool>>,
    /// A pooled embedding of the whole prompt, `[B, P]` (Stable Diffusion 3's pooled CLIP
    /// projections, which condition its adaLN); `None` for models that read tokens only.
    pub pooled: Option<Tensor<2>>,
}

impl Condition {
    /// A condition without padding.
    ///
    /// # Shapes
    /// - `context`: `[B, L, D]`.
    pub fn new(context: Tensor<3>) -> Self {
        Self {
            context,
            padding_mask: None,
            pooled: None,
        }
    }

    /// Adds a pooled embedding.
    ///
    /// # Errors
    /// [`CoreError::Shape`] unless `pooled` is `[B, P]` with the context's `B`.
    pub fn with_pooled(mut self, pooled: Tensor<2>) -> Result<Self> {
        let b = self.context.dims()[0];
        if pooled.dims()[0] != b {
            return Err(CoreError::shape(
                "pooled embedding rows",
                b,
                pooled.dims()[0],
            ));
        }
        self.pooled = Some(pooled);
        Ok(self)
    }

    /// Adds a padding mask (`true` = padding).
    ///
    /// # Errors
    /// [`CoreError::Shape`] unless the mask is `[B, L]` of the context.
    pub fn with_padding_mask(mut self, mask: Tensor<2, Bool>) -> Result<Self> {
        let [b, l, _] = self.context.dims();
        if mask.dims() != [b, l] {
            return Err(CoreError::shape(
                "condition padding mask",
                format!("{:?}", [b, l]),
                format!("{:?}", mask.dims()),
            ));
        }
        self.padding_mask = Some(mask);
        Ok(self)
    }

    /// Batch size `B`.
    pub fn batch_size(&self) -> usize {
        self.context.dims()[0]
    }

    /// Concatenates conditions along the batch.
    ///
    /// # Errors
    /// [`CoreError::Shape`] if the list is empty, token counts / widths differ, or only some
    /// conditions carry a padding mask.
    pub fn cat(conditions: Vec<Condition>) -> Result<Condition> {
        let first = conditions
            .first()
            .ok_or_else(|| CoreError::shape("conditions", "at least one", 0))?;
        let [_, l, d] = first.context.dims();
        let masked = first.padding_mask.is_some();
        for c in &conditions {
            let [_, l2, d2] = c.context.dims();
            if (l2, d2) != (l, d) {
                return Err(CoreError::shape(
                    "condition tokens × width",
                    format!("{l} × {d}"),
                    format!("{l2} × {d2}"),
                ));
            }
            if c.padding_mask.is_some() != masked {
                return Err(CoreError::shape(
                    "condition padding masks",
                    "all or none",
                    "a mix",
                ));
            }
            let width = |c: &Condition| c.pooled.as_ref().map(|p| p.dims()[1]);
            if width(c) != width(first) {
                return Err(CoreError::shape(
                    "pooled embeddings",
                    format!("{:?} wide in every condition", width(first)),
                    format!("{:?}", width(c)),
                ));
            }
        }
        let pooled = first.pooled.is_some();
        let mut contexts = Vec::with_capacity(conditions.len());
        let mut masks = Vec::with_capacity(conditions.len());
        let mut pools = Vec::with_capacity(conditions.len());
        for c in conditions {
            contexts.push(c.context);
            if let Some(m) = c.padding_mask {
                masks.push(m);
            }
            if let Some(p) = c.pooled {
                pools.push(p);
            }
        }
        Ok(Condition {
            context: Tensor::cat(contexts, 0),
            padding_mask: if masked {
                Some(Tensor::cat(masks, 0))
            } else {
                None
            },
            pooled: pooled.then(|| Tensor::cat(pools, 0)),
        })
    }

    /// Whether two conditions can be stacked into one batch by [`Condition::cat`].
    pub fn is_stackable_with(&self, other: &Condition) -> bool {
        let [_, l, d] = self.context.dims();
        let [_, l2, d2] = other.context.dims();
        let width = |c: &Condition| c.pooled.as_ref().map(|p| p.dims()[1]);
        (l, d) == (l2, d2)
            && self.padding_mask.is_some() == other.padding_mask.is_some()
            && width(self) == width(other)
    }
}

/// A model that predicts, for a noisy sample `x_t` at time `t` under a condition, the quantity
/// named by its [`Parameterization`].
///
/// The time passed is in the sampler's own units: the integer DDPM training timestep
/// (`0..T`, as a float) for DDPM/DDIM samplers, and `t ∈ [0, 1]` for flow samplers. A model
/// may rescale internally (e.g. multiply flow time by 1000 for its embedding).
///
/// Implementations must be deterministic: the same inputs give the same output (samplers rely
/// on it to re-score stored trajectories exactly).
pub trait Denoiser {
    /// What [`Denoiser::predict`] returns.
    fn parameterization(&self) -> Parameterization;

    /// The model output for one batch.
    ///
    /// # Shapes
    /// - `x_t`: `[B, C, H, W]`
    /// - `t`: `[B]`
    /// - `condition`: batch `B`
    /// - output: `[B, C, H, W]`
    fn predict(&self, x_t: Tensor<4>, t: Tensor<1>, condition: &Condition) -> Tensor<4>;
}

impl<T: Denoiser + ?Sized> Denoiser for &T {
    fn parameterization(&self) -> Parameterization {
        (**self).parameterization()
    }

    fn predict(&self, x_t: Tensor<4>, t: Tensor<1>, condition: &Condition) -> Tensor<4> {
        (**self).predict(x_t, t, condition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cat_checks_shapes_and_masks() {
        let device = crate::test_device();
        let a = Condition::new(Tensor::zeros([2, 3, 4], &device));
        let b = Condition::new(Tensor::ones([1, 3, 4], &device));
        let c = Condition::cat(vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(c.batch_size(), 3);
        assert!(a.is_stackable_with(&b));
        let wide = Condition::new(Tensor::zeros([1, 3, 5], &device));
        assert!(Condition::cat(vec![a.clone(), wide]).is_err());
        let masked = b
            .clone()
            .with_padding_mask(Tensor::<2>::zeros([1, 3], &device).equal_elem(1.0))
            .unwrap();
        assert!(Condition::cat(vec![a.clone(), masked]).is_err());
        assert!(
            b.with_padding_mask(Tensor::<2>::zeros([2, 3], &device).equal_elem(1.0))
                .is_err()
        );
        assert!(Condition::cat(vec![]).is_err());
    }

    /// Pooled embeddings travel with their rows through `cat`; all conditions carry one of the
    /// same width or none does.
    #[test]
    fn cat_stacks_pooled_embeddings() {
        let device = crate::test_device();
        let c = |rows: usize, v: f32| {
            Condition::new(Tensor::<3>::full([rows, 3, 4], v, &device))
                .with_pooled(Tensor::<2>::full([rows, 2], v + 10.0, &device))
                .unwrap()
        };
        let joined = Condition::cat(vec![c(1, 1.0), c(2, 2.0)]).unwrap();
        let pooled = joined
            .pooled
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(pooled, vec![11.0, 11.0, 12.0, 12.0, 12.0, 12.0]);
        let plain = Condition::new(Tensor::<3>::zeros([1, 3, 4], &device));
        assert!(!plain.is_stackable_with(&c(1, 0.0)));
        assert!(Condition::cat(vec![plain, c(1, 0.0)]).is_err());
        assert!(
            Condition::new(Tensor::<3>::zeros([2, 3, 4], &device))
                .with_pooled(Tensor::<2>::zeros([3, 2], &device))
                .is_err()
        );
    }
}
