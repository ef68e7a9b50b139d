//! Regularized evolution (Real et al., 2019), as Chen et al. (2023) used it
//! to find Lion: a population of fixed size, warm-started with copies of one
//! program; each cycle a tournament picks a parent, a mutant of it is
//! compiled, probed, rejected or looked up in the fitness cache (by
//! [`DedupKey`]) or, after the invariance checks, scored, and joins the
//! population while the oldest member leaves (aging).
//!
//! Cycles run in batches of [`EvolutionConfig::batch_size`]: the batch's
//! tournaments draw from the population as it was when the batch began, each
//! child gets its own random stream seeded from the search's, children are
//! mutated, probed and scored on all threads, and join in proposal order.
//! Every draw is made by one seeded [`Rng`] in a fixed order and scoring is a
//! pure function of the rule, so a search is a function of its seed and
//! batch size, never of its thread count; runs always end on a batch
//! boundary, so a search stopped (by a cycle budget, a deadline, Ctrl-C or
//! a checkpoint) and continued makes the same history as one that ran
//! through.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use optc_compiler::ir::Rule;
use optc_compiler::Program;
use serde::{Deserialize, Serialize};

use crate::dedup::{CacheHit, CacheStats, DedupKey, FitnessCache};
use crate::fitness::{Fitness, Score};
use crate::mutate::{MutationKind, MutationWeights, Mutator};
use crate::parallel;
use crate::program::Candidate;
use crate::reject::{self, Invariances, Rejection, Screened};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvolutionConfig {
    pub population_size: usize,
    pub tournament_size: usize,
    pub seed: u64,
    /// Children proposed, scored in parallel and added per batch.
    pub batch_size: usize,
    pub mutation_weights: MutationWeights,
    /// The invariance checks of cheap rejection.
    pub invariances: Invariances,
}

impl Default for EvolutionConfig {
    /// The paper's tournament size; a population sized for a small machine.
    fn default() -> EvolutionConfig {
        EvolutionConfig {
            population_size: 100,
            tournament_size: 2,
            seed: 0,
            batch_size: 8,
            mutation_weights: MutationWeights::default(),
            invariances: Invariances::default(),
        }
    }
}

/// A member of the population.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Individual {
    /// Unique, in order of creation; the warm start is 0.
    pub id: u64,
    /// `None` for the warm start.
    pub parent: Option<u64>,
    /// How it was made from its parent.
    pub mutation: Option<MutationKind>,
    pub candidate: Candidate,
    pub score: Score,
    pub key: DedupKey,
}

/// What became of one cycle's child.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// No well-typed mutant was found; nothing joined.
    MutationFailed,
    Rejected(Rejection),
    /// Its score came from the cache (or from an equal child of the same batch).
    CacheHit(CacheHit),
    Evaluated,
}

/// One cycle of the search, as recorded in the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub parent: u64,
    pub mutation: Option<MutationKind>,
    /// The child's id, when it joined the population.
    pub child: Option<u64>,
    pub fitness: Option<f64>,
    pub outcome: Outcome,
}

/// Counts over a search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvolutionStats {
    pub cycles: u64,
    /// Calls of the fitness function.
    pub evaluations: u64,
    pub rejected: u64,
    pub mutation_failures: u64,
    /// Evaluated children that went through the funnel.
    pub promoted: u64,
}

/// Why a search cannot start.
#[derive(Clone, Debug, PartialEq)]
pub enum StartError {
    EmptyPopulation,
    EmptyTournament,
    EmptyBatch,
    WarmStartDoesNotCompile(String),
    WarmStartRejected(Rejection),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::EmptyPopulation => f.write_str("the population size must be at least 1"),
            StartError::EmptyTournament => f.write_str("the tournament size must be at least 1"),
            StartError::EmptyBatch => f.write_str("the batch size must be at least 1"),
            StartError::WarmStartDoesNotCompile(message) => {
                write!(f, "the warm start does not compile: {message}")
            }
            StartError::WarmStartRejected(rejection) => {
                write!(f, "the warm start is rejected: {rejection}")
            }
        }
    }
}

impl std::error::Error for StartError {}

/// Individuals kept for `show` and `save` after they age out: the best
/// distinct programs seen.
pub const HALL_OF_FAME_SIZE: usize = 32;

