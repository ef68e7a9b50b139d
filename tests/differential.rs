//! Differential tests: random well-typed rules, and every stdlib rule, run
//! by the reference interpreter and by every registered backend
//! (`optc_runtime::BACKENDS`: the interpreter executor, the reference
//! kernels, the Cranelift JIT, ...) on awkward inputs (odd lengths, negative
//! zero, subnormals, huge and tiny values). Parameters and every state slot
//! must agree bit for bit after each step. The JIT runs in lockstep
//! (`common::Lockstep`): each of its kernel calls must match a model of the
//! JIT bit for bit (a reordered sum within 1e-12 of its terms' magnitudes),
//! each approximated operation must be as close to libm as the JIT's
//! accuracy table says (1 ulp; 2 for tanh and sigmoid), and the next call
//! continues from the reference kernels' results. Random rules amplify a
//! 1-ulp difference without bound (`floor`, comparisons, cancellation), so
//! this per-call check is the tolerance they can be held to.

mod common;

use std::sync::Arc;

use common::{approximated_ops, compare_backends, Backends, Random, Setup, Tolerance};
use optc_compiler::ir::{ReduceOp, Rule};
use optc_compiler::plan::Plan;
use optc_compiler::{Origin, Program};

/// A random float expression over the names in scope, of depth at most `depth`.
fn expr(rng: &mut Random, names: &[String], depth: usize) -> String {
    if depth == 0 || rng.below(4) == 0 {
        return match rng.below(3) {
            0 => rng
                .pick(&["0.5", "2", "1e-3", "0.9", "-1.5", "3"])
                .to_string(),
            _ => names[rng.below(names.len())].clone(),
        };
    }
    let a = expr(rng, names, depth - 1);
    let b = expr(rng, names, depth - 1);
    match rng.below(12) {
        0..=3 => format!("({a} {} {b})", rng.pick(&["+", "-", "*", "/"])),
        4 => format!(
            "{}({a})",
            rng.pick(&[
                "abs", "sign", "sqrt", "exp", "log", "tanh", "sigmoid", "floor", "rsqrt", "cos",
                "cbrt"
            ])
        ),
        5 => format!("{}({a}, {b})", rng.pick(&["min", "max", "pow"])),
        6 => format!("lerp({a}, {b}, {})", expr(rng, names, depth - 1)),
        7 => format!("clamp({a}, -1, 1)"),
        8 => {
            let cmp = rng.pick(&["<", ">", "<=", ">=", "==", "!="]);
            format!(
                "(if {a} {cmp} {b} {{ {} }} else {{ {b} }})",
                expr(rng, names, depth - 1)
            )
        }
        9 => format!(
            "{}({a})",
            rng.pick(&[
                "sum",
                "mean",
                "norm",
                "max",
                "min",
                "group_sum",
                "group_norm",
                "group_max"
            ])
        ),
        10 => format!("dot({a}, {b})"),
        _ => format!("-{a}"),
    }
}

/// A random rule: hyperparameters, state of every shape, lets and assignments.
fn rule(rng: &mut Random, index: usize) -> String {
    let mut names: Vec<String> = ["p", "g", "t", "numel", "lr", "beta"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut body = String::new();
    let mut states: Vec<(String, &str)> = Vec::new();
    for (k, shape) in ["", ": tensor", ": group"].iter().enumerate() {
        if rng.below(3) > 0 {
            let name = format!("s{k}");
            let init = if rng.below(2) == 0 {
                "0.1".to_string()
            } else if shape.is_empty() {
                "g".to_string()
            } else {
                "1".to_string()
            };
            body.push_str(&format!("    state {name}{shape} = {init};\n"));
            names.push(name.clone());
            states.push((name, shape));
        }
    }
    for k in 0..rng.below(3) + 1 {
        let value = expr(rng, &names, 3);
        body.push_str(&format!("    let l{k} = {value};\n"));
        names.push(format!("l{k}"));
    }
    for (name, shape) in &states {
        // Reduce what a scalar state stores, so the rule is well typed.
        let value = expr(rng, &names, 2);
        let value = match *shape {
            ": tensor" => format!("mean({value})"),
            ": group" => format!("group_mean({value})"),
            _ => value,
        };
        body.push_str(&format!("    {name} = {value};\n"));
    }
    body.push_str(&format!("    p -= lr * {};\n", expr(rng, &names, 3)));
    format!("optimizer random{index}(lr = 0.01, beta = 0.9) {{\n{body}}}\n")
}

/// The interpreter's peers held to bit-exactness: every registered backend
/// that is exact, and every approximating one in lockstep.
fn backends() -> Backends {
    let mut backends = Backends::all();
    backends.retain_exact();
    backends
}

/// Runs `name` of `program` three steps through the interpreter and the
/// fused backends, on three tensors of random sizes.
fn agree(
    program: &Program,
    name: &str,
    rng: &mut Random,
    backends: &mut Backends,
) -> Result<Arc<Rule>, String> {
    let rule = Arc::new(program.compile(name).map_err(|d| d.message)?);
    let setup = Setup {
        numels: vec![1 + rng.below(40), 1, 7 + rng.below(3)],
        steps: 3,
        threads: vec![2],
        seed: rng.next(),
        tolerance: Tolerance::Exact,
    };
    compare_backends(name, &rule, &[], &setup, backends)?;
    Ok(rule)
}

/// Whether a kernel of the rule sums (an accumulator the JIT reorders).
fn sums(rule: &Rule) -> bool {
    [true, false]
        .iter()
        .flat_map(|&first| Plan::new(rule, first).passes)
        .any(|pass| {
            pass.kernel
                .accumulators
                .iter()
                .any(|&(op, _)| op == ReduceOp::Sum)
        })
}

#[test]
fn random_rules_agree_with_the_interpreter() {
    let mut rng = Random(2026);
    let mut backends = backends();
    let (mut approximating, mut summing) = (0, 0);
    let cases = 1000;
    for index in 0..cases {
        let source = rule(&mut rng, index);
        let mut program = Program::new();
        program
            .add_source("random.opt", source.as_bytes(), Origin::User)
            .unwrap();
        match agree(&program, &format!("random{index}"), &mut rng, &mut backends) {
            Ok(rule) => {
                approximating += usize::from(!approximated_ops(&rule).is_empty());
                summing += usize::from(sums(&rule));
            }
            Err(message) => panic!("{message}\nrule:\n{source}"),
        }
    }
    // The JIT's two departures from the reference must be exercised often.
    assert!(
        approximating > cases / 10 && summing > cases / 10,
        "{approximating} rules approximate, {summing} sum, of {cases}"
    );
}

#[test]
fn stdlib_rules_agree_with_the_interpreter_on_awkward_inputs() {
    let program = optc_stdlib::prelude();
    let mut rng = Random(7);
    let mut backends = backends();
    for name in program.optimizers() {
        if let Err(message) = agree(&program, name, &mut rng, &mut backends) {
            panic!("{name}: {message}");
        }
    }
}
