//! An agent's own-metrics export (OTLP/HTTP protobuf body): what the gateway keeps of it, and the
//! owner folding each sample into a rollup twice (rates between two samples).
#![no_main]

use flotilla_coordinator::fleet::own_metrics::fold;
use flotilla_gateway::otlp::samples_of;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(export) = samples_of(&bytes::Bytes::copy_from_slice(data), None, 1_700_000_000_000) else {
        return;
    };
    for mut s in export.samples {
        let mut rollup = None;
        fold(&mut rollup, &s);
        s.at_unix_ms += 10_000;
        fold(&mut rollup, &s);
    }
});
