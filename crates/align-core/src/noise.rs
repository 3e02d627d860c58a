//! Host-side, counter-keyed Gaussian noise.
//!
//! Every random number a sampler uses comes from here, never from the device RNG: burn's
//! device RNGs are process-global and differ between backends. A noise tensor is a pure
//! function of its keys, so any trajectory can be replayed bit-exactly, on any backend, in any
//! batch composition.
//!
//! A [`NoiseKey`] is `(seed, sample, step)`. The stream is ChaCha8 keyed by `seed`
//! (expanded with rand_core's portable `seed_from_u64`), with the ChaCha *stream id* set to
//! `sample` and the block counter starting at `step · 2^36` words. Each step therefore owns
//! 2^36 words (enough for 2^34 normals), and different samples never share a stream.
//! Normals are drawn by the Box–Muller transform in `f64` and rounded to `f32`.
//!
//! [`noise_tensor`] draws its rows (one key each) in parallel on rayon's thread pool once a
//! call asks for at least 16 384 normals; each row is a function of its key alone, so the
//! result is bit-identical to drawing the rows one after another (tested).

use burn::tensor::{Device, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;

use crate::error::{CoreError, Result};

/// Normals per [`noise_tensor`] call from which rows are drawn in parallel.
const PARALLEL_MIN_VALUES: usize = 1 << 14;

/// Words of the ChaCha stream reserved for one step (`2^36`).
const WORDS_PER_STEP_LOG2: u32 = 36;

/// The key of one noise draw: which run (`seed`), which trajectory (`sample`), which step.
///
/// By convention step 0 is the initial noise `x_T` of a trajectory and step `k + 1` is the
/// noise injected by transition `k` (see [`NoiseKey::initial`] and [`NoiseKey::transition`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NoiseKey {
    /// Run-level seed.
    pub seed: u64,
    /// Global index of the trajectory within the run (not its position in a batch).
    pub sample: u64,
    /// Counter within the trajectory.
    pub step: u32,
}

impl NoiseKey {
    /// The key of a trajectory's initial noise.
    pub fn initial(seed: u64, sample: u64) -> Self {
        Self {
            seed,
            sample,
            step: 0,
        }
    }

    /// The key of the noise injected by transition `k` (0-based, generation order).
    pub fn transition(seed: u64, sample: u64, k: usize) -> Self {
        Self {
            seed,
            sample,
            step: u32::try_from(k + 1).unwrap_or(u32::MAX),
        }
    }

    fn rng(&self) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(self.sample);
        rng.set_word_pos(u128::from(self.step) << WORDS_PER_STEP_LOG2);
        rng
    }
}

/// Fills `out` with standard-normal numbers for `key`.
fn fill_standard_normal(key: NoiseKey, out: &mut [f32]) {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    let mut rng = key.rng();
    for pair in out.chunks_mut(2) {
        // u1 in (0, 1] so that ln(u1) is finite; u2 in [0, 1).
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 * SCALE;
        let u2 = (rng.next_u64() >> 11) as f64 * SCALE;
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        pair[0] = (r * c) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (r * s) as f32;
        }
    }
}

/// `n` standard-normal `f32` values for one key.
///
/// # Example
/// ```
/// use align_core::{standard_normal, NoiseKey};
/// let a = standard_normal(NoiseKey::initial(7, 0), 4);
/// let b = standard_normal(NoiseKey::initial(7, 0), 4);
/// assert_eq!(a, b);
/// assert_ne!(a, standard_normal(NoiseKey::initial(7, 1), 4));
/// ```
pub fn standard_normal(key: NoiseKey, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    fill_standard_normal(key, &mut out);
    out
}

