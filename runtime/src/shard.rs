//! Sharded steps: several processes (ranks) each hold a shard of every
//! tensor (as under ZeRO or FSDP) and step only their own elements. An
//! elementwise rule needs nothing more; a rule that reduces (LAMB's trust
//! ratio, global-norm clipping, Prodigy) must see whole tensors and whole
//! groups, so each reduction pass hands its partial results to a
//! [`Collective`], which gathers every rank's, and the reduction is folded
//! over all of them. `numel` is the whole tensor's.
//!
//! Reductions arrive as one partial per chunk of [`crate::CHUNK`] elements,
//! folded in chunk order. Where every shard starts on a chunk boundary
//! ([`chunk_aligned_shard`]), the gathered chunks are the unsharded run's
//! chunks, so a sharded step equals an unsharded one bit for bit; other
//! shard boundaries give the same sums in another order.

use std::ops::Range;

use crate::CHUNK;

/// How ranks exchange a step's reduction partials (torch.distributed, MPI,
/// threads in a test). Every rank calls it the same number of times per
/// step, in the same order.
pub trait Collective: Send {
    /// Every rank's `local`, in rank order (`local` included, at this rank's
    /// place). Lengths may differ between ranks.
    fn all_gather(&mut self, local: &[f64]) -> Result<Vec<Vec<f64>>, String>;
}

/// This rank's part in a sharded optimizer: the whole size of each tensor
/// it holds a shard of (in the optimizer's tensor order), and how it reaches
/// the other ranks. Shards are in rank order: rank 0 holds each tensor's
/// first elements.
pub struct Sharding {
    pub full_numels: Vec<usize>,
    pub collective: Box<dyn Collective>,
}

/// The elements of a tensor of `numel` elements that `rank` of `ranks`
/// holds, in whole chunks of [`CHUNK`] elements (the last rank's may end
/// short; trailing ranks of a small tensor hold none): the shards under
/// which a sharded step equals an unsharded one bit for bit.
pub fn chunk_aligned_shard(numel: usize, ranks: usize, rank: usize) -> Range<usize> {
    let chunks = numel.div_ceil(CHUNK);
    let per_rank = chunks.div_ceil(ranks.max(1));
    let start = (rank * per_rank * CHUNK).min(numel);
    let end = ((rank + 1) * per_rank * CHUNK).min(numel);
    start..end
}

/// A pass's partials (per launched tensor, per chunk, per accumulator)
/// flattened for [`Collective::all_gather`]: for each tensor its chunk
/// count, then its chunks' values.
pub(crate) fn encode(partials: &[Vec<Vec<f64>>]) -> Vec<f64> {
    let mut flat = Vec::new();
    for chunks in partials {
        flat.push(chunks.len() as f64);
        for chunk in chunks {
            flat.extend_from_slice(chunk);
        }
    }
    flat
}

/// Every rank's partials joined: each tensor's chunks, rank after rank.
/// `accumulators` values per chunk, `tensors` tensors per rank.
pub(crate) fn join(
    gathered: &[Vec<f64>],
    tensors: usize,
    accumulators: usize,
) -> Result<Vec<Vec<Vec<f64>>>, String> {
    let mut joined = vec![Vec::new(); tensors];
    for (rank, flat) in gathered.iter().enumerate() {
        let mut at = 0;
        for chunks in joined.iter_mut() {
            let count = flat
                .get(at)
                .copied()
                .filter(|c| c.fract() == 0.0 && *c >= 0.0)
                .ok_or_else(|| format!("rank {rank} sent partials of another shape"))?
                as usize;
            at += 1;
            let end = count
                .checked_mul(accumulators)
                .and_then(|n| n.checked_add(at))
                .filter(|&end| end <= flat.len())
                .ok_or_else(|| format!("rank {rank} sent partials of another shape"))?;
            chunks.extend(
                flat[at..end]
                    .chunks(accumulators.max(1))
                    .map(<[f64]>::to_vec),
            );
            at = end;
        }
        if at != flat.len() {
            return Err(format!("rank {rank} sent partials of another shape"));
        }
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_aligned_shards_cover_a_tensor_in_rank_order() {
        for numel in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7] {
            for ranks in 1..=4 {
                let shards: Vec<_> = (0..ranks)
                    .map(|r| chunk_aligned_shard(numel, ranks, r))
                    .collect();
                assert_eq!(shards[0].start, 0);
                assert_eq!(shards[ranks - 1].end, numel);
                for pair in shards.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                assert!(shards.iter().all(|s| s.start % CHUNK == 0 || s.is_empty()));
            }
        }
    }

    #[test]
    fn joined_partials_are_each_tensors_chunks_rank_after_rank() {
        let rank0 = vec![vec![vec![1.0, 2.0]], vec![]];
        let rank1 = vec![vec![vec![3.0, 4.0], vec![5.0, 6.0]], vec![vec![7.0, 8.0]]];
        let joined = join(&[encode(&rank0), encode(&rank1)], 2, 2).unwrap();
        assert_eq!(
            joined,
            vec![
                vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]],
                vec![vec![7.0, 8.0]]
            ]
        );
        let short = join(&[vec![3.0, 1.0]], 1, 2).unwrap_err();
        assert!(short.contains("rank 0"), "{short}");
    }
}
