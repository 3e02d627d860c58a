//! The `reward` field of a training configuration: a built-in reward by name, an external
//! scorer (an HTTP service or a command), or an ensemble of rewards with hard penalties.
//!
//! ```toml
//! reward = "aesthetic"                                   # a built-in reward
//! reward = { http = "http://127.0.0.1:8765/score", batch = 64, retries = 3, timeout_s = 60 }
//! reward = { command = ["python3", "score.py"], timeout_s = 120 }
//!
//! [reward]                                               # an ensemble
//! normalize = "batch-z"                                  # none | batch-z | running
//! aggregate = "weighted-mean"                            # weighted-mean | min | { mean-minus-k-std = 1.0 }
//! ensemble = [
//!   { reward = "aesthetic", weight = 1.0 },
//!   { reward = { http = "http://127.0.0.1:8765/score" }, weight = 0.5 },
//! ]
//! penalties = [{ reward = "jpeg-incompressibility", coef = 0.01 }]
//! ```
//!
//! HTTP rewards talk to this machine unless `allow_remote = true` (the images then leave it);
//! the wire format is [`align_rewards::HttpReward`]'s: a POST of
//! `{"prompts": [...], "images_png_base64": [...]}` answered by `{"scores": [...]}`.
//! `scripts/reward-server.py` is a complete example server.

use std::time::Duration;

use align_rewards::{Aggregate, CommandReward, Ensemble, HttpReward, Normalize, Reward};
use serde::{Deserialize, Serialize};

use crate::config::RewardName;
use crate::error::{Result, TrainError};
use crate::evaluator::SharedReward;

/// What the run is rewarded by (the `reward` field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, try_from = "toml::Value")]
pub enum RewardSpec {
    /// A built-in reward.
    Named(RewardName),
    /// An HTTP scoring service.
    Http(HttpRewardSpec),
    /// A local program.
    Command(CommandRewardSpec),
    /// Several rewards combined.
    Ensemble(EnsembleSpec),
}

impl From<RewardName> for RewardSpec {
    fn from(name: RewardName) -> Self {
        Self::Named(name)
    }
}

/// `reward = { http = URL, … }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRewardSpec {
    /// The URL the images are POSTed to.
    pub http: String,
    /// Images per request (0 = the whole batch in one request).
    #[serde(default)]
    pub batch: usize,
    /// Retries of a request that fails to connect, times out or gets a 5xx answer.
    #[serde(default)]
    pub retries: u32,
    /// Seconds one request may take.
    #[serde(default = "default_http_timeout")]
    pub timeout_s: f64,
    /// Allow hosts other than this machine (the images leave it).
    #[serde(default)]
    pub allow_remote: bool,
    /// The reward's name in logs and reports (default `external_http`).
    #[serde(default)]
    pub name: Option<String>,
}

fn default_http_timeout() -> f64 {
    30.0
}

/// `reward = { command = [PROGRAM, ARGS…], … }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRewardSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Seconds one batch may take.
    #[serde(default = "default_command_timeout")]
    pub timeout_s: f64,
    /// The reward's name in logs and reports (default `external_command`).
    #[serde(default)]
    pub name: Option<String>,
}

fn default_command_timeout() -> f64 {
    60.0
}

/// How ensemble members are standardised before aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormalizeName {
    /// Raw scores.
    None,
    /// z-scores over the batch.
    #[default]
    BatchZ,
    /// z-scores with running statistics over every batch seen.
    Running,
}

/// How normalised members are combined.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AggregateSpec {
    /// `Σ w z / Σ w`.
    #[default]
    WeightedMean,
    /// The smallest member.
    Min,
    /// Weighted mean minus `k` weighted standard deviations across members.
    MeanMinusKStd(f64),
}

/// One ensemble member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// The member reward.
    pub reward: RewardSpec,
    /// Its weight (≥ 0).
    #[serde(default = "one")]
    pub weight: f64,
}

/// One hard penalty, subtracted after aggregation on its raw score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PenaltySpec {
    /// The penalised quantity.
    pub reward: RewardSpec,
    /// Its coefficient (≥ 0).
    pub coef: f64,
}

