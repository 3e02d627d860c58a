//! LoRA-scale annealing: the mitigation of reward hacking the source documents name for reward
//! backprop (AlignProp: "LoRA scale annealing + early stop"). A scale runs linearly from
//! `start` to `end` over the run,
//!
//! ```text
//! s_n = start + (end − start) · n / (N − 1),       N = runner.iterations
//! ```
//!
//! and before iteration `n` every LoRA `B` factor is multiplied by `s_n / s_{n−1}` (by `s_0`
//! before the first; [`LoraAnneal::factor`]): a multiplicative decay of the adapters as they
//! stand — what was learned before iteration `n` ends the run scaled by `s_{N−1}/s_{n−1}`, so
//! the policy drifts back toward the base unless the reward keeps pulling it out (a soft anchor
//! that tightens over the run). The job keeps the scale it last applied in the checkpoint state
//! and rescales from it, so a resumed run — even one given another `iterations` — continues
//! from where the adapters stand. The weight average (`runner.ema_decay`) is not rescaled: it
//! mixes adapters from before and after each rescale. The **early stop** is the reward-hacking
//! monitor's (`[monitor] stop_on_hacking = true`; with `monitor_split = "train"` so that it never
//! reads the held-out part): the run stops at the evaluation that raises the warning, after a
//! checkpoint.
//!
//! Adapters only (`finetune = "lora"`), one device, not with diffusion-nft (whose old policy
//! the rescale would not follow).

use crate::error::{Result, TrainError};

/// The `[lora_anneal]` table of `align train`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraAnneal {
    /// Scale of the adapters' deltas at the first iteration.
    pub start: f64,
    /// Scale at the last iteration.
    pub end: f64,
}

impl Default for LoraAnneal {
    fn default() -> Self {
        Self {
            start: 1.0,
            end: 0.5,
        }
    }
}

impl LoraAnneal {
    /// Checks the scales.
    ///
    /// # Errors
    /// A scale that is not a positive finite number (0 would erase the adapters for good).
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("lora_anneal.start", self.start),
            ("lora_anneal.end", self.end),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(TrainError::config(field, format!("{v} must be > 0")));
            }
        }
        Ok(())
    }

    /// `s_n` at iteration `n` (0-based) of a run of `iterations`.
    pub fn scale(&self, n: usize, iterations: usize) -> f64 {
        if iterations <= 1 {
            return self.start;
        }
        let p = (n.min(iterations - 1)) as f64 / (iterations - 1) as f64;
        self.start + (self.end - self.start) * p
    }

    /// The factor the `B` factors are multiplied by before iteration `n`: `s_0` at 0, then
    /// `s_n / s_{n−1}`.
    pub fn factor(&self, n: usize, iterations: usize) -> f64 {
        if n == 0 {
            self.scale(0, iterations)
        } else {
            self.scale(n, iterations) / self.scale(n - 1, iterations)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_models::{LoraConfig, ShapesModel, ShapesModelConfig, apply_lora, rescale_lora};
    use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    use proptest::prelude::*;

    proptest! {
        /// The factors telescope: their product up to `n` is `s_n`, and `s` runs from `start`
        /// to `end`.
        #[test]
        fn factors_multiply_to_the_scale(
            start in 0.1f64..2.0, end in 0.1f64..2.0, iterations in 1usize..60, n in 0usize..60,
        ) {
            let a = LoraAnneal { start, end };
            let n = n.min(iterations - 1);
            let product: f64 = (0..=n).map(|i| a.factor(i, iterations)).product();
            prop_assert!((product - a.scale(n, iterations)).abs() < 1e-12 * (1.0 + product));
            prop_assert!((a.scale(0, iterations) - start).abs() < 1e-15);
            if iterations > 1 {
                prop_assert!((a.scale(iterations - 1, iterations) - end).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn zero_and_negative_scales_are_refused_by_field() {
        assert!(LoraAnneal::default().validate().is_ok());
        let e = LoraAnneal {
            start: 1.0,
            end: 0.0,
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("lora_anneal.end:"), "{e}");
        let e = LoraAnneal {
            start: f64::NAN,
            end: 0.5,
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("lora_anneal.start:"), "{e}");
    }

    struct AddTenth;
    impl ModuleMapper for AddTenth {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.map(|t| {
                let rg = t.is_require_grad();
                let t = t.add_scalar(0.1).detach();
                if rg { t.require_grad() } else { t }
            })
        }
    }

    struct Values(Vec<(bool, Vec<f32>)>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let v = p.val();
            self.0.push((
                v.is_require_grad(),
                v.into_data().try_to_vec::<f32>().expect("f32"),
            ));
        }
    }

    /// `rescale_lora` multiplies exactly the `B` factors (half of the LoRA factors) and leaves
    /// them trainable; every other parameter is unchanged bit for bit.
    #[test]
    fn rescaling_touches_only_the_b_factors_and_keeps_them_trainable() {
        let device = align_core::test_device().autodiff();
        let tok = align_data::Tokenizer::new();
        let mc = ShapesModelConfig::preset(
            align_models::DenoiserKind::Dit,
            align_models::Preset::Tiny,
            tok.vocab_size(),
            tok.max_len(),
        );
        let ShapesModel::Dit(m) = mc.init(&device).expect("model") else {
            unreachable!("a DiT preset")
        };
        let model = apply_lora(*m, &LoraConfig::new())
            .expect("lora")
            .map(&mut AddTenth);
        let factors = align_models::lora_factor_count(&model);
        let mut before = Values(Vec::new());
        model.visit(&mut before);
        let mut after = Values(Vec::new());
        rescale_lora(model, 0.5).visit(&mut after);
        let mut scaled = 0;
        for ((g0, a), (g1, b)) in before.0.iter().zip(&after.0) {
            assert_eq!(g0, g1, "trainability kept");
            if a != b {
                scaled += 1;
                assert!(g1, "only trainable factors change");
                for (x, y) in a.iter().zip(b) {
                    assert_eq!(*y, x * 0.5);
                }
            }
        }
        assert_eq!(scaled, factors / 2);
    }
}
