//! The model's description (`RnnConfig`) and its parameters (`RnnParams`).

use crate::real::Real;
use crate::rng::SplitMix64;
use crate::{Error, Result};
use ndarray::{Array1, Array2};

/// The element-wise nonlinearity φ of the recurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nonlinearity {
    Tanh,
    Relu,
}

/// Where the linear readout is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Head {
    /// `o(t) = W_out · h_top(t) + b_out` at every valid step.
    PerStep,
    /// `o = W_out · h_top(last valid step) + b_out`, one output per sequence.
    LastStep,
}

/// The shape of an Elman RNN with a linear readout.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnConfig {
    pub input_size: usize,
    pub hidden_size: usize,
    pub output_size: usize,
    pub num_layers: usize,
    pub nonlinearity: Nonlinearity,
    pub head: Head,
}

impl RnnConfig {
    /// One layer, tanh, per-step head.
    pub fn new(input_size: usize, hidden_size: usize, output_size: usize) -> Self {
        RnnConfig {
            input_size,
            hidden_size,
            output_size,
            num_layers: 1,
            nonlinearity: Nonlinearity::Tanh,
            head: Head::PerStep,
        }
    }

    pub fn num_layers(mut self, n: usize) -> Self {
        self.num_layers = n;
        self
    }

    pub fn nonlinearity(mut self, n: Nonlinearity) -> Self {
        self.nonlinearity = n;
        self
    }

    pub fn head(mut self, h: Head) -> Self {
        self.head = h;
        self
    }

    /// Width of the input of layer `l`.
    pub fn layer_input_size(&self, l: usize) -> usize {
        if l == 0 {
            self.input_size
        } else {
            self.hidden_size
        }
    }

    /// Every size must be at least 1.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("input_size", self.input_size),
            ("hidden_size", self.hidden_size),
            ("output_size", self.output_size),
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
        Ok(())
    }

    /// Number of scalar parameters.
    pub fn num_params(&self) -> usize {
        let h = self.hidden_size;
        let layers: usize = (0..self.num_layers)
            .map(|l| h * self.layer_input_size(l) + h * h + h)
            .sum();
        layers + self.output_size * h + self.output_size
    }
}

/// The parameters of one recurrent layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams<F = f32> {
    /// `[hidden, layer input]`
    pub w_ih: Array2<F>,
    /// `[hidden, hidden]`
    pub w_hh: Array2<F>,
    /// `[hidden]`: PyTorch's `bias_ih + bias_hh`.
    pub b: Array1<F>,
}

/// All parameters of a model: the recurrent layers and the readout.
///
/// `F` is `f32` everywhere in the public API; the CPU reference path also runs in `f64`
/// for gradient checks (see [`crate::cpu`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RnnParams<F = f32> {
    pub layers: Vec<LayerParams<F>>,
    /// `[output, hidden]`
    pub w_out: Array2<F>,
    /// `[output]`
    pub b_out: Array1<F>,
}

impl RnnParams<f32> {
    /// Uniform in `[-1/sqrt(hidden), 1/sqrt(hidden))` for every tensor, as PyTorch
    /// initialises `nn.RNN` (the readout uses the same bound since its fan-in is `hidden`).
    pub fn init(config: &RnnConfig, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let bound = 1.0 / (config.hidden_size.max(1) as f32).sqrt();
        let mut uniform = |shape: (usize, usize)| {
            Array2::from_shape_simple_fn(shape, || rng.uniform(-bound, bound))
        };
        let h = config.hidden_size;
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let w_ih = uniform((h, config.layer_input_size(l)));
            let w_hh = uniform((h, h));
            // bias_ih + bias_hh, each U(-k, k): keep the sum's distribution like PyTorch's
            let b = uniform((2, h)).sum_axis(ndarray::Axis(0));
            layers.push(LayerParams { w_ih, w_hh, b });
        }
        let w_out = uniform((config.output_size, h));
        let b_out = uniform((1, config.output_size)).row(0).to_owned();
        RnnParams {
            layers,
            w_out,
            b_out,
        }
    }
}

