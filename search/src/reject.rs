//! Cheap rejection before training: a candidate whose update cannot depend
//! on the gradient, whose update is the same for every element, or that
//! produces non-finite values on the probe inputs is not worth a fitness
//! evaluation (the paper's abstract execution played this role).
//!
//! Two invariance checks reject what overfits the proxy tasks rather than
//! what cannot train (each can be turned off, see [`Invariances`]): an
//! update that changes, beyond a uniform decay, when the parameters are
//! shifted by a constant (a step scaled by a statistic of the parameters,
//! such as their minimum, is tuned to where the tasks' parameters happen to
//! lie), and a step that keeps growing under a fixed gradient (a warm-up
//! that never ends, such as one that multiplies the step by `t`).

use std::fmt;

use optc_compiler::ir::{Input, Node, Rule};
use optc_compiler::simplify::{self, Tier};
use serde::{Deserialize, Serialize};

use crate::probe::{self, Probe, ProbeInputs, ProbeStep};

/// Which invariance checks rejection applies (both by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invariances {
    /// Reject an update that changes, beyond a uniform decay, when the
    /// parameters are shifted by [`SHIFT`].
    pub shift: bool,
    /// Reject a step that grows more than [`GROWTH_LIMIT`] times from step
    /// [`GROWTH_FROM`] to step [`GROWTH_TO`] under a fixed gradient.
    pub growth: bool,
}

impl Default for Invariances {
    fn default() -> Invariances {
        Invariances {
            shift: true,
            growth: true,
        }
    }
}

/// The constant the shift check adds to every parameter (the probe's
/// parameters lie in [-1, 1]).
pub const SHIFT: f64 = 3.0;
/// The growth check compares the step size (root mean square of the update)
/// at these two steps of a run with one gradient held fixed: by step 64 the
/// transients of the usual moving averages (decay 0.9) are gone, while a
/// step that grows like `t` has grown eightfold by step 512.
pub const GROWTH_FROM: usize = 64;
pub const GROWTH_TO: usize = 512;
/// More growth than this is rejected: four times is more than any moving
/// average of decay 0.99 or less gives (SGD with momentum 0.9: 1.03 times;
/// an uncorrected average of decay 0.99: 2.1 times), less than a step
/// proportional to `t` (8 times).
pub const GROWTH_LIMIT: f64 = 4.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Rejection {
    /// No path from `g` to the new `p`, directly or through state.
    IgnoresGradient,
    /// Every probe step moves every element by the same amount.
    ConstantUpdate,
    /// A parameter or state value on the probe is NaN or infinite.
    NonFinite,
    /// The probe itself could not run.
    ProbeFailed(String),
    /// Shifting every parameter by [`SHIFT`] changes the update by
    /// different amounts for different elements.
    ShiftDependent,
    /// Under a fixed gradient the step grows `ratio` times from step
    /// [`GROWTH_FROM`] to [`GROWTH_TO`] (infinite if it stops being finite).
    GrowingStep { ratio: f64 },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::IgnoresGradient => f.write_str("the update does not depend on g"),
            Rejection::ConstantUpdate => f.write_str("the update is the same for every element"),
            Rejection::NonFinite => f.write_str("non-finite values on the probe inputs"),
            Rejection::ProbeFailed(message) => write!(f, "the probe failed: {message}"),
            Rejection::ShiftDependent => write!(
                f,
                "shifting the parameters by {SHIFT} changes the update beyond a uniform decay \
                 (`set shift off` allows it)"
            ),
            Rejection::GrowingStep { ratio } => write!(
                f,
                "under a fixed gradient the step grows {ratio:.1} times from step {GROWTH_FROM} \
                 to {GROWTH_TO} (`set growth off` allows it)"
            ),
        }
    }
}

/// A rule that passed the cheap checks: its algebraic simplification and
/// probe, which deduplication keys on and the invariance checks read.
pub struct Screened {
    pub simplified: Rule,
    pub probe: Probe,
}

/// Every check on `rule`: [`screen_cheaply`], then [`check_invariances`].
/// Warm starts, pruned programs and saved ones pass through here; the
/// search runs the invariance checks only on children the fitness cache
/// has not seen (see [`crate::evolve`]).
pub fn screen(rule: &Rule, invariances: Invariances) -> Result<Screened, Rejection> {
    let screened = screen_cheaply(rule)?;
    check_invariances(&screened, invariances)?;
    Ok(screened)
}

/// The probe and [`check`] on the rule's simplification.
pub fn screen_cheaply(rule: &Rule) -> Result<Screened, Rejection> {
    let probe = probe::probe(rule).map_err(Rejection::ProbeFailed)?;
    let simplified = simplify::simplify(rule, Tier::Algebraic);
    check(&simplified, &probe)?;
    Ok(Screened { simplified, probe })
}

