//! Derived rules checked through the reference interpreter in f64: the
//! hypergradient variants against the closed forms of HD-SGD and HD-Adam and,
//! for every stdlib optimizer and float hyperparameter, against central finite
//! differences of the base rule's step; the adjoints of every stdlib
//! optimizer against finite differences of `<cotangents, step outputs>`; and
//! the errors for hyperparameters that cannot be adapted.

use optc_compiler::derive::{adjoint, hypergradient};
use optc_compiler::interpret::{self, StepInputs, StepOutputs, Value};
use optc_compiler::ir::{Kind, Rule, Shape};
use optc_compiler::plan::Plan;

/// Tensor sizes of every step: a single-element tensor between two others,
/// so per-tensor and group reductions differ.
const NUMELS: [usize; 3] = [4, 1, 3];
/// Largest accepted relative error between a derivative and its
/// (Richardson-extrapolated) central difference.
const TOLERANCE: f64 = 1e-6;
/// Fresh points tried per check before a kink everywhere counts as failure.
const ATTEMPTS: usize = 8;

/// SplitMix64: reproducible random points without a dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next()
    }

    /// Magnitudes uniform in `[low, high]`, each with a random sign.
    fn signed_tensors(&mut self, low: f64, high: f64) -> Vec<Vec<f64>> {
        NUMELS
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        let x = self.uniform(low, high);
                        if self.next() < 0.5 {
                            -x
                        } else {
                            x
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn value(&mut self, shape: Shape, low: f64, high: f64) -> Value<f64> {
        Value::Group(0.0)
            .broadcast(shape, &NUMELS)
            .map(|_| self.uniform(low, high))
    }
}

/// Element-wise arithmetic on interpreter values of one shape.
trait Values: Sized {
    fn map(&self, f: impl FnMut(f64) -> f64) -> Self;
    fn zip(&self, other: &Self, f: impl Fn(f64, f64) -> f64) -> Self;
    fn total(&self) -> f64;
}

impl Values for Value<f64> {
    fn map(&self, mut f: impl FnMut(f64) -> f64) -> Self {
        match self {
            Value::Group(x) => Value::Group(f(*x)),
            Value::Tensor(xs) => Value::Tensor(xs.iter().map(|&x| f(x)).collect()),
            Value::Elem(xs) => Value::Elem(
                xs.iter()
                    .map(|x| x.iter().map(|&x| f(x)).collect())
                    .collect(),
            ),
        }
    }

    fn zip(&self, other: &Self, f: impl Fn(f64, f64) -> f64) -> Self {
        let zip = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(&x, &y)| f(x, y)).collect();
        match (self, other) {
            (Value::Group(x), Value::Group(y)) => Value::Group(f(*x, *y)),
            (Value::Tensor(x), Value::Tensor(y)) => Value::Tensor(zip(x, y)),
            (Value::Elem(x), Value::Elem(y)) => {
                Value::Elem(x.iter().zip(y).map(|(x, y)| zip(x, y)).collect())
            }
            _ => panic!("shapes differ: {self:?} and {other:?}"),
        }
    }

    /// The sum of every number, in the interpreter's order for group
    /// reductions: within each tensor, then over tensors.
    fn total(&self) -> f64 {
        match self {
            Value::Group(x) => *x,
            Value::Tensor(xs) => xs.iter().sum(),
            Value::Elem(xs) => xs
                .iter()
                .map(|x| x.iter().fold(0.0, |a, b| a + b))
                .fold(0.0, |a, b| a + b),
        }
    }
}

fn dot(a: &Value<f64>, b: &Value<f64>) -> f64 {
    a.zip(b, |x, y| x * y).total()
}

fn group(value: &Value<f64>) -> f64 {
    match value {
        Value::Group(x) => *x,
        other => panic!("{other:?} is not one number"),
    }
}

fn stdlib_rule(name: &str) -> Rule {
    optc_stdlib::prelude()
        .compile(name)
        .unwrap_or_else(|d| panic!("{name}: {}", d.message))
}

fn default_hypers(rule: &Rule, step: u64) -> Vec<f64> {
    let mut values = Vec::new();
    for hyper in &rule.hypers {
        let default = hyper
            .default
            .as_ref()
            .expect("stdlib hyperparameters have defaults");
        values.push(interpret::scalar(default, step, &values));
    }
    values
}

/// Everything one step after the first reads.
#[derive(Clone, Debug)]
struct Point {
    params: Vec<Vec<f64>>,
    grads: Vec<Vec<f64>>,
    step: u64,
    hypers: Vec<f64>,
    state: Vec<Value<f64>>,
}

fn run(rule: &Rule, point: &Point) -> StepOutputs<f64> {
    run_from(rule, point, Some(&point.state))
}

