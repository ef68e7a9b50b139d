//! Diagnostics snapshots: each `tests/diagnostics/NAME.opt` is a bad program;
//! `NAME.snap` holds its SOURCE and the ERROR optc renders for it. A program
//! here that compiles is itself a failure. `UPDATE_EXPECT=1` rewrites the snapshots.

mod common;

#[test]
fn diagnostics_snapshots() {
    let dir = common::repo_path("tests/diagnostics");
    let mut sources: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "opt"))
        .collect();
    sources.sort();
    assert!(sources.len() >= 25, "the snapshot folder is populated");
    for path in sources {
        let name = format!("{}.opt", path.file_stem().unwrap().to_string_lossy());
        let source = std::fs::read_to_string(&path).unwrap();
        let errors = common::compile_errors(&name, source.as_bytes());
        assert!(
            !errors.is_empty(),
            "{name} compiled, but it is a diagnostics case"
        );
        let snapshot = format!("--- SOURCE\n{source}--- ERROR\n{errors}");
        common::assert_snapshot(&path.with_extension("snap"), &snapshot);
    }
}
