//! The typed IR: one step of an update rule as a pure dataflow graph.
//!
//! Nodes live in an arena ([`Graph`]) and refer to earlier nodes by
//! [`Handle`], so children always come before parents and evaluating the
//! arena in order is a valid schedule. Assignments in the source become new
//! handles (the graph is in SSA form by construction); the rule's outputs are
//! the final handles of `p` and of every state slot. Identical nodes are
//! shared (hash-consing), which is common-subexpression elimination for free.
//! Every node carries its [`Type`], inferred when it is added; lowering has
//! already rejected ill-typed programs, so the graph is well typed by construction.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Index of a node in its [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(u32);

impl Handle {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The handle of the node at `index` of its graph.
    pub fn from_index(index: usize) -> Handle {
        Handle(index as u32)
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// How many values a node has per step: one for the whole group of tensors,
/// one per tensor, one per row or per column of the tensor seen as a matrix
/// ([`MatrixView`]), one per element, or one per entry of the tensor's
/// *gram* matrix, k x k for the smaller side k of the matrix. Partially
/// ordered by broadcasting: `Group < Tensor < Rows < Elem`,
/// `Tensor < Cols < Elem` and `Tensor < Gram`, with rows and columns
/// incomparable (a per-row value times a per-column one is an outer product,
/// per element) and gram matrices incomparable with the rest (they combine
/// with elements only through matrix products).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    Group,
    Tensor,
    Rows,
    Cols,
    Elem,
    Gram,
}

impl Shape {
    /// Whether a value of this shape broadcasts to `to`.
    pub fn fits(self, to: Shape) -> bool {
        self.join(to) == Some(to)
    }

    /// The smallest shape both broadcast to: the shape of an elementwise
    /// operation on operands of these shapes; `None` for a gram matrix and
    /// a value per row, column or element.
    pub fn join(self, other: Shape) -> Option<Shape> {
        use Shape::*;
        match (self, other) {
            (a, b) if a == b => Some(a),
            (Group, x) | (x, Group) => Some(x),
            (Tensor, x) | (x, Tensor) => Some(x),
            (Gram, _) | (_, Gram) => None,
            _ => Some(Elem),
        }
    }

    /// One value per row or per column: a vector per tensor, smaller than
    /// its elements.
    pub fn is_axis(self) -> bool {
        matches!(self, Shape::Rows | Shape::Cols)
    }

    /// One value per group or per tensor: computed on the host.
    pub fn is_scalar(self) -> bool {
        matches!(self, Shape::Group | Shape::Tensor)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shape::Group => "group",
            Shape::Tensor => "tensor",
            Shape::Rows => "rows",
            Shape::Cols => "cols",
            Shape::Elem => "elem",
            Shape::Gram => "gram",
        })
    }
}

/// A tensor as a rule sees it: a matrix of `rows` x `cols` elements in
/// row-major order. A matrix is itself; a vector of n elements is one row
/// of n columns (so its per-column values are per element and its one row
/// spans it); a tensor of higher rank folds its leading dimensions into the
/// rows (the last dimension is the columns); a scalar is 1 x 1. `rank` is
/// the number of dimensions, which rules may branch on.
///
/// Matrix products work on the *wide* orientation `Y` of the matrix: `Y` is
/// the matrix itself when it has no more rows than columns, else its
/// transpose, so `Y` is k x l with k = min(rows, cols) <= l. A gram matrix
/// (`gram(x, y) = Yx Yy^T`) is k x k, and `matmul(A, x)` is `A Yx` turned
/// back to the matrix's own orientation (Muon's Newton-Schulz iteration
/// works on the smaller side this way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatrixView {
    pub rank: usize,
    pub rows: usize,
    pub cols: usize,
}

impl MatrixView {
    /// The view of a tensor of these dimensions (row-major).
    pub fn of_dims(dims: &[usize]) -> MatrixView {
        match dims.split_last() {
            None => MatrixView {
                rank: 0,
                rows: 1,
                cols: 1,
            },
            Some((&cols, leading)) => MatrixView {
                rank: dims.len(),
                rows: leading.iter().product(),
                cols,
            },
        }
    }

    /// A vector of `numel` elements.
    pub fn vector(numel: usize) -> MatrixView {
        MatrixView {
            rank: 1,
            rows: 1,
            cols: numel,
        }
    }

