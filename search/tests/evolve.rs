//! Regularized evolution: the same seed gives the same search, a different
//! seed another one; from a warm start at plain SGD a toy fitness (loss
//! reduction on a small ill-conditioned quadratic) improves within a few
//! hundred evaluations; bad configurations and warm starts are refused.

mod common;

use std::time::Instant;

use common::Quadratic;
use optc_search::evolve::{EvolutionConfig, Outcome, StartError};
use optc_search::program::Candidate;
use optc_search::reject::Rejection;
use optc_search::Evolution;

fn config(seed: u64) -> EvolutionConfig {
    EvolutionConfig {
        population_size: 20,
        tournament_size: 2,
        seed,
        ..EvolutionConfig::default()
    }
}

fn search(
    warm_start: &str,
    seed: u64,
    cycles: usize,
) -> (Vec<optc_search::evolve::Event>, String, f64) {
    let prelude = common::prelude();
    let start = Candidate::warm_start(&prelude, warm_start).unwrap();
    let mut evolution = Evolution::new(&prelude, Quadratic::new(), config(seed), start).unwrap();
    evolution.run(cycles);
    let best = evolution.best();
    (
        evolution.history().to_vec(),
        best.candidate.source(),
        best.fitness,
    )
}

#[test]
fn the_same_seed_gives_the_same_search() {
    let first = search("adamw", 7, 150);
    let second = search("adamw", 7, 150);
    assert_eq!(first.0.len(), 150);
    assert_eq!(first, second);
    let other = search("adamw", 8, 150);
    assert_ne!(
        first.0, other.0,
        "a different seed gives a different search"
    );
}

#[test]
fn a_toy_fitness_improves_from_plain_sgd() {
    let prelude = common::prelude();
    let start = Candidate::warm_start(&prelude, "sgd").unwrap();
    let mut evolution = Evolution::new(&prelude, Quadratic::new(), config(1), start).unwrap();
    let initial = evolution.best().fitness;
    let started = Instant::now();
    evolution.run(400);
    let elapsed = started.elapsed().as_secs_f64();
    let stats = evolution.stats();
    let cache = evolution.cache_stats();
    let best = evolution.best();
    println!(
        "{} cycles in {elapsed:.2} s: {} fitness evaluations ({:.0} cycles/s, {:.0} evaluations/s), \
         {} rejected, {} mutation failures, cache hit rate {:.1}% ({} canonical, {} behaviour hits)",
        stats.cycles,
        stats.evaluations,
        stats.cycles as f64 / elapsed,
        stats.evaluations as f64 / elapsed,
        stats.rejected,
        stats.mutation_failures,
        100.0 * cache.hit_rate(),
        cache.canonical_hits,
        cache.behaviour_hits,
    );
    println!(
        "fitness {initial:.3} -> {:.3}; best:\n{}",
        best.fitness, best.candidate
    );
    assert!(stats.evaluations <= 400);
    // log(loss reduction) grows by more than 2: the loss ends e^2 ≈ 7x lower.
    assert!(
        best.fitness > initial + 2.0,
        "{initial} -> {}",
        best.fitness
    );
    let outcomes = evolution.history().iter().map(|e| &e.outcome);
    assert!(outcomes.clone().any(|o| matches!(o, Outcome::Evaluated)));
    assert!(outcomes.clone().any(|o| matches!(o, Outcome::CacheHit(_))));
    assert!(outcomes.clone().any(|o| matches!(o, Outcome::Rejected(_))));
}

#[test]
fn the_population_ages_and_keeps_its_size() {
    let prelude = common::prelude();
    let start = Candidate::warm_start(&prelude, "lion").unwrap();
    let mut evolution = Evolution::new(&prelude, Quadratic::new(), config(3), start).unwrap();
    evolution.run(100);
    let members: Vec<u64> = evolution.population().map(|i| i.id).collect();
    assert_eq!(members.len(), 20);
    let joined: Vec<u64> = evolution.history().iter().filter_map(|e| e.child).collect();
    // The population is the last 20 children to join, oldest first.
    assert!(joined.len() >= 20, "{} children joined", joined.len());
    assert_eq!(members, joined[joined.len() - 20..]);
}

#[test]
fn bad_starts_are_refused() {
    let prelude = common::prelude();
    let sgd = Candidate::warm_start(&prelude, "sgd").unwrap();
    let empty = EvolutionConfig {
        population_size: 0,
        ..config(0)
    };
    let refused = Evolution::new(&prelude, Quadratic::new(), empty, sgd);
    assert!(matches!(refused, Err(StartError::EmptyPopulation)));
    let no_gradient = Candidate::from_rule(&common::compile(
        "optimizer decay(lr = 0.1) { p *= 1 - lr; }",
        "decay",
    ))
    .unwrap();
    let refused = Evolution::new(&prelude, Quadratic::new(), config(0), no_gradient);
    assert!(matches!(
        refused,
        Err(StartError::WarmStartRejected(Rejection::IgnoresGradient))
    ));
}
