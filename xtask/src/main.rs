//! Project automation for the `align` workspace, run as `cargo xtask <command>`.
//!
//! - `cargo xtask test --backend <flex|ndarray|wgpu>` runs the backend-sensitive test suites
//!   (`align-core`, `align-samplers`, and the algorithm crates `align-rl`, `align-backprop`,
//!   `align-pref`) on one burn backend. Each non-default backend builds in
//!   its own target directory (`target/xtask-<backend>`) so that switching backends never
//!   invalidates the main build. `wgpu` runs on whatever adapter wgpu finds; on a machine
//!   without a GPU install Mesa's lavapipe first
//!   (`apt-get install -y mesa-vulkan-drivers libvulkan1`): the tests then use
//!   `BURN_DEVICE=wgpu-cpu`.
//! - `cargo xtask ci` runs what `.ci/run` runs: format check, clippy with warnings denied, and
//!   the workspace tests.
//! - `cargo xtask bench [--backends a,b] [--vs-torch] [-- <bench-table args>]` builds the
//!   `bench-table` runner of `align-benches` in release mode with every backend to be measured
//!   (`flex` and `ndarray` always; `wgpu` when a Vulkan driver is installed; `cuda` when
//!   `nvidia-smi` is found; `--backends` overrides), in its own target directory
//!   (`target/xtask-bench`; another backend set rebuilds burn there, minutes), runs the
//!   model-sized workloads on each backend in a fresh process
//!   and prints one table: workload × backend, median time, images/s, dense GFLOP/s and the
//!   fraction of the peak measured in the same run by a 2048² matrix product. With
//!   `--vs-torch` it also exports the weights and inputs and runs the PyTorch reference
//!   (`bench/reference/torch_bench.py`, which first checks that its outputs agree with ours)
//!   with as many threads as ours, adding our time / PyTorch's time per workload.
//! - `cargo xtask bench <name>` runs one criterion benchmark of `align-benches` (`samplers`,
//!   `shapes`, `models`) or the reward-backprop memory table (`backprop_memory`) on the
//!   default backend. Results are recorded in docs/benchmarks.md.
//! - `cargo xtask efficacy [--quick] [--jobs N] [--only a,b] [--table-only] [--rows FILE]`
//!   builds `align` in release mode and runs the rows of `configs/efficacy/rows.toml` (every
//!   method from its shipped config, before/after held-out evaluation), copies each finished
//!   row's report into `docs/efficacy/<row>/` and writes the table and the held-out accuracy
//!   figure into docs/efficacy.md. Finished rows are skipped and an interrupted row resumes
//!   from its last checkpoint, so the table can be built over several sittings. `--quick` runs
//!   the small subset marked `quick` with tiny budgets into `runs/efficacy-quick/`.

mod efficacy;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// Crates whose tests exercise tensor math on the selected backend: the foundations and the
/// algorithm crates (exactness, finite-difference and toy end-to-end tests).
const BACKEND_CRATES: [&str; 5] = [
    "align-core",
    "align-samplers",
    "align-rl",
    "align-backprop",
    "align-pref",
];

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask test --backend <flex|ndarray|wgpu> [-- <cargo test args>]\n       cargo xtask ci\n       cargo xtask bench [--backends flex,ndarray,wgpu,cuda] [--vs-torch] [-- <bench-table args>]\n       cargo xtask bench <samplers|shapes|models|backprop_memory>\n       cargo xtask efficacy [--quick] [--jobs N] [--only a,b] [--table-only] [--rows FILE]"
    );
    ExitCode::from(2)
}

