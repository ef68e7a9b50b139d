//! Rules derived from rules: the hypergradient variant of an optimizer and
//! the adjoint of its step.
//!
//! Both are built on the IR and return ordinary [`Rule`]s, so they run
//! wherever a hand-written rule runs (interpreter, fused kernels), in f32 or
//! f64, and print, emit and simplify like one. Values that the derivation
//! needs to carry between steps or to take from the caller are extra state
//! slots; the derivatives come from [`crate::autodiff`].
//!
//! - [`hypergradient`] adapts one float hyperparameter online by
//!   hypergradient descent (Baydin et al., 2018, "Online Learning Rate
//!   Adaptation with Hypergradient Descent"; Chandra et al., 2022, "Gradient
//!   Descent: The Ultimate Optimizer"). With `a` the hyperparameter and
//!   `d = d p / d a` the derivative of the previous step's result with that
//!   step's inputs held fixed (the papers' one-step approximation):
//!
//!   ```text
//!   a_t   = a_{t-1} - hypergrad_lr * group_sum(g_t * d_{t-1})
//!   p_t, state_t = the rule's step with a_t in place of a
//!   d_t   = d p_t / d a_t          (p_{t-1}, g_t, state_{t-1} held fixed)
//!   ```
//!
//!   `a_0` is the hyperparameter's value and `d_0 = 0`, so the first step
//!   keeps it. `d` is a forward-mode quantity, computed by [`jvp`], which
//!   goes through reductions (LAMB's trust ratio, clipping by a norm).
//! - [`adjoint`] is the vector-Jacobian product of one step after the first:
//!   given cotangents of the new `p` and state, the cotangents of the old
//!   `p`, of `g`, of the old state and of every float hyperparameter.
//!
//! # Layout of the adjoint
//!
//! For a rule with state slots `s_0 .. s_{n-1}` and float hyperparameters
//! `h_0 .. h_{k-1}`, the adjoint rule has the same hyperparameters (pass the
//! same values and the same step number `t` as the step it differentiates)
//! and these state slots, in order:
//!
//! | slots | names | shape | holds |
//! |---|---|---|---|
//! | `0 .. n` | `s_i` | as the rule's | the old state; read only (output = input) |
//! | `n` | `ct_p` | elem | cotangent of the new `p`; read only |
//! | `n + 1 .. 2n + 1` | `ct_s_i` | as `s_i` | cotangent of the new `s_i`; read only |
//! | `2n + 1` | `adj_p` | elem | result: cotangent of the old `p` |
//! | `2n + 2` | `adj_g` | elem | result: cotangent of `g` |
//! | `2n + 3 .. 3n + 3` | `adj_s_i` | as `s_i` | result: cotangent of the old `s_i` |
//! | `3n + 3 .. 3n + 3 + k` | `adj_h_j` | group | result: cotangent of `h_j` |
//!
//! [`Adjoint`] holds these offsets. The parameters and gradients are the
//! step's own inputs, and the parameters come out unchanged. The result
//! slots' inputs are never read. Always pass the state (never run the
//! adjoint as a first step: its slots would be their initialisers, 0). In
//! the fused runtime's buffers (`0 = p`, `1 = g`, then the per-element slots
//! in slot order) the per-element rows of the table follow `p` and `g` in
//! this order; tensor- and group-shaped slots are host values.
//!
//! # Examples
//!
//! ```
//! use optc_compiler::derive::{adjoint, hypergradient, Form};
//! use optc_compiler::interpret::{self, StepInputs, Value};
//! use optc_compiler::{Origin, Program};
//!
//! let mut program = Program::new();
//! let source = b"optimizer sgd(learning_rate = 0.1) { p -= learning_rate * g; }";
//! program.add_source("sgd.opt", source, Origin::User).unwrap();
//! let sgd = program.compile("sgd").unwrap();
//!
//! // Hypergradient SGD: the learning rate grows by hypergrad_lr * <g_t, g_{t-1}>.
//! let hd_sgd = hypergradient(&sgd, "learning_rate", 0.01, Form::Additive).unwrap();
//! assert_eq!(hd_sgd.name, "hd_sgd");
//! let state = [Value::Group(0.1), Value::Elem(vec![vec![-2.0f64, 1.0]])]; // lr, -g_{t-1}
//! let inputs = StepInputs {
//!     params: &[&[1.0f64, 1.0]],
//!     grads: &[&[3.0, 4.0]],
//!     step: 2,
//!     hypers: &[0.1, 0.01],
//!     state: Some(&state),
//!     views: None,
//! };
//! let out = interpret::step(&hd_sgd, &inputs).unwrap();
//! let learning_rate = 0.1 + 0.01 * (3.0 * 2.0 + 4.0 * -1.0);
//! assert_eq!(out.state[0], Value::Group(learning_rate));
//! assert_eq!(out.params, vec![vec![1.0 - learning_rate * 3.0, 1.0 - learning_rate * 4.0]]);
//! assert_eq!(out.state[1], Value::Elem(vec![vec![-3.0, -4.0]]), "d p_t / d lr = -g_t");
//!
//! // The adjoint of SGD's step: state = [ct_p, adj_p, adj_g, adj_learning_rate].
//! let adjoint_sgd = adjoint(&sgd);
//! assert_eq!((adjoint_sgd.cotangent_of_param, adjoint_sgd.adjoint_of_param), (0, 1));
//! let zeros = Value::Elem(vec![vec![0.0f64, 0.0]]);
//! let state = [Value::Elem(vec![vec![1.0f64, 2.0]]), zeros.clone(), zeros, Value::Group(0.0)];
//! let inputs = StepInputs {
//!     params: &[&[1.0f64, 1.0]],
//!     grads: &[&[3.0, 4.0]],
//!     step: 2,
//!     hypers: &[0.1],
//!     state: Some(&state),
//!     views: None,
//! };
//! let out = interpret::step(&adjoint_sgd.rule, &inputs).unwrap();
//! assert_eq!(out.params, vec![vec![1.0, 1.0]], "p is left as it was");
//! assert_eq!(out.state[1], Value::Elem(vec![vec![1.0, 2.0]]), "d p_t / d p = 1");
//! assert_eq!(out.state[2], Value::Elem(vec![vec![-0.1, -0.2]]), "d p_t / d g = -lr");
//! assert_eq!(out.state[3], Value::Group(-(3.0 + 2.0 * 4.0)), "d p_t / d lr = -g");
//! ```

