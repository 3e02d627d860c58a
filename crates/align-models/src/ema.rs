//! Exponential moving average of model weights: [`align_core::ema`], re-exported here because
//! pretraining samples from the average.

pub use align_core::ema::{Ema, EmaConfig};
