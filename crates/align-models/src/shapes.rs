//! Text-to-image models of the Shapes world: a [`TextEncoder`] plus a denoiser ([`UNet`] for
//! DDPM/DDIM, [`DiT`] for flow matching), their pretraining loss and sampling.
//!
//! A model is saved as a directory holding `model.json` (its [`ShapesModelConfig`]) and
//! `model.safetensors` (its weights, written atomically). The UNet is trained on DDPM's
//! linear β schedule (1e-4 → 0.02, `T = 1000`) in pixel space; the DiT with conditional flow
//! matching on uniformly drawn times.

use std::path::Path;

use align_core::{Condition, Denoiser, NoiseKey, Parameterization, noise_tensor};
use align_samplers::{BetaSchedule, NoiseSchedule, RolloutBatch, RolloutConfig, Sampler, rollout};
use burn::module::Module;
use burn::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::checkpoint::{load_safetensors, save_safetensors};
use crate::dit::{DiT, DiTConfig};
use crate::error::{ModelError, Result};
use crate::pretrain::{cfg_dropout, flow_matching_loss, min_snr_weight, weighted_ddpm_loss};
use crate::text_encoder::{TextEncoder, TextEncoderConfig};
use crate::unet::{UNet, UNetConfig};

/// Which denoiser a Shapes model uses.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum DenoiserKind {
    /// ε-prediction UNet, DDPM/DDIM family.
    Unet,
    /// Velocity DiT, flow matching.
    Dit,
}

/// Size preset of a Shapes model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Seconds-scale models for tests.
    Tiny,
    /// The shipped models.
    Small,
}

/// Everything needed to rebuild a Shapes model.
#[derive(Config, Debug)]
pub struct ShapesModelConfig {
    /// The denoiser family.
    pub kind: DenoiserKind,
    /// Text encoder.
    pub text: TextEncoderConfig,
    /// UNet (used when `kind = Unet`).
    pub unet: UNetConfig,
    /// DiT (used when `kind = Dit`).
    pub dit: DiTConfig,
    /// Image side in pixels.
    #[config(default = 16)]
    pub image_size: usize,
    /// DDPM training timesteps `T` (UNet).
    #[config(default = 1000)]
    pub num_train_timesteps: usize,
}

impl ShapesModelConfig {
    /// A preset for a vocabulary of `vocab_size` tokens and prompts of `max_len` tokens.
    pub fn preset(kind: DenoiserKind, preset: Preset, vocab_size: usize, max_len: usize) -> Self {
        match preset {
            Preset::Tiny => Self::new(
                kind,
                TextEncoderConfig::tiny(vocab_size, max_len),
                UNetConfig::tiny(),
                DiTConfig::tiny().with_image_size(16).with_patch_size(4),
            ),
            Preset::Small => Self::new(
                kind,
                TextEncoderConfig::new(vocab_size, max_len),
                UNetConfig::small(),
                DiTConfig::small(),
            ),
        }
    }

    /// A flow-matching UNet ("flow UNet"): the UNet of `preset` predicting the velocity
    /// (`FlowVelocity`), trained by conditional flow matching and sampled by flow samplers.
    pub fn flow_unet(preset: Preset, vocab_size: usize, max_len: usize) -> Self {
        let mut config = Self::preset(DenoiserKind::Unet, preset, vocab_size, max_len);
        config.unet.parameterization = Parameterization::FlowVelocity;
        config
    }

    /// Whether the model is a flow-matching model (a DiT, or a UNet predicting the flow
    /// velocity): it is trained by flow matching and sampled on the flow time grid.
    pub fn is_flow(&self) -> bool {
        match self.kind {
            DenoiserKind::Dit => true,
            DenoiserKind::Unet => self.unet.parameterization == Parameterization::FlowVelocity,
        }
    }

