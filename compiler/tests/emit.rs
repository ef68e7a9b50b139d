//! The `.opt` emitter: every stdlib rule (as written, and simplified) and a
//! thousand random rules print as source that compiles back to a rule with
//! bit-identical results, and printing that rule gives the same text again.
//! Snapshots show what the output looks like.

mod common;

use common::{agree, compile, program_with, stdlib_rules, Agreement, Inputs, Random};
use expect_test::{expect, expect_file};
use optc_compiler::emit::emit;
use optc_compiler::interpret;
use optc_compiler::ir::{Kind, Rule, Shape};
use optc_compiler::simplify::{simplify, Tier};
use optc_compiler::Program;

/// Emits `rule`, compiles the text (with the stdlib visible, as `optc`
/// reads files), checks the two rules agree bit for bit on awkward inputs
/// and that emitting the result gives the same text; returns the text.
fn round_trip(rule: &Rule, context: &Program, seed: u64) -> String {
    let text = emit(rule, context);
    let mut program = context.clone();
    if let Err(d) = program.add_source("emitted.opt", text.as_bytes(), optc_compiler::Origin::User)
    {
        panic!(
            "{}: emitted text does not parse: {}\n{text}",
            rule.name, d.message
        );
    }
    let again = program.compile(&rule.name).unwrap_or_else(|d| {
        panic!(
            "{}: emitted text does not compile: {}\n{text}",
            rule.name, d.message
        )
    });
    if let Err(message) = agree(
        rule,
        &again,
        seed,
        4,
        Inputs::Awkward,
        Agreement::Bits,
        Agreement::Bits,
    ) {
        panic!(
            "{}: {message}\noriginal:\n{rule}\nemitted:\n{text}",
            rule.name
        );
    }
    let layout = |r: &Rule| -> Vec<(String, Shape)> {
        r.states.iter().map(|s| (s.name.clone(), s.shape)).collect()
    };
    assert_eq!(
        layout(&again),
        layout(rule),
        "{}: state layout\n{text}",
        rule.name
    );
    assert_eq!(
        defaults(&again),
        defaults(rule),
        "{}: hyperparameters\n{text}",
        rule.name
    );
    let second = emit(&again, context);
    assert_eq!(text, second, "{}: not a fixed point", rule.name);
    assert_eq!(again.doc, rule.doc, "{}: doc comment", rule.name);
    text
}

/// Each hyperparameter's name, kind and the bits of its default on the
/// first steps (given the defaults before it).
fn defaults(rule: &Rule) -> Vec<(String, Kind, Vec<u64>)> {
    let mut per_step: Vec<Vec<f64>> = vec![Vec::new(); 3];
    rule.hypers
        .iter()
        .map(|hyper| {
            let bits = per_step
                .iter_mut()
                .enumerate()
                .map(|(step, values)| {
                    let value = hyper
                        .default
                        .as_ref()
                        .map_or(f64::NAN, |d| interpret::scalar(d, step as u64 + 1, values));
                    values.push(value);
                    if value.is_nan() {
                        f64::NAN.to_bits()
                    } else {
                        value.to_bits()
                    }
                })
                .collect();
            (hyper.name.clone(), hyper.kind, bits)
        })
        .collect()
}

#[test]
fn every_stdlib_rule_round_trips() {
    let context = optc_stdlib::prelude();
    for (index, rule) in stdlib_rules().iter().enumerate() {
        round_trip(rule, &context, index as u64);
    }
}

#[test]
fn simplified_stdlib_rules_round_trip() {
    let context = optc_stdlib::prelude();
    for (index, rule) in stdlib_rules().iter().enumerate() {
        for tier in [Tier::Exact, Tier::Algebraic] {
            round_trip(&simplify(rule, tier), &context, 1000 + index as u64);
        }
    }
}

