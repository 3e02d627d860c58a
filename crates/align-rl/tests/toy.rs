//! End-to-end learning on a toy problem, for every algorithm: 2-D samples from a tiny
//! trainable policy (a learned offset on a fixed velocity / ε field), reward = closeness of the
//! final sample to the point (1, 1). The mean reward must rise over a fixed number of
//! iterations; with β > 0 the per-step KL to the reference (offset 0) stays below a stated bound
//! and below the KL of the same run without the penalty.

use align_core::{Condition, Denoiser, Parameterization, Trajectory, test_device};
use align_rl::{
    Ddpo, DdpoConfig, DdpoVariant, DenseGrpo, DenseGrpoConfig, Dpok, DpokConfig, FlowGrpo,
    FlowGrpoConfig, Iteration, NoiseCalibration, OnlineAlgorithm, Sdpo, SdpoConfig, run_iteration,
    step_reward_gains, trajectory_dense_rewards,
};
use align_rl::{
    DiffusionNftConfig, NftIteration, OldPolicyDecay, opd_gradients, run_nft_iteration,
    update_old_policy,
};
use align_samplers::{FlowGrid, FlowSdeSampler};
use align_samplers::{RolloutBatch, RolloutConfig, Sampler, SamplerConfig, rollout};
use burn::module::{Module, Param};
use burn::optim::AdamConfig;
use burn::tensor::{Device, Tensor};

/// `prediction = scale · x + offset`, per channel; `flow` selects the parameterization.
#[derive(Module, Debug)]
struct Toy {
    offset: Param<Tensor<1>>,
    scale: Param<Tensor<1>>,
    flow: bool,
}

impl Toy {
    fn new(flow: bool, device: &Device) -> Self {
        Self {
            offset: Param::from_tensor(Tensor::zeros([2], device)),
            // Flow: v = 2x − (x − 0) ≈ a field toward N(0, ·); ε-model: ε̂ = 0.5 x.
            scale: Param::from_tensor(Tensor::from_floats([0.5, 0.5], device)),
            flow,
        }
    }
}

impl Denoiser for Toy {
    fn parameterization(&self) -> Parameterization {
        if self.flow {
            Parameterization::FlowVelocity
        } else {
            Parameterization::Epsilon
        }
    }
    fn predict(&self, x: Tensor<4>, _t: Tensor<1>, _c: &Condition) -> Tensor<4> {
        x * self.scale.val().reshape([1, 2, 1, 1]) + self.offset.val().reshape([1, 2, 1, 1])
    }
}

fn encode(m: &Toy, ids: &[usize]) -> Result<(Condition, Option<Condition>), String> {
    let device = m.offset.val().device();
    Ok((
        Condition::new(Tensor::zeros([ids.len(), 1, 1], &device)),
        None,
    ))
}

fn reward(traj: &Trajectory) -> Vec<f64> {
    let x: Vec<f32> = traj
        .final_sample()
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32");
    x.chunks(2)
        .map(|p| -(f64::from(p[0]) - 1.0).powi(2) - (f64::from(p[1]) - 1.0).powi(2))
        .collect()
}

struct Outcome {
    first: f64,
    last: f64,
    kl: f64,
}

fn train(
    algo: &mut dyn OnlineAlgorithm,
    sampler: &dyn Sampler,
    flow: bool,
    iterations: usize,
    lr: f64,
) -> Outcome {
    let device = test_device().autodiff();
    let mut policy = Toy::new(flow, &device);
    let reference = Toy::new(flow, &device).no_grad();
    let mut adam = AdamConfig::new().init();
    let b = 32;
    let steps: Vec<usize> = (0..sampler.num_steps()).collect();
    let (mut first, mut last, mut kl) = (0.0_f64, 0.0_f64, 0.0_f64);
    for it in 0..iterations {
        let valid = policy.valid();
        let (c, _) = encode(&valid, &vec![0; b]).expect("encode");
        let traj = rollout(
            &valid,
            sampler,
            &RolloutBatch {
                condition: &c,
                uncond: None,
                sample_ids: (0..b as u64).map(|i| it as u64 * 1000 + i).collect(),
                condition_ids: (0..b).map(|i| i % 4).collect(),
                group_ids: None,
                sample_shape: [2, 1, 1],
            },
            &RolloutConfig {
                seed: 1,
                // GRPO-Guard's ratio normalisation reads the rollout's means.
                keep_means: true,
                ..RolloutConfig::default()
            },
        )
        .expect("rollout");
        let rewards = reward(&traj);
        let mut apply = |m: Toy, g| Ok(adam.step(lr, m, g));
        let (p, stats) = run_iteration(
            algo,
            policy,
            Iteration {
                reference: Some(&reference),
                sampler,
                trajectory: &traj,
                rewards: &rewards,
                dense_rewards: None,
                steps: &steps,
                encode: &encode,
                shuffle_seed: it as u64,
                micro_batch: None,
            },
            &mut apply,
        )
        .expect("iteration");
        policy = p;
        if it < 3 {
            first += stats.reward_mean / 3.0;
        }
        if it >= iterations - 3 {
            last += stats.reward_mean / 3.0;
            kl = kl.max(stats.update.kl);
        }
    }
    Outcome { first, last, kl }
}

