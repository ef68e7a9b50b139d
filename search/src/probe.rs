//! Probe runs: short runs of a rule in the reference interpreter (f64
//! checking mode) on fixed inputs. The probe proper is two steps under two
//! hyperparameter settings (the defaults, and the float ones scaled, so a
//! rule that ignores a hyperparameter is told apart from one that hard-codes
//! its value); rejection and the behavioural fingerprint of deduplication
//! both read it. The invariance checks of [`crate::reject`] run the same
//! inputs shifted, or one gradient held fixed for many steps, through
//! [`run`].

use optc_compiler::interpret::{self, StepInputs, Value};
use optc_compiler::ir::{Kind, Rule};

use crate::rng::Rng;

/// Element counts of the probe's tensors (two tensors, so per-tensor and
/// per-group reductions differ).
const PROBE_NUMELS: [usize; 2] = [5, 3];
/// Steps per setting: the second reads the state the first wrote.
pub const PROBE_STEPS: u64 = 2;
/// Float hyperparameters are multiplied by this in the second setting.
const HYPER_SCALE: f64 = 0.7;
const PROBE_SEED: u64 = 0x0b7c_5ea7_c4e5;

/// What one probe step did.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeStep {
    pub param_before: Vec<f64>,
    pub param_after: Vec<f64>,
    /// Every state slot's values after the step, slot by slot.
    pub state_after: Vec<f64>,
}

impl ProbeStep {
    /// `p_after - p_before`, element by element.
    pub fn update(&self) -> Vec<f64> {
        self.param_after
            .iter()
            .zip(&self.param_before)
            .map(|(after, before)| after - before)
            .collect()
    }
}

/// Every step of every setting, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub steps: Vec<ProbeStep>,
}

/// The probe's fixed inputs: parameters in [-1, 1], and a gradient per step
/// in [-0.5, 0.5], tensor by tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeInputs {
    pub params: Vec<Vec<f64>>,
    pub grads: Vec<Vec<Vec<f64>>>,
}

impl ProbeInputs {
    pub fn new() -> ProbeInputs {
        let mut rng = Rng::new(PROBE_SEED);
        let mut tensors = |scale: f64| -> Vec<Vec<f64>> {
            PROBE_NUMELS
                .iter()
                .map(|&n| (0..n).map(|_| scale * (2.0 * rng.unit() - 1.0)).collect())
                .collect()
        };
        let params = tensors(1.0);
        let grads = (0..PROBE_STEPS).map(|_| tensors(0.5)).collect();
        ProbeInputs { params, grads }
    }
}

impl Default for ProbeInputs {
    fn default() -> ProbeInputs {
        ProbeInputs::new()
    }
}

/// Runs the probe. Fails only where the interpreter refuses the inputs or a
/// hyperparameter has no default.
pub fn probe(rule: &Rule) -> Result<Probe, String> {
    let inputs = ProbeInputs::new();
    let mut steps = Vec::new();
    for scale in [1.0, HYPER_SCALE] {
        steps.extend(run(rule, &inputs.params, &inputs.grads, scale)?);
    }
    Ok(Probe { steps })
}

/// Steps `rule` from fresh state at `params`, one step per gradient (step
/// 1, 2, ...), with float hyperparameters at `scale` times their defaults.
pub fn run(
    rule: &Rule,
    params: &[Vec<f64>],
    grads: &[Vec<Vec<f64>>],
    scale: f64,
) -> Result<Vec<ProbeStep>, String> {
    let mut params = params.to_vec();
    let mut state: Option<Vec<Value<f64>>> = None;
    let mut steps = Vec::with_capacity(grads.len());
    for (step, grad) in (1..).zip(grads) {
        let hypers = hyper_values(rule, step, scale)?;
        let param_refs: Vec<&[f64]> = params.iter().map(Vec::as_slice).collect();
        let grad_refs: Vec<&[f64]> = grad.iter().map(Vec::as_slice).collect();
        let out = interpret::step(
            rule,
            &StepInputs {
                params: &param_refs,
                grads: &grad_refs,
                step,
                hypers: &hypers,
                state: state.as_deref(),
                views: None,
            },
        )?;
        steps.push(ProbeStep {
            param_before: params.concat(),
            param_after: out.params.concat(),
            state_after: out.state.iter().flat_map(Value::flatten).collect(),
        });
        params = out.params;
        state = Some(out.state);
    }
    Ok(steps)
}

/// Hyperparameter values at `step`: defaults in order (each may read the
/// earlier ones), float ones multiplied by `scale`.
pub fn hyper_values(rule: &Rule, step: u64, scale: f64) -> Result<Vec<f64>, String> {
    let mut values = Vec::with_capacity(rule.hypers.len());
    for hyper in &rule.hypers {
        let default = hyper
            .default
            .as_ref()
            .ok_or_else(|| format!("hyperparameter `{}` has no default", hyper.name))?;
        let value = interpret::scalar(default, step, &values);
        values.push(match hyper.kind {
            Kind::Float => value * scale,
            Kind::Bool => value,
        });
    }
    Ok(values)
}
