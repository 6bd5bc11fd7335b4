//! `o2o-bench`: measures the sidecar against baselines in one invocation and writes the table
//! (`latest.md`) and every run's values with full histograms (`latest.json`).
//!
//! It starts `doku-sim`, `o2o-sidecar serve` and a no-op baseline server (this binary's
//! `noop-server` subcommand) as separate processes on port 0, drives them with open-loop and
//! closed-loop load, and repeats every measurement (`--runs`, at least 3 for a full run). See
//! `docs/benchmarks.md` for what each row means. `bench/run` is the one command that builds
//! everything and runs it; `bench/run --smoke` is CI's seconds-long check that it works.
//! The P6 rows run the sidecar on PostgreSQL (`--postgres`, a new database per run); without a
//! reachable server they say why they were not measured and the rest of the run goes on.
//! `--soak 30m` instead runs constant mixed load against one sidecar for that long and writes
//! `soak.md` and `soak.json` (see [`soak`]).
#![forbid(unsafe_code)]

mod hist;
mod load;
mod machine;
mod noop;
mod postgres;
mod procs;
mod report;
mod scenarios;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use time::{OffsetDateTime, macros::format_description};

use crate::{
    load::PhaseReport,
    machine::Machine,
    report::Report,
    scenarios::{P6, Plan, Rig, RunResult},
    soak::{SoakPlan, SoakReport},
};

