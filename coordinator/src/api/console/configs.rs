//! `/configs` (the active configs, a new one), `/configs/{name}` (files, versions, side-by-side
//! diff, rollback) and `/configs/{name}/edit` (the editor: checked and previewed before anything
//! is stored).

use super::page::{Console, Ctx, PageResult, Section, layout, see_other};
use super::render::{code, count, href, seg, side_by_side};
use super::session::Submitted;
use crate::ops::configs::{ConfigDraft, ConfigPreview};
use crate::ops::views::ConfigView;
use crate::ops::{self, Role};
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use maud::{Markup, html};
use std::collections::{BTreeMap, HashMap};

pub async fn list(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> PageResult {
    if let Some(name) = q.get("new").map(|n| n.trim()).filter(|n| !n.is_empty()) {
        return Ok(see_other(&format!("/configs/{}/edit", seg(name))));
    }
    let configs = c.ops.configs(&ctx.caller).await?;
    let body = html! {
        @if ctx.may(Role::Admin) {
            form.inline method="get" action="/configs" {
                label for="new" { "New config named" }
                input #new type="text" name="new" required pattern="[A-Za-z0-9._-]{1,128}";
                button type="submit" { "Create" }
            }
        }
        @if configs.is_empty() {
            p.muted { "No active config." }
        } @else {
            table {
                thead { tr { th scope="col" { "Config" } th.num scope="col" { "Version" } th scope="col" { "Selector" } th scope="col" { "Files" } th scope="col" { "Created" } th scope="col" { "By" } } }
                tbody {
                    @for cfg in &configs {
                        tr {
                            td { a href={ "/configs/" (seg(&cfg.name)) } { (cfg.name) } }
                            td.num { (cfg.version) }
                            td { code { (selector_text(cfg)) } }
                            td { (cfg.files.keys().cloned().collect::<Vec<_>>().join(", ")) }
                            td { time { (cfg.created) } }
                            td { (cfg.created_by) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(&ctx, Section::Configs, "Configs", body).into_response())
}

fn selector_text(cfg: &ConfigView) -> &str {
    if cfg.selector_text.is_empty() {
        "(every agent)"
    } else {
        &cfg.selector_text
    }
}

pub async fn detail(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> PageResult {
    let history = c.ops.config_history(&ctx.caller, &name).await?;
    let shown = c.ops.config(&ctx.caller, &name, None).await?;
    let version = |k: &str| -> Result<Option<u64>, ops::Error> {
        q.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse()
                    .map_err(|_| ops::Error::BadRequest(format!("{k} must be a version number")))
            })
            .transpose()
    };
    let compare = match (version("from")?, version("to")?) {
        (Some(from), to) => {
            let to = to.unwrap_or(history.versions.first().map_or(0, |v| v.version));
            let a = c.ops.config(&ctx.caller, &name, Some(from)).await?;
            let b = c.ops.config(&ctx.caller, &name, Some(to)).await?;
            Some((a, b))
        }
        (None, _) => None,
    };
    let uname = seg(&name);
    let body = html! {
        @if let Some(v) = q.get("stored") {
            p.notice role="status" { "Stored version " (v) "." }
        }
        dl.facts {
            dt { "Shown" } dd {
                "version " (shown.version)
                @if shown.active { " (active)" } @else { " (not active: staged for a rollout, or replaced)" }
            }
            dt { "Selector" } dd { code { (selector_text(&shown)) } " · " a href=(href("/agents", &[("selector", &shown.selector_text)])) { "matching agents" } }
            dt { "Hash" } dd.mono { (shown.hash) }
            dt { "Created" } dd { time { (shown.created) } " by " (shown.created_by) @if !shown.comment.is_empty() { " · " (shown.comment) } }
        }
        @if ctx.may(Role::Admin) {
            div.actions {
                a.button href={ "/configs/" (uname) "/edit" } { "Edit" }
                @if shown.active {
                    form method="post" action={ "/configs/" (uname) "/delete" } data-confirm="Stop giving this config to agents? Its versions stay." {
                        (ctx.csrf_field())
                        button type="submit" { "Delete" }
                    }
                }
            }
        }
        @if let Some((a, b)) = &compare {
            section #diff {
                h2 { "Version " (a.version) " → version " (b.version) }
                (config_diff(a, b))
            }
        }
        section {
            h2 { "Files" }
            @for (file, body) in &shown.files { (code(file, body)) }
            @if !shown.packages.is_empty() {
                h3 { "Packages" }
                ul { @for (p, offer) in &shown.packages { li { (p) " " (offer.version) } } }
            }
        }
        section {
            h2 { "Versions" }
            table {
                thead { tr { th.num scope="col" { "Version" } th scope="col" { "Created" } th scope="col" { "By" } th scope="col" { "Comment" } th scope="col" { "Selector" } th scope="col" { "Compare" } @if ctx.may(Role::Admin) { th scope="col" { "Rollback" } } } }
                tbody {
                    @for (i, v) in history.versions.iter().enumerate() {
                        tr {
                            td.num { (v.version) @if v.active { " " span.badge.ok { "active" } } }
                            td { time { (v.created) } }
                            td { (v.created_by) }
                            td { (v.comment) }
                            td { code { (v.selector_text) } }
                            td {
                                @if let Some(prev) = history.versions.get(i + 1) {
                                    a href={ "/configs/" (uname) "?from=" (prev.version) "&to=" (v.version) "#diff" } { "with v" (prev.version) }
                                }
                            }
                            @if ctx.may(Role::Admin) {
                                td {
                                    @if !v.active {
                                        form method="post" action={ "/configs/" (uname) "/rollback" } data-confirm={ "Make version " (v.version) " active again (a new version)?" } {
                                            (ctx.csrf_field())
                                            input type="hidden" name="version" value=(v.version);
                                            button type="submit" { "Roll back to v" (v.version) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(&ctx, Section::Configs, &format!("Config {name}"), body).into_response())
}

/// Every file of two versions side by side, and their selectors when they differ.
fn config_diff(a: &ConfigView, b: &ConfigView) -> Markup {
    let files: std::collections::BTreeSet<&String> = a.files.keys().chain(b.files.keys()).collect();
    let (ta, tb) = (format!("v{}", a.version), format!("v{}", b.version));
    html! {
        @if a.selector_text != b.selector_text {
            p { "Selector: " code { (a.selector_text) } " → " code { (b.selector_text) } }
        }
        @for f in files {
            h3 { code { (f) } }
            (side_by_side(&ta, a.files.get(f).map_or("", String::as_str), &tb, b.files.get(f).map_or("", String::as_str)))
        }
    }
}

/// What the editor shows: the fields as last typed, and what checking or previewing them said.
#[derive(Default)]
struct Draft {
    selector: String,
    files: Vec<(String, String)>,
    packages_json: String,
    settings_json: String,
    activate: bool,
}

pub async fn editor(
    State(c): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> PageResult {
    let draft = match c.ops.config(&ctx.caller, &name, None).await {
        Ok(cfg) => Draft {
            selector: cfg.selector_text.clone(),
            files: cfg.files.clone().into_iter().collect(),
            packages_json: json_or_empty(!cfg.packages.is_empty(), &cfg.packages),
            settings_json: json_or_empty(cfg.settings.is_some(), &cfg.settings),
            activate: true,
        },
        Err(ops::Error::NotFound(_)) => Draft {
            files: vec![("collector.yaml".into(), String::new())],
            activate: true,
            ..Default::default()
        },
        Err(e) => return Err(e.into()),
    };
    Ok(edit_page(&ctx, &name, &draft, None, None).into_response())
}

fn json_or_empty<T: serde::Serialize>(some: bool, v: &T) -> String {
    if some {
        serde_json::to_string_pretty(v).unwrap_or_default()
    } else {
        String::new()
    }
}

fn edit_page(
    ctx: &Ctx,
    name: &str,
    d: &Draft,
    error: Option<&str>,
    preview: Option<&ConfigPreview>,
) -> Markup {
    let body = html! {
        form.editor method="post" action={ "/configs/" (seg(name)) } {
            (ctx.csrf_field())
            @if let Some(e) = error {
                div.error #problems role="alert" {
                    p { strong { "Not stored." } " Fix this and try again:" }
                    pre { (e) }
                }
            }
            @if let Some(p) = preview {
                div.notice #preview role="status" {
                    p {
                        strong { "Valid." } " Nothing stored yet. Its selector matches "
                        strong data-matching=(p.matching_agents) { (count(p.matching_agents as u64, "agent")) }
                        "; it reaches agents as a " (p.offer_bytes) "-byte offer."
                    }
                    @if !p.sample.is_empty() {
                        ul.sample {
                            @for a in &p.sample {
                                li { a.mono href={ "/agents/" (seg(&a.instance_uid)) } { (a.instance_uid) } " " (a.identifying_attributes.get("service.name").cloned().unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
            label for="selector" { "Selector" }
            input #selector type="text" name="selector" value=(d.selector) placeholder="deployment.environment=prod (empty: every agent)";
            @for (i, (file, body)) in d.files.iter().chain(std::iter::once(&(String::new(), String::new()))).enumerate() {
                fieldset.file {
                    legend { @if file.is_empty() { "Add a file" } @else { "File " (file) } }
                    label for={ "file" (i) } { "File name" }
                    input id={ "file" (i) } type="text" name="file" value=(file) placeholder="collector.yaml";
                    label for={ "body" (i) } { "Contents" }
                    textarea.code id={ "body" (i) } name="body" rows=((body.lines().count() + 1).clamp(4, 40)) spellcheck="false" { (body) }
                }
            }
            details {
                summary { "Packages and connection settings (JSON, as the REST API takes them)" }
                label for="packages_json" { "Packages" }
                textarea.code #packages_json name="packages_json" rows="4" spellcheck="false" { (d.packages_json) }
                label for="settings_json" { "Settings" }
                textarea.code #settings_json name="settings_json" rows="4" spellcheck="false" { (d.settings_json) }
            }
            label.check {
                input type="checkbox" name="activate" value="1" checked[d.activate];
                " Activate now (untick to stage the version for a rollout)"
            }
            div.actions {
                button type="submit" name="intent" value="preview" { "Check and preview" }
                button.primary type="submit" name="intent" value="save" { "Save" }
            }
        }
    };
    layout(ctx, Section::Configs, &format!("Edit config {name}"), body)
}

/// The editor's form: `preview` checks and counts agents, `save` stores a version (or shows why
/// not, with nothing stored).
pub async fn submit(
    State(c): State<Console>,
    Path(name): Path<String>,
    form: Submitted,
) -> PageResult {
    let names = form.all("file");
    let bodies = form.all("body");
    let d = Draft {
        selector: form.get("selector").to_owned(),
        files: names
            .iter()
            .zip(bodies.iter().chain(std::iter::repeat(&"")))
            .filter(|(n, b)| !n.trim().is_empty() || !b.trim().is_empty())
            .map(|(n, b)| (n.trim().to_owned(), b.replace("\r\n", "\n")))
            .collect(),
        packages_json: form.get("packages_json").to_owned(),
        settings_json: form.get("settings_json").to_owned(),
        activate: form.get("activate") == "1",
    };
    let ctx = &form.ctx;
    let refused = |e: ops::Error| {
        let status =
            StatusCode::from_u16(e.kind().http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        Ok((
            status,
            edit_page(ctx, &name, &d, Some(&e.to_string()), None),
        )
            .into_response())
    };
    if let Some((_, body)) = d.files.iter().find(|(n, _)| n.is_empty()) {
        let lines = body.lines().count();
        return refused(ops::Error::BadRequest(format!(
            "a file of {lines} lines has no name; give it one (e.g. collector.yaml)"
        )));
    }
    let files: BTreeMap<String, String> = d.files.iter().cloned().collect();
    let draft = match ConfigDraft::from_parts(
        &d.selector,
        files,
        &d.packages_json,
        &d.settings_json,
        d.activate,
    ) {
        Ok(draft) => draft,
        Err(e) => return refused(e),
    };
    if form.get("intent") == "preview" {
        return match c.ops.preview_config(&ctx.caller, &name, draft).await {
            Ok(p) => Ok(edit_page(ctx, &name, &d, None, Some(&p)).into_response()),
            Err(e) => refused(e),
        };
    }
    match c.ops.put_config(&ctx.caller, &name, draft).await {
        Ok(v) => Ok(see_other(&format!(
            "/configs/{}?stored={}",
            seg(&name),
            v.version
        ))),
        Err(e) => refused(e),
    }
}

pub async fn rollback(
    State(c): State<Console>,
    Path(name): Path<String>,
    form: Submitted,
) -> PageResult {
    let version: u64 = form
        .get("version")
        .parse()
        .map_err(|_| ops::Error::BadRequest("version must be a number".into()))?;
    c.ops
        .rollback_config(&form.ctx.caller, &name, version)
        .await?;
    Ok(see_other(&format!("/configs/{}", seg(&name))))
}

/// Stops giving the config to agents (the API's `DELETE /api/v1/configs/{name}`).
pub async fn delete(
    State(c): State<Console>,
    Path(name): Path<String>,
    form: Submitted,
) -> PageResult {
    c.ops.delete_config(&form.ctx.caller, &name).await?;
    Ok(see_other(&format!("/configs/{}", seg(&name))))
}
