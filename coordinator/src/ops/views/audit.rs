//! Audit entries as the API shows them.

use super::time::rfc3339;
use flotilla_common::store::AuditEntry;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditView {
    pub id: String,
    /// The region whose store holds the entry (where the change was made).
    pub region: String,
    pub at: String,
    pub caller: String,
    pub action: String,
    pub object: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl AuditView {
    pub fn of(e: &AuditEntry, region: &str) -> Self {
        Self {
            id: e.id.clone(),
            region: region.to_owned(),
            at: rfc3339(e.at_unix_ms),
            caller: e.caller.clone(),
            action: e.action.clone(),
            object: e.object.clone(),
            before: e.before.clone(),
            after: e.after.clone(),
        }
    }
}

/// Audit entries, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditLog {
    pub entries: Vec<AuditView>,
    /// Fewer than asked for, because the answer reached its size bound.
    pub truncated: bool,
    /// Regions that did not answer in time: their entries are not in the answer.
    pub missing_regions: Vec<String>,
    pub partial: bool,
}
