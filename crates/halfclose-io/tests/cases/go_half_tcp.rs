// The cases of `tests/go_half_tcp.rs` and `tests/go_half_tcp_spliced.rs`.


use common::*;
use halfclose_io::{Side, Tunnel};

#[tokio::test]
async fn server_close_read() {
    let mut r = relay(Tunnel::new()).await;
    r.server = close_read(r.server);
    must_write(&mut r.server, "server sends").await;
    must_read(&mut r.client, "server sends").await;
}

#[tokio::test]
async fn server_close_write() {
    let mut r = relay(Tunnel::new()).await;
    close_write(&mut r.server).await;
    must_write(&mut r.client, "client sends").await;
    must_read(&mut r.server, "client sends").await;
    must_read_eof(&mut r.client).await;
}

#[tokio::test]
async fn client_close_read() {
    let mut r = relay(Tunnel::new()).await;
    r.client = close_read(r.client);
    must_write(&mut r.client, "client sends").await;
    must_read(&mut r.server, "client sends").await;
}

#[tokio::test]
async fn client_close_write() {
    let mut r = relay(Tunnel::new()).await;
    close_write(&mut r.client).await;
    must_write(&mut r.server, "server sends").await;
    must_read(&mut r.client, "server sends").await;
    must_read_eof(&mut r.server).await;
}

#[tokio::test]
async fn tunnel_stays_open_after_one_fin_and_ends_after_both() {
    let mut r = relay(Tunnel::new()).await;
    close_write(&mut r.client).await;
    must_read_eof(&mut r.server).await;
    // The reverse direction still carries data, and the tunnel has not ended.
    must_write(&mut r.server, "late reply").await;
    must_read(&mut r.client, "late reply").await;
    assert!(!r.tunnel.is_finished(), "tunnel ended after only one FIN");
    close_write(&mut r.server).await;
    must_read_eof(&mut r.client).await;
    let t = r.finish().await.expect("clean end");
    assert_eq!((t.a_to_b, t.b_to_a), (0, 10));
    assert_eq!(t.first_eof, Some(Side::A));
}

#[tokio::test]
async fn both_close_write_client_first() {
    let mut r = relay(Tunnel::new()).await;
    must_write(&mut r.client, "ping").await;
    close_write(&mut r.client).await;
    must_read(&mut r.server, "ping").await;
    must_read_eof(&mut r.server).await;
    must_write(&mut r.server, "pong!").await;
    close_write(&mut r.server).await;
    must_read(&mut r.client, "pong!").await;
    must_read_eof(&mut r.client).await;
    let t = r.finish().await.expect("clean end");
    assert_eq!((t.a_to_b, t.b_to_a, t.first_eof), (4, 5, Some(Side::A)));
}

#[tokio::test]
async fn both_close_write_server_first() {
    let mut r = relay(Tunnel::new()).await;
    must_write(&mut r.server, "hello").await;
    close_write(&mut r.server).await;
    must_read(&mut r.client, "hello").await;
    must_read_eof(&mut r.client).await;
    must_write(&mut r.client, "bye").await;
    close_write(&mut r.client).await;
    must_read(&mut r.server, "bye").await;
    must_read_eof(&mut r.server).await;
    let t = r.finish().await.expect("clean end");
    assert_eq!((t.a_to_b, t.b_to_a, t.first_eof), (3, 5, Some(Side::B)));
}

#[tokio::test]
async fn both_close_write_at_once() {
    let mut r = relay(Tunnel::new()).await;
    must_write(&mut r.client, "from client").await;
    must_write(&mut r.server, "from server").await;
    tokio::join!(close_write(&mut r.client), close_write(&mut r.server));
    must_read(&mut r.server, "from client").await;
    must_read(&mut r.client, "from server").await;
    must_read_eof(&mut r.server).await;
    must_read_eof(&mut r.client).await;
    let t = r.finish().await.expect("clean end");
    assert_eq!((t.a_to_b, t.b_to_a), (11, 11));
    assert!(t.first_eof.is_some());
}

#[tokio::test]
async fn copy_bidirectional_function_has_the_same_contract() {
    let (mut client, mut a) = tcp_pair().await;
    let (mut b, mut server) = tcp_pair().await;
    let tunnel =
        tokio::spawn(async move { halfclose_io::copy_bidirectional(&mut a, &mut b).await });
    close_write(&mut client).await;
    must_read_eof(&mut server).await;
    must_write(&mut server, "still here").await;
    close_write(&mut server).await;
    must_read(&mut client, "still here").await;
    must_read_eof(&mut client).await;
    let t = within("tunnel", tunnel).await.unwrap().expect("clean end");
    assert_eq!((t.a_to_b, t.b_to_a, t.first_eof), (0, 10, Some(Side::A)));
}
