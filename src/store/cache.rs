//! Reads of a payment without a round trip to the database, for a store that only this
//! process writes (SQLite: one sidecar per file, which [`SoleWriter`] enforces).
//!
//! [`Cached`] wraps a store with a bounded LRU map of payments by invoice. It is filled on
//! reads only, and every write that may change a payment forgets that payment once the write
//! returns: a write never puts a value in, so two writes of one payment that finish out of
//! order cannot leave the older value behind. A read that missed fills the map only if no
//! write finished while it read the store (one counter, bumped under the same lock as the
//! forgetting), so a read that raced a write never caches what the write replaced. A read
//! served from the map between a write's commit and its forgetting returns the value before
//! that write, which is a read concurrent with a write that has not returned yet.
//!
//! Why only SQLite: the map is only as current as the writes this process sees. With
//! PostgreSQL other replicas write too; its store is read as before.

use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use async_trait::async_trait;
use hashlink::LruCache;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::{
    Applied, AttemptRejection, Created, Election, InboundNotification, PaymentDraft, PaymentRecord,
    Recorded, RejectedAttempt, Store, StoreError,
};
use crate::payment::{Event, InvoiceNumber, IssuedCode, StatusChange};

/// Payments kept in memory: about 1 KiB each, so at most ~4 MiB when every entry is held.
pub const CAPACITY: usize = 4096;

/// Proof that this process is the only one using a SQLite store: an exclusive lock on the
/// file `<database>-owner` beside it, held for as long as this value lives and released by
/// the kernel when the process ends, however it ends.
#[derive(Debug)]
pub struct SoleWriter {
    _lock: File,
}

impl SoleWriter {
    /// Takes the lock for the database at `path`, waiting up to `wait` for a previous process
    /// (one still draining, say) to let go. Another sidecar holding it after that is
    /// [`StoreError::Unavailable`]: two sidecars on one SQLite file would each stream only
    /// their own events and each run a sweeper; PostgreSQL is the store for several.
    pub async fn acquire(
        path: &std::path::Path,
        wait: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let mut name = path.as_os_str().to_owned();
        name.push("-owner");
        let lock_path = std::path::PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot open {}: {e}", lock_path.display()))
            })?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _lock: file }),
                Err(std::fs::TryLockError::WouldBlock)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Unavailable(format!(
                        "the SQLite store {} is in use by another o2o-sidecar process \
                         (it holds {}); a SQLite store serves one sidecar: use PostgreSQL for \
                         several replicas",
                        path.display(),
                        lock_path.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(StoreError::Unavailable(format!(
                        "cannot lock {}: {e}",
                        lock_path.display()
                    )));
                }
            }
        }
    }
}

/// A store whose payments are read from memory when they can be; see the module doc.
pub struct Cached {
    inner: Arc<dyn Store>,
    entries: Arc<Entries>,
    _sole: Option<SoleWriter>,
}

/// The map and its write counter, under one lock.
struct Entries(Mutex<Map>);

struct Map {
    payments: LruCache<InvoiceNumber, PaymentRecord>,
    /// Writes finished so far: a read that missed fills the map only if this did not move.
    writes: u64,
}

impl Entries {
    fn locked(&self) -> MutexGuard<'_, Map> {
        // Every change under the lock is one map call or one increment: a panic while it
        // was held cannot leave the map half-changed.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// After a write that may have changed `invoice`'s payment, committed or not.
    fn forget(&self, invoice: &InvoiceNumber) {
        let mut map = self.locked();
        map.writes += 1;
        map.payments.remove(invoice);
    }
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("inner", &self.inner)
            .field("len", &self.entries.locked().payments.len())
            .finish_non_exhaustive()
    }
}

impl Cached {
    /// Caches the payments of `inner`, which only this process writes (`sole` proves it for
    /// a SQLite file; tests pass `None` for a store they own outright).
    pub fn new(inner: Arc<dyn Store>, sole: Option<SoleWriter>) -> Self {
        Self {
            inner,
            entries: Arc::new(Entries(Mutex::new(Map {
                payments: LruCache::new(CAPACITY),
                writes: 0,
            }))),
            _sole: sole,
        }
    }

