//! Kernel to LLVM IR text: the fused SIMD loop, at the host's width.
//!
//! One function per kernel, `@optc_kernel(buffers, scalars, accumulators,
//! start, end)` (the [`KernelFn`](optc_compiler::backend::KernelFn) ABI),
//! over vectors of `B` lanes ([`block_lanes`]: twice the host's f32 lanes,
//! or once for bodies heavy with transcendentals, and never fewer than the
//! kernel's accumulator partials). LLVM splits a `B`-lane vector into the
//! host's registers, which is the unrolling.
//!
//! * entry: buffer pointers are loaded, scalars splatted, every op that does
//!   not depend on a load evaluated once, the stochastic-rounding stream
//!   keys computed, and the stack blocks of the tail allocated;
//! * head/main: while a whole block is left, the body runs on pointers into
//!   the buffers (after prefetching each stream 4 KiB ahead, on hosts of
//!   fewer than 16 lanes: [`PREFETCH_BELOW_LANES`]);
//! * tail: the remaining `n < B` elements are copied into zeroed stack
//!   blocks and the *same* body runs once more on them, its accumulator
//!   lanes past `n` masked to the identity; the stored elements are copied
//!   back. An element's result never depends on where it falls;
//! * body: loads first (bf16 widened), the ops, then the stores (bf16
//!   rounded to nearest even or stochastically, with the reference's hash)
//!   and the accumulation into the kernel's `P` f64 partials (block lane `l`
//!   to partial `l mod P`, in lane order: the order of "Accumulation order"
//!   in [`optc_compiler::kernel`]);
//! * exit: the partials folded in that order and combined into the caller's.
//!
//! The arithmetic is the Cranelift tier's, operation for operation: the same
//! IEEE instructions (no fast-math flags, so LLVM neither contracts
//! multiply-adds nor reassociates), the same bit-select formulations of
//! `sign`, `min` and `max`, the transcendentals of
//! [`optc_compiler::approx`] on f64 vectors, so the two tiers agree bit for
//! bit.

use std::collections::BTreeSet;
use std::fmt::Write;

use optc_compiler::approx::{self, Arith};
use optc_compiler::ir::{BinaryOp, ReduceOp, UnaryOp};
use optc_compiler::kernel::{analyse, bf16, Analysis, Kernel, Op, Rounding, Storage};

/// The name of the generated function.
pub const FUNCTION: &str = "optc_kernel";

/// How far ahead each stream is prefetched, in bytes.
const PREFETCH_DISTANCE: usize = 4096;

/// Vector widths (f32 lanes) below which the loop prefetches. Narrow loops
/// spend several instructions per cache line, so the out-of-order window
/// covers few lines ahead and prefetching restores the overlap of memory
/// and arithmetic (measured with Cranelift's f32x4 loops); 16-lane AVX-512
/// loops cover enough on their own, and prefetching slowed them: Adam at
/// 16M elements on one Zen 4 core took 0.88 ns/param with it, 0.63 without.
const PREFETCH_BELOW_LANES: usize = 16;

/// What the generated code may assume about the CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// f32 lanes per vector register: 4 (SSE), 8 (AVX2), 16 (AVX-512).
    pub lanes: usize,
    /// LLVM's name for the CPU (`target-cpu`).
    pub cpu: String,
    /// LLVM's feature string (`target-features`).
    pub features: String,
}

/// Lanes per block for `kernel` on `target`: two registers' worth (one when
/// the body is heavy), at least the kernel's accumulator partials.
pub fn block_lanes(kernel: &Kernel, target: &Target) -> usize {
    let partials = kernel.accumulator_partials();
    let unroll = if partials == 8 { 2 } else { 1 };
    (target.lanes * unroll).max(partials)
}

/// The LLVM module (text) of `kernel`, which must have been validated.
pub fn module(kernel: &Kernel, target: &Target) -> String {
    let lanes = block_lanes(kernel, target);
    let mut e = Emitter {
        body: String::new(),
        next: 0,
        lanes,
        prefetch: target.lanes < PREFETCH_BELOW_LANES,
        declarations: BTreeSet::new(),
        values: Vec::new(),
    };
    e.function(kernel);
    let mut text = String::new();
    for d in &e.declarations {
        let _ = writeln!(text, "declare {d}");
    }
    let _ = writeln!(
        text,
        "define void @{FUNCTION}(ptr noalias nocapture readonly %buffers, ptr noalias nocapture readonly %scalars, ptr noalias nocapture %accs, i64 %start.arg, i64 %end) #0 {{"
    );
    text.push_str(&e.body);
    text.push_str("}\n");
    let mut attributes = format!(
        "nounwind \"target-cpu\"=\"{}\" \"target-features\"=\"{}\"",
        target.cpu, target.features
    );
    if target.lanes >= 16 {
        // Without these LLVM may prefer 256-bit vectors on AVX-512 hosts.
        attributes.push_str(" \"prefer-vector-width\"=\"512\" \"min-legal-vector-width\"=\"512\"");
    }
    let _ = writeln!(text, "attributes #0 = {{ {attributes} }}");
    text
}

