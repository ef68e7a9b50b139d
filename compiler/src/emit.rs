//! The `.opt` emitter: prints a [`Rule`] back as source a person can read and
//! `optc` can compile. Hypergradient variants, simplified rules and the
//! evolutionary search's results only exist as IR; this is how they become
//! files again.
//!
//! The output parses and lowers back to a rule that computes exactly what the
//! original computes, and emitting that rule again gives the same text. It
//! has the doc comment, the hyperparameters with their defaults, the state
//! declarations, then the step: `let`s for values used more than once (and to
//! split expressions longer than [`MAX_INLINE`] operations), and one
//! assignment per output, `p -= ...` where the update has that shape.
//! Everything is written in terms of the values at the start of the step,
//! except that after `mu = ...;` the name `mu` means the new value, as in
//! hand-written rules. Statements are ordered so that every read of an old
//! value comes before the assignment that replaces it; where no order can do
//! that (`a = b; b = a;`), the new value is bound first (`let a_new = b;`).
//! Operators get the parentheses their precedence needs and no more, and
//! numbers the shortest text that reads back as the same f64.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::builtins::{self, Builtin, RESERVED_NAMES};
use crate::ir::{BinaryOp, Graph, Handle, Input, Kind, Node, ReduceOp, Rule, Shape, UnaryOp};
use crate::program::{Origin, Program};

/// The most operations one expression prints inline; larger ones are split
/// into `let`s.
pub const MAX_INLINE: usize = 12;

/// Longest line of the `optimizer NAME(...)` header before it wraps.
const HEADER_WIDTH: usize = 96;

/// The rule as `.opt` source. Hyperparameter defaults keep the text they were
/// written with where it compiles in `context` — the program the emitted file
/// will be read with, usually the standard library — and are printed from
/// their compiled form otherwise.
pub fn emit(rule: &Rule, context: &Program) -> String {
    let mut out = String::new();
    for line in rule.doc.iter().flat_map(|doc| doc.lines()) {
        if line.is_empty() {
            out.push_str("///\n");
        } else {
            out.push_str(&format!("/// {line}\n"));
        }
    }
    let mut scratch = context.clone();
    let params: Vec<String> = (0..rule.hypers.len())
        .map(|index| hyper_param(rule, index, &mut scratch))
        .collect();
    out.push_str(&header(&rule.name, &params));
    let body = Body::new(rule);
    for statement in body.statements() {
        out.push_str("    ");
        out.push_str(&statement);
        out.push('\n');
    }
    out.push_str("}\n");
    out
}

/// `optimizer NAME(a, b, ...) {`, wrapped under the parenthesis when long.
fn header(name: &str, params: &[String]) -> String {
    let opening = format!("optimizer {name}(");
    let indent = " ".repeat(opening.len());
    let mut text = opening.clone();
    let mut line_len = opening.len();
    for (index, param) in params.iter().enumerate() {
        let last = index + 1 == params.len();
        let piece = if last {
            param.clone()
        } else {
            format!("{param},")
        };
        let tail = if last { ") {".len() } else { 0 };
        if index > 0 {
            if line_len + 1 + piece.len() + tail > HEADER_WIDTH {
                text.push('\n');
                text.push_str(&indent);
                line_len = indent.len();
            } else {
                text.push(' ');
                line_len += 1;
            }
        }
        text.push_str(&piece);
        line_len += piece.len();
    }
    text.push_str(") {\n");
    text
}

/// `name`, `name = default` (or `name = true` for booleans).
fn hyper_param(rule: &Rule, index: usize, scratch: &mut Program) -> String {
    let hyper = &rule.hypers[index];
    let Some(default) = &hyper.default else {
        return hyper.name.clone();
    };
    let text = if default_text_compiles(rule, index, scratch) {
        default.text.trim().to_string()
    } else {
        let input_names = InputNames { rule };
        let unnamed = vec![None; default.graph.len()];
        let printer = Printer {
            graph: &default.graph,
            names: &unnamed,
            inputs: &|input| input_names.name(input),
        };
        printer.print(default.output, true).text
    };
    format!("{} = {text}", hyper.name)
}

