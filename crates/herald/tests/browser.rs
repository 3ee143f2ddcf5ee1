//! Herald in a real browser: headless Chromium (Debian's `/usr/bin/chromium`, driven by npm `playwright-core`)
//! loads a page on Herald's own origin and checks
//! 1. the browser's own `EventSource` on `/connection/uni_sse`, with no SDK: API publications arrive; after a
//!    server-forced disconnect (3011) the browser reconnects by itself with `Last-Event-ID` and gets the
//!    publications made while it was away, each exactly once, in order;
//! 2. the centrifuge JS SDK over WebSocket: connect, subscribe, API publication, publish from the page, presence;
//! 3. the centrifuge JS SDK over SSE emulation (`/connection/sse` + `/emulation`): the same, and recovery of the
//!    publications missed across a server-forced reconnect;
//! 4. a screenshot of the final page in `target/test-output/browser/final.png`;
//! 5. (a test of its own) a page of another origin, holding the user's cookie, refused on every transport.
//!
//! The checks live in `tests/browser/browser_e2e.cjs`; this test starts Herald, mints the tokens with
//! `herald gentoken` and runs the script with Node. It fails (never skips) when Chromium is missing: install it with
//! `apt-get install -y chromium chromium-driver` (`.ci/run` does). `HERALD_TEST_CHROMIUM` overrides the browser path.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Herald, default_config, herald_bin, repo_root, run_with_timeout};

/// The script stops itself after 90 s; this is the outer bound.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// A connection token for `user` whose `channels` claim subscribes it server-side to `channels` (what the
/// unidirectional transports need), made by `herald gentoken --user U --channel C --config FILE`.
fn token_with_channels(herald: &Herald, user: &str, channels: &[&str]) -> String {
    let mut cmd = Command::new(herald_bin());
    cmd.arg("gentoken").arg("--user").arg(user);
    for channel in channels {
        cmd.arg("--channel").arg(channel);
    }
    cmd.arg("--config").arg(&herald.config_path);
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    assert!(
        out.status.is_some_and(|s| s.success()),
        "herald gentoken --user {user} --channel {channels:?} failed ({:?}); stderr:\n{}",
        out.status,
        out.stderr
    );
    let token = out.stdout.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {:?}", out.stdout);
    token
}

#[test]
fn browser_eventsource_and_centrifuge_sdk_in_headless_chromium() {
    let root = repo_root();
    let script = root.join("tests").join("browser").join("browser_e2e.cjs");
    assert!(script.is_file(), "missing {}", script.display());

    let chromium = std::env::var_os("HERALD_TEST_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CHROMIUM));
    assert!(
        chromium.is_file(),
        "the browser test needs Chromium at {}: install it with `apt-get install -y chromium chromium-driver` \
         (.ci/run does), or point HERALD_TEST_CHROMIUM at a Chromium binary",
        chromium.display()
    );
    let js_dir = root.join("tests").join("js");
    for package in ["centrifuge", "playwright-core"] {
        let dir = js_dir.join("node_modules").join(package);
        assert!(
            dir.is_dir(),
            "the browser test needs its npm dependencies ({} is missing): run `npm ci --prefix tests/js` from the \
             repository root (or ./scripts/test, which does it)",
            dir.display()
        );
    }
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node_ok,
        "the browser test needs Node.js 20+ on PATH (`node --version` failed)"
    );

    let herald = Herald::start(default_config());
    let uni_channel = "chat:room";
    let uni_token = token_with_channels(&herald, "browser-uni", &[uni_channel]);
    let ws_token = herald.token("browser-ws");
    let sse_token = herald.token("browser-sse");
    let out_dir = root.join("target").join("test-output").join("browser");

    let mut cmd = Command::new("node");
    cmd.current_dir(&root)
        .arg(&script)
        .arg("--base")
        .arg(herald.base_url())
        .arg("--api-key")
        .arg(&herald.api_key)
        .arg("--uni-token")
        .arg(&uni_token)
        .arg("--uni-user")
        .arg("browser-uni")
        .arg("--uni-channel")
        .arg(uni_channel)
        .arg("--ws-token")
        .arg(&ws_token)
        .arg("--ws-user")
        .arg("browser-ws")
        .arg("--sse-token")
        .arg(&sse_token)
        .arg("--sse-user")
        .arg("browser-sse")
        .arg("--out-dir")
        .arg(&out_dir)
        .arg("--chromium")
        .arg(&chromium);
    let out = run_with_timeout(cmd, SCRIPT_TIMEOUT);
    out.assert_all_checks_passed("node tests/browser/browser_e2e.cjs");
}

/// A page of another origin, with the user's cookies, cannot open a WebSocket or an EventSource to Herald: Herald
/// authenticates by cookie (connect proxy) and the cross-origin attempts are refused before the cookie is used;
/// the same browser on Herald's own origin connects. The checks live in `tests/browser/cross_origin.cjs`.
#[test]
fn a_cross_origin_page_with_the_users_cookies_is_refused_in_chromium() {
    let root = repo_root();
    let chromium = std::env::var_os("HERALD_TEST_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CHROMIUM));
    assert!(
        chromium.is_file(),
        "needs Chromium at {}",
        chromium.display()
    );
    let backend_port = common::free_port();
    let mut config = default_config();
    config["client"]["proxy"] = serde_json::json!({"connect": {
        "enabled": true,
        "endpoint": format!("http://127.0.0.1:{backend_port}/connect"),
        "http_headers": ["Cookie"]
    }});
    // No list: same-origin pages only (the default).
    config["client"]["allowed_origins"] = serde_json::json!([]);
    let herald = Herald::start(config);
    let mut cmd = Command::new("node");
    cmd.current_dir(&root)
        .arg(root.join("tests").join("browser").join("cross_origin.cjs"))
        .arg("--base")
        .arg(herald.base_url())
        .arg("--backend-port")
        .arg(backend_port.to_string())
        .arg("--chromium")
        .arg(&chromium);
    let out = run_with_timeout(cmd, Duration::from_secs(90));
    out.assert_all_checks_passed("node tests/browser/cross_origin.cjs");
}