/// Benchmarks o2o-sidecar against baselines in the same run.
// A flag given twice takes the last value: `bench/run` passes `--bin-dir` and `--out` before
// the caller's arguments, which may set them again (`bash bench/run --out /tmp/x`).
#[derive(Debug, Parser)]
#[command(name = "o2o-bench", args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Seconds-long run for CI: proves the harness works; numbers mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Instead of the table: constant mixed load against one sidecar for this long (`30m`,
    /// `90s`), written to `soak.md` and `soak.json`.
    #[arg(long, value_name = "DURATION", value_parser = soak::parse_duration, conflicts_with = "runs")]
    soak: Option<Duration>,
    /// Repetitions of every measurement (default 3; 1 in smoke mode).
    #[arg(long)]
    runs: Option<usize>,
    /// Directory with the `o2o-sidecar` and `doku-sim` binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where `latest.md` and `latest.json` (or `soak.md` and `soak.json`) are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The command line shown in the report.
    #[arg(long, default_value = "bash bench/run")]
    command_line: String,
    /// Keep the processes' logs and SQLite files (printed at the end).
    #[arg(long)]
    keep_work: bool,
    /// Extra environment for the sidecar processes, `KEY=VALUE` (repeatable), to compare a
    /// setting (`RUST_LOG=warn`, `MALLOC_ARENA_MAX=2`); recorded in the report.
    #[arg(long, value_parser = key_value)]
    sidecar_env: Vec<(String, String)>,
    /// PostgreSQL admin URL for the P6 rows: each run creates a database of its own through it
    /// (with `psql`) and drops it afterwards. Unreachable: P6 is reported as not measured.
    #[arg(
        long,
        value_name = "URL",
        env = "O2O_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    postgres: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The P1 baseline: a no-op O2OPayments server on a free loopback port.
    NoopServer,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("o2o-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Cmd::NoopServer) => runtime.block_on(noop::serve()).map(|()| true),
        None => match cli.soak {
            Some(duration) => runtime.block_on(soak(cli, duration)),
            None => runtime.block_on(bench(cli)),
        },
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("o2o-bench: some requests failed or events were lost; see the report");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("o2o-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every measurement; `Ok(false)` when more than 1% of some phase's requests failed.
async fn bench(cli: Cli) -> anyhow::Result<bool> {
    let runs = cli.runs.unwrap_or(if cli.smoke { 1 } else { 3 }).max(1);
    let plan = Plan {
        sidecar_env: cli.sidecar_env.clone(),
        ..Plan::new(cli.smoke, runs)
    };
    let ((results, once), machine, started) =
        on_rig(&cli, &plan, async |rig| measure(rig, &plan).await).await?;
    let report = Report {
        command: cli.command_line.clone(),
        mode: if cli.smoke { "smoke" } else { "full" },
        started,
        rows: report::rows(&plan, &results, &once),
        problems: report::problems(&results),
        machine,
        plan,
        once,
        runs: results,
    };
    write(&cli.out, "latest", &report.markdown(), &report)?;
    Ok(!too_many_failures(&report.runs))
}

/// The soak: constant mixed load for `duration`; `Ok(false)` when anything failed or an event
/// was lost.
async fn soak(cli: Cli, duration: Duration) -> anyhow::Result<bool> {
    let plan = SoakPlan::new(duration, cli.sidecar_env.clone());
    let rig_plan = Plan {
        sidecar_env: cli.sidecar_env.clone(),
        ..Plan::new(false, 1)
    };
    let (result, machine, started) =
        on_rig(&cli, &rig_plan, async |rig| soak::run(rig, &plan).await).await?;
    let report = SoakReport {
        command: cli.command_line.clone(),
        mode: "soak",
        started,
        machine,
        plan,
        problems: result.problems(),
        result,
    };
    write(&cli.out, "soak", &report.markdown(), &report)?;
    Ok(report.problems.is_empty())
}

/// Probes the machine, starts the processes, runs `f` on them and stops them (their logs and
/// stores kept after a failure or with `--keep-work`); what `f` returned, the machine (with
/// the load average after) and the start time.
async fn on_rig<T>(
    cli: &Cli,
    plan: &Plan,
    f: impl AsyncFnOnce(&Rig) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Machine, String)> {
    let mut machine = Machine::probe();
    let started = now();
    eprintln!("o2o-bench: {}", machine.line());
    let work = std::env::temp_dir().join(format!("o2o-bench-{}", uuid::Uuid::new_v4().simple()));
    let rig = Rig::start(
        plan.clone(),
        cli.bin_dir.clone(),
        work,
        cli.postgres.clone(),
    )
    .await?;
    let out = match f(&rig).await {
        Ok(out) => out,
        Err(e) => {
            rig.stop(true).await;
            return Err(e);
        }
    };
    rig.stop(cli.keep_work).await;
    machine.loadavg_after = machine::loadavg();
    Ok((out, machine, started))
}

/// Writes `NAME.md` and `NAME.json` into `out` (created if need be) and prints the page.
fn write(out: &Path, name: &str, md: &str, json: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join(format!("{name}.md")), md)?;
    std::fs::write(
        out.join(format!("{name}.json")),
        // Compact: the histograms make a pretty-printed file ten times longer.
        serde_json::to_string(json)? + "\n",
    )?;
    println!("{md}");
    eprintln!(
        "o2o-bench: wrote {} and {name}.json",
        out.join(format!("{name}.md")).display()
    );
    Ok(())
}

/// Now, to the minute, for the report.
fn now() -> String {
    OffsetDateTime::now_utc()
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_default()
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

async fn measure(rig: &Rig, plan: &Plan) -> anyhow::Result<(Vec<RunResult>, scenarios::Once)> {
    let mut results = Vec::with_capacity(plan.runs);
    for r in 0..plan.runs {
        results.push(rig.run(r).await?);
    }
    Ok((results, rig.once().await?))
}

/// Whether any phase lost more than 1% of its requests (or events). P6 not measured is not a
/// failure (no PostgreSQL server); its phases count when it was.
fn too_many_failures(runs: &[RunResult]) -> bool {
    let lossy = |p: &PhaseReport| p.errors * 100 > p.errors + p.ok;
    let lost = |missing: u64, arrived: u64| missing * 100 > arrived + missing;
    runs.iter().any(|r| {
        [
            &r.p1_fixed_baseline,
            &r.p1_fixed_sidecar,
            &r.p1_saturation_baseline,
            &r.p1_saturation_sidecar,
            &r.p2_direct,
            &r.p2_sidecar,
            &r.p3_ack,
            &r.p3_ingest,
        ]
        .into_iter()
        .any(lossy)
            || lost(r.p3_events_missing, r.p3_event.count)
            || match &r.p6 {
                P6::Measured(pg) => {
                    [
                        &pg.saturation,
                        &pg.notifications.ack,
                        &pg.notifications.ingest,
                    ]
                    .into_iter()
                    .any(lossy)
                        || lost(pg.notifications.missing, pg.notifications.event.count)
                }
                P6::NotMeasured(_) => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_flags_after_bench_runs_take_precedence() {
        let cli = Cli::try_parse_from([
            "o2o-bench",
            "--out",
            "bench/results",
            "--runs",
            "1",
            "--out",
            "/tmp/x",
            "--sidecar-env",
            "A=1",
            "--sidecar-env",
            "B=2",
        ])
        .unwrap();
        assert_eq!(cli.out, PathBuf::from("/tmp/x"));
        assert_eq!(cli.sidecar_env.len(), 2, "repeatable flags still add up");
    }
}
