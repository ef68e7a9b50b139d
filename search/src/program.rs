//! The search's program space. A [`Candidate`] is one optimizer written as a
//! short straight-line list of statements over `p`, `g`, `t`, `numel`, the
//! hyperparameters, up to [`MAX_STATE_SLOTS`] per-element state slots (the
//! signature of the paper's AdamW program) and constants. Every statement
//! applies one operation of the language to atoms, so mutations can edit a
//! program one operand or operator at a time. A candidate prints as `.opt`
//! source and compiles through [`optc_compiler::Program`], which remains the
//! only judge of well-typedness. Warm starts convert a compiled rule's IR
//! (a stdlib rule, a user's file, an emitted rule) into this form.

use std::fmt;

use serde::{Deserialize, Serialize};

use optc_compiler::builtins::{self, Builtin};
use optc_compiler::ir::{
    BinaryOp, Handle, Input, Kind, Node, ReduceOp, Rule, Scope, Shape, UnaryOp,
};
use optc_compiler::simplify::{self, Tier};
use optc_compiler::{Origin, Program};

/// Per-element state slots every candidate has (unused ones are neutral).
pub const MAX_STATE_SLOTS: usize = 2;

/// Statements a mutation may grow a candidate to (redundant statements are
/// allowed, as in the paper, but not without bound: a ten-minute search
/// without a bound grew its best program to 94 statements, most of them dead).
pub const MAX_STATEMENTS: usize = 40;

/// The name of the optimizer a candidate prints as.
pub const CANDIDATE_NAME: &str = "candidate";

/// Names given to the padding state slots of a warm start, first free one wins.
const PADDING_STATE_NAMES: &[&str] = &["m", "v", "s0", "s1", "s2", "s3"];

/// A value a statement can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Var {
    Param,
    Grad,
    Step,
    Numel,
    Hyper(usize),
    State(usize),
    /// The `let` with this id (its name is the candidate's prefix and the id).
    Let(usize),
}

/// An atom: a variable or a constant.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Operand {
    Var(Var),
    Const(f64),
    Bool(bool),
}

/// One operation of the language applied to atoms.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    Copy(Operand),
    Unary(UnaryOp, Operand),
    Binary(BinaryOp, Operand, Operand),
    Select(Operand, Operand, Operand),
    Lerp(Operand, Operand, Operand),
    Reduce(ReduceOp, Scope, Operand),
}

impl Expr {
    /// The operands, in order.
    pub fn operands(&self) -> Vec<Operand> {
        match *self {
            Expr::Copy(a) | Expr::Unary(_, a) | Expr::Reduce(_, _, a) => vec![a],
            Expr::Binary(_, a, b) => vec![a, b],
            Expr::Select(a, b, c) | Expr::Lerp(a, b, c) => vec![a, b, c],
        }
    }

    /// Mutable access to the operands, in order.
    pub fn operands_mut(&mut self) -> Vec<&mut Operand> {
        match self {
            Expr::Copy(a) | Expr::Unary(_, a) | Expr::Reduce(_, _, a) => vec![a],
            Expr::Binary(_, a, b) => vec![a, b],
            Expr::Select(a, b, c) | Expr::Lerp(a, b, c) => vec![a, b, c],
        }
    }

    /// The kind of each operand this expression needs.
    pub fn operand_kinds(&self) -> Vec<Kind> {
        match *self {
            Expr::Copy(_) => vec![Kind::Float],
            Expr::Unary(UnaryOp::Not, _) => vec![Kind::Bool],
            Expr::Unary(..) | Expr::Reduce(..) => vec![Kind::Float],
            Expr::Binary(op, ..) if op.is_logical() => vec![Kind::Bool, Kind::Bool],
            Expr::Binary(..) => vec![Kind::Float, Kind::Float],
            Expr::Select(..) => vec![Kind::Bool, Kind::Float, Kind::Float],
            Expr::Lerp(..) => vec![Kind::Float; 3],
        }
    }

    /// The kind of the value, given the kind of its first operand (a copy's).
    pub fn kind(&self, first_operand: Kind) -> Kind {
        match *self {
            Expr::Copy(_) => first_operand,
            Expr::Unary(UnaryOp::Not, _) => Kind::Bool,
            Expr::Binary(op, ..) if op.is_comparison() || op.is_logical() => Kind::Bool,
            _ => Kind::Float,
        }
    }
}

