//! Kernels: what a backend compiles. A kernel is one pass over a range of
//! elements of one tensor: a straight-line SSA program of elementwise
//! operations that loads from buffers, reads f32 scalars, stores to buffers
//! and accumulates reductions in f64. The planner (`plan.rs`) cuts a rule
//! into kernels; [`run`] here is their reference semantics, which every
//! backend must reproduce (bit-exactly, except where a backend approximates a
//! transcendental, within the tolerance it documents).
//!
//! # Storage
//!
//! Every buffer has a [`Storage`] type, f32 or bf16 (the top 16 bits of an
//! f32: sign, 8 exponent bits, 7 mantissa bits), while computation is always
//! f32. Loading a bf16 element widens it exactly (its bits shifted left by
//! 16, [`bf16::widen`]). Storing an f32 value to a bf16 buffer rounds it as
//! the kernel's [`Rounding`] says:
//!
//! * [`Rounding::NearestEven`] (the default): IEEE round to nearest, ties to
//!   even, on the bit pattern ([`bf16::round_nearest_even`]). Subnormals
//!   round like normal numbers (bf16 has f32's exponent range), finite values
//!   from halfway between the largest bf16 (`0x7F7F`, about 3.39e38) and
//!   2^128 upwards become infinities of their sign, infinities stay
//!   infinities, and a NaN stays a NaN of its sign, quieted (its top 7
//!   mantissa bits are kept and the quiet bit is set, so a NaN whose payload
//!   lies in the low 16 bits never turns into an infinity).
//! * [`Rounding::Stochastic`]: the f32 pattern plus 16 random bits, then
//!   truncated to its top 16 bits ([`bf16::round_stochastic`]): a value
//!   between two neighbouring bf16 values rounds up with probability equal
//!   to its distance from the lower one in units of their gap, so rounding is
//!   unbiased on average. Infinities and NaNs come out as under
//!   `NearestEven`; finite values can round up to an infinity (with
//!   probability in proportion, as above). The random bits are a hash of the
//!   32-bit seed (the bit pattern of the f32 scalar argument the setting
//!   names), the buffer number and the element index ([`bf16::random_bits`]),
//!   so a result depends only on (seed, buffer, index, value): never on
//!   threads, chunking of the range or a backend's vector position.
//!
//! The hash is a counter-based generator in the style of SplitMix. Buffers
//! `2k` and `2k + 1` share stream `k`, whose key under a seed is
//! `mix32(seed ^ mix32(k))`; element `i` of the stream draws the 32 bits
//! `mix32(key + i * 0x9E3779B9)` (wrapping 32-bit arithmetic; `i` is taken
//! modulo 2^32, so a stream repeats every 4G elements), of which buffer `2k`
//! adds the low 16 and buffer `2k + 1` the high 16. `mix32` is Wellons'
//! "lowbias32" integer finaliser: `x ^= x >> 16; x *= 0x7FEB352D;
//! x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16`, a bijection with good
//! avalanche. A SIMD backend pays two 32-bit lane multiplies (SSE4.1
//! `pmulld`) and three shift-xors per vector of draws, and one draw serves
//! two stored buffers when they are neighbours (the planner numbers state
//! buffers consecutively, so Adam's two moments are); the Weyl step
//! `i * 0x9E3779B9` costs one scalar multiply per vector of consecutive
//! elements.
//!
//! # Accumulation order of compiled kernels
//!
//! [`run`] sums an accumulator sequentially; vector backends cannot, so the
//! order they use is fixed here, once for every tier, and depends only on
//! the kernel and the range's length (never on vector width, timing or
//! threads): with `P` = [`Kernel::accumulator_partials`] (8, or 4 for bodies
//! heavy with transcendentals), the element at offset `t` from the range's
//! start goes to f64 partial `t mod P`; each partial combines its elements
//! in increasing order, starting from the identity; at the end the partials
//! are folded as `q[j] = p[4u + j] + p[4u + 2 + j]` per group of four
//! (`j` in 0..2), the groups' pairs combined in order of `u`, then the two
//! lanes of the result, and the total combined into the caller's value.
//! Sums thus agree with the sequential reference within the usual bound for
//! reordered f64 sums, and every compiled tier agrees with every other bit
//! for bit. Max and min are exact and, like the reference, ignore NaN.
//!
//! Buffers are passed to [`run_raw`] (and to compiled kernels) as `*mut f32`
//! pointers to element 0; for a bf16 buffer that pointer is a `*mut u16` to
//! its bit patterns, cast (it need only be 2-byte aligned and is never read
//! as f32). The safe [`run_typed`] takes each buffer as a [`BufferMut`].

