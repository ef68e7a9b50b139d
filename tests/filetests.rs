//! `.opt` filetests, in the manner of Cranelift's `.clif` filetests: every
//! file in `tests/filetests/` is one update rule with `// test:` directives
//! in its header. The runner steps the rule through the reference
//! interpreter and through every fused backend (reference kernels, the
//! Cranelift JIT, and the JIT checked call by call) on the same
//! deterministic awkward inputs, and compares the parameters and every state
//! slot after each step. `tests/filetests/README.md` describes the format.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{approximated_ops, compare_backends, Backends, Setup, Tolerance};
use optc_compiler::backend::{HostBackend, HostKernel};
use optc_compiler::builtins::BUILTINS;
use optc_compiler::ir::{Rule, ScalarExpr};
use optc_compiler::kernel::{self, Kernel};
use optc_compiler::{diagnostics, Origin};
use optc_runtime::Backend;
use optc_runtime::Bindings;

const FOLDER: &str = "tests/filetests";

/// What a file's `// test:` directives say; `None` where a default applies.
#[derive(Debug, Default, PartialEq)]
struct Directives {
    numels: Option<Vec<usize>>,
    steps: Option<usize>,
    threads: Option<Vec<usize>>,
    seed: Option<u64>,
    tolerance: Option<Tolerance>,
    rule: Option<String>,
    /// `set NAME = EXPR`, in order.
    sets: Vec<(String, String)>,
}

const DEFAULT_NUMELS: [usize; 5] = [1, 3, 8, 33, 1000];
const DEFAULT_STEPS: usize = 4;
const DEFAULT_THREADS: [usize; 2] = [1, 2];

/// Reads the directives of `source`: every `// test:` line of its header
/// (the lines before the first that is neither blank nor a `//` comment).
fn parse_directives(source: &str) -> Result<Directives, String> {
    let mut directives = Directives::default();
    let mut in_header = true;
    let mut found = false;
    for (number, line) in (1..).zip(source.lines()) {
        let line = line.trim();
        let comment = line.strip_prefix("//").map(str::trim_start);
        in_header &= line.is_empty() || comment.is_some();
        let Some(text) = comment else { continue };
        let Some(items) = directive_text(text).map_err(|e| format!("line {number}: {e}"))? else {
            continue;
        };
        if !in_header {
            return Err(format!(
                "line {number}: `// test:` directives belong in the header, before the first line of code"
            ));
        }
        found = true;
        let items: Vec<&str> = items.split(';').map(str::trim).collect();
        for (index, item) in items.iter().enumerate() {
            if item.is_empty() {
                if index + 1 == items.len() && index > 0 {
                    continue;
                }
                return Err(format!("line {number}: empty directive"));
            }
            directive(&mut directives, item)
                .map_err(|e| format!("line {number}: `{item}`: {e}"))?;
        }
    }
    if !found {
        return Err("no `// test:` directive in the header".into());
    }
    Ok(directives)
}

/// The directives of a comment's text (after `//`): `Some` for `test: ...`,
/// `None` for an ordinary comment, an error for a near miss (`test numel 4`,
/// `tests: ...`, `test :`).
fn directive_text(text: &str) -> Result<Option<&str>, String> {
    if let Some(rest) = text.strip_prefix("test:") {
        return Ok(Some(rest));
    }
    let word: String = text.chars().take_while(|c| c.is_alphanumeric()).collect();
    if word == "test" || word == "tests" {
        return Err("a directive line is `// test: KEY VALUE; ...`".into());
    }
    Ok(None)
}

fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), String> {
    match slot {
        Some(_) => Err("given twice".into()),
        None => {
            *slot = Some(value);
            Ok(())
        }
    }
}

