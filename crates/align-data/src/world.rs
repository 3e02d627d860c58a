//! The Shapes world: shapes, colours, scene specifications and the world's configuration.
//!
//! A scene is drawn on a plain black background and holds one or two *groups*. A group is
//! `count` identical objects of one [`Colour`] and one [`Shape`]; the two groups of a scene
//! differ in their `(colour, shape)` pair. The prompt language can say any count up to
//! [`MAX_COUNT`], but the world's scenes ([`SceneSpec::world`], the universe every
//! [`Split`](crate::Split) divides) hold at most [`MAX_OBJECTS`] objects: one group of 1–3,
//! or two groups of 1 + 1, 1 + 2 or 2 + 1. Palette colours are saturated RGB corners, at least 255 apart (Euclidean, 8-bit
//! scale) from each other and from the background, which is what lets
//! [`ShapeEval`](crate::ShapeEval) read scenes back exactly.

use std::fmt;

use crate::error::{DataError, Result};

/// The largest number of objects in one group.
pub const MAX_COUNT: u8 = 4;

/// The largest number of groups in one scene.
pub const MAX_GROUPS: usize = 2;

/// The largest number of objects in one scene of the world ([`SceneSpec::world`]).
///
/// Chosen by measurement (world v2): exact accuracy of small text-to-image models falls
/// steeply with the number of objects in a scene, and three objects of 6–7 px is what a
/// 16 × 16 image holds with room to spare.
pub const MAX_OBJECTS: usize = 3;

/// The background colour (black), 8-bit RGB.
pub const BACKGROUND: [u8; 3] = [0, 0, 0];

/// A shape of the Shapes world. Every shape is drawn inside a `size × size` square box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    /// A filled disc of diameter `size`.
    Circle,
    /// A filled axis-aligned square of side `size`.
    Square,
    /// A filled isosceles triangle, apex up, base `size` on the bottom row.
    Triangle,
}

impl Shape {
    /// All shapes, in a fixed order.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The singular English noun (`"circle"`).
    pub fn singular(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// The plural English noun (`"circles"`).
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
        }
    }

    /// The noun to use with `count` objects: singular for 1, plural otherwise.
    pub fn noun(self, count: u8) -> &'static str {
        if count == 1 {
            self.singular()
        } else {
            self.plural()
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.singular())
    }
}

/// A palette colour of the Shapes world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    /// `(255, 0, 0)`.
    Red,
    /// `(0, 255, 0)`.
    Green,
    /// `(0, 0, 255)`.
    Blue,
    /// `(255, 255, 0)`.
    Yellow,
}

impl Colour {
    /// All palette colours, in a fixed order.
    pub const ALL: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];

    /// The exact 8-bit RGB value the renderer paints.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [255, 0, 0],
            Colour::Green => [0, 255, 0],
            Colour::Blue => [0, 0, 255],
            Colour::Yellow => [255, 255, 0],
        }
    }

    /// The English adjective (`"red"`).
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `count` objects of one colour and one shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group {
    /// Number of objects, `1..=4`.
    pub count: u8,
    /// Their colour.
    pub colour: Colour,
    /// Their shape.
    pub shape: Shape,
}

impl Group {
    /// A group; fails unless `1 ≤ count ≤ 4`.
    pub fn new(count: u8, colour: Colour, shape: Shape) -> Result<Self> {
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(DataError::scene(format!(
                "group count {count} is outside 1..={MAX_COUNT}"
            )));
        }
        Ok(Self {
            count,
            colour,
            shape,
        })
    }

    /// The group's `(colour, shape)` pair.
    pub fn pair(&self) -> (Colour, Shape) {
        (self.colour, self.shape)
    }
}

/// What a scene contains: one or two [`Group`]s with distinct `(colour, shape)` pairs.
///
/// The order of the groups is the order of the prompt (`"two blue squares and one yellow
/// triangle"` has the blue squares first). The fields are private so that every value obeys
/// the world's rules; build one with [`SceneSpec::new`], [`SceneSpec::single`] or
/// [`SceneSpec::pair`], or parse a prompt with `str::parse`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SceneSpec {
    groups: Vec<Group>,
}

