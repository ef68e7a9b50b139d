//! Sharded steps ([`optc_runtime::shard`]): two ranks on two threads, each
//! stepping chunk-aligned shards of the same tensors and gathering their
//! reductions through a channel collective, give the unsharded run's
//! parameters bit for bit, for an elementwise rule, per-tensor reductions
//! (LAMB) and a group-wide one (global-norm clipping); unaligned shards
//! give it within rounding; misuse is refused.

mod common;

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use common::{backends, grads_for, sized_values};
use optc_compiler::ir::Rule;
use optc_runtime::shard::{chunk_aligned_shard, Collective, Sharding};
use optc_runtime::{Backend, Error, NonFinite, Optimizer, CHUNK};

/// One rank's end of an all-gather between ranks on threads.
struct Channels {
    rank: usize,
    to: Vec<Sender<Vec<f64>>>,
    from: Vec<Receiver<Vec<f64>>>,
}

impl Collective for Channels {
    fn all_gather(&mut self, local: &[f64]) -> Result<Vec<Vec<f64>>, String> {
        for (peer, to) in self.to.iter().enumerate() {
            if peer != self.rank {
                to.send(local.to_vec()).map_err(|e| e.to_string())?;
            }
        }
        (0..self.to.len())
            .map(|peer| match peer == self.rank {
                true => Ok(local.to_vec()),
                false => self.from[peer].recv().map_err(|e| e.to_string()),
            })
            .collect()
    }
}

/// `ranks` connected collectives: rank r's `from[q]` receives what q sends r.
fn collectives(ranks: usize) -> Vec<Channels> {
    let mut senders = vec![Vec::new(); ranks];
    let mut receivers: Vec<Vec<Receiver<Vec<f64>>>> = (0..ranks).map(|_| Vec::new()).collect();
    for sending in senders.iter_mut() {
        for receiving in receivers.iter_mut() {
            let (tx, rx) = channel();
            sending.push(tx);
            receiving.push(rx);
        }
    }
    senders
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(rank, (to, from))| Channels { rank, to, from })
        .collect()
}

fn clipped_adamw() -> Arc<Rule> {
    let source = std::fs::read(common::repo_path("examples/clipped_adamw.opt")).unwrap();
    common::user_rule("clipped_adamw", &source)
}

fn builder(
    rule: &Arc<Rule>,
    backend: &Backend,
    numels: &[usize],
) -> optc_runtime::OptimizerBuilder {
    let names: Vec<(String, usize)> = numels
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("w{i}"), n))
        .collect();
    Optimizer::builder(rule.clone())
        .backend(backend.clone())
        .set("learning_rate", 0.01)
        .tensors(names)
}

/// Parameters after `steps` steps, unsharded.
fn unsharded(rule: &Arc<Rule>, backend: &Backend, sizes: &[usize], steps: u64) -> Vec<Vec<f32>> {
    let mut optimizer = builder(rule, backend, sizes).build().unwrap();
    let mut params = sized_values(sizes);
    for step in 0..steps {
        let grads = grads_for(&params, step);
        let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
        let grads: Vec<&[f32]> = grads.iter().map(|g| g.as_slice()).collect();
        optimizer.step(&mut views, &grads).unwrap();
    }
    params
}

