//! Lowering: from the AST to the typed IR. Resolves names, inlines `fn` calls
//! and `use`d rules, turns assignments into new SSA values, and checks types
//! (shape and kind) on the way, so every error carries the span of the source
//! that caused it and the IR it produces is well typed by construction.

use std::collections::{BTreeSet, HashMap, HashSet};

use optc_grammar::ast::{self, AssignOp, ExprKind, ItemBody, StateShape, Stmt};
use optc_grammar::{Diagnostic, Span};

use crate::builtins::{self, Builtin, RESERVED_NAMES};
use crate::diagnostics::closest;
use crate::ir::{
    BinaryOp, Graph, Handle, Hyper, Input, Kind, Node, ReduceOp, Rule, ScalarExpr, Scope, Shape,
    StateSlot, Type, UnaryOp,
};
use crate::objective::{self, Objective, ObjectiveParam};
use crate::program::Program;

/// Upper bound on expressions lowered for one rule, inlining included: a
/// chain of functions that each call the next twice must not hang the compiler.
pub const MAX_WORK: usize = 1 << 22;
/// Deepest chain of nested `fn` calls and `use`s.
pub const MAX_INLINE_DEPTH: usize = 64;
/// Most state slots a rule may declare (its `use`d rules' included): each
/// per-element slot is a buffer every kernel of the rule streams, and code
/// generation time grows faster than linearly past a few hundred.
pub const MAX_STATE_SLOTS: usize = 256;

type Lowered<T> = Result<T, Diagnostic>;

/// Names visible to the statements or expressions being lowered.
#[derive(Default)]
struct Frame {
    /// Hyperparameters (in a rule) or parameters (in a function).
    params: HashMap<String, Handle>,
    lets: HashMap<String, Handle>,
    body: Body,
}

/// What kind of body is being lowered, which decides the names it sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Body {
    /// A function sees only its parameters (and `t`, `pi`, `inf`).
    #[default]
    Function,
    /// An optimizer sees `p`, `g`, `numel` and its state as well.
    Optimizer,
    /// An objective sees `index`, `numel` and its params, but not `t`.
    Objective,
}

struct Lowerer<'p> {
    program: &'p Program,
    graph: Graph,
    hypers: Vec<Hyper>,
    /// Each hyperparameter's index and kind, by name (for later defaults).
    hyper_index: Earlier,
    states: Vec<(StateSlot, Span)>,
    /// Each state slot's index, by name.
    state_index: HashMap<String, usize>,
    state_now: Vec<Handle>,
    p: Handle,
    g: Handle,
    /// Functions and rules being inlined, outermost first.
    active: Vec<String>,
    work: usize,
    /// Whether values' shapes are checked to combine (not while a function
    /// is checked on its own: its parameters' shapes are its callers').
    check_shapes: bool,
}

/// Compiles the optimizer `name`.
pub(crate) fn rule(program: &Program, name: &str) -> Lowered<Rule> {
    let item = match program.item(name) {
        Some(item) => item,
        None => {
            let known = program.optimizers().join(", ");
            return Err(
                Diagnostic::whole_file(format!("no optimizer named `{name}`"))
                    .with_hint(format!("known optimizers: {known}")),
            );
        }
    };
    let ItemBody::Optimizer(body) = &item.body else {
        return Err(Diagnostic::error(
            format!("`{name}` is {}, not an optimizer", item_kind(item)),
            item.name.span,
            "defined here",
        ));
    };
    let mut lowerer = Lowerer::new(program);
    let mut frame = Frame {
        body: Body::Optimizer,
        ..Frame::default()
    };
    for param in &item.params {
        let built_in = RESERVED_NAMES.contains(&param.name.name.as_str());
        let hint = "`p`, `g`, `t`, `numel`, `pi` and `inf` have fixed meanings";
        lowerer.declare_item_hyper(param, &mut frame, built_in, hint)?;
    }
    lowerer.active.push(name.to_string());
    lowerer.statements(body, &mut frame)?;
    let Lowerer {
        graph,
        hypers,
        states,
        state_now,
        p,
        ..
    } = lowerer;
    Ok(Rule {
        name: name.to_string(),
        doc: item.doc.clone(),
        hypers,
        states: states.into_iter().map(|(slot, _)| slot).collect(),
        graph,
        param_out: p,
        state_out: state_now,
    })
}

