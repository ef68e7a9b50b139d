//! Warm starts convert stdlib rules into candidates that print as `.opt`,
//! compile, and behave exactly as the original; rules outside the search
//! space get a clear error.

mod common;

use optc_search::probe::probe;
use optc_search::program::{Candidate, WarmStartError, MAX_STATE_SLOTS};

#[test]
fn stdlib_warm_starts_compile_and_behave_like_the_original() {
    let prelude = common::prelude();
    for name in [
        "sgd", "adam", "adamw", "lion", "rmsprop", "sign_sgd", "adagrad",
    ] {
        let original = prelude.compile(name).unwrap();
        let candidate = Candidate::warm_start(&prelude, name).unwrap();
        assert_eq!(candidate.states.len(), MAX_STATE_SLOTS, "{name}");
        let rule = candidate
            .compile(&prelude)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{candidate}"));
        // The padding slots add state; the parameters follow the original exactly.
        let params = |rule| -> Vec<Vec<f64>> {
            let steps = probe(rule).unwrap().steps;
            steps.into_iter().map(|step| step.param_after).collect()
        };
        assert_eq!(params(&rule), params(&original), "{name}:\n{candidate}");
    }
}

#[test]
fn warm_start_from_a_users_rule_keeps_its_hyperparameters() {
    let rule = common::compile(
        "optimizer mine(lr = 0.01, beta = 0.5) { state m = 0; m = lerp(g, m, beta); p -= lr * m; }",
        "mine",
    );
    let candidate = Candidate::from_rule(&rule).unwrap();
    let names: Vec<&str> = candidate.hypers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["lr", "beta"]);
    assert!(candidate
        .source()
        .starts_with("optimizer candidate(lr = 0.01, beta = 0.5) {"));
}

#[test]
fn rules_outside_the_space_are_refused_with_a_reason() {
    let prelude = common::prelude();
    let too_many = common::compile(
        "optimizer three() { state a = 0; state b = 0; state c = 0; a += g; b += a; c += b; p -= c; }",
        "three",
    );
    assert_eq!(
        Candidate::from_rule(&too_many),
        Err(WarmStartError::TooManyStateSlots(3))
    );
    let per_tensor = common::compile(
        "optimizer scaled() { state n: tensor = 0; n += norm(g); p -= g / n; }",
        "scaled",
    );
    assert!(matches!(
        Candidate::from_rule(&per_tensor),
        Err(WarmStartError::NotPerElementState(name)) if name == "n"
    ));
    assert!(matches!(
        Candidate::warm_start(&prelude, "no_such_rule"),
        Err(WarmStartError::Compile(_))
    ));
}
