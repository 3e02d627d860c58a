//! A learned proxy reward model for the Shapes world: a small CNN that predicts whether an image
//! satisfies its prompt.
//!
//! ```text
//! f_img = Linear(mean_{h,w} CNN(x))                 CNN: per level, conv3×3 → SiLU → conv3×3/2 → SiLU
//! f_txt = SiLU(Linear(flatten(Embed(tokens))))      flattening keeps "two" next to "red circles"
//! z     = Linear(SiLU(Linear([f_img, f_txt, f_img ⊙ f_txt])))
//! r(x, c) = σ(z) ∈ (0, 1)                           "probability that x satisfies c"
//! ```
//!
//! It is trained ([`train_proxy`]) by binary cross-entropy on rendered training-split scenes:
//! half the examples pair an image with its own prompt (label 1), half with a **corrupted**
//! prompt (label 0: one group's count, colour or shape changed, or a group added or dropped;
//! see [`corrupt_prompt`]). Images are augmented with Gaussian pixel noise of a random level
//! and a brightness/contrast jitter so that the model sees imperfect images.
//!
//! Unlike the gold verifier ([`crate::ShapeEvalReward`]) it is differentiable (gradients reach
//! the pixels, for reward backpropagation) and **deliberately imperfect**: it has never seen a
//! generated image, so it can be fooled — which is what reward-hacking experiments need. Its
//! agreement with the verifier on generated images is measured with [`agreement`].

use std::path::Path;

use align_data::{
    Colour, Group, MAX_OBJECTS, Prompt, SceneSpec, Shape, ShapesDataset, SplitPart, Tokenizer,
    WorldConfig,
};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, silu, softplus};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::RewardError;

// Not `Result`: burn's `Config` derive expects `Result` to be the standard one.
type Res<T> = crate::error::Result<T>;
use crate::reward::{Reward, check_batch};

/// File name of the configuration in a proxy-model directory.
pub const PROXY_CONFIG_FILE: &str = "reward-model.json";
/// File name of the weights in a proxy-model directory.
pub const PROXY_WEIGHTS_FILE: &str = "reward-model.safetensors";

/// Configuration of [`ProxyReward`].
#[derive(Config, Debug)]
pub struct ProxyRewardConfig {
    /// Image side (square images).
    #[config(default = 16)]
    pub image_size: usize,
    /// Channels of each CNN level; each level halves the resolution.
    #[config(default = "vec![16, 32, 64]")]
    pub widths: Vec<usize>,
    /// Token embedding width.
    #[config(default = 16)]
    pub embed_dim: usize,
    /// Width of the image and text features and of the head.
    #[config(default = 64)]
    pub hidden: usize,
    /// Vocabulary size (the Shapes tokenizer's).
    #[config(default = 18)]
    pub vocab_size: usize,
    /// Token sequence length (the Shapes tokenizer's).
    #[config(default = 8)]
    pub max_len: usize,
}

impl ProxyRewardConfig {
    /// The preset used by tests (a few thousand parameters).
    pub fn tiny() -> Self {
        Self::new()
            .with_widths(vec![8, 16])
            .with_embed_dim(8)
            .with_hidden(16)
    }

    /// The preset of the shipped proxy model.
    pub fn small() -> Self {
        Self::new()
    }

