//! The results as a markdown table (ours, baseline, ratio, target, met) and as a JSON file
//! with every run's values and full latency histograms. Each table cell is the median of the
//! runs' values for that row.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    load::PhaseReport,
    machine::Machine,
    scenarios::{Notifications, Once, P6, Plan, Postgres, RunResult},
};

/// How a row's value is shown.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Unit {
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Per second.
    PerSecond,
    /// Bytes, shown as MB (10^6 bytes).
    Bytes,
}

/// What a row must reach.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    /// Ours at most this.
    AtMost(f64),
    /// Ours at least this.
    AtLeast(f64),
    /// Ours / baseline at least this.
    RatioAtLeast(f64),
    /// Ours / baseline at most this.
    RatioAtMost(f64),
    /// Ours − baseline at most this.
    AddedAtMost(f64),
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// P1…P5.
    pub(crate) id: &'static str,
    /// What is measured.
    pub(crate) measure: String,
    /// Unit of `ours` and `baseline`.
    pub(crate) unit: Unit,
    /// Median over the runs.
    pub(crate) ours: f64,
    /// Median over the runs, when the row has a baseline.
    pub(crate) baseline: Option<f64>,
    /// `ours / baseline`.
    pub(crate) ratio: Option<f64>,
    /// The goal, if the row has one.
    pub(crate) target: Option<Target>,
    /// Whether the goal is met (by the medians).
    pub(crate) met: Option<bool>,
    /// Every run's value.
    pub(crate) ours_runs: Vec<f64>,
    /// Every run's baseline value.
    pub(crate) baseline_runs: Vec<f64>,
    /// Why there is no value (P6 without a PostgreSQL server); shown instead of `ours`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) not_measured: Option<String>,
}

/// The median (the mean of the two middle values for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn row(
    id: &'static str,
    measure: String,
    unit: Unit,
    ours_runs: Vec<f64>,
    baseline_runs: Option<Vec<f64>>,
    target: Option<Target>,
) -> Row {
    let ours = median(&ours_runs);
    let baseline = baseline_runs.as_deref().map(median);
    let ratio = baseline.map(|b| ours / b);
    let met = target.map(|t| match t {
        Target::AtMost(x) => ours <= x,
        Target::AtLeast(x) => ours >= x,
        Target::RatioAtLeast(x) => ratio.is_some_and(|r| r >= x),
        Target::RatioAtMost(x) => ratio.is_some_and(|r| r <= x),
        Target::AddedAtMost(x) => baseline.is_some_and(|b| ours - b <= x),
    });
    Row {
        id,
        measure,
        unit,
        ours,
        baseline,
        ratio,
        target,
        met,
        ours_runs,
        baseline_runs: baseline_runs.unwrap_or_default(),
        not_measured: None,
    }
}

/// A row whose measurement did not happen, and why; its target shown, not judged.
fn not_measured(
    id: &'static str,
    measure: String,
    unit: Unit,
    target: Option<Target>,
    reason: &str,
) -> Row {
    // Built without the target, so that `met` stays unjudged; the target is put back to show.
    Row {
        target,
        not_measured: Some(reason.to_owned()),
        ..row(id, measure, unit, Vec::new(), None, None)
    }
}

/// `x` rounded, with thousands separators (`12,345`).
pub(crate) fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// `x` in `unit`, with as many decimals as the value needs; `n/a` for NaN.
pub(crate) fn show(unit: Unit, x: f64) -> String {
    if x.is_nan() {
        return "n/a".into();
    }
    match unit {
        Unit::Ms if x < 10.0 => format!("{x:.3} ms"),
        Unit::Ms => format!("{x:.1} ms"),
        Unit::Us => format!("{x:.1} µs"),
        Unit::PerSecond => format!("{}/s", thousands(x)),
        Unit::Bytes => format!("{:.1} MB", x / 1e6),
    }
}

fn show_target(unit: Unit, t: Target) -> String {
    match t {
        Target::AtMost(x) => format!("≤ {}", show_round(unit, x)),
        Target::AtLeast(x) => format!("≥ {}", show_round(unit, x)),
        Target::RatioAtLeast(x) => format!("≥ {x}× baseline"),
        Target::RatioAtMost(x) => format!("≤ {x}× baseline"),
        Target::AddedAtMost(x) => format!("≤ baseline + {}", show_round(unit, x)),
    }
}

