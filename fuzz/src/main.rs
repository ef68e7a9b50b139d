//! `optc-fuzz`: runs a fuzz target (see [`targets`]) on mutated inputs for a
//! time budget and reports executions and findings. A finding is an input
//! that panics, or that runs past the watchdog's limit; it is written to
//! `fuzz/findings/TARGET-N.bin` (with the panic message beside it), and
//! becomes a regression test once fixed (`tests/fuzz_findings.rs` replays
//! every file in `fuzz/regressions/`). Inputs that abort the process (an
//! allocation the system refuses) leave the last input in
//! `fuzz/findings/TARGET-current.bin`.
//!
//!     optc-fuzz list
//!     optc-fuzz TARGET [--seconds N] [--seed S]
//!     optc-fuzz replay TARGET FILE...
//!
//! `benches/fuzz.sh` runs every target in turn.

mod mutate;
mod targets;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mutate::mutate;
use optc_search::rng::Rng;
use targets::{Target, TARGETS};

/// An input running longer than this is a hang.
const WATCHDOG: Duration = Duration::from_secs(30);

fn usage() -> ExitCode {
    eprintln!("usage: optc-fuzz list | optc-fuzz TARGET [--seconds N] [--seed S] | optc-fuzz replay TARGET FILE...");
    ExitCode::from(2)
}

fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn findings_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("findings")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["list"] => {
            for t in TARGETS {
                println!("{:<18} {}", t.name, t.summary);
            }
            ExitCode::SUCCESS
        }
        ["replay", name, files @ ..] => {
            let Some(target) = target(name) else {
                return usage();
            };
            let mut failed = false;
            for file in files {
                let input = std::fs::read(file).unwrap_or_default();
                if let Err(message) = run_one(target, &input) {
                    println!("{file}: {message}");
                    failed = true;
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        [name, options @ ..] => {
            let Some(target) = target(name) else {
                return usage();
            };
            let mut seconds = 60.0;
            let mut seed = 1;
            for pair in options.chunks(2) {
                match pair {
                    ["--seconds", n] => seconds = n.parse().unwrap_or(seconds),
                    ["--seed", n] => seed = n.parse().unwrap_or(seed),
                    _ => return usage(),
                }
            }
            fuzz(target, Duration::from_secs_f64(seconds), seed)
        }
        _ => usage(),
    }
}

/// Runs `target` on `input`; a panic is an error with its message.
fn run_one(target: &Target, input: &[u8]) -> Result<(), String> {
    panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".to_string())
    })
}

fn fuzz(target: &Target, budget: Duration, seed: u64) -> ExitCode {
    if let Err(why) = (target.ready)() {
        eprintln!("{}: cannot run: {why}", target.name);
        return ExitCode::from(2);
    }
    let seeds = (target.seeds)();
    let dir = findings_dir();
    let _ = std::fs::create_dir_all(&dir);
    let current = dir.join(format!("{}-current.bin", target.name));
    // The watchdog: an input that runs past WATCHDOG is saved and the run ends.
    let started_at = Arc::new(AtomicU64::new(u64::MAX));
    let clock = Instant::now();
    {
        let (started_at, current, name) = (started_at.clone(), current.clone(), target.name);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let start = started_at.load(Ordering::Relaxed);
            if start != u64::MAX
                && clock.elapsed().as_millis() as u64 > start + WATCHDOG.as_millis() as u64
            {
                let hang = current.with_file_name(format!("{name}-hang.bin"));
                let _ = std::fs::copy(&current, &hang);
                eprintln!(
                    "finding: an input ran past {WATCHDOG:?}; saved as {}",
                    hang.display()
                );
                std::process::exit(1);
            }
        });
    }
    panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng::new(seed);
    let (mut executions, mut findings) = (0u64, 0u64);
    let begun = Instant::now();
    let mut last_report = Instant::now();
    // The seeds themselves first, then mutants.
    let mut queue = seeds.clone().into_iter();
    while begun.elapsed() < budget {
        let input = queue
            .next()
            .unwrap_or_else(|| mutate(&mut rng, &seeds, target.dictionary));
        let _ = std::fs::write(&current, &input);
        started_at.store(clock.elapsed().as_millis() as u64, Ordering::Relaxed);
        let result = run_one(target, &input);
        started_at.store(u64::MAX, Ordering::Relaxed);
        executions += 1;
        if let Err(message) = result {
            findings += 1;
            let path = dir.join(format!("{}-{findings}.bin", target.name));
            let _ = std::fs::write(&path, &input);
            let _ = std::fs::write(path.with_extension("txt"), &message);
            eprintln!(
                "finding {findings}: {} ({})",
                first_line(&message),
                path.display()
            );
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "{}: {executions} executions, {findings} findings, {:.0} s",
                target.name,
                begun.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let _ = std::fs::remove_file(&current);
    let seconds = begun.elapsed().as_secs_f64();
    println!(
        "{}: {executions} executions in {seconds:.0} s ({:.0}/s), {findings} findings",
        target.name,
        executions as f64 / seconds
    );
    if findings > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("")
}
