//! Raw OpAMP transports for a client: WebSocket (with control over framing, for tests) and plain
//! HTTP (with optional gzip), each over TCP or TLS (with a client certificate for mutual TLS) and
//! with an optional bearer token.

use anyhow::{Context, bail};
use bytes::Bytes;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flotilla_proto::opamp::{AgentToServer, ServerToAgent};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

/// A byte stream: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How a client reaches the server beyond the URL: TLS trust and identity, and a bearer token.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub token: Option<String>,
    /// Local address to connect from (e.g. one of 127.0.0.0/8, so that many agents are not
    /// limited by one address's ephemeral ports).
    pub source: Option<IpAddr>,
}

impl ConnectOptions {
    /// TLS trusting `ca_pem`, presenting `identity` (certificate chain and key, PEM) if given.
    pub fn tls(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.context("CA PEM")?)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .context("client certificate PEM")?;
                let key = PrivateKeyDer::from_pem_slice(key).context("client key PEM")?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            tls: Some(Arc::new(config)),
            ..Self::default()
        })
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn from_source(mut self, ip: IpAddr) -> Self {
        self.source = Some(ip);
        self
    }

    /// A TCP connection to `host:port` (from `source` if set), wrapped in TLS when configured.
    pub async fn open(&self, host: &str, port: u16) -> anyhow::Result<Box<dyn Io>> {
        let tcp = match self.source {
            None => TcpStream::connect((host, port)).await?,
            Some(ip) => {
                let addr = tokio::net::lookup_host((host, port))
                    .await?
                    .find(|a| a.is_ipv4() == ip.is_ipv4())
                    .with_context(|| format!("{host} has no address of the family of {ip}"))?;
                let socket = if ip.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket
                    .bind((ip, 0).into())
                    .with_context(|| format!("cannot bind to source address {ip}"))?;
                socket.connect(addr).await?
            }
        };
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(cfg) => {
                let name = ServerName::try_from(host.to_owned())?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await?;
                Ok(Box::new(tls))
            }
        }
    }
}

pub struct WsClient {
    ws: WebSocketStream<Box<dyn Io>>,
}

/// What the server sent next.
#[derive(Debug)]
pub enum WsEvent {
    Message(Box<ServerToAgent>),
    Closed(Option<CloseFrame>),
}

impl WsClient {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// Connects to a ws:// or wss:// URL (wss needs `opts.tls`).
    pub async fn connect_with(url: &str, opts: &ConnectOptions) -> anyhow::Result<Self> {
        let mut req = url.into_client_request()?;
        if let Some(token) = &opts.token {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse()?);
        }
        let uri = req.uri().clone();
        let secure = uri.scheme_str() == Some("wss");
        if secure != opts.tls.is_some() {
            bail!("{url}: wss:// goes with TLS options, ws:// without");
        }
        let host = uri.host().context("URL without a host")?;
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let io = opts
            .open(host, port)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        // Small buffers, as on the server: a swarm holds tens of thousands of these.
        let cfg = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, io, Some(cfg))
            .await
            .with_context(|| format!("WebSocket handshake with {url}"))?;
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

    /// A client with TLS (and client certificate) and token of `opts`.
    pub fn with_options(url: &str, opts: &ConnectOptions) -> anyhow::Result<Self> {
        Self::build(url, opts, reqwest::Client::builder())
    }

    /// As [`HttpClient::with_options`], dropping connections idle for `idle` rather than reusing
    /// them: below the server's own idle limit, a request never races the server closing the
    /// connection it goes out on.
    pub fn with_idle_limit(
        url: &str,
        opts: &ConnectOptions,
        idle: Duration,
    ) -> anyhow::Result<Self> {
        Self::build(
            url,
            opts,
            reqwest::Client::builder().pool_idle_timeout(idle),
        )
    }

    fn build(
        url: &str,
        opts: &ConnectOptions,
        mut builder: reqwest::ClientBuilder,
    ) -> anyhow::Result<Self> {
        if let Some(tls) = &opts.tls {
            builder = builder.use_preconfigured_tls((**tls).clone());
        }
        if let Some(ip) = opts.source {
            builder = builder.local_address(ip);
        }
        if let Some(token) = &opts.token {
            let headers = reqwest::header::HeaderMap::from_iter([(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse()?,
            )]);
            builder = builder.default_headers(headers);
        }
        Ok(Self {
            http: builder.build()?,
            url: url.to_owned(),
        })
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

    /// POSTs `body` as `content_type` to `url` (another path of a server, e.g. its OTLP
    /// endpoint) over this client's connections, TLS and token: the status and the body as
    /// received, not decoded.
    pub async fn post_to(
        &self,
        url: &str,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> anyhow::Result<(u16, Bytes)> {
        let resp = self
            .http
            .post(url)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        // Read to the end, so that the connection is kept for the next request.
        Ok((status, resp.bytes().await?))
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
