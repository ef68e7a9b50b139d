//! Proxy tasks: the small training problems a candidate is scored on. Each
//! trains the candidate compiled to kernels (an [`Optimizer`] on the
//! Cranelift backend, or the one the search was given) from a fixed start for a fixed number of full-batch
//! steps, with exact gradients: `.opt` objectives with symbolic gradients
//! (an ill-conditioned quadratic, Rosenbrock; both with their minimum moved
//! off round numbers, where a search found rules that snap parameters to 0
//! and 1) and models on real data
//! (logistic regression and MLP classifiers on the UCI breast-cancer and
//! digits sets, with a held-out split for the funnel).
//!
//! A rule is not judged by one bad step size: [`tune`] sweeps a log grid of
//! update scales (the new parameters are `p + s (p_rule - p)`, which is a
//! learning-rate multiplier for every rule whose step is proportional to its
//! learning rate) and keeps the best.

use std::sync::Arc;

use optc_compiler::ir::{BinaryOp, Hyper, Input, Kind, Node, Rule, ScalarExpr, Type};
use optc_compiler::objective::Objective;
use optc_compiler::Program;
use optc_runtime::{Backend, Optimizer};
use optc_tasks::{Dataset, Mlp, SoftmaxRegression, Task};

/// The name of the hyperparameter [`with_update_scale`] adds.
pub const UPDATE_SCALE: &str = "update_scale";

/// Exponents `k` of the coarse sweep: update scales `10^k`, then the best
/// one's half-decade neighbours. With the stdlib's default learning rates
/// (1e-3) this spans learning rates from 3e-6 to 3.
pub const COARSE_EXPONENTS: std::ops::RangeInclusive<i32> = -2..=3;

/// A run stops as diverged when the loss exceeds its initial value this
/// many times over (or stops being finite).
const DIVERGENCE_FACTOR: f64 = 1e4;

/// Which stage of the funnel a task belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Scored on every candidate.
    Cheap,
    /// Scored only on candidates that beat tuned SGD with momentum on every
    /// cheap task: larger, longer, or judged on held-out data.
    Funnel,
}

/// What a task trains.
pub enum Problem {
    /// An `.opt` objective (every param a tensor of `numel` elements).
    Objective {
        objective: Box<Objective>,
        hypers: Vec<f64>,
        numel: usize,
    },
    /// A model on a dataset; judged on `held_out` when there is one.
    Model {
        train: Box<dyn Task + Send + Sync>,
        held_out: Option<Box<dyn Task + Send + Sync>>,
    },
}

/// One proxy task.
pub struct ProxyTask {
    pub name: String,
    pub about: String,
    pub stage: Stage,
    pub steps: usize,
    pub problem: Problem,
}

/// One training run.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// The training loss before each step, then after the last; shorter
    /// when the run diverged.
    pub losses: Vec<f64>,
    /// What the task is judged by (lower is better): the final training
    /// loss, or the held-out loss; infinite when the run diverged.
    pub metric: f64,
}

/// The best run of a sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuned {
    pub metric: f64,
    /// The update scale that gave it.
    pub scale: f64,
}

impl ProxyTask {
    /// The task's parameters before training.
    fn initial_params(&self) -> Result<Vec<Vec<f32>>, String> {
        match &self.problem {
            Problem::Objective {
                objective,
                hypers,
                numel,
            } => objective.initial_params(*numel, hypers),
            Problem::Model { train, .. } => Ok(train.initial_params()),
        }
    }

    /// Training loss and gradients at `params`.
    fn loss_and_gradients(&self, params: &[Vec<f32>]) -> Result<(f64, Vec<Vec<f32>>), String> {
        match &self.problem {
            Problem::Objective {
                objective, hypers, ..
            } => {
                let views: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
                let evaluation = objective.evaluate(&views, hypers)?;
                Ok((evaluation.loss, evaluation.gradients))
            }
            Problem::Model { train, .. } => {
                let evaluation = train.evaluate(params);
                Ok((evaluation.loss, evaluation.grads))
            }
        }
    }