use crate::interpret::{binary, lerp, select, unary};
use crate::ir::{BinaryOp, ReduceOp, UnaryOp};

/// One elementwise operation; operands are indices of earlier operations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// Element `i` of buffer `b`.
    Load(u32),
    /// Scalar argument `k` (a group or tensor value rounded to f32 by the caller).
    Scalar(u32),
    Const(f32),
    Unary(UnaryOp, u32),
    Binary(BinaryOp, u32, u32),
    /// `select(cond, a, b)`; conditions are 1.0 or 0.0 like every bool.
    Select(u32, u32, u32),
    Lerp(u32, u32, u32),
}

/// How a buffer's elements are held in memory (computation is always f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Storage {
    /// 4-byte IEEE single precision.
    #[default]
    F32,
    /// 2-byte bfloat16: the top half of an f32's bit pattern.
    Bf16,
}

impl Storage {
    /// Its name, as checkpoints record element types.
    pub fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::Bf16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::Bf16 => 2,
        }
    }
}

/// How stores to bf16 buffers round their f32 values (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// Round to nearest, ties to even.
    #[default]
    NearestEven,
    /// Stochastic rounding; scalar argument `seed_scalar` carries the 32-bit
    /// seed as its bit pattern (`f32::from_bits(seed)`).
    Stochastic { seed_scalar: u32 },
}

/// One pass: `ops` in order for every element index in the range, then the
/// stores and the accumulations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Kernel {
    pub ops: Vec<Op>,
    /// `(buffer, op)`: `buffer[i]` = value of op at element i. A buffer is
    /// stored at most once; stores happen after every load of the element.
    pub stores: Vec<(u32, u32)>,
    /// `(reduction, op)`: accumulator k combines the op's value over the range,
    /// in f64 (sum, max or min).
    pub accumulators: Vec<(ReduceOp, u32)>,
    /// Buffers the kernel reads or writes (pointer arguments).
    pub buffers: u32,
    /// Scalar arguments.
    pub scalars: u32,
    /// The storage type of each buffer: exactly `buffers` entries.
    pub storage: Vec<Storage>,
    /// How stores to bf16 buffers round (f32 stores are exact).
    pub rounding: Rounding,
}

impl Kernel {
    /// The starting value of an accumulator.
    pub fn identity(op: ReduceOp) -> f64 {
        match op {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max => f64::NEG_INFINITY,
            ReduceOp::Min => f64::INFINITY,
        }
    }

    /// How many f64 partials each accumulator of a compiled kernel is split
    /// into (see "Accumulation order" in the module docs): 8, or 4 when the
    /// per-element work is heavier than [`HEAVY_BODY`] (a vector backend
    /// then unrolls less, which halves the compile time of
    /// transcendental-heavy kernels at a few percent of their throughput).
    pub fn accumulator_partials(&self) -> usize {
        if self.body_weight() > HEAVY_BODY {
            4
        } else {
            8
        }
    }

    /// Rough instructions per element of the ops that depend on a load and
    /// reach a store or an accumulator (a transcendental counts 50, `pow`
    /// 100, anything else 1).
    fn body_weight(&self) -> usize {
        let an = analyse(self);
        self.ops
            .iter()
            .enumerate()
            .filter(|&(i, _)| an.live[i] && an.variant[i])
            .map(|(_, op)| match op {
                Op::Unary(u, _) if is_transcendental(*u) => 50,
                Op::Binary(BinaryOp::Pow, _, _) => 100,
                _ => 1,
            })
            .sum()
    }

