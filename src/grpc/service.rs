//! The `o2o.v1.O2OPayments` service: decodes requests, calls [`Sidecar`], encodes answers.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{
    convert,
    pb::{self, o2o_payments_server::O2oPayments},
    status::to_status,
    stream,
};
use crate::sidecar::Sidecar;

/// Implementation of the generated `O2oPayments` trait.
#[derive(Debug, Clone)]
pub struct PaymentsService {
    sidecar: Sidecar,
    /// Cancelled when the sidecar drains: open streams end with `SHUTTING_DOWN`.
    shutdown: CancellationToken,
    /// Room for open `StreamNotifications`, across all connections.
    streams: Arc<Semaphore>,
    max_streams: usize,
}

impl PaymentsService {
    /// A service over `sidecar` with room for `max_streams` open `StreamNotifications`;
    /// streams end when `shutdown` is cancelled.
    pub fn new(sidecar: Sidecar, shutdown: CancellationToken, max_streams: usize) -> Self {
        Self {
            sidecar,
            shutdown,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
        }
    }

    /// The tonic server for this service, behind the bearer-token check.
    pub fn into_server(
        self,
        auth: super::auth::BearerAuth,
    ) -> tonic::service::interceptor::InterceptedService<
        pb::o2o_payments_server::O2oPaymentsServer<Self>,
        super::auth::BearerAuth,
    > {
        pb::o2o_payments_server::O2oPaymentsServer::with_interceptor(self, auth)
    }
}

/// Stream of `StreamNotificationsResponse`.
pub type NotificationStream =
    Pin<Box<dyn Stream<Item = Result<pb::StreamNotificationsResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl O2oPayments for PaymentsService {
    #[tracing::instrument(level = "debug", skip_all, fields(rpc = "GeneratePaymentCode"))]
    async fn generate_payment_code(
        &self,
        request: Request<pb::GeneratePaymentCodeRequest>,
    ) -> Result<Response<pb::GeneratePaymentCodeResponse>, Status> {
        let input = convert::payment_code_input(request.into_inner());
        let payment = self
            .sidecar
            .generate_payment_code(&input)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GeneratePaymentCodeResponse {
            payment: Some(convert::payment(payment)),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(rpc = "GetStatus"))]
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let r = request.into_inner();
        let payment = self
            .sidecar
            .get_status(&r.invoice_number, r.refresh)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GetStatusResponse {
            payment: Some(convert::payment(payment)),
        }))
    }

    type StreamNotificationsStream = NotificationStream;

    #[tracing::instrument(level = "debug", skip_all, fields(rpc = "StreamNotifications"))]
    async fn stream_notifications(
        &self,
        request: Request<pb::StreamNotificationsRequest>,
    ) -> Result<Response<Self::StreamNotificationsStream>, Status> {
        let Ok(slot) = self.streams.clone().try_acquire_owned() else {
            metrics::counter!("o2o_grpc_calls_refused_total", "reason" => "stream_limit")
                .increment(1);
            return Err(to_status(crate::error::Error::TooManyStreams {
                limit: self.max_streams,
            }));
        };
        let rx = stream::start(
            self.sidecar.clone(),
            request.into_inner(),
            self.shutdown.clone(),
            slot,
        )
        .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
