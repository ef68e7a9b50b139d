//! [`Optimizer`]: the one type a training loop uses. It binds a rule's
//! hyperparameters (per parameter group, constants or schedules of `t`),
//! checks every step's tensors, applies the non-finite policy, and runs the
//! step on an executor chosen by its [`Backend`]. Steps are atomic: a step
//! that fails leaves parameters and state exactly as they were.
//!
//! Parameter groups are torch's `param_groups` and optax's masks: tensors
//! selected by name (or glob pattern) that share hyperparameter values, each
//! group with its own step count. Tensors no group selects belong to the
//! default group, which takes the optimizer's own values. Changing a
//! group's hyperparameter between steps never recompiles: kernels take
//! hyperparameters as arguments.

use std::sync::Arc;

use optc_compiler::interpret::{Scalars, Value};
use optc_compiler::ir::{MatrixView, Rule, ScalarExpr, Shape};
use optc_compiler::plan::Plan;

use crate::backend::Backend;
use crate::bind::Bindings;
use crate::executor::{
    Executor, GroupStep, HostTensors, Layout, Params, SlotValues, StepRequest, Stored, TensorInfo,
};
use crate::precision::{Element, Precision};
use crate::Error;

/// The name of the group of every tensor no other group selects.
pub const DEFAULT_GROUP: &str = "default";

/// The most threads a step may run on.
pub const MAX_THREADS: usize = 1024;

/// What a step does with gradients that hold a NaN or an infinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NonFinite {
    /// Run the step anyway: non-finite values flow into parameters and state.
    #[default]
    Propagate,
    /// Skip the step, leaving parameters, state and step counts untouched
    /// (optax's `apply_if_finite`). Costs one extra read of the gradients.
    Skip,
}

/// What a step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Skipped under [`NonFinite::Skip`]: the first non-finite gradient element.
    Skipped {
        tensor: usize,
        index: usize,
    },
}

/// What a rule's group-wide reductions (`group_sum`, `group_norm`, ...:
/// global-norm clipping, Prodigy, DoG) range over when there are several
/// parameter groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GroupReductions {
    /// Each parameter group's own tensors, as torch.optim applies a rule to
    /// each `param_group` (and group state, such as Prodigy's `d`, is per
    /// group).
    #[default]
    PerGroup,
    /// Every tensor of every group that steps (as optax's
    /// `clip_by_global_norm` in front of `multi_transform` sees the whole
    /// model). Group state stays per group.
    AcrossGroups,
}

/// A parameter group: tensors selected by name that share hyperparameter
/// values (on top of the optimizer's own), and can be frozen.
#[derive(Clone, Debug)]
pub struct Group {
    name: String,
    patterns: Vec<String>,
    overrides: Vec<(String, ScalarExpr)>,
    frozen: bool,
}

impl Group {
    pub fn new(name: impl Into<String>) -> Group {
        Group {
            name: name.into(),
            patterns: Vec::new(),
            overrides: Vec::new(),
            frozen: false,
        }
    }

    /// Selects tensors by name: each pattern is a name, or a glob where `*`
    /// matches any run of characters and `?` any one (`*.bias`). A tensor
    /// belongs to the first group that selects it.
    pub fn tensors<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Group {
        self.patterns.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Sets a hyperparameter for this group (a number, a bool or a schedule).
    pub fn set(mut self, name: impl Into<String>, value: impl Into<ScalarExpr>) -> Group {
        self.overrides.push((name.into(), value.into()));
        self
    }

    /// Steps leave the group's tensors (and state) untouched until
    /// [`Optimizer::freeze`] unfreezes it.
    pub fn frozen(mut self) -> Group {
        self.frozen = true;
        self
    }
}

/// Builds an [`Optimizer`]; see [`Optimizer::builder`]. Cloning one (before
/// `build`) gives optimizers of the same settings.
#[derive(Clone)]
pub struct OptimizerBuilder {
    rule: Arc<Rule>,
    overrides: Vec<(String, ScalarExpr)>,
    groups: Vec<Group>,
    tensors: Option<Vec<(String, MatrixView)>>,
    precision: Precision,
    scalars: Scalars,
    backend: Option<Backend>,
    threads: usize,
    non_finite: NonFinite,
    reductions: GroupReductions,
}

impl OptimizerBuilder {
    /// Sets a hyperparameter for every group (a number, a bool or a schedule).
    pub fn set(mut self, name: impl Into<String>, value: impl Into<ScalarExpr>) -> Self {
        self.overrides.push((name.into(), value.into()));
        self
    }

