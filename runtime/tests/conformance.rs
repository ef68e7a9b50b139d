//! What every registered backend (`optc_runtime::BACKENDS`) guarantees, run
//! on each of them: results independent of the thread count, bit-identical
//! resumes from checkpoints, damaged checkpoints refused, failed steps that
//! change nothing, the non-finite policy, and parameter groups with torch's
//! per-group semantics (and, on kernel backends, reductions across groups).
//! Agreement with the interpreter is checked in the workspace's
//! `tests/differential.rs`, `tests/filetests.rs` and `tests/golden.rs`,
//! which run every registered backend too.

mod common;

use common::{
    backends, builder, grads_for, rule, scalar, sized_values as sized, steps, temp, values,
};
use optc_compiler::interpret::Value;
use optc_runtime::{Error, Group, GroupReductions, NonFinite, Optimizer, Outcome, CHUNK};

/// Adam behind global-norm clipping: a group-wide reduction.
fn clipped_adam() -> std::sync::Arc<optc_compiler::ir::Rule> {
    common::user_rule(
        "clipped_adam",
        b"optimizer clipped_adam(max_norm = 0.5) { g = clip_by_global_norm(g, max_norm); use adam; }",
    )
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let sizes = [3 * CHUNK + 17, 5, CHUNK, 1001];
    for (name, backend) in backends() {
        for rule in ["lamb", "prodigy", "adam", "novograd", "dog"] {
            let runs: Vec<Vec<Vec<f32>>> = [1, 2, 3]
                .iter()
                .map(|&threads| {
                    let mut optimizer = builder(rule, &backend, threads).build().unwrap();
                    let mut params = sized(&sizes);
                    steps(&mut optimizer, &mut params, 0, 3);
                    params
                })
                .collect();
            assert!(
                runs.windows(2).all(|w| w[0] == w[1]),
                "{rule} on {name}: 1, 2 and 3 threads agree bit for bit"
            );
        }
    }
}

#[test]
fn kernel_backends_compile_each_kernel_once() {
    for (name, backend) in backends().into_iter().filter(|(_, b)| b.runs_kernels()) {
        let mut cached = None;
        for threads in [1, 2, 3] {
            let mut optimizer = builder("lamb", &backend, threads).build().unwrap();
            // LAMB: two passes in each of the two plans, compiled once in all.
            assert_eq!(
                *cached.get_or_insert(backend.cached_kernels()),
                backend.cached_kernels()
            );
            assert!(backend.cached_kernels() >= 2, "{name}");
            let mut params = sized(&[1000, 7]);
            steps(&mut optimizer, &mut params, 0, 2);
            optimizer.set("default", "learning_rate", 0.05).unwrap();
            steps(&mut optimizer, &mut params, 2, 3);
            assert_eq!(
                cached,
                Some(backend.cached_kernels()),
                "{name}: a new hyperparameter value recompiles nothing"
            );
        }
    }
}

#[test]
fn resuming_from_a_checkpoint_is_bit_identical() {
    for (name, backend) in backends() {
        for rule in ["adam", "novograd", "prodigy", "nadam"] {
            let start = sized(&[1000, 7]);
            let named = |threads| {
                builder(rule, &backend, threads)
                    .tensors([("w", 1000), ("b", 7)])
                    .build()
                    .unwrap()
            };
            let mut straight = named(2);
            let mut a = start.clone();
            steps(&mut straight, &mut a, 0, 6);

            let mut first = named(1);
            let mut b = start.clone();
            steps(&mut first, &mut b, 0, 3);
            let path = temp(&format!("{name}-{rule}"));
            first.save(&path).unwrap();
            // A fresh optimizer takes the checkpoint's tensors.
            let mut resumed = builder(rule, &backend, 2).build().unwrap();
            resumed.load(&path).unwrap();
            assert_eq!(resumed.steps_taken(), 3);
            steps(&mut resumed, &mut b, 3, 6);
            std::fs::remove_file(&path).ok();
            assert!(
                a == b,
                "{rule} on {name}: resumed run equals the uninterrupted one"
            );
        }
    }
}

