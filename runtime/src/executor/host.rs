//! The host executor: a rule's pass plan as compiled kernels over many
//! tensors at once, on a persistent thread pool, updating parameters and
//! state in place. Per-element state lives in one huge-page arena per slot
//! (and so do parameters the caller uploads); parameters the caller owns are
//! used where they are, with no copy.
//!
//! Elements are split into fixed chunks of [`CHUNK`] elements; every chunk
//! accumulates its own partial reductions, which [`PlanState`] combines in
//! chunk order, then tensor order. The chunking never depends on the thread
//! count, so neither do the results.

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use optc_compiler::backend::HostKernel;
use optc_compiler::interpret::Scalars;
use optc_compiler::ir::Rule;
use optc_compiler::kernel::Kernel;
use optc_compiler::plan::{self, Plan};

use super::plan::{Launch, Partials, Phase, PlanState};
use super::{Executor, HostTensors, Layout, Params, SlotValues, StepRequest, Stored};
use crate::backend::Backend;
use crate::pool::Pool;
use crate::precision::{Precision, TypedArena};
use crate::{Error, CHUNK};

/// Compiled kernels of one plan, pass by pass.
type Kernels = Vec<Arc<dyn HostKernel>>;

pub struct HostExecutor {
    backend: Backend,
    plans: PlanState,
    first: Kernels,
    steady: Kernels,
    /// The data-movement floor's kernels, compiled on first use.
    floor: Option<Vec<(Kernel, Arc<dyn HostKernel>)>>,
    pool: Pool,
    precision: Precision,
    /// Per-element state: one arena per slot, in buffer order.
    elem_state: Vec<TypedArena>,
    /// Parameters the caller uploaded.
    params: Option<TypedArena>,
}

impl HostExecutor {
    /// Plans `rule` and compiles both plans' kernels with `backend`.
    pub fn new(
        rule: Arc<Rule>,
        backend: Backend,
        precision: Precision,
        scalars: Scalars,
        threads: usize,
    ) -> Result<HostExecutor, Error> {
        let plans = PlanState::new(rule, precision, scalars);
        let compile = |plan: &Plan| -> Result<Kernels, Error> {
            plan.passes
                .iter()
                .map(|pass| backend.compile(&pass.kernel))
                .collect()
        };
        let first = compile(plans.plan(Phase::First))?;
        let steady = compile(plans.plan(Phase::Steady))?;
        Ok(HostExecutor {
            pool: Pool::new(threads)?,
            backend,
            plans,
            first,
            steady,
            floor: None,
            precision,
            elem_state: Vec::new(),
            params: None,
        })
    }

    /// Buffer pointers of every tensor in the plans' numbering: p, g, then
    /// per-element state slots.
    fn pointers(
        &mut self,
        layout: &Layout,
        params: &mut Params<'_, '_>,
        grads: HostTensors<'_, '_>,
    ) -> Result<PointerTable, Error> {
        let tensors = layout.tensors.len();
        let owned = match (&*params, &mut self.params) {
            (Params::Owned, Some(arena)) => Some(arena.pointers()),
            (Params::Owned, None) => {
                return Err(Error::Internal("no parameters were uploaded".into()))
            }
            (Params::Borrowed(_), _) => None,
        };
        let state: Vec<Vec<*mut f32>> = self
            .elem_state
            .iter_mut()
            .map(TypedArena::pointers)
            .collect();
        let stride = 2 + state.len();
        let mut all = Vec::with_capacity(tensors * stride);
        for t in 0..tensors {
            let p = match (&owned, &mut *params) {
                (Some(owned), _) => owned[t],
                (None, Params::Borrowed(borrowed)) => borrowed.pointer(t),
                (None, Params::Owned) => std::ptr::null_mut(),
            };
            all.extend([SendPtr(p), SendPtr(grads.pointer(t))]);
            all.extend(state.iter().map(|slot| SendPtr(slot[t])));
        }
        Ok(PointerTable { stride, all })
    }
}

impl Executor for HostExecutor {
    fn backend(&self) -> &str {
        self.backend.name()
    }

    fn bind(&mut self, layout: &Layout) -> Result<(), Error> {
        let numels = layout.numels();
        let slots = self
            .plans
            .plan(Phase::Steady)
            .state_buffers
            .iter()
            .flatten()
            .count();
        self.elem_state = (0..slots)
            .map(|slot| TypedArena::zeroed(self.precision.state, &numels, slot))
            .collect::<Result<_, _>>()?;
        self.plans.bind(layout);
        Ok(())
    }

