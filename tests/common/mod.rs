//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use optc_compiler::{diagnostics, Origin};

/// Compiles `bytes` as a user file named `name` next to the stdlib; returns
/// the rendered diagnostics, without colour (empty when it compiled).
pub fn compile_errors(name: &str, bytes: &[u8]) -> String {
    let mut program = optc_stdlib::prelude();
    let errors = match program.add_source(name, bytes, Origin::User) {
        Ok(file) => program.check_file(file),
        Err(diagnostic) => vec![diagnostic],
    };
    errors
        .iter()
        .map(|d| diagnostics::render(d, program.files(), false))
        .collect()
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs the `optc` binary; returns (exit code, stdout, stderr).
pub fn optc(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("the optc binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Compares `actual` with the snapshot file, or rewrites it when
/// `UPDATE_EXPECT=1` (as expect-test does).
pub fn assert_snapshot(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(path, actual).expect("snapshot is writable");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        expected == actual,
        "snapshot {} differs (run with UPDATE_EXPECT=1 to update)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// `optc replay adam --trace tests/golden/adam.json --compare` plus `extra` arguments.
pub fn replay_adam(extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "replay",
        "adam",
        "--trace",
        "tests/golden/adam.json",
        "--compare",
    ];
    args.extend_from_slice(extra);
    optc(&args)
}

/// The figure after "max error" in `optc replay --compare` output.
pub fn max_error(stdout: &str) -> Option<f64> {
    stdout
        .split("max error ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
