//! The checks the fuzz targets run, shared with the stable replay test (`cargo test` here).
//!
//! For one frame in one encoding: decoding it as commands and as replies never panics, and
//! whatever decodes re-encodes (message by message, joined into one frame) into bytes that
//! decode to the same messages.

#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};
use herald::protocol::{Command, Encoding, Reply};

/// Runs every check on `frame`; panics (which the fuzzer reports) when one fails.
pub fn check(encoding: Encoding, frame: &[u8]) {
    round_trip::<Command>(encoding, frame);
    round_trip::<Reply>(encoding, frame);
}

fn round_trip<M>(encoding: Encoding, frame: &[u8])
where
    M: prost::Message
        + Default
        + serde::Serialize
        + serde::de::DeserializeOwned
        + PartialEq
        + std::fmt::Debug,
{
    let Ok(messages) = encoding.decode::<M>(frame, usize::MAX) else {
        return;
    };
    let parts: Vec<Bytes> = messages.iter().map(|m| encoding.encode(m)).collect();
    let mut again = BytesMut::new();
    encoding.join(&parts, &mut again);
    match encoding.decode::<M>(&again, usize::MAX) {
        Ok(back) => assert!(
            back == messages,
            "{encoding:?}: re-encoded {} decodes to {back:?}, not {messages:?}",
            String::from_utf8_lossy(&again)
        ),
        Err(e) => panic!(
            "{encoding:?}: {messages:?} decoded but its re-encoding {} does not: {e}",
            String::from_utf8_lossy(&again)
        ),
    }
}
