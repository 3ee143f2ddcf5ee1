//! The JSON encoding: one message per line; `bytes` payload fields are raw JSON.

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::DecodeError;

/// serde helper used by the generated types: fields equal to their default are omitted,
/// as the SDKs expect (`{}` is a ping, an absent `error` means success). The exceptions,
/// always written, are the fields Centrifugo's protocol declares without `omitempty`
/// (`num_clients`, `num_users`, `presence`, `publications`, `epoch`, `offset` of the
/// history result, `user` and `client` of a client info): see `ALWAYS_PRESENT_FIELDS`
/// in `build.rs`.
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Decodes every non-empty line of a frame.
pub fn decode_all<M: DeserializeOwned>(frame: &[u8]) -> Result<Vec<M>, DecodeError> {
    let mut out = Vec::new();
    for line in frame.split(|b| *b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        out.push(serde_json::from_slice(line)?);
    }
    Ok(out)
}

/// Encodes one message as a single JSON line without the trailing newline.
pub fn encode<M: serde::Serialize>(message: &M) -> Bytes {
    // Serialising our own types to a Vec cannot fail: no maps with non-string keys, no
    // fallible custom serializers (raw payloads fall back to a string).
    Bytes::from(serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()))
}

/// serde adapter for payload fields: raw JSON text in, raw JSON text out.
pub mod raw {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    /// Embeds the payload as JSON. A payload that is not JSON (binary data published by a
    /// Protobuf client) is written as a JSON string so the line stays valid.
    ///
    /// Line breaks in valid JSON can only be whitespace between tokens (inside strings they
    /// are escaped), so they are turned into spaces: one message must stay one line.
    pub fn serialize<S: Serializer>(data: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        let Ok(text) = std::str::from_utf8(data) else {
            return serializer.serialize_str(&String::from_utf8_lossy(data));
        };
        let one_line;
        let text = if text.contains(['\n', '\r']) {
            one_line = text.replace(['\n', '\r'], " ");
            one_line.as_str()
        } else {
            text
        };
        match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => serializer.serialize_str(text),
        }
    }

    /// Keeps the JSON text of the field as the payload bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Bytes::copy_from_slice(raw.get().as_bytes()))
    }
}
