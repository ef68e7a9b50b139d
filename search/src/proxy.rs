//! Proxy tasks: the small training problems a candidate is scored on. Each
//! trains the candidate compiled to kernels (an [`Optimizer`] on the
//! Cranelift backend, or the one the search was given) from a fixed start
//! for a fixed number of steps: `.opt` objectives with symbolic gradients
//! (an ill-conditioned quadratic, Rosenbrock; both with their minimum moved
//! off round numbers, where a search found rules that snap parameters to 0
//! and 1), and models on real data (logistic regression and MLP classifiers
//! on the UCI breast-cancer and digits sets, full batch with exact
//! gradients or on minibatches in a seeded order, judged on a held-out
//! split). [`held_out`] tasks never enter the fitness: they give the
//! verdict on a winner.
//!
//! A rule is not judged by one bad step size: [`tune`] sweeps a log grid of
//! update scales (the new parameters are `p + s (p_rule - p)`, which is a
//! learning-rate multiplier for every rule whose step is proportional to its
//! learning rate) under each [`Schedule`] of the scale (constant, and
//! optax's linear warm-up + cosine decay), and keeps the best: every
//! candidate and every baseline gets the same schedules, so a rule that
//! builds its own warm-up earns nothing a schedule would not have given the
//! baselines.

use std::sync::Arc;

use optc_compiler::ir::{BinaryOp, Hyper, Input, Kind, Node, Rule, ScalarExpr, Type};
use optc_compiler::objective::Objective;
use optc_compiler::Program;
use optc_runtime::{Backend, Optimizer};
use optc_tasks::network::{Network, NetworkRun, LIBER_PRIMUS};
use optc_tasks::{Dataset, Mlp, SoftmaxRegression, Task};
use serde::{Deserialize, Serialize};

use crate::parallel;
use crate::rng::Rng;

/// The name of the hyperparameter [`with_update_scale`] adds.
pub const UPDATE_SCALE: &str = "update_scale";

/// Exponents `k` of the coarse sweep: update scales `10^k`, then the best
/// one's half-decade neighbours. With the stdlib's default learning rates
/// (1e-3) this spans learning rates from 3e-6 to 3.
pub const COARSE_EXPONENTS: std::ops::RangeInclusive<i32> = -2..=3;

/// Training runs per [`tune`]: the coarse scales under every schedule,
/// then two refinements.
pub const SWEEP_RUNS: usize = COARSE_EXPONENTS_LEN * Schedule::ALL.len() + 2;
const COARSE_EXPONENTS_LEN: usize =
    (*COARSE_EXPONENTS.end() - *COARSE_EXPONENTS.start() + 1) as usize;

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
    /// Never part of the fitness: the verdict on a winner ([`held_out`]).
    HeldOut,
}

/// What a task trains.
pub enum Problem {
    /// Parameters in host vectors, stepped there.
    Host(HostProblem),
    /// A candle network (a conv net, a character transformer) trained on
    /// its minibatches in its fixed order, its parameters stepped in place
    /// in candle's buffer; judged on its held-out loss.
    Network(Box<Network>),
}

/// A problem whose parameters and gradients are host vectors.
pub enum HostProblem {
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
    /// A model trained on minibatches (stochastic gradients): step `k`
    /// evaluates `batches[k]` (see [`minibatches`]); judged on `held_out`.
    Minibatch {
        batches: Vec<Box<dyn Task + Send + Sync>>,
        held_out: Box<dyn Task + Send + Sync>,
    },
}

/// `steps` minibatches of `size` examples of `data` in the order of `seed`
/// (see [`batch_order`]), each the model `model` makes of it.
pub fn minibatches(
    data: &Dataset,
    size: usize,
    steps: usize,
    seed: u64,
    model: impl Fn(Dataset) -> Box<dyn Task + Send + Sync>,
) -> Vec<Box<dyn Task + Send + Sync>> {
    batch_order(data.labels.len(), size, steps, seed)
        .iter()
        .map(|indices| model(data.subset(indices)))
        .collect()
}

