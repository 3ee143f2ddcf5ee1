//! `herald serve` as operators run it, as a process: its log written to a file carries no terminal colour codes.

mod common;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{Herald, default_config};
use serde_json::json;

#[test]
fn log_written_to_a_file_has_no_terminal_colour_codes() {
    let mut config = default_config();
    config["log"] = json!({"level": "debug"});
    let herald = Herald::start(config);
    // Some traffic, so that the log has more than the start lines.
    assert_eq!(
        common::http_get_status(herald.port, "/health").unwrap(),
        200
    );
    let log = wait_for_log(&herald.log_path, |log| log.contains("INFO"));
    assert!(
        !log.contains("\x1b["),
        "the log is a file, not a terminal, yet it carries ANSI escape codes:\n{}",
        log.escape_debug()
    );
}

/// The log file's text once `ready` holds for it (or after a few seconds, as it is then).
fn wait_for_log(path: &Path, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = fs::read_to_string(path).unwrap_or_default();
        if ready(&log) || Instant::now() >= deadline {
            assert!(ready(&log), "the log never showed an INFO line:\n{log}");
            return log;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
