//! Operations on configs: store a version (checked, with its audit entry), read the active ones,
//! a config's history and one version, diff two versions, roll back to one.

use super::agents::{AgentQuery, parse_selector};
use super::audit;
use super::views::{AgentSummary, ConfigDiff, ConfigHistory, ConfigView, VersionView};
use super::{Caller, Error, Ops, Result};
use crate::fleet::agents::RecordAttributes;
use crate::fleet::checks::{check_packages, check_settings, valid_name};
use crate::fleet::configs;
use crate::fleet::validate;
use crate::opamp::offers::offer_size;
use flotilla_common::selector::Selector;
use flotilla_common::store::{AgentSettings, ConfigFile, PackageOffer, StoredConfig};
use flotilla_common::telemetry::now_unix_ms;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tracing::info;

/// A new config version as the interfaces take it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDraft {
    #[serde(default)]
    pub selector: Selector,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub packages: BTreeMap<String, PackageOffer>,
    #[serde(default)]
    pub settings: Option<AgentSettings>,
    /// False: store the version without giving it to agents (for a rollout). Default true.
    #[serde(default = "yes")]
    pub activate: bool,
}

fn yes() -> bool {
    true
}

impl ConfigDraft {
    /// A draft from an interface's fields: a selector in its text form, packages and settings as
    /// the REST API's JSON objects (empty text: none).
    pub fn from_parts(
        selector: &str,
        files: BTreeMap<String, String>,
        packages_json: &str,
        settings_json: &str,
        activate: bool,
    ) -> Result<Self> {
        Ok(Self {
            selector: parse_selector(selector)?,
            files,
            packages: json_field("packages_json", packages_json)?.unwrap_or_default(),
            settings: json_field("settings_json", settings_json)?,
            activate,
        })
    }
}

/// An optional JSON field: empty or `null` is none.
fn json_field<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<Option<T>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str::<Option<T>>(text)
        .map_err(|e| Error::BadRequest(format!("{name} is not valid: {e}")))
}

/// What deleting a config did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigDeleted {
    pub name: String,
    /// The version that was active (still in the history).
    pub deactivated_version: u64,
}

/// How many of the matching agents a preview lists.
const PREVIEW_AGENTS: usize = 20;

/// What storing a config would do: its hash, the size of its offer, and the agents it selects.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigPreview {
    pub name: String,
    pub hash: String,
    pub offer_bytes: usize,
    /// Agents its selector matches, over the whole fleet.
    pub matching_agents: usize,
    /// The first of them, by uid.
    pub sample: Vec<AgentSummary>,
}

/// What a config's text (a JSON body) must look like, for parse errors.
pub const DRAFT_SHAPE: &str = "{\"selector\": \"env=prod\" or {\"key\": \"value\"}, \"files\": {\"name.yaml\": \"<body>\"}, \"packages\": {...}, \"settings\": {...}, \"activate\": true}";

impl Ops {
    /// Stores a new version of a config after checking it; when it is activated, every shard
    /// owner pushes it to the connected WebSocket agents whose desired state it changes (HTTP
    /// agents get it on their next poll).
    pub async fn put_config(
        &self,
        caller: &Caller,
        name: &str,
        draft: ConfigDraft,
    ) -> Result<ConfigView> {
        let active = draft.activate;
        let stored = self
            .store_version(caller, name, draft, String::new())
            .await?;
        self.with_matches(ConfigView::of(&stored, active), &stored.selector)
            .await
    }

    /// `view` with how many agents `selector` matches now, and a warning when none does. Every
    /// agent (the empty selector) is the store's kept count; another selector is counted by
    /// visiting the agents.
    async fn with_matches(&self, mut view: ConfigView, selector: &Selector) -> Result<ConfigView> {
        let kept = if selector.is_empty() {
            self.store().agent_counts().await?
        } else {
            None
        };
        let n = match kept {
            Some(counts) => usize::try_from(counts.total).unwrap_or(usize::MAX),
            None => {
                let mut n = 0;
                self.visit_fleet(&mut |rec| {
                    if selector.matches(&RecordAttributes(rec)) {
                        n += 1;
                    }
                })
                .await?;
                n
            }
        };
        if n == 0 {
            let which = if selector.is_empty() {
                "no agent is known yet".to_owned()
            } else {
                format!("selector \"{selector}\" matches no agent now")
            };
            view.warnings.push(format!(
                "{which}; agents that match later get this config when they connect"
            ));
        }
        view.matching_agents = Some(n);
        Ok(view)
    }

    /// What storing `draft` as config `name` would do, with nothing stored: the same checks as
    /// [`Ops::put_config`] (an error names what is wrong, at file:line), and which agents its
    /// selector matches.
    pub async fn preview_config(
        &self,
        caller: &Caller,
        name: &str,
        draft: ConfigDraft,
    ) -> Result<ConfigPreview> {
        let version = self.checked_version(caller, name, draft, String::new(), true)?;
        let query = AgentQuery {
            selector: version.selector.clone(),
            limit: PREVIEW_AGENTS,
            ..Default::default()
        };
        let page = self.list_agents(caller, &query).await?;
        Ok(ConfigPreview {
            name: name.to_owned(),
            offer_bytes: offer_size(&version),
            hash: version.hash,
            matching_agents: page.total,
            sample: page.agents,
        })
    }

