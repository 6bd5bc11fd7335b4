//! `o2o-sidecar dev` as a newcomer runs it: the banner names the addresses actually bound, the
//! streaming command comes first, and the temporary directory is gone after Ctrl-C/SIGTERM
//! unless `--keep-dir` asked to keep it. (The loopback defaults themselves are asserted in
//! `config`'s unit tests: they are fixed ports, which a shared machine may have taken.)

use std::{net::SocketAddr, path::Path, process::Stdio};

use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

/// A running `o2o-sidecar dev` and its banner.
pub(crate) struct Dev {
    child: Child,
    banner: Vec<String>,
}

impl Dev {
    /// Starts `dev` with its temporary directory under `tmp` and reads the banner (it ends with
    /// the GetStatus line; stdout is line-buffered, so it arrives as printed).
    pub(crate) async fn start(tmp: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_o2o-sidecar"));
        cmd.arg("dev")
            .args(["--grpc-addr", "127.0.0.1:0", "--sim-addr", "127.0.0.1:0"])
            .args(extra)
            .env("TMPDIR", tmp)
            .env("RUST_LOG", "warn")
            .env_remove("O2O_HTTP_ADDR")
            .env_remove("O2O_ADMIN_ADDR")
            .env_remove("O2O_STORE")
            .env_remove("O2O_DEV_KEEP_DIR")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            let last = line.contains("O2OPayments/GetStatus");
            banner.push(line);
            if last {
                break;
            }
        }
        assert!(
            banner.iter().any(|l| l.contains("GetStatus")),
            "dev exited before its banner: {banner:?}"
        );
        // Keep reading: the child must never write into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, banner }
    }

    /// The URL or address after `label` on its banner line.
    fn field(&self, label: &str) -> String {
        let line = self
            .banner
            .iter()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line in {:#?}", self.banner));
        line.trim_start()[label.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// The `host:port` of a banner URL.
    pub(crate) fn addr(&self, label: &str) -> SocketAddr {
        let url = self.field(label);
        let rest = url.strip_prefix("http://").unwrap_or(&url);
        rest.split('/').next().unwrap().parse().unwrap()
    }

    fn line_index(&self, needle: &str) -> usize {
        self.banner
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {:#?}", self.banner))
    }

    /// SIGTERM, then the exit status.
    pub(crate) async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        self.child.wait().await.unwrap()
    }
}

fn dev_dirs(tmp: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("o2o-sidecar-dev-")
        })
        .collect()
}

#[tokio::test]
async fn dev_banner_shows_bound_addresses_and_cleans_up() {
    o2o_sidecar::install_tls_provider();
    let tmp = tempfile::tempdir().unwrap();
    // One listener chosen on the command line, one through its env twin, both port 0.
    let dev = Dev::start(
        tmp.path(),
        &["--http-addr", "0.0.0.0:0"],
        &[("O2O_ADMIN_ADDR", "127.0.0.1:0")],
    )
    .await;

    // Bound ports, not the 0 that was asked for; the address chosen beyond loopback is named.
    let admin = dev.addr("admin");
    assert!(admin.ip().is_loopback() && admin.port() != 0, "{admin}");
    let grpc = dev.addr("gRPC (o2o.v1.O2OPayments)");
    assert!(grpc.ip().is_loopback() && grpc.port() != 0, "{grpc}");
    let notify_line = &dev.banner[dev.line_index("DOKU notifications")];
    let http = dev.addr("DOKU notifications");
    assert_ne!(http.port(), 0);
    assert!(
        notify_line.contains(&format!("bound 0.0.0.0:{}", http.port())),
        "{notify_line}"
    );
    assert!(!dev.banner[dev.line_index("admin")].contains("reachable from the network"));

    // The streaming command first, with the second-terminal note before it.
    let stream = dev.line_index("O2OPayments/StreamNotifications");
    let generate = dev.line_index("O2OPayments/GeneratePaymentCode");
    let note = dev.line_index("second terminal");
    assert!(note < stream && stream < generate, "{:#?}", dev.banner);

    // The printed admin URL is the live listener.
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("http://{admin}/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // The printed gRPC address serves payments, with the instructions `dev` lets the sidecar
    // fetch from its simulator.
    let payment = o2o_sidecar::testing::connect(grpc)
        .await
        .generate_payment_code(o2o_sidecar::testing::request("INV-DEV-1", 10_000))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert!(!payment.payment_code.is_empty());
    assert!(
        payment.instructions.iter().any(|i| !i.steps.is_empty()),
        "{payment:?}"
    );

    // The SQLite file lives in one temporary directory under TMPDIR while it runs...
    let store = dev.field("store");
    let dirs = dev_dirs(tmp.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(store.contains(&*dirs[0].to_string_lossy()), "{store}");
    assert!(dirs[0].join("o2o-sidecar.db").exists());
    // ...and is gone after a graceful stop.
    let status = dev.stop().await;
    assert!(status.success(), "{status}");
    assert_eq!(dev_dirs(tmp.path()), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn dev_keep_dir_keeps_the_temporary_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(
        tmp.path(),
        &["--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"],
        &[("O2O_DEV_KEEP_DIR", "true")],
    )
    .await;
    assert!(dev.banner[dev.line_index("store")].contains("kept on exit"));
    let status = dev.stop().await;
    assert!(status.success(), "{status}");
    let dirs = dev_dirs(tmp.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(dirs[0].join("o2o-sidecar.db").exists());
}

#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_o2o-sidecar"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "{} (commit {})",
            env!("CARGO_PKG_VERSION"),
            o2o_sidecar::GIT_COMMIT
        )),
        "{text}"
    );
}
