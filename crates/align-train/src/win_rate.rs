//! The gold win rate of a trained model over its base, with a bootstrap interval.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// How often the trained model's image beats the base model's image from the same prompt and
/// noise under the gold verifier (partial credit; ties count ½), with a 95 % bootstrap
/// interval over the images.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WinRate {
    /// The win rate.
    pub rate: f64,
    /// Lower end of the 95 % interval.
    pub low: f64,
    /// Upper end of the 95 % interval.
    pub high: f64,
}

impl WinRate {
    /// The win rate of `new` over `base`, or `None` when the two lists do not pair up (a base
    /// measured before per-image scores were kept, or with other evaluation seeds).
    pub fn paired(new: &[f64], base: &[f64]) -> Option<Self> {
        if new.is_empty() || new.len() != base.len() {
            return None;
        }
        let (rate, low, high) = win_rate(new, base);
        Some(Self { rate, low, high })
    }
}

/// Win rate of `new` over `base` (per image pair: 1 if `new` is higher, ½ if equal, else 0),
/// and its 95 % percentile-bootstrap interval (2000 resamples of the pairs, fixed seed):
/// `(rate, low, high)`.
pub fn win_rate(new: &[f64], base: &[f64]) -> (f64, f64, f64) {
    let wins: Vec<f64> = new
        .iter()
        .zip(base)
        .map(|(a, b)| {
            if a > b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            }
        })
        .collect();
    let n = wins.len().max(1);
    let mean = wins.iter().sum::<f64>() / n as f64;
    if wins.is_empty() {
        return (mean, mean, mean);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0x626f_6f74);
    let mut boots: Vec<f64> = (0..2000)
        .map(|_| {
            (0..n)
                .map(|_| wins[(rng.next_u64() % n as u64) as usize])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    boots.sort_by(f64::total_cmp);
    (mean, boots[50], boots[1949])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn win_rate_counts_ties_as_half_and_brackets_its_mean() {
        let (w, lo, hi) = win_rate(&[1.0, 0.5, 0.2, 0.7], &[0.5, 0.5, 0.3, 0.1]);
        assert!((w - (1.0 + 0.5 + 0.0 + 1.0) / 4.0).abs() < 1e-12);
        assert!(lo <= w && w <= hi && lo >= 0.0 && hi <= 1.0);
        let (w, lo, hi) = win_rate(&[0.3; 10], &[0.3; 10]);
        assert_eq!((w, lo, hi), (0.5, 0.5, 0.5));
        assert!(WinRate::paired(&[0.1], &[0.1, 0.2]).is_none());
        assert!(WinRate::paired(&[], &[]).is_none());
    }

    /// The interval of n fair coin flips has the binomial width: about ±1.96·√(¼/n).
    #[test]
    fn the_interval_has_the_binomial_width() {
        let n = 400;
        let new: Vec<f64> = (0..n).map(|i| f64::from(i % 2 == 0)).collect();
        let base = vec![0.5; n];
        let (w, lo, hi) = win_rate(&new, &base);
        assert!((w - 0.5).abs() < 1e-12);
        let half = 1.96 * (0.25 / n as f64).sqrt();
        assert!(
            ((hi - lo) / 2.0 - half).abs() < 0.25 * half,
            "{lo} {hi} vs ±{half}"
        );
    }
}
