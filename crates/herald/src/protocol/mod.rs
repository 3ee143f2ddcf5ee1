//! The Centrifugo client protocol v2: wire types and their two encodings. Pure code, no I/O.
//!
//! The types in [`proto`] are generated from `proto/client.proto` (our own description of the
//! public specification). A frame may carry several messages: newline-delimited in JSON,
//! varint-length-prefixed in Protobuf. [`Encoding`] turns frames into messages and back.

pub mod json;
pub mod protobuf;

use bytes::{BufMut, Bytes, BytesMut};

/// Generated wire types of the client protocol.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/herald.client.rs"));
}

pub use proto::{Command, Reply};

/// How a connection encodes its messages; chosen once per connection.
///
/// The bidirectional encodings carry [`Reply`] messages; the unidirectional ones carry bare
/// [`proto::Push`] messages (the connect result becomes a `connect` push, a ping an empty
/// push), as Centrifugo's unidirectional protocol does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Newline-delimited JSON with application data embedded as raw JSON.
    Json,
    /// Varint-length-prefixed Protobuf (WebSocket subprotocol `centrifuge-protobuf`).
    Protobuf,
    /// Unidirectional JSON: one Push object per message.
    UniJson,
    /// Unidirectional Protobuf: one Push message per message (uni gRPC).
    UniProtobuf,
}

/// Number of [`Encoding`] variants: the size of per-encoding caches.
pub const ENCODINGS: usize = 4;

impl Encoding {
    /// Index into per-encoding arrays.
    pub fn index(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::Protobuf => 1,
            Encoding::UniJson => 2,
            Encoding::UniProtobuf => 3,
        }
    }

    /// Whether messages are JSON text.
    pub fn is_json(self) -> bool {
        matches!(self, Encoding::Json | Encoding::UniJson)
    }

    /// Whether messages are bare pushes (unidirectional transports).
    pub fn is_unidirectional(self) -> bool {
        matches!(self, Encoding::UniJson | Encoding::UniProtobuf)
    }

    /// Encodes a reply for this connection: as is for bidirectional encodings; as the
    /// equivalent push for unidirectional ones, or `None` when a push cannot carry it
    /// (a command error: unidirectional clients send no commands but the first).
    pub fn encode_reply(self, reply: &Reply) -> Option<Bytes> {
        if !self.is_unidirectional() {
            return Some(self.encode(reply));
        }
        let push = if let Some(push) = &reply.push {
            push.clone()
        } else if let Some(c) = &reply.connect {
            proto::Push {
                connect: Some(proto::Connect {
                    client: c.client.clone(),
                    version: c.version.clone(),
                    data: c.data.clone(),
                    subs: c.subs.clone(),
                    expires: c.expires,
                    ttl: c.ttl,
                    ping: c.ping,
                    pong: c.pong,
                    session: c.session.clone(),
                    node: c.node.clone(),
                    time: c.time,
                }),
                ..Default::default()
            }
        } else if *reply == Reply::default() {
            proto::Push::default()
        } else {
            return None;
        };
        Some(self.encode(&push))
    }

    /// Decodes every message in one frame; JSON nested deeper than `max_json_depth` is
    /// refused.
    pub fn decode<M>(self, frame: &[u8], max_json_depth: usize) -> Result<Vec<M>, DecodeError>
    where
        M: prost::Message + Default + serde::de::DeserializeOwned,
    {
        if self.is_json() {
            json::decode_all(frame, max_json_depth)
        } else {
            protobuf::decode_all(frame)
        }
    }

    /// Encodes one message as a unit that [`Encoding::join`] can batch into a frame:
    /// JSON without the newline, Protobuf with its length prefix.
    pub fn encode<M>(self, message: &M) -> Bytes
    where
        M: prost::Message + serde::Serialize,
    {
        if self.is_json() {
            json::encode(message)
        } else {
            protobuf::encode_delimited(message)
        }
    }

    /// Appends several encoded messages to one frame, in order.
    pub fn join<'a>(self, parts: impl IntoIterator<Item = &'a Bytes>, out: &mut BytesMut) {
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 && self.is_json() {
                out.put_u8(b'\n');
            }
            out.extend_from_slice(part);
        }
    }
}

