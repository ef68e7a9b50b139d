//! Shared test helpers: random inputs, ulp distances, a model evaluator,
//! hand-written kernels and a generator of random ones.
#![allow(dead_code)]

use optc_compiler::approx;
use optc_compiler::backend::NativeKernel;
use optc_compiler::interpret::{binary, lerp, select, unary};
use optc_compiler::ir::{BinaryOp, ReduceOp, UnaryOp};
use optc_compiler::kernel::{
    bf16, is_approximated, is_transcendental, BufferMut, Kernel, Op, Rounding, Storage,
};
use optc_cranelift::Jit;
use proptest::prelude::*;
use std::ops::Range;

/// xorshift64*: reproducible inputs without extra dependencies.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let t = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * t
    }

    /// A mix of special values, ordinary values and arbitrary bit patterns.
    pub fn interesting(&mut self) -> f32 {
        match self.below(10) {
            0..=3 => SPECIALS[self.below(SPECIALS.len() as u64) as usize],
            4..=6 => self.uniform(-4.0, 4.0),
            _ => f32::from_bits(self.next() as u32),
        }
    }
}

pub const SPECIALS: [f32; 26] = [
    0.0,
    -0.0,
    0.0,
    -f32::NAN,
    1.0,
    -1.0,
    0.5,
    -2.0,
    3.0,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    f32::MIN_POSITIVE,
    -f32::MIN_POSITIVE,
    1.0e-45,
    -3.0e-42,
    f32::MAX,
    f32::MIN,
    1.0e-30,
    -1.0e30,
    1.0e-7,
    0.9,
    0.999,
    1e8,
    -88.0,
    90.0,
];

/// The lengths every differential test covers (tails of every size).
pub const LENGTHS: [usize; 8] = [0, 1, 3, 5, 7, 8, 17, 1001];

/// Distance in ulps; NaN equals NaN, +0 equals -0, NaN vs number is MAX.
pub fn ulps(a: f32, b: f32) -> u64 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() {
            0
        } else {
            u64::MAX
        };
    }
    let ordered = |x: f32| {
        let bits = x.to_bits();
        if bits & 0x8000_0000 != 0 {
            -i64::from(bits & 0x7FFF_FFFF)
        } else {
            i64::from(bits)
        }
    };
    ordered(a).abs_diff(ordered(b))
}

/// Bit equality with all NaNs equal.
pub fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// `max`/`min` with the tie rule the JIT documents (first operand on ties).
pub fn pinned_binary(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Max => {
            if a < b || a.is_nan() {
                b
            } else {
                a
            }
        }
        BinaryOp::Min => {
            if b < a || a.is_nan() {
                b
            } else {
                a
            }
        }
        BinaryOp::Pow => approx::pow(a, b),
        _ => binary::<f32>(op, a, b),
    }
}

pub fn model_unary(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Exp => approx::exp(x),
        UnaryOp::Log => approx::ln(x),
        UnaryOp::Tanh => approx::tanh(x),
        UnaryOp::Sigmoid => approx::sigmoid(x),
        UnaryOp::Cos => approx::cos(x),
        UnaryOp::Cbrt => approx::cbrt(x),
        _ => unary::<f32>(op, x),
    }
}

/// Whether the kernel uses an approximated operation.
pub fn approximates(kernel: &Kernel) -> bool {
    kernel.ops.iter().any(|op| match op {
        Op::Unary(u, _) => is_transcendental(*u),
        Op::Binary(b, _, _) => is_approximated(*b),
        _ => false,
    })
}

/// The kernel with `min`/`max` spelled as comparisons and a select, so that
/// the reference interpreter follows the JIT's tie rule for signed zeros
/// (`f32::max(+0, -0)` is unspecified in Rust and varies with LLVM's
/// lowering). Equivalent to the original in every other case.
pub fn pin_min_max(kernel: &Kernel) -> Kernel {
    let mut ops = Vec::new();
    let mut map = Vec::new();
    for op in &kernel.ops {
        let m = |i: u32| map[i as usize];
        let new = match *op {
            Op::Binary(b @ (BinaryOp::Max | BinaryOp::Min), x, y) => {
                let (x, y) = (m(x), m(y));
                let better = if b == BinaryOp::Max {
                    Op::Binary(BinaryOp::Lt, x, y)
                } else {
                    Op::Binary(BinaryOp::Lt, y, x)
                };
                ops.push(better);
                let better = (ops.len() - 1) as u32;
                ops.push(Op::Binary(BinaryOp::Ne, x, x));
                let nan = (ops.len() - 1) as u32;
                ops.push(Op::Binary(BinaryOp::Or, better, nan));
                let take = (ops.len() - 1) as u32;
                Op::Select(take, y, x)
            }
            Op::Unary(u, a) => Op::Unary(u, m(a)),
            Op::Binary(b, x, y) => Op::Binary(b, m(x), m(y)),
            Op::Select(c, a, b) => Op::Select(m(c), m(a), m(b)),
            Op::Lerp(a, b, w) => Op::Lerp(m(a), m(b), m(w)),
            leaf => leaf,
        };
        ops.push(new);
        map.push((ops.len() - 1) as u32);
    }
    Kernel {
        ops,
        stores: kernel
            .stores
            .iter()
            .map(|&(b, op)| (b, map[op as usize]))
            .collect(),
        accumulators: kernel
            .accumulators
            .iter()
            .map(|&(r, op)| (r, map[op as usize]))
            .collect(),
        buffers: kernel.buffers,
        scalars: kernel.scalars,
        storage: kernel.storage.clone(),
        rounding: kernel.rounding,
    }
}

