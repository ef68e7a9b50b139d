//! Kernel to Cranelift IR: the fused SIMD loop.
//!
//! One function per kernel, `fn(buffers, scalars, accumulators, start, end)`:
//!
//! * entry: buffer pointers are loaded, scalars splatted, and every op that
//!   does not depend on a load (scalars, constants and what is computed from
//!   them) is evaluated once, as a vector, outside the loop;
//! * loop: 2 f32x4 vectors per iteration (1 for bodies heavy
//!   with transcendentals), unaligned loads of all
//!   loaded buffers first, the ops interleaved across the vectors, then the
//!   stores (so in-place updates read before they write). The body works on
//!   pointer variables. bf16 buffers are widened as they are loaded and
//!   rounded (to nearest even, or stochastically with per-lane draws of the
//!   reference's hash, from the element index and a per-stream key computed
//!   before the loop) as they are stored, as u16 lanes;
//! * tail (fewer than one iteration's elements left): the remaining elements
//!   are copied into a zeroed stack block, the pointer variables redirected
//!   to it, and the *same* body runs once more; then the stored elements are
//!   copied back. Accumulators mask the padding lanes (in the main loop the
//!   mask is all ones). An element's result therefore never depends on
//!   where it falls, and the body is emitted only once (compile time). The
//!   copies move elements in each buffer's storage type;
//! * exit: per-lane f64 accumulator partials are folded and combined into
//!   `*accumulators`.
//!
//! Everything is branch-free per element: comparisons produce lane masks,
//! `select`/`sign`/`min`/`max` are bit selects on them.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Block, ConstantData, Endianness, Function, InstBuilder, MemFlagsData,
    Signature, StackSlot, StackSlotData, StackSlotKind, Type, Value,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use optc_compiler::approx::{self, Arith};
use optc_compiler::ir::{BinaryOp, ReduceOp, UnaryOp};
use optc_compiler::kernel::{analyse, bf16, Analysis, Kernel, Op, Rounding, Storage};
use std::collections::HashMap;

use crate::prefetch::{self, Stubs};

/// f32 lanes per vector (Cranelift's x86 backend has 128-bit vectors).
pub(crate) const LANES: usize = 4;
/// Vectors per loop iteration: one per four of the kernel's accumulator
/// partials ([`Kernel::accumulator_partials`]), so that lane `l` of vector
/// `u` is partial `4u + l`.
fn unroll_for(kernel: &Kernel) -> usize {
    kernel.accumulator_partials() / LANES
}

/// The generated function's signature (see [`crate::KernelFn`]).
pub(crate) fn signature(ptr: Type, call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    for _ in 0..5 {
        sig.params.push(AbiParam::new(ptr));
    }
    sig
}

/// Buffer memory: not known aligned, never traps (the caller checked it).
fn heap() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Reinterpretation between vector shapes of different lane counts.
fn little() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

/// An op's value in one vector copy: as f32 lanes, as a lane mask, or both.
/// Inside the loop, values computed before it live in the invariant table
/// instead (see [`Gen::table`]) and are reloaded at every use.
#[derive(Clone, Copy, Default)]
struct Slot {
    val: Option<Value>,
    mask: Option<Value>,
    val_at: Option<(i32, Type)>,
    mask_at: Option<(i32, Type)>,
}

/// Cranelift f64x2 arithmetic: the code generator's side of [`Arith`].
struct Wide<'x, 'b> {
    b: &'x mut FunctionBuilder<'b>,
    consts: &'x mut Consts,
}

/// Vector constants, materialised once per block (fewer instructions for
/// Cranelift to chew on); the pool entries are shared by the function.
#[derive(Default)]
struct Consts {
    block: Option<Block>,
    values: HashMap<(Type, u128), Value>,
}

fn vconst(b: &mut FunctionBuilder, consts: &mut Consts, ty: Type, lane_bytes: &[u8]) -> Value {
    let mut bytes = [0u8; 16];
    for (dst, src) in bytes.iter_mut().zip(lane_bytes.iter().cycle()) {
        *dst = *src;
    }
    let block = b.current_block();
    if consts.block != block {
        consts.block = block;
        consts.values.clear();
    }
    let key = (ty, u128::from_le_bytes(bytes));
    if let Some(&v) = consts.values.get(&key) {
        return v;
    }
    let handle = b.func.dfg.constants.insert(ConstantData::from(&bytes[..]));
    let v = b.ins().vconst(ty, handle);
    consts.values.insert(key, v);
    v
}

impl Arith for Wide<'_, '_> {
    type F = Value;
    type I = Value;
    type M = Value;
    fn f(&mut self, c: f64) -> Value {
        vconst(self.b, self.consts, types::F64X2, &c.to_le_bytes())
    }
    fn i(&mut self, c: u64) -> Value {
        vconst(self.b, self.consts, types::I64X2, &c.to_le_bytes())
    }
    fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fadd(a, b)
    }
    fn sub(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fsub(a, b)
    }
    fn mul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmul(a, b)
    }
    fn div(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fdiv(a, b)
    }
    fn neg(&mut self, a: Value) -> Value {
        self.b.ins().fneg(a)
    }
    fn abs(&mut self, a: Value) -> Value {
        self.b.ins().fabs(a)
    }
    fn floor(&mut self, a: Value) -> Value {
        self.b.ins().floor(a)
    }
    fn lt(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(FloatCC::LessThan, a, b)
    }
    fn eq(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(FloatCC::Equal, a, b)
    }
    fn is_nan(&mut self, a: Value) -> Value {
        self.b.ins().fcmp(FloatCC::Unordered, a, a)
    }
    fn and(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().band(a, b)
    }
    fn or(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().bor(a, b)
    }
    fn not(&mut self, a: Value) -> Value {
        self.b.ins().bnot(a)
    }
    fn sel(&mut self, m: Value, a: Value, b: Value) -> Value {
        let m = self.b.ins().bitcast(types::F64X2, MemFlagsData::new(), m);
        self.b.ins().bitselect(m, a, b)
    }
    fn bits(&mut self, a: Value) -> Value {
        self.b.ins().bitcast(types::I64X2, MemFlagsData::new(), a)
    }
    fn float(&mut self, a: Value) -> Value {
        self.b.ins().bitcast(types::F64X2, MemFlagsData::new(), a)
    }
    fn iadd(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().iadd(a, b)
    }
    fn iand(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().band(a, b)
    }
    fn shl(&mut self, a: Value, by: u8) -> Value {
        self.b.ins().ishl_imm_u(a, i64::from(by))
    }
    fn ushr(&mut self, a: Value, by: u8) -> Value {
        self.b.ins().ushr_imm_u(a, i64::from(by))
    }
    fn ieq(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().icmp(IntCC::Equal, a, b)
    }
}

