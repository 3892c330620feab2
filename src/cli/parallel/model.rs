//! The model a command trains: one process's [`Rnn`], or in a data-parallel job a
//! [`DataParallel`](unfold::distributed::DataParallel) whose steps split the global batch
//! across the ranks. It dereferences to the [`Rnn`] for everything else (forward passes,
//! sampling, the parameters), which is the same on every rank.

#[cfg(feature = "mpi")]
use super::{job, Agreed, Job};
use crate::cli::CliResult;
use std::ops::{Deref, DerefMut};
use unfold::{Device, Optimizer, Result, Rnn, RnnConfig, RnnParams, RnnState, SequenceBatch};

#[cfg(feature = "mpi")]
use unfold::distributed::{
    mpi::topology::SimpleCommunicator, select, shard_range, split_batch, split_state, DataParallel,
    Split,
};

/// See the module docs.
pub enum Model {
    Single(Box<Rnn>),
    #[cfg(feature = "mpi")]
    Parallel(Box<DataParallel<SimpleCommunicator>>, Job),
}

impl Model {
    /// The model on `device` (collective in a job). In a job, the ranks first compare
    /// fingerprints of the model and of `fingerprint` (what else they must agree on: the
    /// vocabulary, the data, the settings), then take rank 0's parameters and optimizer
    /// state; a mismatch stops every rank with the same message.
    pub fn new(
        config: RnnConfig,
        params: RnnParams,
        device: &Device,
        fingerprint: &[u8],
        optimizer: &mut Optimizer,
    ) -> CliResult<Model> {
        #[cfg(feature = "mpi")]
        if let Some(job) = job() {
            let world = SimpleCommunicator::world();
            let dp = DataParallel::with_fingerprint(world, config, params, device, fingerprint)
                .map_err(agreed)?;
            dp.sync_optimizer(optimizer).map_err(agreed)?;
            return Ok(Model::Parallel(Box::new(dp), job));
        }
        let _ = (fingerprint, &optimizer);
        Ok(Model::Single(Box::new(Rnn::new(config, params, device)?)))
    }

    /// `rnn` as the model of this process, or in a job (collective) a data-parallel copy
    /// of it on `device` with rank 0's parameters, optimizer state and dropout stream,
    /// after the ranks compared fingerprints as [`Model::new`].
    pub fn adopt(
        rnn: Rnn,
        device: &Device,
        fingerprint: &[u8],
        optimizer: &mut Optimizer,
    ) -> CliResult<Model> {
        #[cfg(feature = "mpi")]
        if job().is_some() {
            let dropout = rnn.dropout_state();
            let mut model = Model::new(
                rnn.config().clone(),
                rnn.params()?,
                device,
                fingerprint,
                optimizer,
            )?;
            model.restore_dropout_state(dropout);
            return Ok(model);
        }
        let _ = (device, fingerprint, &optimizer);
        Ok(Model::Single(Box::new(rnn)))
    }

    /// One training step on `batch`, the global batch (the same on every rank): in a job
    /// each rank trains its share of the sequences (balanced by their steps). Returns the
    /// mean loss over the whole batch.
    pub fn train_step(&mut self, batch: &SequenceBatch, optimizer: &mut Optimizer) -> Result<f32> {
        match self {
            Model::Single(rnn) => rnn.train_step(batch, optimizer),
            #[cfg(feature = "mpi")]
            Model::Parallel(dp, job) => {
                let shard = split_batch(batch, job.rank, job.size, Split::BalancedSteps)?;
                dp.train_step(shard.as_ref(), optimizer)
                    .map_err(agreed_error)
            }
        }
    }

    /// One step of truncated back-propagation through time over streams: `batch` holds a
    /// chunk of every stream (the same on every rank), `carried` this rank's streams'
    /// state ([`Model::my_streams`]). In a job each rank trains a contiguous block of the
    /// streams. Returns the mean loss over the whole batch and this rank's streams'
    /// final state.
    pub fn train_step_from(
        &mut self,
        batch: &SequenceBatch,
        carried: Option<&RnnState>,
        optimizer: &mut Optimizer,
    ) -> Result<(f32, Option<RnnState>)> {
        match self {
            Model::Single(rnn) => {
                let (loss, last) = rnn.train_step_from(batch, carried, optimizer)?;
                Ok((loss, Some(last)))
            }
            #[cfg(feature = "mpi")]
            Model::Parallel(dp, job) => {
                let mine: Vec<usize> = shard_range(batch.len(), job.rank, job.size).collect();
                let shard = if mine.is_empty() {
                    None
                } else {
                    Some(select(batch, &mine)?)
                };
                dp.train_step_from(shard.as_ref(), carried, optimizer)
                    .map_err(agreed_error)
            }
        }
    }

    /// This rank's part of the state of every stream ([`Model::train_step_from`]'s
    /// `carried`): all of it for one process.
    pub fn my_streams(&self, all: Option<RnnState>) -> Option<RnnState> {
        match self {
            Model::Single(_) => all,
            #[cfg(feature = "mpi")]
            Model::Parallel(_, job) => all.and_then(|a| split_state(&a, job.rank, job.size)),
        }
    }

    /// The state of all `streams` streams from each rank's part (collective in a job), as
    /// one process carrying them all would hold it, for a checkpoint; `None` before the
    /// first step of a pass.
    pub fn all_streams(
        &self,
        mine: Option<&RnnState>,
        streams: usize,
    ) -> CliResult<Option<RnnState>> {
        match self {
            Model::Single(rnn) => {
                debug_assert!(mine
                    .is_none_or(|s| s.h.dim()
                        == (rnn.config().num_units(), streams, rnn.config().hidden_size)));
                Ok(mine.cloned())
            }
            #[cfg(feature = "mpi")]
            Model::Parallel(dp, _) => {
                // rank 0 always carries streams: whether it holds a state is everyone's
                if !super::root_decides(mine.is_some()) {
                    return Ok(None);
                }
                Ok(Some(dp.gather_state(mine, streams).map_err(agreed)?))
            }
        }
    }

    /// Continues the dropout masks of a saved state (as [`Rnn::restore_dropout_state`]).
    pub fn restore_dropout_state(&mut self, state: (u64, u64)) {
        match self {
            Model::Single(rnn) => rnn.restore_dropout_state(state),
            #[cfg(feature = "mpi")]
            Model::Parallel(dp, _) => dp.restore_dropout_state(state),
        }
    }
}

impl Deref for Model {
    type Target = Rnn;

    fn deref(&self) -> &Rnn {
        match self {
            Model::Single(rnn) => rnn,
            #[cfg(feature = "mpi")]
            Model::Parallel(dp, _) => dp.rnn(),
        }
    }
}

impl DerefMut for Model {
    /// For what does not change the parameters: forward passes, sampling.
    fn deref_mut(&mut self) -> &mut Rnn {
        match self {
            Model::Single(rnn) => rnn,
            #[cfg(feature = "mpi")]
            Model::Parallel(dp, _) => dp.rnn_mut(),
        }
    }
}

/// A library error that every rank returned at once, as the command line's [`Agreed`].
#[cfg(feature = "mpi")]
fn agreed(e: unfold::Error) -> Box<dyn std::error::Error> {
    Box::new(Agreed(e.to_string()))
}

/// A step's error, the same on every rank (the wrapper refuses on every rank at once), as
/// an error that says so ([`unfold::Error::Distributed`]).
#[cfg(feature = "mpi")]
fn agreed_error(e: unfold::Error) -> unfold::Error {
    match e {
        unfold::Error::Distributed(_) => e,
        other => unfold::Error::Distributed(other.to_string()),
    }
}
