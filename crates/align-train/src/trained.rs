//! A run's trained model, read back from its run directory, and its export to files other
//! tools load.
//!
//! Every `align train` / `align pref-train` run keeps its configuration in `config.toml`
//! (paths absolute) and its checkpoints in `checkpoint-NNNNNN/` (`LATEST` names the newest).
//! [`load_run`] rebuilds the policy as the run built it — the base model, the same adapters —
//! and loads a checkpoint's weights (the weight average `ema.bpk` when the run kept one,
//! unless asked for the last step's). [`export_run`] writes it as
//!
//! | [`ExportFormat`] | Stable Diffusion run | Shapes run |
//! |---|---|---|
//! | `peft` | `adapter_model.safetensors` + `adapter_config.json`, diffusers module names | the same, burn's module paths |
//! | `diffusers` | `pytorch_lora_weights.safetensors` (`pipe.load_lora_weights`) | refused (no diffusers layout) |
//! | `merged` | a complete pipeline directory: the UNet with the adapters merged, every other component copied from the base | `model.json` + `model.safetensors` (`align sample --model`) |
//!
//! A run that trained every parameter (`finetune = "full"`) exports `merged` only.

use std::path::{Path, PathBuf};

use align_models::sd3::StableDiffusion3;
use align_models::{
    LoraConfig, LoraFormat, ShapesModel, ShapesModelConfig, StableDiffusion, WeightDtype,
    apply_lora, apply_lora_weights, lora_weights, read_lora, save_lora,
};
use burn::module::Module;
use burn::tensor::Device;

use crate::adapt::{RUN_CONFIG, lora_naming};
use crate::config::{Finetune, LoraSection, TrainConfig};
use crate::error::{Result, TrainError};
use crate::pref::PrefConfig;

/// A run's configuration as recorded in its `config.toml`.
#[derive(Debug, Clone, PartialEq)]
pub enum RunConfig {
    /// An `align train` run.
    Train(Box<TrainConfig>),
    /// An `align pref-train` run.
    Pref(Box<PrefConfig>),
}

impl RunConfig {
    /// The base model directory.
    pub fn model(&self) -> &Path {
        match self {
            Self::Train(c) => &c.model,
            Self::Pref(c) => &c.model,
        }
    }
    fn finetune(&self) -> Finetune {
        match self {
            Self::Train(c) => c.finetune,
            Self::Pref(c) => c.finetune,
        }
    }
    fn lora(&self) -> &LoraSection {
        match self {
            Self::Train(c) => &c.lora,
            Self::Pref(c) => &c.lora,
        }
    }
    fn lora_init(&self) -> Option<&Path> {
        match self {
            Self::Train(c) => c.lora_init.as_deref(),
            Self::Pref(c) => c.lora_init.as_deref(),
        }
    }
}

/// Reads `DIR/config.toml`.
///
/// # Errors
/// [`TrainError::File`] naming the file: missing (a run made before runs recorded their
/// configuration), or neither an `align train` nor an `align pref-train` configuration.
pub fn read_run_config(dir: &Path) -> Result<RunConfig> {
    let path = dir.join(RUN_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::File {
        path: path.clone(),
        reason: format!("{e} (is {} a run directory?)", dir.display()),
    })?;
    match toml::from_str::<TrainConfig>(&text) {
        Ok(c) => Ok(RunConfig::Train(Box::new(c))),
        Err(train) => match toml::from_str::<PrefConfig>(&text) {
            Ok(c) => Ok(RunConfig::Pref(Box::new(c))),
            Err(pref) => Err(TrainError::File {
                path,
                reason: format!(
                    "neither an `align train` configuration ({}) nor an `align pref-train` one \
                     ({})",
                    train.to_string().trim(),
                    pref.to_string().trim()
                ),
            }),
        },
    }
}

/// Which checkpoint weights to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Weights {
    /// The checkpoint's iteration (`None`: the newest, named by `LATEST`).
    pub checkpoint: Option<usize>,
    /// Read the last step's weights even where the run kept a weight average.
    pub no_ema: bool,
}

