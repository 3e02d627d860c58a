//! Criterion benchmarks of the `align` workspace. Run them with
//!
//! ```text
//! cargo bench -p align-benches              # on flex
//! BURN_DEVICE=ndarray cargo bench -p align-benches --features ndarray
//! ```
//!
//! Results, with the machine and the exact command, go to `docs/benchmarks.md`.
//!
//! The library holds what the benches and the `bench-table` runner share: analytic FLOP
//! counts of the models ([`flops`]) and the model-sized workloads ([`workloads`]).

#[path = "flops.rs"]
pub mod flops;
#[path = "workloads.rs"]
pub mod workloads;
