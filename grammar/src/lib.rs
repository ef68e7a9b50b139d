//! The front end of the `.opt` language: a logos lexer, a LALRPOP grammar, the
//! AST with spans, and parse errors as [`Diagnostic`]s. Nothing here knows
//! about types or semantics; see `optc-compiler` for that.

pub mod ast;
mod build;
pub mod diagnostic;
pub mod lexer;
pub mod span;

use lalrpop_util::{lalrpop_mod, ParseError};

pub use diagnostic::{Diagnostic, Label};
pub use span::{FileId, Span};

use lexer::{LexError, SyntaxError, Token};

lalrpop_mod!(
    #[allow(clippy::all, unused_parens, unused_imports)]
    parser
);

/// Parses one source file. Never panics and never recurses deeper than
/// [`ast::MAX_DEPTH`], whatever the input.
pub fn parse(source: &str, file: FileId) -> Result<ast::File, Diagnostic> {
    parser::FileParser::new()
        .parse(file, lexer::tokens(source, file))
        .map_err(|error| diagnostic(source, file, error))
}

/// Parses a lone expression, as given on a command line (`--set lr=0.1`).
pub fn parse_expr(source: &str, file: FileId) -> Result<ast::Expr, Diagnostic> {
    parser::ExprParser::new()
        .parse(file, lexer::tokens(source, file))
        .map_err(|error| diagnostic(source, file, error))
}

fn diagnostic(
    source: &str,
    file: FileId,
    error: ParseError<usize, Token<'_>, SyntaxError>,
) -> Diagnostic {
    match error {
        ParseError::InvalidToken { location } => Diagnostic::error(
            "invalid token",
            Span::new(file, location, location),
            "not understood",
        ),
        ParseError::UnrecognizedEof { location, expected } => Diagnostic::error(
            "unexpected end of input",
            Span::new(file, location, location),
            expected_label(&expected),
        ),
        ParseError::ExtraToken {
            token: (start, token, end),
        } => Diagnostic::error(
            format!("unexpected {token}"),
            Span::new(file, start, end),
            "not expected here",
        ),
        ParseError::UnrecognizedToken {
            token: (start, token, end),
            expected,
        } => {
            let diagnostic = Diagnostic::error(
                format!("unexpected {token}"),
                Span::new(file, start, end),
                expected_label(&expected),
            );
            match token {
                Token::DocComment(_) => diagnostic
                    .with_hint("doc comments (`///`) go before items and statements; use `//` for other comments"),
                _ => diagnostic,
            }
        }
        ParseError::User { error } => match error {
            SyntaxError::Lex(LexError::UnexpectedCharacter, span) => {
                let text = source.get(span.range()).unwrap_or("?");
                Diagnostic::error(
                    format!("unexpected character {text:?}"),
                    span,
                    "not part of the language",
                )
            }
            SyntaxError::Lex(LexError::NumberOutOfRange, span) => Diagnostic::error(
                "number out of range",
                span,
                "does not fit a finite 64-bit float",
            )
            .with_hint("numbers must lie within ±1.7976931348623157e308"),
            SyntaxError::TooDeep(span) => Diagnostic::error(
                format!(
                    "expression nested too deeply (more than {} levels)",
                    ast::MAX_DEPTH
                ),
                span,
                "this expression",
            )
            .with_hint("split it with `let` bindings"),
            SyntaxError::UnknownShape(name, span) => Diagnostic::error(
                format!("unknown state shape `{name}`"),
                span,
                "expected `elem`, `rows`, `cols`, `tensor` or `group`",
            ),
        },
    }
}

fn expected_label(expected: &[String]) -> String {
    let names: Vec<String> = expected
        .iter()
        .map(|e| match e.as_str() {
            "IDENT" => "a name".to_string(),
            "NUMBER" => "a number".to_string(),
            "DOC" => "a doc comment".to_string(),
            quoted => format!("`{}`", quoted.trim_matches('"')),
        })
        .collect();
    match names.len() {
        0 => "not expected here".to_string(),
        1 => format!("expected {}", names[0]),
        n if n <= 8 => format!("expected one of {}", names.join(", ")),
        _ => format!("expected one of {}, …", names[..8].join(", ")),
    }
}
