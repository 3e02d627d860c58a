//! Data parallelism over several devices: one replica of the model per device, the batch
//! sharded by global sample id, each device's gradient for its share of a minibatch, and one
//! optimizer step over all of them (burn's `ModuleOptimizer::step_multi`, driven by the
//! [`crate::Runner`] when a job hands it [`Gradients::PerDevice`]).
//!
//! A minibatch of `n` samples of which device `d` holds `n_d` is trained with device `d`'s
//! loss weighted by its share, so the weighted per-device means add up to the single-device
//! mean, and so do their gradients:
//!
//! ```text
//! Σ_d (n_d / n) · (1/n_d) Σ_{i ∈ d} ℓ_i  =  (1/n) Σ_i ℓ_i
//! ```
//!
//! Sharding never changes a trajectory: sampling noise is keyed by global sample id
//! ([`crate::NoiseKey`]), so a sample is the same whichever device draws it (to the device's
//! arithmetic). Device `d` trains exactly the samples it rolled out, with the kernels that
//! rolled them out, so the PPO ratio stays exactly 1 at `θ_old` on every device.
//!
//! ```
//! use align_core::data_parallel::{shard_ranges, Replicas};
//! use align_core::select_device;
//! use burn::nn::{Linear, LinearConfig};
//!
//! assert_eq!(shard_ranges(5, 2), vec![0..3, 3..5]);
//! let flex = select_device(Some("flex")).unwrap().autodiff();
//! let model: Linear = LinearConfig::new(4, 2).init(&flex);
//! // Two replicas (here both on flex; in a real run one per GPU).
//! let mut replicas = Replicas::new(&model, &[flex.clone(), flex.clone()]).unwrap();
//! assert_eq!(replicas.len(), 2);
//! replicas.sync(&model); // after every optimizer step: the trainable weights to every replica
//! ```

use std::collections::HashMap;
use std::ops::Range;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, MultiGradientsParams};
use burn::tensor::{Device, Tensor};

use crate::error::{CoreError, Result};

/// The gradients of one optimizer step, as a job hands them to the runner's `apply`.
pub enum Gradients {
    /// One device's gradients: `ModuleOptimizer::step`.
    One(GradientsParams),
    /// One part per device, each for that device's share of the minibatch, **already
    /// weighted** by the share (their sum is the minibatch gradient; a device without samples
    /// sends an empty part or none). The runner clips their sum
    /// ([`crate::clip::clip_grad_norm_parts`]), steps with `step_multi`, and brings the updated
    /// parameters back to the model's device (its home).
    PerDevice(Vec<(GradientsParams, Device)>),
}

impl From<GradientsParams> for Gradients {
    fn from(grads: GradientsParams) -> Self {
        Gradients::One(grads)
    }
}

impl From<MultiGradientsParams> for Gradients {
    fn from(grads: MultiGradientsParams) -> Self {
        Gradients::PerDevice(grads.grads)
    }
}

/// `n` samples split into `parts` consecutive ranges of near-equal size (the first `n % parts`
/// ranges one longer); ranges may be empty when `parts > n`. Sample `i` of an iteration's
/// batch belongs to the device whose range holds `i`, and its global sample id is
/// `iteration · n + i` whatever the split.
pub fn shard_ranges(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1);
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|d| {
            let len = base + usize::from(d < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// The shard (device index) of sample `i` under [`shard_ranges`]`(n, parts)`.
pub fn shard_of(ranges: &[Range<usize>], i: usize) -> Option<usize> {
    ranges.iter().position(|r| r.contains(&i))
}

/// A minibatch (sample indices of the batch, in the order the update visits them) split by
/// owner: for each device, the minibatch's samples it holds (in minibatch order) and their
/// share `n_d / n` of the minibatch.
pub fn split_minibatch(chunk: &[usize], ranges: &[Range<usize>]) -> Vec<(Vec<usize>, f64)> {
    let n = chunk.len().max(1) as f64;
    ranges
        .iter()
        .map(|r| {
            let mine: Vec<usize> = chunk.iter().copied().filter(|i| r.contains(i)).collect();
            let share = mine.len() as f64 / n;
            (mine, share)
        })
        .collect()
}

struct CollectTrainable {
    values: HashMap<ParamId, Tensor<1>>,
}

impl ModuleVisitor for CollectTrainable {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if param.is_require_grad() {
            self.values
                .insert(param.id, param.val().detach().flatten(0, D - 1));
        }
    }
}

struct Assign<'a> {
    values: &'a HashMap<ParamId, Tensor<1>>,
    device: &'a Device,
    assigned: usize,
}

