//! The simplifier: rewrites a rule into a cheaper rule that computes the same
//! step. Differentiated rules (hypergradients, adjoints) and rules written by
//! the evolutionary search are full of `x * 1`, `0 * y`, expanded lerps and
//! state nobody reads; hand-written rules carry a little of the same. The
//! rewrites are data — one line each in [`RULES`], a pattern, a replacement,
//! a side condition and a note — and come in two tiers:
//!
//! * [`Tier::Exact`] rules keep the reference interpreter's results bit for
//!   bit (NaN payloads aside), in f32 and in f64, so they may run on every
//!   user rule. Besides each rule's own condition, the engine refuses an exact
//!   rewrite that would move arithmetic between an element's precision (f32)
//!   and a scalar's (f64): every node a rewrite removes or adds must compute at
//!   the precision of the node it replaces.
//! * [`Tier::Algebraic`] rules (which include the exact ones) are identities
//!   over the reals that may differ at rounding, overflow, underflow, signed
//!   zeros and non-finite points; each rule's note says where. They are for
//!   derived and machine-generated programs.
//!
//! No rewrite makes a rule more expensive: every pattern weighs strictly more
//! than its replacement (which also guarantees termination), and at each site
//! the engine counts what the rewrite removes — nodes still shared elsewhere
//! stay — against what it adds, per element first. Sharing comes from the
//! graph's hash-consing (rebuilding through [`Graph::add`] merges identical
//! nodes), and [`eliminate_dead`] drops nodes no output needs and state slots
//! that never influence `p`.

use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

use optc_grammar::ast::{self, ExprKind};
use optc_grammar::FileId;

use crate::builtins::{self, Builtin};
use crate::interpret;
use crate::ir::{
    BinaryOp, Graph, Handle, Input, Kind, Node, ReduceOp, Rule, Scope, Shape, StateSlot, Type,
    UnaryOp,
};

/// Which rewrites may run. `Exact < Algebraic`: the algebraic tier runs the
/// exact rules too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Exact,
    Algebraic,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Tier::Exact => "exact",
            Tier::Algebraic => "algebraic",
        })
    }
}

