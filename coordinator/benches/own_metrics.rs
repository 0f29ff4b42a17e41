//! What an owner spends on one agent's own-metrics sample and what the rollup costs each record:
//! folding a collector-like sample (3 receivers, 3 exporters) into a rollup that already holds an
//! hour of minutes, and the rollup's encoded size in the record after an hour of exports every
//! 10 s (typical) and at its bounds (16 receivers, 16 exporters). The baseline in the same run is
//! encoding the agent record (with an 8 KB effective config) without the rollup, which every record
//! write pays anyway.
//!
//!     cargo bench -p flotilla-coordinator --bench own_metrics

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flotilla_coordinator::fleet::own_metrics::fold;
use flotilla_proto::bus::{AgentRecord, ComponentSample, OwnMetricsSample};
use flotilla_proto::opamp::{AgentConfigFile, AgentConfigMap, EffectiveConfig};
use prost::Message;
use std::hint::black_box;

const T0: u64 = 1_800_000_000_000;

fn components(prefix: &str, n: usize, t: f64) -> Vec<ComponentSample> {
    (0..n)
        .map(|i| ComponentSample {
            name: format!("{prefix}/{i}"),
            ok_total: 1000.0 * t,
            bad_total: t,
            queue_size: Some(10.0),
            queue_capacity: Some(1000.0),
        })
        .collect()
}

fn sample(i: u64, width: usize) -> OwnMetricsSample {
    let t = i as f64;
    OwnMetricsSample {
        instance_uid: vec![1; 16],
        at_unix_ms: T0 + i * 10_000,
        cpu_seconds: Some(0.4 * 10.0 * t),
        memory_bytes: Some(2.1e8),
        receivers: components("otlp", width, t),
        exporters: components("otlphttp", width, t),
        dropped_points: 30,
        origin: None,
    }
}

/// A rollup after an hour of exports every 10 s, in a record that holds an 8 KB effective config.
fn hour(width: usize) -> AgentRecord {
    let file = AgentConfigFile {
        body: vec![b'x'; 8 * 1024].into(),
        content_type: "text/yaml".into(),
    };
    let mut rec = AgentRecord {
        instance_uid: vec![1; 16],
        effective_config: Some(Box::new(EffectiveConfig {
            config_map: Some(AgentConfigMap {
                config_map: [(String::new(), file)].into(),
            }),
        })),
        ..Default::default()
    };
    for i in 0..360 {
        fold(&mut rec.own_metrics, &sample(i, width));
    }
    rec
}

fn bench(c: &mut Criterion) {
    for width in [3, 16] {
        let rec = hour(width);
        eprintln!(
            "rollup after an hour, {width} receivers and {width} exporters: {} bytes encoded",
            rec.own_metrics.as_ref().unwrap().encoded_len()
        );
    }
    let mut g = c.benchmark_group("own_metrics_sample");
    g.throughput(Throughput::Elements(1));
    let full = hour(3);
    let mut i = 360;
    g.bench_function("fold into an hour's rollup", |b| {
        let mut rec = full.clone();
        b.iter(|| {
            i += 1;
            fold(black_box(&mut rec.own_metrics), &sample(i, 3))
        })
    });
    let bare = AgentRecord {
        own_metrics: None,
        ..full.clone()
    };
    g.bench_function("encode the record without it (baseline)", |b| {
        b.iter(|| black_box(&bare).encode_to_vec())
    });
    g.bench_function("encode the record with it", |b| {
        b.iter(|| black_box(&full).encode_to_vec())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
