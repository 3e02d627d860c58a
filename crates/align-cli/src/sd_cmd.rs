//! `align sample --sd <dir>` / `--sd3 <dir>`: Stable Diffusion 1.x and 3 / 3.5 directories
//! (diffusers layout) on disk.

use std::path::Path;

use align_models::sd3::{Sd3Options, StableDiffusion3};
use align_models::{Pipeline, StableDiffusion};
use align_samplers::{RolloutBatch, RolloutConfig, Sampler, rollout};
use burn::module::Module;
use burn::prelude::*;

use align_train::images::{tensor_to_images, write_grid};

/// Options of `align sample --sd`.
#[derive(Debug, Clone)]
pub struct SdSampleOptions {
    /// Images.
    pub n: usize,
    /// DDIM steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// DDIM η (0 = deterministic).
    pub eta: f64,
    /// Image side in pixels (0 = the model's default, 512 for SD 1.5).
    pub size: usize,
    /// Seed of the initial noise.
    pub seed: u64,
}

/// Samples `n` images of `prompt` from a Stable Diffusion directory and writes a PNG grid.
///
/// # Errors
/// One line naming the file or option at fault: a directory that does not load, an image size
/// the VAE cannot produce, a sampler failure, an unwritable output.
pub fn sample(
    dir: &Path,
    prompt: &str,
    out: &Path,
    options: &SdSampleOptions,
    device: &Device,
) -> Result<(), String> {
    let sd = StableDiffusion::load(dir, device).map_err(|e| e.to_string())?;
    sample_from(sd, prompt, out, options)
}

/// [`sample`] for a loaded pipeline (a run's trained model, `align sample --run`).
///
/// # Errors
/// As [`sample`].
pub fn sample_from(
    sd: StableDiffusion,
    prompt: &str,
    out: &Path,
    options: &SdSampleOptions,
) -> Result<(), String> {
    let sd = sd.no_grad();
    let size = if options.size == 0 {
        sd.default_image_size()
    } else {
        options.size
    };
    let shape = sd
        .latent_shape(size, size)
        .map_err(|e| format!("--size: {e}"))?;
    let sampler = sd
        .scheduler
        .ddim(options.steps, options.eta)
        .map_err(|e| format!("--steps/--eta: {e}"))?;
    write_samples(&sd, &sampler, shape, prompt, out, options)
}

/// `align sample --sd3 <dir>`: an SD3 / SD3.5 directory, Euler on its flow-match sigmas
/// (`options.steps`; `options.eta` must be 0), without T5 when `no_t5`.
///
/// # Errors
/// As [`sample`], and `--eta` (SD3 samples with the deterministic Euler ODE).
pub fn sample_sd3(
    dir: &Path,
    prompt: &str,
    out: &Path,
    options: &SdSampleOptions,
    no_t5: bool,
    device: &Device,
) -> Result<(), String> {
    if options.eta != 0.0 {
        return Err(
            "--eta: SD3 samples with the deterministic flow Euler sampler; leave --eta out".into(),
        );
    }
    let sd3_options = Sd3Options {
        text_encoder_3: !no_t5,
        ..Sd3Options::default()
    };
    let sd3 = StableDiffusion3::load_with(dir, &sd3_options, device).map_err(|e| e.to_string())?;
    sample_sd3_from(sd3, prompt, out, options)
}

/// [`sample_sd3`] for a loaded pipeline (a run's trained model, `align sample --run`).
///
/// # Errors
/// As [`sample_sd3`].
pub fn sample_sd3_from(
    sd3: StableDiffusion3,
    prompt: &str,
    out: &Path,
    options: &SdSampleOptions,
) -> Result<(), String> {
    if options.eta != 0.0 {
        return Err(
            "--eta: SD3 samples with the deterministic flow Euler sampler; leave --eta out".into(),
        );
    }
    let sd3 = sd3.no_grad();
    let size = if options.size == 0 {
        sd3.default_image_size()
    } else {
        options.size
    };
    let shape = sd3
        .latent_shape(size, size)
        .map_err(|e| format!("--size: {e}"))?;
    let sampler = sd3
        .euler(options.steps)
        .map_err(|e| format!("--steps: {e}"))?;
    write_samples(&sd3, &sampler, shape, prompt, out, options)
}

