//! The online job on a Stable Diffusion 3 / 3.5 directory: the shared job of [`crate::job`]
//! with the flow-matching algorithms (Flow-GRPO and its Fast window, DenseGRPO, SDPO, D3PO,
//! SPO, DRaFT, AlignProp, ReFL, DRaFT-LV, the adjoint methods) and LoRA on the MMDiT's joint
//! attention (Flow-GRPO's targets), toward a reward on real images, on the user's prompts.
//!
//! Rollouts use the Flow-GRPO SDE (or CPS) on SD3's shifted sigmas (`scheduler.shift`, 3):
//! `train_steps` steps with `noise_level` (Flow-GRPO: 10 steps, 0.7). Evaluations and grids
//! sample deterministically with Euler on the same schedule (`eval_steps`, 0 = 28, diffusers'
//! default). `text_encoder_3 = false` drops T5 and `max_sequence_length` sets its tokens.
//! The run directory is the same as for every other model.

use align_models::Pipeline;
use align_models::sd3::{Sd3Options, StableDiffusion3};
use align_samplers::{CpsSampler, FlowEulerSampler, FlowSdeSampler, Sampler};
use burn::tensor::Device;

use crate::config::{AlgorithmName, RolloutSampler, TrainConfig};
use crate::error::{Result, TrainError};
use crate::observer::SharedObserver;
use crate::report::Report;
use crate::sd::{RealPipeline, real_model_run};

/// Default evaluation steps (diffusers' `StableDiffusion3Pipeline` default).
pub const SD3_EVAL_STEPS: usize = 28;

/// Whether `dir` looks like a diffusers SD3 directory.
pub fn is_sd3_dir(dir: &std::path::Path) -> bool {
    align_models::sd3::is_sd3_dir(dir)
}

/// The pipeline of a run's configuration (`text_encoder_3`, `max_sequence_length`).
///
/// # Errors
/// A directory that does not load, a bad `max_sequence_length` (named).
pub fn load_sd3(config: &TrainConfig, device: &Device) -> Result<StableDiffusion3> {
    let options = Sd3Options {
        text_encoder_3: config.text_encoder_3,
        max_sequence_length: config.max_sequence_length,
    };
    Ok(StableDiffusion3::load_with(
        &config.model,
        &options,
        device,
    )?)
}

/// The rollout sampler: the Flow-GRPO SDE or CPS on the scheduler's sigmas, with the fixed
/// `sde_window` or iteration 0's drawn one.
fn rollout_sampler(
    config: &TrainConfig,
    sd3: &StableDiffusion3,
) -> Result<(Box<dyn Sampler + Send + Sync>, align_samplers::FlowGrid)> {
    let grid = sd3
        .scheduler
        .grid(config.train_steps)
        .map_err(|e| TrainError::config("train_steps", e.to_string()))?;
    let window = config.iteration_window(0).map(|(a, b)| a..b);
    let named =
        |e: align_samplers::SamplerError| TrainError::config("rollout_sampler", e.to_string());
    let sampler: Box<dyn Sampler + Send + Sync> = match config.rollout_sampler {
        RolloutSampler::Default | RolloutSampler::Sde => Box::new(
            FlowSdeSampler::new(grid.clone(), config.noise_level)
                .and_then(|s| s.with_window(window))
                .map_err(named)?,
        ),
        RolloutSampler::DanceSde => Box::new(
            FlowSdeSampler::new(grid.clone(), config.noise_level)
                .map(FlowSdeSampler::with_constant_sigma)
                .and_then(|s| s.with_window(window))
                .map_err(named)?,
        ),
        RolloutSampler::Cps => Box::new(
            CpsSampler::new(grid.clone(), config.noise_level)
                .and_then(|s| s.with_window(window))
                .map_err(named)?,
        ),
        RolloutSampler::Ddim | RolloutSampler::Ddpm => {
            return Err(TrainError::config(
                "rollout_sampler",
                "SD3 is a flow-matching model: use \"sde\" (Flow-GRPO's, the default), \"dance-sde\" or \"cps\"",
            ));
        }
    };
    Ok((sampler, grid))
}