/// A side condition on a pattern variable, checked on the operands a match binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The value is never -0 at its own precision (so adding +0 leaves it as
    /// it is): it is non-negative (`abs`, `sqrt` of such, sums of squares,
    /// positive constants, `t`, `numel`, ...) or a sum reduction (f64 sums
    /// start at +0 and never reach -0).
    NeverNegativeZero(&'static str),
    /// Both are constants, so the replacement's arithmetic on them folds.
    Constants(&'static str, &'static str),
    /// A constant ±2^k with |k| <= 126: it and its reciprocal are exact in f32
    /// and f64, so `x / c` and `x * (1 / c)` round the same exact quotient.
    ExactReciprocal(&'static str),
}

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// `"pattern => replacement"`, both in `.opt` expression syntax: names
    /// are pattern variables (a name used twice matches one node) except `t`
    /// and `numel`, which are those inputs; numbers
    /// and `true`/`false` match constants bit for bit (`-0` is minus zero),
    /// operators and built-in calls match nodes; `+ * == != && ||` also match
    /// with their operands swapped.
    Pattern(&'static str),
    /// An operation whose operands are all constants becomes its value,
    /// computed by the interpreter's own f64 arithmetic (such nodes are
    /// scalars, which the interpreter computes in f64).
    FoldConstants,
}

/// One line of the rule table.
#[derive(Clone, Copy, Debug)]
pub struct RewriteRule {
    pub name: &'static str,
    pub tier: Tier,
    pub rewrite: Rewrite,
    pub condition: Option<Condition>,
    /// For an exact rule, why it is exact; for an algebraic one, where its
    /// results differ from the original's.
    pub note: &'static str,
}

const fn rule(
    name: &'static str,
    tier: Tier,
    rewrite: &'static str,
    condition: Option<Condition>,
    note: &'static str,
) -> RewriteRule {
    RewriteRule {
        name,
        tier,
        rewrite: Rewrite::Pattern(rewrite),
        condition,
        note,
    }
}

const fn exact(name: &'static str, rewrite: &'static str, note: &'static str) -> RewriteRule {
    rule(name, Tier::Exact, rewrite, None, note)
}

const fn exact_if(
    name: &'static str,
    rewrite: &'static str,
    condition: Condition,
    note: &'static str,
) -> RewriteRule {
    rule(name, Tier::Exact, rewrite, Some(condition), note)
}

const fn algebraic(name: &'static str, rewrite: &'static str, note: &'static str) -> RewriteRule {
    rule(name, Tier::Algebraic, rewrite, None, note)
}

const fn algebraic_if(
    name: &'static str,
    rewrite: &'static str,
    condition: Condition,
    note: &'static str,
) -> RewriteRule {
    rule(name, Tier::Algebraic, rewrite, Some(condition), note)
}

use Condition::{Constants, ExactReciprocal, NeverNegativeZero};

/// Every rewrite the simplifier knows, tried in this order at each node.
#[rustfmt::skip]
pub const RULES: &[RewriteRule] = &[
    RewriteRule { name: "fold-constants", tier: Tier::Exact, rewrite: Rewrite::FoldConstants, condition: None, note: "evaluated with the interpreter's f64 operations, as it evaluates scalar nodes" },
    exact("mul-one", "x * 1 => x", "x * 1 = x for every x, -0, infinities and NaN included"),
    exact("div-one", "x / 1 => x", "x / 1 = x for every x"),
    exact("sub-zero", "x - 0 => x", "x - (+0) = x + (-0) = x, -0 included"),
    exact("add-minus-zero", "x + -0 => x", "x + (-0) = x, -0 included"),
    exact_if("add-zero", "x + 0 => x", NeverNegativeZero("x"), "x + (+0) = x except for x = -0, excluded by the condition"),
    exact("mul-minus-one", "x * -1 => -x", "multiplying by -1 only flips the sign"),
    exact("div-minus-one", "x / -1 => -x", "dividing by -1 only flips the sign"),
    exact("neg-neg", "--x => x", "negation is exact"),
    exact("sub-neg", "a - -b => a + b", "IEEE defines a - b as a + (-b)"),
    exact("add-neg", "a + -b => a - b", "IEEE defines a - b as a + (-b)"),
    exact("neg-mul-neg", "-a * -b => a * b", "rounding is symmetric in sign"),
    exact("neg-div-neg", "-a / -b => a / b", "rounding is symmetric in sign"),
    exact_if("div-power-of-two", "x / c => x * (1 / c)", ExactReciprocal("c"), "both round the same exact quotient"),
    exact("rsqrt", "1 / sqrt(x) => rsqrt(x)", "the interpreter defines rsqrt(x) as 1 / sqrt(x)"),
    exact("abs-abs", "abs(abs(x)) => abs(x)", "abs is idempotent"),
    exact("abs-neg", "abs(-x) => abs(x)", "abs ignores the sign bit"),
    exact("sign-sign", "sign(sign(x)) => sign(x)", "sign of 1, -1, 0 or NaN is itself"),
    exact("sum-one", "sum(1) => numel", "an f64 sum of n ones is n exactly (n < 2^53)"),
    exact("min-self", "min(x, x) => x", "min of equal operands is that operand"),
    exact("max-self", "max(x, x) => x", "max of equal operands is that operand"),
    exact("select-true", "select(true, a, b) => a", "the condition is constant"),
    exact("select-false", "select(false, a, b) => b", "the condition is constant"),
    exact("select-same", "select(c, a, a) => a", "both branches are one value"),
    exact("select-not", "select(!c, a, b) => select(c, b, a)", "swapping the branches negates the condition"),
    exact("not-not", "!!c => c", "bools are only ever tested for truth"),
    exact("and-true", "c && true => c", "identity of &&"),
    exact("and-false", "c && false => false", "both sides are pure, so nothing is skipped"),
    exact("or-false", "c || false => c", "identity of ||"),
    exact("or-true", "c || true => true", "both sides are pure, so nothing is skipped"),
    exact("and-self", "c && c => c", "&& is idempotent"),
    exact("or-self", "c || c => c", "|| is idempotent"),
    exact("lerp-expanded", "a + w * (b - a) => lerp(a, b, w)", "the interpreter defines lerp(a, b, w) as a + w * (b - a)"),
    exact("lerp-expanded-sub", "a - w * (a - b) => lerp(a, b, w)", "w * (a - b) = -(w * (b - a)) exactly, and a - y = a + (-y)"),
    algebraic("mul-zero", "x * 0 => 0", "was NaN for x = ±inf or NaN, -0 for x < 0"),
    algebraic("zero-div", "0 / x => 0", "was NaN for x = 0 or NaN, -0 for x < 0"),
    algebraic("add-zero-any", "x + 0 => x", "was +0 for x = -0"),
    algebraic("zero-sub", "0 - x => -x", "was +0 (now -0) for x = +0"),
    algebraic("sub-self", "x - x => 0", "was NaN for x = ±inf or NaN"),
    algebraic("div-self", "x / x => 1", "was NaN for x = 0, ±inf or NaN"),
    algebraic("neg-sub", "-(a - b) => b - a", "was -0 (now +0) for a = b"),
    algebraic("add-sub-cancel", "a + (b - a) => b", "rounding of b - a; was NaN for infinite a"),
    algebraic("mul-div-cancel", "a * b / b => a", "rounding and overflow of a * b; was NaN for b = 0, ±inf or NaN"),
    algebraic("div-mul-cancel", "a / b * b => a", "rounding and overflow of a / b; was NaN for b = 0, ±inf or NaN"),
    algebraic("mul-reciprocal", "x * (1 / y) => x / y", "rounding of 1 / y, and its overflow for tiny y"),
    algebraic("reciprocal-reciprocal", "1 / (1 / x) => x", "rounding; overflow of 1 / x for tiny x"),
    algebraic_if("mul-constants", "x * a * b => x * (a * b)", Constants("a", "b"), "rounding of a * b, and its overflow or underflow"),
    algebraic("sqrt-square", "sqrt(x * x) => abs(x)", "overflow or underflow of x * x"),
    algebraic("sqrt-times-sqrt", "sqrt(x) * sqrt(x) => x", "rounding; was NaN for x < 0"),
    algebraic("div-abs", "x / abs(x) => sign(x)", "was NaN for x = ±0 or ±inf"),
    algebraic("abs-div", "abs(x) / x => sign(x)", "was NaN for x = ±0 or ±inf"),
    algebraic("div-sqrt-square", "x / sqrt(x * x) => sign(x)", "was NaN for x = ±0 or ±inf, and off where x * x overflows or underflows"),
    algebraic("lerp-weights", "(1 - w) * a + w * b => lerp(b, a, 1 - w)", "rounding; infinite a or b"),
    algebraic("lerp-same", "lerp(a, a, w) => a", "was NaN for infinite a or w; the sign of a zero a"),
    algebraic("lerp-zero", "lerp(a, b, 0) => a", "was NaN where b - a is infinite or NaN; the sign of a zero a"),
    algebraic("lerp-one", "lerp(a, b, 1) => b", "rounding of a + (b - a); was NaN for infinite a"),
    algebraic("lerp-lerp", "lerp(a, lerp(a, b, u), w) => lerp(a, b, u * w)", "rounding of the inner lerp and of u * w; was infinite (now finite) where the inner lerp overflows, off where u * w overflows or underflows"),
    algebraic("pow-zero", "x ^ 0 => 1", "none in IEEE pow; listed here because Rust does not promise pow's results"),
    algebraic("pow-one", "x ^ 1 => x", "Rust does not promise pow's rounding"),
    algebraic("pow-half", "x ^ 0.5 => sqrt(x)", "pow's rounding; was +0 (now -0) for x = -0, +inf (now NaN) for x = -inf"),
    algebraic("pow-minus-one", "x ^ -1 => 1 / x", "pow's rounding"),
    algebraic("pow-third", "x ^ 0.3333333333333333 => cbrt(x)", "pow's rounding and that of the exponent 1/3 (in f32, 1e-8 |log x| relative); was NaN (now the real cube root) for x < 0, +0 (now -0) for x = -0, +inf (now -inf) for x = -inf"),
    algebraic("cbrt-cube", "cbrt(x * x * x) => x", "rounding, overflow or underflow of x * x * x"),
    algebraic("exp-log", "exp(log(x)) => x", "rounding; was NaN (now x) for x < 0"),
    algebraic("log-exp", "log(exp(x)) => x", "rounding; overflow of exp(x) for x > 88 (f32)"),
];

impl RewriteRule {
    /// The weights of the pattern and of its replacement (see [`Cost`]); the
    /// replacement's arithmetic on constants folds and weighs nothing.
    /// `None` for constant folding, which replaces any operation by a constant.
    pub fn weights(&self) -> Option<(u32, u32)> {
        let compiled = compiled_rules().iter().find(|c| c.rule.name == self.name)?;
        let pattern = compiled.pattern.as_ref()?;
        let constant_vars: Vec<usize> = match pattern.condition {
            Some(CompiledCondition::Constants(a, b)) => vec![a, b],
            Some(CompiledCondition::ExactReciprocal(c)) => vec![c],
            _ => Vec::new(),
        };
        Some((
            pattern.lhs.weight(&constant_vars),
            pattern.rhs.weight(&constant_vars),
        ))
    }
}

/// How expensive a graph is: weighted operations per element (elementwise
/// nodes and reductions, which read every element), then per step or tensor.
/// Ordered per element first. Weights: negation, `!`, `abs`, `select`, `&&`,
/// `||` 1; `+ - * min max`, comparisons, `sign`, `floor` 2; reductions 3;
/// `/`, `sqrt` 4; `rsqrt`, `lerp` 5; `exp log tanh sigmoid cos cbrt` 8; `^` 10.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cost {
    pub per_element: u64,
    pub per_step: u64,
}

