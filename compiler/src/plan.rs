//! The pass plan: how a rule runs as fused kernels.
//!
//! Elementwise nodes run in kernels, one pass over memory each; group and
//! tensor nodes (hyperparameter arithmetic, bias corrections, reduction
//! results) run on the host once per step (group) or per tensor, in f64.
//! A reduction over elements is an accumulator of the pass that computes its
//! argument; whatever depends on its result runs in a later pass. So a rule
//! without reductions is one pass, and a rule like LAMB (a trust ratio of
//! norms) is two: the first only accumulates, the second recomputes what it
//! needs from the inputs and writes every output. Intermediates are always
//! recomputed, never materialised: a pass moves the bytes of its loads and
//! stores and nothing else.
//!
//! Buffers are numbered `0 = p`, `1 = g`, then the per-element state slots in
//! the rule's order. Only the last pass stores, and never to `g`.

use std::collections::HashMap;

use crate::ir::{Handle, Input, Node, ReduceOp, Rule, Scope, Shape};
use crate::kernel::{Kernel, Op, Rounding, Storage};

pub const PARAM_BUFFER: u32 = 0;
pub const GRAD_BUFFER: u32 = 1;

/// One pass over the elements of every tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Pass {
    pub kernel: Kernel,
    /// The node whose value (per tensor, rounded to f32) is scalar argument k.
    pub scalar_args: Vec<Handle>,
    /// The reduction node each accumulator computes.
    pub reductions: Vec<Handle>,
}

/// How one step of a rule runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Whether this is the plan of the first step (state read from initialisers).
    pub first_step: bool,
    pub passes: Vec<Pass>,
    /// For every node: the pass before which the host computes it (scalar
    /// nodes), in which a kernel computes it (elementwise nodes), or after
    /// which its accumulator is complete (reductions: `stage - 1`).
    pub stage: Vec<usize>,
    /// Buffer of each state slot (per-element slots only).
    pub state_buffers: Vec<Option<u32>>,
    /// First step only: per-element slots whose initialiser is a constant
    /// are read from their buffer like on every later step, and the runtime
    /// fills the new buffer with this value first. The first step's kernels
    /// then usually equal the later steps' kernels, so a kernel cache
    /// compiles them once (half the compile time of Adam-like rules), for 4
    /// more bytes per element and slot read once.
    pub fill: Vec<Option<f32>>,
}

/// Why pass plans cannot run `rule`, if they cannot: per-row and
/// per-column values (`row_*`/`col_*` reductions, `: rows`/`: cols` state)
/// need a tensor indexed by row and column, gram matrices and matrix
/// products a GEMM between passes, neither of which a pass plan has; the
/// staged executor runs such rules (its passes compiled to kernels, per-row
/// values as their scalars), as does the interpreter.
pub fn unsupported(rule: &Rule) -> Option<String> {
    let graph = &rule.graph;
    let has = |what: fn(Shape) -> bool| graph.iter().any(|(h, _)| what(graph.ty(h).shape));
    let what = if has(|shape| shape == Shape::Gram) {
        "gram matrices and matrix products (`gram`, `matmul`)"
    } else if has(Shape::is_axis) {
        "per-row or per-column values (row_/col_ reductions, `: rows`/`: cols` state)"
    } else {
        return None;
    };
    Some(format!(
        "`{}` has {what}, which pass plans do not run; the `staged` backend runs it \
         (its passes compiled by a kernel backend), as does the interpreter",
        rule.name
    ))
}