/// An op's value in the body: f32 lanes, a lane mask (`<B x i1>`), or both.
#[derive(Clone, Default)]
struct Slot {
    val: Option<String>,
    mask: Option<String>,
}

/// Writes instructions; values are SSA names (or constant operands).
struct Emitter {
    body: String,
    next: usize,
    lanes: usize,
    /// Whether the main loop prefetches its streams.
    prefetch: bool,
    declarations: BTreeSet<String>,
    /// The operands of [`Arith`] values, by [`Val`].
    values: Vec<String>,
}

/// LLVM's element type of a storage type.
fn element(storage: Storage) -> &'static str {
    match storage {
        Storage::F32 => "float",
        Storage::Bf16 => "i16",
    }
}

/// An i32 vector constant (its type comes from the instruction).
fn splat_i32(c: u32) -> String {
    format!("splat (i32 {})", c as i32)
}

/// An f32 constant as an LLVM operand (hexadecimal double, exact).
fn float_literal(c: f32) -> String {
    format!("0x{:016X}", f64::from(c).to_bits())
}

impl Emitter {
    fn line(&mut self, text: &str) {
        self.body.push_str("  ");
        self.body.push_str(text);
        self.body.push('\n');
    }

    fn label(&mut self, name: &str) {
        let _ = writeln!(self.body, "{name}:");
    }

    /// Emits `%tN = <rhs>` and returns `%tN`.
    fn def(&mut self, rhs: &str) -> String {
        self.next += 1;
        let name = format!("%t{}", self.next);
        let _ = writeln!(self.body, "  {name} = {rhs}");
        name
    }

    fn vec(&self, element: &str) -> String {
        format!("<{} x {element}>", self.lanes)
    }

    fn vf(&self) -> String {
        self.vec("float")
    }

    fn vd(&self) -> String {
        self.vec("double")
    }

    fn vi(&self) -> String {
        self.vec("i32")
    }

    fn vl(&self) -> String {
        self.vec("i64")
    }

    fn vm(&self) -> String {
        self.vec("i1")
    }

    fn splat(&self, element: &str, literal: &str) -> String {
        format!("splat ({element} {literal})")
    }

    fn f32s(&self, c: f32) -> String {
        // Exact for every f32 but NaNs, whose payloads go through the bits.
        if c.is_nan() {
            format!(
                "bitcast ({} {} to {})",
                self.vi(),
                self.splat("i32", &(c.to_bits() as i32).to_string()),
                self.vf()
            )
        } else {
            self.splat("float", &float_literal(c))
        }
    }

    fn i32s(&self, c: u32) -> String {
        splat_i32(c)
    }

    /// `<0, 1, ..., B - 1> * step` as an i32 vector constant.
    fn lane_ramp(&self, step: u32) -> String {
        let lanes: Vec<String> = (0..self.lanes as u32)
            .map(|l| format!("i32 {}", l.wrapping_mul(step) as i32))
            .collect();
        format!("<{}>", lanes.join(", "))
    }

    /// Calls intrinsic `name` (declared on first use) returning `ret`.
    fn intrinsic(&mut self, ret: &str, name: &str, args: &[(&str, &str)]) -> String {
        let types: Vec<&str> = args.iter().map(|(ty, _)| *ty).collect();
        self.declarations
            .insert(format!("{ret} @{name}({})", types.join(", ")));
        let args: Vec<String> = args.iter().map(|(ty, v)| format!("{ty} {v}")).collect();
        let call = format!("call {ret} @{name}({})", args.join(", "));
        if ret == "void" {
            self.line(&call);
            String::new()
        } else {
            self.def(&call)
        }
    }

    /// A unary f32-vector intrinsic such as `llvm.sqrt`.
    fn vf_intrinsic(&mut self, name: &str, x: &str) -> String {
        let vf = self.vf();
        let full = format!("llvm.{name}.v{}f32", self.lanes);
        self.intrinsic(&vf, &full, &[(&vf, x)])
    }

    /// Splats scalar `value` of type `element` over the lanes.
    fn broadcast(&mut self, element: &str, value: &str) -> String {
        let v = self.vec(element);
        let one = self.def(&format!(
            "insertelement {v} poison, {element} {value}, i64 0"
        ));
        self.def(&format!(
            "shufflevector {v} {one}, {v} poison, <{} x i32> zeroinitializer",
            self.lanes
        ))
    }

    /// [`bf16::mix32`] on values of type `ty` (i32 or an i32 vector), whose
    /// constants `constant` spells.
    fn mix32(&mut self, ty: &str, mut x: String, constant: &dyn Fn(u32) -> String) -> String {
        for (shift, multiplier) in bf16::MIX32_ROUNDS {
            let shifted = self.def(&format!("lshr {ty} {x}, {}", constant(shift)));
            x = self.def(&format!("xor {ty} {x}, {shifted}"));
            x = self.def(&format!("mul {ty} {x}, {}", constant(multiplier)));
        }
        let shifted = self.def(&format!(
            "lshr {ty} {x}, {}",
            constant(bf16::MIX32_FINAL_SHIFT)
        ));
        self.def(&format!("xor {ty} {x}, {shifted}"))
    }

