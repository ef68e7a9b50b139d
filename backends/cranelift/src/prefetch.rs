//! Software prefetch for the generated loops.
//!
//! With 128-bit vectors a fused kernel spends several instructions per cache
//! line it streams, so the out-of-order window covers few lines ahead and a
//! single core waits on memory instead of overlapping it with the arithmetic:
//! measured on an Adam-sized loop, time was the sum of the memory floor and
//! the in-cache compute time, not their maximum. Prefetching a few KiB ahead
//! in every stream restores the overlap (a sign-SGD loop went from 1.75x to
//! about 1.1x the floor, and the floor loop itself got faster).
//!
//! Cranelift has no prefetch instruction, so the loops call a stub of a few
//! hand-assembled bytes: one `prefetcht0` per argument register, then `ret`.
//! The stub touches no register and no memory that it is not told to, so the
//! calls use Cranelift's `preserve_all` convention and cost the loop no
//! spills. Prefetches never fault, so addresses past a buffer's end are fine.
//! The stubs live in one page, mapped once per process and never unmapped.

use std::sync::OnceLock;

/// Streams one stub call can prefetch (the System V integer argument registers).
pub(crate) const MAX_STREAMS: usize = 6;

/// How far ahead of the loop's position each stream is prefetched, in bytes.
pub(crate) const DISTANCE: i64 = 4096;

/// Entry addresses of the stubs: `stubs[k - 1]` prefetches its first `k` arguments.
pub(crate) struct Stubs(pub [usize; MAX_STREAMS]);

/// The stubs, if this host can have them (x86-64 Linux); `None` elsewhere,
/// where the loops simply do not prefetch.
pub(crate) fn stubs() -> Option<&'static Stubs> {
    static STUBS: OnceLock<Option<Stubs>> = OnceLock::new();
    STUBS.get_or_init(map_stubs).as_ref()
}

/// Machine code of `prefetcht0 (reg)` for the k-th System V argument
/// register: rdi, rsi, rdx, rcx, r8, r9 (`0F 18 /1`, REX.B for r8 and r9).
fn prefetch_argument(k: usize) -> &'static [u8] {
    const CODE: [&[u8]; MAX_STREAMS] = [
        &[0x0F, 0x18, 0x0F],       // prefetcht0 (%rdi)
        &[0x0F, 0x18, 0x0E],       // prefetcht0 (%rsi)
        &[0x0F, 0x18, 0x0A],       // prefetcht0 (%rdx)
        &[0x0F, 0x18, 0x09],       // prefetcht0 (%rcx)
        &[0x41, 0x0F, 0x18, 0x08], // prefetcht0 (%r8)
        &[0x41, 0x0F, 0x18, 0x09], // prefetcht0 (%r9)
    ];
    CODE[k]
}

/// The stubs' bytes and the offset of each entry.
fn assemble() -> (Vec<u8>, [usize; MAX_STREAMS]) {
    const RET: u8 = 0xC3;
    let mut code = Vec::new();
    let mut entries = [0; MAX_STREAMS];
    for (k, entry) in entries.iter_mut().enumerate() {
        *entry = code.len();
        for arg in 0..=k {
            code.extend_from_slice(prefetch_argument(arg));
        }
        code.push(RET);
    }
    (code, entries)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn map_stubs() -> Option<Stubs> {
    let (code, entries) = assemble();
    let page = 4096;
    // SAFETY: a fresh private anonymous mapping, written while writable and
    // only then made executable (never both); it is never unmapped, so the
    // addresses handed out stay valid for the life of the process.
    unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if base == libc::MAP_FAILED {
            return None;
        }
        std::ptr::copy_nonoverlapping(code.as_ptr(), base.cast::<u8>(), code.len());
        if libc::mprotect(base, page, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            libc::munmap(base, page);
            return None;
        }
        Some(Stubs(entries.map(|offset| base as usize + offset)))
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn map_stubs() -> Option<Stubs> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stub_prefetches_its_arguments_in_order_then_returns() {
        let (code, entries) = assemble();
        let rdi_rsi_rdx = [0x0F, 0x18, 0x0F, 0x0F, 0x18, 0x0E, 0x0F, 0x18, 0x0A, 0xC3];
        assert_eq!(&code[entries[2]..entries[3]], &rdi_rsi_rdx);
        assert_eq!(code.last(), Some(&0xC3));
        assert_eq!(code.iter().filter(|&&b| b == 0xC3).count(), MAX_STREAMS);
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn the_stubs_can_be_called_on_any_address() {
        let stubs = stubs().expect("x86-64 Linux maps the stubs");
        let data = [1.0f32; 64];
        // SAFETY: the stub has the C ABI shape of a function of six pointers
        // returning nothing, and prefetches never fault, whatever the address.
        let three: extern "C" fn(*const f32, *const f32, *const f32, usize, usize, usize) =
            unsafe { std::mem::transmute(stubs.0[MAX_STREAMS - 1]) };
        three(
            data.as_ptr(),
            data[32..].as_ptr(),
            std::ptr::null(),
            8,
            usize::MAX,
            1 << 47,
        );
        assert_eq!(data[0], 1.0);
    }
}
