//! SVG charts with plotters: lines through points on logarithmic or linear
//! axes, and panels of lines with a min–max bar at every point. What goes
//! into which chart is [`crate::charts`]' business.

use std::path::Path;

use plotters::prelude::*;

use crate::report::count;

/// Line colours that stay apart on white.
const COLORS: [RGBColor; 9] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
];

/// One line of a chart: its legend and its points.
pub type Series = (String, Vec<(f64, f64)>);

/// One line of a chart with a spread at each point: its legend and its
/// points as (x, median, min, max).
pub type SpreadSeries = (String, Vec<(f64, f64, f64, f64)>);

/// Panels side by side (one per title), each with logarithmic axes and
/// its series drawn as lines through the medians with a vertical bar from
/// min to max at every point; the series of a panel are moved apart a
/// little along x so that their bars do not hide each other.
pub fn spread_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    panels: &[(String, Vec<SpreadSeries>)],
) -> anyhow::Result<()> {
    let width = 560 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(plot_error)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for ((panel_title, series), area) in panels.iter().zip(areas) {
        let plain: Vec<Series> = series
            .iter()
            .map(|(name, points)| {
                let mut all: Vec<(f64, f64)> = Vec::new();
                for &(x, _, lo, hi) in points {
                    all.push((x, lo.max(1e-9)));
                    all.push((x, hi.max(1e-9)));
                }
                (name.clone(), all)
            })
            .collect();
        let (x0, x1, y0, y1) = bounds(&plain);
        let mut chart = ChartBuilder::on(&area)
            .caption(panel_title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(
                (x0 / 1.6..x1 * 1.6).log_scale(),
                (y0 / 1.5..y1 * 3.0).log_scale(),
            )
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|x| short(*x))
            .y_label_formatter(&|y| short(*y))
            .draw()
            .map_err(plot_error)?;
        let n = series.len().max(1) as f64;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            // Dodge: up to ±12 % along the (logarithmic) x axis.
            let dodge = 1.0 + 0.24 * ((i as f64 + 0.5) / n - 0.5);
            let moved: Vec<(f64, f64, f64, f64)> = points
                .iter()
                .map(|&(x, mid, lo, hi)| (x * dodge, mid, lo, hi))
                .collect();
            chart
                .draw_series(LineSeries::new(
                    moved.iter().map(|&(x, mid, _, _)| (x, mid)),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    moved
                        .iter()
                        .map(|&(x, mid, _, _)| Circle::new((x, mid), 3, color.filled())),
                )
                .map_err(plot_error)?;
            for &(x, _, lo, hi) in &moved {
                let (lo, hi) = (lo.max(1e-9), hi.max(1e-9));
                let cap = 1.025;
                for segment in [
                    vec![(x, lo), (x, hi)],
                    vec![(x / cap, lo), (x * cap, lo)],
                    vec![(x / cap, hi), (x * cap, hi)],
                ] {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            segment,
                            color.stroke_width(1),
                        )))
                        .map_err(plot_error)?;
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

/// A chart with logarithmic axes, written to `path` as SVG.
pub fn log_log_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> anyhow::Result<()> {
    let (x0, x1, y0, y1) = bounds(series);
    let root = SVGBackend::new(path, (860, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (x0 / 1.5..x1 * 1.5).log_scale(),
            (y0 / 2.0..y1 * 2.0).log_scale(),
        )
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| short(*x))
        .y_label_formatter(&|y| short(*y))
        .draw()
        .map_err(plot_error)?;
    draw_lines(&mut chart, series, legend)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// A chart with linear axes starting at zero, written to `path` as SVG.
pub fn linear_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> anyhow::Result<()> {
    let (_, x1, _, y1) = bounds(series);
    let root = SVGBackend::new(path, (860, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x1 * 1.05, 0.0..y1 * 1.15)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| short(*x))
        .y_label_formatter(&|y| short(*y))
        .draw()
        .map_err(plot_error)?;
    draw_lines(&mut chart, series, legend)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

fn bounds(series: &[Series]) -> (f64, f64, f64, f64) {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (1.0, 10.0, 1.0, 10.0);
    }
    (
        x0.max(1e-9),
        x1.max(x0 * 2.0),
        y0.max(1e-9),
        y1.max(y0 * 2.0),
    )
}

/// An axis label: no needless decimals.
fn short(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        count(v)
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn plot_error<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {error}")
}
