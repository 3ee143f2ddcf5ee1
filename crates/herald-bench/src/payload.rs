//! The publication payload: a small JSON object that carries its own identity and send time,
//! so that every receiver can compute latency and detect loss without any other channel:
//!
//! ```text
//! {"k":"<channel>:<publisher>:<seq>:<t_ns>","x":"<padding>"}
//! ```
//!
//! `t_ns` is nanoseconds since the Unix epoch (the clock every process on the machine
//! shares), taken just before the publish request is written. Both servers embed a JSON
//! payload verbatim in every encoding (raw JSON in the JSON protocol, the same bytes in a
//! Protobuf `bytes` field, inside SSE `data:` lines), so a receiver finds the stamp by
//! scanning the bytes it read for [`MARKER`], whatever the transport: no decoding in the hot
//! path.

use std::time::{SystemTime, UNIX_EPOCH};

/// What every payload starts with; it appears nowhere else in the protocol.
pub const MARKER: &[u8] = b"{\"k\":\"";

/// The identity and send time of one publication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the channel (the scenario's numbering).
    pub channel: u32,
    /// Index of the publisher task: sequence numbers are per (channel, publisher).
    pub publisher: u32,
    /// Sequence number of this publication for (channel, publisher), from 0.
    pub seq: u64,
    /// Send time, nanoseconds since the Unix epoch.
    pub t_ns: u64,
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The smallest payload there is (a stamp and no padding) for `stamp`.
pub fn min_len(stamp: &Stamp) -> usize {
    let mut v = Vec::new();
    write(&mut v, stamp, 0);
    v.len()
}

/// Appends the payload of `stamp`, padded with `x` characters to `size` bytes when `size` is
/// larger than the stamp alone (with its `,"x":""` field); otherwise as small as it gets.
pub fn write(out: &mut Vec<u8>, stamp: &Stamp, size: usize) {
    use std::io::Write;
    let start = out.len();
    let _ = write!(
        out,
        "{{\"k\":\"{}:{}:{}:{}\"",
        stamp.channel, stamp.publisher, stamp.seq, stamp.t_ns
    );
    let head = out.len() - start;
    // `,"x":""` and the closing brace.
    const PAD_FRAME: usize = 7;
    if size > head + PAD_FRAME {
        out.extend_from_slice(b",\"x\":\"");
        out.resize(start + size - 2, b'x');
        out.extend_from_slice(b"\"}");
    } else {
        out.push(b'}');
    }
}

/// Parses the stamp that starts right after a [`MARKER`]: `c:p:s:t"`.
fn parse_after_marker(bytes: &[u8]) -> Option<Stamp> {
    let mut fields = [0u64; 4];
    let mut i = 0;
    let mut field = 0;
    let mut digits = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'0'..=b'9' => {
                fields[field] = fields[field]
                    .checked_mul(10)?
                    .checked_add(u64::from(b - b'0'))?;
                digits += 1;
            }
            b':' if field < 3 && digits > 0 => {
                field += 1;
                digits = 0;
            }
            b'"' if field == 3 && digits > 0 => {
                return Some(Stamp {
                    channel: u32::try_from(fields[0]).ok()?,
                    publisher: u32::try_from(fields[1]).ok()?,
                    seq: fields[2],
                    t_ns: fields[3],
                });
            }
            _ => return None,
        }
        i += 1;
    }
    None
}

/// Calls `f` with every stamp found in `bytes`, in order. Returns how many were found.
pub fn scan(bytes: &[u8], mut f: impl FnMut(Stamp)) -> usize {
    let finder = memchr::memmem::Finder::new(MARKER);
    let mut n = 0;
    for at in finder.find_iter(bytes) {
        if let Some(stamp) = parse_after_marker(&bytes[at + MARKER.len()..]) {
            f(stamp);
            n += 1;
        }
    }
    n
}

/// Whether `bytes` holds at least one stamp marker.
pub fn has_marker(bytes: &[u8]) -> bool {
    memchr::memmem::find(bytes, MARKER).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(seq: u64) -> Stamp {
        Stamp {
            channel: 3,
            publisher: 1,
            seq,
            t_ns: 1_764_000_000_123_456_789,
        }
    }

    #[test]
    fn payload_is_valid_json_of_the_requested_size() {
        for size in [0, 32, 48, 100, 1024, 65536] {
            let mut v = Vec::new();
            write(&mut v, &stamp(42), size);
            let parsed: serde_json::Value = serde_json::from_slice(&v).expect("JSON");
            assert_eq!(parsed["k"], "3:1:42:1764000000123456789");
            if size > min_len(&stamp(42)) + 7 {
                assert_eq!(v.len(), size, "size {size}");
            } else {
                assert!(v.len() <= 64, "a small payload stays small: {}", v.len());
            }
        }
    }

    #[test]
    fn scan_finds_stamps_in_every_framing() {
        let mut a = Vec::new();
        write(&mut a, &stamp(1), 80);
        let mut b = Vec::new();
        write(&mut b, &stamp(2), 0);
        let a = String::from_utf8(a).unwrap();
        let b = String::from_utf8(b).unwrap();
        // Bidirectional JSON batch, SSE events, and raw bytes inside Protobuf.
        let frames = [
            format!(
                "{{\"push\":{{\"channel\":\"x\",\"pub\":{{\"data\":{a},\"offset\":7}}}}}}\n{{\"push\":{{\"channel\":\"x\",\"pub\":{{\"data\":{b},\"offset\":8}}}}}}"
            ),
            format!(
                "id: 7:e:x\ndata: {{\"channel\":\"x\",\"pub\":{{\"data\":{a}}}}}\n\ndata: {{\"pub\":{{\"data\":{b}}}}}\n\n"
            ),
            format!("\u{1}\u{2}\u{3}{a}\u{12}\u{7f}{b}\u{0}"),
        ];
        for f in frames {
            let mut got = Vec::new();
            assert_eq!(scan(f.as_bytes(), |s| got.push(s.seq)), 2, "{f}");
            assert_eq!(got, vec![1, 2]);
        }
        assert_eq!(scan(b"{\"k\":\"1:2:x\"}", |_| {}), 0);
        assert_eq!(scan(b"{\"k\":\"1:2:3", |_| {}), 0, "truncated");
        assert!(!has_marker(b"{}"));
    }
}