    /// The buffers the kernel loads, each once, in increasing order.
    pub fn loaded_buffers(&self) -> Vec<u32> {
        let mut loads: Vec<u32> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Load(b) => Some(*b),
                _ => None,
            })
            .collect();
        loads.sort_unstable();
        loads.dedup();
        loads
    }

    /// Bytes one element costs: its loads and stores, each at its buffer's
    /// storage size.
    pub fn bytes_per_element(&self) -> usize {
        let bytes = |b: u32| self.storage[b as usize].bytes();
        let loads: usize = self.loaded_buffers().into_iter().map(bytes).sum();
        let stores: usize = self.stores.iter().map(|&(b, _)| bytes(b)).sum();
        loads + stores
    }

    /// Combines two partial results of an accumulator.
    pub fn combine(op: ReduceOp, a: f64, b: f64) -> f64 {
        match op {
            ReduceOp::Sum => a + b,
            ReduceOp::Max => a.max(b),
            ReduceOp::Min => a.min(b),
        }
    }
}

/// What each live op of a kernel is needed for: what a code generator asks
/// before emitting it.
pub struct Analysis {
    /// Reaches a store or an accumulator.
    pub live: Vec<bool>,
    /// Depends on a load (otherwise computable once, before the loop).
    pub variant: Vec<bool>,
    /// Needed as an f32 value / as a lane mask (bools as comparisons give them).
    pub need_val: Vec<bool>,
    pub need_mask: Vec<bool>,
    /// Buffers loaded by live loads, increasing.
    pub loaded: Vec<u32>,
}

/// `(operand, used as a mask)` of an op.
pub fn operands(op: &Op) -> Vec<(u32, bool)> {
    match *op {
        Op::Load(_) | Op::Scalar(_) | Op::Const(_) => vec![],
        Op::Unary(UnaryOp::Not, a) => vec![(a, true)],
        Op::Unary(_, a) => vec![(a, false)],
        Op::Binary(BinaryOp::And | BinaryOp::Or, a, b) => vec![(a, true), (b, true)],
        Op::Binary(_, a, b) => vec![(a, false), (b, false)],
        Op::Select(c, a, b) => vec![(c, true), (a, false), (b, false)],
        Op::Lerp(a, b, w) => vec![(a, false), (b, false), (w, false)],
    }
}

/// The [`Analysis`] of `kernel`.
pub fn analyse(kernel: &Kernel) -> Analysis {
    let n = kernel.ops.len();
    let mut live = vec![false; n];
    let mut need_val = vec![false; n];
    let mut need_mask = vec![false; n];
    let roots = kernel.stores.iter().map(|&(_, op)| op);
    for op in roots.chain(kernel.accumulators.iter().map(|&(_, op)| op)) {
        live[op as usize] = true;
        need_val[op as usize] = true;
    }
    for i in (0..n).rev() {
        if !live[i] {
            continue;
        }
        for (a, as_mask) in operands(&kernel.ops[i]) {
            live[a as usize] = true;
            if as_mask {
                need_mask[a as usize] = true;
            } else {
                need_val[a as usize] = true;
            }
        }
    }
    let mut variant = vec![false; n];
    let mut loaded = Vec::new();
    for (i, op) in kernel.ops.iter().enumerate() {
        variant[i] = match op {
            Op::Load(b) => {
                if live[i] && !loaded.contains(b) {
                    loaded.push(*b);
                }
                true
            }
            other => operands(other).iter().any(|&(a, _)| variant[a as usize]),
        };
    }
    loaded.sort_unstable();
    Analysis {
        live,
        variant,
        need_val,
        need_mask,
        loaded,
    }
}

/// The per-element weight above which compiled kernels use 4 accumulator
/// partials instead of 8 ([`Kernel::accumulator_partials`]).
pub const HEAVY_BODY: usize = 100;

/// A buffer's elements as the safe entry points take them.
#[derive(Debug)]
pub enum BufferMut<'a> {
    F32(&'a mut [f32]),
    /// bf16 bit patterns.
    Bf16(&'a mut [u16]),
}

impl BufferMut<'_> {
    pub fn storage(&self) -> Storage {
        match self {
            BufferMut::F32(_) => Storage::F32,
            BufferMut::Bf16(_) => Storage::Bf16,
        }
    }

    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        match self {
            BufferMut::F32(b) => b.len(),
            BufferMut::Bf16(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element 0, as [`run_raw`] and compiled kernels take buffer pointers.
    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        match self {
            BufferMut::F32(b) => b.as_mut_ptr(),
            BufferMut::Bf16(b) => b.as_mut_ptr().cast(),
        }
    }
}

impl<'a> From<&'a mut [f32]> for BufferMut<'a> {
    fn from(elements: &'a mut [f32]) -> Self {
        BufferMut::F32(elements)
    }
}

