//! `unfold classify`: a last-step classifier trained on a UEA/UCR `.ts` dataset (by default
//! the bundled JapaneseVowels). A validation part split off the training file picks the
//! epoch to keep; per-epoch loss and accuracy, then the kept model's test accuracy and
//! confusion matrix; `results` writes them, a plot and the model to the output
//! directory.

mod results;

use super::options::{
    at_least_one, make_optimizer, pick, CellChoice, DeviceChoice, OptimizerChoice, Schedule,
};
use super::parallel::{self, Model};
use super::{ensure_model_fits, CliResult};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use results::{EpochRecord, Results, Sizes, TestResult};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use unfold::data::{
    parse_ts, predict, read_ts, BatchLoader, ConfusionMatrix, Dataset, Standardizer,
};
use unfold::{Device, Head, Optimizer, Rnn, RnnConfig, RnnParams};

/// The bundled JapaneseVowels dataset (see data/JapaneseVowels/README.md).
const JAPANESE_VOWELS_TRAIN: &str =
    include_str!("../../data/JapaneseVowels/JapaneseVowels_TRAIN.ts");
const JAPANESE_VOWELS_TEST: &str = include_str!("../../data/JapaneseVowels/JapaneseVowels_TEST.ts");

/// Sequences per batch when predicting.
const EVAL_BATCH: usize = 128;

