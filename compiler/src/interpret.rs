//! The reference interpreter: the semantics oracle for every backend.
//!
//! It evaluates a rule's graph node by node, in arena order, for all tensors
//! of the step at once ("lockstep"), keeping every intermediate value. That is
//! slow and simple on purpose: each operation is defined exactly once (in
//! [`unary`], [`binary`], [`select`] and [`lerp`]), for f64 scalars and for
//! elements alike, and reductions are plain in-order f64 sums.

use crate::ir::{
    BinaryOp, Graph, Handle, Input, MatrixView, Node, ReduceOp, Rule, ScalarExpr, Scope, Shape,
    UnaryOp,
};
use crate::kernel::Kernel;

/// Element arithmetic: f32 (what kernels compute) or f64 (checking mode).
pub trait Real: Copy + PartialOrd + std::fmt::Debug + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    fn neg(self) -> Self;
    fn abs(self) -> Self;
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn cos(self) -> Self;
    fn cbrt(self) -> Self;
    fn floor(self) -> Self;
    fn powf(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
    fn max(self, o: Self) -> Self;
    fn is_nan(self) -> bool;
    /// The nearest bfloat16 (ties to even; of its f32 value for an f64).
    fn bf16(self) -> Self {
        let x = self.to_f64() as f32;
        Self::from_f64(f64::from(crate::kernel::bf16::widen(
            crate::kernel::bf16::round_nearest_even(x),
        )))
    }
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn add(self, o: Self) -> Self {
                self + o
            }
            fn sub(self, o: Self) -> Self {
                self - o
            }
            fn mul(self, o: Self) -> Self {
                self * o
            }
            fn div(self, o: Self) -> Self {
                self / o
            }
            fn neg(self) -> Self {
                -self
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            fn cbrt(self) -> Self {
                <$t>::cbrt(self)
            }
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            fn powf(self, o: Self) -> Self {
                <$t>::powf(self, o)
            }
            fn min(self, o: Self) -> Self {
                <$t>::min(self, o)
            }
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
real!(f32);
real!(f64);

fn truth<F: Real>(b: bool) -> F {
    if b {
        F::ONE
    } else {
        F::ZERO
    }
}

fn holds<F: Real>(x: F) -> bool {
    x != F::ZERO
}

/// One unary operation; bools are 1 and 0.
pub fn unary<F: Real>(op: UnaryOp, x: F) -> F {
    match op {
        UnaryOp::Neg => x.neg(),
        UnaryOp::Not => truth(!holds(x)),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => {
            if x > F::ZERO {
                F::ONE
            } else if x < F::ZERO {
                F::ONE.neg()
            } else if x.is_nan() {
                x
            } else {
                F::ZERO
            }
        }
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => F::ONE.div(x.sqrt()),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => F::ONE.div(F::ONE.add(x.neg().exp())),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Cbrt => x.cbrt(),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Bf16 => x.bf16(),
    }
}

/// One binary operation; comparisons and logic give 1 or 0.
pub fn binary<F: Real>(op: BinaryOp, a: F, b: F) -> F {
    match op {
        BinaryOp::Add => a.add(b),
        BinaryOp::Sub => a.sub(b),
        BinaryOp::Mul => a.mul(b),
        BinaryOp::Div => a.div(b),
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Min => a.min(b),
        BinaryOp::Max => a.max(b),
        BinaryOp::Eq => truth(a == b),
        BinaryOp::Ne => truth(a != b),
        BinaryOp::Lt => truth(a < b),
        BinaryOp::Le => truth(a <= b),
        BinaryOp::Gt => truth(a > b),
        BinaryOp::Ge => truth(a >= b),
        BinaryOp::And => truth(holds(a) && holds(b)),
        BinaryOp::Or => truth(holds(a) || holds(b)),
    }
}

pub fn select<F: Real>(cond: F, a: F, b: F) -> F {
    if holds(cond) {
        a
    } else {
        b
    }
}

pub fn lerp<F: Real>(a: F, b: F, w: F) -> F {
    a.add(w.mul(b.sub(a)))
}

/// The value of one node (or one state slot) for all tensors of a step.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<F> {
    Group(f64),
    /// One per tensor.
    Tensor(Vec<f64>),
    /// One vector per tensor, of its rows' values.
    Rows(Vec<Vec<F>>),
    /// One vector per tensor, of its columns' values.
    Cols(Vec<Vec<F>>),
    /// One vector per tensor.
    Elem(Vec<Vec<F>>),
    /// One k x k gram matrix per tensor, row-major.
    Gram(Vec<Vec<F>>),
}

impl<F: Real> Value<F> {
    /// The scalar seen by tensor `i` (group or tensor values only).
    fn scalar(&self, i: usize) -> f64 {
        match self {
            Value::Group(x) => *x,
            Value::Tensor(xs) => xs[i],
            Value::Rows(_) | Value::Cols(_) | Value::Elem(_) | Value::Gram(_) => {
                unreachable_shape()
            }
        }
    }

    /// The value at position `k` of a value of shape `shape` for tensor `i`
    /// (of matrix `view`), broadcasting this value to it: scalars are
    /// rounded to `F`, a row's value spreads along the row and a column's
    /// down the column. Lowering guarantees this value's shape fits `shape`.
    fn at(&self, i: usize, shape: Shape, k: usize, view: MatrixView) -> F {
        match self {
            Value::Group(x) => F::from_f64(*x),
            Value::Tensor(xs) => F::from_f64(xs[i]),
            Value::Rows(xs) if shape == Shape::Elem => xs[i][k / view.cols],
            Value::Cols(xs) if shape == Shape::Elem => xs[i][k % view.cols],
            Value::Rows(xs) | Value::Cols(xs) | Value::Elem(xs) | Value::Gram(xs) => xs[i][k],
        }
    }

    /// A vector per tensor of `shape` (rows, columns or elements).
    pub fn vectors(shape: Shape, xs: Vec<Vec<F>>) -> Value<F> {
        match shape {
            Shape::Rows => Value::Rows(xs),
            Shape::Cols => Value::Cols(xs),
            Shape::Gram => Value::Gram(xs),
            _ => Value::Elem(xs),
        }
    }

    /// This value broadcast to `shape` for tensors of the given views.
    pub fn broadcast(&self, shape: Shape, views: &[MatrixView]) -> Value<F> {
        match shape {
            Shape::Group => self.clone(),
            Shape::Tensor => match self {
                Value::Group(x) => Value::Tensor(vec![*x; views.len()]),
                other => other.clone(),
            },
            Shape::Rows | Shape::Cols | Shape::Elem | Shape::Gram => Value::vectors(
                shape,
                views
                    .iter()
                    .enumerate()
                    .map(|(i, &view)| {
                        (0..view.len(shape))
                            .map(|k| self.at(i, shape, k, view))
                            .collect()
                    })
                    .collect(),
            ),
        }
    }

    pub fn shape(&self) -> Shape {
        match self {
            Value::Group(_) => Shape::Group,
            Value::Tensor(_) => Shape::Tensor,
            Value::Rows(_) => Shape::Rows,
            Value::Cols(_) => Shape::Cols,
            Value::Elem(_) => Shape::Elem,
            Value::Gram(_) => Shape::Gram,
        }
    }

    /// Every number it holds, in order (tensor after tensor), widened to f64.
    pub fn flatten(&self) -> Vec<f64> {
        match self {
            Value::Group(x) => vec![*x],
            Value::Tensor(xs) => xs.clone(),
            Value::Rows(xs) | Value::Cols(xs) | Value::Elem(xs) | Value::Gram(xs) => {
                xs.iter().flatten().map(|x| x.to_f64()).collect()
            }
        }
    }

    /// Whether this value has the shape and lengths of a `shape` value for
    /// tensors of these views.
    pub fn fits(&self, shape: Shape, views: &[MatrixView]) -> bool {
        self.shape() == shape
            && match self {
                Value::Group(_) => true,
                Value::Tensor(xs) => xs.len() == views.len(),
                Value::Rows(xs) | Value::Cols(xs) | Value::Elem(xs) | Value::Gram(xs) => {
                    xs.len() == views.len()
                        && xs
                            .iter()
                            .zip(views)
                            .all(|(x, view)| x.len() == view.len(shape))
                }
            }
    }
}

/// Lowering guarantees that scalar nodes only read scalar operands.
fn unreachable_shape() -> f64 {
    f64::NAN
}

/// What one step reads.
pub struct StepInputs<'a, F> {
    pub params: &'a [&'a [F]],
    pub grads: &'a [&'a [F]],
    /// 1-based step number.
    pub step: u64,
    /// One value per hyperparameter of the rule (bools as 1 or 0).
    pub hypers: &'a [f64],
    /// Each state slot before the step; `None` on the first step.
    pub state: Option<&'a [Value<F>]>,
    /// Each tensor as a matrix (rows and columns of the parameter's shape);
    /// `None`: every tensor is a vector.
    pub views: Option<&'a [MatrixView]>,
}