/// `kernel::run`'s loop with the JIT's documented choices (the approximation
/// models and the min/max tie rule). Also returns, per accumulator, the sum
/// of the magnitudes it combined (the scale of a reordered sum's error).
pub fn run_model(
    kernel: &Kernel,
    buffers: &mut [Vec<f32>],
    scalars: &[f32],
    accumulators: &mut [f64],
    range: std::ops::Range<usize>,
) -> Vec<f64> {
    let mut magnitude = vec![0.0f64; kernel.accumulators.len()];
    let mut values = vec![0.0f32; kernel.ops.len()];
    for i in range {
        for (slot, op) in kernel.ops.iter().enumerate() {
            let v = |k: u32| values[k as usize];
            values[slot] = match *op {
                Op::Load(b) => buffers[b as usize][i],
                Op::Scalar(k) => scalars[k as usize],
                Op::Const(c) => c,
                Op::Unary(op, a) => model_unary(op, v(a)),
                Op::Binary(op, a, b) => pinned_binary(op, v(a), v(b)),
                Op::Select(c, a, b) => select::<f32>(v(c), v(a), v(b)),
                Op::Lerp(a, b, w) => lerp::<f32>(v(a), v(b), v(w)),
            };
        }
        for (k, (acc, &(op, value))) in accumulators
            .iter_mut()
            .zip(&kernel.accumulators)
            .enumerate()
        {
            let x = f64::from(values[value as usize]);
            *acc = Kernel::combine(op, *acc, x);
            magnitude[k] += x.abs();
        }
        for &(buffer, value) in &kernel.stores {
            buffers[buffer as usize][i] = values[value as usize];
        }
    }
    magnitude
}

pub fn identities(kernel: &Kernel) -> Vec<f64> {
    kernel
        .accumulators
        .iter()
        .map(|&(r, _)| Kernel::identity(r))
        .collect()
}

/// Accumulator results agree: sums within 1e-12 of the summed magnitudes
/// (the order differs), max and min exactly; NaN and infinities alike.
pub fn accumulators_agree(
    kernel: &Kernel,
    jit: &[f64],
    reference: &[f64],
    magnitude: &[f64],
) -> Result<(), String> {
    for (k, &(reduce, _)) in kernel.accumulators.iter().enumerate() {
        let (a, b) = (jit[k], reference[k]);
        let ok = if a.is_nan() || b.is_nan() {
            a.is_nan() && b.is_nan()
        } else if a.is_infinite() || b.is_infinite() {
            a == b
        } else if reduce == ReduceOp::Sum {
            (a - b).abs() <= 1e-12 * magnitude[k].max(b.abs())
        } else {
            a == b
        };
        if !ok {
            return Err(format!(
                "accumulator {k} ({reduce:?}): jit {a:e}, reference {b:e}"
            ));
        }
    }
    Ok(())
}

fn load(b: u32) -> Op {
    Op::Load(b)
}

/// A buffer's contents in its storage type.
#[derive(Clone, Debug)]
pub enum Data {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl Data {
    pub fn view(&mut self) -> BufferMut<'_> {
        match self {
            Data::F32(v) => BufferMut::F32(v),
            Data::Bf16(v) => BufferMut::Bf16(v),
        }
    }

    /// The element values as f32 (bf16 widened).
    pub fn widened(&self) -> Vec<f32> {
        match self {
            Data::F32(v) => v.clone(),
            Data::Bf16(v) => v.iter().map(|&b| bf16::widen(b)).collect(),
        }
    }