use std::collections::HashSet;

use crate::autodiff::{tangent, vjp};
use crate::ir::{
    BinaryOp, Graph, Handle, Hyper, Input, Kind, Node, ReduceOp, Rule, ScalarExpr, Scope, Shape,
    StateSlot, Type, UnaryOp,
};
use crate::simplify::{simplify_keeping_state, Tier};

/// The hypergradient-descent variant of `rule` for its float hyperparameter
/// `wrt` (see the module docs): named `hd_NAME`, with the rule's state
/// followed by `WRT_t` (group: the adapted value) and `d_p_d_WRT` (per
/// element: `d p / d WRT` of the previous step), and the rule's
/// hyperparameters followed by `hypergrad_lr` (the hypergradient step size,
/// defaulting to `hypergrad_lr_default`); `wrt` itself becomes the initial
/// value. New names that would clash get a `_` suffix.
///
/// Errors: `wrt` is not a hyperparameter of the rule, is a bool, or the
/// rule's update of `p` does not depend on it differentiably after the first
/// step (it only initialises state, or only reaches `p` through `sign`,
/// `floor` or comparisons); the message lists the valid choices.
pub fn hypergradient(
    rule: &Rule,
    wrt: &str,
    hypergrad_lr_default: f64,
    form: Form,
) -> Result<Rule, String> {
    let valid_choices = || {
        let choices = hypers_the_update_depends_on(rule);
        format!(
            "the hyperparameters `{}` can adapt: {}",
            rule.name,
            choices.join(", ")
        )
    };
    let Some(hyper) = rule.hyper_index(wrt) else {
        return Err(format!(
            "`{}` has no hyperparameter `{wrt}`; {}",
            rule.name,
            valid_choices()
        ));
    };
    if rule.hypers[hyper].kind != Kind::Float {
        return Err(format!(
            "`{wrt}` is a bool hyperparameter of `{}`; {}",
            rule.name,
            valid_choices()
        ));
    }
    if !hypergrad_lr_default.is_finite() {
        return Err(format!(
            "the hypergradient step size must be finite, not {hypergrad_lr_default}"
        ));
    }
    let slot_count = rule.states.len() as u32;
    let mut graph = Graph::new();
    // The base rule's initialisers, reading the hyperparameter itself (on
    // the first step the adapted value equals it anyway).
    let inits: Vec<Handle> = rule.states.iter().map(|slot| slot.init).collect();
    let init_copies = copy_reachable(&rule.graph, &inits, &mut graph, |_| None);
    let initial_value = graph.add(Node::Input(Input::Hyper(hyper as u32), Type::GROUP));
    let zero = graph.add(Node::constant(0.0));
    // a_t = a_{t-1} - hypergrad_lr * group_sum(g_t * d_{t-1})
    let previous_value = graph.add(Node::Input(Input::State(slot_count), Type::GROUP));
    let previous_derivative = graph.add(Node::Input(Input::State(slot_count + 1), Type::ELEM));
    let hypergrad_lr = graph.add(Node::Input(
        Input::Hyper(rule.hypers.len() as u32),
        Type::GROUP,
    ));
    let g = graph.add(Node::Input(Input::Grad, Type::ELEM));
    let hypergradient = group_dot(&mut graph, g, previous_derivative);
    let value = match form {
        Form::Additive => {
            let change = graph.add(Node::Binary(BinaryOp::Mul, hypergrad_lr, hypergradient));
            graph.add(Node::Binary(BinaryOp::Sub, previous_value, change))
        }
        Form::Multiplicative => {
            // a_{t-1} (1 - hypergrad_lr cos(g_t, d_{t-1})), cos = 0 where a norm is 0.
            let squares = group_dot(&mut graph, g, g);
            let derivative_squares =
                group_dot(&mut graph, previous_derivative, previous_derivative);
            let product = graph.add(Node::Binary(BinaryOp::Mul, squares, derivative_squares));
            let norms = graph.add(Node::Unary(UnaryOp::Sqrt, product));
            let positive = graph.add(Node::Binary(BinaryOp::Gt, norms, zero));
            let ratio = graph.add(Node::Binary(BinaryOp::Div, hypergradient, norms));
            let cosine = graph.add(Node::Select(positive, ratio, zero));
            let change = graph.add(Node::Binary(BinaryOp::Mul, hypergrad_lr, cosine));
            let one = graph.add(Node::constant(1.0));
            let factor = graph.add(Node::Binary(BinaryOp::Sub, one, change));
            graph.add(Node::Binary(BinaryOp::Mul, previous_value, factor))
        }
    };
    // The base step, reading a_t where it read the hyperparameter.
    let outputs: Vec<Handle> = std::iter::once(rule.param_out)
        .chain(rule.state_out.iter().copied())
        .collect();
    let step_copies = copy_reachable(&rule.graph, &outputs, &mut graph, |node| {
        matches!(node, Node::Input(Input::Hyper(i), _) if i as usize == hyper).then_some(value)
    });
    let param_out = copied(&step_copies, rule.param_out);
    let one = graph.add(Node::constant(1.0));
    let Some(derivative) = jvp(&mut graph, &[(value, one)], &[param_out])[0] else {
        return Err(format!(
            "the update of `{}` does not depend on `{wrt}` after the first step; {}",
            rule.name,
            valid_choices()
        ));
    };

    let mut names = Names::of(rule);
    let mut states: Vec<StateSlot> = rule
        .states
        .iter()
        .map(|slot| StateSlot {
            init: copied(&init_copies, slot.init),
            ..slot.clone()
        })
        .collect();
    states.push(StateSlot {
        name: names.fresh(&format!("{wrt}_t")),
        shape: Shape::Group,
        init: initial_value,
    });
    states.push(StateSlot {
        name: names.fresh(&format!("d_p_d_{wrt}")),
        shape: Shape::Elem,
        init: zero,
    });
    let mut state_out: Vec<Handle> = rule
        .state_out
        .iter()
        .map(|&out| copied(&step_copies, out))
        .collect();
    state_out.extend([value, derivative]);
    let mut hypers = rule.hypers.clone();
    hypers.push(Hyper {
        name: names.fresh("hypergrad_lr"),
        kind: Kind::Float,
        default: Some(ScalarExpr::constant(hypergrad_lr_default)),
    });
    let doc = hypergradient_doc(rule, wrt, &states, &hypers, form);
    Ok(simplified(Rule {
        name: format!("hd_{}", rule.name),
        doc,
        hypers,
        states,
        graph,
        param_out,
        state_out,
    }))
}

