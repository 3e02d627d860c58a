//! The train / held-out split of the world's scenes.
//!
//! Compositional generalisation is measured on scenes a model never saw in pretraining.
//! Every split divides the world's scenes ([`SceneSpec::world`]: at most three objects).
//! A split holds out any mix of three kinds of thing:
//!
//! - **groups**: `(count, colour, shape)` triples, held out wherever they appear (alone or
//!   beside another group);
//! - **pairs**: `(colour, shape)` pairs, held out with every count;
//! - **combinations**: unordered combinations of two `(colour, shape)` pairs, held out in
//!   two-group scenes of either order and any counts.
//!
//! A scene is held out when a group of it is a held-out triple or has a held-out pair, or
//! when its two groups form a held-out combination.
//!
//! ## The standard split: new combinations of seen concepts ([`Split::standard`])
//!
//! As in GenEval, every colour, shape, `(colour, shape)` pair and count occurs in training,
//! and the held-out scenes combine them in ways never seen:
//!
//! - 6 triples, [`HELDOUT_GROUPS`]: three objects of each pair whose colour and shape
//!   indices (in [`Colour::ALL`] / [`Shape::ALL`] order) have an odd sum — red squares, green
//!   circles, green triangles, blue squares, yellow circles, yellow triangles — so that every
//!   pair keeps counts 1 and 2 in training and count 3 is seen with the other six pairs
//!   (a group of three is only ever alone in a scene of at most three objects, so these are
//!   held-out one-group scenes);
//! - 16 of the 66 unordered combinations of two pairs (24 %), [`HELDOUT_PAIR_COMBOS`]:
//!   with pairs numbered `p = 3 · colour + shape`, the combinations `{p, p + 4 mod 12}` for
//!   every `p` and `{p, p + 6}` for `p = 0..4` — different colour and shape, same shape and
//!   different colour, and every pair in two or three of them.
//!
//! That makes 30 one-group + 300 two-group training scenes and 6 one-group + 96 two-group
//! held-out scenes: 102 of the world's 432 scenes (24 %) are held out.
//!
//! ## The stress test: unseen pairs ([`Split::unseen_pairs`])
//!
//! The split of world v1: three pairs, [`HELDOUT_PAIRS`] (red triangle, green square, blue
//! circle), never appear in training, and four combinations of training pairs,
//! [`HELDOUT_COMBOS`], are held out. It asks a model to draw a colour on a shape it never
//! saw it on — a harder test than the standard split, reported but not targeted.
//!
//! ## Sampling
//!
//! Sampling from a part ([`Split::sample_spec`]) first picks one or two groups with
//! probability ½ each, then a scene uniformly among that part's scenes with that many groups.
//! It only ever draws from the precomputed list of the part, so the training sampler cannot
//! produce a held-out scene.

use std::fmt;
use std::str::FromStr;

use rand_core::RngCore;

use crate::error::{DataError, Result};
use crate::sampling;
use crate::world::{Colour, Group, SceneSpec, Shape};

/// The `(colour, shape)` pairs held out by [`Split::unseen_pairs`].
pub const HELDOUT_PAIRS: [(Colour, Shape); 3] = [
    (Colour::Red, Shape::Triangle),
    (Colour::Green, Shape::Square),
    (Colour::Blue, Shape::Circle),
];

/// The unordered two-group combinations of training pairs held out by [`Split::unseen_pairs`].
pub const HELDOUT_COMBOS: [[(Colour, Shape); 2]; 4] = [
    [
        (Colour::Red, Shape::Circle),
        (Colour::Blue, Shape::Triangle),
    ],
    [
        (Colour::Green, Shape::Triangle),
        (Colour::Yellow, Shape::Square),
    ],
    [
        (Colour::Yellow, Shape::Circle),
        (Colour::Red, Shape::Square),
    ],
    [
        (Colour::Blue, Shape::Square),
        (Colour::Green, Shape::Circle),
    ],
];

const fn pair_number(p: usize) -> (Colour, Shape) {
    (Colour::ALL[p / 3], Shape::ALL[p % 3])
}

