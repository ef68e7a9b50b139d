//! `optc._optc`, the native half of the Python package: compiling rules
//! (with diagnostics raised as exceptions that carry the rendered message)
//! and an [`Engine`] around one runtime [`Optimizer`] that steps tensors in
//! place given their addresses. The Python half (`optc/torch.py`,
//! `optc/functional.py`) checks that every address belongs to a contiguous
//! CPU tensor or array of the right type and size; the engine checks the
//! sizes, the alignment and that no two tensors it writes overlap, and steps
//! with the GIL released.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use half::bf16;
use optc_compiler::diagnostics;
use optc_compiler::interpret::Scalars;
use optc_compiler::ir::{Kind, Rule as IrRule, ScalarExpr, Shape};
use optc_compiler::kernel::Storage;
use optc_compiler::Program;
use optc_runtime::executor::{SlotValues, Stored};
use optc_runtime::shard::{chunk_aligned_shard, Collective, Sharding};
use optc_runtime::{
    Backend, Group, GroupReductions, NonFinite, Optimizer, Outcome, Precision, CHUNK,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

pyo3::create_exception!(
    optc,
    CompileError,
    PyValueError,
    "A .opt program, rule or value that does not compile: the message is the rendered diagnostic."
);
pyo3::create_exception!(
    optc,
    OptimizerError,
    PyValueError,
    "A request the optimizer refuses (tensors, hyperparameters, state, checkpoints); nothing changed."
);

fn refused(error: impl ToString) -> PyErr {
    OptimizerError::new_err(error.to_string())
}

/// A compiled rule and the program it came from (for schedules given as text).
#[pyclass(module = "optc._optc", frozen)]
struct Rule {
    rule: Arc<IrRule>,
    program: Program,
    #[pyo3(get)]
    notes: Vec<String>,
}

#[pymethods]
impl Rule {
    #[getter]
    fn name(&self) -> String {
        self.rule.name.clone()
    }

    /// `(name, kind, default)` per hyperparameter: kind `"float"` or
    /// `"bool"`, default the source text of its default (None: required).
    #[getter]
    fn hypers(&self) -> Vec<(String, &'static str, Option<String>)> {
        self.rule
            .hypers
            .iter()
            .map(|h| {
                let kind = match h.kind {
                    Kind::Bool => "bool",
                    Kind::Float => "float",
                };
                (
                    h.name.clone(),
                    kind,
                    h.default.as_ref().map(|d| d.text.clone()),
                )
            })
            .collect()
    }

    /// `(name, shape)` per state slot: shape `"elem"` (one value per
    /// element), `"tensor"` or `"group"`.
    #[getter]
    fn states(&self) -> Vec<(String, String)> {
        self.rule
            .states
            .iter()
            .map(|s| (s.name.clone(), s.shape.to_string()))
            .collect()
    }

    /// The compiled rule in the IR's text format.
    fn __str__(&self) -> String {
        self.rule.to_string()
    }

    fn __repr__(&self) -> String {
        let names: Vec<&str> = self.rule.hypers.iter().map(|h| h.name.as_str()).collect();
        format!("<optc rule {}({})>", self.rule.name, names.join(", "))
    }
}

impl Rule {
    /// A Python value as a hyperparameter value: a bool, a number or a
    /// schedule's source text (`"cosine_decay(0.1, 1000)"`).
    fn value(&self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<ScalarExpr> {
        if value.is_instance_of::<PyBool>() {
            return Ok(ScalarExpr::boolean(value.extract()?));
        }
        if value.is_instance_of::<PyString>() {
            let text: String = value.extract()?;
            let mut program = self.program.clone();
            return program.compile_scalar(name, &text).map_err(|d| {
                CompileError::new_err(diagnostics::render(&d, program.files(), false))
            });
        }
        match value.extract::<f64>() {
            Ok(number) => Ok(ScalarExpr::constant(number)),
            Err(_) => Err(OptimizerError::new_err(format!(
                "hyperparameter `{name}`: give a number, a bool or a schedule's text, not {}",
                value.get_type().name()?
            ))),
        }
    }

    fn values(&self, pairs: &[(String, Bound<'_, PyAny>)]) -> PyResult<Vec<(String, ScalarExpr)>> {
        pairs
            .iter()
            .map(|(name, value)| Ok((name.clone(), self.value(name, value)?)))
            .collect()
    }
}

/// Compiles a rule: `source` is the name of a stdlib optimizer, a path to a
/// `.opt` file, or `.opt` source text (anything with a `{` or a newline);
/// `rule` picks one of the file's optimizers (default: its last).
#[pyfunction]
#[pyo3(signature = (source, rule = None))]
fn compile(source: &str, rule: Option<&str>) -> PyResult<Rule> {
    let text = source.contains(['{', '\n']);
    let loaded = match text {
        true => optc_stdlib::load::source("<source>", source.as_bytes(), false),
        false => optc_stdlib::load::program(source, false),
    }
    .map_err(CompileError::new_err)?;
    let what = if text { "the source" } else { source };
    let compiled = loaded
        .rule(rule, what, false)
        .map_err(CompileError::new_err)?;
    Ok(Rule {
        rule: Arc::new(compiled),
        program: loaded.program,
        notes: loaded.notes,
    })
}

/// The standard library's optimizers, by name.
#[pyfunction]
fn stdlib() -> Vec<String> {
    optc_stdlib::prelude()
        .optimizers()
        .into_iter()
        .map(String::from)
        .collect()
}

/// The element range `(start, end)` of a tensor of `numel` elements that
/// `rank` of `ranks` holds in chunk-aligned sharding (sharded steps then
/// equal unsharded ones bit for bit).
#[pyfunction]
fn shard_range(numel: usize, ranks: usize, rank: usize) -> PyResult<(usize, usize)> {
    if ranks == 0 || rank >= ranks {
        return Err(refused(format!("rank {rank} of {ranks} ranks")));
    }
    let range = chunk_aligned_shard(numel, ranks, rank);
    Ok((range.start, range.end))
}

fn storage(name: &str) -> PyResult<Storage> {
    match name {
        "float32" => Ok(Storage::F32),
        "bfloat16" => Ok(Storage::Bf16),
        other => Err(refused(format!(
            "parameters and state are float32 or bfloat16, not {other}"
        ))),
    }
}

/// A group: `(name, tensor patterns, hyperparameter values)`.
type GroupSpec<'py> = (String, Vec<String>, Vec<(String, Bound<'py, PyAny>)>);

/// One runtime optimizer, stepping tensors given by address.
#[pyclass(module = "optc._optc")]
struct Engine {
    optimizer: Mutex<Optimizer>,
    rule: Py<Rule>,
}

/// An all-gather through a Python callable (`torch.distributed`, in
/// `optc.torch`): `all_gather(list[float]) -> list[list[float]]`.
struct PythonCollective(Py<PyAny>);

impl Collective for PythonCollective {
    fn all_gather(&mut self, local: &[f64]) -> Result<Vec<Vec<f64>>, String> {
        Python::attach(|py| {
            self.0
                .call1(py, (local.to_vec(),))
                .and_then(|out| out.extract::<Vec<Vec<f64>>>(py))
                .map_err(|e| e.to_string())
        })
    }
}

/// Buffers given by address: `(address, elements, written)`, checked for
/// alignment and for writes that overlap another buffer.
fn check_buffers(buffers: &[(usize, usize, bool)], align: usize) -> PyResult<()> {
    if let Some(&(address, _, _)) = buffers.iter().find(|b| b.1 > 0 && b.0 % align != 0) {
        return Err(refused(format!(
            "a tensor at address {address:#x} is not aligned to its {align}-byte elements"
        )));
    }
    let mut sorted: Vec<(usize, usize, bool)> = buffers
        .iter()
        .filter(|b| b.1 > 0)
        .map(|&(a, n, w)| (a, a.saturating_add(n.saturating_mul(align)), w))
        .collect();
    sorted.sort();
    // Any written buffer overlapping any other: scan with the furthest end so far.
    let mut furthest: Option<(usize, bool)> = None;
    for &(start, end, written) in &sorted {
        if let Some((reach, reach_written)) = furthest {
            if start < reach && (written || reach_written) {
                return Err(refused(
                    "two tensors of one step share memory (a parameter written while another \
                     tensor reads or writes the same elements)",
                ));
            }
        }
        furthest = match furthest {
            Some((reach, w)) if reach >= end => Some((reach, w)),
            _ => Some((end, written)),
        };
    }
    Ok(())
}

/// # Safety
/// `address` points to `numel` valid, aligned elements of type `P` that
/// nothing else accesses for `'a` (the Python half and [`check_buffers`]
/// checked it).
unsafe fn view<'a, P>(address: usize, numel: usize) -> &'a mut [P] {
    let pointer = match numel {
        0 => NonNull::<P>::dangling().as_ptr(),
        _ => address as *mut P,
    };
    unsafe { std::slice::from_raw_parts_mut(pointer, numel) }
}

impl Engine {
    fn lock(&self) -> MutexGuard<'_, Optimizer> {
        self.optimizer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One step of `P` tensors given by address.
fn step_as<P: optc_runtime::precision::Element>(
    optimizer: &mut Optimizer,
    numels: &[usize],
    params: &[usize],
    grads: &[Option<usize>],
) -> Result<Outcome, optc_runtime::Error> {
    // SAFETY: checked by the caller (check_buffers and the Python half).
    let mut params: Vec<&mut [P]> = params
        .iter()
        .zip(numels)
        .map(|(&a, &n)| unsafe { view::<P>(a, n) })
        .collect();
    let grads: Vec<Option<&[P]>> = grads
        .iter()
        .zip(numels)
        .map(|(g, &n)| g.map(|a| &*unsafe { view::<P>(a, n) }))
        .collect();
    if grads.iter().all(Option::is_some) {
        let grads: Vec<&[P]> = grads.into_iter().flatten().collect();
        optimizer.step(&mut params, &grads)
    } else {
        optimizer.step_some(&mut params, &grads)
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (rule, tensors, groups, overrides, dtype, state_dtype, threads = 1,
                        backend = None, group_reductions = "per_group", scalars = "f64",
                        non_finite = "propagate", stochastic_rounding = false, seed = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        rule: Bound<'_, Rule>,
        tensors: Vec<(String, Vec<usize>)>,
        groups: Vec<GroupSpec<'_>>,
        overrides: Vec<(String, Bound<'_, PyAny>)>,
        dtype: &str,
        state_dtype: &str,
        threads: usize,
        backend: Option<&str>,
        group_reductions: &str,
        scalars: &str,
        non_finite: &str,
        stochastic_rounding: bool,
        seed: u32,
    ) -> PyResult<Engine> {
        let compiled = rule.get();
        let mut builder = Optimizer::builder(compiled.rule.clone())
            .overrides(compiled.values(&overrides)?)
            .shaped_tensors(tensors)
            .threads(threads)
            .precision(Precision {
                params: storage(dtype)?,
                state: storage(state_dtype)?,
                stochastic_rounding,
                seed,
            })
            .group_reductions(match group_reductions {
                "per_group" => GroupReductions::PerGroup,
                "across" => GroupReductions::AcrossGroups,
                other => {
                    return Err(refused(format!(
                        "group_reductions is \"per_group\" or \"across\", not {other:?}"
                    )))
                }
            })
            .scalars(match scalars {
                "f64" => Scalars::F64,
                "f32" => Scalars::F32,
                other => {
                    return Err(refused(format!(
                        "scalars is \"f64\" or \"f32\", not {other:?}"
                    )))
                }
            })
            .non_finite(match non_finite {
                "propagate" => NonFinite::Propagate,
                "skip" => NonFinite::Skip,
                other => {
                    return Err(refused(format!(
                        "non_finite is \"propagate\" or \"skip\", not {other:?}"
                    )))
                }
            });
        if let Some(name) = backend {
            builder = builder.backend(Backend::named(name).map_err(refused)?);
        }
        for (name, patterns, values) in groups {
            let mut group = Group::new(name).tensors(patterns);
            for (hyper, value) in compiled.values(&values)? {
                group = group.set(hyper, value);
            }
            builder = builder.group(group);
        }
        let optimizer = builder.build().map_err(refused)?;
        Ok(Engine {
            optimizer: Mutex::new(optimizer),
            rule: rule.unbind(),
        })
    }

    /// Sets hyperparameter `name` of group `group` from the next step on
    /// (nothing recompiles).
    fn set(&self, group: &str, name: &str, value: Bound<'_, PyAny>) -> PyResult<()> {
        let value = self.rule.get().value(name, &value)?;
        self.lock().set(group, name, value).map_err(refused)
    }

    /// One step, in place: parameters and gradients by address (a gradient
    /// None: the tensor skips the step). Returns None, or `(tensor, index)`
    /// of the first non-finite gradient when the step was skipped.
    fn step(
        &self,
        py: Python<'_>,
        params: Vec<usize>,
        grads: Vec<Option<usize>>,
    ) -> PyResult<Option<(usize, usize)>> {
        let mut optimizer = self.lock();
        let numels = optimizer.layout().map(|l| l.numels()).unwrap_or_default();
        if params.len() != numels.len() || grads.len() != numels.len() {
            return Err(refused(format!(
                "expected {} parameters and gradients, got {} and {}",
                numels.len(),
                params.len(),
                grads.len()
            )));
        }
        let element = optimizer.precision().params;
        let size = match element {
            Storage::F32 => 4,
            Storage::Bf16 => 2,
        };
        let mut buffers: Vec<(usize, usize, bool)> = params
            .iter()
            .zip(&numels)
            .map(|(&a, &n)| (a, n, true))
            .collect();
        buffers.extend(
            grads
                .iter()
                .zip(&numels)
                .filter_map(|(g, &n)| g.map(|a| (a, n, false))),
        );
        check_buffers(&buffers, size)?;
        let optimizer = &mut *optimizer;
        let outcome = py.detach(|| match element {
            Storage::F32 => step_as::<f32>(optimizer, &numels, &params, &grads),
            Storage::Bf16 => step_as::<bf16>(optimizer, &numels, &params, &grads),
        });
        match outcome.map_err(refused)? {
            Outcome::Applied => Ok(None),
            Outcome::Skipped { tensor, index } => Ok(Some((tensor, index))),
        }
    }

    /// Steps each tensor has taken.
    fn tensor_steps(&self) -> Vec<u64> {
        self.lock().tensor_steps().to_vec()
    }

    /// The groups' names (the default group first).
    fn group_names(&self) -> Vec<String> {
        self.lock()
            .group_names()
            .iter()
            .map(|g| g.to_string())
            .collect()
    }

    /// The element type of per-element state: `"f32"`, `"bf16"` or `"f64"`
    /// (the f64 interpreter's, exported rounded to f32).
    fn state_dtype(&self) -> &'static str {
        self.lock().state_dtype()
    }

    #[getter]
    fn backend(&self) -> String {
        self.lock().backend().to_string()
    }

    /// Per state slot, the number of values each tensor holds: its
    /// elements, rows or columns (as the rule sees the tensor: leading
    /// dimensions folded into the rows); None for tensor and group slots.
    fn state_lengths(&self) -> Vec<Option<Vec<usize>>> {
        let optimizer = self.lock();
        let views = optimizer.layout().map(|l| l.views()).unwrap_or_default();
        (optimizer.rule().states.iter())
            .map(|slot| match slot.shape {
                Shape::Elem | Shape::Rows | Shape::Cols => {
                    Some(views.iter().map(|v| v.len(slot.shape)).collect())
                }
                _ => None,
            })
            .collect()
    }

    /// Copies the state out: for each slot, per-element values into the
    /// buffers `outs[slot]` gives (one address per tensor, of the state's
    /// element type; f32 for f64 state); returns each tensor or group
    /// slot's values (one per tensor, or per group).
    fn export_state(&self, outs: Vec<Option<Vec<usize>>>) -> PyResult<Vec<Option<Vec<f64>>>> {
        let optimizer = self.lock();
        let values = optimizer.state_values();
        if outs.len() != values.len() {
            return Err(refused(format!(
                "{} state slots, {} outputs",
                values.len(),
                outs.len()
            )));
        }
        let mut scalars = Vec::new();
        for (value, out) in values.iter().zip(&outs) {
            match (value, out) {
                (SlotValues::Vectors(tensors), Some(addresses))
                    if addresses.len() == tensors.len() =>
                {
                    let buffers: Vec<_> = tensors
                        .iter()
                        .zip(addresses)
                        .map(|(t, &a)| (a, t.len(), true))
                        .collect();
                    let size = if matches!(tensors.first(), Some(Stored::Bf16(_))) {
                        2
                    } else {
                        4
                    };
                    check_buffers(&buffers, size)?;
                    for (stored, &address) in tensors.iter().zip(addresses) {
                        // SAFETY: checked by the caller's Python half and check_buffers.
                        match stored {
                            Stored::Bf16(bits) => {
                                unsafe { view::<u16>(address, bits.len()) }.copy_from_slice(bits)
                            }
                            other => unsafe { view::<f32>(address, other.len()) }
                                .copy_from_slice(&other.to_f32()),
                        }
                    }
                    scalars.push(None);
                }
                (SlotValues::Tensor(xs) | SlotValues::Group(xs), None) => {
                    scalars.push(Some(xs.clone()))
                }
                (SlotValues::Vectors(tensors), None) if tensors.is_empty() => scalars.push(None),
                _ => return Err(refused("state outputs of another shape than the state")),
            }
        }
        Ok(scalars)
    }

    /// Replaces the state and each tensor's step count: per-element,
    /// per-row and per-column slots from `elems[slot]` (one address per
    /// tensor, of the state's element type, f32 for f64 state), tensor and
    /// group slots from `scalars[slot]`. On error nothing changes.
    fn import_state(
        &self,
        steps: Vec<u64>,
        elems: Vec<Option<Vec<usize>>>,
        scalars: Vec<Option<Vec<f64>>>,
    ) -> PyResult<()> {
        let mut optimizer = self.lock();
        let views = optimizer.layout().map(|l| l.views()).unwrap_or_default();
        let rule = optimizer.rule().clone();
        if elems.len() != rule.states.len() || scalars.len() != rule.states.len() {
            return Err(refused(format!(
                "`{}` has {} state slots",
                rule.name,
                rule.states.len()
            )));
        }
        let bf16_state = optimizer.state_dtype() == "bf16";
        let mut state = Vec::new();
        for ((slot, elem), scalar) in rule.states.iter().zip(elems).zip(scalars) {
            state.push(match (slot.shape, elem, scalar) {
                (Shape::Elem | Shape::Rows | Shape::Cols, Some(addresses), None)
                    if addresses.len() == views.len() =>
                {
                    let numels: Vec<usize> = views.iter().map(|v| v.len(slot.shape)).collect();
                    let size = if bf16_state { 2 } else { 4 };
                    let buffers: Vec<_> = addresses
                        .iter()
                        .zip(&numels)
                        .map(|(&a, &n)| (a, n, false))
                        .collect();
                    check_buffers(&buffers, size)?;
                    // SAFETY: checked by the caller's Python half and check_buffers.
                    SlotValues::Vectors(
                        addresses
                            .iter()
                            .zip(&numels)
                            .map(|(&a, &n)| match bf16_state {
                                true => Stored::Bf16(unsafe { view::<u16>(a, n) }.to_vec()),
                                false => Stored::F32(unsafe { view::<f32>(a, n) }.to_vec()),
                            })
                            .collect(),
                    )
                }
                (Shape::Tensor, None, Some(xs)) => SlotValues::Tensor(xs),
                (Shape::Group, None, Some(xs)) => SlotValues::Group(xs),
                _ => {
                    return Err(refused(format!(
                        "state `{}` is one value per {}: give it as such",
                        slot.name, slot.shape
                    )))
                }
            });
        }
        optimizer.load_state(&steps, state).map_err(refused)
    }

    /// Saves an optc checkpoint (atomically: a failed save keeps the old file).
    fn save(&self, path: std::path::PathBuf) -> PyResult<()> {
        self.lock().save(&path).map_err(refused)
    }

    /// Loads an optc checkpoint of the same rule, groups and tensors.
    fn load(&self, path: std::path::PathBuf) -> PyResult<()> {
        self.lock().load(&path).map_err(refused)
    }

    /// Makes the tensors this rank's shards of tensors of `full_numels`
    /// elements; `all_gather(list[float]) -> list[list[float]]` gathers
    /// every rank's reduction partials, in rank order.
    fn shard(&self, full_numels: Vec<usize>, all_gather: Py<PyAny>) -> PyResult<()> {
        self.lock()
            .shard(Sharding {
                full_numels,
                collective: Box::new(PythonCollective(all_gather)),
            })
            .map_err(refused)
    }
}

#[pymodule]
fn _optc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Rule>()?;
    m.add_class::<Engine>()?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(stdlib, m)?)?;
    m.add_function(wrap_pyfunction!(shard_range, m)?)?;
    m.add("CompileError", m.py().get_type::<CompileError>())?;
    m.add("OptimizerError", m.py().get_type::<OptimizerError>())?;
    m.add("CHUNK", CHUNK)?;
    Ok(())
}
