//! The GPU backend (`cubecl`) beyond the conformance suite, which runs it
//! like every registered backend: one launch per pass over many tensors,
//! results that repeat bit for bit, reductions and bf16 storage against the
//! host kernels, checkpoints of device state.

#![cfg(feature = "cubecl")]

mod common;

use common::{builder, sized_values, steps};
use optc_runtime::cubecl::Gpu;
use optc_runtime::Backend;

fn gpu() -> Backend {
    Backend::device(Gpu::open().expect("a Vulkan adapter (lavapipe on machines without a GPU)"))
}

/// Largest |a - b| / max(|b|, 1) over every element.
fn max_error(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

#[test]
fn stdlib_rules_match_the_interpreter() {
    for name in ["sgd", "lion", "adamw", "lamb"] {
        let sizes = [5, 4096, 4097, 70_000];
        let mut on_gpu = sized_values(&sizes);
        let mut on_host = on_gpu.clone();
        let mut gpu = builder(name, &gpu(), 1).build().unwrap();
        let mut host = builder(name, &Backend::interpreter(optc_runtime::Elements::F32), 1)
            .build()
            .unwrap();
        steps(&mut gpu, &mut on_gpu, 0, 3);
        steps(&mut host, &mut on_host, 0, 3);
        let error = max_error(&on_gpu, &on_host);
        assert!(error < 1e-5, "{name}: {error:e}");
    }
}

#[test]
fn many_tensors_take_one_launch_per_pass() {
    let gpu = Gpu::open().unwrap();
    let backend = Backend::device(gpu.clone());
    let sizes = vec![37; 200];
    let mut params = sized_values(&sizes);
    let mut optimizer = builder("adam", &backend, 1).build().unwrap();
    steps(&mut optimizer, &mut params, 0, 1);
    // Tests share the device: count this optimizer's launches alone.
    let passes = optimizer.traffic().unwrap().passes;
    let before = gpu.passes();
    steps(&mut optimizer, &mut params, 1, 2);
    let launched = gpu.passes() - before;
    assert!(
        launched >= passes,
        "{launched} launches for {passes} passes"
    );
    assert!(
        launched < 2 * passes + 8,
        "{launched} launches: one per tensor?"
    );
}

#[test]
fn steps_repeat_bit_for_bit() {
    let run = || {
        let sizes = [3, 5000, 9000];
        let mut params = sized_values(&sizes);
        let mut optimizer = builder("lamb", &gpu(), 1).build().unwrap();
        steps(&mut optimizer, &mut params, 0, 4);
        params
    };
    let (a, b) = (run(), run());
    let bits = |x: &[Vec<f32>]| x.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn bf16_storage_matches_the_reference_kernels() {
    for stochastic_rounding in [false, true] {
        let precision = optc_runtime::Precision {
            params: optc_compiler::kernel::Storage::Bf16,
            state: optc_compiler::kernel::Storage::Bf16,
            stochastic_rounding,
            seed: 11,
        };
        let sizes = [1, 4097, 300];
        let start: Vec<Vec<half::bf16>> = sized_values(&sizes)
            .iter()
            .map(|t| t.iter().map(|&v| half::bf16::from_f32(v)).collect())
            .collect();
        let run = |backend: &Backend| {
            let mut optimizer = builder("sgd_momentum", backend, 1)
                .precision(precision)
                .build()
                .unwrap();
            let mut params = start.clone();
            for step in 0..3u64 {
                let grads: Vec<Vec<half::bf16>> = params
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        common::values(p.len(), 40 + step * 3 + i as u64)
                            .into_iter()
                            .map(half::bf16::from_f32)
                            .collect()
                    })
                    .collect();
                let grads: Vec<&[half::bf16]> = grads.iter().map(Vec::as_slice).collect();
                let mut views: Vec<&mut [half::bf16]> =
                    params.iter_mut().map(Vec::as_mut_slice).collect();
                optimizer.step(&mut views, &grads).unwrap();
            }
            let state = optimizer.state("trace").unwrap();
            (params, state)
        };
        let (gpu_params, gpu_state) = run(&gpu());
        let (host_params, host_state) = run(&Backend::named("reference").unwrap());
        // sgd_momentum multiplies and adds: exact on the device too, so
        // every rounding to bf16 sees the same f32 value.
        assert_eq!(gpu_params, host_params, "stochastic: {stochastic_rounding}");
        assert_eq!(gpu_state, host_state, "stochastic: {stochastic_rounding}");
    }
}

#[test]
fn checkpoints_carry_device_state() {
    let path = common::temp("device-checkpoint");
    let sizes = [10, 5000];
    let mut uninterrupted = sized_values(&sizes);
    let mut straight = builder("adamw", &gpu(), 1).build().unwrap();
    steps(&mut straight, &mut uninterrupted, 0, 4);

    let mut resumed = sized_values(&sizes);
    let mut first = builder("adamw", &gpu(), 1).build().unwrap();
    steps(&mut first, &mut resumed, 0, 2);
    first.save(&path).unwrap();
    let mut second = builder("adamw", &gpu(), 1).build().unwrap();
    second.load(&path).unwrap();
    steps(&mut second, &mut resumed, 2, 4);
    std::fs::remove_file(&path).ok();
    assert_eq!(resumed, uninterrupted);
}

#[test]
fn resident_steps_equal_host_steps() {
    let sizes = [3, 4099];
    let start = sized_values(&sizes);
    let grads = common::grads_for(&start, 0);
    let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();

    let mut on_host = start.clone();
    let mut host = builder("adam", &gpu(), 1).build().unwrap();
    for _ in 0..3 {
        let mut views: Vec<&mut [f32]> = on_host.iter_mut().map(Vec::as_mut_slice).collect();
        host.step(&mut views, &grads).unwrap();
    }
    let mut device = builder("adam", &gpu(), 1).build().unwrap();
    let views: Vec<&[f32]> = start.iter().map(Vec::as_slice).collect();
    device.upload(&views).unwrap();
    device.upload_gradients(&grads).unwrap();
    for _ in 0..3 {
        device.step_resident().unwrap();
    }
    assert_eq!(device.params().unwrap(), on_host);
}
