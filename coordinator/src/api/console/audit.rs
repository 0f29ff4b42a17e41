//! `/audit`: who changed what, newest first, filtered by object and time.

use super::page::{Console, Ctx, PageResult, Section, layout};
use crate::ops::{self, audit};
use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use maud::html;
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
            @if log.entries.is_empty() { p.muted { "No entry matches." } } @else {
                table.audit {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "Object" } th scope="col" { "Change" } } }
                    tbody {
                        @for e in &log.entries {
                            tr {
                                td { time { (e.at) } }
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
