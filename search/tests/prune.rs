//! Pruning: statements whose removal does not change the fitness (beyond
//! the tolerance) go, the ones that matter stay, and the result is emitted
//! as `.opt` that compiles to the same behaviour.

mod common;

use common::Quadratic;
use optc_search::program::Candidate;
use optc_search::prune;
use optc_search::Fitness;

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
    let candidate = Candidate::from_rule(&rule).unwrap();
    let fitness = Quadratic::new();
    let pruned = prune::prune(&fitness, &mut (), &prelude, &candidate, 1e-6).unwrap();
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
