//! Raw OpAMP transports for a client: WebSocket (with control over framing, for tests) and plain
//! HTTP (with optional gzip).

use anyhow::{Context, bail};
use bytes::Bytes;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flotilla_proto::opamp::{AgentToServer, ServerToAgent};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use std::io::{Read, Write};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server sent next.
#[derive(Debug)]
pub enum WsEvent {
    Message(Box<ServerToAgent>),
    Closed(Option<CloseFrame>),
}

impl WsClient {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self { ws })
    }

    /// Sends with the 0x00 header, as the spec requires of current clients.
    pub async fn send(&mut self, msg: &AgentToServer) -> anyhow::Result<()> {
        let mut frame = vec![0u8];
        msg.encode(&mut frame)?;
        self.send_raw(frame).await
    }

    /// Sends exactly these bytes as one binary message.
    pub async fn send_raw(&mut self, frame: Vec<u8>) -> anyhow::Result<()> {
        self.ws.send(Message::Binary(frame.into())).await?;
        Ok(())
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// The next ServerToAgent or close, within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<WsEvent> {
        loop {
            let frame = tokio::time::timeout(timeout, self.ws.next())
                .await
                .context("no message from the server in time")?;
            match frame {
                Some(Ok(Message::Binary(data))) => {
                    let Some((&0, payload)) = data.split_first() else {
                        bail!("server frame without the 0x00 header")
                    };
                    return Ok(WsEvent::Message(Box::new(ServerToAgent::decode(payload)?)));
                }
                Some(Ok(Message::Close(frame))) => return Ok(WsEvent::Closed(frame)),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("websocket error: {e}"),
                None => return Ok(WsEvent::Closed(None)),
            }
        }
    }

    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<ServerToAgent> {
        match self.next_event(timeout).await? {
            WsEvent::Message(m) => Ok(*m),
            WsEvent::Closed(f) => bail!("connection closed: {f:?}"),
        }
    }

    /// Sends and waits for the reply.
    pub async fn request(&mut self, msg: &AgentToServer) -> anyhow::Result<ServerToAgent> {
        self.send(msg).await?;
        self.recv(Duration::from_secs(10)).await
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        self.ws.close(None).await?;
        Ok(())
    }
}

#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// The decoded body when it is a protobuf ServerToAgent.
    pub message: Option<ServerToAgent>,
    /// The body as received (possibly gzipped).
    pub raw: Bytes,
}

#[derive(Clone)]
pub struct HttpClient {
    http: reqwest::Client,
    url: String,
}

impl HttpClient {
    pub fn new(url: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: url.to_owned(),
        }
    }

    /// POSTs one AgentToServer; `gzip` compresses the body and asks for a gzipped reply.
    pub async fn post(&self, msg: &AgentToServer, gzip: bool) -> anyhow::Result<HttpReply> {
        let body = msg.encode_to_vec();
        let mut headers = vec![];
        if msg.instance_uid.len() == 16 {
            let uid = uuid::Uuid::from_slice(&msg.instance_uid)?;
            headers.push(("OpAMP-Instance-UID", uid.to_string()));
        }
        let body = if gzip {
            headers.push(("Content-Encoding", "gzip".into()));
            headers.push(("Accept-Encoding", "gzip".into()));
            let mut enc = GzEncoder::new(Vec::new(), Compression::default());
            enc.write_all(&body)?;
            enc.finish()?
        } else {
            body
        };
        self.post_raw(body, &headers).await
    }

    pub async fn post_raw(
        &self,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> anyhow::Result<HttpReply> {
        let mut req = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/x-protobuf")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp.bytes().await?;
        let is_proto = headers
            .get("content-type")
            .is_some_and(|v| v == "application/x-protobuf");
        let gzipped = headers.get("content-encoding").is_some_and(|v| v == "gzip");
        let message = if is_proto {
            let plain = if gzipped {
                let mut out = Vec::new();
                GzDecoder::new(raw.as_ref()).read_to_end(&mut out)?;
                out
            } else {
                raw.to_vec()
            };
            Some(ServerToAgent::decode(plain.as_slice())?)
        } else {
            None
        };
        Ok(HttpReply {
            status,
            headers,
            message,
            raw,
        })
    }
}