/// Everything a search is, apart from its fitness function and context:
/// what a checkpoint saves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchState {
    pub config: EvolutionConfig,
    rng: Rng,
    /// The warm start.
    origin: Individual,
    population: VecDeque<Individual>,
    best: Individual,
    hall_of_fame: Vec<Individual>,
    cache: FitnessCache,
    history: Vec<Event>,
    stats: EvolutionStats,
    next_id: u64,
}

/// The largest population, tournament and batch a search takes: each
/// individual and each child of a batch is kept in memory with its scores.
pub const MAX_POPULATION: usize = 100_000;

impl SearchState {
    /// Checks a state read from a file before a search runs on it: the
    /// configuration within bounds, a population, every kept individual's
    /// candidate well formed ([`Candidate::validate`]), every id below the
    /// next one, and every parent older than its child (so lineages end).
    pub fn validate(&self) -> Result<(), String> {
        let config = &self.config;
        let bounded = |n: usize| (1..=MAX_POPULATION).contains(&n);
        if !bounded(config.population_size)
            || !bounded(config.batch_size)
            || !(1..=config.population_size).contains(&config.tournament_size)
        {
            return Err(format!(
                "population {}, tournament {} and batch {} are out of bounds (1 to {MAX_POPULATION}, tournament at most the population)",
                config.population_size, config.tournament_size, config.batch_size
            ));
        }
        if self.population.is_empty() {
            return Err("the population is empty".into());
        }
        let kept = self
            .population
            .iter()
            .chain(&self.hall_of_fame)
            .chain([&self.origin, &self.best]);
        for individual in kept {
            let id = individual.id;
            if id >= self.next_id || individual.parent.is_some_and(|p| p >= id) {
                return Err(format!("program {id} has an id or parent out of order"));
            }
            individual
                .candidate
                .validate()
                .map_err(|why| format!("program {id}: {why}"))?;
        }
        let ordered = self.history.iter().all(|event| {
            event.parent < self.next_id
                && event
                    .child
                    .is_none_or(|c| c > event.parent && c < self.next_id)
        });
        if !ordered {
            return Err("the history has a child older than its parent".into());
        }
        Ok(())
    }
}

/// A running search.
pub struct Evolution<F: Fitness> {
    mutator: Mutator,
    fitness: F,
    workers: Vec<F::Worker>,
    state: SearchState,
}

/// A child's key (with the simplification and probe the invariance checks
/// read), or why it has none (everything before the cache).
enum Assessment {
    Rejected(Rejection),
    Keyed(DedupKey, Box<Screened>),
}

/// A child's score and where it came from (`None`: evaluated), or its
/// rejection by the invariance checks.
type Answer = Result<(Score, Option<CacheHit>), Rejection>;

/// One proposed child after mutation and assessment.
struct Proposal {
    parent: u64,
    mutant: Option<(MutationKind, Candidate, Rule)>,
    assessment: Option<Assessment>,
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// It ran the cycles it was asked for.
    Budget,
    Deadline,
    /// The stop flag was raised (Ctrl-C).
    Interrupted,
}

/// Where a run is, for progress lines.
#[derive(Clone, Debug)]
pub struct Progress {
    pub cycles_done: u64,
    pub evaluations_done: u64,
    pub seconds: f64,
    pub cache: CacheStats,
    pub best_id: u64,
    pub best_score: Score,
}

