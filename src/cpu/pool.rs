//! The CPU path's worker threads: one per core beyond the first, started on first use and
//! kept for the life of the process, that run the parts of a parallel piece of work (a
//! time loop's threads, a matrix product's halves) beside the calling thread.
//!
//! Why not a thread per piece, or rayon's pool: a training step of a small model runs a
//! few dozen parallel pieces a millisecond or less apart, and a thread that the kernel
//! has to wake (new, or asleep in a pool) was often placed on the waking thread's busy
//! core and started only when that one finished: 1–2 ms late on half of the time loops of
//! `small` on a 2-core machine, which then took as long as on one thread. So a worker
//! here spins after each part, giving its core away to anything else runnable, for
//! [`SPIN`] before it sleeps, as OpenMP runtimes do (for longer) for the same reason.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker waits for the next part, spinning, before it sleeps: longer
/// than most gaps between a training step's parallel pieces, and short, because a
/// spinning worker that the kernel placed on the calling thread's core slows the serial
/// work there (5 ms made `latency`'s one-thread loop 2× slower in half of the runs;
/// 200 µs costs it nothing measurable and keeps `small`'s gain).
const SPIN: Duration = Duration::from_micros(200);

/// The job a worker runs: `work(part)`, its lifetime erased. [`run`] does not return
/// before every worker that took part is done with it.
type Work = *const (dyn Fn(usize) + Sync + 'static);

struct State {
    /// Job number (upper bits) and how many parts it has (lower [`PART_BITS`] bits), in
    /// one word so that a worker reads both at once: worker `i` runs part `i` of a job
    /// with more than `i` parts.
    job: AtomicU64,
    work: UnsafeCell<Work>,
    /// Parts finished by workers, and whether one of them panicked.
    done: AtomicUsize,
    panicked: AtomicBool,
}

// SAFETY: `work` is written by the one caller that holds `Pool::caller`, before the job's
// number is published (release) and after every worker of the previous job is done; the
// workers read it only after seeing that number (acquire), while the caller waits.
unsafe impl Sync for State {}
// SAFETY: as above; the pointer is only a borrowed closure's address.
unsafe impl Send for State {}

const PART_BITS: u32 = 16;

struct Pool {
    state: Arc<State>,
    /// Worker `i` (from 1) is `workers[i - 1]`.
    workers: Vec<Thread>,
    /// Held while a job runs: one caller at a time (others run their parts on threads of
    /// their own).
    caller: Mutex<()>,
}

/// Runs `work(0)`, …, `work(parts - 1)` at the same time, on the calling thread (part 0)
/// and `parts - 1` other threads, and returns when all have. The parts may wait for one
/// another (barriers): each runs on a thread of its own. A panic in any part is resumed
/// on the calling thread once all parts have ended.
pub(super) fn run(parts: usize, work: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 {
        return work(0);
    }
    let pool = pool();
    let caller = match pool.caller.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    };
    if caller.is_none() || parts - 1 > pool.workers.len() {
        // the pool is busy (another thread's job) or too small: threads of our own
        return thread::scope(|s| {
            for part in 1..parts {
                s.spawn(move || work(part));
            }
            work(0);
        });
    }
    let state = &pool.state;
    // SAFETY: only the erased lifetime changes; the workers use `work` only until they
    // count themselves done, and this function waits for that before it returns (or
    // resumes a panic).
    unsafe {
        *state.work.get() = std::mem::transmute::<&(dyn Fn(usize) + Sync), Work>(work);
    }
    state.done.store(0, Ordering::Relaxed);
    let number = (state.job.load(Ordering::Relaxed) >> PART_BITS) + 1;
    state
        .job
        .store(number << PART_BITS | parts as u64, Ordering::Release);
    for worker in &pool.workers[..parts - 1] {
        worker.unpark();
    }
    let mine = catch_unwind(AssertUnwindSafe(|| work(0)));
    let mut spins = 0u32;
    while state.done.load(Ordering::Acquire) < parts - 1 {
        pause(&mut spins);
    }
    if let Err(panic) = mine {
        resume_unwind(panic);
    }
    if state.panicked.swap(false, Ordering::Relaxed) {
        resume_unwind(Box::new("a worker thread of the CPU path panicked") as Box<dyn Any + Send>);
    }
}

