//! Turning command-line arguments into compiled rules: reading files (or
//! naming stdlib optimizers), choosing the rule, binding `--set` values, and
//! rendering diagnostics for the terminal.

use std::io::IsTerminal;
use std::sync::Arc;

use optc_compiler::diagnostics;
use optc_compiler::interpret::Real;
use optc_compiler::ir::{Rule, ScalarExpr};
use optc_compiler::simplify::{simplify_keeping_state, Tier};
use optc_compiler::{Diagnostic, FileId, Origin, Program};
use optc_runtime::Optimizer;

/// A user error, already rendered.
pub type Failure = String;

pub fn render(program: &Program, diagnostic: &Diagnostic) -> String {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    diagnostics::render(diagnostic, program.files(), color)
}

/// What a FILE argument designates: a program (the stdlib plus the file,
/// if it is one) and the optimizers it names.
pub struct Loaded {
    pub program: Program,
    /// The user's file, when the argument was a path.
    pub file: Option<FileId>,
    /// The optimizers it designates: those of the file, or the stdlib rule named.
    pub names: Vec<String>,
}

/// The stdlib plus `file` (a path, or the name of a stdlib optimizer).
pub fn program(file: &str) -> Result<Loaded, Failure> {
    let mut program = optc_stdlib::prelude();
    match std::fs::read(file) {
        Ok(bytes) => match program.add_source(file, &bytes, Origin::User) {
            Ok(id) => {
                let names = program
                    .optimizers_in(id)
                    .into_iter()
                    .map(String::from)
                    .collect();
                Ok(Loaded {
                    program,
                    file: Some(id),
                    names,
                })
            }
            Err(diagnostic) => Err(render(&program, &diagnostic)),
        },
        Err(error) => {
            let is_stdlib_name = program.optimizers().contains(&file);
            if is_stdlib_name && !file.contains(['/', '.']) {
                Ok(Loaded {
                    program,
                    file: None,
                    names: vec![file.to_string()],
                })
            } else {
                Err(format!("error: cannot read {file}: {error}"))
            }
        }
    }
}

pub fn rule(file: &str, rule: Option<&str>) -> Result<(Program, Rule), Failure> {
    let Loaded { program, names, .. } = program(file)?;
    let name = match rule {
        Some(name) => name.to_string(),
        None => names
            .last()
            .cloned()
            .ok_or_else(|| format!("error: {file} defines no optimizer"))?,
    };
    let compiled = program.compile(&name).map_err(|d| render(&program, &d))?;
    // Every rule the CLI runs goes through the exact simplifier: bit-identical
    // results, fewer operations (`x * 1`, constant folding, ...); its state
    // is kept even where `p` never reads it.
    Ok((program, simplify_keeping_state(&compiled, Tier::Exact)))
}

/// An optimizer for `rule` with `--set name=value` overrides applied, with
/// elements of type `F` (f32, or f64 for checking).
pub fn optimizer<F: Real>(
    program: &mut Program,
    rule: Rule,
    sets: &[String],
) -> Result<Optimizer<F>, Failure> {
    let overrides = overrides(program, sets)?;
    Optimizer::new(Arc::new(rule), overrides).map_err(|e| format!("error: {e}"))
}

/// The `--set name=value` arguments, compiled.
pub fn overrides(
    program: &mut Program,
    sets: &[String],
) -> Result<Vec<(String, ScalarExpr)>, Failure> {
    let mut overrides = Vec::new();
    for set in sets {
        let Some((name, value)) = set.split_once('=') else {
            return Err(format!("error: --set expects NAME=VALUE, got `{set}`"));
        };
        let name = name.trim();
        let value = program
            .compile_scalar(&format!("--set {name}"), value)
            .map_err(|d| render(program, &d))?;
        overrides.push((name.to_string(), value));
    }
    Ok(overrides)
}
