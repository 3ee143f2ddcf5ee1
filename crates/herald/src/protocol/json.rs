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

/// Decodes every non-empty line of a frame; a line nested deeper than `max_depth` is
/// refused (see [`check_depth`]).
pub fn decode_all<M: DeserializeOwned>(
    frame: &[u8],
    max_depth: usize,
) -> Result<Vec<M>, DecodeError> {
    let mut out = Vec::new();
    for line in frame.split(|b| *b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        out.push(from_slice(line, max_depth)?);
    }
    Ok(out)
}

/// Parses one JSON document, refusing one nested deeper than `max_depth`.
pub fn from_slice<M: DeserializeOwned>(json: &[u8], max_depth: usize) -> Result<M, DecodeError> {
    check_depth(json, max_depth)?;
    Ok(serde_json::from_slice(json)?)
}

/// Refuses JSON whose objects and arrays nest deeper than `max_depth`.
///
/// serde_json bounds the recursion of typed decoding, but payloads are kept as raw JSON
/// (`RawValue`), which it skips over at any depth: without this check a million-level
/// document would be accepted and handed to every subscriber, whose parsers (Python's
/// stops near 1000) would fail on it. One pass over the bytes, no allocation; brackets
/// inside strings do not count. Malformed JSON is left for the parser to report.
pub fn check_depth(json: &[u8], max_depth: usize) -> Result<(), DecodeError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(DecodeError::TooDeep { max_depth });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_is_bounded_outside_strings_only() {
        assert!(check_depth(nested(3).as_bytes(), 3).is_ok());
        assert!(matches!(
            check_depth(nested(4).as_bytes(), 3),
            Err(DecodeError::TooDeep { max_depth: 3 })
        ));
        assert!(check_depth(br#"{"a":[1,{"b":2}],"c":{"d":[]}}"#, 3).is_ok());
        assert!(check_depth(br#"{"a":"[[[[[[{{{{{"}"#, 1).is_ok());
        assert!(check_depth(br#"{"a":"\"[[[[[[\\"}"#, 1).is_ok());
        assert!(check_depth(br#"{"a":"\\"}[[["#, 2).is_err());
    }

    #[test]
    fn a_million_levels_are_refused_with_a_clear_error() {
        let deep = format!(
            r#"{{"method":"publish","params":{{"data":{}}}}}"#,
            nested(1_000_000)
        );
        let err = decode_all::<serde_json::Value>(deep.as_bytes(), 512).unwrap_err();
        assert!(err.to_string().contains("512"), "{err}");
        let ok = format!(r#"{{"data":{}}}"#, nested(100));
        assert!(from_slice::<serde_json::Value>(ok.as_bytes(), 512).is_ok());
    }
}
