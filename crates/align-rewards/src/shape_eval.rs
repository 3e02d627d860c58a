//! [`ShapeEvalReward`]: the gold reward of the Shapes world.
//!
//! Each prompt is parsed into a [`SceneSpec`] and the image is read back by the exact
//! verifier [`ShapeEval`]. With `k` groups in the prompt,
//!
//! - [`ShapeEvalMode::Pass`]: `r = 1` if every group is found with its exact count and there
//!   is no extra object, else `r = 0`;
//! - [`ShapeEvalMode::PartialCredit`]: `r = (Σ_g [colour present] + [shape found] + [count
//!   right] + [no extra object]) / (3k + 1)`, in `[0, 1]`.
//!
//! Not differentiable (the verifier thresholds pixels).

use align_data::{SceneSpec, ShapeEval};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RewardError};
use crate::reward::{Reward, check_batch, check_finite, tensor_to_images};

/// Which number [`ShapeEvalReward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShapeEvalMode {
    /// `1.0` if the image passes ShapeEval for its prompt, else `0.0`.
    Pass,
    /// The fraction of prompt attributes that are right, in `[0, 1]`.
    PartialCredit,
}

/// ShapeEval as a reward: images are scored against the scene their prompt describes.
#[derive(Debug, Clone)]
pub struct ShapeEvalReward {
    mode: ShapeEvalMode,
    eval: ShapeEval,
}

impl ShapeEvalReward {
    /// A ShapeEval reward with the default verifier configuration.
    pub fn new(mode: ShapeEvalMode) -> Self {
        Self {
            mode,
            eval: ShapeEval::default(),
        }
    }

    /// A ShapeEval reward with a custom verifier.
    pub fn with_eval(mode: ShapeEvalMode, eval: ShapeEval) -> Self {
        Self { mode, eval }
    }

    /// The scoring mode.
    pub fn mode(&self) -> ShapeEvalMode {
        self.mode
    }

    /// Parses every prompt into a scene.
    ///
    /// # Errors
    /// [`RewardError::Prompt`] naming the first prompt that does not parse.
    pub fn parse_prompts(&self, prompts: &[String]) -> Result<Vec<SceneSpec>> {
        prompts
            .iter()
            .enumerate()
            .map(|(index, prompt)| {
                prompt
                    .parse::<SceneSpec>()
                    .map_err(|source| RewardError::Prompt {
                        reward: self.name().to_string(),
                        index,
                        prompt: prompt.clone(),
                        source: Box::new(source),
                    })
            })
            .collect()
    }
}

impl Reward for ShapeEvalReward {
    fn name(&self) -> &str {
        match self.mode {
            ShapeEvalMode::Pass => "shape_eval_pass",
            ShapeEvalMode::PartialCredit => "shape_eval_partial",
        }
    }

    fn scale(&self) -> &str {
        match self.mode {
            ShapeEvalMode::Pass => "{0, 1}",
            ShapeEvalMode::PartialCredit => "[0, 1]",
        }
    }

    fn score(&self, images: &Tensor<4>, prompts: &[String]) -> Result<Vec<f64>> {
        check_batch(self.name(), images, prompts)?;
        let specs = self.parse_prompts(prompts)?;
        let images = tensor_to_images(images)?;
        let scores: Vec<f64> = images
            .iter()
            .zip(&specs)
            .map(|(image, spec)| {
                let result = self.eval.score(image, spec);
                match self.mode {
                    ShapeEvalMode::Pass => f64::from(u8::from(result.pass)),
                    ShapeEvalMode::PartialCredit => result.partial_credit,
                }
            })
            .collect();
        check_finite(self.name(), &scores)?;
        Ok(scores)
    }
}
