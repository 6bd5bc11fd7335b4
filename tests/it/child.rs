//! The real `o2o-sidecar` binary as a child process (for SIGKILL, SIGTERM and log capture),
//! and DOKU-signed notifications for it. Shared by the `it` tests and by `tests/crash.rs`.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use o2o_sidecar::doku::signature::{self, Components, TimestampKind};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

pub(crate) const CLIENT_ID: &str = "MCH-0001-10791114622547";
pub(crate) const PATH: &str = "/payments/notifications";

/// Addresses the child bound, read from its "o2o-sidecar serving" log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addrs {
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) admin: SocketAddr,
}

/// A running `o2o-sidecar serve`.
pub(crate) struct Sidecar {
    child: Child,
    pub(crate) addrs: Addrs,
    /// Everything it wrote to stdout and stderr so far (when kept).
    log: Arc<Mutex<String>>,
    /// The tasks reading its stdout and stderr; they end at end of file.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// How a child is started.
pub(crate) struct Launch<'a> {
    /// `--doku-secret-key-file`.
    pub(crate) key_file: &'a std::path::Path,
    /// `--store`.
    pub(crate) store: &'a str,
    /// `--doku-base-url`.
    pub(crate) doku_base_url: &'a str,
    /// More flags.
    pub(crate) extra: &'a [&'a str],
    /// `RUST_LOG`; must let `o2o_sidecar`'s INFO "serving" line through.
    pub(crate) rust_log: &'a str,
    /// Keep the whole output (secret hygiene) or only what is needed to start (crash test).
    pub(crate) keep_log: bool,
    /// Shell commands run before the binary replaces the shell (`ulimit`, `trap`).
    pub(crate) wrap: Option<&'a str>,
}

fn addr(line: &serde_json::Value, field: &str) -> SocketAddr {
    line[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {line}"))
        .parse()
        .unwrap()
}

impl Sidecar {
    /// Starts the binary on 127.0.0.1:0 and waits for its "serving" line (JSON logs).
    pub(crate) async fn start(launch: &Launch<'_>) -> Self {
        // The test's own HTTP clients need a TLS provider even for plain HTTP.
        o2o_sidecar::install_tls_provider();
        let bin = env!("CARGO_BIN_EXE_o2o-sidecar");
        let mut cmd = match launch.wrap {
            None => Command::new(bin),
            Some(wrap) => {
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(format!("{wrap}; exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
        };
        cmd.arg("serve")
            .args(["--grpc-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--doku-client-id", CLIENT_ID])
            .arg("--doku-secret-key-file")
            .arg(launch.key_file)
            .args(["--doku-base-url", launch.doku_base_url])
            .args(["--store", launch.store])
            .args(["--log-format", "json"])
            .args(launch.extra)
            .env("RUST_LOG", launch.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start o2o-sidecar");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let keep = launch.keep_log;
        let mut readers = Vec::new();
        {
            let log = log.clone();
            readers.push(tokio::spawn(async move {
                let mut ready_tx = Some(ready_tx);
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if keep || ready_tx.is_some() {
                        let mut l = log.lock().unwrap();
                        l.push_str(&line);
                        l.push('\n');
                    }
                    if ready_tx.is_some()
                        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["message"] == "o2o-sidecar serving"
                    {
                        let addrs = Addrs {
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
                    if keep {
                        let mut l = log.lock().unwrap();
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            }));
        }
        let addrs = match tokio::time::timeout(Duration::from_secs(30), ready_rx).await {
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

    /// SIGKILL, and wait for the process to be gone (the crash test).
    #[allow(dead_code)]
    pub(crate) async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM; returns the exit status and the whole output once it stopped.
    pub(crate) async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = tokio::process::Command::new("kill")
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

    pub(crate) fn notification_url(&self) -> String {
        format!("http://{}{PATH}", self.addrs.http)
    }
}

/// A DOKU-style notification body.
pub(crate) fn notification_body(invoice: &str, amount: i64, code: &str, status: &str) -> String {
    format!(
        r#"{{"service":{{"id":"ONLINE_TO_OFFLINE"}},"acquirer":{{"id":"INDOMARET"}},"channel":{{"id":"ONLINE_TO_OFFLINE_INDOMARET"}},"transaction":{{"status":"{status}","date":"2026-11-25T07:06:28Z","original_request_id":"5b8e438f-fac1-4103-9e0e-ebfdc38b5acb"}},"order":{{"invoice_number":"{invoice}","amount":{amount}}},"online_to_offline_info":{{"payment_code":"{code}"}}}}"#
    )
}

/// The headers DOKU sends with `body`, signed now with `key` over [`PATH`].
pub(crate) fn notification_headers(
    body: &[u8],
    key: &str,
    request_id: &str,
) -> Vec<(&'static str, String)> {
    let now = time::OffsetDateTime::now_utc();
    let timestamp = o2o_sidecar::doku::request_timestamp(now);
    let digest = signature::digest(body);
    let sts = signature::string_to_sign(&Components {
        client_id: CLIENT_ID,
        request_id,
        timestamp: &timestamp,
        timestamp_kind: TimestampKind::Request,
        request_target: PATH,
        digest: Some(&digest),
    });
    vec![
        ("Client-Id", CLIENT_ID.to_owned()),
        ("Request-Id", request_id.to_owned()),
        ("Request-Timestamp", timestamp),
        ("Signature", signature::sign(key.as_bytes(), &sts)),
        ("Content-Type", "application/json".to_owned()),
    ]
}

/// Posts a notification; the HTTP status, or `None` when no answer came.
pub(crate) async fn post_notification(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
    headers: &[(&'static str, String)],
) -> Option<u16> {
    let mut req = http.post(url).body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.ok().map(|r| r.status().as_u16())
}
