//! Sizes that come from users (element and tensor counts, model widths,
//! checkpoint records) are checked before anything that large is allocated:
//! a request for more memory than the machine has available is an error
//! that says how much was asked for and how much there is, never an abort
//! in the allocator (or a process the kernel kills later, once pages are
//! touched).

use crate::Error;

/// Bytes of memory available to new allocations now (Linux: `MemAvailable`
/// in /proc/meminfo); `None` where it cannot be read.
pub fn available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `bytes` as people read sizes.
pub fn show(bytes: u128) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}

/// Checks that `bytes` (`None`: more than a u128 holds) fit in the memory
/// available; `what` names what needs them.
pub fn ensure(bytes: Option<u128>, what: &str) -> Result<(), Error> {
    let available = available().map(u128::from);
    match (bytes, available) {
        (None, _) => Err(Error::Memory(format!(
            "{what} needs more memory than can be counted"
        ))),
        (Some(bytes), Some(available)) if bytes > available => Err(Error::Memory(format!(
            "{what} needs about {}, and this machine has {} available",
            show(bytes),
            show(available)
        ))),
        // Without /proc/meminfo, the allocations themselves are fallible.
        _ => Ok(()),
    }
}

/// `count` elements of `size` bytes each, in bytes (`None` on overflow).
pub fn bytes_of(count: usize, size: usize) -> Option<u128> {
    (count as u128).checked_mul(size as u128)
}
