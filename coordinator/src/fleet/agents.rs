//! What fleet rules see of one agent's record: the attributes selectors match (reported
//! attributes and server-set labels), its capabilities, and its status. Pure.

use crate::fleet::configs::Aspect;
use flotilla_common::codec::next_field;
use flotilla_common::selector::Attributes;
use flotilla_proto::bus::{AgentRecord, AgentStatus};
use flotilla_proto::opamp::{
    AgentCapabilities as Cap, AgentConfigMap, AgentDescription, AnyValue, ComponentHealth,
    KeyValue, RemoteConfigStatuses, any_value,
};
use prost::Message;
use prost::encoding::WireType;
use std::borrow::Cow;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Whether capability bits `caps` include `cap`.
pub fn has(caps: u64, cap: Cap) -> bool {
    caps & cap as u64 != 0
}

/// The record's instance uid, if it is one (16 bytes).
pub fn uid_of(rec: &AgentRecord) -> Option<Uuid> {
    Uuid::from_slice(&rec.instance_uid).ok()
}

/// Whether the agent can take `aspect` at all (settings: each part is checked when offered).
pub fn takes(rec: &AgentRecord, aspect: Aspect) -> bool {
    match aspect {
        Aspect::Files => has(rec.capabilities, Cap::AcceptsRemoteConfig),
        Aspect::Packages => has(rec.capabilities, Cap::AcceptsPackages),
        Aspect::Settings => true,
    }
}

/// Where an agent stands with config files of hash `want` (lowercase hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStanding {
    Applied,
    Applying,
    /// It reported FAILED for this config; or failed it and went back to its previous config (the
    /// collector's supervisor rolls back so), which is also a refusal of this one.
    Failed,
    /// It was sent this config but reports no remote config status: nobody knows.
    Unknown,
    /// It has not been sent this config yet, or has not said anything about it yet.
    Pending,
}

/// Whether the agent tells how applying a remote config went: it says it does
/// (ReportsRemoteConfig), or it has told (a client that forgets the bit is still heard).
pub fn reports_config_status(rec: &AgentRecord) -> bool {
    has(rec.capabilities, Cap::ReportsRemoteConfig) || rec.remote_config_status.is_some()
}

/// Where `rec` stands with config files of hash `want`.
pub fn config_standing(rec: &AgentRecord, want: &str) -> ConfigStanding {
    // Not sent: the agent's build lacks components it names (whether it reports status or not).
    if rec.rejected_by_server && hex_eq(&rec.rejected_config_hash, want) {
        return ConfigStanding::Failed;
    }
    if !reports_config_status(rec) {
        return if hex_eq(&rec.offered_config_hash, want) {
            ConfigStanding::Unknown
        } else {
            ConfigStanding::Pending
        };
    }
    if let Some(s) = &rec.remote_config_status
        && hex_eq(&s.last_remote_config_hash, want)
    {
        return match s.status() {
            RemoteConfigStatuses::Applied => ConfigStanding::Applied,
            RemoteConfigStatuses::Applying => ConfigStanding::Applying,
            RemoteConfigStatuses::Failed => ConfigStanding::Failed,
            RemoteConfigStatuses::Unset => ConfigStanding::Pending,
        };
    }
    if hex_eq(&rec.rejected_config_hash, want) {
        ConfigStanding::Failed
    } else {
        ConfigStanding::Pending
    }
}

/// Where `rec` stands with `want` as shown and counted in rollouts: as [`config_standing`], but a
/// config an agent that reports its status has said nothing about stands applied when the agent
/// runs exactly that config (its effective config, past the supervisor's own sections): the
/// supervisor sends no status for a config that composes to what it already runs.
pub fn config_standing_seen(rec: &AgentRecord, want: &str) -> ConfigStanding {
    match config_standing(rec, want) {
        ConfigStanding::Pending if runs_equivalent(rec, want) => ConfigStanding::Applied,
        standing => standing,
    }
}

/// Whether an agent that reports its status runs exactly config `want` (its effective config,
/// past the supervisor's own sections), whatever hash it reports.
pub fn runs_equivalent(rec: &AgentRecord, want: &str) -> bool {
    reports_config_status(rec) && rec.runs_desired && hex_eq(&rec.drift_checked_hash, want)
}

/// Whether the agent refused a config and now reports another (it went back to its previous one,
/// as the collector's supervisor does); still reporting FAILED for it is no rollback.
pub fn went_back(rec: &AgentRecord) -> bool {
    !rec.rejected_by_server
        && !rec.rejected_config_hash.is_empty()
        && rec
            .remote_config_status
            .as_ref()
            .is_some_and(|s| s.last_remote_config_hash != rec.rejected_config_hash)
}

