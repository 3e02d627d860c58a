//! SD3's T5 tokenizer (`tokenizer_3/`), read from the Hugging Face `tokenizer.json` by the
//! `tokenizers` crate — the same Rust library transformers' fast tokenizer runs, so the
//! SentencePiece unigram model, its precompiled NFKC normaliser, the `▁` metaspace
//! pre-tokeniser and the `$A </s>` template are all applied as in Python:
//!
//! ```text
//! ids = tokenizer_3(prompt, padding="max_length", max_length=L, truncation=True,
//!                   add_special_tokens=True).input_ids
//!     = [pieces of the prompt, cut to L − 1] ++ [</s>] ++ [<pad>] * (L − 1 − n)
//! ```
//!
//! as `StableDiffusion3Pipeline._get_t5_prompt_embeds` calls it (`L` = its
//! `max_sequence_length`, 256 by default).

use std::path::Path;

use serde_json::Value;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::error::{ModelError, Result};

/// T5's tokenizer: `tokenizer.json` through the `tokenizers` crate.
#[derive(Debug, Clone)]
pub struct T5Tokenizer {
    tokenizer: Tokenizer,
    pad: (String, u32),
    /// The length `tokenizer` truncates and pads to, once [`T5Tokenizer::with_length`] set it.
    length: Option<usize>,
}

