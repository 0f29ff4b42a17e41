//! Operations on agents: the fleet's health, the agent list and one agent, and what an operator
//! does to one agent (labels, restart, certificate, removal), carried out by the owner of the
//! agent's shard.

use super::error::bad_request;
use super::query::parse_limit;
use super::regions::{RegionAnswer, RegionPage, RegionQuery, UNEXPECTED};
use super::views::{
    AgentDetail, AgentSummary, AgentsPage, CONFIG_STATES, FleetHealth, FleetOverview,
    OverviewBuilder, config_drift, config_state, rfc3339,
};
use super::{Caller, Error, Ops, Result};
use crate::fleet::agents::{RecordAttributes, healthy, in_fleet_view, status_name};
use crate::fleet::checks::valid_label_key;
use crate::fleet::configs::{Aspect, Desired};
use crate::opamp::desired::desired_config;
use base64::Engine;
use flotilla_common::names::SHARD_COUNT;
use flotilla_common::selector::Attributes;
use flotilla_common::selector::Selector;
use flotilla_proto::bus::{
    AgentRecord, DeleteAgent, IssueCertificate, RestartAgent, RestartResult, SendCustomMessage,
    SetLabels, uplink,
};
use prost::Message;
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

const DEFAULT_LIMIT: usize = 100;

/// How deep (offset + limit) a list over several regions may page: each region sends that many.
pub const MAX_REGIONS_DEPTH: usize = 1000;

/// How deep (offset + limit) a list may page and still be asked of the shard owners (each sends
/// that many summaries, within a bus message); deeper, the store is walked.
const MAX_OWNERS_DEPTH: usize = 500;

/// An instance uid from its text (a UUID).
pub fn parse_uid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| {
        bad_request(format!(
            "{s:?} is not an instance uid (expected a UUID such as 0190c9a4-...)"
        ))
    })
}

/// A selector in its text form (`env=prod,region in (eu,us),!canary`).
pub fn parse_selector(s: &str) -> Result<Selector> {
    s.parse().map_err(|e| bad_request(format!("{e}")))
}

/// What a list is sorted by.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum SortKey {
    /// The instance uid (the default; the only order a `cursor` pages through).
    #[default]
    Uid,
    Status,
    Health,
    Config,
    LastSeen,
    /// One attribute (reported or label); agents without it sort first.
    Attribute(String),
}

impl SortKey {
    fn parse(s: &str) -> Self {
        match s {
            "uid" | "instance_uid" => Self::Uid,
            "status" => Self::Status,
            "health" => Self::Health,
            "config" => Self::Config,
            "last_seen" => Self::LastSeen,
            key => Self::Attribute(key.to_owned()),
        }
    }

    /// The key of one agent (uids break ties).
    fn of(&self, rec: &AgentRecord, config: &str) -> String {
        match self {
            Self::Uid => String::new(),
            Self::Status => status_name(rec).to_owned(),
            Self::Health => match healthy(rec) {
                Some(false) => "0",
                Some(true) => "1",
                None => "2",
            }
            .to_owned(),
            Self::Config => config.to_owned(),
            // Zero-padded, so text order is time order.
            Self::LastSeen => format!("{:020}", rec.last_seen_unix_ms),
            Self::Attribute(k) => RecordAttributes(rec)
                .attribute(k)
                .map(|v| v.into_owned())
                .unwrap_or_default(),
        }
    }
}

/// Which agents a list shows, in which order, and which page.
#[derive(Debug, Default)]
pub struct AgentQuery {
    pub selector: Selector,
    pub status: Option<String>,
    pub healthy: Option<bool>,
    /// One of [`CONFIG_STATES`].
    pub config: Option<String>,
    /// Only agents whose config files come from this config (by name), and version.
    pub config_name: Option<String>,
    pub config_version: Option<u64>,
    /// Only agents whose effective config differs (true) or does not (false) from their desired
    /// config ([`config_drift`]).
    pub drift: Option<bool>,
    pub sort: SortKey,
    pub descending: bool,
    pub limit: usize,
    /// The last uid of the previous page (uid order only).
    pub cursor: Option<Uuid>,
    /// Matches skipped before the page (any order).
    pub offset: usize,
    /// The text parameters it was parsed from (what other regions are asked with).
    pub params: Vec<(String, String)>,
}

