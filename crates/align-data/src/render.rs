//! Rendering a [`SceneSpec`] to an [`Image`], deterministically from a seed.
//!
//! ## Rasterisation
//!
//! Each object is drawn inside a `s × s` box (`s` = its size). A pixel `(i, j)` of the box
//! (column `i`, row `j`, row 0 at the top) is painted when its centre `(u, v) = (i + ½, j + ½)`
//! lies in the shape, with `r = s / 2`:
//!
//! - square: always (the whole box);
//! - circle: `(u − r)² + (v − r)² ≤ r²`;
//! - triangle (apex up, base on the bottom row): `|u − r| ≤ v / 2 + ¼` (the `¼` makes the
//!   apex at least one pixel wide for every size).
//!
//! Pixels get the exact palette colour; there is no anti-aliasing, so every object is one
//! 4-connected component of one colour, and its bounding box is exactly its `s × s` box.
//!
//! ## Placement
//!
//! Objects are placed by rejection sampling. One *attempt* draws every object's size
//! uniformly in `min_object..=hi` and then, object by object in group order, draws up to
//! `tries_per_object` top-left corners uniformly in `0..=size − s`; a corner is accepted when
//! the object's box keeps at least `gap` background pixels from every box placed before
//! (horizontally or vertically). If an object cannot be placed the attempt is abandoned and a
//! new one starts; `hi` starts at `max_object` and drops by one every
//! [`SHRINK_EVERY`] failed attempts (never below `min_object`), so crowded scenes fall back
//! to smaller objects. After `max_attempts` attempts the renderer returns
//! [`DataError::Placement`] instead of panicking.
//!
//! All randomness comes from the caller's `RngCore`; [`render_seeded`] uses
//! `ChaCha8Rng::seed_from_u64(seed)` (rand_core's portable seeding), so a seed gives the same
//! pixels on every platform.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::{DataError, Result};
use crate::raster::Image;
use crate::sampling;
use crate::world::{BACKGROUND, Colour, SceneSpec, Shape, WorldConfig};

/// Failed attempts after which the largest allowed object size drops by one pixel.
pub const SHRINK_EVERY: usize = 4;

/// One object of a rendered scene: where it is and what it looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedObject {
    /// Its colour.
    pub colour: Colour,
    /// Its shape.
    pub shape: Shape,
    /// Column of the box's top-left pixel.
    pub x: usize,
    /// Row of the box's top-left pixel.
    pub y: usize,
    /// Side of its box in pixels.
    pub size: usize,
}

/// A rendered scene: the specification, the image and the objects as placed.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// What the scene was asked to contain.
    pub spec: SceneSpec,
    /// The rendered image (`size × size`, black background).
    pub image: Image,
    /// Every object, in group order.
    pub objects: Vec<PlacedObject>,
}

/// Whether box pixel `(i, j)` of a shape of size `s` is painted (see the module docs).
pub fn shape_contains(shape: Shape, size: usize, i: usize, j: usize) -> bool {
    if i >= size || j >= size {
        return false;
    }
    let r = size as f64 / 2.0;
    let u = i as f64 + 0.5;
    let v = j as f64 + 0.5;
    match shape {
        Shape::Square => true,
        Shape::Circle => (u - r).powi(2) + (v - r).powi(2) <= r * r,
        Shape::Triangle => (u - r).abs() <= v / 2.0 + 0.25,
    }
}

/// Draws objects onto a black `size × size` image. Objects are clipped to the image.
pub fn draw_objects(size: usize, objects: &[PlacedObject]) -> Image {
    let mut image = Image::filled(size, size, BACKGROUND);
    for o in objects {
        let rgb = o.colour.rgb();
        for j in 0..o.size {
            for i in 0..o.size {
                if shape_contains(o.shape, o.size, i, j) {
                    image.set_pixel_rgb8(o.x + i, o.y + j, rgb);
                }
            }
        }
    }
    image
}

/// `true` when two boxes keep at least `gap` pixels apart horizontally or vertically.
fn separated(a: &PlacedObject, b: &PlacedObject, gap: usize) -> bool {
    a.x + a.size + gap <= b.x
        || b.x + b.size + gap <= a.x
        || a.y + a.size + gap <= b.y
        || b.y + b.size + gap <= a.y
}

