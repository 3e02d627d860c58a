//! burn-nn style tests of the models: shapes, constant-init values, training on an autodiff
//! device, and safetensors round-trips.
#![allow(clippy::unwrap_used)]

mod common;

use align_core::{Condition, Denoiser, Parameterization};
use align_models::{
    DiTConfig, ResBlockConfig, SpatialTransformerConfig, TextEncoderConfig, UNetConfig,
};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Distribution;
use common::Perturb;

fn device() -> Device {
    align_core::test_device()
}

fn condition(b: usize, l: usize, d: usize, device: &Device) -> Condition {
    let v: Vec<f32> = (0..b * l * d)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
        .collect();
    Condition::new(Tensor::from_data(TensorData::new(v, [b, l, d]), device))
}

fn input(b: usize, c: usize, s: usize, device: &Device) -> Tensor<4> {
    let v: Vec<f32> = (0..b * c * s * s)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
        .collect();
    Tensor::from_data(TensorData::new(v, [b, c, s, s]), device)
}

fn host(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Counts parameters and checks every one has a finite gradient.
struct GradCheck<'a> {
    grads: &'a GradientsParams,
    params: usize,
    with_grad: usize,
}

impl ModuleVisitor for GradCheck<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.params += 1;
        if let Some(g) = self.grads.get::<D>(param.id) {
            let v = g.into_data().try_to_vec::<f32>().unwrap();
            assert!(v.iter().all(|x| x.is_finite()));
            self.with_grad += 1;
        }
    }
}

#[test]
fn shapes() {
    let device = device();
    let unet = UNetConfig::tiny().init(&device).unwrap();
    let cond = condition(2, 5, 16, &device);
    let out = unet.predict(
        input(2, 3, 8, &device),
        Tensor::from_floats([10.0, 900.0], &device),
        &cond,
    );
    assert_eq!(out.dims(), [2, 3, 8, 8]);
    let dit = DiTConfig::tiny().init(&device).unwrap();
    let out = dit.predict(
        input(2, 3, 8, &device),
        Tensor::from_floats([0.1, 0.9], &device),
        &cond,
    );
    assert_eq!(out.dims(), [2, 3, 8, 8]);
    let text = TextEncoderConfig::tiny(10, 5).init(&device).unwrap();
    let c = text
        .encode(&[vec![1, 2, 3, 0, 0], vec![0, 0, 0, 0, 0]], &device)
        .unwrap();
    assert_eq!(c.context.dims(), [2, 5, 16]);
    assert_eq!(
        c.padding_mask
            .unwrap()
            .into_data()
            .try_to_vec::<bool>()
            .unwrap(),
        vec![
            false, false, false, true, true, true, true, true, true, true
        ]
    );
    let block = ResBlockConfig::new(4, 8, 12)
        .with_norm_groups(2)
        .init(&device);
    assert_eq!(
        block
            .forward(input(1, 4, 4, &device), Tensor::zeros([1, 12], &device))
            .dims(),
        [1, 8, 4, 4]
    );
    let st = SpatialTransformerConfig::new(8, 16, 2)
        .with_norm_groups(2)
        .init(&device);
    assert_eq!(
        st.forward(input(2, 8, 4, &device), &cond).dims(),
        [2, 8, 4, 4]
    );
}

#[test]
fn constant_init_values() {
    let device = device();
    // adaLN-Zero: an untrained DiT outputs exactly zero.
    let dit = DiTConfig::tiny().init(&device).unwrap();
    let out = host(dit.predict(
        input(1, 3, 8, &device),
        Tensor::from_floats([0.3], &device),
        &condition(1, 4, 16, &device),
    ));
    assert!(out.iter().all(|&v| v == 0.0));
    // A new spatial transformer (zero output projection) is the identity.
    let st = SpatialTransformerConfig::new(8, 16, 2)
        .with_norm_groups(2)
        .init(&device);
    let x = input(1, 8, 4, &device);
    assert_eq!(
        host(st.forward(x.clone(), &condition(1, 3, 16, &device))),
        host(x)
    );
}

