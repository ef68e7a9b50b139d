//! `optc build`: libraries with a C ABI, linked into a C program
//! (`tests/aot/driver.c`), match the interpreter bit for bit (parameters
//! and state after several steps, many tensors, odd lengths), and rules the
//! library cannot run are refused with the reason.

#![cfg(feature = "llvm")]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{optc, Random};
use optc_compiler::ir::Rule;
use optc_runtime::{Backend, Elements, Optimizer};

const NUMELS: [usize; 4] = [1, 17, 1000, 40_000];
const STEPS: usize = 5;

fn rule(name: &str) -> Rule {
    optc_stdlib::load::program(name, false)
        .and_then(|loaded| loaded.rule(None, name, false))
        .unwrap()
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Random(seed);
    (0..n)
        .map(|_| (rng.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect()
}

/// Builds `name`'s library in `dir`, links the driver against it and runs
/// it; returns the parameters (then the states) it printed as f32 bits.
fn run_library(
    dir: &Path,
    name: &str,
    hypers: &[f64],
    params: &[Vec<f32>],
    grads: &[Vec<Vec<f32>>],
) -> Vec<u32> {
    let library = dir.join(format!("lib{name}.so"));
    let (code, _, stderr) = optc(&["build", name, "-o", library.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let driver = dir.join(format!("driver_{name}"));
    let status = Command::new("cc")
        .arg(common::repo_path("tests/aot/driver.c"))
        .arg(format!("-DRULE={name}"))
        .arg(format!("-DRULE_HEADER=\"{name}.h\""))
        .arg("-I")
        .arg(dir)
        .arg(&library)
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-o")
        .arg(&driver)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the driver did not compile against {name}.h"
    );
    let mut input = Vec::new();
    for n in [params.len(), grads.len(), hypers.len()] {
        input.extend((n as u64).to_le_bytes());
    }
    for p in params {
        input.extend((p.len() as u64).to_le_bytes());
    }
    for h in hypers {
        input.extend(h.to_le_bytes());
    }
    for tensor in params.iter().chain(grads.iter().flatten()) {
        input.extend(tensor.iter().flat_map(|x| x.to_le_bytes()));
    }
    let mut child = Command::new(&driver)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
        .chunks(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn libraries_match_the_interpreter() {
    let dir = std::env::temp_dir().join(format!("optc-aot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in [
        "adam",
        "adamw",
        "lion",
        "sgd_momentum",
        "adabelief",
        "radam",
        "adamax",
    ] {
        let rule = Arc::new(rule(name));
        let hypers: Vec<f64> = rule
            .hypers
            .iter()
            .map(|h| {
                let d = h.default.as_ref().expect("stdlib defaults");
                d.graph
                    .node(d.output)
                    .constant_value()
                    .unwrap_or_else(|| panic!("{name}: a non-constant default"))
            })
            .collect();
        let params: Vec<Vec<f32>> = NUMELS
            .iter()
            .enumerate()
            .map(|(i, &n)| values(n, i as u64))
            .collect();
        let grads: Vec<Vec<Vec<f32>>> = (0..STEPS)
            .map(|s| {
                NUMELS
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| values(n, 100 + (s * 7 + i) as u64))
                    .collect()
            })
            .collect();
        let got = run_library(&dir, name, &hypers, &params, &grads);

        let mut optimizer = Optimizer::builder(rule.clone())
            .backend(Backend::interpreter(Elements::F32))
            .build()
            .unwrap();
        let mut want = params.clone();
        for step in &grads {
            let g: Vec<&[f32]> = step.iter().map(Vec::as_slice).collect();
            let mut views: Vec<&mut [f32]> = want.iter_mut().map(Vec::as_mut_slice).collect();
            optimizer.step(&mut views, &g).unwrap();
        }
        let want: Vec<u32> = want.iter().flatten().map(|x| x.to_bits()).collect();
        assert_eq!(
            &got[..want.len()],
            &want[..],
            "{name}: parameters after {STEPS} steps"
        );
        let slots = rule.states.len();
        assert_eq!(got.len(), want.len() * (1 + slots), "{name}: state blocks");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rules_the_library_cannot_run_are_refused() {
    let out = std::env::temp_dir().join(format!("optc-aot-refused-{}.so", std::process::id()));
    for (name, why) in [
        ("lamb", "passes (reductions between them need the runtime)"),
        ("nadam", "state `mu_product` is kept per tensor or group"),
    ] {
        let (code, _, stderr) = optc(&["build", name, "-o", out.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}");
        assert!(
            stderr.contains("cannot be built ahead of time") && stderr.contains(why),
            "{name}: {stderr}"
        );
        assert!(!out.exists(), "{name}: nothing written");
    }
}
