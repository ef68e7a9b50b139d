//! Evolutionary search over `.opt` update rules (the engine behind
//! `optc search`): the program space, mutations that keep programs well
//! typed, deduplication by canonical IR and behaviour, cheap rejection
//! before training, proxy tasks trained with the JIT, fitness normalised
//! against tuned baselines with a funnel, regularized evolution on several
//! threads, checkpoints, and the pruning that turns a winner into a
//! readable rule.

pub mod checkpoint;
pub mod dedup;
pub mod evolve;
pub mod fitness;
pub mod mutate;
pub mod parallel;
pub mod probe;
pub mod program;
pub mod proxy;
pub mod prune;
pub mod reject;
pub mod rng;

pub use evolve::{Evolution, EvolutionConfig};
pub use fitness::{Fitness, ProxyFitness, Score};
pub use program::Candidate;
pub use rng::Rng;
