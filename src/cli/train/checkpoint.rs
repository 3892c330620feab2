//! The char-LM's checkpoint directory. Three files, each written atomically:
//!
//! - `model.safetensors`: the weights ([`RnnParams::save_for`], PyTorch's names, the cell
//!   in the metadata);
//! - `state.safetensors`: the optimizer's moments (`optimizer.m`, `optimizer.v`, flat in
//!   the order of `RnnParams::tensors`) and the streams' carried state (`streams.hidden`,
//!   and for an LSTM `streams.cell`, each `[layers, batch, hidden]`), so that a resumed
//!   run continues exactly;
//! - `checkpoint.json`: vocabulary, configuration (the cell included), data, progress,
//!   loss history, and the fingerprints of the two other files. It is written last: a
//!   checkpoint whose files do not match it (changed, corrupt, or a save cut short) is
//!   never used.
//!
//! Before a save overwrites a whole checkpoint, its three files are kept in `previous/`
//! (hard links where the file system allows). A save cut short therefore loses nothing:
//! `--resume` and `sample` then say so and use `previous/`, the checkpoint before it.

use super::config::Hyper;
use crate::cli::CliResult;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use unfold::internals::write_atomically;
use unfold::ndarray::Array3;
use unfold::text::{fingerprint, Vocabulary};
use unfold::{Optimizer, OptimizerState, Rnn, RnnConfig, RnnParams, RnnState};

const FORMAT: &str = "unfold char-lm checkpoint";
const VERSION: u32 = 1;
pub const META_FILE: &str = "checkpoint.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const STATE_FILE: &str = "state.safetensors";
const PREVIOUS_DIR: &str = "previous";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataInfo {
    /// `bundled:persuasion`, or the text file's absolute path.
    pub source: String,
    pub chars: usize,
    /// FNV-1a of the text's bytes, in hex.
    pub fingerprint: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Training steps so far (all runs).
    pub step: u64,
    /// Characters trained on so far.
    pub tokens: u64,
    /// Seconds of training so far (all runs, evaluations included).
    pub seconds: f64,
    /// Passes over the training text completed.
    pub pass: u64,
    /// Next chunk of the current pass.
    pub chunk: usize,
    /// Updates the optimizer state has seen (Adam's bias correction).
    pub optimizer_steps: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub step: u64,
    pub seconds: f64,
    /// Mean training loss since the previous point (none at step 0).
    pub train_loss: Option<f32>,
    pub held_out_loss: Option<f32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Files {
    model: String,
    state: String,
}

/// `checkpoint.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    format: String,
    version: u32,
    /// Token `i` is the `i`-th character.
    pub vocabulary: String,
    pub config: Hyper,
    pub data: DataInfo,
    pub progress: Progress,
    pub history: Vec<Point>,
    /// Fingerprints (FNV-1a, hex) of the model and state files this record belongs to.
    files: Files,
}

impl Meta {
    /// The record of a new run, before its first save.
    pub fn new(vocabulary: &Vocabulary, config: Hyper, data: DataInfo) -> Meta {
        Meta {
            format: FORMAT.into(),
            version: VERSION,
            vocabulary: vocabulary.chars().iter().collect(),
            config,
            data,
            progress: Progress::default(),
            history: Vec::new(),
            files: Files::default(),
        }
    }

    pub fn model_config(&self) -> unfold::Result<RnnConfig> {
        self.config.model_config(self.vocabulary.chars().count())
    }
}

/// A checkpoint read back and checked.
pub struct Loaded {
    pub meta: Meta,
    pub vocabulary: Vocabulary,
    pub params: RnnParams,
    pub optimizer: Option<OptimizerState>,
    /// The streams' state at the end of the last chunk trained on.
    pub streams: Option<RnnState>,
}

fn checkpoint_error(path: &Path, reason: impl Into<String>) -> Box<dyn std::error::Error> {
    Box::new(unfold::Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    })
}

