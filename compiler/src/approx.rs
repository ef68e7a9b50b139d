//! The transcendental approximations, written once and evaluated twice.
//!
//! Compiled kernels cannot call libm per element, so `exp log tanh sigmoid
//! cos cbrt` and `pow` are branch-free polynomial algorithms. Each is written
//! here once, generically over `Arith`, a tiny instruction set of f64 lanes, i64
//! lanes and lane masks. Every code generator implements `Arith` by emitting
//! its vector instructions (Cranelift `f64x2`/`i64x2`, LLVM vectors of the
//! host's width), so every tier computes the same operations in the same
//! order and their kernels agree bit for bit; `Scalar` implements it with
//! plain Rust `f64`/`u64` arithmetic. The public scalar functions below ([`exp`],
//! [`ln`], ...) are therefore a bit-exact model of what compiled kernels
//! compute (the same IEEE operations in the same order, no FMA), which the
//! tests use as an oracle, and which an interpreter may use to reproduce JIT
//! results exactly.
//!
//! Every algorithm takes its f32 argument widened to f64 (exactly), computes
//! in f64 with a polynomial (for cbrt, a polynomial refined by a Halley step)
//! whose error is far below f32 resolution (2^-41 or better) and an exact or
//! near-exact range reduction, and rounds to f32 once at the end. The result
//! is therefore within 0.5 ulp + 2^-17 ulp of the true value (f32 subnormal
//! results included, since f64 represents them as normal numbers), i.e.
//! within 1 ulp of a correctly rounded libm. Measured bounds are in the
//! crate documentation.

use std::f64::consts::{FRAC_2_PI, LN_2, LOG2_E};

/// The operations the approximations are written in, lane-wise.
///
/// `F` holds f64 lanes, `I` their bit patterns (as u64, wrapping arithmetic),
/// `M` lane masks (the result of a comparison).
pub trait Arith {
    type F: Copy;
    type I: Copy;
    type M: Copy;
    fn f(&mut self, c: f64) -> Self::F;
    fn i(&mut self, c: u64) -> Self::I;
    fn add(&mut self, a: Self::F, b: Self::F) -> Self::F;
    fn sub(&mut self, a: Self::F, b: Self::F) -> Self::F;
    fn mul(&mut self, a: Self::F, b: Self::F) -> Self::F;
    fn div(&mut self, a: Self::F, b: Self::F) -> Self::F;
    fn neg(&mut self, a: Self::F) -> Self::F;
    fn abs(&mut self, a: Self::F) -> Self::F;
    fn floor(&mut self, a: Self::F) -> Self::F;
    /// Ordered `a < b`.
    fn lt(&mut self, a: Self::F, b: Self::F) -> Self::M;
    /// Ordered `a == b`.
    fn eq(&mut self, a: Self::F, b: Self::F) -> Self::M;
    /// `a` is NaN.
    fn is_nan(&mut self, a: Self::F) -> Self::M;
    fn and(&mut self, a: Self::M, b: Self::M) -> Self::M;
    fn or(&mut self, a: Self::M, b: Self::M) -> Self::M;
    fn not(&mut self, a: Self::M) -> Self::M;
    /// `m ? a : b`, lane-wise.
    fn sel(&mut self, m: Self::M, a: Self::F, b: Self::F) -> Self::F;
    fn bits(&mut self, a: Self::F) -> Self::I;
    fn float(&mut self, a: Self::I) -> Self::F;
    fn iadd(&mut self, a: Self::I, b: Self::I) -> Self::I;
    fn iand(&mut self, a: Self::I, b: Self::I) -> Self::I;
    fn shl(&mut self, a: Self::I, by: u8) -> Self::I;
    fn ushr(&mut self, a: Self::I, by: u8) -> Self::I;
    fn ieq(&mut self, a: Self::I, b: Self::I) -> Self::M;
}

/// [`Arith`] on one lane with Rust arithmetic: the reference model.
pub struct Scalar;

