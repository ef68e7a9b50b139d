//! `optc search`: the interactive search over update rules. A [`Session`]
//! holds the settings, the chosen proxy tasks (with their tuned baselines)
//! and the running evolution, and executes one command line at a time; the
//! REPL ([`repl`]) and `--script` mode both feed it lines. Every command
//! answers text or a one-line error; none can bring the session down.

pub mod repl;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use optc_compiler::{Origin, Program};
use optc_search::checkpoint::{self, Checkpoint};
use optc_search::evolve::{Individual, Progress, Stop};
use optc_search::fitness::{self, Baseline, TaskScore};
use optc_search::mutate::MutationKind;
use optc_search::proxy::{self, ProxyTask, Schedule, Stage};
use optc_search::prune::{self, Pruned};
use optc_search::reject;
use optc_search::{Candidate, Evolution, EvolutionConfig, ProxyFitness, Score};

use crate::load;
use crate::plot;

/// The commands, with their synopsis and what they do (for `help` and
/// completion).
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("help", "help [COMMAND]", "this list, or one command's help"),
    (
        "load",
        "load FILE|NAME [RULE]",
        "start a search warm-started from an .opt file's rule or a stdlib optimizer",
    ),
    (
        "tasks",
        "tasks [NAME...|all]",
        "list the proxy tasks and baselines, or choose the tasks (at the next load)",
    ),
    (
        "set",
        "set [KEY VALUE]",
        "show or change a setting: population, tournament, seed, batch, threads, cycles (or budget), tolerance, backend, shift and growth (the invariance checks: on or off)",
    ),
    (
        "run",
        "run [N] | run --minutes M",
        "run N cycles (default: the `cycles` setting) or M minutes; Ctrl-C stops cleanly",
    ),
    (
        "top",
        "top [K]",
        "the K best distinct programs seen (default 10)",
    ),
    (
        "show",
        "show ID",
        "a program, its lineage and its score per task",
    ),
    (
        "eval",
        "eval ID [TASK|--held-out]",
        "score a program on every task (funnel included) or on one, against the baselines; --held-out: on the held-out tasks the search never scores",
    ),
    (
        "simplify",
        "simplify ID",
        "simplify and prune a program, showing each pruning step",
    ),
    (
        "compare",
        "compare ID ID",
        "two programs side by side, task by task",
    ),
    (
        "save",
        "save ID FILE [--raw]",
        "write a program as readable .opt with its lineage (pruned unless --raw)",
    ),
    (
        "checkpoint",
        "checkpoint FILE",
        "save the whole search (population, cache, history, random stream)",
    ),
    (
        "resume",
        "resume FILE",
        "continue a search saved by checkpoint",
    ),
    (
        "plot",
        "plot ID FILE.svg [TASK]",
        "loss curves of a program and the tuned baselines on a task (default: the first)",
    ),
    (
        "restart",
        "restart",
        "replace the population with copies of the best program",
    ),
    ("quit", "quit", "leave (also `exit`, Ctrl-D)"),
];

/// The longest `run --minutes` (a year).
const MAX_MINUTES: f64 = 525_600.0;
/// Settings a user may change with `set`.
#[derive(Clone, Copy, Debug)]
struct Settings {
    config: EvolutionConfig,
    threads: usize,
    /// Cycles a bare `run` runs.
    cycles: u64,
    /// Pruning tolerance, in normalised task units.
    tolerance: f64,
    /// What candidates are trained on (`--backend` names).
    backend: &'static str,
}

/// The state of one `optc search` session.
pub struct Session {
    settings: Settings,
    /// The standard library plus the files loaded.
    context: Program,
    /// Those files: (name, text), for checkpoints.
    sources: Vec<(String, String)>,
    /// The tasks chosen, by name (the next load uses them).
    chosen: Vec<String>,
    /// The fitness of the chosen tasks, once built (tuning the baselines
    /// takes seconds).
    fitness: Option<Arc<ProxyFitness>>,
    /// The held-out tasks with their tuned baselines, once a verdict was
    /// asked for.
    held_out: Option<Arc<ProxyFitness>>,
    search: Option<Search>,
    interrupt: Arc<AtomicBool>,
    /// Whether progress lines may rewrite themselves (a terminal).
    live_progress: bool,
}

/// A running search and what it started from.
struct Search {
    evolution: Evolution<Arc<ProxyFitness>>,
    warm_start: String,
}

type Reply = Result<String, String>;

impl Session {
    /// A session with default settings, all built-in tasks, and `interrupt`
    /// as the flag Ctrl-C raises.
    /// A session training candidates on the backend called `backend`.
    pub fn new(interrupt: Arc<AtomicBool>, live_progress: bool, backend: &'static str) -> Session {
        let context = optc_stdlib::prelude();
        let chosen = proxy::builtin(&context)
            .map(|tasks| tasks.into_iter().map(|t| t.name).collect())
            .unwrap_or_default();
        Session {
            settings: Settings {
                config: EvolutionConfig::default(),
                threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                cycles: 1000,
                tolerance: prune::DEFAULT_TOLERANCE,
                backend,
            },
            context,
            sources: Vec::new(),
            chosen,
            fitness: None,
            held_out: None,
            search: None,
            interrupt,
            live_progress,
        }
    }

