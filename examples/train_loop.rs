//! A complete training loop on the optc Rust API (docs/api.md walks through
//! it): a linear classifier on the UCI breast-cancer data, trained with the
//! stdlib's AdamW compiled to fused kernels, biases in their own parameter
//! group without weight decay, a learning-rate change between steps, and a
//! checkpoint resumed mid-run.
//!
//!     cargo run --release --example train_loop

use std::error::Error;

use optc_runtime::{Backend, Group, Optimizer};
use optc_tasks::{Dataset, SoftmaxRegression, Task};

fn main() -> Result<(), Box<dyn Error>> {
    // The model: softmax regression, parameters `linear.weight` and `linear.bias`.
    let task = SoftmaxRegression::new(Dataset::builtin("breast_cancer")?);
    let mut params = task.initial_params();
    let tensors: Vec<(String, usize)> = task
        .tensor_names()
        .into_iter()
        .zip(params.iter().map(Vec::len))
        .collect();

    // The rule: any `.opt` optimizer; here the stdlib's AdamW.
    let rule = optc_stdlib::prelude().compile("adamw")?;
    let build = || {
        Optimizer::builder(rule.clone())
            .set("learning_rate", 0.05)
            .set("weight_decay", 0.01)
            .tensors(tensors.clone())
            .group(
                Group::new("no_decay")
                    .tensors(["*.bias"])
                    .set("weight_decay", 0.0),
            )
            .backend(Backend::fastest())
            .threads(2)
            .build()
    };
    let mut optimizer = build()?;
    println!(
        "{} on the {} backend",
        optimizer.rule().name,
        optimizer.backend()
    );

    let checkpoint = std::env::temp_dir().join("optc-train-loop.safetensors");
    for step in 0..200 {
        let evaluation = task.evaluate(&params);
        if step % 50 == 0 {
            println!(
                "step {step:>3}: loss {:.4}, accuracy {:.1}%",
                evaluation.loss,
                100.0 * evaluation.accuracy
            );
        }
        if step == 100 {
            // Save, then carry on from the saved state in a new optimizer
            // (a checkpoint holds state and step counts, not hyperparameters)...
            optimizer.save(&checkpoint)?;
            optimizer = build()?;
            optimizer.load(&checkpoint)?;
            // ...at half the learning rate in every group: nothing is recompiled.
            for group in ["default", "no_decay"] {
                optimizer.set(group, "learning_rate", 0.025)?;
            }
        }
        let grads: Vec<&[f32]> = evaluation.grads.iter().map(Vec::as_slice).collect();
        let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
        optimizer.step(&mut views, &grads)?;
    }
    let last = task.evaluate(&params);
    println!(
        "after 200 steps: loss {:.4}, accuracy {:.1}%",
        last.loss,
        100.0 * last.accuracy
    );
    std::fs::remove_file(&checkpoint)?;
    Ok(())
}
