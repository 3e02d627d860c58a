//! What a run trains and what it is regularised toward: the policy and the frozen reference,
//! built once for the online and the preference jobs, and the run's `config.toml`.
//!
//! | `finetune` | `lora_init` | policy | reference |
//! |---|---|---|---|
//! | `lora` | — | fresh adapters (`[lora]` rank and α) on the base | the policy with adapters off (shares the base) |
//! | `lora` | a PEFT / diffusers file | the file's adapters (its rank, α and modules) on the base, trained on | a merged frozen copy of base + file (the model the run starts from) |
//! | `full` | — | every parameter | a frozen copy of the base |

use std::path::Path;

use align_models::{
    BurnNaming, LoraConfig, LoraNaming, Sd3TransformerNaming, SdUnetNaming, apply_lora,
    apply_lora_weights, read_lora, with_lora_scale,
};
use burn::module::Module;

use crate::config::{Finetune, LoraSection};
use crate::error::{Result, TrainError};

/// The naming of LoRA modules in exported files for a base model directory: diffusers' names
/// for a Stable Diffusion (UNet) or SD3 (transformer) directory, burn's paths for a Shapes model.
pub fn lora_naming(model_dir: &Path) -> Box<dyn LoraNaming> {
    if crate::sd3::is_sd3_dir(model_dir) {
        Box::new(Sd3TransformerNaming)
    } else if crate::sd::is_stable_diffusion_dir(model_dir) {
        Box::new(SdUnetNaming)
    } else {
        Box::new(BurnNaming)
    }
}

/// The adapters' settings of a run.
pub struct Adapters<'a> {
    /// `finetune`.
    pub finetune: Finetune,
    /// `[lora]`.
    pub lora: &'a LoraSection,
    /// LoRA target substrings (`None`: [`LoraConfig`]'s defaults).
    pub targets: Option<Vec<String>>,
    /// `lora_init`: an adapter file to start from.
    pub init: Option<&'a Path>,
    /// The base model directory (for the naming of `init`'s modules).
    pub model_dir: &'a Path,
}

/// The policy and the frozen reference of a run (see the module table).
///
/// With `draw_now` the fresh adapters' random `A` factors are drawn before returning (the
/// online job does, so that the reference view and a resumed run see the same values; the
/// preference job draws them lazily, which its recorded runs depend on).
///
/// # Errors
/// `lora` for bad targets, `lora_init` for a file that does not read or fit the model, or
/// `lora_init` with `finetune = "full"`.
pub fn policy_and_reference<M: Module>(
    base: M,
    adapters: &Adapters<'_>,
    draw_now: bool,
) -> Result<(M, M)> {
    match (adapters.finetune, adapters.init) {
        (Finetune::Full, Some(_)) => Err(TrainError::config(
            "lora_init",
            "starts from a LoRA adapter: it needs finetune = \"lora\"",
        )),
        (Finetune::Full, None) => {
            let reference = base.clone().no_grad();
            Ok((base, reference))
        }
        (Finetune::Lora, Some(file)) => {
            let naming = lora_naming(adapters.model_dir);
            let named = |e: align_models::ModelError| {
                TrainError::config("lora_init", format!("{}: {e}", file.display()))
            };
            let weights = read_lora(file, naming.as_ref()).map_err(named)?;
            let policy = apply_lora_weights(base, &weights).map_err(named)?;
            let reference = policy.clone().materialize().no_grad();
            Ok((policy, reference))
        }
        (Finetune::Lora, None) => {
            let mut lora = LoraConfig::new()
                .with_rank(adapters.lora.rank)
                .with_alpha(adapters.lora.alpha);
            if let Some(targets) = &adapters.targets {
                lora = lora.with_targets(targets.clone());
            }
            let policy =
                apply_lora(base, &lora).map_err(|e| TrainError::config("lora", e.to_string()))?;
            if draw_now {
                align_core::runner::materialize(&policy);
            }
            let reference = with_lora_scale(policy.clone(), 0.0).no_grad();
            Ok((policy, reference))
        }
    }
}

/// The file a run's configuration is kept in, in its run directory.
pub const RUN_CONFIG: &str = "config.toml";

