//! The real `o2o-sidecar serve` as a child process, on `127.0.0.1:0`: for SIGKILL, SIGTERM,
//! resource limits, several processes on one database and log capture.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    task::JoinHandle,
};

use crate::BoundAddrs;

use super::{CLIENT_ID, PATH};

/// How a child is started: what the tests vary.
#[derive(Debug, Clone)]
pub struct ChildOptions {
    /// The `o2o-sidecar` binary: `env!("CARGO_BIN_EXE_o2o-sidecar")` in an integration test
    /// (Cargo sets it only there).
    pub bin: PathBuf,
    /// `--doku-secret-key-file`.
    pub key_file: PathBuf,
    /// `--store`.
    pub store: String,
    /// `--doku-base-url` (default: a port where nothing listens, for tests that never call
    /// DOKU).
    pub doku_base_url: String,
    /// More flags.
    pub extra: Vec<String>,
    /// `RUST_LOG`; must let `o2o_sidecar`'s INFO "serving" line through (default `info`).
    pub rust_log: String,
    /// Keep the whole output (default), or only what is needed to start (the crash test).
    pub keep_log: bool,
    /// Shell commands run before the binary replaces the shell (`ulimit`, `trap`).
    pub wrap: Option<String>,
}

impl ChildOptions {
    /// The defaults for `bin` with its key in `key_file`, on `store`.
    pub fn new(bin: impl Into<PathBuf>, key_file: impl Into<PathBuf>, store: &str) -> Self {
        Self {
            bin: bin.into(),
            key_file: key_file.into(),
            store: store.into(),
            doku_base_url: "http://127.0.0.1:9".into(),
            extra: Vec::new(),
            rust_log: "info".into(),
            keep_log: true,
            wrap: None,
        }
    }

    /// With more flags.
    pub fn flags(mut self, extra: &[&str]) -> Self {
        self.extra.extend(extra.iter().map(|s| (*s).to_owned()));
        self
    }
}

/// A running `o2o-sidecar serve`, killed when dropped.
#[derive(Debug)]
pub struct ChildSidecar {
    child: Child,
    /// Addresses it bound, read from its "o2o-sidecar serving" log line.
    pub addrs: BoundAddrs,
    /// Everything it wrote to stdout and stderr so far (when kept).
    log: Arc<Mutex<String>>,
    /// The tasks reading its stdout and stderr; they end at end of file.
    readers: Vec<JoinHandle<()>>,
}

fn addr(line: &serde_json::Value, field: &str) -> std::net::SocketAddr {
    line[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {line}"))
        .parse()
        .unwrap()
}

/// Appends a line to the shared log.
fn keep(log: &Mutex<String>, line: &str) {
    let mut l = log.lock().unwrap();
    l.push_str(line);
    l.push('\n');
}

/// `o2o-sidecar serve` on loopback port 0 with `options`, JSON logs on stderr, and none of
/// the caller's `O2O_*`/`OTEL_*` environment.
fn command(options: &ChildOptions) -> Command {
    let mut cmd = match &options.wrap {
        None => Command::new(&options.bin),
        Some(wrap) => {
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg(format!("{wrap}; exec \"$0\" \"$@\""))
                .arg(&options.bin);
            c
        }
    };
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("O2O_") || n.starts_with("OTEL_") {
            cmd.env_remove(&name);
        }
    }
    cmd.arg("serve")
        .args(["--grpc-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(["--doku-client-id", CLIENT_ID])
        .arg("--doku-secret-key-file")
        .arg(&options.key_file)
        .args(["--doku-base-url", &options.doku_base_url])
        .args(["--store", &options.store])
        .args(["--log-format", "json"])
        .args(&options.extra)
        .env("RUST_LOG", &options.rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

impl ChildSidecar {
    /// Starts the binary with JSON logs and waits (at most 60 s) for its "serving" line.
    /// Environment variables that configure the sidecar (`O2O_*`, `OTEL_*`) are not passed on.
    pub async fn start(options: &ChildOptions) -> Self {
        // The test's own HTTP clients need a TLS provider even for plain HTTP.
        crate::install_tls_provider();
        let mut child = command(options).spawn().expect("start o2o-sidecar");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let keep_all = options.keep_log;
        let mut readers = Vec::new();
        {
            let log = log.clone();
            readers.push(tokio::spawn(async move {
                let mut ready_tx = Some(ready_tx);
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if keep_all || ready_tx.is_some() {
                        keep(&log, &line);
                    }
                    if ready_tx.is_some()
                        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["message"] == "o2o-sidecar serving"
                    {
                        let addrs = BoundAddrs {
                            grpc: addr(&v, "grpc_addr"),
                            http: addr(&v, "http_addr"),
                            admin: addr(&v, "admin_addr"),
                        };
                        let _ = ready_tx.take().unwrap().send(addrs);
                    }
                }
            }));
        }
        {
            let log = log.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if keep_all {
                        keep(&log, &line);
                    }
                }
            }));
        }
        let addrs = match tokio::time::timeout(Duration::from_secs(60), ready_rx).await {
            Ok(Ok(addrs)) => addrs,
            _ => {
                let _ = child.start_kill();
                panic!(
                    "o2o-sidecar did not start:\n{}",
                    log.lock().unwrap().as_str()
                );
            }
        };
        Self {
            child,
            addrs,
            log,
            readers,
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM; returns the exit status and the whole output once it stopped (at most 30 s).
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("stops within 30 s of SIGTERM")
            .unwrap();
        for r in self.readers.drain(..) {
            let _ = r.await;
        }
        let log = self.log.lock().unwrap().clone();
        (status, log)
    }

    /// The last `n` lines of its output so far.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Where DOKU sends notifications.
    pub fn notification_url(&self) -> String {
        format!("http://{}{PATH}", self.addrs.http)
    }
}
