//! One fuzz target per entry point that reads input a user (or a damaged
//! file) controls: `.opt` sources through the whole compiler, `--set`
//! values, trace JSON, runtime checkpoints, search checkpoints and search
//! scripts. A target may return errors freely; it must never panic, hang or
//! abort. Each has seed inputs (the real formats) and a dictionary of tokens
//! the mutator splices in.

use std::path::PathBuf;
use std::sync::Arc;

use optc_compiler::interpret::{self, StepInputs};
use optc_compiler::plan::Plan;
use optc_compiler::simplify::{simplify, Tier};
use optc_compiler::{derive, emit, Origin};
use optc_runtime::trace::{self, Trace};
use optc_runtime::{Backend, Elements, Optimizer};
use optc_search::checkpoint;
use optc_search::evolve::{EvolutionConfig, SearchState};
use optc_search::fitness::{Fitness, Score};
use optc_search::program::Candidate;
use optc_search::Evolution;

pub struct Target {
    pub name: &'static str,
    pub summary: &'static str,
    pub seeds: fn() -> Vec<Vec<u8>>,
    pub dictionary: &'static [&'static str],
    pub run: fn(&[u8]),
    /// Whether the target can run here (what it needs is present).
    pub ready: fn() -> Result<(), String>,
}

fn always() -> Result<(), String> {
    Ok(())
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "opt",
        summary: "an .opt source: parse, check, compile, simplify, plan, emit, adjoint, one interpreted step",
        seeds: opt_seeds,
        dictionary: OPT_TOKENS,
        run: opt,
        ready: always,
    },
    Target {
        name: "set",
        summary: "a --set value: compiled as a scalar program and evaluated at a few steps",
        seeds: set_seeds,
        dictionary: OPT_TOKENS,
        run: set,
        ready: always,
    },
    Target {
        name: "trace",
        summary: "trace JSON: parsed, validated and (when small) replayed",
        seeds: trace_seeds,
        dictionary: JSON_TOKENS,
        run: trace_json,
        ready: always,
    },
    Target {
        name: "checkpoint",
        summary: "a runtime checkpoint file: loaded into a fresh optimizer, which then steps",
        seeds: checkpoint_seeds,
        dictionary: CHECKPOINT_TOKENS,
        run: runtime_checkpoint,
        ready: always,
    },
    Target {
        name: "search-checkpoint",
        summary: "a search checkpoint file: loaded, resumed and run a few cycles",
        seeds: search_checkpoint_seeds,
        dictionary: &["\0", "\u{ff}", "population", "history", "candidate"],
        run: search_checkpoint,
        ready: always,
    },
    Target {
        name: "search-script",
        summary: "an `optc search --script` file, run by the optc binary (OPTC, else target/release/optc)",
        seeds: script_seeds,
        dictionary: SCRIPT_TOKENS,
        run: search_script,
        ready: || {
            let binary = optc_binary();
            binary
                .is_file()
                .then_some(())
                .ok_or(format!("no optc binary at {} (build it, or set OPTC)", binary.display()))
        },
    },
];

const OPT_TOKENS: &[&str] = &[
    "optimizer ",
    "fn ",
    "objective ",
    "state ",
    ": tensor",
    ": group",
    "let ",
    "use ",
    "param ",
    "loss ",
    "if ",
    " else ",
    "true",
    "false",
    "p",
    "g",
    "t",
    "numel",
    "pi",
    "inf",
    "(",
    ")",
    "{",
    "}",
    ";",
    ",",
    "=",
    "+=",
    "-=",
    "*=",
    "/=",
    "+",
    "-",
    "*",
    "/",
    "^",
    "<",
    "<=",
    "==",
    "!=",
    "&&",
    "||",
    "!",
    "sqrt",
    "exp",
    "log",
    "pow",
    "max",
    "min",
    "sum",
    "mean",
    "norm",
    "dot",
    "group_sum",
    "group_norm",
    "lerp",
    "select",
    "clamp",
    "sign",
    "1e308",
    "1e-320",
    "-0",
    "0.0",
    "3",
    "///",
    "//",
    "\n",
    "cosine_decay(0.1, 10)",
    "warmup_cosine_decay(0, 1, 5, 10)",
];

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"tensors\"",
    "\"p0\"",
    "\"grads\"",
    "\"params\"",
    "\"shape\"",
    "\"NaN\"",
    "\"inf\"",
    "\"-inf\"",
    "null",
    "1e39",
    "-1e39",
    "18446744073709551615",
    "9223372036854775809",
    "0",
    "-0",
    "1.5",
];