fn one() -> f64 {
    1.0
}

/// `reward = { ensemble = […], … }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleSpec {
    /// The members.
    pub ensemble: Vec<MemberSpec>,
    /// Member normalisation.
    #[serde(default)]
    pub normalize: NormalizeName,
    /// Aggregation.
    #[serde(default)]
    pub aggregate: AggregateSpec,
    /// Hard penalties.
    #[serde(default)]
    pub penalties: Vec<PenaltySpec>,
}

impl TryFrom<toml::Value> for RewardSpec {
    type Error = String;

    fn try_from(value: toml::Value) -> std::result::Result<Self, String> {
        match value {
            toml::Value::String(_) => RewardName::deserialize(value)
                .map(Self::Named)
                .map_err(|e| e.to_string().trim().to_string()),
            toml::Value::Table(t) => {
                let kind = ["http", "command", "ensemble"]
                    .into_iter()
                    .find(|k| t.contains_key(*k))
                    .ok_or_else(|| {
                        "a reward table needs `http` (a scoring service), `command` (a program) \
                         or `ensemble` (a list of members)"
                            .to_string()
                    })?;
                let value = toml::Value::Table(t);
                let err = |e: toml::de::Error| format!("reward.{kind}: {}", e.to_string().trim());
                Ok(match kind {
                    "http" => Self::Http(HttpRewardSpec::deserialize(value).map_err(err)?),
                    "command" => Self::Command(CommandRewardSpec::deserialize(value).map_err(err)?),
                    _ => Self::Ensemble(EnsembleSpec::deserialize(value).map_err(err)?),
                })
            }
            other => Err(format!(
                "expected a reward name or a table, got {}",
                other.type_str()
            )),
        }
    }
}

impl std::fmt::Display for RewardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The TOML spelling (`aesthetic`, `clip-score`).
            Self::Named(n) => match serde_json::to_value(n) {
                Ok(serde_json::Value::String(name)) => write!(f, "{name}"),
                _ => write!(f, "{n:?}"),
            },
            Self::Http(h) => write!(f, "{}", h.name.as_deref().unwrap_or("external_http")),
            Self::Command(c) => write!(f, "{}", c.name.as_deref().unwrap_or("external_command")),
            Self::Ensemble(e) => {
                let names: Vec<String> = e.ensemble.iter().map(|m| m.reward.to_string()).collect();
                write!(f, "ensemble({})", names.join(", "))
            }
        }
    }
}

impl RewardSpec {
    /// The built-in reward, if this is one.
    pub fn named(&self) -> Option<RewardName> {
        match self {
            Self::Named(n) => Some(*n),
            _ => None,
        }
    }

    fn all(&self, f: &dyn Fn(&RewardSpec) -> bool) -> bool {
        match self {
            Self::Ensemble(e) => {
                e.ensemble.iter().all(|m| m.reward.all(f))
                    && e.penalties.iter().all(|p| p.reward.all(f))
            }
            other => f(other),
        }
    }

    /// The reward as evaluations measure it: every ensemble without normalisation (`none`),
    /// so that the before/after and `align eval --run` figures are the raw weighted
    /// combination. A z-scored ensemble's batch mean is 0 by construction and its running
    /// statistics would change with every evaluation.
    pub fn for_evaluation(&self) -> RewardSpec {
        match self {
            Self::Ensemble(e) => {
                let mut e = e.clone();
                e.normalize = NormalizeName::None;
                for m in &mut e.ensemble {
                    m.reward = m.reward.for_evaluation();
                }
                for p in &mut e.penalties {
                    p.reward = p.reward.for_evaluation();
                }
                Self::Ensemble(e)
            }
            other => other.clone(),
        }
    }

    /// Whether the reward has a gradient to the pixels (external scorers have none; an
    /// ensemble has one when every member and penalty has).
    pub fn is_differentiable(&self) -> bool {
        self.all(&|r| r.named().is_some_and(RewardName::is_differentiable))
    }