    /// The first element where `self` and `other` differ (NaNs all alike).
    pub fn first_difference(&self, other: &Data) -> Option<usize> {
        let bf16_same = |a: u16, b: u16| a == b || same(bf16::widen(a), bf16::widen(b));
        match (self, other) {
            (Data::F32(a), Data::F32(b)) => a.iter().zip(b).position(|(x, y)| !same(*x, *y)),
            (Data::Bf16(a), Data::Bf16(b)) => a.iter().zip(b).position(|(x, y)| !bf16_same(*x, *y)),
            _ => Some(0),
        }
    }
}

pub fn views(data: &mut [Data]) -> Vec<BufferMut<'_>> {
    data.iter_mut().map(Data::view).collect()
}

/// Runs a compiled kernel on copies of `data`: the buffers and accumulators after.
pub fn run_typed_copy(
    compiled: &NativeKernel,
    kernel: &Kernel,
    data: &[Data],
    scalars: &[f32],
    range: Range<usize>,
) -> (Vec<Data>, Vec<f64>) {
    let mut out = data.to_vec();
    let mut accs = identities(kernel);
    compiled
        .run_typed(&mut views(&mut out), scalars, &mut accs, range)
        .expect("arguments fit");
    (out, accs)
}

/// The first (buffer, element) where `got` and `want` differ (NaNs all alike).
pub fn first_mismatch(got: &[Data], want: &[Data]) -> Option<(usize, usize)> {
    got.iter()
        .zip(want)
        .enumerate()
        .find_map(|(b, (g, w))| g.first_difference(w).map(|i| (b, i)))
}

/// Builds kernels op by op.
#[derive(Default)]
pub struct KernelBuilder {
    pub kernel: Kernel,
}

impl KernelBuilder {
    pub fn new(buffers: u32, scalars: u32) -> Self {
        KernelBuilder {
            kernel: Kernel {
                buffers,
                scalars,
                storage: vec![Storage::F32; buffers as usize],
                ..Kernel::default()
            },
        }
    }
    pub fn push(&mut self, op: Op) -> u32 {
        self.kernel.ops.push(op);
        (self.kernel.ops.len() - 1) as u32
    }
    pub fn load(&mut self, b: u32) -> u32 {
        self.push(load(b))
    }
    pub fn scalar(&mut self, k: u32) -> u32 {
        self.push(Op::Scalar(k))
    }
    pub fn constant(&mut self, c: f32) -> u32 {
        self.push(Op::Const(c))
    }
    pub fn un(&mut self, op: UnaryOp, a: u32) -> u32 {
        self.push(Op::Unary(op, a))
    }
    pub fn bin(&mut self, op: BinaryOp, a: u32, b: u32) -> u32 {
        self.push(Op::Binary(op, a, b))
    }
    pub fn store(&mut self, b: u32, op: u32) {
        self.kernel.stores.push((b, op));
    }
    pub fn acc(&mut self, r: ReduceOp, op: u32) {
        self.kernel.accumulators.push((r, op));
    }
}

/// Adam with decoupled weight decay. Buffers p, g, m, v (p, m, v in place);
/// scalars lr, beta1, beta2, eps, bias corrections 1 and 2, weight decay.
pub fn adam() -> Kernel {
    use BinaryOp::*;
    let mut k = KernelBuilder::new(4, 7);
    let p = k.load(0);
    let g = k.load(1);
    let m = k.load(2);
    let v = k.load(3);
    let lr = k.scalar(0);
    let b1 = k.scalar(1);
    let b2 = k.scalar(2);
    let eps = k.scalar(3);
    let bc1 = k.scalar(4);
    let bc2 = k.scalar(5);
    let wd = k.scalar(6);
    let one = k.constant(1.0);
    let omb1 = k.bin(Sub, one, b1);
    let omb2 = k.bin(Sub, one, b2);
    let b1m = k.bin(Mul, b1, m);
    let g1 = k.bin(Mul, omb1, g);
    let m2 = k.bin(Add, b1m, g1);
    let b2v = k.bin(Mul, b2, v);
    let gg = k.bin(Mul, g, g);
    let g2 = k.bin(Mul, omb2, gg);
    let v2 = k.bin(Add, b2v, g2);
    let mhat = k.bin(Div, m2, bc1);
    let vhat = k.bin(Div, v2, bc2);
    let root = k.un(UnaryOp::Sqrt, vhat);
    let den = k.bin(Add, root, eps);
    let step = k.bin(Div, mhat, den);
    let decay = k.bin(Mul, wd, p);
    let upd = k.bin(Add, step, decay);
    let scaled = k.bin(Mul, lr, upd);
    let p2 = k.bin(Sub, p, scaled);
    k.store(0, p2);
    k.store(2, m2);
    k.store(3, v2);
    k.kernel
}

