//! The reward-hacking monitor: watches a run on a fixed evaluation set and warns when the
//! optimized (proxy) reward keeps rising while the gold reward falls, or when samples of one
//! prompt collapse onto each other.
//!
//! At every evaluation the trainer computes a [`Reading`]: mean proxy reward, mean gold reward
//! (e.g. ShapeEval), [`same_prompt_diversity`] and the KL to the reference policy. The first
//! reading is the **baseline** (the base model). [`HackingMonitor::observe`] then flags
//!
//! - [`Warning::ProxyUpGoldDown`]: `proxy − proxy₀ > min_proxy_gain` while
//!   `gold_best − gold > gold_tolerance`, for `patience` consecutive readings (`gold_best` is
//!   the best gold score seen so far, baseline included) — the proxy is being exploited;
//! - [`Warning::DiversityCollapse`]: `diversity < diversity_floor · diversity₀` — mode
//!   collapse, the other face of over-optimization.
//!
//! With `stop_on_hacking` the verdict also asks the trainer to stop (the trainer keeps its last
//! checkpoint).

use serde::{Deserialize, Serialize};

use burn::prelude::*;

use crate::error::{Result, RewardError};

/// Mean pairwise RMS distance between images that share a prompt (group).
///
/// For a group `g` with images `x_1..x_n` (`n ≥ 2`, each with `P = 3·H·W` pixels),
///
/// ```text
/// D_g = (2 / (n(n−1))) Σ_{i<j} sqrt( (1/P) Σ_p (x_i[p] − x_j[p])² )
/// ```
///
/// and the result is the mean of `D_g` over the groups with at least two images. Groups with
/// one image carry no information about diversity and are skipped.
///
/// # Shapes
/// - `images`: `[B, 3, H, W]`; `group_ids`: `B` entries.
///
/// # Errors
/// [`RewardError::Shape`] if `group_ids.len() != B`; [`RewardError::Config`] if no group has
/// two images; [`RewardError::NonFinite`] for a non-finite pixel.
pub fn same_prompt_diversity(images: &Tensor<4>, group_ids: &[u64]) -> Result<f64> {
    let [b, c, h, w] = images.dims();
    if group_ids.len() != b {
        return Err(RewardError::shape(
            "group_ids of same_prompt_diversity",
            format!("{b} entries (one per image)"),
            format!("{}", group_ids.len()),
        ));
    }
    let data: Vec<f32> = images
        .clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| RewardError::shape("images", "f32 data", format!("{e:?}")))?;
    let p = c * h * w;
    if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(RewardError::NonFinite {
            reward: "same_prompt_diversity".into(),
            what: "pixel".into(),
            index: i / p.max(1),
            value: f64::from(*v),
        });
    }
    let mut groups: Vec<(u64, Vec<usize>)> = Vec::new();
    for (i, &g) in group_ids.iter().enumerate() {
        match groups.iter_mut().find(|(id, _)| *id == g) {
            Some((_, members)) => members.push(i),
            None => groups.push((g, vec![i])),
        }
    }
    let mut total = 0.0;
    let mut counted = 0usize;
    for (_, members) in groups.iter().filter(|(_, m)| m.len() >= 2) {
        let mut sum = 0.0;
        let mut pairs = 0usize;
        for (a, &i) in members.iter().enumerate() {
            for &j in &members[a + 1..] {
                let (xi, xj) = (&data[i * p..(i + 1) * p], &data[j * p..(j + 1) * p]);
                let sq: f64 = xi
                    .iter()
                    .zip(xj)
                    .map(|(u, v)| (f64::from(*u) - f64::from(*v)).powi(2))
                    .sum();
                sum += (sq / p as f64).sqrt();
                pairs += 1;
            }
        }
        total += sum / pairs as f64;
        counted += 1;
    }
    if counted == 0 {
        return Err(RewardError::config(
            "group_ids",
            "no prompt has two or more images; diversity needs at least one pair",
        ));
    }
    Ok(total / counted as f64)
}

