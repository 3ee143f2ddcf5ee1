//! Property tests of the protocol codecs (`herald::protocol::Encoding`).
//!
//! - Decoding never panics, whatever the bytes: random frames, and valid frames mutated by
//!   bit flips, truncations, insertions, deletions and splices.
//! - Whatever decodes re-encodes to something that decodes to the same messages.
//! - Valid batches round-trip exactly (encode, join, decode) in both encodings, with payload
//!   fields carrying arbitrary JSON values (JSON) or arbitrary bytes (Protobuf).
//!
//! Case counts are kept moderate so that the whole file runs in a few seconds; the fuzz
//! targets in `fuzz/` (see docs/fuzzing.md) explore the same properties for longer.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use herald::protocol::Encoding;
use herald::protocol::proto::*;
use proptest::collection::{hash_map, vec};
use proptest::option::weighted;
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------------------
// Strategies: scalars and payloads
// ---------------------------------------------------------------------------------------

/// Short strings over all of Unicode (quotes, backslashes, control characters, newlines
/// and astral characters included), so that JSON escaping is exercised.
fn text() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => "[a-z:#$0-9]{0,8}",
        2 => vec(any::<char>(), 0..8).prop_map(String::from_iter),
        1 => vec(prop::sample::select(vec!['"', '\\', '\n', '\r', '\u{0}', '\u{2028}', '/', 'é', '😀']), 0..6)
            .prop_map(String::from_iter),
    ]
}

fn small_map<V: Strategy + Clone>(
    value: V,
) -> impl Strategy<Value = HashMap<String, V::Value>> + Clone
where
    V::Value: Clone + std::fmt::Debug,
{
    hash_map(text(), value, 0..3)
}

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            hash_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Payloads (`data`, `conn_info`, `chan_info`): compact JSON text in JSON mode (the JSON
/// encoding embeds it raw), arbitrary bytes in Protobuf mode. Empty means absent in both.
type Payload = BoxedStrategy<Bytes>;

fn payload(enc: Encoding) -> Payload {
    if enc.is_json() {
        prop_oneof![
            1 => Just(Bytes::new()),
            4 => json_value().prop_map(|v| Bytes::from(serde_json::to_vec(&v).unwrap())),
        ]
        .boxed()
    } else {
        vec(any::<u8>(), 0..24).prop_map(Bytes::from).boxed()
    }
}

/// Optional sub-message, present one time in three.
fn opt<S: Strategy + 'static>(s: S) -> BoxedStrategy<Option<S::Value>> {
    weighted(0.35, s).boxed()
}

// ---------------------------------------------------------------------------------------
// Strategies: protocol messages
// ---------------------------------------------------------------------------------------

fn client_info(p: &Payload) -> impl Strategy<Value = ClientInfo> + Clone + use<> {
    (text(), text(), p.clone(), p.clone()).prop_map(|(user, client, conn_info, chan_info)| {
        ClientInfo {
            user,
            client,
            conn_info,
            chan_info,
        }
    })
}

fn publication(p: &Payload) -> impl Strategy<Value = Publication> + Clone + use<> {
    (
        p.clone(),
        opt(client_info(p)),
        any::<u64>(),
        small_map(text()),
        any::<bool>(),
        any::<i64>(),
        text(),
    )
        .prop_map(
            |(data, info, offset, tags, delta, time, channel)| Publication {
                data,
                info,
                offset,
                tags,
                delta,
                time,
                channel,
            },
        )
}

fn subscribe_request(p: &Payload) -> impl Strategy<Value = SubscribeRequest> + Clone + use<> {
    (
        (
            text(),
            text(),
            any::<bool>(),
            text(),
            any::<u64>(),
            p.clone(),
        ),
        (any::<bool>(), any::<bool>(), any::<bool>(), text()),
    )
        .prop_map(
            |(
                (channel, token, recover, epoch, offset, data),
                (positioned, recoverable, join_leave, delta),
            )| SubscribeRequest {
                channel,
                token,
                recover,
                epoch,
                offset,
                data,
                positioned,
                recoverable,
                join_leave,
                delta,
            },
        )
}

