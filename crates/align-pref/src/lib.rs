#![warn(missing_docs)]
//! # align-pref
//!
//! Preference optimisation for diffusion and flow models: Diffusion-DPO (paired noise and
//! timestep), D3PO, SPO, Diffusion-KTO, MaPO, reward-weighted regression, DSPO and Preference
//! Flow Matching, and AI-feedback preference data built from any reward.
//!
//! **Status:** not yet implemented (tracked by the "Preference optimization" issue).
