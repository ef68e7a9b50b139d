//! Checkpoints: the whole state of a search (configuration, random stream,
//! population, best, hall of fame, fitness cache, history, counts), the
//! names of its tasks and the user sources its candidates may need, in one
//! file, so a long search survives a restart and continues exactly as it
//! would have. CBOR (serde) keeps every f64 bit for bit, infinities and NaNs
//! included. After a magic line, the file holds the FNV-1a hash of the body
//! (16 hex digits and a newline), then the body: a changed byte anywhere is
//! detected. Loading then checks the state itself (population, ids and
//! lineage, candidates' operands, configuration bounds; see
//! [`SearchState::validate`]), so a checkpoint that decodes is also one the
//! search can run. Saving writes atomically, so a failed save leaves the
//! previous checkpoint intact.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::evolve::SearchState;

/// Bumped when the layout changes; older files are refused with a message.
pub const FORMAT: u32 = 3;

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
    let mut body = Vec::new();
    ciborium::into_writer(checkpoint, &mut body)
        .map_err(|e| format!("cannot encode the search: {e}"))?;
    let mut bytes = MAGIC.to_vec();
    bytes.extend(format!("{:016x}\n", optc_runtime::files::checksum(&body)).bytes());
    bytes.extend(body);
    optc_runtime::files::write_atomically(path, &bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let shown = path.display();
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| format!("{shown} is not an optc search checkpoint"))?;
    let (sum, body) = (rest.get(..17), rest.get(17..));
    let recorded = sum
        .filter(|s| s[16] == b'\n')
        .and_then(|s| std::str::from_utf8(&s[..16]).ok())
        .and_then(|s| u64::from_str_radix(s, 16).ok());
    let damaged = |why: &str| format!("{shown} is damaged: {why}");
    let body = match (recorded, body) {
        (Some(recorded), Some(body)) if recorded == optc_runtime::files::checksum(body) => body,
        (Some(_), Some(_)) => return Err(damaged("its checksum does not match its contents")),
        _ => {
            return Err(format!(
                "{shown} has no checksum: it was written by an earlier optc (checkpoint format 1), \
                 or is damaged; this optc reads format {FORMAT}"
            ))
        }
    };
    let checkpoint: Checkpoint =
        ciborium::from_reader(body).map_err(|e| damaged(&e.to_string()))?;
    if checkpoint.format != FORMAT {
        return Err(format!(
            "{shown} has checkpoint format {}; this optc reads format {FORMAT}",
            checkpoint.format
        ));
    }
    checkpoint.state.validate().map_err(|why| damaged(&why))?;
    Ok(checkpoint)
}
