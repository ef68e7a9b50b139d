//! Buffers the runtime owns (its state, and parameters where a caller lets it
//! allocate them, as `optc bench` does). Large ones are placed on transparent
//! huge pages (`madvise(MADV_HUGEPAGE)` on Linux; without them two-thread
//! bandwidth drops 1.2-1.6x on the machines we measured), and every buffer
//! starts at its own offset within a page, so that buffers a kernel streams
//! together do not sit at the same address modulo large powers of two, where
//! they would alias in the caches.

use std::ops::{Deref, DerefMut};

use crate::Error;

const HUGE_PAGE: usize = 2 << 20;
const CACHE_LINE: usize = 64;

/// What a buffer can hold: plain numbers whose all-zero bit pattern is zero
/// (`f32`, and bf16 as `u16` bit patterns or `half::bf16`).
pub trait Word: Copy + Default + Send + Sync + 'static {}
impl Word for f32 {}
impl Word for u16 {}
impl Word for half::bf16 {}

/// A zero-initialised buffer with a chosen placement.
#[derive(Debug)]
pub struct Buffer<T: Word = f32> {
    storage: Vec<T>,
    offset: usize,
    len: usize,
}

impl<T: Word> Buffer<T> {
    /// `len` zeros; `stagger` picks the buffer's offset within a 4 KiB page
    /// (buffers used together should get different staggers). An
    /// allocation the system refuses is an error, not an abort.
    pub fn zeroed(len: usize, stagger: usize) -> Result<Buffer<T>, Error> {
        let size = std::mem::size_of::<T>();
        let shift = (stagger * 17 % 64) * CACHE_LINE;
        let huge = len.saturating_mul(size) >= HUGE_PAGE;
        let padding = if huge { (HUGE_PAGE + shift) / size } else { 0 };
        let total = len.checked_add(padding);
        let mut storage = Vec::new();
        total
            .ok_or(())
            .and_then(|total| storage.try_reserve_exact(total).map_err(|_| ()))
            .map_err(|()| {
                Error::Memory(format!(
                    "cannot allocate {} for {len} elements",
                    crate::memory::show(crate::memory::bytes_of(len, size).unwrap_or(u128::MAX))
                ))
            })?;
        if !huge {
            storage.resize(len, T::default());
            return Ok(Buffer {
                storage,
                offset: 0,
                len,
            });
        }
        // The advice comes before the zeros are written: pages the zeros
        // fault in first would stay small pages.
        let address = storage.as_ptr() as usize;
        let aligned = address.next_multiple_of(HUGE_PAGE);
        let offset = (aligned + shift - address) / size;
        advise_huge_pages(aligned, (len * size + shift) / HUGE_PAGE * HUGE_PAGE);
        storage.resize(len + padding, T::default());
        Ok(Buffer {
            storage,
            offset,
            len,
        })
    }

    /// A buffer holding `values`, placed like [`Buffer::zeroed`].
    pub fn from_slice(values: &[T], stagger: usize) -> Result<Buffer<T>, Error> {
        let mut buffer = Buffer::zeroed(values.len(), stagger)?;
        buffer.copy_from_slice(values);
        Ok(buffer)
    }
}

impl<T: Word> Deref for Buffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.storage[self.offset..self.offset + self.len]
    }
}

impl<T: Word> DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.storage[self.offset..self.offset + self.len]
    }
}

/// Many tensors' elements in one [`Buffer`], each tensor starting on a cache
/// line. The runtime keeps each per-element state slot of all tensors in one
/// arena, so that 200 small tensors sit on huge pages like one large one
/// (separate small buffers would each be too small for a huge page, and the
/// TLB misses made a 200-tensor Adam step about 15% slower).
#[derive(Debug)]
pub struct Arena<T: Word = f32> {
    buffer: Buffer<T>,
    /// Where each tensor starts, and its length.
    starts: Vec<usize>,
    lens: Vec<usize>,
}