struct Gen<'x, 'b> {
    b: &'x mut FunctionBuilder<'b>,
    ptr: Type,
    consts: Consts,
    /// The invariant table: a stack slot holding every loop-invariant vector
    /// the loop uses. Reloading them at each use (the load folds into the
    /// instruction as a memory operand) keeps the 16 vector registers for
    /// the per-element values; holding them in registers made the register
    /// allocator spill and re-store them on every iteration.
    table: Option<StackSlot>,
}

impl Gen<'_, '_> {
    fn reload(&mut self, (at, ty): (i32, Type)) -> Value {
        let table = self
            .table
            .expect("the invariant table exists before the loop");
        self.b.ins().stack_load(self.ptr, ty, table, at)
    }

    /// Moves the invariant values the loop needs, op values and the `extra`
    /// vectors, into the invariant table; returns the environment the loop
    /// body starts from and where each extra vector went.
    fn spill_invariants(
        &mut self,
        an: &Analysis,
        invariant: &[Slot],
        extra: &[Value],
    ) -> (Vec<Slot>, Vec<(i32, Type)>) {
        let mut entries = Vec::new();
        for (i, slot) in invariant.iter().enumerate() {
            if an.live[i] && !an.variant[i] {
                entries.extend(
                    slot.val
                        .filter(|_| an.need_val[i])
                        .map(|v| (Some((i, false)), v)),
                );
                entries.extend(
                    slot.mask
                        .filter(|_| an.need_mask[i])
                        .map(|v| (Some((i, true)), v)),
                );
            }
        }
        entries.extend(extra.iter().map(|&v| (None, v)));
        let mut body = vec![Slot::default(); invariant.len()];
        let mut extra_at = Vec::new();
        if entries.is_empty() {
            return (body, extra_at);
        }
        let table = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (entries.len() * 16) as u32,
            4,
        ));
        self.table = Some(table);
        for (k, (op, v)) in entries.into_iter().enumerate() {
            let at = (16 * k) as i32;
            self.b.ins().stack_store(self.ptr, v, table, at);
            let entry = (at, self.b.func.dfg.value_type(v));
            match op {
                Some((i, true)) => body[i].mask_at = Some(entry),
                Some((i, false)) => body[i].val_at = Some(entry),
                None => extra_at.push(entry),
            }
        }
        (body, extra_at)
    }

    fn i32s(&mut self, c: u32) -> Value {
        vconst(self.b, &mut self.consts, types::I32X4, &c.to_le_bytes())
    }

    /// [`bf16::mix32`] on i32 lanes.
    fn mix32(&mut self, mut x: Value) -> Value {
        for (shift, multiplier) in bf16::MIX32_ROUNDS {
            let shifted = self.b.ins().ushr_imm_u(x, i64::from(shift));
            x = self.b.ins().bxor(x, shifted);
            let multiplier = self.i32s(multiplier);
            x = self.b.ins().imul(x, multiplier);
        }
        let shifted = self
            .b
            .ins()
            .ushr_imm_u(x, i64::from(bf16::MIX32_FINAL_SHIFT));
        self.b.ins().bxor(x, shifted)
    }

    /// Loads `count` consecutive vectors of bf16 elements from `at`, widened
    /// to f32: two vectors per 16-byte load (each half interleaved with zero
    /// low halves), a last odd one from 8 bytes.
    fn load_bf16(&mut self, at: Value, count: usize) -> Vec<Value> {
        let mut vectors = Vec::new();
        for k in 0..count.div_ceil(2) {
            let offset = (k * 2 * LANES * 2) as i32;
            if 2 * k + 1 < count {
                let patterns = self.b.ins().load(types::I8X16, heap(), at, offset);
                let zero = vconst(self.b, &mut self.consts, types::I8X16, &[0]);
                for half in [0u8, 8] {
                    // Word 2j of the result is zero's, word 2j + 1 pattern j
                    // of this half (`punpcklwd`/`punpckhwd`).
                    let interleave: Vec<u8> = (0..8u8)
                        .flat_map(|w| {
                            let byte = w % 2 * 16 + half + w / 2 * 2;
                            [byte, byte + 1]
                        })
                        .collect();
                    let interleave = self
                        .b
                        .func
                        .dfg
                        .immediates
                        .push(ConstantData::from(interleave));
                    let wide = self.b.ins().shuffle(zero, patterns, interleave);
                    vectors.push(self.b.ins().bitcast(types::F32X4, little(), wide));
                }
            } else {
                let patterns = self.b.ins().uload16x4(heap(), at, offset);
                let wide = self.b.ins().ishl_imm_u(patterns, 16);
                vectors.push(
                    self.b
                        .ins()
                        .bitcast(types::F32X4, MemFlagsData::new(), wide),
                );
            }
        }
        vectors
    }

    /// `buffer`'s 16 random bits ([`bf16::random_bits`]) from its stream's
    /// draw.
    fn random_bits(&mut self, draw: Value, buffer: u32) -> Value {
        match bf16::draw_shift(buffer) {
            0 => {
                let low = self.i32s(0xFFFF);
                self.b.ins().band(draw, low)
            }
            // The top half needs no mask.
            shift => self.b.ins().ushr_imm_u(draw, i64::from(shift)),
        }
    }

    /// `v` rounded to bf16 patterns, one per i32 lane: [`bf16::round_stochastic`]
    /// with the 16-bit lanes of `random`, or [`bf16::round_nearest_even`]
    /// without.
    fn round_bf16(&mut self, v: Value, random: Option<Value>) -> Value {
        let bits = self.b.ins().bitcast(types::I32X4, MemFlagsData::new(), v);
        let increment = match random {
            Some(random) => random,
            None => {
                let kept = self.b.ins().ushr_imm_u(bits, 16);
                let one = self.i32s(1);
                let lowest_kept = self.b.ins().band(kept, one);
                let half = self.i32s(0x7FFF);
                self.b.ins().iadd(lowest_kept, half)
            }
        };
        let nan = self.b.ins().fcmp(FloatCC::Unordered, v, v);
        let increment = self.b.ins().band_not(increment, nan);
        let quiet_bit = self.i32s(bf16::QUIET_BIT);
        let quiet_bit = self.b.ins().band(nan, quiet_bit);
        let bits = self.b.ins().bor(bits, quiet_bit);
        let rounded = self.b.ins().iadd(bits, increment);
        self.b.ins().ushr_imm_u(rounded, 16)
    }

    /// Stores consecutive vectors of bf16 patterns (one per i32 lane, as
    /// [`Gen::round_bf16`] makes them) as u16s from `at`: two vectors per
    /// 16-byte store, a last odd one as 8 bytes.
    fn store_bf16(&mut self, patterns: &[Value], at: Value) {
        for (k, pair) in patterns.chunks(2).enumerate() {
            let offset = (k * 2 * LANES * 2) as i32;
            let packed = self.b.ins().unarrow(pair[0], *pair.last().unwrap());
            if pair.len() == 2 {
                self.b.ins().store(heap(), packed, at, offset);
            } else {
                let halves = self.b.ins().bitcast(types::I64X2, little(), packed);
                let low = self.b.ins().extractlane(halves, 0);
                self.b.ins().store(heap(), low, at, offset);
            }
        }
    }

    /// Each random stream's key ([`bf16::stream_key`]) under the seed in
    /// scalar `seed_scalar`, in all lanes.
    fn stream_keys(&mut self, scalars: Value, seed_scalar: u32, streams: &[u32]) -> Vec<Value> {
        let addr = self.b.ins().iadd_imm_s(scalars, i64::from(seed_scalar) * 4);
        let seed = self
            .b
            .ins()
            .load(types::I32, MemFlagsData::trusted(), addr, 0);
        let seed = self.b.ins().splat(types::I32X4, seed);
        let mut keys = Vec::new();
        for &stream in streams {
            let mixed_stream = self.i32s(bf16::mix32(stream));
            let x = self.b.ins().bxor(seed, mixed_stream);
            keys.push(self.mix32(x));
        }
        keys
    }

    fn f32s(&mut self, c: f32) -> Value {
        vconst(self.b, &mut self.consts, types::F32X4, &c.to_le_bytes())
    }

    fn as_f32x4(&mut self, mask: Value) -> Value {
        self.b
            .ins()
            .bitcast(types::F32X4, MemFlagsData::new(), mask)
    }

    /// `mask ? a : b` on f32 lanes.
    fn sel(&mut self, mask: Value, a: Value, b: Value) -> Value {
        let m = self.as_f32x4(mask);
        self.b.ins().bitselect(m, a, b)
    }

    /// f32x4 -> (f64x2 of lanes 0-1, f64x2 of lanes 2-3), exact.
    fn split(&mut self, v: Value) -> (Value, Value) {
        let lo = self.b.ins().fvpromote_low(v);
        let bytes = self.b.ins().bitcast(types::I8X16, little(), v);
        let pattern: Vec<u8> = (8..16).chain(24..32).collect();
        let imm = self.b.func.dfg.immediates.push(ConstantData::from(pattern));
        let high = self.b.ins().shuffle(bytes, bytes, imm);
        let high = self.b.ins().bitcast(types::F32X4, little(), high);
        let hi = self.b.ins().fvpromote_low(high);
        (lo, hi)
    }

    /// Two f64x2 -> f32x4, each lane rounded to nearest.
    fn join(&mut self, lo: Value, hi: Value) -> Value {
        let lo = self.b.ins().fvdemote(lo);
        let hi = self.b.ins().fvdemote(hi);
        let lo = self.b.ins().bitcast(types::I8X16, little(), lo);
        let hi = self.b.ins().bitcast(types::I8X16, little(), hi);
        let pattern: Vec<u8> = (0..8).chain(16..24).collect();
        let imm = self.b.func.dfg.immediates.push(ConstantData::from(pattern));
        let v = self.b.ins().shuffle(lo, hi, imm);
        self.b.ins().bitcast(types::F32X4, little(), v)
    }

    /// A transcendental on f32 lanes, evaluated on f64 halves.
    fn wide1(&mut self, x: Value, op: UnaryOp) -> Value {
        let (lo, hi) = self.split(x);
        let mut w = Wide {
            b: self.b,
            consts: &mut self.consts,
        };
        let [rl, rh] = [lo, hi].map(|half| match op {
            UnaryOp::Exp => approx::exp_f64(&mut w, half),
            UnaryOp::Log => approx::ln_f64(&mut w, half),
            UnaryOp::Tanh => approx::tanh_f64(&mut w, half),
            UnaryOp::Cos => approx::cos_f64(&mut w, half),
            UnaryOp::Cbrt => approx::cbrt_f64(&mut w, half),
            _ => unreachable!("not evaluated in f64"),
        });
        self.join(rl, rh)
    }

    /// `pow` on f32 lanes, evaluated on f64 halves.
    fn pow(&mut self, x: Value, y: Value) -> Value {
        let (xl, xh) = self.split(x);
        let (yl, yh) = self.split(y);
        let mut w = Wide {
            b: self.b,
            consts: &mut self.consts,
        };
        let rl = approx::pow_f64(&mut w, xl, yl);
        let rh = approx::pow_f64(&mut w, xh, yh);
        self.join(rl, rh)
    }

    fn val(&mut self, env: &mut [Slot], i: u32) -> Value {
        let slot = env[i as usize];
        if let Some(v) = slot.val {
            return v;
        }
        if let Some(at) = slot.val_at {
            return self.reload(at);
        }
        let mask = slot.mask.expect("op evaluated before use");
        let m = self.as_f32x4(mask);
        let one = self.f32s(1.0);
        let v = self.b.ins().band(m, one);
        env[i as usize].val = Some(v);
        v
    }

    /// The lanes where the op's value "holds" (is not 0; NaN holds).
    fn mask(&mut self, env: &mut [Slot], i: u32) -> Value {
        let slot = env[i as usize];
        if let Some(m) = slot.mask {
            return m;
        }
        if let Some(at) = slot.mask_at {
            return self.reload(at);
        }
        let v = slot.val.expect("op evaluated before use");
        let zero = self.f32s(0.0);
        let m = self.b.ins().fcmp(FloatCC::NotEqual, v, zero);
        env[i as usize].mask = Some(m);
        m
    }

    /// Emits op `i` for one vector copy; loads come from `loads`.
    fn op(&mut self, kernel: &Kernel, env: &mut [Slot], i: usize, load: &dyn Fn(u32) -> Value) {
        let value = |v: Value| Slot {
            val: Some(v),
            ..Slot::default()
        };
        let mask = |m: Value| Slot {
            mask: Some(m),
            ..Slot::default()
        };
        let slot = match kernel.ops[i] {
            Op::Load(b) => value(load(b)),
            Op::Scalar(_) | Op::Const(_) => {
                unreachable!("invariant ops are emitted by `invariant`")
            }
            Op::Unary(op, a) => {
                if op == UnaryOp::Not {
                    let m = match env[a as usize].mask {
                        Some(m) => self.b.ins().bnot(m),
                        None => {
                            let x = self.val(env, a);
                            let zero = self.f32s(0.0);
                            self.b.ins().fcmp(FloatCC::Equal, x, zero)
                        }
                    };
                    mask(m)
                } else {
                    let x = self.val(env, a);
                    value(self.unary(op, x))
                }
            }
            Op::Binary(op @ (BinaryOp::And | BinaryOp::Or), a, b) => {
                let ma = self.mask(env, a);
                let mb = self.mask(env, b);
                mask(if op == BinaryOp::And {
                    self.b.ins().band(ma, mb)
                } else {
                    self.b.ins().bor(ma, mb)
                })
            }
            Op::Binary(op, a, b) => {
                let x = self.val(env, a);
                let y = self.val(env, b);
                let cc = match op {
                    BinaryOp::Eq => Some(FloatCC::Equal),
                    BinaryOp::Ne => Some(FloatCC::NotEqual),
                    BinaryOp::Lt => Some(FloatCC::LessThan),
                    BinaryOp::Le => Some(FloatCC::LessThanOrEqual),
                    BinaryOp::Gt => Some(FloatCC::GreaterThan),
                    BinaryOp::Ge => Some(FloatCC::GreaterThanOrEqual),
                    _ => None,
                };
                match cc {
                    Some(cc) => mask(self.b.ins().fcmp(cc, x, y)),
                    None => value(self.binary(op, x, y)),
                }
            }
            Op::Select(c, a, b) => {
                let m = self.mask(env, c);
                let x = self.val(env, a);
                let y = self.val(env, b);
                value(self.sel(m, x, y))
            }
            Op::Lerp(a, b, w) => {
                let x = self.val(env, a);
                let y = self.val(env, b);
                let w = self.val(env, w);
                let d = self.b.ins().fsub(y, x);
                let p = self.b.ins().fmul(w, d);
                value(self.b.ins().fadd(x, p))
            }
        };
        env[i] = slot;
    }

    fn unary(&mut self, op: UnaryOp, x: Value) -> Value {
        match op {
            UnaryOp::Bf16 => {
                let pattern = self.round_bf16(x, None);
                let bits = self.b.ins().ishl_imm_u(pattern, 16);
                self.b
                    .ins()
                    .bitcast(types::F32X4, MemFlagsData::new(), bits)
            }
            UnaryOp::Neg => self.b.ins().fneg(x),
            UnaryOp::Abs => self.b.ins().fabs(x),
            UnaryOp::Sqrt => self.b.ins().sqrt(x),
            UnaryOp::Rsqrt => {
                let s = self.b.ins().sqrt(x);
                let one = self.f32s(1.0);
                self.b.ins().fdiv(one, s)
            }
            UnaryOp::Floor => self.b.ins().floor(x),
            UnaryOp::Sign => {
                // Branch-free and without blends: (x & -0.0) | 1.0 is ±1 with
                // x's sign; masked to +0 where x == 0; a NaN's own bits are
                // or-ed back in (±1 has an all-zero mantissa, so the result
                // is exactly x).
                let sign_bit = self.f32s(-0.0);
                let one = self.f32s(1.0);
                let signed = self.b.ins().band(x, sign_bit);
                let unit = self.b.ins().bor(signed, one);
                let zero = self.f32s(0.0);
                let nonzero = self.b.ins().fcmp(FloatCC::NotEqual, x, zero);
                let nonzero = self.as_f32x4(nonzero);
                let unit = self.b.ins().band(unit, nonzero);
                let nan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
                let nan = self.as_f32x4(nan);
                let nan = self.b.ins().band(nan, x);
                self.b.ins().bor(unit, nan)
            }
            UnaryOp::Exp => self.wide1(x, UnaryOp::Exp),
            UnaryOp::Log => self.wide1(x, UnaryOp::Log),
            UnaryOp::Tanh => self.wide1(x, UnaryOp::Tanh),
            UnaryOp::Cos => self.wide1(x, UnaryOp::Cos),
            UnaryOp::Cbrt => self.wide1(x, UnaryOp::Cbrt),
            UnaryOp::Sigmoid => {
                let nx = self.b.ins().fneg(x);
                let e = self.wide1(nx, UnaryOp::Exp);
                let one = self.f32s(1.0);
                let d = self.b.ins().fadd(one, e);
                self.b.ins().fdiv(one, d)
            }
            UnaryOp::Not => unreachable!("`not` yields a mask"),
        }
    }

    fn binary(&mut self, op: BinaryOp, x: Value, y: Value) -> Value {
        match op {
            BinaryOp::Add => self.b.ins().fadd(x, y),
            BinaryOp::Sub => self.b.ins().fsub(x, y),
            BinaryOp::Mul => self.b.ins().fmul(x, y),
            BinaryOp::Div => self.b.ins().fdiv(x, y),
            BinaryOp::Pow => self.pow(x, y),
            BinaryOp::Max | BinaryOp::Min => {
                // f32::max/min: the other operand when one is NaN; `x` on ties.
                let (small, big) = if op == BinaryOp::Max { (x, y) } else { (y, x) };
                let better = self.b.ins().fcmp(FloatCC::LessThan, small, big);
                let nan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
                let take_y = self.b.ins().bor(better, nan);
                self.sel(take_y, y, x)
            }
            _ => unreachable!("comparisons and logic yield masks"),
        }
    }

    /// Evaluates the load-independent ops once, in the current block.
    fn invariant(&mut self, kernel: &Kernel, an: &Analysis, scalars: Value, env: &mut [Slot]) {
        for (i, op) in kernel.ops.iter().enumerate() {
            if !an.live[i] || an.variant[i] {
                continue;
            }
            match *op {
                Op::Scalar(k) => {
                    let addr = self.b.ins().iadd_imm_s(scalars, i64::from(k) * 4);
                    let s = self
                        .b
                        .ins()
                        .load(types::F32, MemFlagsData::trusted(), addr, 0);
                    let v = self.b.ins().splat(types::F32X4, s);
                    env[i].val = Some(v);
                }
                Op::Const(c) => {
                    env[i].val = Some(self.f32s(c));
                }
                _ => self.op(kernel, env, i, &|_| {
                    unreachable!("invariant ops do not load")
                }),
            }
            // Materialise both forms now so the loop never converts them.
            if an.need_val[i] {
                self.val(env, i as u32);
            }
            if an.need_mask[i] {
                self.mask(env, i as u32);
            }
        }
    }

    /// Combines `v` into accumulator partials `(lo, hi)`.
    fn accumulate(&mut self, reduce: ReduceOp, v: Value, lo: Variable, hi: Variable) {
        let (vl, vh) = self.split(v);
        for (var, x) in [(lo, vl), (hi, vh)] {
            let acc = self.b.use_var(var);
            let next = match reduce {
                ReduceOp::Sum => self.b.ins().fadd(acc, x),
                // NaN never wins (like f64::max), as in the reference.
                ReduceOp::Max | ReduceOp::Min => {
                    let better = if reduce == ReduceOp::Max {
                        self.b.ins().fcmp(FloatCC::LessThan, acc, x)
                    } else {
                        self.b.ins().fcmp(FloatCC::LessThan, x, acc)
                    };
                    let m = self
                        .b
                        .ins()
                        .bitcast(types::F64X2, MemFlagsData::new(), better);
                    self.b.ins().bitselect(m, x, acc)
                }
            };
            self.b.def_var(var, next);
        }
    }

    /// Scalar f64 combine with `Kernel::combine`'s semantics (`a` may be NaN).
    fn combine(&mut self, reduce: ReduceOp, a: Value, b: Value) -> Value {
        match reduce {
            ReduceOp::Sum => self.b.ins().fadd(a, b),
            ReduceOp::Max | ReduceOp::Min => {
                let better = if reduce == ReduceOp::Max {
                    self.b.ins().fcmp(FloatCC::LessThan, a, b)
                } else {
                    self.b.ins().fcmp(FloatCC::LessThan, b, a)
                };
                let nan = self.b.ins().fcmp(FloatCC::Unordered, a, a);
                let take_b = self.b.ins().bor(better, nan);
                self.b.ins().select(take_b, b, a)
            }
        }
    }
}

