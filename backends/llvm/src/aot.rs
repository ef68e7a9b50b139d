//! Ahead-of-time libraries: a rule as a shared library with a C ABI and its
//! header, with no runtime dependency on optc or LLVM (only libm).
//!
//! For a rule `NAME` the library exports
//!
//! ```c
//! size_t NAME_state_size(size_t numel);   /* bytes of state of one tensor */
//! void   NAME_init(float *state, size_t numel);
//! void   NAME_step(size_t tensors, float *const *params, const float *const *grads,
//!                  float *const *states, const size_t *numels,
//!                  const double *hypers, uint64_t t);
//! ```
//!
//! A tensor's state is one block of `NAME_state_size(numel)` bytes: its
//! per-element slots one after the other, `numel` floats each, in the
//! rule's order. `hypers` holds the hyperparameters in the rule's order
//! (bools as 0 or 1; the header names them and gives their defaults), `t`
//! the 1-based step number. One call steps every tensor in place, with the
//! same arithmetic as the runtime on the LLVM tier: the kernel of the rule's
//! pass plan, and its group and tensor values in f64 exactly as the
//! interpreter computes them (libm's `pow`, `exp`, ... for transcendentals
//! of hyperparameters), rounded to f32 as kernel arguments.
//!
//! Supported: rules that run as one pass without reductions and keep only
//! per-element state with constant initialisers (Adam, AdamW, Lion, SGD
//! and most of the stdlib); others are refused with the reason (their host
//! side, reductions combined between passes and tensor or group state, is
//! the runtime's).

use std::collections::HashMap;
use std::fmt::Write;

use optc_compiler::ir::{BinaryOp, Handle, Input, Kind, Node, Rule, Shape, UnaryOp};
use optc_compiler::kernel::{self, Kernel};
use optc_compiler::plan::Plan;

use crate::codegen::{self, Target, FUNCTION};

/// A library's LLVM module and its C header.
pub struct Library {
    /// The C symbol prefix (the rule's name).
    pub prefix: String,
    pub ir: String,
    pub header: String,
}