    /// Executes one command line. `Ok(None)` asks to quit.
    pub fn execute(&mut self, line: &str) -> Result<Option<String>, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&command, args)) = words.split_first() else {
            return Ok(Some(String::new()));
        };
        if command.starts_with('#') {
            return Ok(Some(String::new()));
        }
        let reply = match command {
            "help" | "?" => help(args),
            "load" => self.load(args),
            "tasks" => self.tasks(args),
            "set" => self.set(args),
            "run" => self.run(args),
            "top" => self.top(args),
            "show" => self.show(args),
            "eval" => self.eval(args),
            "simplify" => self.simplify(args),
            "compare" => self.compare(args),
            "save" => self.save(args),
            "checkpoint" => self.checkpoint(args),
            "resume" => self.resume(args),
            "plot" => self.plot(args),
            "restart" => self.restart(args),
            "quit" | "exit" => return Ok(None),
            other => Err(format!(
                "unknown command `{other}`; `help` lists the commands"
            )),
        };
        reply.map(Some)
    }

    fn search(&self) -> Result<&Search, String> {
        self.search.as_ref().ok_or_else(|| {
            "no search yet: `load FILE|NAME` starts one (e.g. `load sgd`)".to_string()
        })
    }

    fn search_mut(&mut self) -> Result<&mut Search, String> {
        self.search.as_mut().ok_or_else(|| {
            "no search yet: `load FILE|NAME` starts one (e.g. `load sgd`)".to_string()
        })
    }

    /// The fitness of the chosen tasks, tuning the baselines if needed.
    fn fitness(&mut self) -> Result<Arc<ProxyFitness>, String> {
        if let Some(fitness) = &self.fitness {
            return Ok(fitness.clone());
        }
        let fitness = self.tune(&self.context, &self.chosen)?;
        self.fitness = Some(fitness.clone());
        Ok(fitness)
    }

    /// The fitness of the tasks `chosen` among those `context` has (tunes
    /// the baselines; changes nothing in the session).
    fn tune(&self, context: &Program, chosen: &[String]) -> Result<Arc<ProxyFitness>, String> {
        let tasks: Vec<ProxyTask> = proxy::builtin(context)?
            .into_iter()
            .filter(|t| chosen.contains(&t.name))
            .collect();
        eprintln!(
            "tuning SGD with momentum and AdamW on {} task(s) ({} runs each: learning-rate scales under a constant and a warm-up + cosine schedule)...",
            tasks.len(),
            proxy::SWEEP_RUNS
        );
        Ok(Arc::new(ProxyFitness::new(
            tasks,
            &optc_stdlib::prelude(),
            self.settings.threads,
            self.settings.backend,
        )?))
    }

    fn load(&mut self, args: &[&str]) -> Reply {
        let (file, rule) = match args {
            [file] => (*file, None),
            [file, rule] => (*file, Some(*rule)),
            _ => return Err(usage("load")),
        };
        let (program, compiled) = load::rule(file, rule).map_err(|e| e.trim_end().to_string())?;
        let candidate = Candidate::from_rule(&compiled)
            .map_err(|e| format!("`{}` cannot be a warm start: {e}", compiled.name))?;
        let sources = match std::fs::read_to_string(file) {
            Ok(text) => vec![(file.to_string(), text)],
            Err(_) => Vec::new(),
        };
        let fitness = self.fitness()?;
        let evolution = Evolution::new(
            Arc::new(program.clone()),
            fitness,
            self.settings.config,
            candidate,
            self.settings.threads,
        )
        .map_err(|e| e.to_string())?;
        self.context = program;
        self.sources = sources;
        let warm_start = compiled.name.clone();
        let mut out = format!(
            "warm start `{warm_start}`: population {} x id 0, tournament {}, seed {}, batch {}, {} thread(s)\n",
            self.settings.config.population_size,
            self.settings.config.tournament_size,
            self.settings.config.seed,
            self.settings.config.batch_size,
            self.settings.threads,
        );
        let start = evolution.best().clone();
        self.search = Some(Search {
            evolution,
            warm_start,
        });
        out.push_str(&self.describe(&start, false));
        Ok(out)
    }

    fn tasks(&mut self, args: &[&str]) -> Reply {
        let all: Vec<ProxyTask> = proxy::builtin(&self.context)?;
        if !args.is_empty() {
            let chosen: Vec<String> = if args == ["all"] {
                all.iter().map(|t| t.name.clone()).collect()
            } else {
                for name in args {
                    if !all.iter().any(|t| t.name == *name) {
                        let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
                        return Err(format!(
                            "unknown task `{name}` (tasks: {})",
                            names.join(", ")
                        ));
                    }
                }
                all.iter()
                    .filter(|t| args.contains(&t.name.as_str()))
                    .map(|t| t.name.clone())
                    .collect()
            };
            if !all
                .iter()
                .any(|t| t.stage == Stage::Cheap && chosen.contains(&t.name))
            {
                return Err("choose at least one cheap task".into());
            }
            if chosen != self.chosen {
                self.chosen = chosen;
                self.fitness = None;
            }
        }
        let mut out = String::new();
        for task in all.iter().chain(&proxy::held_out(&self.context)?) {
            let mark = if self.chosen.contains(&task.name) {
                "*"
            } else {
                " "
            };
            let stage = match task.stage {
                Stage::Cheap => "cheap",
                Stage::Funnel => "funnel",
                Stage::HeldOut => "held-out",
            };
            let _ = writeln!(out, "{mark} {:<15} {stage:<8} {}", task.name, task.about);
        }
        out.push_str(
            "(* chosen; a change applies at the next `load`; held-out tasks are never chosen: `eval ID --held-out`, `save`)\n",
        );
        if let Some(fitness) = &self.fitness {
            out.push_str("tuned baselines (loss at the best update scale and schedule):\n");
            for (task, baseline) in fitness.tasks().iter().zip(fitness.baselines()) {
                let _ = writeln!(
                    out,
                    "  {:<15} sgd_momentum {:.4e} ({})   adamw {:.4e} ({})",
                    task.name,
                    baseline.sgd_momentum.metric,
                    setting_text(baseline.sgd_momentum.scale, baseline.sgd_momentum.schedule),
                    baseline.adamw.metric,
                    setting_text(baseline.adamw.scale, baseline.adamw.schedule)
                );
            }
        }
        Ok(out)
    }

    fn set(&mut self, args: &[&str]) -> Reply {
        let settings = &mut self.settings;
        match args {
            [] => Ok(format!(
                "population {}\ntournament {}\nseed {}\nbatch {}\nthreads {}\ncycles {}\ntolerance {}\nbackend {}\nshift {}\ngrowth {}\n",
                settings.config.population_size,
                settings.config.tournament_size,
                settings.config.seed,
                settings.config.batch_size,
                settings.threads,
                settings.cycles,
                settings.tolerance,
                settings.backend,
                on_off(settings.config.invariances.shift),
                on_off(settings.config.invariances.growth)
            )),
            [key, value] => {
                let at_most = match *key {
                    "threads" => optc_runtime::MAX_THREADS,
                    "population" | "tournament" | "batch" => optc_search::evolve::MAX_POPULATION,
                    _ => usize::MAX,
                };
                let count = || -> Result<usize, String> {
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| (1..=at_most).contains(&n))
                        .ok_or_else(|| {
                            if at_most == usize::MAX {
                                format!("`{key}` takes a whole number of at least 1, not `{value}`")
                            } else {
                                format!("`{key}` takes a whole number from 1 to {at_most}, not `{value}`")
                            }
                        })
                };
                let at_next_load = " (applies at the next `load`)";
                let switch = || -> Result<bool, String> {
                    match *value {
                        "on" => Ok(true),
                        "off" => Ok(false),
                        _ => Err(format!("`{key}` takes `on` or `off`, not `{value}`")),
                    }
                };
                let note = match *key {
                    "population" => {
                        settings.config.population_size = count()?;
                        at_next_load
                    }
                    "tournament" => {
                        settings.config.tournament_size = count()?;
                        at_next_load
                    }
                    "batch" => {
                        settings.config.batch_size = count()?;
                        at_next_load
                    }
                    "seed" => {
                        settings.config.seed = value
                            .parse()
                            .map_err(|_| format!("`seed` takes a whole number, not `{value}`"))?;
                        at_next_load
                    }
                    "cycles" | "budget" => {
                        settings.cycles = count()? as u64;
                        ""
                    }
                    "threads" => {
                        settings.threads = count()?;
                        if let Some(search) = &mut self.search {
                            search.evolution.set_threads(settings.threads);
                        }
                        ""
                    }
                    "tolerance" => {
                        settings.tolerance = value
                            .parse::<f64>()
                            .ok()
                            .filter(|t| t.is_finite() && *t >= 0.0)
                            .ok_or_else(|| format!("`tolerance` takes a number >= 0, not `{value}`"))?;
                        ""
                    }
                    "shift" => {
                        settings.config.invariances.shift = switch()?;
                        at_next_load
                    }
                    "growth" => {
                        settings.config.invariances.growth = switch()?;
                        at_next_load
                    }
                    "backend" => {
                        settings.backend = registered_backend(value)?;
                        // Baselines are tuned on the backend candidates train on.
                        self.fitness = None;
                        self.held_out = None;
                        at_next_load
                    }
                    other => {
                        return Err(format!(
                            "unknown setting `{other}` (population, tournament, seed, batch, threads, cycles, tolerance, backend, shift, growth)"
                        ))
                    }
                };
                Ok(format!("{key} = {value}{note}\n"))
            }
            _ => Err(usage("set")),
        }
    }

    fn run(&mut self, args: &[&str]) -> Reply {
        let (cycles, deadline) = match args {
            [] => (self.settings.cycles, None),
            ["--minutes", minutes] => {
                let deadline = minutes
                    .parse::<f64>()
                    .ok()
                    .filter(|&m| m > 0.0 && m <= MAX_MINUTES)
                    .and_then(|m| Instant::now().checked_add(Duration::from_secs_f64(60.0 * m)))
                    .ok_or_else(|| {
                        format!("--minutes takes a number above 0 and at most {MAX_MINUTES} (a year), not `{minutes}`")
                    })?;
                (u64::MAX, Some(deadline))
            }
            [n] => (
                n.parse::<u64>()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("`run` takes a number of cycles, not `{n}`"))?,
                None,
            ),
            _ => return Err(usage("run")),
        };
        let live = self.live_progress;
        let interrupt = self.interrupt.clone();
        interrupt.store(false, Ordering::Relaxed);
        let search = self.search_mut()?;
        let evolution = &mut search.evolution;
        let mut last_line = Instant::now();
        let mut progress = |p: &Progress| {
            if live || last_line.elapsed() >= Duration::from_secs(10) {
                last_line = Instant::now();
                let line = progress_line(p);
                if live {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    eprintln!("{line}");
                }
            }
        };
        let started = Instant::now();
        let stats_before = evolution.stats();
        let stop = evolution.run_until(cycles, deadline, &interrupt, &mut progress);
        if live {
            eprintln!();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let stats = evolution.stats();
        let cache = evolution.cache_stats();
        let cycles_run = stats.cycles - stats_before.cycles;
        let evaluations = stats.evaluations - stats_before.evaluations;
        let why = match stop {
            Stop::Budget => "done",
            Stop::Deadline => "time is up",
            Stop::Interrupted => "interrupted; the population is kept",
        };
        let mut out = format!(
            "{why}: {cycles_run} cycles in {elapsed:.1} s ({:.0} cycles/s), {evaluations} evaluations ({:.1}/s), \
             {} promoted to the funnel so far, cache hit rate {:.1}% ({} canonical, {} behaviour hits of {} lookups)\n",
            cycles_run as f64 / elapsed.max(1e-9),
            evaluations as f64 / elapsed.max(1e-9),
            stats.promoted,
            100.0 * cache.hit_rate(),
            cache.canonical_hits,
            cache.behaviour_hits,
            cache.lookups(),
        );
        let best = evolution.best().clone();
        out.push_str("best so far:\n");
        out.push_str(&self.describe(&best, false));
        Ok(out)
    }

    fn top(&self, args: &[&str]) -> Reply {
        let k = match args {
            [] => 10,
            [k] => k
                .parse::<usize>()
                .map_err(|_| format!("`top` takes a count, not `{k}`"))?,
            _ => return Err(usage("top")),
        };
        let search = self.search()?;
        // Five decimals: programs near the top differ in the third or later.
        let mut out = String::from("    id   fitness    funnel  statements  parent\n");
        for individual in search.evolution.hall_of_fame().iter().take(k) {
            let _ = writeln!(
                out,
                "{:>6}  {:>8.5}  {:>8}  {:>10}  {}",
                individual.id,
                individual.score.fitness,
                individual
                    .score
                    .promoted
                    .map_or("-".to_string(), |p| format!("{p:.5}")),
                individual.candidate.statements.len(),
                individual
                    .parent
                    .map_or("warm start".to_string(), |p| p.to_string()),
            );
        }
        Ok(out)
    }

    /// The individual `ID` names.
    fn individual(&self, id: &str) -> Result<Individual, String> {
        let search = self.search()?;
        let id: u64 = id
            .parse()
            .map_err(|_| format!("`{id}` is not an id (ids are numbers; `top` lists some)"))?;
        search.evolution.individual(id).cloned().ok_or_else(|| {
            format!("no program {id} in the population or among the best seen (`top` lists those)")
        })
    }

    fn show(&self, args: &[&str]) -> Reply {
        let [id] = args else {
            return Err(usage("show"));
        };
        let individual = self.individual(id)?;
        Ok(self.describe(&individual, true))
    }

    /// A program's source, score table and (with `lineage`) its ancestry.
    fn describe(&self, individual: &Individual, lineage: bool) -> String {
        let mut out = format!("program {}:\n{}", individual.id, individual.candidate);
        if lineage {
            if let Ok(search) = self.search() {
                let _ = writeln!(
                    out,
                    "lineage: {}",
                    lineage_text(&search.warm_start, &search.evolution.lineage(individual.id))
                );
            }
        }
        out.push_str(&self.score_table(&individual.score));
        out
    }

    /// The per-task table of a score, with the baselines.
    fn score_table(&self, score: &Score) -> String {
        let mut out = format!(
            "fitness {:.3} (on the cheap tasks: mean normalised score, shortfalls counted twice; 0 = tuned SGD with momentum){}\n",
            score.fitness,
            score
                .promoted
                .map_or(String::new(), |p| format!(", funnel {p:.3} (all tasks)"))
        );
        out.push_str(
            "  task            loss         scale, schedule      normalised   sgd_momentum   adamw\n",
        );
        for task in &score.tasks {
            let baseline = self.baseline(&task.task).map_or(String::new(), |b| {
                format!("{:.4e}     {:.4e}", b.sgd_momentum.metric, b.adamw.metric)
            });
            let _ = writeln!(
                out,
                "  {:<15} {:<12.4e} {:<20} {:>+10.3}   {baseline}",
                task.task,
                task.metric,
                setting_text(task.scale, task.schedule),
                task.normalised
            );
        }
        out
    }

    /// The tuned baselines of the task called `name`, chosen or held out.
    fn baseline(&self, name: &str) -> Option<Baseline> {
        [&self.fitness, &self.held_out]
            .into_iter()
            .flatten()
            .find_map(|f| f.task_index(name).map(|i| f.baselines()[i]))
    }

    /// The held-out tasks' fitness (tuning their baselines the first time).
    fn held_out(&mut self) -> Result<Arc<ProxyFitness>, String> {
        if let Some(held_out) = &self.held_out {
            return Ok(held_out.clone());
        }
        let tasks = proxy::held_out(&self.context)?;
        eprintln!(
            "tuning SGD with momentum and AdamW on the {} held-out tasks ({} runs each)...",
            tasks.len(),
            proxy::SWEEP_RUNS
        );
        let held_out = Arc::new(ProxyFitness::new(
            tasks,
            &optc_stdlib::prelude(),
            self.settings.threads,
            self.settings.backend,
        )?);
        self.held_out = Some(held_out.clone());
        Ok(held_out)
    }

    /// Scores `candidate` on every held-out task.
    fn held_out_scores(&mut self, candidate: &Candidate) -> Result<Vec<TaskScore>, String> {
        let held_out = self.held_out()?;
        let rule = Arc::new(proxy::with_update_scale(&candidate.compile(&self.context)?));
        let indices: Vec<usize> = (0..held_out.tasks().len()).collect();
        Ok(held_out.score_tasks(&rule, &indices, self.settings.threads))
    }

    /// The summary of a held-out verdict: on how many tasks the program's
    /// tuned loss is below tuned AdamW's, and its mean normalised score.
    fn verdict_line(&self, scores: &[TaskScore]) -> String {
        let wins = scores
            .iter()
            .filter(|t| {
                self.baseline(&t.task)
                    .is_some_and(|b| t.metric < b.adamw.metric)
            })
            .count();
        format!(
            "held-out verdict: better than tuned AdamW on {wins} of {} tasks, mean normalised score {:+.3}\n",
            scores.len(),
            scores.iter().map(|t| t.normalised).sum::<f64>() / scores.len().max(1) as f64
        )
    }

    /// One line per task: the loss against tuned AdamW's.
    fn against_adamw(&self, scores: &[TaskScore]) -> Vec<String> {
        scores
            .iter()
            .filter_map(|task| {
                let adamw = self.baseline(&task.task)?.adamw.metric;
                Some(format!(
                    "{}: {:+.1}% against tuned AdamW ({:.4e} vs {adamw:.4e})",
                    task.task,
                    100.0 * (task.metric / adamw - 1.0),
                    task.metric
                ))
            })
            .collect()
    }

    /// Scores `candidate` on the tasks `only` names (or all, funnel included).
    fn score_everywhere(
        &mut self,
        candidate: &Candidate,
        only: Option<&str>,
    ) -> Result<Vec<TaskScore>, String> {
        let fitness = self.fitness()?;
        let indices: Vec<usize> = match only {
            Some(name) => vec![fitness.task_index(name).ok_or_else(|| {
                let names: Vec<&str> = fitness.tasks().iter().map(|t| t.name.as_str()).collect();
                format!(
                    "no task `{name}` among the chosen ones ({})",
                    names.join(", ")
                )
            })?],
            None => (0..fitness.tasks().len()).collect(),
        };
        let rule = Arc::new(proxy::with_update_scale(&candidate.compile(&self.context)?));
        Ok(fitness.score_tasks(&rule, &indices, self.settings.threads))
    }

    fn eval(&mut self, args: &[&str]) -> Reply {
        let (id, task, held_out) = match args {
            [id] => (*id, None, false),
            [id, "--held-out"] => (*id, None, true),
            [id, task] => (*id, Some(*task), false),
            _ => return Err(usage("eval")),
        };
        let individual = self.individual(id)?;
        let tasks = if held_out {
            self.held_out_scores(&individual.candidate)?
        } else {
            self.score_everywhere(&individual.candidate, task)?
        };
        let score = Score {
            fitness: fitness::fitness_of(&tasks),
            promoted: None,
            tasks,
        };
        let shown = match (held_out, task) {
            (true, _) => "the held-out tasks (never scored during the search)",
            (false, Some(task)) => task,
            (false, None) => "every chosen task",
        };
        let mut out = format!("program {} on {shown}:\n", individual.id);
        out.push_str(
            &self
                .score_table(&score)
                .replacen("on the cheap tasks", "on these tasks", 1),
        );
        let beats_momentum = score.tasks.iter().all(|t| t.normalised > 0.0);
        let _ = writeln!(
            out,
            "{} tuned SGD with momentum on every task shown",
            if beats_momentum {
                "beats"
            } else {
                "does not beat"
            }
        );
        // Against AdamW, task by task, where it is the question: the funnel
        // and the held-out tasks.
        let judged: Vec<TaskScore> = score
            .tasks
            .iter()
            .filter(|t| {
                held_out
                    || self.fitness.as_ref().is_some_and(|f| {
                        f.task_index(&t.task)
                            .is_some_and(|i| f.tasks()[i].stage == Stage::Funnel)
                    })
            })
            .cloned()
            .collect();
        for line in self.against_adamw(&judged) {
            out.push_str(&line);
            out.push('\n');
        }
        if held_out {
            out.push_str(&self.verdict_line(&score.tasks));
        }
        Ok(out)
    }

    fn prune(&mut self, individual: &Individual) -> Result<Pruned, String> {
        let fitness = self.fitness()?;
        let mut workers = fitness.workers(self.settings.threads);
        let invariances = self.search()?.evolution.config().invariances;
        prune::prune(
            &fitness,
            &mut workers,
            &self.context,
            &individual.candidate,
            self.settings.tolerance,
            invariances,
        )
    }

    fn simplify(&mut self, args: &[&str]) -> Reply {
        let [id] = args else {
            return Err(usage("simplify"));
        };
        let individual = self.individual(id)?;
        let pruned = self.prune(&individual)?;
        let simplified = prune::simplified(&individual.candidate, &self.context)?;
        let mut out = format!(
            "program {}: {} statements\nsimplified (algebraic tier; dead statements and state removed): {} statements, score {:.3}\n",
            individual.id,
            individual.candidate.statements.len(),
            simplified.statements.len(),
            pruned.simplified_score.value()
        );
        out.push_str(&prune::readable(
            &simplified,
            &self.context,
            "simplified",
            &[],
        )?);
        let _ = writeln!(
            out,
            "pruning (tolerance {}; {} removals tried):",
            self.settings.tolerance, pruned.attempts
        );
        if pruned.removals.is_empty() {
            out.push_str("  no statement can go without costing fitness\n");
        }
        for removal in &pruned.removals {
            let _ = writeln!(
                out,
                "  removed `{}` (its readers read `{}`): score {:.3} -> {:.3}",
                removal.statement, removal.replacement, removal.before, removal.after
            );
        }
        out.push_str(&prune::readable(
            &pruned.candidate,
            &self.context,
            "pruned",
            &[],
        )?);
        out.push_str(&self.score_table(&pruned.score));
        Ok(out)
    }

    fn compare(&self, args: &[&str]) -> Reply {
        let [a, b] = args else {
            return Err(usage("compare"));
        };
        let (a, b) = (self.individual(a)?, self.individual(b)?);
        let mut out = format!("{:<15} {:>12} {:>12}\n", "task", a.id, b.id);
        let _ = writeln!(
            out,
            "{:<15} {:>12.3} {:>12.3}",
            "fitness", a.score.fitness, b.score.fitness
        );
        let mut names: Vec<&str> = a.score.tasks.iter().map(|t| t.task.as_str()).collect();
        for task in &b.score.tasks {
            if !names.contains(&task.task.as_str()) {
                names.push(&task.task);
            }
        }
        for name in names {
            let cell = |score: &Score| {
                score
                    .task(name)
                    .map_or("-".to_string(), |t| format!("{:+.3}", t.normalised))
            };
            let _ = writeln!(
                out,
                "{name:<15} {:>12} {:>12}",
                cell(&a.score),
                cell(&b.score)
            );
        }
        let _ = write!(
            out,
            "program {}:\n{}program {}:\n{}",
            a.id, a.candidate, b.id, b.candidate
        );
        Ok(out)
    }

    fn save(&mut self, args: &[&str]) -> Reply {
        let (id, file, raw) = match args {
            [id, file] => (*id, *file, false),
            [id, file, "--raw"] => (*id, *file, true),
            _ => return Err(usage("save")),
        };
        let individual = self.individual(id)?;
        let name = rule_name_for(file)?;
        let (candidate, removals, score) = if raw {
            (
                individual.candidate.clone(),
                Vec::new(),
                individual.score.clone(),
            )
        } else {
            let pruned = self.prune(&individual)?;
            (pruned.candidate, pruned.removals, pruned.score)
        };
        // A saved program passes the checks every candidate passed.
        let invariances = self.search()?.evolution.config().invariances;
        reject::screen(&candidate.compile(&self.context)?, invariances)
            .map_err(|why| format!("program {} cannot be saved: {why}", individual.id))?;
        let held_out = self.held_out_scores(&candidate)?;
        let header = self.header(&individual, &removals, &score, &held_out)?;
        let text = prune::readable(&candidate, &self.context, &name, &header)?;
        // Checked before writing: the file must load as what it claims.
        let mut check = optc_stdlib::prelude();
        check
            .add_source(file, text.as_bytes(), Origin::User)
            .and_then(|_| check.compile(&name))
            .map_err(|d| {
                format!(
                    "internal error: the emitted rule does not compile: {}",
                    d.message
                )
            })?;
        optc_runtime::files::write_atomically(std::path::Path::new(file), text.as_bytes())
            .map_err(|e| format!("cannot write {file}: {e}"))?;
        Ok(format!("wrote `{name}` to {file}:\n{text}"))
    }

    /// The comment header of a saved program: lineage, seed, scores, baselines.
    fn header(
        &self,
        individual: &Individual,
        removals: &[prune::Removal],
        score: &Score,
        held_out: &[TaskScore],
    ) -> Result<Vec<String>, String> {
        let search = self.search()?;
        let config = search.evolution.config();
        let stats = search.evolution.stats();
        let mut lines = vec![
            format!(
                "Found by `optc search` (regularized evolution): warm start `{}`, seed {}, population {}, tournament {}, batch {};",
                search.warm_start, config.seed, config.population_size, config.tournament_size, config.batch_size
            ),
            format!(
                "program {} after {} cycles ({} evaluations).",
                individual.id, stats.cycles, stats.evaluations
            ),
            format!("Lineage: {}.", lineage_text(&search.warm_start, &search.evolution.lineage(individual.id))),
        ];
        if !removals.is_empty() {
            lines.push("Pruned (removal changed the score by no more than the tolerance):".into());
            for removal in removals {
                lines.push(format!(
                    "  `{}` -> `{}` ({:.3} -> {:.3})",
                    removal.statement, removal.replacement, removal.before, removal.after
                ));
            }
        }
        lines.push(String::new());
        lines.push(format!(
            "Scores (normalised: 0 = tuned SGD with momentum, +-1 = tuned AdamW), fitness {:.3}{}:",
            score.fitness,
            score
                .promoted
                .map_or(String::new(), |p| format!(", funnel {p:.3}"))
        ));
        lines.extend(self.score_table(score).lines().skip(1).map(String::from));
        lines.push(
            "The scale column is the tuned (peak) multiplier of the update (of learning_rate for rules whose step is proportional to it) and its schedule."
                .into(),
        );
        lines.push(String::new());
        lines.push("Held-out tasks (never scored during the search):".into());
        let held_out_score = Score {
            fitness: fitness::fitness_of(held_out),
            promoted: None,
            tasks: held_out.to_vec(),
        };
        lines.extend(
            self.score_table(&held_out_score)
                .lines()
                .skip(1)
                .map(String::from),
        );
        lines.extend(self.against_adamw(held_out));
        lines.push(self.verdict_line(held_out).trim_end().to_string());
        lines.push(String::new());
        Ok(lines)
    }

    fn checkpoint(&mut self, args: &[&str]) -> Reply {
        let [file] = args else {
            return Err(usage("checkpoint"));
        };
        let search = self.search()?;
        let fitness = self.fitness.as_ref().ok_or("no fitness yet")?;
        let saved = Checkpoint {
            format: checkpoint::FORMAT,
            tasks: fitness.tasks().iter().map(|t| t.name.clone()).collect(),
            sources: self.sources.clone(),
            warm_start: search.warm_start.clone(),
            state: search.evolution.state().clone(),
        };
        checkpoint::save(Path::new(file), &saved)?;
        Ok(format!(
            "saved the search ({} cycles, {} evaluations) to {file}\n",
            search.evolution.stats().cycles,
            search.evolution.stats().evaluations
        ))
    }

    fn resume(&mut self, args: &[&str]) -> Reply {
        let [file] = args else {
            return Err(usage("resume"));
        };
        let saved = checkpoint::load(Path::new(file))?;
        let mut context = optc_stdlib::prelude();
        for (name, text) in &saved.sources {
            context
                .add_source(name, text.as_bytes(), Origin::User)
                .map_err(|d| {
                    format!(
                        "{file}: its source {name} no longer compiles: {}",
                        d.message
                    )
                })?;
        }
        let known: Vec<String> = proxy::builtin(&context)?
            .into_iter()
            .map(|t| t.name)
            .collect();
        if let Some(unknown) = saved.tasks.iter().find(|t| !known.contains(t)) {
            return Err(format!(
                "{file} was scored on task `{unknown}`, which this optc does not have"
            ));
        }
        // Nothing of the session changes until everything has worked: a
        // failed resume leaves its tasks, fitness and search as they were.
        let fitness = match &self.fitness {
            Some(fitness) if saved.tasks == self.chosen => fitness.clone(),
            _ => self.tune(&context, &saved.tasks)?,
        };
        let evolution = Evolution::resume(
            Arc::new(context.clone()),
            fitness.clone(),
            saved.state,
            self.settings.threads,
        );
        self.chosen = saved.tasks.clone();
        self.fitness = Some(fitness);
        self.context = context;
        self.settings.config = *evolution.config();
        self.sources = saved.sources;
        let out = format!(
            "resumed a search warm-started from `{}`: {} cycles, {} evaluations, best program {} (fitness {:.3})\n",
            saved.warm_start,
            evolution.stats().cycles,
            evolution.stats().evaluations,
            evolution.best().id,
            evolution.best().score.fitness
        );
        self.search = Some(Search {
            evolution,
            warm_start: saved.warm_start,
        });
        Ok(out)
    }

    fn plot(&mut self, args: &[&str]) -> Reply {
        let (id, file, task) = match args {
            [id, file] => (*id, *file, None),
            [id, file, task] => (*id, *file, Some(*task)),
            _ => return Err(usage("plot")),
        };
        let individual = self.individual(id)?;
        let fitness = self.fitness()?;
        let index = match task {
            Some(name) => fitness
                .task_index(name)
                .ok_or_else(|| format!("no task `{name}` among the chosen ones"))?,
            None => 0,
        };
        let task = &fitness.tasks()[index];
        let backend = fitness.backend();
        let candidate = Arc::new(proxy::with_update_scale(
            &individual.candidate.compile(&self.context)?,
        ));
        let tuned = fitness
            .score_tasks(&candidate, &[index], self.settings.threads)
            .remove(0);
        let baseline = fitness.baselines()[index];
        let prelude = optc_stdlib::prelude();
        let mut series = Vec::new();
        for (label, rule, scale, schedule) in [
            (
                format!("program {}", individual.id),
                candidate,
                tuned.scale,
                tuned.schedule,
            ),
            (
                "sgd_momentum".into(),
                baseline_rule(&prelude, "sgd_momentum")?,
                baseline.sgd_momentum.scale,
                baseline.sgd_momentum.schedule,
            ),
            (
                "adamw".into(),
                baseline_rule(&prelude, "adamw")?,
                baseline.adamw.scale,
                baseline.adamw.schedule,
            ),
        ] {
            let run = task.train(&rule, scale, schedule, &backend)?;
            series.push((
                format!("{label} ({})", setting_text(scale, schedule)),
                run.losses,
            ));
        }
        plot::loss_curves(&format!("{}: {}", task.name, task.about), &series, file)?;
        Ok(format!(
            "wrote the loss curves on `{}` to {file}\n",
            task.name
        ))
    }

    fn restart(&mut self, args: &[&str]) -> Reply {
        if !args.is_empty() {
            return Err(usage("restart"));
        }
        let search = self.search_mut()?;
        search.evolution.restart_from_best();
        let best = search.evolution.best();
        Ok(format!(
            "the population is now {} copies of program {} (fitness {:.3})\n",
            search.evolution.config().population_size,
            best.id,
            best.score.fitness
        ))
    }
}

