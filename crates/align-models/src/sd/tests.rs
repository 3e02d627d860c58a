//! Tests against the diffusers fixture `fixtures/sd-tiny` (random weights, PyTorch reference
//! outputs written by `scripts/make-real-model-fixtures.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;

use super::*;
use crate::error::ModelError;
use crate::hf::{fixtures_dir, max_relative_error, read_safetensors};
use crate::lora::{LoraConfig, apply_lora, lora_factor_count};

fn sd_dir() -> PathBuf {
    fixtures_dir().join("sd-tiny")
}

fn reference() -> BTreeMap<String, TensorData> {
    read_safetensors(&sd_dir().join("reference.safetensors")).unwrap()
}

fn tensor<const D: usize>(
    r: &BTreeMap<String, TensorData>,
    name: &str,
    device: &Device,
) -> Tensor<D> {
    Tensor::from_data(r[name].clone(), device)
}

fn unet_inputs(device: &Device) -> (Tensor<4>, Tensor<1>, Tensor<3>) {
    let r = reference();
    (
        tensor(&r, "unet.sample", device),
        tensor(&r, "unet.timestep", device),
        tensor(&r, "unet.encoder_hidden_states", device),
    )
}

fn rel<const D: usize>(actual: Tensor<D>, expected: &TensorData) -> f64 {
    max_relative_error(&actual.into_data(), expected).unwrap()
}

/// A fresh scratch directory under the system temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("align-sd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies a component directory with its safetensors rewritten by `edit` (name → (shape, f32
/// values)).
fn edited_copy(
    component: &str,
    name: &str,
    edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>),
) -> PathBuf {
    let src = sd_dir().join(component);
    let dir = scratch(name);
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let file = "diffusion_pytorch_model.safetensors";
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = read_safetensors(&src.join(file))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, (v.shape().to_vec(), v.try_to_vec::<f32>().unwrap())))
        .collect();
    edit(&mut tensors);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, (shape, v))| (k, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .unwrap();
            (k.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join(file)).unwrap();
    dir
}

#[test]
fn unet_matches_diffusers() {
    let device = align_core::test_device();
    let unet = UNet2DCondition::load(&sd_dir().join("unet"), &device).unwrap();
    assert_eq!(unet.in_channels(), 4);
    assert_eq!(unet.cross_attention_dim(), 32);
    assert_eq!(unet.config().block_out_channels, vec![8, 16, 16]);
    let (x, t, ctx) = unet_inputs(&device);
    let err = rel(unet.forward(x, t, ctx), &reference()["unet.out"]);
    eprintln!("unet.out max relative error {err:.3e}");
    assert!(err <= 1e-4, "unet.out relative error {err}");
}

/// SD 2.x's UNet differences: linear `proj_in`/`proj_out`, a per-block list of head counts,
/// two transformer layers in a block (`fixtures/sd2-tiny-unet`).
#[test]
fn sd2_style_unet_matches_diffusers() {
    let device = align_core::test_device();
    let dir = fixtures_dir().join("sd2-tiny-unet");
    let unet = UNet2DCondition::load(&dir, &device).unwrap();
    assert!(unet.config().use_linear_projection);
    assert_eq!(unet.cross_attention_dim(), 24);
    let r = read_safetensors(&dir.join("reference.safetensors")).unwrap();
    let out = unet.forward(
        tensor(&r, "unet.sample", &device),
        tensor(&r, "unet.timestep", &device),
        tensor(&r, "unet.encoder_hidden_states", &device),
    );
    let err = rel(out, &r["unet.out"]);
    eprintln!("sd2-style unet.out max relative error {err:.3e}");
    assert!(err <= 1e-4, "unet.out relative error {err}");
}

#[test]
fn vae_decode_matches_diffusers() {
    let device = align_core::test_device();
    let vae = AutoencoderKl::load(&sd_dir().join("vae"), &device).unwrap();
    assert_eq!(vae.scaling_factor(), 0.18215);
    assert_eq!(vae.latent_channels(), 4);
    assert_eq!(vae.downsample_factor(), 2);
    let r = reference();
    let err = rel(
        vae.decode(tensor(&r, "vae.latents", &device)),
        &r["vae.decoded"],
    );
    eprintln!("vae.decoded max relative error {err:.3e}");
    assert!(err <= 1e-4, "vae.decoded relative error {err}");
}

