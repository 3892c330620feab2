//! Data-parallel training across processes and machines on MPI (feature `mpi`).
//!
//! Every process (rank) holds a copy of the model; each step, every rank computes the
//! gradients of its own shard of the global batch, the ranks sum them in one allreduce,
//! and every rank applies the identical optimizer step, so the copies stay identical.
//! The result is the training step of one process on the whole global batch:
//!
//! - **Start.** [`DataParallel::new`] exchanges a fingerprint of every rank's
//!   configuration (and of what the caller adds: vocabulary, data), refuses a mismatch on
//!   every rank with one message, then broadcasts rank 0's parameters.
//! - **Weighting.** The model's loss is a mean over its loss terms: valid positions for
//!   the per-step head, sequences for the last-step head (value targets also average over
//!   the output units, the same factor on every shard). Rank `r` holds the mean `L_r`
//!   over its `n_r` terms and its gradient `g_r`; the global mean is `Σ n_r L_r / N` with
//!   `N = Σ n_r`, and its gradient `Σ n_r g_r / N`. So each rank sends `n_r · g_r`,
//!   `n_r · L_r` and `n_r` in **one flat f32 buffer, summed by one allreduce** per step,
//!   and divides by `N` afterwards. Shards of different sizes or total lengths weigh
//!   exactly as in one process; a rank may even hold no shard at all.
//! - **Update.** Clipping, the update and its refusals are [`Rnn::apply_gradients`]'s,
//!   i.e. [`Rnn::train_step`]'s, applied to the averaged gradient: the clipping norm is
//!   the global one. A non-finite loss or gradient on any rank makes the summed buffer
//!   non-finite on every rank, so every rank refuses the step ([`Error::NonFinite`]) and
//!   nothing changes anywhere.
//! - **Streams and dropout.** [`DataParallel::train_step_from`] carries each rank's own
//!   sequences' state from chunk to chunk (truncated back-propagation through time over
//!   streams split across ranks). Each rank draws its dropout masks from its own stream,
//!   rank 0 from the one a single process would use.
//! - **Faults.** A rank whose own part fails (a shard that does not fit the model, a GPU
//!   error) still takes part in the allreduce, with a flag; every rank then returns the
//!   same [`Error::Distributed`] carrying each failed rank's message, instead of the
//!   others waiting forever. A rank that dies is MPI's business: `mpirun` ends the job.
//!
//! The wrapper calls MPI only from the thread that calls it; initialise MPI with at least
//! `Threading::Funneled` (the model's own threads never call MPI).
//!
//! ```no_run
//! use unfold::distributed::{mpi, split_batch, DataParallel, Split};
//! use unfold::{Device, Optimizer, RnnConfig, RnnParams};
//! # fn global_batch(step: usize) -> unfold::SequenceBatch { unimplemented!() }
//!
//! let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled).unwrap();
//! let world = universe.world();
//! let config = RnnConfig::new(2, 8, 3);
//! // only rank 0's parameters count: they are broadcast
//! let params = RnnParams::init(&config, 0);
//! let mut dp = DataParallel::new(world, config, params, &Device::cpu())?;
//! let mut adam = Optimizer::adam(1e-2).clip_grad_norm(1.0);
//! for step in 0..100 {
//!     let batch = global_batch(step); // the same global batch on every rank
//!     let shard = split_batch(&batch, dp.rank(), dp.size(), Split::Contiguous)?;
//!     let loss = dp.train_step(shard.as_ref(), &mut adam)?; // the global mean loss
//!     if dp.is_root() {
//!         println!("step {step}: loss {loss}");
//!     }
//! }
//! # Ok::<(), unfold::Error>(())
//! ```

use crate::optim::State;
use crate::rng::SplitMix64;
use crate::rnn::check_finite_step;
use crate::{
    Device, Error, Head, Optimizer, OptimizerState, Result, Rnn, RnnConfig, RnnParams, RnnState,
    SequenceBatch, Targets,
};
pub use mpi;
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Elements after the gradients in the step's buffer: `n_r · L_r`, `n_r`, failed ranks,
/// Σ (failed rank + 1), ranks with non-finite values, Σ (their rank + 1).
const TAIL: usize = 6;

