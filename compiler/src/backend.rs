//! What a code generator for the host CPU provides: it turns a [`Kernel`]
//! into a [`HostKernel`], code that runs the kernel over a range of elements
//! of buffers in host memory. The runtime's host executor runs every kernel
//! backend (the [`Reference`] kernels here, Cranelift in
//! `backends/cranelift`, later LLVM) through these two traits, so a backend
//! depends on the kernel IR and nothing else.

use std::ops::Range;
use std::sync::Arc;

use crate::kernel::{self, Kernel};

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
