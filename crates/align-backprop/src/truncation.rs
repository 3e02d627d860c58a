//! Which sampler steps carry gradient: truncated backpropagation through the sampler.
//!
//! The sampler always runs all `T` steps; a truncation only chooses the first differentiated
//! step `s`, after which the last `T − s` steps carry gradient (`x_s` is a `stop_grad`):
//!
//! | policy | differentiated steps | method |
//! |---|---|---|
//! | [`Truncation::Full`] | all `T` | DRaFT |
//! | [`Truncation::LastK`] `(K)` | the last `min(K, T)` | DRaFT-K (K = 1: DRaFT-1) |
//! | [`Truncation::RandomK`] `{ min, max }` | the last `K ~ U{min..=max}`, capped at `T` | AlignProp |
//!
//! (The seed document's DRaFT-K loop runs `T − K` no-grad steps and then `K + 1` steps with
//! gradient, one step too many; here the count is exact and tested.)

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

use crate::error::{BackpropError, Result};

/// A truncation policy (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Every step (DRaFT).
    Full,
    /// The last `K` steps (DRaFT-K); `K = 0` differentiates nothing (zero gradient).
    LastK(usize),
    /// The last `K` steps with `K` uniform in `min..=max` per update (AlignProp's randomised
    /// truncation; the paper draws `K ~ U(0, 50)`).
    RandomK {
        /// Smallest `K`.
        min: usize,
        /// Largest `K`.
        max: usize,
    },
}

impl Truncation {
    /// Checks the bounds.
    ///
    /// # Errors
    /// `min > max` for [`Truncation::RandomK`].
    pub fn validate(&self) -> Result<()> {
        if let Truncation::RandomK { min, max } = self
            && min > max
        {
            return Err(BackpropError::config(
                "truncation",
                format!("RandomK needs min ≤ max, got {min} > {max}"),
            ));
        }
        Ok(())
    }

    /// The number of differentiated steps of a `num_steps`-step sampler (draws from `rng` for
    /// [`Truncation::RandomK`]).
    ///
    /// # Errors
    /// Invalid bounds.
    pub fn differentiated_steps(&self, num_steps: usize, rng: &mut ChaCha8Rng) -> Result<usize> {
        self.validate()?;
        Ok(match *self {
            Truncation::Full => num_steps,
            Truncation::LastK(k) => k.min(num_steps),
            Truncation::RandomK { min, max } => {
                let span = (max - min + 1) as u64;
                (min + (rng.next_u64() % span) as usize).min(num_steps)
            }
        })
    }

    /// The first differentiated step `s` (steps `s..T` carry gradient).
    ///
    /// # Errors
    /// Invalid bounds.
    pub fn first_step(&self, num_steps: usize, rng: &mut ChaCha8Rng) -> Result<usize> {
        Ok(num_steps - self.differentiated_steps(num_steps, rng)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_core::SeedableRng;

    proptest! {
        #[test]
        fn step_counts_are_exact_and_within_the_sampler(t in 0usize..60, k in 0usize..80, lo in 0usize..30, span in 0usize..30, seed in 0u64..1000) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            prop_assert_eq!(Truncation::Full.differentiated_steps(t, &mut rng).unwrap(), t);
            prop_assert_eq!(Truncation::LastK(k).differentiated_steps(t, &mut rng).unwrap(), k.min(t));
            prop_assert_eq!(Truncation::LastK(k).first_step(t, &mut rng).unwrap(), t - k.min(t));
            let r = Truncation::RandomK { min: lo, max: lo + span };
            let n = r.differentiated_steps(t, &mut rng).unwrap();
            prop_assert!(n <= t && (n >= lo.min(t)) && n <= lo + span);
        }
    }

    #[test]
    fn random_k_covers_its_range_and_rejects_inverted_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let r = Truncation::RandomK { min: 0, max: 3 };
        let mut seen = [false; 4];
        for _ in 0..200 {
            seen[r.differentiated_steps(50, &mut rng).unwrap()] = true;
        }
        assert_eq!(seen, [true; 4]);
        assert!(
            Truncation::RandomK { min: 4, max: 3 }
                .differentiated_steps(10, &mut rng)
                .is_err()
        );
    }
}