/// Piece `t` of `0..len` cut into `parts` nearly equal pieces at multiples of 16 (a cache
/// line of f32), the last taking the rest: how a loop's hidden units or a product's rows
/// are shared among threads. Pieces may be empty when `len` is small.
pub(super) fn piece(len: usize, parts: usize, t: usize) -> std::ops::Range<usize> {
    let edge = |t: usize| {
        if t >= parts {
            len
        } else {
            (len * t / parts / 16 * 16).min(len)
        }
    };
    edge(t)..edge(t + 1)
}

/// One round of waiting: a spin hint, and every 64th round the core given to any other
/// thread that is ready to run.
fn pause(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if spins.is_multiple_of(64) {
        thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// The cores this process may run on.
pub(super) fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| thread::available_parallelism().map_or(1, |n| n.get()))
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let state = Arc::new(State {
            job: AtomicU64::new(0),
            work: UnsafeCell::new(std::ptr::null::<fn(usize)>() as Work),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..cores().min(1 << PART_BITS))
            .filter_map(|part| {
                let state = Arc::clone(&state);
                thread::Builder::new()
                    .name(format!("unfold-cpu-{part}"))
                    .spawn(move || serve(&state, part))
                    .ok()
                    .map(|handle| handle.thread().clone())
            })
            .collect();
        Pool {
            state,
            workers,
            caller: Mutex::new(()),
        }
    })
}

/// Worker `part`'s life: wait for a job with more than `part` parts, run its part, count
/// it done.
fn serve(state: &State, part: usize) {
    // job numbers start at 1: a job published before this thread first looks is not missed
    let mut seen = 0;
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        let job = loop {
            let job = state.job.load(Ordering::Acquire);
            if job >> PART_BITS != seen {
                break job;
            }
            pause(&mut spins);
            if spins.is_multiple_of(1024) && idle_since.elapsed() > SPIN {
                // `run` unparks this thread after publishing a job, so a job published
                // after the check above makes `park` return at once
                thread::park();
                idle_since = Instant::now();
            }
        };
        seen = job >> PART_BITS;
        let parts = (job & ((1 << PART_BITS) - 1)) as usize;
        if part >= parts {
            continue;
        }
        // SAFETY: published before the job's number, which this thread has seen; the
        // caller keeps it alive until this part counts itself done below.
        let work = unsafe { &*(*state.work.get()) };
        if catch_unwind(AssertUnwindSafe(|| work(part))).is_err() {
            state.panicked.store(true, Ordering::Relaxed);
        }
        state.done.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every part runs exactly once per job, jobs back to back and from several callers
    /// at once (the pool's or threads of their own), and parts see each other (a
    /// barrier across them completes).
    #[test]
    fn every_part_runs_once_and_parts_run_together() {
        let callers: Vec<_> = (0..3)
            .map(|_| {
                thread::spawn(|| {
                    for parts in [1, 2, 3, 2, 5, 2] {
                        for _ in 0..50 {
                            let counts: Vec<_> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                            let barrier = super::super::team::Barrier::new(parts);
                            run(parts, &|p| {
                                counts[p].fetch_add(1, Ordering::Relaxed);
                                barrier.wait();
                            });
                            for c in &counts {
                                assert_eq!(c.load(Ordering::Relaxed), 1);
                            }
                        }
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
    }

    /// A panic in a worker's part or the caller's reaches the caller after every part has
    /// ended, and the pool serves the next job.
    #[test]
    fn a_panicking_part_reaches_the_caller() {
        for bad in [0, 1] {
            let finished = AtomicUsize::new(0);
            let result = catch_unwind(AssertUnwindSafe(|| {
                run(2, &|p| {
                    if p == bad {
                        panic!("part {p}");
                    }
                    thread::sleep(Duration::from_millis(20));
                    finished.fetch_add(1, Ordering::Relaxed);
                })
            }));
            assert!(result.is_err());
            assert_eq!(
                finished.load(Ordering::Relaxed),
                1,
                "the other part ran to its end"
            );
            let ran = AtomicUsize::new(0);
            run(2, &|_| {
                ran.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(ran.load(Ordering::Relaxed), 2);
        }
    }
}
