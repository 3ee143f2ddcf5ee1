//! The chat demo and the web console in a real browser. Starts `herald serve --demo` with no config file (the way
//! the README's first command runs it; the console is turned on with `HERALD_ADMIN_*` variables, and an API key with
//! `HERALD_HTTP_API_KEY` so that the test can act as a backend), then runs `tests/browser/demo_e2e.cjs` in headless
//! Chromium (Debian's `/usr/bin/chromium`, driven by npm `playwright-core`):
//! 1. two chat pages (WebSocket at 1280x800, SSE at 390x844) join one room, see each other online and exchange
//!    messages;
//! 2. the server drops both (API disconnect, 3011) while a third client publishes; after they reconnect both pages
//!    show every message exactly once and say "recovered";
//! 3. the console logs in, shows the two connections, publishes from its form into the chat pages, and disconnects a
//!    user.
//!
//! Screenshots land in `target/test-output/browser/` (chat-1280x800.png, chat-390x844.png, console-1280x800.png,
//! console-390x844.png). Fails (never skips) when Chromium or the npm packages are missing: `.ci/run` installs them.
//! `HERALD_TEST_CHROMIUM` overrides the browser path.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{free_port, herald_bin, http_get_status, repo_root, run_with_timeout};

/// The script stops itself after 120 s; this is the outer bound.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
const API_KEY: &str = "demo-test-api-key";
const ADMIN_PASSWORD: &str = "demo-test-admin-password";

/// `herald serve --demo --port P` with extra environment, killed on drop (its log printed when the test panics).
struct DemoHerald {
    port: u16,
    log: PathBuf,
    dir: PathBuf,
    child: Child,
}

impl DemoHerald {
    fn start(demo: bool, env: &[(&str, &str)]) -> DemoHerald {
        let dir = std::env::temp_dir().join(format!(
            "herald-demo-test-{}-{}",
            std::process::id(),
            if demo { "demo" } else { "plain" }
        ));
        fs::create_dir_all(&dir).unwrap();
        let mut last = String::new();
        for attempt in 1..=3 {
            let port = free_port();
            let log = dir.join(format!("server-{port}-{attempt}.log"));
            let out = fs::File::create(&log).unwrap();
            let mut cmd = Command::new(herald_bin());
            cmd.arg("serve")
                .arg("--address")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(port.to_string());
            if demo {
                cmd.arg("--demo");
            }
            // No config file, and nothing from the caller's environment that would change that.
            for (k, _) in std::env::vars() {
                if k.starts_with("HERALD_") && k != "HERALD_TEST_BIN" && k != "HERALD_TEST_CHROMIUM"
                {
                    cmd.env_remove(k);
                }
            }
            cmd.envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::from(out.try_clone().unwrap()))
                .stderr(Stdio::from(out));
            let child = cmd.spawn().expect("spawn herald");
            let mut h = DemoHerald {
                port,
                log,
                dir: dir.clone(),
                child,
            };
            let deadline = Instant::now() + HEALTH_TIMEOUT;
            loop {
                if let Ok(Some(status)) = h.child.try_wait() {
                    last = format!("exited at start ({status}): {}", h.log_text());
                    break;
                }
                if let Ok(200) = http_get_status(port, "/health") {
                    return h;
                }
                if Instant::now() >= deadline {
                    last = format!(
                        "no 200 from /health in {HEALTH_TIMEOUT:?}: {}",
                        h.log_text()
                    );
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("herald serve --demo did not start: {last}");
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DemoHerald {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- herald log ---\n{}\n--- end ---", self.log_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// `method path` with an optional JSON body over plain HTTP/1.1; the status code.
fn http_status(port: u16, method: &str, path: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap();
    String::from_utf8_lossy(&head[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn check_browser_prerequisites(root: &Path) -> PathBuf {
    let chromium = std::env::var_os("HERALD_TEST_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CHROMIUM));
    assert!(
        chromium.is_file(),
        "the demo browser test needs Chromium at {}: install it with `apt-get install -y chromium chromium-driver` \
         (.ci/run does), or point HERALD_TEST_CHROMIUM at a Chromium binary",
        chromium.display()
    );
    let dir = root.join("tests/js/node_modules/playwright-core");
    assert!(
        dir.is_dir(),
        "the demo browser test needs playwright-core ({} is missing): run `npm ci --prefix tests/js` (or \
         ./scripts/test, which does it)",
        dir.display()
    );
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(node_ok, "the demo browser test needs Node.js 20+ on PATH");
    chromium
}

#[test]
fn chat_demo_and_console_in_headless_chromium() {
    let root = repo_root();
    let script = root.join("tests/browser/demo_e2e.cjs");
    assert!(script.is_file(), "missing {}", script.display());
    let chromium = check_browser_prerequisites(&root);

    let herald = DemoHerald::start(
        true,
        &[
            ("HERALD_HTTP_API_KEY", API_KEY),
            ("HERALD_ADMIN_ENABLED", "true"),
            ("HERALD_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    );
    let log = herald.log_text();
    assert!(
        log.contains(&format!("open http://127.0.0.1:{}/", herald.port)),
        "herald serve --demo must say which page to open; log:\n{log}"
    );
    let out_dir = root.join("target/test-output/browser");

    let mut cmd = Command::new("node");
    cmd.current_dir(&root)
        .arg(&script)
        .arg("--base")
        .arg(herald.base_url())
        .arg("--api-key")
        .arg(API_KEY)
        .arg("--admin-password")
        .arg(ADMIN_PASSWORD)
        .arg("--out-dir")
        .arg(&out_dir)
        .arg("--chromium")
        .arg(&chromium);
    let out = run_with_timeout(cmd, SCRIPT_TIMEOUT);
    out.assert_all_checks_passed("node tests/browser/demo_e2e.cjs");
}

/// Without `--demo` and without `admin.enabled`, none of the pages or their endpoints exist.
#[test]
fn demo_and_console_do_not_exist_unless_enabled() {
    let herald = DemoHerald::start(false, &[]);
    for (method, path, body) in [
        ("GET", "/", ""),
        ("GET", "/demo/app.js", ""),
        ("POST", "/demo/token", r#"{"user": "mallory"}"#),
        ("GET", "/console", ""),
        ("POST", "/console/api/login", r#"{"password": ""}"#),
    ] {
        assert_eq!(
            http_status(herald.port, method, path, body),
            404,
            "{method} {path}"
        );
    }
    assert!(!herald.log_text().contains("open http"));
}