    /// The DDPM schedule the UNet is trained on.
    ///
    /// # Errors
    /// An invalid `num_train_timesteps`.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        NoiseSchedule::new(BetaSchedule::ddpm_linear(), self.num_train_timesteps)
            .map_err(|e| ModelError::config("num_train_timesteps", e.to_string()))
    }

    /// Checks every size and count against generous bounds (widths ≤ 4096, layers, blocks and
    /// heads ≤ 64, vocabulary ≤ 65 536, prompts ≤ 1024 tokens, images ≤ 1024 px, `T` ≤
    /// 100 000), far beyond any model of the Shapes world. A `model.json` from elsewhere could
    /// otherwise make [`ShapesModelConfig::init`] build billions of layers or overflow a
    /// product before the weights file is even read.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the first field out of bounds.
    pub fn check_bounds(&self) -> Result<()> {
        const WIDTH: usize = 4096;
        const COUNT: usize = 64;
        let u = &self.unet;
        let d = &self.dit;
        let t = &self.text;
        let fields: [(&str, usize, usize, usize); 22] = [
            ("image_size", self.image_size, 1, 1024),
            ("num_train_timesteps", self.num_train_timesteps, 1, 100_000),
            ("text.vocab_size", t.vocab_size, 1, 65_536),
            ("text.max_len", t.max_len, 1, 1024),
            ("text.dim", t.dim, 1, WIDTH),
            ("text.layers", t.layers, 0, COUNT),
            ("text.heads", t.heads, 1, COUNT),
            ("unet.in_channels", u.in_channels, 1, COUNT),
            ("unet.out_channels", u.out_channels, 1, COUNT),
            ("unet.base_channels", u.base_channels, 1, WIDTH),
            ("unet.num_res_blocks", u.num_res_blocks, 1, COUNT),
            ("unet.context_dim", u.context_dim, 1, WIDTH),
            ("unet.num_heads", u.num_heads, 1, COUNT),
            ("unet.norm_groups", u.norm_groups, 1, WIDTH),
            ("unet.channel_mults (levels)", u.channel_mults.len(), 1, 8),
            ("dit.channels", d.channels, 1, COUNT),
            ("dit.image_size", d.image_size, 1, 1024),
            ("dit.patch_size", d.patch_size, 1, 1024),
            ("dit.dim", d.dim, 1, WIDTH),
            ("dit.depth", d.depth, 1, COUNT),
            ("dit.heads", d.heads, 1, COUNT),
            ("dit.context_dim", d.context_dim, 1, WIDTH),
        ];
        for (field, value, min, max) in fields {
            if !(min..=max).contains(&value) {
                return Err(ModelError::config(
                    field,
                    format!("{value} is outside {min}..={max}"),
                ));
            }
        }
        if let Some(&m) = u.channel_mults.iter().find(|&&m| !(1..=64).contains(&m)) {
            return Err(ModelError::config(
                "unet.channel_mults",
                format!("{m} is outside 1..=64"),
            ));
        }
        if u.base_channels * u.channel_mults.iter().max().unwrap_or(&1) > WIDTH {
            return Err(ModelError::config(
                "unet.channel_mults",
                format!("widths above {WIDTH}"),
            ));
        }
        // Tables built when the model is created, before any weights are read: the DiT's
        // positional embedding (patches × width) and the text encoder's positions (tokens ×
        // width), each at most 2²² values (16 MiB).
        const TABLE: usize = 1 << 22;
        let patches = (d.image_size / d.patch_size).pow(2);
        for (field, rows, what, width) in [
            ("dit.dim", patches, "patches", d.dim),
            ("text.dim", t.max_len, "tokens", t.dim),
        ] {
            if rows * width > TABLE {
                return Err(ModelError::config(
                    field,
                    format!("{rows} {what} × width {width} is above {TABLE} positional values"),
                ));
            }
        }
        Ok(())
    }

    /// Initialises a model with random weights.
    ///
    /// # Errors
    /// A size out of bounds ([`ShapesModelConfig::check_bounds`]) or an inconsistent
    /// sub-configuration.
    pub fn init(&self, device: &Device) -> Result<ShapesModel> {
        self.check_bounds()?;
        let text = self.text.init(device)?;
        Ok(match self.kind {
            DenoiserKind::Unet => ShapesModel::Unet(Box::new(TextToImage {
                text,
                denoiser: self.unet.init(device)?,
            })),
            DenoiserKind::Dit => {
                if self.dit.image_size != self.image_size {
                    return Err(ModelError::config(
                        "dit.image_size",
                        format!(
                            "{} differs from image_size {}",
                            self.dit.image_size, self.image_size
                        ),
                    ));
                }
                ShapesModel::Dit(Box::new(TextToImage {
                    text,
                    denoiser: self.dit.init(device)?,
                }))
            }
        })
    }
}

/// A text encoder and a denoiser trained together.
#[derive(Module, Debug)]
pub struct TextToImage<D: Module> {
    /// Prompt encoder.
    pub text: TextEncoder,
    /// Denoiser conditioned on the encoded prompt.
    pub denoiser: D,
}