/// The same run on `shard(numel, rank)` shards of each tensor, one thread
/// per rank; the shards put back together.
fn sharded(
    rule: &Arc<Rule>,
    backend: &Backend,
    sizes: &[usize],
    steps: u64,
    shard: fn(usize, usize) -> std::ops::Range<usize>,
) -> Vec<Vec<f32>> {
    let ranks = collectives(2);
    let handles: Vec<_> = ranks
        .into_iter()
        .map(|collective| {
            let (rule, backend, sizes) = (rule.clone(), backend.clone(), sizes.to_vec());
            std::thread::spawn(move || {
                let rank = collective.rank;
                let ranges: Vec<_> = sizes.iter().map(|&n| shard(n, rank)).collect();
                let local: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                let mut optimizer = builder(&rule, &backend, &local).build().unwrap();
                optimizer
                    .shard(Sharding {
                        full_numels: sizes.clone(),
                        collective: Box::new(collective),
                    })
                    .unwrap();
                let mut full = sized_values(&sizes);
                for step in 0..steps {
                    // Every rank sees the whole gradients and keeps its shard.
                    let grads = grads_for(&full, step);
                    let mut mine: Vec<Vec<f32>> = full
                        .iter()
                        .zip(&ranges)
                        .map(|(p, r)| p[r.clone()].to_vec())
                        .collect();
                    let grads: Vec<&[f32]> = grads
                        .iter()
                        .zip(&ranges)
                        .map(|(g, r)| &g[r.clone()])
                        .collect();
                    let mut views: Vec<&mut [f32]> =
                        mine.iter_mut().map(|p| p.as_mut_slice()).collect();
                    optimizer.step(&mut views, &grads).unwrap();
                    // Only this rank's shard is current; the rest is the peer's.
                    for ((p, r), m) in full.iter_mut().zip(&ranges).zip(&mine) {
                        p[r.clone()].copy_from_slice(m);
                    }
                }
                (ranges, full)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut joined = sized_values(sizes);
    for (ranges, full) in &results {
        for ((out, r), p) in joined.iter_mut().zip(ranges).zip(full) {
            out[r.clone()].copy_from_slice(&p[r.clone()]);
        }
    }
    joined
}

const SIZES: [usize; 3] = [3 * CHUNK + 17, 1001, 2 * CHUNK];

#[test]
fn chunk_aligned_shards_step_as_the_whole_tensors_bit_for_bit() {
    let aligned = |numel, rank| chunk_aligned_shard(numel, 2, rank);
    for (name, backend) in backends().into_iter().filter(|(_, b)| b.runs_kernels()) {
        let rules = [
            ("adam", common::rule("adam")),
            ("lamb", common::rule("lamb")),
            ("clipped_adamw", clipped_adamw()),
        ];
        for (rule_name, rule) in rules {
            let whole = unsharded(&rule, &backend, &SIZES, 4);
            let shards = sharded(&rule, &backend, &SIZES, 4, aligned);
            assert!(
                whole == shards,
                "{rule_name} on {name}: sharded == unsharded bit for bit"
            );
        }
    }
}

#[test]
fn unaligned_shards_agree_within_rounding() {
    // Half of each tensor: the reductions add the same terms in another order.
    let halves = |numel: usize, rank: usize| match rank {
        0 => 0..numel / 2,
        _ => numel / 2..numel,
    };
    let (_, backend) = backends()
        .into_iter()
        .find(|(_, b)| b.runs_kernels())
        .unwrap();
    for rule in [common::rule("lamb"), clipped_adamw()] {
        let whole = unsharded(&rule, &backend, &SIZES, 4);
        let shards = sharded(&rule, &backend, &SIZES, 4, halves);
        let worst = whole
            .iter()
            .flatten()
            .zip(shards.iter().flatten())
            .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "{}: relative difference {worst}", rule.name);
    }
}

#[test]
fn sharding_is_refused_where_ranks_could_not_agree() {
    let (_, backend) = backends()
        .into_iter()
        .find(|(_, b)| b.runs_kernels())
        .unwrap();
    let lamb = common::rule("lamb");
    let sharding = |full: Vec<usize>| Sharding {
        full_numels: full,
        collective: Box::new(collectives(1).pop().unwrap()),
    };
    // A shard larger than its tensor, and a count that does not match.
    let mut optimizer = builder(&lamb, &backend, &[10, 4]).build().unwrap();
    let error = optimizer.shard(sharding(vec![8, 4])).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("a shard of 10 elements of a tensor of 8"),
        "{error}"
    );
    let error = optimizer.shard(sharding(vec![10])).unwrap_err();
    assert!(
        matches!(
            error,
            Error::TensorCount {
                expected: 2,
                found: 1
            }
        ),
        "{error}"
    );
    // The interpreter runs no pass plan.
    let interp = Backend::named("interp").unwrap();
    let mut optimizer = builder(&lamb, &interp, &[10, 4]).build().unwrap();
    let error = optimizer.shard(sharding(vec![10, 4])).unwrap_err();
    assert!(
        error.to_string().contains("need a kernel backend"),
        "{error}"
    );
    // A step without a tensor's gradient, or skipping non-finite steps.
    let mut optimizer = builder(&lamb, &backend, &[10, 4]).build().unwrap();
    optimizer.shard(sharding(vec![20, 4])).unwrap();
    let mut params = sized_values(&[10, 4]);
    let before = params.clone();
    let grads = grads_for(&params, 0);
    let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
    let error = optimizer
        .step_some(&mut views, &[Some(&grads[0]), None])
        .unwrap_err();
    assert!(error.to_string().contains("steps every tensor"), "{error}");
    optimizer.set_non_finite(NonFinite::Skip);
    let grads: Vec<&[f32]> = grads.iter().map(|g| g.as_slice()).collect();
    let error = optimizer.step(&mut views, &grads).unwrap_err();
    assert!(error.to_string().contains("steps every tensor"), "{error}");
    assert_eq!(params, before);
    assert_eq!(optimizer.steps_taken(), 0);
}