    /// Builds the model with random weights.
    ///
    /// # Errors
    /// [`RewardError::Config`] for a zero width, size or length.
    pub fn init(&self, device: &Device) -> Res<ProxyReward> {
        if self.widths.is_empty() || self.widths.contains(&0) {
            return Err(RewardError::config("widths", "needs positive widths"));
        }
        // Bounds far above any proxy model, so that a damaged file cannot make `init` build
        // millions of layers.
        use align_models::hf::{MAX_COUNT, MAX_TABLE, MAX_WIDTH};
        let widest = self.widths.iter().copied().max().unwrap_or(0);
        align_models::hf::check_sizes(&[
            ("widths (levels)", self.widths.len(), MAX_COUNT),
            ("widths", widest, MAX_WIDTH),
            ("image_size", self.image_size, MAX_WIDTH),
            ("embed_dim", self.embed_dim, MAX_WIDTH),
            ("hidden", self.hidden, MAX_WIDTH),
            ("vocab_size", self.vocab_size, MAX_TABLE),
            ("max_len", self.max_len, MAX_TABLE),
        ])
        .map_err(|e| RewardError::config("reward model", e.to_string()))?;
        for (field, v) in [
            ("image_size", self.image_size),
            ("embed_dim", self.embed_dim),
            ("hidden", self.hidden),
            ("vocab_size", self.vocab_size),
            ("max_len", self.max_len),
        ] {
            if v == 0 {
                return Err(RewardError::config(field, "must be positive"));
            }
        }
        let conv = |i: usize, o: usize, stride: usize| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let mut mix = Vec::new();
        let mut down = Vec::new();
        let mut c = 3;
        for &w in &self.widths {
            mix.push(conv(c, w, 1));
            down.push(conv(w, w, 2));
            c = w;
        }
        let h = self.hidden;
        Ok(ProxyReward {
            mix,
            down,
            image_proj: LinearConfig::new(c, h).init(device),
            embed: EmbeddingConfig::new(self.vocab_size, self.embed_dim).init(device),
            text_proj: LinearConfig::new(self.embed_dim * self.max_len, h).init(device),
            head_hidden: LinearConfig::new(3 * h, h).init(device),
            head_out: LinearConfig::new(h, 1).init(device),
            max_len: self.max_len,
            vocab_size: self.vocab_size,
        })
    }
}

/// The proxy reward model (see the module docs).
#[derive(Module, Debug)]
pub struct ProxyReward {
    /// Per level: 3×3 convolution at the level's resolution.
    pub mix: Vec<Conv2d>,
    /// Per level: 3×3 stride-2 convolution.
    pub down: Vec<Conv2d>,
    /// Pooled CNN features → image features.
    pub image_proj: Linear,
    /// Token embeddings.
    pub embed: Embedding,
    /// Flattened token embeddings → text features.
    pub text_proj: Linear,
    /// Hidden layer of the head.
    pub head_hidden: Linear,
    /// Output logit.
    pub head_out: Linear,
    max_len: usize,
    vocab_size: usize,
}