fn run(cmd: &mut Command) -> bool {
    eprintln!("xtask: running {cmd:?}");
    match cmd.status() {
        Ok(status) => status.success(),
        Err(e) => {
            eprintln!("xtask: could not start {cmd:?}: {e}");
            false
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn test_backend(backend: &str, extra: &[String]) -> bool {
    let (feature, device) = match backend {
        "flex" => ("flex", "flex"),
        "ndarray" => ("ndarray", "ndarray"),
        "wgpu" => ("wgpu", "wgpu-cpu"),
        "cuda" => ("cuda", "cuda"),
        other => {
            eprintln!("xtask: unknown backend `{other}` (expected flex, ndarray, wgpu or cuda)");
            return false;
        }
    };
    let mut cmd = cargo();
    cmd.arg("test");
    for krate in BACKEND_CRATES {
        cmd.args(["-p", krate]);
    }
    // Doc tests pin `flex` explicitly; the backend run covers unit and integration tests.
    // Every test binary runs even when one fails: a lane reports all of a backend's gaps.
    cmd.args([
        "--lib",
        "--tests",
        "--no-fail-fast",
        "--features",
        &format!("align-core/{feature}"),
    ]);
    cmd.env(
        "BURN_DEVICE",
        std::env::var("XTASK_DEVICE").unwrap_or_else(|_| device.into()),
    );
    if backend != "flex" {
        let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        cmd.env("CARGO_TARGET_DIR", format!("{dir}/xtask-{backend}"));
    }
    if backend == "wgpu" && std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Silences the Vulkan loader's "XDG_RUNTIME_DIR is invalid" noise.
        cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    run(&mut cmd)
}

fn ci() -> bool {
    run(cargo().args(["fmt", "--all", "--", "--check"]))
        && run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
        && run(cargo().args(["test", "--workspace"]))
}

/// The backends `cargo xtask bench` measures when `--backends` is not given.
fn default_backends() -> Vec<String> {
    let mut b = vec!["flex".to_string(), "ndarray".to_string()];
    let vulkan = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .any(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()));
    if vulkan {
        b.push("wgpu".into());
    }
    if Command::new("nvidia-smi")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        b.push("cuda".into());
    }
    b
}

/// `cargo xtask bench [--backends ..] [--vs-torch] [-- ..]`: builds and runs `bench-table`.
fn bench_table(args: &[String]) -> Result<bool, String> {
    let (ours, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &args[args.len()..]),
    };
    let mut backends = default_backends();
    let mut vs_torch = false;
    let mut it = ours.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backends" => {
                let list = it.next().ok_or("--backends needs a list")?;
                backends = list.split(',').map(str::to_string).collect();
                if let Some(bad) = backends
                    .iter()
                    .find(|b| !["flex", "ndarray", "wgpu", "cuda"].contains(&b.as_str()))
                {
                    return Err(format!("unknown backend `{bad}` in --backends"));
                }
            }
            "--vs-torch" => vs_torch = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let root = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let dir = PathBuf::from(root).join("xtask-bench");
    let mut build = cargo();
    build
        .args([
            "build",
            "--release",
            "-p",
            "align-benches",
            "--bin",
            "bench-table",
        ])
        .args(["--features", &backends.join(",")])
        .env("CARGO_TARGET_DIR", &dir);
    if !run(&mut build) {
        return Ok(false);
    }
    let exe = dir.join("release").join("bench-table");
    let results = dir.join("bench-results.jsonl");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(&results, "").map_err(|e| format!("{}: {e}", results.display()))?;
    let mut all_ok = true;
    for backend in &backends {
        let mut cmd = Command::new(&exe);
        cmd.args(["--device", backend])
            .arg("--json")
            .arg(&results)
            .args(extra);
        if backend == "wgpu" && std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
        }
        // One backend failing (no adapter, say) still leaves the others' rows.
        all_ok &= run(&mut cmd);
    }
    if vs_torch {
        let export = dir.join("torch-export");
        if !run(Command::new(&exe)
            .args(["--device", "flex", "--export"])
            .arg(&export))
        {
            return Ok(false);
        }
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let has_torch = Command::new(&python)
            .args(["-c", "import torch, safetensors, numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_torch {
            return Err(format!(
                "--vs-torch needs `{python}` with torch, safetensors and numpy \
                 (`pip install torch safetensors numpy`; see bench/reference/README.md)"
            ));
        }
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        // Single-operation reproducers, ours on flex and PyTorch's, into the same table.
        let mut ops = Command::new(&exe);
        ops.args(["--device", "flex", "--ops", "--json"])
            .arg(&results)
            .args(extra);
        all_ok &= run(&mut ops);
        let mut ops = Command::new(&python);
        ops.arg("bench/reference/ops.py")
            .args(["--threads", &threads.to_string(), "--json"])
            .arg(&results);
        all_ok &= run(&mut ops);
        let mut cmd = Command::new(&python);
        cmd.arg("bench/reference/torch_bench.py")
            .arg(&export)
            .args(["--threads", &threads.to_string(), "--json"])
            .arg(&results);
        if !run(&mut cmd) {
            return Ok(false);
        }
    }
    println!();
    Ok(run(Command::new(&exe).arg("--merge").arg(&results)) && all_ok)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ok = match args.first().map(String::as_str) {
        Some("test") => {
            let (ours, extra) = match args.iter().position(|a| a == "--") {
                Some(i) => (&args[1..i], &args[i + 1..]),
                None => (&args[1..], &args[args.len()..]),
            };
            let backend = match ours {
                [flag, name] if flag == "--backend" => name.as_str(),
                [] => "flex",
                _ => return usage(),
            };
            test_backend(backend, extra)
        }
        Some("ci") => ci(),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some(name @ ("samplers" | "shapes" | "models" | "backprop_memory")) => {
                run(cargo().args(["bench", "-p", "align-benches", "--bench", name]))
            }
            _ => match bench_table(&args[1..]) {
                Ok(ok) => ok,
                Err(e) => {
                    eprintln!("xtask: {e}");
                    return usage();
                }
            },
        },
        Some("efficacy") => efficacy::efficacy(&args[1..]),
        _ => return usage(),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