/// The agent's reported effective config, if any.
pub fn effective_map(rec: &AgentRecord) -> Option<&AgentConfigMap> {
    rec.effective_config.as_ref()?.config_map.as_ref()
}

/// Why an agent's config stands failed: the error it reported; when it went back to its previous
/// config, the error of the one it refused; when the server did not send it, why.
pub fn config_failure(rec: &AgentRecord) -> String {
    if rec.rejected_by_server {
        rec.rejected_config_error.clone()
    } else if went_back(rec) {
        format!(
            "{} (it went back to its previous config)",
            rec.rejected_config_error
        )
    } else {
        rec.remote_config_status
            .as_ref()
            .map(|s| s.error_message.clone())
            .unwrap_or_default()
    }
}

/// The first `max` bytes of `s` (fewer, to end on a character).
pub fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// `bytes` written in hex is `hex` (lowercase), without writing it out.
pub fn hex_eq(bytes: &[u8], hex: &str) -> bool {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    hex.len() == bytes.len() * 2
        && bytes
            .iter()
            .zip(hex.as_bytes().chunks_exact(2))
            .all(|(b, h)| {
                h[0] == DIGITS[usize::from(b >> 4)] && h[1] == DIGITS[usize::from(b & 15)]
            })
}

/// What selectors see of an agent, as strings: its non-identifying attributes, its identifying
/// attributes on top (they win a clash), and its server-set labels on top of both (the operator's
/// word wins).
pub fn attributes(rec: &AgentRecord) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(d) = &rec.description {
        for kv in d
            .non_identifying_attributes
            .iter()
            .chain(&d.identifying_attributes)
        {
            out.insert(
                kv.key.clone(),
                any_value_string(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            );
        }
    }
    for identifying in [false, true] {
        for (_, key, value) in
            encoded_attributes(&rec.copied_description).filter(|(i, _, _)| *i == identifying)
        {
            let key = String::from_utf8_lossy(key).into_owned();
            out.insert(key, encoded_value(value).into_owned());
        }
    }
    out.extend(rec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// The record's description, wherever the record holds it: as sent, or encoded in an owner's
/// copy ([`copy_form`]).
pub fn description(rec: &AgentRecord) -> Cow<'_, AgentDescription> {
    match &rec.description {
        Some(d) => Cow::Borrowed(d),
        None => Cow::Owned(AgentDescription::decode(&*rec.copied_description).unwrap_or_default()),
    }
}

/// Puts `rec` in the form a shard owner's copy keeps it in memory (never stored or sent): its
/// description encoded in `copied_description` (unless it has no attributes, so that an empty
/// description stays apart from none, or names a key twice among its identifying or its
/// non-identifying attributes: it stays as it is then), and its health's components below
/// the root encoded in `copied_components` (when there are any). Selectors read the encoded
/// description in place ([`RecordAttributes`], [`attributes`], [`description`]). Whoever sets a
/// description or health in a record of this form clears the encoded one ([`full_form`] would
/// otherwise decode the old one back).
pub fn copy_form(rec: &mut AgentRecord) {
    if let Some(encoded) = encoded_description(rec.description.as_deref()) {
        (rec.description, rec.copied_description) = (None, encoded);
    }
    if let Some(h) = rec.health.as_mut() {
        let (encoded, tree) = encoded_components(std::mem::take(&mut h.component_health_map));
        if let Some(encoded) = encoded {
            rec.copied_components = encoded;
        } else {
            h.component_health_map = tree;
        }
    }
}

/// Puts a record of [`copy_form`] back in the form it is stored and shown in: what is encoded,
/// decoded.
pub fn full_form(rec: &mut AgentRecord) -> Result<(), prost::DecodeError> {
    if !rec.copied_description.is_empty() {
        rec.description = Some(Box::new(AgentDescription::decode(
            &*rec.copied_description,
        )?));
        rec.copied_description = Vec::new();
    }
    if !rec.copied_components.is_empty() {
        let tree = ComponentHealth::decode(&*rec.copied_components)?;
        rec.health.get_or_insert_default().component_health_map = tree.component_health_map;
        rec.copied_components = Vec::new();
    }
    Ok(())
}

/// What [`copy_form`] keeps of description `d`: its encoding, unless it has no attributes or
/// names a key twice in one kind. With each key once per kind, and the identifying attributes
/// written first (prost writes fields in order), a key's first attribute in the encoding is the
/// one selectors see ([`RecordAttributes`] stops there).
pub fn encoded_description(d: Option<&AgentDescription>) -> Option<Vec<u8>> {
    let once = |kvs: &[KeyValue]| {
        kvs.iter()
            .enumerate()
            .all(|(i, kv)| kvs[..i].iter().all(|other| other.key != kv.key))
    };
    d.filter(|d| {
        d.encoded_len() > 0
            && once(&d.identifying_attributes)
            && once(&d.non_identifying_attributes)
    })
    .map(Message::encode_to_vec)
}

/// What [`copy_form`] keeps of a health tree below the root: its encoding (a [`ComponentHealth`]
/// holding only the map; the map is sorted, so equal trees encode alike), unless it is empty;
/// with the tree given back.
pub fn encoded_components(
    tree: BTreeMap<String, ComponentHealth>,
) -> (Option<Vec<u8>>, BTreeMap<String, ComponentHealth>) {
    if tree.is_empty() {
        return (None, tree);
    }
    let wrapped = ComponentHealth {
        component_health_map: tree,
        ..Default::default()
    };
    (Some(wrapped.encode_to_vec()), wrapped.component_health_map)
}

/// The length-delimited fields of encoded message `buf` in order: (field number, contents). Ends
/// at the first field of another wire type or that does not parse.
fn delimited_fields(mut buf: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    std::iter::from_fn(move || next_delimited(&mut buf))
}

/// [`delimited_fields`]' step: the next field, `buf` moved past it.
#[inline]
fn next_delimited<'a>(buf: &mut &'a [u8]) -> Option<(u32, &'a [u8])> {
    match next_field(buf)? {
        (number, WireType::LengthDelimited, contents) => Some((number, contents)),
        _ => None,
    }
}

