//! Configs as the API shows them: versions, history, diffs and the selector form.

use super::time::rfc3339;
use flotilla_common::selector::{Op, Selector};
use flotilla_common::store::{AgentSettings, PackageOffer, StoredConfig};
use serde::Serialize;
use std::collections::BTreeMap;

/// A selector as the API shows it: an object of key to value when it has only `=` terms (the
/// form the contract's PUT body uses), otherwise its text form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SelectorView {
    Pairs(BTreeMap<String, String>),
    Text(String),
}

impl SelectorView {
    pub fn of(s: &Selector) -> Self {
        let pairs: Option<BTreeMap<String, String>> = s
            .terms()
            .iter()
            .map(|t| match &t.op {
                Op::Eq(v) => Some((t.key.clone(), v.clone())),
                _ => None,
            })
            .collect();
        match pairs {
            Some(p) if p.len() == s.terms().len() => Self::Pairs(p),
            _ => Self::Text(s.to_string()),
        }
    }
}

/// One version of a config, with its files' bodies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigView {
    pub name: String,
    pub version: u64,
    pub hash: String,
    pub selector: SelectorView,
    pub files: BTreeMap<String, String>,
    pub packages: BTreeMap<String, PackageOffer>,
    pub settings: Option<AgentSettings>,
    pub created: String,
    pub created_by: String,
    pub comment: String,
    /// The selector in its text form (not in the JSON, which shows [`ConfigView::selector`]).
    #[serde(skip)]
    pub selector_text: String,
    /// Whether agents get this version outside rollouts (not in the JSON of a single version).
    #[serde(skip)]
    pub active: bool,
    /// After a change: how many agents its selector matches now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matching_agents: Option<usize>,
    /// After a change: what the caller should know (a selector that matches no agent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl ConfigView {
    pub fn of(c: &StoredConfig, active: bool) -> Self {
        Self {
            name: c.name.clone(),
            version: c.version,
            hash: c.hash.clone(),
            selector: SelectorView::of(&c.selector),
            files: c
                .files
                .iter()
                .map(|(n, f)| (n.clone(), f.body.clone()))
                .collect(),
            packages: c.packages.clone(),
            settings: c.settings.clone(),
            created: rfc3339(c.created_unix_ms),
            created_by: c.created_by.clone(),
            comment: c.comment.clone(),
            selector_text: c.selector.to_string(),
            active,
            matching_agents: None,
            warnings: Vec::new(),
        }
    }
}

/// A config's history, newest first, without the versions' contents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigHistory {
    pub name: String,
    pub active_version: Option<u64>,
    pub versions: Vec<VersionView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionView {
    pub version: u64,
    pub hash: String,
    pub selector: SelectorView,
    pub created: String,
    pub created_by: String,
    pub comment: String,
    pub active: bool,
    #[serde(skip)]
    pub selector_text: String,
}

impl VersionView {
    pub fn of(c: &StoredConfig, active: bool) -> Self {
        Self {
            version: c.version,
            hash: c.hash.clone(),
            selector: SelectorView::of(&c.selector),
            created: rfc3339(c.created_unix_ms),
            created_by: c.created_by.clone(),
            comment: c.comment.clone(),
            active,
            selector_text: c.selector.to_string(),
        }
    }
}

/// A unified diff between two versions of a config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    pub name: String,
    pub from: u64,
    pub to: u64,
    pub diff: String,
}
