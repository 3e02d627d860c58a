#![warn(missing_docs)]
//! # align-backprop
//!
//! Reward backpropagation through the sampler with activation memory independent of the
//! number of differentiated steps (chained vector-Jacobian products): ReFL, DRaFT, DRaFT-K,
//! DRaFT-LV, AlignProp's randomised truncation, the continuous adjoint and Adjoint Matching,
//! plus inference-time reward guidance.
//!
//! **Status:** not yet implemented (tracked by the "Reward backprop" issue).
