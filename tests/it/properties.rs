//! Properties of the whole public API on any input: configs of every cell, head,
//! direction count and dropout (in range and out), sizes 0..4 and 0..3 layers; parameters
//! of any shape, in any memory layout (row-major, column-major, reversed axes, strided and
//! negatively strided owned arrays), with NaN, infinite, subnormal and huge values;
//! batches of any shape (empty, zero-length sequences, ragged widths, NaN inputs, classes
//! and tokens out of range, value targets of the wrong width, no targets); initial
//! states, state gradients and optimizers of any shape and value. `Rnn::new`, `forward`,
//! `loss_and_gradients`, `train_step`, `encode`, `backward`, `apply_gradients`, `save`
//! and `load` give `Ok` or a clear `Err`, never a panic; where they give `Ok`, the shapes
//! are the documented ones, the results finite for moderate finite inputs, and a
//! checkpoint loads back bit for bit. The GPU path (when there is an adapter) gets a few
//! tiny cases (`UNFOLD_GPU_PROPERTY_CASES`, 6 by default): it runs them, with the CPU's
//! loss, or refuses them with an `Err`. `PROPTEST_CASES=N` runs more CPU cases, and
//! `PROPTEST_RNG_SEED=N` repeats a run (each run draws new cases; a failure prints the
//! smallest input it found).

use crate::common;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::PathBuf;
use unfold::ndarray::{s, Array1, Array2, Array3, Axis, ShapeBuilder};
use unfold::rng::SplitMix64;
use unfold::{
    Cell, Device, Error, Head, LayerParams, Optimizer, OptimizerState, Rnn, RnnConfig, RnnParams,
    RnnState, SequenceBatch, Targets,
};

/// `n` cases, unless `PROPTEST_CASES` says otherwise.
fn cases(n: u32) -> Config {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    }
}

// ------------------------------------------------------------------ generators

/// How an array's elements lie in memory.
#[derive(Clone, Copy, Debug)]
enum Layout {
    Standard,
    /// Column-major (`ShapeBuilder::f`).
    ColumnMajor,
    /// A transposed standard array with its axes reversed back.
    Reversed,
    /// Every other row of a larger owned array whose skipped rows hold NaN: only a
    /// reader that ignores the strides sees them.
    Strided,
    /// Rows in memory in reverse order (a negative stride).
    Inverted,
}

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![
        4 => Just(Layout::Standard),
        1 => Just(Layout::ColumnMajor),
        1 => Just(Layout::Reversed),
        1 => Just(Layout::Strided),
        1 => Just(Layout::Inverted),
    ]
}

/// Whether two sequences of floats are the same bit for bit (NaN included).
fn same_bits<'a>(a: impl Iterator<Item = &'a f32>, b: impl Iterator<Item = &'a f32>) -> bool {
    a.map(|v| v.to_bits()).eq(b.map(|v| v.to_bits()))
}

/// `a` with the same elements in `layout`.
fn lay2(a: Array2<f32>, layout: Layout) -> Array2<f32> {
    let (r, c) = a.dim();
    let out = match layout {
        Layout::Standard => a.clone(),
        Layout::ColumnMajor => {
            let mut b = Array2::zeros((r, c).f());
            b.assign(&a);
            b
        }
        Layout::Reversed => a.t().as_standard_layout().into_owned().reversed_axes(),
        Layout::Strided => {
            let mut big = Array2::from_elem((2 * r, c + 1), f32::NAN);
            big.slice_mut(s![..;2, ..c]).assign(&a);
            big.slice_move(s![..;2, ..c])
        }
        Layout::Inverted => {
            let mut b = a.slice(s![..;-1, ..]).to_owned();
            b.invert_axis(Axis(0));
            b
        }
    };
    assert!(
        same_bits(out.iter(), a.iter()),
        "layout {layout:?} changed the array"
    );
    out
}

fn lay1(a: Array1<f32>, layout: Layout) -> Array1<f32> {
    let n = a.len();
    let out = match layout {
        Layout::Standard | Layout::ColumnMajor | Layout::Reversed => a.clone(),
        Layout::Strided => {
            let mut big = Array1::from_elem(2 * n, f32::NAN);
            big.slice_mut(s![..;2]).assign(&a);
            big.slice_move(s![..;2])
        }
        Layout::Inverted => {
            let mut b = a.slice(s![..;-1]).to_owned();
            b.invert_axis(Axis(0));
            b
        }
    };
    assert!(
        same_bits(out.iter(), a.iter()),
        "layout {layout:?} changed the array"
    );
    out
}

fn lay3(a: Array3<f32>, layout: Layout) -> Array3<f32> {
    match layout {
        Layout::Standard => a,
        Layout::ColumnMajor | Layout::Reversed => {
            let mut b = Array3::zeros(a.dim().f());
            b.assign(&a);
            b
        }
        Layout::Strided => {
            let (x, y, z) = a.dim();
            let mut big = Array3::from_elem((x, 2 * y, z), f32::NAN);
            big.slice_mut(s![.., ..;2, ..]).assign(&a);
            big.slice_move(s![.., ..;2, ..])
        }
        Layout::Inverted => {
            let mut b = a.slice(s![.., ..;-1, ..]).to_owned();
            b.invert_axis(Axis(1));
            b
        }
    }
}