/// What one step produces.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutputs<F> {
    pub params: Vec<Vec<F>>,
    pub state: Vec<Value<F>>,
}

/// How `group` and `tensor` values are computed: hyperparameter arithmetic,
/// bias corrections and reduction results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scalars {
    /// All in f64, as torch computes them (in Python floats).
    #[default]
    F64,
    /// As optax computes them: values of hyperparameters and constants alone
    /// stay f64 (optax's Python floats), while every value that depends on
    /// the step count, a reduction or tensor or group state is f32 (a jnp
    /// float32 scalar), and so is every operation that meets one: its f64
    /// operands are rounded to f32 and it computes in f32 (`1 - b1^t` is an
    /// f32 power and subtraction, `1 - b1` an f64 one). Reductions still
    /// accumulate in f64 and are rounded once per tensor (and once per group).
    F32,
}

impl Scalars {
    /// For each node of `graph`, whether its group or tensor value is held
    /// in f32 under this mode (see [`Scalars::F32`]).
    pub fn f32_nodes(self, graph: &Graph) -> Vec<bool> {
        let mut f32 = vec![false; graph.len()];
        if self == Scalars::F64 {
            return f32;
        }
        for (h, node) in graph.iter() {
            f32[h.index()] = match node {
                Node::Input(Input::Step | Input::State(_), _) | Node::Reduce(..) => true,
                Node::Input(..) | Node::Const(_) | Node::Bool(_) => false,
                _ => node.children().iter().any(|c| f32[c.index()]),
            };
        }
        f32
    }
}