/// The trained model of a run.
pub enum TrainedModel {
    /// A Shapes-world model (adapters still attached with `finetune = "lora"`).
    Shapes(Box<ShapesModelConfig>, ShapesModel),
    /// A Stable Diffusion pipeline (adapters attached to the UNet).
    Sd(Box<StableDiffusion>),
    /// A Stable Diffusion 3 pipeline (adapters attached to the MMDiT's joint attention).
    Sd3(Box<StableDiffusion3>),
}

/// A run's trained model and where it came from.
pub struct TrainedRun {
    /// The run's configuration.
    pub config: RunConfig,
    /// The model, adapters attached (merge with [`TrainedRun::merged`]).
    pub model: TrainedModel,
    /// The weights file read (`…/checkpoint-NNNNNN/model.bpk` or `ema.bpk`).
    pub weights_file: PathBuf,
}

/// The checkpoint directory of `weights` in run `dir`.
///
/// # Errors
/// No checkpoint (or not the one asked for), naming the directory.
pub fn checkpoint_dir(dir: &Path, weights: Weights) -> Result<PathBuf> {
    let name = match weights.checkpoint {
        Some(it) => format!("checkpoint-{it:06}"),
        None => {
            let latest = dir.join(align_core::runner::LATEST);
            std::fs::read_to_string(&latest)
                .map_err(|e| TrainError::File {
                    path: latest.clone(),
                    reason: format!("{e}: the run has no checkpoint yet"),
                })?
                .trim()
                .to_string()
        }
    };
    let ckpt = dir.join(&name);
    if ckpt.join("model.bpk").is_file() {
        Ok(ckpt)
    } else {
        Err(TrainError::File {
            path: ckpt,
            reason: "no such checkpoint (model.bpk missing)".into(),
        })
    }
}

/// Builds `base` as the run built its policy and loads `file` into it.
fn policy<M: Module>(
    base: M,
    run: &RunConfig,
    targets: Option<Vec<String>>,
    file: &Path,
) -> Result<M> {
    let adapted = match (run.finetune(), run.lora_init()) {
        (Finetune::Full, _) => base,
        (Finetune::Lora, Some(init)) => {
            let naming = lora_naming(run.model());
            let weights = read_lora(init, naming.as_ref())
                .map_err(|e| TrainError::config("lora_init", format!("{}: {e}", init.display())))?;
            apply_lora_weights(base, &weights)?
        }
        (Finetune::Lora, None) => {
            let mut lora = LoraConfig::new()
                .with_rank(run.lora().rank)
                .with_alpha(run.lora().alpha);
            if let Some(targets) = targets {
                lora = lora.with_targets(targets);
            }
            apply_lora(base, &lora)?
        }
    };
    Ok(align_core::runner::load_checkpoint_file(adapted, file)?)
}

/// Loads run `dir`'s trained model on `device` (see the module docs).
///
/// # Errors
/// A missing or unreadable `config.toml`, checkpoint or base model, or weights that do not fit
/// the model the configuration describes, each naming the file.
pub fn load_run(dir: &Path, weights: Weights, device: &Device) -> Result<TrainedRun> {
    load_run_with(dir, weights, device, true)
}

/// [`load_run`]; `text_towers = false` leaves an SD3 run's T5 out (an export needs the
/// transformer only, and T5-XXL is 18 GiB in f32).
fn load_run_with(
    dir: &Path,
    weights: Weights,
    device: &Device,
    text_towers: bool,
) -> Result<TrainedRun> {
    let config = read_run_config(dir)?;
    let ckpt = checkpoint_dir(dir, weights)?;
    // The weights a user samples from or exports are the ones the run wrote.
    align_core::runner::verify_checkpoint_dir(&ckpt)?;
    let ema = ckpt.join("ema.bpk");
    let file = if !weights.no_ema && ema.is_file() {
        ema
    } else {
        ckpt.join("model.bpk")
    };
    let model_dir = config.model();
    // Loaded on the autodiff device, where parameters know whether they train (the check
    // that every trainable one is in the file needs it), then moved off it.
    let device = &device.clone().autodiff();
    let model = if crate::sd3::is_sd3_dir(model_dir) {
        let RunConfig::Train(train) = &config else {
            return Err(TrainError::config(
                "model",
                "an SD3 model in a preference run: preference training supports Shapes models",
            ));
        };
        let mut train = train.as_ref().clone();
        train.text_encoder_3 &= text_towers;
        let sd3 = crate::sd3::load_sd3(&train, device)?;
        let targets = Some(StableDiffusion3::lora_targets());
        TrainedModel::Sd3(Box::new(policy(sd3, &config, targets, &file)?.valid()))
    } else if crate::sd::is_stable_diffusion_dir(model_dir) {
        let sd = StableDiffusion::load(model_dir, device)?;
        let targets = Some(StableDiffusion::lora_targets());
        TrainedModel::Sd(Box::new(policy(sd, &config, targets, &file)?.valid()))
    } else {
        let (shapes, model) = ShapesModel::load(model_dir, device)?;
        let model = match model {
            ShapesModel::Unet(m) => {
                ShapesModel::Unet(Box::new(policy(*m, &config, None, &file)?.valid()))
            }
            ShapesModel::Dit(m) => {
                ShapesModel::Dit(Box::new(policy(*m, &config, None, &file)?.valid()))
            }
        };
        TrainedModel::Shapes(Box::new(shapes), model)
    };
    Ok(TrainedRun {
        config,
        model,
        weights_file: file,
    })
}

