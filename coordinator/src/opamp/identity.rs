//! Agent certificates, held in the agent record so any coordinator that owns the agent's shard
//! (and any gateway it connects through) applies the same rules:
//!
//! - identity: a connection's client certificate must be the one the agent is bound to (registry
//!   rule), or at least not one it has since replaced; the first certificate an agent uses binds it;
//! - rotation: a certificate issued to the agent (server-generated offer, or signed from its CSR)
//!   is recorded as issued; the agent's first message over it makes it the bound one and retires
//!   the old one, which is refused from then on (the spec's "delete the old credentials once the
//!   agent has reconnected with the new ones").
//!
//! The pure rules are here; the service's shard owner does the I/O: signing, storing, pushing.

use flotilla_common::names::uid_text;
use flotilla_common::pki::{Ca, Issued};
use flotilla_proto::bus::{AgentRecord, IdentityRule, Origin};
use flotilla_proto::opamp::{
    ConnectionSettingsOffers, OpAmpConnectionSettings, TlsCertificate, TlsConnectionSettings,
};
use prost::Message;
use sha2::{Digest, Sha256};
use std::time::Duration;
use uuid::Uuid;

/// How many replaced certificates an agent record remembers as refused. Older ones are expected to
/// have expired or to be listed in the CRL.
const RETIRED_KEPT: usize = 4;

/// Whether the connection's client certificate names `uid` (a URI SAN `urn:uuid:<uid>`).
pub fn certificate_names(origin: &Origin, uid: &[u8]) -> bool {
    origin.client_cert_uids.iter().any(|u| u.as_slice() == uid)
}

/// Whether the connection's certificate may speak for agent `uid` (whose record is `rec`, if any).
/// Err says why not.
///
/// - A certificate that names agent uids (URI SANs) speaks only for those, under any identity
///   rule but none.
/// - A certificate the agent has since replaced is refused.
/// - Under the registry rule an agent is bound to the first certificate it used, unless a
///   certificate that names it comes along: that one wins, so no other certificate can lock an
///   agent out by claiming its uid first.
pub fn check_identity(
    rec: Option<&AgentRecord>,
    origin: &Origin,
    uid: &[u8],
) -> Result<(), String> {
    let fp = &origin.client_cert_sha256;
    if fp.is_empty() || origin.identity() == IdentityRule::None {
        return Ok(());
    }
    let named = certificate_names(origin, uid);
    if !origin.client_cert_uids.is_empty() && !named {
        let names: Vec<String> = origin
            .client_cert_uids
            .iter()
            .map(|u| uid_text(u))
            .collect();
        return Err(format!(
            "the client certificate names instance_uid {}, not {}",
            names.join(", "),
            uid_text(uid)
        ));
    }
    let Some(rec) = rec else {
        return Ok(());
    };
    if rec.retired_cert_sha256.contains(fp) {
        return Err(format!(
            "client certificate {} was replaced for this agent and is no longer accepted",
            short(fp)
        ));
    }
    let pinned = origin.identity() == IdentityRule::Registry && !rec.cert_sha256.is_empty();
    if pinned && !named && *fp != rec.cert_sha256 && *fp != rec.issued_cert_sha256 {
        return Err(format!(
            "client certificate {} is not the one agent {} is bound to",
            short(fp),
            Uuid::from_slice(&rec.instance_uid).unwrap_or_default()
        ));
    }
    Ok(())
}

