//! Fitness: what the search maximises. [`Fitness`] is the interface the
//! evolution calls (a pure function of the rule, run on several threads,
//! each with its own worker); [`ProxyFitness`] is the real one: every
//! candidate is trained on the proxy tasks with a learning-rate and
//! schedule sweep, and each task's tuned loss is normalised against SGD with
//! momentum (the floor) and AdamW (the baseline to beat) tuned with the same
//! sweep, so tasks of very different loss scales count alike. Candidates that beat tuned SGD with momentum on every cheap task
//! go through the funnel (larger tasks, held-out data) and only those can
//! become the search's best.

use std::sync::Arc;

use optc_compiler::ir::Rule;
use optc_compiler::Program;
use optc_runtime::Backend;
use serde::{Deserialize, Serialize};

use crate::parallel;
use crate::proxy::{self, ProxyTask, Schedule, Stage, Tuned};

/// How good a rule is. `score` must be deterministic (the same rule, the
/// same score, on any thread).
pub trait Fitness: Sync {
    /// Per-thread scratch: a JIT and its kernel cache, say.
    type Worker: Send;
    fn worker(&self) -> Self::Worker;
    fn score(&self, worker: &mut Self::Worker, rule: &Rule) -> Score;

    /// The scores of `rules` in order, on one thread per worker; the same
    /// as [`Fitness::score`] of each. A fitness whose scoring splits into
    /// independent parts spreads those over the threads.
    fn score_all(&self, workers: &mut [Self::Worker], rules: &[&Rule]) -> Vec<Score> {
        parallel::map(workers, rules, |worker, rule| self.score(worker, rule))
    }
}

/// One task's result for a candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub task: String,
    /// The tuned metric (loss; lower is better; infinite when every scale diverged).
    pub metric: f64,
    /// The (peak) update scale that gave it.
    pub scale: f64,
    /// The schedule of the scale that gave it.
    pub schedule: Schedule,
    /// `r = (ln L_sgdm - ln L) / max(|ln L_sgdm - ln L_adamw|, MIN_SPAN)`:
    /// 0 at tuned SGD with momentum, +-1 at tuned AdamW (+1 when AdamW is
    /// better; nearer 0 when the two are within a factor e^MIN_SPAN); below
    /// 0 clamped at -NORMALISED_FLOOR, above 1 compressed towards
    /// NORMALISED_CEILING by [`compress`].
    pub normalised: f64,
}

/// A candidate's score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// What selection compares (higher is better; never NaN).
    pub fitness: f64,
    /// The fitness over every task, cheap and funnel, for a candidate that
    /// went through the funnel.
    pub promoted: Option<f64>,
    pub tasks: Vec<TaskScore>,
}

impl Score {
    /// A plain fitness value, with no tasks and no funnel (NaN becomes -inf).
    pub fn plain(fitness: f64) -> Score {
        Score {
            fitness: if fitness.is_nan() {
                f64::NEG_INFINITY
            } else {
                fitness
            },
            promoted: None,
            tasks: Vec::new(),
        }
    }

    /// The value that ranks candidates for "best": the funnel fitness when
    /// there is one, else the selection fitness.
    pub fn value(&self) -> f64 {
        self.promoted.unwrap_or(self.fitness)
    }

    /// Whether `self` ranks above `other` as a best candidate: a promoted
    /// score above every unpromoted one, then the higher value.
    pub fn beats(&self, other: &Score) -> bool {
        match (self.promoted.is_some(), other.promoted.is_some()) {
            (true, false) => true,
            (false, true) => false,
            _ => self.value() > other.value(),
        }
    }

    /// The score on task `name`, if it was run.
    pub fn task(&self, name: &str) -> Option<&TaskScore> {
        self.tasks.iter().find(|t| t.task == name)
    }
}

/// Normalised task scores lie in [-NORMALISED_FLOOR, NORMALISED_CEILING): a
/// diverged run scores the floor, and a program cannot buy a high fitness by
/// beating AdamW far on one task (an early search found sign-descent
/// variants that reach 1e-8 on the quadratic and lose everywhere else).
pub const NORMALISED_FLOOR: f64 = 4.0;
pub const NORMALISED_CEILING: f64 = 2.0;

/// A raw normalised score `r` on the task scale: unchanged up to 1 (tuned
/// AdamW), then `C - (C - 1) / (1 + ln r)` for the ceiling `C`, which rises
/// with `r` without ever reaching the ceiling (slope 1 at 1; 1.5 at r = e,
/// 1.8 at r = 55, 1.9 at r = 8100), so programs better than AdamW stay
/// ranked: a hard ceiling once gave every program of a search the same
/// fitness within seconds.
pub fn compress(raw: f64) -> f64 {
    if raw <= 1.0 {
        return raw.max(-NORMALISED_FLOOR);
    }
    NORMALISED_CEILING - (NORMALISED_CEILING - 1.0) / (1.0 + raw.ln())
}

/// The smallest |log SGD-momentum loss - log AdamW loss| used as the unit,
/// so a task where both baselines nearly tie does not turn small
/// differences into large scores.
pub const MIN_SPAN: f64 = 0.5;

