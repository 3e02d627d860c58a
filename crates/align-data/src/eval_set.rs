//! The fixed evaluation prompt set: train-part and held-out-part prompts with fixed seeds.
//!
//! [`EvalSet::standard`] has 64 training-part prompts and 64 held-out prompts of
//! [`Split::standard`], 4 seeds each (512 evaluation samples); [`EvalSet::for_split`] builds
//! the same for another named split (the stress test). Both are built deterministically by
//! [`EvalSet::build`] with the selection seed [`EVAL_SELECTION_SEED`]:
//!
//! - **train** (`n_train` prompts): `n_train / 4` one-group scenes and the rest two-group
//!   scenes, each drawn without replacement from the train part;
//! - **held-out** (`n_heldout` prompts): `n_heldout / 4` one-group scenes, or all the part
//!   has if fewer (the rest are then two-group); of the two-group prompts, a quarter held out
//!   only through a held-out combination and the others naming a held-out group or pair
//!   ([`Split::has_heldout_group`]) — when one of these two lists runs short, the other makes
//!   up the difference.
//!
//! "Drawn without replacement" means: the part's list (in [`SceneSpec::world`] order) is
//! shuffled by Fisher–Yates with one `ChaCha8Rng::seed_from_u64(EVAL_SELECTION_SEED)`,
//! used for the lists in the order above, and its first `k` entries are taken.
//!
//! Seeds: prompt `k` (counting train prompts first, then held-out ones, from 0) gets seeds
//! `EVAL_SEED_BASE + k · seeds_per_prompt + j` for `j in 0..seeds_per_prompt`. They are
//! meant for the initial noise of generation (and can render reference scenes).

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::error::{DataError, Result};
use crate::prompt::parse_prompt;
use crate::sampling;
use crate::split::{Split, SplitName, SplitPart};
use crate::world::SceneSpec;

/// The seed that selects the prompts of [`EvalSet::standard`].
pub const EVAL_SELECTION_SEED: u64 = 0x5EED_E7A1;

/// The first evaluation seed.
pub const EVAL_SEED_BASE: u64 = 1_000_000;

/// One evaluation prompt with its seeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalPrompt {
    /// The canonical prompt text.
    pub prompt: String,
    /// The scene it describes.
    pub spec: SceneSpec,
    /// Which part of the split it comes from.
    pub part: SplitPart,
    /// The seeds to evaluate it with.
    pub seeds: Vec<u64>,
}

/// A fixed evaluation set (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalSet {
    /// Prompts from the train part.
    pub train: Vec<EvalPrompt>,
    /// Prompts from the held-out part.
    pub heldout: Vec<EvalPrompt>,
}

fn take_shuffled(rng: &mut ChaCha8Rng, mut list: Vec<SceneSpec>, k: usize) -> Vec<SceneSpec> {
    sampling::shuffle(rng, &mut list);
    list.truncate(k);
    list
}

impl EvalSet {
    /// 64 train + 64 held-out prompts, 4 seeds each, from the standard split.
    pub fn standard() -> Self {
        Self::for_split(SplitName::Combinations)
    }

    /// 64 train + 64 held-out prompts, 4 seeds each, from a named split.
    pub fn for_split(name: SplitName) -> Self {
        Self::build(&name.split(), 64, 64, 4)
    }

