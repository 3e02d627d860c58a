//! [`Image`]: a small host-side RGB image in the layout models consume.
//!
//! Pixels are stored channel-first (`CHW`: all red values row by row, then all green, then
//! all blue), as `f32` in `[-1, 1]`. The 8-bit mapping is `v = u / 127.5 − 1` (so `0 → −1`,
//! `255 → 1`) and back `u = round((v + 1) · 127.5)`, clamped to `0..=255`; a round trip
//! `u8 → f32 → u8` is exact. The black background is `−1` in every channel.

use crate::error::{DataError, Result};

/// Number of channels of every [`Image`] (RGB).
pub const CHANNELS: usize = 3;

/// An RGB image, `CHW` order, values in `[-1, 1]`.
///
/// `data[c · height · width + y · width + x]` is channel `c` of the pixel in column `x`, row
/// `y` (row 0 at the top). Values outside `[-1, 1]` (for example raw model outputs) are
/// allowed; [`Image::to_rgb8`] clamps them.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `3 · height · width` values, `CHW`.
    pub data: Vec<f32>,
}

/// `u8 → [-1, 1]`: `u / 127.5 − 1`.
pub fn u8_to_unit(u: u8) -> f32 {
    f32::from(u) / 127.5 - 1.0
}

/// `[-1, 1] → u8`: `round((v + 1) · 127.5)` clamped to `0..=255`; NaN maps to 0.
pub fn unit_to_u8(v: f32) -> u8 {
    let u = ((v + 1.0) * 127.5).round();
    if u.is_nan() {
        0
    } else {
        // In range after the clamp, so the cast is exact.
        u.clamp(0.0, 255.0) as u8
    }
}

impl Image {
    /// An image filled with one 8-bit RGB colour.
    pub fn filled(width: usize, height: usize, rgb: [u8; 3]) -> Self {
        let plane = width * height;
        let mut data = Vec::with_capacity(CHANNELS * plane);
        for &c in &rgb {
            data.extend(std::iter::repeat_n(u8_to_unit(c), plane));
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// Wraps a `CHW` buffer; fails unless `data.len() == 3 · width · height`.
    pub fn from_chw(width: usize, height: usize, data: Vec<f32>) -> Result<Self> {
        let expected = CHANNELS * width * height;
        if data.len() != expected {
            return Err(DataError::Shape {
                what: "Image::from_chw data".into(),
                expected: format!("3·{height}·{width} = {expected} values"),
                got: format!("{} values", data.len()),
            });
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Builds an image from interleaved 8-bit RGB (`HWC`, row-major, as the `image` crate
    /// stores it); fails unless `rgb.len() == 3 · width · height`.
    pub fn from_rgb8(width: usize, height: usize, rgb: &[u8]) -> Result<Self> {
        let plane = width * height;
        if rgb.len() != CHANNELS * plane {
            return Err(DataError::Shape {
                what: "Image::from_rgb8 buffer".into(),
                expected: format!("{height}·{width}·3 = {} bytes", CHANNELS * plane),
                got: format!("{} bytes", rgb.len()),
            });
        }
        let mut data = vec![0.0; CHANNELS * plane];
        for (i, px) in rgb.chunks_exact(CHANNELS).enumerate() {
            for (c, &u) in px.iter().enumerate() {
                data[c * plane + i] = u8_to_unit(u);
            }
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Interleaved 8-bit RGB (`HWC`, row-major), values clamped to `[-1, 1]` first.
    pub fn to_rgb8(&self) -> Vec<u8> {
        let plane = self.width * self.height;
        let mut out = vec![0u8; CHANNELS * plane];
        for i in 0..plane {
            for c in 0..CHANNELS {
                out[i * CHANNELS + c] = self.data.get(c * plane + i).map_or(0, |&v| unit_to_u8(v));
            }
        }
        out
    }

    /// The 8-bit RGB value of pixel `(x, y)`, or `None` outside the image.
    pub fn pixel_rgb8(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let plane = self.width * self.height;
        let i = y * self.width + x;
        let mut out = [0u8; 3];
        for (c, o) in out.iter_mut().enumerate() {
            *o = unit_to_u8(*self.data.get(c * plane + i)?);
        }
        Some(out)
    }

    /// The raw `[-1, 1]` values of pixel `(x, y)`, or `None` outside the image.
    pub fn pixel(&self, x: usize, y: usize) -> Option<[f32; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let plane = self.width * self.height;
        let i = y * self.width + x;
        Some([
            *self.data.get(i)?,
            *self.data.get(plane + i)?,
            *self.data.get(2 * plane + i)?,
        ])
    }

    /// Paints pixel `(x, y)` with an 8-bit RGB colour; does nothing outside the image.
    pub fn set_pixel_rgb8(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        if x >= self.width || y >= self.height {
            return;
        }
        let plane = self.width * self.height;
        let i = y * self.width + x;
        for (c, &u) in rgb.iter().enumerate() {
            if let Some(v) = self.data.get_mut(c * plane + i) {
                *v = u8_to_unit(u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_round_trip_is_exact() {
        for u in 0..=255u8 {
            let v = u8_to_unit(u);
            assert!((-1.0..=1.0).contains(&v));
            assert_eq!(unit_to_u8(v), u);
        }
        assert_eq!(unit_to_u8(-7.0), 0);
        assert_eq!(unit_to_u8(7.0), 255);
        assert_eq!(unit_to_u8(f32::NAN), 0);
    }

    #[test]
    fn chw_layout() {
        let rgb: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 10) as u8).collect();
        let img = Image::from_rgb8(3, 2, &rgb).unwrap();
        // Pixel (x=1, y=1) is interleaved index 4; red is byte 12.
        assert_eq!(img.data[3 + 1], u8_to_unit(120));
        assert_eq!(img.data[6 + 3 + 1], u8_to_unit(130));
        assert_eq!(img.pixel_rgb8(1, 1), Some([120, 130, 140]));
        assert_eq!(img.to_rgb8(), rgb);
        assert!(Image::from_rgb8(3, 3, &rgb).is_err());
        assert!(Image::from_chw(3, 2, vec![0.0; 17]).is_err());
        assert_eq!(img.pixel(3, 0), None);
    }

    #[test]
    fn filled_and_set() {
        let mut img = Image::filled(4, 4, [0, 0, 0]);
        assert!(img.data.iter().all(|&v| v == -1.0));
        img.set_pixel_rgb8(2, 3, [255, 255, 0]);
        assert_eq!(img.pixel(2, 3), Some([1.0, 1.0, -1.0]));
        img.set_pixel_rgb8(9, 9, [1, 2, 3]);
    }
}