/// How a hypergradient rule moves its hyperparameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `a_t = a_{t-1} - beta <g_t, d_{t-1}>` (Baydin et al., 2018, eq. 4):
    /// the hypergradient step size has the units of `a / <g, d>`, so it must
    /// be scaled to the problem.
    Additive,
    /// `a_t = a_{t-1} (1 - beta cos(g_t, d_{t-1}))` (their multiplicative
    /// rule, section 4): scale-free; `a` changes by at most a factor `1 ± beta`
    /// per step and keeps its sign, which recovers from a rate that is far
    /// too large without overshooting to a negative one.
    Multiplicative,
}

/// `group_sum(a * b)`.
fn group_dot(graph: &mut Graph, a: Handle, b: Handle) -> Handle {
    let products = graph.add(Node::Binary(BinaryOp::Mul, a, b));
    graph.add(Node::Reduce(ReduceOp::Sum, Scope::Group, products))
}

/// The doc comment of a hypergradient rule: its equations, the papers, then
/// the base rule's doc.
fn hypergradient_doc(
    rule: &Rule,
    wrt: &str,
    states: &[StateSlot],
    hypers: &[Hyper],
    form: Form,
) -> Vec<String> {
    let value = &states[states.len() - 2].name;
    let derivative = &states[states.len() - 1].name;
    let step_size = &hypers[hypers.len() - 1].name;
    let mut doc = vec![
        format!(
            "Hypergradient descent on `{wrt}` of `{}` (Baydin et al., 2018, \"Online Learning",
            rule.name
        ),
        "Rate Adaptation with Hypergradient Descent\"; Chandra et al., 2022, \"Gradient"
            .to_string(),
        "Descent: The Ultimate Optimizer\"):".to_string(),
        match form {
            Form::Additive => format!(
                "  {wrt}_t = {wrt}_{{t-1}} - {step_size} <g_t, d_{{t-1}}>   (summed over every tensor)"
            ),
            Form::Multiplicative => format!(
                "  {wrt}_t = {wrt}_{{t-1}} (1 - {step_size} cos(g_t, d_{{t-1}}))   (over every tensor; \
                 the multiplicative rule, Baydin et al. section 4)"
            ),
        },
        format!(
            "  p_t, state_t = the `{}` step with {wrt}_t in place of {wrt}",
            rule.name
        ),
        format!("  d_t = d p_t / d {wrt}_t   (p_{{t-1}}, g_t, state_{{t-1}} held fixed)"),
        format!(
            "{wrt}_t is state `{value}`, d_t state `{derivative}`; {wrt}_0 = {wrt} and d_0 = 0,"
        ),
        format!("so the first step keeps {wrt}."),
    ];
    if !rule.doc.is_empty() {
        doc.push(format!("`{}`:", rule.name));
        doc.extend(rule.doc.iter().cloned());
    }
    doc
}

