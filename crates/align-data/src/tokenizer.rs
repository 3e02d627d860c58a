//! A fixed word-level tokenizer for Shapes prompts.
//!
//! The vocabulary never changes (ids are part of trained checkpoints):
//!
//! | id | token |
//! |---|---|
//! | 0 | `<pad>` |
//! | 1 | `<null>` — the unconditional prompt for classifier-free guidance |
//! | 2 | `<unk>` |
//! | 3 | `and` |
//! | 4–7 | `one two three four` |
//! | 8–11 | `red green blue yellow` |
//! | 12–14 | `circle square triangle` |
//! | 15–17 | `circles squares triangles` |
//!
//! Every encoding has exactly [`MAX_LEN`] ids: the words' ids followed by `<pad>`. The
//! longest prompt of the world (`"four red circles and four blue squares"`) has 7 words.
//! The unconditional prompt is `<null>` followed by padding ([`Tokenizer::null_prompt`]), so
//! it is never all padding (attention over an all-masked sequence is undefined).

use crate::error::{DataError, Result};

/// Id of the padding token.
pub const PAD_ID: u32 = 0;
/// Id of the unconditional (null) token.
pub const NULL_ID: u32 = 1;
/// Id of the unknown-word token (only produced by [`Tokenizer::encode_lossy`]).
pub const UNK_ID: u32 = 2;
/// Length of every encoding.
pub const MAX_LEN: usize = 8;

/// The vocabulary, indexed by id.
pub const VOCAB: [&str; 18] = [
    "<pad>",
    "<null>",
    "<unk>",
    "and",
    "one",
    "two",
    "three",
    "four",
    "red",
    "green",
    "blue",
    "yellow",
    "circle",
    "square",
    "triangle",
    "circles",
    "squares",
    "triangles",
];

/// First id of the ordinary words (ids below are special tokens).
const FIRST_WORD_ID: usize = 3;

/// The Shapes tokenizer. Stateless; [`Tokenizer::default`] is the only configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokenizer;

impl Tokenizer {
    /// The tokenizer.
    pub fn new() -> Self {
        Self
    }

    /// Number of ids (18).
    pub fn vocab_size(&self) -> usize {
        VOCAB.len()
    }

    /// Length of every encoding ([`MAX_LEN`]).
    pub fn max_len(&self) -> usize {
        MAX_LEN
    }

    /// The id of a word (lower-cased first), or `None` for unknown words and for the special
    /// tokens' spellings.
    pub fn word_id(&self, word: &str) -> Option<u32> {
        let lower = word.to_lowercase();
        VOCAB
            .iter()
            .skip(FIRST_WORD_ID)
            .position(|&w| w == lower)
            // `< 18`.
            .map(|i| (i + FIRST_WORD_ID) as u32)
    }

    /// Encodes a prompt: whitespace-separated, case-insensitive words, padded with `<pad>` to
    /// [`MAX_LEN`]. Unknown words are [`DataError::UnknownWord`]; more than [`MAX_LEN`] words
    /// is [`DataError::TooLong`]. The grammar is not checked (see
    /// [`parse_prompt`](crate::parse_prompt)).
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(MAX_LEN);
        for w in prompt.split_whitespace() {
            match self.word_id(w) {
                Some(id) => ids.push(id),
                None => {
                    return Err(DataError::UnknownWord {
                        word: w.to_owned(),
                        prompt: prompt.to_owned(),
                    });
                }
            }
        }
        self.pad(ids, prompt)
    }

    /// Like [`Tokenizer::encode`] but maps unknown words to `<unk>`; still fails when too long.
    pub fn encode_lossy(&self, prompt: &str) -> Result<Vec<u32>> {
        let ids = prompt
            .split_whitespace()
            .map(|w| self.word_id(w).unwrap_or(UNK_ID))
            .collect();
        self.pad(ids, prompt)
    }

    fn pad(&self, mut ids: Vec<u32>, prompt: &str) -> Result<Vec<u32>> {
        if ids.len() > MAX_LEN {
            return Err(DataError::TooLong {
                prompt: prompt.to_owned(),
                len: ids.len(),
                max: MAX_LEN,
            });
        }
        ids.resize(MAX_LEN, PAD_ID);
        Ok(ids)
    }

    /// Decodes ids to text: words joined by single spaces, `<pad>` and `<null>` dropped,
    /// `<unk>` written as `<unk>`. Ids outside the vocabulary are
    /// [`DataError::UnknownToken`]. `decode(encode(p))` is `p` in canonical form.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut words = Vec::with_capacity(ids.len());
        for &id in ids {
            let word = VOCAB.get(id as usize).ok_or(DataError::UnknownToken {
                id,
                vocab_size: VOCAB.len(),
            })?;
            if id != PAD_ID && id != NULL_ID {
                words.push(*word);
            }
        }
        Ok(words.join(" "))
    }

    /// The unconditional prompt for classifier-free guidance: `[<null>, <pad>, …]`.
    pub fn null_prompt(&self) -> Vec<u32> {
        let mut ids = vec![PAD_ID; MAX_LEN];
        ids[0] = NULL_ID;
        ids
    }

    /// The padding mask of an encoding: `true` where the id is a real token (not `<pad>`).
    pub fn mask(&self, ids: &[u32]) -> Vec<bool> {
        ids.iter().map(|&id| id != PAD_ID).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::SceneSpec;

    #[test]
    fn encode_decode_round_trip() {
        let tok = Tokenizer::new();
        for spec in SceneSpec::all() {
            let text = spec.to_string();
            let ids = tok.encode(&text).unwrap();
            assert_eq!(ids.len(), MAX_LEN);
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        assert_eq!(
            tok.encode("Two blue squares").unwrap(),
            vec![5, 10, 16, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn errors() {
        let tok = Tokenizer::new();
        assert!(matches!(
            tok.encode("one purple circle"),
            Err(DataError::UnknownWord { word, .. }) if word == "purple"
        ));
        assert!(matches!(
            tok.encode("<pad>"),
            Err(DataError::UnknownWord { .. })
        ));
        assert!(matches!(
            tok.encode("one one one one one one one one one"),
            Err(DataError::TooLong { len: 9, .. })
        ));
        assert!(matches!(
            tok.decode(&[4, 99]),
            Err(DataError::UnknownToken { id: 99, .. })
        ));
        assert_eq!(
            tok.encode_lossy("one purple circle").unwrap()[..3],
            [4, UNK_ID, 12]
        );
    }

    #[test]
    fn null_prompt() {
        let tok = Tokenizer::new();
        let null = tok.null_prompt();
        assert_eq!(null.len(), MAX_LEN);
        assert_eq!(null[0], NULL_ID);
        assert_eq!(tok.decode(&null).unwrap(), "");
        assert_eq!(tok.mask(&null).iter().filter(|&&m| m).count(), 1);
    }
}
