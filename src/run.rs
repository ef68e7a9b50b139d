//! `optc run`: trains an objective (stdlib/objectives.opt, or the user's)
//! with any optimizer rule, gradients from the objective's symbolic
//! derivative, and prints — and with `--plot` draws — the loss curve. It is
//! the quick check of a rule on a known landscape, and the proxy task an
//! optimizer search scores rules on.

use optc_compiler::objective::Objective;
use optc_runtime::Optimizer;

use crate::diff;
use crate::load::{self, Failure};

/// What `optc run` was asked to do.
pub struct Settings<'a> {
    pub file: &'a str,
    pub rule: Option<&'a str>,
    pub sets: &'a [String],
    pub objective: &'a str,
    pub objective_file: Option<&'a str>,
    pub objective_sets: &'a [String],
    pub numel: Option<usize>,
    pub steps: usize,
    pub every: usize,
    pub plot: Option<&'a str>,
}

/// The total loss before each step, then after the last; shorter when the
/// loss stopped being finite.
struct Curve {
    losses: Vec<f64>,
}

pub fn run(settings: &Settings<'_>) -> Result<String, Failure> {
    let (mut program, rule) = load::rule(settings.file, settings.rule)?;
    if let Some(path) = settings.objective_file {
        diff::add_file(&mut program, path)?;
    }
    let objective = diff::compile(&program, settings.objective)?;
    let hypers = objective
        .hyper_values(&objective_sets(settings.objective_sets)?)
        .map_err(|e| format!("error: {e}"))?;
    let numel = settings.numel.unwrap_or(objective.default_numel);
    if numel == 0 {
        return Err("error: --numel must be at least 1".into());
    }
    let rule_name = rule.name.clone();
    let mut optimizer = load::optimizer::<f32>(&mut program, rule, settings.sets)?;
    let curve = train(&objective, &hypers, numel, &mut optimizer, settings.steps)?;
    if let Some(path) = settings.plot {
        plot(&curve, &format!("{rule_name} on {}", objective.name), path)?;
    }
    Ok(report(&curve, &rule_name, &objective, numel, settings))
}

/// `--objective-set name=number` arguments.
fn objective_sets(sets: &[String]) -> Result<Vec<(String, f64)>, Failure> {
    sets.iter()
        .map(|set| {
            let parsed = set.split_once('=').and_then(|(name, value)| {
                Some((name.trim().to_string(), value.trim().parse().ok()?))
            });
            parsed.ok_or_else(|| format!("error: --objective-set expects NAME=NUMBER, got `{set}`"))
        })
        .collect()
}

/// Steps `optimizer` on the objective's params from their initial values.
fn train(
    objective: &Objective,
    hypers: &[f64],
    numel: usize,
    optimizer: &mut Optimizer<f32>,
    steps: usize,
) -> Result<Curve, Failure> {
    let mut params = objective
        .initial_params::<f32>(numel, hypers)
        .map_err(|e| format!("error: {e}"))?;
    let mut losses = Vec::with_capacity(steps + 1);
    for step in 0..=steps {
        let views: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
        let evaluation = objective
            .evaluate(&views, hypers)
            .map_err(|e| format!("error: {e}"))?;
        losses.push(evaluation.loss);
        if step == steps || !evaluation.loss.is_finite() {
            break;
        }
        let grads: Vec<&[f32]> = evaluation.gradients.iter().map(Vec::as_slice).collect();
        let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
        optimizer
            .step(&mut views, &grads)
            .map_err(|e| format!("error: {e}"))?;
    }
    Ok(Curve { losses })
}

/// The loss every `every` steps and at the end, and the final loss.
fn report(
    curve: &Curve,
    rule: &str,
    objective: &Objective,
    numel: usize,
    settings: &Settings<'_>,
) -> String {
    let mut out = format!(
        "{rule} on {} ({} param{} x {numel} element{}), {} steps\n{:>8}  {:>12}\n",
        objective.name,
        objective.params.len(),
        if objective.params.len() == 1 { "" } else { "s" },
        if numel == 1 { "" } else { "s" },
        settings.steps,
        "step",
        "loss"
    );
    let last = curve.losses.len() - 1;
    for (step, loss) in curve.losses.iter().enumerate() {
        if step % settings.every.max(1) == 0 || step == last {
            out.push_str(&format!("{step:>8}  {loss:>12.6e}\n"));
        }
    }
    let (first, final_loss) = (curve.losses[0], curve.losses[last]);
    if final_loss.is_finite() {
        out.push_str(&format!(
            "final loss {final_loss:.6e} after {last} steps (initial {first:.6e})\n"
        ));
    } else {
        out.push_str(&format!(
            "diverged: the loss is {final_loss} after {last} steps (initial {first:.6e})\n"
        ));
    }
    if let Some(path) = settings.plot {
        out.push_str(&format!("loss curve written to {path}\n"));
    }
    out
}

/// Writes the loss curve as an SVG line chart: log-scale loss when every
/// loss is positive, linear otherwise.
fn plot(curve: &Curve, title: &str, path: &str) -> Result<(), Failure> {
    use plotters::prelude::*;

    let points: Vec<(f64, f64)> = curve
        .losses
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(s, &l)| (s as f64, l))
        .collect();
    if points.is_empty() {
        return Err(format!("error: no finite loss to plot in {path}"));
    }
    let steps = (curve.losses.len().max(2) - 1) as f64;
    let (low, high) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, l)| {
            (lo.min(l), hi.max(l))
        });
    let failed = |e: &dyn std::fmt::Display| format!("error: cannot write the plot {path}: {e}");
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root);
    chart
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80);
    let style = ShapeStyle::from(&BLUE).stroke_width(2);
    if low > 0.0 {
        // Pad the range a little so a flat curve still has a height.
        let mut chart = chart
            .build_cartesian_2d(0.0..steps, (low / 1.5..high * 1.5).log_scale())
            .map_err(|e| failed(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss (log scale)")
            .draw()
            .map_err(|e| failed(&e))?;
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(|e| failed(&e))?;
    } else {
        let pad = ((high - low) * 0.05).max(1e-12);
        let mut chart = chart
            .build_cartesian_2d(0.0..steps, low - pad..high + pad)
            .map_err(|e| failed(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .map_err(|e| failed(&e))?;
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(|e| failed(&e))?;
    }
    root.present().map_err(|e| failed(&e))
}
