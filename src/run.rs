//! `optc run`: trains an objective (stdlib/objectives.opt, or the user's)
//! with any optimizer rule, gradients from the objective's symbolic
//! derivative, and prints — and with `--plot` draws — the loss curve. It is
//! the quick check of a rule on a known landscape, and the proxy task an
//! optimizer search scores rules on.

use optc_compiler::objective::Objective;
use optc_runtime::Optimizer;

use crate::diff;
use crate::load::{self, Failure};
use crate::plot;

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
    pub execution: &'a crate::load::Execution,
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
    // The interpreter keeps every node of the objective's graph (loss and
    // gradients) per element while it evaluates: that, before it allocates.
    let per_element = 8 * objective.graph.len().max(1);
    optc_runtime::memory::ensure(
        optc_runtime::memory::bytes_of(numel, per_element),
        &format!("{} on tensors of {numel} elements", objective.name),
    )
    .map_err(|e| format!("error: {e} (use a smaller --numel)"))?;
    let rule_name = rule.name.clone();
    let tensors = objective.params.iter().map(|p| (p.name.clone(), numel));
    let builder = load::builder(&mut program, rule, settings.sets, settings.execution, false)?
        .tensors(tensors);
    let mut optimizer = load::build(builder)?;
    let curve = train(&objective, &hypers, numel, &mut optimizer, settings.steps)?;
    if let Some(path) = settings.plot {
        let title = format!("{rule_name} on {}", objective.name);
        plot::loss_curves(&title, &[(rule_name.clone(), curve.losses.clone())], path)?;
    }
    Ok(report(
        &curve, &rule_name, &objective, numel, &optimizer, settings,
    ))
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
    optimizer: &mut Optimizer,
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
    optimizer: &Optimizer,
    settings: &Settings<'_>,
) -> String {
    let mut out = format!(
        "{rule} on {} ({} param{} x {numel} element{}), {} steps, {} backend\n{}{:>8}  {:>12}\n",
        objective.name,
        objective.params.len(),
        if objective.params.len() == 1 { "" } else { "s" },
        if numel == 1 { "" } else { "s" },
        settings.steps,
        optimizer.backend(),
        load::describe_groups(optimizer),
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