    /// [`OptimizerBuilder::set`] for each `(name, value)`.
    pub fn overrides(mut self, overrides: Vec<(String, ScalarExpr)>) -> Self {
        self.overrides.extend(overrides);
        self
    }

    /// Adds a parameter group.
    pub fn group(mut self, group: Group) -> Self {
        self.groups.push(group);
        self
    }

    /// Declares the tensors a step takes, in order: their names (for groups
    /// and checkpoints) and element counts; each is a vector. Without this,
    /// the first step fixes the sizes and the tensors are named by index
    /// (`0`, `1`, ...).
    pub fn tensors<S: Into<String>>(self, tensors: impl IntoIterator<Item = (S, usize)>) -> Self {
        self.shaped_tensors(tensors.into_iter().map(|(n, k)| (n, [k])))
    }

    /// Declares the tensors a step takes with their shapes (dimensions,
    /// row-major), which rules with per-row and per-column values
    /// (`row_mean`, `: rows` state, `rank`) see: a matrix is factored as
    /// itself, a vector as one row ([`MatrixView`]).
    pub fn shaped_tensors<S: Into<String>, D: AsRef<[usize]>>(
        mut self,
        tensors: impl IntoIterator<Item = (S, D)>,
    ) -> Self {
        self.tensors = Some(
            tensors
                .into_iter()
                .map(|(n, dims)| (n.into(), MatrixView::of_dims(dims.as_ref())))
                .collect(),
        );
        self
    }

    /// How parameters, gradients and state are stored (default: all f32).
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// How group and tensor values are computed: in f64 as torch does
    /// (the default), or in f32 as optax does ([`Scalars`]).
    pub fn scalars(mut self, scalars: Scalars) -> Self {
        self.scalars = scalars;
        self
    }

    /// What runs the steps (default: [`Backend::fastest_for`] the rule).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Threads a step runs on (kernel backends; default 1).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    pub fn non_finite(mut self, policy: NonFinite) -> Self {
        self.non_finite = policy;
        self
    }

    pub fn group_reductions(mut self, reductions: GroupReductions) -> Self {
        self.reductions = reductions;
        self
    }

    /// Binds every group's hyperparameters and compiles the rule's kernels.
    pub fn build(self) -> Result<Optimizer, Error> {
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(Error::Unsupported(format!(
                "a step runs on 1 to {MAX_THREADS} threads, not {}",
                self.threads
            )));
        }
        let mut groups = vec![GroupState {
            name: DEFAULT_GROUP.to_string(),
            patterns: Vec::new(),
            bindings: Bindings::new(&self.rule, self.overrides.clone())?,
            overrides: self.overrides.clone(),
            frozen: false,
        }];
        for group in self.groups {
            if groups.iter().any(|g| g.name == group.name) {
                return Err(Error::Groups(format!(
                    "two groups are called `{}`",
                    group.name
                )));
            }
            if group.patterns.is_empty() {
                return Err(Error::Groups(format!(
                    "group `{}` selects no tensors: give it names or patterns",
                    group.name
                )));
            }
            let overrides: Vec<_> = self
                .overrides
                .iter()
                .cloned()
                .chain(group.overrides)
                .collect();
            groups.push(GroupState {
                bindings: Bindings::new(&self.rule, overrides.clone())?,
                name: group.name,
                patterns: group.patterns,
                overrides,
                frozen: group.frozen,
            });
        }
        let backend = self
            .backend
            .unwrap_or_else(|| Backend::fastest_for(&self.rule));
        let executor = backend.executor(&self.rule, self.precision, self.scalars, self.threads)?;
        let mut optimizer = Optimizer {
            rule: self.rule,
            executor,
            precision: self.precision,
            non_finite: self.non_finite,
            reductions: self.reductions,
            groups,
            declared: self.tensors,
            layout: None,
            numels: Vec::new(),
            tensor_steps: Vec::new(),
            owned: false,
            sharded: false,
        };
        if let Some(declared) = optimizer.declared.clone() {
            let (names, views): (Vec<String>, Vec<MatrixView>) = declared.into_iter().unzip();
            optimizer.bind(&names, &views)?;
        }
        Ok(optimizer)
    }
}

