//! LoRA adapters as files other tools load: the PEFT adapter directory and the diffusers
//! `pytorch_lora_weights.safetensors`, written from and read into a model adapted by
//! [`crate::apply_lora`].
//!
//! burn keeps a `Linear` weight as `W [d_in, d_out]` and its adapter as `A [d_in, r]`,
//! `B [r, d_out]` with `W_eff = W + (α/r)·A·B`. PyTorch keeps `W` as `[d_out, d_in]` and PEFT
//! the factors as `lora_A.weight [r, d_in]` and `lora_B.weight [d_out, r]` with
//! `W_eff = W + (α/r)·lora_B·lora_A`, so
//!
//! ```text
//! lora_A.weight = Aᵀ,   lora_B.weight = Bᵀ,   (lora_B · lora_A)ᵀ = A · B.
//! ```
//!
//! | format | files | tensor names | α |
//! |---|---|---|---|
//! | [`LoraFormat::Peft`] | `adapter_model.safetensors` + `adapter_config.json` | `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` | `lora_alpha` in `adapter_config.json` |
//! | [`LoraFormat::Diffusers`] | `pytorch_lora_weights.safetensors` | `<component>.<module>.lora_A.weight` / `.lora_B.weight` | the `lora_adapter_metadata` JSON of the safetensors header (`<component>.lora_alpha`, `<component>.r`) |
//!
//! `<module>` is the module's name in the other library — for the Stable Diffusion UNet
//! diffusers' (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0`), for SD3's
//! MMDiT diffusers' (`transformer_blocks.0.attn.to_out.0`), for the Shapes models burn's own
//! path — and `<component>` the pipeline component (`unet`, SD3's `transformer`). A
//! [`LoraNaming`] translates.
//!
//! Reading ([`read_lora`]) accepts both formats, with or without the `base_model.model.` /
//! `<component>.` prefixes, the older diffusers `lora.down.weight` / `lora.up.weight` names, and takes
//! α from the adapter config, the header metadata or per-module `.alpha` tensors (α = r when
//! none is given, as diffusers and PEFT assume). Files are written atomically (temporary file,
//! then rename); half-precision files are read as f32.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, PathFilter, SafetensorsStore};
use burn::tensor::{DType, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::lora::LoraConfig;

/// The file layout of an exported adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraFormat {
    /// A PEFT adapter directory (`adapter_model.safetensors` + `adapter_config.json`), loaded
    /// by `peft.PeftModel.from_pretrained`.
    Peft,
    /// diffusers' `pytorch_lora_weights.safetensors`, loaded by a pipeline's
    /// `load_lora_weights`.
    Diffusers,
}

/// The precision of written tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightDtype {
    /// 32-bit floats (lossless).
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl WeightDtype {
    /// The burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }

    fn safetensors(self) -> safetensors::Dtype {
        match self {
            Self::F32 => safetensors::Dtype::F32,
            Self::F16 => safetensors::Dtype::F16,
            Self::Bf16 => safetensors::Dtype::BF16,
        }
    }

    fn bytes(self, values: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Self::Bf16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}

/// Translates a model's weight paths to the module names of another library and back.
pub trait LoraNaming {
    /// The external module name of the weight at `weight_path` (a path ending in `.weight`),
    /// or `None` if the weight cannot be exported under this naming.
    fn to_file(&self, weight_path: &str) -> Option<String>;
    /// The model's weight path of an external module name.
    fn to_model(&self, module: &str) -> String;
    /// The pipeline component diffusers prefixes tensor names and header metadata keys with
    /// (`unet`, SD3's `transformer`).
    fn component(&self) -> &'static str {
        "unet"
    }
}

/// The module names are the model's own paths without `.weight` (the Shapes models).
#[derive(Debug, Clone, Copy, Default)]
pub struct BurnNaming;

impl LoraNaming for BurnNaming {
    fn to_file(&self, weight_path: &str) -> Option<String> {
        weight_path.strip_suffix(".weight").map(str::to_string)
    }
    fn to_model(&self, module: &str) -> String {
        format!("{module}.weight")
    }
}

/// The Stable Diffusion pipeline's UNet under diffusers' module names: the model's
/// `unet.` prefix goes, and the three names burn fields cannot hold come back (`to_out` →
/// `to_out.0`, `ff.proj` → `ff.net.0.proj`, `ff.out` → `ff.net.2`; the inverse of
/// [`crate::sd::UNET_REMAP`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SdUnetNaming;

/// burn name ↔ diffusers name of the UNet modules that differ.
const SD_RENAMES: [(&str, &str); 3] = [
    (".to_out", ".to_out.0"),
    (".ff.proj", ".ff.net.0.proj"),
    (".ff.out", ".ff.net.2"),
];

