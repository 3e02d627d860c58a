//! Criterion benchmarks of the `align` workspace. Run them with
//!
//! ```text
//! cargo bench -p align-benches              # on flex
//! BURN_DEVICE=ndarray cargo bench -p align-benches --features ndarray
//! ```
//!
//! Results, with the machine and the exact command, go to `docs/benchmarks.md`.
