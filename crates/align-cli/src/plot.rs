//! Training curves of a run as a PNG (`curves.png`): the mean training reward and the mean
//! per-step KL to the reference, per iteration, read from `metrics.jsonl`; evaluation points
//! (held-out ShapeEval accuracy) are drawn on the reward panel when the run evaluated
//! periodically.
//!
//! Titles and tick labels need a font. None is shipped: the first readable font of
//! [`FONT_PATHS`] (or the file named by `ALIGN_PLOT_FONT`) is used, and without one the panels
//! are drawn without text (their content is then named in `report.md`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

/// Where fonts are looked for, in order (Debian/Ubuntu, Fedora, Arch, macOS).
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

const WIDTH: u32 = 720;
const HEIGHT: u32 = 540;

/// Registers a font once per process; whether text can be drawn.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var_os("ALIGN_PLOT_FONT").map(PathBuf::from);
        let candidates = env.into_iter().chain(FONT_PATHS.iter().map(PathBuf::from));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// The series of a run: `(iteration, value)` per metric.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// Mean training reward per iteration.
    pub reward: Vec<(f64, f64)>,
    /// Mean per-step KL to the reference per iteration.
    pub kl: Vec<(f64, f64)>,
    /// Held-out ShapeEval accuracy at periodic evaluations.
    pub heldout: Vec<(f64, f64)>,
}

impl Curves {
    /// Reads `metrics.jsonl` (one JSON object per iteration, with `iteration`).
    ///
    /// # Errors
    /// An unreadable file or a line that is not a JSON object.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut c = Curves::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
                .map_err(|e| format!("{}: line {}: {e}", path.display(), n + 1))?;
            let x = row
                .get("iteration")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or((n + 1) as f64);
            let get = |k: &str| row.get(k).and_then(serde_json::Value::as_f64);
            if let Some(v) = get("reward_mean").filter(|v| v.is_finite()) {
                c.reward.push((x, v));
            }
            if let Some(v) = get("kl").filter(|v| v.is_finite()) {
                c.kl.push((x, v));
            }
            if let Some(v) = get("eval_heldout_accuracy").filter(|v| v.is_finite()) {
                c.heldout.push((x, v));
            }
        }
        Ok(c)
    }
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-9 + lo.abs() * 0.05);
    (lo - pad, hi + pad)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[(&[(f64, f64)], RGBColor)],
    text: bool,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| format!("drawing {title}: {e:?}");
    let xs = series.iter().flat_map(|(s, _)| s.iter().map(|p| p.0));
    let (x0, x1) = range(xs);
    let ys = series.iter().flat_map(|(s, _)| s.iter().map(|p| p.1));
    let (y0, y1) = range(ys);
    let mut builder = ChartBuilder::on(area);
    builder.margin(12);
    if text {
        builder
            .caption(title, ("sans-serif", 18))
            .x_label_area_size(28)
            .y_label_area_size(64);
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?;
    if text {
        chart
            .configure_mesh()
            .x_desc("iteration")
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
    } else {
        chart
            .plotting_area()
            .draw(&Rectangle::new(
                [(x0, y0), (x1, y1)],
                ShapeStyle::from(&BLACK).stroke_width(1),
            ))
            .map_err(err)?;
    }
    for (points, color) in series {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    Ok(())
}

/// Draws `curves` into a PNG at `out` (written to a temporary file, then renamed). Top
/// panel: mean training reward (blue) and held-out ShapeEval accuracy at evaluations (orange);
/// bottom panel: mean per-step KL to the reference (red).
///
/// # Errors
/// Drawing or file errors.
pub fn write_curves(curves: &Curves, title: &str, out: &Path) -> Result<(), String> {
    let text = font_available();
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| format!("{e:?}"))?;
        let (top, bottom) = root.split_vertically(HEIGHT / 2);
        let orange = RGBColor(230, 130, 20);
        let mut top_series: Vec<(&[(f64, f64)], RGBColor)> = vec![(&curves.reward, BLUE)];
        if !curves.heldout.is_empty() {
            top_series.push((&curves.heldout, orange));
        }
        let top_title = if curves.heldout.is_empty() {
            format!("{title}: mean training reward")
        } else {
            format!("{title}: training reward (blue), held-out accuracy (orange)")
        };
        panel(&top, &top_title, &top_series, text)?;
        panel(
            &bottom,
            "mean per-step KL to the reference",
            &[(&curves.kl, RED)],
            text,
        )?;
        root.present().map_err(|e| format!("{e:?}"))?;
    }
    let img = image::RgbImage::from_raw(WIDTH, HEIGHT, buf)
        .ok_or_else(|| "plot buffer of the wrong size".to_string())?;
    let tmp = out.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
}

