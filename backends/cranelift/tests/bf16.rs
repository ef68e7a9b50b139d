//! bf16 storage in compiled kernels against the reference semantics: loads
//! that widen, stores that round to nearest even or stochastically, bit for
//! bit on random kernels mixing f32 and bf16 buffers, on every f32 pattern,
//! and independently of how a range is split into calls or threads.

mod common;

use common::Rng;
use common::*;
use optc_compiler::backend::BadArguments;
use optc_compiler::backend::NativeKernel;
use optc_compiler::kernel::{self, bf16, BufferMut, Kernel, Op, Rounding, Storage};
use optc_cranelift::{Jit, JitError};
use proptest::prelude::*;
use std::ops::Range;

/// f32 patterns at the edges of bf16 rounding: ties and their neighbours,
/// the overflow threshold, subnormals, NaNs with payloads only in the low
/// half (which truncation would turn into infinities).
const ROUNDING_EDGES: [u32; 20] = [
    0x3F80_8000,
    0x3F81_8000,
    0x3F80_7FFF,
    0x3F80_8001,
    0xBF80_8000,
    0xBF81_8000,
    0x7F7F_7FFF,
    0x7F7F_8000,
    0x7F7F_FFFF,
    0xFF7F_8000,
    0xFF7F_7FFF,
    0x0000_8000,
    0x0001_8000,
    0x807F_FFFF,
    0x0000_0001,
    0x8000_FFFF,
    0x7F80_0001,
    0xFF80_8000,
    0x7FC0_0001,
    0xFFFF_FFFF,
];

/// bf16 patterns worth loading: zeros, subnormals, the largest finite
/// values, infinities, quiet and signalling NaNs.
const BF16_EDGES: [u16; 14] = [
    0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1,
    0x7F81, 0x3F80,
];

fn f32_input(rng: &mut Rng) -> f32 {
    match rng.below(4) {
        0 => f32::from_bits(ROUNDING_EDGES[rng.below(ROUNDING_EDGES.len() as u64) as usize]),
        _ => rng.interesting(),
    }
}

fn bf16_input(rng: &mut Rng) -> u16 {
    match rng.below(3) {
        0 => BF16_EDGES[rng.below(BF16_EDGES.len() as u64) as usize],
        1 => rng.next() as u16,
        _ => bf16::round_nearest_even(rng.interesting()),
    }
}

/// Random buffers of each kernel buffer's storage type, holding `range`
/// plus a margin, and scalars (the seed, if any, an arbitrary bit pattern).
fn inputs(kernel: &Kernel, rng: &mut Rng, range: &Range<usize>) -> (Vec<Data>, Vec<f32>) {
    let len = range.end + rng.below(3) as usize;
    let data = kernel
        .storage
        .iter()
        .map(|storage| match storage {
            Storage::F32 => Data::F32((0..len).map(|_| f32_input(rng)).collect()),
            Storage::Bf16 => Data::Bf16((0..len).map(|_| bf16_input(rng)).collect()),
        })
        .collect();
    let mut scalars: Vec<f32> = (0..kernel.scalars).map(|_| rng.interesting()).collect();
    if let Rounding::Stochastic { seed_scalar } = kernel.rounding {
        scalars[seed_scalar as usize] = f32::from_bits(rng.next() as u32);
    }
    (data, scalars)
}

/// Element `i` of buffer `buffer` as the kernel stores it to bf16.
fn round_store(kernel: &Kernel, scalars: &[f32], buffer: u32, i: usize, x: f32) -> u16 {
    match kernel.rounding {
        Rounding::NearestEven => bf16::round_nearest_even(x),
        Rounding::Stochastic { seed_scalar } => {
            let seed = scalars[seed_scalar as usize].to_bits();
            bf16::round_stochastic(x, bf16::random_bits(seed, buffer, i))
        }
    }
}

