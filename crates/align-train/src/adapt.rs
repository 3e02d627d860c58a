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
    BurnNaming, LoraConfig, LoraNaming, SdUnetNaming, apply_lora, apply_lora_weights, read_lora,
    with_lora_scale,
};
use burn::module::Module;

use crate::config::{Finetune, LoraSection};
use crate::error::{Result, TrainError};

/// The naming of LoRA modules in exported files for a base model directory: diffusers' names
/// for a Stable Diffusion directory, burn's paths for a Shapes model.
pub fn lora_naming(model_dir: &Path) -> Box<dyn LoraNaming> {
    if crate::sd::is_stable_diffusion_dir(model_dir) {
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

/// Writes `config` (any `align` config) as `config.toml` in the run directory `out`
/// (atomically), so that the run can be exported, sampled, evaluated and repeated later.
///
/// # Errors
/// The file cannot be written.
pub fn write_run_config<C: serde::Serialize>(config: &C, header: &str, out: &Path) -> Result<()> {
    let text = toml::to_string(config)
        .map_err(|e| TrainError::config("config", format!("cannot serialise: {e}")))?;
    let path = out.join(RUN_CONFIG);
    let tmp = out.join(format!(".{RUN_CONFIG}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, format!("# {header}\n{text}")).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))
}

/// `path` made absolute (canonical when it exists), so that a run's `config.toml` still
/// names its files when read from another directory.
pub fn absolute(path: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    })
}