/// One parameter group's bindings and progress.
struct GroupState {
    name: String,
    patterns: Vec<String>,
    /// The optimizer's overrides, then the group's (later ones win).
    overrides: Vec<(String, ScalarExpr)>,
    bindings: Bindings,
    frozen: bool,
}

/// A rule with bound hyperparameters and its state, ready to step many
/// tensors at once. See the module documentation and `docs/api.md`.
pub struct Optimizer {
    rule: Arc<Rule>,
    executor: Box<dyn Executor>,
    precision: Precision,
    non_finite: NonFinite,
    reductions: GroupReductions,
    groups: Vec<GroupState>,
    /// Tensors declared when it was built.
    declared: Option<Vec<(String, MatrixView)>>,
    /// Fixed by the first step, upload or checkpoint load.
    layout: Option<Layout>,
    /// The layout's tensor sizes (every step checks against them).
    numels: Vec<usize>,
    /// Steps each tensor has taken (torch's per-parameter `step`).
    tensor_steps: Vec<u64>,
    /// Whether the executor holds the parameters ([`Optimizer::upload`]).
    owned: bool,
    /// Whether the tensors are shards of tensors several ranks step.
    sharded: bool,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups: Vec<(&str, u64)> = (0..self.groups.len())
            .map(|i| (self.groups[i].name.as_str(), self.steps_of_group(i)))
            .collect();
        f.debug_struct("Optimizer")
            .field("rule", &self.rule.name)
            .field("backend", &self.backend())
            .field("precision", &self.precision)
            .field("groups", &groups)
            .field("layout", &self.layout)
            .finish()
    }
}

impl Optimizer {
    /// Starts building an optimizer for `rule`.
    pub fn builder(rule: impl Into<Arc<Rule>>) -> OptimizerBuilder {
        OptimizerBuilder {
            rule: rule.into(),
            overrides: Vec::new(),
            groups: Vec::new(),
            tensors: None,
            precision: Precision::default(),
            scalars: Scalars::default(),
            backend: None,
            threads: 1,
            non_finite: NonFinite::default(),
            reductions: GroupReductions::default(),
        }
    }

    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// The name of the backend the steps run on.
    pub fn backend(&self) -> &str {
        self.executor.backend()
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn group_reductions(&self) -> GroupReductions {
        self.reductions
    }

    /// The pass plan of later steps, for backends that run kernels.
    pub fn plan(&self) -> Option<&Plan> {
        self.executor.plan()
    }

    /// What a step after the first moves (passes over memory and bytes per
    /// element), where the backend knows it (not the interpreter).
    pub fn traffic(&self) -> Option<crate::executor::Traffic> {
        self.executor.traffic()
    }

    /// Runs the matrix products of a later step alone, on scratch memory
    /// (what `optc bench` compares a step of a matrix rule with); returns
    /// how many ran: none for rules without products or backends that run
    /// none themselves.
    pub fn run_products(&mut self) -> Result<usize, Error> {
        let layout = bound(&self.layout)?;
        self.executor.run_products(layout)
    }

    /// The tensors, once fixed (by declaration, the first step, an upload
    /// or a checkpoint).
    pub fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }

    /// The groups' names, the default group first.
    pub fn group_names(&self) -> Vec<&str> {
        self.groups.iter().map(|g| g.name.as_str()).collect()
    }

    /// Steps taken by the tensor that has taken most (with every tensor
    /// stepping every time, every tensor's count).
    pub fn steps_taken(&self) -> u64 {
        self.tensor_steps.iter().copied().max().unwrap_or(0)
    }

    /// Steps taken by the tensors of group `name` (the most of any of them).
    pub fn group_steps(&self, name: &str) -> Result<u64, Error> {
        Ok(self.steps_of_group(self.group_index(name)?))
    }

    /// Steps taken by each tensor, in the layout's order.
    pub fn tensor_steps(&self) -> &[u64] {
        &self.tensor_steps
    }

    fn steps_of_group(&self, group: usize) -> u64 {
        let Some(layout) = &self.layout else {
            return 0;
        };
        layout
            .tensors_of(group)
            .map(|t| self.tensor_steps[t])
            .max()
            .unwrap_or(0)
    }

