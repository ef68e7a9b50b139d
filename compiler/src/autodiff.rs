//! Reverse-mode symbolic differentiation of IR graphs.
//!
//! Hypergradient descent needs `d p_t / d learning_rate`, meta-learning and
//! implicit differentiation need the adjoint of a whole step (the cotangents
//! of `p`, `g` and the old state given those of the new parameters and
//! state). [`vjp`] computes them as *new nodes of the same graph*, not as a
//! tape: the derivative of a rule is itself an IR program, so it runs through
//! every backend the rule runs through (interpreter, fused kernels), in f32
//! or f64, and hash-consing shares its subexpressions with the rule's own.
//!
//! The derivative of every operation is one line of [`DERIVATIVE_RULES`]
//! (written as s-expressions over the node's operands, its value `y` and its
//! cotangent `ct`); the conventions at non-smooth points (ties of `max`,
//! `abs` at 0, `sqrt` at 0, ...) are those of the manual's "Differentiation"
//! section. Paths whose cotangent is identically zero add no nodes. The mask
//! of a `select` (and of the operand a `min`/`max` chose) is applied after
//! the masked branch's own derivatives, so a NaN in the branch not taken
//! stays out of the derivative, as it stays out of the value.
//!
//! Broadcasting is undone where it happened: an operand of a smaller shape
//! than the node that reads it receives the sum of the node's cotangent over
//! the elements (or tensors) it was broadcast to. A returned cotangent has
//! at most the shape of its input and broadcasts to it: seeded with `v`, the
//! cotangent of `g` in `p -= learning_rate * sum(g)` is the tensor-shaped
//! `-learning_rate * sum(v)`.
//!
//! State inputs are leaves: the graph is differentiated as a step after the
//! first, whose old state is an input (on the first step a slot's value is
//! its initialiser; substitute it first to differentiate through it).
//!
//! # Examples
//!
//! The hypergradient of SGD: `<v, d p_t / d learning_rate>` for a cotangent
//! `v` (hypergradient descent uses the gradient at `p_t`; here `v = 1`, which
//! sums the derivative over all elements). The result is read out of the
//! interpreter through an extra state slot that stores it.
//!
//! ```
//! use optc_compiler::autodiff::vjp;
//! use optc_compiler::interpret::{self, StepInputs, Value};
//! use optc_compiler::ir::{Input, Node, Shape, StateSlot, Type};
//! use optc_compiler::{Origin, Program};
//!
//! let mut program = Program::new();
//! let source = b"optimizer sgd(learning_rate = 0.1) { p -= learning_rate * g; }";
//! program.add_source("sgd.opt", source, Origin::User).unwrap();
//! let mut rule = program.compile("sgd").unwrap();
//!
//! let learning_rate = rule.graph.add(Node::Input(Input::Hyper(0), Type::GROUP));
//! let v = rule.graph.add(Node::constant(1.0));
//! let d_learning_rate = vjp(&mut rule.graph, &[(rule.param_out, v)], &[learning_rate])[0];
//!
//! rule.states.push(StateSlot { name: "d_lr".into(), shape: Shape::Group, init: d_learning_rate });
//! rule.state_out.push(d_learning_rate);
//! let inputs = StepInputs {
//!     params: &[&[1.0f64, 2.0]],
//!     grads: &[&[0.5, -3.0]],
//!     step: 1,
//!     hypers: &[0.1],
//!     state: None,
//!     views: None,
//! };
//! let out = interpret::step(&rule, &inputs).unwrap();
//! // d p_t / d learning_rate = -g, summed over the elements.
//! assert_eq!(out.state[0], Value::Group(-(0.5 - 3.0)));
//! ```
//!
//! The adjoint of a step: seed the new parameters (and every new state) with
//! cotangents and ask for the old `p`, `g` and state. Values from outside the
//! graph, like the cotangents here, come in as extra state slots.
//!
//! ```
//! use optc_compiler::autodiff::vjp;
//! use optc_compiler::interpret::{self, StepInputs, Value};
//! use optc_compiler::ir::{Input, Node, Shape, StateSlot, Type};
//! use optc_compiler::{Origin, Program};
//!
//! let mut program = Program::new();
//! let source = b"optimizer sgd(learning_rate = 0.1) { p -= learning_rate * g; }";
//! program.add_source("sgd.opt", source, Origin::User).unwrap();
//! let mut rule = program.compile("sgd").unwrap();
//!
//! // The cotangent of the new parameters, an input through state slot 0.
//! let zero = rule.graph.add(Node::constant(0.0));
//! rule.states.push(StateSlot { name: "v".into(), shape: Shape::Elem, init: zero });
//! let v = rule.graph.add(Node::Input(Input::State(0), Type::ELEM));
//! rule.state_out.push(v);
//!
//! let p = rule.graph.add(Node::Input(Input::Param, Type::ELEM));
//! let g = rule.graph.add(Node::Input(Input::Grad, Type::ELEM));
//! let adjoint = vjp(&mut rule.graph, &[(rule.param_out, v)], &[p, g]);
//! for (name, &cotangent) in ["dp", "dg"].iter().zip(&adjoint) {
//!     rule.states.push(StateSlot { name: name.to_string(), shape: Shape::Elem, init: cotangent });
//!     rule.state_out.push(cotangent);
//! }
//! let state = [Value::Elem(vec![vec![2.0f64]]), Value::Elem(vec![vec![0.0]]), Value::Elem(vec![vec![0.0]])];
//! let inputs = StepInputs {
//!     params: &[&[1.0f64]],
//!     grads: &[&[0.5]],
//!     step: 2,
//!     hypers: &[0.1],
//!     state: Some(&state),
//!     views: None,
//! };
//! let out = interpret::step(&rule, &inputs).unwrap();
//! assert_eq!(out.state[1], Value::Elem(vec![vec![2.0]]), "d p_t / d p = 1");
//! assert_eq!(out.state[2], Value::Elem(vec![vec![-0.1 * 2.0]]), "d p_t / d g = -lr");
//! ```

