//! DDPM noise schedules and strided timestep spacings, all in `f64` on the host.
//!
//! Ho et al. notation: `β_t` is the variance added at training step `t`, `α_t = 1 − β_t`,
//! `ᾱ_t = Π_{s ≤ t} α_s`, and `x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε`. Timesteps are 0-based
//! (`0..T`), as in diffusers.

use crate::error::{Result, SamplerError};

/// How the `T` training betas are laid out.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum BetaSchedule {
    /// `β` evenly spaced from `beta_start` to `beta_end` (DDPM: 1e-4 → 0.02).
    Linear {
        /// First beta.
        beta_start: f64,
        /// Last beta.
        beta_end: f64,
    },
    /// `√β` evenly spaced, then squared (Stable Diffusion 1.x: 0.00085 → 0.012).
    ScaledLinear {
        /// First beta.
        beta_start: f64,
        /// Last beta.
        beta_end: f64,
    },
    /// Nichol & Dhariwal's cosine schedule:
    /// `ᾱ(t) = f(t)/f(0)`, `f(t) = cos²(((t/T) + s)/(1 + s) · π/2)`, `s = 0.008`, and
    /// `β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), max_beta)`. Computed with floating-point `i/T`:
    /// several Rust ports divide integers here and get a wrong schedule.
    SquaredCos {
        /// Cap on each beta (0.999 in the paper and diffusers).
        max_beta: f64,
    },
}

impl BetaSchedule {
    /// DDPM's linear schedule, 1e-4 → 0.02.
    pub fn ddpm_linear() -> Self {
        BetaSchedule::Linear {
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }

    /// Stable Diffusion 1.x's scaled-linear schedule, 0.00085 → 0.012.
    pub fn stable_diffusion() -> Self {
        BetaSchedule::ScaledLinear {
            beta_start: 0.00085,
            beta_end: 0.012,
        }
    }

    /// The cosine schedule with `max_beta = 0.999`.
    pub fn squared_cos() -> Self {
        BetaSchedule::SquaredCos { max_beta: 0.999 }
    }
}

/// The cosine schedule's `f(t)` for `t ∈ [0, 1]`: `cos²((t + 0.008)/1.008 · π/2)`.
pub fn squared_cos_alpha_bar(t: f64) -> f64 {
    const S: f64 = 0.008;
    ((t + S) / (1.0 + S) * std::f64::consts::FRAC_PI_2)
        .cos()
        .powi(2)
}

fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    (0..n)
        .map(|i| start + (end - start) * i as f64 / (n - 1) as f64)
        .collect()
}

/// A DDPM training schedule: `β_t`, `α_t` and `ᾱ_t` for `t = 0..T`.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// Builds the schedule for `num_train_timesteps` training steps (1000 is usual).
    ///
    /// # Errors
    /// Zero timesteps, or betas outside `(0, 1)`.
    ///
    /// # Example
    /// ```
    /// use align_samplers::{BetaSchedule, NoiseSchedule};
    /// let s = NoiseSchedule::new(BetaSchedule::ddpm_linear(), 1000).unwrap();
    /// assert!((s.beta(0) - 1e-4).abs() < 1e-12 && (s.beta(999) - 0.02).abs() < 1e-12);
    /// assert!(s.alpha_bar(999) < 1e-4);
    /// ```
    pub fn new(schedule: BetaSchedule, num_train_timesteps: usize) -> Result<Self> {
        let t = num_train_timesteps;
        if t == 0 {
            return Err(SamplerError::config(
                "num_train_timesteps",
                "must be at least 1",
            ));
        }
        let betas: Vec<f64> = match schedule {
            BetaSchedule::Linear {
                beta_start,
                beta_end,
            } => linspace(beta_start, beta_end, t),
            BetaSchedule::ScaledLinear {
                beta_start,
                beta_end,
            } => {
                if beta_start < 0.0 || beta_end < 0.0 {
                    return Err(SamplerError::config(
                        "beta_start/beta_end",
                        "scaled-linear betas must be non-negative",
                    ));
                }
                linspace(beta_start.sqrt(), beta_end.sqrt(), t)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            BetaSchedule::SquaredCos { max_beta } => (0..t)
                .map(|i| {
                    let t1 = i as f64 / t as f64;
                    let t2 = (i + 1) as f64 / t as f64;
                    (1.0 - squared_cos_alpha_bar(t2) / squared_cos_alpha_bar(t1)).min(max_beta)
                })
                .collect(),
        };
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(b.is_finite() && **b > 0.0 && **b < 1.0))
        {
            return Err(SamplerError::config(
                "beta schedule",
                format!("beta[{i}] = {b} is outside (0, 1)"),
            ));
        }
        let mut acc = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Ok(Self {
            betas,
            alphas_cumprod,
        })
    }

    /// Number of training timesteps `T`.
    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// `β_t`.
    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t]
    }

    /// `ᾱ_t`.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t]
    }

    /// All `ᾱ_t`.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// All `β_t`.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }
}

/// How `K` sampling timesteps are picked from the `T` training timesteps (diffusers'
/// `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TimestepSpacing {
    /// `(K−1−i)·⌊T/K⌋ + offset` — Stable Diffusion's default with `offset = 1`.
    Leading {
        /// Added to every timestep (`steps_offset`).
        offset: usize,
    },
    /// `round(T − i·T/K) − 1`: always includes the noisiest timestep `T − 1`.
    Trailing,
    /// `round` of `K` evenly spaced values from `T − 1` down to 0.
    Linspace,
}

