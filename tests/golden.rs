//! Every stdlib rule replays the trajectories that torch.optim and optax
//! recorded (tests/golden/*.json) and must stay within float32 rounding of
//! them. `tests/golden/cases.txt` maps each case to a rule and the
//! hyperparameters the peer was called with.

mod common;

use std::sync::Arc;

use optc_compiler::interpret;
use optc_runtime::trace::{self, Trace};
use optc_runtime::Optimizer;

/// Largest accepted |ours - peer| / max(|peer|, 1) over all steps and elements.
const TOLERANCE: f64 = 1e-5;

/// Golden cases that need row/column reductions or matrix products (a later issue).
const NOT_ELEMENTWISE: &[&str] = &["adafactor", "sm3", "muon"];

struct Case {
    name: String,
    rule: String,
    sets: Vec<(String, String)>,
}

fn cases() -> (Vec<Case>, Vec<(String, String)>) {
    let text = std::fs::read_to_string(common::repo_path("tests/golden/cases.txt"))
        .expect("cases.txt exists");
    let mut cases = Vec::new();
    let mut schedules = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some(rest) = line.strip_prefix("schedule ") {
            let (name, call) = rest.split_once(' ').expect("schedule NAME CALL");
            schedules.push((name.to_string(), call.to_string()));
            continue;
        }
        let mut words = line.split_whitespace();
        let name = words.next().unwrap().to_string();
        let rule = words.next().expect("a rule name").to_string();
        let sets = words
            .map(|w| {
                let (k, v) = w.split_once('=').expect("name=value");
                (k.to_string(), v.to_string())
            })
            .collect();
        cases.push(Case { name, rule, sets });
    }
    (cases, schedules)
}