/// The library of `rule` for `target`; `defaults` are the header's values
/// of the hyperparameters (`None`: no constant default).
pub fn library(rule: &Rule, target: &Target, defaults: &[Option<f64>]) -> Result<Library, String> {
    let refuse = |why: &str| {
        Err(format!(
            "`{}` cannot be built ahead of time: {why}",
            rule.name
        ))
    };
    if let Some(why) = optc_compiler::plan::unsupported(rule) {
        return refuse(&why);
    }
    let steady = Plan::new(rule, false);
    let first = Plan::new(rule, true);
    if steady.passes.len() != 1 {
        return refuse(&format!(
            "it runs as {} passes (reductions between them need the runtime)",
            steady.passes.len()
        ));
    }
    if let Some(slot) = rule.states.iter().find(|s| s.shape != Shape::Elem) {
        return refuse(&format!(
            "state `{}` is kept per tensor or group",
            slot.name
        ));
    }
    if first.passes != steady.passes || first.fill.iter().any(Option::is_none) {
        return refuse("a state's first value is not a constant");
    }
    let pass = &steady.passes[0];
    if !pass.reductions.is_empty() {
        return refuse("it reduces over elements");
    }
    let kernel: &Kernel = &pass.kernel;
    kernel::validate(kernel)?;
    let prefix = c_name(&rule.name);
    let fills: Vec<f32> = first.fill.iter().map(|f| f.unwrap_or(0.0)).collect();

    let mut text = codegen::module(kernel, target).replace(
        &format!("define void @{FUNCTION}("),
        &format!("define internal void @{FUNCTION}("),
    );
    let mut host = Host {
        body: String::new(),
        next: 0,
        rule,
        values: HashMap::new(),
        declarations: Vec::new(),
    };
    let slots = rule.states.len();
    let scalars = pass.scalar_args.len();
    let buffers = kernel.buffers as usize;
    // NAME_step: for every tensor, its values, its buffers, one kernel call.
    let _ = writeln!(
        host.body,
        "define void @{prefix}_step(i64 %tensors, ptr %params, ptr %grads, ptr %states, ptr %numels, ptr %hypers, i64 %t) #0 {{\n\
         entry:\n  %buffers = alloca [{} x ptr], align 8\n  %scalars = alloca [{} x float], align 4\n  %accs = alloca [1 x double], align 8\n  %tf = uitofp i64 %t to double\n  br label %head\n\
         head:\n  %i = phi i64 [ 0, %entry ], [ %i.next, %body ]\n  %more = icmp ult i64 %i, %tensors\n  br i1 %more, label %body, label %done\n\
         body:",
        buffers.max(1),
        scalars.max(1)
    );
    host.line("%numel.at = getelementptr inbounds i64, ptr %numels, i64 %i");
    host.line("%numel = load i64, ptr %numel.at, align 8");
    host.line("%numelf = uitofp i64 %numel to double");
    for (k, &node) in pass.scalar_args.iter().enumerate() {
        let v = host.value(node)?;
        let f = host.def(&format!("fptrunc double {v} to float"));
        let at = host.def(&format!(
            "getelementptr inbounds float, ptr %scalars, i64 {k}"
        ));
        host.line(&format!("store float {f}, ptr {at}, align 4"));
    }
    for (buffer, array) in [(0, "%params"), (1, "%grads")] {
        let at = host.def(&format!("getelementptr inbounds ptr, ptr {array}, i64 %i"));
        let p = host.def(&format!("load ptr, ptr {at}, align 8"));
        let to = host.def(&format!(
            "getelementptr inbounds ptr, ptr %buffers, i64 {buffer}"
        ));
        host.line(&format!("store ptr {p}, ptr {to}, align 8"));
    }
    let at = host.def("getelementptr inbounds ptr, ptr %states, i64 %i");
    let state = host.def(&format!("load ptr, ptr {at}, align 8"));
    for slot in 0..slots {
        let offset = host.def(&format!("mul i64 %numel, {slot}"));
        let p = host.def(&format!(
            "getelementptr inbounds float, ptr {state}, i64 {offset}"
        ));
        let to = host.def(&format!(
            "getelementptr inbounds ptr, ptr %buffers, i64 {}",
            slot + 2
        ));
        host.line(&format!("store ptr {p}, ptr {to}, align 8"));
    }
    host.line(&format!(
        "call void @{FUNCTION}(ptr %buffers, ptr %scalars, ptr %accs, i64 0, i64 %numel)"
    ));
    host.line("%i.next = add i64 %i, 1");
    host.line("br label %head");
    host.body.push_str("done:\n  ret void\n}\n");

    // NAME_state_size and NAME_init.
    let _ = writeln!(
        host.body,
        "define i64 @{prefix}_state_size(i64 %numel) #0 {{\n  %bytes = mul i64 %numel, {}\n  ret i64 %bytes\n}}",
        4 * slots
    );
    let _ = writeln!(
        host.body,
        "define void @{prefix}_init(ptr %state, i64 %numel) #0 {{\nentry:\n  br label %head\nhead:\n  %j = phi i64 [ 0, %entry ], [ %j.next, %fill ]\n  %more = icmp ult i64 %j, %numel\n  br i1 %more, label %fill, label %done\nfill:"
    );
    for (slot, value) in fills.iter().enumerate() {
        let _ = writeln!(
            host.body,
            "  %at{slot}.off = mul i64 %numel, {slot}\n  %at{slot}.i = add i64 %at{slot}.off, %j\n  %at{slot} = getelementptr inbounds float, ptr %state, i64 %at{slot}.i\n  store float 0x{:016X}, ptr %at{slot}, align 4",
            f64::from(*value).to_bits()
        );
    }
    host.body
        .push_str("  %j.next = add i64 %j, 1\n  br label %head\ndone:\n  ret void\n}\n");
    for d in &host.declarations {
        let _ = writeln!(text, "declare {d}");
    }
    text.push_str(&host.body);
    Ok(Library {
        header: header(rule, &prefix, defaults),
        prefix,
        ir: text,
    })
}

