//! Malformed kernels and ill-fitting arguments are errors, never panics.

mod common;

use common::*;
use optc_compiler::backend::BadArguments;
use optc_compiler::ir::{BinaryOp, ReduceOp, UnaryOp};
use optc_compiler::kernel::{Kernel, Op, Rounding, Storage};
use optc_cranelift::{Jit, JitError};

fn kernel(ops: Vec<Op>, buffers: u32, scalars: u32) -> Kernel {
    Kernel {
        ops,
        stores: vec![],
        accumulators: vec![],
        buffers,
        scalars,
        storage: vec![Storage::F32; buffers as usize],
        rounding: Rounding::NearestEven,
    }
}

fn invalid(jit: &mut Jit, k: &Kernel) {
    match jit.compile(k) {
        Err(JitError::InvalidKernel(_)) => {}
        other => panic!("expected InvalidKernel for {k:?}, got {other:?}"),
    }
}

#[test]
fn malformed_kernels_are_rejected() {
    let mut jit = Jit::new().unwrap();
    // Operands must refer to earlier ops.
    invalid(&mut jit, &kernel(vec![Op::Unary(UnaryOp::Neg, 0)], 0, 0));
    invalid(
        &mut jit,
        &kernel(vec![Op::Const(1.0), Op::Binary(BinaryOp::Add, 0, 2)], 0, 0),
    );
    invalid(
        &mut jit,
        &kernel(vec![Op::Const(1.0), Op::Select(0, 0, 1)], 0, 0),
    );
    invalid(
        &mut jit,
        &kernel(vec![Op::Const(1.0), Op::Lerp(0, 5, 0)], 0, 0),
    );
    invalid(
        &mut jit,
        &kernel(
            vec![Op::Const(1.0), Op::Unary(UnaryOp::Exp, u32::MAX)],
            0,
            0,
        ),
    );
    // Buffer and scalar indices within the counts.
    invalid(&mut jit, &kernel(vec![Op::Load(1)], 1, 0));
    invalid(&mut jit, &kernel(vec![Op::Load(0)], 0, 0));
    invalid(&mut jit, &kernel(vec![Op::Scalar(2)], 0, 2));
    // Stores: existing buffer and op, each buffer once.
    let mut k = kernel(vec![Op::Load(0)], 2, 0);
    k.stores = vec![(2, 0)];
    invalid(&mut jit, &k);
    k.stores = vec![(1, 1)];
    invalid(&mut jit, &k);
    k.stores = vec![(1, 0), (1, 0)];
    invalid(&mut jit, &k);
    // Accumulators over existing ops.
    let mut k = kernel(vec![Op::Load(0)], 1, 0);
    k.accumulators = vec![(ReduceOp::Sum, 1)];
    invalid(&mut jit, &k);
    // An error leaves the JIT usable.
    k.accumulators = vec![(ReduceOp::Sum, 0)];
    let compiled = jit.compile(&k).unwrap();
    let mut acc = [0.0];
    compiled
        .run(&mut [&mut [1.0, 2.0]], &[], &mut acc, 0..2)
        .unwrap();
    assert_eq!(acc, [3.0]);
}

#[test]
fn huge_indices_are_fine_when_in_range() {
    // Large counts are not malformed; only indices beyond them are.
    let mut jit = Jit::new().unwrap();
    let mut k = kernel(vec![Op::Scalar(1000), Op::Load(999)], 1000, 1001);
    k.stores = vec![(998, 0)];
    k.accumulators = vec![(ReduceOp::Max, 1)];
    let compiled = jit.compile(&k).unwrap();
    assert_eq!(compiled.buffers(), 1000);
    assert_eq!(compiled.scalars(), 1001);
    assert_eq!(compiled.accumulators(), 1);
    let mut data: Vec<Vec<f32>> = (0..1000).map(|b| vec![b as f32; 5]).collect();
    let mut views: Vec<&mut [f32]> = data.iter_mut().map(|b| b.as_mut_slice()).collect();
    let scalars: Vec<f32> = (0..1001).map(|k| k as f32).collect();
    let mut acc = [f64::NEG_INFINITY];
    compiled.run(&mut views, &scalars, &mut acc, 1..4).unwrap();
    assert_eq!(acc, [999.0]);
    assert_eq!(data[998], vec![998.0, 1000.0, 1000.0, 1000.0, 998.0]);
    // Counts near u32::MAX compile without allocating by them.
    let last = u32::MAX - 1;
    let mut k = kernel(vec![Op::Scalar(last), Op::Load(last)], u32::MAX, u32::MAX);
    k.stores = vec![(last, 0)];
    k.accumulators = vec![(ReduceOp::Sum, 1)];
    let compiled = jit.compile(&k).unwrap();
    assert!(matches!(
        compiled.run(&mut [], &[], &mut [0.0], 0..0),
        Err(BadArguments(_))
    ));
}

#[test]
fn ill_fitting_arguments_are_rejected() {
    let mut jit = Jit::new().unwrap();
    let compiled = jit.compile(&reductions()).unwrap(); // 2 buffers, 1 scalar, 5 accumulators
    let bad = |r: Result<(), BadArguments>| match r {
        Err(BadArguments(_)) => {}
        other => panic!("expected BadArguments, got {other:?}"),
    };
    let mut a = vec![0.0f32; 10];
    let mut b = vec![0.0f32; 10];
    let mut short = vec![0.0f32; 4];
    let mut accs = [0.0; 5];
    bad(compiled.run(&mut [&mut a], &[1.0], &mut accs, 0..10));
    bad(compiled.run(&mut [&mut a, &mut b, &mut short], &[1.0], &mut accs, 0..4));
    bad(compiled.run(&mut [&mut a, &mut b], &[], &mut accs, 0..10));
    bad(compiled.run(&mut [&mut a, &mut b], &[1.0, 2.0], &mut accs, 0..10));
    bad(compiled.run(&mut [&mut a, &mut b], &[1.0], &mut accs[..4], 0..10));
    bad(compiled.run(&mut [&mut a, &mut b], &[1.0], &mut [0.0; 6], 0..10));
    bad(compiled.run(&mut [&mut a, &mut b], &[1.0], &mut accs, 0..11));
    bad(compiled.run(&mut [&mut a, &mut short], &[1.0], &mut accs, 0..5));
    #[allow(clippy::reversed_empty_ranges)]
    bad(compiled.run(&mut [&mut a, &mut b], &[1.0], &mut accs, 6..5));
    bad(compiled.run(
        &mut [&mut a, &mut b],
        &[1.0],
        &mut accs,
        usize::MAX..usize::MAX,
    ));
    // SAFETY: the counts are checked before anything is dereferenced.
    bad(unsafe { compiled.run_raw(&[a.as_mut_ptr()], &[1.0], &mut accs, 0..1) });
    // Nothing ran.
    assert_eq!(accs, [0.0; 5]);
    assert!(a.iter().chain(&b).all(|&x| x == 0.0));
    // Fitting arguments, including an empty range at the very end, work.
    compiled
        .run(&mut [&mut a, &mut b], &[1.0], &mut accs, 10..10)
        .unwrap();
    compiled
        .run(&mut [&mut a, &mut short], &[1.0], &mut accs, 2..4)
        .unwrap();
}

#[test]
fn errors_display() {
    let mut jit = Jit::new().unwrap();
    let err = jit.compile(&kernel(vec![Op::Load(3)], 1, 0)).unwrap_err();
    assert!(err.to_string().contains("buffer 3"), "{err}");
    let _: &dyn std::error::Error = &err;
}