fn numbers<T>(words: &[&str], at_least: T) -> Result<Vec<T>, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    if words.is_empty() {
        return Err("expects at least one number".into());
    }
    words
        .iter()
        .map(|w| match w.parse::<T>() {
            Ok(n) if n >= at_least => Ok(n),
            Ok(_) => Err(format!("`{w}`: must be at least {at_least}")),
            Err(_) => Err(format!("`{w}` is not a whole number")),
        })
        .collect()
}

fn one<T>(mut values: Vec<T>) -> Result<T, String> {
    if values.len() == 1 {
        Ok(values.remove(0))
    } else {
        Err("expects exactly one number".into())
    }
}

fn directive(directives: &mut Directives, item: &str) -> Result<(), String> {
    let words: Vec<&str> = item.split_whitespace().collect();
    let (key, args) = (words[0], &words[1..]);
    match key {
        "numel" => once(&mut directives.numels, numbers(args, 0)?),
        "steps" => once(&mut directives.steps, one(numbers(args, 1)?)?),
        "threads" => once(&mut directives.threads, numbers(args, 1)?),
        "seed" => once(&mut directives.seed, one(numbers(args, 0)?)?),
        "tolerance" => once(&mut directives.tolerance, tolerance(args)?),
        "rule" => match args {
            [name] if is_identifier(name) => once(&mut directives.rule, name.to_string()),
            _ => Err("expects one optimizer name".into()),
        },
        "set" => {
            let rest = item["set".len()..].trim();
            match rest.split_once('=') {
                Some((name, value)) if is_identifier(name.trim()) && !value.trim().is_empty() => {
                    directives
                        .sets
                        .push((name.trim().to_string(), value.trim().to_string()));
                    Ok(())
                }
                _ => Err("expects `set NAME = EXPRESSION`".into()),
            }
        }
        _ => Err(format!(
            "unknown directive `{key}` (known: numel, steps, threads, seed, tolerance, rule, set)"
        )),
    }
}

fn tolerance(args: &[&str]) -> Result<Tolerance, String> {
    match args {
        ["exact"] => Ok(Tolerance::Exact),
        ["ulp", n] => match n.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Tolerance::Ulp(n)),
            _ => Err(format!("`{n}`: ulps are a whole number, at least 1")),
        },
        ["rel", x] => match x.parse::<f64>() {
            Ok(x) if x > 0.0 && x < 1.0 => Ok(Tolerance::Rel(x)),
            _ => Err(format!("`{x}`: a relative tolerance is a number in (0, 1)")),
        },
        _ => Err("expects `exact`, `ulp N` or `rel X`".into()),
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// FNV-1a of the file name: the default seed, so files differ in inputs.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// A file ready to run: its rule compiled, its `set`s bound, its setup.
struct Prepared {
    rule: Arc<Rule>,
    overrides: Vec<(String, ScalarExpr)>,
    setup: Setup,
}