/// The rule's name as a C identifier.
fn c_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The C header of the library.
fn header(rule: &Rule, prefix: &str, defaults: &[Option<f64>]) -> String {
    let guard = format!("{}_H", prefix.to_uppercase());
    let mut h = String::new();
    let _ = writeln!(
        h,
        "/* {prefix}: the optc rule `{}`, ahead of time (see docs/aot.md). */",
        rule.name
    );
    for line in &rule.doc {
        let _ = writeln!(h, "/* {} */", line.replace("*/", "* /"));
    }
    let _ = writeln!(
        h,
        "#ifndef {guard}\n#define {guard}\n\n#include <stddef.h>\n#include <stdint.h>\n"
    );
    let _ = writeln!(
        h,
        "/* Hyperparameters, in the order NAME_step takes them. */"
    );
    let _ = writeln!(h, "enum {{");
    for (k, hyper) in rule.hypers.iter().enumerate() {
        let _ = writeln!(
            h,
            "    {}_{} = {k},",
            prefix.to_uppercase(),
            c_name(&hyper.name).to_uppercase()
        );
    }
    let _ = writeln!(
        h,
        "    {}_HYPERS = {}\n}};\n",
        prefix.to_uppercase(),
        rule.hypers.len()
    );
    let _ = writeln!(
        h,
        "/* Their defaults (NaN: none, or a schedule of t, given in the comment). */"
    );
    let _ = writeln!(
        h,
        "static const double {prefix}_defaults[{}] = {{",
        rule.hypers.len().max(1)
    );
    for (hyper, default) in rule.hypers.iter().zip(defaults) {
        let text = hyper
            .default
            .as_ref()
            .map_or("none".to_string(), |d| d.text.clone());
        let kind = if hyper.kind == Kind::Bool {
            " (bool: 0 or 1)"
        } else {
            ""
        };
        match default {
            Some(v) => {
                let _ = writeln!(h, "    {v:e}, /* {}{kind}: {text} */", hyper.name);
            }
            None => {
                let _ = writeln!(
                    h,
                    "    __builtin_nan(\"\"), /* {}{kind}: {text} */",
                    hyper.name
                );
            }
        }
    }
    let slots: Vec<&str> = rule.states.iter().map(|s| s.name.as_str()).collect();
    let indent = " ".repeat("void _step(".len() + prefix.len());
    let _ = writeln!(
        h,
        "}};\n\n/* Bytes of state of a tensor of numel elements: slots {} of numel floats each. */\n\
         size_t {prefix}_state_size(size_t numel);\n\
         /* Sets a tensor's state to its initial value (before step 1). */\n\
         void {prefix}_init(float *state, size_t numel);\n\
         /* One step (t = 1, 2, ...) of every tensor, in place. */\n\
         void {prefix}_step(size_t tensors, float *const *params, const float *const *grads,\n\
         {indent}float *const *states, const size_t *numels, const double *hypers,\n\
         {indent}uint64_t t);\n\n#ifdef __cplusplus\n}}\n#endif\n#endif",
        if slots.is_empty() { "(none)".to_string() } else { slots.join(", ") }
    );
    h
}

/// Writes the group and tensor values of a step as f64 LLVM IR, with the
/// interpreter's semantics (`interpret::unary`/`binary` on f64).
struct Host<'r> {
    body: String,
    next: usize,
    rule: &'r Rule,
    /// Emitted nodes (per tensor, inside the loop).
    values: HashMap<Handle, String>,
    declarations: Vec<String>,
}

