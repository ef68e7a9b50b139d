//! LLVM backend: compiles optc [`Kernel`]s to fused SIMD loops at the full
//! vector width of the host CPU (AVX-512 where present, AVX2 otherwise,
//! detected at run time, never at build time), through inkwell and LLVM 19.
//!
//! [`Llvm::compile`] lowers a kernel to LLVM IR text ([`Llvm::ir`]; see
//! `codegen` for its shape), parses and optimises it, and compiles it with
//! MCJIT into a [`NativeKernel`], the same callable type the Cranelift tier
//! produces.
//!
//! # Semantics: the Cranelift tier's, bit for bit
//!
//! Both tiers compute the same IEEE operations in the same order, so their
//! results are identical in every bit, whatever the range, the thread or
//! the tier that ran a step:
//!
//! * the transcendentals (`exp log tanh sigmoid cos pow`) are the inline
//!   polynomials of [`optc_compiler::approx`], written once over its
//!   `Arith` trait and emitted here on f64 vectors, with the accuracy the
//!   Cranelift crate documents (within 1 ulp of the correctly rounded
//!   result; 2 ulp of glibc's `tanhf` and of the reference's f32 sigmoid);
//! * no fused multiply-add: the IR carries no fast-math flags, so LLVM
//!   neither contracts `a * b + c` nor reassociates (the policy of every
//!   tier: an FMA would change bits between tiers and CPUs);
//! * `sqrt` and division are the exact IEEE instructions, `rsqrt` is
//!   `1 / sqrt`, `sign`, `min` and `max` the same bit selects (`min`/`max`
//!   return the first operand on equal operands of different sign);
//! * accumulators use the kernel IR's fixed order ("Accumulation order" in
//!   [`optc_compiler::kernel`]), whatever the vector width;
//! * bf16 loads widen exactly, stores round to nearest even or
//!   stochastically with the reference's counter-based hash, exactly. The
//!   rounding is integer arithmetic, not AVX512_BF16's `vcvtneps2bf16`:
//!   that instruction flushes subnormal inputs to zero, which the reference
//!   does not, so it cannot be bit-exact.
//!
//! Tested against the Cranelift tier bit for bit on random kernels (f32 and
//! bf16 buffers, both roundings, every approximated op, accumulators, odd
//! lengths and offsets) at every block width (`tests/tiers.rs`), and under
//! the runtime's conformance suite against the interpreter like every
//! registered backend.
//!
//! # Cost
//!
//! Compiling takes milliseconds (LLVM's code generator at `-O3`, after a
//! few light IR passes), against Cranelift's sub-millisecond compiles: the
//! runtime's `tiered` backend therefore starts a rule on Cranelift and
//! swaps these kernels in when they are ready. Each kernel owns its LLVM
//! context and JIT; its code is freed when the last [`NativeKernel`] of it
//! goes.

pub mod aot;
mod codegen;
mod jit;

use std::fmt;
use std::sync::Arc;

use optc_compiler::backend::{HostBackend, HostKernel, KernelFn, NativeKernel};
use optc_compiler::kernel::{self, Kernel};

pub use codegen::{block_lanes, Target, FUNCTION};

/// Why compiling a kernel failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LlvmError {
    /// LLVM has no code generator for this host.
    Host(String),
    /// The kernel is malformed (see [`kernel::validate`]).
    InvalidKernel(String),
    /// LLVM rejected the generated IR or failed to compile it.
    Codegen(String),
    /// What an ahead-of-time library cannot do (see [`aot`]).
    Unsupported(String),
}

