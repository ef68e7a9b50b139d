//! The staged executor (`--backend staged`): every rule, matrix-shaped
//! ones included (which the pass planner does not plan), at the speed of
//! fused kernels.
//!
//! A step runs in stages. Before stage `s` the host computes, in arena
//! order, the values of that stage that are not per element: hyperparameter
//! arithmetic, reduction results, per-row and per-column values and gram
//! matrices (through the interpreter's own [`interpret::node_value`]), and
//! matrix products (through the `gemm` crate, f32 with f32 accumulation).
//! Then one pass over the elements of every tensor evaluates the
//! elementwise nodes the stage needs as one kernel of the kernel IR
//! ([`Lowering`]), compiled by a kernel backend (the registry's fastest:
//! LLVM's full-width code once the tiered backend has it, Cranelift's
//! until then), so intermediates stay in registers and a pass moves only
//! its loads and stores. A kernel call covers one row of a unit of work,
//! where per-row values are its scalars and per-column values buffers
//! indexed by column, or a whole unit when the pass uses neither. A pass
//! accumulates the reductions whose arguments it computes (their results
//! are the next stage's; a per-column one through a row of scratch the
//! host adds to its columns) and writes out whole the only intermediates
//! ever stored: the elementwise operands of matrix products, and values a
//! later pass would otherwise recompute at more cost than 8 bytes per
//! element ([`WORTH_STORING`]); the last pass stores parameters and
//! per-element state in place. So a rule without reductions is one pass,
//! Adafactor three (row and column means; the update's norm, writing the
//! update out; the step), and each Newton-Schulz step of Muon one pass plus
//! its products.
//!
//! Elementwise values are the kernel backend's, so the interpreter's f32
//! operations bit for bit but for the transcendentals a backend
//! approximates (within its documented ulp; the `reference` kernels are
//! exact); reductions accumulate in f64 in another order (the kernel IR's
//! within a call, calls in row order, then units in order) and matrix
//! products in f32, so results are within rounding of the interpreter's,
//! and never depend on the thread count or the kernel tier. Units of work
//! are at most [`CHUNK`] elements (whole rows, or chunks of one long row;
//! [`COLUMN_UNIT`] in passes with per-column reductions), shared by the
//! threads of the optimizer's pool.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use optc_compiler::backend::HostKernel;
use optc_compiler::interpret::{
    binary, lerp, node_value, reduction_value, select, unary, Scalars, Value, CHUNK,
};
use optc_compiler::ir::{
    BinaryOp, Graph, Handle, Input, MatrixView, Node, ReduceOp, Rule, Scope, Shape, UnaryOp,
};
use optc_compiler::kernel::{Kernel, Op, Storage};

use super::interp::{InterpExecutor, Slot};
use super::{
    Executor, HostTensors, HostTensorsMut, Layout, Params, SlotValues, StepRequest, Stored,
};
use crate::pool::Pool;
use crate::{Backend, Error};

/// Elements the data-movement floor moves at a time (a divisor of [`CHUNK`]).
const BLOCK: usize = 1024;

/// Runs `$body` with `$o` bound to the constant `$op` is, per variant, so
/// that each loop is compiled for one operation (and vectorised).
macro_rules! per_variant {
    ($op:expr, $Op:ident { $($v:ident),* }, |$o:ident| $body:expr) => {
        match $op { $($Op::$v => { let $o = $Op::$v; $body })* }
    };
}

/// Arrays of at least this many elements are reused from step to step
/// (smaller ones cost little to allocate).
const REUSED: usize = 1 << 16;

/// What recomputing a per-element value is worth storing it instead:
/// writing it out and reading it back moves 8 bytes per element, about the
/// time a square root and a few divisions take (on the machines measured).
const WORTH_STORING: usize = 16;

/// The cost of recomputing per-element node `h` in a pass from what the
/// pass has (`needed`: the nodes it evaluates), in rough instructions per
/// element: a division 4, a square root 8 (12 with its reciprocal), a
/// transcendental 20, `pow` 40, anything else 1.
fn recomputation(graph: &Graph, source: &[Handle], needed: &[bool], h: Handle) -> usize {
    let mut seen = vec![false; graph.len()];
    let mut stack = vec![h];
    let mut cost = 0;
    while let Some(h) = stack.pop() {
        if !needed[h.index()] || std::mem::replace(&mut seen[h.index()], true) {
            continue;
        }
        let node = graph.node(h);
        cost += match *node {
            Node::Binary(BinaryOp::Div, ..) => 4,
            Node::Binary(BinaryOp::Pow, ..) => 40,
            Node::Unary(UnaryOp::Sqrt, _) => 8,
            Node::Unary(UnaryOp::Rsqrt, _) => 12,
            Node::Unary(op, _) if optc_compiler::kernel::is_transcendental(op) => 20,
            _ => 1,
        };
        stack.extend(node.children().iter().map(|c| source[c.index()]));
    }
    cost
}

/// Where a node's value lives during a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Not per element: computed on the host before its stage.
    Host,
    /// Per element, computed block by block in the passes that need it.
    Block,
    /// Per element, read from memory: parameters, gradients, per-element
    /// state, matrix products (and, on the first step, state broadcast
    /// from a non-elementwise initialiser).
    Array,
}

/// What one pass over the elements does.
#[derive(Clone, Debug, Default)]
struct Pass {
    /// Elementwise nodes evaluated per block, in arena order.
    nodes: Vec<Handle>,
    /// Reductions over elements accumulated (their results are the next stage's).
    reductions: Vec<Handle>,
    /// Elementwise values written out whole: operands of matrix products,
    /// and values later passes read instead of recomputing them.
    materialize: Vec<Handle>,
    /// Whether it stores parameters and per-element state (the last pass).
    stores: bool,
    /// The per-element values it reads from memory.
    loads: Vec<Handle>,
}

impl Pass {
    fn has_work(&self) -> bool {
        !self.nodes.is_empty()
            || !self.reductions.is_empty()
            || !self.materialize.is_empty()
            || self.stores
    }
}

/// Where an elementwise output is stored.
#[derive(Clone, Copy, Debug)]
enum Target {
    Param,
    State(usize),
}

/// How one step (the first, or any later one) of a rule runs in stages.
#[derive(Clone, Debug)]
struct Schedule {
    first_step: bool,
    /// The node each node stands for: on the first step a per-element state
    /// input with an elementwise initialiser is that initialiser.
    source: Vec<Handle>,
    place: Vec<Place>,
    stage: Vec<usize>,
    live: Vec<bool>,
    /// Pass `s` runs after the host work of stage `s`.
    passes: Vec<Pass>,
    outputs: Vec<(Target, Handle)>,
}

