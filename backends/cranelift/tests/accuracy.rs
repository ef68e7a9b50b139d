//! Accuracy of the approximated functions against Rust's `f32` functions
//! (the host libm), over dense sweeps of f32 bit patterns; asserts the bounds
//! documented in the crate docs, and that the compiled code equals the
//! scalar model in `optc_compiler::approx` bit for bit.

mod common;

use common::*;
use optc_compiler::approx;
use optc_compiler::backend::NativeKernel;
use optc_compiler::ir::{BinaryOp, UnaryOp};
use optc_cranelift::Jit;

/// Bit patterns apart between sweep points: ~16.7M points in release
/// builds, ~1M in debug builds (both over every binade, both signs).
const STRIDE: u32 = if cfg!(debug_assertions) { 4099 } else { 257 };
const CHUNK: usize = 1 << 20;

fn unary_kernel(jit: &mut Jit, op: UnaryOp) -> NativeKernel {
    let mut k = KernelBuilder::new(2, 0);
    let x = k.load(0);
    let y = k.un(op, x);
    k.store(1, y);
    jit.compile(&k.kernel).unwrap()
}

struct Worst {
    ulps: u64,
    at: (f32, f32),
    got: f32,
    want: f32,
    points: usize,
}

impl Worst {
    fn new() -> Self {
        Worst {
            ulps: 0,
            at: (0.0, 0.0),
            got: 0.0,
            want: 0.0,
            points: 0,
        }
    }
    fn see(&mut self, at: (f32, f32), got: f32, want: f32) {
        self.points += 1;
        let u = ulps(got, want);
        if u > self.ulps {
            *self = Worst {
                ulps: u,
                at,
                got,
                want,
                points: self.points,
            };
        }
    }
    fn check(&self, name: &str, bound: u64) {
        println!(
            "{name}: max {} ulp over {} points (at {:?}: got {:e}, libm {:e})",
            self.ulps, self.points, self.at, self.got, self.want
        );
        assert!(
            self.ulps <= bound,
            "{name}: {} ulp at {:?}: got {:e} ({:#x}), libm {:e} ({:#x})",
            self.ulps,
            self.at,
            self.got,
            self.got.to_bits(),
            self.want,
            self.want.to_bits()
        );
    }
}

/// Runs `op` over every STRIDE-th bit pattern; checks against `libm` (the
/// f32 function the reference interpreter calls) and `exact` (the f64
/// function rounded to f32: nearly correctly rounded) where `accurate`
/// holds, elsewhere only that `loose` holds; and against `model` everywhere.
fn sweep(
    op: UnaryOp,
    libm: fn(f32) -> f32,
    exact: fn(f32) -> f32,
    model: fn(f32) -> f32,
    accurate: fn(f32) -> bool,
    loose: fn(f32) -> bool,
) -> (Worst, Worst) {
    let mut jit = Jit::new().unwrap();
    let compiled = unary_kernel(&mut jit, op);
    let mut worst = Worst::new();
    let mut worst_exact = Worst::new();
    let mut inputs = Vec::with_capacity(CHUNK);
    let mut outputs = vec![0.0f32; CHUNK];
    let mut bits = 0u64;
    while bits < 1 << 32 {
        inputs.clear();
        while inputs.len() < CHUNK && bits < 1 << 32 {
            inputs.push(f32::from_bits(bits as u32));
            bits += u64::from(STRIDE);
        }
        let n = inputs.len();
        compiled
            .run(&mut [&mut inputs, &mut outputs[..n]], &[], &mut [], 0..n)
            .unwrap();
        for (&x, &y) in inputs.iter().zip(&outputs) {
            assert!(
                same(y, model(x)),
                "{op:?}({x:e}): jit {y:e}, model {:e}",
                model(x)
            );
            if accurate(x) {
                worst.see((x, 0.0), y, libm(x));
                worst_exact.see((x, 0.0), y, exact(x));
            } else {
                assert!(loose(y), "{op:?}({x:e}) = {y:e}");
            }
        }
    }
    (worst, worst_exact)
}

fn anywhere(_: f32) -> bool {
    true
}

/// Checks the bound against libm's f32 function and against the rounded
/// f64 function.
fn check(name: &str, (libm, exact): (Worst, Worst), libm_bound: u64, exact_bound: u64) {
    libm.check(name, libm_bound);
    exact.check(&format!("{name} (vs f64)"), exact_bound);
}

