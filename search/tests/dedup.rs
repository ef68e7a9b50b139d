//! Deduplication merges programs that differ only by commutation, dead
//! statements, renaming of `let`s or state slots, or algebra the simplifier
//! does not know, and keeps different programs apart; the cache counts its
//! hits by the part of the key that matched.

mod common;

use optc_compiler::simplify::{simplify, Tier};
use optc_search::dedup::{canonical_hash, CacheHit, DedupKey, FitnessCache};
use optc_search::Score;

fn key(body: &str) -> DedupKey {
    let text = format!("optimizer r(lr = 0.01, b = 0.9) {{ state m = 0; {body} }}");
    DedupKey::of(&common::compile(&text, "r")).unwrap()
}

fn canonical(body: &str) -> u64 {
    let text = format!("optimizer r(lr = 0.01, b = 0.9) {{ state m = 0; {body} }}");
    canonical_hash(&simplify(&common::compile(&text, "r"), Tier::Algebraic))
}

const MOMENTUM: &str = "m = b * m + g; let step = lr * m; p -= step;";

#[test]
fn commuted_operands_have_the_same_canonical_hash() {
    assert_eq!(
        canonical(MOMENTUM),
        canonical("m = g + m * b; p -= m * lr;")
    );
}

#[test]
fn dead_statements_and_renamed_lets_have_the_same_canonical_hash() {
    let variant = "let unused = exp(g) * 3; m = b * m + g; let delta = lr * m; p -= delta;";
    assert_eq!(canonical(MOMENTUM), canonical(variant));
}

#[test]
fn renamed_and_reordered_state_slots_have_the_same_canonical_hash() {
    let a = "optimizer r(lr = 0.01) { state m = 0; state v = 0; m = lerp(m, g, 0.1); v = lerp(v, g * g, 0.01); p -= lr * m / (sqrt(v) + 1e-8); }";
    let b = "optimizer r(lr = 0.01) { state second = 0; state first = 0; first = lerp(first, g, 0.1); second = lerp(second, g * g, 0.01); p -= lr * first / (sqrt(second) + 1e-8); }";
    let hash = |text| canonical_hash(&simplify(&common::compile(text, "r"), Tier::Algebraic));
    assert_eq!(hash(a), hash(b));
}

#[test]
fn algebra_the_simplifier_does_not_know_is_merged_by_behaviour() {
    // Distributivity is no rewrite of the simplifier, so the IR differs.
    let factored = "p -= lr * (g + m); m = g;";
    let distributed = "p -= lr * g + lr * m; m = g;";
    assert_ne!(canonical(factored), canonical(distributed));
    assert!(key(factored).matches(&key(distributed)));
}

#[test]
fn different_programs_are_kept_apart() {
    let programs = [
        MOMENTUM,
        "m = b * m + g; p -= lr * sign(m);",
        "m = b * m + g; p -= 2 * lr * m;",
        "m = b * m - g; p += lr * m;",
        "p -= lr * g;",
        "p -= lr * g * g;",
        "m = lerp(m, g, 0.1); p -= lr * m;",
    ];
    let keys: Vec<DedupKey> = programs.iter().map(|body| key(body)).collect();
    for (i, a) in keys.iter().enumerate() {
        for (j, b) in keys.iter().enumerate().skip(i + 1) {
            assert!(
                !a.matches(b),
                "`{}` and `{}` merged",
                programs[i],
                programs[j]
            );
        }
    }
    // `m = b * m - g; p += lr * m` is momentum with the sign of m flipped:
    // the same parameters, but different state, so it is kept apart.
    assert_ne!(keys[0].behaviour, keys[3].behaviour);
}

#[test]
fn different_hyperparameter_defaults_are_kept_apart() {
    let with_default = |lr: &str| {
        let text = format!("optimizer r(lr = {lr}) {{ p -= lr * g; }}");
        DedupKey::of(&common::compile(&text, "r")).unwrap()
    };
    let (slow, fast) = (with_default("0.01"), with_default("0.02"));
    assert_ne!(slow.canonical, fast.canonical);
    assert!(!slow.matches(&fast));
}

#[test]
fn the_cache_counts_hits_by_part_and_misses() {
    let mut cache = FitnessCache::new();
    let momentum = key(MOMENTUM);
    assert_eq!(cache.get(&momentum), None);
    cache.insert(&momentum, &Score::plain(1.5));
    assert_eq!(
        cache
            .get(&key("m = g + m * b; p -= m * lr;"))
            .map(|(score, hit)| (score.fitness, hit)),
        Some((1.5, CacheHit::Canonical))
    );
    cache.insert(&key("p -= lr * (g + m); m = g;"), &Score::plain(2.5));
    assert_eq!(
        cache
            .get(&key("p -= lr * g + lr * m; m = g;"))
            .map(|(score, hit)| (score.fitness, hit)),
        Some((2.5, CacheHit::Behaviour))
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.canonical_hits, stats.behaviour_hits, stats.misses),
        (1, 1, 1)
    );
    assert!((stats.hit_rate() - 2.0 / 3.0).abs() < 1e-12);
}
