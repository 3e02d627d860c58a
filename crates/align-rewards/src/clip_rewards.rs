//! Rewards from CLIP models: the CLIP score, PickScore-style logit-scaled similarity, and the
//! LAION aesthetic predictor — all differentiable down to the pixels.
//!
//! Each loads a transformers `CLIPModel` directory (`config.json`, `model.safetensors`,
//! `vocab.json` + `merges.txt`, `preprocessor_config.json`; see [`align_models::clip`]). With
//! `x` the images in `[-1, 1]`, `P` the [`ClipImageProcessor`] (→ `[0, 1]`, crop and resize to
//! the model's size, normalise) and `c` the prompt tokenised and padded to the text model's
//! `max_position_embeddings`:
//!
//! ```text
//! î = image_embeds(P(x)) / ‖·‖₂       t̂ = text_embeds(c) / ‖·‖₂       cos = î · t̂
//! ClipScore           r = 100 · max(cos, 0)                   (torchmetrics' CLIPScore)
//! PickScore           r = exp(logit_scale) · cos              (PickScore, HPS v2: the checkpoint
//!                                                              decides which)
//! AestheticPredictor  r = head(î)                             (prompts ignored)
//! ```
//!
//! The aesthetic head is LAION's improved aesthetic predictor: Linear layers `layers.0`,
//! `layers.2`, `layers.4`, `layers.6`, `layers.7` with dropouts (identity at inference) and no
//! activations between them, on the L2-normalised image embedding.
//!
//! When images need resizing, the processor's bilinear resize differs slightly from the PIL
//! bicubic resize of the Python pipelines (see [`ClipImageProcessor`]), so scores can differ
//! from the published numbers in the last digits; at the model's resolution they match.

use std::path::Path;

use align_models::ModelError;
use align_models::clip::{ClipImageProcessor, ClipModel, ClipTokenizer, l2_normalize};
use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;

use crate::error::{Result, RewardError};
use crate::reward::{Reward, check_batch, read_scores};

fn model_error(dir: &Path, e: ModelError) -> RewardError {
    match e {
        ModelError::Checkpoint { path, reason } => RewardError::Io { path, reason },
        other => RewardError::Io {
            path: dir.display().to_string(),
            reason: other.to_string(),
        },
    }
}

/// A CLIP model with its tokenizer and image processor: the part the rewards share.
#[derive(Debug)]
pub struct ClipScorer {
    model: ClipModel,
    tokenizer: ClipTokenizer,
    processor: ClipImageProcessor,
}

impl ClipScorer {
    /// Loads model, tokenizer and processor from a `CLIPModel` directory. The processor's
    /// mean/std come from `preprocessor_config.json` (CLIP's defaults if absent), its output
    /// size is the vision tower's `image_size`.
    ///
    /// # Errors
    /// [`RewardError::Io`] naming the file that is missing or does not fit.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        // Frozen: gradients reach the pixels, never the reward model's weights.
        let model = ClipModel::load(dir, device)
            .map_err(|e| model_error(dir, e))?
            .no_grad();
        let tokenizer = ClipTokenizer::from_dir(dir).map_err(|e| model_error(dir, e))?;
        let mut processor = ClipImageProcessor::from_dir(dir).map_err(|e| model_error(dir, e))?;
        let side = model.image_size();
        processor.size = [side, side];
        Ok(Self {
            model,
            tokenizer,
            processor,
        })
    }

    /// The CLIP model.
    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The image processor.
    pub fn processor(&self) -> &ClipImageProcessor {
        &self.processor
    }

    /// L2-normalised image embeddings `î` of `[-1, 1]` images.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`; output `[B, P]`.
    pub fn image_features(&self, images: Tensor<4>) -> Tensor<2> {
        l2_normalize(self.model.image_embeds(self.processor.preprocess(images)))
    }

    /// L2-normalised text embeddings `t̂` of the prompts, tokenised on `device`.
    ///
    /// # Shapes
    /// - output `[prompts.len(), P]`.
    pub fn text_features(&self, prompts: &[String], device: &Device) -> Tensor<2> {
        let len = self.model.text_model().max_position_embeddings();
        let ids: Vec<i64> = prompts
            .iter()
            .flat_map(|p| self.tokenizer.encode_padded(p, len))
            .map(i64::from)
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [prompts.len(), len]), device);
        l2_normalize(self.model.text_embeds(ids))
    }

    /// `cos(image_b, prompt_b)` for each pair.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`, `B` prompts; output `[B]`.
    pub fn cosine(&self, images: Tensor<4>, prompts: &[String]) -> Tensor<1> {
        let [b, ..] = images.dims();
        let text = self.text_features(prompts, &images.device());
        (self.image_features(images) * text).sum_dim(1).reshape([b])
    }
}