impl LoraNaming for SdUnetNaming {
    fn to_file(&self, weight_path: &str) -> Option<String> {
        let module = weight_path.strip_prefix("unet.")?.strip_suffix(".weight")?;
        for (ours, theirs) in SD_RENAMES {
            if let Some(stem) = module.strip_suffix(ours) {
                return Some(format!("{stem}{theirs}"));
            }
        }
        Some(module.to_string())
    }
    fn to_model(&self, module: &str) -> String {
        for (ours, theirs) in SD_RENAMES {
            if let Some(stem) = module.strip_suffix(theirs) {
                return format!("unet.{stem}{ours}.weight");
            }
        }
        format!("unet.{module}.weight")
    }
}

/// The Stable Diffusion 3 pipeline's MMDiT under diffusers' module names: the model's
/// `transformer.` prefix goes and the names burn fields cannot hold come back (`to_out` →
/// `to_out.0`, `ff.proj` → `ff.net.0.proj`, `ff.out` → `ff.net.2`, the same for `ff_context`;
/// the inverse of [`crate::sd3::MMDIT_REMAP`]). diffusers' component is `transformer`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sd3TransformerNaming;

/// burn name ↔ diffusers name of the MMDiT modules that differ.
const SD3_RENAMES: [(&str, &str); 5] = [
    (".to_out", ".to_out.0"),
    (".ff.proj", ".ff.net.0.proj"),
    (".ff.out", ".ff.net.2"),
    (".ff_context.proj", ".ff_context.net.0.proj"),
    (".ff_context.out", ".ff_context.net.2"),
];

impl LoraNaming for Sd3TransformerNaming {
    fn to_file(&self, weight_path: &str) -> Option<String> {
        let module = weight_path
            .strip_prefix("transformer.")?
            .strip_suffix(".weight")?;
        for (ours, theirs) in SD3_RENAMES {
            if let Some(stem) = module.strip_suffix(ours) {
                return Some(format!("{stem}{theirs}"));
            }
        }
        Some(module.to_string())
    }
    fn to_model(&self, module: &str) -> String {
        for (ours, theirs) in SD3_RENAMES {
            if let Some(stem) = module.strip_suffix(theirs) {
                return format!("transformer.{stem}{ours}.weight");
            }
        }
        format!("transformer.{module}.weight")
    }
    fn component(&self) -> &'static str {
        "transformer"
    }
}

/// One adapted weight's factors in burn's layout: `a [d_in, r]`, `b [r, d_out]`, f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFactors {
    /// The down factor `A`.
    pub a: TensorData,
    /// The up factor `B`.
    pub b: TensorData,
}

/// Every adapter of a model: the rank, `α` and the factors by weight path
/// (`unet.….attn1.to_q.weight`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraWeights {
    /// Rank `r`.
    pub rank: usize,
    /// Scale numerator `α` (delta scale `α / r`).
    pub alpha: f64,
    /// The factors by the adapted weight's path.
    pub factors: BTreeMap<String, LoraFactors>,
}

fn file_error(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn f32_values(data: &TensorData, what: &str) -> Result<Vec<f32>> {
    data.clone()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Input {
            what: what.to_string(),
            expected: "float data".into(),
            got: format!("{e:?}"),
        })
}

/// The transpose of a `[rows, cols]` matrix.
fn transpose(data: &TensorData, what: &str) -> Result<TensorData> {
    let shape = data.shape().to_vec();
    if shape.len() != 2 {
        return Err(ModelError::Input {
            what: what.to_string(),
            expected: "a matrix".into(),
            got: format!("shape {shape:?}"),
        });
    }
    let (rows, cols) = (shape[0], shape[1]);
    let v = f32_values(data, what)?;
    let mut t = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    Ok(TensorData::new(t, [cols, rows]))
}

/// The adapters of `model` (a model adapted by [`crate::apply_lora`]) with the `alpha` it was
/// adapted with (burn keeps the scale `α/r` only, not `α`).
///
/// # Errors
/// [`ModelError::Config`] if the model has no adapters or adapters of different ranks.
pub fn lora_weights<M: Module>(model: &M, alpha: f64) -> Result<LoraWeights> {
    let tensors = model.collect(
        Some(PathFilter::new().with_regex(r"\.lora\.(a|b)$")),
        None,
        false,
    );
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for t in tensors {
        let name = t.name.clone();
        let (dtype, shape) = (t.dtype, t.shape.to_vec());
        let bytes = t.to_bytes().map_err(|e| ModelError::Input {
            what: name.clone(),
            expected: "readable tensor data".into(),
            got: format!("{e:?}"),
        })?;
        let data = TensorData::from_bytes(bytes, shape, dtype).convert::<f32>();
        if let Some(w) = name.strip_suffix(".lora.a") {
            a.insert(w.to_string(), data);
        } else if let Some(w) = name.strip_suffix(".lora.b") {
            b.insert(w.to_string(), data);
        }
    }
    if a.is_empty() {
        return Err(ModelError::config(
            "lora",
            "the model has no LoRA adapters (trained with finetune = \"full\"?)",
        ));
    }
    let mut factors = BTreeMap::new();
    let mut rank = None;
    for (path, a) in a {
        let b = b.remove(&path).ok_or_else(|| {
            ModelError::config("lora", format!("`{path}` has an A factor but no B factor"))
        })?;
        let r = a.shape().as_slice().get(1).copied().unwrap_or(0);
        if *rank.get_or_insert(r) != r {
            return Err(ModelError::config(
                "lora.rank",
                format!("adapters of ranks {} and {r}", rank.unwrap_or(r)),
            ));
        }
        factors.insert(path, LoraFactors { a, b });
    }
    Ok(LoraWeights {
        rank: rank.unwrap_or(0),
        alpha,
        factors,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| file_error(path, e.to_string()))?;
    }
    let tmp = crate::checkpoint::temp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_error(path, format!("writing: {e}"))
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_error(path, format!("renaming the temporary file: {e}"))
    })
}