use crate::interpret;
use crate::ir::{
    BinaryOp, Graph, Handle, Input, Kind, Node, ReduceOp, Scope, Shape, Type, UnaryOp,
};

/// A value under construction. `Zero` is a structural zero: a path that is
/// identically zero, which adds no nodes and is skipped.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Term {
    Zero,
    Node(Handle),
}

/// The cotangent of a node: `term` where the bool node `guard` holds, else 0.
///
/// A guard comes from a `select` (or the `min`/`max` that chose an operand)
/// and is applied as late as possible, after the derivatives of the branch
/// it guards: so, as with the forward `select`, a NaN or infinity in the
/// branch not taken (`sqrt` of a negative there) does not reach the result.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cotangent {
    term: Term,
    guard: Option<Handle>,
}

impl Cotangent {
    const ZERO: Cotangent = Cotangent {
        term: Term::Zero,
        guard: None,
    };

    fn plain(term: Term) -> Cotangent {
        Cotangent { term, guard: None }
    }
}

/// Adds the cotangent of each node of `wrt` to `graph`, given cotangents for
/// some output nodes: `seeds` pairs an output with its cotangent (a node of
/// the output's shape or smaller, which broadcasts; seeding one output twice
/// adds the two). The result, one node per `wrt` entry in order, is
/// `d <seeds, outputs> / d node`: for an input, its derivative; for an
/// intermediate node, its adjoint (the derivative through that node's value,
/// with its own operands held fixed). A node the seeded outputs do not depend
/// on gets the constant 0, as does a bool node: comparisons and `select`
/// conditions are locally constant. Handles must belong to `graph`.
pub fn vjp(graph: &mut Graph, seeds: &[(Handle, Handle)], wrt: &[Handle]) -> Vec<Handle> {
    let original = graph.len();
    let depends = depends_on(graph, wrt);
    let mut emit = Emit { graph };
    let mut cotangents = vec![Cotangent::ZERO; original];
    for &(output, seed) in seeds {
        if !depends[output.index()] {
            continue;
        }
        let seed = emit.float(seed);
        let seed_shape = emit.graph.ty(seed).shape;
        let output_shape = emit.graph.ty(output).shape;
        let seed = Cotangent::plain(emit.term(seed));
        let reader = seed_shape.join(output_shape).unwrap_or(output_shape);
        let seed = emit.unbroadcast(seed, reader, output_shape);
        cotangents[output.index()] = emit.accumulate(cotangents[output.index()], seed);
    }
    for index in (0..original).rev() {
        let Cotangent { term: ct, guard } = cotangents[index];
        if ct == Term::Zero {
            continue;
        }
        let y = Handle::from_index(index);
        let node = *emit.graph.node(y);
        // A scalar cotangent of a gram matrix is the matrix filled with it,
        // which is symmetric: `transpose` makes it one for the products.
        let ct = match ct {
            Term::Node(c)
                if emit.graph.ty(y).shape == Shape::Gram && emit.graph.ty(c).shape.is_scalar() =>
            {
                emit.transpose(ct)
            }
            _ => ct,
        };
        let children = node.children();
        let wanted: Vec<bool> = children
            .iter()
            .zip(differentiable(node))
            .map(|(c, d)| d && depends[c.index()])
            .collect();
        if !wanted.contains(&true) {
            continue;
        }
        // A reduction reads its operand once per element, broadcast (a
        // gram matrix's once per entry); matrix products read gram matrices
        // as they are and other operands per element.
        let node_shape = emit.graph.ty(y).shape;
        let reader_shape = |child_shape: Shape| match node {
            Node::Reduce(..) | Node::Gram(..) | Node::MatMul(..) | Node::Transpose(_) => {
                if child_shape == Shape::Gram {
                    Shape::Gram
                } else {
                    Shape::Elem
                }
            }
            _ => node_shape,
        };
        let partials = partials(
            &mut At {
                emit: &mut emit,
                y,
                ct,
            },
            node,
            &wanted,
        );
        for (child, partial) in children.into_iter().zip(partials) {
            let partial = emit.guard(partial, guard);
            let child_shape = emit.graph.ty(child).shape;
            let contribution = emit.unbroadcast(partial, reader_shape(child_shape), child_shape);
            cotangents[child.index()] = emit.accumulate(cotangents[child.index()], contribution);
        }
    }
    wrt.iter()
        .map(|&w| {
            let cotangent = emit.materialize(cotangents[w.index()]);
            emit.handle(cotangent)
        })
        .collect()
}

