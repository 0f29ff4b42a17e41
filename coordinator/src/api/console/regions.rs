//! What the pages show of a fleet over several regions (`--regions`): which region holds an
//! agent or an audit entry, each region's counts, and a warning when a region did not answer.
//! A single-region fleet shows none of it, so its pages read as they always have.

use super::render::count;
use crate::ops::views::{AgentSummary, FleetHealth};
use maud::{Markup, html};

/// A warning that the page leaves out the regions that did not answer in time, and what that
/// means for it (`consequence`). Nothing when every region answered.
pub fn missing(missing: &[String], partial: bool, consequence: &str) -> Markup {
    html! {
        @if partial || !missing.is_empty() {
            p.notice.warn #missing-regions data-missing=(missing.join(",")) {
                strong {
                    @if missing.is_empty() { "Some regions are not answering" }
                    @else { "Regions not answering: " (missing.join(", ")) }
                }
                " — " (consequence)
            }
        }
    }
}

/// The region an agent is in, marked when it roams (served away from its home region) or was
/// sent home (offered its home region's endpoint).
pub fn agent_region(a: &AgentSummary) -> Markup {
    html! {
        (a.region)
        @if a.roaming {
            " " span.badge.warn data-roaming title={ "Roaming: its home region is " (a.home_region.as_deref().unwrap_or("another")) } { "roaming" }
        }
        @if let Some(to) = &a.redirected_to {
            " " span.badge.muted data-sent-home title={ "Sent home to " (to) } { "sent home" }
        }
    }
}

/// An agent's region facts, for its page's `dl.facts`: its region only in a fleet of several
/// (`multi`); its home, roaming and where it was sent whenever they are known.
pub fn agent_facts(a: &AgentSummary, multi: bool) -> Markup {
    html! {
        @if multi { dt { "Region" } dd #region { (a.region) } }
        @if let Some(home) = &a.home_region { dt { "Home region" } dd #home-region { (home) } }
        @if a.roaming {
            dt { "Roaming" }
            dd #roaming { span.badge.warn { "roaming" } " served here, away from its home region" }
        }
        @if let Some(to) = &a.redirected_to {
            dt { "Sent home to" } dd #sent-home .mono { (to) }
        }
    }
}

/// Each region's counts (`h.regions`), the regions that did not answer among them, and the sum
/// of those that did. `here` is this process's region.
pub fn table(h: &FleetHealth, here: &str) -> Markup {
    let cells = |r: &FleetHealth| {
        html! {
            td.num { (r.total_agents) }
            td.num { (r.connected_agents) }
            td.num { (r.healthy_agents) }
            td.num { (r.unhealthy_agents) }
            td.num { (r.silent_agents) }
            td.num { (r.disconnected_agents) }
        }
    };
    html! {
        section #regions aria-labelledby="regions-title" {
            h2 #regions-title { "Regions" }
            p.hint { (count(h.regions.len() as u64, "region")) " answering; the agent list and agent pages cover all of them." }
            table {
                thead {
                    tr {
                        th scope="col" { "Region" }
                        @for name in ["Agents", "Connected", "Healthy", "Unhealthy", "Silent", "Disconnected"] {
                            th.num scope="col" { (name) }
                        }
                    }
                }
                tbody {
                    @for (name, r) in &h.regions {
                        tr data-region=(name) {
                            th scope="row" { (name) @if name == here { " " span.muted { "(this region)" } } }
                            (cells(r))
                        }
                    }
                    @for name in h.missing_regions.iter().filter(|m| !h.regions.contains_key(*m)) {
                        tr.warn data-region=(name) data-missing {
                            th scope="row" { (name) }
                            td colspan="6" { "not answering: its agents are not counted" }
                        }
                    }
                }
                tfoot {
                    tr data-region="" {
                        th scope="row" { "All answering" }
                        (cells(h))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::bus::AgentRecord;

    fn summary(region: &str, home: Option<&str>, sent: Option<&str>) -> AgentSummary {
        let rec = AgentRecord {
            home_region: home.unwrap_or_default().to_owned(),
            redirected_to: sent.unwrap_or_default().to_owned(),
            ..Default::default()
        };
        AgentSummary::of(&rec, &Default::default()).in_region(region)
    }

    #[test]
    fn a_missing_region_is_named_and_escaped_and_nothing_shows_without_one() {
        let html = missing(&["us".into(), "<ap>".into()], true, "lists leave them out.").0;
        assert!(html.contains(r#"class="notice warn""#), "{html}");
        assert!(
            html.contains("Regions not answering: us, &lt;ap&gt;"),
            "{html}"
        );
        assert!(html.contains("lists leave them out."), "{html}");
        assert!(
            missing(&[], true, "x")
                .0
                .contains("Some regions are not answering")
        );
        assert_eq!(missing(&[], false, "x").0, "");
    }

    #[test]
    fn a_roaming_agent_is_marked_with_its_home_and_a_sent_home_one_with_its_endpoint() {
        let roaming = agent_region(&summary("eu", Some("us"), None)).0;
        assert!(roaming.starts_with("eu "), "{roaming}");
        assert!(
            roaming.contains(r#"title="Roaming: its home region is us""#),
            "{roaming}"
        );
        assert!(!roaming.contains("sent home"), "{roaming}");
        let sent = agent_region(&summary(
            "eu",
            Some("us"),
            Some("wss://us.example/v1/opamp"),
        ))
        .0;
        assert!(!sent.contains("roaming"), "{sent}");
        assert!(
            sent.contains(r#"title="Sent home to wss://us.example/v1/opamp""#)
                && sent.contains(">sent home<"),
            "{sent}"
        );
        assert_eq!(agent_region(&summary("eu", Some("eu"), None)).0, "eu");

        let facts = agent_facts(&summary("eu", Some("us"), None), true).0;
        for shown in [
            "Region",
            "Home region",
            "<dd id=\"home-region\">us</dd>",
            "Roaming",
        ] {
            assert!(facts.contains(shown), "{shown}: {facts}");
        }
        let single = agent_facts(&summary("eu", None, None), false).0;
        assert_eq!(single, "", "a single-region fleet shows no region facts");
    }

    #[test]
    fn the_region_table_counts_each_region_and_names_the_missing_ones() {
        let eu = FleetHealth {
            total_agents: 3,
            connected_agents: 2,
            healthy_agents: 2,
            disconnected_agents: 1,
            ..Default::default()
        };
        let mut h = eu.clone();
        h.regions.insert("eu".into(), eu);
        h.missing_regions = vec!["us".into()];
        h.partial = true;
        let html = table(&h, "eu").0;
        assert!(html.contains(r#"<tr data-region="eu">"#), "{html}");
        assert!(html.contains("(this region)"), "{html}");
        assert!(
            html.contains(r#"data-region="us" data-missing"#) && html.contains("not answering"),
            "{html}"
        );
        assert!(html.contains(r#"<td class="num">3</td>"#), "{html}");
    }
}