const CHECKPOINT_TOKENS: &[&str] = &[
    "\"steps\":18446744073709551615",
    "\"numel\":1000000000000",
    "\"group\":7",
    "F64",
    "BF16",
    "optc-checkpoint-1",
    "tensor/mu/",
    "group/",
    "\0",
    "\u{ff}",
];

const SCRIPT_TOKENS: &[&str] = &[
    "load sgd\n",
    "load adamw\n",
    "run 8\n",
    "run --minutes 0.001\n",
    "top 3\n",
    "show 1\n",
    "eval 1\n",
    "simplify 1\n",
    "save 1 /dev/null\n",
    "set population 4\n",
    "set batch 2\n",
    "set threads 2\n",
    "set seed 1\n",
    "tasks quadratic\n",
    "tasks all\n",
    "restart\n",
    "compare 1 2\n",
    "help\n",
    "set backend reference\n",
    "1e20",
    "-1",
    "0",
    "99999999999",
];

/// The standard library, parsed once (each input gets a clone).
fn prelude() -> optc_compiler::Program {
    static PRELUDE: std::sync::OnceLock<optc_compiler::Program> = std::sync::OnceLock::new();
    PRELUDE.get_or_init(optc_stdlib::prelude).clone()
}

/// The fuzzer's scratch files: one folder per process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("optc-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name)
}

fn opt_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = optc_stdlib::FILES
        .iter()
        .map(|(_, text)| text.as_bytes().to_vec())
        .collect();
    seeds.extend(
        [
            include_str!("../../examples/clipped_adamw.opt"),
            include_str!("../../examples/lion_raw.opt"),
            include_str!("../../examples/sign_momentum.opt"),
            include_str!("../../examples/hd_sgd.opt"),
            "objective bowl(scale = 2) { numel = 3; param x = index; loss scale * x * x; }",
        ]
        .map(|s| s.as_bytes().to_vec()),
    );
    seeds
}

/// Every item of the source through the compiler; each optimizer (at most
/// four) also through the simplifier, the planner, the emitter, the adjoint
/// and one interpreted step on three tensors.
fn opt(input: &[u8]) {
    let mut program = prelude();
    let Ok(file) = program.add_source("fuzz.opt", input, Origin::User) else {
        return;
    };
    let _ = program.check_file(file);
    let names: Vec<String> = program
        .optimizers_in(file)
        .into_iter()
        .take(4)
        .map(String::from)
        .collect();
    for name in names {
        let Ok(rule) = program.compile(&name) else {
            continue;
        };
        for tier in [Tier::Exact, Tier::Algebraic] {
            let simplified = simplify(&rule, tier);
            let _ = emit::emit(&simplified, &program);
        }
        let _ = Plan::new(&rule, true);
        let _ = Plan::new(&rule, false);
        let _ = derive::adjoint(&rule);
        let hypers: Vec<f64> = rule
            .hypers
            .iter()
            .map(|h| {
                h.default
                    .as_ref()
                    .map_or(0.5, |d| interpret::scalar(d, 1, &[]))
            })
            .collect();
        let params: Vec<Vec<f32>> = vec![vec![0.5, -1.0, 0.0], vec![2.0], vec![]];
        let grads: Vec<Vec<f32>> = vec![vec![0.1, f32::NAN, -0.0], vec![1e30], vec![]];
        let views: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
        let grad_views: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        let _ = interpret::step(
            &rule,
            &StepInputs {
                params: &views,
                grads: &grad_views,
                step: 1,
                hypers: &hypers,
                state: None,
                views: None,
            },
        );
    }
}

