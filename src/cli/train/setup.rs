//! Everything before the first training step: the text, the configuration (with the
//! resumed checkpoint's), the output directory, the device and the model. Whatever is
//! wrong fails here, before anything is written.

use super::checkpoint::{hex, holds_checkpoint, load_checkpoint, DataInfo, Loaded, Meta, BEST_DIR};
use super::config::{merge_config, Hyper};
use super::metrics::Metrics;
use super::trainer::{RunStats, Trainer};
use super::{interrupt, TrainArgs};
use crate::cli::options::{make_optimizer, pick_checked, OptimizerChoice};
use crate::cli::parallel::{self, Model};
use crate::cli::{ensure_model_fits, CliResult};
use clap::ValueEnum;
use std::path::PathBuf;
use unfold::text::{read_text, Corpus, TokenStreams, BUNDLED_NAME, BUNDLED_TEXT};
use unfold::{Device, Optimizer, RnnConfig, RnnParams, RnnState};

/// The `data.source` of the bundled text.
const BUNDLED_SOURCE: &str = "bundled:persuasion";

/// The text to train on.
struct Text {
    text: String,
    /// [`BUNDLED_SOURCE`] or the file's absolute path, as the checkpoint records it.
    source: String,
    /// How messages name it.
    name: String,
}

/// What each rank reads and builds on its own before the ranks compare notes.
struct Inputs {
    corpus: Corpus,
    streams: TokenStreams,
    config: RnnConfig,
    optimizer: Optimizer,
    params: RnnParams,
    meta: Meta,
    /// Every stream's carried state, as the checkpoint holds it.
    carried: Option<RnnState>,
    text_name: String,
    device: Device,
}

/// The trainer of this run and its device's description, or the reason it cannot start.
/// In a data-parallel job every rank reads the text (and the resumed checkpoint) itself;
/// the ranks then agree that each could, compare fingerprints of what they read (nothing
/// is written before), and rank 0 alone prepares the output directory.
pub fn prepare(args: &TrainArgs) -> CliResult<(Trainer, String)> {
    let inputs = parallel::agree(read_inputs(args), "could not start")?;
    let Inputs {
        corpus,
        streams,
        config,
        mut optimizer,
        params,
        meta,
        carried,
        text_name,
        device,
    } = inputs;
    // the configuration, vocabulary, data fingerprint and progress the ranks must share
    let fingerprint = serde_json::to_vec(&meta)?;
    let rnn = Model::new(config, params, &device, &fingerprint, &mut optimizer)?;
    let carried = rnn.my_streams(carried);
    let (out, metrics) = parallel::agree(prepare_outputs(args), "could not prepare the output")?;
    // from here on, a Ctrl-C ends the training loop with a last checkpoint
    interrupt::install_handler();
    let held_out = corpus.held_out().len();
    let trainer = Trainer {
        eval_streams: TokenStreams::fitting(held_out, streams.streams(), streams.seq_len()),
        corpus,
        streams,
        rnn,
        optimizer,
        run: RunStats::new(&meta),
        meta,
        carried,
        out,
        text_name,
        device_name: if device.is_gpu() { "gpu" } else { "cpu" },
        sample_len: args.sample_len,
        metrics,
    };
    Ok((trainer, device.describe()))
}

/// The text, the configuration, the resumed checkpoint, the device and the initial
/// weights: everything that can fail before anything is written.
fn read_inputs(args: &TrainArgs) -> CliResult<Inputs> {
    let resumed = args
        .resume
        .as_ref()
        .map(|dir| load_checkpoint(dir, true))
        .transpose()?;
    let hyper = merge_config(args, resumed.as_ref().map(|r| &r.meta.config))?;
    let text = load_text(args, resumed.as_ref().map(|r| &r.meta))?;
    let corpus = make_corpus(&text, &hyper, resumed.as_ref())?;
    let vocab = corpus.vocabulary().len();
    let streams = TokenStreams::new(corpus.train().len(), hyper.batch, hyper.seq_len)?;
    let config = hyper.model_config(vocab)?;
    config.validate()?;
    ensure_model_fits(&config)?;
    let mut optimizer = optimizer(&hyper)?;
    if let Some(m) = args.minutes.filter(|m| !(m.is_finite() && *m > 0.0)) {
        return Err(format!("--minutes must be a positive number, got {m}").into());
    }
    let data = DataInfo {
        source: text.source,
        chars: text.text.chars().count(),
        fingerprint: hex(text.text.as_bytes()),
    };
    let device = pick_checked(args.device, false, args.mixed_precision)?;
    let (params, meta, carried) = match resumed {
        Some(r) => continue_from(r, hyper, data, &mut optimizer)?,
        None => {
            let params = RnnParams::init(&config, hyper.seed);
            (params, Meta::new(corpus.vocabulary(), hyper, data), None)
        }
    };
    Ok(Inputs {
        corpus,
        streams,
        config,
        optimizer,
        params,
        meta,
        carried,
        text_name: text.name,
        device,
    })
}

