//! SPO (Liang et al. 2024, step-aware preference optimization): preferences between
//! candidate *steps* from a shared state, judged by a step-aware preference model, with a
//! resampler that starts each step's comparison afresh.
//!
//! At step `k` with state `x_k` (batch `B`), the frozen policy draws `n ≥ 2` candidates
//! `x_{k+1}^{(i)}` (fresh host-keyed noise, [`spo_candidates`]); a step-aware score ranks them
//! (the reward of each candidate's clean-sample prediction is the default stand-in for the
//! paper's step-aware preference model); the best and the worst form the pair
//! ([`spo_select`]; a sample whose candidates all tie is left out), and since both share
//! `x_k`, DPO on the transition is exact (the normaliser cancels):
//!
//! ```text
//! inside = β [ (log π_θ(x^w | x_k) − log π_ref(x^w | x_k)) − (log π_θ(x^l | x_k) − log π_ref(x^l | x_k)) ]
//! L_k    = −mean log σ(inside)
//! ```
//!
//! ([`spo_step_loss`]; the project's mean-reduced transition log-probs). The next state is a
//! uniformly random candidate per sample ([`spo_resample`]), so successive steps' pairs are
//! independent. The code default β = 500 of the checklist is unverified against the paper;
//! the pool size is the caller's.

use align_core::{Condition, Denoiser, LogProbReduction, NoiseKey, noise_tensor};
use align_samplers::{Sampler, Transition, guided_predict};
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

use crate::error::{PrefError, Result, check_loss, check_positive};

fn times(
    sampler: &(impl Sampler + ?Sized),
    k: usize,
    b: usize,
    device: &burn::tensor::Device,
) -> Tensor<1> {
    Tensor::from_data(
        TensorData::new(vec![sampler.model_time(k) as f32; b], [b]),
        device,
    )
}

/// What a step needs besides the model: the state, its conditions and the rollout settings.
pub struct SpoState<'a> {
    /// Step index `k` (generation order).
    pub k: usize,
    /// The shared state `x_k`, `[B, C, H, W]`.
    pub x: Tensor<4>,
    /// Conditions, batch `B`.
    pub condition: &'a Condition,
    /// Unconditional conditions (guidance ≠ 1).
    pub uncond: Option<&'a Condition>,
    /// Classifier-free guidance scale.
    pub guidance_scale: f64,
}

/// `n` candidate next states from the shared `x_k`, drawn with the noise of
/// `NoiseKey::transition(seed, sample_ids[b], k · n + i)` (detached).
///
/// # Errors
/// `n < 2`, a deterministic step, batch mismatches, a failing model call.
pub fn spo_candidates<M: Denoiser + ?Sized, S: Sampler + ?Sized>(
    model: &M,
    sampler: &S,
    state: &SpoState<'_>,
    sample_ids: &[u64],
    seed: u64,
    n: usize,
) -> Result<Vec<Tensor<4>>> {
    if n < 2 {
        return Err(PrefError::config("candidates", "need at least 2"));
    }
    if sampler.step_std(state.k) <= 0.0 {
        return Err(PrefError::config(
            "step",
            format!(
                "step {} is deterministic: SPO needs a stochastic sampler",
                state.k
            ),
        ));
    }
    let [b, c, h, w] = state.x.dims();
    if sample_ids.len() != b {
        return Err(align_core::CoreError::shape("sample ids", b, sample_ids.len()).into());
    }
    let device = state.x.device();
    let out = guided_predict(
        model,
        state.x.clone(),
        times(sampler, state.k, b, &device),
        state.condition,
        state.uncond,
        state.guidance_scale,
    )
    .map_err(|e| PrefError::config("model", e.to_string()))?;
    (0..n)
        .map(|i| {
            let keys: Vec<NoiseKey> = sample_ids
                .iter()
                .map(|&s| NoiseKey::transition(seed, s, state.k * n + i))
                .collect();
            let z = noise_tensor(&keys, [c, h, w], &device)?;
            let step = sampler
                .step(
                    state.k,
                    state.x.clone(),
                    out.clone(),
                    model.parameterization(),
                    Transition::Sample(z),
                    LogProbReduction::Mean,
                )
                .map_err(|e| PrefError::config("step", e.to_string()))?;
            Ok(step.prev_sample.detach())
        })
        .collect()
}