#[test]
fn exp_accuracy() {
    let exact = |x: f32| f64::from(x).exp() as f32;
    let w = sweep(
        UnaryOp::Exp,
        f32::exp,
        exact,
        approx::exp,
        anywhere,
        anywhere,
    );
    check("exp", w, 1, 1);
}

#[test]
fn log_accuracy() {
    let exact = |x: f32| f64::from(x).ln() as f32;
    let w = sweep(UnaryOp::Log, f32::ln, exact, approx::ln, anywhere, anywhere);
    check("log", w, 1, 1);
}

#[test]
fn tanh_accuracy() {
    // glibc's tanhf is up to ~1.6 ulp off (e.g. at 0.11183313, where the JIT
    // is correctly rounded), hence 2 against it.
    let exact = |x: f32| f64::from(x).tanh() as f32;
    let w = sweep(
        UnaryOp::Tanh,
        f32::tanh,
        exact,
        approx::tanh,
        anywhere,
        anywhere,
    );
    check("tanh", w, 2, 1);
}

#[test]
fn sigmoid_accuracy() {
    // The reference formula 1 / (1 + exp(-x)) in f32 amplifies a 1-ulp
    // difference in exp into up to 2 ulp of the result. `exact` is the same
    // formula with a correctly rounded exp (it is 0 below -88.7, as the
    // reference is, where the true sigmoid is subnormal).
    fn reference(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }
    fn exact(x: f32) -> f32 {
        1.0 / (1.0 + (-f64::from(x)).exp() as f32)
    }
    let w = sweep(
        UnaryOp::Sigmoid,
        reference,
        exact,
        approx::sigmoid,
        anywhere,
        anywhere,
    );
    check("sigmoid", w, 2, 2);
}

#[test]
fn cos_accuracy() {
    let w = sweep(
        UnaryOp::Cos,
        f32::cos,
        |x| f64::from(x).cos() as f32,
        approx::cos,
        |x| x.is_nan() || x.abs() <= approx::COS_ACCURATE_LIMIT,
        |y| y.is_nan() || y.abs() <= 1.0,
    );
    check("cos", w, 1, 1);
}

#[test]
fn cbrt_accuracy() {
    let w = sweep(
        UnaryOp::Cbrt,
        f32::cbrt,
        |x| f64::from(x).cbrt() as f32,
        approx::cbrt,
        anywhere,
        anywhere,
    );
    check("cbrt", w, 1, 1);
}

#[test]
fn cos_dense_near_zero_and_multiples_of_pi() {
    // Consecutive floats around the reduction's hard spots.
    let mut jit = Jit::new().unwrap();
    let compiled = unary_kernel(&mut jit, UnaryOp::Cos);
    let mut worst = Worst::new();
    let mut exact = Worst::new();
    use std::f32::consts::{FRAC_PI_2, PI};
    for centre in [
        0.0f32,
        FRAC_PI_2,
        PI,
        3.0 * FRAC_PI_2,
        5.0 * FRAC_PI_2,
        1.0e4,
        355.0 / 2.0,
    ] {
        let mut xs: Vec<f32> = Vec::new();
        let mut x = centre;
        for _ in 0..20_000 {
            xs.push(x);
            xs.push(-x);
            x = f32::from_bits(x.to_bits() + 1);
        }
        let mut y = vec![0.0; xs.len()];
        let n = xs.len();
        compiled
            .run(&mut [&mut xs, &mut y], &[], &mut [], 0..n)
            .unwrap();
        for (&x, &y) in xs.iter().zip(&y) {
            worst.see((x, 0.0), y, x.cos());
            exact.see((x, 0.0), y, f64::from(x).cos() as f32);
        }
    }
    check("cos (dense)", (worst, exact), 1, 1);
}

fn pow_kernel(jit: &mut Jit) -> NativeKernel {
    let mut k = KernelBuilder::new(3, 0);
    let a = k.load(0);
    let b = k.load(1);
    let r = k.bin(BinaryOp::Pow, a, b);
    k.store(2, r);
    jit.compile(&k.kernel).unwrap()
}

