//! Project automation for the `align` workspace, run as `cargo xtask <command>`.
//!
//! - `cargo xtask test --backend <flex|ndarray|wgpu>` runs the backend-sensitive test suites
//!   (`align-core`, `align-samplers`) on one burn backend. Each non-default backend builds in
//!   its own target directory (`target/xtask-<backend>`) so that switching backends never
//!   invalidates the main build. `wgpu` runs on whatever adapter wgpu finds; on a machine
//!   without a GPU install Mesa's lavapipe first
//!   (`apt-get install -y mesa-vulkan-drivers libvulkan1`): the tests then use
//!   `BURN_DEVICE=wgpu-cpu`.
//! - `cargo xtask ci` runs what `.ci/run` runs: format check, clippy with warnings denied, and
//!   the workspace tests.
//! - `cargo xtask bench [<bench name>]` runs the benchmarks of `align-benches` (criterion:
//!   `samplers`, `shapes`; peak memory of reward backprop: `backprop_memory`) on the default
//!   backend; results are recorded in docs/benchmarks.md.

use std::process::{Command, ExitCode};

/// Crates whose tests exercise tensor math on the selected backend.
const BACKEND_CRATES: [&str; 2] = ["align-core", "align-samplers"];

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask test --backend <flex|ndarray|wgpu> [-- <cargo test args>]\n       cargo xtask ci\n       cargo xtask bench [samplers|shapes|backprop_memory]"
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
    cmd.args([
        "--lib",
        "--tests",
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
        Some("bench") => {
            let mut cmd = cargo();
            cmd.args(["bench", "-p", "align-benches"]);
            match args.get(1) {
                Some(name)
                    if ["samplers", "shapes", "backprop_memory"].contains(&name.as_str()) =>
                {
                    cmd.args(["--bench", name]);
                }
                Some(_) => return usage(),
                None => {}
            }
            run(&mut cmd)
        }
        _ => return usage(),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
