//! Criterion benchmarks of fused optimizer steps: Adam, AdamW, Lion and SGD
//! with momentum on one tensor and on 200 tensors of the same total size,
//! next to the data-movement floor of the same step measured in the same run.
//! `cargo bench --bench step` (set OPTC_BENCH_NUMEL to change the size; the
//! default is 2^24 parameters).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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
            let mut params = optc_tasks::random_tensors(numel, tensors, 1);
            let grads = optc_tasks::random_tensors(numel, tensors, 2);
            let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
            let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
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

criterion_group!(benches, steps);
criterion_main!(benches);
