//! Cranelift JIT backend: compiles optc [`Kernel`]s to fused SIMD loops, for
//! the runtime's host executor ([`HostBackend`]; the default backend).
//!
//! A [`Jit`] owns a Cranelift JIT module for the host CPU (detected at run
//! time with `cranelift-native`). [`Jit::compile`] turns a kernel into native
//! code with the ABI of [`KernelFn`]; [`CompiledKernel::run`] is the safe way
//! to call it.
//!
//! # Semantics
//!
//! A compiled kernel reproduces [`optc_compiler::kernel::run`] bit for bit,
//! with these documented exceptions:
//!
//! * **Transcendentals** (`exp log tanh sigmoid cos`, binary `pow`) are inline
//!   vector polynomials, see [`optc_compiler::approx`], whose scalar functions model them
//!   bit-exactly. They evaluate in f64 (polynomial error 2^-41 or less) and
//!   round to f32 once, so they are within 1 ulp of the correctly rounded
//!   result, in practice almost always equal to it. Bounds asserted by
//!   `tests/accuracy.rs` over sweeps of every 257th f32 bit pattern (16.7M
//!   points; every 4099th in debug builds), max error against the host
//!   libm's `f32` function (what the reference interpreter calls; glibc
//!   2.36 here) and against the f64 function rounded to f32 (~correctly
//!   rounded), with what was measured:
//!
//!   | function  | domain swept                           | vs f32 libm    | vs f64, rounded |
//!   |-----------|----------------------------------------|----------------|-----------------|
//!   | `exp`     | all f32 (results down to subnormals)   | ≤ 1 ulp (1)    | ≤ 1 ulp (0)     |
//!   | `log`     | all f32 (subnormals included)          | ≤ 1 ulp (1)    | ≤ 1 ulp (0)     |
//!   | `tanh`    | all f32                                | ≤ 2 ulp (2)    | ≤ 1 ulp (0)     |
//!   | `sigmoid` | all f32                                | ≤ 2 ulp (2)    | ≤ 1 ulp (0)     |
//!   | `cos`     | \|x\| ≤ 8e8 ([`COS_ACCURATE_LIMIT`](optc_compiler::approx::COS_ACCURATE_LIMIT)) | ≤ 1 ulp (1) | ≤ 1 ulp (1) |
//!   | `pow`     | 4.7M pairs: a over all positive f32 × b in [-60, 60] and integers, a near 1 × \|b\| ≤ 2e6, negative a × integer b, specials | ≤ 1 ulp (1) | ≤ 1 ulp (0) |
//!
//!   The 2-ulp cases are the reference's: glibc's `tanhf` is up to ~1.6 ulp
//!   off (at 0.11183313 the JIT is correctly rounded, libm is not), and the
//!   reference's f32 formula `1 / (1 + exp(-x))` turns a 1-ulp difference in
//!   `exp` into 2 ulp of the sigmoid (its "vs f64" column is that formula
//!   with a correctly rounded exp).
//!
//!   Special values follow IEEE/C99 (NaN in, NaN out; `exp(±inf) = inf, 0`;
//!   `log(±0) = -inf`, `log(x < 0) = NaN`, `log(inf) = inf`;
//!   `tanh(-0) = -0`, `tanh(±inf) = ±1`; `cos(±inf) = NaN`). `sigmoid` is
//!   `1 / (1 + exp(-x))` evaluated in f32 exactly like the reference (so it
//!   is 0 below x = -88.7 as the reference is, where the true value would
//!   be subnormal). `cos` is accurate for |x| ≤ 8e8 (Cody-Waite reduction
//!   with pi/2 in four 24-bit pieces, exact for quadrant counts below 2^29);
//!   beyond, it returns some value in [-1, 1] (there is no Payne-Hanek
//!   reduction). `pow` follows `powf`: `pow(x, ±0) = 1` (even for NaN x),
//!   `pow(1, y) = 1` (even for NaN y), `pow(-1, ±inf) = 1`, a negative
//!   finite base with a non-integer exponent gives NaN, a negative base
//!   with an integer exponent gives the sign of odd powers, zeros and
//!   infinities give the C99 results (signed zeros and `pow(-0, -3) = -inf`
//!   included), overflow gives inf and underflow subnormals or 0. Not
//!   modelled: `errno`, floating-point exception flags, NaN payloads.
//! * **`min`/`max` on equal operands of different sign** (`max(+0, -0)`):
//!   the compiled code returns the first operand. Rust's `f32::max` leaves
//!   this case unspecified and the reference interpreter's result depends on
//!   how LLVM lowered (and commuted) it; every other case (NaN operands
//!   included: the other operand wins) is exact.
//! * **Accumulators** are summed in the order every compiled tier uses
//!   (see "Accumulation order" in [`optc_compiler::kernel`]): with `U`
//!   vectors per loop iteration (`U` = partials / 4, so 2, or 1 for
//!   transcendental-heavy kernels), partial `t mod 4U` is lane `t mod 4` of
//!   vector `(t mod 4U) / 4`. Sums agree with the sequential reference
//!   within the usual bound for reordered f64 sums (tested at 1e-12 of the
//!   sum of magnitudes). Max and min are exact; like the reference they
//!   ignore NaN values.
//!
//! **bf16 storage** is exact, no exception: a bf16 buffer's loads widen
//! exactly, and its stores round to nearest even or, under
//! [`Rounding::Stochastic`], add the same 16 random bits per (seed, buffer,
//! element index) as the reference (the `mix32` hash of the `kernel` module
//! docs, in SIMD) and truncate, so compiled and reference results agree bit
//! for bit whatever the range, the vector position or the thread; an f32
//! NaN rounds to the same quiet bf16 NaN (sign and top payload bits kept).
//! Tested on every f32 pattern (both roundings),
//! every bf16 pattern, and random kernels mixing f32 and bf16 buffers
//! (`tests/bf16.rs`). Pointers to bf16 buffers are `*mut u16` cast to
//! `*mut f32` (see [`KernelFn`]); [`CompiledKernel::run_typed`] takes them
//! safely.
//!
//! Multiplies and adds are never fused; `sqrt` and division are the exact
//! IEEE instructions (`rsqrt` is `1 / sqrt`, no estimates); `floor` is exact
//! (SSE4.1 `roundps`; on a CPU without SSE4.1 Cranelift would call libm's
//! `floorf` per lane).
//!
//! # Code shape
//!
//! See the `codegen` module: an f32x4 loop unrolled twice (8 elements per
//! iteration; not unrolled when the body is dominated by transcendentals,
//! which halves their compile time for a few percent of throughput); the
//! last partial iteration goes through the same loop body on a zero-padded
//! stack copy, so an element's result never depends on its
//! position; scalars, constants and everything computed only from them are
//! evaluated once before the loop into a stack table that the loop reads as
//! memory operands (so its 16 vector registers hold per-element values
//! only); everything is branch-free per element. bf16 buffers are read 8
//! elements per 16-byte load (`punpcklwd`/`punpckhwd` against zero widen
//! them) and written 8 per 16-byte store (`packusdw` of two rounded vectors;
//! 4 elements through 8-byte moves when the loop is not unrolled). Rounding
//! to nearest even is 9 integer and compare instructions per vector;
//! stochastic rounding draws 32 random bits per lane for each vector and
//! stream (9 instructions, two of them `pmulld`; a stream serves two
//! neighbouring buffers), of which each buffer takes 16 (1 instruction) in
//! place of the 3 that compute the round-to-nearest increment.
//! Measured in cache on an Adam kernel (this host, 8192 elements): 0.73
//! ns/element with f32 moments, 0.96 with bf16 moments rounded to nearest
//! even, 1.19 stochastically. Every iteration prefetches
//! each stream 4 KiB ahead through a hand-assembled stub (see `prefetch`):
//! with 4-lane vectors the out-of-order window alone covers too few cache
//! lines, and a single core then pays memory time plus compute time instead
//! of the larger of the two.
//!
//! # Lifetime of the code
//!
//! Machine code lives in the `JITModule`, which sits behind an `Arc` shared by
//! the [`Jit`] and every [`CompiledKernel`] it produced. The module (and all
//! its code) is freed when the last of them is dropped, so a compiled kernel
//! stays callable after the `Jit` is gone, and kernels can be sent to and
//! shared between threads (`CompiledKernel: Send + Sync`). Code is never
//! freed before that: a long-lived `Jit` grows by each kernel compiled.
//!
//! # Settings
//!
//! Cranelift runs with `opt_level = "none"`: the code generator already does
//! what Cranelift's e-graph pass would (loop-invariant hoisting, constant
//! deduplication, dead-op removal), and measured on an Adam kernel the pass
//! cost ~25% of compile time (about 460 µs vs 340 µs) while the code it
//! produced ran no faster (slightly slower: 1.19 vs 1.09 ns/element in
//! cache). The IR verifier is on in debug builds and off in release builds;
//! unwind info is not generated (kernels never unwind); the register
//! allocator is Cranelift's default (backtracking; the single-pass one
//! compiles faster but made Adam twice as slow).

