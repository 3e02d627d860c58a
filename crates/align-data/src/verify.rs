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
//! 3. **Shapes, by the nearest template.** A component is compared with the rendered
//!    template of every shape (the renderer's own rasterisation, [`shape_contains`]) at
//!    every box side `s` within one pixel of the component's larger box side `m`
//!    (`m − 1 ≤ s ≤ m + 1`) and every placement of that box within one pixel of the
//!    component's box; the score of a shape is its best intersection-over-union
//!    `|M ∩ T| / |M ∪ T|` with the component's pixel set `M`. The component takes the shape
//!    with the highest score (ties go to the earlier of circle, square, triangle), if that
//!    score is at least [`ShapeEvalConfig::min_iou`] (default **0.75**) and `m` is at least
//!    [`ShapeEvalConfig::min_side`] (default **5**); otherwise it has no shape (and counts
//!    as an extra object). This is what a detector does: a ragged edge pixel lowers the
//!    score a little and the object is still found, while which shape it is stays exact (a
//!    rendered shape matches its own template with score 1 and any other with less), and
//!    merged objects (two shapes touching), fragments and blobs match nothing.
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
use crate::render::shape_contains;
use crate::world::{Colour, Group, SceneSpec, Shape};

/// Thresholds of [`ShapeEval`] (see the module docs for their meaning).
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeEvalConfig {
    /// Largest Euclidean RGB distance (8-bit scale) at which a pixel still takes a palette
    /// colour. Must be in `(0, 127.5)`. Default 100.
    pub max_colour_distance: f32,
    /// Components smaller than this (pixels) are ignored. At least 1. Default 6.
    pub min_area: usize,
    /// Smallest intersection-over-union with the nearest shape template at which a
    /// component still has that shape. In `(0, 1]`. Default 0.75.
    pub min_iou: f64,
    /// Smallest larger box side (pixels) of a component that has a shape. At least 1.
    /// Default 5 (the world's objects are at least 5 px; a smaller component is a fragment).
    pub min_side: usize,
}

