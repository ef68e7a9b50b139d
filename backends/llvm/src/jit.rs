//! LLVM IR text to callable machine code, through inkwell: parse, optimise,
//! and compile with MCJIT for the host CPU; the code lives as long as its
//! [`Code`] does.

use std::mem::ManuallyDrop;
use std::sync::OnceLock;

use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target as LlvmTarget, TargetMachine,
};
use inkwell::OptimizationLevel;

use crate::codegen::Target;

/// The IR passes run before code generation. Light: the emitted IR is
/// already vectorised, hoisted and free of dead ops, so these only fold
/// constants and clean up the selects and conversions the emitter leaves.
const PASSES: &str = "instcombine<no-verify-fixpoint>,simplifycfg,early-cse";

/// Initialises LLVM's native target and MCJIT once per process.
fn initialise() -> Result<(), String> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| LlvmTarget::initialize_native(&InitializationConfig::default()))
        .clone()
}

/// The host CPU as LLVM sees it, with the widest vectors it has.
pub fn host() -> Result<Target, String> {
    initialise()?;
    let cpu = TargetMachine::get_host_cpu_name().to_string();
    let features = TargetMachine::get_host_cpu_features().to_string();
    let has = |f: &str| features.split(',').any(|x| x == format!("+{f}"));
    let lanes = if has("avx512f") && has("avx512bw") {
        16
    } else if has("avx2") {
        8
    } else {
        4
    };
    Ok(Target {
        lanes,
        cpu,
        features,
    })
}

/// A target machine for `target` on the host's triple.
pub fn machine(target: &Target, relocation: RelocMode) -> Result<TargetMachine, String> {
    initialise()?;
    let triple = TargetMachine::get_default_triple();
    let llvm = LlvmTarget::from_triple(&triple).map_err(|e| e.to_string())?;
    llvm.create_target_machine(
        &triple,
        &target.cpu,
        &target.features,
        OptimizationLevel::Aggressive,
        relocation,
        CodeModel::Default,
    )
    .ok_or_else(|| format!("LLVM has no target machine for {}", triple))
}

/// Parses `text` into a module of `context` for `machine`, verified and
/// optimised.
pub fn parse<'ctx>(
    context: &'ctx Context,
    text: &str,
    machine: &TargetMachine,
) -> Result<Module<'ctx>, String> {
    let buffer = MemoryBuffer::create_from_memory_range_copy(text.as_bytes(), "kernel");
    let module = context
        .create_module_from_ir(buffer)
        .map_err(|e| format!("LLVM rejected the kernel's IR: {e}"))?;
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    module
        .verify()
        .map_err(|e| format!("LLVM IR does not verify: {e}"))?;
    module
        .run_passes(PASSES, machine, PassBuilderOptions::create())
        .map_err(|e| format!("LLVM passes failed: {e}"))?;
    Ok(module)
}

/// Machine code of one module, with its LLVM context; freed on drop.
pub struct Code {
    engine: ManuallyDrop<ExecutionEngine<'static>>,
    context: *mut Context,
}

// SAFETY: after construction the engine and context are only touched by
// `drop`, which needs `&mut self`; the machine code itself is immutable.
unsafe impl Send for Code {}
// SAFETY: as above: shared references never reach LLVM.
unsafe impl Sync for Code {}

impl Drop for Code {
    fn drop(&mut self) {
        // SAFETY: the engine goes before the context it was made in, and
        // the context came from Box::into_raw in `Code::compile`.
        unsafe {
            ManuallyDrop::drop(&mut self.engine);
            drop(Box::from_raw(self.context));
        }
    }
}

impl Code {
    /// Compiles the module `text` for `target`; returns the code and the
    /// address of `function` in it.
    pub fn compile(text: &str, target: &Target, function: &str) -> Result<(Code, usize), String> {
        let machine = machine(target, RelocMode::Default)?;
        let context = Box::into_raw(Box::new(Context::create()));
        // SAFETY: freed only by Code's drop (or below on failure), after
        // everything made from it.
        let borrowed: &'static Context = unsafe { &*context };
        let built = parse(borrowed, text, &machine).and_then(|module| {
            let engine = module
                .create_jit_execution_engine(OptimizationLevel::Aggressive)
                .map_err(|e| format!("LLVM could not create its JIT: {e}"))?;
            let address = engine
                .get_function_address(function)
                .map_err(|e| format!("LLVM lost the kernel function: {e}"))?;
            Ok((engine, address))
        });
        match built {
            Ok((engine, address)) => Ok((
                Code {
                    engine: ManuallyDrop::new(engine),
                    context,
                },
                address,
            )),
            Err(e) => {
                // SAFETY: nothing made from the context survives here.
                unsafe { drop(Box::from_raw(context)) };
                Err(e)
            }
        }
    }
}

/// Compiles the module `text` for `target` into a position-independent
/// object file at `path`.
pub fn write_object(text: &str, target: &Target, path: &std::path::Path) -> Result<(), String> {
    let machine = machine(target, RelocMode::PIC)?;
    let context = Context::create();
    let module = parse(&context, text, &machine)?;
    machine
        .write_to_file(&module, FileType::Object, path)
        .map_err(|e| format!("LLVM could not write {}: {e}", path.display()))
}
