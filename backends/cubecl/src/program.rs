//! A kernel as the device kernel takes it: the kernel IR's ops, stores and
//! accumulators as a comptime value of [`crate::kernels::pass`], which
//! cubecl expands once per distinct program (comptime arguments are part of
//! its kernel id) and caches. Lowering here validates the kernel once, so
//! expanding the device kernel never meets an operand it cannot resolve.

use optc_compiler::ir::{BinaryOp, ReduceOp, UnaryOp};
use optc_compiler::kernel::{self, Kernel, Op, Rounding, Storage};

/// One elementwise operation; operands are indices of earlier operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceOp {
    /// Element `i` of the buffer (an index into [`Program::buffers`]).
    Load(usize),
    /// Scalar argument `k` of the element's tensor.
    Scalar(usize),
    /// An f32 constant, by its bit pattern (so that programs hash).
    Const(u32),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Select(usize, usize, usize),
    Lerp(usize, usize, usize),
}

/// Where one kernel buffer lives among the device kernel's bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// Index into the f32 buffers.
    F32(usize),
    /// Index into the bf16 buffers (two elements per 32-bit word).
    Bf16(usize),
}

/// A validated kernel in device form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Program {
    pub ops: Vec<DeviceOp>,
    /// `(buffer, op)`: the buffer's element takes the op's value.
    pub stores: Vec<(usize, usize)>,
    /// `(reduction, op)`, combined per block in f64.
    pub accumulators: Vec<(ReduceOp, usize)>,
    /// Each kernel buffer's binding, in the kernel's numbering.
    pub buffers: Vec<Binding>,
    /// Scalar arguments per tensor.
    pub scalars: usize,
    /// The scalar argument that carries the stochastic-rounding seed (as its
    /// bit pattern), when bf16 stores round stochastically.
    pub seed_scalar: Option<usize>,
}

impl Program {
    /// Lowers `kernel`, or says why it is not a valid kernel.
    pub fn lower(kernel: &Kernel) -> Result<Program, String> {
        kernel::validate(kernel)?;
        let index = |k: u32| k as usize;
        let ops = kernel
            .ops
            .iter()
            .map(|op| match *op {
                Op::Load(b) => DeviceOp::Load(index(b)),
                Op::Scalar(s) => DeviceOp::Scalar(index(s)),
                Op::Const(c) => DeviceOp::Const(c.to_bits()),
                Op::Unary(u, a) => DeviceOp::Unary(u, index(a)),
                Op::Binary(b, x, y) => DeviceOp::Binary(b, index(x), index(y)),
                Op::Select(c, a, b) => DeviceOp::Select(index(c), index(a), index(b)),
                Op::Lerp(a, b, w) => DeviceOp::Lerp(index(a), index(b), index(w)),
            })
            .collect();
        let (mut f32s, mut bf16s) = (0, 0);
        let buffers = kernel
            .storage
            .iter()
            .map(|storage| match storage {
                Storage::F32 => {
                    f32s += 1;
                    Binding::F32(f32s - 1)
                }
                Storage::Bf16 => {
                    bf16s += 1;
                    Binding::Bf16(bf16s - 1)
                }
            })
            .collect();
        Ok(Program {
            ops,
            stores: kernel
                .stores
                .iter()
                .map(|&(b, op)| (index(b), index(op)))
                .collect(),
            accumulators: kernel
                .accumulators
                .iter()
                .map(|&(r, op)| (r, index(op)))
                .collect(),
            buffers,
            scalars: index(kernel.scalars),
            seed_scalar: match kernel.rounding {
                Rounding::NearestEven => None,
                Rounding::Stochastic { seed_scalar } => Some(index(seed_scalar)),
            },
        })
    }

    /// Buffers bound as f32 arrays.
    pub fn f32_buffers(&self) -> usize {
        self.buffers
            .iter()
            .filter(|b| matches!(b, Binding::F32(_)))
            .count()
    }

    /// Buffers bound as packed bf16 words.
    pub fn bf16_buffers(&self) -> usize {
        self.buffers.len() - self.f32_buffers()
    }

    /// Whether each unit handles pairs of neighbouring elements (a bf16
    /// word holds two, and only one unit may write it).
    pub fn pairs(&self) -> bool {
        self.bf16_buffers() > 0
    }
}
