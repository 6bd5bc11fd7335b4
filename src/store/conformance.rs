//! The test suite every [`Store`] implementation must pass: one `pub(crate) async fn` per
//! invariant of the module doc, plus a proptest of the event log against an in-memory model.
//!
//! A backend runs the whole suite with [`conformance_tests!`], given an async expression that
//! yields `Option<TestStore>` (`None` skips: only when a missing database server is to be
//! skipped, see `crate::testing`'s `O2O_TEST_SKIP_POSTGRES`). Cases only use the trait, so they
//! hold for every backend alike.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use time::OffsetDateTime;

use super::{
    Applied, AttemptRejection, Created, InboundNotification, PaymentDraft, Recorded, Store,
    StoreError, StoredRequest, Verdict,
};
use crate::payment::{
    Amount, Channel, Event, EventSource, InvoiceNumber, IssuedCode, NewPayment, PaymentCode,
    PaymentInstruction, PaymentStatus, StatusChange,
};

/// A store under test and whatever must live as long as it (a temporary directory, a scratch
/// database that is dropped afterwards).
pub(crate) struct TestStore {
    /// The store.
    pub(crate) store: Arc<dyn Store>,
    /// Dropped after the case.
    pub(crate) _guard: Box<dyn Send>,
}

/// Expands to one `#[tokio::test]` per conformance case, each with a fresh store from
/// `$fixture` (an async expression yielding `Option<TestStore>`).
macro_rules! conformance_tests {
    ($fixture:expr) => {
        $crate::store::conformance::conformance_tests!(@cases $fixture;
            create_then_existing_then_key_taken,
            concurrent_creates_make_one_row,
            claim_lease_expiry_and_release,
            record_issued_is_idempotent_and_refuses_another_code,
            record_issued_schedules_the_first_check_with_the_code,
            record_issued_keeps_the_instructions,
            a_draft_created_with_a_lease_is_held_until_it_ends,
            a_draft_is_due_for_the_sweeper_when_its_lease_ends,
            status_moves_forward_only,
            reusable_code_paid_twice_makes_two_events,
            reconciliation_then_notification_is_one_event,
            duplicate_request_id_changes_nothing,
            rejected_notifications_are_stored_without_effect,
            unknown_invoice_is_created_from_notification,
            a_rejected_draft_is_replaced_only_by_a_different_request,
            the_creating_trace_is_kept,
            the_alfa_channel_round_trips,
            an_unknown_outcome_keeps_the_invoice_bound,
            racing_replacements_of_a_rejected_draft_have_one_winner,
            an_undated_repeat_paid_is_stored_not_emitted,
            events_after_orders_and_limits,
            prune_keeps_the_resume_position,
            due_for_check_is_oldest_first,
            concurrent_appends_never_appear_behind_a_reader,
            concurrent_notifications_are_each_answered_as_if_alone,
            event_log_matches_model,
        );
    };
    (@cases $fixture:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(test_store) = $fixture.await {
                    $crate::store::conformance::$case(test_store.store.clone()).await;
                }
            }
        )*
    };
}
pub(crate) use conformance_tests;

// ---------------------------------------------------------------------------------------
// Builders

/// A fixed, whole-second instant plus `secs`: the store keeps whole seconds.
fn t(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_750_000_000 + secs).unwrap()
}

fn inv(s: &str) -> InvoiceNumber {
    InvoiceNumber::parse(s).unwrap()
}

fn code(s: &str) -> PaymentCode {
    PaymentCode::parse(s).unwrap()
}

fn amount() -> Amount {
    Amount::new(150_000).unwrap()
}

pub(crate) fn draft(invoice: &str, key: Option<&str>, reusable: bool) -> PaymentDraft {
    let request = NewPayment {
        invoice: inv(invoice),
        amount: amount(),
        customer_name: "Taufik Ismail".into(),
        customer_email: None,
        expiry_minutes: 60,
        reusable,
        info: None,
        receipt_description: None,
        receipt_footer_message: None,
        idempotency_key: key.map(str::to_owned),
        channel: Channel::Indomaret,
        notification_url: None,
    };
    PaymentDraft {
        fingerprint: request.fingerprint(),
        doku_request: StoredRequest {
            request_id: format!("req-{invoice}"),
            body: format!("{{\"order\":{{\"invoice_number\":\"{invoice}\"}}}}").into_bytes(),
        },
        request,
        create_time: t(0),
        expire_time: t(3600),
        trace_context: Some(TRACE_A.into()),
        attempt_lease_until: None,
    }
}

/// W3C `traceparent` values of two creating calls.
const TRACE_A: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_B: &str = "00-5bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b8-00";

fn reconciled(invoice: &str, status: PaymentStatus, occur: i64) -> StatusChange {
    StatusChange {
        invoice: inv(invoice),
        status,
        amount: amount(),
        payment_code: None,
        occur_time: Some(t(occur)),
        source: EventSource::Reconciliation,
        doku_request_id: None,
    }
}

pub(crate) fn notified(
    invoice: &str,
    status: PaymentStatus,
    occur: i64,
    request_id: &str,
) -> StatusChange {
    StatusChange {
        source: EventSource::DokuNotification,
        doku_request_id: Some(request_id.into()),
        ..reconciled(invoice, status, occur)
    }
}

fn notification(verdict: Verdict, change: StatusChange) -> InboundNotification {
    InboundNotification {
        doku_request_id: change.doku_request_id.clone().unwrap(),
        received_at: t(10_000),
        headers: r#"{"Client-Id":"MCH-0001","Signature":"HMACSHA256=abc…"}"#.into(),
        body: format!(
            "{{\"order\":{{\"invoice_number\":\"{}\"}}}}",
            change.invoice
        )
        .into_bytes(),
        verdict,
        change: Some(change),
        channel: Channel::Indomaret,
    }
}

pub(crate) fn accepted(change: StatusChange) -> InboundNotification {
    notification(Verdict::Accepted, change)
}

async fn create(store: &dyn Store, d: &PaymentDraft) {
    match store.create_payment(d).await.unwrap() {
        Created::New(_) => {}
        other => panic!("expected a new payment, got {other:?}"),
    }
}

async fn status_of(store: &dyn Store, invoice: &str) -> PaymentStatus {
    store
        .get_payment(&inv(invoice))
        .await
        .unwrap()
        .unwrap()
        .payment
        .status
}

/// The event a notification produced (`None` when stored without one); panics on Duplicate.
async fn record(store: &dyn Store, n: &InboundNotification) -> Option<Event> {
    match store.record_notification(n.clone()).await.unwrap() {
        Recorded::Stored { event } => event,
        Recorded::Duplicate => panic!("{} reported as duplicate", n.doku_request_id),
        Recorded::UndatedRepeat => panic!("{} reported as an undated repeat", n.doku_request_id),
    }
}

async fn all_events(store: &dyn Store) -> Vec<Event> {
    store.events_after(0, 10_000).await.unwrap()
}

// ---------------------------------------------------------------------------------------
// Cases