impl Arith for Scalar {
    type F = f64;
    type I = u64;
    type M = bool;
    fn f(&mut self, c: f64) -> f64 {
        c
    }
    fn i(&mut self, c: u64) -> u64 {
        c
    }
    fn add(&mut self, a: f64, b: f64) -> f64 {
        a + b
    }
    fn sub(&mut self, a: f64, b: f64) -> f64 {
        a - b
    }
    fn mul(&mut self, a: f64, b: f64) -> f64 {
        a * b
    }
    fn div(&mut self, a: f64, b: f64) -> f64 {
        a / b
    }
    fn neg(&mut self, a: f64) -> f64 {
        -a
    }
    fn abs(&mut self, a: f64) -> f64 {
        a.abs()
    }
    fn floor(&mut self, a: f64) -> f64 {
        a.floor()
    }
    fn lt(&mut self, a: f64, b: f64) -> bool {
        a < b
    }
    fn eq(&mut self, a: f64, b: f64) -> bool {
        a == b
    }
    fn is_nan(&mut self, a: f64) -> bool {
        a.is_nan()
    }
    fn and(&mut self, a: bool, b: bool) -> bool {
        a && b
    }
    fn or(&mut self, a: bool, b: bool) -> bool {
        a || b
    }
    fn not(&mut self, a: bool) -> bool {
        !a
    }
    fn sel(&mut self, m: bool, a: f64, b: f64) -> f64 {
        if m {
            a
        } else {
            b
        }
    }
    fn bits(&mut self, a: f64) -> u64 {
        a.to_bits()
    }
    fn float(&mut self, a: u64) -> f64 {
        f64::from_bits(a)
    }
    fn iadd(&mut self, a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }
    fn iand(&mut self, a: u64, b: u64) -> u64 {
        a & b
    }
    fn shl(&mut self, a: u64, by: u8) -> u64 {
        a << by
    }
    fn ushr(&mut self, a: u64, by: u8) -> u64 {
        a >> by
    }
    fn ieq(&mut self, a: u64, b: u64) -> bool {
        a == b
    }
}

/// 1.5 * 2^52: adding it rounds an f64 of magnitude < 2^51 to an integer
/// (ties to even) and leaves that integer in the low mantissa bits.
const ROUND_MAGIC: f64 = 6755399441055744.0;
/// exp2 arguments are clamped to this; 2^±160 is far outside f32 range but
/// inside f64's, so overflow and underflow happen in the final rounding.
const EXP2_LIMIT: f64 = 160.0;

/// (2^f - 1) / f on [-1/2, 1/2], lowest degree first (Chebyshev fit,
/// relative error 2^-43.5).
const EXP2_Q: [f64; 9] = [
    LN_2, // 0.6931471805599453, as fitted
    0.2402265069581299,
    0.055504108664760424,
    0.009618129159402558,
    0.0013333558179043112,
    0.00015403455852453838,
    1.525268684626772e-05,
    1.3255224878668817e-06,
    1.0203121063391729e-07,
];

/// P(z) with ln((1+s)/(1-s)) = 2s + s z P(z), z = s^2 <= 0.02944
/// (Chebyshev fit, error 2^-43 relative to the result).
const LOG_P: [f64; 5] = [
    0.6666666666737509,
    0.3999999879733759,
    0.2857175453591449,
    0.22191400830308503,
    0.19362653714202008,
];

/// cos(r) = 1 + z C(z), z = r^2 <= (pi/4)^2 (error 2^-41.5).
const COS_C: [f64; 5] = [
    -0.4999999999996389,
    0.04166666663739607,
    -0.00138888850913992,
    2.4799862190148396e-05,
    -2.7237140418016e-07,
];

/// sin(r) = r + r z S(z), z = r^2 <= (pi/4)^2 (error 2^-45.7).
const SIN_S: [f64; 5] = [
    -0.16666666666663885,
    0.008333333331079223,
    -0.00019841266916985966,
    2.755599092956532e-06,
    -2.4805636241834762e-08,
];

