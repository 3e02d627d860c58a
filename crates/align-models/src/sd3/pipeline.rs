//! The Stable Diffusion 3 / 3.5 pipeline from a diffusers directory, as
//! `StableDiffusion3Pipeline` runs it:
//!
//! ```text
//! prompt → CLIP-L, CLIP-G (penultimate states, pooled projections) ⊕ T5 (or zeros)
//!        → condition c (tokens [B, 77 + L_T5, W], pooled [B, P_L + P_G])    (prompt.rs)
//! z_1 ~ N(0, I) → Euler on the flow-match sigmas (shift 3):
//!        z_{σ'} = z_σ + (σ' − σ) · [v_u + w (v_c − v_u)],   v = MMDiT(z_σ, 1000 σ, c)
//! image = VAE.decode(z_0 / scaling_factor + shift_factor)
//! ```
//!
//! The unconditional branch is the empty prompt through the same towers (diffusers' default
//! `negative_prompt = ""`). Flow time `t` is SD3's sigma: `x_t = (1 − t) x₀ + t ε`, so the
//! flow samplers of `align-samplers` (Euler, the Flow-GRPO SDE, CPS) run on it unchanged, on
//! the grid of [`FlowMatchSchedulerConfig::grid`].

use std::path::{Path, PathBuf};

use align_core::{Condition, Denoiser, Parameterization};
use align_samplers::{FlowEulerSampler, FlowGrid, Sampler};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use serde_json::Value;

use super::{MmDit, T5Encoder, T5Part, T5Tokenizer, sd3_condition};
use crate::clip::{ClipTextModelWithProjection, ClipTokenizer};
use crate::error::{ModelError, Result};
use crate::sd::AutoencoderKl;

/// The settings of diffusers' `FlowMatchEulerDiscreteScheduler` that SD3 uses
/// (`scheduler/scheduler_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMatchSchedulerConfig {
    /// Number of training timesteps `T` (1000); the smallest training sigma is `shift(1/T)`.
    pub num_train_timesteps: usize,
    /// The timestep shift `s` of `σ' = s σ / (1 + (s − 1) σ)` (SD3: 3).
    pub shift: f64,
}

impl Default for FlowMatchSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 3.0,
        }
    }
}

impl FlowMatchSchedulerConfig {
    /// Reads `scheduler_config.json`. Options SD3 and SD3.5 leave off (dynamic shifting, Karras,
    /// exponential or beta sigmas, inverted sigmas, stochastic sampling, a terminal shift) are
    /// refused by name rather than ignored.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] for a missing or invalid file, [`ModelError::Config`] naming
    /// an unsupported field or another scheduler class.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = crate::hf::read_config::<Value>(path)?;
        if let Some(class) = json.get("_class_name").and_then(Value::as_str)
            && class != "FlowMatchEulerDiscreteScheduler"
        {
            return Err(ModelError::config(
                "scheduler._class_name",
                format!("{class}: SD3 samples with FlowMatchEulerDiscreteScheduler"),
            ));
        }
        for flag in [
            "use_dynamic_shifting",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "invert_sigmas",
            "stochastic_sampling",
        ] {
            if json.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(ModelError::config(
                    format!("scheduler.{flag}"),
                    "is not supported (SD3 and SD3.5 leave it false)",
                ));
            }
        }
        if json.get("shift_terminal").is_some_and(|v| !v.is_null()) {
            return Err(ModelError::config(
                "scheduler.shift_terminal",
                "is not supported (SD3 and SD3.5 leave it null)",
            ));
        }
        let defaults = Self::default();
        let num_train_timesteps = match json.get("num_train_timesteps") {
            None => defaults.num_train_timesteps,
            Some(v) => v.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                ModelError::config(
                    "scheduler.num_train_timesteps",
                    "must be a positive integer",
                )
            })? as usize,
        };
        let shift = match json.get("shift") {
            None => defaults.shift,
            Some(v) => v
                .as_f64()
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| {
                    ModelError::config("scheduler.shift", "must be a finite positive number")
                })?,
        };
        Ok(Self {
            num_train_timesteps,
            shift,
        })
    }

    /// The sigmas of `set_timesteps(num_steps)`, final 0 included, as a flow grid.
    ///
    /// # Errors
    /// `num_steps == 0`.
    pub fn grid(&self, num_steps: usize) -> Result<FlowGrid> {
        FlowGrid::flow_match_euler(num_steps, self.shift, self.num_train_timesteps)
            .map_err(|e| ModelError::config("num_steps", e.to_string()))
    }
}