impl SceneSpec {
    /// A scene from its groups: 1 or 2 groups, each with `1 ≤ count ≤ 4`, with distinct
    /// `(colour, shape)` pairs.
    pub fn new(groups: Vec<Group>) -> Result<Self> {
        if groups.is_empty() || groups.len() > MAX_GROUPS {
            return Err(DataError::scene(format!(
                "a scene has 1..={MAX_GROUPS} groups, got {}",
                groups.len()
            )));
        }
        for g in &groups {
            Group::new(g.count, g.colour, g.shape)?;
        }
        if groups.len() == 2 && groups[0].pair() == groups[1].pair() {
            return Err(DataError::scene(format!(
                "the two groups must differ in colour or shape (both are {} {})",
                groups[0].colour, groups[0].shape
            )));
        }
        Ok(Self { groups })
    }

    /// A one-group scene.
    pub fn single(count: u8, colour: Colour, shape: Shape) -> Result<Self> {
        Self::new(vec![Group::new(count, colour, shape)?])
    }

    /// A two-group scene.
    pub fn pair(first: Group, second: Group) -> Result<Self> {
        Self::new(vec![first, second])
    }

    /// The groups, in prompt order.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The total number of objects, `Σ count`.
    pub fn total_objects(&self) -> usize {
        self.groups.iter().map(|g| usize::from(g.count)).sum()
    }

    /// Every scene of the world: 48 one-group scenes (12 pairs × 4 counts) followed by 2112
    /// ordered two-group scenes (12 × 11 ordered pairs × 16 count combinations), in a fixed
    /// order.
    pub fn all() -> Vec<SceneSpec> {
        let groups: Vec<Group> = (1..=MAX_COUNT)
            .flat_map(|count| {
                Colour::ALL.into_iter().flat_map(move |colour| {
                    Shape::ALL.into_iter().map(move |shape| Group {
                        count,
                        colour,
                        shape,
                    })
                })
            })
            .collect();
        let mut out: Vec<SceneSpec> = groups
            .iter()
            .map(|&g| SceneSpec { groups: vec![g] })
            .collect();
        for &a in &groups {
            for &b in &groups {
                if a.pair() != b.pair() {
                    out.push(SceneSpec { groups: vec![a, b] });
                }
            }
        }
        out
    }

    /// The scenes of the world: every scene of [`SceneSpec::all`] with at most
    /// [`MAX_OBJECTS`] objects, in the same order — 36 one-group scenes (12 pairs × counts
    /// 1–3) followed by 396 ordered two-group scenes (132 ordered pairs × counts 1 + 1,
    /// 1 + 2, 2 + 1).
    pub fn world() -> Vec<SceneSpec> {
        Self::all()
            .into_iter()
            .filter(|s| s.total_objects() <= MAX_OBJECTS)
            .collect()
    }
}

/// Configuration of the Shapes world's renderer.
///
/// Object sizes are the side of the square box a shape is drawn in. The defaults (16×16
/// images, objects 6–7 px, a gap of at least 2 px between objects) fit the world's largest
/// scene ([`MAX_OBJECTS`] = 3 objects) in a 2 × 2 arrangement; larger scenes of
/// [`SceneSpec::all`] need a larger image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldConfig {
    /// Image width and height in pixels (square images). Default 16.
    pub size: usize,
    /// Smallest object box side in pixels, at least 5. Default 6.
    pub min_object: usize,
    /// Largest object box side in pixels, `≥ min_object` and `≤ size`. Default 7.
    pub max_object: usize,
    /// Minimum number of background pixels between the boxes of two objects, at least 1
    /// (so that 4-connected components never merge). Default 2: with a 1-pixel gap, models
    /// trained on the world draw touching, merged objects far more often (measured).
    pub gap: usize,
    /// Whole-scene placement attempts before [`DataError::Placement`]. Default 64.
    pub max_attempts: usize,
    /// Position draws per object within one attempt. Default 200.
    pub tries_per_object: usize,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            size: 16,
            min_object: 6,
            max_object: 7,
            gap: 2,
            max_attempts: 64,
            tries_per_object: 200,
        }
    }
}

