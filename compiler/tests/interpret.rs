//! The reference interpreter's semantics, checked by hand-computed values:
//! evaluation order, state initialisation, reductions, broadcasting, the
//! f32/f64 split, and the conventions the manual states.

use expect_test::expect;
use optc_compiler::interpret::{self, StepInputs, StepOutputs, Value};
use optc_compiler::ir::{MatrixView, Rule};
use optc_compiler::{Origin, Program};

fn compile(source: &str) -> Rule {
    let mut program = Program::new();
    let file = program
        .add_source("test.opt", source.as_bytes(), Origin::User)
        .expect("parses");
    let name = program
        .optimizers_in(file)
        .last()
        .expect("an optimizer")
        .to_string();
    program
        .compile(&name)
        .unwrap_or_else(|d| panic!("{}", d.message))
}

fn defaults(rule: &Rule) -> Vec<f64> {
    let mut values = Vec::new();
    for hyper in &rule.hypers {
        let value = interpret::scalar(hyper.default.as_ref().expect("a default"), 1, &values);
        values.push(value);
    }
    values
}

fn run<F: interpret::Real>(
    rule: &Rule,
    params: &[Vec<F>],
    grads: &[Vec<F>],
    step: u64,
    state: Option<&[Value<F>]>,
) -> StepOutputs<F> {
    run_shaped(rule, params, grads, step, state, None).unwrap()
}

/// [`run`] for tensors of the given shapes (`None`: vectors).
fn run_shaped<F: interpret::Real>(
    rule: &Rule,
    params: &[Vec<F>],
    grads: &[Vec<F>],
    step: u64,
    state: Option<&[Value<F>]>,
    views: Option<&[MatrixView]>,
) -> Result<StepOutputs<F>, String> {
    let params: Vec<&[F]> = params.iter().map(Vec::as_slice).collect();
    let grads: Vec<&[F]> = grads.iter().map(Vec::as_slice).collect();
    interpret::step(
        rule,
        &StepInputs {
            params: &params,
            grads: &grads,
            step,
            hypers: &defaults(rule),
            state,
            views,
        },
    )
}

#[test]
fn ir_text_format() {
    let rule = compile(
        "optimizer lion(learning_rate = 1e-4, b1 = 0.9, b2 = 0.99, weight_decay = 0.0) {
            state mu = 0;
            let c = lerp(g, mu, b1);
            p -= learning_rate * (sign(c) + weight_decay * p);
            mu = lerp(g, mu, b2);
        }",
    );
    expect![[r#"
        optimizer lion
        hyper learning_rate = 1e-4
        hyper b1 = 0.9
        hyper b2 = 0.99
        hyper weight_decay = 0.0
        state mu: elem = v6
          v0: elem = p
          v1: elem = g
          v2: group = hyper learning_rate
          v3: group = hyper b1
          v4: group = hyper b2
          v5: group = hyper weight_decay
          v6: group = 0
          v7: elem = state mu
          v8: elem = lerp v1, v7, v3
          v9: elem = sign v8
          v10: elem = mul v5, v0
          v11: elem = add v9, v10
          v12: elem = mul v2, v11
          v13: elem = sub v0, v12
          v14: elem = lerp v1, v7, v4
        out p = v13
        out mu = v14
    "#]]
    .assert_eq(&rule.to_string());
}

#[test]
fn common_subexpressions_are_shared() {
    let rule = compile("optimizer o() { let a = g * g + 1; let b = g * g + 1; p -= a / b; }");
    let text = rule.to_string();
    assert_eq!(text.matches("mul v1, v1").count(), 1, "{text}");
}

#[test]
fn lion_matches_its_equations() {
    let rule = compile(
        "optimizer lion(learning_rate = 0.5, b1 = 0.9, b2 = 0.99, weight_decay = 0.0) {
            state mu = 0;
            let c = lerp(g, mu, b1);
            p -= learning_rate * (sign(c) + weight_decay * p);
            mu = lerp(g, mu, b2);
        }",
    );
    let out = run::<f32>(
        &rule,
        &[vec![1.0, 1.0, 1.0]],
        &[vec![2.0, -3.0, 0.0]],
        1,
        None,
    );
    assert_eq!(
        out.params,
        vec![vec![0.5, 1.5, 1.0]],
        "sign(0) = 0 leaves the third element"
    );
    let Value::Elem(mu) = &out.state[0] else {
        panic!("elem state")
    };
    assert_eq!(
        mu[0],
        vec![
            2.0f32 + 0.99f32 * (0.0 - 2.0),
            -3.0f32 + 0.99f32 * (0.0 + 3.0),
            0.0
        ]
    );
}