/// Which values fill an array.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Values {
    /// Uniform in [-1, 1): finite results are expected.
    Moderate,
    /// Moderate with zeros, negative zeros and subnormals mixed in.
    Tiny,
    /// Moderate with huge finite values mixed in.
    Huge,
    /// Moderate with one NaN or infinity.
    NonFinite,
}

fn values() -> impl Strategy<Value = Values> {
    prop_oneof![
        12 => Just(Values::Moderate),
        1 => Just(Values::Tiny),
        1 => Just(Values::Huge),
        1 => Just(Values::NonFinite),
    ]
}

/// Fills `n` values of the kind `v` from `rng`.
fn fill(n: usize, v: Values, rng: &mut SplitMix64) -> Vec<f32> {
    let mut out: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let specials: &[f32] = match v {
        Values::Moderate => &[],
        Values::Tiny => &[0.0, -0.0, 1e-40, -1e-45, f32::MIN_POSITIVE],
        Values::Huge => &[1e30, -1e30, f32::MAX, f32::MIN, 3e38],
        Values::NonFinite => &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY],
    };
    if !specials.is_empty() && n > 0 {
        let count = if v == Values::NonFinite { 1 } else { 1 + n / 3 };
        for _ in 0..count {
            let at = rng.below(n);
            out[at] = specials[rng.below(specials.len())];
        }
    }
    out
}

fn array2(shape: (usize, usize), v: Values, layout: Layout, rng: &mut SplitMix64) -> Array2<f32> {
    let a = Array2::from_shape_vec(shape, fill(shape.0 * shape.1, v, rng)).unwrap();
    lay2(a, layout)
}

fn array1(n: usize, v: Values, layout: Layout, rng: &mut SplitMix64) -> Array1<f32> {
    lay1(Array1::from_vec(fill(n, v, rng)), layout)
}

/// A size, rarely 0.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 24 => 1usize..4]
}

fn config() -> impl Strategy<Value = RnnConfig> {
    (
        (size(), size(), size()),
        prop_oneof![1 => Just(0usize), 16 => 1usize..3, 3 => Just(3usize)],
        prop::sample::select(vec![Cell::Tanh, Cell::Relu, Cell::Lstm, Cell::Gru]),
        prop_oneof![
            3 => Just(Head::PerStep),
            2 => Just(Head::LastStep),
            2 => Just(Head::None),
        ],
        any::<bool>(),
        prop_oneof![
            12 => Just(0.0f32),
            4 => prop::sample::select(vec![0.3f32, 0.99, -0.0]),
            1 => prop::sample::select(vec![1.0f32, -0.1, f32::NAN, f32::INFINITY]),
        ],
        // before the readout
        prop_oneof![
            12 => Just(0.0f32),
            4 => prop::sample::select(vec![0.2f32, 0.99]),
            1 => prop::sample::select(vec![1.0f32, -0.5, f32::NAN]),
        ],
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |((i, h, o), layers, cell, head, bi, dropout, output_dropout, encoder_outputs)| {
                // an encoder has no outputs; a config written by hand may say otherwise
                let o = if head == Head::None && !encoder_outputs {
                    0
                } else {
                    o
                };
                RnnConfig {
                    input_size: i,
                    hidden_size: h,
                    output_size: o,
                    num_layers: layers,
                    cell,
                    head,
                    bidirectional: bi,
                    dropout,
                    output_dropout,
                }
            },
        )
}

/// How the parameters relate to the config.
#[derive(Clone, Debug)]
enum ParamShapes {
    /// Exactly the config's shapes.
    Exact,
    /// One tensor (`index` modulo the number of tensors) gets another shape.
    OneWrong {
        index: usize,
        rows: usize,
        cols: usize,
    },
    /// A layer too few or too many.
    LayerCount(bool),
    /// Every tensor an arbitrary shape, any number of layers.
    Arbitrary { layers: usize, seed: u64 },
}

fn param_shapes() -> impl Strategy<Value = ParamShapes> {
    prop_oneof![
        40 => Just(ParamShapes::Exact),
        2 => (any::<usize>(), 0usize..5, 0usize..5)
            .prop_map(|(index, rows, cols)| ParamShapes::OneWrong { index, rows, cols }),
        1 => any::<bool>().prop_map(ParamShapes::LayerCount),
        1 => (0usize..5, any::<u64>()).prop_map(|(layers, seed)| ParamShapes::Arbitrary { layers, seed }),
    ]
}

#[derive(Clone, Debug)]
struct ParamSpec {
    shapes: ParamShapes,
    values: Values,
    layouts: [Layout; 4],
    seed: u64,
}