impl Host<'_> {
    fn line(&mut self, text: &str) {
        let _ = writeln!(self.body, "  {text}");
    }

    fn def(&mut self, rhs: &str) -> String {
        self.next += 1;
        let name = format!("%h{}", self.next);
        let _ = writeln!(self.body, "  {name} = {rhs}");
        name
    }

    fn call(&mut self, function: &str, args: &[&str]) -> String {
        let types = vec!["double"; args.len()].join(", ");
        let declaration = format!("double @{function}({types})");
        if !self.declarations.contains(&declaration) {
            self.declarations.push(declaration);
        }
        let args: Vec<String> = args.iter().map(|a| format!("double {a}")).collect();
        self.def(&format!("call double @{function}({})", args.join(", ")))
    }

    /// 1.0 where `flag` (an i1) holds, else 0.0.
    fn truth(&mut self, flag: &str) -> String {
        self.def(&format!("uitofp i1 {flag} to double"))
    }

    fn holds(&mut self, x: &str) -> String {
        self.def(&format!("fcmp une double {x}, 0.0"))
    }

    /// The value of node `h`, emitted once (children first).
    fn value(&mut self, h: Handle) -> Result<String, String> {
        if let Some(v) = self.values.get(&h) {
            return Ok(v.clone());
        }
        let node = *self.rule.graph.node(h);
        let mut args = Vec::new();
        for c in node.children() {
            args.push(self.value(c)?);
        }
        let v = match node {
            Node::Const(bits) => format!("0x{bits:016X}"),
            Node::Bool(b) => (if b { "1.0" } else { "0.0" }).to_string(),
            Node::Input(Input::Step, _) => "%tf".to_string(),
            Node::Input(Input::Numel, _) => "%numelf".to_string(),
            Node::Input(Input::Hyper(k), _) => {
                let at = self.def(&format!(
                    "getelementptr inbounds double, ptr %hypers, i64 {k}"
                ));
                self.def(&format!("load double, ptr {at}, align 8"))
            }
            Node::Input(..)
            | Node::Reduce(..)
            | Node::Gram(..)
            | Node::MatMul(..)
            | Node::Transpose(_)
            | Node::Unary(UnaryOp::Bf16, _) => {
                return Err(format!(
                    "`{}` has a per-tensor value the library cannot compute",
                    self.rule.name
                ))
            }
            Node::Unary(op, _) => self.unary(op, &args[0]),
            Node::Binary(op, _, _) => self.binary(op, &args[0], &args[1]),
            Node::Select(..) => {
                let c = self.holds(&args[0]);
                self.def(&format!(
                    "select i1 {c}, double {}, double {}",
                    args[1], args[2]
                ))
            }
            Node::Lerp(..) => {
                let (a, b, w) = (&args[0], &args[1], &args[2]);
                let d = self.def(&format!("fsub double {b}, {a}"));
                let p = self.def(&format!("fmul double {w}, {d}"));
                self.def(&format!("fadd double {a}, {p}"))
            }
        };
        self.values.insert(h, v.clone());
        Ok(v)
    }

    /// A unary operation on an f64 host value (`bf16` is refused by
    /// [`Self::value`] before it gets here, and left as it is).
    fn unary(&mut self, op: UnaryOp, x: &str) -> String {
        match op {
            UnaryOp::Bf16 => x.to_string(),
            UnaryOp::Neg => self.def(&format!("fneg double {x}")),
            UnaryOp::Not => {
                let zero = self.def(&format!("fcmp oeq double {x}, 0.0"));
                self.truth(&zero)
            }
            UnaryOp::Abs => self.call("llvm.fabs.f64", &[x]),
            UnaryOp::Sign => {
                let positive = self.def(&format!("fcmp ogt double {x}, 0.0"));
                let negative = self.def(&format!("fcmp olt double {x}, 0.0"));
                let nan = self.def(&format!("fcmp uno double {x}, {x}"));
                let r = self.def(&format!("select i1 {nan}, double {x}, double 0.0"));
                let r = self.def(&format!("select i1 {negative}, double -1.0, double {r}"));
                self.def(&format!("select i1 {positive}, double 1.0, double {r}"))
            }
            UnaryOp::Sqrt => self.call("llvm.sqrt.f64", &[x]),
            UnaryOp::Rsqrt => {
                let s = self.call("llvm.sqrt.f64", &[x]);
                self.def(&format!("fdiv double 1.0, {s}"))
            }
            UnaryOp::Exp => self.call("exp", &[x]),
            UnaryOp::Log => self.call("log", &[x]),
            UnaryOp::Tanh => self.call("tanh", &[x]),
            UnaryOp::Sigmoid => {
                let n = self.def(&format!("fneg double {x}"));
                let e = self.call("exp", &[&n]);
                let d = self.def(&format!("fadd double 1.0, {e}"));
                self.def(&format!("fdiv double 1.0, {d}"))
            }
            UnaryOp::Cos => self.call("cos", &[x]),
            UnaryOp::Cbrt => self.call("cbrt", &[x]),
            UnaryOp::Floor => self.call("llvm.floor.f64", &[x]),
        }
    }

    fn binary(&mut self, op: BinaryOp, a: &str, b: &str) -> String {
        let compare = |p: &str| format!("fcmp {p} double {a}, {b}");
        match op {
            BinaryOp::Add => self.def(&format!("fadd double {a}, {b}")),
            BinaryOp::Sub => self.def(&format!("fsub double {a}, {b}")),
            BinaryOp::Mul => self.def(&format!("fmul double {a}, {b}")),
            BinaryOp::Div => self.def(&format!("fdiv double {a}, {b}")),
            BinaryOp::Pow => self.call("pow", &[a, b]),
            BinaryOp::Min => self.call("llvm.minnum.f64", &[a, b]),
            BinaryOp::Max => self.call("llvm.maxnum.f64", &[a, b]),
            BinaryOp::And | BinaryOp::Or => {
                let x = self.holds(a);
                let y = self.holds(b);
                let name = if op == BinaryOp::And { "and" } else { "or" };
                let r = self.def(&format!("{name} i1 {x}, {y}"));
                self.truth(&r)
            }
            comparison => {
                let p = match comparison {
                    BinaryOp::Eq => "oeq",
                    BinaryOp::Ne => "une",
                    BinaryOp::Lt => "olt",
                    BinaryOp::Le => "ole",
                    BinaryOp::Gt => "ogt",
                    _ => "oge",
                };
                let r = self.def(&compare(p));
                self.truth(&r)
            }
        }
    }
}
