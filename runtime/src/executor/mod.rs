//! Executors: what an [`crate::Optimizer`] runs its steps on. An executor
//! owns the memory that per-element state lives in (and parameters, when the
//! caller uploads them) and runs one step of a rule over every tensor of the
//! groups that step. The optimizer does everything that does not depend on
//! where memory is: binding hyperparameters, checking tensors, the
//! non-finite policy, parameter groups and checkpoints.
//!
//! Four executors exist: [`host::HostExecutor`] runs a rule's pass plan as
//! compiled kernels (any [`optc_compiler::backend::HostBackend`]: reference
//! kernels, Cranelift, LLVM) on a thread pool, with state in huge-page
//! arenas; `device::DeviceExecutor` (the `cubecl` feature) runs it as GPU
//! kernels with state in device memory; [`interp::InterpExecutor`] runs the
//! interpreter, the semantics oracle, in f32 or f64; and
//! [`staged::StagedExecutor`] runs any rule, matrix-shaped ones included, in
//! stages of host work (matrix products through `gemm`) and blockwise
//! passes over the elements, with the interpreter's storage. The host side
//! of a pass plan (hyperparameter arithmetic, reductions combined in a
//! fixed order, tensor and group state) is [`plan::PlanState`], written
//! once for the host and the device executor, which only launch kernels
//! differently.

#[cfg(feature = "cubecl")]
pub mod device;
pub mod host;
pub mod interp;
pub mod plan;
pub mod staged;

use half::bf16;
use optc_compiler::ir::MatrixView;

use crate::Error;

/// The tensors an optimizer steps, fixed by its first step (or declared
/// when it was built): their names, sizes and parameter groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub tensors: Vec<TensorInfo>,
    /// Group names, in the optimizer's order.
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Its elements: `view.numel()`.
    pub numel: usize,
    /// Its shape as the rule sees it (rows and columns; a vector unless
    /// the tensor was declared with a shape).
    pub view: MatrixView,
    /// Index into [`Layout::groups`].
    pub group: usize,
}

impl Layout {
    pub fn numels(&self) -> Vec<usize> {
        self.tensors.iter().map(|t| t.numel).collect()
    }

    pub fn views(&self) -> Vec<MatrixView> {
        self.tensors.iter().map(|t| t.view).collect()
    }

    /// The tensors of `group`, in order.
    pub fn tensors_of(&self, group: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.tensors.len()).filter(move |&t| self.tensors[t].group == group)
    }
}

/// One part of a step: tensors of one group at one step number (a group's
/// tensors are all one part, unless some skipped steps the others took).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupStep {
    pub group: usize,
    /// The step number of its tensors, 1 on their first step.
    pub step: u64,
    /// The group's hyperparameter values at that step, in the rule's order.
    pub hypers: Vec<f64>,
}

/// What one step runs: its parts, the part each tensor steps in (`None`:
/// the tensor does not step: its group is frozen, or it has no gradient),
/// and whether group-wide reductions combine over every part
/// ([`crate::GroupReductions::AcrossGroups`]) or each part's own tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRequest {
    pub members: Vec<GroupStep>,
    /// One entry per tensor of the layout.
    pub member_of: Vec<Option<usize>>,
    pub across_groups: bool,
}

impl StepRequest {
    /// The tensors that step in part `member`, in order.
    pub fn tensors_of(&self, member: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.member_of.len()).filter(move |&t| self.member_of[t] == Some(member))
    }

    /// Whether some group is split into parts of different step numbers.
    pub fn splits_a_group(&self) -> bool {
        let members = &self.members;
        (0..members.len()).any(|k| members[..k].iter().any(|m| m.group == members[k].group))
    }
}

/// Parameter tensors in host memory, mutable: f32 or bf16.
pub enum HostTensorsMut<'a, 'b> {
    F32(&'a mut [&'b mut [f32]]),
    Bf16(&'a mut [&'b mut [bf16]]),
}

/// Gradient (or parameter) tensors in host memory: f32 or bf16.
#[derive(Clone, Copy)]
pub enum HostTensors<'a, 'b> {
    F32(&'a [&'b [f32]]),
    Bf16(&'a [&'b [bf16]]),
}

impl HostTensors<'_, '_> {
    /// Tensor `t` in its own element type (bf16 as bit patterns).
    pub fn stored(&self, t: usize) -> Stored {
        match self {
            HostTensors::F32(x) => Stored::F32(x[t].to_vec()),
            HostTensors::Bf16(x) => Stored::Bf16(x[t].iter().map(|v| v.to_bits()).collect()),
        }
    }

