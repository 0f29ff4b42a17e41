//! `/agent-metrics`: the fleet by its agents' own metrics, among the agents a selector chooses
//! (the agent list's syntax): the top agents by CPU, memory, refused and failed items per second,
//! the exporters failing and the queues near full, each agent a link to its page. The same
//! operation as `GET /api/v1/fleet/agent-metrics`; a bad selector or `top` is shown under the
//! form, as the agent list shows its own.

use super::own_metrics::{bytes, cores, near_full, per_second, percent, queue};
use super::page::{Console, Ctx, PageResult, Section, layout};
use super::render::{badge, count, href, seg};
use crate::ops;
use crate::ops::own_metrics::FleetMetricsQuery;
use crate::ops::views::{Ranked, Troubled};
use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use maud::{Markup, html};
use std::collections::HashMap;

/// The `top` choices the form offers (the operation takes 1 to 100).
const TOPS: [&str; 5] = ["5", "10", "25", "50", "100"];

pub async fn page(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> PageResult {
    let param = |k: &str| q.get(k).map_or("", String::as_str);
    // A form sends its empty fields too: they choose nothing.
    let pairs = q
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let answer = match FleetMetricsQuery::parse(pairs) {
        Ok(query) => c.ops.fleet_metrics(&ctx.caller, &query).await,
        Err(e) => Err(e),
    };
    let (error, fleet) = match answer {
        Ok(f) => (None, Some(f)),
        Err(e @ ops::Error::BadRequest(_)) => (Some(e.to_string()), None),
        Err(e) => return Err(e.into()),
    };
    let top = if param("top").is_empty() {
        "10"
    } else {
        param("top")
    };
    let body = html! {
        form.search method="get" action="/agent-metrics" role="search" {
            div.field.wide {
                label for="selector" { "Selector" }
                input #selector type="search" name="selector" value=(param("selector"))
                    placeholder="deployment.environment=prod,cloud.region in (eu-west-1,us-east-1),!canary"
                    aria-describedby=[error.as_ref().map(|_| "selector-error")];
            }
            div.field {
                label for="top" { "Top" }
                select #top name="top" {
                    @for t in TOPS { option value=(t) selected[top == t] { (t) } }
                    @if !TOPS.contains(&top) { option value=(top) selected { (top) } }
                }
            }
            button type="submit" { "Show" }
        }
        @if let Some(e) = &error {
            p #selector-error .error role="alert" { (e) }
        }
        @if let Some(f) = &fleet {
            p #reporting role="status" {
                strong data-selected=(f.agents_selected) { (count(f.agents_selected, "agent")) }
                " selected ("
                a href=(href("/agents", &[("selector", param("selector"))])) { "list them" }
                "), "
                strong data-reporting=(f.agents_reporting) { (f.agents_reporting) }
                " of them sent their own metrics in the last " (f.fresh_seconds / 60) " minutes."
            }
            div #live .metrics data-live="10" {
                div.grid {
                    (ranked("top-cpu", "CPU", "Cores", cores, &f.top_cpu))
                    (ranked("top-memory", "Memory", "Memory", bytes, &f.top_memory))
                    (ranked("top-refused", "Refused by receivers", "Items/s", per_second, &f.top_refused))
                    (ranked("top-failed", "Failed by exporters", "Items/s", per_second, &f.top_failed))
                }
                (troubled("failing", "Failing exporters", "failing to send, longest first", f.failing_exporters_total, &f.failing_exporters))
                (troubled("near-full", "Queues near full", "90% full or more, fullest first", f.queues_near_full_total, &f.queues_near_full))
            }
        }
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let page = layout(&ctx, Section::AgentMetrics, "Agent metrics", body);
    Ok((status, page).into_response())
}

fn agent(uid: &str, name: Option<&str>) -> Markup {
    html! {
        td { a.mono href={ "/agents/" (seg(uid)) } { (uid) } }
        td { (name.unwrap_or("")) }
    }
}

/// One top-N table: the agents highest first, with `value` written by `unit`.
fn ranked(id: &str, title: &str, value: &str, unit: fn(f64) -> String, rows: &[Ranked]) -> Markup {
    html! {
        section #(id) {
            h2 { (title) }
            @if rows.is_empty() {
                p.muted { "None." }
            } @else {
                table {
                    thead { tr {
                        th.num scope="col" { "#" } th scope="col" { "Agent" } th scope="col" { "Name" }
                        th.num scope="col" { (value) }
                    } }
                    tbody {
                        @for (i, r) in rows.iter().enumerate() {
                            tr data-agent=(r.instance_uid) {
                                td.num { (i + 1) }
                                (agent(&r.instance_uid, r.service_name.as_deref()))
                                td.num { (unit(r.value)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Exporters in trouble, with how many there are in all beside the ones shown.
fn troubled(id: &str, title: &str, hint: &str, total: u64, rows: &[Troubled]) -> Markup {
    html! {
        section #(id) data-total=(total) {
            h2 { (title) " " span.muted { "(" (total) ")" } }
            p.hint { (hint) }
            @if rows.is_empty() {
                p.muted { "None." }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Agent" } th scope="col" { "Name" } th scope="col" { "Exporter" }
                        th scope="col" { "State" }
                        th.num scope="col" { "Sent/s" } th.num scope="col" { "Failed/s" }
                        th.num scope="col" { "Queue" } th.num scope="col" { "Fill" }
                        th scope="col" { "Failing since" } th scope="col" { "Queue full since" }
                    } }
                    tbody {
                        @for t in rows {
                            @let e = &t.exporter;
                            tr data-agent=(t.instance_uid) data-exporter=(e.name)
                                class=(if e.failing_since.is_some() { "bad" } else { "warn" }) {
                                (agent(&t.instance_uid, t.service_name.as_deref()))
                                td { code { (e.name) } }
                                td {
                                    @if e.failing_since.is_some() { (badge("failing")) " " }
                                    @if near_full(e) { (badge("near_full")) }
                                }
                                td.num { (per_second(e.sent_per_second)) }
                                td.num { (per_second(e.failed_per_second)) }
                                td.num { (queue(e)) }
                                td.num { (e.queue_fill.map_or_else(String::new, percent)) }
                                td { @if let Some(s) = &e.failing_since { time { (s) } } }
                                td { @if let Some(s) = &e.queue_full_since { time { (s) } } }
                            }
                        }
                    }
                }
                @if total > rows.len() as u64 {
                    p.muted { "Showing " (rows.len()) " of " (total) "; a larger top shows more." }
                }
            }
        }
    }
}
