//! English prompts for Shapes scenes, and parsing them back.
//!
//! ## Grammar
//!
//! ```text
//! prompt := group | group "and" group
//! group  := number colour noun
//! number := "one" | "two" | "three" | "four"
//! colour := "red" | "green" | "blue" | "yellow"
//! noun   := "circle" | "square" | "triangle"          (after "one")
//!         | "circles" | "squares" | "triangles"       (after two..four)
//! ```
//!
//! Examples: `"three red circles"`, `"one blue square"`, `"two blue squares and one yellow
//! triangle"`. Rendering a [`SceneSpec`] gives exactly this form (lower case, single spaces,
//! groups in the spec's order). Parsing is case-insensitive and ignores surrounding and
//! repeated whitespace; a word outside the vocabulary is [`DataError::UnknownWord`], known
//! words out of place (or a number that disagrees with its noun) are [`DataError::Grammar`],
//! and a prompt that breaks a world rule (two groups with the same colour and shape) is
//! [`DataError::InvalidScene`].

use std::fmt;
use std::str::FromStr;

use crate::error::{DataError, Result};
use crate::world::{Colour, Group, MAX_COUNT, SceneSpec, Shape};

/// The number words, index `n − 1` for `n`.
pub const NUMBER_WORDS: [&str; MAX_COUNT as usize] = ["one", "two", "three", "four"];

/// The word that joins two groups.
pub const AND: &str = "and";

/// The English word for `count` (`1..=4`), or `None`.
pub fn number_word(count: u8) -> Option<&'static str> {
    NUMBER_WORDS
        .get(usize::from(count).checked_sub(1)?)
        .copied()
}

/// One word of the prompt language, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Word {
    Number(u8),
    Colour(Colour),
    Noun { shape: Shape, plural: bool },
    And,
}

/// Classifies a lower-case word, or `None` if it is not in the vocabulary.
pub(crate) fn classify(word: &str) -> Option<Word> {
    if word == AND {
        return Some(Word::And);
    }
    if let Some(i) = NUMBER_WORDS.iter().position(|&w| w == word) {
        // `i < 4`.
        return Some(Word::Number(i as u8 + 1));
    }
    if let Some(&c) = Colour::ALL.iter().find(|c| c.name() == word) {
        return Some(Word::Colour(c));
    }
    for shape in Shape::ALL {
        if shape.singular() == word {
            return Some(Word::Noun {
                shape,
                plural: false,
            });
        }
        if shape.plural() == word {
            return Some(Word::Noun {
                shape,
                plural: true,
            });
        }
    }
    None
}

/// The prompt text of a group: `"<number> <colour> <noun>"`.
pub fn group_text(group: &Group) -> String {
    format!(
        "{} {} {}",
        number_word(group.count).unwrap_or("?"),
        group.colour.name(),
        group.shape.noun(group.count)
    )
}

/// Parses a prompt into a [`SceneSpec`] (see the module docs for the grammar and errors).
pub fn parse_prompt(prompt: &str) -> Result<SceneSpec> {
    let lower = prompt.to_lowercase();
    let mut words = Vec::new();
    for w in lower.split_whitespace() {
        match classify(w) {
            Some(word) => words.push(word),
            None => {
                return Err(DataError::UnknownWord {
                    word: w.to_owned(),
                    prompt: prompt.to_owned(),
                });
            }
        }
    }
    let grammar = |reason: &str| DataError::Grammar {
        prompt: prompt.to_owned(),
        reason: reason.to_owned(),
    };
    let parts: Vec<&[Word]> = words.split(|w| *w == Word::And).collect();
    if words.is_empty() {
        return Err(grammar("empty prompt"));
    }
    if parts.len() > 2 {
        return Err(grammar("at most two groups joined by one `and`"));
    }
    let mut groups = Vec::with_capacity(parts.len());
    for part in parts {
        match *part {
            [
                Word::Number(n),
                Word::Colour(colour),
                Word::Noun { shape, plural },
            ] => {
                if plural != (n != 1) {
                    return Err(grammar(if plural {
                        "`one` needs a singular noun"
                    } else {
                        "a number above one needs a plural noun"
                    }));
                }
                groups.push(Group::new(n, colour, shape)?);
            }
            _ => return Err(grammar("each group must be `<number> <colour> <shape>`")),
        }
    }
    SceneSpec::new(groups)
}

impl fmt::Display for SceneSpec {
    /// The canonical prompt, e.g. `"two blue squares and one yellow triangle"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.groups().iter().enumerate() {
            if i > 0 {
                write!(f, " {AND} ")?;
            }
            f.write_str(&group_text(g))?;
        }
        Ok(())
    }
}

impl FromStr for SceneSpec {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        parse_prompt(s)
    }
}

/// A prompt of the Shapes world: its canonical text together with the scene it describes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prompt {
    text: String,
    spec: SceneSpec,
}

impl Prompt {
    /// The prompt describing `spec`.
    pub fn from_spec(spec: &SceneSpec) -> Self {
        Self {
            text: spec.to_string(),
            spec: spec.clone(),
        }
    }

    /// Parses a prompt; the stored text is the canonical form (lower case, single spaces).
    pub fn parse(text: &str) -> Result<Self> {
        Ok(Self::from_spec(&parse_prompt(text)?))
    }

    /// The canonical text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The scene it describes.
    pub fn spec(&self) -> &SceneSpec {
        &self.spec
    }
}

impl From<&SceneSpec> for Prompt {
    fn from(spec: &SceneSpec) -> Self {
        Self::from_spec(spec)
    }
}

impl fmt::Display for Prompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        let s = SceneSpec::single(3, Colour::Red, Shape::Circle).unwrap();
        assert_eq!(s.to_string(), "three red circles");
        let s = SceneSpec::single(1, Colour::Blue, Shape::Square).unwrap();
        assert_eq!(s.to_string(), "one blue square");
        let s = SceneSpec::pair(
            Group::new(2, Colour::Blue, Shape::Square).unwrap(),
            Group::new(1, Colour::Yellow, Shape::Triangle).unwrap(),
        )
        .unwrap();
        assert_eq!(s.to_string(), "two blue squares and one yellow triangle");
        assert_eq!(
            "  Two BLUE squares   and one yellow triangle "
                .parse::<SceneSpec>()
                .unwrap(),
            s
        );
        assert_eq!(
            Prompt::parse("ONE blue  square").unwrap().text(),
            "one blue square"
        );
    }

    #[test]
    fn round_trip_every_scene() {
        for spec in SceneSpec::all() {
            let text = spec.to_string();
            assert_eq!(parse_prompt(&text).unwrap(), spec, "{text}");
            assert_eq!(Prompt::from(&spec).spec(), &spec);
        }
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_prompt("three purple circles"),
            Err(DataError::UnknownWord { word, .. }) if word == "purple"
        ));
        assert!(matches!(
            parse_prompt("five red circles"),
            Err(DataError::UnknownWord { .. })
        ));
        for bad in [
            "",
            "one red circles",
            "two red circle",
            "red one circle",
            "one red circle and",
            "and one red circle",
            "one red circle and one blue square and one green circle",
            "one red",
        ] {
            assert!(
                matches!(parse_prompt(bad), Err(DataError::Grammar { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_prompt("one red circle and two red circles"),
            Err(DataError::InvalidScene { .. })
        ));
    }
}