/// A target value without needless decimals.
fn show_round(unit: Unit, x: f64) -> String {
    // A target computed from a measurement (an `fsync` p50 + 0.3 ms) is shown to the µs, not
    // with the float's every digit.
    match unit {
        Unit::Ms => format!("{} ms", (x * 1e3).round() / 1e3),
        Unit::Us => format!("{} µs", (x * 10.0).round() / 10.0),
        Unit::PerSecond => format!("{}/s", thousands(x)),
        Unit::Bytes => format!("{} MB", x / 1e6),
    }
}

/// The table rows from the runs.
pub(crate) fn rows(plan: &Plan, runs: &[RunResult], once: &Once) -> Vec<Row> {
    let col = |f: &dyn Fn(&RunResult) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    // P2's added p50 may be one `fsync` (the commit that must precede the DOKU call) plus
    // 0.3 ms: the disk's, measured in this invocation.
    let fsync_p50 = median(&col(&|r| r.disk_fsync.p50_ms));
    let p1 = thousands(plan.p1_rate);
    let p3 = thousands(plan.p3_rate);
    let streams = thousands(plan.p4_streams as f64);
    let mb = 1e6;
    vec![
        row(
            "P0",
            "GetStatus p50, one caller, one call at a time".into(),
            Unit::Ms,
            col(&|r| r.p0_status_sidecar.latency.p50_ms),
            Some(col(&|r| r.p0_status_baseline.latency.p50_ms)),
            Some(Target::AddedAtMost(0.3)),
        ),
        row(
            "P0",
            "GetStatus p99, one caller, one call at a time".into(),
            Unit::Ms,
            col(&|r| r.p0_status_sidecar.latency.p99_ms),
            Some(col(&|r| r.p0_status_baseline.latency.p99_ms)),
            None,
        ),
        row(
            "P0",
            "GeneratePaymentCode p50, one caller, one call at a time".into(),
            Unit::Ms,
            col(&|r| r.p0_generate_sidecar.latency.p50_ms),
            Some(col(&|r| r.p0_generate_direct.latency.p50_ms)),
            None,
        ),
        row(
            "P0",
            "GeneratePaymentCode p99, one caller, one call at a time".into(),
            Unit::Ms,
            col(&|r| r.p0_generate_sidecar.latency.p99_ms),
            Some(col(&|r| r.p0_generate_direct.latency.p99_ms)),
            None,
        ),
        row(
            "P1",
            format!("GetStatus p50 at {p1} rps"),
            Unit::Ms,
            col(&|r| r.p1_fixed_sidecar.latency.p50_ms),
            Some(col(&|r| r.p1_fixed_baseline.latency.p50_ms)),
            None,
        ),
        row(
            "P1",
            format!("GetStatus p99 at {p1} rps"),
            Unit::Ms,
            col(&|r| r.p1_fixed_sidecar.latency.p99_ms),
            Some(col(&|r| r.p1_fixed_baseline.latency.p99_ms)),
            Some(Target::AddedAtMost(0.3)),
        ),
        row(
            "P1",
            "GetStatus throughput at saturation".into(),
            Unit::PerSecond,
            col(&|r| r.p1_saturation_sidecar.throughput_per_s),
            Some(col(&|r| r.p1_saturation_baseline.throughput_per_s)),
            Some(Target::RatioAtLeast(0.6)),
        ),
        row(
            "P1",
            format!(
                "GetStatus p50 at saturation ({} in flight)",
                plan.p1_workers
            ),
            Unit::Ms,
            col(&|r| r.p1_saturation_sidecar.latency.p50_ms),
            Some(col(&|r| r.p1_saturation_baseline.latency.p50_ms)),
            None,
        ),
        row(
            "P1",
            format!(
                "GetStatus p99 at saturation ({} in flight)",
                plan.p1_workers
            ),
            Unit::Ms,
            col(&|r| r.p1_saturation_sidecar.latency.p99_ms),
            Some(col(&|r| r.p1_saturation_baseline.latency.p99_ms)),
            None,
        ),
        row(
            "P1",
            "server CPU per GetStatus at saturation".into(),
            Unit::Us,
            col(&|r| r.p1_cpu_us_sidecar),
            Some(col(&|r| r.p1_cpu_us_baseline)),
            Some(Target::RatioAtMost(2.0)),
        ),
        row(
            "P2",
            format!(
                "GeneratePaymentCode p50 at {} rps (target: one fsync p50 + 0.3 ms added)",
                thousands(plan.p2_rate)
            ),
            Unit::Ms,
            col(&|r| r.p2_sidecar.latency.p50_ms),
            Some(col(&|r| r.p2_direct.latency.p50_ms)),
            Some(Target::AddedAtMost(fsync_p50 + 0.3)),
        ),
        row(
            "P2",
            format!("GeneratePaymentCode p99 at {} rps", thousands(plan.p2_rate)),
            Unit::Ms,
            col(&|r| r.p2_sidecar.latency.p99_ms),
            Some(col(&|r| r.p2_direct.latency.p99_ms)),
            Some(Target::AddedAtMost(2.0)),
        ),
        row(
            "P2",
            format!(
                "sidecar CPU per GeneratePaymentCode at {} rps (baseline: the two rows below, \
                 summed)",
                thousands(plan.p2_rate)
            ),
            Unit::Us,
            col(&|r| r.p2_cpu_us_sidecar),
            Some(col(&|r| r.p2_cpu_us_noop + r.p2_cpu_us_sim)),
            Some(Target::AtMost(400.0)),
        ),
        row(
            "P2",
            "of the stack alone: no-op gRPC server's CPU per GeneratePaymentCode, same rate".into(),
            Unit::Us,
            col(&|r| r.p2_cpu_us_noop),
            None,
            None,
        ),
        row(
            "P2",
            "of the stack alone: doku-sim's CPU per POST + how-to-pay GET sent straight to it, \
             same rate"
                .into(),
            Unit::Us,
            col(&|r| r.p2_cpu_us_sim),
            None,
            None,
        ),
        row(
            "P3",
            format!("notification POST → event on stream, p50 at {p3}/s"),
            Unit::Ms,
            col(&|r| r.p3_event.p50_ms),
            None,
            None,
        ),
        row(
            "P3",
            format!("notification POST → event on stream, p99 at {p3}/s"),
            Unit::Ms,
            col(&|r| r.p3_event.p99_ms),
            None,
            Some(Target::AtMost(5.0)),
        ),
        row(
            "P3",
            format!("notification POST → 200, p99 at {p3}/s"),
            Unit::Ms,
            col(&|r| r.p3_ack.latency.p99_ms),
            None,
            None,
        ),
        row(
            "P3",
            format!(
                "durable ingest on SQLite ({} concurrent POSTs)",
                plan.p3_ingest_workers
            ),
            Unit::PerSecond,
            col(&|r| r.p3_ingest.throughput_per_s),
            None,
            Some(Target::AtLeast(5000.0)),
        ),
        row(
            "P3",
            "disk under the store: fsync p50 (4 KiB page rewrite)".into(),
            Unit::Ms,
            col(&|r| r.disk_fsync.p50_ms),
            None,
            None,
        ),
        row(
            "P3",
            "disk under the store: fsync p99".into(),
            Unit::Ms,
            col(&|r| r.disk_fsync.p99_ms),
            None,
            None,
        ),
        row(
            "P3",
            "disk under the store: fsyncs/s one after another (1 / mean)".into(),
            Unit::PerSecond,
            col(&|r| 1000.0 / r.disk_fsync.mean_ms),
            None,
            None,
        ),
        row(
            "P4",
            "RSS idle (fresh process)".into(),
            Unit::Bytes,
            col(&|r| r.p4_idle.rss as f64),
            None,
            Some(Target::AtMost(10.0 * mb)),
        ),
        row(
            "P4",
            "of which anonymous (heap, stacks; the rest is mapped code)".into(),
            Unit::Bytes,
            col(&|r| r.p4_idle.anon as f64),
            None,
            None,
        ),
        row(
            "P4",
            format!("RSS with {streams} open streams"),
            Unit::Bytes,
            col(&|r| r.p4_streams.rss as f64),
            None,
            Some(Target::AtMost(50.0 * mb)),
        ),
        row(
            "P4",
            format!("of which anonymous, with {streams} streams"),
            Unit::Bytes,
            col(&|r| r.p4_streams.anon as f64),
            None,
            None,
        ),
        row(
            "P4",
            format!("one event fanned out to {streams} streams"),
            Unit::Ms,
            col(&|r| r.p4_fanout_ms),
            None,
            None,
        ),
        row(
            "P4",
            "RSS of the long-running sidecar after all the load above".into(),
            Unit::Bytes,
            vec![once.after_load.rss as f64],
            None,
            None,
        ),
        row(
            "P5",
            "process start → SERVING, new SQLite file (5 starts per run)".into(),
            Unit::Ms,
            col(&|r| r.p5_start_ms),
            None,
            Some(Target::AtMost(50.0)),
        ),
        row(
            "P5",
            "process start → SERVING, restart on that file (5 per run)".into(),
            Unit::Ms,
            col(&|r| r.p5_restart_ms),
            None,
            Some(Target::AtMost(50.0)),
        ),
        row(
            "P5",
            "stripped binary size".into(),
            Unit::Bytes,
            vec![once.stripped_bytes.unwrap_or(once.binary_bytes) as f64],
            None,
            Some(Target::AtMost(12.0 * mb)),
        ),
    ]
    .into_iter()
    .chain(postgres_rows(plan, runs))
    .collect()
}