/// What a statement writes: a new `let`, or `p`, `g` or a state slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    Let(usize),
    Param,
    Grad,
    State(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub target: Target,
    pub expr: Expr,
}

/// A hyperparameter: its name, kind and default as source text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HyperDecl {
    pub name: String,
    pub kind: Kind,
    pub default: String,
}

/// A per-element state slot and its first-step value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateDecl {
    pub name: String,
    pub init: Operand,
}

/// One optimizer of the search space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub hypers: Vec<HyperDecl>,
    pub states: Vec<StateDecl>,
    pub statements: Vec<Statement>,
    /// `let` names are this prefix and the let's id (chosen not to clash with
    /// hyperparameter or state names).
    pub let_prefix: String,
    /// The id the next inserted `let` gets.
    pub next_let: usize,
}

/// Why a rule cannot be a warm start.
#[derive(Clone, Debug, PartialEq)]
pub enum WarmStartError {
    Compile(String),
    TooManyStateSlots(usize),
    NotPerElementState(String),
    StateInitNotAtom(String),
    HyperWithoutDefault(String),
    MatrixShaped(String),
}

impl fmt::Display for WarmStartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WarmStartError::Compile(message) => write!(f, "the warm start does not compile: {message}"),
            WarmStartError::TooManyStateSlots(n) => write!(
                f,
                "the rule has {n} state slots; the search space allows at most {MAX_STATE_SLOTS}"
            ),
            WarmStartError::NotPerElementState(name) => write!(
                f,
                "state `{name}` is per tensor or per group; the search space has per-element state only"
            ),
            WarmStartError::StateInitNotAtom(name) => write!(
                f,
                "state `{name}` starts from a computed value; the search space allows a constant, `p`, `g`, `t`, `numel` or a hyperparameter"
            ),
            WarmStartError::MatrixShaped(name) => write!(
                f,
                "`{name}` sees tensors as matrices (per-row or per-column values, gram matrices, `rank`, `nrows`, `ncols`); the search space is elementwise"
            ),
            WarmStartError::HyperWithoutDefault(name) => write!(
                f,
                "hyperparameter `{name}` has no default; a candidate must run without settings"
            ),
        }
    }
}

impl std::error::Error for WarmStartError {}

impl Candidate {
    /// Compiles the optimizer `name` of `context` and converts it.
    pub fn warm_start(context: &Program, name: &str) -> Result<Candidate, WarmStartError> {
        let rule = context
            .compile(name)
            .map_err(|diagnostic| WarmStartError::Compile(diagnostic.message))?;
        Candidate::from_rule(&rule)
    }

