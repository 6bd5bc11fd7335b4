//! The decisions of the store, as plain functions of stored values: what a status change does
//! to a payment (whether it moves, whether it is emitted or withheld, its new pay time and
//! code) and whether a DOKU rejection frees a draft. [`super::shared`] runs the statements
//! they call for; nothing here touches a connection, so the rules stay put whatever driver or
//! threading model a backend uses.

use time::OffsetDateTime;

use super::PaymentRecord;
use super::rows::unix;
use crate::payment::{PaymentCode, PaymentStatus, StatusChange};

/// What a status change does to a stored payment, by the rule of the [store](super) doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    /// The status moves forward: update it and append an event.
    Forward,
    /// A reusable code that is already PAID was paid again: append a PAID event unless the
    /// log already has a PAID event for the invoice with the same `occur_time` (the same
    /// payment, seen first by reconciliation).
    RepeatPaid,
    /// Not forward: nothing is emitted.
    Stay,
}

/// Decides how `new` applies to a payment in `current`. `repeat_allowed` is true only for
/// accepted DOKU notifications (each carries its own Request-Id); reconciliation never
/// repeats a PAID, because Check Status cannot tell one payment of a reusable code from the
/// next.
pub(super) fn transition(
    current: PaymentStatus,
    reusable: bool,
    new: PaymentStatus,
    repeat_allowed: bool,
) -> Transition {
    if new.rank() > current.rank() {
        Transition::Forward
    } else if repeat_allowed
        && reusable
        && current == PaymentStatus::Paid
        && new == PaymentStatus::Paid
    {
        Transition::RepeatPaid
    } else {
        Transition::Stay
    }
}

/// Whether a status change is emitted (appends an event), by the rule of [`transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Emit {
    /// The status moves forward.
    Yes,
    /// Not forward: nothing is emitted.
    No,
    /// A repeat PAID without `transaction.date` on a reusable code: it cannot be told from a
    /// redelivery under a new Request-Id, so it is withheld (`UNDATED_REPEAT`).
    Withheld,
    /// A dated repeat PAID: emitted unless the log has a PAID event of the invoice at this
    /// time (unix seconds): that would be the same payment, seen before.
    UnlessPaidAt(i64),
}

/// Whether `change` is emitted for the stored `record`. `repeat_allowed`: only for accepted
/// DOKU notifications (see [`transition`]).
pub(super) fn emit(record: &PaymentRecord, change: &StatusChange, repeat_allowed: bool) -> Emit {
    let p = &record.payment;
    match transition(p.status, p.reusable, change.status, repeat_allowed) {
        Transition::Forward => Emit::Yes,
        Transition::RepeatPaid => match change.occur_time {
            None => Emit::Withheld,
            Some(at) => Emit::UnlessPaidAt(unix(at)),
        },
        Transition::Stay => Emit::No,
    }
}

/// What applying a status change writes to its payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Write {
    /// Nothing.
    Nothing,
    /// Only the code the change carries, for a payment without one.
    Code(PaymentCode),
    /// The status, pay time and code, and an event.
    Move(Move),
}

/// A status change that is emitted: the payment's new values and the event's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Move {
    /// The new status.
    pub(super) status: PaymentStatus,
    /// The new pay time (unix seconds): the latest payment of a reusable code, which
    /// out-of-order notifications do not move back.
    pub(super) pay_time: Option<i64>,
    /// The payment's code afterwards: the stored one, else the change's.
    pub(super) code: Option<PaymentCode>,
    /// The event's code: the change's own, else the payment's.
    pub(super) event_code: Option<PaymentCode>,
    /// When it happened: DOKU's time, or when the sidecar learned an undated change.
    pub(super) occur_time: OffsetDateTime,
}

/// What `change` writes to `record` once [`emit`] is settled (`emitted`); an undated change
/// happens at `learned_at`.
pub(super) fn plan_change(
    record: &PaymentRecord,
    change: &StatusChange,
    emitted: bool,
    learned_at: OffsetDateTime,
) -> Write {
    let p = &record.payment;
    let code = p
        .payment_code
        .clone()
        .or_else(|| change.payment_code.clone());
    if !emitted {
        return match code {
            Some(code) if p.payment_code.is_none() => Write::Code(code),
            _ => Write::Nothing,
        };
    }
    let occur_time = change.occurred(learned_at);
    let occur = unix(occur_time);
    let pay_time = match change.status {
        PaymentStatus::Paid => Some(p.pay_time.map_or(occur, |t| unix(t).max(occur))),
        _ => p.pay_time.map(unix),
    };
    Write::Move(Move {
        status: change.status,
        pay_time,
        event_code: change.payment_code.clone().or_else(|| code.clone()),
        code,
        occur_time,
    })
}

