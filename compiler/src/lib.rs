//! The `.opt` compiler: lowering from the AST to a typed IR (with type
//! checking and inlining), the IR itself, the reference interpreter that
//! defines its semantics, the pass planner and the kernel IR that backends
//! compile (with the interface they implement), and diagnostics rendering.

pub mod approx;
pub mod autodiff;
pub mod backend;
pub mod builtins;
pub mod derive;
pub mod diagnostics;
pub mod emit;
pub mod interpret;
pub mod ir;
pub mod kernel;
mod lower;
pub mod objective;
pub mod plan;
pub mod program;
pub mod simplify;

pub use lower::{MAX_INLINE_DEPTH, MAX_STATE_SLOTS, MAX_WORK};
pub use optc_grammar::{Diagnostic, FileId, Span};
pub use program::{Origin, Program, SourceFile};