    /// The default group's hyperparameter values at its next step, in the
    /// rule's order.
    pub fn hyper_values(&self) -> Vec<f64> {
        self.groups[0].bindings.values(self.steps_of_group(0) + 1)
    }

    /// The source text of each of group `name`'s hyperparameter values.
    pub fn hyper_texts(&self, name: &str) -> Result<Vec<&str>, Error> {
        Ok(self.groups[self.group_index(name)?].bindings.texts())
    }

    /// Sets a hyperparameter of group `group` ([`DEFAULT_GROUP`] for the
    /// default one) from the next step on; nothing is recompiled. On error
    /// nothing changes.
    pub fn set(
        &mut self,
        group: &str,
        name: &str,
        value: impl Into<ScalarExpr>,
    ) -> Result<(), Error> {
        let index = self.group_index(group)?;
        let mut overrides = self.groups[index].overrides.clone();
        overrides.push((name.to_string(), value.into()));
        let bindings = Bindings::new(&self.rule, overrides.clone())?;
        let group = &mut self.groups[index];
        group.overrides = overrides;
        group.bindings = bindings;
        Ok(())
    }

    /// Freezes or unfreezes group `group`: while frozen, steps leave its
    /// tensors, state and step count untouched.
    pub fn freeze(&mut self, group: &str, frozen: bool) -> Result<(), Error> {
        let index = self.group_index(group)?;
        self.groups[index].frozen = frozen;
        Ok(())
    }

    /// Makes the declared tensors this rank's shards of tensors that several
    /// ranks step together ([`crate::shard`]): `sharding.full_numels` are
    /// the whole tensors' sizes. Before the first step, on a kernel backend;
    /// every rank steps every tensor on every step (no `None` gradients, no
    /// frozen group on one rank only) under [`NonFinite::Propagate`]. On
    /// error nothing changes.
    pub fn shard(&mut self, sharding: crate::shard::Sharding) -> Result<(), Error> {
        let Some(layout) = &self.layout else {
            return Err(Error::Unsupported(
                "a sharded optimizer declares its tensors (OptimizerBuilder::tensors)".into(),
            ));
        };
        let full = &sharding.full_numels;
        if full.len() != layout.tensors.len() {
            return Err(Error::TensorCount {
                expected: layout.tensors.len(),
                found: full.len(),
            });
        }
        if let Some((t, info)) = layout
            .tensors
            .iter()
            .enumerate()
            .find(|(t, info)| info.numel > full[*t])
        {
            return Err(Error::Unsupported(format!(
                "tensor {t} (`{}`): a shard of {} elements of a tensor of {}",
                info.name, info.numel, full[t]
            )));
        }
        if self.steps_taken() > 0 || self.sharded {
            return Err(Error::Unsupported(
                "shard an optimizer once, before its first step".into(),
            ));
        }
        self.executor.shard(sharding)?;
        self.sharded = true;
        Ok(())
    }

    pub fn set_non_finite(&mut self, policy: NonFinite) {
        self.non_finite = policy;
    }

    /// Applies one step to `params` given `grads`, in place, for every group
    /// that is not frozen. On error nothing changes; under
    /// [`NonFinite::Skip`] a non-finite gradient skips the step. Parameters
    /// and gradients are `f32` or `half::bf16`, as the optimizer's
    /// [`Precision`] says (another type is an error).
    pub fn step<P: Element>(
        &mut self,
        params: &mut [&mut [P]],
        grads: &[&[P]],
    ) -> Result<Outcome, Error> {
        self.check_element::<P>()?;
        let numels: Vec<usize> = params.iter().map(|p| p.len()).collect();
        self.check_tensors(&numels, grads.iter().map(|g| g.len()))?;
        self.run(
            Params::Borrowed(P::tensors_mut(params)),
            Some(P::tensors(grads)),
            None,
        )
    }

    /// [`Optimizer::step`] for the tensors that have a gradient: a tensor
    /// whose gradient is `None` is skipped, as torch skips a parameter whose
    /// `.grad` is None (its parameters, state and step count stay as they
    /// are; its step count falls behind its group's).
    pub fn step_some<P: Element>(
        &mut self,
        params: &mut [&mut [P]],
        grads: &[Option<&[P]>],
    ) -> Result<Outcome, Error> {
        self.check_element::<P>()?;
        let numels: Vec<usize> = params.iter().map(|p| p.len()).collect();
        let lengths = grads
            .iter()
            .zip(&numels)
            .map(|(g, &n)| g.map_or(n, <[P]>::len));
        self.check_tensors(&numels, lengths)?;
        let mask: Vec<bool> = grads.iter().map(Option::is_some).collect();
        let grads: Vec<&[P]> = grads.iter().map(|g| g.unwrap_or(&[])).collect();
        self.run(
            Params::Borrowed(P::tensors_mut(params)),
            Some(P::tensors(&grads)),
            Some(&mask),
        )
    }

