//! The JIT against the reference semantics (`kernel::run`), on hand-written
//! and random kernels, odd lengths, offset ranges and special values.

mod common;

use common::Rng;
use common::*;
use optc_compiler::backend::NativeKernel;
use optc_compiler::ir::{BinaryOp, ReduceOp, UnaryOp};
use optc_compiler::kernel::{self, Kernel, Storage};
use optc_cranelift::Jit;
use proptest::prelude::*;
use std::ops::Range;

/// Random buffers holding `range` plus a margin on both sides, and scalars.
fn inputs(kernel: &Kernel, rng: &mut Rng, range: &Range<usize>) -> (Vec<Vec<f32>>, Vec<f32>) {
    let len = range.end + rng.below(3) as usize;
    let buffers = (0..kernel.buffers)
        .map(|_| (0..len).map(|_| rng.interesting()).collect())
        .collect();
    let scalars = (0..kernel.scalars).map(|_| rng.interesting()).collect();
    (buffers, scalars)
}

fn run_jit(
    compiled: &NativeKernel,
    kernel: &Kernel,
    buffers: &[Vec<f32>],
    scalars: &[f32],
    range: Range<usize>,
) -> (Vec<Vec<f32>>, Vec<f64>) {
    let mut out = buffers.to_vec();
    let mut accs = identities(kernel);
    let mut views: Vec<&mut [f32]> = out.iter_mut().map(|b| b.as_mut_slice()).collect();
    compiled
        .run(&mut views, scalars, &mut accs, range)
        .expect("arguments fit");
    (out, accs)
}

/// The reference result: `kernel::run` (with min/max ties pinned) when the
/// kernel is exact, the approximation model otherwise. Also the magnitudes.
fn run_reference(
    kernel: &Kernel,
    buffers: &[Vec<f32>],
    scalars: &[f32],
    range: Range<usize>,
) -> (Vec<Vec<f32>>, Vec<f64>, Vec<f64>) {
    let mut model = buffers.to_vec();
    let mut model_accs = identities(kernel);
    let magnitude = run_model(kernel, &mut model, scalars, &mut model_accs, range.clone());
    if approximates(kernel) {
        return (model, model_accs, magnitude);
    }
    let pinned = pin_min_max(kernel);
    let mut out = buffers.to_vec();
    let mut accs = identities(kernel);
    let mut views: Vec<&mut [f32]> = out.iter_mut().map(|b| b.as_mut_slice()).collect();
    kernel::run(&pinned, &mut views, scalars, &mut accs, range);
    (out, accs, magnitude)
}

fn compare(
    kernel: &Kernel,
    compiled: &NativeKernel,
    buffers: &[Vec<f32>],
    scalars: &[f32],
    range: Range<usize>,
) -> Result<(), String> {
    let (got, got_accs) = run_jit(compiled, kernel, buffers, scalars, range.clone());
    let (want, want_accs, magnitude) = run_reference(kernel, buffers, scalars, range.clone());
    for (b, (g, w)) in got.iter().zip(&want).enumerate() {
        for (i, (x, y)) in g.iter().zip(w).enumerate() {
            if !same(*x, *y) {
                let inputs: Vec<f32> = buffers.iter().map(|buf| buf[i]).collect();
                return Err(format!(
                    "buffer {b}[{i}] (range {range:?}): jit {x:e} ({:#x}), reference {y:e} ({:#x}); \
                     inputs {inputs:?}, scalars {scalars:?}",
                    x.to_bits(),
                    y.to_bits()
                ));
            }
        }
    }
    accumulators_agree(kernel, &got_accs, &want_accs, &magnitude)
}

/// Every length of [`LENGTHS`], at offsets 0 and 3, with fresh inputs.
fn check_all_lengths(jit: &mut Jit, kernel: &Kernel, seed: u64) {
    let compiled = jit.compile(kernel).expect("compiles");
    let mut rng = Rng(seed | 1);
    for &len in &LENGTHS {
        for start in [0, 3] {
            let range = start..start + len;
            let (buffers, scalars) = inputs(kernel, &mut rng, &range);
            if let Err(e) = compare(kernel, &compiled, &buffers, &scalars, range) {
                panic!("{e}\nkernel: {kernel:?}");
            }
        }
    }
}