fn pow_grid(
    compiled: &NativeKernel,
    bases: &[f32],
    exponents: &[f32],
    worst: &mut Worst,
    worst_exact: &mut Worst,
) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for &x in bases {
        for &y in exponents {
            a.push(x);
            b.push(y);
        }
    }
    let n = a.len();
    let mut r = vec![0.0; n];
    compiled
        .run(&mut [&mut a, &mut b, &mut r], &[], &mut [], 0..n)
        .unwrap();
    for i in 0..n {
        let (x, y) = (a[i], b[i]);
        assert!(same(r[i], approx::pow(x, y)), "pow({x:e}, {y:e}) vs model");
        worst.see((x, y), r[i], x.powf(y));
        worst_exact.see((x, y), r[i], f64::from(x).powf(f64::from(y)) as f32);
    }
}

#[test]
fn pow_accuracy() {
    let mut jit = Jit::new().unwrap();
    let compiled = pow_kernel(&mut jit);
    let mut rng = Rng(17);
    let mut worst = Worst::new();
    let mut exact = Worst::new();
    // Positive bases over the whole exponent range, exponents in [-60, 60].
    let (bases, exponents) = if cfg!(debug_assertions) {
        (1024u32, 256)
    } else {
        (4096, 1024)
    };
    let step = 0x7F80_0000 / bases;
    let a: Vec<f32> = (0..bases).map(|i| f32::from_bits(1 + i * step)).collect();
    let mut b: Vec<f32> = (0..exponents).map(|_| rng.uniform(-60.0, 60.0)).collect();
    b.extend((-20..=20).map(|i| i as f32));
    b.extend([
        0.5,
        -0.5,
        1.0 / 3.0,
        1e-3,
        -1e-7,
        1e-30,
        100.0,
        1e5,
        1e10,
        -1e20,
    ]);
    pow_grid(&compiled, &a, &b, &mut worst, &mut exact);
    // Bases near 1 with large exponents (the sensitive case).
    let near_one: Vec<f32> = (-2000..2000)
        .map(|i| f32::from_bits(1.0f32.to_bits().wrapping_add_signed(i * 37)))
        .collect();
    let big: Vec<f32> = (0..64).map(|_| rng.uniform(-2e6, 2e6)).collect();
    pow_grid(&compiled, &near_one, &big, &mut worst, &mut exact);
    // Negative bases with integer exponents, and everything special.
    let neg: Vec<f32> = a.iter().step_by(4).map(|x| -x).collect();
    let ints: Vec<f32> = (-40..=40)
        .map(|i| i as f32)
        .chain([1e9, -1e9 - 64.0, 16777217.0])
        .collect();
    pow_grid(&compiled, &neg, &ints, &mut worst, &mut exact);
    let mut special: Vec<f32> = SPECIALS.to_vec();
    special.extend([2.5, -2.5, 1.0 / 3.0, -3.0, 4.0, -0.5]);
    pow_grid(&compiled, &special, &special, &mut worst, &mut exact);
    check("pow", (worst, exact), 1, 1);
}

#[test]
fn special_values_are_exact() {
    // Where libm's result is exactly representable or special, the JIT's
    // result is the same bits.
    type Case = (fn(f32) -> f32, fn(f32) -> f32, &'static [f32]);
    /// 2^-147, whose cube root is 2^-49.
    const SUBNORMAL_CUBE: f32 = f32::from_bits(4);
    let cases: [Case; 6] = [
        (
            approx::exp,
            f32::exp,
            &[0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 100.0, -120.0],
        ),
        (
            approx::ln,
            f32::ln,
            &[1.0, 0.0, -0.0, -1.0, f32::INFINITY, f32::NEG_INFINITY],
        ),
        (
            approx::tanh,
            f32::tanh,
            &[
                0.0,
                -0.0,
                20.0,
                -20.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                1e-40,
            ],
        ),
        (
            approx::cos,
            f32::cos,
            &[0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY],
        ),
        (
            approx::sigmoid,
            |x| 1.0 / (1.0 + (-x).exp()),
            &[0.0, 100.0, -100.0, f32::INFINITY],
        ),
        (
            approx::cbrt,
            f32::cbrt,
            &[
                0.0,
                -0.0,
                1.0,
                -8.0,
                27.0,
                0.125,
                f32::INFINITY,
                f32::NEG_INFINITY,
                SUBNORMAL_CUBE,
                -f32::MIN_POSITIVE,
            ],
        ),
    ];
    for (model, libm, xs) in cases {
        for &x in xs.iter().chain(&[f32::NAN]) {
            assert!(
                same(model(x), libm(x)),
                "at {x:e}: {:e} vs {:e}",
                model(x),
                libm(x)
            );
        }
    }
}
