//! Reverse-mode differentiation checked against the interpreter: central
//! finite differences in f64 for every operation, every reduction and every
//! stdlib optimizer (at random points away from kinks), closed forms (SGD's
//! and Adam's learning-rate derivatives), the subgradient conventions at
//! their non-smooth points, and the shape of the graphs it builds.
//!
//! The derivative nodes are evaluated by the interpreter itself: a copy of
//! the rule gets extra state slots, "seed" slots whose inputs carry the
//! cotangents into the graph and "probe" slots whose outputs read the
//! derivative nodes out.

mod common;

use common::{
    check_every_variable, default_hypers, dot, group, numels, objective_difference, rounds_to_bf16,
    run_from, stdlib_rule, variables, warm_up, Point, Random, Values, Variable, TOLERANCE,
};
use optc_compiler::autodiff::{vjp, DERIVATIVE_RULES};
use optc_compiler::interpret::Value;
use optc_compiler::ir::{BinaryOp, Handle, Input, Kind, Node, Rule, Shape, StateSlot, Type};
use optc_compiler::{Origin, Program};

impl Random {
    /// One value per element of every tensor, uniform in `[low, high]`.
    fn tensors(&mut self, low: f64, high: f64) -> Vec<Vec<f64>> {
        numels()
            .iter()
            .map(|&n| (0..n).map(|_| self.uniform(low, high)).collect())
            .collect()
    }

    /// Like [`Random::tensors`], each with a random sign.
    fn signed_tensors(&mut self, low: f64, high: f64) -> Vec<Vec<f64>> {
        let mut tensors = self.tensors(low, high);
        for x in tensors.iter_mut().flatten() {
            if self.unit() < 0.5 {
                *x = -*x;
            }
        }
        tensors
    }
}

fn compile(source: &str) -> Rule {
    let mut program = Program::new();
    let file = program
        .add_source("test.opt", source.as_bytes(), Origin::User)
        .unwrap_or_else(|d| panic!("{}", d.message));
    let name = program.optimizers_in(file)[0].to_string();
    program
        .compile(&name)
        .unwrap_or_else(|d| panic!("{}", d.message))
}

fn variable_type(rule: &Rule, variable: Variable) -> Type {
    match variable {
        Variable::Param | Variable::Grad => Type::ELEM,
        Variable::State(i) => Type {
            shape: rule.states[i].shape,
            kind: Kind::Float,
        },
        Variable::Hyper(_) => Type::GROUP,
    }
}

fn variable_node(rule: &mut Rule, variable: Variable) -> Handle {
    let input = match variable {
        Variable::Param => Input::Param,
        Variable::Grad => Input::Grad,
        Variable::State(i) => Input::State(i as u32),
        Variable::Hyper(i) => Input::Hyper(i as u32),
    };
    let ty = variable_type(rule, variable);
    rule.graph.add(Node::Input(input, ty))
}

/// The rule's outputs (new `p`, then each new state) with their shapes.
fn outputs(rule: &Rule) -> Vec<(Handle, Shape)> {
    let states = rule.state_out.iter().zip(&rule.states);
    std::iter::once((rule.param_out, Shape::Elem))
        .chain(states.map(|(&out, slot)| (out, slot.shape)))
        .collect()
}

/// Adds a state slot; returns its index.
fn add_slot(rule: &mut Rule, name: &str, shape: Shape, init: Handle, out: Handle) -> usize {
    rule.states.push(StateSlot {
        name: name.to_string(),
        shape,
        init,
    });
    rule.state_out.push(out);
    rule.states.len() - 1
}