impl<F: Real> RnnParams<F> {
    /// All zeros, shaped for `config`.
    pub fn zeros(config: &RnnConfig) -> Self {
        let h = config.hidden_size;
        RnnParams {
            layers: (0..config.num_layers)
                .map(|l| LayerParams {
                    w_ih: Array2::zeros((h, config.layer_input_size(l))),
                    w_hh: Array2::zeros((h, h)),
                    b: Array1::zeros(h),
                })
                .collect(),
            w_out: Array2::zeros((config.output_size, h)),
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
                    b: l.b.mapv(f),
                })
                .collect(),
            w_out: self.w_out.mapv(f),
            b_out: self.b_out.mapv(f),
        }
    }

    /// The tensors in a fixed order with their PyTorch-style names:
    /// per layer `w_ih`, `w_hh`, `b`, then `w_out`, `b_out`. Everything that treats the
    /// parameters as one flat vector (optimizers, norms, the GPU buffer) uses this order.
    pub fn tensors(&self) -> Vec<(String, &[F])> {
        let mut out = Vec::with_capacity(3 * self.layers.len() + 2);
        for (k, l) in self.layers.iter().enumerate() {
            out.push((format!("weight_ih_l{k}"), slice(&l.w_ih)));
            out.push((format!("weight_hh_l{k}"), slice(&l.w_hh)));
            out.push((
                format!("bias_l{k}"),
                l.b.as_slice().expect("owned arrays are contiguous"),
            ));
        }
        out.push(("out.weight".into(), slice(&self.w_out)));
        out.push((
            "out.bias".into(),
            self.b_out.as_slice().expect("owned arrays are contiguous"),
        ));
        out
    }

    /// Mutable slices in the order of [`RnnParams::tensors`].
    pub fn tensors_mut(&mut self) -> Vec<&mut [F]> {
        let mut out: Vec<&mut [F]> = Vec::with_capacity(3 * self.layers.len() + 2);
        for l in self.layers.iter_mut() {
            out.push(slice_mut(&mut l.w_ih));
            out.push(slice_mut(&mut l.w_hh));
            out.push(l.b.as_slice_mut().expect("owned arrays are contiguous"));
        }
        out.push(slice_mut(&mut self.w_out));
        out.push(
            self.b_out
                .as_slice_mut()
                .expect("owned arrays are contiguous"),
        );
        out
    }

    /// All scalars as one vector, in the order of [`RnnParams::tensors`].
    pub fn to_flat(&self) -> Vec<F> {
        self.tensors()
            .into_iter()
            .flat_map(|(_, s)| s.iter().copied())
            .collect()
    }

    /// Overwrites every scalar from a flat vector (the inverse of [`RnnParams::to_flat`]).
    pub fn assign_flat(&mut self, flat: &[F]) {
        let mut at = 0;
        for t in self.tensors_mut() {
            t.copy_from_slice(&flat[at..at + t.len()]);
            at += t.len();
        }
        debug_assert_eq!(at, flat.len());
    }

    /// The same parameters with every array in standard (row-major) layout, which
    /// [`RnnParams::tensors`] needs; arrays already in that layout are moved, not copied.
    pub fn into_standard_layout(self) -> Self {
        fn std2<F: Clone>(a: Array2<F>) -> Array2<F> {
            if a.is_standard_layout() {
                a
            } else {
                a.as_standard_layout().into_owned()
            }
        }
        fn std1<F: Clone>(a: Array1<F>) -> Array1<F> {
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
                    w_ih: std2(l.w_ih),
                    w_hh: std2(l.w_hh),
                    b: std1(l.b),
                })
                .collect(),
            w_out: std2(self.w_out),
            b_out: std1(self.b_out),
        }
    }

    /// Number of scalars.
    pub fn len(&self) -> usize {
        self.tensors().iter().map(|(_, s)| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every shape against `config` and every value for finiteness.
    pub fn validate(&self, config: &RnnConfig) -> Result<()> {
        config.validate()?;
        if self.layers.len() != config.num_layers {
            return Err(Error::shape(
                "params.layers (number of layers)",
                config.num_layers,
                self.layers.len(),
            ));
        }
        let h = config.hidden_size;
        let check2 = |what: String, a: &Array2<F>, rows: usize, cols: usize| {
            if a.dim() != (rows, cols) {
                return Err(Error::shape(
                    what,
                    format!("[{rows}, {cols}]"),
                    format!("{:?}", a.shape()),
                ));
            }
            Ok(())
        };
        let check1 = |what: String, a: &Array1<F>, n: usize| {
            if a.len() != n {
                return Err(Error::shape(
                    what,
                    format!("[{n}]"),
                    format!("{:?}", a.shape()),
                ));
            }
            Ok(())
        };
        for (k, l) in self.layers.iter().enumerate() {
            check2(
                format!("layers[{k}].w_ih"),
                &l.w_ih,
                h,
                config.layer_input_size(k),
            )?;
            check2(format!("layers[{k}].w_hh"), &l.w_hh, h, h)?;
            check1(format!("layers[{k}].b"), &l.b, h)?;
        }
        check2("w_out".into(), &self.w_out, config.output_size, h)?;
        check1("b_out".into(), &self.b_out, config.output_size)?;
        for (name, t) in self.tensors() {
            if let Some(i) = t.iter().position(|x| !x.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("parameter {name}"),
                    detail: format!("element {i} is {}", t[i]),
                });
            }
        }
        Ok(())
    }

    /// The config these parameters have the shape of (nonlinearity and head taken from
    /// `like`), or an error naming the first inconsistent tensor.
    pub fn infer_config(&self, nonlinearity: Nonlinearity, head: Head) -> Result<RnnConfig> {
        let first = self.layers.first().ok_or(Error::InvalidConfig {
            what: "num_layers",
            expected: "at least 1",
            got: "0".into(),
        })?;
        let config = RnnConfig {
            input_size: first.w_ih.ncols(),
            hidden_size: first.w_hh.nrows(),
            output_size: self.w_out.nrows(),
            num_layers: self.layers.len(),
            nonlinearity,
            head,
        };
        self.validate(&config)?;
        Ok(config)
    }
}

fn slice<F>(a: &Array2<F>) -> &[F] {
    a.as_slice().expect("parameters are standard-layout arrays")
}

fn slice_mut<F>(a: &mut Array2<F>) -> &mut [F] {
    a.as_slice_mut()
        .expect("parameters are standard-layout arrays")
}