/// The storage semantics built from the all-f32 model: bf16 inputs widened,
/// the kernel run by `run_model` with every buffer f32, then the stores to
/// bf16 buffers rounded. Also the accumulators and their magnitudes.
fn run_widened_model(
    kernel: &Kernel,
    data: &[Data],
    scalars: &[f32],
    range: Range<usize>,
) -> (Vec<Data>, Vec<f64>, Vec<f64>) {
    let all_f32 = Kernel {
        storage: vec![Storage::F32; kernel.storage.len()],
        rounding: Rounding::NearestEven,
        ..kernel.clone()
    };
    let mut wide: Vec<Vec<f32>> = data.iter().map(Data::widened).collect();
    let mut accs = identities(kernel);
    let magnitude = run_model(&all_f32, &mut wide, scalars, &mut accs, range.clone());
    let mut out = data.to_vec();
    for &(buffer, _) in &kernel.stores {
        let computed = &wide[buffer as usize];
        match &mut out[buffer as usize] {
            Data::F32(v) => v[range.clone()].copy_from_slice(&computed[range.clone()]),
            Data::Bf16(v) => {
                for i in range.clone() {
                    v[i] = round_store(kernel, scalars, buffer, i, computed[i]);
                }
            }
        }
    }
    (out, accs, magnitude)
}

/// The JIT against the widened model, and for exact kernels against the
/// reference `kernel::run_typed` too (which must agree with the model).
fn compare(
    kernel: &Kernel,
    compiled: &NativeKernel,
    data: &[Data],
    scalars: &[f32],
    range: Range<usize>,
) -> Result<(), String> {
    let (got, got_accs) = run_typed_copy(compiled, kernel, data, scalars, range.clone());
    let (model, model_accs, magnitude) = run_widened_model(kernel, data, scalars, range.clone());
    let mut references = vec![("model", model, model_accs)];
    if !approximates(kernel) {
        let mut out = data.to_vec();
        let mut accs = identities(kernel);
        let pinned = pin_min_max(kernel);
        kernel::run_typed(
            &pinned,
            &mut views(&mut out),
            scalars,
            &mut accs,
            range.clone(),
        );
        references.push(("reference", out, accs));
    }
    for (name, want, want_accs) in references {
        if let Some((b, i)) = first_mismatch(&got, &want) {
            let inputs: Vec<f32> = data.iter().map(|d| d.widened()[i]).collect();
            return Err(format!(
                "buffer {b}[{i}] (range {range:?}): jit {:?}, {name} {:?}; inputs {inputs:?}, \
                 scalars {scalars:?}",
                got[b].widened()[i].to_bits(),
                want[b].widened()[i].to_bits(),
            ));
        }
        accumulators_agree(kernel, &got_accs, &want_accs, &magnitude)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(random_kernel_config())]

    #[test]
    fn random_mixed_storage_kernels_match_reference(
        kernel in mixed_kernels(false),
        seed in any::<u64>(),
    ) {
        random_case(&kernel, seed, inputs, compare)?;
    }

    #[test]
    fn random_mixed_storage_kernels_with_approximations_match_the_model(
        kernel in mixed_kernels(true),
        seed in any::<u64>(),
    ) {
        random_case(&kernel, seed, inputs, compare)?;
    }
}

/// Adam with the moments m, v (buffers 2, 3) stored as bf16, rounded
/// stochastically with the seed in an eighth scalar.
fn adam_bf16_moments() -> Kernel {
    let mut kernel = adam();
    kernel.storage = vec![Storage::F32, Storage::F32, Storage::Bf16, Storage::Bf16];
    kernel.rounding = Rounding::Stochastic { seed_scalar: 7 };
    kernel.scalars = 8;
    kernel
}

fn adam_inputs(n: usize, seed: u32) -> (Vec<Data>, Vec<f32>) {
    let mut rng = Rng(17);
    let mut uniform = |lo, hi| (0..n).map(|_| rng.uniform(lo, hi)).collect::<Vec<f32>>();
    let p = uniform(-1.0, 1.0);
    let g = uniform(-0.1, 0.1);
    let m = uniform(-0.1, 0.1);
    let v = uniform(0.0, 0.01);
    let narrow = |x: Vec<f32>| Data::Bf16(x.into_iter().map(bf16::round_nearest_even).collect());
    let mut scalars = adam_scalars(3);
    scalars.push(f32::from_bits(seed));
    (
        vec![Data::F32(p), Data::F32(g), narrow(m), narrow(v)],
        scalars,
    )
}

