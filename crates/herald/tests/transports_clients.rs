//! The test clients' own wire readers (tests/support/streams.rs) against the texts of the
//! specifications, so that a transport test failing means the server, not the reader: the
//! SSE parser (HTML living standard, "Parsing an event stream"), the newline-delimited
//! reader and the varint-length-prefixed reader, each fed whole and split at every byte.

mod support;

use prost::Message as _;
use support::streams::{DelimitedReader, Event, LineReader, SseEvent, SseParser, push_from_json};

fn sse_all(input: &[u8]) -> Vec<SseEvent> {
    SseParser::new().feed(input)
}

/// The same events whether the input comes whole, byte by byte, or split at any point.
fn sse_any_split(input: &[u8]) -> Vec<SseEvent> {
    let whole = sse_all(input);
    let mut p = SseParser::new();
    let bytewise: Vec<SseEvent> = input.iter().flat_map(|b| p.feed(&[*b])).collect();
    assert_eq!(bytewise, whole, "byte by byte");
    for cut in 0..=input.len() {
        let mut p = SseParser::new();
        let mut got = p.feed(&input[..cut]);
        got.extend(p.feed(&input[cut..]));
        assert_eq!(got, whole, "split at {cut}");
    }
    whole
}

fn ev(id: &str, event: &str, data: &str) -> SseEvent {
    SseEvent {
        id: id.into(),
        event: event.into(),
        data: data.into(),
    }
}

#[test]
fn sse_fields_comments_and_dispatch() {
    let input =
        b": a comment\n\ndata: one\n\nid: 7\nevent: ping\ndata\n\ndata:  two spaces\ndata:x\n\n";
    assert_eq!(
        sse_any_split(input),
        vec![
            ev("", "message", "one"),
            ev("7", "ping", ""),
            ev("7", "message", " two spaces\nx"),
        ]
    );
    let mut p = SseParser::new();
    p.feed(b": c1\n:c2\nretry: 1500\nretry: x\n\n");
    assert_eq!((p.comments, p.retry), (2, Some(1500)));
}

#[test]
fn sse_line_endings_crlf_cr_lf_mixed() {
    let lf = sse_any_split(b"id: a\ndata: 1\ndata: 2\n\n");
    let crlf = sse_any_split(b"id: a\r\ndata: 1\r\ndata: 2\r\n\r\n");
    let cr = sse_any_split(b"id: a\rdata: 1\rdata: 2\r\r");
    let mixed = sse_any_split(b"id: a\r\ndata: 1\rdata: 2\n\r\n");
    let want = vec![ev("a", "message", "1\n2")];
    assert_eq!((lf, crlf, cr), (want.clone(), want.clone(), want.clone()));
    assert_eq!(mixed, want);
}

#[test]
fn sse_ids_persist_reset_and_reject_nul() {
    let got = sse_any_split(b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: x\0y\ndata: d\n\n");
    let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["1", "1", "", ""],
        "kept, kept, reset by an empty id, NUL ignored"
    );
    // An id with no data updates the last event id without dispatching.
    let mut p = SseParser::new();
    assert!(p.feed(b"id: 42\n\n").is_empty());
    assert_eq!(p.last_event_id(), "42");
}

#[test]
fn sse_bom_blank_preamble_and_unfinished_event() {
    // Centrifugo starts its SSE responses with a bare CRLF.
    assert_eq!(
        sse_any_split(b"\xEF\xBB\xBFdata: x\n\n\r\n\r\ndata: y\n\n"),
        vec![ev("", "message", "x"), ev("", "message", "y")]
    );
    // No blank line yet: nothing dispatched.
    assert!(sse_all(b"data: pending\n").is_empty());
    // A field name without a colon, unknown fields: ignored.
    assert_eq!(
        sse_all(b"foo: bar\nbaz\ndata: z\n\n"),
        vec![ev("", "message", "z")]
    );
}

#[test]
fn line_reader_splits_lines_across_chunks() {
    let input = b"{\"a\":1}\r\n\n{\"b\":2}\n  \n{\"c\":";
    let mut whole = LineReader::default();
    let got = whole.feed(input);
    assert_eq!(got, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
    assert_eq!(whole.pending(), 5);
    for cut in 0..=input.len() {
        let mut r = LineReader::default();
        let mut parts = r.feed(&input[..cut]);
        parts.extend(r.feed(&input[cut..]));
        assert_eq!(parts, got, "split at {cut}");
    }
}

#[test]
fn delimited_reader_handles_multibyte_lengths_and_empty_messages() {
    let big = herald::protocol::proto::Push {
        channel: "c".repeat(300),
        ..Default::default()
    };
    let mut input = big.encode_length_delimited_to_vec();
    assert!(input[0] & 0x80 != 0, "a two-byte length prefix");
    input.push(0); // an empty message (a ping)
    input.extend(big.encode_length_delimited_to_vec());
    let mut whole = DelimitedReader::default();
    let got = whole.feed(&input).unwrap();
    assert_eq!(got.len(), 3);
    assert!(got[1].is_empty());
    for cut in 0..=input.len() {
        let mut r = DelimitedReader::default();
        let mut parts = r.feed(&input[..cut]).unwrap();
        parts.extend(r.feed(&input[cut..]).unwrap());
        assert_eq!(parts, got, "split at {cut}");
    }
    assert!(DelimitedReader::default().feed(&[0xff; 11]).is_err());
}

#[test]
fn json_pushes_normalize() {
    let v = serde_json::json!({"channel": "c", "pub": {"data": {"x": 1}, "offset": 5}});
    let Event::Pub(p) = push_from_json(&v).unwrap() else {
        panic!("a publication")
    };
    assert_eq!(
        (p.channel.as_str(), p.offset, p.data),
        ("c", 5, serde_json::json!({"x": 1}))
    );
    assert_eq!(push_from_json(&serde_json::json!({})).unwrap(), Event::Ping);
    assert!(push_from_json(&serde_json::json!({"channel": "c", "pub": {"offset": "5"}})).is_err());
}
