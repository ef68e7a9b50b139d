//! Regularized evolution: the same seed gives the same search on any thread
//! count, a different seed another one; a search checkpointed and resumed
//! continues exactly as one that ran through; from a warm start at plain
//! SGD a toy fitness (loss reduction on a small ill-conditioned quadratic)
//! improves within a few hundred evaluations; bad configurations and warm
//! starts are refused.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::Quadratic;
use optc_search::checkpoint::{self, Checkpoint};
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

/// What `optc search` saves for `evolution`, warm-started from `warm_start`
/// and scored on `tasks`.
fn saved_as(evolution: &Evolution<Quadratic>, warm_start: &str, tasks: &[&str]) -> Checkpoint {
    Checkpoint {
        format: checkpoint::FORMAT,
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        sources: Vec::new(),
        warm_start: warm_start.into(),
        state: evolution.state().clone(),
    }
}

fn start(warm_start: &str, seed: u64, threads: usize) -> Evolution<Quadratic> {
    let prelude = common::prelude();
    let start = Candidate::warm_start(&prelude, warm_start).unwrap();
    Evolution::new(
        Arc::new(prelude),
        Quadratic::new(),
        config(seed),
        start,
        threads,
    )
    .unwrap()
}

type Summary = (Vec<optc_search::evolve::Event>, String, f64);

fn summary(evolution: &Evolution<Quadratic>) -> Summary {
    let best = evolution.best();
    (
        evolution.history().to_vec(),
        best.candidate.source(),
        best.score.fitness,
    )
}

fn search(warm_start: &str, seed: u64, cycles: u64, threads: usize) -> Summary {
    let mut evolution = start(warm_start, seed, threads);
    evolution.run(cycles);
    summary(&evolution)
}

#[test]
fn the_same_seed_gives_the_same_search_on_any_thread_count() {
    let first = search("adamw", 7, 152, 1);
    assert_eq!(first.0.len(), 152);
    assert_eq!(first, search("adamw", 7, 152, 1));
    assert_eq!(first, search("adamw", 7, 152, 3));
    let other = search("adamw", 8, 152, 1);
    assert_ne!(
        first.0, other.0,
        "a different seed gives a different search"
    );
}

#[test]
fn runs_end_on_batch_boundaries() {
    let mut evolution = start("sgd", 5, 1);
    evolution.run(10);
    assert_eq!(evolution.stats().cycles, 16, "two whole batches of 8");
}

