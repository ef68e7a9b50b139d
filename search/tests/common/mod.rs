//! Helpers shared by the search's tests: compiling `.opt` text against the
//! standard library, and a toy fitness (a small ill-conditioned quadratic
//! trained by the reference interpreter).

#![allow(dead_code)] // each test binary uses its own subset

use optc_compiler::interpret::{self, StepInputs, Value};
use optc_compiler::ir::Rule;
use optc_compiler::{Origin, Program};
use optc_search::probe::hyper_values;
use optc_search::{Fitness, Score};

/// The standard library plus `text`, and the rule `name` compiled from it.
pub fn compile(text: &str, name: &str) -> Rule {
    let mut program = optc_stdlib::prelude();
    program
        .add_source("test.opt", text.as_bytes(), Origin::User)
        .unwrap_or_else(|d| panic!("{text}: {}", d.message));
    program
        .compile(name)
        .unwrap_or_else(|d| panic!("{text}: {}", d.message))
}

pub fn prelude() -> Program {
    optc_stdlib::prelude()
}

/// `sum(curvature * (x - target)^2) / 2` from x = 0, trained for `steps`
/// steps with the exact gradient; fitness is the log of the loss reduction.
/// The minimum is away from the origin and mixed in sign, so shrinking `p`
/// without following `g` does not pay.
pub struct Quadratic {
    pub curvatures: Vec<f32>,
    pub targets: Vec<f32>,
    pub steps: u64,
}

impl Quadratic {
    pub fn new() -> Quadratic {
        Quadratic {
            curvatures: vec![1.0, 3.0, 10.0, 30.0],
            targets: vec![0.5, -1.0, 2.0, -0.3],
            steps: 20,
        }
    }

    fn loss(&self, x: &[f32]) -> f64 {
        x.iter()
            .zip(&self.targets)
            .zip(&self.curvatures)
            .map(|((&x, &c), &a)| 0.5 * a as f64 * (x as f64 - c as f64).powi(2))
            .sum()
    }

    /// Final loss after training, `None` if a step failed or diverged.
    pub fn final_loss(&self, rule: &Rule) -> Option<f64> {
        let mut x: Vec<f32> = vec![0.0; self.curvatures.len()];
        let mut state: Option<Vec<Value<f32>>> = None;
        for step in 1..=self.steps {
            let grad: Vec<f32> = x
                .iter()
                .zip(&self.targets)
                .zip(&self.curvatures)
                .map(|((x, c), a)| (x - c) * a)
                .collect();
            let hypers = hyper_values(rule, step, 1.0).ok()?;
            let out = interpret::step(
                rule,
                &StepInputs {
                    params: &[&x],
                    grads: &[&grad],
                    step,
                    hypers: &hypers,
                    state: state.as_deref(),
                    views: None,
                },
            )
            .ok()?;
            x = out.params.into_iter().next()?;
            state = Some(out.state);
        }
        let loss = self.loss(&x);
        loss.is_finite().then_some(loss)
    }
}

impl Fitness for Quadratic {
    type Worker = ();

    fn worker(&self) {}

    fn score(&self, _: &mut (), rule: &Rule) -> Score {
        let initial = self.loss(&vec![0.0; self.curvatures.len()]);
        Score::plain(match self.final_loss(rule) {
            Some(loss) => (initial / loss.max(1e-30)).ln(),
            None => f64::NEG_INFINITY,
        })
    }
}