#[test]
fn bad_checkpoints_change_nothing() {
    for (name, backend) in backends() {
        let named = |rule: &str, tensors: &[(&str, usize)]| {
            builder(rule, &backend, 1)
                .tensors(tensors.iter().map(|&(n, k)| (n, k)))
                .build()
                .unwrap()
        };
        let mut adam = named("adam", &[("w", 100)]);
        let mut params = vec![values(100, 3)];
        steps(&mut adam, &mut params, 0, 2);
        let path = temp(&format!("{name}-adam-bad"));
        adam.save(&path).unwrap();

        let mut lion = named("lion", &[("w", 100)]);
        steps(&mut lion, &mut params.clone(), 0, 1);
        let before = lion.state("mu");
        let error = lion.load(&path).unwrap_err().to_string();
        assert!(error.contains("checkpoint of rule `adam`"), "{error}");
        assert_eq!(lion.state("mu"), before, "state untouched");
        assert_eq!(lion.steps_taken(), 1);

        let mut other = named("adam", &[("v", 100)]);
        let error = other.load(&path).unwrap_err().to_string();
        assert!(
            error.contains("checkpoint tensors w (100, group default); this optimizer's v (100"),
            "{error}"
        );
        let mut other = named("adam", &[("w", 99)]);
        let error = other.load(&path).unwrap_err().to_string();
        assert!(error.contains("w (99, group default)"), "{error}");
        let mut grouped = builder("adam", &backend, 1)
            .group(Group::new("all").tensors(["w"]))
            .build()
            .unwrap();
        let error = grouped.load(&path).unwrap_err().to_string();
        assert!(error.contains("checkpoint groups [\"default\"]"), "{error}");
        std::fs::write(&path, b"not a checkpoint").unwrap();
        assert!(other.load(&path).is_err());
        assert_eq!(other.steps_taken(), 0);

        // A failed save leaves the previous checkpoint in place.
        adam.save(&path).unwrap();
        let saved = std::fs::read(&path).unwrap();
        let missing_dir = std::env::temp_dir()
            .join("optc-no-such-dir")
            .join("x.safetensors");
        assert!(adam.save(&missing_dir).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), saved);
        std::fs::remove_file(&path).ok();
    }
}

#[test]
fn every_changed_byte_of_a_checkpoint_is_detected() {
    for (name, backend) in backends() {
        let mut optimizer = builder("adam", &backend, 1)
            .tensors([("w", 3), ("b", 2)])
            .build()
            .unwrap();
        let mut params = vec![values(3, 1), values(2, 2)];
        steps(&mut optimizer, &mut params, 0, 2);
        let path = temp(&format!("{name}-flips"));
        optimizer.save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let flipped = temp(&format!("{name}-flipped"));
        let mut fresh = builder("adam", &backend, 1).build().unwrap();
        for at in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut bytes = good.clone();
                bytes[at] ^= bit;
                std::fs::write(&flipped, &bytes).unwrap();
                assert!(
                    fresh.load(&flipped).is_err(),
                    "{name}: byte {at} ^ {bit:#x} of {} loaded",
                    good.len()
                );
                assert_eq!(fresh.steps_taken(), 0);
                assert!(fresh.layout().is_none(), "a failed load binds nothing");
            }
        }
        fresh.load(&path).unwrap();
        assert_eq!(fresh.state("nu"), optimizer.state("nu"));
        std::fs::remove_file(&path).ok();
        std::fs::remove_file(&flipped).ok();
    }
}

