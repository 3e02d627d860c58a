//! Preference datasets: pairwise `(prompt, winner, loser)` and binary `(prompt, image,
//! desirable)` records, stored as JSONL plus PNG files — the input of Diffusion-DPO, MaPO and
//! KTO, written by the AI-feedback builder or by people.
//!
//! ## Layout
//!
//! ```text
//! my_prefs/
//!   pairs.jsonl        {"prompt": "two red circles", "winner": "0001-w.png", "loser": "0001-l.png"}
//!   labels.jsonl       {"prompt": "one blue square", "image": "0002.png", "desirable": true}
//!   0001-w.png …
//! ```
//!
//! A directory holds either or both files. One JSON object per line, with exactly these
//! fields; empty lines are skipped. Image names are relative to the directory and may not
//! contain path separators or `..`. Every image must have the size the dataset is opened with.
//! Opening reads and checks everything and fails with a typed error naming the file (and the
//! line): [`DataError::JsonLine`] (not JSON, a missing or unknown field, a wrong type, an
//! empty prompt, a bad file name), [`DataError::Record`] for an image a line names (holding
//! [`DataError::MissingFile`], [`DataError::ImageSize`], [`DataError::Decode`] or
//! [`DataError::Io`]), and [`DataError::MissingFile`] / [`DataError::Io`] for the JSONL file.
//!
//! [`write_pairs`] / [`write_labels`] write a dataset: PNGs first, then the JSONL under a
//! temporary name, renamed into place — an interrupted write never leaves a JSONL naming
//! missing images.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::raster::Image;

/// File of pairwise records.
pub const PAIRS_FILE: &str = "pairs.jsonl";
/// File of binary records.
pub const LABELS_FILE: &str = "labels.jsonl";

/// One pairwise record.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    /// The prompt.
    pub prompt: String,
    /// The preferred image.
    pub winner: Image,
    /// The dispreferred image.
    pub loser: Image,
}

