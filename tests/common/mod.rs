//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use optc_compiler::{diagnostics, Origin};

/// Compiles `bytes` as a user file named `name` next to the stdlib; returns
/// the rendered diagnostics, without colour (empty when it compiled).
pub fn compile_errors(name: &str, bytes: &[u8]) -> String {
    let mut program = optc_stdlib::prelude();
    let errors = match program.add_source(name, bytes, Origin::User) {
        Ok(file) => program.check_file(file),
        Err(diagnostic) => vec![diagnostic],
    };
    errors
        .iter()
        .map(|d| diagnostics::render(d, program.files(), false))
        .collect()
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs the `optc` binary; returns (exit code, stdout, stderr).
pub fn optc(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("the optc binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Compares `actual` with the snapshot file, or rewrites it when
/// `UPDATE_EXPECT=1` (as expect-test does).
pub fn assert_snapshot(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(path, actual).expect("snapshot is writable");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        expected == actual,
        "snapshot {} differs (run with UPDATE_EXPECT=1 to update)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// `optc replay adam --trace tests/golden/adam.json --compare` plus `extra` arguments.
pub fn replay_adam(extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "replay",
        "adam",
        "--trace",
        "tests/golden/adam.json",
        "--compare",
    ];
    args.extend_from_slice(extra);
    optc(&args)
}

/// The figure after "max error" in `optc replay --compare` output.
pub fn max_error(stdout: &str) -> Option<f64> {
    stdout
        .split("max error ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Backend comparisons, shared by `differential.rs` (generated and stdlib
// rules) and `filetests.rs` (the `.opt` files of `tests/filetests/`): one rule
// stepped by the reference interpreter and by fused backends on the same
// deterministic inputs, parameters and every state slot compared after each
// step.

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use optc_compiler::backend::{HostBackend, HostKernel};
use optc_compiler::interpret::{self, StepInputs, Value};
use optc_compiler::ir::{BinaryOp, ReduceOp, Rule, ScalarExpr, UnaryOp};
use optc_compiler::kernel::{self, is_approximated, is_transcendental, Kernel, Op};
use optc_compiler::plan::Plan;
use optc_runtime::{Backend, Bindings, Optimizer, BACKENDS};

/// A small deterministic generator (splitmix64).
pub struct Random(pub u64);

impl Random {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Awkward inputs: zeros of both signs (10% each), subnormals, huge values
/// (magnitudes 1e29 to 5e31), tiny values (1e-30 to 5e-29) and ordinary
/// values (up to 10; half of all), all of random sign. Huge, tiny and
/// ordinary values have random mantissas, so that sums of them do not cancel
/// exactly (where the order of a sum would decide which small terms survive).
pub fn awkward_inputs(rng: &mut Random, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (kind, bits) = (rng.below(10), rng.next());
            let sign = if bits >> 63 == 0 { 1.0 } else { -1.0 };
            // Uniform in [0, 1) with 24 random bits.
            let unit = (bits & 0xFF_FFFF) as f32 / (1u32 << 24) as f32;
            match kind {
                0 => 0.0,
                1 => -0.0,
                2 => sign * f32::from_bits(1 + (bits >> 8) as u32 % 0x007F_FFFF),
                3 => sign * 1e29 * (1.0 + 49.0 * unit),
                4 => sign * 1e-30 * (1.0 + 49.0 * unit),
                _ => sign * 10.0 * unit,
            }
        })
        .collect()
}

/// Distance in ulps between two f32s, counted through zero (so +0 and -0
/// are 0 apart); `u64::MAX` when exactly one is NaN, 0 when both are.
pub fn ulps(a: f32, b: f32) -> u64 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() {
            0
        } else {
            u64::MAX
        };
    }
    let ordered = |x: f32| {
        let magnitude = i64::from(x.to_bits() & 0x7FFF_FFFF);
        if x.is_sign_negative() {
            -magnitude
        } else {
            magnitude
        }
    };
    ordered(a).abs_diff(ordered(b))
}

/// How far a backend's value may be from the interpreter's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    /// The same bits (any NaN equals any NaN: payloads are not modelled).
    Exact,
    /// At most this many ulps apart (see [`ulps`]).
    Ulp(u64),
    /// Equal, or both finite and `|a - b| <= x * max(|a|, |b|)`.
    Rel(f64),
}

impl Tolerance {
    pub fn accepts(self, expected: f32, actual: f32) -> bool {
        if expected.is_nan() || actual.is_nan() {
            return expected.is_nan() && actual.is_nan();
        }
        match self {
            Tolerance::Exact => expected.to_bits() == actual.to_bits(),
            Tolerance::Ulp(n) => ulps(expected, actual) <= n,
            Tolerance::Rel(x) => {
                let (a, b) = (f64::from(expected), f64::from(actual));
                a == b
                    || (a.is_finite() && b.is_finite() && (a - b).abs() <= x * a.abs().max(b.abs()))
            }
        }
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tolerance::Exact => write!(f, "exact"),
            Tolerance::Ulp(n) => write!(f, "ulp {n}"),
            Tolerance::Rel(x) => write!(f, "rel {x:e}"),
        }
    }
}

