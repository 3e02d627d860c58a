//! ReFL (Reward Feedback Learning, Xu et al. 2023, the ImageReward paper): the reward of a
//! one-step clean-sample prediction at a random late step, back-propagated through that step
//! only.
//!
//! Roll out all `T` steps without a graph, pick a late step `k` uniformly in
//! `T − stop_max ..= T − stop_min` (the official code: 40 steps, `k ∈ 30..=39`, i.e. stop 1–10
//! steps before the end), rebuild step `k` from the stored `x_k` (a stop-gradient) and score its
//! prediction `x̂₀(x_k; θ)`:
//!
//! ```text
//! L = scale · mean_b φ(r(x̂₀(x_k; θ)_b)),     φ(r) = max(0, margin − r)  (hinge, official: margin 2)
//!                                              φ(r) = −r                  (negative reward)
//! ```
//!
//! The official loss is `relu(2 − reward) · 1e-3` on ImageReward's scale; for a reward in
//! `(0, 1)` (the proxy) the hinge with `margin ≥ 1` is `margin − r` everywhere, i.e. the negative
//! reward up to a constant. The pretraining-loss regulariser of the paper is the caller's (add
//! the gradient of a data loss).

use align_core::{Denoiser, Trajectory};
use align_samplers::{Sampler, pathwise_step};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

use crate::chain::Encode;
use crate::error::{BackpropError, Result};

/// The map from reward to loss.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReflLoss {
    /// `max(0, margin − r)` (official: margin 2).
    Hinge {
        /// The margin.
        margin: f64,
    },
    /// `−r`.
    Negative,
}

impl ReflLoss {
    /// `φ(r)` elementwise.
    pub fn apply(&self, r: Tensor<1>) -> Tensor<1> {
        match *self {
            ReflLoss::Hinge { margin } => relu(r.neg().add_scalar(margin)),
            ReflLoss::Negative => r.neg(),
        }
    }
}

/// The late step of a `num_steps`-step rollout: uniform in `T − stop_max ..= T − stop_min`.
///
/// # Errors
/// `stop_min = 0`, `stop_min > stop_max` or `stop_max > T`.
pub fn late_step(
    num_steps: usize,
    stop_min: usize,
    stop_max: usize,
    rng: &mut ChaCha8Rng,
) -> Result<usize> {
    if stop_min == 0 || stop_min > stop_max || stop_max > num_steps {
        return Err(BackpropError::config(
            "refl stop range",
            format!("need 1 ≤ stop_min ≤ stop_max ≤ {num_steps}, got {stop_min}..={stop_max}"),
        ));
    }
    let span = (stop_max - stop_min + 1) as u64;
    Ok(num_steps - stop_min - (rng.next_u64() % span) as usize)
}

/// The ReFL gradient at step `k` of a rollout (module docs): `(∇_θ L, rewards of x̂₀)`.
///
/// # Errors
/// A step beyond the trajectory, a failing or non-finite reward, a failing encoder, or no
/// trainable parameter reaching the loss.
#[allow(clippy::too_many_arguments)]
pub fn refl_gradients<M, S>(
    policy: &M,
    sampler: &S,
    trajectory: &Trajectory,
    k: usize,
    encode: &Encode<'_, M>,
    reward: &dyn Fn(Tensor<4>) -> std::result::Result<Tensor<1>, String>,
    loss: ReflLoss,
    scale: f64,
) -> Result<(GradientsParams, Vec<f64>)>
where
    M: Module + Denoiser,
    S: Sampler + ?Sized,
{
    if k >= trajectory.num_steps() {
        return Err(BackpropError::config(
            "refl step",
            format!(
                "{k} is beyond the trajectory's {} steps",
                trajectory.num_steps()
            ),
        ));
    }
    let (cond, uncond) = encode(policy).map_err(BackpropError::Encode)?;
    let x = trajectory.latents[k].clone().detach();
    let out = pathwise_step(policy, sampler, trajectory, k, x, &cond, uncond.as_ref())?;
    let r = reward(out.pred_x0).map_err(BackpropError::Reward)?;
    let values: Vec<f64> = r
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| BackpropError::Untracked(format!("reading the reward: {e:?}")))?
        .into_iter()
        .map(f64::from)
        .collect();
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(BackpropError::NonFinite {
            what: "the ReFL reward".into(),
            value: *v,
        });
    }
    let l = loss.apply(r).mean().mul_scalar(scale);
    if !l.is_tracked() {
        return Err(BackpropError::Untracked(
            "no trainable parameter reaches the ReFL loss: put the policy on an autodiff device"
                .into(),
        ));
    }
    Ok((GradientsParams::from_grads(l.backward(), policy), values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn late_steps_stay_in_their_window_and_cover_it() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let k = late_step(40, 1, 10, &mut rng).unwrap();
            assert!((30..=39).contains(&k), "{k}");
            seen.insert(k);
        }
        assert_eq!(seen.len(), 10, "the official window 30..=39");
        assert!(late_step(40, 0, 3, &mut rng).is_err());
        assert!(late_step(40, 4, 3, &mut rng).is_err());
        assert!(late_step(4, 1, 5, &mut rng).is_err());
    }

    #[test]
    fn hinge_and_negative_maps() {
        let device = align_core::test_device();
        let r = Tensor::<1>::from_floats([0.5, 2.5, 1.0], &device);
        let h: Vec<f32> = ReflLoss::Hinge { margin: 2.0 }
            .apply(r.clone())
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(h, vec![1.5, 0.0, 1.0]);
        let n: Vec<f32> = ReflLoss::Negative
            .apply(r)
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(n, vec![-0.5, -2.5, -1.0]);
    }
}
