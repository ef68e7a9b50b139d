//! The device executor (`--backend cubecl`): a rule's pass plan as GPU
//! kernels (`optc_cubecl`), with parameters (once uploaded), gradients and
//! per-element state in device memory. Every slot is one flat device buffer
//! holding all tensors of the layout, each at an offset aligned to
//! [`ALIGN`] elements; a pass is one launch over every tensor of the step,
//! described by a block table (tensor, flat start, start within the
//! tensor, length), so many small tensors never mean many launches.
//!
//! The host side is [`PlanState`], as for the host executor: hyperparameter
//! arithmetic and bias corrections in f64 per step, reductions combined
//! from the device's per-block partials in block order, then tensor order,
//! tensor and group state on the host. Hyperparameter changes are scalar
//! arguments, never recompiles.
//!
//! Parameters the caller keeps in host memory ([`Params::Borrowed`]) are
//! copied to the device and back around each step; a training loop that
//! uploads them once ([`Executor::upload`]) moves only the gradients.

use std::sync::Arc;

use optc_compiler::interpret::Scalars;
use optc_compiler::ir::Rule;
use optc_compiler::kernel::Storage;
use optc_compiler::plan::Plan;
use optc_cubecl::{Binding, DeviceBuffer, Gpu, Program, BLOCK, BLOCK_WORDS};

use super::plan::{Launch, Partials, Phase, PlanState};
use super::{Executor, HostTensors, Layout, Params, SlotValues, StepRequest, Stored};
use crate::precision::{self, Precision};
use crate::Error;

/// Tensors start at multiples of this many elements in the flat buffers
/// (whole bf16 words, and blocks that start on a 256-byte boundary).
pub const ALIGN: usize = 64;

/// What a launch reads: the device, where each tensor starts, the state.
struct Memory<'a> {
    gpu: &'a Gpu,
    offsets: &'a [usize],
    state: &'a [DeviceBuffer],
}

pub struct DeviceExecutor {
    gpu: Gpu,
    plans: PlanState,
    first: Vec<Arc<Program>>,
    steady: Vec<Arc<Program>>,
    precision: Precision,
    /// Each tensor's first element in the flat buffers, and their length.
    offsets: Vec<usize>,
    total: usize,
    /// Per-element state: one flat buffer per slot, in buffer order.
    state: Vec<DeviceBuffer>,
    gradients: Option<DeviceBuffer>,
    /// Parameters the caller uploaded.
    params: Option<DeviceBuffer>,
}

impl DeviceExecutor {
    /// Plans `rule` and lowers both plans' kernels for `gpu`.
    pub fn new(
        rule: Arc<Rule>,
        gpu: Gpu,
        precision: Precision,
        scalars: Scalars,
    ) -> Result<DeviceExecutor, Error> {
        let plans = PlanState::new(rule, precision, scalars);
        let lower = |plan: &Plan| -> Result<Vec<Arc<Program>>, Error> {
            plan.passes
                .iter()
                .map(|pass| {
                    gpu.program(&pass.kernel).map_err(|why| {
                        Error::Backend(format!("the `cubecl` backend cannot lower a kernel: {why}"))
                    })
                })
                .collect()
        };
        let first = lower(plans.plan(Phase::First))?;
        let steady = lower(plans.plan(Phase::Steady))?;
        Ok(DeviceExecutor {
            gpu,
            plans,
            first,
            steady,
            precision,
            offsets: Vec::new(),
            total: 0,
            state: Vec::new(),
            gradients: None,
            params: None,
        })
    }

    /// The flat image of `tensors` (one [`Stored`] per tensor of the layout)
    /// in `storage`, zero between tensors.
    fn image(&self, storage: Storage, tensors: &[Stored]) -> Result<Vec<u8>, Error> {
        let mut bytes = vec![0u8; self.total * storage.bytes()];
        for (tensor, &offset) in tensors.iter().zip(&self.offsets) {
            let at = offset * storage.bytes();
            let image = bytes_of(&precision::converted(storage, tensor)?);
            bytes[at..at + image.len()].copy_from_slice(&image);
        }
        Ok(bytes)
    }