    /// A version made of `draft`, checked as every stored version is.
    fn checked_version(
        &self,
        caller: &Caller,
        name: &str,
        draft: ConfigDraft,
        comment: String,
        activate: bool,
    ) -> Result<StoredConfig> {
        if !valid_name(name) {
            return Err(Error::BadRequest(format!(
                "config name {name:?} must be 1-128 characters of letters, digits, '-', '_' or '.', \
                 and not \".\" or \"..\""
            )));
        }
        if draft.files.is_empty() && draft.packages.is_empty() && draft.settings.is_none() {
            return Err(Error::BadRequest(
                "a config needs at least one of \"files\", \"packages\" or \"settings\"".into(),
            ));
        }
        if let Err(problems) = validate::validate_files(&draft.files) {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(Error::BadRequest(format!(
                "config {name:?} is invalid; nothing was stored or sent:\n{}",
                lines.join("\n")
            )));
        }
        check_packages(&draft.packages).map_err(Error::BadRequest)?;
        if let Some(settings) = &draft.settings {
            check_settings(settings).map_err(Error::BadRequest)?;
        }
        let desired = self.desired.current();
        if activate && let Some(r) = desired.rollouts.get(name) {
            return Err(Error::Conflict(format!(
                "rollout {} of {name:?} is active; abort it, or store this version with \"activate\": false and roll it out",
                r.id
            )));
        }
        let files: BTreeMap<String, ConfigFile> = draft
            .files
            .into_iter()
            .map(|(n, body)| {
                let content_type = configs::content_type_for(&n).to_owned();
                (n, ConfigFile { body, content_type })
            })
            .collect();
        let version = StoredConfig {
            name: name.to_owned(),
            version: 0,
            selector: draft.selector,
            hash: hex::encode(configs::hash_of_files(&files)),
            files,
            packages: draft.packages,
            settings: draft.settings,
            created_unix_ms: now_unix_ms(),
            created_by: caller.name.clone(),
            comment,
        };
        let size = offer_size(&version);
        let max = self.cfg.max_message_size;
        if size > max {
            return Err(Error::BadRequest(format!(
                "config {name:?} would reach agents as a {size}-byte message; the largest message \
                 that can reach agents here is {max} bytes (in a cluster, the NATS server's \
                 max_payload less room for the envelope; docs/operations.md says how to raise \
                 it); nothing was stored or sent"
            )));
        }
        Ok(version)
    }

    async fn store_version(
        &self,
        caller: &Caller,
        name: &str,
        draft: ConfigDraft,
        comment: String,
    ) -> Result<StoredConfig> {
        let activate = draft.activate;
        let version = self.checked_version(caller, name, draft, comment, activate)?;
        let before = self
            .desired
            .current()
            .configs
            .iter()
            .find(|c| c.name == name)
            .cloned();
        let action = if version.comment.is_empty() {
            "config.put"
        } else {
            "config.rollback"
        };
        let before = before.and_then(|b| serde_json::to_value(b).ok());
        let entry = |stored: &StoredConfig| {
            audit::entry(
                &caller.name,
                action,
                format!("config/{name}"),
                before.clone(),
                serde_json::to_value(stored).ok(),
            )
        };
        let stored = self.store().put_config(version, activate, &entry).await?;
        info!(target: "flotilla::audit", config = %name, version = stored.version, hash = %stored.hash, activated = activate, caller = %caller.name, action, "config stored");
        self.noted_activation(name, activate).await;
        if activate {
            self.announce_change(&format!("config/{name}")).await;
        }
        Ok(stored)
    }

    /// The active version of every config (what agents get), sorted by name.
    pub async fn configs(&self, _caller: &Caller) -> Result<Vec<ConfigView>> {
        let desired = self.desired.current();
        Ok(desired
            .configs
            .iter()
            .map(|c| ConfigView::of(c, true))
            .collect())
    }

    /// Version `version` of a config; without one, the active version (or the latest if none is
    /// active: staged only).
    pub async fn config(
        &self,
        _caller: &Caller,
        name: &str,
        version: Option<u64>,
    ) -> Result<ConfigView> {
        let active = self.active_version(name);
        let cfg = match version {
            Some(v) => self.version_of(name, v).await?,
            None => match self
                .desired
                .current()
                .configs
                .iter()
                .find(|x| x.name == name)
            {
                Some(c) => c.clone(),
                None => self
                    .versions(name)
                    .await?
                    .pop()
                    .ok_or_else(|| not_found(name))?,
            },
        };
        let is_active = Some(cfg.version) == active;
        Ok(ConfigView::of(&cfg, is_active))
    }

    /// Every version of a config, newest first.
    pub async fn config_history(&self, _caller: &Caller, name: &str) -> Result<ConfigHistory> {
        let active = self.active_version(name);
        let versions = self
            .versions(name)
            .await?
            .iter()
            .rev()
            .map(|v| VersionView::of(v, Some(v.version) == active))
            .collect();
        Ok(ConfigHistory {
            name: name.to_owned(),
            active_version: active,
            versions,
        })
    }

