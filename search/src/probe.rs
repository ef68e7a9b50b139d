//! Probe runs: two steps of a rule in the reference interpreter (f64 checking
//! mode) on fixed inputs, under two hyperparameter settings (the defaults,
//! and the float ones scaled, so a rule that ignores a hyperparameter is told
//! apart from one that hard-codes its value). Rejection and the behavioural
//! fingerprint of deduplication both read the same run.

use optc_compiler::interpret::{self, StepInputs, Value};
use optc_compiler::ir::{Kind, Rule};

use crate::rng::Rng;

/// Element counts of the probe's tensors (two tensors, so per-tensor and
/// per-group reductions differ).
const PROBE_NUMELS: [usize; 2] = [5, 3];
/// Steps per setting: the second reads the state the first wrote.
const PROBE_STEPS: u64 = 2;
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

/// Runs the probe. Fails only where the interpreter refuses the inputs or a
/// hyperparameter has no default.
pub fn probe(rule: &Rule) -> Result<Probe, String> {
    let mut rng = Rng::new(PROBE_SEED);
    let mut tensors = |scale: f64| -> Vec<Vec<f64>> {
        PROBE_NUMELS
            .iter()
            .map(|&n| (0..n).map(|_| scale * (2.0 * rng.unit() - 1.0)).collect())
            .collect()
    };
    let initial_params = tensors(1.0);
    let grads: Vec<Vec<Vec<f64>>> = (0..PROBE_STEPS).map(|_| tensors(0.5)).collect();
    let mut steps = Vec::new();
    for scale in [1.0, HYPER_SCALE] {
        let mut params = initial_params.clone();
        let mut state: Option<Vec<Value<f64>>> = None;
        for (step, grad) in (1..=PROBE_STEPS).zip(&grads) {
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
    }
    Ok(Probe { steps })
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