fn prompts() -> Vec<String> {
    (0..4).map(|i| format!("prompt {i}")).collect()
}

fn ddim() -> Box<dyn Sampler + Send + Sync> {
    SamplerConfig::ddim(10, 1.0).build().expect("ddim")
}

fn sde() -> Box<dyn Sampler + Send + Sync> {
    SamplerConfig::flow_sde(10, 0.7).build().expect("sde")
}

#[test]
fn ddpo_sf_raises_the_reward() {
    let mut algo = Ddpo::new(
        DdpoConfig {
            variant: DdpoVariant::Sf,
            ..DdpoConfig::default()
        },
        prompts(),
    )
    .expect("config");
    let o = train(&mut algo, ddim().as_ref(), false, 30, 0.05);
    assert!(o.last > o.first + 0.5, "{} → {}", o.first, o.last);
}

#[test]
fn ddpo_is_raises_the_reward() {
    let mut algo = Ddpo::new(
        DdpoConfig {
            inner_epochs: 2,
            ..DdpoConfig::default()
        },
        prompts(),
    )
    .expect("config");
    let o = train(&mut algo, ddim().as_ref(), false, 30, 0.05);
    assert!(o.last > o.first + 0.5, "{} → {}", o.first, o.last);
}

#[test]
fn dpok_raises_the_reward_and_its_kl_stays_bounded() {
    let mut free = Dpok::new(
        DpokConfig {
            beta: 0.0,
            ..DpokConfig::default()
        },
        prompts(),
    )
    .expect("config");
    let unpenalised = train(&mut free, ddim().as_ref(), false, 30, 0.05);
    let mut algo = Dpok::new(
        DpokConfig {
            beta: 0.1,
            ..DpokConfig::default()
        },
        prompts(),
    )
    .expect("config");
    let o = train(&mut algo, ddim().as_ref(), false, 30, 0.05);
    assert!(o.last > o.first + 0.5, "{} → {}", o.first, o.last);
    assert!(
        o.kl < unpenalised.kl,
        "KL {} with β = 0.1, {} without",
        o.kl,
        unpenalised.kl
    );
    assert!(o.kl < KL_BOUND, "KL {}", o.kl);
}

#[test]
fn flow_grpo_raises_the_reward_and_its_kl_stays_bounded() {
    let mut free = FlowGrpo::new(FlowGrpoConfig {
        beta: 0.0,
        ..FlowGrpoConfig::default()
    })
    .expect("config");
    let unpenalised = train(&mut free, sde().as_ref(), true, 30, 0.05);
    let mut algo = FlowGrpo::new(FlowGrpoConfig {
        beta: 0.1,
        ..FlowGrpoConfig::default()
    })
    .expect("config");
    let o = train(&mut algo, sde().as_ref(), true, 30, 0.05);
    assert!(o.last > o.first + 0.5, "{} → {}", o.first, o.last);
    assert!(
        o.kl < unpenalised.kl,
        "KL {} with β = 0.1, {} without",
        o.kl,
        unpenalised.kl
    );
    assert!(o.kl < KL_BOUND, "KL {}", o.kl);
}

