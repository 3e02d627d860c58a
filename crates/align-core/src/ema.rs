//! Exponential moving average (EMA) of model weights, the weights diffusion models are
//! usually sampled from.
//!
//! After optimizer step `n` (counting from 1), every float parameter is averaged as
//!
//! ```text
//! θ̄ ← β_n θ̄ + (1 − β_n) θ,     β_n = min(β, (1 + n) / (10 + n))
//! ```
//!
//! The warm-up `(1 + n)/(10 + n)` (as in common DDPM/LDM trainers) lets the average follow the
//! fast early changes of a freshly initialised model instead of remembering its random start
//! for `1/(1 − β)` steps. Parameters are matched by their [`ParamId`], which
//! [`Module::valid`] preserves, so the average is kept on the inner (non-autodiff) device while
//! the model trains on the autodiff one.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;

use crate::error::{CoreError, Result};

/// Configuration of [`Ema`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmaConfig {
    /// Largest decay `β` (the average covers about `1/(1 − β)` steps). Default 0.999.
    pub decay: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self { decay: 0.999 }
    }
}

impl EmaConfig {
    /// The default configuration (decay 0.999).
    pub fn new() -> Self {
        Self::default()
    }

    /// With a decay.
    pub fn with_decay(mut self, decay: f64) -> Self {
        self.decay = decay;
        self
    }

    /// Starts an average at `model`'s current weights (pass the inner-device view,
    /// `model.valid()`).
    ///
    /// # Errors
    /// [`CoreError::Config`] if `decay` is not in `[0, 1)`.
    pub fn init<M: Module>(&self, model: M) -> Result<Ema<M>> {
        if !(0.0..1.0).contains(&self.decay) {
            return Err(CoreError::config(
                "ema.decay",
                format!("{} is not in [0, 1)", self.decay),
            ));
        }
        Ok(Ema {
            average: model,
            decay: self.decay,
            updates: 0,
        })
    }
}

/// An exponential moving average of a module's float parameters.
#[derive(Debug, Clone)]
pub struct Ema<M> {
    average: M,
    decay: f64,
    updates: u64,
}

struct Collect {
    values: HashMap<ParamId, Tensor<1>>,
    only_trainable: bool,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.only_trainable && !param.is_require_grad() {
            return;
        }
        self.values
            .insert(param.id, param.val().inner().flatten(0, D - 1));
    }
}

struct Blend<'a> {
    current: &'a HashMap<ParamId, Tensor<1>>,
    decay: f64,
    missing: usize,
    only_trainable: bool,
}

impl ModuleMapper for Blend<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.current.get(&param.id) {
            Some(cur) => {
                let (decay, cur) = (self.decay, cur.clone());
                param.map(|avg| {
                    let shape = avg.shape();
                    avg.mul_scalar(decay) + cur.reshape(shape).mul_scalar(1.0 - decay)
                })
            }
            None => {
                if !self.only_trainable {
                    self.missing += 1;
                }
                param
            }
        }
    }
}

impl<M: Module> Ema<M> {
    /// The decay `β_n` the next update will use.
    pub fn next_decay(&self) -> f64 {
        let n = (self.updates + 1) as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// Number of updates so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Folds the current weights of `model` (the same module, e.g. `trained.valid()`) into the
    /// average.
    ///
    /// # Errors
    /// [`CoreError::Config`] if a parameter of the average has no counterpart in `model`
    /// (a different architecture).
    pub fn update(&mut self, model: &M) -> Result<()> {
        self.blend(model, false)
    }

    /// Like [`Ema::update`], but only the parameters that are trainable in `model` (require a
    /// gradient — e.g. LoRA factors on an autodiff device) are averaged; frozen ones keep their
    /// values bit for bit.
    ///
    /// # Errors
    /// As [`Ema::update`].
    pub fn update_trainable(&mut self, model: &M) -> Result<()> {
        self.blend(model, true)
    }

    /// An average restored from a checkpoint: its weights, decay and update count.
    pub fn from_parts(average: M, decay: f64, updates: u64) -> Self {
        Self {
            average,
            decay,
            updates,
        }
    }

    /// The configured decay `β`.
    pub fn decay(&self) -> f64 {
        self.decay
    }

    fn blend(&mut self, model: &M, only_trainable: bool) -> Result<()> {
        let mut collect = Collect {
            values: HashMap::new(),
            only_trainable,
        };
        model.visit(&mut collect);
        let mut blend = Blend {
            current: &collect.values,
            decay: self.next_decay(),
            missing: 0,
            only_trainable,
        };
        self.average = self.average.clone().map(&mut blend);
        if blend.missing > 0 {
            return Err(CoreError::config(
                "ema",
                format!(
                    "{} parameters of the average are not in the model",
                    blend.missing
                ),
            ));
        }
        self.updates += 1;
        Ok(())
    }

    /// The averaged module.
    pub fn average(&self) -> &M {
        &self.average
    }

    /// Consumes the average.
    pub fn into_average(self) -> M {
        self.average
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    fn weights(m: &Linear) -> Vec<f32> {
        m.weight.val().into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn decay_warms_up_then_saturates() {
        let device = crate::test_device();
        let m = LinearConfig::new(2, 2).init(&device);
        let ema = EmaConfig::new().with_decay(0.9).init(m).unwrap();
        // n = 1: (1 + 1)/(10 + 1) = 2/11.
        assert!((ema.next_decay() - 2.0 / 11.0).abs() < 1e-12);
        let mut ema = ema;
        let m2 = ema.average().clone();
        for _ in 0..200 {
            ema.update(&m2).unwrap();
        }
        assert_eq!(ema.next_decay(), 0.9);
    }

    #[test]
    fn update_is_the_hand_computed_average() {
        let device = crate::test_device();
        let m = LinearConfig::new(3, 2).init(&device);
        let w0 = weights(&m);
        let mut ema = EmaConfig::new().with_decay(0.5).init(m.clone()).unwrap();
        // A "trained" copy with the same parameter ids: weights + 1.
        let moved = m.clone().map(&mut AddOne);
        let b = ema.next_decay(); // 2/11, below 0.5
        ema.update(&moved).unwrap();
        let w1 = weights(ema.average());
        for (a, w) in w1.iter().zip(&w0) {
            let want = b as f32 * w + (1.0 - b as f32) * (w + 1.0);
            assert!((a - want).abs() < 1e-6, "{a} vs {want}");
        }
        // Averaging a model with itself is a fixed point.
        let avg = ema.average().clone();
        ema.update(&avg).unwrap();
        for (a, b) in weights(ema.average()).iter().zip(&w1) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn a_different_model_is_a_typed_error() {
        let device = crate::test_device();
        let m = LinearConfig::new(3, 2).init(&device);
        let other = LinearConfig::new(3, 2).init(&device); // fresh parameter ids
        let mut ema = EmaConfig::new().init(m).unwrap();
        assert!(matches!(ema.update(&other), Err(CoreError::Config { .. })));
        assert!(EmaConfig::new().with_decay(1.0).init(other).is_err());
    }

    struct AddOne;
    impl ModuleMapper for AddOne {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.add_scalar(1.0))
        }
    }
}
