//! The host side of running a rule's pass plan, shared by every executor that
//! runs kernels: hyperparameter arithmetic, bias corrections and reduction
//! results (group and tensor values) computed once per group or tensor in
//! f64, exactly as the interpreter computes them; the scalar arguments of
//! each pass; reductions combined in a fixed order; and the rule's tensor and
//! group state, which lives here, on the host, whatever memory the
//! elementwise state lives in. An executor only says how a pass runs over
//! the elements of a list of tensors ([`Launch`]).
//!
//! Reductions over elements arrive as partial results per tensor and per
//! chunk of [`crate::CHUNK`] elements; they are combined in chunk order, then
//! in tensor order (per parameter group, or over every group of the step),
//! so results never depend on how an executor splits the work.

use std::sync::Arc;

use optc_compiler::interpret::{host_apply, host_keep, Scalars};
use optc_compiler::ir::{Input, Node, ReduceOp, Rule, Scope, Shape};
use optc_compiler::kernel::{Kernel, Rounding, Storage};
use optc_compiler::plan::Plan;

use super::{Layout, SlotValues, StepRequest, Stored};
use crate::precision::Precision;
use crate::shard::{self, Sharding};
use crate::Error;

/// Which of a rule's two plans a pass belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A group's first step: state comes from the rule's initialisers.
    First,
    /// Every later step.
    Steady,
}

/// One pass of one plan over the elements of some tensors.
pub struct Launch<'a> {
    pub phase: Phase,
    pub pass: usize,
    /// The tensors (indices into the layout), in order.
    pub tensors: &'a [usize],
    /// The kernel's scalar arguments for each of those tensors.
    pub scalars: &'a [Vec<f32>],
}

/// Partial accumulator values of a pass: per launched tensor, per chunk of
/// [`crate::CHUNK`] elements in order, one value per accumulator.
pub type Partials = Vec<Vec<Vec<f64>>>;

/// A tensor or group state slot's values.
#[derive(Clone, Debug, PartialEq)]
enum HostSlot {
    /// Per-element: the executor's memory.
    Elem,
    /// One value per tensor of the layout.
    Tensor(Vec<f64>),
    /// One value per group of the layout.
    Group(Vec<f64>),
}

/// A rule's two plans (with the optimizer's storage types) and its tensor
/// and group state.
pub struct PlanState {
    rule: Arc<Rule>,
    first: Plan,
    steady: Plan,
    precision: Precision,
    /// Which nodes hold their host value in f32 ([`Scalars`]).
    f32_nodes: Vec<bool>,
    slots: Vec<HostSlot>,
    /// Whether any reduction of the rule is group-wide.
    group_reductions: bool,
    /// Whole tensors' sizes and the collective that gathers reductions,
    /// when the tensors are this rank's shards.
    full_numels: Option<Vec<usize>>,
    collective: Option<Box<dyn shard::Collective>>,
}

impl PlanState {
    /// Plans `rule`'s first and later steps, kernels storing parameters,
    /// gradients and state as `precision` says, host values computed as
    /// `scalars` says.
    pub fn new(rule: Arc<Rule>, precision: Precision, scalars: Scalars) -> PlanState {
        let plan = |first_step: bool| {
            let mut plan = Plan::new(&rule, first_step);
            for pass in &mut plan.passes {
                store_as(&mut pass.kernel, &precision);
            }
            plan
        };
        let (first, steady) = (plan(true), plan(false));
        let group_reductions = rule.reduces_per_group();
        let f32_nodes = scalars.f32_nodes(&rule.graph);
        PlanState {
            slots: vec![HostSlot::Elem; rule.states.len()],
            rule,
            f32_nodes,
            first,
            steady,
            precision,
            group_reductions,
            full_numels: None,
            collective: None,
        }
    }

    /// Steps shards of tensors from now on: reductions gather every rank's
    /// partials through `sharding`'s collective; `numel` is the whole
    /// tensor's.
    pub fn shard(&mut self, sharding: Sharding) {
        self.full_numels = Some(sharding.full_numels);
        self.collective = Some(sharding.collective);
    }

    pub fn plan(&self, phase: Phase) -> &Plan {
        match phase {
            Phase::First => &self.first,
            Phase::Steady => &self.steady,
        }
    }

