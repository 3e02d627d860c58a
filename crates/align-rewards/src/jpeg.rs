//! [`Jpeg`]: DDPO's JPEG compressibility and incompressibility rewards.
//!
//! Each image is quantised to 8 bits, `u = clamp(round((x + 1) / 2 · 255), 0, 255)`, encoded
//! as a baseline JPEG at quality 95 with the `image` crate, and scored by its size
//! `s = bytes / 1000` in kB:
//!
//! - incompressibility: `r = s` (reward detail and noise);
//! - compressibility: `r = −s` (reward flat, simple images).
//!
//! Prompts are ignored (their count is still checked). Not differentiable.

use burn::prelude::*;
use image::ExtendedColorType;
use image::codecs::jpeg::JpegEncoder;

use crate::error::{Result, RewardError};
use crate::reward::{Reward, check_batch, check_finite};

/// JPEG quality used by DDPO's compressibility rewards.
pub const JPEG_QUALITY: u8 = 95;

/// DDPO's JPEG size reward, in kB (1 kB = 1000 bytes), optionally negated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jpeg {
    negate: bool,
}

impl Jpeg {
    /// `r = −size_kB`: smaller files are better.
    pub fn compressibility() -> Self {
        Self { negate: true }
    }

    /// `r = size_kB`: larger files are better.
    pub fn incompressibility() -> Self {
        Self { negate: false }
    }

    /// Whether the size is negated (compressibility).
    pub fn is_compressibility(&self) -> bool {
        self.negate
    }
}

/// Quantises one `CHW` image in `[-1, 1]` to interleaved 8-bit RGB (`HWC`):
/// `u = clamp(round((x + 1) / 2 · 255), 0, 255)`.
///
/// Returns `Err(value)` with the first non-finite pixel.
fn quantise_hwc(chw: &[f32], h: usize, w: usize) -> std::result::Result<Vec<u8>, f32> {
    let plane = h * w;
    let mut out = Vec::with_capacity(3 * plane);
    for p in 0..plane {
        for c in 0..3 {
            let x = chw[c * plane + p];
            if !x.is_finite() {
                return Err(x);
            }
            // Clamped to [0, 255] first, so the cast is exact.
            out.push(((x + 1.0) / 2.0 * 255.0).round().clamp(0.0, 255.0) as u8);
        }
    }
    Ok(out)
}

/// Size in bytes of `rgb` (interleaved, `w × h`) encoded as JPEG at [`JPEG_QUALITY`].
fn jpeg_size(rgb: &[u8], w: u32, h: u32) -> std::result::Result<usize, String> {
    let mut buffer = Vec::new();
    JpegEncoder::new_with_quality(&mut buffer, JPEG_QUALITY)
        .encode(rgb, w, h, ExtendedColorType::Rgb8)
        .map_err(|e| e.to_string())?;
    Ok(buffer.len())
}

impl Reward for Jpeg {
    fn name(&self) -> &str {
        if self.negate {
            "jpeg_compressibility"
        } else {
            "jpeg_incompressibility"
        }
    }

    fn scale(&self) -> &str {
        if self.negate {
            "kB, negated (≤ 0)"
        } else {
            "kB (≥ 0)"
        }
    }

    fn score(&self, images: &Tensor<4>, prompts: &[String]) -> Result<Vec<f64>> {
        let [_, c, h, w] = check_batch(self.name(), images, prompts)?;
        let too_large = |what: &str, v: usize| RewardError::Encode {
            reward: self.name().to_string(),
            index: 0,
            reason: format!("{what} {v} exceeds the JPEG limit of 65535"),
        };
        let wu = u32::try_from(w)
            .ok()
            .filter(|&v| v <= 65535)
            .ok_or_else(|| too_large("width", w))?;
        let hu = u32::try_from(h)
            .ok()
            .filter(|&v| v <= 65535)
            .ok_or_else(|| too_large("height", h))?;
        let values = images
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| RewardError::Readback {
                what: format!("images of `{}`", self.name()),
                reason: format!("{e:?}"),
            })?;
        let sign = if self.negate { -1.0 } else { 1.0 };
        let scores = values
            .chunks_exact(c * h * w)
            .enumerate()
            .map(|(index, chw)| {
                let rgb = quantise_hwc(chw, h, w).map_err(|value| RewardError::NonFinite {
                    reward: self.name().to_string(),
                    what: "pixel".into(),
                    index,
                    value: f64::from(value),
                })?;
                let bytes = jpeg_size(&rgb, wu, hu).map_err(|reason| RewardError::Encode {
                    reward: self.name().to_string(),
                    index,
                    reason,
                })?;
                // Sizes are far below 2^53, so the conversion is exact.
                Ok(sign * bytes as f64 / 1000.0)
            })
            .collect::<Result<Vec<f64>>>()?;
        check_finite(self.name(), &scores)?;
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_matches_the_ddpo_formula() {
        // 1 pixel, channels R=-1, G=0, B=1 → 0, 128 (127.5 rounds away from zero), 255.
        assert_eq!(quantise_hwc(&[-1.0, 0.0, 1.0], 1, 1), Ok(vec![0, 128, 255]));
        assert_eq!(quantise_hwc(&[-3.0, 2.0, 0.5], 1, 1), Ok(vec![0, 255, 191]));
        assert!(quantise_hwc(&[f32::NAN, 0.0, 0.0], 1, 1).is_err());
    }
}