/// Whether the default of hyperparameter `index`, as written, compiles where
/// the emitted file will be read: in `scratch` (a copy of the context), after
/// the hyperparameters before it that it reads, to a value of the same kind.
/// (Only those: probing with every earlier one made emitting N
/// hyperparameters quadratic.)
fn default_text_compiles(rule: &Rule, index: usize, scratch: &mut Program) -> bool {
    let hyper = &rule.hypers[index];
    let Some(default) = &hyper.default else {
        return false;
    };
    if default.text.trim().is_empty() {
        return false;
    }
    let mut read: Vec<usize> = default
        .graph
        .iter()
        .filter_map(|(_, node)| match node {
            Node::Input(Input::Hyper(i), _) if (*i as usize) < index => Some(*i as usize),
            _ => None,
        })
        .collect();
    read.sort_unstable();
    read.dedup();
    let mut params: Vec<String> = read
        .iter()
        .map(|&i| &rule.hypers[i])
        .map(|h| match h.kind {
            Kind::Bool => format!("{} = false", h.name),
            Kind::Float => h.name.clone(),
        })
        .collect();
    params.push(format!("{} = {}", hyper.name, default.text));
    let probe = format!("emit_default_probe_{}", scratch.files().len());
    let source = format!("optimizer {probe}({}) {{}}\n", params.join(", "));
    if scratch
        .add_source(&probe, source.as_bytes(), Origin::User)
        .is_err()
    {
        return false;
    }
    scratch
        .compile(&probe)
        .is_ok_and(|compiled| compiled.hypers.get(read.len()).map(|h| h.kind) == Some(hyper.kind))
}

/// Where an output goes: `p` or a state slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Target {
    Param,
    State(usize),
}

impl Target {
    /// `p` is 0, state slot i is i + 1.
    fn index(self) -> usize {
        match self {
            Target::Param => 0,
            Target::State(i) => i + 1,
        }
    }
}

/// How a node appears in the printed step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Naming {
    /// Written out where it is used.
    Inline,
    /// Bound by a `let`.
    Let,
    /// Written by the assignment of this target, and read by its name after it.
    Output(Target),
}

/// A statement of the printed step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Unit {
    Declare(usize),
    Let(Handle),
    Assign(Target),
}

/// The rule's step, prepared for printing: its graph with constants in the
/// form they print as, and how each node is named.
struct Body<'r> {
    rule: &'r Rule,
    graph: Graph,
    param_out: Handle,
    state_out: Vec<Handle>,
    inits: Vec<Handle>,
    /// The input node of each target, where the graph reads it.
    inputs: HashMap<Target, Handle>,
    uses: Vec<u32>,
    naming: Vec<Naming>,
    /// Outputs bound by a `let` because no statement order could avoid it.
    rebound: BTreeSet<Target>,
}