/// The attributes of an encoded description, read in place, in order: (identifying, key, its
/// AnyValue encoded). Every field of a description and of a KeyValue is length-delimited. Keys
/// are bytes: selectors compare them so, without checking them for UTF-8 (prost did when the
/// description was decoded from the agent's message).
fn encoded_attributes(description: &[u8]) -> impl Iterator<Item = (bool, &[u8], &[u8])> {
    delimited_fields(description).map(|(field, kv)| {
        let (key, value) = key_value(kv);
        (field == 1, key, value)
    })
}

/// An encoded KeyValue's key, its value left unread.
#[inline]
fn key_of(mut kv: &[u8]) -> &[u8] {
    match next_delimited(&mut kv) {
        Some((1, key)) => key,
        _ => &[],
    }
}

/// An encoded KeyValue's key and AnyValue. prost writes the key first (unless it is empty).
#[inline]
fn key_value(mut kv: &[u8]) -> (&[u8], &[u8]) {
    match next_delimited(&mut kv) {
        Some((1, key)) => match next_delimited(&mut kv) {
            Some((2, value)) => (key, value),
            _ => (key, &[]),
        },
        Some((2, value)) => (&[], value),
        _ => (&[], &[]),
    }
}

/// An encoded AnyValue as selectors see it ([`any_value_string`]): a string read in place, any
/// other value decoded.
fn encoded_value(value: &[u8]) -> Cow<'_, str> {
    if let Some((1, s)) = delimited_fields(value).next()
        && let Ok(s) = std::str::from_utf8(s)
    {
        return Cow::Borrowed(s);
    }
    let value = AnyValue::decode(value).unwrap_or_default();
    Cow::Owned(any_value_string(value.value.as_ref()))
}

/// What selectors see of an agent (as [`attributes`]), read from its record in place: labels, then
/// identifying, then non-identifying attributes. For passes over the whole fleet, where building
/// [`attributes`]' map for every agent would cost more than the match.
pub struct RecordAttributes<'a>(pub &'a AgentRecord);

impl Attributes for RecordAttributes<'_> {
    fn attribute(&self, key: &str) -> Option<Cow<'_, str>> {
        let rec = self.0;
        if let Some(v) = rec.labels.get(key) {
            return Some(Cow::Borrowed(v));
        }
        let Some(d) = rec.description.as_ref() else {
            // An owner's copy: the first attribute of the key is the one ([`encoded_description`]).
            let mut entries = &rec.copied_description[..];
            while let Some((_, kv)) = next_delimited(&mut entries) {
                if key_of(kv) == key.as_bytes() {
                    return Some(encoded_value(key_value(kv).1));
                }
            }
            return None;
        };
        let kv = d
            .identifying_attributes
            .iter()
            // As in the map, a later duplicate wins.
            .rfind(|kv| kv.key == key)
            .or_else(|| {
                d.non_identifying_attributes
                    .iter()
                    .rfind(|kv| kv.key == key)
            })?;
        Some(match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => Cow::Borrowed(s),
            other => Cow::Owned(any_value_string(other)),
        })
    }
}