/// create_payment: New with exactly the draft's data, then Existing, then
/// IdempotencyKeyTaken; the lookups agree.
pub(crate) async fn create_then_existing_then_key_taken(store: Arc<dyn Store>) {
    let store = &*store;
    store.ping().await.unwrap();
    let d = draft("INV-1", Some("key-1"), true);
    let Created::New(created) = store.create_payment(&d).await.unwrap() else {
        panic!("first create must be new");
    };
    let p = &created.payment;
    assert_eq!(p.invoice, inv("INV-1"));
    assert_eq!(p.amount, amount());
    assert_eq!(p.channel, Channel::Indomaret);
    assert_eq!(p.payment_code, None);
    assert_eq!(p.status, PaymentStatus::Pending);
    assert_eq!(
        (p.create_time, p.expire_time, p.pay_time),
        (t(0), t(3600), None)
    );
    assert_eq!((&p.how_to_pay_url, &p.how_to_pay_api_url), (&None, &None));
    assert!(p.reusable);
    assert_eq!(created.fingerprint, d.fingerprint);
    assert_eq!(created.idempotency_key.as_deref(), Some("key-1"));
    assert_eq!(created.doku_request.as_ref(), Some(&d.doku_request));
    assert_eq!(created.attempt_lease_until, None);
    assert_eq!(created.next_check_at, None);
    assert_eq!(created.check_count, 0);

    assert_eq!(
        store.get_payment(&inv("INV-1")).await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(
        store.find_by_idempotency_key("key-1").await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(store.find_by_idempotency_key("key-2").await.unwrap(), None);
    assert_eq!(store.get_payment(&inv("INV-2")).await.unwrap(), None);

    // Same invoice, different request: the stored one, unchanged.
    let mut other = draft("INV-1", Some("key-9"), false);
    other.request.amount = Amount::new(1).unwrap();
    assert_eq!(
        store.create_payment(&other).await.unwrap(),
        Created::Existing(created.clone())
    );
    assert_eq!(store.find_by_idempotency_key("key-9").await.unwrap(), None);

    // Another invoice with a taken key: the key's owner, and no row for the new invoice.
    assert_eq!(
        store
            .create_payment(&draft("INV-2", Some("key-1"), false))
            .await
            .unwrap(),
        Created::IdempotencyKeyTaken(created.clone())
    );
    assert_eq!(store.get_payment(&inv("INV-2")).await.unwrap(), None);

    // Without a key there is nothing to collide on.
    create(store, &draft("INV-3", None, false)).await;
    assert_eq!(all_events(store).await, []);
}

/// Many concurrent creates for one invoice make one row; many for one key make one row.
pub(crate) async fn concurrent_creates_make_one_row(store: Arc<dyn Store>) {
    const TASKS: usize = 24;
    let mut same_invoice = Vec::new();
    let mut same_key = Vec::new();
    for i in 0..TASKS {
        let s = store.clone();
        same_invoice.push(tokio::spawn(async move {
            s.create_payment(&draft("INV-RACE", Some(&format!("k{i}")), false))
                .await
        }));
        let s = store.clone();
        same_key.push(tokio::spawn(async move {
            s.create_payment(&draft(&format!("INV-K{i}"), Some("shared-key"), false))
                .await
        }));
    }
    let mut new = Vec::new();
    let mut existing = Vec::new();
    for task in same_invoice {
        match task.await.unwrap().unwrap() {
            Created::New(r) => new.push(r),
            Created::Existing(r) => existing.push(r),
            Created::IdempotencyKeyTaken(r) => panic!("unexpected key clash with {r:?}"),
        }
    }
    assert_eq!(new.len(), 1, "exactly one create wins");
    assert_eq!(existing.len(), TASKS - 1);
    assert!(existing.iter().all(|r| *r == new[0]));
    let winner_key = new[0].idempotency_key.clone().unwrap();
    for i in 0..TASKS {
        let key = format!("k{i}");
        let found = store.find_by_idempotency_key(&key).await.unwrap();
        assert_eq!(found.is_some(), key == winner_key, "key {key}");
    }

    let mut new = Vec::new();
    let mut taken = Vec::new();
    for task in same_key {
        match task.await.unwrap().unwrap() {
            Created::New(r) => new.push(r),
            Created::IdempotencyKeyTaken(r) => taken.push(r),
            Created::Existing(r) => panic!("unexpected existing {r:?}"),
        }
    }
    assert_eq!(new.len(), 1, "exactly one create owns the key");
    assert_eq!(taken.len(), TASKS - 1);
    assert!(taken.iter().all(|r| *r == new[0]));
    for i in 0..TASKS {
        let invoice = inv(&format!("INV-K{i}"));
        let found = store.get_payment(&invoice).await.unwrap();
        assert_eq!(found.is_some(), invoice == new[0].payment.invoice);
    }
}

/// claim_attempt: one holder until the lease expires or is released; never once a code is
/// recorded.
pub(crate) async fn claim_lease_expiry_and_release(shared: Arc<dyn Store>) {
    let store = &*shared;
    let i = inv("INV-1");
    create(store, &draft("INV-1", None, false)).await;
    assert!(store.claim_attempt(&i, t(0), t(30)).await.unwrap());
    let held = store.get_payment(&i).await.unwrap().unwrap();
    assert_eq!(held.attempt_lease_until, Some(t(30)));
    assert!(!store.claim_attempt(&i, t(10), t(40)).await.unwrap());
    assert!(!store.claim_attempt(&i, t(29), t(40)).await.unwrap());
    // Expired at its end.
    assert!(store.claim_attempt(&i, t(30), t(60)).await.unwrap());
    assert!(!store.claim_attempt(&i, t(31), t(90)).await.unwrap());
    store.release_attempt(&i).await.unwrap();
    let released = store.get_payment(&i).await.unwrap().unwrap();
    assert_eq!(released.attempt_lease_until, None);
    assert!(store.claim_attempt(&i, t(31), t(61)).await.unwrap());

    // A concurrent race for the lease has one winner.
    store.release_attempt(&i).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (s, i) = (Arc::clone(&shared), i.clone());
        tasks.push(tokio::spawn(async move {
            s.claim_attempt(&i, t(40), t(70)).await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        winners += usize::from(task.await.unwrap().unwrap());
    }
    assert_eq!(winners, 1);

    store
        .record_issued(&i, &issued("1234567890123456", None, None), None)
        .await
        .unwrap();
    assert!(!store.claim_attempt(&i, t(1000), t(1030)).await.unwrap());

    assert!(matches!(
        store.claim_attempt(&inv("NOPE"), t(0), t(30)).await,
        Err(StoreError::NotFound(n)) if n == inv("NOPE")
    ));
    assert!(matches!(
        store.release_attempt(&inv("NOPE")).await,
        Err(StoreError::NotFound(_))
    ));
}

fn issued(c: &str, create: Option<i64>, expire: Option<i64>) -> IssuedCode {
    IssuedCode {
        payment_code: code(c),
        create_time: create.map(t),
        expire_time: expire.map(t),
        how_to_pay_url: Some("https://sandbox.doku.com/how-to-pay/1".into()),
        how_to_pay_api_url: Some("https://sandbox.doku.com/how-to-pay-api/1".into()),
        instructions: Vec::new(),
    }
}

/// CHANNEL_ALFA is stored and read back wherever a channel is: the payment created from a
/// request, its events, the sweeper's list, and a payment
/// created from a notification for an unknown invoice (which takes the notification's
/// channel); a notification about a stored payment keeps the stored channel.
pub(crate) async fn the_alfa_channel_round_trips(store: Arc<dyn Store>) {
    let store = &*store;
    let mut d = draft("INV-ALFA", Some("key-alfa"), false);
    d.request.channel = Channel::Alfa;
    d.request.receipt_footer_message = Some("Terima kasih".into());
    d.fingerprint = d.request.fingerprint();
    let Created::New(created) = store.create_payment(&d).await.unwrap() else {
        panic!("first create must be new");
    };
    assert_eq!(created.payment.channel, Channel::Alfa);
    let by_key = store.find_by_idempotency_key("key-alfa").await.unwrap();
    assert_eq!(by_key.unwrap().payment.channel, Channel::Alfa);
    let rec = store
        .record_issued(&inv("INV-ALFA"), &issued("888001", None, None), Some(t(50)))
        .await
        .unwrap();
    assert_eq!(rec.payment.channel, Channel::Alfa);
    let due = store.due_for_check(t(60), 10).await.unwrap();
    assert_eq!(
        due.iter()
            .map(|r| (r.payment.invoice.as_str(), r.payment.channel))
            .collect::<Vec<_>>(),
        [("INV-ALFA", Channel::Alfa)]
    );

    // A notification about the stored payment: the stored channel stays, whatever the
    // notification's creation channel says.
    let event = record(
        store,
        &accepted(notified("INV-ALFA", PaymentStatus::Paid, 100, "a1")),
    )
    .await
    .unwrap();
    assert_eq!(event.channel, Channel::Alfa);
    let p = store.get_payment(&inv("INV-ALFA")).await.unwrap().unwrap();
    assert_eq!(
        (p.payment.channel, p.payment.status),
        (Channel::Alfa, PaymentStatus::Paid)
    );

    // An unknown invoice notified on Alfa's channel is created as an Alfa payment.
    let mut ghost = accepted(notified("INV-ALFA-GHOST", PaymentStatus::Paid, 200, "a2"));
    ghost.channel = Channel::Alfa;
    let ghost_event = record(store, &ghost).await.unwrap();
    assert_eq!(ghost_event.channel, Channel::Alfa);
    let p = store
        .get_payment(&inv("INV-ALFA-GHOST"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.payment.channel, Channel::Alfa);

    let channels: Vec<_> = all_events(store).await.iter().map(|e| e.channel).collect();
    assert_eq!(channels, [Channel::Alfa, Channel::Alfa]);
}

/// A draft created with the creator's lease is claimed from the insert on: nobody else can
/// claim it before the lease ends, and a takeover after that marks the outcome unknown.
pub(crate) async fn a_draft_created_with_a_lease_is_held_until_it_ends(store: Arc<dyn Store>) {
    let store = &*store;
    let i = inv("INV-1");
    let held = PaymentDraft {
        attempt_lease_until: Some(t(30)),
        ..draft("INV-1", None, false)
    };
    let Created::New(rec) = store.create_payment(&held).await.unwrap() else {
        panic!("not created");
    };
    assert_eq!(rec.attempt_lease_until, Some(t(30)));
    assert!(!store.claim_attempt(&i, t(29), t(59)).await.unwrap());
    // Its holder vanished: the taker cannot know what DOKU did with that attempt.
    assert!(store.claim_attempt(&i, t(30), t(60)).await.unwrap());
    let rec = store.get_payment(&i).await.unwrap().unwrap();
    assert!(rec.outcome_unknown);
}

/// The invoices due for the sweeper at `at`, oldest first, at most `limit`.
async fn due_at(store: &dyn Store, at: i64, limit: u32) -> Vec<String> {
    store
        .due_for_check(t(at), limit)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.payment.invoice.to_string())
        .collect()
}

/// A draft whose code never got recorded (its creating call died after DOKU answered, or the
/// code's unsynced commit was lost with the machine) is due for the sweeper when its lease
/// ends, so that the stored request is replayed; recording the code, or an attempt that ended
/// and answered its caller, takes it off that schedule.
pub(crate) async fn a_draft_is_due_for_the_sweeper_when_its_lease_ends(store: Arc<dyn Store>) {
    let store = &*store;
    let due = |at| due_at(store, at, 10);
    for (invoice, lease_end) in [("INV-VANISHED", 30), ("INV-ISSUED", 40), ("INV-FAILED", 50)] {
        let held = PaymentDraft {
            attempt_lease_until: Some(t(lease_end)),
            ..draft(invoice, None, false)
        };
        create(store, &held).await;
    }
    assert_eq!(due(29).await, Vec::<String>::new());
    assert_eq!(due(30).await, ["INV-VANISHED"]);
    assert_eq!(due(50).await, ["INV-VANISHED", "INV-ISSUED", "INV-FAILED"]);

    store
        .record_issued(
            &inv("INV-ISSUED"),
            &issued("8888002", Some(5), Some(3605)),
            Some(t(600)),
        )
        .await
        .unwrap();
    // The attempt failed and its caller was told: no replay behind the caller's back.
    store.release_attempt(&inv("INV-FAILED")).await.unwrap();
    assert_eq!(due(599).await, ["INV-VANISHED"]);
    assert_eq!(due(600).await, ["INV-VANISHED", "INV-ISSUED"]);

    // A caller's retry claims the failed draft: due again when that lease ends.
    assert!(
        store
            .claim_attempt(&inv("INV-FAILED"), t(700), t(730))
            .await
            .unwrap()
    );
    assert_eq!(due(729).await, ["INV-VANISHED", "INV-ISSUED"]);
    assert_eq!(due(730).await, ["INV-VANISHED", "INV-ISSUED", "INV-FAILED"]);
}

/// record_issued with a first check: the code and the sweeper's schedule commit together;
/// the payment is due at that time and not before.
pub(crate) async fn record_issued_schedules_the_first_check_with_the_code(store: Arc<dyn Store>) {
    let store = &*store;
    let i = inv("INV-1");
    create(store, &draft("INV-1", None, false)).await;
    assert!(store.claim_attempt(&i, t(0), t(30)).await.unwrap());
    let rec = store
        .record_issued(&i, &issued("8888001", Some(5), Some(3605)), Some(t(60)))
        .await
        .unwrap();
    assert_eq!(rec.payment.payment_code, Some(code("8888001")));
    assert_eq!(due_at(store, 59, 10).await, Vec::<String>::new());
    assert_eq!(due_at(store, 60, 10).await, ["INV-1"]);
}

/// record_issued keeps the instructions with the code, in order and as given (multi-byte text
/// and quotes included), for every later read; a payment issued without any has none, and the
/// same code again fills them in once, never replaces them.
pub(crate) async fn record_issued_keeps_the_instructions(store: Arc<dyn Store>) {
    let store = &*store;
    let instructions = vec![
        PaymentInstruction {
            channel: "INDOMARET".into(),
            language: "id".into(),
            steps: vec![
                "Datang ke gerai Indomaret terdekat.".into(),
                "Sebutkan \"DOKU\" ke kasir — bayar Rp 10.000.".into(),
            ],
        },
        PaymentInstruction {
            channel: String::new(),
            language: "en".into(),
            steps: vec!["Pay at the counter.".into()],
        },
    ];
    let with = |c: &str, list: &[PaymentInstruction]| IssuedCode {
        instructions: list.to_vec(),
        ..issued(c, None, None)
    };

    let i = inv("INV-1");
    create(store, &draft("INV-1", None, false)).await;
    let rec = store
        .record_issued(&i, &with("8888001", &instructions), Some(t(60)))
        .await
        .unwrap();
    assert_eq!(rec.payment.instructions, instructions);
    let read = store.get_payment(&i).await.unwrap().unwrap();
    assert_eq!(read.payment.instructions, instructions);
    // The same code with other instructions (a replayed answer): what is stored stays.
    let again = store
        .record_issued(&i, &with("8888001", &instructions[1..]), None)
        .await
        .unwrap();
    assert_eq!(again.payment.instructions, instructions);

    // Issued without instructions: none, until the same code comes with some.
    let j = inv("INV-2");
    create(store, &draft("INV-2", None, false)).await;
    let rec = store
        .record_issued(&j, &with("8888002", &[]), None)
        .await
        .unwrap();
    assert!(rec.payment.instructions.is_empty());
    assert!(
        store
            .get_payment(&j)
            .await
            .unwrap()
            .unwrap()
            .payment
            .instructions
            .is_empty()
    );
    let filled = store
        .record_issued(&j, &with("8888002", &instructions[1..]), None)
        .await
        .unwrap();
    assert_eq!(filled.payment.instructions, instructions[1..]);
}

/// record_issued: sets code, DOKU's times and URLs and ends the lease; the same code again is
/// fine; another code is refused and changes nothing.
pub(crate) async fn record_issued_is_idempotent_and_refuses_another_code(store: Arc<dyn Store>) {
    let store = &*store;
    let i = inv("INV-1");
    create(store, &draft("INV-1", None, false)).await;
    assert!(store.claim_attempt(&i, t(0), t(30)).await.unwrap());
    let first = store
        .record_issued(&i, &issued("8888001", Some(5), Some(3605)), None)
        .await
        .unwrap();
    let p = &first.payment;
    assert_eq!(p.payment_code, Some(code("8888001")));
    assert_eq!((p.create_time, p.expire_time), (t(5), t(3605)));
    assert_eq!(
        p.how_to_pay_url.as_deref(),
        Some("https://sandbox.doku.com/how-to-pay/1")
    );
    assert_eq!(first.attempt_lease_until, None);
    assert_eq!(
        first.doku_request,
        draft("INV-1", None, false).doku_request.into()
    );
    assert_eq!(store.get_payment(&i).await.unwrap(), Some(first.clone()));

    // Same code again (a replayed answer): unchanged.
    let again = store
        .record_issued(&i, &issued("8888001", Some(7), Some(9)), None)
        .await
        .unwrap();
    assert_eq!(again, first);

    match store
        .record_issued(&i, &issued("9999002", None, None), None)
        .await
    {
        Err(StoreError::CodeConflict {
            invoice,
            existing,
            offered,
        }) => {
            assert_eq!(invoice, i);
            assert_eq!(existing, code("8888001"));
            assert_eq!(offered, code("9999002"));
        }
        other => panic!("expected CodeConflict, got {other:?}"),
    }
    assert_eq!(store.get_payment(&i).await.unwrap(), Some(first));

    // Without DOKU times the provisional ones stay.
    create(store, &draft("INV-2", None, false)).await;
    let second = store
        .record_issued(&inv("INV-2"), &issued("8888002", None, None), None)
        .await
        .unwrap();
    assert_eq!(
        (second.payment.create_time, second.payment.expire_time),
        (t(0), t(3600))
    );

    assert!(matches!(
        store
            .record_issued(&inv("NOPE"), &issued("1", None, None), None)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// apply_status: forward moves append events (in the same call), others change nothing.
pub(crate) async fn status_moves_forward_only(store: Arc<dyn Store>) {
    let store = &*store;
    create(store, &draft("INV-A", None, false)).await;
    create(store, &draft("INV-B", None, false)).await;

    // PAID then EXPIRED: one event.
    let Applied { record, event } = store
        .apply_status(&reconciled("INV-A", PaymentStatus::Paid, 100))
        .await
        .unwrap();
    let event = event.expect("PENDING -> PAID is forward");
    assert_eq!(record.payment.status, PaymentStatus::Paid);
    assert_eq!(record.payment.pay_time, Some(t(100)));
    assert_eq!(event.invoice, inv("INV-A"));
    assert_eq!(event.status, PaymentStatus::Paid);
    assert_eq!(event.occur_time, t(100));
    assert_eq!(event.source, EventSource::Reconciliation);
    assert_eq!(event.channel, Channel::Indomaret);
    assert_eq!(event.amount, amount());
    let after = store
        .apply_status(&reconciled("INV-A", PaymentStatus::Expired, 200))
        .await
        .unwrap();
    assert_eq!(after.event, None);
    assert_eq!(after.record.payment.status, PaymentStatus::Paid);
    assert_eq!(after.record, record);

    // EXPIRED then PAID: two events (a late payment wins).
    let expired = store
        .apply_status(&reconciled("INV-B", PaymentStatus::Expired, 100))
        .await
        .unwrap();
    assert_eq!(expired.event.unwrap().status, PaymentStatus::Expired);
    assert_eq!(expired.record.payment.pay_time, None);
    let mut paid = reconciled("INV-B", PaymentStatus::Paid, 150);
    paid.payment_code = Some(code("5555"));
    let paid = store.apply_status(&paid).await.unwrap();
    let paid_event = paid.event.unwrap();
    assert_eq!(paid_event.status, PaymentStatus::Paid);
    assert_eq!(paid_event.payment_code, Some(code("5555")));
    // A code in the change is recorded when the payment had none.
    assert_eq!(paid.record.payment.payment_code, Some(code("5555")));
    assert_eq!(paid.record.payment.pay_time, Some(t(150)));
    for status in [
        PaymentStatus::Pending,
        PaymentStatus::Failed,
        PaymentStatus::Expired,
        PaymentStatus::Paid,
    ] {
        let again = store
            .apply_status(&reconciled("INV-B", status, 300))
            .await
            .unwrap();
        assert_eq!(again.event, None, "{status:?} after PAID");
    }

    let events = all_events(store).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.invoice.as_str(), e.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("INV-A", PaymentStatus::Paid),
            ("INV-B", PaymentStatus::Expired),
            ("INV-B", PaymentStatus::Paid)
        ]
    );
    assert_eq!(events[2], paid_event);

    assert!(matches!(
        store
            .apply_status(&reconciled("NOPE", PaymentStatus::Paid, 1))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// A reusable code paid twice (two notifications) makes two PAID events; the same payment
/// notified again under a new Request-Id does not.
pub(crate) async fn reusable_code_paid_twice_makes_two_events(store: Arc<dyn Store>) {
    let store = &*store;
    create(store, &draft("INV-R", None, true)).await;
    create(store, &draft("INV-N", None, false)).await;

    let first = record(
        store,
        &accepted(notified("INV-R", PaymentStatus::Paid, 100, "n1")),
    )
    .await;
    let second = record(
        store,
        &accepted(notified("INV-R", PaymentStatus::Paid, 200, "n2")),
    )
    .await;
    let (first, second) = (first.unwrap(), second.unwrap());
    assert!(second.seq > first.seq);
    assert_eq!(second.doku_request_id.as_deref(), Some("n2"));
    assert_eq!(second.source, EventSource::DokuNotification);
    let payment = store.get_payment(&inv("INV-R")).await.unwrap().unwrap();
    assert_eq!(payment.payment.pay_time, Some(t(200)), "the latest payment");
    // A payment made in between, notified late, is its own event but does not move
    // pay_time back.
    let between = record(
        store,
        &accepted(notified("INV-R", PaymentStatus::Paid, 150, "n3")),
    )
    .await;
    assert!(between.is_some());
    let payment = store.get_payment(&inv("INV-R")).await.unwrap().unwrap();
    assert_eq!(payment.payment.pay_time, Some(t(200)));
    assert_eq!(
        record(
            store,
            &accepted(notified("INV-R", PaymentStatus::Paid, 100, "n3b"))
        )
        .await,
        None,
        "same occur_time as an existing PAID event: the same payment"
    );
    // Reconciliation never repeats a PAID, even at a new time.
    let reconciliation = store
        .apply_status(&reconciled("INV-R", PaymentStatus::Paid, 300))
        .await
        .unwrap();
    assert_eq!(reconciliation.event, None);
    // EXPIRED after PAID is not forward, reusable or not.
    assert_eq!(
        record(
            store,
            &accepted(notified("INV-R", PaymentStatus::Expired, 400, "n4"))
        )
        .await,
        None
    );

    // A non-reusable code: the second PAID is not an event.
    assert!(
        record(
            store,
            &accepted(notified("INV-N", PaymentStatus::Paid, 100, "m1"))
        )
        .await
        .is_some()
    );
    assert_eq!(
        record(
            store,
            &accepted(notified("INV-N", PaymentStatus::Paid, 200, "m2"))
        )
        .await,
        None
    );

    let events: Vec<_> = all_events(store)
        .await
        .into_iter()
        .map(|e| (e.invoice.to_string(), e.doku_request_id))
        .collect();
    assert_eq!(
        events,
        [
            ("INV-R".to_owned(), Some("n1".to_owned())),
            ("INV-R".to_owned(), Some("n2".to_owned())),
            ("INV-R".to_owned(), Some("n3".to_owned())),
            ("INV-N".to_owned(), Some("m1".to_owned())),
        ]
    );
}

/// A payment DOKU reports paid is emitted once, whichever path saw it first.
pub(crate) async fn reconciliation_then_notification_is_one_event(store: Arc<dyn Store>) {
    let store = &*store;
    for (invoice, reusable) in [("INV-N", false), ("INV-R", true)] {
        create(store, &draft(invoice, None, reusable)).await;
        let applied = store
            .apply_status(&reconciled(invoice, PaymentStatus::Paid, 100))
            .await
            .unwrap();
        assert!(applied.event.is_some());
        let late = record(
            store,
            &accepted(notified(
                invoice,
                PaymentStatus::Paid,
                100,
                &format!("{invoice}-n"),
            )),
        )
        .await;
        assert_eq!(late, None, "{invoice}: the same payment, seen twice");
        assert_eq!(status_of(store, invoice).await, PaymentStatus::Paid);
    }
    // Notification first, then reconciliation: also one.
    create(store, &draft("INV-X", None, true)).await;
    assert!(
        record(
            store,
            &accepted(notified("INV-X", PaymentStatus::Paid, 100, "x1"))
        )
        .await
        .is_some()
    );
    let applied = store
        .apply_status(&reconciled("INV-X", PaymentStatus::Paid, 100))
        .await
        .unwrap();
    assert_eq!(applied.event, None);
    // The reusable code paid again later is a new payment.
    assert!(
        record(
            store,
            &accepted(notified("INV-R", PaymentStatus::Paid, 500, "r2"))
        )
        .await
        .is_some()
    );
    let per_invoice: Vec<_> = all_events(store)
        .await
        .into_iter()
        .map(|e| e.invoice.to_string())
        .collect();
    assert_eq!(per_invoice, ["INV-N", "INV-R", "INV-X", "INV-R"]);
}

/// A repeated DOKU Request-Id is Duplicate and changes nothing, whatever it carries.
pub(crate) async fn duplicate_request_id_changes_nothing(store: Arc<dyn Store>) {
    let store = &*store;
    create(store, &draft("INV-1", None, true)).await;
    let first = accepted(notified("INV-1", PaymentStatus::Expired, 100, "dup"));
    assert!(record(store, &first).await.is_some());
    let before = store.get_payment(&inv("INV-1")).await.unwrap();
    for repeat in [
        first.clone(),
        accepted(notified("INV-1", PaymentStatus::Paid, 200, "dup")),
        accepted(notified("INV-OTHER", PaymentStatus::Paid, 200, "dup")),
        notification(
            Verdict::Mismatch("amount".into()),
            notified("INV-1", PaymentStatus::Paid, 200, "dup"),
        ),
    ] {
        assert_eq!(
            store.record_notification(repeat.clone()).await.unwrap(),
            Recorded::Duplicate
        );
    }
    assert_eq!(store.get_payment(&inv("INV-1")).await.unwrap(), before);
    assert_eq!(store.get_payment(&inv("INV-OTHER")).await.unwrap(), None);
    assert_eq!(all_events(store).await.len(), 1);
}

/// A mismatched or unknown-status notification is stored (a repeat is Duplicate) but changes
/// no status and emits nothing; so is an accepted one without a change.
pub(crate) async fn rejected_notifications_are_stored_without_effect(store: Arc<dyn Store>) {
    let store = &*store;
    create(store, &draft("INV-1", None, false)).await;
    let before = store.get_payment(&inv("INV-1")).await.unwrap();
    let mismatch = notification(
        Verdict::Mismatch("amount 1 != 150000".into()),
        notified("INV-1", PaymentStatus::Paid, 100, "mm"),
    );
    let unknown = notification(
        Verdict::UnknownStatus("SETTLING".into()),
        notified("INV-1", PaymentStatus::Paid, 100, "us"),
    );
    let unknown_invoice = notification(
        Verdict::Mismatch("code".into()),
        notified("INV-GHOST", PaymentStatus::Paid, 100, "gh"),
    );
    let mut no_change = accepted(notified("INV-1", PaymentStatus::Paid, 100, "nc"));
    no_change.change = None;
    for n in [&mismatch, &unknown, &unknown_invoice, &no_change] {
        assert_eq!(
            store.record_notification(n.clone()).await.unwrap(),
            Recorded::Stored { event: None }
        );
        assert_eq!(
            store.record_notification(n.clone()).await.unwrap(),
            Recorded::Duplicate,
            "{} was stored",
            n.doku_request_id
        );
    }
    assert_eq!(store.get_payment(&inv("INV-1")).await.unwrap(), before);
    assert_eq!(store.get_payment(&inv("INV-GHOST")).await.unwrap(), None);
    assert_eq!(all_events(store).await, []);
    assert_eq!(store.last_seq().await.unwrap(), 0);
}

/// An accepted notification for an invoice the store does not know creates the payment from
/// DOKU's data and emits it.
pub(crate) async fn unknown_invoice_is_created_from_notification(store: Arc<dyn Store>) {
    let store = &*store;
    let mut change = notified("INV-GHOST", PaymentStatus::Paid, 100, "g1");
    change.payment_code = Some(code("777001"));
    let event = record(store, &accepted(change)).await.unwrap();
    assert_eq!(event.invoice, inv("INV-GHOST"));
    assert_eq!(event.status, PaymentStatus::Paid);
    assert_eq!(event.payment_code, Some(code("777001")));
    assert_eq!(event.doku_request_id.as_deref(), Some("g1"));
    let record = store.get_payment(&inv("INV-GHOST")).await.unwrap().unwrap();
    let p = &record.payment;
    assert_eq!(p.status, PaymentStatus::Paid);
    assert_eq!(p.amount, amount());
    assert_eq!(p.channel, Channel::Indomaret);
    assert_eq!(p.payment_code, Some(code("777001")));
    assert_eq!(
        (p.create_time, p.expire_time, p.pay_time),
        (t(100), t(100), Some(t(100)))
    );
    assert!(!p.reusable);
    assert_eq!(record.fingerprint, "");
    assert_eq!(record.idempotency_key, None);
    assert_eq!(record.doku_request, None);
    assert_eq!(all_events(store).await, [event]);

    // It now exists: the invoice cannot be created again from a request.
    assert!(matches!(
        store
            .create_payment(&draft("INV-GHOST", None, false))
            .await
            .unwrap(),
        Created::Existing(_)
    ));

    // A PENDING for an unknown invoice is stored for audit only: no payment, no event, and
    // the invoice stays free for a request.
    let pending = accepted(notified("INV-PHANTOM", PaymentStatus::Pending, 100, "p1"));
    assert_eq!(self::record(store, &pending).await, None);
    assert_eq!(
        store.record_notification(pending.clone()).await.unwrap(),
        Recorded::Duplicate,
        "stored"
    );
    assert_eq!(store.get_payment(&inv("INV-PHANTOM")).await.unwrap(), None);
    create(store, &draft("INV-PHANTOM", None, false)).await;
    assert_eq!(all_events(store).await.len(), 1);
}

/// The creating call's trace context is stored with the payment and read back; a draft
/// without one stores none; a corrected request that replaces a rejected draft brings its own.
pub(crate) async fn the_creating_trace_is_kept(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let trace_of = |invoice: &'static str| async move {
        store
            .get_payment(&inv(invoice))
            .await
            .unwrap()
            .unwrap()
            .trace_context
    };
    create(store, &draft("INV-TRACE-1", None, false)).await;
    assert_eq!(trace_of("INV-TRACE-1").await.as_deref(), Some(TRACE_A));
    let mut untraced = draft("INV-TRACE-2", None, false);
    untraced.trace_context = None;
    create(store, &untraced).await;
    assert_eq!(trace_of("INV-TRACE-2").await, None);

    let i = inv("INV-TRACE-1");
    assert!(
        store
            .record_rejected(&i, "req-INV-TRACE-1", &rejection_400())
            .await
            .unwrap()
    );
    let mut replacement = corrected("INV-TRACE-1", None, 150_001, "req-INV-TRACE-1b");
    replacement.trace_context = Some(TRACE_B.into());
    match store.create_payment(&replacement).await.unwrap() {
        Created::New(r) => assert_eq!(r.trace_context.as_deref(), Some(TRACE_B)),
        other => panic!("expected the replacement, got {other:?}"),
    }
    assert_eq!(trace_of("INV-TRACE-1").await.as_deref(), Some(TRACE_B));
}

/// `draft` for the same invoice with another amount (another fingerprint) and Request-Id.
fn corrected(invoice: &str, key: Option<&str>, rupiah: i64, request_id: &str) -> PaymentDraft {
    let mut d = draft(invoice, key, false);
    d.request.amount = Amount::new(rupiah).unwrap();
    d.fingerprint = d.request.fingerprint();
    d.doku_request.request_id = request_id.into();
    d.create_time = t(50);
    d.expire_time = t(3650);
    d
}

fn rejection_400() -> AttemptRejection {
    AttemptRejection {
        http_status: 400,
        message: "Invalid Override Notification URL".into(),
    }
}

/// A definitive rejection frees the invoice: audited, never swept or leased, the same request
/// gets the rejected draft back, a different one replaces it under its own Request-Id, and
/// then the invoice is bound again.
pub(crate) async fn a_rejected_draft_is_replaced_only_by_a_different_request(
    store: Arc<dyn Store>,
) {
    let store = &*store;
    let i = inv("INV-REJ");
    let first = draft("INV-REJ", Some("key-rej"), false);
    create(store, &first).await;
    create(store, &draft("INV-OTHER", Some("key-other"), false)).await;
    store.schedule_check(&i, Some(t(10))).await.unwrap();
    assert!(store.claim_attempt(&i, t(0), t(30)).await.unwrap());

    // A stale Request-Id (not the draft's) changes nothing.
    assert!(
        !store
            .record_rejected(&i, "req-someone-else", &rejection_400())
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_payment(&i).await.unwrap().unwrap().rejection,
        None
    );

    assert!(
        store
            .record_rejected(&i, "req-INV-REJ", &rejection_400())
            .await
            .unwrap()
    );
    let rejected = store.get_payment(&i).await.unwrap().unwrap();
    assert_eq!(rejected.rejected_draft(), Some(&rejection_400()));
    assert_eq!(rejected.attempt_lease_until, None);
    assert_eq!(rejected.next_check_at, None);
    let audit = store.rejected_attempts(&i).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].request_id, "req-INV-REJ");
    assert_eq!(audit[0].fingerprint, first.fingerprint);
    assert_eq!(audit[0].idempotency_key.as_deref(), Some("key-rej"));
    assert_eq!(audit[0].body, first.doku_request.body);
    assert_eq!(audit[0].rejection, rejection_400());

    // Never swept, never leased (nobody replays a rejected request).
    store.schedule_check(&i, Some(t(20))).await.unwrap();
    assert!(
        store
            .due_for_check(t(100_000), 100)
            .await
            .unwrap()
            .iter()
            .all(|r| r.payment.invoice != i)
    );
    assert!(!store.claim_attempt(&i, t(1000), t(1030)).await.unwrap());

    // The identical request: the rejected draft, unchanged.
    match store.create_payment(&first).await.unwrap() {
        Created::Existing(r) => assert_eq!(r.rejected_draft(), Some(&rejection_400())),
        other => panic!("expected the rejected draft, got {other:?}"),
    }
    // A corrected request whose key belongs to another invoice: refused, nothing changed.
    assert!(matches!(
        store
            .create_payment(&corrected("INV-REJ", Some("key-other"), 20_000, "req-x"))
            .await
            .unwrap(),
        Created::IdempotencyKeyTaken(r) if r.payment.invoice == inv("INV-OTHER")
    ));
    assert!(
        store
            .get_payment(&i)
            .await
            .unwrap()
            .unwrap()
            .rejected_draft()
            .is_some()
    );

    // A corrected request (reusing the rejected request's key) replaces the draft.
    let second = corrected("INV-REJ", Some("key-rej"), 20_000, "req-INV-REJ-2");
    let Created::New(replaced) = store.create_payment(&second).await.unwrap() else {
        panic!("a different request replaces a rejected draft");
    };
    assert_eq!(replaced.payment.amount, Amount::new(20_000).unwrap());
    assert_eq!(replaced.fingerprint, second.fingerprint);
    assert_eq!(replaced.doku_request, Some(second.doku_request.clone()));
    assert_eq!(
        (replaced.payment.create_time, replaced.payment.expire_time),
        (t(50), t(3650))
    );
    assert_eq!(
        (
            &replaced.rejection,
            replaced.attempt_lease_until,
            replaced.next_check_at,
            replaced.check_count,
            replaced.outcome_unknown
        ),
        (&None, None, None, 0, false)
    );
    assert_eq!(
        store.find_by_idempotency_key("key-rej").await.unwrap(),
        Some(replaced.clone())
    );
    // Bound again: a third request is Existing, and the new draft can be leased.
    assert!(matches!(
        store
            .create_payment(&corrected("INV-REJ", None, 30_000, "req-3"))
            .await
            .unwrap(),
        Created::Existing(r) if r == replaced
    ));
    assert!(store.claim_attempt(&i, t(60), t(90)).await.unwrap());
    store
        .record_issued(&i, &issued("4242", None, None), None)
        .await
        .unwrap();
    // A rejection can no longer free an invoice with a code.
    assert!(
        !store
            .record_rejected(&i, "req-INV-REJ-2", &rejection_400())
            .await
            .unwrap()
    );
    assert_eq!(store.rejected_attempts(&i).await.unwrap().len(), 1);
    assert!(matches!(
        store
            .record_rejected(&inv("NOPE"), "r", &rejection_400())
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// After any attempt with an unknown outcome, reported or an abandoned lease taken over, a
/// rejection does not free the invoice.
pub(crate) async fn an_unknown_outcome_keeps_the_invoice_bound(store: Arc<dyn Store>) {
    let store = &*store;
    for (invoice, abandoned) in [("INV-UNK-1", false), ("INV-UNK-2", true)] {
        let i = inv(invoice);
        create(store, &draft(invoice, None, false)).await;
        assert!(store.claim_attempt(&i, t(0), t(30)).await.unwrap());
        if abandoned {
            // The holder vanished; the next caller takes the lease over after it expired.
            assert!(store.claim_attempt(&i, t(31), t(60)).await.unwrap());
        } else {
            store.record_outcome_unknown(&i).await.unwrap();
            let after = store.get_payment(&i).await.unwrap().unwrap();
            assert_eq!(after.attempt_lease_until, None, "the lease is given back");
            assert!(store.claim_attempt(&i, t(31), t(60)).await.unwrap());
        }
        assert!(
            store
                .get_payment(&i)
                .await
                .unwrap()
                .unwrap()
                .outcome_unknown
        );
        let freed = store
            .record_rejected(&i, &format!("req-{invoice}"), &rejection_400())
            .await
            .unwrap();
        assert!(!freed, "{invoice}");
        let after = store.get_payment(&i).await.unwrap().unwrap();
        assert_eq!(after.rejected_draft(), None);
        assert_eq!(after.attempt_lease_until, None, "the lease is still ended");
        assert!(matches!(
            store
                .create_payment(&corrected(invoice, None, 20_000, "req-y"))
                .await
                .unwrap(),
            Created::Existing(r) if r.doku_request.as_ref().unwrap().request_id == format!("req-{invoice}")
        ));
        assert_eq!(store.rejected_attempts(&i).await.unwrap(), []);
    }
    // A released lease is not an unknown outcome.
    let i = inv("INV-UNK-3");
    create(store, &draft("INV-UNK-3", None, false)).await;
    assert!(store.claim_attempt(&i, t(0), t(30)).await.unwrap());
    store.release_attempt(&i).await.unwrap();
    assert!(store.claim_attempt(&i, t(1), t(31)).await.unwrap());
    assert!(
        !store
            .get_payment(&i)
            .await
            .unwrap()
            .unwrap()
            .outcome_unknown
    );
    assert!(matches!(
        store.record_outcome_unknown(&inv("NOPE")).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Many different corrected requests racing for one rejected invoice: exactly one replaces
/// the draft; every other sees the winner.
pub(crate) async fn racing_replacements_of_a_rejected_draft_have_one_winner(
    shared: Arc<dyn Store>,
) {
    const TASKS: i64 = 16;
    let i = inv("INV-RACE-REJ");
    create(&*shared, &draft("INV-RACE-REJ", None, false)).await;
    assert!(
        shared
            .record_rejected(&i, "req-INV-RACE-REJ", &rejection_400())
            .await
            .unwrap()
    );
    let mut tasks = Vec::new();
    for n in 0..TASKS {
        let s = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            let d = corrected("INV-RACE-REJ", None, 1_000 + n, &format!("req-race-{n}"));
            s.create_payment(&d).await
        }));
    }
    let (mut new, mut existing) = (Vec::new(), Vec::new());
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Created::New(r) => new.push(r),
            Created::Existing(r) => existing.push(r),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(new.len(), 1, "exactly one replacement wins");
    assert_eq!(existing.len(), (TASKS - 1) as usize);
    assert!(existing.iter().all(|r| *r == new[0]));
    assert_eq!(store_payment(&*shared, &i).await, new[0]);
}

async fn store_payment(store: &dyn Store, invoice: &InvoiceNumber) -> super::PaymentRecord {
    store.get_payment(invoice).await.unwrap().unwrap()
}

/// A reusable code: a first PAID without a date is emitted at its receive time; a repeat
/// PAID without a date is stored with verdict UNDATED_REPEAT and not emitted; dated repeats
/// count once per date.
pub(crate) async fn an_undated_repeat_paid_is_stored_not_emitted(store: Arc<dyn Store>) {
    let store = &*store;
    create(store, &draft("INV-U", None, true)).await;
    let undated = |id: &str| {
        let mut c = notified("INV-U", PaymentStatus::Paid, 0, id);
        c.occur_time = None;
        accepted(c)
    };
    let first = record(store, &undated("u1")).await.unwrap();
    assert_eq!(first.occur_time, t(10_000), "the receive time");
    for id in ["u2", "u3"] {
        assert_eq!(
            store.record_notification(undated(id)).await.unwrap(),
            Recorded::UndatedRepeat
        );
        assert_eq!(
            store.record_notification(undated(id)).await.unwrap(),
            Recorded::Duplicate,
            "stored for audit"
        );
    }
    let dated = |occur, id: &str| accepted(notified("INV-U", PaymentStatus::Paid, occur, id));
    assert!(record(store, &dated(200, "d1")).await.is_some());
    assert_eq!(record(store, &dated(200, "d2")).await, None, "redelivered");
    assert!(record(store, &dated(300, "d3")).await.is_some());
    let ids: Vec<_> = all_events(store)
        .await
        .into_iter()
        .filter_map(|e| e.doku_request_id)
        .collect();
    assert_eq!(ids, ["u1", "d1", "d3"]);
    // Not reusable: an undated second PAID is simply not forward.
    create(store, &draft("INV-UN", None, false)).await;
    let mut c = notified("INV-UN", PaymentStatus::Paid, 0, "n1");
    c.occur_time = None;
    assert!(record(store, &accepted(c.clone())).await.is_some());
    c.doku_request_id = Some("n2".into());
    assert_eq!(record(store, &accepted(c)).await, None);
}

/// events_after: ascending seq, `> after`, at most `limit`; last_seq follows.
pub(crate) async fn events_after_orders_and_limits(store: Arc<dyn Store>) {
    let store = &*store;
    assert_eq!(store.last_seq().await.unwrap(), 0);
    assert_eq!(store.events_after(0, 10).await.unwrap(), []);
    let mut emitted = Vec::new();
    for i in 0..5 {
        let invoice = format!("INV-{i}");
        create(store, &draft(&invoice, None, false)).await;
        let applied = store
            .apply_status(&reconciled(&invoice, PaymentStatus::Paid, i))
            .await
            .unwrap();
        emitted.push(applied.event.unwrap());
    }
    assert!(emitted.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.last_seq().await.unwrap(), emitted[4].seq);
    assert_eq!(store.events_after(0, 3).await.unwrap(), emitted[..3]);
    assert_eq!(
        store.events_after(emitted[2].seq, 10).await.unwrap(),
        emitted[3..]
    );
    assert_eq!(
        store.events_after(emitted[0].seq, 1).await.unwrap(),
        emitted[1..2]
    );
    assert_eq!(store.events_after(emitted[4].seq, 10).await.unwrap(), []);
    assert_eq!(store.events_after(0, 0).await.unwrap(), []);
    assert_eq!(store.events_after(u64::MAX, 10).await.unwrap(), []);
}

/// prune_events removes old events and remembers how far; seqs are never reused.
pub(crate) async fn prune_keeps_the_resume_position(store: Arc<dyn Store>) {
    let store = &*store;
    assert_eq!(store.pruned_through().await.unwrap(), 0);
    for i in 0..3 {
        let invoice = format!("INV-{i}");
        create(store, &draft(&invoice, None, false)).await;
        store
            .apply_status(&reconciled(&invoice, PaymentStatus::Expired, i))
            .await
            .unwrap();
    }
    let last = store.last_seq().await.unwrap();
    let now = OffsetDateTime::now_utc();
    // Nothing was recorded an hour ago.
    assert_eq!(
        store
            .prune_events(now - time::Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.pruned_through().await.unwrap(), 0);
    assert_eq!(
        store
            .prune_events(now + time::Duration::hours(1))
            .await
            .unwrap(),
        3
    );
    assert_eq!(store.pruned_through().await.unwrap(), last);
    assert_eq!(store.events_after(0, 10).await.unwrap(), []);
    assert_eq!(
        store.last_seq().await.unwrap(),
        last,
        "pruned seqs still count"
    );
    // Pruning again removes nothing and keeps the mark.
    assert_eq!(
        store
            .prune_events(now + time::Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.pruned_through().await.unwrap(), last);

    let next = store
        .apply_status(&reconciled("INV-0", PaymentStatus::Paid, 10))
        .await
        .unwrap()
        .event
        .unwrap();
    assert!(next.seq > last, "a seq is never reused");
    assert_eq!(
        store.events_after(0, 10).await.unwrap(),
        std::slice::from_ref(&next)
    );
    assert_eq!(store.last_seq().await.unwrap(), next.seq);
    assert_eq!(store.pruned_through().await.unwrap(), last);
}

/// due_for_check: PENDING payments due at `now`, oldest first, limited; schedule_check sets
/// the time and counts.
pub(crate) async fn due_for_check_is_oldest_first(store: Arc<dyn Store>) {
    let store = &*store;
    for (invoice, at) in [
        ("INV-A", Some(30)),
        ("INV-B", Some(10)),
        ("INV-C", Some(20)),
        ("INV-D", None),
        ("INV-E", Some(100)),
        ("INV-PAID", Some(5)),
    ] {
        create(store, &draft(invoice, None, false)).await;
        store
            .schedule_check(&inv(invoice), at.map(t))
            .await
            .unwrap();
    }
    store
        .apply_status(&reconciled("INV-PAID", PaymentStatus::Paid, 1))
        .await
        .unwrap();
    let due = |now: i64, limit: u32| due_at(store, now, limit);
    assert_eq!(due(25, 10).await, ["INV-B", "INV-C"]);
    assert_eq!(due(30, 10).await, ["INV-B", "INV-C", "INV-A"], "due at now");
    assert_eq!(due(25, 1).await, ["INV-B"]);
    assert_eq!(due(9, 10).await, Vec::<String>::new());

    let b = store.get_payment(&inv("INV-B")).await.unwrap().unwrap();
    assert_eq!((b.next_check_at, b.check_count), (Some(t(10)), 1));
    store
        .schedule_check(&inv("INV-B"), Some(t(200)))
        .await
        .unwrap();
    let b = store.get_payment(&inv("INV-B")).await.unwrap().unwrap();
    assert_eq!((b.next_check_at, b.check_count), (Some(t(200)), 2));
    store.schedule_check(&inv("INV-B"), None).await.unwrap();
    let b = store.get_payment(&inv("INV-B")).await.unwrap().unwrap();
    assert_eq!((b.next_check_at, b.check_count), (None, 2));
    assert_eq!(due(1000, 10).await, ["INV-C", "INV-A", "INV-E"]);
    let d = store.get_payment(&inv("INV-D")).await.unwrap().unwrap();
    assert_eq!(d.check_count, 0);

    assert!(matches!(
        store.schedule_check(&inv("NOPE"), Some(t(1))).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Events appended concurrently become visible in seq order: a reader tailing the log with
/// events_after never skips one (the log it saw equals the full log).
pub(crate) async fn concurrent_appends_never_appear_behind_a_reader(store: Arc<dyn Store>) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 20;
    for w in 0..WRITERS {
        for i in 0..PER_WRITER {
            create(&*store, &draft(&format!("INV-{w}-{i}"), None, false)).await;
        }
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen: Vec<Event> = Vec::new();
            loop {
                // Read the flag first: a read after the writers finished sees everything.
                let finished = done.load(Ordering::SeqCst);
                let after = seen.last().map_or(0, |e| e.seq);
                let batch = store.events_after(after, 7).await.unwrap();
                let empty = batch.is_empty();
                seen.extend(batch);
                if finished && empty {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let invoice = format!("INV-{w}-{i}");
                let n = accepted(notified(
                    &invoice,
                    PaymentStatus::Paid,
                    0,
                    &format!("n-{w}-{i}"),
                ));
                assert!(record(&*store, &n).await.is_some());
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let log = all_events(&*store).await;
    assert_eq!(log.len(), WRITERS * PER_WRITER);
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(seen, log, "the tailing reader skipped or repeated an event");
}

/// Notifications recorded concurrently (so in shared transactions: group commit) are each
/// answered as if recorded alone: each Request-Id is stored once and its redeliveries in the
/// same burst are duplicates; each event answered is in the log, once. Reconciliation changes
/// the same payments meanwhile, in transactions of their own (on PostgreSQL this would
/// deadlock if the two took the event log's lock and the payment rows in different orders).
pub(crate) async fn concurrent_notifications_are_each_answered_as_if_alone(store: Arc<dyn Store>) {
    const INVOICES: usize = 40;
    for i in 0..INVOICES {
        create(&*store, &draft(&format!("INV-K{i}"), None, false)).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..INVOICES {
        // A known invoice and one DOKU knows but the store does not, each notified three
        // times under one Request-Id.
        for invoice in [format!("INV-K{i}"), format!("INV-U{i}")] {
            let n = accepted(notified(
                &invoice,
                PaymentStatus::Paid,
                7,
                &format!("n-{invoice}"),
            ));
            for _ in 0..3 {
                let (store, n) = (store.clone(), n.clone());
                tasks.spawn(async move {
                    (
                        n.doku_request_id.clone(),
                        store.record_notification(n).await,
                    )
                });
            }
        }
        let store = store.clone();
        tasks.spawn(async move {
            let change = reconciled(&format!("INV-K{i}"), PaymentStatus::Expired, 3);
            let applied = store.apply_status(&change).await.unwrap();
            (
                String::new(),
                Ok(Recorded::Stored {
                    event: applied.event,
                }),
            )
        });
    }
    let mut outcomes: std::collections::HashMap<String, Vec<Recorded>> = Default::default();
    let mut answered = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (request_id, recorded) = joined.unwrap();
        let recorded = recorded.unwrap();
        if let Recorded::Stored { event: Some(e) } = &recorded {
            answered.push(e.seq);
        }
        if !request_id.is_empty() {
            outcomes.entry(request_id).or_default().push(recorded);
        }
    }
    assert_eq!(outcomes.len(), 2 * INVOICES);
    for (request_id, recorded) in &outcomes {
        let duplicates = recorded
            .iter()
            .filter(|r| **r == Recorded::Duplicate)
            .count();
        assert_eq!(duplicates, 2, "{request_id}: {recorded:?}");
    }
    for i in 0..INVOICES {
        for invoice in [format!("INV-K{i}"), format!("INV-U{i}")] {
            assert_eq!(
                status_of(&*store, &invoice).await,
                PaymentStatus::Paid,
                "{invoice}"
            );
        }
    }
    let log = all_events(&*store).await;
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
    let paid = log
        .iter()
        .filter(|e| e.status == PaymentStatus::Paid)
        .count();
    assert_eq!(paid, 2 * INVOICES, "one PAID event per invoice");
    answered.sort_unstable();
    let logged: Vec<u64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(
        answered, logged,
        "every answered event is in the log, and only those"
    );
}

// ---------------------------------------------------------------------------------------
// The model test

/// One operation of the model test, on invoice `inv` (0: ordinary, 1: reusable, 2: unknown to
/// the store until a notification creates it).
#[derive(Debug, Clone)]
enum Op {
    Reconcile {
        inv: usize,
        status: PaymentStatus,
        occur: i64,
    },
    Notify {
        inv: usize,
        status: PaymentStatus,
        /// `None`: DOKU sent no `transaction.date`.
        occur: Option<i64>,
        request: u8,
        accepted: bool,
    },
}

/// When the model's notifications are received (`notification()` sets it): the time of an
/// undated notification's event.
const RECEIVED: i64 = 10_000;

fn status_strategy() -> impl Strategy<Value = PaymentStatus> {
    prop_oneof![
        Just(PaymentStatus::Pending),
        Just(PaymentStatus::Failed),
        Just(PaymentStatus::Expired),
        Just(PaymentStatus::Paid),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    // Few invoices, times and Request-Ids, so that collisions (same payment seen twice,
    // duplicates, backwards moves) are common.
    prop_oneof![
        (0..3usize, status_strategy(), 0..3i64).prop_map(|(inv, status, occur)| Op::Reconcile {
            inv,
            status,
            occur
        }),
        (
            0..3usize,
            status_strategy(),
            proptest::option::weighted(0.8, 0..3i64),
            0..8u8,
            proptest::bool::weighted(0.8)
        )
            .prop_map(|(inv, status, occur, request, accepted)| Op::Notify {
                inv,
                status,
                occur,
                request,
                accepted
            }),
    ]
}

/// What the model expects an event to be.
type ModelEvent = (usize, PaymentStatus, i64, EventSource, Option<String>);

/// The rules of the module doc, written as plainly as possible.
#[derive(Debug, Default)]
struct Model {
    status: [Option<PaymentStatus>; 3],
    reusable: [bool; 3],
    requests: HashSet<u8>,
    events: Vec<ModelEvent>,
}

impl Model {
    /// The event the model emits for `change` on `inv`, if any (and records it), and whether
    /// the change is withheld as an undated repeat PAID. `occur: None` is an undated
    /// notification, whose event happens at [`RECEIVED`].
    fn change(
        &mut self,
        inv: usize,
        status: PaymentStatus,
        occur: Option<i64>,
        source: EventSource,
        request: Option<String>,
    ) -> (Option<ModelEvent>, bool) {
        let repeat = |current: PaymentStatus| {
            source == EventSource::DokuNotification
                && self.reusable[inv]
                && current == PaymentStatus::Paid
                && status == PaymentStatus::Paid
        };
        let emit = match self.status[inv] {
            // A PENDING for an unknown invoice creates nothing.
            None => status != PaymentStatus::Pending,
            Some(current) if status.rank() > current.rank() => true,
            Some(current) if repeat(current) => match occur {
                None => return (None, true),
                Some(occur) => !self
                    .events
                    .iter()
                    .any(|e| e.0 == inv && e.1 == PaymentStatus::Paid && e.2 == occur),
            },
            Some(_) => false,
        };
        if !emit {
            return (None, false);
        }
        self.status[inv] = Some(status);
        let event = (inv, status, occur.unwrap_or(RECEIVED), source, request);
        self.events.push(event.clone());
        (Some(event), false)
    }
}

static MODEL_RUN: AtomicU64 = AtomicU64::new(0);

async fn model_case(store: &dyn Store, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fail = |e: StoreError| TestCaseError::fail(e.to_string());
    // Every case has its own invoices and Request-Ids in the shared store.
    let run = MODEL_RUN.fetch_add(1, Ordering::Relaxed);
    let invoice = |i: usize| format!("M{run}-{i}");
    let request_id = |r: u8| format!("M{run}-r{r}");
    let start = store.last_seq().await.map_err(fail)?;

    let mut model = Model::default();
    for i in 0..2 {
        model.status[i] = Some(PaymentStatus::Pending);
        model.reusable[i] = i == 1;
        let created = store
            .create_payment(&draft(&invoice(i), None, i == 1))
            .await
            .map_err(fail)?;
        prop_assert!(matches!(created, Created::New(_)));
    }
    let as_model = |e: &Event| -> ModelEvent {
        let inv = (0..3).find(|i| e.invoice.as_str() == invoice(*i)).unwrap();
        let occur = e.occur_time.unix_timestamp() - t(0).unix_timestamp();
        (inv, e.status, occur, e.source, e.doku_request_id.clone())
    };

    for op in ops {
        match op {
            Op::Reconcile { inv, status, occur } => {
                let result = store
                    .apply_status(&reconciled(&invoice(inv), status, occur))
                    .await;
                if model.status[inv].is_none() {
                    prop_assert!(matches!(result, Err(StoreError::NotFound(_))));
                    continue;
                }
                let applied = result.map_err(fail)?;
                let (expected, _) =
                    model.change(inv, status, Some(occur), EventSource::Reconciliation, None);
                prop_assert_eq!(applied.event.as_ref().map(as_model), expected);
                prop_assert_eq!(Some(applied.record.payment.status), model.status[inv]);
            }
            Op::Notify {
                inv,
                status,
                occur,
                request,
                accepted,
            } => {
                let id = request_id(request);
                let mut change = notified(&invoice(inv), status, 0, &id);
                change.occur_time = occur.map(t);
                let verdict = if accepted {
                    Verdict::Accepted
                } else {
                    Verdict::Mismatch("amount".into())
                };
                let recorded = store
                    .record_notification(notification(verdict, change))
                    .await
                    .map_err(fail)?;
                if !model.requests.insert(request) {
                    prop_assert_eq!(recorded, Recorded::Duplicate);
                    continue;
                }
                let (expected, withheld) = if accepted {
                    model.change(inv, status, occur, EventSource::DokuNotification, Some(id))
                } else {
                    (None, false)
                };
                if withheld {
                    prop_assert_eq!(recorded, Recorded::UndatedRepeat);
                    continue;
                }
                let Recorded::Stored { event } = recorded else {
                    return Err(TestCaseError::fail(
                        "a new Request-Id reported as duplicate",
                    ));
                };
                prop_assert_eq!(event.as_ref().map(as_model), expected);
            }
        }
    }

    let log = store.events_after(start, 10_000).await.map_err(fail)?;
    let ours: Vec<&Event> = log
        .iter()
        .filter(|e| e.invoice.as_str().starts_with(&format!("M{run}-")))
        .collect();
    prop_assert!(ours.windows(2).all(|w| w[0].seq < w[1].seq));
    let ours: Vec<ModelEvent> = ours.into_iter().map(as_model).collect();
    prop_assert_eq!(ours, model.events);
    for (i, expected) in model.status.iter().enumerate() {
        let stored = store
            .get_payment(&inv(&invoice(i)))
            .await
            .map_err(fail)?
            .map(|r| r.payment.status);
        prop_assert_eq!(stored, *expected, "status of invoice {}", i);
    }
    Ok(())
}

/// Random sequences of reconciliations and notifications on a few invoices: the event log
/// equals the model's (same events, same order, nothing missing, nothing twice) and so do
/// the final statuses.
pub(crate) async fn event_log_matches_model(store: Arc<dyn Store>) {
    let handle = tokio::runtime::Handle::current();
    // proptest drives cases synchronously: run it on a blocking thread that enters the
    // runtime for each case.
    tokio::task::spawn_blocking(move || {
        let config = Config {
            cases: 64,
            failure_persistence: None,
            max_shrink_iters: 256,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let strategy = proptest::collection::vec(op_strategy(), 1..24);
        if let Err(e) = runner.run(&strategy, |ops| handle.block_on(model_case(&*store, ops))) {
            panic!("{e}");
        }
    })
    .await
    .unwrap();
}

/// One batch (group commit, [`super::shared::record_notifications`] on `backend`) that
/// creates payments and changes one of them again: a PENDING before the creating change is
/// audit only, the creating change and a forward change after it are each an event, a
/// change that is not forward is none; events follow the invoice order the batch locks in;
/// what the store reads back is what the batch decided. Both backends run it: SQLite runs the
/// batch's statements row by row, PostgreSQL once each with arrays.
pub(crate) async fn a_batch_changes_the_payments_it_creates<B: super::shared::Backend>(
    backend: &B,
) {
    let before = backend.last_seq().await.unwrap();
    let mut paid = notified("INV-B1", PaymentStatus::Paid, 200, "b2");
    paid.payment_code = Some(code("770002"));
    let batch = [
        accepted(notified("INV-B2", PaymentStatus::Paid, 300, "b3")),
        accepted(notified("INV-B1", PaymentStatus::Pending, 50, "b0")),
        accepted(notified("INV-B1", PaymentStatus::Expired, 100, "b1")),
        accepted(paid),
        accepted(notified("INV-B1", PaymentStatus::Expired, 400, "b4")),
    ];
    let results = super::shared::record_notifications(backend, &batch).await;
    let events: Vec<Option<Event>> = results
        .into_iter()
        .map(|r| match r.unwrap() {
            Recorded::Stored { event } => event,
            other => panic!("expected stored, got {other:?}"),
        })
        .collect();
    let seen: Vec<Option<(u64, &str, PaymentStatus)>> = events
        .iter()
        .map(|e| e.as_ref().map(|e| (e.seq, e.invoice.as_str(), e.status)))
        .collect();
    assert_eq!(
        seen,
        [
            Some((before + 3, "INV-B2", PaymentStatus::Paid)),
            None,
            Some((before + 1, "INV-B1", PaymentStatus::Expired)),
            Some((before + 2, "INV-B1", PaymentStatus::Paid)),
            None,
        ]
    );
    let mut returned: Vec<Event> = events.into_iter().flatten().collect();
    returned.sort_by_key(|e| e.seq);
    assert_eq!(backend.events_after(before, 10).await.unwrap(), returned);
    assert_eq!(returned[1].payment_code, Some(code("770002")));

    let b1 = backend.get_payment(&inv("INV-B1")).await.unwrap().unwrap();
    let p = &b1.payment;
    assert_eq!(
        (p.status, p.create_time, p.pay_time, p.payment_code.clone()),
        (
            PaymentStatus::Paid,
            t(100),
            Some(t(200)),
            Some(code("770002"))
        )
    );
    let b2 = backend.get_payment(&inv("INV-B2")).await.unwrap().unwrap();
    assert_eq!(
        (b2.payment.status, b2.payment.pay_time),
        (PaymentStatus::Paid, Some(t(300)))
    );
}
