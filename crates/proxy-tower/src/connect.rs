//! How the default client reaches its upstream: TCP, then TLS for `https`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

macro_rules! each {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            UpstreamIo::Tcp($io) => {
                let $io = Pin::new($io);
                $e
            }
            #[cfg(feature = "tls")]
            UpstreamIo::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $e
            }
        }
    };
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_flush(cx))
    }

    /// Over TLS: `close_notify`, then FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tcp(io) => io.is_write_vectored(),
            #[cfg(feature = "tls")]
            UpstreamIo::Tls(io) => io.is_write_vectored(),
        }
    }
}

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

/// TLS settings for `https` upstreams.
#[cfg(feature = "tls")]
pub(crate) mod tls {
    use std::sync::Arc;

    use proxy_core::ProxyError;
    use rustls::RootCertStore;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    /// The trust anchors of a PEM CA bundle.
    pub(crate) fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, ProxyError> {
        let bad = |e: &dyn std::fmt::Display| {
            ProxyError::invalid_upstream(format!("upstream CA bundle: {e}"))
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        if roots.is_empty() {
            return Err(bad(&"no PEM certificate in it"));
        }
        Ok(roots)
    }

    /// A client config trusting `roots` (or, without them, the bundled web PKI
    /// roots), offering `alpn`. The ring provider is named here rather than
    /// taken from the process default, so another crate's choice cannot change
    /// or break it.
    pub(crate) fn client_config(
        roots: Option<&RootCertStore>,
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let roots = match roots {
            Some(r) => r.clone(),
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            // As in `rustls::ClientConfig::builder`: ring supports them.
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}
