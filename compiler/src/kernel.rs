//! Kernels: what a backend compiles. A kernel is one pass over a range of
//! elements of one tensor: a straight-line SSA program of elementwise
//! operations that loads from buffers, reads f32 scalars, stores to buffers
//! and accumulates reductions in f64. The planner (`plan.rs`) cuts a rule
//! into kernels; [`run`] here is their reference semantics, which every
//! backend must reproduce (bit-exactly, except where a backend approximates a
//! transcendental, within the tolerance it documents).

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

/// One pass: `ops` in order for every element index in the range, then the
/// stores and the accumulations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Kernel {
    pub ops: Vec<Op>,
    /// `(buffer, op)`: buffer[i] = value of op at element i. A buffer is
    /// stored at most once; stores happen after every load of the element.
    pub stores: Vec<(u32, u32)>,
    /// `(reduction, op)`: accumulator k combines the op's value over the range,
    /// in f64 (sum, max or min).
    pub accumulators: Vec<(ReduceOp, u32)>,
    /// Buffers the kernel reads or writes (pointer arguments).
    pub buffers: u32,
    /// Scalar arguments.
    pub scalars: u32,
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

    /// Bytes one element costs in f32: its loads and stores.
    pub fn bytes_per_element(&self) -> usize {
        4 * (self.loaded_buffers().len() + self.stores.len())
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

/// Reference semantics: runs `kernel` over elements `range` of `buffers`,
/// combining into `accumulators` (which the caller initialises, usually with
/// [`Kernel::identity`]). Elements are processed in increasing order.
pub fn run(
    kernel: &Kernel,
    buffers: &mut [&mut [f32]],
    scalars: &[f32],
    accumulators: &mut [f64],
    range: std::ops::Range<usize>,
) {
    let pointers: Vec<*mut f32> = buffers.iter_mut().map(|b| b.as_mut_ptr()).collect();
    let fits =
        pointers.len() >= kernel.buffers as usize && buffers.iter().all(|b| range.end <= b.len());
    if fits && range.start <= range.end {
        // SAFETY: every buffer holds the range, and the &mut borrows make them distinct.
        unsafe { run_raw(kernel, &pointers, scalars, accumulators, range) }
    }
}

/// [`run`] over raw buffer pointers, as a runtime calls kernels: `g` is
/// shared (never stored to), `p` and state are updated in place.
///
/// # Safety
/// Every pointer must be valid for reads of the whole range, and for writes
/// of it where the kernel stores; distinct buffers must not overlap.
pub unsafe fn run_raw(
    kernel: &Kernel,
    buffers: &[*mut f32],
    scalars: &[f32],
    accumulators: &mut [f64],
    range: std::ops::Range<usize>,
) {
    let mut values = vec![0.0f32; kernel.ops.len()];
    for i in range {
        for (slot, op) in kernel.ops.iter().enumerate() {
            let v = |k: u32| values[k as usize];
            values[slot] = match *op {
                // SAFETY: the caller guarantees the pointer holds element i.
                Op::Load(b) => unsafe { *buffers[b as usize].add(i) },
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
            // SAFETY: as for loads; stored buffers are writable.
            unsafe { *buffers[buffer as usize].add(i) = values[value as usize] };
        }
    }
}

/// Operations a backend may approximate, with the accuracy it must meet.
pub fn is_transcendental(op: UnaryOp) -> bool {
    matches!(
        op,
        UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Cos
    )
}

/// `pow` is approximated too (as `exp(b log a)` with the sign rules of `powf`).
pub fn is_approximated(op: BinaryOp) -> bool {
    op == BinaryOp::Pow
}
