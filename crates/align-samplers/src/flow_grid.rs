//! Time grids for flow-matching samplers.
//!
//! Flow time runs `t: 1 → 0` during generation (`t = 1` noise, `t = 0` data), so every step has
//! `Δt = t_{k+1} − t_k < 0`. The grid is `K + 1` evenly spaced points from 1 to 0, optionally
//! warped by the SD3 timestep shift `t' = s·t / (1 + (s − 1)·t)`, which keeps more steps at
//! high noise for `s > 1` (SD3 uses `s = 3`).

use crate::error::{Result, SamplerError};

/// The SD3 timestep shift `s·t / (1 + (s − 1)·t)`; identity for `s = 1`, fixes 0 and 1.
pub fn shift_time(t: f64, shift: f64) -> f64 {
    shift * t / (1.0 + (shift - 1.0) * t)
}

/// A descending flow time grid `1 = t_0 > t_1 > … > t_K = 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowGrid {
    times: Vec<f64>,
}

impl FlowGrid {
    /// `num_steps + 1` points from 1 to 0, warped by `shift`.
    ///
    /// # Errors
    /// `num_steps == 0`, or a shift that is not finite and positive.
    ///
    /// # Example
    /// ```
    /// let g = align_samplers::FlowGrid::new(2, 3.0).unwrap();
    /// assert_eq!(g.times(), &[1.0, 0.75, 0.0]);
    /// ```
    pub fn new(num_steps: usize, shift: f64) -> Result<Self> {
        if num_steps == 0 {
            return Err(SamplerError::config("num_steps", "must be at least 1"));
        }
        if !(shift.is_finite() && shift > 0.0) {
            return Err(SamplerError::config(
                "shift",
                format!("{shift} is not a finite positive number"),
            ));
        }
        let times = (0..=num_steps)
            .map(|i| match i {
                // Exact endpoints: the shift formula can round 1 to 1 + 2⁻⁵².
                0 => 1.0,
                i if i == num_steps => 0.0,
                i => shift_time(1.0 - i as f64 / num_steps as f64, shift).clamp(0.0, 1.0),
            })
            .collect();
        Ok(Self { times })
    }

    /// The grid of diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps(num_steps)`
    /// (without dynamic shifting), the schedule Stable Diffusion 3 samples with: the
    /// `num_train_timesteps` training sigmas `shift(i / T)` give `σ_min = shift(1 / T)`; the
    /// inference sigmas are `shift` applied to `num_steps` evenly spaced points from 1 to
    /// `σ_min` (so the last one is shifted twice, as diffusers does), followed by 0.
    ///
    /// # Errors
    /// As [`FlowGrid::new`], and `num_train_timesteps == 0`.
    pub fn flow_match_euler(
        num_steps: usize,
        shift: f64,
        num_train_timesteps: usize,
    ) -> Result<Self> {
        Self::new(num_steps, shift)?;
        if num_train_timesteps == 0 {
            return Err(SamplerError::config(
                "num_train_timesteps",
                "must be at least 1",
            ));
        }
        let sigma_min = shift_time(1.0 / num_train_timesteps as f64, shift);
        let mut times: Vec<f64> = (0..num_steps)
            .map(|i| {
                let s = if num_steps == 1 {
                    1.0
                } else {
                    1.0 + (sigma_min - 1.0) * i as f64 / (num_steps - 1) as f64
                };
                shift_time(s, shift).clamp(0.0, 1.0)
            })
            .collect();
        times[0] = 1.0;
        times.push(0.0);
        Self::from_times(times)
    }

    /// A grid from explicit times.
    ///
    /// # Errors
    /// Fewer than two points, not strictly decreasing, or outside `[0, 1]`.
    pub fn from_times(times: Vec<f64>) -> Result<Self> {
        if times.len() < 2 {
            return Err(SamplerError::config(
                "times",
                "need at least two grid points",
            ));
        }
        if times.iter().any(|t| !(0.0..=1.0).contains(t)) {
            return Err(SamplerError::config(
                "times",
                "every time must lie in [0, 1]",
            ));
        }
        if times.windows(2).any(|w| w[1] >= w[0]) {
            return Err(SamplerError::config(
                "times",
                "must be strictly decreasing (1 → 0)",
            ));
        }
        Ok(Self { times })
    }

    /// The `K + 1` grid points.
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// Number of steps `K`.
    pub fn num_steps(&self) -> usize {
        self.times.len() - 1
    }

    /// `(t_k, t_{k+1})` of step `k`.
    pub fn interval(&self, k: usize) -> (f64, f64) {
        (self.times[k], self.times[k + 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn grids_are_strictly_decreasing_from_one_to_zero(k in 1usize..300, shift in 0.1f64..10.0) {
            let g = FlowGrid::new(k, shift).unwrap();
            prop_assert_eq!(g.num_steps(), k);
            prop_assert_eq!(g.times()[0], 1.0);
            prop_assert_eq!(g.times()[k], 0.0);
            prop_assert!(g.times().windows(2).all(|w| w[1] < w[0]));
        }
    }

    /// diffusers' `FlowMatchEulerDiscreteScheduler(shift = 3).set_timesteps(4)` sigmas, in
    /// closed form: σ_min = 3/1002, linspace(1, σ_min, 4) shifted again, then 0.
    #[test]
    fn flow_match_euler_is_diffusers_grid() {
        let g = FlowGrid::flow_match_euler(4, 3.0, 1000).unwrap();
        let expected = [1.0, 669.0 / 780.0, 168.0 / 279.0, 1.0 / 112.0, 0.0];
        for (a, b) in g.times().iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{:?}", g.times());
        }
        assert_eq!(
            FlowGrid::flow_match_euler(1, 3.0, 1000).unwrap().times(),
            &[1.0, 0.0]
        );
        assert!(FlowGrid::flow_match_euler(4, 3.0, 0).is_err());
        assert!(FlowGrid::flow_match_euler(0, 3.0, 1000).is_err());
    }

    #[test]
    fn shift_is_the_sd3_formula() {
        assert_eq!(shift_time(0.5, 1.0), 0.5);
        assert!((shift_time(0.5, 3.0) - 0.75).abs() < 1e-15);
        assert!((shift_time(0.2, 3.0) - 0.6 / 1.4).abs() < 1e-15);
        assert!(FlowGrid::new(0, 1.0).is_err());
        assert!(FlowGrid::new(4, 0.0).is_err());
        assert!(FlowGrid::from_times(vec![1.0, 1.0, 0.0]).is_err());
        assert!(FlowGrid::from_times(vec![1.0, 0.3, 0.0]).is_ok());
    }
}