impl ModuleMapper for Assign<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(value) = self.values.get(&param.id) else {
            return param;
        };
        self.assigned += 1;
        let (value, device) = (value.clone(), self.device);
        param.map(|old| {
            let require_grad = old.is_require_grad();
            let new = value.reshape(old.shape()).to_device(device).detach();
            if require_grad {
                new.require_grad()
            } else {
                new
            }
        })
    }
}

struct Gather<'a> {
    device: &'a Device,
}

impl ModuleMapper for Gather<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let device = self.device;
        if param.lazy_device() == *device {
            return param;
        }
        param.map(|t| {
            let require_grad = t.is_require_grad();
            let t = t.to_device(device).detach();
            if require_grad { t.require_grad() } else { t }
        })
    }
}

/// `module` with every float parameter on `device` (autodiff state kept: a trainable
/// parameter stays trainable). After `step_multi`, which updates each parameter on the device
/// it chose for it, the runner brings the model home with this.
pub fn gather_to<M: Module>(module: M, device: &Device) -> M {
    module.map(&mut Gather { device })
}

/// One replica of a model per device.
///
/// Replicas are forks of the model (same parameter ids, the whole model copied to each
/// device); after each optimizer step [`Replicas::sync`] copies only the **trainable**
/// parameters (LoRA factors: a few MB; every parameter when the whole model is trained) — the
/// frozen base never changes.
#[derive(Debug, Clone)]
pub struct Replicas<M> {
    devices: Vec<Device>,
    models: Vec<M>,
}

