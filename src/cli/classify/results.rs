//! What `classify` leaves in its output directory: `results.json` (the settings, every
//! epoch's metrics, the kept epoch, the test results), `curves.svg` (loss and accuracy
//! per epoch) and `model.safetensors` (the kept model, PyTorch's names), and the
//! directory itself.

use crate::cli::plot::{Curve, Panel, Plot};
use crate::cli::CliResult;
use plotters::style::{BLACK, BLUE, RED};
use serde::Serialize;
use std::path::{Path, PathBuf};
use unfold::internals::write_atomically;

pub const RESULTS_FILE: &str = "results.json";
pub const PLOT_FILE: &str = "curves.svg";
pub const MODEL_FILE: &str = "model.safetensors";

/// One epoch's line of the record.
#[derive(Clone, Debug, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// The learning rate of the epoch's last step.
    pub lr: f32,
    /// Mean loss of the epoch's training steps (as the weights moved, dropout included).
    pub train_loss: f64,
    /// Accuracy on the training part after the epoch.
    pub train_accuracy: f64,
    pub validation_loss: Option<f64>,
    pub validation_accuracy: Option<f64>,
    /// Seconds of training steps, and of the evaluations after them.
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

impl EpochRecord {
    /// Whether this epoch's validation result beats `best`'s: a higher accuracy, or the
    /// same accuracy with a lower loss.
    pub fn better_than(&self, best: &EpochRecord) -> bool {
        match (
            self.validation_accuracy.zip(self.validation_loss),
            best.validation_accuracy.zip(best.validation_loss),
        ) {
            (Some((acc, loss)), Some((best_acc, best_loss))) => {
                acc > best_acc || (acc == best_acc && loss < best_loss)
            }
            _ => false,
        }
    }
}

/// How many sequences each part holds.
#[derive(Debug, Serialize)]
pub struct Sizes {
    pub train: usize,
    pub validation: usize,
    pub test: usize,
}

/// The test set's results with the kept model.
#[derive(Debug, Serialize)]
pub struct TestResult {
    pub loss: f64,
    pub accuracy: f64,
    /// `confusion[true class][predicted class]`.
    pub confusion: Vec<Vec<usize>>,
}

/// `results.json`.
#[derive(Debug, Serialize)]
pub struct Results {
    pub dataset: String,
    pub classes: Vec<String>,
    pub sequences: Sizes,
    pub model: String,
    pub parameters: usize,
    pub device: String,
    pub settings: serde_json::Value,
    /// Per-feature mean and standard deviation of the training part, which the model's
    /// inputs were standardised with.
    pub feature_mean: Vec<f32>,
    pub feature_std: Vec<f32>,
    pub epochs: Vec<EpochRecord>,
    pub kept_epoch: usize,
    /// `best validation accuracy` or `last epoch`.
    pub kept_because: String,
    pub test: TestResult,
    pub seconds: f64,
}

impl Results {
    /// Writes `results.json` and `curves.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> CliResult<()> {
        let json = serde_json::to_string_pretty(self)?;
        write_atomically(&dir.join(RESULTS_FILE), json.as_bytes())?;
        self.plot().write(&dir.join(PLOT_FILE))
    }

    /// Loss and accuracy against the epoch, with the kept epoch marked.
    fn plot(&self) -> Plot {
        let series = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
            self.epochs
                .iter()
                .filter_map(|e| f(e).map(|v| (e.epoch as f64, v)))
                .collect()
        };
        let kept = self.kept_epoch as f64;
        let marker = Curve {
            label: format!(
                "kept: epoch {} ({}), test accuracy {:.3}",
                self.kept_epoch, self.kept_because, self.test.accuracy
            ),
            color: BLACK,
            points: vec![(kept, 0.0), (kept, 1.0)],
            dots: false,
        };
        Plot {
            title: format!("{}: {}", self.dataset, self.model),
            x_desc: "epoch".into(),
            panels: vec![
                Panel {
                    y_desc: "loss (cross-entropy, nats)".into(),
                    y_range: None,
                    curves: vec![
                        Curve::new(
                            "training (mean over the epoch's steps)",
                            BLUE,
                            series(&|e| Some(e.train_loss)),
                        ),
                        Curve::new("validation", RED, series(&|e| e.validation_loss)),
                    ],
                },
                Panel {
                    y_desc: "accuracy".into(),
                    y_range: Some((0.0, 1.0)),
                    curves: vec![
                        Curve::new(
                            "training (after the epoch)",
                            BLUE,
                            series(&|e| Some(e.train_accuracy)),
                        ),
                        Curve::new("validation", RED, series(&|e| e.validation_accuracy)),
                        marker,
                    ],
                },
            ],
        }
    }
}

/// The output directory: `out`, or a new `runs/classify-N`; created, and checked to be
/// writable before any training. A directory that already holds another run's results or
/// model is refused: they are never replaced.
pub fn prepare_out_dir(out: Option<&Path>) -> CliResult<PathBuf> {
    let out = match out {
        Some(o) => o.to_path_buf(),
        None => (1..)
            .map(|i| PathBuf::from(format!("runs/classify-{i}")))
            .find(|p| !p.exists())
            .expect("some runs/classify-N is free"),
    };
    if let Some(held) = [RESULTS_FILE, MODEL_FILE]
        .iter()
        .find(|f| out.join(f).exists())
    {
        return Err(format!(
            "{} already holds a run's {held}: choose another --out, or leave it out for a new runs/classify-N",
            out.display()
        )
        .into());
    }
    std::fs::create_dir_all(&out).map_err(|source| unfold::Error::Io {
        action: "creating the output directory",
        path: out.clone(),
        source,
    })?;
    crate::cli::ensure_writable(&out)?;
    Ok(out)
}