    /// Sizes the tensor and group state for `layout` (NaN until a group's
    /// first step sets it).
    pub fn bind(&mut self, layout: &Layout) {
        self.slots = self
            .rule
            .states
            .iter()
            .map(|slot| match slot.shape {
                Shape::Rows | Shape::Cols | Shape::Elem | Shape::Gram => HostSlot::Elem,
                Shape::Tensor => HostSlot::Tensor(vec![f64::NAN; layout.tensors.len()]),
                Shape::Group => HostSlot::Group(vec![f64::NAN; layout.groups.len()]),
            })
            .collect();
    }

    /// Per-element state buffers that a group's first step reads filled with
    /// a constant: (index among the per-element slots, value).
    pub fn first_step_fills(&self) -> Vec<(usize, f32)> {
        let plan = &self.first;
        plan.state_buffers
            .iter()
            .zip(&plan.fill)
            .filter_map(|(&buffer, &fill)| Some((buffer? as usize - 2, fill?)))
            .collect()
    }

    /// Checks what [`PlanState::step`] cannot do: reductions across groups
    /// when some groups take their first step and others a later one (their
    /// passes run separately).
    pub fn check(&self, request: &StepRequest) -> Result<(), Error> {
        let first = request.members.iter().filter(|g| g.step == 1).count();
        let mixed = first > 0 && first < request.members.len();
        if request.across_groups && self.group_reductions && mixed {
            return Err(Error::Groups(
                "group-wide reductions across groups need every group that steps at the same \
                 stage: some groups take their first step and others a later one (unfreeze \
                 groups before the first step, or reduce per group)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Runs one step: for each phase with groups in it (first steps, then
    /// later ones), every stage's host values and then its pass, through
    /// `run_pass`; then updates the tensor and group state. Fails only
    /// where [`PlanState::check`] does, or where a sharded step's collective
    /// fails (after earlier passes ran).
    pub fn step(
        &mut self,
        layout: &Layout,
        request: &StepRequest,
        run_pass: &mut dyn FnMut(&Launch) -> Partials,
    ) -> Result<(), Error> {
        self.check(request)?;
        let mut collective = self.collective.take();
        let result = self.run_phases(layout, request, run_pass, &mut collective);
        self.collective = collective;
        result
    }

    /// [`PlanState::step`] after the checks.
    fn run_phases(
        &mut self,
        layout: &Layout,
        request: &StepRequest,
        run_pass: &mut dyn FnMut(&Launch) -> Partials,
        collective: &mut Option<Box<dyn shard::Collective>>,
    ) -> Result<(), Error> {
        for phase in [Phase::First, Phase::Steady] {
            let members: Vec<usize> = (0..request.members.len())
                .filter(|&k| (request.members[k].step == 1) == (phase == Phase::First))
                .collect();
            let mut tensors = Vec::new();
            let mut member_of = Vec::new();
            for (tensor, part) in request.member_of.iter().enumerate() {
                if let Some(m) = part.and_then(|k| members.iter().position(|&x| x == k)) {
                    tensors.push(tensor);
                    member_of.push(m);
                }
            }
            if tensors.is_empty() {
                continue;
            }
            let first: Vec<usize> = (0..members.len())
                .map(|m| member_of.iter().position(|&x| x == m).unwrap_or(0))
                .collect();
            let launch = Stages {
                rule: &self.rule,
                plan: self.plan(phase),
                phase,
                layout,
                request,
                members: &members,
                tensors: &tensors,
                member_of: &member_of,
                first: &first,
                across_groups: request.across_groups,
                precision: &self.precision,
                f32_nodes: &self.f32_nodes,
                full_numels: self.full_numels.as_deref(),
            };
            let values = launch.run(&self.slots, run_pass, collective)?;
            for (slot, out) in self.rule.state_out.iter().enumerate() {
                let value = values[out.index()].as_ref();
                match &mut self.slots[slot] {
                    HostSlot::Elem => {}
                    HostSlot::Tensor(per_tensor) => {
                        for (i, &t) in tensors.iter().enumerate() {
                            per_tensor[t] = value.map_or(f64::NAN, |v| v.at(i, &member_of));
                        }
                    }
                    HostSlot::Group(per_group) => {
                        for (m, &k) in members.iter().enumerate() {
                            per_group[request.members[k].group] =
                                value.map_or(f64::NAN, |v| v.of_group(m, first[m]));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every state slot in the rule's order: tensor and group slots from
    /// here, per-element slots as `elem` reads them (its argument: the
    /// slot's index among the per-element buffers).
    pub fn slot_values(&self, elem: impl Fn(usize) -> Vec<Stored>) -> Vec<SlotValues> {
        let buffers = &self.steady.state_buffers;
        self.host_state()
            .into_iter()
            .zip(buffers)
            .map(|(host, buffer)| match (host, buffer) {
                (Some(values), _) => values,
                (None, Some(buffer)) => SlotValues::Vectors(elem(*buffer as usize - 2)),
                (None, None) => SlotValues::Vectors(Vec::new()),
            })
            .collect()
    }

    /// The tensor and group slots' values (per-element slots: `None`).
    pub fn host_state(&self) -> Vec<Option<SlotValues>> {
        self.slots
            .iter()
            .map(|slot| match slot {
                HostSlot::Elem => None,
                HostSlot::Tensor(x) => Some(SlotValues::Tensor(x.clone())),
                HostSlot::Group(x) => Some(SlotValues::Group(x.clone())),
            })
            .collect()
    }

    /// Sets the tensor and group slots from `state` (per-element slots are
    /// skipped; the caller checked the shapes).
    pub fn set_host_state(&mut self, state: &[SlotValues]) {
        for (slot, value) in self.slots.iter_mut().zip(state) {
            match (slot, value) {
                (HostSlot::Tensor(x), SlotValues::Tensor(y))
                | (HostSlot::Group(x), SlotValues::Group(y)) => x.clone_from(y),
                _ => {}
            }
        }
    }
}

/// Sets a plan kernel's buffer storage (p and g, then state) and rounding:
/// stochastic rounding takes its seed as one more scalar argument.
fn store_as(kernel: &mut Kernel, precision: &Precision) {
    for (buffer, storage) in kernel.storage.iter_mut().enumerate() {
        *storage = if buffer < 2 {
            precision.params
        } else {
            precision.state
        };
    }
    let rounds = kernel
        .stores
        .iter()
        .any(|&(b, _)| kernel.storage[b as usize] == Storage::Bf16);
    if precision.stochastic_rounding && rounds {
        kernel.rounding = Rounding::Stochastic {
            seed_scalar: kernel.scalars,
        };
        kernel.scalars += 1;
    }
}

/// One phase of a step: a plan run over the tensors of some groups.
struct Stages<'a> {
    rule: &'a Rule,
    plan: &'a Plan,
    phase: Phase,
    layout: &'a Layout,
    request: &'a StepRequest,
    /// The request's parts in this phase (indices into `request.members`).
    members: &'a [usize],
    /// The launched tensors, and for each the member group it belongs to.
    tensors: &'a [usize],
    member_of: &'a [usize],
    /// Each member group's first launched tensor.
    first: &'a [usize],
    across_groups: bool,
    precision: &'a Precision,
    f32_nodes: &'a [bool],
    /// Whole tensors' sizes, when the launched tensors are shards.
    full_numels: Option<&'a [usize]>,
}

/// A host value of a launch: one f64 per member group (group values, which
/// are computed once per group, not per tensor) or per launched tensor.
#[derive(Clone, Debug)]
enum HostValue {
    Groups(Vec<f64>),
    Tensors(Vec<f64>),
}

/// Reads an operand's value where a host node is being computed.
type Operand<'v> = dyn Fn(&HostValue) -> f64 + 'v;

impl HostValue {
    /// Its value for launched tensor `i` (`member_of[i]` is the tensor's group).
    fn at(&self, i: usize, member_of: &[usize]) -> f64 {
        match self {
            HostValue::Groups(x) => x[member_of[i]],
            HostValue::Tensors(x) => x[i],
        }
    }

    /// Its value for member group `m`, whose first launched tensor is `first`
    /// (a group node's operands are group values; lowering guarantees it).
    fn of_group(&self, m: usize, first: usize) -> f64 {
        match self {
            HostValue::Groups(x) => x[m],
            HostValue::Tensors(x) => x[first],
        }
    }
}

impl Stages<'_> {
    /// Runs every stage; returns the host value of every host node. With a
    /// collective, each pass's reduction partials are every rank's.
    fn run(
        &self,
        slots: &[HostSlot],
        run_pass: &mut dyn FnMut(&Launch) -> Partials,
        collective: &mut Option<Box<dyn shard::Collective>>,
    ) -> Result<Vec<Option<HostValue>>, Error> {
        let graph = &self.rule.graph;
        let mut values: Vec<Option<HostValue>> = vec![None; graph.len()];
        let passes = self.plan.passes.len();
        for stage in 0..=passes {
            for (h, node) in graph.iter() {
                let is_host = graph.ty(h).shape != Shape::Elem
                    && !matches!(node, Node::Reduce(_, _, arg) if graph.ty(*arg).shape == Shape::Elem);
                if is_host && self.plan.stage[h.index()] == stage && values[h.index()].is_none() {
                    values[h.index()] = Some(self.host_value(h, node, &values, slots));
                }
            }
            if stage == passes {
                break;
            }
            let pass = &self.plan.passes[stage];
            let seeded = matches!(pass.kernel.rounding, Rounding::Stochastic { .. });
            let scalars: Vec<Vec<f32>> = (0..self.tensors.len())
                .map(|i| {
                    let mut args: Vec<f32> = pass
                        .scalar_args
                        .iter()
                        .map(|&h| {
                            let value = values[h.index()].as_ref();
                            value.map_or(f32::NAN, |v| v.at(i, self.member_of) as f32)
                        })
                        .collect();
                    if seeded {
                        let seed = self.precision.step_seed(self.step_of(i), self.tensors[i]);
                        args.push(f32::from_bits(seed));
                    }
                    args
                })
                .collect();
            let mut partials = run_pass(&Launch {
                phase: self.phase,
                pass: stage,
                tensors: self.tensors,
                scalars: &scalars,
            });
            if let (Some(collective), false) = (collective.as_mut(), pass.reductions.is_empty()) {
                let gathered = collective
                    .all_gather(&shard::encode(&partials))
                    .map_err(|e| Error::Unsupported(format!("sharded step: {e}")))?;
                partials = shard::join(
                    &gathered,
                    self.tensors.len(),
                    pass.kernel.accumulators.len(),
                )
                .map_err(|e| Error::Unsupported(format!("sharded step: {e}")))?;
            }
            for (k, &reduction) in pass.reductions.iter().enumerate() {
                let Node::Reduce(op, scope, _) = *graph.node(reduction) else {
                    continue;
                };
                let per_tensor: Vec<f64> = partials
                    .iter()
                    .map(|chunks| {
                        chunks.iter().fold(Kernel::identity(op), |acc, p| {
                            Kernel::combine(op, acc, p[k])
                        })
                    })
                    .collect();
                let in_f32 = self.f32_nodes[reduction.index()];
                values[reduction.index()] = Some(self.combine(op, scope, per_tensor, in_f32));
            }
        }
        Ok(values)
    }

    /// The step number of launched tensor `i`'s group.
    fn step_of(&self, i: usize) -> u64 {
        self.request.members[self.members[self.member_of[i]]].step
    }

    /// Per-tensor reduction results combined as `scope` says: kept per
    /// tensor, or folded in tensor order per group (or over every group).
    fn combine(&self, op: ReduceOp, scope: Scope, per_tensor: Vec<f64>, in_f32: bool) -> HostValue {
        let keep = |x: f64| host_keep(in_f32, x);
        let per_tensor: Vec<f64> = per_tensor.into_iter().map(keep).collect();
        if scope == Scope::Tensor {
            return HostValue::Tensors(per_tensor);
        }
        let fold = |keep: &dyn Fn(usize) -> bool| {
            (0..per_tensor.len())
                .filter(|&i| keep(i))
                .fold(Kernel::identity(op), |a, i| {
                    Kernel::combine(op, a, per_tensor[i])
                })
        };
        HostValue::Groups(if self.across_groups {
            vec![keep(fold(&|_| true)); self.members.len()]
        } else {
            (0..self.members.len())
                .map(|m| keep(fold(&|i| self.member_of[i] == m)))
                .collect()
        })
    }

    /// The value of a host (group or tensor) node, as the interpreter
    /// defines it: once per member group for a group node, once per launched
    /// tensor for a tensor node.
    fn host_value(
        &self,
        h: optc_compiler::ir::Handle,
        node: &Node,
        values: &[Option<HostValue>],
        slots: &[HostSlot],
    ) -> HostValue {
        let members = self.members.len();
        let n = self.tensors.len();
        let missing = HostValue::Groups(vec![f64::NAN; members]);
        let get = |c: optc_compiler::ir::Handle| values[c.index()].as_ref().unwrap_or(&missing);
        let first = self.first;
        let group = |m: usize| &self.request.members[self.members[m]];
        let numel = |i: usize| {
            let t = self.tensors[i];
            self.full_numels
                .map_or(self.layout.tensors[t].numel, |full| full[t])
        };
        let view = |i: usize| self.layout.tensors[self.tensors[i]].view;
        let per_group = |f: &dyn Fn(usize) -> f64| HostValue::Groups((0..members).map(f).collect());
        let per_tensor = |f: &dyn Fn(usize) -> f64| HostValue::Tensors((0..n).map(f).collect());
        // Elementwise arithmetic on host values: per group for a group node.
        let map = |f: &dyn Fn(&Operand) -> f64| {
            if self.rule.graph.ty(h).shape == Shape::Group {
                per_group(&|m| f(&|v: &HostValue| v.of_group(m, first[m])))
            } else {
                per_tensor(&|i| f(&|v: &HostValue| v.at(i, self.member_of)))
            }
        };
        match *node {
            Node::Const(bits) => HostValue::Groups(vec![f64::from_bits(bits); members]),
            Node::Bool(b) => HostValue::Groups(vec![if b { 1.0 } else { 0.0 }; members]),
            Node::Input(input, _) => match input {
                Input::Step => per_group(&|m| group(m).step as f64),
                Input::Numel => per_tensor(&|i| numel(i) as f64),
                Input::Rank | Input::Rows => {
                    per_tensor(&|i| view(i).size(input).map_or(f64::NAN, |n| n as f64))
                }
                // Shards are of vectors: one row of the whole tensor's elements.
                Input::Cols => per_tensor(&|i| (numel(i) / view(i).rows.max(1)) as f64),
                Input::Hyper(k) => per_group(&|m| group(m).hypers[k as usize]),
                Input::State(k) => {
                    if self.phase == Phase::First {
                        get(self.rule.states[k as usize].init).clone()
                    } else {
                        match &slots[k as usize] {
                            HostSlot::Tensor(x) => per_tensor(&|i| x[self.tensors[i]]),
                            HostSlot::Group(x) => per_group(&|m| x[group(m).group]),
                            HostSlot::Elem => missing.clone(),
                        }
                    }
                }
                Input::Param | Input::Grad => missing.clone(),
            },
            Node::Reduce(op, scope, arg) => {
                // A reduction of a broadcast scalar: `n` copies of its f32 rounding.
                let value = get(arg);
                let per_tensor = (0..n)
                    .map(|i| {
                        let w = f64::from(value.at(i, self.member_of) as f32);
                        match op {
                            _ if numel(i) == 0 => Kernel::identity(op),
                            // Exact: n copies of an f32 sum exactly in f64 (n < 2^29);
                            // adding to the identity +0 turns a -0 sum into +0, as the fold does.
                            ReduceOp::Sum => {
                                Kernel::combine(op, Kernel::identity(op), numel(i) as f64 * w)
                            }
                            // The fold of one value into the identity (NaN is ignored, as by f64::max).
                            _ => Kernel::combine(op, Kernel::identity(op), w),
                        }
                    })
                    .collect();
                self.combine(op, scope, per_tensor, self.f32_nodes[h.index()])
            }
            // Not host values (and rules with them are not planned).
            Node::Gram(..) | Node::MatMul(..) | Node::Transpose(_) => missing.clone(),
            Node::Unary(..) | Node::Binary(..) | Node::Select(..) | Node::Lerp(..) => {
                let in_f32 = self.f32_nodes[h.index()];
                map(&|at| host_apply(in_f32, node, |c| at(get(c))))
            }
        }
    }
}