/// Serialises named `(values, shape)` pairs at `dtype`, with header metadata.
pub(crate) fn safetensors_bytes(
    tensors: &BTreeMap<String, (Vec<f32>, Vec<usize>)>,
    dtype: WeightDtype,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<Vec<u8>> {
    let encoded: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, (v, s))| (k.clone(), dtype.bytes(v), s.clone()))
        .collect();
    let views = encoded
        .iter()
        .map(|(k, bytes, shape)| {
            safetensors::tensor::TensorView::new(dtype.safetensors(), shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| file_error(path, format!("tensor `{k}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata).map_err(|e| file_error(path, e.to_string()))
}

/// Writes named tensors as an f32 safetensors file, atomically (reference outputs for the
/// checks that compare with other libraries).
///
/// # Errors
/// [`ModelError::Checkpoint`] naming the file if it cannot be written;
/// [`ModelError::Input`] for non-float data.
pub fn save_tensors(path: &Path, tensors: &[(&str, TensorData)]) -> Result<()> {
    let mut map = BTreeMap::new();
    for (name, data) in tensors {
        map.insert(
            name.to_string(),
            (f32_values(data, name)?, data.shape().to_vec()),
        );
    }
    write_atomically(
        path,
        &safetensors_bytes(&map, WeightDtype::F32, None, path)?,
    )
}

/// The `adapter_config.json` of a PEFT LoRA adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftAdapterConfig {
    /// Always `"LORA"`.
    pub peft_type: String,
    /// Rank.
    pub r: usize,
    /// Scale numerator.
    pub lora_alpha: f64,
    /// The adapted modules: full names, or (as PEFT also accepts) one regular expression.
    /// Informational here: the factors' names say which modules are adapted.
    pub target_modules: TargetModules,
    /// Dropout on the adapter input (0: none).
    #[serde(default)]
    pub lora_dropout: f64,
    /// Bias handling (`"none"`).
    #[serde(default = "none")]
    pub bias: String,
    /// rsLoRA scaling `α/√r` instead of `α/r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA (weight-decomposed LoRA).
    #[serde(default)]
    pub use_dora: bool,
    /// Whether the stored weights are `[d_in, d_out]` (Conv1D); false for `nn.Linear`.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Per-module rank overrides.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    /// Per-module α overrides.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    /// How PEFT initialises new adapters (irrelevant once loaded).
    #[serde(default = "yes")]
    pub init_lora_weights: serde_json::Value,
    /// The base model (informational).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// PEFT task type (`null` for a bare module such as a UNet).
    #[serde(default)]
    pub task_type: Option<String>,
    /// Whether the adapter is for inference only.
    #[serde(default)]
    pub inference_mode: bool,
}

fn none() -> String {
    "none".into()
}
fn yes() -> serde_json::Value {
    serde_json::Value::Bool(true)
}

/// `target_modules` of a PEFT config: a list of names, or a regular expression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names (or name suffixes).
    List(Vec<String>),
    /// A regular expression matched against full module names.
    Pattern(String),
}

/// The file name of a PEFT adapter's weights.
pub const PEFT_WEIGHTS: &str = "adapter_model.safetensors";
/// The file name of a PEFT adapter's config.
pub const PEFT_CONFIG: &str = "adapter_config.json";
/// The file name diffusers saves and loads LoRA weights under.
pub const DIFFUSERS_WEIGHTS: &str = "pytorch_lora_weights.safetensors";
/// The safetensors header key diffusers keeps the adapter's LoRA config under.
pub const DIFFUSERS_METADATA_KEY: &str = "lora_adapter_metadata";

/// Writes `weights` into `dir` in `format` at `dtype`; returns the files written.
///
/// # Errors
/// [`ModelError::Config`] for a weight `naming` cannot name; [`ModelError::Checkpoint`] naming
/// a file that cannot be written.
pub fn save_lora(
    weights: &LoraWeights,
    naming: &dyn LoraNaming,
    format: LoraFormat,
    dtype: WeightDtype,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let prefix = match format {
        LoraFormat::Peft => "base_model.model.".to_string(),
        LoraFormat::Diffusers => format!("{}.", naming.component()),
    };
    let mut tensors = BTreeMap::new();
    let mut modules = Vec::new();
    for (path, f) in &weights.factors {
        let module = naming.to_file(path).ok_or_else(|| {
            ModelError::config(
                "lora",
                format!("the adapted weight `{path}` has no name in this format"),
            )
        })?;
        let a = transpose(&f.a, path)?;
        let b = transpose(&f.b, path)?;
        for (which, t) in [("lora_A", a), ("lora_B", b)] {
            let shape = t.shape().to_vec();
            tensors.insert(
                format!("{prefix}{module}.{which}.weight"),
                (f32_values(&t, path)?, shape),
            );
        }
        modules.push(module);
    }
    let config = PeftAdapterConfig {
        peft_type: "LORA".into(),
        r: weights.rank,
        lora_alpha: weights.alpha,
        target_modules: TargetModules::List(modules),
        lora_dropout: 0.0,
        bias: none(),
        use_rslora: false,
        use_dora: false,
        fan_in_fan_out: false,
        rank_pattern: BTreeMap::new(),
        alpha_pattern: BTreeMap::new(),
        init_lora_weights: yes(),
        base_model_name_or_path: None,
        task_type: None,
        inference_mode: true,
    };
    let config_json = serde_json::to_string_pretty(&config)
        .map_err(|e| ModelError::config("lora", e.to_string()))?;
    match format {
        LoraFormat::Peft => {
            let file = dir.join(PEFT_WEIGHTS);
            let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
            write_atomically(
                &file,
                &safetensors_bytes(&tensors, dtype, Some(meta), &file)?,
            )?;
            let cfg = dir.join(PEFT_CONFIG);
            write_atomically(&cfg, config_json.as_bytes())?;
            Ok(vec![file, cfg])
        }
        LoraFormat::Diffusers => {
            let file = dir.join(DIFFUSERS_WEIGHTS);
            let meta = HashMap::from([
                ("format".to_string(), "pt".to_string()),
                (
                    DIFFUSERS_METADATA_KEY.to_string(),
                    diffusers_metadata(&config, naming.component())?,
                ),
            ]);
            write_atomically(
                &file,
                &safetensors_bytes(&tensors, dtype, Some(meta), &file)?,
            )?;
            Ok(vec![file])
        }
    }
}

/// diffusers' header metadata: the PEFT LoRA config of the `component` (`unet`,
/// `transformer`), keys prefixed with `component.`.
fn diffusers_metadata(config: &PeftAdapterConfig, component: &str) -> Result<String> {
    let value =
        serde_json::to_value(config).map_err(|e| ModelError::config("lora", e.to_string()))?;
    let mut out = serde_json::Map::new();
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            out.insert(format!("{component}.{k}"), v);
        }
    }
    Ok(serde_json::Value::Object(out).to_string())
}