/// Parses and compiles a filetest; checks that its tolerance fits its rule.
fn prepare(name: &str, source: &str) -> Result<Prepared, String> {
    let directives = parse_directives(source)?;
    let mut program = optc_stdlib::prelude();
    let render = |d: &optc_compiler::Diagnostic, program: &optc_compiler::Program| {
        diagnostics::render(d, program.files(), false)
    };
    let file = program
        .add_source(name, source.as_bytes(), Origin::User)
        .map_err(|d| render(&d, &program))?;
    if let Some(error) = program.check_file(file).first() {
        return Err(render(error, &program));
    }
    let optimizers: Vec<String> = program
        .optimizers_in(file)
        .into_iter()
        .map(String::from)
        .collect();
    let rule_name = match &directives.rule {
        Some(rule) if optimizers.contains(rule) => rule.clone(),
        Some(rule) => return Err(format!("`rule {rule}`: the file defines no such optimizer")),
        None => optimizers
            .last()
            .cloned()
            .ok_or("the file defines no optimizer")?,
    };
    let rule = Arc::new(
        program
            .compile(&rule_name)
            .map_err(|d| render(&d, &program))?,
    );
    let mut overrides = Vec::new();
    for (hyper, text) in &directives.sets {
        let value = program
            .compile_scalar(&format!("set {hyper}"), text)
            .map_err(|d| render(&d, &program))?;
        overrides.push((hyper.clone(), value));
    }
    Bindings::new(&rule, overrides.clone()).map_err(|e| e.to_string())?;
    let approximated = approximated_ops(&rule);
    let tolerance = match (directives.tolerance, approximated.is_empty()) {
        (None, true) => Tolerance::Exact,
        (None, false) => {
            return Err(format!(
                "the rule computes {} per element, which the JIT approximates: declare a `tolerance`",
                approximated.join(", ")
            ))
        }
        (Some(Tolerance::Exact), _) => Tolerance::Exact,
        (Some(loose), true) => {
            return Err(format!(
                "`tolerance {loose}`: the rule computes no approximated operation per element, so every backend must be exact"
            ))
        }
        (Some(loose), false) => loose,
    };
    let setup = Setup {
        numels: directives.numels.unwrap_or(DEFAULT_NUMELS.to_vec()),
        steps: directives.steps.unwrap_or(DEFAULT_STEPS),
        threads: directives.threads.unwrap_or(DEFAULT_THREADS.to_vec()),
        seed: directives.seed.unwrap_or_else(|| name_seed(name)),
        tolerance,
    };
    Ok(Prepared {
        rule,
        overrides,
        setup,
    })
}

/// Runs one filetest on `backends`; returns a line saying what was compared
/// and how far each backend was seen to be from the interpreter.
fn run(name: &str, source: &str, backends: &mut Backends) -> Result<String, String> {
    let prepared = prepare(name, source).map_err(|e| format!("{name}: {e}"))?;
    let observed = compare_backends(
        name,
        &prepared.rule,
        &prepared.overrides,
        &prepared.setup,
        backends,
    )?;
    let seen: Vec<String> = observed
        .iter()
        .map(|o| match o.inexact {
            0 => format!("{} exact", o.backend),
            n => format!("{} {n} inexact (max {} ulp)", o.backend, o.max_ulps),
        })
        .collect();
    let setup = &prepared.setup;
    Ok(format!(
        "{name}: numel {:?}, {} steps, threads {:?}, tolerance {}: {}",
        setup.numels,
        setup.steps,
        setup.threads,
        setup.tolerance,
        seen.join(", ")
    ))
}