/// GRPO-Guard (Flow-GRPO with the normalised ratio, the public clip range 2e-6 and no KL) also
/// learns the toy problem.
#[test]
fn grpo_guard_raises_the_reward() {
    let mut algo = FlowGrpo::new(FlowGrpoConfig {
        beta: 0.0,
        clip_range: 2e-6,
        ratio_norm: true,
        ..FlowGrpoConfig::default()
    })
    .expect("config");
    let o = train(&mut algo, sde().as_ref(), true, 30, 0.05);
    assert!(o.last > o.first + 0.5, "{} → {}", o.first, o.last);
}

/// Mean per-step KL (mean-reduced over the 2 dimensions) allowed at the end of a penalised run.
const KL_BOUND: f64 = 1.0;

fn point_reward(x: Tensor<4>) -> Vec<f64> {
    let x: Vec<f32> = x.into_data().try_to_vec::<f32>().expect("f32");
    x.chunks(2)
        .map(|p| -(f64::from(p[0]) - 1.0).powi(2) - (f64::from(p[1]) - 1.0).powi(2))
        .collect()
}

#[test]
fn sdpo_raises_the_reward_with_dense_step_rewards() {
    let device = test_device().autodiff();
    let sampler = ddim();
    let mut policy = Toy::new(false, &device);
    let mut adam = AdamConfig::new().init();
    let mut algo = Sdpo::new(
        // Unclipped: with ε = 1e-4 every update after an iteration's first sees ratios outside
        // the clip range (the toy's one offset moves every step's mean), so the clipped loss
        // learns about one step per iteration — too slow for a 30-iteration test.
        SdpoConfig {
            min_count: 4,
            clip_range: None,
            ..SdpoConfig::default()
        },
        prompts(),
    )
    .expect("config");
    let b = 32;
    let (mut first, mut last) = (0.0, 0.0);
    let iterations = 30;
    for it in 0..iterations {
        let frozen = policy.clone().no_grad();
        let (c, _) = encode(&frozen, &vec![0; b]).expect("encode");
        let traj = rollout(
            &frozen,
            sampler.as_ref(),
            &RolloutBatch {
                condition: &c,
                uncond: None,
                sample_ids: (0..b as u64).map(|i| it as u64 * 1000 + i).collect(),
                condition_ids: (0..b).map(|i| (i / 2) % 4).collect(),
                group_ids: None,
                sample_shape: [2, 1, 1],
            },
            &RolloutConfig {
                seed: 3,
                keep_pred_x0: true,
                ..RolloutConfig::default()
            },
        )
        .expect("rollout");
        let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
        let reward = mean(&point_reward(traj.final_sample().clone()));
        if it < 3 {
            first += reward / 3.0;
        }
        if it >= iterations - 3 {
            last += reward / 3.0;
        }
        let dense = trajectory_dense_rewards(&traj, &mut |x| Ok(point_reward(x))).expect("dense");
        assert_eq!(dense.len(), b);
        let mut apply = |m: Toy, g| Ok(adam.step(0.02, m, g));
        let (p, stats) = algo
            .run_iteration(
                policy,
                sampler.as_ref(),
                &traj,
                &dense,
                &encode,
                it as u64,
                &mut apply,
            )
            .expect("iteration");
        assert!(stats.loss.is_finite());
        policy = p;
    }
    assert!(last > first + 0.5, "{first} → {last}");
}

