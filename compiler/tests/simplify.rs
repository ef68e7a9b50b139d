//! The simplifier: every rule of its table fires on an example and keeps its
//! promise there (exact rules bit for bit on awkward inputs, algebraic ones
//! within a tolerance), every stdlib rule computes the same after exact
//! simplification (bit for bit) and after algebraic simplification (closely),
//! the engine refuses rewrites that would change precision or add cost, and
//! dead nodes and dead state go.

mod common;

use std::time::Instant;

use common::{agree, compile, stdlib_rule, stdlib_rules, Agreement, Inputs};
use expect_test::{expect, expect_file};
use optc_compiler::autodiff::vjp;
use optc_compiler::ir::{Input, Node, Rule, Type};
use optc_compiler::simplify::{
    eliminate_dead, simplify, simplify_keeping_state, simplify_with_report, Cost, Report, Rewrite,
    Tier, RULES,
};

const BITS: Agreement = Agreement::Bits;
/// Rounding differences of a few operations, compounded over a few steps.
const CLOSE_F32: Agreement = Agreement::Close {
    relative: 1e-4,
    absolute: 1e-6,
};
const CLOSE_F64: Agreement = Agreement::Close {
    relative: 1e-9,
    absolute: 1e-12,
};

/// An optimizer whose parameter update is `p = EXPR`, with a float
/// hyperparameter `h`, a boolean one `flag` and per-element state `s`.
fn example(expr: &str) -> Rule {
    compile(&format!(
        "optimizer example(h = 0.75, flag = true) {{
            state s = 0.25;
            p = {expr};
            s = s + g;
        }}"
    ))
}

/// One example per rule of the table: an expression on which it fires.
const EXAMPLES: &[(&str, &str)] = &[
    ("fold-constants", "g * (2 * 3 - 1 / 4)"),
    ("mul-one", "1 * g"),
    ("div-one", "g / 1"),
    ("sub-zero", "g - 0"),
    ("add-minus-zero", "g + -0"),
    ("add-zero", "abs(g) + 0"),
    ("mul-minus-one", "g * -1"),
    ("div-minus-one", "g / -1"),
    ("neg-neg", "-(-g)"),
    ("sub-neg", "p - -g"),
    ("add-neg", "-g + p"),
    ("neg-mul-neg", "-g * -p"),
    ("neg-div-neg", "-g / -p"),
    ("div-power-of-two", "g / 8"),
    ("rsqrt", "1 / sqrt(g)"),
    ("abs-abs", "abs(abs(g))"),
    ("abs-neg", "abs(-g)"),
    ("sign-sign", "sign(sign(g))"),
    ("sum-one", "g * sum(1)"),
    ("min-self", "min(g, g)"),
    ("max-self", "max(g, g)"),
    ("select-true", "if true { g } else { p }"),
    ("select-false", "if false { g } else { p }"),
    ("select-same", "if g > p { g * s } else { g * s }"),
    ("select-not", "if !(g > p) { g } else { s }"),
    ("not-not", "if !!(g > p) { g } else { s }"),
    ("and-true", "if g > p && true { g } else { s }"),
    ("and-false", "if flag && false { g } else { s }"),
    ("or-false", "if g > p || false { g } else { s }"),
    ("or-true", "if true || flag { g } else { s }"),
    ("and-self", "if g > p && g > p { g } else { s }"),
    ("or-self", "if g > p || g > p { g } else { s }"),
    ("lerp-expanded", "s + g * (p - s)"),
    ("lerp-expanded-sub", "s - g * (s - p)"),
    ("mul-zero", "p + g * 0"),
    ("zero-div", "p + 0 / g"),
    ("add-zero-any", "g + 0"),
    ("zero-sub", "0 - g"),
    ("sub-self", "p + (g - g)"),
    ("div-self", "p * (g / g)"),
    ("neg-sub", "-(g - p)"),
    ("add-sub-cancel", "p + (g - p)"),
    ("mul-div-cancel", "g * p / p"),
    ("div-mul-cancel", "g / p * p"),
    ("mul-reciprocal", "g * (1 / p)"),
    ("reciprocal-reciprocal", "1 / (1 / g)"),
    ("mul-constants", "g * 3 * 5"),
    ("sqrt-square", "sqrt(g * g)"),
    ("sqrt-times-sqrt", "sqrt(abs(g)) * sqrt(abs(g))"),
    ("div-abs", "g / abs(g)"),
    ("abs-div", "abs(g) / g"),
    ("div-sqrt-square", "g / sqrt(g * g)"),
    ("lerp-weights", "(1 - h) * g + h * s"),
    ("lerp-same", "lerp(g, g, h)"),
    ("lerp-zero", "lerp(g, s, 0)"),
    ("lerp-one", "lerp(g, s, 1)"),
    ("lerp-lerp", "lerp(g, lerp(g, s, h), 0.5)"),
    ("pow-zero", "p + g ^ 0"),
    ("pow-one", "g ^ 1"),
    ("pow-half", "g ^ 0.5"),
    ("pow-minus-one", "g ^ -1"),
    ("pow-third", "abs(g) ^ (1 / 3)"),
    ("cbrt-cube", "cbrt(g * g * g)"),
    ("exp-log", "exp(log(abs(g)))"),
    ("log-exp", "log(exp(g))"),
];

