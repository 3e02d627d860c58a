//! Stable Diffusion 1.x as an `align` policy: a diffusers pipeline directory loaded from disk.
//!
//! [`StableDiffusion`] bundles the three networks of a diffusers `StableDiffusionPipeline`
//! directory — the latent [`UNet2DCondition`], the CLIP [`ClipTextModel`] with its
//! [`ClipTokenizer`], and the [`AutoencoderKl`] — with the DDPM noise schedule of
//! `scheduler/scheduler_config.json`. It implements [`Denoiser`] on **latents**: the samplers,
//! the RL updates and the preference losses of the workspace drive it exactly as they drive the
//! Shapes-world models, and rewards reach the pixels through [`StableDiffusion::decode`]
//! (differentiable, for the reward-backprop line).
//!
//! Conventions, as in diffusers:
//! - the condition is the text encoder's last hidden state of the prompt tokenized to the
//!   tokenizer's `model_max_length` (77) and padded with its pad token; no padding mask (SD
//!   attends to the padding tokens); the unconditional prompt for CFG is the empty string;
//! - latents are the VAE posterior times `scaling_factor` (0.18215), and
//!   `decode(z) = vae.decode(z / scaling_factor)` gives images in `[−1, 1]` (not clamped, so
//!   that gradients pass; clamp when writing files);
//! - the model time passed to [`Denoiser::predict`] is the discrete DDPM timestep (`0..1000`).
//!
//! Directory layout read by [`StableDiffusion::load`]: `unet/`, `vae/`, `text_encoder/`
//! (each `config.json` + safetensors), `tokenizer/` (`vocab.json`, `merges.txt`) and
//! `scheduler/scheduler_config.json`. The safety checker and feature extractor are not used.

use std::path::Path;

use align_core::{Condition, Denoiser, Parameterization};
use align_samplers::{
    BetaSchedule, DdimSampler, FinalAlpha, NoiseSchedule, Sampler, TimestepSpacing, Transition,
    guided_predict, strided_timesteps,
};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use serde::Deserialize;

use crate::clip::{ClipTextModel, ClipTokenizer};
use crate::error::{ModelError, Result};
use crate::hf::read_config;
use crate::sd::{AutoencoderKl, UNet2DCondition};

/// The parts of diffusers' `scheduler_config.json` that define the noise schedule and the
/// sampling timesteps (the same keys for the DDIM, PNDM, DDPM and Euler schedulers).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct SchedulerConfig {
    /// `T`, the training timesteps.
    #[serde(default = "default_train_timesteps")]
    pub num_train_timesteps: usize,
    /// First β.
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    /// Last β.
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    /// `linear`, `scaled_linear` (SD 1.x) or `squaredcos_cap_v2`.
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
    /// `epsilon` (SD 1.x) or `v_prediction` (SD 2.x 768), or `sample`.
    #[serde(default = "default_prediction")]
    pub prediction_type: String,
    /// Offset of the `leading` spacing (SD 1.x: 1).
    #[serde(default)]
    pub steps_offset: usize,
    /// `leading` (SD 1.x), `trailing` or `linspace`.
    #[serde(default = "default_spacing")]
    pub timestep_spacing: String,
    /// Whether `ᾱ` after the last step is 1 (`false` in SD 1.x: `ᾱ_0`).
    #[serde(default)]
    pub set_alpha_to_one: bool,
    /// Whether DDIM clamps `x̂₀` (false in SD 1.x).
    #[serde(default)]
    pub clip_sample: bool,
    /// The clamp range when `clip_sample` is set.
    #[serde(default = "default_clip_range")]
    pub clip_sample_range: f64,
}

fn default_train_timesteps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.00085
}
fn default_beta_end() -> f64 {
    0.012
}
fn default_beta_schedule() -> String {
    "scaled_linear".into()
}
fn default_prediction() -> String {
    "epsilon".into()
}
fn default_spacing() -> String {
    "leading".into()
}
fn default_clip_range() -> f64 {
    1.0
}

