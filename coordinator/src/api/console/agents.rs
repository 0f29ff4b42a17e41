//! `/agents` (search, filter, sort, page) and `/agents/{uid}` (one agent, its labels, its own
//! metrics and the commands its capabilities and the caller's role allow).

use super::own_metrics;
use super::page::{Console, Ctx, PageError, PageResult, Section, layout, see_other};
use super::regions;
use super::render::{badge, code, count, health_word, href, seg, side_by_side};
use super::session::Submitted;
use crate::ops::agents::AgentQuery;
use crate::ops::views::{AgentDetail, AgentSummary, CONFIG_STATES, HealthView};
use crate::ops::{self, Role};
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use maud::{Markup, html};
use std::collections::{BTreeMap, HashMap};

/// Rows per page unless the query says otherwise.
const PAGE: &str = "50";
/// The query parameters the list keeps from page to page.
const KEPT: [&str; 8] = [
    "selector", "status", "health", "config", "sort", "order", "columns", "limit",
];

pub async fn list(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> PageResult {
    let param = |k: &str| q.get(k).map_or("", String::as_str);
    let columns: Vec<&str> = param("columns")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .take(8)
        .collect();
    let mut pairs: Vec<(&str, &str)> = q
        .iter()
        // A form sends its empty fields too: they filter nothing.
        .filter(|(k, v)| k.as_str() != "columns" && !v.is_empty())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if !q.contains_key("limit") {
        pairs.push(("limit", PAGE));
    }
    let page = match AgentQuery::parse(pairs) {
        Ok(query) => c
            .ops
            .list_agents(&ctx.caller, &query)
            .await
            .map(|p| (query, p)),
        Err(e) => Err(e),
    };
    let (error, query, page) = match page {
        Ok((query, page)) => (None, Some(query), Some(page)),
        Err(e @ ops::Error::BadRequest(_)) => (Some(e.to_string()), None, None),
        Err(e) => return Err(e.into()),
    };
    // The region column only in a fleet of several, so a single region's list reads as before.
    let multi = !c.ops.peer_regions().is_empty();
    let kept: Vec<(&str, &str)> = KEPT.iter().map(|k| (*k, param(k))).collect();
    let link = |changes: &[(&str, &str)]| {
        let mut pairs = kept.clone();
        for (k, v) in changes {
            pairs.retain(|(key, _)| key != k);
            pairs.push((k, v));
        }
        href("/agents", &pairs)
    };
    let select = |name: &str, label: &str, options: &[&str]| {
        html! {
            label for=(name) { (label) }
            select #(name) name=(name) {
                option value="" { "any" }
                @for o in options {
                    option value=(o) selected[param(name) == *o] { (o) }
                }
            }
        }
    };
    let sort_header = |key: &str, title: &str| {
        let current = param("sort") == key || (key == "uid" && param("sort").is_empty());
        let desc = current && param("order") == "desc";
        let next = if current && !desc { "desc" } else { "asc" };
        let aria = match (current, desc) {
            (false, _) => "none",
            (true, false) => "ascending",
            (true, true) => "descending",
        };
        html! {
            th scope="col" aria-sort=(aria) {
                a href=(link(&[("sort", key), ("order", next), ("offset", "")])) {
                    (title)
                    @if current { span aria-hidden="true" { @if desc { " ▼" } @else { " ▲" } } }
                }
            }
        }
    };
    let body = html! {
        form.search method="get" action="/agents" role="search" {
            div.field.wide {
                label for="selector" { "Selector" }
                input #selector type="search" name="selector" value=(param("selector"))
                    placeholder="deployment.environment=prod,cloud.region in (eu-west-1,us-east-1),!canary"
                    aria-describedby=[error.as_ref().map(|_| "selector-error")];
            }
            div.field { (select("status", "Status", &["connected", "disconnected", "silent"])) }
            div.field { (select("health", "Health", &["healthy", "unhealthy"])) }
            div.field { (select("config", "Config", &CONFIG_STATES)) }
            div.field {
                label for="columns" { "Attribute columns" }
                input #columns type="text" name="columns" value=(param("columns")) placeholder="service.version,host.name";
            }
            input type="hidden" name="sort" value=(param("sort"));
            input type="hidden" name="order" value=(param("order"));
            button type="submit" { "Search" }
        }
        @if let Some(e) = &error {
            p #selector-error .error role="alert" { (e) }
        }
        @if let (Some(query), Some(page)) = (&query, &page) {
            @let first = if page.agents.is_empty() { 0 } else { query.offset + 1 };
            @let last = query.offset + page.agents.len();
            p #matches role="status" {
                strong data-matches=(page.total) { (count(page.total as u64, "agent")) } " match"
                @if page.total == 1 { "es" }
                @if page.total > 0 { " · showing " (first) "–" (last) }
            }
            div #live data-live="10" {
                (regions::missing(&page.missing_regions, page.partial, "the count and the list leave their agents out."))
                table.agents {
                    thead {
                        tr {
                            (sort_header("uid", "Agent"))
                            (sort_header("service.name", "Name"))
                            (sort_header("status", "Status"))
                            (sort_header("health", "Health"))
                            (sort_header("config", "Config"))
                            (sort_header("last_seen", "Last seen"))
                            @if multi { th scope="col" data-col="region" { "Region" } }
                            @for col in &columns { (sort_header(col, col)) }
                        }
                    }
                    tbody {
                        @for a in &page.agents { (row(a, &columns, multi)) }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if query.offset > 0 {
                    @let prev = query.offset.saturating_sub(query.limit).to_string();
                    a href=(link(&[("offset", &prev)])) rel="prev" { "← Previous" }
                }
                @if last < page.total {
                    @let next = last.to_string();
                    a href=(link(&[("offset", &next)])) rel="next" { "Next →" }
                }
            }
        }
    };
    let status = if error.is_some() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, layout(&ctx, Section::Agents, "Agents", body)).into_response())
}