impl<F: Fitness> Evolution<F> {
    /// Starts a search whose population is `population_size` copies of
    /// `warm_start` (scored once), compiling candidates in `context` and
    /// scoring on `threads` threads.
    pub fn new(
        context: Arc<Program>,
        fitness: F,
        config: EvolutionConfig,
        warm_start: Candidate,
        threads: usize,
    ) -> Result<Evolution<F>, StartError> {
        if config.population_size == 0 {
            return Err(StartError::EmptyPopulation);
        }
        if config.tournament_size == 0 {
            return Err(StartError::EmptyTournament);
        }
        if config.batch_size == 0 {
            return Err(StartError::EmptyBatch);
        }
        let rule = warm_start
            .compile(&context)
            .map_err(StartError::WarmStartDoesNotCompile)?;
        let key = match assess(&rule) {
            Assessment::Rejected(rejection) => {
                return Err(StartError::WarmStartRejected(rejection))
            }
            Assessment::Keyed(key, screened) => {
                reject::check_invariances(&screened, config.invariances)
                    .map_err(StartError::WarmStartRejected)?;
                key
            }
        };
        let mut workers = vec![fitness.worker()];
        let score = fitness.score(&mut workers[0], &rule);
        let mut cache = FitnessCache::new();
        cache.insert(&key, &score);
        let first = Individual {
            id: 0,
            parent: None,
            mutation: None,
            candidate: warm_start,
            score,
            key,
        };
        let state = SearchState {
            config,
            rng: Rng::new(config.seed),
            origin: first.clone(),
            population: std::iter::repeat_n(first.clone(), config.population_size).collect(),
            hall_of_fame: vec![first.clone()],
            best: first,
            cache,
            history: Vec::new(),
            stats: EvolutionStats {
                evaluations: 1,
                ..EvolutionStats::default()
            },
            next_id: 1,
        };
        let mut search = Evolution {
            mutator: Mutator::new(context, config.mutation_weights),
            fitness,
            workers,
            state,
        };
        search.set_threads(threads);
        Ok(search)
    }

    /// Continues a search from a saved state.
    pub fn resume(
        context: Arc<Program>,
        fitness: F,
        state: SearchState,
        threads: usize,
    ) -> Evolution<F> {
        let mut search = Evolution {
            mutator: Mutator::new(context, state.config.mutation_weights),
            fitness,
            workers: Vec::new(),
            state,
        };
        search.set_threads(threads);
        search
    }

    /// Scores on `threads` threads from the next batch on (results do not
    /// depend on it).
    pub fn set_threads(&mut self, threads: usize) {
        let threads = threads.max(1);
        self.workers.truncate(threads);
        while self.workers.len() < threads {
            self.workers.push(self.fitness.worker());
        }
    }

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Runs at least `cycles` cycles (whole batches).
    pub fn run(&mut self, cycles: u64) {
        self.run_until(cycles, None, &AtomicBool::new(false), &mut |_| {});
    }

    /// Runs whole batches until `cycles` cycles are done, the deadline
    /// passes or `stop` is raised, calling `progress` after each batch.
    pub fn run_until(
        &mut self,
        cycles: u64,
        deadline: Option<Instant>,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(&Progress),
    ) -> Stop {
        let started = Instant::now();
        let (cycles_before, evaluations_before) =
            (self.state.stats.cycles, self.state.stats.evaluations);
        loop {
            let done = self.state.stats.cycles - cycles_before;
            if done >= cycles {
                return Stop::Budget;
            }
            if stop.load(Ordering::Relaxed) {
                return Stop::Interrupted;
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Stop::Deadline;
            }
            self.batch();
            progress(&Progress {
                cycles_done: self.state.stats.cycles - cycles_before,
                evaluations_done: self.state.stats.evaluations - evaluations_before,
                seconds: started.elapsed().as_secs_f64(),
                cache: self.state.cache.stats(),
                best_id: self.state.best.id,
                best_score: self.state.best.score.clone(),
            });
        }
    }

