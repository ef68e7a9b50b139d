//! The built-in functions as data: one line each, name, arity, meaning.
//! Lowering looks calls up here before user functions.

use crate::ir::{BinaryOp, ReduceOp, Scope, UnaryOp};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Builtin {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Select,
    Lerp,
    /// `clamp(x, lo, hi) = min(max(x, lo), hi)`.
    Clamp,
    Reduce(ReduceOp, Scope),
    /// `mean(x) = sum(x) / count`.
    Mean(Scope),
    /// `norm(x) = sqrt(sum(x * x))`.
    Norm(Scope),
    /// `dot(x, y) = sum(x * y)`.
    Dot(Scope),
    /// `gram(x, y)`, a gram matrix (`gram(x) = gram(x, x)`).
    Gram,
    /// `matmul(a, b)`, a gram matrix times a gram matrix or an element value.
    MatMul,
    /// `transpose(a)` of a gram matrix.
    Transpose,
}

impl Builtin {
    /// What a reduction (`sum`, `mean`, `norm`, `dot` and their `row_`,
    /// `col_` and `group_` forms) runs over; `None` for other built-ins.
    pub fn scope(self) -> Option<Scope> {
        match self {
            Builtin::Reduce(_, scope)
            | Builtin::Mean(scope)
            | Builtin::Norm(scope)
            | Builtin::Dot(scope) => Some(scope),
            _ => None,
        }
    }
}

/// `(name, arity, meaning)`. A name may appear with several arities (`max`).
pub const BUILTINS: &[(&str, usize, Builtin)] = &[
    ("abs", 1, Builtin::Unary(UnaryOp::Abs)),
    ("sign", 1, Builtin::Unary(UnaryOp::Sign)),
    ("sqrt", 1, Builtin::Unary(UnaryOp::Sqrt)),
    ("rsqrt", 1, Builtin::Unary(UnaryOp::Rsqrt)),
    ("exp", 1, Builtin::Unary(UnaryOp::Exp)),
    ("log", 1, Builtin::Unary(UnaryOp::Log)),
    ("tanh", 1, Builtin::Unary(UnaryOp::Tanh)),
    ("sigmoid", 1, Builtin::Unary(UnaryOp::Sigmoid)),
    ("cos", 1, Builtin::Unary(UnaryOp::Cos)),
    ("cbrt", 1, Builtin::Unary(UnaryOp::Cbrt)),
    ("floor", 1, Builtin::Unary(UnaryOp::Floor)),
    ("bf16", 1, Builtin::Unary(UnaryOp::Bf16)),
    ("pow", 2, Builtin::Binary(BinaryOp::Pow)),
    ("min", 2, Builtin::Binary(BinaryOp::Min)),
    ("max", 2, Builtin::Binary(BinaryOp::Max)),
    ("select", 3, Builtin::Select),
    ("lerp", 3, Builtin::Lerp),
    ("clamp", 3, Builtin::Clamp),
    ("sum", 1, Builtin::Reduce(ReduceOp::Sum, Scope::Tensor)),
    ("max", 1, Builtin::Reduce(ReduceOp::Max, Scope::Tensor)),
    ("min", 1, Builtin::Reduce(ReduceOp::Min, Scope::Tensor)),
    ("mean", 1, Builtin::Mean(Scope::Tensor)),
    ("norm", 1, Builtin::Norm(Scope::Tensor)),
    ("dot", 2, Builtin::Dot(Scope::Tensor)),
    ("group_sum", 1, Builtin::Reduce(ReduceOp::Sum, Scope::Group)),
    ("group_max", 1, Builtin::Reduce(ReduceOp::Max, Scope::Group)),
    ("group_min", 1, Builtin::Reduce(ReduceOp::Min, Scope::Group)),
    ("group_mean", 1, Builtin::Mean(Scope::Group)),
    ("group_norm", 1, Builtin::Norm(Scope::Group)),
    ("group_dot", 2, Builtin::Dot(Scope::Group)),
    ("row_sum", 1, Builtin::Reduce(ReduceOp::Sum, Scope::Rows)),
    ("row_max", 1, Builtin::Reduce(ReduceOp::Max, Scope::Rows)),
    ("row_min", 1, Builtin::Reduce(ReduceOp::Min, Scope::Rows)),
    ("row_mean", 1, Builtin::Mean(Scope::Rows)),
    ("row_norm", 1, Builtin::Norm(Scope::Rows)),
    ("row_dot", 2, Builtin::Dot(Scope::Rows)),
    ("col_sum", 1, Builtin::Reduce(ReduceOp::Sum, Scope::Cols)),
    ("col_max", 1, Builtin::Reduce(ReduceOp::Max, Scope::Cols)),
    ("col_min", 1, Builtin::Reduce(ReduceOp::Min, Scope::Cols)),
    ("col_mean", 1, Builtin::Mean(Scope::Cols)),
    ("col_norm", 1, Builtin::Norm(Scope::Cols)),
    ("col_dot", 2, Builtin::Dot(Scope::Cols)),
    ("gram", 2, Builtin::Gram),
    ("gram", 1, Builtin::Gram),
    ("matmul", 2, Builtin::MatMul),
    ("transpose", 1, Builtin::Transpose),
];

/// The arities under which `name` is a built-in (empty: not a built-in).
pub fn arities(name: &str) -> Vec<usize> {
    BUILTINS
        .iter()
        .filter(|(n, _, _)| *n == name)
        .map(|(_, arity, _)| *arity)
        .collect()
}

/// The name a built-in is written with (the first of the table's entries
/// with that meaning).
pub fn name(builtin: Builtin) -> Option<&'static str> {
    BUILTINS
        .iter()
        .find(|(_, _, b)| *b == builtin)
        .map(|(name, _, _)| *name)
}

pub fn lookup(name: &str, arity: usize) -> Option<Builtin> {
    BUILTINS
        .iter()
        .find(|(n, a, _)| *n == name && *a == arity)
        .map(|(_, _, b)| *b)
}

/// Names with a fixed meaning inside optimizer bodies.
pub const RESERVED_NAMES: &[&str] = &[
    "p", "g", "t", "numel", "rank", "nrows", "ncols", "pi", "inf",
];
