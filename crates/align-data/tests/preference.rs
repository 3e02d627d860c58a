//! Preference datasets: a written dataset reads back identically; every malformed input —
//! arbitrary JSONL lines, missing or unknown fields, wrong types, escaping file names, missing
//! files, wrong sizes, undecodable images — is a typed error naming the file, never a panic.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use align_data::{
    DataError, Image, LABELS_FILE, LabeledImage, PAIRS_FILE, PreferencePair, read_labels,
    read_pairs, write_labels, write_pairs,
};
use proptest::prelude::*;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "align-pref-data-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn image(seed: u8, size: usize) -> Image {
    let rgb: Vec<u8> = (0..size * size * 3)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    Image::from_rgb8(size, size, &rgb).unwrap()
}

#[test]
fn written_datasets_read_back_identically() {
    let dir = tempdir("roundtrip");
    let pairs = vec![
        PreferencePair {
            prompt: "two red circles".into(),
            winner: image(1, 8),
            loser: image(2, 8),
        },
        PreferencePair {
            prompt: "one blue square".into(),
            winner: image(3, 8),
            loser: image(4, 8),
        },
    ];
    write_pairs(&dir, &pairs).unwrap();
    assert_eq!(read_pairs(&dir, 8, 8).unwrap(), pairs);
    let labels = vec![LabeledImage {
        prompt: "three green triangles".into(),
        image: image(5, 8),
        desirable: false,
    }];
    write_labels(&dir, &labels).unwrap();
    assert_eq!(read_labels(&dir, 8, 8).unwrap(), labels);
    // The wrong size is refused, naming the image and the line that names it.
    match read_pairs(&dir, 16, 16).unwrap_err() {
        DataError::Record { path, line, source } => {
            assert!(path.ends_with(PAIRS_FILE) && line == 1);
            match *source {
                DataError::ImageSize { path, .. } => assert!(path.ends_with("000000-w.png")),
                e => panic!("{e}"),
            }
        }
        e => panic!("{e}"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn with_pairs_line(name: &str, line: &str) -> DataError {
    let dir = tempdir(name);
    write_pairs(
        &dir,
        &[PreferencePair {
            prompt: "p".into(),
            winner: image(1, 4),
            loser: image(2, 4),
        }],
    )
    .unwrap();
    std::fs::write(dir.join(PAIRS_FILE), format!("{line}\n")).unwrap();
    let e = read_pairs(&dir, 4, 4).unwrap_err();
    let _ = std::fs::remove_dir_all(dir);
    e
}

#[test]
fn malformed_lines_are_typed_errors_naming_the_line() {
    let cases = [
        ("notjson", "not json", "line 1"),
        (
            "missing",
            r#"{"prompt": "p", "winner": "000000-w.png"}"#,
            "loser",
        ),
        (
            "unknown",
            r#"{"prompt": "p", "winner": "000000-w.png", "loser": "000000-l.png", "x": 1}"#,
            "unknown field",
        ),
        (
            "type",
            r#"{"prompt": 3, "winner": "a.png", "loser": "b.png"}"#,
            "line 1",
        ),
        (
            "escape",
            r#"{"prompt": "p", "winner": "../etc/passwd", "loser": "000000-l.png"}"#,
            "plain file name",
        ),
        (
            "empty-prompt",
            r#"{"prompt": " ", "winner": "000000-w.png", "loser": "000000-l.png"}"#,
            "empty prompt",
        ),
    ];
    for (name, line, needle) in cases {
        let e = with_pairs_line(name, line);
        assert!(matches!(e, DataError::JsonLine { .. }), "{name}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains(needle) && msg.contains(PAIRS_FILE),
            "{name}: {msg}"
        );
    }
    let e = with_pairs_line(
        "missing-file",
        r#"{"prompt": "p", "winner": "nope.png", "loser": "000000-l.png"}"#,
    );
    assert!(
        matches!(&e, DataError::Record { line: 1, source, .. }
            if matches!(**source, DataError::MissingFile { .. })),
        "{e}"
    );
    assert!(
        e.to_string().contains("pairs.jsonl` line 1: missing file"),
        "{e}"
    );
    let dir = tempdir("nofile");
    assert!(matches!(
        read_labels(&dir, 4, 4).unwrap_err(),
        DataError::MissingFile { .. }
    ));
    std::fs::write(dir.join(LABELS_FILE), "\n\n").unwrap();
    assert!(
        read_labels(&dir, 4, 4)
            .unwrap_err()
            .to_string()
            .contains("no records")
    );
    // An image that is not an image.
    std::fs::write(dir.join("bad.png"), b"\x89PNG garbage").unwrap();
    std::fs::write(
        dir.join(LABELS_FILE),
        r#"{"prompt": "p", "image": "bad.png", "desirable": true}"#,
    )
    .unwrap();
    assert!(matches!(
        read_labels(&dir, 4, 4).unwrap_err(),
        DataError::Record { source, .. } if matches!(*source, DataError::Decode { .. })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Arbitrary bytes as a JSONL file, and arbitrary bytes as an image: typed errors only.
    #[test]
    fn arbitrary_input_never_panics(lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 1..5), png in proptest::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempdir("fuzz");
        std::fs::write(dir.join("x.png"), &png).unwrap();
        let mut bytes = Vec::new();
        for l in &lines {
            bytes.extend(l.iter().filter(|&&b| b != b'\n'));
            bytes.push(b'\n');
        }
        std::fs::write(dir.join(PAIRS_FILE), &bytes).unwrap();
        std::fs::write(dir.join(LABELS_FILE), br#"{"prompt": "p", "image": "x.png", "desirable": true}"#).unwrap();
        let pairs = read_pairs(&dir, 4, 4);
        prop_assert!(pairs.is_err());
        let labels = read_labels(&dir, 4, 4);
        prop_assert!(labels.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
