//! Every stdlib rule replays the trajectories that torch.optim and optax
//! recorded (tests/golden/*.json) and must stay within float32 rounding of
//! them. `tests/golden/cases.txt` maps each case to a rule and the
//! hyperparameters the peer was called with.

mod common;

use std::sync::Arc;

use optc_compiler::interpret;
use optc_runtime::trace::{self, Trace};
use optc_runtime::{Backend, Group, Optimizer, Scalars, BACKENDS};

/// Largest accepted |ours - peer| / max(|peer|, 1) over all steps and elements.
const TOLERANCE: f64 = 1e-5;

struct Case {
    /// The folder its trace and cases.txt are in.
    folder: &'static str,
    name: String,
    rule: String,
    sets: Vec<(String, String)>,
    /// Parameter groups: tensor patterns (`|`-separated) and their own values.
    groups: Vec<(String, Vec<(String, String)>)>,
}

fn cases() -> (Vec<Case>, Vec<(String, String)>) {
    cases_in("tests/golden")
}

/// The cases (and schedules) of `folder`'s cases.txt.
fn cases_in(folder: &'static str) -> (Vec<Case>, Vec<(String, String)>) {
    let text = std::fs::read_to_string(common::repo_path(&format!("{folder}/cases.txt")))
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
        // NAME RULE name=value... [group:PATTERNS name=value...]...
        let mut words = line.split_whitespace();
        let name = words.next().unwrap().to_string();
        let rule = words.next().expect("a rule name").to_string();
        let (mut sets, mut groups) = (Vec::new(), Vec::<(String, Vec<_>)>::new());
        for word in words {
            if let Some(patterns) = word.strip_prefix("group:") {
                groups.push((patterns.to_string(), Vec::new()));
                continue;
            }
            let (k, v) = word.split_once('=').expect("name=value");
            let set = (k.to_string(), v.to_string());
            match groups.last_mut() {
                Some((_, group_sets)) => group_sets.push(set),
                None => sets.push(set),
            }
        }
        cases.push(Case {
            folder,
            name,
            rule,
            sets,
            groups,
        });
    }
    (cases, schedules)
}