    /// One batch of cycles: tournaments and seeds in order, then mutation,
    /// probing and scoring in parallel, then the children join in order.
    fn batch(&mut self) {
        let batch = self.state.config.batch_size;
        let draws: Vec<(Individual, u64)> = (0..batch)
            .map(|_| {
                let parent = self.tournament().clone();
                (parent, self.state.rng.next_u64())
            })
            .collect();
        let mutator = &self.mutator;
        let proposals = parallel::map(&mut self.workers, &draws, |_, (parent, seed)| {
            let mut rng = Rng::new(*seed);
            let mutant = mutator.mutate(&parent.candidate, &mut rng);
            let assessment = mutant.as_ref().map(|mutant| assess(&mutant.rule));
            Proposal {
                parent: parent.id,
                mutant: mutant.map(|m| (m.kind, m.candidate, m.rule)),
                assessment,
            }
        });
        // Cache lookups in proposal order; equal children of one batch are
        // scored once (the later ones count as hits).
        let mut pending: Vec<usize> = Vec::new();
        let mut answers: Vec<Option<Answer>> = Vec::with_capacity(batch);
        let mut waiting_on: Vec<Option<(usize, CacheHit)>> = vec![None; batch];
        for (index, proposal) in proposals.iter().enumerate() {
            let Some(Assessment::Keyed(key, _)) = &proposal.assessment else {
                answers.push(None);
                continue;
            };
            if let Some((score, hit)) = self.state.cache.peek(key) {
                self.state.cache.count(Some(hit));
                answers.push(Some(Ok((score, Some(hit)))));
                continue;
            }
            let earlier = pending.iter().find_map(|&other| {
                let Some(Assessment::Keyed(other_key, _)) = &proposals[other].assessment else {
                    return None;
                };
                if other_key.canonical == key.canonical {
                    Some((other, CacheHit::Canonical))
                } else if other_key.behaviour == key.behaviour {
                    Some((other, CacheHit::Behaviour))
                } else {
                    None
                }
            });
            match earlier {
                Some(found) => {
                    self.state.cache.count(Some(found.1));
                    waiting_on[index] = Some(found);
                }
                None => {
                    self.state.cache.count(None);
                    pending.push(index);
                }
            }
            answers.push(None);
        }
        // Children the cache has not seen pass the invariance checks (the
        // dearest of rejection, so a cache hit, which has the program or
        // the probe behaviour of one that passed, skips them), then are
        // scored all together, so that the fitness can spread their work
        // over every thread however few they are.
        let invariances = self.state.config.invariances;
        let checked = parallel::map(&mut self.workers, &pending, |_, &index| {
            let proposal = &proposals[index];
            let (Some(mutant), Some(Assessment::Keyed(_, screened))) =
                (&proposal.mutant, &proposal.assessment)
            else {
                return None;
            };
            Some(reject::check_invariances(screened, invariances).map(|()| &mutant.2))
        });
        let mut passed: Vec<(usize, &Rule)> = Vec::new();
        for (&index, check) in pending.iter().zip(checked) {
            match check {
                Some(Ok(rule)) => passed.push((index, rule)),
                Some(Err(rejection)) => answers[index] = Some(Err(rejection)),
                None => {}
            }
        }
        let rules: Vec<&Rule> = passed.iter().map(|&(_, rule)| rule).collect();
        let scores = self.fitness.score_all(&mut self.workers, &rules);
        for ((index, _), score) in passed.into_iter().zip(scores) {
            answers[index] = Some(Ok((score, None)));
        }
        for index in 0..batch {
            if let Some((source, hit)) = waiting_on[index] {
                answers[index] = answers[source].as_ref().map(|answer| match answer {
                    Ok((score, _)) => Ok((score.clone(), Some(hit))),
                    Err(rejection) => Err(rejection.clone()),
                });
            }
        }
        for (proposal, answer) in proposals.into_iter().zip(answers) {
            self.join(proposal, answer);
        }
    }

    /// Records one cycle and adds its child, if any.
    fn join(&mut self, proposal: Proposal, answer: Option<Answer>) {
        let state = &mut self.state;
        state.stats.cycles += 1;
        let mutation = proposal.mutant.as_ref().map(|m| m.0);
        let mut event = Event {
            parent: proposal.parent,
            mutation,
            child: None,
            fitness: None,
            outcome: Outcome::MutationFailed,
        };
        match (proposal.mutant, proposal.assessment, answer) {
            (None, ..) => state.stats.mutation_failures += 1,
            (Some(_), Some(Assessment::Rejected(rejection)), _)
            | (Some(_), Some(Assessment::Keyed(..)), Some(Err(rejection))) => {
                state.stats.rejected += 1;
                event.outcome = Outcome::Rejected(rejection);
            }
            (
                Some((kind, candidate, _)),
                Some(Assessment::Keyed(key, _)),
                Some(Ok((score, hit))),
            ) => {
                if hit.is_none() {
                    state.stats.evaluations += 1;
                    state.stats.promoted += u64::from(score.promoted.is_some());
                    state.cache.insert(&key, &score);
                }
                let child = Individual {
                    id: state.next_id,
                    parent: Some(proposal.parent),
                    mutation: Some(kind),
                    candidate,
                    score,
                    key,
                };
                state.next_id += 1;
                event.child = Some(child.id);
                event.fitness = Some(child.score.fitness);
                event.outcome = hit.map_or(Outcome::Evaluated, Outcome::CacheHit);
                if child.score.beats(&state.best.score) {
                    state.best = child.clone();
                }
                enter_hall_of_fame(&mut state.hall_of_fame, &child);
                state.population.push_back(child);
                if state.population.len() > state.config.population_size {
                    state.population.pop_front();
                }
            }
            (Some(_), _, _) => state.stats.mutation_failures += 1,
        }
        state.history.push(event);
    }

