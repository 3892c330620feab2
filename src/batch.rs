//! Minibatches of variable-length sequences, validated once, and the packed layout both
//! paths compute in.
//!
//! Packing (as PyTorch's `pack_padded_sequence`): sequences are ordered by decreasing
//! length, and the rows of all valid (step, sequence) positions are stored time-major.
//! Step `t` owns rows `offsets[t] .. offsets[t] + batch_sizes[t]`, and the sequences
//! still running at step `t` are always the first `batch_sizes[t]` of the order, so the
//! previous state of every row of step `t` is the row with the same index in step `t-1`.
//! Nothing past a sequence's length is ever stored, so it can influence nothing.

use crate::{Error, Result};
use ndarray::{s, Array2, Array3, ArrayView2};

/// Targets of a batch, one entry per sequence.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Per sequence: one class per valid step (per-step head), or a single class
    /// `vec![c]` (last-step head).
    Classes(Vec<Vec<u32>>),
    /// Per sequence: `[len, output]` (per-step head), or `[1, output]` (last-step head).
    Values(Vec<Array2<f32>>),
}

impl Targets {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes(c) => c.len(),
            Targets::Values(v) => v.len(),
        }
    }

    /// Whether there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of target rows of sequence `i`.
    pub(crate) fn rows(&self, i: usize) -> usize {
        match self {
            Targets::Classes(c) => c[i].len(),
            Targets::Values(v) => v[i].nrows(),
        }
    }
}

/// The packed layout of a batch (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packing {
    /// `order[j]` is the original index of the sequence at packed position `j`.
    pub order: Vec<usize>,
    /// Lengths in packed order (non-increasing).
    pub sorted_lengths: Vec<usize>,
    /// Number of sequences still running at each step.
    pub batch_sizes: Vec<usize>,
    /// First row of each step; `offsets[max_len]` is the number of valid positions.
    pub offsets: Vec<usize>,
}

impl Packing {
    pub fn from_lengths(lengths: &[usize]) -> Self {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        // stable: equal lengths keep their original order
        order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
        let sorted_lengths: Vec<usize> = order.iter().map(|&i| lengths[i]).collect();
        let max_len = sorted_lengths.first().copied().unwrap_or(0);
        let batch_sizes: Vec<usize> = (0..max_len)
            .map(|t| sorted_lengths.iter().take_while(|&&l| l > t).count())
            .collect();
        let mut offsets = Vec::with_capacity(max_len + 1);
        let mut at = 0;
        for &n in &batch_sizes {
            offsets.push(at);
            at += n;
        }
        offsets.push(at);
        Packing {
            order,
            sorted_lengths,
            batch_sizes,
            offsets,
        }
    }

    pub fn batch(&self) -> usize {
        self.order.len()
    }

    pub fn max_len(&self) -> usize {
        self.batch_sizes.len()
    }

    /// Number of valid (step, sequence) positions.
    pub fn tokens(&self) -> usize {
        *self.offsets.last().unwrap_or(&0)
    }

    /// Packed row of step `t` of the sequence at packed position `j`.
    pub fn row(&self, t: usize, j: usize) -> usize {
        self.offsets[t] + j
    }

    /// Packed row of the last valid step of the sequence at packed position `j`.
    pub fn last_row(&self, j: usize) -> usize {
        self.row(self.sorted_lengths[j] - 1, j)
    }

    /// [`Packing::last_row`] of every sequence, in packed order.
    pub fn last_rows(&self) -> Vec<usize> {
        (0..self.batch()).map(|j| self.last_row(j)).collect()
    }

    /// For every row of steps 1.., the row of the same sequence one step earlier.
    pub fn previous_rows(&self) -> Vec<usize> {
        (1..self.max_len())
            .flat_map(|t| (0..self.batch_sizes[t]).map(move |j| self.row(t - 1, j)))
            .collect()
    }

    /// Packed per-step rows `[tokens, width]` to `[batch, max_len, width]` in the original
    /// order, zero past each length.
    pub fn unpack_steps(&self, rows: ArrayView2<f32>) -> Array3<f32> {
        let mut out = Array3::zeros((self.batch(), self.max_len(), rows.ncols()));
        for (t, &n) in self.batch_sizes.iter().enumerate() {
            for (j, &i) in self.order[..n].iter().enumerate() {
                out.slice_mut(s![i, t, ..])
                    .assign(&rows.row(self.offsets[t] + j));
            }
        }
        out
    }

    /// One row per sequence in packed order `[batch, width]` to the original order.
    pub fn unpack_sequences(&self, rows: ArrayView2<f32>) -> Array2<f32> {
        let mut out = Array2::zeros((self.batch(), rows.ncols()));
        for (j, &i) in self.order.iter().enumerate() {
            out.row_mut(i).assign(&rows.row(j));
        }
        out
    }
}

/// A validated minibatch of variable-length sequences with their targets.
#[derive(Clone, Debug)]
pub struct SequenceBatch {
    inputs: Inputs,
    targets: Option<Targets>,
    lengths: Vec<usize>,
    packing: Packing,
    /// Which batch this is: a number of its own from [`SequenceBatch::next_id`] (clones
    /// share it, and their content: a batch never changes once built).
    id: u64,
}