impl Cost {
    fn of(op: Op, shape: Shape) -> Cost {
        let weight = u64::from(op.weight());
        if !shape.is_scalar() || matches!(op, Op::Reduce(..)) {
            Cost {
                per_element: weight,
                per_step: 0,
            }
        } else {
            Cost {
                per_element: 0,
                per_step: weight,
            }
        }
    }

    /// The cost of every node of `graph`.
    pub fn of_graph(graph: &Graph) -> Cost {
        graph
            .iter()
            .filter_map(|(handle, node)| {
                Op::of(node).map(|(op, _)| Cost::of(op, graph.ty(handle).shape))
            })
            .fold(Cost::default(), |a, b| a + b)
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, other: Cost) -> Cost {
        Cost {
            per_element: self.per_element + other.per_element,
            per_step: self.per_step + other.per_step,
        }
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/elem + {}/step", self.per_element, self.per_step)
    }
}

/// What [`simplify_with_report`] did to one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub tier: Tier,
    /// How many times each rule fired, in table order; rules that never
    /// fired are left out.
    pub fired: Vec<(&'static str, usize)>,
    /// Nodes and cost of the graph before (dead nodes included) and after.
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub cost_before: Cost,
    pub cost_after: Cost,
    /// State slots removed because they never influence `p`.
    pub removed_states: Vec<String>,
    /// Rewriting passes over the graph; the last changed nothing, unless
    /// the cap of 64 passes was reached.
    pub passes: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tier: {} -> {} nodes, cost {} -> {}",
            self.tier, self.nodes_before, self.nodes_after, self.cost_before, self.cost_after
        )?;
        if !self.removed_states.is_empty() {
            write!(f, "; removed state {}", self.removed_states.join(", "))?;
        }
        if !self.fired.is_empty() {
            let fired: Vec<String> = self
                .fired
                .iter()
                .map(|(name, count)| format!("{name} x{count}"))
                .collect();
            write!(f, "; fired {}", fired.join(", "))?;
        }
        Ok(())
    }
}

/// Simplifies `rule` with the rewrites of `tier` and removes dead nodes and
/// dead state.
pub fn simplify(rule: &Rule, tier: Tier) -> Rule {
    simplify_with_report(rule, tier).0
}

/// [`simplify`] keeping every state slot, dead or not: what runs on users'
/// rules (a slot `p` never reads, like ASGD's average, is still state the
/// user reads) and on rules whose state is an interface (adjoints).
pub fn simplify_keeping_state(rule: &Rule, tier: Tier) -> Rule {
    run(rule, tier, Deadness::KeepState).0
}

/// Passes stop here even if a rewrite still applies. Every rewrite lowers the
/// weight of the expression it rewrites, so passes end on their own; the cap
/// only bounds the time spent on pathological graphs.
const MAX_PASSES: usize = 64;

/// [`simplify`], and what it did.
pub fn simplify_with_report(rule: &Rule, tier: Tier) -> (Rule, Report) {
    run(rule, tier, Deadness::StateToo)
}

/// What dead-code elimination removes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deadness {
    /// Nodes no output needs, and state slots that never influence `p`.
    StateToo,
    /// Only nodes no output (of `p` or of any slot) needs.
    KeepState,
}

fn run(rule: &Rule, tier: Tier, deadness: Deadness) -> (Rule, Report) {
    let eliminate_dead = |rule: &Rule| remove_dead(rule, deadness);
    let mut current = eliminate_dead(rule);
    let mut fired = vec![0usize; RULES.len()];
    let mut passes = 0;
    while passes < MAX_PASSES {
        passes += 1;
        let (next, fired_now) = rewrite_pass(&current, tier, &mut fired);
        current = eliminate_dead(&next);
        if !fired_now {
            break;
        }
    }
    let live: HashSet<&str> = current.states.iter().map(|s| s.name.as_str()).collect();
    let report = Report {
        tier,
        fired: RULES
            .iter()
            .zip(&fired)
            .filter(|(_, &count)| count > 0)
            .map(|(rule, &count)| (rule.name, count))
            .collect(),
        nodes_before: rule.graph.len(),
        nodes_after: current.graph.len(),
        cost_before: Cost::of_graph(&rule.graph),
        cost_after: Cost::of_graph(&current.graph),
        removed_states: rule
            .states
            .iter()
            .filter(|s| !live.contains(s.name.as_str()))
            .map(|s| s.name.clone())
            .collect(),
        passes,
    };
    (current, report)
}

