//! The syntax tree, exactly as written: names are strings, nothing is
//! resolved or typed yet (that is the compiler's lowering). Every node has a span.

use crate::span::Span;

/// Deepest expression nesting the parser accepts; deeper input is an error,
/// so no later recursive pass over the tree can exhaust the stack.
pub const MAX_DEPTH: u32 = 256;

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// The `///` lines before the item, without the slashes, one per line.
    pub doc: Vec<String>,
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: ItemBody,
    /// From the keyword to the closing brace.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ItemBody {
    /// `optimizer name(...) { statements }`
    Optimizer(Vec<Stmt>),
    /// `fn name(...) { let ...; result }`
    Function {
        lets: Vec<(Ident, Expr)>,
        result: Expr,
    },
    /// `objective name(...) { param x = init; let ...; loss expr; }`
    Objective(Vec<ObjectiveStmt>),
}

/// A statement of an objective's body. The grammar accepts them in any
/// order; lowering requires exactly one `loss`, last.
#[derive(Clone, Debug, PartialEq)]
pub enum ObjectiveStmt {
    /// `param x = init;`: one parameter tensor and its initial elements.
    Param { name: Ident, init: Expr, span: Span },
    Let {
        name: Ident,
        value: Expr,
        span: Span,
    },
    /// `loss expr;`: the per-element loss, whose total is the objective.
    Loss { value: Expr, span: Span },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateShape {
    Elem,
    Tensor,
    Group,
    Rows,
    Cols,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssignOp {
    Set,
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    State {
        name: Ident,
        shape: Option<(StateShape, Span)>,
        init: Expr,
        span: Span,
    },
    Let {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Assign {
        target: Ident,
        op: AssignOp,
        value: Expr,
        span: Span,
    },
    Use {
        rule: Ident,
        args: Vec<Arg>,
        span: Span,
    },
}

impl Stmt {
    pub fn span(&self) -> Span {
        match self {
            Stmt::State { span, .. }
            | Stmt::Let { span, .. }
            | Stmt::Assign { span, .. }
            | Stmt::Use { span, .. } => *span,
        }
    }
}

/// A call argument, positional (`name: None`) or named.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Pow => "^",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "&&",
            BinaryOp::Or => "||",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
    /// Nesting depth of this expression (a leaf is 1), at most [`MAX_DEPTH`].
    pub depth: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Number(f64),
    Bool(bool),
    Name(String),
    Call {
        func: Ident,
        args: Vec<Arg>,
    },
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
}
