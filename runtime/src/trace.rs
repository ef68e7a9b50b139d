//! Traces: recorded gradients (and, for reference runs, parameters) in the
//! schema of the golden files: `tensors[i].p0`, `tensors[i].grads[step]`,
//! `tensors[i].params[step]`, optional `tensors[i].shape` and
//! `tensors[i].name`, and any other fields, kept as they are. Replaying a
//! rule over a trace fills `params`; comparing against a reference trace
//! measures how far two runs differ.
//!
//! JSON has no NaN or infinities, so the numbers of a trace are JSON numbers
//! when finite and the strings `"NaN"`, `"inf"` and `"-inf"` otherwise (a
//! diverged replay reads back exactly); `null`, which older versions wrote
//! for all three, reads as NaN.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::{Error, Optimizer};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trace {
    pub tensors: Vec<TraceTensor>,
    /// Every other field (`name`, `peer`, `hyper`, ...), kept as it was.
    #[serde(flatten)]
    pub extra: Map<String, Json>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceTensor {
    #[serde(default)]
    pub shape: Vec<usize>,
    #[serde(with = "numbers")]
    pub p0: Vec<f32>,
    /// One gradient per step.
    #[serde(with = "rows")]
    pub grads: Vec<Vec<f32>>,
    /// Parameters after each step.
    #[serde(default, with = "rows")]
    pub params: Vec<Vec<f32>>,
    #[serde(flatten)]
    pub extra: Map<String, Json>,
}

/// One number of a trace: a JSON number, or `"NaN"`, `"inf"`, `"-inf"`.
#[derive(Clone, Copy)]
struct Number(f32);

impl Serialize for Number {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            x if x.is_finite() => serializer.serialize_f32(x),
            x if x.is_nan() => serializer.serialize_str("NaN"),
            x if x > 0.0 => serializer.serialize_str("inf"),
            _ => serializer.serialize_str("-inf"),
        }
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Number, D::Error> {
        match Json::deserialize(deserializer)? {
            Json::Number(n) => Ok(Number(n.as_f64().unwrap_or(f64::NAN) as f32)),
            Json::Null => Ok(Number(f32::NAN)),
            Json::String(text) => match text.as_str() {
                "NaN" => Ok(Number(f32::NAN)),
                "inf" => Ok(Number(f32::INFINITY)),
                "-inf" => Ok(Number(f32::NEG_INFINITY)),
                other => Err(serde::de::Error::custom(format!(
                    "`{other}` is not a number (non-finite values are \"NaN\", \"inf\", \"-inf\")"
                ))),
            },
            other => Err(serde::de::Error::custom(format!("{other} is not a number"))),
        }
    }
}

/// A list of trace numbers.
mod numbers {
    use super::Number;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(values: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
        let numbers: Vec<Number> = values.iter().map(|&x| Number(x)).collect();
        numbers.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
        Ok(Vec::<Number>::deserialize(deserializer)?
            .into_iter()
            .map(|n| n.0)
            .collect())
    }
}

/// A list of lists of trace numbers (one per step).
mod rows {
    use super::Number;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(rows: &[Vec<f32>], serializer: S) -> Result<S::Ok, S::Error> {
        let rows: Vec<Vec<Number>> = rows
            .iter()
            .map(|row| row.iter().map(|&x| Number(x)).collect())
            .collect();
        rows.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<f32>>, D::Error> {
        let rows = Vec::<Vec<Number>>::deserialize(deserializer)?;
        Ok(rows
            .into_iter()
            .map(|row| row.into_iter().map(|n| n.0).collect())
            .collect())
    }
}

impl TraceTensor {
    /// The tensor's name: its `name` field, else its index `i`.
    pub fn name(&self, i: usize) -> String {
        match self.extra.get("name").and_then(Json::as_str) {
            Some(name) => name.to_string(),
            None => i.to_string(),
        }
    }

    /// Its dimensions: the `shape` field, else a vector of its elements.
    pub fn dims(&self) -> Vec<usize> {
        if self.shape.is_empty() {
            vec![self.p0.len()]
        } else {
            self.shape.clone()
        }
    }
}

impl Trace {
    /// Every tensor's name and dimensions, for
    /// [`crate::OptimizerBuilder::shaped_tensors`]; an error where a
    /// `shape` does not hold as many elements as its `p0`.
    pub fn shaped_tensors(&self) -> Result<Vec<(String, Vec<usize>)>, TraceError> {
        self.tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let dims = t.dims();
                let elements = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if elements != Some(t.p0.len()) {
                    return Err(TraceError::Invalid(format!(
                        "tensor {i} has shape {dims:?} and {} elements in p0",
                        t.p0.len()
                    )));
                }
                Ok((t.name(i), dims))
            })
            .collect()
    }
}

