//! The training loop: one chunk of every stream per step, the streams' state carried from
//! chunk to chunk (truncated back-propagation through time), an evaluation and a
//! checkpoint every so often, until the step goal, the time budget or a Ctrl-C.

use super::checkpoint::{save_checkpoint, Meta, BEST_DIR};
use super::interrupt;
use super::metrics::Metrics;
use super::report::format_count;
use crate::cli::options::Schedule;
use crate::cli::parallel::{self, Model};
use crate::cli::CliResult;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use unfold::text::{Corpus, TokenStreams};
use unfold::{Optimizer, RnnState, SequenceBatch, Targets};

/// Seconds between evaluations when `--eval-every` is not given.
const EVAL_SECONDS: f64 = 30.0;

/// A run of the char-LM trainer: the text, the model and its optimizer, the record that
/// becomes `checkpoint.json`, and this run's counters.
pub struct Trainer {
    pub corpus: Corpus,
    pub streams: TokenStreams,
    /// Streams over the held-out text (none if it is too short for one chunk).
    pub eval_streams: Option<TokenStreams>,
    /// The model: this process's, or in a data-parallel job this rank's copy, whose
    /// steps train its share of the streams.
    pub rnn: Model,
    pub optimizer: Optimizer,
    pub meta: Meta,
    /// The state of this rank's streams (all of them in one process) at the end of the
    /// last chunk (`None`: zeros).
    pub carried: Option<RnnState>,
    /// The checkpoint directory.
    pub out: PathBuf,
    /// How the text is named in messages.
    pub text_name: String,
    /// `cpu` or `gpu`.
    pub device_name: &'static str,
    /// Characters in the sample shown at each evaluation.
    pub sample_len: usize,
    pub run: RunStats,
    /// `--metrics`: a JSON line per step.
    pub metrics: Option<Metrics>,
}

/// This run's counters.
pub struct RunStats {
    /// When this run started, and the seconds of training before it.
    pub started: Instant,
    pub seconds_before: f64,
    /// Steps and characters of this run.
    pub steps: u64,
    pub tokens: u64,
    /// Loss summed over the characters since the last evaluation, and their count.
    window: (f64, u64),
    last_eval: Instant,
    /// The step of the last evaluation.
    pub evaluated_at: u64,
}

impl RunStats {
    /// A run starting where `meta`'s progress is.
    pub fn new(meta: &Meta) -> RunStats {
        RunStats {
            started: Instant::now(),
            seconds_before: meta.progress.seconds,
            steps: 0,
            tokens: 0,
            window: (0.0, 0),
            last_eval: Instant::now(),
            evaluated_at: meta.progress.step,
        }
    }
}

/// When the run ends: after `steps` steps of this run and/or after `budget`.
pub struct Goal {
    pub steps: Option<u64>,
    pub budget: Option<Duration>,
}

impl Goal {
    fn reached(&self, steps: u64, elapsed: Duration) -> bool {
        self.steps.is_some_and(|n| steps >= n) || self.budget.is_some_and(|b| elapsed >= b)
    }

    /// How far through the run `steps` steps and `elapsed` time are (0 to 1), by
    /// whichever of the two limits is nearer.
    fn done(&self, steps: u64, elapsed: Duration) -> f64 {
        let by_steps = self.steps.map_or(0.0, |n| steps as f64 / n.max(1) as f64);
        let by_time = self
            .budget
            .map_or(0.0, |b| elapsed.as_secs_f64() / b.as_secs_f64().max(1e-9));
        by_steps.max(by_time).min(1.0)
    }

    /// A progress bar on stderr, counting steps or seconds (rank 0's alone in a job).
    fn progress_bar(&self) -> ProgressBar {
        if !parallel::is_root() {
            return ProgressBar::hidden();
        }
        let (len, template) = match self.steps {
            Some(n) => (
                Some(n),
                "{elapsed_precise} [{bar:30.cyan/blue}] step {pos}/{len} {msg}",
            ),
            None => (
                self.budget.map(|b| b.as_secs()),
                "{elapsed_precise} [{bar:30.cyan/blue}] {msg}",
            ),
        };
        let pb = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        pb
    }

    fn position(&self, steps: u64, elapsed: Duration) -> u64 {
        match self.steps {
            Some(_) => steps,
            None => elapsed.as_secs(),
        }
    }
}

impl Trainer {
    /// Whether the record holds training from an earlier run.
    pub fn resuming(&self) -> bool {
        self.meta.progress.step > 0 || !self.meta.history.is_empty()
    }

    /// Seconds of training in all runs so far.
    pub fn total_seconds(&self) -> f64 {
        self.run.seconds_before + self.run.started.elapsed().as_secs_f64()
    }

