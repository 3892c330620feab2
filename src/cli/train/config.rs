//! The training configuration: defaults, what the checkpoint records, and how the command
//! line combines with a resumed checkpoint's.

use super::TrainArgs;
use crate::cli::options::{OptimizerChoice, Schedule};
use crate::cli::CliResult;
use serde::{Deserialize, Serialize};
use unfold::{Cell, RnnConfig};

// Defaults: the best recipe measured for 10 minutes on a 2-core CPU on the bundled text
// (BENCHMARKS.md, "The default recipe"): two GRU layers of 448 with dropout 0.5 between
// them, chunks of 100, AdamW with a cosine schedule over the run's budget.
const DEFAULT_HIDDEN: usize = 448;
const DEFAULT_LAYERS: usize = 2;
/// Between layers; a one-layer model has nowhere to drop.
const DEFAULT_DROPOUT: f32 = 0.5;
const DEFAULT_OUT_DROPOUT: f32 = 0.0;
const DEFAULT_CELL: Cell = Cell::Gru;
const DEFAULT_SEQ_LEN: usize = 100;
const DEFAULT_BATCH: usize = 32;
const DEFAULT_LR: f32 = 2e-3;
const DEFAULT_CLIP: f32 = 5.0;
const DEFAULT_HELD_OUT: f64 = 0.05;
const DEFAULT_WEIGHT_DECAY: f32 = 0.1;
const DEFAULT_SCHEDULE: Schedule = Schedule::Cosine;

/// The training configuration, as the checkpoint records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    pub hidden: usize,
    pub layers: usize,
    /// `Cell::name`; checkpoints from before cells were recorded are tanh.
    #[serde(default = "default_cell")]
    pub cell: String,
    /// Dropout between layers on training steps.
    #[serde(default)]
    pub dropout: f32,
    /// Dropout on the top layer's states before the readout, on training steps.
    #[serde(default)]
    pub out_dropout: f32,
    pub seq_len: usize,
    pub batch: usize,
    pub optimizer: String,
    pub lr: f32,
    /// AdamW's decoupled weight decay (0: plain Adam).
    #[serde(default)]
    pub weight_decay: f32,
    /// How the learning rate moves over a run (`Schedule::name`); records from before
    /// schedules kept it constant.
    #[serde(default = "constant_schedule")]
    pub schedule: String,
    pub clip: f32,
    pub seed: u64,
    pub held_out: f64,
}

fn constant_schedule() -> String {
    Schedule::Constant.name().to_string()
}

/// What a checkpoint without a cell was trained with (not today's default).
fn default_cell() -> String {
    Cell::Tanh.name().to_string()
}

impl Hyper {
    /// The recorded cell (an unknown name is an error).
    pub fn cell(&self) -> unfold::Result<Cell> {
        Cell::from_name(&self.cell)
    }

    /// The model: one token in and next-token logits out at every step, over a
    /// vocabulary of `vocab` characters.
    pub fn model_config(&self, vocab: usize) -> unfold::Result<RnnConfig> {
        Ok(RnnConfig::new(vocab, self.hidden, vocab)
            .num_layers(self.layers)
            .cell(self.cell()?)
            .dropout(self.dropout)
            .output_dropout(self.out_dropout))
    }
}

/// The configuration of this run: the command line's, over the checkpoint's when
/// resuming. What would not fit the checkpoint's weights, optimizer state or streams is
/// an error.
pub fn merge_config(args: &TrainArgs, resumed: Option<&Hyper>) -> CliResult<Hyper> {
    let Some(c) = resumed else {
        let optimizer = args.optimizer.unwrap_or(OptimizerChoice::Adam);
        let layers = args.layers.unwrap_or(DEFAULT_LAYERS);
        return Ok(Hyper {
            hidden: args.hidden.unwrap_or(DEFAULT_HIDDEN),
            layers,
            cell: args
                .cell
                .map_or(DEFAULT_CELL, Cell::from)
                .name()
                .to_string(),
            dropout: args
                .dropout
                .unwrap_or(if layers > 1 { DEFAULT_DROPOUT } else { 0.0 }),
            out_dropout: args.out_dropout.unwrap_or(DEFAULT_OUT_DROPOUT),
            seq_len: args.seq_len.unwrap_or(DEFAULT_SEQ_LEN),
            batch: args.batch.unwrap_or(DEFAULT_BATCH),
            optimizer: optimizer.name(),
            lr: args.lr.unwrap_or(DEFAULT_LR),
            // decoupled decay is AdamW's: the SGD optimizers have none by default
            weight_decay: args.weight_decay.unwrap_or(match optimizer {
                OptimizerChoice::Adam => DEFAULT_WEIGHT_DECAY,
                _ => 0.0,
            }),
            schedule: args.schedule.unwrap_or(DEFAULT_SCHEDULE).name().to_string(),
            clip: args.clip.unwrap_or(DEFAULT_CLIP),
            seed: args.seed.unwrap_or(0),
            held_out: args.held_out.unwrap_or(DEFAULT_HELD_OUT),
        });
    };
    let given = |v: Option<usize>| v.map(|v| v.to_string());
    fixed("hidden", given(args.hidden), c.hidden.to_string())?;
    fixed("layers", given(args.layers), c.layers.to_string())?;
    let cell = args
        .cell
        .map(|choice| Cell::from(choice).name().to_string());
    fixed("cell", cell, c.cell.clone())?;
    fixed("batch", given(args.batch), c.batch.to_string())?;
    fixed(
        "optimizer",
        args.optimizer.map(OptimizerChoice::name),
        c.optimizer.clone(),
    )?;
    Ok(Hyper {
        dropout: args.dropout.unwrap_or(c.dropout),
        out_dropout: args.out_dropout.unwrap_or(c.out_dropout),
        seq_len: args.seq_len.unwrap_or(c.seq_len),
        lr: args.lr.unwrap_or(c.lr),
        weight_decay: args.weight_decay.unwrap_or(c.weight_decay),
        schedule: args
            .schedule
            .map_or_else(|| c.schedule.clone(), |s| s.name().to_string()),
        clip: args.clip.unwrap_or(c.clip),
        seed: args.seed.unwrap_or(c.seed),
        held_out: args.held_out.unwrap_or(c.held_out),
        ..c.clone()
    })
}

/// A setting a resumed run cannot change: `given` on the command line must be the
/// checkpoint's `have`, if given at all.
fn fixed(flag: &str, given: Option<String>, have: String) -> CliResult<()> {
    match given {
        Some(g) if g != have => Err(format!(
            "--{flag} {g} does not fit the checkpoint, which was trained with --{flag} {have}: leave it out to continue with {have}"
        )
        .into()),
        _ => Ok(()),
    }
}
