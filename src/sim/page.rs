//! The simulator's pages for people: the control page at `/` (payments with Pay / Expire /
//! Fail, the counter, notification deliveries, faults), and the customer's how-to-pay page.
//! HTML, CSS and JS are files beside this one, embedded in the binary: there is no front-end
//! build, and nothing is loaded from elsewhere (the machines may have no internet). The
//! control page is static; its script polls `GET /_sim/state` every second and acts through
//! the JSON control API, so the page can do nothing a script cannot.

use axum::{
    Router,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use time::{OffsetDateTime, UtcOffset, macros::format_description};

use crate::sim::{Simulator, state::PaymentRecord, wire};

const INDEX_HTML: &str = include_str!("page/index.html");
const HOW_TO_PAY_HTML: &str = include_str!("page/how-to-pay.html");
const NOT_FOUND_HTML: &str = include_str!("page/not-found.html");
const CSS: &str = include_str!("page/sim.css");
const JS: &str = include_str!("page/sim.js");

/// Where the stylesheet and script are served (outside `/_sim`: they are not control API).
pub(crate) const CSS_PATH: &str = "/ui/sim.css";
pub(crate) const JS_PATH: &str = "/ui/sim.js";

/// Only this server's own files and API; no inline script, no frames, no form posts elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; form-action 'self'; base-uri 'none'; \
                   frame-ancestors 'none'";

pub(crate) fn routes() -> Router<Simulator> {
    Router::new()
        .route(
            "/",
            get(|| async { html(StatusCode::OK, INDEX_HTML.to_owned()) }),
        )
        .route(
            CSS_PATH,
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            JS_PATH,
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
}

fn with_headers(mut res: Response, content_type: &'static str) -> Response {
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The page polls; a cached copy would hide a newer simulator.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // How-to-pay URLs carry the payment's token: never hand them to another site.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

fn html(status: StatusCode, body: String) -> Response {
    let mut res = with_headers((status, body).into_response(), "text/html; charset=utf-8");
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    res
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    with_headers(body.into_response(), content_type)
}

/// `s` safe inside HTML text and double-quoted attributes.
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Fills `{{name}}` markers; the values are HTML already (escape data before).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    out
}

/// `Rp 1.500.000`: whole rupiah with Indonesian thousands dots.
pub(crate) fn rupiah(amount: u64) -> String {
    let digits = amount.to_string();
    let mut out = String::from("Rp\u{a0}");
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('.');
        }
        out.push(c);
    }
    out
}

/// The code in groups of four for the eye; the groups are spans, so a copy gives the bare
/// digits a cashier types.
fn code_groups(code: &str) -> String {
    code.as_bytes()
        .chunks(4)
        .map(|g| format!("<span>{}</span>", html_escape(&String::from_utf8_lossy(g))))
        .collect()
}

/// `Tuesday 14 January 2025, 21:05 WIB` (Western Indonesian Time, where the stores are).
fn wib_deadline(t: OffsetDateTime) -> String {
    let wib = UtcOffset::from_hms(7, 0, 0).expect("UTC+7 is a valid offset");
    t.to_offset(wib)
        .format(format_description!(
            "[weekday] [day padding:none] [month repr:long] [year], [hour]:[minute] WIB"
        ))
        .expect("a WIB date formats")
}

/// The customer's page: the code large, the amount, the deadline, the steps; and, because
/// this is the simulator, a link to pay it at the simulated counter.
pub(crate) fn how_to_pay(p: &PaymentRecord) -> Response {
    html(StatusCode::OK, how_to_pay_body(p, wire::now()))
}

fn how_to_pay_body(p: &PaymentRecord, now: OffsetDateTime) -> String {
    let store = p.channel.display_name();
    let steps: String = p
        .channel
        .steps()
        .iter()
        .map(|s| format!("<li>{}</li>", html_escape(s)))
        .collect();
    let info = p
        .info
        .as_deref()
        .filter(|i| !i.is_empty())
        .map(|i| format!(r#"<p class="info">{}</p>"#, html_escape(i)))
        .unwrap_or_default();
    let status = p.status(now);
    let notice = match status {
        crate::sim::SimStatus::Pending => String::new(),
        crate::sim::SimStatus::Success if p.reusable => {
            r#"<p class="notice ok" role="status">Paid. This code can be paid again until it expires.</p>"#.to_owned()
        }
        crate::sim::SimStatus::Success => {
            r#"<p class="notice ok" role="status">This payment is paid. Thank you!</p>"#.to_owned()
        }
        crate::sim::SimStatus::Expired => {
            r#"<p class="notice bad" role="status">This payment code has expired. Ask the shop for a new one.</p>"#.to_owned()
        }
        crate::sim::SimStatus::Failed => {
            r#"<p class="notice bad" role="status">This payment failed. Ask the shop for a new code.</p>"#.to_owned()
        }
    };
    fill(
        HOW_TO_PAY_HTML,
        &[
            ("css", CSS_PATH),
            ("store", &html_escape(store)),
            ("code_groups", &code_groups(&p.payment_code)),
            ("code", &html_escape(&p.payment_code)),
            ("amount", &html_escape(&rupiah(p.amount))),
            ("deadline", &html_escape(&wib_deadline(p.expires_at))),
            ("deadline_utc", &html_escape(&wire::iso_utc(p.expires_at))),
            ("invoice", &html_escape(&p.invoice_number)),
            ("info", &info),
            ("notice", &notice),
            ("steps", &steps),
        ],
    )
}

/// A how-to-pay link whose code or token is wrong.
pub(crate) fn how_to_pay_not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        fill(NOT_FOUND_HTML, &[("css", CSS_PATH)]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rupiah_groups_thousands_with_dots() {
        assert_eq!(rupiah(0), "Rp\u{a0}0");
        assert_eq!(rupiah(999), "Rp\u{a0}999");
        assert_eq!(rupiah(1000), "Rp\u{a0}1.000");
        assert_eq!(rupiah(150_000), "Rp\u{a0}150.000");
        assert_eq!(rupiah(999_999_999_999), "Rp\u{a0}999.999.999.999");
    }

    #[test]
    fn escapes_markup_and_groups_codes() {
        assert_eq!(
            html_escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(
            code_groups("773101234"),
            "<span>7731</span><span>0123</span><span>4</span>"
        );
    }

    #[test]
    fn every_marker_of_the_how_to_pay_template_is_filled() {
        let t = OffsetDateTime::UNIX_EPOCH;
        let p = PaymentRecord {
            invoice_number: "INV-<1>".into(),
            payment_code: "773101234567890".into(),
            request_id: "r".into(),
            info: Some("Order <b>1</b>".into()),
            ..PaymentRecord::example(1)
        };
        assert!(HOW_TO_PAY_HTML.contains("{{code_groups}}"));
        let body = how_to_pay_body(&p, t - time::Duration::minutes(1));
        assert!(!body.contains("{{"), "a marker is left: {body}");
        assert!(body.contains("<span>7731</span><span>0123</span>"));
        assert!(body.contains("Rp\u{a0}150.000"));
        assert!(body.contains("INV-&lt;1&gt;"));
        assert!(body.contains("Order &lt;b&gt;1&lt;/b&gt;"));
        assert!(!body.contains("<b>1</b>"));
        assert!(body.contains("Thursday 1 January 1970, 07:00 WIB"));
        assert!(!body.contains("has expired"), "pending: no notice");
        let body = how_to_pay_body(&p, t);
        assert!(body.contains("has expired"));
        let res = how_to_pay(&p);
        assert!(
            res.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
    }
}
