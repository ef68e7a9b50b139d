//! AST constructors the grammar's actions call. They keep every expression's
//! nesting depth and refuse to build past [`MAX_DEPTH`].

use lalrpop_util::ParseError;

use crate::ast::*;
use crate::lexer::{SyntaxError, Token};
use crate::span::Span;

pub(crate) type Built<'s, T> = Result<T, ParseError<usize, Token<'s>, SyntaxError>>;

fn node<'s>(kind: ExprKind, span: Span, child_depth: u32) -> Built<'s, Expr> {
    let depth = child_depth + 1;
    if depth > MAX_DEPTH {
        return Err(ParseError::User {
            error: SyntaxError::TooDeep(span),
        });
    }
    Ok(Expr { kind, span, depth })
}

pub(crate) fn leaf(kind: ExprKind, span: Span) -> Expr {
    Expr {
        kind,
        span,
        depth: 1,
    }
}

pub(crate) fn binary<'s>(op: BinaryOp, a: Expr, b: Expr) -> Built<'s, Expr> {
    let span = a.span.to(b.span);
    let depth = a.depth.max(b.depth);
    node(ExprKind::Binary(op, Box::new(a), Box::new(b)), span, depth)
}

pub(crate) fn unary<'s>(op: UnaryOp, e: Expr, start: usize) -> Built<'s, Expr> {
    let span = Span {
        start: start as u32,
        ..e.span
    };
    let depth = e.depth;
    node(ExprKind::Unary(op, Box::new(e)), span, depth)
}

pub(crate) fn if_expr<'s>(cond: Expr, then: Expr, otherwise: Expr, span: Span) -> Built<'s, Expr> {
    let depth = cond.depth.max(then.depth).max(otherwise.depth);
    node(
        ExprKind::If {
            cond: Box::new(cond),
            then: Box::new(then),
            otherwise: Box::new(otherwise),
        },
        span,
        depth,
    )
}

pub(crate) fn call<'s>(func: Ident, args: Vec<Arg>, end: usize) -> Built<'s, Expr> {
    let span = Span {
        end: end as u32,
        ..func.span
    };
    let depth = args.iter().map(|a| a.value.depth).max().unwrap_or(0);
    node(ExprKind::Call { func, args }, span, depth)
}

/// Parentheses leave no node behind but count towards the depth.
pub(crate) fn paren<'s>(e: Expr, span: Span) -> Built<'s, Expr> {
    let depth = e.depth;
    node(e.kind, span, depth)
}

pub(crate) fn state_shape<'s>(ident: &Ident) -> Built<'s, StateShape> {
    match ident.name.as_str() {
        "elem" => Ok(StateShape::Elem),
        "tensor" => Ok(StateShape::Tensor),
        "group" => Ok(StateShape::Group),
        "rows" => Ok(StateShape::Rows),
        "cols" => Ok(StateShape::Cols),
        other => Err(ParseError::User {
            error: SyntaxError::UnknownShape(other.to_string(), ident.span),
        }),
    }
}

pub(crate) fn doc_lines(lines: Vec<&str>) -> Vec<String> {
    lines
        .into_iter()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).to_string())
        .collect()
}