/// Forward mode, one node at a time: adds to `graph` the tangent of `node`
/// given a tangent for each of its operands (in [`Node::children`] order;
/// `None` is zero) and returns it (`None` where it is zero). Every partial of
/// [`DERIVATIVE_RULES`] is its operand's local derivative times `ct`, so the
/// tangent is the sum of the partials with `ct` set to each operand's
/// tangent, summed over the reduction's scope for a reduction (a max/min
/// reduction gets the mean tangent of its tied elements); guards become
/// `select`s. Operand tangents broadcast as their operands do.
pub fn tangent(
    graph: &mut Graph,
    node: Handle,
    operand_tangents: &[Option<Handle>],
) -> Option<Handle> {
    let op = *graph.node(node);
    if graph.ty(node).kind != Kind::Float {
        return None;
    }
    let mut emit = Emit { graph };
    if let Some(total) = matrix_tangent(&mut emit, op, operand_tangents) {
        return match total {
            Term::Zero => None,
            Term::Node(h) => Some(h),
        };
    }
    let mut total = Term::Zero;
    for (i, (tangent, differentiable)) in
        operand_tangents.iter().zip(differentiable(op)).enumerate()
    {
        let Some(tangent) = tangent.filter(|_| differentiable) else {
            continue;
        };
        let wanted: Vec<bool> = (0..operand_tangents.len()).map(|j| j == i).collect();
        let ct = emit.term(tangent);
        let partial = partials(
            &mut At {
                emit: &mut emit,
                y: node,
                ct,
            },
            op,
            &wanted,
        )[i];
        let partial = emit.materialize(partial);
        total = emit.binary(BinaryOp::Add, total, partial);
    }
    if let Node::Reduce(_, scope, _) = op {
        total = emit.sum(scope, total);
    }
    match total {
        Term::Zero => None,
        Term::Node(h) => Some(h),
    }
}