impl fmt::Display for LlvmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LlvmError::Host(m) => write!(f, "unsupported host: {m}"),
            LlvmError::InvalidKernel(m) => write!(f, "invalid kernel: {m}"),
            LlvmError::Codegen(m) => write!(f, "code generation failed: {m}"),
            LlvmError::Unsupported(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for LlvmError {}

/// The LLVM JIT for kernels on the host CPU.
#[derive(Clone, Debug)]
pub struct Llvm {
    target: Target,
}

impl Llvm {
    /// Sets LLVM up for the CPU this runs on, at its widest vectors.
    pub fn new() -> Result<Llvm, LlvmError> {
        let target = jit::host().map_err(LlvmError::Host)?;
        Ok(Llvm { target })
    }

    /// The host's CPU, but vectors of `lanes` f32 lanes (4, 8 or 16; LLVM
    /// splits vectors wider than the host's registers): how tests cover
    /// every width on one machine.
    pub fn with_lanes(lanes: usize) -> Result<Llvm, LlvmError> {
        if ![4, 8, 16].contains(&lanes) {
            return Err(LlvmError::Host(format!(
                "{lanes} lanes per vector (4, 8 or 16 are supported)"
            )));
        }
        let mut llvm = Llvm::new()?;
        llvm.target.lanes = lanes;
        Ok(llvm)
    }

    /// What the generated code targets.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The LLVM IR of `kernel`'s function, as it is compiled.
    pub fn ir(&self, kernel: &Kernel) -> Result<String, LlvmError> {
        kernel::validate(kernel).map_err(LlvmError::InvalidKernel)?;
        Ok(codegen::module(kernel, &self.target))
    }

    /// Compiles `kernel` to native code.
    pub fn compile(&self, kernel: &Kernel) -> Result<NativeKernel, LlvmError> {
        let text = self.ir(kernel)?;
        let (code, address) =
            jit::Code::compile(&text, &self.target, FUNCTION).map_err(LlvmError::Codegen)?;
        if address == 0 {
            return Err(LlvmError::Codegen("LLVM returned a null function".into()));
        }
        // SAFETY: the function was generated with the KernelFn signature for
        // this kernel, and lives in `code`.
        let function = unsafe { std::mem::transmute::<usize, KernelFn>(address) };
        let code: Arc<dyn Send + Sync> = Arc::new(code);
        // SAFETY: as above.
        Ok(unsafe { NativeKernel::new(function, code, kernel) })
    }
}

impl Llvm {
    /// Writes `rule` as a shared library with a C ABI (see [`aot`]) to
    /// `library`, and its header to `header`: an object file from LLVM,
    /// linked by the system's C compiler (`cc`, or `$CC`) against libm.
    pub fn build_library(
        &self,
        rule: &optc_compiler::ir::Rule,
        defaults: &[Option<f64>],
        library: &std::path::Path,
        header: &std::path::Path,
    ) -> Result<aot::Library, LlvmError> {
        let built = aot::library(rule, &self.target, defaults).map_err(LlvmError::Unsupported)?;
        let object = library.with_extension("o");
        jit::write_object(&built.ir, &self.target, &object).map_err(LlvmError::Codegen)?;
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let linked = std::process::Command::new(&cc)
            .arg("-shared")
            .arg("-o")
            .arg(library)
            .arg(&object)
            .arg("-lm")
            .output();
        let _ = std::fs::remove_file(&object);
        match linked {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(LlvmError::Codegen(format!(
                    "`{cc} -shared` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
            Err(e) => {
                return Err(LlvmError::Host(format!(
                    "cannot run the C compiler `{cc}` to link the library: {e}"
                )))
            }
        }
        std::fs::write(header, &built.header)
            .map_err(|e| LlvmError::Codegen(format!("cannot write {}: {e}", header.display())))?;
        Ok(built)
    }
}

/// The runtime's view: [`Llvm`] is a host kernel backend.
impl HostBackend for Llvm {
    fn compile(&mut self, kernel: &Kernel) -> Result<Arc<dyn HostKernel>, String> {
        match Llvm::compile(self, kernel) {
            Ok(compiled) => Ok(Arc::new(compiled)),
            Err(error) => Err(error.to_string()),
        }
    }
}