impl<'a> From<&'a mut [u16]> for BufferMut<'a> {
    fn from(elements: &'a mut [u16]) -> Self {
        BufferMut::Bf16(elements)
    }
}

/// Reference semantics of a kernel whose buffers are all f32: [`run_typed`]
/// with every buffer an f32 slice (so a kernel with a bf16 buffer does
/// nothing here).
pub fn run(
    kernel: &Kernel,
    buffers: &mut [&mut [f32]],
    scalars: &[f32],
    accumulators: &mut [f64],
    range: std::ops::Range<usize>,
) {
    let mut typed: Vec<BufferMut> = buffers.iter_mut().map(|b| BufferMut::F32(b)).collect();
    run_typed(kernel, &mut typed, scalars, accumulators, range);
}

/// Reference semantics: runs `kernel` over elements `range` of `buffers`,
/// combining into `accumulators` (which the caller initialises, usually with
/// [`Kernel::identity`]). Elements are processed in increasing order. Does
/// nothing unless every buffer has the kernel's storage type for it and
/// holds the range.
pub fn run_typed(
    kernel: &Kernel,
    buffers: &mut [BufferMut],
    scalars: &[f32],
    accumulators: &mut [f64],
    range: std::ops::Range<usize>,
) {
    let fits = kernel.storage.len() == kernel.buffers as usize
        && buffers.len() >= kernel.storage.len()
        && buffers.iter().enumerate().all(|(b, buffer)| {
            let storage = kernel.storage.get(b).copied();
            range.end <= buffer.len() && storage.is_none_or(|s| s == buffer.storage())
        });
    let pointers: Vec<*mut f32> = buffers.iter_mut().map(|b| b.as_mut_ptr()).collect();
    if fits && range.start <= range.end {
        // SAFETY: every buffer holds the range in its kernel's storage type,
        // and the &mut borrows make them distinct.
        unsafe { run_raw(kernel, &pointers, scalars, accumulators, range) }
    }
}