/// One binary record.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledImage {
    /// The prompt.
    pub prompt: String,
    /// The image.
    pub image: Image,
    /// Whether it is desirable.
    pub desirable: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PairLine {
    prompt: String,
    winner: String,
    loser: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelLine {
    prompt: String,
    image: String,
    desirable: bool,
}

fn line_error(path: &Path, line: usize, reason: impl Into<String>) -> DataError {
    DataError::JsonLine {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

fn check_name(path: &Path, line: usize, name: &str) -> Result<()> {
    if name.is_empty()
        || name.contains('/')
        || name.contains('\\')
        || name == "."
        || name == ".."
        || name.contains('\0')
    {
        return Err(line_error(
            path,
            line,
            format!("image name `{name}` must be a plain file name inside the directory"),
        ));
    }
    Ok(())
}

/// Parses one JSONL line into `T`, with the line's errors typed.
fn parse_line<T: serde::de::DeserializeOwned>(path: &Path, line: usize, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| line_error(path, line, e.to_string()))
}

fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    if !path.is_file() {
        return Err(DataError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text =
        String::from_utf8(bytes).map_err(|e| line_error(path, 0, format!("not UTF-8: {e}")))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r').to_string()))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect())
}

/// Loads the image `name` of line `line` of `jsonl`.
fn load(jsonl: &Path, line: usize, name: &str, width: u32, height: u32) -> Result<Image> {
    let dir = jsonl.parent().unwrap_or(Path::new("."));
    crate::folder::load_image(&dir.join(name), width, height).map_err(|e| DataError::Record {
        path: jsonl.to_path_buf(),
        line,
        source: Box::new(e),
    })
}

/// Reads `dir/pairs.jsonl` and its images (module docs).
///
/// # Errors
/// See the module docs; an empty file is an error too.
pub fn read_pairs(dir: &Path, width: u32, height: u32) -> Result<Vec<PreferencePair>> {
    let path = dir.join(PAIRS_FILE);
    let mut out = Vec::new();
    for (n, text) in read_lines(&path)? {
        let l: PairLine = parse_line(&path, n, &text)?;
        if l.prompt.trim().is_empty() {
            return Err(line_error(&path, n, "empty prompt"));
        }
        check_name(&path, n, &l.winner)?;
        check_name(&path, n, &l.loser)?;
        out.push(PreferencePair {
            prompt: l.prompt,
            winner: load(&path, n, &l.winner, width, height)?,
            loser: load(&path, n, &l.loser, width, height)?,
        });
    }
    if out.is_empty() {
        return Err(line_error(&path, 0, "no records"));
    }
    Ok(out)
}

/// Reads `dir/labels.jsonl` and its images (module docs).
///
/// # Errors
/// See the module docs; an empty file is an error too.
pub fn read_labels(dir: &Path, width: u32, height: u32) -> Result<Vec<LabeledImage>> {
    let path = dir.join(LABELS_FILE);
    let mut out = Vec::new();
    for (n, text) in read_lines(&path)? {
        let l: LabelLine = parse_line(&path, n, &text)?;
        if l.prompt.trim().is_empty() {
            return Err(line_error(&path, n, "empty prompt"));
        }
        check_name(&path, n, &l.image)?;
        out.push(LabeledImage {
            prompt: l.prompt,
            image: load(&path, n, &l.image, width, height)?,
            desirable: l.desirable,
        });
    }
    if out.is_empty() {
        return Err(line_error(&path, 0, "no records"));
    }
    Ok(out)
}

fn write_png(path: &Path, image: &Image) -> Result<()> {
    let buf = image::RgbImage::from_raw(image.width as u32, image.height as u32, image.to_rgb8())
        .ok_or_else(|| DataError::Write {
        path: path.to_path_buf(),
        reason: "image buffer of the wrong size".into(),
    })?;
    buf.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| DataError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn write_jsonl(path: &Path, lines: &[String]) -> Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = lines.join("\n");
    text.push('\n');
    let werr = |e: std::io::Error| DataError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::write(&tmp, text).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::Write {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes pairs as `dir/NNNNNN-w.png`, `dir/NNNNNN-l.png` and `dir/pairs.jsonl` (module docs).
///
/// # Errors
/// File system errors.
pub fn write_pairs(dir: &Path, pairs: &[PreferencePair]) -> Result<PathBuf> {
    ensure_dir(dir)?;
    let mut lines = Vec::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        let (w, l) = (format!("{i:06}-w.png"), format!("{i:06}-l.png"));
        write_png(&dir.join(&w), &p.winner)?;
        write_png(&dir.join(&l), &p.loser)?;
        let line = PairLine {
            prompt: p.prompt.clone(),
            winner: w,
            loser: l,
        };
        lines.push(serde_json::to_string(&line).map_err(|e| DataError::Write {
            path: dir.join(PAIRS_FILE),
            reason: e.to_string(),
        })?);
    }
    let path = dir.join(PAIRS_FILE);
    write_jsonl(&path, &lines)?;
    Ok(path)
}

/// Writes binary records as `dir/NNNNNN.png` and `dir/labels.jsonl` (module docs).
///
/// # Errors
/// File system errors.
pub fn write_labels(dir: &Path, records: &[LabeledImage]) -> Result<PathBuf> {
    ensure_dir(dir)?;
    let mut lines = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let name = format!("{i:06}.png");
        write_png(&dir.join(&name), &r.image)?;
        let line = LabelLine {
            prompt: r.prompt.clone(),
            image: name,
            desirable: r.desirable,
        };
        lines.push(serde_json::to_string(&line).map_err(|e| DataError::Write {
            path: dir.join(LABELS_FILE),
            reason: e.to_string(),
        })?);
    }
    let path = dir.join(LABELS_FILE);
    write_jsonl(&path, &lines)?;
    Ok(path)
}
