//! MixGRPO's sliding ODE/SDE window (Li et al., "MixGRPO: Unlocking Flow-based GRPO Efficiency
//! with Mixed ODE-SDE", arXiv 2507.21802; `GRPOTrainingStates` of Tencent-Hunyuan/MixGRPO).
//!
//! Each iteration rolls out with the SDE on a window of `size` consecutive steps `[l, l + size)`
//! and the Euler ODE elsewhere, and trains the window's steps only. The window starts at the
//! first step and moves by `stride` steps every `τ` iterations ("progressive"):
//!
//! ```text
//! l(0) = 0;   after each iteration, once τ(l) iterations have passed at l:  l ← l + stride
//! l > L  ⇒  l ← 0 (roll back),           L = K − 2 (the last two steps are never trained)
//! window(n) = [l(n), min(l(n) + size, L))
//! ```
//!
//! with `τ(l)` from [`WindowDecay`]: constant (`shift_every`), or shrinking as the window moves
//! toward the clean end — linear `τ(l) = max(τ_min, ⌊τ_max (1 − l/L) + τ_min l/L⌋)` or
//! exponential `τ(l) = ⌈shift_every · e^{−k · max(0, l − λ)}⌉` (the public code's "decay" and
//! "exp_decay" strategies; the window size does not decay). One departure: where the public
//! code reaches `l = L` it trains an empty window for one interval; here `l ≥ L` rolls back.
//!
//! Public defaults (Flux, 25 steps): size 4, `τ` = 25, stride 1, roll back; its "Flash*" variant
//! freezes the window with stride 0.

use crate::error::{Result, RlError};

/// How MixGRPO's shift interval `τ` changes as the window moves.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum WindowDecay {
    /// `τ = shift_every` throughout ("progressive").
    Constant,
    /// `τ(l) = max(min, ⌊max (1 − l/L) + min · l/L⌋)` (the public code: 1 and 10).
    Linear {
        /// `τ_min`.
        min: usize,
        /// `τ_max`.
        max: usize,
    },
    /// `τ(l) = ⌈shift_every · e^{−rate · max(0, l − threshold)}⌉` (the public code: 0.1, 13).
    Exponential {
        /// `k`.
        rate: f64,
        /// `λ`: the window start from which `τ` shrinks.
        threshold: usize,
    },
}

/// MixGRPO's window schedule (the `[mix_grpo]` table of `align train`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixGrpoWindow {
    /// SDE (and trained) steps per rollout.
    pub size: usize,
    /// `τ`: iterations before the window moves (constant schedule; the exponential decay's
    /// starting value; unused by the linear decay, whose `τ` runs from `max` to `min`).
    pub shift_every: usize,
    /// Steps the window moves by (0 = frozen).
    pub stride: usize,
    /// How `τ` shrinks.
    pub decay: WindowDecay,
}

impl Default for MixGrpoWindow {
    fn default() -> Self {
        Self {
            size: 4,
            shift_every: 25,
            stride: 1,
            decay: WindowDecay::Constant,
        }
    }
}

impl MixGrpoWindow {
    /// Checks the fields against a rollout of `num_steps` steps.
    ///
    /// # Errors
    /// [`RlError::Config`] naming the field.
    pub fn validate(&self, num_steps: usize) -> Result<()> {
        if num_steps < 3 {
            return Err(RlError::config(
                "train_steps",
                format!("MixGRPO trains windows inside the first K − 2 steps: K = {num_steps} < 3"),
            ));
        }
        if self.size == 0 || self.size > num_steps - 2 {
            return Err(RlError::config(
                "size",
                format!("{} must lie in 1..={} (K − 2)", self.size, num_steps - 2),
            ));
        }
        if self.shift_every == 0 {
            return Err(RlError::config("shift_every", "must be ≥ 1"));
        }
        match self.decay {
            WindowDecay::Linear { min, max } if min == 0 || min > max => Err(RlError::config(
                "decay",
                format!("linear: need 1 ≤ min ≤ max, got {min}, {max}"),
            )),
            WindowDecay::Exponential { rate, .. } if !(rate.is_finite() && rate >= 0.0) => Err(
                RlError::config("decay", format!("exponential rate {rate} must be ≥ 0")),
            ),
            _ => Ok(()),
        }
    }

