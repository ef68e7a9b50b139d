//! Bad input of every kind gives a diagnostic and exit code 1: never a
//! panic, a hang or a crash. Property tests throw random bytes and random
//! token soup at the front end; fixed cases cover the pathological inputs.

mod common;

use proptest::prelude::*;

fn compile(bytes: &[u8]) -> String {
    common::compile_errors("input.opt", bytes)
}

/// Runs `optc check` on `bytes` written to a temporary file.
fn check_file(name: &str, bytes: &[u8]) -> (i32, String) {
    let path = std::env::temp_dir().join(format!("optc-robustness-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let (code, _, stderr) = common::optc(&["check", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    (code, stderr)
}

fn assert_user_error(name: &str, bytes: &[u8], expected: &str) {
    let (code, stderr) = check_file(name, bytes);
    assert_eq!(
        code, 1,
        "{name}: exit code 1 on bad input; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{name}: panicked:\n{stderr}");
    assert!(
        stderr.contains(expected),
        "{name}: expected `{expected}` in:\n{}",
        &stderr[..stderr.len().min(2000)]
    );
}

#[test]
fn empty_file_is_a_diagnostic() {
    let path = std::env::temp_dir().join(format!("optc-empty-{}.opt", std::process::id()));
    std::fs::write(&path, b"").unwrap();
    let (code, _, stderr) = common::optc(&["show", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no optimizer or function in this file"),
        "{stderr}"
    );
    assert_user_error("empty.opt", b"", "no optimizer or function in this file");
    assert_user_error(
        "comments.opt",
        b"// nothing but a comment\n\n",
        "no optimizer or function in this file",
    );
}

#[test]
fn binary_garbage_is_a_diagnostic() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert_user_error("garbage.opt", &garbage, "Error");
}

#[test]
fn invalid_utf8_is_a_diagnostic() {
    assert_user_error(
        "latin1.opt",
        b"optimizer caf\xe9() { p -= g; }",
        "not valid UTF-8",
    );
}

#[test]
fn deep_nesting_is_a_diagnostic() {
    let depth = 100_000;
    let source = format!(
        "optimizer deep() {{ p -= {}g{}; }}",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    assert_user_error("parens.opt", source.as_bytes(), "nested too deeply");
    let unary = format!("optimizer deep() {{ p -= {}g; }}", "-".repeat(depth));
    assert_user_error("unary.opt", unary.as_bytes(), "nested too deeply");
    let chain = format!("optimizer deep() {{ p -= g{}; }}", " + g".repeat(depth));
    assert_user_error("chain.opt", chain.as_bytes(), "nested too deeply");
}

#[test]
fn ten_megabyte_file_is_handled() {
    // Ten megabytes of valid statements compile; one bad byte at the end is reported.
    let mut source = String::from("optimizer big() {\n");
    while source.len() < 10 << 20 {
        source.push_str("    p -= 0.000001 * g;\n");
    }
    source.push_str("}\n");
    let (code, stderr) = check_file("big.opt", source.as_bytes());
    assert_eq!(code, 0, "{}", &stderr[..stderr.len().min(2000)]);
    let bad = source.replace("}\n", "@}\n");
    assert_user_error("big_bad.opt", bad.as_bytes(), "unexpected character");
    // One line of ten megabytes: the error names the place without quoting the line.
    let one_line = format!("optimizer wide() {{ p -= g{} $ }}", " + 0".repeat(2 << 20));
    let (code, stderr) = check_file("wide.opt", one_line.as_bytes());
    assert_eq!(code, 1);
    assert!(
        stderr.len() < 10_000,
        "the diagnostic does not quote the huge line"
    );
}

#[test]
fn numbers_out_of_range_are_diagnostics() {
    assert_user_error(
        "huge.opt",
        b"optimizer o(lr = 1e400) { p -= lr * g; }",
        "number out of range",
    );
    assert_user_error(
        "long.opt",
        format!("optimizer o() {{ p -= {}.0 * g; }}", "9".repeat(400)).as_bytes(),
        "number out of range",
    );
    let (code, _, stderr) = common::optc(&[
        "replay",
        "adam",
        "--trace",
        "tests/golden/adam.json",
        "--set",
        "learning_rate=1e999",
        "--compare",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("number out of range"), "{stderr}");
}

#[test]
fn exponential_inlining_is_refused_not_hung() {
    let mut source = String::from("fn f0(x) { x * 2 }\n");
    for i in 1..40 {
        source.push_str(&format!(
            "fn f{i}(x) {{ f{}(x) + f{}(x + 1) }}\n",
            i - 1,
            i - 1
        ));
    }
    source.push_str("optimizer o() { p -= f39(g); }\n");
    let errors = compile(source.as_bytes());
    assert!(
        errors.contains("too many expressions after inlining"),
        "{errors}"
    );
}

/// Fragments of the language, to build token soup that gets far into the parser.
const FRAGMENTS: &[&str] = &[
    "optimizer",
    "fn",
    "state",
    "let",
    "use",
    "if",
    "else",
    "true",
    "false",
    "(",
    ")",
    "{",
    "}",
    ",",
    ";",
    ":",
    "=",
    "+=",
    "-=",
    "*=",
    "/=",
    "+",
    "-",
    "*",
    "/",
    "^",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&&",
    "||",
    "!",
    "p",
    "g",
    "t",
    "numel",
    "mu",
    "adam",
    "lerp",
    "sqrt",
    "sum",
    "group_norm",
    "max",
    "1",
    "0.9",
    "1e-8",
    "tensor",
    "group",
    "elem",
    "/// doc\n",
    "// c\n",
    "x",
    "select",
    "clamp",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = compile(&bytes);
    }

    #[test]
    fn random_token_soup_never_panics(picks in proptest::collection::vec(0..FRAGMENTS.len(), 0..80)) {
        let source: Vec<&str> = picks.iter().map(|&i| FRAGMENTS[i]).collect();
        let _ = compile(source.join(" ").as_bytes());
    }

    #[test]
    fn mutated_stdlib_never_panics(file in 0..optc_stdlib::FILES.len(), cut in 0usize..4000, insert in 0..FRAGMENTS.len()) {
        let text = optc_stdlib::FILES[file].1;
        let cut = cut.min(text.len());
        let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        let mutated = format!("{} {} {}", &text[..cut], FRAGMENTS[insert], &text[cut..]);
        let _ = compile(mutated.as_bytes());
    }
}
