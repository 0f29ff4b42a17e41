//! `/`: the fleet at a glance, updated live. In a fleet of several regions the counts and lists
//! are this region's, under a table of every region's counts.

use super::page::{Console, Ctx, PageResult, Section, layout};
use super::regions;
use super::render::{badge, count, href, seg};
use crate::api::sse;
use crate::ops::events::event_kinds;
use crate::ops::views::{AgentBrief, ENVIRONMENT_KEY, Group, REGION_KEY, VERSION_KEY};
use axum::Extension;
use axum::extract::State;
use axum::response::IntoResponse;
use maud::{Markup, html};

pub async fn page(State(c): State<Console>, Extension(ctx): Extension<Ctx>) -> PageResult {
    let o = c.ops.fleet_overview(&ctx.caller).await?;
    // Every region's counts, when there are several (the overview itself is this region's).
    let fleet = if c.ops.peer_regions().is_empty() {
        None
    } else {
        Some(c.ops.fleet_health(&ctx.caller).await?)
    };
    let here = c.ops.region();
    let h = &o.health;
    let tiles = [
        ("Agents", h.total_agents, "", ""),
        ("Connected", h.connected_agents, "status", "connected"),
        (
            "Disconnected",
            h.disconnected_agents,
            "status",
            "disconnected",
        ),
        ("Silent", h.silent_agents, "status", "silent"),
        ("Healthy", h.healthy_agents, "health", "healthy"),
        ("Unhealthy", h.unhealthy_agents, "health", "unhealthy"),
    ];
    let body = html! {
        div #live data-live="5" {
            @if let Some(f) = &fleet {
                (regions::missing(&f.missing_regions, f.partial, "the region table leaves their agents out."))
                (regions::table(f, here))
                h2 #this-region { "This region: " (here) }
                p.hint { "The counts and lists below are this region's agents; their links open the agent list, which covers every region." }
            }
            section aria-label=(if fleet.is_some() { "This region's totals" } else { "Totals" }) {
                ul.tiles {
                    @for (name, n, key, value) in tiles {
                        li.tile {
                            a href=(href("/agents", &[(key, value)])) {
                                span.n data-total=(name.to_lowercase()) { (n) }
                                span.label { (name) }
                            }
                        }
                    }
                }
            }
            div.grid {
                section {
                    h2 { "Config state" }
                    table {
                        thead { tr { th scope="col" { "State" } th.num scope="col" { "Agents" } } }
                        tbody {
                            @for (state, n) in &o.config_states {
                                tr {
                                    td { a href=(href("/agents", &[("config", state)])) { (badge(state)) } }
                                    td.num data-config=(state) { (n) }
                                }
                            }
                        }
                    }
                }
                (groups("Agent version", VERSION_KEY, &o.versions))
                (groups("Region", REGION_KEY, &o.regions))
                (groups("Environment", ENVIRONMENT_KEY, &o.environments))
            }
            (attention("Unhealthy agents", "health", "unhealthy", h.unhealthy_agents, &o.unhealthy))
            (attention("Silent agents", "status", "silent", h.silent_agents, &o.silent))
            (attention("Failed configs", "config", "failed", o.config_states.get("failed").copied().unwrap_or(0), &o.failed_configs))
            (attention("Drifted configs", "drift", "true", o.drifted_agents, &o.drifted))
        }
        // Outside the live region (it is swapped every few seconds): filled as events arrive.
        section aria-label="Live events" {
            h2 { "Live events" }
            p.hint { "What happens from now on, newest first: agents connecting, going silent or unhealthy, applying configs; rollouts changing state." }
            ol #events.events data-events="/events" data-kinds=(event_kinds().join(",")) {}
        }
    };
    Ok(layout(&ctx, Section::Overview, "Fleet overview", body).into_response())
}

/// `/events`: the overview's live events, as Server-Sent Events (the console's session, not a
/// bearer token, authenticates it).
pub async fn events(State(c): State<Console>, Extension(ctx): Extension<Ctx>) -> PageResult {
    Ok(sse::events(
        c.ops.watch_events(&ctx.caller, None, None).await?,
    ))
}

fn groups(title: &str, key: &str, groups: &[Group]) -> Markup {
    html! {
        section {
            h2 { (title) }
            p.hint { code { (key) } }
            table {
                thead { tr { th scope="col" { "Value" } th.num scope="col" { "Agents" } } }
                tbody {
                    @for g in groups {
                        tr {
                            td {
                                @if g.value == "(none)" || g.value == "(other)" {
                                    (g.value)
                                } @else {
                                    a href=(href("/agents", &[("selector", &format!("{key}={}", g.value))])) { (g.value) }
                                }
                            }
                            td.num { (g.agents) }
                        }
                    }
                }
            }
        }
    }
}

fn attention(title: &str, key: &str, value: &str, total: u64, agents: &[AgentBrief]) -> Markup {
    html! {
        section {
            h2 { (title) " " span.muted { "(" (total) ")" } }
            @if agents.is_empty() {
                p.muted { "None." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Agent" } th scope="col" { "Name" } th scope="col" { "Last seen" } th scope="col" { "Detail" } } }
                    tbody {
                        @for a in agents {
                            tr {
                                td { a.mono href={ "/agents/" (seg(&a.instance_uid)) } { (a.instance_uid) } }
                                td { (a.name) }
                                td { time { (a.last_seen) } }
                                td { (a.detail) }
                            }
                        }
                    }
                }
                @if total > agents.len() as u64 {
                    p { a href=(href("/agents", &[(key, value)])) { "All " (count(total, "agent")) } }
                }
            }
        }
    }
}
