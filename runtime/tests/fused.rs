//! The fused executor: results independent of the thread count,
//! checkpoints, and the non-finite policy. (Its agreement with the
//! interpreter is checked in the workspace's tests/golden.rs and
//! tests/differential.rs.)

use std::sync::Arc;

use optc_runtime::fused::{FusedOptimizer, Reference, CHUNK};
use optc_runtime::Optimizer;

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

fn steps(fused: &mut FusedOptimizer, params: &mut [Vec<f32>], from: u64, to: u64) {
    for step in from..to {
        let grads: Vec<Vec<f32>> = params
            .iter()
            .enumerate()
            .map(|(i, p)| values(p.len(), 500 + step * 3 + i as u64))
            .collect();
        let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
        fused.step(&mut views, &grads).unwrap();
    }
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("optc-{}-{name}.safetensors", std::process::id()))
}

#[test]
fn resuming_from_a_checkpoint_is_bit_identical() {
    let names = ["w", "b"];
    for rule in ["adam", "novograd", "prodigy", "nadam"] {
        let start: Vec<Vec<f32>> = vec![values(1000, 1), values(7, 2)];
        let numels = [1000, 7];
        let (_, mut straight) = build(rule, &[], 2);
        let mut a = start.clone();
        steps(&mut straight, &mut a, 0, 6);

        let (_, mut first) = build(rule, &[], 1);
        let mut b = start.clone();
        steps(&mut first, &mut b, 0, 3);
        let path = temp(rule);
        first.save(&path, &names).unwrap();
        let (_, mut resumed) = build(rule, &[], 2);
        resumed.load(&path, &names, &numels).unwrap();
        assert_eq!(resumed.steps_taken(), 3);
        steps(&mut resumed, &mut b, 3, 6);
        std::fs::remove_file(&path).ok();
        assert_eq!(a, b, "{rule}: resumed run equals the uninterrupted one");
    }
}

#[test]
fn bad_checkpoints_change_nothing() {
    let names = ["w"];
    let (_, mut adam) = build("adam", &[], 1);
    let mut params = vec![values(100, 3)];
    steps(&mut adam, &mut params, 0, 2);
    let path = temp("adam-bad");
    adam.save(&path, &names).unwrap();

    let (_, mut lion) = build("lion", &[], 1);
    steps(&mut lion, &mut params.clone(), 0, 1);
    let before = lion.state("mu");
    let error = lion.load(&path, &names, &[100]).unwrap_err().to_string();
    assert!(error.contains("checkpoint of rule `adam`"), "{error}");
    assert_eq!(lion.state("mu"), before, "state untouched");
    assert_eq!(lion.steps_taken(), 1);

    let (_, mut other) = build("adam", &[], 1);
    let error = other.load(&path, &["v"], &[100]).unwrap_err().to_string();
    assert!(error.contains("checkpoint tensors [\"w\"]"), "{error}");
    let error = other.load(&path, &names, &[99]).unwrap_err().to_string();
    assert!(error.contains("expected F32 [99]"), "{error}");
    std::fs::write(&path, b"not a checkpoint").unwrap();
    assert!(other.load(&path, &names, &[100]).is_err());
    assert_eq!(other.steps_taken(), 0);

    // A failed save leaves the previous checkpoint in place.
    adam.save(&path, &names).unwrap();
    let saved = std::fs::read(&path).unwrap();
    let missing_dir = std::env::temp_dir()
        .join("optc-no-such-dir")
        .join("x.safetensors");
    assert!(adam.save(&missing_dir, &names).is_err());
    assert!(adam.save(&path, &["too", "many"]).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), saved);
    std::fs::remove_file(&path).ok();
}