/// Compiles the objective `name`: its params become per-element inputs (see
/// [`objective`] for how they are numbered), the loss one node, and the
/// gradient of the total loss with respect to each param nodes of the same graph.
pub(crate) fn objective(program: &Program, name: &str) -> Lowered<Objective> {
    let Some(item) = program.item(name) else {
        let known = program.objectives().join(", ");
        return Err(
            Diagnostic::whole_file(format!("no objective named `{name}`"))
                .with_hint(format!("known objectives: {known}")),
        );
    };
    let ItemBody::Objective(body) = &item.body else {
        return Err(Diagnostic::error(
            format!("`{name}` is {}, not an objective", item_kind(item)),
            item.name.span,
            "defined here",
        ));
    };
    let mut lowerer = Lowerer::new(program);
    lowerer.active.push(name.to_string());
    let mut frame = Frame {
        body: Body::Objective,
        ..Frame::default()
    };
    let mut default_numel = 1;
    for param in &item.params {
        let hyper = &param.name.name;
        if hyper == "numel" {
            default_numel = objective_size(program, param)?;
            continue;
        }
        let built_in = RESERVED_NAMES.contains(&hyper.as_str()) || hyper == objective::INDEX_NAME;
        let hint = "`numel = N` sets the default element count; `t`, `index`, `pi` and `inf` have fixed meanings";
        lowerer.declare_item_hyper(param, &mut frame, built_in, hint)?;
    }
    lowerer.declare_objective_input(objective::INDEX_NAME, item.name.span);
    let mut loss = None;
    for stmt in body {
        if let Some((_, loss_span)) = loss {
            return Err(Diagnostic::error(
                "nothing may follow the `loss`",
                objective_stmt_span(stmt),
                "after the loss",
            )
            .with_label(loss_span, "the loss ends the objective"));
        }
        match stmt {
            ast::ObjectiveStmt::Param { name, init, .. } => {
                lowerer.objective_param(name, init, &frame)?
            }
            ast::ObjectiveStmt::Let { name, value, .. } => {
                lowerer.check_new_name(name, &frame, "a `let`")?;
                let value = lowerer.expr(value, &frame)?;
                frame.lets.insert(name.name.clone(), value);
            }
            ast::ObjectiveStmt::Loss { value, span } => {
                let handle = lowerer.expr(value, &frame)?;
                lowerer.expect_kind(handle, Kind::Float, value.span)?;
                let shape = lowerer.graph.ty(handle).shape;
                if shape != Shape::Elem {
                    return Err(Diagnostic::error(
                        "the loss must be one value per element",
                        value.span,
                        format!("this is {}", per(shape)),
                    )
                    .with_hint("the objective is the loss summed over the elements: write the per-element term (`x * x`, not `sum(x * x)`)"));
                }
                loss = Some((handle, *span));
            }
        }
    }
    let Some((loss, _)) = loss else {
        return Err(Diagnostic::error(
            format!("objective `{name}` has no `loss`"),
            item.name.span,
            "declared here",
        )
        .with_hint("end its body with `loss EXPR;`, the loss of one element"));
    };
    if lowerer.states.len() == 1 {
        return Err(Diagnostic::error(
            format!("objective `{name}` has no `param`"),
            item.name.span,
            "declared here",
        )
        .with_hint("declare what the optimizer trains: `param x = 0;`"));
    }
    let Lowerer {
        mut graph,
        hypers,
        states,
        state_now,
        ..
    } = lowerer;
    let params: Vec<ObjectiveParam> = states[1..]
        .iter()
        .map(|(slot, _)| ObjectiveParam {
            name: slot.name.clone(),
            init: slot.init,
        })
        .collect();
    let one = graph.add(Node::constant(1.0));
    let gradients = crate::autodiff::vjp(&mut graph, &[(loss, one)], &state_now[1..]);
    Ok(Objective {
        name: name.to_string(),
        doc: item.doc.clone(),
        hypers,
        default_numel,
        params,
        graph,
        loss,
        gradients,
    })
}

/// The `numel = N` entry of an objective's parameter list: its default
/// element count, a positive whole number.
fn objective_size(program: &Program, param: &ast::Param) -> Lowered<usize> {
    let invalid = |span: Span| {
        Diagnostic::error(
            "`numel` must be a positive whole number",
            span,
            "the default element count",
        )
        .with_hint("write e.g. `numel = 100`; `--numel` overrides it")
    };
    let Some(default) = &param.default else {
        return Err(invalid(param.name.span));
    };
    let value = scalar(program, default, "", &Earlier::new())?;
    match *value.graph.node(value.output) {
        Node::Const(bits) => {
            let n = f64::from_bits(bits);
            if n >= 1.0 && n.fract() == 0.0 && n <= u32::MAX as f64 {
                Ok(n as usize)
            } else {
                Err(invalid(default.span))
            }
        }
        _ => Err(invalid(default.span)),
    }
}

fn objective_stmt_span(stmt: &ast::ObjectiveStmt) -> Span {
    match stmt {
        ast::ObjectiveStmt::Param { span, .. }
        | ast::ObjectiveStmt::Let { span, .. }
        | ast::ObjectiveStmt::Loss { span, .. } => *span,
    }
}

/// Checks a function on its own, as if called with elementwise arguments:
/// every parameter is a float, except those the body uses as conditions,
/// which are bools (found by retrying after each such error).
pub(crate) fn function(program: &Program, item: &ast::Item) -> Lowered<()> {
    let ItemBody::Function { lets, result } = &item.body else {
        return Ok(());
    };
    let mut bools = vec![false; item.params.len()];
    loop {
        let mut lowerer = Lowerer::new(program);
        lowerer.check_shapes = false;
        lowerer.active.push(item.name.name.clone());
        let mut frame = Frame::default();
        for (index, (param, &is_bool)) in item.params.iter().zip(&bools).enumerate() {
            if let Some(default) = &param.default {
                lowerer.expr(default, &frame)?;
            }
            let kind = if is_bool { Kind::Bool } else { Kind::Float };
            let ty = Type {
                shape: Shape::Elem,
                kind,
            };
            let input = lowerer
                .graph
                .add(Node::Input(Input::Hyper(index as u32), ty));
            frame.params.insert(param.name.name.clone(), input);
        }
        let Err(error) = lowerer.function_body(lets, result, frame) else {
            return Ok(());
        };
        let used_as_condition = (error.message == kind_mismatch(Kind::Bool, Kind::Float))
            .then(|| error.primary_span())
            .flatten()
            .and_then(|span| {
                item.params
                    .iter()
                    .position(|p| source_text(program, span) == p.name.name)
            });
        match used_as_condition {
            Some(index) if !bools[index] => bools[index] = true,
            _ => return Err(error),
        }
    }
}

/// Hyperparameters declared so far: index and kind, by name.
pub(crate) type Earlier = HashMap<String, (u32, Kind)>;

/// Compiles a scalar expression of `t` (hyperparameter defaults and values).
/// It may also read the hyperparameters in `earlier` (a default may depend on
/// those declared before it), as inputs `Hyper(i)` with their index. Only
/// the names the expression mentions are looked up, so the work is linear
/// in the expression, however many hyperparameters came before.
pub(crate) fn scalar(
    program: &Program,
    expr: &ast::Expr,
    text: &str,
    earlier: &Earlier,
) -> Lowered<ScalarExpr> {
    let mut lowerer = Lowerer::new(program);
    let mut frame = Frame::default();
    let mut names = BTreeSet::new();
    names_in(expr, &mut names);
    for name in names {
        let Some(&(index, kind)) = earlier.get(name) else {
            continue;
        };
        let ty = Type {
            shape: Shape::Group,
            kind,
        };
        let input = lowerer.graph.add(Node::Input(Input::Hyper(index), ty));
        frame.params.insert(name.to_string(), input);
    }
    let output = lowerer.expr(expr, &frame)?;
    let ty = lowerer.graph.ty(output);
    if ty.shape != Shape::Group {
        return Err(Diagnostic::error(
            "a hyperparameter value must be one scalar per step",
            expr.span,
            format!("this is {}", per(ty.shape)),
        ));
    }
    Ok(ScalarExpr {
        graph: lowerer.graph,
        output,
        text: text.to_string(),
    })
}

