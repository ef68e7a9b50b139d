//! The adjoint (vector-Jacobian product) of an optimizer step, run as fused
//! kernels: for differentiable optimization and meta-learning (what TorchOpt
//! offers in Python), the cotangents of a step's inputs — old parameters,
//! gradients, old state, hyperparameters — from those of its outputs, at the
//! speed of a step. The adjoint rule comes from `optc_compiler::derive::adjoint`
//! and runs through the same [`Optimizer`] as the step itself.

use std::sync::Arc;

use optc_compiler::derive::{self, Adjoint};
use optc_compiler::interpret::Value;
use optc_compiler::ir::{MatrixView, Rule, ScalarExpr, Shape};

use crate::{Backend, Error, Optimizer};

/// The adjoint of one step of a rule, compiled.
pub struct AdjointStep {
    optimizer: Optimizer,
    layout: Adjoint,
    /// The base rule's state slot count.
    slots: usize,
}

/// Cotangents of a step's inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Cotangents {
    /// Of the old parameters, one vector per tensor.
    pub params: Vec<Vec<f32>>,
    /// Of the gradients.
    pub grads: Vec<Vec<f32>>,
    /// Of each old state slot, in the rule's order, shaped like the slot.
    pub state: Vec<Value<f32>>,
    /// Of each float hyperparameter, by name (summed over every element).
    pub hypers: Vec<(String, f64)>,
}

impl AdjointStep {
    /// Derives and compiles the adjoint of `rule`'s step, with the rule's
    /// hyperparameters bound as for the step (`overrides` by name).
    pub fn new(
        rule: &Rule,
        overrides: Vec<(String, ScalarExpr)>,
        backend: &Backend,
        threads: usize,
    ) -> Result<AdjointStep, Error> {
        let layout = derive::adjoint(rule);
        let optimizer = Optimizer::builder(Arc::new(layout.rule.clone()))
            .overrides(overrides)
            .backend(backend.clone())
            .threads(threads)
            .build()?;
        Ok(AdjointStep {
            optimizer,
            layout,
            slots: rule.states.len(),
        })
    }

    /// The cotangents of the inputs of step `step` (a step after the first:
    /// `step >= 2`, whose old state is `state`) given `cotangent_params` and
    /// `cotangent_state`, the cotangents of the step's new parameters and new
    /// state. Parameters, gradients and state are the step's inputs, state
    /// shaped as [`Optimizer::set_state`] takes it.
    pub fn vjp(
        &mut self,
        step: u64,
        params: &[&[f32]],
        grads: &[&[f32]],
        state: &[Value<f32>],
        cotangent_params: &[&[f32]],
        cotangent_state: &[Value<f32>],
    ) -> Result<Cotangents, Error> {
        if step < 2 || state.len() != self.slots || cotangent_state.len() != self.slots {
            return Err(Error::Internal(format!(
                "the adjoint takes a step after the first and {} state values and cotangents",
                self.slots
            )));
        }
        let numels: Vec<usize> = params.iter().map(|p| p.len()).collect();
        let cotangent_params: Vec<Vec<f32>> = cotangent_params.iter().map(|c| c.to_vec()).collect();
        let vectors = MatrixView::vectors(&numels);
        let zeros = |shape: Shape| Value::Group(0.0).broadcast(shape, &vectors);
        let mut slots: Vec<Value<f32>> = state.to_vec();
        slots.push(Value::Elem(cotangent_params));
        slots.extend(cotangent_state.iter().cloned());
        let outputs = &self.layout.rule.states[self.layout.adjoint_of_param..];
        slots.extend(outputs.iter().map(|slot| zeros(slot.shape)));
        self.optimizer.set_state(step - 1, &numels, &slots)?;
        let mut unchanged: Vec<Vec<f32>> = params.iter().map(|p| p.to_vec()).collect();
        let mut views: Vec<&mut [f32]> = unchanged.iter_mut().map(Vec::as_mut_slice).collect();
        self.optimizer.step(&mut views, grads)?;
        let read = |slot: usize| {
            let name = &self.layout.rule.states[slot].name;
            self.optimizer
                .state(name)
                .ok_or_else(|| Error::Internal(format!("adjoint slot `{name}` missing")))
        };
        let first = self.layout.adjoint_of_param;
        let state = (0..self.slots)
            .map(|i| {
                let values = read(first + 2 + i)?;
                Ok(match self.layout.rule.states[first + 2 + i].shape {
                    shape @ (Shape::Rows | Shape::Cols | Shape::Elem | Shape::Gram) => {
                        Value::vectors(shape, values)
                    }
                    Shape::Tensor => {
                        Value::Tensor(values.iter().map(|v| f64::from(v[0])).collect())
                    }
                    Shape::Group => Value::Group(values.first().map_or(0.0, |v| f64::from(v[0]))),
                })
            })
            .collect::<Result<_, Error>>()?;
        let hypers = self
            .layout
            .float_hypers
            .iter()
            .enumerate()
            .map(|(k, &hyper)| {
                let values = read(first + 2 + self.slots + k)?;
                let name = self.layout.rule.hypers[hyper].name.clone();
                Ok((name, values.first().map_or(0.0, |v| f64::from(v[0]))))
            })
            .collect::<Result<_, Error>>()?;
        Ok(Cotangents {
            params: read(first)?,
            grads: read(first + 1)?,
            state,
            hypers,
        })
    }
}
