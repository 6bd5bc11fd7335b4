//! Optional caller authentication: with `--api-token-file`, every O2OPayments call must carry
//! `authorization: Bearer <token>`, compared in constant time; otherwise UNAUTHENTICATED.

use secrecy::ExposeSecret as _;
use subtle::ConstantTimeEq as _;
use tonic::{Request, Status, service::Interceptor};

use super::status::to_status;
use crate::{error::Error, secret::SecretKeySource};

/// Checks the bearer token of each request against the token file (re-read when it changes,
/// like the DOKU key).
#[derive(Debug, Clone)]
pub struct BearerAuth {
    token: Option<SecretKeySource>,
}

impl BearerAuth {
    /// `None`: every call is let through.
    pub fn new(token: Option<SecretKeySource>) -> Self {
        Self { token }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = token.current();
        let ok: bool = presented
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes())
            .into();
        if ok && !presented.is_empty() {
            Ok(request)
        } else {
            tracing::warn!("gRPC call without a valid bearer token");
            metrics::counter!("o2o_grpc_unauthenticated_total").increment(1);
            Err(to_status(Error::Unauthenticated))
        }
    }
}