impl AgentQuery {
    /// The query of text parameters (`selector`, `status`, `health`, `config`, `config_name`,
    /// `config_version`, `drift`, `sort`, `order`, `limit`, `cursor`, `offset`), as an interface
    /// received them; unknown parameters are refused.
    pub fn parse<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut q = Self {
            limit: DEFAULT_LIMIT,
            ..Default::default()
        };
        for (key, value) in params {
            q.params.push((key.to_owned(), value.to_owned()));
            match key {
                "selector" => q.selector = parse_selector(value)?,
                "status" => {
                    if !matches!(value, "connected" | "disconnected" | "silent") {
                        return Err(bad_request(format!(
                            "status must be connected, disconnected or silent, not {value:?}"
                        )));
                    }
                    q.status = Some(value.to_owned());
                }
                "health" => {
                    q.healthy = match value {
                        "healthy" => Some(true),
                        "unhealthy" => Some(false),
                        h => {
                            return Err(bad_request(format!(
                                "health must be healthy or unhealthy, not {h:?}"
                            )));
                        }
                    }
                }
                "config" => {
                    if !CONFIG_STATES.contains(&value) {
                        return Err(bad_request(format!(
                            "config must be one of {}, not {value:?}",
                            CONFIG_STATES.join(", ")
                        )));
                    }
                    q.config = Some(value.to_owned());
                }
                "config_name" => q.config_name = Some(value.to_owned()),
                "drift" => {
                    q.drift = Some(value.parse().map_err(|_| {
                        bad_request(format!("drift must be true or false, not {value:?}"))
                    })?);
                }
                "config_version" => {
                    q.config_version = Some(value.parse().map_err(|_| {
                        bad_request(format!("config_version must be a number, not {value:?}"))
                    })?);
                }
                "sort" if value.is_empty() => {}
                "sort" => q.sort = SortKey::parse(value),
                "order" => {
                    q.descending = match value {
                        "asc" | "" => false,
                        "desc" => true,
                        o => {
                            return Err(bad_request(format!(
                                "order must be asc or desc, not {o:?}"
                            )));
                        }
                    }
                }
                "offset" if value.is_empty() => {}
                "offset" => {
                    q.offset = value.parse().map_err(|_| {
                        bad_request(format!("offset must be a number, not {value:?}"))
                    })?;
                }
                "limit" => {
                    q.limit = parse_limit(value)?;
                }
                "cursor" if value.is_empty() => {}
                "cursor" => {
                    let c = Uuid::parse_str(value)
                        .map_err(|_| bad_request(format!("invalid cursor {value:?}")))?;
                    q.cursor = Some(c);
                }
                _ => return Err(bad_request(format!("unknown query parameter {key:?}"))),
            }
        }
        Ok(q)
    }

    /// What the query lists and in which order, in text, when that reads the record alone and
    /// nothing a touch changes (sequence number, last-seen time): whether a record is listed,
    /// and where, changes only when the record does. None for filters or an order on configs
    /// (they read the desired state too) and for the order by last-seen time.
    pub(crate) fn listing(&self) -> Option<String> {
        if self.by_config() || self.sort == SortKey::LastSeen {
            return None;
        }
        let listing = self.params.iter().filter(|(k, _)| {
            matches!(
                k.as_str(),
                "selector" | "status" | "health" | "sort" | "order"
            )
        });
        Some(listing.map(|(k, v)| format!("{k}={v}\n")).collect())
    }

    /// Whether the query reads the desired state: its config filters, or an order by config.
    fn by_config(&self) -> bool {
        self.config.is_some()
            || self.config_name.is_some()
            || self.config_version.is_some()
            || self.drift.is_some()
            || self.sort == SortKey::Config
    }

    /// Whether `rec` is listed; with its config state (when the query needs it).
    fn matches(&self, rec: &AgentRecord, desired: &Desired) -> Option<&'static str> {
        let listed = (self.status.is_none() || self.status.as_deref() == Some(status_name(rec)))
            && self.healthy.is_none_or(|want| healthy(rec) == Some(want));
        if !listed {
            return None;
        }
        let attrs = RecordAttributes(rec);
        if !self.selector.is_empty() && !self.selector.matches(&attrs) {
            return None;
        }
        if !self.by_config() {
            return Some("");
        }
        let files = desired_config(rec, &attrs, desired, Aspect::Files);
        let state = config_state(rec, files.map(|c| c.hash.as_str()));
        let named = self
            .config_name
            .as_deref()
            .is_none_or(|want| files.is_some_and(|c| c.name == want));
        let versioned = self
            .config_version
            .is_none_or(|want| files.is_some_and(|c| c.version == want));
        let drifted = self
            .drift
            .is_none_or(|want| config_drift(rec, files.map(|c| c.hash.as_str())) == Some(want));
        (named && versioned && drifted && self.config.as_deref().is_none_or(|want| want == state))
            .then_some(state)
    }
}