/// Removes every node that no output needs, and every state slot whose value
/// never influences `p` (directly or through a slot that does), with its
/// initialiser. The outputs of `p` and of the remaining slots are unchanged.
pub fn eliminate_dead(rule: &Rule) -> Rule {
    remove_dead(rule, Deadness::StateToo)
}

fn remove_dead(rule: &Rule, deadness: Deadness) -> Rule {
    let (live_nodes, live_states) = liveness(rule, deadness);
    let mut new_index = vec![0u32; rule.states.len()];
    let mut kept = Vec::new();
    for index in 0..rule.states.len() {
        if live_states[index] {
            new_index[index] = kept.len() as u32;
            kept.push(index);
        }
    }
    let mut graph = Graph::new();
    let mut map = vec![Handle::from_index(0); rule.graph.len()];
    for (handle, node) in rule.graph.iter() {
        if !live_nodes[handle.index()] {
            continue;
        }
        let node = match *node {
            Node::Input(Input::State(i), ty) => {
                Node::Input(Input::State(new_index[i as usize]), ty)
            }
            other => other.map_children(|h| map[h.index()]),
        };
        map[handle.index()] = graph.add(node);
    }
    reassemble(rule, graph, &map, &kept)
}

/// Which nodes and state slots influence `p`: nodes reachable from its
/// output, and from the output and initialiser of every slot whose input is
/// (of every slot, under [`Deadness::KeepState`]).
fn liveness(rule: &Rule, deadness: Deadness) -> (Vec<bool>, Vec<bool>) {
    let mut live = vec![false; rule.graph.len()];
    let mut live_states = vec![false; rule.states.len()];
    live[rule.param_out.index()] = true;
    if deadness == Deadness::KeepState {
        for (slot, state) in rule.states.iter().enumerate() {
            live_states[slot] = true;
            live[rule.state_out[slot].index()] = true;
            live[state.init.index()] = true;
        }
    }
    loop {
        for index in (0..rule.graph.len()).rev() {
            if live[index] {
                for child in rule.graph.node(Handle::from_index(index)).children() {
                    live[child.index()] = true;
                }
            }
        }
        let mut grew = false;
        for (handle, node) in rule.graph.iter() {
            if let (true, Node::Input(Input::State(i), _)) = (live[handle.index()], node) {
                let slot = *i as usize;
                if !live_states[slot] {
                    live_states[slot] = true;
                    live[rule.state_out[slot].index()] = true;
                    live[rule.states[slot].init.index()] = true;
                    grew = true;
                }
            }
        }
        if !grew {
            return (live, live_states);
        }
    }
}

/// The rule with `graph` as its graph, outputs and initialisers mapped
/// through `map`, keeping the state slots `kept` (old indices, in order).
fn reassemble(rule: &Rule, graph: Graph, map: &[Handle], kept: &[usize]) -> Rule {
    Rule {
        name: rule.name.clone(),
        doc: rule.doc.clone(),
        hypers: rule.hypers.clone(),
        states: kept
            .iter()
            .map(|&i| StateSlot {
                init: map[rule.states[i].init.index()],
                ..rule.states[i].clone()
            })
            .collect(),
        graph,
        param_out: map[rule.param_out.index()],
        state_out: kept
            .iter()
            .map(|&i| map[rule.state_out[i].index()])
            .collect(),
    }
}

/// A node's operation without its operands, so patterns can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Select,
    Lerp,
    Reduce(ReduceOp, Scope),
    Gram,
    MatMul,
    Transpose,
}

impl Op {
    /// Whether each value of the result depends on the operands' values at
    /// its own position only (no reduction, no matrix product).
    fn is_elementwise(self) -> bool {
        !matches!(self, Op::Reduce(..) | Op::Gram | Op::MatMul | Op::Transpose)
    }

    /// The operation of `node` and its operands; `None` for leaves.
    fn of(node: &Node) -> Option<(Op, Vec<Handle>)> {
        match *node {
            Node::Const(_) | Node::Bool(_) | Node::Input(..) => None,
            Node::Unary(op, a) => Some((Op::Unary(op), vec![a])),
            Node::Binary(op, a, b) => Some((Op::Binary(op), vec![a, b])),
            Node::Select(c, a, b) => Some((Op::Select, vec![c, a, b])),
            Node::Lerp(a, b, w) => Some((Op::Lerp, vec![a, b, w])),
            Node::Reduce(op, scope, a) => Some((Op::Reduce(op, scope), vec![a])),
            Node::Gram(a, b) => Some((Op::Gram, vec![a, b])),
            Node::MatMul(a, b) => Some((Op::MatMul, vec![a, b])),
            Node::Transpose(a) => Some((Op::Transpose, vec![a])),
        }
    }

    /// The node applying this operation to `operands` (as many as it takes).
    fn node(self, operands: &[Handle]) -> Node {
        match self {
            Op::Unary(op) => Node::Unary(op, operands[0]),
            Op::Binary(op) => Node::Binary(op, operands[0], operands[1]),
            Op::Select => Node::Select(operands[0], operands[1], operands[2]),
            Op::Lerp => Node::Lerp(operands[0], operands[1], operands[2]),
            Op::Reduce(op, scope) => Node::Reduce(op, scope, operands[0]),
            Op::Gram => Node::Gram(operands[0], operands[1]),
            Op::MatMul => Node::MatMul(operands[0], operands[1]),
            Op::Transpose => Node::Transpose(operands[0]),
        }
    }

    /// Operations whose operands commute bit for bit (`min` and `max` may
    /// pick either zero of `min(-0, +0)`, so they are left out).
    fn commutes(self) -> bool {
        matches!(
            self,
            Op::Binary(
                BinaryOp::Add
                    | BinaryOp::Mul
                    | BinaryOp::Eq
                    | BinaryOp::Ne
                    | BinaryOp::And
                    | BinaryOp::Or
            )
        )
    }