impl<'r> Body<'r> {
    fn new(rule: &'r Rule) -> Body<'r> {
        let (graph, map) = printable_graph(rule);
        let mut body = Body {
            rule,
            param_out: map[rule.param_out.index()],
            state_out: rule.state_out.iter().map(|h| map[h.index()]).collect(),
            inits: rule.states.iter().map(|s| map[s.init.index()]).collect(),
            inputs: HashMap::new(),
            uses: vec![0; graph.len()],
            naming: vec![Naming::Inline; graph.len()],
            rebound: BTreeSet::new(),
            graph,
        };
        for (handle, node) in body.graph.iter() {
            match node {
                Node::Input(Input::Param, _) => {
                    body.inputs.insert(Target::Param, handle);
                }
                Node::Input(Input::State(i), _) => {
                    body.inputs.insert(Target::State(*i as usize), handle);
                }
                _ => {}
            }
            for child in node.children() {
                body.uses[child.index()] += 1;
            }
        }
        for root in body.roots() {
            body.uses[root.index()] += 1;
        }
        body.name_nodes();
        body
    }

    fn targets(&self) -> impl Iterator<Item = Target> {
        std::iter::once(Target::Param).chain((0..self.rule.states.len()).map(Target::State))
    }

    fn output(&self, target: Target) -> Handle {
        match target {
            Target::Param => self.param_out,
            Target::State(i) => self.state_out[i],
        }
    }

    fn target_name(&self, target: Target) -> &str {
        match target {
            Target::Param => "p",
            Target::State(i) => &self.rule.states[i].name,
        }
    }

    fn roots(&self) -> Vec<Handle> {
        self.targets()
            .map(|t| self.output(t))
            .chain(self.inits.iter().copied())
            .collect()
    }

    /// Whether the step assigns `target` (it does unless its output is its
    /// own input).
    fn assigns(&self, target: Target) -> bool {
        self.inputs.get(&target) != Some(&self.output(target))
    }

    /// Decides which nodes get names: outputs read elsewhere are named by
    /// their assignment, other values read more than once (and not tiny) by
    /// a `let`, and the largest operands of a too-large expression by `let`s.
    fn name_nodes(&mut self) {
        let mut defining: HashMap<Handle, Target> = HashMap::new();
        for target in self.targets().collect::<Vec<_>>() {
            let out = self.output(target);
            if self.assigns(target) && !self.graph.node(out).is_leaf() {
                defining.entry(out).or_insert(target);
            }
        }
        let mut size = vec![0usize; self.graph.len()];
        for (handle, node) in self.graph.iter() {
            if node.is_leaf() {
                continue;
            }
            let children = node.children();
            let inline_size = |naming: &[Naming]| {
                1 + children
                    .iter()
                    .filter(|c| naming[c.index()] == Naming::Inline)
                    .map(|c| size[c.index()])
                    .sum::<usize>()
            };
            while inline_size(&self.naming) > MAX_INLINE {
                let largest = children
                    .iter()
                    .filter(|c| self.naming[c.index()] == Naming::Inline && size[c.index()] > 0)
                    .fold(None, |best: Option<Handle>, &c| match best {
                        Some(b) if size[b.index()] >= size[c.index()] => Some(b),
                        _ => Some(c),
                    });
                match largest {
                    Some(child) => self.naming[child.index()] = Naming::Let,
                    None => break,
                }
            }
            size[handle.index()] = inline_size(&self.naming);
            let shared = self.uses[handle.index()] >= 2;
            if let Some(&target) = defining.get(&handle) {
                if shared {
                    self.naming[handle.index()] = Naming::Output(target);
                }
            } else if shared && size[handle.index()] >= 2 {
                self.naming[handle.index()] = Naming::Let;
            }
        }
    }

    /// The statements of the step, in an order where every name is read
    /// while it means what the graph means.
    fn statements(mut self) -> Vec<String> {
        let order = loop {
            let units = self.units();
            let edges = self.constraints(&units);
            match topological_order(&units, &edges, |u| self.priority(u)) {
                Ok(order) => break order,
                Err(()) => {
                    let target = self
                        .targets()
                        .filter(|&t| self.assigns(t) && !self.rebound.contains(&t))
                        .find(|&t| on_cycle(&units, &edges, Unit::Assign(t)));
                    match target {
                        Some(target) => {
                            let out = self.output(target);
                            self.naming[out.index()] = Naming::Let;
                            self.rebound.insert(target);
                        }
                        // Every assignment is bound by a `let` and reads
                        // nothing else, so no cycle is left; kept as a guard.
                        None => break units,
                    }
                }
            }
        };
        let names = self.names(&order);
        let input_names = InputNames { rule: self.rule };
        let printer = Printer {
            graph: &self.graph,
            names: &names,
            inputs: &|input| input_names.name(input),
        };
        order
            .iter()
            .map(|&unit| self.statement(unit, &printer, &names))
            .collect()
    }

    /// Every statement the step needs, unordered.
    fn units(&self) -> Vec<Unit> {
        let declares = (0..self.rule.states.len()).map(Unit::Declare);
        let lets = self
            .graph
            .iter()
            .filter(|(h, _)| self.naming[h.index()] == Naming::Let)
            .map(|(h, _)| Unit::Let(h));
        let assigns = self
            .targets()
            .filter(|&t| self.assigns(t))
            .map(Unit::Assign);
        declares.chain(lets).chain(assigns).collect()
    }

    /// The node a statement computes.
    fn root(&self, unit: Unit) -> Handle {
        match unit {
            Unit::Declare(i) => self.inits[i],
            Unit::Let(h) => h,
            Unit::Assign(t) => self.output(t),
        }
    }

    /// The statement that gives `handle` its name, if it has one.
    fn definer(&self, handle: Handle) -> Option<Unit> {
        match self.naming[handle.index()] {
            Naming::Inline => None,
            Naming::Let => Some(Unit::Let(handle)),
            Naming::Output(t) => Some(Unit::Assign(t)),
        }
    }

    /// Whether `unit` writes its root's expression out (rather than the
    /// name another statement gave it).
    fn expands_root(&self, unit: Unit) -> bool {
        self.definer(self.root(unit)).is_none_or(|d| d == unit)
    }

    /// Pairs (before, after): a statement comes after the statements naming
    /// what it reads and after the declaration of each state it reads, and
    /// before the assignment of each input it reads; states are declared in
    /// order (their order is the rule's state layout).
    fn constraints(&self, units: &[Unit]) -> Vec<(Unit, Unit)> {
        let mut edges = Vec::new();
        for &unit in units {
            match unit {
                Unit::Assign(Target::State(i)) => edges.push((Unit::Declare(i), unit)),
                Unit::Declare(i) if i > 0 => edges.push((Unit::Declare(i - 1), unit)),
                _ => {}
            }
            let root = self.root(unit);
            let mut stack = vec![root];
            let mut seen = HashSet::new();
            while let Some(handle) = stack.pop() {
                if !seen.insert(handle) {
                    continue;
                }
                let expanded = handle == root && self.expands_root(unit);
                if !expanded {
                    if let Some(definer) = self.definer(handle) {
                        edges.push((definer, unit));
                        continue;
                    }
                }
                match self.graph.node(handle) {
                    Node::Input(Input::Param, _) => {
                        if unit != Unit::Assign(Target::Param) {
                            edges.push((unit, Unit::Assign(Target::Param)));
                        }
                    }
                    Node::Input(Input::State(i), _) => {
                        let i = *i as usize;
                        edges.push((Unit::Declare(i), unit));
                        if unit != Unit::Assign(Target::State(i)) {
                            edges.push((unit, Unit::Assign(Target::State(i))));
                        }
                    }
                    node => stack.extend(node.children()),
                }
            }
        }
        let present: HashSet<Unit> = units.iter().copied().collect();
        edges.retain(|(before, after)| {
            before != after && present.contains(before) && present.contains(after)
        });
        edges
    }

    /// Among statements free to go next: declarations first (in order), then
    /// statements computing a new operation in the order the nodes were
    /// made, then statements that copy a value (in target order). Statements
    /// of the second kind print their node first, so re-reading the emitted
    /// file numbers them in the order emitted, and emitting it again gives
    /// the same order.
    fn priority(&self, unit: Unit) -> (u8, usize) {
        let root = self.root(unit);
        let computes = self.expands_root(unit) && !self.graph.node(root).is_leaf();
        match unit {
            Unit::Declare(i) => (0, i),
            _ if computes => (1, root.index()),
            Unit::Assign(target) => (2, target.index()),
            Unit::Let(_) => (
                2,
                self.rebound
                    .iter()
                    .find(|&&t| self.output(t) == root)
                    .map_or(0, |t| t.index()),
            ),
        }
    }

    /// The name of every named node: `let`s (`NAME_new` for a rebound
    /// output, `t1`, `t2`, ... otherwise, in statement order), and outputs,
    /// read by their target's name after their assignment.
    fn names(&self, order: &[Unit]) -> Vec<Option<String>> {
        let mut names: Vec<Option<String>> = vec![None; self.graph.len()];
        let mut taken: HashSet<String> = RESERVED_NAMES.iter().map(|s| s.to_string()).collect();
        taken.extend(self.rule.hypers.iter().map(|h| h.name.clone()));
        taken.extend(self.rule.states.iter().map(|s| s.name.clone()));
        let mut numbered = (1..).map(|n| format!("t{n}"));
        for &unit in order {
            let Unit::Let(handle) = unit else { continue };
            let rebound = self.rebound.iter().find(|&&t| self.output(t) == handle);
            let name = match rebound {
                Some(&target) => {
                    let stem = format!("{}_new", self.target_name(target));
                    let suffixed = (2..).map(|n| format!("{stem}{n}"));
                    fresh(&mut taken, std::iter::once(stem.clone()).chain(suffixed))
                }
                None => fresh(&mut taken, &mut numbered),
            };
            names[handle.index()] = Some(name);
        }
        for (handle, naming) in self.naming.iter().enumerate() {
            if let Naming::Output(target) = naming {
                names[handle] = Some(self.target_name(*target).to_string());
            }
        }
        names
    }

    fn statement(&self, unit: Unit, printer: &Printer<'_>, names: &[Option<String>]) -> String {
        let root = self.root(unit);
        let expression = |handle: Handle| printer.print(handle, self.expands_root(unit)).text;
        match unit {
            Unit::Declare(i) => {
                let slot = &self.rule.states[i];
                let shape = match slot.shape {
                    Shape::Elem => String::new(),
                    shape => format!(": {shape}"),
                };
                format!("state {}{shape} = {};", slot.name, expression(root))
            }
            Unit::Let(handle) => format!(
                "let {} = {};",
                names[handle.index()].as_deref().unwrap_or("_"),
                printer.print(handle, true).text
            ),
            Unit::Assign(target) => {
                let name = self.target_name(target);
                let compound = match *self.graph.node(root) {
                    Node::Binary(op, left, right)
                        if self.expands_root(unit)
                            && self.inputs.get(&target) == Some(&left)
                            && self.naming[left.index()] == Naming::Inline =>
                    {
                        match op {
                            BinaryOp::Add => Some(("+=", right)),
                            BinaryOp::Sub => Some(("-=", right)),
                            BinaryOp::Mul => Some(("*=", right)),
                            BinaryOp::Div => Some(("/=", right)),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                match compound {
                    Some((op, right)) => {
                        format!("{name} {op} {};", printer.print(right, false).text)
                    }
                    None => format!("{name} = {};", expression(root)),
                }
            }
        }
    }
}

/// The first of `candidates` not yet `taken`, now taken.
fn fresh(taken: &mut HashSet<String>, mut candidates: impl Iterator<Item = String>) -> String {
    let name = candidates
        .find(|candidate| !taken.contains(candidate))
        .unwrap_or_default();
    taken.insert(name.clone());
    name
}

/// The rule's graph restricted to what its outputs and initialisers read,
/// with negated constants folded (`-1.5` reads back as the negation of
/// `1.5`) and every NaN one constant (it prints as `0 / 0`), so that two
/// nodes print alike exactly when they are one node. Returns the graph and
/// where each old node went.
fn printable_graph(rule: &Rule) -> (Graph, Vec<Handle>) {
    let mut needed = vec![false; rule.graph.len()];
    let roots = std::iter::once(rule.param_out)
        .chain(rule.state_out.iter().copied())
        .chain(rule.states.iter().map(|s| s.init));
    for root in roots {
        needed[root.index()] = true;
    }
    for index in (0..rule.graph.len()).rev() {
        if needed[index] {
            for child in rule.graph.node(Handle::from_index(index)).children() {
                needed[child.index()] = true;
            }
        }
    }
    let mut graph = Graph::new();
    let mut map = vec![Handle::from_index(0); rule.graph.len()];
    let constant = |graph: &Graph, h: Handle| match *graph.node(h) {
        Node::Const(bits) => Some(f64::from_bits(bits)),
        _ => None,
    };
    for (handle, node) in rule.graph.iter() {
        if !needed[handle.index()] {
            continue;
        }
        let node = match node.map_children(|h| map[h.index()]) {
            Node::Unary(UnaryOp::Neg, a) => match constant(&graph, a) {
                Some(value) => Node::constant(-value),
                None => Node::Unary(UnaryOp::Neg, a),
            },
            Node::Binary(BinaryOp::Div, a, b)
                if [a, b]
                    .iter()
                    .all(|&h| constant(&graph, h).is_some_and(|v| v.to_bits() == 0)) =>
            {
                Node::constant(f64::NAN)
            }
            other => other,
        };
        let node = match node {
            Node::Const(bits) if f64::from_bits(bits).is_nan() => Node::constant(f64::NAN),
            other => other,
        };
        map[handle.index()] = graph.add(node);
    }
    (graph, map)
}

/// Orders `units` so that every pair (before, after) of `edges` holds,
/// taking the free unit of least `priority` each time; `Err` on a cycle.
fn topological_order(
    units: &[Unit],
    edges: &[(Unit, Unit)],
    priority: impl Fn(Unit) -> (u8, usize),
) -> Result<Vec<Unit>, ()> {
    let mut waiting: HashMap<Unit, usize> = units.iter().map(|&u| (u, 0)).collect();
    let mut next: HashMap<Unit, Vec<Unit>> = HashMap::new();
    for &(before, after) in edges {
        *waiting.entry(after).or_default() += 1;
        next.entry(before).or_default().push(after);
    }
    let mut free: BTreeSet<((u8, usize), Unit)> = units
        .iter()
        .filter(|u| waiting[u] == 0)
        .map(|&u| (priority(u), u))
        .collect();
    let mut order = Vec::with_capacity(units.len());
    while let Some(first) = free.pop_first() {
        let unit = first.1;
        order.push(unit);
        for &after in next.get(&unit).into_iter().flatten() {
            let count = waiting.entry(after).or_default();
            *count -= 1;
            if *count == 0 {
                free.insert((priority(after), after));
            }
        }
    }
    if order.len() == units.len() {
        Ok(order)
    } else {
        Err(())
    }
}

/// Whether `unit` can reach itself along `edges`.
fn on_cycle(units: &[Unit], edges: &[(Unit, Unit)], unit: Unit) -> bool {
    let mut seen: HashSet<Unit> = HashSet::with_capacity(units.len());
    let mut stack: Vec<Unit> = vec![unit];
    while let Some(current) = stack.pop() {
        for (_, after) in edges.iter().filter(|(before, _)| *before == current) {
            if *after == unit {
                return true;
            }
            if seen.insert(*after) {
                stack.push(*after);
            }
        }
    }
    false
}

/// Precedence levels of the grammar, loosest first.
const IF: u8 = 0;
const OR: u8 = 1;
const AND: u8 = 2;
const COMPARISON: u8 = 3;
const SUM: u8 = 4;
const PRODUCT: u8 = 5;
const UNARY: u8 = 6;
const POWER: u8 = 7;
const ATOM: u8 = 8;

/// Printed text and the precedence level of its outermost operator.
struct Printed {
    text: String,
    level: u8,
}

impl Printed {
    fn new(text: String, level: u8) -> Printed {
        Printed { text, level }
    }

    /// The text, parenthesised if it binds more loosely than `level`.
    fn at(self, level: u8) -> String {
        if self.level < level {
            format!("({})", self.text)
        } else {
            self.text
        }
    }
}

/// The names of a rule's inputs.
struct InputNames<'r> {
    rule: &'r Rule,
}

impl InputNames<'_> {
    fn name(&self, input: Input) -> String {
        match input {
            Input::Param => "p".to_string(),
            Input::Grad => "g".to_string(),
            Input::Step => "t".to_string(),
            Input::Numel | Input::Rank | Input::Rows | Input::Cols => {
                input.size_name().unwrap_or_default().to_string()
            }
            Input::Hyper(i) => self
                .rule
                .hypers
                .get(i as usize)
                .map_or_else(|| format!("hyper{i}"), |h| h.name.clone()),
            Input::State(i) => self
                .rule
                .states
                .get(i as usize)
                .map_or_else(|| format!("state{i}"), |s| s.name.clone()),
        }
    }
}

/// Prints expressions of a graph: a node with a name prints as its name,
/// except the root of a statement that defines it; others are written out.
struct Printer<'a> {
    graph: &'a Graph,
    names: &'a [Option<String>],
    inputs: &'a dyn Fn(Input) -> String,
}

/// Prints node `handle` of `graph` as an `.opt` expression, with the
/// precedence, built-in names and number syntax of emitted rules (`optc diff`
/// prints objectives with it). `names[i]` is the name node
/// `i` prints as (a `let` that binds it), `None` to write it out; with
/// `expand` the root itself is written out even if it has a name (the
/// right-hand side of its own `let`). `input` names the graph's inputs.
pub(crate) fn expression(
    graph: &Graph,
    handle: Handle,
    names: &[Option<String>],
    input: &dyn Fn(Input) -> String,
    expand: bool,
) -> String {
    let printer = Printer {
        graph,
        names,
        inputs: input,
    };
    printer.print(handle, expand).text
}

impl Printer<'_> {
    /// The expression of `handle`; its own name is ignored with `expand`.
    fn print(&self, handle: Handle, expand: bool) -> Printed {
        if !expand {
            if let Some(name) = &self.names[handle.index()] {
                return Printed::new(name.clone(), ATOM);
            }
        }
        match *self.graph.node(handle) {
            Node::Const(bits) => number(f64::from_bits(bits)),
            Node::Bool(value) => Printed::new(value.to_string(), ATOM),
            Node::Input(input, _) => Printed::new((self.inputs)(input), ATOM),
            Node::Unary(op @ (UnaryOp::Neg | UnaryOp::Not), a) => {
                let symbol = if op == UnaryOp::Neg { "-" } else { "!" };
                let operand = self.print(a, false);
                let text = if operand.level < UNARY || operand.text.starts_with(['-', '!']) {
                    format!("({})", operand.text)
                } else {
                    operand.text
                };
                Printed::new(format!("{symbol}{text}"), UNARY)
            }
            Node::Unary(UnaryOp::Sqrt, a) => match self.inline_node(a) {
                Some(Node::Reduce(ReduceOp::Sum, scope, square)) => {
                    match self.inline_node(square) {
                        Some(Node::Binary(BinaryOp::Mul, x, y)) if x == y => {
                            self.call(Builtin::Norm(scope), &[x])
                        }
                        _ => self.call(Builtin::Unary(UnaryOp::Sqrt), &[a]),
                    }
                }
                _ => self.call(Builtin::Unary(UnaryOp::Sqrt), &[a]),
            },
            Node::Unary(op, a) => self.call(Builtin::Unary(op), &[a]),
            Node::Binary(op, a, b) => self.binary(op, a, b),
            Node::Gram(a, b) => self.call(Builtin::Gram, &[a, b]),
            Node::MatMul(a, b) => self.call(Builtin::MatMul, &[a, b]),
            Node::Transpose(a) => self.call(Builtin::Transpose, &[a]),
            Node::Select(c, a, b) => {
                let otherwise = match self.inline_node(b) {
                    Some(Node::Select(..)) => self.print(b, false).text,
                    _ => format!("{{ {} }}", self.print(b, false).at(IF)),
                };
                Printed::new(
                    format!(
                        "if {} {{ {} }} else {otherwise}",
                        self.print(c, false).at(OR),
                        self.print(a, false).at(IF)
                    ),
                    IF,
                )
            }
            Node::Lerp(a, b, w) => self.call(Builtin::Lerp, &[a, b, w]),
            Node::Reduce(ReduceOp::Sum, scope, product) => match self.inline_node(product) {
                Some(Node::Binary(BinaryOp::Mul, x, y)) if x != y => {
                    self.call(Builtin::Dot(scope), &[x, y])
                }
                _ => self.call(Builtin::Reduce(ReduceOp::Sum, scope), &[product]),
            },
            Node::Reduce(op, scope, a) => self.call(Builtin::Reduce(op, scope), &[a]),
        }
    }

