//! The fused executor: runs a rule as the kernels of its pass plan over many
//! tensors at once, on several threads, updating parameters and state in place.
//!
//! Host work (hyperparameters, bias corrections, reduction results) is done
//! once per step or per tensor in f64, exactly as the interpreter does it.
//! Elements are split into fixed chunks of [`CHUNK`] elements; every chunk
//! accumulates its own partial reductions, which are combined in chunk order,
//! then tensor order. The chunking never depends on the thread count, so
//! neither do the results.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use optc_compiler::interpret::{binary, lerp, select, unary, Value};
use optc_compiler::ir::{Input, Node, ReduceOp, Rule, ScalarExpr, Scope, Shape};
use optc_compiler::kernel::{self, Kernel, Rounding, Storage};
use optc_compiler::plan::{self, Plan};

use crate::bind::{check_shapes, Bindings};
use crate::pool::Pool;
use crate::precision::{Element, Precision, StateArena};
use crate::Error;

/// Elements per work item: the interpreter's reduction chunk (a multiple of
/// every SIMD width, large enough to amortise a call, small enough to
/// balance threads), so that reductions agree with it bit for bit.
pub use optc_compiler::interpret::CHUNK;

/// A compiled kernel, callable from any thread.
pub trait CompiledKernel: Send + Sync {
    /// Runs the kernel over `range`, combining into `accumulators`.
    ///
    /// # Safety
    /// As [`kernel::run_raw`]: every buffer pointer is valid for the range,
    /// distinct buffers do not overlap, and stored buffers are writable.
    unsafe fn call(
        &self,
        buffers: &[*mut f32],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: Range<usize>,
    );
}

/// Something that turns kernels into callable code.
pub trait Backend {
    fn compile(&mut self, kernel: &Kernel) -> Result<Box<dyn CompiledKernel>, String>;
}

/// The portable backend: kernels run by their reference semantics.
pub struct Reference;

struct ReferenceKernel(Kernel);

impl CompiledKernel for ReferenceKernel {
    unsafe fn call(
        &self,
        buffers: &[*mut f32],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: Range<usize>,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { kernel::run_raw(&self.0, buffers, scalars, accumulators, range) }
    }
}

impl Backend for Reference {
    fn compile(&mut self, kernel: &Kernel) -> Result<Box<dyn CompiledKernel>, String> {
        Ok(Box::new(ReferenceKernel(kernel.clone())))
    }
}

/// Kernels compiled by Cranelift to native SIMD loops (`optc-jit`), cached:
/// a kernel equal to one compiled before (same ops, constants, buffers and
/// scalars; keyed by its full text, so different kernels never share an
/// entry, except constants that are NaNs of different payloads) reuses that
/// code. Rules that share kernels, both plans of a rule
/// and a search that revisits programs compile each kernel once. The cache
/// lives as long as the backend and is never evicted (the JIT never frees
/// code either).
pub struct Jit {
    jit: optc_jit::Jit,
    cache: HashMap<String, Arc<optc_jit::CompiledKernel>>,
}

impl Jit {
    /// A JIT for the host CPU, detected at run time.
    pub fn new() -> Result<Jit, String> {
        let jit = optc_jit::Jit::new().map_err(|e| e.to_string())?;
        Ok(Jit {
            jit,
            cache: HashMap::new(),
        })
    }

    /// Kernels compiled so far (cache entries).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

struct JitKernel(Arc<optc_jit::CompiledKernel>);

impl CompiledKernel for JitKernel {
    unsafe fn call(
        &self,
        buffers: &[*mut f32],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: Range<usize>,
    ) {
        // SAFETY: forwarded from the caller; the counts were fixed by the same plan.
        let _ = unsafe { self.0.run_raw(buffers, scalars, accumulators, range) };
    }
}

impl Backend for Jit {
    fn compile(&mut self, kernel: &Kernel) -> Result<Box<dyn CompiledKernel>, String> {
        let key = format!("{kernel:?}");
        if let Some(compiled) = self.cache.get(&key) {
            return Ok(Box::new(JitKernel(compiled.clone())));
        }
        let compiled = Arc::new(self.jit.compile(kernel).map_err(|e| e.to_string())?);
        self.cache.insert(key, compiled.clone());
        Ok(Box::new(JitKernel(compiled)))
    }
}

/// The fastest backend this build has, and its name: the Cranelift JIT where
/// it supports the host, else the reference kernels.
pub fn default_backend() -> (Box<dyn Backend>, &'static str) {
    match Jit::new() {
        Ok(jit) => (Box::new(jit), "cranelift"),
        Err(_) => (Box::new(Reference), "reference"),
    }
}

/// A host value: one per step, or one per tensor.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scalar {
    Group(f64),
    Tensor(Vec<f64>),
}

