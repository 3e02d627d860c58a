//! `bench-table`: times the model-sized workloads of `align_benches::workloads` on one burn
//! backend and prints one Markdown row per workload (median time, images/s, dense GFLOP/s and
//! the fraction of the peak measured in the same run by a large matrix product). `cargo xtask
//! bench` runs it once per compiled-in backend and merges the rows into one table.
//!
//! ```text
//! bench-table [--device flex|ndarray|wgpu|wgpu-cpu|cuda] [--only w1,w2] [--min-time S]
//!             [--max-reps N] [--json FILE] [--export DIR]
//! ```
//!
//! `--export DIR` writes instead the fixtures of the PyTorch side-by-side run
//! (`bench/reference`): model weights (with LoRA), inputs and our outputs.
//! `--ops` times single burn operations at the shapes the workloads use (the minimal
//! reproducers behind the profile in docs/benchmarks.md; `bench/reference/ops.py` times the
//! same in PyTorch).
//! `--merge FILE` prints the JSON lines that runs appended to `FILE` (`--json`), from every
//! backend and from `bench/reference/torch_bench.py`, as one table with our time / PyTorch's
//! time per workload.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use align_benches::flops::{self, Pass};
use align_benches::workloads::{
    self, CHAIN_SAMPLES, ChainStep, DPO_PAIRS, DpoUpdate, IMAGES, RlUpdate, UPDATE_SAMPLES,
    UPDATE_STEPS,
};
use align_core::{Denoiser, resolve_backend, select_device};
use align_models::{ShapesModelConfig, TextToImage, save_safetensors, with_lora_scale};
use align_samplers::{Sampler, rescore};
use burn::module::{Module, ModuleDisplay};
use burn::prelude::Config;
use burn::tensor::{Device, Distribution, Tensor, TensorData};

const ALL: [&str; 8] = [
    "forward_unet",
    "forward_dit",
    "sampler_step_unet",
    "rollout_dit",
    "ddpo_is_update",
    "flow_grpo_update",
    "diffusion_dpo_update",
    "chained_vjp_step",
];

struct Options {
    device: Option<String>,
    only: Option<Vec<String>>,
    min_time: f64,
    max_reps: usize,
    json: Option<PathBuf>,
    export: Option<PathBuf>,
    merge: Option<PathBuf>,
    ops: bool,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        device: None,
        only: None,
        min_time: 3.0,
        max_reps: 10,
        json: None,
        export: None,
        merge: None,
        ops: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--device" => o.device = Some(value("--device")?),
            "--only" => {
                let list: Vec<String> = value("--only")?.split(',').map(str::to_string).collect();
                if let Some(bad) = list.iter().find(|w| !ALL.contains(&w.as_str())) {
                    return Err(format!("--only: unknown workload `{bad}` (known: {ALL:?})"));
                }
                o.only = Some(list);
            }
            "--min-time" => {
                o.min_time = value("--min-time")?
                    .parse()
                    .map_err(|e| format!("--min-time: {e}"))?
            }
            "--max-reps" => {
                o.max_reps = value("--max-reps")?
                    .parse()
                    .map_err(|e| format!("--max-reps: {e}"))?
            }
            "--json" => o.json = Some(value("--json")?.into()),
            "--export" => o.export = Some(value("--export")?.into()),
            "--merge" => o.merge = Some(value("--merge")?.into()),
            "--ops" => o.ops = true,
            "--bench" => {} // passed by `cargo bench`; ignored
            other => return Err(format!("unknown argument `{other}` (see the file's docs)")),
        }
    }
    Ok(o)
}

/// Forces the backend to finish: reads one value back.
fn sync<const D: usize>(t: Tensor<D>) -> f32 {
    t.flatten::<1>(0, D - 1).slice(0..1).into_scalar()
}

/// Runs `f` once to warm up, then until `min_time` has passed (at least 3 and at most
/// `max_reps` timed runs; a single timed run when the warm-up alone took over 20 s).
fn time(opts: &Options, mut f: impl FnMut() -> Result<(), String>) -> Result<(f64, usize), String> {
    let t0 = Instant::now();
    f()?;
    let warm = t0.elapsed().as_secs_f64();
    let reps = if warm > 20.0 {
        1
    } else {
        let max = opts.max_reps.max(1);
        ((opts.min_time / warm.max(1e-6)).ceil() as usize).clamp(3.min(max), max)
    };
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], reps))
}

/// Forward + LoRA backward FLOPs of one differentiated pass (`flops::Pass`).
fn train_flops(config: &ShapesModelConfig, images: usize, prompts: usize) -> f64 {
    flops::model(Pass::Forward, config, images, prompts)
        + flops::model(Pass::LoraBackward, config, images, prompts)
}

struct Row {
    workload: String,
    seconds: f64,
    reps: usize,
    images: usize,
    flops: f64,
}

fn peak(device: &Device, opts: &Options) -> Result<(f64, usize), String> {
    let n = 2048;
    let a = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), device);
    let b = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), device);
    let (s, _) = time(opts, || {
        sync(a.clone().matmul(b.clone()));
        Ok(())
    })?;
    Ok((2.0 * (n as f64).powi(3) / s / 1e9, n))
}