/// Records the certificate an accepted message came over: binds a first certificate, turns an
/// issued one into the bound one (retiring the previous), and rebinds the agent to a certificate
/// that names it.
pub fn record_certificate(rec: &mut AgentRecord, origin: &Origin) {
    let fp = origin.client_cert_sha256.as_slice();
    if fp.is_empty() || fp == rec.cert_sha256 || origin.identity() == IdentityRule::None {
        return;
    }
    if fp == rec.issued_cert_sha256 {
        let old = std::mem::take(&mut rec.cert_sha256);
        if !old.is_empty() {
            rec.retired_cert_sha256.push(old);
            let excess = rec.retired_cert_sha256.len().saturating_sub(RETIRED_KEPT);
            rec.retired_cert_sha256.drain(..excess);
        }
        rec.issued_cert_sha256.clear();
        // The agent runs these settings now; the key they carried is not kept.
        rec.settings_offer = None;
        rec.settings_have_certificate = true;
    } else if origin.identity() == IdentityRule::Registry
        && !rec.cert_sha256.is_empty()
        && !certificate_names(origin, &rec.instance_uid)
    {
        return; // refused by check_identity before we get here
    }
    rec.cert_sha256 = fp.to_vec();
}

/// The OpAMP connection settings that carry `issued` (signed by `issuer`), keeping the heartbeat
/// interval (an opamp offer without it would switch heartbeats off), with where to connect and
/// the CA of the server's certificate when they are configured: the collector's supervisor takes
/// an offer as its whole new connection, and cannot take one without a destination.
pub fn certificate_offer(
    issued: &Issued,
    issuer: &Issuer,
    heartbeat: Duration,
) -> ConnectionSettingsOffers {
    let mut offer = ConnectionSettingsOffers {
        opamp: Some(OpAmpConnectionSettings {
            destination_endpoint: issuer.endpoint.clone().unwrap_or_default(),
            certificate: Some(TlsCertificate {
                cert: issued.cert_pem.clone().into_bytes(),
                private_key: issued.key_pem.clone().unwrap_or_default().into_bytes(),
                ca_cert: issuer.ca.cert_pem().as_bytes().to_vec(),
            }),
            // At least 1: opamp-go takes 0 as "no heartbeats" (and HTTP agents stop polling).
            heartbeat_interval_seconds: heartbeat.as_secs().max(1),
            tls: issuer
                .server_ca_pem
                .as_ref()
                .map(|pem| TlsConnectionSettings {
                    ca_pem_contents: pem.clone(),
                    ..Default::default()
                }),
            ..Default::default()
        }),
        ..Default::default()
    };
    offer.hash = Sha256::digest(offer.encode_to_vec()).to_vec();
    offer
}

/// Puts an issued certificate into the record: offered until the agent connects with it.
pub fn record_issued(rec: &mut AgentRecord, issued: &Issued, offer: ConnectionSettingsOffers) {
    rec.issued_cert_sha256.clone_from(&issued.sha256);
    rec.offered_settings_hash.clone_from(&offer.hash);
    rec.settings_offer = Some(Box::new(offer));
}

fn short(fp: &[u8]) -> String {
    hex::encode(&fp[..fp.len().min(8)])
}

/// The signing CA of a coordinator and the lifetime of what it issues.
#[derive(Debug)]
pub struct Issuer {
    pub ca: Ca,
    pub validity: Duration,
    /// The OpAMP URL agents reach the server at (`--opamp-advertise-url`): offers carry it.
    pub endpoint: Option<String>,
    /// PEM CA of the server's certificate (`--opamp-server-ca`): offers carry it.
    pub server_ca_pem: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(fp: &[u8], rule: IdentityRule) -> Origin {
        Origin {
            client_cert_sha256: fp.to_vec(),
            identity: rule as i32,
            ..Default::default()
        }
    }

    fn record(rec: &mut AgentRecord, o: &Origin) {
        record_certificate(rec, o);
    }

    fn check(rec: &AgentRecord, o: &Origin) -> Result<(), String> {
        check_identity(Some(rec), o, &rec.instance_uid)
    }

