//! Regularized evolution (Real et al., 2019), as Chen et al. (2023) used it
//! to find Lion: a population of fixed size, warm-started with copies of one
//! program; each cycle a tournament picks a parent, a mutant of it is
//! compiled, probed, rejected or looked up in the fitness cache (by
//! [`DedupKey`]) or evaluated, and joins the population while the oldest
//! member leaves (aging).
//!
//! Every random draw happens in [`Evolution::cycle`] from one seeded
//! [`Rng`], before and independently of evaluation; evaluation is a pure
//! function of the child's rule. So a search is a function of its seed, and
//! a later parallel version that evaluates a batch of proposed children on
//! several threads and applies the results in proposal order gives the same
//! history for any thread count.

use std::collections::VecDeque;

use optc_compiler::ir::Rule;
use optc_compiler::simplify::{self, Tier};
use optc_compiler::Program;

use crate::dedup::{CacheHit, CacheStats, DedupKey, FitnessCache};
use crate::mutate::{MutationKind, MutationWeights, Mutator};
use crate::probe;
use crate::program::Candidate;
use crate::reject::{self, Rejection};
use crate::rng::Rng;

/// How good a rule is; higher is better. Must be deterministic. A NaN
/// counts as the worst possible value.
pub trait Fitness {
    fn fitness(&self, rule: &Rule) -> f64;
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvolutionConfig {
    pub population_size: usize,
    pub tournament_size: usize,
    pub seed: u64,
    pub mutation_weights: MutationWeights,
}

impl Default for EvolutionConfig {
    /// The paper's tournament size; a population sized for a small machine.
    fn default() -> EvolutionConfig {
        EvolutionConfig {
            population_size: 100,
            tournament_size: 2,
            seed: 0,
            mutation_weights: MutationWeights::default(),
        }
    }
}

/// A member of the population.
#[derive(Clone, Debug, PartialEq)]
pub struct Individual {
    /// Unique, in order of creation; the warm start is 0.
    pub id: u64,
    /// `None` for the warm start.
    pub parent: Option<u64>,
    pub candidate: Candidate,
    pub fitness: f64,
    pub key: DedupKey,
}

/// What became of one cycle's child.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// No well-typed mutant was found; nothing joined.
    MutationFailed,
    Rejected(Rejection),
    /// Its fitness came from the cache.
    CacheHit(CacheHit),
    Evaluated,
}

/// One cycle of the search, as recorded in the history.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub parent: u64,
    pub mutation: Option<MutationKind>,
    /// The child's id, when it joined the population.
    pub child: Option<u64>,
    pub fitness: Option<f64>,
    pub outcome: Outcome,
}

/// Counts over a search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvolutionStats {
    pub cycles: u64,
    /// Calls of the fitness function.
    pub evaluations: u64,
    pub rejected: u64,
    pub mutation_failures: u64,
}

/// Why a search cannot start.
#[derive(Clone, Debug, PartialEq)]
pub enum StartError {
    EmptyPopulation,
    EmptyTournament,
    WarmStartDoesNotCompile(String),
    WarmStartRejected(Rejection),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::EmptyPopulation => f.write_str("the population size must be at least 1"),
            StartError::EmptyTournament => f.write_str("the tournament size must be at least 1"),
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

/// A running search.
pub struct Evolution<'a, F: Fitness> {
    mutator: Mutator<'a>,
    fitness: F,
    config: EvolutionConfig,
    rng: Rng,
    population: VecDeque<Individual>,
    best: Individual,
    cache: FitnessCache,
    history: Vec<Event>,
    stats: EvolutionStats,
    next_id: u64,
}

/// A child's fitness, or why it has none.
enum Assessment {
    Rejected(Rejection),
    Scored {
        key: DedupKey,
        fitness: f64,
        hit: Option<CacheHit>,
    },
}