impl Schedule {
    fn new(rule: &Rule, first_step: bool) -> Schedule {
        let graph = &rule.graph;
        let shape = |h: Handle| graph.ty(h).shape;
        let state_init = |node: &Node| match *node {
            Node::Input(Input::State(j), _) if first_step => Some(rule.states[j as usize].init),
            _ => None,
        };
        let mut source: Vec<Handle> = graph.iter().map(|(h, _)| h).collect();
        let mut place = vec![Place::Host; graph.len()];
        let mut stage = vec![0usize; graph.len()];
        for (h, node) in graph.iter() {
            let i = h.index();
            if let Some(init) = state_init(node).filter(|&init| shape(init) == Shape::Elem) {
                source[i] = source[init.index()];
                place[i] = place[source[i].index()];
                stage[i] = stage[source[i].index()];
                continue;
            }
            place[i] = match node {
                _ if shape(h) != Shape::Elem => Place::Host,
                Node::Input(..) | Node::MatMul(..) => Place::Array,
                _ => Place::Block,
            };
            let src = |c: Handle| source[c.index()];
            let per_element = |c: Handle| place[src(c).index()] != Place::Host;
            stage[i] = match *node {
                _ if state_init(node).is_some() => stage[state_init(node).unwrap().index()],
                Node::Reduce(_, _, a) if per_element(a) => stage[src(a).index()] + 1,
                Node::Gram(..) | Node::MatMul(..) => node
                    .children()
                    .iter()
                    .map(|&c| stage[src(c).index()] + usize::from(per_element(c)))
                    .max()
                    .unwrap_or(0),
                _ => node
                    .children()
                    .iter()
                    .map(|&c| stage[src(c).index()])
                    .max()
                    .unwrap_or(0),
            };
        }
        let outputs: Vec<(Target, Handle)> = std::iter::once((Target::Param, rule.param_out))
            .chain(
                rule.states
                    .iter()
                    .zip(&rule.state_out)
                    .enumerate()
                    .filter(|(_, (slot, _))| slot.shape == Shape::Elem)
                    .map(|(j, (_, &out))| (Target::State(j), out)),
            )
            .map(|(target, out)| (target, source[out.index()]))
            .collect();
        let mut live = vec![false; graph.len()];
        for &out in std::iter::once(&rule.param_out).chain(&rule.state_out) {
            live[source[out.index()].index()] = true;
        }
        for (h, node) in graph.iter().collect::<Vec<_>>().into_iter().rev() {
            if live[h.index()] {
                for c in node.children().into_iter().chain(state_init(node)) {
                    live[source[c.index()].index()] = true;
                }
            }
        }
        // Stores wait for the last stage, so that no pass reads a value
        // stored over.
        let last = graph
            .iter()
            .filter(|&(h, _)| live[h.index()])
            .map(|(h, _)| stage[h.index()])
            .max()
            .unwrap_or(0);
        let mut passes = vec![Pass::default(); last + 1];
        passes[last].stores = true;
        // The pass that writes each node out whole, if one does: operands
        // of products, and values a later pass would recompute at a cost.
        let mut written_in: Vec<Option<usize>> = vec![None; graph.len()];
        for (h, node) in graph.iter().filter(|&(h, _)| live[h.index()]) {
            match *node {
                Node::Reduce(_, _, a) if place[source[a.index()].index()] != Place::Host => {
                    passes[stage[h.index()] - 1].reductions.push(h)
                }
                Node::Gram(..) | Node::MatMul(..) => {
                    for c in node.children() {
                        let c = source[c.index()];
                        if place[c.index()] == Place::Block && written_in[c.index()].is_none() {
                            written_in[c.index()] = Some(stage[c.index()]);
                            passes[stage[c.index()]].materialize.push(c);
                        }
                    }
                }
                _ => {}
            }
        }
        let handles: Vec<Handle> = graph.iter().map(|(h, _)| h).collect();
        // The first pass that computes each per-element node.
        let mut computed_in: Vec<Option<usize>> = vec![None; graph.len()];
        for s in 0..passes.len() {
            let pass = &passes[s];
            let mut roots: Vec<Handle> = pass
                .reductions
                .iter()
                .filter_map(|&r| graph.node(r).children().first().copied())
                .chain(pass.materialize.iter().copied())
                .collect();
            if pass.stores {
                roots.extend(outputs.iter().map(|&(_, h)| h));
            }
            // What the pass evaluates: what its roots need, down to host
            // values, arrays and values written out by earlier passes.
            let needed_for = |written_in: &[Option<usize>]| {
                let mut needed = vec![false; graph.len()];
                let mut stack: Vec<Handle> = roots.iter().map(|&h| source[h.index()]).collect();
                while let Some(h) = stack.pop() {
                    let i = h.index();
                    let written_earlier = written_in[i].is_some_and(|w| w < s);
                    if place[i] != Place::Block || needed[i] || written_earlier {
                        continue;
                    }
                    needed[i] = true;
                    stack.extend(graph.node(h).children().iter().map(|c| source[c.index()]));
                }
                needed
            };
            let mut needed = needed_for(&written_in);
            // A value an earlier pass computed, whose recomputation here
            // costs more than writing it out there and reading it back, is
            // written out (the outermost such value first).
            while let Some((x, earlier)) = handles.iter().rev().find_map(|&h| {
                let earlier = computed_in[h.index()].filter(|&e| e < s)?;
                (needed[h.index()] && recomputation(graph, &source, &needed, h) >= WORTH_STORING)
                    .then_some((h, earlier))
            }) {
                written_in[x.index()] = Some(earlier);
                passes[earlier].materialize.push(x);
                needed = needed_for(&written_in);
            }
            for (h, _) in graph.iter().filter(|&(h, _)| needed[h.index()]) {
                computed_in[h.index()].get_or_insert(s);
            }
            let pass = &mut passes[s];
            pass.nodes = graph
                .iter()
                .map(|(h, _)| h)
                .filter(|h| needed[h.index()])
                .collect();
            let mut reads: Vec<Handle> = pass
                .nodes
                .iter()
                .flat_map(|&h| graph.node(h).children())
                .chain(roots)
                .map(|h| source[h.index()])
                .filter(|&h| !needed[h.index()] && place[h.index()] != Place::Host)
                .collect();
            reads.sort_by_key(|h| h.index());
            reads.dedup();
            pass.loads = reads;
        }
        Schedule {
            first_step,
            source,
            place,
            stage,
            live,
            passes,
            outputs,
        }
    }

    /// Whether the host computes node `h` before pass `s`: live nodes of
    /// that stage that are neither per element nor accumulated by a pass,
    /// matrix products, and state inputs that are not per-element buffers.
    fn host_work(&self, h: Handle, node: &Node, s: usize) -> bool {
        let i = h.index();
        if self.source[i] != h || !self.live[i] || self.stage[i] != s {
            return false;
        }
        match *node {
            Node::Input(Input::Param | Input::Grad, _) => false,
            Node::Input(Input::State(_), _) => self.first_step || self.place[i] == Place::Host,
            Node::Reduce(_, _, a) => self.place[self.src(a).index()] == Place::Host,
            _ => self.place[i] != Place::Block,
        }
    }

    fn src(&self, h: Handle) -> Handle {
        self.source[h.index()]
    }
}

/// A part of a tensor one thread evaluates at a time: whole rows, or a
/// chunk of one long row.
#[derive(Clone, Debug)]
struct Unit {
    tensor: usize,
    rows: Range<usize>,
    cols: Range<usize>,
}

/// Elements of a unit of work of whole rows in a pass with per-column
/// reductions: each unit keeps one partial result per column until the
/// pass ends, so such passes take fewer, larger units (at most [`CHUNK`]
/// columns still, the size of a thread's scratch).
const COLUMN_UNIT: usize = 8 * CHUNK;

/// The units of work of tensors of `views`, tensor after tensor, each in
/// element order: rows of a long row of at most [`CHUNK`] columns, or
/// whole rows, about `elements` elements a unit.
fn units(views: &[MatrixView], elements: usize) -> Vec<Unit> {
    let mut units = Vec::new();
    for (tensor, view) in views.iter().enumerate() {
        if view.numel() == 0 {
            continue;
        }
        if view.cols >= CHUNK {
            for row in 0..view.rows {
                for start in (0..view.cols).step_by(CHUNK) {
                    units.push(Unit {
                        tensor,
                        rows: row..row + 1,
                        cols: start..(start + CHUNK).min(view.cols),
                    });
                }
            }
        } else {
            let per_unit = elements / view.cols;
            for start in (0..view.rows).step_by(per_unit) {
                units.push(Unit {
                    tensor,
                    rows: start..(start + per_unit).min(view.rows),
                    cols: 0..view.cols,
                });
            }
        }
    }
    units
}

