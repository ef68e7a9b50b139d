//! `optc bench`: times a rule's fused step and, in the same run and on the
//! same buffers, the data-movement floor of that step (kernels that move the
//! same bytes and do no math), so the ratio between them is meaningful on a
//! shared, noisy machine.

use std::time::{Duration, Instant};

use half::bf16;
use optc_compiler::kernel::Storage;
use optc_runtime::buffer::Arena;
use optc_runtime::precision::Element;
use optc_runtime::{Backend, Optimizer, Precision};

use crate::load::{self, Execution, Failure};

pub struct Settings<'a> {
    pub file: &'a str,
    pub rule: Option<&'a str>,
    pub numel: usize,
    pub tensors: usize,
    /// Every tensor's dimensions (`None`: vectors).
    pub shape: Option<&'a [usize]>,
    pub threads: usize,
    pub steps: usize,
    pub sets: &'a [String],
    pub dtype: Dtype,
    pub stochastic_rounding: bool,
    pub json: bool,
    pub execution: &'a Execution,
}

/// Storage of parameters, gradients and state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    fn storage(self) -> Storage {
        match self {
            Dtype::F32 => Storage::F32,
            Dtype::Bf16 => Storage::Bf16,
        }
    }
}

/// A tensor's dimensions, as `--shape` gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dims(pub Vec<usize>);

impl Dims {
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
}