/// Whether DOKU's rejection of `request_id` frees the payment (see [`super::Store::record_rejected`]):
/// `None` when `request_id` is not the draft's any more (nothing of it to end); `Some(false)`
/// when the invoice must stay bound (a code, a status past PENDING, an unknown outcome).
pub(super) fn rejection_frees(record: &PaymentRecord, request_id: &str) -> Option<bool> {
    let ours = record
        .doku_request
        .as_ref()
        .is_some_and(|r| r.request_id == request_id);
    ours.then(|| {
        record.payment.payment_code.is_none()
            && record.payment.status == PaymentStatus::Pending
            && !record.outcome_unknown
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::{Amount, Channel, EventSource, InvoiceNumber, Payment};
    use PaymentStatus::*;

    #[test]
    fn forward_only_with_reusable_repeat_for_notifications() {
        assert_eq!(transition(Pending, false, Paid, false), Transition::Forward);
        assert_eq!(transition(Expired, false, Paid, true), Transition::Forward);
        assert_eq!(transition(Paid, false, Expired, true), Transition::Stay);
        assert_eq!(transition(Pending, false, Pending, true), Transition::Stay);
        assert_eq!(transition(Paid, false, Paid, true), Transition::Stay);
        assert_eq!(transition(Paid, true, Paid, true), Transition::RepeatPaid);
        assert_eq!(transition(Paid, true, Paid, false), Transition::Stay);
        assert_eq!(transition(Expired, true, Expired, true), Transition::Stay);
    }

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_750_000_000 + secs).unwrap()
    }

    fn record(status: PaymentStatus, reusable: bool, code: Option<&str>) -> PaymentRecord {
        PaymentRecord::without_request(Payment {
            invoice: InvoiceNumber::parse("INV-1").unwrap(),
            amount: Amount::new(10_000).unwrap(),
            channel: Channel::Indomaret,
            payment_code: code.map(|c| PaymentCode::parse(c).unwrap()),
            status,
            create_time: t(0),
            expire_time: t(3600),
            pay_time: (status == PaymentStatus::Paid).then(|| t(10)),
            how_to_pay_url: None,
            how_to_pay_api_url: None,
            reusable,
            instructions: Vec::new(),
        })
    }

    fn change(status: PaymentStatus, code: Option<&str>, at: Option<i64>) -> StatusChange {
        StatusChange {
            invoice: InvoiceNumber::parse("INV-1").unwrap(),
            status,
            amount: Amount::new(10_000).unwrap(),
            payment_code: code.map(|c| PaymentCode::parse(c).unwrap()),
            occur_time: at.map(t),
            source: EventSource::DokuNotification,
            doku_request_id: None,
        }
    }

    #[test]
    fn a_repeat_paid_is_withheld_without_a_date_and_checked_against_the_log_with_one() {
        use PaymentStatus::Paid;
        let paid = record(Paid, true, Some("1234"));
        assert_eq!(emit(&paid, &change(Paid, None, None), true), Emit::Withheld);
        assert_eq!(
            emit(&paid, &change(Paid, None, Some(20)), true),
            Emit::UnlessPaidAt(unix(t(20)))
        );
        assert_eq!(emit(&paid, &change(Paid, None, Some(20)), false), Emit::No);
        let pending = record(PaymentStatus::Pending, true, None);
        assert_eq!(emit(&pending, &change(Paid, None, None), false), Emit::Yes);
    }

    #[test]
    fn a_move_keeps_the_latest_pay_time_and_the_stored_code() {
        use PaymentStatus::Paid;
        let paid = record(Paid, true, Some("1234"));
        // An older repeat payment does not move pay_time back; the event carries its code.
        let Write::Move(m) = plan_change(&paid, &change(Paid, Some("9999"), Some(5)), true, t(99))
        else {
            panic!("expected a move");
        };
        assert_eq!(m.pay_time, Some(unix(t(10))));
        assert_eq!(m.code.as_ref().map(PaymentCode::as_str), Some("1234"));
        assert_eq!(m.event_code.as_ref().map(PaymentCode::as_str), Some("9999"));
        assert_eq!(m.occur_time, t(5));
        // An undated change happens when the sidecar learned it.
        let pending = record(PaymentStatus::Pending, false, None);
        let Write::Move(m) = plan_change(&pending, &change(Paid, None, None), true, t(99)) else {
            panic!("expected a move");
        };
        assert_eq!((m.occur_time, m.pay_time), (t(99), Some(unix(t(99)))));
    }

    #[test]
    fn a_change_that_is_not_emitted_only_fills_in_a_missing_code() {
        let expired = PaymentStatus::Expired;
        let without = record(PaymentStatus::Paid, false, None);
        assert_eq!(
            plan_change(&without, &change(expired, Some("1234"), None), false, t(0)),
            Write::Code(PaymentCode::parse("1234").unwrap())
        );
        let with = record(PaymentStatus::Paid, false, Some("1234"));
        assert_eq!(
            plan_change(&with, &change(expired, Some("9999"), None), false, t(0)),
            Write::Nothing
        );
    }

    #[test]
    fn only_the_drafts_own_rejection_frees_it_and_only_when_nothing_bound_it() {
        let mut draft = record(PaymentStatus::Pending, false, None);
        draft.doku_request = Some(super::super::StoredRequest {
            request_id: "r1".into(),
            body: Vec::new(),
        });
        assert_eq!(rejection_frees(&draft, "r0"), None);
        assert_eq!(rejection_frees(&draft, "r1"), Some(true));
        draft.outcome_unknown = true;
        assert_eq!(rejection_frees(&draft, "r1"), Some(false));
    }
}
