//! The reconciliation sweeper: DOKU retries a notification only three times, so the sidecar
//! does not rely on delivery. PENDING payments are checked with DOKU's Check Status on a
//! schedule with backoff, and their PAID/EXPIRED/FAILED results become events with source
//! RECONCILIATION. A payment whose code was never learned (DOKU's answer was lost) is
//! recovered by replaying its stored request with the same Request-Id.
//!
//! Schedule per payment: first check 60 s after its code was issued (DOKU: "hit Check Status
//! after 60 seconds"), then 2, 5, 10, 30 and 60 minutes apart, never later than just after the
//! code's expiry; after expiry every hour for a week, then the sweeper gives up with a log line
//! (GetStatus with refresh still works).
//!
//! One replica at a time sweeps: [`run`] campaigns through the store's
//! [`Election`] every [`SweeperConfig::leader_check`], sweeps only
//! while it holds the right, and abandons a round in flight as soon as a campaign fails to
//! confirm it. A follower takes over within about one `leader_check` after the leader's
//! session ends (see the store's doc for how long that takes when a leader dies). Even an
//! overlap would be harmless: statuses only move forward and DOKU calls for one payment are
//! serialized by its attempt lease; it would only waste Check Status calls.

use std::time::Duration;

use futures::StreamExt as _;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    sidecar::{CheckOutcome, Sidecar},
    store::{Election, PaymentRecord},
};

/// Sweeper settings.
#[derive(Debug, Clone)]
pub struct SweeperConfig {
    /// How often the sweeper looks for due payments.
    pub interval: Duration,
    /// Payments checked per round at most (bounds DOKU's load).
    pub batch: u32,
    /// Check Status calls in flight at once.
    pub concurrency: usize,
    /// When a new payment is first checked (DOKU: "hit Check Status after 60 seconds").
    pub first_check_after: Duration,
    /// Delays between later checks of a payment still PENDING; the last one repeats.
    pub backoff: Vec<Duration>,
    /// How often the leader confirms it still holds the sweeper's right, and a follower
    /// tries to take it: bounds how long the sweeper stays without a leader.
    pub leader_check: Duration,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            batch: 100,
            concurrency: 4,
            first_check_after: Duration::from_secs(60),
            backoff: BACKOFF.to_vec(),
            leader_check: Duration::from_secs(2),
        }
    }
}

const BACKOFF: [Duration; 5] = [
    Duration::from_secs(120),
    Duration::from_secs(300),
    Duration::from_secs(600),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
];
/// How long after expiry the sweeper keeps asking DOKU about a payment still PENDING.
const GIVE_UP_AFTER_EXPIRY: time::Duration = time::Duration::days(7);
/// A check just after expiry catches DOKU's EXPIRED.
const AFTER_EXPIRY: time::Duration = time::Duration::seconds(30);

/// When to check a still-pending payment next, or `None` to stop.
pub fn next_check(
    rec: &PaymentRecord,
    now: OffsetDateTime,
    backoff: &[Duration],
) -> Option<OffsetDateTime> {
    let expire = rec.payment.expire_time;
    if now > expire + GIVE_UP_AFTER_EXPIRY {
        return None;
    }
    let step = backoff
        .get(rec.check_count as usize)
        .or(backoff.last())
        .copied()
        .unwrap_or(Duration::from_secs(3600));
    let step = time::Duration::try_from(step).unwrap_or(time::Duration::HOUR);
    let next = now + step;
    if now < expire + AFTER_EXPIRY && next > expire + AFTER_EXPIRY {
        Some(expire + AFTER_EXPIRY)
    } else {
        Some(next)
    }
}