impl<'a, F: Fitness> Evolution<'a, F> {
    /// Starts a search whose population is `population_size` copies of
    /// `warm_start` (evaluated once), compiling candidates in `context`.
    pub fn new(
        context: &'a Program,
        fitness: F,
        config: EvolutionConfig,
        warm_start: Candidate,
    ) -> Result<Evolution<'a, F>, StartError> {
        if config.population_size == 0 {
            return Err(StartError::EmptyPopulation);
        }
        if config.tournament_size == 0 {
            return Err(StartError::EmptyTournament);
        }
        let rule = warm_start
            .compile(context)
            .map_err(StartError::WarmStartDoesNotCompile)?;
        let mut search = Evolution {
            mutator: Mutator::new(context, config.mutation_weights),
            fitness,
            config,
            rng: Rng::new(config.seed),
            population: VecDeque::with_capacity(config.population_size + 1),
            best: Individual {
                id: 0,
                parent: None,
                candidate: warm_start,
                fitness: f64::NEG_INFINITY,
                key: DedupKey {
                    canonical: 0,
                    behaviour: 0,
                },
            },
            cache: FitnessCache::new(),
            history: Vec::new(),
            stats: EvolutionStats::default(),
            next_id: 1,
        };
        match search.assess(&rule) {
            Assessment::Rejected(rejection) => Err(StartError::WarmStartRejected(rejection)),
            Assessment::Scored { key, fitness, .. } => {
                search.best.key = key;
                search.best.fitness = fitness;
                let copies = std::iter::repeat_n(search.best.clone(), config.population_size);
                search.population.extend(copies);
                Ok(search)
            }
        }
    }

    /// Runs `cycles` cycles.
    pub fn run(&mut self, cycles: usize) {
        for _ in 0..cycles {
            self.cycle();
        }
    }

    /// One cycle: tournament, mutation, assessment, aging.
    pub fn cycle(&mut self) -> &Event {
        self.stats.cycles += 1;
        let parent = self.tournament().clone();
        let event = match self.mutator.mutate(&parent.candidate, &mut self.rng) {
            None => {
                self.stats.mutation_failures += 1;
                Event {
                    parent: parent.id,
                    mutation: None,
                    child: None,
                    fitness: None,
                    outcome: Outcome::MutationFailed,
                }
            }
            Some(mutant) => match self.assess(&mutant.rule) {
                Assessment::Rejected(rejection) => {
                    self.stats.rejected += 1;
                    Event {
                        parent: parent.id,
                        mutation: Some(mutant.kind),
                        child: None,
                        fitness: None,
                        outcome: Outcome::Rejected(rejection),
                    }
                }
                Assessment::Scored { key, fitness, hit } => {
                    let child = Individual {
                        id: self.next_id,
                        parent: Some(parent.id),
                        candidate: mutant.candidate,
                        fitness,
                        key,
                    };
                    self.next_id += 1;
                    if child.fitness > self.best.fitness {
                        self.best = child.clone();
                    }
                    let event = Event {
                        parent: parent.id,
                        mutation: Some(mutant.kind),
                        child: Some(child.id),
                        fitness: Some(fitness),
                        outcome: hit.map_or(Outcome::Evaluated, Outcome::CacheHit),
                    };
                    self.population.push_back(child);
                    if self.population.len() > self.config.population_size {
                        self.population.pop_front();
                    }
                    event
                }
            },
        };
        self.history.push(event);
        &self.history[self.history.len() - 1]
    }

    /// The fittest of `tournament_size` members drawn uniformly with
    /// replacement (the first drawn wins ties).
    fn tournament(&mut self) -> &Individual {
        let mut winner = self.rng.below(self.population.len());
        for _ in 1..self.config.tournament_size {
            let contender = self.rng.below(self.population.len());
            if self.population[contender].fitness > self.population[winner].fitness {
                winner = contender;
            }
        }
        &self.population[winner]
    }

    /// Probe, rejection, cache, fitness: everything but randomness.
    fn assess(&mut self, rule: &Rule) -> Assessment {
        let probe = match probe::probe(rule) {
            Ok(probe) => probe,
            Err(message) => return Assessment::Rejected(Rejection::ProbeFailed(message)),
        };
        let simplified = simplify::simplify(rule, Tier::Algebraic);
        if let Err(rejection) = reject::check(&simplified, &probe) {
            return Assessment::Rejected(rejection);
        }
        let key = DedupKey::new(&simplified, &probe);
        if let Some((fitness, hit)) = self.cache.get(&key) {
            return Assessment::Scored {
                key,
                fitness,
                hit: Some(hit),
            };
        }
        self.stats.evaluations += 1;
        let fitness = self.fitness.fitness(rule);
        let fitness = if fitness.is_nan() {
            f64::NEG_INFINITY
        } else {
            fitness
        };
        self.cache.insert(&key, fitness);
        Assessment::Scored {
            key,
            fitness,
            hit: None,
        }
    }

    /// The fittest individual seen so far (the earliest among equals).
    pub fn best(&self) -> &Individual {
        &self.best
    }

    /// The current population, oldest first.
    pub fn population(&self) -> impl Iterator<Item = &Individual> {
        self.population.iter()
    }

    pub fn history(&self) -> &[Event] {
        &self.history
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    pub fn stats(&self) -> EvolutionStats {
        self.stats
    }

    pub fn config(&self) -> &EvolutionConfig {
        &self.config
    }
}
