//! The OpAMP offers built from a config: its files as remote config, its packages, its
//! connection settings. Pure: the same config and agent capabilities always give the same offer
//! and hash, on every node.

use crate::fleet::agents::has;
use base64::Engine;
use flotilla_common::names::FORWARD_HEADER;
use flotilla_common::store::{AgentSettings, PackageOffer, StoredConfig, TelemetryDestination};
use flotilla_proto::opamp::{
    AgentCapabilities as Cap, AgentConfigFile, AgentConfigMap, AgentRemoteConfig,
    ConnectionSettingsOffers, DownloadableFile, Header, Headers, OpAmpConnectionSettings,
    PackageAvailable, PackageType, PackagesAvailable, TelemetryConnectionSettings,
    TlsConnectionSettings,
};
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// The remote config message of a config's files.
pub fn remote_config_message(cfg: &StoredConfig) -> AgentRemoteConfig {
    AgentRemoteConfig {
        config: Some(AgentConfigMap {
            config_map: cfg
                .files
                .iter()
                .map(|(name, f)| {
                    let file = AgentConfigFile {
                        body: f.body.clone().into_bytes().into(),
                        content_type: f.content_type.clone(),
                    };
                    (name.clone(), file)
                })
                .collect(),
        }),
        config_hash: hex::decode(&cfg.hash).unwrap_or_default(),
    }
}

/// PackagesAvailable for a config's packages. Each package's hash covers everything offered for
/// it; `all_packages_hash` covers every package's name and hash, in name order.
pub fn packages_available(packages: &BTreeMap<String, PackageOffer>) -> PackagesAvailable {
    let mut all = Sha256::new();
    let packages = packages
        .iter()
        .map(|(name, p)| {
            let mut offer = PackageAvailable {
                r#type: if p.kind == "addon" {
                    PackageType::Addon
                } else {
                    PackageType::TopLevel
                } as i32,
                version: p.version.clone(),
                file: Some(DownloadableFile {
                    download_url: p.download_url.clone(),
                    content_hash: hex::decode(&p.content_hash).unwrap_or_default(),
                    signature: base64::engine::general_purpose::STANDARD
                        .decode(&p.signature)
                        .unwrap_or_default(),
                    headers: headers(&p.headers),
                }),
                hash: Vec::new(),
            };
            offer.hash = Sha256::digest(offer.encode_to_vec()).to_vec();
            for part in [name.as_bytes(), &offer.hash] {
                all.update((part.len() as u64).to_be_bytes());
                all.update(part);
            }
            (name.clone(), offer)
        })
        .collect();
    PackagesAvailable {
        packages,
        all_packages_hash: all.finalize().to_vec(),
    }
}

/// The size of the largest ServerToAgent that carries `cfg`'s offers (its files, packages and
/// settings at once, to an agent that takes them all), envelope included.
pub fn offer_size(cfg: &StoredConfig) -> usize {
    let all = u64::MAX;
    let msg = flotilla_proto::opamp::ServerToAgent {
        instance_uid: vec![0; 16],
        capabilities: all,
        flags: all,
        remote_config: (!cfg.files.is_empty()).then(|| remote_config_message(cfg)),
        packages_available: (!cfg.packages.is_empty()).then(|| packages_available(&cfg.packages)),
        connection_settings: settings_offer(cfg.settings.as_ref(), Duration::MAX, all, None),
        ..Default::default()
    };
    msg.encoded_len()
}