    /// An evaluation set of a user's own prompts: each is parsed, checked to be a scene of
    /// the world ([`SceneSpec::world`]: at most three objects, one or two groups of distinct
    /// colour and shape) and filed under its part of `split`; prompt `k` (in the given order)
    /// gets seeds `first_seed + k · seeds_per_prompt + j`, `j in 0..seeds_per_prompt`.
    ///
    /// # Errors
    /// An empty list, zero seeds, a prompt the grammar refuses (the error names it), or a
    /// scene outside the world.
    pub fn from_prompts(
        split: &Split,
        prompts: &[String],
        seeds_per_prompt: usize,
        first_seed: u64,
    ) -> Result<Self> {
        if prompts.is_empty() {
            return Err(DataError::Config {
                field: "prompts".into(),
                reason: "no prompts".into(),
            });
        }
        if seeds_per_prompt == 0 {
            return Err(DataError::Config {
                field: "seeds".into(),
                reason: "must be at least 1".into(),
            });
        }
        let world = SceneSpec::world();
        let mut set = EvalSet {
            train: Vec::new(),
            heldout: Vec::new(),
        };
        for (k, prompt) in prompts.iter().enumerate() {
            let spec = parse_prompt(prompt)?;
            if !world.contains(&spec) {
                return Err(DataError::InvalidScene {
                    reason: format!(
                        "`{prompt}` is not a scene of the world (at most three objects in one or \
                         two groups of different colours and shapes)"
                    ),
                });
            }
            let part = split.part(&spec);
            let first = first_seed + (k * seeds_per_prompt) as u64;
            let entry = EvalPrompt {
                prompt: spec.to_string(),
                spec,
                part,
                seeds: (first..first + seeds_per_prompt as u64).collect(),
            };
            match part {
                SplitPart::Train => set.train.push(entry),
                SplitPart::HeldOut => set.heldout.push(entry),
            }
        }
        Ok(set)
    }

    /// An evaluation set of `n_train` + `n_heldout` prompts (fewer if a part has fewer
    /// scenes) with `seeds_per_prompt` seeds each (see the module docs).
    pub fn build(split: &Split, n_train: usize, n_heldout: usize, seeds_per_prompt: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(EVAL_SELECTION_SEED);
        let train_one = n_train / 4;
        let mut train = take_shuffled(
            &mut rng,
            split.specs(SplitPart::Train, 1).to_vec(),
            train_one,
        );
        train.extend(take_shuffled(
            &mut rng,
            split.specs(SplitPart::Train, 2).to_vec(),
            n_train - train_one,
        ));

        let held_one = (n_heldout / 4).min(split.specs(SplitPart::HeldOut, 1).len());
        let held_two = n_heldout - held_one;
        let (with_group, combo_only): (Vec<SceneSpec>, Vec<SceneSpec>) = split
            .specs(SplitPart::HeldOut, 2)
            .iter()
            .cloned()
            .partition(|s| split.has_heldout_group(s));
        let mut heldout = take_shuffled(
            &mut rng,
            split.specs(SplitPart::HeldOut, 1).to_vec(),
            held_one,
        );
        let mut combo_only = take_shuffled(&mut rng, combo_only, usize::MAX);
        let mut with_group = take_shuffled(&mut rng, with_group, usize::MAX);
        let held_combo = (held_two / 4)
            .max(held_two.saturating_sub(with_group.len()))
            .min(combo_only.len());
        let rest = combo_only.split_off(held_combo);
        with_group.truncate(held_two - held_combo);
        heldout.extend(combo_only);
        heldout.extend(with_group);
        let short = held_two.saturating_sub(heldout.len() - held_one);
        heldout.extend(rest.into_iter().take(short));

        let mut k = 0u64;
        let mut make = |specs: Vec<SceneSpec>, part| -> Vec<EvalPrompt> {
            specs
                .into_iter()
                .map(|spec| {
                    let first = EVAL_SEED_BASE + k * seeds_per_prompt as u64;
                    k += 1;
                    EvalPrompt {
                        prompt: spec.to_string(),
                        spec,
                        part,
                        seeds: (first..first + seeds_per_prompt as u64).collect(),
                    }
                })
                .collect()
        };
        let train = make(train, SplitPart::Train);
        let heldout = make(heldout, SplitPart::HeldOut);
        Self { train, heldout }
    }

    /// All prompts, train first.
    pub fn iter(&self) -> impl Iterator<Item = &EvalPrompt> {
        self.train.iter().chain(&self.heldout)
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.train.len() + self.heldout.len()
    }

