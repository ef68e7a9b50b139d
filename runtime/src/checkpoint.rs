//! Checkpoints: an optimizer's state, its tensors' step counts, the rule's
//! identity and the hyperparameters in a safetensors file.
//!
//! * Per-element state is stored in its own element type (f32, bf16, or f64
//!   for the f64 interpreter) as `tensor/SLOT/TENSOR`; tensor state as one
//!   f64 per tensor under the same name; group state as `group/SLOT/GROUP`.
//!   Only tensors that have stepped have state in the file, and only groups
//!   with a tensor that has.
//! * The metadata records the format, the rule (name and a hash of its IR),
//!   the precision, every group (name, steps of its most advanced tensor,
//!   frozen, hyperparameter values as source text) and every tensor (name,
//!   size, its matrix view unless it is a vector, group, steps), and a checksum
//!   (FNV-1a over the whole file with the checksum's own digits zeroed), so
//!   a changed byte anywhere is detected.
//! * Saving goes through [`crate::files::write_atomically`]: a failed save
//!   leaves the previous checkpoint intact. Loading checks everything before
//!   changing anything, so a bad checkpoint leaves the optimizer as it was.
//!   Hyperparameters are not restored: the optimizer keeps its own.
//!
//! Resuming from a checkpoint gives bit-identical parameters to an
//! uninterrupted run, on any thread count.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::executor::{Layout, SlotValues, Stored};
use crate::optimizer::Optimizer;
use crate::Error;
use optc_compiler::ir::{MatrixView, Shape};

const FORMAT: &str = "optc-checkpoint-2";
/// What the checksum's digits are while it is computed.
const UNSET_CHECKSUM: &str = "0000000000000000";
/// The largest step count a checkpoint may hold: every count up to it is
/// exact in f64 (`t` is an f64 in the rule).
pub const MAX_STEPS: u64 = 1 << 53;

/// A stable fingerprint of a rule: FNV-1a over its IR text.
pub fn rule_hash(rule: &optc_compiler::ir::Rule) -> String {
    format!(
        "{:016x}",
        crate::files::checksum(rule.to_string().as_bytes())
    )
}

