//! Cheap rejection catches a rule whose update ignores `g`, a rule whose
//! update is constant, and one that produces NaN, and lets real rules pass.

mod common;

use optc_compiler::simplify::{simplify, Tier};
use optc_search::probe::probe;
use optc_search::reject::{check, depends_on_gradient, Rejection};

fn verdict(body: &str) -> Result<(), Rejection> {
    let text = format!("optimizer r(lr = 0.01) {{ state m = 0; {body} }}");
    let rule = common::compile(&text, "r");
    check(&simplify(&rule, Tier::Algebraic), &probe(&rule).unwrap())
}

#[test]
fn a_rule_without_g_is_rejected() {
    assert_eq!(verdict("p -= lr * p;"), Err(Rejection::IgnoresGradient));
    // g reaches only a state that never reaches p.
    assert_eq!(
        verdict("m = m + g; p *= 0.9;"),
        Err(Rejection::IgnoresGradient)
    );
    // g is multiplied by zero, which simplification removes.
    assert_eq!(
        verdict("p -= lr * (0 * g + p);"),
        Err(Rejection::IgnoresGradient)
    );
}

#[test]
fn gradient_through_state_on_a_later_step_counts() {
    let rule = common::compile(
        "optimizer r(lr = 0.01) { state m = 0; p -= lr * m; m = g; }",
        "r",
    );
    assert!(depends_on_gradient(&rule));
    assert_eq!(check(&rule, &probe(&rule).unwrap()), Ok(()));
}

#[test]
fn a_constant_rule_is_rejected() {
    assert_eq!(
        verdict("p -= lr * sign(g * g + 1);"),
        Err(Rejection::ConstantUpdate)
    );
    assert_eq!(verdict("p = p + 0 * g;"), Err(Rejection::IgnoresGradient));
    assert_eq!(
        verdict("p -= lr * (g - g + 1);"),
        Err(Rejection::IgnoresGradient)
    );
}

#[test]
fn a_nan_producing_rule_is_rejected() {
    assert_eq!(verdict("p -= lr * log(g);"), Err(Rejection::NonFinite));
    assert_eq!(verdict("p -= lr * g / (g - g);"), Err(Rejection::NonFinite));
    assert_eq!(
        verdict("m = sqrt(g); p -= lr * g;"),
        Err(Rejection::NonFinite)
    );
}

#[test]
fn stdlib_rules_pass() {
    let prelude = common::prelude();
    for name in [
        "sgd", "adam", "adamw", "lion", "rmsprop", "sign_sgd", "lamb",
    ] {
        let rule = prelude.compile(name).unwrap();
        let verdict = check(&simplify(&rule, Tier::Algebraic), &probe(&rule).unwrap());
        assert_eq!(verdict, Ok(()), "{name}");
    }
}
