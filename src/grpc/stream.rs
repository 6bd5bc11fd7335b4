//! `StreamNotifications`: replay from a resume token, then follow live events, with no gap,
//! duplicate or reorder at the switch.
//!
//! Each stream is a task that feeds a bounded channel (dropping the client's stream ends the
//! task). The task subscribes to live events *before* it reads the store, and treats the store
//! as the source of truth: a live event is delivered directly only if it is the next one after
//! the cursor; on any gap (an event published out of order, or the subscriber lagging behind
//! the broadcast buffer) it reads the missing events from the store. A slow subscriber
//! therefore never blocks ingest and never holds more than its channel's worth of events.
//!
//! Events committed by *other* replicas sharing the store (PostgreSQL) never reach the
//! in-process broadcast. The task also follows the store's commit hints
//! ([`Store::commit_hints`](crate::store::Store::commit_hints)), subscribed before the store is
//! read as well: when a hint passes the cursor, it reads the missing events from the store.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{convert, pb, status::to_status};
use crate::{
    error::Error,
    payment::Event,
    payment::{FieldViolation, InvoiceNumber},
    sidecar::{Sidecar, StreamFrom, Subscription},
};

/// Events read from the store per query during replay.
const REPLAY_BATCH: u32 = 500;
/// Responses buffered per stream before the producer waits for the client.
pub const STREAM_BUFFER: usize = 64;
const TOKEN_PREFIX: &str = "o2o.v1:";
/// Most invoice numbers one stream may filter on (each event is compared with every one).
pub const MAX_FILTER: usize = 1000;
/// Bad filter entries reported at most (each is a `BadRequest` violation).
const MAX_FILTER_VIOLATIONS: usize = 20;

/// The documented resume token that replays from the oldest event the log still retains: the
/// token of position 0, which no event has (event ids start at 1). Unlike an event's token it
/// never expires.
pub const OLDEST: &str = "bzJvLnYxOjA";

/// The opaque resume token of an event.
pub fn resume_token(seq: u64) -> String {
    B64.encode(format!("{TOKEN_PREFIX}{seq}"))
}

/// The event position a resume token stands for.
pub fn parse_resume_token(token: &str) -> Result<u64, Error> {
    let raw = B64.decode(token).map_err(|_| Error::ResumeTokenInvalid)?;
    let text = std::str::from_utf8(&raw).map_err(|_| Error::ResumeTokenInvalid)?;
    text.strip_prefix(TOKEN_PREFIX)
        .and_then(|n| n.parse().ok())
        .ok_or(Error::ResumeTokenInvalid)
}

type Item = Result<pb::StreamNotificationsResponse, Status>;

/// Checks the request and says where its stream begins: `INVALID_ARGUMENT` with a
/// `BadRequest` for a filter entry that is not an invoice number (`invoice_numbers[i]`) or too
/// many of them; `RESUME_TOKEN_INVALID` for a malformed token. [`OLDEST`] starts at the oldest
/// retained event.
pub fn stream_from(request: &pb::StreamNotificationsRequest) -> Result<StreamFrom, Status> {
    let mut violations = Vec::new();
    if request.invoice_numbers.len() > MAX_FILTER {
        violations.push(FieldViolation::new(
            "invoice_numbers",
            format!("at most {MAX_FILTER} invoice numbers per stream"),
        ));
    } else {
        // The first few bad entries: the details travel in a trailer, which peers bound.
        let bad = request
            .invoice_numbers
            .iter()
            .enumerate()
            .filter_map(|(i, invoice)| InvoiceNumber::parse(invoice).err().map(|e| (i, e)))
            .take(MAX_FILTER_VIOLATIONS);
        for (i, e) in bad {
            violations.push(FieldViolation::new(format!("invoice_numbers[{i}]"), e));
        }
    }
    if !violations.is_empty() {
        return Err(to_status(Error::InvalidArgument(violations)));
    }
    Ok(match request.resume_token.as_str() {
        "" => StreamFrom::Now,
        token => match parse_resume_token(token).map_err(to_status)? {
            // No event has position 0: its token means "from the oldest retained event".
            0 => StreamFrom::Oldest,
            seq => StreamFrom::After(seq),
        },
    })
}