/// Reads a PEFT adapter (its directory, or its `adapter_model.safetensors` with
/// `adapter_config.json` beside it) or a diffusers LoRA file, translating module names with
/// `naming`.
///
/// # Errors
/// [`ModelError::Checkpoint`] naming the file: missing, not safetensors, names that are not
/// LoRA factors (a Kohya `lora_unet_…` file is named as such), factors of mismatched shapes,
/// an unreadable adapter config, or options `align` does not implement (DoRA, rsLoRA,
/// per-module ranks or α).
pub fn read_lora(path: &Path, naming: &dyn LoraNaming) -> Result<LoraWeights> {
    let file = if path.is_dir() {
        [PEFT_WEIGHTS, DIFFUSERS_WEIGHTS]
            .iter()
            .map(|f| path.join(f))
            .find(|f| f.is_file())
            .ok_or_else(|| {
                file_error(
                    path,
                    format!("holds neither {PEFT_WEIGHTS} nor {DIFFUSERS_WEIGHTS}"),
                )
            })?
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| file_error(&file, e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| file_error(&file, format!("not a safetensors file: {e}")))?;
    let tensors = crate::hf::read_safetensors(&file)?;
    // α: the adapter config beside the file, else diffusers' header metadata, else `.alpha`
    // tensors, else r.
    // A diffusers file carries its own α in its header; an `adapter_config.json` beside it
    // belongs to another file. A PEFT weights file's α is in the config beside it.
    let config_file = file.with_file_name(PEFT_CONFIG);
    let header_meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(DIFFUSERS_METADATA_KEY));
    let mut config: Option<PeftAdapterConfig> = None;
    let mut config_source = file.clone();
    if config_file.is_file() && header_meta.is_none() {
        config = Some(crate::hf::read_config(&config_file)?);
        config_source = config_file.clone();
    } else if let Some(meta) = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(DIFFUSERS_METADATA_KEY))
    {
        let value: serde_json::Value = serde_json::from_str(meta)
            .map_err(|e| file_error(&file, format!("{DIFFUSERS_METADATA_KEY} is not JSON: {e}")))?;
        let mut unet = serde_json::Map::new();
        let key_prefix = format!("{}.", naming.component());
        if let serde_json::Value::Object(map) = value {
            for (k, v) in map {
                if let Some(k) = k.strip_prefix(&key_prefix) {
                    unet.insert(k.to_string(), v);
                }
            }
        }
        if !unet.is_empty() {
            unet.entry("peft_type").or_insert("LORA".into());
            unet.entry("target_modules")
                .or_insert(serde_json::json!([]));
            config = Some(
                serde_json::from_value(serde_json::Value::Object(unet))
                    .map_err(|e| file_error(&file, format!("{DIFFUSERS_METADATA_KEY}: {e}")))?,
            );
        }
    }
    if let Some(c) = &config {
        let unsupported = [
            (c.use_dora, "use_dora"),
            (c.use_rslora, "use_rslora"),
            (!c.rank_pattern.is_empty(), "rank_pattern"),
            (!c.alpha_pattern.is_empty(), "alpha_pattern"),
            (c.fan_in_fan_out, "fan_in_fan_out"),
        ];
        if let Some((_, field)) = unsupported.iter().find(|(on, _)| *on) {
            return Err(file_error(
                &config_source,
                format!("the adapter sets `{field}`, which align does not implement"),
            ));
        }
    }
    let mut downs: BTreeMap<String, TensorData> = BTreeMap::new();
    let mut ups: BTreeMap<String, TensorData> = BTreeMap::new();
    let mut alphas: BTreeMap<String, f64> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (name, data) in tensors {
        if name.starts_with("lora_unet_") || name.starts_with("lora_te") {
            return Err(file_error(
                &file,
                format!(
                    "`{name}` is a Kohya (sd-scripts) LoRA name; convert the file to the \
                     diffusers or PEFT layout first"
                ),
            ));
        }
        if name.starts_with("text_encoder.") || name.starts_with("text_encoder_2.") {
            return Err(file_error(
                &file,
                format!(
                    "`{name}` adapts the text encoder; align trains and loads {} adapters \
                     only (remove the text_encoder factors from the file)",
                    naming.component()
                ),
            ));
        }
        let stem = name
            .strip_prefix("base_model.model.")
            .or_else(|| name.strip_prefix(&format!("{}.", naming.component())))
            .unwrap_or(&name);
        let split = [
            (".lora_A.weight", true),
            (".lora.down.weight", true),
            (".lora_B.weight", false),
            (".lora.up.weight", false),
        ]
        .iter()
        .find_map(|(suffix, down)| stem.strip_suffix(suffix).map(|m| (m.to_string(), *down)));
        match split {
            Some((module, true)) => {
                downs.insert(module, data);
            }
            Some((module, false)) => {
                ups.insert(module, data);
            }
            None => match stem.strip_suffix(".alpha") {
                Some(module) => {
                    let v = f32_values(&data, &name)?;
                    alphas.insert(
                        module.to_string(),
                        f64::from(v.first().copied().unwrap_or(0.0)),
                    );
                }
                None => unknown.push(name),
            },
        }
    }
    if !unknown.is_empty() {
        return Err(file_error(
            &file,
            format!("tensors that are not LoRA factors: {unknown:?}"),
        ));
    }
    if downs.is_empty() {
        return Err(file_error(&file, "holds no LoRA factors"));
    }
    let mut factors = BTreeMap::new();
    let mut rank = None;
    for (module, down) in downs {
        let up = ups.remove(&module).ok_or_else(|| {
            file_error(
                &file,
                format!("`{module}` has a down (A) factor but no up (B)"),
            )
        })?;
        let (ds, us) = (down.shape().to_vec(), up.shape().to_vec());
        if ds.len() != 2 || us.len() != 2 || ds[0] != us[1] {
            return Err(file_error(
                &file,
                format!(
                    "`{module}`: factors of shapes {ds:?} (A) and {us:?} (B) are not \
                     [r, d_in] and [d_out, r] (convolution adapters are not supported)"
                ),
            ));
        }
        let r = ds[0];
        if *rank.get_or_insert(r) != r {
            return Err(file_error(
                &file,
                format!("adapters of ranks {} and {r}", rank.unwrap_or(r)),
            ));
        }
        factors.insert(
            naming.to_model(&module),
            LoraFactors {
                a: transpose(&down, &module)?,
                b: transpose(&up, &module)?,
            },
        );
    }
    if let Some(module) = ups.keys().next() {
        return Err(file_error(
            &file,
            format!("`{module}` has an up (B) factor but no down (A)"),
        ));
    }
    let rank = rank.unwrap_or(0);
    let alpha = match (&config, alphas.values().next()) {
        (Some(c), _) => {
            if c.r != rank {
                return Err(file_error(
                    &config_source,
                    format!("says r = {} but the factors have rank {rank}", c.r),
                ));
            }
            c.lora_alpha
        }
        (None, Some(&a)) => {
            if alphas.values().any(|&x| x != a) {
                return Err(file_error(
                    &file,
                    "per-module `.alpha` values differ; align uses one α for every adapter",
                ));
            }
            a
        }
        (None, None) => rank as f64,
    };
    Ok(LoraWeights {
        rank,
        alpha,
        factors,
    })
}

