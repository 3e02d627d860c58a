//! A text-to-image pipeline: what a training job needs from a model besides
//! [`Denoiser::predict`].
//!
//! A [`Pipeline`] is a [`Denoiser`] over samples of shape `[C, h, w]` (pixels for the Shapes
//! models, VAE latents for Stable Diffusion) that also turns prompts into the
//! [`Condition`]s it cross-attends to and final samples into images. The online job of
//! `align-train` is written against this trait alone, so it serves the Shapes models
//! ([`TextToImage`]), [`crate::StableDiffusion`] and any model a user brings.

use align_core::{Condition, Denoiser};
use align_data::Tokenizer;
use burn::module::{Module, ModuleDisplay};
use burn::tensor::Tensor;

use crate::error::{ModelError, Result};
use crate::shapes::TextToImage;

/// A text-conditioned denoiser with its prompt encoder and image decoder.
pub trait Pipeline: Module + Denoiser {
    /// The conditions of `prompts` and, for classifier-free guidance, the unconditional
    /// (null-prompt) conditions of the same batch size.
    ///
    /// # Errors
    /// A prompt the tokenizer refuses, or an empty batch.
    fn prompt_conditions(&self, prompts: &[String]) -> Result<(Condition, Condition)>;

    /// Images `[B, 3, H, W]` (nominally in `[−1, 1]`; callers clamp before saving or scoring)
    /// of final samples `[B, C, h, w]`. Differentiable, so rewards can be backpropagated.
    fn sample_images(&self, samples: Tensor<4>) -> Tensor<4>;

    /// The shape `[C, h, w]` of one sample for square images of `image_size` pixels.
    ///
    /// # Errors
    /// A size the model cannot produce.
    fn sample_shape(&self, image_size: usize) -> Result<[usize; 3]>;
}

/// The Shapes models: samples are pixels, prompts go through the world's [`Tokenizer`].
impl<D: Module + ModuleDisplay + Denoiser> Pipeline for TextToImage<D> {
    fn prompt_conditions(&self, prompts: &[String]) -> Result<(Condition, Condition)> {
        if prompts.is_empty() {
            return Err(ModelError::Input {
                what: "prompts".into(),
                expected: "at least one prompt".into(),
                got: "none".into(),
            });
        }
        let tok = Tokenizer::new();
        let rows = prompts
            .iter()
            .map(|p| {
                tok.encode(p).map_err(|e| ModelError::Input {
                    what: format!("prompt `{p}`"),
                    expected: "a prompt of the Shapes world".into(),
                    got: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let device = self.text.devices()[0].clone();
        let null = vec![tok.null_prompt(); prompts.len()];
        Ok((self.encode(&rows, &device)?, self.encode(&null, &device)?))
    }

    /// The samples are the images: clamped to `[−1, 1]`.
    fn sample_images(&self, samples: Tensor<4>) -> Tensor<4> {
        samples.clamp(-1.0, 1.0)
    }

    fn sample_shape(&self, image_size: usize) -> Result<[usize; 3]> {
        if image_size == 0 {
            return Err(ModelError::config("image_size", "must be at least 1"));
        }
        Ok([3, image_size, image_size])
    }
}

/// Stable Diffusion: samples are VAE latents (`z = s·E(x)`), decoded by the VAE; the
/// unconditional condition is the empty prompt's, as diffusers builds it.
impl Pipeline for crate::StableDiffusion {
    fn prompt_conditions(&self, prompts: &[String]) -> Result<(Condition, Condition)> {
        Ok((
            self.encode_prompts(prompts)?,
            self.encode_unconditional(prompts.len())?,
        ))
    }

    /// `D(z / s)`, not clamped (gradients pass).
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
    use crate::{DenoiserKind, Preset, ShapesModel, ShapesModelConfig};

    #[test]
    fn shapes_conditions_match_the_tokenizer_and_images_are_clamped() {
        let device = align_core::test_device();
        let tok = Tokenizer::new();
        let config = ShapesModelConfig::preset(
            DenoiserKind::Dit,
            Preset::Tiny,
            tok.vocab_size(),
            tok.max_len(),
        );
        let ShapesModel::Dit(m) = config.init(&device).unwrap() else {
            panic!("a DiT");
        };
        let prompts = vec!["two red circles".to_string(), "one blue square".to_string()];
        let (c, u) = m.prompt_conditions(&prompts).unwrap();
        let rows: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p).unwrap()).collect();
        let want = m.encode(&rows, &device).unwrap();
        let host = |c: &Condition| c.context.clone().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(host(&c), host(&want));
        let null = m.encode(&vec![tok.null_prompt(); 2], &device).unwrap();
        assert_eq!(host(&u), host(&null));
        let err = m
            .prompt_conditions(&["two purple circles".into()])
            .unwrap_err();
        assert!(err.to_string().contains("purple"), "{err}");
        assert!(m.prompt_conditions(&[]).is_err());
        let x = Tensor::<4>::from_floats([[[[-3.0, 0.5], [2.0, -0.25]]]], &device);
        let img = m.sample_images(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(img, vec![-1.0, 0.5, 1.0, -0.25]);
        assert_eq!(m.sample_shape(16).unwrap(), [3, 16, 16]);
        assert!(m.sample_shape(0).is_err());
    }
}
