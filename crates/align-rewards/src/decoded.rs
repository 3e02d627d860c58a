//! [`VaeDecoded`]: any image reward applied to the latents of a latent diffusion model.
//!
//! Latent models (Stable Diffusion) end their trajectories in the VAE's latent space; rewards
//! judge pixels. `VaeDecoded { model, reward }` decodes `x = D(z / s)` with the model's VAE and
//! scores `r(x, c)`; its differentiable path is `r ∘ D`, so `∂r/∂z` reaches the latents
//! (the reward-backprop line differentiates through the decoder, as DRaFT and AlignProp do).
//!
//! Unlike other rewards, its input is a latent batch `[B, C_latent, h, w]`, not images.

use align_models::StableDiffusion;
use burn::prelude::*;

use crate::error::{Result, RewardError};
use crate::reward::Reward;

/// An image reward on the decoded latents of a [`StableDiffusion`] pipeline.
pub struct VaeDecoded<'a, R: Reward> {
    /// The pipeline whose VAE decodes.
    pub model: &'a StableDiffusion,
    /// The reward on the decoded images.
    pub reward: R,
}

impl<R: Reward> VaeDecoded<'_, R> {
    fn decode(&self, latents: Tensor<4>) -> Result<Tensor<4>> {
        let dims = latents.dims();
        let channels = self.model.vae.latent_channels();
        if dims[1] != channels || dims.contains(&0) {
            return Err(RewardError::shape(
                format!("latents of reward `{}`", self.reward.name()),
                format!("[B, {channels}, h, w] with no zero dimension"),
                format!("{dims:?}"),
            ));
        }
        Ok(self.model.decode(latents))
    }
}

impl<R: Reward> Reward for VaeDecoded<'_, R> {
    fn name(&self) -> &str {
        self.reward.name()
    }

    fn scale(&self) -> &str {
        self.reward.scale()
    }

    /// Scores decoded latents (the images are clamped to `[−1, 1]` first, as when they are
    /// saved).
    fn score(&self, latents: &Tensor<4>, prompts: &[String]) -> Result<Vec<f64>> {
        let images = self.decode(latents.clone())?.clamp(-1.0, 1.0);
        self.reward.score(&images, prompts)
    }

    /// `r(D(z / s), c)` with gradients to the latents (not clamped, so gradients pass).
    fn score_differentiable(
        &self,
        latents: Tensor<4>,
        prompts: &[String],
    ) -> Option<Result<Tensor<1>>> {
        match self.decode(latents) {
            Ok(images) => self.reward.score_differentiable(images, prompts),
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_core::test_device;
    use align_models::hf::fixtures_dir;

    /// Mean brightness: a differentiable reward with a known gradient.
    struct Brightness;
    impl Reward for Brightness {
        fn name(&self) -> &str {
            "brightness"
        }
        fn scale(&self) -> &str {
            "[-1, 1]"
        }
        fn score(&self, images: &Tensor<4>, _prompts: &[String]) -> Result<Vec<f64>> {
            let b = images.dims()[0];
            crate::reward::read_scores(
                "brightness",
                images
                    .clone()
                    .reshape([b as i32, -1])
                    .mean_dim(1)
                    .squeeze_dim(1),
            )
        }
        fn score_differentiable(
            &self,
            images: Tensor<4>,
            _prompts: &[String],
        ) -> Option<Result<Tensor<1>>> {
            let b = images.dims()[0];
            Some(Ok(images
                .reshape([b as i32, -1])
                .mean_dim(1)
                .squeeze_dim(1)))
        }
    }

    #[test]
    fn decoded_rewards_score_latents_and_pass_gradients_to_them() {
        let device = test_device().autodiff();
        let sd = StableDiffusion::load(&fixtures_dir().join("sd-tiny"), &device).unwrap();
        let reward = VaeDecoded {
            model: &sd,
            reward: Brightness,
        };
        let prompts = vec!["a".to_string(), "b".to_string()];
        let z = Tensor::<4>::random(
            [2, 4, 8, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        )
        .require_grad();
        let direct = Brightness
            .score(&sd.decode(z.clone()).clamp(-1.0, 1.0), &prompts)
            .unwrap();
        assert_eq!(reward.score(&z, &prompts).unwrap(), direct);
        let r = reward
            .score_differentiable(z.clone(), &prompts)
            .unwrap()
            .unwrap();
        let grads = r.sum().backward();
        let g = z.grad(&grads).unwrap();
        let norm: f32 = g.abs().sum().into_scalar();
        assert!(norm > 0.0);
        // Images instead of latents are refused with the expected shape.
        let images = Tensor::<4>::zeros([2, 3, 16, 16], &device);
        let err = reward.score(&images, &prompts).unwrap_err().to_string();
        assert!(err.contains("[B, 4, h, w]"), "{err}");
    }
}