#[test]
fn stdlib_snapshot() {
    let context = optc_stdlib::prelude();
    let mut text = String::from(
        "// Emitted from the compiled IR by `optc_compiler::emit::emit` (regenerate with\n\
         // UPDATE_EXPECT=1 cargo test -p optc-compiler --test emit). As compiled, then\n\
         // after algebraic simplification (named NAME_simplified here).\n",
    );
    for rule in stdlib_rules() {
        if [
            "adam",
            "lamb",
            "lion",
            "schedule_free_adamw",
            "prodigy",
            "lars",
        ]
        .contains(&rule.name.as_str())
        {
            text.push('\n');
            text.push_str(&emit(&rule, &context));
            let mut simplified = simplify(&rule, Tier::Algebraic);
            simplified.name = format!("{}_simplified", rule.name);
            simplified.doc.clear();
            text.push('\n');
            text.push_str(&emit(&simplified, &context));
        }
    }
    expect_file!["snapshots/emitted.opt"].assert_eq(&text);
}

#[test]
fn operators_get_the_parentheses_they_need_and_no_more() {
    let rule = compile(
        "optimizer precedence(h = 2, flag = false) {
            state s = 1;
            let a = -g^3 + (-g)^3 + g^h^3 + (g^h)^3 + g^-h;
            let b = (p - g) - (s - p) + p - (g + s) + p * (g / s) / (p * g);
            let c = -(p * g) - -p * -g;
            let d = if (g < p || flag) && !(s >= p) { a } else if g == p { b } else { c };
            let e = (if flag { g } else { p }) * 2 + max(g, -1.5) + clamp(g, -h, h);
            p = d + e + mean(g) + norm(p) + dot(g, p) + group_sum(g * g) + sum(1) * pi;
            s = min(s, -inf) + 1e-8 * lerp(s, g, 0.25) + 12345678 + 1e22;
        }",
    );
    let text = round_trip(&rule, &Program::new(), 7);
    expect![[r#"
        optimizer precedence(h = 2, flag = false) {
            state s = 1;
            let t1 = -g^3 + (-g)^3 + g^h^3 + (g^h)^3;
            let t2 = p - g - (s - p) + p - (g + s) + p * (g / s) / (p * g);
            let t3 = if g == p { t2 } else { -(p * g) - -p * -g };
            let t4 = if (g < p || flag) && !(s >= p) { t1 + g^-h } else { t3 };
            let t5 = t4 + ((if flag { g } else { p }) * 2 + max(g, -1.5) + clamp(g, -h, h));
            let t6 = t5 + mean(g) + norm(p) + dot(g, p);
            p = t6 + group_sum(g * g) + sum(1) * pi;
            s = min(s, -inf) + 1e-8 * lerp(s, g, 0.25) + 12345678 + 1e22;
        }
    "#]]
    .assert_eq(&text);
}

#[test]
fn a_swap_binds_one_new_value_first() {
    let rule = compile(
        "optimizer swap() {
            state a = 1;
            state b = 2;
            let old_a = a;
            a = b;
            b = old_a;
            p -= a * g;
        }",
    );
    let text = round_trip(&rule, &Program::new(), 3);
    expect![[r#"
        optimizer swap() {
            state a = 1;
            state b = 2;
            let a_new = b;
            p -= a_new * g;
            b = a;
            a = a_new;
        }
    "#]]
    .assert_eq(&text);
}

#[test]
fn state_initialisers_see_the_values_of_their_declaration() {
    // torch's momentum buffer starts at the first decayed gradient, DoG's
    // initial distance reads p before the step.
    let rule = compile(
        "optimizer o(weight_decay = 0.01, init_step = 1e-6) {
            g += weight_decay * p;
            state buf = g;
            state x0 = p;
            state max_dist: group = init_step * (1 + group_norm(p));
            state seen: tensor = sum(abs(g));
            buf = 0.9 * buf + g;
            max_dist = max(max_dist, group_norm(x0 - p));
            seen += norm(buf);
            p -= max_dist * buf / seen;
        }",
    );
    let text = round_trip(&rule, &Program::new(), 4);
    expect![[r#"
        optimizer o(weight_decay = 0.01, init_step = 1e-6) {
            let t1 = g + weight_decay * p;
            state buf = t1;
            state x0 = p;
            state max_dist: group = init_step * (1 + group_norm(p));
            state seen: tensor = sum(abs(t1));
            buf = 0.9 * buf + t1;
            max_dist = max(max_dist, group_norm(x0 - p));
            seen += norm(buf);
            p -= max_dist * buf / seen;
        }
    "#]]
    .assert_eq(&text);
}

#[test]
fn states_are_declared_in_their_order_even_after_an_update() {
    // `snapshot` starts at the updated p, so it is declared after `p -= m`;
    // `late` starts at the old p, so it must be declared before that, yet
    // after `snapshot`: the new p is bound first.
    let rule = compile(
        "optimizer o() {
            state m = 0;
            let old = p;
            m += g;
            p -= m;
            state snapshot = p;
            state late = 2 * old;
            snapshot *= 0.5;
            late += 1;
        }",
    );
    let text = round_trip(&rule, &Program::new(), 9);
    expect![[r#"
        optimizer o() {
            state m = 0;
            m += g;
            let p_new = p - m;
            state snapshot = p_new;
            state late = 2 * p;
            snapshot *= 0.5;
            late += 1;
            p = p_new;
        }
    "#]]
    .assert_eq(&text);
}

#[test]
fn schedules_keep_their_text_where_the_context_has_them() {
    let rule = compile(
        "/// SGD on a cosine schedule.
        optimizer cosine_sgd(learning_rate = cosine_decay(0.1, 1000), floor = learning_rate / 10) {
            p -= max(learning_rate, floor) * g;
        }",
    );
    let with_stdlib = round_trip(&rule, &optc_stdlib::prelude(), 5);
    expect![[r#"
        /// SGD on a cosine schedule.
        optimizer cosine_sgd(learning_rate = cosine_decay(0.1, 1000), floor = learning_rate / 10) {
            p -= max(learning_rate, floor) * g;
        }
    "#]]
    .assert_eq(&with_stdlib);
    // Read without the stdlib, the schedule is written out.
    let alone = round_trip(&rule, &Program::new(), 5);
    expect![[r#"
        /// SGD on a cosine schedule.
        optimizer cosine_sgd(learning_rate = 0.1 * ((1 - 0) * (0.5 * (1 + cos(pi * min(t - 1, 1000) / 1000)))^1 + 0),
                             floor = learning_rate / 10) {
            p -= max(learning_rate, floor) * g;
        }
    "#]]
    .assert_eq(&alone);
}

#[test]
fn folded_constants_print_and_read_back() {
    // NaN, infinities, -0 and values that need all 17 digits, as constant
    // folding leaves them.
    let rule = compile(
        "optimizer o() {
            p = if g > 1e30 { sqrt(-1) } else if g < -1e30 { -(1 / 0) } else { g * (0.1 + 0.2) + -0 * g + 1 / 3 };
        }",
    );
    let simplified = simplify(&rule, Tier::Exact);
    let text = round_trip(&simplified, &Program::new(), 6);
    expect![[r#"
        optimizer o() {
            p = if g > 1e30 { 0 / 0 } else if g < -1e30 { -inf } else { g * 0.30000000000000004 + -0 * g + 0.3333333333333333 };
        }
    "#]]
    .assert_eq(&text);
}

#[test]
fn long_expressions_are_split_into_lets() {
    let terms: Vec<String> = (0..40).map(|i| format!("g * {}", i + 2)).collect();
    let rule = compile(&format!(
        "optimizer long() {{ p -= {}; }}",
        terms.join(" + ")
    ));
    let text = round_trip(&rule, &Program::new(), 8);
    let operations = |line: &str| line.matches(['+', '*']).count();
    assert!(text.lines().all(|l| operations(l) <= 12), "{text}");
    assert!(text.contains("let t1 = "), "{text}");
}

/// A random well-typed expression of at most `shape` from the names in scope.
fn expr(rng: &mut Random, scope: &Scope, shape: Shape, depth: usize) -> String {
    let leaf = |rng: &mut Random| -> String {
        let mut names: Vec<&str> = scope.group.iter().map(String::as_str).collect();
        names.extend(["t", "h", "k", "0.5", "2", "1e-3", "-1.5", "0"]);
        if Shape::Tensor.fits(shape) {
            names.extend(scope.tensor.iter().map(String::as_str));
            names.extend(["numel", "rank", "nrows", "ncols"]);
        }
        if Shape::Rows.fits(shape) {
            names.extend(scope.rows.iter().map(String::as_str));
        }
        if Shape::Cols.fits(shape) {
            names.extend(scope.cols.iter().map(String::as_str));
        }
        if shape == Shape::Gram {
            names.extend(scope.gram.iter().map(String::as_str));
        }
        if shape == Shape::Elem {
            names.extend(scope.elem.iter().map(String::as_str));
            names.extend(["p", "g", "g", "p"]);
        }
        names[rng.below(names.len())].to_string()
    };
    if depth == 0 || rng.below(4) == 0 {
        return leaf(rng);
    }
    let sub = |rng: &mut Random| expr(rng, scope, shape, depth - 1);
    match rng.below(18) {
        0..=3 => {
            let (a, b) = (sub(rng), sub(rng));
            format!("({a} {} {b})", ["+", "-", "*", "/"][rng.below(4)])
        }
        4 => {
            let f = [
                "abs", "sign", "sqrt", "exp", "log", "tanh", "floor", "rsqrt", "sigmoid", "cos",
                "cbrt",
            ];
            format!("{}({})", f[rng.below(f.len())], sub(rng))
        }
        5 => format!(
            "{}({}, {})",
            ["min", "max", "pow"][rng.below(3)],
            sub(rng),
            sub(rng)
        ),
        6 => format!("lerp({}, {}, {})", sub(rng), sub(rng), sub(rng)),
        7 => format!("clamp({}, -1, 1)", sub(rng)),
        8 => format!(
            "(if {} {{ {} }} else {{ {} }})",
            condition(rng, scope, shape, depth),
            sub(rng),
            sub(rng)
        ),
        9 => format!("-{}", sub(rng)),
        10 => format!("({})^{}", sub(rng), sub(rng)),
        11 if Shape::Tensor.fits(shape) => {
            let f = ["sum", "mean", "norm", "max", "min"];
            format!(
                "{}({})",
                f[rng.below(f.len())],
                expr(rng, scope, Shape::Elem, depth - 1)
            )
        }
        12 => {
            let f = ["group_sum", "group_norm", "group_max", "group_mean"];
            format!(
                "{}({})",
                f[rng.below(f.len())],
                expr(rng, scope, Shape::Elem, depth - 1)
            )
        }
        13 if Shape::Tensor.fits(shape) => format!(
            "dot({}, {})",
            expr(rng, scope, Shape::Elem, depth - 1),
            expr(rng, scope, Shape::Elem, depth - 1)
        ),
        16 if shape == Shape::Gram => {
            let x = expr(rng, scope, Shape::Elem, depth - 1);
            match rng.below(3) {
                0 => format!("gram({x})"),
                1 => format!("matmul(gram({x}), {} + gram({x}, g))", sub(rng)),
                _ => format!(
                    "transpose(gram({x}, {}))",
                    expr(rng, scope, Shape::Elem, depth - 1)
                ),
            }
        }
        17 if shape == Shape::Elem => format!(
            "matmul(gram({}) + {}, {})",
            sub(rng),
            expr(rng, scope, Shape::Gram, depth - 1),
            sub(rng)
        ),
        14 | 15 => {
            let (axis, prefix) = [(Shape::Rows, "row_"), (Shape::Cols, "col_")][rng.below(2)];
            if !axis.fits(shape) {
                return sub(rng);
            }
            let f = ["sum", "mean", "norm", "max", "min"];
            format!(
                "{prefix}{}({})",
                f[rng.below(f.len())],
                expr(rng, scope, Shape::Elem, depth - 1)
            )
        }
        _ => sub(rng),
    }
}

fn condition(rng: &mut Random, scope: &Scope, shape: Shape, depth: usize) -> String {
    let compare = |rng: &mut Random| {
        let ops = ["<", "<=", ">", ">=", "==", "!="];
        format!(
            "{} {} {}",
            expr(rng, scope, shape, depth.saturating_sub(2)),
            ops[rng.below(ops.len())],
            expr(rng, scope, shape, depth.saturating_sub(2))
        )
    };
    match rng.below(5) {
        0 => "flag".to_string(),
        1 => format!("({} && {})", compare(rng), compare(rng)),
        2 => format!("({} || !flag)", compare(rng)),
        3 => format!("!({})", compare(rng)),
        _ => compare(rng),
    }
}

/// Names a random rule can read so far, by shape.
#[derive(Default)]
struct Scope {
    elem: Vec<String>,
    rows: Vec<String>,
    cols: Vec<String>,
    gram: Vec<String>,
    tensor: Vec<String>,
    group: Vec<String>,
}

impl Scope {
    /// The names of values of `shape`.
    fn of(&mut self, shape: Shape) -> &mut Vec<String> {
        match shape {
            Shape::Elem => &mut self.elem,
            Shape::Rows => &mut self.rows,
            Shape::Cols => &mut self.cols,
            Shape::Gram => &mut self.gram,
            Shape::Tensor => &mut self.tensor,
            Shape::Group => &mut self.group,
        }
    }
}

/// A random optimizer: a state slot of each shape, declared among `let`s
/// and assignments (plain and compound) to `p`, `g` and the state.
fn random_rule(rng: &mut Random, index: usize) -> String {
    let mut scope = Scope::default();
    let mut body = Vec::new();
    let states = [
        ("s_elem", Shape::Elem),
        ("s_tensor", Shape::Tensor),
        ("s_group", Shape::Group),
        ("s_rows", Shape::Rows),
        ("s_cols", Shape::Cols),
    ];
    let mut declared = 0;
    let mut lets = 0;
    for _ in 0..8 + rng.below(6) {
        let choice = rng.below(5);
        if choice == 0 && declared < states.len() {
            let (name, shape) = states[declared];
            let annotation = match shape {
                Shape::Elem => String::new(),
                shape => format!(": {shape}"),
            };
            body.push(format!(
                "state {name}{annotation} = {};",
                expr(rng, &scope, shape, 2)
            ));
            scope.of(shape).push(name.to_string());
            declared += 1;
        } else if choice == 1 {
            let shapes = [
                Shape::Elem,
                Shape::Tensor,
                Shape::Group,
                Shape::Rows,
                Shape::Cols,
                Shape::Gram,
            ];
            let shape = shapes[rng.below(shapes.len())];
            let name = format!("l{lets}");
            lets += 1;
            body.push(format!("let {name} = {};", expr(rng, &scope, shape, 3)));
            scope.of(shape).push(name);
        } else {
            let mut targets = vec![("p", Shape::Elem), ("g", Shape::Elem)];
            targets.extend(states[..declared].iter().copied());
            let (target, shape) = targets[rng.below(targets.len())];
            let op = ["=", "+=", "-=", "*=", "/="][rng.below(5)];
            body.push(format!("{target} {op} {};", expr(rng, &scope, shape, 3)));
        }
    }
    format!(
        "/// Random rule {index}.\noptimizer random{index}(h = 0.5, k = 2, flag = true) {{\n    {}\n}}\n",
        body.join("\n    ")
    )
}

#[test]
fn random_rules_round_trip() {
    let mut rng = Random(2027);
    let context = Program::new();
    for index in 0..1000 {
        let source = random_rule(&mut rng, index);
        let rule = compile(&source);
        round_trip(&rule, &context, index as u64);
        let tier = [Tier::Exact, Tier::Algebraic][index % 2];
        round_trip(&simplify(&rule, tier), &context, index as u64);
    }
}

#[test]
fn emitting_never_needs_the_source() {
    // A rule built by a program: a hyperparameter without default, one whose
    // text was never set, and no doc comment.
    let mut rule = compile("optimizer made(a = 0.5, b = a * 2) { p -= a * b * g; }");
    rule.hypers[0].default = None;
    if let Some(default) = &mut rule.hypers[1].default {
        default.text.clear();
    }
    let text = emit(&rule, &Program::new());
    expect![[r#"
        optimizer made(a, b = a * 2) {
            p -= a * b * g;
        }
    "#]]
    .assert_eq(&text);
    let program = program_with(&text);
    assert!(program.compile("made").is_ok());
}
