//! Replays inputs through the fuzz checks on stable Rust, with no libFuzzer: `cargo test`
//! in `fuzz/`. Per target: `seeds/` (committed valid frames, the fuzzers' starting corpus),
//! `regressions/` (committed inputs that once crashed a target), and, when present, the
//! local `artifacts/` (crashes of a fuzz run, until fixed) and `corpus/`.

use std::fs;
use std::path::Path;

use herald::protocol::{Command, Encoding, Reply};

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| (e.path().display().to_string(), fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

fn replay(target: &str, encoding: Encoding) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = inputs(&root.join("seeds").join(target));
    assert!(!seeds.is_empty(), "no seeds for {target}");
    for (name, frame) in &seeds {
        let decodes =
            encoding.decode::<Command>(frame, usize::MAX).is_ok() || encoding.decode::<Reply>(frame, usize::MAX).is_ok();
        assert!(decodes, "seed {name} is not a valid {encoding:?} frame");
        herald_fuzz::check(encoding, frame);
    }
    for dir in ["regressions", "artifacts", "corpus"] {
        for (name, frame) in inputs(&root.join(dir).join(target)) {
            eprintln!("replaying {name}");
            herald_fuzz::check(encoding, &frame);
        }
    }
}

#[test]
fn decode_json_inputs() {
    replay("decode_json", Encoding::Json);
}

#[test]
fn decode_protobuf_inputs() {
    replay("decode_protobuf", Encoding::Protobuf);
}
