//! Rendering and datasets are deterministic per seed (speed is measured by the criterion
//! benches in `benches/`, not here).

use align_data::{SceneSpec, ShapesDataset, SplitPart, WorldConfig, render_seeded};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn same_seed_same_pixels_different_seed_different_scene(seed in any::<u64>(), spec_index in 0usize..432) {
        let spec = &SceneSpec::world()[spec_index];
        let cfg = WorldConfig::default();
        let a = render_seeded(spec, &cfg, seed).unwrap();
        let b = render_seeded(spec, &cfg, seed).unwrap();
        prop_assert_eq!(&a, &b);
        let c = render_seeded(spec, &cfg, seed.wrapping_add(1)).unwrap();
        prop_assert_ne!(a.objects, c.objects);
    }
}

#[test]
fn dataset_seeds_differ() {
    let a = ShapesDataset::new(WorldConfig::default(), SplitPart::Train, 1).unwrap();
    let b = ShapesDataset::new(WorldConfig::default(), SplitPart::Train, 2).unwrap();
    let differ = (0..50)
        .filter(|&i| a.get(i).unwrap().image != b.get(i).unwrap().image)
        .count();
    assert_eq!(differ, 50);
}
