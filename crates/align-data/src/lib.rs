#![warn(missing_docs)]
//! # align-data
//!
//! The data side of `align`: the procedural Shapes world (scenes of coloured shapes, their
//! compositional prompts, a tokenizer, a train / held-out split of attribute combinations and
//! the exact ShapeEval verifier), image-folder datasets for users' own images, and
//! preference-pair and binary-feedback datasets stored as JSONL + PNG.
//!
//! **Status:** not yet implemented (tracked by the "Shapes world and models" issue).