#[test]
fn hand_written_kernels_with_bf16_buffers_match_reference() {
    let mut jit = Jit::new().unwrap();
    let mut nearest = adam_bf16_moments();
    nearest.rounding = Rounding::NearestEven;
    let mut lion_bf16 = lion();
    lion_bf16.storage = vec![Storage::Bf16, Storage::F32, Storage::Bf16];
    // Transcendental-heavy: one vector per iteration, so bf16 stores of
    // single vectors.
    let mut transcendental = transcendentals();
    transcendental.storage = [Storage::Bf16, Storage::F32]
        .into_iter()
        .cycle()
        .take(transcendental.buffers as usize)
        .collect();
    let mut stochastic_transcendental = transcendental.clone();
    stochastic_transcendental.rounding = Rounding::Stochastic { seed_scalar: 0 };
    stochastic_transcendental.scalars = 1;
    for (k, kernel) in [
        adam_bf16_moments(),
        nearest,
        lion_bf16,
        transcendental,
        stochastic_transcendental,
    ]
    .iter()
    .enumerate()
    {
        let compiled = jit.compile(kernel).unwrap();
        let mut rng = Rng(k as u64 + 1);
        for &len in &LENGTHS {
            for start in [0, 3] {
                let range = start..start + len;
                let (data, scalars) = inputs(kernel, &mut rng, &range);
                if let Err(e) = compare(kernel, &compiled, &data, &scalars, range) {
                    panic!("{e}\nkernel: {kernel:?}");
                }
            }
        }
    }
}

/// Buffer 0 (f32) stored into buffer 1 (bf16) as `rounding` says.
fn narrowing(rounding: Rounding) -> Kernel {
    Kernel {
        ops: vec![Op::Load(0)],
        stores: vec![(1, 0)],
        accumulators: vec![],
        buffers: 2,
        scalars: 1,
        storage: vec![Storage::F32, Storage::Bf16],
        rounding,
    }
}

#[test]
fn stores_round_every_f32_as_the_reference_does() {
    // Every pattern, 2^20 at a time (each block with its own seed), on
    // every core; every 61st block in debug builds.
    let mut jit = Jit::new().unwrap();
    let nearest = jit.compile(&narrowing(Rounding::NearestEven)).unwrap();
    let stochastic = jit
        .compile(&narrowing(Rounding::Stochastic { seed_scalar: 0 }))
        .unwrap();
    let block = 1usize << 20;
    let blocks = (1u64 << 32) as usize / block;
    let stride = if cfg!(debug_assertions) { 61 } else { 1 };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for t in 0..threads {
            let (nearest, stochastic) = (&nearest, &stochastic);
            s.spawn(move || {
                let mut x = vec![0.0f32; block];
                let mut rounded = vec![0u16; block];
                for b in (t * stride..blocks).step_by(threads * stride) {
                    let seed = (b as u32).wrapping_mul(0x0101_0101);
                    for (i, x) in x.iter_mut().enumerate() {
                        *x = f32::from_bits((b * block + i) as u32);
                    }
                    let mut buffers = [BufferMut::F32(&mut x), BufferMut::Bf16(&mut rounded)];
                    nearest
                        .run_typed(&mut buffers, &[0.0], &mut [], 0..block)
                        .unwrap();
                    if let Some(i) =
                        (0..block).find(|&i| rounded[i] != bf16::round_nearest_even(x[i]))
                    {
                        panic!("{:#x}: jit {:#x}", x[i].to_bits(), rounded[i]);
                    }
                    let mut buffers = [BufferMut::F32(&mut x), BufferMut::Bf16(&mut rounded)];
                    stochastic
                        .run_typed(&mut buffers, &[f32::from_bits(seed)], &mut [], 0..block)
                        .unwrap();
                    let want =
                        |i: usize| bf16::round_stochastic(x[i], bf16::random_bits(seed, 1, i));
                    if let Some(i) = (0..block).find(|&i| rounded[i] != want(i)) {
                        panic!(
                            "{:#x} at {i}, seed {seed:#x}: jit {:#x}",
                            x[i].to_bits(),
                            rounded[i]
                        );
                    }
                }
            });
        }
    });
}

