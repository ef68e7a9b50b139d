//! The optimizer's contract: hyperparameters bind by name with clear errors
//! (per group too), groups select tensors by name, and a step that fails
//! changes nothing.

mod common;

use common::{rule, scalar};
use optc_runtime::{Backend, Error, Group, Optimizer};

fn adam(sets: &[(&str, &str)]) -> Result<Optimizer, Error> {
    let mut builder = Optimizer::builder(rule("adam"));
    for (name, value) in sets {
        builder = builder.set(*name, scalar(value));
    }
    builder.build()
}

#[test]
fn hyperparameters_bind_by_name_with_defaults() {
    let optimizer = adam(&[("learning_rate", "0.5")]).unwrap();
    assert_eq!(optimizer.hyper_values(), vec![0.5, 0.9, 0.999, 1e-8, 0.0]);
    let scheduled = adam(&[("learning_rate", "0.5 * t")]).unwrap();
    assert_eq!(
        scheduled.hyper_values()[0],
        0.5,
        "evaluated at the next step, t = 1"
    );
}

#[test]
fn binding_errors_name_the_problem() {
    let error = adam(&[("learning_rat", "0.5")]).unwrap_err();
    assert!(
        matches!(&error, Error::UnknownHyper { name, known } if name == "learning_rat" && known.len() == 5)
    );
    assert!(error
        .to_string()
        .contains("this rule has: learning_rate, b1, b2, eps, eps_root"));
    let error = adam(&[("b1", "true")]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "hyperparameter `b1` is a number, not a bool"
    );
    let error = Optimizer::builder(rule("adam"))
        .group(Group::new("bias").tensors(["b"]).set("weight_decy", 0.0))
        .build()
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("unknown hyperparameter `weight_decy`"),
        "{error}"
    );
}

#[test]
fn defaults_follow_the_hyperparameters_before_them() {
    let prodigy = rule("prodigy");
    let beta3 = prodigy.hyper_index("beta3").unwrap();
    let build = |sets: &[(&str, &str)]| {
        let mut builder = Optimizer::builder(prodigy.clone());
        for (name, value) in sets {
            builder = builder.set(*name, scalar(value));
        }
        builder.build().unwrap()
    };
    assert_eq!(build(&[]).hyper_values()[beta3], 0.999f64.sqrt());
    assert_eq!(
        build(&[("beta2", "0.99")]).hyper_values()[beta3],
        0.99f64.sqrt(),
        "beta3 = sqrt(beta2) sees the override"
    );
    assert_eq!(build(&[("beta3", "0.5")]).hyper_values()[beta3], 0.5);
}

#[test]
fn groups_select_tensors_by_name_and_pattern() {
    let mut optimizer = Optimizer::builder(rule("adamw"))
        .tensors([
            ("hidden.weight", 6),
            ("hidden.bias", 3),
            ("output.weight", 3),
            ("output.bias", 1),
        ])
        .group(
            Group::new("no_decay")
                .tensors(["*.bias"])
                .set("weight_decay", 0.0),
        )
        .group(
            Group::new("output")
                .tensors(["output.*"])
                .set("learning_rate", 0.1),
        )
        .build()
        .unwrap();
    let layout = optimizer.layout().unwrap().clone();
    let groups: Vec<usize> = layout.tensors.iter().map(|t| t.group).collect();
    assert_eq!(
        groups,
        [0, 1, 2, 1],
        "the first group that selects a tensor wins"
    );
    assert_eq!(layout.groups, ["default", "no_decay", "output"]);
    assert_eq!(optimizer.hyper_texts("output").unwrap()[0], "0.1");
    optimizer.set("no_decay", "learning_rate", 0.5).unwrap();
    assert_eq!(optimizer.hyper_texts("no_decay").unwrap()[0], "0.5");
    let error = optimizer.set("nope", "learning_rate", 0.5).unwrap_err();
    assert!(error
        .to_string()
        .contains("no group `nope` (groups: default, no_decay, output)"));
    let error = optimizer.set("output", "learning_rate", true).unwrap_err();
    assert_eq!(
        error.to_string(),
        "hyperparameter `learning_rate` is a number, not a bool"
    );
    assert_eq!(
        optimizer.hyper_texts("output").unwrap()[0],
        "0.1",
        "unchanged"
    );
}