    fn val(&mut self, env: &mut [Slot], i: u32) -> String {
        let slot = &env[i as usize];
        if let Some(v) = &slot.val {
            return v.clone();
        }
        let mask = slot.mask.clone().expect("op evaluated before use");
        let (vm, vf) = (self.vm(), self.vf());
        let one = self.f32s(1.0);
        let v = self.def(&format!(
            "select {vm} {mask}, {vf} {one}, {vf} zeroinitializer"
        ));
        env[i as usize].val = Some(v.clone());
        v
    }

    /// The lanes where the op's value holds (is not 0; NaN holds).
    fn mask(&mut self, env: &mut [Slot], i: u32) -> String {
        let slot = &env[i as usize];
        if let Some(m) = &slot.mask {
            return m.clone();
        }
        let v = slot.val.clone().expect("op evaluated before use");
        let m = self.def(&format!("fcmp une {} {v}, zeroinitializer", self.vf()));
        env[i as usize].mask = Some(m.clone());
        m
    }

    fn op(&mut self, kernel: &Kernel, env: &mut [Slot], i: usize, loads: &dyn Fn(u32) -> String) {
        let value = |v: String| Slot {
            val: Some(v),
            mask: None,
        };
        let mask = |m: String| Slot {
            val: None,
            mask: Some(m),
        };
        let vf = self.vf();
        let slot = match kernel.ops[i] {
            Op::Load(b) => value(loads(b)),
            Op::Scalar(_) | Op::Const(_) => unreachable!("emitted by `invariant`"),
            Op::Unary(UnaryOp::Not, a) => {
                let m = match env[a as usize].mask.clone() {
                    Some(m) => {
                        let t = self.splat("i1", "true");
                        self.def(&format!("xor {} {m}, {t}", self.vm()))
                    }
                    None => {
                        let x = self.val(env, a);
                        self.def(&format!("fcmp oeq {vf} {x}, zeroinitializer"))
                    }
                };
                mask(m)
            }
            Op::Unary(op, a) => {
                let x = self.val(env, a);
                value(self.unary(op, &x))
            }
            Op::Binary(op @ (BinaryOp::And | BinaryOp::Or), a, b) => {
                let ma = self.mask(env, a);
                let mb = self.mask(env, b);
                let name = if op == BinaryOp::And { "and" } else { "or" };
                mask(self.def(&format!("{name} {} {ma}, {mb}", self.vm())))
            }
            Op::Binary(op, a, b) => {
                let x = self.val(env, a);
                let y = self.val(env, b);
                let predicate = match op {
                    BinaryOp::Eq => Some("oeq"),
                    BinaryOp::Ne => Some("une"),
                    BinaryOp::Lt => Some("olt"),
                    BinaryOp::Le => Some("ole"),
                    BinaryOp::Gt => Some("ogt"),
                    BinaryOp::Ge => Some("oge"),
                    _ => None,
                };
                match predicate {
                    Some(p) => mask(self.def(&format!("fcmp {p} {vf} {x}, {y}"))),
                    None => value(self.binary(op, &x, &y)),
                }
            }
            Op::Select(c, a, b) => {
                let m = self.mask(env, c);
                let x = self.val(env, a);
                let y = self.val(env, b);
                value(self.def(&format!("select {} {m}, {vf} {x}, {vf} {y}", self.vm())))
            }
            Op::Lerp(a, b, w) => {
                let x = self.val(env, a);
                let y = self.val(env, b);
                let w = self.val(env, w);
                let d = self.def(&format!("fsub {vf} {y}, {x}"));
                let p = self.def(&format!("fmul {vf} {w}, {d}"));
                value(self.def(&format!("fadd {vf} {x}, {p}")))
            }
        };
        env[i] = slot;
    }