impl Default for SchedulerConfig {
    /// Stable Diffusion 1.5's scheduler settings.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            prediction_type: "epsilon".into(),
            steps_offset: 1,
            timestep_spacing: "leading".into(),
            set_alpha_to_one: false,
            clip_sample: false,
            clip_sample_range: 1.0,
        }
    }
}

impl SchedulerConfig {
    /// Reads `scheduler_config.json`.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] naming the file if it is missing or does not parse.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config(path)
    }

    /// The DDPM noise schedule.
    ///
    /// # Errors
    /// [`ModelError::Config`] for an unknown `beta_schedule` or invalid values.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        let schedule = match self.beta_schedule.as_str() {
            "linear" => BetaSchedule::Linear {
                beta_start: self.beta_start,
                beta_end: self.beta_end,
            },
            "scaled_linear" => BetaSchedule::ScaledLinear {
                beta_start: self.beta_start,
                beta_end: self.beta_end,
            },
            "squaredcos_cap_v2" => BetaSchedule::squared_cos(),
            other => {
                return Err(ModelError::config(
                    "beta_schedule",
                    format!(
                        "`{other}` is not supported (linear, scaled_linear, squaredcos_cap_v2)"
                    ),
                ));
            }
        };
        NoiseSchedule::new(schedule, self.num_train_timesteps)
            .map_err(|e| ModelError::config("scheduler", e.to_string()))
    }

    /// What the UNet predicts.
    ///
    /// # Errors
    /// [`ModelError::Config`] for an unknown `prediction_type`.
    pub fn parameterization(&self) -> Result<Parameterization> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Parameterization::Epsilon),
            "v_prediction" => Ok(Parameterization::VPrediction),
            "sample" => Ok(Parameterization::Sample),
            other => Err(ModelError::config(
                "prediction_type",
                format!("`{other}` is not supported (epsilon, v_prediction, sample)"),
            )),
        }
    }

    /// The timestep spacing.
    ///
    /// # Errors
    /// [`ModelError::Config`] for an unknown `timestep_spacing`.
    pub fn spacing(&self) -> Result<TimestepSpacing> {
        match self.timestep_spacing.as_str() {
            "leading" => Ok(TimestepSpacing::Leading {
                offset: self.steps_offset,
            }),
            "trailing" => Ok(TimestepSpacing::Trailing),
            "linspace" => Ok(TimestepSpacing::Linspace),
            other => Err(ModelError::config(
                "timestep_spacing",
                format!("`{other}` is not supported (leading, trailing, linspace)"),
            )),
        }
    }

    /// A DDIM(η) sampler with `steps` steps on this schedule, exactly as diffusers'
    /// `DDIMScheduler` configured by this file (η = 0: deterministic DDIM; η = 1: DDPO's
    /// stochastic sampler with exact log-probs).
    ///
    /// # Errors
    /// Invalid schedule values, `steps` of 0 or above `T`, a negative η.
    pub fn ddim(&self, steps: usize, eta: f64) -> Result<DdimSampler> {
        let timesteps = strided_timesteps(self.num_train_timesteps, steps, self.spacing()?)
            .map_err(|e| ModelError::config("steps", e.to_string()))?;
        let final_alpha = if self.set_alpha_to_one {
            FinalAlpha::One
        } else {
            FinalAlpha::First
        };
        Ok(DdimSampler::new(self.noise_schedule()?, timesteps, eta)
            .map_err(|e| ModelError::config("eta", e.to_string()))?
            .with_final_alpha(final_alpha)
            .with_clip_sample(self.clip_sample.then_some(self.clip_sample_range)))
    }
}

