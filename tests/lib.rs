//! Loopback fixtures shared by the end-to-end tests in `tests/tests/`.
#![allow(missing_docs, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_tower::{BoxError, ClientInfo, ResettableIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::ServiceExt;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

/// Fails the test if `fut` does not finish within [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

pub async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let a = l.local_addr().expect("local addr");
    (l, a)
}

/// Serves a tower service over HTTP/1.1 and h2c with hyper-util (upgrades on),
/// inserting each connection's [`ClientInfo`] and [`proxy_tower::ResetHandle`]
/// (the socket is a [`ResettableIo`]). Returns the bound address.
pub async fn serve<S, B>(svc: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let svc = svc.clone();
            tokio::spawn(async move {
                let (io, abort) = ResettableIo::new(tcp);
                serve_connection(io, peer, Some(abort), svc).await;
            });
        }
    });
    addr
}

/// Serves one connection with hyper-util (HTTP/1.1 with upgrades, HTTP/2 with
/// extended CONNECT), inserting the peer's [`ClientInfo`], and its
/// [`proxy_tower::ResetHandle`] when it has one, into each request.
async fn serve_connection<S, B, I>(
    io: I,
    peer: SocketAddr,
    abort: Option<proxy_tower::ResetHandle>,
    svc: S,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ClientInfo::new(peer.ip()));
        if let Some(abort) = &abort {
            req.extensions_mut().insert(abort.clone());
        }
        svc.clone().oneshot(req)
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().enable_connect_protocol();
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

/// Serves an async function as an HTTP upstream (hyper-util, HTTP/1.1 and h2c).
pub async fn serve_fn<F, Fut, B>(f: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve(tower::service_fn(move |req| {
        let fut = f(req);
        async move { Ok::<_, Infallible>(fut.await) }
    }))
    .await
}

/// An upstream speaking raw TCP: it reads each request head, hands the head and
/// the socket to the test (like Go's `Hijack`), and the test answers.
pub async fn raw_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<(String, TcpStream)>) {
    let (listener, addr) = listener().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(head) = read_head(&mut tcp).await {
                    let _ = tx.send((head, tcp));
                }
            });
        }
    });
    (addr, rx)
}

/// Reads one HTTP message head, byte by byte so nothing behind it is consumed.
pub async fn read_head<R: tokio::io::AsyncRead + Unpin>(tcp: &mut R) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The value of header `name` in a message head (case-insensitive), if present.
pub fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Connects a raw TCP client to `addr` and sends an upgrade request for
/// `protocol`, plus `extra` bytes in the same write.
pub async fn send_upgrade(addr: SocketAddr, protocol: &str, extra: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect to proxy");
    tcp.set_nodelay(true).unwrap();
    let mut msg = format!(
        "GET /chat HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
    )
    .into_bytes();
    msg.extend_from_slice(extra);
    tcp.write_all(&msg).await.expect("write upgrade request");
    tcp
}

/// Shuts down the reading half of a socket (`shutdown(SHUT_RD)`), which tokio
/// has no method for; works under TLS too.
pub fn shutdown_read(tcp: &TcpStream) {
    socket2::SockRef::from(tcp)
        .shutdown(std::net::Shutdown::Read)
        .expect("shutdown(SHUT_RD)");
}

/// The address of a port nobody listens on.
pub async fn closed_port() -> SocketAddr {
    let (l, a) = listener().await;
    drop(l);
    a
}

/// Reads one response (head, and a body of `content-length` bytes).
pub async fn read_response(tcp: &mut TcpStream) -> (String, Vec<u8>) {
    let head = within("response head", read_head(tcp))
        .await
        .expect("response head");
    let len: usize = header_of(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    within("response body", tcp.read_exact(&mut body))
        .await
        .expect("response body");
    (head, body)
}

/// Deterministic pseudo-random bytes (xorshift64*), continuing from `seed`.
pub fn fill(seed: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        let v = seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// A request body of `len` pseudo-random bytes from `seed`, produced in 64 KiB
/// frames as it is read (never held whole).
pub struct Generated {
    seed: u64,
    left: usize,
}

impl Generated {
    pub fn new(seed: u64, len: usize) -> Self {
        Generated { seed, left: len }
    }

    /// The hash of what a `Generated::new(seed, len)` produces.
    pub fn hash(seed: u64, len: usize) -> u64 {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut g = Generated::new(seed, len);
        while let Some(chunk) = g.next_chunk() {
            h.write(&chunk);
        }
        h.finish()
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        let n = self.left.min(64 * 1024);
        let mut buf = vec![0u8; n];
        fill(&mut self.seed, &mut buf);
        self.left -= n;
        Some(Bytes::from(buf))
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.next_chunk().map(|c| Ok(http_body::Frame::data(c))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left as u64)
    }
}

/// Reads a body to its end; returns (length, hash).
pub async fn hash_body<B>(body: B) -> (usize, u64)
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut len = 0;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            h.write(&data);
            len += data.len();
        }
    }
    (len, h.finish())
}

