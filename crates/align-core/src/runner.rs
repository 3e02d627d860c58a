//! The training runner every alignment algorithm plugs into.
//!
//! A [`Job`] knows how to do one iteration (roll out, score, compute gradients) and calls the
//! runner's `apply` for each optimizer step; the [`Runner`] owns everything else:
//!
//! - the optimizer: AdamW with explicit `ε` and weight decay (burn's defaults differ from
//!   PyTorch's; the defaults here are the published DDPO / Flow-GRPO values);
//! - a linear learning-rate warm-up (`warmup_iterations`), a function of the iteration alone;
//! - global-norm gradient clipping ([`crate::clip_grad_norm`]) before every step;
//! - `metrics.jsonl`: one JSON line per iteration (`iteration` plus the job's metrics,
//!   `grad_norm` and `optimizer_steps`), and the same table as `metrics.csv` (one column per
//!   metric, `iteration` first, empty cells where an iteration lacks a metric) for
//!   spreadsheets, rewritten after every iteration;
//! - stopping: a non-finite metric stops the run with [`CoreError::Diverged`] *before*
//!   anything of that iteration is written, so the last good checkpoint stays intact; a KL
//!   budget (`kl` metric above `kl_budget`) or a job's [`Control::Stop`] stops it cleanly;
//! - checkpoints: the model (burnpack, which keeps parameter ids), the optimizer state, the
//!   iteration and the job's state (trackers, counters) in `checkpoint-NNNNNN/`, with
//!   `files.sha256` (the SHA-256 of every other file, in `sha256sum` format), written to a
//!   temporary directory and renamed, then published by atomically replacing `LATEST`. The
//!   newest `keep_checkpoints` (default 2) are kept. A checkpoint that cannot be written (a
//!   full disk) stops the run with an error naming it; the last published one stays intact;
//! - resume: [`Runner::run`] with `resume = true` continues from `LATEST`, truncating
//!   `metrics.jsonl` to the checkpointed iteration. A checkpoint whose files do not match
//!   their digests is set aside (`checkpoint-NNNNNN.corrupt`) and the run continues from the
//!   newest older one that does, reporting both through [`Job::notice`]. With all randomness
//!   keyed by (seed, iteration, sample) a resumed run is bit-identical to an uninterrupted one;
//! - one writer: a run holds [`RunLock`] on its directory; a second run there is refused with
//!   [`CoreError::RunInUse`], and a lock left by a killed run is taken over.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, ModuleOptimizer, MultiGradientsParams, OptimizerRecord};
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Bool, Int, Tensor};

use crate::clip::{clip_grad_norm, clip_grad_norm_parts};
use crate::data_parallel::{Gradients, gather_to};
use crate::ema::{Ema, EmaConfig};
use crate::error::{CoreError, Result};
use crate::run_lock::RunLock;

/// Named scalar metrics of one iteration.
pub type Metrics = BTreeMap<String, f64>;

/// What a job asks the runner to do after an iteration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Keep going.
    Continue,
    /// Stop after checkpointing this iteration, for the stated reason.
    Stop(String),
}

/// One alignment algorithm, as the runner drives it.
pub trait Job<M: Module> {
    /// Runs iteration `iteration` (0-based): collect data with `model`, compute gradients and
    /// call `apply(model, grads.into())` for each optimizer step — one device's
    /// [`burn::optim::GradientsParams`], or [`Gradients::PerDevice`] from a data-parallel job
    /// ([`crate::data_parallel`]). Returns the updated model and the iteration's metrics
    /// (`kl`, if reported, is checked against the KL budget).
    ///
    /// # Errors
    /// Anything that makes the iteration unusable; the runner then stops without writing.
    fn iteration(
        &mut self,
        model: M,
        iteration: usize,
        apply: &mut dyn FnMut(M, Gradients) -> Result<M>,
    ) -> Result<(M, Metrics)>;

    /// The job's resumable state (trackers, counters) as JSON.
    ///
    /// # Errors
    /// State that cannot be serialised.
    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Restores [`Job::state`] from a checkpoint.
    ///
    /// # Errors
    /// State that does not belong to this job.
    fn restore(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }

    /// Called after each iteration with the updated model and, when the runner keeps one
    /// (`ema_decay`), the moving average of its weights (evaluation, sample grids, the
    /// reward-hacking monitor, saving the weights a user samples from); may add metrics or
    /// stop the run.
    ///
    /// # Errors
    /// A failing evaluation.
    fn after_iteration(
        &mut self,
        _model: &M,
        _average: Option<&M>,
        _iteration: usize,
        _metrics: &mut Metrics,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }

    /// Something the user should know that does not stop the run: a corrupt checkpoint set
    /// aside on resume, a lock taken over from a killed run. The default ignores it.
    fn notice(&mut self, _message: &str) {}
}

/// Runner settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerConfig {
    /// Iterations to run (a resumed run continues up to this number).
    pub iterations: usize,
    /// AdamW learning rate (after the warm-up).
    pub learning_rate: f64,
    /// Linear learning-rate warm-up: iteration `i` (0-based) uses
    /// `learning_rate · min(1, (i + 1) / warmup_iterations)`; 0 = no warm-up. The rate depends
    /// on the iteration alone, so a resumed run (which restores the optimizer moments) follows
    /// the same schedule as an uninterrupted one.
    pub warmup_iterations: usize,
    /// AdamW decoupled weight decay (PyTorch's default is 1e-2; DDPO and Flow-GRPO use 1e-4).
    pub weight_decay: f64,
    /// AdamW ε.
    pub adam_eps: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// Global gradient-norm clip (`None` = no clipping).
    pub max_grad_norm: Option<f64>,
    /// Checkpoint every this many iterations (and always at the end).
    pub checkpoint_every: usize,
    /// Stop when an iteration's `kl` metric exceeds this.
    pub kl_budget: Option<f64>,
    /// Keep an exponential moving average of the trainable weights with this decay
    /// ([`crate::Ema`], updated after every optimizer step, checkpointed as `ema.bpk`);
    /// `None` = no average.
    pub ema_decay: Option<f64>,
    /// Write only the trainable parameters (e.g. the LoRA factors) into checkpoints; a resumed
    /// run takes the frozen ones from the model it is given. For large frozen bases (Stable
    /// Diffusion: 4.3 GB in f32 against 3 MB of rank-4 adapters).
    pub checkpoint_trainable_only: bool,
    /// Checkpoints kept in the run directory, newest first (at least 1). A resume that finds
    /// the newest corrupt falls back to the next.
    pub keep_checkpoints: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            iterations: 100,
            learning_rate: 3e-4,
            warmup_iterations: 0,
            weight_decay: 1e-4,
            adam_eps: 1e-8,
            beta1: 0.9,
            beta2: 0.999,
            max_grad_norm: Some(1.0),
            checkpoint_every: 1,
            kl_budget: None,
            ema_decay: None,
            checkpoint_trainable_only: false,
            keep_checkpoints: 2,
        }
    }
}

impl RunnerConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`CoreError::Config`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.iterations == 0 {
            return Err(CoreError::config("iterations", "must be at least 1"));
        }
        if !positive(self.learning_rate) {
            return Err(CoreError::config(
                "learning_rate",
                "must be a positive number",
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(CoreError::config("weight_decay", "must be a number ≥ 0"));
        }
        if !positive(self.adam_eps) {
            return Err(CoreError::config("adam_eps", "must be a positive number"));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(b.is_finite() && (0.0..1.0).contains(&b)) {
                return Err(CoreError::config(name, "must lie in [0, 1)"));
            }
        }
        if let Some(c) = self.max_grad_norm
            && !positive(c)
        {
            return Err(CoreError::config(
                "max_grad_norm",
                "must be a positive number",
            ));
        }
        if self.checkpoint_every == 0 {
            return Err(CoreError::config("checkpoint_every", "must be at least 1"));
        }
        if self.keep_checkpoints == 0 {
            return Err(CoreError::config("keep_checkpoints", "must be at least 1"));
        }
        if let Some(k) = self.kl_budget
            && !positive(k)
        {
            return Err(CoreError::config("kl_budget", "must be a positive number"));
        }
        if let Some(d) = self.ema_decay
            && !(d.is_finite() && (0.0..1.0).contains(&d))
        {
            return Err(CoreError::config("ema_decay", "must lie in [0, 1)"));
        }
        Ok(())
    }

    /// The learning rate of iteration `iteration` (0-based): `learning_rate` scaled by the
    /// linear warm-up, `learning_rate · min(1, (iteration + 1) / warmup_iterations)`.
    pub fn learning_rate_at(&self, iteration: usize) -> f64 {
        if self.warmup_iterations == 0 {
            return self.learning_rate;
        }
        let fraction = (iteration + 1) as f64 / self.warmup_iterations as f64;
        self.learning_rate * fraction.min(1.0)
    }

    fn optimizer(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(self.beta1 as f32)
            .with_beta_2(self.beta2 as f32)
            .with_epsilon(self.adam_eps as f32)
            .with_weight_decay(self.weight_decay as f32)
            .init()
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome<M> {
    /// The final model.
    pub model: M,
    /// The moving average of its trainable weights (inner device), when `ema_decay` is set.
    pub ema: Option<M>,
    /// Iterations completed (including those before a resume).
    pub iterations: usize,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
}

/// Drives a [`Job`] in a run directory.
#[derive(Debug, Clone)]
pub struct Runner {
    config: RunnerConfig,
    dir: PathBuf,
    lock: Option<Arc<RunLock>>,
}

/// The checkpoint a resume continues from.
#[derive(Debug, Clone)]
struct ResumePoint {
    path: PathBuf,
    state: CheckpointState,
    /// Newer checkpoints that failed verification: (directory, why).
    rejected: Vec<(PathBuf, String)>,
    /// Anything else odd about the directory (an unreadable `LATEST`).
    notices: Vec<String>,
}

struct PathIds {
    path: Vec<String>,
}

impl PathIds {
    fn id(&self) -> ParamId {
        // FNV-1a over the module path: stable across processes and runs.
        let mut h = FNV_OFFSET;
        fnv(&mut h, self.path.join(".").as_bytes());
        ParamId::from(h)
    }
}

impl ModuleMapper for PathIds {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.id = self.id();
        param
    }
    fn map_int<const D: usize>(
        &mut self,
        mut param: Param<Tensor<D, Int>>,
    ) -> Param<Tensor<D, Int>> {
        param.id = self.id();
        param
    }
    fn map_bool<const D: usize>(
        &mut self,
        mut param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        param.id = self.id();
        param
    }
}

struct TrainablePaths {
    path: Vec<String>,
    trainable: Vec<String>,
    frozen: Vec<String>,
}

impl ModuleVisitor for TrainablePaths {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path.join(".");
        if param.is_require_grad() {
            self.trainable.push(path);
        } else {
            self.frozen.push(path);
        }
    }
}

