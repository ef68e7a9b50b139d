//! Shared by the simplifier and emitter tests: compiling sources with the
//! standard library as prelude, random inputs (awkward ones for bit-exact
//! checks, benign ones for tolerance checks), running several steps of a rule
//! through the reference interpreter, and comparing two runs.

#![allow(dead_code)] // each test crate uses its own part

use optc_compiler::interpret::{self, Real, StepInputs, Value};
use optc_compiler::ir::{Kind, Rule};
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
        };
        let value = |rng: &mut Random| match inputs {
            Inputs::Awkward if rng.below(3) == 0 => SPECIALS[rng.below(SPECIALS.len())],
            Inputs::Awkward => rng.magnitude(3.0),
            Inputs::Benign => rng.magnitude(0.3),
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

fn flatten<F: Real>(value: &Value<F>) -> Vec<f64> {
    match value {
        Value::Group(x) => vec![*x],
        Value::Tensor(xs) => xs.clone(),
        Value::Elem(xs) => xs.iter().flatten().map(|x| x.to_f64()).collect(),
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
            flatten(&Value::Elem(params_a.clone())),
            flatten(&Value::Elem(params_b.clone())),
        )];
        for (name, value_b) in state_b {
            let value_a = state_a
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or(format!("state `{name}` is new"))?;
            pairs.push((name.clone(), flatten(value_a), flatten(value_b)));
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
