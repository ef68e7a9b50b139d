// temporary profiling helper
#[path = "jit_bench.rs"]
#[allow(dead_code)]
mod bench;
fn main() {
    let k = bench::adam();
    let mut jit = optc_jit::Jit::new().unwrap();
    for _ in 0..3000 {
        std::hint::black_box(jit.compile(&k).unwrap());
    }
}