/// The random choices of one training batch, all keyed by `(seed, step)`.
#[derive(Debug, Clone)]
pub struct BatchDraws {
    /// Per-sample DDPM timestep (UNet) — drawn uniformly from `0..T`.
    pub timesteps: Vec<usize>,
    /// Per-sample flow time (DiT) — drawn uniformly from `[0, 1)`.
    pub times: Vec<f64>,
    /// Per-sample CFG dropout flag.
    pub drop: Vec<bool>,
    /// Noise keys of the batch.
    pub keys: Vec<NoiseKey>,
}

impl BatchDraws {
    /// Draws for a batch of `b` samples at training step `step`.
    pub fn new(
        seed: u64,
        step: u64,
        b: usize,
        num_train_timesteps: usize,
        cfg_dropout: f64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(step);
        let unit = |rng: &mut ChaCha8Rng| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut timesteps = Vec::with_capacity(b);
        let mut times = Vec::with_capacity(b);
        let mut drop = Vec::with_capacity(b);
        for _ in 0..b {
            let u = unit(&mut rng);
            timesteps
                .push(((u * num_train_timesteps as f64) as usize).min(num_train_timesteps - 1));
            times.push(unit(&mut rng));
            drop.push(unit(&mut rng) < cfg_dropout);
        }
        let keys = (0..b as u64)
            .map(|i| NoiseKey {
                seed: seed ^ 0x7072_6574_7261_696e, // "pretrain": separate from sampling keys
                sample: step * b as u64 + i,
                step: 0,
            })
            .collect();
        Self {
            timesteps,
            times,
            drop,
            keys,
        }
    }
}

/// The text-to-image model is a denoiser of already-encoded conditions (see
/// [`TextToImage::encode`]): alignment code re-scores transitions with the whole model, so a
/// trainable text encoder receives its gradient through the condition.
impl<D: Module + Denoiser> Denoiser for TextToImage<D> {
    fn parameterization(&self) -> Parameterization {
        self.denoiser.parameterization()
    }

    fn predict(&self, x_t: Tensor<4>, t: Tensor<1>, condition: &Condition) -> Tensor<4> {
        self.denoiser.predict(x_t, t, condition)
    }
}

impl<D: Module + Denoiser> TextToImage<D> {
    /// Encodes token rows into a condition.
    ///
    /// # Errors
    /// Rows of the wrong length or unknown ids.
    pub fn encode(&self, rows: &[Vec<u32>], device: &Device) -> Result<Condition> {
        self.text.encode(rows, device)
    }

    /// The pretraining loss of one batch: ε-MSE for DDPM models, flow matching for velocity
    /// models, with CFG dropout to the null prompt.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, S, S]` in `[-1, 1]`; `tokens`, `null`: `B` rows; output `[1]`.
    ///
    /// # Errors
    /// Mismatched inputs.
    pub fn loss(
        &self,
        images: Tensor<4>,
        tokens: &[Vec<u32>],
        null: &[Vec<u32>],
        draws: &BatchDraws,
        schedule: &NoiseSchedule,
    ) -> Result<Tensor<1>> {
        self.loss_weighted(images, tokens, null, draws, schedule, None)
    }

    /// [`TextToImage::loss`] with the DDPM loss weighted by min-SNR-γ
    /// ([`min_snr_weight`]) when `min_snr_gamma` is given. Flow models ignore it (their loss
    /// is unweighted flow matching).
    ///
    /// # Errors
    /// Mismatched inputs or a `γ` that is not positive and finite.
    pub fn loss_weighted(
        &self,
        images: Tensor<4>,
        tokens: &[Vec<u32>],
        null: &[Vec<u32>],
        draws: &BatchDraws,
        schedule: &NoiseSchedule,
        min_snr_gamma: Option<f64>,
    ) -> Result<Tensor<1>> {
        let device = images.device();
        let [_, c, h, w] = images.dims();
        let cond = self.encode(tokens, &device)?;
        let null = self.encode(null, &device)?;
        let cond = cfg_dropout(&cond, &null, &draws.drop)?;
        let noise = noise_tensor(&draws.keys, [c, h, w], &device)
            .map_err(|e| ModelError::config("batch", e.to_string()))?;
        if self.denoiser.parameterization() == Parameterization::FlowVelocity {
            flow_matching_loss(&self.denoiser, images, noise, &draws.times, &cond)
        } else {
            let alpha_bars: Vec<f64> = draws
                .timesteps
                .iter()
                .map(|&t| schedule.alpha_bar(t))
                .collect();
            let weights = match min_snr_gamma {
                None => None,
                Some(gamma) => Some(
                    alpha_bars
                        .iter()
                        .map(|&a| min_snr_weight(a, gamma, self.denoiser.parameterization()))
                        .collect::<Result<Vec<f64>>>()?,
                ),
            };
            weighted_ddpm_loss(
                &self.denoiser,
                images,
                noise,
                &draws.timesteps,
                &alpha_bars,
                weights.as_deref(),
                &cond,
            )
        }
    }

