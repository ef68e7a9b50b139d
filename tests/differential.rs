//! Differential tests: random well-typed rules, and every stdlib rule, run
//! by the fused executor and by the reference interpreter on awkward inputs
//! (odd lengths, negative zero, subnormals, huge and tiny values): the
//! results must agree bit for bit.

mod common;

use std::sync::Arc;

use optc_compiler::{Origin, Program};
use optc_runtime::fused::{FusedOptimizer, Reference};
use optc_runtime::Optimizer;

/// A small deterministic generator (splitmix64).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

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
                "abs", "sign", "sqrt", "exp", "log", "tanh", "sigmoid", "floor", "rsqrt", "cos"
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

/// Awkward inputs: zeros of both signs, subnormals, huge, tiny and ordinary values.
fn inputs(rng: &mut Random, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.below(10) {
            0 => 0.0,
            1 => -0.0,
            2 => {
                f32::from_bits(1 + rng.below(1000) as u32)
                    * if rng.below(2) == 0 { 1.0 } else { -1.0 }
            }
            3 => 1e30 * (rng.below(100) as f32 - 50.0),
            4 => 1e-30 * (rng.below(100) as f32 - 50.0),
            _ => (rng.below(20000) as f32 - 10000.0) / 1000.0,
        })
        .collect()
}

fn same(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

/// Runs `rule` of `program` three steps both ways; returns whether they agree.
fn agree(program: &Program, name: &str, rng: &mut Random) -> Result<(), String> {
    let compiled = Arc::new(program.compile(name).map_err(|d| d.message)?);
    let mut interpreted: Optimizer =
        Optimizer::new(compiled.clone(), Vec::new()).map_err(|e| e.to_string())?;
    let mut fused =
        FusedOptimizer::new(compiled, Vec::new(), &mut Reference, 2).map_err(|e| e.to_string())?;
    let sizes = [1 + rng.below(40), 1, 7 + rng.below(3)];
    let mut a: Vec<Vec<f32>> = sizes.iter().map(|&n| inputs(rng, n)).collect();
    let mut b = a.clone();
    for step in 0..3 {
        let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| inputs(rng, n)).collect();
        let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        interpreted
            .step(
                &mut a.iter_mut().map(|p| p.as_mut_slice()).collect::<Vec<_>>(),
                &grads,
            )
            .map_err(|e| e.to_string())?;
        fused
            .step(
                &mut b.iter_mut().map(|p| p.as_mut_slice()).collect::<Vec<_>>(),
                &grads,
            )
            .map_err(|e| e.to_string())?;
        if !same(&a, &b) {
            return Err(format!(
                "differ after step {}:\n interpreter {a:?}\n fused       {b:?}",
                step + 1
            ));
        }
    }
    Ok(())
}

#[test]
fn random_rules_agree_with_the_interpreter() {
    let mut rng = Random(2026);
    for index in 0..1000 {
        let source = rule(&mut rng, index);
        let mut program = Program::new();
        program
            .add_source("random.opt", source.as_bytes(), Origin::User)
            .unwrap();
        if let Err(message) = agree(&program, &format!("random{index}"), &mut rng) {
            panic!("{message}\nrule:\n{source}");
        }
    }
}

#[test]
fn stdlib_rules_agree_with_the_interpreter_on_awkward_inputs() {
    let program = optc_stdlib::prelude();
    let mut rng = Random(7);
    for name in program.optimizers() {
        if let Err(message) = agree(&program, name, &mut rng) {
            panic!("{name}: {message}");
        }
    }
}
