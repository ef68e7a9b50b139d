//! The subcommands of `optc`, one function each.

use optc_compiler::ir::{Input, Kind, Node, Rule, Shape};
use optc_compiler::plan::Plan;
use optc_runtime::trace::{self, Trace};
use optc_tasks::{Dataset, Mlp, SoftmaxRegression, Task};

use crate::load::{self, Execution, Failure};

/// Diagnostics `optc check` prints per file; the rest are counted.
const MAX_DIAGNOSTICS: usize = 20;

pub fn check(files: &[String]) -> Result<String, Failure> {
    let mut failures = String::new();
    let mut checked = 0;
    for file in files {
        match load::program(file) {
            Ok(loaded) => {
                let names: Vec<&str> = loaded.names.iter().map(String::as_str).collect();
                let errors = match loaded.file {
                    Some(file) => loaded.program.check_file(file),
                    None => loaded.program.check(&names),
                };
                checked += 1;
                for diagnostic in errors.iter().take(MAX_DIAGNOSTICS) {
                    failures.push_str(&load::render(&loaded.program, diagnostic));
                }
                if errors.len() > MAX_DIAGNOSTICS {
                    failures.push_str(&format!(
                        "error: {file}: {} more errors not shown (the first {MAX_DIAGNOSTICS} are above)\n",
                        errors.len() - MAX_DIAGNOSTICS
                    ));
                }
            }
            Err(failure) => failures.push_str(&failure),
        }
    }
    if failures.is_empty() {
        Ok(format!("ok: {checked} file(s) checked\n"))
    } else {
        Err(failures)
    }
}

pub fn show(file: &str, rule: Option<&str>, ir: bool, plan: bool) -> Result<String, Failure> {
    let (_, rule) = load::rule(file, rule)?;
    let mut out = signature(&rule);
    if ir {
        out.push_str(&format!("\n{rule}"));
    }
    if let (true, Some(why)) = (plan, optc_compiler::plan::unsupported(&rule)) {
        out.push_str(&format!("\nno pass plan: {why}\n"));
    } else if plan {
        out.push_str(&format!(
            "\nplan (every step after the first):\n{}",
            Plan::new(&rule, false).describe(&rule)
        ));
        out.push_str(&format!(
            "plan (first step: state from its initialisers):\n{}",
            Plan::new(&rule, true).describe(&rule)
        ));
    }
    Ok(out)
}

/// The optimizer's doc, hyperparameters and state, as `optc show` prints them.
fn signature(rule: &Rule) -> String {
    let mut out = String::new();
    for line in &rule.doc {
        out.push_str(&format!("/// {line}\n"));
    }
    out.push_str(&format!("optimizer {}\n", rule.name));
    out.push_str("hyperparameters:\n");
    for hyper in &rule.hypers {
        let value = hyper
            .default
            .as_ref()
            .map_or("(required)".to_string(), |d| d.text.clone());
        let kind = if hyper.kind == Kind::Bool {
            " (bool)"
        } else {
            ""
        };
        out.push_str(&format!("  {} = {value}{kind}\n", hyper.name));
    }
    out.push_str("state:\n");
    if rule.states.is_empty() {
        out.push_str("  (none)\n");
    }
    for slot in &rule.states {
        let init = match rule.graph.node(slot.init) {
            Node::Const(bits) => f64::from_bits(*bits).to_string(),
            Node::Input(Input::Param, _) => "p on the first step".to_string(),
            Node::Input(Input::Grad, _) => "g on the first step".to_string(),
            _ => "computed on the first step".to_string(),
        };
        let per = match slot.shape {
            Shape::Elem => "one number per element",
            Shape::Rows => "one number per row",
            Shape::Cols => "one number per column",
            Shape::Gram => "a gram matrix per tensor",
            Shape::Tensor => "one scalar per tensor",
            Shape::Group => "one scalar per group",
        };
        out.push_str(&format!(
            "  {}: {} = {init}  ({per})\n",
            slot.name, slot.shape
        ));
    }
    let words = rule.elem_state_slots();
    out.push_str(&format!(
        "memory per parameter: {} B of state in f32, {} B in bf16 ({words} slot{}); \
         with the parameter and its gradient, {} B in f32, {} B in bf16\n",
        4 * words,
        2 * words,
        if words == 1 { "" } else { "s" },
        4 * (words + 2),
        2 * (words + 2),
    ));
    let axis_slots = |shape: Shape| rule.states.iter().filter(|s| s.shape == shape).count();
    let (rows, cols) = (axis_slots(Shape::Rows), axis_slots(Shape::Cols));
    if rows + cols > 0 {
        out.push_str(&format!(
            "  and per matrix of m rows and n columns, {} B in f32 ({rows} number{} per row, \
             {cols} per column; a vector of n elements is 1 x n): O(m + n), not O(m n)\n",
            axis_bytes(rows, cols),
            if rows == 1 { "" } else { "s" },
        ));
    }
    out
}

