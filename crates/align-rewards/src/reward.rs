//! The [`Reward`] trait: `r(x, c) ∈ ℝ` for an image batch `x: [B, 3, H, W]` and `B` prompts `c`.
//!
//! Images are `Tensor<4>` of shape `[B, 3, H, W]` with values in **`[-1, 1]`** (the output
//! range of the samplers; `-1` is black, `1` full intensity). A reward returns one finite
//! score `r_b = r(x_b, c_b)` per image; a differentiable reward can also return the scores as
//! a `[B]` tensor whose gradient `∂r_b/∂x_b` reaches the pixels.
//!
//! The helpers here convert between tensors and host-side [`align_data::Image`]s (`CHW`,
//! `f32` in `[-1, 1]`) and validate the common contract.

use align_data::Image;
use burn::prelude::*;

use crate::error::{Result, RewardError};

/// A reward on generated images, conditioned on their prompts.
///
/// # Input convention
/// `images` is `[B, 3, H, W]` with values in `[-1, 1]`; `prompts.len() == B`.
///
/// # Errors
/// Implementations return [`RewardError::PromptCount`] when `prompts.len() != B`,
/// [`RewardError::Shape`] when the channel count is not 3 (or a dimension is zero), and
/// [`RewardError::NonFinite`] when a score is NaN or infinite.
pub trait Reward {
    /// Short name of the reward, e.g. `"jpeg_incompressibility"`.
    fn name(&self) -> &str;

    /// Native range of the score, for humans (e.g. `"[0, 1]"`, `"kB, negated"`).
    fn scale(&self) -> &str;

    /// One score per image.
    ///
    /// # Errors
    /// Batch/prompt count mismatch, wrong channel count, non-finite scores, or a
    /// reward-specific failure (an unparseable prompt, an encoder error).
    fn score(&self, images: &Tensor<4>, prompts: &[String]) -> Result<Vec<f64>>;

    /// Differentiable score `[B]` with gradients to the pixels, if this reward has one.
    ///
    /// `None` means the reward is not differentiable; `Some(Err(_))` that it is but the
    /// input is invalid.
    fn score_differentiable(
        &self,
        images: Tensor<4>,
        prompts: &[String],
    ) -> Option<Result<Tensor<1>>> {
        let _ = (images, prompts);
        None
    }
}

/// Validates the common input contract and returns `[B, 3, H, W]`.
///
/// # Errors
/// [`RewardError::Shape`] if a dimension is zero or the channel count is not 3;
/// [`RewardError::PromptCount`] if `prompts.len() != B`.
pub fn check_batch(reward: &str, images: &Tensor<4>, prompts: &[String]) -> Result<[usize; 4]> {
    let dims = images.dims();
    if dims[1] != align_data::raster::CHANNELS {
        return Err(RewardError::shape(
            format!("images of reward `{reward}`"),
            "[B, 3, H, W] (3 channels)",
            format!("{dims:?}"),
        ));
    }
    if dims.contains(&0) {
        return Err(RewardError::shape(
            format!("images of reward `{reward}`"),
            "no zero dimension",
            format!("{dims:?}"),
        ));
    }
    if prompts.len() != dims[0] {
        return Err(RewardError::PromptCount {
            reward: reward.to_string(),
            batch: dims[0],
            prompts: prompts.len(),
        });
    }
    Ok(dims)
}

/// Returns an error naming the first non-finite score, if any.
///
/// # Errors
/// [`RewardError::NonFinite`] for the first NaN or infinite score.
pub fn check_finite(reward: &str, scores: &[f64]) -> Result<()> {
    match scores.iter().position(|s| !s.is_finite()) {
        None => Ok(()),
        Some(index) => Err(RewardError::NonFinite {
            reward: reward.to_string(),
            what: "score".into(),
            index,
            value: scores[index],
        }),
    }
}