/// Which nodes depend on a node of `wrt` through float values and operations
/// whose derivative is not identically zero (cotangents flow only along
/// those paths: none through `sign`, `floor` or comparisons).
fn depends_on(graph: &Graph, wrt: &[Handle]) -> Vec<bool> {
    let is_float = |h: Handle| graph.ty(h).kind == Kind::Float;
    let mut depends = vec![false; graph.len()];
    for &w in wrt {
        depends[w.index()] = is_float(w);
    }
    for (h, node) in graph.iter() {
        let children = node.children();
        let through = children.iter().zip(differentiable(*node));
        depends[h.index()] |=
            is_float(h) && through.into_iter().any(|(c, d)| d && depends[c.index()]);
    }
    depends
}

/// Adds cotangent nodes to the graph, skipping structural zeros and folding
/// arithmetic on constants (with the interpreter's f64 semantics, which is
/// how group-shaped nodes are computed anyway).
struct Emit<'g> {
    graph: &'g mut Graph,
}

impl Emit<'_> {
    /// A node as a term: the constant 0 is the structural zero.
    fn term(&self, h: Handle) -> Term {
        match self.constant_value(h) {
            Some(0.0) => Term::Zero,
            _ => Term::Node(h),
        }
    }

    fn constant_value(&self, h: Handle) -> Option<f64> {
        match *self.graph.node(h) {
            Node::Const(bits) => Some(f64::from_bits(bits)),
            _ => None,
        }
    }

    fn constant(&mut self, value: f64) -> Term {
        let h = self.graph.add(Node::constant(value));
        self.term(h)
    }

    fn handle(&mut self, term: Term) -> Handle {
        match term {
            Term::Zero => self.graph.add(Node::constant(0.0)),
            Term::Node(h) => h,
        }
    }

    /// A cotangent given as a bool reads as 1 or 0.
    fn float(&mut self, h: Handle) -> Handle {
        if self.graph.ty(h).kind == Kind::Float {
            return h;
        }
        let one = self.graph.add(Node::constant(1.0));
        let zero = self.graph.add(Node::constant(0.0));
        self.graph.add(Node::Select(h, one, zero))
    }

    fn is_one(&self, term: Term) -> bool {
        matches!(term, Term::Node(h) if self.constant_value(h) == Some(1.0))
    }

    fn unary(&mut self, op: UnaryOp, x: Term) -> Term {
        if op == UnaryOp::Neg && x == Term::Zero {
            return Term::Zero;
        }
        let x = self.handle(x);
        match self.constant_value(x) {
            Some(x) if op != UnaryOp::Not => self.constant(interpret::unary(op, x)),
            _ => self.add(Node::Unary(op, x)),
        }
    }

    fn binary(&mut self, op: BinaryOp, x: Term, y: Term) -> Term {
        use BinaryOp::{Add, Div, Mul, Sub};
        match (op, x, y) {
            (Add, Term::Zero, t) | (Add | Sub, t, Term::Zero) => return t,
            (Sub, Term::Zero, t) => return self.unary(UnaryOp::Neg, t),
            (Mul, Term::Zero, _) | (Mul, _, Term::Zero) | (Div, Term::Zero, _) => {
                return Term::Zero
            }
            (Mul, one, t) | (Mul | Div, t, one) if self.is_one(one) => return t,
            _ => {}
        }
        let (x, y) = (self.handle(x), self.handle(y));
        let arithmetic = !op.is_comparison() && !op.is_logical();
        match (self.constant_value(x), self.constant_value(y)) {
            (Some(x), Some(y)) if arithmetic => self.constant(interpret::binary(op, x, y)),
            _ => self.add(Node::Binary(op, x, y)),
        }
    }

    fn select(&mut self, cond: Term, x: Term, y: Term) -> Term {
        if x == y {
            return x;
        }
        let cond = self.handle(cond);
        let (x, y) = (self.handle(x), self.handle(y));
        self.add(Node::Select(cond, x, y))
    }

    /// A matrix node of two terms (zero if either is).
    fn matrix(&mut self, make: fn(Handle, Handle) -> Node, x: Term, y: Term) -> Term {
        match (x, y) {
            (Term::Node(x), Term::Node(y)) => self.add(make(x, y)),
            _ => Term::Zero,
        }
    }

    fn transpose(&mut self, x: Term) -> Term {
        match x {
            Term::Zero => Term::Zero,
            Term::Node(x) => self.add(Node::Transpose(x)),
        }
    }

    /// `x y^T` in the wide orientation: `matmul(x, transpose(y))` for a
    /// gram matrix `y`, `gram(x, y)` for a per-element one.
    fn times_transposed(&mut self, x: Term, y: Term) -> Term {
        match y {
            Term::Node(h) if self.graph.ty(h).shape == Shape::Gram => {
                let yt = self.transpose(y);
                self.matrix(Node::MatMul, x, yt)
            }
            _ => self.matrix(Node::Gram, x, y),
        }
    }

    fn sum(&mut self, scope: Scope, x: Term) -> Term {
        match x {
            Term::Zero => Term::Zero,
            Term::Node(x) => self.add(Node::Reduce(ReduceOp::Sum, scope, x)),
        }
    }

    fn add(&mut self, node: Node) -> Term {
        let h = self.graph.add(node);
        self.term(h)
    }

    /// `x` where `cond` holds, else 0 (applied later: see [`Cotangent`]).
    fn when(&mut self, cond: Term, x: Term) -> Cotangent {
        let guard = self.handle(cond);
        Cotangent {
            term: x,
            guard: Some(guard),
        }
    }

    /// `x` where `cond` does not hold, else 0.
    fn unless(&mut self, cond: Term, x: Term) -> Cotangent {
        let cond = self.unary(UnaryOp::Not, cond);
        self.when(cond, x)
    }

    /// `cotangent`, further guarded by `guard`.
    fn guard(&mut self, cotangent: Cotangent, guard: Option<Handle>) -> Cotangent {
        let guard = match (cotangent.guard, guard) {
            (Some(inner), Some(outer)) => {
                Some(self.graph.add(Node::Binary(BinaryOp::And, outer, inner)))
            }
            (inner, outer) => inner.or(outer),
        };
        Cotangent { guard, ..cotangent }
    }

    /// Applies the guard: a `select`.
    fn materialize(&mut self, cotangent: Cotangent) -> Term {
        match cotangent.guard {
            None => cotangent.term,
            Some(guard) => self.select(Term::Node(guard), cotangent.term, Term::Zero),
        }
    }

    /// The sum of two cotangents of one node. Under one guard they stay
    /// guarded; under complementary guards (the two branches of a `select`)
    /// they become one `select`.
    fn accumulate(&mut self, a: Cotangent, b: Cotangent) -> Cotangent {
        let complement =
            |emit: &Self, x: Handle, y: Handle| *emit.graph.node(y) == Node::Unary(UnaryOp::Not, x);
        match (a.guard, b.guard) {
            _ if a.term == Term::Zero => b,
            _ if b.term == Term::Zero => a,
            (x, y) if x == y => Cotangent {
                term: self.binary(BinaryOp::Add, a.term, b.term),
                guard: x,
            },
            (Some(x), Some(y)) if complement(self, x, y) => {
                Cotangent::plain(self.select(Term::Node(x), a.term, b.term))
            }
            (Some(x), Some(y)) if complement(self, y, x) => {
                Cotangent::plain(self.select(Term::Node(y), b.term, a.term))
            }
            _ => {
                let (a, b) = (self.materialize(a), self.materialize(b));
                Cotangent::plain(self.binary(BinaryOp::Add, a, b))
            }
        }
    }

    /// The cotangent of an operand of shape `to` read by a node of shape
    /// `from` (or an element-wise reduction): the sum of `ct` over the places
    /// the operand was broadcast to. A guard that is constant over those
    /// places stays outside the sum. The sum goes through the elements, each
    /// place of `from` shared evenly by the elements it spans (a row's
    /// `ct / ncols` each, a tensor's `ct / numel`), so tensors without
    /// elements contribute nothing.
    fn unbroadcast(&mut self, cotangent: Cotangent, from: Shape, to: Shape) -> Cotangent {
        if from.fits(to) {
            return cotangent;
        }
        let cotangent = match cotangent.guard {
            Some(guard) if !self.graph.ty(guard).shape.fits(to) => {
                Cotangent::plain(self.materialize(cotangent))
            }
            _ => cotangent,
        };
        let span = match from {
            Shape::Rows => Some(Input::Cols),
            Shape::Cols => Some(Input::Rows),
            Shape::Tensor => Some(Input::Numel),
            // A gram matrix's reductions run over its entries.
            Shape::Group | Shape::Elem | Shape::Gram => None,
        };
        let per_element = match span {
            Some(count) => {
                let count = self.graph.add(Node::Input(count, Type::TENSOR));
                self.binary(BinaryOp::Div, cotangent.term, Term::Node(count))
            }
            None => cotangent.term,
        };
        let scope = match to {
            Shape::Rows => Scope::Rows,
            Shape::Cols => Scope::Cols,
            Shape::Tensor => Scope::Tensor,
            Shape::Group | Shape::Elem | Shape::Gram => Scope::Group,
        };
        Cotangent {
            term: self.sum(scope, per_element),
            ..cotangent
        }
    }
}