/// torchmetrics' CLIP score `100 · max(cos(image, prompt), 0)`, in `[0, 100]`.
#[derive(Debug)]
pub struct ClipScore {
    clip: ClipScorer,
}

/// PickScore / HPS-style score `exp(logit_scale) · cos(image, prompt)` of a `CLIPModel`
/// checkpoint (PickScore's scale is 100, so the score is in `[-100, 100]`).
#[derive(Debug)]
pub struct PickScore {
    clip: ClipScorer,
}

/// The LAION improved aesthetic predictor: an MLP head on the L2-normalised CLIP image
/// embedding (≈ 1–10 for real photographs). Prompts are ignored (their count is checked).
#[derive(Debug)]
pub struct AestheticPredictor {
    clip: ClipScorer,
    head: Vec<Linear>,
}

impl ClipScore {
    /// Loads the CLIP model of `clip_dir` (a transformers `CLIPModel` directory).
    ///
    /// # Errors
    /// [`RewardError::Io`] naming the file that is missing or does not fit.
    pub fn load(clip_dir: &Path, device: &Device) -> Result<Self> {
        Ok(Self {
            clip: ClipScorer::load(clip_dir, device)?,
        })
    }

    /// The underlying CLIP model, tokenizer and processor.
    pub fn scorer(&self) -> &ClipScorer {
        &self.clip
    }

    fn forward(&self, images: Tensor<4>, prompts: &[String]) -> Tensor<1> {
        self.clip.cosine(images, prompts).clamp_min(0.0) * 100.0
    }
}

impl PickScore {
    /// Loads a PickScore-style checkpoint (a transformers `CLIPModel` directory).
    ///
    /// # Errors
    /// [`RewardError::Io`] naming the file that is missing or does not fit.
    pub fn load(clip_dir: &Path, device: &Device) -> Result<Self> {
        Ok(Self {
            clip: ClipScorer::load(clip_dir, device)?,
        })
    }

    /// The underlying CLIP model, tokenizer and processor.
    pub fn scorer(&self) -> &ClipScorer {
        &self.clip
    }

    fn forward(&self, images: Tensor<4>, prompts: &[String]) -> Tensor<1> {
        let [b, ..] = images.dims();
        let scale = self.clip.model().logit_scale().exp().expand([b]);
        self.clip.cosine(images, prompts) * scale
    }
}

impl AestheticPredictor {
    /// Loads the CLIP model of `clip_dir` and the MLP head of `head_file` (safetensors,
    /// tensors `layers.N.weight` `[out, in]` and `layers.N.bias` `[out]`, applied in
    /// increasing `N`; sizes taken from the file).
    ///
    /// # Errors
    /// [`RewardError::Io`] naming the file that is missing or does not fit;
    /// [`RewardError::Shape`] if the head's layers do not chain from the CLIP projection
    /// width to one output.
    pub fn load(clip_dir: &Path, head_file: &Path, device: &Device) -> Result<Self> {
        let clip = ClipScorer::load(clip_dir, device)?;
        let head = load_head(head_file, clip.model().projection_dim(), device)?
            .into_iter()
            .map(Module::no_grad)
            .collect();
        Ok(Self { clip, head })
    }

    /// The underlying CLIP model, tokenizer and processor.
    pub fn scorer(&self) -> &ClipScorer {
        &self.clip
    }

    /// Number of Linear layers of the head.
    pub fn head_layers(&self) -> usize {
        self.head.len()
    }

