//! LoRA: only adapters train, the base stays bit-identical, and "adapters off" is exactly the
//! base model.
#![allow(clippy::unwrap_used)]

mod common;

use align_core::{Condition, Denoiser};
use align_models::{
    DiTConfig, LoraConfig, UNetConfig, apply_lora, lora_factor_count, lora_parameter_count,
    with_lora_scale,
};
use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;
use common::Perturb;

fn host(t: Tensor<4>) -> Vec<u32> {
    t.into_data()
        .try_to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn inputs(device: &Device) -> (Tensor<4>, Condition) {
    let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), device);
    let c = Condition::new(Tensor::random(
        [2, 4, 16],
        Distribution::Normal(0.0, 1.0),
        device,
    ));
    (x, c)
}

fn base_weights<M: Module>(model: &M) -> Vec<Vec<f32>> {
    // Record (as the record system stores them) the frozen base tensors.
    struct Collect(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !param.is_require_grad() {
                self.0
                    .push(param.base().into_data().try_to_vec::<f32>().unwrap());
            }
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

#[test]
fn only_adapters_train_and_adapters_off_is_the_base_model() {
    let device = align_core::test_device().autodiff();
    device.seed(5);
    let base = UNetConfig::tiny().init(&device).unwrap().map(&mut Perturb);
    let (x, cond) = inputs(&device);
    let t = Tensor::from_floats([100.0, 800.0], &device);
    let base_out = host(base.valid().predict(
        x.clone().inner(),
        t.clone().inner(),
        &Condition::new(cond.context.clone().inner()),
    ));

    let mut model = apply_lora(base, &LoraConfig::new().with_rank(2)).unwrap();
    let factors = lora_factor_count(&model);
    assert!(factors >= 2 && factors.is_multiple_of(2), "{factors}");
    assert!(lora_parameter_count(&model) > 0);
    let frozen_before = base_weights(&model);
    assert!(!frozen_before.is_empty());

    // A fresh adapter (B = 0) changes nothing.
    let fresh = host(model.valid().predict(
        x.clone().inner(),
        t.clone().inner(),
        &Condition::new(cond.context.clone().inner()),
    ));
    assert_eq!(fresh, base_out);

    let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
    for _ in 0..3 {
        let loss = model.predict(x.clone(), t.clone(), &cond).square().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        assert_eq!(
            grads.len(),
            factors,
            "gradients exist only for the LoRA factors"
        );
        model = optim.step(1e-2, model, grads);
    }
    assert_eq!(
        base_weights(&model),
        frozen_before,
        "base weights bit-identical after training"
    );

    let trained = host(model.valid().predict(
        x.clone().inner(),
        t.clone().inner(),
        &Condition::new(cond.context.clone().inner()),
    ));
    assert_ne!(trained, base_out, "training moved the adapted model");
    let off = with_lora_scale(model.clone(), 0.0);
    let off_out = host(off.valid().predict(
        x.clone().inner(),
        t.clone().inner(),
        &Condition::new(cond.context.clone().inner()),
    ));
    assert_eq!(
        off_out, base_out,
        "adapters off reproduces the base output exactly"
    );
    let on = with_lora_scale(model.clone(), 1.0);
    assert_eq!(
        host(
            on.valid()
                .predict(x.inner(), t.inner(), &Condition::new(cond.context.inner()))
        ),
        trained
    );
}

#[test]
fn dit_gets_adapters_and_bad_configs_are_errors() {
    let device = align_core::test_device();
    let dit = DiTConfig::tiny().init(&device).unwrap();
    let adapted = apply_lora(dit, &LoraConfig::new()).unwrap();
    assert!(lora_factor_count(&adapted) >= 8);
    let dit = DiTConfig::tiny().init(&device).unwrap();
    assert!(apply_lora(dit.clone(), &LoraConfig::new().with_rank(0)).is_err());
    assert!(apply_lora(dit.clone(), &LoraConfig::new().with_targets(vec![])).is_err());
    let err = apply_lora(dit, &LoraConfig::new().with_targets(vec!["nothing".into()])).unwrap_err();
    assert!(err.to_string().contains("nothing"), "{err}");
}
