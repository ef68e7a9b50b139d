//! Buffers the runtime owns (its state, and parameters where a caller lets it
//! allocate them, as `optc bench` does). Large ones are placed on transparent
//! huge pages (`madvise(MADV_HUGEPAGE)` on Linux; without them two-thread
//! bandwidth drops 1.2-1.6x on the machines we measured), and every buffer
//! starts at its own offset within a page, so that buffers a kernel streams
//! together do not sit at the same address modulo large powers of two, where
//! they would alias in the caches.

use std::ops::{Deref, DerefMut};

const HUGE_PAGE: usize = 2 << 20;
const CACHE_LINE: usize = 64;

/// A zero-initialised f32 buffer with a chosen placement.
#[derive(Debug)]
pub struct Buffer {
    storage: Vec<f32>,
    offset: usize,
    len: usize,
}

impl Buffer {
    /// `len` zeros; `stagger` picks the buffer's offset within a 4 KiB page
    /// (buffers used together should get different staggers).
    pub fn zeroed(len: usize, stagger: usize) -> Buffer {
        if len * 4 < HUGE_PAGE {
            return Buffer {
                storage: vec![0.0; len],
                offset: 0,
                len,
            };
        }
        let shift = (stagger * 17 % 64) * CACHE_LINE;
        let storage = vec![0.0f32; len + (HUGE_PAGE + shift) / 4];
        let address = storage.as_ptr() as usize;
        let aligned = address.next_multiple_of(HUGE_PAGE);
        let offset = (aligned + shift - address) / 4;
        advise_huge_pages(aligned, (len * 4 + shift) / HUGE_PAGE * HUGE_PAGE);
        Buffer {
            storage,
            offset,
            len,
        }
    }

    /// A buffer holding `values`, placed like [`Buffer::zeroed`].
    pub fn from_slice(values: &[f32], stagger: usize) -> Buffer {
        let mut buffer = Buffer::zeroed(values.len(), stagger);
        buffer.copy_from_slice(values);
        buffer
    }
}

impl Deref for Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.storage[self.offset..self.offset + self.len]
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.storage[self.offset..self.offset + self.len]
    }
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(address: usize, bytes: usize) {
    if bytes > 0 {
        // SAFETY: the range lies inside a live allocation owned by the buffer;
        // the advice only changes how the kernel backs it. Failure is harmless.
        unsafe { libc::madvise(address as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_address: usize, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_zeroed_aligned_and_staggered() {
        let n = 3 << 20;
        let a = Buffer::zeroed(n, 0);
        let b = Buffer::zeroed(n, 1);
        assert_eq!((a.len(), b.len()), (n, n));
        assert!(a.iter().chain(b.iter()).all(|&x| x == 0.0));
        let offset = |s: &Buffer| s.as_ptr() as usize % HUGE_PAGE;
        assert_eq!(offset(&a), 0);
        assert_eq!(offset(&b), 17 * CACHE_LINE);
        let small = Buffer::from_slice(&[1.0, 2.0, 3.0], 5);
        assert_eq!(&*small, &[1.0, 2.0, 3.0]);
    }
}
