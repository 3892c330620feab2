//! unfold's RNN as one part of a larger model: a bidirectional GRU encoder (`Head::None`)
//! under a head written here in plain ndarray — attention pooling over the encoder's
//! states, then a linear classifier — trained end to end on the bundled JapaneseVowels
//! (9 speakers, 7 to 29 steps of 12 features).
//!
//! Each step: `encode` hands out the states, the head computes its loss and the gradient
//! on those states by hand, `backward` turns that gradient into the encoder's parameter
//! gradients, and `apply_gradients` updates the encoder; the head updates itself.
//!
//! ```sh
//! cargo run --release --example encoder_classifier
//! ```

use unfold::data::{read_ts, BatchLoader, Dataset, Standardizer};
use unfold::ndarray::{s, Array1, Array2, Array3, Axis};
use unfold::rng::SplitMix64;
use unfold::{Cell, Device, Head, Optimizer, Rnn, RnnConfig, RnnParams, SequenceBatch, Targets};

const HIDDEN: usize = 32;
const EPOCHS: u64 = 30;
const BATCH: usize = 16;
const LR: f32 = 3e-3;

/// The head: a query vector `q` scores each step's state, the softmax of the scores over
/// the sequence's valid steps weighs the states into one vector, and `w`, `b` map it to
/// class logits.
struct AttentionHead {
    q: Array1<f32>,
    w: Array2<f32>,
    b: Array1<f32>,
    /// Adam's moments for `q`, `w`, `b` flattened in that order, and the step count.
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

/// What the forward pass keeps for the backward one, per sequence.
struct Pooled {
    weights: Vec<Array1<f32>>,
    pooled: Array2<f32>,
    probs: Array2<f32>,
}

impl AttentionHead {
    fn new(width: usize, classes: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let bound = 1.0 / (width as f32).sqrt();
        let mut u = || rng.uniform(-bound, bound);
        let n = width + classes * width + classes;
        AttentionHead {
            q: Array1::from_shape_simple_fn(width, &mut u),
            w: Array2::from_shape_simple_fn((classes, width), &mut u),
            b: Array1::zeros(classes),
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    fn forward(&self, states: &Array3<f32>, lengths: &[usize]) -> Pooled {
        let mut weights = Vec::with_capacity(lengths.len());
        let mut pooled = Array2::zeros((lengths.len(), self.q.len()));
        for (i, &len) in lengths.iter().enumerate() {
            let h = states.slice(s![i, ..len, ..]);
            let scores = h.dot(&self.q);
            let max = scores.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e = scores.mapv(|x| (x - max).exp());
            let a = &e / e.sum();
            pooled.row_mut(i).assign(&a.dot(&h));
            weights.push(a);
        }
        let logits = pooled.dot(&self.w.t()) + &self.b;
        let probs = softmax_rows(&logits);
        Pooled {
            weights,
            pooled,
            probs,
        }
    }

    /// Mean cross-entropy over the batch, the gradient on the encoder's states, and the
    /// head's update.
    fn backward_and_update(
        &mut self,
        states: &Array3<f32>,
        lengths: &[usize],
        labels: &[u32],
        f: &Pooled,
    ) -> (f32, Array3<f32>) {
        let n = lengths.len() as f32;
        let mut d_logits = f.probs.clone();
        let mut loss = 0.0;
        for (i, &y) in labels.iter().enumerate() {
            loss -= f.probs[[i, y as usize]].max(1e-12).ln() / n;
            d_logits[[i, y as usize]] -= 1.0;
        }
        d_logits /= n;
        let d_w = d_logits.t().dot(&f.pooled);
        let d_b = d_logits.sum_axis(Axis(0));
        let d_pooled = d_logits.dot(&self.w);
        let mut d_q = Array1::zeros(self.q.len());
        let mut d_states = Array3::zeros(states.raw_dim());
        for (i, &len) in lengths.iter().enumerate() {
            let h = states.slice(s![i, ..len, ..]);
            let a = &f.weights[i];
            let dp = d_pooled.row(i);
            // pooled = Σ a_t h_t, a = softmax(h q)
            let d_a = h.dot(&dp);
            let d_scores = a * &(&d_a - a.dot(&d_a));
            d_q += &h.t().dot(&d_scores);
            let mut dh = d_states.slice_mut(s![i, ..len, ..]);
            for t in 0..len {
                dh.row_mut(t).assign(&(&dp * a[t] + &self.q * d_scores[t]));
            }
        }
        let grads: Vec<f32> = d_q
            .iter()
            .chain(d_w.iter())
            .chain(d_b.iter())
            .copied()
            .collect();
        self.adam(&grads);
        (loss, d_states)
    }

    /// Adam on the head's parameters (betas 0.9, 0.999).
    fn adam(&mut self, grads: &[f32]) {
        self.t += 1;
        let (c1, c2) = (1.0 - 0.9f32.powi(self.t), 1.0 - 0.999f32.powi(self.t));
        let params = self
            .q
            .iter_mut()
            .chain(self.w.iter_mut())
            .chain(self.b.iter_mut());
        for (((p, &g), m), v) in params.zip(grads).zip(&mut self.m).zip(&mut self.v) {
            *m = 0.9 * *m + 0.1 * g;
            *v = 0.999 * *v + 0.001 * g * g;
            *p -= LR * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
        }
    }
}

fn softmax_rows(x: &Array2<f32>) -> Array2<f32> {
    let mut out = x.clone();
    for mut row in out.rows_mut() {
        let max = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row /= sum;
    }
    out
}

/// The classes predicted for every sequence of `data`.
fn predict(rnn: &mut Rnn, head: &AttentionHead, data: &Dataset) -> unfold::Result<Vec<u32>> {
    let batch = SequenceBatch::inputs_only(data.inputs().to_vec())?;
    let states = rnn.encode(&batch)?.states;
    let f = head.forward(&states, batch.lengths());
    Ok(f.probs
        .rows()
        .into_iter()
        .map(|p| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(k, _)| k as u32)
        })
        .collect())
}

fn main() -> unfold::Result<()> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/JapaneseVowels");
    let train = read_ts(format!("{dir}/JapaneseVowels_TRAIN.ts"))?;
    let test = read_ts(format!("{dir}/JapaneseVowels_TEST.ts"))?;
    let standardizer = Standardizer::fit(&train);
    let (train, test) = (standardizer.apply(&train)?, standardizer.apply(&test)?);