/// The latent shape of the run's images (`image_size`, 0 = the model's default, 1024) and the
/// Euler sampler of its evaluations (`eval_steps`, 0 = 28).
fn eval_settings(
    config: &TrainConfig,
    sd3: &StableDiffusion3,
) -> Result<([usize; 3], FlowEulerSampler)> {
    let size = if config.image_size == 0 {
        sd3.default_image_size()
    } else {
        config.image_size
    };
    let shape = sd3
        .sample_shape(size)
        .map_err(|e| TrainError::config("image_size", e.to_string()))?;
    let steps = if config.eval_steps == 0 {
        SD3_EVAL_STEPS
    } else {
        config.eval_steps
    };
    let sampler = sd3
        .euler(steps)
        .map_err(|e| TrainError::config("eval_steps", e.to_string()))?;
    Ok((shape, sampler))
}

/// The online job on an SD3 directory ([`crate::train`] calls it for one).
///
/// # Errors
/// A DDPM algorithm (DDPO, DPOK) or sampler (refused by name), an adapter file (`lora_init`)
/// that does not read or fit, Shapes-only fields, a missing prompt file or reward model, a directory that does
/// not load, run errors.
pub fn train_sd3(
    config: &TrainConfig,
    resume: bool,
    observer: &SharedObserver,
    device: &Device,
) -> Result<Report> {
    if matches!(
        config.algorithm,
        AlgorithmName::DdpoSf | AlgorithmName::DdpoIs | AlgorithmName::Dpok
    ) {
        return Err(TrainError::config(
            "algorithm",
            format!(
                "{:?} is written for DDPM (ε) models; SD3 is a flow-matching model: use \
                 flow-grpo, dense-grpo, sdpo, d3po, spo, draft, align-prop, refl, draft-lv, \
                 adjoint or adjoint-matching",
                config.algorithm
            ),
        ));
    }
    let run = real_model_run(config, device)?;
    let config = &run.config;
    let sd3 = load_sd3(config, &config.train_device(device))?;
    let (shape, eval_sampler) = eval_settings(config, &sd3)?;
    let (sampler, grid) = rollout_sampler(config, &sd3)?;
    let pipeline = RealPipeline {
        pipeline: sd3,
        sampler,
        eval_sampler: Box::new(eval_sampler),
        shape,
        lora_targets: StableDiffusion3::lora_targets(),
        flow_grid: Some(grid),
    };
    run.train(pipeline, resume, observer)
}