/// How one P6 row reads a run (and the run's P6): its value, or its baseline's.
type PgValue = fn(&RunResult, &Postgres) -> f64;

/// The P6 rows: medians over the runs that measured them (the baseline, P1's no-op server,
/// from those same runs); without any, every row says why, with the first run's reason.
fn postgres_rows(plan: &Plan, runs: &[RunResult]) -> Vec<Row> {
    let measured: Vec<(&RunResult, &Postgres)> = runs
        .iter()
        .filter_map(|r| match &r.p6 {
            P6::Measured(pg) => Some((r, &**pg)),
            P6::NotMeasured(_) => None,
        })
        .collect();
    let reason = runs
        .iter()
        .find_map(|r| match &r.p6 {
            P6::NotMeasured(why) => Some(why.as_str()),
            P6::Measured(_) => None,
        })
        .unwrap_or("no run");
    let col = |f: PgValue| measured.iter().map(|(r, pg)| f(r, pg)).collect();
    let pg_row = |measure: String,
                  unit: Unit,
                  ours: PgValue,
                  baseline: Option<PgValue>,
                  target: Option<Target>| {
        if measured.is_empty() {
            not_measured("P6", measure, unit, target, reason)
        } else {
            row("P6", measure, unit, col(ours), baseline.map(col), target)
        }
    };
    let p3 = thousands(plan.p3_rate);
    vec![
        pg_row(
            format!(
                "durable ingest on PostgreSQL, 2 replicas ({} concurrent POSTs split across both)",
                plan.p3_ingest_workers
            ),
            Unit::PerSecond,
            |_, pg| pg.notifications.ingest.throughput_per_s,
            None,
            Some(Target::AtLeast(3000.0)),
        ),
        pg_row(
            format!("notification POST to replica A → event on a stream on B, p50 at {p3}/s"),
            Unit::Ms,
            |_, pg| pg.notifications.event.p50_ms,
            None,
            None,
        ),
        pg_row(
            format!("notification POST to replica A → event on a stream on B, p99 at {p3}/s"),
            Unit::Ms,
            |_, pg| pg.notifications.event.p99_ms,
            None,
            Some(Target::AtMost(10.0)),
        ),
        pg_row(
            format!("notification POST to replica A → 200, p99 at {p3}/s"),
            Unit::Ms,
            |_, pg| pg.notifications.ack.latency.p99_ms,
            None,
            None,
        ),
        pg_row(
            format!(
                "GetStatus throughput at saturation on PostgreSQL (one replica, {} in flight)",
                plan.p1_workers
            ),
            Unit::PerSecond,
            |_, pg| pg.saturation.throughput_per_s,
            Some(|r, _| r.p1_saturation_baseline.throughput_per_s),
            None,
        ),
    ]
}

