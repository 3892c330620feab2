//! Datasets of variable-length sequences with one class per sequence, for the last-step
//! head: a [`Dataset`], a minibatch [`BatchLoader`] that shuffles per epoch and groups
//! sequences of similar length, feature standardisation ([`Standardizer`]), a reader for
//! the UEA/UCR `.ts` format ([`read_ts`]), and evaluation helpers ([`predict`],
//! [`ConfusionMatrix`]).
//!
//! ```
//! use unfold::data::{BatchLoader, Dataset, Standardizer};
//! use unfold::ndarray::Array2;
//!
//! let inputs: Vec<Array2<f32>> = (1..=10).map(|len| Array2::from_elem((len, 2), len as f32)).collect();
//! let labels = (0..10).map(|i| (i % 2) as u32).collect();
//! let train = Dataset::new(inputs, labels, vec!["even".into(), "odd".into()])?;
//!
//! let train = Standardizer::fit(&train).apply(&train)?;
//! let loader = BatchLoader::new(&train, 4)?.seed(7);
//! let sizes: Vec<usize> = loader.epoch(0).map(|b| b.map(|b| b.len())).collect::<Result<_, _>>()?;
//! assert_eq!(sizes.iter().sum::<usize>(), 10); // every sequence once, last batch partial
//! # Ok::<(), unfold::Error>(())
//! ```

mod loader;
mod ts;

pub use loader::{padding_fraction, BatchLoader, Epoch};
pub use ts::{parse_ts, read_ts};

use crate::rng::SplitMix64;
use crate::{Error, Result, Rnn, SequenceBatch, Targets};
use ndarray::{Array1, Array2, Axis};

/// Variable-length sequences (`[len, features]` each) with one class label per sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    inputs: Vec<Array2<f32>>,
    labels: Vec<u32>,
    class_names: Vec<String>,
}

impl Dataset {
    /// Checks that there is at least one sequence, one label per sequence, no empty
    /// sequence, one feature width (at least 1), finite values, and every label below
    /// `class_names.len()`.
    pub fn new(
        inputs: Vec<Array2<f32>>,
        labels: Vec<u32>,
        class_names: Vec<String>,
    ) -> Result<Self> {
        if inputs.is_empty() {
            return Err(Error::InvalidData(
                "a dataset needs at least one sequence".into(),
            ));
        }
        if labels.len() != inputs.len() {
            return Err(Error::InvalidData(format!(
                "{} sequences but {} labels",
                inputs.len(),
                labels.len()
            )));
        }
        if class_names.is_empty() {
            return Err(Error::InvalidData(
                "a dataset needs at least one class".into(),
            ));
        }
        let width = inputs[0].ncols();
        if width == 0 {
            return Err(Error::InvalidData(
                "sequences need at least one feature".into(),
            ));
        }
        for (i, x) in inputs.iter().enumerate() {
            if x.nrows() == 0 {
                return Err(Error::ZeroLengthSequence { index: i });
            }
            if x.ncols() != width {
                return Err(Error::InvalidData(format!(
                    "sequence {i} has {} features, sequence 0 has {width}",
                    x.ncols()
                )));
            }
            if let Some(((t, f), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("dataset sequence {i}"),
                    detail: format!("step {t}, feature {f} is {v}"),
                });
            }
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= class_names.len())
        {
            return Err(Error::InvalidData(format!(
                "label {l} of sequence {i} is out of range: there are {} classes",
                class_names.len()
            )));
        }
        Ok(Dataset {
            inputs,
            labels,
            class_names,
        })
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Always false: a dataset holds at least one sequence.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// The sequences, one `[len, features]` array each.
    pub fn inputs(&self) -> &[Array2<f32>] {
        &self.inputs
    }

    /// Class index of each sequence (into [`Dataset::class_names`]).
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The class names, in label order.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Feature width of every sequence.
    pub fn num_features(&self) -> usize {
        self.inputs[0].ncols()
    }

    /// Length (number of steps) of each sequence.
    pub fn lengths(&self) -> Vec<usize> {
        self.inputs.iter().map(|x| x.nrows()).collect()
    }