/// One agent's row; `multi`: with the region column.
fn row(a: &AgentSummary, columns: &[&str], multi: bool) -> Markup {
    let attr = |k: &str| {
        a.labels
            .get(k)
            .or_else(|| a.identifying_attributes.get(k))
            .or_else(|| a.non_identifying_attributes.get(k))
            .cloned()
            .unwrap_or_default()
    };
    html! {
        tr {
            td { a.mono href={ "/agents/" (seg(&a.instance_uid)) } { (a.instance_uid) } }
            td { (attr("service.name")) }
            td { (badge(&a.status)) }
            td { (badge(health_word(a.healthy))) }
            td {
                (badge(&a.config_state))
                @if let Some(c) = &a.desired_config {
                    " " a href={ "/configs/" (seg(&c.name)) } { (c.name) " v" (c.version) }
                }
            }
            td { time { (a.last_seen) } }
            @if multi { td data-region=(a.region) { (regions::agent_region(a)) } }
            @for col in columns { td { (attr(col)) } }
        }
    }
}

pub async fn detail(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(uid): Path<String>,
) -> PageResult {
    let a = c.ops.agent(&ctx.caller, &uid).await?;
    // The desired files, to diff the effective config against.
    let desired = match &a.summary.desired_config {
        Some(r) => c
            .ops
            .config(&ctx.caller, &r.name, Some(r.version))
            .await
            .ok(),
        None => None,
    };
    let s = &a.summary;
    let name = s
        .identifying_attributes
        .get("service.name")
        .cloned()
        .unwrap_or_else(|| s.instance_uid.clone());
    let body = html! {
        p.mono { (s.instance_uid) }
        div #live data-live="5" {
            dl.facts {
                dt { "Status" } dd { (badge(&s.status)) }
                dt { "Health" } dd { (badge(health_word(s.healthy))) }
                dt { "Config" } dd {
                    (badge(&s.config_state))
                    @match &s.desired_config {
                        Some(r) => { " should run " a href={ "/configs/" (seg(&r.name)) } { (r.name) " v" (r.version) } }
                        None => { " no active config selects this agent" }
                    }
                }
                dt { "Runs" } dd {
                    @match s.config_drift {
                        Some(false) => { "what it should (past what its supervisor adds)" }
                        Some(true) => { (badge("drifted")) " its effective config differs from what it should run" }
                        None => { span.muted { "cannot tell" } }
                    }
                }
                dt { "Reports" } dd {
                    (s.remote_config_status.status)
                    @if !s.remote_config_status.hash.is_empty() { " of " code { (short(&s.remote_config_status.hash)) } }
                    @if !s.remote_config_status.error.is_empty() { p.error { (s.remote_config_status.error) } }
                    @if let Some(back) = &s.remote_config_status.rolled_back {
                        p.error {
                            "Went back from " code { (short(&back.hash)) } ", which failed: " (back.error)
                            " (not sent to it again)"
                        }
                    }
                    @if let Some(refused) = &s.remote_config_status.not_sent {
                        p.error { "Config " code { (short(&refused.hash)) } " " (refused.error) }
                    }
                }
                (regions::agent_facts(s, !c.ops.peer_regions().is_empty()))
                dt { "Last seen" } dd { time { (s.last_seen) } }
                dt { "First seen" } dd { time { (a.first_seen) } }
                @if a.restart_pending { dt { "Restart" } dd { (badge("pending")) } }
            }
            section {
                h2 { "Health" }
                @match &a.health {
                    Some(h) => { ul.tree { (health_tree("agent", h)) } }
                    None => { p.muted { "Not reported." } }
                }
            }
            (own_metrics::section(a.own_metrics.as_ref(), a.capabilities.names.contains(&"ReportsOwnMetrics")))
        }
        (actions(&ctx, &a))
        section {
            h2 { "Description" }
            div.grid {
                (attributes("Identifying attributes", &s.identifying_attributes))
                (attributes("Non-identifying attributes", &s.non_identifying_attributes))
            }
        }
        (labels_form(&ctx, s))
        section {
            h2 { "Capabilities" }
            p.hint { "Bits " (a.capabilities.bits) }
            ul.words { @for n in &a.capabilities.names { li { (capability_words(n)) } } }
            @if let Some(custom) = &a.custom_capabilities {
                h3 { "Custom capabilities" }
                ul.words { @for n in custom { li { code { (n) } } } }
                @if !custom.is_empty() && ctx.may(Role::Operator) {
                    (custom_message_form(&ctx, &s.instance_uid, custom))
                }
            }
            @if !a.pending_custom_messages.is_empty() {
                h3 { "Custom messages waiting for its next message" }
                ul { @for m in &a.pending_custom_messages {
                    li { code { (m.capability) } " " (m.kind) " (" (m.data_bytes) " bytes), until " time { (m.expires) } }
                } }
            }
            @if !a.custom_messages.is_empty() {
                h3 { "Custom messages it sent" }
                table {
                    thead { tr { th scope="col" { "Received" } th scope="col" { "Capability" } th scope="col" { "Type" } th scope="col" { "Bytes" } } }
                    tbody {
                        @for m in &a.custom_messages {
                            tr {
                                td { time { (m.received) } }
                                td { code { (m.capability) } }
                                td { (m.kind) }
                                td.num { (m.data_bytes) @if m.truncated { " (first 4 KiB kept)" } }
                            }
                        }
                    }
                }
            }
            @if let Some(available) = &a.available_components {
                h3 { "Available components" }
                @if !available.complete { p.muted { "Asked for: only their hash has come so far." } }
                dl.facts {
                    @for (kind, types) in &available.components {
                        dt { (kind) } dd { ul.words { @for t in types { li { code { (t) } } } } }
                    }
                }
            }
        }
        section {
            h2 { "Effective config" }
            @match &a.effective_config {
                None => { p.muted { "Not reported." } }
                Some(files) => {
                    @for (file, f) in files { (code(file, &f.body)) }
                    @if let Some(d) = &desired {
                        h3 { "Against the desired config (" (d.name) " v" (d.version) ")" }
                        @for file in d.files.keys().chain(files.keys().filter(|k| !d.files.contains_key(*k))) {
                            @let want = d.files.get(file).map_or("", String::as_str);
                            @let have = files.get(file).map_or("", |f| f.body.as_str());
                            h4 { code { (file) } }
                            (side_by_side("reported", have, "desired", want))
                        }
                    }
                }
            }
        }
        @if let Some(p) = &a.packages {
            section {
                h2 { "Packages" }
                @if !p.error.is_empty() { p.error { (p.error) } }
                table {
                    thead { tr { th scope="col" { "Package" } th scope="col" { "Has" } th scope="col" { "Offered" } th scope="col" { "Status" } th scope="col" { "Error" } } }
                    tbody {
                        @for (n, pk) in &p.packages {
                            tr { td { (n) } td { (pk.agent_has_version) } td { (pk.server_offered_version) } td { (pk.status) } td { (pk.error) } }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Connection" }
            dl.facts {
                dt { "Transport" } dd { (a.transport.unwrap_or("unknown")) }
                dt { "Peer" } dd { (a.peer_address.clone().unwrap_or_default()) }
                dt { "Gateway" } dd { (s.gateway.clone().unwrap_or_default()) }
                dt { "Sequence number" } dd { (a.sequence_num) }
                dt { "Client certificate" } dd.mono { (a.client_certificate.sha256.clone().unwrap_or_else(|| "none".into())) }
                @if let Some(issued) = &a.client_certificate.issued_sha256 {
                    dt { "Issued certificate" } dd.mono { (issued) }
                }
                @if !a.client_certificate.retired.is_empty() {
                    dt { "Retired certificates" } dd.mono { @for r in &a.client_certificate.retired { (r) br; } }
                }
            }
        }
    };
    Ok(layout(&ctx, Section::Agents, &name, body).into_response())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn attributes(title: &str, attrs: &BTreeMap<String, String>) -> Markup {
    html! {
        div {
            h3 { (title) }
            @if attrs.is_empty() { p.muted { "None." } } @else {
                dl.attrs { @for (k, v) in attrs { dt { code { (k) } } dd { (v) } } }
            }
        }
    }
}

fn health_tree(name: &str, h: &HealthView) -> Markup {
    html! {
        li {
            span.component { (name) } " " (badge(health_word(Some(h.healthy))))
            @if !h.status.is_empty() { " " span.muted { (h.status) } }
            @if let Some(t) = &h.status_time { " · " time { (t) } }
            @if !h.last_error.is_empty() { p.error { "Last error: " (h.last_error) } }
            @if !h.components.is_empty() {
                ul { @for (n, c) in &h.components { (health_tree(n, c)) } }
            }
        }
    }
}

/// A capability's name (`AcceptsOpAMPConnectionSettings`) as words (`Accepts OpAMP connection
/// settings`).
fn capability_words(name: &str) -> String {
    let words = name
        .replace("OpAMP", "Opamp")
        .chars()
        .fold(String::new(), |mut s, c| {
            if c.is_uppercase() && !s.is_empty() {
                s.push(' ');
                s.extend(c.to_lowercase());
            } else {
                s.push(c);
            }
            s
        });
    words.replace("opamp", "OpAMP")
}

fn actions(ctx: &Ctx, a: &AgentDetail) -> Markup {
    let uid = seg(&a.summary.instance_uid);
    let names = &a.capabilities.names;
    let can_restart = names.contains(&"AcceptsRestartCommand");
    let can_rotate = names.contains(&"AcceptsOpAMPConnectionSettings");
    html! {
        section {
            h2 { "Actions" }
            div.actions {
                @if can_restart && ctx.may(Role::Operator) {
                    form method="post" action={ "/agents/" (uid) "/restart" } data-confirm="Restart this agent?" {
                        (ctx.csrf_field())
                        button type="submit" { "Restart" }
                    }
                }
                @if can_rotate && ctx.may(Role::Admin) {
                    form method="post" action={ "/agents/" (uid) "/certificate" } data-confirm="Issue this agent a new client certificate?" {
                        (ctx.csrf_field())
                        button type="submit" { "Rotate certificate" }
                    }
                }
            }
            @if !(can_restart && ctx.may(Role::Operator) || can_rotate && ctx.may(Role::Admin)) {
                p.muted {
                    "No action is open: "
                    @if !can_restart && !can_rotate { "the agent accepts neither restart commands nor connection settings." }
                    @else { "your role (" (ctx.caller.role.as_str()) ") does not allow them." }
                }
            }
        }
    }
}

/// Sends the agent a custom message under one of the custom capabilities it declares.
fn custom_message_form(ctx: &Ctx, uid: &str, capabilities: &[String]) -> Markup {
    html! {
        form.editor #custom-message method="post" action={ "/agents/" (seg(uid)) "/custom-messages" } {
            (ctx.csrf_field())
            div.row {
                div.field {
                    label for="capability" { "Capability" }
                    select #capability name="capability" required {
                        @for c in capabilities { option value=(c) { (c) } }
                    }
                }
                div.field {
                    label for="type" { "Type" }
                    input #type type="text" name="type" required maxlength="256";
                }
            }
            label for="data" { "Data (text)" }
            textarea #data name="data" rows="3" {}
            button type="submit" { "Send custom message" }
        }
    }
}

fn labels_form(ctx: &Ctx, s: &AgentSummary) -> Markup {
    let text: String = s.labels.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    html! {
        section {
            h2 { "Labels" }
            @if ctx.may(Role::Operator) {
                form method="post" action={ "/agents/" (seg(&s.instance_uid)) "/labels" } {
                    (ctx.csrf_field())
                    label for="labels" { "One key=value a line; a removed line removes the label." }
                    textarea #labels name="labels" rows="4" { (text) }
                    button type="submit" { "Save labels" }
                }
            } @else if s.labels.is_empty() {
                p.muted { "None." }
            } @else {
                dl.attrs { @for (k, v) in &s.labels { dt { code { (k) } } dd { (v) } } }
            }
        }
    }
}

pub async fn restart(
    State(c): State<Console>,
    Path(uid): Path<String>,
    form: Submitted,
) -> PageResult {
    c.ops.restart_agent(&form.ctx.caller, &uid).await?;
    Ok(see_other(&format!("/agents/{}", seg(&uid))))
}

pub async fn custom_message(
    State(c): State<Console>,
    Path(uid): Path<String>,
    form: Submitted,
) -> PageResult {
    let data = form.get("data").as_bytes().to_vec();
    c.ops
        .send_custom_message(
            &form.ctx.caller,
            &uid,
            form.get("capability"),
            form.get("type"),
            data,
        )
        .await?;
    Ok(see_other(&format!("/agents/{}", seg(&uid))))
}

pub async fn certificate(
    State(c): State<Console>,
    Path(uid): Path<String>,
    form: Submitted,
) -> PageResult {
    c.ops.issue_certificate(&form.ctx.caller, &uid).await?;
    Ok(see_other(&format!("/agents/{}", seg(&uid))))
}

fn labels_change(
    current: &BTreeMap<String, String>,
    text: &str,
) -> Result<(BTreeMap<String, String>, Vec<String>), PageError> {
    let mut set = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            PageError::from(ops::Error::BadRequest(format!(
                "labels line {}: {line:?} is not key=value",
                i + 1
            )))
        })?;
        set.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    let remove = current
        .keys()
        .filter(|k| !set.contains_key(*k))
        .cloned()
        .collect();
    Ok((set, remove))
}