fn param_spec() -> impl Strategy<Value = ParamSpec> {
    (
        param_shapes(),
        values(),
        prop::array::uniform4(layout()),
        any::<u64>(),
    )
        .prop_map(|(shapes, values, layouts, seed)| ParamSpec {
            shapes,
            values,
            layouts,
            seed,
        })
}

/// The shapes of every tensor, in the order of `RnnParams::tensors` (a vector's second
/// dimension is unused).
fn shapes_for(config: &RnnConfig, spec: &ParamShapes) -> Vec<(usize, usize)> {
    let zeros = RnnParams::<f32>::zeros(config);
    let mut shapes: Vec<(usize, usize)> = Vec::new();
    for l in &zeros.layers {
        shapes.extend([
            l.w_ih.dim(),
            l.w_hh.dim(),
            (l.b_ih.len(), 0),
            (l.b_hh.len(), 0),
        ]);
    }
    shapes.extend([zeros.w_out.dim(), (zeros.b_out.len(), 0)]);
    match *spec {
        ParamShapes::Exact => {}
        ParamShapes::OneWrong { index, rows, cols } => {
            let n = shapes.len();
            shapes[index % n] = (rows, cols);
        }
        ParamShapes::LayerCount(more) => {
            let out = shapes.split_off(shapes.len() - 2);
            if more {
                let extra = shapes
                    .get(..4)
                    .map(<[_]>::to_vec)
                    .unwrap_or_else(|| vec![(1, 1), (1, 1), (1, 0), (1, 0)]);
                shapes.extend(extra);
            } else {
                shapes.truncate(shapes.len().saturating_sub(4));
            }
            shapes.extend(out);
        }
        ParamShapes::Arbitrary { layers, seed } => {
            let mut rng = SplitMix64::new(seed);
            shapes = (0..4 * layers + 2)
                .map(|_| (rng.below(5), rng.below(5)))
                .collect();
        }
    }
    shapes
}

fn make_params(config: &RnnConfig, spec: &ParamSpec) -> RnnParams {
    let shapes = shapes_for(config, &spec.shapes);
    let mut rng = SplitMix64::new(spec.seed);
    let [l2, l1, l2b, l1b] = spec.layouts;
    let v = spec.values;
    let (layer_shapes, out_shapes) = shapes.split_at(shapes.len() - 2);
    let layers = layer_shapes
        .chunks(4)
        .map(|c| LayerParams {
            w_ih: array2(c[0], v, l2, &mut rng),
            w_hh: array2(c[1], v, l2b, &mut rng),
            b_ih: array1(c[2].0, v, l1, &mut rng),
            b_hh: array1(c[3].0, v, l1b, &mut rng),
        })
        .collect();
    RnnParams {
        layers,
        w_out: array2(out_shapes[0], v, l2, &mut rng),
        b_out: array1(out_shapes[1].0, v, l1, &mut rng),
    }
}

/// What the targets of a batch are: one per step for the per-step head, else one per
/// sequence (unless `BatchSpec::other_head`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum TargetKind {
    None,
    Classes,
    Values,
}

fn target_kind() -> impl Strategy<Value = TargetKind> {
    prop_oneof![
        1 => Just(TargetKind::None),
        4 => Just(TargetKind::Classes),
        2 => Just(TargetKind::Values),
    ]
}

/// A batch described by parts, each of which may be wrong.
#[derive(Clone, Debug)]
struct BatchSpec {
    tokens: bool,
    lengths: Vec<usize>,
    /// The feature width (or vocabulary size) differs from the config's by this.
    width_off: usize,
    /// One sequence (index modulo the count) one feature wider.
    ragged: Option<usize>,
    values: Values,
    layout: Layout,
    targets: TargetKind,
    /// Targets shaped for the other head (per step instead of per sequence, or back).
    other_head: bool,
    /// Classes or tokens up to this many past the range.
    out_of_range: u32,
    /// Value targets this much wider.
    target_width_off: usize,
    /// One target sequence (index modulo the count) of the wrong length.
    target_rows_wrong: Option<usize>,
    /// A target sequence too few.
    target_missing: bool,
    target_values: Values,
    seed: u64,
}

fn batch_spec() -> impl Strategy<Value = BatchSpec> {
    (
        (
            prop::bool::weighted(0.25),
            prop_oneof![
                1 => Just(vec![]),
                30 => prop::collection::vec(prop_oneof![1 => Just(0usize), 30 => 1usize..5], 1..4),
            ],
            prop_oneof![20 => Just(0usize), 1 => 1usize..3],
            prop::option::weighted(0.04, any::<usize>()),
            values(),
            layout(),
        ),
        (
            (target_kind(), prop::bool::weighted(0.08)),
            prop_oneof![30 => Just(0u32), 1 => 1u32..3, 1 => Just(u32::MAX)],
            prop_oneof![20 => Just(0usize), 1 => 1usize..3],
            prop::option::weighted(0.04, any::<usize>()),
            prop::bool::weighted(0.03),
            prop_oneof![12 => Just(Values::Moderate), 1 => values()],
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (tokens, lengths, width_off, ragged, values, layout),
                (
                    (targets, other_head),
                    out_of_range,
                    target_width_off,
                    target_rows_wrong,
                    target_missing,
                    target_values,
                    seed,
                ),
            )| BatchSpec {
                tokens,
                lengths,
                width_off,
                ragged,
                values,
                layout,
                targets,
                other_head,
                out_of_range,
                target_width_off,
                target_rows_wrong,
                target_missing,
                target_values,
                seed,
            },
        )
}

