//! Cheap rejection before training: a candidate whose update cannot depend
//! on the gradient, whose update is the same for every element, or that
//! produces non-finite values on the probe inputs is not worth a fitness
//! evaluation (the paper's abstract execution played this role).

use std::fmt;

use optc_compiler::ir::{Input, Node, Rule};
use serde::{Deserialize, Serialize};

use crate::probe::Probe;

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
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::IgnoresGradient => f.write_str("the update does not depend on g"),
            Rejection::ConstantUpdate => f.write_str("the update is the same for every element"),
            Rejection::NonFinite => f.write_str("non-finite values on the probe inputs"),
            Rejection::ProbeFailed(message) => write!(f, "the probe failed: {message}"),
        }
    }
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