mod codegen;
mod prefetch;

use cranelift_codegen::ir::UserFuncName;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{isa::CallConv, Context};
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::Module;
use optc_compiler::backend::{HostBackend, HostKernel};
use optc_compiler::kernel::{BufferMut, Kernel, Op, Rounding, Storage};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

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

/// Why compiling or running a kernel failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JitError {
    /// The host is not supported by Cranelift or a setting was rejected.
    Host(String),
    /// The kernel is malformed (see [`validate`]).
    InvalidKernel(String),
    /// Cranelift failed to compile or load the function.
    Codegen(String),
    /// `run` got arguments that do not fit the kernel.
    BadArguments(String),
}

impl fmt::Display for JitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JitError::Host(m) => write!(f, "unsupported host: {m}"),
            JitError::InvalidKernel(m) => write!(f, "invalid kernel: {m}"),
            JitError::Codegen(m) => write!(f, "code generation failed: {m}"),
            JitError::BadArguments(m) => write!(f, "bad kernel arguments: {m}"),
        }
    }
}

impl std::error::Error for JitError {}

/// The module and its code; freed when the last owner goes.
struct Shared {
    module: Mutex<Option<JITModule>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let module = match self.module.get_mut() {
            Ok(m) => m.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(module) = module {
            // SAFETY: every CompiledKernel holds an Arc<Shared>, so none is
            // left that could call into this code, and none is running.
            unsafe { module.free_memory() };
        }
    }
}