#[test]
fn padding_tokens_do_not_change_the_condition_of_real_tokens_in_cross_attention() {
    // Appending padding (masked) tokens leaves the UNet's output unchanged.
    let device = device();
    let text = TextEncoderConfig::tiny(10, 6).init(&device).unwrap();
    let unet = UNetConfig::tiny().init(&device).unwrap().map(&mut Perturb);
    let a = text.encode(&[vec![4, 5, 0, 0, 0, 0]], &device).unwrap();
    let mut b = a.clone();
    // Change what sits in the padded positions: masked, so irrelevant.
    let [_, l, d] = b.context.dims();
    let noise = Tensor::<3>::ones([1, l, d], &device).mul_scalar(3.0);
    let keep = b
        .padding_mask
        .clone()
        .unwrap()
        .bool_not()
        .float()
        .unsqueeze_dim::<3>(2);
    b.context = b.context.clone() * keep.clone() + noise * (keep.neg() + 1.0);
    let x = input(1, 3, 8, &device);
    let t = Tensor::from_floats([500.0], &device);
    let (oa, ob) = (
        host(unet.predict(x.clone(), t.clone(), &a)),
        host(unet.predict(x.clone(), t.clone(), &b)),
    );
    for (u, v) in oa.iter().zip(&ob) {
        assert!((u - v).abs() < 1e-5, "{u} vs {v}");
    }
    // …whereas changing a real token does change it (the test is not vacuous).
    let c = text.encode(&[vec![4, 6, 0, 0, 0, 0]], &device).unwrap();
    let oc = host(unet.predict(x, t, &c));
    assert!(oa.iter().zip(&oc).any(|(u, v)| (u - v).abs() > 1e-4));
}

#[test]
fn models_train_on_an_autodiff_device() {
    let device = device().autodiff();
    device.seed(7);
    let cond = condition(2, 4, 16, &device);
    let x = input(2, 3, 8, &device);
    let target = input(2, 3, 8, &device).mul_scalar(-0.5);

    let mut unet = UNetConfig::tiny().init(&device).unwrap();
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut losses = Vec::new();
    for _ in 0..5 {
        let out = unet.predict(
            x.clone(),
            Tensor::from_floats([100.0, 700.0], &device),
            &cond,
        );
        let loss = (out - target.clone()).square().mean();
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &unet);
        let mut check = GradCheck {
            grads: &grads,
            params: 0,
            with_grad: 0,
        };
        unet.visit(&mut check);
        assert_eq!(
            check.with_grad, check.params,
            "every UNet parameter gets a gradient"
        );
        unet = optim.step(1e-3, unet, grads);
    }
    assert!(losses[4] < losses[0], "UNet loss {losses:?}");

    let mut dit = DiTConfig::tiny().init(&device).unwrap();
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut losses = Vec::new();
    for _ in 0..5 {
        let out = dit.predict(x.clone(), Tensor::from_floats([0.2, 0.8], &device), &cond);
        let loss = (out - target.clone()).square().mean();
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &dit);
        dit = optim.step(1e-2, dit, grads);
    }
    assert!(losses[4] < losses[0], "DiT loss {losses:?}");
    assert_eq!(dit.parameterization(), Parameterization::FlowVelocity);
}

