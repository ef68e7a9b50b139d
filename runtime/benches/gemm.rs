//! Which GEMM crate runs the staged executor's matrix products: `gemm`
//! (the one it uses) against `matrixmultiply`, on the three products of one
//! Newton-Schulz step of Muon for a matrix of `--shape` (default 1024x4096):
//! the gram matrix (k x l times its transpose), its square (k x k x k) and
//! the update (k x k times k x l), f32, on `--threads` threads (median of
//! `--repeats`). `cargo bench -p optc-runtime --bench gemm -- --threads 2`.

use std::time::Instant;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// (m, n, depth) and the (row, column) strides of out, lhs and rhs.
type Product = ((usize, usize, usize), [(isize, isize); 3]);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let threads: usize = value("--threads", "1").parse().expect("--threads N");
    let repeats: usize = value("--repeats", "5").parse().expect("--repeats N");
    let shape = value("--shape", "1024x4096");
    let (k, l) = shape
        .split_once('x')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .map(|(a, b)| (a.min(b), a.max(b)))
        .expect("--shape ROWSxCOLS");
    // matrixmultiply reads its thread count once, from the environment.
    std::env::set_var("MATMUL_NUM_THREADS", threads.to_string());
    let (ki, li) = (k as isize, l as isize);
    let products: [(&str, Product); 3] = [
        (
            "gram   k x l . l x k",
            ((k, k, l), [(ki, 1), (li, 1), (1, li)]),
        ),
        (
            "square k x k . k x k",
            ((k, k, k), [(ki, 1), (ki, 1), (ki, 1)]),
        ),
        (
            "update k x k . k x l",
            ((k, l, k), [(li, 1), (ki, 1), (li, 1)]),
        ),
    ];
    let a: Vec<f32> = (0..k * l)
        .map(|i| ((i * 7919 % 1000) as f32) / 1000.0 - 0.5)
        .collect();
    let b: Vec<f32> = (0..k * l)
        .map(|i| ((i * 104_729 % 997) as f32) / 997.0 - 0.5)
        .collect();
    let mut out = vec![0.0f32; k * l];
    println!("{shape}, {threads} thread(s), median of {repeats}: GFLOP/s (higher is better)");
    println!(
        "{:<22} {:>10} {:>16} {:>12}",
        "product", "gemm", "matrixmultiply", "max |diff|"
    );
    for (name, ((m, n, depth), [dst, lhs, rhs])) in products {
        let flops = 2.0 * (m * n * depth) as f64;
        let mut time = |run: &mut dyn FnMut(&mut [f32])| -> (f64, Vec<f32>) {
            let samples = (0..repeats)
                .map(|_| {
                    let start = Instant::now();
                    run(&mut out);
                    start.elapsed().as_secs_f64()
                })
                .collect();
            (flops / median(samples) / 1e9, out[..m * n].to_vec())
        };
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY (both): the strides address k x l or k x k entries of
        // buffers of k x l elements.
        let (gemm_rate, gemm_out) = time(&mut |out| unsafe {
            gemm::gemm(
                m,
                n,
                depth,
                out.as_mut_ptr(),
                dst.1,
                dst.0,
                false,
                a.as_ptr(),
                lhs.1,
                lhs.0,
                b.as_ptr(),
                rhs.1,
                rhs.0,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            )
        });
        let (mm_rate, mm_out) = time(&mut |out| unsafe {
            matrixmultiply::sgemm(
                m,
                depth,
                n,
                1.0,
                a.as_ptr(),
                lhs.0,
                lhs.1,
                b.as_ptr(),
                rhs.0,
                rhs.1,
                0.0,
                out.as_mut_ptr(),
                dst.0,
                dst.1,
            )
        });
        let diff = gemm_out
            .iter()
            .zip(&mm_out)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        println!("{name:<22} {gemm_rate:>10.1} {mm_rate:>16.1} {diff:>12.2e}");
    }
}
