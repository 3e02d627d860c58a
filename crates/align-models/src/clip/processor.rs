//! CLIP's image preprocessing as a differentiable tensor function.
//!
//! ```text
//! x₀₁ = (x + 1) / 2                       the workspace's [-1, 1] images → [0, 1]
//! x₀₁ = center square crop of x₀₁          side min(H, W); identity for square images
//! x₀₁ = bilinear resize to [S_h, S_w]      burn's interpolate, align_corners = false;
//!                                          skipped when the size already matches
//! pixel_values = (x₀₁ − mean_c) / std_c
//! ```
//!
//! transformers' `CLIPImageProcessor` resizes the shortest edge with PIL's **bicubic**
//! filter on 8-bit images and then center-crops; this module crops first and resizes
//! bilinearly on floats, so that gradients reach the pixels. Where no resize happens (images
//! already at the model's resolution) the result equals the Python processor's up to float
//! rounding; where one does, it is close but **not bit-exact**.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use serde_json::Value;

use crate::error::{ModelError, Result};

/// OpenAI CLIP's per-channel mean (transformers' `OPENAI_CLIP_MEAN`).
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel std (transformers' `OPENAI_CLIP_STD`, 0.26862954,
/// 0.26130258, 0.27577711, as `f32`).
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Resizes and normalises images for a CLIP vision tower (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipImageProcessor {
    /// Output `[height, width]` (the model's square input size).
    pub size: [usize; 2],
    /// Per-channel mean, subtracted from `[0, 1]` pixels.
    pub image_mean: [f32; 3],
    /// Per-channel std, dividing the centred pixels.
    pub image_std: [f32; 3],
}

impl Default for ClipImageProcessor {
    /// CLIP's defaults: 224 × 224, OpenAI's mean and std.
    fn default() -> Self {
        Self::new(224)
    }
}

impl ClipImageProcessor {
    /// A processor for `side × side` inputs with OpenAI's mean and std.
    pub fn new(side: usize) -> Self {
        Self {
            size: [side, side],
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
        }
    }

    /// Reads `dir/preprocessor_config.json` (transformers' `CLIPImageProcessor` file):
    /// `crop_size` (an int or `{height, width}`; used when `do_center_crop` is not false),
    /// else `size` (an int, `{shortest_edge}` or `{height, width}`), `image_mean`,
    /// `image_std`. Missing fields, or a missing file, take CLIP's defaults (224, OpenAI's
    /// statistics).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] if the file exists but is not valid JSON, or a field has the
    /// wrong form (a mean/std that is not 3 numbers, a size that is not a positive integer).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        if !path.is_file() {
            return Ok(Self::default());
        }
        let json: Value = crate::hf::read_config(&path)?;
        let fail = |field: &str, got: &Value| ModelError::Checkpoint {
            path: path.display().to_string(),
            reason: format!("invalid `{field}`: {got}"),
        };
        let size_of = |field: &str, v: &Value| -> Result<Option<[usize; 2]>> {
            let int = |v: &Value| v.as_u64().filter(|&n| n > 0).map(|n| n as usize);
            match v {
                Value::Null => Ok(None),
                Value::Number(_) => int(v).map(|n| Some([n, n])).ok_or_else(|| fail(field, v)),
                Value::Object(map) => {
                    if let (Some(h), Some(w)) = (map.get("height"), map.get("width")) {
                        match (int(h), int(w)) {
                            (Some(h), Some(w)) => Ok(Some([h, w])),
                            _ => Err(fail(field, v)),
                        }
                    } else if let Some(s) = map.get("shortest_edge") {
                        int(s).map(|n| Some([n, n])).ok_or_else(|| fail(field, v))
                    } else {
                        Err(fail(field, v))
                    }
                }
                _ => Err(fail(field, v)),
            }
        };
        let stats = |field: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match json.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => {
                    let values: Option<Vec<f32>> = v.as_array().map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_f64())
                            .map(|x| x as f32)
                            .collect()
                    });
                    match values.as_deref() {
                        Some(&[a, b, c]) => Ok([a, b, c]),
                        _ => Err(fail(field, v)),
                    }
                }
            }
        };
        let crop = json.get("do_center_crop").and_then(Value::as_bool) != Some(false);
        let crop_size = if crop {
            size_of("crop_size", json.get("crop_size").unwrap_or(&Value::Null))?
        } else {
            None
        };
        let size = match crop_size {
            Some(s) => s,
            None => {
                size_of("size", json.get("size").unwrap_or(&Value::Null))?.unwrap_or([224, 224])
            }
        };
        let image_mean = stats("image_mean", OPENAI_CLIP_MEAN)?;
        let image_std = stats("image_std", OPENAI_CLIP_STD)?;
        if image_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(fail("image_std", &json["image_std"]));
        }
        Ok(Self {
            size,
            image_mean,
            image_std,
        })
    }

    /// Maps `[-1, 1]` images to the vision tower's normalised input (differentiable).
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]` in `[-1, 1]`; output `[B, 3, S_h, S_w]`.
    ///
    /// # Panics
    /// If `images` does not have 3 channels.
    pub fn preprocess(&self, images: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = images.dims();
        let device = images.device();
        let x = (images + 1.0) * 0.5;
        let side = h.min(w);
        let (top, left) = ((h - side) / 2, (w - side) / 2);
        let x = if side == h && side == w {
            x
        } else {
            x.slice([0..b, 0..c, top..top + side, left..left + side])
        };
        let x = if [side, side] == self.size {
            x
        } else {
            interpolate(
                x,
                InterpolateOptions::new(InterpolateMode::Bilinear)
                    .with_align_corners(false)
                    .with_output_size(self.size),
            )
        };
        let [sh, sw] = self.size;
        let stat = |v: [f32; 3]| {
            Tensor::<1>::from_floats(v, &device)
                .reshape([1, 3, 1, 1])
                .expand([b, c, sh, sw])
        };
        (x - stat(self.image_mean)) / stat(self.image_std)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::test_util::{assert_close, fixture, floats, get, references};

    #[test]
    fn reads_the_fixture_config_and_defaults() {
        let p =
            ClipImageProcessor::from_dir(&fixture("clip-tiny")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.size, [32, 32]);
        assert_eq!(p.image_mean, OPENAI_CLIP_MEAN);
        let d = ClipImageProcessor::from_dir(&fixture("nowhere")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d, ClipImageProcessor::default());
        assert_eq!(d.size, [224, 224]);
    }

    #[test]
    fn preprocess_matches_transformers_and_is_differentiable() {
        let device = align_core::test_device().autodiff();
        let p =
            ClipImageProcessor::from_dir(&fixture("clip-tiny")).unwrap_or_else(|e| panic!("{e}"));
        let refs = references("clip-tiny");
        let images01: Tensor<4> = floats(&get(&refs, "images01"), &device);
        let images = (images01 * 2.0 - 1.0).require_grad();
        assert_close(
            "pixel_values",
            p.preprocess(images.clone()),
            &get(&refs, "pixel_values"),
            1e-5,
        );
        // A non-square, larger image: cropped, resized, and gradients reach every kept pixel.
        let big = Tensor::<4>::ones([1, 3, 40, 48], &device).require_grad();
        let out = p.preprocess(big.clone());
        assert_eq!(out.dims(), [1, 3, 32, 32]);
        let grads = out.sum().backward();
        let g = big.grad(&grads).unwrap_or_else(|| panic!("no gradient"));
        let g: Vec<f32> = g.into_data().iter::<f32>().collect();
        // Columns 0..4 and 44..48 are cropped away; the centre columns receive gradient.
        assert_eq!(g[0], 0.0);
        assert!(g[20] > 0.0);
        let grads = p.preprocess(images.clone()).sum().backward();
        assert!(images.grad(&grads).is_some());
    }
}
