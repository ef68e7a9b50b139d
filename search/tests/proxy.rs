//! Proxy tasks and the normalised fitness: the update scale is a learning
//! rate multiplier; the sweep picks the better schedule; the tuned baselines
//! score 0 (SGD with momentum) and +-1 (AdamW) on every task; scores above
//! AdamW keep ranking; the funnel runs only for candidates above SGD with
//! momentum on every cheap task; everything is deterministic.

mod common;

use std::sync::Arc;
use std::time::Instant;

use optc_runtime::Backend;
use optc_search::fitness::{compress, ProxyWorker, BASELINE_RULES, MIN_SPAN, NORMALISED_CEILING};
use optc_search::proxy::{self, Schedule, Stage};
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
    let by_scale = quadratic
        .train(&scaled_sgd(1e-3), 10.0, Schedule::Constant, &backend)
        .unwrap();
    let by_rate = quadratic
        .train(&scaled_sgd(1e-2), 1.0, Schedule::Constant, &backend)
        .unwrap();
    assert_eq!(by_scale.losses.len(), quadratic.steps + 1);
    for (a, b) in by_scale.losses.iter().zip(&by_rate.losses) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "{a} vs {b}");
    }
    assert!(by_scale.metric < by_scale.losses[0] / 2.0, "it trains");
    let diverged = quadratic
        .train(&scaled_sgd(1.0), 1.0, Schedule::Constant, &backend)
        .unwrap();
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
            "{:<11} sgd_momentum {:.4e} (scale {:.3}, {})  adamw {:.4e} (scale {:.3}, {})",
            task.name,
            baseline.sgd_momentum.metric,
            baseline.sgd_momentum.scale,
            baseline.sgd_momentum.schedule.name(),
            baseline.adamw.metric,
            baseline.adamw.scale,
            baseline.adamw.schedule.name()
        );
        assert!(baseline.sgd_momentum.metric.is_finite() && baseline.adamw.metric.is_finite());
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
        let span = (baseline.sgd_momentum.metric / baseline.adamw.metric)
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
        let adam_better = baseline.adamw.metric < baseline.sgd_momentum.metric;
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

/// Scoring children together spreads their training runs over the threads
/// and changes no score: `score_all` on two workers gives every candidate,
/// promoted to the funnel or not, what `score` gives it alone on one.
#[test]
fn scoring_together_on_two_threads_gives_each_candidate_its_own_score() {
    let prelude = common::prelude();
    let tasks: Vec<_> = proxy::builtin(&prelude)
        .unwrap()
        .into_iter()
        .filter(|t| t.name == "quadratic" || t.name == "mlp_wide")
        .collect();
    assert_eq!(tasks[1].stage, Stage::Funnel);
    let fitness = ProxyFitness::new(tasks, &prelude, 2, "cranelift").unwrap();
    let rules = ["adamw", "sgd", "lion"].map(|name| prelude.compile(name).unwrap());
    let mut worker = ProxyWorker::new("cranelift");
    let alone: Vec<_> = rules
        .iter()
        .map(|rule| fitness.score(&mut worker, rule))
        .collect();
    assert!(
        alone.iter().any(|s| s.promoted.is_some()) && alone.iter().any(|s| s.promoted.is_none()),
        "{alone:?}"
    );
    let mut workers = [ProxyWorker::new("cranelift"), ProxyWorker::new("cranelift")];
    let together = fitness.score_all(&mut workers, &rules.iter().collect::<Vec<_>>());
    assert_eq!(together, alone);
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
        "one sweep of `{}` ({} steps x {} runs): {:.2} ms ({:.0} per second on one thread)",
        quadratic.name,
        quadratic.steps,
        proxy::SWEEP_RUNS,
        1e3 * seconds,
        1.0 / seconds
    );
}