/// DenseGRPO on the flow toy: dense gains from ODE completions (2 Euler steps), per-step
/// group-relative advantages, Flow-GRPO's clipped update. Returns (first, last, max final KL,
/// final noise scales).
fn train_dense_grpo(config: DenseGrpoConfig, iterations: usize) -> (f64, f64, f64, Vec<f64>) {
    let device = test_device().autodiff();
    let mut policy = Toy::new(true, &device);
    let reference = Toy::new(true, &device).no_grad();
    let mut adam = AdamConfig::new().init();
    let mut algo = DenseGrpo::new(config).expect("config");
    let b = 32;
    let (mut first, mut last, mut kl) = (0.0, 0.0, 0.0_f64);
    for it in 0..iterations {
        let sampler = FlowSdeSampler::new(FlowGrid::new(10, 1.0).expect("grid"), 0.7)
            .expect("sde")
            .with_noise_scales(algo.noise_scales())
            .expect("scales");
        let frozen = policy.clone().no_grad();
        let (c, _) = encode(&frozen, &vec![0; b]).expect("encode");
        let traj = rollout(
            &frozen,
            &sampler,
            &RolloutBatch {
                condition: &c,
                uncond: None,
                sample_ids: (0..b as u64).map(|i| it as u64 * 1000 + i).collect(),
                condition_ids: (0..b).map(|i| i % 4).collect(),
                group_ids: None,
                sample_shape: [2, 1, 1],
            },
            &RolloutConfig {
                seed: 5,
                ..RolloutConfig::default()
            },
        )
        .expect("rollout");
        let rewards = reward(&traj);
        let steps = traj.stochastic_steps();
        let dense = step_reward_gains(&frozen, &traj, &c, None, &steps, Some(2), &mut |x| {
            Ok(point_reward(x))
        })
        .expect("dense rewards");
        // The last step's gain ends on the terminal reward.
        let mut apply = |m: Toy, g| Ok(adam.step(0.05, m, g));
        let (p, stats) = run_iteration(
            &mut algo,
            policy,
            Iteration {
                reference: Some(&reference),
                sampler: &sampler,
                trajectory: &traj,
                rewards: &rewards,
                dense_rewards: Some(&dense),
                steps: &steps,
                encode: &encode,
                shuffle_seed: it as u64,
                micro_batch: None,
            },
            &mut apply,
        )
        .expect("iteration");
        policy = p;
        if it < 3 {
            first += stats.reward_mean / 3.0;
        }
        if it >= iterations - 3 {
            last += stats.reward_mean / 3.0;
            kl = kl.max(stats.update.kl);
        }
    }
    (first, last, kl, algo.noise_scales().unwrap_or_default())
}

#[test]
fn dense_grpo_raises_the_reward_and_its_kl_stays_bounded() {
    let (_, _, free_kl, _) = train_dense_grpo(
        DenseGrpoConfig {
            beta: 0.0,
            ..DenseGrpoConfig::default()
        },
        30,
    );
    let (first, last, kl, _) = train_dense_grpo(
        DenseGrpoConfig {
            beta: 0.1,
            ..DenseGrpoConfig::default()
        },
        30,
    );
    assert!(last > first + 0.5, "{first} → {last}");
    assert!(kl < free_kl, "KL {kl} with β = 0.1, {free_kl} without");
    assert!(kl < KL_BOUND, "KL {kl}");
}

#[test]
fn dense_grpo_with_noise_calibration_learns_and_moves_its_scales() {
    let (first, last, _, scales) = train_dense_grpo(
        DenseGrpoConfig {
            beta: 0.1,
            calibration: Some(NoiseCalibration::default()),
            ..DenseGrpoConfig::default()
        },
        30,
    );
    assert!(last > first + 0.5, "{first} → {last}");
    assert_eq!(scales.len(), 10);
    assert!(scales.iter().all(|s| (0.5..=2.0).contains(s)), "{scales:?}");
    assert!(scales.iter().any(|&s| s != 1.0), "{scales:?}");
}

#[test]
fn terminal_and_dense_reward_algorithms_refuse_each_others_inputs() {
    let device = test_device().autodiff();
    let policy = Toy::new(true, &device);
    let sampler = sde();
    let frozen = policy.clone().no_grad();
    let (c, _) = encode(&frozen, &[0; 4]).expect("encode");
    let traj = rollout(
        &frozen,
        sampler.as_ref(),
        &RolloutBatch {
            condition: &c,
            uncond: None,
            sample_ids: (0..4).collect(),
            condition_ids: vec![0, 0, 1, 1],
            group_ids: None,
            sample_shape: [2, 1, 1],
        },
        &RolloutConfig::default(),
    )
    .expect("rollout");
    let rewards = reward(&traj);
    let steps = traj.stochastic_steps();
    let dense = vec![vec![0.5; 10]; 4];
    let mut apply = |m: Toy, _g| Ok(m);
    let mut run = |algo: &mut dyn OnlineAlgorithm, dense: Option<&[Vec<f64>]>| {
        run_iteration(
            algo,
            policy.clone(),
            Iteration {
                reference: None,
                sampler: sampler.as_ref(),
                trajectory: &traj,
                rewards: &rewards,
                dense_rewards: dense,
                steps: &steps,
                encode: &encode,
                shuffle_seed: 0,
                micro_batch: None,
            },
            &mut apply,
        )
        .err()
        .map(|e| e.to_string())
    };
    let mut grpo = FlowGrpo::new(FlowGrpoConfig::default()).expect("config");
    let e = run(&mut grpo, Some(&dense)).expect("must refuse");
    assert!(e.contains("terminal rewards only"), "{e}");
    let mut dg = DenseGrpo::new(DenseGrpoConfig::default()).expect("config");
    let e = run(&mut dg, None).expect("must refuse");
    assert!(e.contains("needs dense per-step rewards"), "{e}");
}