/// The operations a backend may approximate (by their `.opt` names, sorted,
/// each once) that the kernels of `rule` compute per element, on the first
/// step or later ones. Host (group and tensor) values are f64 everywhere.
pub fn approximated_ops(rule: &Rule) -> Vec<String> {
    let mut names: Vec<String> = [true, false]
        .iter()
        .flat_map(|&first| Plan::new(rule, first).passes)
        .flat_map(|pass| pass.kernel.ops)
        .filter_map(|op| match op {
            Op::Unary(u, _) if is_transcendental(u) => Some(format!("{u:?}").to_lowercase()),
            Op::Binary(b, _, _) if is_approximated(b) => Some(format!("{b:?}").to_lowercase()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What a comparison runs: tensor sizes, steps, worker threads for the fused
/// executor, the seed of the inputs, and the tolerance for backends that
/// approximate transcendentals (the others must be exact).
#[derive(Clone, Debug, PartialEq)]
pub struct Setup {
    pub numels: Vec<usize>,
    pub steps: usize,
    pub threads: Vec<usize>,
    pub seed: u64,
    pub tolerance: Tolerance,
}

/// Messages of the kernel calls a [`Lockstep`] backend found wrong.
type Errors = Arc<Mutex<Vec<String>>>;

struct Entry {
    name: String,
    backend: Backend,
    /// Held to [`Setup::tolerance`] rather than to bit-exactness.
    approximates: bool,
    /// Where a checking backend reports wrong kernel calls.
    errors: Option<Errors>,
}

/// Whether a registered backend computes on the host. The GPU backend
/// (`cubecl`) does not ([`optc_runtime::BackendInfo::on_device`]), so the
/// comparisons on awkward inputs here (filetests, differential tests) have
/// no tolerance for it yet; `runtime/tests/device.rs` and the golden
/// replays hold it to the interpreter on real trajectories.
pub fn on_host(info: &optc_runtime::BackendInfo) -> bool {
    !info.on_device
}

/// The fused backends a rule is compared on, by name.
pub struct Backends {
    list: Vec<Entry>,
}

impl Backends {
    pub fn none() -> Backends {
        Backends { list: Vec::new() }
    }

    /// Every backend the runtime registers (`optc_runtime::BACKENDS`), each
    /// held to bit-exactness or, where it approximates transcendentals, to
    /// [`Setup::tolerance`]; and every approximating kernel backend once more
    /// checked call by call, as `NAME-lockstep` (see [`Lockstep`]). A backend
    /// added to the registry joins every comparison, but for the GPU
    /// backend, whose arithmetic is the device's (see [`on_host`]).
    pub fn all() -> Backends {
        let mut backends = Backends::none();
        for info in BACKENDS.iter().filter(|info| on_host(info)) {
            let backend = (info.open)().unwrap_or_else(|why| panic!("{}: {why}", info.name));
            if info.approximates && backend.runs_kernels() {
                let checked = (info.open)().unwrap();
                backends = backends.with_lockstep(&format!("{}-lockstep", info.name), checked);
            }
            backends = backends.with(info.name, backend, info.approximates);
        }
        backends
    }

    /// The registered kernel backends only, checked as [`Backends::all`] does.
    pub fn kernels() -> Backends {
        let mut all = Backends::all();
        all.list.retain(|entry| entry.backend.runs_kernels());
        all
    }

    /// Keeps the backends held to bit-exactness (exact ones, and lockstep
    /// checkers).
    pub fn retain_exact(&mut self) {
        self.list.retain(|entry| !entry.approximates);
    }

    /// Adds `backend`; `approximates` holds it to [`Setup::tolerance`]
    /// instead of bit-exactness.
    pub fn with(mut self, name: &str, backend: Backend, approximates: bool) -> Backends {
        self.list.push(Entry {
            name: name.to_string(),
            backend,
            approximates,
            errors: None,
        });
        self
    }

    /// Adds `inner` (an approximating kernel backend) run in [`Lockstep`]
    /// with its model.
    pub fn with_lockstep(mut self, name: &str, inner: Backend) -> Backends {
        let errors = Errors::default();
        self.list.push(Entry {
            name: name.to_string(),
            backend: Backend::kernels(
                name,
                Box::new(Lockstep {
                    inner,
                    errors: errors.clone(),
                }),
            ),
            approximates: false,
            errors: Some(errors),
        });
        self
    }
}

/// The Cranelift JIT checked kernel call by kernel call. Every call runs the
/// JIT's kernel on the executor's buffers, and next to it a model of what the
/// JIT documents (backends/cranelift/src/lib.rs, "Semantics"): the reference semantics
/// (`kernel::run`), except that each approximated operation takes the
/// value the JIT computes for it alone (a one-operation kernel) and
/// `min`/`max` return the first operand on ties. The call is wrong when
///
/// * a store differs from the model's in any bit (NaNs aside),
/// * a sum differs from the model's in-order sum by more than 1e-12 of the
///   sum of its terms' magnitudes (the JIT adds in another order), or a
///   max or min differs at all,
/// * an approximated operation is further from the host libm's `f32`
///   function (what the interpreter calls) than the JIT's accuracy table
///   allows: 1 ulp for `exp`, `log`, `pow` and `cos` (|x| <= 8e8; beyond,
///   any value in [-1, 1]), 2 ulp for `tanh` and `sigmoid`.
///
/// Then the reference kernel's stores and sums replace the JIT's, so the
/// next operations, passes and steps see exactly what the interpreter sees
/// and every later call is checked on its own: a rule is compared with the
/// interpreter bit for bit, however much the rule would amplify a 1-ulp
/// difference of an approximated operation or a reordered sum.
pub struct Lockstep {
    inner: Backend,
    errors: Errors,
}

/// The runtime's Cranelift backend.
pub fn jit() -> Backend {
    Backend::named("cranelift").expect("the JIT supports this host")
}

/// Which approximated operation a one-operation kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Approximated {
    Unary(UnaryOp),
    Pow,
}

impl Approximated {
    fn of(op: &Op) -> Option<Approximated> {
        match *op {
            Op::Unary(u, _) if is_transcendental(u) => Some(Approximated::Unary(u)),
            Op::Binary(b, _, _) if is_approximated(b) => Some(Approximated::Pow),
            _ => None,
        }
    }

    /// `x = op(x)` or `x = pow(x, y)` in place, over buffers 0 (and 1): a
    /// copy of `like`, the kernel it stands in, with only its operations
    /// replaced (so whatever else describes `like`'s buffers stays true).
    fn kernel(self, like: &Kernel) -> Kernel {
        let mut alone = like.clone();
        alone.ops = match self {
            Approximated::Unary(u) => vec![Op::Load(0), Op::Unary(u, 0)],
            Approximated::Pow => vec![Op::Load(0), Op::Load(1), Op::Binary(BinaryOp::Pow, 0, 1)],
        };
        alone.stores = vec![(0, alone.ops.len() as u32 - 1)];
        alone.accumulators = Vec::new();
        alone.buffers = alone.buffers.max(2);
        alone
    }

    /// The host libm's value, as the interpreter computes it.
    fn libm(self, x: f32, y: f32) -> f32 {
        match self {
            Approximated::Unary(u) => interpret::unary::<f32>(u, x),
            Approximated::Pow => interpret::binary::<f32>(BinaryOp::Pow, x, y),
        }
    }

    /// Whether the JIT's `value` is as close to libm's as its table promises
    /// (a zero of the right sign, where libm's is a zero).
    fn accurate(self, x: f32, y: f32, value: f32) -> bool {
        let exact = self.libm(x, y);
        if exact == 0.0 && value == 0.0 {
            return exact.is_sign_negative() == value.is_sign_negative();
        }
        match self {
            Approximated::Unary(UnaryOp::Cos) if x.is_finite() && x.abs() > 8e8 => {
                (-1.0..=1.0).contains(&value)
            }
            Approximated::Unary(UnaryOp::Tanh | UnaryOp::Sigmoid) => ulps(exact, value) <= 2,
            _ => ulps(exact, value) <= 1,
        }
    }
}

impl HostBackend for Lockstep {
    fn compile(&mut self, kernel: &Kernel) -> Result<Arc<dyn HostKernel>, String> {
        let compile = |k: &Kernel| self.inner.compile(k).map_err(|e| e.to_string());
        let mut alone = HashMap::new();
        for approximated in kernel.ops.iter().filter_map(Approximated::of) {
            if let Slot::Vacant(slot) = alone.entry(approximated) {
                let alone = approximated.kernel(kernel);
                let compiled = compile(&alone)?;
                slot.insert((alone, compiled));
            }
        }
        Ok(Arc::new(LockstepKernel {
            kernel: kernel.clone(),
            jit: compile(kernel)?,
            alone,
            errors: self.errors.clone(),
        }))
    }
}

struct LockstepKernel {
    kernel: Kernel,
    jit: Arc<dyn HostKernel>,
    /// Each approximated operation of the kernel compiled on its own.
    alone: HashMap<Approximated, (Kernel, Arc<dyn HostKernel>)>,
    errors: Errors,
}

/// A one-operation kernel (see [`Approximated::kernel`]) over whole columns:
/// buffer k holds `args[k]`, buffer 0 the result; `alone`'s other buffers
/// and scalars are zeros it does not read.
fn run_alone(compiled: &dyn HostKernel, alone: &Kernel, args: &[&[f32]]) -> Vec<f32> {
    let len = args[0].len();
    let mut buffers: Vec<Vec<f32>> = (0..alone.buffers as usize)
        .map(|b| args.get(b).map_or_else(|| vec![0.0; len], |a| a.to_vec()))
        .collect();
    let pointers: Vec<*mut f32> = buffers.iter_mut().map(|b| b.as_mut_ptr()).collect();
    let scalars = vec![0.0; alone.scalars as usize];
    // SAFETY: every buffer holds 0..len and they are distinct allocations.
    unsafe { compiled.call(&pointers, &scalars, &mut [], 0..len) };
    buffers.swap_remove(0)
}

/// `min`/`max` with the JIT's tie rule (the first operand when equal).
fn first_on_ties(op: BinaryOp, a: f32, b: f32) -> f32 {
    let take_b = match op {
        BinaryOp::Max => a < b || a.is_nan(),
        _ => b < a || a.is_nan(),
    };
    if take_b {
        b
    } else {
        a
    }
}

impl LockstepKernel {
    /// The model's value of every operation over `inputs` (one column per
    /// buffer); appends to `wrong` each approximated value that is too far
    /// from libm's.
    fn model(
        &self,
        inputs: &[Vec<f32>],
        scalars: &[f32],
        wrong: &mut Vec<String>,
    ) -> Vec<Vec<f32>> {
        let len = inputs.first().map_or(0, Vec::len);
        let mut values: Vec<Vec<f32>> = Vec::with_capacity(self.kernel.ops.len());
        for (index, op) in self.kernel.ops.iter().enumerate() {
            let column = |k: u32| values[k as usize].as_slice();
            let map2 = |a: u32, b: u32, f: &dyn Fn(f32, f32) -> f32| -> Vec<f32> {
                column(a)
                    .iter()
                    .zip(column(b))
                    .map(|(&x, &y)| f(x, y))
                    .collect()
            };
            let value = if let Some(approximated) = Approximated::of(op) {
                let args: Vec<&[f32]> = match *op {
                    Op::Binary(_, a, b) => vec![column(a), column(b)],
                    Op::Unary(_, a) => vec![column(a)],
                    _ => Vec::new(),
                };
                let (alone, compiled) = &self.alone[&approximated];
                let result = run_alone(&**compiled, alone, &args);
                let y = |i: usize| args.get(1).map_or(0.0, |b| b[i]);
                if let Some(i) =
                    (0..len).find(|&i| !approximated.accurate(args[0][i], y(i), result[i]))
                {
                    wrong.push(format!(
                        "op {index} ({op:?}) at element {i}: the JIT's {approximated:?}({:e}, {:e}) = {:e}, libm's {:e}: beyond the JIT's documented accuracy",
                        args[0][i],
                        y(i),
                        result[i],
                        approximated.libm(args[0][i], y(i)),
                    ));
                }
                result
            } else {
                match *op {
                    Op::Load(b) => inputs[b as usize].clone(),
                    Op::Scalar(k) => vec![scalars[k as usize]; len],
                    Op::Const(c) => vec![c; len],
                    Op::Unary(u, a) => column(a)
                        .iter()
                        .map(|&x| interpret::unary::<f32>(u, x))
                        .collect(),
                    Op::Binary(b @ (BinaryOp::Min | BinaryOp::Max), x, y) => {
                        map2(x, y, &|p, q| first_on_ties(b, p, q))
                    }
                    Op::Binary(b, x, y) => map2(x, y, &|p, q| interpret::binary::<f32>(b, p, q)),
                    Op::Select(c, a, b) => (0..len)
                        .map(|i| interpret::select::<f32>(column(c)[i], column(a)[i], column(b)[i]))
                        .collect(),
                    Op::Lerp(a, b, w) => (0..len)
                        .map(|i| interpret::lerp::<f32>(column(a)[i], column(b)[i], column(w)[i]))
                        .collect(),
                }
            };
            values.push(value);
        }
        values
    }
}

impl HostKernel for LockstepKernel {
    unsafe fn call(
        &self,
        buffers: &[*mut f32],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: Range<usize>,
    ) {
        let kernel = &self.kernel;
        let len = range.len();
        // SAFETY (both): the caller guarantees that every buffer holds the
        // range, and that stored ones (never `g`) are writable; the slices
        // live only while nothing else touches the range.
        let read = |b: u32| unsafe {
            std::slice::from_raw_parts(buffers[b as usize].add(range.start), len)
        };
        let write = |b: u32| unsafe {
            std::slice::from_raw_parts_mut(buffers[b as usize].add(range.start), len)
        };
        let inputs: Vec<Vec<f32>> = (0..kernel.buffers).map(|b| read(b).to_vec()).collect();
        let mut wrong = Vec::new();
        let values = self.model(&inputs, scalars, &mut wrong);
        let identities: Vec<f64> = kernel
            .accumulators
            .iter()
            .map(|&(op, _)| Kernel::identity(op))
            .collect();
        let mut jit = identities.clone();
        // SAFETY: forwarded from the caller.
        unsafe { self.jit.call(buffers, scalars, &mut jit, range.clone()) };
        for &(buffer, op) in &kernel.stores {
            let stored = read(buffer);
            if let Some(i) =
                (0..len).find(|&i| !Tolerance::Exact.accepts(values[op as usize][i], stored[i]))
            {
                wrong.push(format!(
                    "store of op {op} ({:?}) to buffer {buffer} at element {}: the JIT's {:e} ({:#010x}), the model's {:e} ({:#010x})",
                    kernel.ops[op as usize],
                    range.start + i,
                    stored[i],
                    stored[i].to_bits(),
                    values[op as usize][i],
                    values[op as usize][i].to_bits(),
                ));
            }
        }
        for (k, &(reduce, op)) in kernel.accumulators.iter().enumerate() {
            let terms = values[op as usize].iter().map(|&x| f64::from(x));
            let want = terms
                .clone()
                .fold(identities[k], |acc, x| Kernel::combine(reduce, acc, x));
            let magnitude: f64 = terms.map(f64::abs).sum();
            let got = jit[k];
            let close = if want.is_nan() || got.is_nan() {
                want.is_nan() && got.is_nan()
            } else if want.is_infinite() || got.is_infinite() || reduce != ReduceOp::Sum {
                want == got
            } else {
                (want - got).abs() <= 1e-12 * magnitude.max(want.abs())
            };
            if !close {
                wrong.push(format!(
                    "accumulator {k} ({reduce:?} of op {op}): the JIT's {got:e}, the model's {want:e} (terms' magnitudes sum to {magnitude:e})"
                ));
            }
        }
        if !wrong.is_empty() {
            let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
            errors.extend(
                wrong
                    .into_iter()
                    .map(|w| format!("{w}; kernel over elements {range:?}: {kernel:?}")),
            );
        }
        // Continue from the reference semantics: its stores and its sums.
        let mut copies = inputs;
        let pointers: Vec<*mut f32> = copies.iter_mut().map(|c| c.as_mut_ptr()).collect();
        let mut reference = identities;
        // SAFETY: the copies hold 0..len and are distinct allocations.
        unsafe { kernel::run_raw(kernel, &pointers, scalars, &mut reference, 0..len) };
        for &(buffer, _) in &kernel.stores {
            write(buffer).copy_from_slice(&copies[buffer as usize]);
        }
        for ((acc, &(reduce, _)), value) in accumulators
            .iter_mut()
            .zip(&kernel.accumulators)
            .zip(reference)
        {
            *acc = Kernel::combine(reduce, *acc, value);
        }
    }
}

/// The largest distance seen between a backend and the interpreter.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub backend: String,
    pub max_ulps: u64,
    /// Values (over all steps, slots and threads) that were not bit-identical.
    pub inexact: usize,
}

/// `p`, then every state slot, after one step: one vector per tensor (scalar
/// slots hold one value per tensor, rounded to f32).
type Snapshot = Vec<(String, Vec<Vec<f32>>)>;

/// The inputs of every step: initial parameters and one gradient per step.
struct Inputs {
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<Vec<f32>>>,
}

impl Inputs {
    fn new(setup: &Setup) -> Inputs {
        let mut rng = Random(setup.seed);
        let tensors = |rng: &mut Random| -> Vec<Vec<f32>> {
            setup
                .numels
                .iter()
                .map(|&n| awkward_inputs(rng, n))
                .collect()
        };
        let params = tensors(&mut rng);
        let grads = (0..setup.steps).map(|_| tensors(&mut rng)).collect();
        Inputs { params, grads }
    }
}

fn views(tensors: &[Vec<f32>]) -> Vec<&[f32]> {
    tensors.iter().map(Vec::as_slice).collect()
}

fn views_mut(tensors: &mut [Vec<f32>]) -> Vec<&mut [f32]> {
    tensors.iter_mut().map(Vec::as_mut_slice).collect()
}

/// The interpreter's snapshot after every step.
fn interpret_steps(
    rule: &Rule,
    overrides: &[(String, ScalarExpr)],
    inputs: &Inputs,
) -> Result<Vec<Snapshot>, String> {
    let hypers = Bindings::new(rule, overrides.to_vec()).map_err(|e| e.to_string())?;
    let mut params = inputs.params.clone();
    let mut state: Option<Vec<Value<f32>>> = None;
    let mut snapshots = Vec::new();
    for (step, grads) in (1..).zip(&inputs.grads) {
        let out = interpret::step(
            rule,
            &StepInputs {
                params: &views(&params),
                grads: &views(grads),
                step,
                hypers: &hypers.values(step),
                state: state.as_deref(),
                views: None,
            },
        )?;
        params = out.params;
        let mut snapshot = vec![("p".to_string(), params.clone())];
        for (slot, value) in rule.states.iter().zip(&out.state) {
            let per_tensor = match value {
                Value::Group(x) => vec![vec![*x as f32]; params.len()],
                Value::Tensor(xs) => xs.iter().map(|&x| vec![x as f32]).collect(),
                Value::Rows(xs) | Value::Cols(xs) | Value::Elem(xs) | Value::Gram(xs) => xs.clone(),
            };
            snapshot.push((slot.name.clone(), per_tensor));
        }
        snapshots.push(snapshot);
        state = Some(out.state);
    }
    Ok(snapshots)
}

/// An optimizer's snapshot after every step, on `backend`.
fn fused_steps(
    rule: &Arc<Rule>,
    overrides: &[(String, ScalarExpr)],
    inputs: &Inputs,
    backend: &Backend,
    threads: usize,
    errors: Option<&Errors>,
) -> Result<Vec<Snapshot>, String> {
    let take_errors = || {
        errors.map_or_else(Vec::new, |e| {
            std::mem::take(&mut *e.lock().unwrap_or_else(PoisonError::into_inner))
        })
    };
    take_errors();
    let mut fused = Optimizer::builder(rule.clone())
        .overrides(overrides.to_vec())
        .backend(backend.clone())
        .threads(threads)
        .build()
        .map_err(|e| e.to_string())?;
    let mut params = inputs.params.clone();
    let mut snapshots = Vec::new();
    for (step, grads) in (1..).zip(&inputs.grads) {
        fused
            .step(&mut views_mut(&mut params), &views(grads))
            .map_err(|e| format!("step {step}: {e}"))?;
        let wrong = take_errors();
        if let Some(first) = wrong.first() {
            return Err(format!(
                "step {step}: {} wrong kernel call result(s), the first: {first}",
                wrong.len()
            ));
        }
        let mut snapshot = vec![("p".to_string(), params.clone())];
        for slot in &rule.states {
            let value = fused
                .state(&slot.name)
                .ok_or_else(|| format!("step {step}: no state slot `{}`", slot.name))?;
            snapshot.push((slot.name.clone(), value));
        }
        snapshots.push(snapshot);
    }
    Ok(snapshots)
}

/// Steps `rule` (with `overrides` for its hyperparameters) `setup.steps`
/// times through the interpreter and through every backend at every thread
/// count, on the same inputs; after each step compares `p` and every state
/// slot element by element. The first step at which a backend falls outside
/// its tolerance is an error naming `label`, the backend, the thread count,
/// the step, the slot, the tensor, the element, both values and the inputs
/// there. Otherwise returns what each backend was seen to differ by.
pub fn compare_backends(
    label: &str,
    rule: &Arc<Rule>,
    overrides: &[(String, ScalarExpr)],
    setup: &Setup,
    backends: &mut Backends,
) -> Result<Vec<Observed>, String> {
    let inputs = Inputs::new(setup);
    let expected = interpret_steps(rule, overrides, &inputs)
        .map_err(|e| format!("{label}: interpreter: {e}"))?;
    let mut observed = Vec::new();
    let unplanned = optc_compiler::plan::unsupported(rule);
    for Entry {
        name,
        backend,
        approximates,
        errors,
    } in &mut backends.list
    {
        if let (Some(why), true) = (&unplanned, backend.runs_kernels()) {
            // Every kernel backend refuses it, saying why; the staged executor and the interpreter run it.
            match fused_steps(rule, overrides, &inputs, backend, 1, errors.as_ref()) {
                Err(e) if e.contains(why.as_str()) => continue,
                Err(e) => {
                    return Err(format!(
                        "{label}: backend `{name}` refused it otherwise: {e}"
                    ))
                }
                Ok(_) => return Err(format!("{label}: backend `{name}` ran it: {why}")),
            }
        }
        let tolerance = if *approximates {
            setup.tolerance
        } else {
            Tolerance::Exact
        };
        let mut seen = Observed {
            backend: name.clone(),
            max_ulps: 0,
            inexact: 0,
        };
        for &threads in &setup.threads {
            let who = format!("{label}: backend `{name}` ({threads} threads)");
            let actual = fused_steps(rule, overrides, &inputs, backend, threads, errors.as_ref())
                .map_err(|e| format!("{who}: {e}"))?;
            for (step, (want, got)) in expected.iter().zip(&actual).enumerate() {
                compare_snapshots(want, got, tolerance, &mut seen).map_err(|mismatch| {
                    let step = step + 1;
                    let what = mismatch.describe(name, &inputs, step);
                    format!("{who}, after step {step} (tolerance {tolerance}): {what}")
                })?;
            }
        }
        observed.push(seen);
    }
    Ok(observed)
}

/// The first value (in slot, tensor, element order) where two snapshots
/// differ beyond the tolerance, and how many values do.
struct Mismatch {
    slot: String,
    /// `None`: the slot has other numbers or sizes of tensors.
    at: Option<(usize, usize, f32, f32)>,
    count: usize,
}

impl Mismatch {
    /// The mismatch as `backend` produced it at `step` (1-based), with the
    /// step's inputs at that element (for a scalar slot, the tensor's first).
    fn describe(&self, backend: &str, inputs: &Inputs, step: usize) -> String {
        let Some((tensor, element, want, got)) = self.at else {
            return format!("`{}` holds other numbers or sizes of tensors", self.slot);
        };
        let distance = match ulps(want, got) {
            u64::MAX => "NaN against a number".to_string(),
            n => format!("{n} ulp apart"),
        };
        let show = |x: Option<&f32>| x.map_or("-".to_string(), |x| format!("{x:e}"));
        format!(
            "`{}` of tensor {tensor}, element {element}: interpreter {want:e} ({:#010x}), \
             {backend} {got:e} ({:#010x}), {distance} ({} value(s) of this step beyond the \
             tolerance); inputs there: initial p {}, g of step {step} {}",
            self.slot,
            want.to_bits(),
            got.to_bits(),
            self.count,
            show(inputs.params[tensor].get(element)),
            show(inputs.grads[step - 1][tensor].get(element)),
        )
    }
}

fn compare_snapshots(
    want: &Snapshot,
    got: &Snapshot,
    tolerance: Tolerance,
    seen: &mut Observed,
) -> Result<(), Mismatch> {
    let mut first: Option<Mismatch> = None;
    let mut count = 0;
    for ((slot, want), (_, got)) in want.iter().zip(got) {
        let same_shape =
            want.len() == got.len() && want.iter().zip(got).all(|(a, b)| a.len() == b.len());
        if !same_shape {
            return Err(Mismatch {
                slot: slot.clone(),
                at: None,
                count: 1,
            });
        }
        for (tensor, (a, b)) in want.iter().zip(got).enumerate() {
            for (element, (&x, &y)) in a.iter().zip(b).enumerate() {
                if x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()) {
                    seen.inexact += 1;
                    seen.max_ulps = seen.max_ulps.max(ulps(x, y));
                }
                if !tolerance.accepts(x, y) {
                    count += 1;
                    first.get_or_insert_with(|| Mismatch {
                        slot: slot.clone(),
                        at: Some((tensor, element, x, y)),
                        count: 0,
                    });
                }
            }
        }
    }
    match first {
        Some(mismatch) => Err(Mismatch { count, ..mismatch }),
        None => Ok(()),
    }
}