fn headers(h: &BTreeMap<String, String>) -> Option<Headers> {
    (!h.is_empty()).then(|| Headers {
        headers: h
            .iter()
            .map(|(key, value)| Header {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
    })
}

fn telemetry(d: &TelemetryDestination) -> TelemetryConnectionSettings {
    TelemetryConnectionSettings {
        destination_endpoint: d.destination_endpoint.clone(),
        headers: headers(&d.headers),
        ..Default::default()
    }
}

/// The heartbeat interval OpAMP clients (opamp-go, and the collector's supervisor on it) use
/// unless told otherwise.
pub const CLIENT_DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// The connection settings offered to an agent with `capabilities`: the heartbeat interval to
/// agents that report heartbeats (always filled in: an `opamp` offer without it would switch
/// heartbeats off, as proto3 cannot tell 0 from unset), and each own-telemetry destination the
/// config sets to agents that report that signal (own metrics to `own_metrics_default` when the
/// config names no destination for them). None when nothing applies to the agent.
///
/// Not the heartbeat to agents that accept OpAMP connection settings: those (the collector's
/// supervisor among them) take an `opamp` offer as their whole new connection, and one without a
/// destination and a CA would leave them connecting nowhere, or without verifying the server's
/// certificate. They keep the heartbeat they were configured with.
pub fn settings_offer(
    settings: Option<&AgentSettings>,
    default_heartbeat: Duration,
    capabilities: u64,
    own_metrics_default: Option<&str>,
) -> Option<ConnectionSettingsOffers> {
    let interval = settings
        .and_then(|s| s.heartbeat_interval)
        .unwrap_or(default_heartbeat);
    // Flotilla's own endpoint; with a forward, the gateway is told (a header the agent sends) to
    // pass a copy on to that destination.
    let forward = settings.and_then(|s| s.own_metrics_forward.as_ref());
    let default_metrics = own_metrics_default.map(|url| TelemetryDestination {
        destination_endpoint: url.to_owned(),
        headers: forward
            .map(|name| BTreeMap::from([(FORWARD_HEADER.to_owned(), name.clone())]))
            .unwrap_or_default(),
    });
    let own = |cap: Cap, d: Option<&TelemetryDestination>| {
        d.filter(|_| has(capabilities, cap)).map(telemetry)
    };
    let mut offer = ConnectionSettingsOffers {
        opamp: (has(capabilities, Cap::ReportsHeartbeat)
            && !has(capabilities, Cap::AcceptsOpAmpConnectionSettings))
        .then(|| OpAmpConnectionSettings {
            // At least 1: opamp-go takes 0 as "no heartbeats" (and HTTP agents stop polling).
            heartbeat_interval_seconds: interval.as_secs().max(1),
            ..Default::default()
        }),
        own_metrics: own(
            Cap::ReportsOwnMetrics,
            settings
                .and_then(|s| s.own_metrics.as_ref())
                .or(default_metrics.as_ref()),
        ),
        own_traces: own(
            Cap::ReportsOwnTraces,
            settings.and_then(|s| s.own_traces.as_ref()),
        ),
        own_logs: own(
            Cap::ReportsOwnLogs,
            settings.and_then(|s| s.own_logs.as_ref()),
        ),
        ..Default::default()
    };
    if offer.opamp.is_none()
        && offer.own_metrics.is_none()
        && offer.own_traces.is_none()
        && offer.own_logs.is_none()
    {
        return None;
    }
    offer.hash = Sha256::digest(offer.encode_to_vec()).to_vec();
    Some(offer)
}

/// `offer` (the agent's settings, if any) with an OpAMP connection to its home region's
/// `endpoint`: a positive heartbeat (0 would stop it), and the CA of that region's certificate
/// when one is known (an offer without one makes the collector's supervisor skip verifying it).
pub fn redirect_offer(
    offer: Option<ConnectionSettingsOffers>,
    endpoint: &str,
    heartbeat: Duration,
    server_ca_pem: Option<&str>,
) -> ConnectionSettingsOffers {
    let mut offer = offer.unwrap_or_default();
    offer.opamp = Some(OpAmpConnectionSettings {
        destination_endpoint: endpoint.to_owned(),
        heartbeat_interval_seconds: heartbeat.as_secs().max(1),
        tls: server_ca_pem.map(|pem| TlsConnectionSettings {
            ca_pem_contents: pem.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    });
    offer.hash = Sha256::digest(offer.encode_to_vec()).to_vec();
    offer
}

/// The settings of a config, if it defines any.
pub fn settings_of(cfg: Option<&StoredConfig>) -> Option<&AgentSettings> {
    cfg.and_then(|c| c.settings.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(version: &str) -> PackageOffer {
        PackageOffer {
            kind: "top_level".into(),
            version: version.into(),
            download_url: "https://example.com/otelcol.tar.gz".into(),
            content_hash: "ab".repeat(32),
            signature: "c2ln".into(),
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn package_hashes_follow_the_offer() {
        let one = BTreeMap::from([("otelcol".to_owned(), pkg("1.0"))]);
        let two = BTreeMap::from([("otelcol".to_owned(), pkg("1.1"))]);
        let a = packages_available(&one);
        assert_eq!(a, packages_available(&one), "deterministic");
        assert_ne!(
            a.all_packages_hash,
            packages_available(&two).all_packages_hash
        );
        let file = a.packages["otelcol"].file.as_ref().unwrap();
        assert_eq!(file.signature, b"sig");
        assert_eq!(file.content_hash, vec![0xab; 32]);
    }

    #[test]
    fn settings_go_only_to_agents_that_take_them() {
        let settings = AgentSettings {
            heartbeat_interval: Some(Duration::from_secs(10)),
            own_metrics: Some(TelemetryDestination {
                destination_endpoint: "https://otlp.example:4318".into(),
                headers: BTreeMap::new(),
            }),
            ..Default::default()
        };
        let hb = Cap::ReportsHeartbeat as u64;
        let metrics = Cap::ReportsOwnMetrics as u64;
        let o = settings_offer(Some(&settings), Duration::from_secs(30), hb, None).unwrap();
        assert_eq!(o.opamp.unwrap().heartbeat_interval_seconds, 10);
        assert!(o.own_metrics.is_none(), "agent does not report its metrics");
        let o = settings_offer(Some(&settings), Duration::from_secs(30), metrics, None).unwrap();
        assert!(o.opamp.is_none());
        assert_eq!(
            o.own_metrics.unwrap().destination_endpoint,
            "https://otlp.example:4318"
        );
        assert!(settings_offer(Some(&settings), Duration::from_secs(30), 0, None).is_none());
        let default = settings_offer(None, Duration::from_secs(30), hb, None).unwrap();
        assert_eq!(default.opamp.unwrap().heartbeat_interval_seconds, 30);
        // A supervisor that accepts connection settings would take a heartbeat-only offer as a
        // connection with no destination and no CA: it gets none, only its own telemetry.
        let supervisor = hb | metrics | Cap::AcceptsOpAmpConnectionSettings as u64;
        let o = settings_offer(Some(&settings), Duration::from_secs(30), supervisor, None).unwrap();
        assert!(o.opamp.is_none());
        assert!(o.own_metrics.is_some());
        let only_hb = hb | Cap::AcceptsOpAmpConnectionSettings as u64;
        assert!(settings_offer(Some(&settings), Duration::from_secs(30), only_hb, None).is_none());
    }

    #[test]
    fn own_metrics_go_to_the_default_unless_the_config_names_a_destination() {
        let metrics = Cap::ReportsOwnMetrics as u64;
        let here = Some("https://gw.example:4320/v1/metrics");
        let endpoint = |o: Option<ConnectionSettingsOffers>| {
            o.and_then(|o| o.own_metrics)
                .map(|m| m.destination_endpoint)
        };
        let hb = Duration::from_secs(30);
        assert_eq!(
            endpoint(settings_offer(None, hb, metrics, here)).as_deref(),
            here
        );
        let elsewhere = AgentSettings {
            own_metrics: Some(TelemetryDestination {
                destination_endpoint: "https://otlp.example:4318/v1/metrics".into(),
                headers: BTreeMap::new(),
            }),
            ..Default::default()
        };
        assert_eq!(
            endpoint(settings_offer(Some(&elsewhere), hb, metrics, here)).as_deref(),
            Some("https://otlp.example:4318/v1/metrics")
        );
        // Not to agents that do not report their metrics.
        assert_eq!(endpoint(settings_offer(None, hb, 0, here)), None);
        // Kept here and forwarded: this endpoint, with the header naming the destination.
        let both = AgentSettings {
            own_metrics_forward: Some("backend".into()),
            ..Default::default()
        };
        let o = settings_offer(Some(&both), hb, metrics, here).unwrap();
        let m = o.own_metrics.unwrap();
        assert_eq!(Some(m.destination_endpoint.as_str()), here);
        let h = &m.headers.unwrap().headers[0];
        assert_eq!(
            (h.key.as_str(), h.value.as_str()),
            (FORWARD_HEADER, "backend")
        );
    }
}