    /// Runs `write` (of `invoice`'s payment, on `self.inner`) to its end, then forgets the
    /// payment. Run in the caller's task; if the caller stops waiting before the write ended
    /// (a cancelled gRPC call), the rest of the write moves to a task of its own, which
    /// forgets the payment when the write ends: it may still commit (a `COMMIT` already
    /// sent, a notification a batch-mate leads), and a payment cached from before it would
    /// then be served stale until evicted. (A task for every write, as before, woke a second
    /// runtime thread on every call: [`ToTheEnd`].)
    async fn write<T: Send + 'static>(
        &self,
        invoice: &InvoiceNumber,
        write: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        ToTheEnd {
            write: Some(Box::pin(write)),
            entries: self.entries.clone(),
            invoice: invoice.clone(),
        }
        .await
    }
}

/// A store write in progress.
type Write<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// A write that forgets its payment when it ends, and that ends even if its caller stops
/// waiting: dropped unfinished, it hands the write to a task of its own (see
/// [`Cached::write`]).
struct ToTheEnd<T: Send + 'static> {
    write: Option<Write<T>>,
    entries: Arc<Entries>,
    invoice: InvoiceNumber,
}

impl<T: Send + 'static> Future for ToTheEnd<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(write) = self.write.as_mut() else {
            return Poll::Ready(Err(StoreError::Unavailable(
                "store write polled after it ended".into(),
            )));
        };
        // A write that panicked is over too (and must not be polled again): its caller gets
        // an error, as from a task that panicked.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write.as_mut().poll(cx)));
        let result = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => result,
            Err(_) => Err(StoreError::Unavailable("the store write panicked".into())),
        };
        self.write = None;
        self.entries.forget(&self.invoice);
        Poll::Ready(result)
    }
}

impl<T: Send + 'static> Drop for ToTheEnd<T> {
    fn drop(&mut self) {
        let Some(write) = self.write.take() else {
            return;
        };
        let (entries, invoice) = (self.entries.clone(), self.invoice.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    // Its caller is gone: only the forgetting needs the result.
                    let _ = write.await;
                    entries.forget(&invoice);
                });
            }
            // No runtime left to run it (the process is shutting down): nothing can read
            // the map after this either.
            Err(_) => entries.forget(&invoice),
        }
    }
}

#[async_trait]
impl Store for Cached {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn create_payment(&self, draft: &PaymentDraft) -> Result<Created, StoreError> {
        let (inner, draft) = (self.inner.clone(), draft.clone());
        let invoice = draft.request.invoice.clone();
        self.write(&invoice, async move { inner.create_payment(&draft).await })
            .await
    }

