use optc_compiler::ir::{BinaryOp, UnaryOp};
use optc_compiler::kernel::{Kernel, Op};
fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let k = if which == "exp" {
        Kernel {
            ops: vec![Op::Load(0), Op::Unary(UnaryOp::Exp, 0)],
            stores: vec![(1, 1)],
            accumulators: vec![],
            buffers: 2,
            scalars: 0,
        }
    } else {
        Kernel {
            ops: vec![
                Op::Load(0),
                Op::Load(1),
                Op::Scalar(0),
                Op::Binary(BinaryOp::Mul, 1, 2),
                Op::Binary(BinaryOp::Add, 0, 3),
                Op::Unary(UnaryOp::Sqrt, 4),
            ],
            stores: vec![(0, 5)],
            accumulators: vec![(optc_compiler::ir::ReduceOp::Sum, 4)],
            buffers: 2,
            scalars: 1,
        }
    };
    let mut jit = optc_jit::Jit::new().unwrap();
    jit.compile(&k).unwrap();
}
