//! [`ImageFolderDataset`]: a directory of PNG / JPEG images with captions, for users' own data.
//!
//! ## Layout
//!
//! ```text
//! my_data/
//!   captions.txt
//!   cat.png
//!   dog 1.jpg
//! ```
//!
//! `captions.txt` (UTF-8) has one entry per line: the file name (relative to the directory,
//! no path separators), one TAB (written `<TAB>` in the example), the caption. Empty lines
//! and lines starting with `#` are skipped; a trailing `\r` is ignored.
//!
//! ```text
//! # file<TAB>caption
//! cat.png<TAB>a cat on a mat
//! dog 1.jpg<TAB>a dog
//! ```
//!
//! Every image must have exactly the size the dataset is opened with; images are never
//! resized. Opening the dataset reads and checks everything, and fails with a typed error
//! naming the file: [`DataError::MissingFile`] (image or `captions.txt` absent),
//! [`DataError::ImageSize`], [`DataError::CaptionLine`] (no TAB, empty file name or caption,
//! a path in the name, a duplicate, or no entry at all), [`DataError::Decode`],
//! [`DataError::Io`]. Images are converted to RGB (alpha dropped, grey expanded) and stored as
//! [`Image`]s in `[-1, 1]`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::raster::Image;

/// Name of the caption file inside the directory.
pub const CAPTIONS_FILE: &str = "captions.txt";

/// One image of an [`ImageFolderDataset`].
#[derive(Debug, Clone, PartialEq)]
pub struct FolderItem {
    /// The file name, as written in `captions.txt`.
    pub file: String,
    /// Its caption.
    pub caption: String,
    /// The image, `CHW` in `[-1, 1]`.
    pub image: Image,
}

/// A captioned image folder, loaded and validated eagerly (see the module docs).
#[derive(Debug, Clone)]
pub struct ImageFolderDataset {
    dir: PathBuf,
    width: u32,
    height: u32,
    items: Vec<FolderItem>,
}

/// Parses `captions.txt` into `(line number, file, caption)` entries.
fn parse_captions(path: &Path, text: &str) -> Result<Vec<(usize, String, String)>> {
    let bad = |line: usize, reason: &str| DataError::CaptionLine {
        path: path.to_path_buf(),
        line,
        reason: reason.to_owned(),
    };
    let mut entries = Vec::new();
    let mut names = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((file, caption)) = line.split_once('\t') else {
            return Err(bad(line_no, "expected `file<TAB>caption`, found no TAB"));
        };
        let (file, caption) = (file.trim(), caption.trim());
        if file.is_empty() {
            return Err(bad(line_no, "empty file name"));
        }
        if caption.is_empty() {
            return Err(bad(line_no, &format!("empty caption for `{file}`")));
        }
        if file.contains(['/', '\\']) || file == "." || file == ".." {
            return Err(bad(
                line_no,
                &format!("`{file}` must be a plain file name inside the directory"),
            ));
        }
        if !names.insert(file.to_owned()) {
            return Err(bad(line_no, &format!("duplicate entry for `{file}`")));
        }
        entries.push((line_no, file.to_owned(), caption.to_owned()));
    }
    if entries.is_empty() {
        return Err(bad(0, "no entries"));
    }
    Ok(entries)
}

/// Loads one image, checking its size before decoding.
pub(crate) fn load_image(path: &Path, width: u32, height: u32) -> Result<Image> {
    if !path.is_file() {
        return Err(DataError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    let decode = |source| DataError::Decode {
        path: path.to_path_buf(),
        source,
    };
    let (w, h) = image::image_dimensions(path).map_err(decode)?;
    if (w, h) != (width, height) {
        return Err(DataError::ImageSize {
            path: path.to_path_buf(),
            width,
            height,
            found_width: w,
            found_height: h,
        });
    }
    let rgb = image::open(path).map_err(decode)?.to_rgb8();
    Image::from_rgb8(w as usize, h as usize, rgb.as_raw())
}

impl ImageFolderDataset {
    /// Reads `dir/captions.txt` and every image it names; every image must be
    /// `width × height`.
    pub fn open(dir: impl AsRef<Path>, width: u32, height: u32) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let captions = dir.join(CAPTIONS_FILE);
        if !captions.is_file() {
            return Err(DataError::MissingFile { path: captions });
        }
        let text = std::fs::read_to_string(&captions).map_err(|source| DataError::Io {
            path: captions.clone(),
            source,
        })?;
        let entries = parse_captions(&captions, &text)?;
        let items = entries
            .into_iter()
            .map(|(line, file, caption)| {
                let image =
                    load_image(&dir.join(&file), width, height).map_err(|e| DataError::Record {
                        path: captions.clone(),
                        line,
                        source: Box::new(e),
                    })?;
                Ok(FolderItem {
                    file,
                    caption,
                    image,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dir,
            width,
            height,
            items,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `(width, height)` of every image.
    pub fn image_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no images (never true for an opened dataset).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Item `index`, in `captions.txt` order.
    pub fn get(&self, index: usize) -> Result<&FolderItem> {
        self.items.get(index).ok_or(DataError::Index {
            index,
            len: self.items.len(),
        })
    }

    /// All items, in `captions.txt` order.
    pub fn items(&self) -> &[FolderItem] {
        &self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_parsing() {
        let p = Path::new("captions.txt");
        let ok =
            parse_captions(p, "# header\n\na.png\tone red circle\r\nb b.jpg\t  x y \n").unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1], (4, "b b.jpg".to_owned(), "x y".to_owned()));
        for (text, line) in [
            ("a.png one red circle", 1),
            ("a.png\tx\n\ta", 2),
            ("a.png\t  ", 1),
            ("../a.png\tx", 1),
            ("a.png\tx\na.png\ty", 2),
            ("# only a comment\n", 0),
        ] {
            match parse_captions(p, text) {
                Err(DataError::CaptionLine { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
