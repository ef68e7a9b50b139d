//! Criterion benchmarks of optimizer steps on the default backend: Adam,
//! AdamW, Lion and SGD with momentum on one tensor and on 200 tensors of the
//! same total size (parameters the executor holds, gradients in an arena),
//! next to the data-movement floor of the same step measured in the same run;
//! compile times of stdlib rules, cold and from the kernel cache; and the
//! simplifier on the stdlib and on its differentiated (adjoint) rules.
//! `cargo bench --bench step` (set OPTC_BENCH_NUMEL to change the size; the
//! default is 2^24 parameters).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use optc_runtime::buffer::Arena;
use optc_runtime::{Backend, Optimizer};

fn steps(c: &mut Criterion) {
    let numel: usize = std::env::var("OPTC_BENCH_NUMEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 24);
    let threads: usize = std::env::var("OPTC_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let program = optc_stdlib::prelude();
    let mut group = c.benchmark_group("step");
    group.throughput(Throughput::Elements(numel as u64));
    group.sample_size(10);
    for rule in ["adam", "adamw", "lion", "sgd_momentum"] {
        for tensors in [1, 200] {
            let compiled = Arc::new(program.compile(rule).unwrap());
            let mut optimizer = Optimizer::builder(compiled)
                .threads(threads)
                .build()
                .unwrap();
            let params = optc_tasks::random_tensors(numel, tensors, 1);
            let params: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
            optimizer.upload(&params).unwrap();
            let mut grads =
                Arena::from_tensors(&optc_tasks::random_tensors(numel, tensors, 2), 41).unwrap();
            let grads: Vec<&[f32]> = grads.tensors_mut().into_iter().map(|g| &*g).collect();
            optimizer.step_owned(&grads).unwrap();
            group.bench_function(format!("{rule}/{tensors}-tensors"), |b| {
                b.iter(|| optimizer.step_owned(&grads).unwrap())
            });
            group.bench_function(format!("{rule}/{tensors}-tensors/floor"), |b| {
                b.iter(|| optimizer.run_floor_owned(&grads).unwrap())
            });
        }
    }
    group.finish();
}

/// Cold compilation of both plans of stdlib rules (a fresh backend each time,
/// so its kernel cache is empty), and the same from a warm cache.
fn compile(c: &mut Criterion) {
    let program = optc_stdlib::prelude();
    let mut group = c.benchmark_group("compile");
    for rule in ["adam", "lion", "lamb"] {
        let compiled = Arc::new(program.compile(rule).unwrap());
        let build = |backend: &Backend| {
            Optimizer::builder(compiled.clone())
                .backend(backend.clone())
                .build()
        };
        group.bench_function(format!("{rule}/cold"), |b| {
            b.iter_batched(
                Backend::fastest,
                |backend| build(&backend),
                criterion::BatchSize::SmallInput,
            )
        });
        let backend = Backend::fastest();
        group.bench_function(format!("{rule}/cached"), |b| b.iter(|| build(&backend)));
    }
    group.finish();
}

/// The simplifier on every stdlib rule, and on their hypergradient variants
/// (differentiated rules: larger, with more to simplify).
fn simplify(c: &mut Criterion) {
    use optc_compiler::simplify::{simplify, Tier};
    let program = optc_stdlib::prelude();
    let rules: Vec<_> = program
        .optimizers()
        .iter()
        .map(|name| program.compile(name).unwrap())
        .collect();
    let derived: Vec<_> = rules
        .iter()
        .filter_map(|rule| {
            let form = optc_compiler::derive::Form::Additive;
            optc_compiler::derive::hypergradient(rule, "learning_rate", 1e-7, form).ok()
        })
        .collect();
    let mut group = c.benchmark_group("simplify");
    for (name, set) in [("stdlib", &rules), ("stdlib-hypergradient", &derived)] {
        for tier in [Tier::Exact, Tier::Algebraic] {
            group.bench_function(format!("{name}/{tier:?}"), |b| {
                b.iter(|| {
                    set.iter()
                        .map(|r| simplify(r, tier).graph.len())
                        .sum::<usize>()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, steps, compile, simplify);
criterion_main!(benches);