/// Where the time of the last [`DataParallel::train_step`] went on this rank.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepProfile {
    /// This rank's forward and backward pass over its shard (with the GPU's read-back).
    pub compute: Duration,
    /// Weighting the gradients into the buffer, the allreduce (including the wait for
    /// the slowest rank) and reading the result out.
    pub allreduce: Duration,
    /// Clipping and the optimizer's update ([`Rnn::apply_gradients`]).
    pub update: Duration,
    /// This rank's loss terms (its weight `n_r`).
    pub local_terms: usize,
    /// The global batch's loss terms (`N`).
    pub global_terms: usize,
    /// Bytes each rank contributes to the allreduce: the gradients and the tail, in f32.
    pub buffer_bytes: usize,
}

/// A model trained data-parallel over the ranks of an MPI communicator (see the module
/// docs). Every rank must make the same calls in the same order: construction,
/// [`DataParallel::train_step`], [`DataParallel::sync_optimizer`] and
/// [`DataParallel::check_in_sync`] are collective.
pub struct DataParallel<C: Communicator = SimpleCommunicator> {
    comm: C,
    rnn: Rnn,
    rank: usize,
    size: usize,
    /// The dropout seed as the caller gave it (each rank draws from its own mix of it).
    dropout_seed: u64,
    /// Gradient scalars.
    n: usize,
    send: Vec<f32>,
    recv: Vec<f32>,
    grads: RnnParams,
    profile: StepProfile,
}

/// What each rank contributes to the start-up check, in `u64`s.
const RECORD: usize = 5;
/// The record's status values.
const OK: u64 = 0;
const BAD_CONFIG: u64 = 1;
const BAD_PARAMS: u64 = 2;

impl<C: Communicator> DataParallel<C> {
    /// [`DataParallel::with_fingerprint`] with nothing added to the model's fingerprint.
    pub fn new(comm: C, config: RnnConfig, params: RnnParams, device: &Device) -> Result<Self> {
        Self::with_fingerprint(comm, config, params, device, &[])
    }

    /// Binds a model to `device` on every rank of `comm` (collective). `params` count on
    /// rank 0 only: they are checked there and broadcast, and the other ranks' are
    /// replaced (give them [`RnnParams::zeros`] or the same initialisation). First the
    /// ranks compare fingerprints of their configuration, parameter count, unfold version
    /// and `extra` (anything else they must agree on: the vocabulary, a digest of the
    /// data); on any disagreement, or a rank that cannot build the model, every rank
    /// returns the same [`Error::Distributed`] naming the ranks and what differs.
    ///
    /// Each rank's dropout masks come from their own stream (rank 0's is the one a single
    /// process would use; see [`DataParallel::set_dropout_seed`]).
    pub fn with_fingerprint(
        comm: C,
        config: RnnConfig,
        params: RnnParams,
        device: &Device,
        extra: &[u8],
    ) -> Result<Self> {
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        let n = config.num_params();
        // what this rank brings: its status and fingerprints
        let mut local_error = None;
        let status = if let Err(e) = config.validate() {
            local_error = Some(e);
            BAD_CONFIG
        } else if rank == 0 {
            match params.validate(&config) {
                Ok(()) => OK,
                Err(e) => {
                    local_error = Some(e);
                    BAD_PARAMS
                }
            }
        } else {
            OK
        };
        let record: [u64; RECORD] = [
            status,
            fnv1a(format!("{config:?}").as_bytes()),
            n as u64,
            fnv1a(extra),
            fnv1a(env!("CARGO_PKG_VERSION").as_bytes()),
        ];
        let mut all = vec![0u64; RECORD * size];
        comm.all_gather_into(&record[..], &mut all[..]);
        let records: Vec<&[u64]> = all.chunks(RECORD).collect();
        if records.iter().any(|r| r[0] != OK) {
            let failed: Vec<usize> = (0..size).filter(|&r| records[r][0] != OK).collect();
            let messages = exchange_messages(&comm, local_error.map(|e| e.to_string()));
            return Err(Error::Distributed(format!(
                "{} could not start: {}",
                ranks_phrase(&failed),
                messages.join("; ")
            )));
        }
        if let Some(msg) = disagreement(&records) {
            return Err(Error::Distributed(msg));
        }

        // rank 0's parameters to everyone
        let mut flat = if rank == 0 {
            params.into_standard_layout().to_flat()
        } else {
            vec![0.0f32; n]
        };
        comm.process_at_rank(0).broadcast_into(&mut flat[..]);
        let mut params = RnnParams::zeros(&config);
        params.assign_flat(&flat)?;
        let built = Rnn::new(config.clone(), params, device);
        let mut rnn = agree(&comm, built, "could not build the model")?;
        rnn.set_dropout_seed(rank_seed(0x5eed, rank));
        Ok(DataParallel {
            comm,
            rnn,
            rank,
            size,
            dropout_seed: 0x5eed,
            n,
            send: vec![0.0; n + TAIL],
            recv: vec![0.0; n + TAIL],
            grads: RnnParams::zeros(&config),
            profile: StepProfile::default(),
        })
    }

