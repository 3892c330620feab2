//! `Rnn`: a model bound to a device, with the operations of the public API.

use crate::batch::SequenceBatch;
use crate::cpu::{self, RnnState, Workspace};
use crate::device::DeviceKind;
use crate::gpu::{Dropout, GpuRnn, TimeLoop, Transfers};
use crate::model::{RnnConfig, RnnParams};
use crate::optim::Optimizer;
use crate::split;
use crate::{Device, Error, Head, Result};
use ndarray::{Array2, Array3};

/// What a forward pass returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// `[batch, max_len, output]`, zero past each length; `[batch, 1, output]` for the
    /// last-step head.
    pub outputs: Array3<f32>,
    /// `[layers·directions, batch, hidden]`: each sequence's final state in every layer
    /// and direction (PyTorch's `h_n`).
    pub final_hidden: Array3<f32>,
    /// The LSTM's final cell states (`c_n`), same shape; `None` for the other cells.
    pub final_cell: Option<Array3<f32>>,
    /// The loss over the batch's targets (NaN for a batch without targets).
    pub loss: f32,
}

/// What [`Rnn::encode`] returns: the network's states for a model built around it.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// `[batch, max_len, directions·hidden]`: the top layer's states at every step
    /// (`[h_fwd(t); h_rev(t)]` when bidirectional), zero past each length.
    pub states: Array3<f32>,
    /// `[layers·directions, batch, hidden]`, as [`Forward::final_hidden`].
    pub final_hidden: Array3<f32>,
    /// As [`Forward::final_cell`].
    pub final_cell: Option<Array3<f32>>,
}

/// What [`Rnn::backward`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    /// The gradient of every parameter (the readout's are zero: the loss is the caller's).
    pub params: RnnParams,
    /// `[len_i, input]` per sequence: the gradient with respect to the inputs, for what
    /// feeds the network. Empty for token batches, which have no input gradient.
    pub inputs: Vec<Array2<f32>>,
}

/// An RNN with its parameters on a device.
///
/// On a GPU, a batch larger than the adapter allows (its largest storage binding, or its
/// dispatch limits) is not refused: every operation runs it in chunks of its sequences
/// and combines their results — outputs and states in the batch's order, losses and
/// gradients weighted by each chunk's share of the loss, with the whole batch's dropout
/// masks — which gives the whole batch's results to f32 rounding, one read-back per
/// chunk. Only a sequence that alone exceeds a limit is refused, with
/// [`Error::ExceedsDeviceLimit`]; carry a long sequence over in chunks with
/// [`Rnn::train_step_from`].
pub struct Rnn {
    config: RnnConfig,
    backend: Backend,
    /// Dropout masks are keyed by this seed and the number of training passes so far.
    dropout_seed: u64,
    dropout_step: u64,
    /// Whether [`Rnn::encode`] applies dropout (see [`Rnn::set_training`]).
    training: bool,
    /// The dropout seed of the last [`Rnn::encode`], for the [`Rnn::backward`] after it.
    encode_seed: Option<u64>,
    /// The encoder's forward pass the backend still holds (the CPU workspace, the GPU's
    /// work buffers), for a [`Rnn::backward`] that need not run it again; `None` once
    /// another operation wrote over it.
    held: Option<Held>,
    /// Counts the changes of the parameters (every training step and applied gradients,
    /// refused or not).
    params_version: u64,
    /// What the last operation moved to and from the GPU (`None` on the CPU).
    last_transfers: Option<Transfers>,
}

/// Which encoder forward pass a backend holds: over which batch, with which parameters
/// and dropout masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    batch: u64,
    params_version: u64,
    dropout: Option<u64>,
}

enum Backend {
    Cpu {
        params: RnnParams,
        ws: Box<Workspace<f32>>,
    },
    Gpu(Box<GpuRnn>),
}

