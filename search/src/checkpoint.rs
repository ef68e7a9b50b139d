//! Checkpoints: the whole state of a search (configuration, random stream,
//! population, best, hall of fame, fitness cache, history, counts), the
//! names of its tasks and the user sources its candidates may need, in one
//! file, so a long search survives a restart and continues exactly as it
//! would have. CBOR (serde) keeps every f64 bit for bit, infinities and NaNs
//! included. Saving writes a temporary file and renames it over the old
//! one, so a failed save leaves the previous checkpoint intact.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::evolve::SearchState;

/// Bumped when the layout changes; older files are refused with a message.
pub const FORMAT: u32 = 1;

const MAGIC: &[u8] = b"optc-search-checkpoint\n";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: u32,
    /// The proxy tasks the scores were computed on, by name.
    pub tasks: Vec<String>,
    /// `.opt` files loaded besides the standard library: (name, text).
    pub sources: Vec<(String, String)>,
    /// What the search was warm-started from, for reports.
    pub warm_start: String,
    pub state: SearchState,
}

/// Writes `checkpoint` to `path` atomically.
pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<(), String> {
    let mut bytes = MAGIC.to_vec();
    ciborium::into_writer(checkpoint, &mut bytes)
        .map_err(|e| format!("cannot encode the search: {e}"))?;
    let temporary = path.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temporary);
        format!("cannot write {}: {e}", path.display())
    })
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| format!("{} is not an optc search checkpoint", path.display()))?;
    let checkpoint: Checkpoint =
        ciborium::from_reader(body).map_err(|e| format!("{} is damaged: {e}", path.display()))?;
    if checkpoint.format != FORMAT {
        return Err(format!(
            "{} has checkpoint format {}; this optc reads format {FORMAT}",
            path.display(),
            checkpoint.format
        ));
    }
    Ok(checkpoint)
}