/// Starts a stream that holds `slot` (its place under the open-streams bound) while it
/// lasts; returns the receiving end for tonic.
pub async fn start(
    sidecar: Sidecar,
    request: pb::StreamNotificationsRequest,
    shutdown: CancellationToken,
    slot: OwnedSemaphorePermit,
) -> Result<mpsc::Receiver<Item>, Status> {
    let from = stream_from(&request)?;
    // Subscribe first: anything committed from here on is either in the store read below or
    // arrives on `live` (this replica) or as a hint (any replica).
    let subscription = sidecar.subscribe();
    let cursor = sidecar.stream_start(from).await.map_err(to_status)?;
    let filter: Vec<String> = request.invoice_numbers;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        feed(sidecar, cursor, filter, subscription, tx, shutdown).await;
        drop(slot);
    });
    Ok(rx)
}

struct Feed {
    cursor: u64,
    filter: Vec<String>,
    tx: mpsc::Sender<Item>,
}

impl Feed {
    /// Sends one event if it passes the filter; advances the cursor. `Err` when the client is
    /// gone.
    async fn deliver(&mut self, event: Event) -> Result<(), ()> {
        debug_assert!(event.seq > self.cursor);
        self.cursor = event.seq;
        if !self.filter.is_empty() && !self.filter.iter().any(|i| i == event.invoice.as_str()) {
            return Ok(());
        }
        let response = pb::StreamNotificationsResponse {
            resume_token: resume_token(event.seq),
            notification: Some(convert::notification(event)),
        };
        self.tx.send(Ok(response)).await.map_err(|_| ())
    }

    /// Delivers everything the store has after the cursor.
    async fn catch_up(&mut self, sidecar: &Sidecar) -> Result<(), Option<Status>> {
        loop {
            let batch = sidecar
                .events_after(self.cursor, REPLAY_BATCH)
                .await
                .map_err(|e| Some(to_status(e)))?;
            let done = batch.len() < REPLAY_BATCH as usize;
            for event in batch {
                self.deliver(event).await.map_err(|()| None)?;
            }
            if done {
                return Ok(());
            }
        }
    }
}

/// The next commit hint; pends forever when the store gives none (or stopped giving them).
async fn next_hint(hints: &mut Option<watch::Receiver<u64>>) -> u64 {
    if let Some(rx) = hints {
        if rx.changed().await.is_ok() {
            return *rx.borrow_and_update();
        }
        // The store stopped its listener (it is closing): the broadcast is all there is.
        *hints = None;
    }
    std::future::pending().await
}

async fn feed(
    sidecar: Sidecar,
    cursor: u64,
    filter: Vec<String>,
    Subscription {
        mut live,
        mut hints,
    }: Subscription,
    tx: mpsc::Sender<Item>,
    shutdown: CancellationToken,
) {
    metrics::gauge!("o2o_open_streams").increment(1.0);
    let mut feed = Feed { cursor, filter, tx };
    let end: Option<Status> = 'outer: loop {
        if let Err(status) = feed.catch_up(&sidecar).await {
            break 'outer status;
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break 'outer Some(to_status(Error::ShuttingDown)),
                _ = feed.tx.closed() => break 'outer None,
                received = live.recv() => match received {
                    Ok(event) if event.seq <= feed.cursor => {}
                    Ok(event) if event.seq == feed.cursor + 1 => {
                        if feed.deliver(event).await.is_err() {
                            break 'outer None;
                        }
                    }
                    // A gap or a lag: the store has what we missed.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue 'outer,
                    Err(broadcast::error::RecvError::Closed) => break 'outer None,
                },
                // Committed by some replica (maybe this one): the store has it.
                hint = next_hint(&mut hints) => if hint > feed.cursor {
                    continue 'outer;
                },
            }
        }
    };
    if let Some(status) = end {
        let _ = feed.tx.send(Err(status)).await;
    }
    metrics::gauge!("o2o_open_streams").decrement(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_token_is_position_zero() {
        assert_eq!(resume_token(0), OLDEST);
        let request = |token: &str| pb::StreamNotificationsRequest {
            resume_token: token.into(),
            invoice_numbers: vec![],
        };
        assert_eq!(stream_from(&request(OLDEST)).unwrap(), StreamFrom::Oldest);
        assert_eq!(stream_from(&request("")).unwrap(), StreamFrom::Now);
        assert_eq!(
            stream_from(&request(&resume_token(7))).unwrap(),
            StreamFrom::After(7)
        );
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        for seq in [0, 1, 42, u64::MAX] {
            assert_eq!(parse_resume_token(&resume_token(seq)).unwrap(), seq);
        }
        for bad in [
            "",
            "!!",
            "MTIz",
            &B64.encode("o2o.v1:x"),
            &B64.encode("v0:1"),
        ] {
            assert!(matches!(
                parse_resume_token(bad),
                Err(Error::ResumeTokenInvalid)
            ));
        }
    }
}