/// The batch `spec` describes for `config`, through the constructor that fits it.
fn make_batch(config: &RnnConfig, spec: &BatchSpec) -> unfold::Result<SequenceBatch> {
    let mut rng = SplitMix64::new(spec.seed);
    let width = config.input_size + spec.width_off;
    let outputs = config.output_size.max(1);
    let n = spec.lengths.len();
    let ragged = spec.ragged.map(|r| r % n.max(1));
    let class = |rng: &mut SplitMix64| -> u32 {
        let c = rng.below(outputs) as u32;
        if spec.out_of_range > 0 && rng.below(3) == 0 {
            (config.output_size as u32).saturating_add(spec.out_of_range - 1)
        } else {
            c
        }
    };
    let per_step = (config.head == Head::PerStep) != spec.other_head;
    let mut rows: Vec<usize> = spec
        .lengths
        .iter()
        .map(|&len| if per_step { len } else { 1 })
        .collect();
    if let Some(k) = spec.target_rows_wrong {
        if n > 0 {
            rows[k % n] += 1 + k % 2;
        }
    }
    if spec.target_missing {
        rows.pop();
    }
    let targets = match spec.targets {
        TargetKind::None => None,
        TargetKind::Classes => Some(Targets::Classes(
            rows.iter()
                .map(|&r| (0..r).map(|_| class(&mut rng)).collect())
                .collect(),
        )),
        TargetKind::Values => {
            let w = config.output_size + spec.target_width_off;
            Some(Targets::Values(
                rows.iter()
                    .map(|&r| array2((r, w), spec.target_values, spec.layout, &mut rng))
                    .collect(),
            ))
        }
    };
    if spec.tokens {
        let vocab = width;
        let ids: Vec<Vec<u32>> = spec
            .lengths
            .iter()
            .map(|&len| {
                (0..len)
                    .map(|_| {
                        if spec.out_of_range > 0 && rng.below(4) == 0 {
                            (vocab as u32).saturating_add(spec.out_of_range - 1)
                        } else {
                            rng.below(vocab.max(1)) as u32
                        }
                    })
                    .collect()
            })
            .collect();
        match targets {
            Some(t) => SequenceBatch::from_tokens(ids, vocab, t),
            None => SequenceBatch::tokens_only(ids, vocab),
        }
    } else {
        let inputs: Vec<Array2<f32>> = spec
            .lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let w = width + (ragged == Some(i)) as usize;
                array2((len, w), spec.values, spec.layout, &mut rng)
            })
            .collect();
        match targets {
            Some(t) => SequenceBatch::new(inputs, t),
            None => SequenceBatch::inputs_only(inputs),
        }
    }
}

/// How an imported optimizer state names the parameters it is for.
#[derive(Clone, Copy, Debug)]
enum StateLayout {
    /// Not at all (only the moments' length is checked).
    Unnamed,
    /// The model's own tensors.
    Own,
    /// Those of a model one hidden unit wider.
    Other,
}

/// An optimizer, possibly with bad hyper-parameters or a state of another model.
#[derive(Clone, Debug)]
struct OptimizerSpec {
    /// SGD, momentum 0.9, momentum 1.5 (out of range), Adam, AdamW.
    rule: u8,
    lr: f32,
    /// AdamW's weight decay.
    weight_decay: f32,
    clip: Option<f32>,
    /// A state to import: (steps, m length offset, v length offset, layout).
    state: Option<(u64, usize, usize, StateLayout)>,
}

fn optimizer_spec() -> impl Strategy<Value = OptimizerSpec> {
    (
        prop_oneof![10 => prop::sample::select(vec![0u8, 1, 3, 4]), 1 => Just(2u8)],
        prop_oneof![12 => Just(0.05f32), 1 => prop::sample::select(vec![0.0f32, -1.0, f32::NAN, f32::INFINITY, 1e30])],
        prop_oneof![6 => Just(0.01f32), 1 => prop::sample::select(vec![0.0f32, -1.0, f32::NAN, 1e30])],
        prop_oneof![
            12 => Just(None),
            4 => Just(Some(1.0f32)),
            1 => prop::sample::select(vec![Some(0.0f32), Some(-1.0), Some(f32::NAN)]),
        ],
        prop::option::weighted(
            0.15,
            (
                prop::sample::select(vec![0u64, 1, 1 << 31, (1 << 32) - 1, 1 << 32, u64::MAX - 1, u64::MAX]),
                prop_oneof![3 => Just(0usize), 1 => 1usize..3],
                prop_oneof![3 => Just(0usize), 1 => 1usize..3],
                prop::sample::select(vec![StateLayout::Unnamed, StateLayout::Own, StateLayout::Other]),
            ),
        ),
    )
        .prop_map(|(rule, lr, weight_decay, clip, state)| OptimizerSpec {
            rule,
            lr,
            weight_decay,
            clip,
            state,
        })
}