/// The tangent of a matrix product, gram matrix or transpose, by the product
/// rule (they are bilinear or linear, not elementwise, so the partials of
/// the table, which are transposed maps, do not give it); `None` for other
/// nodes.
fn matrix_tangent(emit: &mut Emit<'_>, op: Node, tangents: &[Option<Handle>]) -> Option<Term> {
    let tangent = |k: usize| {
        tangents
            .get(k)
            .copied()
            .flatten()
            .map_or(Term::Zero, Term::Node)
    };
    let bilinear = |emit: &mut Emit<'_>, make: fn(Handle, Handle) -> Node, a: Handle, b: Handle| {
        let left = emit.matrix(make, tangent(0), Term::Node(b));
        let right = emit.matrix(make, Term::Node(a), tangent(1));
        emit.binary(BinaryOp::Add, left, right)
    };
    Some(match op {
        Node::Gram(a, b) => bilinear(emit, Node::Gram, a, b),
        Node::MatMul(a, b) => bilinear(emit, Node::MatMul, a, b),
        Node::Transpose(_) => emit.transpose(tangent(0)),
        _ => return None,
    })
}

/// What a derivative rule sees: the node `y` (its value) and its cotangent
/// `ct` (without its guard, which the caller applies to every partial).
struct At<'a, 'g> {
    emit: &'a mut Emit<'g>,
    y: Handle,
    ct: Term,
}

