//! ShapeEval against ground truth: rendered scenes always pass, noise (almost) never does.
#![allow(clippy::unwrap_used)]

use align_data::{
    Image, SceneSpec, ShapeEval, ShapesDataset, SplitPart, WorldConfig, render_seeded,
};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

fn all_specs() -> Vec<SceneSpec> {
    SceneSpec::world()
}

/// Every scene of the world renders (placement never fails with the default configuration)
/// and passes, for several seeds each.
#[test]
fn every_scene_renders_and_passes() {
    let eval = ShapeEval::default();
    let cfg = WorldConfig::default();
    for (i, spec) in all_specs().iter().enumerate() {
        for seed in 0..3u64 {
            let scene = render_seeded(spec, &cfg, seed * 10_000 + i as u64).unwrap();
            let r = eval.score(&scene.image, spec);
            assert!(r.pass, "{spec} seed {seed}: {r:?}");
            assert_eq!(r.partial_credit, 1.0);
            assert!(r.colours_correct && r.counts_correct && r.extra_objects == 0);
        }
    }
}

/// Every scene the prompt language can say (up to eight objects) renders on a 32 × 32
/// canvas with objects of 6–9 px and passes.
#[test]
fn every_sayable_scene_passes_on_a_larger_canvas() {
    let eval = ShapeEval::default();
    let cfg = WorldConfig {
        size: 32,
        min_object: 6,
        max_object: 9,
        ..WorldConfig::default()
    };
    for (i, spec) in SceneSpec::all().iter().enumerate().step_by(3) {
        let scene = render_seeded(spec, &cfg, i as u64).unwrap();
        assert!(eval.score(&scene.image, spec).pass, "{spec}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Random scene, random seed, every object at one fixed size from 5 to 12 px.
    #[test]
    fn ground_truth_passes_at_every_object_size(
        seed in any::<u64>(),
        spec_index in 0usize..432,
        object in 5usize..=12,
    ) {
        let spec = &all_specs()[spec_index];
        let cfg = WorldConfig {
            // Three objects of one fixed size must fit: 16 px up to 7 px objects, 32 px above
            // (with a fixed size the renderer cannot shrink objects to make room).
            size: if object <= 7 { 16 } else { 32 },
            min_object: object,
            max_object: object,
            ..WorldConfig::default()
        };
        // With one fixed size the renderer cannot shrink objects to make room, and its random
        // placement occasionally gives up on the tightest packing (three 7 px objects in
        // 16 px: seed 15984081595867181930, spec 24). That is the renderer's limit, not
        // ShapeEval's, and the default world never hits it (`every_scene_renders_and_passes`):
        // such draws are rejected, any other error still fails.
        let scene = match render_seeded(spec, &cfg, seed) {
            Ok(scene) => scene,
            Err(align_data::DataError::Placement { .. }) => {
                return Err(TestCaseError::reject("placement gave up"));
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        prop_assert!(scene.objects.iter().all(|o| o.size == object));
        let r = ShapeEval::default().score(&scene.image, spec);
        prop_assert!(r.pass, "{} size {}: {:?}", spec, object, r);
    }

    /// Dataset items of both parts pass against their own prompt.
    #[test]
    fn dataset_items_pass(seed in any::<u64>(), index in any::<u64>()) {
        for part in [SplitPart::Train, SplitPart::HeldOut] {
            let d = ShapesDataset::new(WorldConfig::default(), part, seed).unwrap();
            let s = d.get(index).unwrap();
            let r = ShapeEval::default().score_prompt(&s.image, &s.prompt).unwrap();
            prop_assert!(r.pass, "{}: {:?}", s.prompt, r);
        }
    }
}

/// Uniform noise in [-1, 1] essentially never passes (< 2 % of 200 images).
#[test]
fn noise_does_not_pass() {
    let eval = ShapeEval::default();
    let specs = all_specs();
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let mut passes = 0;
    let mut credit = 0.0;
    for i in 0..200 {
        let data = (0..3 * 16 * 16)
            .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0)
            .collect();
        let img = Image::from_chw(16, 16, data).unwrap();
        let spec = &specs[(i * 37) % specs.len()];
        let r = eval.score(&img, spec);
        passes += usize::from(r.pass);
        credit += r.partial_credit;
    }
    assert!(passes <= 3, "{passes} of 200 noise images passed");
    // Noise has no components at all, so only "no extra objects" holds.
    assert!(
        credit / 200.0 < 0.35,
        "mean partial credit {}",
        credit / 200.0
    );
}

/// A rendered scene passes only its own prompt, not a different one.
#[test]
fn scenes_fail_other_prompts() {
    let eval = ShapeEval::default();
    let specs = all_specs();
    let cfg = WorldConfig::default();
    for (i, spec) in specs.iter().enumerate().step_by(7) {
        let img = render_seeded(spec, &cfg, i as u64).unwrap().image;
        let other = &specs[(i * 31 + 5) % specs.len()];
        if other != spec {
            assert!(!eval.score(&img, other).pass, "{spec} passed as {other}");
        }
    }
}