    /// Tensor `t` widened to f32.
    pub fn widened(&self, t: usize) -> Vec<f32> {
        match self {
            HostTensors::F32(x) => x[t].to_vec(),
            HostTensors::Bf16(x) => x[t].iter().map(|v| v.to_f32()).collect(),
        }
    }

    /// Tensor `t`'s element 0 as kernels take buffer pointers (bf16 bit
    /// patterns cast to `*mut f32`; kernels never store to gradients).
    pub(crate) fn pointer(&self, t: usize) -> *mut f32 {
        match self {
            HostTensors::F32(x) => x[t].as_ptr().cast_mut(),
            HostTensors::Bf16(x) => x[t].as_ptr().cast::<f32>().cast_mut(),
        }
    }
}

impl HostTensorsMut<'_, '_> {
    /// Tensor `t` in its own element type (bf16 as bit patterns), as the
    /// device executor copies it to the device.
    #[cfg(feature = "cubecl")]
    pub(crate) fn stored(&self, t: usize) -> Stored {
        match self {
            HostTensorsMut::F32(x) => Stored::F32(x[t].to_vec()),
            HostTensorsMut::Bf16(x) => Stored::Bf16(x[t].iter().map(|v| v.to_bits()).collect()),
        }
    }

    pub(crate) fn pointer(&mut self, t: usize) -> *mut f32 {
        match self {
            HostTensorsMut::F32(x) => x[t].as_mut_ptr(),
            HostTensorsMut::Bf16(x) => x[t].as_mut_ptr().cast::<f32>(),
        }
    }

    pub(crate) fn widened(&self, t: usize) -> Vec<f32> {
        match self {
            HostTensorsMut::F32(x) => x[t].to_vec(),
            HostTensorsMut::Bf16(x) => x[t].iter().map(|v| v.to_f32()).collect(),
        }
    }

    /// Writes `values` into tensor `t`, rounding to nearest even for bf16.
    pub(crate) fn write(&mut self, t: usize, values: impl Iterator<Item = f32>) {
        match self {
            HostTensorsMut::F32(x) => x[t].iter_mut().zip(values).for_each(|(p, v)| *p = v),
            HostTensorsMut::Bf16(x) => x[t]
                .iter_mut()
                .zip(values)
                .for_each(|(p, v)| *p = bf16::from_f32(v)),
        }
    }
}

/// Where a step's parameters are.
pub enum Params<'a, 'b> {
    /// The caller's, updated in place.
    Borrowed(HostTensorsMut<'a, 'b>),
    /// The executor's own, uploaded before ([`Executor::upload`]).
    Owned,
}

/// The elements of one tensor's per-element state (or parameters) in the
/// type an executor stores them in.
#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    F32(Vec<f32>),
    /// bf16 bit patterns.
    Bf16(Vec<u16>),
    /// The f64 interpreter's.
    F64(Vec<f64>),
}

impl Stored {
    pub fn len(&self) -> usize {
        match self {
            Stored::F32(x) => x.len(),
            Stored::Bf16(x) => x.len(),
            Stored::F64(x) => x.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values rounded (f64) or widened (bf16) to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Stored::F32(x) => x.clone(),
            Stored::Bf16(x) => x
                .iter()
                .map(|&b| optc_compiler::kernel::bf16::widen(b))
                .collect(),
            Stored::F64(x) => x.iter().map(|&v| v as f32).collect(),
        }
    }

    /// The values widened to f64.
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Stored::F64(x) => x.clone(),
            other => other.to_f32().into_iter().map(f64::from).collect(),
        }
    }

    /// The name of the element type, as checkpoints record it.
    pub fn dtype(&self) -> &'static str {
        match self {
            Stored::F32(_) => "f32",
            Stored::Bf16(_) => "bf16",
            Stored::F64(_) => "f64",
        }
    }
}

/// One state slot's values for every tensor of the layout: per-element,
/// per-row and per-column slots as one [`Stored`] per tensor (of the
/// tensor's elements, rows or columns), tensor slots one f64 per tensor,
/// group slots one f64 per group. Tensors of groups that have not stepped
/// hold whatever the executor has (their first step initialises them).
#[derive(Clone, Debug, PartialEq)]
pub enum SlotValues {
    Vectors(Vec<Stored>),
    Tensor(Vec<f64>),
    Group(Vec<f64>),
}