pub async fn labels(
    State(c): State<Console>,
    Path(uid): Path<String>,
    form: Submitted,
) -> PageResult {
    let current = c.ops.labels(&form.ctx.caller, &uid).await?;
    let (set, remove) = labels_change(&current.labels, form.get("labels"))?;
    c.ops
        .set_labels(&form.ctx.caller, &uid, set, remove)
        .await?;
    Ok(see_other(&format!("/agents/{}", seg(&uid))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_read_as_words() {
        assert_eq!(capability_words("ReportsStatus"), "Reports status");
        assert_eq!(
            capability_words("AcceptsOpAMPConnectionSettings"),
            "Accepts OpAMP connection settings"
        );
    }

    #[test]
    fn the_region_column_shows_only_in_a_fleet_of_several() {
        let rec = flotilla_proto::bus::AgentRecord {
            home_region: "us".into(),
            ..Default::default()
        };
        let a = AgentSummary::of(&rec, &Default::default()).in_region("eu");
        let multi = row(&a, &[], true).0;
        assert!(multi.contains(r#"<td data-region="eu">eu "#), "{multi}");
        assert!(multi.contains(">roaming</span>"), "{multi}");
        let single = row(&a, &[], false).0;
        assert!(
            !single.contains("data-region") && !single.contains("roaming"),
            "{single}"
        );
    }

    #[test]
    fn labels_text_becomes_a_change() {
        let current = BTreeMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ]);
        let (set, remove) = labels_change(&current, "a = 3\n\n c=4 \n").unwrap();
        assert_eq!(
            set,
            BTreeMap::from([("a".into(), "3".into()), ("c".into(), "4".into())])
        );
        assert_eq!(remove, vec!["b".to_owned()]);
        assert!(labels_change(&current, "no equals sign").is_err());
    }
}
