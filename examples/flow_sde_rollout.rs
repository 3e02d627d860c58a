//! Roll out the Flow-GRPO SDE on a model with a known answer, inspect the trajectory's
//! log-probs, turn rewards into GRPO advantages and re-score a transition exactly.
//!
//! ```text
//! cargo run -p align-examples --example flow_sde_rollout [-- --device wgpu-cpu]
//! ```

use align_core::{Condition, GroupStd, group_advantages, select_device};
use align_samplers::toy::GaussianFlowField;
use align_samplers::{FlowGrid, FlowSdeSampler, RolloutBatch, RolloutConfig, rescore, rollout};
use burn::tensor::Tensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    align_core::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let choice = args
        .iter()
        .position(|a| a == "--device")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let device = select_device(choice)?;

    // Data x₀ ~ N(1, 0.2²) in a 1×4×4 "image"; its exact velocity field is the model.
    let model = GaussianFlowField::new(vec![1.0], vec![0.2]);
    let sampler = FlowSdeSampler::new(FlowGrid::new(10, 1.0)?, 0.7)?;

    // Two prompts × four samples each, as GRPO groups.
    let b = 8;
    let cond = Condition::new(Tensor::zeros([b, 1, 1], &device));
    let batch = RolloutBatch {
        condition: &cond,
        uncond: None,
        sample_ids: (0..b as u64).collect(),
        condition_ids: vec![0, 0, 0, 0, 1, 1, 1, 1],
        group_ids: None,
        sample_shape: [1, 4, 4],
    };
    let config = RolloutConfig {
        seed: 7,
        keep_means: true,
        ..RolloutConfig::default()
    };
    let traj = rollout(&model, &sampler, &batch, &config)?;
    println!(
        "rolled out {} samples × {} steps; stochastic steps: {:?}",
        traj.batch_size(),
        traj.num_steps(),
        traj.stochastic_steps()
    );
    let lp0 = traj.log_probs[0].clone().ok_or("step 0 is stochastic")?;
    println!(
        "log p(x_1 | x_0), mean-reduced: {:?}",
        lp0.into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?
    );

    // A reward: closeness of each image's mean pixel to 1.2.
    let finals = traj
        .final_sample()
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    let rewards: Vec<f64> = finals
        .chunks(16)
        .map(|px| -((px.iter().sum::<f32>() / 16.0 - 1.2) as f64).abs())
        .collect();
    let adv = group_advantages(&rewards, &traj.group_ids, GroupStd::Group, 1e-4)?;
    println!("rewards    {rewards:.3?}");
    println!("advantages {adv:.3?}");

    // Re-scoring a stored transition under unchanged parameters reproduces its log-prob.
    let again = rescore(&model, &sampler, &traj, 3, &cond, None)?
        .log_prob
        .ok_or("step 3 is stochastic")?;
    let stored = traj.log_probs[3].clone().ok_or("step 3 is stochastic")?;
    println!(
        "re-scored step 3 bit-identical: {}",
        again.into_data() == stored.into_data()
    );
    Ok(())
}
