//! Cranelift JIT backend: compiles optc [`Kernel`]s to fused SIMD loops, for
//! the runtime's host executor ([`HostBackend`]; the default backend).
//!
//! A [`Jit`] owns a Cranelift JIT module for the host CPU (detected at run
//! time with `cranelift-native`). [`Jit::compile`] turns a kernel into native
//! code with the ABI of [`KernelFn`]; [`NativeKernel::run`] is the safe way
//! to call it.
//!
//! # Semantics
//!
//! A compiled kernel reproduces [`optc_compiler::kernel::run`] bit for bit,
//! with these documented exceptions:
//!
//! * **Transcendentals** (`exp log tanh sigmoid cos cbrt`, binary `pow`) are inline
//!   vector polynomials, see [`optc_compiler::approx`], whose scalar functions model them
//!   bit-exactly. They evaluate in f64 (error 2^-41 or less) and
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
//!   | `cbrt`    | all f32 (subnormals included)          | ≤ 1 ulp (0)    | ≤ 1 ulp (0)     |
//!   | `pow`     | 4.7M pairs: a over all positive f32 × b in [-60, 60] and integers, a near 1 × \|b\| ≤ 2e6, negative a × integer b, specials | ≤ 1 ulp (1) | ≤ 1 ulp (0) |
//!
//!   The 2-ulp cases are the reference's: glibc's `tanhf` is up to ~1.6 ulp
//!   off (at 0.11183313 the JIT is correctly rounded, libm is not), and the
//!   reference's f32 formula `1 / (1 + exp(-x))` turns a 1-ulp difference in
//!   `exp` into 2 ulp of the sigmoid (its "vs f64" column is that formula
//!   with a correctly rounded exp).
//!   `cbrt` was also compared on all 2^32 f32 patterns (the scalar model,
//!   outside the tests): it equals glibc's `cbrtf` and the rounded f64 cube
//!   root on every one, with an f64 relative error of at most 2^-49.
//!
//!   Special values follow IEEE/C99 (NaN in, NaN out; `exp(±inf) = inf, 0`;
//!   `log(±0) = -inf`, `log(x < 0) = NaN`, `log(inf) = inf`;
//!   `tanh(-0) = -0`, `tanh(±inf) = ±1`; `cos(±inf) = NaN`; `cbrt` is odd,
//!   `cbrt(±0) = ±0`, `cbrt(±inf) = ±inf`). `sigmoid` is
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
//! `*mut f32` (see [`KernelFn`]); [`NativeKernel::run_typed`] takes them
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
//! the [`Jit`] and every [`NativeKernel`] it produced. The module (and all
//! its code) is freed when the last of them is dropped, so a compiled kernel
//! stays callable after the `Jit` is gone, and kernels can be sent to and
//! shared between threads (`NativeKernel: Send + Sync`). Code is never
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
use optc_compiler::backend::{HostBackend, HostKernel, KernelFn, NativeKernel};
use optc_compiler::kernel::{self, Kernel};
use std::fmt;
use std::sync::{Arc, Mutex};

/// Why compiling or running a kernel failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JitError {
    /// The host is not supported by Cranelift or a setting was rejected.
    Host(String),
    /// The kernel is malformed (see [`kernel::validate`]).
    InvalidKernel(String),
    /// Cranelift failed to compile or load the function.
    Codegen(String),
}

impl fmt::Display for JitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JitError::Host(m) => write!(f, "unsupported host: {m}"),
            JitError::InvalidKernel(m) => write!(f, "invalid kernel: {m}"),
            JitError::Codegen(m) => write!(f, "code generation failed: {m}"),
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
            // SAFETY: every NativeKernel holds an Arc<Shared>, so none is
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
    pub fn compile(&mut self, kernel: &Kernel) -> Result<NativeKernel, JitError> {
        kernel::validate(kernel).map_err(JitError::InvalidKernel)?;
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
        // SAFETY: as above; the module behind `shared` owns the code.
        let code: Arc<dyn Send + Sync> = self.shared.clone();
        Ok(unsafe { NativeKernel::new(function, code, kernel) })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_kernels_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<NativeKernel>();
        fn send<T: Send>() {}
        send::<Jit>();
    }
}
