//! The anchor workloads of ARCHITECTURE.md, shared by `cargo bench`, `unfold bench` and the GPU
//! machine script, generated the way `torch_rnn_bench.py` generates its own: inputs
//! standard normal, classes uniform, and for variable length, lengths uniform in
//! `[T/2, T]` with the first sequence at `T`.

use crate::rng::SplitMix64;
use crate::{Head, RnnConfig, SequenceBatch, Targets};
use ndarray::Array2;

/// An Elman RNN + per-step linear readout + cross-entropy training problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The name used by the benches and the CLI.
    pub name: &'static str,
    /// Sequences per batch.
    pub batch: usize,
    /// Steps per sequence (the longest, for variable lengths).
    pub steps: usize,
    /// Input features.
    pub input: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Output classes.
    pub classes: usize,
}

/// latency, small, ref, large: the configurations of ARCHITECTURE.md's anchor table.
pub const ANCHORS: [Workload; 4] = [
    Workload {
        name: "latency",
        batch: 1,
        steps: 1000,
        input: 32,
        hidden: 64,
        classes: 32,
    },
    Workload {
        name: "small",
        batch: 16,
        steps: 128,
        input: 32,
        hidden: 128,
        classes: 32,
    },
    Workload {
        name: "ref",
        batch: 64,
        steps: 100,
        input: 128,
        hidden: 512,
        classes: 128,
    },
    Workload {
        name: "large",
        batch: 256,
        steps: 64,
        input: 512,
        hidden: 1024,
        classes: 512,
    },
];

impl Workload {
    /// The anchor of that name.
    pub fn named(name: &str) -> Option<Workload> {
        ANCHORS.iter().copied().find(|w| w.name == name)
    }

    /// An anchor by name, or any shape written `BxTxIxHxC` (batch, steps, input, hidden,
    /// classes; every size at least 1, e.g. `64x4096x128x512x128`), named `custom` unless
    /// it is an anchor's.
    pub fn parse(spec: &str) -> crate::Result<Workload> {
        let spec = spec.trim();
        if let Some(anchor) = Workload::named(spec) {
            return Ok(anchor);
        }
        match parse_sizes(spec).as_deref() {
            // an anchor's shape written out is that anchor
            Some(&[batch, steps, input, hidden, classes]) => Ok(ANCHORS
                .into_iter()
                .find(|a| a.sizes() == [batch, steps, input, hidden, classes])
                .unwrap_or(Workload {
                    name: "custom",
                    batch,
                    steps,
                    input,
                    hidden,
                    classes,
                })),
            _ => Err(crate::Error::InvalidConfig {
                what: "a workload",
                expected: "latency, small, ref, large, or BxTxIxHxC with every size at least 1",
                got: spec.to_string(),
            }),
        }
    }

    /// Batch, steps, input, hidden, classes.
    fn sizes(&self) -> [usize; 5] {
        [
            self.batch,
            self.steps,
            self.input,
            self.hidden,
            self.classes,
        ]
    }

    /// The anchor's name, or `BxTxIxHxC` for any other shape.
    pub fn label(&self) -> String {
        if self.name != "custom" {
            return self.name.to_string();
        }
        self.sizes().map(|n| n.to_string()).join("x")
    }

    /// The model of this workload: one tanh layer, per-step head.
    pub fn config(&self) -> RnnConfig {
        RnnConfig::new(self.input, self.hidden, self.classes)
    }

    /// One minibatch: fixed length `T`, or lengths uniform in `[T/2, T]`.
    pub fn batch(&self, variable: bool, seed: u64) -> SequenceBatch {
        let mut rng = SplitMix64::new(seed);
        let t = self.steps;
        let lengths: Vec<usize> = (0..self.batch)
            .map(|i| {
                if variable && i > 0 {
                    t / 2 + rng.below(t - t / 2 + 1)
                } else {
                    t
                }
            })
            .collect();
        let inputs = lengths
            .iter()
            .map(|&len| Array2::from_shape_simple_fn((len, self.input), || rng.normal()))
            .collect();
        let classes = lengths
            .iter()
            .map(|&len| (0..len).map(|_| rng.below(self.classes) as u32).collect())
            .collect();
        SequenceBatch::new(inputs, Targets::Classes(classes)).expect("generated batches are valid")
    }