fn run_from(rule: &Rule, point: &Point, state: Option<&[Value<f64>]>) -> StepOutputs<f64> {
    let params: Vec<&[f64]> = point.params.iter().map(Vec::as_slice).collect();
    let grads: Vec<&[f64]> = point.grads.iter().map(Vec::as_slice).collect();
    let inputs = StepInputs {
        params: &params,
        grads: &grads,
        step: point.step,
        hypers: &point.hypers,
        state,
    };
    interpret::step(rule, &inputs).expect("inputs fit the rule")
}

/// A realistic point of step 4 of `rule`: three steps from random
/// parameters with random gradients, then state jittered by up to 20% (so no
/// `max` of a state and its own last value ties; exact zeros become small
/// values), and a fresh gradient.
fn warmed_up(rule: &Rule, random: &mut Random) -> Point {
    let mut point = Point {
        params: random.signed_tensors(0.2, 2.0),
        grads: Vec::new(),
        step: 1,
        hypers: Vec::new(),
        state: Vec::new(),
    };
    let mut state = None;
    for step in 1..=3 {
        point.step = step;
        point.hypers = default_hypers(rule, step);
        point.grads = random.signed_tensors(0.2, 2.0);
        let out = run_from(rule, &point, state.as_deref());
        point.params = out.params;
        state = Some(out.state);
    }
    point.step = 4;
    point.hypers = default_hypers(rule, 4);
    point.grads = random.signed_tensors(0.2, 2.0);
    point.state = state
        .unwrap_or_default()
        .iter()
        .map(|value| {
            value.map(|x| {
                let jitter = random.uniform(0.8, 1.2);
                if x == 0.0 {
                    0.1 * (jitter - 0.7)
                } else {
                    x * jitter
                }
            })
        })
        .collect();
    point
}

