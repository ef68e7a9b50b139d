//! Backends: what an optimizer's steps run on, chosen by name (`--backend`)
//! from one registry, [`BACKENDS`]. A kernel backend (reference kernels,
//! Cranelift, LLVM, and the tiered pair of the last two) compiles the
//! rule's pass plan and runs on the host executor; `cubecl` runs the pass
//! plan as GPU kernels on the device executor; `staged` runs any rule in
//! stages; `interp` runs the interpreter, the semantics oracle. Every
//! registered backend is also what the conformance suite runs: adding a line
//! to [`BACKENDS`] puts a backend on every command and under every test.
//!
//! A [`Backend`] is a cheap handle: clones share one kernel cache, so
//! optimizers built from the same handle (both plans of a rule, rules that
//! share kernels, a search revisiting programs) compile each distinct kernel
//! once. The cache is keyed by the kernel's full text, so different kernels
//! never share an entry (except constants that are NaNs of different
//! payloads), and it lives as long as the last handle (compiled code is
//! never freed before that).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use optc_compiler::backend::{HostBackend, HostKernel, Reference};
use optc_compiler::interpret::Scalars;
use optc_compiler::ir::Rule;
use optc_compiler::kernel::Kernel;

use crate::executor::host::HostExecutor;
use crate::executor::interp::InterpExecutor;
use crate::executor::staged::StagedExecutor;
use crate::executor::Executor;
use crate::precision::Precision;
use crate::Error;

/// One registered backend.
pub struct BackendInfo {
    /// Its name on the command line (`--backend NAME`).
    pub name: &'static str,
    pub summary: &'static str,
    /// Whether it approximates transcendentals (within tolerances its crate
    /// documents) instead of matching the interpreter bit for bit.
    pub approximates: bool,
    /// Whether it computes on a GPU, with the device's arithmetic (no
    /// correctly rounded division or `sqrt`, contracted multiply-adds,
    /// flushed subnormals): close to the interpreter, not within the
    /// tolerance of an approximated transcendental.
    pub on_device: bool,
    /// Opens it, or says why this host cannot run it.
    pub open: fn() -> Result<Backend, String>,
}

/// Every backend this build has, the host's fastest first
/// ([`Backend::fastest`] takes the first that opens), the GPU last.
pub static BACKENDS: &[BackendInfo] = &[
    #[cfg(all(feature = "cranelift", feature = "llvm"))]
    BackendInfo {
        name: "tiered",
        summary: "Cranelift kernels from the first step; LLVM's full-width kernels, compiled \
                  in the background, swapped in between steps (bit-identical results)",
        approximates: true,
        on_device: false,
        open: || {
            let jit = optc_cranelift::Jit::new().map_err(|e| e.to_string())?;
            let llvm = optc_llvm::Llvm::new().map_err(|e| e.to_string())?;
            let tiered = crate::tiered::Tiered::new(Box::new(jit), Box::new(llvm));
            Ok(Backend::tiered("tiered", tiered))
        },
    },
    #[cfg(feature = "llvm")]
    BackendInfo {
        name: "llvm",
        summary: "kernels compiled by LLVM to SIMD loops at the CPU's full vector width \
                  (AVX-512 or AVX2; milliseconds per kernel)",
        approximates: true,
        on_device: false,
        open: || {
            let llvm = optc_llvm::Llvm::new().map_err(|e| e.to_string())?;
            Ok(Backend::kernels("llvm", Box::new(llvm)))
        },
    },
    #[cfg(feature = "cranelift")]
    BackendInfo {
        name: "cranelift",
        summary: "kernels compiled by Cranelift to f32x4 SIMD loops (sub-millisecond compiles)",
        approximates: true,
        on_device: false,
        open: || {
            let jit = optc_cranelift::Jit::new().map_err(|e| e.to_string())?;
            Ok(Backend::kernels("cranelift", Box::new(jit)))
        },
    },
    BackendInfo {
        name: "reference",
        summary: "kernels run by their reference semantics, element by element (portable, slow)",
        approximates: false,
        on_device: false,
        open: || Ok(Backend::kernels("reference", Box::new(Reference))),
    },
    BackendInfo {
        name: "staged",
        summary: "a step in stages: each pass over the elements one fused kernel of the \
                  fastest kernel backend, per-row and per-column values and matrix products \
                  (through gemm) between them; runs every rule, matrix-shaped ones included",
        approximates: true,
        on_device: false,
        open: || Ok(Backend::staged(Backend::fastest())),
    },
    BackendInfo {
        name: "interp",
        summary: "the interpreter, the semantics oracle: whole rule per step, no kernels",
        approximates: false,
        on_device: false,
        open: || Ok(Backend::interpreter(Elements::F32)),
    },
    // Last: never the default for tensors in host memory.
    #[cfg(feature = "cubecl")]
    BackendInfo {
        name: "cubecl",
        summary: "GPU kernels through cubecl's wgpu runtime (Vulkan; lavapipe on a machine \
                  without a GPU): state in device memory, one launch per pass over every tensor",
        approximates: true,
        on_device: true,
        open: || Ok(Backend::device(optc_cubecl::Gpu::open()?)),
    },
];

