//! Sampler overheads, without a neural network: one step with its log-prob given a model
//! output, host-side noise generation, and a full rollout of the analytic Gaussian field.
//! These are the costs `align` adds on top of the denoiser's forward pass.

use align_core::{
    Condition, LogProbReduction, NoiseKey, Parameterization, noise_tensor, select_device,
};
use align_samplers::toy::GaussianFlowField;
use align_samplers::{RolloutBatch, RolloutConfig, SamplerConfig, Transition, rollout};
use burn::tensor::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const BATCH: usize = 32;
const SHAPE: [usize; 3] = [4, 32, 32];

fn keys(seed: u64, step: Option<usize>) -> Vec<NoiseKey> {
    (0..BATCH as u64)
        .map(|s| match step {
            None => NoiseKey::initial(seed, s),
            Some(k) => NoiseKey::transition(seed, s, k),
        })
        .collect()
}

fn device() -> Device {
    select_device(None).expect("BURN_DEVICE names a compiled-in backend")
}

fn step_with_logprob(c: &mut Criterion) {
    let device = device();
    let x = noise_tensor(&keys(0, None), SHAPE, &device).expect("noise");
    let out = noise_tensor(&keys(1, None), SHAPE, &device).expect("noise");
    let z = noise_tensor(&keys(0, Some(0)), SHAPE, &device).expect("noise");
    let mut group = c.benchmark_group("step_with_logprob");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, config, p) in [
        (
            "ddim_eta1",
            SamplerConfig::ddim(50, 1.0),
            Parameterization::Epsilon,
        ),
        (
            "flow_sde",
            SamplerConfig::flow_sde(40, 0.7),
            Parameterization::FlowVelocity,
        ),
        (
            "cps",
            SamplerConfig::Cps {
                num_steps: 40,
                shift: 1.0,
                noise_level: 0.8,
                window: None,
            },
            Parameterization::FlowVelocity,
        ),
    ] {
        let sampler = config.build().expect("valid sampler");
        group.bench_function(BenchmarkId::new(name, "32x4x32x32"), |b| {
            b.iter(|| {
                let (prev, lp, _, _) = sampler
                    .step_with_logprob(
                        10,
                        x.clone(),
                        out.clone(),
                        p,
                        Transition::Sample(z.clone()),
                        LogProbReduction::Mean,
                    )
                    .expect("stochastic step");
                // Force execution: read the log-probs back, as a trainer does.
                black_box((prev, lp.into_data()))
            })
        });
    }
    group.finish();
}

fn host_noise(c: &mut Criterion) {
    let device = device();
    let mut group = c.benchmark_group("host_noise");
    group.throughput(Throughput::Elements(
        (BATCH * SHAPE.iter().product::<usize>()) as u64,
    ));
    group.bench_function("32x4x32x32", |b| {
        let mut step = 0;
        b.iter(|| {
            step += 1;
            let t: Tensor<4> = noise_tensor(&keys(3, Some(step)), SHAPE, &device).expect("noise");
            black_box(t)
        })
    });
    group.finish();
}

fn full_rollout(c: &mut Criterion) {
    let device = device();
    let model = GaussianFlowField::new(vec![0.5; 4], vec![0.3; 4]);
    let cond = Condition::new(Tensor::zeros([BATCH, 1, 1], &device));
    let batch = RolloutBatch {
        condition: &cond,
        uncond: None,
        sample_ids: (0..BATCH as u64).collect(),
        condition_ids: vec![0; BATCH],
        group_ids: None,
        sample_shape: SHAPE,
    };
    let sampler = SamplerConfig::flow_sde(10, 0.7)
        .build()
        .expect("valid sampler");
    let mut group = c.benchmark_group("rollout");
    group.sample_size(20);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("flow_sde_10_steps_analytic_model_32x4x32x32", |b| {
        b.iter(|| {
            black_box(
                rollout(&model, sampler.as_ref(), &batch, &RolloutConfig::default())
                    .expect("rollout"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, step_with_logprob, host_noise, full_rollout);
criterion_main!(benches);