/// One run's held-out ShapeEval accuracy against the samples it had generated, for
/// [`write_comparison`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccuracySeries {
    /// The legend label (the run directory's name).
    pub label: String,
    /// `(samples, accuracy)`: the base model at 0 samples, every periodic evaluation, the
    /// final model, in order of samples.
    pub points: Vec<(f64, f64)>,
}

impl AccuracySeries {
    /// Reads a run directory: `report.json` (base and final held-out accuracy) and
    /// `metrics.jsonl` (periodic `eval_heldout_accuracy` at `samples`). A run without
    /// `samples` in its metrics (preference runs, runs before the metric existed) gives the
    /// base and final points only, at 0 and at the last iteration's count if known.
    ///
    /// # Errors
    /// An unreadable `report.json` or `metrics.jsonl`, or a report without held-out
    /// accuracies.
    pub fn read(run: &Path) -> Result<Self, String> {
        let report_path = run.join("report.json");
        let text = std::fs::read_to_string(&report_path)
            .map_err(|e| format!("{}: {e}", report_path.display()))?;
        let report: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", report_path.display()))?;
        let field = |path: &[&str]| {
            let mut v = &report;
            for k in path {
                v = v.get(*k)?;
            }
            v.as_f64()
        };
        let base = field(&["base", "heldout_accuracy"])
            .or_else(|| field(&["base_heldout_accuracy"]))
            .ok_or_else(|| format!("{}: no base held-out accuracy", report_path.display()))?;
        let last = field(&["final", "heldout_accuracy"])
            .or_else(|| field(&["final_heldout_accuracy"]))
            .ok_or_else(|| format!("{}: no final held-out accuracy", report_path.display()))?;
        let mut points = vec![(0.0, base)];
        let metrics = run.join(align_core::runner::METRICS);
        let mut end = 0.0f64;
        if metrics.exists() {
            let text = std::fs::read_to_string(&metrics)
                .map_err(|e| format!("{}: {e}", metrics.display()))?;
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
                    .map_err(|e| format!("{}: line {}: {e}", metrics.display(), n + 1))?;
                let get = |k: &str| row.get(k).and_then(serde_json::Value::as_f64);
                if let Some(x) = get("samples").filter(|v| v.is_finite()) {
                    end = end.max(x);
                    if let Some(y) = get("eval_heldout_accuracy").filter(|v| v.is_finite()) {
                        points.push((x, y));
                    }
                }
            }
        }
        points.push((end, last));
        let label = run
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| run.display().to_string());
        Ok(Self { label, points })
    }
}