fn make_optimizer(spec: &OptimizerSpec, config: &RnnConfig) -> Optimizer {
    let mut opt = match spec.rule {
        0 => Optimizer::sgd(spec.lr),
        1 => Optimizer::sgd_momentum(spec.lr, 0.9),
        2 => Optimizer::sgd_momentum(spec.lr, 1.5),
        3 => Optimizer::adam(spec.lr),
        _ => Optimizer::adamw(spec.lr, spec.weight_decay),
    };
    if let Some(c) = spec.clip {
        opt = opt.clip_grad_norm(c);
    }
    if let Some((steps, dm, dv, layout)) = spec.state {
        let num_params = config.num_params();
        let v_len = if spec.rule >= 3 { num_params } else { 0 };
        let layout = match layout {
            StateLayout::Unnamed => Vec::new(),
            StateLayout::Own => config.param_layout(),
            StateLayout::Other => RnnConfig {
                hidden_size: config.hidden_size + 1,
                ..config.clone()
            }
            .param_layout(),
        };
        let state = OptimizerState {
            layout,
            steps,
            m: vec![0.01; num_params + dm],
            v: vec![0.01; v_len + dv],
        };
        opt.import_state(state).unwrap();
    }
    opt
}

/// Initial states and the gradient on the encoder's states: right or wrong shapes.
#[derive(Clone, Debug)]
struct ExtraSpec {
    /// `None`: no initial state; `Some(off)`: one whose batch dimension is off by `off`.
    initial: Option<usize>,
    /// Give an LSTM's initial state no `c`, or another cell's one.
    flip_c: bool,
    initial_values: Values,
    /// The gradient on the states: its batch dimension off by this.
    grad_off: usize,
    grad_values: Values,
    layout: Layout,
    /// Gradients for `apply_gradients` when the backward pass gave none.
    grads: ParamSpec,
    /// `encode` as a training pass (dropout between layers), with this dropout seed.
    training: Option<u64>,
    seed: u64,
}

fn extra_spec() -> impl Strategy<Value = ExtraSpec> {
    (
        prop::option::weighted(0.4, prop_oneof![4 => Just(0usize), 1 => 1usize..3]),
        prop::bool::weighted(0.1),
        prop_oneof![6 => Just(Values::Moderate), 1 => values()],
        prop_oneof![8 => Just(0usize), 1 => 1usize..3],
        prop_oneof![6 => Just(Values::Moderate), 1 => values()],
        layout(),
        param_spec(),
        prop::option::weighted(0.3, any::<u64>()),
        any::<u64>(),
    )
        .prop_map(
            |(
                initial,
                flip_c,
                initial_values,
                grad_off,
                grad_values,
                layout,
                grads,
                training,
                seed,
            )| {
                ExtraSpec {
                    initial,
                    flip_c,
                    initial_values,
                    grad_off,
                    grad_values,
                    layout,
                    grads,
                    training,
                    seed,
                }
            },
        )
}

fn array3(
    shape: (usize, usize, usize),
    v: Values,
    layout: Layout,
    rng: &mut SplitMix64,
) -> Array3<f32> {
    let a = Array3::from_shape_vec(shape, fill(shape.0 * shape.1 * shape.2, v, rng)).unwrap();
    lay3(a, layout)
}

// ------------------------------------------------------------------- the checks

/// Every value of `p` finite.
fn finite_params(p: &RnnParams) -> bool {
    p.layers.iter().all(|l| {
        l.w_ih
            .iter()
            .chain(&l.w_hh)
            .chain(&l.b_ih)
            .chain(&l.b_hh)
            .all(|v| v.is_finite())
    }) && p.w_out.iter().chain(&p.b_out).all(|v| v.is_finite())
}

/// A file of this process and thread: the CPU and GPU properties run side by side.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("properties");
    std::fs::create_dir_all(&dir).unwrap();
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    dir.join(format!("{}-{thread}-{name}", std::process::id()))
}

/// An error must say something.
fn clear(e: &Error) -> Result<(), TestCaseError> {
    prop_assert!(
        !e.to_string().trim().is_empty(),
        "an error without a message: {e:?}"
    );
    Ok(())
}

/// Checks an outcome: `expected` says whether the CPU path must give `Ok`; the GPU path
/// may also refuse what it does not offer yet, or what exceeds the adapter's limits.
fn outcome<T>(
    what: &str,
    r: &unfold::Result<T>,
    expected: bool,
    gpu: bool,
) -> Result<(), TestCaseError> {
    match r {
        Ok(_) => prop_assert!(expected, "{} accepted an input it must refuse", what),
        Err(e) => {
            clear(e)?;
            let gpu_refusal =
                gpu && matches!(e, Error::Unsupported(_) | Error::ExceedsDeviceLimit { .. });
            prop_assert!(
                !expected || gpu_refusal,
                "{} refused a good input: {}",
                what,
                e
            );
        }
    }
    Ok(())
}

