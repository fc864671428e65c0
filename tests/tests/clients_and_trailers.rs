//! A custom tower client under the proxy, and trailers in both directions.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use e2e_tests::*;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proxy_tower::{RequestBody, ReverseProxy};
use tower::ServiceExt;

type Seen = Arc<Mutex<Vec<(Uri, Version, HeaderMap)>>>;

/// Any tower service can be the proxy's client: here a test double that records
/// what it is asked and answers itself.
#[tokio::test]
async fn custom_client_service() {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let client = tower::service_fn(move |req: Request<RequestBody>| {
        record
            .lock()
            .unwrap()
            .push((req.uri().clone(), req.version(), req.headers().clone()));
        async move {
            let fail = req.uri().path().ends_with("/fail");
            if fail {
                return Err(std::io::Error::other("double refuses"));
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Ok(Response::new(Full::new(Bytes::from(format!(
                "double got {} bytes",
                body.len()
            )))))
        }
    });
    let proxy = ReverseProxy::builder("http://upstream.invalid:9000/base")
        .build_with_client(client)
        .unwrap();

    let req = Request::post("/x?y=1")
        .header("host", "front")
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let res = within("proxy call", proxy.clone().oneshot(req))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "double got 5 bytes"
    );
    {
        let seen = seen.lock().unwrap();
        let (uri, version, headers) = &seen[0];
        assert_eq!(uri, "http://upstream.invalid:9000/base/x?y=1");
        assert_eq!(*version, Version::HTTP_11);
        assert_eq!(headers["host"], "upstream.invalid:9000");
        assert_eq!(headers["x-forwarded-host"], "front");
    }

    // A client error becomes a 502; the proxy itself never fails.
    let req = Request::get("/fail").body(Empty::<Bytes>::new()).unwrap();
    let res: Response<_> = within("proxy call", proxy.oneshot(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
}

fn trailers(name: &'static str, value: &'static str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert(name, value.parse().unwrap());
    t
}

/// A body of one data frame, then trailers.
type WithTrailers =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn body_with_trailers(data: &'static [u8], t: HeaderMap) -> WithTrailers {
    StreamBody::new(futures_util::stream::iter(vec![
        Ok(Frame::data(Bytes::from_static(data))),
        Ok(Frame::trailers(t)),
    ]))
}

/// An upstream that checks the request's trailers and answers with its own.
async fn trailer_upstream() -> std::net::SocketAddr {
    serve_fn(|req: Request<hyper::body::Incoming>| async move {
        let collected = req.into_body().collect().await.unwrap();
        let got = collected
            .trailers()
            .and_then(|t| t.get("x-req-trailer"))
            .map(|v| v.to_str().unwrap().to_owned());
        let data: &'static [u8] = if got.as_deref() == Some("1") {
            b"request trailer arrived"
        } else {
            b"request trailer lost"
        };
        let mut res = Response::new(body_with_trailers(data, trailers("x-res-trailer", "2")));
        res.headers_mut()
            .insert("trailer", "x-res-trailer".parse().unwrap());
        res
    })
    .await
}

/// h2c client -> proxy -> HTTP/2 upstream: trailers pass both ways.
#[tokio::test]
async fn trailers_both_ways_over_http2() {
    let upstream = trailer_upstream().await;
    let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
        .http2_only()
        .build()
        .unwrap();
    let proxy = serve(proxy).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::post(format!("http://{proxy}/t"))
        .header("te", "trailers")
        .body(body_with_trailers(
            b"payload",
            trailers("x-req-trailer", "1"),
        ))
        .unwrap();
    let res = within("response", client.request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let collected = within("body", res.into_body().collect()).await.unwrap();
    let t = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), "request trailer arrived");
    assert_eq!(
        t.as_ref()
            .and_then(|t| t.get("x-res-trailer"))
            .map(|v| v.to_str().unwrap()),
        Some("2")
    );
}

/// h2c client -> proxy -> HTTP/1.1 upstream: trailers cross chunked encoding
/// both ways (HTTP/1.1 sends the trailers a `Trailer` field announces).
#[tokio::test]
async fn trailers_both_ways_with_an_http1_upstream() {
    let upstream = trailer_upstream().await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::post(format!("http://{proxy}/t"))
        .header("te", "trailers")
        .header("trailer", "x-req-trailer")
        .body(body_with_trailers(
            b"payload",
            trailers("x-req-trailer", "1"),
        ))
        .unwrap();
    let res = within("response", client.request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let collected = within("body", res.into_body().collect()).await.unwrap();
    let t = collected.trailers().cloned();
    let body = collected.to_bytes();
    assert_eq!(
        t.as_ref()
            .and_then(|t| t.get("x-res-trailer"))
            .map(|v| v.to_str().unwrap()),
        Some("2"),
        "{body:?}"
    );
    assert_eq!(body, "request trailer arrived");
}

/// A small request body of stated length with trailers (an HTTP/2 client
/// may send both) takes the proxy's own HTTP/1.1 path, which sends the
/// trailers with the body chunked: none are dropped, announced or not.
#[tokio::test]
async fn request_trailers_of_a_small_body_are_not_dropped() {
    let upstream = trailer_upstream().await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::post(format!("http://{proxy}/t"))
        .header("content-length", "7")
        .body(body_with_trailers(
            b"payload",
            trailers("x-req-trailer", "1"),
        ))
        .unwrap();
    let res = within("response", client.request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = within("body", res.into_body().collect()).await.unwrap();
    assert_eq!(body.to_bytes(), "request trailer arrived");
}

#[test]
fn bad_upstreams_are_configuration_errors() {
    for bad in ["not a uri", "/relative", "ftp://host/"] {
        let err = ReverseProxy::new(bad).unwrap_err();
        assert!(err.is_invalid_upstream(), "{bad}: {err}");
    }
    // The default client speaks TLS (the `tls` feature, on by default).
    assert!(ReverseProxy::new("https://host/").is_ok());
    // With a client of one's own, https is the client's business.
    let client = tower::service_fn(|_req: Request<RequestBody>| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    });
    assert!(
        ReverseProxy::builder("https://host/")
            .build_with_client(client)
            .is_ok()
    );
}
