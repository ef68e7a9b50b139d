//! Turning command-line arguments into compiled rules and optimizers:
//! reading files (or naming stdlib optimizers), choosing the rule, binding
//! `--set` values, parameter groups (`--group`) and the backend
//! (`--backend`), and rendering diagnostics for the terminal.

use std::io::IsTerminal;
use std::sync::Arc;

use optc_compiler::diagnostics;
use optc_compiler::ir::{Rule, ScalarExpr};
use optc_compiler::{Diagnostic, Program};
use optc_runtime::{
    Backend, Elements, Group, GroupReductions, Optimizer, OptimizerBuilder, Scalars,
};

/// A user error, already rendered.
pub type Failure = String;

pub fn render(program: &Program, diagnostic: &Diagnostic) -> String {
    diagnostics::render(diagnostic, program.files(), color())
}

pub use optc_stdlib::load::Loaded;

/// Whether diagnostics on stderr are coloured.
fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// The stdlib plus `file` (a stdlib name or a path; see
/// [`optc_stdlib::load::program`]), its notes shown on stderr.
pub fn program(file: &str) -> Result<Loaded, Failure> {
    let loaded = optc_stdlib::load::program(file, color())?;
    for note in &loaded.notes {
        eprintln!("note: {note}");
    }
    Ok(loaded)
}

/// `file`'s optimizer `rule` (its last one without it), simplified exactly.
pub fn rule(file: &str, rule: Option<&str>) -> Result<(Program, Rule), Failure> {
    let loaded = program(file)?;
    let compiled = loaded.rule(rule, file, color())?;
    Ok((loaded.program, compiled))
}

/// How a command runs its rule: the backend and the parameter groups (the
/// options every command that steps a rule shares).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Execution {
    /// What runs the steps: `tiered` (Cranelift kernels from the first step,
    /// LLVM's full-width kernels swapped in once compiled; the default in
    /// builds with LLVM), `llvm`, `cranelift` (the default otherwise, where
    /// it supports the CPU), `reference` (the kernels' reference semantics)
    /// or `interp` (the interpreter, the semantics oracle). Results are the
    /// same bit for bit on the three compiled tiers.
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,
    /// A parameter group: tensors selected by name (`|`-separated names or
    /// globs with `*` and `?`) and their own settings, comma-separated
    /// `name=value` or `frozen`, on top of the --set values. A tensor belongs
    /// to the first group that selects it, else to the default group.
    /// Repeatable. Example: `--group '*.bias:weight_decay=0'`.
    #[arg(long = "group", value_name = "PATTERNS:SETTINGS")]
    pub groups: Vec<String>,
    /// What group-wide reductions (global-norm clipping, Prodigy, DoG) range
    /// over when there are several groups: each group's own tensors (as
    /// torch.optim applies a rule per param group) or every group's.
    #[arg(long, value_enum, default_value_t = Reductions::PerGroup)]
    pub group_reductions: Reductions,
    /// What group and tensor values (hyperparameter arithmetic, bias
    /// corrections, reduction results) are computed in: f64, as torch does,
    /// or f32, as optax does (to match optax's trajectories more closely).
    #[arg(long, value_enum, default_value_t = ScalarMode::F64)]
    pub scalars: ScalarMode,
}

/// `--scalars`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ScalarMode {
    #[default]
    F64,
    F32,
}

/// `--group-reductions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Reductions {
    #[default]
    PerGroup,
    Across,
}

/// The backend `--backend` names, or the fastest one here that runs `rule`.
pub fn backend(name: Option<&str>, rule: &Rule) -> Result<Backend, Failure> {
    match name {
        Some(name) => Backend::named(name).map_err(|e| format!("error: {e}")),
        None => Ok(Backend::fastest_for(rule)),
    }
}

/// An optimizer builder for `rule` with the `--set` values, `--group`s and
/// `--backend` of a command; `f64` runs the interpreter in f64 (`--f64`).
/// The caller adds tensors, threads and precision as it needs.
pub fn builder(
    program: &mut Program,
    rule: Rule,
    sets: &[String],
    execution: &Execution,
    f64_elements: bool,
) -> Result<OptimizerBuilder, Failure> {
    let backend = match (f64_elements, execution.backend.as_deref()) {
        (false, name) => backend(name, &rule)?,
        (true, None | Some("interp")) => Backend::interpreter(Elements::F64),
        (true, Some(other)) => {
            return Err(format!(
                "error: --f64 runs the interpreter in f64; it cannot run on the `{other}` backend"
            ))
        }
    };
    let overrides = set_values(program, &rule, sets)?;
    let mut groups = Vec::new();
    for text in &execution.groups {
        groups.push(group(program, &rule, text)?);
    }
    let mut builder = Optimizer::builder(Arc::new(rule))
        .overrides(overrides)
        .backend(backend)
        .scalars(match execution.scalars {
            ScalarMode::F64 => Scalars::F64,
            ScalarMode::F32 => Scalars::F32,
        })
        .group_reductions(match execution.group_reductions {
            Reductions::PerGroup => GroupReductions::PerGroup,
            Reductions::Across => GroupReductions::AcrossGroups,
        });
    for group in groups {
        builder = builder.group(group);
    }
    Ok(builder)
}

/// The `--set NAME=VALUE` assignments of a command, checked against `rule`.
pub fn set_values(
    program: &mut Program,
    rule: &Rule,
    sets: &[String],
) -> Result<Vec<(String, ScalarExpr)>, Failure> {
    let mut pairs = Vec::new();
    for set in sets {
        let (name, value) = set
            .split_once('=')
            .ok_or_else(|| format!("error: --set expects NAME=VALUE, got `{set}`"))?;
        pairs.push((name.trim(), value));
    }
    assignments(program, rule, &pairs, "--set")
}

