//! The binaries as a user runs them: bad configuration is one line naming the flag, exit 64.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin)
        .args(args)
        .env_remove("O2O_DOKU_CLIENT_ID")
        .env_remove("O2O_DOKU_SECRET_KEY_FILE")
        .env_remove("DOKU_SIM_CLIENT_ID")
        .env_remove("DOKU_SIM_SECRET_KEY_FILE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serve_without_required_config_exits_64_naming_the_flag() {
    let bin = env!("CARGO_BIN_EXE_o2o-sidecar");
    let (code, err) = run(bin, &["serve"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--doku-client-id"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let (code, err) = run(bin, &["serve", "--doku-client-id", "MCH-1"]);
    assert_eq!(code, 64);
    assert!(err.contains("--doku-secret-key-file"), "{err}");

    let (code, err) = run(
        bin,
        &[
            "serve",
            "--doku-client-id",
            "MCH-1",
            "--doku-secret-key-file",
            "/nonexistent/key",
        ],
    );
    assert_eq!(code, 64);
    assert!(err.contains("--doku-secret-key-file"), "{err}");

    let (code, _) = run(bin, &["serve", "--grpc-addr", "not-an-address"]);
    assert_eq!(code, 64);
    let (code, _) = run(bin, &["--help"]);
    assert_eq!(code, 0);
}

#[test]
fn doku_sim_without_required_config_exits_64() {
    let bin = env!("CARGO_BIN_EXE_doku-sim");
    let (code, err) = run(bin, &[]);
    assert_eq!(code, 64, "{err}");
}