/// The invariance checks `invariances` asks for (the growth check runs the
/// rule for [`GROWTH_TO`] steps: the dearest check, about 5 ms).
pub fn check_invariances(screened: &Screened, invariances: Invariances) -> Result<(), Rejection> {
    if invariances.shift {
        check_shift(&screened.simplified, &screened.probe)?;
    }
    if invariances.growth {
        check_growth(&screened.simplified)?;
    }
    Ok(())
}

/// [`Rejection::ShiftDependent`] unless the probe's steps at the default
/// hyperparameters, rerun from parameters shifted by [`SHIFT`], change every
/// element's update by the same amount (within rounding): decoupled weight
/// decay (`p * (1 - lr * wd)`) changes it uniformly, a step scaled by the
/// parameters' norm or minimum does not.
pub fn check_shift(rule: &Rule, probe: &Probe) -> Result<(), Rejection> {
    let inputs = ProbeInputs::new();
    let shifted_params: Vec<Vec<f64>> = inputs
        .params
        .iter()
        .map(|tensor| tensor.iter().map(|x| x + SHIFT).collect())
        .collect();
    let shifted =
        probe::run(rule, &shifted_params, &inputs.grads, 1.0).map_err(Rejection::ProbeFailed)?;
    for (plain, shifted) in probe.steps.iter().zip(&shifted) {
        let (plain, shifted) = (plain.update(), shifted.update());
        let change: Vec<f64> = plain.iter().zip(&shifted).map(|(a, b)| b - a).collect();
        let size = plain
            .iter()
            .chain(&shifted)
            .fold(0.0f64, |m, u| m.max(u.abs()));
        // Rounding of p + SHIFT + u - (p + SHIFT): a few ulps of SHIFT.
        let tolerance = 1e-9 * size + 1e-13 * SHIFT;
        if !change.iter().all(|c| (c - change[0]).abs() <= tolerance) {
            return Err(Rejection::ShiftDependent);
        }
    }
    Ok(())
}

/// [`Rejection::GrowingStep`] when, with the probe's first gradient held
/// fixed, the step at [`GROWTH_TO`] is more than [`GROWTH_LIMIT`] times the
/// step at [`GROWTH_FROM`].
pub fn check_growth(rule: &Rule) -> Result<(), Rejection> {
    let inputs = ProbeInputs::new();
    let grads = vec![inputs.grads[0].clone(); GROWTH_TO];
    let steps = probe::run(rule, &inputs.params, &grads, 1.0).map_err(Rejection::ProbeFailed)?;
    let size = |step: &ProbeStep| {
        let update = step.update();
        (update.iter().map(|u| u * u).sum::<f64>() / update.len() as f64).sqrt()
    };
    let (from, to) = (size(&steps[GROWTH_FROM - 1]), size(&steps[GROWTH_TO - 1]));
    let ratio = if !to.is_finite() {
        f64::INFINITY
    } else if to == 0.0 {
        0.0
    } else {
        to / from
    };
    if ratio > GROWTH_LIMIT {
        return Err(Rejection::GrowingStep { ratio });
    }
    Ok(())
}

/// Checks `rule` (ideally already simplified, so that `0 * g` is gone) and
/// its probe run.
pub fn check(rule: &Rule, probe: &Probe) -> Result<(), Rejection> {
    if !depends_on_gradient(rule) {
        return Err(Rejection::IgnoresGradient);
    }
    let finite = probe.steps.iter().all(|step| {
        step.param_after
            .iter()
            .chain(&step.state_after)
            .all(|x| x.is_finite())
    });
    if !finite {
        return Err(Rejection::NonFinite);
    }
    let constant = probe.steps.iter().all(|step| {
        let update = step.update();
        update
            .iter()
            .all(|&u| (u - update[0]).abs() <= 1e-12 * update[0].abs().max(1e-300))
    });
    if constant {
        return Err(Rejection::ConstantUpdate);
    }
    Ok(())
}

/// Whether the new `p` is reachable from `g` in the IR: directly, or through
/// a state slot whose initial value or new value is (on a later step).
pub fn depends_on_gradient(rule: &Rule) -> bool {
    let graph = &rule.graph;
    let mut tainted_states = vec![false; rule.states.len()];
    loop {
        let mut tainted = vec![false; graph.len()];
        for (handle, node) in graph.iter() {
            tainted[handle.index()] = match *node {
                Node::Input(Input::Grad, _) => true,
                Node::Input(Input::State(i), _) => tainted_states[i as usize],
                _ => node.children().iter().any(|child| tainted[child.index()]),
            };
        }
        let mut changed = false;
        for (i, slot) in rule.states.iter().enumerate() {
            let now = tainted[slot.init.index()] || tainted[rule.state_out[i].index()];
            if now && !tainted_states[i] {
                tainted_states[i] = true;
                changed = true;
            }
        }
        if !changed {
            return tainted[rule.param_out.index()];
        }
    }
}
