//! The one rule for believing DOKU about a payment, whichever way DOKU said it: a verified
//! notification, or a Check Status answer (GetStatus refresh and the sweeper).
//!
//! A report about a stored payment is believed only if it describes that payment
//! ([`check_report`]: the same invoice, the same amount, and no other payment code; and, where
//! DOKU names a channel, the stored payment's channel). Then only its status is taken from
//! DOKU; the invoice, the amount and the channel of the change are the stored ones. A report
//! about an invoice this sidecar never created (a notification only) is taken as DOKU sent it,
//! if its fields are valid; its channel is DOKU's `channel.id` (Indomaret when DOKU names none,
//! the sidecar's default channel). A status this sidecar does not know is never guessed.

use time::OffsetDateTime;

use crate::{
    doku::{
        StatusReport,
        notification::NotificationReport,
        types::{ReportedChannel, ReportedStatus, channel_id},
    },
    payment::{
        Amount, AmountRule, Channel, EventSource, InvoiceNumber, Payment, PaymentCode,
        ReportMismatch, ReportedIdentity, StatusChange, check_report,
    },
};

/// What DOKU said about one payment, whichever way it said it.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// `order.invoice_number`.
    pub invoice_number: Option<&'a str>,
    /// `order.amount` in rupiah.
    pub amount: Option<i64>,
    /// `online_to_offline_info.payment_code`.
    pub payment_code: Option<&'a str>,
    /// `channel.id`, mapped; `None` when DOKU named no channel.
    pub channel: Option<&'a ReportedChannel>,
    /// `transaction.status`, mapped without guessing.
    pub status: &'a ReportedStatus,
    /// `transaction.date`.
    pub occur_time: Option<OffsetDateTime>,
    /// How the report arrived: the source of the event it may cause.
    pub source: EventSource,
}

impl<'a> Report<'a> {
    /// A verified notification's report.
    pub fn notification(n: &'a NotificationReport) -> Self {
        Self {
            invoice_number: Some(&n.invoice_number),
            amount: Some(n.amount),
            payment_code: n.payment_code.as_deref(),
            channel: n.channel.as_ref(),
            status: &n.status,
            occur_time: n.occur_time,
            source: EventSource::DokuNotification,
        }
    }

    /// A Check Status answer's report.
    pub fn check_status(r: &'a StatusReport) -> Self {
        Self {
            invoice_number: r.invoice_number.as_deref(),
            amount: r.amount,
            payment_code: r.payment_code.as_deref(),
            channel: r.channel.as_ref(),
            status: &r.status,
            occur_time: r.occur_time,
            source: EventSource::Reconciliation,
        }
    }
}

/// What a report means for the payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assessment {
    /// Believed: this change may be applied (the store decides whether the status moves).
    Change {
        /// The change.
        change: StatusChange,
        /// The payment's channel: the stored one, or DOKU's for an invoice this sidecar never
        /// created (the channel of the payment the store creates from the report).
        channel: Channel,
    },
    /// Not about the stored payment, or not valid: nothing may change.
    Mismatch(Refusal),
    /// About the payment, with a status this sidecar does not know (DOKU's raw text).
    UnknownStatus(String),
}

/// Why a report was not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It does not describe the stored payment.
    #[error(transparent)]
    NotThisPayment(#[from] ReportMismatch),
    /// DOKU names another channel than the stored payment's (or one this sidecar does not
    /// know): a report about another payment, even if invoice and amount agree.
    #[error("channel.id {reported:?} is not the stored payment's channel {}", expected.as_str())]
    ChannelMismatch {
        /// DOKU's `channel.id`, as sent.
        reported: String,
        /// Ours.
        expected: Channel,
    },
    /// About an invoice this sidecar never created, with a field that is not valid.
    #[error("{0}")]
    Invalid(String),
}

