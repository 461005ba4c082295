//! Loss curves as SVG: loss against step and against wall time, side by side, one line per run
//! (`loss.svg` of a run; `natgrad plot` overlays several).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

/// One run's curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub steps: Vec<f64>,
    pub wall_s: Vec<f64>,
    pub loss: Vec<f64>,
}

/// Reads a run directory's metrics.csv; the label is the optimiser from summary.json, or the
/// directory's name.
pub fn read_run(dir: &Path) -> Result<Series> {
    let columns = super::metrics::read_columns(&dir.join("metrics.csv"), &["step", "wall_s", "loss"])?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let optimizer = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v["config"]["optimizer"].as_str().map(str::to_owned));
    let label = match optimizer {
        Some(opt) if !name.contains(&opt) => format!("{name} ({opt})"),
        _ => name,
    };
    let [steps, wall_s, loss]: [Vec<f64>; 3] = columns
        .try_into()
        .map_err(|_| super::io_error(&dir.join("metrics.csv"), "missing columns"))?;
    Ok(Series {
        label,
        steps,
        wall_s,
        loss,
    })
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The x axis of a panel: what it is called, and whether its values are whole (steps).
struct Axis<'a> {
    label: &'a str,
    whole: bool,
}

fn panel(
    area: &DrawingArea<SVGBackend, Shift>,
    series: &[Series],
    axis: Axis,
    x_of: impl Fn(&Series) -> &[f64],
) -> std::result::Result<(), String> {
    let finite = |v: &f64| v.is_finite();
    let x_max = series
        .iter()
        .flat_map(|s| x_of(s).iter().copied())
        .filter(finite)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let losses: Vec<f64> = series
        .iter()
        .flat_map(|s| s.loss.iter().copied())
        .filter(finite)
        .collect();
    let (lo, hi) = losses
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    let (lo, hi) = if lo.is_finite() {
        (lo, hi.max(lo + 1e-12))
    } else {
        (0.0, 1.0)
    };
    let mut builder = ChartBuilder::on(area);
    let names: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
    let title = format!("{}: loss against {}", names.join(", "), axis.label);
    builder
        .caption(title, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56);
    // losses that fall by orders of magnitude read best on a log axis; a Gaussian NLL can be
    // negative, and then the axis is linear
    if lo > 0.0 {
        let chart = builder
            .build_cartesian_2d(0.0..x_max, (lo * 0.8..hi * 1.25).log_scale())
            .map_err(|e| e.to_string())?;
        draw_curves(chart, series, &axis, x_max, &x_of)
    } else {
        let chart = builder
            .build_cartesian_2d(0.0..x_max, lo - 0.05 * (hi - lo)..hi + 0.05 * (hi - lo))
            .map_err(|e| e.to_string())?;
        draw_curves(chart, series, &axis, x_max, &x_of)
    }
}

fn draw_curves<'a, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    series: &[Series],
    axis: &Axis,
    x_max: f64,
    x_of: &impl Fn(&Series) -> &[f64],
) -> std::result::Result<(), String>
where
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let whole = |x: &f64| format!("{x:.0}");
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(axis.label).y_desc("training loss (batch)");
    if axis.whole {
        // steps are whole: no more ticks than steps, and no fractions on them
        mesh.x_labels((x_max as usize).clamp(2, 10)).x_label_formatter(&whole);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    for (k, s) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let points = x_of(s)
            .iter()
            .zip(&s.loss)
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| (*x, *y));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(|e| e.to_string())
}

/// Draws the loss of every series against step (left) and wall time (right) into `out`.
pub fn loss_plot(series: &[Series], out: &Path) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 420)).into_drawing_area();
        let draw = || -> std::result::Result<(), String> {
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let (left, right) = root.split_horizontally(550);
            let step = Axis {
                label: "step",
                whole: true,
            };
            let time = Axis {
                label: "wall time (s)",
                whole: false,
            };
            panel(&left, series, step, |s| &s.steps)?;
            panel(&right, series, time, |s| &s.wall_s)?;
            root.present().map_err(|e| e.to_string())
        };
        draw().map_err(|e| Error::Io {
            path: out.display().to_string(),
            reason: format!("drawing the plot: {e}"),
        })?;
    }
    super::write_atomic(out, svg.as_bytes())
}
