//! Deduplication of candidates, stronger than the paper's structural hash.
//! A [`DedupKey`] has two parts: the hash of the rule's canonical IR
//! (simplified with the algebraic tier, so constants are folded and dead code
//! and dead state are gone; operands of commutative operations ordered by
//! their own hashes; state slots ordered by what they compute; names play no
//! part, as the IR has none) and a behavioural fingerprint (the probe run's
//! values, rounded). Two candidates are the same when either part matches:
//! the canonical hash catches rewrites the simplifier knows, the fingerprint
//! those it does not. [`FitnessCache`] memoises scores by both and counts
//! hits per part.

use std::collections::HashMap;

use optc_compiler::ir::{BinaryOp, Handle, Input, Node, Rule};
use optc_compiler::simplify::{self, Tier};

use serde::{Deserialize, Serialize};

use crate::fitness::Score;
use crate::probe::{self, Probe};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DedupKey {
    pub canonical: u64,
    pub behaviour: u64,
}

impl DedupKey {
    /// The key of a rule whose algebraic simplification is `simplified` and
    /// whose probe run is `probe`.
    pub fn new(simplified: &Rule, probe: &Probe) -> DedupKey {
        DedupKey {
            canonical: canonical_hash(simplified),
            behaviour: fingerprint(probe),
        }
    }

    /// The key of a rule, simplifying and probing it here.
    pub fn of(rule: &Rule) -> Result<DedupKey, String> {
        let probe = probe::probe(rule)?;
        Ok(DedupKey::new(
            &simplify::simplify(rule, Tier::Algebraic),
            &probe,
        ))
    }

    /// Whether the two keys denote the same program (either part matches).
    pub fn matches(&self, other: &DedupKey) -> bool {
        self.canonical == other.canonical || self.behaviour == other.behaviour
    }
}

/// Mixes `value` into `hash` (SplitMix64's finaliser: stable across Rust
/// versions and platforms, unlike `DefaultHasher`).
fn mix(hash: u64, value: u64) -> u64 {
    let mut z = hash
        ^ value
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(hash << 6);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn is_commutative(op: BinaryOp) -> bool {
    matches!(
        op,
        BinaryOp::Add
            | BinaryOp::Mul
            | BinaryOp::Min
            | BinaryOp::Max
            | BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::And
            | BinaryOp::Or
    )
}

/// Hashes of every node, children before parents, with state inputs hashed
/// by `state_label` (so slots can be hashed anonymously, then by rank).
fn node_hashes(rule: &Rule, state_label: impl Fn(u32) -> u64) -> Vec<u64> {
    let mut hashes: Vec<u64> = Vec::with_capacity(rule.graph.len());
    for (handle, node) in rule.graph.iter() {
        let h = |child: Handle| hashes[child.index()];
        let shape = rule.graph.ty(handle).shape as u64;
        let hash = match *node {
            Node::Const(bits) => mix(1, bits),
            Node::Bool(b) => mix(2, b as u64),
            Node::Input(input, _) => match input {
                Input::Param => mix(3, shape),
                Input::Grad => mix(4, shape),
                Input::Step => mix(5, shape),
                Input::Numel => mix(6, shape),
                Input::Rank => mix(15, shape),
                Input::Rows => mix(16, shape),
                Input::Cols => mix(17, shape),
                Input::Hyper(i) => mix(mix(7, shape), i as u64),
                Input::State(i) => mix(mix(8, shape), state_label(i)),
            },
            Node::Unary(op, a) => mix(mix(10, op as u64), h(a)),
            Node::Binary(op, a, b) => {
                let (x, y) = if is_commutative(op) && h(b) < h(a) {
                    (h(b), h(a))
                } else {
                    (h(a), h(b))
                };
                mix(mix(mix(11, op as u64), x), y)
            }
            Node::Select(c, a, b) => mix(mix(mix(12, h(c)), h(a)), h(b)),
            Node::Lerp(a, b, w) => mix(mix(mix(13, h(a)), h(b)), h(w)),
            Node::Reduce(op, scope, a) => mix(mix(mix(14, op as u64), scope as u64), h(a)),
            Node::Gram(a, b) => mix(mix(18, h(a)), h(b)),
            Node::MatMul(a, b) => mix(mix(19, h(a)), h(b)),
            Node::Transpose(a) => mix(20, h(a)),
        };
        hashes.push(hash);
    }
    hashes
}

/// The hash of a rule's IR and its hyperparameters' defaults, up to
/// commutation, node order, sharing, and the order and names of its state
/// slots. Pass a simplified rule (see
/// [`DedupKey::of`]) to also merge what simplification makes equal.
pub fn canonical_hash(rule: &Rule) -> u64 {
    let anonymous = node_hashes(rule, |_| 0);
    let slot_signature = |i: usize| {
        let slot = &rule.states[i];
        mix(
            anonymous[slot.init.index()],
            anonymous[rule.state_out[i].index()],
        )
    };
    let mut order: Vec<usize> = (0..rule.states.len()).collect();
    order.sort_by_key(|&i| slot_signature(i));
    let mut rank = vec![0u64; rule.states.len()];
    for (position, &slot) in order.iter().enumerate() {
        rank[slot] = position as u64 + 1;
    }
    let hashes = node_hashes(rule, |i| rank[i as usize]);
    // Hyperparameters are the rule's interface; their defaults (which the
    // search perturbs) are part of what it computes.
    let mut hash = rule.hypers.iter().fold(15, |hash, hyper| {
        let text = hyper
            .default
            .as_ref()
            .map_or("", |default| default.text.as_str());
        text.bytes()
            .fold(mix(hash, hyper.kind as u64), |hash, byte| {
                mix(hash, byte as u64)
            })
    });
    hash = mix(hash, hashes[rule.param_out.index()]);
    for &slot in &order {
        hash = mix(hash, hashes[rule.states[slot].init.index()]);
        hash = mix(hash, hashes[rule.state_out[slot].index()]);
    }
    hash
}

/// Bits of mantissa a fingerprint keeps: enough to tell programs apart, few
/// enough that f64 rounding differences between equivalent programs vanish.
const FINGERPRINT_MANTISSA_BITS: u32 = 30;

/// The hash of the probe run's parameters and states, each rounded to
/// [`FINGERPRINT_MANTISSA_BITS`] bits (zeros of either sign and NaNs of any
/// payload hash alike).
pub fn fingerprint(probe: &Probe) -> u64 {
    let round = |x: f64| -> u64 {
        if x.is_nan() {
            return u64::MAX;
        }
        if x == 0.0 {
            return 0;
        }
        let drop = 52 - FINGERPRINT_MANTISSA_BITS;
        (x.to_bits().wrapping_add(1 << (drop - 1))) >> drop
    };
    probe.steps.iter().fold(16, |hash, step| {
        let values = step.param_after.iter().chain(&step.state_after);
        values.fold(mix(hash, 17), |hash, &x| mix(hash, round(x)))
    })
}

/// Which part of the key a cache lookup matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheHit {
    Canonical,
    Behaviour,
}