/// Runs every operation of the API on one generated input and checks each outcome.
#[allow(clippy::too_many_arguments)]
fn check_model(
    device: &Device,
    config: &RnnConfig,
    pspec: &ParamSpec,
    bspec: &BatchSpec,
    ospec: &OptimizerSpec,
    xspec: &ExtraSpec,
) -> Result<(), TestCaseError> {
    let params = make_params(config, pspec);
    let gpu = device.is_gpu();

    // checkpoints of any parameters: saved or refused (never with a non-finite value,
    // which no load would accept); what is saved loads back exactly
    let path = scratch("any.safetensors");
    match params.save(&path) {
        Ok(()) => {
            prop_assert!(!params.layers.is_empty());
            prop_assert!(finite_params(&params), "save wrote non-finite parameters");
            match RnnParams::load(&path) {
                Ok(back) => prop_assert!(
                    back.to_flat().iter().map(|v| v.to_bits()).eq(params
                        .clone()
                        .into_standard_layout()
                        .to_flat()
                        .iter()
                        .map(|v| v.to_bits())),
                    "RnnParams::save then load changed the parameters"
                ),
                Err(e) => prop_assert!(
                    !finite_params(&params),
                    "saved finite parameters do not load: {e}"
                ),
            }
        }
        Err(e) => clear(&e)?,
    }
    let fits = params.validate_shapes_ok(config) && finite_params(&params);
    match params.save_for(config, &path) {
        Ok(()) => prop_assert!(fits, "save_for wrote parameters that do not fit"),
        Err(e) => {
            clear(&e)?;
            prop_assert!(!fits, "save_for refused fitting parameters: {e}");
        }
    }

    let valid = params.validate(config);
    let mut rnn = match Rnn::new(config.clone(), params.clone(), device) {
        Ok(r) => {
            prop_assert!(
                valid.is_ok(),
                "Rnn::new accepted parameters validate refuses"
            );
            r
        }
        Err(e) => {
            clear(&e)?;
            prop_assert!(
                valid.is_err()
                    || (gpu
                        && matches!(e, Error::Unsupported(_) | Error::ExceedsDeviceLimit { .. })),
                "Rnn::new refused valid parameters: {e}"
            );
            return Ok(());
        }
    };
    // from here on: a valid config and finite parameters
    prop_assert_eq!(config.num_params(), params.len());
    let moderate_params = pspec.values == Values::Moderate;
    let (units, h, sw) = (config.num_units(), config.hidden_size, config.state_width());

    let batch = match make_batch(config, bspec) {
        Ok(b) => b,
        Err(e) => {
            clear(&e)?;
            let expected_refusal = bspec.lengths.is_empty()
                || bspec.lengths.contains(&0)
                || bspec.ragged.is_some()
                || bspec.values == Values::NonFinite
                || bspec.target_missing
                || bspec.target_rows_wrong.is_some()
                || bspec.out_of_range > 0
                || bspec.target_values == Values::NonFinite
                || (bspec.tokens && config.input_size + bspec.width_off == 0);
            prop_assert!(expected_refusal, "a well-formed batch was refused: {e}");
            return Ok(());
        }
    };
    let b = batch.len();
    let t_max = batch.max_len();
    let fits = batch.check_against(config).is_ok();
    let moderate_batch = bspec.values == Values::Moderate
        && bspec.target_values == Values::Moderate
        && batch.targets().is_some();

    // forward
    let forward = rnn.forward(&batch);
    outcome("forward", &forward, config.head != Head::None && fits, gpu)?;
    if let Ok(f) = &forward {
        let steps = if config.head == Head::LastStep {
            1
        } else {
            t_max
        };
        prop_assert_eq!(f.outputs.dim(), (b, steps, config.output_size));
        prop_assert_eq!(f.final_hidden.dim(), (units, b, h));
        prop_assert_eq!(f.final_cell.is_some(), config.cell == Cell::Lstm);
        if let Some(c) = &f.final_cell {
            prop_assert_eq!(c.dim(), (units, b, h));
        }
        if batch.targets().is_none() {
            prop_assert!(f.loss.is_nan());
        } else if moderate_params && moderate_batch {
            prop_assert!(f.loss.is_finite() && f.loss >= 0.0, "loss {}", f.loss);
            prop_assert!(f.outputs.iter().all(|v| v.is_finite()));
            if gpu {
                // the same numbers as the CPU reference path
                let mut cpu = Rnn::new(config.clone(), params.clone(), &Device::cpu()).unwrap();
                let want = cpu.forward(&batch).unwrap().loss;
                prop_assert!(
                    (f.loss - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "GPU loss {} against the CPU's {}",
                    f.loss,
                    want
                );
            }
        }
    }

    // from an initial state of any shape
    let mut rng = SplitMix64::new(xspec.seed);
    let initial = xspec.initial.map(|off| {
        let shape = (units, b + off, h);
        let with_c = config.cell.has_c() != xspec.flip_c;
        RnnState {
            h: array3(shape, xspec.initial_values, xspec.layout, &mut rng),
            c: with_c.then(|| array3(shape, xspec.initial_values, xspec.layout, &mut rng)),
        }
    });
    let initial_ok = xspec
        .initial
        .is_none_or(|off| off == 0 && !xspec.flip_c && xspec.initial_values != Values::NonFinite);
    let from = rnn.forward_from(&batch, initial.as_ref());
    let expected = config.head != Head::None && fits && initial_ok;
    outcome("forward_from", &from, expected, gpu)?;
    if let (Ok(f), Ok(plain)) = (&from, &forward) {
        prop_assert_eq!(f.outputs.dim(), plain.outputs.dim());
        if initial.is_none() {
            let bits = |a: &Array3<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&f.outputs), bits(&plain.outputs));
            prop_assert_eq!(bits(&f.final_hidden), bits(&plain.final_hidden));
            prop_assert_eq!(f.loss.to_bits(), plain.loss.to_bits());
        }
    }

    // loss and gradients
    match rnn.loss_and_gradients(&batch) {
        Ok((loss, grads)) => {
            prop_assert!(fits && batch.targets().is_some() && config.head != Head::None);
            prop_assert!(grads.validate_shapes_ok(config));
            if moderate_params && moderate_batch {
                prop_assert!(loss.is_finite());
                prop_assert!(
                    finite_params(&grads),
                    "non-finite gradients of moderate inputs"
                );
            }
        }
        Err(e) => clear(&e)?,
    }

    // encode and backward (the backward with the encode's dropout masks)
    if let Some(seed) = xspec.training {
        rnn.set_training(true);
        rnn.set_dropout_seed(seed);
    }
    let encoded = rnn.encode(&batch);
    outcome("encode", &encoded, fits, gpu)?;
    if let Ok(enc) = &encoded {
        prop_assert_eq!(enc.states.dim(), (b, t_max, sw));
        prop_assert_eq!(enc.final_hidden.dim(), (units, b, h));
        if moderate_params && bspec.values == Values::Moderate {
            prop_assert!(enc.states.iter().all(|v| v.is_finite()));
        }
    }
    let grad_states = array3(
        (b + xspec.grad_off, t_max, sw),
        xspec.grad_values,
        xspec.layout,
        &mut rng,
    );
    let backward = rnn.backward(&batch, &grad_states);
    let expected = fits && xspec.grad_off == 0 && xspec.grad_values != Values::NonFinite;
    outcome("backward", &backward, expected, gpu)?;
    let grads = match backward {
        Ok(g) => {
            prop_assert!(g.params.validate_shapes_ok(config));
            match batch.token_ids() {
                Some(_) => prop_assert!(g.inputs.is_empty()),
                None => {
                    prop_assert_eq!(g.inputs.len(), b);
                    for (x, gx) in batch.inputs().iter().zip(&g.inputs) {
                        prop_assert_eq!(x.dim(), gx.dim());
                    }
                }
            }
            if moderate_params
                && bspec.values == Values::Moderate
                && xspec.grad_values == Values::Moderate
            {
                prop_assert!(
                    finite_params(&g.params),
                    "non-finite encoder gradients of moderate inputs"
                );
            }
            Some(g.params)
        }
        Err(_) => None,
    };

    // apply_gradients: the backward's, or parameters of any shape as gradients
    let mut opt = make_optimizer(ospec, config);
    let before = rnn.params().unwrap();
    let some_grads = grads.unwrap_or_else(|| make_params(config, &xspec.grads));
    match rnn.apply_gradients(&some_grads, &mut opt) {
        Ok(()) => {
            let after = rnn.params().unwrap();
            prop_assert!(
                finite_params(&after),
                "apply_gradients made parameters non-finite"
            );
        }
        Err(e) => {
            clear(&e)?;
            prop_assert_eq!(
                &rnn.params().unwrap(),
                &before,
                "a refused update changed the parameters"
            );
        }
    }

    // training steps
    let mut opt = make_optimizer(ospec, config);
    let before = rnn.params().unwrap();
    match rnn.train_step(&batch, &mut opt) {
        Ok(loss) => {
            prop_assert!(fits && batch.targets().is_some() && config.head != Head::None);
            prop_assert!(loss.is_finite());
            prop_assert!(finite_params(&rnn.params().unwrap()));
        }
        Err(e) => {
            clear(&e)?;
            prop_assert_eq!(
                &rnn.params().unwrap(),
                &before,
                "a refused step changed the parameters"
            );
        }
    }
    match rnn.train_step_from(&batch, initial.as_ref(), &mut opt) {
        Ok((loss, state)) => {
            prop_assert!(loss.is_finite() && !config.bidirectional && initial_ok);
            prop_assert_eq!(state.h.dim(), (units, b, h));
        }
        Err(e) => clear(&e)?,
    }

    // the trained parameters through a checkpoint, bit for bit
    let trained = rnn.params().unwrap();
    let path = scratch("trained.safetensors");
    trained.save_for(config, &path).unwrap();
    let back = RnnParams::load_for(config, &path);
    prop_assert!(
        back.is_ok(),
        "load_for of a saved model failed: {:?}",
        back.err()
    );
    prop_assert_eq!(&back.unwrap(), &trained);
    // without the config, the shapes telling the model
    let saved = trained.save(&path);
    prop_assert!(
        saved.is_ok(),
        "RnnParams::save of a valid model failed: {:?}",
        saved.err()
    );
    prop_assert_eq!(&RnnParams::load(&path).unwrap(), &trained);
    Ok(())
}

