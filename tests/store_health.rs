//! The store's health is separate from readiness: `/ready` is the sidecar's own state, so a
//! PostgreSQL outage must not take the application's pod out of its Service; `/health/store`
//! and `o2o_store_up` say it instead.
//!
//! Its own test binary: `o2o_store_up` is a process-wide gauge, which the store watchers of
//! other tests in the same process would set back to 1 under this test's feet.

use o2o_sidecar::testing::{InProcessSidecar, Options, postgres::ScratchDb};

/// A TCP proxy in front of PostgreSQL that a test can cut: open connections die, new ones
/// are refused (what a database blip looks like from the sidecar).
struct CuttableProxy {
    addr: std::net::SocketAddr,
    cut: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, mut cut_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Dropping the set (and the listener) at the cut closes everything.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut cut_rx => break,
                    accepted = listener.accept() => {
                        let Ok((mut down, _)) = accepted else { continue };
                        let upstream = upstream.clone();
                        conns.spawn(async move {
                            if let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                            }
                        });
                    }
                }
            }
        });
        Self {
            addr,
            cut: Some(cut),
            task,
        }
    }

    async fn cut(&mut self) {
        let _ = self.cut.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }
}

/// `/ready` is the sidecar's own state: a PostgreSQL outage must not take the application's
/// pod out of its Service. The store's health is on `/health/store` and `o2o_store_up`.
#[tokio::test]
async fn a_store_outage_shows_on_its_own_endpoint_not_on_ready() {
    let Some(db) = ScratchDb::create().await else {
        return;
    };
    let url = db.url();
    // postgres://user@host:port/db → the host:port part, to put the proxy in front of it.
    let after_scheme = url.split_once("://").unwrap().1;
    let authority = after_scheme.split('/').next().unwrap();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let mut proxy = CuttableProxy::start(host_port.to_owned()).await;
    let proxied = url.replacen(host_port, &proxy.addr.to_string(), 1);

    let mut rig = InProcessSidecar::start_with(Options {
        store_url: Some(proxied),
        ..Options::default()
    })
    .await;
    let metric = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("o2o_store_up "))
            .map(|v| v.trim().parse::<f64>().unwrap())
    };
    let (code, body) = rig.admin_get("/health/store").await;
    assert_eq!((code, body.as_str()), (200, r#"{"store":"up"}"#));
    let (_, text) = rig.admin_get("/metrics").await;
    assert_eq!(metric(&text), Some(1.0), "{text}");

    proxy.cut().await;
    let (code, body) = rig.admin_get("/health/store").await;
    assert_eq!((code, body.as_str()), (503, r#"{"store":"down"}"#));
    let (_, text) = rig.admin_get("/metrics").await;
    assert_eq!(metric(&text), Some(0.0), "{text}");
    let (code, body) = rig.admin_get("/ready").await;
    assert_eq!(code, 200, "{body}");
    // Payment calls fail on their own, with a code the caller retries on.
    let err = rig
        .grpc
        .get_status(o2o_sidecar::grpc::pb::GetStatusRequest {
            invoice_number: "INV-ADM-DOWN-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    rig.stop().await;
    drop(db);
}
