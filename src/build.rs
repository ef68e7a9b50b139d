//! `optc build`: a rule as a shared library with a C ABI and its header,
//! compiled ahead of time by the LLVM tier (see docs/aot.md).

use std::path::{Path, PathBuf};

use crate::load::{self, Failure};

/// Writes `file`'s rule as the library `out` and the header beside it
/// (`header`, default: `out`'s directory, `RULE.h`); says what it wrote.
pub fn build(
    file: &str,
    rule: Option<&str>,
    sets: &[String],
    out: &str,
    header: Option<&str>,
) -> Result<String, Failure> {
    let (mut program, rule) = load::rule(file, rule)?;
    let overrides = load::set_values(&mut program, &rule, sets)?;
    // The header's defaults: the --set values, else the rule's; constants only.
    let defaults: Vec<Option<f64>> = rule
        .hypers
        .iter()
        .map(|hyper| {
            let expr = overrides
                .iter()
                .rev()
                .find(|(name, _)| *name == hyper.name)
                .map(|(_, e)| e)
                .or(hyper.default.as_ref())?;
            expr.graph.node(expr.output).constant_value()
        })
        .collect();
    let library = Path::new(out);
    let header = header.map(PathBuf::from).unwrap_or_else(|| {
        let name = format!("{}.h", rule.name);
        library.parent().unwrap_or(Path::new("")).join(name)
    });
    build_with_llvm(&rule, &defaults, library, &header)?;
    let name = &rule.name;
    Ok(format!(
        "wrote {} and {} ({name}_state_size, {name}_init, {name}_step)\n",
        library.display(),
        header.display(),
    ))
}

#[cfg(feature = "llvm")]
fn build_with_llvm(
    rule: &optc_compiler::ir::Rule,
    defaults: &[Option<f64>],
    library: &Path,
    header: &Path,
) -> Result<(), Failure> {
    let llvm = optc_llvm::Llvm::new().map_err(|e| format!("error: {e}"))?;
    llvm.build_library(rule, defaults, library, header)
        .map(drop)
        .map_err(|e| format!("error: {e}"))
}

#[cfg(not(feature = "llvm"))]
fn build_with_llvm(
    _: &optc_compiler::ir::Rule,
    _: &[Option<f64>],
    _: &Path,
    _: &Path,
) -> Result<(), Failure> {
    Err(
        "error: optc build needs the LLVM tier: rebuild optc with `--features llvm` \
         (LLVM 19: apt-get install llvm-19-dev libpolly-19-dev libzstd-dev)"
            .into(),
    )
}