/// The cotangents of `wrt` (broadcast to their shapes) given `seeds` for
/// every output, computed by [`vjp`] and evaluated by the interpreter.
fn reverse(rule: &Rule, point: &Point, seeds: &[Value<f64>], wrt: &[Variable]) -> Vec<Value<f64>> {
    let mut probe = rule.clone();
    let zero = probe.graph.add(Node::constant(0.0));
    let mut seed_nodes = Vec::new();
    for (k, (output, shape)) in outputs(rule).into_iter().enumerate() {
        let index = probe.states.len();
        let ty = Type {
            shape,
            kind: Kind::Float,
        };
        let input = probe.graph.add(Node::Input(Input::State(index as u32), ty));
        add_slot(&mut probe, &format!("seed{k}"), shape, zero, input);
        seed_nodes.push((output, input));
    }
    let wrt_nodes: Vec<Handle> = wrt.iter().map(|&v| variable_node(&mut probe, v)).collect();
    let cotangents = vjp(&mut probe.graph, &seed_nodes, &wrt_nodes);
    let first_probe = probe.states.len();
    for (k, (&variable, &cotangent)) in wrt.iter().zip(&cotangents).enumerate() {
        let shape = variable_type(rule, variable).shape;
        add_slot(
            &mut probe,
            &format!("probe{k}"),
            shape,
            cotangent,
            cotangent,
        );
    }
    let state: Vec<Value<f64>> =
        point
            .state
            .iter()
            .chain(seeds)
            .cloned()
            .chain(wrt.iter().map(|&v| {
                Value::Group(0.0).broadcast(variable_type(rule, v).shape, &point.views())
            }))
            .collect();
    let out = run_from(&probe, point, Some(&state));
    out.state[first_probe..].to_vec()
}

/// A direction for `variable` at `point`: each component random in
/// `[-1, 1]` times the size of the input there (1e-3 where it is 0).
fn direction(random: &mut Random, point: &Point, variable: Variable) -> Value<f64> {
    let value = point.get(variable);
    let noise = random.value(value.shape(), -1.0, 1.0);
    value.zip(&noise, |x, u| if x == 0.0 { 1e-3 * u } else { x.abs() * u })
}

/// Results of comparing derivatives with finite differences.
#[derive(Default)]
struct Tally {
    checked: usize,
    /// Points skipped for a kink within the difference step.
    skipped: usize,
    max_error: f64,
}

impl Tally {
    /// Checks every variable of `rule` at `point` with random seeds;
    /// returns the variables that could not be checked (kinks nearby).
    fn check(
        &mut self,
        rule: &Rule,
        point: &Point,
        wrt: &[Variable],
        random: &mut Random,
        label: &str,
    ) -> Vec<Variable> {
        let seeds: Vec<Value<f64>> = outputs(rule)
            .iter()
            .map(|&(_, shape)| random.value(shape, -1.0, 1.0))
            .collect();
        let cotangents = reverse(rule, point, &seeds, wrt);
        let mut unchecked = Vec::new();
        for (&variable, cotangent) in wrt.iter().zip(&cotangents) {
            let direction = direction(random, point, variable);
            let Some((numeric, noise)) =
                objective_difference(rule, point, &seeds, variable, &direction)
            else {
                self.skipped += 1;
                unchecked.push(variable);
                continue;
            };
            let symbolic = dot(cotangent, &direction);
            // Relative error, but an error within the differences' rounding
            // noise counts as at most the tolerance.
            let scale = symbolic.abs().max(numeric.abs()).max(noise / TOLERANCE);
            let error = (symbolic - numeric).abs() / scale;
            assert!(
                error <= TOLERANCE,
                "{label}: d/d{variable:?}: vjp gives {symbolic:e}, finite differences {numeric:e} (relative error {error:e})\n{rule}"
            );
            self.checked += 1;
            self.max_error = self.max_error.max(error);
        }
        unchecked
    }
}

/// Compiles `statements` in a rule with hyperparameters `h`, `k` and state of
/// every shape (`m` per element, `r` per row, `c` per column, `s` per
/// tensor, `z` per group), and checks the derivatives of all its outputs
/// with respect to all its inputs at random positive points.
fn check_case(tally: &mut Tally, random: &mut Random, statements: &str) {
    let rule = compile(&format!(
        "optimizer case(h = 0.7, k = 1.3) {{
            state m = 1;
            state r: rows = 1;
            state c: cols = 1;
            state s: tensor = 1;
            state z: group = 1;
            {statements}
        }}"
    ));
    let wrt = variables(&rule);
    let mut pending = wrt.clone();
    for _ in 0..8 {
        let point = Point {
            params: random.tensors(0.5, 1.5),
            grads: random.tensors(0.5, 1.5),
            step: 2,
            hypers: vec![random.uniform(0.5, 0.9), random.uniform(1.1, 1.5)],
            state: rule
                .states
                .iter()
                .map(|slot| random.value(slot.shape, 0.5, 1.5))
                .collect(),
        };
        pending = tally.check(&rule, &point, &pending, random, statements);
        if pending.is_empty() {
            return;
        }
    }
    panic!("{statements}: no smooth point found for {pending:?}");
}