    /// Vectors of these sizes.
    pub fn vectors(numels: &[usize]) -> Vec<MatrixView> {
        numels.iter().map(|&n| MatrixView::vector(n)).collect()
    }

    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// The value of a size input (`numel`, `rank`, `nrows`, `ncols`) for
    /// this tensor; `None` for other inputs.
    pub fn size(&self, input: Input) -> Option<usize> {
        match input {
            Input::Numel => Some(self.numel()),
            Input::Rank => Some(self.rank),
            Input::Rows => Some(self.rows),
            Input::Cols => Some(self.cols),
            _ => None,
        }
    }

    /// The side of its gram matrix: min(rows, cols).
    pub fn small(&self) -> usize {
        self.rows.min(self.cols)
    }

    /// The length of the wide orientation's rows: max(rows, cols).
    pub fn large(&self) -> usize {
        self.rows.max(self.cols)
    }

    /// The element (row-major index) at row `i`, column `j` of the wide
    /// orientation `Y`.
    pub fn wide(&self, i: usize, j: usize) -> usize {
        let (row, col) = self.wide_strides();
        i * row + j * col
    }

    /// The strides of the wide orientation's rows and columns over the
    /// row-major elements: `Y` is the matrix, or its transpose.
    pub fn wide_strides(&self) -> (usize, usize) {
        if self.rows <= self.cols {
            (self.cols, 1)
        } else {
            (1, self.cols)
        }
    }

    /// How many values a value of `shape` holds for this tensor (1 for the
    /// scalar shapes).
    pub fn len(&self, shape: Shape) -> usize {
        match shape {
            Shape::Group | Shape::Tensor => 1,
            Shape::Rows => self.rows,
            Shape::Cols => self.cols,
            Shape::Elem => self.numel(),
            Shape::Gram => self.small() * self.small(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Float,
    Bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Type {
    pub shape: Shape,
    pub kind: Kind,
}

impl Type {
    pub const GROUP: Type = Type {
        shape: Shape::Group,
        kind: Kind::Float,
    };
    pub const TENSOR: Type = Type {
        shape: Shape::Tensor,
        kind: Kind::Float,
    };
    pub const ELEM: Type = Type {
        shape: Shape::Elem,
        kind: Kind::Float,
    };
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Float => write!(f, "{}", self.shape),
            Kind::Bool => write!(f, "{} bool", self.shape),
        }
    }
}

/// Values that come from outside the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// `p`, the parameter before the step.
    Param,
    /// `g`, the gradient.
    Grad,
    /// `t`, the 1-based step number.
    Step,
    /// `numel`, the current tensor's element count.
    Numel,
    /// `rank`, the current tensor's number of dimensions.
    Rank,
    /// `nrows` and `ncols`, the rows and columns of its [`MatrixView`].
    Rows,
    Cols,
    /// A hyperparameter, by index into [`Rule::hypers`].
    Hyper(u32),
    /// A state slot before the step, by index into [`Rule::states`]. On the
    /// first step it takes the value of the slot's `init` node.
    State(u32),
}

/// The inputs that are sizes of the current tensor (`tensor` values), by
/// their names in the language.
pub const SIZES: &[(&str, Input)] = &[
    ("numel", Input::Numel),
    ("rank", Input::Rank),
    ("nrows", Input::Rows),
    ("ncols", Input::Cols),
];

impl Input {
    /// The name of a size input (`numel`, `rank`, `nrows`, `ncols`).
    pub fn size_name(self) -> Option<&'static str> {
        SIZES.iter().find(|(_, i)| *i == self).map(|(n, _)| *n)
    }

