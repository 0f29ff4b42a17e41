//! What the gateway knows about one accepted connection and the checks it applies before anything
//! reaches an owner: bearer tokens, the client certificate's identity, certificates owners have
//! refused lately, the per-connection message rate, the connection's age, and its slot under the
//! connection cap.

use crate::activity::Activity;
use crate::slots::Slot;
use flotilla_common::config::AgentIdentity;
use flotilla_common::names::uid_text;
use flotilla_common::pki;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// The client certificate a TLS connection presented.
#[derive(Debug, Clone)]
pub(crate) struct PeerCert {
    pub sha256: Vec<u8>,
    /// Agent uids the certificate names (URI SANs `urn:uuid:`).
    pub uids: Vec<Uuid>,
}

impl PeerCert {
    pub fn of(der: &[u8]) -> Self {
        Self {
            sha256: pki::cert_sha256(der),
            uids: pki::cert_uids(der),
        }
    }
}

/// One accepted TCP (or TLS) connection, shared by its HTTP requests and its WebSocket session.
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub cert: Option<PeerCert>,
    /// Messages this connection may still send now (a token bucket).
    pub limiter: DefaultDirectRateLimiter,
    /// When the connection is closed for its age, if ever.
    pub retire_at: Option<Instant>,
    /// This connection's place under the connection cap, held as long as the connection (or the
    /// WebSocket session it became) lives; None: accepted past the cap, every request gets 503.
    pub slot: Option<Slot>,
    /// When its messages began to arrive and when it was last active.
    pub activity: Arc<Activity>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        cert: Option<PeerCert>,
        rate: u32,
        retire_at: Option<Instant>,
        slot: Option<Slot>,
        activity: Arc<Activity>,
    ) -> Self {
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN));
        Self {
            peer,
            cert,
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            retire_at,
            slot,
            activity,
        }
    }

    /// Whether this connection's certificate may speak for `uid` under `rule`. The registry rule
    /// is enforced by the owner, which holds the binding.
    pub fn may_speak_for(&self, rule: AgentIdentity, uid: &[u8]) -> Result<(), String> {
        if rule != AgentIdentity::UriSan {
            return Ok(());
        }
        let names = self.cert.as_ref().map_or(&[][..], |c| c.uids.as_slice());
        match Uuid::from_slice(uid) {
            Ok(u) if names.contains(&u) => Ok(()),
            _ => Err(format!(
                "the client certificate names instance_uid {}, not {}",
                names
                    .first()
                    .map_or_else(|| "none".to_owned(), Uuid::to_string),
                uid_text(uid)
            )),
        }
    }
}

/// Client certificates an owner refused lately (replaced, or bound to another agent), by
/// SHA-256: a connection presenting one is answered 403 with Retry-After before any upgrade or
/// body, so an agent stuck on such a certificate costs a TLS handshake per attempt, not a
/// WebSocket session and a round trip to its owner. Entries last [`RefusedCerts::TTL`]; at most
/// [`RefusedCerts::MAX`] are kept (the oldest go first).
#[derive(Debug, Default)]
pub(crate) struct RefusedCerts(Mutex<HashMap<Vec<u8>, Instant>>);

impl RefusedCerts {
    pub const TTL: Duration = Duration::from_secs(60);
    pub const MAX: usize = 10_000;

    pub fn refuse(&self, sha256: &[u8]) {
        let mut map = self.0.lock();
        let now = Instant::now();
        if map.len() >= Self::MAX {
            map.retain(|_, until| *until > now);
            if map.len() >= Self::MAX
                && let Some(oldest) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(sha256.to_vec(), now + Self::TTL);
    }

    /// How long the certificate stays refused, if it is.
    pub fn refused_for(&self, sha256: &[u8]) -> Option<Duration> {
        let mut map = self.0.lock();
        let until = *map.get(sha256)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            map.remove(sha256);
            return None;
        }
        Some(left)
    }
}

/// Bearer tokens agents present in `Authorization`, kept as SHA-256 digests: a lookup by digest
/// reveals nothing about how close a wrong token came.
#[derive(Debug, Default)]
pub struct AgentTokens(HashSet<[u8; 32]>);

impl AgentTokens {
    /// Reads one token per line; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read agent tokens {}: {e}", path.display()))?;
        let set: HashSet<[u8; 32]> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .collect();
        if set.is_empty() {
            return Err(format!("agent tokens file {} has no token", path.display()));
        }
        Ok(Self(set))
    }

    /// Whether `authorization` (the header value) carries a known bearer token.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization.and_then(|v| std::str::from_utf8(v).ok()) else {
            return false;
        };
        let Some((scheme, token)) = value.trim().split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && self
                .0
                .contains(&<[u8; 32]>::from(Sha256::digest(token.trim().as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_as_bearer_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# agents of team a\n s3cret \n\nother\n").unwrap();
        let tokens = AgentTokens::load(&path).unwrap();
        assert!(tokens.accepts(Some(b"Bearer s3cret")));
        assert!(tokens.accepts(Some(b"bearer other")));
        assert!(!tokens.accepts(Some(b"Bearer s3cre")));
        assert!(!tokens.accepts(Some(b"Basic s3cret")));
        assert!(!tokens.accepts(Some(b"s3cret")));
        assert!(!tokens.accepts(None));
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(
            AgentTokens::load(&path)
                .unwrap_err()
                .contains("has no token")
        );
    }

    #[test]
    fn uri_san_rule_needs_the_certificate_to_name_the_uid() {
        let uid = Uuid::now_v7();
        let conn = |uids: Vec<Uuid>| {
            ConnInfo::new(
                "127.0.0.1:1".parse().unwrap(),
                Some(PeerCert {
                    sha256: vec![1],
                    uids,
                }),
                10,
                None,
                None,
                Activity::new(
                    Duration::from_secs(1),
                    None,
                    crate::activity::Inflight::new(1 << 20),
                ),
            )
        };
        let rule = AgentIdentity::UriSan;
        assert!(conn(vec![uid]).may_speak_for(rule, uid.as_bytes()).is_ok());
        let other = Uuid::now_v7();
        let err = conn(vec![other])
            .may_speak_for(rule, uid.as_bytes())
            .unwrap_err();
        assert!(err.contains(&other.to_string()), "{err}");
        assert!(conn(vec![]).may_speak_for(rule, uid.as_bytes()).is_err());
        assert!(conn(vec![uid]).may_speak_for(rule, b"short").is_err());
        assert!(
            conn(vec![])
                .may_speak_for(AgentIdentity::Registry, uid.as_bytes())
                .is_ok()
        );
    }

    #[test]
    fn the_message_rate_allows_bursts_then_refuses() {
        let conn = ConnInfo::new(
            "127.0.0.1:1".parse().unwrap(),
            None,
            2,
            None,
            None,
            Activity::new(
                Duration::from_secs(1),
                None,
                crate::activity::Inflight::new(1 << 20),
            ),
        );
        let allowed = (0..20).filter(|_| conn.limiter.check().is_ok()).count();
        assert_eq!(allowed, 10, "a burst of 5x the rate");
    }

    #[tokio::test(start_paused = true)]
    async fn refused_certificates_are_remembered_for_a_while() {
        let refused = RefusedCerts::default();
        assert!(refused.refused_for(b"a").is_none());
        refused.refuse(b"a");
        assert_eq!(refused.refused_for(b"a"), Some(RefusedCerts::TTL));
        tokio::time::advance(RefusedCerts::TTL).await;
        assert!(
            refused.refused_for(b"a").is_none(),
            "forgotten after the TTL"
        );
    }
}