/// `4 (r m + c n)` in words, for `r` per-row and `c` per-column f32 slots.
fn axis_bytes(rows: usize, cols: usize) -> String {
    match (rows, cols) {
        (0, c) => format!("{} n", 4 * c),
        (r, 0) => format!("{} m", 4 * r),
        (r, c) => format!("{} m + {} n", 4 * r, 4 * c),
    }
}

/// What `optc replay` was asked to do.
pub struct ReplaySettings<'a> {
    pub file: &'a str,
    pub trace: &'a str,
    pub rule: Option<&'a str>,
    pub sets: &'a [String],
    pub execution: &'a Execution,
    pub out: Option<&'a str>,
    pub compare: bool,
    /// With `compare`: fail (exit 1) when the error exceeds this.
    pub tolerance: Option<f64>,
    pub f64_elements: bool,
}

pub fn replay(settings: &ReplaySettings<'_>) -> Result<String, Failure> {
    let trace_path = settings.trace;
    if settings.tolerance.is_some() && !settings.compare {
        return Err("error: --tolerance applies to --compare".into());
    }
    if let Some(tolerance) = settings.tolerance.filter(|t| t.is_nan() || *t < 0.0) {
        return Err(format!(
            "error: --tolerance takes a number >= 0, not {tolerance}"
        ));
    }
    let (mut program, rule) = load::rule(settings.file, settings.rule)?;
    let name = rule.name.clone();
    let text = std::fs::read_to_string(trace_path)
        .map_err(|e| format!("error: cannot read {trace_path}: {e}"))?;
    let reference = Trace::from_json(&text).map_err(|e| format!("error: {trace_path}: {e}"))?;
    let tensors = reference
        .shaped_tensors()
        .map_err(|e| format!("error: {trace_path}: {e}"))?;
    let builder = load::builder(
        &mut program,
        rule,
        settings.sets,
        settings.execution,
        settings.f64_elements,
    )?
    .shaped_tensors(tensors);
    let mut optimizer = load::build(builder)?;
    let result = trace::replay(&mut optimizer, &reference)
        .map_err(|e| format!("error: {trace_path}: {e}"))?;
    let (out, compare) = (settings.out, settings.compare);
    let mut report = String::new();
    if compare {
        let comparison =
            trace::compare(&result, &reference).map_err(|e| format!("error: {trace_path}: {e}"))?;
        let (step, tensor, element) = comparison.worst;
        report = load::describe_groups(&optimizer);
        report += &format!(
            "{} ({} backend): {} steps, {} tensors: max error {:.3e} (|ours - ref| / max(|ref|, 1)), max abs {:.3e}, worst at step {}, tensor {tensor}, element {element}\n",
            name,
            optimizer.backend(),
            reference.steps(),
            reference.tensors.len(),
            comparison.max_err,
            comparison.max_abs,
            step + 1,
        );
        if let Some(tolerance) = settings.tolerance {
            if comparison.max_err.is_nan() || comparison.max_err > tolerance {
                return Err(format!(
                    "{report}error: the max error {:.3e} exceeds the tolerance {tolerance:e}",
                    comparison.max_err
                ));
            }
        }
    }
    match out {
        Some(path) => {
            optc_runtime::files::write_atomically(
                std::path::Path::new(path),
                result.to_json().as_bytes(),
            )
            .map_err(|e| format!("error: cannot write {path}: {e}"))?;
            Ok(report)
        }
        None if !compare => Ok(result.to_json() + "\n"),
        None => Ok(report),
    }
}