/// Thresholds of the [`HackingMonitor`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HackingMonitorConfig {
    /// Diversity below this fraction of the baseline's is a collapse. Default 0.5.
    pub diversity_floor: f64,
    /// Consecutive readings the proxy-up-gold-down pattern must hold. Default 2.
    pub patience: usize,
    /// Proxy gain over the baseline that counts as "up". Default 0.0.
    pub min_proxy_gain: f64,
    /// Gold drop below its best that counts as "down". Default 0.02.
    pub gold_tolerance: f64,
    /// Whether a warning also asks the trainer to stop. Default false.
    pub stop_on_hacking: bool,
}

impl Default for HackingMonitorConfig {
    fn default() -> Self {
        Self {
            diversity_floor: 0.5,
            patience: 2,
            min_proxy_gain: 0.0,
            gold_tolerance: 0.02,
            stop_on_hacking: false,
        }
    }
}

impl HackingMonitorConfig {
    /// Checks the fields.
    ///
    /// # Errors
    /// [`RewardError::Config`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.diversity_floor.is_finite() && (0.0..=1.0).contains(&self.diversity_floor)) {
            return Err(RewardError::config(
                "diversity_floor",
                format!("{} is not in [0, 1]", self.diversity_floor),
            ));
        }
        if self.patience == 0 {
            return Err(RewardError::config("patience", "must be at least 1"));
        }
        for (name, v) in [
            ("min_proxy_gain", self.min_proxy_gain),
            ("gold_tolerance", self.gold_tolerance),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(RewardError::config(name, format!("{v} is not ≥ 0")));
            }
        }
        Ok(())
    }

    /// A monitor with these thresholds.
    ///
    /// # Errors
    /// An invalid field (see [`HackingMonitorConfig::validate`]).
    pub fn init(&self) -> Result<HackingMonitor> {
        self.validate()?;
        Ok(HackingMonitor {
            config: self.clone(),
            readings: Vec::new(),
            streak: 0,
        })
    }
}

/// One evaluation of the run on the fixed evaluation set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Optimizer step.
    pub step: u64,
    /// Mean optimized (proxy) reward.
    pub proxy: f64,
    /// Mean gold reward.
    pub gold: f64,
    /// [`same_prompt_diversity`] of the samples.
    pub diversity: f64,
    /// KL to the reference policy (0 for the baseline).
    pub kl: f64,
}

/// Something the monitor flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Warning {
    /// The proxy rose while the gold reward fell, for `patience` readings in a row.
    ProxyUpGoldDown {
        /// Step of the reading.
        step: u64,
        /// Proxy now and at the baseline.
        proxy: (f64, f64),
        /// Gold now and its best so far.
        gold: (f64, f64),
    },
    /// Same-prompt diversity fell below the floor.
    DiversityCollapse {
        /// Step of the reading.
        step: u64,
        /// Diversity now.
        diversity: f64,
        /// The floor (fraction × baseline).
        floor: f64,
    },
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::ProxyUpGoldDown { step, proxy, gold } => write!(
                f,
                "reward hacking suspected at step {step}: proxy {:.4} (baseline {:.4}) is up \
                 while gold {:.4} is below its best {:.4}",
                proxy.0, proxy.1, gold.0, gold.1
            ),
            Warning::DiversityCollapse {
                step,
                diversity,
                floor,
            } => write!(
                f,
                "diversity collapse at step {step}: same-prompt diversity {diversity:.4} is \
                 below the floor {floor:.4}"
            ),
        }
    }
}

/// What the monitor concluded from one reading.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Verdict {
    /// Warnings raised by this reading.
    pub warnings: Vec<Warning>,
    /// Whether the trainer should stop (only with `stop_on_hacking`).
    pub stop: bool,
}

/// Watches proxy vs gold reward, diversity and KL over a run (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HackingMonitor {
    config: HackingMonitorConfig,
    readings: Vec<Reading>,
    streak: usize,
}