    fn unary(&mut self, op: UnaryOp, x: &str) -> String {
        let (vf, vi) = (self.vf(), self.vi());
        match op {
            UnaryOp::Bf16 => {
                let top = self.round_bf16_lanes(x, None);
                let sixteen = self.i32s(16);
                let bits = self.def(&format!("shl {vi} {top}, {sixteen}"));
                self.def(&format!("bitcast {vi} {bits} to {vf}"))
            }
            UnaryOp::Neg => self.def(&format!("fneg {vf} {x}")),
            UnaryOp::Abs => self.vf_intrinsic("fabs", x),
            UnaryOp::Sqrt => self.vf_intrinsic("sqrt", x),
            UnaryOp::Rsqrt => {
                let s = self.vf_intrinsic("sqrt", x);
                let one = self.f32s(1.0);
                self.def(&format!("fdiv {vf} {one}, {s}"))
            }
            UnaryOp::Floor => self.vf_intrinsic("floor", x),
            UnaryOp::Sign => {
                // Cranelift's formulation: (x & -0.0) | 1.0, zeroed where
                // x == 0, with a NaN's own bits or-ed back in.
                let bits = self.def(&format!("bitcast {vf} {x} to {vi}"));
                let sign_bit = self.i32s(0x8000_0000);
                let signed = self.def(&format!("and {vi} {bits}, {sign_bit}"));
                let one_bits = self.i32s(1.0f32.to_bits());
                let unit = self.def(&format!("or {vi} {signed}, {one_bits}"));
                let nonzero = self.def(&format!("fcmp une {vf} {x}, zeroinitializer"));
                let nonzero = self.def(&format!("sext {} {nonzero} to {vi}", self.vm()));
                let unit = self.def(&format!("and {vi} {unit}, {nonzero}"));
                let nan = self.def(&format!("fcmp uno {vf} {x}, {x}"));
                let nan = self.def(&format!("sext {} {nan} to {vi}", self.vm()));
                let nan = self.def(&format!("and {vi} {nan}, {bits}"));
                let r = self.def(&format!("or {vi} {unit}, {nan}"));
                self.def(&format!("bitcast {vi} {r} to {vf}"))
            }
            UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Cos | UnaryOp::Cbrt => {
                let w = self.widen(x);
                let f: fn(&mut Emitter, Val) -> Val = match op {
                    UnaryOp::Exp => approx::exp_f64,
                    UnaryOp::Log => approx::ln_f64,
                    UnaryOp::Tanh => approx::tanh_f64,
                    UnaryOp::Cos => approx::cos_f64,
                    _ => approx::cbrt_f64,
                };
                let r = self.approximate(&w, f);
                self.narrow(&r)
            }
            UnaryOp::Sigmoid => {
                let nx = self.def(&format!("fneg {vf} {x}"));
                let e = self.unary(UnaryOp::Exp, &nx);
                let one = self.f32s(1.0);
                let d = self.def(&format!("fadd {vf} {one}, {e}"));
                self.def(&format!("fdiv {vf} {one}, {d}"))
            }
            UnaryOp::Not => unreachable!("`not` yields a mask"),
        }
    }

    fn binary(&mut self, op: BinaryOp, x: &str, y: &str) -> String {
        let vf = self.vf();
        match op {
            BinaryOp::Add => self.def(&format!("fadd {vf} {x}, {y}")),
            BinaryOp::Sub => self.def(&format!("fsub {vf} {x}, {y}")),
            BinaryOp::Mul => self.def(&format!("fmul {vf} {x}, {y}")),
            BinaryOp::Div => self.def(&format!("fdiv {vf} {x}, {y}")),
            BinaryOp::Pow => {
                let a = self.widen(x);
                let b = self.widen(y);
                let (a, b) = (self.intern(a), self.intern(b));
                let r = approx::pow_f64(self, a, b);
                let r = self.text(r);
                self.narrow(&r)
            }
            BinaryOp::Max | BinaryOp::Min => {
                // f32::max/min: the other operand when one is NaN; `x` on ties.
                let (small, big) = if op == BinaryOp::Max { (x, y) } else { (y, x) };
                let better = self.def(&format!("fcmp olt {vf} {small}, {big}"));
                let nan = self.def(&format!("fcmp uno {vf} {x}, {x}"));
                let take_y = self.def(&format!("or {} {better}, {nan}", self.vm()));
                self.def(&format!(
                    "select {} {take_y}, {vf} {y}, {vf} {x}",
                    self.vm()
                ))
            }
            _ => unreachable!("comparisons and logic yield masks"),
        }
    }

    fn widen(&mut self, x: &str) -> String {
        self.def(&format!("fpext {} {x} to {}", self.vf(), self.vd()))
    }

    fn narrow(&mut self, x: &str) -> String {
        self.def(&format!("fptrunc {} {x} to {}", self.vd(), self.vf()))
    }

    /// Loads a block of buffer elements at `at`, widened to f32.
    fn load(&mut self, storage: Storage, at: &str) -> String {
        let (vf, vi) = (self.vf(), self.vi());
        match storage {
            Storage::F32 => self.def(&format!("load {vf}, ptr {at}, align 4")),
            Storage::Bf16 => {
                let vh = self.vec("i16");
                let patterns = self.def(&format!("load {vh}, ptr {at}, align 2"));
                let wide = self.def(&format!("zext {vh} {patterns} to {vi}"));
                let sixteen = self.i32s(16);
                let bits = self.def(&format!("shl {vi} {wide}, {sixteen}"));
                self.def(&format!("bitcast {vi} {bits} to {vf}"))
            }
        }
    }

    /// `v` rounded to bf16 patterns: [`bf16::round_stochastic`] with the
    /// 16-bit lanes of `random`, or [`bf16::round_nearest_even`] without.
    fn round_bf16(&mut self, v: &str, random: Option<String>) -> String {
        let top = self.round_bf16_lanes(v, random);
        self.def(&format!("trunc {} {top} to {}", self.vi(), self.vec("i16")))
    }