/// Reads every parameter of `module` once, so that lazily initialised ones (burn draws a
/// fresh layer's weights from the device RNG when they are first read) take their values now.
/// Clones share a parameter's lazy state, so after this every clone holds the same values
/// whatever order they are used in.
pub fn materialize<M: Module>(module: &M) {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

/// The module paths of `module`'s float parameters: `(trainable, frozen)`.
pub fn trainable_paths<M: Module>(module: &M) -> (Vec<String>, Vec<String>) {
    let mut v = TrainablePaths {
        path: Vec::new(),
        trainable: Vec::new(),
        frozen: Vec::new(),
    };
    module.visit(&mut v);
    (v.trainable, v.frozen)
}

/// A burnpack store for `path` that writes only `model`'s trainable parameters when
/// `trainable_only` is set (and there are any).
fn model_store<M: Module>(path: &Path, model: &M, trainable_only: bool) -> BurnpackStore {
    let mut store = BurnpackStore::from_file(path)
        .auto_extension(false)
        .overwrite(true);
    if trainable_only {
        let (trainable, _) = trainable_paths(model);
        for p in trainable {
            store = store.with_full_path(p);
        }
    }
    store
}

/// Checks that `path` starts like a burnpack file whose metadata fits in it, before burn's
/// reader allocates the metadata size the header declares (up to 100 MiB, whatever the file
/// holds: a damaged 2 KB file made it allocate 60 MiB).
///
/// # Errors
/// [`CoreError::Checkpoint`] naming the file.
pub fn check_burnpack_header(path: &Path) -> Result<()> {
    use burn::store::burn_pack::{HEADER_SIZE, Header};
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| io(path, "reading", e))?;
    let len = file.metadata().map_err(|e| io(path, "reading", e))?.len();
    let mut head = [0u8; HEADER_SIZE];
    file.read_exact(&mut head).map_err(|_| {
        io(
            path,
            "reading",
            format!("{len} bytes is too short for a burnpack file"),
        )
    })?;
    let header = Header::from_bytes(&head)
        .map_err(|e| io(path, "reading", format!("not burnpack: {e:?}")))?;
    let needed = HEADER_SIZE as u64 + u64::from(header.metadata_size);
    if needed > len {
        return Err(io(
            path,
            "reading",
            format!(
                "the header declares {} bytes of metadata but the file holds {len} bytes",
                header.metadata_size
            ),
        ));
    }
    Ok(())
}

/// Loads a checkpointed model file into `model`: every parameter must be present, except the
/// frozen ones when the checkpoint holds trainable parameters only.
fn load_model_file<M: Module>(mut model: M, path: &Path, trainable_only: bool) -> Result<M> {
    check_burnpack_header(path)?;
    let (_, frozen) = trainable_paths(&model);
    let mut store = BurnpackStore::from_file(path)
        .auto_extension(false)
        .allow_partial(trainable_only);
    let applied = model
        .load_from(&mut store)
        .map_err(|e| io(path, "loading", format!("{e:?}")))?;
    let missing: Vec<&String> = applied
        .missing
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !(trainable_only && frozen.contains(k)))
        .collect();
    if !missing.is_empty() || !applied.errors.is_empty() {
        return Err(io(
            path,
            "does not match the model",
            format!("missing {missing:?}, errors {:?}", applied.errors),
        ));
    }
    Ok(model)
}

/// Loads a checkpoint's weights file (`model.bpk`, or `ema.bpk` for the weight average) into
/// `model`, built as the run built its policy (same adapters): every trainable parameter must
/// be in the file; frozen ones may be absent (checkpoints of a run with
/// `checkpoint_trainable_only`).
///
/// # Errors
/// [`CoreError`] naming the file if it is missing, unreadable or does not fit the model.
pub fn load_checkpoint_file<M: Module>(model: M, path: &Path) -> Result<M> {
    if !path.is_file() {
        return Err(io(path, "loading", "no such file"));
    }
    load_model_file(model, path, true)
}

/// `module` with every parameter id replaced by a hash of the parameter's module path.
///
/// burn draws parameter ids at random, and optimizer state and burnpack checkpoints are keyed
/// by them, so two runs of the same configuration would write different checkpoint bytes.
/// [`Runner::run`] applies this to a fresh run's model, which makes checkpoints (model and
/// optimizer state) byte-identical across processes.
pub fn path_param_ids<M: Module>(module: M) -> M {
    module.map(&mut PathIds { path: Vec::new() })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bit: folds `bytes` into `h`.
fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

/// An order-independent digest of a burnpack file's content: its tensors (name and bytes, in
/// name order) and scalars. burn writes optimizer state in hash-map order, so two files with
/// the same state can differ byte for byte; their digests do not.
///
/// # Errors
/// A file that is not burnpack.
pub fn burnpack_digest(path: &Path) -> Result<String> {
    check_burnpack_header(path)?;
    let reader = burn::store::burn_pack::Reader::from_file(path)
        .map_err(|e| io(path, "reading", format!("{e:?}")))?;
    let mut names: Vec<String> = reader
        .tensor_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    names.sort();
    let mut h = FNV_OFFSET;
    for name in &names {
        fnv(&mut h, name.as_bytes());
        let data = reader
            .tensor_data(name)
            .map_err(|e| io(path, "reading a tensor", format!("{e:?}")))?;
        fnv(&mut h, &data);
    }
    for (k, v) in reader.scalars() {
        fnv(&mut h, k.as_bytes());
        fnv(&mut h, format!("{v:?}").as_bytes());
    }
    Ok(format!("{h:016x} ({} tensors)", names.len()))
}

/// Name of the file that points at the latest complete checkpoint.
pub const LATEST: &str = "LATEST";
/// Name of a checkpoint's manifest: `SHA256  FILE` per line (`sha256sum -c` reads it), for
/// every other file of the checkpoint.
pub const MANIFEST: &str = "files.sha256";

/// The SHA-256 of a file, as 64 lowercase hex digits (streamed: memory does not grow with the
/// file).
///
/// # Errors
/// A file that cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_io(path).map_err(|e| io(path, "reading", e))
}