    /// A unified diff between two versions (`to` defaults to the latest).
    pub async fn config_diff(
        &self,
        _caller: &Caller,
        name: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<ConfigDiff> {
        let history = self.versions(name).await?;
        let pick = |v: u64| {
            history
                .iter()
                .find(|c| c.version == v)
                .ok_or_else(|| no_version(name, v))
        };
        let from = pick(from.ok_or_else(|| {
            Error::BadRequest("from: the version to diff from is required".into())
        })?)?;
        let to = match to {
            Some(v) => pick(v)?,
            None => history.last().ok_or_else(|| not_found(name))?,
        };
        Ok(ConfigDiff {
            name: name.to_owned(),
            from: from.version,
            to: to.version,
            diff: diff(from, to),
        })
    }

    /// Makes a new version that repeats version `version` (its selector, files, packages and
    /// settings), active at once: history only grows, so the rollback itself is on record.
    pub async fn rollback_config(
        &self,
        caller: &Caller,
        name: &str,
        version: u64,
    ) -> Result<ConfigView> {
        let old = self.version_of(name, version).await?;
        let draft = ConfigDraft {
            selector: old.selector,
            files: old.files.into_iter().map(|(n, f)| (n, f.body)).collect(),
            packages: old.packages,
            settings: old.settings,
            activate: true,
        };
        let comment = format!("rollback to version {version}");
        let stored = self.store_version(caller, name, draft, comment).await?;
        self.with_matches(ConfigView::of(&stored, true), &stored.selector)
            .await
    }

    /// Stops giving config `name` to agents: no version of it is active any more (its history
    /// stays, and a rollback or a new version makes it active again). Refused while a rollout of
    /// it is active.
    pub async fn delete_config(&self, caller: &Caller, name: &str) -> Result<ConfigDeleted> {
        let desired = self.desired.current();
        if let Some(r) = desired.rollouts.get(name) {
            return Err(Error::Conflict(format!(
                "rollout {} of {name:?} is active; abort it first",
                r.id
            )));
        }
        let active = desired.configs.iter().find(|c| c.name == name).cloned();
        let Some(active) = active else {
            return Err(match self.versions(name).await {
                Ok(_) => Error::NotFound(format!("config {name:?} has no active version")),
                Err(e) => e,
            });
        };
        let entry = audit::entry(
            &caller.name,
            "config.delete",
            format!("config/{name}"),
            serde_json::to_value(&active).ok(),
            None,
        );
        if !self.store().deactivate_config(name, Some(&entry)).await? {
            return Err(Error::NotFound(format!(
                "config {name:?} has no active version"
            )));
        }
        info!(target: "flotilla::audit", config = %name, version = active.version, caller = %caller.name, "config deleted");
        self.noted_activation(name, true).await;
        self.announce_change(&format!("config/{name}")).await;
        Ok(ConfigDeleted {
            name: name.to_owned(),
            deactivated_version: active.version,
        })
    }

    pub(crate) fn active_version(&self, name: &str) -> Option<u64> {
        let desired = self.desired.current();
        desired
            .configs
            .iter()
            .find(|x| x.name == name)
            .map(|x| x.version)
    }

    /// Every version of a config, oldest first; NotFound if there is none.
    pub(crate) async fn versions(&self, name: &str) -> Result<Vec<StoredConfig>> {
        let versions = self.store().config_versions(name).await?;
        if versions.is_empty() {
            return Err(not_found(name));
        }
        Ok(versions)
    }

    async fn version_of(&self, name: &str, version: u64) -> Result<StoredConfig> {
        self.versions(name)
            .await?
            .into_iter()
            .find(|c| c.version == version)
            .ok_or_else(|| no_version(name, version))
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("no config {name:?}"))
}

fn no_version(name: &str, version: u64) -> Error {
    Error::NotFound(format!("config {name:?} has no version {version}"))
}

/// A unified diff of two versions: the selector, then each file, then packages and settings.
fn diff(from: &StoredConfig, to: &StoredConfig) -> String {
    let mut out = String::new();
    let mut section = |name: &str, a: &str, b: &str| {
        if a != b {
            let d = similar::TextDiff::from_lines(a, b);
            let header = (format!("a/{name}"), format!("b/{name}"));
            out.push_str(&d.unified_diff().header(&header.0, &header.1).to_string());
        }
    };
    let line = |s: &Selector| format!("{s}\n");
    section("selector", &line(&from.selector), &line(&to.selector));
    let names: std::collections::BTreeSet<&String> =
        from.files.keys().chain(to.files.keys()).collect();
    for name in names {
        let body = |c: &StoredConfig| {
            c.files
                .get(name)
                .map(|f| f.body.clone())
                .unwrap_or_default()
        };
        section(name, &body(from), &body(to));
    }
    let pretty = |v: Value| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    section(
        "packages",
        &pretty(json!(from.packages)),
        &pretty(json!(to.packages)),
    );
    section(
        "settings",
        &pretty(json!(from.settings)),
        &pretty(json!(to.settings)),
    );
    out
}
