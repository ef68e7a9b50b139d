//! Generates the LALRPOP parser from `src/parser.lalrpop`.
fn main() {
    lalrpop::process_src().expect("the .opt grammar must generate a parser");
}
