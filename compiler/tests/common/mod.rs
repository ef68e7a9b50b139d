//! Shared by the simplifier and emitter tests: compiling sources with the
//! standard library as prelude, random inputs (awkward ones for bit-exact
//! checks, benign ones for tolerance checks), running several steps of a rule
//! through the reference interpreter, and comparing two runs. Shared by the
//! autodiff and derive tests: values and points in f64, warmed-up points of
//! stdlib rules, and central finite differences.

#![allow(dead_code)] // each test crate uses its own part

use optc_compiler::interpret::{self, Real, StepInputs, StepOutputs, Value};
use optc_compiler::ir::{Kind, MatrixView, Rule, Shape};
use optc_compiler::{Origin, Program};

/// A small deterministic generator (splitmix64).
pub struct Random(pub u64);

impl Random {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// ±10^e with e uniform in [-decades, decades].
    pub fn magnitude(&mut self, decades: f64) -> f64 {
        let sign = if self.below(2) == 0 { -1.0 } else { 1.0 };
        sign * 10f64.powf((2.0 * self.unit() - 1.0) * decades)
    }
}

/// Values that break careless rewrites: signed zeros, subnormals, the edges
/// of f32's range, infinities and NaN.
const SPECIALS: &[f64] = &[
    0.0,
    -0.0,
    1e-40,
    -1e-45,
    1.1754943508222875e-38,
    1e-30,
    -1e-30,
    3e38,
    -3e38,
    1e30,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NAN,
    1.0,
    -1.0,
    0.5,
];

/// What the inputs of a run look like.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Inputs {
    /// A third of the elements special (see `SPECIALS`), the others of
    /// magnitude 1e-3 to 1e3; tensors of odd lengths and an empty one.
    Awkward,
    /// Values of magnitude 0.5 to 2 only: no overflow, and rounding errors
    /// stay near the values' own size.
    Benign,
    /// Benign values in tensors of several elements: on one element a trust
    /// ratio's step is |p| sign(u) (LAMB), whose derivatives are exactly 0
    /// as a difference of large terms, so any reordering changes them by
    /// rounding noise of those terms' size.
    BenignSeveral,
}

/// The inputs of several steps: initial parameters, a gradient per step,
/// hyperparameter values per step.
pub struct Case {
    pub params: Vec<Vec<f64>>,
    pub grads: Vec<Vec<Vec<f64>>>,
    pub hypers: Vec<Vec<f64>>,
}

pub const STEPS: usize = 4;

impl Case {
    /// Random inputs for `rule`. `perturb` moves each float hyperparameter
    /// off its default by a random factor in [0.5, 1.5) and flips booleans.
    pub fn new(rule: &Rule, rng: &mut Random, inputs: Inputs, perturb: bool) -> Case {
        let lengths: &[usize] = match inputs {
            Inputs::Awkward => &[7, 1, 33, 0, 2],
            Inputs::Benign => &[5, 1, 17],
            Inputs::BenignSeveral => &[5, 2, 17],
        };
        let value = |rng: &mut Random| match inputs {
            Inputs::Awkward if rng.below(3) == 0 => SPECIALS[rng.below(SPECIALS.len())],
            Inputs::Awkward => rng.magnitude(3.0),
            Inputs::Benign | Inputs::BenignSeveral => rng.magnitude(0.3),
        };
        let tensors = |rng: &mut Random| -> Vec<Vec<f64>> {
            lengths
                .iter()
                .map(|&n| (0..n).map(|_| value(rng)).collect())
                .collect()
        };
        let params = tensors(rng);
        let grads = (0..STEPS).map(|_| tensors(rng)).collect();
        let factors: Vec<f64> = rule.hypers.iter().map(|_| 0.5 + rng.unit()).collect();
        let hypers = (1..=STEPS as u64)
            .map(|step| {
                let mut values: Vec<f64> = Vec::new();
                for (hyper, factor) in rule.hypers.iter().zip(&factors) {
                    let default = match &hyper.default {
                        Some(expr) => interpret::scalar(expr, step, &values),
                        None => factor / 2.0,
                    };
                    values.push(match (perturb, hyper.kind) {
                        (false, _) => default,
                        (true, Kind::Bool) => f64::from(default == 0.0),
                        (true, Kind::Float) => default * factor,
                    });
                }
                values
            })
            .collect();
        Case {
            params,
            grads,
            hypers,
        }
    }
}