    async fn find_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        self.inner.find_by_idempotency_key(key).await
    }

    async fn get_payment(
        &self,
        invoice: &InvoiceNumber,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        let writes = {
            let mut map = self.entries.locked();
            if let Some(record) = map.payments.get(invoice) {
                return Ok(Some(record.clone()));
            }
            map.writes
        };
        let read = self.inner.get_payment(invoice).await?;
        if let Some(record) = &read {
            let mut map = self.entries.locked();
            if map.writes == writes {
                map.payments.insert(invoice.clone(), record.clone());
            }
        }
        Ok(read)
    }

    async fn claim_attempt(
        &self,
        invoice: &InvoiceNumber,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let (inner, i) = (self.inner.clone(), invoice.clone());
        self.write(
            invoice,
            async move { inner.claim_attempt(&i, now, until).await },
        )
        .await
    }

    async fn release_attempt(&self, invoice: &InvoiceNumber) -> Result<(), StoreError> {
        let (inner, i) = (self.inner.clone(), invoice.clone());
        self.write(invoice, async move { inner.release_attempt(&i).await })
            .await
    }

    async fn record_outcome_unknown(&self, invoice: &InvoiceNumber) -> Result<(), StoreError> {
        let (inner, i) = (self.inner.clone(), invoice.clone());
        self.write(
            invoice,
            async move { inner.record_outcome_unknown(&i).await },
        )
        .await
    }

    async fn record_rejected(
        &self,
        invoice: &InvoiceNumber,
        request_id: &str,
        rejection: &AttemptRejection,
    ) -> Result<bool, StoreError> {
        let (inner, i) = (self.inner.clone(), invoice.clone());
        let (request_id, rejection) = (request_id.to_owned(), rejection.clone());
        self.write(invoice, async move {
            inner.record_rejected(&i, &request_id, &rejection).await
        })
        .await
    }

    async fn rejected_attempts(
        &self,
        invoice: &InvoiceNumber,
    ) -> Result<Vec<RejectedAttempt>, StoreError> {
        self.inner.rejected_attempts(invoice).await
    }

    async fn record_issued(
        &self,
        invoice: &InvoiceNumber,
        issued: &IssuedCode,
        first_check: Option<OffsetDateTime>,
    ) -> Result<PaymentRecord, StoreError> {
        let (inner, i, issued) = (self.inner.clone(), invoice.clone(), issued.clone());
        self.write(invoice, async move {
            inner.record_issued(&i, &issued, first_check).await
        })
        .await
    }

    async fn apply_status(&self, change: &StatusChange) -> Result<Applied, StoreError> {
        let (inner, c) = (self.inner.clone(), change.clone());
        self.write(&change.invoice, async move { inner.apply_status(&c).await })
            .await
    }

    async fn record_notification(
        &self,
        notification: InboundNotification,
    ) -> Result<Recorded, StoreError> {
        // Only an accepted change touches a payment; the rest is an audit row.
        match notification.change.as_ref().map(|c| c.invoice.clone()) {
            Some(invoice) => {
                let inner = self.inner.clone();
                self.write(&invoice, async move {
                    inner.record_notification(notification).await
                })
                .await
            }
            None => self.inner.record_notification(notification).await,
        }
    }

    async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<Event>, StoreError> {
        self.inner.events_after(after, limit).await
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        self.inner.last_seq().await
    }

    async fn pruned_through(&self) -> Result<u64, StoreError> {
        self.inner.pruned_through().await
    }

    async fn prune_events(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.inner.prune_events(before).await
    }

    async fn due_for_check(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        self.inner.due_for_check(now, limit).await
    }

    async fn schedule_check(
        &self,
        invoice: &InvoiceNumber,
        at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let (inner, i) = (self.inner.clone(), invoice.clone());
        self.write(invoice, async move { inner.schedule_check(&i, at).await })
            .await
    }

    fn commit_hints(&self) -> Option<watch::Receiver<u64>> {
        self.inner.commit_hints()
    }

    fn sweeper_election(&self) -> Box<dyn Election> {
        self.inner.sweeper_election()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::payment::PaymentStatus;
    use crate::store::SqliteStore;
    use crate::store::conformance::{TestStore, accepted, conformance_tests, draft, notified};

    async fn fixture() -> Option<TestStore> {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("o2o.db").display());
        let inner = Arc::new(SqliteStore::open(&url).await.unwrap());
        Some(TestStore {
            store: Arc::new(Cached::new(inner, None)),
            _guard: Box::new(dir),
        })
    }

    // Every invariant of the store holds through the cache.
    conformance_tests!(fixture());

    /// A caller that stops waiting for a write (a cancelled gRPC call) must not leave the
    /// payment as it was before the write in the cache: the write goes on, and so does the
    /// forgetting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_caller_stopped_waiting_still_refreshes_the_cache() {
        use crate::store::shared::Backend as _;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("o2o.db").display());
        let inner = Arc::new(SqliteStore::open(&url).await.unwrap());
        let store = Cached::new(inner.clone(), None);
        let invoice = InvoiceNumber::parse("INV-CANCEL").unwrap();
        store
            .create_payment(&draft("INV-CANCEL", None, false))
            .await
            .unwrap();
        let cached = store.get_payment(&invoice).await.unwrap().unwrap();
        assert_eq!(cached.payment.status, PaymentStatus::Pending);
        // Polled once, then dropped: the caller went away mid-write. The writer is busy with
        // another transaction meanwhile, so the write cannot have finished in that poll.
        let busy = inner.begin().await.unwrap();
        let paid = accepted(notified("INV-CANCEL", PaymentStatus::Paid, 5, "paid-1"));
        let write = store.record_notification(paid);
        assert!(
            tokio::time::timeout(Duration::ZERO, write).await.is_err(),
            "the write cannot finish while the writer is busy"
        );
        drop(busy);
        crate::testing::eventually("the cache serves PAID", Duration::from_secs(10), || async {
            let now = store.get_payment(&invoice).await.unwrap().unwrap();
            now.payment.status == PaymentStatus::Paid
        })
        .await;
    }

    #[tokio::test]
    async fn a_second_process_cannot_take_a_sqlite_store_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("o2o.db").display());
        let first = crate::store::open(&url).await.unwrap();
        let path = crate::store::sqlite::database_path(&url).unwrap();
        match SoleWriter::acquire(&path, Duration::from_millis(200)).await {
            Err(StoreError::Unavailable(detail)) => {
                assert!(
                    detail.contains("in use by another o2o-sidecar process"),
                    "{detail}"
                );
                assert!(detail.contains("PostgreSQL"), "{detail}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        // Let go (the process ended): the next one takes it.
        drop(first);
        SoleWriter::acquire(&path, Duration::from_millis(200))
            .await
            .unwrap();
    }
}