impl Plan {
    /// Plans `rule` (one [`unsupported`] does not refuse); `first_step` substitutes each state's initialiser for its
    /// stored value, as the first step does.
    pub fn new(rule: &Rule, first_step: bool) -> Plan {
        let graph = &rule.graph;
        let mut next_buffer = 2;
        let state_buffers: Vec<Option<u32>> = rule
            .states
            .iter()
            .map(|slot| {
                (slot.shape == Shape::Elem).then(|| {
                    next_buffer += 1;
                    next_buffer - 1
                })
            })
            .collect();
        let fill: Vec<Option<f32>> = rule
            .states
            .iter()
            .map(|slot| match graph.node(slot.init) {
                Node::Const(bits) if first_step && slot.shape == Shape::Elem => {
                    Some(f64::from_bits(*bits) as f32)
                }
                _ => None,
            })
            .collect();
        // What each node stands for: on the first step, a state input is its
        // initialiser (unless its buffer is filled with it).
        let resolve = |h: Handle| -> Handle {
            match graph.node(h) {
                Node::Input(Input::State(i), _) if first_step && fill[*i as usize].is_none() => {
                    rule.states[*i as usize].init
                }
                _ => h,
            }
        };
        let mut stage = vec![0usize; graph.len()];
        for (h, node) in graph.iter() {
            stage[h.index()] = match *node {
                Node::Input(Input::State(_), _) if resolve(h) != h => stage[resolve(h).index()],
                Node::Reduce(_, _, arg) if graph.ty(arg).shape == Shape::Elem => {
                    stage[arg.index()] + 1
                }
                _ => node
                    .children()
                    .iter()
                    .map(|c| stage[c.index()])
                    .max()
                    .unwrap_or(0),
            };
        }
        let elem_outputs: Vec<(u32, Handle)> = std::iter::once((PARAM_BUFFER, rule.param_out))
            .chain(
                state_buffers
                    .iter()
                    .zip(&rule.state_out)
                    .filter_map(|(buffer, &out)| buffer.map(|b| (b, out))),
            )
            .collect();
        // Reductions that some output depends on (dead ones are not computed).
        let mut live = vec![false; graph.len()];
        for &out in std::iter::once(&rule.param_out).chain(&rule.state_out) {
            live[resolve(out).index()] = true;
        }
        for index in (0..graph.len()).rev() {
            let h = handle(index);
            if live[index] {
                live[resolve(h).index()] = true;
                for child in graph.node(h).children() {
                    live[resolve(child).index()] = true;
                }
            }
        }
        let reductions: Vec<Handle> = graph
            .iter()
            .filter(|&(h, node)| {
                live[h.index()] && matches!(node, Node::Reduce(_, _, arg) if graph.ty(*arg).shape == Shape::Elem)
            })
            .map(|(h, _)| h)
            .collect();
        let last = elem_outputs
            .iter()
            .map(|&(_, h)| stage[h.index()])
            .chain(reductions.iter().map(|&r| stage[r.index()] - 1))
            .max()
            .unwrap_or(0);
        let passes = (0..=last)
            .map(|pass| {
                let accumulate: Vec<Handle> = reductions
                    .iter()
                    .copied()
                    .filter(|&r| stage[r.index()] - 1 == pass)
                    .collect();
                let stores: &[(u32, Handle)] = if pass == last { &elem_outputs } else { &[] };
                build_pass(
                    rule,
                    &resolve,
                    &state_buffers,
                    &accumulate,
                    stores,
                    next_buffer,
                )
            })
            .collect();
        Plan {
            first_step,
            passes,
            stage,
            state_buffers,
            fill,
        }
    }

    /// Number of buffers every kernel of the plan takes.
    pub fn buffers(&self) -> u32 {
        self.passes.first().map_or(2, |p| p.kernel.buffers)
    }
}

/// The data-movement floor of a pass: a kernel that loads and stores exactly
/// the pass's buffers, with one addition per load and nothing else (a pass
/// that stores nothing accumulates the sum instead, so its loads stay live).
pub fn floor(pass: &Pass) -> Kernel {
    let k = &pass.kernel;
    let mut ops: Vec<Op> = k.loaded_buffers().into_iter().map(Op::Load).collect();
    let mut sum = 0;
    for index in 1..ops.len() as u32 {
        ops.push(Op::Binary(crate::ir::BinaryOp::Add, sum, index));
        sum = ops.len() as u32 - 1;
    }
    if ops.is_empty() {
        ops.push(Op::Const(0.0));
    }
    let stores: Vec<(u32, u32)> = k.stores.iter().map(|&(b, _)| (b, sum)).collect();
    let accumulators = if stores.is_empty() {
        vec![(ReduceOp::Sum, sum)]
    } else {
        Vec::new()
    };
    Kernel {
        ops,
        stores,
        accumulators,
        buffers: k.buffers,
        scalars: 0,
        storage: k.storage.clone(),
        // Rounding moves no bytes, and the floor has no seed scalar.
        rounding: Rounding::NearestEven,
    }
}

