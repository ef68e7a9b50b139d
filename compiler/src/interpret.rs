//! The reference interpreter: the semantics oracle for every backend.
//!
//! It evaluates a rule's graph node by node, in arena order, for all tensors
//! of the step at once ("lockstep"), keeping every intermediate value. That is
//! slow and simple on purpose: each operation is defined exactly once (in
//! [`unary`], [`binary`], [`select`] and [`lerp`]), for f64 scalars and for
//! elements alike, and reductions are plain in-order f64 sums.

use crate::ir::{
    BinaryOp, Graph, Handle, Input, Node, ReduceOp, Rule, ScalarExpr, Scope, Shape, UnaryOp,
};

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
    /// One vector per tensor.
    Elem(Vec<Vec<F>>),
}

impl<F: Real> Value<F> {
    /// The scalar seen by tensor `i` (group or tensor values only).
    fn scalar(&self, i: usize) -> f64 {
        match self {
            Value::Group(x) => *x,
            Value::Tensor(xs) => xs[i],
            Value::Elem(_) => unreachable_shape(),
        }
    }

    /// Element `j` of tensor `i`, broadcasting scalars (rounded to `F`).
    fn at(&self, i: usize, j: usize) -> F {
        match self {
            Value::Group(x) => F::from_f64(*x),
            Value::Tensor(xs) => F::from_f64(xs[i]),
            Value::Elem(xs) => xs[i][j],
        }
    }

    /// This value broadcast to `shape` for tensors of the given sizes.
    pub fn broadcast(&self, shape: Shape, numels: &[usize]) -> Value<F> {
        match shape {
            Shape::Group => self.clone(),
            Shape::Tensor => match self {
                Value::Group(x) => Value::Tensor(vec![*x; numels.len()]),
                other => other.clone(),
            },
            Shape::Elem => Value::Elem(
                numels
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| (0..n).map(|j| self.at(i, j)).collect())
                    .collect(),
            ),
        }
    }

    pub fn shape(&self) -> Shape {
        match self {
            Value::Group(_) => Shape::Group,
            Value::Tensor(_) => Shape::Tensor,
            Value::Elem(_) => Shape::Elem,
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
fn apply<X: Real>(node: &Node, get: impl Fn(Handle) -> X) -> X {
    match *node {
        Node::Unary(op, a) => unary(op, get(a)),
        Node::Binary(op, a, b) => binary(op, get(a), get(b)),
        Node::Select(c, a, b) => select(get(c), get(a), get(b)),
        Node::Lerp(a, b, w) => lerp(get(a), get(b), get(w)),
        Node::Const(_) | Node::Bool(_) | Node::Input(..) | Node::Reduce(..) => X::ZERO,
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
            && state.iter().zip(&rule.states).all(|(value, slot)| {
                value.shape() == slot.shape
                    && match value {
                        Value::Group(_) => true,
                        Value::Tensor(xs) => xs.len() == numels.len(),
                        Value::Elem(xs) => {
                            xs.len() == numels.len()
                                && xs.iter().zip(&numels).all(|(x, &n)| x.len() == n)
                        }
                    }
            });
        if !fits {
            return Err("state does not match the rule and parameters".into());
        }
    }
    let values = evaluate_with(&rule.graph, &numels, scalars, |input, values| match input {
        Input::Param => Value::Elem(inputs.params.iter().map(|p| p.to_vec()).collect()),
        Input::Grad => Value::Elem(inputs.grads.iter().map(|g| g.to_vec()).collect()),
        Input::Step => Value::Group(inputs.step as f64),
        Input::Numel => Value::Tensor(numels.iter().map(|&n| n as f64).collect()),
        Input::Hyper(i) => Value::Group(inputs.hypers[i as usize]),
        Input::State(i) => {
            let slot = &rule.states[i as usize];
            match inputs.state {
                Some(state) => state[i as usize].clone(),
                None => values[slot.init.index()].broadcast(slot.shape, &numels),
            }
        }
    });
    let output = |handle: Handle, shape: Shape| values[handle.index()].broadcast(shape, &numels);
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

/// Evaluates every node of `graph`, in arena order, for tensors of sizes
/// `numels`; `input` gives each input node's value (it also sees the values
/// computed so far). Rules go through [`step`]; graphs that are not rules
/// (objectives) call this directly.
pub fn evaluate<F: Real>(
    graph: &Graph,
    numels: &[usize],
    input: impl FnMut(Input, &[Value<F>]) -> Value<F>,
) -> Vec<Value<F>> {
    evaluate_with(graph, numels, Scalars::F64, input)
}

/// [`evaluate`] with group and tensor values computed as `scalars` says.
pub fn evaluate_with<F: Real>(
    graph: &Graph,
    numels: &[usize],
    scalars: Scalars,
    mut input: impl FnMut(Input, &[Value<F>]) -> Value<F>,
) -> Vec<Value<F>> {
    let f32 = scalars.f32_nodes(graph);
    let mut values: Vec<Value<F>> = Vec::with_capacity(graph.len());
    for (handle, node) in graph.iter() {
        let shape = graph.ty(handle).shape;
        let in_f32 = f32[handle.index()];
        let value = match *node {
            Node::Const(bits) => Value::Group(f64::from_bits(bits)),
            Node::Bool(b) => Value::Group(truth(b)),
            Node::Input(which, _) => input(which, &values),
            Node::Reduce(op, scope, a) => reduce(op, scope, &values[a.index()], numels, in_f32),
            _ => elementwise(node, shape, &values, numels, in_f32),
        };
        values.push(value);
    }
    values
}

/// Evaluates a node whose value at each position depends only on its
/// operands at that position.
fn elementwise<F: Real>(
    node: &Node,
    shape: Shape,
    values: &[Value<F>],
    numels: &[usize],
    in_f32: bool,
) -> Value<F> {
    match shape {
        Shape::Group => Value::Group(host_apply(in_f32, node, |h| values[h.index()].scalar(0))),
        Shape::Tensor => Value::Tensor(
            (0..numels.len())
                .map(|i| host_apply(in_f32, node, |h| values[h.index()].scalar(i)))
                .collect(),
        ),
        Shape::Elem => Value::Elem(
            numels
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    (0..n)
                        .map(|j| apply(node, |h| values[h.index()].at(i, j)))
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

/// f64 accumulation by chunks of [`CHUNK`] elements in element order, then
/// chunk order, then tensor order (each tensor's result, and the group's,
/// rounded to f32 where `in_f32` says).
fn reduce<F: Real>(
    op: ReduceOp,
    scope: Scope,
    arg: &Value<F>,
    numels: &[usize],
    in_f32: bool,
) -> Value<F> {
    let (start, combine): (f64, fn(f64, f64) -> f64) = match op {
        ReduceOp::Sum => (0.0, |a, b| a + b),
        ReduceOp::Max => (f64::NEG_INFINITY, f64::max),
        ReduceOp::Min => (f64::INFINITY, f64::min),
    };
    let per_tensor: Vec<f64> = numels
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .step_by(CHUNK)
                .map(|first| {
                    (first..(first + CHUNK).min(n))
                        .fold(start, |acc, j| combine(acc, arg.at(i, j).to_f64()))
                })
                .fold(start, combine)
        })
        .map(|x| host_keep(in_f32, x))
        .collect();
    match scope {
        Scope::Tensor => Value::Tensor(per_tensor),
        Scope::Group => Value::Group(host_keep(
            in_f32,
            per_tensor.into_iter().fold(start, combine),
        )),
    }
}