    /// [`Gen::round_bf16`]'s patterns, one per i32 lane.
    fn round_bf16_lanes(&mut self, v: &str, random: Option<String>) -> String {
        let (vf, vi, vm) = (self.vf(), self.vi(), self.vm());
        let bits = self.def(&format!("bitcast {vf} {v} to {vi}"));
        let increment = match random {
            Some(random) => random,
            None => {
                let sixteen = self.i32s(16);
                let kept = self.def(&format!("lshr {vi} {bits}, {sixteen}"));
                let one = self.i32s(1);
                let lowest = self.def(&format!("and {vi} {kept}, {one}"));
                let half = self.i32s(0x7FFF);
                self.def(&format!("add {vi} {lowest}, {half}"))
            }
        };
        let nan = self.def(&format!("fcmp uno {vf} {v}, {v}"));
        let increment = self.def(&format!(
            "select {vm} {nan}, {vi} zeroinitializer, {vi} {increment}"
        ));
        let quiet = self.i32s(bf16::QUIET_BIT);
        let quiet = self.def(&format!(
            "select {vm} {nan}, {vi} {quiet}, {vi} zeroinitializer"
        ));
        let bits = self.def(&format!("or {vi} {bits}, {quiet}"));
        let rounded = self.def(&format!("add {vi} {bits}, {increment}"));
        let sixteen = self.i32s(16);
        self.def(&format!("lshr {vi} {rounded}, {sixteen}"))
    }

    /// Combines `x` into `acc` (vectors or scalars of type `ty`, doubles):
    /// the accumulation step, under which NaN never wins max/min.
    fn accumulate(&mut self, reduce: ReduceOp, ty: &str, acc: &str, x: &str) -> String {
        match reduce {
            ReduceOp::Sum => self.def(&format!("fadd {ty} {acc}, {x}")),
            ReduceOp::Max | ReduceOp::Min => {
                let (a, b) = if reduce == ReduceOp::Max {
                    (acc, x)
                } else {
                    (x, acc)
                };
                let better = self.def(&format!("fcmp olt {ty} {a}, {b}"));
                let mask_ty = ty.replace("double", "i1");
                self.def(&format!("select {mask_ty} {better}, {ty} {x}, {ty} {acc}"))
            }
        }
    }

    /// Scalar f64 combine with [`Kernel::combine`]'s semantics (`a` may be NaN).
    fn combine(&mut self, reduce: ReduceOp, a: &str, b: &str) -> String {
        match reduce {
            ReduceOp::Sum => self.def(&format!("fadd double {a}, {b}")),
            ReduceOp::Max | ReduceOp::Min => {
                let (x, y) = if reduce == ReduceOp::Max {
                    (a, b)
                } else {
                    (b, a)
                };
                let better = self.def(&format!("fcmp olt double {x}, {y}"));
                let nan = self.def(&format!("fcmp uno double {a}, {a}"));
                let take_b = self.def(&format!("or i1 {better}, {nan}"));
                self.def(&format!("select i1 {take_b}, double {b}, double {a}"))
            }
        }
    }