    /// Number of sequences of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The sequences at `indices` (in that order) as a batch for the last-step head:
    /// `Targets::Classes(vec![vec![label]; ..])`.
    pub fn batch(&self, indices: &[usize]) -> Result<SequenceBatch> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::InvalidData(format!(
                "sequence index {i} is out of range: the dataset has {} sequences",
                self.len()
            )));
        }
        let inputs = indices.iter().map(|&i| self.inputs[i].clone()).collect();
        let classes = indices.iter().map(|&i| vec![self.labels[i]]).collect();
        SequenceBatch::new(inputs, Targets::Classes(classes))
    }

    /// The sequences at `indices`, in that order, with the same class names (every
    /// index in range, at least one).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::InvalidData(format!(
                "sequence index {i} is out of range: the dataset has {} sequences",
                self.len()
            )));
        }
        Dataset::new(
            indices.iter().map(|&i| self.inputs[i].clone()).collect(),
            indices.iter().map(|&i| self.labels[i]).collect(),
            self.class_names.clone(),
        )
    }

    /// Splits off `fraction` of the sequences, class by class, for validation: returns
    /// `(rest, held_out)`, each in the dataset's order. `round(fraction · len)`
    /// sequences are held out, shared among the classes in proportion to their sizes
    /// (each class `floor(fraction · n)` of its `n`, the rest one each to the classes with
    /// the largest remainders, ties in a seeded order), never all of a class: every class
    /// keeps at least one sequence in `rest`. Which sequences of a class are held out is
    /// a shuffle seeded with `seed`. `fraction` must lie in (0, 1), and at least one
    /// sequence must be held out.
    pub fn stratified_split(&self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::InvalidConfig {
                what: "fraction held out for validation",
                expected: "above 0 and below 1",
                got: fraction.to_string(),
            });
        }
        // a stream of its own, not the batch loader's for the same seed
        let mut rng = SplitMix64::new(seed ^ 0xD1B5_4A32_D192_ED03);
        let counts = self.class_counts();
        let quota: Vec<f64> = counts.iter().map(|&n| fraction * n as f64).collect();
        let mut take: Vec<usize> = counts
            .iter()
            .zip(&quota)
            .map(|(&n, q)| (q.floor() as usize).min(n.saturating_sub(1)))
            .collect();
        let target = (fraction * self.len() as f64).round() as usize;
        let mut by_remainder: Vec<usize> = (0..counts.len()).collect();
        loader::shuffle(&mut by_remainder, &mut rng);
        // stable: equal remainders keep the shuffled order
        by_remainder.sort_by(|&a, &b| {
            (quota[b] - quota[b].floor()).total_cmp(&(quota[a] - quota[a].floor()))
        });
        for &k in &by_remainder {
            if take.iter().sum::<usize>() >= target {
                break;
            }
            if take[k] + 1 < counts[k] {
                take[k] += 1;
            }
        }
        let mut held = vec![false; self.len()];
        for (class, &take) in take.iter().enumerate() {
            let mut members: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] as usize == class)
                .collect();
            loader::shuffle(&mut members, &mut rng);
            for &i in &members[..take] {
                held[i] = true;
            }
        }
        let (held_out, rest): (Vec<usize>, Vec<usize>) = (0..self.len()).partition(|&i| held[i]);
        if held_out.is_empty() {
            return Err(Error::InvalidConfig {
                what: "fraction held out for validation",
                expected: "large enough to hold out a sequence (round(fraction · sequences))",
                got: format!(
                    "{fraction}, which holds out none of {} sequences in {} classes",
                    self.len(),
                    self.num_classes()
                ),
            });
        }
        Ok((self.subset(&rest)?, self.subset(&held_out)?))
    }
}

/// Per-feature mean and standard deviation, computed over every step of every sequence
/// of a (training) dataset; applying it maps each feature to `(x - mean) / std`.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    /// Per-feature mean of the training data.
    pub mean: Array1<f32>,
    /// Population standard deviation; a feature that is constant gets 1 so that it maps
    /// to 0 instead of dividing by zero.
    pub std: Array1<f32>,
}

impl Standardizer {
    /// Statistics of `train` (every valid step weighs the same), accumulated in f64.
    pub fn fit(train: &Dataset) -> Self {
        let width = train.num_features();
        let mut sum = Array1::<f64>::zeros(width);
        let mut sum_sq = Array1::<f64>::zeros(width);
        let mut count = 0usize;
        for x in train.inputs() {
            let x = x.mapv(f64::from);
            sum += &x.sum_axis(Axis(0));
            count += x.nrows();
        }
        let mean = sum / count as f64;
        for x in train.inputs() {
            let d = x.mapv(f64::from) - &mean;
            sum_sq += &(&d * &d).sum_axis(Axis(0));
        }
        let std = (sum_sq / count as f64).mapv(|v| {
            let s = v.sqrt();
            if s > 1e-12 {
                s
            } else {
                1.0
            }
        });
        Standardizer {
            mean: mean.mapv(|v| v as f32),
            std: std.mapv(|v| v as f32),
        }
    }