/// A Stable Diffusion 1.x pipeline: UNet, CLIP text encoder and tokenizer, VAE, scheduler.
///
/// Only the UNet is meant to be trained: [`StableDiffusion::load`] freezes the text encoder
/// and the VAE, and LoRA ([`crate::apply_lora`] with [`StableDiffusion::lora_targets`]) adapts
/// the UNet's attention projections, as the diffusers training scripts of DDPO, DPOK,
/// Diffusion-DPO and AlignProp do.
#[derive(Module, Debug)]
pub struct StableDiffusion {
    /// The latent denoiser.
    pub unet: UNet2DCondition,
    /// The CLIP text encoder (frozen).
    pub text_encoder: ClipTextModel,
    /// The autoencoder (frozen).
    pub vae: AutoencoderKl,
    /// The CLIP tokenizer.
    #[module(skip)]
    pub tokenizer: ClipTokenizer,
    /// The scheduler settings.
    #[module(skip)]
    pub scheduler: SchedulerConfig,
    #[module(skip)]
    parameterization: Parameterization,
}

fn component(dir: &Path, name: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(name);
    if path.is_dir() {
        Ok(path)
    } else {
        Err(ModelError::Checkpoint {
            path: path.display().to_string(),
            reason: format!(
                "missing: a Stable Diffusion directory (diffusers layout) needs `{name}/` \
                 beside `unet/`, `vae/`, `text_encoder/`, `tokenizer/` and `scheduler/`"
            ),
        })
    }
}