/// `x` as a node holds it: rounded to f32 where `f32` says so.
pub fn host_keep(f32: bool, x: f64) -> f64 {
    if f32 {
        f64::from(x as f32)
    } else {
        x
    }
}

/// The value of a host arithmetic node (unary, binary, select, lerp), in
/// f32 or f64 as `f32` says, `get` reading each operand.
pub fn host_apply(f32: bool, node: &Node, get: impl Fn(Handle) -> f64) -> f64 {
    if f32 {
        f64::from(apply(node, |h| get(h) as f32))
    } else {
        apply(node, get)
    }
}

/// The value of an arithmetic node in `X`, `get` reading each operand.
pub fn apply<X: Real>(node: &Node, get: impl Fn(Handle) -> X) -> X {
    match *node {
        Node::Unary(op, a) => unary(op, get(a)),
        Node::Binary(op, a, b) => binary(op, get(a), get(b)),
        Node::Select(c, a, b) => select(get(c), get(a), get(b)),
        Node::Lerp(a, b, w) => lerp(get(a), get(b), get(w)),
        Node::Const(_)
        | Node::Bool(_)
        | Node::Input(..)
        | Node::Reduce(..)
        | Node::Gram(..)
        | Node::MatMul(..)
        | Node::Transpose(_) => X::ZERO,
    }
}

/// Runs one step of `rule`, group and tensor values in f64. The caller
/// guarantees matching lengths (the runtime checks them); a mismatch is
/// reported, never a panic.
pub fn step<F: Real>(rule: &Rule, inputs: &StepInputs<'_, F>) -> Result<StepOutputs<F>, String> {
    step_with(rule, inputs, Scalars::F64)
}