trait ShapesOk {
    fn validate_shapes_ok(&self, config: &RnnConfig) -> bool;
}

impl ShapesOk for RnnParams {
    /// Whether the shapes fit `config`, whatever the values.
    fn validate_shapes_ok(&self, config: &RnnConfig) -> bool {
        self.map(|_| 0.0f32).validate(config).is_ok()
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn every_operation_on_the_cpu_is_ok_or_a_clear_error(
        config in config(),
        pspec in param_spec(),
        bspec in batch_spec(),
        ospec in optimizer_spec(),
        xspec in extra_spec(),
    ) {
        check_model(&Device::cpu(), &config, &pspec, &bspec, &ospec, &xspec)?;
    }

    /// Sizes whose products overflow `usize`: refused, never a panic on the arithmetic.
    #[test]
    fn configs_with_overflowing_sizes_are_refused(
        sizes in prop::array::uniform4(prop::sample::select(vec![
            1usize, 2, 1 << 31, 1 << 32, 1 << 61, 1 << 62, (1 << 63) - 1, 1 << 63, usize::MAX,
        ])),
        cell in prop::sample::select(vec![Cell::Tanh, Cell::Relu, Cell::Lstm, Cell::Gru]),
        head in prop::sample::select(vec![Head::PerStep, Head::LastStep, Head::None]),
        bidirectional in any::<bool>(),
    ) {
        let [input, hidden, output, layers] = sizes;
        let config = RnnConfig {
            input_size: input,
            hidden_size: hidden,
            output_size: if head == Head::None { 0 } else { output },
            num_layers: layers,
            cell,
            head,
            bidirectional,
            dropout: 0.0,
            output_dropout: 0.0,
        };
        // the accessors answer (saturating) and validation refuses what overflows
        let _ = (config.num_params(), config.gate_width(), config.state_width(), config.num_units());
        if config.validate().is_ok() {
            prop_assert!(config.num_params() < usize::MAX);
        }
        // parameters that hold no element but declare these sizes
        let empty = |cols: usize| Array2::<f32>::zeros((0, cols.min(isize::MAX as usize)));
        let params = RnnParams {
            layers: (0..layers.min(4))
                .map(|l| LayerParams {
                    w_ih: empty(if l == 0 { input } else { hidden.saturating_mul(2) }),
                    w_hh: empty(hidden),
                    b_ih: Array1::zeros(0),
                    b_hh: Array1::zeros(0),
                })
                .collect(),
            w_out: empty(hidden.saturating_mul(1 + bidirectional as usize)),
            b_out: Array1::zeros(0),
        };
        if let Err(e) = Rnn::new(config.clone(), params.clone(), &Device::cpu()) {
            clear(&e)?;
        } else {
            prop_assert!(false, "a model with sizes {:?} was accepted", sizes);
        }
        let path = scratch("overflow.safetensors");
        let _ = params.save(&path);
        let _ = params.save_for(&config, &path);
    }
}

/// A few tiny cases on the GPU, if there is an adapter: it runs them (with the same
/// checks) or refuses them with an `Err`, as it does gated cells, bidirectional layers,
/// dropout and `Head::None` for now.
#[test]
fn a_few_operations_on_the_gpu_are_ok_or_a_clear_error() {
    let Some(gpu) = common::gpu() else { return };
    let cases = std::env::var("UNFOLD_GPU_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 16,
        ..Config::default()
    });
    // mostly what the GPU path runs now (Elman cells, one direction, no dropout, a
    // readout), sometimes anything
    let gpu_config = prop_oneof![
        3 => config().prop_map(|c| RnnConfig {
            cell: if c.cell == Cell::Relu { Cell::Relu } else { Cell::Tanh },
            head: if c.head == Head::None { Head::PerStep } else { c.head },
            output_size: c.output_size.max(1),
            bidirectional: false,
            dropout: 0.0,
            ..c
        }),
        1 => config(),
    ];
    let strategy = (
        gpu_config,
        param_spec(),
        batch_spec(),
        optimizer_spec(),
        extra_spec(),
    );
    runner
        .run(&strategy, |(config, pspec, bspec, ospec, xspec)| {
            check_model(&gpu, &config, &pspec, &bspec, &ospec, &xspec)
        })
        .unwrap();
}