fn check_cases(cases: &[&str]) {
    let mut tally = Tally::default();
    let mut random = Random(7);
    for statements in cases {
        check_case(&mut tally, &mut random, statements);
    }
    eprintln!(
        "{} cases: {} derivatives checked, {} points skipped near kinks, max relative error {:e}",
        cases.len(),
        tally.checked,
        tally.skipped,
        tally.max_error
    );
    assert_eq!(
        tally.checked,
        9 * cases.len(),
        "p, g, m, r, c, s, z, h and k of each case"
    );
}

#[test]
fn unary_operations_match_finite_differences() {
    check_cases(&[
        "p = -(p * g);",
        "p = abs(p - g) * m;",
        "p = sign(p - g) * p;",
        "p = sqrt(p * g);",
        "p = rsqrt(p + g);",
        "p = exp(p - g);",
        "p = log(p * g);",
        "p = tanh(p - g);",
        "p = sigmoid(3 * (p - g));",
        "p = cos(3 * p - g);",
        "p = cbrt(p - 2 * g);",
        "p = floor(4 * p) * g;",
        "p = if !(p > g) { p } else { g * h };",
        "s = sqrt(s * z) + exp(-s) + log(s + h) + tanh(s) + sigmoid(s) + cos(s) + rsqrt(s) + cbrt(s);",
        "z = abs(z - h) + sign(z - k) * z + floor(3 * z) * h;",
    ]);
}

#[test]
fn binary_operations_match_finite_differences() {
    check_cases(&[
        "p = p + g * h;",
        "p = p - g;",
        "p = p * g * m;",
        "p = p / g;",
        "p = pow(p, g);",
        "p = p ^ h;",
        "p = h ^ (p - g);",
        "p = min(p, g);",
        "p = max(p * h, g);",
        "p = clamp(p, g - 0.3, g + 0.3);",
        "p = select(p < g, p, g * k);",
        "p = if p >= h && g != k || m == 0 { p * g } else { p / g };",
        "p = lerp(p, g, h);",
        "p = lerp(h, m, p);",
        "p = lerp(s, z, p);",
        "m = max(m, g) - min(k, p);",
        "s = s * z * h + k;",
        "s = max(s, z) / min(s * h, z) + pow(s, z);",
        "z = z * h - k * z / h;",
    ]);
}

#[test]
fn broadcasting_matches_finite_differences() {
    check_cases(&[
        "p = p * s + z * g;",
        "p = (s + z) / (h * s) * p;",
        "p = s * z;",
        "p = h;",
        "m = s - numel * z;",
        "s = z * h;",
        "p = select(s > 1, p * z, g * s);",
        "p = max(s, p) + min(z, g);",
    ]);
}

#[test]
fn reductions_match_finite_differences() {
    check_cases(&[
        "p = sum(p * g) * p;",
        "p = group_sum(p * g) * m;",
        "p = mean(p) * g;",
        "p = group_mean(p * m) * g;",
        "p = norm(p) * g;",
        "p = group_norm(p - g) * m;",
        "p = dot(p, g) * m;",
        "p = group_dot(p, m) * g;",
        "p = max(p * g) * m;",
        "p = group_max(p - g) * m;",
        "p = min(p + g) * m;",
        "p = group_min(p * m) * g;",
        "p = sum(h) * p + group_sum(k) * g;",
        "s = max(s * h) + min(s) + mean(s) + norm(s * h);",
        "z = group_max(s) * z + group_min(s * h) + group_sum(s * h) + group_mean(z) + group_norm(s);",
        "s = sum(z) * s + dot(s, z);",
        "z = group_dot(m, s) + group_max(m + z) * group_min(p * z);",
        "s = max(m * s) + norm(max(p, m) * s);",
    ]);
}