    /// The fittest of `tournament_size` members drawn uniformly with
    /// replacement (the first drawn wins ties).
    fn tournament(&mut self) -> &Individual {
        let state = &mut self.state;
        let mut winner = state.rng.below(state.population.len());
        for _ in 1..state.config.tournament_size {
            let contender = state.rng.below(state.population.len());
            if state.population[contender].score.fitness > state.population[winner].score.fitness {
                winner = contender;
            }
        }
        &state.population[winner]
    }

    /// Replaces the population with copies of the best individual (the
    /// cache, history and ids carry on).
    pub fn restart_from_best(&mut self) {
        let best = self.state.best.clone();
        let size = self.state.config.population_size;
        self.state.population = std::iter::repeat_n(best, size).collect();
    }

    /// The best individual seen so far: promoted ones first, then by value
    /// (the earliest among equals).
    pub fn best(&self) -> &Individual {
        &self.state.best
    }

    /// The current population, oldest first.
    pub fn population(&self) -> impl Iterator<Item = &Individual> {
        self.state.population.iter()
    }

    /// The best distinct individuals seen, best first.
    pub fn hall_of_fame(&self) -> &[Individual] {
        &self.state.hall_of_fame
    }

    /// The individual with this id, while it is in the population or the
    /// hall of fame, or is the warm start or the best.
    pub fn individual(&self, id: u64) -> Option<&Individual> {
        let state = &self.state;
        let kept = [&state.origin, &state.best];
        state
            .population
            .iter()
            .chain(&state.hall_of_fame)
            .chain(kept)
            .find(|i| i.id == id)
    }

    /// The chain of ids and mutations from the warm start to `id`.
    pub fn lineage(&self, id: u64) -> Vec<(u64, Option<MutationKind>)> {
        let made: HashMap<u64, (u64, Option<MutationKind>)> = self
            .state
            .history
            .iter()
            .filter_map(|e| Some((e.child?, (e.parent, e.mutation))))
            .collect();
        let mut chain = Vec::new();
        let mut current = id;
        loop {
            match made.get(&current) {
                Some(&(parent, mutation)) => {
                    chain.push((current, mutation));
                    current = parent;
                }
                None => {
                    chain.push((current, None));
                    break;
                }
            }
        }
        chain.reverse();
        chain
    }

    pub fn history(&self) -> &[Event] {
        &self.state.history
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.state.cache.stats()
    }

    pub fn stats(&self) -> EvolutionStats {
        self.state.stats
    }

    pub fn config(&self) -> &EvolutionConfig {
        &self.state.config
    }

    pub fn fitness(&self) -> &F {
        &self.fitness
    }

    /// A worker of the fitness function, for scoring outside the search.
    pub fn worker(&mut self) -> &mut F::Worker {
        &mut self.workers[0]
    }

    pub fn context(&self) -> &Program {
        &self.mutator.context
    }

    /// The whole search state, for a checkpoint.
    pub fn state(&self) -> &SearchState {
        &self.state
    }
}

/// Probe, cheap rejection and dedup key: everything but randomness, the
/// invariance checks and scoring.
fn assess(rule: &Rule) -> Assessment {
    match reject::screen_cheaply(rule) {
        Err(rejection) => Assessment::Rejected(rejection),
        Ok(screened) => Assessment::Keyed(
            DedupKey::new(&screened.simplified, &screened.probe),
            Box::new(screened),
        ),
    }
}

/// Adds `child` to the hall of fame (best first, one per program) if it
/// ranks among the best [`HALL_OF_FAME_SIZE`].
fn enter_hall_of_fame(hall: &mut Vec<Individual>, child: &Individual) {
    if hall.iter().any(|member| member.key.matches(&child.key)) {
        return;
    }
    let position = hall
        .iter()
        .position(|member| child.score.beats(&member.score))
        .unwrap_or(hall.len());
    if position < HALL_OF_FAME_SIZE {
        hall.insert(position, child.clone());
        hall.truncate(HALL_OF_FAME_SIZE);
    }
}