impl<T: Word> Arena<T> {
    /// Zeroed tensors of lengths `numels`, placed like [`Buffer::zeroed`].
    pub fn zeroed(numels: &[usize], stagger: usize) -> Result<Arena<T>, Error> {
        let mut starts = Vec::with_capacity(numels.len());
        let mut end: usize = 0;
        let line = CACHE_LINE / std::mem::size_of::<T>();
        for &n in numels {
            starts.push(end);
            end = end
                .checked_add(n)
                .and_then(|e| e.checked_next_multiple_of(line))
                .ok_or_else(|| {
                    Error::Memory("the tensors hold more elements than can be counted".into())
                })?;
        }
        Ok(Arena {
            buffer: Buffer::zeroed(end, stagger)?,
            starts,
            lens: numels.to_vec(),
        })
    }

    /// An arena holding copies of `tensors`.
    pub fn from_tensors<S: AsRef<[T]>>(tensors: &[S], stagger: usize) -> Result<Arena<T>, Error> {
        let numels: Vec<usize> = tensors.iter().map(|t| t.as_ref().len()).collect();
        let mut arena = Arena::zeroed(&numels, stagger)?;
        for (view, tensor) in arena.tensors_mut().into_iter().zip(tensors) {
            view.copy_from_slice(tensor.as_ref());
        }
        Ok(arena)
    }

    /// Tensor `index`.
    pub fn tensor(&self, index: usize) -> &[T] {
        &self.buffer[self.starts[index]..self.starts[index] + self.lens[index]]
    }

    /// Tensor `index`, mutably.
    pub fn tensor_mut(&mut self, index: usize) -> &mut [T] {
        &mut self.buffer[self.starts[index]..self.starts[index] + self.lens[index]]
    }

    /// Every tensor, mutably, in order.
    pub fn tensors_mut(&mut self) -> Vec<&mut [T]> {
        let mut rest: &mut [T] = &mut self.buffer;
        let mut position = 0;
        let mut views = Vec::with_capacity(self.lens.len());
        for (&start, &len) in self.starts.iter().zip(&self.lens) {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - position);
            let (view, tail) = tail.split_at_mut(len);
            views.push(view);
            rest = tail;
            position = start + len;
        }
        views
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
        let a = Buffer::<f32>::zeroed(n, 0).unwrap();
        let b = Buffer::<f32>::zeroed(n, 1).unwrap();
        assert_eq!((a.len(), b.len()), (n, n));
        assert!(a.iter().chain(b.iter()).all(|&x| x == 0.0));
        let offset = |s: &Buffer| s.as_ptr() as usize % HUGE_PAGE;
        assert_eq!(offset(&a), 0);
        assert_eq!(offset(&b), 17 * CACHE_LINE);
        let halves = Buffer::<u16>::zeroed(2 * n, 1).unwrap();
        assert_eq!(halves.as_ptr() as usize % HUGE_PAGE, 17 * CACHE_LINE);
        assert!(halves.iter().all(|&x| x == 0));
        let small = Buffer::from_slice(&[1.0, 2.0, 3.0], 5).unwrap();
        assert_eq!(&*small, &[1.0, 2.0, 3.0]);
    }

    #[test]
    fn arena_tensors_are_separate_and_start_on_cache_lines() {
        let tensors = [vec![1.0; 5], vec![], vec![2.0; 17], vec![3.0; 1]];
        let mut arena = Arena::from_tensors(&tensors, 3).unwrap();
        for (i, tensor) in tensors.iter().enumerate() {
            assert_eq!(arena.tensor(i), &tensor[..]);
        }
        let views = arena.tensors_mut();
        assert_eq!(
            views.iter().map(|v| v.len()).collect::<Vec<_>>(),
            [5, 0, 17, 1]
        );
        let base = views[0].as_ptr() as usize;
        assert!(
            Buffer::<f32>::zeroed(usize::MAX / 2, 0).is_err(),
            "refused, not an abort"
        );
        assert!(views
            .iter()
            .all(|v| (v.as_ptr() as usize - base).is_multiple_of(CACHE_LINE)));
        views.into_iter().for_each(|v| v.fill(9.0));
        assert_eq!(arena.tensor(2), &[9.0; 17]);
    }
}