    fn step(
        &mut self,
        layout: &Layout,
        request: &StepRequest,
        mut params: Params<'_, '_>,
        grads: HostTensors<'_, '_>,
    ) -> Result<(), Error> {
        self.plans.check(request)?;
        for kernel in self.first.iter().chain(&self.steady) {
            kernel.settle();
        }
        let pointers = self.pointers(layout, &mut params, grads)?;
        // A group's first step reads constant-initialised state from buffers
        // filled with the constant.
        let fills = self.plans.first_step_fills();
        for (member, part) in request.members.iter().enumerate() {
            if part.step != 1 {
                continue;
            }
            for tensor in request.tensors_of(member) {
                for &(slot, value) in &fills {
                    self.elem_state[slot].fill(tensor, value);
                }
            }
        }
        let identities = [Phase::First, Phase::Steady].map(|phase| {
            let passes = &self.plans.plan(phase).passes;
            passes
                .iter()
                .map(|pass| identity(&pass.kernel))
                .collect::<Vec<_>>()
        });
        let (first, steady, pool) = (&self.first, &self.steady, &self.pool);
        self.plans.step(layout, request, &mut |launch: &Launch| {
            let (kernels, identities) = match launch.phase {
                Phase::First => (first, &identities[0]),
                Phase::Steady => (steady, &identities[1]),
            };
            run_pass(
                &*kernels[launch.pass],
                &identities[launch.pass],
                layout,
                launch.tensors,
                &pointers,
                launch.scalars,
                pool,
            )
        })
    }

    fn upload(&mut self, layout: &Layout, params: HostTensors<'_, '_>) -> Result<(), Error> {
        let tensors = layout.tensors.len();
        let stored: Vec<Stored> = (0..tensors).map(|t| params.stored(t)).collect();
        // Away from the state slots' arenas (staggered 0, 1, ...).
        let stagger = 40;
        self.params = Some(TypedArena::from_stored(
            self.precision.params,
            &stored,
            stagger,
        )?);
        Ok(())
    }

    fn download(&self, layout: &Layout) -> Result<Vec<Stored>, Error> {
        let arena = self
            .params
            .as_ref()
            .ok_or_else(|| Error::Internal("no parameters were uploaded".into()))?;
        Ok((0..layout.tensors.len()).map(|t| arena.stored(t)).collect())
    }

    fn state(&self, layout: &Layout) -> Vec<SlotValues> {
        self.plans.slot_values(|slot| {
            let arena = self.elem_state.get(slot);
            (0..layout.tensors.len())
                .map(|t| arena.map_or(Stored::F32(Vec::new()), |a| a.stored(t)))
                .collect()
        })
    }

    fn state_dtype(&self) -> &'static str {
        self.precision.state.name()
    }

    fn set_state(&mut self, _layout: &Layout, state: &[SlotValues]) -> Result<(), Error> {
        let mut arenas = Vec::new();
        for value in state {
            if let SlotValues::Vectors(tensors) = value {
                let arena = TypedArena::from_stored(self.precision.state, tensors, arenas.len())?;
                arenas.push(arena);
            }
        }
        self.elem_state = arenas;
        self.plans.set_host_state(state);
        Ok(())
    }

    fn shard(&mut self, sharding: crate::shard::Sharding) -> Result<(), Error> {
        self.plans.shard(sharding);
        Ok(())
    }

    fn plan(&self) -> Option<&Plan> {
        Some(self.plans.plan(Phase::Steady))
    }

    fn run_floor(
        &mut self,
        layout: &Layout,
        mut params: Params<'_, '_>,
        grads: HostTensors<'_, '_>,
    ) -> Result<(), Error> {
        if self.floor.is_none() {
            let kernels = self
                .plans
                .plan(Phase::Steady)
                .passes
                .iter()
                .map(|pass| {
                    let kernel = plan::floor(pass);
                    let compiled = self.backend.compile(&kernel)?;
                    Ok((kernel, compiled))
                })
                .collect::<Result<_, Error>>()?;
            self.floor = Some(kernels);
        }
        for (_, compiled) in self.floor.iter().flatten() {
            compiled.settle();
        }
        let pointers = self.pointers(layout, &mut params, grads)?;
        let tensors: Vec<usize> = (0..layout.tensors.len()).collect();
        let no_scalars = vec![Vec::new(); tensors.len()];
        for (kernel, compiled) in self.floor.iter().flatten() {
            let identity = identity(kernel);
            run_pass(
                &**compiled,
                &identity,
                layout,
                &tensors,
                &pointers,
                &no_scalars,
                &self.pool,
            );
        }
        Ok(())
    }
}