/// Places the objects of `spec` (see the module docs) without drawing them.
pub fn place_objects<R: RngCore + ?Sized>(
    spec: &SceneSpec,
    config: &WorldConfig,
    rng: &mut R,
) -> Result<Vec<PlacedObject>> {
    config.validate()?;
    let kinds: Vec<(Colour, Shape)> = spec
        .groups()
        .iter()
        .flat_map(|g| std::iter::repeat_n((g.colour, g.shape), usize::from(g.count)))
        .collect();
    let range = config.max_object - config.min_object;
    'attempt: for attempt in 0..config.max_attempts {
        let hi = config.max_object - (attempt / SHRINK_EVERY).min(range);
        let mut placed: Vec<PlacedObject> = Vec::with_capacity(kinds.len());
        for &(colour, shape) in &kinds {
            let size = sampling::inclusive(rng, config.min_object, hi);
            let span = config.size - size;
            let mut ok = false;
            for _ in 0..config.tries_per_object {
                let candidate = PlacedObject {
                    colour,
                    shape,
                    x: sampling::inclusive(rng, 0, span),
                    y: sampling::inclusive(rng, 0, span),
                    size,
                };
                if placed.iter().all(|p| separated(p, &candidate, config.gap)) {
                    placed.push(candidate);
                    ok = true;
                    break;
                }
            }
            if !ok {
                continue 'attempt;
            }
        }
        return Ok(placed);
    }
    Err(DataError::Placement {
        objects: kinds.len(),
        size: config.size,
        attempts: config.max_attempts,
    })
}

/// Renders `spec` with randomness from `rng`.
pub fn render_scene<R: RngCore + ?Sized>(
    spec: &SceneSpec,
    config: &WorldConfig,
    rng: &mut R,
) -> Result<Scene> {
    let objects = place_objects(spec, config, rng)?;
    Ok(Scene {
        spec: spec.clone(),
        image: draw_objects(config.size, &objects),
        objects,
    })
}

/// Renders `spec` from a seed: [`render_scene`] with `ChaCha8Rng::seed_from_u64(seed)`.
pub fn render_seeded(spec: &SceneSpec, config: &WorldConfig, seed: u64) -> Result<Scene> {
    render_scene(spec, config, &mut ChaCha8Rng::seed_from_u64(seed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::Group;

    /// A largest scene of the world (three objects).
    fn full_scene() -> SceneSpec {
        SceneSpec::pair(
            Group::new(2, Colour::Red, Shape::Circle).unwrap(),
            Group::new(1, Colour::Yellow, Shape::Triangle).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn shapes_fill_their_box() {
        for s in 5..=16 {
            for shape in Shape::ALL {
                // Every row and column of the box has a painted pixel: the bounding box is
                // exactly the s × s box.
                for k in 0..s {
                    assert!(
                        (0..s).any(|i| shape_contains(shape, s, i, k)),
                        "{shape} {s}"
                    );
                    assert!(
                        (0..s).any(|j| shape_contains(shape, s, k, j)),
                        "{shape} {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn same_seed_same_pixels() {
        let cfg = WorldConfig::default();
        let spec = full_scene();
        let a = render_seeded(&spec, &cfg, 42).unwrap();
        let b = render_seeded(&spec, &cfg, 42).unwrap();
        assert_eq!(a, b);
        let c = render_seeded(&spec, &cfg, 43).unwrap();
        assert_ne!(a.image, c.image);
    }

    #[test]
    fn objects_never_touch_and_stay_inside() {
        let cfg = WorldConfig::default();
        for seed in 0..300 {
            let scene = render_seeded(&full_scene(), &cfg, seed).unwrap();
            assert_eq!(scene.objects.len(), 3);
            for (i, a) in scene.objects.iter().enumerate() {
                assert!(a.x + a.size <= cfg.size && a.y + a.size <= cfg.size);
                assert!((cfg.min_object..=cfg.max_object).contains(&a.size));
                for b in &scene.objects[i + 1..] {
                    assert!(separated(a, b, 1), "seed {seed}: {a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn impossible_placement_is_an_error() {
        let cfg = WorldConfig {
            size: 12,
            min_object: 6,
            max_object: 6,
            ..Default::default()
        };
        let err = render_seeded(&full_scene(), &cfg, 0).unwrap_err();
        assert!(
            matches!(err, DataError::Placement { objects: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn invalid_config_is_an_error() {
        let cfg = WorldConfig {
            min_object: 2,
            ..Default::default()
        };
        assert!(matches!(
            render_seeded(&full_scene(), &cfg, 0),
            Err(DataError::Config { .. })
        ));
    }

    #[test]
    fn exact_palette_colours_only() {
        let scene = render_seeded(&full_scene(), &WorldConfig::default(), 5).unwrap();
        let allowed = [BACKGROUND, Colour::Red.rgb(), Colour::Yellow.rgb()];
        for px in scene.image.to_rgb8().chunks_exact(3) {
            assert!(allowed.contains(&[px[0], px[1], px[2]]), "{px:?}");
        }
    }
}
