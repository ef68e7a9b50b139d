//! From a winner to a readable rule, automatically: the algebraic
//! simplifier removes dead statements and dead state and rewrites what it
//! knows (`m / sqrt(m * m)` is `sign(m)`); then statements whose removal
//! changes the fitness by no more than noise are pruned one at a time, the
//! one with the least effect first — the step the Lion paper did by hand. Removing a `let` means reading one
//! of its operands where it was read (`asin(x)` becomes `x`, `a + tiny`
//! becomes `a`); a removal is acceptable when the pruned program still
//! compiles, passes every check of cheap rejection (a removal must not make
//! the update ignore `g`, constant, non-finite or invariance-breaking: an
//! early version pruned a program down to `p = learning_rate * numel`),
//! keeps the funnel status it had, and scores within the
//! tolerance of the simplified program (not of the previous step, so
//! removals cannot drift one tolerance at a time; and not better by more
//! than the tolerance either: a removal that changes the score that much
//! changes what the program does, which is the search's business, not
//! pruning's). The result is emitted as `.opt` with a header recording
//! where it came from.

use optc_compiler::emit;
use optc_compiler::ir::Rule;
use optc_compiler::simplify::{self, Tier};
use optc_compiler::Program;

use crate::fitness::{Fitness, Score};
use crate::program::{Candidate, Operand, Target, Var};
use crate::reject::{self, Invariances};

/// Scores may drop by this much (in normalised task units) for a removal to
/// count as having no effect.
pub const DEFAULT_TOLERANCE: f64 = 0.02;

/// Removal attempts at most (each one is a scoring).
const MAX_ATTEMPTS: usize = 400;

/// One accepted removal.
#[derive(Clone, Debug, PartialEq)]
pub struct Removal {
    /// The statement as it read before (`let v3 = asin(v2);`).
    pub statement: String,
    /// What its readers read instead.
    pub replacement: String,
    pub before: f64,
    pub after: f64,
}

/// A simplified, pruned program.
#[derive(Clone, Debug)]
pub struct Pruned {
    pub candidate: Candidate,
    pub score: Score,
    /// The score after simplification, before pruning.
    pub simplified_score: Score,
    pub removals: Vec<Removal>,
    pub attempts: usize,
}

/// The algebraic simplification of `candidate` in the search's form.
pub fn simplified(candidate: &Candidate, context: &Program) -> Result<Candidate, String> {
    let rule = candidate.compile(context)?;
    Candidate::from_rule(&simplify::simplify(&rule, Tier::Algebraic)).map_err(|e| e.to_string())
}

/// Simplifies `candidate`, then prunes it (see the module documentation);
/// every program on the way passes [`reject::screen`] with `invariances`.
/// Each round's removals are scored together on `workers` (one thread
/// each); the result does not depend on how many there are.
pub fn prune<F: Fitness>(
    fitness: &F,
    workers: &mut [F::Worker],
    context: &Program,
    candidate: &Candidate,
    tolerance: f64,
    invariances: Invariances,
) -> Result<Pruned, String> {
    let mut current = simplified(candidate, context)?;
    let mut score = fitness
        .score_all(workers, &[&current.compile(context)?])
        .remove(0);
    let simplified_score = score.clone();
    let anchor = score.value();
    let mut removals = Vec::new();
    let mut attempts = 0;
    // Each round scores every removal and keeps the acceptable one with the
    // least effect (a first-acceptable order would let whichever statement
    // comes first decide what can go later).
    while attempts < MAX_ATTEMPTS {
        let mut trials: Vec<(usize, Operand, Candidate, Rule)> = Vec::new();
        'statements: for index in 0..current.statements.len() {
            for (replacement, pruned) in bypasses(&current, index) {
                if attempts + trials.len() == MAX_ATTEMPTS {
                    break 'statements;
                }
                let Ok(rule) = pruned.compile(context) else {
                    continue;
                };
                if reject::screen(&rule, invariances).is_ok() {
                    trials.push((index, replacement, pruned, rule));
                }
            }
        }
        attempts += trials.len();
        let rules: Vec<&Rule> = trials.iter().map(|(.., rule)| rule).collect();
        let scores = fitness.score_all(workers, &rules);
        let mut chosen: Option<(Score, Removal, Candidate)> = None;
        for ((index, replacement, pruned, rule), trial) in trials.into_iter().zip(scores) {
            let keeps_funnel = trial.promoted.is_some() || score.promoted.is_none();
            let effect = (trial.value() - anchor).abs();
            let acceptable = keeps_funnel && effect <= tolerance;
            let least = chosen
                .as_ref()
                .is_none_or(|(c, ..)| effect < (c.value() - anchor).abs());
            if acceptable && least {
                let removal = Removal {
                    statement: current.statement_text(index),
                    replacement: current.operand_source(replacement),
                    before: score.value(),
                    after: trial.value(),
                };
                chosen = Some((trial, removal, normalised(&rule).unwrap_or(pruned)));
            }
        }
        let Some((trial, removal, pruned)) = chosen else {
            break;
        };
        removals.push(removal);
        current = pruned;
        score = trial;
    }
    Ok(Pruned {
        candidate: current,
        score,
        simplified_score,
        removals,
        attempts,
    })
}

/// The candidate of a compiled rule, simplified (`None` if it cannot be
/// represented, which simplification never causes).
fn normalised(rule: &Rule) -> Option<Candidate> {
    Candidate::from_rule(&simplify::simplify(rule, Tier::Algebraic)).ok()
}

/// The programs without the `let` at `index`, one per operand of the same
/// kind that can stand in for it (paired with that operand).
fn bypasses(candidate: &Candidate, index: usize) -> Vec<(Operand, Candidate)> {
    let statement = candidate.statements[index];
    let Target::Let(id) = statement.target else {
        return Vec::new();
    };
    let visible = candidate.visible(index + 1);
    let kind_of = |operand: Operand| match operand {
        Operand::Var(var) => visible.iter().find(|(v, _)| *v == var).map(|&(_, k)| k),
        Operand::Const(_) => Some(optc_compiler::ir::Kind::Float),
        Operand::Bool(_) => Some(optc_compiler::ir::Kind::Bool),
    };
    let own_kind = kind_of(Operand::Var(Var::Let(id)));
    let mut seen: Vec<Operand> = Vec::new();
    let mut out = Vec::new();
    for operand in statement.expr.operands() {
        if seen.contains(&operand) || kind_of(operand) != own_kind {
            continue;
        }
        seen.push(operand);
        let mut pruned = candidate.clone();
        pruned.statements.remove(index);
        for later in &mut pruned.statements[index..] {
            for read in later.expr.operands_mut() {
                if *read == Operand::Var(Var::Let(id)) {
                    *read = operand;
                }
            }
        }
        out.push((operand, pruned));
    }
    out
}

/// The `.opt` source of `candidate` as an optimizer called `name`,
/// simplified, preceded by `header` as `//` comment lines.
pub fn readable(
    candidate: &Candidate,
    context: &Program,
    name: &str,
    header: &[String],
) -> Result<String, String> {
    let mut rule = simplify::simplify(&candidate.compile(context)?, Tier::Algebraic);
    rule.name = name.to_string();
    rule.doc.clear();
    let mut out = String::new();
    for line in header {
        if line.is_empty() {
            out.push_str("//\n");
        } else {
            out.push_str("// ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&emit::emit(&rule, context));
    Ok(out)
}