/// Colours of the comparison's series, in order (repeated past ten).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Draws every series of held-out accuracy against samples into one PNG at `out` (written to a
/// temporary file, then renamed), one colour per run, with a legend when a font is found.
///
/// # Errors
/// No series, drawing or file errors.
pub fn write_comparison(series: &[AccuracySeries], title: &str, out: &Path) -> Result<(), String> {
    if series.is_empty() {
        return Err("a comparison needs at least one run".into());
    }
    let text = font_available();
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<<BitMapBackend<'_> as DrawingBackend>::ErrorType>| {
            format!("drawing {title}: {e:?}")
        };
        root.fill(&WHITE).map_err(|e| format!("{e:?}"))?;
        let (x0, x1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
        let (y0, y1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
        let mut builder = ChartBuilder::on(&root);
        builder.margin(14);
        if text {
            builder
                .caption(title, ("sans-serif", 18))
                .x_label_area_size(36)
                .y_label_area_size(64);
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?;
        if text {
            chart
                .configure_mesh()
                .x_desc("samples generated")
                .y_desc("held-out ShapeEval accuracy")
                .light_line_style(WHITE)
                .draw()
                .map_err(err)?;
        }
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let drawn = chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(err)?;
            if text {
                drawn.label(s.label.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
            }
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(|e| format!("{e:?}"))?;
    }
    let img = image::RgbImage::from_raw(WIDTH, HEIGHT, buf)
        .ok_or_else(|| "plot buffer of the wrong size".to_string())?;
    let tmp = out.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_series_are_read_from_runs_and_drawn() {
        let dir = std::env::temp_dir().join(format!("align-compare-{}", std::process::id()));
        let (a, b) = (dir.join("flow-grpo"), dir.join("kto"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(
            a.join("report.json"),
            r#"{"base":{"heldout_accuracy":0.3},"final":{"heldout_accuracy":0.5}}"#,
        )
        .unwrap();
        std::fs::write(
            a.join("metrics.jsonl"),
            "{\"iteration\":1,\"samples\":32}\n             {\"iteration\":2,\"samples\":64,\"eval_heldout_accuracy\":0.4}\n             {\"iteration\":3,\"samples\":96}\n",
        )
        .unwrap();
        // A preference report: flat fields, no samples in its metrics.
        std::fs::write(
            b.join("report.json"),
            r#"{"base_heldout_accuracy":0.3,"final_heldout_accuracy":0.35}"#,
        )
        .unwrap();
        let sa = AccuracySeries::read(&a).unwrap();
        assert_eq!(sa.label, "flow-grpo");
        assert_eq!(sa.points, vec![(0.0, 0.3), (64.0, 0.4), (96.0, 0.5)]);
        let sb = AccuracySeries::read(&b).unwrap();
        assert_eq!(sb.points, vec![(0.0, 0.3), (0.0, 0.35)]);
        let png = dir.join("compare.png");
        write_comparison(&[sa, sb], "test", &png).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let has = |c: RGBColor| img.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(PALETTE[0]) && has(PALETTE[1]));
        assert!(write_comparison(&[], "none", &png).is_err());
        let e = AccuracySeries::read(&dir.join("missing")).unwrap_err();
        assert!(e.contains("report.json"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn curves_are_read_from_metrics_and_drawn_into_a_png() {
        let dir = std::env::temp_dir().join(format!("align-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = dir.join("metrics.jsonl");
        std::fs::write(
            &metrics,
            "{\"iteration\":1,\"reward_mean\":0.3,\"kl\":0.0}\n\
             {\"iteration\":2,\"reward_mean\":0.4,\"kl\":0.001,\"eval_heldout_accuracy\":0.1}\n\
             {\"iteration\":3,\"reward_mean\":0.5,\"kl\":0.002}\n",
        )
        .unwrap();
        let c = Curves::read(&metrics).unwrap();
        assert_eq!(c.reward, vec![(1.0, 0.3), (2.0, 0.4), (3.0, 0.5)]);
        assert_eq!(c.kl.len(), 3);
        assert_eq!(c.heldout, vec![(2.0, 0.1)]);
        let png = dir.join("curves.png");
        write_curves(&c, "test", &png).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        // Something blue (the reward curve) and something red (the KL curve) were drawn.
        let has = |c: [u8; 3]| img.pixels().any(|p| p.0 == c);
        assert!(has([0, 0, 255]) && has([255, 0, 0]));
        // A single point and an empty series still draw.
        let one = Curves {
            reward: vec![(1.0, 0.5)],
            ..Curves::default()
        };
        write_curves(&one, "one", &png).unwrap();
        std::fs::write(&metrics, "not json\n").unwrap();
        let e = Curves::read(&metrics).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
