//! A short, seeded, stable-toolchain run of the fuzz targets' code paths (fuzz/fuzz_targets): the
//! committed seeds plus mutations of them (bit flips, truncations, insertions) through the
//! WebSocket frame and OpAMP state machine, the HTTP body decoder, agents' own-metrics exports
//! (gateway and rollup) and the CSR signer. No input may panic. The coverage-guided runs are
//! `cargo +nightly fuzz run <target>` (docs/security.md).

use bytes::Bytes;
use flotilla_common::codec::decode_ws_frame;
use flotilla_common::pki::Ca;
use flotilla_coordinator::fleet::configs::Desired;
use flotilla_coordinator::fleet::own_metrics::fold;
use flotilla_coordinator::opamp::{Ctx, process};
use flotilla_gateway::decode_body;
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::bus::{AgentRecord, Origin};
use flotilla_proto::opamp::AgentToServer;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Duration;

const ROUNDS: usize = 4000;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out.sort();
    out
}

fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..4) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !v.is_empty() => v.truncate(rng.random_range(0..v.len())),
            2 => {
                let i = rng.random_range(0..=v.len());
                v.insert(i, rng.random());
            }
            _ => {
                let i = rng.random_range(0..=v.len());
                let byte = [0x00, 0xff, 0x80, 0x0a, 0x12][rng.random_range(0..5)];
                v.splice(i..i, std::iter::repeat_n(byte, rng.random_range(1..16)));
            }
        }
    }
    v
}

fn run(target: &str, extra: Vec<Vec<u8>>, mut f: impl FnMut(&[u8])) {
    let mut corpus = seeds(target);
    corpus.extend(extra);
    let mut rng = StdRng::seed_from_u64(0xf10_7111a);
    for input in &corpus {
        f(input);
    }
    for _ in 0..ROUNDS {
        let base = &corpus[rng.random_range(0..corpus.len())];
        f(&mutate(&mut rng, base));
    }
}

#[test]
fn websocket_messages_never_panic_the_state_machine() {
    let desired = Desired::default();
    // Two regions, this one eu: agents naming us are sent there.
    let regions = flotilla_common::config::RegionSettings {
        fleet: vec!["eu".into(), "us".into()],
        endpoints: [("us".to_owned(), "ws://127.0.0.1:1/v1/opamp".to_owned())].into(),
        ..Default::default()
    };
    let ctx = Ctx {
        now_unix_ms: 1_700_000_000_000,
        heartbeat_interval: Duration::from_secs(30),
        desired: &desired,
        limits: &flotilla_common::config::RecordLimits::default(),
        hold_restart: false,
        agent_metrics: &flotilla_common::config::AgentMetricsOffer::Gateway,
        region: "eu",
        regions: &regions,
        server_ca_pem: None,
        // Room for some configs and not for others: both ways of a reply are taken.
        may_offer_config: &|_, hash| hash.first().is_none_or(|b| b % 2 == 0),
        heartbeats_answered_through: None,
    };
    let mut agent = SimAgent::new("otelcol", &[("env", "prod"), ("cloud.region", "us")]);
    let real = [0u8]
        .into_iter()
        .chain(agent.full_report().encode_to_vec())
        .collect();
    let mut decoded = 0;
    run("ws_message", vec![real], |data| {
        let Ok(msg) = AgentToServer::decode(decode_ws_frame(data)) else {
            return;
        };
        decoded += 1;
        let first = process(None, msg.clone(), Origin::default(), &ctx);
        let known = AgentRecord {
            instance_uid: msg.instance_uid.clone(),
            ..first.record.unwrap_or_default()
        };
        let _ = process(Some(known), msg, Origin::default(), &ctx);
    });
    assert!(
        decoded > 100,
        "the mutations must reach the state machine ({decoded})"
    );
}

#[test]
fn http_bodies_never_panic_the_decoder() {
    const MAX: usize = 64 * 1024;
    let mut bomb = vec![1u8];
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &vec![0u8; 1 << 20]).unwrap();
    bomb.extend(enc.finish().unwrap());
    let mut too_large = 0;
    run("http_body", vec![bomb], |data| {
        let Some((&flag, body)) = data.split_first() else {
            return;
        };
        match decode_body(Bytes::copy_from_slice(body), flag & 1 == 1, MAX) {
            Ok(plain) => {
                assert!(plain.len() <= MAX);
                let _ = AgentToServer::decode(plain);
            }
            Err(flotilla_gateway::BodyError::TooLarge) => too_large += 1,
            Err(_) => {}
        }
    });
    assert!(too_large > 0, "the bomb is stopped at the limit");
}

#[test]
fn own_metrics_exports_never_panic_the_gateway_or_the_rollup() {
    let mut kept = 0;
    run("otlp_metrics", vec![], |data| {
        let Ok(export) = flotilla_gateway::otlp::samples_of(
            &Bytes::copy_from_slice(data),
            None,
            1_700_000_000_000,
        ) else {
            return;
        };
        for mut s in export.samples {
            let mut rollup = None;
            fold(&mut rollup, &s);
            s.at_unix_ms += 10_000;
            assert!(fold(&mut rollup, &s));
            kept += 1;
        }
    });
    assert!(kept > 0, "some exports are kept");
}

#[test]
fn csrs_never_panic_the_signer() {
    let ca = Ca::generate("smoke CA").unwrap();
    let mut signed = 0;
    run("csr", vec![], |data| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if ca
            .sign_csr(text, uuid::Uuid::nil(), Duration::from_secs(60))
            .is_ok()
        {
            signed += 1;
        }
    });
    assert!(signed >= 1, "the seed CSR is signed");
}