    /// The size input of this name.
    pub fn size(name: &str) -> Option<Input> {
        SIZES.iter().find(|(n, _)| *n == name).map(|(_, i)| *i)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnaryOp {
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
    /// Rounds to the nearest bfloat16 (ties to even), kept as a float.
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinaryOp {
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
    Or,
}

impl BinaryOp {
    /// Comparisons take floats and give a bool.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        )
    }

    /// `&&` and `||` take and give bools.
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }

    /// The `.opt` symbol of an operator written between its operands with
    /// ordinary left-to-right precedence; `None` for `pow` (written `^`,
    /// right-associative and binding tighter than negation) and for `min`
    /// and `max`, which are calls.
    pub fn infix_symbol(self) -> Option<&'static str> {
        Some(match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "&&",
            BinaryOp::Or => "||",
            BinaryOp::Pow | BinaryOp::Min | BinaryOp::Max => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

/// What a reduction runs over: each row of the current tensor (giving one
/// value per row), each column, the whole tensor, or every tensor of the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    Rows,
    Cols,
    Tensor,
    Group,
}

impl Scope {
    /// The shape of the reduction's result.
    pub fn shape(self) -> Shape {
        match self {
            Scope::Rows => Shape::Rows,
            Scope::Cols => Shape::Cols,
            Scope::Tensor => Shape::Tensor,
            Scope::Group => Shape::Group,
        }
    }

    /// The prefix of the reduction's name in the language (`row_sum`).
    pub fn prefix(self) -> &'static str {
        match self {
            Scope::Rows => "row_",
            Scope::Cols => "col_",
            Scope::Tensor => "",
            Scope::Group => "group_",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// A float constant, stored as its bits so that nodes hash.
    Const(u64),
    Bool(bool),
    Input(Input, Type),
    Unary(UnaryOp, Handle),
    Binary(BinaryOp, Handle, Handle),
    /// `select(cond, a, b)`.
    Select(Handle, Handle, Handle),
    /// `lerp(a, b, w) = a + w (b - a)`.
    Lerp(Handle, Handle, Handle),
    Reduce(ReduceOp, Scope, Handle),
    /// `gram(x, y) = Yx Yy^T` (k x k; see [`MatrixView`]) of two
    /// per-element values.
    Gram(Handle, Handle),
    /// `matmul(a, b)`: a gram matrix times a gram matrix (k x k), or times
    /// a per-element value (`a Yb`, per element).
    MatMul(Handle, Handle),
    /// `transpose(a)` of a gram matrix.
    Transpose(Handle),
}

impl Node {
    pub fn constant(value: f64) -> Node {
        Node::Const(value.to_bits())
    }

    /// The operands, in order.
    pub fn children(&self) -> Vec<Handle> {
        match *self {
            Node::Const(_) | Node::Bool(_) | Node::Input(..) => Vec::new(),
            Node::Unary(_, a) | Node::Reduce(_, _, a) | Node::Transpose(a) => vec![a],
            Node::Binary(_, a, b) | Node::Gram(a, b) | Node::MatMul(a, b) => vec![a, b],
            Node::Select(a, b, c) | Node::Lerp(a, b, c) => vec![a, b, c],
        }
    }

    /// The number a constant node stands for (a bool as 1 or 0).
    pub fn constant_value(&self) -> Option<f64> {
        match *self {
            Node::Const(bits) => Some(f64::from_bits(bits)),
            Node::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }

    /// Constants and inputs, which have no operands.
    pub fn is_leaf(&self) -> bool {
        matches!(self, Node::Const(_) | Node::Bool(_) | Node::Input(..))
    }

    /// The same operation on the operands `f` maps these to (for copying a
    /// node into another graph).
    pub fn map_children(&self, mut f: impl FnMut(Handle) -> Handle) -> Node {
        match *self {
            Node::Const(_) | Node::Bool(_) | Node::Input(..) => *self,
            Node::Unary(op, a) => Node::Unary(op, f(a)),
            Node::Binary(op, a, b) => Node::Binary(op, f(a), f(b)),
            Node::Select(c, a, b) => Node::Select(f(c), f(a), f(b)),
            Node::Lerp(a, b, w) => Node::Lerp(f(a), f(b), f(w)),
            Node::Reduce(op, scope, a) => Node::Reduce(op, scope, f(a)),
            Node::Gram(a, b) => Node::Gram(f(a), f(b)),
            Node::MatMul(a, b) => Node::MatMul(f(a), f(b)),
            Node::Transpose(a) => Node::Transpose(f(a)),
        }
    }
}

/// An arena of typed, hash-consed nodes.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    types: Vec<Type>,
    interned: HashMap<Node, Handle>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a node (or returns the existing identical one). Its type follows
    /// from its operands: the largest shape, and bool for comparisons and logic.
    /// `pow(a, 2)` with the constant 2 becomes `a * a` (one rounding of the
    /// exact square, as torch and XLA compute it, and no call to pow), so no
    /// graph holds such a pow.
    pub fn add(&mut self, node: Node) -> Handle {
        let node = match node {
            Node::Binary(BinaryOp::Pow, a, b) if self.nodes[b.index()] == Node::constant(2.0) => {
                Node::Binary(BinaryOp::Mul, a, a)
            }
            other => other,
        };
        if let Some(&handle) = self.interned.get(&node) {
            return handle;
        }
        let ty = self.infer(&node);
        let handle = Handle(self.nodes.len() as u32);
        self.nodes.push(node);
        self.types.push(ty);
        self.interned.insert(node, handle);
        handle
    }

    fn infer(&self, node: &Node) -> Type {
        let shape_of = |handles: &[Handle]| {
            handles
                .iter()
                .map(|&h| self.ty(h).shape)
                .try_fold(Shape::Group, Shape::join)
                .unwrap_or(Shape::Elem)
        };
        match *node {
            Node::Const(_) => Type::GROUP,
            Node::Bool(_) => Type {
                shape: Shape::Group,
                kind: Kind::Bool,
            },
            Node::Input(_, ty) => ty,
            Node::Unary(op, a) => Type {
                shape: self.ty(a).shape,
                kind: if op == UnaryOp::Not {
                    Kind::Bool
                } else {
                    Kind::Float
                },
            },
            Node::Binary(op, a, b) => Type {
                shape: shape_of(&[a, b]),
                kind: if op.is_comparison() || op.is_logical() {
                    Kind::Bool
                } else {
                    Kind::Float
                },
            },
            Node::Select(c, a, b) => Type {
                shape: shape_of(&[c, a, b]),
                kind: self.ty(a).kind,
            },
            Node::Lerp(a, b, w) => Type {
                shape: shape_of(&[a, b, w]),
                kind: Kind::Float,
            },
            Node::Reduce(_, scope, _) => Type {
                shape: scope.shape(),
                kind: Kind::Float,
            },
            Node::Gram(..) | Node::Transpose(_) => Type {
                shape: Shape::Gram,
                kind: Kind::Float,
            },
            Node::MatMul(_, b) => Type {
                shape: if self.ty(b).shape == Shape::Gram {
                    Shape::Gram
                } else {
                    Shape::Elem
                },
                kind: Kind::Float,
            },
        }
    }

    pub fn node(&self, handle: Handle) -> &Node {
        &self.nodes[handle.index()]
    }

    pub fn ty(&self, handle: Handle) -> Type {
        self.types[handle.index()]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node with its handle, children before parents.
    pub fn iter(&self) -> impl Iterator<Item = (Handle, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (Handle(i as u32), node))
    }

    /// Writes one node as a line of the IR text format (`v3: elem = mul v1, v2`).
    fn write_node(
        &self,
        f: &mut fmt::Formatter<'_>,
        handle: Handle,
        names: &Names<'_>,
    ) -> fmt::Result {
        write!(f, "  {handle}: {} = ", self.ty(handle))?;
        match *self.node(handle) {
            Node::Const(bits) => write!(f, "{}", f64::from_bits(bits)),
            Node::Bool(b) => write!(f, "{b}"),
            Node::Input(input, _) => match input {
                Input::Param => f.write_str("p"),
                Input::Grad => f.write_str("g"),
                Input::Step => f.write_str("t"),
                Input::Numel | Input::Rank | Input::Rows | Input::Cols => {
                    f.write_str(input.size_name().unwrap_or("?"))
                }
                Input::Hyper(i) => write!(f, "hyper {}", names.hyper(i)),
                Input::State(i) => write!(f, "state {}", names.state(i)),
            },
            Node::Unary(op, a) => write!(f, "{} {a}", format!("{op:?}").to_lowercase()),
            Node::Binary(op, a, b) => write!(f, "{} {a}, {b}", format!("{op:?}").to_lowercase()),
            Node::Select(c, a, b) => write!(f, "select {c}, {a}, {b}"),
            Node::Lerp(a, b, w) => write!(f, "lerp {a}, {b}, {w}"),
            Node::Reduce(op, scope, a) => {
                write!(
                    f,
                    "{}{} {a}",
                    scope.prefix(),
                    format!("{op:?}").to_lowercase()
                )
            }
            Node::Gram(a, b) => write!(f, "gram {a}, {b}"),
            Node::MatMul(a, b) => write!(f, "matmul {a}, {b}"),
            Node::Transpose(a) => write!(f, "transpose {a}"),
        }?;
        writeln!(f)
    }
}

/// Names for inputs when printing.
struct Names<'a> {
    hypers: &'a [Hyper],
    states: &'a [StateSlot],
}

impl Names<'_> {
    fn hyper(&self, i: u32) -> &str {
        self.hypers.get(i as usize).map_or("?", |h| h.name.as_str())
    }

    fn state(&self, i: u32) -> &str {
        self.states.get(i as usize).map_or("?", |s| s.name.as_str())
    }
}

/// A scalar program of `t` alone: a hyperparameter's default or a value set
/// per call (a constant or a schedule).
#[derive(Clone, Debug)]
pub struct ScalarExpr {
    pub graph: Graph,
    pub output: Handle,
    /// The source text it came from, for display.
    pub text: String,
}

impl ScalarExpr {
    /// A number (a hyperparameter default or a value set per call).
    pub fn constant(value: f64) -> ScalarExpr {
        let mut graph = Graph::new();
        let output = graph.add(Node::constant(value));
        ScalarExpr {
            graph,
            output,
            text: format!("{value:?}"),
        }
    }