/// The FNV-1a fingerprint of `bytes`, in hex.
pub fn hex(bytes: &[u8]) -> String {
    format!("{:016x}", fingerprint(bytes))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> unfold::Error {
    let path = path.to_path_buf();
    move |source| unfold::Error::Io {
        action,
        path,
        source,
    }
}

/// Reads and checks a checkpoint directory ([`load_exact`]); if its files do not make a
/// whole checkpoint but `previous/` does (a save was cut short), says so and uses that.
pub fn load_checkpoint(dir: &Path, with_state: bool) -> CliResult<Loaded> {
    let error = match load_exact(dir, with_state) {
        Ok(loaded) => return Ok(loaded),
        Err(e) => e,
    };
    let previous = dir.join(PREVIOUS_DIR);
    if dir.join(META_FILE).is_file() && previous.join(META_FILE).is_file() {
        if let Ok(loaded) = load_exact(&previous, with_state) {
            eprintln!(
                "unfold: {error}\nunfold: using the checkpoint saved before it, {} (step {})",
                previous.display(),
                loaded.meta.progress.step
            );
            return Ok(loaded);
        }
    }
    Err(error)
}

/// Reads and checks a checkpoint directory: the record, the weights against the record,
/// and (with `with_state`) the optimizer state and the streams' state.
fn load_exact(dir: &Path, with_state: bool) -> CliResult<Loaded> {
    let (meta, vocabulary, config) = read_record(dir)?;
    let params = read_model(dir, &meta, &config)?;
    let (optimizer, streams) = if with_state {
        read_state(dir, &meta, &config, params.len())?
    } else {
        (None, None)
    };
    Ok(Loaded {
        meta,
        vocabulary,
        params,
        optimizer,
        streams,
    })
}

/// `checkpoint.json`, its vocabulary and the model it describes.
fn read_record(dir: &Path) -> CliResult<(Meta, Vocabulary, RnnConfig)> {
    let path = dir.join(META_FILE);
    if !dir.is_dir() {
        return Err(checkpoint_error(dir, "no such directory"));
    }
    let text = std::fs::read(&path).map_err(|e| {
        checkpoint_error(
            &path,
            format!("{e} (is this a directory written by `unfold train`?)"),
        )
    })?;
    let meta: Meta = serde_json::from_slice(&text)
        .map_err(|e| checkpoint_error(&path, format!("not a valid checkpoint record: {e}")))?;
    if meta.format != FORMAT || meta.version != VERSION {
        return Err(checkpoint_error(
            &path,
            format!(
                "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                meta.format, meta.version
            ),
        ));
    }
    let chars: Vec<char> = meta.vocabulary.chars().collect();
    let vocabulary = Vocabulary::from_chars(chars)
        .map_err(|e| checkpoint_error(&path, format!("vocabulary: {e}")))?;
    let config = meta
        .model_config()
        .and_then(|c| c.validate().map(|_| c))
        .map_err(|e| checkpoint_error(&path, e.to_string()))?;
    Ok((meta, vocabulary, config))
}

/// The weights, checked against the record's fingerprint and model (the cell included).
fn read_model(dir: &Path, meta: &Meta, config: &RnnConfig) -> CliResult<RnnParams> {
    let path = dir.join(MODEL_FILE);
    read_checked(&path, &meta.files.model)?;
    let params = RnnParams::load_for(config, &path)?;
    params.validate(config).map_err(|e| {
        checkpoint_error(
            &path,
            format!("does not fit the configuration in {META_FILE}: {e}"),
        )
    })?;
    Ok(params)
}

/// Reads `path` and checks it against the fingerprint `checkpoint.json` recorded.
fn read_checked(path: &Path, want: &str) -> CliResult<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| checkpoint_error(path, format!("{e}")))?;
    if hex(&bytes) != want {
        return Err(checkpoint_error(
            path,
            format!("its contents do not match {META_FILE} (the file was changed or corrupted, or a save was cut short)"),
        ));
    }
    Ok(bytes)
}

/// `state.safetensors`, parsed.
struct StateFile<'a> {
    path: &'a Path,
    file: SafeTensors<'a>,
}