impl Scalar {
    pub(crate) fn at(&self, tensor: usize) -> f64 {
        match self {
            Scalar::Group(x) => *x,
            Scalar::Tensor(xs) => xs[tensor],
        }
    }

    fn broadcast(&self, shape: Shape, tensors: usize) -> Scalar {
        match (self, shape) {
            (Scalar::Group(x), Shape::Tensor) => Scalar::Tensor(vec![*x; tensors]),
            (other, _) => other.clone(),
        }
    }
}

/// The compiled plan of one kind of step (the first, or every later one).
struct Compiled {
    plan: Plan,
    kernels: Vec<Box<dyn CompiledKernel>>,
}

/// A rule compiled to fused kernels, with bound hyperparameters and its state.
pub struct FusedOptimizer {
    pub(crate) rule: Arc<Rule>,
    pub(crate) hypers: Bindings,
    first: Compiled,
    steady: Compiled,
    pool: Pool,
    non_finite: NonFinite,
    pub(crate) precision: Precision,
    /// Per-element state: one arena per slot, in buffer order, holding the
    /// slot of every tensor.
    pub(crate) elem_state: Vec<StateArena>,
    /// Tensor and group state, by slot (`None` for per-element slots).
    pub(crate) scalar_state: Vec<Option<Scalar>>,
    pub(crate) step: u64,
    pub(crate) numels: Option<Vec<usize>>,
}

/// What a step does with gradients that hold a NaN or an infinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NonFinite {
    /// Run the step anyway: non-finite values flow into parameters and state.
    #[default]
    Propagate,
    /// Skip the step, leaving parameters, state and step count untouched
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

impl FusedOptimizer {
    /// Plans `rule`, compiles its kernels with `backend` and binds its
    /// hyperparameters; everything in f32.
    pub fn new(
        rule: Arc<Rule>,
        overrides: Vec<(String, ScalarExpr)>,
        backend: &mut dyn Backend,
        threads: usize,
    ) -> Result<FusedOptimizer, Error> {
        Self::with_precision(rule, overrides, backend, threads, Precision::default())
    }