    /// Samples images for token rows with a sampler and guidance scale; sample `i` uses the
    /// noise keys of `(request.seed, request.sample_ids[i])`.
    ///
    /// # Returns
    /// `[B, 3, S, S]` clamped to `[-1, 1]`.
    ///
    /// # Errors
    /// Mismatched inputs or a sampler that cannot drive the denoiser.
    pub fn sample(
        &self,
        sampler: &dyn Sampler,
        request: &SampleRequest<'_>,
        image_size: usize,
        device: &Device,
    ) -> Result<Tensor<4>> {
        let cond = self.encode(request.tokens, device)?;
        let uncond = self.encode(request.null, device)?;
        let batch = RolloutBatch {
            condition: &cond,
            uncond: Some(&uncond),
            sample_ids: request.sample_ids.to_vec(),
            condition_ids: (0..request.tokens.len()).collect(),
            group_ids: None,
            sample_shape: [3, image_size, image_size],
        };
        let config = RolloutConfig {
            seed: request.seed,
            guidance_scale: request.guidance_scale,
            ..RolloutConfig::default()
        };
        let traj = rollout(&self.denoiser, sampler, &batch, &config)
            .map_err(|e| ModelError::config("sampling", e.to_string()))?;
        Ok(traj.final_sample().clone().clamp(-1.0, 1.0))
    }
}

/// What to sample: prompts (token rows), their null prompts, sample ids, seed and guidance.
#[derive(Debug, Clone, Copy)]
pub struct SampleRequest<'a> {
    /// Token rows of the prompts.
    pub tokens: &'a [Vec<u32>],
    /// Token rows of the null prompt (one per prompt).
    pub null: &'a [Vec<u32>],
    /// Global sample ids (noise keys).
    pub sample_ids: &'a [u64],
    /// Noise seed.
    pub seed: u64,
    /// Classifier-free guidance scale.
    pub guidance_scale: f64,
}

/// A Shapes-world text-to-image model of either family.
#[derive(Debug, Clone)]
pub enum ShapesModel {
    /// Text encoder + UNet.
    Unet(Box<TextToImage<UNet>>),
    /// Text encoder + DiT.
    Dit(Box<TextToImage<DiT>>),
}

impl ShapesModel {
    /// Saves `model.json` and `model.safetensors` into `dir`.
    ///
    /// # Errors
    /// The directory or files cannot be written.
    pub fn save(&self, config: &ShapesModelConfig, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::Checkpoint {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let json_path = dir.join("model.json");
        let tmp = dir.join(".model.json.tmp");
        config.save(&tmp).map_err(|e| ModelError::Checkpoint {
            path: json_path.display().to_string(),
            reason: e.to_string(),
        })?;
        std::fs::rename(&tmp, &json_path).map_err(|e| ModelError::Checkpoint {
            path: json_path.display().to_string(),
            reason: e.to_string(),
        })?;
        let weights = dir.join("model.safetensors");
        match self {
            ShapesModel::Unet(m) => save_safetensors(m.as_ref(), &weights),
            ShapesModel::Dit(m) => save_safetensors(m.as_ref(), &weights),
        }
    }

    /// Loads a model directory written by [`ShapesModel::save`].
    ///
    /// # Errors
    /// Missing or malformed `model.json`, or weights that do not match it.
    pub fn load(dir: &Path, device: &Device) -> Result<(ShapesModelConfig, ShapesModel)> {
        let json_path = dir.join("model.json");
        if !json_path.is_file() {
            return Err(ModelError::Checkpoint {
                path: json_path.display().to_string(),
                reason: "no such file (is this a model directory?)".into(),
            });
        }
        // (burn's `Config::load` reports any read failure, invalid UTF-8 included, as "file
        // not found".)
        let config: ShapesModelConfig = crate::hf::read_config(&json_path)?;
        config
            .check_bounds()
            .map_err(|e| crate::hf::in_file(&json_path, e))?;
        let weights = dir.join("model.safetensors");
        let model = match config
            .init(device)
            .map_err(|e| crate::hf::in_file(&json_path, e))?
        {
            ShapesModel::Unet(m) => ShapesModel::Unet(Box::new(load_safetensors(*m, &weights)?)),
            ShapesModel::Dit(m) => ShapesModel::Dit(Box::new(load_safetensors(*m, &weights)?)),
        };
        Ok((config, model))
    }
}