fn fired(report: &Report, name: &str) -> usize {
    report
        .fired
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |&(_, count)| count)
}

#[test]
fn every_rule_fires_on_its_example_and_keeps_its_promise() {
    for rule in RULES {
        let expr = EXAMPLES
            .iter()
            .find(|(name, _)| *name == rule.name)
            .unwrap_or_else(|| panic!("rule {} has no example", rule.name))
            .1;
        let original = example(expr);
        let (simplified, report) = simplify_with_report(&original, rule.tier);
        assert!(
            fired(&report, rule.name) > 0,
            "{} did not fire on `{expr}`: {report}\n{simplified}",
            rule.name
        );
        assert!(
            report.cost_after < report.cost_before,
            "{}: {report}",
            rule.name
        );
        let checked = match rule.tier {
            Tier::Exact => agree(&original, &simplified, 1, 6, Inputs::Awkward, BITS, BITS),
            Tier::Algebraic => agree(
                &original,
                &simplified,
                1,
                6,
                Inputs::Benign,
                CLOSE_F32,
                CLOSE_F64,
            ),
        };
        if let Err(message) = checked {
            panic!("{} on `{expr}`: {message}\n{simplified}", rule.name);
        }
    }
    assert_eq!(EXAMPLES.len(), RULES.len(), "an example names no rule");
}

#[test]
fn the_table_is_well_formed_and_every_rewrite_lowers_the_weight() {
    let mut names: Vec<&str> = RULES.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), RULES.len(), "rule names are unique");
    for rule in RULES {
        match rule.rewrite {
            Rewrite::FoldConstants => assert!(rule.weights().is_none()),
            Rewrite::Pattern(_) => {
                let (pattern, replacement) = rule.weights().expect("compiles");
                assert!(
                    replacement < pattern,
                    "{}: replacement weighs {replacement}, pattern {pattern}",
                    rule.name
                );
            }
        }
        assert!(!rule.note.is_empty(), "{} explains itself", rule.name);
    }
}

#[test]
fn the_manual_lists_every_rule() {
    let manual = include_str!("../../docs/language.md");
    for rule in RULES {
        assert!(
            manual.contains(&format!("| `{}` |", rule.name)),
            "docs/language.md, section 11, lacks {}",
            rule.name
        );
    }
}

#[test]
fn exact_simplification_is_bit_identical_on_every_stdlib_rule() {
    for (index, rule) in stdlib_rules().iter().enumerate() {
        let simplified = simplify(rule, Tier::Exact);
        if let Err(message) = agree(
            rule,
            &simplified,
            100 + index as u64,
            6,
            Inputs::Awkward,
            BITS,
            BITS,
        ) {
            panic!("{}: {message}\n{simplified}", rule.name);
        }
    }
}

#[test]
fn algebraic_simplification_stays_close_on_every_stdlib_rule() {
    for (index, rule) in stdlib_rules().iter().enumerate() {
        let simplified = simplify(rule, Tier::Algebraic);
        if let Err(message) = agree(
            rule,
            &simplified,
            200 + index as u64,
            6,
            Inputs::Benign,
            CLOSE_F32,
            CLOSE_F64,
        ) {
            panic!("{}: {message}\n{simplified}", rule.name);
        }
    }
}