/// "a function", "an optimizer" or "an objective", for messages.
fn item_kind(item: &ast::Item) -> &'static str {
    match item.body {
        ItemBody::Optimizer(_) => "an optimizer",
        ItemBody::Function { .. } => "a function",
        ItemBody::Objective(_) => "an objective",
    }
}

fn source_text(program: &Program, span: Span) -> String {
    program
        .file(span.file)
        .text
        .get(span.range())
        .unwrap_or("")
        .to_string()
}

/// How many values a shape means, in words.
fn per(shape: Shape) -> &'static str {
    match shape {
        Shape::Group => "one value per step",
        Shape::Tensor => "one value per tensor",
        Shape::Rows => "one value per row",
        Shape::Cols => "one value per column",
        Shape::Elem => "one value per element",
        Shape::Gram => "a gram matrix (k x k for the tensor's smaller side k)",
    }
}

fn kind_mismatch(expected: Kind, found: Kind) -> String {
    format!(
        "expected {}, found {}",
        kind_name(expected),
        kind_name(found)
    )
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "a number",
        Kind::Bool => "a bool",
    }
}

impl<'p> Lowerer<'p> {
    fn new(program: &'p Program) -> Lowerer<'p> {
        let mut graph = Graph::new();
        let p = graph.add(Node::Input(Input::Param, Type::ELEM));
        let g = graph.add(Node::Input(Input::Grad, Type::ELEM));
        Lowerer {
            program,
            graph,
            hypers: Vec::new(),
            hyper_index: Earlier::new(),
            states: Vec::new(),
            state_index: HashMap::new(),
            state_now: Vec::new(),
            p,
            g,
            active: Vec::new(),
            work: 0,
            check_shapes: true,
        }
    }

    /// Declares a parameter of the optimizer or objective being compiled as
    /// a hyperparameter visible in `frame`: an error for a `built_in` name
    /// (`hint` says which names are) or a name declared twice.
    fn declare_item_hyper(
        &mut self,
        param: &ast::Param,
        frame: &mut Frame,
        built_in: bool,
        hint: &str,
    ) -> Lowered<()> {
        let hyper = &param.name.name;
        if built_in {
            return Err(Diagnostic::error(
                format!("`{hyper}` cannot be a hyperparameter"),
                param.name.span,
                "a built-in name",
            )
            .with_hint(hint));
        }
        if frame.params.contains_key(hyper) {
            return Err(Diagnostic::error(
                format!("hyperparameter `{hyper}` is declared twice"),
                param.name.span,
                "second declaration",
            ));
        }
        let handle = self.declare_hyper(hyper, param.default.as_ref())?;
        frame.params.insert(hyper.clone(), handle);
        Ok(())
    }

    /// Adds a hyperparameter of the rule being compiled and returns its input node.
    fn declare_hyper(&mut self, name: &str, default: Option<&ast::Expr>) -> Lowered<Handle> {
        let default = match default {
            Some(expr) => Some(scalar(
                self.program,
                expr,
                &source_text(self.program, expr.span),
                &self.hyper_index,
            )?),
            None => None,
        };
        let kind = default.as_ref().map_or(Kind::Float, ScalarExpr::kind);
        let index = self.hypers.len() as u32;
        self.hyper_index.insert(name.to_string(), (index, kind));
        self.hypers.push(Hyper {
            name: name.to_string(),
            kind,
            default,
        });
        Ok(self.graph.add(Node::Input(
            Input::Hyper(index),
            Type {
                shape: Shape::Group,
                kind,
            },
        )))
    }

    /// Adds a per-element input of an objective (its element index, then
    /// each param) as the next state slot, initialised to itself.
    fn declare_objective_input(&mut self, name: &str, span: Span) {
        let handle = self.graph.add(Node::Input(
            Input::State(self.states.len() as u32),
            Type::ELEM,
        ));
        self.state_index.insert(name.to_string(), self.states.len());
        self.states.push((
            StateSlot {
                name: name.to_string(),
                shape: Shape::Elem,
                init: handle,
            },
            span,
        ));
        self.state_now.push(handle);
    }

    /// `param x = init;`: a new per-element input whose initial value may
    /// read the index, `numel`, hyperparameters and `let`s, but no param.
    fn objective_param(
        &mut self,
        name: &ast::Ident,
        init: &ast::Expr,
        frame: &Frame,
    ) -> Lowered<()> {
        if let Some(index) = self.state_index(&name.name) {
            return Err(Diagnostic::error(
                format!("param `{}` is declared twice", name.name),
                name.span,
                "second declaration",
            )
            .with_label(self.states[index].1, "first declaration"));
        }
        self.check_new_name(name, frame, "a param")?;
        if frame.lets.contains_key(&name.name) {
            return Err(Diagnostic::error(
                format!("a param cannot be named `{}`", name.name),
                name.span,
                "already a `let` here",
            ));
        }
        let value = self.expr(init, frame)?;
        self.expect_kind(value, Kind::Float, init.span)?;
        let params: Vec<Handle> = self.state_now[1..].to_vec();
        if reads_any(&self.graph, value, &params) {
            return Err(Diagnostic::error(
                "a param's initial value cannot read the params",
                init.span,
                "reads a param",
            )
            .with_hint("initial values may use `index`, `numel` and hyperparameters"));
        }
        self.declare_objective_input(&name.name, name.span);
        if let Some((slot, _)) = self.states.last_mut() {
            slot.init = value;
        }
        Ok(())
    }

    fn enter(&mut self, name: &str, span: Span) -> Lowered<()> {
        if let Some(start) = self.active.iter().position(|n| n == name) {
            let mut cycle = self.active[start..].to_vec();
            cycle.push(name.to_string());
            return Err(
                Diagnostic::error(format!("`{name}` uses itself"), span, "recursive use")
                    .with_hint(format!("cycle: {}", cycle.join(" → "))),
            );
        }
        if self.active.len() >= MAX_INLINE_DEPTH {
            return Err(Diagnostic::error(
                format!("functions and rules nested more than {MAX_INLINE_DEPTH} deep"),
                span,
                "here",
            ));
        }
        self.active.push(name.to_string());
        Ok(())
    }

    fn statements(&mut self, body: &[Stmt], frame: &mut Frame) -> Lowered<()> {
        for stmt in body {
            self.statement(stmt, frame)?;
        }
        Ok(())
    }

    fn statement(&mut self, stmt: &Stmt, frame: &mut Frame) -> Lowered<()> {
        match stmt {
            Stmt::State {
                name, shape, init, ..
            } => self.state(name, *shape, init, frame),
            Stmt::Let { name, value, .. } => {
                self.check_new_name(name, frame, "a `let`")?;
                let value = self.expr(value, frame)?;
                frame.lets.insert(name.name.clone(), value);
                Ok(())
            }
            Stmt::Assign {
                target, op, value, ..
            } => self.assign(target, *op, value, frame),
            Stmt::Use { rule, args, span } => self.use_rule(rule, args, *span, frame),
        }
    }

    /// A `let` or `state` may not hide a built-in, hyperparameter or state.
    fn check_new_name(&self, name: &ast::Ident, frame: &Frame, what: &str) -> Lowered<()> {
        let clash = if RESERVED_NAMES.contains(&name.name.as_str()) {
            Some("a built-in name")
        } else if frame.params.contains_key(&name.name) {
            Some("a hyperparameter")
        } else if frame.body == Body::Objective && name.name == objective::INDEX_NAME {
            Some("the element index")
        } else if self.state_index(&name.name).is_some() {
            Some(match frame.body {
                Body::Objective => "a param of the objective",
                _ => "a state",
            })
        } else {
            None
        };
        match clash {
            Some(clash) => Err(Diagnostic::error(
                format!("{what} cannot be named `{}`", name.name),
                name.span,
                format!("`{}` is {clash}", name.name),
            )
            .with_hint("choose another name")),
            None => Ok(()),
        }
    }

    fn state_index(&self, name: &str) -> Option<usize> {
        self.state_index.get(name).copied()
    }

    fn state(
        &mut self,
        name: &ast::Ident,
        shape: Option<(StateShape, Span)>,
        init: &ast::Expr,
        frame: &mut Frame,
    ) -> Lowered<()> {
        if let Some(index) = self.state_index(&name.name) {
            return Err(Diagnostic::error(
                format!("state `{}` is declared twice", name.name),
                name.span,
                "second declaration",
            )
            .with_label(self.states[index].1, "first declaration")
            .with_hint("a rule pulled in with `use` brings its state along; rename one of them"));
        }
        self.check_new_name(name, frame, "a state")?;
        if self.states.len() >= MAX_STATE_SLOTS {
            return Err(Diagnostic::error(
                format!("more than {MAX_STATE_SLOTS} state slots in one rule"),
                name.span,
                "one too many",
            )
            .with_hint("the limit counts the state of `use`d rules too; see \"Limits\" in docs/language.md"));
        }
        if frame.lets.contains_key(&name.name) {
            return Err(Diagnostic::error(
                format!("a state cannot be named `{}`", name.name),
                name.span,
                "already a `let` here",
            ));
        }
        let shape = match shape.map(|(s, _)| s) {
            None | Some(StateShape::Elem) => Shape::Elem,
            Some(StateShape::Tensor) => Shape::Tensor,
            Some(StateShape::Group) => Shape::Group,
            Some(StateShape::Rows) => Shape::Rows,
            Some(StateShape::Cols) => Shape::Cols,
        };
        let init_value = self.expr(init, frame)?;
        self.expect_kind(init_value, Kind::Float, init.span)?;
        self.expect_fits(init_value, shape, &name.name, init.span)?;
        let index = self.states.len() as u32;
        self.state_index.insert(name.name.clone(), index as usize);
        self.states.push((
            StateSlot {
                name: name.name.clone(),
                shape,
                init: init_value,
            },
            name.span,
        ));
        let handle = self.graph.add(Node::Input(
            Input::State(index),
            Type {
                shape,
                kind: Kind::Float,
            },
        ));
        self.state_now.push(handle);
        Ok(())
    }

    fn expect_fits(&self, value: Handle, shape: Shape, state: &str, span: Span) -> Lowered<()> {
        let found = self.graph.ty(value).shape;
        if found.fits(shape) {
            return Ok(());
        }
        Err(Diagnostic::error(
            format!("`{state}` holds {} and cannot store {}", per(shape), per(found)),
            span,
            format!("this is {}", per(found)),
        )
        .with_hint(match (shape, found) {
            (Shape::Rows, Shape::Cols) | (Shape::Cols, Shape::Rows) => "rows and columns do not convert: reduce it over the tensor first (`mean`, `max`, ...), or declare the state to match it",
            (Shape::Tensor, _) => "reduce it first (`sum`, `mean`, `norm`, `max`, `dot`), or declare the state per element",
            (Shape::Group, _) => "reduce it over the group first (`group_sum`, `group_norm`, ...), or declare the state `: tensor` or per element",
            (Shape::Rows, _) => "reduce each row first (`row_sum`, `row_mean`, `row_max`, ...), or declare the state per element",
            (Shape::Cols, _) => "reduce each column first (`col_sum`, `col_mean`, `col_max`, ...), or declare the state per element",
            (Shape::Elem | Shape::Gram, _) => "",
        }))
    }

    fn assign(
        &mut self,
        target: &ast::Ident,
        op: AssignOp,
        value: &ast::Expr,
        frame: &mut Frame,
    ) -> Lowered<()> {
        enum Place {
            Param,
            Grad,
            State(usize),
        }
        let name = target.name.as_str();
        let place = match name {
            "p" => Place::Param,
            "g" => Place::Grad,
            _ => match self.state_index(name) {
                Some(index) => Place::State(index),
                None => return Err(self.not_assignable(target, frame)),
            },
        };
        let rhs = self.expr(value, frame)?;
        self.expect_kind(rhs, Kind::Float, value.span)?;
        let current = match place {
            Place::Param => self.p,
            Place::Grad => self.g,
            Place::State(index) => self.state_now[index],
        };
        let new = match op {
            AssignOp::Set => rhs,
            AssignOp::Add => self.graph.add(Node::Binary(BinaryOp::Add, current, rhs)),
            AssignOp::Sub => self.graph.add(Node::Binary(BinaryOp::Sub, current, rhs)),
            AssignOp::Mul => self.graph.add(Node::Binary(BinaryOp::Mul, current, rhs)),
            AssignOp::Div => self.graph.add(Node::Binary(BinaryOp::Div, current, rhs)),
        };
        match place {
            Place::Param => self.p = new,
            Place::Grad => self.g = new,
            Place::State(index) => {
                let shape = self.states[index].0.shape;
                self.expect_fits(new, shape, name, value.span)?;
                self.state_now[index] = new;
            }
        }
        Ok(())
    }

    fn not_assignable(&self, target: &ast::Ident, frame: &Frame) -> Diagnostic {
        let name = &target.name;
        let (label, hint) = if frame.params.contains_key(name) {
            (
                "a hyperparameter is fixed during a step",
                "keep a changing value in a state: `state x = ...;`".to_string(),
            )
        } else if frame.lets.contains_key(name) {
            (
                "a `let` binding is immutable",
                format!("write `let {name} = ...;` again to shadow it"),
            )
        } else if RESERVED_NAMES.contains(&name.as_str()) {
            (
                "a built-in value",
                "only `p`, `g` and state can be assigned".to_string(),
            )
        } else {
            (
                "not declared",
                format!("declare it first: `state {name} = 0;` or `let {name} = ...;`"),
            )
        };
        Diagnostic::error(format!("cannot assign to `{name}`"), target.span, label).with_hint(hint)
    }

    fn use_rule(
        &mut self,
        rule: &ast::Ident,
        args: &[ast::Arg],
        span: Span,
        frame: &mut Frame,
    ) -> Lowered<()> {
        let item = self.item(rule)?;
        let ItemBody::Optimizer(body) = &item.body else {
            let diagnostic = Diagnostic::error(
                format!("`{}` is {}, not an optimizer", rule.name, item_kind(item)),
                rule.span,
                "`use` takes an optimizer",
            );
            return Err(match item.body {
                ItemBody::Function { .. } => {
                    diagnostic.with_hint(format!("call it in an expression: `{}(...)`", rule.name))
                }
                _ => diagnostic,
            });
        };
        self.enter(&rule.name, span)?;
        let bound = match_args(&item.params, args, &rule.name, span)?;
        let mut inner = Frame {
            body: Body::Optimizer,
            ..Frame::default()
        };
        // Parameters bound to something other than the outer rule's
        // hyperparameter of the same name: a later default that reads one of
        // them is computed from the bound value, not declared as a hyperparameter.
        let mut rebound: HashSet<&str> = HashSet::new();
        for (param, arg) in item.params.iter().zip(bound) {
            let hyper = &param.name.name;
            let reads_rebound = param.default.as_ref().is_some_and(|default| {
                let mut names = BTreeSet::new();
                names_in(default, &mut names);
                names.iter().any(|name| rebound.contains(name))
            });
            if arg.is_some() || frame.params.contains_key(hyper) {
                rebound.insert(hyper);
            }
            let value = match arg {
                Some(arg) => {
                    let value = self.expr(arg, frame)?;
                    let shape = self.graph.ty(value).shape;
                    if shape != Shape::Group {
                        return Err(Diagnostic::error(
                            format!(
                                "hyperparameter `{hyper}` of `{}` must be one scalar per step",
                                rule.name
                            ),
                            arg.span,
                            format!("this is {}", per(shape)),
                        ));
                    }
                    value
                }
                None if reads_rebound => {
                    let default = param.default.as_ref().expect("a default reads the names");
                    self.expr(default, &inner)?
                }
                None => match frame.params.get(hyper) {
                    Some(&outer) => outer,
                    None => match self.hypers.iter().position(|h| &h.name == hyper) {
                        Some(index) => {
                            let kind = self.hypers[index].kind;
                            self.graph.add(Node::Input(
                                Input::Hyper(index as u32),
                                Type {
                                    shape: Shape::Group,
                                    kind,
                                },
                            ))
                        }
                        None => self.declare_hyper(hyper, param.default.as_ref())?,
                    },
                },
            };
            inner.params.insert(hyper.clone(), value);
        }
        self.statements(body, &mut inner)?;
        self.active.pop();
        Ok(())
    }

    fn item(&self, name: &ast::Ident) -> Lowered<&'p ast::Item> {
        self.program
            .item_from(&name.name, name.span.file)
            .ok_or_else(|| {
                let builtin_names = builtins::BUILTINS.iter().map(|(n, _, _)| *n);
                let candidates: Vec<&str> =
                    self.program.item_names().chain(builtin_names).collect();
                let diagnostic = Diagnostic::error(
                    format!("unknown optimizer or function `{}`", name.name),
                    name.span,
                    "not defined",
                );
                match closest(&name.name, candidates.iter().copied()) {
                    Some(near) => diagnostic.with_hint(format!("did you mean `{near}`?")),
                    None => diagnostic,
                }
            })
    }