/// [`step`] with group and tensor values computed as `scalars` says.
pub fn step_with<F: Real>(
    rule: &Rule,
    inputs: &StepInputs<'_, F>,
    scalars: Scalars,
) -> Result<StepOutputs<F>, String> {
    let numels: Vec<usize> = inputs.params.iter().map(|p| p.len()).collect();
    let views = match inputs.views {
        Some(views) => views.to_vec(),
        None => MatrixView::vectors(&numels),
    };
    let views_fit =
        views.len() == numels.len() && views.iter().zip(&numels).all(|(v, &n)| v.numel() == n);
    if !views_fit {
        return Err("tensor shapes do not match the parameters' lengths".into());
    }
    let grads_fit = inputs.grads.len() == numels.len()
        && inputs.grads.iter().zip(&numels).all(|(g, &n)| g.len() == n);
    if !grads_fit {
        return Err("gradients do not match parameters in count or length".into());
    }
    if inputs.hypers.len() != rule.hypers.len() {
        return Err(format!(
            "{} hyperparameter values for {} hyperparameters",
            inputs.hypers.len(),
            rule.hypers.len()
        ));
    }
    if let Some(state) = inputs.state {
        let fits = state.len() == rule.states.len()
            && state
                .iter()
                .zip(&rule.states)
                .all(|(value, slot)| value.fits(slot.shape, &views));
        if !fits {
            return Err("state does not match the rule and parameters".into());
        }
    }
    let values = evaluate_with(&rule.graph, &views, scalars, |input, values| match input {
        Input::Param => Value::Elem(inputs.params.iter().map(|p| p.to_vec()).collect()),
        Input::Grad => Value::Elem(inputs.grads.iter().map(|g| g.to_vec()).collect()),
        Input::Step => Value::Group(inputs.step as f64),
        Input::Hyper(i) => Value::Group(inputs.hypers[i as usize]),
        Input::State(i) => {
            let slot = &rule.states[i as usize];
            match inputs.state {
                Some(state) => state[i as usize].clone(),
                None => values[slot.init.index()].broadcast(slot.shape, &views),
            }
        }
        Input::Numel | Input::Rank | Input::Rows | Input::Cols => Value::Group(f64::NAN),
    });
    let output = |handle: Handle, shape: Shape| values[handle.index()].broadcast(shape, &views);
    let params = match output(rule.param_out, Shape::Elem) {
        Value::Elem(params) => params,
        _ => Vec::new(),
    };
    let state = rule
        .states
        .iter()
        .zip(&rule.state_out)
        .map(|(slot, &out)| output(out, slot.shape))
        .collect();
    Ok(StepOutputs { params, state })
}

/// Evaluates a scalar program at step `step`; `hypers` are the values of the
/// hyperparameters it may read (those declared before the one it defines).
pub fn scalar(expr: &ScalarExpr, step: u64, hypers: &[f64]) -> f64 {
    let values = evaluate::<f64>(&expr.graph, &[], |input, _| match input {
        Input::Step => Value::Group(step as f64),
        Input::Hyper(i) => Value::Group(hypers.get(i as usize).copied().unwrap_or(f64::NAN)),
        _ => Value::Group(f64::NAN),
    });
    values[expr.output.index()].scalar(0)
}

/// Evaluates every node of `graph`, in arena order, for tensors of matrix
/// views `views`; `input` gives each input node's value (it also sees the
/// values computed so far), except the tensors' sizes (`numel`, `rank`,
/// `nrows`, `ncols`), which come from `views`. Rules go through [`step`];
/// graphs that are not rules (objectives) call this directly.
pub fn evaluate<F: Real>(
    graph: &Graph,
    views: &[MatrixView],
    input: impl FnMut(Input, &[Value<F>]) -> Value<F>,
) -> Vec<Value<F>> {
    evaluate_with(graph, views, Scalars::F64, input)
}

/// [`evaluate`] with group and tensor values computed as `scalars` says.
pub fn evaluate_with<F: Real>(
    graph: &Graph,
    views: &[MatrixView],
    scalars: Scalars,
    mut input: impl FnMut(Input, &[Value<F>]) -> Value<F>,
) -> Vec<Value<F>> {
    let f32 = scalars.f32_nodes(graph);
    let mut values: Vec<Value<F>> = Vec::with_capacity(graph.len());
    for (handle, node) in graph.iter() {
        let value = match *node {
            Node::Input(which, _) if which.size_name().is_none() => input(which, &values),
            _ => node_value(graph, handle, &values, views, f32[handle.index()]),
        };
        values.push(value);
    }
    values
}