/// One term of a derivative rule, from its s-expression: `ct`, `y`, an
/// operand bound by the rule's pattern, `zero`, `half_pi`, a number, or an
/// operation on terms.
macro_rules! term {
    ($at:ident; ct) => { $at.ct };
    ($at:ident; y) => { Term::Node($at.y) };
    ($at:ident; zero) => { Term::Zero };
    ($at:ident; half_pi) => { $at.emit.constant(std::f64::consts::FRAC_PI_2) };
    ($at:ident; $operand:ident) => { $at.emit.term($operand) };
    ($at:ident; $number:literal) => { $at.emit.constant($number as f64) };
    ($at:ident; (+ $x:tt $y:tt)) => { term!(@binary $at, Add, $x, $y) };
    ($at:ident; (- $x:tt $y:tt)) => { term!(@binary $at, Sub, $x, $y) };
    ($at:ident; (* $x:tt $y:tt)) => { term!(@binary $at, Mul, $x, $y) };
    ($at:ident; (/ $x:tt $y:tt)) => { term!(@binary $at, Div, $x, $y) };
    ($at:ident; (pow $x:tt $y:tt)) => { term!(@binary $at, Pow, $x, $y) };
    ($at:ident; (== $x:tt $y:tt)) => { term!(@binary $at, Eq, $x, $y) };
    ($at:ident; (< $x:tt $y:tt)) => { term!(@binary $at, Lt, $x, $y) };
    ($at:ident; (&& $x:tt $y:tt)) => { term!(@binary $at, And, $x, $y) };
    ($at:ident; (neg $x:tt)) => { term!(@unary $at, Neg, $x) };
    ($at:ident; (sign $x:tt)) => { term!(@unary $at, Sign, $x) };
    ($at:ident; (log $x:tt)) => { term!(@unary $at, Log, $x) };
    ($at:ident; (cos $x:tt)) => { term!(@unary $at, Cos, $x) };
    ($at:ident; (select $c:tt $x:tt $y:tt)) => {{
        let c = term!($at; $c);
        let x = term!($at; $x);
        let y = term!($at; $y);
        $at.emit.select(c, x, y)
    }};
    ($at:ident; (gram $x:tt $y:tt)) => { term!(@matrix $at, Gram, $x, $y) };
    ($at:ident; (matmul $x:tt $y:tt)) => { term!(@matrix $at, MatMul, $x, $y) };
    ($at:ident; (transpose $x:tt)) => {{
        let x = term!($at; $x);
        $at.emit.transpose(x)
    }};
    ($at:ident; (times_transposed $x:tt $y:tt)) => {{
        let x = term!($at; $x);
        let y = term!($at; $y);
        $at.emit.times_transposed(x, y)
    }};
    (@matrix $at:ident, $node:ident, $x:tt, $y:tt) => {{
        let x = term!($at; $x);
        let y = term!($at; $y);
        $at.emit.matrix(Node::$node, x, y)
    }};
    ($at:ident; (sum $scope:ident $x:tt)) => {{
        let x = term!($at; $x);
        $at.emit.sum($scope, x)
    }};
    (@unary $at:ident, $op:ident, $x:tt) => {{
        let x = term!($at; $x);
        $at.emit.unary(UnaryOp::$op, x)
    }};
    (@binary $at:ident, $op:ident, $x:tt, $y:tt) => {{
        let x = term!($at; $x);
        let y = term!($at; $y);
        $at.emit.binary(BinaryOp::$op, x, y)
    }};
}