#[test]
fn state_initialised_from_first_gradient_at_its_declaration() {
    // torch's SGD momentum buffer: the (decayed) first gradient, then an average.
    let rule = compile(
        "optimizer sgd(learning_rate = 0.5, momentum = 0.5, weight_decay = 1.0) {
            g += weight_decay * p;
            state buf = g;
            buf = if t == 1 { buf } else { momentum * buf + g };
            p -= learning_rate * buf;
        }",
    );
    let first = run::<f64>(&rule, &[vec![1.0]], &[vec![2.0]], 1, None);
    assert_eq!(
        first.state[0],
        Value::Elem(vec![vec![3.0]]),
        "g + p on the first step"
    );
    assert_eq!(first.params, vec![vec![1.0 - 0.5 * 3.0]]);
    let second = run::<f64>(&rule, &first.params, &[vec![2.0]], 2, Some(&first.state));
    let buf = 0.5 * 3.0 + (2.0 + -0.5);
    assert_eq!(second.state[0], Value::Elem(vec![vec![buf]]));
    assert_eq!(second.params, vec![vec![-0.5 - 0.5 * buf]]);
}

#[test]
fn reductions_see_values_at_their_program_point() {
    let rule = compile(
        "optimizer o() {
            state before: tensor = 0;
            state after: tensor = 0;
            before = sum(p);
            p -= g;
            after = sum(p);
        }",
    );
    let out = run::<f32>(
        &rule,
        &[vec![1.0, 2.0], vec![10.0]],
        &[vec![1.0, 1.0], vec![1.0]],
        1,
        None,
    );
    assert_eq!(out.state[0], Value::Tensor(vec![3.0, 10.0]));
    assert_eq!(out.state[1], Value::Tensor(vec![1.0, 9.0]));
}

#[test]
fn group_reductions_span_all_tensors() {
    let rule = compile(
        "optimizer clip(max_norm = 1.0) {
            g *= min(1, max_norm / group_norm(g));
            p -= g;
        }",
    );
    let out = run::<f64>(
        &rule,
        &[vec![0.0, 0.0], vec![0.0]],
        &[vec![3.0, 0.0], vec![4.0]],
        1,
        None,
    );
    let scale = 1.0f64 / 5.0;
    assert_eq!(
        out.params,
        vec![vec![-(3.0 * scale), 0.0], vec![-(4.0 * scale)]]
    );
}

#[test]
fn mean_numel_and_max_reductions() {
    let rule = compile(
        "optimizer o() {
            state m: tensor = 0;
            state top: group = 0;
            m = mean(g) * numel;
            top = group_max(abs(g));
        }",
    );
    let out = run::<f32>(
        &rule,
        &[vec![0.0; 3], vec![0.0]],
        &[vec![1.0, -7.0, 2.0], vec![5.0]],
        1,
        None,
    );
    assert_eq!(out.state[0], Value::Tensor(vec![-4.0, 5.0]));
    assert_eq!(out.state[1], Value::Group(7.0));
}