/// One part of an agent list (a region's, one shard owner's, or the store's walk over some
/// shards): every match counted, and the first `keep` of them in the list's order kept as
/// summaries. Only a match that may be among the first becomes a summary: once the kept ones are
/// cut down to `keep`, a match after the last of them is counted and let go.
pub(crate) struct ListPart<'a> {
    q: &'a AgentQuery,
    desired: &'a Desired,
    region: &'a str,
    keep: usize,
    total: usize,
    after_cursor: usize,
    kept: Vec<(String, Uuid, Kept)>,
    /// The last kept when they were last cut down.
    last: Option<(String, Uuid)>,
    /// What the list lists and in which order, in text ([`AgentQuery::listing`]).
    listing: Option<String>,
}

/// A match kept by a [`ListPart`]: its summary (from another part), or the record it is made of
/// when the part is finished. A walk keeps hundreds of matches on its way to the first 50 (each
/// that may be among them, in the walk's order), and a summary takes more than the record's copy.
enum Kept {
    Record(Box<AgentRecord>),
    Summary(Box<AgentSummary>),
}

impl<'a> ListPart<'a> {
    pub(crate) fn new(
        q: &'a AgentQuery,
        desired: &'a Desired,
        region: &'a str,
        keep: usize,
    ) -> Self {
        Self {
            q,
            desired,
            region,
            keep,
            total: 0,
            after_cursor: 0,
            kept: Vec::new(),
            last: None,
            listing: q.listing(),
        }
    }

    /// What the list lists, in text, and whether in descending order: None unless that reads
    /// the record alone and nothing a touch changes ([`AgentQuery::listing`]).
    pub(crate) fn listing(&self) -> Option<(&str, bool)> {
        let listing = self.listing.as_deref()?;
        Some((listing, self.q.descending))
    }

    /// Whether key `a` comes before `b` in the list's order (uids break ties).
    fn before(&self, a: (&str, &Uuid), b: (&str, &Uuid)) -> bool {
        if self.q.descending { a > b } else { a < b }
    }

    /// Counts `rec` if the list shows it, and keeps it if it may be among the first; its key in
    /// the list's order if counted.
    pub(crate) fn add(&mut self, rec: &AgentRecord) -> Option<String> {
        if !in_fleet_view(rec) {
            return None;
        }
        let config = self.q.matches(rec, self.desired)?;
        let uid = Uuid::from_slice(&rec.instance_uid).ok()?;
        let key = self.q.sort.of(rec, config);
        self.add_listed(&key, uid, &|| Some(rec));
        Some(key)
    }

    /// Counts a record the list shows, of key `key` in the list's order, and keeps it (`rec`)
    /// if it may be among the first. False when no record after it in the list's order can be
    /// among the first either: those are only counted ([`ListPart::count_listed`]).
    pub(crate) fn add_listed<'r>(
        &mut self,
        key: &str,
        uid: Uuid,
        rec: &dyn Fn() -> Option<&'r AgentRecord>,
    ) -> bool {
        self.total += 1;
        if self.q.cursor.is_some_and(|c| uid <= c) {
            return true;
        }
        self.after_cursor += 1;
        if let Some((k, u)) = &self.last
            && !self.before((key, &uid), (k.as_str(), u))
        {
            // Neither can any after it in the list's order, and those are all after the cursor,
            // but for a cursor given with an order it does not page through (which the API
            // refuses): then each is still counted where it falls.
            return self.q.cursor.is_some() && (self.q.sort != SortKey::Uid || self.q.descending);
        }
        let Some(rec) = rec() else {
            return true;
        };
        let mut copy = rec.clone();
        if !copy.effective_config_hash.is_empty() {
            // The summary names it by that hash: tens of KB not held.
            copy.effective_config = None;
        }
        self.kept
            .push((key.to_owned(), uid, Kept::Record(Box::new(copy))));
        self.cut_when_full();
        true
    }

    /// Counts `n` records the list shows, none of which can be among the first, all after the
    /// cursor ([`ListPart::add_listed`]).
    pub(crate) fn count_listed(&mut self, n: usize) {
        self.total += n;
        self.after_cursor += n;
    }

    /// Adds another part of the same list (kept as it was sent: its summaries name its region).
    pub(crate) fn add_part(&mut self, part: RegionPage) {
        self.total += part.total;
        self.after_cursor += part.after_cursor;
        for (key, summary) in part.items {
            if let Ok(uid) = Uuid::parse_str(&summary.instance_uid) {
                self.kept.push((key, uid, Kept::Summary(Box::new(summary))));
            }
        }
        self.cut_when_full();
    }

    fn cut_when_full(&mut self) {
        if self.kept.len() >= 2 * self.keep.max(64) {
            self.cut();
        }
    }

    /// Sorts the kept in the list's order and keeps the first `keep`.
    fn cut(&mut self) {
        let descending = self.q.descending;
        self.kept.sort_unstable_by(|(ka, ua, _), (kb, ub, _)| {
            let order = (ka, ua).cmp(&(kb, ub));
            if descending { order.reverse() } else { order }
        });
        self.kept.truncate(self.keep);
        if self.kept.len() == self.keep {
            self.last = self.kept.last().map(|(k, u, _)| (k.clone(), *u));
        }
    }

    /// The part: its counts and the kept matches in order, the first `skip` left out.
    pub(crate) fn finish(mut self, skip: usize) -> RegionPage {
        self.cut();
        let (desired, region) = (self.desired, self.region);
        let summary = |kept| match kept {
            Kept::Record(rec) => AgentSummary::of(&rec, desired).in_region(region),
            Kept::Summary(summary) => *summary,
        };
        RegionPage {
            total: self.total,
            after_cursor: self.after_cursor,
            items: self
                .kept
                .into_iter()
                .skip(skip)
                .map(|(key, _, kept)| (key, summary(kept)))
                .collect(),
        }
    }
}

