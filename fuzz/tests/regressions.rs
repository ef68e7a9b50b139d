//! Every input in `fuzz/regressions/TARGET/` (inputs that once crashed or
//! hung a target, and the hostile inputs of past reports) runs through its
//! target without a panic.

use std::process::Command;

#[test]
fn every_regression_input_runs_cleanly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut count = 0;
    for target in std::fs::read_dir(&root).expect("fuzz/regressions exists") {
        let target = target.unwrap().path();
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        let files: Vec<String> = std::fs::read_dir(&target)
            .unwrap()
            .map(|f| f.unwrap().path().to_string_lossy().into_owned())
            .collect();
        count += files.len();
        let output = Command::new(env!("CARGO_BIN_EXE_optc-fuzz"))
            .arg("replay")
            .arg(&name)
            .args(&files)
            .output()
            .expect("optc-fuzz runs");
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    assert!(count >= 6, "the regression inputs are there");
}
