//! Real models trained on minibatches: a small convolutional network on the
//! digits images and a one-layer character-level transformer on Cicero's
//! text, built on candle (its CPU backend and its reverse-mode autodiff).
//! The exact full-batch models of the crate root cannot show what
//! optimizers differ in most, noisy gradients of many differently scaled
//! tensors; these can.
//!
//! Every parameter tensor of a model is a view into one flat candle `Var`,
//! so backpropagation yields one flat gradient, and a step hands both
//! buffers to an [`Optimizer`] through a candle in-place op: the compiled
//! kernel reads the gradient and writes the parameters where candle keeps
//! them, with no copy in or out.

use std::cell::RefCell;

use candle_core::{backend::BackendStorage, CpuStorage, Device, InplaceOp2, Layout, Tensor, Var};
use optc_runtime::{Error, Optimizer};

use crate::{random_tensors, Dataset};

/// The text the character-level model learns: book I of Cicero's *De
/// finibus bonorum et malorum* (45 BC, public domain), as shipped in the
/// `lipsum` crate (see data/README.md).
pub const LIBER_PRIMUS: &str = include_str!("../../data/liber-primus.txt");

/// What a network computes (its parameters come from the flat buffer), with
/// the constants its forward pass needs, built once per network.
#[derive(Debug)]
enum Architecture {
    /// 8x8 single-channel images: two 3x3 convolutions with stride 2
    /// (padding 1; 8x8 to 4x4 to 2x2) and ReLU, no pooling (an
    /// all-convolutional net; candle's max pooling passes the gradient to
    /// every input of a tied window, and the standardised digits' constant
    /// background makes ties common), channels last, then a linear layer to
    /// the logits. `patches` holds each convolution's gather indices (see
    /// [`patch_indices`]).
    ConvNet { patches: [Tensor; 2] },
    /// A one-layer pre-norm transformer over `context` characters: token
    /// and position embeddings of width `width`, one causal attention head
    /// (`causal_mask` is added to its scores), a ReLU MLP four times wider,
    /// RMS norms with learnt gains, and a linear read-out to one logit per
    /// symbol and position.
    CharTransformer {
        context: usize,
        width: usize,
        causal_mask: Tensor,
    },
}

/// One named parameter tensor: its shape and its offset in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl Slot {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Where the tensor lies in the flat buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// Inputs and targets of one minibatch, or of the held-out set.
#[derive(Clone, Debug)]
struct Batch {
    inputs: Tensor,
    targets: Tensor,
}

/// A model, its data in a fixed order, and its initial parameters.
#[derive(Debug)]
pub struct Network {
    architecture: Architecture,
    pub slots: Vec<Slot>,
    initial: Vec<f32>,
    batches: Vec<Batch>,
    held_out: Batch,
    about: String,
}

fn candle(error: candle_core::Error) -> String {
    format!("candle: {error}")
}

impl Network {
    /// The convolutional network on `train`'s images, one minibatch per
    /// entry of `order` (indices into `train`), judged on `held_out`.
    /// Both datasets must have 64 features (8x8 images).
    pub fn conv_net(
        train: &Dataset,
        held_out: &Dataset,
        order: &[Vec<usize>],
        channels: usize,
    ) -> Result<Network, String> {
        let classes = train.classes;
        for data in [train, held_out] {
            if data.features.iter().any(|row| row.len() != 64) {
                return Err(format!(
                    "{}: the conv net needs 8x8 images (64 features)",
                    data.name
                ));
            }
        }
        let images = |data: &Dataset, indices: &[usize]| -> Result<Batch, String> {
            let pixels: Vec<f32> = indices
                .iter()
                .flat_map(|&i| data.features[i].iter().copied())
                .collect();
            let labels: Vec<u32> = indices.iter().map(|&i| data.labels[i] as u32).collect();
            Ok(Batch {
                inputs: Tensor::from_vec(pixels, (indices.len(), 8, 8, 1), &Device::Cpu)
                    .map_err(candle)?,
                targets: Tensor::from_vec(labels, indices.len(), &Device::Cpu).map_err(candle)?,
            })
        };
        let batches = order
            .iter()
            .map(|indices| images(train, indices))
            .collect::<Result<_, _>>()?;
        let all: Vec<usize> = (0..held_out.labels.len()).collect();
        let wide = 2 * channels;
        Network::new(
            Architecture::ConvNet {
                patches: [
                    patch_indices(8, 1).map_err(candle)?,
                    patch_indices(4, channels).map_err(candle)?,
                ],
            },
            &[
                ("conv1.weight", vec![channels, 1, 3, 3], 9),
                ("conv1.bias", vec![channels], 0),
                ("conv2.weight", vec![wide, channels, 3, 3], 9 * channels),
                ("conv2.bias", vec![wide], 0),
                ("output.weight", vec![classes, 4 * wide], 4 * wide),
                ("output.bias", vec![classes], 0),
            ],
            batches,
            images(held_out, &all)?,
            format!(
                "conv net ({channels} and {wide} channels) on {} ({} images)",
                train.name,
                train.labels.len()
            ),
        )
    }