/// An agent's server-set labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Labels {
    pub instance_uid: String,
    pub labels: BTreeMap<String, String>,
}

/// What a restart did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartOutcome {
    /// Sent to the agent's live WebSocket connection.
    Delivered,
    /// Kept until the agent's next message (HTTP poll or reconnect), for the restart TTL.
    Queued,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restarted {
    pub instance_uid: String,
    pub delivered: bool,
    pub queued: bool,
}

/// What became of a custom message sent to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomMessageSent {
    pub instance_uid: String,
    /// Sent over its live WebSocket now.
    pub delivered: bool,
    /// Kept for the reply to its next message (HTTP poll or reconnect), for 10 minutes.
    pub queued: bool,
}

/// Longest capability and type of a custom message sent to an agent, and most data.
pub const MAX_CUSTOM_NAME: usize = 256;
pub const MAX_CUSTOM_DATA: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deleted {
    pub instance_uid: String,
    pub deleted: bool,
}

/// A client certificate issued to an agent and offered to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issued {
    pub instance_uid: String,
    pub sha256: String,
    pub not_after: String,
    /// Sent over the agent's live WebSocket now (else with the reply to its next message).
    pub delivered: bool,
}

impl Ops {
    /// The agents' counts by status and health, over every region of the fleet.
    pub async fn fleet_health(&self, _caller: &Caller) -> Result<FleetHealth> {
        let mut h = self.region_health().await?;
        if self.peer_regions().is_empty() {
            return Ok(h);
        }
        let asked = self
            .ask_regions(&RegionQuery::Health, |a| match a {
                RegionAnswer::Health(h) => Ok(h),
                _ => Err(UNEXPECTED.into()),
            })
            .await;
        h.regions.insert(self.region().to_owned(), h.clone());
        for (region, theirs) in asked.answers {
            h.add(&theirs);
            h.regions.insert(region, theirs);
        }
        h.partial = !asked.missing.is_empty();
        h.missing_regions = asked.missing;
        Ok(h)
    }

    /// This region's agents' counts: as the store keeps them, or (while it does not count some
    /// shard yet) counted by visiting every agent.
    pub(crate) async fn region_health(&self) -> Result<FleetHealth> {
        if let Some(counts) = self.store().agent_counts().await? {
            return Ok(counts.into());
        }
        let mut h = FleetHealth::default();
        self.visit_fleet(&mut |a| h.count(a)).await?;
        Ok(h)
    }

    /// Counts and lists of the whole fleet for its overview (one pass over the agents).
    pub async fn fleet_overview(&self, _caller: &Caller) -> Result<FleetOverview> {
        let desired = self.desired.current();
        let mut b = OverviewBuilder::default();
        self.visit_fleet(&mut |a| b.add(a, &desired)).await?;
        Ok(b.finish())
    }