/// What a batch's steps are: feature vectors, or token ids whose input projection is a
/// column lookup in `W_ih`.
#[derive(Clone, Debug)]
enum Inputs {
    Dense(Vec<Array2<f32>>),
    Tokens {
        ids: Vec<Vec<u32>>,
        vocab_size: usize,
    },
}

impl SequenceBatch {
    /// `inputs`: one `[len_i, input]` array per sequence. Checks everything that does not
    /// depend on the model: a non-empty batch, no empty sequence, one feature width,
    /// finite values, and targets that match the inputs in count and length.
    pub fn new(inputs: Vec<Array2<f32>>, targets: Targets) -> Result<Self> {
        let lengths = check_dense(&inputs)?;
        Self::with_targets(Inputs::Dense(inputs), lengths, Some(targets))
    }

    /// Inputs without targets, for inference and for encoders ([`crate::Rnn::encode`]),
    /// with the same checks as [`SequenceBatch::new`]. A forward pass over it gives
    /// outputs and final states with a NaN loss; training steps need targets.
    pub fn inputs_only(inputs: Vec<Array2<f32>>) -> Result<Self> {
        let lengths = check_dense(&inputs)?;
        Self::with_targets(Inputs::Dense(inputs), lengths, None)
    }

    /// Token sequences: step `t` of sequence `i` is the token `tokens[i][t]` in
    /// `0..vocab_size`, and a model for them has `input_size == vocab_size`. The input
    /// projection is a column lookup in `W_ih` (and its gradient a scatter into that
    /// column), never a product with a one-hot matrix.
    pub fn from_tokens(tokens: Vec<Vec<u32>>, vocab_size: usize, targets: Targets) -> Result<Self> {
        let lengths = check_tokens(&tokens, vocab_size)?;
        let inputs = Inputs::Tokens {
            ids: tokens,
            vocab_size,
        };
        Self::with_targets(inputs, lengths, Some(targets))
    }

    /// Token sequences without targets (see [`SequenceBatch::inputs_only`]). An encoder's
    /// backward pass over them gives parameter gradients only: tokens have no input
    /// gradient.
    pub fn tokens_only(tokens: Vec<Vec<u32>>, vocab_size: usize) -> Result<Self> {
        let lengths = check_tokens(&tokens, vocab_size)?;
        let inputs = Inputs::Tokens {
            ids: tokens,
            vocab_size,
        };
        Self::with_targets(inputs, lengths, None)
    }

    /// Checks the targets against the lengths and packs the batch.
    fn with_targets(inputs: Inputs, lengths: Vec<usize>, targets: Option<Targets>) -> Result<Self> {
        let Some(targets) = targets else {
            let packing = Packing::from_lengths(&lengths);
            return Ok(SequenceBatch {
                inputs,
                targets: None,
                lengths,
                packing,
                id: Self::next_id(),
            });
        };
        if targets.len() != lengths.len() {
            return Err(Error::shape(
                "number of target sequences",
                lengths.len(),
                targets.len(),
            ));
        }
        for (i, &len) in lengths.iter().enumerate() {
            let rows = targets.rows(i);
            if rows != len && rows != 1 {
                return Err(Error::shape(
                    format!("targets[{i}] length"),
                    format!("{len} (one per step) or 1 (last-step head)"),
                    rows,
                ));
            }
        }
        if let Targets::Values(v) = &targets {
            let width = v[0].ncols();
            for (i, y) in v.iter().enumerate() {
                if y.ncols() != width {
                    return Err(Error::shape(
                        format!("targets[{i}] width"),
                        width,
                        y.ncols(),
                    ));
                }
                check_finite(&format!("targets[{i}]"), y)?;
            }
        }
        let packing = Packing::from_lengths(&lengths);
        Ok(SequenceBatch {
            inputs,
            targets: Some(targets),
            lengths,
            packing,
            id: Self::next_id(),
        })
    }

    /// A number no batch built before had (in this process).
    fn next_id() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// This batch's identity: the same for its clones (which hold the same content), and
    /// different for every batch built apart, even with equal content. A model that
    /// still holds the forward pass of a batch recognises it by this
    /// ([`crate::Rnn::backward`] after [`crate::Rnn::encode`]).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The feature inputs, one `[len_i, input]` array per sequence; empty for a batch of
    /// tokens (see [`SequenceBatch::token_ids`]).
    pub fn inputs(&self) -> &[Array2<f32>] {
        match &self.inputs {
            Inputs::Dense(x) => x,
            Inputs::Tokens { .. } => &[],
        }
    }

    /// The token ids of a batch made by [`SequenceBatch::from_tokens`].
    pub fn token_ids(&self) -> Option<&[Vec<u32>]> {
        match &self.inputs {
            Inputs::Dense(_) => None,
            Inputs::Tokens { ids, .. } => Some(ids),
        }
    }

