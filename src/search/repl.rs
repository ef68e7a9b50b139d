//! The front ends of `optc search`: an interactive REPL (rustyline: line
//! editing, history in `~/.optc_search_history`, tab completion of
//! commands, settings, task names and file names) and `--script FILE`,
//! which runs the same commands from a file and stops at the first error.
//! Ctrl-C during `run` stops the search cleanly at the end of the batch
//! (the population is kept); a second Ctrl-C while a command runs quits.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

use super::{Session, COMMANDS};

const SETTINGS: &[&str] = &[
    "population",
    "tournament",
    "seed",
    "batch",
    "threads",
    "cycles",
    "tolerance",
    "backend",
];

/// Raises the interrupt flag on Ctrl-C; a second Ctrl-C before the flag is
/// taken down ends the process (exit status 130, as a shell reports it).
fn install_interrupt() -> Arc<AtomicBool> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    // Without a handler Ctrl-C ends the process, which is the fallback.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
    });
    interrupt
}

/// Runs the commands of `path`, echoing each; stops at the first error.
pub fn script(path: &str, backend: &'static str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("error: cannot read {path}: {e}"))?;
    let mut session = Session::new(install_interrupt(), false, backend);
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        println!("> {}", line.trim());
        match session.execute(line) {
            Ok(Some(reply)) => print!("{reply}"),
            Ok(None) => break,
            Err(message) => return Err(format!("error: {path}:{}: {message}", number + 1)),
        }
    }
    Ok(String::new())
}

/// The interactive loop.
pub fn interactive(backend: &'static str) -> Result<String, String> {
    let interrupt = install_interrupt();
    let mut session = Session::new(interrupt.clone(), std::io::stderr().is_terminal(), backend);
    let mut editor: Editor<Completion, FileHistory> =
        Editor::new().map_err(|e| format!("error: cannot open the terminal: {e}"))?;
    editor.set_helper(Some(Completion {
        files: FilenameCompleter::new(),
        tasks: task_names(),
    }));
    let history = std::env::var_os("HOME")
        .map(|home| std::path::Path::new(&home).join(".optc_search_history"));
    if let Some(history) = &history {
        let _ = editor.load_history(history);
    }
    println!("optc search: evolve update rules. `help` lists the commands; `load sgd` then `run 500` to start.");
    loop {
        interrupt.store(false, Ordering::Relaxed);
        match editor.readline("search> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                match session.execute(&line) {
                    Ok(Some(reply)) => print!("{reply}"),
                    Ok(None) => break,
                    Err(message) => eprintln!("error: {message}"),
                }
            }
            Err(ReadlineError::Interrupted) => println!("(Ctrl-C: `quit` or Ctrl-D leaves)"),
            Err(ReadlineError::Eof) => break,
            // A line that is not UTF-8 (piped input) is skipped; the session goes on.
            Err(ReadlineError::Io(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
                eprintln!("error: a line that is not UTF-8 text was skipped")
            }
            Err(error) => return Err(format!("error: {error}")),
        }
    }
    if let Some(history) = &history {
        let _ = editor.save_history(history);
    }
    Ok(String::new())
}

/// Tab completion: commands first, then setting names after `set`, task
/// names after `tasks`, `eval ID` and `plot ID FILE`, file names elsewhere.
struct Completion {
    files: FilenameCompleter,
    /// The built-in task names and `all` (read once: building the tasks
    /// loads their datasets).
    tasks: Vec<String>,
}

impl Completer for Completion {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        context: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let word = &before[start..];
        let earlier: Vec<&str> = before[..start].split_whitespace().collect();
        let words: Vec<String> = match earlier.as_slice() {
            [] => COMMANDS.iter().map(|(name, ..)| name.to_string()).collect(),
            ["set"] => SETTINGS.iter().map(|s| s.to_string()).collect(),
            ["help"] => COMMANDS.iter().map(|(name, ..)| name.to_string()).collect(),
            ["tasks", ..] | ["eval", _] | ["plot", _, _] => self.tasks.clone(),
            _ => return self.files.complete(line, pos, context),
        };
        let pairs = words
            .into_iter()
            .filter(|w| w.starts_with(word))
            .map(|w| Pair {
                display: w.clone(),
                replacement: w,
            })
            .collect();
        Ok((start, pairs))
    }
}

fn task_names() -> Vec<String> {
    let prelude = optc_stdlib::prelude();
    let mut names: Vec<String> = optc_search::proxy::builtin(&prelude)
        .map(|tasks| tasks.into_iter().map(|t| t.name).collect())
        .unwrap_or_default();
    names.push("all".into());
    names
}

impl Hinter for Completion {
    type Hint = String;
}

impl Highlighter for Completion {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Validator for Completion {}

impl Helper for Completion {}