impl T5Tokenizer {
    /// Reads `dir/tokenizer.json`; the padding token is `tokenizer_config.json`'s `pad_token`
    /// (`<pad>` when absent).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] naming the file: missing, not a tokenizer, or a padding token
    /// the vocabulary lacks.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let bad = |reason: String| ModelError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        if !path.is_file() {
            return Err(bad(
                "missing: the T5 tokenizer is read from its tokenizer.json (the fast \
                 tokenizer's file; a directory with only spiece.model must be converted with \
                 transformers first)"
                    .into(),
            ));
        }
        // The `tokenizers` crate panics on some malformed files (a `Precompiled` normalizer
        // whose data does not decode): contain it and report the file.
        let tokenizer = std::panic::catch_unwind(|| Tokenizer::from_file(&path))
            .map_err(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                bad(format!(
                    "not a valid tokenizer (the tokenizers crate failed: {what})"
                ))
            })?
            .map_err(|e| bad(e.to_string()))?;
        let config = dir.join("tokenizer_config.json");
        let pad_token = if config.is_file() {
            crate::hf::read_config::<Value>(&config)?
                .get("pad_token")
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
                    _ => None,
                })
        } else {
            None
        }
        .unwrap_or_else(|| "<pad>".to_string());
        let pad_id = tokenizer.token_to_id(&pad_token).ok_or_else(|| {
            bad(format!(
                "padding token {pad_token:?} is not in the vocabulary"
            ))
        })?;
        Ok(Self {
            tokenizer,
            pad: (pad_token, pad_id),
            length: None,
        })
    }

    /// Sets the truncation and padding of `length` once, so that
    /// [`T5Tokenizer::encode_padded`] at that length (the pipeline's `max_sequence_length`)
    /// needs no reconfigured copy of the tokenizer.
    ///
    /// # Errors
    /// As [`T5Tokenizer::encode_padded`] for `length == 0`.
    pub fn with_length(mut self, length: usize) -> Result<Self> {
        self.tokenizer = self.configured(length)?;
        self.length = Some(length);
        Ok(self)
    }

    /// A copy of the tokenizer that truncates and pads to `length`.
    fn configured(&self, length: usize) -> Result<Tokenizer> {
        if length == 0 {
            return Err(ModelError::Input {
                what: "max_sequence_length".into(),
                expected: "at least 1".into(),
                got: "0".into(),
            });
        }
        let mut tokenizer = self.tokenizer.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| ModelError::config("max_sequence_length", e.to_string()))?
            .with_padding(Some(PaddingParams {
                strategy: PaddingStrategy::Fixed(length),
                direction: PaddingDirection::Right,
                pad_to_multiple_of: None,
                pad_id: self.pad.1,
                pad_type_id: 0,
                pad_token: self.pad.0.clone(),
            }));
        Ok(tokenizer)
    }

    /// Id of the padding token.
    pub fn pad_id(&self) -> u32 {
        self.pad.1
    }

    /// Number of entries of the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The ids of `prompts`, each truncated and padded to exactly `length` (see the module
    /// docs), row after row.
    ///
    /// # Errors
    /// [`ModelError::Input`] for `length == 0` or text the tokenizer cannot encode.
    pub fn encode_padded(&self, prompts: &[String], length: usize) -> Result<Vec<u32>> {
        let reconfigured;
        let tokenizer = if self.length == Some(length) {
            &self.tokenizer
        } else {
            reconfigured = self.configured(length)?;
            &reconfigured
        };
        let mut ids = Vec::with_capacity(prompts.len() * length);
        for prompt in prompts {
            let encoding =
                tokenizer
                    .encode(prompt.as_str(), true)
                    .map_err(|e| ModelError::Input {
                        what: format!("prompt {prompt:?}"),
                        expected: "text the T5 tokenizer encodes".into(),
                        got: e.to_string(),
                    })?;
            ids.extend_from_slice(encoding.get_ids());
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::{fixtures_dir, read_safetensors};

    /// transformers' `T5Tokenizer` (fast) on the whole pipeline fixture's `tokenizer_3/`:
    /// upper case, digits, characters outside the vocabulary and ones NFKC folds, runs of
    /// spaces, the empty prompt, an added special token and a truncated prompt — same ids.
    #[test]
    fn t5_ids_match_transformers() {
        let dir = fixtures_dir().join("sd3-tiny-pipeline");
        let tok = T5Tokenizer::from_dir(&dir.join("tokenizer_3")).unwrap();
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let prompts: Vec<String> = meta["tokenizer_3_prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        let length = meta["max_sequence_length"].as_u64().unwrap() as usize;
        let r = read_safetensors(&dir.join("reference.safetensors")).unwrap();
        let want: Vec<u32> = r["tokenizer_3.input_ids"]
            .iter::<i64>()
            .map(|i| i as u32)
            .collect();
        let got = tok.encode_padded(&prompts, length).unwrap();
        assert_eq!(got.len(), prompts.len() * length);
        for (i, p) in prompts.iter().enumerate() {
            assert_eq!(
                got[i * length..(i + 1) * length],
                want[i * length..(i + 1) * length],
                "{p:?}"
            );
        }
        assert_eq!(tok.pad_id(), 0);
        // Configured once for the length: the same ids.
        let fixed = tok.clone().with_length(length).unwrap();
        assert_eq!(fixed.encode_padded(&prompts, length).unwrap(), got);
        assert_eq!(
            fixed.encode_padded(&[String::new()], 4).unwrap(),
            vec![1, 0, 0, 0]
        );
        // The empty prompt is </s> then padding.
        let empty = tok.encode_padded(&[String::new()], 4).unwrap();
        assert_eq!(empty, vec![1, 0, 0, 0]);
        assert!(tok.encode_padded(&prompts, 0).is_err());
    }

    #[test]
    fn a_missing_or_broken_tokenizer_is_named() {
        let dir = std::env::temp_dir().join(format!("align-t5tok-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let err = T5Tokenizer::from_dir(&dir).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("missing"),
            "{err}"
        );
        std::fs::write(dir.join("tokenizer.json"), "{\"model\": 3}").unwrap();
        let err = T5Tokenizer::from_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        // A `Precompiled` normalizer whose data does not decode makes the tokenizers crate
        // panic while reading the file: contained, and reported as the file's error.
        let src = fixtures_dir().join("sd3-tiny-pipeline/tokenizer_3/tokenizer.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
        json["normalizer"]["precompiled_charsmap"] = serde_json::json!("AAAA");
        std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
        let err = T5Tokenizer::from_dir(&dir).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("not a valid tokenizer"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