/// Problems seen in the runs: failed requests, events that never arrived.
pub(crate) fn problems(runs: &[RunResult]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let phases: [(&str, &PhaseReport); 12] = [
            (
                "P0 GetStatus one at a time, baseline",
                &r.p0_status_baseline,
            ),
            ("P0 GetStatus one at a time, sidecar", &r.p0_status_sidecar),
            (
                "P0 GeneratePaymentCode one at a time, direct",
                &r.p0_generate_direct,
            ),
            (
                "P0 GeneratePaymentCode one at a time, sidecar",
                &r.p0_generate_sidecar,
            ),
            ("P1 fixed rate, baseline", &r.p1_fixed_baseline),
            ("P1 fixed rate, sidecar", &r.p1_fixed_sidecar),
            ("P1 saturation, baseline", &r.p1_saturation_baseline),
            ("P1 saturation, sidecar", &r.p1_saturation_sidecar),
            ("P2 straight to the simulator", &r.p2_direct),
            ("P2 through the sidecar", &r.p2_sidecar),
            ("P3 notification POSTs", &r.p3_ack),
            ("P3 ingest", &r.p3_ingest),
        ];
        for (name, p) in phases {
            if p.errors > 0 {
                out.push(failed(i, name, p));
            }
        }
        if r.p3_events_missing > 0 {
            out.push(format!(
                "run {}: P3: {} accepted notifications never reached the stream",
                i + 1,
                r.p3_events_missing
            ));
        }
        if let P6::Measured(pg) = &r.p6 {
            let Notifications {
                ack,
                missing,
                ingest,
                ..
            } = &pg.notifications;
            let phases = [
                ("P6 GetStatus at saturation on PostgreSQL", &pg.saturation),
                ("P6 notification POSTs to replica A", ack),
                ("P6 ingest over replicas A and B", ingest),
            ];
            for (name, p) in phases {
                if p.errors > 0 {
                    out.push(failed(i, name, p));
                }
            }
            if *missing > 0 {
                out.push(format!(
                    "run {}: P6: {missing} notifications accepted by replica A never reached \
                     the stream on replica B",
                    i + 1
                ));
            }
        }
    }
    out
}

