//! Objectives (stdlib/objectives.opt, `optc diff`, `optc run`): symbolic
//! gradients agree with finite differences, training reduces the loss, the
//! loss curve is plotted, and bad input is a clear error.

mod common;

use common::optc;
use optc_compiler::objective::Objective;

/// Every objective of the standard library, compiled.
fn stdlib_objectives() -> Vec<Objective> {
    let program = optc_stdlib::prelude();
    let names = program.objectives();
    assert!(names.len() >= 4, "{names:?}");
    names
        .iter()
        .map(|name| {
            program
                .compile_objective(name)
                .unwrap_or_else(|d| panic!("{name}: {}", d.message))
        })
        .collect()
}

/// Deterministic uniform numbers in [-1, 1).
fn uniform(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

#[test]
fn gradients_match_central_differences_for_every_stdlib_objective() {
    let mut seed = 7;
    for objective in stdlib_objectives() {
        let hypers = objective.hyper_values(&[]).unwrap();
        let numel = objective.default_numel.min(9);
        for _ in 0..5 {
            // A random point near the start, where the objectives are smooth.
            let mut params = objective.initial_params::<f64>(numel, &hypers).unwrap();
            for x in params.iter_mut().flatten() {
                *x += uniform(&mut seed);
            }
            let loss_at = |params: &[Vec<f64>]| {
                let views: Vec<&[f64]> = params.iter().map(Vec::as_slice).collect();
                objective.evaluate(&views, &hypers).unwrap()
            };
            let symbolic = loss_at(&params).gradients;
            for i in 0..params.len() {
                for j in 0..numel {
                    let h = 1e-6 * params[i][j].abs().max(1.0);
                    let mut shifted = params.clone();
                    shifted[i][j] += h;
                    let up = loss_at(&shifted).loss;
                    shifted[i][j] -= 2.0 * h;
                    let down = loss_at(&shifted).loss;
                    let numeric = (up - down) / (2.0 * h);
                    let exact = symbolic[i][j];
                    assert!(
                        (numeric - exact).abs() <= 1e-5 * exact.abs().max(1.0),
                        "{}: d/d {}[{j}] at {params:?}: symbolic {exact}, central difference {numeric}",
                        objective.name,
                        objective.params[i].name,
                    );
                }
            }
        }
    }
}

#[test]
fn stdlib_objectives_have_their_documented_values() {
    let program = optc_stdlib::prelude();
    let rosenbrock = program.compile_objective("rosenbrock").unwrap();
    let hypers = rosenbrock.hyper_values(&[]).unwrap();
    let start = rosenbrock.initial_params::<f64>(1, &hypers).unwrap();
    assert_eq!(start, vec![vec![-1.2], vec![1.0]]);
    let views: Vec<&[f64]> = start.iter().map(Vec::as_slice).collect();
    assert!((rosenbrock.evaluate(&views, &hypers).unwrap().loss - 24.2).abs() < 1e-12);
    let at_minimum = rosenbrock.evaluate(&[&[1.0], &[1.0]], &hypers).unwrap();
    assert_eq!(at_minimum.loss, 0.0);
    assert_eq!(at_minimum.gradients, vec![vec![0.0], vec![0.0]]);
    // A hyperparameter set by name changes the landscape: b = 10 at the start.
    let steeper = rosenbrock.hyper_values(&[("b".into(), 10.0)]).unwrap();
    let loss = rosenbrock.evaluate(&views, &steeper).unwrap().loss;
    assert!((loss - (2.2f64.powi(2) + 10.0 * 0.44f64.powi(2))).abs() < 1e-12);
    assert!(rosenbrock.hyper_values(&[("c".into(), 1.0)]).is_err());

    let beale = program.compile_objective("beale").unwrap();
    let minimum = beale.evaluate(&[&[3.0], &[0.5]], &[]).unwrap();
    assert_eq!(minimum.loss, 0.0);

    // The quadratic's curvatures run from 1 to kappa: the start's loss is
    // half their sum.
    let quadratic = program
        .compile_objective("ill_conditioned_quadratic")
        .unwrap();
    let hypers = quadratic.hyper_values(&[]).unwrap();
    let n = quadratic.default_numel;
    let x = quadratic.initial_params::<f64>(n, &hypers).unwrap();
    let expected: f64 = (0..n)
        .map(|i| 0.5 * 1000f64.powf(i as f64 / (n - 1) as f64))
        .sum();
    let loss = quadratic.evaluate(&[&x[0]], &hypers).unwrap().loss;
    assert!(
        (loss - expected).abs() < 1e-9 * expected,
        "{loss} vs {expected}"
    );

    let logistic = program.compile_objective("logistic_regression").unwrap();
    let hypers = logistic.hyper_values(&[]).unwrap();
    let w = logistic.initial_params::<f64>(100, &hypers).unwrap();
    let loss = logistic.evaluate(&[&w[0]], &hypers).unwrap().loss;
    assert!((loss - 100.0 * 2f64.ln()).abs() < 1e-9, "{loss}");
}

/// The "final loss" and "initial" figures of `optc run` output.
fn final_and_initial(stdout: &str) -> (f64, f64) {
    let figure = |after: &str| -> f64 {
        let rest = stdout
            .split(after)
            .nth(1)
            .unwrap_or_else(|| panic!("{stdout}"));
        rest.split([' ', ')']).next().unwrap().parse().unwrap()
    };
    (figure("final loss "), figure("(initial "))
}

#[test]
fn running_sgd_and_adam_on_rosenbrock_reduces_the_loss_by_orders_of_magnitude() {
    for (rule, learning_rate) in [("sgd", "1e-3"), ("adam", "0.01")] {
        let set = format!("learning_rate={learning_rate}");
        let (code, stdout, stderr) = optc(&[
            "run",
            rule,
            "--objective",
            "rosenbrock",
            "--steps",
            "2000",
            "--set",
            &set,
        ]);
        assert_eq!(code, 0, "{stderr}");
        let (last, first) = final_and_initial(&stdout);
        assert_eq!(first, 24.2, "{stdout}");
        assert!(last < first * 1e-2, "{rule}: {stdout}");
        assert!(
            stdout.contains("    1000  "),
            "the loss every 100 steps:\n{stdout}"
        );
    }
}

#[test]
fn run_plots_the_loss_curve_as_svg() {
    let dir = std::env::temp_dir().join(format!("optc-objectives-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("loss.svg");
    let path_text = path.to_string_lossy().into_owned();
    let (code, stdout, stderr) = optc(&[
        "run",
        "adam",
        "--objective",
        "ill_conditioned_quadratic",
        "--numel",
        "20",
        "--steps",
        "300",
        "--set",
        "learning_rate=0.05",
        "--every",
        "100",
        "--plot",
        &path_text,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 param x 20 elements"), "{stdout}");
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("<polyline"), "the curve is drawn");
    assert!(svg.contains("loss (log scale)"), "log-scale axis");
}

#[test]
fn diff_prints_the_loss_and_each_gradient() {
    let (code, stdout, stderr) = optc(&["diff", "rosenbrock"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("loss e1 * e1 + b * (e2 * e2);"), "{stdout}");
    assert!(stdout.contains("let e2 = y - x * x;"), "{stdout}");
    assert!(stdout.contains("d loss / d x = "), "{stdout}");
    assert!(stdout.contains("d loss / d y = "), "{stdout}");
    let (code, named, _) = optc(&["diff", "stdlib", "--objective", "rosenbrock"]);
    assert_eq!((code, named), (0, stdout));
}

#[test]
fn user_objectives_train_from_their_own_file() {
    let dir = std::env::temp_dir().join(format!("optc-user-objective-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bowl.opt");
    std::fs::write(
        &path,
        "/// A shifted bowl.\nobjective bowl(centre = 3, numel = 4) {\n    param x = index;\n    loss (x - centre)^2;\n}\n",
    )
    .unwrap();
    let path_text = path.to_string_lossy().into_owned();
    let (code, stdout, stderr) = optc(&["diff", &path_text]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("param x = index;"), "{stdout}");
    assert!(stdout.contains("let e1 = x - centre;"), "{stdout}");
    assert!(stdout.contains("d loss / d x = e1 + e1"), "{stdout}");
    let (code, stdout, stderr) = optc(&[
        "run",
        "sgd",
        "--objective",
        "bowl",
        "--objective-file",
        &path_text,
        "--steps",
        "100",
        "--set",
        "learning_rate=0.1",
        "--objective-set",
        "centre=1",
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 0, "{stderr}");
    let (last, first) = final_and_initial(&stdout);
    assert_eq!(
        first,
        1.0 + 0.0 + 1.0 + 4.0,
        "x = 0, 1, 2, 3 around 1: {stdout}"
    );
    assert!(last < 1e-12, "{stdout}");
}

#[test]
fn bad_objective_arguments_are_clear_errors() {
    let (code, _, stderr) = optc(&["run", "adam", "--objective", "rosenbrok"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no objective named `rosenbrok`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rosenbrock"),
        "lists the known ones: {stderr}"
    );

    let (code, _, stderr) = optc(&["run", "adam", "--objective", "adam"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("`adam` is an optimizer, not an objective"),
        "{stderr}"
    );

    let (code, _, stderr) = optc(&["run", "adam", "--objective", "beale", "--numel", "0"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--numel must be at least 1"), "{stderr}");

    let (code, _, stderr) = optc(&[
        "run",
        "adam",
        "--objective",
        "rosenbrock",
        "--objective-set",
        "c=2",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no hyperparameter `c`"), "{stderr}");

    let (code, _, stderr) = optc(&["diff", "stdlib"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--objective"), "{stderr}");

    let (code, _, stderr) = optc(&["diff", "tests/diagnostics/objective_missing_loss.opt"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("objective `bowl` has no `loss`"),
        "{stderr}"
    );
}

/// The loss after `steps` steps of `rule` at `learning_rate` (infinite if the
/// run diverged), with extra `sets`.
fn final_loss(rule: &str, objective: &str, learning_rate: f64, sets: &[String]) -> f64 {
    let mut args = vec![
        "run".to_string(),
        rule.to_string(),
        "--objective".into(),
        objective.into(),
        "--steps".into(),
        "300".into(),
        "--set".into(),
        format!("learning_rate={learning_rate}"),
    ];
    for set in sets {
        args.extend(["--set".to_string(), set.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = optc(&args);
    assert_eq!(code, 0, "{stderr}");
    if stdout.contains("diverged") {
        f64::INFINITY
    } else {
        final_and_initial(&stdout).0
    }
}

/// Hypergradient descent's promise: started from a learning rate 10x too
/// small or 10x too large (around the best fixed rate of a half-decade grid
/// for 300 steps: SGD 1e-3 on the quadratic, Adam 1 on Rosenbrock), the
/// multiplicative hypergradient variant ends lower than the fixed rate.
#[test]
fn hypergradient_variants_recover_from_rates_ten_times_off() {
    let dir = std::env::temp_dir().join(format!("optc-hypergradient-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("sgd", "ill_conditioned_quadratic", 1e-3, "0.1"),
        ("adam", "rosenbrock", 1.0, "0.05"),
    ];
    for (rule, objective, tuned, step) in cases {
        let path = dir.join(format!("hd_{rule}.opt"));
        let path = path.to_string_lossy().into_owned();
        let (code, _, stderr) = optc(&[
            "derive",
            "hypergrad",
            "--multiplicative",
            "--wrt",
            "learning_rate",
            rule,
            "-o",
            &path,
        ]);
        assert_eq!(code, 0, "{stderr}");
        for factor in [0.1, 10.0] {
            let learning_rate = tuned * factor;
            let fixed = final_loss(rule, objective, learning_rate, &[]);
            let adapted = final_loss(
                &path,
                objective,
                learning_rate,
                &[format!("hypergrad_lr={step}")],
            );
            assert!(
                adapted.is_finite() && adapted < fixed / 10.0,
                "{rule} on {objective} from {learning_rate}: fixed {fixed}, hypergradient {adapted}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