/// The parameters and named state after each step.
pub type Trajectory<F> = Vec<(Vec<Vec<F>>, Vec<(String, Value<F>)>)>;

/// Runs `rule` for every step of `case`, each step starting from the last.
pub fn run<F: Real>(rule: &Rule, case: &Case) -> Trajectory<F> {
    let to_f = |tensors: &[Vec<f64>]| -> Vec<Vec<F>> {
        tensors
            .iter()
            .map(|t| t.iter().map(|&x| F::from_f64(x)).collect())
            .collect()
    };
    let mut params = to_f(&case.params);
    let mut state: Option<Vec<Value<F>>> = None;
    let mut trajectory = Vec::new();
    for (step, (grads, hypers)) in case.grads.iter().zip(&case.hypers).enumerate() {
        let grads = to_f(grads);
        let param_slices: Vec<&[F]> = params.iter().map(Vec::as_slice).collect();
        let grad_slices: Vec<&[F]> = grads.iter().map(Vec::as_slice).collect();
        let out = interpret::step(
            rule,
            &StepInputs {
                params: &param_slices,
                grads: &grad_slices,
                step: step as u64 + 1,
                hypers,
                state: state.as_deref(),
                views: None,
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", rule.name));
        params = out.params;
        let named = rule
            .states
            .iter()
            .map(|s| s.name.clone())
            .zip(out.state.iter().cloned())
            .collect();
        trajectory.push((params.clone(), named));
        state = Some(out.state);
    }
    trajectory
}

/// How two runs must agree.
#[derive(Clone, Copy, Debug)]
pub enum Agreement {
    /// Bit for bit, any NaN equal to any NaN.
    Bits,
    /// |a - b| <= relative * (|a| + |b|) + absolute, or both NaN, or equal.
    Close { relative: f64, absolute: f64 },
}

impl Agreement {
    fn holds(self, a: f64, b: f64) -> bool {
        if a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) {
            return true;
        }
        match self {
            Agreement::Bits => false,
            Agreement::Close { relative, absolute } => {
                (a - b).abs() <= relative * (a.abs() + b.abs()) + absolute
            }
        }
    }
}

/// Checks that `b` agrees with `a` on the parameters of every step and on
/// every state slot both have (a simplified rule may have dropped some).
pub fn compare<F: Real>(
    a: &Trajectory<F>,
    b: &Trajectory<F>,
    agreement: Agreement,
) -> Result<(), String> {
    for (step, ((params_a, state_a), (params_b, state_b))) in a.iter().zip(b).enumerate() {
        let mut pairs: Vec<(String, Vec<f64>, Vec<f64>)> = vec![(
            "p".to_string(),
            Value::Elem(params_a.clone()).flatten(),
            Value::Elem(params_b.clone()).flatten(),
        )];
        for (name, value_b) in state_b {
            let value_a = state_a
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or(format!("state `{name}` is new"))?;
            pairs.push((name.clone(), value_a.flatten(), value_b.flatten()));
        }
        for (name, xs, ys) in pairs {
            if xs.len() != ys.len() {
                return Err(format!("step {}: `{name}` changed size", step + 1));
            }
            if let Some((i, (x, y))) = xs
                .iter()
                .zip(&ys)
                .enumerate()
                .find(|(_, (&x, &y))| !agreement.holds(x, y))
            {
                return Err(format!(
                    "step {}: `{name}`[{i}] is {x:e} ({:#x}) before and {y:e} ({:#x}) after",
                    step + 1,
                    x.to_bits(),
                    y.to_bits()
                ));
            }
        }
    }
    Ok(())
}

/// Runs both rules on `cases` random cases (half with perturbed
/// hyperparameters) in f32 and in f64, and checks they agree.
pub fn agree(
    original: &Rule,
    other: &Rule,
    seed: u64,
    cases: usize,
    inputs: Inputs,
    f32_agreement: Agreement,
    f64_agreement: Agreement,
) -> Result<(), String> {
    let mut rng = Random(seed);
    for index in 0..cases {
        let case = Case::new(original, &mut rng, inputs, index % 2 == 1);
        compare(
            &run::<f32>(original, &case),
            &run::<f32>(other, &case),
            f32_agreement,
        )
        .map_err(|e| format!("f32, case {index}: {e}"))?;
        compare(
            &run::<f64>(original, &case),
            &run::<f64>(other, &case),
            f64_agreement,
        )
        .map_err(|e| format!("f64, case {index}: {e}"))?;
    }
    Ok(())
}

/// A program holding the standard library and `source`.
pub fn program_with(source: &str) -> Program {
    let mut program = optc_stdlib::prelude();
    program
        .add_source("test.opt", source.as_bytes(), Origin::User)
        .unwrap_or_else(|d| panic!("{}\n{source}", d.message));
    program
}

/// Compiles the last optimizer of `source` (with the stdlib visible).
pub fn compile(source: &str) -> Rule {
    let program = program_with(source);
    let file = optc_compiler::FileId(program.files().len() as u32 - 1);
    let name = program
        .optimizers_in(file)
        .last()
        .expect("an optimizer")
        .to_string();
    program
        .compile(&name)
        .unwrap_or_else(|d| panic!("{}\n{source}", d.message))
}

/// Every optimizer of the standard library, compiled, in name order.
pub fn stdlib_rules() -> Vec<Rule> {
    let program = optc_stdlib::prelude();
    program
        .optimizers()
        .into_iter()
        .map(|name| {
            program
                .compile(name)
                .unwrap_or_else(|d| panic!("{name}: {}", d.message))
        })
        .collect()
}

// ---- derivative checks in f64 (autodiff and derive tests) ----------------

/// Tensor shapes of every step: a 2 x 3 matrix (so rows and columns
/// differ), then a single-element tensor and a vector of 3, so per-tensor
/// and group reductions differ.
pub const VIEWS: [MatrixView; 3] = [
    MatrixView {
        rank: 2,
        rows: 2,
        cols: 3,
    },
    MatrixView {
        rank: 1,
        rows: 1,
        cols: 1,
    },
    MatrixView {
        rank: 1,
        rows: 1,
        cols: 3,
    },
];

/// The element counts of [`VIEWS`].
pub fn numels() -> Vec<usize> {
    VIEWS.iter().map(MatrixView::numel).collect()
}
/// Largest accepted relative error between a derivative and its
/// (Richardson-extrapolated) central difference.
pub const TOLERANCE: f64 = 1e-6;

impl Random {
    /// Uniform in `[low, high]`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// A value of `shape` over [`VIEWS`], each number uniform in
    /// `[low, high]`.
    pub fn value(&mut self, shape: Shape, low: f64, high: f64) -> Value<f64> {
        Value::Group(0.0)
            .broadcast(shape, &VIEWS)
            .map(|_| self.uniform(low, high))
    }
}

/// Element-wise arithmetic on interpreter values of one shape.
pub trait Values: Sized {
    /// `f` applied to every number, in order.
    fn map(&self, f: impl FnMut(f64) -> f64) -> Self;
    /// `f` applied to the matching numbers of `self` and `other`.
    fn zip(&self, other: &Self, f: impl Fn(f64, f64) -> f64) -> Self;
    /// The sum of every number.
    fn total(&self) -> f64;
}

impl Values for Value<f64> {
    fn map(&self, mut f: impl FnMut(f64) -> f64) -> Self {
        match self {
            Value::Group(x) => Value::Group(f(*x)),
            Value::Tensor(xs) => Value::Tensor(xs.iter().map(|&x| f(x)).collect()),
            Value::Rows(xs) | Value::Cols(xs) | Value::Elem(xs) | Value::Gram(xs) => {
                Value::vectors(
                    self.shape(),
                    xs.iter()
                        .map(|x| x.iter().map(|&x| f(x)).collect())
                        .collect(),
                )
            }
        }
    }

    fn zip(&self, other: &Self, f: impl Fn(f64, f64) -> f64) -> Self {
        let zip = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(&x, &y)| f(x, y)).collect();
        match (self, other) {
            (Value::Group(x), Value::Group(y)) => Value::Group(f(*x, *y)),
            (Value::Tensor(x), Value::Tensor(y)) => Value::Tensor(zip(x, y)),
            (Value::Rows(x), Value::Rows(y))
            | (Value::Cols(x), Value::Cols(y))
            | (Value::Elem(x), Value::Elem(y))
            | (Value::Gram(x), Value::Gram(y)) => Value::vectors(
                self.shape(),
                x.iter().zip(y).map(|(x, y)| zip(x, y)).collect(),
            ),
            _ => panic!("shapes differ: {self:?} and {other:?}"),
        }
    }

    /// The sum of every number, in the interpreter's order for group
    /// reductions: within each tensor, then over tensors.
    fn total(&self) -> f64 {
        match self {
            Value::Group(x) => *x,
            Value::Tensor(xs) => xs.iter().sum(),
            Value::Rows(xs) | Value::Cols(xs) | Value::Elem(xs) | Value::Gram(xs) => xs
                .iter()
                .map(|x| x.iter().fold(0.0, |a, b| a + b))
                .fold(0.0, |a, b| a + b),
        }
    }
}

