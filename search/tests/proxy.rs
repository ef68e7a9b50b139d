//! Proxy tasks and the normalised fitness: the update scale is a learning
//! rate multiplier; the tuned baselines score 0 (SGD with momentum) and +-1
//! (Adam) on every task; the funnel runs only for candidates above SGD with
//! momentum on every cheap task; everything is deterministic.

mod common;

use std::sync::Arc;
use std::time::Instant;

use optc_runtime::Backend;
use optc_search::fitness::{ProxyWorker, BASELINE_RULES, MIN_SPAN};
use optc_search::proxy::{self, Stage};
use optc_search::{Fitness, ProxyFitness};

#[test]
fn the_update_scale_multiplies_the_learning_rate() {
    let prelude = common::prelude();
    let tasks = proxy::builtin(&prelude).unwrap();
    let quadratic = &tasks[0];
    let backend = Backend::named("cranelift").unwrap();
    let scaled_sgd = |lr: f64| {
        let text = format!("optimizer s(learning_rate = {lr:?}) {{ p -= learning_rate * g; }}");
        Arc::new(proxy::with_update_scale(&common::compile(&text, "s")))
    };
    let by_scale = quadratic.train(&scaled_sgd(1e-3), 10.0, &backend).unwrap();
    let by_rate = quadratic.train(&scaled_sgd(1e-2), 1.0, &backend).unwrap();
    assert_eq!(by_scale.losses.len(), quadratic.steps + 1);
    for (a, b) in by_scale.losses.iter().zip(&by_rate.losses) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "{a} vs {b}");
    }
    assert!(by_scale.metric < by_scale.losses[0] / 2.0, "it trains");
    let diverged = quadratic.train(&scaled_sgd(1.0), 1.0, &backend).unwrap();
    assert_eq!(diverged.metric, f64::INFINITY);
    assert!(
        diverged.losses.len() < quadratic.steps + 1,
        "a divergence stops early"
    );
}

#[test]
fn baselines_score_zero_and_one_and_the_funnel_is_selective() {
    let prelude = common::prelude();
    let tasks = proxy::builtin(&prelude).unwrap();
    let started = Instant::now();
    let fitness = ProxyFitness::new(tasks, &prelude, 2, "cranelift").unwrap();
    println!(
        "baselines tuned in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let mut worker = ProxyWorker::new("cranelift");
    for (task, baseline) in fitness.tasks().iter().zip(fitness.baselines()) {
        println!(
            "{:<11} sgd_momentum {:.4e} (scale {:.3})  adam {:.4e} (scale {:.3})",
            task.name,
            baseline.sgd_momentum.metric,
            baseline.sgd_momentum.scale,
            baseline.adam.metric,
            baseline.adam.scale
        );
        assert!(baseline.sgd_momentum.metric.is_finite() && baseline.adam.metric.is_finite());
    }
    let [momentum, adam] = BASELINE_RULES.map(|name| prelude.compile(name).unwrap());
    let momentum_score = fitness.score(&mut worker, &momentum);
    let cheap = fitness
        .tasks()
        .iter()
        .filter(|t| t.stage == Stage::Cheap)
        .count();
    assert_eq!(momentum_score.tasks.len(), cheap);
    for task in &momentum_score.tasks {
        assert_eq!(task.normalised, 0.0, "{}", task.task);
    }
    assert_eq!(momentum_score.fitness, 0.0);
    assert_eq!(momentum_score.promoted, None, "not above itself");
    let adam_score = fitness.score(&mut worker, &adam);
    for (task, baseline) in adam_score.tasks.iter().zip(fitness.baselines()) {
        let span = (baseline.sgd_momentum.metric / baseline.adam.metric)
            .ln()
            .abs();
        let expected = if span >= MIN_SPAN {
            1.0
        } else {
            span / MIN_SPAN
        };
        assert!(
            (task.normalised.abs() - expected).abs() < 1e-12,
            "{}",
            task.task
        );
        let adam_better = baseline.adam.metric < baseline.sgd_momentum.metric;
        assert_eq!(task.normalised > 0.0, adam_better, "{}", task.task);
    }
    let above_everywhere = adam_score.tasks[..cheap].iter().all(|t| t.normalised > 0.0);
    assert_eq!(adam_score.promoted.is_some(), above_everywhere);
    assert_eq!(
        fitness.score(&mut worker, &adam),
        adam_score,
        "deterministic"
    );
}

#[test]
fn scoring_the_cheapest_task_is_fast() {
    let prelude = common::prelude();
    let tasks = proxy::builtin(&prelude).unwrap();
    let quadratic = &tasks[0];
    let backend = Backend::named("cranelift").unwrap();
    let rule = Arc::new(proxy::with_update_scale(&prelude.compile("adam").unwrap()));
    let started = Instant::now();
    let runs = 20;
    for _ in 0..runs {
        proxy::tune(quadratic, &rule, &backend).unwrap();
    }
    let seconds = started.elapsed().as_secs_f64() / runs as f64;
    println!(
        "one sweep of `{}` ({} steps x 8 scales): {:.2} ms ({:.0} per second on one thread)",
        quadratic.name,
        quadratic.steps,
        1e3 * seconds,
        1.0 / seconds
    );
}