/// Node counts, costs and the rules that fired, per stdlib rule and tier.
#[test]
fn stdlib_snapshot() {
    let mut table = String::from(
        "# Simplifying each stdlib rule: nodes and cost (weighted operations per element\n\
         # and per step) before -> after, and the rules that fired (xN: N times).\n\
         # Regenerate with UPDATE_EXPECT=1 cargo test -p optc-compiler --test simplify.\n",
    );
    for rule in stdlib_rules() {
        table.push_str(&format!("{}\n", rule.name));
        for tier in [Tier::Exact, Tier::Algebraic] {
            let (_, report) = simplify_with_report(&rule, tier);
            table.push_str(&format!("  {report}\n"));
        }
    }
    expect_file!["snapshots/simplify_stdlib.txt"].assert_eq(&table);
}

#[test]
fn lamb_before_and_after() {
    let lamb = stdlib_rules()
        .into_iter()
        .find(|r| r.name == "lamb")
        .unwrap();
    let exact = simplify(&lamb, Tier::Exact);
    let before = lamb.to_string();
    let after = exact.to_string();
    // The trust ratio's `1 * param_norm` and `update_norm + 0` (its defaults
    // trust_coefficient = 1 and eps = 0): both exact, the second because a
    // norm is never -0.
    assert!(before.contains("mul v11, v41") && before.contains("add v43, v8"));
    expect![[r#"
        optimizer lamb
        hyper learning_rate = 1e-3
        hyper b1 = 0.9
        hyper b2 = 0.999
        hyper eps = 1e-6
        hyper eps_root = 0.0
        hyper weight_decay = 0.0
        state mu: elem = v8
        state nu: elem = v8
          v0: elem = p
          v1: elem = g
          v2: group = hyper learning_rate
          v3: group = hyper b1
          v4: group = hyper b2
          v5: group = hyper eps
          v6: group = hyper eps_root
          v7: group = hyper weight_decay
          v8: group = 0
          v9: elem = state mu
          v10: elem = state nu
          v11: group = 1
          v12: group = sub v11, v3
          v13: elem = mul v12, v1
          v14: elem = mul v3, v9
          v15: elem = add v13, v14
          v16: group = sub v11, v4
          v17: elem = mul v1, v1
          v18: elem = mul v16, v17
          v19: elem = mul v4, v10
          v20: elem = add v18, v19
          v21: group = t
          v22: group = pow v3, v21
          v23: group = sub v11, v22
          v24: elem = div v15, v23
          v25: group = pow v4, v21
          v26: group = sub v11, v25
          v27: elem = div v20, v26
          v28: elem = add v27, v6
          v29: elem = sqrt v28
          v30: elem = add v29, v5
          v31: elem = div v24, v30
          v32: elem = mul v7, v0
          v33: elem = add v31, v32
          v34: elem = mul v0, v0
          v35: tensor = sum v34
          v36: tensor = sqrt v35
          v37: elem = mul v33, v33
          v38: tensor = sum v37
          v39: tensor = sqrt v38
          v40: tensor bool = le v36, v8
          v41: tensor = select v40, v8, v36
          v42: tensor bool = le v39, v8
          v43: tensor = select v42, v8, v39
          v44: tensor = div v41, v43
          v45: tensor bool = eq v41, v8
          v46: tensor bool = eq v43, v8
          v47: tensor bool = or v45, v46
          v48: tensor = select v47, v11, v44
          v49: elem = mul v33, v48
          v50: elem = mul v2, v49
          v51: elem = sub v0, v50
        out p = v51
        out mu = v15
        out nu = v20
    "#]]
    .assert_eq(&after);
}

#[test]
fn the_engine_keeps_exact_rewrites_at_one_precision() {
    // `select(true, h, g)` is per element (its branch g is), so each element
    // holds h rounded to f32; `h` alone is an f64 scalar, and `(h) * 3` would
    // then be computed in f64 and rounded once: not the same bits.
    let rule = example("(if true { h } else { g }) * 3");
    let (_, exact) = simplify_with_report(&rule, Tier::Exact);
    assert_eq!(fired(&exact, "select-true"), 0, "{exact}");
    let (_, algebraic) = simplify_with_report(&rule, Tier::Algebraic);
    assert_eq!(fired(&algebraic, "select-true"), 1, "{algebraic}");
    // The expanded lerp with a scalar `b - a` would move that subtraction
    // from f64 into f32.
    let scalar_difference = example("g + p * (h - 1)");
    let (_, report) = simplify_with_report(&scalar_difference, Tier::Exact);
    assert_eq!(fired(&report, "lerp-expanded"), 0, "{report}");
}

#[test]
fn a_rewrite_that_would_keep_its_shared_operands_alive_is_refused() {
    // `g * (p - s)` is also stored in s: rewriting the sum into a lerp would
    // keep the product and add a lerp.
    let shared = compile(
        "optimizer o() {
            state s = 0;
            let step = g * (p - s);
            p = s + step;
            s = step;
        }",
    );
    let (_, report) = simplify_with_report(&shared, Tier::Exact);
    assert_eq!(fired(&report, "lerp-expanded"), 0, "{report}");
    assert_eq!(report.cost_after, report.cost_before);
    let alone = compile("optimizer o() { state s = 0; p = s + g * (p - s); s = g; }");
    let (_, report) = simplify_with_report(&alone, Tier::Exact);
    assert_eq!(fired(&report, "lerp-expanded"), 1, "{report}");
}

#[test]
fn adding_zero_is_exact_only_for_values_never_minus_zero() {
    for (expr, fires) in [
        ("g + 0", false),
        ("h + 0 + g", false),
        ("abs(g) + 0", true),
        ("sqrt(g * g) + 0", true),
        ("sum(g) + 0", true),
        ("norm(g) + 0", true),
        ("max(g) + 0", false),
        ("t + 0", true),
        ("exp(g) + 0", true),
    ] {
        let (_, report) = simplify_with_report(&example(expr), Tier::Exact);
        assert_eq!(fired(&report, "add-zero") > 0, fires, "{expr}: {report}");
    }
}

#[test]
fn the_examples_of_the_brief_simplify_to_their_closed_forms() {
    for (expr, closed_form) in [
        ("g / sqrt(g * g)", "sign(g)"),
        ("g * g / g", "g"),
        ("(g * p) / p", "g"),
        ("sqrt(g * g)", "abs(g)"),
        ("-(g - p)", "p - g"),
        ("(1 - h) * g + h * s", "lerp(s, g, 1 - h)"),
        ("g * h + s * (1 - h)", "lerp(g, s, 1 - h)"),
    ] {
        let simplified = simplify(&example(expr), Tier::Algebraic);
        let expected = eliminate_dead(&example(closed_form));
        assert_eq!(simplified.to_string(), expected.to_string(), "{expr}");
    }
}

#[test]
fn dead_state_goes_with_its_initialiser() {
    // asgd's running average `ax` is stored but never read by the update.
    let asgd = stdlib_rules()
        .into_iter()
        .find(|r| r.name == "asgd")
        .unwrap();
    let (simplified, report) = simplify_with_report(&asgd, Tier::Exact);
    assert_eq!(report.removed_states, vec!["ax".to_string()]);
    assert!(simplified.states.is_empty());
    // A slot read only by itself is dead; one read by a live slot lives.
    let rule = compile(
        "optimizer o() {
            state lonely = p * 2;
            state feeder = 1;
            state fed = 0;
            lonely = lonely + g;
            fed = fed + feeder;
            feeder = feeder * 0.5;
            p -= fed * g;
        }",
    );
    let pruned = eliminate_dead(&rule);
    let names: Vec<&str> = pruned.states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["feeder", "fed"]);
    assert!(!pruned.to_string().contains("mul v0, "), "{pruned}");
    agree(&rule, &pruned, 3, 4, Inputs::Awkward, BITS, BITS).unwrap();
}