    /// See [`Cost`].
    fn weight(self) -> u32 {
        match self {
            Op::Unary(UnaryOp::Neg | UnaryOp::Not | UnaryOp::Abs) => 1,
            Op::Unary(UnaryOp::Bf16) => 2,
            Op::Unary(UnaryOp::Sign | UnaryOp::Floor) => 2,
            Op::Unary(UnaryOp::Sqrt) => 4,
            Op::Unary(UnaryOp::Rsqrt) => 5,
            Op::Unary(
                UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Tanh
                | UnaryOp::Sigmoid
                | UnaryOp::Cos
                | UnaryOp::Cbrt,
            ) => 8,
            Op::Binary(BinaryOp::And | BinaryOp::Or) => 1,
            Op::Binary(BinaryOp::Div) => 4,
            Op::Binary(BinaryOp::Pow) => 10,
            Op::Binary(_) => 2,
            Op::Select => 1,
            Op::Lerp => 5,
            Op::Reduce(..) => 3,
            // Per entry: a sum of k products.
            Op::Gram | Op::MatMul => 20,
            Op::Transpose => 1,
        }
    }
}

/// A pattern or replacement, compiled from its `.opt` text.
#[derive(Clone, Debug, PartialEq)]
enum Pattern {
    /// A pattern variable, by index into the rule's variable names.
    Var(usize),
    /// `t` or `numel`.
    Input(Input),
    /// A float constant, by bits.
    Const(u64),
    Bool(bool),
    Apply(Op, Vec<Pattern>),
}

impl Pattern {
    /// Total weight of the operations, not counting those whose operands are
    /// all constants (they fold when the replacement is built).
    fn weight(&self, constant_vars: &[usize]) -> u32 {
        match self {
            Pattern::Var(_) | Pattern::Input(_) | Pattern::Const(_) | Pattern::Bool(_) => 0,
            Pattern::Apply(op, operands) => {
                let own = if self.is_constant(constant_vars) {
                    0
                } else {
                    op.weight()
                };
                own + operands
                    .iter()
                    .map(|p| p.weight(constant_vars))
                    .sum::<u32>()
            }
        }
    }

    fn is_constant(&self, constant_vars: &[usize]) -> bool {
        match self {
            Pattern::Var(i) => constant_vars.contains(i),
            Pattern::Input(_) => false,
            Pattern::Const(_) | Pattern::Bool(_) => true,
            Pattern::Apply(op, _) if !op.is_elementwise() => false,
            Pattern::Apply(_, operands) => operands.iter().all(|p| p.is_constant(constant_vars)),
        }
    }
}

/// The type of the inputs patterns name (`t` and the sizes).
fn input_type(input: Input) -> Type {
    match input.size_name() {
        Some(_) => Type::TENSOR,
        None => Type::GROUP,
    }
}

#[derive(Clone, Copy, Debug)]
enum CompiledCondition {
    NeverNegativeZero(usize),
    Constants(usize, usize),
    ExactReciprocal(usize),
}

struct CompiledPattern {
    lhs: Pattern,
    rhs: Pattern,
    variables: usize,
    condition: Option<CompiledCondition>,
}

struct CompiledRule {
    rule: &'static RewriteRule,
    /// `None` for constant folding.
    pattern: Option<CompiledPattern>,
}

/// The table, compiled once. The table is part of this file, and a test
/// compiles every line, so an error here is a bug in the table itself.
fn compiled_rules() -> &'static [CompiledRule] {
    static COMPILED: OnceLock<Vec<CompiledRule>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        RULES
            .iter()
            .map(|rule| CompiledRule {
                rule,
                pattern: match rule.rewrite {
                    Rewrite::FoldConstants => None,
                    Rewrite::Pattern(text) => Some(
                        compile_pattern(text, rule.condition)
                            .unwrap_or_else(|e| panic!("rewrite rule {}: {e}", rule.name)),
                    ),
                },
            })
            .collect()
    })
}

fn compile_pattern(text: &str, condition: Option<Condition>) -> Result<CompiledPattern, String> {
    let (lhs, rhs) = text
        .split_once("=>")
        .ok_or("expected `pattern => replacement`")?;
    let mut variables: Vec<String> = Vec::new();
    let lhs = pattern_of(&parse(lhs)?, &mut variables, true)?;
    let rhs = pattern_of(&parse(rhs)?, &mut variables, false)?;
    let var = |name: &str| {
        variables
            .iter()
            .position(|v| v == name)
            .ok_or(format!("condition names `{name}`, not in the pattern"))
    };
    let condition = match condition {
        None => None,
        Some(Condition::NeverNegativeZero(x)) => {
            Some(CompiledCondition::NeverNegativeZero(var(x)?))
        }
        Some(Condition::Constants(a, b)) => Some(CompiledCondition::Constants(var(a)?, var(b)?)),
        Some(Condition::ExactReciprocal(c)) => Some(CompiledCondition::ExactReciprocal(var(c)?)),
    };
    Ok(CompiledPattern {
        lhs,
        rhs,
        variables: variables.len(),
        condition,
    })
}

fn parse(text: &str) -> Result<ast::Expr, String> {
    optc_grammar::parse_expr(text.trim(), FileId(0)).map_err(|d| d.message)
}