#[test]
fn scalars_are_f64_and_round_once_where_they_meet_elements() {
    let rule = compile("optimizer o(b = 0.1) { p += (1 - b) / 3; }");
    let out = run::<f32>(&rule, &[vec![0.0]], &[vec![0.0]], 1, None);
    assert_eq!(out.params[0][0], ((1.0f64 - 0.1) / 3.0) as f32);
    assert_ne!(
        out.params[0][0],
        (1.0f32 - 0.1f32) / 3.0f32,
        "not computed in f32"
    );
}

#[test]
fn elementwise_work_rounds_to_f32_or_runs_in_f64() {
    let rule = compile("optimizer o() { p = p / 3 * 3; }");
    let f32_out = run::<f32>(&rule, &[vec![0.1]], &[vec![0.0]], 1, None);
    let f64_out = run::<f64>(&rule, &[vec![0.1]], &[vec![0.0]], 1, None);
    assert_eq!(f32_out.params[0][0], 0.1f32 / 3.0 * 3.0);
    assert_eq!(f64_out.params[0][0], 0.1f64 / 3.0 * 3.0);
}

#[test]
fn conventions_of_sign_min_max_and_select() {
    let rule = compile(
        "optimizer o() {
            state s = 0; state lo = 0; state hi = 0; state pick = 0;
            s = sign(g);
            lo = min(g, 0);
            hi = max(g, 0);
            pick = if g >= 0 && !(g > 1) { 1 } else { -1 };
        }",
    );
    let grads = vec![vec![0.0, -0.0, f32::NAN, 2.0, -3.0]];
    let out = run::<f32>(&rule, &[vec![0.0; 5]], &grads, 1, None);
    let Value::Elem(s) = &out.state[0] else {
        panic!()
    };
    assert_eq!(&s[0][..2], &[0.0, 0.0]);
    assert!(s[0][2].is_nan(), "sign(NaN) = NaN");
    assert_eq!(&s[0][3..], &[1.0, -1.0]);
    let Value::Elem(lo) = &out.state[1] else {
        panic!()
    };
    assert_eq!(lo[0][2], 0.0, "min ignores NaN");
    let Value::Elem(hi) = &out.state[2] else {
        panic!()
    };
    assert_eq!(hi[0][3], 2.0);
    let Value::Elem(pick) = &out.state[3] else {
        panic!()
    };
    assert_eq!(
        pick[0],
        vec![1.0, 1.0, -1.0, -1.0, -1.0],
        "comparisons with NaN are false"
    );
}

#[test]
fn use_binds_hyperparameters_and_shares_state() {
    let mut program = Program::new();
    let file = program
        .add_source(
            "t.opt",
            b"optimizer sgdm(learning_rate = 0.1, momentum = 0.9) { state mu = 0; mu = momentum * mu + g; p -= learning_rate * mu; }
              optimizer decayed(weight_decay = 0.5, learning_rate = 0.1) { p -= learning_rate * weight_decay * p; use sgdm(momentum = 0.5); }
              optimizer plain() { use sgdm; }",
            Origin::User,
        )
        .unwrap();
    assert_eq!(
        program.optimizers_in(file),
        vec!["sgdm", "decayed", "plain"]
    );
    let plain = program.compile("plain").unwrap();
    let names: Vec<&str> = plain.hypers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["learning_rate", "momentum"],
        "unbound hyperparameters join the signature"
    );
    let rule = program.compile("decayed").unwrap();
    let names: Vec<&str> = rule.hypers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["weight_decay", "learning_rate"],
        "bound by name or by argument"
    );
    assert_eq!(rule.states.len(), 1);
    let out = run::<f64>(&rule, &[vec![1.0]], &[vec![1.0]], 1, None);
    assert_eq!(out.params[0][0], 1.0 - 0.1 * 0.5 - 0.1 * 1.0);
}

