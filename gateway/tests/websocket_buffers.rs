//! The memory an agent's WebSocket keeps after a large message: the gateway's connection settings
//! over real loopback TCP, with every allocation of this test binary counted. A full report of
//! tens of KB (what a collector's supervisor sends on connect) must not leave a buffer of its
//! size behind for the connection's life (tungstenite-rs issue 480; vendor/README.md).

use flotilla_gateway::websocket_config;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Bytes allocated and not freed, by anything in this binary.
fn live() -> usize {
    dhat::HeapStats::get().curr_bytes
}

const PAIRS: usize = 200;
const LARGE: usize = 30_000;

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

async fn pair(listener: &TcpListener) -> (WebSocketStream<TcpStream>, WebSocketStream<TcpStream>) {
    let config = || Some(websocket_config(4 * 1024 * 1024));
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = WebSocketStream::from_raw_socket(client.unwrap(), Role::Client, config()).await;
    let server = WebSocketStream::from_raw_socket(server.unwrap().0, Role::Server, config()).await;
    (client, server)
}

async fn read(ws: &mut WebSocketStream<TcpStream>) -> Vec<u8> {
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => b.to_vec(),
        other => panic!("expected a binary message, got {other:?}"),
    }
}

/// `from` sends a large message and a small one back to back; `to` reads both whole.
async fn exchange(
    from: &mut WebSocketStream<TcpStream>,
    to: &mut WebSocketStream<TcpStream>,
    seed: u8,
) {
    from.feed(Message::Binary(payload(LARGE, seed).into()))
        .await
        .unwrap();
    from.feed(Message::Binary(payload(10, seed).into()))
        .await
        .unwrap();
    from.flush().await.unwrap();
    assert_eq!(read(to).await, payload(LARGE, seed));
    assert_eq!(read(to).await, payload(10, seed));
}

/// Each side sends a large message and a small one back to back (the small one's bytes arrive
/// with the large one's: what follows a large frame in the buffer is kept), both arrive whole;
/// then the connections idle. What they keep, per pair, is far below the large message's size.
#[tokio::test]
async fn a_large_message_leaves_no_buffer_of_its_size_behind() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut idle = Vec::with_capacity(PAIRS);
    // Warm up what is allocated once (the runtime, the listener) before counting.
    let warm = pair(&listener).await;
    let before = live();
    for i in 0..PAIRS {
        let (mut client, mut server) = pair(&listener).await;
        let seed = i as u8;
        exchange(&mut client, &mut server, seed).await;
        exchange(&mut server, &mut client, seed).await;
        idle.push((client, server));
    }
    let kept = live().saturating_sub(before) / PAIRS;
    println!("{PAIRS} pairs after a {LARGE} B message each way: {kept} B kept per pair");
    // Two ends, each with its read buffer and its state: without the buffers given back
    // each end would keep at least the large message's size twice over (read and write).
    assert!(kept < 2 * 12 * 1024, "{kept} B kept per pair of ends");
    drop((idle, warm));
}