    /// Evaluates the load-independent ops once, in the entry block.
    fn invariant(&mut self, kernel: &Kernel, an: &Analysis, env: &mut [Slot]) {
        for (i, op) in kernel.ops.iter().enumerate() {
            if !an.live[i] || an.variant[i] {
                continue;
            }
            match *op {
                Op::Scalar(k) => {
                    let at = self.def(&format!(
                        "getelementptr inbounds float, ptr %scalars, i64 {k}"
                    ));
                    let s = self.def(&format!("load float, ptr {at}, align 4"));
                    env[i].val = Some(self.broadcast("float", &s));
                }
                Op::Const(c) => env[i].val = Some(self.f32s(c)),
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

    fn function(&mut self, kernel: &Kernel) {
        self.label("entry");
        if kernel.stores.is_empty() && kernel.accumulators.is_empty() {
            self.line("ret void");
            return;
        }
        let an = analyse(kernel);
        let lanes = self.lanes;
        let (vf, vi, vm) = (self.vf(), self.vi(), self.vm());
        let partials = kernel.accumulator_partials();
        let vp = format!("<{partials} x double>");
        let start = self.intrinsic(
            "i64",
            "llvm.umin.i64",
            &[("i64", "%start.arg"), ("i64", "%end")],
        );

        // Buffers touched: loaded ones, then stored-only ones.
        let mut used = an.loaded.clone();
        for &(b, _) in &kernel.stores {
            if !used.contains(&b) {
                used.push(b);
            }
        }
        let storage = |b: u32| kernel.storage[b as usize];
        let mut base = Vec::new();
        let mut stack = Vec::new();
        for &b in &used {
            let at = self.def(&format!(
                "getelementptr inbounds ptr, ptr %buffers, i64 {b}"
            ));
            base.push(self.def(&format!("load ptr, ptr {at}, align 8")));
            let bytes = lanes * storage(b).bytes();
            stack.push(self.def(&format!("alloca [{bytes} x i8], align 64")));
        }
        let dense = |b: u32| used.iter().position(|&u| u == b).expect("a used buffer");

        let mut invariant = vec![Slot::default(); kernel.ops.len()];
        self.invariant(kernel, &an, &mut invariant);

        // Stochastic rounding: the key of each stream bf16 stores draw from.
        let mut streams: Vec<u32> = kernel
            .stores
            .iter()
            .filter(|&&(b, _)| storage(b) == Storage::Bf16)
            .map(|&(b, _)| bf16::stream(b))
            .collect();
        streams.sort_unstable();
        streams.dedup();
        let keys: Vec<String> = match kernel.rounding {
            Rounding::Stochastic { seed_scalar } if !streams.is_empty() => {
                let at = self.def(&format!(
                    "getelementptr inbounds float, ptr %scalars, i64 {seed_scalar}"
                ));
                let seed = self.def(&format!("load i32, ptr {at}, align 4"));
                let mut keys = Vec::new();
                for &stream in &streams {
                    let x = self.def(&format!("xor i32 {seed}, {}", bf16::mix32(stream) as i32));
                    let key = self.mix32("i32", x, &|c| (c as i32).to_string());
                    keys.push(self.broadcast("i32", &key));
                }
                keys
            }
            _ => Vec::new(),
        };
        let identity = |reduce: ReduceOp| {
            format!(
                "splat (double 0x{:016X})",
                Kernel::identity(reduce).to_bits()
            )
        };
        self.line("br label %head");

        // head: a whole block left?
        self.label("head");
        let _ = writeln!(
            self.body,
            "  %i = phi i64 [ {start}, %entry ], [ %i.next, %latch ]"
        );
        for (k, &(reduce, _)) in kernel.accumulators.iter().enumerate() {
            let _ = writeln!(
                self.body,
                "  %acc{k} = phi {vp} [ {}, %entry ], [ %acc{k}.next, %latch ]",
                identity(reduce)
            );
        }
        let left = self.def("sub i64 %end, %i");
        let more = self.def(&format!("icmp uge i64 {left}, {lanes}"));
        self.line(&format!("br i1 {more}, label %main, label %check_tail"));

        self.label("main");
        let mut in_buffer = Vec::new();
        for &b in &used {
            let p = self.def(&format!(
                "getelementptr inbounds {}, ptr {}, i64 %i",
                element(storage(b)),
                base[dense(b)]
            ));
            if self.prefetch {
                let ahead = self.def(&format!(
                    "getelementptr i8, ptr {p}, i64 {PREFETCH_DISTANCE}"
                ));
                self.intrinsic(
                    "void",
                    "llvm.prefetch.p0",
                    &[("ptr", &ahead), ("i32", "0"), ("i32", "3"), ("i32", "1")],
                );
            }
            in_buffer.push(p);
        }
        self.line("br label %body");

        self.label("check_tail");
        let some = self.def("icmp ult i64 %i, %end");
        self.line(&format!("br i1 {some}, label %tail_in, label %exit"));

        // The tail: the remaining n < B elements, zero-padded on the stack.
        self.label("tail_in");
        let n = self.def("sub i64 %end, %i");
        for &b in &an.loaded {
            let s = &stack[dense(b)];
            let bytes = storage(b).bytes();
            self.memset(s, lanes * bytes);
            let src = self.def(&format!(
                "getelementptr inbounds {}, ptr {}, i64 %i",
                element(storage(b)),
                base[dense(b)]
            ));
            let len = self.def(&format!("mul i64 {n}, {bytes}"));
            self.memcpy(s, &src, &len);
        }
        let count = self.def(&format!("trunc i64 {n} to i32"));
        let count = self.broadcast("i32", &count);
        let tail_mask = self.def(&format!("icmp ult {vi} {}, {count}", self.lane_ramp(1)));
        self.line("br label %body");

        // The body, once, for both paths.
        self.label("body");
        let mut at = Vec::new();
        for (d, _) in used.iter().enumerate() {
            let p = format!("%at{d}");
            let _ = writeln!(
                self.body,
                "  {p} = phi ptr [ {}, %main ], [ {}, %tail_in ]",
                in_buffer[d], stack[d]
            );
            at.push(p);
        }
        let all = self.splat("i1", "true");
        let _ = writeln!(
            self.body,
            "  %active = phi {vm} [ {all}, %main ], [ {tail_mask}, %tail_in ]"
        );
        let _ = writeln!(
            self.body,
            "  %in_tail = phi i1 [ false, %main ], [ true, %tail_in ]"
        );
        let mut loads = vec![String::new(); used.len()];
        for &b in &an.loaded {
            loads[dense(b)] = self.load(storage(b), &at[dense(b)]);
        }
        let mut env = invariant;
        for i in 0..kernel.ops.len() {
            if an.live[i] && an.variant[i] {
                self.op(kernel, &mut env, i, &|b| loads[dense(b)].clone());
            }
        }
        let counter = (!keys.is_empty()).then(|| {
            let i = self.def("trunc i64 %i to i32");
            let first = self.def(&format!("mul i32 {i}, {}", bf16::INDEX_STEP as i32));
            let first = self.broadcast("i32", &first);
            let ramp = self.lane_ramp(bf16::INDEX_STEP);
            self.def(&format!("add {vi} {first}, {ramp}"))
        });
        let mut draws: Vec<(u32, String)> = Vec::new();
        for &(b, op) in &kernel.stores {
            let v = self.val(&mut env, op);
            let p = &at[dense(b)];
            match storage(b) {
                Storage::F32 => self.line(&format!("store {vf} {v}, ptr {p}, align 4")),
                Storage::Bf16 => {
                    let random = match &counter {
                        Some(counter) => {
                            let stream = bf16::stream(b);
                            let draw = match draws.iter().find(|(s, _)| *s == stream) {
                                Some((_, d)) => d.clone(),
                                None => {
                                    let key = &keys[streams
                                        .iter()
                                        .position(|&s| s == stream)
                                        .expect("a stored stream")];
                                    let x = self.def(&format!("add {vi} {counter}, {key}"));
                                    let d = self.mix32(&vi, x, &splat_i32);
                                    draws.push((stream, d.clone()));
                                    d
                                }
                            };
                            Some(match bf16::draw_shift(b) {
                                0 => {
                                    let low = self.i32s(0xFFFF);
                                    self.def(&format!("and {vi} {draw}, {low}"))
                                }
                                shift => {
                                    let by = self.i32s(shift);
                                    self.def(&format!("lshr {vi} {draw}, {by}"))
                                }
                            })
                        }
                        None => None,
                    };
                    let patterns = self.round_bf16(&v, random);
                    let vh = self.vec("i16");
                    self.line(&format!("store {vh} {patterns}, ptr {p}, align 2"));
                }
            }
        }
        let mut accumulated = Vec::new();
        for (k, &(reduce, op)) in kernel.accumulators.iter().enumerate() {
            let v = self.val(&mut env, op);
            let pad = self.f32s(Kernel::identity(reduce) as f32);
            let v = self.def(&format!("select {vm} %active, {vf} {v}, {vf} {pad}"));
            let wide = self.widen(&v);
            let mut acc = format!("%acc{k}");
            for chunk in 0..lanes / partials {
                let picks: Vec<String> = (chunk * partials..(chunk + 1) * partials)
                    .map(|l| format!("i32 {l}"))
                    .collect();
                let part = self.def(&format!(
                    "shufflevector {} {wide}, {} poison, <{partials} x i32> <{}>",
                    self.vd(),
                    self.vd(),
                    picks.join(", ")
                ));
                acc = self.accumulate(reduce, &vp, &acc, &part);
            }
            accumulated.push(acc);
        }
        self.line("br i1 %in_tail, label %tail_out, label %latch");

        self.label("latch");
        self.line(&format!("%i.next = add i64 %i, {lanes}"));
        self.line("br label %head");

        // After the tail: copy the stored elements back.
        self.label("tail_out");
        let n = self.def("sub i64 %end, %i");
        for &(b, _) in &kernel.stores {
            let dst = self.def(&format!(
                "getelementptr inbounds {}, ptr {}, i64 %i",
                element(storage(b)),
                base[dense(b)]
            ));
            let len = self.def(&format!("mul i64 {n}, {}", storage(b).bytes()));
            let s = stack[dense(b)].clone();
            self.memcpy(&dst, &s, &len);
        }
        self.line("br label %exit");

        // Exit: fold the partials in the fixed order and combine.
        self.label("exit");
        let done: Vec<String> = (0..kernel.accumulators.len())
            .map(|k| {
                self.def(&format!(
                    "phi {vp} [ %acc{k}, %check_tail ], [ %acc{k}.next, %tail_out ]"
                ))
            })
            .collect();
        for (k, &(reduce, _)) in kernel.accumulators.iter().enumerate() {
            let done = &done[k];
            let lane =
                |e: &mut Emitter, l: usize| e.def(&format!("extractelement {vp} {done}, i64 {l}"));
            let mut total: Option<[String; 2]> = None;
            for group in 0..partials / 4 {
                let mut pair = Vec::new();
                for j in 0..2 {
                    let a = lane(self, 4 * group + j);
                    let b = lane(self, 4 * group + 2 + j);
                    pair.push(self.accumulate(reduce, "double", &a, &b));
                }
                let pair = [pair[0].clone(), pair[1].clone()];
                total = Some(match total {
                    None => pair,
                    Some(t) => [
                        self.accumulate(reduce, "double", &t[0], &pair[0]),
                        self.accumulate(reduce, "double", &t[1], &pair[1]),
                    ],
                });
            }
            let [l0, l1] = total.expect("at least four partials");
            let sum = self.combine(reduce, &l0, &l1);
            let at = self.def(&format!(
                "getelementptr inbounds double, ptr %accs, i64 {k}"
            ));
            let previous = self.def(&format!("load double, ptr {at}, align 8"));
            let result = self.combine(reduce, &previous, &sum);
            self.line(&format!("store double {result}, ptr {at}, align 8"));
        }
        self.line("ret void");
        // The head's and the exit's phis called the body's result
        // `%acc{k}.next` before it had a name.
        for (k, acc) in accumulated.iter().enumerate() {
            self.body = self.body.replace(&format!("%acc{k}.next"), acc);
        }
    }

    fn memset(&mut self, to: &str, bytes: usize) {
        let bytes = bytes.to_string();
        self.intrinsic(
            "void",
            "llvm.memset.p0.i64",
            &[("ptr", to), ("i8", "0"), ("i64", &bytes), ("i1", "false")],
        );
    }

    fn memcpy(&mut self, to: &str, from: &str, bytes: &str) {
        self.intrinsic(
            "void",
            "llvm.memcpy.p0.p0.i64",
            &[("ptr", to), ("ptr", from), ("i64", bytes), ("i1", "false")],
        );
    }
}

/// A value of the f64 arithmetic the approximations are written in: an
/// entry of [`Emitter::values`] (an SSA name or a constant operand).
#[derive(Clone, Copy)]
struct Val(usize);

impl Emitter {
    fn intern(&mut self, text: String) -> Val {
        self.values.push(text);
        Val(self.values.len() - 1)
    }

    fn text(&self, v: Val) -> String {
        self.values[v.0].clone()
    }

    /// Defines `op` applied to `args` (`{0}`, `{1}` in `pattern` are their
    /// texts, `{vd}`/`{vl}`/`{vm}` the vector types).
    fn apply(&mut self, pattern: &str, args: &[Val]) -> Val {
        let mut rhs = pattern
            .replace("{vd}", &self.vd())
            .replace("{vl}", &self.vl())
            .replace("{vm}", &self.vm());
        for (k, &a) in args.iter().enumerate() {
            rhs = rhs.replace(&format!("{{{k}}}"), &self.text(a));
        }
        let name = self.def(&rhs);
        self.intern(name)
    }

    /// `f` (an approximation of `approx`) on f64 vector `x`.
    fn approximate(&mut self, x: &str, f: fn(&mut Emitter, Val) -> Val) -> String {
        let x = self.intern(x.to_string());
        let r = f(self, x);
        self.text(r)
    }
}

/// LLVM f64 vector arithmetic: the emitter's side of [`Arith`].
impl Arith for Emitter {
    type F = Val;
    type I = Val;
    type M = Val;
    fn f(&mut self, c: f64) -> Val {
        let c = self.splat("double", &format!("0x{:016X}", c.to_bits()));
        self.intern(c)
    }
    fn i(&mut self, c: u64) -> Val {
        let c = self.splat("i64", &(c as i64).to_string());
        self.intern(c)
    }
    fn add(&mut self, a: Val, b: Val) -> Val {
        self.apply("fadd {vd} {0}, {1}", &[a, b])
    }
    fn sub(&mut self, a: Val, b: Val) -> Val {
        self.apply("fsub {vd} {0}, {1}", &[a, b])
    }
    fn mul(&mut self, a: Val, b: Val) -> Val {
        self.apply("fmul {vd} {0}, {1}", &[a, b])
    }
    fn div(&mut self, a: Val, b: Val) -> Val {
        self.apply("fdiv {vd} {0}, {1}", &[a, b])
    }
    fn neg(&mut self, a: Val) -> Val {
        self.apply("fneg {vd} {0}", &[a])
    }
    fn abs(&mut self, a: Val) -> Val {
        let (vd, a) = (self.vd(), self.text(a));
        let name = format!("llvm.fabs.v{}f64", self.lanes);
        let r = self.intrinsic(&vd, &name, &[(&vd, &a)]);
        self.intern(r)
    }
    fn floor(&mut self, a: Val) -> Val {
        let (vd, a) = (self.vd(), self.text(a));
        let name = format!("llvm.floor.v{}f64", self.lanes);
        let r = self.intrinsic(&vd, &name, &[(&vd, &a)]);
        self.intern(r)
    }
    fn lt(&mut self, a: Val, b: Val) -> Val {
        self.apply("fcmp olt {vd} {0}, {1}", &[a, b])
    }
    fn eq(&mut self, a: Val, b: Val) -> Val {
        self.apply("fcmp oeq {vd} {0}, {1}", &[a, b])
    }
    fn is_nan(&mut self, a: Val) -> Val {
        self.apply("fcmp uno {vd} {0}, {0}", &[a])
    }
    fn and(&mut self, a: Val, b: Val) -> Val {
        self.apply("and {vm} {0}, {1}", &[a, b])
    }
    fn or(&mut self, a: Val, b: Val) -> Val {
        self.apply("or {vm} {0}, {1}", &[a, b])
    }
    fn not(&mut self, a: Val) -> Val {
        self.apply("xor {vm} {0}, splat (i1 true)", &[a])
    }
    fn sel(&mut self, m: Val, a: Val, b: Val) -> Val {
        self.apply("select {vm} {0}, {vd} {1}, {vd} {2}", &[m, a, b])
    }
    fn bits(&mut self, a: Val) -> Val {
        self.apply("bitcast {vd} {0} to {vl}", &[a])
    }
    fn float(&mut self, a: Val) -> Val {
        self.apply("bitcast {vl} {0} to {vd}", &[a])
    }
    fn iadd(&mut self, a: Val, b: Val) -> Val {
        self.apply("add {vl} {0}, {1}", &[a, b])
    }
    fn iand(&mut self, a: Val, b: Val) -> Val {
        self.apply("and {vl} {0}, {1}", &[a, b])
    }
    fn shl(&mut self, a: Val, by: u8) -> Val {
        self.apply(&format!("shl {{vl}} {{0}}, splat (i64 {by})"), &[a])
    }
    fn ushr(&mut self, a: Val, by: u8) -> Val {
        self.apply(&format!("lshr {{vl}} {{0}}, splat (i64 {by})"), &[a])
    }
    fn ieq(&mut self, a: Val, b: Val) -> Val {
        self.apply("icmp eq {vl} {0}, {1}", &[a, b])
    }
}
