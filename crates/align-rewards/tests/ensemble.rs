//! Property tests of the ensemble's pure aggregation functions and of `Ensemble` itself.
#![allow(clippy::unwrap_used)]

use align_rewards::{
    Aggregate, Ensemble, Normalize, Reward, RunningStats, aggregate, apply_penalties, z_score,
};
use burn::prelude::*;
use proptest::prelude::*;

/// A reward that returns fixed scores, to drive `Ensemble` with known numbers.
struct Fixed(Vec<f64>);

impl Reward for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }
    fn scale(&self) -> &str {
        "any"
    }
    fn score(&self, _images: &Tensor<4>, _prompts: &[String]) -> align_rewards::Result<Vec<f64>> {
        Ok(self.0.clone())
    }
}

fn dummy_batch(b: usize) -> (Tensor<4>, Vec<String>) {
    let device = align_core::test_device();
    (
        Tensor::zeros([b, 3, 1, 1], &device),
        vec!["prompt".to_string(); b],
    )
}

/// `members` × `batch` matrix of scores.
fn matrix() -> impl Strategy<Value = Vec<Vec<f64>>> {
    (1usize..5, 1usize..8).prop_flat_map(|(m, b)| {
        prop::collection::vec(prop::collection::vec(-100.0f64..100.0, b), m)
    })
}

fn population_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

