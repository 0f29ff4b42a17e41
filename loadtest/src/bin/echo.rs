//! flotilla-echo: the benchmark baseline. A bare tokio-tungstenite (+ rustls) WebSocket server that
//! answers every OpAMP AgentToServer with the smallest valid ServerToAgent (its instance_uid) and
//! does nothing else: no state, no bus, no store. Run the same swarm against it and against
//! Flotilla, and the ratio is Flotilla's own cost. It uses the gateway's WebSocket buffer sizes, so
//! memory per connection compares like with like.

use anyhow::Context;
use clap::Parser;
use flotilla_proto::opamp::{AgentToServer, ServerToAgent};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug, Parser)]
#[command(about = "Bare WebSocket (+TLS) OpAMP echo server: the baseline for flotilla-swarm")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:4330")]
    listen: std::net::SocketAddr,
    /// PEM server certificate (chain); with --tls-key, serves wss://.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA that client certificates must chain to (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
}

fn tls_config(args: &Args) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match &args.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).context("client CA")? {
                roots.add(c?)?;
            }
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()?,
            )
        }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .context("server certificate")?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).context("server key")?;
    Ok(Some(Arc::new(builder.with_single_cert(chain, key)?)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = tls_config(&args)?.map(tokio_rustls::TlsAcceptor::from);
    // The same accept queue as Flotilla's listeners.
    let socket = if args.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    let listener = socket
        .bind(args.listen)
        .and_then(|()| socket.listen(4096))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "flotilla-echo listening on {}://{}",
        if tls.is_some() { "wss" } else { "ws" },
        listener.local_addr()?
    );
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, for one: keep serving the connections we have.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(tcp).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(tcp);
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), handshake).await
                    {
                        serve(stream).await;
                    }
                }
            }
        });
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(cfg)).await else {
        return;
    };
    while let Some(Ok(frame)) = ws.next().await {
        let data = match frame {
            Message::Binary(data) => data,
            Message::Close(_) => break,
            _ => continue,
        };
        // Current clients send a 0x00 header byte; older ones none.
        let payload = match data.split_first() {
            Some((&0, rest)) => rest,
            _ => &data[..],
        };
        let Ok(msg) = AgentToServer::decode(payload) else {
            break;
        };
        let reply = ServerToAgent {
            instance_uid: msg.instance_uid,
            ..Default::default()
        };
        let mut out = vec![0u8];
        if reply.encode(&mut out).is_err() || ws.send(Message::Binary(out.into())).await.is_err() {
            break;
        }
    }
}
