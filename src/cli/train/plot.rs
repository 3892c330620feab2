//! The loss plot: `loss.svg` in the checkpoint directory, the training and held-out
//! losses against the step.

use super::checkpoint::Point;
use crate::cli::plot::{Curve, Panel, Plot};
use crate::cli::CliResult;
use plotters::style::{BLUE, RED};
use std::path::Path;

/// The plot's file name in the checkpoint directory.
pub const PLOT_FILE: &str = "loss.svg";

/// Writes an SVG plot of the training and held-out losses against the step to `path`.
pub fn plot_losses(path: &Path, history: &[Point], title: &str) -> CliResult<()> {
    let train = history
        .iter()
        .filter_map(|p| p.train_loss.map(|l| (p.step as f64, l as f64)))
        .collect();
    let held = history
        .iter()
        .filter_map(|p| p.held_out_loss.map(|l| (p.step as f64, l as f64)))
        .collect();
    Plot {
        title: title.to_string(),
        x_desc: "training step".into(),
        panels: vec![Panel {
            y_desc: "loss (nats per character)".into(),
            y_range: None,
            curves: vec![
                Curve::new("training (mean since the previous point)", BLUE, train),
                Curve::new("held-out", RED, held),
            ],
        }],
    }
    .write(path)
}
