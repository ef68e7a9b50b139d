//! Training tasks: small real problems with exact gradients, to see what an
//! optimizer does on more than recorded traces (and, for the search, proxy
//! tasks to score candidates on). Softmax (multinomial logistic) regression
//! and a one-hidden-layer tanh MLP classifier on the UCI datasets shipped in
//! `data/`, full batch, standardised features, deterministic initial
//! parameters (so runs are reproducible). `optc train` drives these.
//! [`network`] adds real models on minibatches (a conv net, a character
//! transformer) whose gradients come from candle.

use optc_runtime::{Error, Optimizer};

pub mod network;

/// A labelled dataset with standardised features.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: &'static str,
    /// One row per example.
    pub features: Vec<Vec<f32>>,
    pub labels: Vec<usize>,
    pub classes: usize,
}

/// The datasets built in: (name, CSV text).
pub const DATASETS: &[(&str, &str)] = &[
    (
        "breast_cancer",
        include_str!("../../data/breast_cancer.csv"),
    ),
    ("iris", include_str!("../../data/iris.csv")),
    ("digits", include_str!("../../data/digits.csv")),
    ("wine", include_str!("../../data/wine.csv")),
];

impl Dataset {
    /// Loads a built-in dataset by name.
    pub fn builtin(name: &str) -> Result<Dataset, String> {
        let (name, text) = DATASETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let known: Vec<&str> = DATASETS.iter().map(|(n, _)| *n).collect();
            format!("unknown task `{name}` (known: {})", known.join(", "))
        })?;
        Dataset::parse(name, text)
    }

    /// Splits the examples in two: every `every`-th one (from the first) is
    /// held out. Returns (training set, held-out set); both keep the
    /// standardisation of the whole set.
    pub fn split(&self, every: usize) -> (Dataset, Dataset) {
        let every = every.max(1);
        let part = |held_out: bool| {
            let keep = |i: &usize| i.is_multiple_of(every) == held_out;
            let indices: Vec<usize> = (0..self.labels.len()).filter(keep).collect();
            self.subset(&indices)
        };
        (part(false), part(true))
    }

    /// The examples at `indices`, in that order (a minibatch).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            name: self.name,
            features: indices.iter().map(|&i| self.features[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes,
        }
    }

    /// Parses scikit-learn's CSV layout: a header `rows,features,class names...`,
    /// then rows of features with the class index last.
    fn parse(name: &'static str, text: &str) -> Result<Dataset, String> {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().ok_or("empty dataset")?.split(',').collect();
        let bad = |what: &str| format!("{name}: {what}");
        let width: usize = header
            .get(1)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| bad("bad header"))?;
        let classes = header.len().saturating_sub(2);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let values: Vec<f32> = line
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad("non-numeric value"))?;
            if values.len() != width + 1 {
                return Err(bad("row of the wrong width"));
            }
            let label = values[width] as usize;
            if label >= classes {
                return Err(bad("label out of range"));
            }
            labels.push(label);
            features.push(values[..width].to_vec());
        }
        standardise(&mut features);
        Ok(Dataset {
            name,
            features,
            labels,
            classes,
        })
    }
}

/// Scales every column to mean 0 and standard deviation 1 (constant columns to 0).
fn standardise(rows: &mut [Vec<f32>]) {
    let Some(width) = rows.first().map(Vec::len) else {
        return;
    };
    let n = rows.len() as f64;
    for column in 0..width {
        let mean = rows.iter().map(|r| f64::from(r[column])).sum::<f64>() / n;
        let var = rows
            .iter()
            .map(|r| (f64::from(r[column]) - mean).powi(2))
            .sum::<f64>()
            / n;
        let scale = if var > 0.0 { 1.0 / var.sqrt() } else { 0.0 };
        for row in rows.iter_mut() {
            row[column] = ((f64::from(row[column]) - mean) * scale) as f32;
        }
    }
}

/// A model trained full batch on a dataset: its parameter tensors and its
/// exact loss and gradient.
pub trait Task {
    fn data(&self) -> &Dataset;
    /// What the model is, for logs (`softmax regression`, `MLP, 32 tanh units`).
    fn describe(&self) -> String;
    fn initial_params(&self) -> Vec<Vec<f32>>;
    /// The parameter tensors' names, in order (torch's style: `linear.weight`),
    /// which parameter groups select tensors by.
    fn tensor_names(&self) -> Vec<String>;
    /// Exact full-batch loss, accuracy and gradient.
    fn evaluate(&self, params: &[Vec<f32>]) -> Evaluation;
}

