//! Tiered compilation: a kernel runs on a fast-to-compile tier from its
//! first step while a background thread compiles it on a faster-running
//! tier, whose code is swapped in between steps once it is ready
//! ([`HostKernel::settle`]). The `tiered` backend pairs Cranelift
//! (sub-millisecond compiles) with LLVM (milliseconds, full-width vectors).
//!
//! The two tiers compute the same operations in the same order and agree
//! bit for bit (see the LLVM crate's documentation), so a swap changes
//! speed, never results. A kernel the second tier fails to compile stays on
//! the first.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};

use optc_compiler::backend::{HostBackend, HostKernel};
use optc_compiler::kernel::Kernel;

/// A first tier compiled in the caller's thread and a second compiled in
/// the background.
pub struct Tiered {
    first: Box<dyn HostBackend>,
    /// The background thread's queue (`None` once closing).
    jobs: Option<Sender<Job>>,
    progress: Arc<Progress>,
    /// Set when the backend goes: queued compiles are then skipped.
    closing: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

/// One kernel for the background thread, and where its code goes.
struct Job {
    kernel: Kernel,
    faster: Arc<OnceLock<Arc<dyn HostKernel>>>,
}

/// Background compiles not yet finished, and swaps made.
#[derive(Default)]
pub struct Progress {
    pending: Mutex<usize>,
    idle: Condvar,
    swapped: AtomicUsize,
}

impl Progress {
    /// Blocks until every kernel handed to the second tier so far has been
    /// compiled (or has failed to).
    pub fn wait(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        while *pending > 0 {
            pending = self
                .idle
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Kernels that have swapped to the second tier.
    pub fn swapped(&self) -> usize {
        self.swapped.load(Ordering::Relaxed)
    }

    fn finished(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        *pending -= 1;
        if *pending == 0 {
            self.idle.notify_all();
        }
    }
}

impl Tiered {
    /// `first` compiles in the caller's thread; `second` moves to a
    /// background thread, which ends when this backend is dropped.
    pub fn new(first: Box<dyn HostBackend>, mut second: Box<dyn HostBackend>) -> Tiered {
        let (jobs, queue) = channel::<Job>();
        let progress = Arc::new(Progress::default());
        let closing = Arc::new(AtomicBool::new(false));
        let (worker_progress, worker_closing) = (progress.clone(), closing.clone());
        // Without the thread kernels stay on the first tier: sending them to
        // the dropped queue fails (see `compile`).
        let worker = thread::Builder::new()
            .name("optc-tier-up".into())
            .spawn(move || {
                for job in queue {
                    if !worker_closing.load(Ordering::Acquire) {
                        if let Ok(code) = second.compile(&job.kernel) {
                            let _ = job.faster.set(code);
                        }
                    }
                    worker_progress.finished();
                }
            })
            .ok();
        Tiered {
            first,
            jobs: Some(jobs),
            progress,
            closing,
            worker,
        }
    }

    /// The background compiles' progress (shared with the backend's clones).
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }
}

impl HostBackend for Tiered {
    fn compile(&mut self, kernel: &Kernel) -> Result<Arc<dyn HostKernel>, String> {
        let first = self.first.compile(kernel)?;
        let faster = Arc::new(OnceLock::new());
        *self
            .progress
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        let job = Job {
            kernel: kernel.clone(),
            faster: faster.clone(),
        };
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(job));
        if !matches!(sent, Some(Ok(()))) {
            self.progress.finished();
        }
        Ok(Arc::new(TieredKernel {
            first,
            faster,
            swapped: AtomicBool::new(false),
            progress: self.progress.clone(),
        }))
    }
}

/// The background thread finishes the compile it is in (at most one; the
/// queue is skipped) before the backend is gone: a process must not exit
/// while LLVM runs on another thread.
impl Drop for Tiered {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// A kernel on the first tier until [`HostKernel::settle`] finds its
/// second-tier code ready.
struct TieredKernel {
    first: Arc<dyn HostKernel>,
    faster: Arc<OnceLock<Arc<dyn HostKernel>>>,
    swapped: AtomicBool,
    progress: Arc<Progress>,
}

impl HostKernel for TieredKernel {
    unsafe fn call(
        &self,
        buffers: &[*mut f32],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: std::ops::Range<usize>,
    ) {
        let code = match self.faster.get() {
            Some(faster) if self.swapped.load(Ordering::Acquire) => faster,
            _ => &self.first,
        };
        // SAFETY: forwarded from the caller; both tiers compiled the same kernel.
        unsafe { code.call(buffers, scalars, accumulators, range) }
    }

    fn settle(&self) {
        if self.faster.get().is_some() && !self.swapped.swap(true, Ordering::AcqRel) {
            self.progress.swapped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
