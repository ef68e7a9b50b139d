//! The fused executor against the interpreter: every stdlib rule on the
//! golden traces, bit for bit, and results independent of the thread count.

use std::sync::Arc;

use optc_runtime::fused::{FusedOptimizer, Reference, CHUNK};
use optc_runtime::trace::Trace;
use optc_runtime::Optimizer;

fn golden_cases() -> Vec<(String, String, Vec<(String, String)>)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/golden/cases.txt"
    ))
    .unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("schedule "))
        .map(|line| {
            let mut words = line.split_whitespace();
            let case = words.next().unwrap().to_string();
            let rule = words.next().unwrap().to_string();
            let sets = words
                .map(|w| {
                    let (k, v) = w.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect();
            (case, rule, sets)
        })
        .collect()
}

fn build(rule: &str, sets: &[(String, String)], threads: usize) -> (Optimizer, FusedOptimizer) {
    let mut program = optc_stdlib::prelude();
    let compiled = Arc::new(program.compile(rule).unwrap());
    let overrides: Vec<_> = sets
        .iter()
        .map(|(k, v)| (k.clone(), program.compile_scalar(k, v).unwrap()))
        .collect();
    let interpreted = Optimizer::new(compiled.clone(), overrides.clone()).unwrap();
    let fused = FusedOptimizer::new(compiled, overrides, &mut Reference, threads).unwrap();
    (interpreted, fused)
}

#[test]
fn fused_plans_equal_the_interpreter_on_every_golden_case() {
    for (case, rule, sets) in golden_cases() {
        let path = format!("{}/../tests/golden/{case}.json", env!("CARGO_MANIFEST_DIR"));
        let trace = Trace::from_json(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (mut interpreted, mut fused) = build(&rule, &sets, 2);
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
            let same = a
                .iter()
                .flatten()
                .zip(b.iter().flatten())
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{case} ({rule}) differs at step {}", step + 1);
        }
    }
}

/// Deterministic pseudo-random values with zeros, signs and a wide range.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = ((state >> 40) as f32) / (1u64 << 24) as f32 - 0.5;
            if i % 19 == 0 {
                0.0
            } else {
                unit * 4.0
            }
        })
        .collect()
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let sizes = [3 * CHUNK + 17, 5, CHUNK, 1001];
    for rule in ["lamb", "prodigy", "adam", "novograd", "dog"] {
        let mut runs = Vec::new();
        for threads in [1, 2, 3] {
            let (_, mut fused) = build(rule, &[], threads);
            let mut params: Vec<Vec<f32>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| values(n, i as u64))
                .collect();
            for step in 0..3u64 {
                let grads: Vec<Vec<f32>> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| values(n, 100 + step * 7 + i as u64))
                    .collect();
                let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
                fused
                    .step(
                        &mut params
                            .iter_mut()
                            .map(|p| p.as_mut_slice())
                            .collect::<Vec<_>>(),
                        &grads,
                    )
                    .unwrap();
            }
            runs.push(params);
        }
        assert!(
            runs.windows(2).all(|w| w[0] == w[1]),
            "{rule}: 1, 2 and 3 threads agree bit for bit"
        );
    }
}
