//! Mutations of candidates, as in Chen et al. (2023): insert a statement,
//! delete one, modify an argument or an operator, perturb a constant by a
//! factor 2^N(0,1). Operands are drawn by kind (float or bool) from the
//! variables visible at the statement, so most mutants type-check; each one
//! is still compiled, and one the checker rejects is discarded and another
//! drawn, so a [`Mutant`] is always a well-typed program.

use optc_compiler::ir::{BinaryOp, Kind, ReduceOp, Rule, Scope, UnaryOp};
use std::sync::Arc;

use optc_compiler::Program;
use serde::{Deserialize, Serialize};

use crate::program::{Candidate, Expr, Operand, Statement, Target, Var, MAX_STATEMENTS};
use crate::rng::Rng;

/// The operators a mutation draws from, by family: an operator is only
/// replaced by another of its family, so operand kinds stay right. `cbrt`
/// is not drawn: the unary family is the set the searches of
/// docs/discoveries.md ran with, and a longer list would change the draws
/// of every seeded search. A warm start that holds `cbrt` keeps it until a
/// mutation replaces it.
const FLOAT_UNARY: &[UnaryOp] = &[
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Sign,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Cos,
    UnaryOp::Floor,
];
const ARITHMETIC: &[BinaryOp] = &[
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Pow,
    BinaryOp::Min,
    BinaryOp::Max,
];
const COMPARISONS: &[BinaryOp] = &[
    BinaryOp::Eq,
    BinaryOp::Ne,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Gt,
    BinaryOp::Ge,
];
const LOGICAL: &[BinaryOp] = &[BinaryOp::And, BinaryOp::Or];
const REDUCTIONS: &[(ReduceOp, Scope)] = &[
    (ReduceOp::Sum, Scope::Tensor),
    (ReduceOp::Max, Scope::Tensor),
    (ReduceOp::Min, Scope::Tensor),
    (ReduceOp::Sum, Scope::Group),
    (ReduceOp::Max, Scope::Group),
    (ReduceOp::Min, Scope::Group),
];
/// Constants a new operand may be, before any perturbation.
const FRESH_CONSTANTS: &[f64] = &[0.5, 1.0, 2.0, 0.1, 0.9, 0.999, 1e-8];

/// Probability that a new float operand is a constant rather than a variable.
const CONSTANT_OPERAND_PROBABILITY: f64 = 0.2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MutationKind {
    Insert,
    Delete,
    ModifyArgument,
    ModifyOperator,
    PerturbConstant,
}

const KINDS: [MutationKind; 5] = [
    MutationKind::Insert,
    MutationKind::Delete,
    MutationKind::ModifyArgument,
    MutationKind::ModifyOperator,
    MutationKind::PerturbConstant,
];

/// Relative frequencies of the mutations (the paper's insert : delete :
/// modify is 1 : 1 : 1; here modify is split between arguments, operators
/// and constants).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MutationWeights {
    pub insert: f64,
    pub delete: f64,
    pub modify_argument: f64,
    pub modify_operator: f64,
    pub perturb_constant: f64,
}

impl Default for MutationWeights {
    fn default() -> MutationWeights {
        MutationWeights {
            insert: 1.0,
            delete: 1.0,
            modify_argument: 0.4,
            modify_operator: 0.3,
            perturb_constant: 0.3,
        }
    }
}

impl MutationWeights {
    fn as_array(&self) -> [f64; 5] {
        [
            self.insert,
            self.delete,
            self.modify_argument,
            self.modify_operator,
            self.perturb_constant,
        ]
    }
}

/// A well-typed child: its program, its compiled rule and how it was made.
#[derive(Clone, Debug)]
pub struct Mutant {
    pub candidate: Candidate,
    pub rule: Rule,
    pub kind: MutationKind,
}

/// Draws mutants of candidates, compiling each in `context`.
#[derive(Clone, Debug)]
pub struct Mutator {
    pub context: Arc<Program>,
    pub weights: MutationWeights,
    /// Draws per call before giving up (each failed draw is a mutation that
    /// did not apply or did not type-check).
    pub max_attempts: usize,
}

impl Mutator {
    pub fn new(context: Arc<Program>, weights: MutationWeights) -> Mutator {
        Mutator {
            context,
            weights,
            max_attempts: 32,
        }
    }

    /// A well-typed mutant of `parent`, or `None` when no draw of
    /// `max_attempts` gave one (never an ill-typed program).
    pub fn mutate(&self, parent: &Candidate, rng: &mut Rng) -> Option<Mutant> {
        for _ in 0..self.max_attempts {
            let kind = KINDS[rng.weighted(&self.weights.as_array())?];
            let Some(candidate) = apply(kind, parent, rng) else {
                continue;
            };
            if let Ok(rule) = candidate.compile(&self.context) {
                return Some(Mutant {
                    candidate,
                    rule,
                    kind,
                });
            }
        }
        None
    }
}