/// Adam's scalars for step `t`.
pub fn adam_scalars(t: i32) -> Vec<f32> {
    let (b1, b2) = (0.9f32, 0.999f32);
    vec![1e-3, b1, b2, 1e-8, 1.0 - b1.powi(t), 1.0 - b2.powi(t), 0.01]
}

/// Lion: p -= lr (sign(lerp(g, m, beta1)) + wd p); m = lerp(g, m, beta2).
/// Buffers p, g, m; scalars lr, beta1, beta2, wd.
pub fn lion() -> Kernel {
    use BinaryOp::*;
    let mut k = KernelBuilder::new(3, 4);
    let p = k.load(0);
    let g = k.load(1);
    let m = k.load(2);
    let lr = k.scalar(0);
    let b1 = k.scalar(1);
    let b2 = k.scalar(2);
    let wd = k.scalar(3);
    let c = k.push(Op::Lerp(g, m, b1));
    let s = k.un(UnaryOp::Sign, c);
    let decay = k.bin(Mul, wd, p);
    let upd = k.bin(Add, s, decay);
    let scaled = k.bin(Mul, lr, upd);
    let p2 = k.bin(Sub, p, scaled);
    let m2 = k.push(Op::Lerp(g, m, b2));
    k.store(0, p2);
    k.store(2, m2);
    k.kernel
}

/// Reductions over g: sum of squares, max |g|, min g, sum of positive parts,
/// count of NaNs; stores clip(g, -c, c) with a select chain.
pub fn reductions() -> Kernel {
    use BinaryOp::*;
    let mut k = KernelBuilder::new(2, 1);
    let g = k.load(0);
    let c = k.scalar(0);
    let gg = k.bin(Mul, g, g);
    let ag = k.un(UnaryOp::Abs, g);
    let zero = k.constant(0.0);
    let pos = k.bin(Gt, g, zero);
    let posg = k.push(Op::Select(pos, g, zero));
    let nan = k.bin(Ne, g, g);
    let nc = k.un(UnaryOp::Neg, c);
    let above = k.bin(Gt, g, c);
    let below = k.bin(Lt, g, nc);
    let hi = k.push(Op::Select(above, c, g));
    let clipped = k.push(Op::Select(below, nc, hi));
    k.acc(ReduceOp::Sum, gg);
    k.acc(ReduceOp::Max, ag);
    k.acc(ReduceOp::Min, g);
    k.acc(ReduceOp::Sum, posg);
    k.acc(ReduceOp::Sum, nan);
    k.store(1, clipped);
    k.kernel
}

/// Every approximated op applied to loads and stored directly: buffers x,
/// y, then exp(x), log(x), tanh(x), sigmoid(x), cos(x), cbrt(x), pow(x, y).
pub fn transcendentals() -> Kernel {
    let mut k = KernelBuilder::new(9, 0);
    let x = k.load(0);
    let y = k.load(1);
    for (b, op) in [
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Cos,
        UnaryOp::Cbrt,
    ]
    .into_iter()
    .enumerate()
    {
        let r = k.un(op, x);
        k.store(2 + b as u32, r);
    }
    let r = k.bin(BinaryOp::Pow, x, y);
    k.store(8, r);
    k.kernel
}

// ---- random kernels -------------------------------------------------------

pub const UNARY: [UnaryOp; 13] = [
    UnaryOp::Neg,
    UnaryOp::Not,
    UnaryOp::Abs,
    UnaryOp::Sign,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Floor,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Cos,
    UnaryOp::Cbrt,
];
/// The first 7 are exact.
pub const EXACT_UNARY: usize = 7;

pub const BINARY: [BinaryOp; 15] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Min,
    BinaryOp::Max,
    BinaryOp::Eq,
    BinaryOp::Ne,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Gt,
    BinaryOp::Ge,
    BinaryOp::And,
    BinaryOp::Or,
    BinaryOp::Pow,
];
pub const EXACT_BINARY: usize = 14;

/// One op's recipe: a kind and operand choices (reduced modulo the index).
pub type Recipe = (u8, u8, u32, u32, u32);