/// pi/2 split in 24-bit pieces (the last one rounded to 53 bits): k * piece
/// is exact for k < 2^29, so the Cody-Waite reduction is accurate up to
/// |x| ~ 2^29 pi/2.
const PIO2: [f64; 4] = [
    1.570796251296997,
    7.549789415861596e-08,
    5.390302529957765e-15,
    3.2820035428735005e-22,
];

/// cbrt(3/2 + u) for u = m - 3/2 in [-1/2, 1/2), lowest degree first
/// (Chebyshev fit, relative error 2^-16.2; [`cbrt_f64`]'s Halley step cubes it).
const CBRT_P: [f64; 5] = [
    1.1447142425533319,
    0.2542836552950887,
    -0.056478324967036,
    0.02246576146160356,
    -0.010102212336338642,
];

/// 2^(1/3) and 2^(-1/3).
const CBRT_2: f64 = 1.2599210498948732;
const CBRT_HALF: f64 = 0.7937005259840998;

/// Beyond this |x| the cos reduction is no longer accurate (see crate docs).
pub const COS_ACCURATE_LIMIT: f32 = 8.0e8;

/// Bit pattern of sqrt(1/2): log normalises the mantissa into [sqrt(1/2), sqrt(2)).
const SQRT_HALF_BITS: u64 = 0x3FE6_A09E_667F_3BCD;
const ONE_BITS: u64 = 0x3FF0_0000_0000_0000;
const MANTISSA_MASK: u64 = 0x000F_FFFF_FFFF_FFFF;
/// Bit pattern of 2^52: OR-ing a small integer into it gives 2^52 + n.
const TWO52_BITS: u64 = 0x4330_0000_0000_0000;

fn horner<A: Arith>(a: &mut A, x: A::F, coefficients: &[f64]) -> A::F {
    let (last, rest) = coefficients.split_last().expect("non-empty polynomial");
    let mut acc = a.f(*last);
    for &c in rest.iter().rev() {
        let m = a.mul(acc, x);
        let c = a.f(c);
        acc = a.add(c, m);
    }
    acc
}

/// `min(max(x, lo), hi)` that keeps NaN.
fn clamp<A: Arith>(a: &mut A, x: A::F, lo: f64, hi: f64) -> A::F {
    let lo = a.f(lo);
    let hi = a.f(hi);
    let below = a.lt(x, lo);
    let x = a.sel(below, lo, x);
    let above = a.lt(hi, x);
    a.sel(above, hi, x)
}

/// `t` (|t| < 2^51) rounded to the nearest integer k (ties to even), as
/// `(kd, k)`: `kd = k + ROUND_MAGIC` holds k in its low mantissa bits, for
/// [`scale`].
fn round<A: Arith>(a: &mut A, t: A::F) -> (A::F, A::F) {
    let magic = a.f(ROUND_MAGIC);
    let kd = a.add(t, magic);
    let k = a.sub(kd, magic);
    (kd, k)
}

/// `p * 2^k` for `kd` from [`round`], by adding k to p's exponent field:
/// exact while p and the result are normal.
fn scale<A: Arith>(a: &mut A, p: A::F, kd: A::F) -> A::F {
    let kbits = a.bits(kd);
    let shift = a.shl(kbits, 52);
    let pbits = a.bits(p);
    let bits = a.iadd(pbits, shift);
    a.float(bits)
}

/// `biased - 1023` as f64, for an integer lane `biased` < 2^52: the exponent
/// k of x = 2^k m (m in [1, 2)) from x's bits shifted right by 52.
fn exponent<A: Arith>(a: &mut A, biased: A::I) -> A::F {
    let two52 = a.i(TWO52_BITS);
    let kbits = a.iadd(biased, two52);
    let kraw = a.float(kbits);
    let kbias = a.f(4503599627370496.0 + 1023.0);
    a.sub(kraw, kbias)
}

