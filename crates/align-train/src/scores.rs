//! Rewards as a training iteration uses them: every score checked before it can reach an
//! update.
//!
//! [`align_rewards::Reward`] asks implementations to reject NaN and infinite scores, but a
//! reward a user wrote, a reward server or a learned model may not. A run must never apply an
//! update computed from such a score: [`checked_scores`] and [`checked_differentiable`] stop
//! the iteration — before any optimizer step, so the runner writes nothing and the last
//! checkpoint stays intact — with an error naming the iteration, the reward, the sample and
//! its prompt.

use align_core::CoreError;
use align_rewards::{Reward, RewardError};
use burn::tensor::Tensor;

/// Why an iteration stopped on a score: iteration (1-based), reward, sample and prompt.
fn bad_score(
    reward: &str,
    iteration: usize,
    prompts: &[String],
    index: usize,
    value: f64,
) -> String {
    format!(
        "iteration {}: reward `{reward}` scored sample {index} (prompt {:?}) {value}; the \
         iteration stopped before any update and the last checkpoint is intact",
        iteration + 1,
        prompts.get(index).map_or("?", String::as_str)
    )
}

/// The first non-finite score, as the error [`checked_scores`] gives.
fn check(reward: &str, iteration: usize, prompts: &[String], scores: &[f64]) -> Result<(), String> {
    if scores.len() != prompts.len() {
        return Err(format!(
            "iteration {}: reward `{reward}` returned {} scores for {} samples; the iteration \
             stopped before any update and the last checkpoint is intact",
            iteration + 1,
            scores.len(),
            prompts.len()
        ));
    }
    match scores.iter().position(|s| !s.is_finite()) {
        Some(i) => Err(bad_score(reward, iteration, prompts, i, scores[i])),
        None => Ok(()),
    }
}

/// `reward`'s scores of `images` (one per prompt) in iteration `iteration` (0-based), each
/// checked finite.
///
/// # Errors
/// [`CoreError::Job`] naming the iteration, the reward and — for a NaN or infinite score,
/// whether the reward reported it or not — the sample and its prompt; a reward failure (a
/// server that answered garbage) with the reward's own message.
pub fn checked_scores(
    reward: &dyn Reward,
    images: &Tensor<4>,
    prompts: &[String],
    iteration: usize,
) -> Result<Vec<f64>, CoreError> {
    let name = reward.name().to_string();
    let scores = reward.score(images, prompts).map_err(|e| match &e {
        RewardError::NonFinite {
            index, value, what, ..
        } if what == "score" => {
            CoreError::Job(bad_score(&name, iteration, prompts, *index, *value))
        }
        _ => CoreError::Job(format!(
            "iteration {}: reward `{name}` failed: {e}; the iteration stopped before any update \
             and the last checkpoint is intact",
            iteration + 1
        )),
    })?;
    check(&name, iteration, prompts, &scores).map_err(CoreError::Job)?;
    Ok(scores)
}