/// One mutation of `kind`, unchecked; `None` where it does not apply or
/// would change nothing (an operand or operator replaced by itself).
pub fn apply(kind: MutationKind, parent: &Candidate, rng: &mut Rng) -> Option<Candidate> {
    let mut child = parent.clone();
    match kind {
        MutationKind::Insert => insert(&mut child, rng)?,
        MutationKind::Delete => delete(&mut child, rng)?,
        MutationKind::ModifyArgument => modify_argument(&mut child, rng)?,
        MutationKind::ModifyOperator => modify_operator(&mut child, rng)?,
        MutationKind::PerturbConstant => perturb_constant(&mut child, rng)?,
    }
    (child != *parent).then_some(child)
}

fn insert(candidate: &mut Candidate, rng: &mut Rng) -> Option<()> {
    if candidate.statements.len() >= MAX_STATEMENTS {
        return None;
    }
    let index = rng.below(candidate.statements.len() + 1);
    let visible = candidate.visible(index);
    let mut targets = vec![
        (Target::Let(candidate.next_let), 4.0),
        (Target::Param, 2.0),
        (Target::Grad, 1.0),
    ];
    targets.extend((0..candidate.states.len()).map(|i| (Target::State(i), 2.0)));
    let weights: Vec<f64> = targets.iter().map(|&(_, w)| w).collect();
    let target = rng
        .weighted(&weights)
        .map_or(Target::Let(candidate.next_let), |i| targets[i].0);
    let float_only = !matches!(target, Target::Let(_));
    let expr = random_expr(&visible, float_only, rng);
    if let Target::Let(_) = target {
        candidate.next_let += 1;
    }
    candidate
        .statements
        .insert(index, Statement { target, expr });
    Some(())
}

/// Removes a statement; reads of a removed `let` are redirected to another
/// variable of its kind visible there.
fn delete(candidate: &mut Candidate, rng: &mut Rng) -> Option<()> {
    if candidate.statements.is_empty() {
        return None;
    }
    let index = rng.below(candidate.statements.len());
    let removed = candidate.statements.remove(index);
    if let Target::Let(id) = removed.target {
        let removed_var = Operand::Var(Var::Let(id));
        if candidate.reads(Var::Let(id)) {
            let visible = candidate.visible(index);
            let kind = removed
                .expr
                .kind(first_operand_kind(&removed.expr, &visible));
            let replacement = random_operand(&visible, kind, rng);
            for statement in &mut candidate.statements[index..] {
                for operand in statement.expr.operands_mut() {
                    if *operand == removed_var {
                        *operand = replacement;
                    }
                }
            }
        }
    }
    Some(())
}

fn modify_argument(candidate: &mut Candidate, rng: &mut Rng) -> Option<()> {
    let index = rng.below(candidate.statements.len());
    let visible = candidate.visible(index);
    let statement = candidate.statements.get_mut(index)?;
    let kinds = match statement.expr {
        Expr::Copy(a) => vec![kind_of(a, &visible)],
        expr => expr.operand_kinds(),
    };
    let position = rng.below(kinds.len());
    let replacement = random_operand(&visible, kinds[position], rng);
    *statement.expr.operands_mut()[position] = replacement;
    Some(())
}

fn modify_operator(candidate: &mut Candidate, rng: &mut Rng) -> Option<()> {
    let index = rng.below(candidate.statements.len());
    let statement = candidate.statements.get_mut(index)?;
    statement.expr = match statement.expr {
        Expr::Copy(a) => Expr::Unary(*rng.choose(FLOAT_UNARY)?, a),
        Expr::Unary(UnaryOp::Not, _) | Expr::Select(..) => return None,
        Expr::Unary(_, a) => Expr::Unary(*rng.choose(FLOAT_UNARY)?, a),
        Expr::Binary(op, a, b) => {
            let family = [ARITHMETIC, COMPARISONS, LOGICAL]
                .into_iter()
                .find(|family| family.contains(&op))?;
            Expr::Binary(*rng.choose(family)?, a, b)
        }
        Expr::Lerp(a, b, _) => Expr::Binary(*rng.choose(ARITHMETIC)?, a, b),
        Expr::Reduce(_, _, a) => {
            let &(op, scope) = rng.choose(REDUCTIONS)?;
            Expr::Reduce(op, scope, a)
        }
    };
    Some(())
}

/// Where a constant lives in a candidate.
enum ConstantSite {
    HyperDefault(usize),
    StateInit(usize),
    Operand { statement: usize, position: usize },
}

