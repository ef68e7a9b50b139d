//! Storage precision of an optimizer: parameters, gradients and per-element
//! state in f32 or bf16 (computation is always f32; see
//! `optc_compiler::kernel` for the rounding of bf16 stores), and the arenas
//! that hold either.

use half::bf16;
use optc_compiler::kernel::{bf16 as rounding, Storage};

use crate::buffer::Arena;
use crate::executor::{HostTensors, HostTensorsMut, Stored};
use crate::Error;

/// How an [`crate::Optimizer`] stores its numbers (kernel backends only; the
/// interpreter stores f32 or f64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Precision {
    /// Parameters and gradients (the element type `step` takes).
    pub params: Storage,
    /// Per-element state.
    pub state: Storage,
    /// bf16 stores round stochastically instead of to nearest even: every
    /// element gets its own random bits from `seed`, the step, the tensor and
    /// the element index, so results never depend on the thread count and a
    /// resumed run repeats an uninterrupted one exactly.
    pub stochastic_rounding: bool,
    pub seed: u32,
}

impl Default for Precision {
    /// Everything in f32.
    fn default() -> Precision {
        Precision {
            params: Storage::F32,
            state: Storage::F32,
            stochastic_rounding: false,
            seed: 0,
        }
    }
}

impl Precision {
    /// The 32-bit seed of stochastic rounding for one tensor on one step.
    pub(crate) fn step_seed(&self, step: u64, tensor: usize) -> u32 {
        let step = rounding::mix32(self.seed ^ rounding::mix32(step as u32));
        rounding::mix32(step ^ rounding::mix32((tensor as u32).wrapping_add(0x6A09_E667)))
    }
}

impl Precision {
    /// Parameters, gradients and state all in `storage`, rounded to nearest even.
    pub fn everywhere(storage: Storage) -> Precision {
        Precision {
            params: storage,
            state: storage,
            ..Precision::default()
        }
    }
}

/// Element types of parameters and gradients: `f32` or `half::bf16`.
pub trait Element: crate::buffer::Word {
    const STORAGE: Storage;
    fn to_f32(self) -> f32;
    /// Tensors of this type, as executors take them.
    fn tensors<'a, 'b>(tensors: &'a [&'b [Self]]) -> HostTensors<'a, 'b>;
    fn tensors_mut<'a, 'b>(tensors: &'a mut [&'b mut [Self]]) -> HostTensorsMut<'a, 'b>;
    /// The element nearest `stored` (already of this type where the
    /// executor stores this type).
    fn from_stored(stored: &Stored) -> Vec<Self>;
}

impl Element for f32 {
    const STORAGE: Storage = Storage::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn tensors<'a, 'b>(tensors: &'a [&'b [f32]]) -> HostTensors<'a, 'b> {
        HostTensors::F32(tensors)
    }
    fn tensors_mut<'a, 'b>(tensors: &'a mut [&'b mut [f32]]) -> HostTensorsMut<'a, 'b> {
        HostTensorsMut::F32(tensors)
    }
    fn from_stored(stored: &Stored) -> Vec<f32> {
        stored.to_f32()
    }
}

impl Element for bf16 {
    const STORAGE: Storage = Storage::Bf16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn tensors<'a, 'b>(tensors: &'a [&'b [bf16]]) -> HostTensors<'a, 'b> {
        HostTensors::Bf16(tensors)
    }
    fn tensors_mut<'a, 'b>(tensors: &'a mut [&'b mut [bf16]]) -> HostTensorsMut<'a, 'b> {
        HostTensorsMut::Bf16(tensors)
    }
    fn from_stored(stored: &Stored) -> Vec<bf16> {
        match stored {
            Stored::Bf16(bits) => bits.iter().map(|&b| bf16::from_bits(b)).collect(),
            other => other.to_f32().into_iter().map(bf16::from_f32).collect(),
        }
    }
}

/// The elements of every tensor of a layout in one arena, in a storage type
/// (bf16 as bit patterns, which is what kernels take): one per-element
/// state slot, or the parameters an executor owns.
#[derive(Debug)]
pub(crate) enum TypedArena {
    F32(Arena<f32>),
    Bf16(Arena<u16>),
}

impl TypedArena {
    pub(crate) fn zeroed(
        storage: Storage,
        numels: &[usize],
        stagger: usize,
    ) -> Result<TypedArena, Error> {
        Ok(match storage {
            Storage::F32 => TypedArena::F32(Arena::zeroed(numels, stagger)?),
            Storage::Bf16 => TypedArena::Bf16(Arena::zeroed(numels, stagger)?),
        })
    }

    /// An arena of `storage` holding `tensors`, [`converted`].
    pub(crate) fn from_stored(
        storage: Storage,
        tensors: &[Stored],
        stagger: usize,
    ) -> Result<TypedArena, Error> {
        let tensors = tensors
            .iter()
            .map(|t| converted(storage, t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match storage {
            Storage::F32 => {
                let values: Vec<Vec<f32>> = tensors.iter().map(Stored::to_f32).collect();
                TypedArena::F32(Arena::from_tensors(&values, stagger)?)
            }
            Storage::Bf16 => {
                // Converted to bf16 patterns, every one.
                let bits: Vec<Vec<u16>> = tensors
                    .into_iter()
                    .filter_map(|t| match t {
                        Stored::Bf16(bits) => Some(bits),
                        _ => None,
                    })
                    .collect();
                TypedArena::Bf16(Arena::from_tensors(&bits, stagger)?)
            }
        })
    }

    /// Sets every element of tensor `index` to `value` (rounded to nearest
    /// even for bf16).
    pub(crate) fn fill(&mut self, index: usize, value: f32) {
        match self {
            TypedArena::F32(arena) => arena.tensor_mut(index).fill(value),
            TypedArena::Bf16(arena) => arena
                .tensor_mut(index)
                .fill(rounding::round_nearest_even(value)),
        }
    }

    /// Tensor `index` in its storage type.
    pub(crate) fn stored(&self, index: usize) -> Stored {
        match self {
            TypedArena::F32(arena) => Stored::F32(arena.tensor(index).to_vec()),
            TypedArena::Bf16(arena) => Stored::Bf16(arena.tensor(index).to_vec()),
        }
    }

    /// Kernel pointers to each tensor (bf16 bit patterns cast, as kernels take them).
    pub(crate) fn pointers(&mut self) -> Vec<*mut f32> {
        match self {
            TypedArena::F32(arena) => arena
                .tensors_mut()
                .into_iter()
                .map(|t| t.as_mut_ptr())
                .collect(),
            TypedArena::Bf16(arena) => arena
                .tensors_mut()
                .into_iter()
                .map(|t| t.as_mut_ptr().cast::<f32>())
                .collect(),
        }
    }
}

/// `stored` in `storage`: f32 values are rounded to nearest even for bf16,
/// bf16 values widen exactly for f32, and f64 values are refused.
pub(crate) fn converted(storage: Storage, stored: &Stored) -> Result<Stored, Error> {
    match (storage, stored) {
        (_, Stored::F64(_)) => Err(Error::Checkpoint(format!(
            "f64 values cannot be stored as {storage:?}"
        ))),
        (Storage::F32, other) => Ok(Stored::F32(other.to_f32())),
        (Storage::Bf16, Stored::Bf16(bits)) => Ok(Stored::Bf16(bits.clone())),
        (Storage::Bf16, Stored::F32(x)) => Ok(Stored::Bf16(
            x.iter().map(|&v| rounding::round_nearest_even(v)).collect(),
        )),
    }
}