/// The float hyperparameters whose value the rule's update of `p` depends
/// on differentiably (with its state as inputs).
fn hypers_the_update_depends_on(rule: &Rule) -> Vec<&str> {
    (0..rule.hypers.len())
        .filter(|&i| rule.hypers[i].kind == Kind::Float)
        .filter(|&i| {
            let mut graph = rule.graph.clone();
            let hyper = graph.add(Node::Input(Input::Hyper(i as u32), Type::GROUP));
            let one = graph.add(Node::constant(1.0));
            jvp(&mut graph, &[(hyper, one)], &[rule.param_out])[0].is_some()
        })
        .map(|i| rule.hypers[i].name.as_str())
        .collect()
}

/// The adjoint of a rule's step, with the offsets of its state slots (see
/// the module docs for the whole layout).
#[derive(Clone, Debug)]
pub struct Adjoint {
    /// Named `adjoint_NAME`, with the base rule's hyperparameters.
    pub rule: Rule,
    /// Slot of `ct_p`, the cotangent of the new `p`; the cotangent of the
    /// base rule's new state slot `i` is slot `cotangent_of_param + 1 + i`.
    pub cotangent_of_param: usize,
    /// Slot of `adj_p`, the cotangent of the old `p`. Then come `adj_g`, the
    /// cotangent of each old state slot of the base rule, and that of each
    /// hyperparameter of `float_hypers`.
    pub adjoint_of_param: usize,
    /// The base rule's float hyperparameters (indices), in result order.
    pub float_hypers: Vec<usize>,
}

