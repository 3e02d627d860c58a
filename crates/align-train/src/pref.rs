//! Preference optimisation of Shapes models: an AI-feedback preference dataset (the base
//! model's samples labelled by the gold ShapeEval verifier, [`pref_data`]) and the preference
//! job ([`pref_train`]: Diffusion-DPO, MaPO, Diffusion-KTO, DSPO, RWR or Preference Flow
//! Matching on such a dataset, LoRA on the model, with a held-out gold win rate against the
//! base).

use std::path::{Path, PathBuf};
use std::time::Instant;

use align_core::data_parallel::{Gradients, Replicas, policy_and_reference_replicas, shard_ranges};
use align_core::{Condition, CoreError, Denoiser, Job, Metrics, NoiseKey, RunnerConfig};
use align_data::{
    EvalSet, Image, LabeledImage, PreferencePair, SceneSpec, ShapeEval, Split, SplitPart,
    Tokenizer, read_labels, read_pairs, write_labels, write_pairs,
};
use align_models::{ShapesModel, ShapesModelConfig, TextToImage};
use align_pref::{
    DpoBatch, KtoBatch, KtoConfig, MapoConfig, NoiseLevels, ResidualFlow, diffusion_dpo_loss,
    kto_loss, mapo_loss, pfm_loss, pfm_transport,
};
use align_samplers::NoiseSchedule;
use burn::module::{Module, ModuleDisplay};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::config::{Finetune, LoraSection, parse_devices, read_toml, runner_field};
use crate::error::{Result, TrainError};
use crate::images::{images_to_tensor, tensor_to_images};
use crate::observer::SharedObserver;
use crate::online::open_runner;
use crate::report::write_report_json;
use crate::shapes_eval::{SampleOptions, encode_prompt, eval_requests, generate};
use crate::win_rate::win_rate;

/// What [`pref_data`] builds.
#[derive(Debug, Clone)]
pub struct PrefDataOptions {
    /// Base model directory.
    pub model: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Training-split prompts to sample.
    pub prompts: usize,
    /// Samples per prompt (≥ 2): the best and the worst by ShapeEval partial credit form the
    /// pair; every sample gets a binary label (desirable = passes ShapeEval).
    pub candidates: usize,
    /// Noise seed.
    pub seed: u64,
    /// Sampler options.
    pub sample: SampleOptions,
}

/// What [`pref_data`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct PrefDataSummary {
    /// Pairs written (prompts whose candidates' scores differ).
    pub pairs: usize,
    /// Labelled images written.
    pub labels: usize,
    /// Of which desirable.
    pub desirable: usize,
}

#[allow(clippy::too_many_arguments)]
fn host_scores<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    prompts: &[String],
    specs: &[&SceneSpec],
    ids: &[u64],
    seed: u64,
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<(Image, f64, bool)>> {
    let images = generate(model, config, prompts, ids, seed, options, device)?;
    let verifier = ShapeEval::default();
    Ok(images
        .into_iter()
        .zip(specs)
        .map(|(im, spec)| {
            let r = verifier.score(&im, spec);
            (im, r.partial_credit, r.pass)
        })
        .collect())
}

/// Samples `candidates` images of `prompts` training-split prompts from a model, scores them
/// with ShapeEval and writes `pairs.jsonl` (best vs worst candidate of each prompt whose scores
/// differ) and `labels.jsonl` (every image; desirable = passes) into `options.out`.
///
/// # Errors
/// Bad options, a model that does not load, no pair to write, write failures.
pub fn pref_data(options: &PrefDataOptions, device: &Device) -> Result<PrefDataSummary> {
    if options.prompts == 0 {
        return Err(TrainError::config("prompts", "must be ≥ 1"));
    }
    if options.candidates < 2 {
        return Err(TrainError::config(
            "candidates",
            "must be ≥ 2 (a pair needs two)",
        ));
    }
    let (config, model) = ShapesModel::load(&options.model, device)?;
    let mut specs = Split::standard().all_specs(SplitPart::Train);
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x7072_6566);
    for i in (1..specs.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        specs.swap(i, j);
    }
    specs.truncate(options.prompts);
    let mut prompts = Vec::new();
    let mut spec_refs = Vec::new();
    let mut ids = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        for c in 0..options.candidates {
            prompts.push(s.to_string());
            spec_refs.push(s);
            ids.push((i * options.candidates + c) as u64);
        }
    }
    let scored = match &model {
        ShapesModel::Unet(m) => host_scores(
            m.as_ref(),
            &config,
            &prompts,
            &spec_refs,
            &ids,
            options.seed,
            options.sample,
            device,
        )?,
        ShapesModel::Dit(m) => host_scores(
            m.as_ref(),
            &config,
            &prompts,
            &spec_refs,
            &ids,
            options.seed,
            options.sample,
            device,
        )?,
    };
    let mut pairs = Vec::new();
    let mut labels = Vec::new();
    for (i, group) in scored.chunks(options.candidates).enumerate() {
        let prompt = specs[i].to_string();
        let best = group
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .ok_or_else(|| TrainError::config("candidates", "empty group"))?;
        let worst = group
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .ok_or_else(|| TrainError::config("candidates", "empty group"))?;
        if best.1 > worst.1 {
            pairs.push(PreferencePair {
                prompt: prompt.clone(),
                winner: best.0.clone(),
                loser: worst.0.clone(),
            });
        }
        for (im, _, pass) in group {
            labels.push(LabeledImage {
                prompt: prompt.clone(),
                image: im.clone(),
                desirable: *pass,
            });
        }
    }
    if pairs.is_empty() {
        return Err(TrainError::config(
            "candidates",
            "every prompt's candidates scored the same: no pair to write",
        ));
    }
    write_pairs(&options.out, &pairs)?;
    write_labels(&options.out, &labels)?;
    Ok(PrefDataSummary {
        pairs: pairs.len(),
        labels: labels.len(),
        desirable: labels.iter().filter(|l| l.desirable).count(),
    })
}