    /// [`FusedOptimizer::new`] with parameters, gradients and state stored
    /// as `precision` says.
    pub fn with_precision(
        rule: Arc<Rule>,
        overrides: Vec<(String, ScalarExpr)>,
        backend: &mut dyn Backend,
        threads: usize,
        precision: Precision,
    ) -> Result<FusedOptimizer, Error> {
        let hypers = Bindings::new(&rule, overrides)?;
        let mut compile = |first_step: bool| -> Result<Compiled, Error> {
            let mut plan = Plan::new(&rule, first_step);
            for pass in &mut plan.passes {
                store_as(&mut pass.kernel, &precision);
            }
            let kernels = plan
                .passes
                .iter()
                .map(|pass| backend.compile(&pass.kernel).map_err(Error::Internal))
                .collect::<Result<_, _>>()?;
            Ok(Compiled { plan, kernels })
        };
        let (first, steady) = (compile(true)?, compile(false)?);
        Ok(FusedOptimizer {
            scalar_state: vec![None; rule.states.len()],
            rule,
            hypers,
            first,
            steady,
            pool: Pool::new(threads),
            non_finite: NonFinite::default(),
            precision,
            elem_state: Vec::new(),
            step: 0,
            numels: None,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Chooses what steps do with non-finite gradients.
    pub fn set_non_finite(&mut self, policy: NonFinite) {
        self.non_finite = policy;
    }

    /// The plan every step after the first runs.
    pub fn plan(&self) -> &Plan {
        &self.steady.plan
    }

    /// Applies one step to `params` given `grads`, in place. On error nothing
    /// changes; under [`NonFinite::Skip`] a non-finite gradient skips the step.
    /// Parameters and gradients are `f32` or `half::bf16`, as the optimizer's
    /// [`Precision`] says (another type is an error).
    pub fn step<P: Element>(
        &mut self,
        params: &mut [&mut [P]],
        grads: &[&[P]],
    ) -> Result<Outcome, Error> {
        self.check_element::<P>()?;
        let numels: Vec<usize> = params.iter().map(|p| p.len()).collect();
        check_shapes(
            self.numels.as_deref(),
            &numels,
            grads.iter().map(|g| g.len()),
        )?;
        if self.non_finite == NonFinite::Skip {
            for (tensor, grad) in grads.iter().enumerate() {
                if let Some(index) = grad.iter().position(|g| !g.to_f32().is_finite()) {
                    return Ok(Outcome::Skipped { tensor, index });
                }
            }
        }
        let first_step = self.numels.is_none();
        if first_step {
            let slots = self.first.plan.state_buffers.iter().flatten().count();
            self.elem_state = (0..slots)
                .map(|slot| StateArena::zeroed(self.precision.state, &numels, slot))
                .collect();
            let plan = &self.first.plan;
            for (buffer, value) in plan.state_buffers.iter().zip(&plan.fill) {
                if let (Some(buffer), Some(value)) = (buffer, value.filter(|v| v.to_bits() != 0)) {
                    self.elem_state[*buffer as usize - 2].fill(value);
                }
            }
        }
        let hypers = self.hypers.values(self.step + 1);
        let compiled = if first_step {
            &self.first
        } else {
            &self.steady
        };
        let rule = &*self.rule;
        let graph = &rule.graph;
        let tensors = numels.len();
        let mut values: Vec<Option<Scalar>> = vec![None; graph.len()];
        let pointers = buffer_pointers(params, grads, &mut self.elem_state);
        let passes = compiled.plan.passes.len();
        for stage in 0..=passes {
            for (h, node) in graph.iter() {
                let is_host = graph.ty(h).shape != Shape::Elem
                    && !matches!(node, Node::Reduce(_, _, arg) if graph.ty(*arg).shape == Shape::Elem);
                if is_host && compiled.plan.stage[h.index()] == stage && values[h.index()].is_none()
                {
                    let value = host_value(
                        rule,
                        node,
                        h,
                        &values,
                        &hypers,
                        self.step + 1,
                        &numels,
                        &self.scalar_state,
                        first_step,
                    );
                    values[h.index()] = Some(value);
                }
            }
            if stage == passes {
                break;
            }
            let pass = &compiled.plan.passes[stage];
            let seeded = matches!(pass.kernel.rounding, Rounding::Stochastic { .. });
            let scalars: Vec<Vec<f32>> = (0..tensors)
                .map(|i| {
                    let mut args: Vec<f32> = pass
                        .scalar_args
                        .iter()
                        .map(|&h| {
                            values[h.index()]
                                .as_ref()
                                .map_or(f32::NAN, |v| v.at(i) as f32)
                        })
                        .collect();
                    if seeded {
                        let seed = self.precision.step_seed(self.step + 1, i);
                        args.push(f32::from_bits(seed));
                    }
                    args
                })
                .collect();
            let partials = run_pass(
                &*compiled.kernels[stage],
                &pass.kernel,
                &pointers,
                &scalars,
                &numels,
                &self.pool,
            );
            for (k, &reduction) in pass.reductions.iter().enumerate() {
                let (op, scope) = match graph.node(reduction) {
                    Node::Reduce(op, scope, _) => (*op, *scope),
                    _ => continue,
                };
                let per_tensor: Vec<f64> = partials
                    .iter()
                    .map(|chunks| {
                        chunks.iter().fold(Kernel::identity(op), |acc, p| {
                            Kernel::combine(op, acc, p[k])
                        })
                    })
                    .collect();
                values[reduction.index()] = Some(match scope {
                    Scope::Tensor => Scalar::Tensor(per_tensor),
                    Scope::Group => Scalar::Group(
                        per_tensor
                            .into_iter()
                            .fold(Kernel::identity(op), |a, b| Kernel::combine(op, a, b)),
                    ),
                });
            }
        }
        for (slot, state) in rule.states.iter().enumerate() {
            if slot_is_scalar(rule, slot) {
                let out = rule.state_out[slot];
                let value = values[out.index()]
                    .clone()
                    .unwrap_or(Scalar::Group(f64::NAN));
                self.scalar_state[slot] = Some(value.broadcast(state.shape, tensors));
            }
        }
        self.numels = Some(numels);
        self.step += 1;
        Ok(Outcome::Applied)
    }

    /// Compiles the data-movement floor of the steady-state step: per pass,
    /// a kernel that moves exactly that pass's bytes (see [`plan::floor`]).
    pub fn floor(&self, backend: &mut dyn Backend) -> Result<Floor, Error> {
        let kernels = self
            .steady
            .plan
            .passes
            .iter()
            .map(|pass| {
                let kernel = plan::floor(pass);
                let compiled = backend.compile(&kernel).map_err(Error::Internal)?;
                Ok((kernel, compiled))
            })
            .collect::<Result<_, Error>>()?;
        Ok(Floor { kernels })
    }

    /// Runs the floor over the same buffers a step touches (after a first step
    /// has allocated the state), on the same threads.
    pub fn run_floor<P: Element>(
        &mut self,
        floor: &Floor,
        params: &mut [&mut [P]],
        grads: &[&[P]],
    ) -> Result<(), Error> {
        self.check_element::<P>()?;
        let numels: Vec<usize> = params.iter().map(|p| p.len()).collect();
        if self.numels.as_deref() != Some(&numels[..]) {
            return Err(Error::Internal(
                "run a step first, on tensors of these sizes".into(),
            ));
        }
        check_shapes(Some(&numels), &numels, grads.iter().map(|g| g.len()))?;
        let pointers = buffer_pointers(params, grads, &mut self.elem_state);
        let no_scalars = vec![Vec::new(); numels.len()];
        for (kernel, compiled) in &floor.kernels {
            run_pass(
                &**compiled,
                kernel,
                &pointers,
                &no_scalars,
                &numels,
                &self.pool,
            );
        }
        Ok(())
    }

    /// The value of a state slot after the last step: per-element slots as one
    /// vector per tensor, scalar slots as one value per tensor.
    pub fn state(&self, name: &str) -> Option<Vec<Vec<f32>>> {
        let slot = self.rule.states.iter().position(|s| s.name == name)?;
        if let Some(scalar) = &self.scalar_state[slot] {
            let tensors = self.numels.as_ref().map_or(0, Vec::len);
            return Some((0..tensors).map(|i| vec![scalar.at(i) as f32]).collect());
        }
        let buffer = self.first.plan.state_buffers[slot]? as usize - 2;
        let tensors = self.numels.as_ref().map_or(0, Vec::len);
        Some(
            (0..tensors)
                .map(|t| self.elem_state[buffer].values(t))
                .collect(),
        )
    }

    /// Replaces the state, as if `steps_taken` steps had run on tensors of
    /// sizes `numels`: one value per slot, in the rule's order (per-element
    /// slots as one vector per tensor; tensor slots one value per tensor;
    /// group slots one value). The next step is step `steps_taken + 1` and
    /// runs the later steps' plan. On error nothing changes.
    pub fn set_state(
        &mut self,
        steps_taken: u64,
        numels: &[usize],
        state: &[Value<f32>],
    ) -> Result<(), Error> {
        let slots = &self.rule.states;
        if state.len() != slots.len() || steps_taken == 0 {
            return Err(Error::Internal(format!(
                "set_state needs a step count above 0 and {} state values, got {} after {steps_taken} steps",
                slots.len(),
                state.len()
            )));
        }
        let mut elem_state = Vec::new();
        let mut scalar_state = vec![None; slots.len()];
        for ((slot, value), index) in slots.iter().zip(state).zip(0..) {
            let fits = match value {
                Value::Group(_) => slot.shape == Shape::Group,
                Value::Tensor(xs) => slot.shape == Shape::Tensor && xs.len() == numels.len(),
                Value::Elem(xs) => {
                    slot.shape == Shape::Elem
                        && xs.len() == numels.len()
                        && xs.iter().zip(numels).all(|(x, &n)| x.len() == n)
                }
            };
            if !fits {
                return Err(Error::Internal(format!(
                    "state `{}` is {} (one value per {}), and must fit tensors of sizes {numels:?}",
                    slot.name, slot.shape, slot.shape
                )));
            }
            match value {
                Value::Group(x) => scalar_state[index] = Some(Scalar::Group(*x)),
                Value::Tensor(xs) => scalar_state[index] = Some(Scalar::Tensor(xs.clone())),
                Value::Elem(tensors) => {
                    let stagger = elem_state.len();
                    elem_state.push(StateArena::from_f32(self.precision.state, tensors, stagger));
                }
            }
        }
        self.step = steps_taken;
        self.numels = Some(numels.to_vec());
        self.elem_state = elem_state;
        self.scalar_state = scalar_state;
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

/// The data-movement floor of a rule's step, compiled.
pub struct Floor {
    kernels: Vec<(Kernel, Box<dyn CompiledKernel>)>,
}

/// Buffer pointers per tensor, in the plan's numbering: p, g, then state slots.
fn buffer_pointers<P: Element>(
    params: &mut [&mut [P]],
    grads: &[&[P]],
    elem_state: &mut [StateArena],
) -> Vec<Vec<SendPtr>> {
    let state: Vec<Vec<*mut f32>> = elem_state.iter_mut().map(StateArena::pointers).collect();
    params
        .iter_mut()
        .zip(grads)
        .enumerate()
        .map(|(tensor, (p, g))| {
            // Kernels take every buffer as a `*mut f32` (bf16 bit patterns
            // cast); g is never stored to.
            let mut buffers = vec![
                SendPtr(p.as_mut_ptr().cast::<f32>()),
                SendPtr(g.as_ptr().cast::<f32>().cast_mut()),
            ];
            buffers.extend(state.iter().map(|slot| SendPtr(slot[tensor])));
            buffers
        })
        .collect()
}

fn slot_is_scalar(rule: &Rule, slot: usize) -> bool {
    rule.states[slot].shape != Shape::Elem
}

/// The host value of a group or tensor node, as the interpreter defines it.
#[allow(clippy::too_many_arguments)]
fn host_value(
    rule: &Rule,
    node: &Node,
    h: optc_compiler::ir::Handle,
    values: &[Option<Scalar>],
    hypers: &[f64],
    step: u64,
    numels: &[usize],
    scalar_state: &[Option<Scalar>],
    first_step: bool,
) -> Scalar {
    let graph = &rule.graph;
    let get =
        |c: optc_compiler::ir::Handle| values[c.index()].clone().unwrap_or(Scalar::Group(f64::NAN));
    let tensors = numels.len();
    let shape = graph.ty(h).shape;
    let per = |f: &dyn Fn(usize) -> f64| -> Scalar {
        match shape {
            Shape::Group => Scalar::Group(f(0)),
            _ => Scalar::Tensor((0..tensors).map(f).collect()),
        }
    };
    match *node {
        Node::Const(bits) => Scalar::Group(f64::from_bits(bits)),
        Node::Bool(b) => Scalar::Group(if b { 1.0 } else { 0.0 }),
        Node::Input(input, _) => match input {
            Input::Step => Scalar::Group(step as f64),
            Input::Numel => Scalar::Tensor(numels.iter().map(|&n| n as f64).collect()),
            Input::Hyper(i) => Scalar::Group(hypers[i as usize]),
            Input::State(i) => {
                let slot = &rule.states[i as usize];
                if first_step {
                    get(slot.init).broadcast(slot.shape, tensors)
                } else {
                    scalar_state[i as usize]
                        .clone()
                        .unwrap_or(Scalar::Group(f64::NAN))
                }
            }
            Input::Param | Input::Grad => Scalar::Group(f64::NAN),
        },
        Node::Reduce(op, scope, arg) => {
            // A reduction of a broadcast scalar: `n` copies of its f32 rounding.
            let value = get(arg);
            let per_tensor: Vec<f64> = numels
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let w = f64::from(value.at(i) as f32);
                    match op {
                        _ if n == 0 => Kernel::identity(op),
                        // Exact: n copies of an f32 sum exactly in f64 (n < 2^29);
                        // adding to the identity +0 turns a -0 sum into +0, as the fold does.
                        ReduceOp::Sum => Kernel::combine(op, Kernel::identity(op), n as f64 * w),
                        // The fold of one value into the identity (NaN is ignored, as by f64::max).
                        _ => Kernel::combine(op, Kernel::identity(op), w),
                    }
                })
                .collect();
            match scope {
                Scope::Tensor => Scalar::Tensor(per_tensor),
                Scope::Group => Scalar::Group(
                    per_tensor
                        .into_iter()
                        .fold(Kernel::identity(op), |a, b| Kernel::combine(op, a, b)),
                ),
            }
        }
        Node::Unary(op, a) => {
            let a = get(a);
            per(&|i| unary(op, a.at(i)))
        }
        Node::Binary(op, a, b) => {
            let (a, b) = (get(a), get(b));
            per(&|i| binary(op, a.at(i), b.at(i)))
        }
        Node::Select(c, a, b) => {
            let (c, a, b) = (get(c), get(a), get(b));
            per(&|i| select(c.at(i), a.at(i), b.at(i)))
        }
        Node::Lerp(a, b, w) => {
            let (a, b, w) = (get(a), get(b), get(w));
            per(&|i| lerp(a.at(i), b.at(i), w.at(i)))
        }
    }
}

/// A buffer pointer that may cross threads: the chunks threads work on are disjoint.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: threads only touch disjoint element ranges of the buffers.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Runs one pass over every chunk of every tensor; returns the partial
/// accumulators per tensor, per chunk, in order.
fn run_pass(
    compiled: &dyn CompiledKernel,
    kernel: &Kernel,
    pointers: &[Vec<SendPtr>],
    scalars: &[Vec<f32>],
    numels: &[usize],
    pool: &Pool,
) -> Vec<Vec<Vec<f64>>> {
    let identity: Vec<f64> = kernel
        .accumulators
        .iter()
        .map(|&(op, _)| Kernel::identity(op))
        .collect();
    // Work items in a fixed order: (tensor, range).
    let items: Vec<(usize, Range<usize>)> = numels
        .iter()
        .enumerate()
        .flat_map(|(t, &n)| {
            (0..n.div_ceil(CHUNK)).map(move |c| (t, c * CHUNK..((c + 1) * CHUNK).min(n)))
        })
        .collect();
    let mut partials: Vec<Vec<f64>> = vec![identity.clone(); items.len()];
    let run_item = |(tensor, range): &(usize, Range<usize>), partial: &mut Vec<f64>| {
        let buffers: Vec<*mut f32> = pointers[*tensor].iter().map(|p| p.0).collect();
        // SAFETY: the pointers come from live slices of the tensor's length; the
        // plan never stores to g; ranges of different items are disjoint.
        unsafe { compiled.call(&buffers, &scalars[*tensor], partial, range.clone()) };
    };
    let total: usize = numels.iter().sum();
    let threads = pool.threads();
    if threads <= 1 || total < 2 * CHUNK {
        for (item, partial) in items.iter().zip(partials.iter_mut()) {
            run_item(item, partial);
        }
    } else {
        // Contiguous runs of items with about equal numbers of elements per thread.
        let share = total.div_ceil(threads);
        let mut bounds = vec![0];
        let mut acc = 0;
        for (index, (_, range)) in items.iter().enumerate() {
            acc += range.len();
            if acc >= share * bounds.len() && bounds.len() < threads {
                bounds.push(index + 1);
            }
        }
        bounds.push(items.len());
        bounds.dedup();
        let mut shares = Vec::new();
        let mut rest: &mut [Vec<f64>] = &mut partials;
        for window in bounds.windows(2) {
            let (mine, tail) = rest.split_at_mut(window[1] - window[0]);
            rest = tail;
            shares.push(Mutex::new((&items[window[0]..window[1]], mine)));
        }
        pool.run(shares.len(), &|share| {
            let mut guard = shares[share].lock().unwrap_or_else(PoisonError::into_inner);
            let (items, mine) = &mut *guard;
            for (item, partial) in items.iter().zip(mine.iter_mut()) {
                run_item(item, partial);
            }
        });
    }
    let mut by_tensor: Vec<Vec<Vec<f64>>> = vec![Vec::new(); numels.len()];
    for ((tensor, _), partial) in items.iter().zip(partials) {
        by_tensor[*tensor].push(partial);
    }
    by_tensor
}
