//! The staged executor (`--backend staged`) against the interpreter: rules
//! without reductions, products or approximated transcendentals bit for bit
//! (its passes' kernels compute the interpreter's operations), matrix-shaped
//! rules within the rounding of their other summation order, on every
//! orientation of a matrix and on tensors that span several units of work;
//! results independent of the thread count; passes as the reductions
//! require.

mod common;

use common::{rule, sized_values, steps};
use optc_compiler::interpret::CHUNK;
use optc_runtime::{Backend, Optimizer};

/// Parameters (and every state slot) after `count` steps of stdlib rule
/// `name` on tensors of `shapes`.
fn run(
    name: &str,
    backend: &str,
    threads: usize,
    shapes: &[Vec<usize>],
    count: u64,
) -> (Vec<Vec<f32>>, Vec<Vec<Vec<f32>>>) {
    let rule = rule(name);
    let slots: Vec<String> = rule.states.iter().map(|s| s.name.clone()).collect();
    let mut optimizer = Optimizer::builder(rule)
        .backend(Backend::named(backend).unwrap())
        .threads(threads)
        .shaped_tensors(
            shapes
                .iter()
                .enumerate()
                .map(|(i, dims)| (format!("t{i}"), dims.clone())),
        )
        .build()
        .unwrap();
    let sizes: Vec<usize> = shapes.iter().map(|d| d.iter().product()).collect();
    let mut params = sized_values(&sizes);
    steps(&mut optimizer, &mut params, 0, count);
    let state = slots.iter().map(|s| optimizer.state(s).unwrap()).collect();
    (params, state)
}

/// The largest difference between `a` and `b`, relative to `scale`.
fn max_difference(a: &[Vec<f32>], b: &[Vec<f32>], scale: f32) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs() / (scale + y.abs()))
        .fold(0.0, f32::max)
}

#[test]
fn rules_without_reductions_equal_the_interpreter_bit_for_bit() {
    let shapes = [vec![3, 700], vec![1], vec![CHUNK + 17]];
    for name in ["adam", "lion", "sgd_momentum", "adan", "cocob"] {
        let staged = run(name, "staged", 2, &shapes, 4);
        let oracle = run(name, "interp", 1, &shapes, 4);
        assert!(staged == oracle, "{name}: the staged executor differs");
    }
}

#[test]
fn matrix_rules_match_the_interpreter_on_every_orientation() {
    // Wide and tall matrices (the gram side is the rows, then the
    // columns), a vector, a rank-3 tensor (folded rows), a matrix of many
    // units (rows of fewer than CHUNK columns) and a row longer than a unit.
    let shapes = [
        vec![3, 70],
        vec![70, 3],
        vec![33],
        vec![2, 3, 5],
        vec![700, 100],
        vec![1, CHUNK + 5],
    ];
    // Matrix products accumulate in f32 and reductions in another order:
    // Adafactor and SM3 differ by f32 rounding; Muon's bf16 roundings of
    // those products may flip a bf16 ulp (2^-8 relative) of an update
    // entry, whose size is the learning rate (1e-3, and 0.02 in muon_adamw):
    // two such ulps per step at most.
    let bf16_ulps = |learning_rate: f32| 2.0 * 3.0 * learning_rate / 256.0;
    for (name, tolerance) in [
        ("adafactor", 1e-5),
        ("sm3", 1e-5),
        ("muon", bf16_ulps(1e-3)),
        ("muon_adamw", bf16_ulps(0.02)),
    ] {
        let (params, state) = run(name, "staged", 2, &shapes, 3);
        let (oracle_params, oracle_state) = run(name, "interp", 1, &shapes, 3);
        let error = max_difference(&params, &oracle_params, 1.0);
        assert!(error <= tolerance, "{name}: parameters differ by {error:e}");
        for (slot, (ours, theirs)) in state.iter().zip(&oracle_state).enumerate() {
            let error = max_difference(ours, theirs, 1e-3);
            assert!(
                error <= 1e-3,
                "{name}: state slot {slot} differs by {error:e}"
            );
        }
        assert!(
            params != run(name, "staged", 2, &shapes, 2).0,
            "{name}: steps change nothing"
        );
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let shapes = [vec![300, 200], vec![9], vec![40, 1000]];
    for name in ["adafactor", "muon", "lamb"] {
        assert!(
            run(name, "staged", 1, &shapes, 3) == run(name, "staged", 2, &shapes, 3),
            "{name}"
        );
    }
}

#[test]
fn passes_follow_the_reductions_and_products() {
    let traffic = |name: &str| {
        let optimizer = Optimizer::builder(rule(name))
            .backend(Backend::named("staged").unwrap())
            .shaped_tensors([("w", [8usize, 16])])
            .build()
            .unwrap();
        let traffic = optimizer.traffic().unwrap();
        (traffic.passes, traffic.bytes_per_element)
    };
    // Adam: one pass reading p, g, mu, nu and storing p, mu, nu.
    assert_eq!(traffic("adam"), (1, 28));
    // LAMB: the trust ratio's norms, then the update.
    assert_eq!(traffic("lamb").0, 2);
    // Adafactor: row and column means and the parameter norm (p, g); the
    // update's norm (g), writing the update out, since recomputing it would
    // cost two divisions and a square root per element; the step (p and the
    // update, storing p).
    assert_eq!(traffic("adafactor"), (3, 28));
    // Muon: a pass per Newton-Schulz step writing its operand out, around
    // the first norm and the final update.
    let (passes, _) = traffic("muon");
    assert!(passes >= 6, "{passes} passes");
}

#[test]
fn products_run_alone_for_benchmarks() {
    let mut muon = Optimizer::builder(rule("muon"))
        .backend(Backend::named("staged").unwrap())
        .shaped_tensors([("w", vec![4usize, 6]), ("b", vec![6])])
        .build()
        .unwrap();
    // Five Newton-Schulz steps of three products each, per tensor.
    assert_eq!(muon.run_products().unwrap(), 30);
    let mut adam = Optimizer::builder(rule("adam"))
        .backend(Backend::named("staged").unwrap())
        .tensors([("w", 10)])
        .build()
        .unwrap();
    assert_eq!(adam.run_products().unwrap(), 0);
}