/// Which preference loss the preference job optimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrefAlgorithm {
    /// Diffusion-DPO (pairs, frozen reference).
    DiffusionDpo,
    /// MaPO (pairs, no reference).
    Mapo,
    /// Diffusion-KTO (binary labels, frozen reference).
    Kto,
    /// DSPO (pairs, frozen reference; score matching on the winner).
    Dspo,
    /// Reward-weighted regression on the labelled images (`labels.jsonl`, reward 1 for a
    /// desirable image and 0 otherwise): the denoising loss weighted by
    /// `exp(R / rwr_temperature)` normalised over the batch, no reference. A small temperature
    /// makes it fine-tuning on the verifier's passes (rejection-sampling fine-tuning).
    Rwr,
    /// Preference Flow Matching (pairs; flow models only): the base model is never changed; a
    /// LoRA copy of it learns the preference flow `v = D_LoRA − D_base` from losers to winners
    /// (`x_τ = (1 − τ) y⁻ + τ y⁺`, target `y⁺ − y⁻`, `τ ~ U[0, 1]`), and the evaluations
    /// transport the base model's samples along it with `pfm_steps` Euler steps.
    Pfm,
}

/// A preference job's configuration (`align pref-train` TOML). Every field has a default.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefConfig {
    /// The loss.
    pub algorithm: PrefAlgorithm,
    /// Base model directory.
    pub model: PathBuf,
    /// Preference dataset directory (`pairs.jsonl`; `labels.jsonl` for KTO).
    pub data: PathBuf,
    /// Run directory.
    pub out: PathBuf,
    /// Seed (batches, noise, timesteps, LoRA init).
    pub seed: u64,
    /// Pairs (or labelled images) per optimizer step.
    pub batch_size: usize,
    /// Evaluation seeds per held-out prompt.
    pub eval_seeds: usize,
    /// Sampler steps of the evaluations (0 = the family's default).
    pub eval_steps: usize,
    /// Periodic ShapeEval evaluation (train and held-out pass rates in `metrics.jsonl`: the
    /// monitor of a run against the gold verifier) every N optimizer steps; `0` turns it off.
    /// Absent: four times per run (every `⌈iterations / 4⌉` steps).
    pub eval_every: Option<usize>,
    /// Seeds per prompt of the periodic evaluations (default 1: one image per prompt).
    pub monitor_seeds: usize,
    /// LoRA adapters.
    pub lora: LoraSection,
    /// Start from this LoRA adapter (PEFT directory or file, diffusers file) instead of fresh
    /// adapters; its rank, α and modules replace `[lora]`'s and the reference is the model the
    /// run starts from (see `align train`'s `lora_init`).
    pub lora_init: Option<PathBuf>,
    /// What the loss trains: `"lora"` (default, the `[lora]` adapters; the reference is the
    /// model with its adapters off) or `"full"` (every parameter; the reference is a frozen
    /// copy of the base).
    pub finetune: Finetune,
    /// Optimizer, clipping, checkpoints.
    pub runner: RunnerConfig,
    /// Diffusion-DPO β on mean-reduced errors.
    pub dpo_beta: f64,
    /// MaPO hyper-parameters.
    pub mapo: MapoConfig,
    /// KTO hyper-parameters.
    pub kto: KtoConfig,
    /// DSPO β (in `inside` and in the target shift).
    pub dspo_beta: f64,
    /// RWR temperature α of `exp(R / α)` (rewards are 0 or 1).
    pub rwr_temperature: f64,
    /// PFM: Euler steps of the transport from `τ = 0` to `τ = 1` in the evaluations.
    pub pfm_steps: usize,
    /// Data parallelism (`align pref-train --devices flex,ndarray`): each step's pairs are
    /// split into consecutive shards, one per device; each device's replica computes its
    /// shard's loss weighted by its share, and one optimizer step (burn's `step_multi`)
    /// combines the gradients — the single-device step to floating-point rounding. The first
    /// device holds the model, the EMA and the checkpoints. Empty or one entry: one device.
    /// For the losses that are means over pairs: diffusion-dpo, mapo, dspo and pfm.
    pub devices: Vec<String>,
}

impl Default for PrefConfig {
    fn default() -> Self {
        Self {
            algorithm: PrefAlgorithm::DiffusionDpo,
            model: PathBuf::new(),
            data: PathBuf::new(),
            out: PathBuf::new(),
            seed: 0,
            batch_size: 8,
            eval_seeds: 1,
            eval_steps: 0,
            eval_every: None,
            monitor_seeds: 1,
            lora: LoraSection::default(),
            finetune: Finetune::Lora,
            lora_init: None,
            runner: RunnerConfig {
                iterations: 100,
                learning_rate: 1e-4,
                ..RunnerConfig::default()
            },
            dpo_beta: align_pref::DIFFUSION_DPO_BETA,
            mapo: MapoConfig::default(),
            kto: KtoConfig::default(),
            dspo_beta: align_pref::DSPO_BETA,
            rwr_temperature: 0.1,
            pfm_steps: 10,
            devices: Vec::new(),
        }
    }
}

impl PrefConfig {
    /// The configuration as a run records it in its `config.toml`: every file path absolute.
    pub fn for_the_record(&self) -> Self {
        let mut c = self.clone();
        for p in [&mut c.model, &mut c.data, &mut c.out] {
            if !p.as_os_str().is_empty() {
                *p = crate::adapt::absolute(p);
            }
        }
        if let Some(p) = c.lora_init.as_mut() {
            *p = crate::adapt::absolute(p);
        }
        c
    }

    /// The periodic-evaluation interval in optimizer steps (`0` = none): `eval_every` when
    /// set, else `⌈iterations / 4⌉`.
    pub fn eval_interval(&self) -> usize {
        self.eval_every
            .unwrap_or_else(|| self.runner.iterations.div_ceil(4).max(1))
    }

