//! The runtime: what a training loop calls. An [`Optimizer`] holds a compiled
//! rule, its hyperparameter values per parameter group (constants or
//! schedules of `t`) and its state, and applies one step to many tensors at
//! once on a [`Backend`]: compiled kernels on the host executor (Cranelift
//! by default, tiered with LLVM in builds with the `llvm` feature, or the
//! reference kernels) or the interpreter. Steps are
//! atomic: a step that fails leaves parameters and state exactly as they
//! were. [`checkpoint`] saves and restores an optimizer; [`trace`] replays
//! recorded gradients in the golden-file schema; [`adjoint`] runs the
//! vector-Jacobian product of a step; [`shard`] steps shards of tensors
//! held by several processes.

pub mod adjoint;
pub mod backend;
mod bind;
pub mod buffer;
pub mod checkpoint;
pub mod executor;
pub mod files;
pub mod memory;
mod optimizer;
mod pool;
pub mod precision;
pub mod shard;
#[cfg(all(feature = "cranelift", feature = "llvm"))]
pub mod tiered;
pub mod trace;

pub use backend::{Backend, BackendInfo, Elements, BACKENDS};
pub use bind::Bindings;
pub use executor::Layout;
pub use optc_compiler::interpret::Scalars;
pub use optimizer::{
    glob_match, Group, GroupReductions, NonFinite, Optimizer, OptimizerBuilder, Outcome,
    DEFAULT_GROUP, MAX_THREADS,
};
pub use precision::Precision;

/// Elements per work item: the interpreter's reduction chunk (a multiple of
/// every SIMD width, large enough to amortise a call, small enough to
/// balance threads), so that reductions agree with it bit for bit.
pub use optc_compiler::interpret::CHUNK;
/// The GPU backend's device handle (`Backend::device`), for callers that
/// share one device or count its launches.
#[cfg(feature = "cubecl")]
pub use optc_cubecl as cubecl;

use std::fmt;

use optc_compiler::ir::Kind;
use optc_compiler::kernel::Storage;

#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    UnknownHyper {
        name: String,
        known: Vec<String>,
    },
    HyperKind {
        name: String,
        expected: Kind,
    },
    MissingHyper(String),
    TensorCount {
        expected: usize,
        found: usize,
    },
    Length {
        tensor: usize,
        expected: usize,
        found: usize,
    },
    /// Parameters or gradients of another storage type than the optimizer's.
    Dtype {
        expected: Storage,
        found: Storage,
    },
    /// Parameter groups that do not fit the tensors or the request.
    Groups(String),
    /// What this backend (or host) cannot do, and why.
    Unsupported(String),
    /// A backend failed to compile a kernel.
    Backend(String),
    /// More memory (or threads) than the machine can give.
    Memory(String),
    Checkpoint(String),
    Internal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownHyper { name, known } => {
                write!(
                    f,
                    "unknown hyperparameter `{name}` (this rule has: {})",
                    known.join(", ")
                )
            }
            Error::HyperKind { name, expected } => match expected {
                Kind::Bool => write!(
                    f,
                    "hyperparameter `{name}` is a bool; give `true` or `false`"
                ),
                Kind::Float => write!(f, "hyperparameter `{name}` is a number, not a bool"),
            },
            Error::MissingHyper(name) => {
                write!(
                    f,
                    "hyperparameter `{name}` has no default; give it a value (--set {name}=VALUE)"
                )
            }
            Error::TensorCount { expected, found } => {
                write!(
                    f,
                    "expected {expected} tensors (as on the first step), got {found}"
                )
            }
            Error::Length {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "tensor {tensor}: expected {expected} elements, got {found}"
            ),
            Error::Dtype { expected, found } => write!(
                f,
                "parameters and gradients are {expected:?} in this optimizer, got {found:?}"
            ),
            Error::Groups(message) => write!(f, "parameter groups: {message}"),
            Error::Unsupported(message) | Error::Backend(message) | Error::Memory(message) => {
                write!(f, "{message}")
            }
            Error::Checkpoint(message) => write!(f, "checkpoint: {message}"),
            Error::Internal(message) => write!(f, "internal error: {message}"),
        }
    }
}

impl std::error::Error for Error {}
