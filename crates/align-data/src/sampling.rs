//! Small integer-sampling helpers on top of `rand_core` (the workspace does not use `rand`).
//!
//! Everything here is a pure function of the generator's output, so results are portable
//! and reproducible across platforms.

use rand_core::RngCore;

/// A uniform integer in `0..n` (`n ≥ 1`), by rejection: draws `u64`s until one falls below
/// the largest multiple of `n`, then reduces it modulo `n`. Unbiased. Returns 0 for `n = 0`.
pub(crate) fn below<R: RngCore + ?Sized>(rng: &mut R, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let n = n as u64;
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            // `x % n < n`, which came from a `usize`.
            return (x % n) as usize;
        }
    }
}

/// A uniform integer in `lo..=hi` (`lo ≤ hi`; returns `lo` otherwise).
pub(crate) fn inclusive<R: RngCore + ?Sized>(rng: &mut R, lo: usize, hi: usize) -> usize {
    if hi <= lo {
        return lo;
    }
    lo + below(rng, hi - lo + 1)
}

/// Fisher–Yates shuffle in place.
pub(crate) fn shuffle<T, R: RngCore + ?Sized>(rng: &mut R, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i + 1);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    #[test]
    fn below_covers_range_uniformly() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut hist = [0usize; 7];
        for _ in 0..7000 {
            hist[below(&mut rng, 7)] += 1;
        }
        assert!(hist.iter().all(|&h| (800..1200).contains(&h)), "{hist:?}");
        assert_eq!(below(&mut rng, 0), 0);
        assert_eq!(below(&mut rng, 1), 0);
        assert_eq!(inclusive(&mut rng, 4, 4), 4);
        for _ in 0..100 {
            assert!((3..=5).contains(&inclusive(&mut rng, 3, 5)));
        }
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut v: Vec<u32> = (0..50).collect();
        shuffle(&mut rng, &mut v);
        assert_ne!(v, (0..50).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }
}