    fn expect_kind(&self, value: Handle, kind: Kind, span: Span) -> Lowered<()> {
        let found = self.graph.ty(value).kind;
        if found == kind {
            return Ok(());
        }
        let diagnostic = Diagnostic::error(
            kind_mismatch(kind, found),
            span,
            format!("this is {}", kind_name(found)),
        );
        Err(match kind {
            Kind::Float => {
                diagnostic.with_hint("turn a condition into a number with `select(c, 1, 0)`")
            }
            Kind::Bool => diagnostic.with_hint("compare it, e.g. `x > 0`"),
        })
    }

    fn add(&mut self, node: Node) -> Handle {
        self.graph.add(node)
    }

    /// Checks that values of these shapes combine elementwise: a gram
    /// matrix meets values per row, column or element only through
    /// `matmul`.
    fn expect_compatible(&self, operands: &[(Handle, Span)]) -> Lowered<()> {
        if !self.check_shapes {
            return Ok(());
        }
        let mut shape = Shape::Group;
        for &(value, span) in operands {
            let found = self.graph.ty(value).shape;
            shape = shape.join(found).ok_or_else(|| {
                let (matrix, other) = if found == Shape::Gram { (found, shape) } else { (shape, found) };
                Diagnostic::error(
                    format!("{} and {} do not combine elementwise", per(matrix), per(other)),
                    span,
                    format!("this is {}", per(found)),
                )
                .with_hint("a gram matrix reaches the elements through `matmul(a, x)`; reduce it first (`sum`, `norm`, ...) for a scalar")
            })?;
        }
        Ok(())
    }