impl WorldConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        if self.min_object < 5 {
            return Err(DataError::config(
                "min_object",
                format!(
                    "{} is below 5 px; smaller shapes cannot be told apart",
                    self.min_object
                ),
            ));
        }
        if self.max_object < self.min_object {
            return Err(DataError::config(
                "max_object",
                format!(
                    "{} is below min_object = {}",
                    self.max_object, self.min_object
                ),
            ));
        }
        if self.max_object > self.size {
            return Err(DataError::config(
                "max_object",
                format!("{} exceeds the image size {}", self.max_object, self.size),
            ));
        }
        if self.size > 4096 {
            return Err(DataError::config(
                "size",
                format!("{} exceeds 4096", self.size),
            ));
        }
        if self.gap == 0 {
            return Err(DataError::config(
                "gap",
                "must be at least 1 so that objects never touch",
            ));
        }
        if self.max_attempts == 0 {
            return Err(DataError::config("max_attempts", "must be at least 1"));
        }
        if self.tries_per_object == 0 {
            return Err(DataError::config("tries_per_object", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_is_far_apart() {
        let mut all = vec![BACKGROUND];
        all.extend(Colour::ALL.iter().map(|c| c.rgb()));
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                let d2: i32 = (0..3)
                    .map(|k| (i32::from(a[k]) - i32::from(b[k])).pow(2))
                    .sum();
                assert!(d2 >= 255 * 255, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn scene_rules() {
        assert!(SceneSpec::single(0, Colour::Red, Shape::Circle).is_err());
        assert!(SceneSpec::single(5, Colour::Red, Shape::Circle).is_err());
        assert!(SceneSpec::new(vec![]).is_err());
        let g = Group::new(1, Colour::Red, Shape::Circle).unwrap();
        let h = Group::new(2, Colour::Red, Shape::Circle).unwrap();
        assert!(SceneSpec::pair(g, h).is_err());
        assert!(SceneSpec::new(vec![g, g, g]).is_err());
        // Struct literals bypass `Group::new`; `SceneSpec::new` still checks the count.
        let bad = Group {
            count: 9,
            colour: Colour::Red,
            shape: Shape::Circle,
        };
        assert!(SceneSpec::new(vec![bad]).is_err());
        let s = SceneSpec::pair(g, Group::new(4, Colour::Blue, Shape::Circle).unwrap()).unwrap();
        assert_eq!(s.total_objects(), 5);
    }

    #[test]
    fn all_scenes_are_valid_and_distinct() {
        let all = SceneSpec::all();
        assert_eq!(all.len(), 48 + 2112);
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
        for s in &all {
            assert!(SceneSpec::new(s.groups().to_vec()).is_ok());
        }
    }

    #[test]
    fn the_world_is_the_scenes_of_at_most_three_objects() {
        let world = SceneSpec::world();
        assert_eq!(world.len(), 36 + 396);
        let ones = world.iter().filter(|s| s.groups().len() == 1).count();
        assert_eq!(ones, 36);
        // Counted independently: ordered pairs of distinct pairs × count combinations.
        let two_group_counts = (1..=3u8)
            .flat_map(|a| (1..=3u8).map(move |b| (a, b)))
            .filter(|(a, b)| usize::from(a + b) <= MAX_OBJECTS)
            .count();
        assert_eq!(world.len() - ones, 12 * 11 * two_group_counts);
        assert!(world.iter().all(|s| s.total_objects() <= MAX_OBJECTS));
        let all = SceneSpec::all();
        for s in &all {
            assert_eq!(world.contains(s), s.total_objects() <= MAX_OBJECTS, "{s}");
        }
    }

    #[test]
    fn config_validation() {
        assert!(WorldConfig::default().validate().is_ok());
        let bad = [
            WorldConfig {
                min_object: 4,
                ..Default::default()
            },
            WorldConfig {
                max_object: 5,
                ..Default::default()
            },
            WorldConfig {
                size: 6,
                ..Default::default()
            },
            WorldConfig {
                gap: 0,
                ..Default::default()
            },
            WorldConfig {
                max_attempts: 0,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(
                matches!(c.validate(), Err(DataError::Config { .. })),
                "{c:?}"
            );
        }
    }
}
