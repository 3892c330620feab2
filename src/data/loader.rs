//! Minibatches of a [`Dataset`]: a fresh seeded shuffle each epoch, with sequences of
//! similar length grouped so that batches waste few steps on padding.
//!
//! An epoch's plan: shuffle all indices; cut them into pools of `pool_batches` batches;
//! sort each pool by length (stable, so ties keep the shuffled order) and cut it into
//! batches; then shuffle the order of all batches. Every sequence is in exactly one
//! batch; the last batch of the last pool may be smaller (it is kept). With
//! `pool_batches(1)` this is plain shuffling.

use super::Dataset;
use crate::rng::SplitMix64;
use crate::{Error, Result, SequenceBatch};

/// Default number of batches per length-sorting pool.
const DEFAULT_POOL: usize = 8;

/// Minibatches over a dataset, deterministic for a given seed and epoch.
#[derive(Clone, Debug)]
pub struct BatchLoader<'a> {
    dataset: &'a Dataset,
    batch_size: usize,
    pool_batches: usize,
    shuffle: bool,
    seed: u64,
}

impl<'a> BatchLoader<'a> {
    /// Batches of `batch_size` sequences (at least 1), pools of 8 batches, seed 0.
    pub fn new(dataset: &'a Dataset, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::InvalidConfig {
                what: "batch size",
                expected: "at least 1",
                got: "0".into(),
            });
        }
        Ok(BatchLoader {
            dataset,
            batch_size,
            pool_batches: DEFAULT_POOL,
            shuffle: true,
            seed: 0,
        })
    }

    /// The seed of the shuffles: epoch `e` of two loaders with the same seed, dataset
    /// and settings gives the same batches.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// How many batches form one length-sorting pool; 1 (or 0) turns grouping by length
    /// off. Larger pools give less padding and less randomness.
    pub fn pool_batches(mut self, n: usize) -> Self {
        self.pool_batches = n.max(1);
        self
    }

    /// With `false`, batches are consecutive runs of the dataset order (no shuffling, no
    /// grouping), the same every epoch: for evaluation.
    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// Sequences per minibatch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Number of batches per epoch (the last may be partial).
    pub fn num_batches(&self) -> usize {
        self.dataset.len().div_ceil(self.batch_size)
    }

    /// The dataset indices of every batch of epoch `epoch`, in the order they are served.
    pub fn plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        let n = self.dataset.len();
        let mut order: Vec<usize> = (0..n).collect();
        if !self.shuffle {
            return order
                .chunks(self.batch_size)
                .map(<[usize]>::to_vec)
                .collect();
        }
        let mut rng = SplitMix64::new(
            SplitMix64::new(self.seed).next_u64() ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407),
        );
        shuffle(&mut order, &mut rng);
        let mut batches: Vec<Vec<usize>> = Vec::with_capacity(self.num_batches());
        let lengths = self.dataset.lengths();
        // saturating: a pool larger than the dataset is the whole dataset
        for pool in order.chunks_mut(self.batch_size.saturating_mul(self.pool_batches)) {
            if self.pool_batches > 1 {
                pool.sort_by_key(|&i| lengths[i]);
            }
            batches.extend(pool.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        shuffle(&mut batches, &mut rng);
        batches
    }

    /// The batches of epoch `epoch`, as last-step-head [`SequenceBatch`]es.
    pub fn epoch(&self, epoch: u64) -> Epoch<'a> {
        Epoch {
            dataset: self.dataset,
            batches: self.plan(epoch).into_iter(),
        }
    }

    /// Fraction of padded positions in epoch `epoch`'s batches: see [`padding_fraction`].
    pub fn padding_fraction(&self, epoch: u64) -> f64 {
        padding_fraction(&self.dataset.lengths(), &self.plan(epoch))
    }
}

/// Padded positions over all positions of a padded layout:
/// `Σ_b Σ_{i∈b} (max_len_b − len_i) / Σ_b |b| · max_len_b`, where `max_len_b` is the
/// longest sequence of batch `b`. 0 when every batch holds sequences of one length.
pub fn padding_fraction(lengths: &[usize], batches: &[Vec<usize>]) -> f64 {
    let (mut padded, mut total) = (0usize, 0usize);
    for b in batches {
        let max = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        padded += b.iter().map(|&i| max - lengths[i]).sum::<usize>();
        total += max * b.len();
    }
    if total == 0 {
        0.0
    } else {
        padded as f64 / total as f64
    }
}

/// Fisher–Yates.
pub(super) fn shuffle<T>(v: &mut [T], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// The batches of one epoch.
#[derive(Debug)]
pub struct Epoch<'a> {
    dataset: &'a Dataset,
    batches: std::vec::IntoIter<Vec<usize>>,
}

impl Iterator for Epoch<'_> {
    type Item = Result<SequenceBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.batches.next().map(|b| self.dataset.batch(&b))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.batches.size_hint()
    }
}

impl ExactSizeIterator for Epoch<'_> {}