#[test]
fn a_failed_step_changes_nothing() {
    for (name, backend) in backends() {
        let mut optimizer = builder("adam", &backend, 2).build().unwrap();
        let mut twin = builder("adam", &backend, 2).build().unwrap();
        let mut a = vec![1.0f32, 2.0, 3.0];
        let mut b = vec![4.0f32];
        optimizer
            .step(&mut [&mut a, &mut b], &[&[0.1, 0.2, 0.3], &[0.4]])
            .unwrap();
        let (a1, b1) = (a.clone(), b.clone());
        let wrong_length = optimizer.step(&mut [&mut a, &mut b], &[&[0.1, 0.2], &[0.4]]);
        assert_eq!(
            wrong_length,
            Err(Error::Length {
                tensor: 0,
                expected: 3,
                found: 2
            })
        );
        let wrong_count = optimizer.step(&mut [&mut a, &mut b], &[&[0.1, 0.2, 0.3]]);
        assert_eq!(
            wrong_count,
            Err(Error::TensorCount {
                expected: 2,
                found: 1
            })
        );
        let mut c = vec![0.0f32; 2];
        let changed_shape = optimizer.step(&mut [&mut a, &mut c], &[&[0.1, 0.2, 0.3], &[0.4, 0.5]]);
        assert_eq!(
            changed_shape,
            Err(Error::Length {
                tensor: 1,
                expected: 1,
                found: 2
            })
        );
        let mut halves = [half::bf16::ONE; 3];
        let wrong_type = optimizer.step(&mut [&mut halves[..]], &[&[half::bf16::ONE; 3][..]]);
        assert!(matches!(wrong_type, Err(Error::Dtype { .. })), "{name}");
        assert_eq!(
            (a.clone(), b.clone()),
            (a1, b1),
            "{name}: parameters untouched"
        );
        assert_eq!(optimizer.steps_taken(), 1, "{name}: step count untouched");

        // The failures left the state as it was: the next step equals an uninterrupted run.
        let (mut ta, mut tb) = (vec![1.0f32, 2.0, 3.0], vec![4.0f32]);
        twin.step(&mut [&mut ta, &mut tb], &[&[0.1, 0.2, 0.3], &[0.4]])
            .unwrap();
        twin.step(&mut [&mut ta, &mut tb], &[&[0.3, 0.2, 0.1], &[0.5]])
            .unwrap();
        optimizer
            .step(&mut [&mut a, &mut b], &[&[0.3, 0.2, 0.1], &[0.5]])
            .unwrap();
        assert_eq!((a, b), (ta, tb), "{name}");
    }
}

#[test]
fn non_finite_gradients_skip_the_step_when_asked() {
    for (name, backend) in backends() {
        let mut optimizer = builder("adam", &backend, 1)
            .non_finite(NonFinite::Skip)
            .build()
            .unwrap();
        let mut params = [values(10, 4)];
        steps(&mut optimizer, &mut params, 0, 1);
        let (before, state) = (params.clone(), optimizer.state("mu"));
        let mut grad = values(10, 5);
        grad[7] = f32::NAN;
        let outcome = optimizer
            .step(&mut [params[0].as_mut_slice()], &[&grad])
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::Skipped {
                tensor: 0,
                index: 7
            }
        );
        assert_eq!(
            (params, optimizer.state("mu"), optimizer.steps_taken()),
            (before, state, 1),
            "{name}"
        );
        optimizer.set_non_finite(NonFinite::Propagate);
        let mut params = [values(10, 4)];
        let outcome = optimizer
            .step(&mut [params[0].as_mut_slice()], &[&grad])
            .unwrap();
        assert_eq!(outcome, Outcome::Applied);
        assert!(params[0][7].is_nan(), "{name}: propagated");
    }
}

/// On the exact backends (approximating ones may add within a chunk in
/// another order, within the documented bound).
#[test]
fn sums_over_several_chunks_agree_with_the_interpreter() {
    // Cancellation makes the order visible: 1e20 and -1e20 in different chunks.
    let mut program = optc_compiler::Program::new();
    let source = b"optimizer s() { p -= sum(g); }";
    program
        .add_source("s.opt", source, optc_compiler::Origin::User)
        .unwrap();
    let rule = std::sync::Arc::new(program.compile("s").unwrap());
    let n = CHUNK + 100;
    let mut g = vec![1.0f32; n];
    g[0] = 1e20;
    g[CHUNK] = -1e20;
    for (name, backend) in common::exact_backends() {
        let mut optimizer = Optimizer::builder(rule.clone())
            .backend(backend)
            .threads(2)
            .build()
            .unwrap();
        let mut p = vec![0.0f32; n];
        optimizer.step(&mut [&mut p[..]], &[&g[..]]).unwrap();
        // Each chunk's ones are lost next to ±1e20 (in element order over the
        // whole tensor, the last 99 would survive and give -99).
        assert!(p.iter().all(|&x| x == 0.0), "{name}");
    }
}