/// The value of node `handle` of `graph` from its operands' `values` (every
/// node but the inputs a caller provides: parameters, gradients, step,
/// hyperparameters, state), for tensors of matrix views `views`, group and
/// tensor values in f32 where `in_f32` says. The interpreter evaluates
/// every node through it; the staged executor the nodes it keeps on the host.
pub fn node_value<F: Real>(
    graph: &Graph,
    handle: Handle,
    values: &[Value<F>],
    views: &[MatrixView],
    in_f32: bool,
) -> Value<F> {
    let node = graph.node(handle);
    match *node {
        Node::Const(bits) => Value::Group(f64::from_bits(bits)),
        Node::Bool(b) => Value::Group(truth(b)),
        Node::Input(which, _) => Value::Tensor(
            views
                .iter()
                .map(|v| v.size(which).map_or(f64::NAN, |n| n as f64))
                .collect(),
        ),
        Node::Reduce(op, scope, a) => reduce(op, scope, &values[a.index()], views, in_f32),
        Node::Gram(..) | Node::MatMul(..) | Node::Transpose(_) => matrix(node, values, views),
        _ => elementwise(node, graph.ty(handle).shape, values, views, in_f32),
    }
}

/// Evaluates a node whose value at each position depends only on its
/// operands at that position.
fn elementwise<F: Real>(
    node: &Node,
    shape: Shape,
    values: &[Value<F>],
    views: &[MatrixView],
    in_f32: bool,
) -> Value<F> {
    match shape {
        Shape::Group => Value::Group(host_apply(in_f32, node, |h| values[h.index()].scalar(0))),
        Shape::Tensor => Value::Tensor(
            (0..views.len())
                .map(|i| host_apply(in_f32, node, |h| values[h.index()].scalar(i)))
                .collect(),
        ),
        Shape::Rows | Shape::Cols | Shape::Elem | Shape::Gram => Value::vectors(
            shape,
            views
                .iter()
                .enumerate()
                .map(|(i, &view)| {
                    (0..view.len(shape))
                        .map(|k| apply(node, |h| values[h.index()].at(i, shape, k, view)))
                        .collect()
                })
                .collect(),
        ),
    }
}

/// Elements per reduction chunk: reductions over elements accumulate each
/// chunk in element order, then combine the chunks in order (see the
/// manual). The fused runtime's units of work are these chunks, which is why
/// its results do not depend on the thread count.
pub const CHUNK: usize = 1 << 15;

/// f64 accumulation: a tensor's elements (or a row's) by chunks of
/// [`CHUNK`] elements, each in element order, then the chunks in order,
/// then (for the group) the tensors in order; a column's elements in row
/// order. Each tensor's result, and the group's, is rounded to f32 where
/// `in_f32` says; a row's or a column's to `F`.
fn reduce<F: Real>(
    op: ReduceOp,
    scope: Scope,
    arg: &Value<F>,
    views: &[MatrixView],
    in_f32: bool,
) -> Value<F> {
    let (start, combine) = (Kernel::identity(op), |a, b| Kernel::combine(op, a, b));
    // A gram matrix's reductions run over its own entries; every other
    // value's over the elements it broadcasts to.
    let over = if arg.shape() == Shape::Gram {
        Shape::Gram
    } else {
        Shape::Elem
    };
    let element = |i: usize, j: usize| arg.at(i, over, j, views[i]).to_f64();
    let chunked = |i: usize, elements: std::ops::Range<usize>| {
        elements
            .clone()
            .step_by(CHUNK)
            .map(|first| {
                (first..(first + CHUNK).min(elements.end))
                    .fold(start, |acc, j| combine(acc, element(i, j)))
            })
            .fold(start, combine)
    };
    let totals = views
        .iter()
        .enumerate()
        .map(|(i, &view)| match scope {
            Scope::Rows => (0..view.rows)
                .map(|row| chunked(i, row * view.cols..(row + 1) * view.cols))
                .collect(),
            Scope::Cols => (0..view.cols)
                .map(|col| {
                    (0..view.rows).fold(start, |acc, row| {
                        combine(acc, element(i, row * view.cols + col))
                    })
                })
                .collect(),
            Scope::Tensor | Scope::Group => vec![chunked(i, 0..view.len(over))],
        })
        .collect();
    reduction_value(op, scope, totals, in_f32)
}

