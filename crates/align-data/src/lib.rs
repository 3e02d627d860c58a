#![warn(missing_docs)]
//! # align-data
//!
//! The data side of `align`: the procedural **Shapes world** — 16×16 scenes of one or two
//! groups of coloured circles, squares and triangles on black, described by compositional
//! prompts such as `"two blue squares and one yellow triangle"` — together with its
//! word-level tokenizer, a train / held-out split of attribute combinations for measuring
//! compositional generalisation, deterministic datasets, a fixed evaluation prompt set, the
//! exact verifier **ShapeEval** that reads an image back and scores it against its prompt,
//! and an image-folder dataset for users' own captioned images.
//!
//! Everything is host-side and backend-free: images are [`Image`]s (`CHW`, `f32` in
//! `[-1, 1]`) that a training loop turns into tensors. Every random choice comes from a
//! ChaCha8 generator seeded by the caller, so a seed (and, for datasets, an item index)
//! reproduces the same pixels on every platform.
//!
//! ## Example
//!
//! Render a scene from a seed and score it with ShapeEval:
//!
//! ```
//! use align_data::{render_seeded, SceneSpec, ShapeEval, Tokenizer, WorldConfig};
//!
//! let spec: SceneSpec = "two blue squares and one yellow triangle".parse().unwrap();
//! let scene = render_seeded(&spec, &WorldConfig::default(), 42).unwrap();
//! assert_eq!((scene.image.width, scene.image.height), (16, 16));
//!
//! let result = ShapeEval::default().score(&scene.image, &spec);
//! assert!(result.pass);
//! assert_eq!(result.partial_credit, 1.0);
//! assert_eq!(result.groups[0].found, 2);
//!
//! let ids = Tokenizer::new().encode(&spec.to_string()).unwrap();
//! assert_eq!(ids.len(), 8);
//! ```
//!
//! ## Modules
//!
//! - [`world`]: shapes, colours, groups, [`SceneSpec`], [`WorldConfig`].
//! - [`raster`]: the [`Image`] type.
//! - [`render`]: deterministic rendering with rejection-sampled placement.
//! - [`prompt`], [`tokenizer`]: prompt text ↔ scene, and prompt text ↔ token ids.
//! - [`split`]: the train / held-out split of attribute combinations.
//! - [`dataset`]: [`ShapesDataset`], item `i` a pure function of `(seed, i)`.
//! - [`folder`]: [`ImageFolderDataset`] for captioned PNG / JPEG folders.
//! - [`preference`]: pairwise and binary preference datasets (JSONL + PNG).
//! - [`verify`]: the [`ShapeEval`] verifier.
//! - [`eval_set`]: the fixed [`EvalSet`].

pub mod dataset;
pub mod error;
pub mod eval_set;
pub mod folder;
pub mod preference;
pub mod prompt;
pub mod raster;
pub mod render;
mod sampling;
pub mod split;
pub mod tokenizer;
pub mod verify;
pub mod world;

pub use dataset::{ShapesDataset, ShapesSample};
pub use error::{DataError, Result};
pub use eval_set::{EVAL_SEED_BASE, EVAL_SELECTION_SEED, EvalPrompt, EvalSet};
pub use folder::{CAPTIONS_FILE, FolderItem, ImageFolderDataset};
pub use preference::{
    LABELS_FILE, LabeledImage, PAIRS_FILE, PreferencePair, read_labels, read_pairs, write_labels,
    write_pairs,
};
pub use prompt::{Prompt, parse_prompt};
pub use raster::Image;
pub use render::{PlacedObject, Scene, draw_objects, place_objects, render_scene, render_seeded};
pub use split::{
    HELDOUT_COMBOS, HELDOUT_GROUPS, HELDOUT_PAIR_COMBOS, HELDOUT_PAIRS, Split, SplitName, SplitPart,
};
pub use tokenizer::{MAX_LEN, NULL_ID, PAD_ID, Tokenizer, UNK_ID};
pub use verify::{DetectedObject, GroupResult, ShapeEval, ShapeEvalConfig, ShapeEvalResult};
pub use world::{BACKGROUND, Colour, Group, MAX_OBJECTS, SceneSpec, Shape, WorldConfig};
