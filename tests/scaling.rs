//! Compile work grows linearly with the source, construct by construct: for
//! generated programs with 10^3, 10^4 (and, where it stays fast, 10^5)
//! hyperparameters, state slots, statements, functions, `use` chains, ...,
//! the number of allocations and the peak of live heap bytes of the whole
//! front end (parse, lower, check every item) and, for rules, of the
//! simplifier, the planner and the `.opt` emitter may grow at most ~linearly:
//! 10x the input may cost at most 16x. Counted by the test's own allocator,
//! on this thread only, so the result does not depend on the machine or on
//! other tests (no wall-clock times: CI machines are noisy).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use optc_compiler::plan::Plan;
use optc_compiler::simplify::{simplify_keeping_state, Tier};
use optc_compiler::{emit, Origin};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counters are thread-local
// cells with constant initialisers (touching them never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        let _ = LIVE.try_with(|live| {
            live.set(live.get() + layout.size() as i64);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
        });
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|live| live.set(live.get() - layout.size() as i64));
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// (allocations, peak live bytes above the start) of `work`.
fn cost(work: impl FnOnce()) -> (u64, i64) {
    let start_allocations = ALLOCATIONS.with(Cell::get);
    let start_live = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start_live));
    work();
    (
        ALLOCATIONS.with(Cell::get) - start_allocations,
        PEAK.with(Cell::get) - start_live,
    )
}

/// A construct: its name, the source of `n` of it, and whether the source
/// is one rule to run through the simplifier, planner and emitter too.
type Construct = (&'static str, fn(usize) -> String, bool);

/// Generated sources, by construct.
const CONSTRUCTS: &[Construct] = &[
    ("hyperparameters", hypers, true),
    (
        "hyperparameter defaults reading the one before",
        hyper_chain,
        true,
    ),
    ("let statements", lets, true),
    ("assignments to g", assigns, true),
    ("fn items", fns, true),
    (
        "a chain of fns, each calling the one before",
        fn_chain,
        false,
    ),
    ("a chain of rules, each using the one before", uses, false),
    ("optimizers", optimizers, false),
    ("objective params", objective_params, false),
];

fn hypers(n: usize) -> String {
    let list: Vec<String> = (0..n).map(|i| format!("h{i} = {i}")).collect();
    format!("optimizer a({}) {{ p -= h1 * g; }}\n", list.join(", "))
}

fn hyper_chain(n: usize) -> String {
    let list: Vec<String> = (1..n).map(|i| format!("h{i} = h{} * 1", i - 1)).collect();
    format!(
        "optimizer a(h0 = 1, {}) {{ p -= h1 * g; }}\n",
        list.join(", ")
    )
}

fn lets(n: usize) -> String {
    let body: String = (1..n)
        .map(|i| format!("  let x{i} = x{} * 0.5;\n", i - 1))
        .collect();
    format!(
        "optimizer a() {{\n  let x0 = g;\n{body}  p -= x{};\n}}\n",
        n - 1
    )
}

fn assigns(n: usize) -> String {
    let body: String = (0..n).map(|i| format!("  g = g * {i};\n")).collect();
    format!("optimizer a() {{\n{body}  p -= g;\n}}\n")
}

fn fns(n: usize) -> String {
    let items: String = (0..n)
        .map(|i| format!("fn f{i}(x) {{ x * {i} }}\n"))
        .collect();
    format!("{items}optimizer a() {{ p -= f{}(g); }}\n", n - 1)
}

fn fn_chain(n: usize) -> String {
    let items: String = (1..n)
        .map(|i| format!("fn f{i}(x) {{ f{}(x) }}\n", i - 1))
        .collect();
    format!("fn f0(x) {{ x * 0.5 }}\n{items}optimizer a() {{ p -= f0(g); }}\n")
}

fn uses(n: usize) -> String {
    let items: String = (1..n)
        .map(|i| format!("optimizer r{i}() {{ use r{}; }}\n", i - 1))
        .collect();
    format!("optimizer r0() {{ p -= g; }}\n{items}")
}

fn optimizers(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "optimizer r{i}(lr = 0.1) {{ state m = 0; m = lerp(g, m, 0.9); p -= lr * m; }}\n"
            )
        })
        .collect()
}

fn objective_params(n: usize) -> String {
    let params: String = (0..n).map(|i| format!("  param x{i} = {i};\n")).collect();
    let loss: Vec<String> = (0..n.min(200)).map(|i| format!("x{i} * x{i}")).collect();
    format!(
        "objective o() {{\n{params}  loss sum({});\n}}\n",
        loss.join(" + ").replace("+", "+\n")
    )
}

/// The front end on `source`, and for the last optimizer of a rule-like
/// construct the simplifier, both plans and the emitter.
fn compile(source: &str, rule: bool) {
    let mut program = optc_stdlib::prelude();
    let file = program
        .add_source("generated.opt", source.as_bytes(), Origin::User)
        .expect("the generated source parses");
    let _ = program.check_file(file);
    if rule {
        if let Some(name) = program.optimizers_in(file).last().map(|n| n.to_string()) {
            let compiled = program.compile(&name).expect("the generated rule compiles");
            let simplified = simplify_keeping_state(&compiled, Tier::Exact);
            let _ = Plan::new(&simplified, true);
            let _ = Plan::new(&simplified, false);
            let _ = emit::emit(&simplified, &program);
        }
    }
}

#[test]
fn compile_work_and_memory_grow_linearly_with_every_construct() {
    let mut failures = Vec::new();
    for &(construct, generate, rule) in CONSTRUCTS {
        let sizes: &[usize] = if rule {
            &[1_000, 10_000]
        } else {
            &[1_000, 10_000, 100_000]
        };
        let costs: Vec<(u64, i64)> = sizes
            .iter()
            .map(|&n| {
                let source = generate(n);
                cost(|| compile(&source, rule))
            })
            .collect();
        println!("{construct}: {sizes:?} -> (allocations, peak bytes) {costs:?}");
        for (pair, sizes) in costs.windows(2).zip(sizes.windows(2)) {
            let growth = (sizes[1] / sizes[0]) as f64;
            let allocations = pair[1].0 as f64 / pair[0].0.max(1) as f64;
            let peak = pair[1].1 as f64 / pair[0].1.max(1) as f64;
            if allocations > 1.6 * growth || peak > 1.6 * growth {
                failures.push(format!(
                    "{construct}: {} -> {}: allocations x{allocations:.1}, peak memory x{peak:.1}",
                    sizes[0], sizes[1]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "super-linear compile work:\n{}",
        failures.join("\n")
    );
}