/// 2^t split as 2^k (1 + q): returns (1 + q) * 2^k, q, and the mask k == 0.
/// NaN `t` gives garbage (callers patch NaN inputs afterwards).
fn exp2_parts<A: Arith>(a: &mut A, t: A::F) -> (A::F, A::F, A::M) {
    let t = clamp(a, t, -EXP2_LIMIT, EXP2_LIMIT);
    let (kd, k) = round(a, t);
    let f = a.sub(t, k);
    let poly = horner(a, f, &EXP2_Q);
    let q = a.mul(f, poly);
    let one = a.f(1.0);
    let p = a.add(one, q);
    let value = scale(a, p, kd);
    let zero = a.f(0.0);
    let k_is_zero = a.eq(k, zero);
    (value, q, k_is_zero)
}

fn exp2<A: Arith>(a: &mut A, t: A::F) -> A::F {
    exp2_parts(a, t).0
}

/// ln(x) and log2(x) pieces for positive finite x: (k, ln(m)) with
/// x = 2^k m, m in [sqrt(1/2), sqrt(2)). Garbage for other inputs.
fn log_parts<A: Arith>(a: &mut A, x: A::F) -> (A::F, A::F) {
    let bits = a.bits(x);
    let shift = a.i(ONE_BITS.wrapping_sub(SQRT_HALF_BITS));
    let ix = a.iadd(bits, shift);
    let biased = a.ushr(ix, 52);
    let mask = a.i(MANTISSA_MASK);
    let mant = a.iand(ix, mask);
    let sqrt_half = a.i(SQRT_HALF_BITS);
    let mbits = a.iadd(mant, sqrt_half);
    let m = a.float(mbits);
    let k = exponent(a, biased);
    let one = a.f(1.0);
    let f = a.sub(m, one);
    let two = a.f(2.0);
    let den = a.add(two, f);
    let s = a.div(f, den);
    let z = a.mul(s, s);
    let p = horner(a, z, &LOG_P);
    let w = a.mul(z, p);
    let sw = a.mul(s, w);
    let s2 = a.add(s, s);
    let ln_m = a.add(s2, sw);
    (k, ln_m)
}

/// exp(x), rounded later to f32.
pub fn exp_f64<A: Arith>(a: &mut A, x: A::F) -> A::F {
    let c = a.f(LOG2_E);
    let t = a.mul(x, c);
    let r = exp2(a, t);
    let nan = a.is_nan(x);
    a.sel(nan, x, r)
}

/// ln(x) with the IEEE special cases.
pub fn ln_f64<A: Arith>(a: &mut A, x: A::F) -> A::F {
    let (k, ln_m) = log_parts(a, x);
    let ln2 = a.f(LN_2);
    let kl = a.mul(k, ln2);
    let r = a.add(kl, ln_m);
    let zero = a.f(0.0);
    let is_zero = a.eq(x, zero);
    let ninf = a.f(f64::NEG_INFINITY);
    let r = a.sel(is_zero, ninf, r);
    let negative = a.lt(x, zero);
    let nan = a.f(f64::NAN);
    let r = a.sel(negative, nan, r);
    let inf = a.f(f64::INFINITY);
    let is_inf = a.eq(x, inf);
    let r = a.sel(is_inf, inf, r);
    let is_nan = a.is_nan(x);
    a.sel(is_nan, x, r)
}

/// tanh(x) = expm1(2x) / (expm1(2x) + 2), with expm1 taken from the exp2
/// polynomial directly when no scaling happened (small |x|: no cancellation).
pub fn tanh_f64<A: Arith>(a: &mut A, x: A::F) -> A::F {
    let c = a.f(2.0 * LOG2_E);
    let t = a.mul(x, c);
    let (e, q, k_is_zero) = exp2_parts(a, t);
    let one = a.f(1.0);
    let em1_scaled = a.sub(e, one);
    let em1 = a.sel(k_is_zero, q, em1_scaled);
    let two = a.f(2.0);
    let den = a.add(em1, two);
    let r = a.div(em1, den);
    let nan = a.is_nan(x);
    a.sel(nan, x, r)
}

