//! Fault injection for every loader a user of `align` reaches.
//!
//! A [`Target`] is one loader (a TOML config, `model.json`, safetensors weights, a LoRA
//! adapter, preference JSONL and PNGs, a prompt file, a reward server's answer, a checkpoint
//! directory), the valid files it reads, and the file whose bytes are damaged. A campaign
//! ([`run_target`]) writes each damaged case into a fresh directory, runs the loader, and
//! records what happened:
//!
//! - **panics** (caught, counted; the required count is 0),
//! - **refusals** — the loader's error, which must name the damaged file (or, for inputs
//!   without a file, the reward; for a checkpoint directory, the directory),
//! - **acceptances** (damage a loader cannot see, e.g. a flipped bit inside a weight),
//! - the **largest single allocation** during the case, with [`TrackingAllocator`] installed:
//!   a loader must never allocate what a file declares but does not hold.
//!
//! `cargo run --release -p align-fuzz -- --cases 500` runs every target and prints the table
//! of docs/reliability.md; the test suite runs a few cases of each (and proptest over
//! arbitrary bytes) in CI.
//!
//! ```
//! let work = std::env::temp_dir().join(format!("align-fuzz-doc-{}", std::process::id()));
//! let targets = align_fuzz::targets(&work).unwrap();
//! let prompts = targets.iter().find(|t| t.name == "prompt file").unwrap();
//! for row in align_fuzz::run_target(prompts, &work, 10, 0) {
//!     assert_eq!((row.panics, row.unnamed), (0, 0), "{}", row.fault.name());
//! }
//! println!("{}", align_fuzz::markdown(&align_fuzz::run_target(prompts, &work, 10, 0)));
//! # std::fs::remove_dir_all(&work).unwrap();
//! ```

pub mod alloc;
pub mod mutate;
mod targets;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

pub use alloc::TrackingAllocator;
pub use mutate::Fault;
pub use targets::targets;

/// Runs the loader on a case directory: `Ok` when it accepts the input, its error otherwise.
pub type Loader = Box<dyn Fn(&Path) -> Result<(), String>>;

/// One loader under test.
pub struct Target {
    /// Name for tables, e.g. `train config (TOML)`.
    pub name: &'static str,
    /// The files the damage is applied to (relative to the case directory); a case picks one.
    pub files: Vec<&'static str>,
    /// Valid contents of the damaged file, one list per entry of `files`.
    pub seeds: Vec<Vec<Vec<u8>>>,
    /// The other files of a valid case: (path relative to the case directory, bytes).
    pub fixture: Vec<(PathBuf, Vec<u8>)>,
    /// The fault classes that apply.
    pub faults: Vec<Fault>,
    /// The loader.
    pub load: Loader,
    /// An error must contain one of these (empty: the case directory's path).
    pub names: Vec<&'static str>,
}

/// The tally of one target × fault class.
#[derive(Debug, Clone)]
pub struct Row {
    /// The target.
    pub target: &'static str,
    /// The fault class.
    pub fault: Fault,
    /// Cases tried.
    pub cases: usize,
    /// Cases the loader accepted.
    pub accepted: usize,
    /// Cases refused with an error.
    pub refused: usize,
    /// Cases that panicked (must be 0).
    pub panics: usize,
    /// Refusals whose error names neither the file nor the directory (must be 0).
    pub unnamed: usize,
    /// The largest single allocation seen in a case, bytes.
    pub largest_allocation: usize,
    /// Cases whose largest allocation exceeded [`allocation_limit`] (must be 0).
    pub oversized: usize,
    /// The first error (the case directory shown as `DIR`).
    pub example: Option<String>,
    /// The first panic message, if any.
    pub first_panic: Option<String>,
    /// The first unnamed error, if any.
    pub first_unnamed: Option<String>,
}

/// The largest single allocation a case may make: 4 MiB plus 16 times the damaged file (a
/// loader may hold a file and a few decoded copies, and the fixtures' largest tensor is far
/// below 4 MiB; it may not allocate what the file merely declares).
pub fn allocation_limit(file_len: usize) -> usize {
    (4 << 20) + 16 * file_len
}