    /// One page of the agents `q` selects, in the order it asks for, over every region of the
    /// fleet: each region sends the first `offset + limit` of its matches, merged here in the
    /// list's order.
    pub async fn list_agents(&self, _caller: &Caller, q: &AgentQuery) -> Result<AgentsPage> {
        if q.cursor.is_some() && (q.sort != SortKey::Uid || q.descending) {
            return Err(bad_request(
                "cursor pages through the default order only; use offset with sort or order",
            ));
        }
        if self.peer_regions().is_empty() {
            let part = self.region_page(q, q.offset, q.limit).await?;
            let next_cursor = (q.offset + q.limit < part.after_cursor && q.sort == SortKey::Uid)
                .then(|| part.items.last().map(|(_, a)| a.instance_uid.clone()))
                .flatten();
            return Ok(AgentsPage {
                total: part.total,
                agents: part.items.into_iter().map(|(_, a)| a).collect(),
                next_cursor,
                missing_regions: Vec::new(),
                partial: false,
            });
        }
        let deepest = q.offset + q.limit;
        if deepest > MAX_REGIONS_DEPTH {
            return Err(bad_request(format!(
                "offset + limit may reach {MAX_REGIONS_DEPTH} agents in a fleet of several \
                 regions; page further with cursor (in the default order) or a narrower selector"
            )));
        }
        let local = self.region_page(q, 0, deepest).await?;
        let asked = self
            .ask_regions(
                &RegionQuery::Agents {
                    params: q.params.clone(),
                },
                |a| match a {
                    RegionAnswer::Agents(p) => Ok(p),
                    _ => Err(UNEXPECTED.into()),
                },
            )
            .await;
        let (mut total, mut after_cursor) = (0, 0);
        let mut items = Vec::new();
        for part in std::iter::once(local).chain(asked.answers.into_iter().map(|(_, p)| p)) {
            total += part.total;
            after_cursor += part.after_cursor;
            items.extend(part.items);
        }
        items
            .sort_unstable_by(|(ka, a), (kb, b)| (ka, &a.instance_uid).cmp(&(kb, &b.instance_uid)));
        if q.descending {
            items.reverse();
        }
        let agents: Vec<AgentSummary> = items
            .into_iter()
            .skip(q.offset)
            .take(q.limit)
            .map(|(_, a)| a)
            .collect();
        let next_cursor = (deepest < after_cursor && q.sort == SortKey::Uid)
            .then(|| agents.last().map(|a| a.instance_uid.clone()))
            .flatten();
        Ok(AgentsPage {
            total,
            agents,
            next_cursor,
            partial: !asked.missing.is_empty(),
            missing_regions: asked.missing,
        })
    }

    /// This region's part of a list: its matches after the cursor, `skip` of them left out and
    /// the next `take` kept, with their sort keys. In a cluster every shard owner sends its part
    /// from its copies of its shards' records ([`super::owner::OwnerClient::gather_lists`]); the
    /// shards no owner answered for are read from the store.
    pub(crate) async fn region_page(
        &self,
        q: &AgentQuery,
        skip: usize,
        take: usize,
    ) -> Result<RegionPage> {
        let desired = self.desired.current();
        let mut part = ListPart::new(q, &desired, self.region(), skip + take);
        let mut unheard = vec![true; usize::from(SHARD_COUNT)];
        if !self.store().holds_agents_in_memory() && skip + take <= MAX_OWNERS_DEPTH {
            self.owners
                .gather_lists(&q.params, skip + take, &mut unheard, &mut |p| {
                    part.add_part(p)
                })
                .await;
        }
        if unheard.contains(&true) {
            self.visit_fleet_shards(&|s| unheard[usize::from(s)], &mut |a| {
                part.add(a);
            })
            .await?;
        }
        Ok(part.finish(skip))
    }

    /// The record of an agent of this region; none when it has none (or only the marker left
    /// under the uid of an agent that took a new one: the error says which).
    pub(crate) async fn region_record(&self, uid: Uuid) -> Result<Option<AgentRecord>> {
        match self.store().get_agent(uid).await? {
            Some(marker) if !marker.moved_to.is_empty() => Err(Error::NotFound(format!(
                "no agent {uid}: it took the new instance uid {}",
                flotilla_common::names::uid_text(&marker.moved_to)
            ))),
            rec => Ok(rec),
        }
    }

    async fn record_of(&self, uid: Uuid) -> Result<AgentRecord> {
        self.region_record(uid)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no agent {uid}")))
    }

    /// Everything known of one agent (secrets in its effective config redacted), from whichever
    /// region holds it.
    pub async fn agent(&self, _caller: &Caller, uid: &str) -> Result<AgentDetail> {
        let uid = parse_uid(uid)?;
        let here = self.region_record(uid).await?;
        let (region, rec) = match here {
            Some(rec) if self.peer_regions().is_empty() || in_fleet_view(&rec) => {
                (self.region().to_owned(), rec)
            }
            None if self.peer_regions().is_empty() => {
                return Err(Error::NotFound(format!("no agent {uid}")));
            }
            // Not here, or sent home and gone: from the region that holds it, else what is here.
            here => match (self.remote_record(uid).await, here) {
                (Ok(found), _) => found,
                (Err(_), Some(rec)) => (self.region().to_owned(), rec),
                (Err(e), None) => return Err(e),
            },
        };
        let mut detail = AgentDetail::of(&rec, &self.desired.current(), &self.cfg.redactor);
        detail.summary = detail.summary.in_region(&region);
        Ok(detail)
    }