#[test]
fn set_state_checks_shapes_and_changes_nothing_on_error() {
    for (name, backend) in backends() {
        let mut optimizer = builder("adam", &backend, 1).build().unwrap();
        let wrong = [Value::Elem(vec![vec![0.0f32; 3]]), Value::Group(0.0)];
        let error = optimizer.set_state(2, &[3], &wrong).unwrap_err();
        assert!(error.to_string().contains("state `nu`"), "{error}");
        assert_eq!(optimizer.steps_taken(), 0);
        let right = [
            Value::Elem(vec![vec![0.5f32; 3]]),
            Value::Elem(vec![vec![0.25f32; 3]]),
        ];
        optimizer.set_state(2, &[3], &right).unwrap();
        assert_eq!(optimizer.steps_taken(), 2);
        assert_eq!(optimizer.state("nu"), Some(vec![vec![0.25; 3]]), "{name}");
    }
}

/// Four tensors: weights `w1`, `w2` and biases `b1`, `b2`.
const TENSORS: [(&str, usize); 4] = [("w1", 300), ("b1", 7), ("w2", 2 * CHUNK + 5), ("b2", 3)];

fn model() -> Vec<Vec<f32>> {
    sized(&TENSORS.map(|(_, n)| n))
}

/// Steps `params`, which are `tensors` of [`TENSORS`], with their gradients.
fn step_tensors(optimizer: &mut Optimizer, params: &mut [Vec<f32>], tensors: &[usize], step: u64) {
    let all = grads_for(&model(), step);
    let grads: Vec<&[f32]> = tensors.iter().map(|&t| all[t].as_slice()).collect();
    let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
    optimizer.step(&mut views, &grads).unwrap();
}

#[test]
fn groups_step_like_separate_optimizers_with_their_own_values() {
    for (name, backend) in backends() {
        for rule_name in ["adamw", "lamb", "prodigy", "dog", "sgd_momentum"] {
            let mut grouped = builder(rule_name, &backend, 2)
                .tensors(TENSORS)
                .set("learning_rate", 0.01)
                .group(
                    Group::new("biases")
                        .tensors(["b*"])
                        .set("learning_rate", scalar("0.003 * t"))
                        .set("weight_decay", 0.0),
                )
                .build()
                .unwrap();
            let mut weights = builder(rule_name, &backend, 1)
                .set("learning_rate", 0.01)
                .build()
                .unwrap();
            let mut biases = builder(rule_name, &backend, 1)
                .set("learning_rate", 0.01)
                .set("learning_rate", scalar("0.003 * t"))
                .set("weight_decay", 0.0)
                .build()
                .unwrap();
            let mut together = model();
            let (mut w, mut b) = (
                vec![together[0].clone(), together[2].clone()],
                vec![together[1].clone(), together[3].clone()],
            );
            for step in 0..3 {
                step_tensors(&mut grouped, &mut together, &[0, 1, 2, 3], step);
                step_tensors(&mut weights, &mut w, &[0, 2], step);
                step_tensors(&mut biases, &mut b, &[1, 3], step);
            }
            let label = format!("{rule_name} on {name}");
            assert!(
                together[0] == w[0] && together[2] == w[1],
                "{label}: weights"
            );
            assert!(
                together[1] == b[0] && together[3] == b[1],
                "{label}: biases"
            );
            for slot in &grouped.rule().states {
                let state = grouped.state(&slot.name).unwrap();
                let (b, w) = (
                    biases.state(&slot.name).unwrap(),
                    weights.state(&slot.name).unwrap(),
                );
                assert!(
                    state[1] == b[0] && state[2] == w[1],
                    "{label}: {}",
                    slot.name
                );
            }
        }
    }
}