fn subscribe_result(p: &Payload) -> impl Strategy<Value = SubscribeResult> + Clone + use<> {
    (
        (any::<bool>(), any::<u32>(), any::<bool>(), text()),
        vec(publication(p), 0..3),
        (any::<bool>(), any::<u64>(), any::<bool>(), p.clone()),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (expires, ttl, recoverable, epoch),
                publications,
                (recovered, offset, positioned, data),
                (was_recovering, delta),
            )| SubscribeResult {
                expires,
                ttl,
                recoverable,
                epoch,
                publications,
                recovered,
                offset,
                positioned,
                data,
                was_recovering,
                delta,
            },
        )
}

fn connect_request(p: &Payload) -> impl Strategy<Value = ConnectRequest> + use<> {
    (
        text(),
        p.clone(),
        small_map(subscribe_request(p)),
        text(),
        text(),
        small_map(text()),
    )
        .prop_map(
            |(token, data, subs, name, version, headers)| ConnectRequest {
                token,
                data,
                subs,
                name,
                version,
                headers,
            },
        )
}

fn command(enc: Encoding) -> impl Strategy<Value = Command> {
    let p = payload(enc);
    (
        (
            any::<u32>(),
            opt(connect_request(&p)),
            opt(subscribe_request(&p)),
            opt(text().prop_map(|channel| UnsubscribeRequest { channel })),
            opt((text(), p.clone()).prop_map(|(channel, data)| PublishRequest { channel, data })),
            opt(text().prop_map(|channel| PresenceRequest { channel })),
            opt(text().prop_map(|channel| PresenceStatsRequest { channel })),
        ),
        (
            opt((
                text(),
                any::<i32>(),
                opt((any::<u64>(), text())
                    .prop_map(|(offset, epoch)| StreamPosition { offset, epoch })),
                any::<bool>(),
            )
                .prop_map(|(channel, limit, since, reverse)| HistoryRequest {
                    channel,
                    limit,
                    since,
                    reverse,
                })),
            opt(Just(PingRequest {})),
            opt(p.clone().prop_map(|data| SendRequest { data })),
            opt((p.clone(), text()).prop_map(|(data, method)| RpcRequest { data, method })),
            opt(text().prop_map(|token| RefreshRequest { token })),
            opt((text(), text()).prop_map(|(channel, token)| SubRefreshRequest { channel, token })),
        ),
    )
        .prop_map(
            |(
                (id, connect, subscribe, unsubscribe, publish, presence, presence_stats),
                (history, ping, send, rpc, refresh, sub_refresh),
            )| Command {
                id,
                connect,
                subscribe,
                unsubscribe,
                publish,
                presence,
                presence_stats,
                history,
                ping,
                send,
                rpc,
                refresh,
                sub_refresh,
            },
        )
}

fn push(p: &Payload) -> impl Strategy<Value = Push> + use<> {
    let connect = (
        (text(), text(), p.clone(), small_map(subscribe_result(p))),
        (any::<bool>(), any::<u32>(), any::<u32>(), any::<bool>()),
        (text(), text(), any::<i64>()),
    )
        .prop_map(
            |((client, version, data, subs), (expires, ttl, ping, pong), (session, node, time))| {
                Connect {
                    client,
                    version,
                    data,
                    subs,
                    expires,
                    ttl,
                    ping,
                    pong,
                    session,
                    node,
                    time,
                }
            },
        );
    let subscribe = (
        any::<bool>(),
        text(),
        any::<u64>(),
        any::<bool>(),
        p.clone(),
    )
        .prop_map(|(recoverable, epoch, offset, positioned, data)| Subscribe {
            recoverable,
            epoch,
            offset,
            positioned,
            data,
        });
    (
        text(),
        opt(publication(p)),
        opt(opt(client_info(p)).prop_map(|info| Join { info })),
        opt(opt(client_info(p)).prop_map(|info| Leave { info })),
        opt((any::<u32>(), text()).prop_map(|(code, reason)| Unsubscribe { code, reason })),
        opt(p.clone().prop_map(|data| Message { data })),
        opt(subscribe),
        opt(connect),
        opt((any::<u32>(), text()).prop_map(|(code, reason)| Disconnect { code, reason })),
        opt((any::<bool>(), any::<u32>()).prop_map(|(expires, ttl)| Refresh { expires, ttl })),
    )
        .prop_map(
            |(
                channel,
                r#pub,
                join,
                leave,
                unsubscribe,
                message,
                subscribe,
                connect,
                disconnect,
                refresh,
            )| {
                Push {
                    channel,
                    r#pub,
                    join,
                    leave,
                    unsubscribe,
                    message,
                    subscribe,
                    connect,
                    disconnect,
                    refresh,
                }
            },
        )
}