fn set_seeds() -> Vec<Vec<u8>> {
    [
        "0.1",
        "true",
        "1e-3 * t",
        "cosine_decay(0.1, 1000)",
        "warmup_cosine_decay(0, 1e-3, 100, 1000)",
        "if t < 10 { 0.1 } else { 0.01 }",
        "piecewise_constant(0.1, 10, 0.5, 20, 0.1)",
        "-(0.5)",
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec()
}

fn set(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let mut program = prelude();
    if let Ok(value) = program.compile_scalar("--set x", text) {
        for step in [1, 2, 1_000_000, u64::MAX] {
            let _ = interpret::scalar(&value, step, &[]);
        }
    }
}

fn trace_seeds() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../../tests/golden/sgd.json").to_vec(),
        br#"{"tensors": [{"shape": [2], "p0": [1.0, "NaN"], "grads": [[0.5, "-inf"]], "params": [[0.0, 1.0]]}], "name": "x"}"#.to_vec(),
    ]
}

fn trace_json(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(parsed) = Trace::from_json(text) else {
        return;
    };
    let elements: usize = parsed
        .tensors
        .iter()
        .map(|t| t.p0.len().saturating_mul(t.grads.len().max(1)))
        .sum();
    if elements > 100_000 {
        return;
    }
    let rule = Arc::new(prelude().compile("adam").expect("the stdlib compiles"));
    let Ok(mut optimizer) = Optimizer::builder(rule)
        .backend(Backend::interpreter(Elements::F32))
        .build()
    else {
        return;
    };
    if let Ok(ours) = trace::replay(&mut optimizer, &parsed) {
        let _ = trace::compare(&ours, &parsed);
        let _ = Trace::from_json(&ours.to_json());
    }
}

fn checkpoint_seeds() -> Vec<Vec<u8>> {
    let rule = Arc::new(prelude().compile("prodigy").expect("the stdlib compiles"));
    let path = scratch("seed.safetensors");
    let mut seeds = Vec::new();
    for groups in [false, true] {
        let mut builder = Optimizer::builder(rule.clone())
            .backend(Backend::named("reference").expect("the reference backend"))
            .tensors([("w", 5), ("b", 2)]);
        if groups {
            builder = builder.group(
                optc_runtime::Group::new("bias")
                    .tensors(["b"])
                    .set("weight_decay", 0.0),
            );
        }
        let mut optimizer = builder.build().expect("prodigy builds");
        let (mut w, mut b) = (vec![0.5f32; 5], vec![-1.0f32; 2]);
        for _ in 0..2 {
            optimizer
                .step(
                    &mut [&mut w[..], &mut b[..]],
                    &[&[0.1; 5][..], &[0.2; 2][..]],
                )
                .expect("a step");
        }
        optimizer.save(&path).expect("a save");
        seeds.push(std::fs::read(&path).expect("the saved file"));
    }
    seeds
}

fn runtime_checkpoint(input: &[u8]) {
    let path = scratch("input.safetensors");
    if std::fs::write(&path, input).is_err() {
        return;
    }
    let rule = Arc::new(prelude().compile("prodigy").expect("the stdlib compiles"));
    let Ok(mut optimizer) = Optimizer::builder(rule)
        .backend(Backend::named("reference").expect("the reference backend"))
        .build()
    else {
        return;
    };
    if optimizer.load(&path).is_err() {
        return;
    }
    let Some(layout) = optimizer.layout().cloned() else {
        return;
    };
    if layout.numels().iter().sum::<usize>() > 1_000_000 {
        return;
    }
    let mut params: Vec<Vec<f32>> = layout.numels().iter().map(|&n| vec![0.25; n]).collect();
    let grads = params.clone();
    let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
    let _ = optimizer.step(&mut views, &grads);
    let _ = optimizer.save(&path);
}

/// A fitness that costs nothing: the search machinery, not the scoring, is
/// under test.
struct Flat;

impl Fitness for Flat {
    type Worker = ();
    fn worker(&self) {}
    fn score(&self, _: &mut (), rule: &optc_compiler::ir::Rule) -> Score {
        Score::plain(-(rule.graph.len() as f64))
    }
}

