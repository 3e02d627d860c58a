//! [`Trajectory`]: one batch of sampling episodes, the record every algorithm consumes.
//!
//! Sampling is an MDP: the state is `(x_k, t_k, c)`, the action is the next latent
//! `x_{k+1} ~ p_θ(· | x_k, c)`, and the final sample earns the reward. A trajectory stores the
//! `K + 1` latents **in generation order** (index 0 is the initial noise `x_T`, index `K` the
//! final sample `x_0`), the sampler time of each latent, and for each of the `K` transitions
//! the rollout log-prob, the Gaussian's standard deviation and optionally its mean and the
//! predicted `x̂₀`.
//!
//! Formulas written with DDPM's descending index (`t = T..1`, transition `x_t → x_{t−1}`)
//! map to generation index `k = K − t`; see [`Trajectory::k_of_t`].

use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{CoreError, Result};
use crate::gaussian::LogProbReduction;
use crate::noise::NoiseKey;

/// A batch of `B` sampling episodes of `K` steps each.
#[derive(Debug, Clone)]
pub struct Trajectory {
    /// `K + 1` latents `[B, C, H, W]`, generation order: `latents[0]` is the initial noise.
    pub latents: Vec<Tensor<4>>,
    /// `K + 1` sampler times (model units: DDPM timestep or flow `t`), one per latent.
    pub times: Vec<f64>,
    /// `K` rollout log-probs `[B]` of transition `k` (`latents[k] → latents[k+1]`); `None` for a
    /// deterministic step (σ = 0), whose log-density is undefined.
    pub log_probs: Vec<Option<Tensor<1>>>,
    /// `K` transition standard deviations (0 for a deterministic step).
    pub stds: Vec<f64>,
    /// `K` transition means `[B, C, H, W]` if the rollout kept them (closed-form KL), else empty.
    pub means: Vec<Tensor<4>>,
    /// `K` predicted clean samples `x̂₀` `[B, C, H, W]` if kept (SDPO, ReFL), else empty.
    pub pred_x0: Vec<Tensor<4>>,
    /// The reduction of `log_probs`.
    pub reduction: LogProbReduction,
    /// The classifier-free guidance scale used (1 = none); re-scoring must use the same.
    pub guidance_scale: f64,
    /// Run seed of the noise keys.
    pub seed: u64,
    /// `B` global sample indices; the noise of sample `b` at counter `s` is
    /// `NoiseKey { seed, sample: sample_ids[b], step: s }`.
    pub sample_ids: Vec<u64>,
    /// `B` indices of each sample's condition (prompt) in the caller's prompt table.
    pub condition_ids: Vec<usize>,
    /// `B` group ids (GRPO groups; by default the condition id).
    pub group_ids: Vec<usize>,
    /// `B` terminal rewards once scored.
    pub rewards: Option<Vec<f64>>,
}

impl Trajectory {
    /// Number of transitions `K`.
    pub fn num_steps(&self) -> usize {
        self.log_probs.len()
    }

    /// Batch size `B`.
    pub fn batch_size(&self) -> usize {
        self.sample_ids.len()
    }

    /// The initial noise `x_T`, `[B, C, H, W]`.
    pub fn initial_noise(&self) -> &Tensor<4> {
        &self.latents[0]
    }

    /// The final sample `x_0`, `[B, C, H, W]`.
    pub fn final_sample(&self) -> &Tensor<4> {
        &self.latents[self.latents.len() - 1]
    }

    /// The noise key of sample `b`'s initial noise.
    pub fn initial_key(&self, b: usize) -> NoiseKey {
        NoiseKey::initial(self.seed, self.sample_ids[b])
    }

    /// The noise key of the noise injected into sample `b` by transition `k`.
    pub fn transition_key(&self, b: usize, k: usize) -> NoiseKey {
        NoiseKey::transition(self.seed, self.sample_ids[b], k)
    }

    /// Generation index `k` of the transition `x_t → x_{t−1}` in DDPM's descending notation
    /// (`t = K` is the first, noisiest transition; `t = 1` produces `x_0`).
    ///
    /// # Errors
    /// [`CoreError::Config`] unless `1 ≤ t ≤ K`.
    pub fn k_of_t(&self, t: usize) -> Result<usize> {
        let k = self.num_steps();
        if t == 0 || t > k {
            return Err(CoreError::config("t", format!("{t} is outside 1..={k}")));
        }
        Ok(k - t)
    }

    /// Indices `k` of the stochastic transitions (those with a log-prob).
    pub fn stochastic_steps(&self) -> Vec<usize> {
        self.log_probs
            .iter()
            .enumerate()
            .filter_map(|(k, lp)| lp.as_ref().map(|_| k))
            .collect()
    }

