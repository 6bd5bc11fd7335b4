//! Health and reflection: what grpcurl and generic clients rely on.

use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use o2o_sidecar::testing::InProcessSidecar;

#[tokio::test]
async fn health_reports_the_payments_service_serving() {
    let h = InProcessSidecar::start().await;
    let channel = Channel::from_shared(format!("http://{}", h.addrs.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "o2o.v1.O2OPayments"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    h.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_service_in_v1_and_v1alpha() {
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::{v1, v1alpha};
    let h = InProcessSidecar::start().await;
    let channel = Channel::from_shared(format!("http://{}", h.addrs.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut resp = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        msg.message_response
    else {
        panic!("unexpected reflection answer")
    };
    assert!(list.service.iter().any(|s| s.name == "o2o.v1.O2OPayments"));

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "o2o.v1.O2OPayments".into(),
            ),
        ),
    };
    let mut resp = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    assert!(matches!(
        msg.message_response,
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));
    h.stop().await;
}