/// The baselines, by the stdlib names of their rules.
pub const BASELINE_RULES: [&str; 2] = ["sgd_momentum", "adamw"];

/// The tuned baselines on one task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Baseline {
    pub sgd_momentum: Tuned,
    pub adamw: Tuned,
}

/// Fitness from the proxy tasks.
pub struct ProxyFitness {
    tasks: Vec<ProxyTask>,
    baselines: Vec<Baseline>,
    /// The backend candidates are trained on (`--backend` names).
    backend: String,
}

/// A thread's backend; opened afresh every [`RUNS_PER_BACKEND`] training
/// runs (about 300 candidates' sweeps), so the code of candidates long gone
/// is freed with its kernel cache.
pub struct ProxyWorker {
    name: String,
    backend: Backend,
    runs: usize,
}

const RUNS_PER_BACKEND: usize = 4096;

impl ProxyWorker {
    /// A worker on the backend called `name` (the fastest, if it cannot
    /// be opened).
    pub fn new(name: &str) -> ProxyWorker {
        ProxyWorker {
            name: name.to_string(),
            backend: open(name),
            runs: 0,
        }
    }

    /// The backend to train the next run with.
    pub fn backend_for_next_run(&mut self) -> &Backend {
        self.runs += 1;
        if self.runs > RUNS_PER_BACKEND {
            self.backend = open(&self.name);
            self.runs = 1;
        }
        &self.backend
    }
}

/// `threads` workers (at least one) on the backend called `backend`.
fn workers(backend: &str, threads: usize) -> Vec<ProxyWorker> {
    (0..threads.max(1))
        .map(|_| ProxyWorker::new(backend))
        .collect()
}

fn open(name: &str) -> Backend {
    Backend::named(name).unwrap_or_else(|_| Backend::fastest())
}

impl ProxyFitness {
    /// Tunes the baselines (on `threads` threads, with the backend called
    /// `backend`) and returns the fitness.
    pub fn new(
        tasks: Vec<ProxyTask>,
        prelude: &Program,
        threads: usize,
        backend: &str,
    ) -> Result<ProxyFitness, String> {
        // Funnel tasks are only reached through cheap ones (a fitness of
        // held-out tasks alone is a verdict, scored task by task).
        if tasks.iter().all(|t| t.stage == Stage::Funnel) {
            return Err("choose at least one cheap task".into());
        }
        Backend::named(backend).map_err(|e| e.to_string())?;
        let rules: Vec<Arc<Rule>> = BASELINE_RULES
            .iter()
            .map(|name| {
                let rule = prelude
                    .compile(name)
                    .map_err(|diagnostic| diagnostic.message)?;
                Ok(Arc::new(proxy::with_update_scale(&rule)))
            })
            .collect::<Result<_, String>>()?;
        let jobs: Vec<(&ProxyTask, &Arc<Rule>)> = tasks
            .iter()
            .flat_map(|task| rules.iter().map(move |rule| (task, rule)))
            .collect();
        let mut workers = workers(backend, threads);
        let tuned = proxy::tune_all(&jobs, &mut workers, ProxyWorker::backend_for_next_run);
        let tuned = tuned.into_iter().collect::<Result<Vec<Tuned>, String>>()?;
        let baselines = tuned
            .chunks(rules.len())
            .map(|pair| Baseline {
                sgd_momentum: pair[0],
                adamw: pair[1],
            })
            .collect();
        Ok(ProxyFitness {
            tasks,
            baselines,
            backend: backend.to_string(),
        })
    }

    pub fn tasks(&self) -> &[ProxyTask] {
        &self.tasks
    }

    /// A fresh handle on the backend candidates are trained on.
    pub fn backend(&self) -> Backend {
        open(&self.backend)
    }

    pub fn baselines(&self) -> &[Baseline] {
        &self.baselines
    }

