//! GPU backend: optc kernels (the kernel IR of [`optc_compiler::kernel`]) as
//! cubecl kernels, on any device cubecl's wgpu runtime reaches: Vulkan
//! (SPIR-V, so accumulators can be f64), Metal, DX12, and on machines
//! without a GPU Mesa's lavapipe, which runs Vulkan on the CPU.
//!
//! Rules are only known at run time, so this backend does not write a
//! kernel per rule: [`Program::lower`] turns a kernel into a serialisable
//! op list, and one generic `#[cube]` kernel ([`kernels::pass`]) takes that
//! list as a comptime argument and expands it op by op. cubecl keys
//! compiled pipelines by their comptime arguments, so each distinct program
//! compiles on its first launch and is reused after; [`Gpu::program`]
//! caches the lowering by the kernel's text.
//!
//! A [`Gpu`] owns the device's client; the runtime's device executor keeps
//! parameters, gradients and state in [`DeviceBuffer`]s (one flat buffer per
//! slot, every tensor at an offset) and launches one [`Gpu::pass`] per pass
//! over all tensors of a step, described by a block table
//! ([`kernels::BLOCK`] elements a block).
//!
//! # Semantics
//!
//! The kernel IR's operations, in f32, with the device's own arithmetic:
//! Vulkan lets `sqrt` and division be within 3 and 2.5 ulp, transcendentals
//! within a few ulp (lavapipe's are LLVM's), and may flush subnormals, so
//! results are within a tolerance of the interpreter, not bit-exact
//! (the conformance tests state it per op class). `min`/`max` ignore a NaN
//! operand and return the first operand on ties, `pow` follows C's `powf`
//! at a zero or negative base, bf16 stores round to nearest even or
//! stochastically with the reference's counter-based hash, bit for bit on
//! the same f32 values. Accumulators combine each unit's elements in order
//! in f64, then a block's units in order, whatever the launch geometry:
//! results are identical from run to run.

pub mod kernels;
pub mod program;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use cubecl::prelude::*;
use cubecl::server::Handle;
use cubecl::wgpu::{AutoGraphicsApi, RuntimeOptions, WgpuDevice};
use optc_compiler::kernel::Kernel;

pub use kernels::{BLOCK, BLOCK_WORDS, UNITS};
pub use program::{Binding, DeviceOp, Program};

/// Most cubes a launch spreads along one grid dimension (Vulkan guarantees
/// 65,535).
const GRID_WIDTH: usize = 32_768;

/// The device, opened once per process (cubecl registers one client per
/// device), and the lowered programs.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<Inner>,
}

struct Inner {
    client: cubecl::client::Client,
    adapter: String,
    programs: Mutex<HashMap<String, Arc<Program>>>,
    /// Passes launched so far (each one launch, plus one to fold its
    /// accumulators).
    passes: AtomicUsize,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu({})", self.inner.adapter)
    }
}

/// Memory on the device: `len` bytes.
#[derive(Clone)]
pub struct DeviceBuffer {
    handle: Handle,
    len: usize,
}

impl DeviceBuffer {
    pub fn bytes(&self) -> usize {
        self.len
    }
}

impl Gpu {
    /// The default adapter (a discrete GPU where there is one), or why none
    /// opens: no Vulkan loader or driver, no adapter.
    pub fn open() -> Result<Gpu, String> {
        static OPENED: OnceLock<Result<Gpu, String>> = OnceLock::new();
        OPENED.get_or_init(open_default).clone()
    }

    /// The adapter's name and driver, as the device reports them.
    pub fn adapter(&self) -> &str {
        &self.inner.adapter
    }

    /// `kernel` lowered, from the cache when the same kernel text was
    /// lowered before.
    pub fn program(&self, kernel: &Kernel) -> Result<Arc<Program>, String> {
        let key = format!("{kernel:?}");
        let mut programs = self
            .inner
            .programs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(program) = programs.get(&key) {
            return Ok(program.clone());
        }
        let program = Arc::new(Program::lower(kernel)?);
        programs.insert(key, program.clone());
        Ok(program)
    }