/// Attaches adapters to exactly the weights of `weights` (rank and α from it) and loads their
/// factors: the model computes what the adapter's source computed.
///
/// # Errors
/// [`ModelError::Config`] if a factor names a weight the model does not have or has the wrong
/// shape for it.
pub fn apply_lora_weights<M: Module>(model: M, weights: &LoraWeights) -> Result<M> {
    let targets: Vec<String> = weights.factors.keys().cloned().collect();
    let config = LoraConfig::new()
        .with_rank(weights.rank)
        .with_alpha(weights.alpha)
        .with_targets(targets.clone());
    let mut model = crate::lora::apply_lora_exact(model, &config)?;
    let mut tensors = BTreeMap::new();
    for (path, f) in &weights.factors {
        tensors.insert(
            format!("{path}.lora.a"),
            (f32_values(&f.a, path)?, f.a.shape().to_vec()),
        );
        tensors.insert(
            format!("{path}.lora.b"),
            (f32_values(&f.b, path)?, f.b.shape().to_vec()),
        );
    }
    let here = Path::new("<lora factors>");
    let bytes = safetensors_bytes(&tensors, WeightDtype::F32, None, here)?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes)).allow_partial(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| ModelError::config("lora", format!("{e:?}")))?;
    let missing: Vec<&String> = result
        .missing
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.ends_with(".lora.a") || k.ends_with(".lora.b"))
        .collect();
    if !result.unused.is_empty() || !result.errors.is_empty() || !missing.is_empty() {
        let errs: Vec<String> = result.errors.iter().map(|e| format!("{e}")).collect();
        return Err(ModelError::config(
            "lora",
            format!(
                "the adapter does not fit the model: unknown weights {:?}, unfilled factors \
                 {missing:?}, mismatches {errs:?}",
                result.unused
            ),
        ));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StableDiffusion;
    use crate::hf::{fixtures_dir, max_relative_error, read_safetensors};
    use burn::prelude::*;

    fn device() -> Device {
        align_core::test_device()
    }

    fn sd() -> StableDiffusion {
        StableDiffusion::load(&fixtures_dir().join("sd-tiny"), &device()).unwrap()
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("align-lora-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// The tiny UNet with rank-4, α = 8 adapters on the attention projections whose `B`
    /// factors are random too (a fresh adapter's `B = 0` would hide a wrong layout).
    fn adapted() -> (StableDiffusion, LoraWeights) {
        let config = LoraConfig::new()
            .with_rank(4)
            .with_alpha(8.0)
            .with_targets(StableDiffusion::lora_targets());
        let model = crate::apply_lora(sd(), &config).unwrap();
        let mut weights = lora_weights(&model, 8.0).unwrap();
        // Deterministic factors from a hash of the position (the device RNG is shared by the
        // tests running in parallel), uniform in [−0.3, 0.3].
        let mut k = 0u64;
        let mut values = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    k += 1;
                    let h = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                    (h as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
                })
                .collect();
            TensorData::new(v, shape.to_vec())
        };
        for f in weights.factors.values_mut() {
            f.a = values(&f.a.shape().to_vec());
            f.b = values(&f.b.shape().to_vec());
        }
        (apply_lora_weights(sd(), &weights).unwrap(), weights)
    }

    fn unet_out(model: &StableDiffusion) -> TensorData {
        let d = device();
        let r = read_safetensors(&fixtures_dir().join("sd-tiny/reference.safetensors")).unwrap();
        model
            .unet
            .forward(
                Tensor::from_data(r["unet.sample"].clone(), &d),
                Tensor::from_data(r["unet.timestep"].clone(), &d),
                Tensor::from_data(r["unet.encoder_hidden_states"].clone(), &d),
            )
            .into_data()
    }

    #[test]
    fn sd_module_names_are_diffusers_names_and_invert() {
        let (_, weights) = adapted();
        assert_eq!(
            weights.factors.len(),
            4 * 2 * 11,
            "4 projections × 2 attentions × 11 blocks"
        );
        let mut to_out = 0;
        for path in weights.factors.keys() {
            let name = SdUnetNaming.to_file(path).unwrap();
            assert!(!name.starts_with("unet."), "{name}");
            assert!(!name.ends_with(".weight"), "{name}");
            if name.ends_with(".to_out.0") {
                to_out += 1;
            }
            assert_eq!(&SdUnetNaming.to_model(&name), path);
            assert_eq!(
                BurnNaming.to_model(&BurnNaming.to_file(path).unwrap()),
                *path
            );
        }
        assert_eq!(to_out, 22);
        assert_eq!(
            SdUnetNaming.to_model("mid_block.attentions.0.transformer_blocks.0.ff.net.2"),
            "unet.mid_block.attentions.0.transformer_blocks.0.ff.out.weight"
        );
        assert_eq!(
            SdUnetNaming
                .to_file("unet.up_blocks.1.attentions.0.transformer_blocks.0.ff.proj.weight"),
            Some("up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj".into())
        );
        assert_eq!(SdUnetNaming.to_file("text_encoder.x.weight"), None);
    }

    /// Every linear weight of the SD3 pipeline's transformer is named as in diffusers'
    /// checkpoint of it (`fixtures/sd3-tiny-pipeline/transformer`), and the names invert.
    #[test]
    fn sd3_module_names_are_the_checkpoint_names_and_invert() {
        use burn::module::{ModuleVisitor, Param};
        struct Linears(Vec<String>, Vec<String>);
        impl ModuleVisitor for Linears {
            fn enter_module(&mut self, name: &str, _container_type: &str) {
                self.1.push(name.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container_type: &str) {
                self.1.pop();
            }
            fn visit_float<const D: usize>(&mut self, _param: &Param<burn::tensor::Tensor<D>>) {
                let path = self.1.join(".");
                if D == 2 && path.ends_with(".weight") {
                    self.0.push(path);
                }
            }
        }
        let dir = crate::hf::fixtures_dir().join("sd3-tiny-pipeline");
        let options = crate::sd3::Sd3Options {
            text_encoder_3: false,
            max_sequence_length: 4,
        };
        let sd3 =
            crate::sd3::StableDiffusion3::load_with(&dir, &options, &align_core::test_device())
                .unwrap();
        let mut v = Linears(Vec::new(), Vec::new());
        sd3.visit(&mut v);
        let names = crate::hf::read_safetensors(
            &dir.join("transformer/diffusion_pytorch_model.safetensors"),
        )
        .unwrap();
        let mut n = 0;
        for path in v.0.iter().filter(|p| p.starts_with("transformer.")) {
            let module = Sd3TransformerNaming.to_file(path).unwrap();
            assert!(
                names.contains_key(&format!("{module}.weight")),
                "{path} → {module}"
            );
            assert_eq!(&Sd3TransformerNaming.to_model(&module), path);
            n += 1;
        }
        // Block 0 (dual attention): 8 + 4 attention, 2 + 2 MLP, 2 + 2 + 1 adaLN; blocks 1, 2 …
        assert!(n > 40, "{n} linear weights");
        assert_eq!(Sd3TransformerNaming.to_file("vae.decoder.x.weight"), None);
        assert_eq!(Sd3TransformerNaming.component(), "transformer");
    }

    /// Export to PEFT and diffusers files, read back into the base model: the same factors and
    /// α, and the UNet computes bit for bit what the adapted one did.
    #[test]
    fn exported_files_load_back_bit_equal() {
        let (model, weights) = adapted();
        let expected = unet_out(&model);
        let base = unet_out(&sd());
        assert!(
            max_relative_error(&expected, &base).unwrap() > 1e-2,
            "the adapter must matter"
        );
        for format in [LoraFormat::Peft, LoraFormat::Diffusers] {
            let dir = temp(&format!("{format:?}"));
            let exported = lora_weights(&model, 8.0).unwrap();
            assert_eq!(exported, weights);
            let files =
                save_lora(&exported, &SdUnetNaming, format, WeightDtype::F32, &dir).unwrap();
            let read = read_lora(&files[0], &SdUnetNaming).unwrap();
            assert_eq!(read.rank, 4);
            assert_eq!(read.alpha, 8.0, "{format:?}");
            assert_eq!(read, weights, "{format:?}");
            let reloaded = apply_lora_weights(sd(), &read).unwrap();
            assert_eq!(unet_out(&reloaded), expected, "{format:?}");
            // The directory is accepted as well as the file.
            assert_eq!(read_lora(&dir, &SdUnetNaming).unwrap(), weights);
            let names = read_safetensors(&files[0]).unwrap();
            let prefix = if format == LoraFormat::Peft {
                "base_model.model."
            } else {
                "unet."
            };
            assert!(names.keys().all(|k| k.starts_with(prefix)), "{format:?}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn half_precision_exports_read_back_within_rounding() {
        let (model, weights) = adapted();
        let expected = unet_out(&model);
        for (dtype, tol) in [(WeightDtype::F16, 1e-3), (WeightDtype::Bf16, 1e-2)] {
            let dir = temp(&format!("{dtype:?}"));
            let files = save_lora(&weights, &SdUnetNaming, LoraFormat::Peft, dtype, &dir).unwrap();
            let bytes = std::fs::read(&files[0]).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert!(
                st.tensors()
                    .iter()
                    .all(|(_, v)| v.dtype() == dtype.safetensors())
            );
            let read = read_lora(&files[0], &SdUnetNaming).unwrap();
            let out = unet_out(&apply_lora_weights(sd(), &read).unwrap());
            let err = max_relative_error(&out, &expected).unwrap();
            eprintln!("{dtype:?}: relative error {err:.2e}");
            assert!(err < tol && err > 0.0, "{dtype:?}: {err}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// The merged UNet, written in diffusers' layout and loaded by the diffusers loader,
    /// computes what the adapted one does (to f32 rounding of `W + (α/r)·A·B`).
    #[test]
    fn merged_unet_reproduces_the_adapted_output() {
        let (model, _) = adapted();
        let expected = unet_out(&model);
        let dir = temp("merged");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            fixtures_dir().join("sd-tiny/unet/config.json"),
            dir.join("config.json"),
        )
        .unwrap();
        let merged = model.clone().materialize();
        assert!(
            model
                .unet
                .save_weights(&dir.join("x.safetensors"), WeightDtype::F32)
                .is_err()
        );
        merged
            .unet
            .save_weights(
                &dir.join("diffusion_pytorch_model.safetensors"),
                WeightDtype::F32,
            )
            .unwrap();
        let names = read_safetensors(&dir.join("diffusion_pytorch_model.safetensors")).unwrap();
        let original = read_safetensors(
            &fixtures_dir().join("sd-tiny/unet/diffusion_pytorch_model.safetensors"),
        )
        .unwrap();
        assert_eq!(
            names.keys().collect::<Vec<_>>(),
            original.keys().collect::<Vec<_>>(),
            "diffusers' tensor names"
        );
        let mut reloaded = sd();
        reloaded.unet = crate::sd::UNet2DCondition::load(&dir, &device()).unwrap();
        let err = max_relative_error(&unet_out(&reloaded), &expected).unwrap();
        assert!(err < 1e-5, "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn foreign_or_broken_adapters_are_refused_by_name() {
        let (_, weights) = adapted();
        let dir = temp("broken");
        let files = save_lora(
            &weights,
            &SdUnetNaming,
            LoraFormat::Peft,
            WeightDtype::F32,
            &dir,
        )
        .unwrap();
        // An option align does not implement.
        let cfg = std::fs::read_to_string(&files[1]).unwrap();
        std::fs::write(
            &files[1],
            cfg.replace("\"use_dora\": false", "\"use_dora\": true"),
        )
        .unwrap();
        let err = read_lora(&dir, &SdUnetNaming).unwrap_err().to_string();
        assert!(
            err.contains("use_dora") && err.contains(PEFT_CONFIG),
            "{err}"
        );
        std::fs::write(&files[1], cfg.replace("\"r\": 4", "\"r\": 8")).unwrap();
        let err = read_lora(&dir, &SdUnetNaming).unwrap_err().to_string();
        assert!(err.contains("r = 8"), "{err}");
        // Kohya names, a missing factor, no factors, not safetensors.
        let write = |tensors: &[(&str, Vec<usize>)]| {
            let map: BTreeMap<String, (Vec<f32>, Vec<usize>)> = tensors
                .iter()
                .map(|(k, s)| (k.to_string(), (vec![0.5; s.iter().product()], s.clone())))
                .collect();
            let f = dir.join("x.safetensors");
            std::fs::write(
                &f,
                safetensors_bytes(&map, WeightDtype::F32, None, &f).unwrap(),
            )
            .unwrap();
            read_lora(&f, &SdUnetNaming).unwrap_err().to_string()
        };
        let err = write(&[(
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            vec![4, 8],
        )]);
        assert!(err.contains("Kohya"), "{err}");
        let err = write(&[("unet.mid_block.attn1.to_q.lora_A.weight", vec![4, 8])]);
        assert!(err.contains("no up"), "{err}");
        let err = write(&[("unet.conv_in.weight", vec![4, 8])]);
        assert!(err.contains("not LoRA factors"), "{err}");
        let err = write(&[
            ("unet.a.lora_A.weight", vec![4, 8]),
            ("unet.a.lora_B.weight", vec![8, 2]),
        ]);
        assert!(err.contains("not [r, d_in]"), "{err}");
        std::fs::write(dir.join("y.safetensors"), b"not a file").unwrap();
        let err = read_lora(&dir.join("y.safetensors"), &SdUnetNaming)
            .unwrap_err()
            .to_string();
        assert!(err.contains("y.safetensors"), "{err}");
        // An adapter for weights the model does not have.
        let mut other = weights.clone();
        let (k, v) = other.factors.pop_first().unwrap();
        other.factors.insert(k.replace("attn1", "attn9"), v.clone());
        let missing = k.replace("attn1", "attn9");
        let err = apply_lora_weights(sd(), &other).unwrap_err().to_string();
        assert!(
            err.contains(&missing) && err.starts_with("invalid model configuration `lora.targets`"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Adapters saved by diffusers' own `save_lora_weights` (`lora.down` / `lora.up` names, α
    /// in the header metadata) and by PEFT's `save_pretrained` (`scripts/make-lora-fixtures.py`,
    /// r = 4, α = 8, both factors random): read into the fixture pipeline, the UNet computes
    /// what PyTorch computed with the adapter loaded (which moved the output by 40 %).
    #[test]
    fn adapters_saved_by_diffusers_and_peft_match_pytorch() {
        let dir = fixtures_dir().join("sd-tiny-lora");
        let r = read_safetensors(&dir.join("reference.safetensors")).unwrap();
        for source in [dir.join("diffusers"), dir.join("peft")] {
            let weights = read_lora(&source, &SdUnetNaming).unwrap();
            assert_eq!(
                (weights.rank, weights.alpha),
                (4, 8.0),
                "{}",
                source.display()
            );
            assert_eq!(weights.factors.len(), 88);
            let out = unet_out(&apply_lora_weights(sd(), &weights).unwrap());
            let err = max_relative_error(&out, &r["unet_lora.out"]).unwrap();
            assert!(err < 1e-5, "{}: {err}", source.display());
        }
    }
}