/// The sum of the element-wise products of `a` and `b`.
pub fn dot(a: &Value<f64>, b: &Value<f64>) -> f64 {
    a.zip(b, |x, y| x * y).total()
}

/// The number a group-shaped value holds.
pub fn group(value: &Value<f64>) -> f64 {
    match value {
        Value::Group(x) => *x,
        other => panic!("{other:?} is not one number"),
    }
}

/// Whether the rule rounds values to bfloat16 (Muon's iteration), whose
/// derivative is passed through: finite differences see the rounding's
/// steps instead, so the stdlib's finite-difference checks skip such rules.
pub fn rounds_to_bf16(rule: &Rule) -> bool {
    rule.graph.iter().any(|(_, node)| {
        matches!(
            node,
            optc_compiler::ir::Node::Unary(optc_compiler::ir::UnaryOp::Bf16, _)
        )
    })
}

/// The standard library's optimizer `name`, compiled.
pub fn stdlib_rule(name: &str) -> Rule {
    optc_stdlib::prelude()
        .compile(name)
        .unwrap_or_else(|d| panic!("{name}: {}", d.message))
}

/// The default of every hyperparameter of `rule` at `step`.
pub fn default_hypers(rule: &Rule, step: u64) -> Vec<f64> {
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

/// Fresh points tried per check before a kink everywhere counts as failure.
pub const ATTEMPTS: usize = 8;

/// Something a derivative is taken with respect to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variable {
    Param,
    Grad,
    State(usize),
    Hyper(usize),
}