thread_local! {
    static PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    static IN_CASE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs a panic hook that records the message of a panic inside a case on this thread
/// instead of printing it (every other panic prints as usual).
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = IN_CASE.with(std::cell::Cell::get)
                && PANIC.with(|p| {
                    let mut p = p.borrow_mut();
                    if p.is_none() {
                        *p = Some(format!("{info}"));
                    }
                    true
                });
            if !recorded {
                default(info);
            }
        }));
    });
}

/// What one case did.
enum Outcome {
    Accepted,
    Refused(String),
    Panicked(String),
}

/// Writes the case into `dir` (fresh) and runs the loader.
fn run_case(target: &Target, dir: &Path, file: &str, bytes: &[u8]) -> (Outcome, usize) {
    prepare(target, dir, file, bytes);
    run_prepared(target, dir)
}

/// Writes the fixture into `dir` (fresh), then `bytes` as `file`.
fn prepare(target: &Target, dir: &Path, file: &str, bytes: &[u8]) {
    let _ = std::fs::remove_dir_all(dir);
    for (path, content) in &target.fixture {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(p, content);
    }
    let p = dir.join(file);
    if let Some(parent) = p.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&p, bytes);
}

fn run_prepared(target: &Target, dir: &Path) -> (Outcome, usize) {
    quiet_panics();
    PANIC.with(|p| *p.borrow_mut() = None);
    alloc::reset_peak();
    IN_CASE.with(|c| c.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.load)(dir)));
    IN_CASE.with(|c| c.set(false));
    let peak = alloc::peak();
    let outcome = match result {
        Ok(Ok(())) => Outcome::Accepted,
        Ok(Err(e)) => Outcome::Refused(e),
        Err(_) => Outcome::Panicked(
            PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "panic".into()),
        ),
    };
    (outcome, peak)
}

/// The damaged bytes of one case.
fn damage(fault: Fault, seed: &[u8], file: &str, rng: &mut ChaCha8Rng) -> Vec<u8> {
    use mutate::*;
    match fault {
        Fault::Truncated => truncate(seed, rng),
        Fault::BitFlips => flip_bits(seed, rng),
        Fault::Spliced => splice(seed, rng),
        Fault::ArbitraryBytes => arbitrary(rng),
        Fault::Empty => Vec::new(),
        Fault::BadField => {
            if file.ends_with(".toml") {
                bad_field_toml(seed, rng)
            } else if file.ends_with(".jsonl") {
                bad_field_jsonl(seed, rng)
            } else {
                bad_field_json_bytes(seed, rng)
            }
        }
        Fault::HeaderJson | Fault::WrongDtype | Fault::WrongShape | Fault::HugeSize
            if file.ends_with(".safetensors") =>
        {
            safetensors_fault(seed, fault, rng)
        }
        Fault::HugeSize if file.ends_with(".png") => png_huge(seed, rng),
        Fault::LatestNowhere => {
            let names = [
                "checkpoint-000009\n",
                "checkpoint-000002.corrupt\n",
                "../../etc\n",
                "",
                "\u{0}\u{7f}garbage",
            ];
            names[below(rng, names.len())].as_bytes().to_vec()
        }
        _ => seed.to_vec(),
    }
}