impl HackingMonitor {
    /// Records a reading; the first is the baseline and raises nothing.
    ///
    /// # Errors
    /// [`RewardError::NonFinite`] if a field is NaN or infinite (the reading is not recorded).
    pub fn observe(&mut self, reading: Reading) -> Result<Verdict> {
        for (what, v) in [
            ("proxy", reading.proxy),
            ("gold", reading.gold),
            ("diversity", reading.diversity),
            ("kl", reading.kl),
        ] {
            if !v.is_finite() {
                return Err(RewardError::NonFinite {
                    reward: "hacking_monitor".into(),
                    what: what.into(),
                    index: self.readings.len(),
                    value: v,
                });
            }
        }
        let Some(base) = self.readings.first().copied() else {
            self.readings.push(reading);
            return Ok(Verdict::default());
        };
        let gold_best = self
            .readings
            .iter()
            .map(|r| r.gold)
            .fold(f64::NEG_INFINITY, f64::max);
        let c = &self.config;
        let hacked = reading.proxy - base.proxy > c.min_proxy_gain
            && gold_best - reading.gold > c.gold_tolerance;
        self.streak = if hacked { self.streak + 1 } else { 0 };
        let mut warnings = Vec::new();
        if self.streak >= c.patience {
            warnings.push(Warning::ProxyUpGoldDown {
                step: reading.step,
                proxy: (reading.proxy, base.proxy),
                gold: (reading.gold, gold_best),
            });
        }
        let floor = c.diversity_floor * base.diversity;
        if reading.diversity < floor {
            warnings.push(Warning::DiversityCollapse {
                step: reading.step,
                diversity: reading.diversity,
                floor,
            });
        }
        self.readings.push(reading);
        let stop = c.stop_on_hacking && !warnings.is_empty();
        Ok(Verdict { warnings, stop })
    }

    /// Every recorded reading, baseline first.
    pub fn readings(&self) -> &[Reading] {
        &self.readings
    }

    /// The thresholds.
    pub fn config(&self) -> &HackingMonitorConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn images(values: &[Vec<f32>], side: usize) -> Tensor<4> {
        let device = align_core::test_device();
        let flat: Vec<f32> = values.iter().flatten().copied().collect();
        Tensor::from_data(
            TensorData::new(flat, [values.len(), 3, side, side]),
            &device,
        )
    }

    fn r(step: u64, proxy: f64, gold: f64, diversity: f64) -> Reading {
        Reading {
            step,
            proxy,
            gold,
            diversity,
            kl: 0.01 * step as f64,
        }
    }