/// The example indices of `steps` minibatches of `size` out of `examples`:
/// each epoch visits them in an order shuffled by a stream seeded with
/// `seed` (Fisher-Yates), in whole batches (an epoch's last partial batch
/// is dropped). Empty when there are no examples.
pub fn batch_order(examples: usize, size: usize, steps: usize, seed: u64) -> Vec<Vec<usize>> {
    if examples == 0 {
        return Vec::new();
    }
    let size = size.clamp(1, examples);
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..examples).collect();
    let mut batches = Vec::with_capacity(steps);
    while batches.len() < steps {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for chunk in order.chunks_exact(size) {
            if batches.len() == steps {
                break;
            }
            batches.push(chunk.to_vec());
        }
    }
    batches
}

/// How the update scale changes over a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// The same scale on every step.
    Constant,
    /// optax's `warmup_cosine_decay_schedule(0, scale, steps / 10, steps)`:
    /// linear from 0 over the first tenth of the run, then cosine decay to 0
    /// at its end.
    WarmupCosine,
}

impl Schedule {
    pub const ALL: [Schedule; 2] = [Schedule::Constant, Schedule::WarmupCosine];

    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::WarmupCosine => "warmup_cosine",
        }
    }
}

/// One proxy task.
pub struct ProxyTask {
    pub name: String,
    pub about: String,
    pub stage: Stage,
    pub steps: usize,
    pub problem: Problem,
    /// [`Schedule::WarmupCosine`] over `steps` with peak 1.
    warmup_cosine: ScalarExpr,
}

/// Objectives' losses are floored here before their geometric mean.
pub const LOSS_FLOOR: f64 = 1e-30;

/// An objective's metric: the geometric mean of its losses over the run
/// (each floored at [`LOSS_FLOOR`]), the area under the log-loss curve.
/// Judged by the final loss alone, many rules reach the exact minimum of
/// the quadratic in float32 (loss 0) and tie; the mean also ranks how fast
/// they get there.
pub fn geometric_mean_loss(losses: &[f64]) -> f64 {
    let logs: f64 = losses.iter().map(|l| l.max(LOSS_FLOOR).ln()).sum();
    (logs / losses.len().max(1) as f64).exp()
}

/// One training run.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// The training loss before each step, then after the last; shorter
    /// when the run diverged.
    pub losses: Vec<f64>,
    /// What the task is judged by (lower is better): for an objective, the
    /// [`geometric_mean_loss`] of the run; for a model, the held-out loss
    /// (the final training loss without a held-out set); infinite when the
    /// run diverged.
    pub metric: f64,
}

/// The best run of a sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuned {
    pub metric: f64,
    /// The (peak) update scale that gave it.
    pub scale: f64,
    pub schedule: Schedule,
}

impl ProxyTask {
    /// A task trained for `steps` steps; `prelude` provides the schedules.
    pub fn new(
        prelude: &Program,
        name: &str,
        about: &str,
        stage: Stage,
        steps: usize,
        problem: Problem,
    ) -> Result<ProxyTask, String> {
        let warmup = (steps / 10).max(1);
        let warmup_cosine = prelude
            .clone()
            .compile_scalar(
                UPDATE_SCALE,
                &format!("warmup_cosine_decay(0, 1, {warmup}, {steps})"),
            )
            .map_err(|diagnostic| diagnostic.message)?;
        Ok(ProxyTask {
            name: name.to_string(),
            about: about.to_string(),
            stage,
            steps,
            problem,
            warmup_cosine,
        })
    }

    /// The [`UPDATE_SCALE`] value for a run at `scale` under `schedule`.
    fn update_scale(&self, scale: f64, schedule: Schedule) -> ScalarExpr {
        match schedule {
            Schedule::Constant => ScalarExpr::constant(scale),
            Schedule::WarmupCosine => {
                let mut expr = self.warmup_cosine.clone();
                let peak = expr.graph.add(Node::constant(scale));
                expr.output = expr
                    .graph
                    .add(Node::Binary(BinaryOp::Mul, peak, expr.output));
                expr.text = format!("{scale:?} * {}", expr.text);
                expr
            }
        }
    }

