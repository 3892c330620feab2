//! `unfold sample`: the prime, then `--len` characters drawn from a checkpoint's model,
//! on stdout.

use super::options::{pick, DeviceChoice};
use super::train::checkpoint::{holds_checkpoint, load_checkpoint, BEST_DIR};
use super::train::default_prime;
use super::CliResult;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use unfold::generate::sample_text;
use unfold::Rnn;

#[derive(Args)]
pub struct SampleArgs {
    /// Checkpoint directory written by `unfold train`: its `best/` checkpoint (the best
    /// held-out loss of the run) when it has one, else the latest.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Use the latest checkpoint in DIR even where `best/` exists.
    #[arg(long)]
    last: bool,
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

pub fn run(args: SampleArgs) -> CliResult<ExitCode> {
    let best = args.checkpoint.join(BEST_DIR);
    let dir = if !args.last && holds_checkpoint(&best) {
        best
    } else {
        args.checkpoint.clone()
    };
    let loaded = load_checkpoint(&dir, false)?;
    let config = loaded.meta.model_config()?;
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