/// The memory a step reads and writes in place: per tensor of the part,
/// its parameters, gradients and each per-element state slot.
struct Memory {
    params: Vec<*mut f32>,
    grads: Vec<*const f32>,
    /// Per state slot: per tensor (per-element slots only; empty otherwise).
    state: Vec<Vec<*mut f32>>,
}

/// Widened copies of bf16 parameters and gradients, which a [`Memory`]
/// points into.
#[derive(Default)]
struct Widened {
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
}

/// A pass of the data-movement floor: per element, the sum of `loads`
/// stored to every one of `stores` (per tensor pointers), or accumulated
/// where nothing is stored; the units of a step's passes, on the same pool.
fn floor_pass(
    views: &[MatrixView],
    loads: &[Vec<*const f32>],
    stores: &[Vec<*mut f32>],
    pool: &Pool,
) {
    let shared = FloorMemory(loads, stores);
    let units = units(views, CHUNK);
    let next = AtomicUsize::new(0);
    pool.run(pool.threads(), &|_| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { floor_units_avx2(views, &shared, &units, &next) };
        }
        floor_units(views, &shared, &units, &next);
    });
}

struct FloorMemory<'a>(&'a [Vec<*const f32>], &'a [Vec<*mut f32>]);
// SAFETY: units write disjoint elements of the stores.
unsafe impl Sync for FloorMemory<'_> {}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn floor_units_avx2(
    views: &[MatrixView],
    shared: &FloorMemory<'_>,
    units: &[Unit],
    next: &AtomicUsize,
) {
    floor_units(views, shared, units, next)
}

/// The floor's units, taken from `next` until none is left.
#[inline(always)]
fn floor_units(views: &[MatrixView], shared: &FloorMemory<'_>, units: &[Unit], next: &AtomicUsize) {
    let mut sum = [0.0f32; BLOCK];
    let mut total = [0.0f32; BLOCK];
    while let Some(unit) = units.get(next.fetch_add(1, Ordering::Relaxed)) {
        let view = views[unit.tensor];
        for row in unit.rows.clone() {
            for col in unit.cols.clone().step_by(BLOCK) {
                let len = BLOCK.min(unit.cols.end - col);
                let first = row * view.cols + col;
                let sum = &mut sum[..len];
                sum.fill(0.0);
                for load in shared.0 {
                    // SAFETY: the tensor has `first + len` elements.
                    let xs =
                        unsafe { std::slice::from_raw_parts(load[unit.tensor].add(first), len) };
                    sum.iter_mut().zip(xs).for_each(|(s, &x)| *s += x);
                }
                for store in shared.1 {
                    // SAFETY: as for the loads; this unit's elements only.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            sum.as_ptr(),
                            store[unit.tensor].add(first),
                            len,
                        )
                    };
                }
                if shared.1.is_empty() {
                    total.iter_mut().zip(sum.iter()).for_each(|(t, &s)| *t += s);
                }
            }
        }
    }
    std::hint::black_box(total);
}

/// One operand of a whole-vector operation: a slice, or one value repeated.
#[derive(Clone, Copy)]
enum Operand<'a> {
    Slice(&'a [f32]),
    Splat(f32),
}

/// What a buffer of a pass kernel is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Buffer {
    Param,
    Grad,
    /// Per-element state slot `j`.
    State(usize),
    /// An array among the step's values: a matrix product, a value an
    /// earlier pass wrote out, first-step state broadcast from its
    /// initialiser.
    Values(Handle),
    /// The pass's `k`-th value written out whole.
    Written(usize),
    /// A per-column value, indexed by column.
    Cols(Handle),
    /// The argument of a per-column reduction, stored for one row at a
    /// time into the thread's scratch, which the host adds to its columns.
    Columns,
}

/// Where one of a pass's reductions accumulates.
#[derive(Clone, Copy, Debug)]
enum Partial {
    /// The kernel's accumulator of this index.
    Accumulator(usize),
    /// The kernel's buffer of this index (a [`Buffer::Columns`]).
    Columns(usize),
}

/// One pass compiled to one kernel. A call runs one row of a unit of work
/// (or a chunk of one row), so that arrays are indexed by column: per-row
/// values are its scalars, per-column values and per-column reductions'
/// arguments buffers. A pass that uses neither runs a whole unit per call.
struct PassKernel {
    code: Arc<dyn HostKernel>,
    buffers: Vec<Buffer>,
    /// The node each scalar argument reads (a group, tensor or per-row value).
    scalars: Vec<Handle>,
    /// Per reduction of the pass, in order: its operation, its scope and
    /// where it accumulates.
    reductions: Vec<(ReduceOp, Scope, Partial)>,
    /// The starting value of each accumulator.
    identities: Vec<f64>,
    /// Whether a call covers one row at a time.
    by_row: bool,
}

/// The reduction node `r`: operation, scope and argument.
fn reduction(graph: &Graph, r: Handle) -> (ReduceOp, Scope, Handle) {
    match *graph.node(r) {
        Node::Reduce(op, scope, a) => (op, scope, a),
        // Passes accumulate reduction nodes only.
        _ => (ReduceOp::Sum, Scope::Tensor, r),
    }
}

/// The lowering of one pass to a kernel.
struct Lowering<'a> {
    graph: &'a Graph,
    schedule: &'a Schedule,
    /// Nodes that passes before this one write out whole.
    written_earlier: Vec<bool>,
    kernel: Kernel,
    op_of: HashMap<Handle, u32>,
    buffers: Vec<Buffer>,
    scalars: Vec<Handle>,
}