#[test]
fn dead_statements_go() {
    let rule = compile(
        "optimizer o(unused = 3) {
            let wasted = exp(g) * unused;
            p -= 0.1 * g;
        }",
    );
    let pruned = eliminate_dead(&rule);
    expect![[r#"
        optimizer o
        hyper unused = 3
          v0: elem = p
          v1: elem = g
          v2: group = 0.1
          v3: elem = mul v2, v1
          v4: elem = sub v0, v3
        out p = v4
    "#]]
    .assert_eq(&pruned.to_string());
}

#[test]
fn rewriting_exposes_common_subexpressions() {
    let rule = example("(g * 1) * p + g * p");
    let simplified = simplify(&rule, Tier::Exact);
    let text = simplified.to_string();
    assert_eq!(text.matches("mul v1, v0").count(), 1, "{text}");
    assert_eq!(text.matches("add v2, v2").count(), 1, "{text}");
}

#[test]
fn simplification_is_idempotent() {
    for rule in stdlib_rules() {
        for tier in [Tier::Exact, Tier::Algebraic] {
            let once = simplify(&rule, tier);
            let twice = simplify(&once, tier);
            assert_eq!(once.to_string(), twice.to_string(), "{} {tier}", rule.name);
        }
    }
}

#[test]
fn simplifying_the_whole_stdlib_is_fast() {
    let rules = stdlib_rules();
    const ROUNDS: u32 = 20;
    for tier in [Tier::Exact, Tier::Algebraic] {
        let start = Instant::now();
        let mut reports = Vec::new();
        for _ in 0..ROUNDS {
            reports = rules
                .iter()
                .map(|rule| simplify_with_report(rule, tier).1)
                .collect();
        }
        let elapsed = start.elapsed() / ROUNDS;
        let before: usize = reports.iter().map(|r| r.nodes_before).sum();
        let after: usize = reports.iter().map(|r| r.nodes_after).sum();
        let cost_before = reports
            .iter()
            .fold(Cost::default(), |a, r| a + r.cost_before);
        let cost_after = reports
            .iter()
            .fold(Cost::default(), |a, r| a + r.cost_after);
        println!(
            "{tier} tier: {} stdlib rules in {elapsed:?} ({before} -> {after} nodes, cost {cost_before} -> {cost_after})",
            rules.len()
        );
        for report in &reports {
            assert!(report.nodes_after <= report.nodes_before, "{report}");
            assert!(report.cost_after <= report.cost_before, "{report}");
        }
        assert!(elapsed.as_secs_f64() < 1.0, "{elapsed:?}");
    }
}

/// A seed of its own for each rule, which adding a rule to the stdlib does
/// not change (FNV-1a of the name).
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    }) % 1000
}