    /// `true` or `false` (a bool hyperparameter's value).
    pub fn boolean(value: bool) -> ScalarExpr {
        let mut graph = Graph::new();
        let output = graph.add(Node::Bool(value));
        ScalarExpr {
            graph,
            output,
            text: value.to_string(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.graph.ty(self.output).kind
    }
}

impl From<f64> for ScalarExpr {
    fn from(value: f64) -> ScalarExpr {
        ScalarExpr::constant(value)
    }
}

impl From<bool> for ScalarExpr {
    fn from(value: bool) -> ScalarExpr {
        ScalarExpr::boolean(value)
    }
}

#[derive(Clone, Debug)]
pub struct Hyper {
    pub name: String,
    pub kind: Kind,
    /// `None`: the caller must give a value.
    pub default: Option<ScalarExpr>,
}

#[derive(Clone, Debug)]
pub struct StateSlot {
    pub name: String,
    pub shape: Shape,
    /// The value the slot takes on the first step (a node of the rule's graph).
    pub init: Handle,
}

/// A compiled update rule: one step as a graph from inputs to outputs.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    /// The doc comment lines of the optimizer.
    pub doc: Vec<String>,
    pub hypers: Vec<Hyper>,
    pub states: Vec<StateSlot>,
    pub graph: Graph,
    /// The parameter after the step.
    pub param_out: Handle,
    /// Each state slot after the step, in the order of `states`.
    pub state_out: Vec<Handle>,
}

impl Rule {
    pub fn hyper_index(&self, name: &str) -> Option<usize> {
        self.hypers.iter().position(|h| h.name == name)
    }