/// A Cranelift JIT for kernels on the host CPU.
pub struct Jit {
    shared: Arc<Shared>,
    ctx: Context,
    builder: FunctionBuilderContext,
    signature: cranelift_codegen::ir::Signature,
}

impl Jit {
    /// Sets up Cranelift for the CPU this runs on.
    pub fn new() -> Result<Jit, JitError> {
        let host = |e: &dyn fmt::Display| JitError::Host(e.to_string());
        let mut flags = settings::builder();
        let verifier = if cfg!(debug_assertions) {
            "true"
        } else {
            "false"
        };
        for (name, value) in [
            ("opt_level", "none"),
            ("enable_verifier", verifier),
            ("unwind_info", "false"),
            ("use_colocated_libcalls", "false"),
            ("is_pic", "false"),
        ] {
            flags.set(name, value).map_err(|e| host(&e))?;
        }
        let isa = cranelift_native::builder()
            .map_err(|e| host(&e))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| host(&e))?;
        let ptr = isa.pointer_type();
        let call_conv = CallConv::triple_default(isa.triple());
        let module = JITModule::new(JITBuilder::with_isa(
            isa,
            cranelift_module::default_libcall_names(),
        ));
        Ok(Jit {
            shared: Arc::new(Shared {
                module: Mutex::new(Some(module)),
            }),
            ctx: Context::new(),
            builder: FunctionBuilderContext::new(),
            signature: codegen::signature(ptr, call_conv),
        })
    }

    /// Compiles `kernel` to native code.
    pub fn compile(&mut self, kernel: &Kernel) -> Result<CompiledKernel, JitError> {
        validate(kernel)?;
        let codegen_err = |e: &dyn fmt::Display| JitError::Codegen(e.to_string());
        let mut guard = self
            .shared
            .module
            .lock()
            .map_err(|_| JitError::Codegen("JIT module lock poisoned".into()))?;
        let module = guard
            .as_mut()
            .ok_or_else(|| JitError::Codegen("JIT module gone".into()))?;
        self.ctx.clear();
        self.ctx.func.signature = self.signature.clone();
        let id = module
            .declare_anonymous_function(&self.signature)
            .map_err(|e| codegen_err(&e))?;
        self.ctx.func.name = UserFuncName::user(0, id.as_u32());
        codegen::translate(
            &mut self.ctx.func,
            &mut self.builder,
            module.isa().frontend_config(),
            kernel,
            prefetch::stubs(),
        );
        let defined = module.define_function(id, &mut self.ctx);
        module.clear_context(&mut self.ctx);
        defined.map_err(|e| codegen_err(&format!("{e:?}")))?;
        module.finalize_definitions().map_err(|e| codegen_err(&e))?;
        let code = module.get_finalized_function(id);
        // SAFETY: the function was built with `codegen::signature`, which is
        // this type's ABI on the host.
        let function = unsafe { std::mem::transmute::<*const u8, KernelFn>(code) };
        Ok(CompiledKernel {
            function,
            _code: Arc::clone(&self.shared),
            storage: kernel.storage.clone(),
            scalars: kernel.scalars as usize,
            accumulators: kernel.accumulators.len(),
        })
    }
}

