//! Certificates Flotilla issues itself (with rcgen): the development PKI of `flotilla certs init`,
//! client certificates offered to agents over OpAMP, and certificates signed from agents' CSRs.
//! Every key is ECDSA P-256. An agent's certificate names it by a URI SAN `urn:uuid:<instance_uid>`
//! (and the same uid as its common name), which is what the `uri-san` identity rule reads back.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A certificate with the key it was issued for (absent when the requester kept its key).
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Option<String>,
    /// SHA-256 of the certificate's DER: how Flotilla refers to a client certificate.
    pub sha256: Vec<u8>,
    pub serial: Vec<u8>,
    pub not_after: OffsetDateTime,
}

/// A certificate authority whose key Flotilla holds.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA, valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.remove(DnType::CommonName);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of `cert_path` with its private key in `key_path` (PEM).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| PkiError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let (cert_pem, key_pem) = (read(cert_path)?, read(key_path)?);
        Self::from_pem(&cert_pem, &key_pem)
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::Invalid(format!("CA key is not a usable PEM key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| PkiError::Invalid(format!("CA certificate is not usable: {e}")))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server(&self, names: &[&str], validity: Duration) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.remove(DnType::CommonName);
        params
            .distinguished_name
            .push(DnType::CommonName, "flotilla server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, &key, Some(key.serialize_pem()), validity)
    }

    /// A new key and a client certificate naming agent `uid`.
    pub fn issue_client(&self, uid: Uuid, validity: Duration) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        self.sign(
            client_params(uid),
            &key,
            Some(key.serialize_pem()),
            validity,
        )
    }

    /// A new key and a client certificate that names no agent (common name `name`): one many
    /// agents can share (the load tester's swarm, a fleet without per-agent certificates). Under
    /// the registry rule each agent is bound to it at first use, until it takes one of its own.
    pub fn issue_shared_client(&self, name: &str, validity: Duration) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.remove(DnType::CommonName);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, &key, Some(key.serialize_pem()), validity)
    }

    /// Signs a PEM CSR for agent `uid`. The signature over the CSR is checked; if the CSR names an
    /// instance uid (URI SAN `urn:uuid:` or a UUID common name) it must be `uid` (spec: the agent
    /// may only ask for a certificate for itself). What the certificate says is decided here, not
    /// by the CSR: only the uid, client authentication, `validity`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        uid: Uuid,
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Invalid(format!("CSR rejected: {e}")))?;
        let named = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(u) => uid_of_uri(u.as_str()),
                _ => None,
            })
            .chain(
                csr.params
                    .distinguished_name
                    .iter()
                    .filter_map(|(t, v)| match (t, v) {
                        (DnType::CommonName, rcgen::DnValue::Utf8String(s)) => {
                            Uuid::parse_str(s).ok()
                        }
                        _ => None,
                    }),
            );
        for other in named {
            if other != uid {
                return Err(PkiError::Invalid(format!(
                    "CSR names instance uid {other}, but the agent is {uid}"
                )));
            }
        }
        self.sign(client_params(uid), &csr.public_key, None, validity)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
        key_pem: Option<String>,
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let now = OffsetDateTime::now_utc();
        // An hour of slack for clocks behind ours.
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + validity;
        let serial: [u8; 16] = *Uuid::new_v4().as_bytes();
        // A positive INTEGER: the high bit clear.
        let mut serial = serial.to_vec();
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem,
            sha256: Sha256::digest(cert.der()).to_vec(),
            serial,
            not_after: params.not_after,
        })
    }

    /// A CRL revoking the certificates with `serials`, valid for `validity`.
    pub fn revocation_list(
        &self,
        serials: &[Vec<u8>],
        validity: Duration,
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + validity,
            crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

fn client_params(uid: Uuid) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.remove(DnType::CommonName);
    params
        .distinguished_name
        .push(DnType::CommonName, uid.to_string());
    params.subject_alt_names = vec![SanType::URI(
        uid_uri(uid).try_into().expect("a urn:uuid URI is valid"),
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// The URI SAN naming agent `uid`.
pub fn uid_uri(uid: Uuid) -> String {
    format!("urn:uuid:{uid}")
}

fn uid_of_uri(uri: &str) -> Option<Uuid> {
    let rest = uri
        .get(..9)?
        .eq_ignore_ascii_case("urn:uuid:")
        .then(|| &uri[9..])?;
    Uuid::parse_str(rest).ok()
}

/// SHA-256 of a DER certificate.
pub fn cert_sha256(der: &[u8]) -> Vec<u8> {
    Sha256::digest(der).to_vec()
}

/// The agent uids a DER certificate names in `urn:uuid:` URI SANs.
pub fn cert_uids(der: &[u8]) -> Vec<Uuid> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => uid_of_uri(u),
            _ => None,
        })
        .collect()
}

/// The DER of the first certificate in PEM text.
pub fn pem_certificate(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem).ok().map(|c| c.to_vec())
}

/// A DER certificate's serial number (big-endian, as it is encoded).
pub fn cert_serial(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.raw_serial().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn client_certificates_name_their_agent() {
        let ca = Ca::generate("test ca").unwrap();
        let uid = Uuid::now_v7();
        let issued = ca.issue_client(uid, DAY).unwrap();
        let der = pem_der(&issued.cert_pem);
        assert_eq!(cert_uids(&der), vec![uid]);
        assert_eq!(cert_sha256(&der), issued.sha256);
        assert!(issued.key_pem.is_some());
        assert_eq!(cert_serial(&der).unwrap(), issued.serial);
    }

    #[test]
    fn a_reloaded_ca_signs_what_the_original_verifies() {
        let ca = Ca::generate("test ca").unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let uid = Uuid::now_v7();
        let issued = again.issue_client(uid, DAY).unwrap();
        assert_eq!(cert_uids(&pem_der(&issued.cert_pem)), vec![uid]);
    }

    #[test]
    fn csrs_are_signed_for_their_own_agent_only() {
        let ca = Ca::generate("test ca").unwrap();
        let uid = Uuid::now_v7();
        let csr = csr_for(uid);
        let issued = ca.sign_csr(&csr, uid, DAY).unwrap();
        assert!(issued.key_pem.is_none());
        assert_eq!(cert_uids(&pem_der(&issued.cert_pem)), vec![uid]);

        let other = Uuid::now_v7();
        let err = ca.sign_csr(&csr, other, DAY).unwrap_err().to_string();
        assert!(err.contains("names instance uid"), "{err}");
        let err = ca.sign_csr("not a csr", uid, DAY).unwrap_err().to_string();
        assert!(err.contains("CSR rejected"), "{err}");
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let ca = Ca::generate("test ca").unwrap();
        let uid = Uuid::now_v7();
        let csr = csr_for(uid);
        // The last base64 line before the footer holds the end of the signature.
        let mut lines: Vec<String> = csr.lines().map(str::to_owned).collect();
        let tail = &mut lines[csr.lines().count() - 2];
        let flipped = if tail.starts_with('A') { "B" } else { "A" };
        tail.replace_range(0..1, flipped);
        assert!(ca.sign_csr(&lines.join("\n"), uid, DAY).is_err());
    }

    fn csr_for(uid: Uuid) -> String {
        let key = KeyPair::generate().unwrap();
        let request = client_params(uid).serialize_request(&key).unwrap();
        request.pem().unwrap()
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        pem_certificate(pem.as_bytes()).unwrap()
    }
}
