//! The OpAMP WebSocket message format: `varint header || protobuf`, with header 0 (one byte 0x00)
//! in this protocol version. Decoding also accepts the legacy headerless form, exactly as opamp-go's
//! decoder does: a protobuf message never starts with byte 0x00 (field number 0 is invalid), so a
//! first byte of 0x00 is the header and anything else is a whole protobuf message. A non-zero
//! header therefore reaches the protobuf decoder and is answered as a malformed message.

use prost::encoding::WireType;

/// Returns the protobuf payload of one binary WebSocket message.
pub fn decode_ws_frame(frame: &[u8]) -> &[u8] {
    match frame.first() {
        Some(0) => &frame[1..],
        _ => frame,
    }
}

/// The next field of a protobuf encoding, read in place: its number, wire type and contents (a
/// varint's bytes, a fixed value's, or a length-delimited field's without its length), with
/// `buf` moved past it. None at the end or at anything that does not parse (groups included).
/// One-byte varints (most keys and lengths) are read without prost's general decoder: walks
/// over agents' attributes call this for every attribute.
#[inline]
pub fn next_field<'a>(buf: &mut &'a [u8]) -> Option<(u32, WireType, &'a [u8])> {
    let key = varint(buf)?;
    let number = u32::try_from(key >> 3).ok()?;
    let wire = WireType::try_from(key & 7).ok()?;
    let contents = match wire {
        WireType::Varint => {
            let start = *buf;
            varint(buf)?;
            &start[..start.len() - buf.len()]
        }
        WireType::SixtyFourBit => take(buf, 8)?,
        WireType::ThirtyTwoBit => take(buf, 4)?,
        WireType::LengthDelimited => {
            let len = usize::try_from(varint(buf)?).ok()?;
            take(buf, len)?
        }
        WireType::StartGroup | WireType::EndGroup => return None,
    };
    Some((number, wire, contents))
}

/// The next `len` bytes of `buf`, `buf` moved past them.
fn take<'a>(buf: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    let taken = buf.get(..len)?;
    *buf = &buf[len..];
    Some(taken)
}

/// A varint, `buf` moved past it.
#[inline]
fn varint(buf: &mut &[u8]) -> Option<u64> {
    match buf.split_first() {
        Some((&b, rest)) if b < 0x80 => {
            *buf = rest;
            Some(u64::from(b))
        }
        Some(_) => prost::encoding::decode_varint(buf).ok(),
        None => None,
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
    fn fields_are_read_in_place_of_every_wire_type() {
        // 1: varint 300; 2: fixed64 7; 3: "hi"; 4: fixed32 9.
        let buf: &[u8] = &[
            0x08, 0xac, 0x02, 0x11, 7, 0, 0, 0, 0, 0, 0, 0, 0x1a, 2, b'h', b'i', 0x25, 9, 0, 0, 0,
        ];
        let mut rest = buf;
        let mut read = Vec::new();
        while let Some(field) = next_field(&mut rest) {
            read.push(field);
        }
        assert!(rest.is_empty());
        assert_eq!(
            read,
            [
                (1, WireType::Varint, &[0xac, 0x02][..]),
                (2, WireType::SixtyFourBit, &[7, 0, 0, 0, 0, 0, 0, 0][..]),
                (3, WireType::LengthDelimited, &b"hi"[..]),
                (4, WireType::ThirtyTwoBit, &[9, 0, 0, 0][..]),
            ]
        );
        assert_eq!(next_field(&mut &[0x1a, 5, b'h'][..]), None, "cut short");
        assert_eq!(next_field(&mut &[0x0b][..]), None, "a group");
    }

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