    fn new_record() -> AgentRecord {
        AgentRecord {
            instance_uid: Uuid::now_v7().as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_certificate_binds_the_agent_under_the_registry_rule() {
        let mut rec = new_record();
        let a = origin(b"cert-a", IdentityRule::Registry);
        assert!(check(&rec, &a).is_ok());
        record(&mut rec, &a);
        assert_eq!(rec.cert_sha256, b"cert-a");
        let b = origin(b"cert-b", IdentityRule::Registry);
        let err = check(&rec, &b).unwrap_err();
        assert!(err.contains("not the one agent"), "{err}");
        // Without mutual TLS there is nothing to check.
        assert!(check(&rec, &origin(b"", IdentityRule::None)).is_ok());
    }

    #[test]
    fn an_issued_certificate_retires_the_old_one_once_used() {
        let ca = Ca::generate("t").unwrap();
        let mut rec = new_record();
        let old = origin(b"old", IdentityRule::Registry);
        record(&mut rec, &old);
        let issued = ca
            .issue_client(Uuid::now_v7(), Duration::from_secs(60))
            .unwrap();
        let issuer = Issuer {
            ca,
            validity: Duration::from_secs(60),
            endpoint: None,
            server_ca_pem: None,
        };
        let offer = certificate_offer(&issued, &issuer, Duration::from_secs(30));
        assert_eq!(offer.opamp.as_ref().unwrap().heartbeat_interval_seconds, 30);
        record_issued(&mut rec, &issued, offer);
        // Until the agent uses the new one, the old one still works.
        assert!(check(&rec, &old).is_ok());
        let new = origin(&issued.sha256, IdentityRule::Registry);
        assert!(check(&rec, &new).is_ok());
        record(&mut rec, &new);
        assert_eq!(rec.cert_sha256, issued.sha256);
        assert!(rec.settings_offer.is_none() && rec.settings_have_certificate);
        let err = check(&rec, &old).unwrap_err();
        assert!(err.contains("no longer accepted"), "{err}");
        // The same holds when the gateway checks names (uri-san) instead of pinning.
        let old_by_name = origin(b"old", IdentityRule::UriSan);
        assert!(check(&rec, &old_by_name).is_err());
    }

    #[test]
    fn only_a_few_retired_certificates_are_kept() {
        let mut rec = new_record();
        for i in 0..10u8 {
            rec.issued_cert_sha256 = vec![i];
            record(&mut rec, &origin(&[i], IdentityRule::Registry));
        }
        assert_eq!(rec.retired_cert_sha256.len(), RETIRED_KEPT);
        assert_eq!(rec.cert_sha256, vec![9]);
        assert_eq!(rec.retired_cert_sha256.last().unwrap(), &vec![8]);
    }

    #[test]
    fn a_certificate_that_names_the_agent_wins_over_one_that_claimed_it_first() {
        let mut rec = new_record();
        let uid = rec.instance_uid.clone();
        // Another valid certificate (naming some other agent) claims the uid first.
        let squatter = Origin {
            client_cert_uids: vec![Uuid::now_v7().as_bytes().to_vec()],
            ..origin(b"squatter", IdentityRule::Registry)
        };
        let err = check(&rec, &squatter).unwrap_err();
        assert!(err.contains("names instance_uid"), "{err}");
        // A certificate naming no uid binds on first use, as before...
        let shared = origin(b"shared", IdentityRule::Registry);
        record(&mut rec, &shared);
        assert_eq!(rec.cert_sha256, b"shared");
        // ...but the agent's own certificate, which names its uid, is still accepted and takes
        // the binding over.
        let own = Origin {
            client_cert_uids: vec![uid.clone()],
            ..origin(b"own", IdentityRule::Registry)
        };
        assert!(check(&rec, &own).is_ok());
        record(&mut rec, &own);
        assert_eq!(rec.cert_sha256, b"own");
        assert!(
            check(&rec, &shared).is_err(),
            "the first-use binding is gone"
        );
        // Under uri-san the same naming rule holds; with identity none nothing is checked.
        let named_elsewhere = Origin {
            client_cert_uids: vec![Uuid::now_v7().as_bytes().to_vec()],
            ..origin(b"x", IdentityRule::UriSan)
        };
        assert!(check_identity(None, &named_elsewhere, &uid).is_err());
        let unchecked = Origin {
            identity: IdentityRule::None as i32,
            ..named_elsewhere
        };
        assert!(check_identity(None, &unchecked, &uid).is_ok());
    }
}