const fn three_of(colour: Colour, shape: Shape) -> Group {
    Group {
        count: 3,
        colour,
        shape,
    }
}

/// The `(count, colour, shape)` triples held out by [`Split::standard`]: three objects of
/// each pair whose colour and shape indices (in [`Colour::ALL`] / [`Shape::ALL`] order) have
/// an odd sum (see the module docs).
pub const HELDOUT_GROUPS: [Group; 6] = [
    three_of(Colour::Red, Shape::Square),
    three_of(Colour::Green, Shape::Circle),
    three_of(Colour::Green, Shape::Triangle),
    three_of(Colour::Blue, Shape::Square),
    three_of(Colour::Yellow, Shape::Circle),
    three_of(Colour::Yellow, Shape::Triangle),
];

const fn combo(a: usize, b: usize) -> [(Colour, Shape); 2] {
    [pair_number(a), pair_number(b)]
}

/// The unordered combinations of two pairs held out by [`Split::standard`] (see the module
/// docs).
pub const HELDOUT_PAIR_COMBOS: [[(Colour, Shape); 2]; 16] = [
    combo(0, 4),
    combo(1, 5),
    combo(2, 6),
    combo(3, 7),
    combo(4, 8),
    combo(5, 9),
    combo(6, 10),
    combo(7, 11),
    combo(8, 0),
    combo(9, 1),
    combo(10, 2),
    combo(11, 3),
    combo(0, 6),
    combo(1, 7),
    combo(2, 8),
    combo(3, 9),
];

/// Which side of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SplitPart {
    /// Combinations used for pretraining and in-distribution evaluation.
    Train,
    /// Combinations never seen in pretraining.
    HeldOut,
}

/// The named splits of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SplitName {
    /// [`Split::standard`]: held-out combinations of seen concepts (`"combinations"`).
    #[default]
    Combinations,
    /// [`Split::unseen_pairs`]: the harder stress test (`"unseen-pairs"`).
    UnseenPairs,
}

impl SplitName {
    /// Every named split.
    pub const ALL: [SplitName; 2] = [SplitName::Combinations, SplitName::UnseenPairs];

    /// The split's name as written in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Combinations => "combinations",
            SplitName::UnseenPairs => "unseen-pairs",
        }
    }

    /// The split itself.
    pub fn split(self) -> Split {
        match self {
            SplitName::Combinations => Split::standard(),
            SplitName::UnseenPairs => Split::unseen_pairs(),
        }
    }
}

impl fmt::Display for SplitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SplitName {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        SplitName::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| {
                DataError::config(
                    "split",
                    format!("unknown split `{s}` (known: combinations, unseen-pairs)"),
                )
            })
    }
}

/// A split of the world's scenes into train and held-out parts (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    heldout_groups: Vec<Group>,
    heldout_pairs: Vec<(Colour, Shape)>,
    heldout_combos: Vec<[(Colour, Shape); 2]>,
    /// `[part][groups − 1]`: the scenes of each part with one and with two groups.
    lists: [[Vec<SceneSpec>; 2]; 2],
}

impl Default for Split {
    fn default() -> Self {
        Self::standard()
    }
}

fn part_index(part: SplitPart) -> usize {
    match part {
        SplitPart::Train => 0,
        SplitPart::HeldOut => 1,
    }
}

impl Split {
    /// The standard split: [`HELDOUT_GROUPS`] and [`HELDOUT_PAIR_COMBOS`] (new combinations
    /// of seen concepts).
    pub fn standard() -> Self {
        Self::build(
            HELDOUT_GROUPS.to_vec(),
            Vec::new(),
            HELDOUT_PAIR_COMBOS.to_vec(),
        )
    }

    /// The stress test: [`HELDOUT_PAIRS`] and [`HELDOUT_COMBOS`] (pairs never seen).
    pub fn unseen_pairs() -> Self {
        Self::build(Vec::new(), HELDOUT_PAIRS.to_vec(), HELDOUT_COMBOS.to_vec())
    }

