//! Checkpoints: a fused optimizer's state, step count, rule identity and
//! hyperparameters in a safetensors file. Saving writes a new file and
//! renames it over the old one, so a failed save leaves the previous
//! checkpoint intact; loading checks everything before changing anything, so
//! a bad checkpoint leaves the optimizer as it was. Resuming from a
//! checkpoint gives bit-identical parameters to an uninterrupted run.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::fused::{FusedOptimizer, Scalar};
use crate::precision::StateArena;
use crate::Error;
use optc_compiler::kernel::Storage;

const FORMAT: &str = "optc-checkpoint-1";

/// A stable fingerprint of a rule: FNV-1a over its IR text.
pub fn rule_hash(rule: &optc_compiler::ir::Rule) -> String {
    let hash = rule
        .to_string()
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
    format!("{hash:016x}")
}

fn fail(message: impl Into<String>) -> Error {
    Error::Checkpoint(message.into())
}

/// The safetensors dtype of a storage type.
fn dtype(storage: Storage) -> Dtype {
    match storage {
        Storage::F32 => Dtype::F32,
        Storage::Bf16 => Dtype::BF16,
    }
}

impl FusedOptimizer {
    /// Saves the state under `path`; `names` name the tensors (as the caller
    /// will name them when loading), in step order.
    pub fn save(&self, path: &Path, names: &[&str]) -> Result<(), Error> {
        let tensors = self.numels.as_ref().map_or(0, Vec::len);
        if self.numels.is_some() && names.len() != tensors {
            return Err(fail(format!("{} names for {tensors} tensors", names.len())));
        }
        let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut elem_slot = 0;
        for (slot, state) in self.rule.states.iter().enumerate() {
            match &self.scalar_state[slot] {
                Some(Scalar::Group(x)) => data.push((
                    format!("group/{}", state.name),
                    Dtype::F64,
                    vec![1],
                    x.to_le_bytes().to_vec(),
                )),
                Some(Scalar::Tensor(xs)) => {
                    for (name, x) in names.iter().zip(xs) {
                        data.push((
                            format!("{name}/{}", state.name),
                            Dtype::F64,
                            vec![1],
                            x.to_le_bytes().to_vec(),
                        ));
                    }
                }
                None if state.shape == optc_compiler::ir::Shape::Elem => {
                    let arena = &self.elem_state[elem_slot];
                    for (t, name) in names.iter().enumerate() {
                        let bytes = arena.bytes(t);
                        data.push((
                            format!("{name}/{}", state.name),
                            dtype(arena.storage()),
                            vec![bytes.len() / arena.storage().bytes()],
                            bytes,
                        ));
                    }
                    elem_slot += 1;
                }
                None => {}
            }
        }
        let views = data
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes).map(|view| (name.clone(), view))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        let hypers: HashMap<&str, &str> = self
            .rule
            .hypers
            .iter()
            .map(|h| h.name.as_str())
            .zip(self.hypers.texts())
            .collect();
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("rule".to_string(), self.rule.name.clone()),
            ("rule_hash".to_string(), rule_hash(&self.rule)),
            ("step".to_string(), self.step.to_string()),
            (
                "tensors".to_string(),
                serde_json::to_string(&names).unwrap_or_default(),
            ),
            (
                "hyperparameters".to_string(),
                serde_json::to_string(&hypers).unwrap_or_default(),
            ),
        ]);
        let bytes =
            safetensors::serialize(views, Some(metadata)).map_err(|e| fail(e.to_string()))?;
        let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
        let written = std::fs::write(&temporary, &bytes)
            .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(fail(format!("cannot write {}: {error}", path.display())));
        }
        Ok(())
    }

    /// Restores the state saved by [`FusedOptimizer::save`] for tensors of the
    /// given names and sizes. The checkpoint must come from the same rule.
    /// Hyperparameters are not restored: the optimizer keeps its own bindings.
    pub fn load(&mut self, path: &Path, names: &[&str], numels: &[usize]) -> Result<(), Error> {
        let bytes = std::fs::read(path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| fail(format!("{}: not a checkpoint ({e})", path.display())))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fail(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| meta.get(key).cloned().unwrap_or_default();
        if field("format") != FORMAT {
            return Err(fail(format!("{}: not an optc checkpoint", path.display())));
        }
        if field("rule_hash") != rule_hash(&self.rule) {
            return Err(fail(format!(
                "checkpoint of rule `{}` (hash {}), but this optimizer runs `{}` (hash {})",
                field("rule"),
                field("rule_hash"),
                self.rule.name,
                rule_hash(&self.rule)
            )));
        }
        let step: u64 = field("step").parse().map_err(|_| fail("bad step count"))?;
        if names.len() != numels.len() {
            return Err(fail("one name per tensor size is needed"));
        }
        let saved: Vec<String> = serde_json::from_str(&field("tensors")).unwrap_or_default();
        if step > 0 && saved != names {
            return Err(fail(format!(
                "checkpoint tensors {saved:?}, expected {names:?}"
            )));
        }
        let read = |name: &str, dtype: Dtype, len: usize| -> Result<Vec<u8>, Error> {
            let view = file
                .tensor(name)
                .map_err(|_| fail(format!("missing state tensor `{name}`")))?;
            if view.dtype() != dtype || view.shape() != [len] {
                return Err(fail(format!("state tensor `{name}` has dtype {:?} and shape {:?}, expected {dtype:?} [{len}]", view.dtype(), view.shape())));
            }
            Ok(view.data().to_vec())
        };
        let f64_of = |bytes: Vec<u8>| f64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
        let mut elem_state: Vec<StateArena> = Vec::new();
        let mut scalar_state: Vec<Option<Scalar>> = vec![None; self.rule.states.len()];
        if step > 0 {
            for (slot, state) in self.rule.states.iter().enumerate() {
                match state.shape {
                    optc_compiler::ir::Shape::Group => {
                        scalar_state[slot] = Some(Scalar::Group(f64_of(read(
                            &format!("group/{}", state.name),
                            Dtype::F64,
                            1,
                        )?)));
                    }
                    optc_compiler::ir::Shape::Tensor => {
                        let values = names
                            .iter()
                            .map(|name| {
                                read(&format!("{name}/{}", state.name), Dtype::F64, 1).map(f64_of)
                            })
                            .collect::<Result<_, _>>()?;
                        scalar_state[slot] = Some(Scalar::Tensor(values));
                    }
                    optc_compiler::ir::Shape::Elem => {
                        let storage = self.precision.state;
                        let tensors = names
                            .iter()
                            .zip(numels)
                            .map(|(name, &n)| {
                                read(&format!("{name}/{}", state.name), dtype(storage), n)
                            })
                            .collect::<Result<Vec<_>, Error>>()?;
                        let stagger = elem_state.len();
                        elem_state.push(StateArena::from_bytes(storage, &tensors, stagger));
                    }
                }
            }
        }
        // Everything checked: now change the optimizer.
        self.step = step;
        self.numels = (step > 0).then(|| numels.to_vec());
        self.elem_state = if step > 0 { elem_state } else { Vec::new() };
        self.scalar_state = scalar_state;
        Ok(())
    }
}