    /// Reads and checks a TOML file; errors name the file and the field.
    ///
    /// # Errors
    /// Unreadable file, TOML errors, unknown fields, invalid values.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_toml(path, Self::validate)
    }

    /// Checks the values serde cannot.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn validate(&self) -> Result<()> {
        for (field, path) in [
            ("model", &self.model),
            ("data", &self.data),
            ("out", &self.out),
        ] {
            if path.as_os_str().is_empty() {
                return Err(TrainError::config(field, "no path given"));
            }
        }
        if self.batch_size == 0 {
            return Err(TrainError::config("batch_size", "must be ≥ 1"));
        }
        if self.eval_seeds == 0 {
            return Err(TrainError::config("eval_seeds", "must be ≥ 1"));
        }
        if self.monitor_seeds == 0 {
            return Err(TrainError::config("monitor_seeds", "must be ≥ 1"));
        }
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(TrainError::config(name, format!("{v} must be positive")))
            }
        };
        positive("dpo_beta", self.dpo_beta)?;
        positive("mapo.beta", self.mapo.beta)?;
        positive("mapo.snr", self.mapo.snr)?;
        positive("mapo.horizon", self.mapo.horizon)?;
        positive("kto.beta", self.kto.beta)?;
        positive("dspo_beta", self.dspo_beta)?;
        positive("rwr_temperature", self.rwr_temperature)?;
        if self.pfm_steps == 0 {
            return Err(TrainError::config("pfm_steps", "must be ≥ 1"));
        }
        if self.devices.len() > 1 {
            if matches!(self.algorithm, PrefAlgorithm::Kto | PrefAlgorithm::Rwr) {
                return Err(TrainError::config(
                    "devices",
                    format!(
                        "{:?} normalises over the whole batch (KTO's reference point, RWR's \
                         weights), so its loss does not split over devices; list one device",
                        self.algorithm
                    ),
                ));
            }
            if self.batch_size < self.devices.len() {
                return Err(TrainError::config(
                    "devices",
                    format!(
                        "{} devices for batches of {}: every device needs at least one pair",
                        self.devices.len(),
                        self.batch_size
                    ),
                ));
            }
        }
        self.runner.validate().map_err(runner_field)
    }
}

/// The preference-training job.
struct PrefJob<D: Module> {
    config: PrefConfig,
    pairs: Vec<PreferencePair>,
    labels: Vec<LabeledImage>,
    reference: TextToImage<D>,
    schedule: Option<NoiseSchedule>,
    model_config: ShapesModelConfig,
    observer: SharedObserver,
    /// The autodiff devices of a data-parallel run (≥ 2; empty otherwise).
    devices: Vec<Device>,
    /// The policy's and the reference's replicas, built at the first iteration.
    replicas: Option<PolicyAndReference<D>>,
}

/// The policy's and the reference's replicas of a data-parallel run.
type PolicyAndReference<D> = (Replicas<TextToImage<D>>, Replicas<TextToImage<D>>);

/// A batch of preference pairs and the noise they are trained at.
#[derive(Clone)]
struct PairBatch {
    prompts: Vec<String>,
    winners: Tensor<4>,
    losers: Tensor<4>,
    noise: Tensor<4>,
    levels: NoiseLevels,
    /// PFM's interpolation times.
    taus: Vec<f64>,
}

impl PairBatch {
    /// Pairs `range` of the batch, on `device`.
    fn shard(&self, range: std::ops::Range<usize>, device: &Device) -> PairBatch {
        let pick = |t: &Tensor<4>| {
            t.clone()
                .narrow(0, range.start, range.len())
                .to_device(device)
        };
        let cut = |v: &[f64]| {
            v.get(range.clone())
                .map(<[f64]>::to_vec)
                .unwrap_or_default()
        };
        PairBatch {
            prompts: self.prompts[range.clone()].to_vec(),
            winners: pick(&self.winners),
            losers: pick(&self.losers),
            noise: pick(&self.noise),
            levels: NoiseLevels {
                model_times: cut(&self.levels.model_times),
                signal: cut(&self.levels.signal),
                noise: cut(&self.levels.noise),
            },
            taus: cut(&self.taus),
        }
    }
}

fn images_tensor(images: &[&Image], device: &Device) -> align_core::Result<Tensor<4>> {
    images_to_tensor(images, device).map_err(TrainError::into_core)
}

impl<D: Module + Denoiser + ModuleDisplay> PrefJob<D> {
    fn encode(&self, m: &TextToImage<D>, prompts: &[String]) -> Result<Condition, String> {
        let tok = Tokenizer::new();
        let rows = prompts
            .iter()
            .map(|p| encode_prompt(&tok, p))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        let device = m.text.devices()[0].clone();
        m.encode(&rows, &device).map_err(|e| e.to_string())
    }

    /// Draws `b` labelled images uniformly with replacement (one `next_u64` each, in order)
    /// and returns them with their prompts and the `[b, 3, s, s]` image tensor.
    fn pick_labels(
        &self,
        rng: &mut ChaCha8Rng,
        b: usize,
        device: &Device,
    ) -> align_core::Result<(Vec<&LabeledImage>, Vec<String>, Tensor<4>)> {
        let pick: Vec<&LabeledImage> = (0..b)
            .map(|_| &self.labels[(rng.next_u64() % self.labels.len() as u64) as usize])
            .collect();
        let prompts: Vec<String> = pick.iter().map(|p| p.prompt.clone()).collect();
        let images = images_tensor(&pick.iter().map(|p| &p.image).collect::<Vec<_>>(), device)?;
        Ok((pick, prompts, images))
    }

    /// `b` pairs drawn with replacement: their prompts, winners and losers `[b, 3, H, W]`.
    fn pick_pairs(
        &self,
        rng: &mut ChaCha8Rng,
        b: usize,
        device: &Device,
    ) -> align_core::Result<(Vec<String>, Tensor<4>, Tensor<4>)> {
        let pick: Vec<&PreferencePair> = (0..b)
            .map(|_| &self.pairs[(rng.next_u64() % self.pairs.len() as u64) as usize])
            .collect();
        let prompts: Vec<String> = pick.iter().map(|p| p.prompt.clone()).collect();
        let winners = images_tensor(&pick.iter().map(|p| &p.winner).collect::<Vec<_>>(), device)?;
        let losers = images_tensor(&pick.iter().map(|p| &p.loser).collect::<Vec<_>>(), device)?;
        Ok((prompts, winners, losers))
    }

    fn levels(&self, rng: &mut ChaCha8Rng, b: usize) -> Result<NoiseLevels, String> {
        match &self.schedule {
            Some(s) => {
                let n = s.num_train_timesteps() as u64;
                let t: Vec<usize> = (0..b).map(|_| (rng.next_u64() % n) as usize).collect();
                NoiseLevels::ddpm(s, &t).map_err(|e| e.to_string())
            }
            None => {
                let t: Vec<f64> = (0..b)
                    .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
                    .collect();
                NoiseLevels::flow(&t).map_err(|e| e.to_string())
            }
        }
    }
}