#[test]
fn adam_matches_reference() {
    let mut jit = Jit::new().unwrap();
    let kernel = adam();
    check_all_lengths(&mut jit, &kernel, 1);
    // Realistic values too: a few steps in a row, bit-exact each time.
    let compiled = jit.compile(&kernel).unwrap();
    let mut rng = Rng(7);
    let n = 1001;
    let mut state: Vec<Vec<f32>> = vec![
        (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect(),
        vec![0.0; n],
        vec![0.0; n],
        vec![0.0; n],
    ];
    let mut reference = state.clone();
    let initial = state[0].clone();
    for t in 1..=5 {
        let grad: Vec<f32> = (0..n).map(|_| rng.uniform(-0.1, 0.1)).collect();
        state[1].clone_from(&grad);
        reference[1].clone_from(&grad);
        let scalars = adam_scalars(t);
        let mut views: Vec<&mut [f32]> = state.iter_mut().map(|b| b.as_mut_slice()).collect();
        compiled.run(&mut views, &scalars, &mut [], 2..n).unwrap();
        let mut views: Vec<&mut [f32]> = reference.iter_mut().map(|b| b.as_mut_slice()).collect();
        kernel::run(&kernel, &mut views, &scalars, &mut [], 2..n);
        for (a, b) in state.iter().zip(&reference) {
            assert!(a.iter().zip(b).all(|(x, y)| same(*x, *y)), "step {t}");
        }
    }
    assert!(state[0][2..].iter().zip(&initial[2..]).all(|(a, b)| a != b));
    assert_eq!(state[0][..2], initial[..2]);
}

#[test]
fn lion_matches_reference() {
    let mut jit = Jit::new().unwrap();
    check_all_lengths(&mut jit, &lion(), 2);
}

#[test]
fn reductions_match_reference() {
    let mut jit = Jit::new().unwrap();
    check_all_lengths(&mut jit, &reductions(), 3);
    // Accumulators combine into the caller's values.
    let kernel = reductions();
    let compiled = jit.compile(&kernel).unwrap();
    let mut g: Vec<f32> = (0..100).map(|i| i as f32 - 50.0).collect();
    let mut out = vec![0.0f32; 100];
    let mut accs = [1.0, 1000.0, -1000.0, 0.5, 0.0];
    compiled
        .run(&mut [&mut g, &mut out], &[10.0], &mut accs, 0..100)
        .unwrap();
    let squares: f64 = (0..100).map(|i| (i as f64 - 50.0).powi(2)).sum();
    assert_eq!(accs[0], 1.0 + squares);
    assert_eq!(accs[1], 1000.0);
    assert_eq!(accs[2], -1000.0);
    assert_eq!(accs[3], 0.5 + (1..50).sum::<i32>() as f64);
    assert_eq!(accs[4], 0.0);
    assert_eq!(out[0], -10.0);
    assert_eq!(out[99], 10.0);
    assert_eq!(out[45], -5.0);
}

#[test]
fn reduction_order_depends_only_on_the_range() {
    let mut jit = Jit::new().unwrap();
    let mut k = KernelBuilder::new(1, 0);
    let x = k.load(0);
    k.acc(ReduceOp::Sum, x);
    let compiled = jit.compile(&k.kernel).unwrap();
    let mut rng = Rng(99);
    let mut data: Vec<f32> = (0..1003)
        .map(|_| rng.uniform(-1.0, 1.0) * 10f32.powi(rng.below(16) as i32 - 8))
        .collect();
    let mut first = [0.0];
    compiled
        .run(&mut [&mut data], &[], &mut first, 1..1002)
        .unwrap();
    for _ in 0..3 {
        let mut again = [0.0];
        compiled
            .run(&mut [&mut data], &[], &mut again, 1..1002)
            .unwrap();
        assert_eq!(first[0].to_bits(), again[0].to_bits());
    }
}

#[test]
fn transcendentals_within_bounds_of_reference() {
    let mut jit = Jit::new().unwrap();
    let kernel = transcendentals();
    let compiled = jit.compile(&kernel).unwrap();
    let mut rng = Rng(5);
    for &len in &LENGTHS {
        let range = 1..1 + len;
        let (buffers, scalars) = inputs(&kernel, &mut rng, &range);
        let (got, _) = run_jit(&compiled, &kernel, &buffers, &scalars, range.clone());
        // Bit-exact with the model...
        let (model, _, _) = run_reference(&kernel, &buffers, &scalars, range.clone());
        assert!(got
            .iter()
            .flatten()
            .zip(model.iter().flatten())
            .all(|(a, b)| same(*a, *b)));
        // ...and within the documented bounds of the reference interpreter.
        let mut want = buffers.clone();
        let mut views: Vec<&mut [f32]> = want.iter_mut().map(|b| b.as_mut_slice()).collect();
        kernel::run(&kernel, &mut views, &scalars, &mut [], range.clone());
        for i in range {
            let x = buffers[0][i];
            for b in 2..kernel.buffers as usize {
                let (g, w) = (got[b][i], want[b][i]);
                if b == 6 && x.abs() > optc_compiler::approx::COS_ACCURATE_LIMIT {
                    assert!(g.is_nan() || g.abs() <= 1.0);
                    continue;
                }
                assert!(
                    ulps(g, w) <= 1,
                    "buffer {b} at x = {x:e} (y = {:e}): jit {g:e}, reference {w:e}",
                    buffers[1][i]
                );
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_position() {
    // The same element gives the same bits in the vector loop and the tail.
    let mut jit = Jit::new().unwrap();
    let mut kernel = transcendentals();
    let mut k = KernelBuilder {
        kernel: std::mem::take(&mut kernel),
    };
    let x = 0;
    let s = k.un(UnaryOp::Sign, x);
    let q = k.bin(BinaryOp::Max, x, s);
    let r = k.un(UnaryOp::Rsqrt, q);
    let extra = k.kernel.buffers;
    k.kernel.buffers += 1;
    k.kernel.storage.push(Storage::F32);
    k.store(extra, r);
    let kernel = k.kernel;
    let compiled = jit.compile(&kernel).unwrap();
    let mut rng = Rng(11);
    let n = 40;
    let buffers: Vec<Vec<f32>> = (0..kernel.buffers)
        .map(|_| (0..n).map(|_| rng.interesting()).collect())
        .collect();
    let (whole, _) = run_jit(&compiled, &kernel, &buffers, &[], 0..n);
    for split in [1, 3, 5, 8, 13, 21] {
        let mut parts = buffers.clone();
        for range in [0..split, split..n] {
            let mut views: Vec<&mut [f32]> = parts.iter_mut().map(|b| b.as_mut_slice()).collect();
            compiled.run(&mut views, &[], &mut [], range).unwrap();
        }
        for (a, b) in whole.iter().zip(&parts) {
            assert!(
                a.iter().zip(b).all(|(x, y)| same(*x, *y)),
                "split at {split}"
            );
        }
    }
}

#[test]
fn min_max_follow_f32_except_signed_zero_ties() {
    let mut jit = Jit::new().unwrap();
    let mut k = KernelBuilder::new(4, 0);
    let a = k.load(0);
    let b = k.load(1);
    let mx = k.bin(BinaryOp::Max, a, b);
    let mn = k.bin(BinaryOp::Min, a, b);
    k.store(2, mx);
    k.store(3, mn);
    let compiled = jit.compile(&k.kernel).unwrap();
    let specials = SPECIALS;
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for &x in &specials {
        for &y in &specials {
            xs.push(x);
            ys.push(y);
        }
    }
    let n = xs.len();
    let (mut mx, mut mn) = (vec![0.0; n], vec![0.0; n]);
    compiled
        .run(
            &mut [&mut xs, &mut ys, &mut mx, &mut mn],
            &[],
            &mut [],
            0..n,
        )
        .unwrap();
    for i in 0..n {
        let (x, y) = (xs[i], ys[i]);
        if x == 0.0 && y == 0.0 {
            assert_eq!(mx[i].to_bits(), x.to_bits());
            assert_eq!(mn[i].to_bits(), x.to_bits());
        } else {
            assert!(same(mx[i], x.max(y)), "max({x}, {y}) = {}", mx[i]);
            assert!(same(mn[i], x.min(y)), "min({x}, {y}) = {}", mn[i]);
        }
    }
}

#[test]
fn kernels_outlive_the_jit_and_run_on_threads() {
    let kernel = adam();
    let compiled = {
        let mut jit = Jit::new().unwrap();
        jit.compile(&kernel).unwrap()
    };
    let n = 10_007;
    let mut rng = Rng(3);
    let init: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..n).map(|_| rng.uniform(-1.0, 1.0).abs()).collect())
        .collect();
    let scalars = adam_scalars(3);
    let mut threaded = init.clone();
    {
        let [p, g, m, v] = &mut threaded[..] else {
            unreachable!()
        };
        let chunk = 1000;
        std::thread::scope(|s| {
            let parts = p
                .chunks_mut(chunk)
                .zip(g.chunks_mut(chunk))
                .zip(m.chunks_mut(chunk))
                .zip(v.chunks_mut(chunk));
            for (((p, g), m), v) in parts {
                let compiled = &compiled;
                let scalars = &scalars;
                s.spawn(move || {
                    let len = p.len();
                    compiled
                        .run(&mut [p, g, m, v], scalars, &mut [], 0..len)
                        .unwrap();
                });
            }
        });
    }
    let mut reference = init.clone();
    let mut views: Vec<&mut [f32]> = reference.iter_mut().map(|b| b.as_mut_slice()).collect();
    kernel::run(&kernel, &mut views, &scalars, &mut [], 0..n);
    assert!(threaded
        .iter()
        .flatten()
        .zip(reference.iter().flatten())
        .all(|(a, b)| same(*a, *b)));
}

#[test]
fn kernels_without_effects_and_dead_ops() {
    let mut jit = Jit::new().unwrap();
    // No stores, no accumulators: nothing happens.
    let mut k = KernelBuilder::new(1, 1);
    let x = k.load(0);
    let s = k.scalar(0);
    k.bin(BinaryOp::Add, x, s);
    let compiled = jit.compile(&k.kernel).unwrap();
    let mut data = vec![1.0f32; 9];
    compiled
        .run(&mut [&mut data], &[2.0], &mut [], 0..9)
        .unwrap();
    assert_eq!(data, vec![1.0; 9]);
    // Empty kernel, zero buffers.
    let compiled = jit.compile(&Kernel::default()).unwrap();
    compiled.run(&mut [], &[], &mut [], 0..0).unwrap();
    // Only invariant values: a constant store and a scalar accumulator.
    let mut k = KernelBuilder::new(1, 1);
    let s = k.scalar(0);
    let c = k.constant(2.5);
    let e = k.un(UnaryOp::Exp, s);
    let sum = k.bin(BinaryOp::Add, c, e);
    k.store(0, sum);
    k.acc(ReduceOp::Sum, s);
    k.acc(ReduceOp::Max, e);
    check_all_lengths(&mut jit, &k.kernel, 4);
    let compiled = jit.compile(&k.kernel).unwrap();
    let mut data = vec![0.0f32; 11];
    let mut accs = [0.0, f64::NEG_INFINITY];
    compiled
        .run(&mut [&mut data], &[0.0], &mut accs, 1..10)
        .unwrap();
    assert_eq!(data[0], 0.0);
    assert_eq!(data[10], 0.0);
    assert!(data[1..10].iter().all(|&x| x == 3.5));
    assert_eq!(accs, [0.0, 1.0]);
}

// ---- random kernels -------------------------------------------------------

proptest! {
    #![proptest_config(random_kernel_config())]

    #[test]
    fn random_exact_kernels_match_reference(
        kernel in kernels(false),
        seed in any::<u64>(),
    ) {
        random_case(&kernel, seed, inputs, compare)?;
    }

    #[test]
    fn random_kernels_match_the_approximation_model(
        kernel in kernels(true),
        seed in any::<u64>(),
    ) {
        random_case(&kernel, seed, inputs, compare)?;
    }
}