fn sha256_io(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The iteration of a checkpoint directory name `checkpoint-NNNNNN` (exactly six or more
/// digits, nothing else).
fn checkpoint_number(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("checkpoint-")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checks a checkpoint directory's files against the digests it lists ([`MANIFEST`], or for
/// checkpoints written before manifests `digest.txt`) and that its state parses: what a
/// resume checks, for tools that read a run's weights. A checkpoint with neither (written by
/// an early version) passes unverified.
///
/// # Errors
/// [`CoreError::Checkpoint`] naming the directory and the first file that does not match (or
/// is missing), or a file that cannot be read (permissions, I/O).
pub fn verify_checkpoint_dir(dir: &Path) -> Result<()> {
    match verify_checkpoint(dir) {
        Ok(_) => Ok(()),
        Err(Unusable::Damaged(why)) => Err(io(dir, "fails its integrity check", why)),
        Err(Unusable::Io(e)) => Err(e),
    }
}

/// A checkpoint that passed verification.
#[derive(Debug, Clone)]
struct Verified {
    state: CheckpointState,
    /// Set when the checkpoint carries no digests to verify against.
    unverified: Option<String>,
}

/// Why a checkpoint cannot be resumed from.
#[derive(Debug, Clone)]
enum Unusable {
    /// Its files are missing, altered or malformed: set it aside and fall back.
    Damaged(String),
    /// A file could not be read for another reason (permissions, an I/O error): not evidence
    /// of damage, so the run stops instead of discarding the checkpoint.
    Io(CoreError),
}

/// A read error: a missing file is damage, anything else stops the resume.
fn read_failure(path: &Path, e: std::io::Error) -> Unusable {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match e.kind() {
        std::io::ErrorKind::NotFound => Unusable::Damaged(format!("{name} is missing")),
        std::io::ErrorKind::InvalidData => Unusable::Damaged(format!("{name}: {e}")),
        _ => Unusable::Io(io(path, "reading", e)),
    }
}

/// Checks a checkpoint directory against its manifest (or, for checkpoints written before
/// manifests, against `digest.txt`) and reads its state.
fn verify_checkpoint(dir: &Path) -> std::result::Result<Verified, Unusable> {
    let damaged = |why: String| Unusable::Damaged(why);
    let manifest = dir.join(MANIFEST);
    let mut unverified = None;
    match std::fs::read_to_string(&manifest) {
        Ok(text) => {
            let mut listed = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let Some((hash, name)) = line.split_once("  ") else {
                    return Err(damaged(format!(
                        "{MANIFEST} line {} is not `SHA256  FILE`",
                        n + 1
                    )));
                };
                let plain =
                    !name.is_empty() && !name.contains(['/', '\\']) && name != ".." && name != ".";
                let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
                if !plain || !hex {
                    return Err(damaged(format!(
                        "{MANIFEST} line {} is not `SHA256  FILE`",
                        n + 1
                    )));
                }
                let path = dir.join(name);
                let actual = sha256_io(&path).map_err(|e| read_failure(&path, e))?;
                if actual != hash {
                    return Err(damaged(format!(
                        "{name} does not match its digest in {MANIFEST}"
                    )));
                }
                listed.push(name.to_string());
            }
            for required in ["state.json", "model.bpk", "optimizer.bpk"] {
                if !listed.iter().any(|l| l == required) {
                    return Err(damaged(format!("{MANIFEST} does not list {required}")));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let digest = dir.join("digest.txt");
            match std::fs::read_to_string(&digest) {
                Ok(text) => {
                    let mut listed = Vec::new();
                    for line in text.lines() {
                        let Some((name, expected)) = line.split_once(' ') else {
                            return Err(damaged(format!(
                                "digest.txt line `{line}` is not `FILE DIGEST`"
                            )));
                        };
                        if !matches!(name, "model.bpk" | "optimizer.bpk" | "ema.bpk") {
                            return Err(damaged(format!("digest.txt names `{name}`")));
                        }
                        let actual =
                            burnpack_digest(&dir.join(name)).map_err(|e| damaged(e.to_string()))?;
                        if actual != expected {
                            return Err(damaged(format!(
                                "{name} does not match its digest in digest.txt"
                            )));
                        }
                        listed.push(name);
                    }
                    for required in ["model.bpk", "optimizer.bpk"] {
                        if !listed.contains(&required) {
                            return Err(damaged(format!("digest.txt does not list {required}")));
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    unverified = Some(format!(
                        "{} has no digests (written by an early version of align): resumed \
                         unverified",
                        dir.display()
                    ));
                }
                Err(e) => return Err(read_failure(&digest, e)),
            }
        }
        Err(e) => return Err(read_failure(&manifest, e)),
    }
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| read_failure(&path, e))?;
    let state = serde_json::from_str(&text).map_err(|e| damaged(format!("state.json: {e}")))?;
    Ok(Verified { state, unverified })
}

#[cfg(test)]
thread_local! {
    /// Tests: the checkpoint write step (counted from 0 across the thread's checkpoints) that
    /// fails with `ENOSPC`.
    static FAIL_WRITE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    static WRITES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A checkpoint write step: in tests, fails with `ENOSPC` when [`FAIL_WRITE`] says so.
#[cfg(test)]
fn write_step(path: &Path, what: &str) -> Result<()> {
    let n = WRITES.with(|w| {
        let n = w.get();
        w.set(n + 1);
        n
    });
    if FAIL_WRITE.with(|f| f.get()) == Some(n) {
        return Err(io(path, what, std::io::Error::from_raw_os_error(28)));
    }
    Ok(())
}

#[cfg(not(test))]
#[inline(always)]
fn write_step(_path: &Path, _what: &str) -> Result<()> {
    Ok(())
}
/// Name of the metrics file.
pub const METRICS: &str = "metrics.jsonl";

/// The CSV copy of [`METRICS`] in a run directory.
pub const METRICS_CSV: &str = "metrics.csv";

/// `metrics.jsonl` as CSV: a header of every key (`iteration` first, then the others in
/// alphabetical order), one row per line, numbers as `serde_json` prints them, empty cells for
/// missing keys; cells with commas, quotes or line breaks are quoted. Lines that are not JSON
/// objects are skipped.
pub fn metrics_csv(jsonl: &str) -> String {
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = jsonl
        .lines()
        .filter_map(|l| match serde_json::from_str(l) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            _ => None,
        })
        .collect();
    let mut keys: Vec<String> = rows
        .iter()
        .flat_map(|r| r.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| k != "iteration")
        .collect();
    keys.insert(0, "iteration".into());
    let cell = |text: String| {
        if text.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text
        }
    };
    let mut out = keys
        .iter()
        .map(|k| cell(k.clone()))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for r in &rows {
        let line: Vec<String> = keys
            .iter()
            .map(|k| match r.get(k) {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => cell(s.clone()),
                Some(v) => cell(v.to_string()),
            })
            .collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

fn io(path: &Path, what: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::Checkpoint {
        path: path.display().to_string(),
        reason: format!("{what}: {e}"),
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CheckpointState {
    iteration: usize,
    job: serde_json::Value,
    /// Updates folded into `ema.bpk` (absent without an average).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ema_updates: Option<u64>,
}

/// Renames a corrupt checkpoint directory to `NAME.corrupt` (or `NAME.corrupt-2`, …) and
/// returns the new path.
fn set_aside(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for k in 1.. {
        let suffix = if k == 1 {
            ".corrupt".to_string()
        } else {
            format!(".corrupt-{k}")
        };
        let target = path.with_file_name(format!("{name}{suffix}"));
        if !target.exists() {
            return std::fs::rename(path, &target)
                .map(|()| target)
                .map_err(|e| io(path, "setting the damaged checkpoint aside", e));
        }
    }
    Err(io(
        path,
        "setting the damaged checkpoint aside",
        "no free name",
    ))
}

/// Writes `text` to `path` through a temporary file and a rename.
/// (A failed write removes its temporary; `path` keeps its old content.)
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "file".to_string(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            // On disk before the rename makes it the file (a power cut never leaves `LATEST`
            // empty).
            f.sync_all()
        })
        .map_err(|e| io(&tmp, "writing", e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io(path, "renaming into place", e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl Runner {
    /// A runner writing into `dir`.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn new(config: RunnerConfig, dir: impl Into<PathBuf>) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            dir: dir.into(),
            lock: None,
        })
    }

    /// This runner holding its directory's [`RunLock`] from now until it (and every clone) is
    /// dropped: for front ends that write into the run directory (a copy of the config, a base
    /// evaluation) before [`Runner::run`], which otherwise takes the lock for the run alone.
    ///
    /// # Errors
    /// [`CoreError::RunInUse`] when another process holds the directory; I/O errors.
    pub fn lock(mut self) -> Result<Self> {
        if self.lock.is_none() {
            self.lock = Some(Arc::new(RunLock::acquire(&self.dir)?));
        }
        Ok(self)
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the directory holds a run: a `LATEST` file or a checkpoint directory, intact or
    /// not (a fresh run never starts over one).
    pub fn holds_run(&self) -> bool {
        self.dir.join(LATEST).exists() || !self.checkpoint_dirs().is_empty()
    }

    /// The run's checkpoint directories (`checkpoint-NNNNNN`), newest first.
    fn checkpoint_dirs(&self) -> Vec<(usize, PathBuf)> {
        let mut dirs: Vec<(usize, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = checkpoint_number(&e.file_name().to_string_lossy())?;
                e.path().is_dir().then(|| (n, e.path()))
            })
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
        dirs
    }

    /// The checkpoint a resume continues from: the one `LATEST` names if its files match their
    /// digests, else the newest older one that does (when `LATEST` is missing or names no
    /// checkpoint: the newest intact one).
    fn resume_point(&self) -> Result<Option<ResumePoint>> {
        let latest = self.dir.join(LATEST);
        let dirs = self.checkpoint_dirs();
        let mut notices = Vec::new();
        let named = match std::fs::read_to_string(&latest) {
            Ok(text) => {
                let name = text.trim().to_string();
                match checkpoint_number(&name) {
                    Some(n) if dirs.iter().any(|(m, _)| *m == n) => Some(n),
                    _ => {
                        notices.push(format!(
                            "{} names `{}`, which is not a checkpoint of this run",
                            latest.display(),
                            name.escape_debug()
                        ));
                        None
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if dirs.is_empty() {
                    return Ok(None);
                }
                notices.push(format!("{} is missing", latest.display()));
                None
            }
            Err(e) => {
                notices.push(format!("{} is unreadable ({e})", latest.display()));
                None
            }
        };
        let mut rejected = Vec::new();
        for (n, path) in dirs {
            if let Some(m) = named
                && n > m
            {
                notices.push(format!(
                    "{} is newer than {LATEST} (its publication was interrupted): the run \
                     resumes from {LATEST} and writes it again",
                    path.display()
                ));
                continue;
            }
            match verify_checkpoint(&path) {
                Ok(v) => {
                    notices.extend(v.unverified);
                    return Ok(Some(ResumePoint {
                        path,
                        state: v.state,
                        rejected,
                        notices,
                    }));
                }
                Err(Unusable::Damaged(why)) => rejected.push((path, why)),
                Err(Unusable::Io(e)) => return Err(e),
            }
        }
        let mut reasons = notices;
        reasons.extend(
            rejected
                .iter()
                .map(|(p, why)| format!("{}: {why}", p.display())),
        );
        if reasons.is_empty() {
            reasons.push(format!("{} names no checkpoint", latest.display()));
        }
        Err(io(
            &self.dir,
            "holds no intact checkpoint",
            reasons.join("; "),
        ))
    }

    /// The checkpoint a resume would continue from (see [`Runner::run`]), if any.
    ///
    /// # Errors
    /// A directory holding a run but no intact checkpoint (each reason named).
    pub fn latest_checkpoint(&self) -> Result<Option<PathBuf>> {
        Ok(self.resume_point()?.map(|p| p.path))
    }

    /// The iteration of the checkpoint a resume would continue from, if any.
    ///
    /// # Errors
    /// As [`Runner::latest_checkpoint`].
    pub fn latest_iteration(&self) -> Result<Option<usize>> {
        Ok(self.resume_point()?.map(|p| p.state.iteration))
    }

    fn save_checkpoint<M: Module>(
        &self,
        model: &M,
        ema: Option<&Ema<M>>,
        optim: &ModuleOptimizer,
        iteration: usize,
        job: serde_json::Value,
    ) -> Result<()> {
        let name = format!("checkpoint-{iteration:06}");
        let final_dir = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let written = self.write_checkpoint_files(&tmp, model, ema, optim, iteration, job);
        if let Err(e) = written {
            // Free what the partial copy holds (a full disk), then report.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)
                .map_err(|e| io(&final_dir, "replacing an older copy", e))?;
        }
        let renamed = write_step(&final_dir, "renaming into place").and_then(|()| {
            std::fs::rename(&tmp, &final_dir).map_err(|e| io(&final_dir, "renaming into place", e))
        });
        if let Err(e) = renamed {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        write_step(&self.dir.join(LATEST), "writing")?;
        write_atomically(&self.dir.join(LATEST), &format!("{name}\n"))?;
        // The renames on disk before anything older goes.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        // Older checkpoints are removed only once the new one is published: the newest
        // `keep_checkpoints` up to this one stay. (Newer leftovers of an earlier attempt are
        // replaced when the run reaches them.)
        let older = self
            .checkpoint_dirs()
            .into_iter()
            .filter(|(n, _)| *n <= iteration);
        for (_, path) in older.skip(self.config.keep_checkpoints) {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(())
    }

    /// Writes a checkpoint's files into the temporary directory `tmp`, the manifest last.
    fn write_checkpoint_files<M: Module>(
        &self,
        tmp: &Path,
        model: &M,
        ema: Option<&Ema<M>>,
        optim: &ModuleOptimizer,
        iteration: usize,
        job: serde_json::Value,
    ) -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(tmp).map_err(|e| io(tmp, "removing a stale temporary", e))?;
        }
        std::fs::create_dir_all(tmp).map_err(|e| io(tmp, "creating", e))?;
        let only = self.config.checkpoint_trainable_only;
        write_step(tmp, "writing the model")?;
        let mut store = model_store(&tmp.join("model.bpk"), model, only);
        model
            .save_into(&mut store)
            .map_err(|e| io(tmp, "writing the model", format!("{e:?}")))?;
        write_step(tmp, "writing the optimizer state")?;
        optim
            .to_record()
            .save(tmp.join("optimizer.bpk"))
            .map_err(|e| io(tmp, "writing the optimizer state", format!("{e:?}")))?;
        if let Some(e) = ema {
            write_step(tmp, "writing the weight average")?;
            // The average lives on the inner device without gradients: select by the
            // training model's trainable paths.
            let mut store = BurnpackStore::from_file(tmp.join("ema.bpk"))
                .auto_extension(false)
                .overwrite(true);
            if only {
                for p in trainable_paths(model).0 {
                    store = store.with_full_path(p);
                }
            }
            e.average()
                .save_into(&mut store)
                .map_err(|err| io(tmp, "writing the weight average", format!("{err:?}")))?;
        }
        let state = serde_json::to_string_pretty(&CheckpointState {
            iteration,
            job,
            ema_updates: ema.map(Ema::updates),
        })
        .map_err(|e| io(tmp, "serialising the state", e))?;
        write_step(tmp, "writing state")?;
        std::fs::write(tmp.join("state.json"), state).map_err(|e| io(tmp, "writing state", e))?;
        let mut digest = format!(
            "model.bpk {}\noptimizer.bpk {}\n",
            burnpack_digest(&tmp.join("model.bpk"))?,
            burnpack_digest(&tmp.join("optimizer.bpk"))?
        );
        if ema.is_some() {
            digest.push_str(&format!(
                "ema.bpk {}\n",
                burnpack_digest(&tmp.join("ema.bpk"))?
            ));
        }
        write_step(tmp, "writing digest")?;
        std::fs::write(tmp.join("digest.txt"), digest).map_err(|e| io(tmp, "writing digest", e))?;
        let mut manifest = String::new();
        let mut names: Vec<String> = std::fs::read_dir(tmp)
            .map_err(|e| io(tmp, "listing", e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            manifest.push_str(&format!("{}  {name}\n", sha256_file(&tmp.join(&name))?));
        }
        write_step(tmp, "writing the manifest")?;
        std::fs::write(tmp.join(MANIFEST), manifest)
            .map_err(|e| io(tmp, "writing the manifest", e))?;
        // On disk before it is published (a power cut after `LATEST` moves must not leave
        // it naming empty files).
        for entry in std::fs::read_dir(tmp)
            .map_err(|e| io(tmp, "listing", e))?
            .flatten()
        {
            std::fs::File::open(entry.path())
                .and_then(|f| f.sync_all())
                .map_err(|e| io(&entry.path(), "syncing", e))?;
        }
        Ok(())
    }

    /// Keeps the first `iterations` lines of `metrics.jsonl` (a resumed run rewrites the rest).
    fn truncate_metrics(&self, iterations: usize) -> Result<()> {
        let path = self.dir.join(METRICS);
        if !path.exists() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, "reading", e))?;
        let kept: String = text
            .lines()
            .take(iterations)
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomically(&path, &kept)?;
        self.write_metrics_csv()
    }

    /// Rewrites `metrics.csv` from `metrics.jsonl`.
    fn write_metrics_csv(&self) -> Result<()> {
        let path = self.dir.join(METRICS);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(&path, "reading", e)),
        };
        write_atomically(&self.dir.join(METRICS_CSV), &metrics_csv(&text))
    }

    fn append_metrics(&self, iteration: usize, metrics: &Metrics) -> Result<()> {
        let path = self.dir.join(METRICS);
        let mut line = serde_json::Map::new();
        line.insert("iteration".into(), serde_json::Value::from(iteration));
        for (k, v) in metrics {
            line.insert(k.clone(), serde_json::Value::from(*v));
        }
        let text = serde_json::Value::Object(line).to_string();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, "opening", e))?;
        writeln!(f, "{text}").map_err(|e| io(&path, "appending", e))?;
        drop(f);
        self.write_metrics_csv()
    }

    /// Runs `job` on `model` until the configured number of iterations, a stop, or an error.
    ///
    /// `model` is the starting point (its architecture, LoRA adapters included, must match the
    /// checkpoint when resuming: the checkpoint's weights and parameter ids replace its own).
    ///
    /// A resume continues from the checkpoint `LATEST` names; one whose files do not match
    /// their digests is renamed `checkpoint-NNNNNN.corrupt` (kept for inspection) and the
    /// newest older intact one is used instead, each step reported through [`Job::notice`].
    ///
    /// # Errors
    /// I/O errors (a checkpoint that cannot be written names itself and the intact one the run
    /// can resume from), a job error, a non-finite metric ([`CoreError::Diverged`]); another
    /// process holding the directory ([`CoreError::RunInUse`]); a fresh run in a directory
    /// that already holds a run (pass `resume`, or choose another directory — nothing is
    /// overwritten); `resume` without an intact checkpoint.
    pub fn run<M: Module, J: Job<M>>(
        &self,
        model: M,
        job: &mut J,
        resume: bool,
    ) -> Result<RunOutcome<M>> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, "creating", e))?;
        let own_lock = match &self.lock {
            Some(_) => None,
            None => Some(RunLock::acquire(&self.dir)?),
        };
        if let Some(old) = own_lock
            .as_ref()
            .or(self.lock.as_deref())
            .and_then(RunLock::took_over)
        {
            job.notice(&format!(
                "took over {} from {}, which ended without releasing it",
                crate::run_lock::LOCK_FILE,
                if old.host.is_empty() {
                    format!("pid {}", old.pid)
                } else {
                    format!("pid {} on {}", old.pid, old.host)
                }
            ));
        }
        // Temporaries of a killed run never became checkpoints or files: remove them.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if file.starts_with('.') && file.contains(".tmp-") {
                    let _ = std::fs::remove_dir_all(entry.path());
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let mut optim = self.config.optimizer();
        let mut resumed_ema: Option<(PathBuf, u64)> = None;
        let (mut model, start) = match resume {
            false if self.holds_run() => {
                return Err(io(
                    &self.dir,
                    "already holds a run",
                    "resume it (--resume) or choose another directory",
                ));
            }
            false => {
                self.truncate_metrics(0)?;
                (path_param_ids(model), 0)
            }
            true => {
                let Some(point) = self.resume_point()? else {
                    return Err(io(&self.dir, "cannot resume", "it holds no checkpoint"));
                };
                for notice in &point.notices {
                    job.notice(notice);
                }
                for (path, why) in &point.rejected {
                    let aside = set_aside(path)?;
                    job.notice(&format!(
                        "{}: {why}; set aside as {}",
                        path.display(),
                        aside.display()
                    ));
                }
                let ckpt = point.path;
                if !point.rejected.is_empty() || !point.notices.is_empty() {
                    let name = ckpt
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    write_atomically(&self.dir.join(LATEST), &format!("{name}\n"))?;
                    job.notice(&format!("resuming from {}", ckpt.display()));
                }
                let state = point.state;
                let model = load_model_file(
                    model,
                    &ckpt.join("model.bpk"),
                    self.config.checkpoint_trainable_only,
                )?;
                check_burnpack_header(&ckpt.join("optimizer.bpk"))?;
                let record = OptimizerRecord::load(ckpt.join("optimizer.bpk"))
                    .map_err(|e| io(&ckpt, "loading the optimizer state", format!("{e:?}")))?;
                optim = optim.load_record(record);
                job.restore(&state.job)?;
                self.truncate_metrics(state.iteration)?;
                resumed_ema = state.ema_updates.map(|n| (ckpt.join("ema.bpk"), n));
                (model, state.iteration)
            }
        };
        let mut ema: Option<Ema<M>> = match (self.config.ema_decay, resumed_ema) {
            (None, _) => None,
            (Some(decay), None) => Some(EmaConfig::new().with_decay(decay).init(model.valid())?),
            (Some(decay), Some((path, updates))) => {
                let average = if self.config.checkpoint_trainable_only {
                    // The frozen parameters of `valid()` have no `require_grad` to tell them
                    // apart: allow exactly the training model's frozen paths to be absent.
                    let (_, frozen) = trainable_paths(&model);
                    let mut average = model.valid();
                    check_burnpack_header(&path)?;
                    let mut store = BurnpackStore::from_file(&path)
                        .auto_extension(false)
                        .allow_partial(true);
                    let applied = average
                        .load_from(&mut store)
                        .map_err(|e| io(&path, "loading", format!("{e:?}")))?;
                    let missing: Vec<&String> = applied
                        .missing
                        .iter()
                        .map(|(k, _)| k)
                        .filter(|k| !frozen.contains(k))
                        .collect();
                    if !missing.is_empty() || !applied.errors.is_empty() {
                        return Err(io(
                            &path,
                            "does not match the model",
                            format!("missing {missing:?}, errors {:?}", applied.errors),
                        ));
                    }
                    average
                } else {
                    load_model_file(model.valid(), &path, false)?
                };
                Some(Ema::from_parts(average, decay, updates))
            }
        };
        let mut stopped = None;
        let mut done = start;
        for it in start..self.config.iterations {
            let mut norms: Vec<f64> = Vec::new();
            let lr = self.config.learning_rate_at(it);
            let clip = self.config.max_grad_norm;
            let optim_ref = &mut optim;
            let ema_ref = &mut ema;
            let mut apply = |m: M, grads: Gradients| -> Result<M> {
                let m = match grads {
                    Gradients::One(grads) => {
                        let grads = match clip {
                            Some(c) => {
                                let (g, norm) = clip_grad_norm(&m, grads, c)?;
                                norms.push(norm);
                                g
                            }
                            None => grads,
                        };
                        optim_ref.step(lr, m, grads)
                    }
                    Gradients::PerDevice(parts) => {
                        // Home is where the model lives (its first parameter's device), not
                        // the first part's: a device without samples in a minibatch may
                        // send no part at all.
                        let Some(home) = m.devices().into_iter().next() else {
                            return Err(CoreError::config(
                                "devices",
                                "a data-parallel step needs a model with parameters",
                            ));
                        };
                        let parts = match clip {
                            Some(c) => {
                                let (p, norm) = clip_grad_norm_parts(&m, parts, c)?;
                                norms.push(norm);
                                p
                            }
                            None => parts,
                        };
                        let m = optim_ref.step_multi(lr, m, MultiGradientsParams { grads: parts });
                        gather_to(m, &home)
                    }
                };
                if let Some(e) = ema_ref.as_mut() {
                    e.update_trainable(&m)?;
                }
                Ok(m)
            };
            let (next, mut metrics) = job.iteration(model, it, &mut apply)?;
            model = next;
            if !norms.is_empty() {
                metrics.insert(
                    "grad_norm".into(),
                    norms.iter().sum::<f64>() / norms.len() as f64,
                );
            }
            metrics.insert("optimizer_steps".into(), norms.len() as f64);
            let average = ema.as_ref().map(Ema::average);
            let control = job.after_iteration(&model, average, it, &mut metrics)?;
            if let Some((name, &value)) = metrics.iter().find(|(_, v)| !v.is_finite()) {
                return Err(CoreError::Diverged {
                    metric: name.clone(),
                    value,
                    iteration: it + 1,
                    dir: self.dir.display().to_string(),
                });
            }
            if let Control::Stop(reason) = control {
                stopped = Some(reason);
            }
            if let (Some(budget), Some(&kl)) = (self.config.kl_budget, metrics.get("kl"))
                && kl > budget
            {
                stopped = Some(format!(
                    "KL to the reference {kl:.4} exceeded the budget {budget} at iteration {}",
                    it + 1
                ));
            }
            self.append_metrics(it + 1, &metrics)?;
            done = it + 1;
            let last = done == self.config.iterations;
            if last || stopped.is_some() || done.is_multiple_of(self.config.checkpoint_every) {
                let saved = self.save_checkpoint(&model, ema.as_ref(), &optim, done, job.state()?);
                if let Err(e) = saved {
                    let intact = match self.resume_point() {
                        Ok(Some(p)) => format!(
                            "{} is intact and `--resume` continues from it",
                            p.path.display()
                        ),
                        Ok(None) => "no earlier checkpoint exists".to_string(),
                        Err(e) => format!("and no earlier checkpoint can be resumed: {e}"),
                    };
                    return Err(io(
                        &self.dir.join(format!("checkpoint-{done:06}")),
                        "could not be written, so the run stopped",
                        format!("{e}; {intact}"),
                    ));
                }
            }
            if stopped.is_some() {
                break;
            }
        }
        Ok(RunOutcome {
            model,
            ema: ema.map(Ema::into_average),
            iterations: done,
            stopped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_csv_has_a_column_per_metric_and_quotes_what_needs_it() {
        let jsonl = "{\"iteration\":1,\"loss\":0.5,\"kl\":1e-5}\n\
                     not json\n\
                     {\"iteration\":2,\"loss\":-0.25,\"eval_accuracy\":0.75,\"a,b\":\"x\\\"y\"}\n";
        let csv = metrics_csv(jsonl);
        assert_eq!(
            csv,
            "iteration,\"a,b\",eval_accuracy,kl,loss\n1,,,0.00001,0.5\n2,\"x\"\"y\",0.75,,-0.25\n"
        );
        assert_eq!(metrics_csv(""), "iteration\n");
    }
    use crate::noise::{NoiseKey, noise_tensor};
    use burn::module::Param;
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Tensor};

    #[derive(Module, Debug)]
    struct Weights {
        w: Param<Tensor<1>>,
    }

    /// Regression toward an iteration-keyed random target, two optimizer steps per iteration,
    /// with a counter as resumable state and an optional poisoned iteration.
    struct Toy {
        seen: usize,
        poison_at: Option<usize>,
        kl_per_iteration: f64,
        notices: Vec<String>,
    }

    impl Job<Weights> for Toy {
        fn iteration(
            &mut self,
            mut model: Weights,
            iteration: usize,
            apply: &mut dyn FnMut(Weights, Gradients) -> Result<Weights>,
        ) -> Result<(Weights, Metrics)> {
            let device = model.w.val().device();
            let mut loss_sum = 0.0;
            for half in 0..2 {
                let key = NoiseKey::transition(9, iteration as u64, half);
                let target: Tensor<1> = noise_tensor(&[key], [1, 1, 4], &device)?.reshape([4]);
                let loss = (model.w.val() - target).square().sum();
                loss_sum += f64::from(loss.clone().into_scalar::<f32>());
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = apply(model, grads.into())?;
            }
            self.seen += 1;
            let mut m = Metrics::new();
            m.insert("loss".into(), loss_sum / 2.0);
            m.insert("seen".into(), self.seen as f64);
            m.insert("kl".into(), self.kl_per_iteration * (iteration + 1) as f64);
            if self.poison_at == Some(iteration) {
                m.insert("reward".into(), f64::NAN);
            }
            Ok((model, m))
        }
        fn state(&self) -> Result<serde_json::Value> {
            Ok(serde_json::json!({ "seen": self.seen }))
        }
        fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
            self.seen = state["seen"].as_u64().unwrap_or_default() as usize;
            Ok(())
        }
        fn notice(&mut self, message: &str) {
            self.notices.push(message.to_string());
        }
    }

    fn toy() -> Toy {
        Toy {
            seen: 0,
            poison_at: None,
            kl_per_iteration: 0.0,
            notices: Vec::new(),
        }
    }

    fn weights(device: &Device) -> Weights {
        Weights {
            w: Param::from_tensor(Tensor::from_floats([0.5, -1.0, 2.0, 0.0], device)),
        }
    }

    fn config(iterations: usize) -> RunnerConfig {
        RunnerConfig {
            iterations,
            learning_rate: 0.05,
            max_grad_norm: Some(1.5),
            ..RunnerConfig::default()
        }
    }

    /// `iterations` of the toy job in `dir`, fresh or resumed (`job` left for inspection).
    fn run_toy(
        dir: &Path,
        iterations: usize,
        resume: bool,
        job: &mut Toy,
    ) -> Result<RunOutcome<Weights>> {
        let device = crate::test_device().autodiff();
        Runner::new(config(iterations), dir)?.run(weights(&device), job, resume)
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("align-runner-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn bytes(path: PathBuf) -> Vec<u8> {
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// A frozen base beside trainable weights, as LoRA leaves a model.
    #[derive(Module, Debug)]
    struct Adapted {
        base: Param<Tensor<1>>,
        adapter: Weights,
    }

    struct AdaptedToy(Toy);

    impl Job<Adapted> for AdaptedToy {
        fn iteration(
            &mut self,
            model: Adapted,
            iteration: usize,
            apply: &mut dyn FnMut(Adapted, Gradients) -> Result<Adapted>,
        ) -> Result<(Adapted, Metrics)> {
            let base = model.base.clone();
            let mut inner = |w: Weights, g: Gradients| {
                let m = apply(
                    Adapted {
                        base: base.clone(),
                        adapter: w,
                    },
                    g,
                )?;
                Ok(m.adapter)
            };
            let (adapter, m) = self.0.iteration(model.adapter, iteration, &mut inner)?;
            Ok((
                Adapted {
                    base: model.base,
                    adapter,
                },
                m,
            ))
        }
        fn state(&self) -> Result<serde_json::Value> {
            self.0.state()
        }
        fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
            self.0.restore(state)
        }
    }

    #[test]
    fn trainable_only_checkpoints_leave_the_frozen_base_out_and_resume_bit_for_bit() {
        let device = crate::test_device().autodiff();
        let start = || Adapted {
            base: Param::from_tensor(Tensor::from_floats([1.0, 2.0, 3.0], &device))
                .set_require_grad(false),
            adapter: weights(&device),
        };
        assert_eq!(
            trainable_paths(&start()),
            (vec!["adapter.w".to_string()], vec!["base".to_string()])
        );
        let cfg = |n: usize| RunnerConfig {
            checkpoint_trainable_only: true,
            ema_decay: Some(0.9),
            ..config(n)
        };
        let (a, b) = (tempdir("lora-full"), tempdir("lora-halves"));
        let full = Runner::new(cfg(4), &a)
            .unwrap()
            .run(start(), &mut AdaptedToy(toy()), false)
            .unwrap();
        for file in ["model.bpk", "ema.bpk"] {
            let reader =
                burn::store::burn_pack::Reader::from_file(a.join("checkpoint-000004").join(file))
                    .unwrap();
            let names: Vec<String> = reader
                .tensor_names()
                .iter()
                .map(|n| n.to_string())
                .collect();
            assert_eq!(names, vec!["adapter.w".to_string()], "{file}");
        }
        Runner::new(cfg(2), &b)
            .unwrap()
            .run(start(), &mut AdaptedToy(toy()), false)
            .unwrap();
        let resumed = Runner::new(cfg(4), &b)
            .unwrap()
            .run(start(), &mut AdaptedToy(toy()), true)
            .unwrap();
        let v = |p: &Param<Tensor<1>>| p.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v(&full.model.adapter.w), v(&resumed.model.adapter.w));
        assert_eq!(v(&resumed.model.base), vec![1.0, 2.0, 3.0]);
        assert_eq!(
            v(&full.ema.as_ref().unwrap().adapter.w),
            v(&resumed.ema.as_ref().unwrap().adapter.w)
        );
        for file in ["model.bpk", "optimizer.bpk", "ema.bpk", "digest.txt"] {
            assert_eq!(
                bytes(a.join("checkpoint-000004").join(file)),
                bytes(b.join("checkpoint-000004").join(file)),
                "{file}"
            );
        }
        // Without the option the same checkpoint cannot be resumed: the base is missing.
        let err = Runner::new(config(5), &b)
            .unwrap()
            .run(start(), &mut AdaptedToy(toy()), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("base"), "{err}");
        for d in [a, b] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn a_resumed_run_is_bit_identical_to_an_uninterrupted_one() {
        let device = crate::test_device().autodiff();
        let start = weights(&device);
        let (a, b) = (tempdir("full"), tempdir("halves"));
        let full = Runner::new(config(6), &a)
            .unwrap()
            .run(start.clone(), &mut toy(), false)
            .unwrap();
        Runner::new(config(3), &b)
            .unwrap()
            .run(start.clone(), &mut toy(), false)
            .unwrap();
        let mut job = toy();
        let resumed = Runner::new(config(6), &b)
            .unwrap()
            .run(start, &mut job, true)
            .unwrap();
        assert_eq!(job.seen, 6, "the job's state was restored");
        assert_eq!(full.iterations, 6);
        assert_eq!(resumed.iterations, 6);
        let w = |m: &Weights| m.w.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(w(&full.model), w(&resumed.model));
        for file in ["model.bpk", "optimizer.bpk", "state.json", "digest.txt"] {
            assert_eq!(
                bytes(a.join("checkpoint-000006").join(file)),
                bytes(b.join("checkpoint-000006").join(file)),
                "{file}"
            );
        }
        assert_eq!(bytes(a.join(METRICS)), bytes(b.join(METRICS)));
        assert_eq!(bytes(a.join(METRICS_CSV)), bytes(b.join(METRICS_CSV)));
        assert!(bytes(a.join(METRICS_CSV)).starts_with(b"iteration,"));
        assert_eq!(
            std::fs::read_to_string(a.join(METRICS))
                .unwrap()
                .lines()
                .count(),
            6
        );
        // Negative check: a run that restarts without the optimizer state differs.
        let c = tempdir("restart");
        let half = run_toy(&c, 3, false, &mut toy()).unwrap();
        let restarted = Runner::new(config(3), tempdir("restart2"))
            .unwrap()
            .run(half.model, &mut toy(), false)
            .unwrap();
        assert_ne!(w(&full.model), w(&restarted.model));
        for d in [a, b, c] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// The weight average: decay 0 follows the model exactly; with a decay it lags, lives in
    /// the checkpoint (`ema.bpk`, its digest, its update count) and resumes bit for bit.
    #[test]
    fn the_weight_average_is_checkpointed_and_resumes_bit_for_bit() {
        let device = crate::test_device().autodiff();
        let w = |m: &Weights| m.w.val().into_data().try_to_vec::<f32>().unwrap();
        let with_ema = |n: usize, d: f64| RunnerConfig {
            ema_decay: Some(d),
            ..config(n)
        };
        let z = tempdir("ema-zero");
        let out = Runner::new(with_ema(3, 0.0), &z)
            .unwrap()
            .run(weights(&device), &mut toy(), false)
            .unwrap();
        assert_eq!(w(out.ema.as_ref().unwrap()), w(&out.model));
        let (a, b) = (tempdir("ema-full"), tempdir("ema-halves"));
        let full = Runner::new(with_ema(6, 0.9), &a)
            .unwrap()
            .run(weights(&device), &mut toy(), false)
            .unwrap();
        assert_ne!(w(full.ema.as_ref().unwrap()), w(&full.model));
        Runner::new(with_ema(3, 0.9), &b)
            .unwrap()
            .run(weights(&device), &mut toy(), false)
            .unwrap();
        let state = std::fs::read_to_string(b.join("checkpoint-000003/state.json")).unwrap();
        assert!(state.contains("\"ema_updates\": 6"), "{state}");
        let resumed = Runner::new(with_ema(6, 0.9), &b)
            .unwrap()
            .run(weights(&device), &mut toy(), true)
            .unwrap();
        assert_eq!(
            w(full.ema.as_ref().unwrap()),
            w(resumed.ema.as_ref().unwrap())
        );
        for file in ["model.bpk", "ema.bpk", "state.json", "digest.txt"] {
            assert_eq!(
                bytes(a.join("checkpoint-000006").join(file)),
                bytes(b.join("checkpoint-000006").join(file)),
                "{file}"
            );
        }
        assert!(
            std::fs::read_to_string(a.join("checkpoint-000006/digest.txt"))
                .unwrap()
                .contains("ema.bpk")
        );
        assert!(
            RunnerConfig {
                ema_decay: Some(1.0),
                ..config(1)
            }
            .validate()
            .is_err()
        );
        for d in [z, a, b] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn checkpoints_do_not_depend_on_random_parameter_ids() {
        let device = crate::test_device().autodiff();
        // Two models with equal values but different (random) parameter ids, as two processes
        // would build them.
        let (a, b) = (tempdir("ids-a"), tempdir("ids-b"));
        let (m1, m2) = (weights(&device), weights(&device));
        assert_ne!(m1.w.id, m2.w.id);
        Runner::new(config(2), &a)
            .unwrap()
            .run(m1, &mut toy(), false)
            .unwrap();
        Runner::new(config(2), &b)
            .unwrap()
            .run(m2, &mut toy(), false)
            .unwrap();
        for file in ["model.bpk", "optimizer.bpk"] {
            assert_eq!(
                bytes(a.join("checkpoint-000002").join(file)),
                bytes(b.join("checkpoint-000002").join(file)),
                "{file}"
            );
        }
        for d in [a, b] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// The toy regression with each step's loss split over `devices` (sample `j` of the
    /// four coordinates on device `j mod n`), each device's part weighted by its share and
    /// handed to the runner as [`Gradients::PerDevice`].
    struct SplitToy {
        devices: Vec<Device>,
        /// Leave the first device's part out (a device without samples in a minibatch).
        skip_first: bool,
    }

    impl Job<Weights> for SplitToy {
        fn iteration(
            &mut self,
            mut model: Weights,
            iteration: usize,
            apply: &mut dyn FnMut(Weights, Gradients) -> Result<Weights>,
        ) -> Result<(Weights, Metrics)> {
            let home = model.w.val().device();
            let mut replicas = crate::Replicas::new(&model, &self.devices)?;
            for half in 0..2 {
                let key = NoiseKey::transition(9, iteration as u64, half);
                let target: Tensor<1> = noise_tensor(&[key], [1, 1, 4], &home)?.reshape([4]);
                let n = self.devices.len();
                let mut parts = Vec::new();
                for (d, (m, dev)) in replicas.models().iter().zip(&self.devices).enumerate() {
                    if self.skip_first && d == 0 {
                        continue;
                    }
                    let mask: Vec<f32> = (0..4)
                        .map(|j| {
                            f32::from(u8::from(
                                j % n == d || (self.skip_first && d == 1 && j % n == 0),
                            ))
                        })
                        .collect();
                    let mask = Tensor::<1>::from_floats(mask.as_slice(), dev);
                    let t = target.clone().to_device(dev);
                    let loss = ((m.w.val() - t).square() * mask).sum();
                    parts.push((GradientsParams::from_grads(loss.backward(), m), dev.clone()));
                }
                model = apply(model, Gradients::PerDevice(parts))?;
                replicas.sync(&model)?;
            }
            Ok((model, Metrics::new()))
        }
    }

    #[test]
    fn a_step_over_device_parts_equals_the_single_device_step() {
        let device = crate::test_device().autodiff();
        let ndarray = crate::select_device(Some("ndarray")).unwrap().autodiff();
        let one = tempdir("runner-dp-one");
        let single = Runner::new(config(3), &one)
            .unwrap()
            .run(weights(&device), &mut toy(), false)
            .unwrap();
        let want = single.model.w.val().into_data();
        for (name, devices, skip_first) in [
            ("same", vec![device.clone(), device.clone()], false),
            ("mixed", vec![device.clone(), ndarray.clone()], false),
            (
                "three",
                vec![device.clone(), ndarray.clone(), device.clone()],
                false,
            ),
            // The home device sends no part: the model still comes home.
            ("ndarray-only", vec![device.clone(), ndarray], true),
        ] {
            let dir = tempdir(&format!("runner-dp-{name}"));
            let mut job = SplitToy {
                devices,
                skip_first,
            };
            let out = Runner::new(config(3), &dir)
                .unwrap()
                .run(weights(&device), &mut job, false)
                .unwrap();
            // Home again after `step_multi`, which updates a parameter where it chose to.
            assert_eq!(out.model.w.val().device(), device, "{name}");
            assert!(out.model.w.is_require_grad(), "{name}");
            out.model
                .w
                .val()
                .into_data()
                .assert_approx_eq::<f32>(&want, burn::tensor::Tolerance::absolute(1e-6));
            // The clipped norm of the summed parts is the single-device norm.
            let rows = |d: &Path| {
                std::fs::read_to_string(d.join(METRICS))
                    .unwrap()
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["grad_norm"]
                            .as_f64()
                            .unwrap()
                    })
                    .collect::<Vec<f64>>()
            };
            for (a, b) in rows(&dir).iter().zip(rows(&one)) {
                assert!((a - b).abs() < 1e-5, "{name}: grad norm {a} vs {b}");
            }
        }
    }

    #[test]
    fn a_nan_metric_stops_the_run_and_keeps_the_last_checkpoint() {
        let dir = tempdir("nan");
        let mut job = Toy {
            poison_at: Some(3),
            ..toy()
        };
        let err = run_toy(&dir, 10, false, &mut job).unwrap_err();
        match &err {
            CoreError::Diverged {
                metric, iteration, ..
            } => {
                assert_eq!(metric, "reward");
                assert_eq!(*iteration, 4);
            }
            other => panic!("expected Diverged, got {other}"),
        }
        assert!(err.to_string().contains("last good checkpoint"));
        let latest = std::fs::read_to_string(dir.join(LATEST)).unwrap();
        assert_eq!(latest.trim(), "checkpoint-000003");
        assert!(dir.join("checkpoint-000003/model.bpk").is_file());
        assert_eq!(
            std::fs::read_to_string(dir.join(METRICS))
                .unwrap()
                .lines()
                .count(),
            3
        );
        // The run resumes from there once the cause is gone.
        let out = run_toy(&dir, 5, true, &mut toy()).unwrap();
        assert_eq!(out.iterations, 5);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn kl_budget_stops_cleanly_with_a_checkpoint() {
        let device = crate::test_device().autodiff();
        let dir = tempdir("kl");
        let mut job = Toy {
            kl_per_iteration: 0.1,
            ..toy()
        };
        let out = Runner::new(
            RunnerConfig {
                kl_budget: Some(0.25),
                ..config(10)
            },
            &dir,
        )
        .unwrap()
        .run(weights(&device), &mut job, false)
        .unwrap();
        assert_eq!(out.iterations, 3, "KL 0.3 > 0.25 at the third iteration");
        assert!(out.stopped.unwrap().contains("budget"));
        assert_eq!(
            std::fs::read_to_string(dir.join(LATEST)).unwrap().trim(),
            "checkpoint-000003"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The files two runs must agree on byte for byte at the end.
    fn assert_same_end_state(a: &Path, b: &Path, last: &str) {
        for file in ["model.bpk", "state.json", "digest.txt"] {
            assert_eq!(
                bytes(a.join(last).join(file)),
                bytes(b.join(last).join(file)),
                "{file}"
            );
        }
        assert_eq!(bytes(a.join(METRICS)), bytes(b.join(METRICS)));
    }

    #[test]
    fn a_failed_checkpoint_write_stops_the_run_keeps_the_last_one_and_resume_finishes_identically()
    {
        let reference = tempdir("enospc-reference");
        run_toy(&reference, 4, false, &mut toy()).unwrap();
        // Seven write steps per checkpoint (model, optimizer, state, digest, manifest, rename,
        // LATEST): fail each step of the third checkpoint in turn.
        for step in 0..7 {
            let dir = tempdir(&format!("enospc-{step}"));
            WRITES.with(|w| w.set(0));
            FAIL_WRITE.with(|f| f.set(Some(2 * 7 + step)));
            let err = run_toy(&dir, 4, false, &mut toy()).unwrap_err();
            FAIL_WRITE.with(|f| f.set(None));
            let text = err.to_string();
            assert!(
                text.contains("checkpoint-000003: could not be written")
                    && text.contains("os error 28")
                    && text.contains("checkpoint-000002 is intact"),
                "step {step}: {text}"
            );
            assert_eq!(
                std::fs::read_to_string(dir.join(LATEST)).unwrap().trim(),
                "checkpoint-000002",
                "step {step}"
            );
            let leftovers: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect();
            assert!(leftovers.is_empty(), "step {step}: {leftovers:?}");
            let out = run_toy(&dir, 4, true, &mut toy()).unwrap();
            assert_eq!(out.iterations, 4);
            assert_same_end_state(&reference, &dir, "checkpoint-000004");
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(reference);
    }

    /// Flips one byte in the middle of `path`.
    fn corrupt(path: &Path) {
        let mut b = bytes(path.to_path_buf());
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn only_the_newest_keep_checkpoints_stay_and_each_lists_its_files_digests() {
        let device = crate::test_device().autodiff();
        let dir = tempdir("keep");
        let cfg = RunnerConfig {
            keep_checkpoints: 3,
            ..config(5)
        };
        Runner::new(cfg, &dir)
            .unwrap()
            .run(weights(&device), &mut toy(), false)
            .unwrap();
        let mut kept: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("checkpoint-"))
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                "checkpoint-000003",
                "checkpoint-000004",
                "checkpoint-000005"
            ]
        );
        // `sha256sum` format, every other file listed, each digest recomputed here with an
        // independent implementation of the format (the `sha2` crate hashes; the listing and
        // comparison are the test's).
        let manifest =
            std::fs::read_to_string(dir.join("checkpoint-000005").join(MANIFEST)).unwrap();
        let listed: Vec<&str> = manifest.lines().map(|l| &l[66..]).collect();
        assert_eq!(
            listed,
            ["digest.txt", "model.bpk", "optimizer.bpk", "state.json"]
        );
        for line in manifest.lines() {
            let (hash, name) = line.split_once("  ").unwrap();
            assert_eq!(hash.len(), 64);
            use sha2::Digest;
            let want: String =
                sha2::Sha256::digest(bytes(dir.join("checkpoint-000005").join(name)))
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
            assert_eq!(hash, want, "{name}");
        }
        assert_eq!(
            sha256_file(&dir.join(LATEST)).unwrap(),
            // printf 'checkpoint-000005\n' | sha256sum (coreutils)
            "e5c81d0af03a18642fe057314936feb6dfef5954d847dbea59aca1de0db412ca"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_corrupt_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous_one_identically() {
        let reference = tempdir("corrupt-reference");
        run_toy(&reference, 5, false, &mut toy()).unwrap();
        // Each way a checkpoint can be damaged, in the newest of the two kept.
        type Damage = fn(&Path);
        let damages: [(&str, Damage); 6] = [
            ("a flipped byte in model.bpk", |c| {
                corrupt(&c.join("model.bpk"))
            }),
            ("a flipped byte in optimizer.bpk", |c| {
                corrupt(&c.join("optimizer.bpk"))
            }),
            ("state.json edited", |c| {
                std::fs::write(c.join("state.json"), "{\"iteration\": 3, \"job\": null}").unwrap()
            }),
            ("model.bpk missing", |c| {
                std::fs::remove_file(c.join("model.bpk")).unwrap()
            }),
            ("files.sha256 cut inside a line", |c| {
                let m = std::fs::read_to_string(c.join(MANIFEST)).unwrap();
                // `HASH  ` with the name gone: it must not be read as the directory itself.
                std::fs::write(c.join(MANIFEST), &m[..m.find("  ").unwrap() + 2]).unwrap()
            }),
            ("model.bpk truncated", |c| {
                let b = bytes(c.join("model.bpk"));
                std::fs::write(c.join("model.bpk"), &b[..b.len() / 3]).unwrap()
            }),
        ];
        for (what, damage) in damages {
            let dir = tempdir("corrupt");
            run_toy(&dir, 3, false, &mut toy()).unwrap();
            damage(&dir.join("checkpoint-000003"));
            let mut job = toy();
            let out = run_toy(&dir, 5, true, &mut job).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(out.iterations, 5, "{what}");
            assert!(
                job.notices[0].contains("checkpoint-000003")
                    && job.notices[0].contains("checkpoint-000003.corrupt"),
                "{what}: {:?}",
                job.notices
            );
            assert!(
                job.notices[1].contains("resuming from")
                    && job.notices[1].ends_with("checkpoint-000002"),
                "{what}: {:?}",
                job.notices
            );
            assert!(dir.join("checkpoint-000003.corrupt").is_dir(), "{what}");
            assert_same_end_state(&reference, &dir, "checkpoint-000005");
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(reference);
    }

    #[test]
    fn a_latest_pointing_nowhere_falls_back_and_no_intact_checkpoint_is_an_error_naming_each() {
        let device = crate::test_device().autodiff();
        let dir = tempdir("latest-nowhere");
        run_toy(&dir, 2, false, &mut toy()).unwrap();
        std::fs::write(dir.join(LATEST), "checkpoint-000009\n").unwrap();
        let r = Runner::new(config(3), &dir).unwrap();
        assert_eq!(r.latest_iteration().unwrap(), Some(2));
        let mut job = toy();
        r.run(weights(&device), &mut job, true).unwrap();
        assert!(
            job.notices[0].contains("names `checkpoint-000009`"),
            "{:?}",
            job.notices
        );
        // Both kept checkpoints damaged: no resume, each reason named; no fresh start either.
        corrupt(&dir.join("checkpoint-000003/model.bpk"));
        std::fs::remove_file(dir.join("checkpoint-000002/files.sha256")).unwrap();
        std::fs::write(dir.join("checkpoint-000002/digest.txt"), "model.bpk 0\n").unwrap();
        let err = r
            .run(weights(&device), &mut toy(), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("holds no intact checkpoint")
                && err.contains("checkpoint-000003: model.bpk does not match its digest")
                && err.contains(
                    "checkpoint-000002: model.bpk does not match its digest in digest.txt"
                ),
            "{err}"
        );
        let err = r
            .run(weights(&device), &mut toy(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already holds a run"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn old_checkpoints_without_digests_resume_unverified_and_unpublished_newer_ones_are_named() {
        let reference = tempdir("legacy-reference");
        run_toy(&reference, 3, false, &mut toy()).unwrap();
        let dir = tempdir("legacy");
        run_toy(&dir, 2, false, &mut toy()).unwrap();
        // As an early version wrote it: no manifest, no digest.txt.
        for f in [MANIFEST, "digest.txt"] {
            std::fs::remove_file(dir.join("checkpoint-000002").join(f)).unwrap();
        }
        // And a complete checkpoint 3 whose publication (LATEST) was interrupted.
        let newer = dir.join("checkpoint-000003");
        std::fs::create_dir_all(&newer).unwrap();
        std::fs::write(newer.join("state.json"), "{}").unwrap();
        let mut job = toy();
        run_toy(&dir, 3, true, &mut job).unwrap();
        assert!(
            job.notices
                .iter()
                .any(|n| n.contains("checkpoint-000003 is newer than LATEST"))
                && job
                    .notices
                    .iter()
                    .any(|n| n.contains("checkpoint-000002 has no digests")),
            "{:?}",
            job.notices
        );
        assert_same_end_state(&reference, &dir, "checkpoint-000003");
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(reference);
    }

    #[test]
    fn a_second_run_on_a_locked_directory_is_refused_and_a_killed_holder_is_taken_over() {
        let device = crate::test_device().autodiff();
        let dir = tempdir("locked");
        let holder = Runner::new(config(2), &dir).unwrap().lock().unwrap();
        let err = run_toy(&dir, 2, false, &mut toy()).unwrap_err();
        assert!(
            matches!(&err, CoreError::RunInUse { holder, .. } if holder.starts_with(&format!("pid {}", std::process::id()))),
            "{err}"
        );
        assert!(!dir.join(LATEST).exists(), "the refused run wrote nothing");
        // The holder itself runs (its own lock is not a second writer).
        holder.run(weights(&device), &mut toy(), false).unwrap();
        drop(holder);
        // A killed holder leaves its text without the lock: the next run takes over.
        std::fs::write(
            dir.join(crate::run_lock::LOCK_FILE),
            "pid 4000000\nhost h\nsince 1\n",
        )
        .unwrap();
        let mut job = toy();
        run_toy(&dir, 3, true, &mut job).unwrap();
        assert_eq!(
            job.notices,
            ["took over run.lock from pid 4000000 on h, which ended without releasing it"]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_burnpack_header_declaring_more_metadata_than_the_file_holds_is_refused_before_reading() {
        use burn::store::burn_pack::Header;
        let dir = tempdir("bpk-header");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.bpk");
        let mut bytes = Header::new(50 << 20).into_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &bytes).unwrap();
        let err = check_burnpack_header(&path).unwrap_err().to_string();
        assert!(
            err.contains("model.bpk") && err.contains("declares 52428800 bytes of metadata"),
            "{err}"
        );
        let err = load_checkpoint_file(weights(&crate::test_device()), &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("declares 52428800"), "{err}");
        std::fs::write(&path, &bytes[..3]).unwrap();
        assert!(
            check_burnpack_header(&path)
                .unwrap_err()
                .to_string()
                .contains("3 bytes is too short")
        );
        // A real file passes.
        let run = tempdir("bpk-header-run");
        Runner::new(config(1), &run)
            .unwrap()
            .run(weights(&crate::test_device().autodiff()), &mut toy(), false)
            .unwrap();
        for f in ["model.bpk", "optimizer.bpk"] {
            check_burnpack_header(&run.join("checkpoint-000001").join(f)).unwrap();
        }
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(run);
    }

    #[test]
    fn existing_runs_are_never_overwritten_and_resume_needs_a_checkpoint() {
        let device = crate::test_device().autodiff();
        let dir = tempdir("guard");
        let r = Runner::new(config(2), &dir).unwrap();
        assert!(r.run(weights(&device), &mut toy(), true).is_err());
        r.run(weights(&device), &mut toy(), false).unwrap();
        let err = r.run(weights(&device), &mut toy(), false).unwrap_err();
        assert!(err.to_string().contains("already holds a run"), "{err}");
        assert!(dir.join("checkpoint-000002/state.json").is_file());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A linear loss `c · w`: its gradient is the constant `c`, so every AdamW step (no weight
    /// decay, bias-corrected moments `m̂ = c`, `v̂ = c²`) moves each weight by exactly the step's
    /// learning rate against the sign of `c` (up to ε). Records the average it is shown.
    struct Linear {
        averages: Vec<Vec<f32>>,
    }

    impl Job<Weights> for Linear {
        fn iteration(
            &mut self,
            model: Weights,
            _iteration: usize,
            apply: &mut dyn FnMut(Weights, Gradients) -> Result<Weights>,
        ) -> Result<(Weights, Metrics)> {
            let device = model.w.val().device();
            let c = Tensor::<1>::from_floats([2.0, -0.5, 1.0, -3.0], &device);
            let loss = (model.w.val() * c).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            Ok((apply(model, grads.into())?, Metrics::new()))
        }
        fn after_iteration(
            &mut self,
            _model: &Weights,
            average: Option<&Weights>,
            _iteration: usize,
            _metrics: &mut Metrics,
        ) -> Result<Control> {
            if let Some(a) = average {
                self.averages
                    .push(a.w.val().into_data().try_to_vec::<f32>().unwrap());
            }
            Ok(Control::Continue)
        }
    }

    #[test]
    fn warm_up_scales_each_step_linearly_and_resumes_bit_for_bit() {
        let cfg = |iterations: usize| RunnerConfig {
            iterations,
            learning_rate: 0.05,
            warmup_iterations: 4,
            weight_decay: 0.0,
            max_grad_norm: None,
            ema_decay: Some(0.5),
            ..RunnerConfig::default()
        };
        let rates: Vec<f64> = (0..6).map(|i| cfg(6).learning_rate_at(i)).collect();
        let want = [0.0125, 0.025, 0.0375, 0.05, 0.05, 0.05];
        for (r, w) in rates.iter().zip(want) {
            assert!((r - w).abs() < 1e-15, "{rates:?}");
        }
        assert_eq!(RunnerConfig::default().learning_rate_at(0), 3e-4);
        let device = crate::test_device().autodiff();
        let (a, b) = (tempdir("warmup-full"), tempdir("warmup-halves"));
        let mut job = Linear { averages: vec![] };
        let full = Runner::new(cfg(6), &a)
            .unwrap()
            .run(weights(&device), &mut job, false)
            .unwrap();
        // Each weight moved by the sum of the rates (0.225) against the sign of its gradient.
        let moved = 0.225f32;
        let expected = [0.5 - moved, -1.0 + moved, 2.0 - moved, 0.0 + moved];
        let got = full.model.w.val().into_data().try_to_vec::<f32>().unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
        // The job saw the runner's average after every iteration, the last one being the
        // average the run returns.
        assert_eq!(job.averages.len(), 6);
        let ema = full.ema.as_ref().unwrap().w.val().into_data();
        assert_eq!(job.averages[5], ema.try_to_vec::<f32>().unwrap());
        assert_ne!(job.averages[5], got);
        Runner::new(cfg(3), &b)
            .unwrap()
            .run(weights(&device), &mut Linear { averages: vec![] }, false)
            .unwrap();
        let runner = Runner::new(cfg(6), &b).unwrap();
        assert_eq!(runner.latest_iteration().unwrap(), Some(3));
        let resumed = runner
            .run(weights(&device), &mut Linear { averages: vec![] }, true)
            .unwrap();
        assert_eq!(runner.latest_iteration().unwrap(), Some(6));
        assert_eq!(
            Runner::new(cfg(6), tempdir("warmup-none"))
                .unwrap()
                .latest_iteration()
                .unwrap(),
            None
        );
        assert_eq!(
            got,
            resumed
                .model
                .w
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        );
        for file in ["model.bpk", "optimizer.bpk", "ema.bpk"] {
            assert_eq!(
                bytes(a.join("checkpoint-000006").join(file)),
                bytes(b.join("checkpoint-000006").join(file)),
                "{file}"
            );
        }
        for d in [a, b] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn invalid_configs_name_the_field() {
        for (cfg, field) in [
            (
                RunnerConfig {
                    iterations: 0,
                    ..config(1)
                },
                "iterations",
            ),
            (
                RunnerConfig {
                    learning_rate: f64::NAN,
                    ..config(1)
                },
                "learning_rate",
            ),
            (
                RunnerConfig {
                    beta2: 1.0,
                    ..config(1)
                },
                "beta2",
            ),
            (
                RunnerConfig {
                    max_grad_norm: Some(0.0),
                    ..config(1)
                },
                "max_grad_norm",
            ),
            (
                RunnerConfig {
                    checkpoint_every: 0,
                    ..config(1)
                },
                "checkpoint_every",
            ),
        ] {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