    /// Tensor `t`'s elements of a flat image in `storage`.
    fn tensor_of(&self, storage: Storage, image: &[u8], t: usize, numel: usize) -> Stored {
        let at = self.offsets[t] * storage.bytes();
        match storage {
            Storage::F32 => Stored::F32(
                image[at..at + 4 * numel]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Storage::Bf16 => Stored::Bf16(
                image[at..at + 2 * numel]
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
        }
    }

    /// Reads a flat buffer back as one [`Stored`] per tensor.
    fn download_tensors(
        &self,
        layout: &Layout,
        storage: Storage,
        buffer: &DeviceBuffer,
    ) -> Result<Vec<Stored>, Error> {
        let image = self.gpu.read(buffer).map_err(Error::Backend)?;
        Ok((0..layout.tensors.len())
            .map(|t| self.tensor_of(storage, &image, t, layout.tensors[t].numel))
            .collect())
    }

    /// One step of `request` on the gradients on the device; parameters
    /// the caller holds are copied there and back.
    fn run_step(
        &mut self,
        layout: &Layout,
        request: &StepRequest,
        mut params: Params<'_, '_>,
    ) -> Result<(), Error> {
        let gradients = self
            .gradients
            .clone()
            .ok_or_else(|| Error::Internal("no gradients were uploaded".into()))?;
        let params_on_device = self.step_params(layout, &params)?;
        // A group's first step reads constant-initialised state from buffers
        // filled with the constant.
        for &(slot, value) in &self.plans.first_step_fills() {
            for (member, part) in request.members.iter().enumerate() {
                if part.step != 1 {
                    continue;
                }
                for tensor in request.tensors_of(member) {
                    let numel = layout.tensors[tensor].numel;
                    let fill = Stored::F32(vec![value; numel]);
                    let bytes = bytes_of(&precision::converted(self.precision.state, &fill)?);
                    let at = self.offsets[tensor] * self.precision.state.bytes();
                    self.gpu
                        .write(&self.state[slot], at, &pad_to_words(bytes))
                        .map_err(Error::Backend)?;
                }
            }
        }
        self.gpu.finish().map_err(Error::Backend)?;
        let host_before: Vec<SlotValues> = self
            .plans
            .host_state()
            .into_iter()
            .map(|slot| slot.unwrap_or(SlotValues::Vectors(Vec::new())))
            .collect();
        let memory = Memory {
            gpu: &self.gpu,
            offsets: &self.offsets,
            state: &self.state,
        };
        let (first, steady) = (&self.first, &self.steady);
        let mut failure = None;
        let result = self.plans.step(layout, request, &mut |pass: &Launch| {
            let programs = match pass.phase {
                Phase::First => first,
                Phase::Steady => steady,
            };
            let program = &programs[pass.pass];
            launch(
                &memory,
                program,
                layout,
                pass,
                &params_on_device,
                &gradients,
            )
            .unwrap_or_else(|why| {
                failure.get_or_insert(why);
                vec![Vec::new(); pass.tensors.len()]
            })
        });
        if let Some(why) = failure {
            self.plans.set_host_state(&host_before);
            return Err(Error::Backend(format!(
                "{why}; the step stopped partway, so per-element state on the device may be \
                 partly updated (reload a checkpoint)"
            )));
        }
        result?;
        if let Params::Borrowed(host) = &mut params {
            let stepped =
                self.download_tensors(layout, self.precision.params, &params_on_device)?;
            for (t, values) in stepped.iter().enumerate() {
                host.write(t, values.to_f32().into_iter());
            }
        } else {
            self.gpu.finish().map_err(Error::Backend)?;
        }
        Ok(())
    }

    /// The device buffer parameters are stepped in: the uploaded ones, or
    /// a copy of the caller's.
    fn step_params(&self, layout: &Layout, params: &Params<'_, '_>) -> Result<DeviceBuffer, Error> {
        match params {
            Params::Owned => self
                .params
                .clone()
                .ok_or_else(|| Error::Internal("no parameters were uploaded".into())),
            Params::Borrowed(host) => {
                let tensors: Vec<Stored> =
                    (0..layout.tensors.len()).map(|t| host.stored(t)).collect();
                Ok(self
                    .gpu
                    .upload(&self.image(self.precision.params, &tensors)?))
            }
        }
    }
}

impl Executor for DeviceExecutor {
    fn backend(&self) -> &str {
        "cubecl"
    }

    fn bind(&mut self, layout: &Layout) -> Result<(), Error> {
        self.offsets.clear();
        let mut total = 0;
        for tensor in &layout.tensors {
            self.offsets.push(total);
            total += tensor.numel.div_ceil(ALIGN) * ALIGN;
        }
        self.total = total;
        let slots = self
            .plans
            .plan(Phase::Steady)
            .state_buffers
            .iter()
            .flatten()
            .count();
        let bytes = vec![0u8; total * self.precision.state.bytes()];
        self.state = (0..slots).map(|_| self.gpu.upload(&bytes)).collect();
        self.gradients = None;
        self.plans.bind(layout);
        self.gpu.finish().map_err(Error::Backend)
    }

    fn step(
        &mut self,
        layout: &Layout,
        request: &StepRequest,
        params: Params<'_, '_>,
        grads: HostTensors<'_, '_>,
    ) -> Result<(), Error> {
        self.plans.check(request)?;
        self.upload_gradients(layout, grads)?;
        self.run_step(layout, request, params)
    }

    fn upload_gradients(
        &mut self,
        layout: &Layout,
        grads: HostTensors<'_, '_>,
    ) -> Result<(), Error> {
        let tensors: Vec<Stored> = (0..layout.tensors.len()).map(|t| grads.stored(t)).collect();
        let image = self.image(self.precision.params, &tensors)?;
        match &self.gradients {
            Some(buffer) if buffer.bytes() == image.len().max(4) => {
                self.gpu.write(buffer, 0, &image).map_err(Error::Backend)?
            }
            _ => self.gradients = Some(self.gpu.upload(&image)),
        }
        Ok(())
    }

    fn step_resident(&mut self, layout: &Layout, request: &StepRequest) -> Result<(), Error> {
        self.plans.check(request)?;
        self.run_step(layout, request, Params::Owned)
    }
    fn upload(&mut self, layout: &Layout, params: HostTensors<'_, '_>) -> Result<(), Error> {
        let tensors: Vec<Stored> = (0..layout.tensors.len())
            .map(|t| params.stored(t))
            .collect();
        let buffer = self
            .gpu
            .upload(&self.image(self.precision.params, &tensors)?);
        self.gpu.finish().map_err(Error::Backend)?;
        self.params = Some(buffer);
        Ok(())
    }

    fn download(&self, layout: &Layout) -> Result<Vec<Stored>, Error> {
        let buffer = self
            .params
            .as_ref()
            .ok_or_else(|| Error::Internal("no parameters were uploaded".into()))?;
        self.download_tensors(layout, self.precision.params, buffer)
    }

    fn state(&self, layout: &Layout) -> Vec<SlotValues> {
        // The trait's state is infallible: a slot the device fails to read
        // back comes out empty (a device lost after the last step).
        self.plans.slot_values(|slot| {
            self.state
                .get(slot)
                .and_then(|b| self.download_tensors(layout, self.precision.state, b).ok())
                .unwrap_or_default()
        })
    }

    fn state_dtype(&self) -> &'static str {
        self.precision.state.name()
    }

    fn set_state(&mut self, _layout: &Layout, state: &[SlotValues]) -> Result<(), Error> {
        let mut buffers = Vec::new();
        for value in state {
            if let SlotValues::Vectors(tensors) = value {
                let image = self.image(self.precision.state, tensors)?;
                buffers.push(self.gpu.upload(&image));
            }
        }
        self.gpu.finish().map_err(Error::Backend)?;
        self.state = buffers;
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
        params: Params<'_, '_>,
        _grads: HostTensors<'_, '_>,
    ) -> Result<(), Error> {
        let params_on_device = self.step_params(layout, &params)?;
        let gradients = self
            .gradients
            .clone()
            .unwrap_or_else(|| params_on_device.clone());
        for pass in &self.plans.plan(Phase::Steady).passes {
            let buffer = |b: u32| -> &DeviceBuffer {
                match b {
                    0 => &params_on_device,
                    1 => &gradients,
                    state => &self.state[state as usize - 2],
                }
            };
            let loads: Vec<&DeviceBuffer> = pass
                .kernel
                .loaded_buffers()
                .into_iter()
                .map(buffer)
                .collect();
            let stores: Vec<&DeviceBuffer> =
                pass.kernel.stores.iter().map(|&(b, _)| buffer(b)).collect();
            // The floor moves whole words: as many as the flat buffers hold.
            let words = loads.iter().chain(&stores).map(|b| b.bytes() / 4).min();
            self.gpu.copy(&loads, &stores, words.unwrap_or(0));
        }
        self.gpu.finish().map_err(Error::Backend)
    }
}

/// Bytes padded with zeros to whole 32-bit words.
fn pad_to_words(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.resize(bytes.len().div_ceil(4) * 4, 0);
    bytes
}

/// One launch of `program` over the tensors of `launch`; partials per
/// tensor per block.
fn launch(
    memory: &Memory,
    program: &Program,
    layout: &Layout,
    launch: &Launch,
    params: &DeviceBuffer,
    gradients: &DeviceBuffer,
) -> Result<Partials, String> {
    let buffer = |b: usize| -> &DeviceBuffer {
        match b {
            0 => params,
            1 => gradients,
            state => &memory.state[state - 2],
        }
    };
    let mut f32s = Vec::new();
    let mut words = Vec::new();
    for (b, binding) in program.buffers.iter().enumerate() {
        match binding {
            Binding::F32(_) => f32s.push(buffer(b)),
            Binding::Bf16(_) => words.push(buffer(b)),
        }
    }
    let mut table = Vec::new();
    let mut blocks_of = Vec::with_capacity(launch.tensors.len());
    for (i, &t) in launch.tensors.iter().enumerate() {
        let numel = layout.tensors[t].numel;
        let blocks = numel.div_ceil(BLOCK);
        blocks_of.push(blocks);
        for block in 0..blocks {
            let start = block * BLOCK;
            let words = [
                i,
                memory.offsets[t] + start,
                start,
                BLOCK.min(numel - start),
            ];
            table.extend(words.iter().map(|&w| w as u32));
        }
    }
    debug_assert_eq!(table.len() % BLOCK_WORDS, 0);
    let scalars: Vec<f32> = launch.scalars.iter().flatten().copied().collect();
    let partials = memory.gpu.pass(program, &f32s, &words, &table, &scalars)?;
    let accumulators = program.accumulators.len();
    let mut by_tensor: Partials = vec![Vec::new(); launch.tensors.len()];
    if accumulators == 0 {
        return Ok(by_tensor);
    }
    let mut blocks = partials.chunks_exact(accumulators);
    for (i, &count) in blocks_of.iter().enumerate() {
        by_tensor[i] = blocks.by_ref().take(count).map(<[f64]>::to_vec).collect();
    }
    Ok(by_tensor)
}

/// Elements in their storage type as little-endian bytes.
fn bytes_of(stored: &Stored) -> Vec<u8> {
    match stored {
        Stored::F32(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Stored::Bf16(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Stored::F64(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}
