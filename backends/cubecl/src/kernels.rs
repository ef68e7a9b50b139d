//! The device kernels, written once as cubecl `#[cube]` functions and
//! specialised per rule: [`pass`] walks its comptime [`Program`] op by op
//! (unrolled at expansion, so a program becomes straight-line code with
//! every value in a register), the route burn's fusion takes for kernels
//! only known at run time. [`copy`] is the data-movement floor.
//!
//! # Geometry
//!
//! One cube of [`UNITS`] units runs one block of at most [`BLOCK`]
//! elements of one tensor (the block table says which: launched tensor,
//! first element in the flat buffers, first element within the tensor,
//! length). Unit `u` handles elements `u, u + UNITS, ...` of its block (in
//! pair mode, the pairs `2u, 2u + 1`, ... : a bf16 word holds two elements
//! and only one unit may write it). Accumulators combine a unit's elements
//! in order in f64 and each unit writes its partial; [`fold`] then combines
//! a block's partials in unit order, so each block gives one partial per
//! accumulator. Neither step depends on how many cubes the device runs at
//! once, so results do not depend on the launch geometry. (Folding in a
//! second launch rather than through shared memory costs 0.5 bytes per
//! element and runs on lavapipe, whose Mesa 22 crashes on cubecl's shared
//! memory and barriers.)

// `#[unroll]` loops run over comptime indices: the cube macro unrolls
// ranges, not iterators.
#![allow(clippy::needless_range_loop)]

use cubecl::prelude::*;
use optc_compiler::ir::{BinaryOp, ReduceOp, UnaryOp};
use optc_compiler::kernel::bf16::{INDEX_STEP, MIX32_FINAL_SHIFT, MIX32_ROUNDS, QUIET_BIT};

use crate::program::{Binding, DeviceOp, Program};

/// Units per cube.
pub const UNITS: usize = 256;
/// Elements per block: [`UNITS`] x 16.
pub const BLOCK: usize = UNITS * 16;
/// Words of the block table per block.
pub const BLOCK_WORDS: usize = 4;

/// One pass of `program` over the blocks of `blocks`; `partials` receives
/// one f64 per block, accumulator and unit.
#[cube(launch)]
pub fn pass(
    f32s: &mut Sequence<Box<[f32]>>,
    words: &mut Sequence<Box<[u32]>>,
    blocks: &[u32],
    scalars: &[f32],
    partials: &mut [f64],
    #[comptime] program: Program,
) {
    let block = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    // Whole cubes take this branch or not, so the barriers below are uniform.
    if block < blocks.len() / BLOCK_WORDS {
        let tensor = blocks[block * BLOCK_WORDS] as usize;
        let flat = blocks[block * BLOCK_WORDS + 1] as usize;
        let local = blocks[block * BLOCK_WORDS + 2];
        let len = blocks[block * BLOCK_WORDS + 3] as usize;
        let base = tensor * program.scalars;
        let mut acc = Sequence::<f64>::new();
        #[unroll]
        for k in 0..program.accumulators.len() {
            let (op, _) = comptime![program.accumulators[k]];
            let mut start = identity(op);
            start += 0.0f64;
            acc.push(start);
        }
        let width = comptime![if program.pairs() { 2usize } else { 1usize }];
        let rounds = comptime![BLOCK / UNITS / width];
        let mut round = 0usize;
        while round < rounds {
            let first = (UNIT_POS as usize + round * UNITS) * width;
            if first < len {
                if comptime![program.pairs()] {
                    let low = evaluate(f32s, words, scalars, base, flat + first, 0u32, &program);
                    let high =
                        evaluate(f32s, words, scalars, base, flat + first + 1, 1u32, &program);
                    let index = local + first as u32;
                    store_pair(
                        f32s,
                        words,
                        scalars,
                        base,
                        flat + first,
                        index,
                        &low,
                        &high,
                        &program,
                    );
                    accumulate(&mut acc, &low, &program);
                    if first + 1 < len {
                        accumulate(&mut acc, &high, &program);
                    }
                } else {
                    let values = evaluate(f32s, words, scalars, base, flat + first, 0u32, &program);
                    store_one(f32s, flat + first, &values, &program);
                    accumulate(&mut acc, &values, &program);
                }
            }
            round += 1;
        }
        #[unroll]
        for k in 0..program.accumulators.len() {
            let at = (block * comptime![program.accumulators.len()] + k) * UNITS;
            partials[at + UNIT_POS as usize] = acc[k];
        }
    }
}

