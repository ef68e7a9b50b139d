//! The adjoint of a step through the runtime: the closed form for SGD, and
//! for Adam and LAMB the same cotangents as the reference interpreter
//! running the derived adjoint rule, on every registered backend (bit for
//! bit where the backend is exact, within f32 rounding of reordered sums
//! where it approximates).

use optc_compiler::derive;
use optc_compiler::interpret::{self, StepInputs, Value};
use optc_compiler::ir::{MatrixView, Shape};
use optc_runtime::adjoint::{AdjointStep, Cotangents};
use optc_runtime::{Backend, BACKENDS};

const NUMELS: [usize; 2] = [37, 5];

fn values(seed: u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + 1.0) * (seed as f32 * 0.37 + 1.1)).sin() * 0.8 + 0.05)
        .collect()
}

fn tensors(seed: u32) -> Vec<Vec<f32>> {
    NUMELS
        .iter()
        .enumerate()
        .map(|(i, &n)| values(seed + i as u32, n))
        .collect()
}

/// A state value of `shape` for `NUMELS`, positive (second moments stay valid).
fn state_value(shape: Shape, seed: u32) -> Value<f32> {
    match shape {
        Shape::Group => Value::Group(0.3),
        Shape::Tensor => Value::Tensor(vec![0.2, 0.4]),
        Shape::Elem => Value::Elem(
            tensors(seed)
                .into_iter()
                .map(|t| t.into_iter().map(f32::abs).collect())
                .collect(),
        ),
        Shape::Rows | Shape::Cols | Shape::Gram => {
            Value::Group(0.3).broadcast(shape, &MatrixView::vectors(&NUMELS))
        }
    }
}

fn adjoint_of(name: &str, backend: &Backend) -> (Cotangents, Vec<Value<f32>>) {
    let rule = optc_stdlib::prelude().compile(name).unwrap();
    let state: Vec<Value<f32>> = rule
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| state_value(s.shape, 10 + i as u32))
        .collect();
    let cotangent_state: Vec<Value<f32>> = rule
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| state_value(s.shape, 20 + i as u32))
        .collect();
    let (params, grads, cotangent) = (tensors(1), tensors(2), tensors(3));
    let view = |t: &[Vec<f32>]| -> Vec<Vec<f32>> { t.to_vec() };
    let params_ref: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
    let grads_ref: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    let cotangent_ref: Vec<&[f32]> = cotangent.iter().map(Vec::as_slice).collect();
    let mut step = AdjointStep::new(&rule, Vec::new(), backend, 2).unwrap();
    let result = step
        .vjp(
            3,
            &params_ref,
            &grads_ref,
            &state,
            &cotangent_ref,
            &cotangent_state,
        )
        .unwrap();

    // The interpreter on the adjoint rule, laid out as the module documents.
    let layout = derive::adjoint(&rule);
    let mut slots = state.clone();
    slots.push(Value::Elem(view(&cotangent)));
    slots.extend(cotangent_state.iter().cloned());
    for slot in &layout.rule.states[layout.adjoint_of_param..] {
        slots.push(Value::Group(0.0).broadcast(slot.shape, &MatrixView::vectors(&NUMELS)));
    }
    let hypers: Vec<f64> = layout
        .rule
        .hypers
        .iter()
        .map(|h| interpret::scalar(h.default.as_ref().unwrap(), 3, &[]))
        .collect();
    let out = interpret::step(
        &layout.rule,
        &StepInputs {
            params: &params_ref,
            grads: &grads_ref,
            step: 3,
            hypers: &hypers,
            state: Some(&slots),
            views: None,
        },
    )
    .unwrap();
    (result, out.state[layout.adjoint_of_param..].to_vec())
}

fn elems(value: &Value<f32>) -> Vec<Vec<f32>> {
    match value {
        Value::Elem(xs) => xs.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_adjoint_of_sgd_is_its_closed_form() {
    let (result, _) = adjoint_of("sgd", &Backend::named("reference").unwrap());
    let (grads, cotangent) = (tensors(2), tensors(3));
    let learning_rate = 1e-3f32;
    assert_eq!(result.params, cotangent, "d p_t / d p = 1");
    let expected: Vec<Vec<f32>> = cotangent
        .iter()
        .map(|t| t.iter().map(|&c| -c * learning_rate).collect())
        .collect();
    assert_eq!(result.grads, expected, "d p_t / d g = -lr");
    let dot: f64 = grads
        .iter()
        .flatten()
        .zip(cotangent.iter().flatten())
        .map(|(&g, &c)| f64::from(g) * f64::from(c))
        .sum();
    let (name, d_learning_rate) = &result.hypers[0];
    assert_eq!(name, "learning_rate");
    assert!(
        (d_learning_rate + dot).abs() < 1e-5 * dot.abs(),
        "{d_learning_rate} vs {}",
        -dot
    );
}

#[test]
fn adjoints_agree_with_the_interpreter_on_every_backend() {
    for name in ["adam", "lamb", "lion", "rmsprop_centered"] {
        for info in BACKENDS {
            let exact = !info.approximates;
            let backend = (info.open)().unwrap();
            let (result, expected) = adjoint_of(name, &backend);
            let close = |a: &[Vec<f32>], b: &[Vec<f32>]| {
                a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| {
                    if exact {
                        x.to_bits() == y.to_bits()
                    } else if x.is_nan() || y.is_nan() {
                        // rmsprop_centered's sqrt(nu - mu^2) is NaN where the
                        // arbitrary state has nu < mu^2: in both, the same way.
                        x.is_nan() && y.is_nan()
                    } else {
                        (x - y).abs() <= 1e-5 * y.abs().max(1e-3)
                    }
                })
            };
            let name = format!("{name} on {}", info.name);
            assert!(close(&result.params, &elems(&expected[0])), "{name}: adj_p");
            assert!(close(&result.grads, &elems(&expected[1])), "{name}: adj_g");
            for (i, value) in result.state.iter().enumerate() {
                if let (Value::Elem(got), Value::Elem(want)) = (value, &expected[2 + i]) {
                    assert!(close(got, want), "{name}: state {i}");
                }
            }
            assert!(!result.hypers.is_empty(), "{name}");
        }
    }
}
