//! Everything before the first training step: the text, the configuration (with the
//! resumed checkpoint's), the output directory, the device and the model. Whatever is
//! wrong fails here, before anything is written.

use super::checkpoint::{hex, holds_checkpoint, load_checkpoint, DataInfo, Loaded, Meta};
use super::config::{merge_config, Hyper};
use super::metrics::Metrics;
use super::trainer::{RunStats, Trainer};
use super::{interrupt, TrainArgs};
use crate::cli::options::{make_optimizer, pick, OptimizerChoice};
use crate::cli::CliResult;
use clap::ValueEnum;
use std::path::PathBuf;
use unfold::internals::write_atomically;
use unfold::text::{read_text, Corpus, TokenStreams, BUNDLED_NAME, BUNDLED_TEXT};
use unfold::{Optimizer, Rnn, RnnParams, RnnState};

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

/// The trainer of this run and its device's description, or the reason it cannot start.
pub fn prepare(args: &TrainArgs) -> CliResult<(Trainer, String)> {
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
    let mut optimizer = optimizer(&hyper)?;
    if let Some(m) = args.minutes.filter(|m| !(m.is_finite() && *m > 0.0)) {
        return Err(format!("--minutes must be a positive number, got {m}").into());
    }
    let data = DataInfo {
        source: text.source,
        chars: text.text.chars().count(),
        fingerprint: hex(text.text.as_bytes()),
    };
    let out = prepare_out_dir(args)?;
    // from here on, a Ctrl-C ends the training loop with a last checkpoint
    interrupt::install_handler();
    let device = pick(args.device)?;
    let (params, meta, carried) = match resumed {
        Some(r) => continue_from(r, hyper, data, &mut optimizer)?,
        None => {
            let params = RnnParams::init(&config, hyper.seed);
            (params, Meta::new(corpus.vocabulary(), hyper, data), None)
        }
    };
    let rnn = Rnn::new(config, params, &device)?;
    let metrics = args
        .metrics
        .as_deref()
        .map(|path| Metrics::open(path, args.resume.is_some()))
        .transpose()?;
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
        text_name: text.name,
        device_name: if device.is_gpu() { "gpu" } else { "cpu" },
        sample_len: args.sample_len,
        metrics,
    };
    Ok((trainer, device.describe()))
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
    if !same_as_resumed && holds_checkpoint(&out) {
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