impl StableDiffusion {
    /// Loads a diffusers-layout Stable Diffusion 1.x directory; the text encoder and the VAE
    /// are frozen.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] naming the missing directory or file, the file that does
    /// not parse, or listing the missing, unknown and mis-shaped tensors of a component;
    /// [`ModelError::Config`] for unsupported settings or components that do not fit each
    /// other (the UNet's cross-attention width against the text encoder's, its input channels
    /// against the VAE's latent channels).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Checkpoint {
                path: dir.display().to_string(),
                reason: "not a directory".into(),
            });
        }
        let scheduler_file = component(dir, "scheduler")?.join("scheduler_config.json");
        let scheduler = SchedulerConfig::from_file(&scheduler_file)?;
        let parameterization = scheduler.parameterization()?;
        scheduler.noise_schedule()?;
        let tokenizer = ClipTokenizer::from_dir(&component(dir, "tokenizer")?)?;
        let text_encoder = ClipTextModel::load(&component(dir, "text_encoder")?, device)?;
        let vae = AutoencoderKl::load(&component(dir, "vae")?, device)?;
        let unet = UNet2DCondition::load(&component(dir, "unet")?, device)?;
        let sd = Self {
            unet,
            text_encoder: text_encoder.no_grad(),
            vae: vae.no_grad(),
            tokenizer,
            scheduler,
            parameterization,
        };
        sd.check_consistency()?;
        Ok(sd)
    }

    fn check_consistency(&self) -> Result<()> {
        let text_width = self.text_encoder.hidden_size();
        if self.unet.cross_attention_dim() != text_width {
            return Err(ModelError::config(
                "unet.cross_attention_dim",
                format!(
                    "{} does not match the text encoder's hidden size {text_width}",
                    self.unet.cross_attention_dim()
                ),
            ));
        }
        if self.unet.in_channels() != self.vae.latent_channels() {
            return Err(ModelError::config(
                "unet.in_channels",
                format!(
                    "{} does not match the VAE's latent channels {}",
                    self.unet.in_channels(),
                    self.vae.latent_channels()
                ),
            ));
        }
        Ok(())
    }

    /// The LoRA targets of the diffusers training scripts: the UNet's attention projections
    /// `to_q`, `to_k`, `to_v`, `to_out` of the self- (`attn1`) and cross-attention (`attn2`)
    /// layers. Qualified by `attn1.` / `attn2.` because the VAE's mid-block attention has
    /// projections of the same names, which must stay frozen.
    pub fn lora_targets() -> Vec<String> {
        ["attn1", "attn2"]
            .iter()
            .flat_map(|a| {
                crate::sd::UNET_LORA_TARGETS
                    .iter()
                    .map(move |t| format!("{a}.{t}"))
            })
            .collect()
    }

    /// The token ids of `prompts`, padded to the tokenizer's `model_max_length`, `[B, L]`.
    pub fn tokenize(&self, prompts: &[String], device: &Device) -> Tensor<2, Int> {
        let len = self.tokenizer.model_max_length();
        let ids: Vec<i64> = prompts
            .iter()
            .flat_map(|p| self.tokenizer.encode_padded(p, len))
            .map(i64::from)
            .collect();
        Tensor::from_data(TensorData::new(ids, [prompts.len(), len]), device)
    }

    /// The conditions of `prompts`: the text encoder's last hidden states `[B, 77, D]`.
    ///
    /// # Errors
    /// [`ModelError::Input`] for an empty prompt list.
    pub fn encode_prompts(&self, prompts: &[String]) -> Result<Condition> {
        if prompts.is_empty() {
            return Err(ModelError::Input {
                what: "prompts".into(),
                expected: "at least one prompt".into(),
                got: "none".into(),
            });
        }
        let device = self.device();
        let ids = self.tokenize(prompts, &device);
        Ok(Condition::new(
            self.text_encoder.forward(ids).last_hidden_state,
        ))
    }

    /// The unconditional condition for classifier-free guidance: the empty prompt, `B` times
    /// (encoded once, repeated).
    ///
    /// # Errors
    /// As [`StableDiffusion::encode_prompts`]; `batch == 0`.
    pub fn encode_unconditional(&self, batch: usize) -> Result<Condition> {
        let one = self.encode_prompts(&[String::new()])?;
        Condition::cat(vec![one; batch]).map_err(|e| ModelError::Input {
            what: "unconditional batch".into(),
            expected: "at least one row".into(),
            got: e.to_string(),
        })
    }

    /// Decodes latents into images in `[−1, 1]` (unclamped, differentiable):
    /// `vae.decode(z / scaling_factor)`.
    ///
    /// # Shapes
    /// - `latents`: `[B, C_latent, h, w]`
    /// - output: `[B, 3, h·f, w·f]` with `f` the VAE's downsampling factor.
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        self.vae.decode_latents(latents)
    }

    /// Encodes images in `[−1, 1]` into latents (the posterior mean times `scaling_factor`),
    /// for preference data given as images.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]` with `H`, `W` multiples of the downsampling factor
    /// - output: `[B, C_latent, H/f, W/f]`
    pub fn encode_images(&self, images: Tensor<4>) -> Tensor<4> {
        self.vae.encode_latents(images)
    }

    /// The latent shape `[C, h, w]` of `height × width` images.
    ///
    /// # Errors
    /// [`ModelError::Input`] if a side is not a positive multiple of the VAE's factor.
    pub fn latent_shape(&self, height: usize, width: usize) -> Result<[usize; 3]> {
        let f = self.vae.downsample_factor();
        if height == 0 || width == 0 || !height.is_multiple_of(f) || !width.is_multiple_of(f) {
            return Err(ModelError::Input {
                what: "image size".into(),
                expected: format!("positive multiples of the VAE factor {f}"),
                got: format!("{height}×{width}"),
            });
        }
        Ok([self.vae.latent_channels(), height / f, width / f])
    }

    /// The default image side: the UNet's `sample_size` (64 when the config has none or a
    /// non-square one) times the VAE factor (512 for SD 1.5).
    pub fn default_image_size(&self) -> usize {
        let latent = self
            .unet
            .config()
            .sample_size
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .map_or(64, |s| s as usize);
        latent * self.vae.downsample_factor()
    }

    /// Runs `sampler` deterministically (each step's Gaussian mean; exact for DDIM η = 0)
    /// from the given initial latents with classifier-free guidance, as diffusers'
    /// `StableDiffusionPipeline` does with `eta = 0` and `latents=` passed in. For stochastic
    /// sampling with stored noise and log-probs use [`align_samplers::rollout()`].
    ///
    /// # Shapes
    /// - `latents`: `[B, C_latent, h, w]`, `prompts.len() == B`
    /// - output: the final latents `[B, C_latent, h, w]`
    ///
    /// # Errors
    /// A prompt count that does not match the batch, a sampler failure.
    pub fn sample_latents<S: Sampler + ?Sized>(
        &self,
        prompts: &[String],
        latents: Tensor<4>,
        sampler: &S,
        guidance_scale: f64,
    ) -> Result<Tensor<4>> {
        let b = latents.dims()[0];
        if prompts.len() != b {
            return Err(ModelError::Input {
                what: "prompts".into(),
                expected: format!("{b} (one per latent)"),
                got: prompts.len().to_string(),
            });
        }
        let condition = self.encode_prompts(prompts)?;
        let uncond = if guidance_scale == 1.0 {
            None
        } else {
            Some(self.encode_unconditional(b)?)
        };
        guided_sample(
            self,
            &condition,
            uncond.as_ref(),
            latents,
            sampler,
            guidance_scale,
        )
    }

    fn device(&self) -> Device {
        self.unet.devices().into_iter().next().unwrap_or_default()
    }
}

