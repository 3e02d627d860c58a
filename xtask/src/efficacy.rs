//! `cargo xtask efficacy`: every method of the efficacy table run end to end from its shipped
//! config, and the table and figure written from what the runs report.
//!
//! The rows are listed in `configs/efficacy/rows.toml` (the file's header documents its
//! fields). Each row is one `align` command (`pref-data`, `quickstart`, `train` or
//! `pref-train`) in its own run directory under the working directory (`runs/efficacy`, or
//! `runs/efficacy-quick` with `--quick`). When a row finishes, its report, metrics, effective
//! config, grids and the command's last printed lines are copied into its results directory
//! (`docs/efficacy/<row>/`, or `runs/efficacy-quick/results/<row>/`) with `row.json` (the
//! exact command, the commit, the date and the wall time). A row whose `row.json` exists is
//! not run again, and an interrupted row resumes from its run's last checkpoint, so the table
//! can be built over several sittings. Every figure in the table is read from those files:
//! nothing is typed in.
//!
//! The generated part of the table's markdown (`docs/efficacy.md`) sits between
//! `<!-- efficacy:begin -->` and `<!-- efficacy:end -->`; text outside the markers is kept.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

/// The marker lines around the generated table.
const BEGIN: &str = "<!-- efficacy:begin -->";
const END: &str = "<!-- efficacy:end -->";

/// The rows file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    row: Vec<Row>,
}

/// One row of the table: one run of `align`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    name: String,
    method: String,
    command: String,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    config: Option<PathBuf>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    quick_args: Option<Vec<String>>,
    #[serde(default)]
    set: toml::Table,
    #[serde(default)]
    quick_set: toml::Table,
    #[serde(default)]
    quick: bool,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    target: Option<Target>,
}

/// The goal for a row.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    gain: Option<f64>,
    accuracy: Option<f64>,
    win: Option<f64>,
    minutes: Option<f64>,
    diversity: Option<f64>,
}

/// Command-line options of `cargo xtask efficacy`.
#[derive(Debug, Default)]
struct Options {
    quick: bool,
    jobs: usize,
    only: Vec<String>,
    table_only: bool,
    rows: Option<PathBuf>,
}

/// Where a run's files go.
struct Paths {
    work: PathBuf,
    results: PathBuf,
    markdown: PathBuf,
    figure: PathBuf,
}

impl Paths {
    fn new(quick: bool) -> Self {
        if quick {
            let work = PathBuf::from("runs/efficacy-quick");
            Self {
                results: work.join("results"),
                markdown: work.join("efficacy.md"),
                figure: work.join("heldout-vs-samples.png"),
                work,
            }
        } else {
            Self {
                work: PathBuf::from("runs/efficacy"),
                results: PathBuf::from("docs/efficacy"),
                markdown: PathBuf::from("docs/efficacy.md"),
                figure: PathBuf::from("docs/efficacy/heldout-vs-samples.png"),
            }
        }
    }
}

const USAGE: &str =
    "usage: cargo xtask efficacy [--quick] [--jobs N] [--only a,b] [--table-only] [--rows FILE]";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        jobs: 1,
        ..Options::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--quick" => o.quick = true,
            "--table-only" => o.table_only = true,
            "--jobs" => {
                let v = value("--jobs")?;
                o.jobs = v
                    .parse()
                    .ok()
                    .filter(|n: &usize| *n >= 1)
                    .ok_or_else(|| format!("--jobs: `{v}` is not a count ≥ 1"))?;
            }
            "--only" => o.only = value("--only")?.split(',').map(str::to_string).collect(),
            "--rows" => o.rows = Some(PathBuf::from(value("--rows")?)),
            other => return Err(format!("unknown option `{other}`\n{USAGE}")),
        }
    }
    Ok(o)
}

