//! KL as a reward (Flow-GRPO's `sample.kl_reward`): instead of (or beside) a KL term in the
//! loss, each trained step's reward is the terminal reward minus the policy's per-step KL to the
//! reference at the rollout's own state,
//!
//! ```text
//! KL_{i,k} = R(‖μ_old(x_k) − μ_ref(x_k)‖²) / (2 s_k²)            (closed form, s_k the step's std)
//! R_{i,k}  = r_i − β_r · KL_{i,k}
//! Â_{i,k}  = group-relative advantage of R_{·,k} (mean per prompt group, per step)
//! ```
//!
//! (`R` the log-prob reduction, mean by default). The KL is measured once per rollout, for the
//! rollout policy, so it is a constant of the update (no gradient flows through it); the
//! policy is pushed toward the reference only through the advantages. It is per step, not
//! summed over the steps — the public code's choice (its config comment recommends the KL
//! *loss* over the KL reward; both are offered here).

use align_core::{Denoiser, Trajectory, gaussian_kl};
use align_samplers::{Sampler, rescore};

use crate::error::{Result, RlError};
use crate::update::Encode;

/// `R_{i,k} = r_i − β_r · KL_{i,k}` for every step of `step_kl` (`[sample][step]`).
///
/// # Errors
/// Mismatched lengths, non-finite values, a negative or non-finite β_r.
pub fn kl_rewards(rewards: &[f64], step_kl: &[Vec<f64>], beta: f64) -> Result<Vec<Vec<f64>>> {
    if !(beta.is_finite() && beta >= 0.0) {
        return Err(RlError::config("kl_reward", format!("{beta} must be ≥ 0")));
    }
    if step_kl.len() != rewards.len() {
        return Err(align_core::CoreError::shape("step KLs", rewards.len(), step_kl.len()).into());
    }
    rewards
        .iter()
        .zip(step_kl)
        .map(|(&r, kl)| {
            kl.iter()
                .map(|&k| {
                    let v = r - beta * k;
                    if v.is_finite() {
                        Ok(v)
                    } else {
                        Err(RlError::NonFinite {
                            what: "a KL-penalised step reward".into(),
                            value: v,
                        })
                    }
                })
                .collect()
        })
        .collect()
}

/// The rollout policy's closed-form KL to `reference` at each of `steps` (0 elsewhere),
/// `[sample][step]`: the reference's step mean at the stored state against the rollout's stored
/// mean (`trajectory.means`), with the step's own standard deviation.
///
/// # Errors
/// A trajectory without stored means, a deterministic step, a failing encoder or sampler.
pub fn trajectory_step_kl<M, S>(
    reference: &M,
    sampler: &S,
    trajectory: &Trajectory,
    steps: &[usize],
    encode: &Encode<'_, M>,
) -> Result<Vec<Vec<f64>>>
where
    M: Denoiser,
    S: Sampler + ?Sized,
{
    let b = trajectory.batch_size();
    let k_total = trajectory.num_steps();
    if trajectory.means.len() != k_total {
        return Err(RlError::config(
            "kl_reward",
            "the KL reward needs the rollout's step means (roll out with keep_means)",
        ));
    }
    let (rc, ru) = encode(reference, &trajectory.condition_ids).map_err(RlError::Encode)?;
    let mut out = vec![vec![0.0; k_total]; b];
    for &k in steps {
        let std = trajectory.stds.get(k).copied().unwrap_or(0.0);
        if std <= 0.0 {
            return Err(RlError::config(
                "kl_reward",
                format!("step {k} is deterministic: no KL between its transition kernels"),
            ));
        }
        let r = rescore(reference, sampler, trajectory, k, &rc, ru.as_ref())?;
        let device = r.mean.device();
        let kl = gaussian_kl(
            trajectory.means[k].clone().to_device(&device),
            std,
            r.mean.detach(),
            std,
            trajectory.reduction,
        );
        let values = kl
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| RlError::Readback(format!("reading the step KL: {e:?}")))?;
        for (row, v) in out.iter_mut().zip(values) {
            row[k] = f64::from(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_rewards_subtract_the_weighted_kl() {
        let r = kl_rewards(&[1.0, 0.5], &[vec![0.0, 2.0], vec![1.0, 0.5]], 0.1).unwrap();
        assert_eq!(r, vec![vec![1.0, 1.0 - 0.2], vec![0.5 - 0.1, 0.5 - 0.05]]);
        assert_eq!(
            kl_rewards(&[0.3], &[vec![5.0]], 0.0).unwrap(),
            vec![vec![0.3]]
        );
        assert!(kl_rewards(&[1.0], &[vec![0.0]], -1.0).is_err());
        assert!(kl_rewards(&[1.0, 2.0], &[vec![0.0]], 0.1).is_err());
        assert!(kl_rewards(&[f64::NAN], &[vec![0.0]], 0.1).is_err());
    }
}