/// Softmax regression: logits = W x + b, mean cross-entropy loss. Parameters
/// are two tensors: W (classes x features, row-major) and b (classes).
pub struct SoftmaxRegression {
    pub data: Dataset,
}

/// Loss, accuracy and gradient at one point.
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub grads: Vec<Vec<f32>>,
}

impl SoftmaxRegression {
    pub fn new(data: Dataset) -> SoftmaxRegression {
        SoftmaxRegression { data }
    }
}

impl Task for SoftmaxRegression {
    fn data(&self) -> &Dataset {
        &self.data
    }

    fn describe(&self) -> String {
        "softmax regression".into()
    }

    fn tensor_names(&self) -> Vec<String> {
        vec!["linear.weight".into(), "linear.bias".into()]
    }

    /// Zero weights and biases.
    fn initial_params(&self) -> Vec<Vec<f32>> {
        let width = self.data.features.first().map_or(0, Vec::len);
        vec![
            vec![0.0; self.data.classes * width],
            vec![0.0; self.data.classes],
        ]
    }

    /// Exact full-batch loss and gradient (accumulated in f64).
    fn evaluate(&self, params: &[Vec<f32>]) -> Evaluation {
        let (k, n) = (self.data.classes, self.data.features.len());
        let width = self.data.features.first().map_or(0, Vec::len);
        let (w, b) = (&params[0], &params[1]);
        let mut grad_w = vec![0.0f64; k * width];
        let mut grad_b = vec![0.0f64; k];
        let (mut loss, mut correct) = (0.0f64, 0usize);
        for (x, &label) in self.data.features.iter().zip(&self.data.labels) {
            let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let logits = affine(w, b, &x, k);
            let (example_loss, hit, deltas) = cross_entropy(&logits, label);
            loss += example_loss;
            correct += usize::from(hit);
            accumulate_affine(&mut grad_w, &mut grad_b, &deltas, &x);
        }
        let scale = 1.0 / n as f64;
        let to_f32 = |g: Vec<f64>| g.into_iter().map(|v| (v * scale) as f32).collect();
        Evaluation {
            loss: loss * scale,
            accuracy: correct as f64 * scale,
            grads: vec![to_f32(grad_w), to_f32(grad_b)],
        }
    }
}

/// `w x + b` for a row-major `w` of `rows` rows, in f64.
fn affine(w: &[f32], b: &[f32], x: &[f64], rows: usize) -> Vec<f64> {
    let width = x.len();
    (0..rows)
        .map(|r| {
            f64::from(b[r])
                + w[r * width..(r + 1) * width]
                    .iter()
                    .zip(x)
                    .map(|(&wi, &xi)| f64::from(wi) * xi)
                    .sum::<f64>()
        })
        .collect()
}

/// Adds the gradient of an affine map with output cotangents `deltas` at
/// input `x` to `(grad_w, grad_b)`.
fn accumulate_affine(grad_w: &mut [f64], grad_b: &mut [f64], deltas: &[f64], x: &[f64]) {
    let width = x.len();
    for (r, &delta) in deltas.iter().enumerate() {
        grad_b[r] += delta;
        for (g, &xi) in grad_w[r * width..(r + 1) * width].iter_mut().zip(x) {
            *g += delta * xi;
        }
    }
}

/// Cross-entropy of `logits` against `label`: (loss, whether the arg-max is
/// the label, d loss / d logits).
fn cross_entropy(logits: &[f64], label: usize) -> (f64, bool, Vec<f64>) {
    let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = logits.iter().map(|l| (l - top).exp()).sum();
    let loss = top + total.ln() - logits[label];
    let predicted = (0..logits.len())
        .max_by(|&a, &c| logits[a].total_cmp(&logits[c]))
        .unwrap_or(0);
    let deltas = logits
        .iter()
        .enumerate()
        .map(|(c, l)| (l - top).exp() / total - f64::from(u8::from(c == label)))
        .collect();
    (loss, predicted == label, deltas)
}

/// A one-hidden-layer classifier: h = tanh(W1 x + b1), logits = W2 h + b2,
/// mean cross-entropy. Parameters are four tensors: W1 (hidden x features),
/// b1 (hidden), W2 (classes x hidden), b2 (classes); weights start from a
/// fixed pseudo-random draw scaled by 1/sqrt(fan-in), biases at zero.
pub struct Mlp {
    pub data: Dataset,
    pub hidden: usize,
}