impl<'a> StateFile<'a> {
    fn parse(path: &'a Path, bytes: &'a [u8]) -> CliResult<Self> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| checkpoint_error(path, format!("not a safetensors file: {e}")))?;
        Ok(StateFile { path, file })
    }

    fn error(&self, reason: impl Into<String>) -> Box<dyn std::error::Error> {
        checkpoint_error(self.path, reason)
    }

    /// The f32 tensor `name` (shape and values), if there is one.
    fn get(&self, name: &str) -> CliResult<Option<(Vec<usize>, Vec<f32>)>> {
        let Ok(t) = self.file.tensor(name) else {
            return Ok(None);
        };
        if t.dtype() != Dtype::F32 {
            return Err(self.error(format!("tensor {name} is {:?}, expected F32", t.dtype())));
        }
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Some((t.shape().to_vec(), data)))
    }

    /// The tensor `name`, if there is one, which must have shape `want` and finite values.
    fn array3(&self, name: &str, want: [usize; 3]) -> CliResult<Option<Array3<f32>>> {
        let Some((shape, data)) = self.get(name)? else {
            return Ok(None);
        };
        if shape != want {
            return Err(self.error(format!("{name} has shape {shape:?}, expected {want:?}")));
        }
        let a = Array3::from_shape_vec(want, data).map_err(|e| self.error(e.to_string()))?;
        if a.iter().any(|v| !v.is_finite()) {
            return Err(self.error(format!("{name} holds non-finite values")));
        }
        Ok(Some(a))
    }
}

/// The optimizer's state and the streams' state, checked against the record and the
/// model of `n` parameters.
fn read_state(
    dir: &Path,
    meta: &Meta,
    config: &RnnConfig,
    n: usize,
) -> CliResult<(Option<OptimizerState>, Option<RnnState>)> {
    let path = dir.join(STATE_FILE);
    let bytes = read_checked(&path, &meta.files.state)?;
    let file = StateFile::parse(&path, &bytes)?;
    let optimizer = read_optimizer(&file, meta.progress.optimizer_steps, n)?;
    let streams = read_streams(&file, config, meta.config.batch)?;
    Ok((optimizer, streams))
}

/// `optimizer.m` and `optimizer.v` (each empty, or one value per parameter), present
/// exactly when the record counts updates.
fn read_optimizer(file: &StateFile, steps: u64, n: usize) -> CliResult<Option<OptimizerState>> {
    match (file.get("optimizer.m")?, file.get("optimizer.v")?) {
        (Some((_, m)), Some((_, v))) => {
            for (name, len) in [("optimizer.m", m.len()), ("optimizer.v", v.len())] {
                if len != 0 && len != n {
                    return Err(file.error(format!(
                        "{name} has {len} values but the model has {n} parameters"
                    )));
                }
            }
            Ok(Some(OptimizerState {
                layout: Vec::new(),
                steps,
                m,
                v,
            }))
        }
        (None, None) if steps == 0 => Ok(None),
        _ => Err(file.error(format!(
            "the optimizer state is missing or partial (the record says {steps} updates)"
        ))),
    }
}

/// `streams.hidden`, with `streams.cell` for an LSTM, `[layers, batch, hidden]` each.
fn read_streams(file: &StateFile, config: &RnnConfig, batch: usize) -> CliResult<Option<RnnState>> {
    let want = [config.num_units(), batch, config.hidden_size];
    let h = file.array3("streams.hidden", want)?;
    let c = file.array3("streams.cell", want)?;
    let lstm = config.cell.has_c();
    match (h, c) {
        (None, None) => Ok(None),
        (Some(h), None) if !lstm => Ok(Some(RnnState::hidden(h))),
        (Some(h), Some(c)) if lstm => Ok(Some(RnnState { h, c: Some(c) })),
        (h, c) => {
            let held: Vec<&str> = [
                ("streams.hidden", h.is_some()),
                ("streams.cell", c.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, here)| here.then_some(name))
            .collect();
            let carries = if lstm {
                "streams.hidden and streams.cell"
            } else {
                "streams.hidden alone"
            };
            Err(file.error(format!(
                "the streams' state holds {} but a {} model carries {carries}",
                held.join(" and "),
                config.cell
            )))
        }
    }
}