/// The adjoint (vector-Jacobian product) of one step after the first of
/// `rule`, as a rule whose state slots carry the cotangents in and out (see
/// the module docs). The cotangent of a hyperparameter is its derivative
/// through this step alone (schedules and defaults are not differentiated).
pub fn adjoint(rule: &Rule) -> Adjoint {
    let mut graph = rule.graph.clone();
    let slot_count = rule.states.len();
    let mut names = Names::of(rule);
    let zero = graph.add(Node::constant(0.0));
    let mut states = rule.states.clone();
    let mut state_out = Vec::new();
    // The old state, read only.
    for (i, slot) in rule.states.iter().enumerate() {
        state_out.push(graph.add(Node::Input(Input::State(i as u32), float(slot.shape))));
    }
    // The cotangents of the outputs, read only.
    let outputs = std::iter::once(("p", Shape::Elem, rule.param_out)).chain(
        rule.states
            .iter()
            .zip(&rule.state_out)
            .map(|(slot, &out)| (slot.name.as_str(), slot.shape, out)),
    );
    let mut seeds = Vec::new();
    for (name, shape, output) in outputs {
        let cotangent = graph.add(Node::Input(Input::State(states.len() as u32), float(shape)));
        states.push(StateSlot {
            name: names.fresh(&format!("ct_{name}")),
            shape,
            init: zero,
        });
        state_out.push(cotangent);
        seeds.push((output, cotangent));
    }
    // The results.
    let float_hypers: Vec<usize> = (0..rule.hypers.len())
        .filter(|&i| rule.hypers[i].kind == Kind::Float)
        .collect();
    let mut variables = vec![
        ("p", Type::ELEM, Input::Param),
        ("g", Type::ELEM, Input::Grad),
    ];
    for (i, slot) in rule.states.iter().enumerate() {
        variables.push((
            slot.name.as_str(),
            float(slot.shape),
            Input::State(i as u32),
        ));
    }
    for &i in &float_hypers {
        variables.push((
            rule.hypers[i].name.as_str(),
            Type::GROUP,
            Input::Hyper(i as u32),
        ));
    }
    let wrt: Vec<Handle> = variables
        .iter()
        .map(|&(_, ty, input)| graph.add(Node::Input(input, ty)))
        .collect();
    let cotangents = vjp(&mut graph, &seeds, &wrt);
    for ((name, ty, _), cotangent) in variables.iter().zip(cotangents) {
        states.push(StateSlot {
            name: names.fresh(&format!("adj_{name}")),
            shape: ty.shape,
            init: zero,
        });
        state_out.push(cotangent);
    }
    let param_out = graph.add(Node::Input(Input::Param, Type::ELEM));
    let mut doc = vec![
        format!(
            "The adjoint of one step (after the first) of `{}`: given the cotangents",
            rule.name
        ),
        "of the new p and state (slots ct_*), the cotangents of the old p, of g, of the"
            .to_string(),
        "old state and of each float hyperparameter (slots adj_*). p and the old state".to_string(),
        "are left unchanged.".to_string(),
    ];
    if !rule.doc.is_empty() {
        doc.push(format!("`{}`:", rule.name));
        doc.extend(rule.doc.iter().cloned());
    }
    Adjoint {
        rule: simplified(Rule {
            name: format!("adjoint_{}", rule.name),
            doc,
            hypers: rule.hypers.clone(),
            states,
            graph,
            param_out,
            state_out,
        }),
        cotangent_of_param: slot_count,
        adjoint_of_param: 2 * slot_count + 1,
        float_hypers,
    }
}

