//! One client connection, from accept to close: protocol detection under the
//! header-read timeout, then hyper's HTTP/1 or HTTP/2 server, closed when idle,
//! shed under pressure, and shut down gracefully on a signal.
//!
//! hyper-util's auto builder received a connection's first bytes to tell HTTP/1
//! from HTTP/2 with no time limit, so a socket that sends nothing holds its
//! connection slot forever. Here the first bytes (for HTTP/2, the preface and
//! the first SETTINGS frame) must arrive within the header-read timeout, and
//! an HTTP/1 connection must have sent a whole request head by then.
//!
//! The parts, in the order a connection meets them, with what each imports
//! (the arrows point down this list):
//!
//! - `open` (imports `server`, `shared`): the TLS handshake or the protocol
//!   sniff, under the first-request deadline; the `ClientIo`.
//! - `server` (`watch`, `head_timer`, `shared`): hyper's HTTP/1 or HTTP/2
//!   server, and the per-request service (client info, in-flight guard).
//! - `watch` (`doorbell`, `shared`): the loop around the hyper connection
//!   (first-head deadline, idle timeout, pressure, shutdown) and the
//!   in-flight tracking it judges idleness by.
//! - `doorbell`, `head_timer`, `shared` (nothing of the crate): cheap
//!   wake-ups for the loop's rare events; hyper's header-read timer, one per
//!   connection; the settings, signals, service trait and protocol.
//!
//! This module re-exports what `listen` and `serve` use. Outside `conn` it
//! imports `proxy_protocol` alone (the header a listener may expect): it
//! knows nothing of `serve`, `listen` or the upstreams (the service comes
//! in as a type parameter).

mod doorbell;
mod head_timer;
mod open;
mod server;
mod shared;
mod watch;

pub(crate) use open::serve;
pub(crate) use shared::{Pressure, RequestService, Settings, Signals, shutting_down};

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::body::Incoming;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{Semaphore, mpsc, watch};

    use super::*;

    /// A connection's task holds room for its opening steps alone: hyper's
    /// HTTP/1 or HTTP/2 connection, and TLS, are boxed once known. Every
    /// spawn copies the task's future whole, and so does its end; in place,
    /// they made it 9.8 KB, which cost a reconnect storm 12% more CPU per
    /// tunnel.
    #[tokio::test]
    async fn a_connection_task_holds_no_protocol_in_place() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let peer = tcp.local_addr().unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let service = tower::service_fn(|_: http::Request<Incoming>| async {
            Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
        });
        let settings = Arc::new(Settings::new(Duration::from_secs(1), None, None, 100));
        let (_shutdown_tx, shutdown) = watch::channel(false);
        let (running, _done) = mpsc::channel(1);
        let signals = Signals {
            shutdown,
            pressure: Pressure::new(),
            running,
        };
        let task = serve(tcp, peer, permit, service, settings, signals);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "a connection's task is {size} bytes");
    }
}
