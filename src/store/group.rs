//! Group commit: writes of one kind that arrive while another is being committed wait for it,
//! then commit together, in one transaction and so one `fsync`.
//!
//! A caller queues its item and then either finds it answered by a batch another caller led,
//! or takes the lead: it drains the queue (oldest first, at most [`MAX_BATCH`] items), runs
//! the batch, and answers every item in it. What a batch means (one transaction, each item's
//! own result, every result an error when the commit fails) is the runner's; this module only
//! groups. An answer is given only after the runner returns, so `Ok` still means "committed".
//!
//! No task of its own: the batch of a burst is led by one of its callers, so there is nothing
//! to start, stop or restart, and a store that is idle costs nothing. The lead is cancel-safe:
//! a leader dropped before it answered puts its batch back at the head of the queue (the
//! runner's transaction, dropped with it, rolled back), and the next caller to lead runs it
//! again.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The most items one transaction takes. A batch this size commits in a few milliseconds on
/// SQLite; a larger one would only make its first caller wait longer.
pub(super) const MAX_BATCH: usize = 128;

/// A queue of writes of one kind, and the right to lead the next batch of them.
pub(super) struct GroupCommit<T, R> {
    queue: Mutex<VecDeque<Queued<T, R>>>,
    lead: tokio::sync::Mutex<()>,
}

struct Queued<T, R> {
    item: T,
    answer: oneshot::Sender<R>,
}

/// The queue lost an item without answering it: only when the store itself is dropped.
#[derive(Debug)]
pub(super) struct Abandoned;

impl<T, R> Default for GroupCommit<T, R> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            lead: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T, R> std::fmt::Debug for GroupCommit<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl<T, R> GroupCommit<T, R> {
    /// Queues `item`. The ticket's [`Ticket::turn`] then says whether a batch led by
    /// another caller answered it, or whether this caller leads the next batch.
    pub(super) fn enqueue(&self, item: T) -> Ticket<'_, T, R> {
        let (answer, answered) = oneshot::channel();
        self.locked().push_back(Queued { item, answer });
        Ticket {
            owner: self,
            answered,
        }
    }

    fn locked(&self) -> MutexGuard<'_, VecDeque<Queued<T, R>>> {
        // Every change of the queue is one `VecDeque` call, so a panic while the lock was held
        // cannot leave it half-changed: a poisoned lock still guards a good queue.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A queued item's claim on its result.
pub(super) struct Ticket<'a, T, R> {
    owner: &'a GroupCommit<T, R>,
    answered: oneshot::Receiver<R>,
}

/// What a ticket's holder does next.
pub(super) enum Turn<'a, T, R> {
    /// A batch answered the item: here is its result.
    Answered(R),
    /// This caller leads: run the batch (its own item may be in it, or still queued behind
    /// it), answer it, then ask again.
    Lead(Batch<'a, T, R>),
}

impl<'a, T, R> Ticket<'a, T, R> {
    /// Waits until the item is answered or this caller may lead.
    pub(super) async fn turn(&mut self) -> Result<Turn<'a, T, R>, Abandoned> {
        let lead = tokio::select! {
            biased;
            result = &mut self.answered => return result.map(Turn::Answered).map_err(|_| Abandoned),
            lead = self.owner.lead.lock() => lead,
        };
        // Answered by the batch that held the lead until now?
        match self.answered.try_recv() {
            Ok(result) => return Ok(Turn::Answered(result)),
            Err(oneshot::error::TryRecvError::Closed) => return Err(Abandoned),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        // Not answered, and no batch runs without the lead: the item is queued.
        let mut queue = self.owner.locked();
        let n = queue.len().min(MAX_BATCH);
        let (items, answers) = queue.drain(..n).map(|q| (q.item, q.answer)).unzip();
        drop(queue);
        Ok(Turn::Lead(Batch {
            owner: self.owner,
            items,
            answers,
            _lead: lead,
        }))
    }
}

/// The batch a leader runs, holding the lead until it is answered or dropped. Dropped
/// unanswered (its leader was cancelled), it puts its items back at the head of the queue, in
/// their order, before it lets go of the lead.
pub(super) struct Batch<'a, T, R> {
    owner: &'a GroupCommit<T, R>,
    items: Vec<T>,
    answers: Vec<oneshot::Sender<R>>,
    _lead: tokio::sync::MutexGuard<'a, ()>,
}

