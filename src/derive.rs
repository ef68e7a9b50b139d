//! `optc derive` and `optc show --adjoint`: rules derived from a rule by
//! differentiation (`optc_compiler::derive`, which simplifies them with the
//! exact tier, keeping every state slot), written back as readable `.opt`
//! source that `optc` (and people) can read.

use optc_compiler::derive;
use optc_compiler::emit::emit;
use optc_compiler::Origin;

use crate::load::{self, Failure};

/// The hypergradient variant of a rule as `.opt` source; written to `out`
/// when given (then the text returned says so), else returned.
pub fn hypergrad(
    file: &str,
    rule: Option<&str>,
    wrt: &str,
    hypergrad_lr: f64,
    form: derive::Form,
    out: Option<&str>,
) -> Result<String, Failure> {
    let (program, base) = load::rule(file, rule)?;
    let derived = derive::hypergradient(&base, wrt, hypergrad_lr, form)
        .map_err(|message| format!("error: {message}"))?;
    let source = emit(&derived, &program);
    // The file must compile on its own next to the stdlib, as users will load it.
    let mut check = optc_stdlib::prelude();
    let id = check
        .add_source("derived.opt", source.as_bytes(), Origin::User)
        .map_err(|d| {
            format!(
                "internal error: the derived rule does not parse:\n{}",
                load::render(&check, &d)
            )
        })?;
    if check.optimizers_in(id).is_empty() {
        return Err("internal error: the derived rule has no optimizer".into());
    }
    match out {
        Some(path) => {
            optc_runtime::files::write_atomically(std::path::Path::new(path), source.as_bytes())
                .map_err(|e| format!("error: cannot write {path}: {e}"))?;
            Ok(format!(
                "wrote {} ({wrt} adapted by hypergradient descent) to {path}\n",
                derived.name
            ))
        }
        None => Ok(source),
    }
}

/// The adjoint rule of a step as `.opt` source, with its buffer layout.
pub fn adjoint(file: &str, rule: Option<&str>) -> Result<String, Failure> {
    let (program, base) = load::rule(file, rule)?;
    let adjoint = derive::adjoint(&base);
    let layout: Vec<String> = adjoint
        .rule
        .states
        .iter()
        .enumerate()
        .map(|(slot, state)| format!("{slot}: {} ({})", state.name, state.shape))
        .collect();
    Ok(format!(
        "{}\n// state slots, in order: {}\n",
        emit(&adjoint.rule, &program),
        layout.join(", ")
    ))
}