/// DiffusionNFT on the toy flow problem: rollouts by the old policy with a deterministic ODE
/// (any sampler works: no likelihoods), the forward-process loss, the old policy following the
/// trained one with the public code's linear decay. The mean reward must rise.
#[test]
fn diffusion_nft_raises_the_reward_with_ode_rollouts() {
    let device = test_device().autodiff();
    let mut policy = Toy::new(true, &device);
    let reference = Toy::new(true, &device).no_grad();
    let mut old = policy.clone().no_grad();
    let sampler = SamplerConfig::flow_sde(10, 0.0).build().expect("ode");
    let config = DiffusionNftConfig {
        old_decay: OldPolicyDecay::Linear {
            rate: 0.01,
            max: 0.5,
        },
        ..DiffusionNftConfig::default()
    };
    let mut adam = AdamConfig::new().init();
    let (b, iterations) = (32, 30);
    let (mut first, mut last) = (0.0, 0.0);
    for it in 0..iterations {
        let (c, _) = encode(&old, &vec![0; b]).expect("encode");
        let traj = rollout(
            &old,
            sampler.as_ref(),
            &RolloutBatch {
                condition: &c,
                uncond: None,
                sample_ids: (0..b as u64).map(|i| it as u64 * 1000 + i).collect(),
                condition_ids: (0..b).map(|i| i % 4).collect(),
                group_ids: None,
                sample_shape: [2, 1, 1],
            },
            &RolloutConfig {
                seed: 1,
                ..RolloutConfig::default()
            },
        )
        .expect("rollout");
        let rewards = reward(&traj);
        let mean = rewards.iter().sum::<f64>() / b as f64;
        let mut apply = |m: Toy, g| Ok(adam.step(0.05, m, g));
        let (p, stats) = run_nft_iteration(
            &config,
            policy,
            NftIteration {
                old: &old,
                reference: Some(&reference),
                trajectory: &traj,
                rewards: &rewards,
                encode: &encode,
                guidance: 1.0,
                seed: it as u64,
                micro_batch: None,
            },
            &mut apply,
        )
        .expect("iteration");
        assert_eq!(stats.optimizer_steps, 1);
        assert_eq!(stats.timesteps, 9);
        policy = p;
        old = update_old_policy(old, &policy, config.old_decay.decay((it + 1) as u64))
            .expect("old policy");
        if it < 3 {
            first += mean / 3.0;
        }
        if it >= iterations - 3 {
            last += mean / 3.0;
        }
    }
    assert!(last > first + 0.5, "{first} → {last}");
}

/// A toy with a given offset (the teacher of the OPD tests).
fn toy_with_offset(offset: [f32; 2], device: &Device) -> Toy {
    let mut t = Toy::new(true, device);
    t.offset = Param::from_tensor(Tensor::from_floats(offset, device));
    t
}

fn student_rollout(student: &Toy, sampler: &dyn Sampler, it: u64) -> Trajectory {
    let b = 16;
    let (c, _) = encode(student, &vec![0; b]).expect("encode");
    rollout(
        &student.clone().no_grad(),
        sampler,
        &RolloutBatch {
            condition: &c,
            uncond: None,
            sample_ids: (0..b as u64).map(|i| it * 1000 + i).collect(),
            condition_ids: vec![0; b],
            group_ids: None,
            sample_shape: [2, 1, 1],
        },
        &RolloutConfig {
            seed: 3,
            ..RolloutConfig::default()
        },
    )
    .expect("rollout")
}