#[test]
fn loads_widen_every_bf16_exactly() {
    let mut jit = Jit::new().unwrap();
    // Buffer 0 (bf16) copied to buffer 1 (f32) and to buffer 2 (bf16).
    let copies = Kernel {
        ops: vec![Op::Load(0)],
        stores: vec![(1, 0), (2, 0)],
        accumulators: vec![],
        buffers: 3,
        scalars: 0,
        storage: vec![Storage::Bf16, Storage::F32, Storage::Bf16],
        rounding: Rounding::NearestEven,
    };
    let compiled = jit.compile(&copies).unwrap();
    let mut patterns: Vec<u16> = (0..=u16::MAX).collect();
    let mut wide = vec![0.0f32; patterns.len()];
    let mut narrow = vec![0u16; patterns.len()];
    let n = patterns.len();
    compiled
        .run_typed(
            &mut [
                BufferMut::Bf16(&mut patterns),
                BufferMut::F32(&mut wide),
                BufferMut::Bf16(&mut narrow),
            ],
            &[],
            &mut [],
            0..n,
        )
        .unwrap();
    for (p, (w, c)) in patterns.iter().zip(wide.iter().zip(&narrow)) {
        assert_eq!(w.to_bits(), u32::from(*p) << 16);
        // A round trip changes nothing but quiets signalling NaNs.
        let nan = bf16::widen(*p).is_nan();
        assert_eq!(*c, if nan { p | 0x40 } else { *p }, "{p:#x}");
    }
}

/// A raw buffer pointer that may cross threads (the ranges are disjoint).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the threads below touch disjoint element ranges.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[test]
fn stochastic_rounding_does_not_depend_on_range_splits() {
    let kernel = adam_bf16_moments();
    let mut jit = Jit::new().unwrap();
    let compiled = jit.compile(&kernel).unwrap();
    let n = 10_007;
    let (init, scalars) = adam_inputs(n, 0x1234_5678);
    let (whole, _) = run_typed_copy(&compiled, &kernel, &init, &scalars, 0..n);
    let (reference, _, _) = run_widened_model(&kernel, &init, &scalars, 0..n);
    assert_eq!(first_mismatch(&whole, &reference), None);
    let mut rng = Rng(23);
    for splits in 0..20 {
        let mut cuts: Vec<usize> = (0..splits).map(|_| rng.below(n as u64) as usize).collect();
        cuts.extend([0, n]);
        cuts.sort_unstable();
        let mut parts = init.clone();
        for piece in cuts.windows(2) {
            compiled
                .run_typed(
                    &mut views(&mut parts),
                    &scalars,
                    &mut [],
                    piece[0]..piece[1],
                )
                .unwrap();
        }
        assert_eq!(first_mismatch(&whole, &parts), None, "cuts {cuts:?}");
    }
    // Chunks on threads, through raw pointers to the whole buffers.
    let mut threaded = init.clone();
    let pointers: Vec<SendPtr> = views(&mut threaded)
        .iter_mut()
        .map(|b| SendPtr(b.as_mut_ptr()))
        .collect();
    std::thread::scope(|s| {
        for start in (0..n).step_by(999) {
            let (pointers, compiled, scalars) = (&pointers, &compiled, &scalars);
            s.spawn(move || {
                let raw: Vec<*mut f32> = pointers.iter().map(|p| p.0).collect();
                // SAFETY: the buffers outlive the scope and hold n elements of
                // their storage types; the threads' ranges are disjoint.
                unsafe {
                    compiled
                        .run_raw(&raw, scalars, &mut [], start..(start + 999).min(n))
                        .unwrap()
                };
            });
        }
    });
    assert_eq!(first_mismatch(&whole, &threaded), None);
    // Another seed rounds differently.
    let (_, reseeded) = adam_inputs(n, 0x1234_5679);
    let (other, _) = run_typed_copy(&compiled, &kernel, &init, &reseeded, 0..n);
    assert!(first_mismatch(&whole, &other).is_some());
}