/// The problem line of a phase with failed requests.
fn failed(i: usize, name: &str, p: &PhaseReport) -> String {
    format!(
        "run {}: {name}: {} of {} requests failed (first: {})",
        i + 1,
        p.errors,
        p.errors + p.ok,
        p.first_error.as_deref().unwrap_or("?")
    )
}

/// Everything one invocation produced.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// The command that produced it.
    pub(crate) command: String,
    /// `full` or `smoke`.
    pub(crate) mode: &'static str,
    /// UTC start time.
    pub(crate) started: String,
    /// The machine.
    pub(crate) machine: Machine,
    /// Rates and durations.
    pub(crate) plan: Plan,
    /// The table.
    pub(crate) rows: Vec<Row>,
    /// Failed requests and lost events, if any.
    pub(crate) problems: Vec<String>,
    /// Measurements made once.
    pub(crate) once: Once,
    /// Every run, with full histograms.
    pub(crate) runs: Vec<RunResult>,
}

impl Report {
    /// The markdown page.
    pub(crate) fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# o2o-sidecar benchmark results\n");
        let _ = writeln!(
            s,
            "`{}` · {} mode · {} run(s) per measurement, each cell the median of the runs · {}\n",
            self.command, self.mode, self.plan.runs, self.started
        );
        machine_and_env(&mut s, &self.machine, &self.plan.sidecar_env);
        let _ = writeln!(
            s,
            "| id | measure | ours | baseline | ratio | target | met |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let mut ours = match &r.not_measured {
                // A reason may hold `|`, which would end the cell.
                Some(why) => format!("not measured: {}", why.replace('|', "\\|")),
                None => show(r.unit, r.ours),
            };
            if let (Some(Target::AddedAtMost(_)), Some(b)) = (r.target, r.baseline) {
                let _ = write!(ours, " (+{})", show(r.unit, r.ours - b));
            }
            let baseline = r.baseline.map_or("—".into(), |b| show(r.unit, b));
            let ratio = r.ratio.map_or("—".into(), |x| format!("{x:.2}×"));
            let target = r.target.map_or("—".into(), |t| show_target(r.unit, t));
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {ours} | {baseline} | {ratio} | {target} | {met} |",
                r.id, r.measure
            );
        }
        let _ = writeln!(
            s,
            "\nBaselines, run in the same invocation: P1, a no-op tonic server of the same \
             service answering a constant payment; P2, the same DOKU-signed request sent by \
             the harness straight to `doku-sim`, then the GET of the how-to-pay JSON its \
             answer links to (the sidecar's two DOKU round trips). Ratio = ours / baseline. Latencies are from \
             open-loop load (measured from when each request was due), except at saturation \
             (closed loop). Load generator, sidecar, simulator and baseline share the \
             machine's cores."
        );
        if let Some(pg) = self.runs.iter().find_map(|r| match &r.p6 {
            P6::Measured(pg) => Some(&pg.server),
            P6::NotMeasured(_) => None,
        }) {
            let _ = writeln!(
                s,
                "\nP6: the sidecar on PostgreSQL {} (`fsync={}`, `synchronous_commit={}`, \
                 `ssl={}`; the sidecars' `sslmode={}`), a new database per run; replicas A \
                 and B are two sidecar processes on it. GetStatus runs on A alone, next to \
                 P1's no-op server of the same runs; the ingest POSTs alternate between A and \
                 B.",
                // `15.20 (Debian 15.20-0+deb12u1)`: the number is enough here.
                pg.version.split_whitespace().next().unwrap_or_default(),
                pg.fsync,
                pg.synchronous_commit,
                pg.ssl,
                pg.sslmode
            );
        }
        problems_and_rest(
            &mut s,
            &self.problems,
            "Every request succeeded and every event arrived.",
            "Per-run values and full latency histograms: `latest.json` beside this file.",
        );
        s
    }
}