/// `p`, `g`, every state slot and every float hyperparameter of `rule`.
pub fn variables(rule: &Rule) -> Vec<Variable> {
    let states = (0..rule.states.len()).map(Variable::State);
    let hypers = (0..rule.hypers.len())
        .filter(|&i| rule.hypers[i].kind == Kind::Float)
        .map(Variable::Hyper);
    [Variable::Param, Variable::Grad]
        .into_iter()
        .chain(states)
        .chain(hypers)
        .collect()
}

/// Everything one step reads (after the first step: state is an input).
#[derive(Clone, Debug)]
pub struct Point {
    pub params: Vec<Vec<f64>>,
    pub grads: Vec<Vec<f64>>,
    pub step: u64,
    pub hypers: Vec<f64>,
    pub state: Vec<Value<f64>>,
}

impl Point {
    /// The shapes of its tensors: [`VIEWS`] for tensors of their sizes,
    /// else vectors.
    pub fn views(&self) -> Vec<MatrixView> {
        let numels: Vec<usize> = self.params.iter().map(Vec::len).collect();
        if numels == self::numels() {
            VIEWS.to_vec()
        } else {
            MatrixView::vectors(&numels)
        }
    }

    /// The value of `variable` at this point.
    pub fn get(&self, variable: Variable) -> Value<f64> {
        match variable {
            Variable::Param => Value::Elem(self.params.clone()),
            Variable::Grad => Value::Elem(self.grads.clone()),
            Variable::State(i) => self.state[i].clone(),
            Variable::Hyper(i) => Value::Group(self.hypers[i]),
        }
    }

    /// This point moved by `h * direction` along `variable`.
    pub fn moved(&self, variable: Variable, direction: &Value<f64>, h: f64) -> Point {
        let mut point = self.clone();
        match (
            variable,
            self.get(variable).zip(direction, |x, d| x + h * d),
        ) {
            (Variable::Param, Value::Elem(params)) => point.params = params,
            (Variable::Grad, Value::Elem(grads)) => point.grads = grads,
            (Variable::State(i), value) => point.state[i] = value,
            (Variable::Hyper(i), Value::Group(x)) => point.hypers[i] = x,
            (variable, value) => panic!("{variable:?} cannot hold {value:?}"),
        }
        point
    }
}