    /// The node at `handle` if it is written out where it is used (so a
    /// built-in that expands to it, like `norm`, can stand for it).
    fn inline_node(&self, handle: Handle) -> Option<Node> {
        self.names[handle.index()]
            .is_none()
            .then(|| *self.graph.node(handle))
    }

    fn call(&self, builtin: Builtin, args: &[Handle]) -> Printed {
        let name = builtins::name(builtin).unwrap_or("?");
        let args: Vec<String> = args.iter().map(|&a| self.print(a, false).at(IF)).collect();
        Printed::new(format!("{name}({})", args.join(", ")), ATOM)
    }

    fn binary(&self, op: BinaryOp, a: Handle, b: Handle) -> Printed {
        match op {
            BinaryOp::Add | BinaryOp::Sub => self.infix(a, op, b, SUM),
            BinaryOp::Mul => self.infix(a, op, b, PRODUCT),
            BinaryOp::Div => match (self.inline_node(a), self.inline_node(b)) {
                (
                    Some(Node::Reduce(ReduceOp::Sum, scope, x)),
                    Some(Node::Reduce(ReduceOp::Sum, count_scope, one)),
                ) if scope == count_scope && *self.graph.node(one) == Node::constant(1.0) => {
                    self.call(Builtin::Mean(scope), &[x])
                }
                _ => self.infix(a, op, b, PRODUCT),
            },
            BinaryOp::Pow => Printed::new(
                format!(
                    "{}^{}",
                    self.print(a, false).at(ATOM),
                    self.print(b, false).at(UNARY)
                ),
                POWER,
            ),
            BinaryOp::Min => match self.inline_node(a) {
                Some(Node::Binary(BinaryOp::Max, x, lo)) => self.call(Builtin::Clamp, &[x, lo, b]),
                _ => self.call(Builtin::Binary(op), &[a, b]),
            },
            BinaryOp::Max => self.call(Builtin::Binary(op), &[a, b]),
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => self.comparison(a, op, b),
            BinaryOp::And => self.infix(a, op, b, AND),
            BinaryOp::Or => self.infix(a, op, b, OR),
        }
    }

