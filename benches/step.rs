//! Criterion benchmarks of fused optimizer steps: Adam, AdamW, Lion and SGD
//! with momentum on one tensor and on 200 tensors of the same total size,
//! next to the data-movement floor of the same step measured in the same run;
//! compile times of stdlib rules, cold and from the kernel cache; and the
//! simplifier on the stdlib and on its differentiated (adjoint) rules.
//! `cargo bench --bench step` (set OPTC_BENCH_NUMEL to change the size; the
//! default is 2^24 parameters).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use optc_runtime::buffer::Arena;
use optc_runtime::fused::FusedOptimizer;

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
            let (mut backend, _) = optc_runtime::fused::default_backend();
            let mut optimizer =
                FusedOptimizer::new(compiled, Vec::new(), &mut *backend, threads).unwrap();
            let floor = optimizer.floor(&mut *backend).unwrap();
            let arena = |seed, stagger| {
                Arena::from_tensors(&optc_tasks::random_tensors(numel, tensors, seed), stagger)
            };
            let (mut params, mut grads) = (arena(1, 40), arena(2, 41));
            let grads: Vec<&[f32]> = grads.tensors_mut().into_iter().map(|g| &*g).collect();
            let mut views = params.tensors_mut();
            optimizer.step(&mut views, &grads).unwrap();
            group.bench_function(format!("{rule}/{tensors}-tensors"), |b| {
                b.iter(|| optimizer.step(&mut views, &grads).unwrap())
            });
            group.bench_function(format!("{rule}/{tensors}-tensors/floor"), |b| {
                b.iter(|| optimizer.run_floor(&floor, &mut views, &grads).unwrap())
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
        group.bench_function(format!("{rule}/cold"), |b| {
            b.iter_batched(
                || optc_runtime::fused::default_backend().0,
                |mut backend| FusedOptimizer::new(compiled.clone(), Vec::new(), &mut *backend, 1),
                criterion::BatchSize::SmallInput,
            )
        });
        let (mut backend, _) = optc_runtime::fused::default_backend();
        group.bench_function(format!("{rule}/cached"), |b| {
            b.iter(|| FusedOptimizer::new(compiled.clone(), Vec::new(), &mut *backend, 1))
        });
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