/// Replays one case; returns the comparison and the peer call it reproduces.
fn replay_case(case: &Case) -> Result<(trace::Comparison, String), String> {
    let mut program = optc_stdlib::prelude();
    let rule = program.compile(&case.rule).map_err(|d| d.message)?;
    let mut overrides = Vec::new();
    for (name, value) in &case.sets {
        let value = program.compile_scalar(name, value).map_err(|d| d.message)?;
        overrides.push((name.clone(), value));
    }
    let mut optimizer =
        Optimizer::<f32>::new(Arc::new(rule), overrides).map_err(|e| e.to_string())?;
    let path = common::repo_path(&format!("tests/golden/{}.json", case.name));
    let reference = Trace::from_json(&std::fs::read_to_string(path).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let ours = trace::replay(&mut optimizer, &reference).map_err(|e| e.to_string())?;
    let comparison = trace::compare(&ours, &reference).map_err(|e| e.to_string())?;
    let peer = format!(
        "{}({})",
        reference.extra["peer"].as_str().unwrap_or("?"),
        reference.extra["hyper"]
            .to_string()
            .trim_matches(|c| c == '{' || c == '}')
            .replace("\"", "")
    );
    Ok((comparison, peer))
}

#[test]
fn every_elementwise_golden_case_has_a_rule() {
    let (cases, _) = cases();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(common::repo_path("tests/golden")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(case) = name.strip_suffix(".json") else {
            continue;
        };
        if case == "schedules" || NOT_ELEMENTWISE.contains(&case) {
            continue;
        }
        if !cases.iter().any(|c| c.name == case) {
            missing.push(case.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "golden cases without a rule: {missing:?}"
    );
    let distinct: std::collections::BTreeSet<&str> =
        cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(distinct.len(), 42, "the 42 eligible cases are all mapped");
}

#[test]
fn stdlib_rules_match_torch_and_optax() {
    let (cases, _) = cases();
    let mut failures = Vec::new();
    for case in &cases {
        match replay_case(case) {
            // One markdown row per case: the table of docs/stdlib.md.
            Ok((c, peer)) if c.max_err <= TOLERANCE => {
                let sets: Vec<String> = case.sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "| {} | `{}` {} | {peer} | {:.1e} |",
                    case.name,
                    case.rule,
                    sets.join(" "),
                    c.max_err
                )
            }
            Ok((c, _)) => failures.push(format!(
                "{}: max error {:.3e} at (step, tensor, element) {:?}",
                case.name, c.max_err, c.worst
            )),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "golden cases failing:\n{}",
        failures.join("\n")
    );
}

#[test]
fn stdlib_schedules_match_optax() {
    let (_, schedules) = cases();
    let text = std::fs::read_to_string(common::repo_path("tests/golden/schedules.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let golden = golden.as_array().unwrap();
    assert_eq!(
        schedules.len(),
        golden.len(),
        "every optax schedule is mapped"
    );
    let mut program = optc_stdlib::prelude();
    for (name, call) in &schedules {
        let case = golden
            .iter()
            .find(|c| c["name"] == name.as_str())
            .expect("a golden schedule of that name");
        let expr = program
            .compile_scalar(name, call)
            .unwrap_or_else(|d| panic!("{name}: {}", d.message));
        for (count, expected) in case["values"].as_array().unwrap().iter().enumerate() {
            let expected = expected.as_f64().unwrap();
            // optax counts from 0; t is 1-based.
            let ours = interpret::scalar(&expr, count as u64 + 1, &[]);
            assert!(
                (ours - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                "{name} at count {count}: ours {ours}, optax {expected}"
            );
        }
    }
}

#[test]
fn every_golden_case_replays_through_the_cli() {
    let (cases, _) = cases();
    for case in &cases {
        let trace = format!("tests/golden/{}.json", case.name);
        let sets: Vec<String> = case.sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec![
            "replay",
            case.rule.as_str(),
            "--trace",
            trace.as_str(),
            "--compare",
        ];
        for set in &sets {
            args.extend(["--set", set.as_str()]);
        }
        let (code, stdout, stderr) = common::optc(&args);
        assert_eq!(code, 0, "{}: {stderr}", case.name);
        let error = common::max_error(&stdout)
            .unwrap_or_else(|| panic!("{}: no error figure in {stdout}", case.name));
        assert!(error <= TOLERANCE, "{}: {stdout}", case.name);
    }
}

/// The case's rule, compiled, and its hyperparameter overrides.
fn compiled(
    case: &Case,
) -> (
    Arc<optc_compiler::ir::Rule>,
    Vec<(String, optc_compiler::ir::ScalarExpr)>,
) {
    let mut program = optc_stdlib::prelude();
    let rule = Arc::new(program.compile(&case.rule).unwrap());
    let overrides = case
        .sets
        .iter()
        .map(|(k, v)| (k.clone(), program.compile_scalar(k, v).unwrap()))
        .collect();
    (rule, overrides)
}

#[test]
fn fused_plans_equal_the_interpreter_on_every_golden_case() {
    use optc_runtime::fused::{FusedOptimizer, Reference};
    let (cases, _) = cases();
    for case in &cases {
        let (rule, overrides) = compiled(case);
        let mut interpreted = Optimizer::<f32>::new(rule.clone(), overrides.clone()).unwrap();
        let mut fused = FusedOptimizer::new(rule, overrides, &mut Reference, 2).unwrap();
        let path = common::repo_path(&format!("tests/golden/{}.json", case.name));
        let trace = Trace::from_json(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut a: Vec<Vec<f32>> = trace.tensors.iter().map(|t| t.p0.clone()).collect();
        let mut b = a.clone();
        for step in 0..trace.steps() {
            let grads: Vec<&[f32]> = trace
                .tensors
                .iter()
                .map(|t| t.grads[step].as_slice())
                .collect();
            interpreted
                .step(
                    &mut a.iter_mut().map(|p| p.as_mut_slice()).collect::<Vec<_>>(),
                    &grads,
                )
                .unwrap();
            fused
                .step(
                    &mut b.iter_mut().map(|p| p.as_mut_slice()).collect::<Vec<_>>(),
                    &grads,
                )
                .unwrap();
            assert_eq!(
                a,
                b,
                "{} ({}) differs at step {}",
                case.name,
                case.rule,
                step + 1
            );
        }
    }
}

#[test]
fn golden_cases_pass_through_the_jit() {
    use optc_runtime::fused::{FusedOptimizer, Jit};
    let Ok(mut jit) = Jit::new() else {
        panic!("the Cranelift JIT supports this host");
    };
    let (cases, _) = cases();
    for case in &cases {
        let (rule, overrides) = compiled(case);
        let mut fused = FusedOptimizer::new(rule, overrides, &mut jit, 2).unwrap();
        let path = common::repo_path(&format!("tests/golden/{}.json", case.name));
        let reference = Trace::from_json(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut ours = reference.clone();
        let mut params: Vec<Vec<f32>> = reference.tensors.iter().map(|t| t.p0.clone()).collect();
        for tensor in &mut ours.tensors {
            tensor.params.clear();
        }
        for step in 0..reference.steps() {
            let grads: Vec<&[f32]> = reference
                .tensors
                .iter()
                .map(|t| t.grads[step].as_slice())
                .collect();
            fused
                .step(
                    &mut params
                        .iter_mut()
                        .map(|p| p.as_mut_slice())
                        .collect::<Vec<_>>(),
                    &grads,
                )
                .unwrap();
            for (tensor, p) in ours.tensors.iter_mut().zip(&params) {
                tensor.params.push(p.clone());
            }
        }
        let comparison = trace::compare(&ours, &reference).unwrap();
        assert!(
            comparison.max_err <= TOLERANCE,
            "{} through the JIT: {comparison:?}",
            case.name
        );
    }
}
