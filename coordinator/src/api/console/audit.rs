//! `/audit`: who changed what, newest first, filtered by object and time.

use super::page::{Console, Ctx, PageResult, Section, layout};
use super::regions;
use crate::ops::views::AuditView;
use crate::ops::{self, audit};
use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use maud::{Markup, html};
use std::collections::HashMap;

const FIELDS: [(&str, &str, &str); 4] = [
    ("object", "Object", "config/base, agent/<uid>, rollout/<id>"),
    ("since", "Since", "2026-12-01T00:00:00Z"),
    ("until", "Until", "2026-12-31T00:00:00Z"),
    ("limit", "Entries", "100"),
];

pub async fn page(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> PageResult {
    let pairs = q
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let log = match audit::query(pairs) {
        Ok(query) => c.ops.audit_log(&ctx.caller, &query).await.map(Some),
        Err(e) => Err(e),
    };
    let (log, error) = match log {
        Ok(log) => (log, None),
        Err(e @ ops::Error::BadRequest(_)) => (None, Some(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    // The region column only in a fleet of several, so a single region's log reads as before.
    let multi = !c.ops.peer_regions().is_empty();
    let body = html! {
        form.search method="get" action="/audit" {
            @for (name, label, example) in FIELDS {
                div.field {
                    label for=(name) { (label) }
                    input id=(name) type="text" name=(name) value=(q.get(name).cloned().unwrap_or_default()) placeholder=(example);
                }
            }
            button type="submit" { "Filter" }
        }
        @if let Some(e) = &error { p.error role="alert" { (e) } }
        @if let Some(log) = &log {
            (regions::missing(&log.missing_regions, log.partial, "changes made there are not listed."))
            @if log.entries.is_empty() { p.muted { "No entry matches." } } @else {
                table.audit {
                    thead {
                        tr {
                            th scope="col" { "When" }
                            @if multi { th scope="col" data-col="region" { "Region" } }
                            th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "Object" } th scope="col" { "Change" }
                        }
                    }
                    tbody { @for e in &log.entries { (row(e, multi)) } }
                }
                @if log.truncated { p.muted { "More entries match: narrow the filter or raise the count." } }
            }
        }
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((status, layout(&ctx, Section::Audit, "Audit log", body)).into_response())
}

/// One entry's row; `multi`: with the region that holds it.
fn row(e: &AuditView, multi: bool) -> Markup {
    html! {
        tr {
            td { time { (e.at) } }
            @if multi { td data-region=(e.region) { (e.region) } }
            td { (e.caller) }
            td { code { (e.action) } }
            td { code { (e.object) } }
            td {
                @if e.before.is_some() || e.after.is_some() {
                    details {
                        summary { "before and after" }
                        @if let Some(b) = &e.before { h4 { "Before" } pre { (serde_json::to_string_pretty(b).unwrap_or_default()) } }
                        @if let Some(a) = &e.after { h4 { "After" } pre { (serde_json::to_string_pretty(a).unwrap_or_default()) } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_names_its_region_only_in_a_fleet_of_several() {
        let e = AuditView {
            id: "1".into(),
            region: "us".into(),
            at: "2026-01-01T00:00:00Z".into(),
            caller: "alice".into(),
            action: "config.put".into(),
            object: "config/base".into(),
            before: None,
            after: None,
        };
        let multi = row(&e, true).0;
        assert!(multi.contains(r#"<td data-region="us">us</td>"#), "{multi}");
        assert!(!row(&e, false).0.contains("data-region"));
    }
}
