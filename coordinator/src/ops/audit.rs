//! The audit log: the entry every change is written with, the query, and what is recorded that is
//! no change of stored state (a command delivered at once, a refused call).

use super::error::bad_request;
use super::query::parse_limit;
use super::regions::{RegionAnswer, RegionQuery, UNEXPECTED};
use super::views::{AuditLog, AuditView};
use super::{Caller, Ops, Result};
use flotilla_common::store::{AuditEntry, AuditQuery, Store};
use flotilla_common::telemetry::now_unix_ms;
use tracing::{info, warn};

const DEFAULT_LIMIT: usize = 100;
/// An answer holds at most this much of entries (each may carry two config versions): past it the
/// page is cut short and says so.
const MAX_BYTES: usize = 16 << 20;

/// An audit entry of a change made now.
pub fn entry(
    caller: &str,
    action: &str,
    object: String,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> AuditEntry {
    AuditEntry {
        id: String::new(),
        at_unix_ms: now_unix_ms(),
        caller: caller.to_owned(),
        action: action.to_owned(),
        object,
        before,
        after,
    }
}

/// The audit query of text parameters (`object`, `since`, `until` as RFC 3339, `limit`), as an
/// interface received them; unknown parameters are refused.
pub fn query<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<AuditQuery> {
    let mut q = AuditQuery {
        limit: DEFAULT_LIMIT,
        max_bytes: MAX_BYTES,
        ..Default::default()
    };
    let time = |key: &str, t: &str| -> Result<u64> {
        humantime::parse_rfc3339_weak(t)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .ok_or_else(|| {
                bad_request(format!(
                    "{key} must be an RFC 3339 time such as 2026-11-21T10:00:00Z, not {t:?}"
                ))
            })
    };
    for (key, value) in params {
        match key {
            "object" => q.object = Some(value.to_owned()),
            "since" => q.since_unix_ms = Some(time(key, value)?),
            "until" => q.until_unix_ms = Some(time(key, value)?),
            "limit" => {
                q.limit = parse_limit(value)?;
            }
            _ => return Err(bad_request(format!("unknown query parameter {key:?}"))),
        }
    }
    Ok(q)
}

impl Ops {
    /// Who changed what, newest first.
    /// Who changed what, newest first, in every region of the fleet.
    pub async fn audit_log(&self, _caller: &Caller, query: &AuditQuery) -> Result<AuditLog> {
        let page = self.store().query_audit(query).await?;
        let mut entries: Vec<AuditView> = page
            .entries
            .iter()
            .map(|e| AuditView::of(e, self.region()))
            .collect();
        let mut log = AuditLog {
            entries: Vec::new(),
            truncated: page.truncated,
            missing_regions: Vec::new(),
            partial: false,
        };
        if !self.peer_regions().is_empty() {
            let asked = self
                .ask_regions(
                    &RegionQuery::Audit {
                        query: query.clone(),
                    },
                    |a| match a {
                        RegionAnswer::Audit(entries) => Ok(entries),
                        _ => Err(UNEXPECTED.into()),
                    },
                )
                .await;
            for (region, theirs) in asked.answers {
                entries.extend(theirs.iter().map(|e| AuditView::of(e, &region)));
            }
            // Ids are "<unix ms>-<n>": time order within a region, and across regions by time.
            entries.sort_by(|a, b| (&b.at, &b.id).cmp(&(&a.at, &a.id)));
            entries.truncate(query.limit);
            log.partial = !asked.missing.is_empty();
            log.missing_regions = asked.missing;
        }
        log.entries = entries;
        Ok(log)
    }

    /// Records what changed no stored state (a refused call): [`record`].
    pub async fn record(&self, entry: AuditEntry) {
        record(self.store(), entry).await;
    }
}

/// Records in the audit log what changed no stored state (a command delivered at once, a refused
/// call). A failed write is logged, not returned: what it records has happened by then.
pub async fn record(store: &dyn Store, entry: AuditEntry) {
    info!(target: "flotilla::audit", caller = %entry.caller, action = %entry.action, object = %entry.object, "change");
    if let Err(e) = store.append_audit(entry).await {
        warn!(error = %e, "audit entry not written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_from_text_and_checked() {
        let q = query([
            ("object", "config/otel"),
            ("limit", "5"),
            ("since", "2026-11-21T10:00:00Z"),
        ])
        .unwrap();
        assert_eq!(q.object.as_deref(), Some("config/otel"));
        assert_eq!((q.limit, q.max_bytes), (5, MAX_BYTES));
        assert_eq!(q.since_unix_ms, Some(1_795_255_200_000));
        for (bad, why) in [
            (("limit", "0"), "limit must be a number from 1 to 1000"),
            (("since", "yesterday"), "since must be an RFC 3339 time"),
            (("color", "red"), "unknown query parameter \"color\""),
        ] {
            let err = query([bad]).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