#[test]
fn reductions_across_groups_see_every_tensor() {
    let clipped = clipped_adam();
    for (name, backend) in backends() {
        for rule in [clipped.clone(), rule("dog"), rule("prodigy")] {
            let across = |groups: bool| {
                let mut b = Optimizer::builder(rule.clone())
                    .backend(backend.clone())
                    .tensors(TENSORS)
                    .group_reductions(GroupReductions::AcrossGroups);
                if groups {
                    b = b.group(Group::new("biases").tensors(["b*"]));
                }
                b.build().unwrap()
            };
            let label = format!("{} on {name}", rule.name);
            let mut one = across(false);
            let mut two = across(true);
            let (mut a, mut b) = (model(), model());
            step_tensors(&mut one, &mut a, &[0, 1, 2, 3], 0);
            let before = b.clone();
            let stepped = two.step(
                &mut b.iter_mut().map(|p| p.as_mut_slice()).collect::<Vec<_>>(),
                &grads_for(&model(), 0)
                    .iter()
                    .map(Vec::as_slice)
                    .collect::<Vec<_>>(),
            );
            if !backend.runs_plans() {
                let error = stepped.unwrap_err();
                assert!(matches!(error, Error::Unsupported(_)), "{label}: {error}");
                assert_eq!(b, before, "{label}: nothing changed");
                continue;
            }
            stepped.unwrap();
            for step in 1..3 {
                step_tensors(&mut one, &mut a, &[0, 1, 2, 3], step);
                step_tensors(&mut two, &mut b, &[0, 1, 2, 3], step);
            }
            assert!(
                a == b,
                "{label}: two groups of equal values reduce like one"
            );
            if rule.name != "clipped_adam" {
                continue;
            }
            // Per group, the same two groups see less and clip differently.
            let mut per_group = Optimizer::builder(rule.clone())
                .backend(backend.clone())
                .tensors(TENSORS)
                .group(Group::new("biases").tensors(["b*"]))
                .build()
                .unwrap();
            let mut c = model();
            for step in 0..3 {
                step_tensors(&mut per_group, &mut c, &[0, 1, 2, 3], step);
            }
            assert!(a != c, "{label}: per-group reductions differ");
        }
    }
}

