//! Helpers shared by the runtime's tests: deterministic inputs, stdlib rules
//! and optimizers on a named backend.

#![allow(dead_code)]

use std::sync::Arc;

use optc_compiler::ir::{Rule, ScalarExpr};
use optc_runtime::{Backend, Optimizer, OptimizerBuilder, BACKENDS};

/// Deterministic pseudo-random values with zeros, signs and a wide range.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
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

/// A stdlib rule, compiled.
pub fn rule(name: &str) -> Arc<Rule> {
    Arc::new(optc_stdlib::prelude().compile(name).unwrap())
}

/// Optimizer `name` of user source `source` (on top of the stdlib), compiled.
pub fn user_rule(name: &str, source: &[u8]) -> Arc<Rule> {
    let mut program = optc_stdlib::prelude();
    program
        .add_source(&format!("{name}.opt"), source, optc_compiler::Origin::User)
        .unwrap();
    Arc::new(program.compile(name).unwrap())
}

/// A scalar program (a number, a bool or a schedule) in the stdlib's context.
pub fn scalar(text: &str) -> ScalarExpr {
    optc_stdlib::prelude()
        .compile_scalar("value", text)
        .unwrap_or_else(|d| panic!("{text}: {}", d.message))
}

/// Every registered backend, opened: (name, backend).
pub fn backends() -> Vec<(&'static str, Backend)> {
    BACKENDS
        .iter()
        .map(|info| {
            let backend = (info.open)().unwrap_or_else(|why| panic!("{}: {why}", info.name));
            (info.name, backend)
        })
        .collect()
}

/// The registered backends that match the interpreter bit for bit.
pub fn exact_backends() -> Vec<(&'static str, Backend)> {
    let exact = |name: &str| BACKENDS.iter().any(|b| b.name == name && !b.approximates);
    backends()
        .into_iter()
        .filter(|(name, _)| exact(name))
        .collect()
}

/// A builder for stdlib rule `name` on `backend`, with `threads` threads.
pub fn builder(name: &str, backend: &Backend, threads: usize) -> OptimizerBuilder {
    Optimizer::builder(rule(name))
        .backend(backend.clone())
        .threads(threads)
}

/// Gradients for step `step` of tensors shaped like `params`.
pub fn grads_for(params: &[Vec<f32>], step: u64) -> Vec<Vec<f32>> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| values(p.len(), 500 + step * 3 + i as u64))
        .collect()
}

/// Steps `from..to` (0-based) with [`grads_for`] gradients.
pub fn steps(optimizer: &mut Optimizer, params: &mut [Vec<f32>], from: u64, to: u64) {
    for step in from..to {
        let grads = grads_for(params, step);
        let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
        optimizer.step(&mut views, &grads).unwrap();
    }
}

/// A path in the temporary directory, unique to this process.
pub fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("optc-{}-{name}.safetensors", std::process::id()))
}

/// [`values`] for tensors of `sizes`, each with its own seed.
pub fn sized_values(sizes: &[usize]) -> Vec<Vec<f32>> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| values(n, i as u64))
        .collect()
}

/// A path under the workspace's root.
pub fn repo_path(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}