    /// Trains until `goal`, a Ctrl-C or — with `patience` — that many evaluations in a
    /// row without a new best held-out loss, evaluating and writing a checkpoint every
    /// `eval_every` steps (or every 30 s). The learning rate follows the run's schedule
    /// over the goal. Returns whether a Ctrl-C ended it.
    pub fn train_until(
        &mut self,
        goal: &Goal,
        eval_every: Option<u64>,
        patience: Option<u32>,
    ) -> CliResult<bool> {
        let pb = goal.progress_bar();
        let schedule = Schedule::from_name(&self.meta.config.schedule)?;
        let interrupted = loop {
            // what depends on rank 0's clock and signals, rank 0 decides for every rank
            let elapsed = self.run.started.elapsed();
            // the warm-up counts every step of the model, the decay this run's budget
            let factor =
                schedule.factor(self.meta.progress.step, goal.done(self.run.steps, elapsed));
            let [interrupted, reached, factor] = parallel::root_says([
                f64::from(u8::from(interrupt::requested())),
                f64::from(u8::from(goal.reached(self.run.steps, elapsed))),
                f64::from(factor),
            ]);
            if interrupted != 0.0 {
                break true;
            }
            if reached != 0.0 {
                break false;
            }
            self.optimizer.set_lr(self.meta.config.lr * factor as f32);
            let loss = self.step()?;
            self.show_progress(&pb, goal, loss);
            if parallel::root_decides(self.evaluation_due(eval_every)) {
                let line = self.evaluate()?;
                pb.suspend(|| println!("{line}"));
                self.save()?;
                self.run.last_eval = Instant::now();
                let patience_out =
                    patience.is_some_and(|p| self.evaluations_since_best() >= p as usize);
                if parallel::root_decides(patience_out) {
                    pb.suspend(|| {
                        println!(
                            "stopping early: no better held-out loss in the last {} evaluations",
                            patience.unwrap_or_default()
                        )
                    });
                    break false;
                }
            }
        };
        pb.finish_and_clear();
        Ok(interrupted)
    }

    /// The best held-out loss so far and its step.
    pub fn best(&self) -> Option<(f32, u64)> {
        self.meta
            .history
            .iter()
            .filter_map(|p| p.held_out_loss.map(|l| (l, p.step)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// Evaluations since the one with the best held-out loss.
    fn evaluations_since_best(&self) -> usize {
        let Some((_, step)) = self.best() else {
            return 0;
        };
        let evaluated = self
            .meta
            .history
            .iter()
            .filter(|p| p.held_out_loss.is_some());
        evaluated.filter(|p| p.step > step).count()
    }

    /// One training step on the next chunk of every stream.
    fn step(&mut self) -> CliResult<f32> {
        let started = Instant::now();
        let progress = &mut self.meta.progress;
        if progress.chunk == 0 {
            self.carried = None; // a new pass starts from the zero state
        }
        let (inputs, targets) = self.streams.chunk(self.corpus.train(), progress.chunk);
        let vocab = self.corpus.vocabulary().len();
        let batch = SequenceBatch::from_tokens(inputs, vocab, Targets::Classes(targets))?;
        // dropout masks depend on the seed and the step alone, so that a resumed run
        // draws the masks the uninterrupted one would have
        self.rnn
            .restore_dropout_state((self.meta.config.seed, progress.step));
        parallel::injected_fault(progress.step + 1)?;
        let (loss, last) =
            self.rnn
                .train_step_from(&batch, self.carried.as_ref(), &mut self.optimizer)?;
        self.carried = last;
        let tokens = batch.tokens() as u64;
        self.run.steps += 1;
        self.run.tokens += tokens;
        self.run.window.0 += loss as f64 * tokens as f64;
        self.run.window.1 += tokens;
        progress.step += 1;
        progress.tokens += tokens;
        progress.chunk += 1;
        if progress.chunk == self.streams.chunks_per_pass() {
            progress.chunk = 0;
            progress.pass += 1;
        }
        if let Some(m) = &mut self.metrics {
            let rate = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
            m.step(progress.step, loss, rate)?;
        }
        Ok(loss)
    }

    fn show_progress(&self, pb: &ProgressBar, goal: &Goal, loss: f32) {
        let elapsed = self.run.started.elapsed();
        let rate = self.run.tokens as f64 / elapsed.as_secs_f64().max(1e-9);
        pb.set_message(format!(
            "step {} | loss {loss:.3} | {} chars/s | {}",
            self.meta.progress.step,
            format_count(rate),
            self.device_name
        ));
        pb.set_position(goal.position(self.run.steps, elapsed));
    }

    fn evaluation_due(&self, eval_every: Option<u64>) -> bool {
        match eval_every {
            Some(n) => self.meta.progress.step.is_multiple_of(n.max(1)),
            None => self.run.last_eval.elapsed().as_secs_f64() >= EVAL_SECONDS,
        }
    }

    /// The mean training loss since the last call (none if no step ran since).
    pub fn take_window_loss(&mut self) -> Option<f32> {
        let (sum, tokens) = std::mem::take(&mut self.run.window);
        (tokens > 0).then(|| (sum / tokens as f64) as f32)
    }

    /// Writes a checkpoint of where the run is now, and when the latest evaluation is
    /// the best held-out loss so far, the same checkpoint into `best/` too. In a job
    /// (collective) every rank's streams' state goes to rank 0, which alone writes.
    pub fn save(&mut self) -> CliResult<()> {
        let streams = self
            .rnn
            .all_streams(self.carried.as_ref(), self.streams.streams())?;
        if !parallel::is_root() {
            return Ok(());
        }
        self.meta.progress.seconds = self.total_seconds();
        let dirs = [self.out.clone(), self.out.join(BEST_DIR)];
        let latest = self
            .meta
            .history
            .last()
            .and_then(|p| p.held_out_loss.map(|l| (l, p.step)));
        let new_best = latest.is_some() && latest == self.best();
        for dir in &dirs[..1 + new_best as usize] {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            save_checkpoint(
                dir,
                &mut self.meta,
                &self.rnn,
                &self.optimizer,
                streams.as_ref(),
            )?;
        }
        Ok(())
    }
}
