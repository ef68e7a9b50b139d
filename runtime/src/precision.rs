//! Storage precision of a fused optimizer: parameters, gradients and
//! per-element state in f32 or bf16 (computation is always f32; see
//! `optc_compiler::kernel` for the rounding of bf16 stores), and the state
//! arenas that hold either.

use half::bf16;
use optc_compiler::kernel::{bf16 as rounding, Storage};

use crate::buffer::Arena;

/// How a [`crate::fused::FusedOptimizer`] stores its numbers.
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

/// Element types of parameters and gradients: `f32` or `half::bf16`.
pub trait Element: crate::buffer::Word {
    const STORAGE: Storage;
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    const STORAGE: Storage = Storage::F32;
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for bf16 {
    const STORAGE: Storage = Storage::Bf16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// One per-element state slot of every tensor, in its storage type (bf16 as
/// bit patterns, which is what kernels take).
#[derive(Debug)]
pub(crate) enum StateArena {
    F32(Arena<f32>),
    Bf16(Arena<u16>),
}

impl StateArena {
    pub(crate) fn zeroed(storage: Storage, numels: &[usize], stagger: usize) -> StateArena {
        match storage {
            Storage::F32 => StateArena::F32(Arena::zeroed(numels, stagger)),
            Storage::Bf16 => StateArena::Bf16(Arena::zeroed(numels, stagger)),
        }
    }

    /// An arena of `storage` holding `tensors`, rounded to nearest even for bf16.
    pub(crate) fn from_f32(storage: Storage, tensors: &[Vec<f32>], stagger: usize) -> StateArena {
        match storage {
            Storage::F32 => StateArena::F32(Arena::from_tensors(tensors, stagger)),
            Storage::Bf16 => {
                let bits: Vec<Vec<u16>> = tensors
                    .iter()
                    .map(|t| t.iter().map(|&x| rounding::round_nearest_even(x)).collect())
                    .collect();
                StateArena::Bf16(Arena::from_tensors(&bits, stagger))
            }
        }
    }

    pub(crate) fn storage(&self) -> Storage {
        match self {
            StateArena::F32(_) => Storage::F32,
            StateArena::Bf16(_) => Storage::Bf16,
        }
    }

    /// Sets every element to `value` (rounded to nearest even for bf16).
    pub(crate) fn fill(&mut self, value: f32) {
        match self {
            StateArena::F32(arena) => arena.tensors_mut().into_iter().for_each(|t| t.fill(value)),
            StateArena::Bf16(arena) => {
                let bits = rounding::round_nearest_even(value);
                arena.tensors_mut().into_iter().for_each(|t| t.fill(bits));
            }
        }
    }

    /// Tensor `index`, widened to f32.
    pub(crate) fn values(&self, index: usize) -> Vec<f32> {
        match self {
            StateArena::F32(arena) => arena.tensor(index).to_vec(),
            StateArena::Bf16(arena) => arena
                .tensor(index)
                .iter()
                .map(|&b| rounding::widen(b))
                .collect(),
        }
    }

    /// Tensor `index` as little-endian bytes of its storage type.
    pub(crate) fn bytes(&self, index: usize) -> Vec<u8> {
        match self {
            StateArena::F32(arena) => arena
                .tensor(index)
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            StateArena::Bf16(arena) => arena
                .tensor(index)
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        }
    }

    /// An arena of `storage` from little-endian bytes, one vector per tensor
    /// (each of the right length: the caller checked).
    pub(crate) fn from_bytes(storage: Storage, tensors: &[Vec<u8>], stagger: usize) -> StateArena {
        match storage {
            Storage::F32 => {
                let values: Vec<Vec<f32>> = tensors
                    .iter()
                    .map(|b| {
                        b.chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect()
                    })
                    .collect();
                StateArena::F32(Arena::from_tensors(&values, stagger))
            }
            Storage::Bf16 => {
                let bits: Vec<Vec<u16>> = tensors
                    .iter()
                    .map(|b| {
                        b.chunks_exact(2)
                            .map(|c| u16::from_le_bytes([c[0], c[1]]))
                            .collect()
                    })
                    .collect();
                StateArena::Bf16(Arena::from_tensors(&bits, stagger))
            }
        }
    }

    /// Kernel pointers to each tensor (bf16 bit patterns cast, as kernels take them).
    pub(crate) fn pointers(&mut self) -> Vec<*mut f32> {
        match self {
            StateArena::F32(arena) => arena
                .tensors_mut()
                .into_iter()
                .map(|t| t.as_mut_ptr())
                .collect(),
            StateArena::Bf16(arena) => arena
                .tensors_mut()
                .into_iter()
                .map(|t| t.as_mut_ptr().cast::<f32>())
                .collect(),
        }
    }
}