    /// Whether the rule reduces over a whole group (`sum_group`, ...).
    pub fn reduces_per_group(&self) -> bool {
        self.graph
            .iter()
            .any(|(_, node)| matches!(node, Node::Reduce(_, Scope::Group, _)))
    }

    /// Whether the rule keeps state per group.
    pub fn keeps_group_state(&self) -> bool {
        self.states.iter().any(|slot| slot.shape == Shape::Group)
    }

    /// f32 words of state each parameter element carries.
    pub fn elem_state_slots(&self) -> usize {
        self.states
            .iter()
            .filter(|s| s.shape == Shape::Elem)
            .count()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "optimizer {}", self.name)?;
        for hyper in &self.hypers {
            let kind = match hyper.kind {
                Kind::Float => "",
                Kind::Bool => ": bool",
            };
            match &hyper.default {
                Some(default) => writeln!(f, "hyper {}{kind} = {}", hyper.name, default.text)?,
                None => writeln!(f, "hyper {}{kind}", hyper.name)?,
            }
        }
        for state in &self.states {
            writeln!(f, "state {}: {} = {}", state.name, state.shape, state.init)?;
        }
        let names = Names {
            hypers: &self.hypers,
            states: &self.states,
        };
        for (handle, _) in self.graph.iter() {
            self.graph.write_node(f, handle, &names)?;
        }
        writeln!(f, "out p = {}", self.param_out)?;
        for (state, out) in self.states.iter().zip(&self.state_out) {
            writeln!(f, "out {} = {out}", state.name)?;
        }
        Ok(())
    }
}
