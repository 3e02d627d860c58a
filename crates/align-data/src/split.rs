//! The train / held-out split of attribute combinations.
//!
//! Compositional generalisation is measured on combinations a model never saw in
//! pretraining. [`Split::standard`] holds out:
//!
//! - three `(colour, shape)` pairs, [`HELDOUT_PAIRS`]: red triangle, green square, blue
//!   circle (one per shape; yellow keeps all its shapes, and every colour and every shape
//!   still appears in training);
//! - four unordered combinations of two *training* pairs, [`HELDOUT_COMBOS`]:
//!   {red circle, blue triangle}, {green triangle, yellow square},
//!   {yellow circle, red square}, {blue square, green circle}.
//!
//! A scene is held out when any of its groups has a held-out pair, or when it has two groups
//! whose pairs form a held-out combination (in either order). Counts play no part. Of the
//! world's 2160 scenes, that makes 36 one-group + 1024 two-group training scenes and
//! 12 one-group + 1088 two-group held-out scenes.
//!
//! Sampling from a part ([`Split::sample_spec`]) first picks one or two groups with
//! probability ½ each, then a scene uniformly among that part's scenes with that many groups.
//! It only ever draws from the precomputed list of the part, so the training sampler cannot
//! produce a held-out scene.

use rand_core::RngCore;

use crate::error::{DataError, Result};
use crate::sampling;
use crate::world::{Colour, SceneSpec, Shape};

/// The `(colour, shape)` pairs held out by [`Split::standard`].
pub const HELDOUT_PAIRS: [(Colour, Shape); 3] = [
    (Colour::Red, Shape::Triangle),
    (Colour::Green, Shape::Square),
    (Colour::Blue, Shape::Circle),
];

/// The unordered two-group combinations of training pairs held out by [`Split::standard`].
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

/// Which side of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SplitPart {
    /// Combinations used for pretraining and in-distribution evaluation.
    Train,
    /// Combinations never seen in pretraining.
    HeldOut,
}

/// A split of the world's scenes into train and held-out parts (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
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
    /// The standard split: [`HELDOUT_PAIRS`] and [`HELDOUT_COMBOS`].
    pub fn standard() -> Self {
        Self::build(HELDOUT_PAIRS.to_vec(), HELDOUT_COMBOS.to_vec())
    }

    /// A custom split. Fails when either part would have no one-group or no two-group scene
    /// (so that both samplers always have something to draw).
    pub fn new(
        heldout_pairs: Vec<(Colour, Shape)>,
        heldout_combos: Vec<[(Colour, Shape); 2]>,
    ) -> Result<Self> {
        let split = Self::build(heldout_pairs, heldout_combos);
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
        heldout_pairs: Vec<(Colour, Shape)>,
        heldout_combos: Vec<[(Colour, Shape); 2]>,
    ) -> Self {
        let mut split = Self {
            heldout_pairs,
            heldout_combos,
            lists: Default::default(),
        };
        for spec in SceneSpec::all() {
            let p = part_index(split.part(&spec));
            let g = spec.groups().len() - 1;
            split.lists[p][g].push(spec);
        }
        split
    }

    /// The held-out `(colour, shape)` pairs.
    pub fn heldout_pairs(&self) -> &[(Colour, Shape)] {
        &self.heldout_pairs
    }

    /// The held-out unordered combinations.
    pub fn heldout_combos(&self) -> &[[(Colour, Shape); 2]] {
        &self.heldout_combos
    }

    /// Whether `spec` is held out: a group has a held-out pair, or two groups form a
    /// held-out combination in either order.
    pub fn is_heldout(&self, spec: &SceneSpec) -> bool {
        let groups = spec.groups();
        if groups
            .iter()
            .any(|g| self.heldout_pairs.contains(&g.pair()))
        {
            return true;
        }
        if let [a, b] = groups {
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
    /// [`SceneSpec::all`]'s order.
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
        // Invariant: `standard` and `new` only build splits whose four lists are non-empty.
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
    use crate::world::Group;
    use proptest::prelude::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    #[test]
    fn sizes_of_the_standard_split() {
        let s = Split::standard();
        assert_eq!(s.specs(SplitPart::Train, 1).len(), 36);
        assert_eq!(s.specs(SplitPart::Train, 2).len(), 1024);
        assert_eq!(s.specs(SplitPart::HeldOut, 1).len(), 12);
        assert_eq!(s.specs(SplitPart::HeldOut, 2).len(), 1088);
        assert!(s.specs(SplitPart::Train, 3).is_empty());
        for spec in s.specs(SplitPart::Train, 2) {
            assert!(!s.is_heldout(spec));
        }
        for spec in s.all_specs(SplitPart::HeldOut) {
            assert!(s.is_heldout(&spec));
        }
    }

    #[test]
    fn every_colour_and_shape_is_trained() {
        let s = Split::standard();
        let train = s.all_specs(SplitPart::Train);
        for c in Colour::ALL {
            assert!(
                train
                    .iter()
                    .any(|t| t.groups().iter().any(|g| g.colour == c))
            );
        }
        for sh in Shape::ALL {
            assert!(
                train
                    .iter()
                    .any(|t| t.groups().iter().any(|g| g.shape == sh))
            );
        }
    }

    #[test]
    fn combos_are_held_out_in_both_orders() {
        let s = Split::standard();
        let a = Group::new(2, Colour::Red, Shape::Circle).unwrap();
        let b = Group::new(1, Colour::Blue, Shape::Triangle).unwrap();
        assert!(s.is_heldout(&SceneSpec::pair(a, b).unwrap()));
        assert!(s.is_heldout(&SceneSpec::pair(b, a).unwrap()));
        assert!(!s.is_heldout(&SceneSpec::new(vec![a]).unwrap()));
        assert!(!s.is_heldout(&SceneSpec::new(vec![b]).unwrap()));
        let h = SceneSpec::single(1, Colour::Green, Shape::Square).unwrap();
        assert!(s.is_heldout(&h));
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
        fn train_sampler_never_yields_heldout(seed in any::<u64>()) {
            let s = Split::standard();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..64 {
                let spec = s.sample_train_spec(&mut rng);
                prop_assert!(!s.is_heldout(&spec), "{}", spec);
                let h = s.sample_heldout_spec(&mut rng);
                prop_assert!(s.is_heldout(&h), "{}", h);
            }
        }
    }
}