impl<D: Module + Denoiser + ModuleDisplay> PrefJob<D> {
    /// The loss of a pair algorithm (Diffusion-DPO, MaPO, DSPO, PFM) on `batch` — a mean over
    /// its pairs — with its diagnostics added to `m` weighted by `weight`.
    fn pair_loss(
        &self,
        model: &TextToImage<D>,
        reference: &TextToImage<D>,
        batch: PairBatch,
        m: &mut Metrics,
        weight: f64,
    ) -> align_core::Result<Tensor<1>> {
        let job = CoreError::Job;
        let mut add = |key: &str, v: f64| *m.entry(key.into()).or_insert(0.0) += v * weight;
        let PairBatch {
            prompts,
            winners,
            losers,
            noise,
            levels,
            taus,
        } = batch;
        let cond = self.encode(model, &prompts).map_err(job)?;
        match self.config.algorithm {
            PrefAlgorithm::Mapo => {
                let out = mapo_loss(
                    model,
                    DpoBatch {
                        winners,
                        losers,
                        noise,
                        levels: &levels,
                        condition: &cond,
                        reference_condition: None,
                    },
                    self.config.mapo,
                )
                .map_err(|e| job(e.to_string()))?;
                add("margin_accuracy", out.margin_accuracy);
                Ok(out.loss)
            }
            PrefAlgorithm::Pfm => {
                let ref_cond = self.encode(reference, &prompts).map_err(job)?;
                let flow = ResidualFlow {
                    trainable: model,
                    reference,
                    reference_condition: &ref_cond,
                };
                pfm_loss(&flow, winners, losers, &taus, &cond).map_err(|e| job(e.to_string()))
            }
            _ => {
                let ref_cond = self.encode(reference, &prompts).map_err(job)?;
                let batch = DpoBatch {
                    winners,
                    losers,
                    noise,
                    levels: &levels,
                    condition: &cond,
                    reference_condition: Some(&ref_cond),
                };
                let (loss, implicit_accuracy) = if self.config.algorithm == PrefAlgorithm::Dspo {
                    align_pref::dspo_loss(model, reference, batch, self.config.dspo_beta)
                        .map(|o| (o.loss, o.implicit_accuracy))
                } else {
                    diffusion_dpo_loss(model, reference, batch, self.config.dpo_beta)
                        .map(|o| (o.loss, o.implicit_accuracy))
                }
                .map_err(|e| job(e.to_string()))?;
                add("implicit_accuracy", implicit_accuracy);
                Ok(loss)
            }
        }
    }

    /// A data-parallel step of a pair algorithm: the batch's consecutive shards, each on its
    /// device's replica with its loss weighted by its share, one `step_multi` step.
    fn parallel_pair_step(
        &mut self,
        model: TextToImage<D>,
        batch: PairBatch,
        apply: &mut dyn FnMut(TextToImage<D>, Gradients) -> align_core::Result<TextToImage<D>>,
    ) -> align_core::Result<(TextToImage<D>, Metrics, f64)> {
        let b = batch.prompts.len();
        policy_and_reference_replicas(&mut self.replicas, &model, &self.reference, &self.devices)?;
        let Some((policies, references)) = self.replicas.take() else {
            return Err(CoreError::Job("no replicas".into()));
        };
        let mut m = Metrics::new();
        let mut value = 0.0;
        let mut parts = Vec::new();
        let ranges = shard_ranges(b, policies.len());
        for (d, range) in ranges.into_iter().enumerate() {
            if range.is_empty() {
                continue;
            }
            let share = range.len() as f64 / b as f64;
            let device = policies.devices()[d].clone();
            let (policy, reference) = (&policies.models()[d], &references.models()[d]);
            let shard = batch.shard(range, &device);
            let loss = self.pair_loss(policy, reference, shard, &mut m, share)?;
            value += read_loss(&loss)? * share;
            let grads = GradientsParams::from_grads(loss.mul_scalar(share).backward(), policy);
            parts.push((grads, device));
        }
        let mut policies = policies;
        let stepped = apply(model, Gradients::PerDevice(parts))
            .and_then(|model| policies.sync(&model).map(|()| model));
        self.replicas = Some((policies, references));
        Ok((stepped?, m, value))
    }
}

/// The value of a one-element loss.
fn read_loss(loss: &Tensor<1>) -> align_core::Result<f64> {
    let v = loss
        .clone()
        .detach()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| CoreError::Job(format!("reading the loss: {e:?}")))?;
    v.first()
        .map(|&x| f64::from(x))
        .ok_or_else(|| CoreError::Job("an empty loss tensor".into()))
}

