//! Image-folder dataset: loading, and typed errors naming the file.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use align_data::{DataError, ImageFolderDataset};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "align-data-test-{}-{}-{name}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_png(dir: &Path, name: &str, w: u32, h: u32, rgb: [u8; 3]) {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    img.save(dir.join(name)).unwrap();
}

fn write_captions(dir: &Path, text: &str) {
    std::fs::write(dir.join("captions.txt"), text).unwrap();
}

/// Two PNGs and a JPEG with captions.
fn good_dir(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    write_png(&dir, "a.png", 8, 6, [255, 0, 0]);
    write_png(&dir, "b b.png", 8, 6, [0, 0, 0]);
    image::RgbImage::from_pixel(8, 6, image::Rgb([0, 0, 255]))
        .save(dir.join("c.jpg"))
        .unwrap();
    write_captions(
        &dir,
        "# file\tcaption\na.png\tone red square\nb b.png\tnothing\r\n\nc.jpg\ta blue field\n",
    );
    dir
}

#[test]
fn loads_a_folder() {
    let dir = good_dir("ok");
    let ds = ImageFolderDataset::open(&dir, 8, 6).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.image_size(), (8, 6));
    let a = ds.get(0).unwrap();
    assert_eq!(
        (a.file.as_str(), a.caption.as_str()),
        ("a.png", "one red square")
    );
    assert_eq!((a.image.width, a.image.height), (8, 6));
    assert_eq!(a.image.pixel_rgb8(3, 2), Some([255, 0, 0]));
    assert!(ds.get(1).unwrap().image.data.iter().all(|&v| v == -1.0));
    let c = ds.get(2).unwrap().image.pixel_rgb8(4, 4).unwrap();
    assert!(c[2] > 200 && c[0] < 50, "{c:?}");
    assert!(matches!(
        ds.get(3),
        Err(DataError::Index { index: 3, len: 3 })
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn wrong_size_names_the_file() {
    let dir = good_dir("size");
    write_png(&dir, "b b.png", 9, 6, [0, 0, 0]);
    let err = ImageFolderDataset::open(&dir, 8, 6).unwrap_err();
    // The captions line that names the image, and the image's own typed error.
    let DataError::Record { path, line, source } = &err else {
        panic!("{err:?}")
    };
    assert!(path.ends_with("captions.txt") && *line == 3, "{err}");
    match source.as_ref() {
        DataError::ImageSize {
            path,
            found_width: 9,
            found_height: 6,
            ..
        } => assert!(path.ends_with("b b.png")),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("b b.png"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_file_names_the_file() {
    let dir = good_dir("missing");
    std::fs::remove_file(dir.join("a.png")).unwrap();
    let err = ImageFolderDataset::open(&dir, 8, 6).unwrap_err();
    assert!(
        matches!(&err, DataError::Record { source, .. }
            if matches!(source.as_ref(), DataError::MissingFile { path } if path.ends_with("a.png"))),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("captions.txt` line 2: missing file"),
        "{err}"
    );

    std::fs::remove_file(dir.join("captions.txt")).unwrap();
    let err = ImageFolderDataset::open(&dir, 8, 6).unwrap_err();
    assert!(matches!(&err, DataError::MissingFile { path } if path.ends_with("captions.txt")));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn malformed_caption_line_names_the_file_and_line() {
    let dir = good_dir("caption");
    write_captions(&dir, "a.png\tone red square\nb b.png nothing\n");
    let err = ImageFolderDataset::open(&dir, 8, 6).unwrap_err();
    match &err {
        DataError::CaptionLine { path, line: 2, .. } => assert!(path.ends_with("captions.txt")),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("captions.txt"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn undecodable_image_names_the_file() {
    let dir = good_dir("decode");
    std::fs::write(dir.join("a.png"), b"not a png").unwrap();
    let err = ImageFolderDataset::open(&dir, 8, 6).unwrap_err();
    assert!(
        matches!(&err, DataError::Record { source, .. }
            if matches!(source.as_ref(), DataError::Decode { path, .. } if path.ends_with("a.png"))),
        "{err:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