/// What the interpreter computes elementwise values in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elements {
    F32,
    /// Checking mode: how much of a difference is f32 rounding.
    F64,
}

/// A backend to build optimizers on (see the module documentation).
#[derive(Clone)]
pub struct Backend {
    name: Arc<str>,
    kind: Kind,
    /// The background compiles of a tiered backend.
    #[cfg(all(feature = "cranelift", feature = "llvm"))]
    tiers: Option<Arc<crate::tiered::Progress>>,
}

#[derive(Clone)]
enum Kind {
    Interpreter(Elements),
    /// The staged executor, its passes compiled by this kernel backend.
    Staged(Box<Backend>),
    #[cfg(feature = "cubecl")]
    Device(optc_cubecl::Gpu),
    Kernels(Arc<Mutex<KernelCache>>),
}

struct KernelCache {
    backend: Box<dyn HostBackend>,
    compiled: HashMap<String, Arc<dyn HostKernel>>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backend({})", self.name)
    }
}

impl Backend {
    /// The registered backend called `name`.
    pub fn named(name: &str) -> Result<Backend, Error> {
        let info = BACKENDS.iter().find(|b| b.name == name).ok_or_else(|| {
            Error::Unsupported(format!(
                "unknown backend `{name}` (this build has: {})",
                names().join(", ")
            ))
        })?;
        (info.open)()
            .map_err(|why| Error::Unsupported(format!("backend `{name}` cannot run here: {why}")))
    }

    /// The fastest backend that runs on this host (tiered Cranelift and
    /// LLVM in builds with LLVM, else Cranelift where it supports the CPU,
    /// else the reference kernels).
    pub fn fastest() -> Backend {
        BACKENDS
            .iter()
            .find_map(|info| (info.open)().ok())
            .unwrap_or_else(|| Backend::kernels("reference", Box::new(Reference)))
    }

    /// The interpreter, computing elementwise values in `elements`.
    pub fn interpreter(elements: Elements) -> Backend {
        let name = match elements {
            Elements::F32 => "interp",
            Elements::F64 => "interp (f64)",
        };
        Backend {
            name: name.into(),
            kind: Kind::Interpreter(elements),
            #[cfg(all(feature = "cranelift", feature = "llvm"))]
            tiers: None,
        }
    }

    /// The staged executor ([`crate::executor::staged`]), its passes
    /// compiled by `kernels` (a kernel backend; [`Backend::fastest`] in the
    /// registry).
    pub fn staged(kernels: Backend) -> Backend {
        Backend {
            name: "staged".into(),
            #[cfg(all(feature = "cranelift", feature = "llvm"))]
            tiers: kernels.tiers.clone(),
            kind: Kind::Staged(Box::new(kernels)),
        }
    }

    /// The GPU backend on `gpu` ([`crate::executor::device`]).
    #[cfg(feature = "cubecl")]
    pub fn device(gpu: optc_cubecl::Gpu) -> Backend {
        Backend {
            name: "cubecl".into(),
            kind: Kind::Device(gpu),
            #[cfg(all(feature = "cranelift", feature = "llvm"))]
            tiers: None,
        }
    }

    /// Any host kernel backend, under `name` (the registry's, or one of a
    /// test's own, such as a checking wrapper).
    pub fn kernels(name: &str, backend: Box<dyn HostBackend>) -> Backend {
        Backend {
            name: name.into(),
            kind: Kind::Kernels(Arc::new(Mutex::new(KernelCache {
                backend,
                compiled: HashMap::new(),
            }))),
            #[cfg(all(feature = "cranelift", feature = "llvm"))]
            tiers: None,
        }
    }

    /// A tiered kernel backend, under `name`.
    #[cfg(all(feature = "cranelift", feature = "llvm"))]
    pub fn tiered(name: &str, tiered: crate::tiered::Tiered) -> Backend {
        let progress = tiered.progress();
        Backend {
            tiers: Some(progress),
            ..Backend::kernels(name, Box::new(tiered))
        }
    }

    /// Blocks until the kernels compiled so far have their faster tier
    /// compiled (they swap to it at their next step); returns at once on a
    /// backend without tiers. Benchmarks call it before timing.
    pub fn wait_for_tiers(&self) {
        #[cfg(all(feature = "cranelift", feature = "llvm"))]
        if let Some(tiers) = &self.tiers {
            tiers.wait();
        }
    }