    /// Floating-point operations of one training step on `tokens` valid positions
    /// (forward and backward products; element-wise work not counted).
    pub fn train_flops(&self, tokens: usize) -> u64 {
        let per_token =
            self.input * self.hidden + self.hidden * self.hidden + self.hidden * self.classes;
        // forward 2 flops per multiply-add; backward twice the forward
        6 * (tokens * per_token) as u64
    }
}

/// A batch of random sequences of the given lengths for `config`: standard normal inputs,
/// and uniform classes or standard normal values as targets, shaped for its head.
pub fn random_batch(
    config: &RnnConfig,
    lengths: &[usize],
    values: bool,
    rng: &mut SplitMix64,
) -> crate::Result<SequenceBatch> {
    let inputs = lengths
        .iter()
        .map(|&len| Array2::from_shape_simple_fn((len, config.input_size), || rng.normal()))
        .collect();
    if config.head == Head::None {
        // an encoder has no readout, so nothing to aim at
        return SequenceBatch::inputs_only(inputs);
    }
    let rows = |len: usize| if config.head == Head::PerStep { len } else { 1 };
    let targets = if values {
        Targets::Values(
            lengths
                .iter()
                .map(|&len| {
                    Array2::from_shape_simple_fn((rows(len), config.output_size), || rng.normal())
                })
                .collect(),
        )
    } else {
        Targets::Classes(
            lengths
                .iter()
                .map(|&len| {
                    (0..rows(len))
                        .map(|_| rng.below(config.output_size) as u32)
                        .collect()
                })
                .collect(),
        )
    };
    SequenceBatch::new(inputs, targets)
}

/// Deterministic operands for an `m × k` by `k × n` product (values in [-0.5, 0.5)), as
/// `unfold bench --matmul` and `cargo bench`'s matmul group use them.
pub fn matmul_operands(m: usize, n: usize, k: usize) -> (Array2<f32>, Array2<f32>) {
    let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 13) as f32 / 13.0 - 0.5);
    let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 11) % 17) as f32 / 17.0 - 0.5);
    (a, b)
}

/// Matrix-product shapes written `MxNxK,MxNxK,…` (as `unfold bench --matmul` and
/// `UNFOLD_BENCH_MATMUL` take them): `(m, n, k)` for an `m × k` by `k × n` product.
pub fn parse_matmul_shapes(list: &str) -> crate::Result<Vec<(usize, usize, usize)>> {
    list.split(',')
        .map(|s| {
            let bad = || crate::Error::InvalidConfig {
                what: "a matrix-product shape",
                expected: "MxNxK with every size at least 1, e.g. 4096x4096x4096",
                got: s.to_string(),
            };
            match parse_sizes(s.trim()).as_deref() {
                Some(&[m, n, k]) => Ok((m, n, k)),
                _ => Err(bad()),
            }
        })
        .collect()
}

/// Sizes written `AxBx…`, every one at least 1; `None` if any is not.
fn parse_sizes(spec: &str) -> Option<Vec<usize>> {
    spec.split('x')
        .map(|d| d.parse().ok().filter(|&n: &usize| n > 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_shapes_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_matmul_shapes("64x512x512, 1x2x3").unwrap(),
            vec![(64, 512, 512), (1, 2, 3)]
        );
        for bad in ["", "64x512", "0x1x1", "1x1x1x1", "axbxc", "4096x4096x4096,"] {
            assert!(parse_matmul_shapes(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn workloads_parse_by_name_or_shape_and_bad_ones_are_refused() {
        assert_eq!(
            Workload::parse(" ref ").unwrap(),
            Workload::named("ref").unwrap()
        );
        let w = Workload::parse("64x4096x128x512x128").unwrap();
        assert_eq!(
            (w.batch, w.steps, w.input, w.hidden, w.classes),
            (64, 4096, 128, 512, 128)
        );
        assert_eq!(w.label(), "64x4096x128x512x128");
        assert_eq!(Workload::named("large").unwrap().label(), "large");
        assert_eq!(
            Workload::parse("64x100x128x512x128").unwrap().label(),
            "ref"
        );
        for bad in [
            "",
            "huge",
            "64x100x128x512",
            "64x100x128x0x128",
            "1x1x1x1x1x1",
            "ax1x1x1x1",
        ] {
            assert!(Workload::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
