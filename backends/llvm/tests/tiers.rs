//! The LLVM tier against the Cranelift tier, bit for bit: the same kernels
//! (hand-written and random, f32 and bf16 buffers, both roundings, every
//! approximated op, accumulators) on the same inputs, at every block width
//! (4, 8 and 16 lanes per vector), every tail length and offset ranges.
//! Cranelift's kernels are themselves tested against the reference and the
//! approximation models (`backends/cranelift/tests`), so agreement here
//! carries those guarantees over.

#[path = "../../cranelift/tests/common/mod.rs"]
mod common;

use common::Rng;
use common::*;
use optc_compiler::kernel::{bf16, Kernel, Rounding, Storage};
use optc_cranelift::Jit;
use optc_llvm::Llvm;
use proptest::prelude::*;
use std::ops::Range;

/// Random contents for `kernel`'s buffers, holding `range` and a margin.
fn inputs(kernel: &Kernel, rng: &mut Rng, range: &Range<usize>) -> (Vec<Data>, Vec<f32>) {
    let len = range.end + rng.below(3) as usize;
    let buffers = kernel
        .storage
        .iter()
        .map(|s| match s {
            Storage::F32 => Data::F32((0..len).map(|_| rng.interesting()).collect()),
            Storage::Bf16 => Data::Bf16(
                (0..len)
                    .map(|_| bf16::round_nearest_even(rng.interesting()))
                    .collect(),
            ),
        })
        .collect();
    let mut scalars: Vec<f32> = (0..kernel.scalars).map(|_| rng.interesting()).collect();
    if let Rounding::Stochastic { seed_scalar } = kernel.rounding {
        scalars[seed_scalar as usize] = f32::from_bits(rng.next() as u32);
    }
    (buffers, scalars)
}

/// Bit equality, except that any NaN equals any NaN: which NaN an operation
/// on two NaNs returns depends on operand order, which LLVM may commute.
fn same_bits(a: &[Data], b: &[Data]) -> Result<(), String> {
    match first_mismatch(a, b) {
        None => Ok(()),
        Some((k, i)) => Err(format!(
            "buffer {k} differs at element {i}: {:?} vs {:?}",
            a[k], b[k]
        )),
    }
}

fn same_accumulators(a: &[f64], b: &[f64]) -> Result<(), String> {
    let equal = a
        .iter()
        .zip(b)
        .all(|(&x, &y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
    if equal {
        Ok(())
    } else {
        Err(format!("accumulators differ: {a:?} vs {b:?}"))
    }
}

/// Compiles `kernel` on both tiers (LLVM at every width) and compares them
/// on every length of [`LENGTHS`] plus a few long ones, at random offsets.
fn tiers_agree(kernel: &Kernel, seed: u64) -> Result<(), String> {
    let cranelift = Jit::new()
        .and_then(|mut jit| jit.compile(kernel))
        .map_err(|e| e.to_string())?;
    let mut rng = Rng(seed | 1);
    for lanes in [4, 8, 16] {
        let llvm = Llvm::with_lanes(lanes)
            .and_then(|llvm| llvm.compile(kernel))
            .map_err(|e| e.to_string())?;
        for len in LENGTHS.into_iter().chain([31, 32, 33, 100]) {
            let start = rng.below(6) as usize;
            let range = start..start + len;
            let (data, scalars) = inputs(kernel, &mut rng, &range);
            let (want, want_accs) =
                run_typed_copy(&cranelift, kernel, &data, &scalars, range.clone());
            let (got, got_accs) = run_typed_copy(&llvm, kernel, &data, &scalars, range.clone());
            let context = |e: String| format!("{lanes} lanes, range {range:?}: {e}");
            same_bits(&got, &want).map_err(context)?;
            same_accumulators(&got_accs, &want_accs).map_err(context)?;
        }
    }
    Ok(())
}

#[test]
fn hand_written_kernels_agree() {
    for (name, kernel) in [
        ("adam", adam()),
        ("lion", lion()),
        ("reductions", reductions()),
        ("transcendentals", transcendentals()),
    ] {
        for seed in 0..4 {
            if let Err(e) = tiers_agree(&kernel, seed) {
                panic!("{name}: {e}");
            }
        }
    }
}

#[test]
fn bf16_kernels_agree_on_every_pattern() {
    // Adam with bf16 moments under both roundings, over every bf16 input
    // pattern of the gradient and 64K patterns of each moment.
    for rounding in [
        Rounding::NearestEven,
        Rounding::Stochastic { seed_scalar: 7 },
    ] {
        let mut kernel = adam();
        kernel.storage[2] = Storage::Bf16;
        kernel.storage[3] = Storage::Bf16;
        kernel.rounding = rounding;
        if rounding != Rounding::NearestEven {
            kernel.scalars += 1;
        }
        let n = 1 << 16;
        let mut rng = Rng(99);
        let patterns: Vec<u16> = (0..n as u32).map(|b| b as u16).collect();
        let mut scalars = adam_scalars(3);
        scalars.resize(kernel.scalars as usize, f32::from_bits(0x1234_5678));
        let buffers = vec![
            Data::F32((0..n).map(|_| rng.interesting()).collect()),
            Data::F32(patterns.iter().map(|&p| bf16::widen(p)).collect()),
            Data::Bf16(patterns.iter().rev().copied().collect()),
            Data::Bf16(patterns.clone()),
        ];
        let cranelift = Jit::new().unwrap().compile(&kernel).unwrap();
        let llvm = Llvm::new().unwrap().compile(&kernel).unwrap();
        let (want, want_accs) = run_typed_copy(&cranelift, &kernel, &buffers, &scalars, 0..n);
        let (got, got_accs) = run_typed_copy(&llvm, &kernel, &buffers, &scalars, 0..n);
        same_bits(&got, &want).unwrap();
        same_accumulators(&got_accs, &want_accs).unwrap();
    }
}

#[test]
fn ill_formed_kernels_are_errors() {
    let llvm = Llvm::new().unwrap();
    let mut kernel = adam();
    kernel.storage.pop();
    assert!(matches!(
        llvm.compile(&kernel),
        Err(optc_llvm::LlvmError::InvalidKernel(_))
    ));
    assert!(Llvm::with_lanes(3).is_err());
}

proptest! {
    #![proptest_config(random_kernel_config())]

    #[test]
    fn random_kernels_agree(kernel in mixed_kernels(true), seed in any::<u64>()) {
        tiers_agree(&kernel, seed).map_err(TestCaseError::fail)?;
    }
}