/// Runs `sampler` deterministically (each step's Gaussian mean) from `latents` with
/// classifier-free guidance `v = v_u + w (v_c − v_u)` (no unconditional pass for `w = 1`):
/// the loop of diffusers' pipelines with `latents=` passed in.
///
/// # Errors
/// A condition of another batch size, a sampler failure (named as `sampler`).
pub(crate) fn guided_sample<D: Denoiser, S: Sampler + ?Sized>(
    model: &D,
    condition: &Condition,
    uncond: Option<&Condition>,
    latents: Tensor<4>,
    sampler: &S,
    guidance_scale: f64,
) -> Result<Tensor<4>> {
    let b = latents.dims()[0];
    let device = latents.device();
    let mut x = latents;
    for k in 0..sampler.num_steps() {
        let t = Tensor::<1>::from_data(
            TensorData::new(vec![sampler.model_time(k) as f32; b], [b]),
            &device,
        );
        let out = guided_predict(model, x.clone(), t, condition, uncond, guidance_scale)
            .map_err(|e| ModelError::config("sampler", e.to_string()))?;
        x = sampler
            .step(
                k,
                x,
                out,
                model.parameterization(),
                Transition::Mean,
                align_core::LogProbReduction::Mean,
            )
            .map_err(|e| ModelError::config("sampler", e.to_string()))?
            .prev_sample;
    }
    Ok(x)
}

impl Denoiser for StableDiffusion {
    fn parameterization(&self) -> Parameterization {
        self.parameterization
    }