/// Emits the kernel of one pass: the elementwise nodes its accumulators and
/// stores need, in arena order.
fn build_pass(
    rule: &Rule,
    resolve: &dyn Fn(Handle) -> Handle,
    state_buffers: &[Option<u32>],
    accumulate: &[Handle],
    stores: &[(u32, Handle)],
    buffers: u32,
) -> Pass {
    let graph = &rule.graph;
    // Which elementwise nodes are needed, found backwards from the roots.
    let mut needed = vec![false; graph.len()];
    let roots = accumulate
        .iter()
        .map(|&r| match graph.node(r) {
            Node::Reduce(_, _, arg) => *arg,
            _ => r,
        })
        .chain(stores.iter().map(|&(_, h)| h));
    for root in roots {
        needed[resolve(root).index()] = true;
    }
    for index in (0..graph.len()).rev() {
        let h = handle(index);
        if !needed[index] || graph.ty(h).shape != Shape::Elem {
            continue;
        }
        let node = graph.node(h);
        if let Node::Input(Input::State(_), _) = node {
            needed[resolve(h).index()] = true;
        }
        for child in node.children() {
            needed[resolve(child).index()] = true;
        }
    }
    let mut ops: Vec<Op> = Vec::new();
    let mut op_of: HashMap<Handle, u32> = HashMap::new();
    let mut scalar_args: Vec<Handle> = Vec::new();
    let emit = |ops: &mut Vec<Op>, op: Op| -> u32 {
        ops.push(op);
        ops.len() as u32 - 1
    };
    // The op that reads a scalar (group or tensor) node: a constant or an argument.
    let mut scalar = |ops: &mut Vec<Op>, op_of: &mut HashMap<Handle, u32>, h: Handle| -> u32 {
        if let Some(&op) = op_of.get(&h) {
            return op;
        }
        let op = match graph.node(h) {
            Node::Const(bits) => Op::Const(f64::from_bits(*bits) as f32),
            Node::Bool(b) => Op::Const(if *b { 1.0 } else { 0.0 }),
            _ => {
                scalar_args.push(h);
                Op::Scalar(scalar_args.len() as u32 - 1)
            }
        };
        let index = emit(ops, op);
        op_of.insert(h, index);
        index
    };
    for (h, node) in graph.iter() {
        if !needed[h.index()] || graph.ty(h).shape != Shape::Elem {
            continue;
        }
        let mut operand =
            |ops: &mut Vec<Op>, op_of: &mut HashMap<Handle, u32>, child: Handle| -> u32 {
                let child = resolve(child);
                match op_of.get(&child) {
                    Some(&op) => op,
                    None => scalar(ops, op_of, child),
                }
            };
        let op = match *node {
            Node::Input(Input::Param, _) => Op::Load(PARAM_BUFFER),
            Node::Input(Input::Grad, _) => Op::Load(GRAD_BUFFER),
            Node::Input(Input::State(i), _) => {
                let init = resolve(h);
                if init != h {
                    // First step: the state is its initialiser.
                    let op = operand(&mut ops, &mut op_of, init);
                    op_of.insert(h, op);
                    continue;
                }
                match state_buffers[i as usize] {
                    Some(buffer) => Op::Load(buffer),
                    None => continue,
                }
            }
            Node::Input(..) | Node::Const(_) | Node::Bool(_) | Node::Reduce(..) => continue,
            // Rules with these are not planned (`unsupported`).
            Node::Gram(..) | Node::MatMul(..) | Node::Transpose(_) => continue,
            Node::Unary(op, a) => Op::Unary(op, operand(&mut ops, &mut op_of, a)),
            Node::Binary(op, a, b) => {
                let a = operand(&mut ops, &mut op_of, a);
                Op::Binary(op, a, operand(&mut ops, &mut op_of, b))
            }
            Node::Select(c, a, b) => {
                let c = operand(&mut ops, &mut op_of, c);
                let a = operand(&mut ops, &mut op_of, a);
                Op::Select(c, a, operand(&mut ops, &mut op_of, b))
            }
            Node::Lerp(a, b, w) => {
                let a = operand(&mut ops, &mut op_of, a);
                let b = operand(&mut ops, &mut op_of, b);
                Op::Lerp(a, b, operand(&mut ops, &mut op_of, w))
            }
        };
        let index = emit(&mut ops, op);
        op_of.insert(h, index);
    }
    let mut value_of = |ops: &mut Vec<Op>, h: Handle| -> u32 {
        let h = resolve(h);
        match op_of.get(&h) {
            Some(&op) => op,
            None => scalar(ops, &mut op_of, h),
        }
    };
    let accumulators: Vec<(ReduceOp, u32)> = accumulate
        .iter()
        .map(|&r| match *graph.node(r) {
            Node::Reduce(op, _, arg) => (op, value_of(&mut ops, arg)),
            _ => (ReduceOp::Sum, 0),
        })
        .collect();
    let mut kernel_stores = Vec::new();
    for &(buffer, h) in stores {
        let op = value_of(&mut ops, h);
        // An output equal to its own unchanged input needs no store.
        if ops[op as usize] != Op::Load(buffer) {
            kernel_stores.push((buffer, op));
        }
    }
    let scalars = scalar_args.len() as u32;
    Pass {
        kernel: Kernel {
            ops,
            stores: kernel_stores,
            accumulators,
            buffers,
            scalars,
            storage: vec![Storage::F32; buffers as usize],
            rounding: Rounding::NearestEven,
        },
        scalar_args,
        reductions: accumulate.to_vec(),
    }
}