/// Builds the optimizer, with a CLI error.
pub fn build(builder: OptimizerBuilder) -> Result<Optimizer, Failure> {
    builder.build().map_err(|e| format!("error: {e}"))
}

/// One `--group PATTERNS:SETTINGS`; the group is named by its patterns.
fn group(program: &mut Program, rule: &Rule, text: &str) -> Result<Group, Failure> {
    let bad = |why: &str| {
        format!(
            "error: --group `{text}`: {why} (expected PATTERNS:SETTINGS, e.g. '*.bias:weight_decay=0' or 'embed.*:frozen')"
        )
    };
    let (patterns, settings) = text.split_once(':').ok_or_else(|| bad("no `:`"))?;
    let patterns: Vec<&str> = patterns.split('|').map(str::trim).collect();
    if patterns.iter().any(|p| p.is_empty()) {
        return Err(bad("an empty pattern"));
    }
    let mut group = Group::new(patterns.join("|")).tensors(patterns.iter().copied());
    let mut pairs = Vec::new();
    for item in split_top_level(settings) {
        let item = item.trim();
        if item == "frozen" {
            group = group.frozen();
            continue;
        }
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| bad(&format!("`{item}` is not NAME=VALUE or `frozen`")))?;
        pairs.push((name.trim(), value));
    }
    for (name, value) in assignments(program, rule, &pairs, "--group")? {
        group = group.set(name, value);
    }
    Ok(group)
}

/// `text` split at the commas outside parentheses (schedules take arguments).
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// The groups and their tensors, for a command's header (empty with one group).
pub fn describe_groups(optimizer: &Optimizer) -> String {
    let Some(layout) = optimizer.layout() else {
        return String::new();
    };
    if layout.groups.len() == 1 {
        return String::new();
    }
    let mut out = String::from("parameter groups:\n");
    for (index, name) in layout.groups.iter().enumerate() {
        let tensors: Vec<&str> = layout
            .tensors
            .iter()
            .filter(|t| t.group == index)
            .map(|t| t.name.as_str())
            .collect();
        let shown = if tensors.is_empty() {
            "(no tensors)".to_string()
        } else {
            tensors.join(", ")
        };
        out.push_str(&format!("  {name}: {shown}\n"));
    }
    out
}

/// Hyperparameter names other libraries use, and the rule's own names they
/// stand for (the first that the rule has): torch's `lr`, optax's and
/// torch's `beta1`/`beta2` against the stdlib's `b1`/`b2`, and the other way.
const ALIASES: &[(&str, &[&str])] = &[
    ("lr", &["learning_rate"]),
    ("beta1", &["b1"]),
    ("beta2", &["b2"]),
    ("b1", &["beta1"]),
    ("b2", &["beta2"]),
];

/// `name=value` settings (`--set`, a `--group`'s) compiled for `rule`: other
/// libraries' names map to the rule's (`lr`, and `betas=(b1, b2)` as torch
/// writes it), a name given twice is an error, and Python's `True`/`False`
/// get a hint.
fn assignments(
    program: &mut Program,
    rule: &Rule,
    pairs: &[(&str, &str)],
    origin: &str,
) -> Result<Vec<(String, ScalarExpr)>, Failure> {
    let has = |name: &str| rule.hyper_index(name).is_some();
    let mut expanded: Vec<(String, String)> = Vec::new();
    for &(name, value) in pairs {
        if name == "betas" && !has("betas") {
            let pair = value
                .trim()
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .and_then(|v| v.split_once(','));
            let names = ["b1", "b2"]
                .iter()
                .zip(["beta1", "beta2"])
                .map(|(&short, long)| [short, long].into_iter().find(|n| has(n)))
                .collect::<Option<Vec<_>>>();
            match (pair, names) {
                (Some((first, second)), Some(names)) => {
                    expanded.push((names[0].to_string(), first.trim().to_string()));
                    expanded.push((names[1].to_string(), second.trim().to_string()));
                }
                _ => {
                    return Err(format!(
                        "error: {origin} betas: write `betas=(B1, B2)` for a rule with b1 and b2 (`{}` has: {})",
                        rule.name,
                        hyper_names(rule)
                    ))
                }
            }
            continue;
        }
        let name = match ALIASES
            .iter()
            .find(|(alias, _)| *alias == name && !has(name))
        {
            Some((_, targets)) => targets.iter().find(|t| has(t)).copied().unwrap_or(name),
            None => name,
        };
        expanded.push((name.to_string(), value.to_string()));
    }
    let mut compiled = Vec::new();
    for (index, (name, value)) in expanded.iter().enumerate() {
        if let Some((_, earlier)) = expanded[..index].iter().find(|(n, _)| n == name) {
            return Err(format!(
                "error: {origin} sets `{name}` twice (to {} and to {}); give it once",
                earlier.trim(),
                value.trim()
            ));
        }
        if let Some(python) = ["True", "False"].iter().find(|b| value.trim() == **b) {
            return Err(format!(
                "error: {origin} {name}={python}: booleans are `true` and `false` (write `{name}={}`)",
                python.to_lowercase()
            ));
        }
        let value = program
            .compile_scalar(&format!("{origin} {name}"), value)
            .map_err(|d| render(program, &d))?;
        compiled.push((name.clone(), value));
    }
    Ok(compiled)
}

/// The rule's hyperparameter names, for messages.
fn hyper_names(rule: &Rule) -> String {
    let names: Vec<&str> = rule.hypers.iter().map(|h| h.name.as_str()).collect();
    names.join(", ")
}