/// What `optc train` was asked to do.
pub struct TrainSettings<'a> {
    pub file: &'a str,
    pub rule: Option<&'a str>,
    pub task: &'a str,
    pub hidden: usize,
    pub steps: usize,
    pub every: usize,
    pub sets: &'a [String],
    pub execution: &'a Execution,
}

pub fn train(settings: &TrainSettings<'_>) -> Result<String, Failure> {
    let data = Dataset::builtin(settings.task).map_err(|e| format!("error: {e}"))?;
    let (mut program, rule) = load::rule(settings.file, settings.rule)?;
    let name = rule.name.clone();
    // The model's parameters, before they are allocated: with their
    // gradients (f32, and f64 while summed), the hidden activations of an
    // example, and the rule's state.
    let width = data.features.first().map_or(0, Vec::len);
    let parameters = if settings.hidden == 0 {
        (width + 1).checked_mul(data.classes)
    } else {
        let first = settings.hidden.checked_mul(width + 1);
        let second = data.classes.checked_mul(settings.hidden.saturating_add(1));
        first.zip(second).and_then(|(a, b)| a.checked_add(b))
    };
    let per_parameter = 16 + 4 * rule.elem_state_slots();
    optc_runtime::memory::ensure(
        parameters.and_then(|n| optc_runtime::memory::bytes_of(n, per_parameter)),
        &format!("a model with {} hidden units", settings.hidden),
    )
    .map_err(|e| format!("error: {e} (use a smaller --hidden)"))?;
    let task: Box<dyn Task> = if settings.hidden == 0 {
        Box::new(SoftmaxRegression::new(data))
    } else {
        Box::new(Mlp {
            data,
            hidden: settings.hidden,
        })
    };
    let tensors: Vec<(String, usize)> = task
        .tensor_names()
        .into_iter()
        .zip(task.initial_params().iter().map(Vec::len))
        .collect();
    let builder = load::builder(&mut program, rule, settings.sets, settings.execution, false)?
        .tensors(tensors);
    let mut optimizer = load::build(builder)?;
    let log = optc_tasks::train(&*task, &mut optimizer, settings.steps, settings.every)
        .map_err(|e| format!("error: {e}"))?;
    let data = task.data();
    let mut out = format!(
        "{name} on {} ({} examples, {} features, {} classes), {}, full batch, {} backend\n{}{:>6}  {:>10}  {:>8}\n",
        data.name,
        data.features.len(),
        data.features.first().map_or(0, Vec::len),
        data.classes,
        task.describe(),
        optimizer.backend(),
        load::describe_groups(&optimizer),
        "step",
        "loss",
        "accuracy"
    );
    for line in &log {
        out.push_str(&format!(
            "{:>6}  {:>10.6}  {:>7.2}%\n",
            line.step,
            line.loss,
            100.0 * line.accuracy
        ));
    }
    Ok(out)
}

pub fn bench(settings: &crate::bench::Settings<'_>) -> Result<String, Failure> {
    crate::bench::run(settings)
}

pub fn list() -> Result<String, Failure> {
    let program = optc_stdlib::prelude();
    let mut out = String::new();
    for name in program.optimizers() {
        let summary = program
            .compile(name)
            .ok()
            .and_then(|rule| rule.doc.first().cloned())
            .unwrap_or_default();
        out.push_str(&format!("{name:<28} {summary}\n"));
    }
    Ok(out)
}