fn read_plan(path: &Path) -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let plan: Plan = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut seen = HashSet::new();
    for r in &plan.row {
        let bad = |why: String| Err(format!("{}: row `{}`: {why}", path.display(), r.name));
        if r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return bad("the name must be letters, digits and `-`".into());
        }
        match r.command.as_str() {
            "train" | "pref-train" if r.config.is_none() => {
                return bad(format!("`{}` needs a config", r.command));
            }
            "train" | "pref-train" | "quickstart" | "pref-data" => {}
            other => return bad(format!("unknown command `{other}`")),
        }
        for n in &r.needs {
            if !seen.contains(n) {
                return bad(format!("needs `{n}`, which is not an earlier row"));
            }
        }
        if !seen.insert(r.name.clone()) {
            return bad("a second row of that name".into());
        }
    }
    Ok(plan.row)
}

/// Runs the table: `args` are the options after `efficacy`. Returns whether every selected
/// row is done and the table was written.
pub fn efficacy(args: &[String]) -> bool {
    match efficacy_inner(args) {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("xtask efficacy: {e}");
            false
        }
    }
}

fn efficacy_inner(args: &[String]) -> Result<bool, String> {
    let options = parse(args)?;
    let rows_path = options
        .rows
        .clone()
        .unwrap_or_else(|| PathBuf::from("configs/efficacy/rows.toml"));
    let plan = read_plan(&rows_path)?;
    for n in &options.only {
        if !plan.iter().any(|r| &r.name == n) {
            return Err(format!("--only: no row `{n}` in {}", rows_path.display()));
        }
    }
    let selected: Vec<Row> = plan
        .iter()
        .filter(|r| !options.quick || r.quick)
        .filter(|r| options.only.is_empty() || options.only.contains(&r.name))
        .cloned()
        .collect();
    let paths = Paths::new(options.quick);
    let bin = align_binary();
    let mut ok = true;
    if !options.table_only {
        if !crate::run(crate::cargo().args(["build", "--release", "-p", "align-cli"])) {
            return Err("building the `align` binary failed".into());
        }
        // The commit the binary was built from; later commits (results, docs) do not change
        // what the rows run.
        let build = Build {
            commit: git(&["rev-parse", "HEAD"]),
            dirty: !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        };
        ok = run_rows(&plan, &selected, &paths, &options, &bin, &build)?;
    }
    let table_rows: Vec<Row> = plan
        .iter()
        .filter(|r| !options.quick || r.quick)
        .cloned()
        .collect();
    write_table(&table_rows, &paths, options.quick, &bin)?;
    eprintln!("xtask efficacy: wrote {}", paths.markdown.display());
    Ok(ok)
}

/// What the rows of one call run: the commit the `align` binary was built from.
#[derive(Clone)]
struct Build {
    commit: String,
    dirty: bool,
}

fn align_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("release").join("align")
}

fn done(paths: &Paths, name: &str) -> bool {
    paths.results.join(name).join("row.json").exists()
}

/// A needed row is ready when it is done and its output (e.g. a dataset) is in the working
/// directory; results are committed, working directories are not.
fn ready(paths: &Paths, name: &str) -> bool {
    done(paths, name) && paths.work.join(name).exists()
}