impl<M: Module> Replicas<M> {
    /// Forks `model` onto each of `devices` (in order; the same device may appear twice,
    /// which splits the work without adding compute — the tests use it).
    ///
    /// # Errors
    /// [`CoreError::Config`] for an empty device list.
    pub fn new(model: &M, devices: &[Device]) -> Result<Self> {
        if devices.is_empty() {
            return Err(CoreError::config(
                "devices",
                "data parallelism needs at least one device",
            ));
        }
        Ok(Self {
            devices: devices.to_vec(),
            models: devices.iter().map(|d| model.clone().fork(d)).collect(),
        })
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are no replicas (never true for a constructed value).
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The devices, in shard order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The replicas, in shard order.
    pub fn models(&self) -> &[M] {
        &self.models
    }

    /// Copies `master`'s trainable parameters (those that require a gradient) into every
    /// replica, each on its own device; frozen parameters are left as they are.
    ///
    /// # Errors
    /// [`CoreError::Config`] if a replica lacks one of `master`'s trainable parameters (a
    /// replica of another model).
    pub fn sync(&mut self, master: &M) -> Result<()> {
        let mut collect = CollectTrainable {
            values: HashMap::new(),
        };
        master.visit(&mut collect);
        let want = collect.values.len();
        for (model, device) in self.models.iter_mut().zip(&self.devices) {
            let mut assign = Assign {
                values: &collect.values,
                device,
                assigned: 0,
            };
            *model = model.clone().map(&mut assign);
            if assign.assigned != want {
                return Err(CoreError::config(
                    "devices",
                    format!(
                        "a replica holds {} of the model's {want} trainable parameters",
                        assign.assigned
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Runs `f(d, replica_d, device_d)` for every device, each on its own thread (so that
    /// GPUs work at the same time), and returns the results in device order.
    ///
    /// # Errors
    /// The first device's error, in device order; a panicking thread is an error naming its
    /// device.
    pub fn each<T, F>(&self, f: F) -> Result<Vec<T>>
    where
        M: Sync,
        T: Send,
        F: Fn(usize, &M, &Device) -> Result<T> + Sync,
    {
        if self.models.len() == 1 {
            return Ok(vec![f(0, &self.models[0], &self.devices[0])?]);
        }
        let f = &f;
        let results: Vec<std::thread::Result<Result<T>>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .models
                .iter()
                .zip(&self.devices)
                .enumerate()
                .map(|(d, (m, dev))| s.spawn(move || f(d, m, dev)))
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        results
            .into_iter()
            .zip(&self.devices)
            .map(|(r, dev)| {
                r.map_err(|_| CoreError::Job(format!("the worker of device {dev:?} panicked")))?
            })
            .collect()
    }
}

/// The policy's and the reference's replicas of a job, in `slot`: forked onto `devices` on the
/// first call, the policy's synced to `policy` on later ones (the reference never changes).
///
/// # Errors
/// As [`Replicas::new`] and [`Replicas::sync`].
pub fn policy_and_reference_replicas<M: Module>(
    slot: &mut Option<(Replicas<M>, Replicas<M>)>,
    policy: &M,
    reference: &M,
    devices: &[Device],
) -> Result<()> {
    match slot {
        Some((policies, _)) => policies.sync(policy),
        None => {
            *slot = Some((
                Replicas::new(policy, devices)?,
                Replicas::new(reference, devices)?,
            ));
            Ok(())
        }
    }
}

/// burn's overlapped all-reduce (`DistributedContext`; NCCL on CUDA) as an alternative to
/// [`Gradients::PerDevice`] + `step_multi`: every replica's trainable parameters are marked
/// distributed, and burn all-reduces (sums) each one's gradient **during** the backward passes,
/// as soon as every device has produced it — so communication overlaps the rest of the
/// backward pass. Every device then holds the summed gradient, and the step is a one-device
/// step on the home device ([`Gradients::One`]).
///
/// **Untested**: only `cubecl-cuda` implements burn's collectives, and CUDA cannot be built in
/// this project's workplace; flex, ndarray and wgpu do not support them. Compiled with the
/// `distributed` feature (implied by `cuda`). Using it needs one thread per device for the
/// backward passes (the all-reduce waits for every device); the `align` jobs use
/// [`Gradients::PerDevice`] instead.
#[cfg(feature = "distributed")]
pub struct AllReduce {
    _context: burn::tensor::distributed::DistributedContext,
}

#[cfg(feature = "distributed")]
impl AllReduce {
    /// Starts burn's communication server for `devices`, reducing by sum (the devices'
    /// gradients are already weighted by their share of the minibatch).
    pub fn init(devices: &[Device]) -> Self {
        use burn::tensor::distributed::{DistributedConfig, ReduceOperation};
        Self {
            _context: burn::tensor::distributed::DistributedContext::init(
                devices.to_vec(),
                DistributedConfig {
                    all_reduce_op: ReduceOperation::Sum,
                },
            ),
        }
    }

    /// `replica` with its trainable parameters marked for the all-reduce (by parameter id,
    /// which every replica shares).
    pub fn mark<M: Module>(&self, replica: M) -> M {
        struct Mark;
        impl ModuleMapper for Mark {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                if !param.is_require_grad() {
                    return param;
                }
                let id = param.id;
                param.map(|t| t.set_distributed(id))
            }
        }
        replica.map(&mut Mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_device;
    use burn::module::Param;
    use burn::nn::{Linear, LinearConfig};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn shards_cover_the_batch_once_in_order_and_differ_by_at_most_one(
            n in 0usize..200, parts in 1usize..9,
        ) {
            let r = shard_ranges(n, parts);
            prop_assert_eq!(r.len(), parts);
            let all: Vec<usize> = r.iter().flat_map(|r| r.clone()).collect();
            prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
            let lens: Vec<usize> = r.iter().map(|r| r.len()).collect();
            prop_assert!(lens.iter().max().unwrap_or(&0) - lens.iter().min().unwrap_or(&0) <= 1);
            for i in 0..n {
                let d = shard_of(&r, i).unwrap();
                prop_assert!(r[d].contains(&i));
            }
        }

        #[test]
        fn minibatch_shares_add_up_to_one_and_keep_the_visit_order(
            seed in 0u64..1000, n in 1usize..40, parts in 1usize..5,
        ) {
            // A permutation of a subset of the batch, as an update visits it.
            let mut chunk: Vec<usize> = (0..n).filter(|i| !(i * 7 + seed as usize).is_multiple_of(3)).collect();
            chunk.reverse();
            prop_assume!(!chunk.is_empty());
            let ranges = shard_ranges(n, parts);
            let split = split_minibatch(&chunk, &ranges);
            let total: f64 = split.iter().map(|(_, s)| s).sum();
            prop_assert!((total - 1.0).abs() < 1e-12);
            let mut seen: Vec<usize> = split.iter().flat_map(|(m, _)| m.clone()).collect();
            seen.sort_unstable();
            let mut want = chunk.clone();
            want.sort_unstable();
            prop_assert_eq!(seen, want);
            for ((mine, _), r) in split.iter().zip(&ranges) {
                let order: Vec<usize> = chunk.iter().copied().filter(|i| r.contains(i)).collect();
                prop_assert_eq!(mine, &order);
            }
        }
    }

    #[derive(Module, Debug)]
    struct Two {
        trained: Linear,
        frozen: Linear,
    }

    #[test]
    fn sync_copies_the_trainable_weights_and_leaves_the_frozen_ones() {
        let device = test_device().autodiff();
        let model = Two {
            trained: LinearConfig::new(3, 2).init(&device),
            frozen: LinearConfig::new(3, 2).init(&device).no_grad(),
        };
        crate::runner::materialize(&model);
        let frozen_before = model.frozen.weight.val().into_data();
        let mut replicas = Replicas::new(&model, &[device.clone(), device.clone()]).unwrap();
        // Change both layers of the master; only the trainable one reaches the replicas.
        // (As an optimizer step leaves them: new leaf tensors, trainable or not as before.)
        let bump = |l: &Linear, trainable: bool| {
            let w = l.weight.val().add_scalar(1.0).detach();
            Linear {
                weight: Param::initialized(
                    l.weight.id,
                    if trainable { w.require_grad() } else { w },
                ),
                bias: l.bias.clone(),
            }
        };
        let master = Two {
            trained: bump(&model.trained, true),
            frozen: bump(&model.frozen, false),
        };
        assert!(master.trained.weight.is_require_grad());
        replicas.sync(&master).unwrap();
        for r in replicas.models() {
            r.trained
                .weight
                .val()
                .into_data()
                .assert_eq(&master.trained.weight.val().into_data(), true);
            r.frozen
                .weight
                .val()
                .into_data()
                .assert_eq(&frozen_before, true);
            assert!(r.trained.weight.is_require_grad());
            assert!(!r.frozen.weight.is_require_grad());
        }
        // A replica of another model is refused by name.
        let other = Two {
            trained: LinearConfig::new(3, 2).init(&device),
            frozen: LinearConfig::new(3, 2).init(&device),
        };
        assert!(
            replicas
                .sync(&other)
                .unwrap_err()
                .to_string()
                .contains("devices")
        );
    }

    #[test]
    fn each_runs_every_device_and_keeps_device_order() {
        let device = test_device();
        let model = Two {
            trained: LinearConfig::new(1, 1).init(&device),
            frozen: LinearConfig::new(1, 1).init(&device),
        };
        let replicas = Replicas::new(&model, &[device.clone(), device.clone(), device]).unwrap();
        let out = replicas.each(|d, _, _| Ok(d * 10)).unwrap();
        assert_eq!(out, vec![0, 10, 20]);
        let err = replicas
            .each(|d, _, _| {
                if d == 1 {
                    Err(CoreError::Job("device one failed".into()))
                } else {
                    Ok(d)
                }
            })
            .unwrap_err();
        assert!(err.to_string().contains("device one failed"));
        assert!(Replicas::new(&model, &[]).is_err());
    }
}