    /// Whether every built-in reward in it judges Shapes-world prompts (external scorers
    /// judge any image).
    pub fn fits_shapes_models(&self) -> bool {
        self.all(&|r| r.named().is_none_or(RewardName::is_shapes_world))
    }

    /// Whether every built-in reward in it judges real images.
    pub fn fits_real_images(&self) -> bool {
        self.all(&|r| r.named().is_none_or(|n| !n.is_shapes_world()))
    }

    /// Whether a built-in reward in it satisfies `f`.
    pub fn any_named(&self, f: &dyn Fn(RewardName) -> bool) -> bool {
        !self.all(&|r| r.named().is_none_or(|n| !f(n)))
    }

    /// Builds the reward; `named` builds the built-in ones (they depend on the model family).
    ///
    /// # Errors
    /// `reward` for bad external settings (URL, timeout, empty command, weights) and the errors
    /// of `named`.
    pub fn build(
        &self,
        named: &dyn Fn(RewardName) -> Result<Box<dyn Reward>>,
    ) -> Result<Box<dyn Reward>> {
        let bad = |e: align_rewards::RewardError| TrainError::config("reward", e.to_string());
        let timeout = |s: f64| match Duration::try_from_secs_f64(s) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err(TrainError::config(
                "reward.timeout_s",
                format!("must be a positive number of seconds, got {s}"),
            )),
        };
        Ok(match self {
            Self::Named(n) => named(*n)?,
            Self::Http(h) => {
                let reward = if h.allow_remote {
                    HttpReward::remote(&h.http)
                } else {
                    HttpReward::new(&h.http)
                }
                .map_err(bad)?
                .with_timeout(timeout(h.timeout_s)?)
                .map_err(bad)?
                .with_batch(h.batch)
                .with_retries(h.retries);
                Box::new(match &h.name {
                    Some(n) => reward.with_name(n.clone()),
                    None => reward,
                })
            }
            Self::Command(c) => {
                let (program, args) = c.command.split_first().ok_or_else(|| {
                    TrainError::config("reward.command", "name the program to run")
                })?;
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let reward = CommandReward::new(program, &args)
                    .map_err(bad)?
                    .with_timeout(timeout(c.timeout_s)?)
                    .map_err(bad)?;
                Box::new(match &c.name {
                    Some(n) => reward.with_name(n.clone()),
                    None => reward,
                })
            }
            Self::Ensemble(e) => {
                if e.ensemble.is_empty() {
                    return Err(TrainError::config(
                        "reward.ensemble",
                        "list at least one member",
                    ));
                }
                let normalize = match e.normalize {
                    NormalizeName::None => Normalize::None,
                    NormalizeName::BatchZ => Normalize::batch_z(),
                    NormalizeName::Running => Normalize::running(),
                };
                let aggregate = match e.aggregate {
                    AggregateSpec::WeightedMean => Aggregate::WeightedMean,
                    AggregateSpec::Min => Aggregate::Min,
                    AggregateSpec::MeanMinusKStd(k) => Aggregate::MeanMinusKStd(k),
                };
                let mut ensemble = Ensemble::new(normalize, aggregate).map_err(bad)?;
                for m in &e.ensemble {
                    ensemble = ensemble
                        .member(SharedReward::new(m.reward.build(named)?), m.weight)
                        .map_err(bad)?;
                }
                for p in &e.penalties {
                    ensemble = ensemble
                        .penalty(SharedReward::new(p.reward.build(named)?), p.coef)
                        .map_err(bad)?;
                }
                Box::new(ensemble)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AlgorithmName, TrainConfig};
    use burn::prelude::*;

    fn parse(text: &str) -> std::result::Result<TrainConfig, String> {
        toml::from_str::<TrainConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn rewards_parse_from_names_and_tables_and_round_trip() {
        let c = parse("reward = \"aesthetic\"").unwrap();
        assert_eq!(c.reward, RewardSpec::Named(RewardName::Aesthetic));
        let c = parse(
            "reward = { http = \"http://127.0.0.1:8765/score\", batch = 64, retries = 3, timeout_s = 60 }",
        )
        .unwrap();
        let RewardSpec::Http(h) = &c.reward else {
            panic!("{:?}", c.reward)
        };
        assert_eq!(
            (h.batch, h.retries, h.timeout_s, h.allow_remote),
            (64, 3, 60.0, false)
        );
        let c = parse("reward = { command = [\"python3\", \"score.py\"] }").unwrap();
        assert!(matches!(&c.reward, RewardSpec::Command(c) if c.timeout_s == 60.0));
        let text = r#"
            [reward]
            normalize = "running"
            aggregate = { mean-minus-k-std = 0.5 }
            ensemble = [
              { reward = "aesthetic" },
              { reward = { http = "http://localhost:9/s" }, weight = 0.5 },
            ]
            penalties = [{ reward = "jpeg-incompressibility", coef = 0.01 }]
        "#;
        let c = parse(text).unwrap();
        let RewardSpec::Ensemble(e) = &c.reward else {
            panic!("{:?}", c.reward)
        };
        assert_eq!(e.normalize, NormalizeName::Running);
        assert_eq!(e.aggregate, AggregateSpec::MeanMinusKStd(0.5));
        assert_eq!(
            (e.ensemble.len(), e.ensemble[0].weight, e.penalties.len()),
            (2, 1.0, 1)
        );
        assert!(!c.reward.is_differentiable());
        assert!(c.reward.fits_real_images() && !c.reward.fits_shapes_models());
        assert_eq!(c.reward.to_string(), "ensemble(aesthetic, external_http)");
        // A run's config.toml writes the reward back in a form that reads again.
        for reward in [
            parse(text).unwrap().reward,
            RewardSpec::Named(RewardName::Proxy),
            parse("reward = { command = [\"x\"], name = \"judge\" }")
                .unwrap()
                .reward,
        ] {
            let c = TrainConfig {
                reward,
                ..TrainConfig::default()
            };
            let again: TrainConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
            assert_eq!(again.reward, c.reward);
        }
    }

    #[test]
    fn bad_reward_settings_are_named() {
        for (text, needle) in [
            ("reward = \"nope\"", "unknown variant `nope`"),
            (
                "reward = { http = \"http://x\", batchh = 2 }",
                "reward.http: unknown field `batchh`",
            ),
            ("reward = { url = \"http://x\" }", "needs `http`"),
            ("reward = 3", "expected a reward name or a table"),
            (
                "reward = { ensemble = [{ reward = \"aesthetic\", wieght = 1 }] }",
                "wieght",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let named = |_: RewardName| -> Result<Box<dyn Reward>> { unreachable!() };
        for (text, needle) in [
            (
                "reward = { http = \"http://example.com/s\" }",
                "allow_remote",
            ),
            (
                "reward = { http = \"http://127.0.0.1:1/s\", timeout_s = 0 }",
                "timeout_s",
            ),
            ("reward = { command = [] }", "reward.command"),
            ("reward = { ensemble = [] }", "reward.ensemble"),
        ] {
            let err = parse(text)
                .unwrap()
                .reward
                .build(&named)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        // Reward backprop needs a differentiable reward: an external one is refused.
        let mut c = parse("reward = { http = \"http://127.0.0.1:1/s\" }").unwrap();
        c.algorithm = AlgorithmName::Draft;
        c.out = "x".into();
        c.model = "models/shapes-dit".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("reward:"), "{err}");
    }

    /// An ensemble of external commands with a penalty scores what the formula says:
    /// `Σ w r / Σ w − λ q` without normalisation.
    #[test]
    fn an_ensemble_from_toml_combines_its_members() {
        let text = r#"
            [reward]
            normalize = "none"
            ensemble = [
              { reward = { command = ["sh", "-c", "cat > /dev/null; echo '{\"scores\": [1, 2]}'"] } },
              { reward = { command = ["sh", "-c", "cat > /dev/null; echo '{\"scores\": [3, 5]}'"] }, weight = 3 },
            ]
            penalties = [{ reward = { command = ["sh", "-c", "cat > /dev/null; echo '{\"scores\": [1, 1]}'"] }, coef = 0.5 }]
        "#;
        let reward = parse(text)
            .unwrap()
            .reward
            .build(&|_| unreachable!())
            .unwrap();
        let device = align_core::test_device();
        let images = Tensor::<4>::zeros([2, 3, 4, 4], &device);
        let scores = reward
            .score(&images, &["a".to_string(), "b".to_string()])
            .unwrap();
        let expected = [(1.0 + 3.0 * 3.0) / 4.0 - 0.5, (2.0 + 3.0 * 5.0) / 4.0 - 0.5];
        for (s, e) in scores.iter().zip(expected) {
            assert!((s - e).abs() < 1e-12, "{scores:?}");
        }
    }

    /// A loopback scoring service: request `k` (from 0) is answered with scores 0, 1, 2, …
    /// while `ok(k)`, else with HTTP 500. Returns the port.
    fn scoring_service(ok: impl Fn(usize) -> bool + Send + 'static) -> u16 {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for (k, stream) in listener.incoming().enumerate() {
                let Ok(mut s) = stream else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let body = loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap_or(0));
                        while buf.len() < i + 4 + len {
                            let n = s.read(&mut chunk).unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        break buf[i + 4..].to_vec();
                    }
                };
                if !ok(k) {
                    let _ = write!(
                        s,
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\ndown"
                    );
                    continue;
                }
                let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let n = req["images_png_base64"].as_array().unwrap().len();
                let scores: Vec<f64> = (0..n).map(|i| i as f64).collect();
                let answer = serde_json::json!({ "scores": scores }).to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        port
    }

    fn http_run_config(port: u16, dir: &std::path::Path, iterations: usize) -> TrainConfig {
        let text = format!(
            "model = \"{}\"\nout = \"{}\"\nprompts_per_iteration = 2\ngroup_size = 2\n\
             train_steps = 2\neval_steps = 2\nreward = {{ http = \"http://127.0.0.1:{port}/score\", batch = 3 }}\n\
             [runner]\niterations = {iterations}\n",
            crate::test_model_dir("shapes-flow-unet").display(),
            dir.display()
        );
        toml::from_str(&text).unwrap()
    }

    /// A scoring service that goes down in the middle of a run stops it with an error naming
    /// the URL and the answer, before the iteration's update: the last checkpoint is intact
    /// and the run resumes from it once the service is back.
    #[test]
    fn a_failing_service_stops_the_run_and_loses_nothing() {
        let dir = std::env::temp_dir().join(format!("align-http-down-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let device = align_core::test_device();
        // Iteration 1 sends requests 0 and 1 (batch 3 of 4 images); then the service is down.
        let port = scoring_service(|k| k < 2);
        let c = http_run_config(port, &dir, 2);
        let err = crate::online::train(&c, false, &crate::observer::silent(), &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HTTP 500") && err.contains(&port.to_string()),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("LATEST")).unwrap().trim(),
            "checkpoint-000001"
        );
        let rows = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        assert_eq!(rows.lines().count(), 1, "{rows}");
        let port = scoring_service(|_| true);
        let c = http_run_config(port, &dir, 2);
        let report = crate::online::train(&c, true, &crate::observer::silent(), &device).unwrap();
        assert_eq!(report.iterations, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
    /// `align train` on a Shapes model rewarded by an HTTP service from the TOML: the batch
    /// reward in `metrics.jsonl` is the mean of what the service answered (it scores image
    /// `i` of each request `i`; `batch = 3` sends the 4 images as 3 + 1, so the mean is 0.75).
    #[test]
    fn a_run_is_rewarded_by_an_http_service() {
        let dir = std::env::temp_dir().join(format!("align-http-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = http_run_config(scoring_service(|_| true), &dir, 1);
        let device = align_core::test_device();
        crate::online::train(&c, false, &crate::observer::silent(), &device).unwrap();
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let row: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
        // Batch 3 splits the 4 images into requests of 3 and 1: scores 0, 1, 2 and 0.
        assert_eq!(row["reward_mean"].as_f64().unwrap(), 0.75, "{row}");
        let recorded = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert!(recorded.contains("http"), "{recorded}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