/// Compiles one side; only the pattern (`binds`) may introduce variables.
fn pattern_of(
    expr: &ast::Expr,
    variables: &mut Vec<String>,
    binds: bool,
) -> Result<Pattern, String> {
    let mut operands = |exprs: &[&ast::Expr]| -> Result<Vec<Pattern>, String> {
        exprs
            .iter()
            .map(|e| pattern_of(e, variables, binds))
            .collect()
    };
    Ok(match &expr.kind {
        ExprKind::Number(value) => Pattern::Const(value.to_bits()),
        ExprKind::Bool(value) => Pattern::Bool(*value),
        ExprKind::Unary(ast::UnaryOp::Neg, operand) => match operand.kind {
            ExprKind::Number(value) => Pattern::Const((-value).to_bits()),
            _ => Pattern::Apply(Op::Unary(UnaryOp::Neg), operands(&[operand])?),
        },
        ExprKind::Unary(ast::UnaryOp::Not, operand) => {
            Pattern::Apply(Op::Unary(UnaryOp::Not), operands(&[operand])?)
        }
        ExprKind::Binary(op, a, b) => {
            Pattern::Apply(Op::Binary(binary_op(*op)), operands(&[a, b])?)
        }
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => Pattern::Apply(Op::Select, operands(&[cond, then, otherwise])?),
        ExprKind::Name(name) if name == "t" => Pattern::Input(Input::Step),
        ExprKind::Name(name) => match (Input::size(name), variables.iter().position(|v| v == name))
        {
            (Some(size), _) => Pattern::Input(size),
            (None, Some(index)) => Pattern::Var(index),
            (None, None) if binds => {
                variables.push(name.clone());
                Pattern::Var(variables.len() - 1)
            }
            (None, None) => return Err(format!("`{name}` is not bound by the pattern")),
        },
        ExprKind::Call { func, args } => {
            let op = match builtins::lookup(&func.name, args.len()) {
                Some(Builtin::Unary(op)) => Op::Unary(op),
                Some(Builtin::Binary(op)) => Op::Binary(op),
                Some(Builtin::Select) => Op::Select,
                Some(Builtin::Lerp) => Op::Lerp,
                Some(Builtin::Reduce(op, scope)) => Op::Reduce(op, scope),
                _ => return Err(format!("`{}` is not a primitive operation", func.name)),
            };
            let exprs: Vec<&ast::Expr> = args.iter().map(|a| &a.value).collect();
            Pattern::Apply(op, operands(&exprs)?)
        }
    })
}

fn binary_op(op: ast::BinaryOp) -> BinaryOp {
    match op {
        ast::BinaryOp::Add => BinaryOp::Add,
        ast::BinaryOp::Sub => BinaryOp::Sub,
        ast::BinaryOp::Mul => BinaryOp::Mul,
        ast::BinaryOp::Div => BinaryOp::Div,
        ast::BinaryOp::Pow => BinaryOp::Pow,
        ast::BinaryOp::Eq => BinaryOp::Eq,
        ast::BinaryOp::Ne => BinaryOp::Ne,
        ast::BinaryOp::Lt => BinaryOp::Lt,
        ast::BinaryOp::Le => BinaryOp::Le,
        ast::BinaryOp::Gt => BinaryOp::Gt,
        ast::BinaryOp::Ge => BinaryOp::Ge,
        ast::BinaryOp::And => BinaryOp::And,
        ast::BinaryOp::Or => BinaryOp::Or,
    }
}

/// What is known about a node's values.
#[derive(Clone, Copy, Debug, Default)]
struct Facts {
    /// Every value is +0, positive or NaN — still so after rounding to f32.
    nonnegative: bool,
    /// No value is -0 at the node's own precision.
    never_negative_zero: bool,
}

/// Elements compute in f32 (or f64 in checking mode), scalars in f64.
fn precision(shape: Shape) -> bool {
    !shape.is_scalar()
}

/// A graph being built, with the facts known about each of its nodes.
#[derive(Default)]
struct Builder {
    graph: Graph,
    facts: Vec<Facts>,
}

impl Builder {
    fn add(&mut self, node: Node) -> Handle {
        let count = self.graph.len();
        let handle = self.graph.add(node);
        if handle.index() == count {
            let facts = self.derive(handle);
            self.facts.push(facts);
        }
        handle
    }

    /// Adds `op` applied to `operands`, folded to a constant when they all are.
    fn apply(&mut self, op: Op, operands: &[Handle]) -> Handle {
        let node = op.node(operands);
        match fold(&self.graph, &node) {
            Some(constant) => self.add(constant),
            None => self.add(node),
        }
    }

    fn derive(&self, handle: Handle) -> Facts {
        let graph = &self.graph;
        let nonnegative = |h: Handle| self.facts[h.index()].nonnegative;
        // Never -0 once read at this node's precision.
        let never_negative_zero = |h: Handle| {
            let facts = self.facts[h.index()];
            facts.nonnegative
                || (facts.never_negative_zero
                    && precision(graph.ty(h).shape) == precision(graph.ty(handle).shape))
        };
        let nonnegative_here = match *graph.node(handle) {
            Node::Const(bits) => {
                let value = f64::from_bits(bits);
                value.is_nan() || value > 0.0 || bits == 0
            }
            Node::Bool(_) => true,
            Node::Input(input, _) => input == Input::Step || input.size_name().is_some(),
            Node::Unary(op, a) => match op {
                UnaryOp::Abs | UnaryOp::Exp | UnaryOp::Sigmoid | UnaryOp::Not => true,
                UnaryOp::Sqrt
                | UnaryOp::Rsqrt
                | UnaryOp::Floor
                | UnaryOp::Tanh
                | UnaryOp::Sign
                | UnaryOp::Cbrt
                | UnaryOp::Bf16 => nonnegative(a),
                UnaryOp::Neg | UnaryOp::Log | UnaryOp::Cos => false,
            },
            Node::Binary(op, a, b) => match op {
                BinaryOp::Mul if a == b => true,
                BinaryOp::Add | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Min | BinaryOp::Max => {
                    nonnegative(a) && nonnegative(b)
                }
                BinaryOp::Pow => nonnegative(a),
                BinaryOp::Sub => false,
                _ => true,
            },
            Node::Select(_, a, b) => nonnegative(a) && nonnegative(b),
            Node::Lerp(..) => false,
            Node::Reduce(op, _, a) => op != ReduceOp::Max && nonnegative(a),
            Node::Gram(..) | Node::MatMul(..) | Node::Transpose(_) => false,
        };
        let never_negative_zero_here = nonnegative_here
            || match *graph.node(handle) {
                Node::Const(bits) => bits != (-0.0f64).to_bits(),
                Node::Unary(UnaryOp::Sign, _) | Node::Reduce(ReduceOp::Sum, _, _) => true,
                Node::Unary(UnaryOp::Sqrt | UnaryOp::Cbrt, a) => never_negative_zero(a),
                Node::Binary(BinaryOp::Add, a, b) => {
                    never_negative_zero(a) || never_negative_zero(b)
                }
                Node::Select(_, a, b) => never_negative_zero(a) && never_negative_zero(b),
                _ => false,
            };
        Facts {
            nonnegative: nonnegative_here,
            never_negative_zero: never_negative_zero_here,
        }
    }
}