    /// Kernels that have swapped to their faster tier so far (0 on a
    /// backend without tiers).
    pub fn tier_swaps(&self) -> usize {
        #[cfg(all(feature = "cranelift", feature = "llvm"))]
        if let Some(tiers) = &self.tiers {
            return tiers.swapped();
        }
        0
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it runs compiled kernels (every backend but the interpreter and
    /// the staged executor).
    pub fn runs_kernels(&self) -> bool {
        matches!(self.kind, Kind::Kernels(_))
    }

    /// Whether it runs a rule on a GPU (the `cubecl` backend).
    pub fn runs_on_device(&self) -> bool {
        #[cfg(feature = "cubecl")]
        if matches!(self.kind, Kind::Device(_)) {
            return true;
        }
        false
    }

    /// Whether it runs a rule's pass plan (kernel backends and the GPU), so
    /// refuses the rules the planner does not plan.
    pub fn runs_plans(&self) -> bool {
        self.runs_kernels() || self.runs_on_device()
    }

    /// Distinct kernels compiled so far by this handle and its clones.
    pub fn cached_kernels(&self) -> usize {
        match &self.kind {
            Kind::Interpreter(_) => 0,
            Kind::Staged(kernels) => kernels.cached_kernels(),
            #[cfg(feature = "cubecl")]
            Kind::Device(gpu) => gpu.cached_programs(),
            Kind::Kernels(cache) => lock(cache).compiled.len(),
        }
    }

    /// Compiles `kernel`, or takes it from the cache (kernel backends only).
    pub fn compile(&self, kernel: &Kernel) -> Result<Arc<dyn HostKernel>, Error> {
        let Kind::Kernels(cache) = &self.kind else {
            return Err(Error::Unsupported(format!(
                "the `{}` backend compiles no kernels",
                self.name
            )));
        };
        let mut cache = lock(cache);
        let key = format!("{kernel:?}");
        if let Some(compiled) = cache.compiled.get(&key) {
            return Ok(compiled.clone());
        }
        let compiled = cache.backend.compile(kernel).map_err(|why| {
            Error::Backend(format!(
                "the `{}` backend cannot compile a kernel: {why}",
                self.name
            ))
        })?;
        cache.compiled.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// The executor for one optimizer of `rule`.
    pub(crate) fn executor(
        &self,
        rule: &Arc<Rule>,
        precision: Precision,
        scalars: Scalars,
        threads: usize,
    ) -> Result<Box<dyn Executor>, Error> {
        if !self.runs_plans() && precision != Precision::default() {
            return Err(Error::Unsupported(format!(
                "the `{}` backend stores f32 (or f64) values; bf16 storage and stochastic \
                 rounding need a kernel backend",
                self.name
            )));
        }
        if let Some(why) = optc_compiler::plan::unsupported(rule).filter(|_| self.runs_plans()) {
            return Err(Error::Unsupported(format!(
                "the `{}` backend: {why}",
                self.name
            )));
        }
        match &self.kind {
            #[cfg(feature = "cubecl")]
            Kind::Device(gpu) => Ok(Box::new(crate::executor::device::DeviceExecutor::new(
                rule.clone(),
                gpu.clone(),
                precision,
                scalars,
            )?)),
            Kind::Staged(kernels) => Ok(Box::new(StagedExecutor::new(
                rule.clone(),
                scalars,
                threads,
                kernels,
            )?)),
            Kind::Interpreter(elements) => Ok(match *elements {
                Elements::F32 => Box::new(InterpExecutor::<f32>::new(
                    rule.clone(),
                    &self.name,
                    scalars,
                )),
                Elements::F64 => Box::new(InterpExecutor::<f64>::new(
                    rule.clone(),
                    &self.name,
                    scalars,
                )),
            }),
            Kind::Kernels(_) => Ok(Box::new(HostExecutor::new(
                rule.clone(),
                self.clone(),
                precision,
                scalars,
                threads,
            )?)),
        }
    }

    /// The fastest backend that runs `rule`: [`Backend::fastest`], or the
    /// staged executor on its kernels for rules the pass planner does not
    /// plan ([`optc_compiler::plan::unsupported`]).
    pub fn fastest_for(rule: &Rule) -> Backend {
        match optc_compiler::plan::unsupported(rule) {
            Some(_) => Backend::staged(Backend::fastest()),
            None => Backend::fastest(),
        }
    }
}

fn lock(cache: &Mutex<KernelCache>) -> std::sync::MutexGuard<'_, KernelCache> {
    // A panic while compiling leaves a cache that is still consistent.
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The registered backends' names, fastest first.
pub fn names() -> Vec<&'static str> {
    BACKENDS.iter().map(|b| b.name).collect()
}
