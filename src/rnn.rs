//! `Rnn`: a model bound to a device, with the operations of the public API.

use crate::batch::SequenceBatch;
use crate::cpu::{self, Workspace};
use crate::device::DeviceKind;
use crate::gpu::{GpuRnn, TimeLoop};
use crate::model::{RnnConfig, RnnParams};
use crate::optim::Optimizer;
use crate::{Device, Error, Result};
use ndarray::Array3;

/// What a forward pass returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// `[batch, max_len, output]`, zero past each length; `[batch, 1, output]` for the
    /// last-step head.
    pub outputs: Array3<f32>,
    /// `[num_layers, batch, hidden]`: each sequence's state at its own last valid step.
    pub final_hidden: Array3<f32>,
    pub loss: f32,
}

/// An RNN with its parameters on a device.
pub struct Rnn {
    config: RnnConfig,
    backend: Backend,
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
        Ok(Rnn { config, backend })
    }

    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    /// Outputs, final states and loss of `batch`, from a zero initial state.
    pub fn forward(&mut self, batch: &SequenceBatch) -> Result<Forward> {
        self.forward_from(batch, None)
    }

    /// [`Rnn::forward`] from an initial state `[num_layers, batch, hidden]` (`None`: zeros),
    /// for carrying the state from one chunk of a long sequence to the next.
    pub fn forward_from(
        &mut self,
        batch: &SequenceBatch,
        initial: Option<&Array3<f32>>,
    ) -> Result<Forward> {
        self.check(batch, initial)?;
        let initial = initial.map(|s| s.view());
        match &mut self.backend {
            Backend::Cpu { params, ws } => {
                let loss = cpu::forward(&self.config, params, batch, initial, ws);
                Ok(Forward {
                    outputs: cpu::outputs(&self.config, batch, ws),
                    final_hidden: cpu::final_hidden(&self.config, batch, ws),
                    loss,
                })
            }
            Backend::Gpu(g) => g.forward(&self.config, batch, initial),
        }
    }

    /// The loss of `batch` and its gradient with respect to every parameter.
    pub fn loss_and_gradients(&mut self, batch: &SequenceBatch) -> Result<(f32, RnnParams)> {
        self.loss_and_gradients_from(batch, None)
    }

    /// [`Rnn::loss_and_gradients`] from an initial state (no gradient flows into it).
    pub fn loss_and_gradients_from(
        &mut self,
        batch: &SequenceBatch,
        initial: Option<&Array3<f32>>,
    ) -> Result<(f32, RnnParams)> {
        self.check(batch, initial)?;
        let initial = initial.map(|s| s.view());
        match &mut self.backend {
            Backend::Cpu { params, ws } => {
                let loss = cpu::forward(&self.config, params, batch, initial, ws);
                let grads = cpu::backward(&self.config, params, batch, initial, ws);
                Ok((loss, grads))
            }
            Backend::Gpu(g) => g.loss_and_gradients(&self.config, batch, initial),
        }
    }

    /// One training step: forward, back-propagation through time, optional clipping and
    /// the optimizer's update. Returns the loss before the update. A step whose loss or
    /// gradients are not finite, or whose update would make a parameter or an optimizer
    /// moment non-finite (overflow f32), is refused with [`Error::NonFinite`] and changes
    /// nothing: parameters, moments and the optimizer's step count stay as they were.
    pub fn train_step(&mut self, batch: &SequenceBatch, optimizer: &mut Optimizer) -> Result<f32> {
        Ok(self.train_step_inner(batch, None, optimizer, false)?.0)
    }

    /// [`Rnn::train_step`] from an initial state `[num_layers, batch, hidden]` (`None`:
    /// zeros), returning the loss and each sequence's final state — computed with the
    /// parameters before the update — to start the next chunk from. This is truncated
    /// back-propagation through time: no gradient flows into `initial`.
    pub fn train_step_from(
        &mut self,
        batch: &SequenceBatch,
        initial: Option<&Array3<f32>>,
        optimizer: &mut Optimizer,
    ) -> Result<(f32, Array3<f32>)> {
        let (loss, last) = self.train_step_inner(batch, initial, optimizer, true)?;
        Ok((loss, last.expect("asked for the final state")))
    }

    fn train_step_inner(
        &mut self,
        batch: &SequenceBatch,
        initial: Option<&Array3<f32>>,
        optimizer: &mut Optimizer,
        want_final: bool,
    ) -> Result<(f32, Option<Array3<f32>>)> {
        self.check(batch, initial)?;
        optimizer.validate()?;
        let initial = initial.map(|s| s.view());
        match &mut self.backend {
            Backend::Cpu { params, ws } => {
                let loss = cpu::forward(&self.config, params, batch, initial, ws);
                let mut grads = cpu::backward(&self.config, params, batch, initial, ws);
                check_finite_step(
                    loss,
                    grads
                        .tensors()
                        .iter()
                        .all(|(_, t)| t.iter().all(|g| g.is_finite())),
                )?;
                let last = want_final.then(|| cpu::final_hidden(&self.config, batch, ws));
                optimizer.apply_cpu(params, &mut grads)?;
                Ok((loss, last))
            }
            Backend::Gpu(g) => g.train_step(&self.config, batch, initial, optimizer, want_final),
        }
    }

    /// Checks a batch and an initial state against the model.
    fn check(&self, batch: &SequenceBatch, initial: Option<&Array3<f32>>) -> Result<()> {
        batch.check_against(&self.config)?;
        if let Some(s) = initial {
            let want = (self.config.num_layers, batch.len(), self.config.hidden_size);
            if s.dim() != want {
                return Err(Error::shape(
                    "initial state [num_layers, batch, hidden]",
                    format!("{want:?}"),
                    format!("{:?}", s.dim()),
                ));
            }
            if let Some(((l, b, h), v)) = s.indexed_iter().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: "initial state".into(),
                    detail: format!("layer {l}, sequence {b}, unit {h} is {v}"),
                });
            }
        }
        Ok(())
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
            g.time_loop = time_loop;
        }
        Ok(())
    }

    /// A copy of the current parameters (read back from the GPU on a GPU device).
    pub fn params(&self) -> Result<RnnParams> {
        match &self.backend {
            Backend::Cpu { params, .. } => Ok(params.clone()),
            Backend::Gpu(g) => g.params(&self.config),
        }
    }
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
