//! The raw program the Lion paper's search found (`examples/lion_raw.opt`,
//! Chen et al. 2023, Program 2) simplifies, in the algebraic tier, to Lion
//! with a clipped, arcsin'd gradient: the dead state `m` and its cosh go,
//! `m / sqrt(m * m)` becomes `sign(m)`, and the two interpolations of `v`
//! towards the gradient become one (`lerp-lerp`).

mod common;

use common::{agree, compile, Agreement, Inputs};
use expect_test::expect;
use optc_compiler::emit::emit;
use optc_compiler::ir::{BinaryOp, Handle, Input, Node, Rule, UnaryOp};
use optc_compiler::simplify::{simplify, simplify_with_report, Tier};

const SOURCE: &str = include_str!("../../examples/lion_raw.opt");

fn lion_raw() -> Rule {
    compile(SOURCE)
}

/// The constant a node holds, if it is one.
fn constant(rule: &Rule, handle: Handle) -> Option<f64> {
    match *rule.graph.node(handle) {
        Node::Const(bits) => Some(f64::from_bits(bits)),
        _ => None,
    }
}

#[test]
fn the_raw_program_simplifies_to_lion() {
    let raw = lion_raw();
    assert_eq!(raw.name, "lion_raw");
    let names =
        |rule: &Rule| -> Vec<String> { rule.states.iter().map(|s| s.name.clone()).collect() };
    assert_eq!(names(&raw), ["m", "v"]);

    let (simplified, report) = simplify_with_report(&raw, Tier::Algebraic);
    assert_eq!(
        simplified.to_string(),
        simplify(&raw, Tier::Algebraic).to_string()
    );

    // Exactly one slot is left: the dead `m` (overwritten before it is read,
    // its new value cosh(update) never read) is gone.
    assert_eq!(names(&simplified), ["v"], "{report}");
    assert_eq!(report.removed_states, ["m"]);
    let fired = |name: &str| report.fired.iter().any(|(n, _)| *n == name);
    assert!(fired("lerp-lerp") && fired("div-sqrt-square"), "{report}");
    assert!(report.cost_after < report.cost_before, "{report}");

    // No exp (cosh was made of two), no division or sqrt: `m / sqrt(m * m)`
    // became `sign(m)`.
    let nodes: Vec<Node> = simplified.graph.iter().map(|(_, n)| *n).collect();
    for node in &nodes {
        assert!(
            !matches!(
                node,
                Node::Unary(UnaryOp::Exp | UnaryOp::Sqrt, _) | Node::Binary(BinaryOp::Div, _, _)
            ),
            "{node:?} is left\n{simplified}"
        );
    }
    let signs: Vec<Handle> = nodes
        .iter()
        .filter_map(|n| match *n {
            Node::Unary(UnaryOp::Sign, a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(signs.len(), 1, "{simplified}");
    // What the sign reads: m = interp(g', v, 0.899).
    let Node::Lerp(start, old_v, b1) = *simplified.graph.node(signs[0]) else {
        panic!("sign of a lerp\n{simplified}");
    };
    assert!(matches!(
        simplified.graph.node(old_v),
        Node::Input(Input::State(0), _)
    ));
    assert_eq!(constant(&simplified, b1), Some(0.899));

    // The slot's new value is one lerp of the same g' towards its old value,
    // with the two weights multiplied out (lerp-lerp, then constant folding).
    let Node::Lerp(v_start, v_old, v_weight) = *simplified.graph.node(simplified.state_out[0])
    else {
        panic!("v's new value is a lerp\n{simplified}");
    };
    assert_eq!(v_start, start);
    assert_eq!(v_old, old_v);
    assert_eq!(constant(&simplified, v_weight), Some(0.899 * 1.109));
    // g' = arcsin(clip(g, learning_rate)): the series' x times its
    // polynomial, x = min(max(g, -learning_rate), learning_rate).
    let Node::Binary(BinaryOp::Mul, clipped, _) = *simplified.graph.node(start) else {
        panic!("the arcsin series\n{simplified}");
    };
    let Node::Binary(BinaryOp::Min, lower_clipped, hi) = *simplified.graph.node(clipped) else {
        panic!("the clip\n{simplified}");
    };
    assert!(matches!(
        simplified.graph.node(hi),
        Node::Input(Input::Hyper(0), _)
    ));
    let Node::Binary(BinaryOp::Max, grad, _) = *simplified.graph.node(lower_clipped) else {
        panic!("the clip\n{simplified}");
    };
    assert!(matches!(
        simplified.graph.node(grad),
        Node::Input(Input::Grad, _)
    ));

    // And it still computes what the raw program computes.
    let close = |relative, absolute| Agreement::Close { relative, absolute };
    agree(
        &raw,
        &simplified,
        7,
        6,
        Inputs::Benign,
        close(1e-4, 1e-6),
        close(1e-9, 1e-12),
    )
    .unwrap_or_else(|e| panic!("{e}\n{simplified}"));

    expect![[r#"
        /// The raw program the evolutionary search found before it was simplified into
        /// Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms",
        /// Program 2), transcribed statement by statement. The paper's
        ///   interp(x, y, a) = (1 - a) x + a y   is   lerp(x, y, a),
        ///   clip(g, lr)     clamps g to [-lr, lr]  (stdlib `clip`),
        /// its returned `update` is subtracted from the parameters, and both `m` and
        /// `v` are per-element state starting at 0.
        /// What `optc` makes of it (algebraic simplification, `simplify(&rule,
        /// Tier::Algebraic)`): the old `m` is never read (it is overwritten first) and
        /// its new value `cosh(update)` never reaches `p`, so the slot and its cosh go;
        /// `m / sqrt(m * m)` is `sign(m)`; and `v = interp(g, interp(g, v, 0.899), 1.109)`
        /// is one interpolation, `lerp(g, v, 0.899 * 1.109)`. What is left is Lion with
        ///   c = lerp(g', v, 0.899),  p -= 0.0002 learning_rate (sign(c) + 0.4602 p),
        ///   v = lerp(g', v, 0.996991),  g' = arcsin(clip(g, learning_rate)),
        /// i.e. b1 = 0.899, b2 = 0.899 * 1.109, weight decay 0.4602, and the gradient
        /// clipped and bent by arcsin, which the paper then removed by hand.
        /// learning_rate is the paper's `lr` and keeps its two roles: the clipping
        /// bound, and (times the program's own 0.0002) the step size. Its default 0.5
        /// makes the step 1e-4, the stdlib `lion`'s default, and bounds arcsin's
        /// argument by 0.5, where the `arcsin` series is within 1.4e-4 of arcsin (relative).
        optimizer lion_raw(learning_rate = 0.5) {
            state v = 0;
            let t1 = clamp(g, -learning_rate, learning_rate);
            let t2 = t1 * (1 + t1 * t1 * (0.16666666666666666 + t1 * t1 * (0.075 + t1 * t1 * 0.044642857142857144)));
            p -= (sign(lerp(t2, v, 0.899)) + p * 0.4602) * (learning_rate * 2e-4);
            v = lerp(t2, v, 0.996991);
        }
    "#]].assert_eq(&emit(&simplified, &optc_stdlib::prelude()));
}
