//! Any bytes as a Protobuf frame (varint-length-prefixed commands or replies).
#![no_main]

use herald::protocol::Encoding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| herald_fuzz::check(Encoding::Protobuf, frame));