impl ProxyReward {
    /// Logits `z` (the reward is `σ(z)`).
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]` in `[-1, 1]`; `tokens`: `[B, L]` token ids;
    /// - output `[B]`.
    pub fn forward(&self, images: Tensor<4>, tokens: Tensor<2, Int>) -> Tensor<1> {
        let mut h = images;
        for (mix, down) in self.mix.iter().zip(&self.down) {
            h = silu(down.forward(silu(mix.forward(h))));
        }
        let [b, c, _, _] = h.dims();
        let pooled = h
            .reshape([b as i32, c as i32, -1])
            .mean_dim(2)
            .reshape([b, c]);
        let f_img = self.image_proj.forward(pooled);
        let [_, l] = tokens.dims();
        let e = self.embed.forward(tokens); // [B, L, E]
        let f_txt = silu(self.text_proj.forward(e.reshape([b as i32, -1])));
        debug_assert_eq!(l, self.max_len);
        let joint = Tensor::cat(vec![f_img.clone(), f_txt.clone(), f_img * f_txt], 1);
        let z = self.head_out.forward(silu(self.head_hidden.forward(joint)));
        z.reshape([b])
    }

    /// Token ids `[B, L]` of the prompts.
    ///
    /// # Errors
    /// [`RewardError::Prompt`] for a word outside the Shapes vocabulary or a prompt too long.
    pub fn tokens(&self, prompts: &[String], device: &Device) -> Res<Tensor<2, Int>> {
        let tok = Tokenizer::new();
        let mut flat = Vec::with_capacity(prompts.len() * self.max_len);
        for (index, p) in prompts.iter().enumerate() {
            let ids = tok.encode(p).map_err(|source| RewardError::Prompt {
                reward: "proxy".into(),
                index,
                prompt: p.clone(),
                source: Box::new(source),
            })?;
            if ids.len() != self.max_len || ids.iter().any(|&i| i as usize >= self.vocab_size) {
                return Err(RewardError::config(
                    "max_len",
                    format!(
                        "the model takes {} tokens below {}, the tokenizer gave {:?}",
                        self.max_len, self.vocab_size, ids
                    ),
                ));
            }
            flat.extend(ids.iter().map(|&i| i64::from(i)));
        }
        Ok(Tensor::from_data(
            TensorData::new(flat, [prompts.len(), self.max_len]),
            device,
        ))
    }

    /// Writes `reward-model.json` and `reward-model.safetensors` into `dir`, each to a
    /// temporary file first and then renamed.
    ///
    /// # Errors
    /// I/O failures, as [`RewardError::Io`].
    pub fn save(&self, config: &ProxyRewardConfig, dir: &Path) -> Res<()> {
        let io = |path: &Path, e: String| RewardError::Io {
            path: path.display().to_string(),
            reason: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e.to_string()))?;
        let json = dir.join(PROXY_CONFIG_FILE);
        let tmp = dir.join(".reward-model.json.tmp");
        config.save(&tmp).map_err(|e| io(&json, e.to_string()))?;
        std::fs::rename(&tmp, &json).map_err(|e| io(&json, e.to_string()))?;
        let weights = dir.join(PROXY_WEIGHTS_FILE);
        align_models::save_safetensors(self, &weights).map_err(|e| io(&weights, e.to_string()))
    }

    /// Loads a directory written by [`ProxyReward::save`].
    ///
    /// # Errors
    /// A missing or malformed file, or weights that do not match the configuration.
    pub fn load(dir: &Path, device: &Device) -> Res<(ProxyRewardConfig, ProxyReward)> {
        let json = dir.join(PROXY_CONFIG_FILE);
        let config: ProxyRewardConfig =
            align_models::hf::read_config(&json).map_err(|e| RewardError::Io {
                path: json.display().to_string(),
                reason: e.to_string(),
            })?;
        let weights = dir.join(PROXY_WEIGHTS_FILE);
        let init = config.init(device).map_err(|e| RewardError::Io {
            path: json.display().to_string(),
            reason: e.to_string(),
        })?;
        let model =
            align_models::load_safetensors(init, &weights).map_err(|e| RewardError::Io {
                path: weights.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok((config, model))
    }
}

impl Reward for ProxyReward {
    fn name(&self) -> &str {
        "proxy"
    }

    fn scale(&self) -> &str {
        "(0, 1), probability the prompt is satisfied"
    }

    fn score(&self, images: &Tensor<4>, prompts: &[String]) -> Res<Vec<f64>> {
        check_batch(self.name(), images, prompts)?;
        let tokens = self.tokens(prompts, &images.device())?;
        let p = sigmoid(self.forward(images.clone(), tokens));
        let values = crate::reward::read_scores(self.name(), p)?;
        crate::reward::check_finite(self.name(), &values)?;
        Ok(values)
    }

    fn score_differentiable(
        &self,
        images: Tensor<4>,
        prompts: &[String],
    ) -> Option<Res<Tensor<1>>> {
        Some((|| {
            check_batch(self.name(), &images, prompts)?;
            let tokens = self.tokens(prompts, &images.device())?;
            Ok(sigmoid(self.forward(images, tokens)))
        })())
    }
}

/// Binary cross-entropy of logits `z` against labels `y ∈ {0, 1}`, averaged:
/// `mean(softplus(z) − y·z)`, which equals `−mean(y log σ(z) + (1 − y) log(1 − σ(z)))` and
/// stays finite for any `z`.
///
/// # Shapes
/// - `logits`, `labels`: `[B]`; output `[1]`.
pub fn bce_with_logits(logits: Tensor<1>, labels: Tensor<1>) -> Tensor<1> {
    (softplus(logits.clone(), 1.0) - labels * logits).mean()
}

fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[(rng.next_u64() % items.len() as u64) as usize]
}

/// A valid world prompt (a scene of at most [`MAX_OBJECTS`] objects) that differs from
/// `spec`'s: one group's count, colour or shape changed, or a group added (to a one-group
/// scene) or dropped (from a two-group scene), each kind with probability ¼ (redrawn until
/// the result is a world scene). Deterministic in `rng`.
pub fn corrupt_prompt(spec: &SceneSpec, rng: &mut ChaCha8Rng) -> String {
    loop {
        let mut groups: Vec<Group> = spec.groups().to_vec();
        let i = (rng.next_u64() % groups.len() as u64) as usize;
        match rng.next_u64() % 4 {
            0 => groups[i].count = pick(rng, &[1u8, 2, 3]),
            1 => groups[i].colour = pick(rng, &Colour::ALL),
            2 => groups[i].shape = pick(rng, &Shape::ALL),
            _ if groups.len() == 2 => {
                groups.remove(i);
            }
            _ => groups.push(Group {
                count: pick(rng, &[1u8, 2]),
                colour: pick(rng, &Colour::ALL),
                shape: pick(rng, &Shape::ALL),
            }),
        }
        if let Ok(s) = SceneSpec::new(groups)
            && &s != spec
            && s.total_objects() <= MAX_OBJECTS
        {
            return Prompt::from_spec(&s).text().to_string();
        }
    }
}

/// One training or evaluation batch: augmented images `[B, 3, H, W]`, prompts, labels.
#[derive(Debug, Clone)]
pub struct ProxyBatch {
    /// Augmented images.
    pub images: Tensor<4>,
    /// One prompt per image (true or corrupted).
    pub prompts: Vec<String>,
    /// 1 if the prompt is the image's own, 0 if corrupted.
    pub labels: Vec<f32>,
}

/// Options of [`proxy_batch`] and [`train_proxy`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyTrainOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per step.
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// Seed of data, augmentation and initialisation.
    pub seed: u64,
    /// Largest per-image Gaussian pixel-noise standard deviation (drawn uniformly in
    /// `[0, noise_max]`).
    pub noise_max: f64,
}

impl Default for ProxyTrainOptions {
    fn default() -> Self {
        Self {
            steps: 3000,
            batch: 64,
            lr: 1e-3,
            seed: 0,
            noise_max: 0.35,
        }
    }
}

/// Batch `step` of `part` (a pure function of the dataset's seed, `options.seed` and `step`):
/// scenes `step·B .. (step+1)·B`, half with their own prompt, half with a corrupted one (kept
/// inside the dataset's split part, so training never sees a held-out combination), each
/// image augmented as `clamp(a·x + b + s·ε, −1, 1)` with `a ~ U[0.8, 1.1]`, `b ~ U[−0.1, 0.1]`,
/// `s ~ U[0, noise_max]`, `ε ~ N(0, I)`.
///
/// # Errors
/// Scene generation failures from `align-data`.
pub fn proxy_batch(
    data: &ShapesDataset,
    step: u64,
    options: &ProxyTrainOptions,
    device: &Device,
) -> Res<ProxyBatch> {
    let b = options.batch;
    let samples = data.batch(step * b as u64, b)?;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x005e_ed0f_9a11);
    rng.set_stream(step);
    let mut prompts = Vec::with_capacity(b);
    let mut labels = Vec::with_capacity(b);
    let mut pixels = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let positive = i % 2 == 0;
        labels.push(if positive { 1.0 } else { 0.0 });
        prompts.push(if positive {
            s.prompt.clone()
        } else {
            // Stay inside the dataset's split part: a training batch must never show a
            // held-out attribute combination, not even as a negative (the model would learn
            // "held-out pair ⇒ false", which is leakage, not prompt following).
            loop {
                let p = corrupt_prompt(&s.spec, &mut rng);
                if p.parse::<SceneSpec>()
                    .is_ok_and(|spec| data.split().part(&spec) == data.part())
                {
                    break p;
                }
            }
        });
        let a = 0.8 + 0.3 * uniform(&mut rng);
        let off = 0.2 * uniform(&mut rng) - 0.1;
        let sigma = options.noise_max * uniform(&mut rng);
        for &x in &s.image.data {
            // Box–Muller; one normal per pixel.
            let (u1, u2) = (uniform(&mut rng).max(1e-300), uniform(&mut rng));
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let v = a * f64::from(x) + off + sigma * z;
            pixels.push(v.clamp(-1.0, 1.0) as f32);
        }
    }
    let side = samples.first().map_or(0, |s| s.image.width);
    let images = Tensor::from_data(TensorData::new(pixels, [b, 3, side, side]), device);
    Ok(ProxyBatch {
        images,
        prompts,
        labels,
    })
}

/// Outcome of [`train_proxy`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyTrainReport {
    /// Loss of every step.
    pub losses: Vec<f64>,
    /// Accuracy (threshold ½) on a fixed batch of 512 rendered **held-out-split** scenes with
    /// the same corruption and augmentation scheme.
    pub heldout_accuracy: f64,
}

/// Trains a proxy model from scratch on the training split (see the module docs).
///
/// `device` must be an autodiff device; `on_step(step, loss)` is called after every step.
/// The returned model is on the inner device.
///
/// # Errors
/// Bad options, data errors, or a non-finite loss.
pub fn train_proxy(
    config: &ProxyRewardConfig,
    options: &ProxyTrainOptions,
    device: &Device,
    mut on_step: impl FnMut(usize, f64),
) -> Res<(ProxyReward, ProxyTrainReport)> {
    if options.steps == 0 || options.batch < 2 {
        return Err(RewardError::config(
            "steps/batch",
            "need at least one step and two examples per batch",
        ));
    }
    if !(options.lr.is_finite() && options.lr > 0.0) {
        return Err(RewardError::config(
            "lr",
            format!("{} is not positive", options.lr),
        ));
    }
    if !(options.noise_max.is_finite() && options.noise_max >= 0.0) {
        return Err(RewardError::config("noise_max", "must be ≥ 0"));
    }
    let world = WorldConfig {
        size: config.image_size,
        ..WorldConfig::default()
    };
    let train = ShapesDataset::new(world.clone(), SplitPart::Train, options.seed)?;
    device.seed(options.seed);
    let mut model = config.init(device)?;
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut losses = Vec::with_capacity(options.steps);
    for step in 0..options.steps {
        let batch = proxy_batch(&train, step as u64, options, device)?;
        let tokens = model.tokens(&batch.prompts, device)?;
        let labels = Tensor::from_data(
            TensorData::new(batch.labels.clone(), [batch.labels.len()]),
            device,
        );
        let loss = bce_with_logits(model.forward(batch.images, tokens), labels);
        let value: f32 = loss
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| RewardError::Readback {
                what: "proxy loss".into(),
                reason: format!("{e:?}"),
            })?
            .first()
            .copied()
            .unwrap_or(f32::NAN);
        if !value.is_finite() {
            return Err(RewardError::NonFinite {
                reward: "proxy".into(),
                what: "training loss".into(),
                index: step,
                value: f64::from(value),
            });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (grads, _) = align_core::clip_grad_norm(&model, grads, 1.0)
            .map_err(|e| RewardError::config("gradients", e.to_string()))?;
        model = optim.step(options.lr, model, grads);
        losses.push(f64::from(value));
        on_step(step, f64::from(value));
    }
    let model = model.valid();
    let inner = device.clone().inner();
    let heldout = ShapesDataset::new(world, SplitPart::HeldOut, options.seed ^ 0xe7a1)?;
    let eval_options = ProxyTrainOptions {
        batch: 512,
        ..options.clone()
    };
    let batch = proxy_batch(&heldout, 0, &eval_options, &inner)?;
    let scores = model.score(&batch.images, &batch.prompts)?;
    let correct = scores
        .iter()
        .zip(&batch.labels)
        .filter(|(s, l)| (**s >= 0.5) == (**l > 0.5))
        .count();
    Ok((
        model,
        ProxyTrainReport {
            losses,
            heldout_accuracy: correct as f64 / scores.len() as f64,
        },
    ))
}

/// Agreement of a proxy with the gold verifier on the same images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// Images compared.
    pub n: usize,
    /// Fraction where `proxy ≥ threshold` equals the gold pass.
    pub accuracy: f64,
    /// Among gold passes, the fraction the proxy accepts (NaN if there is none).
    pub true_positive_rate: f64,
    /// Among gold failures, the fraction the proxy rejects (NaN if there is none).
    pub true_negative_rate: f64,
}

/// Compares proxy scores (accept when `≥ threshold`) with gold pass/fail.
///
/// # Errors
/// [`RewardError::Shape`] if the lengths differ or are zero.
pub fn agreement(proxy: &[f64], gold_pass: &[bool], threshold: f64) -> Res<Agreement> {
    if proxy.len() != gold_pass.len() || proxy.is_empty() {
        return Err(RewardError::shape(
            "agreement inputs",
            "two equally long, non-empty lists",
            format!(
                "{} proxy scores, {} gold results",
                proxy.len(),
                gold_pass.len()
            ),
        ));
    }
    let (mut tp, mut tn, mut pos, mut neg) = (0usize, 0usize, 0usize, 0usize);
    for (&s, &g) in proxy.iter().zip(gold_pass) {
        let accept = s >= threshold;
        if g {
            pos += 1;
            tp += usize::from(accept);
        } else {
            neg += 1;
            tn += usize::from(!accept);
        }
    }
    let rate = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    Ok(Agreement {
        n: proxy.len(),
        accuracy: (tp + tn) as f64 / proxy.len() as f64,
        true_positive_rate: rate(tp, pos),
        true_negative_rate: rate(tn, neg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tiny_options() -> ProxyTrainOptions {
        ProxyTrainOptions {
            steps: 30,
            batch: 16,
            lr: 3e-3,
            seed: 3,
            noise_max: 0.2,
        }
    }

    fn train_data() -> ShapesDataset {
        ShapesDataset::new(WorldConfig::default(), SplitPart::Train, 3).unwrap()
    }

    #[test]
    fn forward_shapes_and_scores_in_unit_interval() {
        let device = align_core::test_device();
        let model = ProxyRewardConfig::tiny().init(&device).unwrap();
        let batch = proxy_batch(&train_data(), 0, &tiny_options(), &device).unwrap();
        let tokens = model.tokens(&batch.prompts, &device).unwrap();
        assert_eq!(tokens.dims(), [16, 8]);
        assert_eq!(model.forward(batch.images.clone(), tokens).dims(), [16]);
        let s = model.score(&batch.images, &batch.prompts).unwrap();
        assert!(s.iter().all(|&v| v > 0.0 && v < 1.0));
        let bad = vec!["two purple circles".to_string(); 16];
        assert!(matches!(
            model.score(&batch.images, &bad),
            Err(RewardError::Prompt { .. })
        ));
    }

    #[test]
    fn bce_hand_computed_and_stable() {
        let device = align_core::test_device();
        let z = Tensor::<1>::from_floats([0.0, 2.0, -3.0, 80.0], &device);
        let y = Tensor::<1>::from_floats([1.0, 0.0, 0.0, 1.0], &device);
        // ln 2, softplus(2) = 2.126928, softplus(−3) = 0.048587, softplus(80) − 80 ≈ 0.
        let want = (2f64.ln() + 2.126_928_011 + 0.048_587_352 + 0.0) / 4.0;
        let got: f32 = bce_with_logits(z, y).into_scalar();
        assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn corrupted_prompts_are_valid_and_wrong(seed in 0u64..10_000) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let specs = SceneSpec::world();
            let spec = &specs[(seed as usize * 7919) % specs.len()];
            let p = corrupt_prompt(spec, &mut rng);
            let parsed: SceneSpec = p.parse().unwrap();
            prop_assert!(&parsed != spec, "{p}");
            prop_assert!(SceneSpec::world().contains(&parsed), "{p}");
        }
    }

    #[test]
    fn batches_are_deterministic_and_balanced() {
        let device = align_core::test_device();
        let data = train_data();
        let a = proxy_batch(&data, 5, &tiny_options(), &device).unwrap();
        let b = proxy_batch(&data, 5, &tiny_options(), &device).unwrap();
        assert_eq!(a.prompts, b.prompts);
        assert_eq!(
            a.images.clone().into_data().try_to_vec::<f32>().unwrap(),
            b.images.into_data().try_to_vec::<f32>().unwrap()
        );
        assert_eq!(a.labels.iter().sum::<f32>(), 8.0);
        let split = data.split();
        for p in &a.prompts {
            assert_eq!(split.part(&p.parse().unwrap()), SplitPart::Train, "{p}");
        }
        let c = proxy_batch(&data, 6, &tiny_options(), &device).unwrap();
        assert_ne!(a.prompts, c.prompts);
    }

    #[test]
    fn differentiable_score_matches_finite_differences() {
        let device = align_core::test_device();
        let ad = device.clone().autodiff();
        let model = ProxyRewardConfig::tiny().init(&ad).unwrap();
        let batch = proxy_batch(&train_data(), 1, &tiny_options(), &device).unwrap();
        let x: Vec<f32> = batch.images.clone().into_data().try_to_vec().unwrap();
        let dims = [16, 3, 16, 16];
        let prompts = batch.prompts.clone();
        let total = |v: &[f32]| -> f64 {
            let t = Tensor::<4>::from_data(TensorData::new(v.to_vec(), dims), &ad);
            model.score(&t, &prompts).unwrap().iter().sum()
        };
        let input = Tensor::<4>::from_data(TensorData::new(x.clone(), dims), &ad).require_grad();
        let s = model
            .score_differentiable(input.clone(), &prompts)
            .unwrap()
            .unwrap()
            .sum();
        let grads = s.backward();
        let g: Vec<f32> = input
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        // Per-pixel derivatives of an untrained model are ~1e-6, below what an f32 finite
        // difference resolves, so compare directional derivatives along whole-image
        // directions d: (f(x + h d) − f(x − h d)) / 2h against ⟨∇f, d⟩.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // Random ±1 directions mostly cancel; the steepest direction sign(∇f) and a randomly
        // re-weighted version of it do not, and a wrong sign or scale anywhere shows.
        let steepest: Vec<f32> = g.iter().map(|v| v.signum()).collect();
        let weighted: Vec<f32> = steepest
            .iter()
            .map(|s| s * (0.5 + uniform(&mut rng) as f32))
            .collect();
        for d in [steepest, weighted] {
            let h = 1e-2f32;
            let up: Vec<f32> = x.iter().zip(&d).map(|(a, b)| a + h * b).collect();
            let dn: Vec<f32> = x.iter().zip(&d).map(|(a, b)| a - h * b).collect();
            let fd = (total(&up) - total(&dn)) / (2.0 * f64::from(h));
            let an: f64 = g.iter().zip(&d).map(|(a, b)| f64::from(a * b)).sum();
            assert!(an.abs() > 2e-3, "⟨∇f, d⟩ = {an} is too small to test");
            assert!(
                (fd - an).abs() <= 3e-2 * an.abs(),
                "finite difference {fd} vs gradient {an}"
            );
        }
    }

    #[test]
    fn training_runs_reports_and_round_trips() {
        let device = align_core::test_device();
        let ad = device.clone().autodiff();
        let config = ProxyRewardConfig::tiny();
        let mut seen = 0;
        let (model, report) = train_proxy(&config, &tiny_options(), &ad, |_, _| seen += 1).unwrap();
        assert_eq!(seen, 30);
        // 30 fresh minibatches are too few to move the loss reliably below ln 2 (the
        // overfitting test below checks that the model learns); here: finite, recorded.
        assert!(report.losses.iter().all(|l| l.is_finite() && *l > 0.0));
        assert!((0.0..=1.0).contains(&report.heldout_accuracy));
        let dir = std::env::temp_dir().join(format!("align-proxy-{}", std::process::id()));
        model.save(&config, &dir).unwrap();
        let (_, back) = ProxyReward::load(&dir, &device).unwrap();
        let batch = proxy_batch(&train_data(), 9, &tiny_options(), &device).unwrap();
        assert_eq!(
            model.score(&batch.images, &batch.prompts).unwrap(),
            back.score(&batch.images, &batch.prompts).unwrap()
        );
        assert!(ProxyReward::load(&dir.join("missing"), &device).is_err());
        std::fs::remove_dir_all(&dir).ok();
        let bad = ProxyTrainOptions {
            lr: -1.0,
            ..tiny_options()
        };
        assert!(matches!(
            train_proxy(&config, &bad, &ad, |_, _| {}),
            Err(RewardError::Config { .. })
        ));
    }

    #[test]
    fn the_model_fits_a_fixed_batch() {
        let device = align_core::test_device();
        let ad = device.clone().autodiff();
        let mut model = ProxyRewardConfig::tiny().init(&ad).unwrap();
        let batch = proxy_batch(&train_data(), 2, &tiny_options(), &ad).unwrap();
        let tokens = model.tokens(&batch.prompts, &ad).unwrap();
        let labels = Tensor::<1>::from_data(TensorData::new(batch.labels.clone(), [16]), &ad);
        let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
        let loss_of = |m: &ProxyReward| -> f32 {
            bce_with_logits(
                m.forward(batch.images.clone(), tokens.clone()),
                labels.clone(),
            )
            .into_scalar()
        };
        let before = loss_of(&model);
        for _ in 0..60 {
            let loss = bce_with_logits(
                model.forward(batch.images.clone(), tokens.clone()),
                labels.clone(),
            );
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(3e-3, model, grads);
        }
        let after = loss_of(&model);
        assert!(after < 0.5 * before, "loss {before} → {after}");
    }

    #[test]
    fn agreement_hand_computed() {
        let a = agreement(
            &[0.9, 0.2, 0.6, 0.4, 0.7],
            &[true, true, false, false, false],
            0.5,
        )
        .unwrap();
        assert_eq!(a.n, 5);
        assert!((a.accuracy - 2.0 / 5.0).abs() < 1e-12);
        assert!((a.true_positive_rate - 0.5).abs() < 1e-12);
        assert!((a.true_negative_rate - 1.0 / 3.0).abs() < 1e-12);
        let only_neg = agreement(&[0.1], &[false], 0.5).unwrap();
        assert!(only_neg.true_positive_rate.is_nan() && only_neg.accuracy == 1.0);
        assert!(agreement(&[0.1], &[], 0.5).is_err());
    }
}