#[test]
fn non_finite_gradients_skip_the_step_when_asked() {
    use optc_runtime::fused::{NonFinite, Outcome};
    let (_, mut fused) = build("adam", &[], 1);
    fused.set_non_finite(NonFinite::Skip);
    let mut params = [values(10, 4)];
    steps(&mut fused, &mut params, 0, 1);
    let (before, state) = (params.clone(), fused.state("mu"));
    let mut grad = values(10, 5);
    grad[7] = f32::NAN;
    let outcome = fused
        .step(&mut [params[0].as_mut_slice()], &[&grad])
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Skipped {
            tensor: 0,
            index: 7
        }
    );
    assert_eq!(
        (params, fused.state("mu"), fused.steps_taken()),
        (before, state, 1)
    );
    fused.set_non_finite(NonFinite::Propagate);
    let mut params = [values(10, 4)];
    assert_eq!(
        fused
            .step(&mut [params[0].as_mut_slice()], &[&grad])
            .unwrap(),
        Outcome::Applied
    );
    assert!(params[0][7].is_nan(), "propagated");
}

#[test]
fn the_jit_reuses_cached_kernels_and_agrees_with_the_reference_on_any_thread_count() {
    let mut jit = optc_runtime::fused::Jit::new().unwrap();
    let compiled = Arc::new(optc_stdlib::prelude().compile("lamb").unwrap());
    let sizes = [2 * CHUNK + 3, 7, 1000];
    let run = |fused: &mut FusedOptimizer| {
        let mut params: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| values(n, i as u64))
            .collect();
        steps(fused, &mut params, 0, 3);
        params
    };
    let mut reference =
        FusedOptimizer::new(compiled.clone(), Vec::new(), &mut Reference, 1).unwrap();
    let expected = run(&mut reference);
    let mut cached = None;
    for threads in [1, 2, 3] {
        let mut fused =
            FusedOptimizer::new(compiled.clone(), Vec::new(), &mut jit, threads).unwrap();
        // LAMB: two passes in each of the two plans, compiled once in all.
        assert_eq!(*cached.get_or_insert(jit.cached()), jit.cached());
        assert!(jit.cached() >= 2);
        assert!(run(&mut fused) == expected, "{threads} thread(s)");
    }
}

#[test]
fn sums_over_several_chunks_agree_with_the_interpreter() {
    // Cancellation makes the order visible: 1e20 and -1e20 in different chunks.
    let mut program = optc_compiler::Program::new();
    let source = b"optimizer s() { p -= sum(g); }";
    program
        .add_source("s.opt", source, optc_compiler::Origin::User)
        .unwrap();
    let rule = Arc::new(program.compile("s").unwrap());
    let n = CHUNK + 100;
    let mut g = vec![1.0f32; n];
    g[0] = 1e20;
    g[CHUNK] = -1e20;
    let mut interpreted = Optimizer::new(rule.clone(), Vec::new()).unwrap();
    let mut fused = FusedOptimizer::new(rule, Vec::new(), &mut Reference, 2).unwrap();
    let (mut a, mut b) = (vec![0.0f32; n], vec![0.0f32; n]);
    interpreted.step(&mut [&mut a[..]], &[&g[..]]).unwrap();
    fused.step(&mut [&mut b[..]], &[&g[..]]).unwrap();
    // Each chunk's ones are lost next to ±1e20 (in element order over the
    // whole tensor, the last 99 would survive and give -99).
    assert_eq!(a[0], 0.0);
    assert_eq!(a, b);
}

#[test]
fn set_state_checks_shapes_and_changes_nothing_on_error() {
    use optc_compiler::interpret::Value;
    let (_, mut fused) = build("adam", &[], 1);
    let wrong = [Value::Elem(vec![vec![0.0f32; 3]]), Value::Group(0.0)];
    let error = fused.set_state(2, &[3], &wrong).unwrap_err();
    assert!(error.to_string().contains("state `nu`"), "{error}");
    assert_eq!(fused.steps_taken(), 0);
    let right = [
        Value::Elem(vec![vec![0.5f32; 3]]),
        Value::Elem(vec![vec![0.25f32; 3]]),
    ];
    fused.set_state(2, &[3], &right).unwrap();
    assert_eq!(fused.steps_taken(), 2);
    assert_eq!(fused.state("nu"), Some(vec![vec![0.25; 3]]));
}
