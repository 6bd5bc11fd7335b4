//! The `/_sim` control API that tests, scripts and people use: pay, fail or expire a payment,
//! list payments, notification deliveries and received requests, and set or clear faults.
//! Plain JSON; errors are `{"error": "..."}` with 400, 404 or 409.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::sim::{Fault, SimError, Simulator};

pub(crate) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/_sim/payments", get(list_payments))
        .route("/_sim/payments/{invoice}", get(one_payment))
        .route("/_sim/payments/{invoice}/pay", post(pay))
        .route("/_sim/payments/{invoice}/fail", post(fail))
        .route("/_sim/payments/{invoice}/expire", post(expire))
        .route("/_sim/notifications", get(notifications))
        .route("/_sim/requests", get(requests))
        .route(
            "/_sim/faults",
            get(list_faults).post(add_faults).delete(clear_faults),
        )
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