    /// This process's rank in the communicator.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this is rank 0, the one that should print and write files.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// The communicator.
    pub fn communicator(&self) -> &C {
        &self.comm
    }

    /// The model (identical on every rank after every step).
    pub fn rnn(&self) -> &Rnn {
        &self.rnn
    }

    /// The model, for what does not change its parameters (forward passes, the time
    /// loop): changing them on one rank only breaks the ranks' agreement.
    pub fn rnn_mut(&mut self) -> &mut Rnn {
        &mut self.rnn
    }

    /// The model, leaving the communicator.
    pub fn into_rnn(self) -> Rnn {
        self.rnn
    }

    /// Seeds the dropout masks of the steps that follow: rank 0 draws from `seed` as a
    /// single process would ([`Rnn::set_dropout_seed`]), every other rank from its own
    /// stream derived from `seed` and its rank, so that shards do not share masks.
    pub fn set_dropout_seed(&mut self, seed: u64) {
        self.dropout_seed = seed;
        self.rnn.set_dropout_seed(rank_seed(seed, self.rank));
    }

    /// The dropout seed (as given to [`DataParallel::set_dropout_seed`]) and the number of
    /// training passes that drew masks from it, the same on every rank: to save with a
    /// checkpoint, as [`Rnn::dropout_state`].
    pub fn dropout_state(&self) -> (u64, u64) {
        (self.dropout_seed, self.rnn.dropout_state().1)
    }

    /// Continues the dropout masks of a saved [`DataParallel::dropout_state`] (each rank
    /// its own stream, as [`DataParallel::set_dropout_seed`]).
    pub fn restore_dropout_state(&mut self, (seed, step): (u64, u64)) {
        self.dropout_seed = seed;
        self.rnn
            .restore_dropout_state((rank_seed(seed, self.rank), step));
    }

    /// Where the time of the last step went on this rank.
    pub fn last_step_profile(&self) -> StepProfile {
        self.profile
    }

    /// One data-parallel training step (collective): this rank's `shard` of the global
    /// batch (`None` when it has none this step), gradients summed over the ranks with
    /// one allreduce, then [`Rnn::apply_gradients`] on every rank. Returns the mean loss
    /// over the whole global batch before the update, the same on every rank. The
    /// refusals are [`Rnn::train_step`]'s, on every rank at once (a refused step changes
    /// nothing: parameters, optimizer, dropout stream); a rank whose own part fails makes
    /// every rank return the same [`Error::Distributed`], and a step in which no rank has
    /// a shard is refused the same way.
    pub fn train_step(
        &mut self,
        shard: Option<&SequenceBatch>,
        optimizer: &mut Optimizer,
    ) -> Result<f32> {
        Ok(self.step(shard, None, false, optimizer)?.0)
    }

    /// [`DataParallel::train_step`] from an initial state of this rank's sequences
    /// (`None`: zeros), returning the global mean loss and the final state of this rank's
    /// sequences (computed with the parameters before the update; `None` without a
    /// shard), to start its next chunk from: truncated back-propagation through time over
    /// streams split across ranks, as [`Rnn::train_step_from`]. Not for bidirectional
    /// models.
    pub fn train_step_from(
        &mut self,
        shard: Option<&SequenceBatch>,
        initial: Option<&RnnState>,
        optimizer: &mut Optimizer,
    ) -> Result<(f32, Option<RnnState>)> {
        if self.rnn.config().bidirectional {
            // the same on every rank (same model), so no rank waits for another
            return Err(Error::Unsupported(
                "truncated back-propagation through time (train_step_from) needs a unidirectional model: the reverse direction of a bidirectional one reads each whole sequence".into(),
            ));
        }
        self.step(shard, initial, true, optimizer)
    }

