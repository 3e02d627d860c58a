//! ShapeEval: an exact verifier that reads a Shapes image back and scores it against a prompt.
//!
//! ## Algorithm
//!
//! 1. **Pixel colours.** Each pixel's values are mapped to the 8-bit scale,
//!    `u = clamp((v + 1) · 127.5, 0, 255)` per channel (no rounding; NaN counts as
//!    background). The pixel takes the palette colour `c` with the smallest Euclidean
//!    distance `‖u − rgb(c)‖₂` if that distance is at most
//!    [`ShapeEvalConfig::max_colour_distance`] (default **100**), and is background
//!    otherwise. Palette colours are ≥ 255 apart from each other and from black, so with a
//!    threshold below 127.5 the balls around them are disjoint and never reach the
//!    background: a pixel is coloured `c` exactly when it is within the threshold of `c`, and
//!    anything far from every palette colour (dark, grey, mixed) is background. Under uniform
//!    noise in `[-1, 1]` a pixel falls in one ball with probability
//!    `(π/6 · 100³) / 255³ ≈ 3.2 %`.
//! 2. **Components.** 4-connected components of equal colour label. Components with fewer
//!    than [`ShapeEvalConfig::min_area`] pixels (default **6**) are dropped as specks; the
//!    smallest rendered object (a 5 px triangle) has 17 pixels.
//! 3. **Shapes.** From the component's bounding box (`w × h`) and area `A`: the fill ratio
//!    `f = A / (w h)`, the aspect ratio `w / h`, and the upper-half fraction `q` = share of the
//!    component's pixels in the top half of its box (a middle row of an odd-height box counts
//!    ½). Rendered squares have `f = 1`, `q = ½`; circles `f ∈ [0.75, 0.89]` (→ `π/4` for
//!    large sizes), `q = ½`; apex-up triangles `f ∈ [0.53, 0.68]` (→ ½), `q ∈ [0.26, 0.34]`
//!    (→ ¼). The rule, with the default thresholds:
//!    - aspect outside `[2/3, 3/2]` → no shape;
//!    - `q < 0.42` and `0.40 ≤ f ≤ 0.75` → triangle;
//!    - `q ≥ 0.42` and `f ≥ 0.94` → square;
//!    - `q ≥ 0.42` and `0.70 ≤ f < 0.94` → circle;
//!    - anything else → no shape (it still counts as an extra object).
//!
//!    The unit tests check that every shape rendered at every size from 5 to 32 px is
//!    classified correctly.
//! 4. **Score.** For each group of the prompt, `found` = number of components with the
//!    group's colour and shape. Then
//!    - `counts_correct`: `found == count` for every group;
//!    - `extra_objects`: components whose `(colour, shape)` matches no group (including
//!      components with no shape);
//!    - `colours_correct`: the set of colours of all components equals the set of the
//!      prompt's colours;
//!    - `pass = counts_correct && extra_objects == 0` (which implies `colours_correct`).
//!
//!    `partial_credit` is the fraction of these `3G + 1` binary attributes that hold (`G` =
//!    number of groups): for each group (a) some component has its colour, (b) some component
//!    has its colour and shape, (c) `found == count`; plus (d) `extra_objects == 0`. It is 1
//!    exactly when `pass` is true.

use crate::error::{DataError, Result};
use crate::prompt::parse_prompt;
use crate::raster::Image;
use crate::world::{Colour, Group, SceneSpec, Shape};

/// Thresholds of [`ShapeEval`] (see the module docs for their meaning).
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeEvalConfig {
    /// Largest Euclidean RGB distance (8-bit scale) at which a pixel still takes a palette
    /// colour. Must be in `(0, 127.5)`. Default 100.
    pub max_colour_distance: f32,
    /// Components smaller than this (pixels) are ignored. At least 1. Default 6.
    pub min_area: usize,
    /// Smallest allowed `min(w/h, h/w)` of a component's box. Default 2/3.
    pub min_aspect: f64,
    /// Upper-half fraction below which a component is triangle-like. Default 0.42.
    pub triangle_max_upper: f64,
    /// Fill-ratio range of a triangle. Default `[0.40, 0.75]`.
    pub triangle_fill: (f64, f64),
    /// Smallest fill ratio of a circle. Default 0.70.
    pub circle_min_fill: f64,
    /// Smallest fill ratio of a square. Default 0.94.
    pub square_min_fill: f64,
}

impl Default for ShapeEvalConfig {
    fn default() -> Self {
        Self {
            max_colour_distance: 100.0,
            min_area: 6,
            min_aspect: 2.0 / 3.0,
            triangle_max_upper: 0.42,
            triangle_fill: (0.40, 0.75),
            circle_min_fill: 0.70,
            square_min_fill: 0.94,
        }
    }
}

