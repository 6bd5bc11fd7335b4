//! The `/_sim` control API that tests, scripts and people use: pay, fail, expire a payment or
//! resend its notification, look a payment code up as a till does, list payments,
//! notification deliveries and received requests, and set or clear faults. Plain JSON; errors
//! are `{"error": "..."}` with 400, 404 or 409. Described by `openapi.json` (served at
//! `/_sim/openapi.json`); a test keeps the two in step through [`table`].

use axum::{
    Json, Router,
    extract::{Path, State},
    handler::Handler,
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, delete, get, post},
};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::sim::{Fault, SimError, Simulator, lock};

/// The OpenAPI 3 description of this module's routes.
pub(crate) const OPENAPI_JSON: &str = include_str!("openapi.json");

/// The control routes as they are added to the router: the one list that both builds the
/// router and is checked against the OpenAPI document.
pub(crate) struct Table {
    router: Router<Simulator>,
    routes: Vec<(Method, &'static str)>,
}

impl Table {
    fn add(mut self, method: Method, path: &'static str, route: MethodRouter<Simulator>) -> Self {
        self.routes.push((method, path));
        self.router = self.router.route(path, route);
        self
    }

    fn get<H: Handler<T, Simulator>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::GET, path, get(h))
    }

    fn post<H: Handler<T, Simulator>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::POST, path, post(h))
    }

    fn delete<H: Handler<T, Simulator>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::DELETE, path, delete(h))
    }

    /// Every `(method, path)` served, paths in axum's `{param}` form (OpenAPI's form too).
    #[cfg(test)]
    pub(crate) fn routes(&self) -> &[(Method, &'static str)] {
        &self.routes
    }
}

pub(crate) fn table() -> Table {
    Table {
        router: Router::new(),
        routes: Vec::new(),
    }
    .get("/_sim/state", overview)
    .get("/_sim/payments", list_payments)
    .get("/_sim/payments/{invoice}", one_payment)
    .post("/_sim/payments/{invoice}/pay", pay)
    .post("/_sim/payments/{invoice}/fail", fail)
    .post("/_sim/payments/{invoice}/expire", expire)
    .post("/_sim/payments/{invoice}/resend", resend)
    .get("/_sim/codes/{payment_code}", inquiry)
    .get("/_sim/notifications", notifications)
    .get("/_sim/requests", requests)
    .get("/_sim/faults", list_faults)
    .post("/_sim/faults", add_faults)
    .delete("/_sim/faults", clear_faults)
    .get("/_sim/openapi.json", openapi)
}

pub(crate) fn routes() -> Router<Simulator> {
    table().router
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
        };
        error(status, self.to_string())
    }
}

async fn list_payments(State(sim): State<Simulator>) -> Response {
    Json(sim.payments()).into_response()
}

async fn one_payment(State(sim): State<Simulator>, Path(invoice): Path<String>) -> Response {
    match sim.payment(&invoice) {
        Some(p) => Json(p).into_response(),
        None => SimError::NotFound(invoice).into_response(),
    }
}

async fn pay(State(sim): State<Simulator>, Path(invoice): Path<String>) -> Response {
    match sim.pay(&invoice).await {
        Ok(o) => Json(o).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn fail(State(sim): State<Simulator>, Path(invoice): Path<String>) -> Response {
    match sim.fail(&invoice).await {
        Ok(o) => Json(o).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn expire(State(sim): State<Simulator>, Path(invoice): Path<String>) -> Response {
    match sim.expire(&invoice) {
        Ok(()) => Json(json!({ "invoice_number": invoice, "status": "EXPIRED" })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn resend(State(sim): State<Simulator>, Path(invoice): Path<String>) -> Response {
    match sim.resend(&invoice) {
        Ok(o) => Json(o).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn inquiry(State(sim): State<Simulator>, Path(code): Path<String>) -> Response {
    match sim.inquiry(&code) {
        Some(q) => Json(q).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no payment code {code} was issued"),
        ),
    }
}

/// Everything the page shows, read at one instant: the simulator's settings, payments,
/// notification deliveries and faults.
async fn overview(State(sim): State<Simulator>) -> Response {
    let cfg = sim.config();
    let schedule: Vec<Option<u64>> = sim
        .retry_schedule()
        .into_iter()
        .map(|d| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
        .collect();
    let (payments, notifications) = {
        let now = crate::sim::wire::now();
        let st = lock(&sim.inner.state);
        let payments: Vec<_> = st.payments().map(|p| p.snapshot(now)).collect();
        (payments, st.deliveries.clone())
    };
    Json(json!({
        "config": {
            "client_id": cfg.client_id,
            "notification_url": cfg.notification_url,
            "notification_retry_scale": cfg.notification_retry_scale,
            "notification_retry_schedule_ms": schedule,
            "timestamp_tolerance_secs": cfg.timestamp_tolerance.as_secs(),
        },
        "payments": payments,
        "notifications": notifications,
        "faults": sim.faults(),
    }))
    .into_response()
}

async fn openapi() -> Response {
    let mut res = OPENAPI_JSON.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

async fn notifications(State(sim): State<Simulator>) -> Response {
    Json(sim.notifications()).into_response()
}

async fn requests(State(sim): State<Simulator>) -> Response {
    Json(sim.requests()).into_response()
}

async fn list_faults(State(sim): State<Simulator>) -> Response {
    Json(sim.faults()).into_response()
}

/// Body: one fault object or an array of them; they are added after the active ones.
async fn add_faults(State(sim): State<Simulator>, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body)
        .map_err(|e| format!("invalid JSON: {e}"))
        .and_then(|v| {
            if v.is_array() {
                serde_json::from_value::<Vec<Fault>>(v)
            } else {
                serde_json::from_value::<Fault>(v).map(|f| vec![f])
            }
            .map_err(|e| format!("invalid fault: {e}"))
        });
    match parsed {
        Ok(faults) => {
            let n = faults.len();
            sim.add_faults(faults);
            Json(json!({ "added": n, "faults": sim.faults() })).into_response()
        }
        Err(m) => error(StatusCode::BAD_REQUEST, m),
    }
}

async fn clear_faults(State(sim): State<Simulator>) -> Response {
    sim.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}
