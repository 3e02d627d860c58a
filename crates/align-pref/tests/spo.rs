//! SPO: ln 2 at θ = ref, winner/loser selection with ties left out, the resampler picks a
//! candidate per sample, and on a 2-D flow toy the step-wise preferences raise the reward of
//! the final samples.
#![allow(clippy::unwrap_used)]

use align_core::{Condition, Denoiser, NoiseKey, Parameterization, noise_tensor, test_device};
use align_pref::{SpoState, spo_candidates, spo_resample, spo_select, spo_step_loss};
use align_samplers::{FlowGrid, FlowSdeSampler, Sampler};
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// `v = 0.5 x + offset` per channel.
#[derive(Module, Debug)]
struct Toy {
    offset: Param<Tensor<1>>,
}

impl Toy {
    fn new(device: &Device) -> Self {
        Self {
            offset: Param::from_tensor(Tensor::zeros([2], device)),
        }
    }
}

impl Denoiser for Toy {
    fn parameterization(&self) -> Parameterization {
        Parameterization::FlowVelocity
    }
    fn predict(&self, x: Tensor<4>, _t: Tensor<1>, _c: &Condition) -> Tensor<4> {
        x.mul_scalar(0.5) + self.offset.val().reshape([1, 2, 1, 1])
    }
}

fn reward(x: Tensor<4>) -> Vec<f64> {
    let v: Vec<f32> = x.into_data().try_to_vec().unwrap();
    v.chunks(2)
        .map(|p| -(f64::from(p[0]) - 1.0).powi(2) - (f64::from(p[1]) - 1.0).powi(2))
        .collect()
}

#[test]
fn selection_and_resampling() {
    let s = spo_select(&[
        vec![0.1, 0.5, 0.3],
        vec![0.4, 0.5, 0.2],
        vec![0.2, 0.5, 0.9],
    ])
    .unwrap();
    assert_eq!(s, vec![Some((1, 0)), None, Some((2, 1))]);
    assert!(spo_select(&[vec![0.1], vec![f64::NAN]]).is_err());
    assert!(spo_select(&[vec![0.1, 0.2], vec![0.3]]).is_err());
    let device = test_device();
    let a = Tensor::<4>::zeros([3, 2, 1, 1], &device);
    let b = Tensor::<4>::ones([3, 2, 1, 1], &device);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut seen = [false; 2];
    for _ in 0..20 {
        let r: Vec<f32> = spo_resample(&[a.clone(), b.clone()], &mut rng)
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        for p in r.chunks(2) {
            assert!(p[0] == p[1] && (p[0] == 0.0 || p[0] == 1.0));
            seen[p[0] as usize] = true;
        }
    }
    assert_eq!(seen, [true, true]);
}

#[test]
fn spo_raises_the_reward_and_starts_at_ln2() {
    let device = test_device().autodiff();
    let b = 32;
    let cond = Condition::new(Tensor::zeros([b, 1, 1], &device));
    let sampler = FlowSdeSampler::new(FlowGrid::new(8, 1.0).unwrap(), 0.7).unwrap();
    let reference = Toy::new(&device).no_grad();
    let mut policy = Toy::new(&device);
    let mut adam = AdamConfig::new().init();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (mut first, mut last) = (0.0, 0.0);
    let iterations = 25;
    for it in 0..iterations {
        let ids: Vec<u64> = (0..b as u64).map(|i| it * 1000 + i).collect();
        let keys: Vec<NoiseKey> = ids.iter().map(|&s| NoiseKey::initial(4, s)).collect();
        let mut x = noise_tensor(&keys, [2, 1, 1], &device).unwrap();
        let frozen = policy.clone().no_grad();
        let mut acc = GradientsAccumulator::<Toy>::new();
        let times = sampler.latent_times();
        for k in 0..sampler.num_steps() {
            let state = SpoState {
                k,
                x: x.clone(),
                condition: &cond,
                uncond: None,
                guidance_scale: 1.0,
            };
            let cands = spo_candidates(&frozen, &sampler, &state, &ids, 9 + it, 4).unwrap();
            // Score each candidate by the reward of its one-step clean prediction.
            let t_next = times[k + 1];
            let scores: Vec<Vec<f64>> = cands
                .iter()
                .map(|c| {
                    let v = frozen.predict(c.clone(), Tensor::zeros([b], &device), &cond);
                    reward(c.clone() - v.mul_scalar(t_next))
                })
                .collect();
            let pairs = spo_select(&scores).unwrap();
            let pick = |which: fn(&(usize, usize)) -> usize| -> Tensor<4> {
                let rows: Vec<Tensor<4>> = pairs
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let i = p.as_ref().map_or(0, which);
                        cands[i].clone().narrow(0, j, 1)
                    })
                    .collect();
                Tensor::cat(rows, 0)
            };
            let (w, l) = (pick(|p| p.0), pick(|p| p.1));
            let (loss, inside) =
                spo_step_loss(&policy, &reference, &sampler, &state, None, w, l, 5.0).unwrap();
            if it == 0 {
                assert!(
                    inside
                        .into_data()
                        .try_to_vec::<f32>()
                        .unwrap()
                        .iter()
                        .all(|&v| v == 0.0)
                );
                let l: f32 = loss.clone().detach().into_scalar();
                assert!((l - std::f32::consts::LN_2).abs() < 1e-6);
            }
            acc.accumulate(
                &policy,
                GradientsParams::from_grads(loss.backward(), &policy),
            );
            x = spo_resample(&cands, &mut rng).unwrap();
        }
        let r = reward(x);
        let mean = r.iter().sum::<f64>() / r.len() as f64;
        if it < 3 {
            first += mean / 3.0;
        }
        if it >= iterations - 3 {
            last += mean / 3.0;
        }
        policy = adam.step(0.05, policy, acc.grads());
    }
    assert!(last > first + 0.5, "{first} → {last}");
}
