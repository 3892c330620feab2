//! `unfold train` and `unfold sample`: a character-level language model on a text file
//! (by default the bundled *Persuasion*), trained by truncated BPTT over parallel streams,
//! with checkpoints that `--resume` continues and `sample` generates from.
//!
//! A checkpoint directory holds three files, each written atomically:
//! - `model.safetensors`: the weights ([`RnnParams::save`], PyTorch's names);
//! - `state.safetensors`: the optimizer's moments (`optimizer.m`, `optimizer.v`, flat in
//!   the order of `RnnParams::tensors`) and the streams' carried state (`streams.hidden`,
//!   `[layers, batch, hidden]`), so that a resumed run continues exactly;
//! - `checkpoint.json`: vocabulary, configuration, data, progress, loss history, and the
//!   fingerprints of the two other files. It is written last: a checkpoint whose files
//!   do not match it (changed, corrupt, or a save cut short) is never used.
//!
//! Before a save overwrites a whole checkpoint, its three files are kept in `previous/`
//! (hard links where the file system allows). A save cut short therefore loses nothing:
//! `--resume` and `sample` then say so and use `previous/`, the checkpoint before it.

use crate::{make_optimizer, pick, DeviceChoice, OptimizerChoice};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use unfold::generate::sample_text;
use unfold::ndarray::Array3;
use unfold::text::{fingerprint, read_text, Corpus, TokenStreams, Vocabulary};
use unfold::text::{BUNDLED_NAME, BUNDLED_TEXT};
use unfold::RnnState;
use unfold::{
    write_atomically, Optimizer, OptimizerState, Rnn, RnnConfig, RnnParams, SequenceBatch, Targets,
};

/// Errors of the command line: the library's, and the trainer's own messages.
pub type CliResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const FORMAT: &str = "unfold char-lm checkpoint";
const VERSION: u32 = 1;
const META_FILE: &str = "checkpoint.json";
const MODEL_FILE: &str = "model.safetensors";
const STATE_FILE: &str = "state.safetensors";
const PLOT_FILE: &str = "loss.svg";
const PREVIOUS_DIR: &str = "previous";
/// The `data.source` of the bundled text.
const BUNDLED_SOURCE: &str = "bundled:persuasion";

// Defaults, sized so that 10 minutes on a 2-core CPU reach a held-out loss below 1.7
// nats per character on the bundled text.
const DEFAULT_HIDDEN: usize = 256;
const DEFAULT_LAYERS: usize = 1;
const DEFAULT_SEQ_LEN: usize = 64;
const DEFAULT_BATCH: usize = 32;
const DEFAULT_LR: f32 = 2e-3;
const DEFAULT_CLIP: f32 = 5.0;
const DEFAULT_MINUTES: f64 = 10.0;
const DEFAULT_HELD_OUT: f64 = 0.05;
const EVAL_SECONDS: f64 = 30.0;
const SAMPLE_TEMPERATURE: f32 = 0.7;

