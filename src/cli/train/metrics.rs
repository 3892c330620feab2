//! `train --metrics FILE`: one JSON object per line, written as the run goes.
//!
//! A training step's line is `{"step": 12, "loss": 2.31, "chars_per_s": 81234.5}`, with
//! `"held_out": 2.40` added when the model was evaluated right after that step; the
//! evaluation before the first step of a new run is a line with `step` (0) and
//! `held_out` alone. `loss` is the step's mean loss per character over the whole global
//! batch (before its update), `chars_per_s` the step's characters over its wall-clock
//! time (evaluations and checkpoints not included). A step's line is written once it is
//! known whether an evaluation follows it, at the latest when the next step starts, and
//! flushed at once.

use crate::cli::CliResult;
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One line of the file.
#[derive(Clone, Copy, Debug, Serialize)]
struct Line {
    step: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chars_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    held_out: Option<f32>,
}

/// The open metrics file and the step line that may still get its held-out loss.
pub struct Metrics {
    path: PathBuf,
    file: BufWriter<File>,
    pending: Option<Line>,
}

impl Metrics {
    /// Creates `path`, or with `append` (a resumed run) continues it.
    pub fn open(path: &Path, append: bool) -> CliResult<Metrics> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|source| unfold::Error::Io {
                action: "opening the metrics file",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Metrics {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            pending: None,
        })
    }

    /// A training step: its number (counting every run), mean loss and speed.
    pub fn step(&mut self, step: u64, loss: f32, chars_per_s: f64) -> CliResult<()> {
        self.flush_pending()?;
        self.pending = Some(Line {
            step,
            loss: Some(loss),
            chars_per_s: Some(chars_per_s),
            held_out: None,
        });
        Ok(())
    }

    /// An evaluation at `step`: completes that step's line, or is a line of its own.
    pub fn evaluated(&mut self, step: u64, held_out: Option<f32>) -> CliResult<()> {
        let line = match self.pending.take() {
            Some(line) if line.step == step => Line { held_out, ..line },
            other => {
                self.pending = other;
                self.flush_pending()?;
                Line {
                    step,
                    loss: None,
                    chars_per_s: None,
                    held_out,
                }
            }
        };
        self.write(&line)
    }

    /// Writes the step line still waiting for an evaluation, if any.
    pub fn flush_pending(&mut self) -> CliResult<()> {
        match self.pending.take() {
            Some(line) => self.write(&line),
            None => Ok(()),
        }
    }

    fn write(&mut self, line: &Line) -> CliResult<()> {
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| unfold::Error::Io {
                action: "writing the metrics file",
                path: self.path.clone(),
                source,
            })?;
        Ok(())
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        // a run ended by an error still records its last step
        let _ = self.flush_pending();
    }
}
