//! bf16 storage on every kernel backend: each agrees with the reference
//! kernels bit for bit, stochastic rounding does not depend on threads and
//! resumes exactly from a checkpoint, a bf16 step is the f32 step rounded,
//! and wrong element types or checkpoints are errors that change nothing.
//! The interpreter refuses bf16 storage.

mod common;

use half::bf16;
use optc_compiler::kernel::Storage;
use optc_runtime::{Backend, Error, Optimizer, Precision, CHUNK};

fn bf16_everywhere(stochastic_rounding: bool) -> Precision {
    Precision {
        params: Storage::Bf16,
        state: Storage::Bf16,
        stochastic_rounding,
        seed: 7,
    }
}

fn optimizer(rule: &str, backend: &Backend, threads: usize, precision: Precision) -> Optimizer {
    common::builder(rule, backend, threads)
        .precision(precision)
        .build()
        .unwrap()
}

fn reference() -> Backend {
    Backend::named("reference").unwrap()
}

/// The registered kernel backends.
fn kernel_backends() -> Vec<(&'static str, Backend)> {
    common::backends()
        .into_iter()
        .filter(|(_, b)| b.runs_kernels())
        .collect()
}

/// Deterministic values with zeros, both signs and a wide range of magnitudes.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            match i % 13 {
                0 => 0.0,
                1 => unit * 1e-30,
                2 => unit * 1e20,
                _ => unit * 4.0,
            }
        })
        .collect()
}

const SIZES: [usize; 3] = [2 * CHUNK + 5, 3, 1001];

fn tensors(seed: u64) -> Vec<Vec<bf16>> {
    SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            values(n, seed + i as u64)
                .into_iter()
                .map(bf16::from_f32)
                .collect()
        })
        .collect()
}

fn run(fused: &mut Optimizer, params: &mut [Vec<bf16>], steps: std::ops::Range<u64>) {
    for step in steps {
        let grads = tensors(100 + 3 * step);
        let grads: Vec<&[bf16]> = grads.iter().map(Vec::as_slice).collect();
        let mut views: Vec<&mut [bf16]> = params.iter_mut().map(Vec::as_mut_slice).collect();
        fused.step(&mut views, &grads).unwrap();
    }
}

fn bits(tensors: &[Vec<bf16>]) -> Vec<Vec<u16>> {
    tensors
        .iter()
        .map(|t| t.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn every_kernel_backend_equals_the_reference_kernels_on_any_thread_count() {
    for (name, backend) in kernel_backends() {
        for rule in ["adam", "lion", "lamb", "sgd_momentum"] {
            for stochastic in [false, true] {
                let precision = bf16_everywhere(stochastic);
                let mut expected = tensors(1);
                let mut reference = optimizer(rule, &reference(), 1, precision);
                run(&mut reference, &mut expected, 0..4);
                for threads in [1, 2, 3] {
                    let mut params = tensors(1);
                    let mut fused = optimizer(rule, &backend, threads, precision);
                    run(&mut fused, &mut params, 0..4);
                    assert!(
                        bits(&params) == bits(&expected),
                        "{rule} on {name}, stochastic {stochastic}, {threads} thread(s)"
                    );
                    for state in &fused.rule().states {
                        assert_eq!(
                            fused.state(&state.name),
                            reference.state(&state.name),
                            "{rule}: state {}",
                            state.name
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_first_bf16_step_is_the_f32_step_rounded_to_nearest_even() {
    let params = tensors(1);
    let grads = tensors(2);
    let widen = |t: &[Vec<bf16>]| -> Vec<Vec<f32>> {
        t.iter()
            .map(|t| t.iter().map(|x| x.to_f32()).collect())
            .collect()
    };
    let mut interpreted = optimizer(
        "adam",
        &Backend::named("interp").unwrap(),
        1,
        Precision::default(),
    );
    let mut wide = widen(&params);
    let wide_grads = widen(&grads);
    let wide_grads: Vec<&[f32]> = wide_grads.iter().map(Vec::as_slice).collect();
    let mut views: Vec<&mut [f32]> = wide.iter_mut().map(Vec::as_mut_slice).collect();
    interpreted.step(&mut views, &wide_grads).unwrap();

    let mut fused = optimizer("adam", &Backend::fastest(), 2, bf16_everywhere(false));
    let mut narrow = params.clone();
    let narrow_grads: Vec<&[bf16]> = grads.iter().map(Vec::as_slice).collect();
    let mut views: Vec<&mut [bf16]> = narrow.iter_mut().map(Vec::as_mut_slice).collect();
    fused.step(&mut views, &narrow_grads).unwrap();
    let rounded: Vec<Vec<bf16>> = wide
        .iter()
        .map(|t| t.iter().map(|&x| bf16::from_f32(x)).collect())
        .collect();
    assert!(bits(&narrow) == bits(&rounded));
}

#[test]
fn stochastic_rounding_resumes_exactly_from_a_checkpoint() {
    for (name, backend) in kernel_backends() {
        let precision = bf16_everywhere(true);
        let mut straight = tensors(1);
        let mut uninterrupted = optimizer("adam", &backend, 2, precision);
        run(&mut uninterrupted, &mut straight, 0..6);

        let path = common::temp(&format!("{name}-bf16"));
        let mut resumed = tensors(1);
        let mut first = optimizer("adam", &backend, 2, precision);
        run(&mut first, &mut resumed, 0..3);
        first.save(&path).unwrap();
        let mut second = optimizer("adam", &backend, 1, precision);
        second.load(&path).unwrap();
        run(&mut second, &mut resumed, 3..6);
        assert!(bits(&resumed) == bits(&straight), "{name}");

        // The same checkpoint cannot be read as f32 state.
        let mut f32_state = optimizer("adam", &backend, 1, Precision::default());
        let error = f32_state.load(&path).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("holds bf16 state, this optimizer stores f32"),
            "{error}"
        );
        assert_eq!(f32_state.steps_taken(), 0);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn parameters_of_the_wrong_type_are_an_error_that_changes_nothing() {
    let mut fused = optimizer("adam", &reference(), 1, bf16_everywhere(false));
    let mut params = vec![vec![1.0f32; 8]];
    let grads = [vec![0.5f32; 8]];
    let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
    let error = fused.step(&mut views, &grads).unwrap_err();
    assert_eq!(
        error,
        Error::Dtype {
            expected: Storage::Bf16,
            found: Storage::F32
        }
    );
    assert_eq!(params, vec![vec![1.0f32; 8]]);
    assert_eq!(fused.steps_taken(), 0);
    assert_eq!(fused.state("mu"), Some(Vec::new()));
}

#[test]
fn the_interpreter_refuses_bf16_storage() {
    let error = common::builder("adam", &Backend::named("interp").unwrap(), 1)
        .precision(bf16_everywhere(false))
        .build()
        .err()
        .unwrap();
    assert!(matches!(error, Error::Unsupported(_)), "{error}");
    assert!(error.to_string().contains("bf16 storage"));
}