    /// Whether the set has no prompts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn user_prompts_are_filed_by_part_with_their_own_seeds() {
        let split = Split::standard();
        let held = split.specs(SplitPart::HeldOut, 2)[0].to_string();
        let train = split.specs(SplitPart::Train, 1)[0].to_string();
        let prompts = vec![train.clone(), held.clone(), train.clone()];
        let set = EvalSet::from_prompts(&split, &prompts, 2, 7).unwrap();
        assert_eq!(set.train.len(), 2);
        assert_eq!(set.heldout.len(), 1);
        assert_eq!(set.train[0].seeds, vec![7, 8]);
        assert_eq!(set.heldout[0].seeds, vec![9, 10]);
        assert_eq!(set.train[1].seeds, vec![11, 12]);
        assert_eq!(set.heldout[0].prompt, held);
        assert!(set.heldout.iter().all(|p| p.part == SplitPart::HeldOut));
        let err = EvalSet::from_prompts(&split, &["two purple circles".into()], 1, 0).unwrap_err();
        assert!(err.to_string().contains("purple"), "{err}");
        let big = "three red circles and three blue squares".to_string();
        assert!(EvalSet::from_prompts(&split, &[big], 1, 0).is_err());
        assert!(EvalSet::from_prompts(&split, &[], 1, 0).is_err());
        assert!(EvalSet::from_prompts(&split, &prompts, 0, 0).is_err());
    }

    #[test]
    fn standard_set() {
        let split = Split::standard();
        let set = EvalSet::standard();
        assert_eq!(set, EvalSet::standard());
        assert_eq!((set.train.len(), set.heldout.len()), (64, 64));
        for p in &set.train {
            assert!(!split.is_heldout(&p.spec), "{}", p.prompt);
            assert_eq!(p.part, SplitPart::Train);
        }
        for p in &set.heldout {
            assert!(split.is_heldout(&p.spec), "{}", p.prompt);
            assert_eq!(p.part, SplitPart::HeldOut);
        }
        let prompts: HashSet<_> = set.iter().map(|p| p.prompt.clone()).collect();
        assert_eq!(prompts.len(), 128);
        let seeds: HashSet<_> = set.iter().flat_map(|p| p.seeds.clone()).collect();
        assert_eq!(seeds.len(), 512);
        for p in set.iter() {
            assert_eq!(p.prompt.parse::<SceneSpec>().unwrap(), p.spec);
        }
        let ones = |v: &[EvalPrompt]| v.iter().filter(|p| p.spec.groups().len() == 1).count();
        assert_eq!(ones(&set.train), 16);
        // The standard split has six held-out one-group scenes: all of them are evaluated.
        assert_eq!(ones(&set.heldout), 6);
        for g in split.heldout_groups() {
            assert!(set.heldout.iter().any(|p| p.spec.groups() == [*g]));
        }
    }

    #[test]
    fn stress_set() {
        let split = Split::unseen_pairs();
        let set = EvalSet::for_split(SplitName::UnseenPairs);
        assert_eq!((set.train.len(), set.heldout.len()), (64, 64));
        assert!(set.heldout.iter().all(|p| split.is_heldout(&p.spec)));
        // Every held-out pair is evaluated; the part's 9 one-group scenes are all taken, and
        // a quarter (13) of the other 55 prompts are held out only through a combination.
        for pair in split.heldout_pairs() {
            assert!(
                set.heldout
                    .iter()
                    .any(|p| p.spec.groups().iter().any(|g| g.pair() == *pair))
            );
        }
        let combo_only = set
            .heldout
            .iter()
            .filter(|p| p.spec.groups().len() == 2 && !split.has_heldout_group(&p.spec))
            .count();
        assert_eq!(combo_only, 13);
        assert_eq!(
            set.heldout
                .iter()
                .filter(|p| p.spec.groups().len() == 1)
                .count(),
            9
        );
    }

    #[test]
    fn small_parts_give_what_they_have() {
        let split = Split::standard();
        let set = EvalSet::build(&split, 1000, 1000, 1);
        assert_eq!(set.train.len(), 30 + 300);
        assert_eq!(set.heldout.len(), 6 + 96);
        let prompts: HashSet<_> = set.heldout.iter().map(|p| p.prompt.clone()).collect();
        assert_eq!(prompts.len(), 102);
    }
}
