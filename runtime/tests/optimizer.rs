//! The runtime's contract: hyperparameters bind by name with clear errors,
//! and a step that fails changes nothing.

use std::sync::Arc;

use optc_runtime::{Error, Optimizer};

fn adam(sets: &[(&str, &str)]) -> Result<Optimizer, Error> {
    let mut program = optc_stdlib::prelude();
    let rule = program.compile("adam").unwrap();
    let overrides = sets
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                program.compile_scalar(name, value).unwrap(),
            )
        })
        .collect();
    Optimizer::new(Arc::new(rule), overrides)
}

#[test]
fn hyperparameters_bind_by_name_with_defaults() {
    let optimizer = adam(&[("learning_rate", "0.5")]).unwrap();
    assert_eq!(optimizer.hyper_values(), vec![0.5, 0.9, 0.999, 1e-8, 0.0]);
    let scheduled = adam(&[("learning_rate", "0.5 * t")]).unwrap();
    assert_eq!(
        scheduled.hyper_values()[0],
        0.5,
        "evaluated at the next step, t = 1"
    );
}

#[test]
fn binding_errors_name_the_problem() {
    let error = adam(&[("learning_rat", "0.5")]).unwrap_err();
    assert!(
        matches!(&error, Error::UnknownHyper { name, known } if name == "learning_rat" && known.len() == 5)
    );
    assert!(error
        .to_string()
        .contains("this rule has: learning_rate, b1, b2, eps, eps_root"));
    let error = adam(&[("b1", "true")]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "hyperparameter `b1` is a number, not a bool"
    );
}

#[test]
fn a_failed_step_changes_nothing() {
    let mut optimizer = adam(&[]).unwrap();
    let mut twin = optimizer.clone();
    let mut a = vec![1.0f32, 2.0, 3.0];
    let mut b = vec![4.0f32];
    optimizer
        .step(&mut [&mut a, &mut b], &[&[0.1, 0.2, 0.3], &[0.4]])
        .unwrap();
    let (a1, b1) = (a.clone(), b.clone());

    let wrong_length = optimizer.step(&mut [&mut a, &mut b], &[&[0.1, 0.2], &[0.4]]);
    assert_eq!(
        wrong_length,
        Err(Error::Length {
            tensor: 0,
            expected: 3,
            found: 2
        })
    );
    let wrong_count = optimizer.step(&mut [&mut a, &mut b], &[&[0.1, 0.2, 0.3]]);
    assert_eq!(
        wrong_count,
        Err(Error::TensorCount {
            expected: 2,
            found: 1
        })
    );
    let mut c = vec![0.0f32; 2];
    let changed_shape = optimizer.step(&mut [&mut a, &mut c], &[&[0.1, 0.2, 0.3], &[0.4, 0.5]]);
    assert_eq!(
        changed_shape,
        Err(Error::Length {
            tensor: 1,
            expected: 1,
            found: 2
        })
    );
    assert_eq!((a.clone(), b.clone()), (a1, b1), "parameters untouched");
    assert_eq!(optimizer.steps_taken(), 1, "step count untouched");

    // The failures left the state as it was: the next step equals an uninterrupted run.
    let (mut ta, mut tb) = (vec![1.0f32, 2.0, 3.0], vec![4.0f32]);
    twin.step(&mut [&mut ta, &mut tb], &[&[0.1, 0.2, 0.3], &[0.4]])
        .unwrap();
    twin.step(&mut [&mut ta, &mut tb], &[&[0.3, 0.2, 0.1], &[0.5]])
        .unwrap();
    optimizer
        .step(&mut [&mut a, &mut b], &[&[0.3, 0.2, 0.1], &[0.5]])
        .unwrap();
    assert_eq!((a, b), (ta, tb));
}

#[test]
fn defaults_follow_the_hyperparameters_before_them() {
    let mut program = optc_stdlib::prelude();
    let rule = Arc::new(program.compile("prodigy").unwrap());
    let beta3 = rule.hyper_index("beta3").unwrap();
    let default = Optimizer::<f32>::new(rule.clone(), Vec::new()).unwrap();
    assert_eq!(default.hyper_values()[beta3], 0.999f64.sqrt());
    let beta2 = program.compile_scalar("beta2", "0.99").unwrap();
    let set = Optimizer::<f32>::new(rule.clone(), vec![("beta2".into(), beta2)]).unwrap();
    assert_eq!(
        set.hyper_values()[beta3],
        0.99f64.sqrt(),
        "beta3 = sqrt(beta2) sees the override"
    );
    let beta3_value = program.compile_scalar("beta3", "0.5").unwrap();
    let explicit = Optimizer::<f32>::new(rule, vec![("beta3".into(), beta3_value)]).unwrap();
    assert_eq!(explicit.hyper_values()[beta3], 0.5);
}