    /// The UNet on latents; `t` holds DDPM timesteps and the condition's context the text
    /// encoder's hidden states (its padding mask, if any, is ignored as in SD).
    fn predict(&self, x_t: Tensor<4>, t: Tensor<1>, condition: &Condition) -> Tensor<4> {
        self.unet.forward(x_t, t, condition.context.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::{fixtures_dir, max_relative_error, read_safetensors};
    use align_core::test_device;

    fn fixture() -> StableDiffusion {
        StableDiffusion::load(&fixtures_dir().join("sd-tiny"), &test_device()).expect("sd-tiny")
    }

    fn prompts() -> Vec<String> {
        vec!["two red circles".into(), "a photo of a cat".into()]
    }

    #[test]
    fn the_fixture_loads_with_sd15_scheduler_settings() {
        let sd = fixture();
        assert_eq!(sd.scheduler, SchedulerConfig::default());
        assert_eq!(sd.parameterization(), Parameterization::Epsilon);
        assert_eq!(sd.latent_shape(16, 16).unwrap(), [4, 8, 8]);
        assert_eq!(sd.default_image_size(), 16);
        assert!(sd.latent_shape(15, 16).is_err());
        let ddim = sd.scheduler.ddim(3, 0.0).unwrap();
        assert_eq!(ddim.timesteps(), &[667, 334, 1]);
    }

    #[test]
    fn prompt_conditions_match_the_text_encoder_reference() {
        let sd = fixture();
        let r = read_safetensors(&fixtures_dir().join("sd-tiny/reference.safetensors")).unwrap();
        let c = sd.encode_prompts(&prompts()).unwrap();
        let err = max_relative_error(&c.context.into_data(), &r["text.last_hidden_state"]).unwrap();
        assert!(err <= 1e-4, "rel. err {err}");
    }

    /// diffusers' `StableDiffusionPipeline` (DDIM η = 0, 3 steps, CFG 7.5, from fixed initial
    /// latents) and ours end at the same latents and the same decoded images.
    #[test]
    fn guided_ddim_sampling_matches_the_diffusers_pipeline() {
        let sd = fixture();
        let device = test_device();
        let r = read_safetensors(&fixtures_dir().join("sd-tiny/reference.safetensors")).unwrap();
        let init = Tensor::<4>::from_data(r["pipeline.init_latents"].clone(), &device);
        let sampler = sd.scheduler.ddim(3, 0.0).unwrap();
        let out = sd.sample_latents(&prompts(), init, &sampler, 7.5).unwrap();
        let err = max_relative_error(&out.clone().into_data(), &r["pipeline.latents"]).unwrap();
        eprintln!("pipeline latents rel. err {err:.2e}");
        assert!(err <= 1e-4, "latents rel. err {err}");
        let images = sd.decode(out);
        let err = max_relative_error(&images.into_data(), &r["pipeline.images"]).unwrap();
        eprintln!("pipeline images rel. err {err:.2e}");
        assert!(err <= 1e-4, "images rel. err {err}");
        // Negative check: another guidance scale ends elsewhere.
        let init = Tensor::<4>::from_data(r["pipeline.init_latents"].clone(), &device);
        let other = sd.sample_latents(&prompts(), init, &sampler, 1.0).unwrap();
        let err = max_relative_error(&other.into_data(), &r["pipeline.latents"]).unwrap();
        assert!(err > 1e-3, "CFG must matter ({err})");
    }

    /// LoRA adapts the UNet's attention only: the text encoder and the VAE (whose mid-block
    /// attention also has `to_q`/`to_k`/`to_v`/`to_out`) stay frozen.
    #[test]
    fn lora_targets_adapt_the_unet_attention_only() {
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
        let device = test_device().autodiff();
        let sd = StableDiffusion::load(&fixtures_dir().join("sd-tiny"), &device).unwrap();
        let lora = crate::LoraConfig::new()
            .with_rank(2)
            .with_targets(StableDiffusion::lora_targets());
        let sd = crate::apply_lora(sd, &lora).unwrap();
        let mut v = Trainable(Vec::new(), Vec::new());
        sd.visit(&mut v);
        assert!(!v.0.is_empty());
        for path in &v.0 {
            assert!(
                path.starts_with("unet.") && path.contains(".lora.") && path.contains(".attn"),
                "{path} is trainable"
            );
        }
        // The fixture UNet has 2 × 2 (down) + 2 × 3 (up) + 1 (mid) transformer blocks, each
        // with 8 adapted projections of 2 factors.
        assert_eq!(v.0.len(), 11 * 8 * 2);
    }

    #[test]
    fn encode_then_decode_has_the_image_shape() {
        let sd = fixture();
        let images = Tensor::<4>::zeros([1, 3, 16, 16], &test_device());
        let z = sd.encode_images(images);
        assert_eq!(z.dims(), [1, 4, 8, 8]);
        assert_eq!(sd.decode(z).dims(), [1, 3, 16, 16]);
    }

    #[test]
    fn missing_components_are_named() {
        let dir = std::env::temp_dir().join(format!("align-sd-missing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("scheduler")).unwrap();
        std::fs::copy(
            fixtures_dir().join("sd-tiny/scheduler/scheduler_config.json"),
            dir.join("scheduler/scheduler_config.json"),
        )
        .unwrap();
        let err = StableDiffusion::load(&dir, &test_device())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokenizer"), "{err}");
        let err = StableDiffusion::load(&dir.join("nope"), &test_device())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unsupported_scheduler_settings_are_refused() {
        let bad = SchedulerConfig {
            beta_schedule: "sigmoid".into(),
            ..SchedulerConfig::default()
        };
        assert!(
            bad.noise_schedule()
                .unwrap_err()
                .to_string()
                .contains("beta_schedule")
        );
        let bad = SchedulerConfig {
            prediction_type: "flow".into(),
            ..SchedulerConfig::default()
        };
        assert!(bad.parameterization().is_err());
    }
}