fn fail(message: impl Into<String>) -> Error {
    Error::Checkpoint(message.into())
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct GroupRecord {
    name: String,
    steps: u64,
    frozen: bool,
    hyperparameters: HashMap<String, String>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct TensorRecord {
    name: String,
    numel: usize,
    /// The tensor's matrix view (rank, rows, columns); absent for vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    matrix: Option<(usize, usize, usize)>,
    group: usize,
    steps: u64,
}

impl TensorRecord {
    fn view(&self) -> MatrixView {
        match self.matrix {
            Some((rank, rows, cols)) => MatrixView { rank, rows, cols },
            None => MatrixView::vector(self.numel),
        }
    }
}

fn dtype_of(stored: &Stored) -> Dtype {
    match stored {
        Stored::F32(_) => Dtype::F32,
        Stored::Bf16(_) => Dtype::BF16,
        Stored::F64(_) => Dtype::F64,
    }
}

fn bytes_of(stored: &Stored) -> Vec<u8> {
    match stored {
        Stored::F32(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Stored::Bf16(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Stored::F64(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn stored_from(dtype: &str, bytes: &[u8]) -> Option<Stored> {
    Some(match dtype {
        "f32" => Stored::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "bf16" => Stored::Bf16(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        "f64" => Stored::F64(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        _ => return None,
    })
}

/// `len` zeros of element type `dtype`.
fn zeros(dtype: &str, len: usize) -> Option<Stored> {
    Some(match dtype {
        "f32" => Stored::F32(vec![0.0; len]),
        "bf16" => Stored::Bf16(vec![0; len]),
        "f64" => Stored::F64(vec![0.0; len]),
        _ => return None,
    })
}

fn safetensors_dtype(dtype: &str) -> Dtype {
    match dtype {
        "bf16" => Dtype::BF16,
        "f64" => Dtype::F64,
        _ => Dtype::F32,
    }
}

impl Optimizer {
    /// Saves the optimizer's state under `path` (see the module documentation).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let layout = self.layout().cloned().unwrap_or(Layout {
            tensors: Vec::new(),
            groups: self.group_names().iter().map(|g| g.to_string()).collect(),
        });
        let groups: Vec<GroupRecord> = (0..self.group_count())
            .map(|i| {
                let (name, frozen, steps, texts) = self.group_record(i);
                GroupRecord {
                    name: name.to_string(),
                    steps,
                    frozen,
                    hyperparameters: self
                        .rule()
                        .hypers
                        .iter()
                        .map(|h| h.name.clone())
                        .zip(texts.into_iter().map(String::from))
                        .collect(),
                }
            })
            .collect();
        let steps = self.tensor_steps();
        let stepped = |tensor: usize| steps.get(tensor).is_some_and(|&s| s > 0);
        let group_stepped = |group: usize| groups[group].steps > 0;
        let state = if self.layout().is_some() {
            self.state_values()
        } else {
            Vec::new()
        };
        let mut data: Vec<(String, Dtype, Vec<u8>)> = Vec::new();
        for (slot, values) in self.rule().states.iter().zip(&state) {
            match values {
                SlotValues::Vectors(tensors) => {
                    for (t, (info, stored)) in layout.tensors.iter().zip(tensors).enumerate() {
                        if stepped(t) {
                            let name = format!("tensor/{}/{}", slot.name, info.name);
                            data.push((name, dtype_of(stored), bytes_of(stored)));
                        }
                    }
                }
                SlotValues::Tensor(xs) => {
                    for (t, (info, x)) in layout.tensors.iter().zip(xs).enumerate() {
                        if stepped(t) {
                            let name = format!("tensor/{}/{}", slot.name, info.name);
                            data.push((name, Dtype::F64, x.to_le_bytes().to_vec()));
                        }
                    }
                }
                SlotValues::Group(xs) => {
                    for (group, (name, x)) in layout.groups.iter().zip(xs).enumerate() {
                        if group_stepped(group) {
                            let name = format!("group/{}/{name}", slot.name);
                            data.push((name, Dtype::F64, x.to_le_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        let views = data
            .iter()
            .map(|(name, dtype, bytes)| {
                let len = bytes.len() / (dtype.bitsize() / 8).max(1);
                TensorView::new(*dtype, vec![len], bytes).map(|view| (name.clone(), view))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        let tensors: Vec<TensorRecord> = layout
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| TensorRecord {
                name: t.name.clone(),
                numel: t.numel,
                matrix: (t.view != MatrixView::vector(t.numel)).then_some((
                    t.view.rank,
                    t.view.rows,
                    t.view.cols,
                )),
                group: t.group,
                steps: steps.get(i).copied().unwrap_or(0),
            })
            .collect();
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("rule".to_string(), self.rule().name.clone()),
            ("rule_hash".to_string(), rule_hash(self.rule())),
            ("state_dtype".to_string(), self.state_dtype().to_string()),
            ("groups".to_string(), to_json(&groups)),
            ("tensors".to_string(), to_json(&tensors)),
            ("checksum".to_string(), UNSET_CHECKSUM.to_string()),
        ]);
        let mut bytes =
            safetensors::serialize(views, Some(metadata)).map_err(|e| fail(e.to_string()))?;
        let at = checksum_position(&bytes).ok_or_else(|| fail("no checksum field written"))?;
        let sum = format!("{:016x}", crate::files::checksum(&bytes));
        bytes[at..at + 16].copy_from_slice(sum.as_bytes());
        crate::files::write_atomically(path, &bytes)
            .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
    }

    /// Restores the state saved by [`Optimizer::save`]. The checkpoint must
    /// come from the same rule, with the same groups and element type; if the
    /// optimizer has tensors already (declared, or from a step), the same
    /// tensors, else it takes the checkpoint's. Hyperparameters are not
    /// restored: the optimizer keeps its own bindings. On error nothing
    /// changes.
    pub fn load(&mut self, path: &Path) -> Result<(), Error> {
        let bytes = std::fs::read(path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        let shown = path.display();
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| fail(format!("{shown}: not a checkpoint ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fail(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| meta.get(key).cloned().unwrap_or_default();
        match field("format").as_str() {
            FORMAT => {}
            "optc-checkpoint-1" => {
                return Err(fail(format!(
                    "{shown} was written by an earlier optc (format 1, before parameter groups); \
                     resume that run with the optc that wrote it"
                )))
            }
            _ => return Err(fail(format!("{shown}: not an optc checkpoint"))),
        }
        let mut zeroed = bytes.clone();
        let at = checksum_position(&zeroed).ok_or_else(|| fail(format!("{shown}: no checksum")))?;
        let recorded = String::from_utf8_lossy(&zeroed[at..at + 16]).into_owned();
        zeroed[at..at + 16].copy_from_slice(UNSET_CHECKSUM.as_bytes());
        if recorded != format!("{:016x}", crate::files::checksum(&zeroed)) {
            return Err(fail(format!(
                "{shown} is damaged: its checksum does not match its contents"
            )));
        }
        if field("rule_hash") != rule_hash(self.rule()) {
            return Err(fail(format!(
                "checkpoint of rule `{}` (hash {}), but this optimizer runs `{}` (hash {})",
                field("rule"),
                field("rule_hash"),
                self.rule().name,
                rule_hash(self.rule())
            )));
        }
        let dtype = field("state_dtype");
        if dtype != self.state_dtype() {
            return Err(fail(format!(
                "the checkpoint holds {dtype} state, this optimizer stores {}",
                self.state_dtype()
            )));
        }
        let parse = |key: &str| format!("{shown}: bad `{key}` record");
        let groups: Vec<GroupRecord> =
            serde_json::from_str(&field("groups")).map_err(|_| fail(parse("groups")))?;
        let tensors: Vec<TensorRecord> =
            serde_json::from_str(&field("tensors")).map_err(|_| fail(parse("tensors")))?;
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        if names != self.group_names() {
            return Err(fail(format!(
                "checkpoint groups {names:?}, this optimizer's {:?}",
                self.group_names()
            )));
        }
        if let Some(t) = tensors.iter().find(|t| t.steps > MAX_STEPS) {
            return Err(fail(format!(
                "tensor `{}` has taken {} steps, more than a checkpoint can hold ({MAX_STEPS})",
                t.name, t.steps
            )));
        }
        let layout = Layout {
            tensors: tensors
                .iter()
                .map(|t| crate::executor::TensorInfo {
                    name: t.name.clone(),
                    numel: t.numel,
                    view: t.view(),
                    group: t.group,
                })
                .collect(),
            groups: names.iter().map(|n| n.to_string()).collect(),
        };
        let file_names: Vec<String> = tensors.iter().map(|t| t.name.clone()).collect();
        let expected = match self.layout() {
            Some(own) => own.clone(),
            None => self.resolve(&file_names, &layout.views())?,
        };
        if expected != layout {
            let show = |l: &Layout| {
                let tensors: Vec<String> = l
                    .tensors
                    .iter()
                    .map(|t| {
                        let size = if t.view == MatrixView::vector(t.numel) {
                            t.numel.to_string()
                        } else {
                            format!("{} x {}", t.view.rows, t.view.cols)
                        };
                        format!("{} ({size}, group {})", t.name, l.groups[t.group])
                    })
                    .collect();
                tensors.join(", ")
            };
            return Err(fail(format!(
                "checkpoint tensors {}; this optimizer's {}",
                show(&layout),
                show(&expected)
            )));
        }
        self.ensure_memory(&layout.views())?;
        let read = |name: &str, len: usize, dtype: &str| -> Result<Stored, Error> {
            let view = file
                .tensor(name)
                .map_err(|_| fail(format!("missing state tensor `{name}`")))?;
            let want = safetensors_dtype(dtype);
            if view.dtype() != want || view.shape() != [len] {
                return Err(fail(format!(
                    "state tensor `{name}` has dtype {:?} and shape {:?}, expected {want:?} [{len}]",
                    view.dtype(),
                    view.shape()
                )));
            }
            stored_from(dtype, view.data()).ok_or_else(|| fail(format!("bad dtype {dtype}")))
        };
        let f64_of = |stored: Stored| stored.to_f64().first().copied().unwrap_or(f64::NAN);
        let stepped = |tensor: usize| tensors[tensor].steps > 0;
        let group_stepped = |group: usize| layout.tensors_of(group).any(stepped);
        let mut state = Vec::new();
        for slot in &self.rule().states {
            let per_tensor = |len: &dyn Fn(usize) -> usize, dtype: &str| {
                layout
                    .tensors
                    .iter()
                    .enumerate()
                    .map(|(t, info)| {
                        let name = format!("tensor/{}/{}", slot.name, info.name);
                        if stepped(t) {
                            read(&name, len(t), dtype)
                        } else {
                            // A tensor that has not stepped: zeros, which its first step replaces.
                            zeros(dtype, len(t)).ok_or_else(|| fail(format!("bad dtype {dtype}")))
                        }
                    })
                    .collect::<Result<Vec<_>, Error>>()
            };
            state.push(match slot.shape {
                shape @ (Shape::Rows | Shape::Cols | Shape::Elem | Shape::Gram) => {
                    SlotValues::Vectors(per_tensor(&|t| layout.tensors[t].view.len(shape), &dtype)?)
                }
                Shape::Tensor => {
                    SlotValues::Tensor(per_tensor(&|_| 1, "f64")?.into_iter().map(f64_of).collect())
                }
                Shape::Group => SlotValues::Group(
                    layout
                        .groups
                        .iter()
                        .enumerate()
                        .map(|(g, name)| {
                            let key = format!("group/{}/{name}", slot.name);
                            if group_stepped(g) {
                                read(&key, 1, "f64").map(f64_of)
                            } else {
                                Ok(f64::NAN)
                            }
                        })
                        .collect::<Result<_, Error>>()?,
                ),
            });
        }
        // Everything checked: now change the optimizer.
        if self.layout().is_none() {
            self.bind(&file_names, &layout.views())?;
        }
        let steps: Vec<u64> = tensors.iter().map(|t| t.steps).collect();
        self.restore(&state, &steps)
    }
}

/// Where the 16 digits of the `checksum` metadata field start in a
/// serialized checkpoint (inside its JSON header).
fn checksum_position(bytes: &[u8]) -> Option<usize> {
    let header_len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(header_len)?)?;
    let key = b"\"checksum\":\"";
    let start = header.windows(key.len()).position(|w| w == key)? + key.len();
    (start + 16 <= header.len()).then_some(8 + start)
}

/// JSON text of a record (for the metadata).
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