impl<T, R> Batch<'_, T, R> {
    /// The items, oldest first.
    pub(super) fn items(&self) -> &[T] {
        &self.items
    }

    /// Answers each item with its result (same order as [`Batch::items`]) and lets go of
    /// the lead.
    pub(super) fn answer(mut self, results: Vec<R>) {
        debug_assert_eq!(results.len(), self.answers.len());
        for (answer, result) in self.answers.drain(..).zip(results) {
            // A caller that stopped waiting no longer needs its answer.
            let _ = answer.send(result);
        }
    }
}

impl<T, R> Drop for Batch<'_, T, R> {
    fn drop(&mut self) {
        if self.answers.is_empty() {
            return;
        }
        let items = std::mem::take(&mut self.items);
        let answers = std::mem::take(&mut self.answers);
        let mut queue = self.owner.locked();
        for (item, answer) in items.into_iter().zip(answers).rev() {
            queue.push_front(Queued { item, answer });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    type Doubler = GroupCommit<u32, u32>;

    /// Submits `item` and runs any batch this caller leads by doubling each item, counting
    /// the batches in `batches` and waiting for `gate` first.
    async fn submit(
        group: &Doubler,
        item: u32,
        batches: &AtomicUsize,
        gate: &tokio::sync::Semaphore,
    ) -> u32 {
        let mut ticket = group.enqueue(item);
        loop {
            match ticket.turn().await.unwrap() {
                Turn::Answered(result) => return result,
                Turn::Lead(batch) => {
                    let _pass = gate.acquire().await.unwrap();
                    batches.fetch_add(1, Ordering::SeqCst);
                    let results = batch.items().iter().map(|i| i * 2).collect();
                    batch.answer(results);
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn items_that_wait_for_a_commit_share_the_next_batch_and_get_their_own_results() {
        let group = Arc::new(Doubler::default());
        let batches = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let spawn = |item: u32| {
            let (group, batches, gate) = (group.clone(), batches.clone(), gate.clone());
            tokio::spawn(async move { submit(&group, item, &batches, &gate).await })
        };
        // The first caller leads a batch of its own item and waits at the gate (its
        // "commit") while 50 more queue behind it.
        let first = spawn(0);
        while !group.locked().is_empty() || group.lead.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (1..=50).map(spawn).collect();
        while group.locked().len() != 50 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(2);
        assert_eq!(first.await.unwrap(), 0);
        for (i, task) in (1..=50).zip(rest) {
            assert_eq!(task.await.unwrap(), i * 2);
        }
        assert_eq!(
            batches.load(Ordering::SeqCst),
            2,
            "one batch, then one of the 50"
        );
    }

    #[tokio::test]
    async fn a_batch_takes_at_most_max_batch_items_oldest_first() {
        let group = Doubler::default();
        let mut tickets: Vec<_> = (0..200).map(|i| group.enqueue(i)).collect();
        let Turn::Lead(batch) = tickets[0].turn().await.unwrap() else {
            panic!("nobody else leads")
        };
        let expected: Vec<u32> = (0..128).collect();
        assert_eq!(batch.items(), expected.as_slice());
        let results = batch.items().iter().map(|i| i * 2).collect();
        batch.answer(results);
        let Turn::Answered(r) = tickets[127].turn().await.unwrap() else {
            panic!("answered by the first batch")
        };
        assert_eq!(r, 254);
        let Turn::Lead(batch) = tickets[128].turn().await.unwrap() else {
            panic!("the rest are still queued")
        };
        assert_eq!(batch.items().len(), 72);
    }

    #[tokio::test]
    async fn a_batch_dropped_unanswered_is_queued_again_in_order() {
        let group = Doubler::default();
        let mut a = group.enqueue(1);
        let mut b = group.enqueue(2);
        let mut c = group.enqueue(3);
        // A leads and is cancelled mid-batch (its future dropped with the batch).
        let Turn::Lead(batch) = a.turn().await.unwrap() else {
            panic!("A leads")
        };
        assert_eq!(batch.items(), &[1, 2, 3]);
        drop(batch);
        // B leads the same items again; every caller gets its answer.
        let Turn::Lead(batch) = b.turn().await.unwrap() else {
            panic!("B leads the batch A dropped")
        };
        assert_eq!(batch.items(), &[1, 2, 3]);
        batch.answer(vec![10, 20, 30]);
        for (ticket, expected) in [(&mut a, 10), (&mut b, 20), (&mut c, 30)] {
            match ticket.turn().await.unwrap() {
                Turn::Answered(r) => assert_eq!(r, expected),
                Turn::Lead(_) => panic!("every item was answered"),
            }
        }
    }
}