fn progress_line(p: &Progress) -> String {
    format!(
        "{} cycles, {:.1} evals/s, cache hits {:.1}%, best #{} fitness {:.3}{}",
        p.cycles_done,
        p.evaluations_done as f64 / p.seconds.max(1e-9),
        100.0 * p.cache.hit_rate(),
        p.best_id,
        p.best_score.fitness,
        p.best_score
            .promoted
            .map_or(String::new(), |f| format!(" (funnel {f:.3})"))
    )
}

fn baseline_rule(prelude: &Program, name: &str) -> Result<Arc<optc_compiler::ir::Rule>, String> {
    let rule = prelude.compile(name).map_err(|d| d.message)?;
    Ok(Arc::new(proxy::with_update_scale(&rule)))
}

/// Ancestors shown at each end of a long lineage.
const LINEAGE_ENDS: usize = 4;

/// `` `sgd` (0) -> 12 (insert) -> 57 (modify operator) ``; a long chain
/// shows its ends and counts its mutations.
fn lineage_text(warm_start: &str, chain: &[(u64, Option<MutationKind>)]) -> String {
    let steps = &chain[1.min(chain.len())..];
    let step = |&(id, mutation): &(u64, Option<MutationKind>)| {
        format!(" -> {id} ({})", mutation.map_or("?", mutation_name))
    };
    let mut out = format!("`{warm_start}` (0)");
    if steps.len() <= 2 * LINEAGE_ENDS + 1 {
        steps.iter().for_each(|s| out.push_str(&step(s)));
        return out;
    }
    steps[..LINEAGE_ENDS]
        .iter()
        .for_each(|s| out.push_str(&step(s)));
    let _ = write!(out, " -> ... {} more ...", steps.len() - 2 * LINEAGE_ENDS);
    steps[steps.len() - LINEAGE_ENDS..]
        .iter()
        .for_each(|s| out.push_str(&step(s)));
    let count = |kind: MutationKind| steps.iter().filter(|(_, m)| *m == Some(kind)).count();
    let kinds = [
        MutationKind::Insert,
        MutationKind::Delete,
        MutationKind::ModifyArgument,
        MutationKind::ModifyOperator,
        MutationKind::PerturbConstant,
    ];
    let counts: Vec<String> = kinds
        .iter()
        .map(|&kind| format!("{} {}", count(kind), mutation_name(kind)))
        .collect();
    let _ = write!(out, " ({} generations: {})", steps.len(), counts.join(", "));
    out
}