/// The adjoint of each stdlib step with respect to `g` (seeded with `g`), as
/// the parameter update: a machine-made program like the hypergradient and
/// meta-learning variants. Both tiers shrink it and keep its values (the
/// algebraic tier's on tensors of several elements: see
/// `Inputs::BenignSeveral`).
#[test]
fn derived_rules_shrink_and_keep_their_values() {
    let mut before_total = 0;
    let mut after_total = [0, 0];
    for rule in stdlib_rules().iter() {
        let mut derived = rule.clone();
        let g = derived.graph.add(Node::Input(Input::Grad, Type::ELEM));
        derived.param_out = vjp(&mut derived.graph, &[(rule.param_out, g)], &[g])[0];
        let derived = eliminate_dead(&derived);
        before_total += derived.graph.len();
        for (slot, tier) in [Tier::Exact, Tier::Algebraic].into_iter().enumerate() {
            let (simplified, report) = simplify_with_report(&derived, tier);
            assert!(
                report.cost_after <= report.cost_before,
                "{}: {report}",
                rule.name
            );
            after_total[slot] += simplified.graph.len();
            let checked = match tier {
                Tier::Exact => agree(
                    &derived,
                    &simplified,
                    300 + name_seed(&rule.name),
                    4,
                    Inputs::Awkward,
                    BITS,
                    BITS,
                ),
                Tier::Algebraic => agree(
                    &derived,
                    &simplified,
                    400 + name_seed(&rule.name),
                    4,
                    Inputs::BenignSeveral,
                    CLOSE_F32,
                    CLOSE_F64,
                ),
            };
            if let Err(message) = checked {
                panic!("{} ({tier}): {message}\n{derived}\n{simplified}", rule.name);
            }
        }
    }
    println!(
        "adjoints of the stdlib w.r.t. g: {before_total} nodes, {} after exact, {} after algebraic simplification",
        after_total[0], after_total[1]
    );
    assert!(after_total[1] < before_total);
}

#[test]
fn simplifying_while_keeping_state_keeps_every_slot_and_its_values() {
    let asgd = stdlib_rule("asgd");
    let kept = simplify_keeping_state(&asgd, Tier::Exact);
    let names =
        |rule: &Rule| -> Vec<String> { rule.states.iter().map(|s| s.name.clone()).collect() };
    assert_eq!(names(&kept), names(&asgd), "the average `ax` stays");
    assert!(names(&simplify(&asgd, Tier::Exact)).len() < names(&asgd).len());
    assert!(kept.graph.len() <= asgd.graph.len());
}
