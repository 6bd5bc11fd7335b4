//! Conversions between the generated proto types and the domain types.

use prost_types::Timestamp;
use time::OffsetDateTime;

use super::pb;
use crate::payment::{
    Channel, Event, EventSource, Payment, PaymentCodeInput, PaymentInstruction, PaymentStatus,
};

/// A proto Timestamp for an instant (whole seconds are all DOKU has).
pub fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

/// Proto status of a domain status.
pub fn status(s: PaymentStatus) -> pb::PaymentStatus {
    match s {
        PaymentStatus::Pending => pb::PaymentStatus::Pending,
        PaymentStatus::Paid => pb::PaymentStatus::Paid,
        PaymentStatus::Expired => pb::PaymentStatus::Expired,
        PaymentStatus::Failed => pb::PaymentStatus::Failed,
    }
}

/// Proto channel of a domain channel.
pub fn channel(c: Channel) -> pb::Channel {
    match c {
        Channel::Indomaret => pb::Channel::Indomaret,
        Channel::Alfa => pb::Channel::Alfa,
    }
}

/// Proto source of a domain event source.
pub fn source(s: EventSource) -> pb::Source {
    match s {
        EventSource::DokuNotification => pb::Source::DokuNotification,
        EventSource::Reconciliation => pb::Source::Reconciliation,
    }
}

/// The request as the domain sees it, before validation.
pub fn payment_code_input(r: pb::GeneratePaymentCodeRequest) -> PaymentCodeInput {
    let channel = match pb::Channel::try_from(r.channel) {
        Ok(pb::Channel::Unspecified) => None,
        Ok(pb::Channel::Indomaret) => Some(Ok(Channel::Indomaret)),
        Ok(pb::Channel::Alfa) => Some(Ok(Channel::Alfa)),
        Err(_) => Some(Err(r.channel)),
    };
    let (customer_name, customer_email) = match r.customer {
        Some(c) => (Some(c.name), c.email),
        None => (None, String::new()),
    };
    let receipt = r.receipt.unwrap_or_default();
    PaymentCodeInput {
        invoice_number: r.invoice_number,
        amount: r.amount,
        customer_name,
        customer_email,
        expiry: r.expiry.map(|d| (d.seconds, d.nanos)),
        reusable: r.reusable,
        info: r.info,
        receipt_description: receipt.description,
        receipt_footer_message: receipt.footer_message,
        idempotency_key: r.idempotency_key,
        channel,
        notification_url: r.notification_url,
    }
}

/// Proto payment of a domain payment.
pub fn payment(p: Payment) -> pb::Payment {
    pb::Payment {
        invoice_number: p.invoice.to_string(),
        amount: p.amount.rupiah(),
        channel: channel(p.channel).into(),
        payment_code: p.payment_code.map(|c| c.to_string()).unwrap_or_default(),
        status: status(p.status).into(),
        create_time: Some(timestamp(p.create_time)),
        expire_time: Some(timestamp(p.expire_time)),
        pay_time: p.pay_time.map(timestamp),
        how_to_pay_url: p.how_to_pay_url.unwrap_or_default(),
        how_to_pay_api_url: p.how_to_pay_api_url.unwrap_or_default(),
        reusable: p.reusable,
        instructions: p.instructions.into_iter().map(instruction).collect(),
    }
}

/// Proto instruction of a domain instruction.
pub fn instruction(i: PaymentInstruction) -> pb::PaymentInstruction {
    pb::PaymentInstruction {
        channel: i.channel,
        language: i.language,
        steps: i.steps,
    }
}

/// Proto notification of a domain event.
pub fn notification(e: Event) -> pb::Notification {
    pb::Notification {
        event_id: e.seq,
        invoice_number: e.invoice.to_string(),
        status: status(e.status).into(),
        amount: e.amount.rupiah(),
        payment_code: e.payment_code.map(|c| c.to_string()).unwrap_or_default(),
        channel: channel(e.channel).into(),
        occur_time: Some(timestamp(e.occur_time)),
        source: source(e.source).into(),
        doku_request_id: e.doku_request_id.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_channel_is_kept_for_validation() {
        let input = payment_code_input(pb::GeneratePaymentCodeRequest {
            channel: 42,
            ..Default::default()
        });
        assert_eq!(input.channel, Some(Err(42)));
        assert_eq!(input.customer_name, None);
        let input = payment_code_input(pb::GeneratePaymentCodeRequest::default());
        assert_eq!(input.channel, None);
    }
}
