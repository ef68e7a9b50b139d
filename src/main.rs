//! `optc`: a thin command-line interface over the optc libraries. Every
//! command exits 0 on success and 1 on a user error (with a diagnostic on
//! stderr); it never panics on bad input.

mod bench;
mod build;
mod commands;
mod derive;
mod diff;
mod load;
mod plot;
mod run;
mod search;

use std::process::ExitCode;

use bench::Dtype;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "optc",
    version,
    about = "A language and compiler for neural-network optimizers",
    long_about = "optc compiles update rules written in .opt files (hyperparameters, state, \
                  the statements of one step) into fused kernels and runs them; it also \
                  differentiates them (hypergradient variants, adjoints) and trains \
                  objectives with symbolic gradients.\n\n\
                  Wherever a FILE is expected you may also name a standard-library optimizer \
                  (`optc show adam`); `optc list` shows them all.",
    after_help = "Examples:\n  optc check my_rule.opt\n  optc show adamw --ir\n  \
                  optc replay lion --trace tests/golden/lion.json --set learning_rate=0.001 --compare\n  \
                  optc train adamw --steps 300\n  optc bench adam --threads 2\n  \
                  optc derive hypergrad --multiplicative sgd -o hd_sgd.opt"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and type-check .opt files, each on its own against the standard library;
    /// print diagnostics and exit 1 on any error.
    #[command(after_help = "Example:\n  optc check stdlib/adam.opt my_rule.opt")]
    Check {
        /// .opt files (or standard-library optimizer names).
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Show an optimizer's signature: hyperparameters with defaults, state and
    /// its memory per parameter, and optionally its typed IR.
    #[command(
        after_help = "Examples:\n  optc show adam\n  optc show my_rule.opt --rule my_adam --ir\n  \
                      optc show lamb --plan\n  optc show adam --adjoint"
    )]
    Show {
        /// An .opt file or a standard-library optimizer name.
        file: String,
        /// Which optimizer of the file (default: the last one).
        #[arg(long)]
        rule: Option<String>,
        /// Also print the typed IR.
        #[arg(long)]
        ir: bool,
        /// Also print the pass plan: the fused kernels one step runs, what each
        /// loads, stores and accumulates.
        #[arg(long)]
        plan: bool,
        /// Print instead the adjoint of a step (its vector-Jacobian product)
        /// as an .opt rule, with its state layout.
        #[arg(long, conflicts_with_all = ["ir", "plan"])]
        adjoint: bool,
    },
    /// Run a rule over recorded gradients (a trace in the golden-file schema:
    /// tensors[].p0, tensors[].grads) and write the trace with params filled in.
    #[command(
        after_help = "Examples:\n  optc replay adam --trace tests/golden/adam.json --compare\n  \
                  optc replay my_rule.opt --trace grads.json --set learning_rate=1e-3 --out result.json\n  \
                  optc replay sgd --trace t.json --set 'learning_rate=cosine_decay(0.1, 1000)'"
    )]
    Replay {
        /// An .opt file or a standard-library optimizer name.
        file: String,
        /// The trace to replay (JSON).
        #[arg(long)]
        trace: String,
        /// Which optimizer of the file (default: the last one).
        #[arg(long)]
        rule: Option<String>,
        /// Set a hyperparameter: `name=value`, where value is a number, `true`/`false`,
        /// or a schedule such as `warmup_cosine_decay(0, 1e-3, 100, 1000)`. Repeatable.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Where to write the result (default: standard output unless --compare is given).
        #[arg(long)]
        out: Option<String>,
        /// Compare the result with the params recorded in the trace and print the error.
        #[arg(long)]
        compare: bool,
        /// With --compare: exit with status 1 when the max error exceeds this
        /// (`|ours - ref| / max(|ref|, 1)`; the golden tests use 1e-5).
        #[arg(long, value_name = "ERROR")]
        tolerance: Option<f64>,
        /// Run the interpreter with elementwise values in f64 instead of f32
        /// (checking mode: shows how much of a difference from the trace is f32
        /// rounding). Implies `--backend interp`.
        #[arg(long = "f64")]
        f64_elements: bool,
        #[command(flatten)]
        execution: load::Execution,
    },
    /// Train a small task on real data with a rule and print the loss curve:
    /// softmax regression or a tanh MLP on a UCI dataset shipped with optc, full batch.
    /// The rule runs as fused kernels compiled by the fastest backend here (tiered
    /// Cranelift and LLVM in builds with LLVM, else Cranelift, unless --backend says
    /// otherwise); the output names the backend.
    #[command(
        after_help = "Tensors are named as in torch: `linear.weight`, `linear.bias` for softmax \
                      regression; `hidden.weight`, `hidden.bias`, `output.weight`, `output.bias` \
                      for the MLP.\n\n\
                      Examples:\n  optc train\n  optc train lion --set learning_rate=1e-3 --steps 300\n  \
                  optc train my_rule.opt --task iris --every 10\n  \
                  optc train adam --task digits --hidden 32 --set learning_rate=0.01\n  \
                  optc train adamw --hidden 16 --group '*.bias:weight_decay=0'\n  \
                  optc train adam --backend interp"
    )]
    Train {
        /// An .opt file or a standard-library optimizer name.
        #[arg(default_value = "adam")]
        file: String,
        /// Which optimizer of the file (default: the last one).
        #[arg(long)]
        rule: Option<String>,
        /// The dataset: `breast_cancer` (569 x 30, 2 classes), `iris` (150 x 4, 3),
        /// `digits` (1797 x 64, 10) or `wine` (178 x 13, 3).
        #[arg(long, default_value = "breast_cancer")]
        task: String,
        /// Hidden tanh units of an MLP classifier; 0 (the default) trains softmax regression.
        #[arg(long, default_value_t = 0)]
        hidden: usize,
        /// Number of optimizer steps.
        #[arg(long, default_value_t = 200)]
        steps: usize,
        /// Print the loss every this many steps.
        #[arg(long, default_value_t = 20)]
        every: usize,
        /// Set a hyperparameter (`name=value`, a number, bool or schedule). Repeatable.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        execution: load::Execution,
    },
    /// Time a rule's fused step and, in the same run, the data-movement floor for
    /// the same bytes; print ns/param, GB/s and the ratio to the floor.
    #[command(
        after_help = "Examples:\n  optc bench adam\n  optc bench lion --numel 16777216 --threads 2\n  \
                  optc bench lamb --tensors 200 --json\n  optc bench adam --dtype bf16 --stochastic-rounding\n  \
                  optc bench adafactor --shape 4096x4096 --threads 2"
    )]
    Bench {
        /// An .opt file or a standard-library optimizer name.
        file: String,
        /// Which optimizer of the file (default: the last one).
        #[arg(long)]
        rule: Option<String>,
        /// Parameters in all, split evenly over the tensors.
        #[arg(long, default_value_t = 1 << 24)]
        numel: usize,
        /// Number of tensors.
        #[arg(long, default_value_t = 1)]
        tensors: usize,
        /// Every tensor's dimensions, e.g. `4096x4096` (then --numel is
        /// --tensors times their product); default: vectors.
        #[arg(long, value_parser = bench::parse_shape)]
        shape: Option<bench::Dims>,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Timed steps (the median is reported), after two warm-up steps.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Set a hyperparameter (`name=value`). Repeatable.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Storage of parameters, gradients and state (computation is f32).
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
        /// With --dtype bf16: round stores stochastically instead of to nearest even.
        #[arg(long)]
        stochastic_rounding: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        execution: load::Execution,
    },
    /// Print an objective's loss and the symbolic gradient of the total loss
    /// with respect to each of its params.
    #[command(
        after_help = "FILE is an .opt file, a standard-library objective, or `stdlib`.\n\n\
                      Examples:\n  optc diff rosenbrock\n  optc diff stdlib --objective beale\n  \
                      optc diff my_objectives.opt --objective my_loss"
    )]
    Diff {
        /// An .opt file, a standard-library objective name, or `stdlib`.
        file: String,
        /// Which objective (default: the last one of FILE).
        #[arg(long)]
        objective: Option<String>,
    },
    /// Train an objective (a test function with symbolic gradients) with a rule,
    /// printing the loss curve and optionally plotting it as SVG.
    #[command(
        after_help = "Examples:\n  optc run adam --objective rosenbrock --steps 2000 --set learning_rate=0.01\n  \
                      optc run sgd --objective ill_conditioned_quadratic --numel 50 --set learning_rate=1e-3 --plot loss.svg\n  \
                      optc run lion --objective rosenbrock --objective-set b=10 --every 50\n  \
                      optc run my_rule.opt --objective my_loss --objective-file my_objectives.opt"
    )]
    Run {
        /// An .opt file or a standard-library optimizer name.
        file: String,
        /// Which optimizer of the file (default: the last one).
        #[arg(long)]
        rule: Option<String>,
        /// The objective, defined in the standard library (stdlib/objectives.opt:
        /// rosenbrock, beale, ill_conditioned_quadratic, logistic_regression), in FILE
        /// or in --objective-file.
        #[arg(long)]
        objective: String,
        /// An .opt file defining more objectives.
        #[arg(long)]
        objective_file: Option<String>,
        /// Elements of each param tensor (default: the objective's `numel = N`, else 1).
        #[arg(long)]
        numel: Option<usize>,
        /// Number of optimizer steps.
        #[arg(long, default_value_t = 1000)]
        steps: usize,
        /// Print the loss every this many steps.
        #[arg(long, default_value_t = 100)]
        every: usize,
        /// Set a hyperparameter of the rule (`name=value`, a number, bool or schedule). Repeatable.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Set a hyperparameter of the objective (`name=number`). Repeatable.
        #[arg(long = "objective-set", value_name = "NAME=NUMBER")]
        objective_set: Vec<String>,
        /// Write the loss curve to this SVG file (log-scale loss).
        #[arg(long)]
        plot: Option<String>,
        #[command(flatten)]
        execution: load::Execution,
    },
    /// Derive a new rule from a rule by differentiation and write it as .opt source.
    #[command(subcommand)]
    Derive(DeriveCommand),
    /// Search for new update rules by regularized evolution, the way Lion was
    /// found: an interactive REPL (or a script of its commands). Candidates
    /// are JIT-compiled and trained on proxy tasks (quadratic, Rosenbrock,
    /// logistic regression, MLPs on real data) with a learning-rate sweep,
    /// scored against tuned SGD with momentum and Adam, and saved as readable
    /// .opt files.
    #[command(
        after_help = "Commands (type `help` inside): load, tasks, set, run, top, show, eval, simplify,\n\
                      compare, save, checkpoint, resume, plot, restart, quit.\n\n\
                      Examples:\n  optc search\n  optc search --script examples/search_sgd.txt\n\n\
                      A script is one command per line (# starts a comment), e.g.\n  \
                      set seed 1\n  load sgd\n  run --minutes 10\n  top 5\n  save 123 found.opt"
    )]
    Search {
        /// Run the commands of FILE, echoing each, instead of the interactive
        /// prompt; stop with exit status 1 at the first failing command.
        #[arg(long, value_name = "FILE")]
        script: Option<String>,
        /// What candidates are trained on: `cranelift` (the default where it
        /// supports the CPU: it compiles fastest), `llvm`, `tiered`, `reference`
        /// or `interp` (`set backend` changes it).
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
    },
    /// Compile a rule ahead of time into a shared library with a C ABI
    /// (NAME_state_size, NAME_init, NAME_step over many tensors, hyperparameters
    /// passed per call) and its header, with no dependency on optc or LLVM
    /// (needs a build with the LLVM tier, and a C compiler to link).
    #[command(after_help = "Examples:\n  optc build adamw -o libadamw.so\n  \
                            optc build lion --set learning_rate=3e-4 -o out/liblion.so --header out/lion.h\n\n\
                            Rules that run as one pass without reductions, keeping per-element state with \
                            constant initial values, can be built (Adam, AdamW, Lion, SGD, ...). \
                            --set changes the defaults the header lists. See docs/aot.md.")]
    Build {
        /// An .opt file or a standard-library optimizer name.
        file: String,
        /// Which optimizer of the file (default: the last one).
        #[arg(long)]
        rule: Option<String>,
        /// NAME=VALUE: the header's default for a hyperparameter (repeatable).
        #[arg(long, value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// The library to write (e.g. librule.so).
        #[arg(short, long, value_name = "FILE")]
        out: String,
        /// The header to write (default: RULE.h beside the library).
        #[arg(long, value_name = "FILE")]
        header: Option<String>,
    },
    /// List the standard-library optimizers with the first line of their documentation.
    #[command(after_help = "Example:\n  optc list")]
    List,
}