#[test]
fn row_and_column_values_match_finite_differences() {
    check_cases(&[
        "p = row_sum(p * g) * col_mean(g);",
        "p = p * r + c * g;",
        "r = row_mean(p * g) * r;",
        "c = col_sum(p - g) + col_norm(m) * c;",
        "r = row_max(p * g) + row_min(m);",
        "c = col_max(p + g * c) * col_min(m * r);",
        "p = r * c / max(mean(r), h) * g;",
        "m = row_dot(p, g) * col_dot(m, g);",
        "s = mean(r) * sum(c) + norm(r * c);",
        "z = group_sum(r) * group_max(c) + group_norm(row_sum(p));",
        "r = r * s + z * row_sum(c * nrows) / ncols;",
        "p = select(rank >= 2, r * c, c) * g;",
    ]);
}

#[test]
fn gram_matrices_and_products_match_finite_differences() {
    check_cases(&[
        "p = matmul(gram(p, g), m) * h;",
        "p = matmul(gram(p) * s + z, g);",
        "m = matmul(transpose(gram(p, m)), g) + r;",
        "p = matmul(matmul(gram(g), gram(p, m)), p) / (1 + norm(p));",
        "s = sum(gram(p, g)) + norm(matmul(gram(m), c * g)) * h;",
        "z = group_sum(matmul(gram(p), gram(g, r * m)) * k);",
        "p = matmul(3 * gram(p) - transpose(gram(m, g)) * gram(g), p + c);",
    ]);
}

/// A realistic point of step 4 of `rule` (see [`warm_up`]) from random
/// parameters, magnitudes in `[0.2, 2]`.
fn warmed_up(rule: &Rule, random: &mut Random) -> Point {
    let start = Point {
        params: random.signed_tensors(0.2, 2.0),
        grads: random.signed_tensors(0.2, 2.0),
        step: 1,
        hypers: default_hypers(rule, 1),
        state: Vec::new(),
    };
    warm_up(rule, random, start, |random| {
        random.signed_tensors(0.2, 2.0)
    })
}

#[test]
fn every_stdlib_optimizer_matches_finite_differences() {
    let program = optc_stdlib::prelude();
    let names = program.optimizers();
    let mut tally = Tally::default();
    let mut random = Random(2024);
    let started = std::time::Instant::now();
    for &name in &names {
        let rule = program
            .compile(name)
            .unwrap_or_else(|d| panic!("{name}: {}", d.message));
        if rounds_to_bf16(&rule) {
            // Straight-through: finite differences see the rounding's steps
            // (`bf16_rounding_passes_the_cotangent_through` checks it).
            continue;
        }
        check_every_variable(&rule, |pending| {
            let point = warmed_up(&rule, &mut random);
            tally.check(&rule, &point, pending, &mut random, name)
        });
    }
    eprintln!(
        "{} optimizers: {} derivatives checked, {} points skipped near kinks, max relative error {:e}, {:?}",
        names.len(),
        tally.checked,
        tally.skipped,
        tally.max_error,
        started.elapsed()
    );
    assert!(names.len() >= 40, "{} optimizers", names.len());
}

#[test]
fn bf16_rounding_passes_the_cotangent_through() {
    let mut rule = compile("optimizer o() { p = bf16(p * g) * 3; }");
    let seed = rule.graph.add(Node::constant(1.0));
    let p = rule.graph.add(Node::Input(Input::Param, Type::ELEM));
    let d = vjp(&mut rule.graph, &[(rule.param_out, seed)], &[p])[0];
    // d/dp (3 bf16(p g)) taken through the rounding: 3 g.
    let point = Point {
        params: vec![vec![1.5, -2.0]],
        grads: vec![vec![0.25, 3.0]],
        step: 1,
        hypers: Vec::new(),
        state: Vec::new(),
    };
    rule.states.push(StateSlot {
        name: "probe".into(),
        shape: Shape::Elem,
        init: d,
    });
    rule.state_out.push(d);
    let out = run_from(&rule, &point, None);
    assert_eq!(out.state[0], Value::Elem(vec![vec![0.75, 9.0]]));
}