/// How to load an SD3 directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Sd3Options {
    /// Load the T5 tower (`text_encoder_3/`, `tokenizer_3/`). Without it (`false`, or when the
    /// directory has none) its part of the prompt is zeros, as diffusers does — the
    /// practical choice on small GPUs (T5-XXL is 4.7 B parameters).
    pub text_encoder_3: bool,
    /// T5 tokens per prompt (`max_sequence_length`; diffusers' default 256, at most 512).
    pub max_sequence_length: usize,
}

impl Default for Sd3Options {
    fn default() -> Self {
        Self {
            text_encoder_3: true,
            max_sequence_length: 256,
        }
    }
}

/// A Stable Diffusion 3 / 3.5 pipeline: MMDiT, two CLIP towers with projections and an
/// optional T5 with their tokenizers, the 16-channel VAE, the flow-match scheduler.
///
/// Only the transformer is meant to be trained: [`StableDiffusion3::load`] freezes the text
/// towers and the VAE, and LoRA ([`crate::apply_lora`] with
/// [`StableDiffusion3::lora_targets`]) adapts the joint attention, as Flow-GRPO does.
#[derive(Module, Debug)]
pub struct StableDiffusion3 {
    /// The flow-matching denoiser.
    pub transformer: MmDit,
    /// CLIP-L with projection (frozen).
    pub text_encoder: ClipTextModelWithProjection,
    /// OpenCLIP bigG with projection (frozen).
    pub text_encoder_2: ClipTextModelWithProjection,
    /// T5 v1.1 XXL encoder (frozen), if loaded.
    pub text_encoder_3: Option<T5Encoder>,
    /// The autoencoder (frozen).
    pub vae: AutoencoderKl,
    /// CLIP-L's tokenizer.
    #[module(skip)]
    pub tokenizer: ClipTokenizer,
    /// CLIP-G's tokenizer (pads with `!`).
    #[module(skip)]
    pub tokenizer_2: ClipTokenizer,
    /// T5's tokenizer, if loaded.
    #[module(skip)]
    pub tokenizer_3: Option<T5Tokenizer>,
    /// The scheduler settings.
    #[module(skip)]
    pub scheduler: FlowMatchSchedulerConfig,
    /// T5 tokens per prompt.
    #[module(skip)]
    pub max_sequence_length: usize,
}

fn component(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_dir() {
        Ok(path)
    } else {
        Err(ModelError::Checkpoint {
            path: path.display().to_string(),
            reason: format!(
                "missing: a Stable Diffusion 3 directory (diffusers layout) needs `{name}/` \
                 beside `transformer/`, `vae/`, `text_encoder/`, `text_encoder_2/`, \
                 `tokenizer/`, `tokenizer_2/` and `scheduler/`"
            ),
        })
    }
}

/// Whether `dir` looks like a diffusers SD3 directory: `transformer/config.json` and a
/// `model_index.json` whose `_class_name` starts with `StableDiffusion3` (or names no class),
/// or no index at all.
pub fn is_sd3_dir(dir: &Path) -> bool {
    if !dir.join("transformer").join("config.json").is_file() {
        return false;
    }
    match crate::hf::read_config::<Value>(&dir.join("model_index.json")) {
        Ok(index) => index
            .get("_class_name")
            .and_then(Value::as_str)
            .is_none_or(|c| c.starts_with("StableDiffusion3")),
        Err(_) => !dir.join("model_index.json").exists(),
    }
}