#[test]
fn a_resumed_checkpoint_continues_identically() {
    let through = search("adamw", 11, 96, 2);
    let mut first_half = start("adamw", 11, 2);
    first_half.run(48);
    let path = std::env::temp_dir().join(format!("optc-evolve-{}.ckpt", std::process::id()));
    let saved = saved_as(&first_half, "adamw", &["toy quadratic"]);
    checkpoint::save(&path, &saved).unwrap();
    drop(first_half);
    let loaded = checkpoint::load(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(loaded.tasks, saved.tasks);
    let context = Arc::new(common::prelude());
    let mut resumed = Evolution::resume(context, Quadratic::new(), loaded.state, 1);
    resumed.run(48);
    assert_eq!(summary(&resumed), through);
    assert_eq!(resumed.cache_stats(), {
        let mut again = start("adamw", 11, 1);
        again.run(96);
        again.cache_stats()
    });
}

#[test]
fn damaged_checkpoints_are_refused_and_a_failed_save_keeps_the_old_one() {
    let dir = std::env::temp_dir().join(format!("optc-evolve-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("search.ckpt");
    let evolution = start("sgd", 1, 1);
    let saved = saved_as(&evolution, "sgd", &[]);
    checkpoint::save(&path, &saved).unwrap();
    let good = std::fs::read(&path).unwrap();
    // Saving into a directory that does not exist fails and writes nothing.
    let missing = dir.join("no-such-dir").join("search.ckpt");
    assert!(checkpoint::save(&missing, &saved).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), good);
    let truncated = dir.join("truncated.ckpt");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let error = checkpoint::load(&truncated).unwrap_err();
    assert!(error.contains("damaged"), "{error}");
    let other = dir.join("other.ckpt");
    std::fs::write(&other, b"optimizer sgd() {}").unwrap();
    let error = checkpoint::load(&other).unwrap_err();
    assert!(error.contains("not an optc search checkpoint"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_toy_fitness_improves_from_plain_sgd() {
    // One child per batch: the paper's steady-state evolution.
    let sequential = EvolutionConfig {
        batch_size: 1,
        ..config(1)
    };
    let prelude = common::prelude();
    let sgd = Candidate::warm_start(&prelude, "sgd").unwrap();
    let mut evolution =
        Evolution::new(Arc::new(prelude), Quadratic::new(), sequential, sgd, 1).unwrap();
    let initial = evolution.best().score.fitness;
    let started = Instant::now();
    evolution.run(1500);
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
        best.score.fitness, best.candidate
    );
    assert!(stats.evaluations <= 1501);
    // log(loss reduction) grows by more than 2: the loss ends e^2 ≈ 7x lower.
    assert!(
        best.score.fitness > initial + 2.0,
        "{initial} -> {}",
        best.score.fitness
    );
    let outcomes = evolution.history().iter().map(|e| &e.outcome);
    assert!(outcomes.clone().any(|o| matches!(o, Outcome::Evaluated)));
    assert!(outcomes.clone().any(|o| matches!(o, Outcome::CacheHit(_))));
    assert!(outcomes.clone().any(|o| matches!(o, Outcome::Rejected(_))));
}

#[test]
fn the_population_ages_and_keeps_its_size() {
    let mut evolution = start("lion", 3, 1);
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
    let context = Arc::new(prelude.clone());
    let refused = Evolution::new(context.clone(), Quadratic::new(), empty, sgd.clone(), 1);
    assert!(matches!(refused, Err(StartError::EmptyPopulation)));
    let no_gradient = Candidate::from_rule(&common::compile(
        "optimizer decay(lr = 0.1) { p *= 1 - lr; }",
        "decay",
    ))
    .unwrap();
    let no_batch = EvolutionConfig {
        batch_size: 0,
        ..config(0)
    };
    let refused = Evolution::new(context.clone(), Quadratic::new(), no_batch, sgd, 1);
    assert!(matches!(refused, Err(StartError::EmptyBatch)));
    let refused = Evolution::new(context, Quadratic::new(), config(0), no_gradient, 1);
    assert!(matches!(
        refused,
        Err(StartError::WarmStartRejected(Rejection::IgnoresGradient))
    ));
}

/// A saved search, rewritten by `change` (on the decoded CBOR of its state)
/// with a correct checksum: damage a checksum cannot see.
fn rewritten(change: impl FnOnce(&mut ciborium::Value)) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("optc-evolve-rewrite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "{}.ckpt",
        COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let mut evolution = start("sgd", 3, 1);
    evolution.run(16);
    let saved = saved_as(&evolution, "sgd", &[]);
    checkpoint::save(&path, &saved).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let magic = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let mut value: ciborium::Value = ciborium::from_reader(&bytes[magic + 17..]).unwrap();
    change(field(&mut value, "state"));
    let mut body = Vec::new();
    ciborium::into_writer(&value, &mut body).unwrap();
    let mut out = bytes[..magic].to_vec();
    out.extend(format!("{:016x}\n", optc_runtime::files::checksum(&body)).bytes());
    out.extend(body);
    std::fs::write(&path, out).unwrap();
    path
}

static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The value of map field `name`.
fn field<'v>(value: &'v mut ciborium::Value, name: &str) -> &'v mut ciborium::Value {
    let ciborium::Value::Map(entries) = value else {
        panic!("not a map: {value:?}")
    };
    let entry = entries
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(name))
        .unwrap_or_else(|| panic!("no field {name}"));
    &mut entry.1
}

#[test]
fn every_changed_byte_of_a_search_checkpoint_is_refused() {
    let dir = std::env::temp_dir().join(format!("optc-evolve-flips-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("search.ckpt");
    let mut evolution = start("sgd", 2, 1);
    evolution.run(8);
    let saved = saved_as(&evolution, "sgd", &[]);
    checkpoint::save(&path, &saved).unwrap();
    let good = std::fs::read(&path).unwrap();
    let flipped = dir.join("flipped.ckpt");
    for at in 0..good.len() {
        let mut bytes = good.clone();
        bytes[at] ^= 0x01;
        std::fs::write(&flipped, &bytes).unwrap();
        assert!(
            checkpoint::load(&flipped).is_err(),
            "byte {at} of {}",
            good.len()
        );
    }
    assert!(checkpoint::load(&path).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoints_the_search_could_not_run_are_refused() {
    type Change = Box<dyn FnOnce(&mut ciborium::Value)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "batch 0",
            Box::new(|s| {
                *field(field(s, "config"), "batch_size") = 0.into();
            }),
        ),
        (
            "empty population",
            Box::new(|s| {
                *field(s, "population") = ciborium::Value::Array(Vec::new());
            }),
        ),
        (
            "a lineage cycle",
            Box::new(|s| {
                let ciborium::Value::Array(events) = field(s, "history") else {
                    panic!("a history")
                };
                let event = events
                    .iter_mut()
                    .find(|e| !field(&mut (*e).clone(), "child").is_null())
                    .expect("a child joined");
                *field(event, "parent") = 1_000_000.into();
            }),
        ),
        (
            "an operand out of range",
            Box::new(|s| {
                let candidate = field(field(s, "best"), "candidate");
                *field(candidate, "hypers") = ciborium::Value::Array(Vec::new());
            }),
        ),
        (
            "a huge population",
            Box::new(|s| {
                *field(field(s, "config"), "population_size") = 100_000_000_000u64.into();
            }),
        ),
    ];
    for (what, change) in cases {
        let path = rewritten(change);
        let error = checkpoint::load(&path).unwrap_err();
        assert!(error.contains("is damaged"), "{what}: {error}");
        let _ = std::fs::remove_file(&path);
    }
}

/// The same, with the real fitness on the stochastic task (minibatches in a
/// seeded order): its scores, and so the search, do not depend on threads.
#[test]
fn a_search_on_the_minibatch_task_is_the_same_on_one_and_two_threads() {
    let prelude = Arc::new(common::prelude());
    let tasks: Vec<_> = optc_search::proxy::builtin(&prelude)
        .unwrap()
        .into_iter()
        .filter(|t| t.name == "mlp_minibatch")
        .collect();
    let fitness =
        Arc::new(optc_search::ProxyFitness::new(tasks, &prelude, 2, "cranelift").unwrap());
    let run = |threads: usize| {
        let start = Candidate::warm_start(&prelude, "sgd").unwrap();
        let mut evolution = Evolution::new(
            prelude.clone(),
            fitness.clone(),
            EvolutionConfig {
                population_size: 8,
                seed: 3,
                ..EvolutionConfig::default()
            },
            start,
            threads,
        )
        .unwrap();
        evolution.run(24);
        let best = evolution.best();
        (
            evolution.history().to_vec(),
            best.candidate.source(),
            best.score.clone(),
        )
    };
    let one = run(1);
    assert_eq!(one.0.len(), 24);
    assert!(one.2.tasks.iter().all(|t| t.task == "mlp_minibatch"));
    assert_eq!(one, run(2));
}

/// The invariance checks apply to the warm start too, and turn off.
#[test]
fn a_warm_start_breaking_an_invariance_is_refused_unless_the_check_is_off() {
    let prelude = common::prelude();
    let growing = common::compile("optimizer r(lr = 0.01) { p -= lr * t * g; }", "r");
    let start = |invariances| {
        Evolution::new(
            Arc::new(prelude.clone()),
            Quadratic::new(),
            EvolutionConfig {
                invariances,
                ..config(1)
            },
            Candidate::from_rule(&growing).unwrap(),
            1,
        )
    };
    let refused = start(optc_search::reject::Invariances::default());
    assert!(
        matches!(
            refused,
            Err(StartError::WarmStartRejected(Rejection::GrowingStep { .. }))
        ),
        "{:?}",
        refused.err()
    );
    let off = optc_search::reject::Invariances {
        shift: true,
        growth: false,
    };
    assert!(start(off).is_ok());
}
