//! Traces: recorded gradients (and, for reference runs, parameters) in the
//! schema of the golden files: `tensors[i].p0`, `tensors[i].grads[step]`,
//! `tensors[i].params[step]`. Replaying a rule over a trace fills `params`;
//! comparing against a reference trace measures how far two runs differ.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use optc_compiler::interpret::Real;

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
    pub p0: Vec<f32>,
    /// One gradient per step.
    pub grads: Vec<Vec<f32>>,
    /// Parameters after each step.
    #[serde(default)]
    pub params: Vec<Vec<f32>>,
    #[serde(flatten)]
    pub extra: Map<String, Json>,
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
            if !tensor.shape.is_empty() && tensor.shape.iter().product::<usize>() != n {
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
/// trace with `params` replaced by the parameters after each step (rounded to
/// f32 when the optimizer runs in f64).
pub fn replay<F: Real>(optimizer: &mut Optimizer<F>, trace: &Trace) -> Result<Trace, TraceError> {
    let widen = |xs: &[f32]| -> Vec<F> { xs.iter().map(|&x| F::from_f64(f64::from(x))).collect() };
    let mut params: Vec<Vec<F>> = trace.tensors.iter().map(|t| widen(&t.p0)).collect();
    let mut history: Vec<Vec<Vec<f32>>> = vec![Vec::new(); trace.tensors.len()];
    for step in 0..trace.steps() {
        let grads: Vec<Vec<F>> = trace
            .tensors
            .iter()
            .map(|t| widen(&t.grads[step]))
            .collect();
        let grads: Vec<&[F]> = grads.iter().map(Vec::as_slice).collect();
        let mut views: Vec<&mut [F]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
        optimizer
            .step(&mut views, &grads)
            .map_err(|error| TraceError::Step { step, error })?;
        for (record, p) in history.iter_mut().zip(&params) {
            record.push(p.iter().map(|&x| x.to_f64() as f32).collect());
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