    /// Hands copies of `params` to the executor, which keeps them (in its
    /// arenas; on a device, in device memory) for [`Optimizer::step_owned`].
    pub fn upload<P: Element>(&mut self, params: &[&[P]]) -> Result<(), Error> {
        self.check_element::<P>()?;
        let numels: Vec<usize> = params.iter().map(|p| p.len()).collect();
        self.check_tensors(&numels, numels.iter().copied())?;
        let layout = bound(&self.layout)?;
        self.executor.upload(layout, P::tensors(params))?;
        self.owned = true;
        Ok(())
    }

    /// One step of the parameters the executor holds ([`Optimizer::upload`]).
    pub fn step_owned<P: Element>(&mut self, grads: &[&[P]]) -> Result<Outcome, Error> {
        self.check_element::<P>()?;
        let numels = self.owned_numels()?;
        self.check_tensors(&numels, grads.iter().map(|g| g.len()))?;
        self.run(Params::Owned, Some(P::tensors(grads)), None)
    }

    /// Hands copies of `grads` to the executor, which keeps them (on a
    /// device, in device memory) as the gradients of
    /// [`Optimizer::step_resident`]: what a training loop on the device
    /// has when its backward pass wrote them there. Device executors only.
    pub fn upload_gradients<P: Element>(&mut self, grads: &[&[P]]) -> Result<(), Error> {
        self.check_element::<P>()?;
        let numels = self.owned_numels()?;
        self.check_tensors(&numels, grads.iter().map(|g| g.len()))?;
        let layout = bound(&self.layout)?;
        self.executor.upload_gradients(layout, P::tensors(grads))
    }

    /// One step of the parameters and gradients the executor holds
    /// ([`Optimizer::upload`], [`Optimizer::upload_gradients`]), with no
    /// copy between host and device. The gradients are not read on the
    /// host, so the skip-non-finite policy is refused.
    pub fn step_resident(&mut self) -> Result<Outcome, Error> {
        self.owned_numels()?;
        self.run(Params::Owned, None, None)
    }

    /// The parameters the executor holds, rounded or widened to f32.
    pub fn params(&self) -> Result<Vec<Vec<f32>>, Error> {
        self.owned_numels()?;
        Ok(self
            .executor
            .download(bound(&self.layout)?)?
            .iter()
            .map(Stored::to_f32)
            .collect())
    }

    /// Copies the parameters the executor holds into `out`.
    pub fn download_into<P: Element>(&self, out: &mut [&mut [P]]) -> Result<(), Error> {
        let numels = self.owned_numels()?;
        self.check_element::<P>()?;
        let lengths: Vec<usize> = out.iter().map(|p| p.len()).collect();
        crate::bind::check_shapes(Some(&numels), &lengths, lengths.iter().copied())?;
        for (target, stored) in out
            .iter_mut()
            .zip(self.executor.download(bound(&self.layout)?)?)
        {
            target.copy_from_slice(&P::from_stored(&stored));
        }
        Ok(())
    }

    /// Runs the data-movement floor of a later step over the parameters the
    /// executor holds and `grads`: kernels that move the same bytes and do
    /// no arithmetic (`optc bench` times it next to the step). Needs a step
    /// taken first.
    pub fn run_floor_owned<P: Element>(&mut self, grads: &[&[P]]) -> Result<(), Error> {
        self.check_element::<P>()?;
        let numels = self.owned_numels()?;
        self.check_tensors(&numels, grads.iter().map(|g| g.len()))?;
        let layout = bound(&self.layout)?;
        self.executor
            .run_floor(layout, Params::Owned, P::tensors(grads))
    }