/// Multiplies one nonzero constant (of a statement, a state's initial value,
/// or a numeric hyperparameter default) by 2^N(0,1).
fn perturb_constant(candidate: &mut Candidate, rng: &mut Rng) -> Option<()> {
    let perturbable =
        |operand: &Operand| matches!(*operand, Operand::Const(x) if x.is_finite() && x != 0.0);
    let mut sites = Vec::new();
    for (i, hyper) in candidate.hypers.iter().enumerate() {
        let number = hyper.default.trim().parse::<f64>().ok().map(Operand::Const);
        if hyper.kind == Kind::Float && number.as_ref().is_some_and(perturbable) {
            sites.push(ConstantSite::HyperDefault(i));
        }
    }
    for (i, state) in candidate.states.iter().enumerate() {
        if perturbable(&state.init) {
            sites.push(ConstantSite::StateInit(i));
        }
    }
    for (statement, s) in candidate.statements.iter().enumerate() {
        for (position, operand) in s.expr.operands().iter().enumerate() {
            if perturbable(operand) {
                sites.push(ConstantSite::Operand {
                    statement,
                    position,
                });
            }
        }
    }
    let factor = rng.normal().exp2();
    let scale = |operand: &mut Operand| {
        if let Operand::Const(x) = operand {
            *x *= factor;
        }
    };
    match *rng.choose(&sites)? {
        ConstantSite::HyperDefault(i) => {
            let hyper = &mut candidate.hypers[i];
            let value = hyper.default.trim().parse::<f64>().ok()? * factor;
            hyper.default = format!("{value:?}");
        }
        ConstantSite::StateInit(i) => scale(&mut candidate.states[i].init),
        ConstantSite::Operand {
            statement,
            position,
        } => scale(candidate.statements[statement].expr.operands_mut()[position]),
    }
    Some(())
}

/// A random expression over `visible`; a float one when `float_only`.
fn random_expr(visible: &[(Var, Kind)], float_only: bool, rng: &mut Rng) -> Expr {
    let has_bool = visible.iter().any(|&(_, kind)| kind == Kind::Bool);
    let bool_weight = if float_only { 0.0 } else { 0.5 };
    let select_weight = if has_bool { 0.5 } else { 0.0 };
    // unary, arithmetic, lerp, reduction, copy, comparison, select
    let weights = [3.0, 4.0, 1.0, 1.0, 0.5, bool_weight, select_weight];
    let float = |rng: &mut Rng| random_operand(visible, Kind::Float, rng);
    match rng.weighted(&weights).unwrap_or(1) {
        0 => Expr::Unary(
            *rng.choose(FLOAT_UNARY).unwrap_or(&UnaryOp::Neg),
            float(rng),
        ),
        2 => Expr::Lerp(float(rng), float(rng), float(rng)),
        3 => {
            let &(op, scope) = rng.choose(REDUCTIONS).unwrap_or(&REDUCTIONS[0]);
            Expr::Reduce(op, scope, float(rng))
        }
        4 => Expr::Copy(float(rng)),
        5 => Expr::Binary(
            *rng.choose(COMPARISONS).unwrap_or(&BinaryOp::Lt),
            float(rng),
            float(rng),
        ),
        6 => Expr::Select(
            random_operand(visible, Kind::Bool, rng),
            float(rng),
            float(rng),
        ),
        _ => Expr::Binary(
            *rng.choose(ARITHMETIC).unwrap_or(&BinaryOp::Add),
            float(rng),
            float(rng),
        ),
    }
}

/// A visible variable of `kind`, or (sometimes, and always when none is
/// visible) a constant of that kind.
fn random_operand(visible: &[(Var, Kind)], kind: Kind, rng: &mut Rng) -> Operand {
    let vars: Vec<Var> = visible
        .iter()
        .filter(|&&(_, k)| k == kind)
        .map(|&(v, _)| v)
        .collect();
    let constant = |rng: &mut Rng| match kind {
        Kind::Float => Operand::Const(*rng.choose(FRESH_CONSTANTS).unwrap_or(&1.0)),
        Kind::Bool => Operand::Bool(rng.below(2) == 1),
    };
    if vars.is_empty() || (kind == Kind::Float && rng.unit() < CONSTANT_OPERAND_PROBABILITY) {
        return constant(rng);
    }
    rng.choose(&vars)
        .map_or_else(|| constant(rng), |&var| Operand::Var(var))
}

fn kind_of(operand: Operand, visible: &[(Var, Kind)]) -> Kind {
    match operand {
        Operand::Const(_) => Kind::Float,
        Operand::Bool(_) => Kind::Bool,
        Operand::Var(var) => visible
            .iter()
            .rev()
            .find(|&&(v, _)| v == var)
            .map_or(Kind::Float, |&(_, kind)| kind),
    }
}

fn first_operand_kind(expr: &Expr, visible: &[(Var, Kind)]) -> Kind {
    expr.operands()
        .first()
        .map_or(Kind::Float, |&operand| kind_of(operand, visible))
}