pub fn any_value_string(v: Option<&any_value::Value>) -> String {
    use any_value::Value;
    match v {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex::encode(b),
        Some(Value::ArrayValue(a)) => {
            let items: Vec<_> = a
                .values
                .iter()
                .map(|v| any_value_string(v.value.as_ref()))
                .collect();
            format!("[{}]", items.join(","))
        }
        Some(Value::KvlistValue(kv)) => {
            let items: Vec<_> = kv
                .values
                .iter()
                .map(|p| {
                    format!(
                        "{}={}",
                        p.key,
                        any_value_string(p.value.as_ref().and_then(|v| v.value.as_ref()))
                    )
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

/// Whether the record is one of the fleet's agents (the store's counts use the same rule).
pub use flotilla_common::store::in_fleet_view;

/// The status as the API names it.
pub fn status_name(rec: &AgentRecord) -> &'static str {
    match rec.status() {
        AgentStatus::Connected => "connected",
        AgentStatus::Silent => "silent",
        AgentStatus::Disconnected | AgentStatus::Unspecified => "disconnected",
    }
}

/// What the agent last said of its health, if anything.
pub fn healthy(rec: &AgentRecord) -> Option<bool> {
    rec.health.as_ref().map(|h| h.healthy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::opamp::{AgentDescription, AnyValue, KeyValue};

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
        }
    }

    /// `rec`'s attributes as [`RecordAttributes`] reads them are `map`'s.
    fn reads_as(rec: &AgentRecord, map: &BTreeMap<String, String>) {
        let view = RecordAttributes(rec);
        for key in ["a", "b", "n", "l", "missing"] {
            assert_eq!(
                view.attribute(key).as_deref(),
                map.get(key).map(String::as_str),
                "{key}"
            );
        }
    }

    #[test]
    fn record_attributes_read_as_the_map_does() {
        use any_value::Value::{IntValue, StringValue};
        let mut rec = AgentRecord {
            description: Some(Box::new(AgentDescription {
                identifying_attributes: vec![kv("a", StringValue("id".into()))],
                non_identifying_attributes: vec![
                    kv("a", StringValue("non".into())),
                    kv("b", StringValue("1".into())),
                    kv("b", StringValue("2".into())),
                    kv("n", IntValue(7)),
                    kv("l", StringValue("reported".into())),
                ],
            })),
            ..Default::default()
        };
        rec.labels.insert("l".into(), "label".into());
        let map = attributes(&rec);
        reads_as(&rec, &map);
        assert_eq!(map["a"], "id");
        assert_eq!(map["b"], "2");
        assert_eq!(map["n"], "7");
        assert_eq!(map["l"], "label");
        // An owner's copy keeps a description naming a key twice in one kind as it is.
        let mut copy = rec.clone();
        copy_form(&mut copy);
        assert_eq!(copy.description, rec.description);
        // Else encoded: read alike, and given back whole.
        rec.description
            .as_mut()
            .unwrap()
            .non_identifying_attributes
            .remove(1);
        let map = attributes(&rec);
        assert_eq!(map["b"], "2");
        let mut copy = rec.clone();
        copy_form(&mut copy);
        assert!(copy.description.is_none() && !copy.copied_description.is_empty());
        assert_eq!(attributes(&copy), map);
        reads_as(&copy, &map);
        assert_eq!(
            description(&copy).as_ref(),
            rec.description.as_deref().unwrap()
        );
        let mut empty = AgentRecord {
            description: Some(Box::new(AgentDescription::default())),
            ..Default::default()
        };
        copy_form(&mut empty);
        assert_eq!(
            empty.description,
            Some(Box::new(AgentDescription::default())),
            "kept as it is"
        );
        let mut back = copy.clone();
        full_form(&mut back).unwrap();
        assert_eq!(back, rec, "and back");
    }

    #[test]
    fn a_health_tree_goes_in_the_copy_form_and_back_and_a_broken_one_fails() {
        let health = ComponentHealth {
            healthy: true,
            component_health_map: [("pipeline:logs".into(), ComponentHealth::default())].into(),
            ..Default::default()
        };
        let rec = AgentRecord {
            health: Some(Box::new(health)),
            ..Default::default()
        };
        let mut copy = rec.clone();
        copy_form(&mut copy);
        let h = copy.health.as_ref().unwrap();
        assert!(h.healthy && h.component_health_map.is_empty());
        assert!(!copy.copied_components.is_empty());
        let mut back = copy.clone();
        full_form(&mut back).unwrap();
        assert_eq!(back, rec);
        copy.copied_components = vec![0xff; 3];
        assert!(full_form(&mut copy).is_err());
    }
}