impl<D: Module + Denoiser + ModuleDisplay> Job<TextToImage<D>> for PrefJob<D> {
    fn iteration(
        &mut self,
        model: TextToImage<D>,
        iteration: usize,
        apply: &mut dyn FnMut(TextToImage<D>, Gradients) -> align_core::Result<TextToImage<D>>,
    ) -> align_core::Result<(TextToImage<D>, Metrics)> {
        let job = CoreError::Job;
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ 0x7072_6566_7472);
        rng.set_stream(iteration as u64);
        let b = self.config.batch_size;
        let device = model.text.devices()[0].clone();
        let keys: Vec<NoiseKey> = (0..b)
            .map(|i| NoiseKey::initial(self.config.seed ^ 0x6e6f_6973, (iteration * b + i) as u64))
            .collect();
        let s = self.model_config.image_size;
        let noise =
            align_core::noise_tensor(&keys, [3, s, s], &device).map_err(|e| job(e.to_string()))?;
        let levels = self.levels(&mut rng, b).map_err(job)?;
        let mut m = Metrics::new();
        let loss = match self.config.algorithm {
            PrefAlgorithm::DiffusionDpo
            | PrefAlgorithm::Mapo
            | PrefAlgorithm::Dspo
            | PrefAlgorithm::Pfm => {
                let (prompts, winners, losers) = self.pick_pairs(&mut rng, b, &device)?;
                let taus: Vec<f64> = if self.config.algorithm == PrefAlgorithm::Pfm {
                    (0..b)
                        .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
                        .collect()
                } else {
                    Vec::new()
                };
                let batch = PairBatch {
                    prompts,
                    winners,
                    losers,
                    noise,
                    levels,
                    taus,
                };
                if self.devices.len() > 1 {
                    let (model, mut m, value) = self.parallel_pair_step(model, batch, apply)?;
                    m.insert("loss".into(), value);
                    self.observer.iteration(&format!("loss {value:.4}"));
                    return Ok((model, m));
                }
                self.pair_loss(&model, &self.reference, batch, &mut m, 1.0)?
            }
            PrefAlgorithm::Rwr => {
                let (pick, prompts, images) = self.pick_labels(&mut rng, b, &device)?;
                let rewards: Vec<f64> = pick
                    .iter()
                    .map(|p| if p.desirable { 1.0 } else { 0.0 })
                    .collect();
                let cond = self.encode(&model, &prompts).map_err(job)?;
                let (loss, _) = align_pref::rwr_loss(
                    &model,
                    images,
                    &rewards,
                    align_pref::RewardWeighting::Exponential {
                        temperature: self.config.rwr_temperature,
                    },
                    noise,
                    &levels,
                    &cond,
                )
                .map_err(|e| job(e.to_string()))?;
                m.insert(
                    "desirable_fraction".into(),
                    rewards.iter().sum::<f64>() / b as f64,
                );
                loss
            }
            PrefAlgorithm::Kto => {
                let (pick, prompts, images) = self.pick_labels(&mut rng, b, &device)?;
                let desirable: Vec<bool> = pick.iter().map(|p| p.desirable).collect();
                let cond = self.encode(&model, &prompts).map_err(job)?;
                let ref_cond = self.encode(&self.reference, &prompts).map_err(job)?;
                let out = kto_loss(
                    &model,
                    &self.reference,
                    KtoBatch {
                        images,
                        desirable: &desirable,
                        noise,
                        levels: &levels,
                        condition: &cond,
                        reference_condition: Some(&ref_cond),
                    },
                    self.config.kto,
                )
                .map_err(|e| job(e.to_string()))?;
                m.insert("kto_reference_point".into(), out.z0);
                out.loss
            }
        };
        let value: f32 = loss
            .clone()
            .detach()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| job(format!("reading the loss: {e:?}")))?[0];
        m.insert("loss".into(), f64::from(value));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = apply(model, grads.into())?;
        self.observer.iteration(&format!("loss {value:.4}"));
        Ok((model, m))
    }

    fn notice(&mut self, message: &str) {
        self.observer.say(message);
    }

    /// Every [`PrefConfig::eval_interval`] steps: ShapeEval pass rates of the current weights
    /// on both parts of the evaluation set (`monitor_seeds` seeds), as `eval_train_accuracy`
    /// and `eval_heldout_accuracy`.
    fn after_iteration(
        &mut self,
        model: &TextToImage<D>,
        _average: Option<&TextToImage<D>>,
        iteration: usize,
        metrics: &mut Metrics,
    ) -> align_core::Result<align_core::Control> {
        let every = self.config.eval_interval();
        if every == 0 || !(iteration + 1).is_multiple_of(every) {
            return Ok(align_core::Control::Continue);
        }
        let valid = model.valid();
        let reference = self.reference.valid();
        let transport = self.config.transport(&reference);
        let device = valid.text.devices()[0].clone();
        let mut rates = [0.0; 2];
        for (rate, part) in rates.iter_mut().zip([SplitPart::Train, SplitPart::HeldOut]) {
            let scores = part_scores(
                &valid,
                &self.model_config,
                part,
                self.config.monitor_seeds,
                self.config.eval_steps,
                transport,
                &device,
            )
            .map_err(TrainError::into_core)?;
            *rate = mean_of(&scores).0;
        }
        metrics.insert("eval_train_accuracy".into(), rates[0]);
        metrics.insert("eval_heldout_accuracy".into(), rates[1]);
        self.observer.say(&format!(
            "step {}: ShapeEval train {:.1}% held-out {:.1}%",
            iteration + 1,
            100.0 * rates[0],
            100.0 * rates[1]
        ));
        Ok(align_core::Control::Continue)
    }
}

/// How PFM evaluates: the reference's samples moved along `D_model − D_reference`.
struct Transport<'a, D: Module> {
    reference: &'a TextToImage<D>,
    steps: usize,
}

impl<D: Module> Clone for Transport<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: Module> Copy for Transport<'_, D> {}

impl PrefConfig {
    /// PFM's transport for the evaluations (`None` for the other losses, whose evaluations
    /// sample the trained model itself).
    fn transport<'a, D: Module>(&self, reference: &'a TextToImage<D>) -> Option<Transport<'a, D>> {
        (self.algorithm == PrefAlgorithm::Pfm).then_some(Transport {
            reference,
            steps: self.pfm_steps,
        })
    }
}

fn encode_prompts<D: Module + Denoiser>(
    model: &TextToImage<D>,
    prompts: &[String],
    device: &Device,
) -> Result<Condition> {
    let tok = Tokenizer::new();
    let rows = prompts
        .iter()
        .map(|p| encode_prompt(&tok, p))
        .collect::<Result<Vec<_>>>()?;
    Ok(model.encode(&rows, device)?)
}

/// PFM's evaluation images: the reference's samples of `prompts` (sample ids `ids`, noise seed
/// 0, as [`host_scores`] draws them), transported by [`pfm_transport`] along
/// `D_model − D_reference` and clamped to `[−1, 1]`, scored with ShapeEval.
#[allow(clippy::too_many_arguments)]
fn transported_scores<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    transport: Transport<'_, D>,
    config: &ShapesModelConfig,
    prompts: &[String],
    specs: &[&SceneSpec],
    ids: &[u64],
    options: SampleOptions,
    device: &Device,
) -> Result<Vec<(f64, bool)>> {
    let base = generate(
        transport.reference,
        config,
        prompts,
        ids,
        0,
        options,
        device,
    )?;
    let verifier = ShapeEval::default();
    let mut out = Vec::with_capacity(base.len());
    for ((images, chunk_prompts), chunk_specs) in base
        .chunks(64)
        .zip(prompts.chunks(64))
        .zip(specs.chunks(64))
    {
        let cond = encode_prompts(model, chunk_prompts, device)?;
        let reference_condition = encode_prompts(transport.reference, chunk_prompts, device)?;
        let flow = ResidualFlow {
            trainable: model,
            reference: transport.reference,
            reference_condition: &reference_condition,
        };
        let x = images_to_tensor(&images.iter().collect::<Vec<_>>(), device)?;
        let moved = pfm_transport(&flow, x, transport.steps, &cond)
            .map_err(|e| TrainError::config("pfm_steps", e.to_string()))?;
        for (im, spec) in tensor_to_images(moved.clamp(-1.0, 1.0))?
            .iter()
            .zip(chunk_specs)
        {
            let r = verifier.score(im, spec);
            out.push((r.partial_credit, r.pass));
        }
    }
    Ok(out)
}