proptest! {
    #[test]
    fn min_is_at_most_the_equal_weight_mean(members in matrix()) {
        let w = vec![1.0; members.len()];
        let min = aggregate(&members, &w, Aggregate::Min).unwrap();
        let mean = aggregate(&members, &w, Aggregate::WeightedMean).unwrap();
        for (lo, m) in min.iter().zip(&mean) {
            prop_assert!(*lo <= *m + 1e-12 * (1.0 + m.abs()));
        }
    }

    #[test]
    fn mean_minus_k_std_is_at_most_the_mean(
        members in matrix(),
        k in 0.0f64..5.0,
        seed_w in prop::collection::vec(0.1f64..3.0, 5),
    ) {
        let w = &seed_w[..members.len()];
        let pess = aggregate(&members, w, Aggregate::MeanMinusKStd(k)).unwrap();
        let mean = aggregate(&members, w, Aggregate::WeightedMean).unwrap();
        for (p, m) in pess.iter().zip(&mean) {
            prop_assert!(*p <= *m);
        }
        // k = 0 is exactly the weighted mean.
        prop_assert_eq!(aggregate(&members, w, Aggregate::MeanMinusKStd(0.0)).unwrap(), mean);
    }

    #[test]
    fn z_scores_have_mean_zero_and_unit_population_variance(
        values in prop::collection::vec(-1000.0f64..1000.0, 2..30),
    ) {
        let z = z_score(&values, 1e-8);
        prop_assert_eq!(z.len(), values.len());
        prop_assert!(z.iter().all(|v| v.is_finite()));
        let (_, std) = population_std(&values);
        if std > 1e-3 {
            let (mean_z, std_z) = population_std(&z);
            prop_assert!(mean_z.abs() < 1e-9, "mean {}", mean_z);
            prop_assert!((std_z * std_z - 1.0).abs() < 1e-4, "var {}", std_z * std_z);
        }
    }

    #[test]
    fn a_constant_member_z_scores_to_exact_zeros(c in -1e6f64..1e6, n in 1usize..30) {
        let z = z_score(&vec![c; n], 1e-8);
        prop_assert_eq!(z, vec![0.0; n]);
        // Also through a running normaliser and an ensemble.
        let mut s = RunningStats::new();
        s.update(&vec![c; n]);
        prop_assert_eq!(s.standardize(&vec![c; n], 1e-8), vec![0.0; n]);
        let e = Ensemble::new(Normalize::batch_z(), Aggregate::WeightedMean).unwrap()
            .member(Fixed(vec![c; n]), 1.0).unwrap();
        let (x, p) = dummy_batch(n);
        prop_assert_eq!(e.score(&x, &p).unwrap(), vec![0.0; n]);
    }

    /// `R = aggregate(normalised members) − coef · raw penalty`, exactly: the penalty is
    /// neither z-scored nor averaged with the members.
    #[test]
    fn penalties_are_applied_raw_after_aggregation(
        members in matrix(),
        seed_penalty in prop::collection::vec(-50.0f64..50.0, 8),
        coef in 0.0f64..10.0,
        norm in 0usize..3,
        agg in 0usize..3,
    ) {
        let b = members[0].len();
        let penalty = seed_penalty[..b].to_vec();
        let normalize = [Normalize::None, Normalize::batch_z(), Normalize::running()][norm];
        let how = [Aggregate::WeightedMean, Aggregate::Min, Aggregate::MeanMinusKStd(1.0)][agg];
        let mut e = Ensemble::new(normalize, how).unwrap();
        for m in &members {
            e = e.member(Fixed(m.clone()), 1.0).unwrap();
        }
        let e = e.penalty(Fixed(penalty.clone()), coef).unwrap();
        let (x, p) = dummy_batch(b);
        let got = e.score(&x, &p).unwrap();

        let normalised: Vec<Vec<f64>> = match normalize {
            Normalize::None => members.clone(),
            // On the first batch, running statistics are the batch's own.
            _ => members.iter().map(|r| z_score(r, 1e-8)).collect(),
        };
        let agg = aggregate(&normalised, &vec![1.0; members.len()], how).unwrap();
        let expected: Vec<f64> = agg.iter().zip(&penalty).map(|(a, q)| a - coef * q).collect();
        if matches!(normalize, Normalize::Running { .. }) {
            // Running stats use the batched Welford update: equal up to rounding.
            for (g, x) in got.iter().zip(&expected) {
                prop_assert!((g - x).abs() <= 1e-9 * (1.0 + x.abs()), "{} vs {}", g, x);
            }
        } else {
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn running_stats_equal_the_statistics_of_the_concatenation(
        batches in prop::collection::vec(prop::collection::vec(-100.0f64..100.0, 0..10), 1..6),
    ) {
        let mut s = RunningStats::new();
        for batch in &batches {
            s.update(batch);
        }
        let all: Vec<f64> = batches.concat();
        prop_assert_eq!(s.count(), all.len() as u64);
        if !all.is_empty() {
            let (mean, std) = population_std(&all);
            prop_assert!((s.mean() - mean).abs() < 1e-9);
            prop_assert!((s.variance() - std * std).abs() < 1e-7 * (1.0 + std * std));
        }
    }
}

#[test]
fn normalising_the_penalty_would_change_the_result_but_it_is_not_normalised() {
    // Members constant (z = 0); penalty [0, 10] with coef 1. A z-scored penalty would give
    // [1, −1]; the raw one gives [0, −10].
    let e = Ensemble::new(Normalize::batch_z(), Aggregate::WeightedMean)
        .unwrap()
        .member(Fixed(vec![3.0, 3.0]), 1.0)
        .unwrap()
        .penalty(Fixed(vec![0.0, 10.0]), 1.0)
        .unwrap();
    let (x, p) = dummy_batch(2);
    assert_eq!(e.score(&x, &p).unwrap(), vec![0.0, -10.0]);
}

#[test]
fn running_normalisation_uses_all_batches_seen() {
    let e = Ensemble::new(Normalize::running(), Aggregate::WeightedMean)
        .unwrap()
        .member(Fixed(vec![0.0, 2.0]), 1.0)
        .unwrap();
    let (x, p) = dummy_batch(2);
    // Batch 1: mean 1, std 1.
    let first = e.score(&x, &p).unwrap();
    assert!((first[0] + 1.0).abs() < 1e-6 && (first[1] - 1.0).abs() < 1e-6);
    // The same batch again: statistics unchanged (mean 1, population std 1).
    let second = e.score(&x, &p).unwrap();
    assert!((second[0] + 1.0).abs() < 1e-6);
    assert_eq!(e.running_stats()[0].count(), 4);
    e.reset_running();
    assert_eq!(e.running_stats()[0].count(), 0);
}

#[test]
fn member_score_count_mismatch_is_an_error() {
    let e = Ensemble::new(Normalize::None, Aggregate::Min)
        .unwrap()
        .member(Fixed(vec![1.0]), 1.0)
        .unwrap();
    let (x, p) = dummy_batch(2);
    assert!(matches!(
        e.score(&x, &p),
        Err(align_rewards::RewardError::Shape { .. })
    ));
}

#[test]
fn an_ensemble_without_members_is_an_error() {
    let e = Ensemble::new(Normalize::None, Aggregate::WeightedMean).unwrap();
    let (x, p) = dummy_batch(2);
    assert!(e.score(&x, &p).is_err());
}

#[test]
fn apply_penalties_checks_lengths() {
    assert!(apply_penalties(&[1.0, 2.0], &[vec![1.0]], &[1.0]).is_err());
    assert!(apply_penalties(&[1.0], &[vec![1.0]], &[]).is_err());
    assert_eq!(
        apply_penalties(&[1.0, 2.0], &[vec![1.0, 2.0]], &[0.5]).unwrap(),
        vec![0.5, 1.0]
    );
}
