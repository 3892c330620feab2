//! The model's description (`RnnConfig`, `Cell`, `Head`) and its parameters (`RnnParams`).

use crate::real::Real;
use crate::rng::SplitMix64;
use crate::{Error, Result};
use ndarray::{Array1, Array2};

/// The recurrent cell of every layer: exactly PyTorch's `nn.RNN` (tanh or relu),
/// `nn.LSTM` and `nn.GRU`, gate blocks stacked in PyTorch's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cell {
    /// Elman: `h(t) = tanh(W_ih in(t) + b_ih + W_hh h(t-1) + b_hh)`.
    Tanh,
    /// Elman with relu in place of tanh.
    Relu,
    /// Long short-term memory, gates `i, f, g, o`; state `(h, c)`.
    Lstm,
    /// Gated recurrent unit, gates `r, z, n`, with `b_hn` inside `r ⊙ (W_hn h + b_hn)`.
    Gru,
}

impl Cell {
    /// Gate blocks stacked in each weight matrix: 1 (Elman), 4 (LSTM), 3 (GRU).
    pub fn gates(self) -> usize {
        match self {
            Cell::Tanh | Cell::Relu => 1,
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }

    /// Whether the cell carries a second state `c` (the LSTM).
    pub fn has_c(self) -> bool {
        self == Cell::Lstm
    }

    /// The name used on the command line and in checkpoint metadata.
    pub fn name(self) -> &'static str {
        match self {
            Cell::Tanh => "tanh",
            Cell::Relu => "relu",
            Cell::Lstm => "lstm",
            Cell::Gru => "gru",
        }
    }

