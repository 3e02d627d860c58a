//! CLIP's byte-level BPE tokenizer (transformers' `CLIPTokenizer` / `CLIPTokenizerFast`).
//!
//! ```text
//! text  → NFC → runs of whitespace collapsed to one space → trimmed → lowercased
//!       → words: <|startoftext|> | <|endoftext|> | 's 't 're 've 'm 'll 'd | letters+ | one digit
//!                | runs of other non-space characters          (case-insensitive regex)
//!       → each word's UTF-8 bytes mapped to printable characters (GPT-2's bytes_to_unicode),
//!         `</w>` appended to the last one
//!       → BPE: repeatedly merge the adjacent pair ranked first in merges.txt
//!       → ids from vocab.json, wrapped in <|startoftext|> … <|endoftext|>
//! ```
//!
//! The files are those of every CLIP model directory and of Stable Diffusion's `tokenizer/`:
//! `vocab.json`, `merges.txt` (first line `#version: …`), and optionally
//! `tokenizer_config.json` / `special_tokens_map.json` (`model_max_length`, special tokens).
//! Python's slow tokenizer first cleans text with `ftfy` when installed; this one does not
//! (the fast tokenizer does not either).

use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::error::{ModelError, Result};

/// The pre-tokenisation pattern of CLIP (case-insensitive).
pub const CLIP_PATTERN: &str = r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Default `model_max_length` of CLIP tokenizers.
pub const CLIP_MAX_LENGTH: usize = 77;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";

/// CLIP's byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_chars: [char; 256],
    pattern: Regex,
    whitespace: Regex,
    bos: u32,
    eos: u32,
    pad: u32,
    unk: u32,
    max_length: usize,
}

/// GPT-2's reversible map from bytes to printable unicode characters: printable Latin-1
/// bytes map to themselves, the others to `U+0100 + n` in byte order.
pub fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

