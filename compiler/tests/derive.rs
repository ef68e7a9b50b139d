//! Derived rules checked through the reference interpreter in f64: the
//! hypergradient variants against the closed forms of HD-SGD and HD-Adam and,
//! for every stdlib optimizer and float hyperparameter, against central finite
//! differences of the base rule's step; the adjoints of every stdlib
//! optimizer against finite differences of `<cotangents, step outputs>`; and
//! the errors for hyperparameters that cannot be adapted.

mod common;

use common::{
    check_every_variable, compile, default_hypers, dot, finite_difference, group, numels,
    objective_difference, rounds_to_bf16, run_from, stdlib_rule, warm_up, Point, Random, Values,
    Variable, ATTEMPTS, TOLERANCE, VIEWS,
};
use optc_compiler::derive::{adjoint, hypergradient, Form};
use optc_compiler::interpret::{StepOutputs, Value};
use optc_compiler::ir::{Kind, Rule, Shape};
use optc_compiler::plan::Plan;
use optc_compiler::simplify::{simplify, Tier};

impl Random {
    /// Magnitudes uniform in `[low, high]`, each with a random sign.
    fn signed_tensors(&mut self, low: f64, high: f64) -> Vec<Vec<f64>> {
        numels()
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        let x = self.uniform(low, high);
                        if self.unit() < 0.5 {
                            -x
                        } else {
                            x
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// One step of `rule` at `point` from its state.
fn run(rule: &Rule, point: &Point) -> StepOutputs<f64> {
    run_from(rule, point, Some(&point.state))
}

/// A realistic point of step 4 of `rule` (see [`warm_up`]) from random
/// parameters, magnitudes in `[0.2, 2]`.
fn warmed_up(rule: &Rule, random: &mut Random) -> Point {
    let start = Point {
        params: random.signed_tensors(0.2, 2.0),
        grads: Vec::new(),
        step: 1,
        hypers: Vec::new(),
        state: Vec::new(),
    };
    warm_up(rule, random, start, |random| {
        random.signed_tensors(0.2, 2.0)
    })
}

/// Largest relative error seen, and how many values were compared.
#[derive(Default)]
struct Tally {
    checked: usize,
    max_error: f64,
}

impl Tally {
    /// Checks `symbolic` against a finite difference `(value, noise)`: the
    /// relative error, where an error within the rounding noise counts as at
    /// most the tolerance.
    fn compare(&mut self, symbolic: f64, (numeric, noise): (f64, f64), label: &str) {
        let scale = symbolic.abs().max(numeric.abs()).max(noise / TOLERANCE);
        let error = if scale == 0.0 {
            0.0
        } else {
            (symbolic - numeric).abs() / scale
        };
        assert!(
            error <= TOLERANCE,
            "{label}: derived {symbolic:e}, finite differences {numeric:e} (relative error {error:e})"
        );
        self.checked += 1;
        self.max_error = self.max_error.max(error);
    }
}

fn elems(values: &Value<f64>) -> Vec<Vec<f64>> {
    match values {
        Value::Elem(xs) => xs.clone(),
        other => panic!("{other:?} is not per element"),
    }
}

/// Runs hypergradient SGD (`hypers`: the initial learning rate and the
/// hypergradient step size) for six steps on fresh random gradients from
/// `seed`; `check` sees each step's number, gradients, the previous step's
/// gradients, the parameters before the step and the step's outputs.
fn run_hd_sgd(
    hd_sgd: &Rule,
    seed: u64,
    hypers: [f64; 2],
    mut check: impl FnMut(u64, &Value<f64>, Option<&Value<f64>>, &[Vec<f64>], &StepOutputs<f64>),
) {
    let mut random = Random(seed);
    let mut point = Point {
        params: random.signed_tensors(0.2, 2.0),
        grads: Vec::new(),
        step: 1,
        hypers: hypers.to_vec(),
        state: Vec::new(),
    };
    let mut previous_grads: Option<Value<f64>> = None;
    for step in 1..=6 {
        point.step = step;
        point.grads = random.signed_tensors(0.2, 2.0);
        let grads = Value::Elem(point.grads.clone());
        let out = run_from(hd_sgd, &point, (step > 1).then_some(point.state.as_slice()));
        check(step, &grads, previous_grads.as_ref(), &point.params, &out);
        point.params = out.params;
        point.state = out.state;
        previous_grads = Some(grads);
    }
}

#[test]
fn hd_sgd_adds_the_dot_product_of_successive_gradients() {
    let sgd = stdlib_rule("sgd");
    let hd_sgd = hypergradient(&sgd, "learning_rate", 1e-3, Form::Additive)
        .expect("sgd adapts its learning rate");
    assert_eq!(hd_sgd.name, "hd_sgd");
    let names: Vec<&str> = hd_sgd.states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["learning_rate_t", "d_p_d_learning_rate"]);
    assert_eq!(hd_sgd.hypers[1].name, "hypergrad_lr");
    let (initial, beta) = (0.05, 0.02);
    let mut learning_rate = initial;
    run_hd_sgd(
        &hd_sgd,
        11,
        [initial, beta],
        |step, grads, previous, params, out| {
            if let Some(previous) = previous {
                learning_rate += beta * dot(grads, previous);
            }
            assert_eq!(out.state[0], Value::Group(learning_rate), "step {step}");
            let expected = Value::Elem(params.to_vec()).zip(grads, |p, g| p - learning_rate * g);
            assert_eq!(Value::Elem(out.params.clone()), expected, "step {step}");
            assert_eq!(out.state[1], grads.map(|g| -g), "d p_t / d lr = -g_t");
        },
    );
    assert!(learning_rate != initial);
}

#[test]
fn multiplicative_hd_sgd_scales_by_the_cosine_of_successive_gradients() {
    let hd_sgd = hypergradient(
        &stdlib_rule("sgd"),
        "learning_rate",
        0.1,
        Form::Multiplicative,
    )
    .expect("sgd adapts its learning rate");
    let (initial, beta) = (0.05, 0.1);
    let mut learning_rate = initial;
    run_hd_sgd(
        &hd_sgd,
        12,
        [initial, beta],
        |step, grads, previous, _, out| {
            if let Some(previous) = previous {
                let cosine =
                    dot(grads, previous) / (dot(grads, grads) * dot(previous, previous)).sqrt();
                learning_rate *= 1.0 + beta * cosine;
            }
            match out.state[0] {
                Value::Group(adapted) => assert!(
                    (adapted - learning_rate).abs() <= 1e-15 * learning_rate,
                    "step {step}: {adapted} vs {learning_rate}"
                ),
                ref other => panic!("{other:?}"),
            }
        },
    );
    assert!(learning_rate != initial);
}

#[test]
fn hd_adam_is_the_papers_hd_adam() {
    let adam = stdlib_rule("adam");
    let hd_adam = hypergradient(&adam, "learning_rate", 1e-7, Form::Additive)
        .expect("adam adapts its learning rate");
    assert_eq!(hd_adam.name, "hd_adam");
    let alpha_slot = adam.states.len();
    let mut random = Random(12);
    let beta = 1e-5;
    let mut point = Point {
        params: random.signed_tensors(0.2, 2.0),
        grads: Vec::new(),
        step: 1,
        hypers: Vec::new(),
        state: Vec::new(),
    };
    let mut previous_direction = None;
    for step in 1..=6 {
        point.step = step;
        point.hypers = default_hypers(&adam, step);
        let hyper =
            |name: &str| point.hypers[adam.hyper_index(name).expect("an adam hyperparameter")];
        let (b1, b2, eps, t) = (hyper("b1"), hyper("b2"), hyper("eps"), step as i32);
        point.hypers.push(beta);
        point.grads = random.signed_tensors(0.2, 2.0);
        let grads = Value::Elem(point.grads.clone());
        let out = run_from(
            &hd_adam,
            &point,
            (step > 1).then_some(point.state.as_slice()),
        );
        let alpha = group(&out.state[alpha_slot]);
        // HD-Adam: alpha_t = alpha_{t-1} + beta <g_t, mu_hat_{t-1} / (sqrt(nu_hat_{t-1}) + eps)>.
        match &previous_direction {
            None => assert_eq!(alpha, point.hypers[0], "the first step keeps alpha"),
            Some(direction) => {
                let alpha_before = group(&point.state[alpha_slot]);
                let expected = beta * dot(&grads, direction);
                let error = ((alpha - alpha_before) - expected).abs();
                assert!(
                    error <= 1e-12 * expected.abs(),
                    "step {step}: {alpha} - {alpha_before} != {expected}"
                );
            }
        }
        // The step is Adam's with alpha_t as its learning rate.
        let mut with_alpha = point.clone();
        with_alpha.hypers.pop();
        with_alpha.hypers[0] = alpha;
        let base = run_from(
            &adam,
            &with_alpha,
            (step > 1).then(|| &point.state[..alpha_slot]),
        );
        assert_eq!(out.params, base.params, "step {step}");
        assert_eq!(out.state[..alpha_slot], base.state[..], "step {step}");
        previous_direction = Some(out.state[0].zip(&out.state[1], |mu, nu| {
            let (mu_hat, nu_hat) = (mu / (1.0 - b1.powi(t)), nu / (1.0 - b2.powi(t)));
            mu_hat / (nu_hat.sqrt() + eps)
        }));
        point.params = out.params;
        point.state = out.state;
    }
}

/// For one float hyperparameter that `hd` adapts in `base`: at a warmed-up
/// point with a random previous derivative, the adapted value moves by
/// `-beta <g, d_prev>`, the step is the base step at the adapted value, and
/// the new derivative equals finite differences of the base step in the
/// hyperparameter. `false` if every point tried was near a kink.
fn check_hypergradient(
    tally: &mut Tally,
    random: &mut Random,
    base: &Rule,
    hd: &Rule,
    hyper: usize,
) -> bool {
    let label = format!("{} / {}", base.name, base.hypers[hyper].name);
    let (value_slot, derivative_slot) = (base.states.len(), base.states.len() + 1);
    for _ in 0..ATTEMPTS {
        let mut point = warmed_up(base, random);
        let previous = point.hypers[hyper];
        let previous_derivative = random.value(Shape::Elem, -1.0, 1.0);
        let grads = Value::Elem(point.grads.clone());
        // A small move, so that the adapted value stays in its valid range.
        let sign = if random.unit() < 0.5 { -1.0 } else { 1.0 };
        let beta = sign * 1e-4 * previous.abs().max(1e-3) / dot(&grads, &previous_derivative);
        let mut hd_point = point.clone();
        hd_point.hypers.push(beta);
        hd_point
            .state
            .extend([Value::Group(previous), previous_derivative.clone()]);
        let out = run(hd, &hd_point);

        let adapted = group(&out.state[value_slot]);
        assert_eq!(
            adapted,
            previous - beta * dot(&grads, &previous_derivative),
            "{label}"
        );
        point.hypers[hyper] = adapted;
        let base_out = run(base, &point);
        assert_eq!(out.params, base_out.params, "{label}");
        assert_eq!(out.state[..value_slot], base_out.state[..], "{label}");

        let scale = adapted.abs().max(1e-3);
        let moved = |h: f64| {
            let mut moved = point.clone();
            moved.hypers[hyper] += h * scale;
            let params: Vec<f64> = run(base, &moved).params.concat();
            let magnitudes = params.iter().map(|p| p.abs()).collect();
            (params, magnitudes)
        };
        let Some(numeric) = finite_difference(moved) else {
            continue;
        };
        let derivative = elems(&out.state[derivative_slot]).concat();
        for (symbolic, (value, noise)) in derivative.iter().zip(numeric) {
            tally.compare(*symbolic, (value / scale, noise / scale), &label);
        }
        return true;
    }
    false
}

#[test]
fn every_stdlib_hypergradient_matches_finite_differences() {
    let started = std::time::Instant::now();
    let program = optc_stdlib::prelude();
    let mut random = Random(2025);
    let mut tally = Tally::default();
    let (mut adapted, mut rejected) = (Vec::new(), Vec::new());
    for name in program.optimizers() {
        let base = program
            .compile(name)
            .unwrap_or_else(|d| panic!("{name}: {}", d.message));
        if rounds_to_bf16(&base) {
            continue;
        }
        for (hyper, declared) in base.hypers.iter().enumerate() {
            if declared.kind != Kind::Float {
                continue;
            }
            let label = format!("{name} / {}", declared.name);
            match hypergradient(&base, &declared.name, 1e-3, Form::Additive) {
                Ok(hd) => {
                    assert_eq!(hd.name, format!("hd_{name}"));
                    assert!(
                        check_hypergradient(&mut tally, &mut random, &base, &hd, hyper),
                        "{label}: no smooth point found"
                    );
                    adapted.push(label);
                }
                Err(message) => {
                    assert!(message.contains("does not depend"), "{label}: {message}");
                    assert_update_ignores(&base, hyper, &mut random, &label);
                    rejected.push(label);
                }
            }
        }
    }
    eprintln!(
        "{} hyperparameters adapted, {} derivatives checked, max relative error {:e}, {:?}\nrejected: {}",
        adapted.len(),
        tally.checked,
        tally.max_error,
        started.elapsed(),
        rejected.join(", ")
    );
    assert!(adapted.len() >= 150, "{} adapted", adapted.len());
}

/// A rejected hyperparameter really leaves the update of `p` alone (after
/// the first step): nudging it changes no parameter.
fn assert_update_ignores(base: &Rule, hyper: usize, random: &mut Random, label: &str) {
    let point = warmed_up(base, random);
    let expected = run(base, &point).params;
    for factor in [1.0 - 1e-6, 1.0 + 1e-6] {
        let mut moved = point.clone();
        moved.hypers[hyper] = if point.hypers[hyper] == 0.0 {
            factor - 1.0
        } else {
            point.hypers[hyper] * factor
        };
        assert_eq!(run(base, &moved).params, expected, "{label}");
    }
}

/// Checks the adjoint of `base` at a warmed-up point with random cotangents
/// for the variables in `pending`; returns those it could not check (a kink
/// within the difference step).
fn check_adjoint(
    tally: &mut Tally,
    random: &mut Random,
    base: &Rule,
    pending: &[Variable],
) -> Vec<Variable> {
    let derived = adjoint(base);
    let point = warmed_up(base, random);
    let cotangents: Vec<Value<f64>> = std::iter::once(Shape::Elem)
        .chain(base.states.iter().map(|slot| slot.shape))
        .map(|shape| random.value(shape, -1.0, 1.0))
        .collect();
    let results = derived.rule.states.len() - derived.adjoint_of_param;
    let mut adjoint_point = point.clone();
    adjoint_point.state.extend(cotangents.iter().cloned());
    adjoint_point.state.extend(
        derived.rule.states[derived.adjoint_of_param..]
            .iter()
            .map(|slot| Value::Group(0.0).broadcast(slot.shape, &VIEWS)),
    );
    let out = run(&derived.rule, &adjoint_point);
    assert_eq!(
        out.params, point.params,
        "{}: p is left unchanged",
        base.name
    );
    assert_eq!(
        out.state[..derived.adjoint_of_param],
        adjoint_point.state[..derived.adjoint_of_param],
        "{}: state and cotangents are read only",
        base.name
    );
    let result = |variable: Variable| -> &Value<f64> {
        let offset = match variable {
            Variable::Param => 0,
            Variable::Grad => 1,
            Variable::State(i) => 2 + i,
            Variable::Hyper(i) => {
                let k = derived
                    .float_hypers
                    .iter()
                    .position(|&h| h == i)
                    .expect("a float hyperparameter");
                2 + base.states.len() + k
            }
        };
        assert!(offset < results);
        &out.state[derived.adjoint_of_param + offset]
    };
    let mut unchecked = Vec::new();
    for &variable in pending {
        let value = point.get(variable);
        let direction = value.map(|x| {
            let size = match variable {
                Variable::Hyper(_) => x.abs().max(1e-3),
                _ if x == 0.0 => 1e-3,
                _ => x.abs(),
            };
            size * random.uniform(-1.0, 1.0)
        });
        match objective_difference(base, &point, &cotangents, variable, &direction) {
            Some(numeric) => {
                let label = format!("{} / d{variable:?}", base.name);
                tally.compare(dot(result(variable), &direction), numeric, &label);
            }
            None => unchecked.push(variable),
        }
    }
    unchecked
}

#[test]
fn every_stdlib_adjoint_matches_finite_differences() {
    let started = std::time::Instant::now();
    let program = optc_stdlib::prelude();
    let names = program.optimizers();
    let mut random = Random(2026);
    let mut tally = Tally::default();
    for &name in &names {
        let base = program
            .compile(name)
            .unwrap_or_else(|d| panic!("{name}: {}", d.message));
        if rounds_to_bf16(&base) {
            continue;
        }
        check_every_variable(&base, |pending| {
            check_adjoint(&mut tally, &mut random, &base, pending)
        });
    }
    eprintln!(
        "{} adjoints: {} cotangents checked, max relative error {:e}, {:?}",
        names.len(),
        tally.checked,
        tally.max_error,
        started.elapsed()
    );
    assert!(names.len() >= 40, "{} optimizers", names.len());
}

#[test]
fn adjoint_layout_names_its_slots() {
    let adam = stdlib_rule("adam");
    let derived = adjoint(&adam);
    assert_eq!(derived.rule.name, "adjoint_adam");
    let names: Vec<&str> = derived
        .rule
        .states
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "mu",
            "nu",
            "ct_p",
            "ct_mu",
            "ct_nu",
            "adj_p",
            "adj_g",
            "adj_mu",
            "adj_nu",
            "adj_learning_rate",
            "adj_b1",
            "adj_b2",
            "adj_eps",
            "adj_eps_root"
        ]
    );
    assert_eq!(
        (derived.cotangent_of_param, derived.adjoint_of_param),
        (2, 5)
    );
    assert_eq!(derived.float_hypers, [0, 1, 2, 3, 4]);
    assert_eq!(derived.rule.hypers.len(), adam.hypers.len());
}

