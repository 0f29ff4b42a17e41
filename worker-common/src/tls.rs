//! TLS for Flotilla's listeners (rustls, ring provider): the server configuration built from PEM
//! files (certificate chain, key, optional client CA bundle and CRL), and [`ReloadingTls`], which
//! re-reads those files when they change so a rotated certificate or CA takes effect for new
//! connections while live ones carry on.

use crate::config::TlsFiles;
use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.into(),
        message: e.to_string(),
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls server configuration of `files`: TLS 1.3 (and 1.2 when allowed), the certificate
/// chain and key, and with a client CA a verifier that requires a client certificate it signed,
/// checked against the CRL if one is given.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = if files.allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder =
        ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(ca_path)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(ca_path, format!("not a CA certificate: {e}")))?;
            }
            let crls = match &files.crl {
                Some(path) => CertificateRevocationListDer::pem_file_iter(path)
                    .map_err(|e| file_err(path, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(path, format!("bad PEM CRL: {e}")))?,
                None => Vec::new(),
            };
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .with_crls(crls)
                .build()
                .map_err(|e| invalid(ca_path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| invalid(&files.key, format!("no usable private key: {e}")))?;
    let mut cfg = builder
        .with_single_cert(certs(&files.cert)?, key)
        .map_err(|e| invalid(&files.cert, format!("certificate and key do not fit: {e}")))?;
    // WebSocket upgrades need HTTP/1.1.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// When and how big each file was: a changed stamp means "read it again". Kubernetes swaps a
/// mounted secret by replacing a symlink, which changes the target's mtime too.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// A server configuration that follows its files.
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    seen: Mutex<Stamp>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingTls {
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let seen = stamp(&files.paths());
        let cfg = server_config(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(cfg)),
            seen: Mutex::new(seen),
        }))
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// Re-reads the files if any changed. A set of files that does not load (half-written, a key
    /// that does not fit the new certificate yet) keeps the previous configuration; it is tried
    /// again at the next change.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamp(&self.files.paths());
        {
            let mut seen = self.seen.lock();
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        Some(server_config(&self.files).map(|cfg| {
            *self.current.write() = Arc::new(cfg);
        }))
    }

    /// Checks the files every `every` until `cancel`.
    pub async fn watch(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = cancel.cancelled() => return,
            }
            match self.reload_if_changed() {
                None => {}
                Some(Ok(())) => info!(cert = %self.files.cert.display(), "TLS files reloaded"),
                Some(Err(e)) => {
                    warn!(error = %e, "TLS files changed but do not load; keeping the previous ones")
                }
            }
        }
    }
}
