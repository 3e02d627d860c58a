//! Runnable examples of the `align` workspace; see the `[[example]]` entries of this crate:
//!
//! ```text
//! cargo run -p align-examples --example flow_sde_rollout
//! ```