/// Parses `--shape`: dimensions joined by `x` (`4096x4096`, `8x3x3`).
pub fn parse_shape(text: &str) -> Result<Dims, String> {
    let dims: Vec<usize> = text
        .split('x')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{text}` is not a shape: dimensions joined by x, like 4096x4096"))?;
    if dims.contains(&0) {
        return Err(format!("`{text}` has a zero dimension"));
    }
    Ok(Dims(dims))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

pub fn run(settings: &Settings<'_>) -> Result<String, Failure> {
    if settings.tensors == 0 || settings.numel < settings.tensors {
        return Err("error: --numel must be at least --tensors, and --tensors at least 1".into());
    }
    if settings.stochastic_rounding && settings.dtype != Dtype::Bf16 {
        return Err("error: --stochastic-rounding needs --dtype bf16".into());
    }
    let (mut program, rule) = load::rule(settings.file, settings.rule)?;
    let name = rule.name.clone();
    // Before allocating: the generated f32 tensors (parameters and
    // gradients, and their staging copies), the arenas they are placed in,
    // and the state.
    let storage = settings.dtype.storage().bytes();
    let per_element = 4 * 4 + 3 * storage + rule.elem_state_slots() * storage;
    optc_runtime::memory::ensure(
        optc_runtime::memory::bytes_of(settings.numel, per_element),
        &format!("benchmarking {} parameters", settings.numel),
    )
    .map_err(|e| format!("error: {e} (use a smaller --numel)"))?;
    let precision = Precision {
        params: settings.dtype.storage(),
        state: settings.dtype.storage(),
        stochastic_rounding: settings.stochastic_rounding,
        seed: 0,
    };
    let backend_name = settings.execution.backend.as_deref();
    if load::backend(backend_name, &rule)?.name() == "interp" {
        let others: Vec<&str> = optc_runtime::backend::names()
            .into_iter()
            .filter(|&name| name != "interp")
            .collect();
        return Err(format!(
            "error: optc bench times a step against its data-movement floor, and the \
             interpreter has none (use --backend {})",
            others.join(", ")
        ));
    }
    let mut prototype = load::builder(
        &mut program,
        rule.clone(),
        settings.sets,
        settings.execution,
        false,
    )?
    .threads(settings.threads)
    .precision(precision);
    if let Some(dims) = settings.shape {
        prototype =
            prototype.shaped_tensors((0..settings.tensors).map(|t| (format!("w{t}"), dims)));
    }
    // Compile time: plan and compile every kernel of both plans, with a fresh
    // backend (cold) and again with the same one (its kernel cache warm);
    // medians of several.
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let mut built = None;
    for _ in 0..9 {
        let backend = load::backend(backend_name, &rule)?;
        for times in [&mut cold, &mut warm] {
            let start = Instant::now();
            let optimizer = load::build(prototype.clone().backend(backend.clone()))?;
            times.push(start.elapsed());
            built = Some((optimizer, backend.clone()));
        }
    }
    let (mut optimizer, backend) = built.ok_or("error: nothing compiled")?;
    let compile = median(cold);
    let compile_cached = median(warm);

    let times = match settings.dtype {
        Dtype::F32 => time_steps(settings, &mut optimizer, &backend, |x| x),
        Dtype::Bf16 => time_steps(settings, &mut optimizer, &backend, bf16::from_f32),
    }
    .map_err(|e| format!("error: {e}"))?;
    let numel = settings.numel as f64;
    let step_ns = median(times.step).as_nanos() as f64 / numel;
    let floor_ns = median(times.floor).as_nanos() as f64 / numel;
    let products_ns =
        (!times.products.is_empty()).then(|| median(times.products).as_nanos() as f64 / numel);
    let traffic = optimizer
        .traffic()
        .ok_or("error: the backend does not say what its steps move")?;
    let (bytes, passes) = (traffic.bytes_per_element, traffic.passes);
    let backend_name = optimizer.backend().to_string();
    let shape = settings.shape.map(|dims| {
        dims.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x")
    });
    let compile_ms = compile.as_secs_f64() * 1e3;
    if settings.json {
        let object = serde_json::json!({
            "rule": name,
            "backend": backend_name,
            "numel": settings.numel,
            "tensors": settings.tensors,
            "shape": shape,
            "threads": settings.threads,
            "dtype": format!("{:?}", settings.dtype).to_lowercase(),
            "stochastic_rounding": settings.stochastic_rounding,
            "passes": passes,
            "bytes_per_param": bytes,
            "steps_timed": settings.steps.max(1),
            "ns_per_param": step_ns,
            "floor_ns_per_param": floor_ns,
            "ratio_to_floor": step_ns / floor_ns,
            "products_ns_per_param": products_ns,
            "ratio_to_products": products_ns.map(|p| step_ns / p),
            "gb_per_s": bytes as f64 / step_ns,
            "compile_ms": compile_ms,
            "compile_cached_ms": compile_cached.as_secs_f64() * 1e3,
        });
        return Ok(format!("{object}\n"));
    }
    let products = products_ns.map_or(String::new(), |p| {
        format!(
            "  products {p:>8.3} ns/param   (the step's matrix products alone, gemm, same run)\n  \
             ratio {:>8.2}x the products\n",
            step_ns / p
        )
    });
    Ok(format!(
        "{name}: {} params in {} tensor(s){}, {} thread(s), {:?}{}, {backend_name} backend, {passes} pass(es), {bytes} B/param\n  \
         step  {step_ns:>8.3} ns/param  {:>7.2} GB/s   (median of {} steps)\n  \
         floor {floor_ns:>8.3} ns/param  {:>7.2} GB/s   (same bytes, no math, same run)\n  \
         ratio {:>8.2}x the floor\n{products}  \
         compile {compile_ms:.3} ms (plans and kernels of both plans, median of 9), \
         {:.3} ms from the kernel cache\n",
        settings.numel,
        settings.tensors,
        shape.map_or(String::new(), |s| format!(" of {s}")),
        settings.threads,
        settings.dtype,
        if settings.stochastic_rounding {
            " with stochastic rounding"
        } else {
            ""
        },
        bytes as f64 / step_ns,
        settings.steps.max(1),
        bytes as f64 / floor_ns,
        step_ns / floor_ns,
        compile_cached.as_secs_f64() * 1e3,
    ))
}

/// Timings of one run.
struct Times {
    step: Vec<Duration>,
    floor: Vec<Duration>,
    /// The step's matrix products alone (empty for rules without any).
    products: Vec<Duration>,
}

/// Times `settings.steps` steps and floors (and matrix products),
/// alternating so that all see the same machine conditions, on parameters
/// of element type `P` the executor holds (uploaded into its huge-page
/// arenas, as a training loop that lets the runtime allocate gets; on a
/// GPU, into device memory) and gradients in an arena like them (on a GPU,
/// in device memory too).
fn time_steps<P: Element>(
    settings: &Settings<'_>,
    optimizer: &mut Optimizer,
    backend: &Backend,
    convert: impl Fn(f32) -> P,
) -> Result<Times, optc_runtime::Error> {
    let arena = |seed: u64, stagger: usize| {
        let tensors: Vec<Vec<P>> =
            optc_tasks::random_tensors(settings.numel, settings.tensors, seed)
                .into_iter()
                .map(|t| t.into_iter().map(&convert).collect())
                .collect();
        Arena::from_tensors(&tensors, stagger)
    };
    {
        let mut params = arena(1, 40)?;
        let views: Vec<&[P]> = params.tensors_mut().into_iter().map(|p| &*p).collect();
        optimizer.upload(&views)?;
    }
    let mut grads = arena(2, 41)?;
    let grads: Vec<&[P]> = grads.tensors_mut().into_iter().map(|g| &*g).collect();
    // On a GPU, gradients are where a backward pass leaves them: in device
    // memory, uploaded once; a step then moves nothing between host and device.
    let resident = backend.runs_on_device();
    if resident {
        optimizer.upload_gradients(&grads)?;
    }
    let step = |optimizer: &mut Optimizer| {
        if resident {
            optimizer.step_resident()
        } else {
            optimizer.step_owned(&grads)
        }
    };
    // Compile the floor's kernels; a tiered backend's steps and floor are
    // then timed on its faster tier.
    optimizer.run_floor_owned(&grads)?;
    backend.wait_for_tiers();
    for _ in 0..2 {
        step(optimizer)?;
    }
    let mut times = Times {
        step: Vec::new(),
        floor: Vec::new(),
        products: Vec::new(),
    };
    for _ in 0..settings.steps.max(1) {
        let start = Instant::now();
        step(optimizer)?;
        times.step.push(start.elapsed());
        let start = Instant::now();
        optimizer.run_floor_owned(&grads)?;
        times.floor.push(start.elapsed());
        let start = Instant::now();
        if optimizer.run_products()? > 0 {
            times.products.push(start.elapsed());
        }
    }
    Ok(times)
}