impl TrainedRun {
    /// The model with its adapters merged into the weights (`W + (α/r)·A·B`).
    pub fn merged(self) -> TrainedModel {
        match self.model {
            TrainedModel::Sd(sd) => TrainedModel::Sd(Box::new(sd.materialize())),
            TrainedModel::Sd3(sd3) => TrainedModel::Sd3(Box::new(sd3.materialize())),
            TrainedModel::Shapes(c, ShapesModel::Unet(m)) => {
                TrainedModel::Shapes(c, ShapesModel::Unet(Box::new(m.materialize())))
            }
            TrainedModel::Shapes(c, ShapesModel::Dit(m)) => {
                TrainedModel::Shapes(c, ShapesModel::Dit(Box::new(m.materialize())))
            }
        }
    }

    /// α of the run's adapters.
    fn alpha(&self) -> Result<f64> {
        match self.config.lora_init() {
            Some(init) => {
                let naming = lora_naming(self.config.model());
                Ok(read_lora(init, naming.as_ref())?.alpha)
            }
            None => Ok(self.config.lora().alpha),
        }
    }
}

/// What `align export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// The adapter as a PEFT directory.
    Peft,
    /// The adapter as diffusers' `pytorch_lora_weights.safetensors`.
    Diffusers,
    /// The full weights with the adapters merged.
    Merged,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "peft" => Ok(Self::Peft),
            "diffusers" => Ok(Self::Diffusers),
            "merged" => Ok(Self::Merged),
            other => Err(format!(
                "unknown export format `{other}` (peft, diffusers or merged)"
            )),
        }
    }
}

/// Copies directory `from` into `to` recursively, skipping `skip` (relative paths).
pub(crate) fn copy_dir(from: &Path, to: &Path, skip: &[&Path]) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| TrainError::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| TrainError::io(from, e))? {
        let entry = entry.map_err(|e| TrainError::io(from, e))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if skip.iter().any(|s| src.ends_with(s)) {
            continue;
        }
        if src.is_dir() {
            copy_dir(&src, &dst, skip)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| TrainError::io(&src, e))?;
        }
    }
    Ok(())
}

