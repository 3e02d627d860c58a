//! Criterion benchmarks of the model-sized workloads (`align_benches::workloads`): forward
//! passes of the shipped `small` UNet and DiT, a guided sampler step with its log-prob, the
//! quickstart's rollout, one DDPO-IS, Flow-GRPO and Diffusion-DPO update and one chained
//! vector-Jacobian step of reward backprop. `cargo xtask bench` runs the same workloads on
//! every compiled-in backend and prints them as one table with GFLOP/s.

use align_benches::workloads::{
    self, ChainStep, DPO_PAIRS, DpoUpdate, IMAGES, RlUpdate, UPDATE_SAMPLES,
};
use align_core::{Denoiser, select_device};
use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn models(c: &mut Criterion) {
    let device = select_device(None).expect("BURN_DEVICE names a compiled-in backend");
    let train = device.clone().autodiff();
    let (_, unet) = workloads::unet(&device).expect("shipped UNet");
    let (_, dit) = workloads::dit(&device).expect("shipped DiT");
    let mut g = c.benchmark_group("models");
    g.sample_size(10);
    g.throughput(Throughput::Elements(IMAGES as u64));
    let x = workloads::images(IMAGES, 1, &device).expect("images");
    let (cu, uu) = workloads::encode(&unet, IMAGES, &device).expect("encode");
    let t = Tensor::<1>::from_data(
        TensorData::new(
            (0..IMAGES).map(|i| (i * 31 % 1000) as f32).collect(),
            [IMAGES],
        ),
        &device,
    );
    g.bench_function("forward_unet_b32", |b| {
        b.iter(|| black_box(unet.predict(x.clone(), t.clone(), &cu).into_data()))
    });
    let (cd, _) = workloads::encode(&dit, IMAGES, &device).expect("encode");
    let td = t.clone().div_scalar(1000.0);
    g.bench_function("forward_dit_b32", |b| {
        b.iter(|| black_box(dit.predict(x.clone(), td.clone(), &cd).into_data()))
    });
    let ddim = workloads::ddim_sampler(1.0).expect("sampler");
    let next = workloads::images(IMAGES, 3, &device).expect("images");
    g.bench_function("sampler_step_unet_b32", |b| {
        b.iter(|| {
            black_box(
                workloads::sampler_step(&unet, &ddim, x.clone(), next.clone(), &cu, &uu)
                    .expect("step")
                    .into_data(),
            )
        })
    });
    let flow = workloads::flow_sampler().expect("sampler");
    let frozen = workloads::dit(&train).expect("shipped model").1.no_grad();
    g.bench_function("rollout_dit_b32_10_steps", |b| {
        b.iter(|| {
            black_box(
                workloads::roll(&frozen, &flow, IMAGES, &train)
                    .expect("rollout")
                    .final_sample()
                    .clone()
                    .into_data(),
            )
        })
    });
    g.throughput(Throughput::Elements(UPDATE_SAMPLES as u64));
    let mut ddpo = RlUpdate::new(
        workloads::unet(&train).expect("shipped model").1,
        &ddim,
        &train,
    )
    .expect("setup");
    let mut optim = workloads::adamw();
    g.bench_function("ddpo_is_update_b16", |b| {
        b.iter(|| black_box(ddpo.step(&ddim, false, &mut optim).expect("update")))
    });
    let mut grpo = RlUpdate::new(
        workloads::dit(&train).expect("shipped model").1,
        &flow,
        &train,
    )
    .expect("setup");
    let mut optim = workloads::adamw();
    g.bench_function("flow_grpo_update_b16", |b| {
        b.iter(|| black_box(grpo.step(&flow, true, &mut optim).expect("update")))
    });
    g.throughput(Throughput::Elements(2 * DPO_PAIRS as u64));
    let mut dpo =
        DpoUpdate::new(workloads::unet(&train).expect("shipped model").1, &train).expect("setup");
    let mut optim = workloads::adamw();
    g.bench_function("diffusion_dpo_update_8_pairs", |b| {
        b.iter(|| black_box(dpo.step(&mut optim).expect("update")))
    });
    let chain =
        ChainStep::new(workloads::unet(&train).expect("shipped model").1, &train).expect("setup");
    g.bench_function("chained_vjp_step_b8", |b| {
        b.iter(|| black_box(chain.run().expect("chain")))
    });
    g.finish();
}

criterion_group!(benches, models);
criterion_main!(benches);
