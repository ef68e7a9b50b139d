//! The logos lexer. Turns source text into tokens for the LALRPOP parser;
//! `//` comments and whitespace vanish here, `///` doc comments stay tokens.

use logos::Logos;

use crate::span::{FileId, Span};

/// Why lexing failed (the span travels beside it).
#[derive(Clone, Debug, PartialEq, Default)]
pub enum LexError {
    #[default]
    UnexpectedCharacter,
    NumberOutOfRange,
}

fn number<'s>(lex: &mut logos::Lexer<'s, Token<'s>>) -> Result<f64, LexError> {
    let value: f64 = lex
        .slice()
        .parse()
        .map_err(|_| LexError::NumberOutOfRange)?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(LexError::NumberOutOfRange)
    }
}

#[derive(Logos, Clone, Copy, Debug, PartialEq)]
#[logos(error = LexError)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip(r"//[^\n]*", allow_greedy = true))]
pub enum Token<'s> {
    #[regex(r"///[^\n]*", |lex| lex.slice()[3..].trim_end_matches('\r'), priority = 10, allow_greedy = true)]
    DocComment(&'s str),
    #[regex(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?", number)]
    #[regex(r"\.[0-9]+([eE][+-]?[0-9]+)?", number)]
    Number(f64),
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*")]
    Ident(&'s str),

    #[token("optimizer")]
    Optimizer,
    #[token("fn")]
    Fn,
    #[token("objective")]
    Objective,
    #[token("param")]
    Param,
    #[token("loss")]
    Loss,
    #[token("state")]
    State,
    #[token("let")]
    Let,
    #[token("use")]
    Use,
    #[token("if")]
    If,
    #[token("else")]
    Else,
    #[token("true")]
    True,
    #[token("false")]
    False,

    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token(",")]
    Comma,
    #[token(";")]
    Semi,
    #[token(":")]
    Colon,
    #[token("=")]
    Assign,
    #[token("+=")]
    PlusAssign,
    #[token("-=")]
    MinusAssign,
    #[token("*=")]
    StarAssign,
    #[token("/=")]
    SlashAssign,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("^")]
    Caret,
    #[token("==")]
    EqEq,
    #[token("!=")]
    NotEq,
    #[token("<")]
    Lt,
    #[token("<=")]
    Le,
    #[token(">")]
    Gt,
    #[token(">=")]
    Ge,
    #[token("&&")]
    AndAnd,
    #[token("||")]
    OrOr,
    #[token("!")]
    Bang,
}

impl std::fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Token::DocComment(_) => "doc comment",
            Token::Number(_) => "number",
            Token::Ident(name) => return write!(f, "`{name}`"),
            Token::Optimizer => "`optimizer`",
            Token::Fn => "`fn`",
            Token::Objective => "`objective`",
            Token::Param => "`param`",
            Token::Loss => "`loss`",
            Token::State => "`state`",
            Token::Let => "`let`",
            Token::Use => "`use`",
            Token::If => "`if`",
            Token::Else => "`else`",
            Token::True => "`true`",
            Token::False => "`false`",
            Token::LParen => "`(`",
            Token::RParen => "`)`",
            Token::LBrace => "`{`",
            Token::RBrace => "`}`",
            Token::Comma => "`,`",
            Token::Semi => "`;`",
            Token::Colon => "`:`",
            Token::Assign => "`=`",
            Token::PlusAssign => "`+=`",
            Token::MinusAssign => "`-=`",
            Token::StarAssign => "`*=`",
            Token::SlashAssign => "`/=`",
            Token::Plus => "`+`",
            Token::Minus => "`-`",
            Token::Star => "`*`",
            Token::Slash => "`/`",
            Token::Caret => "`^`",
            Token::EqEq => "`==`",
            Token::NotEq => "`!=`",
            Token::Lt => "`<`",
            Token::Le => "`<=`",
            Token::Gt => "`>`",
            Token::Ge => "`>=`",
            Token::AndAnd => "`&&`",
            Token::OrOr => "`||`",
            Token::Bang => "`!`",
        };
        f.write_str(text)
    }
}

/// An error the parser's actions or the lexer raise, with its span.
#[derive(Clone, Debug, PartialEq)]
pub enum SyntaxError {
    Lex(LexError, Span),
    TooDeep(Span),
    UnknownShape(String, Span),
}

/// The token stream in the form LALRPOP's external-lexer interface takes.
pub fn tokens(
    source: &str,
    file: FileId,
) -> impl Iterator<Item = Result<(usize, Token<'_>, usize), SyntaxError>> + '_ {
    Token::lexer(source)
        .spanned()
        .map(move |(token, range)| match token {
            Ok(token) => Ok((range.start, token, range.end)),
            Err(error) => Err(SyntaxError::Lex(
                error,
                Span::new(file, range.start, range.end),
            )),
        })
}
