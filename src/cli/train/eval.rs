//! Evaluation during training: the loss on the held-out text and a short sample, recorded
//! in the history with the mean training loss since the previous evaluation.

use super::checkpoint::Point;
use super::report::format_duration;
use super::trainer::Trainer;
use crate::cli::parallel;
use crate::cli::CliResult;
use unfold::generate::sample_text;
use unfold::text::{TokenStreams, Vocabulary};
use unfold::{Rnn, RnnState, SequenceBatch, Targets};

/// The temperature of the samples shown during training.
const SAMPLE_TEMPERATURE: f32 = 0.7;

impl Trainer {
    /// Evaluates the model now and adds a point to the history; returns the lines to
    /// show (`step …  train …  held-out …` and the sample). In a job, rank 0 alone
    /// evaluates (the others return nothing to show).
    pub fn evaluate(&mut self) -> CliResult<String> {
        let train_loss = self.take_window_loss();
        if !parallel::is_root() {
            self.run.evaluated_at = self.meta.progress.step;
            return Ok(String::new());
        }
        let held = match &self.eval_streams {
            Some(s) => Some(held_out_loss(&mut self.rnn, self.corpus.held_out(), s)?),
            None => None,
        };
        let step = self.meta.progress.step;
        let vocabulary = self.corpus.vocabulary();
        let sample = sample_text(
            &mut self.rnn,
            vocabulary,
            &default_prime(vocabulary),
            self.sample_len,
            SAMPLE_TEMPERATURE,
            self.meta.config.seed ^ step,
        )?;
        self.meta.progress.seconds = self.total_seconds();
        self.meta.history.push(Point {
            step,
            seconds: self.meta.progress.seconds,
            train_loss,
            held_out_loss: held,
        });
        self.run.evaluated_at = step;
        if let Some(m) = &mut self.metrics {
            m.evaluated(step, held)?;
        }
        let fmt = |l: Option<f32>| l.map_or("-".to_string(), |l| format!("{l:.3}"));
        Ok(format!(
            "step {step:>6}  {:>7}  train {}  held-out {}\n  sample: {:?}",
            format_duration(self.meta.progress.seconds),
            fmt(train_loss),
            fmt(held),
            sample
        ))
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

/// "The" where the vocabulary has those characters, else its first character.
pub fn default_prime(vocabulary: &Vocabulary) -> String {
    if "The".chars().all(|c| vocabulary.id(c).is_some()) {
        "The".into()
    } else {
        vocabulary.chars()[0].to_string()
    }
}
