//! Evolutionary search over `.opt` update rules (issue 5's engine): the
//! program space, mutations that keep programs well typed, deduplication by
//! canonical IR and behaviour, cheap rejection before training, and
//! regularized evolution with a pluggable fitness.

pub mod dedup;
pub mod evolve;
pub mod mutate;
pub mod probe;
pub mod program;
pub mod reject;
pub mod rng;

pub use evolve::{Evolution, EvolutionConfig, Fitness};
pub use program::Candidate;
pub use rng::Rng;