    /// Trains `rule` (with an [`UPDATE_SCALE`] hyperparameter, see
    /// [`with_update_scale`]) at update scale `scale`, compiling its kernels
    /// with `backend` (which caches them across calls).
    pub fn train(&self, rule: &Arc<Rule>, scale: f64, backend: &Backend) -> Result<Run, String> {
        let mut optimizer = Optimizer::builder(rule.clone())
            .set(UPDATE_SCALE, ScalarExpr::constant(scale))
            .backend(backend.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut params = self.initial_params()?;
        let mut losses = Vec::with_capacity(self.steps + 1);
        for step in 0..=self.steps {
            let (loss, gradients) = self.loss_and_gradients(&params)?;
            losses.push(loss);
            if !loss.is_finite() || loss > DIVERGENCE_FACTOR * losses[0].abs().max(1e-30) {
                return Ok(Run {
                    losses,
                    metric: f64::INFINITY,
                });
            }
            if step == self.steps {
                break;
            }
            let grads: Vec<&[f32]> = gradients.iter().map(Vec::as_slice).collect();
            let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
            optimizer
                .step::<f32>(&mut views, &grads)
                .map_err(|e| e.to_string())?;
        }
        let metric = match &self.problem {
            Problem::Model {
                held_out: Some(held_out),
                ..
            } => held_out.evaluate(&params).loss,
            _ => losses[losses.len() - 1],
        };
        Ok(Run {
            losses,
            metric: if metric.is_finite() {
                metric
            } else {
                f64::INFINITY
            },
        })
    }
}

/// Sweeps the update scale of `rule` (prepared by [`with_update_scale`]) on
/// `task`: `10^k` for k in [`COARSE_EXPONENTS`], then the best scale times
/// `10^-0.5` and `10^0.5`. The lowest metric wins; ties go to the earlier
/// scale, so the sweep is deterministic.
pub fn tune(task: &ProxyTask, rule: &Arc<Rule>, backend: &Backend) -> Result<Tuned, String> {
    let mut best: Option<Tuned> = None;
    let try_scale = |scale: f64, best: &mut Option<Tuned>| -> Result<(), String> {
        let metric = task.train(rule, scale, backend)?.metric;
        if best.is_none_or(|b| metric < b.metric) {
            *best = Some(Tuned { metric, scale });
        }
        Ok(())
    };
    for k in COARSE_EXPONENTS {
        try_scale(10f64.powi(k), &mut best)?;
    }
    let centre = best.map_or(1.0, |b| b.scale);
    let half_decade = 10f64.sqrt();
    try_scale(centre / half_decade, &mut best)?;
    try_scale(centre * half_decade, &mut best)?;
    best.ok_or_else(|| "empty sweep".to_string())
}

/// `rule` with its update scaled by a new hyperparameter [`UPDATE_SCALE`]
/// (default 1): the new parameters are `p + update_scale * (p_rule - p)`.
pub fn with_update_scale(rule: &Rule) -> Rule {
    let mut rule = rule.clone();
    let index = rule.hypers.len() as u32;
    rule.hypers.push(Hyper {
        name: UPDATE_SCALE.to_string(),
        kind: Kind::Float,
        default: Some(ScalarExpr::constant(1.0)),
    });
    let graph = &mut rule.graph;
    let scale = graph.add(Node::Input(Input::Hyper(index), Type::GROUP));
    let param = graph.add(Node::Input(Input::Param, Type::ELEM));
    let update = graph.add(Node::Binary(BinaryOp::Sub, rule.param_out, param));
    let scaled = graph.add(Node::Binary(BinaryOp::Mul, scale, update));
    rule.param_out = graph.add(Node::Binary(BinaryOp::Add, param, scaled));
    rule
}

/// The built-in proxy tasks: four cheap ones and two for the funnel.
pub fn builtin(prelude: &Program) -> Result<Vec<ProxyTask>, String> {
    let objective = |name: &str, sets: &[(&str, f64)], numel: usize| -> Result<Problem, String> {
        let objective = prelude
            .compile_objective(name)
            .map_err(|diagnostic| diagnostic.message)?;
        let sets: Vec<(String, f64)> = sets.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        let hypers = objective.hyper_values(&sets)?;
        Ok(Problem::Objective {
            objective: Box::new(objective),
            hypers,
            numel,
        })
    };
    let (cancer_train, cancer_held_out) = Dataset::builtin("breast_cancer")?.split(5);
    let (digits_train, digits_held_out) = Dataset::builtin("digits")?.split(5);
    let mlp = |data: &Dataset, hidden: usize| -> Box<dyn Task + Send + Sync> {
        Box::new(Mlp {
            data: data.clone(),
            hidden,
        })
    };
    Ok(vec![
        ProxyTask {
            name: "quadratic".into(),
            about: "ill-conditioned quadratic, kappa 100, 16 elements, minimum at 0.37".into(),
            stage: Stage::Cheap,
            steps: 100,
            problem: objective(
                "ill_conditioned_quadratic",
                &[("kappa", 100.0), ("center", 0.37)],
                16,
            )?,
        },
        ProxyTask {
            name: "rosenbrock".into(),
            about: "Rosenbrock's valley, a = 1.3: from (-1.2, 1) to (1.3, 1.69)".into(),
            stage: Stage::Cheap,
            steps: 200,
            problem: objective("rosenbrock", &[("a", 1.3)], 1)?,
        },
        ProxyTask {
            name: "logistic".into(),
            about: "logistic regression on breast cancer (455 examples), held-out loss".into(),
            stage: Stage::Cheap,
            steps: 60,
            problem: Problem::Model {
                train: Box::new(SoftmaxRegression::new(cancer_train.clone())),
                held_out: Some(Box::new(SoftmaxRegression::new(cancer_held_out.clone()))),
            },
        },
        ProxyTask {
            name: "mlp".into(),
            about: "MLP, 8 tanh units, 60 steps on breast cancer, held-out loss".into(),
            stage: Stage::Cheap,
            steps: 60,
            problem: Problem::Model {
                train: mlp(&cancer_train, 8),
                held_out: Some(mlp(&cancer_held_out, 8)),
            },
        },
        ProxyTask {
            name: "mlp_wide".into(),
            about: "MLP, 32 tanh units, 200 steps on breast cancer, held-out loss".into(),
            stage: Stage::Funnel,
            steps: 200,
            problem: Problem::Model {
                train: mlp(&cancer_train, 32),
                held_out: Some(mlp(&cancer_held_out, 32)),
            },
        },
        ProxyTask {
            name: "digits".into(),
            about: "MLP, 16 tanh units, 100 steps on digits (1437 examples), held-out loss".into(),
            stage: Stage::Funnel,
            steps: 100,
            problem: Problem::Model {
                train: mlp(&digits_train, 16),
                held_out: Some(mlp(&digits_held_out, 16)),
            },
        },
    ])
}