    /// The character transformer on `text`: its first nine tenths are
    /// training windows of `context + 1` characters starting every
    /// `context` characters (window `i` starts at `i * context`), one
    /// minibatch per entry of `order` (window indices, see
    /// [`Network::text_windows`]); the last tenth, in whole windows, is the
    /// held-out set.
    pub fn char_transformer(
        text: &str,
        order: &[Vec<usize>],
        context: usize,
        width: usize,
    ) -> Result<Network, String> {
        let (vocabulary, codes) = encode(text);
        let split = codes.len() * 9 / 10;
        let (train, held_out) = codes.split_at(split);
        let windows = |codes: &[u32],
                       starts: &mut dyn Iterator<Item = usize>|
         -> Result<Batch, String> {
            let (mut inputs, mut targets) = (Vec::new(), Vec::new());
            let mut rows = 0;
            for start in starts {
                let window = codes
                    .get(start..start + context + 1)
                    .ok_or_else(|| format!("window at {start} is past the text's end"))?;
                inputs.extend_from_slice(&window[..context]);
                targets.extend_from_slice(&window[1..]);
                rows += 1;
            }
            Ok(Batch {
                inputs: Tensor::from_vec(inputs, (rows, context), &Device::Cpu).map_err(candle)?,
                targets: Tensor::from_vec(targets, rows * context, &Device::Cpu).map_err(candle)?,
            })
        };
        let batches = order
            .iter()
            .map(|indices| windows(train, &mut indices.iter().map(|i| i * context)))
            .collect::<Result<_, _>>()?;
        let held_out_windows = Network::text_windows(held_out.len(), context);
        let held_out = windows(held_out, &mut (0..held_out_windows).map(|i| i * context))?;
        let hidden = 4 * width;
        Network::new(
            Architecture::CharTransformer {
                context,
                width,
                causal_mask: causal_mask(context).map_err(candle)?,
            },
            &[
                ("embedding.token", vec![vocabulary, width], 1),
                ("embedding.position", vec![context, width], 1),
                ("attention.norm", vec![width], 0),
                ("attention.query", vec![width, width], width),
                ("attention.key", vec![width, width], width),
                ("attention.value", vec![width, width], width),
                ("attention.output", vec![width, width], width),
                ("mlp.norm", vec![width], 0),
                ("mlp.up.weight", vec![width, hidden], width),
                ("mlp.up.bias", vec![hidden], 0),
                ("mlp.down.weight", vec![hidden, width], hidden),
                ("mlp.down.bias", vec![width], 0),
                ("output.norm", vec![width], 0),
                ("output.weight", vec![width, vocabulary], width),
                ("output.bias", vec![vocabulary], 0),
            ],
            batches,
            held_out,
            format!(
                "1-layer transformer, width {width}, {context} characters of context, {vocabulary} symbols"
            ),
        )
    }

    /// Training windows of `context + 1` characters in a text of `length`
    /// characters, starting every `context` characters.
    pub fn text_windows(length: usize, context: usize) -> usize {
        if length <= context {
            0
        } else {
            (length - 1) / context.max(1)
        }
    }

    /// Windows of the training part (the first nine tenths) of `text`.
    pub fn training_windows(text: &str, context: usize) -> usize {
        Network::text_windows(encode(text).1.len() * 9 / 10, context)
    }

    /// Lays out `tensors` (name, shape, fan-in) in one flat buffer: weights
    /// drawn deterministically and scaled by 1/sqrt(fan-in) (embeddings by
    /// 1), norm gains at 1 (fan-in 0 and a `norm` name), biases at 0.
    fn new(
        architecture: Architecture,
        tensors: &[(&str, Vec<usize>, usize)],
        batches: Vec<Batch>,
        held_out: Batch,
        about: String,
    ) -> Result<Network, String> {
        if batches.is_empty() {
            return Err("a network task needs at least one minibatch".into());
        }
        let mut slots = Vec::new();
        let mut initial = Vec::new();
        for (seed, (name, shape, fan_in)) in tensors.iter().enumerate() {
            let numel: usize = shape.iter().product();
            slots.push(Slot {
                name: name.to_string(),
                shape: shape.clone(),
                offset: initial.len(),
            });
            if *fan_in == 0 {
                let value = if name.ends_with("norm") { 1.0 } else { 0.0 };
                initial.extend(std::iter::repeat_n(value, numel));
            } else {
                let scale = 1.0 / (*fan_in as f32).sqrt();
                let draw = random_tensors(numel, 1, 100 + seed as u64).remove(0);
                initial.extend(draw.into_iter().map(|v| v * scale));
            }
        }
        Ok(Network {
            architecture,
            slots,
            initial,
            batches,
            held_out,
            about,
        })
    }

