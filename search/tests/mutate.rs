//! Mutations always yield programs the type checker accepts: thousands of
//! random mutations from AdamW and Lion, each child recompiled from its
//! printed source in a fresh program.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use optc_search::mutate::{MutationKind, MutationWeights, Mutator};
use optc_search::program::Candidate;
use optc_search::Rng;

/// Random walks of `steps` mutations from `warm_start`; every child is
/// checked, and the walk restarts from the warm start now and then so
/// programs stay near the ones the search sees.
fn walk(warm_start: &str, steps: usize, seed: u64) -> HashSet<MutationKind> {
    let prelude = common::prelude();
    let start = Candidate::warm_start(&prelude, warm_start).unwrap();
    let mutator = Mutator::new(Arc::new(prelude.clone()), MutationWeights::default());
    let mut rng = Rng::new(seed);
    let mut current = start.clone();
    let mut kinds = HashSet::new();
    let mut produced = 0;
    for step in 0..steps {
        if step % 50 == 0 {
            current = start.clone();
        }
        let Some(mutant) = mutator.mutate(&current, &mut rng) else {
            continue;
        };
        produced += 1;
        let source = mutant.candidate.source();
        let recompiled = mutant.candidate.compile(&common::prelude());
        assert!(
            recompiled.is_ok(),
            "ill-typed mutant: {recompiled:?}\n{source}"
        );
        assert_ne!(mutant.candidate, current, "a mutation changed nothing");
        kinds.insert(mutant.kind);
        current = mutant.candidate;
    }
    assert!(
        produced * 10 >= steps * 9,
        "only {produced} of {steps} mutations succeeded"
    );
    kinds
}

#[test]
fn thousands_of_mutations_from_adamw_are_well_typed() {
    let kinds = walk("adamw", 2000, 1);
    assert_eq!(kinds.len(), 5, "every mutation kind occurs: {kinds:?}");
}

#[test]
fn thousands_of_mutations_from_lion_are_well_typed() {
    let kinds = walk("lion", 2000, 2);
    assert_eq!(kinds.len(), 5, "every mutation kind occurs: {kinds:?}");
}

#[test]
fn weights_select_the_mutations() {
    let prelude = common::prelude();
    let start = Candidate::warm_start(&prelude, "sgd").unwrap();
    let only_inserts = MutationWeights {
        insert: 1.0,
        delete: 0.0,
        modify_argument: 0.0,
        modify_operator: 0.0,
        perturb_constant: 0.0,
    };
    let mutator = Mutator::new(Arc::new(prelude.clone()), only_inserts);
    let mut rng = Rng::new(3);
    for _ in 0..100 {
        let mutant = mutator.mutate(&start, &mut rng).unwrap();
        assert_eq!(mutant.kind, MutationKind::Insert);
        assert_eq!(
            mutant.candidate.statements.len(),
            start.statements.len() + 1
        );
    }
}

#[test]
fn perturbing_a_constant_scales_it_by_a_power_of_two_near_one() {
    let prelude = common::prelude();
    let start = Candidate::warm_start(&prelude, "sgd").unwrap();
    let only_constants = MutationWeights {
        insert: 0.0,
        delete: 0.0,
        modify_argument: 0.0,
        modify_operator: 0.0,
        perturb_constant: 1.0,
    };
    let mutator = Mutator::new(Arc::new(prelude.clone()), only_constants);
    let mut rng = Rng::new(4);
    let mut log2_factors = Vec::new();
    for _ in 0..400 {
        let mutant = mutator.mutate(&start, &mut rng).unwrap();
        // sgd's only constant is its learning rate default, 1e-3.
        let lr: f64 = mutant.candidate.hypers[0].default.parse().unwrap();
        log2_factors.push((lr / 1e-3).log2());
    }
    let n = log2_factors.len() as f64;
    let mean = log2_factors.iter().sum::<f64>() / n;
    let variance = log2_factors.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 0.2, "mean of log2 factors {mean}");
    assert!(
        (variance - 1.0).abs() < 0.25,
        "variance of log2 factors {variance}"
    );
}