/// One partial of a derivative rule: a term, or a term guarded by a
/// condition, `(when c x)` or `(unless c x)` (see [`Cotangent`]).
macro_rules! partial {
    ($at:ident; (when $c:tt $x:tt)) => {{
        let c = term!($at; $c);
        let x = term!($at; $x);
        $at.emit.when(c, x)
    }};
    ($at:ident; (unless $c:tt $x:tt)) => {{
        let c = term!($at; $c);
        let x = term!($at; $x);
        $at.emit.unless(c, x)
    }};
    ($at:ident; $x:tt) => { Cotangent::plain(term!($at; $x)) };
}

/// Whether a partial of the table can be nonzero (it is not `zero`).
macro_rules! nonzero {
    (zero) => {
        false
    };
    ($partial:tt) => {
        true
    };
}

/// The derivative table: one line per operation, `name: node pattern =>
/// [cotangent of each operand, in order]`. Generates [`DERIVATIVE_RULES`]
/// (the lines as text), `partials` and `differentiable`, exhaustive matches,
/// so an operation added to the IR without a line here does not compile.
macro_rules! derivatives {
    ($($name:literal: $pattern:pat => [$($partial:tt),*];)*) => {
        /// Every derivative rule as `(name, "pattern => [partials]")`: the
        /// cotangent of each operand of a node matching the pattern, as an
        /// s-expression over the operands, the node's value `y` and its
        /// cotangent `ct`. Listed in the manual ("Differentiation").
        pub const DERIVATIVE_RULES: &[(&str, &str)] = &[
            $(($name, stringify!($pattern => [$($partial),*]))),*
        ];

        /// For each operand of `node`, whether its partial can be nonzero.
        #[allow(unused_variables)]
        fn differentiable(node: Node) -> Vec<bool> {
            match node {
                $($pattern => vec![$(nonzero!($partial)),*],)*
            }
        }

        /// The contribution of `at`'s cotangent to each operand of `node`
        /// (in [`Node::children`] order); only those `wanted` are built.
        fn partials(at: &mut At<'_, '_>, node: Node, wanted: &[bool]) -> Vec<Cotangent> {
            let mut wanted = wanted.iter().copied();
            match node {
                $($pattern => vec![$(
                    if wanted.next() == Some(true) {
                        partial!(at; $partial)
                    } else {
                        Cotangent::ZERO
                    }
                ),*],)*
            }
        }
    };
}