/// Per-image ShapeEval partial credit and pass of one part of the evaluation set: of the
/// model's own samples, or for PFM of the reference's samples transported by the model.
fn part_scores<D: Module + ModuleDisplay + Denoiser>(
    model: &TextToImage<D>,
    config: &ShapesModelConfig,
    part: SplitPart,
    seeds: usize,
    steps: usize,
    transport: Option<Transport<'_, D>>,
    device: &Device,
) -> Result<Vec<(f64, bool)>> {
    let set = EvalSet::standard();
    let prompts_of_part = match part {
        SplitPart::Train => &set.train,
        SplitPart::HeldOut => &set.heldout,
    };
    let (prompts, ids, specs) = eval_requests(prompts_of_part, seeds);
    let options = SampleOptions {
        steps,
        guidance: 3.0,
    };
    if let Some(transport) = transport {
        return transported_scores(
            model, transport, config, &prompts, &specs, &ids, options, device,
        );
    }
    Ok(
        host_scores(model, config, &prompts, &specs, &ids, 0, options, device)?
            .into_iter()
            .map(|(_, p, pass)| (p, pass))
            .collect(),
    )
}

/// What the preference job reports (`report.json`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PrefReport {
    /// The loss.
    pub algorithm: String,
    /// Base model.
    pub model: String,
    /// Iterations run.
    pub iterations: usize,
    /// Training-part ShapeEval pass rate of the base (the column to tune on).
    pub base_train_accuracy: f64,
    /// Training-part pass rate after training.
    pub final_train_accuracy: f64,
    /// Held-out ShapeEval pass rate, base and final.
    pub base_heldout_accuracy: f64,
    /// Held-out pass rate after training.
    pub final_heldout_accuracy: f64,
    /// Held-out mean partial credit, base.
    pub base_heldout_partial_credit: f64,
    /// Held-out mean partial credit after training.
    pub final_heldout_partial_credit: f64,
    /// Gold win rate against the base on held-out images (ties count ½).
    pub heldout_win_rate: f64,
    /// 95 % bootstrap interval of the win rate.
    pub heldout_win_rate_ci: (f64, f64),
    /// Wall time of the run (evaluations included).
    pub wall_seconds: f64,
}

fn mean_of(v: &[(f64, bool)]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    (
        v.iter().filter(|x| x.1).count() as f64 / n,
        v.iter().map(|x| x.0).sum::<f64>() / n,
    )
}