/// Seeds: `v` for the new parameters, 0 for every new state.
fn seeds_on_params(rule: &Rule, point: &Point, v: Value<f64>) -> Vec<Value<f64>> {
    std::iter::once(v)
        .chain(
            rule.states
                .iter()
                .map(|slot| Value::Group(0.0).broadcast(slot.shape, &point.views())),
        )
        .collect()
}

/// `symbolic` is within `relative` of `expected` (sums over elements may
/// associate differently).
fn assert_close(symbolic: f64, expected: f64, relative: f64) {
    assert!(
        (symbolic - expected).abs() <= relative * expected.abs(),
        "{symbolic} != {expected}"
    );
}

#[test]
fn sgd_learning_rate_derivative_is_minus_g() {
    let rule = stdlib_rule("sgd");
    let mut random = Random(1);
    let point = warmed_up(&rule, &mut random);
    let v = random.value(Shape::Elem, -1.0, 1.0);
    let seeds = seeds_on_params(&rule, &point, v.clone());
    let learning_rate = rule
        .hyper_index("learning_rate")
        .expect("sgd has a learning rate");
    let d = reverse(&rule, &point, &seeds, &[Variable::Hyper(learning_rate)]);
    let minus_g = Value::Elem(point.grads.clone()).zip(&v, |g, _| -g);
    assert_close(group(&d[0]), dot(&v, &minus_g), 1e-14);
}

#[test]
fn adam_learning_rate_derivative_is_minus_the_normalised_step() {
    let rule = stdlib_rule("adam");
    let mut random = Random(2);
    let point = warmed_up(&rule, &mut random);
    let hyper = |name: &str| point.hypers[rule.hyper_index(name).expect("an adam hyperparameter")];
    let (b1, b2, eps, t) = (hyper("b1"), hyper("b2"), hyper("eps"), point.step as i32);
    assert_eq!(hyper("eps_root"), 0.0);
    let out = run_from(&rule, &point, Some(&point.state));
    let (Value::Elem(mu), Value::Elem(nu)) = (&out.state[0], &out.state[1]) else {
        panic!("adam's moments are per element")
    };
    let step = Value::Elem(mu.clone()).zip(&Value::Elem(nu.clone()), |mu, nu| {
        let (mu_hat, nu_hat) = (mu / (1.0 - b1.powi(t)), nu / (1.0 - b2.powi(t)));
        -mu_hat / (nu_hat.sqrt() + eps)
    });
    let v = random.value(Shape::Elem, -1.0, 1.0);
    let seeds = seeds_on_params(&rule, &point, v.clone());
    let learning_rate = rule
        .hyper_index("learning_rate")
        .expect("adam has a learning rate");
    let d = reverse(&rule, &point, &seeds, &[Variable::Hyper(learning_rate)]);
    assert_close(group(&d[0]), dot(&v, &step), 1e-12);
}

/// The cotangents of `wrt` for a stateless rule at the given gradients and
/// hyperparameters (parameters 1), seeded with 1 for every new parameter.
fn seeded_with_ones(
    source: &str,
    grads: Vec<Vec<f64>>,
    hypers: Vec<f64>,
    wrt: &[Variable],
) -> Vec<Value<f64>> {
    let rule = compile(source);
    let point = Point {
        params: grads.iter().map(|g| vec![1.0; g.len()]).collect(),
        grads,
        step: 2,
        hypers,
        state: Vec::new(),
    };
    let ones = Value::Group(1.0).broadcast(Shape::Elem, &point.views());
    reverse(&rule, &point, &[ones], wrt)
}

fn elems(values: &[&[f64]]) -> Value<f64> {
    Value::Elem(values.iter().map(|v| v.to_vec()).collect())
}