/// Runs `cases` damaged inputs of every fault class of `target` (one for [`Fault::Empty`],
/// [`Fault::MissingFile`] once per file) in `work/case`, with damage drawn from `seed`.
pub fn run_target(target: &Target, work: &Path, cases: usize, seed: u64) -> Vec<Row> {
    let dir = work.join("case");
    let mut rows = Vec::new();
    for (k, &fault) in target.faults.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(k as u64 + 1);
        let mut row = Row {
            target: target.name,
            fault,
            cases: 0,
            accepted: 0,
            refused: 0,
            panics: 0,
            unnamed: 0,
            largest_allocation: 0,
            oversized: 0,
            example: None,
            first_panic: None,
            first_unnamed: None,
        };
        let n = match fault {
            Fault::Empty => 1,
            Fault::MissingFile => target.files.len(),
            _ => cases,
        };
        for case in 0..n {
            let f = match fault {
                Fault::MissingFile => case,
                Fault::LatestNowhere => target
                    .files
                    .iter()
                    .position(|f| *f == "LATEST")
                    .unwrap_or(0),
                _ => mutate::below(&mut rng, target.files.len()),
            };
            let file = target.files[f];
            let seeds = &target.seeds[f];
            let seed_bytes = &seeds[mutate::below(&mut rng, seeds.len())];
            let (outcome, peak, len) = if fault == Fault::MissingFile {
                prepare(target, &dir, file, seed_bytes);
                let _ = std::fs::remove_file(dir.join(file));
                let (o, p) = run_prepared(target, &dir);
                (o, p, 0)
            } else {
                let bytes = damage(fault, seed_bytes, file, &mut rng);
                let (o, p) = run_case(target, &dir, file, &bytes);
                (o, p, bytes.len())
            };
            row.cases += 1;
            row.largest_allocation = row.largest_allocation.max(peak);
            if peak > allocation_limit(len) {
                row.oversized += 1;
            }
            match outcome {
                Outcome::Accepted => row.accepted += 1,
                Outcome::Refused(e) => {
                    row.refused += 1;
                    let dir_text = dir.display().to_string();
                    let named = if target.names.is_empty() {
                        e.contains(&dir_text)
                    } else {
                        target.names.iter().any(|n| e.contains(n))
                    };
                    let shown = e.replace(&dir_text, "DIR");
                    if !named {
                        row.unnamed += 1;
                        row.first_unnamed.get_or_insert(shown.clone());
                    }
                    row.example.get_or_insert(shown);
                }
                Outcome::Panicked(m) => {
                    row.panics += 1;
                    row.first_panic.get_or_insert(format!(
                        "{file}: {}",
                        m.replace(&dir.display().to_string(), "DIR")
                    ));
                }
            }
        }
        rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

/// Runs one input through `target` as it is (no damage) — for property tests over arbitrary
/// bytes. Returns `Err` describing a panic, an unnamed error or an oversized allocation.
///
/// # Errors
/// The defect found.
pub fn check_bytes(
    target: &Target,
    work: &Path,
    file_index: usize,
    bytes: &[u8],
) -> Result<(), String> {
    let dir = work.join("case");
    let file = target.files[file_index % target.files.len()];
    let (outcome, peak) = run_case(target, &dir, file, bytes);
    if peak > allocation_limit(bytes.len()) {
        return Err(format!(
            "{}: a {peak}-byte allocation for a {}-byte {file}",
            target.name,
            bytes.len()
        ));
    }
    match outcome {
        Outcome::Accepted => Ok(()),
        Outcome::Panicked(m) => Err(format!("{}: panic on {file}: {m}", target.name)),
        Outcome::Refused(e) => {
            let named = if target.names.is_empty() {
                e.contains(&dir.display().to_string())
            } else {
                target.names.iter().any(|n| e.contains(n))
            };
            if named {
                Ok(())
            } else {
                Err(format!("{}: error does not name {file}: {e}", target.name))
            }
        }
    }
}

/// The campaign as a Markdown table (one row per target × fault class).
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| loader | fault class | cases | accepted | refused | panics | unnamed | largest allocation | example error |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let example = r
            .first_panic
            .as_ref()
            .or(r.first_unnamed.as_ref())
            .or(r.example.as_ref())
            .map(|e| {
                // One table cell: control characters (line breaks included, whatever the
                // damaged bytes held) escaped, pipes escaped.
                let e: String = e
                    .chars()
                    .map(|c| {
                        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                            c.escape_default().to_string()
                        } else {
                            c.to_string()
                        }
                    })
                    .collect::<String>()
                    .replace('|', "\\|");
                let short: String = e.chars().take(160).collect();
                if short.len() < e.len() {
                    format!("{short}…")
                } else {
                    short
                }
            })
            .unwrap_or_else(|| "—".into());
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.target,
            r.fault.name(),
            r.cases,
            r.accepted,
            r.refused,
            r.panics,
            r.unnamed,
            human_bytes(r.largest_allocation),
            example
        ));
    }
    out
}

fn human_bytes(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}