/// `reward`'s differentiable scores of `images` (`[B]`, with gradients to the pixels), each
/// value checked finite as in [`checked_scores`] (the values are read back; the graph is
/// untouched).
///
/// # Errors
/// As [`checked_scores`], as a message; also a reward that is not differentiable.
pub fn checked_differentiable(
    reward: &dyn Reward,
    images: Tensor<4>,
    prompts: &[String],
    iteration: usize,
) -> Result<Tensor<1>, String> {
    let name = reward.name().to_string();
    let scores = match reward.score_differentiable(images, prompts) {
        Some(Ok(t)) => t,
        Some(Err(RewardError::NonFinite {
            index, value, what, ..
        })) if what == "score" => {
            return Err(bad_score(&name, iteration, prompts, index, value));
        }
        Some(Err(e)) => {
            return Err(format!(
                "iteration {}: reward `{name}` failed: {e}",
                iteration + 1
            ));
        }
        None => return Err(format!("{name} is not differentiable")),
    };
    let values: Vec<f64> = scores
        .clone()
        .detach()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("reading the scores of `{name}`: {e:?}"))?
        .into_iter()
        .map(f64::from)
        .collect();
    check(&name, iteration, prompts, &values)?;
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use align_rewards::reward_fn;

    fn prompts() -> Vec<String> {
        ["a red circle", "a blue square", "two green stars"]
            .map(String::from)
            .to_vec()
    }

    /// A reward that returns the first pixel of each image, unchecked: whatever the images
    /// hold reaches the caller.
    struct FirstPixel;

    impl Reward for FirstPixel {
        fn name(&self) -> &str {
            "first_pixel"
        }
        fn scale(&self) -> &str {
            "any"
        }
        fn score(
            &self,
            images: &Tensor<4>,
            _prompts: &[String],
        ) -> align_rewards::Result<Vec<f64>> {
            let [b, ..] = images.dims();
            let v = images.clone().into_data().try_to_vec::<f32>().unwrap();
            let per = v.len() / b;
            Ok((0..b).map(|i| f64::from(v[i * per])).collect())
        }
        fn score_differentiable(
            &self,
            images: Tensor<4>,
            _prompts: &[String],
        ) -> Option<align_rewards::Result<Tensor<1>>> {
            let [b, ..] = images.dims();
            Some(Ok(images
                .flatten::<2>(1, 3)
                .slice([0..b, 0..1])
                .reshape([b])))
        }
    }

    fn images(values: [f32; 3]) -> Tensor<4> {
        let device = align_core::test_device();
        Tensor::<1>::from_floats(values, &device)
            .reshape([3, 1, 1, 1])
            .repeat_dim(1, 3)
    }

    #[test]
    fn an_unchecked_nan_or_infinite_score_names_the_iteration_sample_and_prompt() {
        for (bad, text) in [
            (f32::NAN, "NaN"),
            (f32::INFINITY, "inf"),
            (f32::NEG_INFINITY, "-inf"),
        ] {
            let x = images([0.5, bad, -0.25]);
            let err = checked_scores(&FirstPixel, &x, &prompts(), 6)
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!(
                    "iteration 7: reward `first_pixel` scored sample 1 (prompt \"a blue square\") \
                     {text}; the iteration stopped before any update and the last checkpoint is intact"
                )
            );
            let err = checked_differentiable(&FirstPixel, x, &prompts(), 6).unwrap_err();
            assert!(
                err.starts_with(
                    "iteration 7: reward `first_pixel` scored sample 1 (prompt \"a blue square\")"
                ),
                "{err}"
            );
        }
        let ok = checked_scores(&FirstPixel, &images([0.5, 0.0, -0.25]), &prompts(), 0).unwrap();
        assert_eq!(ok, vec![0.5, 0.0, -0.25]);
    }

    /// A reward that returns one score whatever the batch.
    struct One;

    impl Reward for One {
        fn name(&self) -> &str {
            "one"
        }
        fn scale(&self) -> &str {
            "any"
        }
        fn score(&self, _: &Tensor<4>, _: &[String]) -> align_rewards::Result<Vec<f64>> {
            Ok(vec![1.0])
        }
    }

    #[test]
    fn a_reward_that_checks_itself_is_reported_the_same_way_and_short_answers_are_refused() {
        let checked = reward_fn("checked", "any", |x: Tensor<4>, _: &[String]| {
            let [b, ..] = x.dims();
            x.flatten::<2>(1, 3).slice([0..b, 0..1]).reshape([b])
        });
        let err = checked_scores(&checked, &images([f32::NAN, 0.0, 0.0]), &prompts(), 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "iteration 1: reward `checked` scored sample 0 (prompt \"a red circle\") NaN"
            ),
            "{err}"
        );
        let err = checked_scores(&One, &images([0.0; 3]), &prompts(), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("returned 1 scores for 3 samples"), "{err}");
    }
}