    /// What the network is, for logs.
    pub fn describe(&self) -> &str {
        &self.about
    }

    /// Parameters in all.
    pub fn numel(&self) -> usize {
        self.initial.len()
    }

    /// The parameter tensors' names, in order.
    pub fn tensor_names(&self) -> Vec<String> {
        self.slots.iter().map(|slot| slot.name.clone()).collect()
    }

    /// The parameters before training, tensor by tensor.
    pub fn initial_params(&self) -> Vec<Vec<f32>> {
        self.split(&self.initial)
    }

    /// A flat buffer's tensors.
    fn split(&self, flat: &[f32]) -> Vec<Vec<f32>> {
        self.slots
            .iter()
            .map(|slot| flat[slot.range()].to_vec())
            .collect()
    }

    /// Minibatches in the data order.
    pub fn steps(&self) -> usize {
        self.batches.len()
    }

    /// The training loss on minibatch `step` (the last one past the end)
    /// and its gradient, tensor by tensor, at `params` (copied in: for
    /// checks and inspection; training steps candle's own buffer, see
    /// [`NetworkRun`]).
    pub fn evaluate(
        &self,
        params: &[Vec<f32>],
        step: usize,
    ) -> Result<(f64, Vec<Vec<f32>>), String> {
        if params.len() != self.slots.len()
            || params
                .iter()
                .zip(&self.slots)
                .any(|(p, slot)| p.len() != slot.numel())
        {
            return Err("parameters of other shapes than the network's".into());
        }
        let mut run = self.run_from(params.concat())?;
        let loss = run.loss(step)?;
        let gradient = run
            .gradient
            .map(|g| g.to_vec1::<f32>())
            .transpose()
            .map_err(candle)?;
        let gradient = gradient.ok_or("candle returned no gradient")?;
        Ok((loss, self.split(&gradient)))
    }

    /// A training run from the initial parameters.
    pub fn start(&self) -> Result<NetworkRun<'_>, String> {
        self.run_from(self.initial.clone())
    }

    /// A run from the flat parameters `flat`.
    fn run_from(&self, flat: Vec<f32>) -> Result<NetworkRun<'_>, String> {
        let params = Var::from_vec(flat, self.initial.len(), &Device::Cpu).map_err(candle)?;
        Ok(NetworkRun {
            network: self,
            params,
            gradient: None,
        })
    }

    /// Mean cross-entropy of the network with parameters `flat` on `batch`.
    fn loss(&self, flat: &Tensor, batch: &Batch) -> candle_core::Result<Tensor> {
        let param = |name: &str| -> candle_core::Result<Tensor> {
            let slot = self
                .slots
                .iter()
                .find(|slot| slot.name == name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no parameter {name}")))?;
            flat.narrow(0, slot.offset, slot.numel())?
                .reshape(slot.shape.as_slice())
        };
        let logits = match &self.architecture {
            Architecture::ConvNet { patches } => {
                let block =
                    |x: &Tensor, layer: &str, patches: &Tensor| -> candle_core::Result<Tensor> {
                        let kernel = param(&format!("{layer}.weight"))?;
                        convolve_3x3_stride_2(x, patches, &kernel.reshape((kernel.dim(0)?, ()))?)?
                            .broadcast_add(&param(&format!("{layer}.bias"))?)?
                            .relu()
                    };
                let features = block(
                    &block(&batch.inputs, "conv1", &patches[0])?,
                    "conv2",
                    &patches[1],
                )?
                .flatten_from(1)?;
                features
                    .matmul(&param("output.weight")?.t()?)?
                    .broadcast_add(&param("output.bias")?)?
            }
            Architecture::CharTransformer {
                context,
                width,
                causal_mask,
            } => {
                let (context, width) = (*context, *width);
                let rows = batch.inputs.dim(0)?;
                let tokens = param("embedding.token")?
                    .index_select(&batch.inputs.flatten_all()?, 0)?
                    .reshape((rows, context, width))?;
                let x = tokens.broadcast_add(&param("embedding.position")?)?;
                let x = x.reshape((rows * context, width))?;
                let attended = attention(
                    &rms_norm(&x, &param("attention.norm")?)?,
                    rows,
                    causal_mask,
                    &param,
                )?;
                let x = (x + attended)?;
                let h = rms_norm(&x, &param("mlp.norm")?)?
                    .matmul(&param("mlp.up.weight")?)?
                    .broadcast_add(&param("mlp.up.bias")?)?
                    .relu()?
                    .matmul(&param("mlp.down.weight")?)?
                    .broadcast_add(&param("mlp.down.bias")?)?;
                let x = (x + h)?;
                rms_norm(&x, &param("output.norm")?)?
                    .matmul(&param("output.weight")?)?
                    .broadcast_add(&param("output.bias")?)?
            }
        };
        cross_entropy(&logits, &batch.targets)
    }
}

