//! A TCP relay that keeps half-close intact: put it in front of any TCP service.
//!
//! ```text
//! cargo run -p halfclose-io --example tcp_relay -- 127.0.0.1:8080 127.0.0.1:9000
//! ```
//!
//! Every connection accepted on the first address is relayed to the second. When
//! one side sends FIN, the relay passes it on and keeps carrying the other
//! direction; a side that resets is answered by resetting the other one. After a
//! FIN, a tunnel quiet for 60 seconds is closed; an idle connection is closed
//! after 10 minutes. On Linux the bytes move with splice(2) (`Tunnel::copy_tcp`).

use std::time::Duration;

use halfclose_io::{Side, Tunnel};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(target)) = (args.next(), args.next()) else {
        eprintln!("usage: tcp_relay LISTEN_ADDR TARGET_ADDR");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(&listen).await?;
    println!("relaying {} -> {target}", listener.local_addr()?);
    let tunnel = Tunnel::new()
        .idle_timeout(Duration::from_secs(600))
        .half_close_timeout(Duration::from_secs(60));

    loop {
        let (mut client, peer) = listener.accept().await?;
        let target = target.clone();
        tokio::spawn(async move {
            let mut server = match TcpStream::connect(&target).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{peer}: cannot reach {target}: {e}");
                    return;
                }
            };
            match tunnel.copy_tcp(&mut client, &mut server).await {
                Ok(t) => println!("{peer}: {t}"),
                Err(e) => {
                    eprintln!("{peer}: {e}");
                    // Pass an abortive close on: the other socket resets on drop.
                    match e.reset_side() {
                        Some(Side::A) => drop(server.set_zero_linger()),
                        Some(Side::B) => drop(client.set_zero_linger()),
                        None => {}
                    }
                }
            }
        });
    }
}