#[test]
fn abs_sign_and_floor_at_their_kinks() {
    let d = seeded_with_ones(
        "optimizer o() { p = abs(g) + 5 * sign(g) + floor(g); }",
        vec![vec![0.0, -0.0, 2.0, -3.0, 1.0]],
        vec![],
        &[Variable::Grad],
    );
    assert_eq!(
        d[0],
        elems(&[&[0.0, 0.0, 1.0, -1.0, 1.0]]),
        "abs' = sign, sign' = floor' = 0"
    );
}

#[test]
fn max_and_min_ties_go_to_the_first_operand() {
    let d = seeded_with_ones(
        "optimizer o(h = 0.5) { p = max(g, h) + 10 * min(g, h); }",
        vec![vec![0.5, 0.2, 0.9]],
        vec![0.5],
        &[Variable::Grad, Variable::Hyper(0)],
    );
    assert_eq!(d[0], elems(&[&[11.0, 10.0, 1.0]]));
    assert_eq!(d[1], Value::Group(0.0 + 1.0 + 10.0));
}

#[test]
fn clamp_bounds_count_as_inside() {
    let d = seeded_with_ones(
        "optimizer o(lo = -1, hi = 1) { p = clamp(g, lo, hi); }",
        vec![vec![-1.0, 1.0, 0.3, -2.0, 2.0]],
        vec![-1.0, 1.0],
        &[Variable::Grad, Variable::Hyper(0), Variable::Hyper(1)],
    );
    assert_eq!(d[0], elems(&[&[1.0, 1.0, 1.0, 0.0, 0.0]]));
    assert_eq!(d[1], Value::Group(1.0), "only -2 is clamped to lo");
    assert_eq!(d[2], Value::Group(1.0), "only 2 is clamped to hi");
}

#[test]
fn sqrt_and_norm_at_zero_have_derivative_zero() {
    let d = seeded_with_ones(
        "optimizer o() { p = sqrt(g) + 3 * norm(g); }",
        vec![vec![0.0, 0.0], vec![0.0, 4.0]],
        vec![],
        &[Variable::Grad],
    );
    // Second tensor: sqrt' = 1/4 at 4; norm's cotangent is 3 per element, 6
    // in all, times g / norm = (0, 1).
    assert_eq!(d[0], elems(&[&[0.0, 0.0], &[0.0, 0.25 + 6.0]]));
}

#[test]
fn cbrt_at_zero_has_derivative_zero() {
    let d = seeded_with_ones(
        "optimizer o() { p = cbrt(g); }",
        vec![vec![0.0, -0.0, 8.0, -8.0, -1.0, f64::INFINITY]],
        vec![],
        &[Variable::Grad],
    );
    // 1 / (3 cbrt(g)^2): 0 (not inf) at both zeros, even in cbrt(-8) = -2,
    // and 0 at infinity.
    assert_eq!(
        d[0],
        elems(&[&[0.0, 0.0, 1.0 / 12.0, 1.0 / 12.0, 1.0 / 3.0, 0.0]])
    );
}

#[test]
fn pow_at_a_zero_base() {
    let source = "optimizer o(h = 2) { p = pow(g, h); }";
    for (exponent, base_derivative) in [(2.0, 0.0), (0.5, 0.0), (1.0, 1.0), (0.0, 0.0)] {
        let d = seeded_with_ones(
            source,
            vec![vec![0.0, 0.0]],
            vec![exponent],
            &[Variable::Grad, Variable::Hyper(0)],
        );
        assert_eq!(
            d[0],
            elems(&[&[base_derivative; 2]]),
            "d/d base of 0^{exponent}"
        );
        assert_eq!(d[1], Value::Group(0.0), "d/d exponent of 0^{exponent}");
    }
    let d = seeded_with_ones(
        source,
        vec![vec![0.0, 2.0]],
        vec![3.0],
        &[Variable::Grad, Variable::Hyper(0)],
    );
    assert_eq!(d[0], elems(&[&[0.0, 12.0]]));
    assert_eq!(d[1], Value::Group(8.0 * 2f64.ln()));
}