    /// A custom split holding out pairs and combinations. Fails when either part would have
    /// no one-group or no two-group scene (so that both samplers always have something to
    /// draw).
    pub fn new(
        heldout_pairs: Vec<(Colour, Shape)>,
        heldout_combos: Vec<[(Colour, Shape); 2]>,
    ) -> Result<Self> {
        Self::with_groups(Vec::new(), heldout_pairs, heldout_combos)
    }

    /// A custom split holding out `(count, colour, shape)` triples as well. Fails like
    /// [`Split::new`].
    pub fn with_groups(
        heldout_groups: Vec<Group>,
        heldout_pairs: Vec<(Colour, Shape)>,
        heldout_combos: Vec<[(Colour, Shape); 2]>,
    ) -> Result<Self> {
        let split = Self::build(heldout_groups, heldout_pairs, heldout_combos);
        for (p, name) in [(0, "train"), (1, "held-out")] {
            for g in 0..2 {
                if split.lists[p][g].is_empty() {
                    return Err(DataError::config(
                        "heldout_pairs",
                        format!("the {name} part has no {}-group scene", g + 1),
                    ));
                }
            }
        }
        Ok(split)
    }

    fn build(
        heldout_groups: Vec<Group>,
        heldout_pairs: Vec<(Colour, Shape)>,
        heldout_combos: Vec<[(Colour, Shape); 2]>,
    ) -> Self {
        let mut split = Self {
            heldout_groups,
            heldout_pairs,
            heldout_combos,
            lists: Default::default(),
        };
        for spec in SceneSpec::world() {
            let p = part_index(split.part(&spec));
            let g = spec.groups().len() - 1;
            split.lists[p][g].push(spec);
        }
        split
    }

    /// The held-out `(count, colour, shape)` triples.
    pub fn heldout_groups(&self) -> &[Group] {
        &self.heldout_groups
    }

    /// The held-out `(colour, shape)` pairs.
    pub fn heldout_pairs(&self) -> &[(Colour, Shape)] {
        &self.heldout_pairs
    }

    /// The held-out unordered combinations.
    pub fn heldout_combos(&self) -> &[[(Colour, Shape); 2]] {
        &self.heldout_combos
    }

    /// Whether a group of `spec` is a held-out triple or has a held-out pair (the scene
    /// names something held out on its own, whatever it is combined with).
    pub fn has_heldout_group(&self, spec: &SceneSpec) -> bool {
        spec.groups()
            .iter()
            .any(|g| self.heldout_pairs.contains(&g.pair()) || self.heldout_groups.contains(g))
    }

    /// Whether `spec` is held out: a group is a held-out triple or has a held-out pair, or
    /// two groups form a held-out combination in either order.
    pub fn is_heldout(&self, spec: &SceneSpec) -> bool {
        if self.has_heldout_group(spec) {
            return true;
        }
        if let [a, b] = spec.groups() {
            let (a, b) = (a.pair(), b.pair());
            return self
                .heldout_combos
                .iter()
                .any(|c| (c[0] == a && c[1] == b) || (c[0] == b && c[1] == a));
        }
        false
    }

    /// Which part `spec` belongs to.
    pub fn part(&self, spec: &SceneSpec) -> SplitPart {
        if self.is_heldout(spec) {
            SplitPart::HeldOut
        } else {
            SplitPart::Train
        }
    }

    /// Every scene of a part with `groups` groups (1 or 2; empty otherwise), in
    /// [`SceneSpec::world`]'s order.
    pub fn specs(&self, part: SplitPart, groups: usize) -> &[SceneSpec] {
        match groups {
            1 | 2 => &self.lists[part_index(part)][groups - 1],
            _ => &[],
        }
    }

    /// Every scene of a part.
    pub fn all_specs(&self, part: SplitPart) -> Vec<SceneSpec> {
        let [one, two] = &self.lists[part_index(part)];
        one.iter().chain(two).cloned().collect()
    }