/// cos(x): Cody-Waite reduction by pi/2 in four pieces, then the sin or cos
/// polynomial of the quadrant.
pub fn cos_f64<A: Arith>(a: &mut A, x: A::F) -> A::F {
    let ax = a.abs(x);
    let c = a.f(FRAC_2_PI);
    let t = a.mul(ax, c);
    // Far beyond the accurate range the quadrant count would exceed the
    // rounding trick's 2^51; clamping keeps the result a value in [-1, 1].
    let t = clamp(a, t, 0.0, 1.0e15);
    let (kd, k) = round(a, t);
    let mut r = ax;
    for piece in PIO2 {
        let piece = a.f(piece);
        let kp = a.mul(k, piece);
        r = a.sub(r, kp);
    }
    let r = clamp(a, r, -0.8, 0.8);
    let z = a.mul(r, r);
    let cp = horner(a, z, &COS_C);
    let zc = a.mul(z, cp);
    let one = a.f(1.0);
    let cosr = a.add(one, zc);
    let sp = horner(a, z, &SIN_S);
    let rz = a.mul(r, z);
    let rzs = a.mul(rz, sp);
    let sinr = a.add(r, rzs);
    let kbits = a.bits(kd);
    let one_i = a.i(1);
    let low = a.iand(kbits, one_i);
    let odd = a.ieq(low, one_i);
    let v = a.sel(odd, sinr, cosr);
    let kplus = a.iadd(kbits, one_i);
    let two_i = a.i(2);
    let bit = a.iand(kplus, two_i);
    let negate = a.ieq(bit, two_i);
    let nv = a.neg(v);
    let v = a.sel(negate, nv, v);
    let inf = a.f(f64::INFINITY);
    let is_inf = a.eq(ax, inf);
    let is_nan = a.is_nan(x);
    let bad = a.or(is_inf, is_nan);
    let nan = a.f(f64::NAN);
    a.sel(bad, nan, v)
}

/// cbrt(x), the real cube root: |x| = 2^(3q + r) m with m in [1, 2) and
/// r in {-1, 0, 1} (from the exponent bits; f32 subnormals are normal in
/// f64), y = P(m) cbrt(2^r) 2^q, then one Halley step
/// y (y^3 + 2|x|) / (2y^3 + |x|), which takes the relative error e to
/// (2/3) e^3: from the polynomial's 2^-16.2 to 2^-49 plus a few roundings.
/// The sign is x's; ±0, ±inf and NaN are returned as they are.
pub fn cbrt_f64<A: Arith>(a: &mut A, x: A::F) -> A::F {
    let ax = a.abs(x);
    let bits = a.bits(ax);
    let biased = a.ushr(bits, 52);
    let k = exponent(a, biased);
    let mask = a.i(MANTISSA_MASK);
    let mant = a.iand(bits, mask);
    let one_bits = a.i(ONE_BITS);
    let mbits = a.iadd(mant, one_bits);
    let m = a.float(mbits);
    // q = round(k / 3): k / 3 is at least 1/6 from a half-integer, so the
    // product with the rounded 1/3 rounds the same way.
    let third = a.f(1.0 / 3.0);
    let t = a.mul(k, third);
    let (qd, q) = round(a, t);
    let three = a.f(3.0);
    let q3 = a.mul(q, three);
    let r = a.sub(k, q3);
    let one = a.f(1.0);
    let r_is_one = a.eq(r, one);
    let minus_one = a.f(-1.0);
    let r_is_minus_one = a.eq(r, minus_one);
    let cbrt_2 = a.f(CBRT_2);
    let cbrt_half = a.f(CBRT_HALF);
    let c = a.sel(r_is_minus_one, cbrt_half, one);
    let c = a.sel(r_is_one, cbrt_2, c);
    let centre = a.f(1.5);
    let u = a.sub(m, centre);
    let p = horner(a, u, &CBRT_P);
    let pc = a.mul(p, c);
    let y = scale(a, pc, qd);
    let y2 = a.mul(y, y);
    let y3 = a.mul(y2, y);
    let ax2 = a.add(ax, ax);
    let num = a.add(y3, ax2);
    let y3_2 = a.add(y3, y3);
    let den = a.add(y3_2, ax);
    let ratio = a.div(num, den);
    let y = a.mul(y, ratio);
    let zero = a.f(0.0);
    let negative = a.lt(x, zero);
    let ny = a.neg(y);
    let y = a.sel(negative, ny, y);
    let inf = a.f(f64::INFINITY);
    let positive = a.lt(zero, ax);
    let finite = a.lt(ax, inf);
    let ordinary = a.and(positive, finite);
    a.sel(ordinary, y, x)
}