/// The derivative of `f` at 0, per component, by central differences with
/// Richardson extrapolation, with each component's rounding noise. `f` gives
/// values and their rounding scales. Steps shrink from 1e-3 until two step
/// sizes agree on every component; `None` if they never do (a kink nearby).
fn finite_difference(f: impl Fn(f64) -> (Vec<f64>, Vec<f64>)) -> Option<Vec<(f64, f64)>> {
    let central = |h: f64| -> Vec<f64> {
        let (up, down) = (f(h).0, f(-h).0);
        up.iter()
            .zip(&down)
            .map(|(u, d)| (u - d) / (2.0 * h))
            .collect()
    };
    let magnitudes = f(0.0).1;
    [1e-3, 1e-4, 1e-5, 1e-6].into_iter().find_map(|h| {
        let (coarse, fine) = (central(h), central(h / 2.0));
        let mut derivative = Vec::new();
        for ((c, f), magnitude) in coarse.iter().zip(&fine).zip(&magnitudes) {
            // Each output carries a few dozen roundings of its own.
            let noise = 64.0 * f64::EPSILON * magnitude / h;
            if (c - f).abs() > 1e-6 * c.abs().max(f.abs()) + noise || c.is_nan() || f.is_nan() {
                return None;
            }
            derivative.push(((4.0 * f - c) / 3.0, noise));
        }
        Some(derivative)
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

#[test]
fn hd_sgd_adds_the_dot_product_of_successive_gradients() {
    let sgd = stdlib_rule("sgd");
    let hd_sgd = hypergradient(&sgd, "learning_rate", 1e-3).expect("sgd adapts its learning rate");
    assert_eq!(hd_sgd.name, "hd_sgd");
    let names: Vec<&str> = hd_sgd.states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["learning_rate_t", "d_p_d_learning_rate"]);
    assert_eq!(hd_sgd.hypers[1].name, "hypergrad_lr");
    let mut random = Random(11);
    let (initial, beta) = (0.05, 0.02);
    let mut point = Point {
        params: random.signed_tensors(0.2, 2.0),
        grads: Vec::new(),
        step: 1,
        hypers: vec![initial, beta],
        state: Vec::new(),
    };
    let mut learning_rate = initial;
    let mut previous_grads: Option<Value<f64>> = None;
    for step in 1..=6 {
        point.step = step;
        point.grads = random.signed_tensors(0.2, 2.0);
        let grads = Value::Elem(point.grads.clone());
        if let Some(previous_grads) = &previous_grads {
            learning_rate += beta * dot(&grads, previous_grads);
        }
        let out = run_from(
            &hd_sgd,
            &point,
            (step > 1).then_some(point.state.as_slice()),
        );
        assert_eq!(out.state[0], Value::Group(learning_rate), "step {step}");
        let expected = Value::Elem(point.params.clone()).zip(&grads, |p, g| p - learning_rate * g);
        assert_eq!(Value::Elem(out.params.clone()), expected, "step {step}");
        assert_eq!(out.state[1], grads.map(|g| -g), "d p_t / d lr = -g_t");
        point.params = out.params;
        point.state = out.state;
        previous_grads = Some(grads);
    }
    assert!(learning_rate != initial);
}

#[test]
fn hd_adam_is_the_papers_hd_adam() {
    let adam = stdlib_rule("adam");
    let hd_adam =
        hypergradient(&adam, "learning_rate", 1e-7).expect("adam adapts its learning rate");
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
        let sign = if random.next() < 0.5 { -1.0 } else { 1.0 };
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
        for (hyper, declared) in base.hypers.iter().enumerate() {
            if declared.kind != Kind::Float {
                continue;
            }
            let label = format!("{name} / {}", declared.name);
            match hypergradient(&base, &declared.name, 1e-3) {
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

/// Something the adjoint gives a cotangent for.
#[derive(Clone, Copy, Debug)]
enum Variable {
    Param,
    Grad,
    State(usize),
    Hyper(usize),
}

impl Point {
    fn get(&self, variable: Variable) -> Value<f64> {
        match variable {
            Variable::Param => Value::Elem(self.params.clone()),
            Variable::Grad => Value::Elem(self.grads.clone()),
            Variable::State(i) => self.state[i].clone(),
            Variable::Hyper(i) => Value::Group(self.hypers[i]),
        }
    }

    fn set(&mut self, variable: Variable, value: Value<f64>) {
        match (variable, value) {
            (Variable::Param, Value::Elem(params)) => self.params = params,
            (Variable::Grad, Value::Elem(grads)) => self.grads = grads,
            (Variable::State(i), value) => self.state[i] = value,
            (Variable::Hyper(i), Value::Group(x)) => self.hypers[i] = x,
            (variable, value) => panic!("{variable:?} cannot hold {value:?}"),
        }
    }
}

/// `<cotangents, (p_t, state_t)>` at `point` and the sum of its terms'
/// absolute values (its rounding scale).
fn objective(rule: &Rule, point: &Point, cotangents: &[Value<f64>]) -> (f64, f64) {
    let out = run(rule, point);
    let outputs: Vec<Value<f64>> = std::iter::once(Value::Elem(out.params))
        .chain(out.state)
        .collect();
    let value = cotangents
        .iter()
        .zip(&outputs)
        .map(|(c, o)| dot(c, o))
        .sum();
    let magnitude = cotangents
        .iter()
        .zip(&outputs)
        .map(|(c, o)| c.zip(o, |x, y| (x * y).abs()).total())
        .sum();
    (value, magnitude)
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
            .map(|slot| Value::Group(0.0).broadcast(slot.shape, &NUMELS)),
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
        let along = |h: f64| {
            let mut moved = point.clone();
            moved.set(variable, value.zip(&direction, |x, d| x + h * d));
            let (value, magnitude) = objective(base, &moved, &cotangents);
            (vec![value], vec![magnitude])
        };
        match finite_difference(along) {
            Some(numeric) => {
                let label = format!("{} / d{variable:?}", base.name);
                tally.compare(dot(result(variable), &direction), numeric[0], &label);
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
        let states = (0..base.states.len()).map(Variable::State);
        let hypers = (0..base.hypers.len())
            .filter(|&i| base.hypers[i].kind == Kind::Float)
            .map(Variable::Hyper);
        let mut pending: Vec<Variable> = [Variable::Param, Variable::Grad]
            .into_iter()
            .chain(states)
            .chain(hypers)
            .collect();
        for _ in 0..ATTEMPTS {
            pending = check_adjoint(&mut tally, &mut random, &base, &pending);
            if pending.is_empty() {
                break;
            }
        }
        assert!(
            pending.is_empty(),
            "{name}: no smooth point found for {pending:?}"
        );
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
            .find_map(|hyper| hypergradient(&base, &hyper.name, 1e-3).ok())
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
    let unknown = hypergradient(&stdlib_rule("adam"), "momentum", 1e-3).unwrap_err();
    assert!(
        unknown.contains("no hyperparameter `momentum`"),
        "{unknown}"
    );
    assert!(
        unknown.contains("learning_rate, b1, b2, eps, eps_root"),
        "{unknown}"
    );
    let bool_hyper = hypergradient(&stdlib_rule("lars"), "nesterov", 1e-3).unwrap_err();
    assert!(bool_hyper.contains("`nesterov` is a bool"), "{bool_hyper}");
    assert!(bool_hyper.contains("learning_rate"), "{bool_hyper}");
    // rprop's learning rate only initialises its step sizes.
    let initial_only = hypergradient(&stdlib_rule("rprop"), "learning_rate", 1e-3).unwrap_err();
    assert!(
        initial_only.contains("does not depend on `learning_rate`"),
        "{initial_only}"
    );
    assert!(!initial_only.contains(": learning_rate"), "{initial_only}");
    // Lion's b1 reaches p only through a sign.
    let through_sign = hypergradient(&stdlib_rule("lion"), "b1", 1e-3).unwrap_err();
    assert!(
        through_sign.contains("does not depend on `b1`"),
        "{through_sign}"
    );
    assert!(
        through_sign.ends_with("learning_rate, weight_decay"),
        "{through_sign}"
    );
    let infinite = hypergradient(&stdlib_rule("sgd"), "learning_rate", f64::INFINITY).unwrap_err();
    assert!(infinite.contains("must be finite"), "{infinite}");
}