fn reply(enc: Encoding) -> impl Strategy<Value = Reply> {
    let p = payload(enc);
    let connect = (
        (text(), text(), any::<bool>(), any::<u32>(), p.clone()),
        (small_map(subscribe_result(&p)), any::<u32>(), any::<bool>()),
        (text(), text(), any::<i64>()),
    )
        .prop_map(
            |((client, version, expires, ttl, data), (subs, ping, pong), (session, node, time))| {
                ConnectResult {
                    client,
                    version,
                    expires,
                    ttl,
                    data,
                    subs,
                    ping,
                    pong,
                    session,
                    node,
                    time,
                }
            },
        );
    (
        (
            any::<u32>(),
            opt(
                (any::<u32>(), text(), any::<bool>()).prop_map(|(code, message, temporary)| {
                    Error {
                        code,
                        message,
                        temporary,
                    }
                }),
            ),
            opt(push(&p)),
            opt(connect),
            opt(subscribe_result(&p)),
            opt(Just(UnsubscribeResult {})),
            opt(Just(PublishResult {})),
        ),
        (
            opt(small_map(client_info(&p)).prop_map(|presence| PresenceResult { presence })),
            opt(
                (any::<u32>(), any::<u32>()).prop_map(|(num_clients, num_users)| {
                    PresenceStatsResult {
                        num_clients,
                        num_users,
                    }
                }),
            ),
            opt((vec(publication(&p), 0..3), text(), any::<u64>()).prop_map(
                |(publications, epoch, offset)| HistoryResult {
                    publications,
                    epoch,
                    offset,
                },
            )),
            opt(Just(PingResult {})),
            opt(p.clone().prop_map(|data| RpcResult { data })),
            opt((text(), text(), any::<bool>(), any::<u32>()).prop_map(
                |(client, version, expires, ttl)| RefreshResult {
                    client,
                    version,
                    expires,
                    ttl,
                },
            )),
            opt((any::<bool>(), any::<u32>())
                .prop_map(|(expires, ttl)| SubRefreshResult { expires, ttl })),
        ),
    )
        .prop_map(
            |(
                (id, error, push, connect, subscribe, unsubscribe, publish),
                (presence, presence_stats, history, ping, rpc, refresh, sub_refresh),
            )| Reply {
                id,
                error,
                push,
                connect,
                subscribe,
                unsubscribe,
                publish,
                presence,
                presence_stats,
                history,
                ping,
                rpc,
                refresh,
                sub_refresh,
            },
        )
}

// ---------------------------------------------------------------------------------------
// Frames and mutations
// ---------------------------------------------------------------------------------------

fn frame_of<M>(enc: Encoding, messages: &[M]) -> BytesMut
where
    M: prost::Message + serde::Serialize,
{
    let parts: Vec<Bytes> = messages.iter().map(|m| enc.encode(m)).collect();
    let mut frame = BytesMut::new();
    enc.join(&parts, &mut frame);
    frame
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Json), Just(Encoding::Protobuf)]
}

/// A valid frame of one to three commands or replies, in a random encoding.
fn valid_frame() -> impl Strategy<Value = (Encoding, Vec<u8>)> {
    encoding().prop_flat_map(|enc| {
        let frame = prop_oneof![
            vec(command(enc), 1..4).prop_map(move |m| frame_of(enc, &m).to_vec()),
            vec(reply(enc), 1..4).prop_map(move |m| frame_of(enc, &m).to_vec()),
        ];
        (Just(enc), frame)
    })
}

/// Bytes that matter to one of the decoders: JSON structure, line breaks, varint
/// continuation bits, wire types.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        prop::sample::select(
            b"{}[]\":,\\\n\r 0-eE.tfnu\x00\x01\x02\x05\x08\x0a\x12\x22\x7f\x80\xff".to_vec()
        ),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// Replace everything after a point of this frame with the tail of another frame.
    Splice(Index, Vec<u8>, Index),
    /// Copy a slice of the frame elsewhere in it (duplicates fields or whole messages).
    Duplicate(Index, usize, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), vec(interesting_byte(), 1..6)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), valid_frame(), any::<Index>())
            .prop_map(|(i, (_, other), j)| Mutation::Splice(i, other, j)),
        1 => (any::<Index>(), 1usize..16, any::<Index>())
            .prop_map(|(i, n, j)| Mutation::Duplicate(i, n, j)),
    ]
}

