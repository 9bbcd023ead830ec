//! The proxy-wasm header-map wire format, read in place: one host call returns every header, and the
//! request is decided on slices of that buffer with no per-header allocation.
//!
//! Layout: `u32 count`, then `count` pairs of `(u32 name_len, u32 value_len)`, then each name and value
//! followed by a NUL byte. All integers little-endian.

/// Borrows `(name, value)` pairs out of a serialized header map. A malformed buffer yields the pairs that
/// could be read (never a panic).
pub fn parse<'a>(buf: &'a [u8], out: &mut Vec<(&'a [u8], &'a [u8])>) {
    let Some(count) = read_u32(buf, 0) else {
        return;
    };
    let count = count as usize;
    let Some(mut data) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return;
    };
    for i in 0..count {
        let (Some(nl), Some(vl)) = (read_u32(buf, 4 + i * 8), read_u32(buf, 8 + i * 8)) else {
            return;
        };
        let (nl, vl) = (nl as usize, vl as usize);
        let Some(name) = buf.get(data..data + nl) else {
            return;
        };
        data += nl + 1;
        let Some(value) = buf.get(data..data + vl) else {
            return;
        };
        data += vl + 1;
        out.push((name, value));
    }
}

/// Serializes pairs into the same format (for the headers of a local reply).
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_binary_values() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/api"),
            (b"x-bin", &[0xff, 0x00, 0xfe]),
            (b"empty", b""),
        ];
        let buf = serialize(&pairs);
        let mut out = Vec::new();
        parse(&buf, &mut out);
        assert_eq!(out, pairs);
    }

    #[test]
    fn truncated_buffers_never_panic() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"bb", b"22")];
        let buf = serialize(&pairs);
        for cut in 0..buf.len() {
            let mut out = Vec::new();
            parse(&buf[..cut], &mut out);
            assert!(out.len() <= 2);
        }
        let mut out = Vec::new();
        parse(&[0xff, 0xff, 0xff, 0xff], &mut out);
        assert!(out.is_empty());
    }
}