/// The fields that decide which model a run trains: a resumed run must keep them.
const MODEL_FIELDS: [&str; 4] = ["model", "finetune", "lora", "lora_init"];

/// The fields that decide what an SD3 run's adapters are conditioned on (T5 states or zeros,
/// how many tokens), with the value a record without them (an older run, another job) means.
fn conditioning_fields() -> [(&'static str, toml::Value); 2] {
    [
        ("text_encoder_3", toml::Value::Boolean(true)),
        ("max_sequence_length", toml::Value::Integer(256)),
    ]
}

/// Writes `config` (any `align` config) as `config.toml` in the run directory `out`
/// (atomically), so that the run can be exported, sampled, evaluated and repeated later. When
/// `resume`, the recorded model-defining fields (`model`, `finetune`, `[lora]`, `lora_init`,
/// and SD3's `text_encoder_3` and `max_sequence_length`) must be unchanged: a resumed run with other adapters would not match its checkpoints, and
/// the record of the run would be lost.
///
/// # Errors
/// A changed model-defining field on resume (named, with both values); the file cannot be
/// written.
pub fn write_run_config<C: serde::Serialize>(
    config: &C,
    header: &str,
    out: &Path,
    resume: bool,
) -> Result<()> {
    let text = toml::to_string(config)
        .map_err(|e| TrainError::config("config", format!("cannot serialise: {e}")))?;
    let path = out.join(RUN_CONFIG);
    if resume && let Ok(old) = std::fs::read_to_string(&path) {
        let parse = |t: &str| t.parse::<toml::Table>().ok();
        if let (Some(old), Some(new)) = (parse(&old), parse(&text)) {
            let fields = MODEL_FIELDS
                .iter()
                .map(|&f| (f, None))
                .chain(conditioning_fields().map(|(f, d)| (f, Some(d))));
            for (field, default) in fields {
                let get = |t: &toml::Table| t.get(field).cloned().or_else(|| default.clone());
                if get(&old) != get(&new) {
                    let show = |v: Option<toml::Value>| {
                        v.map_or("(absent)".to_string(), |v| v.to_string())
                    };
                    return Err(TrainError::config(
                        field,
                        format!(
                            "{} differs from the run's {} ({}): a resumed run trains the model \
                             it started with; start a new run directory for other settings",
                            show(get(&new)),
                            path.display(),
                            show(get(&old))
                        ),
                    ));
                }
            }
        }
    }
    crate::images::write_atomically(&path, &format!("# {header}\n{text}"))
}

/// The adapter a run starts from, kept in the run directory: a fresh run with `lora_init`
/// copies the adapter into `out/lora_init/` (PEFT layout, f32) and trains, exports and resumes
/// from that copy, so that moving or editing the original file cannot change the run.
/// Returns the copy (`None` without `lora_init`).
///
/// # Errors
/// `lora_init` for a file that does not read; the copy cannot be written.
pub fn run_adapter(
    lora_init: Option<&Path>,
    model_dir: &Path,
    out: &Path,
    resume: bool,
) -> Result<Option<std::path::PathBuf>> {
    let Some(init) = lora_init else {
        return Ok(None);
    };
    let copy = absolute(&out.join("lora_init"));
    if resume && copy.join(align_models::lora_file::PEFT_WEIGHTS).is_file() {
        return Ok(Some(copy));
    }
    if init == copy {
        return Ok(Some(copy));
    }
    let naming = lora_naming(model_dir);
    let weights = read_lora(init, naming.as_ref())
        .map_err(|e| TrainError::config("lora_init", format!("{}: {e}", init.display())))?;
    align_models::save_lora(
        &weights,
        naming.as_ref(),
        align_models::LoraFormat::Peft,
        align_models::WeightDtype::F32,
        &copy,
    )?;
    Ok(Some(copy))
}

/// `path` made absolute (canonical when it exists), so that a run's `config.toml` still
/// names its files when read from another directory.
pub fn absolute(path: &Path) -> std::path::PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    // Not there yet: the canonical parent (`..` resolved, links followed) and the name.
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(p) = std::fs::canonicalize(parent) {
            return p.join(name);
        }
    }
    std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}
