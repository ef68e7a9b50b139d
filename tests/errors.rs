//! What `optc` says to the mistakes users make and the hostile inputs of
//! past reports: each command of the table below, its exit status and its
//! stderr, in one snapshot (`tests/errors.snap`; `UPDATE_EXPECT=1`
//! rewrites it). Every one must be a clear error with exit status 1, never a
//! panic, an abort or a hang. Machine-dependent figures (the memory a
//! machine has available) are replaced by `N` before comparing, and what
//! depends on the build's features (the LLVM tier's backends, and the
//! default backend they bring) by what a build without them says.

mod common;

use common::{assert_snapshot, optc, repo_path};

/// Commands, one per line; `TMP` is replaced by a scratch directory.
const COMMANDS: &[&str] = &[
    "bench adam --numel 100000000000",
    "bench adam --numel 18446744073709551615",
    "bench adam --numel 1000 --threads 100000",
    "bench adam --numel 1000 --threads 0",
    "bench adam --numel 10 --tensors 0",
    "train adam --hidden 1000000000",
    "run adam --objective rosenbrock --numel 100000000000",
    "train sgd_momentum --set nesterov=True",
    "train adam --set betas=0.9",
    "train adam --set learning_rate=1 --set learning_rate=2",
    "train adam --set momentum=0.9",
    "train adam --backend gpu",
    "train adamw --group bias",
    "train adamw --group nothing.*:weight_decay=0",
    "show adamz",
    "show schedules",
    "replay adam --trace tests/golden/adamw.json --compare --tolerance 1e-5",
    "replay adam --trace tests/golden/adam.json --tolerance 1e-5",
    "replay adam --trace tests/golden/adam.json --f64 --backend cranelift",
    "replay sgd --trace TMP/overflow.json",
    "replay sgd --trace TMP/words.json",
    "check TMP/builtin.opt",
    "check TMP/states.opt",
];

fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("optc-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("overflow.json"),
        r#"{"tensors": [{"shape": [9223372036854775809, 2], "p0": [1.0, 2.0], "grads": [[1.0, 1.0]]}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("words.json"),
        r#"{"tensors": [{"p0": ["many"], "grads": [[1.0]]}]}"#,
    )
    .unwrap();
    std::fs::write(dir.join("builtin.opt"), "fn sum(x) { x }\n").unwrap();
    let states: String = (0..300).map(|i| format!("state s{i} = 0; ")).collect();
    std::fs::write(
        dir.join("states.opt"),
        format!("optimizer hoard() {{ {states}p -= g; }}\n"),
    )
    .unwrap();
    dir
}

/// `text` with the figures that depend on the machine replaced by `N`, and
/// the backends of a build with LLVM or the GPU by those of one without.
fn normalised(text: &str, dir: &str) -> String {
    let text = text
        .replace(dir, "TMP")
        .replace("tiered, llvm, cranelift", "cranelift")
        .replace("staged, interp, cubecl", "staged, interp")
        .replace("(tiered backend)", "(cranelift backend)");
    let mut out = String::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        let line: Vec<String> = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let before_has = i >= 1 && words[i - 1] == "has";
                if before_has && w.parse::<f64>().is_ok() {
                    "N".to_string()
                } else {
                    w.to_string()
                }
            })
            .collect();
        out.push_str(&line.join(" "));
        out.push('\n');
    }
    out
}

#[test]
fn every_mistake_gets_a_clear_error() {
    let dir = scratch();
    let dir_text = dir.to_str().unwrap().to_string();
    let mut snapshot = String::new();
    for command in COMMANDS {
        let args: Vec<String> = command
            .split_whitespace()
            .map(|a| a.replace("TMP", &dir_text))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = optc(&args);
        assert_eq!(code, 1, "`optc {command}` exits 1: {stderr}");
        assert!(
            !stderr.contains("panicked"),
            "`optc {command}` panicked: {stderr}"
        );
        snapshot.push_str(&format!(
            "$ optc {command}\n{}\n",
            normalised(&stderr, &dir_text).trim_end()
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_snapshot(&repo_path("tests/errors.snap"), &snapshot);
}