    /// Draws a scene of `part`: one or two groups with probability ½ each, then uniformly
    /// among that part's scenes with that many groups.
    pub fn sample_spec<R: RngCore + ?Sized>(&self, part: SplitPart, rng: &mut R) -> SceneSpec {
        let [one, two] = &self.lists[part_index(part)];
        let list = if rng.next_u32() & 1 == 0 { one } else { two };
        // Invariant: `standard`, `unseen_pairs` and `new` only build splits whose four
        // lists are non-empty.
        list[sampling::below(rng, list.len())].clone()
    }

    /// Draws a training scene ([`Split::sample_spec`] on [`SplitPart::Train`]). Never
    /// returns a held-out scene.
    pub fn sample_train_spec<R: RngCore + ?Sized>(&self, rng: &mut R) -> SceneSpec {
        self.sample_spec(SplitPart::Train, rng)
    }

    /// Draws a held-out scene.
    pub fn sample_heldout_spec<R: RngCore + ?Sized>(&self, rng: &mut R) -> SceneSpec {
        self.sample_spec(SplitPart::HeldOut, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    fn sizes(s: &Split) -> [usize; 4] {
        [
            s.specs(SplitPart::Train, 1).len(),
            s.specs(SplitPart::Train, 2).len(),
            s.specs(SplitPart::HeldOut, 1).len(),
            s.specs(SplitPart::HeldOut, 2).len(),
        ]
    }

    #[test]
    fn sizes_of_the_named_splits() {
        // Counted by an independent enumeration (a script over the world's rules).
        assert_eq!(sizes(&Split::standard()), [30, 300, 6, 96]);
        assert_eq!(sizes(&Split::unseen_pairs()), [27, 192, 9, 204]);
        for name in SplitName::ALL {
            let s = name.split();
            assert!(s.specs(SplitPart::Train, 3).is_empty());
            for spec in s.all_specs(SplitPart::Train) {
                assert!(!s.is_heldout(&spec));
            }
            for spec in s.all_specs(SplitPart::HeldOut) {
                assert!(s.is_heldout(&spec));
            }
            assert_eq!(
                s.all_specs(SplitPart::Train).len() + s.all_specs(SplitPart::HeldOut).len(),
                SceneSpec::world().len()
            );
        }
    }

    #[test]
    fn the_standard_split_holds_out_about_a_quarter() {
        let s = Split::standard();
        let held = s.all_specs(SplitPart::HeldOut).len() as f64;
        let share = held / SceneSpec::world().len() as f64;
        assert!((0.2..0.3).contains(&share), "{share}");
        let mut combos: Vec<_> = HELDOUT_PAIR_COMBOS
            .iter()
            .map(|c| {
                let mut c = *c;
                c.sort();
                c
            })
            .collect();
        combos.sort();
        combos.dedup();
        assert_eq!(combos.len(), 16, "the held-out combinations are distinct");
        assert!(HELDOUT_PAIR_COMBOS.iter().all(|c| c[0] != c[1]));
    }

    #[test]
    fn every_concept_is_trained_in_the_standard_split() {
        let s = Split::standard();
        let train = s.all_specs(SplitPart::Train);
        let groups: Vec<Group> = train.iter().flat_map(|t| t.groups().to_vec()).collect();
        for c in Colour::ALL {
            for sh in Shape::ALL {
                // Every pair, with counts 1 and 2, alone and beside another group.
                for count in 1..=2 {
                    assert!(groups.contains(&Group::new(count, c, sh).unwrap()));
                }
                assert!(
                    train
                        .iter()
                        .any(|t| t.groups().len() == 2 && t.groups()[0].pair() == (c, sh))
                );
            }
        }
        for count in 1..=3 {
            assert!(groups.iter().any(|g| g.count == count), "count {count}");
        }
        // No held-out triple occurs in training, in any scene.
        for g in HELDOUT_GROUPS {
            assert!(!groups.contains(&g), "{g:?}");
        }
    }

    #[test]
    fn the_held_out_part_names_only_seen_concepts() {
        let s = Split::standard();
        let train = s.all_specs(SplitPart::Train);
        for spec in s.all_specs(SplitPart::HeldOut) {
            for g in spec.groups() {
                // Each held-out group's pair and count is seen in training.
                assert!(
                    train
                        .iter()
                        .any(|t| t.groups().iter().any(|h| h.pair() == g.pair()))
                );
                assert!(
                    train
                        .iter()
                        .any(|t| t.groups().iter().any(|h| h.count == g.count))
                );
            }
        }
    }

    #[test]
    fn combos_are_held_out_in_both_orders() {
        for (s, [x, y]) in [
            (Split::unseen_pairs(), HELDOUT_COMBOS[0]),
            (Split::standard(), HELDOUT_PAIR_COMBOS[3]),
        ] {
            let a = Group::new(2, x.0, x.1).unwrap();
            let b = Group::new(1, y.0, y.1).unwrap();
            assert!(s.is_heldout(&SceneSpec::pair(a, b).unwrap()));
            assert!(s.is_heldout(&SceneSpec::pair(b, a).unwrap()));
            assert!(!s.is_heldout(&SceneSpec::new(vec![a]).unwrap()));
            assert!(!s.is_heldout(&SceneSpec::new(vec![b]).unwrap()));
        }
        let h = SceneSpec::single(1, Colour::Green, Shape::Square).unwrap();
        assert!(Split::unseen_pairs().is_heldout(&h));
        assert!(!Split::standard().is_heldout(&h));
        let three = SceneSpec::single(3, Colour::Red, Shape::Square).unwrap();
        assert!(Split::standard().is_heldout(&three));
        assert!(Split::standard().has_heldout_group(&three));
        let three = SceneSpec::single(3, Colour::Red, Shape::Circle).unwrap();
        assert!(!Split::standard().is_heldout(&three));
    }

    #[test]
    fn degenerate_custom_split_is_rejected() {
        let every: Vec<_> = Colour::ALL
            .into_iter()
            .flat_map(|c| Shape::ALL.into_iter().map(move |s| (c, s)))
            .collect();
        assert!(Split::new(every, vec![]).is_err());
        assert!(Split::new(vec![], vec![]).is_err());
        assert!(Split::new(HELDOUT_PAIRS.to_vec(), vec![]).is_ok());
        // Triples alone hold out no two-group scene here.
        assert!(Split::with_groups(HELDOUT_GROUPS.to_vec(), vec![], vec![]).is_err());
    }

    #[test]
    fn split_names_round_trip() {
        for name in SplitName::ALL {
            assert_eq!(name.as_str().parse::<SplitName>().unwrap(), name);
            assert_eq!(name.to_string(), name.as_str());
        }
        assert_eq!(SplitName::default().split(), Split::standard());
        assert!(matches!(
            "standard".parse::<SplitName>(),
            Err(DataError::Config { .. })
        ));
    }

    #[test]
    fn both_group_counts_are_sampled() {
        let s = Split::standard();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let ones = (0..1000)
            .filter(|_| s.sample_train_spec(&mut rng).groups().len() == 1)
            .count();
        assert!((400..600).contains(&ones), "{ones}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn train_sampler_never_yields_heldout(seed in any::<u64>(), stress in any::<bool>()) {
            let s = if stress { Split::unseen_pairs() } else { Split::standard() };
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..64 {
                let spec = s.sample_train_spec(&mut rng);
                prop_assert!(!s.is_heldout(&spec), "{}", spec);
                prop_assert!(spec.total_objects() <= crate::world::MAX_OBJECTS);
                let h = s.sample_heldout_spec(&mut rng);
                prop_assert!(s.is_heldout(&h), "{}", h);
            }
        }

        #[test]
        fn every_pair_and_count_is_drawn_in_training(seed in any::<u64>()) {
            // The sampler, not only the list: 4000 draws see every pair and every count.
            let s = Split::standard();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut pairs = std::collections::HashSet::new();
            let mut counts = std::collections::HashSet::new();
            for _ in 0..4000 {
                for g in s.sample_train_spec(&mut rng).groups() {
                    pairs.insert(g.pair());
                    counts.insert(g.count);
                }
            }
            prop_assert_eq!(pairs.len(), 12);
            prop_assert_eq!(counts.len(), 3);
        }
    }
}