/// Folds each block's unit partials (written by [`pass`]) in unit order:
/// one unit per (block, accumulator), `count` of them.
#[cube(launch)]
pub fn fold(units: &[f64], folded: &mut [f64], count: u32, #[comptime] ops: Vec<ReduceOp>) {
    let i = ((CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize) * UNITS + UNIT_POS as usize;
    if i < count as usize {
        let k = i % comptime![ops.len()];
        #[unroll]
        for j in 0..ops.len() {
            let op = comptime![ops[j]];
            if k == j {
                let mut total = identity(op);
                let mut u = 0usize;
                while u < UNITS {
                    total = combine(total, units[i * UNITS + u], op);
                    u += 1;
                }
                folded[i] = total;
            }
        }
    }
}

/// The data-movement floor: every element of `loads` read and `stores`
/// written (with the sum of the loads, so no load is dead), `len` elements.
#[cube(launch)]
pub fn copy(loads: &Sequence<Box<[f32]>>, stores: &mut Sequence<Box<[f32]>>, len: u32) {
    let i = ((CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize) * UNITS + UNIT_POS as usize;
    if i < len as usize {
        let mut total = 0.0f32;
        #[unroll]
        for b in 0..loads.len() {
            total += loads[b][i];
        }
        #[unroll]
        for b in 0..stores.len() {
            let out = stores.index_mut(b);
            out[i] = total;
        }
    }
}

/// Every op's value at one element (`flat` in the flat buffers; `half`,
/// which half of a bf16 word it is: `flat % 2`, known at expansion).
#[cube]
fn evaluate(
    f32s: &mut Sequence<Box<[f32]>>,
    words: &mut Sequence<Box<[u32]>>,
    scalars: &[f32],
    base: usize,
    flat: usize,
    #[comptime] half: u32,
    #[comptime] program: &Program,
) -> Sequence<f32> {
    let mut values = Sequence::<f32>::new();
    #[unroll]
    for k in 0..program.ops.len() {
        let op = comptime![program.ops[k]];
        match op {
            DeviceOp::Load(b) => {
                let binding = comptime![program.buffers[b]];
                match binding {
                    Binding::F32(i) => {
                        let x = f32s[i][flat];
                        values.push(x);
                    }
                    Binding::Bf16(i) => {
                        let word = words[i][flat / 2];
                        let bits = (word >> (16u32 * half)) & 0xFFFFu32;
                        values.push(f32::reinterpret(bits << 16u32));
                    }
                }
            }
            DeviceOp::Scalar(s) => {
                let x = scalars[base + s];
                values.push(x);
            }
            DeviceOp::Const(bits) => values.push(f32::reinterpret(bits)),
            DeviceOp::Unary(u, a) => values.push(unary(values[a], u)),
            DeviceOp::Binary(b, x, y) => values.push(binary(values[x], values[y], b)),
            DeviceOp::Select(c, a, b) => {
                values.push(select(values[c] != 0.0, values[a], values[b]))
            }
            DeviceOp::Lerp(a, b, w) => values.push(values[a] + values[w] * (values[b] - values[a])),
        }
    }
    values
}

/// Stores one element's values to the f32 buffers (single mode has no
/// bf16 buffers).
#[cube]
fn store_one(
    f32s: &mut Sequence<Box<[f32]>>,
    flat: usize,
    values: &Sequence<f32>,
    #[comptime] program: &Program,
) {
    #[unroll]
    for s in 0..program.stores.len() {
        let (b, op) = comptime![program.stores[s]];
        let binding = comptime![program.buffers[b]];
        if let Binding::F32(i) = binding {
            let out = f32s.index_mut(i);
            out[flat] = values[op];
        }
    }
}

/// Stores a pair of neighbouring elements (`flat` even; `index`, the first
/// one's index within its tensor, for stochastic rounding).
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_pair(
    f32s: &mut Sequence<Box<[f32]>>,
    words: &mut Sequence<Box<[u32]>>,
    scalars: &[f32],
    base: usize,
    flat: usize,
    index: u32,
    low: &Sequence<f32>,
    high: &Sequence<f32>,
    #[comptime] program: &Program,
) {
    #[unroll]
    for s in 0..program.stores.len() {
        let (b, op) = comptime![program.stores[s]];
        let binding = comptime![program.buffers[b]];
        match binding {
            Binding::F32(i) => {
                let out = f32s.index_mut(i);
                out[flat] = low[op];
                out[flat + 1] = high[op];
            }
            Binding::Bf16(i) => {
                let (lo, hi) = if comptime![program.seed_scalar.is_some()] {
                    let seed =
                        u32::reinterpret(scalars[base + comptime![program.seed_scalar.unwrap()]]);
                    let key = stream_key(seed, comptime![b as u32 / 2]);
                    let shift = comptime![16 * (b as u32 % 2)];
                    let r0 = (draw(key, index) >> shift) & 0xFFFFu32;
                    let r1 = (draw(key, index + 1u32) >> shift) & 0xFFFFu32;
                    (round_up_from(low[op], r0), round_up_from(high[op], r1))
                } else {
                    (round_nearest_even(low[op]), round_nearest_even(high[op]))
                };
                let out = words.index_mut(i);
                out[flat / 2] = lo | (hi << 16u32);
            }
        }
    }
}

/// Combines one element's values into the unit's accumulators.
#[cube]
fn accumulate(acc: &mut Sequence<f64>, values: &Sequence<f32>, #[comptime] program: &Program) {
    #[unroll]
    for k in 0..program.accumulators.len() {
        let (op, v) = comptime![program.accumulators[k]];
        let slot = acc.index_mut(k);
        *slot = combine(*slot, f64::cast_from(values[v]), op);
    }
}

#[cube]
fn identity(#[comptime] op: ReduceOp) -> f64 {
    match op {
        ReduceOp::Sum => 0.0f64,
        ReduceOp::Max => f64::new(f32::NEG_INFINITY),
        ReduceOp::Min => f64::new(f32::INFINITY),
    }
}

/// An accumulator's combination; max and min ignore NaN, as the reference.
#[cube]
fn combine(a: f64, b: f64, #[comptime] op: ReduceOp) -> f64 {
    match op {
        ReduceOp::Sum => a + b,
        ReduceOp::Max => select(a.is_nan() || b > a, b, a),
        ReduceOp::Min => select(a.is_nan() || b < a, b, a),
    }
}

/// 1.0 for true, 0.0 for false, as every bool of the language.
#[cube]
fn truth(b: bool) -> f32 {
    select(b, 1.0f32, 0.0f32)
}

#[cube]
fn unary(x: f32, #[comptime] op: UnaryOp) -> f32 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Not => truth(x == 0.0),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => select(
            x > 0.0,
            1.0f32,
            select(x < 0.0, -1.0f32, select(x.is_nan(), x, 0.0f32)),
        ),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0f32 / x.sqrt(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0f32 / (1.0f32 + (-x).exp()),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Cbrt => select(x < 0.0, -1.0f32, 1.0f32) * x.abs().powf(1.0f32 / 3.0f32),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Bf16 => f32::reinterpret(round_nearest_even(x) << 16u32),
    }
}

#[cube]
fn binary(a: f32, b: f32, #[comptime] op: BinaryOp) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => pow(a, b),
        // Rust's f32::min and max: a NaN operand gives the other one.
        BinaryOp::Min => select(a <= b || b.is_nan(), a, b),
        BinaryOp::Max => select(a >= b || b.is_nan(), a, b),
        BinaryOp::Eq => truth(a == b),
        BinaryOp::Ne => truth(a != b),
        BinaryOp::Lt => truth(a < b),
        BinaryOp::Le => truth(a <= b),
        BinaryOp::Gt => truth(a > b),
        BinaryOp::Ge => truth(a >= b),
        BinaryOp::And => truth(a != 0.0 && b != 0.0),
        BinaryOp::Or => truth(a != 0.0 || b != 0.0),
    }
}

