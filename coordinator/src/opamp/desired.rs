//! Which offers an agent is due: the config that gives it each aspect (files, packages,
//! connection settings), and whether the reply must carry it (the agent does not report running
//! it, or may have lost it).

use super::offers;
use crate::fleet::agents::{
    ConfigStanding, config_standing, has, hex_eq, runs_equivalent, takes, uid_of,
};
use crate::fleet::components;
use crate::fleet::configs::{Aspect, Desired};
use flotilla_common::config::AgentMetricsOffer;
use flotilla_common::names::OWN_METRICS_PATH;
use flotilla_common::selector::Attributes;
use flotilla_common::store::StoredConfig;
use flotilla_proto::bus::AgentRecord;
use flotilla_proto::opamp::{
    AgentCapabilities as Cap, PackagesAvailable, RemoteConfigStatuses, ServerToAgent,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// How many times connection settings are offered again to an agent that starts new sessions
/// without reporting them, per [`REOFFER_WINDOW_MS`]: an agent that restarts its client on every
/// offer stops being offered after this many.
pub const SETTINGS_REOFFERS: u32 = 3;
pub const REOFFER_WINDOW_MS: u64 = 10 * 60 * 1000;

/// Where an agent that reached another region than its home is sent: its home region's OpAMP
/// endpoint, and the CA of that endpoint's certificate when one is known.
#[derive(Debug, Clone, Copy)]
pub struct Redirect<'a> {
    pub endpoint: &'a str,
    pub server_ca_pem: Option<&'a str>,
}

/// Whether a reply may offer an agent (uid bytes) a config (hash) now.
pub type MayOfferConfig<'a> = dyn Fn(&[u8], &[u8]) -> bool + Sync + 'a;

/// Adds what differs between the desired state and what the agent reported: the remote config,
/// the packages, and the connection settings (heartbeat interval and own-telemetry destinations,
/// or an issued certificate, or its home region's endpoint), given the desired state, the default
/// heartbeat interval, the time, where the agent belongs (`redirect`: another region) and whether
/// a config may be offered now (`may_offer_config`, by uid and hash). `settings_unknown`: the
/// agent started a new session without saying which settings it runs.
pub(super) fn fill_offers(
    reply: &mut ServerToAgent,
    rec: &mut AgentRecord,
    attrs: &BTreeMap<String, String>,
    (desired, default_heartbeat, now_unix_ms, metrics_offer, redirect, may_offer_config): (
        &Desired,
        Duration,
        u64,
        &AgentMetricsOffer,
        Option<Redirect<'_>>,
        &MayOfferConfig<'_>,
    ),
    settings_unknown: bool,
) {
    let files = desired_config(rec, attrs, desired, Aspect::Files);
    refuse_unbuildable(rec, files, desired);
    // A config the agent already runs under another hash (the supervisor sends no status for
    // it) goes once per session, not with every reply.
    let due = |rec: &AgentRecord, c: &StoredConfig| {
        config_standing(rec, &c.hash) == ConfigStanding::Pending
            && !(runs_equivalent(rec, &c.hash) && hex_eq(&rec.offered_config_hash, &c.hash))
    };
    if let Some(cfg) = files.filter(|c| due(rec, c)) {
        let hash = hex::decode(&cfg.hash).unwrap_or_default();
        if may_offer_config(&rec.instance_uid, &hash) {
            rec.offered_config_hash = hash;
            reply.remote_config = Some(offers::remote_config_message(cfg));
        }
    }
    if let Some(p) = packages_to_offer(rec, attrs, desired) {
        rec.offered_packages_hash.clone_from(&p.all_packages_hash);
        reply.packages_available = Some(p);
    }
    // A pending certificate offer carries the heartbeat interval too. Once an agent runs settings
    // with a certificate, an offer without one would tell it to drop its certificate: none is made.
    // An agent in another region than its home that takes connection settings is sent home
    // (with its settings); one that does not is served here (roaming, as the API shows).
    rec.redirected_to.clear();
    let offer = match &rec.settings_offer {
        Some(cert_offer) => (**cert_offer).clone(),
        None if rec.settings_have_certificate => return,
        None => {
            let cfg = desired.resolve(uid_of(rec).as_ref(), attrs, Aspect::Settings);
            let settings = offers::settings_of(cfg);
            let metrics_url = own_metrics_url(metrics_offer, rec);
            let offer = offers::settings_offer(
                settings,
                default_heartbeat,
                rec.capabilities,
                metrics_url.as_deref(),
            );
            let home =
                redirect.filter(|_| has(rec.capabilities, Cap::AcceptsOpAmpConnectionSettings));
            match (home, offer) {
                (Some(home), offer) => {
                    rec.redirected_to = home.endpoint.to_owned();
                    let beat = heartbeat_interval(rec, attrs, desired, default_heartbeat);
                    offers::redirect_offer(offer, home.endpoint, beat, home.server_ca_pem)
                }
                (None, Some(o)) => o,
                (None, None) => return,
            }
        }
    };
    // Offered once per settings hash, again while the agent reports another hash, and again
    // (a few times at most) when a new session does not say the agent still has them: an offer
    // on every reply could make agents that reconnect on new settings loop.
    let reported = rec
        .connection_settings_status
        .as_ref()
        .map(|s| s.last_connection_settings_hash.as_slice());
    let changed = rec.offered_settings_hash != offer.hash
        || reported.is_some_and(|h| h != offer.hash.as_slice());
    if changed || (settings_unknown && may_reoffer(rec, now_unix_ms)) {
        rec.offered_settings_hash.clone_from(&offer.hash);
        reply.connection_settings = Some(offer);
    }
}