#[test]
fn compiled_stochastic_rounding_is_unbiased() {
    let mut jit = Jit::new().unwrap();
    let compiled = jit
        .compile(&narrowing(Rounding::Stochastic { seed_scalar: 0 }))
        .unwrap();
    let n = 1 << 20;
    for x in [1.0 + 0.3 * 2f32.powi(-7), -2.5e-20, 7.0e-39] {
        let mut values = vec![x; n];
        let mut rounded = vec![0u16; n];
        compiled
            .run_typed(
                &mut [BufferMut::F32(&mut values), BufferMut::Bf16(&mut rounded)],
                &[f32::from_bits(42)],
                &mut [],
                0..n,
            )
            .unwrap();
        let mean = rounded
            .iter()
            .map(|&r| f64::from(bf16::widen(r)))
            .sum::<f64>()
            / n as f64;
        let below = f64::from(bf16::widen((x.to_bits() >> 16) as u16));
        let above = f64::from(bf16::widen((x.to_bits() >> 16) as u16 + 1));
        let p = (f64::from(x) - below) / (above - below);
        let standard_error = (above - below).abs() * (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (mean - f64::from(x)).abs() <= 5.0 * standard_error,
            "{x:e}: mean {mean:e}, standard error {standard_error:e}"
        );
    }
}

#[test]
fn storage_mismatches_are_errors() {
    let mut jit = Jit::new().unwrap();
    let invalid = |jit: &mut Jit, kernel: &Kernel| match jit.compile(kernel) {
        Err(JitError::InvalidKernel(_)) => {}
        other => panic!("expected InvalidKernel for {kernel:?}, got {other:?}"),
    };
    let mut short = narrowing(Rounding::NearestEven);
    short.storage.pop();
    invalid(&mut jit, &short);
    let mut long = narrowing(Rounding::NearestEven);
    long.storage.push(Storage::F32);
    invalid(&mut jit, &long);
    invalid(
        &mut jit,
        &narrowing(Rounding::Stochastic { seed_scalar: 1 }),
    );

    let bad = |r: Result<(), BadArguments>| match r {
        Err(BadArguments(_)) => {}
        other => panic!("expected BadArguments, got {other:?}"),
    };
    let compiled = jit.compile(&narrowing(Rounding::NearestEven)).unwrap();
    let (mut x, mut y) = (vec![1.0f32; 8], vec![1.0f32; 8]);
    // A bf16 buffer passed as f32, either way.
    bad(compiled.run(&mut [&mut x, &mut y], &[0.0], &mut [], 0..8));
    let mut narrow = vec![0u16; 8];
    let mut as_bf16 = vec![0u16; 8];
    bad(compiled.run_typed(
        &mut [BufferMut::Bf16(&mut as_bf16), BufferMut::Bf16(&mut narrow)],
        &[0.0],
        &mut [],
        0..8,
    ));
    // Too short, in bf16 elements.
    bad(compiled.run_typed(
        &mut [BufferMut::F32(&mut x), BufferMut::Bf16(&mut narrow[..7])],
        &[0.0],
        &mut [],
        0..8,
    ));
    compiled
        .run_typed(
            &mut [BufferMut::F32(&mut x), BufferMut::Bf16(&mut narrow)],
            &[0.0],
            &mut [],
            0..8,
        )
        .unwrap();
    assert_eq!(narrow, vec![0x3F80; 8]);
}