/// The winner and loser candidate of each sample from `scores[i][b]` (candidate `i`, sample
/// `b`): argmax and argmin; `None` where all candidates tie.
///
/// # Errors
/// Ragged or non-finite scores.
pub fn spo_select(scores: &[Vec<f64>]) -> Result<Vec<Option<(usize, usize)>>> {
    let b = scores.first().map_or(0, Vec::len);
    if scores.iter().any(|s| s.len() != b) {
        return Err(align_core::CoreError::shape("scores", b, "ragged").into());
    }
    if let Some(v) = scores.iter().flatten().find(|v| !v.is_finite()) {
        return Err(PrefError::NonFinite {
            what: "a step score".into(),
            value: *v,
        });
    }
    Ok((0..b)
        .map(|j| {
            let (mut hi, mut lo) = (0, 0);
            for i in 1..scores.len() {
                if scores[i][j] > scores[hi][j] {
                    hi = i;
                }
                if scores[i][j] < scores[lo][j] {
                    lo = i;
                }
            }
            (scores[hi][j] > scores[lo][j]).then_some((hi, lo))
        })
        .collect())
}

/// Per sample, one of the candidates uniformly at random: the next state.
///
/// # Errors
/// No candidates.
pub fn spo_resample(candidates: &[Tensor<4>], rng: &mut ChaCha8Rng) -> Result<Tensor<4>> {
    let first = candidates
        .first()
        .ok_or_else(|| PrefError::config("candidates", "none"))?;
    let b = first.dims()[0];
    let device = first.device();
    let stacked = Tensor::stack::<5>(candidates.to_vec(), 0); // [n, B, C, H, W]
    let picks: Vec<Tensor<4>> = (0..b)
        .map(|j| {
            let i = (rng.next_u64() % candidates.len() as u64) as i64;
            stacked
                .clone()
                .select(0, Tensor::<1, Int>::from_ints([i], &device))
                .select(1, Tensor::<1, Int>::from_ints([j as i64], &device))
                .squeeze_dim::<4>(0)
        })
        .collect();
    Ok(Tensor::cat(picks, 0))
}

/// The transition log-prob `log π(x_next | x_k)`, `[B]`.
fn log_prob<M: Denoiser + ?Sized, S: Sampler + ?Sized>(
    model: &M,
    sampler: &S,
    state: &SpoState<'_>,
    condition: &Condition,
    uncond: Option<&Condition>,
    next: Tensor<4>,
) -> Result<Tensor<1>> {
    let b = state.x.dims()[0];
    let out = guided_predict(
        model,
        state.x.clone(),
        times(sampler, state.k, b, &state.x.device()),
        condition,
        uncond,
        state.guidance_scale,
    )
    .map_err(|e| PrefError::config("model", e.to_string()))?;
    sampler
        .step(
            state.k,
            state.x.clone(),
            out,
            model.parameterization(),
            Transition::Rescore(next),
            LogProbReduction::Mean,
        )
        .map_err(|e| PrefError::config("step", e.to_string()))?
        .log_prob
        .ok_or_else(|| PrefError::config("step", "deterministic step: no log-prob"))
}

/// SPO's DPO loss on the pairs `(winner, loser)` from the shared state (module docs), and its
/// `inside` per sample. `reference_condition` = the reference's own conditions (`None`: the
/// policy's).
///
/// # Errors
/// A non-positive β, a deterministic step, mismatched shapes, a non-finite loss.
#[allow(clippy::too_many_arguments)]
pub fn spo_step_loss<M: Denoiser + ?Sized, S: Sampler + ?Sized>(
    policy: &M,
    reference: &M,
    sampler: &S,
    state: &SpoState<'_>,
    reference_condition: Option<(&Condition, Option<&Condition>)>,
    winner: Tensor<4>,
    loser: Tensor<4>,
    beta: f64,
) -> Result<(Tensor<1>, Tensor<1>)> {
    check_positive("beta", beta)?;
    let (rc, ru) = reference_condition.unwrap_or((state.condition, state.uncond));
    let ratio = |next: Tensor<4>| -> Result<Tensor<1>> {
        Ok(log_prob(
            policy,
            sampler,
            state,
            state.condition,
            state.uncond,
            next.clone(),
        )? - log_prob(reference, sampler, state, rc, ru, next)?.detach())
    };
    let inside = (ratio(winner)? - ratio(loser)?).mul_scalar(beta);
    let loss = log_sigmoid(inside.clone()).mean().neg();
    check_loss(&loss, format!("the SPO loss at step {}", state.k))?;
    Ok((loss, inside))
}