#[test]
fn schedules_are_scalar_programs_of_t() {
    let mut program = Program::new();
    program
        .add_source(
            "s.opt",
            b"fn halve_every(init_value, steps) { init_value * 0.5^floor((t - 1) / steps) }",
            Origin::Prelude,
        )
        .unwrap();
    let schedule = program
        .compile_scalar("--set", "halve_every(8, steps = 2)")
        .unwrap();
    let values: Vec<f64> = (1..=6)
        .map(|t| interpret::scalar(&schedule, t, &[]))
        .collect();
    assert_eq!(values, vec![8.0, 8.0, 4.0, 4.0, 2.0, 2.0]);
}

#[test]
fn a_used_rules_later_defaults_read_the_values_its_use_binds() {
    let inner = "optimizer inner(a = 1, b = a * 2) { p -= a * b * g; }\n";
    let step = |outer: &str| {
        let rule = compile(&format!("{inner}{outer}"));
        let out = run::<f64>(&rule, &[vec![0.0]], &[vec![1.0]], 1, None);
        (rule.hypers.len(), out.params[0][0])
    };
    // b = 3 * 2, whatever the outer rule's own `a` is.
    assert_eq!(step("optimizer outer() { use inner(a = 3); }"), (0, -18.0));
    assert_eq!(
        step("optimizer outer(a = 100) { use inner(a = 3); }"),
        (1, -18.0)
    );
    // Unbound, `a` stays a hyperparameter and `b` one whose default reads it.
    assert_eq!(step("optimizer outer() { use inner(); }"), (2, -2.0));
}

/// A 2 x 3 matrix and a vector of 2 (one row of 2 columns).
fn matrix_and_vector() -> [MatrixView; 2] {
    [MatrixView::of_dims(&[2, 3]), MatrixView::of_dims(&[2])]
}

#[test]
fn row_and_column_reductions_see_a_tensor_as_a_matrix() {
    let rule = compile(
        "optimizer o() {
            state rs: rows = 0;
            state cs: cols = 0;
            state rm: rows = 0;
            state cm: cols = 0;
            state sizes: tensor = 0;
            rs = row_sum(g);
            cs = col_sum(g);
            rm = row_max(g);
            cm = col_mean(g);
            sizes = 100 * rank + 10 * nrows + ncols;
        }",
    );
    let grads = [vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], vec![7.0, 8.0]];
    let params = [vec![0.0f32; 6], vec![0.0; 2]];
    let out = run_shaped(&rule, &params, &grads, 1, None, Some(&matrix_and_vector())).unwrap();
    assert_eq!(out.state[0], Value::Rows(vec![vec![6.0, 15.0], vec![15.0]]));
    assert_eq!(
        out.state[1],
        Value::Cols(vec![vec![5.0, 7.0, 9.0], vec![7.0, 8.0]])
    );
    assert_eq!(out.state[2], Value::Rows(vec![vec![3.0, 6.0], vec![8.0]]));
    assert_eq!(
        out.state[3],
        Value::Cols(vec![vec![2.5, 3.5, 4.5], vec![7.0, 8.0]])
    );
    assert_eq!(out.state[4], Value::Tensor(vec![223.0, 112.0]));
}

#[test]
fn a_row_value_times_a_column_value_is_their_outer_product() {
    let rule = compile(
        "optimizer o() {
            p = row_sum(g) * col_max(g) + mean(row_sum(g));
        }",
    );
    let grads = [vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], vec![7.0, 8.0]];
    let params = [vec![0.0f32; 6], vec![0.0; 2]];
    let out = run_shaped(&rule, &params, &grads, 1, None, Some(&matrix_and_vector())).unwrap();
    // Row sums (6, 15) and column maxima (4, 5, 6); the mean of the row sums
    // broadcast over the elements is 10.5.
    assert_eq!(
        out.params,
        vec![
            vec![34.5, 40.5, 46.5, 70.5, 85.5, 100.5],
            vec![15.0 * 7.0 + 15.0, 15.0 * 8.0 + 15.0],
        ]
    );
}

