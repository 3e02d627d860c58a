//! Flow-GRPO on a denoiser and a reward of your own, through `align_train::train_pipeline`:
//! "one red circle" should come to paint the image red, "one blue circle" blue.
//! Run: `cargo run --release -p align-examples --example flow_grpo_own_model`
use align_core::{Condition, Denoiser, Parameterization, select_device};
use align_models::{TextEncoderConfig, TextToImage};
use align_samplers::{FlowEulerSampler, FlowGrid, FlowSdeSampler};
use align_train::{OnlineTask, RewardEvaluator, TrainConfig, observer, train_pipeline};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

/// A velocity field on 3×4×4 images: linear in each pixel's colour, plus a pull set by the
/// mean of the prompt's token states.
#[derive(Module, Debug)]
pub struct TinyFlow {
    colour: Linear,
    prompt: Linear,
}

impl Denoiser for TinyFlow {
    fn parameterization(&self) -> Parameterization {
        Parameterization::FlowVelocity
    }
    fn predict(&self, x_t: Tensor<4>, _t: Tensor<1>, c: &Condition) -> Tensor<4> {
        let pull = self.prompt.forward(c.context.clone().mean_dim(1)); // [B, 1, 3]
        let x = x_t.swap_dims(1, 3); // channels last: [B, W, H, 3]
        (self.colour.forward(x) + pull.unsqueeze_dim(1)).swap_dims(1, 3)
    }
}

/// ±(red − blue), averaged over the pixels: + for a "red" prompt, − otherwise.
fn colour_reward(images: Tensor<4>, prompts: &[String]) -> Tensor<1> {
    let (b, device) = (prompts.len(), images.device());
    let sign: Vec<f32> = prompts
        .iter()
        .map(|p| f32::from(p.contains("red")) * 2.0 - 1.0)
        .collect();
    let flat: Tensor<2> =
        (images.clone().narrow(1, 0, 1) - images.narrow(1, 2, 1)).reshape([b as i32, -1]);
    flat.mean_dim(1).reshape([b]) * Tensor::from_floats(sign.as_slice(), &device)
}

const CONFIG: &str = r#"
algorithm = "flow-grpo"
prompts_per_iteration = 2
group_size = 4
train_steps = 6
eval_seeds = 4
runner = { iterations = 6, learning_rate = 3e-2 }
flow_grpo = { clip_range = 0.2 }
"#;

/// Trains for six iterations and prints the evaluation reward before and after.
pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    align_core::tune_allocator();
    let device = select_device(None)?.autodiff();
    let tok = align_data::Tokenizer::new();
    let text = TextEncoderConfig::tiny(tok.vocab_size(), tok.max_len());
    let (colour, prompt) = (LinearConfig::new(3, 3), LinearConfig::new(text.dim, 3));
    let denoiser = TinyFlow {
        colour: colour.init(&device),
        prompt: prompt.init(&device),
    };
    let model = TextToImage {
        text: text.init(&device)?,
        denoiser,
    };
    let mut config: TrainConfig = toml::from_str(CONFIG)?;
    config.out = std::env::temp_dir().join(format!("align-own-model-{}", std::process::id()));
    let prompts = vec!["one red circle".to_string(), "one blue circle".to_string()];
    let reward = || Box::new(align_rewards::reward_fn("colour", "[-2, 2]", colour_reward));
    let sde = FlowSdeSampler::new(FlowGrid::new(6, 1.0)?, 0.7)?;
    let mut task = OnlineTask::new(model, prompts.clone(), reward(), Box::new(sde), [3, 4, 4]);
    task.lora_targets = Some(vec!["colour".into(), "prompt".into()]); // the layers LoRA adapts
    let euler = Box::new(FlowEulerSampler::new(FlowGrid::new(6, 1.0)?));
    let eval = RewardEvaluator::for_config(reward(), prompts, euler, [3, 4, 4], &config);
    let report = train_pipeline(task, Box::new(eval), &config, false, &observer::silent())?;
    let eval = report.eval_reward.ok_or("no evaluation")?;
    println!("colour reward {:.3} -> {:.3}", eval.base, eval.final_);
    std::fs::remove_dir_all(&config.out)?;
    Ok(())
}