fn identity(reduce: ReduceOp) -> f32 {
    Kernel::identity(reduce) as f32
}

/// Builds the kernel's function into `func` (whose signature is set).
/// The kernel must have been validated.
pub(crate) fn translate(
    func: &mut Function,
    fctx: &mut FunctionBuilderContext,
    frontend: TargetFrontendConfig,
    kernel: &Kernel,
    stubs: Option<&Stubs>,
) {
    let ptr = func.signature.params[0].value_type;
    let an = analyse(kernel);
    let unroll = unroll_for(kernel);
    let mut b = FunctionBuilder::new(func, fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let params = b.block_params(entry).to_vec();
    let (buffers, scalars, acc_ptr, start, end) =
        (params[0], params[1], params[2], params[3], params[4]);
    if kernel.stores.is_empty() && kernel.accumulators.is_empty() {
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(frontend);
        return;
    }
    let mut g = Gen {
        b: &mut b,
        ptr,
        consts: Consts::default(),
        table: None,
    };
    let start = g.b.ins().umin(start, end);
    let block = (unroll * LANES) as i64;

    // Buffers touched: loaded ones, then stored-only ones. Each has a base
    // pointer, a pointer variable the body works on (into the buffer, or into
    // the stack block during the tail), and a 16 * unroll byte stack region
    // (of which bf16 buffers use half).
    let mut used: Vec<u32> = an.loaded.clone();
    for &(buf, _) in &kernel.stores {
        if !used.contains(&buf) {
            used.push(buf);
        }
    }
    // (Indexed densely: buffer numbers may be large.)
    let dense = |buf: u32| used.iter().position(|&b| b == buf).unwrap();
    let region = |buf: u32| dense(buf) * 16 * unroll;
    let mut base = Vec::new();
    let mut cursor = Vec::new();
    for &buf in &used {
        let addr =
            g.b.ins()
                .iadd_imm_s(buffers, i64::from(buf) * ptr.bytes() as i64);
        base.push(g.b.ins().load(ptr, MemFlagsData::trusted(), addr, 0));
        cursor.push(g.b.declare_var(ptr));
    }
    let base = |buf: u32| base[dense(buf)];
    let cursor = |buf: u32| cursor[dense(buf)];
    let storage = |buf: u32| kernel.storage[buf as usize];
    let mut invariant = vec![Slot::default(); kernel.ops.len()];
    g.invariant(kernel, &an, scalars, &mut invariant);
    // Stochastic rounding: the key of each random stream bf16 stores draw from.
    let mut streams: Vec<u32> = kernel
        .stores
        .iter()
        .filter(|&&(buf, _)| storage(buf) == Storage::Bf16)
        .map(|&(buf, _)| bf16::stream(buf))
        .collect();
    streams.sort_unstable();
    streams.dedup();
    let keys = match kernel.rounding {
        Rounding::Stochastic { seed_scalar } if !streams.is_empty() => {
            g.stream_keys(scalars, seed_scalar, &streams)
        }
        _ => Vec::new(),
    };
    let (body_env, key_at) = g.spill_invariants(&an, &invariant, &keys);
    let key_at = |stream: u32| key_at[streams.iter().position(|&s| s == stream).unwrap()];

    // Accumulator partials: per unrolled vector, lanes 0-1 and 2-3 in f64;
    // and per unrolled vector the lanes that hold elements (all of them but
    // in the tail).
    let mut partials = Vec::new();
    for &(reduce, _) in &kernel.accumulators {
        let init = g.b.ins().f64const(Kernel::identity(reduce));
        let init = g.b.ins().splat(types::F64X2, init);
        let mut per_copy = Vec::new();
        for _ in 0..unroll {
            let lo = g.b.declare_var(types::F64X2);
            let hi = g.b.declare_var(types::F64X2);
            g.b.def_var(lo, init);
            g.b.def_var(hi, init);
            per_copy.push((lo, hi));
        }
        partials.push(per_copy);
    }
    let active: Vec<Variable> = if kernel.accumulators.is_empty() {
        Vec::new()
    } else {
        (0..unroll).map(|_| g.b.declare_var(types::I32X4)).collect()
    };
    let index = g.b.declare_var(ptr);
    g.b.def_var(index, start);
    let in_tail = g.b.declare_var(types::I8);

    let head = g.b.create_block();
    let enter_main = g.b.create_block();
    let check_tail = g.b.create_block();
    let enter_tail = g.b.create_block();
    let body = g.b.create_block();
    let next = g.b.create_block();
    let tail_done = g.b.create_block();
    let exit = g.b.create_block();
    g.b.ins().jump(head, &[]);

    // head: a whole unrolled block left?
    g.b.switch_to_block(head);
    let i = g.b.use_var(index);
    let left = g.b.ins().isub(end, i);
    let more =
        g.b.ins()
            .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, left, block);
    g.b.ins().brif(more, enter_main, &[], check_tail, &[]);

    g.b.switch_to_block(enter_main);
    let i = g.b.use_var(index);
    let offset = ByteOffsets::of_element(g.b, i);
    let mut ahead = Vec::new();
    for &buf in &used {
        let p = g.b.ins().iadd(base(buf), offset.get(storage(buf)));
        g.b.def_var(cursor(buf), p);
        ahead.push(g.b.ins().iadd_imm_s(p, prefetch::DISTANCE));
    }
    if let Some(stubs) = stubs {
        for streams in ahead.chunks(prefetch::MAX_STREAMS) {
            let mut sig = Signature::new(CallConv::PreserveAll);
            sig.params = vec![AbiParam::new(ptr); streams.len()];
            let sig = g.b.import_signature(sig);
            let stub = stubs.0[streams.len() - 1] as i64;
            let stub = g.b.ins().iconst(ptr, stub);
            g.b.ins().call_indirect(sig, stub, streams);
        }
    }
    if !active.is_empty() {
        let all = vconst(g.b, &mut g.consts, types::I32X4, &[0xFF]);
        for &a in &active {
            g.b.def_var(a, all);
        }
    }
    let no = g.b.ins().iconst(types::I8, 0);
    g.b.def_var(in_tail, no);
    g.b.ins().jump(body, &[]);

    // The tail: the remaining n < unroll * 4 elements go through the same
    // body, on a zero-padded copy in a stack block.
    g.b.switch_to_block(check_tail);
    let i = g.b.use_var(index);
    let some = g.b.ins().icmp(IntCC::UnsignedLessThan, i, end);
    g.b.ins().brif(some, enter_tail, &[], exit, &[]);

    g.b.switch_to_block(enter_tail);
    let i = g.b.use_var(index);
    let n = g.b.ins().isub(end, i);
    let offset = ByteOffsets::of_element(g.b, i);
    let stack = g.b.create_sized_stack_slot(StackSlotData::new(
        StackSlotKind::ExplicitSlot,
        (used.len().max(1) * 16 * unroll) as u32,
        4,
    ));
    let stack_base = g.b.ins().stack_addr(ptr, stack, 0);
    let zero = g.f32s(0.0);
    for &buf in &an.loaded {
        for u in 0..unroll {
            let at = (region(buf) + 16 * u) as i32;
            g.b.ins()
                .store(MemFlagsData::trusted(), zero, stack_base, at);
        }
    }
    let j_var = g.b.declare_var(ptr);
    let copied_in = g.b.create_block();
    copy_loop(&mut g, j_var, n, copied_in, |g, j| {
        let byte = ByteOffsets::of_element(g.b, j);
        for &buf in &an.loaded {
            let storage = storage(buf);
            let src = g.b.ins().iadd(base(buf), offset.get(storage));
            let src = g.b.ins().iadd(src, byte.get(storage));
            let x = g.b.ins().load(element_type(storage), heap(), src, 0);
            let dst = g.b.ins().iadd(stack_base, byte.get(storage));
            g.b.ins()
                .store(MemFlagsData::trusted(), x, dst, region(buf) as i32);
        }
    });
    g.b.switch_to_block(copied_in);
    for &buf in &used {
        let p = g.b.ins().iadd_imm_s(stack_base, region(buf) as i64);
        g.b.def_var(cursor(buf), p);
    }
    if !active.is_empty() {
        let lanes = g.b.ins().fcvt_from_sint(types::F32, n);
        let lanes = g.b.ins().splat(types::F32X4, lanes);
        for (u, &a) in active.iter().enumerate() {
            let idx: Vec<u8> = (0..LANES)
                .flat_map(|l| ((u * LANES + l) as f32).to_le_bytes())
                .collect();
            let idx = vconst(g.b, &mut g.consts, types::F32X4, &idx);
            let m = g.b.ins().fcmp(FloatCC::LessThan, idx, lanes);
            g.b.def_var(a, m);
        }
    }
    let yes = g.b.ins().iconst(types::I8, 1);
    g.b.def_var(in_tail, yes);
    g.b.ins().jump(body, &[]);

    // The body: unroll vectors, loads first, ops interleaved, then stores.
    g.b.switch_to_block(body);
    let at: Vec<Value> = used.iter().map(|&buf| g.b.use_var(cursor(buf))).collect();
    let at = |buf: u32| at[dense(buf)];
    let mut loads = vec![Vec::new(); used.len()];
    for &buf in &an.loaded {
        loads[dense(buf)] = match storage(buf) {
            Storage::F32 => (0..unroll)
                .map(|u| {
                    let offset = (u * LANES * 4) as i32;
                    g.b.ins().load(types::F32X4, heap(), at(buf), offset)
                })
                .collect(),
            Storage::Bf16 => g.load_bf16(at(buf), unroll),
        };
    }
    let mut envs = vec![body_env; unroll];
    for i in 0..kernel.ops.len() {
        if !an.live[i] || !an.variant[i] {
            continue;
        }
        for (u, env) in envs.iter_mut().enumerate() {
            g.op(kernel, env, i, &|buf| loads[dense(buf)][u]);
        }
    }
    // Stochastic rounding's counters: the Weyl sequence at each element.
    let counters: Vec<Value> = if keys.is_empty() {
        Vec::new()
    } else {
        let i = g.b.use_var(index);
        let i = g.b.ins().ireduce(types::I32, i);
        let counter = g.b.ins().imul_imm_u(i, i64::from(bf16::INDEX_STEP));
        let counter = g.b.ins().splat(types::I32X4, counter);
        (0..unroll)
            .map(|u| {
                let lanes: Vec<u8> = (0..LANES)
                    .flat_map(|l| {
                        ((u * LANES + l) as u32)
                            .wrapping_mul(bf16::INDEX_STEP)
                            .to_le_bytes()
                    })
                    .collect();
                let lanes = vconst(g.b, &mut g.consts, types::I32X4, &lanes);
                g.b.ins().iadd(counter, lanes)
            })
            .collect()
    };
    // Each stream's draws, per vector, made once for both buffers sharing it.
    let mut draws: HashMap<(u32, usize), Value> = HashMap::new();
    for &(buf, op) in &kernel.stores {
        match storage(buf) {
            Storage::F32 => {
                for (u, env) in envs.iter_mut().enumerate() {
                    let v = g.val(env, op);
                    g.b.ins().store(heap(), v, at(buf), (u * LANES * 4) as i32);
                }
            }
            Storage::Bf16 => {
                let mut patterns = Vec::new();
                for (u, env) in envs.iter_mut().enumerate() {
                    let v = g.val(env, op);
                    let random = (!counters.is_empty()).then(|| {
                        let stream = bf16::stream(buf);
                        let draw = *draws.entry((stream, u)).or_insert_with(|| {
                            let key = g.reload(key_at(stream));
                            let x = g.b.ins().iadd(counters[u], key);
                            g.mix32(x)
                        });
                        g.random_bits(draw, buf)
                    });
                    patterns.push(g.round_bf16(v, random));
                }
                g.store_bf16(&patterns, at(buf));
            }
        }
    }
    for (k, &(reduce, op)) in kernel.accumulators.iter().enumerate() {
        for (u, env) in envs.iter_mut().enumerate() {
            let v = g.val(env, op);
            let m = g.b.use_var(active[u]);
            let pad = g.f32s(identity(reduce));
            let v = g.sel(m, v, pad);
            let (lo, hi) = partials[k][u];
            g.accumulate(reduce, v, lo, hi);
        }
    }
    let tail = g.b.use_var(in_tail);
    g.b.ins().brif(tail, tail_done, &[], next, &[]);

    g.b.switch_to_block(next);
    let i = g.b.use_var(index);
    let i = g.b.ins().iadd_imm_s(i, block);
    g.b.def_var(index, i);
    g.b.ins().jump(head, &[]);

    // After the tail: copy the stored elements back.
    g.b.switch_to_block(tail_done);
    let i = g.b.use_var(index);
    let n = g.b.ins().isub(end, i);
    let offset = ByteOffsets::of_element(g.b, i);
    let stack_base = g.b.ins().stack_addr(ptr, stack, 0);
    copy_loop(&mut g, j_var, n, exit, |g, j| {
        let byte = ByteOffsets::of_element(g.b, j);
        for &(buf, _) in &kernel.stores {
            let storage = storage(buf);
            let src = g.b.ins().iadd(stack_base, byte.get(storage));
            let x = g.b.ins().load(
                element_type(storage),
                MemFlagsData::trusted(),
                src,
                region(buf) as i32,
            );
            let dst = g.b.ins().iadd(base(buf), offset.get(storage));
            let dst = g.b.ins().iadd(dst, byte.get(storage));
            g.b.ins().store(heap(), x, dst, 0);
        }
    });

    // Exit: fold the partials (a fixed order) and combine into the caller's.
    g.b.switch_to_block(exit);
    for (k, &(reduce, _)) in kernel.accumulators.iter().enumerate() {
        let mut total = None;
        for &(lo, hi) in &partials[k] {
            let lo = g.b.use_var(lo);
            let hi = g.b.use_var(hi);
            let pair = fold2(&mut g, reduce, lo, hi);
            total = Some(match total {
                None => pair,
                Some(t) => fold2(&mut g, reduce, t, pair),
            });
        }
        let total = total.expect("unroll > 0");
        let l0 = g.b.ins().extractlane(total, 0);
        let l1 = g.b.ins().extractlane(total, 1);
        let total = g.combine(reduce, l0, l1);
        let addr = g.b.ins().iadd_imm_s(acc_ptr, (k * 8) as i64);
        let prev = g.b.ins().load(types::F64, MemFlagsData::trusted(), addr, 0);
        let result = g.combine(reduce, prev, total);
        g.b.ins().store(MemFlagsData::trusted(), result, addr, 0);
    }
    g.b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(frontend);
}

