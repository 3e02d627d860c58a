//! `align-fuzz`: the fault-injection campaign over every loader (see the crate docs).
//!
//! ```text
//! cargo run --release -p align-fuzz -- --cases 500 [--seed 0] [--target NAME] [--out FILE]
//! ```
//! Prints the Markdown table of docs/reliability.md (and writes it to `--out`); exits 1 if any
//! case panicked, gave an error naming neither its file nor its directory, or allocated more
//! than the limit.

use std::path::PathBuf;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: align_fuzz::TrackingAllocator = align_fuzz::TrackingAllocator;

/// Fault-injection campaign over align's loaders.
#[derive(Parser)]
struct Args {
    /// Damaged inputs per loader and fault class.
    #[arg(long, default_value_t = 200)]
    cases: usize,
    /// Seed of the damage.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Only loaders whose name contains this.
    #[arg(long)]
    target: Option<String>,
    /// Also write the table here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Work directory (fixtures and cases).
    #[arg(long)]
    work: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let work = args
        .work
        .unwrap_or_else(|| std::env::temp_dir().join(format!("align-fuzz-{}", std::process::id())));
    let targets = match align_fuzz::targets(&work) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("align-fuzz: {e}");
            std::process::exit(2);
        }
    };
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for t in &targets {
        if let Some(f) = &args.target
            && !t.name.contains(f.as_str())
        {
            continue;
        }
        let t0 = std::time::Instant::now();
        let r = align_fuzz::run_target(t, &work, args.cases, args.seed);
        let cases: usize = r.iter().map(|r| r.cases).sum();
        let panics: usize = r.iter().map(|r| r.panics).sum();
        eprintln!(
            "{:<40} {cases:>6} cases, {panics} panics, {:.1} s",
            t.name,
            t0.elapsed().as_secs_f64()
        );
        rows.extend(r);
    }
    let table = align_fuzz::markdown(&rows);
    let total: usize = rows.iter().map(|r| r.cases).sum();
    let bad: usize = rows
        .iter()
        .map(|r| r.panics + r.unnamed + r.oversized)
        .sum();
    let summary = format!(
        "{total} cases over {} loader × fault rows in {:.0} s (seed {}, {} per row): {} panics, {} unnamed errors, {} oversized allocations\n",
        rows.len(),
        started.elapsed().as_secs_f64(),
        args.seed,
        args.cases,
        rows.iter().map(|r| r.panics).sum::<usize>(),
        rows.iter().map(|r| r.unnamed).sum::<usize>(),
        rows.iter().map(|r| r.oversized).sum::<usize>(),
    );
    print!("{table}\n{summary}");
    if let Some(out) = args.out
        && let Err(e) = std::fs::write(&out, format!("{table}\n{summary}"))
    {
        eprintln!("align-fuzz: {}: {e}", out.display());
        std::process::exit(2);
    }
    let _ = std::fs::remove_dir_all(&work);
    if bad > 0 {
        std::process::exit(1);
    }
}