    fn forward(&self, images: Tensor<4>) -> Tensor<1> {
        let [b, ..] = images.dims();
        let features = self.clip.image_features(images);
        self.head
            .iter()
            .fold(features, |h, layer| layer.forward(h))
            .reshape([b])
    }
}

/// Reads the aesthetic head: `layers.N.{weight,bias}` in increasing `N`.
fn load_head(path: &Path, input: usize, device: &Device) -> Result<Vec<Linear>> {
    let io = |reason: String| RewardError::Io {
        path: path.display().to_string(),
        reason,
    };
    let tensors = align_models::hf::read_safetensors(path).map_err(|e| model_error(path, e))?;
    let mut indices: Vec<usize> = Vec::new();
    for name in tensors.keys() {
        let index = name
            .strip_prefix("layers.")
            .and_then(|rest| rest.strip_suffix(".weight").or(rest.strip_suffix(".bias")))
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                io(format!(
                    "unexpected tensor `{name}`; an aesthetic head holds layers.N.weight and \
                     layers.N.bias"
                ))
            })?;
        indices.push(index);
    }
    indices.sort_unstable();
    indices.dedup();
    if indices.is_empty() {
        return Err(io("no layers.N.weight tensors".into()));
    }
    let mut width = input;
    let mut head = Vec::with_capacity(indices.len());
    for i in indices {
        let get = |suffix: &str| {
            tensors
                .get(&format!("layers.{i}.{suffix}"))
                .ok_or_else(|| io(format!("tensor `layers.{i}.{suffix}` is missing")))
        };
        let (weight, bias) = (get("weight")?, get("bias")?);
        let &[out, inp] = weight.shape().as_slice() else {
            return Err(RewardError::shape(
                format!("layers.{i}.weight of {}", path.display()),
                "[out, in]",
                format!("{:?}", weight.shape()),
            ));
        };
        if inp != width || bias.shape().as_slice() != [out] {
            return Err(RewardError::shape(
                format!("layer {i} of aesthetic head {}", path.display()),
                format!("weight [_, {width}] and bias [out]"),
                format!("weight {:?}, bias {:?}", weight.shape(), bias.shape()),
            ));
        }
        head.push(Linear {
            weight: Param::from_tensor(Tensor::<2>::from_data(weight.clone(), device).transpose()),
            bias: Some(Param::from_tensor(Tensor::<1>::from_data(
                bias.clone(),
                device,
            ))),
        });
        width = out;
    }
    if width != 1 {
        return Err(RewardError::shape(
            format!("output of aesthetic head {}", path.display()),
            "1",
            width,
        ));
    }
    Ok(head)
}

macro_rules! clip_reward {
    ($ty:ty, $name:literal, $scale:literal, |$s:ident, $images:ident, $prompts:ident| $body:expr) => {
        impl Reward for $ty {
            fn name(&self) -> &str {
                $name
            }

            fn scale(&self) -> &str {
                $scale
            }

            fn score(&self, images: &Tensor<4>, prompts: &[String]) -> Result<Vec<f64>> {
                check_batch(self.name(), images, prompts)?;
                let ($s, $images, $prompts) = (self, images.clone(), prompts);
                read_scores(self.name(), $body)
            }

            fn score_differentiable(
                &self,
                images: Tensor<4>,
                prompts: &[String],
            ) -> Option<Result<Tensor<1>>> {
                Some(check_batch(self.name(), &images, prompts).map(|_| {
                    let ($s, $images, $prompts) = (self, images, prompts);
                    $body
                }))
            }
        }
    };
}

clip_reward!(ClipScore, "clip_score", "[0, 100]", |s, images, prompts| s
    .forward(images, prompts));