/// Keeps the whole checkpoint in `dir`, if there is one, as `dir/previous/`: each file
/// hard-linked (or copied) under a temporary name and renamed into place, the record
/// last. The checkpoint in `dir` is untouched, so a cut here loses nothing either.
fn keep_previous(dir: &Path) -> CliResult<()> {
    if load_exact(dir, true).is_err() {
        return Ok(()); // nothing whole to keep: `previous/` stays as it is
    }
    let previous = dir.join(PREVIOUS_DIR);
    std::fs::create_dir_all(&previous).map_err(io_error("creating", &previous))?;
    for name in [STATE_FILE, MODEL_FILE, META_FILE] {
        let (from, to) = (dir.join(name), previous.join(name));
        let tmp = previous.join(format!(".{name}.{}.link", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&from, &tmp).is_ok() {
            std::fs::rename(&tmp, &to).map_err(io_error("renaming into place", &to))?;
        } else {
            let bytes = std::fs::read(&from).map_err(io_error("reading", &from))?;
            write_atomically(&to, &bytes)?;
        }
    }
    Ok(())
}

fn state_bytes(
    optimizer: Option<&OptimizerState>,
    streams: Option<&RnnState>,
) -> CliResult<Vec<u8>> {
    let mut tensors: Vec<(&str, Vec<usize>, Vec<u8>)> = Vec::new();
    if let Some(s) = optimizer {
        for (name, values) in [("optimizer.m", &s.m), ("optimizer.v", &s.v)] {
            tensors.push((name, vec![values.len()], le_bytes(values)));
        }
    }
    if let Some(state) = streams {
        tensors.push((
            "streams.hidden",
            state.h.shape().to_vec(),
            le_bytes(&state.h),
        ));
        if let Some(c) = &state.c {
            tensors.push(("streams.cell", c.shape().to_vec(), le_bytes(c)));
        }
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes)?;
            Ok((name.to_string(), view))
        })
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([("format".to_string(), "unfold-train-state".to_string())]);
    Ok(safetensors::tensor::serialize(views, Some(metadata))?)
}

/// f32 values as little-endian bytes, in iteration order.
fn le_bytes<'a>(values: impl IntoIterator<Item = &'a f32>) -> Vec<u8> {
    values.into_iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Keeps the checkpoint being replaced in `previous/`, then writes the state, the weights,
/// and last the record that vouches for both.
/// The subdirectory holding the checkpoint with the best held-out loss.
pub const BEST_DIR: &str = "best";

pub fn save_checkpoint(
    dir: &Path,
    meta: &mut Meta,
    rnn: &Rnn,
    optimizer: &Optimizer,
    streams: Option<&RnnState>,
) -> CliResult<()> {
    let exported = optimizer.export_state()?;
    meta.progress.optimizer_steps = exported.as_ref().map_or(0, |s| s.steps);
    let state = state_bytes(exported.as_ref(), streams)?;
    keep_previous(dir)?;
    write_atomically(&dir.join(STATE_FILE), &state)?;
    let model_path = dir.join(MODEL_FILE);
    rnn.params()?.save_for(rnn.config(), &model_path)?;
    let model = std::fs::read(&model_path).map_err(io_error("reading back", &model_path))?;
    meta.files = Files {
        model: hex(&model),
        state: hex(&state),
    };
    let json = serde_json::to_vec_pretty(meta)?;
    write_atomically(&dir.join(META_FILE), &json)?;
    Ok(())
}

/// Whether `dir` holds any of a checkpoint's files.
pub fn holds_checkpoint(dir: &Path) -> bool {
    [META_FILE, MODEL_FILE, STATE_FILE]
        .iter()
        .any(|f| dir.join(f).exists())
}