#[derive(Debug)]
pub enum TraceError {
    Json(serde_json::Error),
    Invalid(String),
    Step { step: usize, error: Error },
}

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceError::Json(error) => write!(f, "not a valid trace: {error}"),
            TraceError::Invalid(message) => write!(f, "not a valid trace: {message}"),
            TraceError::Step { step, error } => write!(f, "step {}: {error}", step + 1),
        }
    }
}

impl std::error::Error for TraceError {}

impl Trace {
    /// Parses and validates a trace: every tensor has the same number of
    /// steps, and every gradient (and recorded parameter) the length of `p0`.
    pub fn from_json(text: &str) -> Result<Trace, TraceError> {
        let trace: Trace = serde_json::from_str(text).map_err(TraceError::Json)?;
        let steps = trace.steps();
        for (i, tensor) in trace.tensors.iter().enumerate() {
            let n = tensor.p0.len();
            let holds = tensor
                .shape
                .iter()
                .try_fold(1usize, |product, &d| product.checked_mul(d));
            if !tensor.shape.is_empty() && holds != Some(n) {
                return Err(TraceError::Invalid(format!(
                    "tensor {i}: shape {:?} does not hold {n} elements",
                    tensor.shape
                )));
            }
            if tensor.grads.len() != steps {
                return Err(TraceError::Invalid(format!(
                    "tensor {i} has {} gradient steps, tensor 0 has {steps}",
                    tensor.grads.len()
                )));
            }
            let bad = tensor
                .grads
                .iter()
                .chain(&tensor.params)
                .position(|row| row.len() != n);
            if let Some(row) = bad {
                return Err(TraceError::Invalid(format!(
                    "tensor {i}: row {row} of grads/params does not have {n} elements"
                )));
            }
        }
        Ok(trace)
    }

    pub fn steps(&self) -> usize {
        self.tensors.first().map_or(0, |t| t.grads.len())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Runs `optimizer` over the trace's gradients from its `p0`s and returns the
/// trace with `params` replaced by the parameters after each step. The
/// parameters live in the executor between steps (uploaded once), so an f64
/// interpreter keeps them in f64; each recorded step is rounded to f32.
pub fn replay(optimizer: &mut Optimizer, trace: &Trace) -> Result<Trace, TraceError> {
    let p0: Vec<&[f32]> = trace.tensors.iter().map(|t| t.p0.as_slice()).collect();
    let failed = |step: usize| move |error: Error| TraceError::Step { step, error };
    optimizer.upload(&p0).map_err(failed(0))?;
    let mut history: Vec<Vec<Vec<f32>>> = vec![Vec::new(); trace.tensors.len()];
    for step in 0..trace.steps() {
        let grads: Vec<&[f32]> = trace
            .tensors
            .iter()
            .map(|t| t.grads[step].as_slice())
            .collect();
        optimizer.step_owned(&grads).map_err(failed(step))?;
        let params = optimizer.params().map_err(failed(step))?;
        for (record, p) in history.iter_mut().zip(params) {
            record.push(p);
        }
    }
    let mut out = trace.clone();
    for (tensor, record) in out.tensors.iter_mut().zip(history) {
        tensor.params = record;
    }
    Ok(out)
}

/// How far a replay is from a reference, over every step, tensor and element.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// max |ours - reference|
    pub max_abs: f64,
    /// max |ours - reference| / max(|reference|, 1): relative error for
    /// parameters of magnitude 1 or more, absolute error below.
    pub max_err: f64,
    /// (step, tensor, element) where `max_err` occurs, 0-based.
    pub worst: (usize, usize, usize),
}

/// Compares the `params` of two traces of the same shape.
pub fn compare(ours: &Trace, reference: &Trace) -> Result<Comparison, TraceError> {
    if ours.tensors.len() != reference.tensors.len() {
        return Err(TraceError::Invalid(
            "the traces have different tensor counts".into(),
        ));
    }
    let mut result = Comparison {
        max_abs: 0.0,
        max_err: 0.0,
        worst: (0, 0, 0),
    };
    for (tensor, (a, b)) in ours.tensors.iter().zip(&reference.tensors).enumerate() {
        if a.params.len() != b.params.len() {
            return Err(TraceError::Invalid(format!(
                "tensor {tensor}: {} recorded steps against {}",
                a.params.len(),
                b.params.len()
            )));
        }
        for (step, (row_a, row_b)) in a.params.iter().zip(&b.params).enumerate() {
            for (element, (&x, &y)) in row_a.iter().zip(row_b).enumerate() {
                let (x, y) = (f64::from(x), f64::from(y));
                let abs = if x == y { 0.0 } else { (x - y).abs() };
                let err = abs / y.abs().max(1.0);
                result.max_abs = result.max_abs.max(abs);
                if err > result.max_err || err.is_nan() {
                    result.max_err = if err.is_nan() { f64::INFINITY } else { err };
                    result.worst = (step, tensor, element);
                }
            }
        }
    }
    Ok(result)
}