#[test]
fn select_sends_the_cotangent_to_the_chosen_branch() {
    let d = seeded_with_ones(
        "optimizer o() { p = select(g > 0, 2 * g, 3 * g); }",
        vec![vec![0.0, 1.0, -1.0]],
        vec![],
        &[Variable::Grad],
    );
    assert_eq!(d[0], elems(&[&[3.0, 2.0, 3.0]]));
}

#[test]
fn max_and_min_reductions_share_the_cotangent_among_ties() {
    let d = seeded_with_ones(
        "optimizer o() { p = max(g); }",
        vec![vec![1.0, 3.0, 3.0], vec![5.0, 5.0]],
        vec![],
        &[Variable::Grad],
    );
    // Each tensor's maximum collects its numel seeds of 1.
    assert_eq!(d[0], elems(&[&[0.0, 1.5, 1.5], &[1.0, 1.0]]));
    let d = seeded_with_ones(
        "optimizer o() { p = group_min(g); }",
        vec![vec![1.0, 3.0, 1.0], vec![1.0, 2.0]],
        vec![],
        &[Variable::Grad],
    );
    let third = 5.0 / 3.0;
    assert_eq!(d[0], elems(&[&[third, 0.0, third], &[third, 0.0]]));
}

#[test]
fn nan_in_a_branch_not_taken_stays_out_of_the_derivative() {
    let d = seeded_with_ones(
        "optimizer o(h = 0.7) { p = if g > 0 { sqrt(g) * h } else { -g * h }; }",
        vec![vec![-1.0, 4.0]],
        vec![0.7],
        &[Variable::Grad, Variable::Hyper(0)],
    );
    assert_eq!(d[0], elems(&[&[-0.7, 0.7 / 4.0]]));
    assert_eq!(d[1], Value::Group(1.0 + 2.0), "sqrt(-1) is not taken");
    let d = seeded_with_ones(
        "optimizer o() { p = max(1, sqrt(g - 2)); }",
        vec![vec![1.0, 6.0]],
        vec![],
        &[Variable::Grad],
    );
    assert_eq!(
        d[0],
        elems(&[&[0.0, 0.25]]),
        "max(1, NaN) = 1 does not read the NaN"
    );
}

#[test]
fn radam_derivatives_are_finite_while_its_rectifier_is_nan() {
    // At t = 3, rho_t = 2.9987: the rectifier is the square root of a
    // negative number, in the branch not taken (rho_t <= 5).
    let rule = stdlib_rule("radam");
    let mut random = Random(3);
    let mut point = warmed_up(&rule, &mut random);
    point.step = 3;
    point.hypers = default_hypers(&rule, 3);
    let wrt = variables(&rule);
    let mut tally = Tally::default();
    let unchecked = tally.check(&rule, &point, &wrt, &mut random, "radam at t = 3");
    assert!(unchecked.is_empty(), "{unchecked:?}");
    assert_eq!(tally.checked, wrt.len());
}

#[test]
fn adam_derivatives_are_finite_where_the_gradient_and_moments_are_zero() {
    let rule = stdlib_rule("adam");
    let point = Point {
        params: vec![vec![1.0, 1.0]],
        grads: vec![vec![0.0, 0.0]],
        step: 2,
        hypers: default_hypers(&rule, 2),
        state: vec![elems(&[&[0.0, 0.0]]), elems(&[&[0.0, 0.0]])],
    };
    let v = elems(&[&[1.0, -2.0]]);
    let seeds = seeds_on_params(&rule, &point, v);
    let d = reverse(&rule, &point, &seeds, &variables(&rule));
    for value in &d {
        assert!(value.total().is_finite(), "{value:?}");
    }
    // p_t = p - lr mu_hat / (sqrt(nu_hat) + eps) with mu = (1 - b1) g and nu ∝ g^2:
    // at g = 0 only mu moves, by (1 - b1) per unit of g.
    let hyper = |name: &str| point.hypers[rule.hyper_index(name).expect("an adam hyperparameter")];
    let slope =
        -hyper("learning_rate") * (1.0 - hyper("b1")) / (1.0 - hyper("b1").powi(2)) / hyper("eps");
    let Value::Elem(dg) = &d[1] else {
        panic!("g's cotangent is per element")
    };
    for (&symbolic, expected) in dg[0].iter().zip([slope, -2.0 * slope]) {
        assert_close(symbolic, expected, 1e-12);
    }
}