/// Samples `options.n` images of `prompt` from a pipeline with CFG and writes the grid.
fn write_samples<P: Pipeline, S: Sampler>(
    pipeline: &P,
    sampler: &S,
    shape: [usize; 3],
    prompt: &str,
    out: &Path,
    options: &SdSampleOptions,
) -> Result<(), String> {
    let n = options.n.max(1);
    let prompts = vec![prompt.to_string(); n];
    let (condition, uncond) = pipeline
        .prompt_conditions(&prompts)
        .map_err(|e| e.to_string())?;
    let trajectory = rollout(
        pipeline,
        sampler,
        &RolloutBatch {
            condition: &condition,
            uncond: (options.guidance != 1.0).then_some(&uncond),
            sample_ids: (0..n as u64).collect(),
            condition_ids: vec![0; n],
            group_ids: None,
            sample_shape: shape,
        },
        &RolloutConfig {
            seed: options.seed,
            guidance_scale: options.guidance,
            ..RolloutConfig::default()
        },
    )
    .map_err(|e| format!("sampling: {e}"))?;
    let latents = trajectory
        .latents
        .last()
        .cloned()
        .ok_or_else(|| "sampling produced no latents".to_string())?;
    let images = tensor_to_images(pipeline.sample_images(latents).clamp(-1.0, 1.0))
        .map_err(|e| e.to_string())?;
    write_grid(&images, 4, out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_models::hf::fixtures_dir;

    fn options() -> SdSampleOptions {
        SdSampleOptions {
            n: 2,
            steps: 3,
            guidance: 7.5,
            eta: 0.0,
            size: 0,
            seed: 1,
        }
    }

    #[test]
    fn samples_a_grid_from_the_tiny_sd_fixture() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-sd-sample-{}", std::process::id()));
        let out = dir.join("grid.png");
        sample(
            &fixtures_dir().join("sd-tiny"),
            "two red circles",
            &out,
            &options(),
            &device,
        )
        .unwrap();
        let grid = image::open(&out).unwrap();
        // Two 16×16 images side by side with 1-pixel gutters.
        assert_eq!((grid.width(), grid.height()), (35, 18));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn samples_a_grid_from_the_tiny_sd3_pipeline_with_and_without_t5() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-sd3-sample-{}", std::process::id()));
        let pipe = fixtures_dir().join("sd3-tiny-pipeline");
        for no_t5 in [false, true] {
            let out = dir.join(format!("grid-{no_t5}.png"));
            sample_sd3(&pipe, "a photo of a cat", &out, &options(), no_t5, &device).unwrap();
            let grid = image::open(&out).unwrap();
            assert_eq!((grid.width(), grid.height()), (35, 18));
        }
        let a = image::open(dir.join("grid-false.png")).unwrap();
        let b = image::open(dir.join("grid-true.png")).unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes(), "T5 changes the condition");
        let mut o = options();
        o.eta = 0.5;
        let err = sample_sd3(&pipe, "a cat", &dir.join("x.png"), &o, false, &device).unwrap_err();
        assert!(err.starts_with("--eta"), "{err}");
        let mut o = options();
        o.size = 18;
        let err = sample_sd3(&pipe, "a cat", &dir.join("x.png"), &o, false, &device).unwrap_err();
        assert!(err.starts_with("--size"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_sizes_and_directories_are_named() {
        let device = align_core::test_device();
        let out = std::env::temp_dir().join("align-sd-never.png");
        let sd = fixtures_dir().join("sd-tiny");
        let mut o = options();
        o.size = 15;
        let err = sample(&sd, "x", &out, &o, &device).unwrap_err();
        assert!(err.contains("--size") && err.contains("multiples"), "{err}");
        let mut o = options();
        o.steps = 5000;
        let err = sample(&sd, "x", &out, &o, &device).unwrap_err();
        assert!(err.contains("--steps"), "{err}");
        let err = sample(&sd.join("unet"), "x", &out, &options(), &device).unwrap_err();
        assert!(err.contains("scheduler"), "{err}");
        assert!(!out.exists());
    }
}
