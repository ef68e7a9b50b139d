//! A deterministic parallel map: items are handed to one worker per thread
//! in whatever order the threads ask, and the results come back in item
//! order, so what a search computes never depends on its thread count.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `f(worker, item)` for every item, on `workers.len()` threads (inline with
/// one worker), results in item order. A panic in `f` is re-raised here.
pub fn map<W, T, R, F>(workers: &mut [W], items: &[T], f: F) -> Vec<R>
where
    W: Send,
    T: Sync,
    R: Send,
    F: Fn(&mut W, &T) -> R + Sync,
{
    if workers.len() <= 1 || items.len() <= 1 {
        let Some(worker) = workers.first_mut() else {
            return Vec::new();
        };
        return items.iter().map(|item| f(worker, item)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<R>> = items.iter().map(|_| None).collect();
    std::thread::scope(|scope| {
        let threads: Vec<_> = workers
            .iter_mut()
            .map(|worker| {
                let (next, f) = (&next, &f);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(index) else {
                            return done;
                        };
                        done.push((index, f(worker, item)));
                    }
                })
            })
            .collect();
        for thread in threads {
            match thread.join() {
                Ok(done) => {
                    for (index, result) in done {
                        results[index] = Some(result);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    results.into_iter().flatten().collect()
}
