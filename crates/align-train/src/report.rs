//! What a training run reports: `report.json` and `report.md` in its run directory.

use std::path::Path;

use align_core::Metrics;

use crate::error::{Result, TrainError};
use crate::images::write_atomically;
pub use crate::win_rate::WinRate;

/// What `align quickstart` / `align train` report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Algorithm name.
    pub algorithm: String,
    /// Base model directory.
    pub model: String,
    /// Before training.
    pub base: Snapshot,
    /// After training.
    #[serde(rename = "final")]
    pub final_: Snapshot,
    /// Iterations run.
    pub iterations: usize,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    /// Wall time of the run (evaluations included, build excluded).
    pub wall_seconds: f64,
    /// Which weights `final` evaluates: `"final"` (the last step's) or `"ema"` (the moving
    /// average, with `runner.ema_decay`).
    pub evaluated_weights: String,
    /// Stable Diffusion runs: the mean reward on the evaluation prompts before and after
    /// (the ShapeEval fields are then unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_reward: Option<EvalReward>,
    /// Shapes models: the gold win rate of the final model's held-out images over the base
    /// model's (`None` for Stable Diffusion runs, or a resumed run whose `base.json` has no
    /// per-image scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_win_rate: Option<WinRate>,
    /// Shapes runs with `prompt_eval_seeds`: ShapeEval on the run's own training prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_prompts: Option<PromptsEval>,
}

/// ShapeEval on a run's own prompts (`prompts` × `prompt_eval_seeds` images), before and after.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PromptsEval {
    /// Images per measurement.
    pub images: usize,
    /// Pass rate of the base model.
    pub base_accuracy: f64,
    /// Pass rate after training.
    pub final_accuracy: f64,
    /// Mean partial credit of the base model.
    pub base_partial_credit: f64,
    /// Mean partial credit after training.
    pub final_partial_credit: f64,
    /// Paired gold (partial-credit) win rate of the final images over the base's, same prompts
    /// and seeds, with its 95 % bootstrap interval.
    pub win_rate: WinRate,
}

/// The evaluation reward of a Stable Diffusion run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct EvalReward {
    /// Which reward.
    pub reward: String,
    /// Mean over the evaluation prompts and seeds, base model.
    pub base: f64,
    /// The same after training.
    #[serde(rename = "final")]
    pub final_: f64,
}

/// Accuracy and diversity at one point of a run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// ShapeEval pass rate on the training part of the evaluation set.
    pub train_accuracy: f64,
    /// ShapeEval pass rate on the held-out part.
    pub heldout_accuracy: f64,
    /// Mean partial credit, held-out part.
    pub heldout_partial_credit: f64,
    /// Same-prompt diversity of the grid samples.
    pub diversity: f64,
    /// `diversity / base diversity`.
    pub diversity_ratio: f64,
    /// Mean per-step KL to the reference in the last iteration.
    pub kl: f64,
    /// Mean training reward in the last iteration.
    pub reward_mean: f64,
    /// Each held-out evaluation image's ShapeEval partial credit, in evaluation order (empty in
    /// a `base.json` written before this field existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heldout_scores: Vec<f64>,
    /// With `prompt_eval_seeds`: each image's (partial credit, pass) on the run's own prompts,
    /// in evaluation order (prompt-major, the same seeds for every model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt_verdicts: Vec<(f64, bool)>,
}

