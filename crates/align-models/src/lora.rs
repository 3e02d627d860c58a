//! LoRA adapters on the attention and linear projections, through burn's `apply_lora`.
//!
//! burn's [`Lora`] freezes every base parameter and attaches, to each matched rank-2 weight
//! `W [d_in, d_out]`, trainable factors `A [d_in, r]` (random) and `B [r, d_out]` (zero), so
//! the effective weight is `W + (α/r) A B` and a freshly adapted model computes exactly what
//! the base model does. Convolution kernels and norms stay frozen (burn adapts rank-2 weights
//! only — the same targets as diffusers' default `to_q/to_k/to_v/to_out`).
//!
//! The **reference policy** of KL-regularised RL is the base model, "adapters off":
//! [`with_lora_scale`]`(model, 0.0)` returns a view of the model whose adapters contribute
//! exactly zero (every `B` multiplied by 0), sharing the frozen base tensors — no second copy
//! of the weights. Other scales interpolate (AlignProp-style LoRA scale control).

use burn::module::{Lora, Module, ModuleMapper, ModuleVisitor, Param, ParamGroup};
use burn::prelude::*;

use crate::error::{ModelError, Result};

/// Which parameters get adapters and with what rank.
#[derive(Config, Debug)]
pub struct LoraConfig {
    /// Rank `r`.
    #[config(default = 8)]
    pub rank: usize,
    /// Scale numerator `α` (delta scale `α / r`).
    #[config(default = 8.0)]
    pub alpha: f64,
    /// Parameter-path substrings to adapt (any match). The default covers every attention
    /// projection (`query`, `key`, `value`, `output`), the text-context projections and the
    /// transformer MLPs / feed-forwards.
    #[config(
        default = "vec![\"query\".into(), \"key\".into(), \"value\".into(), \"output\".into(), \"context_proj\".into(), \"ff_\".into(), \"mlp_\".into()]"
    )]
    pub targets: Vec<String>,
}

/// Attaches LoRA adapters to the targeted weights and freezes everything else.
///
/// # Errors
/// [`ModelError::Config`] for rank 0, a non-finite `α`, no targets, or targets that match no
/// weight of the model.
pub fn apply_lora<M: Module>(model: M, config: &LoraConfig) -> Result<M> {
    if config.rank == 0 || !config.alpha.is_finite() {
        return Err(ModelError::config(
            "lora",
            "rank must be ≥ 1 and alpha finite",
        ));
    }
    if config.targets.is_empty() {
        return Err(ModelError::config(
            "lora.targets",
            "name at least one parameter path",
        ));
    }
    let group = ParamGroup::from_any_predicates(config.targets.clone());
    let adapted = model.apply_lora(Lora::new(config.rank, config.alpha).set_param_group(group));
    if lora_factor_count(&adapted) == 0 {
        return Err(ModelError::config(
            "lora.targets",
            format!("{:?} match no rank-2 weight of the model", config.targets),
        ));
    }
    Ok(adapted)
}

/// Attaches LoRA adapters to exactly the weights whose paths are `config.targets` (full paths
/// such as `unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight`) and freezes
/// everything else; what [`crate::apply_lora_weights`] uses to rebuild a saved adapter.
///
/// # Errors
/// As [`apply_lora`], and [`ModelError::Config`] listing targets that name no rank-2 weight.
pub fn apply_lora_exact<M: Module>(model: M, config: &LoraConfig) -> Result<M> {
    if config.rank == 0 || !config.alpha.is_finite() || config.targets.is_empty() {
        return Err(ModelError::config(
            "lora",
            "rank must be ≥ 1, alpha finite and at least one weight named",
        ));
    }
    let group = ParamGroup::from_paths(config.targets.clone());
    let adapted = model.apply_lora(Lora::new(config.rank, config.alpha).set_param_group(group));
    use burn::store::{ModuleSnapshot, PathFilter};
    let adapted_paths: std::collections::BTreeSet<String> = adapted
        .collect(
            Some(PathFilter::new().with_regex(r"\.lora\.a$")),
            None,
            false,
        )
        .into_iter()
        .filter_map(|t| t.name.strip_suffix(".lora.a").map(str::to_string))
        .collect();
    let missing: Vec<&String> = config
        .targets
        .iter()
        .filter(|t| !adapted_paths.contains(*t))
        .collect();
    if !missing.is_empty() {
        return Err(ModelError::config(
            "lora.targets",
            format!(
                "{} of the {} weights named are not rank-2 weights of the model: {missing:?}",
                missing.len(),
                config.targets.len()
            ),
        ));
    }
    Ok(adapted)
}

/// Tracks the module path during a traversal.
#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn is_lora_b(&self) -> bool {
        let n = self.0.len();
        n >= 2 && self.0[n - 2] == "lora" && self.0[n - 1] == "b"
    }
    fn is_lora(&self) -> bool {
        self.0.iter().any(|p| p == "lora")
    }
}

/// Multiplies the LoRA `B` factors by `scale`; with `leaf`, the results are detached and keep
/// their trainability (a new leaf), else they are a view of the originals.
struct ScaleB {
    path: Path,
    scale: f64,
    leaf: bool,
}

impl ModuleMapper for ScaleB {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.0.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.0.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !self.path.is_lora_b() {
            return param;
        }
        let (scale, leaf) = (self.scale, self.leaf);
        param.map(|b| {
            if !leaf {
                return b.mul_scalar(scale);
            }
            let trainable = b.is_require_grad();
            let scaled = b.mul_scalar(scale).detach();
            if trainable {
                scaled.require_grad()
            } else {
                scaled
            }
        })
    }
}

/// A view of `model` whose LoRA deltas are multiplied by `scale`: 0 = adapters off (the
/// reference policy), 1 = unchanged. Base weights are shared, not copied.
///
/// The view is for evaluation (rollouts of the reference, KL targets); train the original.
pub fn with_lora_scale<M: Module>(model: M, scale: f64) -> M {
    model.map(&mut ScaleB {
        path: Path::default(),
        scale,
        leaf: false,
    })
}

/// Multiplies every LoRA `B` factor of `model` by `factor` **in place of training**: the
/// adapters' deltas `B A` scale by `factor`, the factors stay trainable leaves (unlike
/// [`with_lora_scale`]'s view, whose mapped factors are not) — LoRA-scale annealing during a
/// run rescales them between optimizer steps.
pub fn rescale_lora<M: Module>(model: M, factor: f64) -> M {
    model.map(&mut ScaleB {
        path: Path::default(),
        scale: factor,
        leaf: true,
    })
}

struct CountFactors {
    path: Path,
    factors: usize,
    elements: usize,
}

impl ModuleVisitor for CountFactors {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.0.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.0.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.path.is_lora() {
            self.factors += 1;
            self.elements += param.shape().num_elements();
        }
    }
}

fn count(model: &impl Module) -> CountFactors {
    let mut c = CountFactors {
        path: Path::default(),
        factors: 0,
        elements: 0,
    };
    model.visit(&mut c);
    c
}

/// Number of LoRA factor tensors (two per adapted weight).
pub fn lora_factor_count<M: Module>(model: &M) -> usize {
    count(model).factors
}

/// Number of trainable LoRA parameters (elements of all factors).
pub fn lora_parameter_count<M: Module>(model: &M) -> usize {
    count(model).elements
}
