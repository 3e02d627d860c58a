//! Helpers shared by the model tests.
#![allow(dead_code)]

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::Distribution;

/// Adds small noise to every parameter, so zero-initialised projections stop hiding paths.
pub struct Perturb;

impl ModuleMapper for Perturb {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            let noise = t.random_like(Distribution::Normal(0.0, 0.05));
            t + noise
        })
    }
}