/// A `[B, C, H, W]` tensor of standard normals, row `b` drawn from `keys[b]`.
///
/// # Shapes
/// - `shape`: `[C, H, W]` of one sample; output `[keys.len(), C, H, W]`.
///
/// # Errors
/// [`CoreError::Shape`] if `keys` is empty or a dimension of `shape` is zero.
pub fn noise_tensor(keys: &[NoiseKey], shape: [usize; 3], device: &Device) -> Result<Tensor<4>> {
    if keys.is_empty() {
        return Err(CoreError::shape("noise keys", "at least one key", 0));
    }
    if shape.contains(&0) {
        return Err(CoreError::shape(
            "noise sample shape",
            "no zero dimension",
            format!("{shape:?}"),
        ));
    }
    let per = shape[0] * shape[1] * shape[2];
    let mut values = vec![0.0f32; per * keys.len()];
    // Each row is its own stream, so rows are drawn in parallel (rayon's pool) without
    // changing a bit; small draws stay on this thread, where spawning would cost more.
    if values.len() >= PARALLEL_MIN_VALUES && keys.len() > 1 {
        values
            .par_chunks_mut(per)
            .zip(keys.par_iter())
            .for_each(|(row, key)| fill_standard_normal(*key, row));
    } else {
        for (row, key) in values.chunks_mut(per).zip(keys) {
            fill_standard_normal(*key, row);
        }
    }
    let data = TensorData::new(values, [keys.len(), shape[0], shape[1], shape[2]]);
    Ok(Tensor::from_data(data, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_independent_and_reproducible() {
        let a = standard_normal(NoiseKey::transition(1, 2, 3), 1001);
        assert_eq!(a, standard_normal(NoiseKey::transition(1, 2, 3), 1001));
        assert_ne!(a, standard_normal(NoiseKey::transition(1, 2, 4), 1001));
        assert_ne!(a, standard_normal(NoiseKey::transition(1, 3, 3), 1001));
        assert_ne!(a, standard_normal(NoiseKey::transition(2, 2, 3), 1001));
        // A prefix of a longer draw is the shorter draw.
        assert_eq!(
            &standard_normal(NoiseKey::transition(1, 2, 3), 2000)[..1001],
            &a[..]
        );
    }

    #[test]
    fn initial_and_first_transition_differ() {
        assert_ne!(
            standard_normal(NoiseKey::initial(5, 0), 8),
            standard_normal(NoiseKey::transition(5, 0, 0), 8)
        );
    }

    #[test]
    fn moments_are_standard_normal() {
        let n = 200_000;
        let x = standard_normal(NoiseKey::initial(42, 9), n);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt =
            x.iter().map(|&v| (v as f64 - mean).powi(4)).sum::<f64>() / n as f64 / var.powi(2);
        // Standard errors: mean 0.0022, var 0.0032, kurtosis ~0.011.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "var {var}");
        assert!((kurt - 3.0).abs() < 0.06, "kurtosis {kurt}");
    }

    #[test]
    fn tensor_rows_follow_their_keys() {
        let device = crate::test_device();
        let keys = [NoiseKey::initial(3, 10), NoiseKey::initial(3, 11)];
        let t = noise_tensor(&keys, [2, 3, 1], &device).unwrap();
        let v = t.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(&v[..6], &standard_normal(keys[0], 6)[..]);
        assert_eq!(&v[6..], &standard_normal(keys[1], 6)[..]);
        assert!(noise_tensor(&[], [1, 1, 1], &device).is_err());
        assert!(noise_tensor(&keys, [1, 0, 1], &device).is_err());
    }

    /// The stream itself is pinned: these bits were produced by the sequential
    /// implementation before rows were drawn in parallel, and every stored trajectory and
    /// resumed run depends on them.
    #[test]
    fn the_stream_is_unchanged() {
        let v = standard_normal(NoiseKey::transition(7, 3, 2), 5);
        let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(
            bits,
            [3181515968, 3182293723, 3216432591, 1051894471, 3208431176]
        );
    }

    /// Above the parallel threshold (32 rows of an odd 675 values: 21 600 normals) every row
    /// is still its key's own sequential draw.
    #[test]
    fn parallel_rows_equal_sequential_draws() {
        let device = crate::test_device();
        let keys: Vec<NoiseKey> = (0..32)
            .map(|i| NoiseKey::transition(9, 100 + i, 4))
            .collect();
        const { assert!(32 * 675 >= PARALLEL_MIN_VALUES) };
        let t = noise_tensor(&keys, [3, 15, 15], &device).unwrap();
        let v = t.into_data().try_to_vec::<f32>().unwrap();
        for (row, key) in v.chunks(675).zip(&keys) {
            assert_eq!(row, &standard_normal(*key, 675)[..]);
        }
    }
}
