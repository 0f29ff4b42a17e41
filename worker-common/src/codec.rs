//! The OpAMP WebSocket message format: `varint header || protobuf`, with header 0 (one byte 0x00)
//! in this protocol version. Decoding also accepts the legacy headerless form, exactly as opamp-go's
//! decoder does: a protobuf message never starts with byte 0x00 (field number 0 is invalid), so a
//! first byte of 0x00 is the header and anything else is a whole protobuf message. A non-zero
//! header therefore reaches the protobuf decoder and is answered as a malformed message.

/// Returns the protobuf payload of one binary WebSocket message.
pub fn decode_ws_frame(frame: &[u8]) -> &[u8] {
    match frame.first() {
        Some(0) => &frame[1..],
        _ => frame,
    }
}

/// Prepends the 0x00 header to an encoded ServerToAgent.
pub fn encode_ws_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 1);
    out.push(0);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_zero_header() {
        assert_eq!(decode_ws_frame(&[0, 0x0a, 0x01, 0xff]), &[0x0a, 0x01, 0xff]);
        assert_eq!(decode_ws_frame(&[0]), &[] as &[u8]);
    }

    #[test]
    fn accepts_headerless_frames() {
        let proto = [0x0a, 0x02, 0x01, 0x02];
        assert_eq!(decode_ws_frame(&proto), &proto);
        assert_eq!(decode_ws_frame(&[]), &[] as &[u8]);
    }

    #[test]
    fn encode_prepends_header() {
        assert_eq!(encode_ws_frame(&[1, 2]), vec![0, 1, 2]);
    }
}