    /// Checks that `value` is a gram matrix (the first operand of `matmul`,
    /// `transpose`'s operand).
    fn expect_gram(&self, value: Handle, span: Span, what: &str) -> Lowered<()> {
        let found = self.graph.ty(value).shape;
        if found == Shape::Gram || !self.check_shapes {
            return Ok(());
        }
        Err(Diagnostic::error(
            format!("{what} takes a gram matrix, not {}", per(found)),
            span,
            format!("this is {}", per(found)),
        )
        .with_hint(
            "make one with `gram(x)` (x x^T on the smaller side of the matrix) or `gram(x, y)`",
        ))
    }

    /// Checks that `value` is not a gram matrix (an operand of `gram`, or an
    /// axis reduction's).
    fn expect_not_gram(&self, value: Handle, span: Span, what: &str) -> Lowered<()> {
        if self.graph.ty(value).shape != Shape::Gram || !self.check_shapes {
            return Ok(());
        }
        Err(Diagnostic::error(
            format!("{what} takes values per element, not a gram matrix"),
            span,
            "this is a gram matrix",
        )
        .with_hint(
            "`matmul(a, x)` turns a gram matrix `a` and per-element `x` into per-element values",
        ))
    }

    fn expr(&mut self, expr: &ast::Expr, frame: &Frame) -> Lowered<Handle> {
        self.work += 1;
        if self.work > MAX_WORK {
            return Err(Diagnostic::error(
                "rule is too large: too many expressions after inlining its functions",
                expr.span,
                "while lowering this",
            )
            .with_hint(format!("the limit is {MAX_WORK} expressions")));
        }
        match &expr.kind {
            ExprKind::Number(value) => Ok(self.add(Node::constant(*value))),
            ExprKind::Bool(value) => Ok(self.add(Node::Bool(*value))),
            ExprKind::Name(name) => self.name(name, expr.span, frame),
            ExprKind::Unary(op, operand) => {
                let value = self.expr(operand, frame)?;
                let (op, kind) = match op {
                    ast::UnaryOp::Neg => (UnaryOp::Neg, Kind::Float),
                    ast::UnaryOp::Not => (UnaryOp::Not, Kind::Bool),
                };
                self.expect_kind(value, kind, operand.span)?;
                Ok(self.add(Node::Unary(op, value)))
            }
            ExprKind::Binary(op, a, b) => {
                let (op, operand_kind) = match op {
                    ast::BinaryOp::Add => (BinaryOp::Add, Kind::Float),
                    ast::BinaryOp::Sub => (BinaryOp::Sub, Kind::Float),
                    ast::BinaryOp::Mul => (BinaryOp::Mul, Kind::Float),
                    ast::BinaryOp::Div => (BinaryOp::Div, Kind::Float),
                    ast::BinaryOp::Pow => (BinaryOp::Pow, Kind::Float),
                    ast::BinaryOp::Eq => (BinaryOp::Eq, Kind::Float),
                    ast::BinaryOp::Ne => (BinaryOp::Ne, Kind::Float),
                    ast::BinaryOp::Lt => (BinaryOp::Lt, Kind::Float),
                    ast::BinaryOp::Le => (BinaryOp::Le, Kind::Float),
                    ast::BinaryOp::Gt => (BinaryOp::Gt, Kind::Float),
                    ast::BinaryOp::Ge => (BinaryOp::Ge, Kind::Float),
                    ast::BinaryOp::And => (BinaryOp::And, Kind::Bool),
                    ast::BinaryOp::Or => (BinaryOp::Or, Kind::Bool),
                };
                let left = self.expr(a, frame)?;
                self.expect_kind(left, operand_kind, a.span)?;
                let right = self.expr(b, frame)?;
                self.expect_kind(right, operand_kind, b.span)?;
                self.expect_compatible(&[(left, a.span), (right, b.span)])?;
                Ok(self.add(Node::Binary(op, left, right)))
            }
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                let c = self.expr(cond, frame)?;
                self.expect_kind(c, Kind::Bool, cond.span)?;
                let a = self.expr(then, frame)?;
                let b = self.expr(otherwise, frame)?;
                let kind = self.graph.ty(a).kind;
                self.expect_kind(b, kind, otherwise.span)?;
                self.expect_compatible(&[(c, cond.span), (a, then.span), (b, otherwise.span)])?;
                Ok(self.add(Node::Select(c, a, b)))
            }
            ExprKind::Call { func, args } => self.call(func, args, expr.span, frame),
        }
    }

    fn name(&mut self, name: &str, span: Span, frame: &Frame) -> Lowered<Handle> {
        if let Some(&handle) = frame.lets.get(name).or_else(|| frame.params.get(name)) {
            return Ok(handle);
        }
        if frame.body != Body::Function {
            if let Some(size) = Input::size(name) {
                return Ok(self.add(Node::Input(size, Type::TENSOR)));
            }
            match (name, frame.body) {
                ("p", Body::Optimizer) => return Ok(self.p),
                ("g", Body::Optimizer) => return Ok(self.g),
                ("t", Body::Objective) => {
                    return Err(Diagnostic::error(
                        "an objective cannot read the step `t`",
                        span,
                        "the loss is the same at every step",
                    ))
                }
                _ => {}
            }
            if let Some(index) = self.state_index(name) {
                return Ok(self.state_now[index]);
            }
        }
        match name {
            "t" => return Ok(self.add(Node::Input(Input::Step, Type::GROUP))),
            "pi" => return Ok(self.add(Node::constant(std::f64::consts::PI))),
            "inf" => return Ok(self.add(Node::constant(f64::INFINITY))),
            _ => {}
        }
        let diagnostic =
            Diagnostic::error(format!("unknown name `{name}`"), span, "not defined here");
        if name == "index" {
            return Err(diagnostic.with_hint(
                "`index`, the element's position, exists only in the body of an `objective`",
            ));
        }
        if frame.body == Body::Objective && matches!(name, "p" | "g") {
            return Err(diagnostic.with_hint(
                "an objective has no `p` or `g`; declare its parameters with `param x = ...;`",
            ));
        }
        let body_only = matches!(name, "p" | "g" | "numel") || self.state_index(name).is_some();
        if body_only {
            return Err(diagnostic.with_hint(format!(
                "functions see only their parameters and `t`; pass `{name}` as an argument"
            )));
        }
        let mut visible: Vec<&str> = frame
            .lets
            .keys()
            .chain(frame.params.keys())
            .map(String::as_str)
            .collect();
        visible.extend(["t", "pi", "inf"]);
        match frame.body {
            Body::Function => {}
            Body::Optimizer => visible.extend(["p", "g", "numel"]),
            Body::Objective => visible.push("numel"),
        }
        if frame.body != Body::Function {
            visible.extend(self.states.iter().map(|(s, _)| s.name.as_str()));
        }
        Err(match closest(name, visible.into_iter()) {
            Some(near) => diagnostic.with_hint(format!("did you mean `{near}`?")),
            None => diagnostic,
        })
    }

    fn call(
        &mut self,
        func: &ast::Ident,
        args: &[ast::Arg],
        span: Span,
        frame: &Frame,
    ) -> Lowered<Handle> {
        let arities = builtins::arities(&func.name);
        if !arities.is_empty() {
            return self.builtin(func, &arities, args, span, frame);
        }
        let item = self.item(func)?;
        let ItemBody::Function { lets, result } = &item.body else {
            let diagnostic = Diagnostic::error(
                format!("`{}` is {}, not a function", func.name, item_kind(item)),
                func.span,
                "cannot be called",
            );
            return Err(match item.body {
                ItemBody::Optimizer(_) => {
                    diagnostic.with_hint(format!("run its statements with `use {};`", func.name))
                }
                _ => diagnostic,
            });
        };
        let bound = match_args(&item.params, args, &func.name, span)?;
        // The arguments belong to the caller: `f(f(x))` is two calls, not recursion.
        let mut values = Vec::with_capacity(bound.len());
        for arg in bound {
            values.push(arg.map(|arg| self.expr(arg, frame)).transpose()?);
        }
        self.enter(&func.name, span)?;
        let mut inner = Frame::default();
        for (param, value) in item.params.iter().zip(values) {
            let value = match (value, &param.default) {
                (Some(value), _) => value,
                (None, Some(default)) => self.expr(default, &inner)?,
                (None, None) => {
                    return Err(Diagnostic::error(
                        format!("missing argument `{}` of `{}`", param.name.name, func.name),
                        span,
                        "in this call",
                    )
                    .with_label(param.name.span, "declared here without a default"))
                }
            };
            inner.params.insert(param.name.name.clone(), value);
        }
        let value = self.function_body(lets, result, inner)?;
        self.active.pop();
        Ok(value)
    }

    /// A function's `let`s and result, with its parameters bound in `frame`.
    fn function_body(
        &mut self,
        lets: &[(ast::Ident, ast::Expr)],
        result: &ast::Expr,
        mut frame: Frame,
    ) -> Lowered<Handle> {
        for (name, value) in lets {
            let value = self.expr(value, &frame)?;
            frame.lets.insert(name.name.clone(), value);
        }
        self.expr(result, &frame)
    }

    fn builtin(
        &mut self,
        func: &ast::Ident,
        arities: &[usize],
        args: &[ast::Arg],
        span: Span,
        frame: &Frame,
    ) -> Lowered<Handle> {
        if let Some(named) = args.iter().find_map(|a| a.name.as_ref()) {
            return Err(Diagnostic::error(
                format!("built-in `{}` takes positional arguments only", func.name),
                named.span,
                "named argument",
            ));
        }
        let Some(builtin) = builtins::lookup(&func.name, args.len()) else {
            let expected = arities
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(Diagnostic::error(
                format!(
                    "`{}` takes {expected} argument{}, got {}",
                    func.name,
                    if arities == [1] { "" } else { "s" },
                    args.len()
                ),
                span,
                "wrong number of arguments",
            ));
        };
        let mut values = Vec::with_capacity(args.len());
        for (i, arg) in args.iter().enumerate() {
            let value = self.expr(&arg.value, frame)?;
            let kind = if builtin == Builtin::Select && i == 0 {
                Kind::Bool
            } else {
                Kind::Float
            };
            if !(builtin == Builtin::Select && i > 0) {
                self.expect_kind(value, kind, arg.value.span)?;
            }
            values.push(value);
        }
        if builtin == Builtin::Select {
            let kind = self.graph.ty(values[1]).kind;
            self.expect_kind(values[2], kind, args[2].value.span)?;
        }
        let operands: Vec<(Handle, Span)> = values
            .iter()
            .zip(args)
            .map(|(&v, a)| (v, a.value.span))
            .collect();
        match builtin {
            Builtin::Gram => {
                for &(value, span) in &operands {
                    self.expect_not_gram(value, span, "`gram`")?;
                }
            }
            Builtin::MatMul => {
                self.expect_gram(values[0], args[0].value.span, "`matmul`")?;
            }
            Builtin::Transpose => self.expect_gram(values[0], args[0].value.span, "`transpose`")?,
            axis if matches!(axis.scope(), Some(Scope::Rows | Scope::Cols)) => {
                for &(value, span) in &operands {
                    self.expect_not_gram(value, span, &format!("`{}`", func.name))?;
                }
                self.expect_compatible(&operands)?;
            }
            _ => self.expect_compatible(&operands)?,
        }
        Ok(match builtin {
            Builtin::Unary(op) => self.add(Node::Unary(op, values[0])),
            Builtin::Binary(op) => self.add(Node::Binary(op, values[0], values[1])),
            Builtin::Select => self.add(Node::Select(values[0], values[1], values[2])),
            Builtin::Lerp => self.add(Node::Lerp(values[0], values[1], values[2])),
            Builtin::Clamp => {
                let low = self.add(Node::Binary(BinaryOp::Max, values[0], values[1]));
                self.add(Node::Binary(BinaryOp::Min, low, values[2]))
            }
            Builtin::Reduce(op, scope) => self.add(Node::Reduce(op, scope, values[0])),
            Builtin::Mean(scope) => {
                let total = self.add(Node::Reduce(ReduceOp::Sum, scope, values[0]));
                let one = self.add(Node::constant(1.0));
                let count = self.add(Node::Reduce(ReduceOp::Sum, scope, one));
                self.add(Node::Binary(BinaryOp::Div, total, count))
            }
            Builtin::Norm(scope) => {
                let square = self.add(Node::Binary(BinaryOp::Mul, values[0], values[0]));
                let total = self.add(Node::Reduce(ReduceOp::Sum, scope, square));
                self.add(Node::Unary(UnaryOp::Sqrt, total))
            }
            Builtin::Dot(scope) => {
                let product = self.add(Node::Binary(BinaryOp::Mul, values[0], values[1]));
                self.add(Node::Reduce(ReduceOp::Sum, scope, product))
            }
            Builtin::Gram => self.add(Node::Gram(values[0], values[values.len() - 1])),
            Builtin::MatMul => self.add(Node::MatMul(values[0], values[1])),
            Builtin::Transpose => self.add(Node::Transpose(values[0])),
        })
    }
}

