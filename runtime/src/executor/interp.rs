//! The interpreter as an executor (`--backend interp`): each group's step is
//! one call of `optc_compiler::interpret::step`, the semantics every kernel
//! backend is held to, with elementwise values in f32 or (to see how much of
//! a difference is f32 rounding) f64. No kernels, no threads. Parameter
//! groups run one after another, each on its own tensors, so group-wide
//! reductions are per group; reductions across groups need a kernel backend.

use std::sync::Arc;

use optc_compiler::interpret::{self, Real, Scalars, StepInputs, Value};
use optc_compiler::ir::{Node, Rule, Scope, Shape};

use super::{Executor, HostTensors, Layout, Params, SlotValues, StepRequest, Stored};
use crate::Error;

/// The element types the interpreter runs in.
pub trait InterpElement: Real {
    fn stored(values: &[Self]) -> Stored;
    /// Elements of `stored` in this type (exactly: bf16 and f32 widen, f64 only into f64).
    fn from_stored(stored: &Stored) -> Option<Vec<Self>>;
}

impl InterpElement for f32 {
    fn stored(values: &[f32]) -> Stored {
        Stored::F32(values.to_vec())
    }
    fn from_stored(stored: &Stored) -> Option<Vec<f32>> {
        match stored {
            Stored::F64(_) => None,
            other => Some(other.to_f32()),
        }
    }
}

impl InterpElement for f64 {
    fn stored(values: &[f64]) -> Stored {
        Stored::F64(values.to_vec())
    }
    fn from_stored(stored: &Stored) -> Option<Vec<f64>> {
        Some(stored.to_f64())
    }
}

pub struct InterpExecutor<F> {
    rule: Arc<Rule>,
    name: String,
    /// Per group: the state after its last step (`None` before its first).
    state: Vec<Option<Vec<Value<F>>>>,
    /// Parameters the caller uploaded.
    params: Option<Vec<Vec<F>>>,
    group_reductions: bool,
    scalars: Scalars,
}

impl<F: InterpElement> InterpExecutor<F> {
    pub fn new(rule: Arc<Rule>, name: &str, scalars: Scalars) -> InterpExecutor<F> {
        let group_reductions = rule
            .graph
            .iter()
            .any(|(_, node)| matches!(node, Node::Reduce(_, Scope::Group, _)));
        InterpExecutor {
            rule,
            name: name.to_string(),
            state: Vec::new(),
            params: None,
            group_reductions,
            scalars,
        }
    }
}

fn widen<F: Real>(values: Vec<f32>) -> Vec<F> {
    values
        .into_iter()
        .map(|x| F::from_f64(f64::from(x)))
        .collect()
}

impl<F: InterpElement> Executor for InterpExecutor<F> {
    fn backend(&self) -> &str {
        &self.name
    }

    fn bind(&mut self, layout: &Layout) -> Result<(), Error> {
        self.state = vec![None; layout.groups.len()];
        Ok(())
    }

    fn step(
        &mut self,
        layout: &Layout,
        request: &StepRequest,
        mut params: Params<'_, '_>,
        grads: HostTensors<'_, '_>,
    ) -> Result<(), Error> {
        if request.across_groups && self.group_reductions && request.groups.len() > 1 {
            return Err(Error::Unsupported(
                "the interpreter runs parameter groups one at a time, so its group-wide \
                 reductions are per group; reductions across groups need a kernel backend"
                    .into(),
            ));
        }
        // Every group's results first, then the commit: a failed step changes nothing.
        let mut results = Vec::new();
        for group in &request.groups {
            let tensors: Vec<usize> = layout.tensors_of(group.group).collect();
            let current: Vec<Vec<F>> = tensors
                .iter()
                .map(|&t| match (&params, &self.params) {
                    (Params::Borrowed(p), _) => Ok(widen(p.widened(t))),
                    (Params::Owned, Some(owned)) => Ok(owned[t].clone()),
                    (Params::Owned, None) => {
                        Err(Error::Internal("no parameters were uploaded".into()))
                    }
                })
                .collect::<Result<_, _>>()?;
            let gradients: Vec<Vec<F>> = tensors.iter().map(|&t| widen(grads.widened(t))).collect();
            let views: Vec<&[F]> = current.iter().map(Vec::as_slice).collect();
            let grad_views: Vec<&[F]> = gradients.iter().map(Vec::as_slice).collect();
            let state = if group.step == 1 {
                None
            } else {
                self.state[group.group].as_deref()
            };
            let outputs = interpret::step_with(
                &self.rule,
                &StepInputs {
                    params: &views,
                    grads: &grad_views,
                    step: group.step,
                    hypers: &group.hypers,
                    state,
                },
                self.scalars,
            )
            .map_err(Error::Internal)?;
            results.push((group.group, tensors, outputs));
        }
        for (group, tensors, outputs) in results {
            for (&t, new) in tensors.iter().zip(outputs.params) {
                match (&mut params, &mut self.params) {
                    (Params::Borrowed(p), _) => p.write(t, new.iter().map(|x| x.to_f64() as f32)),
                    (Params::Owned, Some(owned)) => owned[t] = new,
                    (Params::Owned, None) => {}
                }
            }
            self.state[group] = Some(outputs.state);
        }
        Ok(())
    }

