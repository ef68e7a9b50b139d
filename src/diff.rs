//! `optc diff`: finds an objective (in a file, or in the standard library)
//! and prints its loss and the symbolic gradient of each param, so a person
//! can read what `optc run` will train on.

use optc_compiler::objective::Objective;
use optc_compiler::{Origin, Program};

use crate::load::{self, Failure};

/// The word that names the standard library itself as the FILE of `optc diff`.
const STDLIB: &str = "stdlib";

pub fn diff(file: &str, objective: Option<&str>) -> Result<String, Failure> {
    let (program, candidates) = program(file)?;
    let name = match objective {
        Some(name) => name.to_string(),
        None => candidates.last().cloned().ok_or_else(|| {
            format!(
                "error: {file} defines no objective; name one with --objective (the stdlib has: {})",
                optc_stdlib::prelude().objectives().join(", ")
            )
        })?,
    };
    Ok(compile(&program, &name)?.describe())
}

/// The stdlib plus `file` when it is a path, and the objectives FILE names:
/// those of the file, the stdlib objective named, or none for `stdlib`.
fn program(file: &str) -> Result<(Program, Vec<String>), Failure> {
    let prelude = optc_stdlib::prelude();
    let is_path = std::path::Path::new(file).is_file();
    if !is_path && file == STDLIB {
        return Ok((prelude, Vec::new()));
    }
    if !is_path && prelude.objectives().contains(&file) {
        return Ok((prelude, vec![file.to_string()]));
    }
    let loaded = load::program(file)?;
    let names = loaded.file.map_or(Vec::new(), |id| {
        loaded
            .program
            .objectives_in(id)
            .into_iter()
            .map(String::from)
            .collect()
    });
    Ok((loaded.program, names))
}

/// Adds the objectives of `path` to `program`.
pub fn add_file(program: &mut Program, path: &str) -> Result<(), Failure> {
    let bytes = std::fs::read(path).map_err(|e| format!("error: cannot read {path}: {e}"))?;
    program
        .add_source(path, &bytes, Origin::User)
        .map(|_| ())
        .map_err(|d| load::render(program, &d))
}

/// Compiles objective `name` of `program`, diagnostics rendered.
pub fn compile(program: &Program, name: &str) -> Result<Objective, Failure> {
    program
        .compile_objective(name)
        .map_err(|d| load::render(program, &d))
}