fn file_error(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// A special token from a config: a string, or an object with a `content` string.
fn token_field(json: &Value, key: &str) -> Option<String> {
    match json.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl ClipTokenizer {
    /// Reads `vocab.json`, `merges.txt` and (if present) `tokenizer_config.json` and
    /// `special_tokens_map.json` from `dir`.
    ///
    /// `model_max_length` defaults to 77 (also when the config holds transformers' "no limit"
    /// sentinel, a huge number); the bos/eos/unk/pad tokens default to `<|startoftext|>`,
    /// `<|endoftext|>`, `<|endoftext|>`, `<|endoftext|>`.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] naming the file: a missing or unreadable vocabulary or merges
    /// file, invalid JSON, a malformed merges line, a merged token absent from the vocabulary,
    /// or a special token absent from the vocabulary.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let vocab_path = dir.join("vocab.json");
        let text = std::fs::read_to_string(&vocab_path)
            .map_err(|e| file_error(&vocab_path, e.to_string()))?;
        let vocab: HashMap<String, u32> = serde_json::from_str(&text)
            .map_err(|e| file_error(&vocab_path, format!("invalid JSON vocabulary: {e}")))?;

        let merges_path = dir.join("merges.txt");
        let text = std::fs::read_to_string(&merges_path)
            .map_err(|e| file_error(&merges_path, e.to_string()))?;
        let mut ranks = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            if (number == 0 && line.starts_with("#version")) || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(file_error(
                    &merges_path,
                    format!("line {}: expected two tokens, got {line:?}", number + 1),
                ));
            };
            let merged = format!("{a}{b}");
            if let Some(missing) = [a, b, merged.as_str()]
                .into_iter()
                .find(|t| !vocab.contains_key(*t))
            {
                return Err(file_error(
                    &merges_path,
                    format!(
                        "line {}: token {missing:?} of merge {line:?} is not in vocab.json",
                        number + 1
                    ),
                ));
            }
            let rank = ranks.len();
            ranks.entry((a.to_string(), b.to_string())).or_insert(rank);
        }

        let mut config = Value::Null;
        let mut special_map = Value::Null;
        for (name, slot) in [
            ("tokenizer_config.json", &mut config),
            ("special_tokens_map.json", &mut special_map),
        ] {
            let path = dir.join(name);
            if path.is_file() {
                *slot = crate::hf::read_config(&path)?;
            }
        }
        let special = |key: &str, default: &str| -> Result<(String, u32)> {
            // The error names the file that declared the token (or the vocabulary when the
            // default is missing from it).
            let (token, source) = match token_field(&config, key) {
                Some(t) => (t, dir.join("tokenizer_config.json")),
                None => match token_field(&special_map, key) {
                    Some(t) => (t, dir.join("special_tokens_map.json")),
                    None => (default.to_string(), vocab_path.clone()),
                },
            };
            match vocab.get(&token) {
                Some(&id) => Ok((token, id)),
                None => Err(file_error(
                    &source,
                    format!("special token `{key}` = {token:?} is not in vocab.json"),
                )),
            }
        };
        let (_, bos) = special("bos_token", BOS)?;
        let (_, eos) = special("eos_token", EOS)?;
        let (_, unk) = special("unk_token", EOS)?;
        let (_, pad) = special("pad_token", EOS)?;
        let max_length = config
            .get("model_max_length")
            .and_then(Value::as_f64)
            .filter(|&n| (1.0..=1e6).contains(&n) && n.fract() == 0.0)
            .map_or(CLIP_MAX_LENGTH, |n| n as usize);

        let regex = |p: &str| Regex::new(p).map_err(|e| ModelError::config("regex", e.to_string()));
        Ok(Self {
            vocab,
            ranks,
            byte_chars: bytes_to_unicode(),
            pattern: regex(CLIP_PATTERN)?,
            whitespace: regex(r"\s+")?,
            bos,
            eos,
            pad,
            unk,
            max_length,
        })
    }

    /// Id of `<|startoftext|>`.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// Id of `<|endoftext|>`.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Id of the padding token (`<|endoftext|>` unless the config says otherwise).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The longest sequence the text model takes (77 for CLIP).
    pub fn model_max_length(&self) -> usize {
        self.max_length
    }

    /// Number of entries of the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The normalised text: NFC, whitespace runs collapsed to one space, trimmed, lowercased.
    pub fn normalize(&self, text: &str) -> String {
        let nfc: String = text.nfc().collect();
        self.whitespace.replace_all(&nfc, " ").trim().to_lowercase()
    }

    /// Token ids of `text` without the begin/end tokens.
    pub fn encode_words(&self, text: &str) -> Vec<u32> {
        let text = self.normalize(text);
        let mut ids = Vec::new();
        for word in self.pattern.find_iter(&text) {
            let word = word.as_str();
            if let Some(&id) = [BOS, EOS]
                .contains(&word)
                .then(|| self.vocab.get(word))
                .flatten()
            {
                ids.push(id);
                continue;
            }
            for symbol in self.bpe(word) {
                ids.push(self.vocab.get(&symbol).copied().unwrap_or(self.unk));
            }
        }
        ids
    }

    /// `<|startoftext|>`, the ids of `text`, `<|endoftext|>` (not truncated, not padded).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.bos];
        ids.extend(self.encode_words(text));
        ids.push(self.eos);
        ids
    }

    /// Exactly `max_len` ids: [`ClipTokenizer::encode`] truncated so that it fits with the
    /// end token kept last, then padded with [`ClipTokenizer::pad_id`] (transformers'
    /// `padding="max_length", truncation=True`). For `max_len < 2` only the end token (or
    /// nothing) remains.
    pub fn encode_padded(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids = self.encode(text);
        if ids.len() > max_len {
            ids.truncate(max_len.saturating_sub(1));
            if max_len > 0 {
                ids.push(self.eos);
            }
        }
        ids.resize(max_len, self.pad);
        ids
    }

    /// The BPE symbols of one pre-tokenised word.
    fn bpe(&self, word: &str) -> Vec<String> {
        let mut symbols: Vec<String> = word
            .bytes()
            .map(|b| self.byte_chars[usize::from(b)].to_string())
            .collect();
        match symbols.last_mut() {
            Some(last) => last.push_str(END_OF_WORD),
            None => return symbols,
        }
        loop {
            let best = symbols
                .windows(2)
                .filter_map(|pair| self.ranks.get(&(pair[0].clone(), pair[1].clone())))
                .min();
            let Some(&best) = best else { break };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len()
                    && self
                        .ranks
                        .get(&(symbols[i].clone(), symbols[i + 1].clone()))
                        == Some(&best)
                {
                    merged.push(format!("{}{}", symbols[i], symbols[i + 1]));
                    i += 2;
                } else {
                    merged.push(symbols[i].clone());
                    i += 1;
                }
            }
            symbols = merged;
            if symbols.len() == 1 {
                break;
            }
        }
        symbols
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::clip::test_util::fixture;

    fn tokenizer(dir: &Path) -> ClipTokenizer {
        match ClipTokenizer::from_dir(dir) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    /// The reference strings of `fixtures/sd-tiny/reference.json` (the clip-tiny fixture
    /// has the same tokenizer files).
    fn reference_cases() -> Vec<(String, Vec<u32>, Vec<u32>)> {
        let path = fixture("sd-tiny").join("reference.json");
        let json: Value = crate::hf::read_config(&path).unwrap_or_else(|e| panic!("{e}"));
        let ids = |v: &Value| -> Vec<u32> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_u64)
                        .map(|x| x as u32)
                        .collect()
                })
                .unwrap_or_default()
        };
        json["tokenizer"]
            .as_array()
            .map(|cases| {
                cases
                    .iter()
                    .map(|c| {
                        (
                            c["text"].as_str().unwrap_or_default().to_string(),
                            ids(&c["ids"]),
                            ids(&c["unpadded"]),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn bytes_to_unicode_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[usize::from(b'a')], 'a');
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[usize::from(b' ')], '\u{120}');
        assert_eq!(t[0xAD], '\u{143}');
        let mut all: Vec<char> = t.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn matches_transformers_on_every_reference_string() {
        let cases = reference_cases();
        assert!(cases.len() >= 9, "expected the reference strings");
        for dir in [fixture("sd-tiny").join("tokenizer"), fixture("clip-tiny")] {
            let tok = tokenizer(&dir);
            assert_eq!(tok.model_max_length(), 77);
            for (text, padded, unpadded) in &cases {
                assert_eq!(&tok.encode(text), unpadded, "{text:?} in {dir:?}");
                assert_eq!(&tok.encode_padded(text, 77), padded, "{text:?} in {dir:?}");
            }
        }
    }

    #[test]
    fn special_ids_and_truncation() {
        let tok = tokenizer(&fixture("clip-tiny"));
        assert_eq!(tok.bos_id(), 742);
        assert_eq!(tok.eos_id(), 743);
        assert_eq!(tok.pad_id(), 743);
        let long = "cat ".repeat(200);
        let ids = tok.encode_padded(&long, 10);
        assert_eq!(ids.len(), 10);
        assert_eq!(ids[0], tok.bos_id());
        assert_eq!(ids[9], tok.eos_id());
        assert_eq!(tok.encode_padded("cat", 1), vec![tok.eos_id()]);
        assert!(tok.encode_padded("cat", 0).is_empty());
        // Special tokens written in the text map to their ids.
        assert_eq!(tok.encode("<|endoftext|>"), vec![742, 743, 743]);
    }

    #[test]
    fn missing_and_broken_files_are_named() {
        let tmp = std::env::temp_dir().join(format!("align-clip-tok-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("{e}"));
        let err = ClipTokenizer::from_dir(&tmp)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocab.json"), "{err}");

        let src = fixture("clip-tiny");
        for f in ["vocab.json", "merges.txt"] {
            std::fs::copy(src.join(f), tmp.join(f)).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(ClipTokenizer::from_dir(&tmp).is_ok());

        std::fs::write(tmp.join("tokenizer_config.json"), "{ not json")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = ClipTokenizer::from_dir(&tmp)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("JSON"),
            "{err}"
        );

        std::fs::write(
            tmp.join("tokenizer_config.json"),
            r#"{"pad_token": "<pad>"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = ClipTokenizer::from_dir(&tmp)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json")
                && err.contains("pad_token")
                && err.contains("<pad>"),
            "the file that declared the token: {err}"
        );
        std::fs::remove_file(tmp.join("tokenizer_config.json")).unwrap_or_else(|e| panic!("{e}"));

        let merges =
            std::fs::read_to_string(src.join("merges.txt")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(tmp.join("merges.txt"), format!("{merges}zq xv\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = ClipTokenizer::from_dir(&tmp)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("merges.txt") && err.contains("not in vocab.json"),
            "{err}"
        );

        std::fs::write(tmp.join("vocab.json"), "[1, 2]").unwrap_or_else(|e| panic!("{e}"));
        let err = ClipTokenizer::from_dir(&tmp)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocab.json") && err.contains("JSON"), "{err}");
        let _ = std::fs::remove_dir_all(&tmp);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn encode_never_panics_and_is_wrapped(text in any::<String>(), max_len in 0usize..100) {
            let tok = tokenizer(&fixture("clip-tiny"));
            let ids = tok.encode(&text);
            prop_assert!(ids.len() >= 2);
            prop_assert_eq!(ids[0], tok.bos_id());
            prop_assert_eq!(ids[ids.len() - 1], tok.eos_id());
            let padded = tok.encode_padded(&text, max_len);
            prop_assert_eq!(padded.len(), max_len);
            if max_len >= 2 {
                prop_assert_eq!(padded[0], tok.bos_id());
                let last = ids.len().min(max_len) - 1;
                prop_assert_eq!(padded[last], tok.eos_id());
            }
        }
    }
}
