//! The fast path of the default client: HTTP/1.1 requests with no body, or a
//! small one of known length, to a plain `http` upstream, sent and answered
//! in the task that calls the client.
//!
//! hyper-util's pooled client runs every upstream connection as its own task
//! and hands each request to it through a channel, and the response (and each
//! body chunk) back through others: four task wake-ups per request, and a
//! shared pool lock. Most proxied requests are GETs without a body or small
//! POSTs, which need none of that: here the caller's task writes the request
//! head, reads the response head, and (for a body already read with the head,
//! the common case for small responses) gives the connection back to the pool
//! before it returns the response. Idle connections are kept per thread and
//! taken from the caller's thread first, so that with one runtime per thread
//! a connection is used on the runtime that opened it.
//!
//! An upgrade request (no body) takes this path too: a `101` hands the
//! connection, and the bytes read after the head, to the tunnel through the
//! response's [`Upgraded`] extension. Larger or streamed request bodies and
//! `https` upstreams still go through hyper-util: sending a long body while
//! the response may already be coming back needs a task of its own anyway.
//!
//! By concern: [`codec`] is the wire format, sans-IO (every parsing and
//! framing rule, tested and fuzzed on byte slices); [`pool`] the idle
//! connections; [`body`] the response body over a connection; this module
//! the exchange that ties them (write, read the head, retry a stale
//! connection once).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::{BoxError, RequestBody};

mod body;
pub(crate) mod codec;
mod error;
mod pool;

pub(crate) use body::Body;
use codec::{BodyDecoder, ResponseReader};
pub(crate) use error::{ConnectError, Error};
use pool::Conn;
pub(crate) use pool::Pool;

/// The largest request body sent on the fast path: read whole before the
/// request goes out, then written with the head in one write, which a socket
/// buffer takes at once (so the body and an early response cannot wait on
/// each other).
const MAX_BODY: u64 = 64 * 1024;

/// True if `req` can take the fast path: no body, or one of a known length
/// up to [`MAX_BODY`]; not CONNECT; and an upgrade only without a body.
pub(crate) fn fits(req: &Request<RequestBody>) -> bool {
    use http_body::Body as _;
    let body = req.body();
    let upgrade = req.headers().contains_key(http::header::UPGRADE);
    let body_fits = match upgrade {
        true => body.is_end_stream(),
        false => body.is_end_stream() || body.size_hint().exact().is_some_and(|n| n <= MAX_BODY),
    };
    body_fits && req.method() != Method::CONNECT
}

/// The upstream connection of a `101 Switching Protocols` answered on the
/// fast path, and the bytes of the new protocol read with the head: a
/// response extension, which the proxy takes for the tunnel's upstream end.
/// (Dropped unused, it closes the connection.)
#[derive(Clone)]
pub(crate) struct Upgraded(Arc<std::sync::Mutex<Option<(tokio::net::TcpStream, Bytes)>>>);

impl Upgraded {
    /// The connection and the bytes already read from it; `None` once
    /// taken.
    pub(crate) fn take(&self) -> Option<(tokio::net::TcpStream, Bytes)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The whole body of a request that [`fits`], and its trailers; its errors
/// (a client gone, a size limit in front of the proxy) are returned as they
/// are.
async fn read_body(body: RequestBody) -> Result<(Bytes, Option<HeaderMap>), BoxError> {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    if body.is_end_stream() {
        return Ok((Bytes::new(), None));
    }
    let announced = body.size_hint().exact();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    if announced != Some(data.len() as u64) {
        return Err(format!(
            "the request body was {} bytes, not the {announced:?} it announced",
            data.len()
        )
        .into());
    }
    Ok((data, trailers))
}

/// Sends `req` (which [`fits`]) over a pooled connection of `pool`, or a new
/// one, and reads the response head.
pub(crate) async fn send(
    pool: Arc<Pool>,
    req: Request<RequestBody>,
) -> Result<Response<Body>, BoxError> {
    let (parts, body) = req.into_parts();
    let (body, trailers) = read_body(body).await?;
    // The head, the body and any trailers in one write.
    let request = codec::encode_request(&parts, &body, trailers.as_ref());
    let mut retry = is_idempotent(&parts);
    let mut fresh = false;
    let upgrade = parts.headers.contains_key(http::header::UPGRADE);
    loop {
        let idle = if fresh { None } else { pool.checkout() };
        let reused = idle.is_some();
        let conn = match idle {
            Some(conn) => conn,
            None => pool.connect().await?,
        };
        match round_trip(conn, &request, &parts.method, upgrade).await {
            // The connection is the tunnel's now, never the pool's.
            Ok((head, conn))
                if upgrade && head.response.status() == StatusCode::SWITCHING_PROTOCOLS =>
            {
                let pool::Conn { io, buf } = conn;
                // Copied out: a slice would keep the whole read buffer
                // alive for the tunnel's life.
                let rest = match buf.is_empty() {
                    true => Bytes::new(),
                    false => Bytes::copy_from_slice(&buf),
                };
                let mut res = head.response.map(|()| Body::empty(&pool));
                res.extensions_mut()
                    .insert(Upgraded(Arc::new(std::sync::Mutex::new(Some((io, rest))))));
                return Ok(res);
            }
            Ok((head, conn)) => {
                let decoder = BodyDecoder::new(head.body);
                let body = Body::new(&pool, conn, decoder, head.keep_alive)?;
                return Ok(head.response.map(|()| body));
            }
            // A reused connection the upstream closed as we sent: once
            // more on a new one, when sending twice is harmless, as Go's
            // Transport does.
            Err(e) if reused && retry && e.nothing_received => {
                tracing::debug!(error = %e.error, "pooled upstream connection failed; retrying on a new one");
                retry = false;
                fresh = true;
            }
            Err(e) => return Err(e.error.into()),
        }
    }
}

/// A failed exchange, and whether the upstream answered nothing at all.
struct Failed {
    error: Error,
    nothing_received: bool,
}

/// Writes the request and reads the final response head.
async fn round_trip(
    mut conn: Conn,
    request: &[u8],
    method: &Method,
    upgrade: bool,
) -> Result<(codec::Head, Conn), Failed> {
    // If the write fails, the upstream may still have answered before it
    // closed (a 408 on an old connection, a 413 before the body): that
    // answer is read, and relayed, and the connection not reused.
    let write_error = conn.io.write_all(request).await.err();
    let mut reader = ResponseReader::new(method).upgrading(upgrade);
    loop {
        match reader.read(&mut conn.buf) {
            Ok(Some(mut head)) => {
                head.keep_alive &= write_error.is_none();
                return Ok((head, conn));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Failed {
                    error: Error::Codec(e),
                    nothing_received: false,
                });
            }
        }
        let nothing_yet = reader.received_nothing(&conn.buf);
        let error = match conn.fill().await {
            Ok(0) => Error::Codec(reader.truncated(&conn.buf)),
            Ok(_) => continue,
            Err(e) => Error::Io("reading the response", e),
        };
        // A failed write explains the end better than the read after it.
        return Err(Failed {
            error: match write_error {
                Some(e) => Error::Io("sending the request", e),
                None => error,
            },
            nothing_received: nothing_yet,
        });
    }
}

/// Safe to send twice: Go's Transport's rule (the safe methods of RFC 9110
/// section 9.2.1, or an `Idempotency-Key`). PUT and DELETE are idempotent by
/// RFC 9110 section 9.2.2, but not every application makes them so.
fn is_idempotent(parts: &http::request::Parts) -> bool {
    matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || parts.headers.contains_key("idempotency-key")
        || parts.headers.contains_key("x-idempotency-key")
}