/// Exports run `dir`'s trained model to `out` in `format` at `dtype`; returns the files
/// written.
///
/// # Errors
/// `format` for an export the run cannot make (an adapter from a fully fine-tuned run, the
/// diffusers layout of a Shapes model, a Shapes model in half precision), an existing
/// non-empty `out`, and the errors of [`load_run`] and of writing.
pub fn export_run(
    dir: &Path,
    weights: Weights,
    format: ExportFormat,
    dtype: WeightDtype,
    out: &Path,
    device: &Device,
) -> Result<Vec<PathBuf>> {
    if out.is_dir()
        && std::fs::read_dir(out)
            .map_err(|e| TrainError::io(out, e))?
            .next()
            .is_some()
    {
        return Err(TrainError::File {
            path: out.to_path_buf(),
            reason: "exists and is not empty; choose a new directory".into(),
        });
    }
    let run = load_run_with(dir, weights, device, false)?;
    let sd = matches!(run.model, TrainedModel::Sd(_) | TrainedModel::Sd3(_));
    let lora_format = match format {
        ExportFormat::Peft => Some(LoraFormat::Peft),
        ExportFormat::Diffusers if !sd => {
            return Err(TrainError::config(
                "format",
                "diffusers' LoRA layout exists for Stable Diffusion pipelines only; export a Shapes \
                 run as peft or merged",
            ));
        }
        ExportFormat::Diffusers => Some(LoraFormat::Diffusers),
        ExportFormat::Merged => None,
    };
    if let Some(lora_format) = lora_format {
        if run.config.finetune() == Finetune::Full {
            return Err(TrainError::config(
                "format",
                "the run trained every parameter (finetune = \"full\"): it has no adapter to \
                 export; use --format merged",
            ));
        }
        let alpha = run.alpha()?;
        let naming = lora_naming(run.config.model());
        let lora = match &run.model {
            TrainedModel::Sd(m) => lora_weights(m.as_ref(), alpha)?,
            TrainedModel::Sd3(m) => lora_weights(m.as_ref(), alpha)?,
            TrainedModel::Shapes(_, ShapesModel::Unet(m)) => lora_weights(m.as_ref(), alpha)?,
            TrainedModel::Shapes(_, ShapesModel::Dit(m)) => lora_weights(m.as_ref(), alpha)?,
        };
        return Ok(save_lora(&lora, naming.as_ref(), lora_format, dtype, out)?);
    }
    let base_dir = run.config.model().to_path_buf();
    let run_config = run.config.clone();
    match run.merged() {
        TrainedModel::Sd(sd) => export_pipeline_dir(
            &base_dir,
            out,
            "unet",
            &["scheduler", "text_encoder", "tokenizer", "unet", "vae"],
            &[],
            &|file| Ok(sd.unet.save_weights(file, dtype)?),
        ),
        TrainedModel::Sd3(sd3) => {
            let without_t5 = match &run_config {
                RunConfig::Train(c) => !c.text_encoder_3,
                RunConfig::Pref(_) => false,
            };
            let dropped: &[&str] = if without_t5 {
                &["text_encoder_3", "tokenizer_3"]
            } else {
                &[]
            };
            export_pipeline_dir(
                &base_dir,
                out,
                "transformer",
                &[
                    "scheduler",
                    "text_encoder",
                    "text_encoder_2",
                    "text_encoder_3",
                    "tokenizer",
                    "tokenizer_2",
                    "tokenizer_3",
                    "transformer",
                    "vae",
                ],
                dropped,
                &|file| Ok(sd3.transformer.save_weights(file, dtype)?),
            )
        }
        TrainedModel::Shapes(config, model) => {
            if dtype != WeightDtype::F32 {
                return Err(TrainError::config(
                    "dtype",
                    "Shapes models are read in f32 only; export them with --dtype f32",
                ));
            }
            model.save(&config, out)?;
            Ok(vec![out.join("model.json"), out.join("model.safetensors")])
        }
    }
}