/// The memory traffic of one step: its passes over the elements and the
/// bytes per element their loads and stores move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traffic {
    pub passes: usize,
    pub bytes_per_element: usize,
}

/// What runs the steps of one optimizer. Every method that fails leaves the
/// executor as it was. The optimizer owns the [`Layout`] and passes it to
/// every call; it has checked the tensors against it (counts, lengths,
/// element type) before calling.
pub trait Executor: Send {
    /// The backend it runs, as `--backend` names it.
    fn backend(&self) -> &str;

    /// Allocates state for the tensors of `layout` (once, before anything
    /// else is called with tensors).
    fn bind(&mut self, layout: &Layout) -> Result<(), Error>;

    /// Runs one step of every group in `request`. Groups at step 1 start
    /// from the rule's state initialisers.
    fn step(
        &mut self,
        layout: &Layout,
        request: &StepRequest,
        params: Params<'_, '_>,
        grads: HostTensors<'_, '_>,
    ) -> Result<(), Error>;

    /// Takes copies of `params` as the executor's own, for [`Params::Owned`]
    /// steps.
    fn upload(&mut self, layout: &Layout, params: HostTensors<'_, '_>) -> Result<(), Error>;

    /// Takes copies of `grads` as the gradients of
    /// [`Executor::step_resident`] (executors with device memory).
    fn upload_gradients(
        &mut self,
        layout: &Layout,
        grads: HostTensors<'_, '_>,
    ) -> Result<(), Error> {
        let _ = (layout, grads);
        Err(Error::Unsupported(format!(
            "the `{}` backend reads gradients from host memory at every step; gradients held \
             in device memory need a device backend",
            self.backend()
        )))
    }

    /// [`Executor::step`] of the executor's own parameters and gradients.
    fn step_resident(&mut self, layout: &Layout, request: &StepRequest) -> Result<(), Error> {
        let _ = (layout, request);
        Err(Error::Unsupported(format!(
            "the `{}` backend holds no gradients",
            self.backend()
        )))
    }

    /// The executor's own parameters (after [`Executor::upload`]).
    fn download(&self, layout: &Layout) -> Result<Vec<Stored>, Error>;

    /// Every state slot, in the rule's order.
    fn state(&self, layout: &Layout) -> Vec<SlotValues>;

    /// The element type per-element state is stored in ([`Stored::dtype`]).
    fn state_dtype(&self) -> &'static str;

    /// Replaces every state slot (as [`Executor::state`] returns them; the
    /// optimizer checked the shapes). Elements of another type than the
    /// executor stores are converted exactly or refused.
    fn set_state(&mut self, layout: &Layout, state: &[SlotValues]) -> Result<(), Error>;

    /// Steps shards of tensors from now on ([`crate::shard`]).
    fn shard(&mut self, sharding: crate::shard::Sharding) -> Result<(), Error> {
        let _ = sharding;
        Err(Error::Unsupported(format!(
            "the `{}` backend runs no pass plan; sharded steps need a kernel backend",
            self.backend()
        )))
    }

    /// The pass plan of steps after the first, for executors that run one.
    fn plan(&self) -> Option<&optc_compiler::plan::Plan> {
        None
    }

    /// What a step after the first moves, for executors that know it.
    fn traffic(&self) -> Option<Traffic> {
        self.plan().map(|plan| Traffic {
            passes: plan.passes.len(),
            bytes_per_element: plan
                .passes
                .iter()
                .map(|p| p.kernel.bytes_per_element())
                .sum(),
        })
    }

    /// Runs the matrix products of a later step alone (the same products
    /// of the same shapes, on scratch memory); returns how many it ran
    /// (none for executors without products).
    fn run_products(&mut self, layout: &Layout) -> Result<usize, Error> {
        let _ = layout;
        Ok(0)
    }

    /// Runs the data-movement floor of a later step (kernels that move the
    /// same bytes and do no arithmetic) over the same memory as a step.
    fn run_floor(
        &mut self,
        layout: &Layout,
        params: Params<'_, '_>,
        grads: HostTensors<'_, '_>,
    ) -> Result<(), Error> {
        let _ = (layout, params, grads);
        Err(Error::Unsupported(format!(
            "the `{}` backend runs no kernels, so it has no data-movement floor",
            self.backend()
        )))
    }
}