    let config = RnnConfig::new(train.num_features(), HIDDEN, 0)
        .cell(Cell::Gru)
        .bidirectional(true)
        .head(Head::None);
    let mut rnn = Rnn::new(config.clone(), RnnParams::init(&config, 1), &Device::cpu())?;
    let mut head = AttentionHead::new(config.state_width(), train.num_classes(), 2);
    let mut optimizer = Optimizer::adam(LR).clip_grad_norm(1.0);
    let loader = BatchLoader::new(&train, BATCH)?.seed(3);

    for epoch in 0..EPOCHS {
        let mut total = 0.0;
        for indices in loader.plan(epoch) {
            let batch = train.batch(&indices)?;
            let Some(Targets::Classes(classes)) = batch.targets() else {
                unreachable!("a dataset's batches carry one class per sequence")
            };
            let labels: Vec<u32> = classes.iter().map(|c| c[0]).collect();
            let states = rnn.encode(&batch)?.states;
            let pooled = head.forward(&states, batch.lengths());
            let (loss, grad_states) =
                head.backward_and_update(&states, batch.lengths(), &labels, &pooled);
            let grads = rnn.backward(&batch, &grad_states)?;
            rnn.apply_gradients(&grads.params, &mut optimizer)?;
            total += loss * indices.len() as f32;
        }
        if epoch % 5 == 4 || epoch + 1 == EPOCHS {
            let predicted = predict(&mut rnn, &head, &test)?;
            let right = predicted
                .iter()
                .zip(test.labels())
                .filter(|(a, b)| a == b)
                .count();
            println!(
                "epoch {:>2}: train loss {:.3}, test accuracy {:.3}",
                epoch + 1,
                total / train.len() as f32,
                right as f64 / test.len() as f64
            );
        }
    }
    Ok(())
}
