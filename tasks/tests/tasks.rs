//! The training tasks: data as documented, exact gradients, and optimizers
//! that actually learn on them.

mod common;

use common::optimizer;
use optc_tasks::{train, Dataset, Mlp, SoftmaxRegression, Task};

#[test]
fn datasets_load_standardised() {
    let data = Dataset::builtin("breast_cancer").unwrap();
    assert_eq!(
        (data.features.len(), data.features[0].len(), data.classes),
        (569, 30, 2)
    );
    assert_eq!(
        data.labels.iter().filter(|&&l| l == 1).count(),
        357,
        "357 benign"
    );
    for column in [0, 17, 29] {
        let values: Vec<f64> = data.features.iter().map(|r| f64::from(r[column])).collect();
        let mean = values.iter().sum::<f64>() / 569.0;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 569.0;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
            "column {column}: {mean} {var}"
        );
    }
    let iris = Dataset::builtin("iris").unwrap();
    assert_eq!((iris.features.len(), iris.classes), (150, 3));
    let error = Dataset::builtin("mnist").unwrap_err();
    assert_eq!(
        error,
        "unknown task `mnist` (known: breast_cancer, iris, digits, wine)"
    );
    let digits = Dataset::builtin("digits").unwrap();
    assert_eq!(
        (
            digits.features.len(),
            digits.features[0].len(),
            digits.classes
        ),
        (1797, 64, 10)
    );
    let wine = Dataset::builtin("wine").unwrap();
    assert_eq!(
        (wine.features.len(), wine.features[0].len(), wine.classes),
        (178, 13, 3)
    );
}

/// Central differences of the loss against the exact gradient at a few
/// coordinates of every tensor.
fn check_gradients(task: &dyn Task, params: &[Vec<f32>]) {
    let grads = task.evaluate(params).grads;
    for (tensor, values) in params.iter().enumerate() {
        for index in [0, values.len() / 2, values.len() - 1] {
            let h = 1e-2f32;
            let mut plus = params.to_vec();
            plus[tensor][index] += h;
            let mut minus = params.to_vec();
            minus[tensor][index] -= h;
            let numeric =
                (task.evaluate(&plus).loss - task.evaluate(&minus).loss) / (2.0 * f64::from(h));
            let exact = f64::from(grads[tensor][index]);
            assert!(
                (numeric - exact).abs() < 1e-4,
                "{}: ({tensor}, {index}): numeric {numeric} exact {exact}",
                task.describe()
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let task = SoftmaxRegression::new(Dataset::builtin("iris").unwrap());
    let mut params = task.initial_params();
    for (i, w) in params[0].iter_mut().enumerate() {
        *w = ((i * 7 % 11) as f32 - 5.0) * 0.1;
    }
    params[1] = vec![0.2, -0.1, 0.05];
    check_gradients(&task, &params);
    let mlp = Mlp {
        data: Dataset::builtin("wine").unwrap(),
        hidden: 5,
    };
    let mut params = mlp.initial_params();
    params[1] = vec![0.1, -0.2, 0.3, 0.0, -0.1];
    params[3] = vec![0.05, -0.05, 0.1];
    check_gradients(&mlp, &params);
}

#[test]
fn stdlib_optimizers_learn() {
    let task = SoftmaxRegression::new(Dataset::builtin("breast_cancer").unwrap());
    let log = train(&task, &mut optimizer("adam", &[]), 200, 100).unwrap();
    assert_eq!(
        log.iter().map(|l| l.step).collect::<Vec<_>>(),
        vec![0, 100, 200]
    );
    assert!(
        (log[0].loss - 2f64.ln()).abs() < 1e-9,
        "zero weights: loss ln 2"
    );
    let last = log.last().unwrap();
    assert!(last.loss < 0.2 && last.accuracy > 0.95, "{last:?}");

    let iris = SoftmaxRegression::new(Dataset::builtin("iris").unwrap());
    let log = train(
        &iris,
        &mut optimizer("sgd_momentum", &[("learning_rate", "0.5")]),
        100,
        100,
    )
    .unwrap();
    let last = log.last().unwrap();
    assert!(last.loss < 0.1 && last.accuracy > 0.95, "{last:?}");
}

#[test]
fn an_mlp_learns_the_digits() {
    let mlp = Mlp {
        data: Dataset::builtin("digits").unwrap(),
        hidden: 16,
    };
    let log = train(
        &mlp,
        &mut optimizer("adam", &[("learning_rate", "0.01")]),
        60,
        60,
    )
    .unwrap();
    let (first, last) = (&log[0], log.last().unwrap());
    assert!((first.loss - 10f64.ln()).abs() < 0.3, "{first:?}");
    assert!(
        last.loss < 0.5 * first.loss && last.accuracy > 0.85,
        "{last:?}"
    );
}