    /// The index of the task called `name`.
    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.name == name)
    }

    /// A metric on task `task` on the normalised scale (see [`TaskScore`]).
    pub fn normalise(&self, task: usize, metric: f64) -> f64 {
        let log = |x: f64| x.clamp(1e-300, 1e300).ln();
        let baseline = &self.baselines[task];
        let reference = log(baseline.sgd_momentum.metric);
        let span = (reference - log(baseline.adamw.metric)).abs().max(MIN_SPAN);
        compress((reference - log(metric)) / span)
    }

    /// One worker per thread, `threads` of them (at least one).
    pub fn workers(&self, threads: usize) -> Vec<ProxyWorker> {
        workers(&self.backend, threads)
    }

    /// Tunes `rule` (prepared by [`proxy::with_update_scale`]) on the tasks
    /// at `indices`, on `threads` threads (the order of the result is that
    /// of `indices`, whatever the threads).
    pub fn score_tasks(
        &self,
        rule: &Arc<Rule>,
        indices: &[usize],
        threads: usize,
    ) -> Vec<TaskScore> {
        let mut workers = self.workers(threads);
        let jobs: Vec<(&Arc<Rule>, usize)> = indices.iter().map(|&task| (rule, task)).collect();
        self.score_jobs(&mut workers, &jobs)
    }

    /// Tunes each (rule, task index) of `jobs` (rules prepared by
    /// [`proxy::with_update_scale`]), the runs spread over `workers`; a
    /// sweep that fails (a rule that does not compile for the task) scores
    /// as diverged.
    fn score_jobs(
        &self,
        workers: &mut [ProxyWorker],
        jobs: &[(&Arc<Rule>, usize)],
    ) -> Vec<TaskScore> {
        let sweeps: Vec<(&ProxyTask, &Arc<Rule>)> = jobs
            .iter()
            .map(|&(rule, task)| (&self.tasks[task], rule))
            .collect();
        let tuned = proxy::tune_all(&sweeps, workers, ProxyWorker::backend_for_next_run);
        jobs.iter()
            .zip(tuned)
            .map(|(&(_, task), tuned)| {
                let tuned = tuned.unwrap_or(Tuned {
                    metric: f64::INFINITY,
                    scale: 1.0,
                    schedule: Schedule::Constant,
                });
                TaskScore {
                    task: self.tasks[task].name.clone(),
                    metric: tuned.metric,
                    scale: tuned.scale,
                    schedule: tuned.schedule,
                    normalised: self.normalise(task, tuned.metric),
                }
            })
            .collect()
    }

    /// The indices of the tasks of `stage`.
    fn stage(&self, stage: Stage) -> Vec<usize> {
        (0..self.tasks.len())
            .filter(|&task| self.tasks[task].stage == stage)
            .collect()
    }
}

/// The mean normalised score, where a shortfall below tuned SGD with
/// momentum counts twice: the funnel asks for a program above it on every
/// task, and selection pulls the same way.
pub fn fitness_of(scores: &[TaskScore]) -> f64 {
    let count = scores.len().max(1) as f64;
    let mean = scores.iter().map(|s| s.normalised).sum::<f64>() / count;
    let shortfall = scores.iter().map(|s| s.normalised.min(0.0)).sum::<f64>() / count;
    mean + shortfall
}

impl Fitness for ProxyFitness {
    type Worker = ProxyWorker;

    fn worker(&self) -> ProxyWorker {
        ProxyWorker::new(&self.backend)
    }

    /// [`fitness_of`] the cheap tasks; for a candidate above tuned SGD with
    /// momentum on every one of them, also the funnel tasks, and `promoted`
    /// is [`fitness_of`] all tasks.
    fn score(&self, worker: &mut ProxyWorker, rule: &Rule) -> Score {
        self.score_all(std::slice::from_mut(worker), &[rule])
            .remove(0)
    }

    /// Every candidate's cheap tasks at once, then the funnel tasks of
    /// those promoted, each stage's runs spread over all threads.
    fn score_all(&self, workers: &mut [ProxyWorker], rules: &[&Rule]) -> Vec<Score> {
        let rules: Vec<Arc<Rule>> = rules
            .iter()
            .map(|rule| Arc::new(proxy::with_update_scale(rule)))
            .collect();
        let rules = &rules;
        // Each candidate's scores on the tasks of `stage`, in task order.
        let scores_on = |stage: Stage, candidates: &[usize], workers: &mut [ProxyWorker]| {
            let tasks = self.stage(stage);
            let jobs: Vec<(&Arc<Rule>, usize)> = candidates
                .iter()
                .flat_map(|&candidate| tasks.iter().map(move |&task| (&rules[candidate], task)))
                .collect();
            let mut scores = self.score_jobs(workers, &jobs).into_iter();
            candidates
                .iter()
                .map(|_| scores.by_ref().take(tasks.len()).collect())
                .collect::<Vec<Vec<TaskScore>>>()
        };
        let everyone: Vec<usize> = (0..rules.len()).collect();
        let cheap = scores_on(Stage::Cheap, &everyone, workers);
        let promoted: Vec<usize> = everyone
            .into_iter()
            .filter(|&candidate| cheap[candidate].iter().all(|t| t.normalised > 0.0))
            .collect();
        let mut funnel: Vec<Option<Vec<TaskScore>>> = vec![None; rules.len()];
        for (&candidate, scores) in
            promoted
                .iter()
                .zip(scores_on(Stage::Funnel, &promoted, workers))
        {
            funnel[candidate] = Some(scores);
        }
        cheap
            .into_iter()
            .zip(funnel)
            .map(|(mut tasks, funnel)| {
                let fitness = fitness_of(&tasks);
                let promoted = funnel.map(|scores| {
                    tasks.extend(scores);
                    fitness_of(&tasks)
                });
                Score {
                    fitness,
                    promoted,
                    tasks,
                }
            })
            .collect()
    }
}

/// A shared fitness (a session keeps its tuned baselines across searches).
impl<T: Fitness + Send> Fitness for Arc<T> {
    type Worker = T::Worker;

    fn worker(&self) -> T::Worker {
        (**self).worker()
    }

    fn score(&self, worker: &mut T::Worker, rule: &Rule) -> Score {
        (**self).score(worker, rule)
    }

    fn score_all(&self, workers: &mut [T::Worker], rules: &[&Rule]) -> Vec<Score> {
        (**self).score_all(workers, rules)
    }
}