    /// Converts a compiled rule (simplified exactly first, so dead code and
    /// dead state are gone): one `let` per operation of its IR, then one
    /// assignment per output. Slots are padded to [`MAX_STATE_SLOTS`].
    pub fn from_rule(rule: &Rule) -> Result<Candidate, WarmStartError> {
        let rule = simplify::simplify(rule, Tier::Exact);
        let matrix_shaped = rule.graph.iter().any(|(h, node)| {
            !matches!(
                rule.graph.ty(h).shape,
                Shape::Group | Shape::Tensor | Shape::Elem
            ) || matches!(
                node,
                Node::Input(Input::Rank | Input::Rows | Input::Cols, _)
            )
        });
        if matrix_shaped {
            return Err(WarmStartError::MatrixShaped(rule.name.clone()));
        }
        if rule.states.len() > MAX_STATE_SLOTS {
            return Err(WarmStartError::TooManyStateSlots(rule.states.len()));
        }
        let hypers = rule
            .hypers
            .iter()
            .map(|hyper| match &hyper.default {
                Some(default) => Ok(HyperDecl {
                    name: hyper.name.clone(),
                    kind: hyper.kind,
                    default: default.text.clone(),
                }),
                None => Err(WarmStartError::HyperWithoutDefault(hyper.name.clone())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let graph = &rule.graph;
        let atom = |handle: Handle| leaf_operand(graph.node(handle));
        let mut states = Vec::new();
        for slot in &rule.states {
            if slot.shape != Shape::Elem {
                return Err(WarmStartError::NotPerElementState(slot.name.clone()));
            }
            let init = atom(slot.init)
                .filter(|operand| !matches!(operand, Operand::Var(Var::State(_))))
                .ok_or_else(|| WarmStartError::StateInitNotAtom(slot.name.clone()))?;
            states.push(StateDecl {
                name: slot.name.clone(),
                init,
            });
        }
        for name in PADDING_STATE_NAMES {
            if states.len() == MAX_STATE_SLOTS {
                break;
            }
            let taken =
                states.iter().any(|s| s.name == *name) || hypers.iter().any(|h| h.name == *name);
            if !taken {
                states.push(StateDecl {
                    name: name.to_string(),
                    init: Operand::Const(0.0),
                });
            }
        }
        let operand =
            |handle: Handle| atom(handle).unwrap_or(Operand::Var(Var::Let(handle.index())));
        let mut statements: Vec<Statement> = graph
            .iter()
            .filter_map(|(handle, node)| {
                Some(Statement {
                    target: Target::Let(handle.index()),
                    expr: node_expr(node, operand)?,
                })
            })
            .collect();
        let mut next_let = graph.len();
        // Outputs that are a mutable input (`p = mu`) read it through a `let`
        // first, so the order of the assignments below cannot matter.
        let mut output = |handle: Handle, statements: &mut Vec<Statement>| match atom(handle) {
            Some(Operand::Var(var @ (Var::Param | Var::State(_)))) => {
                let id = next_let;
                next_let += 1;
                statements.push(Statement {
                    target: Target::Let(id),
                    expr: Expr::Copy(Operand::Var(var)),
                });
                Operand::Var(Var::Let(id))
            }
            _ => operand(handle),
        };
        let mut assignments = Vec::new();
        for (index, &out) in rule.state_out.iter().enumerate() {
            if atom(out) != Some(Operand::Var(Var::State(index))) {
                let value = output(out, &mut statements);
                assignments.push(Statement {
                    target: Target::State(index),
                    expr: Expr::Copy(value),
                });
            }
        }
        let value = output(rule.param_out, &mut statements);
        assignments.push(Statement {
            target: Target::Param,
            expr: Expr::Copy(value),
        });
        statements.extend(assignments);
        let let_prefix = let_prefix_avoiding(&hypers, &states);
        Ok(Candidate {
            hypers,
            states,
            statements,
            let_prefix,
            next_let,
        })
    }

    /// Checks what mutations guarantee, for a candidate read from a file:
    /// at most [`MAX_STATE_SLOTS`] slots and [`MAX_STATEMENTS`] statements,
    /// every operand a variable its statement can see (or a constant), each
    /// `let` written once with an id below `next_let`, state initialisers
    /// reading inputs and hyperparameters only.
    pub fn validate(&self) -> Result<(), String> {
        if self.states.len() > MAX_STATE_SLOTS || self.statements.len() > MAX_STATEMENTS {
            return Err(format!(
                "a candidate with {} state slots and {} statements (at most {MAX_STATE_SLOTS} and {MAX_STATEMENTS})",
                self.states.len(),
                self.statements.len()
            ));
        }
        let initial = |operand: &Operand| match operand {
            Operand::Var(Var::Hyper(i)) => *i < self.hypers.len(),
            Operand::Var(Var::State(_) | Var::Let(_)) => false,
            _ => true,
        };
        if let Some(state) = self.states.iter().find(|s| !initial(&s.init)) {
            return Err(format!(
                "state `{}` starts from a value it cannot read",
                state.name
            ));
        }
        let mut lets = std::collections::HashSet::new();
        for (index, statement) in self.statements.iter().enumerate() {
            let visible: Vec<Var> = self.visible(index).into_iter().map(|(v, _)| v).collect();
            let unseen = statement
                .expr
                .operands()
                .into_iter()
                .find(|operand| matches!(operand, Operand::Var(v) if !visible.contains(v)));
            if let Some(operand) = unseen {
                return Err(format!(
                    "statement {index} reads {operand:?}, which it cannot see"
                ));
            }
            let fits = match statement.target {
                Target::Let(id) => id < self.next_let && lets.insert(id),
                Target::State(slot) => slot < self.states.len(),
                Target::Param | Target::Grad => true,
            };
            if !fits {
                return Err(format!("statement {index} writes {:?}", statement.target));
            }
        }
        Ok(())
    }

    /// The `.opt` source of the candidate (an optimizer named [`CANDIDATE_NAME`]).
    pub fn source(&self) -> String {
        self.to_string()
    }

    /// Compiles the candidate in `context` (usually the stdlib prelude, which
    /// hyperparameter defaults such as schedules may need).
    pub fn compile(&self, context: &Program) -> Result<Rule, String> {
        let mut program = context.clone();
        let source = self.source();
        program
            .add_source("candidate.opt", source.as_bytes(), Origin::User)
            .map_err(|diagnostic| diagnostic.message)?;
        program
            .compile(CANDIDATE_NAME)
            .map_err(|diagnostic| diagnostic.message)
    }

    /// The variables statement `index` can read, with their kinds: the
    /// inputs, the hyperparameters, the state slots and earlier `let`s.
    pub fn visible(&self, index: usize) -> Vec<(Var, Kind)> {
        let mut visible = vec![
            (Var::Param, Kind::Float),
            (Var::Grad, Kind::Float),
            (Var::Step, Kind::Float),
            (Var::Numel, Kind::Float),
        ];
        visible.extend(
            self.hypers
                .iter()
                .enumerate()
                .map(|(i, h)| (Var::Hyper(i), h.kind)),
        );
        visible.extend((0..self.states.len()).map(|i| (Var::State(i), Kind::Float)));
        let mut let_kinds: Vec<(usize, Kind)> = Vec::new();
        for statement in &self.statements[..index.min(self.statements.len())] {
            if let Target::Let(id) = statement.target {
                let first = statement
                    .expr
                    .operands()
                    .first()
                    .map_or(Kind::Float, |&operand| {
                        operand_kind(operand, &visible, &let_kinds)
                    });
                let kind = statement.expr.kind(first);
                let_kinds.push((id, kind));
            }
        }
        visible.extend(let_kinds.into_iter().map(|(id, kind)| (Var::Let(id), kind)));
        visible
    }

    /// Whether any statement reads `var`.
    pub fn reads(&self, var: Var) -> bool {
        self.statements
            .iter()
            .any(|s| s.expr.operands().contains(&Operand::Var(var)))
    }

    /// Statement `index` as a line of `.opt` source (`let v3 = tanh(v2);`).
    pub fn statement_text(&self, index: usize) -> String {
        let statement = &self.statements[index];
        let value = self.expr_text(&statement.expr);
        match statement.target {
            Target::Let(id) => format!("let {} = {value};", self.var_name(Var::Let(id))),
            Target::Param => format!("p = {value};"),
            Target::Grad => format!("g = {value};"),
            Target::State(i) => format!("{} = {value};", self.states[i].name),
        }
    }

    fn var_name(&self, var: Var) -> String {
        match var {
            Var::Param => "p".into(),
            Var::Grad => "g".into(),
            Var::Step => "t".into(),
            Var::Numel => "numel".into(),
            Var::Hyper(i) => self.hypers[i].name.clone(),
            Var::State(i) => self.states[i].name.clone(),
            Var::Let(id) => format!("{}{id}", self.let_prefix),
        }
    }

    /// An operand as `.opt` source.
    pub fn operand_source(&self, operand: Operand) -> String {
        match operand {
            Operand::Var(var) => self.var_name(var),
            Operand::Bool(b) => b.to_string(),
            Operand::Const(x) if x.is_nan() => "(0 / 0)".into(),
            Operand::Const(x) if x == f64::INFINITY => "inf".into(),
            Operand::Const(x) if x == f64::NEG_INFINITY => "(-inf)".into(),
            Operand::Const(x) if x.is_sign_negative() => format!("(-{:?})", -x),
            Operand::Const(x) => format!("{x:?}"),
        }
    }

    fn expr_text(&self, expr: &Expr) -> String {
        let o = |operand: Operand| self.operand_source(operand);
        match *expr {
            Expr::Copy(a) => o(a),
            Expr::Unary(UnaryOp::Neg, a) => format!("-{}", o(a)),
            Expr::Unary(UnaryOp::Not, a) => format!("!{}", o(a)),
            Expr::Unary(op, a) => format!("{}({})", function(Builtin::Unary(op)), o(a)),
            Expr::Binary(op, a, b) => match op.infix_symbol() {
                Some(symbol) => format!("{} {symbol} {}", o(a), o(b)),
                None => format!("{}({}, {})", function(Builtin::Binary(op)), o(a), o(b)),
            },
            Expr::Select(c, a, b) => format!("select({}, {}, {})", o(c), o(a), o(b)),
            Expr::Lerp(a, b, w) => format!("lerp({}, {}, {})", o(a), o(b), o(w)),
            Expr::Reduce(op, scope, a) => {
                format!("{}({})", function(Builtin::Reduce(op, scope)), o(a))
            }
        }
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params: Vec<String> = self
            .hypers
            .iter()
            .map(|h| format!("{} = {}", h.name, h.default))
            .collect();
        writeln!(f, "optimizer {CANDIDATE_NAME}({}) {{", params.join(", "))?;
        for state in &self.states {
            writeln!(
                f,
                "    state {} = {};",
                state.name,
                self.operand_source(state.init)
            )?;
        }
        for index in 0..self.statements.len() {
            writeln!(f, "    {}", self.statement_text(index))?;
        }
        writeln!(f, "}}")
    }
}

/// The kind of an operand, given the kinds of the variables visible so far.
fn operand_kind(operand: Operand, inputs: &[(Var, Kind)], lets: &[(usize, Kind)]) -> Kind {
    match operand {
        Operand::Const(_) => Kind::Float,
        Operand::Bool(_) => Kind::Bool,
        Operand::Var(Var::Let(id)) => lets
            .iter()
            .rev()
            .find(|(let_id, _)| *let_id == id)
            .map_or(Kind::Float, |&(_, kind)| kind),
        Operand::Var(var) => inputs
            .iter()
            .find(|(v, _)| *v == var)
            .map_or(Kind::Float, |&(_, kind)| kind),
    }
}

/// A leaf node as an operand (`None` for operations).
fn leaf_operand(node: &Node) -> Option<Operand> {
    match *node {
        Node::Const(bits) => Some(Operand::Const(f64::from_bits(bits))),
        Node::Bool(b) => Some(Operand::Bool(b)),
        Node::Input(input, _) => Some(Operand::Var(match input {
            Input::Param => Var::Param,
            Input::Grad => Var::Grad,
            Input::Step => Var::Step,
            Input::Numel => Var::Numel,
            Input::Hyper(i) => Var::Hyper(i as usize),
            Input::State(i) => Var::State(i as usize),
            // Refused by `Candidate::from_rule`: the search space is elementwise.
            Input::Rank | Input::Rows | Input::Cols => return None,
        })),
        _ => None,
    }
}

/// An operation node as an expression over the operands `operand` gives
/// (`None` for leaves, which are operands themselves).
fn node_expr(node: &Node, operand: impl Fn(Handle) -> Operand) -> Option<Expr> {
    Some(match *node {
        Node::Unary(op, a) => Expr::Unary(op, operand(a)),
        Node::Binary(op, a, b) => Expr::Binary(op, operand(a), operand(b)),
        Node::Select(c, a, b) => Expr::Select(operand(c), operand(a), operand(b)),
        Node::Lerp(a, b, w) => Expr::Lerp(operand(a), operand(b), operand(w)),
        Node::Reduce(op, scope, a) => Expr::Reduce(op, scope, operand(a)),
        Node::Const(_) | Node::Bool(_) | Node::Input(..) => return None,
        // Refused by `Candidate::from_rule`: the search space is elementwise.
        Node::Gram(..) | Node::MatMul(..) | Node::Transpose(_) => return None,
    })
}

/// A prefix `P` such that no hyperparameter or state is named `P` + digits.
fn let_prefix_avoiding(hypers: &[HyperDecl], states: &[StateDecl]) -> String {
    let names = hypers
        .iter()
        .map(|h| &h.name)
        .chain(states.iter().map(|s| &s.name));
    let clashes = |prefix: &str, name: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut prefix = String::from("v");
    while names.clone().any(|name| clashes(&prefix, name)) {
        prefix.push('_');
    }
    prefix
}

/// The name a built-in function is called by (every operation a
/// statement can hold, except the prefix `-` and `!`, is one).
fn function(builtin: Builtin) -> &'static str {
    builtins::name(builtin).unwrap_or("?")
}