/// At a raw upstream: answers `101 Switching Protocols` to `protocol`.
pub async fn switch_protocols<W: tokio::io::AsyncWrite + Unpin>(srv: &mut W, protocol: &str) {
    let msg = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n"
    );
    within("the 101 to be written", srv.write_all(msg.as_bytes()))
        .await
        .expect("write 101");
}

/// `GET path` on a new connection to `addr`; returns the response head and body.
pub async fn raw_get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
    let mut cli = TcpStream::connect(addr).await.expect("connect");
    cli.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    read_response(&mut cli).await
}

/// Opens a tunnel through the proxy at `addr` to a [`raw_upstream`]: sends an
/// upgrade request for `protocol`, answers 101 at the upstream, and checks the 101
/// at the client. Returns (client socket, upstream socket).
pub async fn open_tunnel(
    addr: SocketAddr,
    heads: &mut mpsc::UnboundedReceiver<(String, TcpStream)>,
    protocol: &str,
) -> (TcpStream, TcpStream) {
    let mut cli = send_upgrade(addr, protocol, b"").await;
    let (_, mut srv) = within("the upgrade request at the upstream", heads.recv())
        .await
        .expect("upstream listening");
    switch_protocols(&mut srv, protocol).await;
    let head = within("the 101 at the client", read_head(&mut cli))
        .await
        .expect("101");
    assert_eq!(status_of(&head), 101, "{head}");
    (cli, srv)
}

/// The `halfclose-proxy` binary next to the running one (both in
/// `target/<profile>/`), for the soak and the end-to-end benchmark.
pub fn sibling_proxy_binary() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("halfclose-proxy")))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "halfclose-proxy".into())
}

/// TLS fixtures: a test CA made at run time (no key is checked in), server
/// and client configs, a TLS server for a tower service, a raw TLS upstream.
pub mod tls {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::rustls::{self, RootCertStore, crypto::ring};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    /// A CA that issues leaf certificates.
    pub struct Pki {
        issuer: Issuer<'static, KeyPair>,
        ca: CertificateDer<'static>,
        pub ca_pem: String,
    }

    /// A leaf certificate and its key.
    pub struct Leaf {
        pub cert: CertificateDer<'static>,
        pub cert_pem: String,
        pub key_pem: String,
    }

    impl Pki {
        pub fn new() -> Pki {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "halfclose test CA");
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Pki {
                ca: cert.der().clone(),
                ca_pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A leaf for `names` (DNS names or IP addresses).
        pub fn leaf(&self, names: &[&str]) -> Leaf {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &self.issuer)
                .unwrap();
            Leaf {
                cert: cert.der().clone(),
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        }

        /// A client config trusting this CA, offering `alpn`.
        pub fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.clone()).unwrap();
            let mut config =
                rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(config))
        }
    }

    impl Leaf {
        /// A self-signed certificate for `names` that is also marked as a CA,
        /// as Go's `httptest` and `openssl req -x509` make them.
        pub fn self_signed_ca(names: &[&str]) -> Leaf {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Leaf {
                cert: cert.der().clone(),
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        }
    }

    impl Default for Pki {
        fn default() -> Self {
            Pki::new()
        }
    }

    impl Leaf {
        /// A server config serving this leaf, offering `alpn`.
        pub fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
            let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
            let mut config =
                rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(vec![self.cert.clone()], key)
                    .unwrap();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsAcceptor::from(Arc::new(config))
        }
    }

    /// A TLS client connection to `addr`, verified as `name`.
    pub async fn connect(
        connector: &TlsConnector,
        addr: SocketAddr,
        name: &str,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        within("TLS handshake", connector.connect(name, tcp))
            .await
            .expect("TLS handshake")
    }

    /// Serves a tower service over TLS with hyper-util (HTTP/1.1 with upgrades,
    /// or HTTP/2), each connection a `TlsStream<ClientIo>`, as a server that
    /// serves `proxy_tower::ReverseProxy` over TLS should.
    pub async fn serve_tls<S, B>(svc: S, acceptor: TlsAcceptor) -> SocketAddr
    where
        S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let svc = svc.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(tls) = acceptor.accept(proxy_tower::ClientIo::new(tcp)).await else {
                        return;
                    };
                    serve_connection(tls, peer, None, svc).await;
                });
            }
        });
        addr
    }

    pub type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

    /// A raw upstream over TLS: after the handshake it reads each request
    /// head and hands it and the TLS stream to the test.
    pub async fn raw_tls_upstream(
        acceptor: TlsAcceptor,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<(String, ServerTls)>) {
        let (listener, addr) = listener().await;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Ok(head) = read_head(&mut tls).await {
                        let _ = tx.send((head, tls));
                    }
                });
            }
        });
        (addr, rx)
    }
}