impl Default for ShapeEvalConfig {
    fn default() -> Self {
        Self {
            max_colour_distance: 100.0,
            min_area: 6,
            min_iou: 0.75,
            min_side: 5,
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
        if !(self.min_iou > 0.0 && self.min_iou <= 1.0) {
            return Err(DataError::config(
                "min_iou",
                format!("{} is outside (0, 1]", self.min_iou),
            ));
        }
        if self.min_side == 0 {
            return Err(DataError::config("min_side", "must be at least 1"));
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
    /// Intersection-over-union with the nearest shape template (the best over all shapes,
    /// whether or not it reaches [`ShapeEvalConfig::min_iou`]).
    pub iou: f64,
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

/// The range of offsets `o` (template origin minus component origin, one axis) at which a
/// template box of side `s` lies within one pixel of a component box of side `n`: from one
/// pixel beyond aligning the far edges to one pixel beyond aligning the near edges.
fn offsets(n: usize, s: usize) -> (isize, isize) {
    let d = n as isize - s as isize;
    (d.min(0) - 1, d.max(0) + 1)
}

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

    /// Classifies a component by the nearest shape template (see the module docs).
    ///
    /// `mask` is the component's pixel set inside its `width × height` bounding box, row
    /// by row (`mask[j · width + i]`). Returns the shape (or `None`) and the best
    /// intersection-over-union over all shapes.
    pub fn classify_mask(
        &self,
        width: usize,
        height: usize,
        mask: &[bool],
    ) -> (Option<Shape>, f64) {
        if width == 0 || height == 0 || mask.len() != width * height {
            return (None, 0.0);
        }
        let area = mask.iter().filter(|&&m| m).count();
        let m = width.max(height);
        let mut best: Option<(Shape, f64)> = None;
        for shape in Shape::ALL {
            let mut score = 0.0f64;
            for s in m.saturating_sub(1).max(1)..=m + 1 {
                let template = (0..s * s)
                    .filter(|&k| shape_contains(shape, s, k % s, k / s))
                    .count();
                // Box offsets (template origin minus component origin) within one pixel.
                let (lo_x, hi_x) = offsets(width, s);
                let (lo_y, hi_y) = offsets(height, s);
                for oy in lo_y..=hi_y {
                    for ox in lo_x..=hi_x {
                        let mut inter = 0usize;
                        for j in 0..height {
                            for i in 0..width {
                                if !mask[j * width + i] {
                                    continue;
                                }
                                let (ti, tj) = (i as isize - ox, j as isize - oy);
                                if ti >= 0
                                    && tj >= 0
                                    && shape_contains(shape, s, ti as usize, tj as usize)
                                {
                                    inter += 1;
                                }
                            }
                        }
                        let iou = inter as f64 / (area + template - inter) as f64;
                        score = score.max(iou);
                    }
                }
            }
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((shape, score));
            }
        }
        match best {
            Some((shape, iou)) if iou >= self.config.min_iou && m >= self.config.min_side => {
                (Some(shape), iou)
            }
            Some((_, iou)) => (None, iou),
            None => (None, 0.0),
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
        let mut mask = vec![false; width * height];
        for &p in pixels {
            mask[(p / w - y0) * width + (p % w - x0)] = true;
        }
        let (shape, iou) = self.classify_mask(width, height, &mask);
        DetectedObject {
            colour,
            shape,
            iou,
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

    /// Draws `pixels` (box coordinates) of one colour at `(x, y)` on a black 32 × 32 image.
    fn blob(pixels: &[(usize, usize)], x: usize, y: usize) -> Image {
        let mut img = Image::filled(32, 32, [0, 0, 0]);
        for &(i, j) in pixels {
            img.set_pixel_rgb8(x + i, y + j, Colour::Red.rgb());
        }
        img
    }

    fn rendered_pixels(shape: Shape, size: usize) -> Vec<(usize, usize)> {
        (0..size)
            .flat_map(|j| (0..size).map(move |i| (i, j)))
            .filter(|&(i, j)| shape_contains(shape, size, i, j))
            .collect()
    }

    #[test]
    fn the_nearest_template_is_exact_on_rendered_shapes() {
        let eval = ShapeEval::default();
        for size in 5..=16 {
            for shape in Shape::ALL {
                let found = eval.detect(&blob(&rendered_pixels(shape, size), 3, 4));
                assert_eq!(found.len(), 1);
                assert_eq!(found[0].shape, Some(shape), "{shape} {size}");
                assert!((found[0].iou - 1.0).abs() < 1e-12);
            }
        }
    }

    proptest::proptest! {
        /// One ragged edge pixel — a painted pixel removed from the boundary, or a
        /// background pixel next to the shape painted — never changes the shape found, at
        /// the world's object sizes and above.
        #[test]
        fn a_ragged_edge_pixel_is_tolerated(
            size in 6usize..=12,
            shape_index in 0usize..3,
            pick in proptest::prelude::any::<usize>(),
            add in proptest::prelude::any::<bool>(),
        ) {
            let shape = Shape::ALL[shape_index];
            let mut pixels = rendered_pixels(shape, size);
            let inside = |i: isize, j: isize| {
                i >= 0 && j >= 0 && shape_contains(shape, size, i as usize, j as usize)
            };
            // Boundary pixels (a 4-neighbour outside the shape) and pixels just outside.
            let boundary: Vec<(usize, usize)> = pixels
                .iter()
                .copied()
                .filter(|&(i, j)| {
                    let (i, j) = (i as isize, j as isize);
                    [(1, 0), (-1, 0), (0, 1), (0, -1)]
                        .iter()
                        .any(|(di, dj)| !inside(i + di, j + dj))
                })
                .collect();
            let outside: Vec<(usize, usize)> = (0..size + 2)
                .flat_map(|j| (0..size + 2).map(move |i| (i, j)))
                .filter(|&(i, j)| {
                    let (i, j) = (i as isize - 1, j as isize - 1);
                    !inside(i, j)
                        && [(1, 0), (-1, 0), (0, 1), (0, -1)]
                            .iter()
                            .any(|(di, dj)| inside(i + di, j + dj))
                })
                .collect();
            if add {
                // `outside` is in coordinates shifted by one pixel: shift the shape too.
                pixels = pixels.iter().map(|&(i, j)| (i + 1, j + 1)).collect();
                pixels.push(outside[pick % outside.len()]);
            } else {
                let gone = boundary[pick % boundary.len()];
                pixels.retain(|&p| p != gone);
            }
            let found = ShapeEval::default().detect(&blob(&pixels, 3, 3));
            proptest::prop_assert_eq!(found.len(), 1);
            proptest::prop_assert_eq!(found[0].shape, Some(shape), "{:?}", found[0]);
        }
    }

    #[test]
    fn merged_fragmented_and_shapeless_components_have_no_shape() {
        let eval = ShapeEval::default();
        // Two 6 px squares touching side by side: one 12 × 6 component.
        let two: Vec<(usize, usize)> = (0..6).flat_map(|j| (0..12).map(move |i| (i, j))).collect();
        let found = eval.detect(&blob(&two, 2, 2));
        assert_eq!((found.len(), found[0].shape), (1, None), "{found:?}");
        // A circle and a square of one colour touching diagonally through an edge pixel.
        let mut pair = rendered_pixels(Shape::Circle, 7);
        pair.extend(
            rendered_pixels(Shape::Square, 7)
                .iter()
                .map(|&(i, j)| (i + 7, j + 3)),
        );
        let found = eval.detect(&blob(&pair, 1, 1));
        assert_eq!((found.len(), found[0].shape), (1, None), "{found:?}");
        // A fragment: a 3 × 3 square (9 px, above min_area) is too small to be an object.
        let frag: Vec<(usize, usize)> = (0..3).flat_map(|j| (0..3).map(move |i| (i, j))).collect();
        let found = eval.detect(&blob(&frag, 5, 5));
        assert_eq!((found.len(), found[0].shape), (1, None), "{found:?}");
        // A ring (a square with its middle missing) and a thin bar.
        let ring: Vec<(usize, usize)> = (0..7)
            .flat_map(|j| (0..7).map(move |i| (i, j)))
            .filter(|&(i, j)| i == 0 || j == 0 || i == 6 || j == 6)
            .collect();
        assert_eq!(eval.detect(&blob(&ring, 5, 5))[0].shape, None);
        let bar: Vec<(usize, usize)> = (0..8)
            .map(|i| (i, 0))
            .chain((0..8).map(|i| (i, 1)))
            .collect();
        assert_eq!(eval.detect(&blob(&bar, 5, 5))[0].shape, None);
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
            ShapeEvalConfig {
                min_iou: 0.0,
                ..Default::default()
            },
            ShapeEvalConfig {
                min_iou: 1.5,
                ..Default::default()
            },
            ShapeEvalConfig {
                min_side: 0,
                ..Default::default()
            },
        ] {
            assert!(ShapeEval::new(bad).is_err());
        }
    }
}