fn mutation_name(kind: MutationKind) -> &'static str {
    match kind {
        MutationKind::Insert => "insert",
        MutationKind::Delete => "delete",
        MutationKind::ModifyArgument => "modify argument",
        MutationKind::ModifyOperator => "modify operator",
        MutationKind::PerturbConstant => "perturb constant",
    }
}

/// An update scale as a short number (`1000`, `0.316`).
fn scale_text(scale: f64) -> String {
    format!("{}", (scale * 1000.0).round() / 1000.0)
}

/// A tuned scale and schedule (`x0.316 warmup_cosine`).
fn setting_text(scale: f64, schedule: Schedule) -> String {
    format!("x{} {}", scale_text(scale), schedule.name())
}

/// The optimizer name a saved file gets: its stem, made an identifier.
fn rule_name_for(file: &str) -> Result<String, String> {
    let stem = Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("`{file}` is not a file name"))?;
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "rule_");
    }
    Ok(name)
}

fn usage(command: &str) -> String {
    let synopsis = COMMANDS
        .iter()
        .find(|(name, ..)| *name == command)
        .map_or(command, |(_, synopsis, _)| synopsis);
    format!("usage: {synopsis}")
}

fn help(args: &[&str]) -> Reply {
    match args {
        [] => {
            let mut out = String::from("commands:\n");
            for (_, synopsis, about) in COMMANDS {
                let _ = writeln!(out, "  {synopsis:<28} {about}");
            }
            out.push_str(
                "start with `load sgd` (or `load adamw`, or your own file), then `run 500`.\n",
            );
            Ok(out)
        }
        [command] => COMMANDS
            .iter()
            .find(|(name, ..)| name == command)
            .map(|(_, synopsis, about)| format!("{synopsis}\n  {about}\n"))
            .ok_or_else(|| format!("no command `{command}`; `help` lists them")),
        _ => Err(usage("help")),
    }
}

/// The registry's name for backend `name`, if this host can run it.
pub fn registered_backend(name: &str) -> Result<&'static str, String> {
    optc_runtime::Backend::named(name).map_err(|e| e.to_string())?;
    optc_runtime::BACKENDS
        .iter()
        .map(|b| b.name)
        .find(|&b| b == name)
        .ok_or_else(|| format!("unknown backend `{name}`"))
}

fn on_off(flag: bool) -> &'static str {
    if flag {
        "on"
    } else {
        "off"
    }
}