/// The constant `node` computes when its operands are all constants,
/// evaluated exactly as the interpreter evaluates scalar nodes.
fn fold(graph: &Graph, node: &Node) -> Option<Node> {
    let (op, operands) = Op::of(node)?;
    if !op.is_elementwise() {
        return None;
    }
    let values: Vec<f64> = operands
        .iter()
        .map(|&h| graph.node(h).constant_value())
        .collect::<Option<_>>()?;
    let value = match op {
        Op::Unary(op) => interpret::unary(op, values[0]),
        Op::Binary(op) => interpret::binary(op, values[0], values[1]),
        Op::Select => interpret::select(values[0], values[1], values[2]),
        Op::Lerp => interpret::lerp(values[0], values[1], values[2]),
        Op::Reduce(..) | Op::Gram | Op::MatMul | Op::Transpose => return None,
    };
    let is_bool = match op {
        Op::Unary(op) => op == UnaryOp::Not,
        Op::Binary(op) => op.is_comparison() || op.is_logical(),
        Op::Select => graph.ty(operands[1]).kind == Kind::Bool,
        Op::Lerp | Op::Reduce(..) | Op::Gram | Op::MatMul | Op::Transpose => false,
    };
    Some(if is_bool {
        Node::Bool(value != 0.0)
    } else {
        Node::constant(value)
    })
}

/// A match of a pattern: what each variable is bound to, and the matched
/// operation nodes, root first, parents before their operands.
struct Match {
    bindings: Vec<Option<Handle>>,
    matched: Vec<Handle>,
}

/// Calls `accept` on each way `goals` (pattern, old node) match together
/// until it returns true; returns whether it did. Operations match in the old
/// graph, constants in the new one (so a constant folded earlier in this pass
/// already matches).
fn search(
    pass: &Pass,
    goals: &[(&Pattern, Handle)],
    found: &mut Match,
    accept: &mut dyn FnMut(&Match) -> bool,
) -> bool {
    let Some((&(pattern, handle), rest)) = goals.split_first() else {
        return accept(found);
    };
    let image = || *pass.new.graph.node(pass.map[handle.index()]);
    match pattern {
        Pattern::Var(index) => match found.bindings[*index] {
            Some(bound) => bound == handle && search(pass, rest, found, accept),
            None => {
                found.bindings[*index] = Some(handle);
                let accepted = search(pass, rest, found, accept);
                found.bindings[*index] = None;
                accepted
            }
        },
        Pattern::Input(input) => {
            matches!(pass.old.node(handle), Node::Input(i, _) if i == input)
                && search(pass, rest, found, accept)
        }
        Pattern::Const(bits) => image() == Node::Const(*bits) && search(pass, rest, found, accept),
        Pattern::Bool(value) => image() == Node::Bool(*value) && search(pass, rest, found, accept),
        Pattern::Apply(op, operand_patterns) => {
            let Some((node_op, operands)) = Op::of(pass.old.node(handle)) else {
                return false;
            };
            if node_op != *op {
                return false;
            }
            let orders: &[[usize; 3]] = if op.commutes() {
                &[[0, 1, 2], [1, 0, 2]]
            } else {
                &[[0, 1, 2]]
            };
            found.matched.push(handle);
            let accepted = orders.iter().any(|order| {
                let mut next: Vec<(&Pattern, Handle)> = operand_patterns
                    .iter()
                    .zip(order)
                    .map(|(p, &i)| (p, operands[i]))
                    .collect();
                next.extend_from_slice(rest);
                search(pass, &next, found, accept)
            });
            found.matched.pop();
            accepted
        }
    }
}

/// One bottom-up pass: each node of `rule` is matched against the table in
/// the old graph and rebuilt, rewritten or not, into a new graph. Returns the
/// new rule and whether anything fired (counted into `fired`).
fn rewrite_pass(rule: &Rule, tier: Tier, fired: &mut [usize]) -> (Rule, bool) {
    let uses = use_counts(rule);
    let mut pass = Pass {
        old: &rule.graph,
        uses: &uses,
        tier,
        new: Builder::default(),
        map: Vec::with_capacity(rule.graph.len()),
    };
    let mut any = false;
    for (handle, node) in rule.graph.iter() {
        let image = match pass.rewrite(handle) {
            Some((rule_index, image)) => {
                fired[rule_index] += 1;
                any = true;
                image
            }
            None => {
                let node = node.map_children(|h| pass.map[h.index()]);
                pass.new.add(node)
            }
        };
        pass.map.push(image);
    }
    let kept: Vec<usize> = (0..rule.states.len()).collect();
    let map = pass.map;
    (reassemble(rule, pass.new.graph, &map, &kept), any)
}

/// How many times each node is read: as an operand (once per operand slot),
/// as an output or as a state's initialiser.
fn use_counts(rule: &Rule) -> Vec<u32> {
    let mut uses = vec![0u32; rule.graph.len()];
    for (_, node) in rule.graph.iter() {
        for child in node.children() {
            uses[child.index()] += 1;
        }
    }
    let roots = std::iter::once(rule.param_out)
        .chain(rule.state_out.iter().copied())
        .chain(rule.states.iter().map(|s| s.init));
    for root in roots {
        uses[root.index()] += 1;
    }
    uses
}

struct Pass<'a> {
    old: &'a Graph,
    uses: &'a [u32],
    tier: Tier,
    new: Builder,
    /// The image in the new graph of each old node processed so far.
    map: Vec<Handle>,
}