    /// `data` with every feature standardised; an error if the feature width differs.
    pub fn apply(&self, data: &Dataset) -> Result<Dataset> {
        if data.num_features() != self.mean.len() {
            return Err(Error::shape(
                "dataset feature width (standardiser)",
                self.mean.len(),
                data.num_features(),
            ));
        }
        let inputs = data
            .inputs()
            .iter()
            .map(|x| (x - &self.mean) / &self.std)
            .collect();
        Dataset::new(inputs, data.labels.clone(), data.class_names.clone())
    }
}

/// The predicted class (arg-max of the last-step outputs) of every sequence of `data`, in
/// dataset order, and the mean cross-entropy loss over the sequences. `rnn` must have the
/// last-step head.
pub fn predict(rnn: &mut Rnn, data: &Dataset, batch_size: usize) -> Result<(Vec<u32>, f32)> {
    if rnn.config().head != crate::Head::LastStep {
        return Err(Error::InvalidConfig {
            what: "head for classifying sequences",
            expected: "Head::LastStep",
            got: format!("{:?}", rnn.config().head),
        });
    }
    if batch_size == 0 {
        return Err(Error::InvalidConfig {
            what: "batch size",
            expected: "at least 1",
            got: "0".into(),
        });
    }
    let mut predictions = Vec::with_capacity(data.len());
    let mut loss_sum = 0.0f64;
    let all: Vec<usize> = (0..data.len()).collect();
    for chunk in all.chunks(batch_size) {
        let batch = data.batch(chunk)?;
        let out = rnn.forward(&batch)?;
        loss_sum += out.loss as f64 * chunk.len() as f64;
        for i in 0..chunk.len() {
            let row = out.outputs.index_axis(Axis(0), i);
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |m, (k, &v)| {
                        if v > m.1 {
                            (k, v)
                        } else {
                            m
                        }
                    },
                );
            predictions.push(best.0 as u32);
        }
    }
    Ok((predictions, (loss_sum / data.len() as f64) as f32))
}

/// Counts of (true class, predicted class) pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    /// `counts[truth][predicted]`.
    pub counts: Vec<Vec<usize>>,
}

impl ConfusionMatrix {
    /// From the true labels and the predictions of `num_classes` classes.
    pub fn new(truth: &[u32], predicted: &[u32], num_classes: usize) -> Result<Self> {
        if truth.len() != predicted.len() {
            return Err(Error::shape(
                "number of predictions",
                truth.len(),
                predicted.len(),
            ));
        }
        let mut counts = vec![vec![0; num_classes]; num_classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            if t as usize >= num_classes || p as usize >= num_classes {
                return Err(Error::InvalidData(format!(
                    "class {} is out of range: there are {num_classes} classes",
                    t.max(p)
                )));
            }
            counts[t as usize][p as usize] += 1;
        }
        Ok(ConfusionMatrix { counts })
    }

    /// Fraction of the diagonal (0 for no samples).
    pub fn accuracy(&self) -> f64 {
        let total: usize = self.counts.iter().flatten().sum();
        let right: usize = (0..self.counts.len()).map(|k| self.counts[k][k]).sum();
        if total == 0 {
            0.0
        } else {
            right as f64 / total as f64
        }
    }

    /// A table with one row per true class and one column per predicted class.
    pub fn render(&self, class_names: &[String]) -> String {
        let name = |k: usize| class_names.get(k).cloned().unwrap_or_else(|| k.to_string());
        let n = self.counts.len();
        let width = (0..n)
            .map(|k| name(k).len())
            .chain(self.counts.iter().flatten().map(|c| c.to_string().len()))
            .max()
            .unwrap_or(1)
            .max(3);
        let label_width = (0..n).map(|k| name(k).len()).max().unwrap_or(1).max(10);
        let mut s = format!("{:>label_width$} ", "true\\pred");
        for k in 0..n {
            s += &format!(" {:>width$}", name(k));
        }
        s.push('\n');
        for (k, row) in self.counts.iter().enumerate() {
            s += &format!("{:>label_width$} ", name(k));
            for c in row {
                s += &format!(" {c:>width$}");
            }
            s.push('\n');
        }
        s
    }
}
