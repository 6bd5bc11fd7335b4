//! The baseline for P1, and P2's gRPC stack alone: a no-op `o2o.v1.O2OPayments` server on the
//! same tonic stack as the sidecar, answering `GetStatus` and `GeneratePaymentCode` with a
//! constant payment of the same shape the sidecar sends. Its handlers await once, like real
//! ones. It runs as its own process (`o2o-bench noop-server`), like the sidecar, and logs
//! `o2o-bench noop-server listening addr=IP:PORT`.

use std::pin::Pin;

use futures::{Stream, TryStreamExt as _};
use o2o_sidecar::grpc::pb::{
    self,
    o2o_payments_server::{O2oPayments, O2oPaymentsServer},
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The no-op service: one prebuilt answer.
#[derive(Debug, Clone)]
struct Noop {
    answer: pb::GetStatusResponse,
}

/// A payment like the one the sidecar returns for the benchmark's invoice.
fn answer() -> pb::GetStatusResponse {
    let ts = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
    pb::GetStatusResponse {
        payment: Some(pb::Payment {
            invoice_number: "BENCH-STATUS-0001".into(),
            amount: 150_000,
            channel: pb::Channel::Indomaret.into(),
            payment_code: "3100100000001".into(),
            status: pb::PaymentStatus::Pending.into(),
            create_time: Some(ts(1_795_000_000)),
            expire_time: Some(ts(1_795_003_600)),
            pay_time: None,
            how_to_pay_url: "http://127.0.0.1:8181/how-to-pay/3100100000001".into(),
            how_to_pay_api_url: "http://127.0.0.1:8181/how-to-pay-api/3100100000001".into(),
            reusable: false,
            instructions: vec![pb::PaymentInstruction {
                channel: "INDOMARET".into(),
                language: "en".into(),
                steps: vec![
                    "Go to the nearest Indomaret store.".into(),
                    "Tell the cashier you want to pay a DOKU payment.".into(),
                    "Give the cashier your payment code.".into(),
                    "Pay the amount and keep the receipt.".into(),
                ],
            }],
        }),
    }
}

type Events =
    Pin<Box<dyn Stream<Item = Result<pb::StreamNotificationsResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl O2oPayments for Noop {
    async fn generate_payment_code(
        &self,
        _request: Request<pb::GeneratePaymentCodeRequest>,
    ) -> Result<Response<pb::GeneratePaymentCodeResponse>, Status> {
        // P2's stack alone: the same constant payment, after awaiting once.
        tokio::task::yield_now().await;
        Ok(Response::new(pb::GeneratePaymentCodeResponse {
            payment: self.answer.payment.clone(),
        }))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        // Await once, as every real handler does (the sidecar awaits its store): an answer
        // that is ready at once leaves in one write, which would hide a per-write delay such
        // as Nagle's algorithm holding the second write for the caller's delayed ACK.
        tokio::task::yield_now().await;
        Ok(Response::new(self.answer.clone()))
    }

    type StreamNotificationsStream = Events;

    async fn stream_notifications(
        &self,
        _request: Request<pb::StreamNotificationsRequest>,
    ) -> Result<Response<Self::StreamNotificationsStream>, Status> {
        Err(Status::unimplemented("the baseline serves GetStatus only"))
    }
}

/// Serves on a free loopback port until SIGTERM/SIGINT (or until the harness kills it).
pub(crate) async fn serve() -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    eprintln!(
        "o2o-bench noop-server listening addr={}",
        listener.local_addr()?
    );
    tonic::transport::Server::builder()
        .add_service(O2oPaymentsServer::new(Noop { answer: answer() }))
        // TCP_NODELAY on every accepted socket, as the sidecar sets it.
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener).map_ok(|tcp| {
                let _ = tcp.set_nodelay(true);
                tcp
            }),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
    Ok(())
}