#[test]
fn paths_that_are_identically_zero_add_no_nodes() {
    let mut rule = stdlib_rule("sign_sgd");
    let v = rule.graph.add(Node::Input(Input::Grad, Type::ELEM));
    let p = variable_node(&mut rule, Variable::Param);
    let g = variable_node(&mut rule, Variable::Grad);
    let t = rule.graph.add(Node::Input(Input::Step, Type::GROUP));
    let before = rule.graph.len();
    let d = vjp(&mut rule.graph, &[(rule.param_out, v)], &[p, g, t]);
    assert_eq!(
        d[0], v,
        "p_t = p - ...: the cotangent of p is the seed itself"
    );
    for &zero in &d[1..] {
        assert_eq!(
            *rule.graph.node(zero),
            Node::constant(0.0),
            "sign' = 0, t unused"
        );
    }
    assert!(
        rule.graph.len() <= before + 1,
        "at most the constant 0 is new:\n{rule}"
    );
}

#[test]
fn differentiating_twice_adds_nothing_the_second_time() {
    let mut rule = stdlib_rule("lamb");
    let seeds: Vec<(Handle, Handle)> = outputs(&rule).iter().map(|&(out, _)| (out, out)).collect();
    let wrt: Vec<Handle> = variables(&rule)
        .into_iter()
        .map(|v| variable_node(&mut rule, v))
        .collect();
    let first = vjp(&mut rule.graph, &seeds, &wrt);
    let size = rule.graph.len();
    let second = vjp(&mut rule.graph, &seeds, &wrt);
    assert_eq!(first, second);
    assert_eq!(rule.graph.len(), size, "hash-consing shares every node");
}

#[test]
fn bool_nodes_have_no_cotangent() {
    let mut rule = stdlib_rule("rprop");
    let comparisons: Vec<Handle> = rule
        .graph
        .iter()
        .filter(|&(h, _)| rule.graph.ty(h).kind == Kind::Bool)
        .map(|(h, _)| h)
        .collect();
    assert!(!comparisons.is_empty(), "rprop compares g * prev with 0");
    let seed = rule.graph.add(Node::constant(1.0));
    let d = vjp(&mut rule.graph, &[(rule.param_out, seed)], &comparisons);
    for h in d {
        assert_eq!(*rule.graph.node(h), Node::constant(0.0));
    }
}

#[test]
fn the_manual_lists_every_derivative_rule() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/language.md");
    let manual = std::fs::read_to_string(path).expect("docs/language.md is readable");
    let squeeze = |text: &str| text.split_whitespace().collect::<String>();
    let manual = squeeze(&manual);
    for (name, rule) in DERIVATIVE_RULES {
        let line = format!("{name}: {rule}");
        assert!(
            manual.contains(&squeeze(&line)),
            "docs/language.md lacks the rule\n{line}"
        );
    }
}

#[test]
fn a_bool_seed_reads_as_one_or_zero() {
    let mut rule = stdlib_rule("sgd");
    let g = variable_node(&mut rule, Variable::Grad);
    let zero = rule.graph.add(Node::constant(0.0));
    let positive = rule.graph.add(Node::Binary(BinaryOp::Gt, g, zero));
    let p = variable_node(&mut rule, Variable::Param);
    let d = vjp(&mut rule.graph, &[(rule.param_out, positive)], &[p])[0];
    add_slot(&mut rule, "dp", Shape::Elem, d, d);
    let point = Point {
        params: vec![vec![1.0, 1.0, 1.0]],
        grads: vec![vec![2.0, -1.0, 0.0]],
        step: 1,
        hypers: vec![0.1],
        state: Vec::new(),
    };
    let out = run_from(&rule, &point, None);
    assert_eq!(out.state[0], elems(&[&[1.0, 0.0, 0.0]]));
}