/// The starting values of a kernel's accumulators.
fn identity(kernel: &Kernel) -> Vec<f64> {
    kernel
        .accumulators
        .iter()
        .map(|&(op, _)| Kernel::identity(op))
        .collect()
}

/// A buffer pointer that may cross threads: the chunks threads work on are
/// disjoint. Transparent, so a slice of them is a slice of pointers.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct SendPtr(*mut f32);

/// Every tensor's buffer pointers, `stride` per tensor, in one allocation
/// (a step with many small tensors would otherwise allocate per tensor).
struct PointerTable {
    stride: usize,
    all: Vec<SendPtr>,
}

impl PointerTable {
    /// Tensor `t`'s buffer pointers as kernels take them.
    fn of(&self, t: usize) -> &[*mut f32] {
        let pointers = &self.all[t * self.stride..(t + 1) * self.stride];
        // SAFETY: `SendPtr` is a transparent wrapper of `*mut f32`.
        unsafe { std::slice::from_raw_parts(pointers.as_ptr().cast::<*mut f32>(), pointers.len()) }
    }
}
// SAFETY: threads only touch disjoint element ranges of the buffers.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Runs one pass over every chunk of the launched tensors; returns the
/// partial accumulators per tensor, per chunk, in order.
fn run_pass(
    compiled: &dyn HostKernel,
    identity: &[f64],
    layout: &Layout,
    tensors: &[usize],
    pointers: &PointerTable,
    scalars: &[Vec<f32>],
    pool: &Pool,
) -> Partials {
    // Work items in a fixed order: (index among the launched tensors, range).
    let items: Vec<(usize, Range<usize>)> = tensors
        .iter()
        .enumerate()
        .flat_map(|(i, &t)| {
            let n = layout.tensors[t].numel;
            (0..n.div_ceil(CHUNK)).map(move |c| (i, c * CHUNK..((c + 1) * CHUNK).min(n)))
        })
        .collect();
    let mut partials: Vec<Vec<f64>> = vec![identity.to_vec(); items.len()];
    let run_item = |(i, range): &(usize, Range<usize>), partial: &mut Vec<f64>| {
        let buffers = pointers.of(tensors[*i]);
        // SAFETY: the pointers come from live slices (or arenas) of the
        // tensor's length; the plan never stores to g; ranges of different
        // items are disjoint.
        unsafe { compiled.call(buffers, &scalars[*i], partial, range.clone()) };
    };
    let total: usize = tensors.iter().map(|&t| layout.tensors[t].numel).sum();
    let threads = pool.threads();
    if threads <= 1 || total < 2 * CHUNK {
        for (item, partial) in items.iter().zip(partials.iter_mut()) {
            run_item(item, partial);
        }
    } else {
        // Contiguous runs of items with about equal numbers of elements per thread.
        let share = total.div_ceil(threads);
        let mut bounds = vec![0];
        let mut acc = 0;
        for (index, (_, range)) in items.iter().enumerate() {
            acc += range.len();
            if acc >= share * bounds.len() && bounds.len() < threads {
                bounds.push(index + 1);
            }
        }
        bounds.push(items.len());
        bounds.dedup();
        let mut shares = Vec::new();
        let mut rest: &mut [Vec<f64>] = &mut partials;
        for window in bounds.windows(2) {
            let (mine, tail) = rest.split_at_mut(window[1] - window[0]);
            rest = tail;
            shares.push(Mutex::new((&items[window[0]..window[1]], mine)));
        }
        pool.run(shares.len(), &|share| {
            let mut guard = shares[share].lock().unwrap_or_else(PoisonError::into_inner);
            let (items, mine) = &mut *guard;
            for (item, partial) in items.iter().zip(mine.iter_mut()) {
                run_item(item, partial);
            }
        });
    }
    let mut by_tensor: Partials = vec![Vec::new(); tensors.len()];
    if identity.is_empty() {
        // Nothing accumulated: no partials to hand back.
        return by_tensor;
    }
    for ((i, _), partial) in items.iter().zip(partials) {
        by_tensor[*i].push(partial);
    }
    by_tensor
}
