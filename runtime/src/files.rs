//! Writing files so that a failure never leaves a damaged one behind: the
//! bytes go to a new temporary file in the same directory (a name no other
//! writer uses, created exclusively), are flushed to disk, and the temporary
//! file is renamed over the target. A failed write removes the temporary
//! file and leaves the target as it was; two writers never share a
//! temporary file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The 64-bit FNV-1a hash of `bytes`, which the project's file formats
/// carry to detect damage: changing any one byte always changes it (each
/// step is a bijection of the running hash).
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Writes `bytes` to `path` atomically (see the module documentation).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (temporary, mut file) = create_temporary(path)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = written {
        drop(file);
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    // Make the rename itself durable where the platform allows it.
    if let Some(directory) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(directory) = File::open(directory) {
            let _ = directory.sync_all();
        }
    }
    Ok(())
}

/// A new file next to `path`, named after it, the process and a counter.
fn create_temporary(path: &Path) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?
        .to_string_lossy();
    let directory = path.parent().unwrap_or(Path::new(""));
    loop {
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temporary = directory.join(format!(".{name}.{}-{count}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
        {
            Ok(file) => return Ok((temporary, file)),
            // Left behind by a process that died: take the next name.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("optc-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(entries.len(), 1, "only the target is left");
        let missing = dir.join("no such directory").join("out.json");
        assert!(write_atomically(&missing, b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_writers_to_different_files_never_mix() {
        let dir = std::env::temp_dir().join(format!("optc-files-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::thread::scope(|scope| {
            for writer in 0..8 {
                let dir = &dir;
                scope.spawn(move || {
                    for round in 0..50 {
                        let path = dir.join(format!("opt.g{writer}"));
                        let body = format!("writer {writer} round {round}");
                        write_atomically(&path, body.as_bytes()).unwrap();
                        assert_eq!(std::fs::read_to_string(&path).unwrap(), body);
                    }
                });
            }
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
