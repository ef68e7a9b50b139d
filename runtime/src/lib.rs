//! The runtime: what a training loop calls. An [`Optimizer`] holds a compiled
//! rule, its hyperparameter values (constants or schedules of `t`) and its
//! state, and applies one step to many tensors at once. Steps are atomic: a
//! step that fails leaves parameters and state exactly as they were.
//! [`trace`] replays recorded gradients in the golden-file schema.

pub mod adjoint;
mod bind;
pub mod buffer;
pub mod checkpoint;
pub mod fused;
mod pool;
pub mod precision;
pub mod trace;

use bind::check_shapes;
pub use bind::Bindings;

use std::fmt;
use std::sync::Arc;

use optc_compiler::interpret::{self, Real, StepInputs, Value};
use optc_compiler::ir::{Kind, Rule, ScalarExpr};

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
        expected: optc_compiler::kernel::Storage,
        found: optc_compiler::kernel::Storage,
    },
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
            Error::Checkpoint(message) => write!(f, "checkpoint: {message}"),
            Error::Internal(message) => write!(f, "internal error: {message}"),
        }
    }
}

impl std::error::Error for Error {}

/// A rule with bound hyperparameters and its state, ready to step. Elements
/// are f32 by default; `Optimizer<f64>` runs the same rule in f64, to
/// measure how much of a difference is f32 rounding.
#[derive(Clone, Debug)]
pub struct Optimizer<F = f32> {
    rule: Arc<Rule>,
    hypers: Bindings,
    /// Each state slot, once the first step has run.
    state: Option<Vec<Value<F>>>,
    /// Steps taken so far.
    step: u64,
    /// Element counts of the tensors, fixed by the first step.
    numels: Option<Vec<usize>>,
}

impl<F: Real> Optimizer<F> {
    /// Binds the rule's hyperparameters: each takes its value from
    /// `overrides` (by name), else its default.
    pub fn new(
        rule: Arc<Rule>,
        overrides: Vec<(String, ScalarExpr)>,
    ) -> Result<Optimizer<F>, Error> {
        Ok(Optimizer {
            hypers: Bindings::new(&rule, overrides)?,
            rule,
            state: None,
            step: 0,
            numels: None,
        })
    }

    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The hyperparameter values the next step will use, in the rule's order.
    pub fn hyper_values(&self) -> Vec<f64> {
        self.hypers.values(self.step + 1)
    }

    /// Applies one step to `params` given `grads`. On error nothing changes.
    pub fn step(&mut self, params: &mut [&mut [F]], grads: &[&[F]]) -> Result<(), Error> {
        let numels: Vec<usize> = params.iter().map(|p| p.len()).collect();
        check_shapes(
            self.numels.as_deref(),
            &numels,
            grads.iter().map(|g| g.len()),
        )?;
        let hypers = self.hyper_values();
        let views: Vec<&[F]> = params.iter().map(|p| &**p).collect();
        let outputs = interpret::step(
            &self.rule,
            &StepInputs {
                params: &views,
                grads,
                step: self.step + 1,
                hypers: &hypers,
                state: self.state.as_deref(),
            },
        )
        .map_err(Error::Internal)?;
        for (param, new) in params.iter_mut().zip(outputs.params) {
            param.copy_from_slice(&new);
        }
        self.state = Some(outputs.state);
        self.numels = Some(numels);
        self.step += 1;
        Ok(())
    }
}
