//! Injected faults: what they are, how they are written in JSON (`POST /_sim/faults`), and the
//! book that hands them out to matching requests and notifications, counting down `times`.
//!
//! On a DOKU endpoint the first matching fault (in the order they were added) applies to a
//! request. On a notification every matching fault applies together (a `delay` and a
//! `duplicate` give a late duplicate; `suppress` sends nothing).

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::sim::{SimChannel, lock};

/// What a fault acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTarget {
    /// `POST /indomaret-online-to-offline/v2/payment-code` (Indomaret's Generate Payment Code).
    PaymentCode,
    /// `POST /alfa-online-to-offline/v2/payment-code` (Alfa Group's Generate Payment Code).
    AlfaPaymentCode,
    /// `GET /orders/v1/status/{invoice}`.
    CheckStatus,
    /// The notifications sent after a payment.
    Notification,
}

impl FaultTarget {
    /// The Generate Payment Code endpoint of `channel`.
    pub fn payment_code(channel: SimChannel) -> Self {
        match channel {
            SimChannel::Indomaret => Self::PaymentCode,
            SimChannel::Alfa => Self::AlfaPaymentCode,
        }
    }
}

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// DOKU endpoints: answer this status with a DOKU-style error body, without processing.
    Status {
        /// The HTTP status to answer (200..=599).
        status: u16,
    },
    /// DOKU endpoints: process, then wait before answering (a client may time out after DOKU
    /// acted). Notifications: wait before the first attempt (a late notification).
    Delay {
        /// How long to wait, in milliseconds.
        delay_ms: u64,
    },
    /// DOKU endpoints: close the connection without an answer.
    Drop {
        /// Whether the request is processed first (a code issued, nothing answered).
        after_processing: bool,
    },
    /// Notifications: send none.
    Suppress,
    /// Notifications: send each one twice, same `Request-Id` and body.
    Duplicate,
    /// Notifications: send a signature that does not verify.
    BadSignature,
}

impl FaultKind {
    /// Whether this kind means something for `target`; other combinations never fire.
    pub fn applies_to(&self, target: FaultTarget) -> bool {
        match self {
            Self::Delay { .. } => true,
            Self::Status { .. } | Self::Drop { .. } => target != FaultTarget::Notification,
            Self::Suppress | Self::Duplicate | Self::BadSignature => {
                target == FaultTarget::Notification
            }
        }
    }

    /// Short text for request logs.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Status { status } => format!("status {status}"),
            Self::Delay { delay_ms } => format!("delay {delay_ms}ms"),
            Self::Drop { after_processing } => {
                if *after_processing {
                    "drop after processing".into()
                } else {
                    "drop before processing".into()
                }
            }
            Self::Suppress => "suppress".into(),
            Self::Duplicate => "duplicate".into(),
            Self::BadSignature => "bad signature".into(),
        }
    }
}

/// One injected fault, e.g. `{"target":"payment_code","kind":"status","status":503,"times":1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FaultSpec")]
pub struct Fault {
    /// What it acts on.
    pub target: FaultTarget,
    /// What goes wrong.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many more matching requests it applies to; `None` = until cleared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// Only requests / notifications for this invoice match; `None` = all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_number: Option<String>,
}

impl Fault {
    /// A fault on every matching request until cleared.
    pub fn new(target: FaultTarget, kind: FaultKind) -> Self {
        Self {
            target,
            kind,
            times: None,
            invoice_number: None,
        }
    }

    /// Applies to the next `n` matching requests only.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Matches only this invoice.
    pub fn for_invoice(mut self, invoice: impl Into<String>) -> Self {
        self.invoice_number = Some(invoice.into());
        self
    }

    fn matches(&self, target: FaultTarget, invoice: Option<&str>) -> bool {
        self.target == target
            && self.kind.applies_to(target)
            && self.times != Some(0)
            && self
                .invoice_number
                .as_deref()
                .is_none_or(|want| invoice == Some(want))
    }
}

/// The JSON form, checked strictly so that a typo in a test's fault fails loudly instead of
/// injecting nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    target: FaultTarget,
    kind: String,
    status: Option<u16>,
    delay_ms: Option<u64>,
    after_processing: Option<bool>,
    times: Option<u32>,
    invoice_number: Option<String>,
}

