//! `optc`: a thin command-line interface over the optc libraries. Every
//! command exits 0 on success and 1 on a user error (with a diagnostic on
//! stderr); it never panics on bad input.

mod bench;
mod commands;
mod load;

use std::process::ExitCode;

use bench::Dtype;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "optc",
    version,
    about = "A language and compiler for neural-network optimizers",
    long_about = "optc compiles update rules written in .opt files (hyperparameters, state, \
                  the statements of one step) and runs them.\n\n\
                  Wherever a FILE is expected you may also name a standard-library optimizer \
                  (`optc show adam`); `optc list` shows them all.",
    after_help = "Examples:\n  optc check my_rule.opt\n  optc show adamw --ir\n  \
                  optc replay lion --trace tests/golden/lion.json --set learning_rate=0.001 --compare\n  \
                  optc train adamw --steps 300"
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
        after_help = "Examples:\n  optc show adam\n  optc show my_rule.opt --rule my_adam --ir"
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
        /// Compute elementwise values in f64 instead of f32 (checking mode: shows how
        /// much of a difference from the trace is f32 rounding).
        #[arg(long = "f64")]
        f64_elements: bool,
    },
    /// Train a small task on real data with a rule and print the loss curve:
    /// softmax regression on a UCI dataset shipped with optc, full batch.
    #[command(
        after_help = "Examples:\n  optc train\n  optc train lion --set learning_rate=1e-3 --steps 300\n  \
                  optc train my_rule.opt --task iris --every 10"
    )]
    Train {
        /// An .opt file or a standard-library optimizer name.
        #[arg(default_value = "adam")]
        file: String,
        /// Which optimizer of the file (default: the last one).
        #[arg(long)]
        rule: Option<String>,
        /// The task: `breast_cancer` (569 x 30, 2 classes) or `iris` (150 x 4, 3 classes).
        #[arg(long, default_value = "breast_cancer")]
        task: String,
        /// Number of optimizer steps.
        #[arg(long, default_value_t = 200)]
        steps: usize,
        /// Print the loss every this many steps.
        #[arg(long, default_value_t = 20)]
        every: usize,
        /// Set a hyperparameter (`name=value`, a number, bool or schedule). Repeatable.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Time a rule's fused step and, in the same run, the data-movement floor for
    /// the same bytes; print ns/param, GB/s and the ratio to the floor.
    #[command(
        after_help = "Examples:\n  optc bench adam\n  optc bench lion --numel 16777216 --threads 2\n  \
                  optc bench lamb --tensors 200 --json\n  optc bench adam --dtype bf16 --stochastic-rounding"
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
    },
    /// List the standard-library optimizers with the first line of their documentation.
    #[command(after_help = "Example:\n  optc list")]
    List,
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
        } => commands::show(&file, rule.as_deref(), ir, plan),
        Command::Replay {
            file,
            trace,
            rule,
            set,
            out,
            compare,
            f64_elements,
        } => commands::replay(
            &file,
            &trace,
            rule.as_deref(),
            &set,
            out.as_deref(),
            compare,
            f64_elements,
        ),
        Command::Train {
            file,
            rule,
            task,
            steps,
            every,
            set,
        } => commands::train(&file, rule.as_deref(), &task, steps, every, &set),
        Command::Bench {
            file,
            rule,
            numel,
            tensors,
            threads,
            steps,
            set,
            dtype,
            stochastic_rounding,
            json,
        } => commands::bench(&bench::Settings {
            file: &file,
            rule: rule.as_deref(),
            numel,
            tensors,
            threads,
            steps,
            sets: &set,
            dtype,
            stochastic_rounding,
            json,
        }),
        Command::List => commands::list(),
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