impl Lowering<'_> {
    /// Pass `s` of `schedule` as a kernel; compiled by `kernels`.
    fn pass(
        graph: &Graph,
        schedule: &Schedule,
        s: usize,
        kernels: &Backend,
    ) -> Result<PassKernel, Error> {
        let pass = &schedule.passes[s];
        let mut written_earlier = vec![false; graph.len()];
        for h in schedule.passes[..s].iter().flat_map(|p| &p.materialize) {
            written_earlier[h.index()] = true;
        }
        let mut lowering = Lowering {
            graph,
            schedule,
            written_earlier,
            kernel: Kernel::default(),
            op_of: HashMap::new(),
            buffers: Vec::new(),
            scalars: Vec::new(),
        };
        for &h in &pass.nodes {
            let op = match *graph.node(h) {
                Node::Unary(op, a) => Op::Unary(op, lowering.operand(a)),
                Node::Binary(op, a, b) => {
                    let a = lowering.operand(a);
                    Op::Binary(op, a, lowering.operand(b))
                }
                Node::Select(c, a, b) => {
                    let (c, a) = (lowering.operand(c), lowering.operand(a));
                    Op::Select(c, a, lowering.operand(b))
                }
                Node::Lerp(a, b, w) => {
                    let (a, b) = (lowering.operand(a), lowering.operand(b));
                    Op::Lerp(a, b, lowering.operand(w))
                }
                // Other nodes are never per element in a pass (lowering
                // gives them other shapes; inputs and products are arrays).
                _ => Op::Const(f32::NAN),
            };
            let op = lowering.push(op);
            lowering.op_of.insert(h, op);
        }
        let mut reductions = Vec::new();
        let mut by_row = false;
        for &r in &pass.reductions {
            let (op, scope, a) = reduction(graph, r);
            let argument = lowering.operand(a);
            by_row |= matches!(scope, Scope::Rows | Scope::Cols);
            let partial = if scope == Scope::Cols {
                lowering.buffers.push(Buffer::Columns);
                let b = lowering.buffers.len() - 1;
                lowering.kernel.stores.push((b as u32, argument));
                Partial::Columns(b)
            } else {
                lowering.kernel.accumulators.push((op, argument));
                Partial::Accumulator(lowering.kernel.accumulators.len() - 1)
            };
            reductions.push((op, scope, partial));
        }
        let targets = (pass.materialize.iter().enumerate())
            .map(|(k, &h)| (Buffer::Written(k), h))
            .chain((schedule.outputs.iter().filter(|_| pass.stores)).map(
                |&(target, h)| match target {
                    Target::Param => (Buffer::Param, h),
                    Target::State(j) => (Buffer::State(j), h),
                },
            ));
        for (buffer, h) in targets.collect::<Vec<_>>() {
            let value = lowering.operand(h);
            let b = lowering.buffer(buffer);
            lowering.kernel.stores.push((b, value));
        }
        let Lowering {
            mut kernel,
            buffers,
            scalars,
            ..
        } = lowering;
        kernel.buffers = buffers.len() as u32;
        kernel.storage = vec![Storage::F32; buffers.len()];
        kernel.scalars = scalars.len() as u32;
        by_row |= buffers.iter().any(|b| matches!(b, Buffer::Cols(_)))
            || scalars.iter().any(|&c| graph.ty(c).shape == Shape::Rows);
        Ok(PassKernel {
            code: kernels.compile(&kernel)?,
            identities: (kernel.accumulators.iter())
                .map(|&(op, _)| Kernel::identity(op))
                .collect(),
            buffers,
            scalars,
            reductions,
            by_row,
        })
    }

    fn push(&mut self, op: Op) -> u32 {
        self.kernel.ops.push(op);
        self.kernel.ops.len() as u32 - 1
    }

    fn buffer(&mut self, buffer: Buffer) -> u32 {
        let b = self.buffers.iter().position(|&b| b == buffer);
        b.unwrap_or_else(|| {
            self.buffers.push(buffer);
            self.buffers.len() - 1
        }) as u32
    }

    /// The op of node `c`'s value at an element: computed by the pass,
    /// loaded from an array, or a scalar argument.
    fn operand(&mut self, c: Handle) -> u32 {
        let c = self.schedule.src(c);
        if let Some(&op) = self.op_of.get(&c) {
            return op;
        }
        let op = match (self.graph.ty(c).shape, self.graph.node(c)) {
            (Shape::Elem, Node::Input(Input::Param, _)) => Op::Load(self.buffer(Buffer::Param)),
            (Shape::Elem, Node::Input(Input::Grad, _)) => Op::Load(self.buffer(Buffer::Grad)),
            (Shape::Elem, &Node::Input(Input::State(j), _)) if !self.schedule.first_step => {
                Op::Load(self.buffer(Buffer::State(j as usize)))
            }
            (Shape::Elem, Node::Input(..) | Node::MatMul(..)) => {
                Op::Load(self.buffer(Buffer::Values(c)))
            }
            (Shape::Elem, _) if self.written_earlier[c.index()] => {
                Op::Load(self.buffer(Buffer::Values(c)))
            }
            (Shape::Cols, _) => Op::Load(self.buffer(Buffer::Cols(c))),
            (Shape::Group | Shape::Tensor | Shape::Rows, _) => {
                self.scalars.push(c);
                Op::Scalar(self.scalars.len() as u32 - 1)
            }
            _ => Op::Const(f32::NAN),
        };
        let op = self.push(op);
        self.op_of.insert(c, op);
        op
    }
}

/// Where one buffer of a pass kernel lies, per tensor of the part.
enum Base {
    /// Row-major elements (a row starts `cols` elements after the last).
    Elements(Vec<*mut f32>),
    /// One value per column.
    PerColumn(Vec<*mut f32>),
    /// The running thread's scratch (for a per-column reduction).
    Scratch,
}

/// One pass, as every thread sees it.
struct PassRun<'a> {
    kernel: &'a PassKernel,
    values: &'a [Value<f32>],
    views: &'a [MatrixView],
    /// Per kernel buffer.
    bases: Vec<Base>,
}

// SAFETY: the pointers address memory that outlives the pass, and units of
// work write disjoint ranges of it (each element once, after every read of
// that element); everything else is only read.
unsafe impl Sync for PassRun<'_> {}

impl PassRun<'_> {
    /// Runs the pass over one unit of work; returns each reduction's
    /// partial results (one value, or one per row or column of the unit).
    /// `columns` is the thread's scratch, per kernel buffer.
    fn unit(&self, unit: &Unit, columns: &mut [Vec<f32>]) -> Vec<Vec<f64>> {
        let (t, view, kernel) = (unit.tensor, self.views[unit.tensor], self.kernel);
        let mut sums: Vec<Vec<f64>> = (kernel.reductions.iter())
            .map(|&(op, scope, _)| {
                let len = match scope {
                    Scope::Rows => unit.rows.len(),
                    Scope::Cols => unit.cols.len(),
                    Scope::Tensor | Scope::Group => 1,
                };
                vec![Kernel::identity(op); len]
            })
            .collect();
        let mut accumulators = kernel.identities.clone();
        let mut pointers = vec![std::ptr::null_mut::<f32>(); self.bases.len()];
        let mut scalars = vec![0.0f32; kernel.scalars.len()];
        // A call per row, or one for the whole unit (then its first row's
        // pointers, and the unit's elements as the range).
        let (calls, range) = if kernel.by_row {
            (unit.rows.clone(), unit.cols.clone())
        } else {
            let start = unit.rows.start * view.cols;
            let end = (unit.rows.end - 1) * view.cols;
            (
                unit.rows.start..unit.rows.start + 1,
                start + unit.cols.start..end + unit.cols.end,
            )
        };
        for row in calls {
            let row_start = if kernel.by_row { row * view.cols } else { 0 };
            for (b, (pointer, base)) in pointers.iter_mut().zip(&self.bases).enumerate() {
                *pointer = match base {
                    // SAFETY: the row lies inside the tensor.
                    Base::Elements(per_tensor) => unsafe { per_tensor[t].add(row_start) },
                    Base::PerColumn(per_tensor) => per_tensor[t],
                    // The unit's first column is the scratch's first element.
                    Base::Scratch => columns[b].as_mut_ptr().wrapping_sub(unit.cols.start),
                };
            }
            for (x, &c) in scalars.iter_mut().zip(&kernel.scalars) {
                *x = match &self.values[c.index()] {
                    Value::Group(x) => *x as f32,
                    Value::Tensor(xs) => xs[t] as f32,
                    Value::Rows(xs) => xs[t][row],
                    _ => f32::NAN,
                };
            }
            for &(op, scope, partial) in &kernel.reductions {
                if let (Scope::Rows, Partial::Accumulator(a)) = (scope, partial) {
                    accumulators[a] = Kernel::identity(op);
                }
            }
            // SAFETY: every pointer addresses the range's elements of its
            // buffer (arrays at the row, per-column values and the scratch
            // by column); the unit's elements are this thread's alone.
            unsafe {
                kernel
                    .code
                    .call(&pointers, &scalars, &mut accumulators, range.clone())
            };
            for (q, &(op, scope, partial)) in kernel.reductions.iter().enumerate() {
                match (scope, partial) {
                    (Scope::Rows, Partial::Accumulator(a)) => {
                        sums[q][row - unit.rows.start] = accumulators[a]
                    }
                    (_, Partial::Columns(b)) => {
                        accumulate_columns(op, &mut sums[q], &columns[b][..unit.cols.len()])
                    }
                    _ => {}
                }
            }
        }
        for (q, &(_, scope, partial)) in kernel.reductions.iter().enumerate() {
            if let (Scope::Tensor | Scope::Group, Partial::Accumulator(a)) = (scope, partial) {
                sums[q][0] = accumulators[a];
            }
        }
        sums
    }
}