    /// The cell named by [`Cell::name`].
    pub fn from_name(name: &str) -> Result<Cell> {
        match name {
            "tanh" => Ok(Cell::Tanh),
            "relu" => Ok(Cell::Relu),
            "lstm" => Ok(Cell::Lstm),
            "gru" => Ok(Cell::Gru),
            other => Err(Error::InvalidConfig {
                what: "cell",
                expected: "one of tanh, relu, lstm, gru",
                got: other.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The element-wise nonlinearity of an Elman cell (shorthand for [`Cell::Tanh`] and
/// [`Cell::Relu`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nonlinearity {
    /// `tanh`
    Tanh,
    /// `max(0, x)`
    Relu,
}

impl From<Nonlinearity> for Cell {
    fn from(n: Nonlinearity) -> Cell {
        match n {
            Nonlinearity::Tanh => Cell::Tanh,
            Nonlinearity::Relu => Cell::Relu,
        }
    }
}

/// What reads the top layer's states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Head {
    /// `o(t) = W_out · h_top(t) + b_out` at every valid step.
    PerStep,
    /// `o = W_out · h_top(last valid step) + b_out`, one output per sequence
    /// (bidirectional: each direction's final state, `[h_n forward; h_n reverse]`).
    LastStep,
    /// No readout: the network is an encoder whose states another model reads
    /// ([`crate::Rnn::encode`], [`crate::Rnn::backward`]); `output_size` is 0.
    None,
}

/// The shape of a recurrent network and its readout.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnConfig {
    /// Features per step of the input (or the vocabulary size, for token batches).
    pub input_size: usize,
    /// Units per layer and direction.
    pub hidden_size: usize,
    /// Outputs of the readout (classes or values); 0 with [`Head::None`].
    pub output_size: usize,
    /// Stacked recurrent layers.
    pub num_layers: usize,
    /// The recurrent cell of every layer.
    pub cell: Cell,
    /// What reads the top layer's states.
    pub head: Head,
    /// Whether every layer also runs over each sequence backwards.
    pub bidirectional: bool,
    /// Probability of zeroing each input of layers 1.. on training steps (PyTorch's
    /// inter-layer dropout); 0 disables it.
    pub dropout: f32,
    /// Probability of zeroing each of the top layer's states before the readout reads
    /// them, on training steps; 0 disables it (and an encoder, with no readout, has
    /// nothing to drop).
    pub output_dropout: f32,
}

impl RnnConfig {
    /// One layer, tanh, per-step head, one direction, no dropout.
    pub fn new(input_size: usize, hidden_size: usize, output_size: usize) -> Self {
        RnnConfig {
            input_size,
            hidden_size,
            output_size,
            num_layers: 1,
            cell: Cell::Tanh,
            head: Head::PerStep,
            bidirectional: false,
            dropout: 0.0,
            output_dropout: 0.0,
        }
    }

    /// Sets the number of stacked layers.
    pub fn num_layers(mut self, n: usize) -> Self {
        self.num_layers = n;
        self
    }

    /// Sets the recurrent cell.
    pub fn cell(mut self, c: Cell) -> Self {
        self.cell = c;
        self
    }

    /// An Elman cell with this nonlinearity (shorthand for [`RnnConfig::cell`]).
    pub fn nonlinearity(mut self, n: Nonlinearity) -> Self {
        self.cell = n.into();
        self
    }

    /// Sets the head; [`Head::None`] also sets `output_size` to 0.
    pub fn head(mut self, h: Head) -> Self {
        self.head = h;
        if h == Head::None {
            self.output_size = 0;
        }
        self
    }

    /// Makes every layer bidirectional.
    pub fn bidirectional(mut self, yes: bool) -> Self {
        self.bidirectional = yes;
        self
    }

    /// Sets the inter-layer dropout probability (training steps only).
    pub fn dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }

    /// Sets the dropout probability on the top layer's states before the readout
    /// (training steps only).
    pub fn output_dropout(mut self, p: f32) -> Self {
        self.output_dropout = p;
        self
    }

    /// Whether training steps draw dropout masks: between layers, or before the readout.
    pub(crate) fn drops(&self) -> bool {
        self.drops_between() || self.drops_output()
    }

    /// Whether training steps drop the inputs of layers 1...
    pub(crate) fn drops_between(&self) -> bool {
        self.dropout > 0.0 && self.num_layers > 1
    }

    /// Whether training steps drop the top layer's states before the readout.
    pub(crate) fn drops_output(&self) -> bool {
        self.output_dropout > 0.0 && self.head != Head::None
    }

    /// 2 if bidirectional, else 1.
    pub fn num_directions(&self) -> usize {
        1 + self.bidirectional as usize
    }

    /// Width of the top layer's output (and of the input of layers 1..): directions ×
    /// hidden (saturating at `usize::MAX`, for sizes [`RnnConfig::validate`] refuses).
    pub fn state_width(&self) -> usize {
        self.num_directions().saturating_mul(self.hidden_size)
    }

    /// Rows of each weight matrix: gates × hidden (saturating, as
    /// [`RnnConfig::state_width`]).
    pub fn gate_width(&self) -> usize {
        self.cell.gates().saturating_mul(self.hidden_size)
    }

    /// Width of the input of layer `l`.
    pub fn layer_input_size(&self, l: usize) -> usize {
        if l == 0 {
            self.input_size
        } else {
            self.state_width()
        }
    }

    /// Parameter sets of the recurrent layers: layers × directions (saturating, as
    /// [`RnnConfig::state_width`]).
    pub fn num_units(&self) -> usize {
        self.num_layers.saturating_mul(self.num_directions())
    }

    /// Every size in range (at least 1, and a parameter count that does not overflow), the
    /// head consistent with the output size, dropout in [0, 1).
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("input_size", self.input_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
        ] {
            if v == 0 {
                return Err(Error::InvalidConfig {
                    what,
                    expected: "at least 1",
                    got: "0".into(),
                });
            }
        }
        match (self.head, self.output_size) {
            (Head::None, 0) => {}
            (Head::None, n) => {
                return Err(Error::InvalidConfig {
                    what: "output_size with Head::None",
                    expected: "0 (an encoder has no readout)",
                    got: n.to_string(),
                })
            }
            (_, 0) => {
                return Err(Error::InvalidConfig {
                    what: "output_size",
                    expected: "at least 1 (or Head::None for an encoder)",
                    got: "0".into(),
                })
            }
            _ => {}
        }
        if self
            .checked_num_params()
            .is_none_or(|n| n > isize::MAX as usize)
        {
            return Err(Error::InvalidConfig {
                what: "sizes",
                expected:
                    "small enough for the parameter count to be addressable (at most isize::MAX)",
                got: format!(
                    "input {}, hidden {}, output {}, {} layers",
                    self.input_size, self.hidden_size, self.output_size, self.num_layers
                ),
            });
        }
        for (what, p) in [
            ("dropout", self.dropout),
            ("output_dropout", self.output_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::InvalidConfig {
                    what,
                    expected: "in [0, 1)",
                    got: p.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Number of scalar parameters (`usize::MAX` for sizes whose count overflows, which
    /// [`RnnConfig::validate`] refuses).
    pub fn num_params(&self) -> usize {
        self.checked_num_params().unwrap_or(usize::MAX)
    }

    /// The parameter count, `None` if it overflows `usize`; in closed form, so that any
    /// number of layers costs the same.
    fn checked_num_params(&self) -> Option<usize> {
        let (h, d) = (self.hidden_size, self.num_directions());
        let g = self.cell.gates().checked_mul(h)?;
        let width = d.checked_mul(h)?;
        // one layer in all directions: W_ih, W_hh, b_ih, b_hh
        let layer = |input: usize| -> Option<usize> {
            let unit = g
                .checked_mul(input)?
                .checked_add(g.checked_mul(h)?)?
                .checked_add(g.checked_mul(2)?)?;
            d.checked_mul(unit)
        };
        let layers = match self.num_layers {
            0 => 0,
            n => layer(self.input_size)?.checked_add(match n - 1 {
                0 => 0,
                rest => rest.checked_mul(layer(width)?)?,
            })?,
        };
        layers
            .checked_add(self.output_size.checked_mul(width)?)?
            .checked_add(self.output_size)
    }

    /// Every parameter tensor's PyTorch name and shape, in the flat order of
    /// [`RnnParams::tensors`]: what an optimizer's state is matched against.
    pub fn param_layout(&self) -> Vec<(String, Vec<usize>)> {
        let (h, g) = (self.hidden_size, self.gate_width());
        let mut out = Vec::with_capacity(4 * self.num_units() + 2);
        for u in 0..self.num_units() {
            let k = self.unit_name(u);
            let input = self.layer_input_size(u / self.num_directions());
            out.push((format!("rnn.weight_ih_{k}"), vec![g, input]));
            out.push((format!("rnn.weight_hh_{k}"), vec![g, h]));
            out.push((format!("rnn.bias_ih_{k}"), vec![g]));
            out.push((format!("rnn.bias_hh_{k}"), vec![g]));
        }
        out.push((
            "out.weight".into(),
            vec![self.output_size, self.state_width()],
        ));
        out.push(("out.bias".into(), vec![self.output_size]));
        out
    }

    /// The suffix of unit `u`'s PyTorch names: `l{k}` or `l{k}_reverse`.
    pub fn unit_name(&self, u: usize) -> String {
        let d = self.num_directions();
        let reverse = if u % d == 1 { "_reverse" } else { "" };
        format!("l{}{reverse}", u / d)
    }
}

/// The parameters of one recurrent layer in one direction, PyTorch's tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams<F = f32> {
    /// `[gates·hidden, layer input]` (PyTorch's `weight_ih_l{k}`)
    pub w_ih: Array2<F>,
    /// `[gates·hidden, hidden]` (`weight_hh_l{k}`)
    pub w_hh: Array2<F>,
    /// `[gates·hidden]` (`bias_ih_l{k}`)
    pub b_ih: Array1<F>,
    /// `[gates·hidden]` (`bias_hh_l{k}`)
    pub b_hh: Array1<F>,
}

/// All parameters of a model: the recurrent layers and the readout.
///
/// `F` is `f32` everywhere in the public API; the CPU reference path also runs in `f64`
/// for gradient checks.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnParams<F = f32> {
    /// One per layer and direction, in PyTorch's order: l0, l0 reverse, l1, ...
    pub layers: Vec<LayerParams<F>>,
    /// `[output, directions·hidden]` (`[0, ..]` for an encoder)
    pub w_out: Array2<F>,
    /// `[output]`
    pub b_out: Array1<F>,
}

impl RnnParams<f32> {
    /// Uniform in `[-1/sqrt(hidden), 1/sqrt(hidden))` for every recurrent tensor, as
    /// PyTorch initialises its recurrent modules, and `[-1/sqrt(fan_in), ..)` for the
    /// readout, as `nn.Linear`.
    ///
    /// # Panics
    /// On a config that [`RnnConfig::validate`] refuses (a parameter count that
    /// overflows); and like any Rust allocation, parameters too large for the machine's
    /// memory abort the process. [`RnnParams::try_init`] returns an error for both.
    pub fn init(config: &RnnConfig, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut uniform = |shape: (usize, usize), fan_in: usize| {
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            Array2::from_shape_simple_fn(shape, || rng.uniform(-bound, bound))
        };
        let (h, g) = (config.hidden_size, config.gate_width());
        let mut layers = Vec::with_capacity(config.num_units());
        for u in 0..config.num_units() {
            let input = config.layer_input_size(u / config.num_directions());
            let w_ih = uniform((g, input), h);
            let w_hh = uniform((g, h), h);
            let b_ih = uniform((1, g), h).row(0).to_owned();
            let b_hh = uniform((1, g), h).row(0).to_owned();
            layers.push(LayerParams {
                w_ih,
                w_hh,
                b_ih,
                b_hh,
            });
        }
        let fan_in = config.state_width();
        let w_out = uniform((config.output_size, fan_in), fan_in);
        let b_out = uniform((1, config.output_size), fan_in).row(0).to_owned();
        RnnParams {
            layers,
            w_out,
            b_out,
        }
    }

    /// [`RnnParams::init`], after checking `config` ([`RnnConfig::validate`]) and that
    /// the machine can allocate the parameters at all (asked for at once and given back
    /// untouched; one that fails is [`Error::InvalidConfig`] with the size, not an abort
    /// of the process).
    pub fn try_init(config: &RnnConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let bytes = config
            .num_params()
            .saturating_mul(std::mem::size_of::<f32>());
        if !can_allocate(bytes) {
            return Err(Error::InvalidConfig {
                what: "the model's size",
                expected: "parameters this machine can allocate",
                got: format!(
                    "{} parameters ({:.1} GB)",
                    config.num_params(),
                    bytes as f64 / 1e9
                ),
            });
        }
        Ok(Self::init(config, seed))
    }
}

/// Whether the allocator gives `bytes` at all: asked for at once and given back
/// untouched, so a probe that succeeds costs nothing. Under Linux's default overcommit a
/// request fails when it exceeds RAM and swap: what aborts the process when a real
/// allocation of that size fails.
pub fn can_allocate(bytes: usize) -> bool {
    Vec::<u8>::new().try_reserve_exact(bytes).is_ok()
}

impl<F: Real> RnnParams<F> {
    /// All zeros, shaped for `config` (panics and aborts as [`RnnParams::init`]).
    pub fn zeros(config: &RnnConfig) -> Self {
        let (h, g) = (config.hidden_size, config.gate_width());
        RnnParams {
            layers: (0..config.num_units())
                .map(|u| LayerParams {
                    w_ih: Array2::zeros((g, config.layer_input_size(u / config.num_directions()))),
                    w_hh: Array2::zeros((g, h)),
                    b_ih: Array1::zeros(g),
                    b_hh: Array1::zeros(g),
                })
                .collect(),
            w_out: Array2::zeros((config.output_size, config.state_width())),
            b_out: Array1::zeros(config.output_size),
        }
    }

    /// The same parameters in another float type.
    pub fn cast<G: Real>(&self) -> RnnParams<G> {
        self.map(|x| G::from_f64(x.to_f64()))
    }

    /// Applies `f` to every scalar.
    pub fn map<G>(&self, f: impl Fn(F) -> G + Copy) -> RnnParams<G> {
        RnnParams {
            layers: self
                .layers
                .iter()
                .map(|l| LayerParams {
                    w_ih: l.w_ih.mapv(f),
                    w_hh: l.w_hh.mapv(f),
                    b_ih: l.b_ih.mapv(f),
                    b_hh: l.b_hh.mapv(f),
                })
                .collect(),
            w_out: self.w_out.mapv(f),
            b_out: self.b_out.mapv(f),
        }
    }

    /// The tensors in a fixed order with their field names: per layer and direction
    /// `w_ih`, `w_hh`, `b_ih`, `b_hh`, then `w_out`, `b_out`. Everything that treats the
    /// parameters as one flat vector (optimizers, norms, the GPU buffer) uses this order.
    /// Needs standard-layout arrays ([`RnnParams::into_standard_layout`]).
    pub fn tensors(&self) -> Vec<(String, &[F])> {
        let mut out = Vec::with_capacity(4 * self.layers.len() + 2);
        for (u, l) in self.layers.iter().enumerate() {
            out.push((format!("layers[{u}].w_ih"), slice(&l.w_ih)));
            out.push((format!("layers[{u}].w_hh"), slice(&l.w_hh)));
            out.push((format!("layers[{u}].b_ih"), slice1(&l.b_ih)));
            out.push((format!("layers[{u}].b_hh"), slice1(&l.b_hh)));
        }
        out.push(("w_out".into(), slice(&self.w_out)));
        out.push(("b_out".into(), slice1(&self.b_out)));
        out
    }

    /// Mutable slices in the order of [`RnnParams::tensors`].
    pub fn tensors_mut(&mut self) -> Vec<&mut [F]> {
        let mut out: Vec<&mut [F]> = Vec::with_capacity(4 * self.layers.len() + 2);
        for l in self.layers.iter_mut() {
            out.push(slice_mut(&mut l.w_ih));
            out.push(slice_mut(&mut l.w_hh));
            out.push(slice1_mut(&mut l.b_ih));
            out.push(slice1_mut(&mut l.b_hh));
        }
        out.push(slice_mut(&mut self.w_out));
        out.push(slice1_mut(&mut self.b_out));
        out
    }

    /// All scalars as one vector, in the order of [`RnnParams::tensors`] (each array in
    /// row-major order, whatever its memory layout).
    pub fn to_flat(&self) -> Vec<F> {
        if !self.is_standard_layout() {
            return self.clone().into_standard_layout().to_flat();
        }
        self.tensors()
            .into_iter()
            .flat_map(|(_, s)| s.iter().copied())
            .collect()
    }

    /// Overwrites every scalar from a flat vector (the inverse of [`RnnParams::to_flat`]).
    /// A vector that does not hold exactly [`RnnParams::len`] scalars is
    /// [`Error::ShapeMismatch`] and changes nothing. Arrays not in standard layout are
    /// made so (their values are all replaced anyway).
    pub fn assign_flat(&mut self, flat: &[F]) -> Result<()> {
        if flat.len() != self.len() {
            return Err(Error::ShapeMismatch {
                what: "a flat parameter vector".into(),
                expected: format!("{} scalars (RnnParams::len)", self.len()),
                got: format!("{} scalars", flat.len()),
            });
        }
        if !self.is_standard_layout() {
            *self = std::mem::replace(self, RnnParams::empty()).into_standard_layout();
        }
        let mut at = 0;
        for t in self.tensors_mut() {
            t.copy_from_slice(&flat[at..at + t.len()]);
            at += t.len();
        }
        Ok(())
    }

    /// Whether every array is in standard (row-major) layout, as [`RnnParams::tensors`]
    /// needs.
    fn is_standard_layout(&self) -> bool {
        self.layers.iter().all(|l| {
            l.w_ih.is_standard_layout()
                && l.w_hh.is_standard_layout()
                && l.b_ih.is_standard_layout()
                && l.b_hh.is_standard_layout()
        }) && self.w_out.is_standard_layout()
            && self.b_out.is_standard_layout()
    }

    /// No layers and an empty readout (a placeholder while the arrays move).
    fn empty() -> Self {
        RnnParams {
            layers: Vec::new(),
            w_out: Array2::zeros((0, 0)),
            b_out: Array1::zeros(0),
        }
    }

    /// The same parameters with every array in standard (row-major) layout, which
    /// [`RnnParams::tensors`] needs; arrays already in that layout are moved, not copied.
    pub fn into_standard_layout(self) -> Self {
        fn std<F: Clone, D: ndarray::Dimension>(a: ndarray::Array<F, D>) -> ndarray::Array<F, D> {
            if a.is_standard_layout() {
                a
            } else {
                a.as_standard_layout().into_owned()
            }
        }
        RnnParams {
            layers: self
                .layers
                .into_iter()
                .map(|l| LayerParams {
                    w_ih: std(l.w_ih),
                    w_hh: std(l.w_hh),
                    b_ih: std(l.b_ih),
                    b_hh: std(l.b_hh),
                })
                .collect(),
            w_out: std(self.w_out),
            b_out: std(self.b_out),
        }
    }

    /// Number of scalars.
    pub fn len(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.w_ih.len() + l.w_hh.len() + l.b_ih.len() + l.b_hh.len())
            .sum();
        layers + self.w_out.len() + self.b_out.len()
    }

    /// Whether there are no scalars at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every shape against `config` and every value for finiteness; works on
    /// arrays of any memory layout.
    pub fn validate(&self, config: &RnnConfig) -> Result<()> {
        self.check(config, true)
    }

    /// Checks every shape against `config` (any memory layout), not the values.
    pub(crate) fn validate_shapes(&self, config: &RnnConfig) -> Result<()> {
        self.check(config, false)
    }

    fn check(&self, config: &RnnConfig, values: bool) -> Result<()> {
        config.validate()?;
        if self.layers.len() != config.num_units() {
            return Err(Error::shape(
                format!(
                    "params.layers (number of layers x directions: {} x {}, {} cell)",
                    config.num_layers,
                    config.num_directions(),
                    config.cell
                ),
                config.num_units(),
                self.layers.len(),
            ));
        }
        let (h, g) = (config.hidden_size, config.gate_width());
        let cell = config.cell;
        let check2 = |what: String, a: &Array2<F>, rows: usize, cols: usize| {
            if a.dim() != (rows, cols) {
                return Err(Error::shape(
                    format!("{what} ({cell} cell, hidden {h})"),
                    format!("[{rows}, {cols}]"),
                    format!("{:?}", a.shape()),
                ));
            }
            if values {
                finite(&what, a.iter())?;
            }
            Ok(())
        };
        let check1 = |what: String, a: &Array1<F>, n: usize| {
            if a.len() != n {
                return Err(Error::shape(
                    format!("{what} ({cell} cell, hidden {h})"),
                    format!("[{n}]"),
                    format!("{:?}", a.shape()),
                ));
            }
            if values {
                finite(&what, a.iter())?;
            }
            Ok(())
        };
        for (u, l) in self.layers.iter().enumerate() {
            let input = config.layer_input_size(u / config.num_directions());
            let k = config.unit_name(u);
            check2(
                format!("layers[{u}].w_ih (weight_ih_{k})"),
                &l.w_ih,
                g,
                input,
            )?;
            check2(format!("layers[{u}].w_hh (weight_hh_{k})"), &l.w_hh, g, h)?;
            check1(format!("layers[{u}].b_ih (bias_ih_{k})"), &l.b_ih, g)?;
            check1(format!("layers[{u}].b_hh (bias_hh_{k})"), &l.b_hh, g)?;
        }
        let width = config.state_width();
        check2(
            "w_out (out.weight)".into(),
            &self.w_out,
            config.output_size,
            width,
        )?;
        check1("b_out (out.bias)".into(), &self.b_out, config.output_size)?;
        Ok(())
    }

    /// The config these parameters have the shape of, given the cell, head and
    /// direction count (which shapes alone cannot always tell apart), or an error naming
    /// the first inconsistent tensor.
    pub fn infer_config(&self, cell: Cell, head: Head, bidirectional: bool) -> Result<RnnConfig> {
        let first = self.layers.first().ok_or(Error::InvalidConfig {
            what: "num_layers",
            expected: "at least 1",
            got: "0".into(),
        })?;
        let directions = 1 + bidirectional as usize;
        let config = RnnConfig {
            input_size: first.w_ih.ncols(),
            hidden_size: first.w_hh.ncols(),
            output_size: self.w_out.nrows(),
            num_layers: self.layers.len() / directions,
            cell,
            head,
            bidirectional,
            dropout: 0.0,
            output_dropout: 0.0,
        };
        if !self.layers.len().is_multiple_of(directions) {
            return Err(Error::shape(
                "params.layers (two per layer when bidirectional)",
                "an even number",
                self.layers.len(),
            ));
        }
        self.validate(&config)?;
        Ok(config)
    }
}

fn finite<'a, F: Real>(what: &str, values: impl Iterator<Item = &'a F>) -> Result<()> {
    for (i, x) in values.enumerate() {
        if !x.is_finite() {
            return Err(Error::NonFinite {
                what: format!("parameter {what}"),
                detail: format!("element {i} is {x}"),
            });
        }
    }
    Ok(())
}

fn slice<F>(a: &Array2<F>) -> &[F] {
    a.as_slice().expect("parameters are standard-layout arrays")
}

fn slice_mut<F>(a: &mut Array2<F>) -> &mut [F] {
    a.as_slice_mut()
        .expect("parameters are standard-layout arrays")
}

fn slice1<F>(a: &Array1<F>) -> &[F] {
    a.as_slice().expect("parameters are standard-layout arrays")
}

fn slice1_mut<F>(a: &mut Array1<F>) -> &mut [F] {
    a.as_slice_mut()
        .expect("parameters are standard-layout arrays")
}
