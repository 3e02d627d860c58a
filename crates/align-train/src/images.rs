//! Host images ↔ tensors, and PNG grids.

use std::path::Path;

use align_data::Image;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Result, TrainError};

/// Images `[B, 3, H, W]` from host images of equal size.
///
/// # Errors
/// An empty list, or images of different sizes.
pub fn images_to_tensor(images: &[&Image], device: &Device) -> Result<Tensor<4>> {
    let first = images
        .first()
        .ok_or_else(|| TrainError::config("images", "no images"))?;
    let (w, h) = (first.width, first.height);
    let mut data = Vec::with_capacity(images.len() * 3 * w * h);
    for im in images {
        if (im.width, im.height) != (w, h) {
            return Err(TrainError::config(
                "images",
                format!("sizes differ: {}×{} and {}×{}", w, h, im.width, im.height),
            ));
        }
        data.extend_from_slice(&im.data);
    }
    Ok(Tensor::from_data(
        TensorData::new(data, [images.len(), 3, h, w]),
        device,
    ))
}

/// Host images from a batch `[B, 3, H, W]` in `[−1, 1]`.
///
/// # Errors
/// A tensor that cannot be read back, or one that is not RGB.
pub fn tensor_to_images(t: Tensor<4>) -> Result<Vec<Image>> {
    let [b, c, h, w] = t.dims();
    let data = t
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Readback {
            what: "samples".into(),
            reason: format!("{e:?}"),
        })?;
    let per = c * h * w;
    (0..b)
        .map(|i| {
            Ok(Image::from_chw(
                w,
                h,
                data[i * per..(i + 1) * per].to_vec(),
            )?)
        })
        .collect()
}

/// Writes images as a PNG grid (`cols` per row, 1-pixel grey gutters), atomically (a temporary
/// file renamed into place).
///
/// # Errors
/// No images, or the file cannot be written.
pub fn write_grid(images: &[Image], cols: usize, path: &Path) -> Result<()> {
    let first = images
        .first()
        .ok_or_else(|| TrainError::config("grid", "no images to write"))?;
    let (w, h) = (first.width, first.height);
    let cols = cols.clamp(1, images.len());
    let rows = images.len().div_ceil(cols);
    let (gw, gh) = ((w + 1) * cols + 1, (h + 1) * rows + 1);
    let mut grid = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([96, 96, 96]));
    for (i, im) in images.iter().enumerate() {
        let (ox, oy) = (1 + (i % cols) * (w + 1), 1 + (i / cols) * (h + 1));
        let rgb = im.to_rgb8();
        for y in 0..h.min(im.height) {
            for x in 0..w.min(im.width) {
                let p = (y * im.width + x) * 3;
                grid.put_pixel(
                    (ox + x) as u32,
                    (oy + y) as u32,
                    image::Rgb([rgb[p], rgb[p + 1], rgb[p + 2]]),
                );
            }
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    let tmp = path.with_extension("png.tmp");
    grid.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| TrainError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Writes `text` to `path` through a temporary file renamed into place, so that a reader never
/// sees half a file and a crash leaves the old one intact.
///
/// # Errors
/// The file cannot be written.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip_through_a_tensor_and_a_grid() {
        let device = align_core::test_device();
        let a = Image::from_chw(2, 3, (0..18).map(|i| i as f32 / 9.0 - 1.0).collect()).unwrap();
        let b = Image::from_chw(2, 3, vec![0.5; 18]).unwrap();
        let t = images_to_tensor(&[&a, &b], &device).unwrap();
        assert_eq!(t.dims(), [2, 3, 3, 2]);
        let back = tensor_to_images(t).unwrap();
        assert_eq!(back[0].data, a.data);
        assert_eq!(back[1].data, b.data);
        let c = Image::from_chw(3, 3, vec![0.0; 27]).unwrap();
        assert!(images_to_tensor(&[&a, &c], &device).is_err());
        assert!(images_to_tensor(&[], &device).is_err());
        let dir = std::env::temp_dir().join(format!("align-train-grid-{}", std::process::id()));
        let path = dir.join("g.png");
        write_grid(&back, 1, &path).unwrap();
        let png = image::open(&path).unwrap();
        // 1 column, 2 rows of 2×3 images with 1-px gutters.
        assert_eq!((png.width(), png.height()), (2 + 2, 2 * 4 + 1));
        assert!(write_grid(&[], 1, &path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