fn run(opts: &Options) -> Result<(), String> {
    let backend = resolve_backend(opts.device.as_deref()).map_err(|e| e.to_string())?;
    let device = select_device(opts.device.as_deref()).map_err(|e| e.to_string())?;
    let train = device.clone().autodiff();
    let name = backend.to_string();
    let wanted = |w: &str| opts.only.as_ref().is_none_or(|l| l.iter().any(|x| x == w));
    eprintln!("bench-table: backend {name}");
    let (peak_gflops, n) = peak(&device, opts)?;
    eprintln!("bench-table: peak {peak_gflops:.1} GFLOP/s ({n}×{n} f32 matmul)");
    let mut rows: Vec<Row> = Vec::new();
    let push = |rows: &mut Vec<Row>, w: &str, (s, reps): (f64, usize), images, flops| {
        eprintln!("bench-table: {w}: {s:.4} s (median of {reps})");
        rows.push(Row {
            workload: w.into(),
            seconds: s,
            reps,
            images,
            flops,
        });
    };
    let (ucfg, unet) = workloads::unet(&device)?;
    let (dcfg, dit) = workloads::dit(&device)?;
    let ctx = ucfg.text.max_len;
    if wanted("forward_unet") {
        let (c, _) = workloads::encode(&unet, IMAGES, &device)?;
        let x = workloads::images(IMAGES, 1, &device)?;
        let t = Tensor::<1>::from_data(
            TensorData::new(
                (0..IMAGES).map(|i| (i * 31 % 1000) as f32).collect(),
                [IMAGES],
            ),
            &device,
        );
        let m = unet.clone();
        let r = time(opts, || {
            sync(m.predict(x.clone(), t.clone(), &c));
            Ok(())
        })?;
        let f = flops::unet_forward(&ucfg.unet, IMAGES, ucfg.image_size, ctx);
        push(&mut rows, "forward_unet", r, IMAGES, f);
    }
    if wanted("forward_dit") {
        let (c, _) = workloads::encode(&dit, IMAGES, &device)?;
        let x = workloads::images(IMAGES, 1, &device)?;
        let t = Tensor::<1>::from_data(
            TensorData::new(
                (0..IMAGES)
                    .map(|i| (i as f32 + 0.5) / IMAGES as f32)
                    .collect(),
                [IMAGES],
            ),
            &device,
        );
        let m = dit.clone();
        let r = time(opts, || {
            sync(m.predict(x.clone(), t.clone(), &c));
            Ok(())
        })?;
        let f = flops::dit_forward(&dcfg.dit, IMAGES, ctx);
        push(&mut rows, "forward_dit", r, IMAGES, f);
    }
    if wanted("sampler_step_unet") {
        let sampler = workloads::ddim_sampler(1.0)?;
        let (c, u) = workloads::encode(&unet, IMAGES, &device)?;
        let x = workloads::images(IMAGES, 2, &device)?;
        let next = workloads::images(IMAGES, 3, &device)?;
        let m = unet.clone();
        let r = time(opts, || {
            sync(workloads::sampler_step(
                &m,
                &sampler,
                x.clone(),
                next.clone(),
                &c,
                &u,
            )?);
            Ok(())
        })?;
        let f = flops::unet_forward(&ucfg.unet, 2 * IMAGES, ucfg.image_size, ctx);
        push(&mut rows, "sampler_step_unet", r, IMAGES, f);
    }
    if wanted("rollout_dit") {
        let sampler = workloads::flow_sampler()?;
        let m = workloads::dit(&train)?.1.no_grad();
        let r = time(opts, || {
            let traj = workloads::roll(&m, &sampler, IMAGES, &train)?;
            sync(traj.final_sample().clone());
            Ok(())
        })?;
        let f = workloads::TRAIN_STEPS as f64 * flops::model(Pass::Forward, &dcfg, 2 * IMAGES, 0)
            + flops::text_forward(&dcfg.text, 2 * IMAGES);
        push(&mut rows, "rollout_dit", r, IMAGES, f);
    }
    let steps = UPDATE_STEPS.len() as f64;
    if wanted("ddpo_is_update") {
        let sampler = workloads::ddim_sampler(1.0)?;
        let mut u = RlUpdate::new(workloads::unet(&train)?.1, &sampler, &train)?;
        let mut optim = workloads::adamw();
        let r = time(opts, || u.step(&sampler, false, &mut optim).map(|_| ()))?;
        let f = steps * train_flops(&ucfg, 2 * UPDATE_SAMPLES, 2 * UPDATE_SAMPLES);
        push(&mut rows, "ddpo_is_update", r, UPDATE_SAMPLES, f);
    }
    if wanted("flow_grpo_update") {
        let sampler = workloads::flow_sampler()?;
        let mut u = RlUpdate::new(workloads::dit(&train)?.1, &sampler, &train)?;
        let mut optim = workloads::adamw();
        let r = time(opts, || u.step(&sampler, true, &mut optim).map(|_| ()))?;
        let f = steps
            * (train_flops(&dcfg, 2 * UPDATE_SAMPLES, 2 * UPDATE_SAMPLES)
                + flops::model(Pass::Forward, &dcfg, 2 * UPDATE_SAMPLES, 2 * UPDATE_SAMPLES));
        push(&mut rows, "flow_grpo_update", r, UPDATE_SAMPLES, f);
    }
    if wanted("diffusion_dpo_update") {
        let mut u = DpoUpdate::new(workloads::unet(&train)?.1, &train)?;
        let mut optim = workloads::adamw();
        let r = time(opts, || u.step(&mut optim).map(|_| ()))?;
        let f = train_flops(&ucfg, 2 * DPO_PAIRS, DPO_PAIRS)
            + flops::model(Pass::Forward, &ucfg, 2 * DPO_PAIRS, DPO_PAIRS);
        push(&mut rows, "diffusion_dpo_update", r, 2 * DPO_PAIRS, f);
    }
    if wanted("chained_vjp_step") {
        let s = ChainStep::new(workloads::unet(&train)?.1, &train)?;
        let r = time(opts, || s.run().map(|_| ()))?;
        let f = train_flops(&ucfg, 2 * CHAIN_SAMPLES, 2 * CHAIN_SAMPLES);
        push(&mut rows, "chained_vjp_step", r, CHAIN_SAMPLES, f);
    }
    println!("| workload | backend | median | runs | images/s | dense GFLOP/s | % of peak |");
    println!("|---|---|---|---|---|---|---|");
    println!("| peak: {n}×{n} f32 matmul | {name} | | | | {peak_gflops:.1} | 100 |");
    let mut json = Vec::new();
    for r in &rows {
        let gflops = r.flops / r.seconds / 1e9;
        println!(
            "| {} | {name} | {} | {} | {:.1} | {:.1} | {:.0} |",
            r.workload,
            human(r.seconds),
            r.reps,
            r.images as f64 / r.seconds,
            gflops,
            100.0 * gflops / peak_gflops
        );
        json.push(serde_json::json!({
            "workload": r.workload, "backend": name, "seconds": r.seconds, "reps": r.reps,
            "images": r.images, "flops": r.flops, "peak_gflops": peak_gflops,
            "machine": machine(),
        }));
    }
    append_json(opts.json.as_deref(), &json)
}