fn train_pref_model<D: Module + Denoiser + ModuleDisplay>(
    base: TextToImage<D>,
    model_config: &ShapesModelConfig,
    config: &PrefConfig,
    resume: bool,
    observer: &SharedObserver,
    device: &Device,
) -> Result<PrefReport> {
    let started = Instant::now();
    let pairs = read_pairs(
        &config.data,
        model_config.image_size as u32,
        model_config.image_size as u32,
    )?;
    let labels = if matches!(config.algorithm, PrefAlgorithm::Kto | PrefAlgorithm::Rwr) {
        read_labels(
            &config.data,
            model_config.image_size as u32,
            model_config.image_size as u32,
        )?
    } else {
        Vec::new()
    };
    std::fs::create_dir_all(&config.out).map_err(|e| TrainError::io(&config.out, e))?;
    let runner = open_runner(config.runner.clone(), &config.out, resume)?;
    // The run keeps its own copy of a `lora_init` adapter, and records it.
    let mut config = config.clone();
    config.lora_init = crate::adapt::run_adapter(
        config.lora_init.as_deref(),
        &config.model,
        &config.out,
        resume,
    )?;
    let config = &config;
    crate::adapt::write_run_config(
        &config.for_the_record(),
        "align pref-train",
        &config.out,
        resume,
    )?;
    let inner = base.valid();
    let score = |m: &TextToImage<D>, part, transport| {
        part_scores(
            m,
            model_config,
            part,
            config.eval_seeds,
            config.eval_steps,
            transport,
            device,
        )
    };
    let base_train = score(&inner, SplitPart::Train, None)?;
    let base_scores = score(&inner, SplitPart::HeldOut, None)?;
    device.clone().autodiff().seed(config.seed);
    let (policy, reference) = crate::adapt::policy_and_reference(
        base,
        &crate::adapt::Adapters {
            finetune: config.finetune,
            lora: &config.lora,
            targets: None,
            init: config.lora_init.as_deref(),
            model_dir: &config.model,
        },
        false,
    )?;
    let mut job = PrefJob {
        config: config.clone(),
        pairs,
        labels,
        reference,
        schedule: if model_config.is_flow() {
            None
        } else {
            Some(model_config.noise_schedule()?)
        },
        model_config: model_config.clone(),
        observer: observer.clone(),
        devices: parse_devices(&config.devices, |d| d.clone().autodiff())?,
        replicas: None,
    };
    if job.devices.len() < 2 {
        job.devices.clear();
    }
    observer.start(config.runner.iterations, 0);
    let outcome = runner.run(policy, &mut job, resume)?;
    observer.finish();
    let trained = outcome.model.valid();
    let reference = job.reference.valid();
    let transport = config.transport(&reference);
    let final_train = score(&trained, SplitPart::Train, transport)?;
    let final_scores = score(&trained, SplitPart::HeldOut, transport)?;
    let (win, lo, hi) = win_rate(
        &final_scores.iter().map(|x| x.0).collect::<Vec<_>>(),
        &base_scores.iter().map(|x| x.0).collect::<Vec<_>>(),
    );
    let (b_acc, b_partial) = mean_of(&base_scores);
    let (f_acc, f_partial) = mean_of(&final_scores);
    let report = PrefReport {
        algorithm: format!("{:?}", config.algorithm),
        model: config.model.display().to_string(),
        iterations: outcome.iterations,
        base_train_accuracy: mean_of(&base_train).0,
        final_train_accuracy: mean_of(&final_train).0,
        base_heldout_accuracy: b_acc,
        final_heldout_accuracy: f_acc,
        base_heldout_partial_credit: b_partial,
        final_heldout_partial_credit: f_partial,
        heldout_win_rate: win,
        heldout_win_rate_ci: (lo, hi),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    write_report_json(&config.out, &report)?;
    Ok(report)
}

/// Runs the preference job of `config` on a Shapes model: held-out evaluation of the base,
/// LoRA training on the dataset in `config.data`, held-out evaluation after, the gold win rate
/// against the base, `report.json` in `config.out`.
///
/// # Errors
/// Bad configuration, data or model, an existing run without `resume`, run errors.
pub fn pref_train(
    config: &PrefConfig,
    resume: bool,
    observer: &SharedObserver,
    device: &Device,
) -> Result<PrefReport> {
    config.validate()?;
    // Data parallelism: the model lives on the first of `devices`.
    let home = parse_devices(&config.devices, Clone::clone)?
        .into_iter()
        .next()
        .unwrap_or_else(|| device.clone());
    let device = &home;
    let (model_config, model) = ShapesModel::load(&config.model, &device.clone().autodiff())?;
    if config.algorithm == PrefAlgorithm::Pfm && !model_config.is_flow() {
        return Err(TrainError::config(
            "model",
            format!(
                "{} is an ε-prediction model; PFM needs a flow (velocity) model",
                config.model.display()
            ),
        ));
    }
    match model {
        ShapesModel::Unet(m) => {
            train_pref_model(*m, &model_config, config, resume, observer, device)
        }
        ShapesModel::Dit(m) => {
            train_pref_model(*m, &model_config, config, resume, observer, device)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_models::{LoraConfig, apply_lora, with_lora_scale};

    /// The `[mapo]` and `[kto]` tables are align-pref's own configs: every field, the KTO
    /// reference point included, comes from TOML, and unknown fields are refused by name.
    #[test]
    fn preference_tables_are_the_library_configs() {
        let dir = std::env::temp_dir().join(format!("align-pref-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kto.toml");
        let head = "algorithm = \"kto\"\nmodel = \"m\"\ndata = \"d\"\nout = \"o\"\n";
        std::fs::write(
            &path,
            format!(
                "{head}[kto]\nbeta = 2.0\nreference_point = {{ fixed = 0.5 }}\n[mapo]\nsnr = 0.25\n"
            ),
        )
        .unwrap();
        let c = PrefConfig::from_file(&path).unwrap();
        assert_eq!(c.kto.beta, 2.0);
        assert_eq!(
            c.kto.reference_point,
            align_pref::ReferencePoint::Fixed(0.5)
        );
        assert_eq!(
            c.kto.desirable_weight,
            KtoConfig::default().desirable_weight
        );
        assert_eq!(
            (c.mapo.snr, c.mapo.beta),
            (0.25, MapoConfig::default().beta)
        );
        std::fs::write(&path, format!("{head}[mapo]\nsnr_value = 0.5\n")).unwrap();
        let err = PrefConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("kto.toml") && err.contains("snr_value"),
            "{err}"
        );
        std::fs::write(&path, "algorithm = \"kto\"\n").unwrap();
        let err = PrefConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("model:"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// AI-feedback data from the shipped UNet in `out`: 3 prompts × 2 candidates, 4 sampler
    /// steps, the first seed of 0..6 whose samples give a pair.
    fn small_preference_data(out: &Path, device: &Device) -> PrefDataSummary {
        (0..6)
            .find_map(|seed| {
                pref_data(
                    &PrefDataOptions {
                        model: crate::test_model_dir("shapes-unet"),
                        out: out.to_path_buf(),
                        prompts: 3,
                        candidates: 2,
                        seed,
                        sample: SampleOptions {
                            steps: 4,
                            guidance: 3.0,
                        },
                    },
                    device,
                )
                .ok()
            })
            .expect("some seed gives a pair")
    }

    /// AI-feedback data from the shipped UNet ([`small_preference_data`]), then
    /// a few steps of each loss on it; a DiT-free, CI-sized end-to-end check of the plumbing.
    #[test]
    fn pref_data_and_each_loss_run_end_to_end() {
        let device = align_core::test_device();
        let dir = std::env::temp_dir().join(format!("align-pref-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("data");
        let summary = small_preference_data(&data, &device);
        assert!(summary.pairs >= 1 && summary.labels == 6);
        for algorithm in [
            PrefAlgorithm::DiffusionDpo,
            PrefAlgorithm::Mapo,
            PrefAlgorithm::Kto,
            PrefAlgorithm::Dspo,
            PrefAlgorithm::Rwr,
        ] {
            let mut config = PrefConfig {
                algorithm,
                model: crate::test_model_dir("shapes-unet"),
                data: data.clone(),
                out: dir.join(format!("{algorithm:?}")),
                batch_size: 2,
                eval_steps: 2,
                // The periodic evaluation is on by default (every ⌈2 / 4⌉ = 1 step here);
                // one loss keeps it, the others turn it off.
                eval_every: (algorithm != PrefAlgorithm::DiffusionDpo).then_some(0),
                ..PrefConfig::default()
            };
            config.runner.iterations = 2;
            let report = pref_train(&config, false, &crate::observer::silent(), &device).unwrap();
            assert_eq!(report.iterations, 2);
            assert!((0.0..=1.0).contains(&report.heldout_win_rate));
            let text = std::fs::read_to_string(config.out.join("metrics.jsonl")).unwrap();
            for line in text.lines() {
                let row: serde_json::Value = serde_json::from_str(line).unwrap();
                assert!(row["loss"].as_f64().unwrap().is_finite(), "{line}");
                assert!(
                    row["grad_norm"].as_f64().unwrap() > 0.0,
                    "{algorithm:?}: {line}"
                );
                for field in ["eval_train_accuracy", "eval_heldout_accuracy"] {
                    match config.eval_every {
                        None => assert!(
                            (0.0..=1.0).contains(&row[field].as_f64().unwrap()),
                            "{line}"
                        ),
                        Some(_) => assert!(row.get(field).is_none(), "{line}"),
                    }
                }
            }
        }
        // `finetune = "full"`: KTO trains the convolutions LoRA leaves frozen (the first
        // kernel moves away from the base's, read from the checkpoint file).
        let mut config = PrefConfig {
            algorithm: PrefAlgorithm::Kto,
            model: crate::test_model_dir("shapes-unet"),
            data: data.clone(),
            out: dir.join("kto-full"),
            batch_size: 2,
            eval_steps: 2,
            eval_every: Some(0),
            finetune: Finetune::Full,
            ..PrefConfig::default()
        };
        config.runner.iterations = 1;
        config.runner.checkpoint_every = 1;
        pref_train(&config, false, &crate::observer::silent(), &device).unwrap();
        let base = crate::safetensors_f32(
            &config.model.join("model.safetensors"),
            "denoiser.conv_in.weight",
        );
        let trained = crate::burnpack_f32(
            &config.out.join("checkpoint-000001/model.bpk"),
            "conv_in.weight",
        );
        assert_eq!(base.len(), trained.len());
        assert!(base.iter().zip(&trained).any(|(a, b)| a != b));
        // PFM on the shipped flow UNet, on the same pairs (images are images): it trains (a
        // gradient on the LoRA copy) and evaluates by transport; an ε model is refused by name.
        let mut config = PrefConfig {
            algorithm: PrefAlgorithm::Pfm,
            model: crate::test_model_dir("shapes-flow-unet"),
            data: data.clone(),
            out: dir.join("pfm"),
            batch_size: 2,
            eval_steps: 2,
            pfm_steps: 2,
            ..PrefConfig::default()
        };
        config.runner.iterations = 2;
        let report = pref_train(&config, false, &crate::observer::silent(), &device).unwrap();
        assert_eq!(report.iterations, 2);
        let text = std::fs::read_to_string(config.out.join("metrics.jsonl")).unwrap();
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(row["loss"].as_f64().unwrap().is_finite(), "{line}");
            assert!(row["grad_norm"].as_f64().unwrap() > 0.0, "PFM: {line}");
            assert!(row["eval_heldout_accuracy"].as_f64().is_some(), "{line}");
        }
        config.model = crate::test_model_dir("shapes-unet");
        config.out = dir.join("pfm-eps");
        let err = pref_train(&config, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model") && err.contains("flow"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// At initialisation (LoRA `B = 0`) the preference flow `D_LoRA − D_base` is exactly zero,
    /// so PFM's evaluation — base samples transported along it — scores every image exactly as
    /// the base model's own samples do. Checks that the transport path draws the same base
    /// samples (ids, seed, steps) as the ordinary evaluation and changes nothing by itself.
    #[test]
    fn pfm_evaluation_at_initialisation_is_the_base_evaluation() {
        let device = align_core::test_device();
        let dir = crate::test_model_dir("shapes-flow-unet");
        let (model_config, model) = ShapesModel::load(&dir, &device.clone().autodiff()).unwrap();
        let ShapesModel::Unet(base) = model else {
            panic!("the shipped flow model is a UNet")
        };
        let policy = apply_lora(*base, &LoraConfig::new().with_rank(4).with_alpha(4.0)).unwrap();
        let reference = with_lora_scale(policy.clone(), 0.0).no_grad().valid();
        let policy = policy.valid();
        let config = PrefConfig {
            algorithm: PrefAlgorithm::Pfm,
            pfm_steps: 3,
            ..PrefConfig::default()
        };
        let part = SplitPart::HeldOut;
        let own = part_scores(&reference, &model_config, part, 1, 2, None, &device).unwrap();
        let moved = part_scores(
            &policy,
            &model_config,
            part,
            1,
            2,
            config.transport(&reference),
            &device,
        )
        .unwrap();
        assert_eq!(own.len(), 64);
        assert_eq!(own, moved);
        let other = PrefConfig::default();
        assert!(other.transport(&reference).is_none());
        let bad = PrefConfig {
            pfm_steps: 0,
            model: "m".into(),
            data: "d".into(),
            out: "o".into(),
            ..PrefConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("pfm_steps")
        );
    }

    /// One Diffusion-DPO step with `devices = [flex, ndarray]` (and `[flex, flex]`) against one
    /// flex device: the loss, its gradient norm and the trained weights agree to f32
    /// tolerance (AdamW ε = 1e-3, as in the online test: with the default ε an entry whose
    /// gradient is rounding noise moves by ±lr whatever its size); KTO, whose reference
    /// point is a batch statistic, is refused by name.
    #[test]
    fn diffusion_dpo_on_two_devices_takes_the_one_device_step() {
        let flex = align_core::select_device(Some("flex")).expect("flex");
        let dir = std::env::temp_dir().join(format!("align-pref-dp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("data");
        small_preference_data(&data, &flex);
        let run = |name: &str, devices: &[&str]| {
            let mut config = PrefConfig {
                model: crate::test_model_dir("shapes-unet"),
                data: data.clone(),
                out: dir.join(name),
                batch_size: 5,
                eval_steps: 2,
                eval_every: Some(0),
                devices: devices.iter().map(|d| d.to_string()).collect(),
                ..PrefConfig::default()
            };
            config.runner.iterations = 1;
            config.runner.learning_rate = 1e-3;
            config.runner.adam_eps = 1e-3;
            pref_train(&config, false, &crate::observer::silent(), &flex).expect("pref-train");
            let row: serde_json::Value = serde_json::from_str(
                std::fs::read_to_string(config.out.join("metrics.jsonl"))
                    .expect("metrics")
                    .trim(),
            )
            .expect("json");
            (row, crate::first_checkpoint_weights(&config.out))
        };
        let (one, w1) = run("one", &[]);
        assert!(one["grad_norm"].as_f64().expect("grad_norm") > 0.0);
        // Measured: weights 4.9e-9 apart (flex+flex) and 4.4e-7 (flex+ndarray).
        for (name, devices, tolerance) in [
            ("mixed", ["flex", "ndarray"], 1e-6),
            ("same", ["flex", "flex"], 1e-6),
        ] {
            let (row, w) = run(name, &devices);
            for key in ["loss", "grad_norm", "implicit_accuracy"] {
                let (a, b) = (row[key].as_f64().expect(key), one[key].as_f64().expect(key));
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                    "{name} {key}: {a} vs {b}"
                );
            }
            let d = crate::max_weight_difference(&w, &w1);
            assert!(d < tolerance, "{name}: weights differ by {d}");
        }
        let kto = PrefConfig {
            algorithm: PrefAlgorithm::Kto,
            model: crate::test_model_dir("shapes-unet"),
            data: data.clone(),
            out: dir.join("kto"),
            devices: vec!["flex".into(), "ndarray".into()],
            ..PrefConfig::default()
        };
        let err = kto.validate().unwrap_err().to_string();
        assert!(err.contains("devices"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