#[test]
fn frozen_groups_stay_untouched_and_start_at_their_own_first_step() {
    for (name, backend) in backends() {
        let mut optimizer = builder("adam", &backend, 2)
            .tensors(TENSORS)
            .group(Group::new("biases").tensors(["b1", "b2"]).frozen())
            .build()
            .unwrap();
        let mut params = model();
        let start = params.clone();
        for step in 0..3 {
            step_tensors(&mut optimizer, &mut params, &[0, 1, 2, 3], step);
        }
        assert!(
            params[1] == start[1] && params[3] == start[3],
            "{name}: frozen"
        );
        assert!(params[0] != start[0], "{name}: stepped");
        assert_eq!(optimizer.group_steps("biases").unwrap(), 0);
        assert_eq!(optimizer.group_steps("default").unwrap(), 3);
        // Unfrozen, the biases take their first step (t = 1) while the
        // weights take their fourth, in the same call.
        optimizer.freeze("biases", false).unwrap();
        step_tensors(&mut optimizer, &mut params, &[0, 1, 2, 3], 3);
        let mut fresh = builder("adam", &backend, 1).build().unwrap();
        let mut biases = vec![start[1].clone(), start[3].clone()];
        step_tensors(&mut fresh, &mut biases, &[1, 3], 3);
        assert!(
            params[1] == biases[0] && params[3] == biases[1],
            "{name}: a first step"
        );
        assert_eq!(optimizer.group_steps("biases").unwrap(), 1);

        // Checkpoints record the groups and their step counts.
        let path = temp(&format!("{name}-groups"));
        optimizer.save(&path).unwrap();
        let mut resumed = builder("adam", &backend, 1)
            .group(Group::new("biases").tensors(["b1", "b2"]))
            .build()
            .unwrap();
        resumed.load(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(resumed.group_steps("biases").unwrap(), 1);
        assert_eq!(resumed.group_steps("default").unwrap(), 4);
        let mut again = params.clone();
        step_tensors(&mut optimizer, &mut params, &[0, 1, 2, 3], 4);
        step_tensors(&mut resumed, &mut again, &[0, 1, 2, 3], 4);
        assert!(params == again, "{name}: resumed with groups");
    }
}

/// Steps all of [`TENSORS`] in `params`, those in `without` with no gradient.
fn step_without(
    optimizer: &mut Optimizer,
    params: &mut [Vec<f32>],
    without: &[usize],
    step: u64,
) -> Result<Outcome, Error> {
    let all = grads_for(&model(), step);
    let grads: Vec<Option<&[f32]>> = (0..all.len())
        .map(|t| (!without.contains(&t)).then_some(all[t].as_slice()))
        .collect();
    let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
    optimizer.step_some(&mut views, &grads)
}

#[test]
fn tensors_without_a_gradient_skip_the_step_and_keep_their_own_count() {
    for (name, backend) in backends() {
        let mut optimizer = builder("adam", &backend, 2)
            .tensors(TENSORS)
            .build()
            .unwrap();
        let mut params = model();
        step_without(&mut optimizer, &mut params, &[], 0).unwrap();
        let (before, nu) = (params.clone(), optimizer.state("nu").unwrap());
        step_without(&mut optimizer, &mut params, &[1], 1).unwrap();
        assert_eq!(params[1], before[1], "{name}: skipped tensor unchanged");
        assert_eq!(
            optimizer.state("nu").unwrap()[1],
            nu[1],
            "{name}: its state too"
        );
        assert!(params[0] != before[0], "{name}: the others stepped");
        assert_eq!(optimizer.tensor_steps(), &[2, 1, 2, 2]);

        // Resumed from a checkpoint, the counts (and so the bias
        // corrections) carry on per tensor.
        let path = temp(&format!("{name}-skipped"));
        optimizer.save(&path).unwrap();
        let mut resumed = builder("adam", &backend, 1).build().unwrap();
        resumed.load(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(resumed.tensor_steps(), &[2, 1, 2, 2]);
        let mut again = params.clone();
        step_without(&mut optimizer, &mut params, &[], 2).unwrap();
        step_without(&mut resumed, &mut again, &[], 2).unwrap();
        assert!(params == again, "{name}: resumed");

        // The skipped tensor took its second step (t = 2) with the third
        // gradient: what an optimizer of that tensor alone does.
        let mut alone = builder("adam", &backend, 1).build().unwrap();
        let mut bias = [model()[1].clone()];
        for step in [0, 2] {
            let grad = grads_for(&model(), step)[1].clone();
            alone.step(&mut [bias[0].as_mut_slice()], &[&grad]).unwrap();
        }
        assert_eq!(params[1], bias[0], "{name}: per-tensor bias correction");
        // The others are where three full steps take them.
        let mut full = builder("adam", &backend, 1)
            .tensors(TENSORS)
            .build()
            .unwrap();
        let mut reference = model();
        for step in 0..3 {
            step_without(&mut full, &mut reference, &[], step).unwrap();
        }
        assert!(
            [0, 2, 3].iter().all(|&t| params[t] == reference[t]),
            "{name}: the tensors with gradients"
        );
    }
}

#[test]
fn rules_that_keep_or_reduce_per_group_refuse_a_group_split_by_skipped_steps() {
    let clipped = clipped_adam();
    for (name, backend) in backends() {
        for rule in [rule("prodigy"), clipped.clone()] {
            let label = format!("{} on {name}", rule.name);
            let mut optimizer = Optimizer::builder(rule.clone())
                .backend(backend.clone())
                .tensors(TENSORS)
                .build()
                .unwrap();
            let mut params = model();
            step_without(&mut optimizer, &mut params, &[], 0).unwrap();
            // Skipping a tensor is fine: the others still step together.
            step_without(&mut optimizer, &mut params, &[3], 1).unwrap();
            let (before, steps) = (params.clone(), optimizer.tensor_steps().to_vec());
            let error = step_without(&mut optimizer, &mut params, &[], 2).unwrap_err();
            assert!(matches!(error, Error::Groups(_)), "{label}: {error}");
            assert!(error.to_string().contains("per group"), "{label}: {error}");
            assert_eq!(params, before, "{label}: nothing changed");
            assert_eq!(optimizer.tensor_steps(), steps, "{label}");
        }
    }
}

#[test]
fn a_new_value_for_a_group_takes_effect_at_the_next_step() {
    for (name, backend) in backends() {
        let tensors = [("w", 50), ("b", 5)];
        let mut changed = builder("adamw", &backend, 1)
            .tensors(tensors)
            .group(Group::new("b").tensors(["b"]))
            .build()
            .unwrap();
        let mut scheduled = builder("adamw", &backend, 1)
            .tensors(tensors)
            .group(
                Group::new("b")
                    .tensors(["b"])
                    .set("learning_rate", scalar("if t >= 3 { 0.05 } else { 0.001 }")),
            )
            .build()
            .unwrap();
        let mut a = sized(&[50, 5]);
        let mut b = a.clone();
        steps(&mut changed, &mut a, 0, 2);
        changed.set("b", "learning_rate", 0.05).unwrap();
        steps(&mut changed, &mut a, 2, 4);
        steps(&mut scheduled, &mut b, 0, 4);
        assert!(a == b, "{name}");
    }
}
