//! Objectives: differentiable test functions written in `.opt` files
//! (`objective rosenbrock(a = 1, b = 100) { param x = -1.2; ... loss ...; }`),
//! so that examples and the proxy tasks of an optimizer search can train any
//! rule on a known landscape without hand-written gradients.
//!
//! An [`Objective`] is one IR [`Graph`] holding the initial value of each
//! param, the per-element loss and — computed symbolically by
//! [`autodiff::vjp`](crate::autodiff::vjp) with the loss seeded with 1 — the
//! gradient of the *total* loss (the loss summed over the elements) with
//! respect to each param. Every param is a tensor of the same `numel`
//! elements, so elementwise expressions combine them.
//!
//! The graph reads its per-element values through the inputs that carry
//! per-element values from outside a rule's graph, the state slots:
//! `State(0)` is the element index `index` and `State(1 + i)` is param `i`.
//! (Objectives only run in the reference interpreter, so they borrow those
//! inputs rather than widen [`Input`], which every backend matches on.)
//! Hyperparameters are `Hyper(i)` and the element count is `Numel`, as in rules.
//! Values are the interpreter's ([`interpret::evaluate`]), in f32 or f64.

use std::fmt::Write;

use crate::emit;
use crate::interpret::{self, Real, Value};
use crate::ir::{BinaryOp, Graph, Handle, Hyper, Input, Kind, MatrixView, Node, Shape, UnaryOp};

/// The name of the element index inside an objective.
pub const INDEX_NAME: &str = "index";

/// One parameter tensor of an objective.
#[derive(Clone, Debug)]
pub struct ObjectiveParam {
    pub name: String,
    /// Its initial value (a node of the objective's graph, at most per element).
    pub init: Handle,
}

/// A compiled objective: loss and gradients as one graph.
#[derive(Clone, Debug)]
pub struct Objective {
    pub name: String,
    /// The doc comment lines of the objective.
    pub doc: Vec<String>,
    pub hypers: Vec<Hyper>,
    /// Elements per param unless the caller chooses (`numel = N` in the header; 1 without).
    pub default_numel: usize,
    pub params: Vec<ObjectiveParam>,
    pub graph: Graph,
    /// The loss of one element.
    pub loss: Handle,
    /// The gradient of the total loss with respect to each param, in the order of `params`.
    pub gradients: Vec<Handle>,
}

/// Loss and gradients at one point.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation<F> {
    /// The total loss: the per-element loss summed in f64 in element order.
    pub loss: f64,
    /// One gradient tensor per param.
    pub gradients: Vec<Vec<F>>,
}

