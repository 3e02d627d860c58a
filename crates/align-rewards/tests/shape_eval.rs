//! The ShapeEval reward on rendered ground-truth scenes.
#![allow(clippy::unwrap_used)]

use align_data::{SceneSpec, WorldConfig, render_seeded};
use align_rewards::{Reward, RewardError, ShapeEvalMode, ShapeEvalReward, images_to_tensor};
use burn::prelude::*;

const PROMPT: &str = "two blue squares and one yellow triangle";

fn scene_batch() -> Tensor<4> {
    let spec: SceneSpec = PROMPT.parse().unwrap();
    let a = render_seeded(&spec, &WorldConfig::default(), 42).unwrap();
    let b = render_seeded(&spec, &WorldConfig::default(), 43).unwrap();
    images_to_tensor(&[a.image, b.image], &align_core::test_device()).unwrap()
}

#[test]
fn ground_truth_scenes_score_one_for_their_prompt() {
    let x = scene_batch();
    let prompts = vec![PROMPT.to_string(); 2];
    for mode in [ShapeEvalMode::Pass, ShapeEvalMode::PartialCredit] {
        let s = ShapeEvalReward::new(mode).score(&x, &prompts).unwrap();
        assert_eq!(s, vec![1.0, 1.0], "{mode:?}");
    }
}

#[test]
fn a_different_prompt_earns_less() {
    let x = scene_batch();
    let prompts = vec!["one red circle".to_string(), PROMPT.to_string()];
    let partial = ShapeEvalReward::new(ShapeEvalMode::PartialCredit)
        .score(&x, &prompts)
        .unwrap();
    assert!(partial[0] < 1.0 && partial[0] >= 0.0, "{partial:?}");
    assert_eq!(partial[1], 1.0);
    let pass = ShapeEvalReward::new(ShapeEvalMode::Pass)
        .score(&x, &prompts)
        .unwrap();
    assert_eq!(pass, vec![0.0, 1.0]);
}

#[test]
fn a_bad_prompt_is_a_typed_error_naming_it() {
    let x = scene_batch();
    let prompts = vec![PROMPT.to_string(), "three purple hexagons".to_string()];
    let err = ShapeEvalReward::new(ShapeEvalMode::Pass)
        .score(&x, &prompts)
        .unwrap_err();
    match &err {
        RewardError::Prompt { index, prompt, .. } => {
            assert_eq!(*index, 1);
            assert_eq!(prompt, "three purple hexagons");
        }
        other => panic!("expected a prompt error, got {other:?}"),
    }
    assert!(err.to_string().contains("three purple hexagons"));
}

#[test]
fn shape_eval_is_not_differentiable() {
    let x = scene_batch();
    let prompts = vec![PROMPT.to_string(); 2];
    assert!(
        ShapeEvalReward::new(ShapeEvalMode::Pass)
            .score_differentiable(x, &prompts)
            .is_none()
    );
}
