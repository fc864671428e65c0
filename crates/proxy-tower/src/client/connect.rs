//! How the default client reaches its upstream: TCP, then TLS for `https`
//! ([`crate::tls`] holds the settings). Imports `io` and `tls`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
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
    /// Without hyper-util's `HttpInfo` (nothing here reads it, and it costs
    /// a `getpeername` and a `getsockname` per connection).
    fn connected(&self) -> Connected {
        let connected = Connected::new();
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
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        // An address needs no resolver: one socket, made non-blocking as it
        // is made, and connected. A name goes through hyper-util's
        // connector (getaddrinfo, then each address in turn).
        let tcp = match ip_of(&uri, https) {
            Some(addr) => Either::Left(connect_to(addr, self.timeout)),
            None => Either::Right(self.http.call(uri.clone())),
        };
        #[cfg(feature = "tls")]
        let tls = self.tls.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let tcp = match tcp {
                Either::Left(direct) => direct.await?,
                Either::Right(resolved) => resolved.await?.into_inner(),
            };
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

/// The socket address of `uri` when its host is an IP address (with the
/// scheme's port when it names none).
fn ip_of(uri: &Uri, https: bool) -> Option<std::net::SocketAddr> {
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: std::net::IpAddr = host.parse().ok()?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Some((ip, port).into())
}

/// What failed when connecting to an address: the system's error, with
/// where.
#[derive(Debug)]
pub(crate) struct TcpConnectError {
    addr: std::net::SocketAddr,
    source: std::io::Error,
}

impl std::fmt::Display for TcpConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tcp connect error to {}: {}", self.addr, self.source)
    }
}

impl std::error::Error for TcpConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Connects to `addr` with `TCP_NODELAY`, within `timeout`: `socket` (with
/// `SOCK_NONBLOCK`), `setsockopt`, `connect`, and `SO_ERROR` once writable.
/// (hyper-util's connector adds two `fcntl`s, and for `HttpInfo` a
/// `getpeername` and a `getsockname`: a tenth of the system calls of a
/// tunnel's opening.)
async fn connect_to(
    addr: std::net::SocketAddr,
    timeout: Option<Duration>,
) -> Result<TcpStream, BoxError> {
    let fail = |source| TcpConnectError { addr, source };
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(fail)?;
    socket.set_nodelay(true).map_err(fail)?;
    let connect = socket.connect(addr);
    let tcp = match timeout {
        Some(t) => tokio::time::timeout(t, connect).await.map_err(|_| {
            fail(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {t:?}"),
            ))
        })?,
        None => connect.await,
    }
    .map_err(fail)?;
    Ok(tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_host_needs_no_resolver() {
        let at = |u: &str, https| ip_of(&u.parse().unwrap(), https);
        assert_eq!(
            at("http://127.0.0.1:8080", false),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            at("http://127.0.0.1", false),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            at("https://10.0.0.1", true),
            Some("10.0.0.1:443".parse().unwrap())
        );
        assert_eq!(
            at("http://[::1]:9000", false),
            Some("[::1]:9000".parse().unwrap())
        );
        assert_eq!(at("http://localhost:8080", false), None);
        assert_eq!(at("http://example.com", false), None);
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_address() {
        // A port that was just free: nothing listens on it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = connect_to(addr, Some(Duration::from_secs(5)))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
        let io = err
            .downcast_ref::<TcpConnectError>()
            .map(|e| e.source.kind());
        assert_eq!(io, Some(std::io::ErrorKind::ConnectionRefused), "{text}");
    }

    #[tokio::test]
    async fn a_connection_has_no_delay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tcp, accepted) = tokio::join!(connect_to(addr, None), listener.accept());
        let (tcp, _) = (tcp.unwrap(), accepted.unwrap());
        assert!(tcp.nodelay().unwrap());
        assert_eq!(tcp.peer_addr().unwrap(), addr);
    }
}