/// Runs rounds while this replica holds the sweeper's right (campaigning through
/// `election`), until `shutdown` is cancelled.
pub async fn run(
    sidecar: Sidecar,
    mut election: Box<dyn Election>,
    config: SweeperConfig,
    shutdown: CancellationToken,
) {
    let mut campaign = tokio::time::interval(config.leader_check);
    campaign.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metrics::gauge!("o2o_sweeper_leader").set(0.0);
    let mut unsure_logged = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = campaign.tick() => {}
        }
        match election.campaign().await {
            Ok(true) => {
                unsure_logged = false;
                tracing::info!("this replica now runs the reconciliation sweeper");
                metrics::gauge!("o2o_sweeper_leader").set(1.0);
                let stop = lead(&sidecar, &config, &mut *election, &shutdown).await;
                metrics::gauge!("o2o_sweeper_leader").set(0.0);
                if stop {
                    break;
                }
                tracing::warn!("this replica no longer runs the reconciliation sweeper");
                campaign.reset();
            }
            Ok(false) => unsure_logged = false,
            Err(e) if !unsure_logged => {
                unsure_logged = true;
                tracing::warn!(error = %e, "cannot campaign for the sweeper; retrying");
            }
            Err(_) => {}
        }
    }
    election.resign().await;
}

/// Sweeps while the right is confirmed every `leader_check`. Returns `true` on shutdown,
/// `false` when the right is lost (a round in flight is abandoned).
async fn lead(
    sidecar: &Sidecar,
    config: &SweeperConfig,
    election: &mut dyn Election,
    shutdown: &CancellationToken,
) -> bool {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut confirm = tokio::time::interval(config.leader_check);
    confirm.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    confirm.reset();
    // Confirms the right every `leader_check`; resolves when it is lost.
    let lost = async {
        loop {
            confirm.tick().await;
            match election.campaign().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot confirm the sweeper's right; stepping down");
                    return;
                }
            }
        }
    };
    let rounds = async {
        loop {
            tick.tick().await;
            if let Err(e) = round(sidecar, config).await {
                tracing::warn!(error = %e, "reconciliation round failed");
            }
        }
    };
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = lost => false,
        () = rounds => unreachable!("rounds never end"),
    }
}

/// One round: checks every due payment (at most `batch`). Returns how many were checked.
pub async fn round(
    sidecar: &Sidecar,
    config: &SweeperConfig,
) -> Result<usize, crate::error::Error> {
    let due = sidecar.due_for_check(config.batch).await?;
    let n = due.len();
    metrics::counter!("o2o_sweeper_runs_total").increment(1);
    futures::stream::iter(due)
        .for_each_concurrent(config.concurrency, |rec| {
            let span = tracing::info_span!("reconcile", invoice = %rec.payment.invoice);
            check_one(sidecar, config, rec).instrument(span)
        })
        .await;
    Ok(n)
}

/// Checks one payment through the domain service, then schedules its next check.
async fn check_one(sidecar: &Sidecar, config: &SweeperConfig, rec: PaymentRecord) {
    let next = match sidecar.check(rec.clone()).await {
        CheckOutcome::Settled(status) => {
            metrics::counter!("o2o_sweeper_findings_total", "finding" => status.label())
                .increment(1);
            None
        }
        CheckOutcome::Pending { recovered_code } => {
            if recovered_code {
                metrics::counter!("o2o_sweeper_findings_total", "finding" => "code_recovered")
                    .increment(1);
            }
            let next = next_check(&rec, OffsetDateTime::now_utc(), &config.backoff);
            if next.is_none() {
                tracing::warn!(invoice = %rec.payment.invoice, "payment still PENDING a week after expiry; the sweeper stops checking it");
            }
            next
        }
        // Its check stays cleared: a rejected request is never replayed.
        CheckOutcome::Abandoned => return,
    };
    if let Err(e) = sidecar.schedule_check(&rec.payment.invoice, next).await {
        tracing::warn!(error = %e, "cannot schedule the next check");
    }
}

/// Removes events older than `retention` once an hour, so that the log stays bounded; a resume
/// token older than that is answered with RESUME_TOKEN_EXPIRED.
pub async fn prune(
    store: std::sync::Arc<dyn crate::store::Store>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = OffsetDateTime::now_utc()
            - time::Duration::try_from(retention).unwrap_or(time::Duration::MAX);
        match store.prune_events(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned events past retention"),
            Err(e) => tracing::warn!(error = %e, "cannot prune events"),
        }
    }
}