impl Refusal {
    /// The `reason` label of `o2o_doku_answers_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotThisPayment(m) => m.reason(),
            Self::ChannelMismatch { .. } => "channel_mismatch",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// Compares `report` with the stored payment of its invoice (`None`: this sidecar did not
/// create it), without I/O. An accepted change for a stored payment always carries the stored
/// invoice and amount, and never a payment code other than the stored one.
pub fn assess(report: Report<'_>, stored: Option<&Payment>) -> Assessment {
    let (invoice, amount, code, channel) = match stored {
        Some(p) => {
            let reported = ReportedIdentity {
                invoice_number: report.invoice_number,
                amount: report.amount,
                payment_code: report.payment_code,
            };
            let code = match check_report(p.identity(), reported, AmountRule::Required) {
                Ok(code) => code,
                Err(why) => return Assessment::Mismatch(why.into()),
            };
            match report.channel {
                None => {}
                Some(ReportedChannel::Known(c)) if *c == p.channel => {}
                Some(other) => {
                    let reported = match other {
                        ReportedChannel::Known(c) => channel_id(*c).to_owned(),
                        ReportedChannel::Unrecognized(raw) => raw.clone(),
                    };
                    return Assessment::Mismatch(Refusal::ChannelMismatch {
                        reported,
                        expected: p.channel,
                    });
                }
            }
            (
                p.invoice.clone(),
                p.amount,
                code.or_else(|| p.payment_code.clone()),
                p.channel,
            )
        }
        None => match unknown_invoice(&report) {
            Ok(identity) => identity,
            Err(why) => return Assessment::Mismatch(Refusal::Invalid(why)),
        },
    };
    let status = match report.status {
        ReportedStatus::Known(s) => *s,
        ReportedStatus::Unrecognized(raw) => return Assessment::UnknownStatus(raw.clone()),
    };
    Assessment::Change {
        change: StatusChange {
            invoice,
            status,
            amount,
            payment_code: code,
            // Absent stays absent: the store decides what an undated payment means.
            occur_time: report.occur_time,
            source: report.source,
            doku_request_id: None,
        },
        channel,
    }
}

/// The identity of a report about an invoice this sidecar never created, if every field is
/// valid.
fn unknown_invoice(
    report: &Report<'_>,
) -> Result<(InvoiceNumber, Amount, Option<PaymentCode>, Channel), String> {
    let raw = report.invoice_number.unwrap_or_default();
    let invoice =
        InvoiceNumber::parse(raw).map_err(|_| format!("invoice number {raw:?} is not valid"))?;
    let amount = report
        .amount
        .ok_or_else(|| "amount is missing".to_owned())
        .and_then(|a| Amount::new(a).map_err(|_| format!("amount {a} is not valid")))?;
    let code = report.payment_code.map(PaymentCode::parse).transpose()?;
    let channel = match report.channel {
        None => Channel::Indomaret,
        Some(ReportedChannel::Known(c)) => *c,
        Some(ReportedChannel::Unrecognized(raw)) => {
            return Err(format!(
                "channel.id {raw:?} is not a channel this sidecar knows"
            ));
        }
    };
    Ok((invoice, amount, code, channel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::PaymentStatus;

    fn stored(code: Option<&str>) -> Payment {
        Payment::fixture(
            InvoiceNumber::parse("INV-1").unwrap(),
            Amount::new(150_000).unwrap(),
            code.map(|c| PaymentCode::parse(c).unwrap()),
        )
    }

    fn report<'a>(
        invoice: Option<&'a str>,
        amount: Option<i64>,
        code: Option<&'a str>,
        status: &'a ReportedStatus,
    ) -> Report<'a> {
        Report {
            invoice_number: invoice,
            amount,
            payment_code: code,
            channel: None,
            status,
            occur_time: None,
            source: EventSource::Reconciliation,
        }
    }

    const PAID: ReportedStatus = ReportedStatus::Known(PaymentStatus::Paid);

    #[test]
    fn a_report_about_the_stored_payment_changes_only_its_status() {
        let p = stored(Some("8880123456"));
        let Assessment::Change { change: c, .. } =
            assess(report(Some("INV-1"), Some(150_000), None, &PAID), Some(&p))
        else {
            panic!("not believed");
        };
        assert_eq!((c.invoice, c.amount), (p.invoice.clone(), p.amount));
        // DOKU said no code: the stored one stays.
        assert_eq!(c.payment_code, p.payment_code);
        assert_eq!(c.status, PaymentStatus::Paid);
        assert_eq!(c.source, EventSource::Reconciliation);
    }

    #[test]
    fn a_report_about_another_payment_changes_nothing() {
        let p = stored(Some("8880123456"));
        for (r, reason) in [
            (report(None, Some(150_000), None, &PAID), "invoice_missing"),
            (
                report(Some("INV-2"), Some(150_000), None, &PAID),
                "invoice_mismatch",
            ),
            (report(Some("INV-1"), None, None, &PAID), "amount_missing"),
            (
                report(Some("INV-1"), Some(1), None, &PAID),
                "amount_mismatch",
            ),
            (
                report(Some("INV-1"), Some(150_000), Some("x"), &PAID),
                "code_invalid",
            ),
            (
                report(Some("INV-1"), Some(150_000), Some("8880999999"), &PAID),
                "code_mismatch",
            ),
        ] {
            match assess(r, Some(&p)) {
                Assessment::Mismatch(why) => assert_eq!(why.reason(), reason),
                other => panic!("{reason}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_unknown_status_is_never_guessed() {
        let raw = ReportedStatus::Unrecognized("REFUNDED".into());
        let r = report(Some("INV-1"), Some(150_000), None, &raw);
        assert_eq!(
            assess(r, Some(&stored(None))),
            Assessment::UnknownStatus("REFUNDED".into())
        );
        assert_eq!(
            assess(r, None),
            Assessment::UnknownStatus("REFUNDED".into())
        );
    }

    #[test]
    fn an_unknown_invoice_is_taken_as_sent_only_when_valid() {
        let r = report(Some("INV-9"), Some(5_000), Some("8880123456"), &PAID);
        let Assessment::Change { change: c, .. } = assess(r, None) else {
            panic!("not taken");
        };
        assert_eq!(c.invoice.as_str(), "INV-9");
        assert_eq!(c.amount.rupiah(), 5_000);
        for bad in [
            report(Some(""), Some(5_000), None, &PAID),
            report(Some("INV-9"), Some(0), None, &PAID),
            report(Some("INV-9"), None, None, &PAID),
            report(Some("INV-9"), Some(5_000), Some("not a code"), &PAID),
        ] {
            assert!(
                matches!(assess(bad, None), Assessment::Mismatch(Refusal::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_report_naming_another_channel_is_about_another_payment() {
        let indomaret = stored(Some("8880123456"));
        let alfa = Payment {
            channel: Channel::Alfa,
            ..indomaret.clone()
        };
        let said_alfa = ReportedChannel::Known(Channel::Alfa);
        let said_va = ReportedChannel::Unrecognized("VIRTUAL_ACCOUNT_BCA".into());
        let with = |channel| Report {
            channel,
            ..report(Some("INV-1"), Some(150_000), None, &PAID)
        };
        // ONLINE_TO_OFFLINE_ALFA about a stored Indomaret payment: refused, even though
        // invoice, amount and status agree.
        match assess(with(Some(&said_alfa)), Some(&indomaret)) {
            Assessment::Mismatch(why) => {
                assert_eq!(why.reason(), "channel_mismatch");
                assert!(why.to_string().contains("ONLINE_TO_OFFLINE_ALFA"), "{why}");
            }
            other => panic!("believed: {other:?}"),
        }
        match assess(with(Some(&said_va)), Some(&alfa)) {
            Assessment::Mismatch(why) => assert_eq!(why.reason(), "channel_mismatch"),
            other => panic!("believed: {other:?}"),
        }
        // The same channel, or none named: believed, with the stored channel.
        for (r, p) in [
            (with(Some(&said_alfa)), &alfa),
            (with(None), &alfa),
            (with(None), &indomaret),
        ] {
            let Assessment::Change { change, channel } = assess(r, Some(p)) else {
                panic!("not believed: {r:?}");
            };
            assert_eq!(channel, p.channel);
            assert_eq!(change.status, PaymentStatus::Paid);
        }
    }

    #[test]
    fn an_unknown_invoice_takes_doku_s_channel() {
        let said_alfa = ReportedChannel::Known(Channel::Alfa);
        let said_va = ReportedChannel::Unrecognized("VIRTUAL_ACCOUNT_BCA".into());
        let with = |channel| Report {
            channel,
            ..report(Some("INV-9"), Some(5_000), None, &PAID)
        };
        let channel_of = |r| match assess(r, None) {
            Assessment::Change { channel, .. } => channel,
            other => panic!("not taken: {other:?}"),
        };
        assert_eq!(channel_of(with(Some(&said_alfa))), Channel::Alfa);
        assert_eq!(channel_of(with(None)), Channel::Indomaret);
        assert!(matches!(
            assess(with(Some(&said_va)), None),
            Assessment::Mismatch(Refusal::Invalid(_))
        ));
    }
}