impl ShapeEvalConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        let d = self.max_colour_distance;
        if !(d > 0.0 && d < 127.5) {
            return Err(DataError::config(
                "max_colour_distance",
                format!("{d} is outside (0, 127.5)"),
            ));
        }
        if self.min_area == 0 {
            return Err(DataError::config("min_area", "must be at least 1"));
        }
        if !(self.min_aspect > 0.0 && self.min_aspect <= 1.0) {
            return Err(DataError::config(
                "min_aspect",
                format!("{} is outside (0, 1]", self.min_aspect),
            ));
        }
        let (lo, hi) = self.triangle_fill;
        if !(lo <= hi && self.circle_min_fill <= self.square_min_fill) {
            return Err(DataError::config(
                "triangle_fill",
                "fill ranges must be ordered (lo ≤ hi, circle ≤ square)",
            ));
        }
        Ok(())
    }
}

/// One connected component found in an image.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectedObject {
    /// Its palette colour.
    pub colour: Colour,
    /// Its shape, or `None` if it looks like none of them.
    pub shape: Option<Shape>,
    /// Number of pixels.
    pub area: usize,
    /// Bounding box: left column.
    pub x: usize,
    /// Bounding box: top row.
    pub y: usize,
    /// Bounding box width.
    pub width: usize,
    /// Bounding box height.
    pub height: usize,
    /// `area / (width · height)`.
    pub fill: f64,
    /// Share of pixels in the upper half of the box.
    pub upper_fraction: f64,
}

/// The verdict on one group of the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupResult {
    /// The group asked for.
    pub group: Group,
    /// How many objects it asked for (`group.count`).
    pub expected: usize,
    /// How many components have its colour and shape.
    pub found: usize,
    /// Whether any component has its colour.
    pub colour_present: bool,
}

/// ShapeEval's verdict on an image (see the module docs for every field's definition).
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeEvalResult {
    /// One entry per group, in prompt order.
    pub groups: Vec<GroupResult>,
    /// Every component of at least `min_area` pixels.
    pub objects: Vec<DetectedObject>,
    /// Components that match no group's colour and shape.
    pub extra_objects: usize,
    /// The set of component colours equals the set of the prompt's colours.
    pub colours_correct: bool,
    /// Every group has exactly its count.
    pub counts_correct: bool,
    /// `counts_correct && extra_objects == 0`.
    pub pass: bool,
    /// Fraction of the `3G + 1` binary attributes that hold, in `[0, 1]`.
    pub partial_credit: f64,
}

/// The exact Shapes verifier.
///
/// ```
/// use align_data::{ShapeEval, Image};
/// let eval = ShapeEval::default();
/// let black = Image::filled(32, 32, [0, 0, 0]);
/// let r = eval.score_prompt(&black, "one red circle").unwrap();
/// assert!(!r.pass && r.groups[0].found == 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShapeEval {
    config: ShapeEvalConfig,
}

/// Label of a background pixel in the label map.
const BACKGROUND_LABEL: u8 = u8::MAX;

