//! Compile-time and throughput measurements for the report (not a test):
//! `cargo run --release -p optc-cranelift --example jit_bench`.

use optc_compiler::ir::{BinaryOp, UnaryOp};
use optc_compiler::kernel::{self, bf16, BufferMut, Kernel, Op, Rounding, Storage};
use optc_cranelift::Jit;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Adam with decoupled weight decay (27 ops): buffers p, g, m, v.
fn adam() -> Kernel {
    use BinaryOp::*;
    let mut ops = Vec::new();
    let mut push = |op: Op| {
        ops.push(op);
        (ops.len() - 1) as u32
    };
    let p = push(Op::Load(0));
    let g = push(Op::Load(1));
    let m = push(Op::Load(2));
    let v = push(Op::Load(3));
    let [lr, b1, b2, eps, bc1, bc2, wd] = [0, 1, 2, 3, 4, 5, 6].map(|k| push(Op::Scalar(k)));
    let one = push(Op::Const(1.0));
    let omb1 = push(Op::Binary(Sub, one, b1));
    let omb2 = push(Op::Binary(Sub, one, b2));
    let b1m = push(Op::Binary(Mul, b1, m));
    let g1 = push(Op::Binary(Mul, omb1, g));
    let m2 = push(Op::Binary(Add, b1m, g1));
    let b2v = push(Op::Binary(Mul, b2, v));
    let gg = push(Op::Binary(Mul, g, g));
    let g2 = push(Op::Binary(Mul, omb2, gg));
    let v2 = push(Op::Binary(Add, b2v, g2));
    let mhat = push(Op::Binary(Div, m2, bc1));
    let vhat = push(Op::Binary(Div, v2, bc2));
    let root = push(Op::Unary(UnaryOp::Sqrt, vhat));
    let den = push(Op::Binary(Add, root, eps));
    let step = push(Op::Binary(Div, mhat, den));
    let decay = push(Op::Binary(Mul, wd, p));
    let upd = push(Op::Binary(Add, step, decay));
    let scaled = push(Op::Binary(Mul, lr, upd));
    let p2 = push(Op::Binary(Sub, p, scaled));
    Kernel {
        ops,
        stores: vec![(0, p2), (2, m2), (3, v2)],
        accumulators: vec![],
        buffers: 4,
        scalars: 7,
        storage: vec![Storage::F32; 4],
        rounding: Rounding::NearestEven,
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// y = tanh(x) * exp(-x * x): two transcendentals per element.
fn transcendental() -> Kernel {
    Kernel {
        ops: vec![
            Op::Load(0),
            Op::Unary(UnaryOp::Tanh, 0),
            Op::Binary(BinaryOp::Mul, 0, 0),
            Op::Unary(UnaryOp::Neg, 2),
            Op::Unary(UnaryOp::Exp, 3),
            Op::Binary(BinaryOp::Mul, 1, 4),
        ],
        stores: vec![(1, 5)],
        accumulators: vec![],
        buffers: 2,
        scalars: 0,
        storage: vec![Storage::F32; 2],
        rounding: Rounding::NearestEven,
    }
}

fn compile_times(jit: &mut Jit, kernel: &Kernel, name: &str) {
    for _ in 0..50 {
        black_box(jit.compile(kernel).unwrap());
    }
    let mut times: Vec<Duration> = (0..1000)
        .map(|_| {
            let t = Instant::now();
            black_box(jit.compile(kernel).unwrap());
            t.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "compile {name} ({} ops): median {:?}, p10 {:?}, p90 {:?} over 1000 compiles",
        kernel.ops.len(),
        times[500],
        times[100],
        times[900]
    );
}

fn main() {
    let adam = adam();
    let trans = transcendental();
    let mut jit = Jit::new().unwrap();
    compile_times(&mut jit, &adam, "Adam");
    compile_times(&mut jit, &trans, "tanh(x)*exp(-x*x)");

    // 16M elements, single thread: memory bound.
    let n: usize = 16 << 20;
    let mut state: Vec<Vec<f32>> = (0..4)
        .map(|b| {
            (0..n)
                .map(|i| ((i * 7 + b * 13) % 1000) as f32 * 1e-3)
                .collect()
        })
        .collect();
    let scalars = [1e-3f32, 0.9, 0.999, 1e-8, 0.1, 0.001, 0.01];
    let compiled = jit.compile(&adam).unwrap();
    let mut jit_times = Vec::new();
    let mut copy_times = Vec::new();
    for _ in 0..7 {
        let mut views: Vec<&mut [f32]> = state.iter_mut().map(|b| b.as_mut_slice()).collect();
        let t = Instant::now();
        compiled.run(&mut views, &scalars, &mut [], 0..n).unwrap();
        jit_times.push(t.elapsed());
        // The floor: read p, g, m, v and write p, m, v, in plain Rust.
        let [p, g, m, v] = &mut state[..] else {
            unreachable!()
        };
        let t = Instant::now();
        for (((p, g), m), v) in p
            .iter_mut()
            .zip(g.iter())
            .zip(m.iter_mut())
            .zip(v.iter_mut())
        {
            *p += *g;
            *m += *g;
            *v += *g;
        }
        black_box(&state);
        copy_times.push(t.elapsed());
    }
    let per = |d: Duration, n: usize| d.as_secs_f64() * 1e9 / n as f64;
    let (jt, ct) = (median(jit_times), median(copy_times));
    println!(
        "Adam, {n} elements (median of 7): JIT {:.3} ns/element ({:.1} GB/s), \
         plain Rust read-4/write-3 loop {:.3} ns/element ({:.1} GB/s): ratio {:.2}",
        per(jt, n),
        28.0 * n as f64 / jt.as_secs_f64() / 1e9,
        per(ct, n),
        28.0 * n as f64 / ct.as_secs_f64() / 1e9,
        per(jt, n) / per(ct, n),
    );
    let mut views: Vec<&mut [f32]> = state.iter_mut().map(|b| b.as_mut_slice()).collect();
    let t = Instant::now();
    kernel::run(&adam, &mut views, &scalars, &mut [], 0..n);
    println!(
        "Adam, reference interpreter: {:.1} ns/element",
        per(t.elapsed(), n)
    );

    // In cache (8K elements, best of 2000 runs): compute bound.
    let small = 8192;
    let nearest = with_bf16_moments(&adam, Rounding::NearestEven);
    let stochastic = with_bf16_moments(&adam, Rounding::Stochastic { seed_scalar: 7 });
    let seeded: Vec<f32> = scalars.iter().copied().chain([f32::from_bits(7)]).collect();
    let bf16_adams = [
        ("Adam, bf16 m v, nearest even", &nearest, &scalars[..]),
        ("Adam, bf16 m v, stochastic", &stochastic, &seeded[..]),
    ];
    for (name, k, s) in [
        ("Adam", &adam, &scalars[..]),
        ("tanh(x)*exp(-x*x)", &trans, &[][..]),
    ]
    .into_iter()
    .chain(bf16_adams)
    {
        let compiled = jit.compile(k).unwrap();
        let best = timings(&compiled, k, s, small, 2000)
            .into_iter()
            .min()
            .unwrap();
        println!(
            "{name}, {small} elements in cache (best of 2000): {:.3} ns/element",
            per(best, small)
        );
    }
    // Memory bound again, with the moments in bf16 (20 bytes per element).
    for (name, k, s) in bf16_adams {
        let compiled = jit.compile(k).unwrap();
        let t = median(timings(&compiled, k, s, n, 7));
        println!(
            "{name}, {n} elements (median of 7): {:.3} ns/element ({:.1} GB/s)",
            per(t, n),
            k.bytes_per_element() as f64 * n as f64 / t.as_secs_f64() / 1e9,
        );
    }
}

/// `kernel` with buffers 2 and 3 (Adam's m and v) stored as bf16.
fn with_bf16_moments(kernel: &Kernel, rounding: Rounding) -> Kernel {
    let mut k = kernel.clone();
    k.storage[2] = Storage::Bf16;
    k.storage[3] = Storage::Bf16;
    k.rounding = rounding;
    if let Rounding::Stochastic { seed_scalar } = rounding {
        k.scalars = k.scalars.max(seed_scalar + 1);
    }
    k
}

/// A buffer's elements in its storage type.
enum Elements {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

/// Times `runs` calls of `compiled` over `n` elements of buffers in the
/// kernel's storage types, filled with small positive values.
fn timings(
    compiled: &optc_compiler::backend::NativeKernel,
    kernel: &Kernel,
    scalars: &[f32],
    n: usize,
    runs: usize,
) -> Vec<Duration> {
    let mut buffers: Vec<Elements> = kernel
        .storage
        .iter()
        .enumerate()
        .map(|(b, storage)| {
            let values = (0..n).map(|i| ((i * 7 + b * 3) % 100) as f32 * 0.01 + 0.001);
            match storage {
                Storage::F32 => Elements::F32(values.collect()),
                Storage::Bf16 => Elements::Bf16(values.map(bf16::round_nearest_even).collect()),
            }
        })
        .collect();
    (0..runs)
        .map(|_| {
            let mut views: Vec<BufferMut> = buffers
                .iter_mut()
                .map(|b| match b {
                    Elements::F32(v) => BufferMut::F32(v),
                    Elements::Bf16(v) => BufferMut::Bf16(v),
                })
                .collect();
            let t = Instant::now();
            compiled
                .run_typed(&mut views, scalars, &mut [], 0..n)
                .unwrap();
            t.elapsed()
        })
        .collect()
}