/// Appends one JSON line per row to `path` (`--json`), if given.
fn append_json(path: Option<&Path>, rows: &[serde_json::Value]) -> Result<(), String> {
    let Some(path) = path else {
        return Ok(());
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for j in rows {
        writeln!(f, "{j}").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// `dst = lhs · rhs` (row-major `[m, k] × [k, n]`) by the `gemm` crate on all threads, as
/// burn-flex calls it for large products.
#[allow(unsafe_code)]
fn gemm_direct(dst: &mut [f32], lhs: &[f32], rhs: &[f32], [m, k, n]: [usize; 3]) {
    assert!(lhs.len() == m * k && rhs.len() == k * n && dst.len() == m * n);
    // SAFETY: the three slices hold exactly the row-major matrices the strides describe
    // (checked above), `dst` does not alias the inputs, and nothing else touches them during
    // the call.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// Single operations at the workloads' shapes (batch 64 = 32 images under CFG).
fn ops(opts: &Options) -> Result<(), String> {
    use burn::nn::attention::{MhaInput, MultiHeadAttentionConfig};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{GroupNormConfig, LayerNormConfig, LinearConfig, PaddingConfig2d};
    let backend = resolve_backend(opts.device.as_deref()).map_err(|e| e.to_string())?;
    let device = select_device(opts.device.as_deref()).map_err(|e| e.to_string())?;
    let train = device.clone().autodiff();
    let name = backend.to_string();
    let normal = |shape: Vec<usize>, d: &Device| {
        Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), d)
    };
    let mut rows: Vec<(String, f64, usize, f64)> = Vec::new();
    // conv 3×3, 32 → 32 channels, 32×32, batch 64: the UNet's finest level.
    let conv = Conv2dConfig::new([32, 32], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&train);
    let conv_flops = 2.0 * (32 * 32 * 9 * 32 * 32 * 64) as f64;
    let x = normal(vec![64, 32, 32, 32], &device);
    let c = conv.valid();
    let r = time(opts, || {
        sync(c.forward(x.clone()));
        Ok(())
    })?;
    rows.push(("op_conv3x3_32c_32px_b64_fwd".into(), r.0, r.1, conv_flops));
    let xt = normal(vec![64, 32, 32, 32], &train).require_grad();
    let r = time(opts, || {
        let g = conv.forward(xt.clone()).sum().backward();
        sync(xt.grad(&g).ok_or("no input gradient")?);
        Ok(())
    })?;
    rows.push((
        "op_conv3x3_32c_32px_b64_fwd_bwd".into(),
        r.0,
        r.1,
        3.0 * conv_flops,
    ));
    // conv 3×3, 64 → 64 channels, 8×8, batch 64: the coarsest level.
    let c64 = Conv2dConfig::new([64, 64], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let x8 = normal(vec![64, 64, 8, 8], &device);
    let r = time(opts, || {
        sync(c64.forward(x8.clone()));
        Ok(())
    })?;
    rows.push((
        "op_conv3x3_64c_8px_b64_fwd".into(),
        r.0,
        r.1,
        2.0 * (64 * 64 * 9 * 64 * 64) as f64,
    ));
    // GroupNorm(8, 32) on [64, 32, 32, 32].
    let gn = GroupNormConfig::new(8, 32).init(&device);
    let r = time(opts, || {
        sync(gn.forward(x.clone()));
        Ok(())
    })?;
    rows.push(("op_group_norm_32c_32px_b64_fwd".into(), r.0, r.1, 0.0));
    // The same through `align_models::group_norm` (the backend's layer-norm kernel per group),
    // which the Shapes models use.
    let r = time(opts, || {
        sync(align_models::group_norm::group_norm(&gn, x.clone()));
        Ok(())
    })?;
    rows.push(("op_group_norm_ours_32c_32px_b64_fwd".into(), r.0, r.1, 0.0));

    // The minimal reproducer behind GroupNorm's cost on flex: the variance of a
    // [64, 8, 4096] group view, two-pass as burn-nn computes it (reducing the output of the
    // subtraction) and one-pass from the input.
    let g3 = x.clone().reshape([64, 8, 4096]);
    let r = time(opts, || {
        let mean = g3.clone().mean_dim(2);
        sync(g3.clone().sub(mean).square().mean_dim(2));
        Ok(())
    })?;
    rows.push(("op_variance_two_pass_64x8x4096".into(), r.0, r.1, 0.0));
    let r = time(opts, || {
        let mean = g3.clone().mean_dim(2);
        sync(g3.clone().square().mean_dim(2) - mean.square());
        Ok(())
    })?;
    rows.push(("op_variance_one_pass_64x8x4096".into(), r.0, r.1, 0.0));
    // The DiT's MLP-in linear: [64, 256, 96] → 384.
    let lin = LinearConfig::new(96, 384).init(&device);
    let h = Tensor::<3>::random([64, 256, 96], Distribution::Normal(0.0, 1.0), &device);
    let r = time(opts, || {
        sync(lin.forward(h.clone()));
        Ok(())
    })?;
    rows.push((
        "op_linear_16384x96x384_fwd".into(),
        r.0,
        r.1,
        2.0 * (64 * 256 * 96 * 384) as f64,
    ));
    // The same product with the tokens flattened to rows first.
    let h2 = h.clone().reshape([64 * 256, 96]);
    let r = time(opts, || {
        sync(lin.forward(h2.clone()));
        Ok(())
    })?;
    rows.push((
        "op_linear_2d_16384x96x384_fwd".into(),
        r.0,
        r.1,
        2.0 * (64 * 256 * 96 * 384) as f64,
    ));
    let w = lin.weight.val();
    let r = time(opts, || {
        sync(h2.clone().matmul(w.clone()));
        Ok(())
    })?;
    rows.push((
        "op_matmul_2d_16384x96x384_fwd".into(),
        r.0,
        r.1,
        2.0 * (64 * 256 * 96 * 384) as f64,
    ));
    let out = h2.clone().matmul(w.clone());
    let bias = lin.bias.as_ref().map(|b| b.val()).ok_or("no bias")?;
    let r = time(opts, || {
        sync(out.clone() + bias.clone().unsqueeze::<2>());
        Ok(())
    })?;
    rows.push(("op_bias_add_16384x384".into(), r.0, r.1, 0.0));
    // The same product through the `gemm` crate directly (what burn-flex calls), into a reused
    // output buffer: whether the gap to PyTorch is in flex's wrapper or in the kernel.
    let (gm, gk, gn_) = (64 * 256, 96, 384);
    let lhs = vec![0.5f32; gm * gk];
    let rhs = vec![0.25f32; gk * gn_];
    let mut dst = vec![0.0f32; gm * gn_];
    let r = time(opts, || {
        gemm_direct(&mut dst, &lhs, &rhs, [gm, gk, gn_]);
        std::hint::black_box(&dst);
        Ok(())
    })?;
    rows.push((
        "op_gemm_crate_16384x96x384".into(),
        r.0,
        r.1,
        2.0 * (gm * gk * gn_) as f64,
    ));
    // The same at world v2's DiT size (32 images × 64 tokens): burn's linear layer and the
    // `gemm` crate directly.
    let hv2 = Tensor::<2>::random([32 * 64, 96], Distribution::Normal(0.0, 1.0), &device);
    let r = time(opts, || {
        sync(lin.forward(hv2.clone()));
        Ok(())
    })?;
    let v2_flops = 2.0 * (32 * 64 * 96 * 384) as f64;
    rows.push(("op_linear_2048x96x384_fwd".into(), r.0, r.1, v2_flops));
    let lhs = vec![0.5f32; 2048 * 96];
    let mut dst = vec![0.0f32; 2048 * 384];
    let r = time(opts, || {
        gemm_direct(&mut dst, &lhs, &rhs, [2048, 96, 384]);
        std::hint::black_box(&dst);
        Ok(())
    })?;
    rows.push(("op_gemm_crate_2048x96x384".into(), r.0, r.1, v2_flops));
    // The DiT's self-attention: 256 tokens, width 96, 4 heads, batch 64.
    let mha = MultiHeadAttentionConfig::new(96, 4)
        .with_dropout(0.0)
        .init(&device);
    let r = time(opts, || {
        sync(mha.forward(MhaInput::self_attn(h.clone())).context);
        Ok(())
    })?;
    rows.push((
        "op_mha_256tok_96d_4h_b64_fwd".into(),
        r.0,
        r.1,
        64.0 * (4.0 * 2.0 * 256.0 * 96.0 * 96.0 + 4.0 * 256.0 * 256.0 * 96.0),
    ));
    // The same module through `align_models::fused_attention` (burn's fused `attention` op
    // for the core), which the Shapes models use.
    let r = time(opts, || {
        sync(align_models::fused_attention::multi_head_attention(
            &mha,
            h.clone(),
            h.clone(),
            None,
        ));
        Ok(())
    })?;
    rows.push((
        "op_mha_ours_fused_256tok_96d_4h_b64_fwd".into(),
        r.0,
        r.1,
        64.0 * (4.0 * 2.0 * 256.0 * 96.0 * 96.0 + 4.0 * 256.0 * 256.0 * 96.0),
    ));
    // The attention core alone, unfused (QKᵀ, softmax, ·V, as burn-nn's MultiHeadAttention
    // computes it) and through burn's fused `attention` op (flex: a flash kernel), on the
    // heads [64, 4, 256, 24] — what replacing the unfused core would gain where no gradient is
    // needed (evaluation, sampling).
    let heads = |seed: u64| {
        device.seed(seed);
        Tensor::<4>::random([64, 4, 256, 24], Distribution::Normal(0.0, 1.0), &device)
    };
    let (q, k, v) = (heads(1), heads(2), heads(3));
    let attn_flops = 64.0 * 4.0 * 256.0 * 256.0 * 24.0 * 4.0;
    let r = time(opts, || {
        let scores = q
            .clone()
            .matmul(k.clone().swap_dims(2, 3))
            .div_scalar(24f32.sqrt());
        sync(burn::tensor::activation::softmax(scores, 3).matmul(v.clone()));
        Ok(())
    })?;
    rows.push((
        "op_attention_core_unfused_b64_4h_256tok_24d".into(),
        r.0,
        r.1,
        attn_flops,
    ));
    let r = time(opts, || {
        sync(burn::tensor::module::attention(
            q.clone(),
            k.clone(),
            v.clone(),
            None,
            None,
            Default::default(),
        ));
        Ok(())
    })?;
    rows.push((
        "op_attention_core_fused_b64_4h_256tok_24d".into(),
        r.0,
        r.1,
        attn_flops,
    ));
    // The exact (erf) GELU of the DiT's MLP at world v2's sizes: [32, 64, 384].
    let mlp = Tensor::<3>::random([32, 64, 384], Distribution::Normal(0.0, 1.0), &device);
    let r = time(opts, || {
        sync(burn::tensor::activation::gelu(mlp.clone()));
        Ok(())
    })?;
    rows.push(("op_gelu_erf_32x64x384_fwd".into(), r.0, r.1, 0.0));
    let r = time(opts, || {
        sync(burn::tensor::activation::silu(mlp.clone()));
        Ok(())
    })?;
    rows.push(("op_silu_32x64x384_fwd".into(), r.0, r.1, 0.0));
    // The same through `align_models::activation` (vectorised host code on CPU devices
    // without autodiff), which the Shapes models use.
    let r = time(opts, || {
        sync(align_models::activation::gelu(mlp.clone()));
        Ok(())
    })?;
    rows.push(("op_gelu_ours_32x64x384_fwd".into(), r.0, r.1, 0.0));
    let r = time(opts, || {
        sync(align_models::activation::silu(mlp.clone()));
        Ok(())
    })?;
    rows.push(("op_silu_ours_32x64x384_fwd".into(), r.0, r.1, 0.0));
    // Host-side keyed noise of one rollout step (32 samples of 3×16×16): each key's stream
    // drawn one after another (what `noise_tensor` did before) and `noise_tensor` itself
    // (rows in parallel; bit-identical).
    let keys: Vec<align_core::NoiseKey> = (0..32)
        .map(|i| align_core::NoiseKey::transition(7, i, 3))
        .collect();
    let r = time(opts, || {
        let mut all = Vec::with_capacity(32 * 768);
        for k in &keys {
            all.extend(align_core::standard_normal(*k, 768));
        }
        sync(Tensor::<4>::from_data(
            TensorData::new(all, [32, 3, 16, 16]),
            &device,
        ));
        Ok(())
    })?;
    rows.push(("op_noise_sequential_32x3x16x16".into(), r.0, r.1, 0.0));
    let r = time(opts, || {
        sync(align_core::noise_tensor(&keys, [3, 16, 16], &device).map_err(|e| e.to_string())?);
        Ok(())
    })?;
    rows.push(("op_noise_tensor_32x3x16x16".into(), r.0, r.1, 0.0));
    let ln = LayerNormConfig::new(96).init(&device);
    let r = time(opts, || {
        sync(ln.forward(h.clone()));
        Ok(())
    })?;
    rows.push(("op_layer_norm_16384x96_fwd".into(), r.0, r.1, 0.0));
    println!("| op | backend | median | runs | dense GFLOP/s |");
    println!("|---|---|---|---|---|");
    let mut json = Vec::new();
    for (w, s, reps, f) in &rows {
        let g = if *f > 0.0 {
            format!("{:.1}", f / s / 1e9)
        } else {
            String::new()
        };
        println!("| {w} | {name} | {} | {reps} | {g} |", human(*s));
        json.push(serde_json::json!({
            "workload": w, "backend": name, "seconds": s, "reps": reps, "images": 0,
            "flops": f, "peak_gflops": 0.0, "machine": machine(),
        }));
    }
    append_json(opts.json.as_deref(), &json)
}

/// One timed result read back from a JSON-lines file.
struct Record {
    workload: String,
    backend: String,
    seconds: f64,
    reps: u64,
    images: f64,
    flops: f64,
    peak: f64,
}

fn merge(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut records = Vec::new();
    let mut torch_version = None;
    let mut machines: Vec<String> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?;
        let s = |k: &str| v[k].as_str().map(str::to_string);
        let f = |k: &str| v[k].as_f64();
        let (Some(workload), Some(backend), Some(seconds)) =
            (s("workload"), s("backend"), f("seconds"))
        else {
            return Err(format!(
                "{} line {}: needs workload, backend, seconds",
                path.display(),
                i + 1
            ));
        };
        if let Some(t) = s("torch_version") {
            torch_version = Some(format!("{t}, {} threads", v["threads"]));
        }
        if let Some(m) = v.get("machine").filter(|m| m.is_object()) {
            let line = format!(
                "{}: {} ({}), {} threads, {}",
                backend_of(&v),
                m["cpu"].as_str().unwrap_or("?"),
                m["simd"].as_str().unwrap_or("?"),
                m["threads"],
                m["allocator"].as_str().unwrap_or("?")
            );
            if !machines.contains(&line) {
                machines.push(line);
            }
        }
        records.push(Record {
            workload,
            backend,
            seconds,
            reps: v["reps"].as_u64().unwrap_or(0),
            images: f("images").unwrap_or(0.0),
            flops: f("flops").unwrap_or(0.0),
            peak: f("peak_gflops").unwrap_or(0.0),
        });
    }
    // FLOPs and images per run come from our rows; PyTorch runs the same workloads.
    let size = |w: &str| {
        records
            .iter()
            .find(|r| r.workload == w && r.flops > 0.0)
            .map(|r| (r.images, r.flops))
    };
    // The machine's peak: the fastest large matrix product any backend achieved in the run.
    let machine_peak = records.iter().map(|r| r.peak).fold(0.0, f64::max);
    println!(
        "| workload | backend | median | runs | images/s | dense GFLOP/s | % of peak | ours / PyTorch |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut seen = Vec::new();
    for r in &records {
        if seen.contains(&(r.workload.clone(), r.backend.clone())) {
            continue;
        }
        seen.push((r.workload.clone(), r.backend.clone()));
        // Operations without dense products (norms) have no FLOP count.
        let (images, flops) = size(&r.workload).unwrap_or((r.images, 0.0));
        let peak = machine_peak;
        let gflops = flops / r.seconds / 1e9;
        let ratio = match records
            .iter()
            .find(|t| t.backend == "torch" && t.workload == r.workload)
        {
            Some(t) if r.backend != "torch" => format!("{:.2}", r.seconds / t.seconds),
            _ => String::new(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {ratio} |",
            r.workload,
            r.backend,
            human(r.seconds),
            r.reps,
            if images > 0.0 {
                format!("{:.1}", images / r.seconds)
            } else {
                String::new()
            },
            if flops > 0.0 {
                format!("{gflops:.1}")
            } else {
                String::new()
            },
            if peak > 0.0 && flops > 0.0 {
                format!("{:.0}", 100.0 * gflops / peak)
            } else {
                String::new()
            },
        );
    }
    let mut peaks: Vec<String> = records
        .iter()
        .filter(|r| r.peak > 0.0)
        .map(|r| format!("{} {:.1}", r.backend, r.peak))
        .collect();
    peaks.dedup();
    println!(
        "\nPeak = the fastest 2048×2048 f32 matrix product measured in the same run, {machine_peak:.1} \
         GFLOP/s; per backend: {}",
        peaks.join(", ")
    );
    if let Some(t) = torch_version {
        println!("PyTorch: {t}");
    }
    for m in machines {
        println!("Machine ({m})");
    }
    Ok(())
}

/// The `backend` field of a row.
fn backend_of(v: &serde_json::Value) -> String {
    v["backend"].as_str().unwrap_or("?").to_string()
}

fn human(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

// ---------------------------------------------------------------- export for PyTorch

/// Named f32 / i64 tensors written to one safetensors file.
#[derive(Default)]
struct Bundle(BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>);

impl Bundle {
    fn f32<const D: usize>(&mut self, name: &str, t: Tensor<D>) -> Result<(), String> {
        let shape = t.dims().to_vec();
        let v: Vec<f32> = t
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| format!("{name}: {e:?}"))?;
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.0
            .insert(name.into(), (safetensors::Dtype::F32, shape, bytes));
        Ok(())
    }

    fn tokens(&mut self, name: &str, rows: &[Vec<u32>]) {
        let shape = vec![rows.len(), rows.first().map_or(0, Vec::len)];
        let bytes = rows
            .iter()
            .flatten()
            .flat_map(|&x| i64::from(x).to_le_bytes())
            .collect();
        self.0
            .insert(name.into(), (safetensors::Dtype::I64, shape, bytes));
    }

    fn write(&self, path: &Path) -> Result<(), String> {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .0
            .iter()
            .map(|(k, (d, s, b))| {
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| format!("{k}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        safetensors::serialize_to_file(views, None, path)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), String> {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn model_dir<D: Module + Denoiser + ModuleDisplay>(
    dir: &Path,
    config: &ShapesModelConfig,
    model: &TextToImage<D>,
    lora: bool,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    config
        .save(dir.join("model.json"))
        .map_err(|e| format!("model.json: {e}"))?;
    if lora {
        write_json(
            &dir.join("lora.json"),
            &serde_json::json!({"rank": 8, "alpha": 8.0}),
        )?;
    }
    save_safetensors(model, &dir.join("model.safetensors")).map_err(|e| e.to_string())
}

fn export_forward<D: Module + Denoiser + ModuleDisplay>(
    dir: &Path,
    config: &ShapesModelConfig,
    model: &TextToImage<D>,
    t: Vec<f32>,
    device: &Device,
) -> Result<(), String>
where
    TextToImage<D>: Denoiser,
{
    model_dir(dir, config, model, false)?;
    let (rows, _) = workloads::prompt_tokens(IMAGES)?;
    let c = model.encode(&rows, device).map_err(|e| e.to_string())?;
    let x = workloads::images(IMAGES, 1, device)?;
    let t = Tensor::<1>::from_data(TensorData::new(t, [IMAGES]), device);
    let out = model.predict(x.clone(), t.clone(), &c);
    let mut b = Bundle::default();
    b.tokens("tokens", &rows);
    b.f32("x", x)?;
    b.f32("t", t)?;
    b.f32("out", out)?;
    b.write(&dir.join("io.safetensors"))
}

/// Step coefficients of the trained steps, for the PyTorch side's sampler step.
fn step_info<S: Sampler + ?Sized>(
    sampler: &S,
    ddim: Option<&align_samplers::DdimSampler>,
    flow: Option<&align_samplers::FlowSdeSampler>,
) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = UPDATE_STEPS
        .iter()
        .map(|&k| {
            let mut v = serde_json::json!({
                "k": k, "model_time": sampler.model_time(k), "std": sampler.step_std(k),
            });
            if let Some(d) = ddim {
                let (a, a_prev) = d.alphas(k);
                v["alpha_bar"] = a.into();
                v["alpha_bar_prev"] = a_prev.into();
                v["clip_sample"] = 1.0.into();
            }
            if let Some(f) = flow {
                let (t, t_next) = f.grid().interval(k);
                v["t"] = t.into();
                v["t_next"] = t_next.into();
                v["sigma"] = f.sigma(k).into();
            }
            v
        })
        .collect();
    serde_json::Value::Array(steps)
}

#[allow(clippy::too_many_arguments)]
fn export_update<D: Module + Denoiser + ModuleDisplay, S: Sampler + ?Sized>(
    dir: &Path,
    config: &ShapesModelConfig,
    base: TextToImage<D>,
    sampler: &S,
    steps: serde_json::Value,
    kl: bool,
    device: &Device,
) -> Result<(), String>
where
    TextToImage<D>: Denoiser,
{
    let u = RlUpdate::new(base, sampler, device)?;
    model_dir(dir, config, &u.policy, true)?;
    let (rows, nulls) = workloads::prompt_tokens(UPDATE_SAMPLES)?;
    let (_, stats) = u.gradients(sampler, kl)?;
    let frozen = u.policy.clone().no_grad();
    let c = frozen.encode(&rows, device).map_err(|e| e.to_string())?;
    let n = frozen.encode(&nulls, device).map_err(|e| e.to_string())?;
    let mut b = Bundle::default();
    b.tokens("tokens", &rows);
    b.tokens("null_tokens", &nulls);
    b.f32(
        "advantages",
        Tensor::<1>::from_data(
            TensorData::new(
                u.advantages.iter().map(|&a| a as f32).collect(),
                [UPDATE_SAMPLES],
            ),
            device,
        ),
    )?;
    let mut log_probs = serde_json::Map::new();
    for &k in &UPDATE_STEPS {
        let traj = &u.trajectory;
        b.f32(&format!("x.{k}"), traj.latents[k].clone())?;
        b.f32(&format!("next.{k}"), traj.latents[k + 1].clone())?;
        let old = traj.log_probs[k]
            .clone()
            .ok_or("a stochastic step has no log-prob")?;
        b.f32(&format!("old_log_prob.{k}"), old)?;
        let out = rescore(&frozen, sampler, traj, k, &c, Some(&n)).map_err(|e| e.to_string())?;
        let lp = out.log_prob.ok_or("rescored step has no log-prob")?;
        let lp: Vec<f32> = lp.into_data().try_to_vec().map_err(|e| format!("{e:?}"))?;
        log_probs.insert(k.to_string(), lp.into());
        if kl {
            // The reference encodes the prompts with its own (adapters-off) text encoder, as
            // `policy_gradients` does.
            let reference = with_lora_scale(u.policy.clone(), 0.0).no_grad();
            let rc = reference.encode(&rows, device).map_err(|e| e.to_string())?;
            let rn = reference
                .encode(&nulls, device)
                .map_err(|e| e.to_string())?;
            let out =
                rescore(&reference, sampler, traj, k, &rc, Some(&rn)).map_err(|e| e.to_string())?;
            b.f32(&format!("ref_mean.{k}"), out.mean)?;
        }
    }
    b.write(&dir.join("update.safetensors"))?;
    write_json(
        &dir.join("update.json"),
        &serde_json::json!({
            "steps": steps,
            "guidance": workloads::GUIDANCE,
            "clip_range": workloads::CLIP_RANGE,
            "kl_beta": if kl { workloads::KL_BETA } else { 0.0 },
            "learning_rate": workloads::LEARNING_RATE,
            "weight_decay": workloads::WEIGHT_DECAY,
            "adam_eps": 1e-8,
            "loss": stats.loss,
            "policy_loss": stats.policy_loss,
            "kl": stats.kl,
            "clip_fraction": stats.clip_fraction,
            "log_probs": log_probs,
        }),
    )
}

fn export(dir: &Path, opts: &Options) -> Result<(), String> {
    let device = select_device(opts.device.as_deref()).map_err(|e| e.to_string())?;
    let train = device.clone().autodiff();
    let (ucfg, unet) = workloads::unet(&device)?;
    let (dcfg, dit) = workloads::dit(&device)?;
    export_forward(
        &dir.join("unet"),
        &ucfg,
        &unet,
        (0..IMAGES).map(|i| (i * 31 % 1000) as f32).collect(),
        &device,
    )?;
    export_forward(
        &dir.join("dit"),
        &dcfg,
        &dit,
        (0..IMAGES)
            .map(|i| (i as f32 + 0.5) / IMAGES as f32)
            .collect(),
        &device,
    )?;
    let ddim = workloads::ddim_sampler(1.0)?;
    let info = step_info(&ddim, Some(&ddim), None);
    export_update(
        &dir.join("ddpo"),
        &ucfg,
        workloads::unet(&train)?.1,
        &ddim,
        info,
        false,
        &train,
    )?;
    let flow = workloads::flow_sampler()?;
    let info = step_info(&flow, None, Some(&flow));
    export_update(
        &dir.join("grpo"),
        &dcfg,
        workloads::dit(&train)?.1,
        &flow,
        info,
        true,
        &train,
    )?;
    write_json(
        &dir.join("workloads.json"),
        &serde_json::json!({
            "images": IMAGES, "update_samples": UPDATE_SAMPLES, "update_steps": UPDATE_STEPS,
            "train_steps": workloads::TRAIN_STEPS,
        }),
    )
}

/// The allocator setting of this process (set once in `main`).
static ALLOCATOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// What every row records about the machine: the CPU model and its SIMD flags (from
/// `/proc/cpuinfo`), the threads available, and the allocator.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let simd: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| ["sse4_2", "avx", "avx2", "fma", "f16c"].contains(f) || f.starts_with("avx512"))
        .collect();
    serde_json::json!({
        "cpu": field("model name"),
        "simd": simd.join(" "),
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "allocator": ALLOCATOR.get().cloned().unwrap_or_default(),
    })
}

fn main() -> ExitCode {
    let _ = ALLOCATOR.set(align_core::tune_allocator().to_string());
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-table: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match (&opts.export, &opts.merge) {
        (Some(dir), _) => export(dir, &opts),
        (None, Some(file)) => merge(file),
        (None, None) if opts.ops => ops(&opts),
        (None, None) => run(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-table: {e}");
            ExitCode::FAILURE
        }
    }
}
