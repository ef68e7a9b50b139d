//! Binding hyperparameters by name (defaults, per-call values, schedules)
//! and checking that a step's tensors match.

use optc_compiler::interpret;
use optc_compiler::ir::{Rule, ScalarExpr};

use crate::Error;

/// One program per hyperparameter of a rule, evaluated at every step.
#[derive(Clone, Debug)]
pub struct Bindings {
    programs: Vec<ScalarExpr>,
}

impl Bindings {
    /// Each hyperparameter takes its value from `overrides` (by name), else its default.
    pub fn new(rule: &Rule, overrides: Vec<(String, ScalarExpr)>) -> Result<Bindings, Error> {
        let mut programs: Vec<Option<ScalarExpr>> =
            rule.hypers.iter().map(|h| h.default.clone()).collect();
        for (name, value) in overrides {
            let index = rule.hyper_index(&name).ok_or_else(|| Error::UnknownHyper {
                name: name.clone(),
                known: rule.hypers.iter().map(|h| h.name.clone()).collect(),
            })?;
            let expected = rule.hypers[index].kind;
            if value.kind() != expected {
                return Err(Error::HyperKind { name, expected });
            }
            programs[index] = Some(value);
        }
        let programs = programs
            .into_iter()
            .zip(&rule.hypers)
            .map(|(value, hyper)| value.ok_or_else(|| Error::MissingHyper(hyper.name.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Bindings { programs })
    }

    /// The source text of each hyperparameter's value, in the rule's order.
    pub fn texts(&self) -> Vec<&str> {
        self.programs.iter().map(|p| p.text.as_str()).collect()
    }

    /// The values at step `step` (1-based), in the rule's order; each may
    /// depend on `t` and on the hyperparameters before it.
    pub fn values(&self, step: u64) -> Vec<f64> {
        let mut values = Vec::with_capacity(self.programs.len());
        for program in &self.programs {
            let value = interpret::scalar(program, step, &values);
            values.push(value);
        }
        values
    }
}

/// Checks a step's tensors: as many gradients as parameters, each of its
/// parameter's length, and (after the first step) the sizes of the first step.
pub(crate) fn check_shapes(
    first: Option<&[usize]>,
    numels: &[usize],
    grad_lengths: impl ExactSizeIterator<Item = usize>,
) -> Result<(), Error> {
    if grad_lengths.len() != numels.len() {
        return Err(Error::TensorCount {
            expected: numels.len(),
            found: grad_lengths.len(),
        });
    }
    for (tensor, (found, &expected)) in grad_lengths.zip(numels).enumerate() {
        if found != expected {
            return Err(Error::Length {
                tensor,
                expected,
                found,
            });
        }
    }
    if let Some(first) = first {
        if first.len() != numels.len() {
            return Err(Error::TensorCount {
                expected: first.len(),
                found: numels.len(),
            });
        }
        for (tensor, (&expected, &found)) in first.iter().zip(numels).enumerate() {
            if expected != found {
                return Err(Error::Length {
                    tensor,
                    expected,
                    found,
                });
            }
        }
    }
    Ok(())
}
