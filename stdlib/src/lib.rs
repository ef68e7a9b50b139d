//! The standard library: every `stdlib/*.opt` file (optimizers matching
//! torch.optim and optax, and optax's schedules), embedded in the binary and
//! loaded as the prelude of every program; [`load`] resolves what a user
//! names (a stdlib optimizer, a file, source text) against it.

pub mod load;

use optc_compiler::{Origin, Program};

include!(concat!(env!("OUT_DIR"), "/files.rs"));

/// A program holding the whole standard library as its prelude.
pub fn prelude() -> Program {
    let mut program = Program::new();
    for (name, text) in FILES {
        // The stdlib is tested to parse; a broken file would only hide its own items.
        let _ = program.add_source(&format!("stdlib/{name}"), text.as_bytes(), Origin::Prelude);
    }
    program
}