/// Runs the selected rows that are not done, `options.jobs` at a time, each after the rows it
/// needs. Returns whether all succeeded.
fn run_rows(
    plan: &[Row],
    selected: &[Row],
    paths: &Paths,
    options: &Options,
    bin: &Path,
    build: &Build,
) -> Result<bool, String> {
    std::fs::create_dir_all(&paths.work).map_err(|e| format!("{}: {e}", paths.work.display()))?;
    std::fs::create_dir_all(&paths.results)
        .map_err(|e| format!("{}: {e}", paths.results.display()))?;
    let mut pending: Vec<Row> = selected
        .iter()
        .filter(|r| !done(paths, &r.name))
        .cloned()
        .collect();
    for r in selected {
        if done(paths, &r.name) {
            eprintln!(
                "xtask efficacy: {} is done (delete its results directory to rerun it)",
                r.name
            );
        }
    }
    // A done row whose output a pending row needs but which this working directory lacks (a
    // fresh clone holds the results, not the runs) is run again first: its commands are
    // seeded, so it writes the same output.
    let mut rerun: Vec<Row> = Vec::new();
    for r in &pending {
        for n in &r.needs {
            if done(paths, n)
                && !ready(paths, n)
                && !rerun.iter().any(|x| &x.name == n)
                && let Some(row) = plan.iter().find(|p| &p.name == n)
            {
                eprintln!(
                    "xtask efficacy: running {n} again: {} needs its output",
                    r.name
                );
                rerun.push(row.clone());
            }
        }
    }
    pending.splice(0..0, rerun);
    // A needed row that is neither done nor selected can never finish in this call.
    for r in &pending {
        for n in &r.needs {
            if !done(paths, n) && !pending.iter().any(|p| &p.name == n) {
                return Err(format!(
                    "row `{}` needs `{n}`, which is not done and not selected",
                    r.name
                ));
            }
        }
    }
    let (tx, rx) = mpsc::channel::<(String, Result<(), String>)>();
    let mut running = 0usize;
    let mut failed: HashSet<String> = HashSet::new();
    let mut ok = true;
    let threads_each = if options.jobs > 1 { Some("1") } else { None };
    loop {
        // Rows that need a failed row cannot run.
        pending.retain(|r| {
            let blocked = r.needs.iter().any(|n| failed.contains(n));
            if blocked {
                eprintln!("xtask efficacy: skipping {}: a row it needs failed", r.name);
                ok = false;
            }
            !blocked
        });
        while running < options.jobs {
            let Some(i) = pending
                .iter()
                .position(|r| r.needs.iter().all(|n| ready(paths, n)))
            else {
                break;
            };
            let row = pending.remove(i);
            let tx = tx.clone();
            let (work, results, bin) =
                (paths.work.clone(), paths.results.clone(), bin.to_path_buf());
            let quick = options.quick;
            let build = build.clone();
            running += 1;
            eprintln!("xtask efficacy: starting {}", row.name);
            std::thread::spawn(move || {
                let r = run_row(&row, &work, &results, &bin, quick, threads_each, &build);
                let _ = tx.send((row.name.clone(), r));
            });
        }
        if running == 0 {
            break;
        }
        let (name, result) = rx
            .recv()
            .map_err(|e| format!("a row's thread vanished: {e}"))?;
        running -= 1;
        match result {
            Ok(()) => eprintln!("xtask efficacy: {name} done"),
            Err(e) => {
                eprintln!("xtask efficacy: {name} failed: {e}");
                failed.insert(name);
                ok = false;
            }
        }
    }
    Ok(ok)
}

/// Replaces `{work}` in every string of a TOML value.
fn substitute(v: &mut toml::Value, work: &str) {
    match v {
        toml::Value::String(s) => *s = s.replace("{work}", work),
        toml::Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, work)),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, x)| substitute(x, work)),
        _ => {}
    }
}