fn search_checkpoint_seeds() -> Vec<Vec<u8>> {
    let prelude = prelude();
    let start = Candidate::warm_start(&prelude, "sgd").expect("sgd is a warm start");
    let config = EvolutionConfig {
        population_size: 6,
        batch_size: 2,
        ..EvolutionConfig::default()
    };
    let mut evolution =
        Evolution::new(Arc::new(prelude), Flat, config, start, 1).expect("a search");
    evolution.run(12);
    let path = scratch("seed.ckpt");
    let saved = checkpoint::Checkpoint {
        format: checkpoint::FORMAT,
        tasks: Vec::new(),
        sources: Vec::new(),
        warm_start: "sgd".into(),
        state: evolution.state().clone(),
    };
    checkpoint::save(&path, &saved).expect("a save");
    vec![std::fs::read(&path).expect("the saved file")]
}

fn search_checkpoint(input: &[u8]) {
    let path = scratch("input.ckpt");
    if std::fs::write(&path, input).is_err() {
        return;
    }
    let Ok(loaded) = checkpoint::load(&path) else {
        return;
    };
    let state: SearchState = loaded.state;
    let mut evolution = Evolution::resume(Arc::new(prelude()), Flat, state, 1);
    evolution.run(4);
    let best = evolution.best().id;
    let _ = evolution.lineage(best);
    let _ = evolution.best().candidate.source();
}

fn script_seeds() -> Vec<Vec<u8>> {
    vec![
        b"set population 4\nset batch 2\nset threads 1\ntasks quadratic\nload sgd\nrun 4\ntop 2\nshow 1\n".to_vec(),
        b"help\nset\ntasks\nload adamw\nsimplify 0\nrun 8\neval 1\ncompare 0 1\n".to_vec(),
    ]
}

/// The optc binary the script target runs: `OPTC`, else the workspace's
/// release build.
fn optc_binary() -> PathBuf {
    std::env::var_os("OPTC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/optc")
        })
}

/// Runs the script through `optc search --script`; a crash (a signal, a
/// panic message) or a run past 20 seconds is a finding. Scripts are kept to
/// small searches, so that only a hang runs long: a prologue chooses a
/// small population on the cheap quadratic task, and lines that would
/// search long (`run` counts above 64, `--minutes`, other tasks, larger
/// populations) or write files are taken out.
fn search_script(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["run", n, ..] => n.parse::<u64>().is_ok_and(|n| n <= 64),
                ["resume", ..] | ["checkpoint", ..] | ["save", ..] | ["plot", ..] => false,
                ["set", "population" | "batch" | "tournament", n] => {
                    n.parse::<u64>().is_ok_and(|n| n <= 64)
                }
                ["tasks", names @ ..] => names.iter().all(|n| *n == "quadratic"),
                ["set", "threads", ..] => false,
                _ => true,
            }
        })
        .take(40)
        .collect();
    let prologue = "set population 8\nset batch 2\nset threads 1\ntasks quadratic\n";
    let (path, errors) = (scratch("script.txt"), scratch("stderr.txt"));
    let Ok(stderr_file) = std::fs::File::create(&errors) else {
        return;
    };
    if std::fs::write(&path, format!("{prologue}{}", lines.join("\n"))).is_err() {
        return;
    }
    let mut child = match std::process::Command::new(optc_binary())
        .args(["search", "--script"])
        .arg(&path)
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::null())
        .stderr(stderr_file)
        .spawn()
    {
        Ok(child) => child,
        Err(error) => panic!("cannot run {}: {error}", optc_binary().display()),
    };
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
                assert!(
                    status.code().is_some() && !stderr.contains("panicked"),
                    "optc search crashed ({status}): {stderr}"
                );
                return;
            }
            Ok(None) if started.elapsed().as_secs() > 20 => {
                let _ = child.kill();
                panic!("optc search ran past 20 seconds");
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(2)),
            Err(error) => panic!("waiting for optc: {error}"),
        }
    }
}