/// RMSprop without bias correction from a zero average takes a first step
/// sqrt(1 / (1 - b2)) = 31.6 times its later ones: the textbook case for a
/// warm-up. The sweep must find that a warm-up + cosine schedule beats every
/// constant scale, and report the schedule and scale of its best run.
#[test]
fn the_sweep_picks_a_warm_up_for_a_rule_that_needs_one() {
    let prelude = common::prelude();
    let tasks = proxy::builtin(&prelude).unwrap();
    let task = tasks.iter().find(|t| t.name == "digits").unwrap();
    let backend = Backend::named("cranelift").unwrap();
    let rule = Arc::new(proxy::with_update_scale(&common::compile(
        "optimizer uncorrected(learning_rate = 1e-3, b2 = 0.999) {
            state nu = 0;
            nu = lerp(nu, g * g, 1 - b2);
            p -= learning_rate * g / (sqrt(nu) + 1e-8);
        }",
        "uncorrected",
    )));
    let tuned = proxy::tune(task, &rule, &backend).unwrap();
    println!("{tuned:?}");
    assert_eq!(tuned.schedule, Schedule::WarmupCosine);
    let rerun = task
        .train(&rule, tuned.scale, tuned.schedule, &backend)
        .unwrap();
    assert_eq!(
        rerun.metric, tuned.metric,
        "the reported setting gives the metric"
    );
    for k in proxy::COARSE_EXPONENTS {
        let constant = task
            .train(&rule, 10f64.powi(k), Schedule::Constant, &backend)
            .unwrap();
        assert!(constant.metric > tuned.metric, "scale 1e{k}: {constant:?}");
    }
}

#[test]
fn scores_above_adamw_keep_ranking_below_the_ceiling() {
    assert_eq!(compress(0.5), 0.5);
    assert_eq!(compress(1.0), 1.0);
    assert_eq!(compress(-10.0), -4.0);
    let mut previous = 1.0;
    for raw in [1.5, 3.0, 10.0, 100.0, 1e4, 1e8] {
        let score = compress(raw);
        assert!(
            score > previous && score < NORMALISED_CEILING,
            "{raw}: {score}"
        );
        previous = score;
    }
}

#[test]
fn minibatches_visit_every_example_once_an_epoch_in_an_order_fixed_by_the_seed() {
    use optc_tasks::{Dataset, Mlp, Task};
    let data = Dataset::builtin("iris").unwrap();
    let model = |batch: Dataset| -> Box<dyn Task + Send + Sync> {
        Box::new(Mlp {
            data: batch,
            hidden: 2,
        })
    };
    let rows = |seed: u64| -> Vec<Vec<f32>> {
        proxy::minibatches(&data, 10, 30, seed, model)
            .iter()
            .flat_map(|batch| batch.data().features.clone())
            .collect()
    };
    let (first, again, other) = (rows(0), rows(0), rows(1));
    assert_eq!(first.len(), 300);
    assert_eq!(first, again, "a seed fixes the order");
    assert_ne!(first, other, "another seed, another order");
    // 150 examples in batches of 10: each epoch is 15 whole batches and
    // visits every example once.
    for epoch in first.chunks(150) {
        let mut seen = epoch.to_vec();
        let mut all = data.features.clone();
        let key = |a: &Vec<f32>, b: &Vec<f32>| a.partial_cmp(b).unwrap();
        seen.sort_by(key);
        all.sort_by(key);
        assert_eq!(seen, all);
    }
    assert!(proxy::minibatches(&data.subset(&[]), 10, 5, 0, model).is_empty());
}

#[test]
fn the_minibatch_tasks_train_on_noisy_gradients_and_are_deterministic() {
    let prelude = common::prelude();
    let tasks = proxy::builtin(&prelude).unwrap();
    let held_out = proxy::held_out(&prelude).unwrap();
    let backend = Backend::named("cranelift").unwrap();
    let adamw = Arc::new(proxy::with_update_scale(&prelude.compile("adamw").unwrap()));
    // The tabular MLP, and the candle conv net stepped in candle's buffer.
    for (name, stage, scale) in [
        ("mlp_minibatch", Stage::Cheap, 10.0),
        ("conv_digits", Stage::Funnel, 3.0),
    ] {
        let task = tasks.iter().find(|t| t.name == name).unwrap();
        assert_eq!(task.stage, stage);
        let run = task
            .train(&adamw, scale, Schedule::Constant, &backend)
            .unwrap();
        let again = task
            .train(&adamw, scale, Schedule::Constant, &backend)
            .unwrap();
        assert_eq!(run, again, "{name}");
        assert_eq!(run.losses.len(), task.steps + 1);
        assert!(run.metric < run.losses[0] / 2.0, "{name}: {run:?}");
        // Successive minibatch losses jump around the trend: not a full batch.
        let ups = run.losses.windows(2).filter(|w| w[1] > w[0]).count();
        assert!(
            ups > task.steps / 10,
            "{name}: {ups} rises in {} steps",
            task.steps
        );
        if name == "conv_digits" {
            // Another seed, another data order: the held-out twin differs.
            let twin = held_out.iter().find(|t| t.name == "conv_seed1").unwrap();
            let other = twin
                .train(&adamw, scale, Schedule::Constant, &backend)
                .unwrap();
            assert_ne!(other.losses, run.losses, "another order");
        }
    }
}
