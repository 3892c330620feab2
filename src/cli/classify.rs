//! `unfold classify`: a last-step classifier trained on a UEA/UCR `.ts` dataset (by
//! default the bundled JapaneseVowels), with per-epoch loss and accuracy, then the test
//! accuracy and confusion matrix.

use super::options::{make_optimizer, pick, CellChoice, DeviceChoice, OptimizerChoice};
use super::parallel::{self, Model};
use super::CliResult;
use clap::Args;
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
    /// Training set (`.ts` with class labels); goes with --test.
    #[arg(long, requires = "test")]
    train: Option<PathBuf>,
    /// Test set (`.ts` with the same class labels as the training set).
    #[arg(long, requires = "train")]
    test: Option<PathBuf>,
    /// The recurrent cell.
    #[arg(long, value_enum, default_value = "tanh")]
    cell: CellChoice,
    /// Hidden units per layer and direction.
    #[arg(long, default_value_t = 96)]
    hidden: usize,
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Run every layer over each sequence backwards too; the head reads both final states.
    #[arg(long)]
    bidirectional: bool,
    /// Probability of dropping each input of layers 2.. on training steps.
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    #[arg(long, default_value_t = 60)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerChoice,
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// Largest global gradient norm; 0 turns clipping off.
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Decoupled weight decay (AdamW; --optimizer adam only).
    #[arg(long = "weight-decay", default_value_t = 0.0)]
    weight_decay: f32,
    /// Batches per length-sorting pool (1: plain shuffling).
    #[arg(long, default_value_t = 8)]
    pool: usize,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Trains a last-step-head classifier on standardised inputs and reports its accuracy on
/// the test set.
pub fn run(args: ClassifyArgs) -> CliResult<ExitCode> {
    let start = Instant::now();
    let (name, train, test) = load_datasets(&args)?;
    check_compatible(&train, &test)?;
    // statistics of the training set only, applied to both
    let standardizer = Standardizer::fit(&train);
    let (train, test) = (standardizer.apply(&train)?, standardizer.apply(&test)?);

    let device = pick(args.device)?;
    let (rnn, mut optimizer) = build_model(&args, &train, &device)?;
    // under mpirun (feature `mpi`): each minibatch split across the ranks; rank 0 prints
    let settings = [args.epochs, args.batch, args.pool].map(|n| n as u64);
    let fingerprint =
        parallel::fingerprint_dataset(&train, &[&settings[..], &[args.seed]].concat());
    let mut rnn = Model::adopt(rnn, &device, &fingerprint, &mut optimizer)?;
    let loader = BatchLoader::new(&train, args.batch)?
        .seed(args.seed)
        .pool_batches(args.pool);
    println!(
        "{name}: train {}, test {}; {} features, {} classes",
        describe_lengths(&train),
        describe_lengths(&test),
        train.num_features(),
        train.num_classes()
    );
    println!(
        "model: {}, last-step head, {} parameters, on {}",
        describe_model(rnn.config()),
        rnn.config().num_params(),
        device.describe()
    );
    println!("{}", describe_training(&args, &loader, &train, &optimizer)?);
    for epoch in 1..=args.epochs {
        train_epoch(
            &mut rnn,
            &mut optimizer,
            &loader,
            &train,
            epoch,
            args.epochs,
        )?;
    }
    report_test(&mut rnn, &test, start)?;
    Ok(ExitCode::SUCCESS)
}

/// The model, initialised from `--seed`, and its optimizer, both checked.
fn build_model(
    args: &ClassifyArgs,
    train: &Dataset,
    device: &Device,
) -> unfold::Result<(Rnn, Optimizer)> {
    let config = RnnConfig::new(train.num_features(), args.hidden, train.num_classes())
        .num_layers(args.layers)
        .cell(args.cell.into())
        .bidirectional(args.bidirectional)
        .dropout(args.dropout)
        .head(Head::LastStep);
    config.validate()?;
    let optimizer = make_optimizer(args.optimizer, args.lr, args.clip, args.weight_decay)
        .map_err(unfold::Error::Unsupported)?;
    optimizer.validate()?;
    let mut rnn = Rnn::new(config.clone(), RnnParams::init(&config, args.seed), device)?;
    rnn.set_dropout_seed(args.seed);
    Ok((rnn, optimizer))
}

/// `training: 60 epochs of 17 batches of 16 (… padding …), Adam, clip 1, seed 0`
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
        "training: {} epochs of {} batches of {} ({:.1}% padding with pools of {} batches, {:.1}% shuffled plainly), {:?}, clip {}, seed {}",
        args.epochs,
        loader.num_batches(),
        args.batch,
        100.0 * loader.padding_fraction(0),
        args.pool.max(1),
        100.0 * shuffled.padding_fraction(0),
        optimizer.kind(),
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

/// One pass over the training set, then a line with its mean loss and the accuracy on it.
fn train_epoch(
    rnn: &mut Model,
    optimizer: &mut Optimizer,
    loader: &BatchLoader,
    train: &Dataset,
    epoch: usize,
    epochs: usize,
) -> unfold::Result<()> {
    let t0 = Instant::now();
    let mut loss_sum = 0.0f64;
    for batch in loader.epoch(epoch as u64) {
        let batch = batch?;
        loss_sum += rnn.train_step(&batch, optimizer)? as f64 * batch.len() as f64;
    }
    let (predicted, _) = predict(rnn, train, EVAL_BATCH)?;
    let accuracy =
        ConfusionMatrix::new(train.labels(), &predicted, train.num_classes())?.accuracy();
    println!(
        "epoch {epoch:>3}/{epochs}  loss {:.4}  train accuracy {accuracy:.3}  {:.2} s",
        loss_sum / train.len() as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The test loss, accuracy and confusion matrix.
fn report_test(rnn: &mut Rnn, test: &Dataset, start: Instant) -> unfold::Result<()> {
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
    Ok(())
}
