//! D3PO (Yang et al. 2024, "Using Human Feedback to Fine-tune Diffusion Models without Any
//! Reward Model"): DPO on the denoising MDP, from pairs of the model's own stored trajectories
//! whose final images were compared.
//!
//! Every step of the preferred trajectory is assumed preferred (the paper's segment
//! assumption); for a step `k` (state `x_k`, action `x_{k+1}`) of winner and loser:
//!
//! ```text
//! inside_k = β [ (log π_θ(x^w_{k+1} | x^w_k) − log π_ref(x^w_{k+1} | x^w_k))
//!              − (log π_θ(x^l_{k+1} | x^l_k) − log π_ref(x^l_{k+1} | x^l_k)) ]
//! L_k      = −mean log σ(inside_k)
//! ```
//!
//! with the sampler's exact transition log-probs (re-scored with
//! [`align_samplers::rescore`], the project's log-prob reduction — the mean over elements, as
//! the official DDPO/D3PO code). One step at a time: the caller sums or samples steps and
//! accumulates gradients (activation memory of one step). The normaliser `Z(s)` cancels only
//! when winner and loser share the state (checklist §6 G8): with different initial noise it is
//! an approximation the paper makes too. At `θ = ref`, `inside = 0` and `L = ln 2`.

use align_core::{Condition, Denoiser, Trajectory};
use align_samplers::{Sampler, rescore};
use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;

use crate::error::{PrefError, Result, check_loss, check_positive};

/// The conditions of one trajectory for the policy and the reference.
pub struct D3poSide<'a> {
    /// The stored trajectory (a rollout with a stochastic sampler).
    pub trajectory: &'a Trajectory,
    /// Its conditions from the policy.
    pub condition: &'a Condition,
    /// Unconditional conditions (when the rollout used guidance ≠ 1).
    pub uncond: Option<&'a Condition>,
    /// The reference's conditions; `None` = the policy's.
    pub reference_condition: Option<(&'a Condition, Option<&'a Condition>)>,
}

/// The D3PO loss of step `k` (module docs) and its `inside` per pair.
///
/// # Errors
/// A non-positive β, a deterministic step, mismatched batches, a non-finite loss.
pub fn d3po_step_loss<M: Denoiser + ?Sized, S: Sampler + ?Sized>(
    policy: &M,
    reference: &M,
    sampler: &S,
    winner: D3poSide<'_>,
    loser: D3poSide<'_>,
    k: usize,
    beta: f64,
) -> Result<(Tensor<1>, Tensor<1>)> {
    check_positive("beta", beta)?;
    if winner.trajectory.batch_size() != loser.trajectory.batch_size() {
        return Err(align_core::CoreError::shape(
            "loser batch",
            winner.trajectory.batch_size(),
            loser.trajectory.batch_size(),
        )
        .into());
    }
    let log_ratio = |side: &D3poSide<'_>| -> Result<Tensor<1>> {
        let lp = |m: &M, c: &Condition, u: Option<&Condition>| -> Result<Tensor<1>> {
            rescore(m, sampler, side.trajectory, k, c, u)
                .map_err(|e| PrefError::config("step", e.to_string()))?
                .log_prob
                .ok_or_else(|| {
                    PrefError::config(
                        "step",
                        format!("step {k} is deterministic: D3PO needs a stochastic sampler"),
                    )
                })
        };
        let (rc, ru) = side
            .reference_condition
            .unwrap_or((side.condition, side.uncond));
        Ok(lp(policy, side.condition, side.uncond)? - lp(reference, rc, ru)?.detach())
    };
    let inside = (log_ratio(&winner)? - log_ratio(&loser)?).mul_scalar(beta);
    let loss = log_sigmoid(inside.clone()).mean().neg();
    check_loss(&loss, format!("the D3PO loss at step {k}"))?;
    Ok((loss, inside))
}
