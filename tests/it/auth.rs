//! Caller authentication with `--api-token-file`: without the token a call is UNAUTHENTICATED;
//! health stays open.

use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use o2o_sidecar::testing::{InProcessSidecar, Options, reason, request};

#[tokio::test]
async fn a_configured_token_is_required_and_compared_exactly() {
    let mut h = InProcessSidecar::start_with(Options {
        api_token: Some("tok-0123456789".into()),
        ..Options::default()
    })
    .await;
    let err = h
        .grpc
        .generate_payment_code(request("INV-AUTH-T1", 10_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err), "UNAUTHENTICATED");

    for wrong in [
        "Bearer tok-012345678",
        "Bearer tok-0123456789x",
        "tok-0123456789",
        "Bearer ",
    ] {
        let mut req = Request::new(request("INV-AUTH-T1", 10_000));
        req.metadata_mut()
            .insert("authorization", wrong.parse().unwrap());
        let err = h.grpc.generate_payment_code(req).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{wrong}");
    }
    assert!(h.sim_requests("").await.is_empty(), "nothing reached DOKU");

    let mut req = Request::new(request("INV-AUTH-T1", 10_000));
    req.metadata_mut()
        .insert("authorization", "Bearer tok-0123456789".parse().unwrap());
    h.grpc.generate_payment_code(req).await.unwrap();

    let channel = Channel::from_shared(format!("http://{}", h.addrs.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    h.stop().await;
}