    /// Checks that every per-step and per-sample field has a consistent length.
    ///
    /// # Errors
    /// [`CoreError::Shape`] naming the first inconsistent field.
    pub fn validate(&self) -> Result<()> {
        let k = self.num_steps();
        let b = self.batch_size();
        let check = |what: &str, expected: usize, got: usize| {
            if expected == got {
                Ok(())
            } else {
                Err(CoreError::shape(
                    format!("trajectory.{what}"),
                    expected,
                    got,
                ))
            }
        };
        check("latents", k + 1, self.latents.len())?;
        check("times", k + 1, self.times.len())?;
        check("stds", k, self.stds.len())?;
        if !self.means.is_empty() {
            check("means", k, self.means.len())?;
        }
        if !self.pred_x0.is_empty() {
            check("pred_x0", k, self.pred_x0.len())?;
        }
        check("condition_ids", b, self.condition_ids.len())?;
        check("group_ids", b, self.group_ids.len())?;
        if let Some(r) = &self.rewards {
            check("rewards", b, r.len())?;
        }
        for (i, x) in self.latents.iter().enumerate() {
            check(&format!("latents[{i}] batch"), b, x.dims()[0])?;
        }
        for (i, lp) in self.log_probs.iter().enumerate() {
            if let Some(lp) = lp {
                check(&format!("log_probs[{i}]"), b, lp.dims()[0])?;
            }
        }
        Ok(())
    }