/// An operand as a slice of `len` values (a splat filled into `spare`).
#[inline(always)]
fn slice<'a>(operand: Operand<'a>, len: usize, spare: &'a mut Vec<f32>) -> &'a [f32] {
    match operand {
        Operand::Slice(xs) => xs,
        Operand::Splat(x) => {
            spare.clear();
            spare.resize(len, x);
            spare
        }
    }
}

/// Adds `xs` to one accumulator per column; compiled twice: for the
/// host's AVX2 where it has it (wider loops, the same results), and for the
/// baseline.
fn accumulate_columns(op: ReduceOp, columns: &mut [f64], xs: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { accumulate_columns_avx2(op, columns, xs) };
    }
    accumulate_columns_portable(op, columns, xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_columns_avx2(op: ReduceOp, columns: &mut [f64], xs: &[f32]) {
    accumulate_columns_portable(op, columns, xs)
}

#[inline(always)]
fn accumulate_columns_portable(op: ReduceOp, columns: &mut [f64], xs: &[f32]) {
    #[inline(always)]
    fn each(columns: &mut [f64], xs: &[f32], f: impl Fn(f64, f64) -> f64) {
        columns
            .iter_mut()
            .zip(xs)
            .for_each(|(a, &x)| *a = f(*a, f64::from(x)));
    }
    per_variant!(op, ReduceOp { Sum, Max, Min }, |o| each(
        columns,
        xs,
        |a, x| Kernel::combine(o, a, x)
    ))
}

#[inline(always)]
fn per_unary(op: UnaryOp, out: &mut [f32], a: Operand<'_>) {
    #[inline(always)]
    fn each(out: &mut [f32], a: Operand<'_>, f: impl Fn(f32) -> f32) {
        match a {
            Operand::Slice(xs) => out.iter_mut().zip(xs).for_each(|(o, &x)| *o = f(x)),
            Operand::Splat(x) => out.fill(f(x)),
        }
    }
    per_variant!(
        op,
        UnaryOp {
            Neg,
            Not,
            Abs,
            Sign,
            Sqrt,
            Rsqrt,
            Exp,
            Log,
            Tanh,
            Sigmoid,
            Cos,
            Cbrt,
            Floor,
            Bf16
        },
        |o| each(out, a, |x| unary(o, x))
    )
}

#[inline(always)]
fn per_binary(op: BinaryOp, out: &mut [f32], a: Operand<'_>, b: Operand<'_>) {
    #[inline(always)]
    fn each(out: &mut [f32], a: Operand<'_>, b: Operand<'_>, f: impl Fn(f32, f32) -> f32) {
        match (a, b) {
            (Operand::Slice(xs), Operand::Slice(ys)) => out
                .iter_mut()
                .zip(xs)
                .zip(ys)
                .for_each(|((o, &x), &y)| *o = f(x, y)),
            (Operand::Slice(xs), Operand::Splat(y)) => {
                out.iter_mut().zip(xs).for_each(|(o, &x)| *o = f(x, y))
            }
            (Operand::Splat(x), Operand::Slice(ys)) => {
                out.iter_mut().zip(ys).for_each(|(o, &y)| *o = f(x, y))
            }
            (Operand::Splat(x), Operand::Splat(y)) => out.fill(f(x, y)),
        }
    }
    per_variant!(
        op,
        BinaryOp {
            Add,
            Sub,
            Mul,
            Div,
            Pow,
            Min,
            Max,
            Eq,
            Ne,
            Lt,
            Le,
            Gt,
            Ge,
            And,
            Or
        },
        |o| each(out, a, b, |x, y| binary(o, x, y))
    )
}

/// The values of arithmetic node `node` over `out.len()` positions, its
/// operands from `operand` (`spare` holds splats a ternary node needs as
/// slices). Other nodes are never per position (lowering gives them other
/// shapes; inputs and products are arrays): NaN.
#[inline(always)]
fn arithmetic<'a>(
    node: &Node,
    out: &mut [f32],
    operand: impl Fn(Handle) -> Operand<'a>,
    spare: &'a mut [Vec<f32>; 3],
) {
    #[inline(always)]
    fn each(out: &mut [f32], x: &[f32], y: &[f32], z: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
        for (((o, &x), &y), &z) in out.iter_mut().zip(x).zip(y).zip(z) {
            *o = f(x, y, z);
        }
    }
    let len = out.len();
    match *node {
        Node::Unary(op, a) => per_unary(op, out, operand(a)),
        Node::Binary(op, a, b) => per_binary(op, out, operand(a), operand(b)),
        Node::Select(c, a, b) | Node::Lerp(c, a, b) => {
            let [s0, s1, s2] = spare;
            let (x, y, z) = (
                slice(operand(c), len, s0),
                slice(operand(a), len, s1),
                slice(operand(b), len, s2),
            );
            match node {
                Node::Select(..) => each(out, x, y, z, select),
                _ => each(out, x, y, z, lerp),
            }
        }
        _ => out.fill(f32::NAN),
    }
}

/// An arithmetic node whose value is one vector per tensor (per row, per
/// column, or a gram matrix), computed by the passes' loops over whole
/// vectors: operands of its shape are slices, scalars splats.
fn vector_value(
    graph: &Graph,
    h: Handle,
    values: &[Value<f32>],
    views: &[MatrixView],
    array: &dyn Fn(usize) -> Vec<f32>,
) -> Value<f32> {
    let shape = graph.ty(h).shape;
    let per_tensor = views
        .iter()
        .enumerate()
        .map(|(t, &view)| {
            let len = view.len(shape);
            let operand = |c: Handle| match &values[c.index()] {
                Value::Group(x) => Operand::Splat(*x as f32),
                Value::Tensor(xs) => Operand::Splat(xs[t] as f32),
                Value::Rows(xs) | Value::Cols(xs) | Value::Elem(xs) | Value::Gram(xs) => {
                    Operand::Slice(&xs[t][..len])
                }
            };
            let mut out = array(len);
            let mut spare: [Vec<f32>; 3] = Default::default();
            arithmetic(graph.node(h), &mut out, operand, &mut spare);
            out
        })
        .collect();
    Value::vectors(shape, per_tensor)
}

/// A reduction of a value that is not per element (a scalar, per-row or
/// per-column value) over the elements it broadcasts to, without visiting
/// them: a value repeated n times sums to n times it.
fn broadcast_reduce(
    op: ReduceOp,
    scope: Scope,
    arg: &Value<f32>,
    views: &[MatrixView],
    in_f32: bool,
) -> Value<f32> {
    let repeated = |x: f64, n: usize| match (op, n) {
        (_, 0) => Kernel::identity(op),
        (ReduceOp::Sum, n) => x * n as f64,
        _ => x,
    };
    let all = |xs: &[f32], n: usize| {
        xs.iter().fold(Kernel::identity(op), |acc, &x| {
            Kernel::combine(op, acc, repeated(f64::from(x), n))
        })
    };
    // Per tensor: the value of a line along `scope` (row r, column c, or
    // the whole tensor).
    let line = |t: usize, view: MatrixView, k: usize| -> f64 {
        match (arg, scope) {
            (Value::Group(_) | Value::Tensor(_), _) => {
                let x = match arg {
                    Value::Tensor(xs) => xs[t],
                    Value::Group(x) => *x,
                    _ => f64::NAN,
                };
                let n = match scope {
                    Scope::Rows => view.cols,
                    Scope::Cols => view.rows,
                    _ => view.numel(),
                };
                repeated(f64::from(x as f32), n)
            }
            (Value::Rows(xs), Scope::Rows) => repeated(f64::from(xs[t][k]), view.cols),
            (Value::Cols(xs), Scope::Cols) => repeated(f64::from(xs[t][k]), view.rows),
            (Value::Rows(xs), Scope::Cols) => all(&xs[t], 1),
            (Value::Cols(xs), Scope::Rows) => all(&xs[t], 1),
            (Value::Rows(xs), _) => all(&xs[t], view.cols),
            (Value::Cols(xs), _) => all(&xs[t], view.rows),
            (Value::Elem(_) | Value::Gram(_), _) => f64::NAN,
        }
    };
    let totals = views
        .iter()
        .enumerate()
        .map(|(t, &view)| {
            (0..view.len(scope.shape()))
                .map(|k| line(t, view, k))
                .collect()
        })
        .collect();
    reduction_value(op, scope, totals, in_f32)
}