impl Task for Mlp {
    fn data(&self) -> &Dataset {
        &self.data
    }

    fn describe(&self) -> String {
        format!("MLP, {} tanh units", self.hidden)
    }

    fn tensor_names(&self) -> Vec<String> {
        [
            "hidden.weight",
            "hidden.bias",
            "output.weight",
            "output.bias",
        ]
        .map(String::from)
        .to_vec()
    }

    fn initial_params(&self) -> Vec<Vec<f32>> {
        let width = self.data.features.first().map_or(0, Vec::len);
        let scaled = |values: Vec<f32>, fan_in: usize| -> Vec<f32> {
            let scale = 1.0 / (fan_in.max(1) as f32).sqrt();
            values.into_iter().map(|v| v * scale).collect()
        };
        let draw = |numel: usize, seed: u64| random_tensors(numel, 1, seed).remove(0);
        vec![
            scaled(draw(self.hidden * width, 7), width),
            vec![0.0; self.hidden],
            scaled(draw(self.data.classes * self.hidden, 8), self.hidden),
            vec![0.0; self.data.classes],
        ]
    }

    fn evaluate(&self, params: &[Vec<f32>]) -> Evaluation {
        let (k, n, hidden) = (self.data.classes, self.data.features.len(), self.hidden);
        let zeros = |i: usize| vec![0.0f64; params[i].len()];
        let (mut w1, mut b1, mut w2, mut b2) = (zeros(0), zeros(1), zeros(2), zeros(3));
        let (mut loss, mut correct) = (0.0f64, 0usize);
        for (x, &label) in self.data.features.iter().zip(&self.data.labels) {
            let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let h: Vec<f64> = affine(&params[0], &params[1], &x, hidden)
                .into_iter()
                .map(f64::tanh)
                .collect();
            let logits = affine(&params[2], &params[3], &h, k);
            let (example_loss, hit, deltas) = cross_entropy(&logits, label);
            loss += example_loss;
            correct += usize::from(hit);
            let back: Vec<f64> = (0..hidden)
                .map(|j| {
                    let through: f64 = (0..k)
                        .map(|c| deltas[c] * f64::from(params[2][c * hidden + j]))
                        .sum();
                    through * (1.0 - h[j] * h[j])
                })
                .collect();
            accumulate_affine(&mut w2, &mut b2, &deltas, &h);
            accumulate_affine(&mut w1, &mut b1, &back, &x);
        }
        let grads = [w1, b1, w2, b2];
        let scale = 1.0 / n as f64;
        Evaluation {
            loss: loss * scale,
            accuracy: correct as f64 * scale,
            grads: grads
                .into_iter()
                .map(|g| g.into_iter().map(|v| (v * scale) as f32).collect())
                .collect(),
        }
    }
}

/// `numel` deterministic values in [-1, 1) (with some exact zeros) split as
/// evenly as possible over `tensors` tensors: the synthetic parameters and
/// gradients that `optc bench` and the criterion benchmarks step over.
pub fn random_tensors(numel: usize, tensors: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..tensors)
        .map(|i| {
            let n = numel / tensors + usize::from(i < numel % tensors);
            (0..n)
                .map(|j| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if j % 23 == 0 {
                        0.0
                    } else {
                        ((state >> 40) as f32) / (1u64 << 23) as f32 - 1.0
                    }
                })
                .collect()
        })
        .collect()
}

/// One line of a training log: the state after `step` steps.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub step: usize,
    pub loss: f64,
    pub accuracy: f64,
}

/// Trains for `steps` full-batch steps, logging every `every` steps and at
/// the end. The optimizer steps the parameters in place.
pub fn train(
    task: &dyn Task,
    optimizer: &mut Optimizer,
    steps: usize,
    every: usize,
) -> Result<Vec<LogLine>, Error> {
    let mut params = task.initial_params();
    let mut log = Vec::new();
    for step in 0..=steps {
        let eval = task.evaluate(&params);
        if step % every.max(1) == 0 || step == steps {
            log.push(LogLine {
                step,
                loss: eval.loss,
                accuracy: eval.accuracy,
            });
        }
        if step == steps {
            break;
        }
        let grads: Vec<&[f32]> = eval.grads.iter().map(Vec::as_slice).collect();
        let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
        optimizer.step(&mut views, &grads)?;
    }
    Ok(log)
}
