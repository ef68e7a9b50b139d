//! Cheap rejection catches a rule whose update ignores `g`, a rule whose
//! update is constant, and one that produces NaN, and lets real rules pass.

mod common;

use optc_compiler::simplify::{simplify, Tier};
use optc_search::probe::probe;
use optc_search::reject::{
    check, check_growth, check_shift, depends_on_gradient, screen, Invariances, Rejection,
};

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

fn screened(rule: &optc_compiler::ir::Rule) -> Result<(), Rejection> {
    screen(rule, Invariances::default()).map(|_| ())
}

/// The two programs docs/discoveries.md reports, as saved.
fn discovery(name: &str) -> optc_compiler::ir::Rule {
    let path = format!(
        "{}/../docs/discoveries/{name}.opt",
        env!("CARGO_MANIFEST_DIR")
    );
    common::compile(&std::fs::read_to_string(path).unwrap(), name)
}

#[test]
fn a_step_scaled_by_the_parameters_minimum_is_shift_dependent() {
    let rule = discovery("from_sgd");
    let simplified = simplify(&rule, Tier::Algebraic);
    let probe = probe(&rule).unwrap();
    assert_eq!(check(&simplified, &probe), Ok(()));
    assert_eq!(
        check_shift(&simplified, &probe),
        Err(Rejection::ShiftDependent)
    );
    let norm_scaled = common::compile("optimizer r(lr = 0.01) { p -= lr * norm(p) * g; }", "r");
    assert_eq!(screened(&norm_scaled), Err(Rejection::ShiftDependent));
    // Each check can be turned off.
    let no_shift = Invariances {
        shift: false,
        growth: false,
    };
    assert!(screen(&rule, no_shift).is_ok());
}

#[test]
fn a_step_growing_with_t_is_rejected() {
    let rule = discovery("from_sgd");
    let Err(Rejection::GrowingStep { ratio }) = check_growth(&simplify(&rule, Tier::Algebraic))
    else {
        panic!("the SGD discovery's step is not flagged as growing");
    };
    assert!(ratio > 7.0, "{ratio}");
    let linear = common::compile("optimizer r(lr = 0.01) { p -= lr * t * g; }", "r");
    let Err(Rejection::GrowingStep { ratio }) = check_growth(&linear) else {
        panic!("lr * t * g is not flagged as growing");
    };
    assert!((ratio - 8.0).abs() < 1e-9, "{ratio}");
    let only_shift = Invariances {
        shift: true,
        growth: false,
    };
    assert!(screen(&linear, only_shift).is_ok());
}

#[test]
fn decoupled_weight_decay_and_moving_averages_pass_the_invariance_checks() {
    let prelude = common::prelude();
    for name in [
        "sgd",
        "sgd_momentum",
        "adam",
        "adamw",
        "lion",
        "rmsprop",
        "sign_sgd",
        "adagrad",
        "nadam",
    ] {
        let rule = prelude.compile(name).unwrap();
        assert_eq!(screened(&rule), Ok(()), "{name}");
    }
    // The discovery from AdamW warms up within its first steps (through
    // 1 - b1^t), then its step shrinks: neither check is about that.
    assert_eq!(screened(&discovery("from_adamw")), Ok(()));
}