impl Pass<'_> {
    /// The first rule of the tier that applies at `handle`: its index and the
    /// rewritten node in the new graph.
    fn rewrite(&mut self, handle: Handle) -> Option<(usize, Handle)> {
        for (index, compiled) in compiled_rules().iter().enumerate() {
            if compiled.rule.tier > self.tier {
                continue;
            }
            let image = match &compiled.pattern {
                None => {
                    let node = self.old.node(handle).map_children(|h| self.map[h.index()]);
                    fold(&self.new.graph, &node).map(|constant| self.new.add(constant))
                }
                Some(pattern) => self.apply(pattern, handle),
            };
            if let Some(image) = image {
                return Some((index, image));
            }
        }
        None
    }

    fn apply(&mut self, pattern: &CompiledPattern, root: Handle) -> Option<Handle> {
        let mut found = Match {
            bindings: vec![None; pattern.variables],
            matched: Vec::new(),
        };
        let mut accepted = None;
        let this = &*self;
        search(
            this,
            &[(&pattern.lhs, root)],
            &mut found,
            &mut |m: &Match| match this.check(pattern, m) {
                Some(a) => {
                    accepted = Some(a);
                    true
                }
                None => false,
            },
        );
        let bindings = accepted?;
        Some(self.build(&pattern.rhs, &bindings))
    }

    /// Whether a match may be rewritten: its condition holds, it costs no
    /// more than it saves, and (exact tier) it keeps every computation at the
    /// precision of the node it replaces. Returns the bindings in the new graph.
    fn check(&self, pattern: &CompiledPattern, m: &Match) -> Option<Vec<Handle>> {
        let bindings: Vec<Handle> = m
            .bindings
            .iter()
            .map(|b| b.map(|h| self.map[h.index()]))
            .collect::<Option<_>>()?;
        if let Some(condition) = pattern.condition {
            if !self.holds(condition, &bindings) {
                return None;
            }
        }
        let root = m.matched[0];
        let mut new_shapes = Vec::new();
        let (result_shape, _, added) = self.plan(&pattern.rhs, &bindings, &mut new_shapes);
        if added > self.saved(m) {
            return None;
        }
        if self.tier == Tier::Exact {
            let root_precision = precision(self.old.ty(root).shape);
            let same = m
                .matched
                .iter()
                .map(|&h| self.old.ty(h).shape)
                .chain(new_shapes)
                .chain([result_shape])
                .all(|shape| precision(shape) == root_precision);
            if !same {
                return None;
            }
        }
        Some(bindings)
    }

    fn holds(&self, condition: CompiledCondition, bindings: &[Handle]) -> bool {
        let constant = |h: Handle| match *self.new.graph.node(h) {
            Node::Const(bits) => Some(f64::from_bits(bits)),
            _ => None,
        };
        match condition {
            CompiledCondition::NeverNegativeZero(x) => {
                self.new.facts[bindings[x].index()].never_negative_zero
            }
            CompiledCondition::Constants(a, b) => {
                constant(bindings[a]).is_some() && constant(bindings[b]).is_some()
            }
            CompiledCondition::ExactReciprocal(c) => constant(bindings[c]).is_some_and(|value| {
                let magnitude = value.abs();
                magnitude.is_normal()
                    && magnitude.to_bits() & ((1u64 << 52) - 1) == 0
                    && (2f64.powi(-126)..=2f64.powi(126)).contains(&magnitude)
            }),
        }
    }

    /// What the matched nodes that disappear cost: the root, and each matched
    /// operand all of whose reads come from disappearing matched nodes.
    fn saved(&self, m: &Match) -> Cost {
        let mut gone: Vec<Handle> = Vec::new();
        for &handle in &m.matched {
            if gone.contains(&handle) {
                continue;
            }
            let reads_from_gone = gone
                .iter()
                .flat_map(|&parent| self.old.node(parent).children())
                .filter(|&child| child == handle)
                .count() as u32;
            if gone.is_empty() || reads_from_gone >= self.uses[handle.index()] {
                gone.push(handle);
            }
        }
        gone.iter()
            .filter_map(|&h| {
                Op::of(self.old.node(h)).map(|(op, _)| Cost::of(op, self.old.ty(h).shape))
            })
            .fold(Cost::default(), |a, b| a + b)
    }

    /// The shape the replacement will have, whether it is a constant, and the
    /// cost of the nodes it adds (whose shapes go to `new_shapes`), without
    /// building it.
    fn plan(
        &self,
        pattern: &Pattern,
        bindings: &[Handle],
        new_shapes: &mut Vec<Shape>,
    ) -> (Shape, bool, Cost) {
        match pattern {
            Pattern::Var(index) => {
                let handle = bindings[*index];
                let constant =
                    matches!(self.new.graph.node(handle), Node::Const(_) | Node::Bool(_));
                (self.new.graph.ty(handle).shape, constant, Cost::default())
            }
            Pattern::Input(input) => (input_type(*input).shape, false, Cost::default()),
            Pattern::Const(_) | Pattern::Bool(_) => (Shape::Group, true, Cost::default()),
            Pattern::Apply(op, operands) => {
                let mut shape = Shape::Group;
                let mut constant = op.is_elementwise();
                let mut cost = Cost::default();
                for operand in operands {
                    let (s, c, k) = self.plan(operand, bindings, new_shapes);
                    // Replacements are elementwise or reductions: shapes join.
                    shape = shape.join(s).unwrap_or(Shape::Elem);
                    constant &= c;
                    cost = cost + k;
                }
                if let Op::Reduce(_, scope) = op {
                    shape = scope.shape();
                }
                if !constant {
                    new_shapes.push(shape);
                    cost = cost + Cost::of(*op, shape);
                }
                (shape, constant, cost)
            }
        }
    }

    fn build(&mut self, pattern: &Pattern, bindings: &[Handle]) -> Handle {
        match pattern {
            Pattern::Var(index) => bindings[*index],
            Pattern::Input(input) => self.new.add(Node::Input(*input, input_type(*input))),
            Pattern::Const(bits) => self.new.add(Node::Const(*bits)),
            Pattern::Bool(value) => self.new.add(Node::Bool(*value)),
            Pattern::Apply(op, operands) => {
                let operands: Vec<Handle> =
                    operands.iter().map(|p| self.build(p, bindings)).collect();
                self.new.apply(*op, &operands)
            }
        }
    }
}
