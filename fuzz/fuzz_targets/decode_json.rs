//! Any bytes as a JSON frame (newline-delimited commands or replies).
#![no_main]

use herald::protocol::Encoding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| herald_fuzz::check(Encoding::Json, frame));