/// Writes `report.json` and `report.md` of a Shapes-model run.
///
/// # Errors
/// The files cannot be written.
pub fn write_report(dir: &Path, report: &Report) -> Result<()> {
    write_report_json(dir, report)?;
    let pct = |x: f64| format!("{:.1} %", 100.0 * x);
    let md = format!(
        "# Run report: {alg}\n\nBase model: `{model}`. Iterations: {it}{stop}. Wall time: {wall:.0} s. \
Final weights evaluated: {weights}.\n\n\
| | base | final |\n|---|---|---|\n\
| ShapeEval train | {bt} | {ft} |\n| ShapeEval held-out | {bh} | {fh} |\n\
| held-out partial credit | {bp:.3} | {fp:.3} |\n| same-prompt diversity | {bd:.4} | {fd:.4} ({fr}) |\n\
| per-step KL to reference | — | {kl:.3e} |\n{win}{prompts}\n\
Grids: `grid-before.png`, `grid-after.png` (rows: seeds; columns: prompts). \
Curves: `curves.png` (top: mean training reward per iteration, and held-out ShapeEval accuracy at \
periodic evaluations; bottom: mean per-step KL to the reference), from `metrics.jsonl`.\n",
        alg = report.algorithm,
        model = report.model,
        it = report.iterations,
        stop = report
            .stopped
            .as_ref()
            .map(|s| format!(" (stopped: {s})"))
            .unwrap_or_default(),
        wall = report.wall_seconds,
        weights = report.evaluated_weights,
        bt = pct(report.base.train_accuracy),
        ft = pct(report.final_.train_accuracy),
        bh = pct(report.base.heldout_accuracy),
        fh = pct(report.final_.heldout_accuracy),
        bp = report.base.heldout_partial_credit,
        fp = report.final_.heldout_partial_credit,
        bd = report.base.diversity,
        fd = report.final_.diversity,
        fr = pct(report.final_.diversity_ratio),
        kl = report.final_.kl,
        win = report
            .heldout_win_rate
            .map(|w| {
                format!(
                    "| held-out gold win rate vs base (95 % CI) | — | {} ({}–{}) |\n",
                    pct(w.rate),
                    pct(w.low),
                    pct(w.high)
                )
            })
            .unwrap_or_default(),
        prompts = report
            .run_prompts
            .as_ref()
            .map(|r| {
                format!(
                    "| ShapeEval on the run's own prompts ({} images) | {} | {} |\n\
| its partial credit | {:.3} | {:.3} |\n\
| its gold win rate vs base (95 % CI) | — | {} ({}–{}) |\n",
                    r.images,
                    pct(r.base_accuracy),
                    pct(r.final_accuracy),
                    r.base_partial_credit,
                    r.final_partial_credit,
                    pct(r.win_rate.rate),
                    pct(r.win_rate.low),
                    pct(r.win_rate.high)
                )
            })
            .unwrap_or_default(),
    );
    write_atomically(&dir.join("report.md"), &md)
}

/// Writes `report.json` and `report.md` of a Stable Diffusion run.
///
/// # Errors
/// The files cannot be written.
pub fn write_reward_report(dir: &Path, report: &Report, eval: &EvalReward) -> Result<()> {
    write_report_json(dir, report)?;
    let md = format!(
        "# Run report: {alg}\n\nModel: `{model}`. Iterations: {it}{stop}. Wall \
time: {wall:.0} s.\n\n| | base | final |\n|---|---|---|\n| mean `{name}` on the evaluation \
prompts (DDIM η = 0) | {b:.4} | {f:.4} |\n| per-step KL to reference (last iteration) | — | \
{kl:.3e} |\n\nGrids: `grid-before.png`, `grid-after.png` (rows: seeds; columns: prompts). \
Curves: `curves.png`, from `metrics.jsonl`.\n",
        alg = report.algorithm,
        model = report.model,
        it = report.iterations,
        stop = report
            .stopped
            .as_ref()
            .map(|s| format!(" (stopped: {s})"))
            .unwrap_or_default(),
        wall = report.wall_seconds,
        name = eval.reward,
        b = eval.base,
        f = eval.final_,
        kl = report.final_.kl,
    );
    write_atomically(&dir.join("report.md"), &md)
}

/// The last row of a `metrics.jsonl` (empty when there is none).
pub fn read_last_metrics(path: &Path) -> Metrics {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().last().map(str::to_string))
        .and_then(|l| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&l).ok())
        .map(|m| {
            m.into_iter()
                .filter_map(|(k, v)| v.as_f64().map(|x| (k, x)))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `report.json` (pretty JSON, atomically).
///
/// # Errors
/// The file cannot be written.
pub fn write_report_json<T: serde::Serialize>(dir: &Path, report: &T) -> Result<()> {
    let path = dir.join("report.json");
    let json = serde_json::to_string_pretty(report).map_err(|e| TrainError::File {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_atomically(&path, &(json + "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run-prompt rows follow the held-out win-rate row inside the table, and the table
    /// ends with one blank line before the grids sentence.
    #[test]
    fn report_md_places_the_run_prompt_rows_in_the_table() {
        let dir = std::env::temp_dir().join(format!("align-report-md-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = WinRate {
            rate: 0.57,
            low: 0.52,
            high: 0.617,
        };
        let report = Report {
            heldout_win_rate: Some(w),
            run_prompts: Some(PromptsEval {
                images: 128,
                base_accuracy: 0.266,
                final_accuracy: 0.359,
                base_partial_credit: 0.689,
                final_partial_credit: 0.752,
                win_rate: w,
            }),
            ..Report::default()
        };
        write_report(&dir, &report).unwrap();
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        let expected = "| held-out gold win rate vs base (95 % CI) | — | 57.0 % (52.0 %–61.7 %) |\n\
| ShapeEval on the run's own prompts (128 images) | 26.6 % | 35.9 % |\n\
| its partial credit | 0.689 | 0.752 |\n\
| its gold win rate vs base (95 % CI) | — | 57.0 % (52.0 %–61.7 %) |\n\nGrids:";
        assert!(md.contains(expected), "{md}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