impl StableDiffusion3 {
    /// Loads a diffusers-layout SD3 / SD3.5 directory with the default options (T5 when
    /// present, 256 T5 tokens).
    ///
    /// # Errors
    /// As [`StableDiffusion3::load_with`].
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with(dir, &Sd3Options::default(), device)
    }

    /// Loads a diffusers-layout SD3 / SD3.5 directory; the text towers and the VAE are frozen.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] naming the missing directory or file, the file that does
    /// not parse, or the missing, unknown and mis-shaped tensors of a component;
    /// [`ModelError::Config`] for unsupported settings, `max_sequence_length` outside
    /// `1..=512`, or components that do not fit each other (named by field).
    pub fn load_with(dir: &Path, options: &Sd3Options, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Checkpoint {
                path: dir.display().to_string(),
                reason: "not a directory".into(),
            });
        }
        if !(1..=512).contains(&options.max_sequence_length) {
            return Err(ModelError::config(
                "max_sequence_length",
                format!("{} is outside 1..=512", options.max_sequence_length),
            ));
        }
        let scheduler = FlowMatchSchedulerConfig::from_file(
            &component(dir, "scheduler")?.join("scheduler_config.json"),
        )?;
        let tokenizer = ClipTokenizer::from_dir(&component(dir, "tokenizer")?)?;
        let tokenizer_2 = ClipTokenizer::from_dir(&component(dir, "tokenizer_2")?)?;
        let text_encoder =
            ClipTextModelWithProjection::load(&component(dir, "text_encoder")?, device)?;
        let text_encoder_2 =
            ClipTextModelWithProjection::load(&component(dir, "text_encoder_2")?, device)?;
        let (text_encoder_3, tokenizer_3) =
            if options.text_encoder_3 && dir.join("text_encoder_3").is_dir() {
                (
                    Some(T5Encoder::load(&dir.join("text_encoder_3"), device)?.no_grad()),
                    Some(
                        T5Tokenizer::from_dir(&component(dir, "tokenizer_3")?)?
                            .with_length(options.max_sequence_length)?,
                    ),
                )
            } else {
                (None, None)
            };
        let vae = AutoencoderKl::load(&component(dir, "vae")?, device)?;
        let transformer = MmDit::load(&component(dir, "transformer")?, device)?;
        let sd3 = Self {
            transformer,
            text_encoder: text_encoder.no_grad(),
            text_encoder_2: text_encoder_2.no_grad(),
            text_encoder_3,
            vae: vae.no_grad(),
            tokenizer,
            tokenizer_2,
            tokenizer_3,
            scheduler,
            max_sequence_length: options.max_sequence_length,
        };
        sd3.check_consistency()?;
        Ok(sd3)
    }

    fn check_consistency(&self) -> Result<()> {
        let cfg = self.transformer.config();
        let clip_width = self.text_encoder.text_model.hidden_size()
            + self.text_encoder_2.text_model.hidden_size();
        if cfg.joint_attention_dim < clip_width {
            return Err(ModelError::config(
                "transformer.joint_attention_dim",
                format!(
                    "{} is narrower than the two CLIP towers' joint width {clip_width}",
                    cfg.joint_attention_dim
                ),
            ));
        }
        let clip_len = self.tokenizer.model_max_length();
        for (name, tokenizer, tower) in [
            ("text_encoder", &self.tokenizer, &self.text_encoder),
            ("text_encoder_2", &self.tokenizer_2, &self.text_encoder_2),
        ] {
            let config = tower.text_model.config();
            if clip_len > config.max_position_embeddings {
                return Err(ModelError::config(
                    "tokenizer.model_max_length",
                    format!(
                        "{clip_len} tokens exceed {name}'s {} positions",
                        config.max_position_embeddings
                    ),
                ));
            }
            if tokenizer.vocab_size() > config.vocab_size {
                return Err(ModelError::config(
                    format!("{name}.vocab_size"),
                    format!(
                        "{} is smaller than its tokenizer's vocabulary ({} tokens)",
                        config.vocab_size,
                        tokenizer.vocab_size()
                    ),
                ));
            }
        }
        if let (Some(t5), Some(tokenizer)) = (&self.text_encoder_3, &self.tokenizer_3)
            && tokenizer.vocab_size() > t5.config().vocab_size
        {
            return Err(ModelError::config(
                "text_encoder_3.vocab_size",
                format!(
                    "{} is smaller than tokenizer_3's vocabulary ({} tokens)",
                    t5.config().vocab_size,
                    tokenizer.vocab_size()
                ),
            ));
        }
        if let Some(t5) = &self.text_encoder_3
            && t5.config().d_model != cfg.joint_attention_dim
        {
            return Err(ModelError::config(
                "transformer.joint_attention_dim",
                format!(
                    "{} does not match the T5 width {}",
                    cfg.joint_attention_dim,
                    t5.config().d_model
                ),
            ));
        }
        let pooled = self.text_encoder.projection_dim() + self.text_encoder_2.projection_dim();
        if cfg.pooled_projection_dim != pooled {
            return Err(ModelError::config(
                "transformer.pooled_projection_dim",
                format!(
                    "{} does not match the CLIP projections' joint width {pooled}",
                    cfg.pooled_projection_dim
                ),
            ));
        }
        if cfg.in_channels != self.vae.latent_channels() {
            return Err(ModelError::config(
                "transformer.in_channels",
                format!(
                    "{} does not match the VAE's latent channels {}",
                    cfg.in_channels,
                    self.vae.latent_channels()
                ),
            ));
        }
        Ok(())
    }

    /// Flow-GRPO's LoRA targets for SD3: the joint attention's image (`to_q`, `to_k`, `to_v`,
    /// `to_out`) and context (`add_q_proj`, `add_k_proj`, `add_v_proj`, `to_add_out`)
    /// projections of every block (`attn.` qualifies them: SD3.5's dual attention `attn2` and
    /// the VAE's attention stay frozen).
    pub fn lora_targets() -> Vec<String> {
        [
            "to_q",
            "to_k",
            "to_v",
            "to_out",
            "add_q_proj",
            "add_k_proj",
            "add_v_proj",
            "to_add_out",
        ]
        .iter()
        .map(|t| format!("attn.{t}"))
        .collect()
    }

    /// CLIP token ids `[B, 77]` of `prompts` (both towers use CLIP-L's `model_max_length`, as
    /// diffusers does).
    fn clip_ids(&self, tokenizer: &ClipTokenizer, prompts: &[String]) -> Tensor<2, Int> {
        let len = self.tokenizer.model_max_length();
        let ids: Vec<i64> = prompts
            .iter()
            .flat_map(|p| tokenizer.encode_padded(p, len))
            .map(i64::from)
            .collect();
        Tensor::from_data(TensorData::new(ids, [prompts.len(), len]), &self.device())
    }

    /// The conditions of `prompts` (module docs; `prompt_2` and `prompt_3` = `prompt`).
    ///
    /// # Errors
    /// [`ModelError::Input`] for an empty prompt list or text the T5 tokenizer refuses.
    pub fn encode_prompts(&self, prompts: &[String]) -> Result<Condition> {
        if prompts.is_empty() {
            return Err(ModelError::Input {
                what: "prompts".into(),
                expected: "at least one prompt".into(),
                got: "none".into(),
            });
        }
        let clip_l = self
            .text_encoder
            .forward(self.clip_ids(&self.tokenizer, prompts));
        let clip_g = self
            .text_encoder_2
            .forward(self.clip_ids(&self.tokenizer_2, prompts));
        let length = self.max_sequence_length;
        let t5 = match (&self.text_encoder_3, &self.tokenizer_3) {
            (Some(model), Some(tokenizer)) => {
                let ids: Vec<i64> = tokenizer
                    .encode_padded(prompts, length)?
                    .into_iter()
                    .map(i64::from)
                    .collect();
                let ids = Tensor::from_data(
                    TensorData::new(ids, [prompts.len(), length]),
                    &self.device(),
                );
                T5Part::Encoded(Box::new(model.forward(ids)))
            }
            _ => T5Part::Dropped {
                tokens: length,
                width: self.transformer.config().joint_attention_dim,
            },
        };
        sd3_condition(&clip_l, &clip_g, t5)
    }

    /// The unconditional condition for classifier-free guidance: the empty prompt, `B` times
    /// (encoded once, repeated).
    ///
    /// # Errors
    /// As [`StableDiffusion3::encode_prompts`]; `batch == 0`.
    pub fn encode_unconditional(&self, batch: usize) -> Result<Condition> {
        let one = self.encode_prompts(&[String::new()])?;
        Condition::cat(vec![one; batch]).map_err(|e| ModelError::Input {
            what: "unconditional batch".into(),
            expected: "at least one row".into(),
            got: e.to_string(),
        })
    }

    /// Decodes latents into images in `[−1, 1]` (unclamped, differentiable):
    /// `vae.decode(z / scaling_factor + shift_factor)`.
    ///
    /// # Shapes
    /// - `latents`: `[B, C_latent, h, w]`; output `[B, 3, h·f, w·f]`.
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        self.vae.decode_latents(latents)
    }

    /// Encodes images in `[−1, 1]` into latents `(mean − shift_factor) · scaling_factor`, for
    /// preference data given as images.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`; output `[B, C_latent, H/f, W/f]`.
    pub fn encode_images(&self, images: Tensor<4>) -> Tensor<4> {
        self.vae.encode_latents(images)
    }

    /// The latent shape `[C, h, w]` of `height × width` images.
    ///
    /// # Errors
    /// [`ModelError::Input`] if a side is not a positive multiple of the VAE factor times the
    /// patch size, or exceeds the position table.
    pub fn latent_shape(&self, height: usize, width: usize) -> Result<[usize; 3]> {
        let f = self.vae.downsample_factor();
        let cfg = self.transformer.config();
        let unit = f * cfg.patch_size;
        let max = unit * cfg.pos_embed_max_size;
        if height == 0
            || width == 0
            || !height.is_multiple_of(unit)
            || !width.is_multiple_of(unit)
            || height > max
            || width > max
        {
            return Err(ModelError::Input {
                what: "image size".into(),
                expected: format!(
                    "positive multiples of {unit} (VAE factor {f} × patch {}) up to {max}",
                    cfg.patch_size
                ),
                got: format!("{height}×{width}"),
            });
        }
        Ok([self.vae.latent_channels(), height / f, width / f])
    }

    /// The default image side: the transformer's `sample_size` times the VAE factor (1024 for
    /// SD3 and SD3.5).
    pub fn default_image_size(&self) -> usize {
        self.transformer.config().sample_size * self.vae.downsample_factor()
    }

    /// The deterministic Euler sampler of `num_steps` on the scheduler's sigmas.
    ///
    /// # Errors
    /// `num_steps == 0`.
    pub fn euler(&self, num_steps: usize) -> Result<FlowEulerSampler> {
        Ok(FlowEulerSampler::new(self.scheduler.grid(num_steps)?))
    }

    /// Runs `sampler` deterministically from the given initial latents with classifier-free
    /// guidance, as `StableDiffusion3Pipeline` does with `latents=` passed in (with
    /// [`StableDiffusion3::euler`]). For stochastic sampling with stored noise and log-probs
    /// use [`align_samplers::rollout()`].
    ///
    /// # Shapes
    /// - `latents`: `[B, C_latent, h, w]`, `prompts.len() == B`; output the final latents.
    ///
    /// # Errors
    /// A prompt count that does not match the batch, a latent shape the transformer cannot
    /// take, a sampler failure.
    pub fn sample_latents<S: Sampler + ?Sized>(
        &self,
        prompts: &[String],
        latents: Tensor<4>,
        sampler: &S,
        guidance_scale: f64,
    ) -> Result<Tensor<4>> {
        let [b, _, h, w] = latents.dims();
        if prompts.len() != b {
            return Err(ModelError::Input {
                what: "prompts".into(),
                expected: format!("{b} (one per latent)"),
                got: prompts.len().to_string(),
            });
        }
        let f = self.vae.downsample_factor();
        self.latent_shape(h * f, w * f)?;
        let condition = self.encode_prompts(prompts)?;
        let uncond = if guidance_scale == 1.0 {
            None
        } else {
            Some(self.encode_unconditional(b)?)
        };
        crate::stable_diffusion::guided_sample(
            self,
            &condition,
            uncond.as_ref(),
            latents,
            sampler,
            guidance_scale,
        )
    }

    fn device(&self) -> Device {
        self.transformer
            .devices()
            .into_iter()
            .next()
            .unwrap_or_default()
    }
}