/// The three matrix products, as the `gemm` crate runs them on the
/// row-major elements of each operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Product {
    /// `gram(x, y) = Yx Yy^T` (k x k).
    Gram,
    /// `matmul(A, B)` of two k x k matrices.
    Square,
    /// `matmul(A, x) = A Yx`, in the matrix's own orientation.
    Apply,
}

/// (m, n, depth) and the (row, column) strides of the output, left and
/// right operand of a product.
type ProductLayout = ((usize, usize, usize), [(isize, isize); 3]);

impl Product {
    fn of(graph: &Graph, h: Handle) -> Option<Product> {
        match graph.node(h) {
            Node::Gram(..) => Some(Product::Gram),
            Node::MatMul(..) if graph.ty(h).shape == Shape::Gram => Some(Product::Square),
            Node::MatMul(..) => Some(Product::Apply),
            _ => None,
        }
    }

    fn shape(self) -> Shape {
        match self {
            Product::Apply => Shape::Elem,
            Product::Gram | Product::Square => Shape::Gram,
        }
    }

    /// Its layout for a tensor of `view`. The wide orientation `Y` (see
    /// [`MatrixView::wide_strides`]) is the matrix or its transpose: only
    /// strides differ.
    fn layout(self, view: MatrixView) -> ProductLayout {
        let (k, l) = (view.small(), view.large());
        let (row, col) = view.wide_strides();
        let wide = (row as isize, col as isize);
        let square = (k as isize, 1);
        match self {
            Product::Gram => ((k, k, l), [square, wide, (wide.1, wide.0)]),
            Product::Square => ((k, k, k), [square, square, square]),
            Product::Apply => ((k, l, k), [wide, square, wide]),
        }
    }