clip_reward!(
    PickScore,
    "pickscore",
    "exp(logit_scale)·cos, [-100, 100] for PickScore",
    |s, images, prompts| s.forward(images, prompts)
);
clip_reward!(
    AestheticPredictor,
    "aesthetic",
    "LAION aesthetic score, ≈ 1–10",
    |s, images, _prompts| s.forward(images)
);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use align_models::hf::{fixtures_dir, max_relative_error, read_safetensors};

    use super::*;

    fn dir() -> PathBuf {
        fixtures_dir().join("clip-tiny")
    }

    fn refs() -> BTreeMap<String, TensorData> {
        read_safetensors(&dir().join("reference.safetensors")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn prompts() -> Vec<String> {
        let text =
            std::fs::read_to_string(dir().join("reference.json")).unwrap_or_else(|e| panic!("{e}"));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        json["prompts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `images01 · 2 − 1`: the reference images in the workspace's `[-1, 1]` convention.
    fn images(device: &Device) -> Tensor<4> {
        let r = refs();
        let x = r.get("images01").unwrap_or_else(|| panic!("no images01"));
        Tensor::<4>::from_data(x.clone(), device) * 2.0 - 1.0
    }

    fn check(reward: &dyn Reward, reference: &str, device: &Device) -> f64 {
        let prompts = prompts();
        assert_eq!(prompts.len(), 2);
        let scores = reward
            .score(&images(device), &prompts)
            .unwrap_or_else(|e| panic!("{e}"));
        let actual = TensorData::new(scores.iter().map(|&s| s as f32).collect(), [scores.len()]);
        let r = refs();
        let expected = r.get(reference).unwrap_or_else(|| panic!("no {reference}"));
        let err = max_relative_error(&actual, expected).unwrap_or_else(|e| panic!("{e}"));
        println!("{reference}: max relative error {err:.3e} ({scores:?})");
        assert!(err <= 1e-4, "{reference}: {err:.3e}");
        // Differentiable path: same scores, gradients reach the pixels.
        let x = images(device).require_grad();
        let s = reward
            .score_differentiable(x.clone(), &prompts)
            .unwrap_or_else(|| panic!("not differentiable"))
            .unwrap_or_else(|e| panic!("{e}"));
        let diff =
            max_relative_error(&s.clone().into_data(), expected).unwrap_or_else(|e| panic!("{e}"));
        assert!(diff <= 1e-4, "{reference} differentiable: {diff:.3e}");
        let grads = s.sum().backward();
        let g = x
            .grad(&grads)
            .unwrap_or_else(|| panic!("no gradient to the pixels"));
        let g: Vec<f32> = g.into_data().iter::<f32>().collect();
        assert!(g.iter().all(|v| v.is_finite()));
        assert!(g.iter().any(|&v| v != 0.0), "{reference}: zero gradient");
        // A prompt-count mismatch is an error on both paths.
        let one = vec![prompts[0].clone()];
        assert!(matches!(
            reward.score(&images(device), &one),
            Err(RewardError::PromptCount {
                batch: 2,
                prompts: 1,
                ..
            })
        ));
        assert!(matches!(
            reward.score_differentiable(images(device), &one),
            Some(Err(RewardError::PromptCount { .. }))
        ));
        err
    }

    #[test]
    fn clip_score_matches_torchmetrics_formula() {
        let device = align_core::test_device().autodiff();
        let reward = ClipScore::load(&dir(), &device).unwrap_or_else(|e| panic!("{e}"));
        check(&reward, "clip_score", &device);
    }

    #[test]
    fn pickscore_matches_reference() {
        let device = align_core::test_device().autodiff();
        let reward = PickScore::load(&dir(), &device).unwrap_or_else(|e| panic!("{e}"));
        check(&reward, "pickscore", &device);
    }

    #[test]
    fn aesthetic_matches_reference() {
        let device = align_core::test_device().autodiff();
        let reward = AestheticPredictor::load(
            &dir(),
            &dir().join("aesthetic").join("model.safetensors"),
            &device,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reward.head_layers(), 5);
        check(&reward, "aesthetic", &device);
    }

    #[test]
    fn loading_errors_name_the_file() {
        let device = align_core::test_device();
        let err = ClipScore::load(&dir().join("nowhere"), &device)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json"), "{err}");
        // The CLIP weights are not an aesthetic head.
        let err = AestheticPredictor::load(&dir(), &dir().join("model.safetensors"), &device)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unexpected tensor"), "{err}");
    }
}