    /// The token ids in packed row order (token batches only).
    pub(crate) fn packed_token_ids(&self) -> Option<Vec<u32>> {
        let ids = self.token_ids()?;
        let p = &self.packing;
        let mut out = Vec::with_capacity(p.tokens());
        for (t, &n) in p.batch_sizes.iter().enumerate() {
            out.extend(p.order[..n].iter().map(|&i| ids[i][t]));
        }
        Some(out)
    }

    /// The targets (`None` for a batch made by [`SequenceBatch::inputs_only`] or
    /// [`SequenceBatch::tokens_only`]).
    pub fn targets(&self) -> Option<&Targets> {
        self.targets.as_ref()
    }

    /// The targets, or an error saying that `action` needs them.
    pub(crate) fn require_targets(&self, action: &'static str) -> Result<&Targets> {
        self.targets
            .as_ref()
            .ok_or(Error::MissingTargets { action })
    }

    /// Each sequence's length, in the batch's order.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Whether there are no sequences (never true for a constructed batch).
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The longest sequence's length.
    pub fn max_len(&self) -> usize {
        self.packing.max_len()
    }

    /// Feature width of the inputs (the vocabulary size for tokens).
    pub fn input_size(&self) -> usize {
        match &self.inputs {
            Inputs::Dense(x) => x[0].ncols(),
            Inputs::Tokens { vocab_size, .. } => *vocab_size,
        }
    }

    /// Number of valid (step, sequence) positions.
    pub fn tokens(&self) -> usize {
        self.packing.tokens()
    }

    pub(crate) fn packing(&self) -> &Packing {
        &self.packing
    }

    /// Checks the batch against a model: input width, target kind per head, class range,
    /// value width.
    pub fn check_against(&self, config: &crate::RnnConfig) -> Result<()> {
        if self.input_size() != config.input_size {
            return Err(Error::shape(
                "input feature width (input_size)",
                config.input_size,
                self.input_size(),
            ));
        }
        let Some(targets) = self
            .targets
            .as_ref()
            .filter(|_| config.head != crate::Head::None)
        else {
            return Ok(());
        };
        let per_step = config.head == crate::Head::PerStep;
        for (i, &len) in self.lengths.iter().enumerate() {
            let want = if per_step { len } else { 1 };
            let rows = targets.rows(i);
            if rows != want {
                let head = if per_step {
                    "per-step head: one per step"
                } else {
                    "last-step head: one per sequence"
                };
                return Err(Error::shape(
                    format!("targets[{i}] length"),
                    format!("{want} ({head})"),
                    rows,
                ));
            }
        }
        match targets {
            Targets::Classes(c) => {
                for (i, seq) in c.iter().enumerate() {
                    if let Some((t, &class)) = seq
                        .iter()
                        .enumerate()
                        .find(|(_, &k)| k as usize >= config.output_size)
                    {
                        return Err(Error::ClassOutOfRange {
                            sequence: i,
                            step: t,
                            class,
                            output_size: config.output_size,
                        });
                    }
                }
            }
            Targets::Values(v) => {
                if v[0].ncols() != config.output_size {
                    return Err(Error::shape(
                        "value target width (output_size)",
                        config.output_size,
                        v[0].ncols(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The lengths of dense inputs, checked: a non-empty batch, no empty sequence, one
/// feature width, finite values.
fn check_dense(inputs: &[Array2<f32>]) -> Result<Vec<usize>> {
    if inputs.is_empty() {
        return Err(Error::EmptyBatch);
    }
    let width = inputs[0].ncols();
    for (i, x) in inputs.iter().enumerate() {
        if x.nrows() == 0 {
            return Err(Error::ZeroLengthSequence { index: i });
        }
        if x.ncols() != width {
            return Err(Error::shape(
                format!("inputs[{i}] feature width"),
                width,
                x.ncols(),
            ));
        }
        check_finite(&format!("inputs[{i}]"), x)?;
    }
    Ok(inputs.iter().map(|x| x.nrows()).collect())
}

/// The lengths of token sequences, checked: a non-empty batch and vocabulary, no empty
/// sequence, every id in range.
fn check_tokens(tokens: &[Vec<u32>], vocab_size: usize) -> Result<Vec<usize>> {
    if tokens.is_empty() {
        return Err(Error::EmptyBatch);
    }
    if vocab_size == 0 {
        return Err(Error::InvalidConfig {
            what: "vocab_size",
            expected: "at least 1",
            got: "0".into(),
        });
    }
    for (i, seq) in tokens.iter().enumerate() {
        if seq.is_empty() {
            return Err(Error::ZeroLengthSequence { index: i });
        }
        if let Some((t, &token)) = seq
            .iter()
            .enumerate()
            .find(|(_, &k)| k as usize >= vocab_size)
        {
            return Err(Error::TokenOutOfRange {
                sequence: i,
                step: t,
                token,
                vocab_size,
            });
        }
    }
    Ok(tokens.iter().map(Vec::len).collect())
}

fn check_finite(what: &str, x: &Array2<f32>) -> Result<()> {
    if let Some(((r, c), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: what.to_string(),
            detail: format!("row {r}, column {c} is {v}"),
        });
    }
    Ok(())
}