    /// An agent's record from the other region that holds it.
    async fn remote_record(&self, uid: Uuid) -> Result<(String, AgentRecord)> {
        let asked = self
            .ask_regions(
                &RegionQuery::Agent {
                    uid: uid.to_string(),
                },
                |a| match a {
                    RegionAnswer::Agent(rec) => rec
                        .map(|b64| {
                            let bytes = base64::engine::general_purpose::STANDARD
                                .decode(b64)
                                .map_err(|e| e.to_string())?;
                            AgentRecord::decode(bytes.as_slice()).map_err(|e| e.to_string())
                        })
                        .transpose(),
                    _ => Err(UNEXPECTED.into()),
                },
            )
            .await;
        // The region it is in first (another may hold what it left behind when sent home).
        let mut found: Vec<(String, AgentRecord)> = asked
            .answers
            .into_iter()
            .filter_map(|(region, rec)| Some((region, rec?)))
            .collect();
        found.sort_by_key(|(_, rec)| !in_fleet_view(rec));
        if let Some((region, rec)) = found.into_iter().next() {
            if !rec.moved_to.is_empty() {
                return Err(Error::NotFound(format!(
                    "no agent {uid}: it took the new instance uid {}",
                    flotilla_common::names::uid_text(&rec.moved_to)
                )));
            }
            return Ok((region, rec));
        }
        if asked.missing.is_empty() {
            Err(Error::NotFound(format!("no agent {uid}")))
        } else {
            Err(Error::Unavailable(format!(
                "no agent {uid} in the regions that answered; {} did not answer in time",
                asked.missing.join(", ")
            )))
        }
    }

    pub async fn labels(&self, _caller: &Caller, uid: &str) -> Result<Labels> {
        let uid = parse_uid(uid)?;
        let rec = self.record_of(uid).await?;
        Ok(Labels {
            instance_uid: uid.to_string(),
            labels: rec.labels.into_iter().collect(),
        })
    }