#[test]
fn vae_encode_matches_diffusers() {
    let device = align_core::test_device();
    let vae = AutoencoderKl::load(&sd_dir().join("vae"), &device).unwrap();
    let r = reference();
    let post = vae.encode(tensor(&r, "vae.image", &device));
    let e_mean = rel(post.mean.clone(), &r["vae.posterior_mean"]);
    let e_std = rel(post.std(), &r["vae.posterior_std"]);
    eprintln!("vae.posterior_mean {e_mean:.3e}, vae.posterior_std {e_std:.3e}");
    assert!(e_mean <= 1e-4, "posterior mean relative error {e_mean}");
    assert!(e_std <= 1e-4, "posterior std relative error {e_std}");
    // sample(0) is the mean.
    let z = post.sample(Tensor::zeros(post.mean.dims(), &device));
    assert!(rel(z, &r["vae.posterior_mean"]) <= 1e-4);
}

#[test]
fn old_vae_attention_names_load() {
    let device = align_core::test_device();
    let dir = edited_copy("vae", "old-names", |t| {
        let renamed: Vec<(String, String)> = t
            .keys()
            .filter_map(|k| {
                let new = k
                    .replace(".to_q.", ".query.")
                    .replace(".to_k.", ".key.")
                    .replace(".to_v.", ".value.")
                    .replace(".to_out.0.", ".proj_attn.");
                (new != *k).then(|| (k.clone(), new))
            })
            .collect();
        assert_eq!(renamed.len(), 16, "{renamed:?}");
        for (old, new) in renamed {
            let v = t.remove(&old).unwrap();
            t.insert(new, v);
        }
    });
    let vae = AutoencoderKl::load(&dir, &device).unwrap();
    let r = reference();
    let err = rel(
        vae.decode(tensor(&r, "vae.latents", &device)),
        &r["vae.decoded"],
    );
    assert!(err <= 1e-4, "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

fn checkpoint_reason(dir: &Path) -> String {
    let device = align_core::test_device();
    match UNet2DCondition::load(dir, &device) {
        Err(ModelError::Checkpoint { reason, .. }) => reason,
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

#[test]
fn checkpoint_that_does_not_fit_is_refused_with_every_problem_listed() {
    // Missing and unexpected tensors are listed together.
    let dir = edited_copy("unet", "bad-unet-names", |t| {
        t.remove("conv_in.bias").unwrap();
        t.remove("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight")
            .unwrap();
        t.insert("extra_head.weight".into(), (vec![2], vec![0.0, 1.0]));
    });
    let reason = checkpoint_reason(&dir);
    for needle in [
        "2 tensors of the model are missing",
        "conv_in.bias",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.weight",
        "1 tensors of the file are unknown",
        "extra_head.weight",
    ] {
        assert!(reason.contains(needle), "`{needle}` not in: {reason}");
    }
    // A mis-shaped tensor is named with both shapes, in the same message as a missing one.
    let dir2 = edited_copy("unet", "bad-unet-shape", |t| {
        t.insert("conv_out.bias".into(), (vec![5], vec![0.0; 5]));
        t.remove("conv_in.bias").unwrap();
    });
    let reason = checkpoint_reason(&dir2);
    assert!(
        reason.contains("conv_out.bias") && reason.contains("[5]") && reason.contains("[4]"),
        "{reason}"
    );
    assert!(
        reason.contains("1 tensors of the model are missing") && reason.contains("conv_in.bias"),
        "{reason}"
    );
    // A missing weights file is a checkpoint error naming the file.
    std::fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let err = UNet2DCondition::load(&dir, &align_core::test_device()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Checkpoint { path, .. } if path.contains("diffusion_pytorch_model")),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}

fn unet_config_json() -> serde_json::Value {
    let text = std::fs::read_to_string(sd_dir().join("unet/config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn vae_config_json() -> serde_json::Value {
    let text = std::fs::read_to_string(sd_dir().join("vae/config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn config_error_field(err: ModelError) -> String {
    match err {
        ModelError::Config { field, .. } => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn unsupported_config_values_name_the_field() {
    let device = align_core::test_device();
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("class_embed_type", "timestep".into()),
        ("addition_embed_type", "text_time".into()),
        ("num_class_embeds", 10.into()),
        ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn".into()),
        ("center_input_sample", true.into()),
        ("dual_cross_attention", true.into()),
        ("only_cross_attention", true.into()),
        ("act_fn", "gelu".into()),
        ("resnet_time_scale_shift", "scale_shift".into()),
        ("time_embedding_type", "fourier".into()),
        ("encoder_hid_dim", 64.into()),
        ("attention_head_dim", 3.into()),
        ("norm_num_groups", 3.into()),
    ];
    for (field, value) in cases {
        let mut json = unet_config_json();
        json[field] = value;
        let config: UNet2DConditionConfig = serde_json::from_value(json).unwrap();
        assert_eq!(config_error_field(config.init(&device).unwrap_err()), field);
    }
    let mut json = unet_config_json();
    json["down_block_types"][0] = "SimpleCrossAttnDownBlock2D".into();
    let config: UNet2DConditionConfig = serde_json::from_value(json).unwrap();
    assert_eq!(
        config_error_field(config.validate().unwrap_err()),
        "down_block_types"
    );
    let mut json = unet_config_json();
    json["up_block_types"][2] = "AttnUpBlock2D".into();
    let config: UNet2DConditionConfig = serde_json::from_value(json).unwrap();
    assert_eq!(
        config_error_field(config.validate().unwrap_err()),
        "up_block_types"
    );
    // num_attention_heads takes precedence over attention_head_dim.
    let mut json = unet_config_json();
    json["num_attention_heads"] = 3.into();
    let config: UNet2DConditionConfig = serde_json::from_value(json).unwrap();
    assert_eq!(
        config_error_field(config.validate().unwrap_err()),
        "num_attention_heads"
    );

    for (field, value) in [
        ("act_fn", "relu".into()),
        (
            "down_block_types",
            serde_json::json!(["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]),
        ),
        ("up_block_types", serde_json::json!(["UpDecoderBlock2D"])),
    ] {
        let mut json = vae_config_json();
        json[field] = value;
        let config: AutoencoderKlConfig = serde_json::from_value(json).unwrap();
        assert_eq!(config_error_field(config.init(&device).unwrap_err()), field);
    }

    // from_file refuses too, naming the field.
    let dir = scratch("bad-config");
    let mut json = unet_config_json();
    json["addition_embed_type"] = "text".into();
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let err = UNet2DCondition::load(&dir, &device).unwrap_err();
    assert_eq!(config_error_field(err), "addition_embed_type");
    let _ = std::fs::remove_dir_all(dir);
}

/// The fixture config varied: SD 2.x-style linear projections, two transformer layers, per-block
/// heads and layer counts.
fn variant_config() -> UNet2DConditionConfig {
    let mut json = unet_config_json();
    json["use_linear_projection"] = true.into();
    json["transformer_layers_per_block"] = 2.into();
    json["num_attention_heads"] = serde_json::json!([2, 4, 8]);
    json["layers_per_block"] = serde_json::json!([1, 2, 1]);
    json["cross_attention_dim"] = 12.into();
    json["out_channels"] = 3.into();
    serde_json::from_value(json).unwrap()
}

#[test]
fn forward_shapes_on_tiny_configs() {
    let device = align_core::test_device();
    let config = variant_config();
    let unet = config.init(&device).unwrap();
    assert_eq!(unet.downsample_factor(), 4);
    assert_eq!(unet.down_blocks[1].resnets.len(), 2);
    assert_eq!(unet.up_blocks[0].resnets.len(), 2);
    assert_eq!(unet.up_blocks[1].attentions[0].transformer_blocks.len(), 2);
    let x = Tensor::<4>::random([3, 4, 8, 12], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<1>::from_floats([0.0, 500.0, 999.0], &device);
    let ctx = Tensor::<3>::random([3, 5, 12], Distribution::Normal(0.0, 1.0), &device);
    assert_eq!(unet.forward(x, t, ctx).dims(), [3, 3, 8, 12]);

    let mut json = vae_config_json();
    json["block_out_channels"] = serde_json::json!([4, 8, 8]);
    json["down_block_types"] = serde_json::json!([
        "DownEncoderBlock2D",
        "DownEncoderBlock2D",
        "DownEncoderBlock2D"
    ]);
    json["up_block_types"] =
        serde_json::json!(["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]);
    json["latent_channels"] = 2.into();
    json["layers_per_block"] = 2.into();
    let config: AutoencoderKlConfig = serde_json::from_value(json).unwrap();
    let vae = config.init(&device).unwrap();
    assert_eq!(vae.downsample_factor(), 4);
    assert_eq!(vae.decoder.up_blocks[0].resnets.len(), 3);
    let x = Tensor::<4>::random([2, 3, 16, 8], Distribution::Uniform(-1.0, 1.0), &device);
    let post = vae.encode(x);
    assert_eq!(post.mean.dims(), [2, 2, 4, 2]);
    assert_eq!(post.logvar.dims(), [2, 2, 4, 2]);
    assert_eq!(vae.decode(post.mode()).dims(), [2, 3, 16, 8]);
}

#[test]
fn timestep_embedding_matches_the_diffusers_formula() {
    let device = align_core::test_device();
    let t = Tensor::<1>::from_floats([3.0], &device);
    let e: Vec<f32> = get_timestep_embedding(t.clone(), 4, true, 1.0)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    // half = 2, shift 1: ω = [1, 10000^(-1/1)].
    let w = 1e-4f32;
    let expect = [3f32.cos(), (3.0 * w).cos(), 3f32.sin(), (3.0 * w).sin()];
    for (a, b) in e.iter().zip(expect) {
        assert!((a - b).abs() < 1e-6, "{e:?} vs {expect:?}");
    }
    let e: Vec<f32> = get_timestep_embedding(t, 5, false, 0.0)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(e.len(), 5);
    assert!((e[0] - 3f32.sin()).abs() < 1e-6 && e[4] == 0.0, "{e:?}");
}

struct Grads<'a> {
    grads: &'a GradientsParams,
    params: usize,
    finite: usize,
}

impl ModuleVisitor for Grads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.params += 1;
        if let Some(g) = self.grads.get::<D>(param.id) {
            let v = g.into_data().try_to_vec::<f32>().unwrap();
            if v.iter().all(|x| x.is_finite()) {
                self.finite += 1;
            }
        }
    }
}

#[test]
fn unet_trains_on_an_autodiff_device() {
    let device = align_core::test_device().autodiff();
    let unet = UNet2DCondition::load(&sd_dir().join("unet"), &device).unwrap();
    let (x, t, ctx) = unet_inputs(&device);
    let loss = unet.forward(x, t, ctx).square().mean();
    let grads = GradientsParams::from_grads(loss.backward(), &unet);
    let mut check = Grads {
        grads: &grads,
        params: 0,
        finite: 0,
    };
    unet.visit(&mut check);
    assert_eq!(
        check.finite, check.params,
        "every parameter gets a finite gradient"
    );
    for attn in [
        &unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1,
        &unet.mid_block.attentions[0].transformer_blocks[0].attn2,
        &unet.up_blocks[2].attentions[2].transformer_blocks[0].attn1,
    ] {
        let g = grads.get::<2>(attn.to_q.weight.id).unwrap();
        let v = g.into_data().try_to_vec::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
        assert!(v.iter().any(|x| *x != 0.0), "to_q gradient is zero");
    }
}

#[test]
fn lora_on_the_attention_projections_starts_as_the_base_model() {
    let device = align_core::test_device();
    let unet = UNet2DCondition::load(&sd_dir().join("unet"), &device).unwrap();
    let (x, t, ctx) = unet_inputs(&device);
    let base = unet.forward(x.clone(), t.clone(), ctx.clone()).into_data();
    let config = LoraConfig::new()
        .with_rank(2)
        .with_targets(UNET_LORA_TARGETS.iter().map(|s| s.to_string()).collect());
    let adapted = apply_lora(unet, &config).unwrap();
    // 11 transformers (4 down, 1 mid, 6 up) × 2 attentions × 4 projections, two factors each.
    assert_eq!(lora_factor_count(&adapted), 11 * 2 * 4 * 2);
    let err = rel(adapted.forward(x, t, ctx), &base);
    eprintln!("LoRA at init: max relative change {err:.3e}");
    assert!(err <= 1e-6, "LoRA changed the output by {err}");
}

#[test]
fn parameter_paths_are_the_diffusers_names() {
    // Every file tensor, remapped, is a parameter path of the model, and vice versa.
    let device = align_core::test_device();
    struct P(Vec<String>, Vec<String>);
    impl ModuleVisitor for P {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
            self.1.push(self.0.join("."));
        }
    }
    let check = |model_paths: Vec<String>, file: &Path, remap: &[(&str, &str)]| {
        let mut names: Vec<String> = read_safetensors(file)
            .unwrap()
            .into_keys()
            .map(|k| {
                let mut k = k;
                for (from, to) in remap {
                    k = regex::Regex::new(from)
                        .unwrap()
                        .replace_all(&k, *to)
                        .into_owned();
                }
                k
            })
            .collect();
        names.sort();
        // burn's norms call weight/bias gamma/beta.
        let mut ours: Vec<String> = model_paths
            .into_iter()
            .map(|p| p.replace(".gamma", ".weight").replace(".beta", ".bias"))
            .collect();
        ours.sort();
        assert_eq!(ours, names);
    };
    let unet = UNet2DConditionConfig::from_file(&sd_dir().join("unet/config.json"))
        .unwrap()
        .init(&device)
        .unwrap();
    let mut p = P(vec![], vec![]);
    unet.visit(&mut p);
    check(
        p.1,
        &sd_dir().join("unet/diffusion_pytorch_model.safetensors"),
        &UNET_REMAP,
    );
    let vae = AutoencoderKlConfig::from_file(&sd_dir().join("vae/config.json"))
        .unwrap()
        .init(&device)
        .unwrap();
    let mut p = P(vec![], vec![]);
    vae.visit(&mut p);
    check(
        p.1,
        &sd_dir().join("vae/diffusion_pytorch_model.safetensors"),
        &VAE_REMAP,
    );
}

/// Stable Diffusion 1.5's published component configs (`fixtures/sd15-configs`, as diffusers
/// and transformers write them, every field included) parse and validate.
#[test]
fn sd15_configs_parse_and_validate() {
    let dir = fixtures_dir().join("sd15-configs");
    let unet = UNet2DConditionConfig::from_file(&dir.join("unet/config.json")).unwrap();
    assert_eq!(unet.block_out_channels, vec![320, 640, 1280, 1280]);
    AutoencoderKlConfig::from_file(&dir.join("vae/config.json")).unwrap();
    let text: crate::clip::ClipTextConfig =
        crate::hf::read_config(&dir.join("text_encoder/config.json")).unwrap();
    assert_eq!(text.hidden_size, 768);
}

/// At full size, the SD 1.5 topology has exactly the parameter counts diffusers and
/// transformers build from the same configs (859,520,964 / 83,653,863 / 123,060,480).
/// (burn initialises parameters lazily, so nothing of that size is allocated.)
#[test]
fn sd15_configs_build_the_published_parameter_counts() {
    let device = align_core::test_device();
    let dir = fixtures_dir().join("sd15-configs");
    let unet = UNet2DConditionConfig::from_file(&dir.join("unet/config.json"))
        .unwrap()
        .init(&device)
        .unwrap();
    assert_eq!(unet.num_params(), 859_520_964);
    drop(unet);
    let vae = AutoencoderKlConfig::from_file(&dir.join("vae/config.json"))
        .unwrap()
        .init(&device)
        .unwrap();
    assert_eq!(vae.num_params(), 83_653_863);
    drop(vae);
    let text: crate::clip::ClipTextConfig =
        crate::hf::read_config(&dir.join("text_encoder/config.json")).unwrap();
    assert_eq!(text.init(&device).unwrap().num_params(), 123_060_480);
}

/// Half-precision files (the `*.fp16.safetensors` variants users often have) load into the f32
/// model: the weights are the f16-rounded ones, so the output stays within f16 rounding of the
/// f32 reference.
#[test]
fn fp16_weight_files_load_as_f32() {
    let src = sd_dir().join("unet");
    let dir = scratch("fp16-unet");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let file = "diffusion_pytorch_model.safetensors";
    let tensors = read_safetensors(&src.join(file)).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, v)| {
            let b = v
                .clone()
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect();
            (k.clone(), v.shape().to_vec(), b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape.clone(), b)
                    .unwrap();
            (k.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join(file)).unwrap();
    let device = align_core::test_device();
    let unet = UNet2DCondition::load(&dir, &device).unwrap();
    let (x, t, ctx) = unet_inputs(&device);
    let err = rel(unet.forward(x, t, ctx), &reference()["unet.out"]);
    eprintln!("fp16 weights: unet.out max relative error {err:.3e}");
    assert!(
        err > 0.0 && err <= 2e-2,
        "fp16 weights: relative error {err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