#[test]
fn derived_rules_plan_as_fused_kernels() {
    let program = optc_stdlib::prelude();
    for name in program.optimizers() {
        let base = program
            .compile(name)
            .unwrap_or_else(|d| panic!("{name}: {}", d.message));
        let hd = base
            .hypers
            .iter()
            .find_map(|hyper| hypergradient(&base, &hyper.name, 1e-3, Form::Additive).ok())
            .unwrap_or_else(|| panic!("{name} adapts some hyperparameter"));
        let derived = adjoint(&base);
        for (rule, first_step) in [(&hd, true), (&hd, false), (&derived.rule, false)] {
            let plan = Plan::new(rule, first_step);
            let buffered = plan.state_buffers.iter().filter(|b| b.is_some()).count();
            assert_eq!(buffered, rule.elem_state_slots(), "{}", rule.name);
            assert!(!plan.passes.is_empty(), "{}", rule.name);
        }
    }
}

#[test]
fn hyperparameters_that_cannot_adapt_are_errors_naming_the_valid_ones() {
    let unknown =
        hypergradient(&stdlib_rule("adam"), "momentum", 1e-3, Form::Additive).unwrap_err();
    assert!(
        unknown.contains("no hyperparameter `momentum`"),
        "{unknown}"
    );
    assert!(
        unknown.contains("learning_rate, b1, b2, eps, eps_root"),
        "{unknown}"
    );
    let bool_hyper =
        hypergradient(&stdlib_rule("lars"), "nesterov", 1e-3, Form::Additive).unwrap_err();
    assert!(bool_hyper.contains("`nesterov` is a bool"), "{bool_hyper}");
    assert!(bool_hyper.contains("learning_rate"), "{bool_hyper}");
    // rprop's learning rate only initialises its step sizes.
    let initial_only =
        hypergradient(&stdlib_rule("rprop"), "learning_rate", 1e-3, Form::Additive).unwrap_err();
    assert!(
        initial_only.contains("does not depend on `learning_rate`"),
        "{initial_only}"
    );
    assert!(!initial_only.contains(": learning_rate"), "{initial_only}");
    // Lion's b1 reaches p only through a sign.
    let through_sign = hypergradient(&stdlib_rule("lion"), "b1", 1e-3, Form::Additive).unwrap_err();
    assert!(
        through_sign.contains("does not depend on `b1`"),
        "{through_sign}"
    );
    assert!(
        through_sign.ends_with("learning_rate, weight_decay"),
        "{through_sign}"
    );
    let infinite = hypergradient(
        &stdlib_rule("sgd"),
        "learning_rate",
        f64::INFINITY,
        Form::Additive,
    )
    .unwrap_err();
    assert!(infinite.contains("must be finite"), "{infinite}");
}

