//! Optional TLS for clusters without a mesh: one certificate and key (PEM files) serve both the
//! gRPC listener and the notification listener.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    },
    server::TlsStream,
};

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate chain and its key, as PEM text.
#[derive(Clone)]
pub struct TlsIdentity {
    /// PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Reads and checks both files; the error names which file is wrong.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, (&'static str, String)> {
        let cert_pem = std::fs::read(cert).map_err(|e| {
            (
                "--tls-cert-file",
                format!("cannot read {}: {e}", cert.display()),
            )
        })?;
        let key_pem = std::fs::read(key).map_err(|e| {
            (
                "--tls-key-file",
                format!("cannot read {}: {e}", key.display()),
            )
        })?;
        let identity = Self { cert_pem, key_pem };
        identity
            .server_config()
            .map_err(|e| ("--tls-cert-file", e))?;
        Ok(identity)
    }

    /// A rustls server configuration (HTTP/1.1 and HTTP/2 by ALPN).
    pub fn server_config(&self) -> Result<ServerConfig, String> {
        let certs = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate PEM: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate in the PEM file".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("private key PEM: {e}"))?;
        let mut config = ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A listener that hands out TLS streams over the connections of another listener (a
/// [`crate::listen::BoundedListener`], so the connection cap counts handshakes too).
/// Handshakes run concurrently, each bounded by a timeout, so a slow client never holds up
/// the others.
pub struct TlsListener<L: axum::serve::Listener> {
    inner: L,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<Handshaken<L>>>,
}

/// A connection whose TLS handshake completed, with its peer's address.
type Handshaken<L> = (
    TlsStream<<L as axum::serve::Listener>::Io>,
    <L as axum::serve::Listener>::Addr,
);

impl<L: axum::serve::Listener> std::fmt::Debug for TlsListener<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

impl<L: axum::serve::Listener> TlsListener<L> {
    /// TLS over `inner` with `identity`.
    pub fn new(inner: L, identity: &TlsIdentity) -> Result<Self, String> {
        Ok(Self {
            inner,
            acceptor: TlsAcceptor::from(Arc::new(identity.server_config()?)),
            handshakes: JoinSet::new(),
        })
    }
}

impl<L> axum::serve::Listener for TlsListener<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Io = TlsStream<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                (stream, addr) = self.inner.accept() => {
                    let acceptor = self.acceptor.clone();
                    self.handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => Some((tls, addr)),
                            Ok(Err(e)) => {
                                tracing::debug!(%addr, error = %e, "TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                tracing::debug!(%addr, "TLS handshake timed out");
                                None
                            }
                        }
                    });
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(ready)) = done {
                        return ready;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
