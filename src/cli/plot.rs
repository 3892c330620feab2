//! Line plots as SVG files: `train`'s loss against the step, `classify`'s loss and
//! accuracy against the epoch. One or more panels stacked on a shared x axis, each with
//! its curves and their legend.

use crate::cli::CliResult;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;
use unfold::internals::write_atomically;

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One curve: a line with a dot at each point (`dots: false`: the line alone).
pub struct Curve {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
    pub dots: bool,
}

impl Curve {
    pub fn new(label: impl Into<String>, color: RGBColor, points: Vec<(f64, f64)>) -> Curve {
        Curve {
            label: label.into(),
            color,
            points,
            dots: true,
        }
    }
}

/// One chart of the plot: its y axis and curves.
pub struct Panel {
    pub y_desc: String,
    /// The y axis' range; `None`: the curves' range with a margin.
    pub y_range: Option<(f64, f64)>,
    pub curves: Vec<Curve>,
}

/// The plot: a title, the x axis' description, and panels stacked top to bottom.
pub struct Plot {
    pub title: String,
    pub x_desc: String,
    pub panels: Vec<Panel>,
}

impl Plot {
    /// Writes the plot as an SVG file at `path` (atomically).
    pub fn write(&self, path: &Path) -> CliResult<()> {
        let svg = self.draw().map_err(|e| format!("plotting: {e}"))?;
        write_atomically(path, svg.as_bytes())?;
        Ok(())
    }

    /// The SVG text of the plot.
    fn draw(&self) -> Result<String, String> {
        let err = |e: DrawingAreaErrorKind<_>| format!("{e:?}");
        let x_max = self
            .panels
            .iter()
            .flat_map(|p| &p.curves)
            .flat_map(|c| &c.points)
            .map(|p| p.0)
            .fold(1.0, f64::max);
        let mut svg = String::new();
        {
            let height = 60 + 480 * self.panels.len().max(1) as u32;
            let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            let root = root.titled(&self.title, ("sans-serif", 20)).map_err(err)?;
            let areas = root.split_evenly((self.panels.len().max(1), 1));
            for (panel, area) in self.panels.iter().zip(&areas) {
                let (y_min, y_max) = panel.y_range.unwrap_or_else(|| auto_range(panel));
                let mut chart = ChartBuilder::on(area)
                    .margin(14)
                    .x_label_area_size(44)
                    .y_label_area_size(60)
                    .build_cartesian_2d(0f64..x_max, y_min..y_max)
                    .map_err(err)?;
                chart
                    .configure_mesh()
                    .x_desc(self.x_desc.as_str())
                    .x_label_formatter(&|x| format!("{x:.0}"))
                    .y_desc(panel.y_desc.as_str())
                    .draw()
                    .map_err(err)?;
                for curve in &panel.curves {
                    draw_curve(&mut chart, curve)?;
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(err)?;
            }
            root.present().map_err(err)?;
        }
        Ok(svg)
    }
}

/// The range of a panel's points, with a margin (0..1 without points).
fn auto_range(panel: &Panel) -> (f64, f64) {
    let all = || panel.curves.iter().flat_map(|c| &c.points).map(|p| p.1);
    let y_max = all().fold(0.5, f64::max) * 1.05;
    let y_min = all().fold(f64::INFINITY, f64::min).min(y_max) * 0.95;
    (if y_min.is_finite() { y_min } else { 0.0 }, y_max)
}

/// One curve with its legend entry (nothing if it has no points).
fn draw_curve(chart: &mut Chart, curve: &Curve) -> Result<(), String> {
    if curve.points.is_empty() {
        return Ok(());
    }
    let err = |e: DrawingAreaErrorKind<_>| format!("{e:?}");
    let color = curve.color;
    chart
        .draw_series(LineSeries::new(
            curve.points.iter().copied(),
            color.stroke_width(2),
        ))
        .map_err(err)?
        .label(curve.label.as_str())
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    if curve.dots {
        chart
            .draw_series(
                curve
                    .points
                    .iter()
                    .map(|&p| Circle::new(p, 3, color.filled())),
            )
            .map_err(err)?;
    }
    Ok(())
}