    fn step(
        &mut self,
        shard: Option<&SequenceBatch>,
        initial: Option<&RnnState>,
        want_final: bool,
        optimizer: &mut Optimizer,
    ) -> Result<(f32, Option<RnnState>)> {
        let dropout_before = self.rnn.dropout_state();
        let result = self.run_step(shard, initial, want_final, optimizer);
        if result.is_err() {
            self.rnn.restore_dropout_state(dropout_before);
        }
        result
    }

    fn run_step(
        &mut self,
        shard: Option<&SequenceBatch>,
        initial: Option<&RnnState>,
        want_final: bool,
        optimizer: &mut Optimizer,
    ) -> Result<(f32, Option<RnnState>)> {
        let start = Instant::now();
        let n = self.n;
        let local = match shard {
            None => optimizer.validate().map(|()| None),
            Some(batch) => optimizer.validate().and_then(|()| {
                let (loss, grads, last) = self
                    .rnn
                    .training_loss_and_gradients(batch, initial, want_final)?;
                Ok(Some((
                    loss,
                    grads,
                    last,
                    loss_terms(self.rnn.config(), batch),
                )))
            }),
        };
        let mut last = None;
        let computed = Instant::now();

        // n_r · g_r, n_r · L_r, n_r and the flags in one buffer
        let (send, rank1) = (&mut self.send, (self.rank + 1) as f32);
        send.fill(0.0);
        let mut local_terms = 0;
        let mut local_error = None;
        match local {
            Ok(None) => {}
            Ok(Some((loss, grads, final_state, terms))) => {
                local_terms = terms;
                last = final_state;
                let w = terms as f32;
                let mut finite = loss.is_finite();
                let mut at = 0;
                for (_, t) in grads.tensors() {
                    for (dst, &g) in send[at..at + t.len()].iter_mut().zip(t) {
                        finite &= g.is_finite();
                        *dst = w * g;
                    }
                    at += t.len();
                }
                debug_assert_eq!(at, n);
                send[n] = w * loss;
                send[n + 1] = w;
                if !finite {
                    send[n + 4] = 1.0;
                    send[n + 5] = rank1;
                }
            }
            Err(e) => {
                send[n + 2] = 1.0;
                send[n + 3] = rank1;
                local_error = Some(e.to_string());
            }
        }
        self.comm
            .all_reduce_into(&send[..], &mut self.recv[..], SystemOperation::sum());
        let recv = &self.recv;
        let (loss_sum, total, failed, failed_rank1, non_finite, non_finite_rank1) = (
            recv[n],
            recv[n + 1],
            recv[n + 2],
            recv[n + 3],
            recv[n + 4],
            recv[n + 5],
        );
        self.profile = StepProfile {
            compute: computed - start,
            allreduce: computed.elapsed(),
            update: Duration::ZERO,
            local_terms,
            global_terms: total as usize,
            buffer_bytes: (n + TAIL) * std::mem::size_of::<f32>(),
        };

        if failed > 0.0 {
            // every rank sees the flag: gather the failed ranks' messages (collective)
            let messages = exchange_messages(&self.comm, local_error);
            let who = if failed == 1.0 {
                format!("rank {}", failed_rank1 as usize - 1)
            } else {
                format!("{failed} ranks")
            };
            return Err(Error::Distributed(format!(
                "the step failed on {who}, so no rank updated: {}",
                messages.join("; ")
            )));
        }
        if total == 0.0 {
            return Err(Error::Distributed(
                "no rank had a shard with loss terms this step: the global batch is empty".into(),
            ));
        }
        let loss = loss_sum / total;
        if non_finite > 0.0 {
            let who = if non_finite == 1.0 {
                format!("rank {}", non_finite_rank1 as usize - 1)
            } else {
                format!("{non_finite} ranks")
            };
            // the summed loss or gradients are not finite: refused on every rank, as
            // Rnn::train_step refuses it
            check_finite_step(loss, false).map_err(|e| match e {
                Error::NonFinite { what, detail } => Error::NonFinite {
                    what,
                    detail: format!("on {who}: {detail}"),
                },
                e => e,
            })?;
        }
        let update = Instant::now();
        let avg: Vec<f32> = recv[..n].iter().map(|&g| g / total).collect();
        self.grads.assign_flat(&avg)?;
        // refuses non-finite sums too (the flags above catch a rank's own non-finite
        // values; a sum can still overflow)
        check_finite_step(loss, true)?;
        let applied = self.rnn.apply_gradients(&self.grads, optimizer);
        self.profile.update = update.elapsed();
        applied.map(|()| (loss, last))
    }

