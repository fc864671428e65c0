//! A tonic server that serves some gRPC services itself and forwards the others to
//! an upstream gRPC server over HTTP/2, through `ReverseProxyLayer` exactly as its
//! issue writes it. Messages are raw bytes (a small codec below), so no protobuf
//! compiler is needed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use e2e_tests::*;
use futures_util::{Stream, StreamExt, stream};
use http::uri::PathAndQuery;
use proxy_tower::ReverseProxyLayer;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
use tonic::transport::{Channel, Server, server::TcpIncoming};
use tonic::{Code, Request, Response, Status, Streaming};
use tower::service_fn;

/// Messages are their bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type BoxStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// The upstream's `legacy.Legacy` service: Unary, Fail, Count (server streaming,
/// then an error status in the trailers) and Echo (bidirectional).
#[derive(Clone)]
struct Legacy;

impl NamedService for Legacy {
    const NAME: &'static str = "legacy.Legacy";
}

impl tower::Service<http::Request<tonic::body::Body>> for Legacy {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Raw);
            let proto = req
                .headers()
                .get("x-forwarded-proto")
                .map(|v| v.to_str().unwrap().to_owned());
            let te = req
                .headers()
                .get("te")
                .map(|v| v.to_str().unwrap().to_owned());
            let res = match req.uri().path() {
                "/legacy.Legacy/Unary" => {
                    let svc = service_fn(move |r: Request<Bytes>| {
                        let seen = format!(
                            "{} (proto {}, te {})",
                            String::from_utf8_lossy(r.get_ref()),
                            proto.clone().unwrap_or_default(),
                            te.clone().unwrap_or_default()
                        );
                        async move { Ok::<_, Status>(Response::new(Bytes::from(seen))) }
                    });
                    grpc.unary(svc, req).await
                }
                "/legacy.Legacy/Fail" => {
                    let svc = service_fn(|_r: Request<Bytes>| async {
                        Err::<Response<Bytes>, _>(Status::failed_precondition("legacy says no"))
                    });
                    grpc.unary(svc, req).await
                }
                "/legacy.Legacy/Count" => {
                    let svc = service_fn(|r: Request<Bytes>| async move {
                        let n: u32 = String::from_utf8_lossy(r.get_ref()).parse().unwrap_or(0);
                        let items = (0..n).map(|i| Ok(Bytes::from(i.to_string())));
                        let out: BoxStream =
                            Box::pin(stream::iter(items).chain(stream::once(async {
                                Err(Status::aborted("counted enough"))
                            })));
                        Ok::<_, Status>(Response::new(out))
                    });
                    grpc.server_streaming(svc, req).await
                }
                "/legacy.Legacy/Echo" => {
                    let svc = service_fn(|r: Request<Streaming<Bytes>>| async move {
                        let out: BoxStream = Box::pin(
                            r.into_inner()
                                .map(|m| m.map(|b| Bytes::from(b.to_ascii_uppercase()))),
                        );
                        Ok::<_, Status>(Response::new(out))
                    });
                    grpc.streaming(svc, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(res)
        })
    }
}

async fn start_upstream() -> SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(
        Server::builder()
            .add_service(Legacy)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    addr
}

/// The front server: health served locally, legacy.Legacy forwarded (use 3 of the
/// proxy-tower issue, as written).
async fn start_front(upstream: SocketAddr) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let (listener, addr) = listener().await;
    let (_reporter, my_service) = tonic_health::server::health_reporter();
    let server = tonic::transport::Server::builder()
        .layer(
            ReverseProxyLayer::new(&format!("http://{upstream}"))?
                .http2_only()
                .path_prefix("/legacy.Legacy/"),
        )
        .add_service(my_service)
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    Ok(addr)
}

async fn client(addr: SocketAddr) -> tonic::client::Grpc<Channel> {
    let channel = within(
        "connect",
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("connect to front");
    tonic::client::Grpc::new(channel)
}

#[tokio::test]
async fn grpc_calls_through_the_layer() {
    let upstream = start_upstream().await;
    let front = start_front(upstream).await.unwrap();
    let mut grpc = client(front).await;

    // Unary, forwarded over HTTP/2: the upstream saw the proxy's headers and TE.
    grpc.ready().await.unwrap();
    let res = within(
        "unary",
        grpc.unary(
            Request::new(Bytes::from_static(b"hello")),
            PathAndQuery::from_static("/legacy.Legacy/Unary"),
            Raw,
        ),
    )
    .await
    .expect("unary call");
    assert_eq!(
        res.into_inner(),
        Bytes::from_static(b"hello (proto http, te trailers)")
    );

    // An error status from the upstream arrives intact.
    grpc.ready().await.unwrap();
    let err = within(
        "fail",
        grpc.unary(
            Request::new(Bytes::new()),
            PathAndQuery::from_static("/legacy.Legacy/Fail"),
            Raw,
        ),
    )
    .await
    .expect_err("status");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "legacy says no");

    // Server streaming: messages, then a status carried in the trailers.
    grpc.ready().await.unwrap();
    let res = within(
        "count",
        grpc.server_streaming(
            Request::new(Bytes::from_static(b"3")),
            PathAndQuery::from_static("/legacy.Legacy/Count"),
            Raw,
        ),
    )
    .await
    .expect("count call");
    let mut stream = res.into_inner();
    let mut got = Vec::new();
    let status = loop {
        match within("stream item", stream.message()).await {
            Ok(Some(m)) => got.push(String::from_utf8_lossy(&m).into_owned()),
            Ok(None) => panic!("stream ended without the trailer status"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, ["0", "1", "2"]);
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "counted enough");

    // Bidirectional streaming: each message answered as it goes.
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let outbound = tokio_stream_from(rx);
    let res = within(
        "echo",
        grpc.streaming(
            Request::new(outbound),
            PathAndQuery::from_static("/legacy.Legacy/Echo"),
            Raw,
        ),
    )
    .await
    .expect("echo call");
    let mut replies = res.into_inner();
    for word in ["one", "two", "three"] {
        tx.send(Bytes::from(word)).unwrap();
        let reply = within("echo reply", replies.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, Bytes::from(word.to_uppercase()));
    }
    drop(tx);
    assert!(
        within("echo end", replies.message())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn local_services_stay_local() {
    let upstream = start_upstream().await;
    let front = start_front(upstream).await.unwrap();
    let channel = Channel::from_shared(format!("http://{front}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let res = within(
        "health",
        health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("local health check");
    assert_eq!(
        res.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A method of neither service: answered by the front's own router, not forwarded.
    let mut grpc = client(front).await;
    grpc.ready().await.unwrap();
    let err = grpc
        .unary(
            Request::new(Bytes::new()),
            PathAndQuery::from_static("/other.Other/Call"),
            Raw,
        )
        .await
        .expect_err("unimplemented");
    assert_eq!(err.code(), Code::Unimplemented);
}

/// An mpsc receiver as a stream.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
) -> impl Stream<Item = Bytes> + Send + 'static {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}
