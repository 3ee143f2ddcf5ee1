//! The Protobuf encoding: each message is prefixed by its length as a varint.

use bytes::{Bytes, BytesMut};
use prost::Message;

use super::DecodeError;

/// Decodes every length-prefixed message of a frame; a zero length is an empty message.
pub fn decode_all<M: Message + Default>(frame: &[u8]) -> Result<Vec<M>, DecodeError> {
    let mut rest = frame;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let declared = prost::encoding::decode_varint(&mut rest)?;
        if declared > rest.len() as u64 {
            return Err(DecodeError::Truncated {
                declared,
                available: rest.len(),
            });
        }
        let (body, tail) = rest.split_at(declared as usize);
        out.push(M::decode(body)?);
        rest = tail;
    }
    Ok(out)
}

/// Encodes one message with its length prefix.
pub fn encode_delimited<M: Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(len + prost::length_delimiter_len(len));
    prost::encoding::encode_varint(len as u64, &mut buf);
    // Cannot fail: the buffer was sized for the message.
    let _ = message.encode(&mut buf);
    buf.freeze()
}