#[derive(Subcommand)]
enum DeriveCommand {
    /// The hypergradient-descent variant of a rule (Baydin et al., 2018): the
    /// hyperparameter becomes state, adapted every step by
    /// `-hypergrad_lr * <g_t, d p_{t-1} / d hyper>`.
    #[command(
        after_help = "Examples:\n  optc derive hypergrad --wrt learning_rate adam -o hd_adam.opt\n  \
                      optc derive hypergrad --wrt b1 adam\n  \
                      optc derive hypergrad --multiplicative sgd -o hd_sgd.opt\n  \
                      optc derive hypergrad --wrt weight_decay my_rule.opt --rule my_adamw --hypergrad-lr 1e-6"
    )]
    Hypergrad {
        /// An .opt file or a standard-library optimizer name.
        file: String,
        /// Which optimizer of the file (default: the last one).
        #[arg(long)]
        rule: Option<String>,
        /// The float hyperparameter to adapt.
        #[arg(long, default_value = "learning_rate")]
        wrt: String,
        /// Default of the new `hypergrad_lr` hyperparameter (the step size of the
        /// adaptation; default 1e-7 for the additive rule, 0.02 with --multiplicative).
        #[arg(long)]
        hypergrad_lr: Option<f64>,
        /// Use the multiplicative rule `a_t = a_{t-1} (1 - hypergrad_lr cos(g_t, d_{t-1}))`:
        /// scale-free, and recovers from a rate far too large (Baydin et al., section 4).
        #[arg(long)]
        multiplicative: bool,
        /// Write the rule to this file instead of printing it.
        #[arg(short, long)]
        out: Option<String>,
    },
}