    /// Gives every rank rank 0's optimizer state (collective): its step count and
    /// moments, or a fresh state where rank 0 has none yet. For a run resumed from a
    /// checkpoint that only rank 0 read. The ranks must agree on the update rule, its
    /// hyper-parameters and clipping; otherwise every rank returns the same error.
    pub fn sync_optimizer(&self, optimizer: &mut Optimizer) -> Result<()> {
        let hyper = fnv1a(format!("{:?} {:?}", optimizer.kind(), optimizer.clip()).as_bytes());
        let mut all = vec![0u64; self.size];
        self.comm.all_gather_into(&hyper, &mut all[..]);
        let differ: Vec<usize> = (1..self.size).filter(|&r| all[r] != all[0]).collect();
        if !differ.is_empty() {
            return Err(Error::Distributed(format!(
                "{} disagree{} with rank 0 on the optimizer (update rule, its hyper-parameters or clipping)",
                ranks_phrase(&differ),
                if differ.len() == 1 { "s" } else { "" }
            )));
        }
        let layout = self.rnn.config().param_layout();
        let exported = if self.rank == 0 {
            // a state tied to other parameters would be refused on rank 0 alone later
            optimizer.export_state().and_then(|s| match s {
                Some(s) if !s.layout.is_empty() && s.layout != layout => {
                    Err(Error::OptimizerMismatch(
                        "rank 0's optimizer state is for other parameters than this model's".into(),
                    ))
                }
                s => Ok(s),
            })
        } else {
            Ok(None)
        };
        let state = agree(&self.comm, exported, "could not read the optimizer's state")?;
        // header: has state, steps, |m|, |v|, whether it names its parameters
        let mut header = match &state {
            Some(s) => [
                1u64,
                s.steps,
                s.m.len() as u64,
                s.v.len() as u64,
                u64::from(!s.layout.is_empty()),
            ],
            None => [0u64; 5],
        };
        let root = self.comm.process_at_rank(0);
        root.broadcast_into(&mut header[..]);
        if header[0] == 0 {
            if self.rank != 0 {
                optimizer.state = State::Fresh;
                optimizer.steps = 0;
                optimizer.untie();
            }
            return Ok(());
        }
        let (mut m, mut v) = match state {
            Some(s) => (s.m, s.v),
            None => (vec![0.0; header[2] as usize], vec![0.0; header[3] as usize]),
        };
        if !m.is_empty() {
            root.broadcast_into(&mut m[..]);
        }
        if !v.is_empty() {
            root.broadcast_into(&mut v[..]);
        }
        let imported = if self.rank == 0 {
            Ok(())
        } else {
            optimizer.import_state(OptimizerState {
                // the same model on every rank (checked at the start)
                layout: if header[4] != 0 { layout } else { Vec::new() },
                steps: header[1],
                m,
                v,
            })
        };
        agree(
            &self.comm,
            imported,
            "could not take rank 0's optimizer state",
        )
    }

