//! Pruning: statements whose removal does not change the fitness (beyond
//! the tolerance) go, the ones that matter stay, and the result is emitted
//! as `.opt` that compiles to the same behaviour.

mod common;

use common::Quadratic;
use optc_search::program::Candidate;
use optc_search::prune;
use optc_search::reject::{self, Invariances};
use optc_search::Fitness;

/// `rule` pruned at `tolerance` with every rejection check on.
fn pruned(fitness: &Quadratic, rule: &optc_compiler::ir::Rule, tolerance: f64) -> prune::Pruned {
    let candidate = Candidate::from_rule(rule).unwrap();
    prune::prune(
        fitness,
        &mut [(), ()],
        &common::prelude(),
        &candidate,
        tolerance,
        Invariances::default(),
    )
    .unwrap()
}

#[test]
fn pruning_removes_what_does_not_matter_and_keeps_what_does() {
    let prelude = common::prelude();
    let rule = common::compile(
        "optimizer padded(lr = 0.05) {
            let nudged = g + 1e-12;
            let bent = nudged * (1 + 1e-9 * tanh(p));
            p -= lr * bent;
        }",
        "padded",
    );
    let fitness = Quadratic::new();
    let pruned = pruned(&fitness, &rule, 1e-6);
    let text =
        prune::readable(&pruned.candidate, &prelude, "pruned", &["a header".into()]).unwrap();
    println!("{text}");
    assert!(!pruned.removals.is_empty());
    assert!(text.starts_with("// a header\n"), "{text}");
    assert!(!text.contains("tanh"), "{text}");
    assert!(!text.contains("1e-12"), "{text}");
    assert!(text.contains("lr * g") || text.contains("g * lr"), "{text}");
    let before = fitness.score(&mut (), &rule).fitness;
    assert!(pruned.score.fitness >= before - 1e-6);
    let simplified = pruned.simplified_score.value();
    for removal in &pruned.removals {
        assert!((removal.after - simplified).abs() <= 1e-6, "{removal:?}");
    }
    // The step itself cannot go: every removal left costs more than the tolerance.
    let sgd = common::compile(&text, "pruned");
    let plain = common::compile("optimizer s(lr = 0.05) { p -= lr * g; }", "s");
    assert_eq!(
        fitness.score(&mut (), &sgd).fitness,
        fitness.score(&mut (), &plain).fitness
    );
}

/// A search once pruned a program to `p = learning_rate * numel`: the
/// removal of a term `1e-9 * g` changed the score least, and nothing checked
/// that the result still read `g`. Even when every removal is acceptable by
/// score (an infinite tolerance), each pruned program passes rejection.
#[test]
fn pruning_never_yields_a_program_that_rejection_refuses() {
    let prelude = common::prelude();
    let rule = common::compile(
        "optimizer fixed(learning_rate = 0.01) {
            let target = learning_rate * numel;
            let nudge = 1e-9 * g;
            p = target + nudge;
        }",
        "fixed",
    );
    assert!(reject::screen(&rule, Invariances::default()).is_ok());
    let fitness = Quadratic::new();
    let pruned = pruned(&fitness, &rule, f64::INFINITY);
    assert!(!pruned.removals.is_empty());
    let result = pruned.candidate.compile(&prelude).unwrap();
    let text = prune::readable(&pruned.candidate, &prelude, "pruned", &[]).unwrap();
    assert!(reject::depends_on_gradient(&result), "{text}");
    assert!(
        reject::screen(&result, Invariances::default()).is_ok(),
        "{text}"
    );
}