/// A compiled kernel. Keeps its JIT module (and so its code) alive; callable
/// from any number of threads at once.
pub struct CompiledKernel {
    function: KernelFn,
    _code: Arc<Shared>,
    /// The storage type of each buffer the kernel takes.
    storage: Vec<Storage>,
    scalars: usize,
    accumulators: usize,
}

impl fmt::Debug for CompiledKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledKernel")
            .field("function", &(self.function as *const u8))
            .field("storage", &self.storage)
            .field("scalars", &self.scalars)
            .field("accumulators", &self.accumulators)
            .finish()
    }
}

/// Pointer arrays of up to this many buffers live on the stack.
const INLINE_BUFFERS: usize = 16;

impl CompiledKernel {
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
    ) -> Result<(), JitError> {
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
    ) -> Result<(), JitError> {
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
    ) -> Result<(), JitError> {
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
                return Err(JitError::BadArguments(format!(
                    "buffer {b} is {storage:?}, the kernel stores it as {:?}",
                    self.storage[b]
                )));
            }
            if len < range.end {
                return Err(JitError::BadArguments(format!(
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
    ) -> Result<(), JitError> {
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
    ) -> Result<(), JitError> {
        let bad = |what: &str, got: usize, want: usize| {
            Err(JitError::BadArguments(format!(
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
            return Err(JitError::BadArguments(format!(
                "range {range:?} is reversed"
            )));
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

/// The runtime's view: a [`Jit`] is a host kernel backend.
impl HostBackend for Jit {
    fn compile(&mut self, kernel: &Kernel) -> Result<Arc<dyn HostKernel>, String> {
        match Jit::compile(self, kernel) {
            Ok(compiled) => Ok(Arc::new(compiled)),
            Err(error) => Err(error.to_string()),
        }
    }
}

impl HostKernel for CompiledKernel {
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

/// Checks that `kernel` is well formed: operands refer to earlier ops,
/// buffer and scalar indices are below the kernel's counts, stores and
/// accumulators name existing ops, no buffer is stored twice, every buffer
/// has a storage type, and a stochastic-rounding seed is an existing scalar.
pub fn validate(kernel: &Kernel) -> Result<(), JitError> {
    let invalid = |m: String| Err(JitError::InvalidKernel(m));
    let n = kernel.ops.len();
    if kernel.storage.len() != kernel.buffers as usize {
        return invalid(format!(
            "{} storage types for {} buffers",
            kernel.storage.len(),
            kernel.buffers
        ));
    }
    if let Rounding::Stochastic { seed_scalar } = kernel.rounding {
        if seed_scalar >= kernel.scalars {
            return invalid(format!(
                "stochastic rounding seed is scalar {seed_scalar} of {}",
                kernel.scalars
            ));
        }
    }
    for (i, op) in kernel.ops.iter().enumerate() {
        let operands: &[u32] = match op {
            Op::Load(b) => {
                if *b >= kernel.buffers {
                    return invalid(format!("op {i} loads buffer {b} of {}", kernel.buffers));
                }
                &[]
            }
            Op::Scalar(k) => {
                if *k >= kernel.scalars {
                    return invalid(format!("op {i} reads scalar {k} of {}", kernel.scalars));
                }
                &[]
            }
            Op::Const(_) => &[],
            Op::Unary(_, a) => &[*a],
            Op::Binary(_, a, b) => &[*a, *b],
            Op::Select(a, b, c) | Op::Lerp(a, b, c) => &[*a, *b, *c],
        };
        if let Some(a) = operands.iter().find(|&&a| a as usize >= i) {
            return invalid(format!("op {i} uses op {a}, which is not earlier"));
        }
    }
    let mut stored = Vec::new();
    for &(b, op) in &kernel.stores {
        if b >= kernel.buffers {
            return invalid(format!("store to buffer {b} of {}", kernel.buffers));
        }
        if op as usize >= n {
            return invalid(format!("store of op {op} of {n}"));
        }
        if stored.contains(&b) {
            return invalid(format!("buffer {b} is stored twice"));
        }
        stored.push(b);
    }
    for &(_, op) in &kernel.accumulators {
        if op as usize >= n {
            return invalid(format!("accumulator over op {op} of {n}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_kernels_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CompiledKernel>();
        fn send<T: Send>() {}
        send::<Jit>();
    }
}