/// The mean evaluation reward of an SD3 pipeline's samples, measured as a run with `config`
/// measures it before and after training (Euler with `eval_steps`, `eval_seeds` per
/// evaluation prompt, the run's reward and guidance): what `align eval --run` prints for an
/// SD3 run. Returns the mean and the number of images.
///
/// # Errors
/// A missing prompt file or reward model, sampling or scoring failures.
pub fn evaluate_sd3(
    config: &TrainConfig,
    sd3: &StableDiffusion3,
    device: &Device,
) -> Result<(f64, usize)> {
    let (shape, sampler) = eval_settings(config, sd3)?;
    crate::sd::evaluate_pipeline(config, sd3, shape, Box::new(sampler), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RewardName;

    fn config(dir: &std::path::Path) -> TrainConfig {
        let mut c = crate::sd::tests_config(dir);
        c.model = align_models::hf::fixtures_dir().join("sd3-tiny-pipeline");
        c.algorithm = AlgorithmName::FlowGrpo;
        c.noise_level = 0.7;
        c.guidance = 4.5;
        c.max_sequence_length = 16;
        c
    }

    /// Flow-GRPO for two iterations on the tiny SD3 pipeline toward the CLIP aesthetic
    /// predictor, through `align_train::train` (the `align train` entry point): the run
    /// directory is complete, the adapters moved the evaluation reward, and a resumed run ends
    /// where the uninterrupted one does.
    #[test]
    fn flow_grpo_trains_the_tiny_sd3_pipeline_end_to_end() {
        let device = align_core::test_device();
        let dir = crate::fresh_test_dir("align-sd3-train");
        let mut c = config(&dir);
        // One optimizer step per iteration, taken at θ_old: the logged ratio deviation is
        // exactly 0 (with more minibatches the later ones follow an updated policy).
        c.flow_grpo.minibatches = 1;
        let report = crate::online::train(&c, false, &crate::observer::silent(), &device).unwrap();
        assert_eq!(report.iterations, 2);
        let eval = report.eval_reward.clone().unwrap();
        assert!(eval.base.is_finite() && eval.final_.is_finite(), "{eval:?}");
        assert_ne!(
            eval.base, eval.final_,
            "the adapters must change the samples"
        );
        for f in [
            "report.json",
            "grid-before.png",
            "grid-after.png",
            "metrics.jsonl",
        ] {
            assert!(c.out.join(f).is_file(), "{f} missing");
        }
        let metrics = std::fs::read_to_string(c.out.join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 2);
        for line in metrics.lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(row["optimizer_steps"].as_f64(), Some(1.0), "{line}");
            assert_eq!(row["max_ratio_deviation"].as_f64(), Some(0.0), "{line}");
        }

        // The trained run loads back (adapters on the joint attention) and measures what the
        // report measured.
        let weights = crate::Weights {
            checkpoint: None,
            no_ema: false,
        };
        let run = crate::load_run(&c.out, weights, &device).unwrap();
        let crate::TrainedModel::Sd3(sd3) = run.model else {
            panic!("an SD3 run");
        };
        let (mean, images) = evaluate_sd3(&c, &sd3, &device).unwrap();
        assert_eq!(images, 2 * c.eval_seeds);
        assert!(
            (mean - eval.final_).abs() < 1e-6,
            "{mean} vs {}",
            eval.final_
        );
        // Without T5, two iterations in one go against one and a resume: same end.
        let mut a = config(&dir);
        a.text_encoder_3 = false;
        a.out = dir.join("no-t5");
        let full = crate::online::train(&a, false, &crate::observer::silent(), &device).unwrap();
        let mut b = a.clone();
        b.out = dir.join("no-t5-resumed");
        b.runner.iterations = 1;
        crate::online::train(&b, false, &crate::observer::silent(), &device).unwrap();
        b.runner.iterations = 2;
        let resumed = crate::online::train(&b, true, &crate::observer::silent(), &device).unwrap();
        assert_eq!(
            full.eval_reward.unwrap().final_,
            resumed.eval_reward.unwrap().final_
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The transformer output on fixed inputs (the pipeline fixture's initial latents and
    /// prompt embeddings, timesteps 500 and 800), and those inputs.
    fn transformer_out(sd3: &StableDiffusion3) -> Vec<(&'static str, burn::tensor::TensorData)> {
        use align_models::hf::{fixtures_dir, read_safetensors};
        use burn::tensor::Tensor;
        let d = align_core::test_device();
        let r = read_safetensors(&fixtures_dir().join("sd3-tiny-pipeline/reference.safetensors"))
            .unwrap();
        let t = Tensor::<1>::from_floats([500.0, 800.0], &d);
        let out = sd3
            .transformer
            .forward(
                Tensor::from_data(r["run.init_latents"].clone(), &d),
                t.clone(),
                Tensor::from_data(r["encode.prompt_embeds"].clone(), &d),
                Tensor::from_data(r["encode.pooled_prompt_embeds"].clone(), &d),
            )
            .unwrap();
        vec![
            ("transformer.out", out.into_data()),
            ("transformer.hidden_states", r["run.init_latents"].clone()),
            ("transformer.timestep", t.into_data()),
            (
                "transformer.encoder_hidden_states",
                r["encode.prompt_embeds"].clone(),
            ),
            (
                "transformer.pooled_projections",
                r["encode.pooled_prompt_embeds"].clone(),
            ),
        ]
    }

    /// A Flow-GRPO run on the tiny SD3 pipeline exported as PEFT and diffusers LoRA files
    /// (diffusers' `transformer.` names) and as a merged pipeline directory: the adapters read
    /// back into the base compute bit for bit what the run's transformer computes, the merged
    /// directory loads and matches to f32 rounding, and a run started from the exported
    /// adapter (`lora_init`) starts from that model. With `ALIGN_LORA_EXPORT_DIR` set, the
    /// exports and our transformer output are kept there for
    /// `scripts/check-lora-export.py --sd3`.
    #[test]
    fn a_trained_sd3_run_exports_to_files_that_load_back() {
        use align_models::hf::max_relative_error;
        use align_models::{Sd3TransformerNaming, WeightDtype, apply_lora_weights, read_lora};
        let device = align_core::test_device();
        let dir = crate::fresh_test_dir("align-sd3-export");
        let mut c = config(&dir);
        c.lora.rank = 4;
        c.lora.alpha = 8.0;
        c.runner.learning_rate = 1e-2;
        crate::online::train(&c, false, &crate::observer::silent(), &device).unwrap();
        let run = crate::load_run(&c.out, crate::Weights::default(), &device).unwrap();
        let crate::TrainedModel::Sd3(trained) = run.model else {
            panic!("an SD3 run");
        };
        let expected = transformer_out(&trained);
        let base = || {
            StableDiffusion3::load_with(
                &c.model,
                &Sd3Options {
                    text_encoder_3: true,
                    max_sequence_length: 16,
                },
                &device,
            )
            .unwrap()
        };
        let moved = max_relative_error(&expected[0].1, &transformer_out(&base())[0].1).unwrap();
        assert!(
            moved > 1e-4,
            "the run must have moved the transformer: {moved}"
        );
        let keep = std::env::var_os("ALIGN_LORA_EXPORT_DIR").map(std::path::PathBuf::from);
        let out = keep.clone().unwrap_or_else(|| dir.join("export"));
        let _ = std::fs::remove_dir_all(&out);
        let export = |format, sub: &str| {
            crate::export_run(
                &c.out,
                crate::Weights::default(),
                format,
                WeightDtype::F32,
                &out.join(sub),
                &device,
            )
            .unwrap()
        };
        for (format, sub) in [
            (crate::ExportFormat::Peft, "peft"),
            (crate::ExportFormat::Diffusers, "diffusers"),
        ] {
            let files = export(format, sub);
            let weights = read_lora(&files[0], &Sd3TransformerNaming).unwrap();
            assert_eq!((weights.rank, weights.alpha), (4, 8.0));
            assert_eq!(weights.factors.len(), 3 * 8 - 1);
            let reloaded = apply_lora_weights(base(), &weights).unwrap();
            assert_eq!(transformer_out(&reloaded)[0].1, expected[0].1, "{format:?}");
        }
        let names = std::fs::read(out.join("diffusers/pytorch_lora_weights.safetensors")).unwrap();
        let names = String::from_utf8_lossy(&names);
        assert!(
            names.contains("transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight"),
            "diffusers' names"
        );
        let files = export(crate::ExportFormat::Merged, "merged");
        let merged = StableDiffusion3::load_with(
            &files[0],
            &Sd3Options {
                text_encoder_3: true,
                max_sequence_length: 16,
            },
            &device,
        )
        .unwrap();
        let err = max_relative_error(&transformer_out(&merged)[0].1, &expected[0].1).unwrap();
        assert!(err < 1e-5, "merged: {err}");
        assert!(out.join("merged/tokenizer_3/tokenizer.json").is_file());
        assert!(!out.join("merged/reference.safetensors").exists());
        if keep.is_some() {
            align_models::lora_file::save_tensors(&out.join("ours.safetensors"), &expected)
                .unwrap();
        }
        // A run that starts from the exported adapter starts from the trained model.
        let mut again = config(&dir);
        again.out = dir.join("again");
        again.lora_init = Some(out.join("diffusers"));
        let (policy, _) = crate::adapt::policy_and_reference(
            base(),
            &crate::adapt::Adapters {
                finetune: crate::config::Finetune::Lora,
                lora: &again.lora,
                targets: None,
                init: again.lora_init.as_deref(),
                model_dir: &again.model,
            },
            true,
        )
        .unwrap();
        assert_eq!(transformer_out(&policy)[0].1, expected[0].1);
        again.runner.iterations = 1;
        crate::online::train(&again, false, &crate::observer::silent(), &device).unwrap();
        if keep.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// A run without T5 exports a merged pipeline without it (`model_index.json` says
    /// `[null, null]`, so diffusers conditions as the run did); a base directory without
    /// `model_index.json` exports its SD3 components.
    #[test]
    fn merged_exports_follow_the_run_and_the_base_directory() {
        let device = align_core::test_device();
        let dir = crate::fresh_test_dir("align-sd3-merged");
        // The fixture without its index (and without the reference files).
        let base = dir.join("base");
        let skip = [
            std::path::Path::new("model_index.json"),
            std::path::Path::new("reference.json"),
            std::path::Path::new("reference.safetensors"),
        ];
        crate::trained::copy_dir(
            &align_models::hf::fixtures_dir().join("sd3-tiny-pipeline"),
            &base,
            &skip,
        )
        .unwrap();
        for (model, t5, name) in [
            (
                align_models::hf::fixtures_dir().join("sd3-tiny-pipeline"),
                false,
                "no-t5",
            ),
            (base.clone(), true, "no-index"),
        ] {
            let mut c = config(&dir);
            c.model = model;
            c.text_encoder_3 = t5;
            c.out = dir.join(name);
            c.runner.iterations = 1;
            crate::online::train(&c, false, &crate::observer::silent(), &device).unwrap();
            let out = dir.join(format!("{name}-merged"));
            let files = crate::export_run(
                &c.out,
                crate::Weights::default(),
                crate::ExportFormat::Merged,
                align_models::WeightDtype::F32,
                &out,
                &device,
            )
            .unwrap();
            assert_eq!(files[0], out);
            assert!(
                out.join("transformer/diffusion_pytorch_model.safetensors")
                    .is_file()
            );
            assert!(out.join("tokenizer_2/vocab.json").is_file());
            assert_eq!(out.join("text_encoder_3").is_dir(), t5, "{name}");
            assert_eq!(out.join("model_index.json").is_file(), !t5, "{name}");
            if !t5 {
                let index: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(out.join("model_index.json")).unwrap(),
                )
                .unwrap();
                assert_eq!(index["text_encoder_3"], serde_json::json!([null, null]));
                assert_eq!(index["tokenizer_3"], serde_json::json!([null, null]));
                assert_eq!(index["text_encoder_2"][1], "CLIPTextModelWithProjection");
            }
            let merged = StableDiffusion3::load_with(
                &out,
                &Sd3Options {
                    text_encoder_3: true,
                    max_sequence_length: 16,
                },
                &device,
            )
            .unwrap();
            assert_eq!(merged.text_encoder_3.is_some(), t5);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ddpm_algorithms_samplers_and_bad_settings_are_refused_by_name() {
        let device = align_core::test_device();
        let dir = crate::fresh_test_dir("align-sd3-refuse");
        let run = |c: &TrainConfig| {
            crate::online::train(c, false, &crate::observer::silent(), &device)
                .unwrap_err()
                .to_string()
        };
        let mut c = config(&dir);
        c.algorithm = AlgorithmName::DdpoIs;
        assert!(run(&c).starts_with("algorithm:"), "{}", run(&c));
        let mut c = config(&dir);
        c.rollout_sampler = RolloutSampler::Ddim;
        assert!(run(&c).starts_with("rollout_sampler:"), "{}", run(&c));
        let mut c = config(&dir);
        c.lora_init = Some(dir.join("adapter.safetensors"));
        assert!(
            run(&c).starts_with("lora_init:"),
            "a missing file: {}",
            run(&c)
        );
        let mut c = config(&dir);
        c.max_sequence_length = 0;
        assert!(run(&c).contains("max_sequence_length"), "{}", run(&c));
        let mut c = config(&dir);
        c.reward = RewardName::ShapeEvalPartial.into();
        assert!(run(&c).contains("reward"), "{}", run(&c));
        // SD3's options on another model are refused by name.
        for (field, change) in [
            (
                "text_encoder_3",
                (|c: &mut TrainConfig| c.text_encoder_3 = false) as fn(&mut _),
            ),
            ("max_sequence_length", |c: &mut TrainConfig| {
                c.max_sequence_length = 77
            }),
        ] {
            let mut c = crate::sd::tests_config(&dir);
            change(&mut c);
            assert!(run(&c).starts_with(&format!("{field}:")), "{}", run(&c));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