    /// Programs lowered so far.
    pub fn cached_programs(&self) -> usize {
        self.inner
            .programs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Passes launched so far, by every handle of this device.
    pub fn passes(&self) -> usize {
        self.inner.passes.load(Ordering::Relaxed)
    }

    fn client(&self) -> &cubecl::client::Client {
        &self.inner.client
    }

    /// A buffer holding `bytes`, on the device once [`Gpu::finish`] returns.
    pub fn upload(&self, bytes: &[u8]) -> DeviceBuffer {
        // A zero-sized binding is invalid; keep one word.
        let padded;
        let bytes = if bytes.len() < 4 {
            padded = [0u8; 4];
            &padded[..]
        } else {
            bytes
        };
        DeviceBuffer {
            handle: self.client().create_from_slice(bytes),
            len: bytes.len(),
        }
    }

    /// Overwrites `bytes.len()` bytes of `buffer` from byte `offset` (a
    /// multiple of 4, in bounds).
    pub fn write(&self, buffer: &DeviceBuffer, offset: usize, bytes: &[u8]) -> Result<(), String> {
        if !offset.is_multiple_of(4)
            || !bytes.len().is_multiple_of(4)
            || offset + bytes.len() > buffer.len
        {
            return Err(format!(
                "a write of {} bytes at {offset} does not fit a device buffer of {} bytes",
                bytes.len(),
                buffer.len
            ));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let end = (buffer.len - offset - bytes.len()) as u64;
        let handle = buffer
            .handle
            .clone()
            .offset_start(offset as u64)
            .offset_end(end);
        self.client().write(
            &handle,
            cubecl::bytes::Bytes::from_bytes_vec(bytes.to_vec()),
        );
        Ok(())
    }

    /// The bytes of `buffer`, after every launch before.
    pub fn read(&self, buffer: &DeviceBuffer) -> Result<Vec<u8>, String> {
        let bytes = self
            .client()
            .read_one(buffer.handle.clone())
            .map_err(device_error)?;
        Ok(bytes[..buffer.len].to_vec())
    }

    /// Waits for every launch and write so far; fails with the first error
    /// the device reported.
    pub fn finish(&self) -> Result<(), String> {
        cubecl::future::block_on(self.client().sync()).map_err(device_error)
    }

    /// Runs `program` over the blocks of `table` ([`BLOCK_WORDS`] words a
    /// block, see [`kernels`]); `f32s` and `words` are the program's f32
    /// and bf16 buffers in binding order, `scalars` its scalar arguments
    /// per launched tensor. Returns one partial per block and accumulator.
    pub fn pass(
        &self,
        program: &Program,
        f32s: &[&DeviceBuffer],
        words: &[&DeviceBuffer],
        table: &[u32],
        scalars: &[f32],
    ) -> Result<Vec<f64>, String> {
        let blocks = table.len() / BLOCK_WORDS;
        if blocks == 0 {
            return Ok(Vec::new());
        }
        let accumulators = program.accumulators.len();
        let table = self.upload(u32::as_bytes(table));
        let scalars = self.upload(f32::as_bytes(if scalars.is_empty() {
            &[0.0]
        } else {
            scalars
        }));
        let partials = self.upload(&vec![0u8; 8 * (blocks * accumulators * UNITS).max(1)]);
        let mut f32_args = SequenceArg::new();
        for buffer in f32s {
            f32_args.push(buffer_arg(buffer, 4));
        }
        let mut word_args = SequenceArg::new();
        for buffer in words {
            word_args.push(buffer_arg(buffer, 4));
        }
        self.inner.passes.fetch_add(1, Ordering::Relaxed);
        kernels::pass::launch(
            self.client(),
            grid(blocks),
            CubeDim::new_1d(UNITS as u32),
            f32_args,
            word_args,
            buffer_arg(&table, 4),
            buffer_arg(&scalars, 4),
            buffer_arg(&partials, 8),
            program.clone(),
        );
        if accumulators == 0 {
            return Ok(Vec::new());
        }
        let count = blocks * accumulators;
        let folded = self.upload(&vec![0u8; 8 * count]);
        kernels::fold::launch(
            self.client(),
            grid(count.div_ceil(UNITS)),
            CubeDim::new_1d(UNITS as u32),
            buffer_arg(&partials, 8),
            buffer_arg(&folded, 8),
            count as u32,
            program.accumulators.iter().map(|&(op, _)| op).collect(),
        );
        let bytes = self.read(&folded)?;
        Ok(f64::from_bytes(&bytes).to_vec())
    }

    /// The data-movement floor of a pass: `loads` read and `stores`
    /// written, `len` f32 elements each.
    pub fn copy(&self, loads: &[&DeviceBuffer], stores: &[&DeviceBuffer], len: usize) {
        if len == 0 {
            return;
        }
        let mut load_args = SequenceArg::new();
        for buffer in loads {
            load_args.push(buffer_arg(buffer, 4));
        }
        let mut store_args = SequenceArg::new();
        for buffer in stores {
            store_args.push(buffer_arg(buffer, 4));
        }
        kernels::copy::launch(
            self.client(),
            grid(len.div_ceil(UNITS)),
            CubeDim::new_1d(UNITS as u32),
            load_args,
            store_args,
            len as u32,
        );
    }
}

/// A buffer as a kernel binding of elements of `size` bytes.
fn buffer_arg(buffer: &DeviceBuffer, size: usize) -> BufferArg {
    // SAFETY: the handle holds `len` bytes, so `len / size` elements.
    unsafe { BufferArg::from_raw_parts(buffer.handle.clone(), buffer.len / size) }
}

/// Cubes for `cubes` blocks: rows of at most [`GRID_WIDTH`].
fn grid(cubes: usize) -> CubeCount {
    let width = cubes.min(GRID_WIDTH);
    CubeCount::Static(width as u32, cubes.div_ceil(width) as u32, 1)
}

fn device_error(error: impl fmt::Display) -> String {
    format!("the GPU reported an error: {error}")
}

/// What to do when no adapter the backend can use opens.
const DRIVER_HINT: &str = "install a Vulkan driver (on Debian, `apt-get install \
                           mesa-vulkan-drivers libvulkan1` gives lavapipe, which runs Vulkan on the CPU)";

fn open_default() -> Result<Gpu, String> {
    let device = WgpuDevice::default();
    let options = RuntimeOptions::try_default().map_err(|e| e.to_string())?;
    let setup = cubecl::wgpu::try_init_setup::<AutoGraphicsApi>(&device, options)
        .map_err(|e| format!("no GPU adapter ({e}); {DRIVER_HINT}"))?;
    let info = setup.adapter.get_info();
    let adapter = format!("{} ({}, {:?})", info.name, info.driver_info, info.backend);
    if !setup
        .adapter
        .features()
        .contains(cubecl::wgpu::wgpu::Features::SHADER_F64)
    {
        return Err(format!(
            "the GPU adapter {adapter} has no 64-bit floats, in which the GPU backend \
             accumulates reductions; {DRIVER_HINT}"
        ));
    }
    let client = cubecl::Device::Wgpu(device).client();
    Ok(Gpu {
        inner: Arc::new(Inner {
            client,
            adapter,
            programs: Mutex::new(HashMap::new()),
            passes: AtomicUsize::new(0),
        }),
    })
}
