//! A persistent pool of worker threads for the host executor.
//!
//! A step runs one or more passes, each split over the threads; spawning
//! threads for every pass costs tens of microseconds per pass, which is most
//! of a step on small models. The pool keeps `threads - 1` workers parked on
//! a condition variable; the calling thread always does share 0 itself.
//! [`Pool::run`] returns only after every share has finished, which is what
//! makes lending the workers borrowed data sound (as in `std::thread::scope`).

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::Error;

/// A job as the workers see it: the caller's closure with its lifetime erased.
/// Only dereferenced between publication and the caller's wait in [`Pool::run`].
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointee is `Sync`, and `Pool::run` keeps it alive until every
// worker that received it has reported back.
unsafe impl Send for Job {}

struct State {
    /// Incremented for every job; workers run each generation once.
    generation: u64,
    job: Option<Job>,
    /// Shares the job has (the caller's included).
    shares: usize,
    /// Worker shares not yet finished.
    pending: usize,
    panicked: bool,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    finished: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking share is caught before it can poison the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Worker threads that run the shares of a job, with the caller's thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool running jobs on `threads` threads (the caller's and
    /// `threads - 1` workers; at least one thread in all). Fails, with the
    /// workers started so far stopped again, when the system cannot start
    /// that many threads.
    pub fn new(threads: usize) -> Result<Pool, Error> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                shares: 0,
                pending: 0,
                panicked: false,
                shutdown: false,
            }),
            wake: Condvar::new(),
            finished: Condvar::new(),
        });
        let mut pool = Pool {
            shared,
            workers: Vec::new(),
        };
        for index in 1..threads.max(1) {
            let shared = pool.shared.clone();
            let worker = std::thread::Builder::new()
                .name(format!("optc-worker-{index}"))
                .spawn(move || work(&shared, index))
                .map_err(|e| {
                    Error::Unsupported(format!(
                        "cannot start {threads} threads (started {index}): {e}"
                    ))
                })?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Threads a job can use.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `share(0)`, ..., `share(shares - 1)`, each on its own thread
    /// (`shares` is capped at [`Pool::threads`]), and returns when all are
    /// done. A panic in any share is re-raised here, after all have finished.
    pub fn run(&self, shares: usize, share: &(dyn Fn(usize) + Sync)) {
        let shares = shares.clamp(1, self.threads());
        if shares == 1 {
            share(0);
            return;
        }
        // SAFETY (lifetime erasure): the job is only called by workers between
        // here and the wait below, which does not return before `pending`
        // is zero, i.e. before every worker is done with it.
        let job = Job(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                share,
            )
        });
        {
            let mut state = self.shared.lock();
            state.generation += 1;
            state.job = Some(job);
            state.shares = shares;
            state.pending = shares - 1;
            state.panicked = false;
        }
        self.shared.wake.notify_all();
        let mine = panic::catch_unwind(AssertUnwindSafe(|| share(0)));
        let mut state = self.shared.lock();
        while state.pending > 0 {
            state = self
                .shared
                .finished
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.job = None;
        let worker_panicked = state.panicked;
        drop(state);
        if let Err(payload) = mine {
            panic::resume_unwind(payload);
        }
        assert!(
            !worker_panicked,
            "a worker thread panicked while running a kernel"
        );
    }
}

fn work(shared: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        let mut state = shared.lock();
        while state.generation == seen && !state.shutdown {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.shutdown {
            return;
        }
        seen = state.generation;
        let job = state.job.filter(|_| index < state.shares);
        drop(state);
        let Some(Job(share)) = job else { continue };
        // SAFETY: see `Pool::run`: the closure outlives this call.
        let result = panic::catch_unwind(AssertUnwindSafe(|| unsafe { (*share)(index) }));
        let mut state = shared.lock();
        state.panicked |= result.is_err();
        state.pending -= 1;
        if state.pending == 0 {
            shared.finished.notify_one();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_share_runs_once_per_job_on_distinct_threads() {
        let pool = Pool::new(3).unwrap();
        for _ in 0..200 {
            let counts: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            let ids = Mutex::new(Vec::new());
            pool.run(3, &|share| {
                counts[share].fetch_add(1, Ordering::SeqCst);
                ids.lock().unwrap().push(std::thread::current().id());
            });
            assert!(counts.iter().all(|c| c.load(Ordering::SeqCst) == 1));
            let mut ids = ids.into_inner().unwrap();
            ids.sort_by_key(|id| format!("{id:?}"));
            ids.dedup();
            assert_eq!(ids.len(), 3);
        }
    }

    #[test]
    fn fewer_shares_than_threads_and_borrowed_data_work() {
        let pool = Pool::new(4).unwrap();
        let mut data = vec![0u64; 2];
        let cells: Vec<Mutex<&mut u64>> = data.iter_mut().map(Mutex::new).collect();
        pool.run(2, &|share| {
            **cells[share].lock().unwrap() += share as u64 + 1
        });
        drop(cells);
        assert_eq!(data, vec![1, 2]);
        pool.run(9, &|_| {});
    }

    #[test]
    fn a_panicking_share_is_reported_after_all_finish_and_the_pool_survives() {
        let pool = Pool::new(2).unwrap();
        let finished = AtomicUsize::new(0);
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(2, &|share| {
                if share == 1 {
                    panic!("share 1 fails");
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                finished.fetch_add(1, Ordering::SeqCst);
            })
        }));
        assert!(result.is_err());
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        let again = AtomicUsize::new(0);
        pool.run(2, &|_| {
            again.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(again.load(Ordering::SeqCst), 2);
    }
}