/// Where the agent is told to send its own metrics when its config names no destination.
fn own_metrics_url(offer: &AgentMetricsOffer, rec: &AgentRecord) -> Option<String> {
    match offer {
        AgentMetricsOffer::Gateway => rec
            .origin
            .as_ref()
            .filter(|o| !o.authority.is_empty())
            .map(|o| format!("{}{OWN_METRICS_PATH}", o.authority)),
        AgentMetricsOffer::Url(url) => Some(url.clone()),
        AgentMetricsOffer::Off => None,
    }
}

/// Notes (or lifts) the server's refusal of config `files` for an agent whose build lacks
/// components it needs: such a config is not sent and stands failed, with what is missing.
fn refuse_unbuildable(rec: &mut AgentRecord, files: Option<&StoredConfig>, desired: &Desired) {
    // What the agent says of a config wins over what its components suggest.
    let lacking = files
        .filter(|c| !reports_taking(rec, &c.hash))
        .map(|c| (c, components::missing(rec, &desired.needs(c))));
    match lacking {
        Some((c, missing)) if !missing.is_empty() => {
            rec.rejected_config_hash = hex::decode(&c.hash).unwrap_or_default();
            rec.rejected_config_error = format!(
                "not sent: this agent's build lacks {} (from the components it reports)",
                missing.join(", ")
            );
            rec.rejected_by_server = true;
        }
        _ if rec.rejected_by_server => {
            rec.rejected_config_hash.clear();
            rec.rejected_config_error.clear();
            rec.rejected_by_server = false;
        }
        _ => {}
    }
}

/// Whether the agent reports applying or running config `hash`.
fn reports_taking(rec: &AgentRecord, hash: &str) -> bool {
    rec.remote_config_status.as_ref().is_some_and(|s| {
        hex_eq(&s.last_remote_config_hash, hash)
            && matches!(
                s.status(),
                RemoteConfigStatuses::Applied | RemoteConfigStatuses::Applying
            )
    })
}

/// Counts a repeated settings offer against the agent's allowance; false when it is spent.
fn may_reoffer(rec: &mut AgentRecord, now_unix_ms: u64) -> bool {
    if now_unix_ms.saturating_sub(rec.settings_reoffer_window_unix_ms) > REOFFER_WINDOW_MS {
        rec.settings_reoffer_window_unix_ms = now_unix_ms;
        rec.settings_reoffers = 0;
    }
    if rec.settings_reoffers >= SETTINGS_REOFFERS {
        return false;
    }
    rec.settings_reoffers += 1;
    true
}

/// The config that gives this agent `aspect`, if the agent can take it.
pub fn desired_config<'a, A: Attributes + ?Sized>(
    rec: &AgentRecord,
    attrs: &A,
    desired: &'a Desired,
    aspect: Aspect,
) -> Option<&'a StoredConfig> {
    if !takes(rec, aspect) {
        return None;
    }
    // The uid only matters to agents in a rollout (and reading it costs on fleet-wide passes).
    let uid = if desired.enrolled.is_empty() {
        None
    } else {
        uid_of(rec)
    };
    desired.resolve(uid.as_ref(), attrs, aspect)
}

/// The desired config of an agent that does not report running it yet: what to send it. Not a
/// config it refused (a fixed version has another hash), not again to an agent that reports no
/// status once it was sent, and not one naming components its build lacks.
pub fn config_to_offer<'a, A: Attributes + ?Sized>(
    rec: &AgentRecord,
    attrs: &A,
    desired: &'a Desired,
) -> Option<&'a StoredConfig> {
    let cfg = desired_config(rec, attrs, desired, Aspect::Files)?;
    (config_standing(rec, &cfg.hash) == ConfigStanding::Pending
        && components::missing(rec, &desired.needs(cfg)).is_empty())
    .then_some(cfg)
}

/// The packages to offer this agent: once per change of its desired package set, and again while
/// it reports having been offered another set.
pub fn packages_to_offer<A: Attributes + ?Sized>(
    rec: &AgentRecord,
    attrs: &A,
    desired: &Desired,
) -> Option<PackagesAvailable> {
    let cfg = desired_config(rec, attrs, desired, Aspect::Packages)?;
    let offer = offers::packages_available(&cfg.packages);
    let reported = rec
        .package_statuses
        .as_ref()
        .map(|s| s.server_provided_all_packages_hash.as_slice());
    (rec.offered_packages_hash != offer.all_packages_hash
        || reported.is_some_and(|h| h != offer.all_packages_hash.as_slice()))
    .then_some(offer)
}

/// The heartbeat interval this agent is asked for: its settings config's, else the default.
pub fn heartbeat_interval<A: Attributes + ?Sized>(
    rec: &AgentRecord,
    attrs: &A,
    desired: &Desired,
    default: Duration,
) -> Duration {
    let cfg = desired.resolve(uid_of(rec).as_ref(), attrs, Aspect::Settings);
    let asked = offers::settings_of(cfg)
        .and_then(|s| s.heartbeat_interval)
        .unwrap_or(default);
    // Agents that take connection settings are offered no heartbeat (offers::settings_offer)
    // unless with a certificate: they beat as configured, 30 s by default in OpAMP's clients.
    if has(rec.capabilities, Cap::AcceptsOpAmpConnectionSettings) && !rec.settings_have_certificate
    {
        asked.max(offers::CLIENT_DEFAULT_HEARTBEAT)
    } else {
        asked
    }
}
