//! Turning what a user names into a program and a compiled rule, for every
//! front end (the CLI, the Python package): the name of a stdlib optimizer,
//! a path to a `.opt` file, or (for front ends that take text) `.opt`
//! source. Notes that do not stop the load (a file that replaces a stdlib
//! item) are returned, for the front end to show as it shows warnings.

use optc_compiler::diagnostics;
use optc_compiler::ir::Rule;
use optc_compiler::simplify::{simplify_keeping_state, Tier};
use optc_compiler::{FileId, Origin, Program};

/// What a name, path or source designates: a program (the stdlib plus the
/// user's file, if there is one) and the optimizers it names.
pub struct Loaded {
    pub program: Program,
    /// The user's file, when the argument was a path or source.
    pub file: Option<FileId>,
    /// The optimizers it designates: those of the file, or the stdlib rule named.
    pub names: Vec<String>,
    /// What the user should know (a stdlib item replaced, a file not read).
    pub notes: Vec<String>,
}

/// The stdlib plus `file`: the name of a stdlib optimizer (or objective),
/// or a path. A bare name of a stdlib item is the stdlib's, even where a
/// file of that name exists (write `./adam` for the file; a note says so).
/// Errors are rendered (in colour when `color`).
pub fn program(file: &str, color: bool) -> Result<Loaded, String> {
    let program = crate::prelude();
    let bare = !file.contains(['/', '.']);
    if bare && program.item(file).is_some() {
        let mut notes = Vec::new();
        if std::path::Path::new(file).exists() {
            notes.push(format!(
                "`{file}` is the standard library's; the file named {file} here is not read (write ./{file} for it)"
            ));
        }
        return Ok(Loaded {
            program,
            file: None,
            names: vec![file.to_string()],
            notes,
        });
    }
    match std::fs::read(file) {
        Ok(bytes) => source(file, &bytes, color),
        Err(error) if bare => Err(unknown_name(&program, file, &error)),
        Err(error) => Err(format!("error: cannot read {file}: {error}")),
    }
}

/// The stdlib plus `.opt` source `text`, named `origin` in diagnostics.
pub fn source(origin: &str, text: &[u8], color: bool) -> Result<Loaded, String> {
    let mut program = crate::prelude();
    let id = program
        .add_source(origin, text, Origin::User)
        .map_err(|d| diagnostics::render(&d, program.files(), color))?;
    let notes = program
        .replaced_in(id)
        .into_iter()
        .map(|replaced| {
            format!(
                "{origin} defines `{replaced}`, which replaces the standard library's `{replaced}` where {origin} and the command line name it (the standard library's own rules keep theirs)"
            )
        })
        .collect();
    let names = program
        .optimizers_in(id)
        .into_iter()
        .map(String::from)
        .collect();
    Ok(Loaded {
        program,
        file: Some(id),
        names,
        notes,
    })
}

impl Loaded {
    /// Compiles optimizer `rule` (the last one named, without it) through
    /// the exact simplifier: bit-identical results, fewer operations; its
    /// state is kept even where `p` never reads it. `what` names the input
    /// in errors.
    pub fn rule(&self, rule: Option<&str>, what: &str, color: bool) -> Result<Rule, String> {
        let name = match rule {
            Some(name) => name.to_string(),
            None => self
                .names
                .last()
                .cloned()
                .ok_or_else(|| format!("error: {what} defines no optimizer"))?,
        };
        let compiled = self
            .program
            .compile(&name)
            .map_err(|d| diagnostics::render(&d, self.program.files(), color))?;
        Ok(simplify_keeping_state(&compiled, Tier::Exact))
    }
}

/// A bare name that is neither a stdlib item nor a readable file: the
/// nearest stdlib optimizers, or what the stdlib file of that name holds.
fn unknown_name(program: &Program, name: &str, error: &std::io::Error) -> String {
    let file_name = format!("{name}.opt");
    if let Some((_, text)) = crate::FILES.iter().find(|(f, _)| *f == file_name) {
        let mut scratch = Program::new();
        let items: Vec<String> = scratch
            .add_source(&file_name, text.as_bytes(), Origin::Prelude)
            .map(|id| scratch.items_in(id).into_iter().map(String::from).collect())
            .unwrap_or_default();
        return format!(
            "error: `{name}` is a standard-library file of functions, not an optimizer; use its functions in a rule or a --set value ({})",
            items.join(", ")
        );
    }
    let mut near: Vec<(usize, &str)> = program
        .optimizers()
        .into_iter()
        .map(|candidate| (diagnostics::edit_distance(name, candidate), candidate))
        .filter(|&(d, candidate)| d <= (name.len().max(candidate.len()) / 3).max(1))
        .collect();
    near.sort();
    let suggestions: Vec<&str> = near.iter().take(3).map(|(_, n)| *n).collect();
    let hint = if suggestions.is_empty() {
        "`optc list` shows them".to_string()
    } else {
        format!(
            "did you mean {}? (`optc list` shows them all)",
            suggestions
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!("error: no standard-library optimizer or file named `{name}` ({error}); {hint}")
}