/// `K` descending sampling timesteps out of `T` training timesteps.
///
/// # Errors
/// `K = 0`, `K > T`, or an offset that pushes a timestep past `T − 1`.
///
/// # Example
/// ```
/// use align_samplers::{strided_timesteps, TimestepSpacing};
/// let t = strided_timesteps(1000, 4, TimestepSpacing::Leading { offset: 1 }).unwrap();
/// assert_eq!(t, vec![751, 501, 251, 1]);
/// assert_eq!(strided_timesteps(1000, 4, TimestepSpacing::Trailing).unwrap(), vec![999, 749, 499, 249]);
/// ```
pub fn strided_timesteps(
    num_train_timesteps: usize,
    num_steps: usize,
    spacing: TimestepSpacing,
) -> Result<Vec<usize>> {
    let (t, k) = (num_train_timesteps, num_steps);
    if k == 0 || k > t {
        return Err(SamplerError::config(
            "num_steps",
            format!("{k} must be in 1..={t} (the training timesteps)"),
        ));
    }
    let steps: Vec<usize> = match spacing {
        TimestepSpacing::Leading { offset } => {
            let ratio = t / k;
            (0..k).rev().map(|i| i * ratio + offset).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t as f64 / k as f64;
            (0..k)
                .map(|i| ((t as f64 - i as f64 * ratio).round() as usize).saturating_sub(1))
                .collect()
        }
        TimestepSpacing::Linspace => linspace(0.0, (t - 1) as f64, k)
            .into_iter()
            .rev()
            .map(|v| v.round() as usize)
            .collect(),
    };
    if let Some(bad) = steps.iter().find(|&&s| s >= t) {
        return Err(SamplerError::config(
            "timestep_spacing",
            format!("timestep {bad} is not below {t}; lower the offset"),
        ));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spacings_match_diffusers() {
        assert_eq!(
            strided_timesteps(1000, 10, TimestepSpacing::Leading { offset: 1 }).unwrap(),
            vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
        );
        assert_eq!(
            strided_timesteps(1000, 10, TimestepSpacing::Trailing).unwrap(),
            vec![999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
        );
        assert_eq!(
            strided_timesteps(1000, 10, TimestepSpacing::Linspace).unwrap(),
            vec![999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
        );
        assert!(strided_timesteps(10, 0, TimestepSpacing::Trailing).is_err());
        assert!(strided_timesteps(10, 11, TimestepSpacing::Trailing).is_err());
        assert!(strided_timesteps(10, 10, TimestepSpacing::Leading { offset: 1 }).is_err());
    }

    #[test]
    fn linear_and_scaled_linear_endpoints() {
        let s = NoiseSchedule::new(BetaSchedule::stable_diffusion(), 1000).unwrap();
        assert!((s.beta(0) - 0.00085).abs() < 1e-15);
        assert!((s.beta(999) - 0.012).abs() < 1e-15);
        // Hand value: √β evenly spaced, mid-point (i = 500 of 999).
        let mid =
            (0.00085f64.sqrt() + (0.012f64.sqrt() - 0.00085f64.sqrt()) * 500.0 / 999.0).powi(2);
        assert!((s.beta(500) - mid).abs() < 1e-15);
        assert!(
            NoiseSchedule::new(
                BetaSchedule::Linear {
                    beta_start: 0.0,
                    beta_end: 0.02
                },
                10
            )
            .is_err()
        );
        assert!(NoiseSchedule::new(BetaSchedule::ddpm_linear(), 0).is_err());
    }

    proptest! {
        #[test]
        fn squared_cos_matches_its_closed_form(t in 2usize..2000) {
            let s = NoiseSchedule::new(BetaSchedule::squared_cos(), t).unwrap();
            let f0 = squared_cos_alpha_bar(0.0);
            let mut clipped = false;
            for i in 0..t {
                let ratio = squared_cos_alpha_bar((i + 1) as f64 / t as f64)
                    / squared_cos_alpha_bar(i as f64 / t as f64);
                let beta = (1.0 - ratio).min(0.999);
                prop_assert!((s.beta(i) - beta).abs() < 1e-12, "beta[{i}]");
                clipped |= 1.0 - ratio > 0.999;
                if !clipped {
                    // ᾱ_i = f((i+1)/T) / f(0) until a beta is capped.
                    let closed = squared_cos_alpha_bar((i + 1) as f64 / t as f64) / f0;
                    prop_assert!((s.alpha_bar(i) - closed).abs() < 1e-9 * closed.max(1e-12) + 1e-15,
                        "alpha_bar[{i}] {} vs {closed}", s.alpha_bar(i));
                }
            }
            // The integer-division bug (t1 = i / T = 0 for all i < T) gives beta 0 everywhere but
            // the last step; make sure the schedule actually increases.
            prop_assert!(s.betas().windows(2).all(|w| w[0] <= w[1]));
            prop_assert!(s.beta(0) < s.beta(t - 1));
            prop_assert!(s.beta(0) > 0.0);
        }

        #[test]
        fn strided_timesteps_are_descending_and_in_range(t in 1usize..3000, k in 1usize..200) {
            prop_assume!(k <= t);
            for spacing in [TimestepSpacing::Leading { offset: 0 }, TimestepSpacing::Trailing, TimestepSpacing::Linspace] {
                let steps = strided_timesteps(t, k, spacing).unwrap();
                prop_assert_eq!(steps.len(), k);
                prop_assert!(steps.windows(2).all(|w| w[0] > w[1]), "{spacing:?}: {steps:?}");
                prop_assert!(steps.iter().all(|&s| s < t));
            }
        }
    }
}