/// Reads a `[B]` score tensor back to the host as `f64`, checking that every score is finite.
///
/// # Errors
/// [`RewardError::Readback`] if the backend cannot read the tensor;
/// [`RewardError::NonFinite`] for a NaN or infinite score.
pub fn read_scores(reward: &str, scores: Tensor<1>) -> Result<Vec<f64>> {
    let values = scores
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| RewardError::Readback {
            what: format!("scores of `{reward}`"),
            reason: format!("{e:?}"),
        })?;
    let scores: Vec<f64> = values.into_iter().map(f64::from).collect();
    check_finite(reward, &scores)?;
    Ok(scores)
}

/// Copies a batch `[B, 3, H, W]` (values in `[-1, 1]`) to `B` host-side [`Image`]s (`CHW`).
///
/// # Errors
/// [`RewardError::Shape`] if the channel count is not 3 or a dimension is zero;
/// [`RewardError::Readback`] if the backend cannot read the tensor.
pub fn tensor_to_images(images: &Tensor<4>) -> Result<Vec<Image>> {
    let [b, c, h, w] = images.dims();
    if c != align_data::raster::CHANNELS || b * h * w == 0 {
        return Err(RewardError::shape(
            "image batch",
            "[B, 3, H, W] with no zero dimension",
            format!("{:?}", [b, c, h, w]),
        ));
    }
    let values = images
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| RewardError::Readback {
            what: "image batch".into(),
            reason: format!("{e:?}"),
        })?;
    let per = c * h * w;
    values
        .chunks_exact(per)
        .map(|chunk| Image::from_chw(w, h, chunk.to_vec()).map_err(RewardError::from))
        .collect()
}

/// Stacks host-side [`Image`]s (all the same size) into a `[B, 3, H, W]` tensor.
///
/// # Errors
/// [`RewardError::Shape`] if `images` is empty, the sizes differ, or an image's buffer does
/// not hold `3 · H · W` values.
pub fn images_to_tensor(images: &[Image], device: &Device) -> Result<Tensor<4>> {
    let first = images
        .first()
        .ok_or_else(|| RewardError::shape("images", "at least one image", 0))?;
    let (w, h) = (first.width, first.height);
    let per = align_data::raster::CHANNELS * w * h;
    let mut values = Vec::with_capacity(per * images.len());
    for (i, image) in images.iter().enumerate() {
        if image.width != w || image.height != h || image.data.len() != per {
            return Err(RewardError::shape(
                format!("image {i}"),
                format!("{w}x{h} with {per} values"),
                format!(
                    "{}x{} with {} values",
                    image.width,
                    image.height,
                    image.data.len()
                ),
            ));
        }
        values.extend_from_slice(&image.data);
    }
    let data = TensorData::new(values, [images.len(), align_data::raster::CHANNELS, h, w]);
    Ok(Tensor::from_data(data, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip_through_a_tensor() {
        let device = align_core::test_device();
        let a = Image::filled(4, 3, [0, 128, 255]);
        let b = Image::filled(4, 3, [10, 20, 30]);
        let t = images_to_tensor(&[a.clone(), b.clone()], &device).unwrap();
        assert_eq!(t.dims(), [2, 3, 3, 4]);
        let back = tensor_to_images(&t).unwrap();
        assert_eq!(back, vec![a, b]);
    }

    #[test]
    fn mismatched_sizes_are_rejected() {
        let device = align_core::test_device();
        let a = Image::filled(4, 3, [0, 0, 0]);
        let b = Image::filled(3, 4, [0, 0, 0]);
        assert!(matches!(
            images_to_tensor(&[a, b], &device),
            Err(RewardError::Shape { .. })
        ));
        assert!(images_to_tensor(&[], &device).is_err());
    }

    #[test]
    fn non_finite_scores_are_named() {
        let err = check_finite("r", &[0.0, f64::NAN]).unwrap_err();
        assert!(matches!(err, RewardError::NonFinite { index: 1, .. }));
    }
}
