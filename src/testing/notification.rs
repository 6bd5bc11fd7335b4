//! DOKU's notifications as DOKU sends them: the body, the signed headers, the POST.

use crate::doku::{
    request_timestamp,
    signature::{self, Components, TimestampKind},
};

use super::CLIENT_ID;

/// A DOKU-style notification body.
pub fn notification_body(invoice: &str, amount: i64, code: &str, status: &str) -> String {
    format!(
        r#"{{"service":{{"id":"ONLINE_TO_OFFLINE"}},"acquirer":{{"id":"INDOMARET"}},"channel":{{"id":"ONLINE_TO_OFFLINE_INDOMARET"}},"transaction":{{"status":"{status}","date":"2026-11-25T07:06:28Z","original_request_id":"5b8e438f-fac1-4103-9e0e-ebfdc38b5acb"}},"order":{{"invoice_number":"{invoice}","amount":{amount}}},"online_to_offline_info":{{"payment_code":"{code}"}}}}"#
    )
}

/// The headers DOKU sends with `body`, signed now with `key` over `target` (the sidecar's
/// notification path, [`super::PATH`], unless a test means another).
pub fn signed_headers(
    body: &[u8],
    key: &str,
    target: &str,
    request_id: &str,
) -> Vec<(&'static str, String)> {
    let timestamp = request_timestamp(time::OffsetDateTime::now_utc());
    let digest = signature::digest(body);
    let sts = signature::string_to_sign(&Components {
        client_id: CLIENT_ID,
        request_id,
        timestamp: &timestamp,
        timestamp_kind: TimestampKind::Request,
        request_target: target,
        digest: Some(&digest),
    });
    vec![
        ("Client-Id", CLIENT_ID.to_owned()),
        ("Request-Id", request_id.to_owned()),
        ("Request-Timestamp", timestamp),
        ("Signature", signature::sign(key.as_bytes(), &sts)),
        ("Content-Type", "application/json".to_owned()),
    ]
}

/// POSTs a notification to `url`; the HTTP status, or `None` when no answer came.
pub async fn post_notification(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
    headers: &[(&'static str, String)],
) -> Option<u16> {
    let mut req = http.post(url).body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.ok().map(|r| r.status().as_u16())
}