/// Lookup counts of a [`FitnessCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    pub canonical_hits: u64,
    pub behaviour_hits: u64,
    pub misses: u64,
}

impl CacheStats {
    pub fn hits(&self) -> u64 {
        self.canonical_hits + self.behaviour_hits
    }

    pub fn lookups(&self) -> u64 {
        self.hits() + self.misses
    }

    /// Hits over lookups (0 before any lookup).
    pub fn hit_rate(&self) -> f64 {
        if self.lookups() == 0 {
            0.0
        } else {
            self.hits() as f64 / self.lookups() as f64
        }
    }

    /// Counts one lookup that found `hit` (`None`: a miss).
    pub fn count(&mut self, hit: Option<CacheHit>) {
        match hit {
            Some(CacheHit::Canonical) => self.canonical_hits += 1,
            Some(CacheHit::Behaviour) => self.behaviour_hits += 1,
            None => self.misses += 1,
        }
    }
}

/// Scores by dedup key: a lookup matches on the canonical hash first, then
/// on the fingerprint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FitnessCache {
    by_canonical: HashMap<u64, Score>,
    by_behaviour: HashMap<u64, Score>,
    stats: CacheStats,
}

impl FitnessCache {
    pub fn new() -> FitnessCache {
        FitnessCache::default()
    }

    /// The cached score of a program with this key, counting the lookup.
    pub fn get(&mut self, key: &DedupKey) -> Option<(Score, CacheHit)> {
        let found = self.peek(key);
        self.stats.count(found.as_ref().map(|(_, hit)| *hit));
        found
    }

    /// The cached score of a program with this key, without counting.
    pub fn peek(&self, key: &DedupKey) -> Option<(Score, CacheHit)> {
        if let Some(score) = self.by_canonical.get(&key.canonical) {
            return Some((score.clone(), CacheHit::Canonical));
        }
        let score = self.by_behaviour.get(&key.behaviour)?;
        Some((score.clone(), CacheHit::Behaviour))
    }

    pub fn insert(&mut self, key: &DedupKey, score: &Score) {
        self.by_canonical.insert(key.canonical, score.clone());
        self.by_behaviour.insert(key.behaviour, score.clone());
    }

    /// Counts a lookup answered elsewhere (a duplicate within a batch).
    pub fn count(&mut self, hit: Option<CacheHit>) {
        self.stats.count(hit);
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Distinct canonical programs scored.
    pub fn len(&self) -> usize {
        self.by_canonical.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_canonical.is_empty()
    }
}
