//! TLS on the gRPC and notification listeners (`--tls-cert-file`, `--tls-key-file`).

use o2o_sidecar::{
    grpc::pb::o2o_payments_client::O2oPaymentsClient,
    testing::{InProcessSidecar, Options, request},
    tls::TlsIdentity,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[tokio::test]
async fn grpc_and_notifications_are_served_over_tls() {
    o2o_sidecar::install_tls_provider();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let identity = TlsIdentity {
        cert_pem: cert_pem.clone().into_bytes(),
        key_pem: cert.signing_key.serialize_pem().into_bytes(),
    };
    // DOKU is unreachable here: only the transport is under test.
    let options = Options {
        doku_url: Some("http://127.0.0.1:9".into()),
        ..Options::default()
    };
    let sidecar = InProcessSidecar::start_adjusted(options, |mut c, _| {
        c.tls = Some(identity);
        c
    })
    .await;
    let addrs = sidecar.addrs;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", addrs.grpc.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = O2oPaymentsClient::new(channel);
    // The call reaches the service over TLS (and fails on the unreachable DOKU, as it should).
    let err = client
        .generate_payment_code(request("INV-TLS-1", 10_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", addrs.http)
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{}/payments/notifications",
        addrs.http.port()
    );
    let answer = http.post(&url).body("{}").send().await.unwrap();
    assert_eq!(
        answer.status(),
        401,
        "unsigned notification refused, over TLS"
    );
    // Plain HTTP to the TLS port does not get an answer.
    let plain = reqwest::Client::new()
        .post(format!("http://{}/payments/notifications", addrs.http))
        .body("{}")
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 401);

    sidecar.stop().await;
}