/// The registry name of the fastest backend on this host.
fn default_backend() -> &'static str {
    let fastest = optc_runtime::Backend::fastest();
    optc_runtime::BACKENDS
        .iter()
        .map(|b| b.name)
        .find(|&name| name == fastest.name())
        .unwrap_or("reference")
}

/// What the search trains candidates on by default: Cranelift where it runs
/// (thousands of short-lived rules: compile time matters more than the last
/// factor of speed), else the fastest backend.
fn search_backend() -> &'static str {
    search::registered_backend("cranelift").unwrap_or_else(|_| default_backend())
}

/// The search runs one training run per core; candle (whose networks
/// train the conv-net and transformer tasks) would add its own threads per
/// run, and on such small tensors they only contend: a conv-net run took
/// twice as long with them on 2 cores. Unless the user chose (candle
/// follows `RAYON_NUM_THREADS`, then `CANDLE_NUM_THREADS`), one thread.
fn one_thread_per_model() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none()
        && std::env::var_os("CANDLE_NUM_THREADS").is_none()
    {
        // Set before any thread starts: nothing reads the environment concurrently.
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { files } => commands::check(&files),
        Command::Show {
            file,
            rule,
            ir,
            plan,
            adjoint,
        } => {
            if adjoint {
                derive::adjoint(&file, rule.as_deref())
            } else {
                commands::show(&file, rule.as_deref(), ir, plan)
            }
        }
        Command::Derive(DeriveCommand::Hypergrad {
            file,
            rule,
            wrt,
            hypergrad_lr,
            multiplicative,
            out,
        }) => {
            let form = if multiplicative {
                optc_compiler::derive::Form::Multiplicative
            } else {
                optc_compiler::derive::Form::Additive
            };
            let default = if multiplicative { 0.02 } else { 1e-7 };
            let step = hypergrad_lr.unwrap_or(default);
            derive::hypergrad(&file, rule.as_deref(), &wrt, step, form, out.as_deref())
        }
        Command::Replay {
            file,
            trace,
            rule,
            set,
            out,
            compare,
            tolerance,
            f64_elements,
            execution,
        } => commands::replay(&commands::ReplaySettings {
            file: &file,
            trace: &trace,
            rule: rule.as_deref(),
            sets: &set,
            execution: &execution,
            out: out.as_deref(),
            compare,
            tolerance,
            f64_elements,
        }),
        Command::Train {
            file,
            rule,
            task,
            hidden,
            steps,
            every,
            set,
            execution,
        } => commands::train(&commands::TrainSettings {
            file: &file,
            rule: rule.as_deref(),
            task: &task,
            hidden,
            steps,
            every,
            sets: &set,
            execution: &execution,
        }),
        Command::Bench {
            file,
            rule,
            numel,
            tensors,
            shape,
            threads,
            steps,
            set,
            dtype,
            stochastic_rounding,
            json,
            execution,
        } => commands::bench(&bench::Settings {
            file: &file,
            rule: rule.as_deref(),
            numel: shape.as_ref().map_or(numel, |dims| tensors * dims.numel()),
            tensors,
            shape: shape.as_ref().map(|dims| dims.0.as_slice()),
            threads,
            steps,
            sets: &set,
            dtype,
            stochastic_rounding,
            json,
            execution: &execution,
        }),
        Command::Diff { file, objective } => diff::diff(&file, objective.as_deref()),
        Command::Run {
            file,
            rule,
            objective,
            objective_file,
            numel,
            steps,
            every,
            set,
            objective_set,
            plot,
            execution,
        } => run::run(&run::Settings {
            file: &file,
            rule: rule.as_deref(),
            sets: &set,
            objective: &objective,
            objective_file: objective_file.as_deref(),
            objective_sets: &objective_set,
            numel,
            steps,
            every,
            plot: plot.as_deref(),
            execution: &execution,
        }),
        Command::List => commands::list(),
        Command::Build {
            file,
            rule,
            set,
            out,
            header,
        } => build::build(&file, rule.as_deref(), &set, &out, header.as_deref()),
        Command::Search { script, backend } => {
            one_thread_per_model();
            match backend
                .as_deref()
                .map_or(Ok(search_backend()), search::registered_backend)
            {
                Ok(backend) => match script {
                    Some(path) => search::repl::script(&path, backend),
                    None => search::repl::interactive(backend),
                },
                Err(message) => Err(format!("error: {message}")),
            }
        }
    };
    match result {
        Ok(output) => {
            // A closed pipe (`optc show adam | head`) is not an error of ours.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), output.as_bytes());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprint!("{message}");
            if !message.ends_with('\n') {
                eprintln!();
            }
            ExitCode::from(1)
        }
    }
}