fn apply(frame: &mut Vec<u8>, mutation: &Mutation) {
    // Positions are drawn over len + 1 so that "at the end" is possible too.
    let pos = |i: &Index, len: usize| i.index(len + 1);
    let len = frame.len();
    match mutation {
        Mutation::FlipBit(i, bit) if len > 0 => frame[i.index(len)] ^= 1 << bit,
        Mutation::SetByte(i, b) if len > 0 => frame[i.index(len)] = *b,
        Mutation::FlipBit(..) | Mutation::SetByte(..) => {}
        Mutation::Truncate(i) => frame.truncate(pos(i, len)),
        Mutation::Insert(i, bytes) => {
            let at = pos(i, len);
            frame.splice(at..at, bytes.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let at = pos(i, len);
            frame.drain(at..(at + n).min(len));
        }
        Mutation::Splice(i, other, j) => {
            frame.truncate(pos(i, len));
            frame.extend_from_slice(&other[pos(j, other.len())..]);
        }
        Mutation::Duplicate(i, n, j) => {
            let from = pos(i, len);
            let chunk = frame[from..(from + n).min(len)].to_vec();
            let at = pos(j, len);
            frame.splice(at..at, chunk);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// Whether `a` and `b` are the same messages: equal, or (JSON) equal as JSON values, since
/// the JSON encoder turns line breaks in raw JSON data, which can only be whitespace there,
/// into spaces so that a message stays on one line.
fn same_messages<M>(enc: Encoding, a: &[M], b: &[M]) -> bool
where
    M: prost::Message + serde::Serialize + PartialEq,
{
    if a == b {
        return true;
    }
    let values = |m: &[M]| -> Option<Vec<serde_json::Value>> {
        m.iter()
            .map(|m| serde_json::from_slice(&enc.encode(m)).ok())
            .collect()
    };
    enc == Encoding::Json && a.len() == b.len() && values(a).is_some_and(|v| Some(v) == values(b))
}

/// Decodes `frame` as commands and as replies. Must not panic; whatever decodes must
/// re-encode (message by message, joined) into a frame that decodes to the same messages
/// (see [`same_messages`]).
fn check_decode(enc: Encoding, frame: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(commands) = enc.decode::<Command>(frame, usize::MAX) {
        let again: Vec<Command> = enc
            .decode(&frame_of(enc, &commands), usize::MAX)
            .map_err(|e| TestCaseError::fail(format!("re-encoded commands do not decode: {e}")))?;
        prop_assert!(
            same_messages(enc, &again, &commands),
            "{again:?} != {commands:?}"
        );
    }
    if let Ok(replies) = enc.decode::<Reply>(frame, usize::MAX) {
        let again: Vec<Reply> = enc
            .decode(&frame_of(enc, &replies), usize::MAX)
            .map_err(|e| TestCaseError::fail(format!("re-encoded replies do not decode: {e}")))?;
        prop_assert!(
            same_messages(enc, &again, &replies),
            "{again:?} != {replies:?}"
        );
    }
    Ok(())
}

fn check_round_trip<M>(enc: Encoding, messages: &[M]) -> Result<(), TestCaseError>
where
    M: prost::Message
        + Default
        + serde::Serialize
        + serde::de::DeserializeOwned
        + PartialEq
        + std::fmt::Debug,
{
    let frame = frame_of(enc, messages);
    let back: Vec<M> = enc
        .decode(&frame, usize::MAX)
        .map_err(|e| TestCaseError::fail(format!("{enc:?} batch does not decode: {e}")))?;
    prop_assert_eq!(back.as_slice(), messages, "{:?} frame {:?}", enc, frame);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn json_command_batches_round_trip(messages in vec(command(Encoding::Json), 1..5)) {
        check_round_trip(Encoding::Json, &messages)?;
    }

    #[test]
    fn json_reply_batches_round_trip(messages in vec(reply(Encoding::Json), 1..5)) {
        check_round_trip(Encoding::Json, &messages)?;
    }

    #[test]
    fn protobuf_command_batches_round_trip(messages in vec(command(Encoding::Protobuf), 1..5)) {
        check_round_trip(Encoding::Protobuf, &messages)?;
    }

    #[test]
    fn protobuf_reply_batches_round_trip(messages in vec(reply(Encoding::Protobuf), 1..5)) {
        check_round_trip(Encoding::Protobuf, &messages)?;
    }

    /// A publication's payload survives a batch byte for byte in either encoding.
    #[test]
    fn publication_payloads_round_trip(
        (enc, datas) in encoding().prop_flat_map(|enc| (Just(enc), vec(payload(enc), 1..6)))
    ) {
        let replies: Vec<Reply> = datas
            .iter()
            .enumerate()
            .map(|(i, data)| Reply {
                push: Some(Push {
                    channel: "chat:room".into(),
                    r#pub: Some(Publication {
                        data: data.clone(),
                        offset: i as u64 + 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        check_round_trip(enc, &replies)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn random_bytes_never_panic(enc in encoding(), frame in vec(any::<u8>(), 0..96)) {
        check_decode(enc, &frame)?;
    }

    /// Random bytes drawn from the characters JSON and varints care about, which reach
    /// deeper into the decoders than uniform bytes.
    #[test]
    fn structured_noise_never_panics(enc in encoding(), frame in vec(interesting_byte(), 0..96)) {
        check_decode(enc, &frame)?;
    }

    #[test]
    fn mutated_frames_never_panic(
        (enc, frame) in valid_frame(),
        mutations in vec(mutation(), 1..4),
    ) {
        let mut frame = frame;
        for m in &mutations {
            apply(&mut frame, m);
        }
        check_decode(enc, &frame)?;
        // The same bytes through the other decoder too.
        let other = if enc == Encoding::Json { Encoding::Protobuf } else { Encoding::Json };
        check_decode(other, &frame)?;
    }
}

/// Frames that once looked risky, pinned: empty lines, CRLF, zero-length Protobuf messages,
/// length prefixes past the end, oversized varints.
#[test]
fn edge_frames() {
    let json = Encoding::Json;
    assert_eq!(json.decode::<Command>(b"", usize::MAX).unwrap(), vec![]);
    assert_eq!(
        json.decode::<Command>(b"\n\n\r\n", usize::MAX).unwrap(),
        vec![]
    );
    assert_eq!(
        json.decode::<Command>(b"{}\r\n{\"id\":2}\r\n", usize::MAX)
            .unwrap(),
        vec![
            Command::default(),
            Command {
                id: 2,
                ..Default::default()
            }
        ]
    );
    assert!(json.decode::<Command>(b"{\"id\":-1}", usize::MAX).is_err());
    assert!(
        json.decode::<Command>(b"{\"id\":4294967296}", usize::MAX)
            .is_err()
    );

    let pb = Encoding::Protobuf;
    assert_eq!(
        pb.decode::<Reply>(&[0, 0], usize::MAX).unwrap(),
        vec![Reply::default(); 2]
    );
    assert!(
        pb.decode::<Reply>(&[5, 8], usize::MAX).is_err(),
        "prefix past the end"
    );
    assert!(
        pb.decode::<Reply>(&[0xff; 11], usize::MAX).is_err(),
        "varint longer than 10 bytes"
    );
    assert!(
        pb.decode::<Reply>(
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            usize::MAX
        )
        .is_err(),
        "u64::MAX length"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A payload is JSON text from outside (the server API keeps a publish body's `data` as
    /// written, pretty-printed or not). Its whitespace may hold line breaks, which must not
    /// split the message's line: each message stays one message and its data the same JSON
    /// value (the encoder turns line breaks between tokens into spaces).
    #[test]
    fn multi_line_json_payloads_keep_framing(values in vec(json_value(), 1..4)) {
        let replies: Vec<Reply> = values
            .iter()
            .map(|v| Reply {
                push: Some(Push {
                    r#pub: Some(Publication {
                        data: Bytes::from(serde_json::to_vec_pretty(v).unwrap()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let frame = frame_of(Encoding::Json, &replies);
        let back: Vec<Reply> = Encoding::Json
            .decode(&frame, usize::MAX)
            .map_err(|e| TestCaseError::fail(format!("frame {frame:?} does not decode: {e}")))?;
        prop_assert_eq!(back.len(), values.len());
        for (reply, value) in back.iter().zip(&values) {
            let data = &reply.push.as_ref().unwrap().r#pub.as_ref().unwrap().data;
            let decoded: serde_json::Value = serde_json::from_slice(data).unwrap();
            // Parse the published text the same way: float digits survive as written.
            let published: serde_json::Value =
                serde_json::from_slice(&serde_json::to_vec_pretty(value).unwrap()).unwrap();
            prop_assert_eq!(&decoded, &published);
        }
    }
}