    /// The sub-batch of the given samples (for minibatches or dropping zero-advantage samples).
    ///
    /// # Errors
    /// [`CoreError::Shape`] if `indices` is empty or out of range.
    pub fn select(&self, indices: &[usize]) -> Result<Trajectory> {
        let b = self.batch_size();
        if indices.is_empty() {
            return Err(CoreError::shape("selected samples", "at least one", 0));
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= b) {
            return Err(CoreError::shape("sample index", format!("< {b}"), bad));
        }
        let device = self.latents[0].device();
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [indices.len()]), &device);
        let pick4 = |v: &Vec<Tensor<4>>| -> Vec<Tensor<4>> {
            v.iter().map(|x| x.clone().select(0, idx.clone())).collect()
        };
        let pick = |v: &[usize]| indices.iter().map(|&i| v[i]).collect::<Vec<_>>();
        Ok(Trajectory {
            latents: pick4(&self.latents),
            times: self.times.clone(),
            log_probs: self
                .log_probs
                .iter()
                .map(|lp| lp.as_ref().map(|lp| lp.clone().select(0, idx.clone())))
                .collect(),
            stds: self.stds.clone(),
            means: pick4(&self.means),
            pred_x0: pick4(&self.pred_x0),
            reduction: self.reduction,
            guidance_scale: self.guidance_scale,
            seed: self.seed,
            sample_ids: indices.iter().map(|&i| self.sample_ids[i]).collect(),
            condition_ids: pick(&self.condition_ids),
            group_ids: pick(&self.group_ids),
            rewards: self
                .rewards
                .as_ref()
                .map(|r| indices.iter().map(|&i| r[i]).collect()),
        })
    }
    /// The same trajectory with its tensors on `device` (a copy; the values are unchanged):
    /// a data-parallel update moves each device's samples to the device that rolled them out.
    pub fn to_device(&self, device: &burn::tensor::Device) -> Trajectory {
        let move4 = |v: &Vec<Tensor<4>>| -> Vec<Tensor<4>> {
            v.iter().map(|x| x.clone().to_device(device)).collect()
        };
        Trajectory {
            latents: move4(&self.latents),
            log_probs: self
                .log_probs
                .iter()
                .map(|lp| lp.as_ref().map(|lp| lp.clone().to_device(device)))
                .collect(),
            means: move4(&self.means),
            pred_x0: move4(&self.pred_x0),
            ..self.clone()
        }
    }

    /// The trajectories of consecutive sample chunks joined into one batch (rollouts made in
    /// micro-batches, `rollout_batch`): samples in the order of `parts`.
    ///
    /// # Errors
    /// [`CoreError::Shape`] if `parts` is empty or the parts differ in steps, times, noise
    /// levels, reduction, guidance, seed, or in which per-step tensors they kept.
    pub fn concat(parts: &[Trajectory]) -> Result<Trajectory> {
        let first = parts
            .first()
            .ok_or_else(|| CoreError::shape("trajectory parts", "at least one", 0))?;
        if parts.len() == 1 {
            return Ok(first.clone());
        }
        for p in &parts[1..] {
            let same = p.times == first.times
                && p.stds == first.stds
                && p.reduction == first.reduction
                && p.guidance_scale == first.guidance_scale
                && p.seed == first.seed
                && p.latents.len() == first.latents.len()
                && p.means.len() == first.means.len()
                && p.pred_x0.len() == first.pred_x0.len()
                && p.rewards.is_some() == first.rewards.is_some()
                && p.log_probs
                    .iter()
                    .map(Option::is_some)
                    .eq(first.log_probs.iter().map(Option::is_some));
            if !same {
                return Err(CoreError::shape(
                    "trajectory parts",
                    "the same sampler, seed and kept tensors",
                    "parts that differ",
                ));
            }
        }
        let cat4 = |get: &dyn Fn(&Trajectory) -> &Vec<Tensor<4>>| -> Vec<Tensor<4>> {
            (0..get(first).len())
                .map(|k| Tensor::cat(parts.iter().map(|p| get(p)[k].clone()).collect(), 0))
                .collect()
        };
        let flat = |get: &dyn Fn(&Trajectory) -> &Vec<usize>| -> Vec<usize> {
            parts.iter().flat_map(|p| get(p).iter().copied()).collect()
        };
        Ok(Trajectory {
            latents: cat4(&|p| &p.latents),
            times: first.times.clone(),
            log_probs: (0..first.log_probs.len())
                .map(|k| {
                    first.log_probs[k].as_ref().map(|_| {
                        Tensor::cat(
                            parts
                                .iter()
                                .filter_map(|p| p.log_probs[k].clone())
                                .collect(),
                            0,
                        )
                    })
                })
                .collect(),
            stds: first.stds.clone(),
            means: cat4(&|p| &p.means),
            pred_x0: cat4(&|p| &p.pred_x0),
            reduction: first.reduction,
            guidance_scale: first.guidance_scale,
            seed: first.seed,
            sample_ids: parts
                .iter()
                .flat_map(|p| p.sample_ids.iter().copied())
                .collect(),
            condition_ids: flat(&|p| &p.condition_ids),
            group_ids: flat(&|p| &p.group_ids),
            rewards: first.rewards.as_ref().map(|_| {
                parts
                    .iter()
                    .flat_map(|p| p.rewards.clone().unwrap_or_default())
                    .collect()
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(device: &burn::tensor::Device) -> Trajectory {
        let x = |v: f32| {
            Tensor::<4>::from_data(
                TensorData::new(vec![v, v + 1.0, v + 2.0], [3, 1, 1, 1]),
                device,
            )
        };
        let lp = |v: f32| Tensor::<1>::from_data(TensorData::new(vec![v, v, v], [3]), device);
        Trajectory {
            latents: vec![x(0.0), x(10.0), x(20.0)],
            times: vec![1.0, 0.5, 0.0],
            log_probs: vec![Some(lp(-1.0)), None],
            stds: vec![0.3, 0.0],
            means: vec![],
            pred_x0: vec![],
            reduction: LogProbReduction::Mean,
            guidance_scale: 1.0,
            seed: 9,
            sample_ids: vec![100, 101, 102],
            condition_ids: vec![0, 1, 0],
            group_ids: vec![0, 1, 0],
            rewards: Some(vec![0.1, 0.2, 0.3]),
        }
    }

    #[test]
    fn views_and_keys() {
        let device = crate::test_device();
        let t = toy(&device);
        t.validate().unwrap();
        assert_eq!(t.num_steps(), 2);
        assert_eq!(t.k_of_t(2).unwrap(), 0);
        assert_eq!(t.k_of_t(1).unwrap(), 1);
        assert!(t.k_of_t(0).is_err() && t.k_of_t(3).is_err());
        assert_eq!(t.stochastic_steps(), vec![0]);
        assert_eq!(
            t.transition_key(1, 0),
            NoiseKey {
                seed: 9,
                sample: 101,
                step: 1
            }
        );
        assert_eq!(
            t.initial_key(2),
            NoiseKey {
                seed: 9,
                sample: 102,
                step: 0
            }
        );
    }

    #[test]
    fn select_picks_samples_everywhere() {
        let device = crate::test_device();
        let t = toy(&device).select(&[2, 0]).unwrap();
        t.validate().unwrap();
        assert_eq!(t.sample_ids, vec![102, 100]);
        assert_eq!(t.rewards, Some(vec![0.3, 0.1]));
        let last = t
            .final_sample()
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(last, vec![22.0, 20.0]);
        assert!(toy(&device).select(&[3]).is_err());
        assert!(toy(&device).select(&[]).is_err());
    }

    /// Chunks selected in order and joined again give back the batch, tensors bit for bit.
    #[test]
    fn concat_inverts_a_split_into_chunks() {
        let device = crate::test_device();
        let t = toy(&device);
        let joined =
            Trajectory::concat(&[t.select(&[0]).unwrap(), t.select(&[1, 2]).unwrap()]).unwrap();
        joined.validate().unwrap();
        assert_eq!(joined.sample_ids, t.sample_ids);
        assert_eq!(joined.condition_ids, t.condition_ids);
        assert_eq!(joined.rewards, t.rewards);
        for (a, b) in joined.latents.iter().zip(&t.latents) {
            assert_eq!(a.clone().into_data(), b.clone().into_data());
        }
        assert_eq!(
            joined.log_probs[0].clone().unwrap().into_data(),
            t.log_probs[0].clone().unwrap().into_data()
        );
        assert!(joined.log_probs[1].is_none());
        let mut other = t.select(&[0]).unwrap();
        other.seed = 10;
        assert!(Trajectory::concat(&[t.clone(), other]).is_err());
        assert!(Trajectory::concat(&[]).is_err());
    }

    #[test]
    fn validate_names_the_bad_field() {
        let device = crate::test_device();
        let mut t = toy(&device);
        t.times.pop();
        assert!(
            t.validate()
                .unwrap_err()
                .to_string()
                .contains("trajectory.times")
        );
    }
}