    /// `out = lhs rhs` for a tensor of `view`, on `threads` threads.
    ///
    /// # Safety
    /// `out`, `lhs` and `rhs` hold the entries their operand has for `view`
    /// (a tensor's elements, or k x k).
    unsafe fn run(
        self,
        view: MatrixView,
        out: *mut f32,
        lhs: *const f32,
        rhs: *const f32,
        threads: usize,
    ) {
        let ((m, n, depth), [dst, a, b]) = self.layout(view);
        if m == 0 || n == 0 {
            return;
        }
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: as the caller guarantees; the strides stay inside the
        // operands. `gemm` takes column strides first: out = 0 out + 1 lhs rhs.
        unsafe {
            gemm::gemm(
                m,
                n,
                depth,
                out,
                dst.1,
                dst.0,
                false,
                lhs,
                a.1,
                a.0,
                rhs,
                b.1,
                b.0,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// The staged executor: the interpreter's storage (state slots, uploaded
/// parameters, checkpoints), a staged step.
pub struct StagedExecutor {
    storage: InterpExecutor<f32>,
    /// The first step's schedule and every later step's.
    schedules: [Schedule; 2],
    /// Each schedule's passes compiled (`None` for a pass with no work).
    kernels: [Vec<Option<PassKernel>>; 2],
    f32_nodes: Vec<bool>,
    pool: Pool,
    /// Arrays of earlier steps (products, values written out), reused: a
    /// fresh allocation would cost its page faults on every step.
    spare: RefCell<Vec<Vec<f32>>>,
}

impl StagedExecutor {
    /// An array of `len` elements, every one of which the caller writes:
    /// a spare one at most twice as large, where there is one.
    fn array(&self, len: usize) -> Vec<f32> {
        if len < REUSED {
            return vec![0.0; len];
        }
        let mut spare = self.spare.borrow_mut();
        let fit = spare
            .iter()
            .enumerate()
            .filter(|(_, a)| (len..=2 * len).contains(&a.capacity()))
            .min_by_key(|(_, a)| a.capacity())
            .map(|(i, _)| i);
        let mut array = fit.map_or_else(Vec::new, |i| spare.swap_remove(i));
        // Stale values are overwritten before they are read.
        array.resize(len, 0.0);
        array
    }

    /// Takes back the arrays of a step's values.
    fn recycle(&self, values: Vec<Value<f32>>) {
        let mut spare = self.spare.borrow_mut();
        for value in values {
            if let Value::Elem(xs) | Value::Gram(xs) = value {
                spare.extend(xs.into_iter().filter(|x| x.capacity() >= REUSED));
            }
        }
    }

    /// The executor of `rule`, its passes compiled by `kernels` (a kernel
    /// backend).
    pub fn new(
        rule: Arc<Rule>,
        scalars: Scalars,
        threads: usize,
        kernels: &Backend,
    ) -> Result<StagedExecutor, Error> {
        let schedules = [Schedule::new(&rule, true), Schedule::new(&rule, false)];
        let compile = |schedule: &Schedule| -> Result<Vec<Option<PassKernel>>, Error> {
            (0..schedule.passes.len())
                .map(|s| {
                    (schedule.passes[s].has_work())
                        .then(|| Lowering::pass(&rule.graph, schedule, s, kernels))
                        .transpose()
                })
                .collect()
        };
        let kernels = [compile(&schedules[0])?, compile(&schedules[1])?];
        let f32_nodes = scalars.f32_nodes(&rule.graph);
        Ok(StagedExecutor {
            storage: InterpExecutor::new(rule, "staged", scalars),
            schedules,
            kernels,
            f32_nodes,
            pool: Pool::new(threads)?,
            spare: RefCell::new(Vec::new()),
        })
    }

    /// The memory of part `tensors`: parameters (bf16 ones widened, in
    /// the returned copies), gradients (likewise) and per-element state.
    fn memory(
        &mut self,
        tensors: &[usize],
        params: &mut Params<'_, '_>,
        grads: HostTensors<'_, '_>,
    ) -> (Memory, Widened) {
        let mut widened = Widened::default();
        let params: Vec<*mut f32> = match (params, &mut self.storage.params) {
            (Params::Borrowed(HostTensorsMut::F32(p)), _) => {
                tensors.iter().map(|&t| p[t].as_mut_ptr()).collect()
            }
            (Params::Borrowed(p @ HostTensorsMut::Bf16(_)), _) => {
                widened.params = tensors.iter().map(|&t| p.widened(t)).collect();
                widened.params.iter_mut().map(|x| x.as_mut_ptr()).collect()
            }
            (Params::Owned, Some(owned)) => {
                tensors.iter().map(|&t| owned[t].as_mut_ptr()).collect()
            }
            (Params::Owned, None) => Vec::new(),
        };
        let grads: Vec<*const f32> = match grads {
            HostTensors::F32(g) => tensors.iter().map(|&t| g[t].as_ptr()).collect(),
            HostTensors::Bf16(_) => {
                widened.grads = tensors.iter().map(|&t| grads.widened(t)).collect();
                widened.grads.iter().map(|x| x.as_ptr()).collect()
            }
        };
        let state = self
            .storage
            .state
            .iter_mut()
            .map(|slot| match slot {
                Slot::Vectors(Shape::Elem, xs) => {
                    tensors.iter().map(|&t| xs[t].as_mut_ptr()).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        (
            Memory {
                params,
                grads,
                state,
            },
            widened,
        )
    }

    /// One part's step: `tensors` (of the layout) at `step` with `hypers`;
    /// `memory` addresses their parameters, gradients and per-element state.
    #[allow(clippy::too_many_arguments)]
    fn run_part(
        &mut self,
        layout: &Layout,
        tensors: &[usize],
        group: usize,
        step: u64,
        hypers: &[f64],
        memory: &Memory,
    ) -> Result<(), Error> {
        let rule = self.storage.rule.clone();
        let graph = &rule.graph;
        let schedule = &self.schedules[usize::from(step > 1)];
        let views: Vec<MatrixView> = tensors.iter().map(|&t| layout.tensors[t].view).collect();
        let threads = self.pool.threads();
        let mut values: Vec<Value<f32>> = vec![Value::Group(f64::NAN); graph.len()];
        for (s, pass) in schedule.passes.iter().enumerate() {
            for (h, node) in graph.iter() {
                if schedule.host_work(h, node, s) {
                    values[h.index()] = self.host_value(
                        h, schedule, &values, &views, tensors, group, step, hypers, memory, threads,
                    );
                }
            }
            let Some(kernel) = &self.kernels[usize::from(step > 1)][s] else {
                continue;
            };
            let mut written: Vec<Vec<Vec<f32>>> = pass
                .materialize
                .iter()
                .map(|_| views.iter().map(|v| self.array(v.numel())).collect())
                .collect();
            let run = PassRun {
                kernel,
                values: &values,
                views: &views,
                bases: (kernel.buffers.iter())
                    .map(|&buffer| base(buffer, &values, memory, &mut written))
                    .collect::<Result<_, Error>>()?,
            };
            let results = run.all_units(&self.pool);
            let finished: Vec<(Handle, Value<f32>)> = pass
                .reductions
                .iter()
                .enumerate()
                .map(|(q, &r)| (r, self.finish(r, q, &results, &views)))
                .collect();
            for (r, value) in finished {
                values[r.index()] = value;
            }
            for (&h, arrays) in pass.materialize.iter().zip(written) {
                values[h.index()] = Value::Elem(arrays);
            }
        }
        // Per-row, per-column, tensor and group state (per-element state is
        // stored by the last pass).
        let new_state: Vec<Value<f32>> = rule
            .states
            .iter()
            .zip(&rule.state_out)
            .map(|(slot, &out)| match slot.shape {
                // A value no slot takes: already in place.
                Shape::Elem => Value::Group(f64::NAN),
                shape => values[schedule.src(out).index()].broadcast(shape, &views),
            })
            .collect();
        self.storage.scatter(tensors, group, new_state);
        self.recycle(values);
        Ok(())
    }

    /// The value of host node `h` (stage work before a pass).
    #[allow(clippy::too_many_arguments)]
    fn host_value(
        &self,
        h: Handle,
        schedule: &Schedule,
        values: &[Value<f32>],
        views: &[MatrixView],
        tensors: &[usize],
        group: usize,
        step: u64,
        hypers: &[f64],
        memory: &Memory,
        threads: usize,
    ) -> Value<f32> {
        let rule = &self.storage.rule;
        let graph = &rule.graph;
        let in_f32 = self.f32_nodes[h.index()];
        match *graph.node(h) {
            Node::Input(Input::Step, _) => Value::Group(step as f64),
            Node::Input(Input::Hyper(k), _) => Value::Group(hypers[k as usize]),
            Node::Input(Input::State(j), _) => {
                let slot = &rule.states[j as usize];
                if schedule.first_step {
                    return values[schedule.src(slot.init).index()].broadcast(slot.shape, views);
                }
                self.storage.slot_value(j as usize, tensors, group)
            }
            Node::Reduce(op, scope, a) if graph.ty(a).shape != Shape::Gram => {
                broadcast_reduce(op, scope, &values[schedule.src(a).index()], views, in_f32)
            }
            Node::Gram(a, b) | Node::MatMul(a, b) => {
                let Some(product) = Product::of(graph, h) else {
                    return Value::Group(f64::NAN);
                };
                let whole = |c: Handle, t: usize| -> *const f32 {
                    let c = schedule.src(c);
                    match (&values[c.index()], graph.node(c)) {
                        (Value::Elem(xs) | Value::Gram(xs), _) => xs[t].as_ptr(),
                        (_, Node::Input(Input::Param, _)) => memory.params[t].cast_const(),
                        (_, Node::Input(Input::Grad, _)) => memory.grads[t],
                        (_, Node::Input(Input::State(j), _)) => {
                            memory.state[*j as usize][t].cast_const()
                        }
                        _ => std::ptr::null(),
                    }
                };
                let per_tensor = views
                    .iter()
                    .enumerate()
                    .map(|(t, &view)| {
                        let mut out = self.array(view.len(product.shape()));
                        // SAFETY: operands of a product are per element or
                        // gram matrices (lowering checks), held whole.
                        unsafe {
                            product.run(view, out.as_mut_ptr(), whole(a, t), whole(b, t), threads)
                        };
                        out
                    })
                    .collect();
                Value::vectors(product.shape(), per_tensor)
            }
            Node::Unary(..) | Node::Binary(..) | Node::Select(..) | Node::Lerp(..)
                if graph.ty(h).shape.is_axis() || graph.ty(h).shape == Shape::Gram =>
            {
                vector_value(graph, h, values, views, &|len| self.array(len))
            }
            _ => node_value(graph, h, values, views, in_f32),
        }
    }

    /// Reduction `r` (the pass's `q`-th) from its units' partial results.
    fn finish(
        &self,
        r: Handle,
        q: usize,
        results: &[(Unit, Vec<Vec<f64>>)],
        views: &[MatrixView],
    ) -> Value<f32> {
        let graph = &self.storage.rule.graph;
        let in_f32 = self.f32_nodes[r.index()];
        let Node::Reduce(op, scope, _) = *graph.node(r) else {
            return Value::Group(f64::NAN);
        };
        let mut totals: Vec<Vec<f64>> = views
            .iter()
            .map(|view| vec![Kernel::identity(op); view.len(scope.shape())])
            .collect();
        for (unit, sums) in results {
            let start = match scope {
                Scope::Rows => unit.rows.start,
                Scope::Cols => unit.cols.start,
                Scope::Tensor | Scope::Group => 0,
            };
            let line = &mut totals[unit.tensor][start..];
            for (total, &x) in line.iter_mut().zip(&sums[q]) {
                *total = Kernel::combine(op, *total, x);
            }
        }
        reduction_value(op, scope, totals, in_f32)
    }
}

/// Where `buffer` of a pass kernel lies for each tensor of the part:
/// `values` are the step's so far, `written` the arrays the pass writes out.
fn base(
    buffer: Buffer,
    values: &[Value<f32>],
    memory: &Memory,
    written: &mut [Vec<Vec<f32>>],
) -> Result<Base, Error> {
    let arrays = |xs: &[Vec<f32>]| xs.iter().map(|x| x.as_ptr().cast_mut()).collect();
    Ok(match buffer {
        Buffer::Param => Base::Elements(memory.params.clone()),
        Buffer::Grad => Base::Elements(memory.grads.iter().map(|g| g.cast_mut()).collect()),
        Buffer::State(j) => Base::Elements(memory.state[j].clone()),
        Buffer::Written(k) => {
            Base::Elements(written[k].iter_mut().map(|x| x.as_mut_ptr()).collect())
        }
        Buffer::Values(h) | Buffer::Cols(h) => match (buffer, &values[h.index()]) {
            (Buffer::Values(_), Value::Elem(xs)) => Base::Elements(arrays(xs)),
            (Buffer::Cols(_), Value::Cols(xs)) => Base::PerColumn(arrays(xs)),
            _ => {
                return Err(Error::Internal(format!(
                    "{h:?} was not computed before its pass"
                )))
            }
        },
        Buffer::Columns => Base::Scratch,
    })
}

impl PassRun<'_> {
    /// Runs the pass over every unit of work on the pool's threads; each
    /// unit's partial results, in unit order.
    fn all_units(&self, pool: &Pool) -> Vec<(Unit, Vec<Vec<f64>>)> {
        let per_column = (self.kernel.reductions.iter())
            .any(|&(.., partial)| matches!(partial, Partial::Columns(_)));
        let units = units(self.views, if per_column { COLUMN_UNIT } else { CHUNK });
        let results: Vec<OnceLock<Vec<Vec<f64>>>> = units.iter().map(|_| OnceLock::new()).collect();
        let next = AtomicUsize::new(0);
        pool.run(pool.threads(), &|_| {
            let mut columns: Vec<Vec<f32>> = (self.bases.iter())
                .map(|base| match base {
                    Base::Scratch => vec![0.0; CHUNK],
                    _ => Vec::new(),
                })
                .collect();
            loop {
                let u = next.fetch_add(1, Ordering::Relaxed);
                let Some(unit) = units.get(u) else { break };
                let _ = results[u].set(self.unit(unit, &mut columns));
            }
        });
        units
            .into_iter()
            .zip(results)
            .map(|(unit, sums)| (unit, sums.into_inner().unwrap_or_default()))
            .collect()
    }
}

impl Executor for StagedExecutor {
    fn backend(&self) -> &str {
        "staged"
    }

    fn bind(&mut self, layout: &Layout) -> Result<(), Error> {
        self.storage.bind(layout)
    }

    fn step(
        &mut self,
        layout: &Layout,
        request: &StepRequest,
        mut params: Params<'_, '_>,
        grads: HostTensors<'_, '_>,
    ) -> Result<(), Error> {
        self.storage.refuse_reductions_across_groups(request)?;
        if matches!(params, Params::Owned) && self.storage.params.is_none() {
            return Err(Error::Internal("no parameters were uploaded".into()));
        }
        for kernel in self.kernels.iter().flatten().flatten() {
            kernel.code.settle();
        }
        for (member, part) in request.members.iter().enumerate() {
            let tensors: Vec<usize> = request.tensors_of(member).collect();
            let (memory, widened) = self.memory(&tensors, &mut params, grads);
            self.run_part(
                layout,
                &tensors,
                part.group,
                part.step,
                &part.hypers,
                &memory,
            )?;
            if let Params::Borrowed(p @ HostTensorsMut::Bf16(_)) = &mut params {
                for (&t, values) in tensors.iter().zip(widened.params) {
                    p.write(t, values.into_iter());
                }
            }
        }
        Ok(())
    }

    fn run_floor(
        &mut self,
        layout: &Layout,
        mut params: Params<'_, '_>,
        grads: HostTensors<'_, '_>,
    ) -> Result<(), Error> {
        if matches!(params, Params::Owned) && self.storage.params.is_none() {
            return Err(Error::Internal("no parameters were uploaded".into()));
        }
        let tensors: Vec<usize> = (0..layout.tensors.len()).collect();
        let (memory, _widened) = self.memory(&tensors, &mut params, grads);
        let views = layout.views();
        let graph = &self.storage.rule.graph;
        let schedule = &self.schedules[1];
        for pass in schedule.passes.iter().filter(|pass| pass.has_work()) {
            // Arrays a step computes on the host (products, operands
            // written out by earlier passes) are scratch here, as new as the step's.
            let scratch = |count: usize| -> Vec<Vec<Vec<f32>>> {
                (0..count)
                    .map(|_| views.iter().map(|v| self.array(v.numel())).collect())
                    .collect()
            };
            let computed = pass
                .loads
                .iter()
                .filter(|&&h| !matches!(graph.node(h), Node::Input(..)))
                .count();
            let (mut computed, mut targets) = (scratch(computed), scratch(pass.materialize.len()));
            let mut sources = computed.iter_mut();
            let loads: Vec<Vec<*const f32>> = pass
                .loads
                .iter()
                .map(|&h| match *graph.node(h) {
                    Node::Input(Input::Param, _) => {
                        memory.params.iter().map(|p| p.cast_const()).collect()
                    }
                    Node::Input(Input::Grad, _) => memory.grads.clone(),
                    Node::Input(Input::State(j), _) => memory.state[j as usize]
                        .iter()
                        .map(|p| p.cast_const())
                        .collect(),
                    _ => sources
                        .next()
                        .map(|arrays| arrays.iter().map(|x| x.as_ptr()).collect())
                        .unwrap_or_default(),
                })
                .collect();
            let mut stores: Vec<Vec<*mut f32>> = targets
                .iter_mut()
                .map(|arrays| arrays.iter_mut().map(|x| x.as_mut_ptr()).collect())
                .collect();
            if pass.stores {
                stores.extend(schedule.outputs.iter().map(|&(target, _)| match target {
                    Target::Param => memory.params.clone(),
                    Target::State(j) => memory.state[j].clone(),
                }));
            }
            floor_pass(&views, &loads, &stores, &self.pool);
            self.recycle(
                computed
                    .into_iter()
                    .chain(targets)
                    .map(Value::Elem)
                    .collect(),
            );
        }
        Ok(())
    }

    fn traffic(&self) -> Option<super::Traffic> {
        let passes: Vec<&Pass> = self.schedules[1]
            .passes
            .iter()
            .filter(|p| p.has_work())
            .collect();
        let outputs = self.schedules[1].outputs.len();
        Some(super::Traffic {
            passes: passes.len(),
            bytes_per_element: passes
                .iter()
                .map(|p| {
                    4 * (p.loads.len() + p.materialize.len() + if p.stores { outputs } else { 0 })
                })
                .sum(),
        })
    }

    fn run_products(&mut self, layout: &Layout) -> Result<usize, Error> {
        let graph = &self.storage.rule.graph;
        let schedule = &self.schedules[1];
        let threads = self.pool.threads();
        let mut count = 0;
        for (h, _) in graph.iter().filter(|&(h, _)| schedule.live[h.index()]) {
            let Some(product) = Product::of(graph, h) else {
                continue;
            };
            for view in layout.views() {
                // From the step's reused arrays, as the step's own: zeros
                // (no subnormals to slow a product down).
                let operand = |shape: Shape| {
                    let mut array = self.array(view.len(shape));
                    array.fill(0.0);
                    array
                };
                let (lhs, rhs) = match product {
                    Product::Gram => (operand(Shape::Elem), operand(Shape::Elem)),
                    Product::Square => (operand(Shape::Gram), operand(Shape::Gram)),
                    Product::Apply => (operand(Shape::Gram), operand(Shape::Elem)),
                };
                let mut out = operand(product.shape());
                // SAFETY: each operand holds what `product` reads for `view`.
                unsafe { product.run(view, out.as_mut_ptr(), lhs.as_ptr(), rhs.as_ptr(), threads) };
                self.recycle(vec![Value::Elem(vec![lhs, rhs, out])]);
                count += 1;
            }
        }
        Ok(count)
    }

    fn upload(&mut self, layout: &Layout, params: HostTensors<'_, '_>) -> Result<(), Error> {
        self.storage.upload(layout, params)
    }

    fn download(&self, layout: &Layout) -> Result<Vec<Stored>, Error> {
        self.storage.download(layout)
    }

    fn state(&self, layout: &Layout) -> Vec<SlotValues> {
        self.storage.state(layout)
    }

    fn state_dtype(&self) -> &'static str {
        self.storage.state_dtype()
    }

    fn set_state(&mut self, layout: &Layout, state: &[SlotValues]) -> Result<(), Error> {
        self.storage.set_state(layout, state)
    }
}
