//! `optc search --script`: the REPL's commands end to end on the two
//! cheapest proxy tasks (so baselines tune in well under a second): a
//! search runs, its programs are shown, scored, simplified, compared,
//! plotted and saved as `.opt` that loads again; a checkpoint resumes to
//! the same search; bad commands are clear errors with exit status 1; and
//! the raw program the Lion paper's search found simplifies and prunes to
//! Lion.

mod common;

use std::path::PathBuf;

use common::optc;

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("optc-search-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `lines` as a script; returns (exit code, stdout, stderr).
fn script(dir: &std::path::Path, lines: &[String]) -> (i32, String, String) {
    let path = dir.join("script.txt");
    std::fs::write(&path, lines.join("\n")).unwrap();
    optc(&["search", "--script", path.to_str().unwrap()])
}

fn prologue() -> Vec<String> {
    [
        "set population 16",
        "set seed 5",
        "set threads 2",
        "tasks quadratic rosenbrock",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn a_scripted_search_runs_shows_saves_and_resumes() {
    let dir = scratch("session");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let mut lines = prologue();
    lines.extend([
        "load sgd".to_string(),
        "run 64".into(),
        "top 3".into(),
        "show 0".into(),
        "eval 0".into(),
        "eval 0 rosenbrock".into(),
        "eval 0 --held-out".into(),
        "compare 0 0".into(),
        format!("plot 0 {} rosenbrock", path("curves.svg")),
        format!("checkpoint {}", path("search.ckpt")),
        "run 32".into(),
        "top 5".into(),
        format!("save 0 {} --raw", path("raw.opt")),
        format!("resume {}", path("search.ckpt")),
        "run 32".into(),
        "top 5".into(),
    ]);
    let (code, stdout, stderr) = script(&dir, &lines);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert!(stdout.contains("> load sgd\nwarm start `sgd`"), "{stdout}");
    assert!(stdout.contains("done: 64 cycles"), "{stdout}");
    assert!(stdout.contains("cache hit rate"), "{stdout}");
    assert!(stdout.contains("lineage: `sgd` (0)"), "{stdout}");
    assert!(stdout.contains("quadratic"), "{stdout}");
    // The two runs of 32 cycles after the checkpoint (one straight on, one
    // after resuming) end with the same best program and the same top 5.
    let reports: Vec<&str> = stdout.split("> run 32\n").skip(1).collect();
    assert_eq!(reports.len(), 2);
    // The text after `marker` up to the next echoed command.
    let section = |report: &str, marker: &str| {
        let after = report.split(marker).nth(1).unwrap_or("");
        let until = after.split("\n> ").next().unwrap_or("");
        until.trim_end().to_string()
    };
    let best = |report: &str| section(report, "best so far:\n");
    let top = |report: &str| section(report, "> top 5\n");
    assert_eq!(best(reports[0]), best(reports[1]));
    assert_eq!(top(reports[0]), top(reports[1]));
    assert!(top(reports[0]).lines().count() >= 3, "{}", top(reports[0]));
    let svg = std::fs::read_to_string(path("curves.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("sgd_momentum") && svg.contains("adamw"));
    let saved = std::fs::read_to_string(path("raw.opt")).unwrap();
    assert!(saved.starts_with("// Found by `optc search`"), "{saved}");
    assert!(saved.contains("optimizer raw("), "{saved}");
    // The held-out verdict: every held-out task, in the output and in the
    // saved file's header, against the baselines tuned on it.
    for task in [
        "wine",
        "mlp_long",
        "mlp_64",
        "minibatch_seed1",
        "minibatch_seed2",
        "conv_seed1",
        "char_transformer",
    ] {
        assert!(saved.contains(&format!("//   {task} ")), "{task}: {saved}");
        assert!(stdout.contains(&format!("{task}: ")), "{task}: {stdout}");
    }
    assert!(
        stdout.contains("held-out verdict: better than tuned AdamW on "),
        "{stdout}"
    );
    assert!(saved.contains("// held-out verdict: "), "{saved}");
    let (code, _, stderr) = optc(&["check", &path("raw.opt")]);
    assert_eq!(code, 0, "the saved rule loads: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_commands_are_clear_errors() {
    let dir = scratch("errors");
    for (command, expected) in [
        ("frobnicate", "unknown command `frobnicate`"),
        ("run 10", "no search yet: `load FILE|NAME` starts one"),
        (
            "set population zero",
            "`population` takes a whole number from 1 to 100000",
        ),
        ("set colour blue", "unknown setting `colour`"),
        (
            "set shift maybe",
            "`shift` takes `on` or `off`, not `maybe`",
        ),
        ("set backend gpu", "unknown backend `gpu` (this build has: "),
        ("tasks nonsense", "unknown task `nonsense`"),
        ("tasks digits", "choose at least one cheap task"),
        ("load no/such/file.opt", "cannot read no/such/file.opt"),
        ("load dog", "cannot be a warm start"),
        (
            "resume no/such/checkpoint",
            "cannot read no/such/checkpoint",
        ),
        ("show 1", "no search yet"),
        ("save", "usage: save ID FILE [--raw]"),
    ] {
        let (code, stdout, stderr) = script(&dir, &[command.to_string()]);
        assert_eq!(code, 1, "`{command}`: {stdout}");
        assert!(stderr.contains(expected), "`{command}`: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let mut lines = prologue();
    lines.extend(["load sgd", "show 999"].map(String::from));
    let (code, stdout, stderr) = script(&dir, &lines);
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains("no program 999"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_raw_lion_program_simplifies_and_prunes_to_lion() {
    let dir = scratch("lion");
    let mut lines = prologue();
    lines.extend(["load examples/lion_raw.opt", "simplify 0"].map(String::from));
    let (code, stdout, stderr) = script(&dir, &lines);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    let simplified = stdout.split("> simplify 0\n").nth(1).unwrap();
    println!("{simplified}");
    // The dead `m` slot and its cosh are gone, m / sqrt(m * m) is sign(m),
    // the two interpolations of v are one; one state slot remains.
    let rule = simplified
        .split("optimizer simplified(")
        .nth(1)
        .unwrap()
        .split("\n}")
        .next()
        .unwrap();
    assert_eq!(rule.matches("state ").count(), 1, "{rule}");
    assert!(rule.contains("sign(lerp("), "{rule}");
    assert!(!rule.contains("exp("), "{rule}");
    assert!(!rule.contains("sqrt("), "{rule}");
    assert!(simplified.contains("pruning (tolerance"), "{simplified}");
    assert!(simplified.contains("optimizer pruned("), "{simplified}");
}

#[test]
fn the_search_trains_candidates_on_the_backend_it_is_given() {
    let dir = scratch("backend");
    let mut lines = prologue();
    lines.extend(["set backend reference", "set", "load sgd", "run 8"].map(String::from));
    let (code, stdout, stderr) = script(&dir, &lines);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert!(
        stdout.contains("backend = reference (applies at the next `load`)"),
        "{stdout}"
    );
    assert!(stdout.contains("\nbackend reference\n"), "{stdout}");
    assert!(stdout.contains("done: 8 cycles"), "{stdout}");
    let (code, _, stderr) = optc(&["search", "--backend", "nope", "--script", "x"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown backend `nope`"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_line_that_is_not_utf8_is_skipped_and_the_session_goes_on() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_optc"))
        .arg("search")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"set seed 3\n\xff\xfe not text\nset\nquit\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("a line that is not UTF-8 text was skipped"),
        "{stderr}"
    );
    assert!(
        stdout.contains("\nseed 3\n"),
        "the commands after it ran: {stdout}"
    );
}