#[test]
fn safetensors_round_trip() {
    let device = device();
    device.seed(11);
    let dir = std::env::temp_dir().join(format!("align-models-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cond = condition(1, 4, 16, &device);
    let x = input(1, 3, 8, &device);

    let unet = UNetConfig::tiny().init(&device).unwrap().map(&mut Perturb);
    let path = dir.join("unet.safetensors");
    unet.save_into(&mut SafetensorsStore::from_file(&path).overwrite(true))
        .unwrap();
    let mut fresh = UNetConfig::tiny().init(&device).unwrap();
    fresh
        .load_from(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    let t = Tensor::from_floats([321.0], &device);
    assert_eq!(
        host(unet.predict(x.clone(), t.clone(), &cond)),
        host(fresh.predict(x.clone(), t, &cond))
    );

    // Perturb so the output is non-trivial (adaLN-Zero starts at zero).
    let dit = DiTConfig::tiny().init(&device).unwrap().map(&mut Perturb);
    let path = dir.join("dit.safetensors");
    dit.save_into(&mut SafetensorsStore::from_file(&path).overwrite(true))
        .unwrap();
    let mut fresh = DiTConfig::tiny().init(&device).unwrap();
    fresh
        .load_from(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    let t = Tensor::from_floats([0.4], &device);
    let (a, b) = (
        host(dit.predict(x.clone(), t.clone(), &cond)),
        host(fresh.predict(x, t, &cond)),
    );
    assert_eq!(a, b);
    assert!(a.iter().any(|&v| v != 0.0));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn configs_are_validated() {
    let device = device();
    assert!(
        UNetConfig::tiny()
            .with_attention(vec![true])
            .init(&device)
            .is_err()
    );
    assert!(
        UNetConfig::tiny()
            .with_norm_groups(5)
            .init(&device)
            .is_err()
    );
    assert!(DiTConfig::tiny().with_patch_size(3).init(&device).is_err());
    assert!(DiTConfig::tiny().with_heads(3).init(&device).is_err());
    assert!(
        TextEncoderConfig::tiny(10, 5)
            .with_heads(3)
            .init(&device)
            .is_err()
    );
    let text = TextEncoderConfig::tiny(10, 5).init(&device).unwrap();
    assert!(text.encode(&[vec![1, 2]], &device).is_err());
    assert!(text.encode(&[vec![1, 2, 3, 4, 10]], &device).is_err());
}

/// A flow UNet (`FlowVelocity`) is the same network fed `1000 t`: with equal weights, its
/// output at flow time `t` equals the ε UNet's at DDPM timestep `1000 t`.
#[test]
fn a_flow_unet_embeds_flow_time_as_a_thousand_t() {
    let device = device();
    device.seed(11);
    let eps = UNetConfig::tiny().init(&device).unwrap();
    // The same weights in a flow UNet (burn initialises parameters lazily, so copy them).
    let flow = UNetConfig::tiny()
        .with_parameterization(Parameterization::FlowVelocity)
        .init(&device)
        .unwrap()
        .load_record(eps.clone().into_record());
    assert_eq!(flow.parameterization(), Parameterization::FlowVelocity);
    assert_eq!(eps.parameterization(), Parameterization::Epsilon);
    let context = Tensor::<3>::random([2, 3, 16], Distribution::Normal(0.0, 1.0), &device);
    let condition = Condition {
        context,
        padding_mask: None,
        pooled: None,
    };
    let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<1>::from_floats([0.25, 0.9], &device);
    let a = flow.forward(x.clone(), t.clone(), &condition);
    let b = eps.forward(x, t.mul_scalar(1000.0), &condition);
    let diff: f32 = (a - b).abs().max().into_scalar();
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn atomic_checkpoints_round_trip_and_reject_mismatches() {
    use align_models::{load_safetensors, save_safetensors};
    let device = device();
    device.seed(12);
    let dir = std::env::temp_dir().join(format!("align-models-ckpt-{}", std::process::id()));
    let path = dir.join("nested").join("unet.safetensors");
    let unet = UNetConfig::tiny().init(&device).unwrap().map(&mut Perturb);
    save_safetensors(&unet, &path).unwrap();
    // Saving again over an existing checkpoint works and leaves no temporary file behind.
    save_safetensors(&unet, &path).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, vec!["unet.safetensors".to_string()]);
    let loaded = load_safetensors(UNetConfig::tiny().init(&device).unwrap(), &path).unwrap();
    let cond = condition(1, 4, 16, &device);
    let x = input(1, 3, 8, &device);
    let t = Tensor::from_floats([42.0], &device);
    assert_eq!(
        host(unet.predict(x.clone(), t.clone(), &cond)),
        host(loaded.predict(x, t, &cond))
    );
    // A checkpoint of another architecture is refused with the offending keys.
    let err = load_safetensors(DiTConfig::tiny().init(&device).unwrap(), &path).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("unet.safetensors") && msg.contains("time.linear_1.weight"),
        "{msg}"
    );
    let err = load_safetensors(
        UNetConfig::tiny().init(&device).unwrap(),
        &dir.join("absent.safetensors"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no such file"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn warm_start_grows_a_unet_by_identity_attention_blocks() {
    use align_models::{save_safetensors, warm_start_safetensors};
    let device = device();
    device.seed(13);
    let dir = std::env::temp_dir().join(format!("align-models-warm-{}", std::process::id()));
    let path = dir.join("small.safetensors");
    // Trained-looking weights without attention at the first level …
    let small = UNetConfig::tiny()
        .with_attention(vec![false, true])
        .init(&device)
        .unwrap()
        .map(&mut Perturb);
    save_safetensors(&small, &path).unwrap();
    // … loaded into the same UNet with attention at both levels.
    let grown_config = UNetConfig::tiny().with_attention(vec![true, true]);
    let (grown, new) = warm_start_safetensors(grown_config.init(&device).unwrap(), &path).unwrap();
    assert!(!new.is_empty());
    assert!(
        new.iter().all(|k| k.contains("attn")),
        "only the new attention blocks are fresh: {new:?}"
    );
    // The new blocks' output projections start at zero, so the grown model computes exactly
    // what the small one did.
    let cond = condition(2, 4, 16, &device);
    let x = input(2, 3, 8, &device);
    let t = Tensor::from_floats([17.0, 640.0], &device);
    let (a, b) = (
        host(small.predict(x.clone(), t.clone(), &cond)),
        host(grown.predict(x, t, &cond)),
    );
    assert_eq!(a, b);
    assert!(a.iter().any(|&v| v != 0.0));
    // The other way round (a file with tensors the model has no place for) is refused.
    let big = dir.join("big.safetensors");
    save_safetensors(&grown, &big).unwrap();
    let err = warm_start_safetensors(
        UNetConfig::tiny()
            .with_attention(vec![false, true])
            .init(&device)
            .unwrap(),
        &big,
    )
    .unwrap_err();
    assert!(err.to_string().contains("unexpected tensors"), "{err}");
    // So is a tensor of another shape.
    let wide = UNetConfig::tiny().with_base_channels(8).with_norm_groups(4);
    assert!(warm_start_safetensors(wide.init(&device).unwrap(), &path).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