    /// A run from the task's initial parameters.
    fn start(&self) -> Result<Trainee<'_>, String> {
        let problem = match &self.problem {
            Problem::Host(problem) => problem,
            Problem::Network(network) => return Ok(Trainee::Network(network.start()?)),
        };
        let params = match problem {
            HostProblem::Objective {
                objective,
                hypers,
                numel,
            } => objective.initial_params(*numel, hypers)?,
            HostProblem::Model { train, .. } => train.initial_params(),
            HostProblem::Minibatch { batches, .. } => batches
                .first()
                .map(|batch| batch.initial_params())
                .ok_or_else(|| "a minibatch task without batches".to_string())?,
        };
        Ok(Trainee::Host {
            problem,
            params,
            gradients: Vec::new(),
        })
    }

    /// Trains `rule` (with an [`UPDATE_SCALE`] hyperparameter, see
    /// [`with_update_scale`]) at update scale `scale` under `schedule`,
    /// compiling its kernels with `backend` (which caches them across calls).
    pub fn train(
        &self,
        rule: &Arc<Rule>,
        scale: f64,
        schedule: Schedule,
        backend: &Backend,
    ) -> Result<Run, String> {
        let mut optimizer = Optimizer::builder(rule.clone())
            .set(UPDATE_SCALE, self.update_scale(scale, schedule))
            .backend(backend.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut trainee = self.start()?;
        let mut losses = Vec::with_capacity(self.steps + 1);
        for step in 0..=self.steps {
            let loss = trainee.loss(step)?;
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
            trainee.step(&mut optimizer)?;
        }
        let metric = trainee.metric(&losses)?;
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

/// The parameters of one training run, and how they are stepped.
enum Trainee<'a> {
    /// Parameters in host vectors, with the gradients of the last loss.
    Host {
        problem: &'a HostProblem,
        params: Vec<Vec<f32>>,
        gradients: Vec<Vec<f32>>,
    },
    /// A candle network's own parameter buffer.
    Network(NetworkRun<'a>),
}

impl Trainee<'_> {
    /// The training loss before step `step` (from 0; on the minibatch of
    /// that step), keeping its gradients for [`Trainee::step`].
    fn loss(&mut self, step: usize) -> Result<f64, String> {
        match self {
            Trainee::Host {
                problem,
                params,
                gradients,
            } => {
                let (loss, grads) = match problem {
                    HostProblem::Objective {
                        objective, hypers, ..
                    } => {
                        let views: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
                        let evaluation = objective.evaluate(&views, hypers)?;
                        (evaluation.loss, evaluation.gradients)
                    }
                    HostProblem::Model { train, .. } => {
                        let evaluation = train.evaluate(params);
                        (evaluation.loss, evaluation.grads)
                    }
                    HostProblem::Minibatch { batches, .. } => {
                        let evaluation = batches[step.min(batches.len() - 1)].evaluate(params);
                        (evaluation.loss, evaluation.grads)
                    }
                };
                *gradients = grads;
                Ok(loss)
            }
            Trainee::Network(run) => run.loss(step),
        }
    }

    /// One step of `optimizer` with the last loss's gradients.
    fn step(&mut self, optimizer: &mut Optimizer) -> Result<(), String> {
        match self {
            Trainee::Host {
                params, gradients, ..
            } => {
                let grads: Vec<&[f32]> = gradients.iter().map(Vec::as_slice).collect();
                let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
                optimizer
                    .step::<f32>(&mut views, &grads)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Trainee::Network(run) => run.step(optimizer),
        }
    }

    /// What the task is judged by after a run with training `losses`.
    fn metric(&self, losses: &[f64]) -> Result<f64, String> {
        Ok(match self {
            Trainee::Host {
                problem, params, ..
            } => match problem {
                HostProblem::Model {
                    held_out: Some(held_out),
                    ..
                }
                | HostProblem::Minibatch { held_out, .. } => held_out.evaluate(params).loss,
                HostProblem::Objective { .. } => geometric_mean_loss(losses),
                HostProblem::Model { held_out: None, .. } => losses[losses.len() - 1],
            },
            Trainee::Network(run) => run.held_out_loss()?,
        })
    }
}

/// Sweeps the update scale of `rule` (prepared by [`with_update_scale`]) on
/// `task`: `10^k` for k in [`COARSE_EXPONENTS`] under every [`Schedule`],
/// then the best scale times `10^-0.5` and `10^0.5` under the best
/// schedule (14 runs). The lowest metric wins; ties go to the earlier run
/// (constant before warm-up), so the sweep is deterministic.
pub fn tune(task: &ProxyTask, rule: &Arc<Rule>, backend: &Backend) -> Result<Tuned, String> {
    tune_all(&[(task, rule)], &mut [backend.clone()], |backend| &*backend).remove(0)
}

/// [`tune`] for every (task, rule) of `jobs`, with the runs of all the
/// sweeps spread over `workers` (one thread each; `backend` gives a
/// worker's backend): the coarse runs of every job at once, then every
/// refinement, so that a single candidate's sweep keeps every thread
/// busy. Each result is exactly what [`tune`] gives, in job order, on any
/// number of workers.
pub fn tune_all<W: Send>(
    jobs: &[(&ProxyTask, &Arc<Rule>)],
    workers: &mut [W],
    backend: impl Fn(&mut W) -> &Backend + Sync,
) -> Vec<Result<Tuned, String>> {
    let mut train = |runs: &[(usize, (f64, Schedule))]| {
        parallel::map(&mut *workers, runs, |worker, &(job, (scale, schedule))| {
            let (task, rule) = jobs[job];
            task.train(rule, scale, schedule, backend(worker))
                .map(|run| run.metric)
        })
    };
    let coarse = coarse_runs();
    let units: Vec<(usize, (f64, Schedule))> = (0..jobs.len())
        .flat_map(|job| coarse.iter().map(move |&run| (job, run)))
        .collect();
    let metrics = train(&units);
    let centres: Vec<Result<Tuned, String>> = metrics
        .chunks(coarse.len().max(1))
        .map(|chunk| best_run(None, &coarse, chunk))
        .collect();
    let refinements: Vec<(usize, (f64, Schedule))> = centres
        .iter()
        .enumerate()
        .filter_map(|(job, centre)| Some((job, refinement_runs(*centre.as_ref().ok()?))))
        .flat_map(|(job, runs)| runs.into_iter().map(move |run| (job, run)))
        .collect();
    let metrics = train(&refinements);
    let mut refined = refinements.chunks(2).zip(metrics.chunks(2));
    centres
        .into_iter()
        .map(|centre| {
            let centre = centre?;
            let (runs, metrics) = refined.next().ok_or("a refinement went missing")?;
            let runs: Vec<(f64, Schedule)> = runs.iter().map(|&(_, run)| run).collect();
            best_run(Some(centre), &runs, metrics)
        })
        .collect()
}

/// The coarse runs of a sweep, in the order ties are broken: every scale
/// `10^k` of [`COARSE_EXPONENTS`] under each [`Schedule`] in turn.
fn coarse_runs() -> Vec<(f64, Schedule)> {
    Schedule::ALL
        .iter()
        .flat_map(|&schedule| COARSE_EXPONENTS.map(move |k| (10f64.powi(k), schedule)))
        .collect()
}

/// The runs that refine a sweep around its best coarse run: that scale's
/// half-decade neighbours under its schedule.
fn refinement_runs(centre: Tuned) -> [(f64, Schedule); 2] {
    let half_decade = 10f64.sqrt();
    [
        (centre.scale / half_decade, centre.schedule),
        (centre.scale * half_decade, centre.schedule),
    ]
}

/// The best of `best` and `runs` with their `metrics`: the lowest metric,
/// the earlier run on ties; the first failed run is the result.
fn best_run(
    mut best: Option<Tuned>,
    runs: &[(f64, Schedule)],
    metrics: &[Result<f64, String>],
) -> Result<Tuned, String> {
    for (&(scale, schedule), metric) in runs.iter().zip(metrics) {
        let metric = metric.clone()?;
        if best.is_none_or(|b| metric < b.metric) {
            best = Some(Tuned {
                metric,
                scale,
                schedule,
            });
        }
    }
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

/// An MLP with `hidden` tanh units on `data`.
fn mlp(data: &Dataset, hidden: usize) -> Box<dyn Task + Send + Sync> {
    Box::new(Mlp {
        data: data.clone(),
        hidden,
    })
}

/// The minibatch task on breast cancer with the data order of `seed`.
fn cancer_minibatches(seed: u64) -> Result<Problem, String> {
    let (train, held_out) = Dataset::builtin("breast_cancer")?.split(5);
    Ok(Problem::Host(HostProblem::Minibatch {
        batches: minibatches(&train, 32, MINIBATCH_STEPS + 1, seed, |batch| {
            mlp(&batch, 8)
        }),
        held_out: mlp(&held_out, 8),
    }))
}

/// A model judged on the held-out fifth of `dataset`.
fn held_out_model(dataset: &str, hidden: usize) -> Result<Problem, String> {
    let (train, held_out) = Dataset::builtin(dataset)?.split(5);
    Ok(Problem::Host(HostProblem::Model {
        train: mlp(&train, hidden),
        held_out: Some(mlp(&held_out, hidden)),
    }))
}

/// The held-out tasks: never scored during a search, only in the verdict
/// on a winner (`eval ID --held-out`, `save`): another dataset, a horizon
/// ten times longer, another width, other data orders of the minibatch
/// task and of the conv net, and another kind of model (a character-level
/// transformer on real text, the slowest task: seconds per run). A
/// rule that beats AdamW on its own tasks but not here has
/// overfit them.
pub fn held_out(prelude: &Program) -> Result<Vec<ProxyTask>, String> {
    Ok(vec![
        ProxyTask::new(
            prelude,
            "wine",
            "MLP, 16 tanh units, 100 steps on UCI wine (143 examples), held-out loss",
            Stage::HeldOut,
            100,
            held_out_model("wine", 16)?,
        )?,
        ProxyTask::new(
            prelude,
            "mlp_long",
            "the `mlp` task ten times longer: 600 steps",
            Stage::HeldOut,
            600,
            held_out_model("breast_cancer", 8)?,
        )?,
        ProxyTask::new(
            prelude,
            "mlp_64",
            "the `mlp` task eight times wider: 64 tanh units",
            Stage::HeldOut,
            60,
            held_out_model("breast_cancer", 64)?,
        )?,
        ProxyTask::new(
            prelude,
            "minibatch_seed1",
            "the `mlp_minibatch` task with the data order of seed 1",
            Stage::HeldOut,
            MINIBATCH_STEPS,
            cancer_minibatches(1)?,
        )?,
        ProxyTask::new(
            prelude,
            "minibatch_seed2",
            "the `mlp_minibatch` task with the data order of seed 2",
            Stage::HeldOut,
            MINIBATCH_STEPS,
            cancer_minibatches(2)?,
        )?,
        ProxyTask::new(
            prelude,
            "conv_seed1",
            "the `conv_digits` task with the data order of seed 1",
            Stage::HeldOut,
            CONV_STEPS,
            conv_digits(1, CONV_STEPS)?,
        )?,
        ProxyTask::new(
            prelude,
            "char_transformer",
            "1-layer transformer (width 32, 32 characters of context), 1000 steps of 16 windows of Cicero's De finibus I, held-out loss on its last tenth",
            Stage::HeldOut,
            CHAR_STEPS,
            char_transformer(0, CHAR_STEPS)?,
        )?,
    ])
}

/// Steps of the minibatch task (about 14 epochs of the breast-cancer
/// training set).
const MINIBATCH_STEPS: usize = 200;

/// Steps of the conv-net task (about 7 epochs of the digits training set).
const CONV_STEPS: usize = 300;

/// Steps of the character-transformer task.
const CHAR_STEPS: usize = 1000;

/// The conv net (8 and 16 channels) on the digits training split,
/// minibatches of 32 in the order of `seed`, judged on the held-out fifth.
fn conv_digits(seed: u64, steps: usize) -> Result<Problem, String> {
    let (train, held_out) = Dataset::builtin("digits")?.split(5);
    let order = batch_order(train.labels.len(), 32, steps + 1, seed);
    Ok(Problem::Network(Box::new(Network::conv_net(
        &train, &held_out, &order, 8,
    )?)))
}

/// The character transformer (width 32, 32 characters of context) on
/// Cicero's text, minibatches of 16 windows in the order of `seed`, judged
/// on the text's last tenth.
fn char_transformer(seed: u64, steps: usize) -> Result<Problem, String> {
    const CONTEXT: usize = 32;
    let windows = Network::training_windows(LIBER_PRIMUS, CONTEXT);
    let order = batch_order(windows, 16, steps + 1, seed);
    Ok(Problem::Network(Box::new(Network::char_transformer(
        LIBER_PRIMUS,
        &order,
        CONTEXT,
        32,
    )?)))
}

/// The built-in proxy tasks: five cheap ones (one on minibatches) and three
/// for the funnel (one a conv net on minibatches).
pub fn builtin(prelude: &Program) -> Result<Vec<ProxyTask>, String> {
    let objective = |name: &str, sets: &[(&str, f64)], numel: usize| -> Result<Problem, String> {
        let objective = prelude
            .compile_objective(name)
            .map_err(|diagnostic| diagnostic.message)?;
        let sets: Vec<(String, f64)> = sets.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        let hypers = objective.hyper_values(&sets)?;
        Ok(Problem::Host(HostProblem::Objective {
            objective: Box::new(objective),
            hypers,
            numel,
        }))
    };
    let (cancer_train, cancer_held_out) = Dataset::builtin("breast_cancer")?.split(5);
    let (digits_train, digits_held_out) = Dataset::builtin("digits")?.split(5);
    Ok(vec![
        ProxyTask::new(
            prelude,
            "quadratic",
            "ill-conditioned quadratic, kappa 100, 16 elements, minimum at 0.37 + 0.3 cos(2.3 i + 0.5)",
            Stage::Cheap,
            100,
            objective(
                "ill_conditioned_quadratic",
                &[("kappa", 100.0), ("center", 0.37), ("spread", 0.3)],
                16,
            )?,
        )?,
        ProxyTask::new(
            prelude,
            "rosenbrock",
            "Rosenbrock's valley, a = 1.3: from (-1.2, 1) to (1.3, 1.69)",
            Stage::Cheap,
            200,
            objective("rosenbrock", &[("a", 1.3)], 1)?,
        )?,
        ProxyTask::new(
            prelude,
            "logistic",
            "logistic regression on breast cancer (455 examples), held-out loss",
            Stage::Cheap,
            60,
            Problem::Host(HostProblem::Model {
                train: Box::new(SoftmaxRegression::new(cancer_train.clone())),
                held_out: Some(Box::new(SoftmaxRegression::new(cancer_held_out.clone()))),
            }),
        )?,
        ProxyTask::new(
            prelude,
            "mlp",
            "MLP, 8 tanh units, 60 steps on breast cancer, held-out loss",
            Stage::Cheap,
            60,
            Problem::Host(HostProblem::Model {
                train: mlp(&cancer_train, 8),
                held_out: Some(mlp(&cancer_held_out, 8)),
            }),
        )?,
        ProxyTask::new(
            prelude,
            "mlp_minibatch",
            "MLP, 8 tanh units, 200 steps of minibatches of 32 on breast cancer (fixed order), held-out loss",
            Stage::Cheap,
            MINIBATCH_STEPS,
            cancer_minibatches(0)?,
        )?,
        ProxyTask::new(
            prelude,
            "mlp_wide",
            "MLP, 32 tanh units, 200 steps on breast cancer, held-out loss",
            Stage::Funnel,
            200,
            Problem::Host(HostProblem::Model {
                train: mlp(&cancer_train, 32),
                held_out: Some(mlp(&cancer_held_out, 32)),
            }),
        )?,
        ProxyTask::new(
            prelude,
            "digits",
            "MLP, 16 tanh units, 100 steps on digits (1437 examples), held-out loss",
            Stage::Funnel,
            100,
            Problem::Host(HostProblem::Model {
                train: mlp(&digits_train, 16),
                held_out: Some(mlp(&digits_held_out, 16)),
            }),
        )?,
        ProxyTask::new(
            prelude,
            "conv_digits",
            "conv net (8 and 16 channels) on the digits images, 300 steps of minibatches of 32 (fixed order), held-out loss",
            Stage::Funnel,
            CONV_STEPS,
            conv_digits(0, CONV_STEPS)?,
        )?,
    ])
}
