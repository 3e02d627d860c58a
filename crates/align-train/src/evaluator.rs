//! What an online run measures: the base model once, the policy every `eval_every`
//! iterations, the trained weights at the end, and the report.
//!
//! [`Evaluator`] is the hook; [`RewardEvaluator`] serves any [`Pipeline`] (the mean of a reward
//! over evaluation prompts × seeds, deterministic samples, image grids), and the Shapes models
//! use the exact ShapeEval evaluator of [`crate::online`] (accuracies, win rate, diversity and
//! the reward-hacking monitor).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use align_core::{Control, Metrics};
use align_models::Pipeline;
use align_rewards::Reward;
use align_samplers::{RolloutBatch, RolloutConfig, Sampler, rollout};

use crate::error::{Result, TrainError};
use crate::images::{tensor_to_images, write_atomically, write_grid};
use crate::observer::SharedObserver;
use crate::report::{EvalReward, Report, write_reward_report};

/// Measures a run's pipeline `P`.
pub trait Evaluator<P> {
    /// Measures the base model (before adapters) once per run directory: a resumed run
    /// (`resume`) reads back what the first start saved in `out`.
    ///
    /// # Errors
    /// A failing evaluation or an unwritable `out`.
    fn base(&mut self, base: &P, out: &Path, resume: bool, observer: &SharedObserver)
    -> Result<()>;

    /// After iteration `iteration` (0-based) with the policy and, when the runner keeps one,
    /// its weight average: evaluate every `eval_every` iterations, add metrics, maybe stop.
    ///
    /// # Errors
    /// A failing evaluation.
    fn periodic(
        &mut self,
        model: &P,
        iteration: usize,
        metrics: &mut Metrics,
        observer: &SharedObserver,
    ) -> Result<Control>;

    /// Measures the trained weights and fills `report` (the job has set the run's fields:
    /// iterations, stop reason, last KL and reward); writes any final grid into `out`.
    ///
    /// # Errors
    /// A failing evaluation or an unwritable `out`.
    fn finish(&mut self, trained: &P, report: &mut Report, out: &Path) -> Result<()>;

    /// Writes `report.json` and `report.md` into `out`.
    ///
    /// # Errors
    /// An unwritable `out`.
    fn write_report(&self, report: &Report, out: &Path) -> Result<()>;

    /// Resumable state (e.g. the hacking monitor's history); `Null` when there is none.
    ///
    /// # Errors
    /// State that cannot be serialised.
    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Restores [`Evaluator::state`].
    ///
    /// # Errors
    /// State that does not belong to this evaluator.
    fn restore(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// A reward shared between the training job and an evaluator (one loaded model, two users).
#[derive(Clone)]
pub struct SharedReward(Arc<dyn Reward>);

impl SharedReward {
    /// Shares `reward`.
    pub fn new(reward: Box<dyn Reward>) -> Self {
        Self(Arc::from(reward))
    }
}

impl Reward for SharedReward {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn scale(&self) -> &str {
        self.0.scale()
    }
    fn score(
        &self,
        images: &burn::tensor::Tensor<4>,
        prompts: &[String],
    ) -> align_rewards::Result<Vec<f64>> {
        self.0.score(images, prompts)
    }
    fn score_differentiable(
        &self,
        images: burn::tensor::Tensor<4>,
        prompts: &[String],
    ) -> Option<align_rewards::Result<burn::tensor::Tensor<1>>> {
        self.0.score_differentiable(images, prompts)
    }
}

/// The mean of a reward over `prompts` × `seeds` deterministic samples (seed `s` draws the
/// initial noise of evaluation `s`), with a grid of the images (rows: seeds; columns: prompts):
/// `grid-before.png`, `grid-iteration-NNNNNN.png` every `every` iterations (metric
/// `eval_reward_mean`), `grid-after.png`.
pub struct RewardEvaluator {
    /// The reward measured (usually the training reward).
    pub reward: Box<dyn Reward>,
    /// Its name in the report.
    pub reward_name: String,
    /// Evaluation prompts.
    pub prompts: Vec<String>,
    /// Seeds per prompt.
    pub seeds: usize,
    /// The evaluation sampler (deterministic: DDIM η = 0, flow Euler).
    pub sampler: Box<dyn Sampler + Send + Sync>,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// The shape of one sample.
    pub sample_shape: [usize; 3],
    /// Evaluate every this many iterations (0 = before and after only).
    pub every: usize,
    /// Where the grids go.
    pub out: PathBuf,
    /// Prompts rolled out, decoded and scored per call (0 = all at once; a run's
    /// `rollout_batch`). The samples do not depend on it (noise is keyed by sample id).
    pub batch: usize,
    base: Option<f64>,
}

impl RewardEvaluator {
    /// An evaluator writing its grids into `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reward: Box<dyn Reward>,
        reward_name: impl Into<String>,
        prompts: Vec<String>,
        seeds: usize,
        sampler: Box<dyn Sampler + Send + Sync>,
        guidance: f64,
        sample_shape: [usize; 3],
        every: usize,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            reward,
            reward_name: reward_name.into(),
            prompts,
            seeds,
            sampler,
            guidance,
            sample_shape,
            every,
            out: out.into(),
            batch: 0,
            base: None,
        }
    }