/// Forward-mode differentiation: adds to `graph` the tangent of each node of
/// `outputs` given tangents for some nodes (`seeds` pairs a node with its
/// tangent, a node of its shape or smaller). A seeded node's own operands are
/// held fixed. `None` for an output that does not depend on the seeds
/// through a differentiable path; the rules (and conventions at non-smooth
/// points) are those of [`crate::autodiff`], through [`tangent`].
pub fn jvp(
    graph: &mut Graph,
    seeds: &[(Handle, Handle)],
    outputs: &[Handle],
) -> Vec<Option<Handle>> {
    let original = graph.len();
    let mut tangents: Vec<Option<Handle>> = vec![None; original];
    let mut seeded = vec![false; original];
    for &(node, seed) in seeds {
        seeded[node.index()] = true;
        tangents[node.index()] = Some(match tangents[node.index()] {
            None => seed,
            Some(earlier) => graph.add(Node::Binary(BinaryOp::Add, earlier, seed)),
        });
    }
    let first = seeds
        .iter()
        .map(|&(node, _)| node.index())
        .min()
        .unwrap_or(original);
    for index in first..original {
        let node = Handle::from_index(index);
        let operand_tangents: Vec<Option<Handle>> = graph
            .node(node)
            .children()
            .iter()
            .map(|child| tangents[child.index()])
            .collect();
        if !seeded[index] && operand_tangents.iter().any(Option::is_some) {
            tangents[index] = tangent(graph, node, &operand_tangents);
        }
    }
    outputs
        .iter()
        .map(|output| tangents[output.index()])
        .collect()
}

/// The float type of a shape.
fn float(shape: Shape) -> Type {
    Type {
        shape,
        kind: Kind::Float,
    }
}

/// Copies the nodes of `from` that `roots` reach into `into`, in arena order
/// (so operands come first); `replace` may stand a node of `into` in for an
/// input (its operands are then not needed for it). Returns where each node
/// went (`None`: not reached).
fn copy_reachable(
    from: &Graph,
    roots: &[Handle],
    into: &mut Graph,
    replace: impl Fn(Node) -> Option<Handle>,
) -> Vec<Option<Handle>> {
    let mut reached = vec![false; from.len()];
    for root in roots {
        reached[root.index()] = true;
    }
    for index in (0..from.len()).rev() {
        if reached[index] {
            for child in from.node(Handle::from_index(index)).children() {
                reached[child.index()] = true;
            }
        }
    }
    let mut copies: Vec<Option<Handle>> = vec![None; from.len()];
    for (handle, &node) in from.iter() {
        if reached[handle.index()] {
            let copy = replace(node)
                .unwrap_or_else(|| into.add(node.map_children(|child| copied(&copies, child))));
            copies[handle.index()] = Some(copy);
        }
    }
    copies
}

/// Where [`copy_reachable`] put a node it reached (operands and roots are).
fn copied(copies: &[Option<Handle>], node: Handle) -> Handle {
    copies[node.index()].unwrap_or(node)
}

/// The names a rule uses (hyperparameters and state), for naming new slots.
struct Names(HashSet<String>);

impl Names {
    fn of(rule: &Rule) -> Names {
        let hypers = rule.hypers.iter().map(|h| h.name.clone());
        Names(
            hypers
                .chain(rule.states.iter().map(|s| s.name.clone()))
                .collect(),
        )
    }

    /// `base`, or `base_`, `base__`, ... if taken; reserved from now on.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        while self.0.contains(&name) {
            name.push('_');
        }
        self.0.insert(name.clone());
        name
    }
}

/// A derived rule after the exact simplifier (bit-identical results), which
/// also drops the nodes no output needs; every state slot stays, as slots
/// are the derived rule's interface.
fn simplified(rule: Rule) -> Rule {
    simplify_keeping_state(&rule, Tier::Exact)
}