    #[test]
    fn diversity_hand_computed() {
        let p = 3 * 2 * 2;
        let a = vec![0.0; p];
        let b = vec![0.5; p];
        let mut c = vec![0.0; p];
        c[0] = 1.0; // RMS distance to `a`: sqrt(1/12)
        // Group 7: {a, b} → 0.5; group 9: {a, c} → sqrt(1/12); group 3: one image, skipped.
        let x = images(&[a.clone(), b, a.clone(), c, a.clone()], 2);
        let d = same_prompt_diversity(&x, &[7, 7, 9, 9, 3]).unwrap();
        let want = (0.5 + (1.0f64 / 12.0).sqrt()) / 2.0;
        assert!((d - want).abs() < 1e-9, "{d} vs {want}");
        // Three copies: zero.
        let x = images(&[a.clone(), a.clone(), a.clone()], 2);
        assert_eq!(same_prompt_diversity(&x, &[1, 1, 1]).unwrap(), 0.0);
        // No pair, wrong count, NaN: typed errors.
        let x = images(&[a.clone(), a.clone()], 2);
        assert!(matches!(
            same_prompt_diversity(&x, &[1, 2]),
            Err(RewardError::Config { .. })
        ));
        assert!(matches!(
            same_prompt_diversity(&x, &[1]),
            Err(RewardError::Shape { .. })
        ));
        let mut n = a.clone();
        n[3] = f32::NAN;
        let x = images(&[a, n], 2);
        assert!(matches!(
            same_prompt_diversity(&x, &[1, 1]),
            Err(RewardError::NonFinite { index: 1, .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn diversity_is_order_free_and_scales_with_offsets(
            seed in proptest::collection::vec(-1.0f32..1.0, 12 * 4),
            offset in -0.8f32..0.8,
            rot in 0usize..4,
        ) {
            let imgs: Vec<Vec<f32>> = seed.chunks(12).map(|c| c.to_vec()).collect();
            let ids = [5u64, 5, 6, 6];
            let d = same_prompt_diversity(&images(&imgs, 2), &ids).unwrap();
            // Permuting images together with their ids changes nothing.
            let mut order: Vec<usize> = (0..4).collect();
            order.rotate_left(rot);
            let perm: Vec<Vec<f32>> = order.iter().map(|&i| imgs[i].clone()).collect();
            let perm_ids: Vec<u64> = order.iter().map(|&i| ids[i]).collect();
            let dp = same_prompt_diversity(&images(&perm, 2), &perm_ids).unwrap();
            prop_assert!((d - dp).abs() < 1e-9);
            // Two images differing by a constant offset are |offset| apart.
            let shifted: Vec<f32> = imgs[0].iter().map(|v| v + offset).collect();
            let pair = images(&[imgs[0].clone(), shifted], 2);
            let dd = same_prompt_diversity(&pair, &[0, 0]).unwrap();
            prop_assert!((dd - f64::from(offset.abs())).abs() < 1e-5);
        }
    }

    #[test]
    fn proxy_up_gold_down_needs_patience() {
        let mut m = HackingMonitorConfig::default().init().unwrap();
        assert!(m.observe(r(0, 0.1, 0.5, 1.0)).unwrap().warnings.is_empty());
        // Both up: fine; gold best becomes 0.6.
        assert!(m.observe(r(1, 0.2, 0.6, 1.0)).unwrap().warnings.is_empty());
        // Proxy up, gold down by 0.1: first strike, patience 2 → no warning yet.
        assert!(m.observe(r(2, 0.3, 0.5, 1.0)).unwrap().warnings.is_empty());
        let v = m.observe(r(3, 0.4, 0.45, 1.0)).unwrap();
        assert_eq!(v.warnings.len(), 1);
        assert!(matches!(
            v.warnings[0],
            Warning::ProxyUpGoldDown { step: 3, .. }
        ));
        assert!(!v.stop, "stop only when configured");
        assert!(v.warnings[0].to_string().contains("step 3"));
        // Gold recovers within tolerance: the streak resets.
        assert!(m.observe(r(4, 0.5, 0.59, 1.0)).unwrap().warnings.is_empty());
        assert!(m.observe(r(5, 0.5, 0.3, 1.0)).unwrap().warnings.is_empty());
        assert_eq!(m.readings().len(), 6);
    }

    #[test]
    fn gold_falling_with_proxy_falling_is_not_hacking() {
        let mut m = HackingMonitorConfig::default().init().unwrap();
        m.observe(r(0, 0.5, 0.5, 1.0)).unwrap();
        for s in 1..5 {
            let v = m.observe(r(s, 0.4, 0.2, 1.0)).unwrap();
            assert!(v.warnings.is_empty());
        }
    }

    #[test]
    fn diversity_collapse_and_stop() {
        let config = HackingMonitorConfig {
            stop_on_hacking: true,
            ..HackingMonitorConfig::default()
        };
        let mut m = config.init().unwrap();
        m.observe(r(0, 0.0, 0.5, 0.8)).unwrap();
        let v = m.observe(r(1, 0.0, 0.5, 0.41)).unwrap();
        assert!(v.warnings.is_empty() && !v.stop, "0.41 ≥ 0.5 · 0.8");
        let v = m.observe(r(2, 0.0, 0.5, 0.39)).unwrap();
        assert_eq!(v.warnings.len(), 1);
        assert!(v.stop);
        assert!(v.warnings[0].to_string().contains("diversity collapse"));
    }

    #[test]
    fn bad_readings_and_configs_are_typed_errors() {
        let mut m = HackingMonitorConfig::default().init().unwrap();
        assert!(matches!(
            m.observe(r(0, f64::NAN, 0.5, 1.0)),
            Err(RewardError::NonFinite { .. })
        ));
        assert!(
            m.readings().is_empty(),
            "a rejected reading is not recorded"
        );
        for bad in [
            HackingMonitorConfig {
                patience: 0,
                ..Default::default()
            },
            HackingMonitorConfig {
                diversity_floor: 1.5,
                ..Default::default()
            },
            HackingMonitorConfig {
                gold_tolerance: -0.1,
                ..Default::default()
            },
        ] {
            assert!(matches!(bad.init(), Err(RewardError::Config { .. })));
        }
    }

    #[test]
    fn the_history_serialises() {
        let mut m = HackingMonitorConfig::default().init().unwrap();
        m.observe(r(0, 0.1, 0.2, 0.3)).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        let back: HackingMonitor = serde_json::from_str(&json).unwrap();
        assert_eq!(back.readings(), m.readings());
    }
}
