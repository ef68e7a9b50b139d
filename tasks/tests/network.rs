//! The candle networks: gradients that match finite differences, steps
//! that land in candle's own parameter buffer, failed steps that change
//! nothing, and optimizers that learn on both models.

use std::sync::Arc;

mod common;

use common::optimizer;
use optc_runtime::Optimizer;
use optc_tasks::network::{Network, LIBER_PRIMUS};
use optc_tasks::Dataset;

/// `steps` batches of `size` consecutive indices out of `examples`, wrapping.
fn in_order(examples: usize, size: usize, steps: usize) -> Vec<Vec<usize>> {
    (0..steps)
        .map(|k| (k * size..(k + 1) * size).map(|i| i % examples).collect())
        .collect()
}

fn conv_net(steps: usize) -> Network {
    let (train, held_out) = Dataset::builtin("digits").unwrap().split(5);
    Network::conv_net(
        &train,
        &held_out,
        &in_order(train.labels.len(), 32, steps),
        4,
    )
    .unwrap()
}

fn transformer(steps: usize) -> Network {
    let windows = Network::training_windows(LIBER_PRIMUS, 16);
    Network::char_transformer(LIBER_PRIMUS, &in_order(windows, 8, steps), 16, 16).unwrap()
}

#[test]
fn the_corpus_and_its_windows() {
    assert_eq!(LIBER_PRIMUS.len(), 49068);
    assert!(LIBER_PRIMUS.starts_with("Non eram nescius, Brute"));
    // 44,161 training characters (nine tenths), windows of 33 every 32.
    assert_eq!(Network::training_windows(LIBER_PRIMUS, 32), 1380);
    assert_eq!(Network::text_windows(33, 32), 1);
    assert_eq!(Network::text_windows(32, 32), 0);
    let network = transformer(1);
    let names = network.tensor_names();
    assert_eq!(names.first().map(String::as_str), Some("embedding.token"));
    // 57 symbols in the text: the token embedding is 57 x 16.
    assert_eq!(network.slots[0].shape, vec![57, 16]);
}

/// Central differences of the loss against the network's gradient, at
/// the initial parameters moved off their zeros and ones.
fn check_gradients(network: &Network) {
    let mut params = network.initial_params();
    for (t, tensor) in params.iter_mut().enumerate() {
        for (i, value) in tensor.iter_mut().enumerate() {
            *value += 0.05 * ((t * 7 + i * 3) % 11) as f32 / 11.0 - 0.02;
        }
    }
    let (_, gradient) = network.evaluate(&params, 0).unwrap();
    for (t, slot) in network.slots.iter().enumerate() {
        let i = (slot.numel() * 2 / 3).min(slot.numel() - 1);
        let h = 1e-2f32;
        let mut moved = params.clone();
        moved[t][i] += h;
        let up = network.evaluate(&moved, 0).unwrap().0;
        moved[t][i] -= 2.0 * h;
        let down = network.evaluate(&moved, 0).unwrap().0;
        let numeric = (up - down) / (2.0 * f64::from(h));
        let exact = f64::from(gradient[t][i]);
        assert!(
            (numeric - exact).abs() < 2e-3 + 0.05 * exact.abs(),
            "{} [{i}]: finite difference {numeric}, gradient {exact}",
            slot.name
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    check_gradients(&conv_net(1));
    check_gradients(&transformer(1));
}

#[test]
fn a_step_updates_candles_own_buffer() {
    let network = conv_net(2);
    let initial = network.initial_params();
    let (loss, gradient) = network.evaluate(&initial, 0).unwrap();
    let mut run = network.start().unwrap();
    assert_eq!(run.loss(0).unwrap(), loss);
    run.step(&mut optimizer("sgd", &[("learning_rate", "0.5")]))
        .unwrap();
    let stepped = run.params().unwrap();
    for ((after, before), g) in stepped.iter().zip(&initial).zip(&gradient) {
        for ((a, b), g) in after.iter().zip(before).zip(g) {
            assert!(
                (a - (b - 0.5 * g)).abs() <= 1e-6 * (1.0 + b.abs()),
                "{a} {b} {g}"
            );
        }
    }
    assert_ne!(stepped, initial);
    // The loss of the next step is computed at the stepped parameters.
    assert_eq!(
        run.loss(1).unwrap(),
        network.evaluate(&stepped, 1).unwrap().0
    );
}

#[test]
fn a_failed_step_changes_nothing() {
    let network = conv_net(2);
    let mut run = network.start().unwrap();
    let error = run.step(&mut optimizer("sgd", &[])).unwrap_err();
    assert_eq!(error, "no gradient: compute a loss before a step");
    run.loss(0).unwrap();
    // An optimizer laid out for other tensors refuses the step.
    let rule = Arc::new(optc_stdlib::prelude().compile("adam").unwrap());
    let mut other = Optimizer::builder(rule)
        .tensors([("w", 3)])
        .build()
        .unwrap();
    let error = run.step(&mut other).unwrap_err();
    assert!(error.contains("tensor"), "{error}");
    assert_eq!(run.params().unwrap(), network.initial_params());
}

/// Held-out loss before and after `steps` steps of Adam at learning rate 0.01.
fn adam_held_out(network: &Network, steps: usize) -> (f64, f64) {
    let mut run = network.start().unwrap();
    let before = run.held_out_loss().unwrap();
    let mut adam = optimizer("adam", &[("learning_rate", "0.01")]);
    for step in 0..steps {
        run.loss(step).unwrap();
        run.step(&mut adam).unwrap();
    }
    (before, run.held_out_loss().unwrap())
}

#[test]
fn adam_trains_both_networks() {
    let (before, after) = adam_held_out(&conv_net(150), 150);
    assert!((before - 10f64.ln()).abs() < 0.3, "{before}");
    assert!(after < 0.6, "conv net held-out loss {before} -> {after}");
    let (before, after) = adam_held_out(&transformer(150), 150);
    assert!((before - 57f64.ln()).abs() < 0.5, "{before}");
    assert!(after < 3.0, "transformer held-out loss {before} -> {after}");
}
