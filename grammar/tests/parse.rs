//! The parser builds the tree the manual describes: precedence,
//! associativity, doc comments, and its limits.

use optc_grammar::ast::{ExprKind, ItemBody, Stmt};
use optc_grammar::{parse, parse_expr, FileId};

/// The expression as a fully parenthesised S-expression.
fn sexpr(source: &str) -> String {
    fn show(e: &optc_grammar::ast::Expr) -> String {
        match &e.kind {
            ExprKind::Number(n) => n.to_string(),
            ExprKind::Bool(b) => b.to_string(),
            ExprKind::Name(n) => n.clone(),
            ExprKind::Unary(op, a) => format!("({op:?} {})", show(a)),
            ExprKind::Binary(op, a, b) => format!("({} {} {})", op.symbol(), show(a), show(b)),
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => format!("(if {} {} {})", show(cond), show(then), show(otherwise)),
            ExprKind::Call { func, args } => {
                let args: Vec<String> = args
                    .iter()
                    .map(|a| match &a.name {
                        Some(n) => format!("{}={}", n.name, show(&a.value)),
                        None => show(&a.value),
                    })
                    .collect();
                format!("({} {})", func.name, args.join(" "))
            }
        }
    }
    show(&parse_expr(source, FileId(0)).expect("parses"))
}

#[test]
fn precedence_and_associativity() {
    assert_eq!(sexpr("-x^2"), "(Neg (^ x 2))");
    assert_eq!(sexpr("a^b^c"), "(^ a (^ b c))");
    assert_eq!(sexpr("a - b - c"), "(- (- a b) c)");
    assert_eq!(sexpr("a + b * c / d"), "(+ a (/ (* b c) d))");
    assert_eq!(sexpr("a < b && !c || d"), "(|| (&& (< a b) (Not c)) d)");
    assert_eq!(sexpr("1 - b1^t"), "(- 1 (^ b1 t))");
    assert_eq!(sexpr("2^-1"), "(^ 2 (Neg 1))");
}

#[test]
fn calls_if_expressions_and_numbers() {
    assert_eq!(sexpr("lerp(g, mu, b1)"), "(lerp g mu b1)");
    assert_eq!(sexpr("f(1, scale = 2,)"), "(f 1 scale=2)");
    assert_eq!(
        sexpr("if t > 1 { a } else if t > 0 { b } else { c }"),
        "(if (> t 1) a (if (> t 0) b c))"
    );
    assert_eq!(
        sexpr(".5 + 3. + 2.5E+3 + 1e-8"),
        "(+ (+ (+ 0.5 3) 2500) 0.00000001)"
    );
}

#[test]
fn items_carry_doc_comments_and_statements() {
    let file = parse(
        "/// Sign descent.\n///   p -= lr sign(g)\noptimizer s(lr = 0.1) {\n  // a comment\n  state mu: tensor = 0;\n  p -= lr * sign(g);\n  use other(x = 1);\n}\nfn f(x) { let y = x; y }",
        FileId(0),
    )
    .expect("parses");
    assert_eq!(file.items.len(), 2);
    let item = &file.items[0];
    assert_eq!(item.doc, vec!["Sign descent.", "  p -= lr sign(g)"]);
    assert_eq!(item.params[0].name.name, "lr");
    let ItemBody::Optimizer(body) = &item.body else {
        panic!("an optimizer")
    };
    assert!(matches!(&body[0], Stmt::State { shape: Some(_), .. }));
    assert!(matches!(&body[2], Stmt::Use { args, .. } if args.len() == 1));
    assert!(matches!(file.items[1].body, ItemBody::Function { .. }));
}

#[test]
fn spans_point_at_the_source() {
    let source = "optimizer o() { p -= oops; }";
    let file = parse(source, FileId(3)).unwrap();
    let ItemBody::Optimizer(body) = &file.items[0].body else {
        panic!("an optimizer")
    };
    let Stmt::Assign { value, .. } = &body[0] else {
        panic!("an assignment")
    };
    assert_eq!(&source[value.span.range()], "oops");
    assert_eq!(value.span.file, FileId(3));
}

#[test]
fn errors_are_diagnostics() {
    let error = parse("optimizer o() { p -= ; }", FileId(0)).unwrap_err();
    assert_eq!(error.message, "unexpected `;`");
    let error = parse("optimizer o() { p -= 1e309; }", FileId(0)).unwrap_err();
    assert_eq!(error.message, "number out of range");
    let nested = format!("{}1{}", "(".repeat(300), ")".repeat(300));
    let error = parse_expr(&nested, FileId(0)).unwrap_err();
    assert!(
        error.message.contains("nested too deeply"),
        "{}",
        error.message
    );
    let fine = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    assert!(parse_expr(&fine, FileId(0)).is_ok());
}