#[test]
fn group_mistakes_are_clear_errors() {
    let error =
        |builder: optc_runtime::OptimizerBuilder| builder.build().err().unwrap().to_string();
    let adamw = || Optimizer::builder(rule("adamw")).tensors([("w", 4), ("b", 2)]);
    assert_eq!(
        error(adamw().group(Group::new("x").tensors(["bias"]))),
        "parameter groups: group `x` (bias) selects none of the tensors (w, b)"
    );
    assert_eq!(
        error(adamw().group(Group::new("x"))),
        "parameter groups: group `x` selects no tensors: give it names or patterns"
    );
    assert_eq!(
        error(adamw().group(Group::new("default").tensors(["b"]))),
        "parameter groups: two groups are called `default`"
    );
    assert_eq!(
        error(Optimizer::builder(rule("adamw")).tensors([("w", 4), ("w", 2)])),
        "parameter groups: two tensors are called `w`"
    );
    assert_eq!(
        error(Optimizer::builder(rule("adamw")).threads(0)),
        "a step runs on 1 to 1024 threads, not 0"
    );
    // Anonymous tensors are named by index, and a step that fits no group is refused.
    let mut late = Optimizer::builder(rule("adamw"))
        .group(Group::new("second").tensors(["1"]))
        .build()
        .unwrap();
    let (mut a, mut b) = (vec![1.0f32; 2], vec![2.0f32; 2]);
    let lone = late
        .step(&mut [&mut a[..]], &[&[0.5, 0.5][..]])
        .unwrap_err();
    assert!(lone
        .to_string()
        .contains("group `second` (1) selects none of the tensors (0)"));
    assert_eq!(a, [1.0, 1.0]);
    late.step(
        &mut [&mut a[..], &mut b[..]],
        &[&[0.5; 2][..], &[0.5; 2][..]],
    )
    .unwrap();
    assert_eq!(late.group_steps("second").unwrap(), 1);
}

#[test]
fn declared_tensors_fix_the_sizes_of_every_step() {
    let mut optimizer = Optimizer::builder(rule("sgd"))
        .tensors([("w", 3)])
        .build()
        .unwrap();
    let mut w = [0.0f32; 4];
    let error = optimizer
        .step(&mut [&mut w[..]], &[&[1.0; 4][..]])
        .unwrap_err();
    assert_eq!(
        error,
        Error::Length {
            tensor: 0,
            expected: 3,
            found: 4
        }
    );
}

#[test]
fn owned_parameters_need_an_upload() {
    let mut optimizer = Optimizer::builder(rule("sgd")).build().unwrap();
    let error = optimizer.step_owned::<f32>(&[&[1.0]]).unwrap_err();
    assert!(error.to_string().contains("upload them first"), "{error}");
    assert!(optimizer.params().is_err());
    optimizer.upload::<f32>(&[&[1.0, 2.0]]).unwrap();
    optimizer.step_owned::<f32>(&[&[1.0, 1.0]]).unwrap();
    let lr = optimizer.hyper_values()[0] as f32;
    assert_eq!(optimizer.params().unwrap(), vec![vec![1.0 - lr, 2.0 - lr]]);
    let mut out = vec![0.0f32; 2];
    optimizer.download_into(&mut [&mut out[..]]).unwrap();
    assert_eq!(out, [1.0 - lr, 2.0 - lr]);
}

#[test]
fn glob_patterns_match_as_documented() {
    use optc_runtime::glob_match;
    for (pattern, name, matches) in [
        ("*.bias", "hidden.bias", true),
        ("*.bias", "hidden.bias2", false),
        ("hidden.*", "hidden.weight", true),
        ("?", "1", true),
        ("?", "12", false),
        ("*", "", true),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "aXXbYY", false),
        ("w", "w", true),
        ("w", "w1", false),
    ] {
        assert_eq!(glob_match(pattern, name), matches, "{pattern} vs {name}");
    }
}

