//! Differentiable aesthetic proxies on pixels mapped to `[0, 1]` by `p = (x + 1) / 2`.
//!
//! For one image with `N = H · W` pixels and channels `R, G, B` of `p`:
//!
//! - [`Brightness`]: `r = (1 / 3N) Σ_{c,i} p_{c,i}` (mean of RGB);
//! - [`Saturation`]: `r = (1 / N) Σ_i (max(R_i, G_i, B_i) − min(R_i, G_i, B_i))`;
//! - [`Contrast`]: `r = sqrt(Var_i(Y_i) + 10⁻¹²)` with luminance
//!   `Y = 0.299 R + 0.587 G + 0.114 B` and the population variance over pixels (the `10⁻¹²`
//!   keeps the gradient finite on a flat image).
//!
//! All three are built from tensor ops, so [`Reward::score_differentiable`] returns scores
//! whose gradients reach the pixels; [`Reward::score`] evaluates the same graph and reads it
//! back. Prompts are ignored (their count is still checked).

use burn::prelude::*;

use crate::error::Result;
use crate::reward::{Reward, check_batch, read_scores};

/// Added to the luminance variance before the square root in [`Contrast`].
pub const CONTRAST_EPS: f64 = 1e-12;

/// Mean RGB intensity in `[0, 1]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Brightness;

/// Mean per-pixel chroma `max(R, G, B) − min(R, G, B)` in `[0, 1]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Saturation;

/// Standard deviation of the luminance over pixels, in `[0, 0.5]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Contrast;

/// `p = (x + 1) / 2`.
fn to_unit(images: Tensor<4>) -> Tensor<4> {
    images.add_scalar(1.0).mul_scalar(0.5)
}

/// Brightness of `[B, 3, H, W]` in `[-1, 1]` → `[B]`.
fn brightness(images: Tensor<4>) -> Tensor<1> {
    let [b, ..] = images.dims();
    to_unit(images).flatten::<2>(1, 3).mean_dim(1).reshape([b])
}

/// Saturation of `[B, 3, H, W]` in `[-1, 1]` → `[B]`.
fn saturation(images: Tensor<4>) -> Tensor<1> {
    let [b, ..] = images.dims();
    let p = to_unit(images);
    let chroma = p.clone().max_dim(1) - p.min_dim(1); // [B, 1, H, W]
    chroma.flatten::<2>(1, 3).mean_dim(1).reshape([b])
}

/// Contrast of `[B, 3, H, W]` in `[-1, 1]` → `[B]`.
fn contrast(images: Tensor<4>) -> Tensor<1> {
    let [b, _, h, w] = images.dims();
    let p = to_unit(images);
    let r = p.clone().narrow(1, 0, 1);
    let g = p.clone().narrow(1, 1, 1);
    let bl = p.narrow(1, 2, 1);
    let y = r.mul_scalar(0.299) + g.mul_scalar(0.587) + bl.mul_scalar(0.114); // [B, 1, H, W]
    y.reshape([b, h * w])
        .var_bias(1)
        .add_scalar(CONTRAST_EPS)
        .sqrt()
        .reshape([b])
}

macro_rules! pixel_reward {
    ($ty:ty, $name:literal, $scale:literal, $f:ident) => {
        impl Reward for $ty {
            fn name(&self) -> &str {
                $name
            }

            fn scale(&self) -> &str {
                $scale
            }

            fn score(&self, images: &Tensor<4>, prompts: &[String]) -> Result<Vec<f64>> {
                check_batch(self.name(), images, prompts)?;
                read_scores(self.name(), $f(images.clone()))
            }

            fn score_differentiable(
                &self,
                images: Tensor<4>,
                prompts: &[String],
            ) -> Option<Result<Tensor<1>>> {
                Some(check_batch(self.name(), &images, prompts).map(|_| $f(images)))
            }
        }
    };
}

pixel_reward!(Brightness, "brightness", "[0, 1]", brightness);
pixel_reward!(Saturation, "saturation", "[0, 1]", saturation);
pixel_reward!(Contrast, "contrast", "[0, 0.5]", contrast);
