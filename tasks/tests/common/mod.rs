//! What the task tests share: a stdlib optimizer with overrides (the
//! workspace's tests/stdlib.rs includes this file too).

use std::sync::Arc;

use optc_runtime::Optimizer;

/// The stdlib rule `rule` with its hyperparameters `sets` (name, expression).
pub fn optimizer(rule: &str, sets: &[(&str, &str)]) -> Optimizer {
    let mut program = optc_stdlib::prelude();
    let compiled = program.compile(rule).unwrap();
    let overrides = sets
        .iter()
        .map(|(k, v)| (k.to_string(), program.compile_scalar(k, v).unwrap()))
        .collect();
    Optimizer::builder(Arc::new(compiled))
        .overrides(overrides)
        .build()
        .unwrap()
}
