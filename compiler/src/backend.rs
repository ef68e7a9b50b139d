//! What a code generator for the host CPU provides: it turns a [`Kernel`]
//! into a [`HostKernel`], code that runs the kernel over a range of elements
//! of buffers in host memory. The runtime's host executor runs every kernel
//! backend (the [`Reference`] kernels here, Cranelift in
//! `backends/cranelift`, later LLVM) through these two traits, so a backend
//! depends on the kernel IR and nothing else.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use crate::kernel::{self, BufferMut, Kernel, Storage};

/// A compiled kernel, callable from any thread.
pub trait HostKernel: Send + Sync {
    /// Runs the kernel over `range`, combining into `accumulators` (one per
    /// accumulator of the kernel, initialised by the caller, usually with
    /// [`Kernel::identity`]).
    ///
    /// # Safety
    /// As [`kernel::run_raw`]: `buffers` and `scalars` have the kernel's
    /// counts, every buffer pointer is valid for the range in its storage
    /// type, distinct buffers do not overlap, and stored buffers are writable.
    unsafe fn call(
        &self,
        buffers: &[*mut f32],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: Range<usize>,
    );

    /// Called by the executor between steps, never during one: a kernel
    /// that can change its code (a tiered kernel swapping in the code of a
    /// faster tier) does it here, so that every call of one step runs the
    /// same code.
    fn settle(&self) {}
}

/// Something that turns kernels into callable host code.
pub trait HostBackend: Send {
    /// Compiles `kernel`; an error is a message for the user (the kernel was
    /// valid, so it names a limit of the backend or the host).
    fn compile(&mut self, kernel: &Kernel) -> Result<Arc<dyn HostKernel>, String>;
}

/// The portable backend: kernels run by their reference semantics
/// ([`kernel::run_raw`]), element by element.
pub struct Reference;

struct ReferenceKernel(Kernel);

impl HostKernel for ReferenceKernel {
    unsafe fn call(
        &self,
        buffers: &[*mut f32],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: Range<usize>,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { kernel::run_raw(&self.0, buffers, scalars, accumulators, range) }
    }
}

impl HostBackend for Reference {
    fn compile(&mut self, kernel: &Kernel) -> Result<Arc<dyn HostKernel>, String> {
        Ok(Arc::new(ReferenceKernel(kernel.clone())))
    }
}

/// The generated function: `(buffers, scalars, accumulators, start, end)`.
///
/// Processes elements `start..end` of every buffer (`start > end` does
/// nothing); `buffers[b]` points at element 0 of buffer `b` (an `f32`, or for
/// a bf16 buffer a `u16` bit pattern, its pointer cast to `*mut f32`; 2-byte
/// alignment suffices), `scalars[k]` is scalar `k` (a stochastic-rounding
/// seed is the bit pattern of its scalar), and accumulator `k`'s result is
/// combined into `accumulators[k]`.
///
/// # Safety
/// Every buffer pointer must be valid for reads (and, for stored buffers,
/// writes) of elements `start..end` in its buffer's storage type; distinct
/// buffers must not overlap; `scalars` and `accumulators` must hold the
/// kernel's counts.
pub type KernelFn = unsafe extern "C" fn(
    buffers: *const *mut f32,
    scalars: *const f32,
    accumulators: *mut f64,
    start: usize,
    end: usize,
);

/// Arguments that do not fit a compiled kernel (counts, storage types,
/// lengths or the range).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadArguments(pub String);

impl fmt::Display for BadArguments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad kernel arguments: {}", self.0)
    }
}

impl std::error::Error for BadArguments {}

/// A kernel compiled to native code with the [`KernelFn`] ABI, by any code
/// generator (Cranelift, LLVM). Keeps the code's owner alive (a JIT module,
/// a loaded library), so the code stays callable as long as this does;
/// callable from any number of threads at once.
pub struct NativeKernel {
    function: KernelFn,
    _code: Arc<dyn Send + Sync>,
    /// The storage type of each buffer the kernel takes.
    storage: Vec<Storage>,
    scalars: usize,
    accumulators: usize,
}

impl fmt::Debug for NativeKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeKernel")
            .field("function", &(self.function as *const u8))
            .field("storage", &self.storage)
            .field("scalars", &self.scalars)
            .field("accumulators", &self.accumulators)
            .finish()
    }
}

/// Pointer arrays of up to this many buffers live on the stack.
const INLINE_BUFFERS: usize = 16;

impl NativeKernel {
    /// Wraps `function`, compiled from `kernel`, whose code lives as long as
    /// `code` does.
    ///
    /// # Safety
    /// `function` must implement [`KernelFn`]'s contract for `kernel` and
    /// stay valid while `code` is alive.
    pub unsafe fn new(function: KernelFn, code: Arc<dyn Send + Sync>, kernel: &Kernel) -> Self {
        NativeKernel {
            function,
            _code: code,
            storage: kernel.storage.clone(),
            scalars: kernel.scalars as usize,
            accumulators: kernel.accumulators.len(),
        }
    }

