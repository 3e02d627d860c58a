//! The loaders under test and their valid inputs.
//!
//! Seeds come from `crates/align-fuzz/corpus/` (configs, prompt files, reward answers, small
//! safetensors files), from the repository's `fixtures/` (the tiny diffusers UNet and PEFT
//! adapter) and from code, written once into the campaign's work directory: a tiny Shapes
//! model, a preference dataset of 16×16 PNGs and a two-checkpoint run of a toy job.

use std::path::{Path, PathBuf};

use align_core::{Job, Metrics, Runner, RunnerConfig};
use align_data::{Image, LabeledImage, PreferencePair, Tokenizer};
use align_models::{DenoiserKind, Preset, SdUnetNaming, ShapesModel, ShapesModelConfig};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::{Fault, Target};

const TEXT: [Fault; 6] = [
    Fault::Truncated,
    Fault::BitFlips,
    Fault::Spliced,
    Fault::ArbitraryBytes,
    Fault::Empty,
    Fault::BadField,
];
const SAFETENSORS: [Fault; 9] = [
    Fault::Truncated,
    Fault::BitFlips,
    Fault::Spliced,
    Fault::ArbitraryBytes,
    Fault::Empty,
    Fault::HeaderJson,
    Fault::WrongDtype,
    Fault::WrongShape,
    Fault::HugeSize,
];
const BYTES: [Fault; 5] = [
    Fault::Truncated,
    Fault::BitFlips,
    Fault::Spliced,
    Fault::ArbitraryBytes,
    Fault::Empty,
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn corpus(dir: &str) -> std::io::Result<Vec<Vec<u8>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(dir),
    )?
    .flatten()
    .map(|e| e.path())
    .collect();
    files.sort();
    files.iter().map(std::fs::read).collect()
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Every file under `dir`, as (path relative to `dir`, bytes).
fn files_of(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                out.push((rel, std::fs::read(&p)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The fixture of `dir` without the files in `damaged` (those are written per case).
fn fixture_without(dir: &Path, damaged: &[&str]) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    Ok(files_of(dir)?
        .into_iter()
        .filter(|(p, _)| !damaged.iter().any(|d| Path::new(d) == p))
        .collect())
}

/// A target damaging `file` of the valid directory `dir`, whose other files are the fixture.
fn in_dir(
    name: &'static str,
    dir: &Path,
    file: &'static str,
    faults: &[Fault],
    load: crate::Loader,
    names: Vec<&'static str>,
) -> std::io::Result<Target> {
    Ok(Target {
        name,
        files: vec![file],
        seeds: vec![vec![read(&dir.join(file))?]],
        fixture: fixture_without(dir, &[file])?,
        faults: faults.to_vec(),
        load,
        names,
    })
}

fn device() -> Device {
    align_core::test_device()
}

/// A one-parameter model and a job for the checkpoint-directory target.
#[derive(Module, Debug)]
struct Toy {
    w: Param<Tensor<1>>,
}

struct ToyJob;

impl Job<Toy> for ToyJob {
    fn iteration(
        &mut self,
        model: Toy,
        _iteration: usize,
        apply: &mut dyn FnMut(Toy, align_core::Gradients) -> align_core::Result<Toy>,
    ) -> align_core::Result<(Toy, Metrics)> {
        let loss = model.w.val().square().sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = apply(model, grads.into())?;
        Ok((model, Metrics::from([("loss".to_string(), 1.0)])))
    }
}

fn toy(device: &Device) -> Toy {
    Toy {
        w: Param::from_tensor(Tensor::from_floats([0.5, -1.0, 2.0], device)),
    }
}

fn runner_config(iterations: usize) -> RunnerConfig {
    RunnerConfig {
        iterations,
        ..RunnerConfig::default()
    }
}

fn image(seed: u8) -> Image {
    let rgb: Vec<u8> = (0..16 * 16 * 3)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    Image::from_rgb8(16, 16, &rgb).unwrap_or_else(|_| Image::filled(16, 16, [seed, 0, 0]))
}

/// Writes the generated fixtures into `work/fixtures` (once).
fn generate(work: &Path) -> Result<PathBuf, String> {
    let fx = work.join("fixtures");
    if fx.join("done").is_file() {
        return Ok(fx);
    }
    let _ = std::fs::remove_dir_all(&fx);
    let device = device();
    let tok = Tokenizer::new();
    let config = ShapesModelConfig::preset(
        DenoiserKind::Unet,
        Preset::Tiny,
        tok.vocab_size(),
        tok.max_len(),
    );
    device.seed(1);
    let model = config.init(&device).map_err(|e| e.to_string())?;
    model
        .save(&config, &fx.join("shapes-tiny"))
        .map_err(|e| e.to_string())?;
    let pairs: Vec<PreferencePair> = (0..2)
        .map(|i| PreferencePair {
            prompt: format!("{} red circles", i + 1),
            winner: image(3 + i),
            loser: image(7 + i),
        })
        .collect();
    align_data::write_pairs(&fx.join("pairs"), &pairs).map_err(|e| e.to_string())?;
    let labels: Vec<LabeledImage> = (0..2)
        .map(|i| LabeledImage {
            prompt: "a blue square".into(),
            image: image(11 + i),
            desirable: i == 0,
        })
        .collect();
    align_data::write_labels(&fx.join("labels"), &labels).map_err(|e| e.to_string())?;
    let ad = device.clone().autodiff();
    Runner::new(runner_config(2), fx.join("run"))
        .and_then(|r| r.run(toy(&ad), &mut ToyJob, false))
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(fx.join("run").join(align_core::LOCK_FILE));
    let one = RunnerConfig {
        keep_checkpoints: 1,
        ..runner_config(2)
    };
    Runner::new(one, fx.join("run-one-kept"))
        .and_then(|r| r.run(toy(&ad), &mut ToyJob, false))
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(fx.join("run-one-kept").join(align_core::LOCK_FILE));
    let folder = fx.join("folder");
    std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
    // Two images of the pairs' set under plain names, and their captions.
    for (from, to) in [
        ("pairs/000000-w.png", "a.png"),
        ("pairs/000000-l.png", "b.png"),
    ] {
        std::fs::copy(fx.join(from), folder.join(to)).map_err(|e| e.to_string())?;
    }
    std::fs::write(
        folder.join(align_data::CAPTIONS_FILE),
        "# file<TAB>caption\na.png\tone red circle\nb.png\ttwo blue squares\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(fx.join("done"), "").map_err(|e| e.to_string())?;
    Ok(fx)
}

fn s<E: std::fmt::Display>(r: Result<impl Sized, E>) -> Result<(), String> {
    r.map(|_| ()).map_err(|e| e.to_string())
}

/// Every loader under test, with fixtures generated in `work` (created if missing).
///
/// # Errors
/// A corpus or fixture file that cannot be read, or a fixture that cannot be generated.
pub fn targets(work: &Path) -> Result<Vec<Target>, String> {
    let io = |e: std::io::Error| e.to_string();
    std::fs::create_dir_all(work).map_err(io)?;
    let fx = generate(work)?;
    let repo = repo();
    let train = corpus("train-config").map_err(io)?;
    let pref = corpus("pref-config").map_err(io)?;
    let prompts = corpus("prompts").map_err(io)?;
    let answers = corpus("reward-answer").map_err(io)?;
    let mut weights = corpus("safetensors").map_err(io)?;
    let shapes = fx.join("shapes-tiny");
    weights.push(read(&shapes.join("model.safetensors")).map_err(io)?);
    let unet = repo.join("fixtures/sd-tiny/unet");
    let peft = repo.join("fixtures/sd-tiny-lora/peft");
    let diffusers_lora =
        repo.join("fixtures/sd-tiny-lora/diffusers/pytorch_lora_weights.safetensors");
    let run = fx.join("run");
    let run_files: Vec<&'static str> = vec![
        "LATEST",
        "checkpoint-000002/model.bpk",
        "checkpoint-000002/optimizer.bpk",
        "checkpoint-000002/state.json",
        "checkpoint-000002/digest.txt",
        "checkpoint-000002/files.sha256",
        "checkpoint-000001/model.bpk",
        "checkpoint-000001/state.json",
    ];
    let run_seeds = run_files
        .iter()
        .map(|f| read(&run.join(f)).map(|b| vec![b]))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    let one_kept = fx.join("run-one-kept");
    let one_files: Vec<&'static str> = run_files[..6].to_vec();
    let one_seeds = one_files
        .iter()
        .map(|f| read(&one_kept.join(f)).map(|b| vec![b]))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    let mut checkpoint_faults = BYTES.to_vec();
    checkpoint_faults.extend([Fault::MissingFile, Fault::LatestNowhere]);
    let text_faults = TEXT.to_vec();
    let json_faults = TEXT.to_vec();

    let mut t = vec![
        Target {
            name: "train config (TOML)",
            files: vec!["config.toml"],
            seeds: vec![train.clone()],
            fixture: vec![],
            faults: text_faults.clone(),
            load: Box::new(|d| s(align_train::TrainConfig::from_file(&d.join("config.toml")))),
            names: vec!["config.toml"],
        },
        Target {
            name: "pref config (TOML)",
            files: vec!["config.toml"],
            seeds: vec![pref],
            fixture: vec![],
            faults: text_faults.clone(),
            load: Box::new(|d| s(align_train::PrefConfig::from_file(&d.join("config.toml")))),
            names: vec!["config.toml"],
        },
        Target {
            name: "run's config.toml (`--run`)",
            files: vec!["config.toml"],
            seeds: vec![train],
            fixture: vec![],
            faults: text_faults.clone(),
            load: Box::new(|d| s(align_train::read_run_config(d))),
            names: vec!["config.toml"],
        },
        in_dir(
            "Shapes model.json",
            &shapes,
            "model.json",
            &json_faults,
            Box::new(|d| s(ShapesModel::load(d, &device()))),
            vec!["model.json", "model.safetensors"],
        )
        .map_err(io)?,
        in_dir(
            "Shapes model.safetensors",
            &shapes,
            "model.safetensors",
            &SAFETENSORS,
            Box::new(|d| s(ShapesModel::load(d, &device()))),
            vec!["model.safetensors"],
        )
        .map_err(io)?,
        Target {
            name: "safetensors (reference reader)",
            files: vec!["weights.safetensors"],
            seeds: vec![weights],
            fixture: vec![],
            faults: SAFETENSORS.to_vec(),
            load: Box::new(|d| {
                s(align_models::hf::read_safetensors(
                    &d.join("weights.safetensors"),
                ))
            }),
            names: vec!["weights.safetensors"],
        },
        in_dir(
            "diffusers UNet weights",
            &unet,
            "diffusion_pytorch_model.safetensors",
            &SAFETENSORS,
            Box::new(|d| s(align_models::sd::UNet2DCondition::load(d, &device()))),
            vec!["diffusion_pytorch_model.safetensors"],
        )
        .map_err(io)?,
        in_dir(
            "diffusers UNet config.json",
            &unet,
            "config.json",
            &json_faults,
            Box::new(|d| s(align_models::sd::UNet2DCondition::load(d, &device()))),
            vec!["config.json", "diffusion_pytorch_model.safetensors"],
        )
        .map_err(io)?,
        in_dir(
            "PEFT LoRA weights",
            &peft,
            "adapter_model.safetensors",
            &SAFETENSORS,
            Box::new(|d| s(align_models::read_lora(d, &SdUnetNaming))),
            vec!["adapter_model.safetensors", "adapter_config.json"],
        )
        .map_err(io)?,
        in_dir(
            "PEFT adapter_config.json",
            &peft,
            "adapter_config.json",
            &json_faults,
            Box::new(|d| s(align_models::read_lora(d, &SdUnetNaming))),
            vec!["adapter_model.safetensors", "adapter_config.json"],
        )
        .map_err(io)?,
        Target {
            name: "diffusers LoRA file",
            files: vec!["pytorch_lora_weights.safetensors"],
            seeds: vec![vec![read(&diffusers_lora).map_err(io)?]],
            fixture: vec![],
            faults: SAFETENSORS.to_vec(),
            load: Box::new(|d| {
                s(align_models::read_lora(
                    &d.join("pytorch_lora_weights.safetensors"),
                    &SdUnetNaming,
                ))
            }),
            names: vec!["pytorch_lora_weights.safetensors"],
        },
        in_dir(
            "preference pairs.jsonl",
            &fx.join("pairs"),
            "pairs.jsonl",
            &text_faults,
            Box::new(|d| s(align_data::read_pairs(d, 16, 16))),
            vec!["pairs.jsonl"],
        )
        .map_err(io)?,
        in_dir(
            "preference labels.jsonl",
            &fx.join("labels"),
            "labels.jsonl",
            &text_faults,
            Box::new(|d| s(align_data::read_labels(d, 16, 16))),
            vec!["labels.jsonl"],
        )
        .map_err(io)?,
        in_dir(
            "preference PNG",
            &fx.join("pairs"),
            "000000-w.png",
            &{
                let mut f = BYTES.to_vec();
                f.push(Fault::HugeSize);
                f
            },
            Box::new(|d| s(align_data::read_pairs(d, 16, 16))),
            vec!["000000-w.png"],
        )
        .map_err(io)?,
        Target {
            name: "prompt file",
            files: vec!["prompts.txt"],
            seeds: vec![prompts.clone()],
            fixture: vec![],
            faults: BYTES.to_vec(),
            load: Box::new(|d| s(align_train::read_prompts(&d.join("prompts.txt")))),
            names: vec!["prompts.txt"],
        },
        Target {
            name: "reward-server answer",
            files: vec!["answer.json"],
            seeds: vec![answers],
            fixture: vec![],
            faults: json_faults,
            load: Box::new(|d| {
                let body = std::fs::read(d.join("answer.json")).map_err(|e| e.to_string())?;
                s(align_rewards::parse_scores("fuzz", &body, 4))
            }),
            names: vec!["reward `fuzz`"],
        },
        Target {
            name: "checkpoint model.bpk (direct load)",
            files: vec!["model.bpk"],
            seeds: vec![vec![
                read(&run.join("checkpoint-000002/model.bpk")).map_err(io)?,
            ]],
            fixture: vec![],
            faults: BYTES.to_vec(),
            load: Box::new(|d| {
                s(align_core::runner::load_checkpoint_file(
                    toy(&device()),
                    &d.join("model.bpk"),
                ))
            }),
            names: vec!["model.bpk"],
        },
    ];
    let shapes_prompts = vec![
        read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/prompts/shapes.txt"))
            .map_err(io)?,
    ];
    // A run directory resumed after damage: with two checkpoints kept, and with one.
    for (name, dir, files, seeds) in [
        ("checkpoint directory (resume)", &run, run_files, run_seeds),
        (
            "checkpoint directory, one kept (resume)",
            &one_kept,
            one_files,
            one_seeds,
        ),
    ] {
        t.push(Target {
            name,
            files,
            seeds,
            fixture: files_of(dir).map_err(io)?,
            faults: checkpoint_faults.clone(),
            load: Box::new(|d| {
                let ad = device().autodiff();
                let r = Runner::new(runner_config(3), d).map_err(|e| e.to_string())?;
                s(r.run(toy(&ad), &mut ToyJob, true))
            }),
            // The checkpoint (or LATEST) at fault, not only the run directory.
            names: vec!["checkpoint-0", "LATEST"],
        });
    }
    // The configuration files of the other diffusers / transformers components `align`
    // loads (each with its tiny fixture's weights beside it).
    type Load = fn(&Path) -> Result<(), String>;
    let configs: [(&'static str, PathBuf, &'static str, Load); 4] = [
        (
            "diffusers VAE config.json",
            repo.join("fixtures/sd-tiny/vae"),
            "diffusion_pytorch_model.safetensors",
            |d| s(align_models::sd::AutoencoderKl::load(d, &device())),
        ),
        (
            "CLIP config.json",
            repo.join("fixtures/clip-tiny"),
            "model.safetensors",
            |d| s(align_models::clip::ClipModel::load(d, &device())),
        ),
        (
            "T5 encoder config.json",
            repo.join("fixtures/sd3-tiny-pipeline/text_encoder_3"),
            "model.safetensors",
            |d| s(align_models::sd3::T5Encoder::load(d, &device())),
        ),
        (
            "SD3 transformer config.json",
            repo.join("fixtures/sd3-tiny-pipeline/transformer"),
            "diffusion_pytorch_model.safetensors",
            |d| s(align_models::sd3::MmDit::load(d, &device())),
        ),
    ];
    for (name, dir, weights, load) in configs {
        t.push(Target {
            name,
            files: vec!["config.json"],
            seeds: vec![vec![read(&dir.join("config.json")).map_err(io)?]],
            fixture: vec![(
                PathBuf::from(weights),
                read(&dir.join(weights)).map_err(io)?,
            )],
            faults: TEXT.to_vec(),
            load: Box::new(load),
            names: vec!["config.json", weights],
        });
    }
    // Tokenizer files of the CLIP and T5 tokenizers (SD and SD3 directories).
    let clip_tok = repo.join("fixtures/sd3-tiny-pipeline/tokenizer");
    for (name, file) in [
        ("CLIP tokenizer vocab.json", "vocab.json"),
        ("CLIP tokenizer merges.txt", "merges.txt"),
        ("CLIP tokenizer_config.json", "tokenizer_config.json"),
    ] {
        t.push(Target {
            name,
            files: vec![file],
            seeds: vec![vec![read(&clip_tok.join(file)).map_err(io)?]],
            fixture: fixture_without(&clip_tok, &[file]).map_err(io)?,
            faults: TEXT.to_vec(),
            load: Box::new(|d| s(align_models::clip::ClipTokenizer::from_dir(d))),
            names: vec![file],
        });
    }
    let t5_tok = repo.join("fixtures/sd3-tiny-pipeline/tokenizer_3");
    t.push(
        in_dir(
            "T5 tokenizer.json",
            &t5_tok,
            "tokenizer.json",
            &TEXT,
            Box::new(|d| s(align_models::sd3::T5Tokenizer::from_dir(d))),
            vec!["tokenizer.json"],
        )
        .map_err(io)?,
    );
    // The learned proxy reward model (`reward = "proxy"`).
    let proxy = repo.join("models/proxy-rm");
    for file in ["reward-model.json", "reward-model.safetensors"] {
        t.push(Target {
            name: if file.ends_with(".json") {
                "proxy reward-model.json"
            } else {
                "proxy reward-model.safetensors"
            },
            files: vec![file],
            seeds: vec![vec![read(&proxy.join(file)).map_err(io)?]],
            fixture: fixture_without(&proxy, &[file]).map_err(io)?,
            faults: if file.ends_with(".json") {
                TEXT.to_vec()
            } else {
                SAFETENSORS.to_vec()
            },
            load: Box::new(|d| s(align_rewards::ProxyReward::load(d, &device()))),
            // A shape the JSON declares shows up as weights that do not fit it.
            names: vec![file, "reward-model.safetensors"],
        });
    }
    // A captioned image folder (`captions.txt`: `file<TAB>caption` per line).
    let folder = fx.join("folder");
    t.push(
        in_dir(
            "image folder captions.txt",
            &folder,
            align_data::CAPTIONS_FILE,
            &BYTES,
            Box::new(|d| s(align_data::ImageFolderDataset::open(d, 16, 16))),
            vec![align_data::CAPTIONS_FILE],
        )
        .map_err(io)?,
    );
    // Prompt text as the Shapes world parses it (no file: any error is fine, a panic is not).
    t.push(Target {
        name: "Shapes prompt text",
        files: vec!["prompt.txt"],
        seeds: vec![shapes_prompts],
        fixture: vec![],
        faults: BYTES.to_vec(),
        load: Box::new(|d| {
            let text = std::fs::read(d.join("prompt.txt")).map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&text);
            let lines = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'));
            for line in lines {
                if align_data::parse_prompt(line).is_err() {
                    return Err(format!("prompt.txt: `{line}` does not parse"));
                }
            }
            Ok(())
        }),
        names: vec!["prompt.txt"],
    });
    Ok(t)
}