/// Derived rules stay close to what a person would write: after exact
/// simplification, hypergradient SGD and Adam have at most twice the nodes of
/// hand-written HD-SGD and HD-Adam (the papers' algorithms) simplified alike.
#[test]
fn derived_rules_are_no_longer_than_twice_the_hand_written_ones() {
    let hand_written = [
        (
            "sgd",
            "optimizer hand(learning_rate = 1e-3, hypergrad_lr = 1e-7) {
                state rate: group = learning_rate;
                state previous = 0;
                rate += hypergrad_lr * group_dot(g, previous);
                p -= rate * g;
                previous = g;
            }",
        ),
        (
            "adam",
            "optimizer hand(learning_rate = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8,
                            eps_root = 0.0, hypergrad_lr = 1e-7) {
                state mu = 0;
                state nu = 0;
                state rate: group = learning_rate;
                state previous = 0;
                rate += hypergrad_lr * group_dot(g, previous);
                mu = lerp(mu, g, 1 - b1);
                nu = b2 * nu + (1 - b2) * g * g;
                let bc2 = 1 - b2^t;
                let step = 1 / (1 - b1^t) * mu / (sqrt(nu + eps_root * bc2) / sqrt(bc2) + eps);
                p -= rate * step;
                previous = step;
            }",
        ),
    ];
    for (base, source) in hand_written {
        let derived =
            hypergradient(&stdlib_rule(base), "learning_rate", 1e-7, Form::Additive).unwrap();
        let derived = simplify(&derived, Tier::Exact).graph.len();
        let hand = simplify(&compile(source), Tier::Exact).graph.len();
        println!("hd_{base}: derived {derived} nodes, hand-written {hand}");
        assert!(
            derived <= 2 * hand,
            "hd_{base}: derived {derived} nodes, hand-written {hand}"
        );
    }
}
