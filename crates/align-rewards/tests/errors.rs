//! Every reward rejects a prompt count that differs from the batch and a channel count ≠ 3.
#![allow(clippy::unwrap_used)]

use align_rewards::{
    Aggregate, Brightness, Contrast, Ensemble, Jpeg, Normalize, Reward, RewardError, Saturation,
    ShapeEvalMode, ShapeEvalReward,
};
use burn::prelude::*;

fn rewards() -> Vec<Box<dyn Reward>> {
    vec![
        Box::new(ShapeEvalReward::new(ShapeEvalMode::Pass)),
        Box::new(ShapeEvalReward::new(ShapeEvalMode::PartialCredit)),
        Box::new(Jpeg::compressibility()),
        Box::new(Jpeg::incompressibility()),
        Box::new(Brightness),
        Box::new(Saturation),
        Box::new(Contrast),
        Box::new(
            Ensemble::new(Normalize::batch_z(), Aggregate::MeanMinusKStd(1.0))
                .unwrap()
                .member(Brightness, 1.0)
                .unwrap()
                .penalty(Jpeg::incompressibility(), 0.1)
                .unwrap(),
        ),
    ]
}

const PROMPT: &str = "one red circle";

#[test]
fn prompt_count_must_match_the_batch() {
    let x = Tensor::<4>::zeros([2, 3, 8, 8], &align_core::test_device());
    let prompts = vec![PROMPT.to_string(); 3];
    for r in rewards() {
        let err = r.score(&x, &prompts).unwrap_err();
        assert!(
            matches!(
                err,
                RewardError::PromptCount {
                    batch: 2,
                    prompts: 3,
                    ..
                }
            ),
            "{}: {err}",
            r.name()
        );
        if let Some(result) = r.score_differentiable(x.clone(), &prompts) {
            assert!(matches!(result, Err(RewardError::PromptCount { .. })));
        }
    }
}

#[test]
fn images_must_have_three_channels() {
    let x = Tensor::<4>::zeros([2, 4, 8, 8], &align_core::test_device());
    let prompts = vec![PROMPT.to_string(); 2];
    for r in rewards() {
        let err = r.score(&x, &prompts).unwrap_err();
        assert!(
            matches!(err, RewardError::Shape { .. }),
            "{}: {err}",
            r.name()
        );
        if let Some(result) = r.score_differentiable(x.clone(), &prompts) {
            assert!(matches!(result, Err(RewardError::Shape { .. })));
        }
    }
}

#[test]
fn valid_batches_score_finite_values_everywhere() {
    let x = Tensor::<4>::zeros([2, 3, 8, 8], &align_core::test_device());
    let prompts = vec![PROMPT.to_string(); 2];
    for r in rewards() {
        let s = r.score(&x, &prompts).unwrap();
        assert_eq!(s.len(), 2, "{}", r.name());
        assert!(s.iter().all(|v| v.is_finite()), "{}: {s:?}", r.name());
        assert!(!r.scale().is_empty());
    }
}

#[test]
fn non_finite_images_give_non_finite_errors_not_nan_scores() {
    let x = Tensor::<4>::zeros([1, 3, 4, 4], &align_core::test_device()).add_scalar(f32::NAN);
    let prompts = vec![PROMPT.to_string()];
    for r in [&Brightness as &dyn Reward, &Saturation, &Contrast] {
        assert!(matches!(
            r.score(&x, &prompts),
            Err(RewardError::NonFinite { .. })
        ));
    }
}