    /// The carried state of all `streams` sequences (collective), on every rank, from each
    /// rank's state of its [`shard_range`] of them (`None` for a rank without streams):
    /// `[layers·directions, streams, hidden]`, as one process carrying every stream would
    /// hold it. For a checkpoint written by rank 0 that any number of ranks can resume
    /// from ([`split_state`]).
    pub fn gather_state(&self, mine: Option<&RnnState>, streams: usize) -> Result<RnnState> {
        let config = self.rnn.config();
        let (units, hidden) = (config.num_units(), config.hidden_size);
        let rows = |r: usize| shard_range(streams, r, self.size).len();
        let want = (units, rows(self.rank), hidden);
        let has_c = config.cell.has_c();
        let local = match mine {
            _ if want.1 == 0 => Ok(None),
            None => Err(Error::InvalidConfig {
                what: "this rank's carried state",
                expected: "present: the rank carries streams",
                got: "None".into(),
            }),
            Some(s) if s.h.dim() != want || s.c.as_ref().is_some_and(|c| c.dim() != want) => {
                Err(Error::shape(
                    "this rank's carried state [layers·directions, its streams, hidden]",
                    format!("{want:?}"),
                    format!("{:?}", s.h.dim()),
                ))
            }
            Some(s) if s.c.is_some() != has_c => Err(Error::InvalidConfig {
                what: "carried cell state c",
                expected: "present exactly for an LSTM",
                got: format!(
                    "{} for a {} cell",
                    if has_c { "absent" } else { "present" },
                    config.cell
                ),
            }),
            Some(s) => Ok(Some(s)),
        };
        let local = agree(&self.comm, local, "cannot share its carried state")?;
        let counts: Vec<i32> = (0..self.size)
            .map(|r| (units * rows(r) * hidden) as i32)
            .collect();
        let displs = displacements(&counts);
        let gather = |pick: &dyn Fn(&RnnState) -> ndarray::Array3<f32>| {
            let send: Vec<f32> = local
                .map(|s| pick(s).iter().copied().collect())
                .unwrap_or_default();
            let mut all = vec![0f32; units * streams * hidden];
            {
                let mut partition =
                    mpi::datatype::PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                self.comm
                    .all_gather_varcount_into(&send[..], &mut partition);
            }
            // rank r's block is [units, rows(r), hidden]: put it at its streams
            let mut out = ndarray::Array3::zeros((units, streams, hidden));
            for r in 0..self.size {
                let range = shard_range(streams, r, self.size);
                let at = displs[r] as usize;
                let block = ndarray::ArrayView3::from_shape(
                    (units, range.len(), hidden),
                    &all[at..at + counts[r] as usize],
                )
                .expect("sized by the counts");
                out.slice_mut(ndarray::s![.., range, ..]).assign(&block);
            }
            out
        };
        let h = gather(&|s| s.h.clone());
        let c = has_c.then(|| gather(&|s| s.c.clone().expect("checked: an LSTM's c")));
        Ok(RnnState { h, c })
    }

    /// Checks (collective) that every rank holds bit-for-bit the same parameters, as the
    /// wrapper guarantees; costs a read-back on the GPU and one small exchange.
    pub fn check_in_sync(&self) -> Result<()> {
        let params = self.rnn.params();
        let digest = params
            .as_ref()
            .map(|p| fnv1a(bytemuck::cast_slice(&p.to_flat())))
            .unwrap_or(0);
        agree(&self.comm, params, "could not read its parameters")?;
        let mut all = vec![0u64; self.size];
        self.comm.all_gather_into(&digest, &mut all[..]);
        let differ: Vec<usize> = (1..self.size).filter(|&r| all[r] != all[0]).collect();
        if differ.is_empty() {
            Ok(())
        } else {
            Err(Error::Distributed(format!(
                "the parameters of {} differ from rank 0's",
                ranks_phrase(&differ)
            )))
        }
    }
}

/// This process's rank among the ranks on its own machine, and how many there are
/// (collective: splits `comm` by shared memory). For choosing a device per rank: several
/// ranks may share one adapter, or each take its own.
pub fn local_rank<C: Communicator>(comm: &C) -> (usize, usize) {
    let node = comm.split_shared(0);
    (node.rank() as usize, node.size() as usize)
}

/// The number of loss terms of `batch` under `config`'s head: its weight in the global
/// mean. Valid positions for the per-step head, sequences for the last-step head, 0 for
/// an encoder (no loss). Value targets also average over `output_size` units, the same
/// factor for every shard, which cancels in the weighting.
pub fn loss_terms(config: &RnnConfig, batch: &SequenceBatch) -> usize {
    match config.head {
        Head::PerStep => batch.tokens(),
        Head::LastStep => batch.len(),
        Head::None => 0,
    }
}