/// A frame that is not a valid batch of protocol messages.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A line that is not a JSON protocol message.
    #[error("malformed JSON message: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON whose objects and arrays nest deeper than the configured bound.
    #[error("JSON nested deeper than {max_depth} levels")]
    TooDeep {
        /// The bound (`client.max_json_depth` or `http_api.max_json_depth`).
        max_depth: usize,
    },
    /// Bytes that are not a length-prefixed Protobuf message.
    #[error("malformed Protobuf message: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A length prefix that runs past the end of the frame.
    #[error("truncated Protobuf frame: message of {declared} bytes, {available} available")]
    Truncated {
        /// Length the prefix announced.
        declared: u64,
        /// Bytes left in the frame.
        available: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::proto::*;
    use super::*;

    fn sample_reply() -> Reply {
        Reply {
            push: Some(Push {
                channel: "chat:room".into(),
                r#pub: Some(Publication {
                    data: Bytes::from_static(br#"{"text":"hi"}"#),
                    offset: 7,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn json_reply_embeds_data_and_skips_defaults() {
        let bytes = Encoding::Json.encode(&sample_reply());
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"push":{"channel":"chat:room","pub":{"data":{"text":"hi"},"offset":7}}}"#
        );
        assert_eq!(&Encoding::Json.encode(&Reply::default())[..], b"{}");
    }

    fn json(message: &(impl prost::Message + serde::Serialize)) -> String {
        String::from_utf8(Encoding::Json.encode(message).to_vec()).unwrap()
    }

    #[test]
    fn json_always_writes_the_fields_centrifugo_never_omits() {
        // Fields without `omitempty` in Centrifugo's protocol: present even when zero or
        // empty, because the SDKs read them as they are (numClients must be 0, not undefined).
        let stats = Reply {
            id: 3,
            presence_stats: Some(PresenceStatsResult::default()),
            ..Default::default()
        };
        assert_eq!(
            json(&stats),
            r#"{"id":3,"presence_stats":{"num_clients":0,"num_users":0}}"#
        );
        let presence = Reply {
            id: 4,
            presence: Some(PresenceResult::default()),
            ..Default::default()
        };
        assert_eq!(json(&presence), r#"{"id":4,"presence":{"presence":{}}}"#);
        assert_eq!(
            json(&HistoryResult::default()),
            r#"{"publications":[],"epoch":"","offset":0}"#
        );
        assert_eq!(json(&ClientInfo::default()), r#"{"user":"","client":""}"#);
        // An anonymous client in presence: user "" is written, empty infos are not.
        let mut present = PresenceResult::default();
        present.presence.insert(
            "c1".into(),
            ClientInfo {
                client: "c1".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            json(&present),
            r#"{"presence":{"c1":{"user":"","client":"c1"}}}"#
        );
        // A publication's info carries them too; other defaults stay omitted.
        let publication = Publication {
            data: Bytes::from_static(b"1"),
            info: Some(ClientInfo::default()),
            ..Default::default()
        };
        assert_eq!(
            json(&publication),
            r#"{"data":1,"info":{"user":"","client":""}}"#
        );
        // Everything else is still omitted when default.
        assert_eq!(json(&Reply::default()), "{}");
        assert_eq!(json(&Push::default()), "{}");
        assert_eq!(json(&ConnectResult::default()), "{}");
        assert_eq!(json(&SubscribeResult::default()), "{}");
        assert_eq!(json(&Error::default()), "{}");

        // And the JSON decodes back to the same values.
        let back: Vec<Reply> = Encoding::Json.decode(json(&stats).as_bytes(), 512).unwrap();
        assert_eq!(back, vec![stats]);
    }

    #[test]
    fn protobuf_encoding_still_omits_zero_fields() {
        // proto3: zero scalars and empty collections take no bytes, whatever the JSON does.
        assert_eq!(
            &Encoding::Protobuf.encode(&PresenceStatsResult::default())[..],
            &[0]
        );
        assert_eq!(
            &Encoding::Protobuf.encode(&HistoryResult::default())[..],
            &[0]
        );
        assert_eq!(&Encoding::Protobuf.encode(&ClientInfo::default())[..], &[0]);
        let stats = Reply {
            id: 3,
            presence_stats: Some(PresenceStatsResult::default()),
            ..Default::default()
        };
        let bytes = Encoding::Protobuf.encode(&stats);
        let back: Vec<Reply> = Encoding::Protobuf.decode(&bytes, 512).unwrap();
        assert_eq!(back, vec![stats]);
    }

    #[test]
    fn both_encodings_round_trip_a_batch() {
        for enc in [Encoding::Json, Encoding::Protobuf] {
            let parts = vec![enc.encode(&sample_reply()), enc.encode(&Reply::default())];
            let mut frame = BytesMut::new();
            enc.join(&parts, &mut frame);
            let back: Vec<Reply> = enc.decode(&frame, 512).unwrap();
            assert_eq!(back, vec![sample_reply(), Reply::default()], "{enc:?}");
        }
    }

    #[test]
    fn unidirectional_encodings_carry_bare_pushes() {
        let reply = sample_reply();
        let uni = Encoding::UniJson.encode_reply(&reply).unwrap();
        assert!(
            std::str::from_utf8(&uni)
                .unwrap()
                .starts_with(r#"{"channel":"chat:room","pub":"#)
        );
        let connect = Reply {
            id: 1,
            connect: Some(proto::ConnectResult {
                client: "c".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            &Encoding::UniJson.encode_reply(&connect).unwrap()[..],
            br#"{"connect":{"client":"c"}}"#
        );
        assert_eq!(
            &Encoding::UniJson.encode_reply(&Reply::default()).unwrap()[..],
            b"{}"
        );
        let error = Reply {
            id: 2,
            error: Some(proto::Error::default()),
            ..Default::default()
        };
        assert!(Encoding::UniProtobuf.encode_reply(&error).is_none());
    }

    #[test]
    fn json_commands_as_the_sdk_sends_them() {
        let frame = br#"{"id":1,"connect":{"token":"t","name":"js"}}
{"id":2,"subscribe":{"channel":"news","recover":true,"offset":3,"epoch":"e"}}
{}"#;
        let cmds: Vec<Command> = Encoding::Json.decode(frame, 512).unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0].connect.as_ref().unwrap().token, "t");
        let sub = cmds[1].subscribe.as_ref().unwrap();
        assert!(sub.recover && sub.offset == 3 && sub.epoch == "e");
        assert_eq!(cmds[2], Command::default());
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(Encoding::Json.decode::<Command>(b"not json", 512).is_err());
        assert!(
            Encoding::Protobuf
                .decode::<Command>(&[0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01], 512)
                .is_err()
        );
    }
}
