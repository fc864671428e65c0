//! A real WebSocket client and server (tokio-tungstenite) through the proxy:
//! messages both ways and the close handshake.

use e2e_tests::*;
use futures_util::{SinkExt, StreamExt};
use proxy_tower::ReverseProxy;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn websocket_messages_and_close_handshake() {
    // Upstream: echoes every message until the client closes.
    let (listener, upstream) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp)
            .await
            .expect("server handshake");
        let mut echoed = 0;
        while let Some(msg) = ws.next().await {
            match msg.expect("server read") {
                m @ (Message::Text(_) | Message::Binary(_)) => {
                    ws.send(m).await.unwrap();
                    echoed += 1;
                }
                Message::Close(_) => break, // tungstenite answers the close itself
                _ => {}
            }
        }
        // Drive the stream until the close handshake is complete.
        while ws.next().await.is_some() {}
        echoed
    });

    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut ws, res) = within(
        "client handshake",
        tokio_tungstenite::client_async(format!("ws://{proxy}/socket"), tcp),
    )
    .await
    .expect("client handshake");
    assert_eq!(res.status(), 101);

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("hello")
    );
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::binary(blob)
    );

    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let reply = within("close reply", ws.next()).await;
    match reply {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the server's close frame, got {other:?}"),
    }
    assert!(within("end of stream", ws.next()).await.is_none());
    assert_eq!(within("server end", server).await.unwrap(), 2);
}
