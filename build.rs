//! Compiles the O2OPayments contract with protox (no `protoc` needed) and writes the descriptor
//! set that gRPC reflection serves, and records the git commit for `--version`
//! (`O2O_GIT_COMMIT`, "unknown" when git or the repository is absent, e.g. a source tarball).

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/o2o/v1/o2o_payments.proto";
    println!("cargo:rerun-if-changed={proto}");
    // sqlx::migrate! embeds these at compile time.
    println!("cargo:rerun-if-changed=migrations");
    git_commit();
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("o2o_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

/// Emits `O2O_GIT_COMMIT` (short hash, `-dirty` is not tracked: the commit is what a bug report
/// needs) and asks cargo to rerun when HEAD or the branch it points to moves.
fn git_commit() {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (!s.is_empty()).then_some(s)
    };
    // `--git-path` resolves worktrees (where `.git` is a file) and the common ref directory.
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ]
    .into_iter()
    .flatten()
    {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=O2O_GIT_COMMIT={commit}");
}