    /// A left-associative operator at `level`.
    fn infix(&self, a: Handle, op: BinaryOp, b: Handle, level: u8) -> Printed {
        let left = self.print(a, false).at(level);
        let right = self.print(b, false).at(level + 1);
        let symbol = op.infix_symbol().unwrap_or("?");
        Printed::new(format!("{left} {symbol} {right}"), level)
    }

    /// Comparisons do not chain: both operands are sums.
    fn comparison(&self, a: Handle, op: BinaryOp, b: Handle) -> Printed {
        let left = self.print(a, false).at(SUM);
        let right = self.print(b, false).at(SUM);
        let symbol = op.infix_symbol().unwrap_or("?");
        Printed::new(format!("{left} {symbol} {right}"), COMPARISON)
    }
}

/// A constant as the shortest text that reads back as the same f64: plain
/// decimal or scientific notation, whichever is shorter (plain on near
/// ties); `pi`, `inf`; negative values as negations; NaN as `0 / 0`.
fn number(value: f64) -> Printed {
    if value.is_nan() {
        return Printed::new("0 / 0".to_string(), PRODUCT);
    }
    let magnitude = value.abs();
    let text = if magnitude == std::f64::consts::PI {
        "pi".to_string()
    } else if magnitude.is_infinite() {
        "inf".to_string()
    } else {
        let plain = format!("{magnitude}");
        let scientific = format!("{magnitude:e}");
        if plain.len() <= scientific.len() + 1 {
            plain
        } else {
            scientific
        }
    };
    if value.is_sign_negative() {
        Printed::new(format!("-{text}"), UNARY)
    } else {
        Printed::new(text, ATOM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_back_exactly() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut samples = vec![0.0, 1.0, 0.1, 1e-8, 1e300, 5e-324, f64::MAX, 0.9, 1e-3, 1e4];
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let value = f64::from_bits(state).abs();
            if value.is_finite() {
                samples.push(value);
            }
        }
        for value in samples {
            let printed = number(value).text;
            let parsed: f64 = printed.parse().unwrap_or(f64::NAN);
            assert_eq!(
                parsed.to_bits(),
                value.to_bits(),
                "{value:e} printed as {printed}"
            );
        }
        assert_eq!(number(1e-8).text, "1e-8");
        assert_eq!(number(0.001).text, "0.001");
        assert_eq!(number(10000.0).text, "1e4");
        assert_eq!(number(1000.0).text, "1000");
        assert_eq!(number(-0.0).text, "-0");
        assert_eq!(number(f64::NEG_INFINITY).text, "-inf");
    }

    #[test]
    fn headers_wrap_under_the_parenthesis() {
        let params: Vec<String> = (0..12)
            .map(|i| format!("hyperparameter_{i} = 0.5"))
            .collect();
        let text = header("wide", &params);
        assert!(text.lines().all(|l| l.len() <= HEADER_WIDTH), "{text}");
        assert!(
            text.lines()
                .skip(1)
                .all(|l| l.starts_with("               h")),
            "{text}"
        );
        assert_eq!(
            header("sgd", &["learning_rate = 1e-3".to_string()]),
            "optimizer sgd(learning_rate = 1e-3) {\n"
        );
    }
}