/// One causal attention head over `rows` sequences of `x` (flattened to
/// positions x width), projected back to the width.
fn attention(
    x: &Tensor,
    rows: usize,
    causal_mask: &Tensor,
    param: &dyn Fn(&str) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let (context, width) = x
        .dims2()
        .map(|(positions, width)| (positions / rows, width))?;
    let project = |name: &str| -> candle_core::Result<Tensor> {
        x.matmul(&param(name)?)?.reshape((rows, context, width))
    };
    let (q, k, v) = (
        project("attention.query")?,
        project("attention.key")?,
        project("attention.value")?,
    );
    let scores = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? / (width as f64).sqrt())?;
    let weights = softmax_last(&scores.broadcast_add(causal_mask)?)?;
    weights
        .matmul(&v)?
        .reshape((rows * context, width))?
        .matmul(&param("attention.output")?)
}

/// `-inf` above the diagonal of a `context` x `context` matrix, 0 elsewhere:
/// position `i` attends to positions up to `i`.
fn causal_mask(context: usize) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..context * context)
        .map(|i| {
            if i % context > i / context {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(mask, (context, context), &Device::Cpu)
}

/// The gather indices of a 3x3 convolution with stride 2 and zero padding 1
/// over channels-last `side` x `side` images (an even side) of `channels`
/// channels, padded to `side + 2`: for each output position, its patch's
/// entries in torch's channel, row, column order.
fn patch_indices(side: usize, channels: usize) -> candle_core::Result<Tensor> {
    let (padded, out) = (side + 2, side / 2);
    let patches: Vec<u32> = (0..out * out)
        .flat_map(|position| {
            let (y, x) = (2 * (position / out), 2 * (position % out));
            (0..channels * 9).map(move |entry| {
                let (c, ky, kx) = (entry / 9, entry % 9 / 3, entry % 3);
                (((y + ky) * padded + x + kx) * channels + c) as u32
            })
        })
        .collect();
    let count = patches.len();
    Tensor::from_vec(patches, count, &Device::Cpu)
}

/// A 3x3 convolution with stride 2 and zero padding 1 of channels-last
/// images `x` (rows x side x side x channels) by `kernel` (outputs x
/// channels*9), as one matrix product of the patches gathered by `patches`
/// ([`patch_indices`] for the images' side and channels): rows x side/2 x
/// side/2 x outputs. (candle's own conv2d backward runs a direct loop that
/// made a step of this network 3x slower.)
fn convolve_3x3_stride_2(
    x: &Tensor,
    patches: &Tensor,
    kernel: &Tensor,
) -> candle_core::Result<Tensor> {
    let (rows, side, _, channels) = x.dims4()?;
    let (padded, out) = (side + 2, side / 2);
    x.pad_with_zeros(1, 1, 1)?
        .pad_with_zeros(2, 1, 1)?
        .reshape((rows, padded * padded * channels))?
        .index_select(patches, 1)?
        .reshape((rows * out * out, channels * 9))?
        .matmul(&kernel.t()?)?
        .reshape((rows, out, out, ()))
}

/// `x / sqrt(mean(x^2) + 1e-6) * gain` over the last dimension.
fn rms_norm(x: &Tensor, gain: &Tensor) -> candle_core::Result<Tensor> {
    let scale = (x.sqr()?.mean_keepdim(1)? + 1e-6)?.sqrt()?;
    x.broadcast_div(&scale)?.broadcast_mul(gain)
}

/// Softmax over the last dimension, stabilised by the row maximum.
fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let last = x.rank() - 1;
    let shifted = x.broadcast_sub(&x.max_keepdim(last)?.detach())?.exp()?;
    shifted.broadcast_div(&shifted.sum_keepdim(last)?)
}

/// Mean cross-entropy of `logits` (rows x classes) against `targets`.
fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let top = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&top)?;
    let log_total = shifted.exp()?.sum_keepdim(1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    (log_total - picked)?.mean_all()
}