fn handle(index: usize) -> Handle {
    Handle::from_index(index)
}

impl Plan {
    /// The plan as `optc show --plan` prints it: per pass, the buffers it
    /// loads and stores (by name), its operations, scalar arguments and
    /// reductions, and the bytes it moves per element.
    pub fn describe(&self, rule: &Rule) -> String {
        let name = |buffer: u32| -> String {
            match buffer {
                PARAM_BUFFER => "p".to_string(),
                GRAD_BUFFER => "g".to_string(),
                b => self
                    .state_buffers
                    .iter()
                    .position(|&s| s == Some(b))
                    .map_or_else(|| format!("#{b}"), |slot| rule.states[slot].name.clone()),
            }
        };
        let names = |buffers: &[u32]| {
            buffers
                .iter()
                .map(|&b| name(b))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::new();
        let filled: Vec<String> = rule
            .states
            .iter()
            .zip(&self.fill)
            .filter_map(|(slot, value)| value.map(|v| format!("{} = {v}", slot.name)))
            .collect();
        if !filled.is_empty() {
            out.push_str(&format!("buffers filled first: {}\n", filled.join(", ")));
        }
        for (index, pass) in self.passes.iter().enumerate() {
            let k = &pass.kernel;
            let stores: Vec<u32> = k.stores.iter().map(|s| s.0).collect();
            out.push_str(&format!(
                "pass {index}: loads [{}], stores [{}]; {} ops, {} scalar args; {} B/element\n",
                names(&k.loaded_buffers()),
                names(&stores),
                k.ops.len(),
                k.scalars,
                k.bytes_per_element()
            ));
            for (&r, &(op, _)) in pass.reductions.iter().zip(&k.accumulators) {
                let scope = match reduction_scope(rule, r) {
                    Some((_, Scope::Group)) => "over the group",
                    _ => "per tensor",
                };
                out.push_str(&format!(
                    "  accumulates {r}: {} {scope}\n",
                    format!("{op:?}").to_lowercase()
                ));
            }
        }
        let total: usize = self
            .passes
            .iter()
            .map(|p| p.kernel.bytes_per_element())
            .sum();
        out.push_str(&format!(
            "total: {} pass(es), {total} B/element\n",
            self.passes.len()
        ));
        out
    }
}

/// Scope of a reduction node, for combining its partial results.
pub fn reduction_scope(rule: &Rule, reduction: Handle) -> Option<(ReduceOp, Scope)> {
    match rule.graph.node(reduction) {
        Node::Reduce(op, scope, _) => Some((*op, *scope)),
        _ => None,
    }
}