/// The case's recorded trace.
fn golden(case: &Case) -> Trace {
    let path = common::repo_path(&format!("{}/{}.json", case.folder, case.name));
    Trace::from_json(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Whether a pass plan runs the case's rule (rules with per-row or
/// per-column values or matrix products run on the staged backend).
fn runs_compiled(case: &Case) -> bool {
    let rule = optc_stdlib::prelude().compile(&case.rule).unwrap();
    optc_compiler::plan::unsupported(&rule).is_none()
}

/// A kernel backend refuses a rule pass plans do not run, naming the
/// backend that does.
fn assert_refused(case: &Case, backend: &Backend) {
    let refusal = builder(case).backend(backend.clone()).build().unwrap_err();
    let message = refusal.to_string();
    assert!(
        message.contains("pass plans do not run") && message.contains("`staged`"),
        "{} on {}: {message}",
        case.name,
        backend.name()
    );
}

/// Replays one case on `backend`; returns our trace.
fn replay_on(case: &Case, backend: &Backend, threads: usize) -> Result<Trace, String> {
    let mut optimizer = builder(case)
        .backend(backend.clone())
        .threads(threads)
        .build()
        .map_err(|e| e.to_string())?;
    trace::replay(&mut optimizer, &golden(case)).map_err(|e| e.to_string())
}

/// Replays one case through the interpreter; returns the comparison and the
/// peer call it reproduces.
fn replay_case(case: &Case) -> Result<(trace::Comparison, String), String> {
    let reference = golden(case);
    let interp = Backend::named("interp").map_err(|e| e.to_string())?;
    let ours = replay_on(case, &interp, 1)?;
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
fn every_golden_case_has_a_rule() {
    let (cases, _) = cases();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(common::repo_path("tests/golden")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(case) = name.strip_suffix(".json") else {
            continue;
        };
        if case == "schedules" {
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
    assert_eq!(
        distinct.len(),
        47,
        "the 45 cases and the 2 with groups are all mapped"
    );
}

#[test]
fn stdlib_rules_match_torch_and_optax() {
    let (cases, _) = cases();
    let mut failures = Vec::new();
    for case in &cases {
        match replay_case(case) {
            // One markdown row per case: the table of docs/stdlib.md.
            Ok((c, peer)) if c.max_err <= TOLERANCE => {
                let mut sets: Vec<String> =
                    case.sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
                for (patterns, group) in &case.groups {
                    let group: Vec<String> =
                        group.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    sets.push(format!(
                        "group {}: {}",
                        patterns.replace('|', "\\|"),
                        group.join(" ")
                    ));
                }
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
        let groups: Vec<String> = case
            .groups
            .iter()
            .map(|(patterns, sets)| {
                let sets: Vec<String> = sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{patterns}:{}", sets.join(","))
            })
            .collect();
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
        for group in &groups {
            args.extend(["--group", group.as_str()]);
        }
        let (code, stdout, stderr) = common::optc(&args);
        assert_eq!(code, 0, "{}: {stderr}", case.name);
        let error = common::max_error(&stdout)
            .unwrap_or_else(|| panic!("{}: no error figure in {stdout}", case.name));
        assert!(error <= TOLERANCE, "{}: {stdout}", case.name);
    }
}

/// An optimizer builder for the case's rule, hyperparameters and groups.
fn builder(case: &Case) -> optc_runtime::OptimizerBuilder {
    let mut program = optc_stdlib::prelude();
    let rule = Arc::new(program.compile(&case.rule).unwrap());
    let mut compile = |sets: &[(String, String)]| -> Vec<(String, optc_compiler::ir::ScalarExpr)> {
        sets.iter()
            .map(|(k, v)| (k.clone(), program.compile_scalar(k, v).unwrap()))
            .collect()
    };
    let tensors = golden(case).shaped_tensors().unwrap();
    let mut builder = Optimizer::builder(rule)
        .overrides(compile(&case.sets))
        .shaped_tensors(tensors);
    for (patterns, sets) in &case.groups {
        let mut group = Group::new(patterns.clone()).tensors(patterns.split('|'));
        for (name, value) in compile(sets) {
            group = group.set(name, value);
        }
        builder = builder.group(group);
    }
    builder
}

/// The golden cases with parameter groups: torch.optim stepping two
/// `param_groups` of their own values (tests/golden/generate_groups.py).
/// cases.txt gives each group's tensors as the trace records them, and the
/// same trace replayed without the groups is far off.
#[test]
fn parameter_groups_match_torch_param_groups() {
    let (cases, _) = cases();
    let grouped: Vec<&Case> = cases.iter().filter(|c| !c.groups.is_empty()).collect();
    assert_eq!(grouped.len(), 2, "adamw_groups and sgd_groups");
    let interp = Backend::named("interp").unwrap();
    for case in grouped {
        let trace = golden(case);
        let recorded = trace.extra["groups"].as_array().unwrap();
        for ((patterns, _), group) in case.groups.iter().zip(&recorded[1..]) {
            let tensors: Vec<String> = group["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.to_string())
                .collect();
            assert_eq!(
                patterns,
                &tensors.join("|"),
                "{}: cases.txt names the recorded group",
                case.name
            );
        }
        let ours = replay_on(case, &interp, 1).unwrap();
        let comparison = trace::compare(&ours, &trace).unwrap();
        assert!(comparison.max_err <= 1e-6, "{}: {comparison:?}", case.name);
        let ungrouped = Case {
            folder: case.folder,
            groups: Vec::new(),
            name: case.name.clone(),
            rule: case.rule.clone(),
            sets: case.sets.clone(),
        };
        let off = trace::compare(&replay_on(&ungrouped, &interp, 1).unwrap(), &trace).unwrap();
        assert!(
            off.max_err > 1e-3,
            "{}: the groups matter ({off:?})",
            case.name
        );
    }
}

/// Every registered backend replays every case within the tolerance, and
/// the exact ones equal the interpreter bit for bit.
#[test]
fn golden_cases_pass_on_every_backend() {
    let (cases, _) = cases();
    let interp = Backend::named("interp").unwrap();
    for info in BACKENDS {
        let backend = (info.open)().unwrap();
        for case in &cases {
            if backend.runs_plans() && !runs_compiled(case) {
                assert_refused(case, &backend);
                continue;
            }
            let ours = replay_on(case, &backend, 2).unwrap();
            let comparison = trace::compare(&ours, &golden(case)).unwrap();
            assert!(
                comparison.max_err <= TOLERANCE,
                "{} on {}: {comparison:?}",
                case.name,
                info.name
            );
            if !info.approximates {
                let oracle = replay_on(case, &interp, 1).unwrap();
                let same = ours
                    .tensors
                    .iter()
                    .zip(&oracle.tensors)
                    .all(|(a, b)| a.params == b.params);
                assert!(
                    same,
                    "{} on {} differs from the interpreter",
                    case.name, info.name
                );
            }
        }
    }
}

/// Whether optax recorded the case.
fn from_optax(case: &Case) -> bool {
    golden(case).extra["peer"]
        .as_str()
        .is_some_and(|peer| peer.starts_with("optax"))
}

/// In optax's scalar arithmetic (`Scalars::F32`: the step count's values,
/// reductions and group state in f32, hyperparameter-only values in f64, as
/// optax's jnp scalars and Python floats are), every optax case, and the
/// 40-step optax cases of tests/golden/long (where f64 bias corrections
/// drift away step by step), replays within a tenth of the tolerance on
/// every backend; most are bit-exact. One markdown row per case (the table
/// of docs/stdlib.md): the error in each scalar mode.
#[test]
fn optax_cases_match_in_optax_scalar_arithmetic() {
    let mut cases: Vec<Case> = cases()
        .0
        .into_iter()
        .filter(|c| c.groups.is_empty() && from_optax(c))
        .collect();
    cases.extend(cases_in("tests/golden/long").0);
    assert!(cases.len() >= 28, "the optax cases of both folders");
    let interp = Backend::named("interp").unwrap();
    let error = |case: &Case, backend: &Backend, scalars: Scalars| {
        let mut optimizer = builder(case)
            .backend(backend.clone())
            .scalars(scalars)
            .build()
            .unwrap();
        let ours = trace::replay(&mut optimizer, &golden(case)).unwrap();
        trace::compare(&ours, &golden(case)).unwrap().max_err
    };
    let mut failures = Vec::new();
    for case in &cases {
        let (f64_error, f32_error) = (
            error(case, &interp, Scalars::F64),
            error(case, &interp, Scalars::F32),
        );
        println!(
            "| {} | {} | {} | {f64_error:.1e} | {f32_error:.1e} |",
            case.folder.trim_start_matches("tests/"),
            case.name,
            golden(case).steps()
        );
        for info in BACKENDS {
            let backend = (info.open)().unwrap();
            if backend.runs_plans() && !runs_compiled(case) {
                assert_refused(case, &backend);
                continue;
            }
            let found = error(case, &backend, Scalars::F32);
            if found.is_nan() || found > TOLERANCE / 10.0 {
                failures.push(format!(
                    "{}/{} on {}: {found:.3e}",
                    case.folder, case.name, info.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "beyond a tenth of the tolerance:\n{}",
        failures.join("\n")
    );
}