    /// Runs a kernel whose buffers are all f32 over elements `range` of
    /// `buffers`, combining the accumulators into `accumulators` (initialise
    /// them with [`Kernel::identity`]). The counts must match the kernel's
    /// and the range must lie inside every buffer.
    pub fn run(
        &self,
        buffers: &mut [&mut [f32]],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: Range<usize>,
    ) -> Result<(), BadArguments> {
        let buffers = buffers
            .iter_mut()
            .map(|b| (Storage::F32, b.len(), b.as_mut_ptr()));
        self.run_checked(buffers, scalars, accumulators, range)
    }

    /// [`run`](Self::run) for buffers of any storage type: each must be of
    /// its kernel buffer's type.
    pub fn run_typed(
        &self,
        buffers: &mut [BufferMut],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: Range<usize>,
    ) -> Result<(), BadArguments> {
        let buffers = buffers
            .iter_mut()
            .map(|b| (b.storage(), b.len(), b.as_mut_ptr()));
        self.run_checked(buffers, scalars, accumulators, range)
    }

    /// Checks the buffers (storage type, length, pointer) against the kernel
    /// and the range, then runs it.
    fn run_checked(
        &self,
        buffers: impl ExactSizeIterator<Item = (Storage, usize, *mut f32)>,
        scalars: &[f32],
        accumulators: &mut [f64],
        range: Range<usize>,
    ) -> Result<(), BadArguments> {
        self.check_counts(buffers.len(), scalars.len(), accumulators.len(), &range)?;
        let mut inline = [std::ptr::null_mut::<f32>(); INLINE_BUFFERS];
        let mut heap = Vec::new();
        let pointers: &mut [*mut f32] = if buffers.len() <= INLINE_BUFFERS {
            &mut inline[..buffers.len()]
        } else {
            heap.resize(buffers.len(), std::ptr::null_mut());
            &mut heap
        };
        for (b, (p, (storage, len, pointer))) in pointers.iter_mut().zip(buffers).enumerate() {
            if storage != self.storage[b] {
                return Err(BadArguments(format!(
                    "buffer {b} is {storage:?}, the kernel stores it as {:?}",
                    self.storage[b]
                )));
            }
            if len < range.end {
                return Err(BadArguments(format!(
                    "range {range:?} exceeds buffer {b} of length {len}"
                )));
            }
            *p = pointer;
        }
        // SAFETY: counts and storage types match, every buffer holds the
        // range, the callers' &mut borrows make the buffers distinct.
        unsafe {
            (self.function)(
                pointers.as_ptr(),
                scalars.as_ptr(),
                accumulators.as_mut_ptr(),
                range.start,
                range.end,
            )
        };
        Ok(())
    }

    /// [`run`](Self::run) over raw buffer pointers, as a runtime calls
    /// kernels on disjoint ranges from several threads. Counts and the range
    /// order are checked; buffer lengths and types cannot be. Pointers are
    /// as [`KernelFn`] takes them: a bf16 buffer's is its `*mut u16`, cast.
    ///
    /// # Safety
    /// Every pointer must be valid for reads of elements `range` in its
    /// buffer's storage type, and for writes of them where the kernel stores;
    /// distinct buffers must not overlap; no other thread may access the
    /// stored elements meanwhile.
    pub unsafe fn run_raw(
        &self,
        buffers: &[*mut f32],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: Range<usize>,
    ) -> Result<(), BadArguments> {
        self.check_counts(buffers.len(), scalars.len(), accumulators.len(), &range)?;
        // SAFETY: forwarded to the caller.
        unsafe {
            (self.function)(
                buffers.as_ptr(),
                scalars.as_ptr(),
                accumulators.as_mut_ptr(),
                range.start,
                range.end,
            )
        };
        Ok(())
    }

    fn check_counts(
        &self,
        buffers: usize,
        scalars: usize,
        accumulators: usize,
        range: &Range<usize>,
    ) -> Result<(), BadArguments> {
        let bad = |what: &str, got: usize, want: usize| {
            Err(BadArguments(format!(
                "{got} {what} given, the kernel takes {want}"
            )))
        };
        if buffers != self.storage.len() {
            return bad("buffers", buffers, self.storage.len());
        }
        if scalars != self.scalars {
            return bad("scalars", scalars, self.scalars);
        }
        if accumulators != self.accumulators {
            return bad("accumulators", accumulators, self.accumulators);
        }
        if range.start > range.end {
            return Err(BadArguments(format!("range {range:?} is reversed")));
        }
        Ok(())
    }

    /// The raw function (see [`KernelFn`] for its contract). Valid while
    /// `self` (or another owner of its module) is alive.
    pub fn function(&self) -> KernelFn {
        self.function
    }

    /// Buffers the kernel takes.
    pub fn buffers(&self) -> usize {
        self.storage.len()
    }

    /// The storage type of each buffer the kernel takes.
    pub fn storage(&self) -> &[Storage] {
        &self.storage
    }

    /// Scalars the kernel takes.
    pub fn scalars(&self) -> usize {
        self.scalars
    }

    /// Accumulators the kernel combines into.
    pub fn accumulators(&self) -> usize {
        self.accumulators
    }
}

impl HostKernel for NativeKernel {
    unsafe fn call(
        &self,
        buffers: &[*mut f32],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: Range<usize>,
    ) {
        // SAFETY: forwarded from the caller, who also guarantees the counts
        // (the runtime builds them from the same plan), so the counts check
        // of `run_raw` cannot fail.
        let _ = unsafe { self.run_raw(buffers, scalars, accumulators, range) };
    }
}
