//! A PKI for TLS tests, written to a temp dir: CA, server certificate for localhost, agent
//! certificates, a second unrelated CA, and CRLs.

use flotilla_common::config::{ServeConfig, TlsFiles};
use flotilla_common::pki::{Ca, Issued};
use flotilla_loadtest::client::{ConnectOptions, HttpClient, WsClient};
use flotilla_proto::opamp::{
    CertificateRequest, ConnectionSettingsRequest, OpAmpConnectionSettingsRequest,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

pub const YEAR: Duration = Duration::from_secs(365 * 86_400);

pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
}

/// An agent's certificate, key and the uid it names.
pub struct AgentCert {
    pub uid: Uuid,
    pub issued: Issued,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let ca = Ca::generate("test CA").unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.join("ca-key.pem"), ca.key_pem()).unwrap();
        let server = ca.issue_server(&["localhost", "127.0.0.1"], YEAR).unwrap();
        std::fs::write(dir.join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.join("server-key.pem"), server.key_pem.unwrap()).unwrap();
        Self {
            dir: dir.to_owned(),
            ca,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// TLS files of the OpAMP listener; `mtls` requires client certificates from this CA.
    pub fn tls_files(&self, mtls: bool) -> TlsFiles {
        TlsFiles {
            client_ca: mtls.then(|| self.path("ca.pem")),
            ..TlsFiles::new(self.path("server.pem"), self.path("server-key.pem"))
        }
    }

    pub fn agent(&self, validity: Duration) -> AgentCert {
        let uid = Uuid::now_v7();
        AgentCert {
            uid,
            issued: self.ca.issue_client(uid, validity).unwrap(),
        }
    }

    /// Client options trusting this CA and presenting `cert` (if any).
    pub fn client(&self, cert: Option<&AgentCert>) -> ConnectOptions {
        let identity = cert.map(|c| {
            (
                c.issued.cert_pem.as_bytes(),
                c.issued.key_pem.as_deref().unwrap().as_bytes(),
            )
        });
        ConnectOptions::tls(self.ca.cert_pem().as_bytes(), identity).unwrap()
    }
}

/// The TLS URLs of a server started with `cfg` on 127.0.0.1 (the certificate names localhost).
pub struct TlsUrls {
    pub ws: String,
    pub http: String,
}

pub fn urls(srv: &super::Server) -> TlsUrls {
    let port = srv.running.as_ref().unwrap().opamp_addr.unwrap().port();
    TlsUrls {
        ws: format!("wss://localhost:{port}/v1/opamp"),
        http: format!("https://localhost:{port}/v1/opamp"),
    }
}

pub fn with_tls(mut cfg: ServeConfig, files: TlsFiles) -> ServeConfig {
    cfg.agent_identity = if files.client_ca.is_some() {
        flotilla_common::config::AgentIdentity::Registry
    } else {
        flotilla_common::config::AgentIdentity::None
    };
    cfg.tls = Some(files);
    cfg
}

/// Whether a WebSocket agent with `opts` gets an answer to a full report as `agent`.
pub async fn ws_served(
    url: &str,
    opts: &ConnectOptions,
    agent: &mut flotilla_loadtest::sim::SimAgent,
) -> anyhow::Result<flotilla_proto::opamp::ServerToAgent> {
    let mut ws = WsClient::connect_with(url, opts).await?;
    ws.request(&agent.full_report()).await
}

/// The HTTP status a plain-HTTP agent with `opts` gets for a full report as `agent`.
pub async fn http_status(
    url: &str,
    opts: &ConnectOptions,
    agent: &mut flotilla_loadtest::sim::SimAgent,
) -> anyhow::Result<u16> {
    let http = HttpClient::with_options(url, opts)?;
    Ok(http.post(&agent.full_report(), false).await?.status)
}

/// A PEM CSR for `key` whose common name is `uid`.
pub fn csr_pem(key: &rcgen::KeyPair, uid: Uuid) -> String {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, uid.to_string());
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// The request an agent sends to have `csr` signed.
pub fn csr_request(csr: impl Into<Vec<u8>>) -> ConnectionSettingsRequest {
    ConnectionSettingsRequest {
        opamp: Some(OpAmpConnectionSettingsRequest {
            certificate_request: Some(CertificateRequest { csr: csr.into() }),
        }),
    }
}