/// One step of `rule` at `point` from `state` (`None`: the first step).
pub fn run_from(rule: &Rule, point: &Point, state: Option<&[Value<f64>]>) -> StepOutputs<f64> {
    let params: Vec<&[f64]> = point.params.iter().map(Vec::as_slice).collect();
    let grads: Vec<&[f64]> = point.grads.iter().map(Vec::as_slice).collect();
    let views = point.views();
    let inputs = StepInputs {
        params: &params,
        grads: &grads,
        step: point.step,
        hypers: &point.hypers,
        state,
        views: Some(&views),
    };
    interpret::step(rule, &inputs).expect("inputs fit the rule")
}

/// Warms `start` up to a realistic point of step 4 of `rule`: three steps
/// from its parameters (its gradient and hyperparameters are replaced) with
/// gradients drawn by `gradient`, then state jittered by up to 20% (so no
/// `max` of a state and its own last value ties), exact zeros of state made
/// small positive values (rprop's `prev` is 0 where the gradient's sign
/// flipped, a jump of `sign(g * prev)`), and a fresh gradient.
pub fn warm_up(
    rule: &Rule,
    random: &mut Random,
    start: Point,
    gradient: impl Fn(&mut Random) -> Vec<Vec<f64>>,
) -> Point {
    let mut point = start;
    let mut state = None;
    for step in 1..=3 {
        point.step = step;
        point.hypers = default_hypers(rule, step);
        point.grads = gradient(random);
        let out = run_from(rule, &point, state.as_deref());
        point.params = out.params;
        state = Some(out.state);
    }
    point.step = 4;
    point.hypers = default_hypers(rule, 4);
    point.grads = gradient(random);
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

/// `<seeds, (p_t, state_t)>` at `point`, and the sum of the absolute values
/// of its terms (its rounding scale).
pub fn objective(rule: &Rule, point: &Point, seeds: &[Value<f64>]) -> (f64, f64) {
    let out = run_from(rule, point, Some(&point.state));
    let outputs: Vec<Value<f64>> = std::iter::once(Value::Elem(out.params))
        .chain(out.state)
        .collect();
    let value = seeds.iter().zip(&outputs).map(|(s, o)| dot(s, o)).sum();
    let magnitude = seeds
        .iter()
        .zip(&outputs)
        .map(|(s, o)| s.zip(o, |x, y| (x * y).abs()).total())
        .sum();
    (value, magnitude)
}

/// The derivative of `f` at 0, per component, by central differences with
/// Richardson extrapolation, with each component's rounding noise. `f` gives
/// values and their rounding scales. Steps shrink from 1e-3 until two step
/// sizes agree on every component; `None` if they never do (a kink or jump
/// within 1e-6).
pub fn finite_difference(f: impl Fn(f64) -> (Vec<f64>, Vec<f64>)) -> Option<Vec<(f64, f64)>> {
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
            // Written so that a NaN anywhere counts as disagreement.
            let smooth = (c - f).abs() <= 1e-6 * c.abs().max(f.abs()) + noise;
            if !smooth {
                return None;
            }
            derivative.push(((4.0 * f - c) / 3.0, noise));
        }
        Some(derivative)
    })
}

/// The derivative of [`objective`] along `direction` in `variable`, and a
/// bound on its rounding error, by [`finite_difference`].
pub fn objective_difference(
    rule: &Rule,
    point: &Point,
    seeds: &[Value<f64>],
    variable: Variable,
    direction: &Value<f64>,
) -> Option<(f64, f64)> {
    let along = |h: f64| {
        let (value, magnitude) = objective(rule, &point.moved(variable, direction, h), seeds);
        (vec![value], vec![magnitude])
    };
    finite_difference(along).map(|numeric| numeric[0])
}

/// Checks every variable of `rule` (see [`variables`]): `check` takes those
/// still unchecked, tries them at a fresh point and returns those it could
/// not check (a kink nearby), up to [`ATTEMPTS`] times.
pub fn check_every_variable(rule: &Rule, mut check: impl FnMut(&[Variable]) -> Vec<Variable>) {
    let mut pending = variables(rule);
    for _ in 0..ATTEMPTS {
        pending = check(&pending);
        if pending.is_empty() {
            break;
        }
    }
    assert!(
        pending.is_empty(),
        "{}: no smooth point found for {pending:?}",
        rule.name
    );
}