/// `a` to the power `b` as C's `powf` defines it where the device's `pow`
/// (defined for `a > 0` only) does not: `b == 0` or `a == 1` give 1, a
/// negative base (and -0) takes the sign of an odd integer power, a
/// negative base is NaN for a non-integer one, a zero base gives 0 or
/// infinity.
#[cube]
fn pow(a: f32, b: f32) -> f32 {
    let magnitude = select(
        a == 0.0,
        select(b < 0.0, f32::new(f32::INFINITY), 0.0f32),
        a.abs().powf(b),
    );
    let integer = b.floor() == b;
    let odd = integer && (b * 0.5f32).floor() != b * 0.5f32;
    let sign_bit = (u32::reinterpret(a) >> 31u32) == 1u32;
    let signed = select(sign_bit && odd, -magnitude, magnitude);
    let defined = select(a < 0.0 && !integer, f32::new(f32::NAN), signed);
    select(b == 0.0 || a == 1.0, 1.0f32, defined)
}

/// `x` rounded to the nearest bf16 (ties to even) as its bit pattern.
#[cube]
fn round_nearest_even(x: f32) -> u32 {
    let lowest_kept = (u32::reinterpret(x) >> 16u32) & 1u32;
    round_up_from(x, 0x7FFFu32 + lowest_kept)
}

/// The top half of `x`'s pattern plus `increment`, carried; NaNs quieted.
#[cube]
fn round_up_from(x: f32, increment: u32) -> u32 {
    let bits = u32::reinterpret(x);
    let rounded = select(x.is_nan(), bits | QUIET_BIT, bits + increment);
    rounded >> 16u32
}

#[cube]
fn mix32(x: u32) -> u32 {
    let mut y = x;
    #[unroll]
    for r in 0..MIX32_ROUNDS.len() {
        let (shift, multiplier) = comptime![MIX32_ROUNDS[r]];
        y ^= y >> shift;
        y *= multiplier;
    }
    y ^ (y >> MIX32_FINAL_SHIFT)
}

#[cube]
fn stream_key(seed: u32, #[comptime] stream: u32) -> u32 {
    mix32(seed ^ comptime![optc_compiler::kernel::bf16::mix32(stream)])
}

/// The 32 bits a stream with key `key` draws for element `index`.
#[cube]
fn draw(key: u32, index: u32) -> u32 {
    mix32(key + index * INDEX_STEP)
}