/// The kernel the recipes describe (operands and buffers reduced into range).
fn build(
    buffers: u32,
    scalars: u32,
    recipes: &[Recipe],
    stores: &[(u32, u32)],
    accs: &[(u8, u32)],
    approximate: bool,
) -> Kernel {
    let mut ops = Vec::new();
    for (i, &(kind, sub, a, b, c)) in recipes.iter().enumerate() {
        let i = i as u32;
        let pick = |x: u32| x % i;
        let leaf = i == 0 || kind < 3;
        let op = if leaf {
            match kind % 3 {
                0 => Op::Load(a % buffers),
                1 if scalars > 0 => Op::Scalar(a % scalars),
                _ => Op::Const(SPECIALS[(a % SPECIALS.len() as u32) as usize]),
            }
        } else {
            let unary = if approximate {
                UNARY.len()
            } else {
                EXACT_UNARY
            };
            let binary = if approximate {
                BINARY.len()
            } else {
                EXACT_BINARY
            };
            match kind % 4 {
                0 => Op::Unary(UNARY[sub as usize % unary], pick(a)),
                1 => Op::Binary(BINARY[sub as usize % binary], pick(a), pick(b)),
                2 => Op::Select(pick(a), pick(b), pick(c)),
                _ => Op::Lerp(pick(a), pick(b), pick(c)),
            }
        };
        ops.push(op);
    }
    let n = ops.len() as u32;
    let mut stored = Vec::new();
    let mut kernel_stores = Vec::new();
    for &(b, op) in stores {
        let b = b % buffers;
        if !stored.contains(&b) {
            stored.push(b);
            kernel_stores.push((b, n - 1 - op % n.min(4)));
        }
    }
    let reduce = [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min];
    Kernel {
        ops,
        stores: kernel_stores,
        accumulators: accs
            .iter()
            .map(|&(r, op)| (reduce[r as usize % 3], op % n))
            .collect(),
        buffers,
        scalars,
        storage: vec![Storage::F32; buffers as usize],
        rounding: Rounding::NearestEven,
    }
}

/// Random kernels of 1 to 27 ops over 1 to 3 buffers and up to 2 scalars,
/// with up to 2 stores and 2 accumulators; all buffers f32.
pub fn kernels(approximate: bool) -> impl Strategy<Value = Kernel> {
    (
        1u32..4,
        0u32..3,
        prop::collection::vec(
            (
                0u8..12,
                any::<u8>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
            ),
            1..28,
        ),
        prop::collection::vec((any::<u32>(), any::<u32>()), 0..3),
        prop::collection::vec((any::<u8>(), any::<u32>()), 0..3),
    )
        .prop_map(move |(buffers, scalars, recipes, stores, accs)| {
            build(buffers, scalars, &recipes, &stores, &accs, approximate)
        })
}

/// Random kernels with a random storage type per buffer and, half the time,
/// stochastic rounding seeded by an extra last scalar.
pub fn mixed_kernels(approximate: bool) -> impl Strategy<Value = Kernel> {
    (kernels(approximate), any::<u8>(), any::<bool>()).prop_map(
        |(mut kernel, bf16_buffers, stochastic)| {
            kernel.storage = (0..kernel.buffers)
                .map(|b| match (bf16_buffers >> b) & 1 {
                    1 => Storage::Bf16,
                    _ => Storage::F32,
                })
                .collect();
            if stochastic {
                kernel.rounding = Rounding::Stochastic {
                    seed_scalar: kernel.scalars,
                };
                kernel.scalars += 1;
            }
            kernel
        },
    )
}

/// Proptest settings of the random-kernel tests: 1000 cases (200 in debug
/// builds).
pub fn random_kernel_config() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(debug_assertions) { 200 } else { 1000 },
        ..ProptestConfig::default()
    }
}

/// Random buffers (of any element type) and scalars for a kernel and range.
pub type Inputs<D> = fn(&Kernel, &mut Rng, &Range<usize>) -> (Vec<D>, Vec<f32>);
/// Checks a compiled kernel against its reference on given inputs.
pub type Compare<D> = fn(&Kernel, &NativeKernel, &[D], &[f32], Range<usize>) -> Result<(), String>;

/// Compiles `kernel` and checks it with `compare` on every length of
/// [`LENGTHS`] at a random offset, fresh `inputs` each.
pub fn random_case<D>(
    kernel: &Kernel,
    seed: u64,
    inputs: Inputs<D>,
    compare: Compare<D>,
) -> Result<(), TestCaseError> {
    let mut jit = Jit::new().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let compiled = jit
        .compile(kernel)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut rng = Rng(seed | 1);
    for &len in &LENGTHS {
        let start = rng.below(6) as usize;
        let range = start..start + len;
        let (data, scalars) = inputs(kernel, &mut rng, &range);
        compare(kernel, &compiled, &data, &scalars, range).map_err(TestCaseError::fail)?;
    }
    Ok(())
}
