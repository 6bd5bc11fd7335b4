//! The processes under test: spawned from their binaries, their stderr drained to a log file
//! after the one start-up line that names their bound address, their memory, open files and
//! CPU time read from `/proc`, killed when dropped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    process::{Child, Command},
    time::Instant,
};

/// How long a process may take to log its start-up line (debug builds on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running process under test.
#[derive(Debug)]
pub(crate) struct Proc {
    /// Short name for messages.
    pub(crate) name: String,
    /// The start-up line it logged.
    pub(crate) line: String,
    /// When `spawn` was called.
    pub(crate) spawned: Instant,
    pid: u32,
    child: Child,
}

impl Proc {
    /// Spawns `program args…` with `envs`, and waits for a stderr line containing `marker`.
    pub(crate) async fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        marker: &str,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id().context("no pid")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut reader = BufReader::new(stderr);
        let mut file = tokio::fs::File::create(&log)
            .await
            .with_context(|| format!("cannot create {}", log.display()))?;
        let deadline = spawned + START_TIMEOUT;
        let mut text = String::new();
        let line = loop {
            text.clear();
            let read = tokio::time::timeout_at(deadline, reader.read_line(&mut text)).await;
            match read {
                Err(_) => bail!(
                    "{name}: no start-up line within {START_TIMEOUT:?}; see {}",
                    log.display()
                ),
                Ok(Err(e)) => bail!("{name}: reading its log: {e}"),
                Ok(Ok(0)) => {
                    let status = child.wait().await?;
                    bail!(
                        "{name} exited ({status}) before it was ready; see {}",
                        log.display()
                    );
                }
                Ok(Ok(_)) => {
                    file.write_all(text.as_bytes()).await?;
                    if text.contains(marker) {
                        break text.trim_end().to_owned();
                    }
                }
            }
        };
        tokio::spawn(async move {
            let _ = tokio::io::copy_buf(&mut reader, &mut file).await;
        });
        Ok(Self {
            name: name.to_owned(),
            line,
            spawned,
            pid,
            child,
        })
    }

    /// The address logged as `key=IP:PORT` in the start-up line.
    pub(crate) fn addr(&self, key: &str) -> anyhow::Result<SocketAddr> {
        field(&self.line, key)
            .with_context(|| format!("{}: no {key}= in {:?}", self.name, self.line))
    }

    /// Resident memory now.
    pub(crate) fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kb = |key: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .with_context(|| format!("no {key} in /proc/PID/status"))
        };
        Ok(Memory {
            rss: kb("VmRSS:")?,
            anon: kb("RssAnon:")?,
            file: kb("RssFile:")?,
        })
    }

    /// Open file descriptors now (sockets, the store's files, pipes).
    pub(crate) fn open_files(&self) -> anyhow::Result<u64> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count() as u64)
    }

    /// CPU time (user + system, all threads) used so far.
    pub(crate) fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            Ok(fields.get(i).context("short /proc/PID/stat")?.parse()?)
        };
        // Field 14 is the 12th after the state field (field 3 is index 0 here).
        let total = ticks(11)? + ticks(12)?;
        Ok(Duration::from_millis(total * 1000 / CLOCK_TICKS_PER_SECOND))
    }

    /// Kills the process and waits for it.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Resident memory of a process, bytes (`/proc/PID/status`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Memory {
    /// `VmRSS`: everything resident.
    pub(crate) rss: u64,
    /// `RssAnon`: heap, stacks; what the process itself allocated.
    pub(crate) anon: u64,
    /// `RssFile`: mapped file pages (the binary's code and data, shared libraries), which the
    /// kernel can drop and read again.
    pub(crate) file: u64,
}

/// `USER_HZ`, the unit of `/proc/PID/stat` times: 100 on every Linux architecture this runs on.
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// The value of ` key=VALUE` (or `key=` at the line start) in a log line, as an address.
pub(crate) fn field(line: &str, key: &str) -> Option<SocketAddr> {
    let needle = format!("{key}=");
    let mut from = 0;
    while let Some(pos) = line[from..].find(&needle) {
        let at = from + pos;
        let boundary = at == 0 || line[..at].ends_with([' ', '\t', '{', ',']);
        if boundary {
            let value = &line[at + needle.len()..];
            let value = value
                .split(|c: char| c.is_whitespace() || c == ',')
                .next()
                .unwrap_or("")
                .trim_matches('"');
            return value.parse().ok();
        }
        from = at + needle.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_the_start_up_lines() {
        let sidecar = "2026-11-25T12:00:00Z  INFO o2o_sidecar: o2o-sidecar serving \
                       grpc_addr=127.0.0.1:41234 http_addr=127.0.0.1:41235 \
                       admin_addr=127.0.0.1:41236 notification_path=/payments/notifications";
        assert_eq!(field(sidecar, "grpc_addr").unwrap().port(), 41234);
        assert_eq!(field(sidecar, "http_addr").unwrap().port(), 41235);
        assert_eq!(field(sidecar, "addr"), None, "grpc_addr= is not addr=");
        let sim = "2026-11-25T12:00:00Z  INFO doku_sim: doku-sim listening addr=127.0.0.1:8181";
        assert_eq!(field(sim, "addr").unwrap().port(), 8181);
    }
}