/// The symbols of `text` (sorted) and the text as indices into them.
fn encode(text: &str) -> (usize, Vec<u32>) {
    let mut symbols: Vec<char> = text.chars().collect();
    symbols.sort_unstable();
    symbols.dedup();
    let codes = text
        .chars()
        .map(|c| symbols.binary_search(&c).unwrap_or(0) as u32)
        .collect();
    (symbols.len(), codes)
}

/// A training run: the parameters (one flat candle variable) and the
/// gradient of the last loss.
pub struct NetworkRun<'a> {
    network: &'a Network,
    params: Var,
    gradient: Option<Tensor>,
}

impl NetworkRun<'_> {
    /// The training loss on minibatch `step` (from 0; the last one again
    /// past the end), keeping its gradient for [`NetworkRun::step`].
    pub fn loss(&mut self, step: usize) -> Result<f64, String> {
        let batches = &self.network.batches;
        let batch = &batches[step.min(batches.len() - 1)];
        let loss = self
            .network
            .loss(self.params.as_tensor(), batch)
            .map_err(candle)?;
        let gradients = loss.backward().map_err(candle)?;
        self.gradient = gradients.get(self.params.as_tensor()).map(Tensor::detach);
        loss.to_scalar::<f32>().map(f64::from).map_err(candle)
    }

    /// The loss on the held-out set.
    pub fn held_out_loss(&self) -> Result<f64, String> {
        let params = self.params.as_tensor().detach();
        let loss = self.network.loss(&params, &self.network.held_out);
        loss.and_then(|loss| loss.to_scalar::<f32>())
            .map(f64::from)
            .map_err(candle)
    }

    /// One step of `optimizer` with the last loss's gradient, in place on
    /// candle's parameter buffer. On an error nothing has changed.
    pub fn step(&mut self, optimizer: &mut Optimizer) -> Result<(), String> {
        let gradient = self
            .gradient
            .take()
            .ok_or("no gradient: compute a loss before a step")?;
        let apply = ApplyStep {
            optimizer: RefCell::new(optimizer),
            slots: &self.network.slots,
            outcome: RefCell::new(Ok(())),
        };
        self.params
            .as_tensor()
            .inplace_op2(&gradient, &apply)
            .map_err(candle)?;
        apply.outcome.into_inner().map_err(|e| e.to_string())
    }

    /// The current parameters, tensor by tensor (a copy, for inspection).
    pub fn params(&self) -> Result<Vec<Vec<f32>>, String> {
        let flat = self.params.as_tensor().to_vec1::<f32>().map_err(candle)?;
        Ok(self.network.split(&flat))
    }
}

/// The optimizer step as a candle in-place op on (parameters, gradient).
struct ApplyStep<'a, 'o> {
    optimizer: RefCell<&'o mut Optimizer>,
    slots: &'a [Slot],
    outcome: RefCell<Result<(), Error>>,
}

impl InplaceOp2 for ApplyStep<'_, '_> {
    fn name(&self) -> &'static str {
        "optc-step"
    }

    fn cpu_fwd(
        &self,
        params: &mut CpuStorage,
        params_layout: &Layout,
        gradient: &CpuStorage,
        gradient_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(params), CpuStorage::F32(gradient)) = (params, gradient) else {
            candle_core::bail!(
                "parameters and gradient must be f32 (not {:?})",
                gradient.dtype()
            );
        };
        let range = |layout: &Layout| {
            layout
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("a strided buffer".into()))
        };
        let (params_start, params_end) = range(params_layout)?;
        let (gradient_start, gradient_end) = range(gradient_layout)?;
        if params_end - params_start != gradient_end - gradient_start {
            candle_core::bail!("the gradient's length differs from the parameters'");
        }
        let mut rest = &mut params[params_start..params_end];
        let gradient = &gradient[gradient_start..gradient_end];
        let mut views = Vec::with_capacity(self.slots.len());
        let mut grads = Vec::with_capacity(self.slots.len());
        for slot in self.slots {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(slot.numel());
            views.push(head);
            rest = tail;
            grads.push(&gradient[slot.range()]);
        }
        let outcome = self.optimizer.borrow_mut().step::<f32>(&mut views, &grads);
        *self.outcome.borrow_mut() = outcome.map(drop);
        Ok(())
    }
}