/// The MMDiT's velocity on flow time `t ∈ [0, 1]` (see [`MmDit`]'s `Denoiser`).
impl Denoiser for StableDiffusion3 {
    fn parameterization(&self) -> Parameterization {
        Parameterization::FlowVelocity
    }

    fn predict(&self, x_t: Tensor<4>, t: Tensor<1>, condition: &Condition) -> Tensor<4> {
        self.transformer.predict(x_t, t, condition)
    }
}

/// Samples are the 16-channel latents, decoded by the VAE; the unconditional condition is
/// the empty prompt's.
impl crate::Pipeline for StableDiffusion3 {
    fn prompt_conditions(&self, prompts: &[String]) -> Result<(Condition, Condition)> {
        Ok((
            self.encode_prompts(prompts)?,
            self.encode_unconditional(prompts.len())?,
        ))
    }

    /// `D(z / s + shift)`, not clamped (gradients pass).
    fn sample_images(&self, samples: Tensor<4>) -> Tensor<4> {
        self.decode(samples)
    }

    fn sample_shape(&self, image_size: usize) -> Result<[usize; 3]> {
        self.latent_shape(image_size, image_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::{fixtures_dir, max_relative_error, read_safetensors};
    use align_core::test_device;

    fn dir() -> PathBuf {
        fixtures_dir().join("sd3-tiny-pipeline")
    }

    fn options(t5: bool) -> Sd3Options {
        Sd3Options {
            text_encoder_3: t5,
            max_sequence_length: 16,
        }
    }

    fn prompts() -> Vec<String> {
        vec![
            "a photo of a cat".into(),
            "a red car on the road at night".into(),
        ]
    }

    fn rel<const D: usize>(a: Tensor<D>, b: &TensorData) -> f64 {
        max_relative_error(&a.into_data(), b).unwrap()
    }

    /// diffusers' `encode_prompt` on the whole-pipeline fixture (both CLIP towers, T5 on 16
    /// tokens; negative prompt ""), with and without T5.
    #[test]
    fn prompt_embeddings_match_diffusers_with_and_without_t5() {
        let device = test_device();
        let r = read_safetensors(&dir().join("reference.safetensors")).unwrap();
        for (t5, prefix) in [(true, "encode"), (false, "no_t5")] {
            let sd3 = StableDiffusion3::load_with(&dir(), &options(t5), &device).unwrap();
            assert_eq!(sd3.text_encoder_3.is_some(), t5);
            let c = sd3.encode_prompts(&prompts()).unwrap();
            let err = rel(c.context.clone(), &r[&format!("{prefix}.prompt_embeds")]);
            assert!(err <= 1e-5, "{prefix} prompt embeds rel. err {err}");
            let u = sd3.encode_unconditional(2).unwrap();
            let err = rel(
                u.context.clone(),
                &r[&format!("{prefix}.negative_prompt_embeds")],
            );
            assert!(err <= 1e-5, "{prefix} negative embeds rel. err {err}");
            if t5 {
                let pooled = |c: Condition| c.pooled.unwrap();
                let err = rel(pooled(c), &r["encode.pooled_prompt_embeds"]);
                assert!(err <= 1e-5, "pooled rel. err {err}");
                let err = rel(pooled(u), &r["encode.negative_pooled_prompt_embeds"]);
                assert!(err <= 1e-5, "negative pooled rel. err {err}");
            }
        }
    }

    /// Both CLIP tokenizers of the pipeline directory (CLIP-G pads with "!") give diffusers'
    /// ids.
    #[test]
    fn clip_tokenizer_ids_match_transformers() {
        let sd3 = StableDiffusion3::load_with(&dir(), &options(false), &test_device()).unwrap();
        let r = read_safetensors(&dir().join("reference.safetensors")).unwrap();
        let mut texts = prompts();
        texts.push(String::new());
        for (tok, key) in [
            (&sd3.tokenizer, "tokenizer.input_ids"),
            (&sd3.tokenizer_2, "tokenizer_2.input_ids"),
        ] {
            let got: Vec<i64> = sd3
                .clip_ids(tok, &texts)
                .into_data()
                .iter::<i64>()
                .collect();
            assert_eq!(got, r[key].iter::<i64>().collect::<Vec<_>>(), "{key}");
        }
        assert_ne!(sd3.tokenizer.pad_id(), sd3.tokenizer_2.pad_id());
    }

    /// diffusers' `StableDiffusion3Pipeline(prompt=…)` loaded from the directory: 4 Euler
    /// steps with CFG 7 from fixed latents, with and without T5 — same latents and images.
    #[test]
    fn guided_sampling_matches_the_diffusers_pipeline() {
        let device = test_device();
        let r = read_safetensors(&dir().join("reference.safetensors")).unwrap();
        for (t5, key) in [(true, "run.latents"), (false, "no_t5.latents")] {
            let sd3 = StableDiffusion3::load_with(&dir(), &options(t5), &device).unwrap();
            let init = Tensor::<4>::from_data(r["run.init_latents"].clone(), &device);
            let sampler = sd3.euler(4).unwrap();
            let out = sd3.sample_latents(&prompts(), init, &sampler, 7.0).unwrap();
            let err = max_relative_error(&out.clone().into_data(), &r[key]).unwrap();
            eprintln!("{key} rel. err {err:.2e}");
            assert!(err <= 1e-5, "{key} rel. err {err}");
            if t5 {
                let images = sd3.decode(out);
                let err = max_relative_error(&images.into_data(), &r["run.images"]).unwrap();
                eprintln!("run.images rel. err {err:.2e}");
                assert!(err <= 1e-5, "images rel. err {err}");
            }
        }
    }

    /// Paths of the trainable parameters.
    fn trainable_paths<M: Module>(m: &M) -> Vec<String> {
        use burn::module::{ModuleVisitor, Param};
        struct Trainable(Vec<String>, Vec<String>);
        impl ModuleVisitor for Trainable {
            fn enter_module(&mut self, name: &str, _container_type: &str) {
                self.1.push(name.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container_type: &str) {
                self.1.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if param.is_require_grad() {
                    self.0.push(self.1.join("."));
                }
            }
        }
        let mut v = Trainable(Vec::new(), Vec::new());
        m.visit(&mut v);
        v.0
    }

    #[test]
    fn shapes_defaults_and_lora_targets() {
        let device = test_device().autodiff();
        let sd3 = StableDiffusion3::load_with(&dir(), &options(true), &device).unwrap();
        assert_eq!(sd3.scheduler, FlowMatchSchedulerConfig::default());
        assert_eq!(sd3.parameterization(), Parameterization::FlowVelocity);
        assert_eq!(sd3.latent_shape(16, 16).unwrap(), [4, 8, 8]);
        assert_eq!(sd3.default_image_size(), 16);
        assert!(sd3.latent_shape(14, 16).is_err()); // not a multiple of 2 × 2
        assert!(sd3.latent_shape(2 * 2 * 17, 16).is_err()); // beyond the 16-patch table
        assert!(is_sd3_dir(&dir()));
        assert!(!is_sd3_dir(&fixtures_dir().join("sd-tiny")));
        // LoRA adapts the transformer's joint attention only: not the dual attention, the
        // text towers or the VAE.
        let lora = crate::LoraConfig::new()
            .with_rank(2)
            .with_targets(StableDiffusion3::lora_targets());
        let sd3 = crate::apply_lora(sd3, &lora).unwrap();
        let paths = trainable_paths(&sd3);
        // 3 blocks × 8 projections, minus the context-pre-only last block's `to_add_out`.
        assert_eq!(paths.len(), (3 * 8 - 1) * 2, "{paths:?}");
        assert!(
            paths
                .iter()
                .all(|p| p.starts_with("transformer.transformer_blocks.") && p.contains(".attn.")),
            "{paths:?}"
        );
    }

    /// The published SD3-Medium / SD3.5-Medium / SD3.5-Large component configs (VAE, CLIP-L
    /// and bigG with projections, T5 v1.1 XXL; `fixtures/sd3-configs`) parse and build the
    /// parameter counts transformers / diffusers report (weights initialised lazily: nothing
    /// is allocated). The transformers are checked in `mmdit.rs`.
    #[test]
    fn published_component_configs_build_the_published_parameter_counts() {
        use crate::sd::AutoencoderKlConfig;
        let device = test_device();
        let dir = fixtures_dir().join("sd3-configs");
        let counts: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("param_counts.json")).unwrap())
                .unwrap();
        for name in ["sd3-medium", "sd3.5-medium", "sd3.5-large"] {
            let root = dir.join(name);
            let want = |sub: &str| counts[name][sub].as_u64().unwrap() as usize;
            let vae = AutoencoderKlConfig::from_file(&root.join("vae/config.json"))
                .unwrap()
                .init(&device)
                .unwrap();
            assert_eq!(vae.num_params(), want("vae"), "{name} vae");
            assert_eq!(vae.latent_channels(), 16);
            for sub in ["text_encoder", "text_encoder_2"] {
                let tower =
                    ClipTextModelWithProjection::init_from_dir(&root.join(sub), &device).unwrap();
                assert_eq!(tower.num_params(), want(sub), "{name} {sub}");
            }
            let t5: super::super::T5Config =
                crate::hf::read_config(&root.join("text_encoder_3/config.json")).unwrap();
            let t5 = t5.init(&device).unwrap();
            assert_eq!(t5.num_params(), want("text_encoder_3"), "{name} T5");
            assert_eq!(t5.config().d_model, 4096);
        }
    }

    #[test]
    fn bad_directories_and_settings_are_named() {
        let device = test_device();
        let err = StableDiffusion3::load(&dir().join("nope"), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");
        let bad = Sd3Options {
            max_sequence_length: 513,
            ..Sd3Options::default()
        };
        let err = StableDiffusion3::load_with(&dir(), &bad, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_sequence_length"), "{err}");
        let tmp = std::env::temp_dir().join(format!("align-sd3-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("scheduler")).unwrap();
        let cfg = tmp.join("scheduler/scheduler_config.json");
        std::fs::write(&cfg, r#"{"shift": 3.0, "use_dynamic_shifting": true}"#).unwrap();
        let err = StableDiffusion3::load(&tmp, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("use_dynamic_shifting"), "{err}");
        std::fs::write(&cfg, r#"{"shift": 3.0}"#).unwrap();
        let err = StableDiffusion3::load(&tmp, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokenizer"), "{err}");
        std::fs::write(&cfg, r#"{"_class_name": "DDIMScheduler"}"#).unwrap();
        let err = StableDiffusion3::load(&tmp, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("FlowMatchEulerDiscreteScheduler"), "{err}");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