/// The lines under a page's title: the machine, and the sidecar's extra environment if any.
pub(crate) fn machine_and_env(s: &mut String, machine: &Machine, env: &[(String, String)]) {
    let _ = writeln!(s, "Machine: {}\n", machine.line());
    if !env.is_empty() {
        let env: Vec<String> = env.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
        let _ = writeln!(s, "Sidecar environment: {}\n", env.join(" "));
    }
}

/// The end of a page: the problems (or `all_well` when there are none), then `rest`, the line
/// that says where the full data is.
pub(crate) fn problems_and_rest(s: &mut String, problems: &[String], all_well: &str, rest: &str) {
    if problems.is_empty() {
        let _ = writeln!(s, "\n{all_well}");
    } else {
        let _ = writeln!(s, "\nProblems:\n");
        for p in problems {
            let _ = writeln!(s, "- {p}");
        }
    }
    let _ = writeln!(s, "\n{rest}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn targets_are_judged_on_the_medians() {
        let r = row(
            "P2",
            "x".into(),
            Unit::Ms,
            vec![1.0, 1.2, 9.0],
            Some(vec![1.0, 0.9, 1.1]),
            Some(Target::AddedAtMost(0.3)),
        );
        assert_eq!(r.ours, 1.2);
        assert_eq!(r.baseline, Some(1.0));
        assert_eq!(r.met, Some(true));
        let r = row(
            "P1",
            "y".into(),
            Unit::PerSecond,
            vec![500.0],
            Some(vec![1000.0]),
            Some(Target::RatioAtLeast(0.6)),
        );
        assert_eq!(r.met, Some(false));
        let r = row(
            "P1",
            "z".into(),
            Unit::Us,
            vec![30.0],
            Some(vec![14.0]),
            Some(Target::RatioAtMost(2.0)),
        );
        assert_eq!(
            (
                r.met,
                show_target(Unit::Us, Target::RatioAtMost(2.0)).as_str()
            ),
            (Some(false), "≤ 2× baseline")
        );
        let r = not_measured(
            "P6",
            "w".into(),
            Unit::PerSecond,
            Some(Target::AtLeast(3000.0)),
            "psql: error: connection refused",
        );
        assert!(r.ours.is_nan() && r.baseline.is_none());
        assert_eq!(r.met, None, "a target is not judged without a value");
        assert!(r.target.is_some(), "but it is shown");
        assert_eq!(thousands(12345.4), "12,345");
        assert_eq!(show(Unit::Bytes, 9_500_000.0), "9.5 MB");
    }
}