#[test]
fn optimizers_saved_from_many_threads_at_once_keep_their_own_state() {
    let dir = std::env::temp_dir().join(format!("optc-save-race-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::thread::scope(|scope| {
        for writer in 0..8u64 {
            let dir = &dir;
            scope.spawn(move || {
                let mut optimizer = Optimizer::builder(rule("adam")).build().unwrap();
                let mut params = vec![common::values(50, writer)];
                for round in 0..25 {
                    common::steps(&mut optimizer, &mut params, round, round + 1);
                    let path = dir.join(format!("opt.g{writer}"));
                    optimizer.save(&path).unwrap();
                    let mut loaded = Optimizer::builder(rule("adam")).build().unwrap();
                    loaded.load(&path).unwrap();
                    assert_eq!(loaded.state("mu"), optimizer.state("mu"), "writer {writer}");
                    assert_eq!(loaded.steps_taken(), round + 1);
                }
            });
        }
    });
    let left = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(left, 8, "one file per writer, no temporary left");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bytes` (a checkpoint) with `from` replaced by `to` in its JSON header,
/// and its checksum made right again: damage the checksum cannot see.
fn rewrite_header(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + len].to_vec()).unwrap();
    assert!(header.contains(from), "{from} in {header}");
    let header = header.replace(from, to);
    let start = header.find("\"checksum\":\"").unwrap() + 12;
    let zeroed = format!(
        "{}0000000000000000{}",
        &header[..start],
        &header[start + 16..]
    );
    let mut out = (zeroed.len() as u64).to_le_bytes().to_vec();
    out.extend(zeroed.as_bytes());
    out.extend(&bytes[8 + len..]);
    let sum = format!("{:016x}", optc_runtime::files::checksum(&out));
    out[8 + start..8 + start + 16].copy_from_slice(sum.as_bytes());
    out
}

#[test]
fn checkpoints_with_impossible_records_are_refused() {
    let path = common::temp("impossible");
    let mut optimizer = Optimizer::builder(rule("adam")).build().unwrap();
    let mut params = vec![common::values(4, 1)];
    common::steps(&mut optimizer, &mut params, 0, 2);
    optimizer.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    for (from, to, message) in [
        // The records are JSON text inside the metadata's strings: quotes escaped.
        (
            r#"\"steps\":2"#,
            r#"\"steps\":18446744073709551615"#,
            "more than a checkpoint can hold",
        ),
        (
            r#"\"numel\":4"#,
            r#"\"numel\":1000000000000000"#,
            "the optimizer's state needs about",
        ),
        (
            r#"\"numel\":4"#,
            r#"\"numel\":5"#,
            "has dtype F32 and shape [4], expected F32 [5]",
        ),
    ] {
        std::fs::write(&path, rewrite_header(&good, from, to)).unwrap();
        let mut fresh = Optimizer::builder(rule("adam")).build().unwrap();
        let error = fresh.load(&path).unwrap_err().to_string();
        assert!(error.contains(message), "{to}: {error}");
        assert!(
            fresh.layout().is_none() && fresh.steps_taken() == 0,
            "{to}: nothing changed"
        );
    }
    // A group that has not stepped has no state in the file: its tensors'
    // state would be allocated as zeros, and is checked against memory first.
    let unstepped = rewrite_header(&good, r#"\"steps\":2"#, r#"\"steps\":0"#);
    std::fs::write(
        &path,
        rewrite_header(
            &unstepped,
            r#"\"numel\":4"#,
            r#"\"numel\":1000000000000000"#,
        ),
    )
    .unwrap();
    let mut fresh = Optimizer::builder(rule("adam")).build().unwrap();
    let error = fresh.load(&path).unwrap_err().to_string();
    assert!(
        error.contains("the optimizer's state needs about"),
        "{error}"
    );
    std::fs::remove_file(&path).ok();
}

/// Per-row and per-column state (Adafactor's) is one number per row and
/// column of each declared shape; a checkpoint keeps the shapes, resumes bit
/// for bit, and refuses an optimizer whose tensors have other shapes.
#[test]
fn matrix_shaped_state_checkpoints_with_its_shapes() {
    let shapes = [("w", vec![3usize, 4]), ("b", vec![5])];
    let build = |shapes: &[(&str, Vec<usize>)]| {
        Optimizer::builder(rule("adafactor"))
            .shaped_tensors(shapes.to_vec())
            .build()
            .unwrap()
    };
    let mut optimizer = build(&shapes);
    let mut params = common::sized_values(&[12, 5]);
    common::steps(&mut optimizer, &mut params, 0, 2);
    let lengths = |name: &str, optimizer: &Optimizer| -> Vec<usize> {
        optimizer
            .state(name)
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect()
    };
    assert_eq!(lengths("row_var", &optimizer), vec![3, 1]);
    assert_eq!(lengths("col_var", &optimizer), vec![4, 5]);
    let path = common::temp("matrix-state");
    optimizer.save(&path).unwrap();
    let mut resumed = build(&shapes);
    resumed.load(&path).unwrap();
    let mut resumed_params = params.clone();
    common::steps(&mut optimizer, &mut params, 2, 4);
    common::steps(&mut resumed, &mut resumed_params, 2, 4);
    assert_eq!(params, resumed_params);
    // The same sizes as other shapes: refused, and nothing changes.
    let mut other = build(&[("w", vec![4, 3]), ("b", vec![5])]);
    let message = other.load(&path).unwrap_err().to_string();
    assert!(
        message.contains("checkpoint tensors w (3 x 4, group default)")
            && message.contains("this optimizer's w (4 x 3, group default)"),
        "{message}"
    );
    assert_eq!(lengths("row_var", &other), vec![4, 1]);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn host_backends_hold_no_gradients() {
    let backend = Backend::named("reference").unwrap();
    let mut optimizer = common::builder("adam", &backend, 1).build().unwrap();
    let params = common::sized_values(&[4]);
    let views: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
    optimizer.upload(&views).unwrap();
    let error = optimizer.upload_gradients(&views).unwrap_err();
    assert!(error.to_string().contains("device backend"), "{error}");
}