#[derive(Args)]
pub struct TrainArgs {
    /// UTF-8 text file to learn [default: the bundled Persuasion by Jane Austen, 467 KB;
    /// with --resume: the checkpoint's text].
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Directory for the checkpoint and the loss plot [default: a new runs/charlm-N; with
    /// --resume: the resumed directory].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Training steps (chunks of --seq-len characters per stream) in this run; with
    /// --minutes, whichever comes first.
    #[arg(long)]
    steps: Option<u64>,
    /// Wall-clock minutes for this run [default: 10 when --steps is not given].
    #[arg(long)]
    minutes: Option<f64>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Hidden units per layer [default: 256, or the checkpoint's].
    #[arg(long)]
    hidden: Option<usize>,
    /// Recurrent layers [default: 1, or the checkpoint's].
    #[arg(long)]
    layers: Option<usize>,
    /// Steps of back-propagation through time per chunk; the state carries on from one
    /// chunk to the next [default: 64, or the checkpoint's].
    #[arg(long = "seq-len")]
    seq_len: Option<usize>,
    /// Parallel streams over the text [default: 32, or the checkpoint's].
    #[arg(long)]
    batch: Option<usize>,
    /// [default: adam, or the checkpoint's]
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerChoice>,
    /// Learning rate [default: 2e-3, or the checkpoint's].
    #[arg(long)]
    lr: Option<f32>,
    /// Largest global gradient norm, 0 for none [default: 5, or the checkpoint's].
    #[arg(long)]
    clip: Option<f32>,
    /// Seed of the initial weights and of the samples [default: 0, or the checkpoint's].
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the training in this checkpoint directory (weights, optimizer state,
    /// position in the text); writes there unless --out says otherwise.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Fraction of the text, at its end, held out for evaluation [default: 0.05, or the
    /// checkpoint's].
    #[arg(long = "held-out")]
    held_out: Option<f64>,
    /// Evaluate, show a sample and write a checkpoint every N steps [default: every 30 s].
    #[arg(long = "eval-every")]
    eval_every: Option<u64>,
    /// Characters in the sample shown at each evaluation.
    #[arg(long = "sample-len", default_value_t = 120)]
    sample_len: usize,
}

#[derive(Args)]
pub struct SampleArgs {
    /// Checkpoint directory written by `unfold train`.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Text to start from; the output begins with it [default: "The", or the first
    /// character of the vocabulary if it lacks those].
    #[arg(long)]
    prime: Option<String>,
    /// Characters to generate after the prime.
    #[arg(long, default_value_t = 500)]
    len: usize,
    /// Softmax temperature: lower is more conservative, 0 always takes the most likely
    /// character.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceChoice,
}

/// The training configuration, as the checkpoint records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Hyper {
    hidden: usize,
    layers: usize,
    seq_len: usize,
    batch: usize,
    optimizer: String,
    lr: f32,
    clip: f32,
    seed: u64,
    held_out: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DataInfo {
    /// `bundled:persuasion`, or the text file's absolute path.
    source: String,
    chars: usize,
    /// FNV-1a of the text's bytes, in hex.
    fingerprint: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// Training steps so far (all runs).
    step: u64,
    /// Characters trained on so far.
    tokens: u64,
    /// Seconds of training so far (all runs, evaluations included).
    seconds: f64,
    /// Passes over the training text completed.
    pass: u64,
    /// Next chunk of the current pass.
    chunk: usize,
    /// Updates the optimizer state has seen (Adam's bias correction).
    optimizer_steps: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Point {
    step: u64,
    seconds: f64,
    /// Mean training loss since the previous point (none at step 0).
    train_loss: Option<f32>,
    held_out_loss: Option<f32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Files {
    model: String,
    state: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    format: String,
    version: u32,
    /// Token `i` is the `i`-th character.
    vocabulary: String,
    config: Hyper,
    data: DataInfo,
    progress: Progress,
    history: Vec<Point>,
    /// Fingerprints (FNV-1a, hex) of the model and state files this record belongs to.
    files: Files,
}

impl Meta {
    fn model_config(&self) -> RnnConfig {
        let v = self.vocabulary.chars().count();
        RnnConfig::new(v, self.config.hidden, v).num_layers(self.config.layers)
    }
}

/// A checkpoint read back and checked.
struct Loaded {
    meta: Meta,
    vocabulary: Vocabulary,
    params: RnnParams,
    optimizer: Option<OptimizerState>,
    hidden: Option<Array3<f32>>,
}

fn checkpoint_error(path: &Path, reason: impl Into<String>) -> Box<dyn std::error::Error> {
    Box::new(unfold::Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    })
}

fn hex(bytes: &[u8]) -> String {
    format!("{:016x}", fingerprint(bytes))
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

/// Reads and checks a checkpoint directory ([`load_exact`]); if its files do not make a
/// whole checkpoint but `previous/` does (a save was cut short), says so and uses that.
fn load_checkpoint(dir: &Path, with_state: bool) -> CliResult<Loaded> {
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

/// Keeps the whole checkpoint in `dir`, if there is one, as `dir/previous/`: each file
/// hard-linked (or copied) under a temporary name and renamed into place, the record
/// last. The checkpoint in `dir` is untouched, so a cut here loses nothing either.
fn keep_previous(dir: &Path) -> CliResult<()> {
    if load_exact(dir, true).is_err() {
        return Ok(()); // nothing whole to keep: `previous/` stays as it is
    }
    let previous = dir.join(PREVIOUS_DIR);
    std::fs::create_dir_all(&previous).map_err(|source| unfold::Error::Io {
        action: "creating",
        path: previous.clone(),
        source,
    })?;
    for name in [STATE_FILE, MODEL_FILE, META_FILE] {
        let (from, to) = (dir.join(name), previous.join(name));
        let tmp = previous.join(format!(".{name}.{}.link", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&from, &tmp).is_ok() {
            std::fs::rename(&tmp, &to).map_err(|source| unfold::Error::Io {
                action: "renaming into place",
                path: to.clone(),
                source,
            })?;
        } else {
            let bytes = std::fs::read(&from).map_err(|source| unfold::Error::Io {
                action: "reading",
                path: from.clone(),
                source,
            })?;
            write_atomically(&to, &bytes)?;
        }
    }
    Ok(())
}

/// Reads and checks a checkpoint directory: the record, the weights against the record,
/// and (with `with_state`) the optimizer state and the streams' state.
fn load_exact(dir: &Path, with_state: bool) -> CliResult<Loaded> {
    let meta_path = dir.join(META_FILE);
    if !dir.is_dir() {
        return Err(checkpoint_error(dir, "no such directory"));
    }
    let text = std::fs::read(&meta_path).map_err(|e| {
        checkpoint_error(
            &meta_path,
            format!("{e} (is this a directory written by `unfold train`?)"),
        )
    })?;
    let meta: Meta = serde_json::from_slice(&text)
        .map_err(|e| checkpoint_error(&meta_path, format!("not a valid checkpoint record: {e}")))?;
    if meta.format != FORMAT || meta.version != VERSION {
        return Err(checkpoint_error(
            &meta_path,
            format!(
                "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                meta.format, meta.version
            ),
        ));
    }
    let chars: Vec<char> = meta.vocabulary.chars().collect();
    let vocabulary = Vocabulary::from_chars(chars)
        .map_err(|e| checkpoint_error(&meta_path, format!("vocabulary: {e}")))?;
    let config = meta.model_config();
    config
        .validate()
        .map_err(|e| checkpoint_error(&meta_path, e.to_string()))?;

    let model_path = dir.join(MODEL_FILE);
    read_checked(&model_path, &meta.files.model)?;
    let params = RnnParams::load(&model_path)?;
    params.validate(&config).map_err(|e| {
        checkpoint_error(
            &model_path,
            format!("does not fit the configuration in {META_FILE}: {e}"),
        )
    })?;

    let (mut optimizer, mut hidden) = (None, None);
    if with_state {
        let state_path = dir.join(STATE_FILE);
        let bytes = read_checked(&state_path, &meta.files.state)?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| checkpoint_error(&state_path, format!("not a safetensors file: {e}")))?;
        let get = |name: &str| -> CliResult<Option<(Vec<usize>, Vec<f32>)>> {
            let Ok(t) = file.tensor(name) else {
                return Ok(None);
            };
            if t.dtype() != Dtype::F32 {
                return Err(checkpoint_error(
                    &state_path,
                    format!("tensor {name} is {:?}, expected F32", t.dtype()),
                ));
            }
            let data = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok(Some((t.shape().to_vec(), data)))
        };
        let n = params.len();
        let moments = (get("optimizer.m")?, get("optimizer.v")?);
        optimizer = match moments {
            (Some((_, m)), Some((_, v))) => {
                for (name, len) in [("optimizer.m", m.len()), ("optimizer.v", v.len())] {
                    if len != 0 && len != n {
                        return Err(checkpoint_error(
                            &state_path,
                            format!("{name} has {len} values but the model has {n} parameters"),
                        ));
                    }
                }
                Some(OptimizerState {
                    steps: meta.progress.optimizer_steps,
                    m,
                    v,
                })
            }
            (None, None) if meta.progress.optimizer_steps == 0 => None,
            _ => {
                return Err(checkpoint_error(
                    &state_path,
                    format!(
                        "the optimizer state is missing or partial (the record says {} updates)",
                        meta.progress.optimizer_steps
                    ),
                ))
            }
        };
        if let Some((shape, data)) = get("streams.hidden")? {
            let want = [config.num_layers, meta.config.batch, config.hidden_size];
            if shape != want {
                return Err(checkpoint_error(
                    &state_path,
                    format!("streams.hidden has shape {shape:?}, expected {want:?}"),
                ));
            }
            let h = Array3::from_shape_vec((want[0], want[1], want[2]), data)
                .map_err(|e| checkpoint_error(&state_path, e.to_string()))?;
            if h.iter().any(|v| !v.is_finite()) {
                return Err(checkpoint_error(
                    &state_path,
                    "streams.hidden holds non-finite values",
                ));
            }
            hidden = Some(h);
        }
    }
    Ok(Loaded {
        meta,
        vocabulary,
        params,
        optimizer,
        hidden,
    })
}

fn state_bytes(
    optimizer: Option<&OptimizerState>,
    hidden: Option<&Array3<f32>>,
) -> CliResult<Vec<u8>> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    if let Some(s) = optimizer {
        for (name, values) in [("optimizer.m", &s.m), ("optimizer.v", &s.v)] {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((name.into(), vec![values.len()], bytes));
        }
    }
    if let Some(h) = hidden {
        let bytes: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push(("streams.hidden".into(), h.shape().to_vec(), bytes));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([("format".to_string(), "unfold-train-state".to_string())]);
    Ok(safetensors::tensor::serialize(views, Some(metadata))?)
}

/// Keeps the checkpoint being replaced in `previous/`, then writes the state, the weights,
/// and last the record that vouches for both.
fn save_checkpoint(
    dir: &Path,
    meta: &mut Meta,
    rnn: &Rnn,
    optimizer: &Optimizer,
    hidden: Option<&Array3<f32>>,
) -> CliResult<()> {
    let exported = optimizer.export_state()?;
    meta.progress.optimizer_steps = exported.as_ref().map_or(0, |s| s.steps);
    let state = state_bytes(exported.as_ref(), hidden)?;
    keep_previous(dir)?;
    write_atomically(&dir.join(STATE_FILE), &state)?;
    let model_path = dir.join(MODEL_FILE);
    rnn.params()?.save(&model_path)?;
    let model = std::fs::read(&model_path).map_err(|source| unfold::Error::Io {
        action: "reading back",
        path: model_path.clone(),
        source,
    })?;
    meta.files = Files {
        model: hex(&model),
        state: hex(&state),
    };
    let json = serde_json::to_vec_pretty(meta)?;
    write_atomically(&dir.join(META_FILE), &json)?;
    Ok(())
}

fn optimizer_name(choice: OptimizerChoice) -> String {
    choice
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// The configuration of this run: the command line's, over the checkpoint's when
/// resuming. What would not fit the checkpoint's weights, optimizer state or streams is
/// an error.
fn merge_config(args: &TrainArgs, resumed: Option<&Meta>) -> CliResult<Hyper> {
    let Some(meta) = resumed else {
        return Ok(Hyper {
            hidden: args.hidden.unwrap_or(DEFAULT_HIDDEN),
            layers: args.layers.unwrap_or(DEFAULT_LAYERS),
            seq_len: args.seq_len.unwrap_or(DEFAULT_SEQ_LEN),
            batch: args.batch.unwrap_or(DEFAULT_BATCH),
            optimizer: optimizer_name(args.optimizer.unwrap_or(OptimizerChoice::Adam)),
            lr: args.lr.unwrap_or(DEFAULT_LR),
            clip: args.clip.unwrap_or(DEFAULT_CLIP),
            seed: args.seed.unwrap_or(0),
            held_out: args.held_out.unwrap_or(DEFAULT_HELD_OUT),
        });
    };
    let c = &meta.config;
    let fixed = |flag: &str, given: Option<String>, have: String| -> CliResult<()> {
        match given {
            Some(g) if g != have => Err(format!(
                "--{flag} {g} does not fit the checkpoint, which was trained with --{flag} {have}: leave it out to continue with {have}"
            )
            .into()),
            _ => Ok(()),
        }
    };
    fixed(
        "hidden",
        args.hidden.map(|v| v.to_string()),
        c.hidden.to_string(),
    )?;
    fixed(
        "layers",
        args.layers.map(|v| v.to_string()),
        c.layers.to_string(),
    )?;
    fixed(
        "batch",
        args.batch.map(|v| v.to_string()),
        c.batch.to_string(),
    )?;
    fixed(
        "optimizer",
        args.optimizer.map(optimizer_name),
        c.optimizer.clone(),
    )?;
    Ok(Hyper {
        seq_len: args.seq_len.unwrap_or(c.seq_len),
        lr: args.lr.unwrap_or(c.lr),
        clip: args.clip.unwrap_or(c.clip),
        seed: args.seed.unwrap_or(c.seed),
        held_out: args.held_out.unwrap_or(c.held_out),
        ..c.clone()
    })
}

/// The text to train on and how the checkpoint names it.
fn load_text(args: &TrainArgs, resumed: Option<&Meta>) -> CliResult<(String, String, String)> {
    let path = match (&args.data, resumed) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(meta)) if meta.data.source != BUNDLED_SOURCE => {
            Some(PathBuf::from(&meta.data.source))
        }
        _ => None,
    };
    Ok(match path {
        Some(p) => {
            let text = read_text(&p)?;
            let source = std::fs::canonicalize(&p).unwrap_or(p.clone());
            (text, source.display().to_string(), p.display().to_string())
        }
        None => (
            BUNDLED_TEXT.to_string(),
            BUNDLED_SOURCE.to_string(),
            BUNDLED_NAME.to_string(),
        ),
    })
}

/// The output directory: created if needed, writable, and holding no other checkpoint.
fn prepare_out_dir(args: &TrainArgs) -> CliResult<PathBuf> {
    let out = match (&args.out, &args.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => (1..)
            .map(|i| PathBuf::from(format!("runs/charlm-{i}")))
            .find(|p| !p.exists())
            .expect("some runs/charlm-N is free"),
    };
    std::fs::create_dir_all(&out).map_err(|source| unfold::Error::Io {
        action: "creating the output directory",
        path: out.clone(),
        source,
    })?;
    let same_as_resumed = match &args.resume {
        Some(r) => std::fs::canonicalize(r).ok() == std::fs::canonicalize(&out).ok(),
        None => false,
    };
    if !same_as_resumed
        && [META_FILE, MODEL_FILE, STATE_FILE]
            .iter()
            .any(|f| out.join(f).exists())
    {
        return Err(format!(
            "{} already holds a checkpoint: continue it with --resume {0}, or choose another --out",
            out.display()
        )
        .into());
    }
    // fail now, not after the first minutes of training
    let probe = out.join(".unfold-write-probe");
    write_atomically(&probe, b"probe").map_err(|e| {
        format!(
            "the output directory {} is not writable: {e}",
            out.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(out)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn install_interrupt_handler() {
    let installed = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting without a last checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: writing a last checkpoint (Ctrl-C again to quit at once)");
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will not write a last checkpoint ({e})");
    }
}

/// Mean loss per character over the held-out text, streams carrying their state from
/// chunk to chunk as in training.
fn held_out_loss(rnn: &mut Rnn, tokens: &[u32], streams: &TokenStreams) -> CliResult<f32> {
    let vocab = rnn.config().input_size;
    let (mut sum, mut count) = (0.0f64, 0usize);
    let mut state: Option<RnnState> = None;
    for c in 0..streams.chunks_per_pass() {
        let (inputs, targets) = streams.chunk(tokens, c);
        let batch = SequenceBatch::from_tokens(inputs, vocab, Targets::Classes(targets))?;
        let forward = rnn.forward_from(&batch, state.as_ref())?;
        sum += forward.loss as f64 * batch.tokens() as f64;
        count += batch.tokens();
        state = Some(RnnState {
            h: forward.final_hidden,
            c: forward.final_cell,
        });
    }
    Ok((sum / count.max(1) as f64) as f32)
}

fn default_prime(vocabulary: &Vocabulary) -> String {
    if "The".chars().all(|c| vocabulary.id(c).is_some()) {
        "The".into()
    } else {
        vocabulary.chars()[0].to_string()
    }
}

fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn format_count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// An SVG plot of the training and held-out losses against the step.
fn plot_losses(path: &Path, history: &[Point], title: &str) -> CliResult<()> {
    use plotters::prelude::*;
    let train: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|p| p.train_loss.map(|l| (p.step as f64, l as f64)))
        .collect();
    let held: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|p| p.held_out_loss.map(|l| (p.step as f64, l as f64)))
        .collect();
    let all = || train.iter().chain(&held);
    let x_max = all().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all().map(|p| p.1).fold(0.5, f64::max) * 1.05;
    let y_min = all().map(|p| p.1).fold(f64::INFINITY, f64::min).min(y_max) * 0.95;
    let y_min = if y_min.is_finite() { y_min } else { 0.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| format!("plotting: {e:?}");
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
        for (points, color, label) in [
            (&train, BLUE, "training (mean since the previous point)"),
            (&held, RED, "held-out"),
        ] {
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    write_atomically(path, svg.as_bytes())?;
    Ok(())
}

/// `unfold train`. Returns exit code 130 after a Ctrl-C (with a last checkpoint written).
pub fn train(args: TrainArgs) -> CliResult<ExitCode> {
    let resumed = args
        .resume
        .as_ref()
        .map(|dir| load_checkpoint(dir, true))
        .transpose()?;
    let hyper = merge_config(&args, resumed.as_ref().map(|r| &r.meta))?;
    let (text, source, text_name) = load_text(&args, resumed.as_ref().map(|r| &r.meta))?;
    let corpus = match &resumed {
        Some(r) => Corpus::with_vocabulary(&text, r.vocabulary.clone(), hyper.held_out)
            .map_err(|e| format!("{text_name} does not fit the checkpoint's vocabulary: {e}"))?,
        None => Corpus::new(&text, hyper.held_out)?,
    };
    let vocab = corpus.vocabulary().len();
    let streams = TokenStreams::new(corpus.train().len(), hyper.batch, hyper.seq_len)?;
    let eval_streams = TokenStreams::fitting(corpus.held_out().len(), hyper.batch, hyper.seq_len);
    let config = RnnConfig::new(vocab, hyper.hidden, vocab).num_layers(hyper.layers);
    config.validate()?;
    let choice = OptimizerChoice::from_str(&hyper.optimizer, true)?;
    let mut optimizer = make_optimizer(choice, hyper.lr, hyper.clip);
    optimizer.validate()?;
    if let Some(m) = args.minutes {
        if !(m.is_finite() && m > 0.0) {
            return Err(format!("--minutes must be a positive number, got {m}").into());
        }
    }
    let data = DataInfo {
        source,
        chars: text.chars().count(),
        fingerprint: hex(text.as_bytes()),
    };
    drop(text);
    let out = prepare_out_dir(&args)?;
    // from here on, a Ctrl-C ends the training loop with a last checkpoint
    install_interrupt_handler();
    let device = pick(args.device)?;

    let (params, mut meta, mut hidden) = match resumed {
        Some(r) => {
            let mut meta = r.meta;
            let mut hidden = r.hidden;
            if meta.data.fingerprint != data.fingerprint
                || meta.config.seq_len != hyper.seq_len
                || meta.config.held_out != hyper.held_out
            {
                println!("the text or its chunking changed: the streams start again from the beginning of the text");
                meta.progress.chunk = 0;
                hidden = None;
            }
            if let Some(state) = r.optimizer {
                optimizer.import_state(state)?;
            }
            meta.config = hyper.clone();
            meta.data = data;
            (r.params, meta, hidden)
        }
        None => {
            let meta = Meta {
                format: FORMAT.into(),
                version: VERSION,
                vocabulary: corpus.vocabulary().chars().iter().collect(),
                config: hyper.clone(),
                data,
                progress: Progress::default(),
                history: Vec::new(),
                files: Files {
                    model: String::new(),
                    state: String::new(),
                },
            };
            (RnnParams::init(&config, hyper.seed), meta, None)
        }
    };
    let mut rnn = Rnn::new(config.clone(), params, &device)?;

    let resuming = meta.progress.step > 0 || !meta.history.is_empty();
    println!(
        "{text_name}: {} characters, {vocab} distinct; training on {}, {} held out",
        meta.data.chars,
        corpus.train().len(),
        corpus.held_out().len()
    );
    println!(
        "model: {} tanh layer(s) of {} units, {} parameters, on {}",
        hyper.layers,
        hyper.hidden,
        config.num_params(),
        device.describe()
    );
    println!(
        "training: {} streams x {} steps per chunk ({} chunks per pass), {}, lr {}, clip {}, seed {}; {}",
        hyper.batch,
        hyper.seq_len,
        streams.chunks_per_pass(),
        hyper.optimizer,
        hyper.lr,
        if hyper.clip == 0.0 { "off".to_string() } else { hyper.clip.to_string() },
        hyper.seed,
        if resuming {
            format!("resuming at step {} from {}", meta.progress.step, args.resume.as_ref().map(|p| p.display().to_string()).unwrap_or_default())
        } else {
            "from scratch".to_string()
        }
    );
    println!("checkpoints and plot: {}", out.display());

    let minutes = match (args.minutes, args.steps) {
        (Some(m), _) => Some(m),
        (None, None) => Some(DEFAULT_MINUTES),
        (None, Some(_)) => None,
    };
    let budget = minutes.map(|m| Duration::from_secs_f64(m * 60.0));
    let steps_goal = args.steps;
    let pb = match steps_goal {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => {
            ProgressBar::with_draw_target(budget.map(|b| b.as_secs()), ProgressDrawTarget::stderr())
        }
    };
    let template = if steps_goal.is_some() {
        "{elapsed_precise} [{bar:30.cyan/blue}] step {pos}/{len} {msg}"
    } else {
        "{elapsed_precise} [{bar:30.cyan/blue}] {msg}"
    };
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let device_name = if device.is_gpu() { "gpu" } else { "cpu" };

    let start = Instant::now();
    let seconds_before = meta.progress.seconds;
    let sample_len = args.sample_len;
    let evaluate = |rnn: &mut Rnn, meta: &mut Meta, train_loss: Option<f32>| -> CliResult<String> {
        let held = match &eval_streams {
            Some(s) => Some(held_out_loss(rnn, corpus.held_out(), s)?),
            None => None,
        };
        let step = meta.progress.step;
        let sample = sample_text(
            rnn,
            corpus.vocabulary(),
            &default_prime(corpus.vocabulary()),
            sample_len,
            SAMPLE_TEMPERATURE,
            hyper.seed ^ step,
        )?;
        meta.progress.seconds = seconds_before + start.elapsed().as_secs_f64();
        meta.history.push(Point {
            step,
            seconds: meta.progress.seconds,
            train_loss,
            held_out_loss: held,
        });
        let fmt = |l: Option<f32>| l.map_or("-".to_string(), |l| format!("{l:.3}"));
        Ok(format!(
            "step {step:>6}  {:>7}  train {}  held-out {}\n  sample: {:?}",
            format_duration(meta.progress.seconds),
            fmt(train_loss),
            fmt(held),
            sample
        ))
    };
    if !resuming {
        let line = evaluate(&mut rnn, &mut meta, None)?;
        println!("{line}");
    }

    let mut run_steps = 0u64;
    let mut run_tokens = 0u64;
    let (mut window_loss, mut window_tokens) = (0.0f64, 0u64);
    let mut last_eval = Instant::now();
    let mut evaluated_at = meta.progress.step;
    let interrupted = loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break true;
        }
        if steps_goal.is_some_and(|n| run_steps >= n)
            || budget.is_some_and(|b| start.elapsed() >= b)
        {
            break false;
        }
        if meta.progress.chunk == 0 {
            hidden = None; // a new pass starts from the zero state
        }
        let (inputs, targets) = streams.chunk(corpus.train(), meta.progress.chunk);
        let batch = SequenceBatch::from_tokens(inputs, vocab, Targets::Classes(targets))?;
        let carried = hidden.take().map(RnnState::hidden);
        let (loss, last) = rnn.train_step_from(&batch, carried.as_ref(), &mut optimizer)?;
        hidden = Some(last.h);
        run_steps += 1;
        run_tokens += batch.tokens() as u64;
        window_loss += loss as f64 * batch.tokens() as f64;
        window_tokens += batch.tokens() as u64;
        let p = &mut meta.progress;
        p.step += 1;
        p.tokens += batch.tokens() as u64;
        p.chunk += 1;
        if p.chunk == streams.chunks_per_pass() {
            p.chunk = 0;
            p.pass += 1;
        }
        let rate = run_tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        pb.set_message(format!(
            "step {} | loss {loss:.3} | {} chars/s | {device_name}",
            meta.progress.step,
            format_count(rate)
        ));
        match steps_goal {
            Some(_) => pb.set_position(run_steps),
            None => pb.set_position(start.elapsed().as_secs()),
        }
        let due = match args.eval_every {
            Some(n) => meta.progress.step % n.max(1) == 0,
            None => last_eval.elapsed().as_secs_f64() >= EVAL_SECONDS,
        };
        if due {
            let train_loss = Some((window_loss / window_tokens.max(1) as f64) as f32);
            (window_loss, window_tokens) = (0.0, 0);
            let line = evaluate(&mut rnn, &mut meta, train_loss)?;
            pb.suspend(|| println!("{line}"));
            save_checkpoint(&out, &mut meta, &rnn, &optimizer, hidden.as_ref())?;
            evaluated_at = meta.progress.step;
            last_eval = Instant::now();
        }
    };
    pb.finish_and_clear();
    if interrupted {
        meta.progress.seconds = seconds_before + start.elapsed().as_secs_f64();
        save_checkpoint(&out, &mut meta, &rnn, &optimizer, hidden.as_ref())?;
        plot_losses(&out.join(PLOT_FILE), &meta.history, &text_name)?;
        println!(
            "interrupted at step {}: checkpoint written to {} (continue with --resume {})",
            meta.progress.step,
            out.display(),
            out.display()
        );
        return Ok(ExitCode::from(130));
    }
    if evaluated_at != meta.progress.step || meta.history.is_empty() {
        let train_loss = (window_tokens > 0).then(|| (window_loss / window_tokens as f64) as f32);
        let line = evaluate(&mut rnn, &mut meta, train_loss)?;
        println!("{line}");
    }
    meta.progress.seconds = seconds_before + start.elapsed().as_secs_f64();
    save_checkpoint(&out, &mut meta, &rnn, &optimizer, hidden.as_ref())?;
    let plot = out.join(PLOT_FILE);
    plot_losses(
        &plot,
        &meta.history,
        &format!(
            "{text_name}: {} x {} tanh, {}",
            hyper.layers, hyper.hidden, hyper.optimizer
        ),
    )?;
    let elapsed = start.elapsed().as_secs_f64();
    let last = meta.history.last().expect("an evaluation");
    let best = meta
        .history
        .iter()
        .filter_map(|p| p.held_out_loss.map(|l| (l, p.step)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    println!(
        "done: {run_steps} steps ({} characters) in {} on {device_name}, {} chars/s; step {}: train loss {}, held-out loss {} nats/char{}; checkpoint {}, plot {}",
        format_count(run_tokens as f64),
        format_duration(elapsed),
        format_count(run_tokens as f64 / elapsed.max(1e-9)),
        meta.progress.step,
        last.train_loss.map_or("-".into(), |l| format!("{l:.3}")),
        last.held_out_loss.map_or("-".into(), |l| format!("{l:.3}")),
        best.map_or(String::new(), |(l, s)| format!(" (best {l:.3} at step {s})")),
        out.display(),
        plot.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `unfold sample`: the prime, then `--len` characters drawn from the checkpoint's model,
/// on stdout.
pub fn sample(args: SampleArgs) -> CliResult<ExitCode> {
    let loaded = load_checkpoint(&args.checkpoint, false)?;
    let config = loaded.meta.model_config();
    let device = pick(args.device)?;
    let mut rnn = Rnn::new(config, loaded.params, &device)?;
    let prime = args
        .prime
        .unwrap_or_else(|| default_prime(&loaded.vocabulary));
    let text = sample_text(
        &mut rnn,
        &loaded.vocabulary,
        &prime,
        args.len,
        args.temperature,
        args.seed,
    )?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}