/// [`run_typed`] over raw buffer pointers, as a runtime calls kernels: `g` is
/// shared (never stored to), `p` and state are updated in place. A pointer
/// points at element 0 of its buffer: an `f32` for f32 storage, a `u16` bit
/// pattern (pointer cast to `*mut f32`) for bf16 storage.
///
/// # Safety
/// Every pointer must be valid for reads of the whole range (in its buffer's
/// storage type), and for writes of it where the kernel stores; distinct
/// buffers must not overlap.
pub unsafe fn run_raw(
    kernel: &Kernel,
    buffers: &[*mut f32],
    scalars: &[f32],
    accumulators: &mut [f64],
    range: std::ops::Range<usize>,
) {
    let seed = match kernel.rounding {
        Rounding::NearestEven => None,
        Rounding::Stochastic { seed_scalar } => Some(scalars[seed_scalar as usize].to_bits()),
    };
    let mut values = vec![0.0f32; kernel.ops.len()];
    for i in range {
        for (slot, op) in kernel.ops.iter().enumerate() {
            let v = |k: u32| values[k as usize];
            values[slot] = match *op {
                // SAFETY: the caller guarantees the pointer holds element i
                // in the buffer's storage type.
                Op::Load(b) => unsafe {
                    let at = buffers[b as usize];
                    match kernel.storage[b as usize] {
                        Storage::F32 => *at.add(i),
                        Storage::Bf16 => bf16::widen(*at.cast::<u16>().add(i)),
                    }
                },
                Op::Scalar(k) => scalars[k as usize],
                Op::Const(c) => c,
                Op::Unary(op, a) => unary::<f32>(op, v(a)),
                Op::Binary(op, a, b) => binary::<f32>(op, v(a), v(b)),
                Op::Select(c, a, b) => select::<f32>(v(c), v(a), v(b)),
                Op::Lerp(a, b, w) => lerp::<f32>(v(a), v(b), v(w)),
            };
        }
        for (acc, &(op, value)) in accumulators.iter_mut().zip(&kernel.accumulators) {
            *acc = Kernel::combine(op, *acc, f64::from(values[value as usize]));
        }
        for &(buffer, value) in &kernel.stores {
            let x = values[value as usize];
            let at = buffers[buffer as usize];
            // SAFETY: as for loads; stored buffers are writable.
            unsafe {
                match kernel.storage[buffer as usize] {
                    Storage::F32 => *at.add(i) = x,
                    Storage::Bf16 => {
                        *at.cast::<u16>().add(i) = match seed {
                            None => bf16::round_nearest_even(x),
                            Some(seed) => {
                                bf16::round_stochastic(x, bf16::random_bits(seed, buffer, i))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// bf16 conversions and the stochastic-rounding hash: the scalar definitions
/// every backend reproduces bit for bit (see the `kernel` module docs).
pub mod bf16 {
    /// `mix32`'s rounds: `x ^= x >> shift; x *= multiplier`, in order...
    pub const MIX32_ROUNDS: [(u32, u32); 2] = [(16, 0x7FEB_352D), (15, 0x846C_A68B)];
    /// ...then a last `x ^= x >> MIX32_FINAL_SHIFT`.
    pub const MIX32_FINAL_SHIFT: u32 = 16;
    /// The Weyl step between consecutive elements' hash inputs (2^32 / phi).
    pub const INDEX_STEP: u32 = 0x9E37_79B9;
    /// The f32 quiet-NaN bit, which is also bf16's.
    pub const QUIET_BIT: u32 = 0x0040_0000;

    /// The exact f32 value of a bf16 bit pattern.
    pub fn widen(bits: u16) -> f32 {
        f32::from_bits(u32::from(bits) << 16)
    }

    /// `x` rounded to the nearest bf16, ties to even; NaN stays NaN (quiet).
    pub fn round_nearest_even(x: f32) -> u16 {
        let lowest_kept = (x.to_bits() >> 16) & 1;
        round_up_from(x, 0x7FFF + lowest_kept)
    }

    /// `x` rounded stochastically with `random`'s low 16 bits: up with
    /// probability (low 16 bits of `x`) / 2^16 when they are uniform.
    pub fn round_stochastic(x: f32, random: u32) -> u16 {
        round_up_from(x, random & 0xFFFF)
    }

    /// The top half of `x`'s pattern plus `increment` (below 2^16), which
    /// carries into the top half when the low half overflows; NaNs quieted.
    /// Never wraps: the largest non-NaN pattern is `0xFF80_0000`.
    fn round_up_from(x: f32, increment: u32) -> u16 {
        let bits = x.to_bits();
        let rounded = if x.is_nan() {
            bits | QUIET_BIT
        } else {
            bits + increment
        };
        (rounded >> 16) as u16
    }

    /// Wellons' lowbias32 finaliser: a bijection of u32 with good avalanche.
    pub fn mix32(mut x: u32) -> u32 {
        for (shift, multiplier) in MIX32_ROUNDS {
            x ^= x >> shift;
            x = x.wrapping_mul(multiplier);
        }
        x ^ (x >> MIX32_FINAL_SHIFT)
    }

    /// The random stream that buffer `buffer` draws from: one per pair of
    /// neighbouring buffers.
    pub fn stream(buffer: u32) -> u32 {
        buffer / 2
    }

    /// The key of random stream `stream` under `seed`.
    pub fn stream_key(seed: u32, stream: u32) -> u32 {
        mix32(seed ^ mix32(stream))
    }

    /// The 32 bits stream `stream` draws for element `index` (modulo 2^32).
    pub fn draw(seed: u32, stream: u32, index: usize) -> u32 {
        let counter = (index as u32).wrapping_mul(INDEX_STEP);
        mix32(stream_key(seed, stream).wrapping_add(counter))
    }

    /// Which 16 bits of its stream's draw buffer `buffer` uses: the low half
    /// for even buffers, the high half for odd ones.
    pub fn draw_shift(buffer: u32) -> u32 {
        16 * (buffer % 2)
    }

    /// The 16 random bits that stochastic rounding adds to element `index` of
    /// buffer `buffer` under `seed`.
    pub fn random_bits(seed: u32, buffer: u32, index: usize) -> u32 {
        (draw(seed, stream(buffer), index) >> draw_shift(buffer)) & 0xFFFF
    }
}

/// Checks that `kernel` is well formed: operands refer to earlier ops,
/// buffer and scalar indices are below the kernel's counts, stores and
/// accumulators name existing ops, no buffer is stored twice, every buffer
/// has a storage type, and a stochastic-rounding seed is an existing scalar.
pub fn validate(kernel: &Kernel) -> Result<(), String> {
    let invalid = |m: String| Err(m);
    let n = kernel.ops.len();
    if kernel.storage.len() != kernel.buffers as usize {
        return invalid(format!(
            "{} storage types for {} buffers",
            kernel.storage.len(),
            kernel.buffers
        ));
    }
    if let Rounding::Stochastic { seed_scalar } = kernel.rounding {
        if seed_scalar >= kernel.scalars {
            return invalid(format!(
                "stochastic rounding seed is scalar {seed_scalar} of {}",
                kernel.scalars
            ));
        }
    }
    for (i, op) in kernel.ops.iter().enumerate() {
        let operands: &[u32] = match op {
            Op::Load(b) => {
                if *b >= kernel.buffers {
                    return invalid(format!("op {i} loads buffer {b} of {}", kernel.buffers));
                }
                &[]
            }
            Op::Scalar(k) => {
                if *k >= kernel.scalars {
                    return invalid(format!("op {i} reads scalar {k} of {}", kernel.scalars));
                }
                &[]
            }
            Op::Const(_) => &[],
            Op::Unary(_, a) => &[*a],
            Op::Binary(_, a, b) => &[*a, *b],
            Op::Select(a, b, c) | Op::Lerp(a, b, c) => &[*a, *b, *c],
        };
        if let Some(a) = operands.iter().find(|&&a| a as usize >= i) {
            return invalid(format!("op {i} uses op {a}, which is not earlier"));
        }
    }
    let mut stored = Vec::new();
    for &(b, op) in &kernel.stores {
        if b >= kernel.buffers {
            return invalid(format!("store to buffer {b} of {}", kernel.buffers));
        }
        if op as usize >= n {
            return invalid(format!("store of op {op} of {n}"));
        }
        if stored.contains(&b) {
            return invalid(format!("buffer {b} is stored twice"));
        }
        stored.push(b);
    }
    for &(_, op) in &kernel.accumulators {
        if op as usize >= n {
            return invalid(format!("accumulator over op {op} of {n}"));
        }
    }
    Ok(())
}

/// Operations a backend may approximate, with the accuracy it must meet.
pub fn is_transcendental(op: UnaryOp) -> bool {
    matches!(
        op,
        UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Tanh
            | UnaryOp::Sigmoid
            | UnaryOp::Cos
            | UnaryOp::Cbrt
    )
}

/// `pow` is approximated too (as `exp(b log a)` with the sign rules of `powf`).
pub fn is_approximated(op: BinaryOp) -> bool {
    op == BinaryOp::Pow
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round to nearest even the long way: compare the distances to the two
    /// bf16 neighbours in f64 (exact), with 2^128 standing for the value
    /// past the largest bf16, as IEEE overflow rounding defines it.
    fn nearest_even_by_distance(x: f32) -> u16 {
        let bits = x.to_bits();
        let truncated = (bits >> 16) as u16;
        if x.is_nan() {
            return truncated | 0x40;
        }
        if x.is_infinite() {
            return truncated;
        }
        let larger = truncated + 1;
        let magnitude = |b: u16| match b & 0x7FFF {
            0x7F80 => 2f64.powi(128),
            m => f64::from(bf16::widen(m)),
        };
        let below = f64::from(x.abs()) - magnitude(truncated);
        let above = magnitude(larger) - f64::from(x.abs());
        if below < above || (below == above && truncated & 1 == 0) {
            truncated
        } else {
            larger
        }
    }

    /// Runs `check` on f32 patterns `0..2^32` in steps of `stride`, on every core.
    fn sweep_patterns(stride: u64, check: impl Fn(u32) + Sync) {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let per_thread = (1u64 << 32).div_ceil(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let check = &check;
                s.spawn(move || {
                    let first = (t * per_thread).div_ceil(stride) * stride;
                    let end = ((t + 1) * per_thread).min(1 << 32);
                    for bits in (first..end).step_by(stride as usize) {
                        check(bits as u32);
                    }
                });
            }
        });
    }

    #[test]
    fn nearest_even_matches_rounding_by_distance_on_every_f32() {
        // Every pattern in release builds; every 257th (all low halves still
        // occur) in debug builds.
        let stride = if cfg!(debug_assertions) { 257 } else { 1 };
        sweep_patterns(stride, |bits| {
            let x = f32::from_bits(bits);
            let got = bf16::round_nearest_even(x);
            if got != nearest_even_by_distance(x) {
                panic!(
                    "{bits:#010x}: got {got:#06x}, want {:#06x}",
                    nearest_even_by_distance(x)
                );
            }
        });
    }

    #[test]
    fn rounding_keeps_specials() {
        use bf16::{round_nearest_even as rne, round_stochastic as sr};
        for random in [0, 0x7FFF, 0xFFFF] {
            for x in [f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0] {
                assert_eq!(rne(x), (x.to_bits() >> 16) as u16);
                assert_eq!(sr(x, random), (x.to_bits() >> 16) as u16);
            }
            for nan in [0x7FC0_0000, 0xFF80_0001, 0x7F80_8000, 0xFFBF_FFFF] {
                let x = f32::from_bits(nan);
                for rounded in [rne(x), sr(x, random)] {
                    assert_eq!(rounded, (nan >> 16) as u16 | 0x40, "{nan:#x}");
                    assert!(bf16::widen(rounded).is_nan());
                }
            }
        }
        // Past the largest bf16: infinity from the halfway point on (a tie
        // goes to the even infinity pattern), stochastically only when the
        // random bits carry.
        assert_eq!(rne(f32::from_bits(0x7F7F_7FFF)), 0x7F7F);
        assert_eq!(rne(f32::from_bits(0x7F7F_8000)), 0x7F80);
        assert_eq!(rne(f32::MIN), 0xFF80);
        assert_eq!(sr(f32::MAX, 0), 0x7F7F);
        assert_eq!(sr(f32::MAX, 1), 0x7F80);
        // Subnormals round like normal numbers.
        assert_eq!(rne(f32::from_bits(0x0000_8000)), 0x0000);
        assert_eq!(rne(f32::from_bits(0x0001_8000)), 0x0002);
        assert_eq!(rne(f32::from_bits(0x807F_FFFF)), 0x8080);
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        let samples = if cfg!(debug_assertions) {
            1 << 16
        } else {
            1 << 20
        };
        let cases = [
            (1.0 + 1.0 / 3.0 * 2f32.powi(-7), 7, 0),
            (-3.7e-3, 8, 3),
            (1.0e-40, 9, 1),
            (3.0e38, 10, 2),
            (f32::from_bits(0x3F80_0001), 11, 5),
            (f32::from_bits(0xBF80_FFFF), 12, 4),
        ];
        for (x, seed, buffer) in cases {
            let below = bf16::widen((x.to_bits() >> 16) as u16);
            let above = bf16::widen((x.to_bits() >> 16) as u16 + 1);
            let mut sum = 0.0f64;
            for i in 0..samples {
                let r = bf16::widen(bf16::round_stochastic(
                    x,
                    bf16::random_bits(seed, buffer, i),
                ));
                assert!(r == below || r == above, "{x:e} rounded to {r:e}");
                sum += f64::from(r);
            }
            let mean = sum / samples as f64;
            let gap = f64::from(above) - f64::from(below);
            let p = (f64::from(x) - f64::from(below)) / gap;
            let standard_error = gap.abs() * (p * (1.0 - p) / samples as f64).sqrt();
            assert!(
                (mean - f64::from(x)).abs() <= 5.0 * standard_error,
                "{x:e}: mean {mean:e}, standard error {standard_error:e}"
            );
        }
    }

    #[test]
    fn random_streams_are_uniform_and_differ_by_seed_and_buffer() {
        let n = 1 << 16;
        let streams = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (0x8000_0000, 7)];
        for (seed, buffer) in streams {
            let mut bins = [0u32; 16];
            for i in 0..n {
                bins[(bf16::random_bits(seed, buffer, i) >> 12) as usize] += 1;
            }
            let expected = n as f64 / 16.0;
            let sd = (expected * 15.0 / 16.0).sqrt();
            for count in bins {
                assert!((f64::from(count) - expected).abs() <= 5.0 * sd, "{bins:?}");
            }
        }
        for (k, &(seed_a, buffer_a)) in streams.iter().enumerate() {
            for &(seed_b, buffer_b) in &streams[k + 1..] {
                let equal = (0..n)
                    .filter(|&i| {
                        bf16::random_bits(seed_a, buffer_a, i)
                            == bf16::random_bits(seed_b, buffer_b, i)
                    })
                    .count();
                // 1 in 2^16 by chance.
                assert!(equal <= 10, "{equal} equal draws");
            }
        }
    }

    /// Buffers x (bf16), y (f32) -> f32 copy of x, bf16 rounding of y.
    fn widen_and_round() -> Kernel {
        Kernel {
            ops: vec![Op::Load(0), Op::Load(1)],
            stores: vec![(2, 0), (3, 1)],
            accumulators: vec![(crate::ir::ReduceOp::Sum, 1)],
            buffers: 4,
            scalars: 1,
            storage: vec![Storage::Bf16, Storage::F32, Storage::F32, Storage::Bf16],
            rounding: Rounding::NearestEven,
        }
    }

    #[test]
    fn bf16_loads_widen_and_stores_round() {
        let kernel = widen_and_round();
        assert_eq!(kernel.bytes_per_element(), 2 + 4 + 4 + 2);
        let mut x: [u16; 5] = [0x3F80, 0xC0A0, 0x7FC1, 0x0001, 0xFF80];
        // 1, two ties (1 + 2^-8, 1 + 3 * 2^-8), above a tie, overflow.
        let mut y = [
            0x3F80_0000,
            0x3F80_8000,
            0x3F81_8000,
            0xFF61_B1E6,
            0x7F7F_FFFF,
        ]
        .map(f32::from_bits);
        let mut wide = [0.0f32; 5];
        let mut narrow = [0u16; 5];
        let mut sum = [0.0];
        run_typed(
            &kernel,
            &mut [
                BufferMut::from(&mut x[..]),
                BufferMut::from(&mut y[..]),
                BufferMut::from(&mut wide[..]),
                BufferMut::from(&mut narrow[..]),
            ],
            &[0.0],
            &mut sum,
            0..5,
        );
        let widened: Vec<u32> = wide.iter().map(|w| w.to_bits()).collect();
        assert_eq!(
            widened,
            [
                0x3F80_0000,
                0xC0A0_0000,
                0x7FC1_0000,
                0x0001_0000,
                0xFF80_0000
            ]
        );
        // Accumulators see the unrounded values.
        assert_eq!(narrow, [0x3F80, 0x3F80, 0x3F82, 0xFF62, 0x7F80]);
        assert_eq!(sum[0], y.iter().map(|&v| f64::from(v)).sum::<f64>());
        // Wrong storage types: nothing happens.
        let mut f32s = vec![vec![1.0f32; 5]; 4];
        let mut views: Vec<&mut [f32]> = f32s.iter_mut().map(|b| b.as_mut_slice()).collect();
        run(&kernel, &mut views, &[0.0], &mut [0.0], 0..5);
        assert!(f32s.iter().flatten().all(|&v| v == 1.0));
    }

    #[test]
    fn stochastic_stores_depend_only_on_seed_buffer_index_and_value() {
        let mut kernel = widen_and_round();
        kernel.rounding = Rounding::Stochastic { seed_scalar: 0 };
        let n = 50;
        let seed = f32::from_bits(0xDEAD_BEEF);
        let x: Vec<u16> = (0..n as u16).collect();
        let y: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let run_pieces = |cuts: &[usize]| {
            let (mut x, mut y) = (x.clone(), y.clone());
            let (mut wide, mut narrow) = (vec![0.0f32; n], vec![0u16; n]);
            for piece in cuts.windows(2) {
                run_typed(
                    &kernel,
                    &mut [
                        BufferMut::from(&mut x[..]),
                        BufferMut::from(&mut y[..]),
                        BufferMut::from(&mut wide[..]),
                        BufferMut::from(&mut narrow[..]),
                    ],
                    &[seed],
                    &mut [0.0],
                    piece[0]..piece[1],
                );
            }
            narrow
        };
        let whole = run_pieces(&[0, n]);
        assert_eq!(whole, run_pieces(&[0, 7, 8, 31, n]));
        for (i, &rounded) in whole.iter().enumerate() {
            let random = bf16::random_bits(seed.to_bits(), 3, i);
            assert_eq!(rounded, bf16::round_stochastic(y[i], random));
        }
        // Some values rounded up, some down.
        let nearest: Vec<u16> = y.iter().map(|&v| bf16::round_nearest_even(v)).collect();
        assert_ne!(whole, nearest);
    }
}