/// Sets `key` (dotted for sections) in `table`.
fn set_key(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().ok_or_else(|| format!("empty key `{key}`"))?;
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{key}`: `{p}` is not a section"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// The effective config of a `train` / `pref-train` row: the shipped config with `set`
/// (and, under `--quick`, `quick_set`) applied and `out` pointing at the row's run directory.
fn effective_config(row: &Row, work: &Path, out: &Path, quick: bool) -> Result<String, String> {
    let path = row.config.as_ref().ok_or("no config")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let work_s = work.display().to_string();
    let sets = if quick {
        vec![&row.set, &row.quick_set]
    } else {
        vec![&row.set]
    };
    for set in sets {
        for (k, v) in set {
            let mut v = v.clone();
            substitute(&mut v, &work_s);
            set_key(&mut table, k, v)?;
        }
    }
    table.insert("out".into(), toml::Value::String(out.display().to_string()));
    let body = toml::to_string(&table).map_err(|e| format!("writing the config: {e}"))?;
    Ok(format!(
        "# Effective config of efficacy row `{}`: {} with the row's overrides.\n{body}",
        row.name,
        path.display()
    ))
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs one row and copies its results. The run directory keeps the checkpoints (resumable);
/// the results directory appears only when the row is complete (written beside, then renamed).
fn run_row(
    row: &Row,
    work: &Path,
    results: &Path,
    bin: &Path,
    quick: bool,
    threads: Option<&str>,
    build: &Build,
) -> Result<(), String> {
    let out = work.join(&row.name);
    let work_s = work.display().to_string();
    let resume = out.join("LATEST").exists();
    let mut argv: Vec<String> = vec![row.command.clone()];
    let config_text = match row.command.as_str() {
        "train" | "pref-train" => {
            let text = effective_config(row, work, &out, quick)?;
            let cfg = work.join(format!("{}.toml", row.name));
            std::fs::write(&cfg, &text).map_err(|e| format!("{}: {e}", cfg.display()))?;
            argv.extend(["--config".into(), cfg.display().to_string()]);
            Some(text)
        }
        _ => {
            if row.command == "pref-data" && out.exists() {
                // A dataset is written in one go: a partial one is started again.
                std::fs::remove_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            }
            argv.extend(["--out".into(), out.display().to_string()]);
            let args = match (&row.quick_args, quick) {
                (Some(q), true) => q,
                _ => &row.args,
            };
            argv.extend(args.iter().map(|a| a.replace("{work}", &work_s)));
            None
        }
    };
    if resume && row.command != "pref-data" {
        argv.push("--resume".into());
    }
    let log_path = work.join(format!("{}.log", row.name));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(&argv)
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // The allocator: the `align` binary tunes glibc itself (`align_core::tune_allocator`, the
    // values docs/benchmarks.md measured); a caller's `MALLOC_*_` variables still take
    // precedence there.
    if let Some(t) = threads
        && std::env::var_os("RAYON_NUM_THREADS").is_none()
    {
        cmd.env("RAYON_NUM_THREADS", t);
    }
    let start = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {}: {e}", bin.display()))?;
    let wall = start.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!(
            "`align {}` exited with {status}; see {}",
            argv.join(" "),
            log_path.display()
        ));
    }
    let staging = results.join(format!("{}.partial", row.name));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    for f in [
        "report.json",
        "report.md",
        "metrics.jsonl",
        "grid-before.png",
        "grid-after.png",
        "curves.png",
    ] {
        let from = out.join(f);
        if from.exists() {
            std::fs::copy(&from, staging.join(f))
                .map_err(|e| format!("{}: {e}", from.display()))?;
        }
    }
    if let Some(text) = config_text {
        std::fs::write(staging.join("config.toml"), text).map_err(|e| e.to_string())?;
    }
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let lines: Vec<&str> = log_text.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    std::fs::write(staging.join("printed.txt"), tail + "\n").map_err(|e| e.to_string())?;
    let mut info = serde_json::json!({
        "name": row.name,
        "method": row.method,
        "command": format!("align {}", argv.join(" ")),
        "commit": build.commit,
        "dirty": build.dirty,
        "finished": now_utc(),
        "process_wall_seconds": wall,
        "resumed": resume,
        "quick": quick,
    });
    if row.command == "pref-data" {
        let (pairs, labels, desirable) = dataset_counts(&out)?;
        info["pairs"] = pairs.into();
        info["labels"] = labels.into();
        info["desirable"] = desirable.into();
    }
    let text = serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?;
    std::fs::write(staging.join("row.json"), text + "\n").map_err(|e| e.to_string())?;
    let dest = results.join(&row.name);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&staging, &dest).map_err(|e| format!("{}: {e}", dest.display()))
}

/// Pairs, labelled images and desirable images of a preference dataset directory.
fn dataset_counts(dir: &Path) -> Result<(usize, usize, usize), String> {
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let pairs = read("pairs.jsonl")?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let labels_text = read("labels.jsonl")?;
    let mut labels = 0;
    let mut desirable = 0;
    for line in labels_text.lines().filter(|l| !l.trim().is_empty()) {
        labels += 1;
        let v: Value = serde_json::from_str(line).map_err(|e| format!("labels.jsonl: {e}"))?;
        if v.get("desirable").and_then(Value::as_bool) == Some(true) {
            desirable += 1;
        }
    }
    Ok((pairs, labels, desirable))
}

/// What a finished row reports, in one shape for both report kinds.
#[derive(Debug, Clone, Default)]
struct Outcome {
    train: (f64, f64),
    heldout: (f64, f64),
    win: Option<(f64, f64, f64)>,
    diversity_ratio: Option<f64>,
    kl: Option<f64>,
    wall: f64,
    samples: Option<f64>,
    stopped: Option<String>,
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut v = v;
    for k in path {
        v = v.get(*k)?;
    }
    v.as_f64()
}

fn outcome(dir: &Path) -> Result<Outcome, String> {
    let report_path = dir.join("report.json");
    let r = read_json(&report_path)?;
    let missing = |f: &str| format!("{}: no `{f}`", report_path.display());
    let mut o = Outcome {
        wall: num(&r, &["wall_seconds"]).ok_or_else(|| missing("wall_seconds"))?,
        stopped: r.get("stopped").and_then(Value::as_str).map(str::to_string),
        ..Outcome::default()
    };
    if r.get("base").is_some_and(Value::is_object) {
        let get = |p: &[&str]| num(&r, p).ok_or_else(|| missing(&p.join(".")));
        o.train = (
            get(&["base", "train_accuracy"])?,
            get(&["final", "train_accuracy"])?,
        );
        o.heldout = (
            get(&["base", "heldout_accuracy"])?,
            get(&["final", "heldout_accuracy"])?,
        );
        o.win = r.get("heldout_win_rate").and_then(|w| {
            Some((
                w.get("rate")?.as_f64()?,
                w.get("low")?.as_f64()?,
                w.get("high")?.as_f64()?,
            ))
        });
        o.diversity_ratio = num(&r, &["final", "diversity_ratio"]);
        o.kl = num(&r, &["final", "kl"]);
        let metrics = dir.join("metrics.jsonl");
        if let Ok(text) = std::fs::read_to_string(&metrics) {
            o.samples = text
                .lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find_map(|v| v.get("samples").and_then(Value::as_f64));
        }
    } else {
        let get = |k: &str| num(&r, &[k]).ok_or_else(|| missing(k));
        o.train = (get("base_train_accuracy")?, get("final_train_accuracy")?);
        o.heldout = (
            get("base_heldout_accuracy")?,
            get("final_heldout_accuracy")?,
        );
        let ci = r
            .get("heldout_win_rate_ci")
            .and_then(Value::as_array)
            .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
        o.win = ci.map(|(lo, hi)| (num(&r, &["heldout_win_rate"]).unwrap_or(f64::NAN), lo, hi));
    }
    Ok(o)
}

fn pct(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

/// Whether the row met its target, and what missed.
fn verdict(t: &Target, o: &Outcome) -> String {
    let mut missed = Vec::new();
    let gain = o.heldout.1 - o.heldout.0;
    if let Some(g) = t.gain
        && gain < g
    {
        missed.push(format!("gain {:+.1} < {:+.0} pts", 100.0 * gain, 100.0 * g));
    }
    if let Some(a) = t.accuracy
        && o.heldout.1 < a
    {
        missed.push(format!("held-out {} < {}", pct(o.heldout.1), pct(a)));
    }
    if let Some(w) = t.win {
        match o.win {
            Some((rate, low, _)) if rate >= w && low > 0.5 => {}
            Some((rate, low, _)) => missed.push(format!(
                "win {} (low {}) < {} with low > 50 %",
                pct(rate),
                pct(low),
                pct(w)
            )),
            None => missed.push("no win rate".into()),
        }
    }
    if let Some(m) = t.minutes
        && o.wall / 60.0 > m
    {
        missed.push(format!("{:.1} min > {m:.0} min", o.wall / 60.0));
    }
    if let Some(d) = t.diversity {
        match o.diversity_ratio {
            Some(r) if r >= d => {}
            Some(r) => missed.push(format!("diversity {:.2} < {d:.2}", r)),
            None => missed.push("no diversity".into()),
        }
    }
    let mut goal = Vec::new();
    if let Some(g) = t.gain {
        goal.push(format!("≥ {:+.0} pts", 100.0 * g));
    }
    if let Some(a) = t.accuracy {
        goal.push(format!("≥ {}", pct(a)));
    }
    if let Some(w) = t.win {
        goal.push(format!("win ≥ {}", pct(w)));
    }
    if let Some(m) = t.minutes {
        goal.push(format!("≤ {m:.0} min"));
    }
    if let Some(d) = t.diversity {
        goal.push(format!("diversity ≥ {d:.2}"));
    }
    if missed.is_empty() {
        format!("{}: **met**", goal.join(", "))
    } else {
        format!("{}: missed ({})", goal.join(", "), missed.join("; "))
    }
}

/// Writes the markdown table (and the figure) from the rows' results directories.
fn write_table(rows: &[Row], paths: &Paths, quick: bool, bin: &Path) -> Result<(), String> {
    let mut md = String::new();
    md.push_str(&format!(
        "Generated by `cargo xtask efficacy{}` from the rows of `configs/efficacy/rows.toml`; \
each row's exact command, commit and date are in its `row.json` under `{}/`. Held-out and \
train figures are ShapeEval pass rates on the evaluation set's two parts (64 prompts each × \
the row's `eval_seeds` seeds); the win rate is the held-out gold (partial-credit) win rate of \
the final model's images over the base model's on the same prompts and seeds (ties ½), with its \
95 % bootstrap interval over images. Samples: images the model generated for training \
(rollouts; for preference rows, the dataset). Wall: the run's own time, evaluations included.\n\n",
        if quick { " --quick" } else { "" },
        paths.results.display()
    ));
    md.push_str("| method | row | samples | wall | train before → after | held-out before → after | held-out win rate (95 % CI) | diversity ratio | KL / step | target | commit |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut data_rows = Vec::new();
    let mut groups: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    let mut infos: HashMap<String, Value> = HashMap::new();
    let mut online_done = Vec::new();
    for row in rows {
        let dir = paths.results.join(&row.name);
        let info = match read_json(&dir.join("row.json")) {
            Ok(v) => v,
            Err(_) => {
                if row.command != "pref-data" {
                    md.push_str(&format!(
                        "| {} | `{}` | not run yet | | | | | | | | |\n",
                        row.method, row.name
                    ));
                }
                continue;
            }
        };
        let commit = info
            .get("commit")
            .and_then(Value::as_str)
            .map(|c| c.chars().take(7).collect::<String>())
            .unwrap_or_default()
            + if info.get("dirty").and_then(Value::as_bool) == Some(true) {
                "+"
            } else {
                ""
            };
        infos.insert(row.name.clone(), info.clone());
        if row.command == "pref-data" {
            data_rows.push(format!(
                "- `{}` ({}): {} labelled images ({} pass), {} pairs, {:.0} s; `{}` (commit {commit}).",
                row.name,
                row.method,
                info.get("labels").and_then(Value::as_u64).unwrap_or(0),
                info.get("desirable").and_then(Value::as_u64).unwrap_or(0),
                info.get("pairs").and_then(Value::as_u64).unwrap_or(0),
                info.get("process_wall_seconds").and_then(Value::as_f64).unwrap_or(0.0),
                info.get("command").and_then(Value::as_str).unwrap_or("")
            ));
            continue;
        }
        let mut o = outcome(&dir)?;
        if o.samples.is_none()
            && let Some(data) = row.needs.first()
        {
            o.samples = infos
                .get(data)
                .and_then(|i| i.get("labels"))
                .and_then(Value::as_f64);
        }
        if matches!(row.command.as_str(), "train" | "quickstart") {
            online_done.push(dir.clone());
        }
        let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map(f).unwrap_or("—".into());
        md.push_str(&format!(
            "| {} | `{}`{} | {} | {:.1} min | {} → {} | {} → **{}** | {} | {} | {} | {} | {commit} |\n",
            row.method,
            row.name,
            o.stopped
                .as_ref()
                .map(|s| format!(" (stopped: {s})"))
                .unwrap_or_default(),
            opt(o.samples, &|s| format!("{s:.0}")),
            o.wall / 60.0,
            pct(o.train.0),
            pct(o.train.1),
            pct(o.heldout.0),
            pct(o.heldout.1),
            o.win
                .map(|(r, lo, hi)| format!("{} ({}–{})", pct(r), pct(lo), pct(hi)))
                .unwrap_or("—".into()),
            opt(o.diversity_ratio, &|d| format!("{d:.2}")),
            opt(o.kl, &|k| format!("{k:.1e}")),
            row.target
                .as_ref()
                .map(|t| verdict(t, &o))
                .unwrap_or("—".into()),
        ));
        if let Some(g) = &row.group {
            groups.entry(g.clone()).or_default().push(o);
        }
    }
    if !data_rows.is_empty() {
        md.push_str("\nDatasets:\n\n");
        md.push_str(&data_rows.join("\n"));
        md.push('\n');
    }
    let multi: Vec<_> = groups.iter().filter(|(_, v)| v.len() >= 2).collect();
    if !multi.is_empty() {
        md.push_str("\nAcross training seeds (mean, and the range in brackets):\n\n| rows | seeds | held-out after | held-out gain | win rate |\n|---|---|---|---|---|\n");
        for (g, v) in multi {
            let stat = |f: &dyn Fn(&Outcome) -> f64| {
                let xs: Vec<f64> = v.iter().map(f).filter(|x| x.is_finite()).collect();
                let n = xs.len().max(1) as f64;
                let (lo, hi) = xs
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                        (a.min(x), b.max(x))
                    });
                (xs.iter().sum::<f64>() / n, lo, hi)
            };
            let show = |(m, lo, hi): (f64, f64, f64), pts: bool| {
                if pts {
                    format!(
                        "{:+.1} pts [{:+.1}, {:+.1}]",
                        100.0 * m,
                        100.0 * lo,
                        100.0 * hi
                    )
                } else {
                    format!("{} [{}, {}]", pct(m), pct(lo), pct(hi))
                }
            };
            md.push_str(&format!(
                "| `{g}` | {} | {} | {} | {} |\n",
                v.len(),
                show(stat(&|o| o.heldout.1), false),
                show(stat(&|o| o.heldout.1 - o.heldout.0), true),
                show(stat(&|o| o.win.map(|w| w.0).unwrap_or(f64::NAN)), false),
            ));
        }
    }
    if !online_done.is_empty() {
        let mut cmd = Command::new(bin);
        cmd.args(["plot", "--compare"]).arg(&paths.figure);
        for d in &online_done {
            cmd.arg("--run").arg(d);
        }
        if cmd
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            let rel = paths
                .figure
                .strip_prefix(paths.markdown.parent().unwrap_or(Path::new("")))
                .unwrap_or(&paths.figure);
            md.push_str(&format!(
                "\n![held-out ShapeEval accuracy against samples generated]({})\n\n\
The figure: held-out ShapeEval accuracy of every online row against the samples it had \
generated: the base model at 0, the periodic (monitor) evaluations in between (one seed per \
prompt, so ±12 points), and the final evaluation at the end (the row's `eval_seeds`). At \
the last iteration both the monitor's one-seed evaluation and the final one are drawn, so the \
vertical segment there is the one-seed evaluation's error.\n",
                rel.display()
            ));
        } else {
            md.push_str("\n(The figure could not be drawn: `align plot --compare` failed.)\n");
        }
    }
    let old = std::fs::read_to_string(&paths.markdown).unwrap_or_default();
    let text = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{BEGIN}\n{md}{}", &old[..b], &old[e..])
        }
        _ => format!("# Efficacy\n\n{BEGIN}\n{md}{END}\n"),
    };
    let tmp = paths.markdown.with_extension("md.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &paths.markdown).map_err(|e| format!("{}: {e}", paths.markdown.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rows_parse_and_name_existing_configs() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let rows = read_plan(&root.join("configs/efficacy/rows.toml")).expect("rows parse");
        assert!(rows.iter().any(|r| r.quick), "a --quick subset exists");
        for r in &rows {
            if let Some(c) = &r.config {
                let out = Path::new("runs/x").join(&r.name);
                let cfg = effective_config(
                    &Row {
                        config: Some(root.join(c)),
                        ..r.clone()
                    },
                    Path::new("runs/x"),
                    &out,
                    true,
                )
                .expect("effective config");
                let t: toml::Table = toml::from_str(&cfg).expect("the effective config is TOML");
                assert_eq!(t["out"].as_str(), Some(out.to_str().expect("utf-8")));
            }
        }
    }

    #[test]
    fn overrides_reach_sections_and_substitute_the_work_directory() {
        let mut t: toml::Table =
            toml::from_str("a = 1\n[runner]\niterations = 10\n").expect("toml");
        set_key(&mut t, "runner.iterations", toml::Value::Integer(40)).expect("set");
        set_key(&mut t, "kto.beta", toml::Value::Float(2.0)).expect("new section");
        let mut v = toml::Value::String("{work}/data".into());
        substitute(&mut v, "runs/w");
        set_key(&mut t, "data", v).expect("set");
        assert_eq!(t["runner"]["iterations"].as_integer(), Some(40));
        assert_eq!(t["kto"]["beta"].as_float(), Some(2.0));
        assert_eq!(t["data"].as_str(), Some("runs/w/data"));
        assert!(set_key(&mut t, "a.b", toml::Value::Integer(1)).is_err());
    }

    #[test]
    fn a_bad_rows_file_names_the_row_and_the_problem() {
        let dir = std::env::temp_dir().join(format!("xtask-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("rows.toml");
        let case = |text: &str| {
            std::fs::write(&p, text).expect("write");
            read_plan(&p).expect_err("must fail")
        };
        let e = case("[[row]]\nname = \"a\"\nmethod = \"m\"\ncommand = \"train\"\n");
        assert!(e.contains("row `a`") && e.contains("config"), "{e}");
        let e = case(
            "[[row]]\nname = \"a\"\nmethod = \"m\"\ncommand = \"quickstart\"\nneeds = [\"b\"]\n",
        );
        assert!(e.contains("needs `b`"), "{e}");
        let e = case("[[row]]\nname = \"a b\"\nmethod = \"m\"\ncommand = \"quickstart\"\n");
        assert!(e.contains("name"), "{e}");
        let e = case("[[row]]\nname = \"a\"\nmethod = \"m\"\ncommand = \"fly\"\n");
        assert!(e.contains("unknown command"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn verdicts_say_what_missed() {
        let o = Outcome {
            heldout: (0.3, 0.4),
            win: Some((0.55, 0.51, 0.6)),
            diversity_ratio: Some(0.9),
            wall: 300.0,
            ..Outcome::default()
        };
        let t = Target {
            gain: Some(0.25),
            minutes: Some(10.0),
            diversity: Some(0.7),
            ..Target::default()
        };
        let v = verdict(&t, &o);
        assert!(
            v.contains("missed") && v.contains("gain +10.0 < +25 pts"),
            "{v}"
        );
        assert!(!v.contains("min >"), "{v}");
        let met = verdict(
            &Target {
                win: Some(0.55),
                ..Target::default()
            },
            &o,
        );
        assert!(met.ends_with("**met**"), "{met}");
        let low = verdict(
            &Target {
                win: Some(0.5),
                ..Target::default()
            },
            &Outcome {
                win: Some((0.52, 0.49, 0.55)),
                ..o
            },
        );
        assert!(low.contains("missed"), "{low}");
    }
}