    /// The value of a state slot after the last step: per-element (per-row,
    /// per-column) slots as one vector per tensor, scalar slots as one value per tensor (a group
    /// slot's value is its group's). `None` for an unknown slot.
    pub fn state(&self, name: &str) -> Option<Vec<Vec<f32>>> {
        let slot = self.rule.states.iter().position(|s| s.name == name)?;
        let Some(layout) = &self.layout else {
            return Some(Vec::new());
        };
        Some(match &self.executor.state(layout)[slot] {
            SlotValues::Vectors(tensors) => tensors.iter().map(Stored::to_f32).collect(),
            SlotValues::Tensor(xs) => xs.iter().map(|&x| vec![x as f32]).collect(),
            SlotValues::Group(xs) => layout
                .tensors
                .iter()
                .map(|t| vec![xs[t.group] as f32])
                .collect(),
        })
    }

    /// The element type of per-element state (`f32`, `bf16` or `f64`).
    pub fn state_dtype(&self) -> &'static str {
        self.executor.state_dtype()
    }

    /// Replaces the state, as if every group had taken `steps_taken` steps on
    /// tensors of sizes `numels`: one value per slot, in the rule's order
    /// (per-element slots as one vector per tensor; tensor slots one value per
    /// tensor; group slots one value, for every group). The next step is
    /// step `steps_taken + 1` and runs the later steps' plan. On error
    /// nothing changes.
    pub fn set_state(
        &mut self,
        steps_taken: u64,
        numels: &[usize],
        state: &[Value<f32>],
    ) -> Result<(), Error> {
        if steps_taken == 0 {
            return Err(Error::Internal(
                "set_state needs a step count above 0".into(),
            ));
        }
        self.check_tensors(numels, numels.iter().copied())?;
        let groups = self.groups.len();
        let values: Vec<SlotValues> = state
            .iter()
            .map(|value| match value {
                Value::Group(x) => SlotValues::Group(vec![*x; groups]),
                Value::Tensor(xs) => SlotValues::Tensor(xs.clone()),
                Value::Rows(xs) | Value::Cols(xs) | Value::Elem(xs) | Value::Gram(xs) => {
                    SlotValues::Vectors(xs.iter().cloned().map(Stored::F32).collect())
                }
            })
            .collect();
        self.load_state(&vec![steps_taken; numels.len()], values)
    }

    /// Every state slot's values after the last step, in the rule's order
    /// (per-element slots in the type they are stored in; group slots one
    /// value per group). Empty before the tensors are bound.
    pub fn state_values(&self) -> Vec<SlotValues> {
        self.layout
            .as_ref()
            .map_or_else(Vec::new, |layout| self.executor.state(layout))
    }

    /// Replaces the state and each tensor's step count (0: the tensor's next
    /// step is its first, which initialises its state): `state` as
    /// [`Optimizer::state_values`] gives it, per-element values in f32 or the
    /// type they are stored in. On error nothing changes.
    pub fn load_state(&mut self, steps: &[u64], state: Vec<SlotValues>) -> Result<(), Error> {
        let layout = bound(&self.layout)?;
        let (tensors, groups) = (layout.tensors.len(), layout.groups.len());
        if steps.len() != tensors {
            return Err(Error::TensorCount {
                expected: tensors,
                found: steps.len(),
            });
        }
        if let Some(t) = steps.iter().position(|&s| s > crate::checkpoint::MAX_STEPS) {
            return Err(Error::Unsupported(format!(
                "tensor {t}: {} steps is more than an optimizer counts ({})",
                steps[t],
                crate::checkpoint::MAX_STEPS
            )));
        }
        let slots = &self.rule.states;
        if state.len() != slots.len() {
            return Err(Error::Internal(format!(
                "`{}` has {} state slots, got values for {}",
                self.rule.name,
                slots.len(),
                state.len()
            )));
        }
        for (slot, value) in slots.iter().zip(&state) {
            let fits = match value {
                SlotValues::Group(xs) => slot.shape == Shape::Group && xs.len() == groups,
                SlotValues::Tensor(xs) => slot.shape == Shape::Tensor && xs.len() == tensors,
                SlotValues::Vectors(xs) => {
                    !slot.shape.is_scalar()
                        && xs.len() == tensors
                        && xs
                            .iter()
                            .zip(&layout.tensors)
                            .all(|(x, t)| x.len() == t.view.len(slot.shape))
                }
            };
            if !fits {
                return Err(Error::Internal(format!(
                    "state `{}` is {} (one value per {}), and must fit tensors of sizes {:?} in {groups} groups",
                    slot.name, slot.shape, slot.shape, layout.numels()
                )));
            }
        }
        self.restore(&state, steps)
    }

    /// Replaces the state and every tensor's step count (shapes checked by
    /// the caller). On error nothing changes.
    pub(crate) fn restore(&mut self, state: &[SlotValues], steps: &[u64]) -> Result<(), Error> {
        let layout = bound(&self.layout)?;
        self.executor.set_state(layout, state)?;
        self.tensor_steps = steps.to_vec();
        Ok(())
    }

    /// Group `i`'s name, frozen flag, steps and the source texts of its
    /// hyperparameter values (for checkpoints).
    pub(crate) fn group_record(&self, i: usize) -> (&str, bool, u64, Vec<&str>) {
        let g = &self.groups[i];
        (
            &g.name,
            g.frozen,
            self.steps_of_group(i),
            g.bindings.texts(),
        )
    }

    pub(crate) fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Fixes the layout for tensors `names` of shapes `views` and binds the
    /// executor. On error nothing changes.
    pub(crate) fn bind(&mut self, names: &[String], views: &[MatrixView]) -> Result<(), Error> {
        let layout = self.resolve(names, views)?;
        self.ensure_memory(views)?;
        self.executor.bind(&layout)?;
        self.numels = layout.numels();
        self.tensor_steps = vec![0; views.len()];
        self.layout = Some(layout);
        Ok(())
    }

    /// Checks, before it is allocated, that the per-element (per-row,
    /// per-column) state of tensors of shapes `views` fits in the memory
    /// available (counting 8 bytes a value, as the f64 interpreter stores).
    pub(crate) fn ensure_memory(&self, views: &[MatrixView]) -> Result<(), Error> {
        let values = self
            .rule
            .states
            .iter()
            .filter(|slot| !slot.shape.is_scalar())
            .flat_map(|slot| views.iter().map(|view| view.len(slot.shape)))
            .try_fold(0u128, |sum, n| sum.checked_add(n as u128));
        let bytes_per_value = self.precision.state.bytes().max(8) as u128;
        let bytes = values.and_then(|v| v.checked_mul(bytes_per_value));
        crate::memory::ensure(bytes, "the optimizer's state")
    }

    /// The layout of tensors `names` of shapes `views`: each in the first
    /// group that selects it, else the default group.
    pub(crate) fn resolve(&self, names: &[String], views: &[MatrixView]) -> Result<Layout, Error> {
        let mut seen = std::collections::HashSet::new();
        if let Some(name) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(Error::Groups(format!("two tensors are called `{name}`")));
        }
        let tensors: Vec<TensorInfo> = names
            .iter()
            .zip(views)
            .map(|(name, &view)| TensorInfo {
                name: name.clone(),
                numel: view.numel(),
                view,
                group: self
                    .groups
                    .iter()
                    .position(|g| g.patterns.iter().any(|p| glob_match(p, name)))
                    .unwrap_or(0),
            })
            .collect();
        if let Some(empty) = (1..self.groups.len()).find(|&g| tensors.iter().all(|t| t.group != g))
        {
            return Err(Error::Groups(format!(
                "group `{}` ({}) selects none of the tensors ({})",
                self.groups[empty].name,
                self.groups[empty].patterns.join(", "),
                names.join(", ")
            )));
        }
        Ok(Layout {
            tensors,
            groups: self.groups.iter().map(|g| g.name.clone()).collect(),
        })
    }

    /// Checks a step's tensors: as many gradients as parameters, each of its
    /// parameter's length, and the sizes of the layout; fixes the layout on
    /// the first use.
    fn check_tensors(
        &mut self,
        numels: &[usize],
        grad_lengths: impl ExactSizeIterator<Item = usize>,
    ) -> Result<(), Error> {
        // Declared tensors are bound when the optimizer is built.
        let fixed = self.layout.is_some().then_some(self.numels.as_slice());
        crate::bind::check_shapes(fixed, numels, grad_lengths)?;
        if self.layout.is_none() {
            // Not declared: named by index, vectors.
            let names: Vec<String> = (0..numels.len()).map(|i| i.to_string()).collect();
            self.bind(&names, &MatrixView::vectors(numels))?;
        }
        Ok(())
    }

    fn check_element<P: Element>(&self) -> Result<(), Error> {
        if P::STORAGE == self.precision.params {
            Ok(())
        } else {
            Err(Error::Dtype {
                expected: self.precision.params,
                found: P::STORAGE,
            })
        }
    }

    fn owned_numels(&self) -> Result<Vec<usize>, Error> {
        match (&self.layout, self.owned) {
            (Some(_), true) => Ok(self.numels.clone()),
            _ => Err(Error::Unsupported(
                "the executor holds no parameters: upload them first (Optimizer::upload)".into(),
            )),
        }
    }

    fn group_index(&self, name: &str) -> Result<usize, Error> {
        self.groups
            .iter()
            .position(|g| g.name == name)
            .ok_or_else(|| {
                Error::Groups(format!(
                    "no group `{name}` (groups: {})",
                    self.group_names().join(", ")
                ))
            })
    }

    /// Runs a checked step on the executor, of the tensors `mask` keeps
    /// (every one without a mask) in groups that are not frozen.
    /// One step; `grads` `None`: the gradients the executor holds.
    fn run(
        &mut self,
        params: Params<'_, '_>,
        grads: Option<HostTensors<'_, '_>>,
        mask: Option<&[bool]>,
    ) -> Result<Outcome, Error> {
        let Some(layout) = &self.layout else {
            return Err(Error::Internal("no layout after the checks".into()));
        };
        let steps: Vec<bool> = (0..layout.tensors.len())
            .map(|t| !self.groups[layout.tensors[t].group].frozen && mask.is_none_or(|m| m[t]))
            .collect();
        if self.sharded && (self.non_finite == NonFinite::Skip || steps.contains(&false)) {
            return Err(Error::Unsupported(
                "a sharded step steps every tensor (every rank must run the same passes): \
                 no tensor without a gradient, no frozen group, no skipping of non-finite steps"
                    .into(),
            ));
        }
        if self.non_finite == NonFinite::Skip {
            let Some(grads) = grads else {
                return Err(Error::Unsupported(
                    "skipping non-finite steps reads the gradients on the host; a step of \
                     gradients held on the device cannot (set the non-finite policy to apply)"
                        .into(),
                ));
            };
            for tensor in (0..layout.tensors.len()).filter(|&t| steps[t]) {
                let values = grads.widened(tensor);
                if let Some(index) = values.iter().position(|g| !g.is_finite()) {
                    return Ok(Outcome::Skipped { tensor, index });
                }
            }
        }
        // One part per group and step number, in order of first appearance.
        let mut members: Vec<GroupStep> = Vec::new();
        let mut member_of = vec![None; layout.tensors.len()];
        for (t, info) in layout.tensors.iter().enumerate() {
            if !steps[t] {
                continue;
            }
            let step = self.tensor_steps[t] + 1;
            let found = members
                .iter()
                .position(|m| m.group == info.group && m.step == step);
            member_of[t] = Some(found.unwrap_or_else(|| {
                members.push(GroupStep {
                    group: info.group,
                    step,
                    hypers: self.groups[info.group].bindings.values(step),
                });
                members.len() - 1
            }));
        }
        let request = StepRequest {
            members,
            member_of,
            across_groups: self.reductions == GroupReductions::AcrossGroups,
        };
        let (keeps, reduces) = (self.rule.keeps_group_state(), self.rule.reduces_per_group());
        if request.splits_a_group() && (keeps || reduces) {
            let what = if keeps { "keeps state" } else { "reduces" };
            return Err(Error::Groups(format!(
                "`{}` {what} per group, so the tensors of a group step together, but some of a \
                 group's tensors took fewer steps than the others (a step without their gradients)",
                self.rule.name
            )));
        }
        match grads {
            Some(grads) => self.executor.step(layout, &request, params, grads)?,
            None => self.executor.step_resident(layout, &request)?,
        }
        for (t, &stepped) in steps.iter().enumerate() {
            if stepped {
                self.tensor_steps[t] += 1;
            }
        }
        Ok(Outcome::Applied)
    }
}

/// The layout, which the checks before every executor call have fixed.
fn bound(layout: &Option<Layout>) -> Result<&Layout, Error> {
    layout
        .as_ref()
        .ok_or_else(|| Error::Internal("no tensors are bound yet".into()))
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters
/// (the empty one too) and `?` any one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    // Backtracking over the last `*`: linear in practice, quadratic at worst.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}