impl Rnn {
    /// Binds `params` (checked against `config`) to `device`.
    pub fn new(config: RnnConfig, params: RnnParams, device: &Device) -> Result<Rnn> {
        params.validate(&config)?;
        let params = params.into_standard_layout();
        let backend = match &device.kind {
            DeviceKind::Cpu => Backend::Cpu {
                params,
                ws: Box::default(),
            },
            DeviceKind::Gpu(ctx) => {
                Backend::Gpu(Box::new(GpuRnn::new(ctx.clone(), &config, &params)?))
            }
        };
        Ok(Rnn {
            config,
            backend,
            dropout_seed: 0x5eed,
            dropout_step: 0,
            training: false,
            encode_seed: None,
            held: None,
            params_version: 0,
            last_transfers: None,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    /// Seeds the dropout masks of the training steps that follow and restarts their
    /// count: two models with the same seed and the same steps draw the same masks, on
    /// either device. Each mask entry is a function of (seed, step, layer, position).
    pub fn set_dropout_seed(&mut self, seed: u64) {
        self.dropout_seed = seed;
        self.dropout_step = 0;
    }

    /// The dropout seed and the number of training passes that drew masks from it, to
    /// save with a checkpoint; [`Rnn::restore_dropout_state`] continues the same masks.
    pub fn dropout_state(&self) -> (u64, u64) {
        (self.dropout_seed, self.dropout_step)
    }

    /// Continues the dropout masks of a saved [`Rnn::dropout_state`].
    pub fn restore_dropout_state(&mut self, (seed, step): (u64, u64)) {
        self.dropout_seed = seed;
        self.dropout_step = step;
    }

    /// Whether [`Rnn::encode`] runs as a training pass, with dropout between layers (off
    /// by default). [`Rnn::train_step`] always does, [`Rnn::forward`] never.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// This training pass's dropout key, if the model drops anything.
    fn draw_dropout(&mut self) -> Option<u64> {
        if !self.config.drops() {
            return None;
        }
        self.dropout_step += 1;
        Some(cpu::dropout_key(self.dropout_seed, self.dropout_step))
    }

    /// Outputs, final states and loss of `batch`, from a zero initial state.
    pub fn forward(&mut self, batch: &SequenceBatch) -> Result<Forward> {
        self.forward_from(batch, None)
    }

    /// [`Rnn::forward`] from an initial state (`None`: zeros), for carrying the state
    /// from one chunk of a long sequence to the next.
    pub fn forward_from(
        &mut self,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
    ) -> Result<Forward> {
        self.check_head("forward")?;
        self.check(batch, initial)?;
        self.held = None;
        self.counted(|config, backend| match backend {
            Backend::Cpu { params, ws } => {
                let loss = cpu::forward(config, params, batch, initial, None, ws);
                let last = cpu::final_state(config, batch, ws);
                Ok(Forward {
                    outputs: cpu::outputs(config, batch, ws),
                    final_hidden: last.h,
                    final_cell: last.c,
                    loss,
                })
            }
            Backend::Gpu(g) => {
                // a batch past the device's limits runs in chunks of sequences
                split::forward(config, batch, initial, |b, init| g.forward(config, b, init))
            }
        })
    }

    /// The loss of `batch` and its gradient with respect to every parameter (no dropout).
    pub fn loss_and_gradients(&mut self, batch: &SequenceBatch) -> Result<(f32, RnnParams)> {
        self.loss_and_gradients_from(batch, None)
    }

    /// [`Rnn::loss_and_gradients`] from an initial state (no gradient flows into it).
    pub fn loss_and_gradients_from(
        &mut self,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
    ) -> Result<(f32, RnnParams)> {
        self.check_head("loss_and_gradients")?;
        self.check(batch, initial)?;
        batch.require_targets("loss_and_gradients")?;
        self.held = None;
        self.counted(|config, backend| match backend {
            Backend::Cpu { params, ws } => {
                let loss = cpu::forward(config, params, batch, initial, None, ws);
                let grads = cpu::backward(config, params, batch, ws);
                Ok((loss, grads))
            }
            Backend::Gpu(g) => {
                let (loss, grads, _) =
                    split::gradients(config, batch, initial, None, false, |b, init, d, want| {
                        g.loss_and_gradients(config, b, init, d, want)
                    })?;
                Ok((loss, grads))
            }
        })
    }

    /// The loss and gradients of a training pass, as [`Rnn::train_step`] and
    /// [`Rnn::train_step_from`] compute them before their update: from `initial` (`None`:
    /// zeros), with dropout between layers (if configured) drawn from the model's stream
    /// as a training step draws it, and with `want_final` each sequence's final state. For
    /// the data-parallel wrapper (`distributed`), which applies the averaged gradients
    /// with [`Rnn::apply_gradients`] (and puts the dropout stream back, with
    /// [`Rnn::restore_dropout_state`], when the step is refused).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn training_loss_and_gradients(
        &mut self,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
        want_final: bool,
    ) -> Result<(f32, RnnParams, Option<RnnState>)> {
        self.check_head("train_step")?;
        self.check(batch, initial)?;
        batch.require_targets("train_step")?;
        let dropout = self.draw_dropout();
        self.held = None;
        self.counted(|config, backend| match backend {
            Backend::Cpu { params, ws } => {
                let loss = cpu::forward(config, params, batch, initial, dropout, ws);
                let grads = cpu::backward(config, params, batch, ws);
                let last = want_final.then(|| cpu::final_state(config, batch, ws));
                Ok((loss, grads, last))
            }
            Backend::Gpu(g) => {
                // a batch past the device's limits runs in chunks of sequences
                split::gradients(
                    config,
                    batch,
                    initial,
                    dropout,
                    want_final,
                    |b, init, d, want| g.loss_and_gradients(config, b, init, d, want),
                )
            }
        })
    }

    /// One training step: forward (with dropout between layers, if configured),
    /// back-propagation through time, optional clipping and the optimizer's update.
    /// Returns the loss before the update. A step whose loss or gradients are not
    /// finite, or whose update would make a parameter or an optimizer moment non-finite
    /// (overflow f32), is refused with [`Error::NonFinite`] and changes nothing:
    /// parameters, moments and the optimizer's step count stay as they were.
    pub fn train_step(&mut self, batch: &SequenceBatch, optimizer: &mut Optimizer) -> Result<f32> {
        Ok(self.train_step_inner(batch, None, optimizer, false)?.0)
    }

    /// [`Rnn::train_step`] from an initial state (`None`: zeros), returning the loss and
    /// each sequence's final state — computed with the parameters before the update — to
    /// start the next chunk from. This is truncated back-propagation through time: no
    /// gradient flows into `initial`. Not for bidirectional models, whose reverse
    /// direction needs each whole sequence.
    pub fn train_step_from(
        &mut self,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
        optimizer: &mut Optimizer,
    ) -> Result<(f32, RnnState)> {
        if self.config.bidirectional {
            return Err(Error::Unsupported(
                "truncated back-propagation through time (train_step_from) needs a unidirectional model: the reverse direction of a bidirectional one reads each whole sequence".into(),
            ));
        }
        let (loss, last) = self.train_step_inner(batch, initial, optimizer, true)?;
        Ok((loss, last.expect("asked for the final state")))
    }

    fn train_step_inner(
        &mut self,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
        optimizer: &mut Optimizer,
        want_final: bool,
    ) -> Result<(f32, Option<RnnState>)> {
        self.check_head("train_step")?;
        self.check(batch, initial)?;
        batch.require_targets("train_step")?;
        optimizer.validate()?;
        let tied = optimizer.tie(&self.config.param_layout())?;
        let step_before = self.dropout_step;
        let dropout = self.draw_dropout();
        self.held = None;
        self.params_version += 1;
        let result = self.counted(|config, backend| {
            Self::run_train_step(
                config, backend, batch, initial, optimizer, want_final, dropout,
            )
        });
        if result.is_err() {
            // a refused step changes nothing, the dropout stream and the optimizer included
            self.dropout_step = step_before;
            if tied {
                optimizer.untie();
            }
        }
        result
    }

    fn run_train_step(
        config: &RnnConfig,
        backend: &mut Backend,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
        optimizer: &mut Optimizer,
        want_final: bool,
        dropout: Option<u64>,
    ) -> Result<(f32, Option<RnnState>)> {
        match backend {
            Backend::Cpu { params, ws } => {
                let loss = cpu::forward(config, params, batch, initial, dropout, ws);
                let mut grads = cpu::backward(config, params, batch, ws);
                check_finite_step(loss, all_finite(&grads))?;
                let last = want_final.then(|| cpu::final_state(config, batch, ws));
                optimizer.apply_cpu(params, &mut grads)?;
                Ok((loss, last))
            }
            Backend::Gpu(g) => {
                let whole = dropout.map(Dropout::whole);
                match g.train_step(config, batch, initial, whole, optimizer, want_final) {
                    Err(Error::ExceedsDeviceLimit { .. }) => {
                        // too large for the device in one piece: the gradient of the
                        // whole batch from chunks of it, then the same update
                        let (loss, grads, last) = split::gradients(
                            config,
                            batch,
                            initial,
                            dropout,
                            want_final,
                            |b, init, d, want| g.loss_and_gradients(config, b, init, d, want),
                        )?;
                        check_finite_step(loss, all_finite(&grads))?;
                        g.apply_gradients(&grads, optimizer)?;
                        Ok((loss, last))
                    }
                    result => result,
                }
            }
        }
    }

    /// The top layer's states at every step and the final states, for a model built
    /// around this network (any head; the readout is not applied). With
    /// [`Rnn::set_training`] on, dropout between layers applies as in a training step,
    /// and the [`Rnn::backward`] that follows uses the same masks.
    pub fn encode(&mut self, batch: &SequenceBatch) -> Result<Encoded> {
        self.check(batch, None)?;
        let dropout = if self.training {
            self.draw_dropout()
        } else {
            None
        };
        self.encode_seed = dropout;
        self.held = None;
        let encoded = self.counted(|config, backend| match backend {
            Backend::Cpu { params, ws } => {
                cpu::forward_layers(config, params, batch, None, dropout, ws);
                let last = cpu::final_state(config, batch, ws);
                Ok(Encoded {
                    states: cpu::top_states(config, batch, ws),
                    final_hidden: last.h,
                    final_cell: last.c,
                })
            }
            Backend::Gpu(g) => split::encode(batch, dropout, |b, d| g.encode(config, b, d)),
        })?;
        self.held = Some(Held {
            batch: batch.id(),
            params_version: self.params_version,
            dropout,
        });
        Ok(encoded)
    }

    /// Back-propagation from a gradient on the states [`Rnn::encode`] returned
    /// (`grad_states`, shaped like [`Encoded::states`]; every value must be finite, and
    /// those past each length have no effect): the gradient of every parameter (the
    /// readout's zero) and of each input sequence, through the recurrent layers' forward pass over `batch` with the dropout
    /// masks of the last `encode`. Right after the `encode` of the same batch (or a clone
    /// of it), with nothing in between but other `backward` passes of it — no other
    /// operation, no change of the parameters — that forward pass is still on the device,
    /// and only `grad_states` goes there: on a GPU nothing else is uploaded and the
    /// layers do not run again. Otherwise (another batch, even with equal content; the
    /// parameters changed; a batch split to fit the device) the layers run forward over
    /// `batch` again first, with the same results.
    pub fn backward(
        &mut self,
        batch: &SequenceBatch,
        grad_states: &Array3<f32>,
    ) -> Result<Gradients> {
        self.check(batch, None)?;
        let want = (batch.len(), batch.max_len(), self.config.state_width());
        if grad_states.dim() != want {
            return Err(Error::shape(
                "grad_states [batch, max_len, directions·hidden]",
                format!("{want:?}"),
                format!("{:?}", grad_states.dim()),
            ));
        }
        if let Some(((b, t, k), v)) = grad_states.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "grad_states".into(),
                detail: format!("sequence {b}, step {t}, unit {k} is {v}"),
            });
        }
        let dropout = self.encode_seed;
        let key = Held {
            batch: batch.id(),
            params_version: self.params_version,
            dropout,
        };
        let reuse = self.held.take() == Some(key);
        let gradients = self.counted(|config, backend| match backend {
            Backend::Cpu { params, ws } => {
                let (params, inputs) = if reuse {
                    cpu::encoder_backward_after_forward(config, params, batch, grad_states, ws)
                } else {
                    cpu::encoder_backward(config, params, batch, grad_states, dropout, ws)
                };
                Ok(Gradients { params, inputs })
            }
            Backend::Gpu(g) => {
                split::backward(config, batch, grad_states, dropout, |b, grad, d| {
                    g.backward(config, b, grad, d, reuse)
                })
            }
        })?;
        // the forward pass it went through stays (on a GPU, where the batch was not split)
        self.held = Some(key);
        Ok(gradients)
    }

    /// Applies gradients (from [`Rnn::backward`], or any with the model's shapes) with
    /// the optimizer, exactly as [`Rnn::train_step`] applies its own: clipping, the
    /// update, and the same refusal of non-finite steps.
    pub fn apply_gradients(&mut self, grads: &RnnParams, optimizer: &mut Optimizer) -> Result<()> {
        optimizer.validate()?;
        let mut grads = grads.clone().into_standard_layout();
        grads.validate_shapes(&self.config).map_err(|e| match e {
            Error::ShapeMismatch {
                what,
                expected,
                got,
            } => Error::ShapeMismatch {
                what: format!("gradient {what}"),
                expected,
                got,
            },
            e => e,
        })?;
        if !all_finite(&grads) {
            return Err(Error::NonFinite {
                what: "gradients".into(),
                detail: "some are not finite; the parameters were not updated".into(),
            });
        }
        let tied = optimizer.tie(&self.config.param_layout())?;
        self.params_version += 1;
        let result = self.counted(|_, backend| match backend {
            Backend::Cpu { params, .. } => optimizer.apply_cpu(params, &mut grads),
            Backend::Gpu(g) => g.apply_gradients(&grads, optimizer),
        });
        if result.is_err() && tied {
            optimizer.untie();
        }
        result
    }

    /// `forward` and `train_step` need a readout; an encoder is used through `encode`.
    fn check_head(&self, action: &str) -> Result<()> {
        if self.config.head == Head::None {
            return Err(Error::Unsupported(format!(
                "{action} needs a readout, and this model has Head::None: use Rnn::encode for its states and Rnn::backward with your own head's gradient"
            )));
        }
        Ok(())
    }

    /// Checks a batch and an initial state against the model.
    fn check(&self, batch: &SequenceBatch, initial: Option<&RnnState>) -> Result<()> {
        batch.check_against(&self.config)?;
        let Some(s) = initial else { return Ok(()) };
        let want = (
            self.config.num_units(),
            batch.len(),
            self.config.hidden_size,
        );
        let check = |what: &str, a: &Array3<f32>| {
            if a.dim() != want {
                return Err(Error::shape(
                    format!("{what} [layers·directions, batch, hidden]"),
                    format!("{want:?}"),
                    format!("{:?}", a.dim()),
                ));
            }
            if let Some(((l, b, h), v)) = a.indexed_iter().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: what.into(),
                    detail: format!("layer {l}, sequence {b}, unit {h} is {v}"),
                });
            }
            Ok(())
        };
        check("initial state h", &s.h)?;
        match (&s.c, self.config.cell.has_c()) {
            (Some(c), true) => check("initial cell state c", c),
            (None, true) => Err(Error::InvalidConfig {
                what: "initial state of an LSTM",
                expected: "both h and c",
                got: "h only".into(),
            }),
            (Some(_), false) => Err(Error::InvalidConfig {
                what: "initial cell state c",
                expected: "absent: only the LSTM has a cell state",
                got: format!("a c for a {} cell", self.config.cell),
            }),
            (None, false) => Ok(()),
        }
    }

    /// For the last GPU training step: host time spent recording, encoding and submitting
    /// it (until its last submission; a step with many dispatches submits its forward pass
    /// first, which the GPU runs meanwhile), and how many dispatches it held. `None` on
    /// the CPU.
    pub fn last_step_profile(&self) -> Option<(std::time::Duration, usize)> {
        match &self.backend {
            Backend::Cpu { .. } => None,
            Backend::Gpu(g) => Some((g.last_host, g.last_dispatches)),
        }
    }

    /// Chooses how the GPU path walks the time steps (see [`TimeLoop`]); all give the
    /// same numbers. Asking for the persistent loop with a hidden size it cannot handle
    /// is an error. Nothing to choose on the CPU.
    pub fn set_time_loop(&mut self, time_loop: TimeLoop) -> Result<()> {
        if time_loop == TimeLoop::Persistent
            && self.config.hidden_size > crate::gpu::PERSISTENT_MAX_HIDDEN
        {
            return Err(Error::InvalidConfig {
                what: "hidden_size for the persistent time loop",
                expected: "at most 256",
                got: self.config.hidden_size.to_string(),
            });
        }
        if let Backend::Gpu(g) = &mut self.backend {
            if g.time_loop != time_loop {
                // a backward pass walks time as the forward pass it follows did
                self.held = None;
            }
            g.time_loop = time_loop;
        }
        Ok(())
    }

    /// Measures on this model's GPU how to run a training pass over batches shaped like
    /// `batch` fastest, and keeps what it finds. For each matrix product the pass records
    /// (its shape not yet tuned on this device; where the time loops are compared, as
    /// below, a pass under tiled steps records its step products too), every tiling and
    /// K split is timed on operands of that shape and the fastest kept for every later
    /// product of that shape by any model on the same [`Device`] (its clones included); a
    /// shape whose trials would take longer than `budget` (estimated from one run) keeps
    /// its plan. Then, where the model's time loop is [`TimeLoop::Auto`] and the
    /// persistent loop does not apply, whole passes under a fused dispatch per step and
    /// under tiled steps are timed (where one pass takes at most an eighth of `budget`),
    /// and the faster is set as the model's time loop.
    ///
    /// The parameters, optimizer state and dropout masks are untouched; results change
    /// only by rounding (a different K split sums in another order). On the CPU there is
    /// nothing to tune: an empty report.
    pub fn autotune(
        &mut self,
        batch: &SequenceBatch,
        budget: std::time::Duration,
    ) -> Result<crate::gpu::Autotune> {
        use crate::gpu;
        let mut report = gpu::Autotune::default();
        let ctx = match &self.backend {
            Backend::Cpu { .. } => return Ok(report),
            Backend::Gpu(g) => g.context().clone(),
        };
        let batch_size = batch.packing().batch();
        let compare_loops = self.time_loop() == TimeLoop::Auto
            && !gpu::runs_persistent(&ctx, TimeLoop::Auto, self.config.hidden_size, batch_size);
        gpu::watch_products(&ctx);
        let mut pass = self.loss_and_gradients(batch).map(drop);
        if compare_loops && pass.is_ok() {
            // a pass under tiled steps too, so that its step products are tuned before
            // the loops are compared
            pass = self
                .set_time_loop(TimeLoop::TiledSteps)
                .and_then(|()| self.loss_and_gradients(batch).map(drop))
                .and(self.set_time_loop(TimeLoop::Auto));
        }
        let shapes = gpu::watched_products(&ctx);
        pass?;
        for shape in shapes {
            if shape.m == 0 || shape.n == 0 || shape.k == 0 || gpu::is_tuned(&ctx, shape) {
                continue;
            }
            match gpu::tune_product(&ctx, shape, budget)? {
                Some(tuned) => report.products.push(tuned),
                None => report.skipped.push(shape),
            }
        }
        if let Backend::Gpu(g) = &mut self.backend {
            // the next pass sizes its split scratch for the plans kept
            g.release_work();
            self.held = None;
        }
        if compare_loops {
            report.time_loops = self.time_the_loops(batch, budget)?;
        }
        Ok(report)
    }

    /// Times whole passes over `batch` under a fused dispatch per step and under tiled
    /// steps (fastest of three after one to warm up; none when one pass would take more
    /// than an eighth of `budget`) and keeps the faster; fastest first.
    fn time_the_loops(
        &mut self,
        batch: &SequenceBatch,
        budget: std::time::Duration,
    ) -> Result<Vec<(TimeLoop, std::time::Duration)>> {
        let mut timed = Vec::new();
        for time_loop in [TimeLoop::PerStep, TimeLoop::TiledSteps] {
            self.set_time_loop(time_loop)?;
            let start = std::time::Instant::now();
            self.loss_and_gradients(batch)?;
            if start.elapsed() > budget / 8 {
                self.set_time_loop(TimeLoop::Auto)?;
                return Ok(Vec::new());
            }
            let mut best = std::time::Duration::MAX;
            for _ in 0..3 {
                let start = std::time::Instant::now();
                self.loss_and_gradients(batch)?;
                best = best.min(start.elapsed());
            }
            timed.push((time_loop, best));
        }
        timed.sort_by_key(|&(_, t)| t);
        self.set_time_loop(timed[0].0)?;
        Ok(timed)
    }

    /// How the GPU path walks the time steps (see [`Rnn::set_time_loop`];
    /// [`TimeLoop::Auto`] on the CPU).
    pub fn time_loop(&self) -> TimeLoop {
        match &self.backend {
            Backend::Cpu { .. } => TimeLoop::Auto,
            Backend::Gpu(g) => g.time_loop,
        }
    }

    /// Runs `op` on the backend, noting what it moved to and from a GPU.
    fn counted<R>(&mut self, op: impl FnOnce(&RnnConfig, &mut Backend) -> Result<R>) -> Result<R> {
        let before = self.device_transfers();
        let result = op(&self.config, &mut self.backend);
        self.last_transfers = before
            .zip(self.device_transfers())
            .map(|(before, after)| after.since(&before));
        result
    }

    /// What went to and from the model's GPU so far (`None` on the CPU).
    fn device_transfers(&self) -> Option<Transfers> {
        match &self.backend {
            Backend::Cpu { .. } => None,
            Backend::Gpu(g) => Some(g.transfers()),
        }
    }

    /// See [`crate::internals::gpu::last_transfers`].
    pub(crate) fn last_transfers(&self) -> Option<Transfers> {
        self.last_transfers
    }

    /// A copy of the current parameters (read back from the GPU on a GPU device).
    pub fn params(&self) -> Result<RnnParams> {
        match &self.backend {
            Backend::Cpu { params, .. } => Ok(params.clone()),
            Backend::Gpu(g) => g.params(&self.config),
        }
    }
}

fn all_finite(grads: &RnnParams) -> bool {
    // a whole chunk at a time without stopping early, so that the test vectorises (an
    // early exit per scalar made it 2 ms of a 1.3 M-parameter step)
    grads.tensors().iter().all(|(_, t)| {
        t.chunks(1024)
            .all(|c| c.iter().fold(true, |ok, g| ok & g.is_finite()))
    })
}

pub(crate) fn check_finite_step(loss: f32, grads_finite: bool) -> Result<()> {
    if !loss.is_finite() || !grads_finite {
        return Err(Error::NonFinite {
            what: "training step".into(),
            detail: format!(
                "loss is {loss}{}; the parameters were not updated (lower the learning rate or clip the gradients)",
                if grads_finite { "" } else { " and some gradients are not finite" }
            ),
        });
    }
    Ok(())
}
