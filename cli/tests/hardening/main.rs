//! What an admin, an agent or an attacker could do to crash, starve or mislead the standalone
//! server, each over real sockets against the in-process app: out-of-range settings, several
//! agents on one connection, refused CSRs, certificates that name their agent, half-sent
//! messages, oversized reports, uid-less floods, idle connections, refused certificates in a
//! loop, restarted agents, keep-alive pollers and the smaller cuts.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod agents;
mod connections;

use common::pki::{Pki, YEAR, csr_request, urls, with_tls};
use common::{Server, answered_ok, config, start};
use flotilla_common::config::AgentIdentity;
use flotilla_loadtest::client::{HttpClient, WsClient};
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::opamp::{
    AgentCapabilities, AgentConfigFile, AgentConfigMap, AgentToServer, AgentToServerFlags,
    ComponentHealth, EffectiveConfig, ServerErrorResponseType, ServerToAgent,
};
use prost::Message;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

const T: Duration = Duration::from_secs(5);

fn opamp_addr(srv: &Server) -> std::net::SocketAddr {
    srv.running.as_ref().unwrap().opamp_addr.unwrap()
}

fn api_addr(srv: &Server) -> std::net::SocketAddr {
    srv.running.as_ref().unwrap().api_addr
}

fn error_of(reply: &ServerToAgent) -> &str {
    &reply
        .error_response
        .as_ref()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply:?}"))
        .error_message
}

/// One HTTP/1.1 request on `stream` (kept open), and the status and body of the response.
async fn http_on(
    stream: &mut TcpStream,
    head: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut req = format!(
        "{head}\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    stream.write_all(&req).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let len: usize = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            let status = text[9..12].parse().unwrap_or(0);
            return Ok((status, buf[end + 4..end + 4 + len].to_vec()));
        }
    }
}
