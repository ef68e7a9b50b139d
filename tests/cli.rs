//! The `optc` command line: exit codes, outputs and messages.

mod common;

use common::optc;

/// The backend commands use when none is named, and every backend of this
/// build (the `llvm` feature adds the LLVM tier and the tiered pair, and
/// `cubecl` the GPU, last).
const DEFAULT_BACKEND: &str = if cfg!(feature = "llvm") {
    "tiered"
} else {
    "cranelift"
};
const BACKENDS: &str = match (cfg!(feature = "llvm"), cfg!(feature = "cubecl")) {
    (true, true) => "tiered, llvm, cranelift, reference, staged, interp, cubecl",
    (true, false) => "tiered, llvm, cranelift, reference, staged, interp",
    (false, true) => "cranelift, reference, staged, interp, cubecl",
    (false, false) => "cranelift, reference, staged, interp",
};

#[test]
fn check_accepts_the_stdlib() {
    let files: Vec<String> = optc_stdlib::FILES
        .iter()
        .map(|(name, _)| format!("stdlib/{name}"))
        .collect();
    let mut args = vec!["check"];
    args.extend(files.iter().map(String::as_str));
    let (code, stdout, stderr) = optc(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("ok:"), "{stdout}");
}

#[test]
fn check_reports_errors_with_exit_code_1() {
    let (code, _, stderr) = optc(&["check", "tests/diagnostics/unknown_name.opt"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown name `learning_rat`"), "{stderr}");
    assert!(stderr.contains("did you mean `learning_rate`?"), "{stderr}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, stderr) = optc(&["check", "no/such/file.opt"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read no/such/file.opt"), "{stderr}");
}

#[test]
fn show_prints_signature_state_memory_and_ir() {
    let (code, stdout, stderr) = optc(&["show", "adam", "--ir"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("optimizer adam\n"), "{stdout}");
    assert!(stdout.contains("  b1 = 0.9\n"), "{stdout}");
    assert!(
        stdout.contains("  mu: elem = 0  (one number per element)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("memory per parameter: 8 B of state in f32, 4 B in bf16 (2 slots); with the parameter and its gradient, 16 B in f32, 8 B in bf16"),
        "{stdout}"
    );
    assert!(
        stdout.contains("out p = v"),
        "the typed IR follows: {stdout}"
    );
}

#[test]
fn replay_writes_the_trace_schema_with_params() {
    let out = std::env::temp_dir().join(format!("optc-cli-replay-{}.json", std::process::id()));
    let (code, _, stderr) = optc(&[
        "replay",
        "stdlib/adam.opt",
        "--trace",
        "tests/golden/adam.json",
        "--set",
        "learning_rate=0.001",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).ok();
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo_path("tests/golden/adam.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(written["peer"], golden["peer"], "other fields are kept");
    let tensors = written["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 2);
    let params = tensors[1]["params"].as_array().unwrap();
    assert_eq!(params.len(), 10, "one row per step");
    assert_eq!(params[9].as_array().unwrap().len(), 40, "5x8 elements");
}

#[test]
fn replay_compare_reports_the_error() {
    let (code, stdout, stderr) = optc(&[
        "replay",
        "adam",
        "--trace",
        "tests/golden/adam.json",
        "--compare",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "adam ({DEFAULT_BACKEND} backend): 10 steps, 2 tensors: max error "
        )),
        "{stdout}"
    );
}

#[test]
fn replay_in_f64_checking_mode() {
    let error = |extra: &[&str]| -> f64 {
        let (code, stdout, stderr) = common::replay_adam(extra);
        assert_eq!(code, 0, "{stderr}");
        common::max_error(&stdout).expect("an error figure")
    };
    let (f32_error, f64_error) = (error(&[]), error(&["--f64"]));
    assert_eq!(
        f32_error, 0.0,
        "stdlib adam reproduces torch's f32 arithmetic exactly"
    );
    assert!(
        f64_error > 0.0 && f64_error < 1e-6,
        "f64 differs from torch's f32 only by rounding: {f64_error}"
    );
}

#[test]
fn replay_rejects_bad_sets_and_traces() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "learning_rte=0.1"],
            "unknown hyperparameter `learning_rte`",
        ),
        (&["--set", "learning_rate"], "--set expects NAME=VALUE"),
        (&["--set", "learning_rate=true"], "is a number, not a bool"),
        (&["--set", "learning_rate=g"], "unknown name `g`"),
        (
            &["--set", "learning_rate=sum(1)"],
            "must be one scalar per step",
        ),
    ];
    for (extra, expected) in cases {
        let (code, _, stderr) = common::replay_adam(extra);
        assert_eq!(code, 1, "{extra:?}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    let (code, _, stderr) = optc(&["replay", "adam", "--trace", "Cargo.toml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not a valid trace"), "{stderr}");
}

#[test]
fn schedules_can_be_set_on_the_command_line() {
    let (code, stdout, stderr) = optc(&[
        "replay",
        "adam",
        "--trace",
        "tests/golden/adam.json",
        "--compare",
        "--set",
        "learning_rate=warmup_cosine_decay(0.0, 1e-3, 3, 10)",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("max error"), "{stdout}");
}

#[test]
fn every_command_has_help_with_an_example() {
    for command in ["check", "show", "replay", "train", "bench", "list"] {
        let (code, stdout, _) = optc(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(stdout.contains("Example"), "{command} --help: {stdout}");
    }
}

#[test]
fn list_names_the_stdlib() {
    let (code, stdout, _) = optc(&["list"]);
    assert_eq!(code, 0);
    for name in ["adam", "adamw", "lion", "lamb", "prodigy"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} listed:\n{stdout}"
        );
    }
}

#[test]
fn train_runs_the_default_task_and_learns() {
    let (code, stdout, stderr) = optc(&["train", "--steps", "100", "--every", "50"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("adam on breast_cancer (569 examples, 30 features, 2 classes)"),
        "{stdout}"
    );
    let losses: Vec<f64> = stdout
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 3, "steps 0, 50 and 100");
    assert!(losses[2] < losses[1] && losses[1] < losses[0], "{losses:?}");
    let (code, _, stderr) = optc(&["train", "--task", "mnist"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown task `mnist`"), "{stderr}");
}

#[test]
fn bench_reports_step_floor_and_compile_time() {
    let (code, stdout, stderr) = optc(&[
        "bench",
        "lamb",
        "--numel",
        "40000",
        "--tensors",
        "3",
        "--threads",
        "2",
        "--steps",
        "3",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["rule"], "lamb");
    assert_eq!(
        (
            report["numel"].as_u64(),
            report["tensors"].as_u64(),
            report["threads"].as_u64()
        ),
        (Some(40000), Some(3), Some(2))
    );
    assert_eq!(
        report["passes"], 2,
        "LAMB's trust ratio needs a second pass"
    );
    for key in [
        "ns_per_param",
        "floor_ns_per_param",
        "compile_ms",
        "gb_per_s",
    ] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {report}"
        );
    }
    let (code, _, stderr) = optc(&["bench", "adam", "--tensors", "0"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--tensors at least 1"), "{stderr}");
}

#[test]
fn show_plan_names_passes_and_bytes() {
    let expected = [
        (
            "adam",
            "pass 0: loads [p, g, mu, nu], stores [p, mu, nu]",
            "total: 1 pass(es), 28 B/element",
        ),
        (
            "lion",
            "pass 0: loads [p, g, mu], stores [p, mu]",
            "total: 1 pass(es), 20 B/element",
        ),
        (
            "sgd",
            "pass 0: loads [p, g], stores [p]",
            "total: 1 pass(es), 12 B/element",
        ),
        (
            "lamb",
            "pass 1: loads [p, g, mu, nu], stores [p, mu, nu]",
            "total: 2 pass(es), 44 B/element",
        ),
        (
            "novograd",
            "pass 0: loads [g], stores []",
            "total: 2 pass(es), 24 B/element",
        ),
    ];
    for (rule, pass, total) in expected {
        let (code, stdout, stderr) = optc(&["show", rule, "--plan"]);
        assert_eq!(code, 0, "{stderr}");
        let steady = stdout.split("plan (first step").next().unwrap();
        assert!(
            steady.contains(pass) && steady.contains(total),
            "{rule}:\n{stdout}"
        );
    }
}

#[test]
fn check_covers_functions_no_optimizer_calls() {
    let path = std::env::temp_dir().join(format!("optc-fns-{}.opt", std::process::id()));
    std::fs::write(
        &path,
        "fn gate(c, a, b) { if c { a } else { b } }\nfn twice(x, k = 2) { let y = k * x; y }\n",
    )
    .unwrap();
    let (code, stdout, stderr) = optc(&["check", path.to_str().unwrap()]);
    assert_eq!(
        (code, stdout.as_str()),
        (0, "ok: 1 file(s) checked\n"),
        "{stderr}"
    );
    std::fs::write(&path, "fn typo(x) { x * learnin_rate }\n").unwrap();
    let (code, _, stderr) = optc(&["check", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown name `learnin_rate`"), "{stderr}");
}

#[test]
fn train_runs_on_the_compiled_kernels_by_default_and_on_any_backend() {
    let (code, help, _) = optc(&["train", "--help"]);
    assert_eq!(code, 0);
    assert!(
        help.contains("--backend <NAME>")
            && help.contains("`cranelift` (the default otherwise, where")
            && help.contains("`tiered` (Cranelift kernels from the first step"),
        "{help}"
    );
    let losses = |backend: Option<&str>| {
        let mut args = vec!["train", "--steps", "40"];
        if let Some(backend) = backend {
            args.extend(["--backend", backend]);
        }
        let (code, stdout, stderr) = optc(&args);
        assert_eq!(code, 0, "{stderr}");
        let header = stdout.lines().next().unwrap().to_string();
        let rows: Vec<String> = stdout.lines().skip(2).map(String::from).collect();
        (header, rows)
    };
    let (default, rows) = losses(None);
    assert!(
        default.ends_with(&format!("full batch, {DEFAULT_BACKEND} backend")),
        "{default}"
    );
    for backend in ["cranelift", "reference", "interp"]
        .into_iter()
        .chain(cfg!(feature = "llvm").then_some("llvm"))
    {
        let (header, other) = losses(Some(backend));
        assert!(header.ends_with(&format!("{backend} backend")), "{header}");
        assert_eq!(other, rows, "the same losses on {backend}");
    }
    let (code, _, stderr) = optc(&["train", "--backend", "gpu"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "unknown backend `gpu` (this build has: {BACKENDS})"
        )),
        "{stderr}"
    );
}

#[test]
fn groups_on_the_command_line() {
    let run = |args: &[&str]| {
        let mut all = vec![
            "train", "adamw", "--hidden", "4", "--steps", "20", "--every", "20",
        ];
        all.extend_from_slice(args);
        optc(&all)
    };
    let (code, stdout, stderr) = run(&["--group", "*.bias:weight_decay=0,learning_rate=0.01"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("parameter groups:\n  default: hidden.weight, output.weight\n  *.bias: hidden.bias, output.bias\n"),
        "{stdout}"
    );
    let (_, plain, _) = run(&[]);
    let last = |s: &str| s.lines().last().unwrap().to_string();
    assert_ne!(
        last(&stdout),
        last(&plain),
        "the group's values change the run"
    );
    let (code, frozen, stderr) = run(&["--group", "hidden.*|output.*:frozen"]);
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<&str> = frozen
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(
        rows[0].split_whitespace().nth(1),
        rows[1].split_whitespace().nth(1),
        "frozen: {frozen}"
    );
    for (group, message) in [
        ("bias", "expected PATTERNS:SETTINGS"),
        ("*.bias:weight_decay", "`weight_decay` is not NAME=VALUE or `frozen`"),
        ("nothing.*:weight_decay=0", "group `nothing.*` (nothing.*) selects none of the tensors (hidden.weight, hidden.bias, output.weight, output.bias)"),
        ("*.bias:weight_decy=0", "unknown hyperparameter `weight_decy`"),
        ("|x:frozen", "an empty pattern"),
    ] {
        let (code, _, stderr) = run(&["--group", group]);
        assert_eq!(code, 1, "{group}");
        assert!(stderr.contains(message), "{group}: {stderr}");
    }
}

#[test]
fn commands_refuse_backends_that_cannot_do_what_they_ask() {
    let (code, _, stderr) = optc(&[
        "replay",
        "adam",
        "--trace",
        "tests/golden/adam.json",
        "--f64",
        "--backend",
        "cranelift",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--f64 runs the interpreter in f64"),
        "{stderr}"
    );
    let (code, _, stderr) = optc(&["bench", "adam", "--numel", "1000", "--backend", "interp"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("the interpreter has none"), "{stderr}");
    let (code, _, stderr) = optc(&[
        "bench",
        "adam",
        "--numel",
        "1000",
        "--backend",
        "interp",
        "--dtype",
        "bf16",
    ]);
    assert_eq!(code, 1, "{stderr}");
    let (code, stdout, stderr) = optc(&[
        "bench",
        "adam",
        "--numel",
        "10000",
        "--steps",
        "2",
        "--backend",
        "reference",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"backend\":\"reference\""), "{stdout}");
}

/// Runs `optc` with writes limited to 1 KiB per file (`ulimit -f 2`, its
/// signal ignored, so a write past it fails with EFBIG as on a full disk),
/// in `dir`.
fn optc_with_a_full_disk(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 2; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_optc"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("sh runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_write_that_fails_leaves_the_old_file_and_no_temporary() {
    let dir = std::env::temp_dir().join(format!("optc-full-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let golden = common::repo_path("tests/golden/adam.json");
    let golden = golden.to_str().unwrap();
    let script = dir.join("search.txt");
    std::fs::write(
        &script,
        "set population 4\nset threads 1\ntasks quadratic\nload adam\nrun 8\ncheckpoint run.ckpt\n",
    )
    .unwrap();
    for (output, args) in [
        (
            "out.json",
            vec!["replay", "adam", "--trace", golden, "--out", "out.json"],
        ),
        (
            "hd.opt",
            vec!["derive", "hypergrad", "adam", "-o", "hd.opt"],
        ),
        (
            "loss.svg",
            vec![
                "run",
                "adam",
                "--objective",
                "rosenbrock",
                "--steps",
                "50",
                "--plot",
                "loss.svg",
            ],
        ),
        ("run.ckpt", vec!["search", "--script", "search.txt"]),
    ] {
        std::fs::write(dir.join(output), b"the previous contents").unwrap();
        let (code, stderr) = optc_with_a_full_disk(&dir, &args);
        assert_eq!(code, 1, "{output}: {stderr}");
        assert!(
            stderr.contains("cannot write") && stderr.contains(output),
            "{output}: {stderr}"
        );
        assert_eq!(
            std::fs::read(dir.join(output)).unwrap(),
            b"the previous contents",
            "{output}"
        );
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{output}: temporary files left: {left:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn non_finite_numbers_round_trip_through_traces() {
    let dir = std::env::temp_dir().join(format!("optc-nonfinite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.json");
    std::fs::write(
        &trace,
        r#"{"tensors": [{"p0": [1.0, "NaN", "-inf", 0.5], "grads": [[1.0, 1.0, 1.0, null]]}]}"#,
    )
    .unwrap();
    let out = dir.join("out.json");
    let (code, _, stderr) = optc(&[
        "replay",
        "sgd",
        "--trace",
        trace.to_str().unwrap(),
        "--set",
        "learning_rate=1e39",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let params = &json["tensors"][0]["params"][0];
    assert_eq!(
        params,
        &serde_json::json!(["-inf", "NaN", "-inf", "NaN"]),
        "{text}"
    );
    // optc reads its own output back.
    let (code, stdout, stderr) = optc(&[
        "replay",
        "sgd",
        "--trace",
        out.to_str().unwrap(),
        "--set",
        "learning_rate=1e39",
        "--compare",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("max error"), "{stdout}");
    std::fs::write(
        &trace,
        r#"{"tensors": [{"p0": ["many"], "grads": [[1.0]]}]}"#,
    )
    .unwrap();
    let (code, _, stderr) = optc(&["replay", "sgd", "--trace", trace.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("`many` is not a number"), "{stderr}");
    std::fs::write(
        &trace,
        r#"{"tensors": [{"shape": [9223372036854775809, 2], "p0": [1.0, 2.0], "grads": [[1.0, 1.0]]}]}"#,
    )
    .unwrap();
    let (code, _, stderr) = optc(&["replay", "sgd", "--trace", trace.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("does not hold 2 elements"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn names_resolve_explicitly() {
    let dir = std::env::temp_dir().join(format!("optc-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A user's `adam` replaces the stdlib's for the user, with a note, but the
    // stdlib's `adamw` (which uses `adam`) keeps the stdlib's.
    let mine = dir.join("mine.opt");
    std::fs::write(&mine, "optimizer adam(learning_rate = 1.0) { p -= learning_rate * sign(g); }\noptimizer wrapped() { use adamw; }\n").unwrap();
    let mut program = optc_stdlib::prelude();
    program
        .add_source(
            "mine.opt",
            &std::fs::read(&mine).unwrap(),
            optc_compiler::Origin::User,
        )
        .unwrap();
    let stdlib = optc_stdlib::prelude().compile("adamw").unwrap();
    assert_eq!(
        program.compile("adamw").unwrap().to_string(),
        stdlib.to_string()
    );
    assert_eq!(
        program.compile("adam").unwrap().hypers.len(),
        1,
        "the user's adam"
    );
    let (code, _, stderr) = optc(&["check", mine.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("defines `adam`, which replaces the standard library's `adam`"),
        "{stderr}"
    );
    // A bare stdlib name is the stdlib's even beside a file of that name.
    std::fs::write(dir.join("lion"), "optimizer not_lion() { p -= g; }\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(["show", "lion"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(stdout.contains("optimizer lion\n"), "{stdout}");
    assert!(stderr.contains("write ./lion for it"), "{stderr}");
    // Unknown names get the nearest stdlib optimizers; stdlib function files say what they are.
    let (code, _, stderr) = optc(&["show", "adamz"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("did you mean `adam`, `adamw`, `adamax`?"),
        "{stderr}"
    );
    let (code, _, stderr) = optc(&["show", "schedules"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("`schedules` is a standard-library file of functions, not an optimizer"),
        "{stderr}"
    );
    assert!(stderr.contains("warmup_cosine_decay"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn set_values_take_other_libraries_names_and_refuse_mistakes() {
    let train = |sets: &[&str]| {
        let mut args = vec!["train", "adam", "--steps", "5", "--every", "5"];
        for set in sets {
            args.extend(["--set", set]);
        }
        optc(&args)
    };
    let last = |s: &str| s.lines().last().unwrap_or("").to_string();
    let (_, own, _) = train(&["learning_rate=0.01", "b1=0.8", "b2=0.99"]);
    let (code, aliased, stderr) = train(&["lr=0.01", "betas=(0.8, 0.99)"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        last(&aliased),
        last(&own),
        "lr and betas are learning_rate, b1 and b2"
    );
    for (sets, message) in [
        (vec!["learning_rate=1", "learning_rate=2"], "sets `learning_rate` twice (to 1 and to 2)"),
        (vec!["b1=True"], "booleans are `true` and `false` (write `b1=true`)"),
        (vec!["betas=0.9"], "write `betas=(B1, B2)`"),
        (vec!["momentum=0.9"], "unknown hyperparameter `momentum` (this rule has: learning_rate, b1, b2, eps, eps_root)"),
    ] {
        let (code, _, stderr) = train(&sets);
        assert_eq!(code, 1, "{sets:?}");
        assert!(stderr.contains(message), "{sets:?}: {stderr}");
    }
}

#[test]
fn replay_compare_fails_above_a_tolerance() {
    let (code, stdout, _) = common::replay_adam(&["--tolerance", "1e-5"]);
    assert_eq!(code, 0, "{stdout}");
    let (code, _, stderr) = optc(&[
        "replay",
        "adam",
        "--trace",
        "tests/golden/adamw.json",
        "--compare",
        "--tolerance",
        "1e-5",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("exceeds the tolerance 1e-5"), "{stderr}");
    let (code, _, stderr) = optc(&[
        "replay",
        "adam",
        "--trace",
        "tests/golden/adam.json",
        "--tolerance",
        "1",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--tolerance applies to --compare"),
        "{stderr}"
    );
}

/// (With the tier, tests/aot.rs builds libraries.)
#[cfg(not(feature = "llvm"))]
#[test]
fn build_without_the_llvm_tier_says_how_to_get_it() {
    let out = std::env::temp_dir().join(format!("optc-cli-build-{}.so", std::process::id()));
    let (code, _, stderr) = optc(&["build", "adam", "-o", out.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("optc build needs the LLVM tier"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn bench_times_matrix_rules_on_their_shapes() {
    let bench = |rule: &str, shape: &str| {
        let (code, stdout, stderr) =
            optc(&["bench", rule, "--shape", shape, "--steps", "1", "--json"]);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let adafactor = bench("adafactor", "64x128");
    assert_eq!(adafactor["backend"], "staged");
    assert_eq!(adafactor["shape"], "64x128");
    assert_eq!(adafactor["numel"], 64 * 128);
    assert_eq!(adafactor["passes"], 3);
    assert_eq!(adafactor["bytes_per_param"], 28);
    assert!(adafactor["products_ns_per_param"].is_null());
    let muon = bench("muon", "16x32");
    assert!(
        muon["products_ns_per_param"].as_f64().unwrap() > 0.0,
        "{muon}"
    );
    assert!(muon["ratio_to_products"].as_f64().unwrap() > 0.0, "{muon}");
    for (shape, message) in [("4x0", "has a zero dimension"), ("4by4", "is not a shape")] {
        let (code, _, stderr) = optc(&["bench", "adam", "--shape", shape]);
        assert_eq!(code, 2, "{shape}");
        assert!(stderr.contains(message), "{shape}: {stderr}");
    }
}

/// Without a Vulkan driver the GPU backend is a clear error naming the fix,
/// not a panic (the loader finds no driver under a missing ICD file).
#[cfg(feature = "cubecl")]
#[test]
fn the_gpu_backend_without_a_driver_names_the_fix() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(["train", "adam", "--backend", "cubecl", "--steps", "2"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .output()
        .expect("the optc binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("backend `cubecl` cannot run here"),
        "{stderr}"
    );
    assert!(
        stderr.contains("apt-get install mesa-vulkan-drivers libvulkan1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