#[derive(Args)]
pub struct ClassifyArgs {
    /// Training set (`.ts` with class labels); goes with --test. The validation part is
    /// split off this file.
    #[arg(long, requires = "test")]
    train: Option<PathBuf>,
    /// Test set (`.ts` with the same class labels as the training set); used once, on
    /// the kept model.
    #[arg(long, requires = "train")]
    test: Option<PathBuf>,
    /// Directory for results.json, the plot curves.svg and the kept model
    /// model.safetensors [default: a new runs/classify-N].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The recurrent cell.
    #[arg(long, value_enum, default_value = "gru")]
    cell: CellChoice,
    /// Hidden units per layer and direction.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Run every layer over each sequence backwards too; the head reads both final
    /// states. `--bidirectional false`: forwards only.
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    bidirectional: bool,
    /// Probability of dropping each input of layers 2.. on training steps.
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerChoice,
    /// Learning rate (the peak, with --schedule cosine).
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// How the learning rate moves over the epochs: cosine warms up over the first 100
    /// steps (at most a tenth of the run), then decays to a twentieth at the last step.
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: Schedule,
    /// Largest global gradient norm; 0 turns clipping off.
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Decoupled weight decay (AdamW; --optimizer adam only).
    #[arg(long = "weight-decay", default_value_t = 0.0)]
    weight_decay: f32,
    /// Fraction of the training file held out for validation (stratified by class, drawn
    /// with --seed), which picks the epoch whose model is tested: the best validation
    /// accuracy, ties to the lower loss. 0: no validation, the last epoch's model is
    /// tested.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.1)]
    validation: f64,
    /// Batches per length-sorting pool (1: plain shuffling).
    #[arg(long, default_value_t = 8, value_parser = at_least_one::<usize>)]
    pool: usize,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Seed of the initial weights, the validation split, the shuffles and the dropout
    /// masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The data of a run: the training part, the validation part split off the training
/// file (if any) and the test set, all standardised with the training part's statistics.
struct Parts {
    name: String,
    train: Dataset,
    validation: Option<Dataset>,
    test: Dataset,
    standardizer: Standardizer,
}

/// Trains a last-step-head classifier on standardised inputs, keeps the epoch with the
/// best validation accuracy, and reports its accuracy on the test set.
pub fn run(args: ClassifyArgs) -> CliResult<ExitCode> {
    let start = Instant::now();
    let data = load_parts(&args)?;
    let device = pick(args.device)?;
    let (rnn, mut optimizer) = build_model(&args, &data.train, &device)?;
    // under mpirun (feature `mpi`): each minibatch split across the ranks; rank 0 prints
    // and writes
    let agreed = [args.epochs, args.batch, args.pool].map(|n| n as u64);
    let fingerprint =
        parallel::fingerprint_dataset(&data.train, &[&agreed[..], &[args.seed]].concat());
    let mut rnn = Model::adopt(rnn, &device, &fingerprint, &mut optimizer)?;
    let loader = BatchLoader::new(&data.train, args.batch)?
        .seed(args.seed)
        .pool_batches(args.pool);
    // the last check: nothing is written for settings that fail (only rank 0 writes)
    let out = match parallel::is_root() {
        true => Some(results::prepare_out_dir(args.out.as_deref())?),
        false => None,
    };
    print_header(&args, &data, &rnn, &device, &loader, &optimizer)?;
    if let Some(out) = &out {
        println!(
            "results ({}), plot ({}) and kept model ({}): {}",
            results::RESULTS_FILE,
            results::PLOT_FILE,
            results::MODEL_FILE,
            out.display()
        );
    }

    let (history, kept) = train(&args, &data, &loader, &mut rnn, &mut optimizer)?;
    let params = match kept.params {
        Some(params) => params,
        None => rnn.params()?,
    };
    let mut rnn = Rnn::new(rnn.config().clone(), params, &device)?;
    println!("{}", kept_line(&history, kept.epoch, kept.because));
    let test = report_test(&mut rnn, &data.test, start)?;
    let Some(out) = out else {
        return Ok(ExitCode::SUCCESS);
    };
    rnn.params()?
        .save_for(rnn.config(), out.join(results::MODEL_FILE))?;
    Results {
        dataset: data.name.clone(),
        classes: data.train.class_names().to_vec(),
        sequences: Sizes {
            train: data.train.len(),
            validation: data.validation.as_ref().map_or(0, Dataset::len),
            test: data.test.len(),
        },
        model: describe_model(rnn.config()),
        parameters: rnn.config().num_params(),
        device: device.describe(),
        settings: settings(&args),
        feature_mean: data.standardizer.mean.to_vec(),
        feature_std: data.standardizer.std.to_vec(),
        epochs: history,
        kept_epoch: kept.epoch,
        kept_because: kept.because.to_string(),
        test,
        seconds: start.elapsed().as_secs_f64(),
    }
    .write(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// The epoch whose model is tested.
struct Kept {
    epoch: usize,
    because: &'static str,
    /// Its weights, when they are not the model's last ones.
    params: Option<RnnParams>,
}

/// `--epochs` epochs, each followed by its line (`*` marking a new best validation
/// result); returns every epoch's record and the epoch to keep: the best on the
/// validation part, or without one the last.
fn train(
    args: &ClassifyArgs,
    data: &Parts,
    loader: &BatchLoader,
    rnn: &mut Model,
    optimizer: &mut Optimizer,
) -> unfold::Result<(Vec<EpochRecord>, Kept)> {
    let total_steps = (args.epochs * loader.num_batches()) as u64;
    let mut history: Vec<EpochRecord> = Vec::with_capacity(args.epochs);
    let mut kept = Kept {
        epoch: 0,
        because: if data.validation.is_some() {
            "best validation accuracy"
        } else {
            "last epoch"
        },
        params: None,
    };
    for epoch in 1..=args.epochs {
        let mut record = train_epoch(
            rnn,
            optimizer,
            loader,
            (args.lr, args.schedule, total_steps),
            &data.train,
            epoch,
            args.epochs,
        )?;
        evaluate(rnn, data, &mut record)?;
        let best = data.validation.is_some()
            && (kept.epoch == 0 || record.better_than(&history[kept.epoch - 1]));
        println!(
            "{}{}",
            epoch_line(&record, args.epochs),
            if best { "  *" } else { "" }
        );
        if best {
            kept.epoch = epoch;
            kept.params = Some(rnn.params()?);
        }
        history.push(record);
    }
    if data.validation.is_none() || kept.epoch == args.epochs {
        kept.epoch = args.epochs;
        kept.params = None; // the model's own, last weights
    }
    Ok((history, kept))
}

/// The datasets, the validation part split off the training file (never the test file),
/// and every part standardised with the statistics of the training part alone.
fn load_parts(args: &ClassifyArgs) -> CliResult<Parts> {
    let v = args.validation;
    if !(v.is_finite() && (0.0..1.0).contains(&v)) {
        return Err(format!(
            "--validation must be a fraction of the training set from 0 (no validation) up to, not including, 1; got {v}"
        )
        .into());
    }
    if args.epochs == 0 {
        return Err("--epochs must be at least 1".into());
    }
    let (name, train, test) = load_datasets(args)?;
    check_compatible(&train, &test)?;
    let (train, validation) = if v > 0.0 {
        let (rest, held) = train
            .stratified_split(v, args.seed)
            .map_err(|e| format!("--validation {v}: {e}"))?;
        (rest, Some(held))
    } else {
        (train, None)
    };
    let standardizer = Standardizer::fit(&train);
    Ok(Parts {
        name,
        validation: validation.map(|d| standardizer.apply(&d)).transpose()?,
        test: standardizer.apply(&test)?,
        train: standardizer.apply(&train)?,
        standardizer,
    })
}

/// The lines before training: the data, the model, the training settings.
fn print_header(
    args: &ClassifyArgs,
    data: &Parts,
    rnn: &Rnn,
    device: &Device,
    loader: &BatchLoader,
    optimizer: &Optimizer,
) -> CliResult<()> {
    let validation = match &data.validation {
        Some(v) => format!(
            " (validation {} split off the training file)",
            describe_lengths(v)
        ),
        None => " (no validation split)".to_string(),
    };
    println!(
        "{}: train {}{validation}, test {}; {} features, {} classes",
        data.name,
        describe_lengths(&data.train),
        describe_lengths(&data.test),
        data.train.num_features(),
        data.train.num_classes()
    );
    println!(
        "model: {}, last-step head, {} parameters, on {}",
        describe_model(rnn.config()),
        rnn.config().num_params(),
        device.describe()
    );
    if rnn.config().dropout > 0.0 && rnn.config().num_layers == 1 && parallel::is_root() {
        eprintln!("warning: --dropout acts between layers: with one layer it does nothing");
    }
    println!(
        "{}",
        describe_training(args, loader, &data.train, optimizer)?
    );
    Ok(())
}

/// The settings of the run, as `results.json` records them.
fn settings(args: &ClassifyArgs) -> serde_json::Value {
    serde_json::json!({
        "cell": unfold::Cell::from(args.cell).name(),
        "hidden": args.hidden,
        "layers": args.layers,
        "bidirectional": args.bidirectional,
        "dropout": args.dropout,
        "epochs": args.epochs,
        "batch": args.batch,
        "optimizer": args.optimizer.name(),
        "lr": args.lr,
        "schedule": args.schedule.name(),
        "clip": args.clip,
        "weight_decay": args.weight_decay,
        "validation": args.validation,
        "pool": args.pool,
        "seed": args.seed,
    })
}

/// The model, initialised from `--seed`, and its optimizer, both checked.
fn build_model(
    args: &ClassifyArgs,
    train: &Dataset,
    device: &Device,
) -> CliResult<(Rnn, Optimizer)> {
    let config = RnnConfig::new(train.num_features(), args.hidden, train.num_classes())
        .num_layers(args.layers)
        .cell(args.cell.into())
        .bidirectional(args.bidirectional)
        .dropout(args.dropout)
        .head(Head::LastStep);
    config.validate()?;
    ensure_model_fits(&config)?;
    let optimizer = make_optimizer(args.optimizer, args.lr, args.clip, args.weight_decay)
        .map_err(unfold::Error::Unsupported)?;
    optimizer.validate()?;
    let mut rnn = Rnn::new(config.clone(), RnnParams::init(&config, args.seed), device)?;
    rnn.set_dropout_seed(args.seed);
    Ok((rnn, optimizer))
}

/// `training: 60 epochs of 16 batches of 16 (… padding …), adam lr 0.003 (constant
/// schedule), clip 1, seed 0`
fn describe_training(
    args: &ClassifyArgs,
    loader: &BatchLoader,
    train: &Dataset,
    optimizer: &Optimizer,
) -> unfold::Result<String> {
    let shuffled = BatchLoader::new(train, args.batch)?
        .seed(args.seed)
        .pool_batches(1);
    Ok(format!(
        "training: {} epochs of {} batches of {} ({:.1}% padding with pools of {} batches, {:.1}% shuffled plainly), {}{} lr {} ({} schedule), clip {}, seed {}",
        args.epochs,
        loader.num_batches(),
        args.batch,
        100.0 * loader.padding_fraction(0),
        args.pool.max(1),
        100.0 * shuffled.padding_fraction(0),
        args.optimizer.name(),
        if args.weight_decay > 0.0 {
            format!(" (weight decay {})", args.weight_decay)
        } else {
            String::new()
        },
        args.lr,
        args.schedule.name(),
        optimizer.clip().map_or("off".to_string(), |c| c.to_string()),
        args.seed
    ))
}

/// The datasets' name, the training set and the test set: the given files, or the bundled
/// JapaneseVowels.
fn load_datasets(args: &ClassifyArgs) -> unfold::Result<(String, Dataset, Dataset)> {
    Ok(match (&args.train, &args.test) {
        (Some(train), Some(test)) => (
            train
                .file_stem()
                .map(|s| s.to_string_lossy().trim_end_matches("_TRAIN").to_string())
                .unwrap_or_default(),
            read_ts(train)?,
            read_ts(test)?,
        ),
        (None, None) => (
            "JapaneseVowels (bundled)".to_string(),
            parse_ts(
                JAPANESE_VOWELS_TRAIN,
                "data/JapaneseVowels/JapaneseVowels_TRAIN.ts",
            )?,
            parse_ts(
                JAPANESE_VOWELS_TEST,
                "data/JapaneseVowels/JapaneseVowels_TEST.ts",
            )?,
        ),
        _ => {
            return Err(unfold::Error::InvalidConfig {
                what: "--train and --test",
                expected: "given together (or neither, for the bundled JapaneseVowels)",
                got: "only one of them".into(),
            })
        }
    })
}

/// The test set must have the training set's features and classes.
fn check_compatible(train: &Dataset, test: &Dataset) -> unfold::Result<()> {
    if test.num_features() != train.num_features() {
        return Err(unfold::Error::InvalidData(format!(
            "the training set has {} features per step, the test set {}",
            train.num_features(),
            test.num_features()
        )));
    }
    if test.class_names() != train.class_names() {
        return Err(unfold::Error::InvalidData(format!(
            "the training set's classes ({}) differ from the test set's ({})",
            train.class_names().join(" "),
            test.class_names().join(" ")
        )));
    }
    Ok(())
}

/// `2 bidirectional layer(s) of 96 gru units, dropout 0.2 between layers`
fn describe_model(config: &RnnConfig) -> String {
    format!(
        "{} {}layer(s) of {} {} units{}",
        config.num_layers,
        if config.bidirectional {
            "bidirectional "
        } else {
            ""
        },
        config.hidden_size,
        config.cell,
        if config.dropout > 0.0 {
            format!(", dropout {} between layers", config.dropout)
        } else {
            String::new()
        }
    )
}

fn describe_lengths(data: &Dataset) -> String {
    let lengths = data.lengths();
    let min = lengths.iter().min().copied().unwrap_or(0);
    let max = lengths.iter().max().copied().unwrap_or(0);
    format!("{} sequences of lengths {min}..={max}", data.len())
}

/// One pass over the training set, with a progress bar on stderr (drawn only when
/// stderr is a terminal), the learning rate following `schedule` over the run's
/// `total_steps`; then the accuracy on the training set. `lr` is the peak rate.
fn train_epoch(
    rnn: &mut Model,
    optimizer: &mut Optimizer,
    loader: &BatchLoader,
    (lr, schedule, total_steps): (f32, Schedule, u64),
    train: &Dataset,
    epoch: usize,
    epochs: usize,
) -> unfold::Result<EpochRecord> {
    let t0 = Instant::now();
    let pb = progress_bar(loader.num_batches() as u64, epoch, epochs);
    let first_step = ((epoch - 1) * loader.num_batches()) as u64;
    let (mut loss_sum, mut seen) = (0.0f64, 0usize);
    for (i, batch) in loader.epoch(epoch as u64).enumerate() {
        let batch = batch?;
        optimizer.set_lr(lr * schedule.factor_of_run(first_step + i as u64, total_steps));
        loss_sum += rnn.train_step(&batch, optimizer)? as f64 * batch.len() as f64;
        seen += batch.len();
        pb.set_message(format!(
            "loss {:.4} | {:.0} sequences/s",
            loss_sum / seen as f64,
            seen as f64 / t0.elapsed().as_secs_f64().max(1e-9)
        ));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let train_seconds = t0.elapsed().as_secs_f64();
    let (predicted, _) = predict(rnn, train, EVAL_BATCH)?;
    let train_accuracy =
        ConfusionMatrix::new(train.labels(), &predicted, train.num_classes())?.accuracy();
    Ok(EpochRecord {
        epoch,
        lr: optimizer.lr(),
        train_loss: loss_sum / train.len() as f64,
        train_accuracy,
        validation_loss: None,
        validation_accuracy: None,
        train_seconds,
        eval_seconds: t0.elapsed().as_secs_f64() - train_seconds,
    })
}

/// A bar over an epoch's batches, on stderr; indicatif draws nothing when stderr is not
/// a terminal.
fn progress_bar(batches: u64, epoch: usize, epochs: usize) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(batches), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "epoch {epoch}/{epochs} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} batches, {{elapsed}} {{msg}}"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb
}

/// The validation loss and accuracy into `record` (nothing without a validation part).
fn evaluate(rnn: &mut Rnn, data: &Parts, record: &mut EpochRecord) -> unfold::Result<()> {
    let Some(validation) = &data.validation else {
        return Ok(());
    };
    let t0 = Instant::now();
    let (predicted, loss) = predict(rnn, validation, EVAL_BATCH)?;
    let accuracy =
        ConfusionMatrix::new(validation.labels(), &predicted, validation.num_classes())?.accuracy();
    record.validation_loss = Some(loss as f64);
    record.validation_accuracy = Some(accuracy);
    record.eval_seconds += t0.elapsed().as_secs_f64();
    Ok(())
}

/// `epoch   3/60  loss 0.8123  train accuracy 0.712  validation loss 0.7000  validation
/// accuracy 0.741  1.02 s`
fn epoch_line(r: &EpochRecord, epochs: usize) -> String {
    let validation = match (r.validation_loss, r.validation_accuracy) {
        (Some(loss), Some(accuracy)) => {
            format!("  validation loss {loss:.4}  validation accuracy {accuracy:.3}")
        }
        _ => String::new(),
    };
    format!(
        "epoch {:>3}/{epochs}  loss {:.4}  train accuracy {:.3}{validation}  {:.2} s",
        r.epoch,
        r.train_loss,
        r.train_accuracy,
        r.train_seconds + r.eval_seconds
    )
}

/// `kept epoch 17 of 60 (best validation accuracy): validation loss …, accuracy …`
fn kept_line(history: &[EpochRecord], kept: usize, because: &str) -> String {
    let r = &history[kept - 1];
    let validation = match (r.validation_loss, r.validation_accuracy) {
        (Some(loss), Some(accuracy)) => {
            format!(": validation loss {loss:.4}, validation accuracy {accuracy:.3}")
        }
        _ => String::new(),
    };
    format!(
        "kept epoch {kept} of {} ({because}){validation}",
        history.len()
    )
}

/// The test loss, accuracy and confusion matrix of the kept model.
fn report_test(rnn: &mut Rnn, test: &Dataset, start: Instant) -> unfold::Result<TestResult> {
    let (predicted, test_loss) = predict(rnn, test, EVAL_BATCH)?;
    let confusion = ConfusionMatrix::new(test.labels(), &predicted, test.num_classes())?;
    println!(
        "test loss {test_loss:.4} on {} sequences; {:.1} s in all",
        test.len(),
        start.elapsed().as_secs_f64()
    );
    println!("test accuracy: {:.3}", confusion.accuracy());
    println!("confusion matrix (rows: true class, columns: predicted class):");
    print!("{}", confusion.render(test.class_names()));
    Ok(TestResult {
        loss: test_loss as f64,
        accuracy: confusion.accuracy(),
        confusion: confusion.counts,
    })
}