impl TryFrom<FaultSpec> for Fault {
    type Error = String;

    fn try_from(s: FaultSpec) -> Result<Self, String> {
        let extra = |name: &str, present: bool| {
            if present {
                Err(format!(
                    "field {name:?} does not apply to kind {:?}",
                    s.kind
                ))
            } else {
                Ok(())
            }
        };
        let kind = match s.kind.as_str() {
            "status" => {
                extra("delay_ms", s.delay_ms.is_some())?;
                extra("after_processing", s.after_processing.is_some())?;
                let status = s.status.ok_or("kind \"status\" needs \"status\"")?;
                if !(200..=599).contains(&status) {
                    return Err(format!("status {status} is not in 200..=599"));
                }
                FaultKind::Status { status }
            }
            "delay" => {
                extra("status", s.status.is_some())?;
                extra("after_processing", s.after_processing.is_some())?;
                let delay_ms = s.delay_ms.ok_or("kind \"delay\" needs \"delay_ms\"")?;
                FaultKind::Delay { delay_ms }
            }
            "drop" => {
                extra("status", s.status.is_some())?;
                extra("delay_ms", s.delay_ms.is_some())?;
                FaultKind::Drop {
                    after_processing: s.after_processing.unwrap_or(false),
                }
            }
            "suppress" | "duplicate" | "bad_signature" => {
                extra("status", s.status.is_some())?;
                extra("delay_ms", s.delay_ms.is_some())?;
                extra("after_processing", s.after_processing.is_some())?;
                match s.kind.as_str() {
                    "suppress" => FaultKind::Suppress,
                    "duplicate" => FaultKind::Duplicate,
                    _ => FaultKind::BadSignature,
                }
            }
            other => {
                return Err(format!(
                    "unknown kind {other:?}; expected status, delay, drop, suppress, duplicate \
                     or bad_signature"
                ));
            }
        };
        if !kind.applies_to(s.target) {
            return Err(format!(
                "kind {:?} does not apply to target {:?}",
                s.kind, s.target
            ));
        }
        if s.times == Some(0) {
            return Err("times must be at least 1 (leave it out for unlimited)".into());
        }
        Ok(Self {
            target: s.target,
            kind,
            times: s.times,
            invoice_number: s.invoice_number,
        })
    }
}

/// The active faults, in the order they were added.
#[derive(Debug, Default)]
pub(crate) struct FaultBook {
    faults: Mutex<Vec<Fault>>,
}

impl FaultBook {
    pub(crate) fn set(&self, faults: Vec<Fault>) {
        *lock(&self.faults) = faults;
    }

    pub(crate) fn add(&self, faults: Vec<Fault>) {
        lock(&self.faults).extend(faults);
    }

    pub(crate) fn list(&self) -> Vec<Fault> {
        lock(&self.faults).clone()
    }

    /// The fault for one request to a DOKU endpoint, if any; counts it down.
    pub(crate) fn take_api(&self, target: FaultTarget, invoice: Option<&str>) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        let i = faults.iter().position(|f| f.matches(target, invoice))?;
        Some(consume(&mut faults, i))
    }

    /// Every fault for one notification; counts each down.
    pub(crate) fn take_notification(&self, invoice: &str) -> Vec<FaultKind> {
        let mut faults = lock(&self.faults);
        let mut taken = Vec::new();
        let mut i = 0;
        while i < faults.len() {
            if faults[i].matches(FaultTarget::Notification, Some(invoice)) {
                let before = faults.len();
                taken.push(consume(&mut faults, i));
                if faults.len() < before {
                    continue;
                }
            }
            i += 1;
        }
        taken
    }
}

/// Counts fault `i` down and returns its kind; a fault used up is removed.
fn consume(faults: &mut Vec<Fault>, i: usize) -> FaultKind {
    let kind = faults[i].kind.clone();
    if let Some(n) = faults[i].times.as_mut() {
        *n -= 1;
        if *n == 0 {
            faults.remove(i);
        }
    }
    kind
}