impl ShapeEval {
    /// A verifier with custom thresholds (validated).
    pub fn new(config: ShapeEvalConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// Its thresholds.
    pub fn config(&self) -> &ShapeEvalConfig {
        &self.config
    }

    /// The palette colour of one pixel (values in `[-1, 1]`), or `None` for background.
    pub fn classify_pixel(&self, v: [f32; 3]) -> Option<Colour> {
        if v.iter().any(|x| x.is_nan()) {
            return None;
        }
        let u = v.map(|x| ((x + 1.0) * 127.5).clamp(0.0, 255.0));
        let max2 = self.config.max_colour_distance * self.config.max_colour_distance;
        let mut best: Option<(Colour, f32)> = None;
        for c in Colour::ALL {
            let rgb = c.rgb();
            let d2: f32 = (0..3).map(|k| (u[k] - f32::from(rgb[k])).powi(2)).sum();
            if d2 <= max2 && best.is_none_or(|(_, b)| d2 < b) {
                best = Some((c, d2));
            }
        }
        best.map(|(c, _)| c)
    }

    /// Classifies a component from its box and pixel statistics (see the module docs).
    pub fn classify_shape(
        &self,
        width: usize,
        height: usize,
        area: usize,
        upper: f64,
    ) -> Option<Shape> {
        if width == 0 || height == 0 {
            return None;
        }
        let (w, h) = (width as f64, height as f64);
        let aspect = (w / h).min(h / w);
        if aspect < self.config.min_aspect {
            return None;
        }
        let fill = area as f64 / (w * h);
        let cfg = &self.config;
        if upper < cfg.triangle_max_upper {
            let (lo, hi) = cfg.triangle_fill;
            return (lo..=hi).contains(&fill).then_some(Shape::Triangle);
        }
        if fill >= cfg.square_min_fill {
            Some(Shape::Square)
        } else if fill >= cfg.circle_min_fill {
            Some(Shape::Circle)
        } else {
            None
        }
    }

    /// Finds every 4-connected single-colour component of at least `min_area` pixels, in
    /// raster order of their first pixel.
    pub fn detect(&self, image: &Image) -> Vec<DetectedObject> {
        let (w, h) = (image.width, image.height);
        let mut labels = vec![BACKGROUND_LABEL; w * h];
        for y in 0..h {
            for x in 0..w {
                if let Some(c) = image.pixel(x, y).and_then(|v| self.classify_pixel(v)) {
                    labels[y * w + x] = c as u8;
                }
            }
        }
        let mut seen = vec![false; w * h];
        let mut objects = Vec::new();
        let mut stack = Vec::new();
        let mut pixels = Vec::new();
        for start in 0..w * h {
            let label = labels[start];
            if label == BACKGROUND_LABEL || seen[start] {
                continue;
            }
            seen[start] = true;
            stack.push(start);
            pixels.clear();
            while let Some(p) = stack.pop() {
                pixels.push(p);
                let (x, y) = (p % w, p / w);
                let mut visit = |q: usize| {
                    if !seen[q] && labels[q] == label {
                        seen[q] = true;
                        stack.push(q);
                    }
                };
                if x > 0 {
                    visit(p - 1);
                }
                if x + 1 < w {
                    visit(p + 1);
                }
                if y > 0 {
                    visit(p - w);
                }
                if y + 1 < h {
                    visit(p + w);
                }
            }
            if pixels.len() < self.config.min_area {
                continue;
            }
            let colour = Colour::ALL[usize::from(label)];
            objects.push(self.describe(colour, &pixels, w));
        }
        objects
    }

    fn describe(&self, colour: Colour, pixels: &[usize], w: usize) -> DetectedObject {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for &p in pixels {
            let (x, y) = (p % w, p / w);
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        let (width, height) = (x1 - x0 + 1, y1 - y0 + 1);
        // Row `j` (relative) is in the upper half when its centre `j + ½ < h / 2`.
        let upper: f64 = pixels
            .iter()
            .map(|&p| {
                let j2 = 2 * (p / w - y0) + 1;
                match j2.cmp(&height) {
                    std::cmp::Ordering::Less => 1.0,
                    std::cmp::Ordering::Equal => 0.5,
                    std::cmp::Ordering::Greater => 0.0,
                }
            })
            .sum();
        let area = pixels.len();
        let upper_fraction = upper / area as f64;
        DetectedObject {
            colour,
            shape: self.classify_shape(width, height, area, upper_fraction),
            area,
            x: x0,
            y: y0,
            width,
            height,
            fill: area as f64 / (width * height) as f64,
            upper_fraction,
        }
    }

    /// Scores an image against a scene specification.
    pub fn score(&self, image: &Image, spec: &SceneSpec) -> ShapeEvalResult {
        let objects = self.detect(image);
        let groups: Vec<GroupResult> = spec
            .groups()
            .iter()
            .map(|g| GroupResult {
                group: *g,
                expected: usize::from(g.count),
                found: objects
                    .iter()
                    .filter(|o| o.colour == g.colour && o.shape == Some(g.shape))
                    .count(),
                colour_present: objects.iter().any(|o| o.colour == g.colour),
            })
            .collect();
        let extra_objects = objects
            .iter()
            .filter(|o| {
                !spec
                    .groups()
                    .iter()
                    .any(|g| o.colour == g.colour && o.shape == Some(g.shape))
            })
            .count();
        let colours_correct = Colour::ALL.iter().all(|&c| {
            objects.iter().any(|o| o.colour == c) == spec.groups().iter().any(|g| g.colour == c)
        });
        let counts_correct = groups.iter().all(|g| g.found == g.expected);
        let pass = counts_correct && extra_objects == 0;
        let attributes = 3 * groups.len() + 1;
        let right = groups
            .iter()
            .map(|g| {
                usize::from(g.colour_present)
                    + usize::from(g.found > 0)
                    + usize::from(g.found == g.expected)
            })
            .sum::<usize>()
            + usize::from(extra_objects == 0);
        ShapeEvalResult {
            groups,
            objects,
            extra_objects,
            colours_correct,
            counts_correct,
            pass,
            partial_credit: right as f64 / attributes as f64,
        }
    }

    /// Parses `prompt` (see [`parse_prompt`]) and scores the image against it.
    pub fn score_prompt(&self, image: &Image, prompt: &str) -> Result<ShapeEvalResult> {
        Ok(self.score(image, &parse_prompt(prompt)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{PlacedObject, draw_objects, render_seeded};
    use crate::world::WorldConfig;

    #[test]
    fn every_shape_at_every_size_is_classified() {
        let eval = ShapeEval::default();
        for size in 5..=32 {
            for shape in Shape::ALL {
                for colour in Colour::ALL {
                    let obj = PlacedObject {
                        colour,
                        shape,
                        x: 0,
                        y: 0,
                        size,
                    };
                    let img = draw_objects(32, &[obj]);
                    let found = eval.detect(&img);
                    assert_eq!(found.len(), 1, "{shape} {size}");
                    assert_eq!(found[0].colour, colour);
                    assert_eq!(
                        found[0].shape,
                        Some(shape),
                        "{shape} {size}: {:?}",
                        found[0]
                    );
                    assert_eq!((found[0].width, found[0].height), (size, size));
                }
            }
        }
    }

    #[test]
    fn pixel_classification() {
        let eval = ShapeEval::default();
        let unit = |rgb: [u8; 3]| rgb.map(crate::raster::u8_to_unit);
        assert_eq!(eval.classify_pixel(unit([255, 0, 0])), Some(Colour::Red));
        assert_eq!(eval.classify_pixel(unit([200, 40, 30])), Some(Colour::Red));
        assert_eq!(
            eval.classify_pixel(unit([230, 220, 40])),
            Some(Colour::Yellow)
        );
        assert_eq!(eval.classify_pixel(unit([0, 0, 0])), None);
        assert_eq!(eval.classify_pixel(unit([128, 128, 128])), None);
        assert_eq!(eval.classify_pixel(unit([128, 0, 0])), None);
        assert_eq!(eval.classify_pixel([f32::NAN, 1.0, -1.0]), None);
        assert_eq!(eval.classify_pixel([3.0, -4.0, -4.0]), Some(Colour::Red));
    }

    #[test]
    fn wrong_images_fail() {
        let eval = ShapeEval::default();
        let cfg = WorldConfig::default();
        let asked: SceneSpec = "two red circles and one blue square".parse().unwrap();
        // Wrong count.
        let img = render_seeded(
            &"three red circles and one blue square".parse().unwrap(),
            &cfg,
            1,
        )
        .unwrap()
        .image;
        let r = eval.score(&img, &asked);
        assert!(!r.pass && !r.counts_correct && r.colours_correct && r.extra_objects == 0);
        assert_eq!(r.groups[0].found, 3);
        assert!((r.partial_credit - 6.0 / 7.0).abs() < 1e-12);
        // Wrong colour of one group.
        let img = render_seeded(
            &"two red circles and one green square".parse().unwrap(),
            &cfg,
            2,
        )
        .unwrap()
        .image;
        let r = eval.score(&img, &asked);
        assert!(!r.pass && !r.colours_correct && r.extra_objects == 1);
        assert!((r.partial_credit - 3.0 / 7.0).abs() < 1e-12);
        // Wrong shape.
        let img = render_seeded(
            &"two red triangles and one blue square".parse().unwrap(),
            &cfg,
            3,
        )
        .unwrap()
        .image;
        let r = eval.score(&img, &asked);
        assert!(!r.pass && r.colours_correct && r.extra_objects == 2);
        // Empty image.
        let r = eval.score(&Image::filled(32, 32, [0, 0, 0]), &asked);
        assert!(!r.pass && r.partial_credit > 0.0 && r.partial_credit < 0.2);
    }

    #[test]
    fn specks_are_ignored() {
        let eval = ShapeEval::default();
        let spec: SceneSpec = "one green triangle".parse().unwrap();
        let mut img = render_seeded(&spec, &WorldConfig::default(), 9)
            .unwrap()
            .image;
        // A 5-pixel red speck (below min_area) and isolated noise pixels.
        for (x, y) in [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (31, 31), (0, 31)] {
            img.set_pixel_rgb8(x, y, [255, 0, 0]);
        }
        let r = eval.score(&img, &spec);
        assert!(r.pass, "{r:?}");
        assert!((r.partial_credit - 1.0).abs() < 1e-12);
    }

    #[test]
    fn config_validation() {
        assert!(ShapeEval::new(ShapeEvalConfig::default()).is_ok());
        for bad in [
            ShapeEvalConfig {
                max_colour_distance: 200.0,
                ..Default::default()
            },
            ShapeEvalConfig {
                max_colour_distance: f32::NAN,
                ..Default::default()
            },
            ShapeEvalConfig {
                min_area: 0,
                ..Default::default()
            },
        ] {
            assert!(ShapeEval::new(bad).is_err());
        }
    }
}
