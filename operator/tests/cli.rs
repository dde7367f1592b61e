//! The built binary: the test clock cannot be switched on by the flag alone.

use std::process::Command;

#[test]
fn the_test_clock_flag_is_refused_without_the_environment_switch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_kubekms-operator"))
        .args(["--log-format", "text", "--root-key"])
        .arg(dir.path().join("root.key"))
        .arg("--test-clock-offset-file")
        .arg(dir.path().join("offset"))
        .env_remove("KUBEKMS_ALLOW_TEST_CLOCK")
        .output()
        .expect("run the operator");
    assert!(!output.status.success(), "started with a test clock");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("KUBEKMS_ALLOW_TEST_CLOCK=1"),
        "stderr: {stderr}"
    );
}

#[test]
fn the_test_clock_flag_is_hidden_from_help() {
    let output = Command::new(env!("CARGO_BIN_EXE_kubekms-operator"))
        .arg("--help")
        .output()
        .expect("run the operator");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--root-key"), "{help}");
    assert!(!help.contains("test-clock"), "{help}");
}
