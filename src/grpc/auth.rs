//! Optional caller authentication: with `--api-token-file`, every O2OPayments call must carry
//! `authorization: Bearer <token>`, compared in constant time; otherwise UNAUTHENTICATED.

use secrecy::ExposeSecret as _;
use subtle::ConstantTimeEq as _;
use tonic::{Request, Status, service::Interceptor};

use super::status::to_status;
use crate::{error::Error, secret::SecretSource};

/// Checks the bearer token of each request against the token file (re-read when it changes,
/// like the DOKU key).
#[derive(Debug, Clone)]
pub struct BearerAuth {
    token: Option<SecretSource>,
}

impl BearerAuth {
    /// `None`: every call is let through.
    pub fn new(token: Option<SecretSource>) -> Self {
        Self { token }
    }
}

/// The credentials of an `authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 7235 §2.1), the token is compared exactly.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
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
            .and_then(bearer_credentials)
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

#[cfg(test)]
mod tests {
    use super::bearer_credentials;

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_exact() {
        for value in ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR  tok"] {
            assert_eq!(bearer_credentials(value), Some("tok"), "{value}");
        }
        assert_eq!(bearer_credentials("Bearer TOK"), Some("TOK"));
        for value in ["Basic tok", "Bearertok", "tok", ""] {
            assert_eq!(bearer_credentials(value), None, "{value}");
        }
    }
}