// Short names for the patterns of the table.
use BinaryOp as B;
use Node::{Binary, Bool, Const, Gram, Lerp, MatMul, Reduce, Select, Transpose, Unary};
use ReduceOp as R;
use UnaryOp as U;

derivatives! {
    "neg": Unary(U::Neg, _) => [(neg ct)];
    "abs": Unary(U::Abs, a) => [(* ct (sign a))];
    "sign": Unary(U::Sign, _) => [zero];
    "sqrt": Unary(U::Sqrt, _) => [(select (== y 0) zero (/ ct (* 2 y)))];
    "rsqrt": Unary(U::Rsqrt, _) => [(* ct (* (neg 0.5) (* y (* y y))))];
    "exp": Unary(U::Exp, _) => [(* ct y)];
    "log": Unary(U::Log, a) => [(/ ct a)];
    "tanh": Unary(U::Tanh, _) => [(* ct (- 1 (* y y)))];
    "sigmoid": Unary(U::Sigmoid, _) => [(* ct (* y (- 1 y)))];
    "cos": Unary(U::Cos, a) => [(* ct (cos (+ a half_pi)))];
    "cbrt": Unary(U::Cbrt, _) => [(select (== y 0) zero (/ ct (* 3 (* y y))))];
    "floor": Unary(U::Floor, _) => [zero];
    "not": Unary(U::Not, _) => [zero];
    "add": Binary(B::Add, _, _) => [ct, ct];
    "sub": Binary(B::Sub, _, _) => [ct, (neg ct)];
    "mul": Binary(B::Mul, a, b) => [(* ct b), (* ct a)];
    "div": Binary(B::Div, _, b) => [(/ ct b), (neg (* (/ ct b) y))];
    "pow": Binary(B::Pow, a, b) => [
        (* ct (select (&& (== a 0) (< b 1)) zero (* b (pow a (- b 1))))),
        (* ct (select (== a 0) zero (* y (log a))))
    ];
    "min": Binary(B::Min, a, _) => [(when (== y a) ct), (unless (== y a) ct)];
    "max": Binary(B::Max, a, _) => [(when (== y a) ct), (unless (== y a) ct)];
    "compare": Binary(B::Eq | B::Ne | B::Lt | B::Le | B::Gt | B::Ge, _, _) => [zero, zero];
    "logic": Binary(B::And | B::Or, _, _) => [zero, zero];
    "select": Select(c, _, _) => [zero, (when c ct), (unless c ct)];
    "lerp": Lerp(a, b, w) => [(* ct (- 1 w)), (* ct w), (* ct (- b a))];
    "bf16": Unary(U::Bf16, _) => [ct];
    "sum": Reduce(R::Sum, _, _) => [ct];
    "max/min reduction": Reduce(R::Max | R::Min, scope, a) => [
        (when (== a y) (/ ct (sum scope (select (== a y) 1 0))))
    ];
    "gram": Gram(a, b) => [(matmul ct b), (matmul (transpose ct) a)];
    "matmul": MatMul(a, b) => [(times_transposed ct b), (matmul (transpose a) ct)];
    "transpose": Transpose(_) => [(transpose ct)];
    "leaf": Const(_) | Bool(_) | Node::Input(..) => [];
}