/// Matches call arguments to declared parameters: positional ones first, then
/// named. Returns the argument for each parameter (None: use its default).
fn match_args<'a>(
    params: &[ast::Param],
    args: &'a [ast::Arg],
    callee: &str,
    span: Span,
) -> Lowered<Vec<Option<&'a ast::Expr>>> {
    let mut bound: Vec<Option<&ast::Expr>> = vec![None; params.len()];
    let mut seen_named = false;
    for (position, arg) in args.iter().enumerate() {
        match &arg.name {
            None => {
                if seen_named {
                    return Err(Diagnostic::error(
                        "positional argument after a named one",
                        arg.value.span,
                        "positional",
                    ));
                }
                if position >= params.len() {
                    return Err(Diagnostic::error(
                        format!(
                            "`{callee}` takes at most {} arguments, got {}",
                            params.len(),
                            args.len()
                        ),
                        arg.value.span,
                        "extra argument",
                    )
                    .with_label(span, "in this call"));
                }
                bound[position] = Some(&arg.value);
            }
            Some(name) => {
                seen_named = true;
                let Some(index) = params.iter().position(|p| p.name.name == name.name) else {
                    let names: Vec<&str> = params.iter().map(|p| p.name.name.as_str()).collect();
                    return Err(Diagnostic::error(
                        format!("`{callee}` has no parameter `{}`", name.name),
                        name.span,
                        "unknown name",
                    )
                    .with_hint(format!("its parameters: {}", names.join(", "))));
                };
                if bound[index].is_some() {
                    return Err(Diagnostic::error(
                        format!("parameter `{}` given twice", name.name),
                        name.span,
                        "again here",
                    ));
                }
                bound[index] = Some(&arg.value);
            }
        }
    }
    Ok(bound)
}

/// Whether `value` depends on any of `inputs`.
fn reads_any(graph: &Graph, value: Handle, inputs: &[Handle]) -> bool {
    let mut seen = vec![false; graph.len()];
    let mut stack = vec![value];
    while let Some(handle) = stack.pop() {
        if inputs.contains(&handle) {
            return true;
        }
        if !std::mem::replace(&mut seen[handle.index()], true) {
            stack.extend(graph.node(handle).children());
        }
    }
    false
}

/// The names `expr` reads, in order (expressions have no binders, so every
/// name is a read). Parsing bounded the nesting, so the recursion is safe.
fn names_in<'e>(expr: &'e ast::Expr, out: &mut BTreeSet<&'e str>) {
    match &expr.kind {
        ExprKind::Number(_) | ExprKind::Bool(_) => {}
        ExprKind::Name(n) => {
            out.insert(n);
        }
        ExprKind::Call { args, .. } => args.iter().for_each(|arg| names_in(&arg.value, out)),
        ExprKind::Unary(_, a) => names_in(a, out),
        ExprKind::Binary(_, a, b) => {
            names_in(a, out);
            names_in(b, out);
        }
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => {
            names_in(cond, out);
            names_in(then, out);
            names_in(otherwise, out);
        }
    }
}
