//! The loss plot: `loss.svg` in the checkpoint directory, the training and held-out
//! losses against the step.

use super::checkpoint::Point;
use crate::cli::CliResult;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;
use unfold::internals::write_atomically;

/// The plot's file name in the checkpoint directory.
pub const PLOT_FILE: &str = "loss.svg";

type Series = Vec<(f64, f64)>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Writes an SVG plot of the training and held-out losses against the step to `path`.
pub fn plot_losses(path: &Path, history: &[Point], title: &str) -> CliResult<()> {
    let train: Series = history
        .iter()
        .filter_map(|p| p.train_loss.map(|l| (p.step as f64, l as f64)))
        .collect();
    let held: Series = history
        .iter()
        .filter_map(|p| p.held_out_loss.map(|l| (p.step as f64, l as f64)))
        .collect();
    let svg = draw(title, &train, &held).map_err(|e| format!("plotting: {e}"))?;
    write_atomically(path, svg.as_bytes())?;
    Ok(())
}

/// The SVG text of the plot.
fn draw(title: &str, train: &Series, held: &Series) -> Result<String, String> {
    let err = |e: DrawingAreaErrorKind<_>| format!("{e:?}");
    let all = || train.iter().chain(held);
    let x_max = all().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all().map(|p| p.1).fold(0.5, f64::max) * 1.05;
    let y_min = all().map(|p| p.1).fold(f64::INFINITY, f64::min).min(y_max) * 0.95;
    let y_min = if y_min.is_finite() { y_min } else { 0.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, y_min..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("training step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("loss (nats per character)")
            .draw()
            .map_err(err)?;
        draw_series(
            &mut chart,
            train,
            BLUE,
            "training (mean since the previous point)",
        )?;
        draw_series(&mut chart, held, RED, "held-out")?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One loss curve with a dot at each point, and its legend entry (nothing if empty).
fn draw_series(
    chart: &mut Chart,
    points: &Series,
    color: RGBColor,
    label: &str,
) -> Result<(), String> {
    if points.is_empty() {
        return Ok(());
    }
    let err = |e: DrawingAreaErrorKind<_>| format!("{e:?}");
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            color.stroke_width(2),
        ))
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
        .map_err(err)?;
    Ok(())
}