/// How [`split_batch`] deals a global batch's sequences to the ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Split {
    /// Consecutive blocks in the batch's order ([`shard_range`]).
    #[default]
    Contiguous,
    /// Close to equal numbers of steps per rank, for variable lengths: longest sequence
    /// first, each to the rank with the fewest steps so far (ties to the lower rank);
    /// every rank keeps its sequences in the batch's order.
    BalancedSteps,
}

/// Rank `rank`'s block of `len` items split over `size` ranks: consecutive blocks, the
/// first `len % size` ranks one item longer. Empty when `len < size` leaves this rank
/// nothing.
pub fn shard_range(len: usize, rank: usize, size: usize) -> Range<usize> {
    assert!(rank < size, "rank {rank} of {size}");
    let (base, extra) = (len / size, len % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Rank `rank`'s part of the carried state of all streams (`[.., streams, ..]`): the
/// streams of its [`shard_range`], `None` when it has none. The inverse of
/// [`DataParallel::gather_state`], for resuming with any number of ranks.
pub fn split_state(all: &RnnState, rank: usize, size: usize) -> Option<RnnState> {
    let range = shard_range(all.h.dim().1, rank, size);
    if range.is_empty() {
        return None;
    }
    let part = |a: &ndarray::Array3<f32>| a.slice(ndarray::s![.., range.clone(), ..]).to_owned();
    Some(RnnState {
        h: part(&all.h),
        c: all.c.as_ref().map(part),
    })
}

/// The indices (in the batch's order) of the sequences of lengths `lengths` that rank
/// `rank` of `size` takes under `split`. Every index goes to exactly one rank, the same
/// on every rank.
pub fn shard_indices(lengths: &[usize], rank: usize, size: usize, split: Split) -> Vec<usize> {
    assert!(rank < size, "rank {rank} of {size}");
    match split {
        Split::Contiguous => shard_range(lengths.len(), rank, size).collect(),
        Split::BalancedSteps => {
            let mut order: Vec<usize> = (0..lengths.len()).collect();
            order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            let mut load = vec![0usize; size];
            let mut mine = Vec::new();
            for i in order {
                let to = (0..size).min_by_key(|&r| (load[r], r)).expect("size > 0");
                load[to] += lengths[i];
                if to == rank {
                    mine.push(i);
                }
            }
            mine.sort_unstable();
            mine
        }
    }
}

/// Rank `rank`'s shard of `batch` (of `size` ranks) under `split`, `None` when this rank
/// gets no sequence (fewer sequences than ranks).
pub fn split_batch(
    batch: &SequenceBatch,
    rank: usize,
    size: usize,
    split: Split,
) -> Result<Option<SequenceBatch>> {
    let indices = shard_indices(batch.lengths(), rank, size, split);
    if indices.is_empty() {
        return Ok(None);
    }
    select(batch, &indices).map(Some)
}

/// The sequences of `batch` at `indices`, in that order, with their targets.
pub fn select(batch: &SequenceBatch, indices: &[usize]) -> Result<SequenceBatch> {
    let targets = batch.targets().map(|t| match t {
        Targets::Classes(c) => Targets::Classes(indices.iter().map(|&i| c[i].clone()).collect()),
        Targets::Values(v) => Targets::Values(indices.iter().map(|&i| v[i].clone()).collect()),
    });
    match batch.token_ids() {
        Some(ids) => {
            let ids = indices.iter().map(|&i| ids[i].clone()).collect();
            let vocab = batch.input_size();
            match targets {
                Some(t) => SequenceBatch::from_tokens(ids, vocab, t),
                None => SequenceBatch::tokens_only(ids, vocab),
            }
        }
        None => {
            let x = batch.inputs();
            let inputs = indices.iter().map(|&i| x[i].clone()).collect();
            match targets {
                Some(t) => SequenceBatch::new(inputs, t),
                None => SequenceBatch::inputs_only(inputs),
            }
        }
    }
}

/// Rank 0 keeps `seed`; rank r > 0 draws from a stream derived from both.
fn rank_seed(seed: u64, rank: usize) -> u64 {
    if rank == 0 {
        seed
    } else {
        SplitMix64::new(seed ^ (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64()
    }
}

/// FNV-1a, 64 bits: the same on every machine and Rust version, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// "rank 3" or "ranks 1, 2".
fn ranks_phrase(ranks: &[usize]) -> String {
    let list: Vec<String> = ranks.iter().map(usize::to_string).collect();
    if ranks.len() == 1 {
        format!("rank {}", list[0])
    } else {
        format!("ranks {}", list.join(", "))
    }
}

/// What the start-up records disagree on, compared with rank 0's, as one message.
fn disagreement(records: &[&[u64]]) -> Option<String> {
    let root = records[0];
    let mut parts = Vec::new();
    for (field, what) in [
        (4, "the unfold version"),
        (
            1,
            "the model's configuration (cell, sizes, layers, directions, head, dropout)",
        ),
        (
            3,
            "the run's fingerprint (vocabulary, data or settings the caller vouches for)",
        ),
    ] {
        let differ: Vec<usize> = (1..records.len())
            .filter(|&r| records[r][field] != root[field])
            .collect();
        if differ.is_empty() {
            continue;
        }
        let mut part = format!(
            "{} disagree{} with rank 0 on {what}",
            ranks_phrase(&differ),
            if differ.len() == 1 { "s" } else { "" }
        );
        if field == 1 {
            let counts: Vec<String> = differ
                .iter()
                .filter(|&&r| records[r][2] != root[2])
                .map(|&r| format!("rank {r} has {} parameters", records[r][2]))
                .collect();
            if !counts.is_empty() {
                part += &format!(" ({} against rank 0's {})", counts.join(", "), root[2]);
            }
        }
        parts.push(part);
    }
    (!parts.is_empty()).then(|| {
        format!(
            "the ranks do not run the same model, so none starts: {}",
            parts.join("; ")
        )
    })
}

/// Turns each rank's outcome into one for all (collective): `Ok` everywhere if every
/// rank succeeded, else on every rank the same error with each failed rank's message.
fn agree<C: Communicator, T>(comm: &C, local: Result<T>, what: &str) -> Result<T> {
    let failed = u8::from(local.is_err());
    let mut all = vec![0u8; comm.size() as usize];
    comm.all_gather_into(&failed, &mut all[..]);
    if all.iter().all(|&f| f == 0) {
        return local;
    }
    let messages = exchange_messages(comm, local.err().map(|e| e.to_string()));
    let ranks: Vec<usize> = (0..all.len()).filter(|&r| all[r] != 0).collect();
    Err(Error::Distributed(format!(
        "{} {what}: {}",
        ranks_phrase(&ranks),
        messages.join("; ")
    )))
}

/// Every rank's message, if it has one, as "rank r: message", on every rank
/// (collective: two all-gathers).
fn exchange_messages<C: Communicator>(comm: &C, mine: Option<String>) -> Vec<String> {
    all_gather_strings(comm, &mine.unwrap_or_default())
        .into_iter()
        .enumerate()
        .filter(|(_, text)| !text.is_empty())
        .map(|(r, text)| format!("rank {r}: {text}"))
        .collect()
}

/// Where each rank's part starts in a variable-count gather of parts of `counts`
/// elements: the exclusive running sum.
fn displacements(counts: &[i32]) -> Vec<i32> {
    counts
        .iter()
        .scan(0, |at, &c| {
            let d = *at;
            *at += c;
            Some(d)
        })
        .collect()
}

/// Every rank's `mine`, in rank order, on every rank (collective: two all-gathers; text
/// that is not UTF-8 after the exchange is replaced, as `String::from_utf8_lossy` does).
pub fn all_gather_strings<C: Communicator>(comm: &C, mine: &str) -> Vec<String> {
    let size = comm.size() as usize;
    let bytes = mine.as_bytes();
    let len = bytes.len() as i32;
    let mut lens = vec![0i32; size];
    comm.all_gather_into(&len, &mut lens[..]);
    let displs = displacements(&lens);
    let mut all = vec![0u8; lens.iter().sum::<i32>() as usize];
    {
        let mut partition = mpi::datatype::PartitionMut::new(&mut all[..], &lens[..], &displs[..]);
        comm.all_gather_varcount_into(bytes, &mut partition);
    }
    (0..size)
        .map(|r| {
            let at = displs[r] as usize;
            String::from_utf8_lossy(&all[at..at + lens[r] as usize]).into_owned()
        })
        .collect()
}
