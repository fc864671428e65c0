//! How the default client reaches its upstream: TCP, then TLS for `https`.

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

/// TLS settings for `https` upstreams.
#[cfg(feature = "tls")]
pub(crate) mod tls {
    use std::sync::Arc;

    use proxy_core::ProxyError;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

    /// The trust anchors of a custom CA bundle, and the bundle's certificates
    /// themselves (for [`Pinned`]).
    #[derive(Debug)]
    pub(crate) struct CustomCa {
        roots: Arc<RootCertStore>,
        certs: Vec<CertificateDer<'static>>,
    }

    /// Reads a PEM CA bundle.
    pub(crate) fn ca_from_pem(pem: &[u8]) -> Result<CustomCa, ProxyError> {
        let bad = |e: &dyn std::fmt::Display| {
            ProxyError::invalid_upstream(format!("upstream CA bundle: {e}"))
        };
        let mut roots = RootCertStore::empty();
        let mut certs = Vec::new();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| bad(&e))?;
            roots.add(cert.clone()).map_err(|e| bad(&e))?;
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(bad(&"no PEM certificate in it"));
        }
        Ok(CustomCa {
            roots: Arc::new(roots),
            certs,
        })
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A client config trusting `ca` (or, without it, the bundled web PKI
    /// roots), offering `alpn`. The ring provider is named here rather than
    /// taken from the process default, so another crate's choice cannot change
    /// or break it.
    pub(crate) fn client_config(
        ca: Option<&CustomCa>,
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            // As in `rustls::ClientConfig::builder`: ring supports them.
            .expect("the ring provider supports TLS 1.2 and 1.3");
        let mut config = match ca {
            None => builder
                .with_root_certificates(RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                })
                .with_no_client_auth(),
            Some(ca) => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(ca.roots.clone(), provider())
                        .build()
                        // Only fails without roots, and `ca_from_pem` ensures some.
                        .expect("a non-empty root store");
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Pinned {
                        webpki,
                        certs: ca.certs.clone(),
                    }))
                    .with_no_client_auth()
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Web PKI verification against a custom CA bundle, which also accepts an
    /// upstream whose certificate is itself in the bundle though it is marked
    /// as a CA: the self-signed certificates `openssl req -x509` and Go's
    /// `httptest` make. Go accepts them the same way. The name is still
    /// checked, and the dates are (webpki checks them before the CA flag).
    #[derive(Debug)]
    struct Pinned {
        webpki: Arc<WebPkiServerVerifier>,
        certs: Vec<CertificateDer<'static>>,
    }

    fn is_ca_used_as_end_entity(e: &Error) -> bool {
        match e {
            Error::InvalidCertificate(CertificateError::Other(other)) => matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ),
            _ => false,
        }
    }

    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            match self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Err(e)
                    if is_ca_used_as_end_entity(&e)
                        && self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) =>
                {
                    let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                    rustls::client::verify_server_name(&parsed, server_name)?;
                    Ok(ServerCertVerified::assertion())
                }
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.webpki.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.webpki.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.webpki.supported_verify_schemes()
        }
    }
}