impl Objective {
    /// The value of every hyperparameter: its default, or the value `sets`
    /// gives it (`(name, value)` pairs).
    pub fn hyper_values(&self, sets: &[(String, f64)]) -> Result<Vec<f64>, String> {
        if let Some((unknown, _)) = sets
            .iter()
            .find(|(name, _)| !self.hypers.iter().any(|h| &h.name == name))
        {
            let names: Vec<&str> = self.hypers.iter().map(|h| h.name.as_str()).collect();
            return Err(format!(
                "objective `{}` has no hyperparameter `{unknown}` (it has: {})",
                self.name,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        let mut values = Vec::with_capacity(self.hypers.len());
        for hyper in &self.hypers {
            let value = match (
                sets.iter().rev().find(|(name, _)| name == &hyper.name),
                &hyper.default,
            ) {
                (Some(&(_, value)), _) => value,
                (None, Some(default)) => interpret::scalar(default, 1, &values),
                (None, None) => {
                    return Err(format!(
                        "objective `{}` needs a value for `{}`",
                        self.name, hyper.name
                    ))
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    /// The params' initial values for `numel` elements each.
    pub fn initial_params<F: Real>(
        &self,
        numel: usize,
        hypers: &[f64],
    ) -> Result<Vec<Vec<F>>, String> {
        self.check_hypers(hypers)?;
        let values = self.run::<F>(numel, hypers, None);
        Ok(self
            .params
            .iter()
            .map(|param| elements(&values[param.init.index()], numel))
            .collect())
    }

    /// The total loss and its gradient with respect to each param at
    /// `params` (one slice per param, all of the same length).
    pub fn evaluate<F: Real>(
        &self,
        params: &[&[F]],
        hypers: &[f64],
    ) -> Result<Evaluation<F>, String> {
        self.check_hypers(hypers)?;
        if params.len() != self.params.len() {
            return Err(format!(
                "{} tensors for the {} params of `{}`",
                params.len(),
                self.params.len(),
                self.name
            ));
        }
        let numel = params.first().map_or(0, |p| p.len());
        if params.iter().any(|p| p.len() != numel) {
            return Err(format!("the params of `{}` differ in length", self.name));
        }
        let values = self.run(numel, hypers, Some(params));
        let loss = elements::<F>(&values[self.loss.index()], numel)
            .iter()
            .map(|x| x.to_f64())
            .sum();
        let gradients = self
            .gradients
            .iter()
            .map(|g| elements(&values[g.index()], numel))
            .collect();
        Ok(Evaluation { loss, gradients })
    }

    fn check_hypers(&self, hypers: &[f64]) -> Result<(), String> {
        if hypers.len() == self.hypers.len() {
            Ok(())
        } else {
            Err(format!(
                "{} hyperparameter values for the {} of `{}`",
                hypers.len(),
                self.hypers.len(),
                self.name
            ))
        }
    }

    /// Every node's value, one tensor of `numel` elements; without `params`
    /// they read as NaN (initial values do not read them).
    fn run<F: Real>(&self, numel: usize, hypers: &[f64], params: Option<&[&[F]]>) -> Vec<Value<F>> {
        interpret::evaluate(
            &self.graph,
            &[MatrixView::vector(numel)],
            |input, _| match input {
                Input::State(0) => {
                    Value::Elem(vec![(0..numel).map(|j| F::from_f64(j as f64)).collect()])
                }
                Input::State(slot) => match params {
                    Some(params) => Value::Elem(vec![params[slot as usize - 1].to_vec()]),
                    None => Value::Group(f64::NAN),
                },
                Input::Hyper(i) => Value::Group(hypers[i as usize]),
                _ => Value::Group(f64::NAN),
            },
        )
    }

    /// The objective as text: its doc, signature, loss and each param's
    /// gradient as an expression in the language's syntax, with constant
    /// arithmetic and trivial identities (`x * 1`, `0 + x`, `x ^ 1`, ...)
    /// folded for reading — the values come from the unfolded graph — and a
    /// `let` (`e1`, `e2`, ...) for each subexpression used more than once.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for line in &self.doc {
            let _ = writeln!(out, "/// {line}");
        }
        let hypers: Vec<String> = self
            .hypers
            .iter()
            .map(|h| match &h.default {
                Some(default) => format!("{} = {}", h.name, default.text),
                None => h.name.clone(),
            })
            .collect();
        let _ = writeln!(out, "objective {}({})", self.name, hypers.join(", "));
        let _ = writeln!(out, "elements per param: {} by default", self.default_numel);
        let mut roots: Vec<Handle> = self.params.iter().map(|p| p.init).collect();
        roots.push(self.loss);
        roots.extend(&self.gradients);
        let (folded, roots) = fold(&self.graph, &roots);
        // Nodes printed by the name of their `let`.
        let mut names: Vec<Option<String>> = vec![None; folded.len()];
        let input = |input: Input| self.input_name(input);
        let print = |names: &[Option<String>], handle: Handle, expand: bool| {
            emit::expression(&folded, handle, names, &input, expand)
        };
        let (inits, rest) = roots.split_at(self.params.len());
        for (param, &init) in self.params.iter().zip(inits) {
            let _ = writeln!(
                out,
                "param {} = {};",
                param.name,
                print(&names, init, false)
            );
        }
        let taken: Vec<&str> = self
            .params
            .iter()
            .map(|p| p.name.as_str())
            .chain(self.hypers.iter().map(|h| h.name.as_str()))
            .collect();
        let mut fresh = (1..)
            .map(|k| format!("e{k}"))
            .filter(|n| !taken.contains(&n.as_str()));
        for shared in shared_nodes(&folded, rest) {
            let name = fresh.next().unwrap_or_default();
            let _ = writeln!(out, "let {name} = {};", print(&names, shared, true));
            names[shared.index()] = Some(name);
        }
        let _ = writeln!(out, "loss {};", print(&names, rest[0], false));
        for (param, &gradient) in self.params.iter().zip(&rest[1..]) {
            let _ = writeln!(
                out,
                "d loss / d {} = {}",
                param.name,
                print(&names, gradient, false)
            );
        }
        out
    }

    /// How `describe` names an input of the objective's graph.
    fn input_name(&self, input: Input) -> String {
        match input {
            Input::State(0) => INDEX_NAME.to_string(),
            Input::State(slot) => self.params[slot as usize - 1].name.clone(),
            Input::Hyper(i) => self.hypers[i as usize].name.clone(),
            Input::Numel | Input::Rank | Input::Rows | Input::Cols => {
                input.size_name().unwrap_or_default().to_string()
            }
            Input::Param => "p".to_string(),
            Input::Grad => "g".to_string(),
            Input::Step => "t".to_string(),
        }
    }
}

/// The operations (not leaves) that `roots` reach by more than one path, in
/// arena order (operands first).
fn shared_nodes(graph: &Graph, roots: &[Handle]) -> Vec<Handle> {
    let mut uses = vec![0usize; graph.len()];
    let mut stack: Vec<Handle> = roots.to_vec();
    while let Some(handle) = stack.pop() {
        uses[handle.index()] += 1;
        if uses[handle.index()] == 1 {
            stack.extend(graph.node(handle).children());
        }
    }
    graph
        .iter()
        .filter(|(h, node)| uses[h.index()] > 1 && !node.is_leaf())
        .map(|(h, _)| h)
        .collect()
}

/// A value as `numel` elements of one tensor.
fn elements<F: Real>(value: &Value<F>, numel: usize) -> Vec<F> {
    match value.broadcast(Shape::Elem, &[MatrixView::vector(numel)]) {
        Value::Elem(mut tensors) => tensors.pop().unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// A copy of the nodes `roots` need with constants folded and trivial
/// identities applied (over the reals: `0 * x` becomes 0 even where `x` is
/// infinite), for printing.
fn fold(graph: &Graph, roots: &[Handle]) -> (Graph, Vec<Handle>) {
    let mut out = Graph::new();
    let mut map: Vec<Handle> = Vec::with_capacity(graph.len());
    for (handle, node) in graph.iter() {
        let node = node.map_children(|child| map[child.index()]);
        let folded = if graph.ty(handle).kind == Kind::Bool {
            fold_condition(&mut out, node)
        } else {
            fold_node(&mut out, node)
        };
        map.push(folded);
    }
    let roots = roots.iter().map(|r| map[r.index()]).collect();
    (out, roots)
}

/// Folds a bool node: comparisons of constants, `&&`/`||`/`!` with a
/// constant operand.
fn fold_condition(graph: &mut Graph, node: Node) -> Handle {
    let value = |graph: &Graph, h: Handle| graph.node(h).constant_value();
    let folded = match node {
        Node::Unary(op, a) => value(graph, a).map(|x| interpret::unary(op, x)),
        Node::Binary(op, a, b) => match (value(graph, a), value(graph, b)) {
            (Some(x), Some(y)) => Some(interpret::binary(op, x, y)),
            (Some(x), None) | (None, Some(x)) if op == BinaryOp::And && x == 0.0 => Some(0.0),
            (Some(x), None) | (None, Some(x)) if op == BinaryOp::Or && x != 0.0 => Some(1.0),
            (Some(_), None) if op.is_logical() => return b,
            (None, Some(_)) if op.is_logical() => return a,
            _ => None,
        },
        _ => None,
    };
    match folded {
        Some(x) => graph.add(Node::Bool(x != 0.0)),
        None => graph.add(node),
    }
}

fn fold_node(graph: &mut Graph, node: Node) -> Handle {
    let constant = |graph: &Graph, h: Handle| match *graph.node(h) {
        Node::Const(bits) => Some(f64::from_bits(bits)),
        _ => None,
    };
    let operands: Option<Vec<f64>> = match node {
        Node::Unary(..) | Node::Binary(..) | Node::Lerp(..) => node
            .children()
            .iter()
            .map(|&c| constant(graph, c))
            .collect(),
        _ => None,
    };
    if let Some(x) = operands {
        let value = match node {
            Node::Unary(op, _) => interpret::unary(op, x[0]),
            Node::Binary(op, ..) => interpret::binary(op, x[0], x[1]),
            _ => interpret::lerp(x[0], x[1], x[2]),
        };
        return graph.add(Node::constant(value));
    }
    let is = |graph: &Graph, h: Handle, value: f64| constant(graph, h) == Some(value);
    match node {
        Node::Unary(UnaryOp::Neg, a) => match *graph.node(a) {
            Node::Unary(UnaryOp::Neg, inner) => inner,
            _ => graph.add(node),
        },
        Node::Binary(BinaryOp::Add, a, b) if is(graph, a, 0.0) => b,
        Node::Binary(BinaryOp::Add, a, b)
            if matches!(graph.node(b), Node::Unary(UnaryOp::Neg, _)) =>
        {
            let Node::Unary(_, negated) = *graph.node(b) else {
                unreachable!()
            };
            graph.add(Node::Binary(BinaryOp::Sub, a, negated))
        }
        Node::Binary(BinaryOp::Add | BinaryOp::Sub, a, b) if is(graph, b, 0.0) => a,
        Node::Binary(BinaryOp::Sub, a, b) if is(graph, a, 0.0) => {
            fold_node(graph, Node::Unary(UnaryOp::Neg, b))
        }
        Node::Binary(BinaryOp::Mul, a, b) if is(graph, a, 0.0) || is(graph, b, 0.0) => {
            graph.add(Node::constant(0.0))
        }
        Node::Binary(BinaryOp::Mul, a, b) if is(graph, a, 1.0) => b,
        Node::Binary(BinaryOp::Mul | BinaryOp::Div | BinaryOp::Pow, a, b) if is(graph, b, 1.0) => a,
        Node::Binary(BinaryOp::Mul, a, b) if is(graph, a, -1.0) => {
            fold_node(graph, Node::Unary(UnaryOp::Neg, b))
        }
        Node::Binary(BinaryOp::Mul, a, b) if is(graph, b, -1.0) => {
            fold_node(graph, Node::Unary(UnaryOp::Neg, a))
        }
        Node::Binary(BinaryOp::Pow, _, b) if is(graph, b, 0.0) => graph.add(Node::constant(1.0)),
        Node::Select(c, a, b) => match *graph.node(c) {
            Node::Bool(true) => a,
            Node::Bool(false) => b,
            _ => graph.add(node),
        },
        _ => graph.add(node),
    }
}