/// powf(a, b) = ±2^(b log2|a|) with the C99 special cases.
pub fn pow_f64<A: Arith>(ar: &mut A, a: A::F, b: A::F) -> A::F {
    let ax = ar.abs(a);
    let (k, ln_m) = log_parts(ar, ax);
    let log2e = ar.f(LOG2_E);
    let l2 = ar.mul(ln_m, log2e);
    let l = ar.add(k, l2);
    let zero = ar.f(0.0);
    let inf = ar.f(f64::INFINITY);
    let ninf = ar.f(f64::NEG_INFINITY);
    let ax_zero = ar.eq(ax, zero);
    let l = ar.sel(ax_zero, ninf, l);
    let ax_inf = ar.eq(ax, inf);
    let l = ar.sel(ax_inf, inf, l);
    let y = ar.mul(b, l);
    let r = exp2(ar, y);
    // Integer and odd exponents (infinities count as even integers).
    let fb = ar.floor(b);
    let is_int = ar.eq(fb, b);
    let half = ar.f(0.5);
    let hb = ar.mul(b, half);
    let fhb = ar.floor(hb);
    let half_int = ar.eq(fhb, hb);
    let not_half_int = ar.not(half_int);
    let is_odd = ar.and(is_int, not_half_int);
    // A negative sign bit (including -0 and -inf) with an odd exponent.
    let abits = ar.bits(a);
    let sign = ar.ushr(abits, 63);
    let one_i = ar.i(1);
    let a_signed = ar.ieq(sign, one_i);
    let flip = ar.and(a_signed, is_odd);
    let nr = ar.neg(r);
    let r = ar.sel(flip, nr, r);
    // Finite negative base, non-integer exponent.
    let a_neg = ar.lt(a, zero);
    let a_ninf = ar.eq(a, ninf);
    let a_not_ninf = ar.not(a_ninf);
    let a_finite_neg = ar.and(a_neg, a_not_ninf);
    let not_int = ar.not(is_int);
    let invalid = ar.and(a_finite_neg, not_int);
    let a_nan = ar.is_nan(a);
    let b_nan = ar.is_nan(b);
    let any_nan = ar.or(a_nan, b_nan);
    let invalid = ar.or(invalid, any_nan);
    let nan = ar.f(f64::NAN);
    let r = ar.sel(invalid, nan, r);
    // Exact ones: b = ±0, a = 1, and (-1)^±inf.
    let b_zero = ar.eq(b, zero);
    let one = ar.f(1.0);
    let a_one = ar.eq(a, one);
    let ab = ar.abs(b);
    let b_inf = ar.eq(ab, inf);
    let ax_one = ar.eq(ax, one);
    let unit_inf = ar.and(ax_one, b_inf);
    let ones = ar.or(b_zero, a_one);
    let ones = ar.or(ones, unit_inf);
    ar.sel(ones, one, r)
}

/// The model of the JIT's `exp`.
pub fn exp(x: f32) -> f32 {
    exp_f64(&mut Scalar, f64::from(x)) as f32
}

