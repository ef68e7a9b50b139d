//! The interpreter as an executor (`--backend interp`): each group's step is
//! one call of `optc_compiler::interpret::step`, the semantics every kernel
//! backend is held to, with elementwise values in f32 or (to see how much of
//! a difference is f32 rounding) f64. No kernels, no threads. Parameter
//! groups run one after another, each on its own tensors, so group-wide
//! reductions are per group; reductions across groups need a kernel backend.

use std::sync::Arc;

use optc_compiler::interpret::{self, Real, Scalars, StepInputs, Value};
use optc_compiler::ir::{Rule, Shape};

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

/// One state slot of every tensor: per-element (or per-row, per-column)
/// values per tensor, one value per tensor, or one per group.
#[derive(Clone, Debug)]
pub(super) enum Slot<F> {
    Vectors(Shape, Vec<Vec<F>>),
    Tensor(Vec<f64>),
    Group(Vec<f64>),
}

pub struct InterpExecutor<F> {
    pub(super) rule: Arc<Rule>,
    name: String,
    /// Every slot of every tensor (meaningless for a tensor that has not
    /// stepped: its first step starts from the initialisers).
    pub(super) state: Vec<Slot<F>>,
    /// Parameters the caller uploaded.
    pub(super) params: Option<Vec<Vec<F>>>,
    group_reductions: bool,
    scalars: Scalars,
}

impl<F: InterpElement> InterpExecutor<F> {
    pub fn new(rule: Arc<Rule>, name: &str, scalars: Scalars) -> InterpExecutor<F> {
        let group_reductions = rule.reduces_per_group();
        InterpExecutor {
            rule,
            name: name.to_string(),
            state: Vec::new(),
            params: None,
            group_reductions,
            scalars,
        }
    }

    /// Refuses a step whose group-wide reductions would span several
    /// parts: the interpreter (and the staged executor) run parts one at a time.
    pub(super) fn refuse_reductions_across_groups(
        &self,
        request: &StepRequest,
    ) -> Result<(), Error> {
        if request.across_groups && self.group_reductions && request.members.len() > 1 {
            return Err(Error::Unsupported(format!(
                "the `{}` backend runs parameter groups one at a time, so its group-wide \
                 reductions are per group; reductions across groups need a kernel backend",
                self.name
            )));
        }
        Ok(())
    }

    /// The state of part `tensors` (of group `group`), as the interpreter takes it.
    fn gather(&self, tensors: &[usize], group: usize) -> Vec<Value<F>> {
        (0..self.state.len())
            .map(|slot| self.slot_value(slot, tensors, group))
            .collect()
    }

    /// State slot `slot` of part `tensors` (of group `group`), as the
    /// interpreter takes it.
    pub(super) fn slot_value(&self, slot: usize, tensors: &[usize], group: usize) -> Value<F> {
        match &self.state[slot] {
            Slot::Vectors(shape, xs) => {
                Value::vectors(*shape, tensors.iter().map(|&t| xs[t].clone()).collect())
            }
            Slot::Tensor(xs) => Value::Tensor(tensors.iter().map(|&t| xs[t]).collect()),
            Slot::Group(xs) => Value::Group(xs[group]),
        }
    }

    /// Writes a part's new state back (a slot whose value has another
    /// shape keeps its own).
    pub(super) fn scatter(&mut self, tensors: &[usize], group: usize, values: Vec<Value<F>>) {
        for (slot, value) in self.state.iter_mut().zip(values) {
            match (slot, value) {
                (
                    Slot::Vectors(_, xs),
                    Value::Rows(new) | Value::Cols(new) | Value::Elem(new) | Value::Gram(new),
                ) => {
                    for (&t, x) in tensors.iter().zip(new) {
                        xs[t] = x;
                    }
                }
                (Slot::Tensor(xs), Value::Tensor(new)) => {
                    for (&t, x) in tensors.iter().zip(new) {
                        xs[t] = x;
                    }
                }
                (Slot::Group(xs), Value::Group(x)) => xs[group] = x,
                _ => {}
            }
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
        self.state = self
            .rule
            .states
            .iter()
            .map(|slot| match slot.shape {
                shape @ (Shape::Rows | Shape::Cols | Shape::Elem | Shape::Gram) => Slot::Vectors(
                    shape,
                    layout
                        .tensors
                        .iter()
                        .map(|t| vec![F::ZERO; t.view.len(shape)])
                        .collect(),
                ),
                Shape::Tensor => Slot::Tensor(vec![f64::NAN; layout.tensors.len()]),
                Shape::Group => Slot::Group(vec![f64::NAN; layout.groups.len()]),
            })
            .collect();
        Ok(())
    }

    fn step(
        &mut self,
        layout: &Layout,
        request: &StepRequest,
        mut params: Params<'_, '_>,
        grads: HostTensors<'_, '_>,
    ) -> Result<(), Error> {
        self.refuse_reductions_across_groups(request)?;
        let members = &request.members;
        // Every part's results first, then the commit: a failed step changes nothing.
        let mut results = Vec::new();
        for (member, part) in members.iter().enumerate() {
            let tensors: Vec<usize> = request.tensors_of(member).collect();
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
            let state = (part.step > 1).then(|| self.gather(&tensors, part.group));
            let shapes: Vec<_> = tensors.iter().map(|&t| layout.tensors[t].view).collect();
            let outputs = interpret::step_with(
                &self.rule,
                &StepInputs {
                    params: &views,
                    grads: &grad_views,
                    step: part.step,
                    hypers: &part.hypers,
                    state: state.as_deref(),
                    views: Some(&shapes),
                },
                self.scalars,
            )
            .map_err(Error::Internal)?;
            results.push((part.group, tensors, outputs));
        }
        for (group, tensors, outputs) in results {
            for (&t, new) in tensors.iter().zip(outputs.params) {
                match (&mut params, &mut self.params) {
                    (Params::Borrowed(p), _) => p.write(t, new.iter().map(|x| x.to_f64() as f32)),
                    (Params::Owned, Some(owned)) => owned[t] = new,
                    (Params::Owned, None) => {}
                }
            }
            self.scatter(&tensors, group, outputs.state);
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

    fn state(&self, _layout: &Layout) -> Vec<SlotValues> {
        self.state
            .iter()
            .map(|slot| match slot {
                Slot::Vectors(_, xs) => {
                    SlotValues::Vectors(xs.iter().map(|x| F::stored(x)).collect())
                }
                Slot::Tensor(xs) => SlotValues::Tensor(xs.clone()),
                Slot::Group(xs) => SlotValues::Group(xs.clone()),
            })
            .collect()
    }

    fn state_dtype(&self) -> &'static str {
        F::stored(&[]).dtype()
    }

    fn set_state(&mut self, _layout: &Layout, state: &[SlotValues]) -> Result<(), Error> {
        let slots = state
            .iter()
            .zip(&self.rule.states)
            .map(|(value, slot)| match value {
                SlotValues::Vectors(xs) => xs
                    .iter()
                    .map(F::from_stored)
                    .collect::<Option<Vec<_>>>()
                    .map(|xs| Slot::Vectors(slot.shape, xs)),
                SlotValues::Tensor(xs) => Some(Slot::Tensor(xs.clone())),
                SlotValues::Group(xs) => Some(Slot::Group(xs.clone())),
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                Error::Checkpoint("f64 state cannot be stored by the f32 interpreter".into())
            })?;
        self.state = slots;
        Ok(())
    }
}