/// The output directory and the metrics file, on rank 0 (the only process that writes);
/// the other ranks only know the directory's name.
fn prepare_outputs(args: &TrainArgs) -> CliResult<(PathBuf, Option<Metrics>)> {
    if !parallel::is_root() {
        return Ok((out_dir_name(args), None));
    }
    let out = prepare_out_dir(args)?;
    let metrics = args
        .metrics
        .as_deref()
        .map(|path| Metrics::open(path, args.resume.is_some()))
        .transpose()?;
    Ok((out, metrics))
}

/// The text's characters as tokens, split into training and held-out parts; a resumed
/// run keeps the checkpoint's vocabulary.
fn make_corpus(text: &Text, hyper: &Hyper, resumed: Option<&Loaded>) -> CliResult<Corpus> {
    Ok(match resumed {
        Some(r) => Corpus::with_vocabulary(&text.text, r.vocabulary.clone(), hyper.held_out)
            .map_err(|e| {
                format!(
                    "{} does not fit the checkpoint's vocabulary: {e}",
                    text.name
                )
            })?,
        None => Corpus::new(&text.text, hyper.held_out)?,
    })
}

fn optimizer(hyper: &Hyper) -> CliResult<Optimizer> {
    let choice = OptimizerChoice::from_str(&hyper.optimizer, true)?;
    let optimizer = make_optimizer(choice, hyper.lr, hyper.clip, hyper.weight_decay)?;
    optimizer.validate()?;
    Ok(optimizer)
}

/// The resumed checkpoint's weights, record and streams' state, with this run's
/// configuration and text; its optimizer state goes into `optimizer`. If the text or its
/// chunking changed, the streams start again from the beginning of the text.
fn continue_from(
    resumed: Loaded,
    hyper: Hyper,
    data: DataInfo,
    optimizer: &mut Optimizer,
) -> CliResult<(RnnParams, Meta, Option<RnnState>)> {
    let mut meta = resumed.meta;
    let mut carried = resumed.streams;
    if meta.data.fingerprint != data.fingerprint
        || meta.config.seq_len != hyper.seq_len
        || meta.config.held_out != hyper.held_out
    {
        println!("the text or its chunking changed: the streams start again from the beginning of the text");
        meta.progress.chunk = 0;
        carried = None;
    }
    if let Some(state) = resumed.optimizer {
        optimizer.import_state(state)?;
    }
    meta.config = hyper;
    meta.data = data;
    Ok((resumed.params, meta, carried))
}

/// The text to train on: `--data`, else the resumed checkpoint's, else the bundled one.
fn load_text(args: &TrainArgs, resumed: Option<&Meta>) -> CliResult<Text> {
    let path = match (&args.data, resumed) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(meta)) if meta.data.source != BUNDLED_SOURCE => {
            Some(PathBuf::from(&meta.data.source))
        }
        _ => None,
    };
    Ok(match path {
        Some(p) => Text {
            text: read_text(&p)?,
            source: std::fs::canonicalize(&p)
                .unwrap_or(p.clone())
                .display()
                .to_string(),
            name: p.display().to_string(),
        },
        None => Text {
            text: BUNDLED_TEXT.to_string(),
            source: BUNDLED_SOURCE.to_string(),
            name: BUNDLED_NAME.to_string(),
        },
    })
}

/// `--out`, else the resumed directory, else the first free `runs/charlm-N`.
fn out_dir_name(args: &TrainArgs) -> PathBuf {
    match (&args.out, &args.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => (1..)
            .map(|i| PathBuf::from(format!("runs/charlm-{i}")))
            .find(|p| !p.exists())
            .expect("some runs/charlm-N is free"),
    }
}

/// The output directory: created if needed, writable, and holding no other checkpoint.
fn prepare_out_dir(args: &TrainArgs) -> CliResult<PathBuf> {
    let out = out_dir_name(args);
    std::fs::create_dir_all(&out).map_err(|source| unfold::Error::Io {
        action: "creating the output directory",
        path: out.clone(),
        source,
    })?;
    let out_canonical = std::fs::canonicalize(&out).ok();
    let same_as_resumed = match &args.resume {
        Some(r) => std::fs::canonicalize(r).ok() == out_canonical,
        None => false,
    };
    // a run's best checkpoint, resumed in place, would be replaced by later, worse ones
    let run_of_best = out_canonical
        .filter(|dir| dir.file_name() == Some(std::ffi::OsStr::new(BEST_DIR)))
        .and_then(|dir| dir.parent().map(PathBuf::from))
        .filter(|run| holds_checkpoint(run));
    if let (true, Some(run)) = (same_as_resumed, run_of_best) {
        return Err(format!(
            "{} is the best checkpoint of the run in {}: training in place would replace it; \
             continue from it into another directory with --out, or continue the run with --resume {1}",
            out.display(),
            run.display()
        )
        .into());
    }
    if !same_as_resumed && holds_checkpoint(&out) {
        return Err(format!(
            "{} already holds a checkpoint: continue it with --resume {0}, or choose another --out",
            out.display()
        )
        .into());
    }
    // fail now, not after the first minutes of training
    crate::cli::ensure_writable(&out)?;
    Ok(out)
}
