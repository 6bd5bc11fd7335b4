//! The machine the numbers come from: cores, CPU model, memory, kernel, OS, and the load
//! average before and after (other work on a shared machine moves the numbers).

use serde::Serialize;

/// Facts about the machine, read from `/proc` and `/etc/os-release`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// Logical CPUs this process may use.
    pub(crate) cores: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub(crate) cpu_model: String,
    /// Total memory in MiB.
    pub(crate) memory_mib: u64,
    /// `uname -r`.
    pub(crate) kernel: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub(crate) os: String,
    /// 1-, 5- and 15-minute load averages when the run started.
    pub(crate) loadavg_before: String,
    /// The same when it ended.
    pub(crate) loadavg_after: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The first three fields of `/proc/loadavg`.
pub(crate) fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Machine {
    /// Reads the machine's facts now.
    pub(crate) fn probe() -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let memory_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "unknown".into());
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_mib,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            os,
            loadavg_before: loadavg(),
            loadavg_after: String::new(),
        }
    }

    /// One line for the report.
    pub(crate) fn line(&self) -> String {
        format!(
            "{} cores, {}, {} MiB RAM, {}, Linux {}; load average {} before, {} after",
            self.cores,
            self.cpu_model,
            self.memory_mib,
            self.os,
            self.kernel,
            self.loadavg_before,
            self.loadavg_after
        )
    }
}
