//! A plain-HTTP request body: the size limit, gunzip with the bomb guard, protobuf decoding.
//! The first byte picks whether the body is declared gzipped.
#![no_main]

use bytes::Bytes;
use flotilla_gateway::decode_body;
use flotilla_proto::opamp::AgentToServer;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, body)) = data.split_first() else {
        return;
    };
    if let Ok(plain) = decode_body(Bytes::copy_from_slice(body), flag & 1 == 1, MAX) {
        assert!(plain.len() <= MAX);
        let _ = AgentToServer::decode(plain);
    }
});