/// Lane-wise combination of two partial vectors (no NaN in max/min partials).
fn fold2(g: &mut Gen, reduce: ReduceOp, a: Value, b: Value) -> Value {
    match reduce {
        ReduceOp::Sum => g.b.ins().fadd(a, b),
        ReduceOp::Max | ReduceOp::Min => {
            let better = if reduce == ReduceOp::Max {
                g.b.ins().fcmp(FloatCC::LessThan, a, b)
            } else {
                g.b.ins().fcmp(FloatCC::LessThan, b, a)
            };
            let m = g.b.ins().bitcast(types::F64X2, MemFlagsData::new(), better);
            g.b.ins().bitselect(m, b, a)
        }
    }
}

/// `for j in 0..n { body(j) }`, then jump to `done`; leaves the builder in
/// no block.
fn copy_loop(
    g: &mut Gen,
    j_var: Variable,
    n: Value,
    done: cranelift_codegen::ir::Block,
    body: impl FnOnce(&mut Gen, Value),
) {
    let head = g.b.create_block();
    let block = g.b.create_block();
    let zero = g.b.ins().iconst(g.ptr, 0);
    g.b.def_var(j_var, zero);
    g.b.ins().jump(head, &[]);
    g.b.switch_to_block(head);
    let j = g.b.use_var(j_var);
    let more = g.b.ins().icmp(IntCC::UnsignedLessThan, j, n);
    g.b.ins().brif(more, block, &[], done, &[]);
    g.b.switch_to_block(block);
    let j = g.b.use_var(j_var);
    body(g, j);
    let next = g.b.ins().iadd_imm_s(j, 1);
    g.b.def_var(j_var, next);
    g.b.ins().jump(head, &[]);
}

/// The scalar type of one element in memory.
fn element_type(storage: Storage) -> Type {
    match storage {
        Storage::F32 => types::F32,
        Storage::Bf16 => types::I16,
    }
}

/// An element index's byte offset in buffers of each storage type (the
/// unused one is never emitted: Cranelift skips unused pure instructions).
struct ByteOffsets {
    f32: Value,
    bf16: Value,
}

impl ByteOffsets {
    fn of_element(b: &mut FunctionBuilder, index: Value) -> ByteOffsets {
        let shift = |storage: Storage| i64::from(storage.bytes().trailing_zeros());
        ByteOffsets {
            f32: b.ins().ishl_imm_u(index, shift(Storage::F32)),
            bf16: b.ins().ishl_imm_u(index, shift(Storage::Bf16)),
        }
    }

    fn get(&self, storage: Storage) -> Value {
        match storage {
            Storage::F32 => self.f32,
            Storage::Bf16 => self.bf16,
        }
    }
}