/// OPD's per-step KL against its closed form on the toy field `v = 0.5 x + o` (one teacher
/// substep): `μ_S − μ_T = c_k Δt (o_S − o_T)` with `c_k = 1 + σ_k² (1 − t_k)/(2 t_k)`, so
/// `KL_k = mean_channels (c_k Δt Δo)² / (2 s_k²)`; a student equal to the teacher has KL 0
/// exactly; and the gradient w.r.t. the student's offset matches central finite differences.
#[test]
fn opd_kl_matches_its_closed_form_and_finite_differences() {
    let device = test_device().autodiff();
    let sampler = FlowSdeSampler::new(FlowGrid::new(4, 1.0).expect("grid"), 0.7).expect("sde");
    let teacher = toy_with_offset([0.3, -0.2], &device).no_grad();
    let steps: Vec<usize> = (0..4).collect();
    let same = toy_with_offset([0.3, -0.2], &device);
    let traj = student_rollout(&same, &sampler, 0);
    let (_, stats) =
        opd_gradients(&same, &teacher, &sampler, &traj, &steps, &encode, 1).expect("opd");
    assert_eq!(stats.kl_sum, 0.0, "the teacher distilled into itself");
    let offset = [0.5f32, 0.1];
    let student = toy_with_offset(offset, &device);
    let traj = student_rollout(&student, &sampler, 1);
    let (grads, stats) =
        opd_gradients(&student, &teacher, &sampler, &traj, &steps, &encode, 1).expect("opd");
    let d_o = [f64::from(offset[0]) - 0.3, f64::from(offset[1]) + 0.2];
    let mut want_sum = 0.0;
    for (i, &k) in steps.iter().enumerate() {
        let (t, t1) = (traj.times[k], traj.times[k + 1]);
        let dt = t1 - t;
        let sigma = sampler.sigma(k);
        let c = 1.0 + sigma * sigma * (1.0 - t) / (2.0 * t);
        let s = sampler.step_std(k);
        let want = d_o.iter().map(|d| (c * dt * d).powi(2)).sum::<f64>() / 2.0 / (2.0 * s * s);
        assert!(
            (stats.step_kl[i] - want).abs() < 1e-4 * want,
            "step {k}: {} vs {want}",
            stats.step_kl[i]
        );
        want_sum += want;
    }
    assert!((stats.kl_sum - want_sum).abs() < 1e-4 * want_sum);
    let g: Vec<f32> = grads
        .get::<1>(student.offset.id)
        .expect("offset gradient")
        .into_data()
        .try_to_vec()
        .expect("f32");
    let h = 1e-3f32;
    for ch in 0..2 {
        let kl_at = |delta: f32| {
            let mut o = offset;
            o[ch] += delta;
            let s = toy_with_offset(o, &device);
            opd_gradients(&s, &teacher, &sampler, &traj, &steps, &encode, 1)
                .expect("opd")
                .1
                .kl_sum
        };
        let fd = (kl_at(h) - kl_at(-h)) / (2.0 * f64::from(h));
        assert!(
            (f64::from(g[ch]) - fd).abs() < 2e-2 * fd.abs().max(1e-3),
            "channel {ch}: {} vs fd {fd}",
            g[ch]
        );
    }
}

/// On-policy distillation of a many-step teacher into a few-step student on the toy problem:
/// with 16 teacher substeps per student step, the summed KL falls by 10× within 60 Adam steps.
#[test]
fn opd_distils_the_teacher_into_the_student() {
    let device = test_device().autodiff();
    let sampler = FlowSdeSampler::new(FlowGrid::new(2, 1.0).expect("grid"), 0.7).expect("sde");
    let teacher = toy_with_offset([1.0, -1.0], &device).no_grad();
    let mut student = Toy::new(true, &device);
    let mut adam = AdamConfig::new().init();
    let steps = [0usize, 1];
    let mut kl = Vec::new();
    for it in 0..60 {
        let traj = student_rollout(&student, &sampler, it);
        let (g, s) =
            opd_gradients(&student, &teacher, &sampler, &traj, &steps, &encode, 16).expect("opd");
        kl.push(s.kl_sum);
        student = adam.step(0.05, student, g);
    }
    let first = kl[..3].iter().sum::<f64>();
    let last = kl[kl.len() - 3..].iter().sum::<f64>();
    assert!(last < 0.1 * first, "KL {first} → {last}");
}