/// A reduction's value from its totals per tensor (one per row, per column,
/// or one, as `scope` says): a row's or a column's rounded to `F`, a
/// tensor's kept in f32 where `in_f32` says, and the group's the
/// combination of its tensors', kept likewise. Every executor that
/// accumulates reductions its own way finishes them through this.
pub fn reduction_value<F: Real>(
    op: ReduceOp,
    scope: Scope,
    totals: Vec<Vec<f64>>,
    in_f32: bool,
) -> Value<F> {
    let lines = |totals: Vec<Vec<f64>>| {
        totals
            .into_iter()
            .map(|line| line.into_iter().map(F::from_f64).collect())
            .collect()
    };
    let per_tensor = |totals: &[Vec<f64>]| -> Vec<f64> {
        totals.iter().map(|t| host_keep(in_f32, t[0])).collect()
    };
    match scope {
        Scope::Rows => Value::Rows(lines(totals)),
        Scope::Cols => Value::Cols(lines(totals)),
        Scope::Tensor => Value::Tensor(per_tensor(&totals)),
        Scope::Group => Value::Group(host_keep(
            in_f32,
            per_tensor(&totals)
                .into_iter()
                .fold(Kernel::identity(op), |a, b| Kernel::combine(op, a, b)),
        )),
    }
}

/// A matrix product, gram matrix or transpose (see
/// [`crate::ir::MatrixView`]): in the wide orientation `Y` of each tensor,
/// every entry an f64 sum of products in index order, rounded to `F`.
fn matrix<F: Real>(node: &Node, values: &[Value<F>], views: &[MatrixView]) -> Value<F> {
    let get = |h: crate::ir::Handle, shape: Shape, i: usize, k: usize, view: MatrixView| {
        values[h.index()].at(i, shape, k, view).to_f64()
    };
    let dot = |terms: &mut dyn Iterator<Item = f64>| F::from_f64(terms.sum());
    let per_tensor = |shape: Shape, entry: &dyn Fn(usize, MatrixView, usize) -> F| {
        Value::vectors(
            shape,
            views
                .iter()
                .enumerate()
                .map(|(i, &view)| (0..view.len(shape)).map(|k| entry(i, view, k)).collect())
                .collect(),
        )
    };
    match *node {
        Node::Gram(a, b) => per_tensor(Shape::Gram, &|i, view, k| {
            let (r, c, wide) = (k / view.small(), k % view.small(), view.large());
            dot(&mut (0..wide).map(|t| {
                get(a, Shape::Elem, i, view.wide(r, t), view)
                    * get(b, Shape::Elem, i, view.wide(c, t), view)
            }))
        }),
        Node::MatMul(a, b) if values[b.index()].shape() == Shape::Gram => {
            per_tensor(Shape::Gram, &|i, view, k| {
                let (side, r, c) = (view.small(), k / view.small(), k % view.small());
                dot(&mut (0..side).map(|t| {
                    get(a, Shape::Gram, i, r * side + t, view)
                        * get(b, Shape::Gram, i, t * side + c, view)
                }))
            })
        }
        Node::MatMul(a, b) => {
            // Element k is entry (r, c) of the wide orientation.
            per_tensor(Shape::Elem, &|i, view, k| {
                let (row, col) = (k / view.cols.max(1), k % view.cols.max(1));
                let (r, c) = if view.rows <= view.cols {
                    (row, col)
                } else {
                    (col, row)
                };
                let side = view.small();
                dot(&mut (0..side).map(|t| {
                    get(a, Shape::Gram, i, r * side + t, view)
                        * get(b, Shape::Elem, i, view.wide(t, c), view)
                }))
            })
        }
        Node::Transpose(a) => per_tensor(Shape::Gram, &|i, view, k| {
            let side = view.small();
            F::from_f64(get(a, Shape::Gram, i, (k % side) * side + k / side, view))
        }),
        _ => Value::Group(unreachable_shape()),
    }
}