    /// Sets and removes an agent's server-set labels (the owner writes them with their audit
    /// entry); the agent's desired state follows.
    pub async fn set_labels(
        &self,
        caller: &Caller,
        uid: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<Labels> {
        let uid = parse_uid(uid)?;
        if let Some(k) = set.keys().chain(&remove).find(|k| !valid_label_key(k)) {
            return Err(bad_request(format!(
                "label key {k:?} must be 1-253 letters, digits, '.', '_', '-' or '/'"
            )));
        }
        let ask = uplink::Kind::SetLabels(SetLabels {
            instance_uid: uid.as_bytes().to_vec(),
            set: set.into_iter().collect(),
            remove,
            caller: caller.name.clone(),
        });
        let result = self.owners.ask(uid, ask).await?.labels.unwrap_or_default();
        if result.unknown_agent {
            return Err(Error::NotFound(format!("no agent {uid}")));
        }
        if !result.error.is_empty() {
            return Err(Error::Unavailable(format!(
                "agent {uid}: {}; try again",
                result.error
            )));
        }
        Ok(Labels {
            instance_uid: uid.to_string(),
            labels: result.after.into_iter().collect(),
        })
    }

    /// Restarts an agent: at once over its live WebSocket, otherwise at its next message.
    pub async fn restart_agent(&self, caller: &Caller, uid: &str) -> Result<Restarted> {
        let uid = parse_uid(uid)?;
        let outcome = self.restart(uid, &caller.name).await?;
        Ok(Restarted {
            instance_uid: uid.to_string(),
            delivered: outcome == RestartOutcome::Delivered,
            queued: outcome == RestartOutcome::Queued,
        })
    }

    /// A restart through the owner of the agent's shard; `audit_as` names the caller in the
    /// audit log (empty: not audited on its own, as part of a restart job).
    pub(crate) async fn restart(&self, uid: Uuid, audit_as: &str) -> Result<RestartOutcome> {
        let ask = uplink::Kind::Restart(RestartAgent {
            instance_uid: uid.as_bytes().to_vec(),
            caller: audit_as.to_owned(),
        });
        let reply = self.owners.ask(uid, ask).await?;
        match reply.restart() {
            RestartResult::Delivered => Ok(RestartOutcome::Delivered),
            RestartResult::Queued => Ok(RestartOutcome::Queued),
            RestartResult::UnknownAgent => Err(Error::NotFound(format!("no agent {uid}"))),
            RestartResult::NotCapable => Err(Error::Conflict(format!(
                "agent {uid} does not accept restart commands (no AcceptsRestartCommand capability)"
            ))),
            RestartResult::Failed | RestartResult::Unspecified => Err(Error::Unavailable(format!(
                "agent {uid}: the agent's state could not be written; try again"
            ))),
        }
    }

    /// Sends agent `uid` a custom message (OpAMP CustomMessage) under a custom capability it
    /// declares: at once over its live WebSocket, otherwise with the reply to its next message.
    pub async fn send_custom_message(
        &self,
        caller: &Caller,
        uid: &str,
        capability: &str,
        kind: &str,
        data: Vec<u8>,
    ) -> Result<CustomMessageSent> {
        let uid = parse_uid(uid)?;
        if capability.is_empty() || capability.len() > MAX_CUSTOM_NAME {
            return Err(bad_request(format!(
                "capability must be 1-{MAX_CUSTOM_NAME} bytes (a custom capability the agent declares)"
            )));
        }
        if kind.is_empty() || kind.len() > MAX_CUSTOM_NAME {
            return Err(bad_request(format!(
                "type must be 1-{MAX_CUSTOM_NAME} bytes"
            )));
        }
        if data.len() > MAX_CUSTOM_DATA {
            return Err(bad_request(format!(
                "data is {} bytes; a custom message carries at most {MAX_CUSTOM_DATA}",
                data.len()
            )));
        }
        let ask = uplink::Kind::SendCustomMessage(SendCustomMessage {
            instance_uid: uid.as_bytes().to_vec(),
            capability: capability.to_owned(),
            r#type: kind.to_owned(),
            data,
            caller: caller.name.clone(),
        });
        let r = self
            .owners
            .ask(uid, ask)
            .await?
            .custom_message
            .unwrap_or_default();
        if r.unknown_agent {
            return Err(Error::NotFound(format!("no agent {uid}")));
        }
        if !r.refused.is_empty() {
            return Err(Error::Conflict(r.refused));
        }
        if !(r.delivered || r.queued) {
            return Err(Error::Unavailable(format!(
                "agent {uid}: custom message not sent: {}; try again",
                r.error
            )));
        }
        Ok(CustomMessageSent {
            instance_uid: uid.to_string(),
            delivered: r.delivered,
            queued: r.queued,
        })
    }

    /// Removes an agent's record (audited). A connected agent comes back as a new record at its
    /// next message.
    pub async fn delete_agent(&self, caller: &Caller, uid: &str) -> Result<Deleted> {
        let uid = parse_uid(uid)?;
        let ask = uplink::Kind::DeleteAgent(DeleteAgent {
            instance_uid: uid.as_bytes().to_vec(),
            caller: caller.name.clone(),
        });
        let result = self.owners.ask(uid, ask).await?.deleted.unwrap_or_default();
        if result.unknown_agent {
            return Err(Error::NotFound(format!("no agent {uid}")));
        }
        if !result.error.is_empty() {
            return Err(Error::Unavailable(format!(
                "agent {uid} not deleted: {}; try again",
                result.error
            )));
        }
        Ok(Deleted {
            instance_uid: uid.to_string(),
            deleted: true,
        })
    }

    /// Issues agent `uid` a new key and certificate and offers them over OpAMP (now if it is
    /// connected over WebSocket, else with the reply to its next message).
    pub async fn issue_certificate(&self, caller: &Caller, uid: &str) -> Result<Issued> {
        let uid = parse_uid(uid)?;
        let ask = uplink::Kind::IssueCertificate(IssueCertificate {
            instance_uid: uid.as_bytes().to_vec(),
            caller: caller.name.clone(),
        });
        let issued = self.owners.ask(uid, ask).await?.issued.unwrap_or_default();
        if issued.not_capable {
            return Err(Error::Conflict(issued.error));
        }
        if issued.sha256.is_empty() {
            return Err(Error::Unavailable(issued.error));
        }
        Ok(Issued {
            instance_uid: uid.to_string(),
            sha256: hex::encode(&issued.sha256),
            not_after: rfc3339(issued.not_after_unix_ms),
            delivered: issued.delivered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists whose filters and order read the record alone, and nothing a touch changes, name
    /// them (the owners keep what such a walk listed, in its order); filters on configs read
    /// the desired state too, and the order by last-seen time a touch's change: they name none.
    #[test]
    fn listings_are_named_unless_a_config_or_a_touch_is_read() {
        let listing = |params: Vec<(&str, &str)>| AgentQuery::parse(params).unwrap().listing();
        let a = listing(vec![("selector", "env=prod"), ("limit", "50")]);
        assert!(a.is_some());
        assert_eq!(a, listing(vec![("selector", "env=prod"), ("limit", "10")]));
        for other in [
            vec![("selector", "env=dev")],
            vec![("selector", "env=prod"), ("status", "connected")],
            vec![("selector", "env=prod"), ("health", "healthy")],
            vec![("selector", "env=prod"), ("order", "desc")],
            vec![("selector", "env=prod"), ("sort", "status")],
        ] {
            assert_ne!(a, listing(other.clone()), "{other:?}");
        }
        for unnamed in [
            ("config", "applied"),
            ("config_name", "c"),
            ("drift", "true"),
            ("sort", "config"),
            ("sort", "last_seen"),
        ] {
            assert_eq!(
                listing(vec![("selector", "env=prod"), unnamed]),
                None,
                "{unnamed:?}"
            );
        }
    }

    /// Parts built over a fleet split three ways (as shard owners send them) and merged give the
    /// page that sorting every match gives: counts, order (ties broken by uid), cursor, skip.
    #[test]
    fn list_parts_merge_to_the_page_a_full_sort_gives() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let fleet: Vec<AgentRecord> = (0..2000)
            .map(|_| {
                let mut rec = AgentRecord {
                    instance_uid: Uuid::from_u64_pair(next(), next()).as_bytes().to_vec(),
                    // Few distinct times: many ties.
                    last_seen_unix_ms: 1_700_000_000_000 + next() % 50,
                    ..Default::default()
                };
                let env = if next() % 3 == 0 { "prod" } else { "dev" };
                rec.labels.insert("env".into(), env.into());
                rec
            })
            .collect();
        let desired = Desired::default();
        let cursor = Uuid::from_u64_pair(u64::MAX / 2, 0).to_string();
        for (params, skip, take) in [
            (vec![("selector", "env=prod"), ("sort", "last_seen")], 0, 50),
            (vec![("sort", "last_seen"), ("order", "desc")], 130, 70),
            (
                vec![("selector", "env=dev"), ("cursor", cursor.as_str())],
                0,
                100,
            ),
            (vec![("selector", "env=none")], 0, 10),
            (vec![("order", "desc")], 1990, 100),
        ] {
            let q = AgentQuery::parse(params.clone()).unwrap();
            let mut merged = ListPart::new(&q, &desired, "r", skip + take);
            for third in fleet.chunks(700) {
                let mut part = ListPart::new(&q, &desired, "r", skip + take);
                for rec in third {
                    part.add(rec);
                }
                merged.add_part(part.finish(0));
            }
            let page = merged.finish(skip);

            let mut all: Vec<(String, Uuid)> = fleet
                .iter()
                .filter_map(|rec| {
                    let config = q.matches(rec, &desired)?;
                    Some((
                        q.sort.of(rec, config),
                        Uuid::from_slice(&rec.instance_uid).ok()?,
                    ))
                })
                .collect();
            all.sort();
            if q.descending {
                all.reverse();
            }
            assert_eq!(page.total, all.len(), "{params:?}");
            let after: Vec<_> = all
                .into_iter()
                .filter(|(_, u)| q.cursor.is_none_or(|c| *u > c))
                .collect();
            assert_eq!(page.after_cursor, after.len(), "{params:?}");
            let want: Vec<String> = after
                .iter()
                .skip(skip)
                .take(take)
                .map(|(_, u)| u.to_string())
                .collect();
            let got: Vec<String> = page
                .items
                .iter()
                .map(|(_, a)| a.instance_uid.clone())
                .collect();
            assert_eq!(got, want, "{params:?}");
            assert!(page.items.iter().all(|(_, a)| a.region == "r"));
        }
    }

    #[test]
    fn list_queries_are_read_from_text_and_checked() {
        let uid = Uuid::now_v7();
        let cursor = uid.to_string();
        let q = AgentQuery::parse([
            ("selector", "env=prod"),
            ("status", "connected"),
            ("health", "unhealthy"),
            ("limit", "5"),
            ("cursor", cursor.as_str()),
        ])
        .unwrap();
        assert_eq!((q.limit, q.healthy, q.cursor), (5, Some(false), Some(uid)));
        assert_eq!(AgentQuery::parse([]).unwrap().limit, DEFAULT_LIMIT);
        for (bad, why) in [
            (("status", "gone"), "status must be connected"),
            (("health", "meh"), "health must be healthy or unhealthy"),
            (("limit", "1001"), "limit must be a number from 1 to 1000"),
            (("cursor", "x"), "invalid cursor"),
            (("selector", "a in ("), ""),
            (("color", "red"), "unknown query parameter"),
        ] {
            let err = AgentQuery::parse([bad]).unwrap_err();
            assert!(matches!(err, Error::BadRequest(_)), "{bad:?}");
            assert!(err.to_string().contains(why), "{err}");
        }
    }
}