    fn upload(&mut self, layout: &Layout, params: HostTensors<'_, '_>) -> Result<(), Error> {
        let tensors = layout.tensors.len();
        self.params = Some((0..tensors).map(|t| widen(params.widened(t))).collect());
        Ok(())
    }

    fn download(&self, _layout: &Layout) -> Result<Vec<Stored>, Error> {
        let params = self
            .params
            .as_ref()
            .ok_or_else(|| Error::Internal("no parameters were uploaded".into()))?;
        Ok(params.iter().map(|p| F::stored(p)).collect())
    }

    fn state(&self, layout: &Layout) -> Vec<SlotValues> {
        // Where each tensor sits within its group.
        let position: Vec<usize> = layout
            .tensors
            .iter()
            .enumerate()
            .map(|(t, info)| layout.tensors_of(info.group).take_while(|&u| u < t).count())
            .collect();
        let group_state = |group: usize, slot: usize| self.state[group].as_ref().map(|s| &s[slot]);
        self.rule
            .states
            .iter()
            .enumerate()
            .map(|(slot, info)| match info.shape {
                Shape::Elem => SlotValues::Elem(
                    layout
                        .tensors
                        .iter()
                        .enumerate()
                        .map(|(t, tensor)| match group_state(tensor.group, slot) {
                            Some(Value::Elem(xs)) => F::stored(&xs[position[t]]),
                            _ => F::stored(&vec![F::ZERO; tensor.numel]),
                        })
                        .collect(),
                ),
                Shape::Tensor => SlotValues::Tensor(
                    layout
                        .tensors
                        .iter()
                        .enumerate()
                        .map(|(t, tensor)| match group_state(tensor.group, slot) {
                            Some(Value::Tensor(xs)) => xs[position[t]],
                            _ => f64::NAN,
                        })
                        .collect(),
                ),
                Shape::Group => SlotValues::Group(
                    (0..layout.groups.len())
                        .map(|g| match group_state(g, slot) {
                            Some(Value::Group(x)) => *x,
                            _ => f64::NAN,
                        })
                        .collect(),
                ),
            })
            .collect()
    }

    fn state_dtype(&self) -> &'static str {
        F::stored(&[]).dtype()
    }

    fn set_state(&mut self, layout: &Layout, state: &[SlotValues]) -> Result<(), Error> {
        let mut groups = Vec::with_capacity(layout.groups.len());
        for group in 0..layout.groups.len() {
            let tensors: Vec<usize> = layout.tensors_of(group).collect();
            let slots = state
                .iter()
                .map(|value| match value {
                    SlotValues::Elem(xs) => tensors
                        .iter()
                        .map(|&t| F::from_stored(&xs[t]))
                        .collect::<Option<Vec<_>>>()
                        .map(Value::Elem),
                    SlotValues::Tensor(xs) => {
                        Some(Value::Tensor(tensors.iter().map(|&t| xs[t]).collect()))
                    }
                    SlotValues::Group(xs) => Some(Value::Group(xs[group])),
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    Error::Checkpoint("f64 state cannot be stored by the f32 interpreter".into())
                })?;
            groups.push(Some(slots));
        }
        self.state = groups;
        Ok(())
    }
}
