//! The lanes that send the agents' own-metrics exports ([`super::own_metrics`]): each sends the
//! exports of its share of the agents in their turn, one at a time, until the run ends.

use super::collector_metrics::Collector;
use super::own_metrics::{FAILING_EVERY, IDLE, LANES, unix_ns};
use super::shared::Shared;
use crate::client::HttpClient;
use anyhow::Context;
use prost::Message;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::task::JoinSet;

/// Starts the lanes (when the run sends own metrics); they end with the run.
pub(super) fn spawn(shared: &Arc<Shared>) -> anyhow::Result<JoinSet<()>> {
    let mut set = JoinSet::new();
    let (cfg, Some(own)) = (&shared.cfg, &shared.own_metrics) else {
        return Ok(set);
    };
    let lanes = LANES.min(cfg.agents).max(1);
    let t0 = Instant::now();
    for lane in 0..lanes {
        let opts = match cfg.source_ips {
            0 => cfg.connect.clone(),
            n => cfg.connect.clone().from_source(IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (lane % n as usize) as u8,
            ))),
        };
        let first = own.urls.first().context("no OpAMP URL")?;
        let client = HttpClient::with_idle_limit(first, &opts, IDLE)
            .context("the own-metrics HTTP client")?;
        set.spawn(run_lane(shared.clone(), client, (lane, lanes, t0)));
    }
    Ok(set)
}

/// Lane `lane` of `lanes` sends the exports of agents lane, lane + lanes, ... in their turn, one
/// at a time, each round of them starting `interval` after the last.
async fn run_lane(
    shared: Arc<Shared>,
    client: HttpClient,
    (lane, lanes, t0): (usize, usize, Instant),
) {
    let (cfg, Some(own)) = (&shared.cfg, &shared.own_metrics) else {
        return;
    };
    let agents = cfg.agents;
    for round in 0u32.. {
        let Some(start) = t0.checked_add(own.interval.saturating_mul(round)) else {
            return;
        };
        for i in (lane..agents).step_by(lanes) {
            let Some(at) = start.checked_add(own.interval.mul_f64(i as f64 / agents as f64)) else {
                return;
            };
            tokio::select! {
                () = shared.stop.cancelled() => return,
                () = tokio::time::sleep_until(at.into()) => {}
            }
            let Some(slot) = own.slot(i).map(|s| *s) else {
                return;
            };
            let (Some(uid), Some(url)) = (slot.uid, own.urls.get(slot.url)) else {
                continue;
            };
            let collector = Collector {
                uid,
                service: &cfg.profile.service,
                version: cfg
                    .profile
                    .version
                    .values()
                    .get(slot.version)
                    .map_or("", String::as_str),
                started_ns: slot.started_ns,
                failing: i % FAILING_EVERY == 0,
            };
            let (export, points) = collector.export(unix_ns());
            let body = export.encode_to_vec();
            let bytes = body.len() as u64;
            let t = Instant::now();
            let post = client.post_to(url, body, "application/x-protobuf");
            let answer = tokio::select! {
                () = shared.stop.cancelled() => return,
                r = tokio::time::timeout(cfg.reply_timeout, post) => r,
            };
            own.bytes.fetch_add(bytes, Ordering::Relaxed);
            own.points.fetch_add(points as u64, Ordering::Relaxed);
            own.note(answer, t.elapsed());
        }
    }
}
