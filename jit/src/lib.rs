//! Cranelift JIT backend (being written).