/// The filetests, sorted; fails on anything else in the folder but its README.
fn files() -> Vec<PathBuf> {
    let folder = common::repo_path(FOLDER);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&folder).expect("tests/filetests exists") {
        let path = entry.expect("the folder is readable").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        match path.extension().and_then(|e| e.to_str()) {
            Some("opt") => files.push(path),
            _ if name == "README.md" => {}
            _ => panic!("{}: not a filetest (`.opt`) or README.md", path.display()),
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(common::repo_path(""))
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_filetest_agrees_with_the_interpreter() {
    let files = files();
    assert!(!files.is_empty(), "{FOLDER} holds no filetests");
    let mut backends = Backends::all();
    let mut failures = Vec::new();
    for path in &files {
        let source = std::fs::read_to_string(path).expect("a filetest is UTF-8");
        match run(&relative(path), &source, &mut backends) {
            Ok(summary) => println!("{summary}"),
            Err(message) => failures.push(message),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} filetests failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn directives_are_read_with_their_defaults() {
    let source = "// A rule.\n\
                  // test: numel 1 4 7 33 1000; steps 5; threads 1 2;\n\
                  //test: tolerance ulp 3; seed 42; rule b\n\
                  // test: set lr = cosine_decay(0.1, 10); set b1=0.5\n\
                  // testing is not a directive\n\
                  \n\
                  optimizer a() { p -= g; }\n\
                  optimizer b(lr = 1, b1 = 0) { p -= lr * b1 * g; }\n";
    let directives = parse_directives(source).unwrap();
    assert_eq!(
        directives,
        Directives {
            numels: Some(vec![1, 4, 7, 33, 1000]),
            steps: Some(5),
            threads: Some(vec![1, 2]),
            seed: Some(42),
            tolerance: Some(Tolerance::Ulp(3)),
            rule: Some("b".into()),
            sets: vec![
                ("lr".into(), "cosine_decay(0.1, 10)".into()),
                ("b1".into(), "0.5".into())
            ],
        }
    );
    let minimal = prepare(
        "minimal.opt",
        "// test: steps 2\noptimizer m() { p -= g; }\n",
    )
    .map_err(|e| e.to_string())
    .unwrap();
    assert_eq!(
        minimal.setup,
        Setup {
            numels: DEFAULT_NUMELS.to_vec(),
            steps: 2,
            threads: DEFAULT_THREADS.to_vec(),
            seed: name_seed("minimal.opt"),
            tolerance: Tolerance::Exact,
        }
    );
    assert_eq!(minimal.rule.name, "m");
}

#[test]
fn malformed_filetests_are_errors() {
    let rule = "optimizer r(lr = 0.1) { p -= lr * g; }\n";
    let cases: &[(&str, &str)] = &[
        ("", "no `// test:` directive"),
        ("// a rule without directives\n", "no `// test:` directive"),
        ("// test numel 4\n", "a directive line is"),
        ("// tests: numel 4\n", "a directive line is"),
        ("// test: numel\n", "at least one number"),
        ("// test: numel 4 x\n", "`x` is not a whole number"),
        ("// test: numel -1\n", "not a whole number"),
        ("// test: steps 0\n", "at least 1"),
        ("// test: steps 2 3\n", "exactly one number"),
        ("// test: threads 0\n", "at least 1"),
        ("// test: seed\n", "at least one number"),
        ("// test: steps 2; steps 3\n", "given twice"),
        ("// test: tolerance\n", "expects `exact`"),
        ("// test: tolerance ulp\n", "expects `exact`"),
        ("// test: tolerance ulp 0\n", "at least 1"),
        ("// test: tolerance rel 2\n", "a number in (0, 1)"),
        ("// test: tolerance exactly\n", "expects `exact`"),
        ("// test: ; steps 2\n", "empty directive"),
        ("// test: numels 4\n", "unknown directive `numels`"),
        ("// test: set lr\n", "expects `set NAME = EXPRESSION`"),
        ("// test: set = 3\n", "expects `set NAME = EXPRESSION`"),
        ("// test: rule\n", "expects one optimizer name"),
        ("// test: rule nope\n", "no such optimizer"),
        ("// test: rule adam\n", "no such optimizer"),
        ("// test: set nope = 1\n", "unknown hyperparameter `nope`"),
        ("// test: set lr = 1 +\n", "unexpected end of input"),
        (
            "// test: steps 2\noptimizer x() { p -= q; }\n",
            "unknown name",
        ),
        (
            "// test: tolerance ulp 2\n",
            "no approximated operation per element",
        ),
        (
            "// test: rule e\noptimizer e() { p -= exp(g); }\n",
            "computes exp per element",
        ),
    ];
    for (header, expected) in cases {
        let source = format!("{header}{rule}");
        match prepare("bad.opt", &source) {
            Ok(_) => panic!("accepted:\n{source}"),
            Err(message) => assert!(
                message.contains(expected),
                "for\n{source}expected an error with `{expected}`, got: {message}"
            ),
        }
    }
    let late = "// test: steps 2\noptimizer r() { p -= g; }\n// test: steps 3\n";
    assert!(parse_directives(late)
        .unwrap_err()
        .contains("belong in the header"));
}

#[test]
fn tolerances_accept_what_they_say() {
    let next = |x: f32| f32::from_bits(x.to_bits() + 1);
    let quiet = f32::NAN;
    let other_nan = f32::from_bits(0xffc0_0001);
    let tiny = f32::from_bits(1);
    // (tolerance, interpreter, backend, accepted)
    let cases = [
        (Tolerance::Exact, 1.5, 1.5, true),
        (Tolerance::Exact, 1.5, next(1.5), false),
        (Tolerance::Exact, 0.0, -0.0, false),
        (Tolerance::Exact, quiet, other_nan, true),
        (Tolerance::Exact, quiet, 1.0, false),
        (Tolerance::Exact, f32::INFINITY, f32::INFINITY, true),
        (Tolerance::Ulp(1), 1.5, next(1.5), true),
        (Tolerance::Ulp(1), 1.5, next(next(1.5)), false),
        (Tolerance::Ulp(1), 0.0, -0.0, true),
        (Tolerance::Ulp(1), tiny, -tiny, false),
        (Tolerance::Ulp(2), tiny, -tiny, true),
        (Tolerance::Ulp(1), f32::MAX, f32::INFINITY, true),
        (Tolerance::Ulp(9), 1.0, quiet, false),
        (Tolerance::Rel(1e-6), 1.0, 1.0 + 1e-7, true),
        (Tolerance::Rel(1e-6), 1.0, 1.0 + 1e-5, false),
        (Tolerance::Rel(1e-6), f32::INFINITY, f32::INFINITY, true),
        (Tolerance::Rel(1e-6), f32::MAX, f32::INFINITY, false),
        (Tolerance::Rel(1e-6), -0.0, 0.0, true),
        (Tolerance::Rel(0.5), quiet, quiet, true),
    ];
    for (tolerance, want, got, accepted) in cases {
        assert_eq!(
            tolerance.accepts(want, got),
            accepted,
            "{tolerance}: {want:e} against {got:e}"
        );
    }
    assert_eq!(
        parse_directives("// test: tolerance rel 1e-6\n")
            .unwrap()
            .tolerance,
        Some(Tolerance::Rel(1e-6))
    );
}

/// A backend with a bug: the reference kernels, except that the value
/// stored to `p` at element 5 of every tensor has its last bit flipped.
struct OffByOneUlp;

struct OffByOneUlpKernel(Kernel);

impl HostBackend for OffByOneUlp {
    fn compile(&mut self, kernel: &Kernel) -> Result<std::sync::Arc<dyn HostKernel>, String> {
        Ok(std::sync::Arc::new(OffByOneUlpKernel(kernel.clone())))
    }
}

fn off_by_one_ulp() -> Backend {
    Backend::kernels("off-by-one-ulp", Box::new(OffByOneUlp))
}

impl HostKernel for OffByOneUlpKernel {
    unsafe fn call(
        &self,
        buffers: &[*mut f32],
        scalars: &[f32],
        accumulators: &mut [f64],
        range: std::ops::Range<usize>,
    ) {
        // SAFETY: forwarded from the caller, who guarantees the buffers hold the range.
        unsafe {
            kernel::run_raw(&self.0, buffers, scalars, accumulators, range.clone());
            if range.contains(&5) && self.0.stores.iter().any(|&(b, _)| b == 0) {
                let p = buffers[0].add(5);
                *p = f32::from_bits((*p).to_bits() ^ 1);
            }
        }
    }
}

#[test]
fn a_wrong_backend_is_reported_with_where_and_what() {
    let source = "// test: numel 3 8; steps 3\n\
                  optimizer momentum(lr = 0.1) { state m = 0; m = lerp(g, m, 0.9); p -= lr * m; }\n";
    let prepared = prepare("momentum.opt", source).unwrap();
    let mut plain = Backends::none().with("off-by-one-ulp", off_by_one_ulp(), false);
    let message = compare_backends(
        "momentum.opt",
        &prepared.rule,
        &prepared.overrides,
        &prepared.setup,
        &mut plain,
    )
    .unwrap_err();
    for part in [
        "momentum.opt",
        "backend `off-by-one-ulp` (1 threads)",
        "after step 1",
        "`p` of tensor 1, element 5",
        "interpreter ",
        "off-by-one-ulp ",
        "1 ulp apart",
        "tolerance exact",
        "g of step 1",
    ] {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
    // Under a tolerance that admits it, an approximating backend passes...
    let loose = Setup {
        steps: 1,
        tolerance: Tolerance::Ulp(1),
        ..prepared.setup.clone()
    };
    let mut approximating = Backends::none().with("off-by-one-ulp", off_by_one_ulp(), true);
    let observed = compare_backends(
        "momentum.opt",
        &prepared.rule,
        &prepared.overrides,
        &loose,
        &mut approximating,
    )
    .unwrap();
    assert!(observed[0].inexact > 0 && observed[0].max_ulps >= 1);
    // ...but not in lockstep, which checks every call's stores bit for bit.
    let mut lockstep = Backends::none().with_lockstep("lockstep", off_by_one_ulp());
    let message = compare_backends(
        "momentum.opt",
        &prepared.rule,
        &prepared.overrides,
        &prepared.setup,
        &mut lockstep,
    )
    .unwrap_err();
    assert!(
        message.contains("backend `lockstep`")
            && message.contains("step 1: ")
            && message.contains("to buffer 0 at element 5"),
        "{message}"
    );
}

/// The tokens of `.opt` source, comments dropped (enough of the lexer to
/// tell which names, calls and operators a file uses).
fn tokens(source: &str) -> Vec<String> {
    const TWO: [&str; 10] = ["==", "!=", "<=", ">=", "&&", "||", "+=", "-=", "*=", "/="];
    let mut tokens = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code.trim_start();
        while let Some(c) = rest.chars().next() {
            let len = if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .unwrap_or(rest.len())
            } else if TWO.iter().any(|op| rest.starts_with(op)) {
                2
            } else {
                c.len_utf8()
            };
            tokens.push(rest[..len].to_string());
            rest = rest[len..].trim_start();
        }
    }
    tokens
}

/// Every built-in function, operator, statement and kind of state appears
/// in some filetest, so that the folder covers the language.
#[test]
fn filetests_cover_the_language() {
    let sources: Vec<String> = files()
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap_or_default())
        .collect();
    let tokens: Vec<String> = sources.iter().flat_map(|s| tokens(s)).collect();
    let used = |pair: [&str; 2]| {
        tokens
            .windows(2)
            .any(|w| w[0] == pair[0] && w[1] == pair[1])
    };
    let mut missing = Vec::new();
    for (name, _, _) in BUILTINS {
        if !used([name, "("]) {
            missing.push(format!("{name}(...)"));
        }
    }
    let operators = [
        "+", "-", "*", "/", "^", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "!", "+=", "-=",
        "*=", "/=",
    ];
    let words = [
        "state", "let", "use", "fn", "if", "else", "true", "false", "t", "numel", "rank", "nrows",
        "ncols", "pi", "inf",
    ];
    for token in operators.iter().chain(&words) {
        if !tokens.iter().any(|t| t == token) {
            missing.push(token.to_string());
        }
    }
    // Unary minus: after an operator, `(`, `,` or `=`.
    let negates = tokens.windows(2).any(|w| {
        w[1] == "-"
            && (operators.contains(&w[0].as_str()) || ["(", ",", "=", "{"].contains(&w[0].as_str()))
    });
    if !negates {
        missing.push("unary -".into());
    }
    for pair in [
        [":", "tensor"],
        [":", "group"],
        [":", "rows"],
        [":", "cols"],
        ["else", "if"],
    ] {
        if !used(pair) {
            missing.push(pair.join(" "));
        }
    }
    assert!(missing.is_empty(), "no filetest uses {missing:?}");
}