/// A merged pipeline directory: `base_dir`'s components copied into `out` (built in a
/// temporary sibling, renamed when complete) with the denoiser's (`unet` / `transformer`)
/// weights written by `save` in place of the base's. `dropped` components (an SD3 run's T5
/// when it trained without it) are left out and set to `[null, null]` in `model_index.json`,
/// so that diffusers loads the pipeline as the run conditioned it.
///
/// # Errors
/// `out` inside the base directory, an invalid `model_index.json` (or none, without default
/// components), unreadable or unwritable files, each naming the path.
fn export_pipeline_dir(
    base_dir: &Path,
    out: &Path,
    denoiser: &str,
    default_components: &[&str],
    dropped: &[&str],
    save: &dyn Fn(&Path) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    let (base_abs, out_abs) = (
        crate::adapt::absolute(base_dir),
        crate::adapt::absolute(out),
    );
    if out_abs.starts_with(&base_abs) {
        return Err(TrainError::File {
            path: out.to_path_buf(),
            reason: format!(
                "lies inside the base model directory {}; export elsewhere",
                base_dir.display()
            ),
        });
    }
    // The pipeline's components (those `model_index.json` lists, or `default_components`
    // without one), never other files of the base directory (single-file checkpoints of
    // the unmerged model, VCS folders); the denoiser's weights in any precision variant are
    // replaced by the merged ones. Built in a temporary sibling, renamed when complete.
    let mut components: Vec<String> = Vec::new();
    let index = base_dir.join("model_index.json");
    if let Ok(text) = std::fs::read_to_string(&index) {
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TrainError::File {
                path: index.clone(),
                reason: format!("invalid JSON: {e}"),
            })?;
        if let Some(map) = value.as_object() {
            for (name, v) in map {
                let listed = v
                    .as_array()
                    .is_some_and(|a| a.first().is_some_and(|lib| !lib.is_null()));
                if listed && base_dir.join(name).is_dir() {
                    components.push(name.clone());
                }
            }
        }
    }
    if components.is_empty() {
        components = default_components
            .iter()
            .filter(|c| base_dir.join(c).is_dir())
            .map(|c| c.to_string())
            .collect();
    }
    components.retain(|c| !dropped.contains(&c.as_str()));
    if components.is_empty() {
        return Err(TrainError::File {
            path: index.clone(),
            reason: "missing or lists no component: the merged export copies the components it \
                     lists"
                .into(),
        });
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let built = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| TrainError::io(&index, e))?;
            let mut value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| TrainError::File {
                    path: index.clone(),
                    reason: format!("invalid JSON: {e}"),
                })?;
            if let Some(map) = value.as_object_mut() {
                for c in dropped {
                    if map.contains_key(*c) {
                        map.insert(c.to_string(), serde_json::json!([null, null]));
                    }
                }
            }
            let text = if dropped.is_empty() {
                text
            } else {
                format!("{value:#}\n")
            };
            crate::images::write_atomically(&tmp.join("model_index.json"), &text)?;
        }
        let unet = Path::new(denoiser);
        let mut skip: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(base_dir.join(unet))
            .map_err(|e| TrainError::io(base_dir.join(unet), e))?
            .flatten()
        {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.ends_with(".safetensors")
                || file.ends_with(".bin")
                || file.ends_with(".safetensors.index.json")
                || file.ends_with(".bin.index.json")
            {
                skip.push(unet.join(file));
            }
        }
        let skip: Vec<&Path> = skip.iter().map(PathBuf::as_path).collect();
        for c in &components {
            copy_dir(&base_dir.join(c), &tmp.join(c), &skip)?;
        }
        save(
            &tmp.join(denoiser)
                .join("diffusion_pytorch_model.safetensors"),
        )?;
        Ok(())
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // `out` is absent or empty (checked above).
    let _ = std::fs::remove_dir(out);
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        TrainError::io(out, e)
    })?;
    Ok(vec![
        out.to_path_buf(),
        out.join(denoiser)
            .join("diffusion_pytorch_model.safetensors"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_models::hf::{fixtures_dir, max_relative_error, read_safetensors};
    use burn::prelude::*;

    fn temp(name: &str) -> PathBuf {
        crate::fresh_test_dir(&format!("align-export-{name}"))
    }

    /// The UNet's output on the fixture's reference inputs.
    fn unet_out(sd: &StableDiffusion) -> TensorData {
        let d = align_core::test_device();
        let r = read_safetensors(&fixtures_dir().join("sd-tiny/reference.safetensors")).unwrap();
        sd.unet
            .forward(
                Tensor::from_data(r["unet.sample"].clone(), &d),
                Tensor::from_data(r["unet.timestep"].clone(), &d),
                Tensor::from_data(r["unet.encoder_hidden_states"].clone(), &d),
            )
            .into_data()
    }

    /// The SD job's test configuration with rank-4, α = 8 adapters and a high learning rate,
    /// so that two iterations move the UNet visibly.
    fn sd_config(dir: &Path) -> TrainConfig {
        let mut c = crate::sd::tests_config(dir);
        c.eval_steps = 2;
        c.lora.rank = 4;
        c.lora.alpha = 8.0;
        c.runner.learning_rate = 1e-2;
        c
    }

    fn sd_model(m: TrainedModel) -> StableDiffusion {
        match m {
            TrainedModel::Sd(sd) => *sd,
            _ => panic!("not a Stable Diffusion 1.x run"),
        }
    }

    /// A DDPO-IS run on the tiny SD fixture, exported as PEFT and diffusers files and merged:
    /// the adapters read back into the base compute bit for bit what the run's model computes;
    /// the merged pipeline directory loads and matches to f32 rounding; a new run started from
    /// the exported adapter (`lora_init`) starts from that model, and its reference is that
    /// model too. With `ALIGN_LORA_EXPORT_DIR` set, the exports and our UNet output are kept
    /// there for `scripts/check-lora-export.py`.
    #[test]
    fn a_trained_sd_run_exports_to_files_that_load_back() {
        let device = align_core::test_device();
        let dir = temp("sd");
        let c = sd_config(&dir);
        let report = crate::online::train(&c, false, &crate::observer::silent(), &device).unwrap();
        let recorded = read_run_config(&c.out).unwrap();
        // As given, paths absolute, and with the adapters-only checkpoints of SD runs.
        let mut expected_config = c.for_the_record();
        expected_config.runner.checkpoint_trainable_only = true;
        assert_eq!(recorded, RunConfig::Train(Box::new(expected_config)));
        let run = load_run(&c.out, Weights::default(), &device).unwrap();
        assert!(run.weights_file.ends_with("checkpoint-000002/model.bpk"));
        let trained = sd_model(run.model);
        let expected = unet_out(&trained);
        // `align eval --run` measures the report's final evaluation again, exactly.
        let RunConfig::Train(rc) = &recorded else {
            panic!("a train run")
        };
        let (mean, images) = crate::sd::evaluate_sd(rc, &trained, &device).unwrap();
        assert_eq!(images, 2);
        assert_eq!(mean, report.eval_reward.clone().unwrap().final_);
        let base = StableDiffusion::load(&fixtures_dir().join("sd-tiny"), &device).unwrap();
        let moved = max_relative_error(&expected, &unet_out(&base)).unwrap();
        assert!(moved > 1e-4, "the run must have moved the UNet: {moved}");
        let keep = std::env::var_os("ALIGN_LORA_EXPORT_DIR").map(PathBuf::from);
        let out = keep.clone().unwrap_or_else(|| dir.join("export"));
        let _ = std::fs::remove_dir_all(&out);
        for (format, sub) in [
            (ExportFormat::Peft, "peft"),
            (ExportFormat::Diffusers, "diffusers"),
        ] {
            let files = export_run(
                &c.out,
                Weights::default(),
                format,
                WeightDtype::F32,
                &out.join(sub),
                &device,
            )
            .unwrap();
            let weights = read_lora(&files[0], &align_models::SdUnetNaming).unwrap();
            assert_eq!((weights.rank, weights.alpha), (4, 8.0));
            let base = StableDiffusion::load(&fixtures_dir().join("sd-tiny"), &device).unwrap();
            let reloaded = apply_lora_weights(base, &weights).unwrap();
            assert_eq!(unet_out(&reloaded), expected, "{format:?}");
        }
        let files = export_run(
            &c.out,
            Weights::default(),
            ExportFormat::Merged,
            WeightDtype::F32,
            &out.join("merged"),
            &device,
        )
        .unwrap();
        let merged = StableDiffusion::load(&files[0], &device).unwrap();
        let err = max_relative_error(&unet_out(&merged), &expected).unwrap();
        assert!(err < 1e-5, "merged: {err}");
        assert!(out.join("merged/tokenizer/vocab.json").is_file());
        assert!(out.join("merged/model_index.json").is_file());
        assert!(
            !out.join("merged/reference.safetensors").exists(),
            "only the components"
        );
        let inside = fixtures_dir().join("sd-tiny/exported");
        let result = export_run(
            &c.out,
            Weights::default(),
            ExportFormat::Merged,
            WeightDtype::F32,
            &inside,
            &device,
        );
        let created = inside.exists();
        let _ = std::fs::remove_dir_all(&inside);
        let err = result.err().unwrap().to_string();
        assert!(err.contains("inside the base model directory"), "{err}");
        assert!(!created);
        if keep.is_some() {
            align_models::lora_file::save_tensors(
                &out.join("ours.safetensors"),
                &[("unet.out", expected.clone())],
            )
            .unwrap();
        }
        // A run that starts from the exported adapter starts from the trained model.
        let mut again = sd_config(&dir);
        again.out = dir.join("again");
        again.lora_init = Some(out.join("peft"));
        again.lora.rank = 2; // ignored: the file's rank and α are used
        let base = StableDiffusion::load(&fixtures_dir().join("sd-tiny"), &device).unwrap();
        let (policy, reference) = crate::adapt::policy_and_reference(
            base,
            &crate::adapt::Adapters {
                finetune: Finetune::Lora,
                lora: &again.lora,
                targets: None,
                init: again.lora_init.as_deref(),
                model_dir: &again.model,
            },
            true,
        )
        .unwrap();
        assert_eq!(unet_out(&policy), expected);
        let err = max_relative_error(&unet_out(&reference), &expected).unwrap();
        assert!(err < 1e-5, "reference: {err}");
        again.runner.iterations = 1;
        crate::online::train(&again, false, &crate::observer::silent(), &device).unwrap();
        // The run keeps its own copy of the adapter it started from.
        assert!(
            again
                .out
                .join("lora_init/adapter_model.safetensors")
                .is_file()
        );
        let recorded = read_run_config(&again.out).unwrap();
        let trained_again = sd_model(
            load_run(&again.out, Weights::default(), &device)
                .unwrap()
                .model,
        );
        assert!(matches!(recorded, RunConfig::Train(c) if c.lora_init.is_some()));
        assert_ne!(
            unet_out(&trained_again),
            expected,
            "the imported adapter trains on"
        );
        // Refusals: an existing export, a run without config.toml, no such checkpoint.
        let err = export_run(
            &c.out,
            Weights::default(),
            ExportFormat::Peft,
            WeightDtype::F32,
            &out.join("peft"),
            &device,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not empty"), "{err}");
        let weights = Weights {
            checkpoint: Some(7),
            no_ema: false,
        };
        let err = load_run(&c.out, weights, &device)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("checkpoint-000007"), "{err}");
        let err = load_run(&dir, Weights::default(), &device)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("config.toml"), "{err}");
        // A damaged checkpoint is refused, naming the file that no longer matches its digest.
        let model = c.out.join("checkpoint-000002/model.bpk");
        let mut bytes = std::fs::read(&model).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&model, bytes).unwrap();
        let err = load_run(&c.out, Weights::default(), &device)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("checkpoint-000002: fails its integrity check: model.bpk does not match"),
            "{err}"
        );
        if keep.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// A Shapes run exports its merged model in the Shapes format (it loads as a model
    /// directory and computes what the run's model does) and its adapter as PEFT; the
    /// diffusers layout is refused, and so is an adapter from a fully fine-tuned run.
    #[test]
    fn a_shapes_run_exports_merged_and_peft_and_refuses_the_rest() {
        let device = align_core::test_device();
        let dir = temp("shapes");
        let mut c = TrainConfig {
            model: crate::test_model_dir("shapes-flow-unet"),
            out: dir.join("run"),
            prompts_per_iteration: 2,
            group_size: 2,
            train_steps: 2,
            eval_steps: 2,
            ..TrainConfig::default()
        };
        c.runner.iterations = 1;
        c.runner.learning_rate = 1e-2;
        crate::online::train(&c, false, &crate::observer::silent(), &device).unwrap();
        let out = dir.join("merged");
        export_run(
            &c.out,
            Weights::default(),
            ExportFormat::Merged,
            WeightDtype::F32,
            &out,
            &device,
        )
        .unwrap();
        let (_, merged) = ShapesModel::load(&out, &device).unwrap();
        let run = load_run(&c.out, Weights::default(), &device).unwrap();
        let (ShapesModel::Unet(merged), TrainedModel::Shapes(_, ShapesModel::Unet(adapted))) =
            (merged, run.model)
        else {
            panic!("the flow UNet")
        };
        let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &device);
        let t = Tensor::<1>::from_floats([0.3, 0.8], &device);
        let tok = align_data::Tokenizer::new();
        let rows = vec![
            tok.encode("two red circles").unwrap(),
            tok.encode("one blue square").unwrap(),
        ];
        let cond = adapted.encode(&rows, &device).unwrap();
        let cond_m = merged.encode(&rows, &device).unwrap();
        use align_core::Denoiser;
        let a = adapted.predict(x.clone(), t.clone(), &cond).into_data();
        let m = merged.predict(x, t, &cond_m).into_data();
        let err = max_relative_error(&m, &a).unwrap();
        assert!(err < 1e-5, "{err}");
        let files = export_run(
            &c.out,
            Weights::default(),
            ExportFormat::Peft,
            WeightDtype::F32,
            &dir.join("peft"),
            &device,
        )
        .unwrap();
        let lora = read_lora(&files[0], &align_models::BurnNaming).unwrap();
        assert_eq!((lora.rank, lora.alpha), (c.lora.rank, c.lora.alpha));
        let err = export_run(
            &c.out,
            Weights::default(),
            ExportFormat::Diffusers,
            WeightDtype::F32,
            &dir.join("d"),
            &device,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("format:"), "{err}");
        let err = export_run(
            &c.out,
            Weights::default(),
            ExportFormat::Merged,
            WeightDtype::F16,
            &dir.join("h"),
            &device,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("dtype:"), "{err}");
        let mut full = c.clone();
        full.finetune = Finetune::Full;
        full.out = dir.join("full");
        crate::online::train(&full, false, &crate::observer::silent(), &device).unwrap();
        let err = export_run(
            &full.out,
            Weights::default(),
            ExportFormat::Peft,
            WeightDtype::F32,
            &dir.join("fp"),
            &device,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("merged"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `config.toml` tells an `align train` run from an `align pref-train` one, and refuses a
    /// file that is neither, naming it.
    #[test]
    fn run_configs_of_both_jobs_read_back() {
        let dir = temp("configs");
        let pref = PrefConfig {
            model: crate::test_model_dir("shapes-unet"),
            lora_init: Some(dir.join("adapter")),
            ..PrefConfig::default()
        };
        crate::adapt::write_run_config(&pref.for_the_record(), "align pref-train", &dir, false)
            .unwrap();
        let RunConfig::Pref(read) = read_run_config(&dir).unwrap() else {
            panic!("a preference run")
        };
        assert_eq!(*read, pref.for_the_record());
        assert!(read.model.is_absolute() && read.lora_init.unwrap().is_absolute());
        let train = TrainConfig::default();
        crate::adapt::write_run_config(&train, "align train", &dir, false).unwrap();
        // A resume may change the schedule, not the model.
        let mut longer = train.clone();
        longer.runner.iterations += 5;
        crate::adapt::write_run_config(&longer, "align train", &dir, true).unwrap();
        let mut other = longer.clone();
        other.lora.rank = 2;
        let err = crate::adapt::write_run_config(&other, "align train", &dir, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("lora:") && err.contains("config.toml"),
            "{err}"
        );
        // SD3's conditioning settings are part of the model; a record without them (an older
        // run) means the defaults.
        for (field, change) in [
            (
                "text_encoder_3",
                (|c: &mut TrainConfig| c.text_encoder_3 = false) as fn(&mut _),
            ),
            ("max_sequence_length", |c: &mut TrainConfig| {
                c.max_sequence_length = 128
            }),
        ] {
            let mut other = longer.clone();
            change(&mut other);
            let err = crate::adapt::write_run_config(&other, "align train", &dir, true)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&format!("{field}:")), "{err}");
        }
        let text = std::fs::read_to_string(dir.join(RUN_CONFIG)).unwrap();
        let older: String = text
            .lines()
            .filter(|l| !l.starts_with("text_encoder_3") && !l.starts_with("max_sequence_length"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(older, text);
        std::fs::write(dir.join(RUN_CONFIG), older).unwrap();
        crate::adapt::write_run_config(&longer, "align train", &dir, true).unwrap();
        assert!(matches!(
            read_run_config(&dir).unwrap(),
            RunConfig::Train(_)
        ));
        std::fs::write(dir.join(RUN_CONFIG), "algorithm = 3\n").unwrap();
        let err = read_run_config(&dir).unwrap_err().to_string();
        assert!(
            err.contains("config.toml") && err.contains("neither"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
