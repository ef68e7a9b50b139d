//! The standard library and the examples: everything compiles, every
//! optimizer documents its equations and paper, and composition behaves.

mod common;
// The task tests' helper for a stdlib optimizer with overrides, shared.
#[path = "../tasks/tests/common/mod.rs"]
mod stdlib_rule;

use std::sync::Arc;

use optc_compiler::Origin;
use optc_runtime::Optimizer;

#[test]
fn every_stdlib_optimizer_compiles_and_cites_its_paper() {
    let program = optc_stdlib::prelude();
    assert_eq!(
        program.files().len(),
        optc_stdlib::FILES.len(),
        "every stdlib file parses"
    );
    let names = program.optimizers();
    assert!(names.len() >= 35, "{names:?}");
    for name in names {
        let rule = program
            .compile(name)
            .unwrap_or_else(|d| panic!("{name}: {}", d.message));
        let doc = rule.doc.join("\n");
        let has_year = doc.as_bytes().windows(4).any(|w| {
            (w.starts_with(b"19") || w.starts_with(b"20")) && w.iter().all(u8::is_ascii_digit)
        });
        assert!(
            rule.doc.len() >= 3 && has_year,
            "{name} documents its equations and paper:\n{doc}"
        );
    }
}

#[test]
fn examples_compile() {
    for entry in std::fs::read_dir(common::repo_path("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "opt") {
            continue;
        }
        let mut program = optc_stdlib::prelude();
        let file = program
            .add_source(
                &path.display().to_string(),
                &std::fs::read(&path).unwrap(),
                Origin::User,
            )
            .unwrap_or_else(|d| panic!("{}: {}", path.display(), d.message));
        let errors = program.check_file(file);
        assert!(errors.is_empty(), "{}: {:?}", path.display(), errors);
    }
}

/// An optimizer for `rule`, defined in `source` or (with `None`) in the stdlib.
fn optimizer(source: Option<&str>, rule: &str) -> Optimizer {
    let mut program = optc_stdlib::prelude();
    if let Some(source) = source {
        program
            .add_source("test.opt", source.as_bytes(), Origin::User)
            .unwrap();
    }
    Optimizer::builder(Arc::new(program.compile(rule).unwrap()))
        .build()
        .unwrap()
}

/// Two steps of `optimizer` on two tensors; `transform` maps each step's gradients.
fn two_steps(
    mut optimizer: Optimizer,
    transform: impl Fn(Vec<Vec<f32>>) -> Vec<Vec<f32>>,
) -> Vec<Vec<f32>> {
    let mut a = vec![0.5f32, -1.0, 2.0];
    let mut b = vec![3.0f32];
    for grads in [
        vec![vec![0.3f32, -0.4, 0.0], vec![1.2]],
        vec![vec![-0.1, 0.2, 0.5], vec![-0.7]],
    ] {
        let grads = transform(grads);
        optimizer
            .step(&mut [&mut a, &mut b], &[&grads[0], &grads[1]])
            .unwrap();
    }
    vec![a, b]
}

fn scaled(factor: f32) -> impl Fn(Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    move |grads| {
        grads
            .into_iter()
            .map(|g| g.into_iter().map(|x| x * factor).collect())
            .collect()
    }
}

#[test]
fn clipping_composes_in_front_of_any_rule() {
    let source = std::fs::read_to_string(common::repo_path("examples/clipped_adamw.opt")).unwrap();
    let clipped = || optimizer(Some(&source), "clipped_adamw");
    let plain = || optimizer(None, "adamw");
    // Gradients under the norm bound are left alone: AdamW's trajectory exactly.
    assert_eq!(
        two_steps(clipped(), scaled(0.1)),
        two_steps(plain(), scaled(0.1))
    );
    // Larger ones reach AdamW scaled to global norm 1 (max_norm's default).
    let normalised = |grads: Vec<Vec<f32>>| {
        let norm = grads
            .iter()
            .flatten()
            .map(|&x| f64::from(x * x))
            .sum::<f64>()
            .sqrt();
        grads
            .into_iter()
            .map(|g| g.into_iter().map(|x| x * (1.0 / norm) as f32).collect())
            .collect()
    };
    let ours = two_steps(clipped(), scaled(1000.0));
    let reference = two_steps(plain(), move |g| normalised(scaled(1000.0)(g)));
    for (c, r) in ours.iter().flatten().zip(reference.iter().flatten()) {
        assert!(
            (c - r).abs() <= 1e-6 * r.abs().max(1.0),
            "clipped {c} vs reference {r}"
        );
    }
    assert_ne!(
        ours,
        two_steps(plain(), scaled(1000.0)),
        "clipping changed the trajectory"
    );
}

#[test]
fn rmsprop_centered_is_the_momentum_variant_without_momentum() {
    let text = std::fs::read_to_string(common::repo_path(
        "tests/golden/rmsprop_centered_momentum.json",
    ))
    .unwrap();
    let trace = optc_runtime::trace::Trace::from_json(&text).unwrap();
    let run = |rule: &str, sets: &[(&str, &str)]| {
        let mut optimizer = stdlib_rule::optimizer(rule, sets);
        optc_runtime::trace::replay(&mut optimizer, &trace).unwrap()
    };
    let centered = run("rmsprop_centered", &[("learning_rate", "0.01")]);
    let without_momentum = run(
        "rmsprop_centered_momentum",
        &[("learning_rate", "0.01"), ("momentum", "0")],
    );
    let comparison = optc_runtime::trace::compare(&centered, &without_momentum).unwrap();
    assert!(comparison.max_err <= 1e-6, "{comparison:?}");
    let with_momentum = run("rmsprop_centered_momentum", &[("learning_rate", "0.01")]);
    assert!(
        optc_runtime::trace::compare(&centered, &with_momentum)
            .unwrap()
            .max_err
            > 1e-3,
        "momentum matters"
    );
}

/// `muon_adamw` steps matrices as `muon` and every other tensor as `adamw`
/// (with its `adam_` hyperparameters), bit for bit.
#[test]
fn muon_adamw_is_muon_on_matrices_and_adamw_elsewhere() {
    let program = optc_stdlib::prelude();
    let shapes = [("w", vec![3usize, 5]), ("b", vec![4])];
    let run = |rule: &str, sets: &[(&str, f64)]| {
        let mut builder = Optimizer::builder(Arc::new(program.compile(rule).unwrap()))
            .shaped_tensors(shapes.clone());
        for &(name, value) in sets {
            builder = builder.set(name, value);
        }
        let mut optimizer = builder.build().unwrap();
        let mut params: Vec<Vec<f32>> = vec![
            (0..15).map(|i| (i as f32 * 0.37).sin()).collect(),
            vec![0.5, -0.25, 1.0, 2.0],
        ];
        for step in 0..3 {
            let grads: Vec<Vec<f32>> = params
                .iter()
                .map(|p| {
                    p.iter()
                        .enumerate()
                        .map(|(i, x)| x * 0.5 + (i + step) as f32 * 0.1 - 0.3)
                        .collect()
                })
                .collect();
            let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
            let grad_views: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
            optimizer.step(&mut views, &grad_views).unwrap();
        }
        params
    };
    let combined = run("muon_adamw", &[]);
    let muon = run("muon", &[("learning_rate", 0.02)]);
    let adamw = run("adamw", &[("learning_rate", 3e-4), ("weight_decay", 0.01)]);
    assert_eq!(combined[0], muon[0], "the matrix steps as muon");
    assert_eq!(combined[1], adamw[1], "the vector steps as adamw");
    assert_ne!(combined[0], adamw[0]);
}
