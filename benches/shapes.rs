//! The Shapes world: rendering a scene and scoring an image with ShapeEval (host-side work
//! done for every training batch and every reward evaluation).

use align_data::{ShapeEval, ShapesDataset, SplitPart, WorldConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn render(c: &mut Criterion) {
    let data = ShapesDataset::new(WorldConfig::default(), SplitPart::Train, 1).expect("dataset");
    let mut group = c.benchmark_group("shapes");
    group.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    group.bench_function("render_16x16_scene", |b| {
        b.iter(|| {
            i += 1;
            black_box(data.get(i).expect("scene"))
        })
    });
    let scenes: Vec<_> = (0..256).map(|i| data.get(i).expect("scene")).collect();
    let eval = ShapeEval::default();
    let mut j = 0usize;
    group.bench_function("shape_eval_16x16", |b| {
        b.iter(|| {
            j = (j + 1) % scenes.len();
            black_box(eval.score(&scenes[j].image, &scenes[j].spec))
        })
    });
    group.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