/// The model of the JIT's `log` (natural logarithm).
pub fn ln(x: f32) -> f32 {
    ln_f64(&mut Scalar, f64::from(x)) as f32
}

/// The model of the JIT's `tanh`.
pub fn tanh(x: f32) -> f32 {
    tanh_f64(&mut Scalar, f64::from(x)) as f32
}

/// The model of the JIT's `sigmoid`: `1 / (1 + exp(-x))` in f32, with the
/// approximated exp (the reference's formula, so large |x| behave alike).
pub fn sigmoid(x: f32) -> f32 {
    let e = exp(-x);
    1.0 / (1.0 + e)
}

/// The model of the JIT's `cos`.
pub fn cos(x: f32) -> f32 {
    cos_f64(&mut Scalar, f64::from(x)) as f32
}

/// The model of the JIT's `cbrt`.
pub fn cbrt(x: f32) -> f32 {
    cbrt_f64(&mut Scalar, f64::from(x)) as f32
}

/// The model of the JIT's `pow`.
pub fn pow(a: f32, b: f32) -> f32 {
    pow_f64(&mut Scalar, f64::from(a), f64::from(b)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_values() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f32::NEG_INFINITY);
        assert_eq!(ln(-0.0), f32::NEG_INFINITY);
        assert!(ln(-1.0).is_nan());
        assert_eq!(ln(f32::INFINITY), f32::INFINITY);
        assert_eq!(tanh(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(tanh(50.0), 1.0);
        assert_eq!(tanh(-50.0), -1.0);
        assert!(cos(f32::INFINITY).is_nan());
        assert_eq!(cos(0.0), 1.0);
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(cbrt(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(cbrt(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(cbrt(f32::INFINITY), f32::INFINITY);
        assert_eq!(cbrt(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert!(cbrt(f32::NAN).is_nan());
        assert!(cbrt(-f32::NAN).is_nan());
        assert_eq!(cbrt(1.0), 1.0);
        assert_eq!(cbrt(-8.0), -2.0);
        assert_eq!(cbrt(27.0), 3.0);
        assert_eq!(cbrt(0.125), 0.5);
        assert_eq!(cbrt(2.0f32.powi(-126)), 2.0f32.powi(-42));
        assert_eq!(
            cbrt(-f32::from_bits(4)),
            -(2.0f32.powi(-49)),
            "-2^-147, subnormal"
        );
        // Subnormals and the extreme finite inputs: the f64 cube root,
        // rounded once.
        for x in [
            f32::from_bits(1),
            -f32::from_bits(0x7F_FFFF),
            f32::MIN_POSITIVE,
            f32::MAX,
        ] {
            assert_eq!(cbrt(x), f64::from(x).cbrt() as f32, "cbrt({x:e})");
        }
        for x in [3.0f32, 1e-40, 5e37, 0.3] {
            assert_eq!(cbrt(-x).to_bits(), (-cbrt(x)).to_bits(), "odd at {x:e}");
        }
        assert_eq!(pow(2.0, 10.0), 1024.0);
        assert_eq!(pow(-2.0, 3.0), -8.0);
        assert!(pow(-8.0, 1.0 / 3.0).is_nan());
        assert_eq!(pow(f32::NAN, 0.0), 1.0);
        assert_eq!(pow(1.0, f32::NAN), 1.0);
        assert_eq!(pow(-1.0, f32::INFINITY), 1.0);
        assert_eq!(pow(-0.0, -1.0), f32::NEG_INFINITY);
        assert_eq!(pow(-0.0, 3.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(pow(0.0, -2.0), f32::INFINITY);
        assert_eq!(pow(f32::NEG_INFINITY, 3.0), f32::NEG_INFINITY);
        assert_eq!(pow(f32::NEG_INFINITY, 0.5), f32::INFINITY);
        assert_eq!(pow(0.5, f32::INFINITY), 0.0);
    }
}