    /// `τ(l)` for a window starting at `l` with `last = L`.
    fn interval(&self, l: usize, last: usize) -> usize {
        match self.decay {
            WindowDecay::Constant => self.shift_every,
            WindowDecay::Linear { min, max } => {
                let p = l as f64 / last as f64;
                ((max as f64 * (1.0 - p) + min as f64 * p).floor() as usize).max(min)
            }
            WindowDecay::Exponential { rate, threshold } => {
                let over = l.saturating_sub(threshold) as f64;
                ((self.shift_every as f64 * (-rate * over).exp()).ceil() as usize).max(1)
            }
        }
    }

    /// The window `[start, end)` of iteration `iteration` (0-based) for a rollout of
    /// `num_steps` steps: a pure function of the iteration, so a resumed run gets the same.
    pub fn window(&self, iteration: usize, num_steps: usize) -> (usize, usize) {
        let last = num_steps.saturating_sub(2).max(1);
        let (mut l, mut since) = (0usize, 0usize);
        for _ in 0..iteration {
            since += 1;
            if since >= self.interval(l, last) {
                since = 0;
                l += self.stride;
                if l >= last {
                    l = 0;
                }
            }
        }
        (l, (l + self.size).min(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progressive_window_moves_every_interval_and_rolls_back() {
        let w = MixGrpoWindow {
            size: 4,
            shift_every: 5,
            stride: 1,
            decay: WindowDecay::Constant,
        };
        w.validate(10).unwrap();
        // K = 10: L = 8; the start moves 0, 1, … every 5 iterations, the window capped at 8.
        assert_eq!(w.window(0, 10), (0, 4));
        assert_eq!(w.window(4, 10), (0, 4));
        assert_eq!(w.window(5, 10), (1, 5));
        assert_eq!(w.window(24, 10), (4, 8));
        assert_eq!(w.window(25, 10), (5, 8));
        assert_eq!(w.window(35, 10), (7, 8));
        // l = 8 = L rolls back to 0.
        assert_eq!(w.window(40, 10), (0, 4));
        // Stride 0 freezes the window (MixGRPO-Flash*).
        let frozen = MixGrpoWindow {
            stride: 0,
            ..w.clone()
        };
        assert_eq!(frozen.window(1000, 10), (0, 4));
        // The public defaults on 25 steps: after 300 iterations the start has reached 12.
        let public = MixGrpoWindow::default();
        assert_eq!(public.window(299, 25), (11, 15));
        assert_eq!(public.window(300, 25), (12, 16));
    }

    #[test]
    fn decays_shorten_the_interval_toward_the_clean_end() {
        let lin = MixGrpoWindow {
            decay: WindowDecay::Linear { min: 1, max: 10 },
            ..MixGrpoWindow::default()
        };
        // L = 23: τ(0) = 10, τ(23) → 1; τ(l) = max(1, ⌊10 − 9 l / 23⌋).
        assert_eq!(lin.interval(0, 23), 10);
        assert_eq!(lin.interval(10, 23), 6);
        assert_eq!(lin.interval(23, 23), 1);
        // The start after n iterations is the number of completed intervals.
        assert_eq!(lin.window(10, 25).0, 1);
        assert_eq!(lin.window(18, 25).0, 1);
        assert_eq!(lin.window(19, 25).0, 2); // τ(1) = ⌊10 − 9/23⌋ = 9
        let exp = MixGrpoWindow {
            decay: WindowDecay::Exponential {
                rate: 0.1,
                threshold: 13,
            },
            ..MixGrpoWindow::default()
        };
        assert_eq!(exp.interval(13, 23), 25);
        assert_eq!(
            exp.interval(18, 23),
            (25.0 * (-0.5f64).exp()).ceil() as usize
        );
        // Monotone: later windows never wait longer.
        for l in 1..23 {
            assert!(lin.interval(l, 23) <= lin.interval(l - 1, 23));
            assert!(exp.interval(l, 23) <= exp.interval(l - 1, 23));
        }
    }

    #[test]
    fn invalid_windows_are_refused_by_field() {
        let w = MixGrpoWindow::default();
        assert!(
            w.validate(2)
                .unwrap_err()
                .to_string()
                .contains("train_steps")
        );
        assert!(w.validate(5).unwrap_err().to_string().contains("size"));
        let w = MixGrpoWindow {
            shift_every: 0,
            ..MixGrpoWindow { size: 2, ..w }
        };
        assert!(
            w.validate(10)
                .unwrap_err()
                .to_string()
                .contains("shift_every")
        );
        let w = MixGrpoWindow {
            shift_every: 1,
            decay: WindowDecay::Linear { min: 3, max: 2 },
            ..w
        };
        assert!(w.validate(10).unwrap_err().to_string().contains("decay"));
    }
}