#[test]
fn tensors_without_shapes_are_vectors() {
    let rule = compile(
        "optimizer o() { state r: rows = 0; state c: cols = 0; r = row_sum(g); c = col_sum(g); }",
    );
    let out = run::<f32>(&rule, &[vec![0.0; 3]], &[vec![1.0, 2.0, 4.0]], 1, None);
    assert_eq!(out.state[0], Value::Rows(vec![vec![7.0]]));
    assert_eq!(out.state[1], Value::Cols(vec![vec![1.0, 2.0, 4.0]]));
    let wrong = [MatrixView::of_dims(&[2, 2])];
    let error = run_shaped(
        &rule,
        &[vec![0.0f32; 3]],
        &[vec![0.0; 3]],
        1,
        None,
        Some(&wrong),
    )
    .unwrap_err();
    assert_eq!(error, "tensor shapes do not match the parameters' lengths");
    // State of a per-row slot must have one value per row.
    let state = [
        Value::Rows(vec![vec![1.0, 2.0]]),
        Value::Cols(vec![vec![0.0; 3]]),
    ];
    let error = run_shaped(
        &rule,
        &[vec![0.0f32; 3]],
        &[vec![0.0; 3]],
        2,
        Some(&state),
        None,
    )
    .unwrap_err();
    assert_eq!(error, "state does not match the rule and parameters");
}

#[test]
fn higher_ranks_fold_their_leading_dimensions_into_rows() {
    assert_eq!(
        MatrixView::of_dims(&[2, 3, 4]),
        MatrixView {
            rank: 3,
            rows: 6,
            cols: 4
        }
    );
    assert_eq!(
        MatrixView::of_dims(&[]),
        MatrixView {
            rank: 0,
            rows: 1,
            cols: 1
        }
    );
    assert_eq!(MatrixView::of_dims(&[5]), MatrixView::vector(5));
    assert_eq!(MatrixView::of_dims(&[0, 3]).numel(), 0);
}

#[test]
fn gram_matrices_and_products_work_on_the_wide_orientation() {
    let rule = compile(
        "optimizer o() {
            state trace: tensor = 0;
            let a = gram(g);
            trace = sum(a * 0 + transpose(gram(g, p)));
            p = matmul(a, g);
        }",
    );
    // A 2 x 3 matrix and its transpose, 3 x 2: the same wide orientation.
    let x = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let xt = vec![1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0];
    let views = [MatrixView::of_dims(&[2, 3]), MatrixView::of_dims(&[3, 2])];
    let params = [vec![1.0f32; 6], vec![1.0; 6]];
    let out = run_shaped(&rule, &params, &[x, xt], 1, None, Some(&views)).unwrap();
    // gram = [[14, 32], [32, 77]]; gram times the matrix, in its own orientation.
    assert_eq!(
        out.params,
        vec![
            vec![142.0, 188.0, 234.0, 340.0, 449.0, 558.0],
            vec![142.0, 340.0, 188.0, 449.0, 234.0, 558.0],
        ]
    );
    // gram(g, p) with p all ones: row sums of the wide g, (6, 15), in each row.
    assert_eq!(out.state[0], Value::Tensor(vec![42.0, 42.0]));
}

#[test]
fn bf16_rounds_to_nearest_even() {
    let rule = compile("optimizer o() { p = bf16(g); }");
    let grads = vec![1.0f32 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -3.0e38, f32::NAN];
    let out = run::<f32>(&rule, &[vec![0.0; 4]], &[grads], 1, None);
    // 1 + 2^-8 is a tie (to 1), 1 + 3 2^-8 rounds up to 1 + 2^-6; a NaN stays NaN.
    assert_eq!(out.params[0][0], 1.0);
    assert_eq!(out.params[0][1], 1.0 + 1.0 / 64.0);
    assert_eq!(out.params[0][2], f32::from_bits(0xFF62_0000));
    assert!(out.params[0][3].is_nan());
}
