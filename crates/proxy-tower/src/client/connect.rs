//! How the default client reaches its upstream: TCP, then TLS for `https`
//! ([`crate::tls`] holds the settings). Imports `io` and `tls`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::BoxError;

/// A connection to the upstream: a TCP socket, or TLS over one.
pub(crate) enum UpstreamIo {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamIo::Tcp(tcp) => tcp,
            #[cfg(feature = "tls")]
            UpstreamIo::Tls(tls) => tls.get_ref().0,
        }
    }

    /// The TCP socket, when bytes cross it as they are (no TLS).
    pub(crate) fn bare_tcp(&mut self) -> Option<&mut TcpStream> {
        match self {
            UpstreamIo::Tcp(tcp) => Some(tcp),
            #[cfg(feature = "tls")]
            UpstreamIo::Tls(_) => None,
        }
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let connected = self.tcp().connected();
        match self {
            #[cfg(feature = "tls")]
            UpstreamIo::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                connected.negotiated_h2()
            }
            _ => connected,
        }
    }
}

impl crate::io::Forward for UpstreamIo {
    fn stream(&mut self) -> &mut dyn crate::io::Stream {
        match self {
            UpstreamIo::Tcp(io) => io,
            #[cfg(feature = "tls")]
            UpstreamIo::Tls(io) => &mut **io,
        }
    }

    fn stream_ref(&self) -> &dyn crate::io::Stream {
        match self {
            UpstreamIo::Tcp(io) => io,
            #[cfg(feature = "tls")]
            UpstreamIo::Tls(io) => &**io,
        }
    }
}

// Over TLS, shutting down is `close_notify`, then FIN.
crate::io::forward_io!(UpstreamIo);

/// Opens connections to the upstream: TCP (with `TCP_NODELAY` and the connect
/// timeout), then for `https` a TLS handshake with SNI and certificate checks
/// against the upstream's host name, bounded by the same timeout.
#[derive(Clone)]
pub(crate) struct Connector {
    http: HttpConnector,
    timeout: Option<Duration>,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    pub(crate) fn new(timeout: Option<Duration>) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(timeout);
        // The scheme decides TLS here, not in the TCP connector.
        http.enforce_http(false);
        Connector {
            http,
            timeout,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Speaks TLS with `config` to `https` upstreams.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsConnector::from(config));
        self
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<TokioIo<UpstreamIo>, BoxError>> + Send>>;

impl Service<Uri> for Connector {
    type Response = TokioIo<UpstreamIo>;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> ConnectFuture {
        let tcp = self.http.call(uri.clone());
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        #[cfg(feature = "tls")]
        let tls = self.tls.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let tcp = tcp.await?.into_inner();
            if !https {
                return Ok(TokioIo::new(UpstreamIo::Tcp(tcp)));
            }
            #[cfg(feature = "tls")]
            if let Some(tls) = tls {
                let host = uri
                    .host()
                    .unwrap_or_default()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
                let handshake = tls.connect(name, tcp);
                let stream = match timeout {
                    Some(t) => tokio::time::timeout(t, handshake)
                        .await
                        .map_err(|_| format!("TLS handshake with {host} took over {t:?}"))?,
                    None => handshake.await,
                }
                .map_err(|e| format!("TLS handshake with {host} failed: {e}"))?;
                return Ok(TokioIo::new(UpstreamIo::Tls(Box::new(stream))));
            }
            let _ = (tcp, timeout);
            Err("https upstreams need proxy-tower's `tls` feature".into())
        })
    }
}