    /// Rolls out, decodes and scores at most `batch` prompts per call (0 = all at once).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// An evaluator of `reward` on `prompts` with the run's settings: `eval_seeds` seeds,
    /// `guidance`, every `eval_every` iterations, grids into `out`.
    pub fn for_config(
        reward: Box<dyn Reward>,
        prompts: Vec<String>,
        sampler: Box<dyn Sampler + Send + Sync>,
        sample_shape: [usize; 3],
        config: &crate::TrainConfig,
    ) -> Self {
        let name = reward.name().to_string();
        Self::new(
            reward,
            name,
            prompts,
            config.eval_seeds,
            sampler,
            config.guidance,
            sample_shape,
            config.eval_interval(),
            &config.out,
        )
    }

    /// The mean reward of `model`'s samples and the images.
    ///
    /// # Errors
    /// No prompts or seeds, sampling or scoring failures.
    pub fn measure<P: Pipeline>(&self, model: &P) -> Result<(f64, Vec<align_data::Image>)> {
        if self.prompts.is_empty() || self.seeds == 0 {
            return Err(TrainError::config(
                "eval_prompts",
                "the evaluation needs at least one prompt and one seed",
            ));
        }
        let mut all = Vec::new();
        let mut scores = Vec::new();
        let n = self.prompts.len();
        let chunk = if self.batch == 0 {
            n
        } else {
            self.batch.min(n)
        };
        for seed in 0..self.seeds {
            for start in (0..n).step_by(chunk.max(1)) {
                let range = start..(start + chunk).min(n);
                let prompts = &self.prompts[range.clone()];
                let (cond, uncond) = model.prompt_conditions(prompts)?;
                let traj = rollout(
                    model,
                    self.sampler.as_ref(),
                    &RolloutBatch {
                        condition: &cond,
                        uncond: Some(&uncond),
                        sample_ids: range.clone().map(|i| i as u64).collect(),
                        condition_ids: range.clone().collect(),
                        group_ids: None,
                        sample_shape: self.sample_shape,
                    },
                    &RolloutConfig {
                        seed: 0x6576_616c + seed as u64,
                        guidance_scale: self.guidance,
                        ..RolloutConfig::default()
                    },
                )
                .map_err(|e| {
                    TrainError::config("eval_steps", format!("evaluation sampling: {e}"))
                })?;
                let images = model
                    .sample_images(traj.final_sample().clone())
                    .clamp(-1.0, 1.0);
                scores.extend(self.reward.score(&images, prompts)?);
                all.extend(tensor_to_images(images)?);
            }
        }
        Ok((scores.iter().sum::<f64>() / scores.len() as f64, all))
    }
}

impl<P: Pipeline> Evaluator<P> for RewardEvaluator {
    fn base(
        &mut self,
        base: &P,
        out: &Path,
        resume: bool,
        observer: &SharedObserver,
    ) -> Result<()> {
        let path = out.join("base.json");
        let saved: Option<f64> = if resume {
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
        } else {
            None
        };
        let value = match saved {
            Some(b) => b,
            None => {
                let (b, images) = self.measure(&base.clone().no_grad())?;
                write_grid(&images, self.prompts.len(), &out.join("grid-before.png"))?;
                write_atomically(&path, &b.to_string())?;
                b
            }
        };
        observer.say(&format!(
            "base: mean {} reward {value:.4}",
            self.reward_name
        ));
        self.base = Some(value);
        Ok(())
    }

    fn periodic(
        &mut self,
        model: &P,
        iteration: usize,
        metrics: &mut Metrics,
        observer: &SharedObserver,
    ) -> Result<Control> {
        if self.every == 0 || !(iteration + 1).is_multiple_of(self.every) {
            return Ok(Control::Continue);
        }
        let (mean, images) = self.measure(&model.valid())?;
        write_grid(
            &images,
            self.prompts.len(),
            &self
                .out
                .join(format!("grid-iteration-{:06}.png", iteration + 1)),
        )?;
        metrics.insert("eval_reward_mean".into(), mean);
        observer.say(&format!(
            "iteration {}: mean {} reward {mean:.4} on the evaluation prompts",
            iteration + 1,
            self.reward_name
        ));
        Ok(Control::Continue)
    }

    fn finish(&mut self, trained: &P, report: &mut Report, out: &Path) -> Result<()> {
        let (final_reward, images) = self.measure(trained)?;
        write_grid(&images, self.prompts.len(), &out.join("grid-after.png"))?;
        let eval = EvalReward {
            reward: self.reward_name.clone(),
            base: self.base.unwrap_or(f64::NAN),
            final_: final_reward,
        };
        report.eval_reward = Some(eval);
        Ok(())
    }

    fn write_report(&self, report: &Report, out: &Path) -> Result<()> {
        match &report.eval_reward {
            Some(eval) => write_reward_report(out, report, eval),
            None => Err(TrainError::config(
                "report",
                "the final evaluation has not run",
            )),
        }
    }
}
