//! Pretraining on the Shapes world: the loss of both tiny models falls within a few dozen
//! steps, and a saved model directory loads back to the same outputs.
#![allow(clippy::unwrap_used)]

use align_core::Denoiser;
use align_data::{ShapesDataset, SplitPart, Tokenizer, WorldConfig};
use align_models::{BatchDraws, DenoiserKind, Preset, ShapesModel, ShapesModelConfig, TextToImage};
use burn::module::{Module, ModuleDisplay};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;

fn batch(
    data: &ShapesDataset,
    step: usize,
    b: usize,
    device: &Device,
) -> (Tensor<4>, Vec<Vec<u32>>) {
    let tok = Tokenizer::new();
    let samples = data.batch((step * b) as u64, b).unwrap();
    let mut pixels = Vec::new();
    for s in &samples {
        pixels.extend_from_slice(&s.image.data);
    }
    let size = data.config().size;
    let x = Tensor::from_data(TensorData::new(pixels, [b, 3, size, size]), device);
    let tokens = samples
        .iter()
        .map(|s| tok.encode(&s.prompt).unwrap())
        .collect();
    (x, tokens)
}

fn train<D: Module + ModuleDisplay + Denoiser>(
    mut model: TextToImage<D>,
    config: &ShapesModelConfig,
    device: &Device,
) -> (f64, f64) {
    let data = ShapesDataset::new(WorldConfig::default(), SplitPart::Train, 3).unwrap();
    let schedule = config.noise_schedule().unwrap();
    let null = vec![Tokenizer::new().null_prompt(); 8];
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut losses = Vec::new();
    for step in 0..40 {
        let (x, tokens) = batch(&data, step % 4, 8, device);
        let draws = BatchDraws::new(0, (step % 4) as u64, 8, config.num_train_timesteps, 0.1);
        let loss = model.loss(x, &tokens, &null, &draws, &schedule).unwrap();
        losses.push(loss.clone().into_scalar::<f32>() as f64);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    // Same four batches (and draws) at the start and at the end: compare their mean losses.
    let first = losses[..4].iter().sum::<f64>() / 4.0;
    let last = losses[36..].iter().sum::<f64>() / 4.0;
    (first, last)
}

#[test]
fn pretraining_loss_decreases_for_both_tiny_models() {
    let device = align_core::test_device().autodiff();
    device.seed(0);
    let tok = Tokenizer::new();
    for kind in [DenoiserKind::Unet, DenoiserKind::Dit] {
        let config = ShapesModelConfig::preset(kind, Preset::Tiny, tok.vocab_size(), tok.max_len());
        let (first, last) = match config.init(&device).unwrap() {
            ShapesModel::Unet(m) => train(*m, &config, &device),
            ShapesModel::Dit(m) => train(*m, &config, &device),
        };
        assert!(last < 0.8 * first, "{kind:?}: loss {first:.4} → {last:.4}");
    }
}

#[test]
fn model_directories_round_trip() {
    let device = align_core::test_device();
    device.seed(1);
    let tok = Tokenizer::new();
    let config = ShapesModelConfig::preset(
        DenoiserKind::Dit,
        Preset::Tiny,
        tok.vocab_size(),
        tok.max_len(),
    );
    let model = config.init(&device).unwrap();
    let dir = std::env::temp_dir().join(format!("align-shapes-model-{}", std::process::id()));
    model.save(&config, &dir).unwrap();
    let (loaded_config, loaded) = ShapesModel::load(&dir, &device).unwrap();
    assert_eq!(loaded_config.kind, DenoiserKind::Dit);
    let tokens = vec![tok.encode("two red circles").unwrap()];
    let (a, b) = match (&model, &loaded) {
        (ShapesModel::Dit(a), ShapesModel::Dit(b)) => (
            a.encode(&tokens, &device).unwrap().context.into_data(),
            b.encode(&tokens, &device).unwrap().context.into_data(),
        ),
        _ => panic!("kind changed"),
    };
    assert_eq!(a, b);
    let err = ShapesModel::load(&dir.join("nope"), &device).unwrap_err();
    assert!(err.to_string().contains("model.json"), "{err}");
    // Sizes far beyond the world's are refused before anything is built, naming the field
    // and the file (u64::MAX residual blocks once made `init` allocate until killed).
    let json = std::fs::read_to_string(dir.join("model.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for (section, field, value) in [
        ("unet", "num_res_blocks", serde_json::json!(u64::MAX)),
        ("dit", "depth", serde_json::json!(1u64 << 40)),
        ("text", "dim", serde_json::json!(1u64 << 20)),
    ] {
        let mut bad = v.clone();
        bad[section][field] = value;
        std::fs::write(dir.join("model.json"), bad.to_string()).unwrap();
        let err = ShapesModel::load(&dir, &device).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{section}.{field}`")) && err.contains("model.json"),
            "{err}"
        );
    }
    v["kind"] = serde_json::json!("Dit");
    std::fs::write(dir.join("model.json"), v.to_string()).unwrap();
    assert!(ShapesModel::load(&dir, &device).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}
