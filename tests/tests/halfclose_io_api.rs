//! halfclose-io used from outside the crate, exactly as its issue writes it.

use std::time::Duration;

use halfclose_io::{Transfer, Tunnel, TunnelError, copy_bidirectional};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (c, a) = tokio::join!(TcpStream::connect(addr), listener.accept());
    Ok((c?, a?.0))
}

/// `?` converts a `TunnelError` into `io::Error`.
async fn relay_with_options(mut a: TcpStream, mut b: TcpStream) -> std::io::Result<Transfer> {
    let transfer = Tunnel::new()
        .idle_timeout(Duration::from_secs(60))
        .half_close_timeout(Duration::from_secs(10))
        .copy(&mut a, &mut b)
        .await?;
    Ok(transfer)
}

async fn relay_plain(mut a: TcpStream, mut b: TcpStream) -> Result<Transfer, TunnelError> {
    copy_bidirectional(&mut a, &mut b).await
}

#[tokio::test]
async fn api_as_written_relays_with_half_close() -> Result<(), Box<dyn std::error::Error>> {
    for with_options in [true, false] {
        let (mut client, a) = pair().await?;
        let (b, mut server) = pair().await?;
        let tunnel = tokio::spawn(async move {
            if with_options {
                relay_with_options(a, b).await
            } else {
                Ok(relay_plain(a, b).await?)
            }
        });
        let work = async {
            client.write_all(b"request").await?;
            client.shutdown().await?;
            let mut got = Vec::new();
            server.read_to_end(&mut got).await?;
            assert_eq!(got, b"request");
            server.write_all(b"response after the client's FIN").await?;
            server.shutdown().await?;
            let mut back = Vec::new();
            client.read_to_end(&mut back).await?;
            assert_eq!(back, b"response after the client's FIN");
            std::io::Result::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(10), work).await??;
        let transfer = tokio::time::timeout(Duration::from_secs(10), tunnel).await???;
        assert_eq!(transfer.a_to_b, 7);
        assert_eq!(transfer.b_to_a, 31);
    }
    Ok(())
}
